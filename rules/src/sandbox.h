// SPDX-License-Identifier: Apache-2.0
// The Lua state rules run in: only the library surface of docs/rules.md, each rule file in its
// own environment.
#pragma once

#include <lua.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "gnomon/core/status.h"
#include "lua_json.h"

namespace gnomon::rules {

// The error value of ctx.drop, ctx.fail and exceeded limits. The sandbox's pcall/xpcall
// re-raise it, so a rule cannot swallow them; the reason travels outside Lua.
void* StopSentinel();

// The instruction budget of top-level code: a rule file's chunk (and the modules it requires
// there) or a test data file, run interpreted. Over it, the load fails with file and line.
inline constexpr int64_t kLoadInstructions = 50000000;

// Counts the bytes a state holds and refuses growth beyond `limit`: during a call the lower of
// the call's allowance (live at its start + limits.memory_mb) and `cap`; between calls `cap`,
// the most the state may hold at all (limits.heap_mb).
struct MemoryBudget {
  size_t live = 0;
  size_t limit = SIZE_MAX;
  size_t cap = SIZE_MAX;
  bool refused = false;      // an allocation was refused since the last reset
  bool refused_cap = false;  // ... and it would have gone over `cap`
};

// A new state with the sandbox set up. The caller owns it (lua_close). With `memory`, the
// state allocates through it (it must outlive the state).
// `lib_dirs` are the folders `require` loads modules from (none: require fails).
Result<lua_State*> NewSandboxState(JsonContext* json, MemoryBudget* memory = nullptr,
                                   const std::vector<std::string>& lib_dirs = {});

// Compiles and runs the rule file `text` in a fresh environment and pushes the table it
// returned from `rule { ... }`. Errors carry file and line. The hidden field read by
// RuleTableLine() holds the line of the `rule {` call.
// With `interpreted`, JIT compilation is switched off for every function of the file, so the
// instruction-count hook sees all of its work (LuaJIT skips hooks inside compiled traces).
Status LoadRuleChunk(lua_State* L, const std::string& file, const std::string& text,
                     bool interpreted = false);

// Runs a data file (like `*.test.lua`) in a fresh sandboxed state and returns the value it
// returns, as JSON.
Result<std::string> EvalFileToJson(const std::string& file, const std::string& text);

// The line of the `rule {` call that made the table at `idx`, or 0.
int RuleTableLine(lua_State* L, int idx);

}  // namespace gnomon::rules

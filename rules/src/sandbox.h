// SPDX-License-Identifier: Apache-2.0
// The Lua state rules run in: only the library surface of spec/rules.md, each rule file in its
// own environment.
#pragma once

#include <lua.hpp>

#include <string>

#include "gnomon/core/status.h"
#include "lua_json.h"

namespace gnomon::rules {

// A new state with the sandbox set up. The caller owns it (lua_close).
Result<lua_State*> NewSandboxState(JsonContext* json);

// Compiles and runs the rule file `text` in a fresh environment and pushes the table it
// returned from `rule { ... }`. Errors carry file and line. The hidden field read by
// RuleTableLine() holds the line of the `rule {` call.
Status LoadRuleChunk(lua_State* L, const std::string& file, const std::string& text);

// Runs a data file (like `*.test.lua`) in a fresh sandboxed state and returns the value it
// returns, as JSON.
Result<std::string> EvalFileToJson(const std::string& file, const std::string& text);

// The line of the `rule {` call that made the table at `idx`, or 0.
int RuleTableLine(lua_State* L, int idx);

}  // namespace gnomon::rules

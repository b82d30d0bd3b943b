// SPDX-License-Identifier: Apache-2.0
// Lua 5.1 string patterns for rules: string.find, match, gmatch and gsub with the semantics of
// the Lua manual (§5.4.1), implemented here so that matching is budgeted. LuaJIT's own pattern
// functions run in C where no count hook fires: `("x"):rep(1e5):match("(.-)%s*=%s*(.-);")`
// takes seconds and cannot be interrupted. These charge every matcher step to the call's
// instruction budget (see MatchBudget) and bound their recursion, so a pattern over a large
// payload fails that call with a clear reason instead of stalling the worker.
#pragma once

#include <lua.hpp>

#include <cstdint>

namespace gnomon::rules {

// What pattern functions charge on this thread. Set by whoever runs Lua code on the thread (a
// rule call, a rule file's top-level code); null means unbounded.
struct MatchBudget {
  // Called every kMatchStepsPerCheck matcher steps (a step is about one VM instruction's
  // work). Returns null to go on, or why the match must stop; it then raises `StopValue()`
  // through lua_error if `raise_stop` is set, else the returned text.
  const char* (*check)(void* ctx);
  void* ctx;
  bool raise_stop;
};
inline constexpr int64_t kMatchStepsPerCheck = 1000;

// The budget of the code running on this thread (set and cleared by the caller of Lua).
MatchBudget*& CurrentMatchBudget();

// Pushes a table with find, match, gmatch and gsub (budgeted, for a rule's `string` library).
void PushPatternFunctions(lua_State* L);

}  // namespace gnomon::rules

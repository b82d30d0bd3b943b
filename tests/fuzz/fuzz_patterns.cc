// SPDX-License-Identifier: Apache-2.0
// string.find/match/gmatch/gsub (rules/src/pattern.cc) on any subject and pattern: errors are
// Lua errors, never a crash, and every match ends within its budget.
#include <lua.hpp>

#include <cstdint>
#include <string>

#include "rules/src/pattern.h"

namespace {

const char* Check(void* ctx) {
  auto* left = static_cast<int64_t*>(ctx);
  return --*left < 0 ? "budget" : nullptr;
}

constexpr const char* kCode = R"lua(
local S, P = ...
pcall(find, S, P)
pcall(find, S, P, 3)
pcall(find, S, P, -2, true)
pcall(match, S, P)
pcall(function() local n = 0 for a in gmatch(S, P) do n = n + 1 if n > 100 then break end end end)
pcall(gsub, S, P, "<%0%1>")
pcall(gsub, S, P, function(x) return x end, 5)
pcall(gsub, S, P, { a = "b" })
)lua";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static lua_State* L = [] {
    lua_State* s = luaL_newstate();
    luaL_openlibs(s);
    gnomon::rules::PushPatternFunctions(s);
    for (const char* f : {"find", "match", "gmatch", "gsub"}) {
      lua_getfield(s, -1, f);
      lua_setglobal(s, f);
    }
    lua_pop(s, 1);
    return s;
  }();
  std::string in(reinterpret_cast<const char*>(data), size);
  size_t cut = in.find('\0');
  std::string subject = cut == std::string::npos ? in : in.substr(0, cut);
  std::string pattern = cut == std::string::npos ? "" : in.substr(cut + 1);
  int64_t left = 2000;  // checks of kMatchStepsPerCheck steps: 2M steps per input at most
  gnomon::rules::MatchBudget budget{Check, &left, false};
  gnomon::rules::CurrentMatchBudget() = &budget;
  if (luaL_loadstring(L, kCode) == 0) {
    lua_pushlstring(L, subject.data(), subject.size());
    lua_pushlstring(L, pattern.data(), pattern.size());
    lua_pcall(L, 2, 0, 0);
  }
  lua_settop(L, 0);
  gnomon::rules::CurrentMatchBudget() = nullptr;
  return 0;
}

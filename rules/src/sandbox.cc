// SPDX-License-Identifier: Apache-2.0
#include "sandbox.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "gnomon/core/topic.h"
#include "pattern.h"

namespace gnomon::rules {
namespace {

char kMakeEnvKey;
char kRuleLineKey;
char kStop;
char kModulesKey;  // registry: name → module value (or kLoading while it loads)
char kLoading;

// Installed before any rule runs, with the full standard library still reachable; it returns
// make_env(), which builds one rule's environment from copies of the safe parts.
constexpr const char* kBootstrap = R"lua(
local C = ...
local smt = getmetatable("")
local level = C.topic_level
local function copy(t) local r = {} for k, v in pairs(t) do r[k] = v end return r end
-- The string library rules see: no dump, pattern functions that charge the call's budget.
local safe_string = copy(string)
safe_string.dump = nil
for k, f in pairs(C.patterns) do safe_string[k] = f end
-- msg.topic[i]: segment i of a topic (1-based). Any string indexed by a number gives its i-th
-- '/'-separated level; method calls (s:upper()) reach the safe library, never the real one.
smt.__index = function(s, k)
  if type(k) == "number" then return level(s, k) end
  return safe_string[k]
end
smt.__metatable = false
local safe = { "assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber",
  "tostring", "type", "unpack", "xpcall", "rawequal", "rawget", "rawset", "setmetatable",
  "getmetatable" }
local base = {}
for _, n in ipairs(safe) do base[n] = _G[n] end
-- pcall/xpcall that cannot swallow ctx.drop, ctx.fail or an exceeded limit.
local STOP, raw_pcall, raw_xpcall, raw_error = C.stop, pcall, xpcall, error
local function rethrow(ok, e, ...)
  if not ok and e == STOP then raw_error(STOP, 0) end
  return ok, e, ...
end
base.pcall = function(f, ...) return rethrow(raw_pcall(f, ...)) end
base.xpcall = function(f, h) return rethrow(raw_xpcall(f, function(e)
  if e == STOP then return e end
  return h(e)
end)) end
local table, math, bit, os, json, rule = table, math, bit, os, C.json, C.rule
return function()
  local env = {}
  for k, v in pairs(base) do env[k] = v end
  env.string = copy(safe_string)
  env.table = copy(table)
  env.math = copy(math)
  env.bit = copy(bit)
  env.os = { time = os.time, clock = os.clock, date = os.date }
  env.json = copy(json)
  env.rule = rule
  env.require = C.require
  env._G = env
  return env
end
)lua";

int TopicLevelFn(lua_State* L) {
  size_t len = 0;
  const char* s = lua_tolstring(L, 1, &len);
  lua_Number n = lua_tonumber(L, 2);
  int idx = static_cast<int>(n);
  if (s == nullptr || idx < 1 || n != idx) {
    lua_pushnil(L);
    return 1;
  }
  // A missing level is nil; an empty level ("a//b"[2]) is "".
  size_t start = 0;
  for (int i = 1; i < idx; ++i) {
    const void* slash = std::memchr(s + start, '/', len - start);
    if (slash == nullptr) {
      lua_pushnil(L);
      return 1;
    }
    start = static_cast<const char*>(slash) - s + 1;
  }
  const void* end = std::memchr(s + start, '/', len - start);
  size_t stop = end == nullptr ? len : static_cast<const char*>(end) - s;
  lua_pushlstring(L, s + start, stop - start);
  return 1;
}

// require(name): a module from the rule library folders, loaded once per state in its own
// sandboxed environment, interpreted (so the callers' instruction budget holds inside it).
int RequireFn(lua_State* L) {
  size_t len = 0;
  const char* name = luaL_checklstring(L, 1, &len);
  std::string mod(name, len);
  static const std::regex kName("^[A-Za-z0-9_]+(\\.[A-Za-z0-9_]+)*$");
  if (!std::regex_match(mod, kName)) {
    return luaL_error(L, "require: invalid module name '%s' (use [A-Za-z0-9_] and dots)", name);
  }
  lua_pushlightuserdata(L, &kModulesKey);
  lua_rawget(L, LUA_REGISTRYINDEX);
  int cache = lua_gettop(L);
  lua_getfield(L, cache, name);
  if (lua_touserdata(L, -1) == &kLoading) {
    return luaL_error(L, "require: circular require of '%s'", name);
  }
  if (!lua_isnil(L, -1)) {
    return 1;
  }
  lua_pop(L, 1);
  std::string rel = mod;
  std::replace(rel.begin(), rel.end(), '.', '/');
  rel += ".lua";
  std::string found, text, tried;
  size_t ndirs = lua_objlen(L, lua_upvalueindex(1));
  for (size_t i = 1; i <= ndirs && found.empty(); ++i) {
    lua_rawgeti(L, lua_upvalueindex(1), static_cast<int>(i));
    std::string path = std::string(lua_tostring(L, -1)) + "/" + rel;
    lua_pop(L, 1);
    tried += (tried.empty() ? "" : ", ") + path;
    std::ifstream in(path, std::ios::binary);
    if (in) {
      std::stringstream ss;
      ss << in.rdbuf();
      text = ss.str();
      found = path;
    }
  }
  if (found.empty()) {
    return luaL_error(L, "require: module '%s' not found (tried: %s)", name,
                      tried.empty() ? "no rule library folders configured (rule_libs)" : tried.c_str());
  }
  std::string chunkname = "@" + found;
  if (luaL_loadbufferx(L, text.data(), text.size(), chunkname.c_str(), "t") != 0) {
    return lua_error(L);
  }
  luaJIT_setmode(L, -1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF);
  lua_pushlightuserdata(L, &kMakeEnvKey);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_call(L, 0, 1);
  lua_setfenv(L, -2);
  lua_pushlightuserdata(L, &kLoading);
  lua_setfield(L, cache, name);
  lua_call(L, 0, 1);  // errors propagate to the rule, with the module's file and line
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, cache, name);
  return 1;
}

// rule { ... }: marks the table as a rule definition and records where it was made.
int RuleFn(lua_State* L) {
  if (lua_type(L, 1) != LUA_TTABLE) {
    return luaL_error(L, "rule: expected a table, as in rule { name = ..., handle = ... }");
  }
  // `return rule {...}` is a tail call, so the caller's frame (and line) is gone; mark the
  // table, and LoadRuleChunk finds the line in the text.
  lua_pushlightuserdata(L, &kRuleLineKey);
  lua_pushinteger(L, -1);
  lua_rawset(L, 1);
  lua_settop(L, 1);
  return 1;
}

int Traceback(lua_State* L) {
  const char* msg = lua_tostring(L, 1);
  if (msg == nullptr) {
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}


// Top-level code (a rule file's chunk, a module it requires, a test data file) runs under
// these limits: interpreted (the JIT engine is off while it runs), with an instruction budget
// and the state's heap cap. Without them `while true do end` before `return rule {}` hung
// check, start and reload for good.
struct LoadLimit {
  int64_t ticks_left;
};
thread_local LoadLimit* t_load = nullptr;

constexpr int kLoadHookInterval = 1000;

const char* LoadBudgetCheck(void* ctx) {
  auto* l = static_cast<LoadLimit*>(ctx);
  if (--l->ticks_left >= 0) {
    return nullptr;
  }
  static const std::string kWhy = fmt::format(
      "top-level code ran over its instruction budget of {} instructions (an endless loop "
      "outside handle?)",
      kLoadInstructions);
  return kWhy.c_str();
}

void LoadHook(lua_State* L, lua_Debug*) {
  LoadLimit* l = t_load;
  const char* why = l != nullptr ? LoadBudgetCheck(l) : nullptr;
  if (why == nullptr) {
    return;
  }
  // No C++ object may be alive across lua_error: the message is built in a plain buffer.
  char where[256] = "";
  lua_Debug ar;
  if (lua_getstack(L, 0, &ar) != 0 && lua_getinfo(L, "Sl", &ar) != 0 && ar.currentline > 0) {
    std::snprintf(where, sizeof where, "%s:%d: ", ar.short_src, ar.currentline);
  }
  lua_pushfstring(L, "%s%s", where, why);
  lua_error(L);
}

// lua_pcall of the function below `nargs` arguments on the stack, under the load limits.
int PcallUnderLoadLimits(lua_State* L, int nargs, int nresults, int errfunc) {
  LoadLimit limit{kLoadInstructions / kLoadHookInterval};
  LoadLimit* outer = t_load;
  t_load = &limit;
  MatchBudget budget{LoadBudgetCheck, &limit, false};
  MatchBudget* outer_budget = CurrentMatchBudget();
  CurrentMatchBudget() = &budget;
  lua_Hook old_hook = lua_gethook(L);
  int old_mask = lua_gethookmask(L);
  int old_count = lua_gethookcount(L);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  lua_sethook(L, LoadHook, LUA_MASKCOUNT, kLoadHookInterval);
  int rc = lua_pcall(L, nargs, nresults, errfunc);
  lua_sethook(L, old_hook, old_mask, old_count);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);
  CurrentMatchBudget() = outer_budget;
  t_load = outer;
  return rc;
}
}  // namespace

void* BudgetAlloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  auto* b = static_cast<MemoryBudget*>(ud);
  if (nsize == 0) {
    std::free(ptr);
    b->live -= osize;
    return nullptr;
  }
  size_t old = ptr != nullptr ? osize : 0;
  if (nsize > old && b->live + (nsize - old) > b->limit) {
    b->refused = true;
    b->refused_cap = b->refused_cap || b->limit == b->cap;  // the cap, not the call allowance
    return nullptr;  // LuaJIT raises "not enough memory"
  }
  void* p = std::realloc(ptr, nsize);
  if (p != nullptr) {
    b->live = b->live - old + nsize;
  }
  return p;
}

void* StopSentinel() { return &kStop; }

Result<lua_State*> NewSandboxState(JsonContext* json, MemoryBudget* memory,
                                   const std::vector<std::string>& lib_dirs) {
  lua_State* L = memory != nullptr ? lua_newstate(BudgetAlloc, memory) : luaL_newstate();
  if (L == nullptr) {
    return ResourceExhausted("cannot create a Lua state");
  }
  luaL_openlibs(L);
  // C = { topic_level, rule, json }
  lua_createtable(L, 0, 4);
  lua_pushcfunction(L, TopicLevelFn);
  lua_setfield(L, -2, "topic_level");
  lua_pushcfunction(L, RuleFn);
  lua_setfield(L, -2, "rule");
  OpenJson(L, json);
  lua_setfield(L, -2, "json");
  lua_pushlightuserdata(L, &kStop);
  lua_setfield(L, -2, "stop");
  PushPatternFunctions(L);
  lua_setfield(L, -2, "patterns");
  lua_createtable(L, static_cast<int>(lib_dirs.size()), 0);
  for (size_t i = 0; i < lib_dirs.size(); ++i) {
    lua_pushlstring(L, lib_dirs[i].data(), lib_dirs[i].size());
    lua_rawseti(L, -2, static_cast<int>(i + 1));
  }
  lua_pushcclosure(L, RequireFn, 1);
  lua_setfield(L, -2, "require");
  lua_pushlightuserdata(L, &kModulesKey);
  lua_newtable(L);
  lua_rawset(L, LUA_REGISTRYINDEX);
  if (luaL_loadbuffer(L, kBootstrap, std::strlen(kBootstrap), "=gnomon_bootstrap") != 0) {
    std::string err = lua_tostring(L, -1);
    lua_close(L);
    return Internal("sandbox bootstrap: " + err);
  }
  lua_pushvalue(L, -2);  // C
  if (lua_pcall(L, 1, 1, 0) != 0) {
    std::string err = lua_tostring(L, -1) != nullptr ? lua_tostring(L, -1) : "?";
    lua_close(L);
    return Internal("sandbox bootstrap failed: " + err);
  }
  lua_pushlightuserdata(L, &kMakeEnvKey);
  lua_insert(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  return L;
}

Status LoadRuleChunk(lua_State* L, const std::string& file, const std::string& text,
                     bool interpreted) {
  int top = lua_gettop(L);
  lua_pushcfunction(L, Traceback);
  int errfunc = lua_gettop(L);
  std::string chunkname = "@" + file;
  if (luaL_loadbufferx(L, text.data(), text.size(), chunkname.c_str(), "t") != 0) {
    std::string err = lua_tostring(L, -1);
    lua_settop(L, top);
    if (!err.starts_with(file)) {
      err = file + ": " + (err.find("wrong mode") != std::string::npos
                               ? "binary (bytecode) chunks are not allowed; load the source"
                               : err);
    }
    return InvalidArgument(err);
  }
  if (interpreted) {
    luaJIT_setmode(L, -1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF);
  }
  lua_pushlightuserdata(L, &kMakeEnvKey);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_pcall(L, 0, 1, 0) != 0) {
    std::string err = lua_tostring(L, -1);
    lua_settop(L, top);
    return Internal("make_env: " + err);
  }
  lua_setfenv(L, -2);
  if (PcallUnderLoadLimits(L, 0, 1, errfunc) != 0) {
    std::string err = lua_tostring(L, -1) != nullptr ? lua_tostring(L, -1) : "error";
    lua_settop(L, top);
    return InvalidArgument(err);
  }
  if (lua_type(L, -1) != LUA_TTABLE || RuleTableLine(L, -1) == 0) {
    lua_settop(L, top);
    return InvalidArgument(file + ": the file must return rule { ... }");
  }
  lua_remove(L, errfunc);
  // Record the line of the `rule {` call for messages about the table.
  int line = 1;
  size_t pos = 0;
  static const std::regex kRuleCall("\\brule\\s*[{(]");
  std::smatch m;
  if (std::regex_search(text, m, kRuleCall)) {
    pos = static_cast<size_t>(m.position(0));
    line += static_cast<int>(std::count(text.begin(), text.begin() + static_cast<long>(pos), '\n'));
  }
  lua_pushlightuserdata(L, &kRuleLineKey);
  lua_pushinteger(L, line);
  lua_rawset(L, -3);
  return {};
}

Result<std::string> EvalFileToJson(const std::string& file, const std::string& text) {
  JsonContext json;
  GNOMON_ASSIGN_OR_RETURN(lua_State * L, NewSandboxState(&json));
  std::string chunkname = "@" + file;
  std::string out;
  Status st;
  lua_pushcfunction(L, Traceback);
  int errfunc = lua_gettop(L);
  if (luaL_loadbufferx(L, text.data(), text.size(), chunkname.c_str(), "t") != 0) {
    st = InvalidArgument(lua_tostring(L, -1));
  } else {
    lua_pushlightuserdata(L, &kMakeEnvKey);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_call(L, 0, 1);
    lua_setfenv(L, -2);
    if (PcallUnderLoadLimits(L, 0, 1, errfunc) != 0) {
      st = InvalidArgument(lua_tostring(L, -1) != nullptr ? lua_tostring(L, -1) : "error");
    } else {
      st = EncodeValue(L, -1, &json, out, file);
    }
  }
  lua_close(L);
  if (!st.ok()) {
    return st;
  }
  return out;
}

int RuleTableLine(lua_State* L, int idx) {
  if (idx < 0) {
    idx = lua_gettop(L) + idx + 1;
  }
  lua_pushlightuserdata(L, &kRuleLineKey);
  lua_rawget(L, idx);
  int line = static_cast<int>(lua_tointeger(L, -1));
  lua_pop(L, 1);
  return line;
}

}  // namespace gnomon::rules

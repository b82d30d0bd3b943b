// SPDX-License-Identifier: Apache-2.0
#include <fmt/format.h>
#include <glob.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>

#include "gnomon/core/topic.h"
#include "gnomon/rules/rules.h"
#include "gnomon/rules/windows.h"
#include "sandbox.h"

namespace gnomon::rules {

struct RuleSet::Index {
  TopicIndex topics;
};

RuleSet::RuleSet() : index_(std::make_unique<Index>()) {}
RuleSet::~RuleSet() = default;

void RuleSet::Match(std::string_view topic, std::vector<uint32_t>& out) const {
  index_->topics.Match(topic, out);
}

namespace {

std::string ContentHash(std::string_view text) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a 64
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return fmt::format("{:016x}", h);
}

// Reads `rule.<field>`, a table of positive numbers with the given keys, calling `set` for each.
template <typename Set>
void ReadNumberTable(lua_State* L, int t, const char* field, std::vector<std::string> keys,
                     const std::function<void(const std::string&)>& fail, Set set) {
  lua_getfield(L, t, field);
  if (!lua_isnil(L, -1)) {
    std::string known = fmt::format("{}", fmt::join(keys, ", "));
    if (lua_type(L, -1) != LUA_TTABLE) {
      fail(fmt::format("rule.{}: must be a table of {}", field, known));
    } else {
      lua_pushnil(L);
      while (lua_next(L, -2) != 0) {
        std::string k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        if (std::find(keys.begin(), keys.end(), k) == keys.end()) {
          fail(fmt::format("rule.{}: unknown field '{}' (known: {})", field, k, known));
        } else if (lua_type(L, -1) != LUA_TNUMBER || lua_tonumber(L, -1) < 1 ||
                   lua_tonumber(L, -1) > 9007199254740992.0) {
          fail(fmt::format("rule.{}.{}: must be a positive number up to 2^53", field, k));
        } else {
          set(k, static_cast<int64_t>(lua_tonumber(L, -1)));
        }
        lua_pop(L, 1);
      }
    }
  }
  lua_pop(L, 1);
}

// A field path in the payload ("temp", "a.b", or "payload.temp"), split; empty on a bad path.
std::vector<std::string> PayloadPath(std::string_view text) {
  if (text.substr(0, 8) == "payload.") {
    text.remove_prefix(8);
  }
  std::vector<std::string> out;
  while (!text.empty()) {
    size_t dot = text.find('.');
    std::string_view part = text.substr(0, dot);
    if (part.empty()) {
      return {};
    }
    out.emplace_back(part);
    if (dot == std::string_view::npos) {
      break;
    }
    text.remove_prefix(dot + 1);
    if (text.empty()) {
      return {};
    }
  }
  return out;
}

// rule.windows: NAME = { tumbling | hopping | sliding | session = DURATION, hop =, of =,
// agg = { ... }, time =, grace =, max_open =, max_events = }.
void ReadWindows(lua_State* L, int t, RuleInfo& info,
                 const std::function<void(const std::string&)>& fail) {
  lua_getfield(L, t, "windows");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (info.has_on_window || info.has_on_late) {
      fail("rule.on_window and rule.on_late need windows = { ... }");
    }
    return;
  }
  if (lua_type(L, -1) != LUA_TTABLE) {
    fail(
        "rule.windows: a table of windows by name, { t5m = { tumbling = \"5m\", of = \"temp\" } }");
    lua_pop(L, 1);
    return;
  }
  static const std::regex kWindowName("^[a-z][a-z0-9_]{0,63}$");
  static const std::set<std::string> kFields = {"tumbling", "hopping",  "sliding",    "session",
                                                "hop",      "of",       "agg",        "time",
                                                "grace",    "max_open", "max_events", "key"};
  int wt = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, wt) != 0) {
    std::string name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    std::string where = "rule.windows." + name;
    auto bad = [&](const std::string& what) { fail(where + ": " + what); };
    if (!std::regex_match(name, kWindowName)) {
      bad("a window's name is [a-z][a-z0-9_]* (up to 64)");
      lua_pop(L, 1);
      continue;
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
      bad("a table { tumbling = \"5m\", of = \"temp\", agg = { \"avg\" } }");
      lua_pop(L, 1);
      continue;
    }
    int w = lua_gettop(L);
    WindowDecl decl;
    decl.name = name;
    int kinds = 0;
    lua_pushnil(L);
    while (lua_next(L, w) != 0) {
      std::string k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
      auto duration = [&](int64_t& out) {
        Result<int64_t> ms = lua_type(L, -1) == LUA_TSTRING
                                 ? ParseDurationMs(lua_tostring(L, -1))
                                 : Result<int64_t>(InvalidArgument("a duration such as \"5m\""));
        if (!ms.ok()) {
          bad(fmt::format("{}: {}", k, ms.status().message()));
        } else {
          out = *ms;
        }
      };
      if (kFields.count(k) == 0) {
        bad(
            fmt::format("unknown field '{}' (known: tumbling, hopping, sliding, session, hop, of, "
                        "agg, time, grace, key, max_open, max_events)",
                        k));
      } else if (k == "tumbling" || k == "hopping" || k == "sliding" || k == "session") {
        ++kinds;
        decl.spec.kind = k == "tumbling"  ? WindowSpec::Kind::kTumbling
                         : k == "hopping" ? WindowSpec::Kind::kHopping
                         : k == "sliding" ? WindowSpec::Kind::kSliding
                                          : WindowSpec::Kind::kSession;
        duration(decl.spec.size_ms);
      } else if (k == "hop") {
        duration(decl.spec.hop_ms);
      } else if (k == "grace") {
        duration(decl.spec.grace_ms);
      } else if (k == "time" && lua_type(L, -1) == LUA_TSTRING &&
                 std::string_view(lua_tostring(L, -1)) == "msg.ts") {
        decl.msg_ts = true;
      } else if (k == "of" || k == "time" || k == "key") {
        std::vector<std::string> path = lua_type(L, -1) == LUA_TSTRING
                                            ? PayloadPath(lua_tostring(L, -1))
                                            : std::vector<std::string>();
        if (path.empty()) {
          bad(fmt::format("{}: a field of the payload, \"temp\" or \"payload.a.b\"", k));
        }
        (k == "of" ? decl.of : k == "time" ? decl.time : decl.key) = std::move(path);
      } else if (k == "agg") {
        if (lua_type(L, -1) == LUA_TSTRING) {
          lua_createtable(L, 1, 0);
          lua_insert(L, -2);
          lua_rawseti(L, -2, 1);
        }
        size_t n = lua_type(L, -1) == LUA_TTABLE ? lua_objlen(L, -1) : 0;
        if (n == 0) {
          bad("agg: a list of count, sum, avg, min, max, first, last, stddev");
        }
        for (size_t i = 1; i <= n; ++i) {
          lua_rawgeti(L, -1, static_cast<int>(i));
          auto agg = lua_type(L, -1) == LUA_TSTRING ? ParseAgg(lua_tostring(L, -1)) : std::nullopt;
          if (!agg) {
            bad(fmt::format("agg[{}]: one of count, sum, avg, min, max, first, last, stddev", i));
          } else if (std::find(decl.aggs.begin(), decl.aggs.end(), *agg) == decl.aggs.end()) {
            decl.aggs.push_back(*agg);
          }
          lua_pop(L, 1);
        }
      } else {  // max_open, max_events
        lua_Number v = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
        if (v < 1 || v > 1000000 || v != static_cast<int64_t>(v)) {
          bad(fmt::format("{}: an integer from 1 to 1000000", k));
        } else {
          (k == "max_open" ? decl.spec.max_open : decl.spec.max_events) = static_cast<size_t>(v);
        }
      }
      lua_pop(L, 1);
    }
    if (kinds != 1) {
      bad("needs exactly one of tumbling, hopping, sliding or session = DURATION");
    } else if (decl.spec.size_ms > 0) {
      if (decl.spec.kind != WindowSpec::Kind::kHopping && decl.spec.hop_ms != 0) {
        bad("hop is for hopping windows");
      }
      if (std::string p = decl.spec.Problem(); !p.empty()) {
        bad(p);
      }
    }
    if (decl.aggs.empty()) {
      decl.aggs.push_back(Agg::kCount);
    }
    for (Agg a : decl.aggs) {
      if (a != Agg::kCount && decl.of.empty()) {
        bad(fmt::format("agg {} needs of = \"field\" (what to aggregate)", AggName(a)));
        break;
      }
    }
    info.windows.push_back(std::move(decl));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  std::sort(info.windows.begin(), info.windows.end(),
            [](const WindowDecl& a, const WindowDecl& b) { return a.name < b.name; });
  bool closing = std::any_of(info.windows.begin(), info.windows.end(), [](const WindowDecl& d) {
    return d.spec.kind != WindowSpec::Kind::kSliding;
  });
  if (closing && !info.has_on_window) {
    fail(
        "rule.windows: tumbling, hopping and session windows need on_window = function(w, "
        "ctx), which runs as each closes");
  }
  if (info.windows.empty()) {
    fail("rule.windows: declare at least one window (or leave windows out)");
  }
}

// Reads the rule table at the top of the stack into `info`; adds problems to `errors`.
void ReadRuleTable(lua_State* L, const std::string& file, RuleInfo& info,
                   const RuleLimitCeilings& ceilings, std::vector<std::string>& errors) {
  int t = lua_gettop(L);
  info.line = RuleTableLine(L, t);
  std::function<void(const std::string&)> fail = [&](const std::string& what) {
    errors.push_back(fmt::format("{}:{}: {}", file, info.line, what));
  };
  static const std::set<std::string> kKnown = {
      "name",       "description", "from",        "on_error",   "max_attempts", "limits",
      "jit",        "handle",      "tests",       "quarantine", "state",        "migrate",
      "inactivity", "on_timer",    "on_inactive", "windows",    "on_window",    "on_late"};
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING && kKnown.count(lua_tostring(L, -1)) == 0) {
      fail(fmt::format(
          "rule: unknown field '{}' (known: name, description, from, on_error, "
          "max_attempts, limits, jit, quarantine, state, migrate, inactivity, windows, handle, "
          "on_timer, on_inactive, on_window, on_late, tests)",
          lua_tostring(L, -1)));
    }
  }

  lua_getfield(L, t, "name");
  static const std::regex kName("^[a-z0-9_-]+$");
  if (lua_type(L, -1) != LUA_TSTRING) {
    fail("rule.name: required, a string of [a-z0-9_-]");
  } else {
    info.name = lua_tostring(L, -1);
    if (!std::regex_match(info.name, kName)) {
      fail(fmt::format("rule.name: must match [a-z0-9_-]+ (got '{}')", info.name));
    }
  }
  lua_pop(L, 1);

  lua_getfield(L, t, "from");
  if (lua_type(L, -1) == LUA_TSTRING) {
    info.from.emplace_back(lua_tostring(L, -1));
  } else if (lua_type(L, -1) == LUA_TTABLE) {
    size_t n = lua_objlen(L, -1);
    for (size_t i = 1; i <= n; ++i) {
      lua_rawgeti(L, -1, static_cast<int>(i));
      if (lua_type(L, -1) != LUA_TSTRING) {
        fail(fmt::format("rule.from[{}]: must be a topic filter string", i));
      } else {
        info.from.emplace_back(lua_tostring(L, -1));
      }
      lua_pop(L, 1);
    }
    if (n == 0) {
      fail("rule.from: must list at least one topic filter");
    }
  } else {
    fail("rule.from: required, a topic filter or a list of them");
  }
  lua_pop(L, 1);
  for (size_t i = 0; i < info.from.size(); ++i) {
    Status st = ValidateTopicFilter(info.from[i]);
    if (!st.ok()) {
      fail(fmt::format("rule.from[{}]: {}", i + 1, st.message()));
    }
  }

  lua_getfield(L, t, "handle");
  if (lua_type(L, -1) != LUA_TFUNCTION) {
    fail("rule.handle: required, a function(msg, ctx)");
  }
  lua_pop(L, 1);

  lua_getfield(L, t, "on_error");
  if (!lua_isnil(L, -1)) {
    std::string v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    if (v == "dead_letter") {
      info.on_error = OnError::kDeadLetter;
    } else if (v == "drop") {
      info.on_error = OnError::kDrop;
    } else if (v == "retry") {
      info.on_error = OnError::kRetry;
    } else {
      fail("rule.on_error: must be \"dead_letter\", \"drop\" or \"retry\"");
    }
  }
  lua_pop(L, 1);

  lua_getfield(L, t, "max_attempts");
  if (!lua_isnil(L, -1)) {
    lua_Number n = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || n < 1 || n > 100 || n != static_cast<int>(n)) {
      fail("rule.max_attempts: must be an integer from 1 to 100");
    } else {
      info.max_attempts = static_cast<int>(n);
    }
  }
  lua_pop(L, 1);

  ReadNumberTable(L, t, "limits", {"instructions", "memory_mb", "heap_mb", "wall_ms"}, fail,
                  [&](const std::string& k, int64_t v) {
                    (k == "instructions" ? info.max_instructions
                     : k == "memory_mb"  ? info.memory_mb
                     : k == "heap_mb"    ? info.heap_mb
                                         : info.wall_ms) = v;
                  });
  // The operator's ceilings (rules.max_limits in the config).
  auto ceiling = [&](const char* key, int64_t v, int64_t max) {
    if (v > max) {
      fail(fmt::format("rule.limits.{}: {} is above the ceiling of {} set by the operator "
                       "(rules.max_limits.{})",
                       key, v, max, key));
    }
  };
  ceiling("instructions", info.max_instructions, ceilings.instructions);
  ceiling("memory_mb", info.memory_mb, ceilings.memory_mb);
  ceiling("heap_mb", info.heap_mb, ceilings.heap_mb);
  ceiling("wall_ms", info.wall_ms, ceilings.wall_ms);
  if (info.memory_mb > info.heap_mb) {
    info.heap_mb = std::min(info.memory_mb, ceilings.heap_mb);  // a call may use its allowance
  }
  ReadNumberTable(L, t, "quarantine", {"failures", "window_s", "device_failures", "cooldown_s"},
                  fail, [&](const std::string& k, int64_t v) {
                    (k == "failures"          ? info.quarantine_failures
                     : k == "window_s"        ? info.quarantine_window_s
                     : k == "device_failures" ? info.quarantine_device_failures
                                              : info.quarantine_cooldown_s) = v;
                  });
  if (info.quarantine_window_s > 86400 * 365 || info.quarantine_cooldown_s > 86400 * 365) {
    fail("rule.quarantine: window_s and cooldown_s must be at most a year");
  }

  ReadNumberTable(L, t, "state", {"version", "max_bytes"}, fail,
                  [&](const std::string& k, int64_t v) {
                    (k == "version" ? info.state_version : info.state_max_bytes) = v;
                  });
  if (info.state_max_bytes > kMaxStateBytes) {
    fail(fmt::format("rule.state.max_bytes: at most {} (1 MiB)", kMaxStateBytes));
  }
  lua_getfield(L, t, "migrate");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TFUNCTION) {
    fail("rule.migrate: must be a function(old_state, from_version) returning the new state");
  }
  info.has_migrate = lua_type(L, -1) == LUA_TFUNCTION;
  lua_pop(L, 1);
  for (const char* f : {"on_timer", "on_inactive", "on_window", "on_late"}) {
    std::string_view n(f);
    lua_getfield(L, t, f);
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TFUNCTION) {
      fail(fmt::format("rule.{}: must be a function({}ctx)", f,
                       n == "on_timer"      ? "t, "
                       : n == "on_inactive" ? "ev, "
                       : n == "on_window"   ? "w, "
                                            : "msg, w, "));
    }
    bool has = lua_type(L, -1) == LUA_TFUNCTION;
    (n == "on_timer"      ? info.has_on_timer
     : n == "on_inactive" ? info.has_on_inactive
     : n == "on_window"   ? info.has_on_window
                          : info.has_on_late) = has;
    lua_pop(L, 1);
  }
  ReadWindows(L, t, info, fail);
  lua_getfield(L, t, "inactivity");
  if (lua_type(L, -1) == LUA_TSTRING) {
    auto ms = ParseDurationMs(lua_tostring(L, -1));
    if (!ms.ok()) {
      fail(fmt::format("rule.inactivity: {}", ms.status().message()));
    } else if (*ms < 1000) {
      fail("rule.inactivity: at least 1s");
    } else {
      info.inactivity_ms = *ms;
    }
  } else if (!lua_isnil(L, -1)) {
    fail("rule.inactivity: a duration such as \"10m\"");
  }
  lua_pop(L, 1);
  if (info.inactivity_ms > 0 && !info.has_on_inactive) {
    fail("rule.inactivity: needs on_inactive = function(ev, ctx), which runs when it passes");
  }
  if (info.inactivity_ms == 0 && info.has_on_inactive) {
    fail("rule.on_inactive: needs inactivity = \"10m\" (how long a silence is)");
  }

  lua_getfield(L, t, "jit");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TBOOLEAN) {
    fail("rule.jit: must be true or false");
  }
  info.jit = lua_toboolean(L, -1) != 0;
  lua_pop(L, 1);
  if (info.jit && !ceilings.allow_jit) {
    fail("rule.jit: compiled rules are not allowed here (rules.allow_jit is false); a compiled "
         "rule is only bounded by its wall-clock limit");
  }

  lua_getfield(L, t, "tests");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TTABLE) {
    fail("rule.tests: must be a list of tests");
  }
  lua_pop(L, 1);
}

}  // namespace

Result<std::shared_ptr<const RuleSet>> RuleSet::FromSources(
    const std::vector<std::pair<std::string, std::string>>& files, RuleSetOptions options) {
  std::shared_ptr<RuleSet> set(new RuleSet());
  set->options_ = std::move(options);
  std::vector<std::string> errors;
  std::map<std::string, std::string> names;  // name → file
  for (const auto& [file, text] : files) {
    // A scratch state per file, with the heap ceiling as its cap: top-level code is bounded in
    // instructions (kLoadInstructions) and memory.
    JsonContext json;
    MemoryBudget memory;
    memory.cap = static_cast<size_t>(set->options_.max_limits.heap_mb) << 20;
    memory.limit = memory.cap;
    GNOMON_ASSIGN_OR_RETURN(lua_State * L,
                            NewSandboxState(&json, &memory, set->options_.lib_dirs));
    std::unique_ptr<lua_State, void (*)(lua_State*)> owner(L, lua_close);
    Status st = LoadRuleChunk(L, file, text);
    if (!st.ok()) {
      if (memory.refused) {
        errors.push_back(fmt::format("{}: top-level code went over {} MB (rules.max_limits.heap_mb): "
                                     "{}",
                                     file, set->options_.max_limits.heap_mb, st.message()));
      } else {
        errors.push_back(st.message());
      }
      continue;
    }
    RuleInfo info;
    info.file = file;
    info.source = text;
    info.version = ContentHash(text);
    size_t before = errors.size();
    ReadRuleTable(L, file, info, set->options_.max_limits, errors);
    lua_settop(L, 0);
    if (set->options_.interpreted) {
      info.jit = false;  // rule tests: bounded by the instruction budget even if they loop
    }
    if (errors.size() != before) {
      continue;
    }
    auto [it, inserted] = names.emplace(info.name, file);
    if (!inserted) {
      errors.push_back(fmt::format("{}:{}: rule.name: '{}' is already used by {}", file,
                                   info.line, info.name, it->second));
      continue;
    }
    set->rules_.push_back(std::move(info));
  }
  if (!errors.empty()) {
    std::string all;
    for (const auto& e : errors) {
      all += all.empty() ? "" : "\n";
      all += e;
    }
    return InvalidArgument(all);
  }
  for (uint32_t i = 0; i < set->rules_.size(); ++i) {
    for (const auto& f : set->rules_[i].from) {
      set->index_->topics.Add(f, i);
    }
  }
  return std::shared_ptr<const RuleSet>(std::move(set));
}

Result<std::shared_ptr<const RuleSet>> RuleSet::Load(const std::vector<std::string>& files,
                                                     RuleSetOptions options) {
  std::vector<std::pair<std::string, std::string>> sources;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      return NotFound(f + ": cannot read rule file");
    }
    std::stringstream ss;
    ss << in.rdbuf();
    sources.emplace_back(f, ss.str());
  }
  return FromSources(sources, std::move(options));
}

Result<std::vector<std::string>> ExpandRulePaths(const std::vector<std::string>& patterns,
                                                 const std::string& base_dir) {
  std::vector<std::string> out;
  for (const auto& p : patterns) {
    std::string full = (p.empty() || p[0] == '/' || base_dir.empty() || base_dir == ".") ? p : base_dir + "/" + p;
    bool has_glob = full.find_first_of("*?[") != std::string::npos;
    if (!has_glob) {
      if (!std::filesystem::is_regular_file(full)) {
        return NotFound(fmt::format("rules: {}: no such file", full));
      }
      out.push_back(full);
      continue;
    }
    glob_t g{};
    int rc = ::glob(full.c_str(), 0, nullptr, &g);
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) {
        std::string_view f = g.gl_pathv[i];
        // Test files and editor annotations sit beside rules; neither is a rule.
        if (!f.ends_with(".test.lua") && !f.ends_with(".d.lua")) {
          out.emplace_back(f);
        }
      }
    }
    globfree(&g);
    if (rc != 0 && rc != GLOB_NOMATCH) {
      return Internal(fmt::format("rules: {}: glob failed", full));
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace gnomon::rules

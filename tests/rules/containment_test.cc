// SPDX-License-Identifier: Apache-2.0
// What one rule can do to another, and what one payload can do to a rule: the sandbox's
// promises (docs/security.md, "Rule authors") as tests.
#include <gtest/gtest.h>
#include <simdjson.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "gnomon/rules/rules.h"
#include "rules/src/lua_json.h"
#include "rules/src/pattern.h"

namespace gnomon::rules {
namespace {

struct Runner {
  explicit Runner(std::vector<std::pair<std::string, std::string>> files,
                  RuleSetOptions options = RuleSetOptions{{"out"}}) {
    auto set = RuleSet::FromSources(files, std::move(options));
    EXPECT_TRUE(set.ok()) << set.status().message();
    if (!set.ok()) {
      return;
    }
    auto r = RuleRuntime::Create(*set, clock);
    EXPECT_TRUE(r.ok()) << r.status().message();
    if (r.ok()) {
      rt = std::move(r).value();
    }
  }
  CallResult Run(uint32_t rule, const std::string& body, uint64_t id = 0,
                 std::string_view device = "d1") {
    payload = body;
    payload.reserve(payload.size() + simdjson::SIMDJSON_PADDING);
    MessageView m{"x/1", device, &payload, "src", &headers, 0, id};
    CallResult r;
    rt->Run(rule, m, r);
    return r;
  }
  FixedClock clock{1000};
  std::unique_ptr<RuleRuntime> rt;
  std::string payload;
  Headers headers;
};

std::string Rule(const std::string& name, const std::string& body, const std::string& extra = "") {
  return "return rule { name = '" + name + "', from = 'x/#', " + extra +
         " handle = function(msg, ctx)\n" + body + "\nend }";
}

// The victim's records, payload reads and random numbers, as one string per call.
const char* kVictim = R"lua(
  ctx.emit("out", table.concat({ tostring(msg.payload.id), json.encode(json.decode("[1,2]")),
                                 tostring(math.random(1, 1000000)), tostring(msg.payload.secret),
                                 ("a=b"):match("(%w)=(%w)"), tostring(string.format) }, "|"))
)lua";

TEST(ContainmentTest, AHostileRuleCannotObserveOrChangeAnotherRulesWork) {
  // Everything the issue found shared between rules of one worker, tried at load time and on
  // every call.
  const std::string hostile_top = R"(
    pcall(function() getmetatable(json.decode("[]")).__index = function() return "poisoned" end end)
    pcall(function() setmetatable(json.decode("[]"), {}) end)
    math.randomseed(42)
  )";
  const std::string hostile_body = R"(
    local stolen = {}
    pcall(function() ctx.emit = function(sink, rec) stolen[#stolen + 1] = rec end end)
    pcall(function() getmetatable(ctx).__index = function() return "hooked" end end)
    pcall(function() getmetatable(msg).__index = function(t, k) stolen[#stolen + 1] = k end end)
    pcall(function() getmetatable(ctx.shadow).__index = function() return "hooked" end end)
    pcall(function() getmetatable("").__index = function() return "hooked" end end)
    pcall(function() rawset(ctx, "emit", function() end) end)
    math.randomseed(7)
    for i = 1, 10 do math.random() end
    string.format = nil
    json.decode = nil
  )";
  Runner alone({{"victim.lua", Rule("victim", kVictim)}});
  Runner shared({{"hostile.lua", hostile_top + Rule("hostile", hostile_body)},
                 {"victim.lua", Rule("victim", kVictim)}});
  ASSERT_NE(alone.rt, nullptr);
  ASSERT_NE(shared.rt, nullptr);
  for (int i = 0; i < 20; ++i) {
    std::string p = "{\"id\":" + std::to_string(i) + ",\"secret\":\"s" + std::to_string(i) + "\"}";
    CallResult h = shared.Run(0, p, i + 1);
    EXPECT_EQ(h.outcome, Outcome::kOk) << h.reason;
    CallResult a = alone.Run(0, p, i + 1);
    CallResult b = shared.Run(1, p, i + 1);
    ASSERT_EQ(a.outcome, Outcome::kOk) << a.reason;
    ASSERT_EQ(b.outcome, Outcome::kOk) << b.reason;
    ASSERT_EQ(a.effects.size(), 1u);
    ASSERT_EQ(b.effects.size(), 1u) << "the victim's emit was hooked";
    // The same record, random number included: nothing of the hostile rule reached it.
    EXPECT_EQ(a.effects[0].payload.substr(0, a.effects[0].payload.rfind('|')),
              b.effects[0].payload.substr(0, b.effects[0].payload.rfind('|')));
    EXPECT_NE(b.effects[0].payload.find("|function: "), std::string::npos);
  }
}

TEST(ContainmentTest, CtxAndMetatablesAreFrozen) {
  Runner r({{"a.lua", Rule("a", R"(
    local out = {
      pcall(function() ctx.emit = nil end),
      pcall(function() ctx.log.info = nil end),
      getmetatable(ctx),
      getmetatable(msg),
      getmetatable(ctx.shadow_of("t1")),
      getmetatable(""),
      getmetatable(json.decode("[]")),
      getmetatable(msg.payload),
      ("").dump == nil,
      string.dump == nil,
      ("ab"):rep(2),
      type(ctx.emit),
      pcall(setmetatable, json.decode("[]"), {}),
    }
    for i = 1, #out do out[i] = tostring(out[i]) end
    ctx.emit("out", table.concat(out, ","))
  )")}});
  CallResult c = r.Run(0, "{\"a\":{}}");
  ASSERT_EQ(c.outcome, Outcome::kOk) << c.reason;
  EXPECT_EQ(c.effects[0].payload,
            "false,false,false,false,false,false,json array,json view,true,true,abab,function,"
            "false,cannot change a protected metatable");
}

TEST(ContainmentTest, RequireCachesArePerRule) {
  std::string dir = ::testing::TempDir() + "/gnomon_req_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir + "/shared.lua") << "return { n = 0 }";
  }
  RuleSetOptions opts{{"out"}};
  opts.lib_dirs = {dir};
  Runner r({{"a.lua", Rule("a", "local m = require('shared') m.n = m.n + 100 m.evil = true "
                                "ctx.emit('out', m.n)")},
            {"b.lua", Rule("b", "local m = require('shared') m.n = m.n + 1 "
                                "ctx.emit('out', m.n .. ',' .. tostring(m.evil))")}},
           opts);
  ASSERT_EQ(r.Run(0, "{}").effects[0].payload, "100");
  ASSERT_EQ(r.Run(0, "{}").effects[0].payload, "200");
  EXPECT_EQ(r.Run(1, "{}").effects[0].payload, "1,nil");
  std::filesystem::remove_all(dir);
}

// A 100 KB payload with no '=' and a pattern that backtracks over it: LuaJIT's own matcher
// runs for many seconds in C without a hook. Ours fails the call on its instruction budget.
TEST(ContainmentTest, APatternOverALargePayloadFailsThatCallOnly) {
  Runner r({{"p.lua", Rule("p", "local k, v = msg.raw:match('(.-)%s*=%s*(.-);') "
                                "ctx.emit('out', k .. '|' .. v)")},
            {"ok.lua", Rule("ok", "ctx.emit('out', { fine = msg.payload.x })")}});
  std::string big = "{\"x\":\"" + std::string(100000, 'a') + "\"}";
  auto t0 = std::chrono::steady_clock::now();
  CallResult bad = r.Run(0, big);
  EXPECT_EQ(bad.outcome, Outcome::kFailed);
  EXPECT_TRUE(bad.timed_out);
  EXPECT_NE(bad.reason.find("instruction limit of 1000000 exceeded in a string pattern function"),
            std::string::npos)
      << bad.reason;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  // The same rule on a good payload, and the other rule, go on.
  CallResult good = r.Run(0, "a = b;");
  ASSERT_EQ(good.outcome, Outcome::kOk) << good.reason;
  EXPECT_EQ(good.effects[0].payload, "a|b");
  EXPECT_EQ(r.Run(1, "{\"x\":1}").outcome, Outcome::kOk);
  // pcall cannot swallow it.
  Runner s({{"p.lua", Rule("p", "pcall(string.match, msg.raw, '(.-)%s*=%s*(.-);') "
                                "ctx.emit('out', 1)")}});
  EXPECT_EQ(s.Run(0, big).outcome, Outcome::kFailed);
}

TEST(ContainmentTest, AJitRuleInAPatternFunctionStopsOnTheWatchdogsInterrupt) {
  Runner r({{"p.lua", Rule("p", "local k = msg.raw:match('(.-)%s*=%s*(.-);') ctx.emit('out', 1)",
                           "jit = true,")}});
  std::string big(300000, 'a');
  std::thread watchdog([&] {
    for (int i = 0; i < 500 && r.rt->call_seq() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    r.rt->Interrupt(r.rt->call_seq());
  });
  CallResult c = r.Run(0, big);
  watchdog.join();
  EXPECT_EQ(c.outcome, Outcome::kFailed);
  EXPECT_NE(c.reason.find("wall-clock limit"), std::string::npos) << c.reason;
}

TEST(ContainmentTest, PatternsWithTooManyItemsAreRefusedNotACrash) {
  Runner r({{"p.lua", Rule("p", "local ok, e = pcall(string.find, msg.raw, string.rep('a?', "
                                "5000) .. 'b') ctx.emit('out', { ok = ok, e = e })")}});
  CallResult c = r.Run(0, std::string(5000, 'a'));
  ASSERT_EQ(c.outcome, Outcome::kOk) << c.reason;
  EXPECT_NE(c.effects[0].payload.find("pattern too complex"), std::string::npos)
      << c.effects[0].payload;
}

TEST(ContainmentTest, TopLevelCodeRunsUnderALoadBudget) {
  for (const char* top : {"while true do end\n", "local function f() while true do end end f()\n",
                          "local s = string.rep('a', 100000) s:match('(.-)%s*=%s*(.-);')\n"}) {
    for (const char* extra : {"", "jit = true,"}) {
      auto t0 = std::chrono::steady_clock::now();
      auto set = RuleSet::FromSources({{"loop.lua", top + Rule("loop", "", extra)}},
                                      RuleSetOptions{{"out"}});
      ASSERT_FALSE(set.ok()) << top;
      EXPECT_NE(set.status().message().find("loop.lua"), std::string::npos)
          << set.status().message();
      EXPECT_NE(set.status().message().find("instruction budget"), std::string::npos)
          << set.status().message();
      EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
    }
  }
  auto hog = RuleSet::FromSources(
      {{"hog.lua", "local t = {} for i = 1, 1e7 do t[i] = string.rep('x', 100) .. i end\n" +
                       Rule("hog", "")}},
      [] {
        RuleSetOptions o{{"out"}};
        o.max_limits.heap_mb = 64;
        return o;
      }());
  ASSERT_FALSE(hog.ok());
  EXPECT_NE(hog.status().message().find("top-level code went over 64 MB"), std::string::npos)
      << hog.status().message();
}

TEST(ContainmentTest, HeapHoardingAcrossCallsIsCappedAndResetsTheRulesGlobals) {
  Runner r({{"hoard.lua", Rule("hoard", "kept = kept or {} local tag = string.format('%07d;', #kept) "
                                        "kept[#kept + 1] = tag:rep(12 * 1024 * 1024 / 8) "
                                        "ctx.emit('out', #kept)",
                               "limits = { memory_mb = 32, heap_mb = 64 },")},
            {"ok.lua", Rule("ok", "ctx.emit('out', 1)")}});
  int resets = 0, ok = 0;
  size_t most = 0;
  for (int i = 0; i < 40; ++i) {
    CallResult c = r.Run(0, "{}");
    most = std::max(most, r.rt->heap_bytes(0));
    if (c.outcome == Outcome::kOk) {
      ++ok;
      continue;
    }
    EXPECT_NE(c.reason.find("heap limit of 64 MB exceeded"), std::string::npos) << c.reason;
    if (c.state_reset) {
      ++resets;
      EXPECT_NE(c.reason.find("globals were reset"), std::string::npos);
    }
  }
  EXPECT_GT(resets, 3);
  EXPECT_GT(ok, 10);  // after each reset the rule works again
  EXPECT_LE(most, size_t{64} << 20);
  EXPECT_EQ(r.Run(1, "{}").outcome, Outcome::kOk);
}

TEST(ContainmentTest, RuleLimitsAboveTheOperatorsCeilingsDoNotLoad) {
  RuleSetOptions o{{"out"}};
  o.max_limits.wall_ms = 10000;
  o.max_limits.allow_jit = false;
  auto set = RuleSet::FromSources(
      {{"a.lua", Rule("a", "", "jit = true, limits = { wall_ms = 9e12 },")}}, o);
  ASSERT_FALSE(set.ok());
  EXPECT_NE(set.status().message().find(
                "rule.limits.wall_ms: 9000000000000 is above the ceiling of 10000"),
            std::string::npos)
      << set.status().message();
  EXPECT_NE(set.status().message().find("rules.allow_jit is false"), std::string::npos);
  auto huge = RuleSet::FromSources({{"b.lua", Rule("b", "", "limits = { wall_ms = 1e300 },")}},
                                   RuleSetOptions{{"out"}});
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("up to 2^53"), std::string::npos);
}

// Documents whose keys come from a small pool, so that objects often hold one twice: equal
// by their first 8 bytes only, spelled with an escape, empty, nested past the tape scan's 32
// open containers, or past its 128 keys.
class DuplicateProne {
 public:
  explicit DuplicateProne(uint32_t seed) : rng_(seed) {}
  std::string Doc() {
    std::string out;
    Value(out, 0, true);
    return out;
  }

 private:
  void Value(std::string& out, int depth, bool container) {
    bool room = budget_ > 0 && depth < 40;
    --budget_;
    uint32_t kind = container ? rng_() % 2 : room ? rng_() % 6 : 2 + rng_() % 2;
    if (kind == 0 || kind == 4) {
      out += '{';
      uint32_t n = rng_() % 40 == 0 ? 60 + rng_() % 100 : rng_() % 5;
      for (uint32_t i = 0; i < n; ++i) {
        out += i ? "," : "";
        static const char* keys[] = {"a",         "b",           "",
                                     "\\u0061",   "longkey_1",   "longkey_2",
                                     "longkey_1", "temperature", "tempera\\u0074ure",
                                     "x\\u0000y", "x\\u0000z"};
        std::string key = rng_() % 3 == 0 ? keys[rng_() % std::size(keys)]
                                          : "k" + std::to_string(rng_() % (n + 2));
        out += '"' + key + "\":";
        Value(out, depth + 1, false);
      }
      out += '}';
    } else if (kind == 1 || kind == 5) {
      out += '[';
      uint32_t n = rng_() % 4;
      for (uint32_t i = 0; i < n; ++i) {
        out += i ? "," : "";
        Value(out, depth + 1, false);
      }
      out += ']';
    } else {
      static const char* scalars[] = {
          "1",    "-2",   "18446744073709551615",         "1.5", "\"s\"",
          "true", "null", "\"{\\\"a\\\":1,\\\"a\\\":2}\""};
      out += scalars[rng_() % std::size(scalars)];
    }
  }
  std::mt19937 rng_;
  int budget_ = 300;  // values, before only scalars follow
};

TEST(ContainmentTest, TheTapeScanForDuplicateKeysAgreesWithTheDomWalk) {
  simdjson::dom::parser parser;
  int unique = 0;
  int duplicate = 0;
  int unknown = 0;
  for (uint32_t seed = 1; seed <= 4000; ++seed) {
    std::string doc = DuplicateProne(seed).Doc();
    simdjson::dom::element root;
    ASSERT_EQ(parser.parse(doc).get(root), simdjson::SUCCESS) << doc;
    KeyScan fast = ScanTapeForDuplicateKeys(parser.doc);
    std::string where;
    bool slow = FindDuplicateKey(root, where);
    if (fast == KeyScan::kUnknown) {
      ++unknown;
      continue;
    }
    ASSERT_EQ(fast == KeyScan::kDuplicate, slow) << "seed " << seed << ": " << doc;
    (slow ? duplicate : unique)++;
  }
  // Every answer was given often enough to mean something.
  EXPECT_GT(unique, 400);
  EXPECT_GT(duplicate, 400);
  EXPECT_GT(unknown, 20);
  // By hand: what the filter and the 8-byte heads could get wrong.
  for (const auto& [doc, dup] :
       std::vector<std::pair<std::string, bool>>{{R"({"longkey_1":1,"longkey_2":2})", false},
                                                 {R"({"longkey_1":1,"longkey_1":2})", true},
                                                 {R"({"a":1,"\u0061":2})", true},
                                                 {R"({"":1,"":2})", true},
                                                 {R"({"x\u0000y":1,"x\u0000z":2})", false},
                                                 {R"({"a":{"b":1},"b":2})", false},
                                                 {R"({"a":{"b":1},"a":2})", true},
                                                 {R"([{"a":1},{"a":2}])", false},
                                                 {R"([1,"a",{"k":[{"a":1,"b":[],"a":3}]}])", true},
                                                 {R"({"a":"a","b":"a"})", false},
                                                 // Lengths 10 and 8 whose heads collide (the
                                                 // length's bits over the 8th byte): found by
                                                 // fuzz_rule_json.
                                                 {R"({"Hty{mptity":1,"Hty{mpty":2})", false},
                                                 {R"({"Hty{mpty":1,"Hty{mptity":2})", false}}) {
    simdjson::dom::element root;
    ASSERT_EQ(parser.parse(doc).get(root), simdjson::SUCCESS) << doc;
    EXPECT_EQ(ScanTapeForDuplicateKeys(parser.doc), dup ? KeyScan::kDuplicate : KeyScan::kUnique)
        << doc;
  }
}

// An object that holds a key twice: readers disagree on which one counts, so neither is ever
// given out. Reading that key fails, and so does anything that copies or encodes an object or
// array holding such a key anywhere; the other keys read as usual. json.decode refuses the
// whole text.
TEST(ContainmentTest, DuplicateKeysAreRefusedWhereverTheyWouldBeReadWithTheKeyAndPath) {
  const std::string doc =
      R"({"id":"a","list":[{"k":1},{"k":2,"id":3,"k":4}],"id":"b","ok":{"x":1}})";
  struct Case {
    std::string code;  // a Lua expression; its value is emitted
    std::string want;  // the emitted text, or the failure's reason starting with "!"
  };
  const std::vector<Case> cases = {
      {"msg.payload.ok.x", "1"},
      {"msg.payload.list[1].k", "1"},
      {"msg.payload.list[2].id", "3"},  // its object holds "k" twice, not "id"
      {"json.encode(msg.payload.ok)", R"({"x":1})"},
      {"json.totable(msg.payload.list[1]).k", "1"},
      {"#msg.payload.list", "2"},
      {"msg.payload.id", R"(!duplicate key "id" in the object at $)"},
      {"msg.payload.list[2].k", R"(!duplicate key "k" in the object at $.list[1])"},
      {"json.totable(msg.payload)",
       R"(!json.totable: duplicate key "k" in the object at $.list[1])"},
      {"json.totable(msg.payload.list)",
       R"(!json.totable: duplicate key "k" in the object at $.list[1])"},
      {"json.encode(msg.payload.list[2])",
       R"(!value: duplicate key "k" in the object at $.list[1])"},
      {"tostring(msg.payload)", R"(!duplicate key "k" in the object at $.list[1])"},
      {"#msg.payload", R"(!duplicate key "id" in the object at $)"},
      {"select(2, json.pairs(msg.payload))",
       R"(!json.pairs: duplicate key "id" in the object at $)"},
      {"(function() local n = 0 for i in json.pairs(msg.payload.list) do n = n + i end "
       "return n end)()",
       "3"},
      {"select(2, json.pairs(msg.payload.list[2]))",
       R"(!json.pairs: duplicate key "k" in the object at $.list[1])"},
      {"json.decode('{\"a\":{\"x\":1,\"x\":2}}')",
       R"(!json.decode: invalid JSON: duplicate key "x" in the object at $.a)"},
      // A rule may catch the error and go on.
      {"select(2, pcall(function() return msg.payload.id end))",
       R"(duplicate key "id" in the object at $)"},
  };
  for (const Case& c : cases) {
    Runner r({{"a.lua", Rule("a", "ctx.emit('out', tostring(" + c.code + "))")}});
    CallResult res = r.Run(0, doc);
    if (c.want[0] == '!') {
      EXPECT_EQ(res.outcome, Outcome::kFailed) << c.code;
      EXPECT_NE(res.reason.find(c.want.substr(1)), std::string::npos) << c.code << "\n"
                                                                      << res.reason;
    } else {
      ASSERT_EQ(res.outcome, Outcome::kOk) << c.code << "\n" << res.reason;
      ASSERT_EQ(res.effects.size(), 1u) << c.code;
      EXPECT_EQ(res.effects[0].payload.find(c.want), 0u) << c.code << "\n"
                                                         << res.effects[0].payload;
    }
  }
  // ctx.emit of a view encodes it: refused when it holds a key twice, kept otherwise.
  Runner emit(
      {{"a.lua", Rule("a", "ctx.emit('out', msg.payload.ok) ctx.emit('out', msg.payload)")}});
  CallResult res = emit.Run(0, doc);
  EXPECT_EQ(res.outcome, Outcome::kFailed);
  EXPECT_NE(res.reason.find(R"(duplicate key "k" in the object at $.list[1])"), std::string::npos)
      << res.reason;
  EXPECT_TRUE(res.effects.empty()) << "a failed call's effects are discarded";
  res = emit.Run(0, R"({"id":"a","k":{"id":"b"},"ok":{"x":1}})");  // one key in two objects
  ASSERT_EQ(res.outcome, Outcome::kOk) << res.reason;
  ASSERT_EQ(res.effects.size(), 2u);
  EXPECT_EQ(res.effects[1].payload, R"({"id":"a","k":{"id":"b"},"ok":{"x":1}})");
  // Past the tape scan's bounds (more than 128 keys in the open objects), the DOM walk decides:
  // the same outcomes.
  std::string many = "{";
  for (int i = 0; i < 200; ++i) {
    many += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
  }
  many += R"("deep":{"l":[{"k":1,"a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"a":2}]}})";
  Runner whole({{"a.lua", Rule("a", "ctx.emit('out', msg.payload)")}});
  res = whole.Run(0, many);
  EXPECT_EQ(res.outcome, Outcome::kFailed);
  EXPECT_NE(res.reason.find(R"(duplicate key "a" in the object at $.deep.l[0])"), std::string::npos)
      << res.reason;
  Runner read({{"a.lua", Rule("a",
                              "ctx.emit('out', tostring(msg.payload.k199) .. '|' .. "
                              "tostring(msg.payload.deep.l[1].h))")}});
  res = read.Run(0, many);
  ASSERT_EQ(res.outcome, Outcome::kOk) << res.reason;
  EXPECT_EQ(res.effects[0].payload, "199|1");
  many.back() = ',';  // no duplicates at all: the whole document passes
  many.replace(many.find(R"(,"a":2)"), 6, "");
  many.back() = '}';
  res = whole.Run(0, many);
  ASSERT_EQ(res.outcome, Outcome::kOk) << res.reason << "\n" << many;
  EXPECT_EQ(res.effects[0].payload, many);
}

TEST(ContainmentTest, NumbersBeyondRangeArriveAsExactStringsAndTheRestOfTheDocumentStays) {
  Runner r({{"a.lua", Rule("a", R"lua(
    local p = msg.payload
    if p == nil then return ctx.emit("out", tostring(msg.payload_error)) end
    ctx.emit("out", tostring(msg.payload_error) .. "|" .. tostring(p.big) .. "|" ..
                    tostring(p.neg) .. "|" .. tostring(p.inf) .. "|" .. tostring(p.ok) .. "|" ..
                    tostring(p.s) .. "|" .. tostring(json.decode('[1e400]')[1]) .. "|" ..
                    json.encode(p))
  )lua")}});
  CallResult c = r.Run(0, R"({"big":123456789012345678901234567890,"neg":-99999999999999999999,)"
                          R"("inf":1e400,"ok":1.5,"s":"1e400 stays \"a string\""})");
  ASSERT_EQ(c.outcome, Outcome::kOk) << c.reason;
  EXPECT_EQ(c.effects[0].payload.substr(0, c.effects[0].payload.rfind('|')),
            "nil|123456789012345678901234567890|-99999999999999999999|1e400|1.5|"
            "1e400 stays \"a string\"|1e400");
  // Malformed numbers are still invalid JSON.
  c = r.Run(0, R"({"a":01})");
  ASSERT_EQ(c.effects.size(), 1u) << c.reason;
  EXPECT_NE(c.effects[0].payload.find("invalid JSON"), std::string::npos) << c.effects[0].payload;
}

// The matcher against LuaJIT's own string functions, on random subjects and a corpus of
// patterns: the same results (or both an error).
class PatternConformanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    native_ = luaL_newstate();
    ours_ = luaL_newstate();
    luaL_openlibs(native_);
    luaL_openlibs(ours_);
    lua_getglobal(ours_, "string");
    PushPatternFunctions(ours_);
    for (const char* f : {"find", "match", "gmatch", "gsub"}) {
      lua_getfield(ours_, -1, f);
      lua_setfield(ours_, -3, f);
    }
    lua_pop(ours_, 2);
  }
  void TearDown() override {
    lua_close(native_);
    lua_close(ours_);
  }
  static std::string Eval(lua_State* L, const std::string& code, const std::string& s,
                          const std::string& p) {
    if (luaL_loadstring(L, code.c_str()) != 0) {
      return "load error";
    }
    lua_pushlstring(L, s.data(), s.size());
    lua_setglobal(L, "S");
    lua_pushlstring(L, p.data(), p.size());
    lua_setglobal(L, "P");
    if (lua_pcall(L, 0, 1, 0) != 0) {
      lua_pop(L, 1);
      return "error";
    }
    std::string out = lua_tostring(L, -1) != nullptr ? lua_tostring(L, -1) : "nil";
    lua_pop(L, 1);
    return out;
  }
  lua_State* native_ = nullptr;
  lua_State* ours_ = nullptr;
};

TEST_F(PatternConformanceTest, SameResultsAsLuaJIT) {
  const char* patterns[] = {
      "a",        "a*",       "a-b",      "^a+",         "b$",         "(a)(b)",     "()a()",
      "%d+",      "%a%d",     "[%w_]+",   "[^ab]",       "[a-c]+",     "%s*=%s*",    "(.-)=(.*)",
      "%bab",     "%f[%w]%w+", "(a)%1",   "[]]",         "[^]]",       "%.",         "a?b",
      ".-b",      "(a*(.)%w(%s*))", "%%", "[%a-]",       "x*$",        "^(%d*)(.-)$", "%u%l*",
      "[",        "(",        "%",        "a)",          "%b",         "%f",         "(()",
      "%1",       "[a-]",     "[-a]",     "(a-)(b-)",    "",           "^",          "$",
  };
  const char* codes[] = {
      "return table.concat({tostring(string.find(S, P))}, ',')",
      "local r = {string.find(S, P, 3)} return table.concat((function() local t = {} for i = 1, "
      "select('#', unpack(r)) do t[i] = tostring(r[i]) end return t end)(), ',')",
      "local r = {string.match(S, P)} local t = {} for i = 1, #r do t[i] = tostring(r[i]) end "
      "return table.concat(t, ',') .. '#' .. #r",
      "local t = {} for a, b in string.gmatch(S, P) do t[#t + 1] = tostring(a) .. '/' .. "
      "tostring(b) if #t > 50 then break end end return table.concat(t, ',')",
      "local r, n = string.gsub(S, P, '<%0>') return r .. '#' .. n",
      "local r, n = string.gsub(S, P, function(x) return x:upper() end, 2) return r .. '#' .. n",
      "local r, n = string.gsub(S, P, { a = 'A', ab = false }) return r .. '#' .. n",
      "return tostring(string.find(S, P, 1, true))",
  };
  std::mt19937 rng(12345);
  const std::string alphabet = "aab b=1;()]%.\tZ9_-";
  int compared = 0;
  for (int round = 0; round < 60; ++round) {
    std::string s;
    size_t len = rng() % 24;
    for (size_t i = 0; i < len; ++i) {
      s += alphabet[rng() % alphabet.size()];
    }
    for (const char* p : patterns) {
      for (const char* code : codes) {
        std::string a = Eval(native_, code, s, p);
        std::string b = Eval(ours_, code, s, p);
        ASSERT_EQ(a, b) << "subject '" << s << "' pattern '" << p << "' code: " << code;
        ++compared;
      }
    }
  }
  EXPECT_GT(compared, 20000);
}

}  // namespace
}  // namespace gnomon::rules

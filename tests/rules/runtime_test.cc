// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>
#include <simdjson.h>

#include <algorithm>
#include <cstdint>
#include <map>

#include "gnomon/rules/rules.h"
#include "gnomon/shadow/model.h"

namespace gnomon::rules {
namespace {

// One rule whose handle body is `body`, from "devices/+/telemetry", emitting to "out".
class RuntimeTest : public ::testing::Test {
 protected:
  void Load(const std::string& body, const std::string& extra = "") {
    std::string src = "return rule {\n  name = \"t\",\n  from = { \"devices/+/telemetry\" },\n" +
                      extra + "  handle = function(msg, ctx)\n" + body + "\n  end,\n}\n";
    auto set = RuleSet::FromSources({{"t.lua", src}}, RuleSetOptions{{"out", "alerts"}});
    ASSERT_TRUE(set.ok()) << set.status().message();
    auto rt = RuleRuntime::Create(*set, clock_);
    ASSERT_TRUE(rt.ok()) << rt.status().message();
    rt_ = std::move(rt).value();
  }

  CallResult Run(const std::string& payload, const std::string& topic = "devices/d1/telemetry") {
    payload_ = payload;
    payload_.reserve(payload_.size() + simdjson::SIMDJSON_PADDING);
    MessageView m{topic, "d1", &payload_, "src", &headers_, 1234};
    CallResult r;
    rt_->Run(0, m, r);
    return r;
  }

  // Emits json.encode(expr) to "out" and returns what was emitted.
  std::string Eval(const std::string& expr, const std::string& payload = "{}") {
    Load("    ctx.emit('out', json.encode(" + expr + "))");
    CallResult r = Run(payload);
    EXPECT_EQ(r.outcome, Outcome::kOk) << r.reason;
    if (r.effects.size() != 1) {
      return "<no effect: " + r.reason + ">";
    }
    return r.effects[0].payload;
  }

  FixedClock clock_{1700000000123};
  std::unique_ptr<RuleRuntime> rt_;
  std::string payload_;
  Headers headers_ = {{"h1", "v1"}};
};

TEST_F(RuntimeTest, LazyPayloadKeepsJsonTypes) {
  const std::string p =
      R"({"i":42,"f":1.5,"s":"x","b":true,"n":null,"a":[1,[2,3]],"o":{"k":{"z":"deep"}},)"
      R"("big":9007199254740993,"neg":-9223372036854775808,"u":18446744073709551615})";
  EXPECT_EQ(Eval("{ msg.payload.i, msg.payload.f, msg.payload.s, msg.payload.b }", p),
            R"([42,1.5,"x",true])");
  EXPECT_EQ(Eval("msg.payload.n == json.null", p), "true");
  EXPECT_EQ(Eval("msg.payload.a[2][1]", p), "2");
  EXPECT_EQ(Eval("#msg.payload.a", p), "2");
  EXPECT_EQ(Eval("msg.payload.o.k.z", p), R"("deep")");
  EXPECT_EQ(Eval("msg.payload.missing == nil", p), "true");
  EXPECT_EQ(Eval("msg.payload.a[9] == nil", p), "true");
  // Integers beyond 2^53 come as strings, exact.
  EXPECT_EQ(Eval("msg.payload.big", p), R"("9007199254740993")");
  EXPECT_EQ(Eval("msg.payload.neg", p), R"("-9223372036854775808")");
  EXPECT_EQ(Eval("msg.payload.u", p), R"("18446744073709551615")");
  // A view re-encodes as its JSON, unchanged.
  EXPECT_EQ(Eval("msg.payload.o", p), R"({"k":{"z":"deep"}})");
  EXPECT_EQ(Eval("msg.payload.a", p), R"([1,[2,3]])");
}

TEST_F(RuntimeTest, EmptyArraysAndObjectsSurviveRoundTrip) {
  const std::string p = R"({"e":[],"o":{},"nested":{"l":[{},[]]}})";
  EXPECT_EQ(Eval("msg.payload", p), p);
  EXPECT_EQ(Eval("json.totable(msg.payload)", p).size(), p.size());
  EXPECT_EQ(Eval("json.decode('[]')"), "[]");
  EXPECT_EQ(Eval("json.decode('{}')"), "{}");
  EXPECT_EQ(Eval("json.decode('{\"a\":[]}')"), R"({"a":[]})");
  EXPECT_EQ(Eval("json.array({})"), "[]");
  EXPECT_EQ(Eval("{}"), "{}");
  EXPECT_EQ(Eval("{ 1, 2, json.null }"), "[1,2,null]");
}

TEST_F(RuntimeTest, DecodeEncodeRoundTripMatchesSimdjson) {
  const std::string docs[] = {
      R"({"a":1,"b":[true,false,null],"c":{"d":"e\u00e9\n"}})",
      R"([1,-2,3.25,1e+300,"x"])",
      R"({"big":"12345678901234567890"})",
  };
  for (const auto& d : docs) {
    std::string out = Eval("json.decode(msg.raw)", d);
    simdjson::dom::parser p1, p2;
    simdjson::dom::element a, b;
    ASSERT_EQ(p1.parse(d).get(a), simdjson::SUCCESS);
    ASSERT_EQ(p2.parse(out).get(b), simdjson::SUCCESS) << out;
    // Same document up to key order: compare each key's minified value.
    if (a.is_object()) {
      for (auto f : simdjson::dom::object(a)) {
        simdjson::dom::element v;
        ASSERT_EQ(b[f.key].get(v), simdjson::SUCCESS) << f.key;
        EXPECT_EQ(simdjson::minify(v), simdjson::minify(f.value)) << f.key;
      }
      EXPECT_EQ(simdjson::dom::object(a).size(), simdjson::dom::object(b).size());
    } else {
      EXPECT_EQ(simdjson::minify(a), simdjson::minify(b));
    }
  }
}

TEST_F(RuntimeTest, TopicSegmentsAndMessageFields) {
  EXPECT_EQ(Eval("{ msg.topic, msg.topic[1], msg.topic[2], msg.topic[3], msg.device, msg.ts, "
                 "msg.source }"),
            R"(["devices/d1/telemetry","devices","d1","telemetry","d1",1234,"src"])");
  EXPECT_EQ(Eval("msg.topic[4] == nil and msg.topic[0] == nil"), "true");
  EXPECT_EQ(Eval("msg.topic:upper()"), R"("DEVICES/D1/TELEMETRY")");
  EXPECT_EQ(Eval("msg.headers.h1"), R"("v1")");
  EXPECT_EQ(Eval("msg.raw", R"({"x":1})"), R"("{\"x\":1}")");
  EXPECT_EQ(Eval("ctx.now()"), "1700000000123");
}

TEST_F(RuntimeTest, NonJsonPayloadStillReachesRule) {
  EXPECT_EQ(Eval("{ msg.payload == nil, msg.raw, msg.payload_error ~= nil }", "not json"),
            R"([true,"not json",true])");
  EXPECT_EQ(Eval("msg.payload_error", ""), R"("empty payload")");
  EXPECT_EQ(Eval("msg.payload_error == nil", "{}"), "true");
  std::string bad_utf8 = "{\"s\":\"\xff\"}";
  EXPECT_NE(Eval("msg.payload_error", bad_utf8).find("UTF-8"), std::string::npos);
}

TEST_F(RuntimeTest, DeepNestingIsAnErrorNotACrash) {
  std::string deep(5000, '[');
  deep += std::string(5000, ']');
  EXPECT_NE(Eval("msg.payload_error", deep).find("too deep"), std::string::npos);
}

TEST_F(RuntimeTest, LargePayloadWorks) {
  std::string big = "{\"pad\":\"" + std::string(1 << 20, 'x') + "\",\"t\":7}";
  EXPECT_EQ(Eval("msg.payload.t", big), "7");
}

TEST_F(RuntimeTest, EmitAndPublishAreBufferedWithOptions) {
  Load(R"(
    ctx.emit("alerts", { t = msg.payload.t }, { key = "k1", headers = { a = "b" } })
    ctx.emit("out", "raw text")
    ctx.publish("devices/" .. msg.device .. "/cmd", { fan = "on" }, { qos = 0, retain = true }))");
  CallResult r = Run(R"({"t":60})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  ASSERT_EQ(r.effects.size(), 3u);
  EXPECT_EQ(r.effects[0].kind, Effect::Kind::kEmit);
  EXPECT_EQ(r.effects[0].sink, 1u);
  EXPECT_EQ(r.effects[0].payload, R"({"t":60})");
  EXPECT_EQ(r.effects[0].key, "k1");
  EXPECT_EQ(r.effects[0].headers, (Headers{{"a", "b"}}));
  EXPECT_EQ(r.effects[1].payload, "raw text");
  EXPECT_FALSE(r.effects[1].json);
  EXPECT_EQ(r.effects[2].kind, Effect::Kind::kPublish);
  EXPECT_EQ(r.effects[2].topic, "devices/d1/cmd");
  EXPECT_EQ(r.effects[2].qos, 0);
  EXPECT_TRUE(r.effects[2].retain);
}

TEST_F(RuntimeTest, FailureDiscardsAllEffects) {
  Load(R"(
    ctx.emit("out", { a = 1 })
    ctx.publish("x/y", "z")
    error("boom"))");
  CallResult r = Run("{}");
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_TRUE(r.effects.empty());
  // file:line of the error, and a traceback.
  EXPECT_NE(r.reason.find("t.lua:8: boom"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("stack traceback"), std::string::npos) << r.reason;
}

TEST_F(RuntimeTest, DropFiltersAndDiscards) {
  Load(R"(
    ctx.emit("out", { a = 1 })
    if true then return ctx.drop("no temp") end
    ctx.emit("out", { a = 2 }))");
  CallResult r = Run("{}");
  EXPECT_EQ(r.outcome, Outcome::kFiltered);
  EXPECT_EQ(r.reason, "no temp");
  EXPECT_TRUE(r.effects.empty());
}

TEST_F(RuntimeTest, FailCannotBeSwallowedByPcall) {
  Load(R"(
    pcall(ctx.fail, "bad reading")
    ctx.emit("out", { a = 1 }))");
  CallResult r = Run("{}");
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_EQ(r.reason, "bad reading");
  EXPECT_TRUE(r.effects.empty());
}

TEST_F(RuntimeTest, BadEmitsFailTheCallWithAReason) {
  struct Case {
    const char* body;
    const char* reason;
  } cases[] = {
      {"ctx.emit('nope', {})", "unknown sink 'nope'"},
      {"ctx.emit('out', { f = function() end })", "record.f: cannot encode a function"},
      {"ctx.emit('out', { s = '\\255' })", "record.s: string is not valid UTF-8"},
      {"local t = {} t.self = t ctx.emit('out', t)", "nested deeper than"},
      {"ctx.emit('out', { x = 0/0 })", "not finite"},
      {"ctx.publish('a/+', 'x')", "wildcard"},
      {"ctx.publish('a/b', 'x', { qos = 2 })", "qos must be 0 or 1"},
      {"ctx.emit('out', {}, { bogus = 1 })", "unknown or mistyped option 'bogus'"},
  };
  for (const auto& c : cases) {
    Load(c.body);
    CallResult r = Run("{}");
    EXPECT_EQ(r.outcome, Outcome::kFailed) << c.body;
    EXPECT_NE(r.reason.find(c.reason), std::string::npos) << c.body << " → " << r.reason;
  }
}

TEST_F(RuntimeTest, PayloadViewDiesWhenCallReturns) {
  Load("    kept = kept or msg.payload\n    ctx.emit('out', { v = kept.a })");
  EXPECT_EQ(Run(R"({"a":1})").outcome, Outcome::kOk);
  CallResult r = Run(R"({"a":2})");
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("used after handle returned"), std::string::npos) << r.reason;
}

// json.pairs walks a view in place: fields in the document's order (a table would give them in
// hash order), an array's items with their 1-based index, nested objects and arrays as views.
TEST_F(RuntimeTest, JsonPairsWalksAViewInTheDocumentsOrder) {
  const std::string p = R"({"z":1,"a":"x","m":{"k":true},"l":[10,[20],{}],"e":{},"n":null})";
  auto walk = [](const std::string& v) {
    return "(function() local out = json.array({}) for k, x in json.pairs(" + v +
           ") do out[#out + 1] = { k, x } end return out end)()";
  };
  EXPECT_EQ(Eval(walk("msg.payload"), p),
            R"([["z",1],["a","x"],["m",{"k":true}],["l",[10,[20],{}]],["e",{}],["n",null]])");
  EXPECT_EQ(Eval(walk("msg.payload.l"), p), R"([[1,10],[2,[20]],[3,{}]])");
  EXPECT_EQ(Eval(walk("msg.payload.e"), p), "[]");
  EXPECT_EQ(Eval(walk("json.decode('{\"b\":2}')"), p), R"([["b",2]])");  // a table
  // Two walks of one view at once keep their own places; leaving a walk early is fine.
  EXPECT_EQ(Eval("(function() local n = 0 for k in json.pairs(msg.payload) do "
                 "for k2 in json.pairs(msg.payload) do n = n + 1 if k2 == 'm' then break end end "
                 "end return n end)()",
                 p),
            "18");
}

// The iterator json.pairs returns reads only its own state, and only while the call lasts.
TEST_F(RuntimeTest, JsonPairsIteratorRefusesAForeignStateAndADeadOne) {
  EXPECT_EQ(Eval("(function() local f, s = json.pairs(msg.payload) "
                 "local ok, e = pcall(f, msg.payload) return { ok, e } end)()",
                 R"({"a":1})"),
            R"([false,"json.pairs: the iterator was given something other than its state"])");
  EXPECT_EQ(Eval("(function() local f = json.pairs(msg.payload) "
                 "return { pcall(f, 7) } end)()",
                 R"({"a":1})"),
            R"([false,"json.pairs: the iterator was given something other than its state"])");
  EXPECT_EQ(Eval("(function() local f = json.pairs(msg.payload) "
                 "return { pcall(f, select(2, json.pairs(msg.payload.l))) } end)()",
                 R"({"a":1,"l":[1]})"),
            "[true,1,1]");  // another walk's state is a state
  Load(
      "    if kept == nil then kept = { json.pairs(msg.payload) } end\n"
      "    ctx.emit('out', { k = kept[1](kept[2]) })");
  EXPECT_EQ(Run(R"({"a":1})").outcome, Outcome::kOk);
  CallResult r = Run(R"({"b":2})");
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("used after handle returned"), std::string::npos) << r.reason;
}

// A rule that keeps a table per device (several MB) is collected before its garbage grows to
// the size of what it keeps (Lua's default would let the heap reach twice that): between the
// lowest heap seen right after a collection and the highest, no more than half again.
TEST_F(RuntimeTest, GarbageStaysAFractionOfWhatARuleKeepsOnceItKeepsMegabytes) {
  Load(
      "    if devices == nil then devices = {} for i = 1, 20000 do devices[i] = { i, tostring(i) } "
      "end end\n"
      "    local t = {} for i = 1, 200 do t[i] = { x = i } end\n"
      "    devices[#devices % 20000 + 1] = { msg.payload.n }");
  size_t low = SIZE_MAX;
  size_t high = 0;
  for (int i = 0; i < 3000; ++i) {
    ASSERT_EQ(Run(R"({"n":1})").outcome, Outcome::kOk);
    if (i >= 100) {  // past the first collections after the table was built
      low = std::min(low, rt_->heap_bytes(0));
      high = std::max(high, rt_->heap_bytes(0));
    }
  }
  EXPECT_GT(low, size_t{2} << 20);
  EXPECT_LT(high, low + low / 2) << "low " << low << " high " << high;
}

TEST_F(RuntimeTest, SandboxHidesDangerousLibraries) {
  EXPECT_EQ(Eval("{ io == nil, os.execute == nil, os.exit == nil, os.remove == nil, "
                 "loadfile == nil, dofile == nil, load == nil, loadstring == nil, "
                 "require ~= nil, debug == nil, ffi == nil, package == nil, "
                 "string.dump == nil, getfenv == nil, setfenv == nil }"),
            "[true,true,true,true,true,true,true,true,true,true,true,true,true,true,true]");
  EXPECT_EQ(Eval("getmetatable('') == false"), "true");
  EXPECT_EQ(Eval("type(os.time()) == 'number' and type(math.floor) == 'function' and "
                 "type(bit.band) == 'function'"),
            "true");
}

TEST(RuleIsolationTest, RulesHaveSeparateEnvironments) {
  const char* a = R"(return rule { name = "a", from = "x/#",
      handle = function(msg, ctx) counter = (counter or 0) + 1; string.upper = nil
                                  ctx.emit("out", counter) end })";
  const char* b = R"(return rule { name = "b", from = "x/#",
      handle = function(msg, ctx) ctx.emit("out", { c = counter, up = string.upper("q") }) end })";
  auto set = RuleSet::FromSources({{"a.lua", a}, {"b.lua", b}}, RuleSetOptions{{"out"}});
  ASSERT_TRUE(set.ok()) << set.status().message();
  FixedClock clock(0);
  auto rt = RuleRuntime::Create(*set, clock);
  ASSERT_TRUE(rt.ok());
  std::string payload = "{}";
  MessageView m{"x/1", "d", &payload, "s", nullptr, 0};
  CallResult r;
  (*rt)->Run(0, m, r);
  (*rt)->Run(0, m, r);
  EXPECT_EQ(r.effects[0].payload, "2");  // globals persist within a rule
  (*rt)->Run(1, m, r);
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(r.effects[0].payload, R"({"up":"Q"})");  // nothing leaked from rule a
}

}  // namespace
}  // namespace gnomon::rules

namespace gnomon::rules {
namespace {

class LimitsTest : public ::testing::Test {
 protected:
  void Load(std::vector<std::pair<std::string, std::string>> rules) {
    std::vector<std::pair<std::string, std::string>> files;
    for (auto& [name, body] : rules) {
      files.emplace_back(name + ".lua", "return rule { name = '" + name + "', from = 'x/#', " + body + " }");
    }
    auto set = RuleSet::FromSources(files, RuleSetOptions{{"out"}});
    ASSERT_TRUE(set.ok()) << set.status().message();
    auto rt = RuleRuntime::Create(*set, clock_);
    ASSERT_TRUE(rt.ok()) << rt.status().message();
    rt_ = std::move(rt).value();
  }
  CallResult Run(uint32_t rule) {
    MessageView m{"x/1", "d", &payload_, "s", nullptr, 0};
    CallResult r;
    rt_->Run(rule, m, r);
    return r;
  }
  FixedClock clock_{0};
  std::string payload_ = "{}";
  std::unique_ptr<RuleRuntime> rt_;
};

TEST_F(LimitsTest, RunawayLoopFailsThatCallOnlyAndTheWorkerGoesOn) {
  Load({{"loop", "handle = function(msg, ctx) ctx.emit('out', 1) while true do end end"},
        {"ok", "handle = function(msg, ctx) ctx.emit('out', { fine = true }) end"}});
  CallResult r = Run(0);
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("instruction limit of 1000000 exceeded"), std::string::npos) << r.reason;
  EXPECT_TRUE(r.effects.empty());
  EXPECT_EQ(Run(1).outcome, Outcome::kOk);
  EXPECT_EQ(Run(0).outcome, Outcome::kFailed);  // again, and again cleanly
  EXPECT_EQ(Run(1).effects.size(), 1u);
}

TEST_F(LimitsTest, PcallCannotSwallowLimitsOrStops) {
  Load({{"sneaky", "handle = function(msg, ctx) while true do pcall(function() while true do end end) end end"},
        {"sneaky_drop", "handle = function(msg, ctx) pcall(ctx.drop, 'x') ctx.emit('out', 1) end"},
        {"sneaky_x", "handle = function(msg, ctx) xpcall(function() while true do end end, function(e) return e end) ctx.emit('out', 1) end"}});
  CallResult r = Run(0);
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("instruction limit"), std::string::npos) << r.reason;
  r = Run(1);
  EXPECT_EQ(r.outcome, Outcome::kFiltered);
  EXPECT_TRUE(r.effects.empty());
  r = Run(2);
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_TRUE(r.effects.empty());
}

TEST_F(LimitsTest, MemoryBombFailsWithAClearReason) {
  Load({{"bomb", "limits = { memory_mb = 8, instructions = 1e9 }, handle = function(msg, ctx) "
                 "local t = {} for i = 1, 1e7 do t[i] = string.rep('x', 1000) .. i end end"},
        {"huge", "handle = function(msg, ctx) local s = string.rep('x', 1e9) end"},
        {"caught", "handle = function(msg, ctx) pcall(string.rep, 'x', 1e9) ctx.emit('out', 1) end"},
        {"ok", "handle = function(msg, ctx) ctx.emit('out', { fine = true }) end"}});
  for (uint32_t i : {0u, 1u, 2u}) {
    CallResult r = Run(i);
    EXPECT_EQ(r.outcome, Outcome::kFailed) << i;
    EXPECT_NE(r.reason.find("memory limit of"), std::string::npos) << i << ": " << r.reason;
    EXPECT_TRUE(r.effects.empty());
  }
  EXPECT_EQ(Run(3).outcome, Outcome::kOk);
}

TEST_F(LimitsTest, InstructionLimitIsConfigurableAndJitRulesAreNotCounted) {
  const char* work = "handle = function(msg, ctx) local n = 0 for i = 1, 3e6 do n = n + i end "
                     "ctx.emit('out', n) end";
  Load({{"default", work},
        {"raised", std::string("limits = { instructions = 1e8 }, ") + work},
        {"jitted", std::string("jit = true, ") + work}});
  EXPECT_EQ(Run(0).outcome, Outcome::kFailed);
  EXPECT_EQ(Run(1).outcome, Outcome::kOk);
  CallResult r = Run(2);
  EXPECT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(r.effects[0].payload, "4500001500000");
}

}  // namespace
}  // namespace gnomon::rules

#include "tests/support/test_support.h"

namespace gnomon::rules {
namespace {

TEST(RequireTest, LoadsModulesFromLibraryFoldersOnly) {
  testing::TempDir lib;
  lib.Write("util.lua", "local M = {} function M.double(x) return x * 2 end counter = 1 return M");
  lib.Write("sub/mod.lua", "return { name = 'sub.mod', util = require('util') }");
  lib.Write("loop.lua", "return function() while true do end end");
  lib.Write("a.lua", "return require('b')");
  lib.Write("b.lua", "return require('a')");
  RuleSetOptions opts{{"out"}};
  opts.lib_dirs = {lib.path()};
  auto body = [](const std::string& b) {
    return "return rule { name = 'r', from = 'x/#', handle = function(msg, ctx) " + b + " end }";
  };
  FixedClock clock(0);
  std::string payload = "{}";
  MessageView m{"x/1", "d", &payload, "s", nullptr, 0};
  auto run = [&](const std::string& b) {
    auto set = RuleSet::FromSources({{"r.lua", body(b)}}, opts);
    EXPECT_TRUE(set.ok()) << set.status().message();
    auto rt = RuleRuntime::Create(*set, clock);
    EXPECT_TRUE(rt.ok());
    CallResult r;
    (*rt)->Run(0, m, r);
    return r;
  };
  CallResult r = run("local u = require('util') ctx.emit('out', { u.double(21), counter == nil, "
                     "require('sub.mod').name, require('sub.mod').util == u })");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(r.effects[0].payload, R"([42,true,"sub.mod",true])");  // module globals stay its own

  r = run("require('nope')");
  EXPECT_NE(r.reason.find("module 'nope' not found (tried: " + lib.path() + "/nope.lua)"),
            std::string::npos)
      << r.reason;
  r = run("require('../etc/passwd')");
  EXPECT_NE(r.reason.find("invalid module name"), std::string::npos) << r.reason;
  r = run("require('a')");
  EXPECT_NE(r.reason.find("circular require"), std::string::npos) << r.reason;
  r = run("require('loop')()");  // a module's code counts against the rule's budget
  EXPECT_NE(r.reason.find("instruction limit"), std::string::npos) << r.reason;

  opts.lib_dirs.clear();
  r = run("require('util')");
  EXPECT_NE(r.reason.find("no rule library folders configured"), std::string::npos) << r.reason;
}

}  // namespace
}  // namespace gnomon::rules

#include <thread>

namespace gnomon::rules {
namespace {

TEST(InterruptTest, WatchdogInterruptStopsAnInterpretedCall) {
  auto set = RuleSet::FromSources(
      {{"r.lua", "return rule { name = 'r', from = 'x/#', limits = { instructions = 1e15 }, "
                 "handle = function(msg, ctx) while msg.payload.loop do end ctx.emit('out', 1) end }"}},
      RuleSetOptions{{"out"}});
  ASSERT_TRUE(set.ok());
  FixedClock clock(0);
  auto rt = RuleRuntime::Create(*set, clock);
  ASSERT_TRUE(rt.ok());
  std::string payload = "{\"loop\":true}";
  MessageView m{"x/1", "d", &payload, "s", nullptr, 0};
  RuleRuntime* runtime = rt->get();
  std::jthread watchdog([runtime] {
    // Interrupt whatever call is running once it has started.
    for (int i = 0; i < 200 && runtime->call_seq() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    runtime->Interrupt(runtime->call_seq());
  });
  CallResult r;
  runtime->Run(0, m, r);
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("wall-clock limit of 5000 ms exceeded"), std::string::npos) << r.reason;
  watchdog.join();
  // A stale interrupt (for the finished call) does not hit the next call.
  runtime->Interrupt(runtime->call_seq() - 1);
  payload = "{}";
  CallResult r2;
  runtime->Run(0, m, r2);
  EXPECT_EQ(r2.outcome, Outcome::kOk) << r2.reason;
}

}  // namespace
}  // namespace gnomon::rules

namespace gnomon::rules {
namespace {

TEST(PayloadShareTest, RulesOfOneMessageShareAParseAndTheNextMessageGetsItsOwn) {
  auto set = RuleSet::FromSources(
      {{"a.lua", "return rule { name = 'a', from = 'x/#', handle = function(msg, ctx) "
                 "ctx.emit('out', { a = (msg.payload or {}).v }) end }"},
       {"b.lua", "return rule { name = 'b', from = 'x/#', handle = function(msg, ctx) "
                 "ctx.emit('out', { b = (msg.payload or {}).v, e = msg.payload_error }) end }"}},
      RuleSetOptions{{"out"}});
  ASSERT_TRUE(set.ok());
  FixedClock clock(0);
  auto rt = RuleRuntime::Create(*set, clock);
  ASSERT_TRUE(rt.ok());
  std::string p1 = "{\"v\":1}", p2 = "{\"v\":2}", bad = "nope";
  CallResult r;
  MessageView m1{"x/1", "d", &p1, "s", nullptr, 0, 1};
  (*rt)->Run(0, m1, r);
  EXPECT_EQ(r.effects[0].payload, R"({"a":1})");
  (*rt)->Run(1, m1, r);
  EXPECT_EQ(r.effects[0].payload, R"({"b":1})");
  MessageView m2{"x/1", "d", &p2, "s", nullptr, 0, 2};
  (*rt)->Run(1, m2, r);
  EXPECT_EQ(r.effects[0].payload, R"({"b":2})");
  MessageView m3{"x/1", "d", &bad, "s", nullptr, 0, 3};
  (*rt)->Run(0, m3, r);
  EXPECT_EQ(r.outcome, Outcome::kOk);  // msg.payload is nil: { a = nil } is {}
  (*rt)->Run(1, m3, r);
  ASSERT_EQ(r.effects.size(), 1u) << r.reason;
  EXPECT_NE(r.effects[0].payload.find("invalid JSON"), std::string::npos) << r.effects[0].payload;
}

}  // namespace
}  // namespace gnomon::rules

namespace gnomon::rules {
namespace {

class FakeShadows final : public ShadowReader {
 public:
  Result<std::optional<std::string>> ReadShadow(std::string_view thing,
                                                std::string_view name) override {
    reads.push_back(std::string(thing) + "/" + std::string(name));
    auto it = docs.find(std::string(thing) + "/" + std::string(name));
    if (it == docs.end()) {
      return std::optional<std::string>();
    }
    return std::optional<std::string>(it->second);
  }
  // With `versions` set: versions without the document (as the engine has its own shadows').
  std::optional<Result<std::optional<int64_t>>> ReadShadowVersion(std::string_view thing,
                                                                  std::string_view name) override {
    if (!version_error.empty()) {
      return Result<std::optional<int64_t>>(Unavailable(version_error));
    }
    if (versions == nullptr) {
      return std::nullopt;
    }
    std::string key = std::string(thing) + "/" + std::string(name);
    version_reads.push_back(key);
    auto it = versions->find(key);
    return Result<std::optional<int64_t>>(
        it == versions->end() ? std::optional<int64_t>() : std::optional<int64_t>(it->second));
  }
  const shadow::ThingModel* Model(std::string_view thing) override {
    return thing == "d1" ? model.get() : nullptr;
  }
  std::map<std::string, std::string> docs;
  std::vector<std::string> reads;
  const std::map<std::string, int64_t>* versions = nullptr;
  std::string version_error;  // not empty: version reads fail with it
  std::vector<std::string> version_reads;
  std::shared_ptr<const shadow::ThingModel> model;
};

class ShadowRuntimeTest : public RuntimeTest {
 protected:
  CallResult RunWithShadows(const std::string& payload = "{}") {
    payload_ = payload;
    payload_.reserve(payload_.size() + simdjson::SIMDJSON_PADDING);
    MessageView m{"devices/d1/telemetry", "d1", &payload_, "src", &headers_, 1234, 0, &shadows_};
    CallResult r;
    rt_->Run(0, m, r);
    return r;
  }
  FakeShadows shadows_;
};

TEST_F(ShadowRuntimeTest, ReadsSeeTheDocumentOncePerCall) {
  shadows_.docs["d1/"] =
      R"({"state":{"desired":{"t":5},"reported":{"t":3},"delta":{"t":5}},"version":7})";
  Load(R"(    local s = ctx.shadow
    ctx.emit("out", { s.version, s.reported.t, s.desired.t, s.delta.t,
                      ctx.shadow:get().state.reported.t,
                      ctx.shadow_of("other"):get() == nil,
                      ctx.shadow_of("d1", "cfg").version == nil }))");
  CallResult r = RunWithShadows();
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  ASSERT_EQ(r.effects.size(), 1u);
  EXPECT_EQ(r.effects[0].payload, "[7,3,5,5,3,true,true]");
  // One read per shadow per call, however many accessors were used.
  EXPECT_EQ(shadows_.reads, (std::vector<std::string>{"d1/", "other/", "d1/cfg"}));
  shadows_.reads.clear();
  ASSERT_EQ(RunWithShadows().outcome, Outcome::kOk);
  EXPECT_EQ(shadows_.reads.size(), 3u) << "the next call reads again";
}

// ctx.shadow.version alone asks the reader for the version when it has one without building
// the document; once the call read the document, the version is the document's.
TEST_F(ShadowRuntimeTest, TheVersionAloneIsReadWithoutTheDocumentWhenTheReaderCan) {
  shadows_.docs["d1/"] = R"({"state":{"reported":{"t":3}},"version":7})";
  std::map<std::string, int64_t> versions = {{"d1/", 7}};
  shadows_.versions = &versions;
  Load(R"(    ctx.emit("out", { ctx.shadow.version, ctx.shadow.version,
                      ctx.shadow_of("none").version == nil }))");
  CallResult r = RunWithShadows();
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  ASSERT_EQ(r.effects.size(), 1u);
  EXPECT_EQ(r.effects[0].payload, "[7,7,true]");
  EXPECT_TRUE(shadows_.reads.empty()) << "no document was read";
  EXPECT_EQ(shadows_.version_reads, (std::vector<std::string>{"d1/", "none/"})) << "once per call";

  // Document first: the version comes from it, not from a second read.
  shadows_.reads.clear();
  shadows_.version_reads.clear();
  Load(R"(    ctx.emit("out", { ctx.shadow.reported.t, ctx.shadow.version }))");
  r = RunWithShadows();
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(r.effects[0].payload, "[3,7]");
  EXPECT_EQ(shadows_.reads, (std::vector<std::string>{"d1/"}));
  EXPECT_TRUE(shadows_.version_reads.empty());
}

// A version read that fails (the store could not load the shadow) fails the call, saying where.
TEST_F(ShadowRuntimeTest, AFailedVersionReadFailsTheCall) {
  shadows_.version_error = "the shadow store is unavailable";
  Load(R"(    ctx.emit("out", { ctx.shadow.version }))");
  CallResult r = RunWithShadows();
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_TRUE(r.effects.empty());
  EXPECT_NE(r.reason.find("ctx.shadow"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("the shadow store is unavailable"), std::string::npos) << r.reason;
}

TEST_F(ShadowRuntimeTest, WritesAreBufferedEffectsInOrder) {
  Load(R"(    ctx.shadow:report { t = msg.payload.t }
    ctx.shadow:desire { fan = "on" }
    ctx.shadow_of("room-1", "climate"):update { state = { reported = { n = 1 } }, clientToken = "c" }
    ctx.shadow:update('{"state":null}'))");
  CallResult r = RunWithShadows(R"({"t":21.5})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  ASSERT_EQ(r.effects.size(), 4u);
  for (const Effect& e : r.effects) {
    EXPECT_EQ(e.kind, Effect::Kind::kShadowUpdate);
  }
  EXPECT_EQ(r.effects[0].thing, "d1");
  EXPECT_EQ(r.effects[0].payload, R"({"state":{"reported":{"t":21.5}}})");
  EXPECT_EQ(r.effects[1].payload, R"({"state":{"desired":{"fan":"on"}}})");
  EXPECT_EQ(r.effects[2].thing, "room-1");
  EXPECT_EQ(r.effects[2].shadow_name, "climate");
  EXPECT_NE(r.effects[2].payload.find(R"("clientToken":"c")"), std::string::npos);
  EXPECT_EQ(r.effects[3].payload, R"({"state":null})");
}

TEST_F(ShadowRuntimeTest, BadThingNamesAndMissingShadowSupportFailTheCall) {
  Load(R"(    ctx.shadow_of(msg.payload.thing):report { a = 1 })");
  for (const char* bad : {R"({"thing":"a/b"})", R"({"thing":"#"})", R"({"thing":""})",
                          R"({"thing":5})"}) {
    CallResult r = RunWithShadows(bad);
    EXPECT_EQ(r.outcome, Outcome::kFailed) << bad;
    EXPECT_TRUE(r.effects.empty());
  }
  CallResult r = RunWithShadows(R"({"thing":")" + std::string(129, 'x') + R"("})");
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("1-128 bytes"), std::string::npos) << r.reason;

  Load("    local v = ctx.shadow.version");
  r = Run("{}");  // no ShadowReader: shadows are not configured
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("device shadows are not enabled"), std::string::npos) << r.reason;

  Load("    ctx.shadow:report(5)");
  r = RunWithShadows();
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("patch must be a table"), std::string::npos) << r.reason;
}

// A user's first try, ctx.shadow:report(msg.payload), and every other place a table is taken
// as a JSON object: a view of the payload is encoded from the parsed payload as it is.
TEST_F(ShadowRuntimeTest, PayloadViewsAreTakenWhereverAnObjectIs) {
  Load(R"(    ctx.shadow:report(msg.payload)
    ctx.shadow:desire(msg.payload.settings)
    ctx.shadow_of("room-1"):update(msg.payload.request)
    ctx.invoke("d1", "configure", msg.payload.settings))");
  const std::string payload =
      R"({"t":21.5,"big":12345678901234567890,"s":"caf\u00e9 \"q\"","settings":{"fan":"on",)"
      R"("levels":[1,2.5,null]},"request":{"state":{"reported":{"n":1}},"clientToken":"c"}})";
  CallResult r = RunWithShadows(payload);
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  ASSERT_EQ(r.effects.size(), 4u);
  // msg.payload itself goes as it was received (the shadow parses it again); its parts are
  // encoded from the parsed payload.
  EXPECT_EQ(r.effects[0].payload, R"({"state":{"reported":)" + payload + "}}");
  EXPECT_EQ(r.effects[1].payload, R"({"state":{"desired":{"fan":"on","levels":[1,2.5,null]}}})");
  EXPECT_EQ(r.effects[2].thing, "room-1");
  EXPECT_EQ(r.effects[2].payload, R"({"state":{"reported":{"n":1}},"clientToken":"c"})");
  EXPECT_EQ(r.effects[3].kind, Effect::Kind::kInvoke);
  EXPECT_EQ(r.effects[3].payload, R"({"fan":"on","levels":[1,2.5,null]})");

  // A payload whose numbers had to be rewritten to be read (beyond any 64-bit or double) is
  // written as the rule sees it: such a number as an exact string.
  r = RunWithShadows(R"({"n":123456789012345678901234567890,"settings":{},"request":{}})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(r.effects[0].payload,
            R"({"state":{"reported":{"n":"123456789012345678901234567890","settings":{},)"
            R"("request":{}}}})");

  // An array is not an object: refused, saying what is taken.
  Load("    ctx.shadow:report(msg.payload.list)");
  r = RunWithShadows(R"({"list":[1,2]})");
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("reported patch must be a table or a JSON object of msg.payload"),
            std::string::npos)
      << r.reason;
  // A view kept from an earlier call is dead.
  Load("    kept = kept or msg.payload\n    ctx.shadow:report(kept)");
  EXPECT_EQ(RunWithShadows(R"({"a":1})").outcome, Outcome::kOk);
  r = RunWithShadows(R"({"a":2})");
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("used after handle returned"), std::string::npos) << r.reason;
  EXPECT_TRUE(r.effects.empty());
  // A payload holding a key twice is not written anywhere (the key would be ambiguous).
  Load("    ctx.shadow:report(msg.payload)");
  r = RunWithShadows(R"({"a":1,"a":2})");
  EXPECT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_TRUE(r.effects.empty());
}

TEST_F(ShadowRuntimeTest, CtxModelIsTheBoundModelAndValidatesPatches) {
  auto m = shadow::ThingModel::Parse(R"({"modelId": "acme:th", "version": "3", "properties": [
      { "identifier": "temp", "accessMode": "r", "dataType": { "type": "float", "specs": { "max": 100 } } },
      { "identifier": "target", "accessMode": "rw", "dataType": { "type": "int" } } ]})", "m.json");
  ASSERT_TRUE(m.ok()) << m.status().message();
  shadows_.model = *m;
  Load(R"(    local model = ctx.model
    if model == nil then return ctx.emit("out", { none = true }) end
    local ok, problems = model:validate { temp = msg.payload.temp }
    local dok, dproblems = model:validate({ temp = 1 }, "desired")
    ctx.emit("out", { id = model.id, version = model.version, ref = model.ref, ok = ok,
                      first = problems and problems[1].path .. " " .. problems[1].error,
                      desired = dproblems[1].error, dok = dok }))");
  CallResult r = RunWithShadows(R"({"temp":20})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  ASSERT_EQ(r.effects.size(), 1u);
  std::string out = r.effects[0].payload;
  for (const char* want : {R"("id":"acme:th")", R"("version":"3")", R"("ref":"acme:th@3")",
                           R"("ok":true)", R"("desired":"TM_ACCESS_DENIED")", R"("dok":false)"}) {
    EXPECT_NE(out.find(want), std::string::npos) << want << " in " << out;
  }
  r = RunWithShadows(R"({"temp":500})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_NE(r.effects[0].payload.find(R"("first":"/temp TM_OUT_OF_RANGE")"), std::string::npos)
      << r.effects[0].payload;
  shadows_.model = nullptr;
  r = RunWithShadows(R"({"temp":20})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(r.effects[0].payload, R"({"none":true})") << "no model bound: ctx.model is nil";
}

}  // namespace
}  // namespace gnomon::rules

// SPDX-License-Identifier: Apache-2.0
#include "gnomon/rules/testing.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <future>

#include "tests/support/test_support.h"

namespace gnomon::rules {
namespace {

constexpr const char* kRule = R"(return rule {
  name = "r", from = "devices/+/telemetry",
  handle = function(msg, ctx)
    if msg.payload.bad then error("bad input") end
    if msg.payload.skip then return ctx.drop("skip") end
    ctx.emit("out", { d = msg.device, t = msg.payload.t, now = ctx.now() })
    if msg.payload.cmd then ctx.publish("devices/" .. msg.device .. "/cmd", { on = true }) end
  end,
  tests = {
    { name = "emits", now = 7, input = { topic = "devices/a/telemetry", payload = { t = 1 } },
      expect = { emit = { out = { { d = "a", t = 1, now = 7 } } } } },
    { name = "fails", input = { topic = "devices/a/telemetry", payload = { bad = true } },
      expect = { fail = "bad input" } },
    { name = "drops", input = { topic = "devices/a/telemetry", payload = { skip = true } },
      expect = { drop = true, emit = {} } },
    { name = "publishes", input = { topic = "devices/a/telemetry", payload = { t = 1, cmd = 1 } },
      expect = { publish = { ["devices/a/cmd"] = { { on = true } } } } },
    { name = "in order", input = { { topic = "devices/a/telemetry", payload = { t = 1 } },
                                   { topic = "devices/b/telemetry", payload = { t = 2 } } },
      expect = { emit = { out = { { d = "a" }, { d = "b", t = 2.0 } } } } },
  },
})";

TEST(RuleTestingTest, PassingTestsPass) {
  testing::TempDir dir;
  dir.Write("r.lua", kRule);
  auto report = RunRuleTests({dir.File("r.lua")}, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->passed(), 5) << report->Text(true);
  EXPECT_EQ(report->failed(), 0);
  EXPECT_NE(report->Text(false).find("5 passed, 0 failed"), std::string::npos);
}

TEST(RuleTestingTest, FailuresSayWhereAndShowExpectedAndActual) {
  testing::TempDir dir;
  dir.Write("r.lua", kRule);
  dir.Write("r.test.lua", R"(return { rule = "r", tests = {
    { name = "wrong value", input = { topic = "devices/a/telemetry", payload = { t = 1 } },
      expect = { emit = { out = { { t = 2 } } } } },
    { name = "unexpected emit", input = { topic = "devices/a/telemetry", payload = { t = 1 } },
      expect = { emit = {} } },
    { name = "not failing", input = { topic = "devices/a/telemetry", payload = { t = 1 } },
      expect = { fail = "x" } },
    { name = "wrong topic", input = { topic = "x/y", payload = {} }, expect = { emit = {} } },
    { name = "bad field", input = { topic = "devices/a/telemetry", payload = {} }, expcet = {} },
    { name = "shadow", input = { topic = "devices/a/telemetry", payload = {} },
      expect = { shadow = { a = {} } } },
    { name = "too many", input = { topic = "devices/a/telemetry", payload = { t = 1 } },
      expect = { emit = { out = { {}, {} } } } },
  } })");
  auto report = RunRuleTests({dir.path()}, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->passed(), 5);
  EXPECT_EQ(report->failed(), 7);
  std::string text = report->Text(false);
  EXPECT_NE(text.find("FAIL r › wrong value (" + dir.File("r.test.lua") + ":2)"), std::string::npos)
      << text;
  EXPECT_NE(text.find("emit.out[1].t: expected 2, got 1"), std::string::npos) << text;
  EXPECT_NE(text.find("expected: [{\"t\":2}]"), std::string::npos) << text;
  EXPECT_NE(text.find("emit.out: expected nothing, got 1 record(s)"), std::string::npos) << text;
  EXPECT_NE(text.find("expected the call to fail with \"x\""), std::string::npos) << text;
  EXPECT_NE(text.find("'x/y' does not match rule.from"), std::string::npos) << text;
  EXPECT_NE(text.find("unknown test field 'expcet'"), std::string::npos) << text;
  EXPECT_NE(text.find("shadow.a: expected {}, but the device has no shadow"), std::string::npos)
      << text;
  EXPECT_NE(text.find("emit.out: expected 2 item(s), got 1"), std::string::npos) << text;
  EXPECT_NE(text.find("5 passed, 7 failed"), std::string::npos) << text;

  std::string xml = report->JUnitXml();
  EXPECT_NE(xml.find("<testsuites name=\"gnomon\" tests=\"12\" failures=\"7\""), std::string::npos)
      << xml;
  EXPECT_NE(xml.find("<testcase classname=\"r\" name=\"wrong value\""), std::string::npos);
  EXPECT_NE(xml.find("<failure message=\"emit.out[1].t: expected 2, got 1\">"), std::string::npos)
      << xml;
}

TEST(RuleTestingTest, DropReasonsCanBeExpectedAndAreShownWhenUnexpected) {
  testing::TempDir dir;
  dir.Write("r.lua", kRule);
  dir.Write("r.test.lua", R"(return { rule = "r", tests = {
    { name = "reason matches", input = { topic = "devices/a/telemetry", payload = { skip = 1 } },
      expect = { drop = "ski" } },
    { name = "reason differs", input = { topic = "devices/a/telemetry", payload = { skip = 1 } },
      expect = { drop = "too cold" } },
    { name = "dropped instead", input = { topic = "devices/a/telemetry", payload = { skip = 1 } },
      expect = { emit = { out = { { t = 1 } } } } },
  } })");
  auto report = RunRuleTests({dir.path()}, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  std::string text = report->Text(false);
  EXPECT_EQ(report->passed(), 6) << text;  // the rule's own 5 and "reason matches"
  EXPECT_EQ(report->failed(), 2) << text;
  EXPECT_NE(text.find(R"(expected a drop with a reason containing "too cold", got "skip")"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"((the rule dropped the message: "skip"))"), std::string::npos) << text;
}

TEST(RuleTestingTest, ConfiguredSinksAreEnforced) {
  testing::TempDir dir;
  dir.Write("r.lua", kRule);
  TestOptions opts;
  opts.sinks = {"alerts"};
  auto report = RunRuleTests({dir.File("r.lua")}, opts);
  ASSERT_TRUE(report.ok());
  EXPECT_NE(report->Text(false).find("unknown sink 'out'"), std::string::npos) << report->Text(false);
}

TEST(RuleTestingTest, BrokenFilesAreErrors) {
  testing::TempDir dir;
  dir.Write("r.lua", "return rule { name = 'r' ");
  EXPECT_FALSE(RunRuleTests({dir.File("r.lua")}, {}).ok());
  EXPECT_FALSE(RunRuleTests({dir.File("missing.lua")}, {}).ok());
  dir.Write("r.lua", kRule);
  dir.Write("x.test.lua", "return { rule = 'nope', tests = {} }");
  auto report = RunRuleTests({dir.path()}, {});
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("no rule named 'nope'"), std::string::npos);
}

// A compiled rule (jit = true) cannot be stopped inside a trace, so its tests run interpreted
// under its instruction budget: a test that loops fails with the limit instead of hanging
// `check`, start and every reload.
TEST(RuleTestingTest, ACompiledRulesTestThatLoopsFailsWithTheInstructionLimit) {
  testing::TempDir dir;
  dir.Write("r.lua", R"(return rule {
  name = "r", from = "a/+", jit = true, limits = { instructions = 100000 },
  handle = function(msg, ctx)
    local n = 0
    while msg.payload.loop do n = n + 1 end
    ctx.emit("out", { n = n })
  end,
  tests = {
    { name = "ends", input = { topic = "a/b", payload = {} }, expect = { emit = { out = { { n = 0 } } } } },
    { name = "loops", input = { topic = "a/b", payload = { loop = true } }, expect = { emit = {} } },
  },
})");
  auto run = std::async(std::launch::async, [&] { return RunRuleTests({dir.File("r.lua")}, {}); });
  if (run.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    ADD_FAILURE() << "the looping test of a jit = true rule did not end";
    std::_Exit(1);  // the loop cannot be stopped from here
  }
  auto report = run.get();
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->passed(), 1) << report->Text(true);
  EXPECT_EQ(report->failed(), 1) << report->Text(true);
  EXPECT_NE(report->Text(false).find("instruction limit of 100000 exceeded"), std::string::npos)
      << report->Text(false);
}

}  // namespace
}  // namespace gnomon::rules

namespace gnomon::rules {
namespace {

constexpr const char* kShadowRule = R"(return rule {
  name = "thermo",
  from = { "devices/+/telemetry" },
  handle = function(msg, ctx)
    local t = msg.payload.temp
    local before = ctx.shadow.reported
    ctx.shadow:report { temp = t, previous = before and before.temp or json.null }
    local target = ctx.shadow.desired and ctx.shadow.desired.temp
    if target and t ~= target then
      ctx.emit("out", { device = msg.device, off_by = t - target, version = ctx.shadow.version })
    end
    if msg.payload.zone then
      ctx.shadow_of("zone-" .. msg.payload.zone):desire { last_device = msg.device }
    end
    if msg.payload.bad then
      ctx.shadow:report { ["$x"] = 1 }
    end
  end,
  tests = {
    { name = "initial shadows are seen and writes land",
      shadow = { d1 = { desired = { temp = 20 }, reported = { temp = 18 } } },
      input = { { topic = "devices/d1/telemetry", payload = { temp = 22 } },
                { topic = "devices/d1/telemetry", payload = { temp = 20, zone = "a" } } },
      expect = { emit = { out = { { device = "d1", off_by = 2, version = 1 } } },
                 shadow = { d1 = { reported = { temp = 20, previous = 22 }, version = 3 },
                            ["zone-a"] = { desired = { last_device = "d1" },
                                           delta = { last_device = "d1" } } } } },
    { name = "a new device gets a shadow",
      input = { topic = "devices/d9/telemetry", payload = { temp = 5 } },
      expect = { emit = {}, shadow = { d9 = { reported = { temp = 5 }, version = 1 } } } },
    { name = "a rejected shadow write fails the message",
      input = { topic = "devices/d2/telemetry", payload = { temp = 5, bad = true } },
      expect = { fail = "INVALID_KEY" } },
  },
})";

TEST(RuleTestingShadowTest, InitialShadowsWritesAndExpectationsWork) {
  testing::TempDir dir;
  dir.Write("thermo.lua", kShadowRule);
  auto report = RunRuleTests({dir.path()}, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->failed(), 0) << report->Text(true);
  EXPECT_EQ(report->passed(), 3) << report->Text(true);
}

TEST(RuleTestingShadowTest, ShadowMismatchShowsExpectedAndActual) {
  testing::TempDir dir;
  dir.Write("thermo.lua", kShadowRule);
  dir.Write("thermo.test.lua", R"(return { rule = "thermo", tests = {
    { name = "wrong", input = { topic = "devices/d1/telemetry", payload = { temp = 1 } },
      expect = { shadow = { d1 = { reported = { temp = 2 } } } } },
    { name = "bad initial", shadow = { d1 = { delta = {} } },
      input = { topic = "devices/d1/telemetry", payload = { temp = 1 } }, expect = {} },
  } })");
  auto report = RunRuleTests({dir.path()}, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  std::string text = report->Text(false);
  EXPECT_EQ(report->failed(), 2) << text;
  EXPECT_NE(text.find("shadow.d1.reported.temp: expected 2, got 1"), std::string::npos) << text;
  EXPECT_NE(text.find("test.shadow.d1: shadow update of d1 rejected"), std::string::npos) << text;
  EXPECT_NE(text.find("INVALID_NODE"), std::string::npos) << text;
}

// Rule tests see ctx.state: initial states by device, what earlier inputs of the test wrote,
// and expectations on what the rule left (false: none).
TEST(RuleTestingStateTest, InitialStatesWritesAndExpectationsWork) {
  testing::TempDir dir;
  dir.Write("hot.lua", R"(return rule {
    name = "hot", from = "devices/+/telemetry",
    handle = function(msg, ctx)
      if msg.payload.temp > 50 then ctx.state.hot = (ctx.state.hot or 0) + 1 end
      if msg.payload.reset then ctx.state.hot = nil end
      if msg.payload.bad then error("bad") end
      ctx.emit("out", { hot = ctx.state.hot or 0 })
    end,
    tests = {
      { name = "counts on", state = { d1 = { hot = 2 } },
        input = { { topic = "devices/d1/telemetry", payload = { temp = 60 } },
                  { topic = "devices/d1/telemetry", payload = { temp = 60, bad = true } },
                  { topic = "devices/d2/telemetry", payload = { temp = 70 } } },
        expect = { fail = "bad", emit = { out = { { hot = 3 }, { hot = 1 } } },
                   state = { d1 = { hot = 3 }, d2 = { hot = 1 } } } },
      { name = "reset", state = { d1 = { hot = 2 } },
        input = { topic = "devices/d1/telemetry", payload = { temp = 1, reset = true } },
        expect = { state = { d1 = false } } },
    },
  })");
  dir.Write("hot.test.lua", R"(return { rule = "hot", tests = {
    { name = "wrong", input = { topic = "devices/d1/telemetry", payload = { temp = 60 } },
      expect = { state = { d1 = { hot = 2 } } } },
    { name = "none expected", input = { topic = "devices/d1/telemetry", payload = { temp = 60 } },
      expect = { state = { d1 = false } } },
    { name = "missing", input = { topic = "devices/d1/telemetry", payload = { temp = 1 } },
      expect = { state = { d1 = { hot = 1 } } } },
  } })");
  auto report = RunRuleTests({dir.path()}, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  std::string text = report->Text(true);
  EXPECT_EQ(report->passed(), 2) << text;
  EXPECT_EQ(report->failed(), 3) << text;
  EXPECT_NE(text.find("state.d1.hot: expected 2, got 1"), std::string::npos) << text;
  EXPECT_NE(text.find("state.d1: expected none, got {\"hot\":1}"), std::string::npos) << text;
  EXPECT_NE(text.find("state.d1: expected {\"hot\":1}, but the device has no state"),
            std::string::npos)
      << text;
}

// Virtual time: `at` on a message and `advance` steps move the test's clock; the timers and
// silences due on the way fire (earliest first, each at its due time) and what they emit is
// expected like the rest.
TEST(RuleTestingTimeTest, TimersAndInactivityFireInVirtualTime) {
  testing::TempDir dir;
  dir.Write("offline.lua", R"(return rule {
    name = "offline", from = "devices/+/telemetry",
    inactivity = "10m",
    handle = function(msg, ctx)
      if msg.payload.remind then ctx.timer.after("remind", "1m", { text = msg.payload.remind }) end
    end,
    on_timer = function(t, ctx) ctx.emit("out", { remind = t.data.text, at = ctx.now() }) end,
    on_inactive = function(ev, ctx)
      ctx.emit("out", { offline = ctx.shadow.thing, since = ev.last_seen, at = ctx.now() })
    end,
    tests = {
      { name = "offline after ten minutes of silence, once", now = 0,
        input = { { topic = "devices/d1/telemetry", payload = {} },
                  { advance = "9m" },
                  { topic = "devices/d1/telemetry", payload = {} },
                  { topic = "devices/d2/telemetry", payload = {}, at = 600000 },
                  { advance = "1h" } },
        expect = { emit = { out = { { offline = "d1", since = 540000, at = 1140000 },
                                    { offline = "d2", since = 600000, at = 1200000 } } } } },
      { name = "a reminder a minute later, before the silence", now = 1000,
        input = { { topic = "devices/d1/telemetry", payload = { remind = "check" } },
                  { advance = "15m" } },
        expect = { emit = { out = { { remind = "check", at = 61000 },
                                    { offline = "d1", at = 601000 } } } } },
      { name = "nothing fires without time passing",
        input = { topic = "devices/d1/telemetry", payload = { remind = "x" } },
        expect = { emit = {} } },
    },
  })");
  dir.Write("offline.test.lua", R"(return { rule = "offline", tests = {
    { name = "back in time", now = 100,
      input = { { topic = "devices/d1/telemetry", payload = {}, at = 50 } }, expect = {} },
    { name = "bad advance", input = { { advance = "soon" } }, expect = {} },
  } })");
  auto report = RunRuleTests({dir.path()}, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  std::string text = report->Text(true);
  EXPECT_EQ(report->passed(), 3) << text;
  EXPECT_EQ(report->failed(), 2) << text;
  EXPECT_NE(text.find("test.input.at: 50 is before the test's clock (100)"), std::string::npos)
      << text;
  EXPECT_NE(text.find("test.input.advance: 'soon' is not a duration"), std::string::npos) << text;
}

// Windows in rule tests: what on_window and on_late emit is expected with the rest; ingest-time
// windows close as virtual time moves on.
TEST(RuleTestingTimeTest, WindowsCloseInTestsAndTheirCallbacksAreExpected) {
  testing::TempDir dir;
  dir.Write("avg.lua", R"(return rule {
    name = "avg", from = "devices/+/telemetry",
    windows = {
      five = { tumbling = "5m", of = "temp", agg = { "avg", "max" }, time = "at" },
      recent = { sliding = "1m", of = "temp", agg = { "avg" } },
      per_minute = { tumbling = "1m" },
    },
    handle = function(msg, ctx) ctx.emit("now", { recent = ctx.window.recent.avg }) end,
    on_window = function(w, ctx) ctx.emit("closed", w) end,
    on_late = function(msg, w, ctx) ctx.emit("late", { window = w.name, at = msg.payload.at }) end,
    tests = {
      { name = "five minutes of averages", now = 0,
        input = { { topic = "devices/d1/telemetry", payload = { at = 1000, temp = 10 } },
                  { topic = "devices/d1/telemetry", payload = { at = 2000, temp = 30 }, at = 20000 },
                  { topic = "devices/d1/telemetry", payload = { at = 300000, temp = 0 }, at = 40000 },
                  { topic = "devices/d1/telemetry", payload = { at = 3000, temp = 5 }, at = 50000 },
                  { advance = "30s" } },
        expect = { emit = {
          now = { { recent = 10 }, { recent = 20 }, { recent = 40 / 3 }, { recent = 45 / 4 } },
          closed = { { name = "five", start = 0, ["end"] = 300000, avg = 20, max = 30, count = 2 },
                     { name = "per_minute", start = 0, ["end"] = 60000, count = 4 } },
          late = { { window = "five", at = 3000 } } } } },
    },
  })");
  auto report = RunRuleTests({dir.path()}, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->failed(), 0) << report->Text(true);
  EXPECT_EQ(report->passed(), 1) << report->Text(true);
}

// Keyed windows in rule tests as in gnomon: a key's row is its own, apart from the device of
// the same name (on_window's ctx.state is the key's; the device's state is untouched).
TEST(RuleTestingTimeTest, AKeysRowIsApartFromTheDeviceOfThatName) {
  testing::TempDir dir;
  dir.Write("rooms.lua", R"(return rule {
    name = "rooms", from = "devices/+/telemetry",
    windows = { room = { tumbling = "1m", of = "temp", agg = { "avg" }, time = "at", key = "room" } },
    handle = function(msg, ctx) ctx.state.n = (ctx.state.n or 0) + 1 end,
    on_window = function(w, ctx)
      ctx.state.closes = (ctx.state.closes or 0) + 1
      ctx.emit("out", { key = ctx.device, n = ctx.state.n, closes = ctx.state.closes, avg = w.avg })
    end,
    tests = {
      { name = "a device named like a key", now = 0, state = { r1 = { n = 5 } },
        input = { { topic = "devices/a/telemetry", payload = { room = "r1", at = 1000, temp = 10 } },
                  { topic = "devices/a/telemetry", payload = { room = "r1", at = 61000, temp = 20 } },
                  { topic = "devices/r1/telemetry", payload = { at = 62000, temp = 1 } } },
        expect = { emit = { out = { { key = "r1", closes = 1, avg = 10 } } },
                   state = { r1 = { n = 6 }, a = { n = 2 } } } },
    },
  })");
  auto report = RunRuleTests({dir.path()}, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->failed(), 0) << report->Text(true);
  EXPECT_EQ(report->passed(), 1) << report->Text(true);
}

TEST(RuleTestingInvokeTest, ServiceCallsAreExpectedByThing) {
  testing::TempDir dir;
  dir.Write("r.lua", R"(return rule {
    name = "r", from = "devices/+/telemetry",
    handle = function(msg, ctx)
      if msg.payload.temp > 50 then
        local id = ctx.invoke(msg.device, "reboot", { delaySec = 5 })
        ctx.emit("out", { id_length = #id })
      end
      if msg.payload.bad_thing then ctx.invoke("a/b", "reboot") end
      if msg.payload.bad_service then ctx.invoke(msg.device, "x/y") end
      if msg.payload.bad_params then ctx.invoke(msg.device, "reboot", "now") end
    end,
    tests = {
      { name = "invokes", input = { topic = "devices/a/telemetry", payload = { temp = 60 } },
        expect = { invoke = { a = { { service = "reboot", params = { delaySec = 5 } } } },
                   emit = { out = { { id_length = 32 } } } } },
      { name = "none", input = { topic = "devices/a/telemetry", payload = { temp = 20 } },
        expect = { invoke = {} } },
      { name = "wrong", input = { topic = "devices/a/telemetry", payload = { temp = 60 } },
        expect = { invoke = { a = { { service = "ping" } } } } },
      { name = "thing", input = { topic = "devices/a/telemetry", payload = { temp = 1, bad_thing = 1 } },
        expect = { fail = "ctx.invoke: the thing 'a/b' may only hold" } },
      { name = "service", input = { topic = "devices/a/telemetry", payload = { temp = 1, bad_service = 1 } },
        expect = { fail = "ctx.invoke: 'x/y' is not a service identifier" } },
      { name = "params", input = { topic = "devices/a/telemetry", payload = { temp = 1, bad_params = 1 } },
        expect = { fail = "ctx.invoke: params must be a table" } },
    },
  })");
  auto report = RunRuleTests({dir.File("r.lua")}, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->passed(), 5) << report->Text(true);
  ASSERT_EQ(report->failed(), 1) << report->Text(true);
  EXPECT_NE(report->Text(true).find("wrong"), std::string::npos) << report->Text(true);
}

}  // namespace
}  // namespace gnomon::rules

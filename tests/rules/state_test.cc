// SPDX-License-Identifier: Apache-2.0
// ctx.state in the rule runtime: read on first use, written back as the call's last effect
// when it changed, bounded, migrated across state.version, and never written by a failed call.
#include <gtest/gtest.h>
#include <simdjson.h>

#include <map>
#include <string>
#include <utility>

#include "gnomon/rules/rules.h"
#include "tests/support/test_support.h"

namespace gnomon::rules {
namespace {

// The committed states, as the engine keeps them: a kState effect replaces (or removes) one.
class FakeStates final : public StateReader {
 public:
  Result<const StoredState*> ReadState(std::string_view rule, std::string_view device) override {
    ++reads;
    if (!error.ok()) {
      return error;
    }
    auto it = states.find({std::string(rule), std::string(device)});
    if (it == states.end()) {
      return nullptr;
    }
    return &it->second;
  }
  void Apply(const std::string& rule, const std::string& device, const CallResult& r) {
    for (const Effect& e : r.effects) {
      if (e.kind != Effect::Kind::kState) {
        continue;
      }
      if (e.payload.empty() && e.timers.empty() && e.windows.empty()) {
        states.erase({rule, device});
      } else {
        states[{rule, device}] = StoredState{e.state_version, e.payload, e.timers, e.windows};
      }
    }
  }
  std::map<std::pair<std::string, std::string>, StoredState> states;
  int reads = 0;
  Status error;
};

class StateTest : public ::testing::Test {
 protected:
  void Load(const std::string& body, const std::string& extra = "") {
    std::string src = "return rule {\n  name = \"st\",\n  from = { \"devices/+/telemetry\" },\n" +
                      extra + "  handle = function(msg, ctx)\n" + body + "\n  end,\n}\n";
    auto set = RuleSet::FromSources({{"st.lua", src}}, RuleSetOptions{.sinks = {"out"}});
    ASSERT_TRUE(set.ok()) << set.status().message();
    auto rt = RuleRuntime::Create(*set, clock_);
    ASSERT_TRUE(rt.ok()) << rt.status().message();
    rt_ = std::move(rt).value();
  }

  // Runs the rule on `payload` from `device` (or its on_timer / on_inactive on `event`) and
  // applies its state as the engine would.
  CallResult Run(const std::string& payload, const std::string& device = "d1",
                 bool with_states = true, MessageView::Call call = MessageView::Call::kHandle,
                 const std::string& event = "") {
    payload_ = payload;
    payload_.reserve(payload_.size() + simdjson::SIMDJSON_PADDING);
    std::string topic = "devices/" + device + "/telemetry";
    MessageView m{topic, device, &payload_, "src", &headers_, 1234};
    m.states = with_states ? &states_ : nullptr;
    m.call = call;
    m.event = event;
    CallResult r;
    rt_->Run(0, m, r);
    if (r.outcome == Outcome::kOk) {
      states_.Apply("st", device, r);
    }
    return r;
  }

  static const Effect* StateEffect(const CallResult& r) {
    const Effect* found = nullptr;
    for (const Effect& e : r.effects) {
      if (e.kind == Effect::Kind::kState) {
        EXPECT_EQ(found, nullptr) << "one state effect per call at most";
        found = &e;
      }
    }
    return found;
  }

  std::string Stored(const std::string& device = "d1") {
    auto it = states_.states.find({"st", device});
    return it == states_.states.end() ? "<none>" : it->second.json;
  }

  FixedClock clock_{1700000000123};
  std::unique_ptr<RuleRuntime> rt_;
  FakeStates states_;
  std::string payload_;
  Headers headers_;
};

std::string Sorted(const std::string& text) { return testing::SortedJson(text); }

constexpr const char* kCounter = R"lua(
    if msg.payload.temp > 50 then
      ctx.state.hot = (ctx.state.hot or 0) + 1
    end
    ctx.emit("out", { hot = ctx.state.hot or 0 }))lua";

TEST_F(StateTest, StateIsPerDeviceSurvivesCallsAndIsWrittenOnlyWhenItChanges) {
  Load(kCounter);
  CallResult r = Run(R"({"temp":60})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  const Effect* e = StateEffect(r);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->payload, R"({"hot":1})");
  EXPECT_EQ(e->state_version, 1);
  EXPECT_EQ(r.effects.back().kind, Effect::Kind::kState) << "the state is the last effect";

  r = Run(R"({"temp":20})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(StateEffect(r), nullptr) << "read, not changed: nothing to write";
  EXPECT_EQ(r.effects[0].payload, R"({"hot":1})");

  ASSERT_EQ(Run(R"({"temp":70})").outcome, Outcome::kOk);
  EXPECT_EQ(Stored(), R"({"hot":2})");
  ASSERT_EQ(Run(R"({"temp":70})", "d2").outcome, Outcome::kOk);
  EXPECT_EQ(Stored("d2"), R"({"hot":1})") << "each device has its own";
  EXPECT_EQ(Stored(), R"({"hot":2})");
  EXPECT_EQ(states_.reads, 4) << "read once per call that uses it";
}

TEST_F(StateTest, ARuleThatDoesNotUseTheStateNeverReadsIt) {
  Load("    ctx.emit('out', { t = msg.payload.temp })");
  CallResult r = Run(R"({"temp":1})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(StateEffect(r), nullptr);
  EXPECT_EQ(states_.reads, 0);
}

TEST_F(StateTest, AFailedOrDroppedCallWritesNoState) {
  Load(R"lua(
    ctx.state.n = (ctx.state.n or 0) + 1
    if msg.payload.bad then error("boom") end
    if msg.payload.drop then ctx.drop("no") end
    if msg.payload.fail then ctx.fail("bad input") end)lua");
  ASSERT_EQ(Run(R"({})").outcome, Outcome::kOk);
  EXPECT_EQ(Run(R"({"bad":true})").outcome, Outcome::kFailed);
  EXPECT_EQ(Run(R"({"drop":true})").outcome, Outcome::kFiltered);
  EXPECT_EQ(Run(R"({"fail":true})").outcome, Outcome::kFailed);
  EXPECT_EQ(Stored(), R"({"n":1})");
  ASSERT_EQ(Run(R"({})").outcome, Outcome::kOk);
  EXPECT_EQ(Stored(), R"({"n":2})");
}

TEST_F(StateTest, AStateOverMaxBytesFailsTheCallAndSaysSo) {
  Load("    ctx.state.s = string.rep('x', msg.payload.n)", "  state = { max_bytes = 100 },\n");
  ASSERT_EQ(Run(R"({"n":50})").outcome, Outcome::kOk);
  CallResult r = Run(R"({"n":200})");
  ASSERT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("over rule.state.max_bytes (100)"), std::string::npos) << r.reason;
  EXPECT_TRUE(r.effects.empty());
  EXPECT_EQ(Stored().size(), 58u) << "the last state that fit stays";
}

TEST_F(StateTest, AValueJsonCannotHoldFailsTheCallAndNamesWhere) {
  Load("    ctx.state.cb = function() end");
  CallResult r = Run("{}");
  ASSERT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("ctx.state.cb"), std::string::npos) << r.reason;
  EXPECT_EQ(Stored(), "<none>");
}

TEST_F(StateTest, AnEmptiedStateIsDeletedAndPayloadViewsAreStoredAsJson) {
  Load(R"lua(
    if msg.payload.clear then ctx.state.last = nil else ctx.state.last = msg.payload end)lua");
  ASSERT_EQ(Run(R"({"a":[1,2],"s":"x"})").outcome, Outcome::kOk);
  EXPECT_EQ(Stored(), R"({"last":{"a":[1,2],"s":"x"}})");
  CallResult r = Run(R"({"clear":true})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  const Effect* e = StateEffect(r);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->payload, "") << "an empty state removes the device's row";
  EXPECT_EQ(Stored(), "<none>");
}

TEST_F(StateTest, MigrateRunsOnceOnAStateOfAnotherVersion) {
  states_.states[{"st", "d1"}] = StoredState{1, R"({"c":3})"};
  Load("    ctx.state.count = ctx.state.count + 1",
       "  state = { version = 2 },\n"
       "  migrate = function(old, from) return { count = old.c, from = from } end,\n");
  CallResult r = Run("{}");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  const Effect* e = StateEffect(r);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->state_version, 2);
  simdjson::dom::parser p;
  simdjson::dom::element got = p.parse(e->payload);
  EXPECT_EQ(int64_t(got["count"]), 4);
  EXPECT_EQ(int64_t(got["from"]), 1);
  ASSERT_EQ(Run("{}").outcome, Outcome::kOk) << "stored under version 2 now: no migrate";
  got = p.parse(Stored());
  EXPECT_EQ(int64_t(got["count"]), 5);
}

TEST_F(StateTest, AMigrateThatFailsFailsTheCallAndLeavesTheOldState) {
  states_.states[{"st", "d1"}] = StoredState{1, R"({"c":3})"};
  Load("    ctx.state.x = 1",
       "  state = { version = 2 },\n"
       "  migrate = function(old) error('cannot migrate ' .. old.c) end,\n");
  CallResult r = Run("{}");
  ASSERT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("cannot migrate 3"), std::string::npos) << r.reason;
  EXPECT_EQ((states_.states[{"st", "d1"}].version), 1);
  EXPECT_EQ(Stored(), R"({"c":3})");

  Load("    ctx.state.x = 1",
       "  state = { version = 2 },\n  migrate = function(old) return 42 end,\n");
  r = Run("{}");
  ASSERT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("rule.migrate must return the new state (a table), got number"),
            std::string::npos)
      << r.reason;
}

TEST_F(StateTest, WithoutMigrateAStateOfAnotherVersionIsKeptAndRewrittenUnderTheNewOne) {
  states_.states[{"st", "d1"}] = StoredState{1, R"({"c":3})"};
  Load("    ctx.emit('out', { c = ctx.state.c })", "  state = { version = 3 },\n");
  CallResult r = Run("{}");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(r.effects[0].payload, R"({"c":3})");
  const Effect* e = StateEffect(r);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->state_version, 3);
  EXPECT_EQ(e->payload, R"({"c":3})");
}

TEST_F(StateTest, WithoutAStoreOrWhenItFailsTheCallFailsAndSaysWhy) {
  Load("    ctx.state.n = 1");
  CallResult r = Run("{}", "d1", /*with_states=*/false);
  ASSERT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("ctx.state: rule state is kept in the shadow store"), std::string::npos)
      << r.reason;
  states_.error = Unavailable("disk on fire");
  r = Run("{}");
  ASSERT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("ctx.state: disk on fire"), std::string::npos) << r.reason;
}

TEST_F(StateTest, TimersAreSetReplacedCancelledAndWrittenWithTheRow) {
  Load(R"lua(
    if msg.payload.set then ctx.timer.after("recheck", "1m", { why = msg.payload.set }) end
    if msg.payload.at then ctx.timer.at("wake", msg.payload.at) end
    if msg.payload.cancel then ctx.emit("out", { had = ctx.timer.cancel("recheck") }) end
    ctx.emit("out", { due = ctx.timer.due("recheck") or false }))lua");
  CallResult r = Run(R"({"set":"hot"})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  const Effect* e = StateEffect(r);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->payload, "") << "no ctx.state: the row holds timers only";
  ASSERT_EQ(e->timers.size(), 1u);
  EXPECT_EQ(e->timers[0], (RuleTimer{"recheck", 1700000000123 + 60000, R"({"why":"hot"})"}));
  EXPECT_EQ(r.effects[0].payload, R"({"due":1700000060123})");

  r = Run(R"({"set":"again","at":5})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  ASSERT_NE(StateEffect(r), nullptr);
  auto timers = states_.states[{"st", "d1"}].timers;
  ASSERT_EQ(timers.size(), 2u) << "a timer of the same name is replaced";
  EXPECT_EQ(timers[0].data, R"({"why":"again"})");
  EXPECT_EQ(timers[1], (RuleTimer{"wake", 5, ""}));

  r = Run(R"({})");
  EXPECT_EQ(StateEffect(r), nullptr) << "read, not changed";
  r = Run(R"({"cancel":true})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(r.effects[0].payload, R"({"had":true})");
  EXPECT_EQ(r.effects[1].payload, R"({"due":false})");
  EXPECT_EQ((states_.states[{"st", "d1"}].timers.size()), 1u);
  r = Run(R"({"cancel":true})");
  EXPECT_EQ(r.effects[0].payload, R"({"had":false})");
  EXPECT_EQ(StateEffect(r), nullptr);
}

TEST_F(StateTest, TimersKeepTheStateAndAFailedCallSetsNone) {
  states_.states[{"st", "d1"}] = StoredState{1, R"({"n":5})", {}};
  Load(R"lua(
    ctx.timer.after("t", 1000)
    if msg.payload.bad then error("no") end)lua");
  ASSERT_EQ(Run(R"({"bad":true})").outcome, Outcome::kFailed);
  EXPECT_TRUE((states_.states[{"st", "d1"}].timers.empty()));
  CallResult r = Run("{}");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  const Effect* e = StateEffect(r);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->payload, R"({"n":5})") << "the state it did not touch stays";
  EXPECT_EQ(e->timers.size(), 1u);
}

TEST_F(StateTest, TimerBoundsAndBadArgumentsFailTheCallAndSayWhy) {
  auto fails = [&](const std::string& body) {
    Load(body);
    CallResult r = Run("{}");
    return r.outcome == Outcome::kFailed ? r.reason : std::string("<ok>");
  };
  EXPECT_NE(fails("for i = 1, 33 do ctx.timer.after('t' .. i, 1000) end")
                .find("32 timers are pending for this device already (at most 32"),
            std::string::npos);
  EXPECT_EQ(fails("for i = 1, 32 do ctx.timer.after('t' .. i, 1000) end"), "<ok>");
  EXPECT_NE(fails("ctx.timer.after('a b', 1000)").find("a timer's name is 1-64 characters"),
            std::string::npos);
  EXPECT_NE(fails("ctx.timer.after('t', '5 minutes')").find("is not a duration"),
            std::string::npos);
  EXPECT_NE(fails("ctx.timer.after('t', -1)").find("the delay must be 0 to 10 years"),
            std::string::npos);
  EXPECT_NE(fails("ctx.timer.at('t', 1e300)").find("from 0 to 10 years from now"),
            std::string::npos);
  EXPECT_NE(fails("ctx.timer.after('t', 1, string.rep('x', 5000))").find("over 4096"),
            std::string::npos);
  EXPECT_NE(fails("ctx.timer.after('t', 1, { f = function() end })").find("ctx.timer data.f"),
            std::string::npos);
  Load("ctx.timer.after('t', 1000)");
  CallResult r = Run("{}", "d1", /*with_states=*/false);
  EXPECT_NE(r.reason.find("ctx.timer: rule state is kept in the shadow store"), std::string::npos)
      << r.reason;
}

TEST_F(StateTest, OnTimerAndOnInactiveRunWithTheirEventAndTheDevicesState) {
  states_.states[{"st", "d1"}] = StoredState{1, R"({"n":2})", {}};
  Load("", R"(  on_timer = function(t, ctx)
    ctx.state.n = ctx.state.n + 1
    ctx.emit("out", { name = t.name, due = t.due, why = t.data.why, n = ctx.state.n })
    ctx.timer.after("again", "1s")
  end,
  inactivity = "10m",
  on_inactive = function(ev, ctx)
    ctx.emit("out", { silent_since = ev.last_seen, shadow_device = ctx.shadow.thing,
                      device = ctx.device })
  end,
)");
  CallResult r = Run("", "d1", true, MessageView::Call::kTimer,
                     R"({"name":"recheck","due":99,"data":{"why":"hot"}})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(Sorted(r.effects[0].payload), R"({"due":99,"n":3,"name":"recheck","why":"hot"})");
  EXPECT_EQ(Stored(), R"({"n":3})");
  EXPECT_EQ((states_.states[{"st", "d1"}].timers.size()), 1u);
  r = Run("", "d1", true, MessageView::Call::kInactive, R"({"last_seen":42})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(Sorted(r.effects[0].payload),
            R"({"device":"d1","shadow_device":"d1","silent_since":42})");

  Load("");  // no on_timer
  r = Run("", "d1", true, MessageView::Call::kTimer, R"({"name":"x","due":1})");
  ASSERT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("rule st has no on_timer"), std::string::npos) << r.reason;
}

// Windows: each message goes into the rule's windows natively before handle runs; what closes
// comes back as on_window events, late messages are named, and the windows' state is stored in
// the row with the call's other effects.
TEST_F(StateTest, TumblingEventTimeWindowsCloseAsEventsMoveTimeOn) {
  Load("    ctx.emit('out', { seen = msg.payload.ts })",
       "  windows = { t = { tumbling = '1m', of = 'temp', agg = { 'avg', 'min', 'max' },\n"
       "                    time = 'payload.ts', grace = '10s' } },\n"
       "  on_window = function(w, ctx) ctx.emit('out', w) end,\n");
  ASSERT_EQ(Run(R"({"ts":1000,"temp":10})").outcome, Outcome::kOk);
  CallResult r = Run(R"({"ts":50000,"temp":20})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_TRUE(r.closed_windows.empty());
  ASSERT_NE(StateEffect(r), nullptr) << "the windows changed";
  EXPECT_EQ(StateEffect(r)->windows.rfind("t ", 0), 0u) << StateEffect(r)->windows;
  r = Run(R"({"ts":65000,"temp":30})");
  EXPECT_TRUE(r.closed_windows.empty()) << "within grace";
  r = Run(R"({"ts":59000,"temp":40})");  // late for nothing yet: [0, 60s) is open until 70s
  EXPECT_TRUE(r.late_windows.empty());
  r = Run(R"({"ts":71000,"temp":0})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  ASSERT_EQ(r.closed_windows.size(), 1u);
  EXPECT_EQ(
      Sorted(r.closed_windows[0]),
      R"({"avg":23.333333333333332,"count":3,"end":60000,"max":40,"min":10,"name":"t","start":0})");
  r = Run(R"({"ts":2000,"temp":99})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(r.late_windows, std::vector<std::string>{"t"});
  EXPECT_EQ(r.effects.size(), 1u) << "handle ran: " << r.reason;
  r = Run(R"({"temp":5})");
  EXPECT_EQ(r.window_skips, 1) << "no time: skipped, not a failure";
  EXPECT_EQ(r.outcome, Outcome::kOk);

  // on_window: the event as its argument.
  r = Run("", "d1", true, MessageView::Call::kWindow,
          R"({"name":"t","start":0,"end":60000,"avg":2.5,"count":2})");
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  EXPECT_EQ(Sorted(r.effects[0].payload),
            R"({"avg":2.5,"count":2,"end":60000,"name":"t","start":0})");
}

TEST_F(StateTest, SlidingWindowsShowTheirCurrentValueAndAFailedCallLeavesThemAsTheyWere) {
  Load(
      "    if msg.payload.bad then error('no') end\n"
      "    ctx.emit('out', { avg = ctx.window.recent.avg, n = ctx.window.recent.count })",
      "  windows = { recent = { sliding = '10s', of = 'v', agg = { 'avg' }, time = 'msg.ts' } "
      "},\n");
  auto run_at = [&](int64_t ts, const std::string& payload) {
    payload_ = payload;
    payload_.reserve(payload_.size() + simdjson::SIMDJSON_PADDING);
    std::string topic = "devices/d1/telemetry";
    MessageView m{topic, "d1", &payload_, "src", &headers_, ts};
    m.states = &states_;
    CallResult r;
    rt_->Run(0, m, r);
    if (r.outcome == Outcome::kOk) {
      states_.Apply("st", "d1", r);
    }
    return r;
  };
  ASSERT_EQ(Sorted(run_at(1000, R"({"v":10})").effects[0].payload), R"({"avg":10,"n":1})");
  ASSERT_EQ(Sorted(run_at(5000, R"({"v":20})").effects[0].payload), R"({"avg":15,"n":2})");
  EXPECT_EQ(run_at(6000, R"({"v":1000,"bad":true})").outcome, Outcome::kFailed);
  EXPECT_EQ(Sorted(run_at(12000, R"({"v":30})").effects[0].payload), R"({"avg":25,"n":2})")
      << "the failed call's value is not in the window, and 1000 has left it";
}

TEST_F(StateTest, IngestTimeWindowsCloseWhenTheClockMovesThemOn) {
  Load("",
       "  windows = { w = { tumbling = '1m' } },\n"
       "  on_window = function(w, ctx) end,\n");
  auto run_at = [&](int64_t ts, MessageView::Call call) {
    payload_ = "{}";
    payload_.reserve(64);
    std::string topic = "devices/d1/telemetry";
    MessageView m{topic, "d1", &payload_, "src", &headers_, ts};
    m.states = &states_;
    m.call = call;
    CallResult r;
    rt_->Run(0, m, r);
    if (r.outcome == Outcome::kOk) {
      states_.Apply("st", "d1", r);
    }
    return r;
  };
  CallResult r = run_at(1700000000123, MessageView::Call::kHandle);  // = the clock
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  const Effect* e = StateEffect(r);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->window_due, 1700000040000) << "the window [..., :40.000) closes then";
  r = run_at(0, MessageView::Call::kAdvance);
  EXPECT_TRUE(r.closed_windows.empty()) << "not yet";
  clock_.Set(1700000040000);
  r = run_at(0, MessageView::Call::kAdvance);
  ASSERT_EQ(r.outcome, Outcome::kOk) << r.reason;
  ASSERT_EQ(r.closed_windows.size(), 1u);
  EXPECT_EQ(Sorted(r.closed_windows[0]),
            R"({"count":1,"end":1700000040000,"name":"w","start":1699999980000})");
  ASSERT_NE(StateEffect(r), nullptr);
  EXPECT_EQ(StateEffect(r)->window_due, 0) << "nothing open";
}

TEST_F(StateTest, AWindowPastItsBoundFailsTheCall) {
  Load("",
       "  windows = { t = { tumbling = '1s', time = 'ts', max_open = 2, grace = '1h' } },\n"
       "  on_window = function(w, ctx) end,\n");
  ASSERT_EQ(Run(R"({"ts":0})").outcome, Outcome::kOk);
  ASSERT_EQ(Run(R"({"ts":1000})").outcome, Outcome::kOk);
  CallResult r = Run(R"({"ts":2000})");
  ASSERT_EQ(r.outcome, Outcome::kFailed);
  EXPECT_NE(r.reason.find("windows.t: the event at 2000 would open a window past the bound of 2"),
            std::string::npos)
      << r.reason;
}

TEST_F(StateTest, StateDeclarationsAreChecked) {
  auto load = [](const std::string& extra) {
    std::string src =
        "return rule { name = 'x', from = 'a/#', " + extra + " handle = function(msg, ctx) end }";
    auto set = RuleSet::FromSources({{"x.lua", src}}, RuleSetOptions{.sinks = {"out"}});
    return set.ok() ? std::string("ok") : std::string(set.status().message());
  };
  EXPECT_EQ(load("state = { version = 3, max_bytes = 1000 },"), "ok");
  EXPECT_NE(load("state = { version = 0 },").find("rule.state.version"), std::string::npos);
  EXPECT_NE(load("state = { max_bytes = 2000000 },").find("rule.state.max_bytes: at most"),
            std::string::npos);
  EXPECT_NE(load("state = { versoin = 2 },").find("rule.state"), std::string::npos);
  EXPECT_NE(load("migrate = 3,").find("rule.migrate: must be a function"), std::string::npos);
  EXPECT_EQ(load("inactivity = '10m', on_inactive = function() end,"), "ok");
  EXPECT_NE(load("inactivity = '10m',").find("rule.inactivity: needs on_inactive"),
            std::string::npos);
  EXPECT_NE(load("on_inactive = function() end,").find("rule.on_inactive: needs inactivity"),
            std::string::npos);
  EXPECT_NE(load("inactivity = '10 min', on_inactive = function() end,")
                .find("rule.inactivity: '10 min' is not a duration"),
            std::string::npos);
  EXPECT_NE(load("inactivity = '500ms', on_inactive = function() end,")
                .find("rule.inactivity: at least 1s"),
            std::string::npos);
  EXPECT_NE(load("on_timer = 'x',").find("rule.on_timer: must be a function"), std::string::npos);
  EXPECT_EQ(load("windows = { a = { sliding = '5m', of = 'temp', agg = { 'avg', 'stddev' } } },"),
            "ok");
  EXPECT_NE(load("windows = { a = { tumbling = '5m' } },").find("need on_window"),
            std::string::npos);
  EXPECT_NE(load("windows = { a = { tumbling = '5m', sliding = '1m' } }, on_window = print,")
                .find("needs exactly one of"),
            std::string::npos);
  EXPECT_NE(load("windows = { a = { sliding = '5m', agg = { 'avg' } } },")
                .find("agg avg needs of = \"field\""),
            std::string::npos);
  EXPECT_NE(load("windows = { a = { sliding = '5m', of = 'x', agg = { 'median' } } },")
                .find("agg[1]: one of count"),
            std::string::npos);
  EXPECT_NE(load("windows = { a = { hopping = '5m', hop = '5m' } }, on_window = function() end,")
                .find("hop must be positive and shorter"),
            std::string::npos);
  EXPECT_NE(load("windows = { A = { sliding = '5m' } },").find("a window's name is"),
            std::string::npos);
  EXPECT_NE(load("on_window = function() end,").find("need windows"), std::string::npos);
}

}  // namespace
}  // namespace gnomon::rules

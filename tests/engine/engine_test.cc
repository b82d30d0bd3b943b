// SPDX-License-Identifier: Apache-2.0
#include "gnomon/engine/engine.h"

#include <gtest/gtest.h>
#include <simdjson.h>

#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "gnomon/connectors/builtin.h"
#include "gnomon/core/factory.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/queue.h"
#include "gnomon/core/record.h"
#include "gnomon/core/sink.h"
#include "gnomon/shadow/store.h"
#include "tests/support/test_support.h"

namespace gnomon::engine {
namespace {

using testing::TempDir;
using testing::WaitFor;

// A sink the test controls: holds records until released, can fail them.
class ControlledSink final : public Sink {
 public:
  struct Control {
    std::mutex mu;
    std::condition_variable cv;
    bool open = true;             // false: Send blocks (a slow destination)
    bool fail = false;            // report every record as failed
    size_t block_after = SIZE_MAX;  // close by itself after this many records
    std::vector<std::string> got;  // payloads delivered, in order
    size_t max_blocked = 0;
  };

  ControlledSink(Control& c, DeliveryReporter& r) : c_(c), r_(r) {}
  Status Start() override { return {}; }
  void Send(Record&& rec) override {
    std::unique_lock lock(c_.mu);
    if (c_.got.size() >= c_.block_after) {
      c_.open = false;
      c_.block_after = SIZE_MAX;
    }
    c_.cv.wait(lock, [&] { return c_.open; });
    if (c_.fail) {
      lock.unlock();
      r_.Report(rec, Unavailable("destination refused"));
      return;
    }
    c_.got.push_back(rec.payload);
    lock.unlock();
    r_.Report(rec, Status());
  }
  void Stop(Deadline) override {}

 private:
  Control& c_;
  DeliveryReporter& r_;
};

class ControlledSinkFactory final : public SinkFactory {
 public:
  explicit ControlledSinkFactory(ControlledSink::Control& c) : c_(c) {}
  std::string_view schema() const override {
    return R"({"type":"object","additionalProperties":false,
              "properties":{"name":{"type":"string"},"type":{"type":"string"}}})";
  }
  Result<std::unique_ptr<Sink>> Create(const ConfigValue&, PluginContext& ctx) override {
    return std::unique_ptr<Sink>(new ControlledSink(c_, ctx.reporter));
  }

 private:
  ControlledSink::Control& c_;
};

class EngineTest : public ::testing::Test {
 protected:
  EngineTest() {
    connectors::RegisterBuiltinConnectors(registry_);
    registry_.AddSink("controlled", std::make_unique<ControlledSinkFactory>(control_));
  }

  void WriteConfig(const std::string& extra = "", const std::string& rule = kSeqRule) {
    dir_.Write("rules/r.lua", rule);
    dir_.Write("gnomon.yaml", "workers: 2\nworker_queue: 16\ndata_dir: data\n"
                              "sources: [{name: rec, type: file, path: in.jsonl}]\n"
                              "sinks:\n  - {name: out, type: file, path: out.jsonl, fsync: false}\n"
                              "  - {name: slow, type: controlled}\n"
                              "rules: [rules/*.lua]\n" + extra);
  }

  std::unique_ptr<Engine> Start(const std::string& input) {
    dir_.Write("in.jsonl", input);
    auto app = LoadAppConfig(dir_.File("gnomon.yaml"), registry_);
    EXPECT_TRUE(app.ok()) << app.status().message();
    if (!app.ok()) {
      return nullptr;
    }
    EngineOptions opts;
    opts.mode = Mode::kReplay;
    opts.replay_input = dir_.File("in.jsonl");
    auto e = Engine::Create(std::move(app).value(), registry_, clock_, opts);
    EXPECT_TRUE(e.ok()) << e.status().message();
    EXPECT_TRUE((*e)->Start().ok());
    return std::move(e).value();
  }

  // out.jsonl once it holds at least `lines` lines (waiting up to 30 s), or what it holds then.
  std::string AwaitOut(size_t lines = 1) {
    std::string out;
    WaitFor(
        [&] {
          out = testing::ReadFile(dir_.File("out.jsonl"));
          return static_cast<size_t>(std::count(out.begin(), out.end(), '\n')) >= lines;
        },
        std::chrono::seconds(30));
    return out;
  }

  static constexpr const char* kSeqRule = R"(
    return rule { name = "seq", from = "devices/+/telemetry",
      handle = function(msg, ctx)
        local p = msg.payload
        if p.fail then error("asked to fail") end
        if p.skip then return ctx.drop("skip") end
        ctx.emit(p.to or "out", { d = msg.device, n = p.n })
      end })";

  TempDir dir_;
  Registry registry_;
  ControlledSink::Control control_;
  SystemClock clock_;
};

// The JSON object `text` with its keys sorted (flat objects), for comparisons.
std::string Canonical(const std::string& text) { return testing::SortedJson(text); }

// The JSON lines of `file`, keys sorted, by the value of their string field `field` (the
// last line of each value wins).
std::map<std::string, std::string> LinesBy(const std::string& file, const char* field) {
  std::map<std::string, std::string> out;
  for (const std::string& line : testing::ReadLines(file)) {
    std::string sorted = Canonical(line);
    simdjson::dom::parser p;
    std::string_view v;
    if (p.parse(sorted)[field].get_string().get(v) == simdjson::SUCCESS) {
      out[std::string(v)] = sorted;
    }
  }
  return out;
}

std::string Line(const std::string& device, int n, const std::string& extra = "") {
  return "{\"topic\":\"devices/" + device + "/telemetry\",\"payload\":{\"n\":" +
         std::to_string(n) + extra + "}}\n";
}

TEST_F(EngineTest, ReplayKeepsPerDeviceOrderAndAccountsForEveryMessage) {
  WriteConfig();
  std::string input;
  for (int i = 0; i < 500; ++i) {
    for (const char* d : {"a", "b", "c", "d", "e"}) {
      input += Line(d, i);
    }
  }
  auto engine = Start(input);
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }));
  engine->Stop();
  auto c = engine->counts();
  EXPECT_EQ(c.in, 2500u);
  EXPECT_EQ(c.done, 2500u);
  EXPECT_EQ(c.dead_lettered, 0u);

  std::map<std::string, int> next;
  simdjson::dom::parser parser;
  auto lines = testing::ReadLines(dir_.File("out.jsonl"));
  ASSERT_EQ(lines.size(), 2500u);
  for (const auto& l : lines) {
    simdjson::dom::element e;
    ASSERT_EQ(parser.parse(l).get(e), simdjson::SUCCESS) << l;
    std::string d{std::string_view(e["d"])};
    EXPECT_EQ(int64_t(e["n"]), next[d]++) << "out of order for device " << d;
  }
}

TEST_F(EngineTest, BadInputIsDeadLetteredWithReasonAndOthersGoOn) {
  WriteConfig();
  std::string input = Line("a", 0) + "this is not json\n" + Line("a", 1, ",\"fail\":true") +
                      "{\"topic\":\"x\",\"payload\":{}}\n" +  // no device level → rejected
                      "{\"topic\":\"devices/b/telemetry\",\"raw\":\"\\u00ff\"}\n" + Line("a", 2) +
                      Line("a", 3, ",\"skip\":true") + "{\"topic\":\"nomatch/a/b\",\"payload\":1}\n";
  auto engine = Start(input);
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }));
  std::string metrics = engine->metrics().Render();
  engine->Stop();

  auto out = testing::ReadLines(dir_.File("out.jsonl"));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(Canonical(out[0]), R"({"d":"a","n":0})");
  EXPECT_EQ(Canonical(out[1]), R"({"d":"a","n":2})");

  auto dl = testing::ReadLines(dir_.File("data/dead-letter.jsonl"));
  ASSERT_EQ(dl.size(), 4u);
  std::string all;
  for (const auto& l : dl) {
    all += l + "\n";
  }
  EXPECT_NE(all.find("\"reason\":\"bad_record\""), std::string::npos) << all;
  EXPECT_NE(all.find("in.jsonl:2:"), std::string::npos) << all;
  EXPECT_NE(all.find("\"reason\":\"no_device\""), std::string::npos) << all;
  EXPECT_NE(all.find("\"reason\":\"rule_error\""), std::string::npos) << all;
  EXPECT_NE(all.find("asked to fail"), std::string::npos) << all;
  EXPECT_NE(all.find("r.lua:5:"), std::string::npos) << all;  // file and line of the error
  // The raw non-JSON payload reached the rule, which failed indexing nil: dead-lettered too.
  EXPECT_NE(all.find("\"device\":\"b\""), std::string::npos) << all;

  auto c = engine->counts();
  EXPECT_EQ(c.in, 8u);
  EXPECT_EQ(c.done + c.dead_lettered, c.in);
  EXPECT_EQ(c.dead_lettered, 4u);
  EXPECT_NE(metrics.find("gnomon_messages_in_flight 0\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("gnomon_messages_unmatched_total 1\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("gnomon_rule_messages_total{rule=\"seq\",outcome=\"filtered\"} 1"),
            std::string::npos);
  EXPECT_NE(metrics.find("gnomon_dead_letters_total{reason=\"rule_error\"} 2"), std::string::npos)
      << metrics;
}

TEST_F(EngineTest, SlowSinkBackPressuresInsteadOfBuffering) {
  WriteConfig();
  {
    std::lock_guard lock(control_.mu);
    control_.open = false;
  }
  std::string input;
  for (int i = 0; i < 5000; ++i) {
    input += Line("d" + std::to_string(i % 7), i, ",\"to\":\"slow\"");
  }
  auto engine = Start(input);
  // With the sink blocked, intake stops at what the queues hold: 2 workers × 16 queued, one
  // message in each worker's hands, one batch being read. Nothing is dropped.
  // Unbounded buffering would take in all 5000 within milliseconds; bounded intake never does.
  EXPECT_FALSE(WaitFor([&] { return engine->counts().in >= 5000; }, std::chrono::milliseconds(300)));
  EXPECT_GT(engine->counts().in, 0u);
  EXPECT_LE(engine->counts().in, 2u * (16 + 16 + 1) + 1);
  EXPECT_EQ(engine->counts().done, 0u);
  {
    std::lock_guard lock(control_.mu);
    control_.open = true;
  }
  control_.cv.notify_all();
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }));
  engine->Stop();
  EXPECT_EQ(control_.got.size(), 5000u);
  EXPECT_EQ(engine->counts().done, 5000u);
}

TEST_F(EngineTest, FailedSinkRecordsAreDeadLettered) {
  WriteConfig();
  control_.fail = true;
  auto engine = Start(Line("a", 1, ",\"to\":\"slow\""));
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }));
  std::string metrics = engine->metrics().Render();
  engine->Stop();
  auto dl = testing::ReadLines(dir_.File("data/dead-letter.jsonl"));
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_NE(dl[0].find("\"reason\":\"sink_error\""), std::string::npos) << dl[0];
  EXPECT_NE(dl[0].find("destination refused"), std::string::npos) << dl[0];
  EXPECT_NE(dl[0].find("\"rule\":\"seq\""), std::string::npos) << dl[0];
  EXPECT_EQ(engine->counts().dead_lettered, 1u);
  EXPECT_NE(metrics.find("gnomon_sink_records_total{sink=\"slow\",outcome=\"dead_lettered\"} 1"),
            std::string::npos)
      << metrics;
}

TEST_F(EngineTest, OnErrorDropAndRetry) {
  WriteConfig("", R"(
    return rule { name = "flaky", from = "devices/+/telemetry", on_error = "retry",
      max_attempts = 3,
      handle = function(msg, ctx)
        tries = (tries or 0) + 1
        if tries % 3 ~= 0 then error("transient") end
        ctx.emit("out", { tries = tries })
      end })");
  auto engine = Start(Line("a", 1));
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }));
  engine->Stop();
  EXPECT_EQ(testing::ReadLines(dir_.File("out.jsonl")), (std::vector<std::string>{R"({"tries":3})"}));
  EXPECT_EQ(engine->counts().done, 1u);
}

TEST_F(EngineTest, HotReloadSwitchesBetweenMessagesWithoutLossOrRegress) {
  auto rule = [](const char* v) {
    return std::string(R"(return rule { name = "seq", from = "devices/+/telemetry",
      handle = function(msg, ctx) ctx.emit("slow", { d = msg.device, n = msg.payload.n, v = ")") +
           v + "\" }) end }";
  };
  WriteConfig("", rule("A"));
  control_.block_after = 3000;  // the sink stalls mid-stream; the reload lands then
  std::string input;
  for (int i = 0; i < 2000; ++i) {
    for (int d = 0; d < 5; ++d) {
      input += Line("d" + std::to_string(d), i);
    }
  }
  auto engine = Start(input);
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard lock(control_.mu);
    return !control_.open;
  }));
  dir_.Write("rules/r.lua", rule("B"));
  ASSERT_TRUE(engine->ReloadRules("test").ok());
  {
    std::lock_guard lock(control_.mu);
    control_.open = true;
  }
  control_.cv.notify_all();
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }));
  engine->Stop();

  ASSERT_EQ(control_.got.size(), 10000u);  // every message once
  std::map<std::string, int> next;
  std::map<std::string, std::string> version;
  int b = 0;
  simdjson::dom::parser parser;
  for (const auto& rec : control_.got) {
    simdjson::dom::element e;
    ASSERT_EQ(parser.parse(rec).get(e), simdjson::SUCCESS);
    std::string d{std::string_view(e["d"])};
    std::string v{std::string_view(e["v"])};
    EXPECT_EQ(int64_t(e["n"]), next[d]++) << d;         // per-device order across the switch
    EXPECT_FALSE(version[d] == "B" && v == "A") << d;  // no device goes back
    version[d] = v;
    b += v == "B" ? 1 : 0;
  }
  EXPECT_GT(b, 0);
  EXPECT_LT(b, 10000);
  EXPECT_NE(engine->RulesJson("").find("\"ruleset_version\":2"), std::string::npos);
}

TEST_F(EngineTest, FailedReloadKeepsTheRunningRules) {
  WriteConfig();
  auto engine = Start(Line("a", 0));
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }));
  dir_.Write("rules/r.lua", "return rule { name = 'seq', from = 'devices/+/telemetry', handle = ");
  Status st = engine->ReloadRules("test");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("r.lua:1:"), std::string::npos) << st.message();
  std::string rules = engine->RulesJson("");
  EXPECT_NE(rules.find("\"ruleset_version\":1"), std::string::npos) << rules;
  EXPECT_NE(rules.find("\"last_reload\":{\"ok\":false"), std::string::npos) << rules;
  engine->Stop();
  EXPECT_EQ(testing::ReadLines(dir_.File("out.jsonl")).size(), 1u);
}

TEST_F(EngineTest, FailingRuleIsQuarantinedUntilReload) {
  // Failures from many devices (one each): the rule is at fault, for the whole fleet.
  WriteConfig("", R"(return rule { name = "bad", from = "devices/+/telemetry",
      quarantine = { failures = 5, window_s = 60 },
      handle = function(msg, ctx) error("always") end })");
  std::string input;
  for (int i = 0; i < 20; ++i) {
    input += Line("d" + std::to_string(i), i);
  }
  auto engine = Start(input);
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }));
  std::string one = engine->RulesJson("bad");
  EXPECT_NE(one.find("\"state\":\"quarantined\""), std::string::npos) << one;
  // The 6th failure opens the breaker; the other worker may be in a call at that moment, so
  // one more can fail (one per further worker).
  size_t at = one.find("\"failed\":");
  ASSERT_NE(at, std::string::npos) << one;
  int failed = std::stoi(one.substr(at + 9));
  EXPECT_GE(failed, 6) << one;
  EXPECT_LE(failed, 7) << one;
  EXPECT_NE(one.find("\"dead_lettered\":20"), std::string::npos) << one;
  EXPECT_NE(one.find("always"), std::string::npos) << one;
  std::string metrics = engine->metrics().Render();
  EXPECT_NE(metrics.find("gnomon_rule_quarantined{rule=\"bad\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("gnomon_dead_letters_total{reason=\"quarantined\"} " +
                         std::to_string(20 - failed)),
            std::string::npos)
      << metrics;
  ASSERT_TRUE(engine->ReloadRules("test").ok());
  EXPECT_NE(engine->RulesJson("bad").find("\"state\":\"running\""), std::string::npos);
  engine->Stop();
  EXPECT_EQ(engine->counts().dead_lettered, 20u);
}

// 101 bad payloads from one device used to quarantine the rule for every device. Now that
// device alone is quarantined, after quarantine.device_failures; the fleet's messages run.
TEST_F(EngineTest, OneDeviceCannotQuarantineARuleForTheFleet) {
  // Every dead letter written (no per-device rate): the test counts them.
  WriteConfig("dead_letter: { per_device_per_s: 0 }\n",
              R"(return rule { name = "strict", from = "devices/+/telemetry",
      handle = function(msg, ctx)
        if msg.payload.fail then error("cannot read " .. msg.device) end
        if msg.payload.refuse then return ctx.fail("bad input") end
        ctx.emit("out", { d = msg.device, n = msg.payload.n })
      end })");
  std::string input;
  for (int i = 0; i < 101; ++i) {
    input += Line("evil", i, ",\"fail\":true");
    input += Line("good" + std::to_string(i % 7), i);
    input += Line("picky", i, ",\"refuse\":true");  // ctx.fail: bad input, not a rule fault
  }
  auto engine = Start(input);
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }));
  std::string one = engine->RulesJson("strict");
  EXPECT_NE(one.find("\"state\":\"running\""), std::string::npos) << one;
  EXPECT_NE(one.find("\"devices_quarantined\":1"), std::string::npos) << one;
  engine->Stop();
  EXPECT_EQ(testing::ReadLines(dir_.File("out.jsonl")).size(), 101u);  // every good message
  std::string dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
  size_t quarantined = 0;
  for (size_t at = dl.find("\"reason\":\"quarantined\""); at != std::string::npos;
       at = dl.find("\"reason\":\"quarantined\"", at + 1)) {
    ++quarantined;
  }
  EXPECT_EQ(quarantined, 101u - 11u) << "evil's messages after its 11th failure";
  EXPECT_NE(dl.find("quarantined for this device"), std::string::npos);
  EXPECT_EQ(engine->counts().dead_lettered, 202u);  // evil's 101 and picky's 101
}

// Workers wait for the shadow store past shadows.max_pending_writes: the writes not yet durable
// (so the messages in flight behind them) stay within max_pending_writes + one batch per worker,
// however fast the source.
TEST_F(EngineTest, PendingShadowWritesAreBoundedByBackPressure) {
  WriteConfig("shadows: { max_pending_writes: 64 }\n",
              R"(return rule { name = "rep", from = "devices/+/telemetry",
      handle = function(msg, ctx) ctx.shadow:report({ n = msg.payload.n }) end })");
  std::string input;
  for (int i = 0; i < 20000; ++i) {
    input += Line("d" + std::to_string(i % 5000), i);
  }
  auto engine = Start(input);
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(120)));
  std::string metrics = engine->metrics().Render();
  engine->Stop();
  EXPECT_EQ(engine->counts().done, 20000u);
  size_t at = metrics.find("\ngnomon_shadow_store_pending_max ");
  ASSERT_NE(at, std::string::npos) << metrics;
  uint64_t max_pending = std::stoull(metrics.substr(at + 33));
  EXPECT_LE(max_pending, 64u + 2u * 256u) << "max_pending_writes + one batch per worker";
  EXPECT_GT(max_pending, 0u);
}

// Without a shadow connection, a rule's shadow writes build only the events something consumes
// (ShadowEventsWanted); rules listening on the event topics get every one of theirs, in order.
TEST_F(EngineTest, RulesOnShadowEventTopicsSeeEveryEventWithoutAShadowConnection) {
  WriteConfig("shadows: {}\n", R"(
    return rule { name = "rep", from = "devices/+/telemetry",
      handle = function(msg, ctx)
        if msg.payload.n == 1 then ctx.shadow:desire({ t = 5 }) end
        ctx.shadow:report({ t = msg.payload.n * 2 - 1 })
      end })");
  dir_.Write("rules/events.lua", R"(
    return rule { name = "events", from = "$aws/things/+/shadow/update/+",
      handle = function(msg, ctx)
        local kind = msg.topic:match("update/(%a+)$")
        local v = msg.payload.version or (msg.payload.current and msg.payload.current.version)
        ctx.emit("out", { kind = kind, v = v })
      end })");
  // Versions: 1 desire t=5 (delta {t:5}), 2 report t=1, 3 report t=3, 4 report t=5 (synced).
  auto engine = Start(Line("d1", 1) + Line("d1", 2) + Line("d1", 3));
  ASSERT_NE(engine, nullptr);
  std::string out;
  ASSERT_TRUE(WaitFor(
      [&] {
        out = testing::ReadFile(dir_.File("out.jsonl"));
        return std::count(out.begin(), out.end(), '\n') >= 10;
      },
      std::chrono::seconds(30)))
      << out;
  engine->Stop();
  std::map<std::string, std::vector<int>> seen;
  for (size_t at = 0; at < out.size();) {
    size_t end = out.find('\n', at);
    std::string line = out.substr(at, end - at);
    at = end + 1;
    size_t k = line.find("\"kind\":\"") + 8;
    size_t v = line.find("\"v\":") + 4;
    seen[line.substr(k, line.find('"', k) - k)].push_back(std::atoi(line.c_str() + v));
  }
  EXPECT_EQ(seen["accepted"], (std::vector<int>{1, 2, 3, 4})) << out;
  EXPECT_EQ(seen["documents"], (std::vector<int>{1, 2, 3, 4})) << out;
  EXPECT_EQ(seen["delta"], (std::vector<int>{1})) << out;
  EXPECT_EQ(seen["synced"], (std::vector<int>{4})) << out;
}

// ctx.state: per (rule, device), committed with the call (a failed call changes nothing),
// durable in the store, and there after a restart.
TEST_F(EngineTest, RuleStateIsPerDeviceCommittedWithTheCallAndSurvivesARestart) {
  WriteConfig("shadows: {}\n", R"(
    return rule { name = "count", from = "devices/+/telemetry",
      handle = function(msg, ctx)
        ctx.state.n = (ctx.state.n or 0) + 1
        if msg.payload.fail then error("asked to fail") end
        ctx.emit("out", { d = msg.device, n = ctx.state.n })
      end })");
  auto read_out = [&] {
    std::map<std::string, std::vector<int>> seen;
    std::string out = testing::ReadFile(dir_.File("out.jsonl"));
    for (size_t at = 0; at < out.size();) {
      size_t end = out.find('\n', at);
      std::string line = out.substr(at, end - at);
      at = end + 1;
      simdjson::dom::parser p;
      simdjson::dom::element e = p.parse(line);
      seen[std::string(std::string_view(e["d"]))].push_back(int(int64_t(e["n"])));
    }
    return seen;
  };
  {
    auto engine = Start(Line("d1", 1) + Line("d2", 1) + Line("d1", 2, ",\"fail\":true") +
                        Line("d1", 3) + Line("d2", 2) + Line("d1", 4));
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
    std::string metrics = engine->metrics().Render();
    engine->Stop();
    EXPECT_EQ(engine->counts().dead_lettered, 1u);
    EXPECT_NE(metrics.find("gnomon_rule_state_writes_total{outcome=\"stored\"} 5"),
              std::string::npos)
        << metrics;
  }
  auto seen = read_out();
  EXPECT_EQ(seen["d1"], (std::vector<int>{1, 2, 3})) << "the failed call's increment is gone";
  EXPECT_EQ(seen["d2"], (std::vector<int>{1, 2}));
  {
    auto engine = Start(Line("d1", 5) + Line("d2", 3));
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
    engine->Stop();
  }
  seen = read_out();
  EXPECT_EQ(seen["d1"], (std::vector<int>{1, 2, 3, 4})) << "went on from the stored state";
  EXPECT_EQ(seen["d2"], (std::vector<int>{1, 2, 3}));
  auto store = shadow::ShadowStore::Open({.path = dir_.File("data/shadows.db")});
  ASSERT_TRUE(store.ok()) << store.status().message();
  auto reader = (*store)->NewReader();
  ASSERT_TRUE(reader.ok());
  auto d1 = (*reader)->LoadState("count", "d1");
  ASSERT_TRUE(d1.ok() && d1->has_value());
  EXPECT_EQ((*d1)->json, R"({"n":4})");
  EXPECT_EQ((*d1)->version, 1);
}

// ctx.timer: a timer fires on_timer on the device's worker with its data and the device's
// state; it is gone once fired, and one due while gnomon was down fires when it is back.
TEST_F(EngineTest, TimersFireOnceWithTheirDataAndOneDueDuringAStopFiresAtTheNextStart) {
  WriteConfig("shadows: {}\n", R"(
    return rule { name = "later", from = "devices/+/telemetry",
      handle = function(msg, ctx)
        ctx.state.seen = (ctx.state.seen or 0) + 1
        ctx.timer.after("t", msg.payload.after, { n = msg.payload.n })
      end,
      on_timer = function(t, ctx)
        ctx.state.fired = (ctx.state.fired or 0) + 1
        ctx.emit("out", { d = ctx.shadow.thing, name = t.name, n = t.data.n,
                          seen = ctx.state.seen, fired = ctx.state.fired })
      end })");
  auto lines = [&] {
    std::string out = testing::ReadFile(dir_.File("out.jsonl"));
    return static_cast<size_t>(std::count(out.begin(), out.end(), '\n'));
  };
  {
    auto engine = Start(Line("d1", 1, ",\"after\":200") + Line("d2", 2, ",\"after\":200"));
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(WaitFor([&] { return lines() >= 2; }, std::chrono::seconds(30)))
        << testing::ReadFile(dir_.File("out.jsonl"));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::string metrics = engine->metrics().Render();
    engine->Stop();
    EXPECT_NE(metrics.find("gnomon_rule_timer_firings_total{kind=\"timer\"} 2"), std::string::npos)
        << metrics;
    EXPECT_NE(metrics.find("gnomon_rule_timers_pending 0"), std::string::npos) << metrics;
  }
  std::string out = testing::ReadFile(dir_.File("out.jsonl"));
  EXPECT_EQ(lines(), 2u) << "each fired once: " << out;
  EXPECT_NE(Canonical(out.substr(0, out.find('\n'))).find("\"name\":\"t\",\"seen\":1"),
            std::string::npos)
      << out;
  for (const char* d : {"\"d\":\"d1\",\"fired\":1,", "\"d\":\"d2\",\"fired\":1,"}) {
    bool found = false;
    for (size_t at = 0; at < out.size();) {
      size_t end = out.find('\n', at);
      found = found || Canonical(out.substr(at, end - at)).find(d) != std::string::npos;
      at = end + 1;
    }
    EXPECT_TRUE(found) << d << " in " << out;
  }
  // A timer 1 s ahead, and gnomon stopped at once: it fires when gnomon runs again.
  {
    auto engine = Start(Line("d3", 3, ",\"after\":1000"));
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
    engine->Stop();
  }
  EXPECT_EQ(lines(), 2u);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  {
    auto engine = Start("");
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(WaitFor([&] { return lines() >= 3; }, std::chrono::seconds(30)));
    engine->Stop();
  }
  out = testing::ReadFile(dir_.File("out.jsonl"));
  EXPECT_NE(out.find("\"d\":\"d3\""), std::string::npos) << out;
  EXPECT_EQ(lines(), 3u) << out;
}

// inactivity: on_inactive once a device has been silent that long, once until it is heard
// from again; a failing firing is dead-lettered and not repeated.
TEST_F(EngineTest, InactivityFiresOnceAfterTheSilenceAndAFailingFiringIsDeadLetteredOnce) {
  WriteConfig("shadows: {}\n", R"(
    return rule { name = "offline", from = "devices/+/telemetry",
      inactivity = "1s",
      handle = function(msg, ctx) end,
      on_inactive = function(ev, ctx)
        if ctx.shadow.thing == "bad" then error("cannot") end
        ctx.emit("out", { d = ctx.shadow.thing, last_seen = ev.last_seen,
                          inactivity_ms = ev.inactivity_ms })
      end })");
  int64_t before = clock_.NowMs();
  auto engine = Start(Line("d1", 1) + Line("bad", 2));
  ASSERT_NE(engine, nullptr);
  std::string out = AwaitOut();
  ASSERT_FALSE(out.empty());
  int64_t fired_at = clock_.NowMs();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  Engine::Counts c = engine->counts();
  std::string metrics = engine->metrics().Render();
  engine->Stop();
  out = testing::ReadFile(dir_.File("out.jsonl"));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << "once: " << out;
  simdjson::dom::parser p;
  simdjson::dom::element e = p.parse(out.substr(0, out.find('\n')));
  EXPECT_EQ(std::string_view(e["d"]), "d1");
  EXPECT_EQ(int64_t(e["inactivity_ms"]), 1000);
  int64_t last_seen = e["last_seen"];
  EXPECT_GE(last_seen, before);
  EXPECT_GE(fired_at - last_seen, 1000) << "not before the silence";
  EXPECT_EQ(c.dead_lettered, 1u) << "the failing firing, once";
  std::string dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
  EXPECT_NE(dl.find("cannot"), std::string::npos) << dl;
  EXPECT_NE(dl.find("$gnomon/rules/offline/inactive"), std::string::npos) << dl;
  EXPECT_NE(metrics.find("gnomon_rule_timer_firings_total{kind=\"inactive\"} 2"), std::string::npos)
      << metrics;
}

// Windows: per device, event time from the payload, aggregates computed natively; a window
// open across a restart keeps what it took; a late message is dead-lettered as late_event once
// its call has applied.
TEST_F(EngineTest, EventTimeWindowsPerDeviceSurviveARestartAndLateMessagesAreDeadLettered) {
  WriteConfig("shadows: {}\n", R"(
    return rule { name = "avg", from = "devices/+/telemetry",
      windows = { m = { tumbling = "1m", of = "temp", agg = { "avg", "max" }, time = "at" } },
      handle = function(msg, ctx) end,
      on_window = function(w, ctx)
        ctx.emit("out", { d = ctx.device, start = w.start, avg = w.avg, max = w.max, n = w.count })
      end })");
  auto at = [](const std::string& d, int64_t t, double temp) {
    return "{\"topic\":\"devices/" + d + "/telemetry\",\"payload\":{\"at\":" + std::to_string(t) +
           ",\"temp\":" + std::to_string(temp) + "}}\n";
  };
  {
    auto engine = Start(at("d1", 1000, 10) + at("d2", 2000, 100) + at("d1", 30000, 20));
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
    engine->Stop();
  }
  EXPECT_EQ(testing::ReadFile(dir_.File("out.jsonl")), "") << "nothing closed yet";
  {
    auto engine =
        Start(at("d1", 45000, 30) + at("d1", 61000, 0) + at("d2", 70000, 0) + at("d1", 5000, 99));
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
    Engine::Counts c = engine->counts();
    std::string metrics = engine->metrics().Render();
    engine->Stop();
    EXPECT_EQ(c.dead_lettered, 1u) << "the late one";
    EXPECT_NE(metrics.find("gnomon_rule_window_events_total{outcome=\"late\"} 1"),
              std::string::npos)
        << metrics;
    EXPECT_NE(metrics.find("gnomon_rule_windows_closed_total 2"), std::string::npos) << metrics;
  }
  std::string out = testing::ReadFile(dir_.File("out.jsonl"));
  std::map<std::string, std::string> by_device = LinesBy(dir_.File("out.jsonl"), "d");
  ASSERT_EQ(by_device.size(), 2u) << out;
  EXPECT_EQ(by_device["d1"], R"({"avg":20,"d":"d1","max":30,"n":3,"start":0})") << out;
  EXPECT_EQ(by_device["d2"], R"({"avg":100,"d":"d2","max":100,"n":1,"start":0})") << out;
  std::string dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
  EXPECT_NE(dl.find("late_event"), std::string::npos) << dl;
  EXPECT_NE(dl.find("late for window(s) m"), std::string::npos) << dl;
}

// A window keyed by a payload field: the devices of a room feed one window, kept by the room's
// owner; on_window runs there with ctx.device = the room. A message without a usable key is
// skipped by that window (counted), not failed.
TEST_F(EngineTest, KeyedWindowsAggregateAcrossDevicesAtTheKeysOwner) {
  WriteConfig("shadows: {}\n", R"(
    return rule { name = "rooms", from = "devices/+/telemetry",
      windows = { room = { tumbling = "1m", of = "temp", agg = { "avg" }, time = "at",
                           key = "room" } },
      handle = function(msg, ctx) end,
      on_window = function(w, ctx)
        ctx.emit("out", { room = ctx.device, avg = w.avg, n = w.count, start = w.start })
      end })");
  auto at = [](const std::string& d, const std::string& room, int64_t t, double temp) {
    return "{\"topic\":\"devices/" + d + "/telemetry\",\"payload\":{\"at\":" + std::to_string(t) +
           ",\"temp\":" + std::to_string(temp) + room + "}}\n";
  };
  std::string input;
  for (int i = 0; i < 10; ++i) {
    input +=
        at("d" + std::to_string(i), ",\"room\":\"r" + std::to_string(i % 2) + "\"", 1000 + i, i);
  }
  input += at("d9", "", 2000, 0);                   // no room: skipped
  input += at("d9", ",\"room\":\"a b\"", 2000, 0);  // not a usable key: skipped
  {
    auto engine = Start(input);
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
    std::string metrics = engine->metrics().Render();
    engine->Stop();
    EXPECT_EQ(engine->counts().dead_lettered, 0u);
    EXPECT_NE(metrics.find("gnomon_rule_window_events_total{outcome=\"skipped\"} 2"),
              std::string::npos)
        << metrics;
  }
  // Devices are ordered each on its own, not against each other: the messages that close the
  // rooms' first minute come after (a second run), or they would make the others late.
  auto engine =
      Start(at("x1", ",\"room\":\"r0\"", 70000, 100) + at("x2", ",\"room\":\"r1\"", 70000, 100));
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
  engine->Stop();
  EXPECT_EQ(engine->counts().dead_lettered, 0u);
  std::string out = testing::ReadFile(dir_.File("out.jsonl"));
  std::map<std::string, std::string> by_room = LinesBy(dir_.File("out.jsonl"), "room");
  ASSERT_EQ(by_room.size(), 2u) << out;
  EXPECT_EQ(by_room["r0"], R"({"avg":4,"n":5,"room":"r0","start":0})") << out;  // 0 2 4 6 8
  EXPECT_EQ(by_room["r1"], R"({"avg":5,"n":5,"room":"r1","start":0})") << out;  // 1 3 5 7 9
}

// A key is not a device: a device that names another device's id as its room reaches the
// window of that key, never that device's ctx.state, and a key's call has no shadow of its own.
TEST_F(EngineTest, AKeyNamedLikeADeviceNeverReachesThatDevicesState) {
  WriteConfig("shadows: {}\n", R"(
    return rule { name = "rooms", from = "devices/+/telemetry",
      windows = { room = { tumbling = "1m", of = "temp", agg = { "avg" }, time = "at",
                           key = "room" } },
      handle = function(msg, ctx)
        ctx.state.n = (ctx.state.n or 0) + 1
        ctx.emit("out", { d = ctx.device, n = ctx.state.n, closes = ctx.state.closes })
      end,
      on_window = function(w, ctx)
        ctx.state.closes = (ctx.state.closes or 0) + 1
        local ok, err = pcall(function() return ctx.shadow.reported end)
        ctx.emit("out", { room = ctx.device, n = ctx.state.n, closes = ctx.state.closes,
                          avg = w.avg, shadow = ok and "read" or tostring(err):match("not for a device") })
      end })");
  auto at = [](const std::string& d, const std::string& room, int64_t t, double temp) {
    return "{\"topic\":\"devices/" + d + "/telemetry\",\"payload\":{\"at\":" + std::to_string(t) +
           ",\"temp\":" + std::to_string(temp) + room + "}}\n";
  };
  for (const std::string& input :
       {at("victim", "", 1000, 1) + at("attacker", ",\"room\":\"victim\"", 1000, 50),
        at("attacker", ",\"room\":\"victim\"", 70000, 60), at("victim", "", 80000, 1)}) {
    auto engine = Start(input);
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
    engine->Stop();
    EXPECT_EQ(engine->counts().dead_lettered, 0u);
  }
  std::string out = testing::ReadFile(dir_.File("out.jsonl"));
  std::vector<std::string> lines;
  for (const std::string& line : testing::ReadLines(dir_.File("out.jsonl"))) {
    lines.push_back(Canonical(line));
  }
  std::sort(lines.begin(), lines.end());
  // The key's on_window kept its own state (closes = 1, no n); the device counted on
  // undisturbed (n = 2, no closes); the attacker has its own count.
  EXPECT_EQ(lines, (std::vector<std::string>{
                       R"({"avg":50,"closes":1,"room":"victim","shadow":"not for a device"})",
                       R"({"d":"attacker","n":1})", R"({"d":"attacker","n":2})",
                       R"({"d":"victim","n":1})", R"({"d":"victim","n":2})"}))
      << out;
}

// A key's failing on_window quarantines the rule for that key, not for the device of the
// same name: a device cannot get another quarantined by naming it as a key.
TEST_F(EngineTest, AFailingKeyDoesNotQuarantineTheDeviceOfThatName) {
  WriteConfig("dead_letter: { per_device_per_s: 0 }\nshadows: {}\n", R"(
    return rule { name = "rooms", from = "devices/+/telemetry",
      quarantine = { device_failures = 1 },
      windows = { room = { tumbling = "1m", of = "temp", agg = { "avg" }, time = "at",
                           key = "room" } },
      handle = function(msg, ctx) ctx.emit("out", { d = ctx.device, n = msg.payload.at }) end,
      on_window = function(w, ctx) error("cannot close " .. ctx.device) end })");
  auto at = [](const std::string& d, const std::string& room, int64_t t) {
    return "{\"topic\":\"devices/" + d + "/telemetry\",\"payload\":{\"at\":" + std::to_string(t) +
           ",\"temp\":1" + room + "}}\n";
  };
  std::string input;
  for (int i = 0; i < 40; ++i) {
    input += at("attacker", ",\"room\":\"victim\"", i * 60000);  // each closes a window
  }
  for (int i = 0; i < 40; ++i) {
    input += at("victim", "", i);
  }
  auto engine = Start(input);
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
  std::string one = engine->RulesJson("rooms");
  engine->Stop();
  EXPECT_NE(one.find("\"devices_quarantined\":1"), std::string::npos) << one;
  size_t victim = 0;
  for (const std::string& line : testing::ReadLines(dir_.File("out.jsonl"))) {
    victim += line.find("\"victim\"") != std::string::npos ? 1 : 0;
  }
  EXPECT_EQ(victim, 40u) << "every message of device victim ran";
  std::string dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
  EXPECT_NE(dl.find("cannot close victim"), std::string::npos) << dl;
  EXPECT_EQ(dl.find("devices/victim/telemetry"), std::string::npos) << dl;
}

// gnomon_rule_windows_open: the windows open in the rules' rows, counted across a restart
// (what the store holds at start, then what each write changes).
TEST_F(EngineTest, TheOpenWindowsGaugeCountsTheStoresWindowsAcrossARestart) {
  WriteConfig("shadows: {}\n", R"(
    return rule { name = "five", from = "devices/+/telemetry",
      windows = { m = { tumbling = "1m", of = "temp", agg = { "avg" }, time = "at" } },
      handle = function(msg, ctx) end,
      on_window = function(w, ctx) ctx.emit("out", { d = ctx.device, start = w.start }) end })");
  auto at = [](const std::string& d, int64_t t) {
    return "{\"topic\":\"devices/" + d + "/telemetry\",\"payload\":{\"at\":" +
           std::to_string(t) + ",\"temp\":1}}\n";
  };
  auto open_after = [&](const std::string& input) {
    auto engine = Start(input);
    EXPECT_NE(engine, nullptr);
    if (engine == nullptr) {
      return std::string();
    }
    EXPECT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
    std::string metrics = engine->metrics().Render();
    engine->Stop();
    size_t at = metrics.find("\ngnomon_rule_windows_open ");
    return at == std::string::npos ? metrics
                                   : metrics.substr(at + 1, metrics.find('\n', at + 1) - at - 1);
  };
  // d3's second message closes its first minute and opens the next: one each.
  EXPECT_EQ(open_after(at("d1", 1000) + at("d2", 1000) + at("d3", 1000) + at("d3", 61000)),
            "gnomon_rule_windows_open 3");
  // Back from the store: d1 moves to its next minute (still one), d4 opens one.
  EXPECT_EQ(open_after(at("d1", 61000) + at("d4", 1000)), "gnomon_rule_windows_open 4");
  EXPECT_EQ(testing::ReadLines(dir_.File("out.jsonl")).size(), 2u) << "d3's and d1's first minute";
}

// An ingest-time window (no `time`) closes by the clock, with nothing else arriving.
TEST_F(EngineTest, IngestTimeWindowsCloseByTheClock) {
  WriteConfig("shadows: {}\n", R"(
    return rule { name = "per-second", from = "devices/+/telemetry",
      windows = { s = { tumbling = "1s", of = "n", agg = { "sum" } } },
      handle = function(msg, ctx) end,
      on_window = function(w, ctx)
        ctx.emit("out", { d = ctx.device, sum = w.sum, n = w.count, len = w["end"] - w.start })
      end })");
  auto engine = Start(Line("d1", 2) + Line("d1", 3));
  ASSERT_NE(engine, nullptr);
  std::string out = AwaitOut();
  ASSERT_FALSE(out.empty());
  engine->Stop();
  EXPECT_EQ(Canonical(out.substr(0, out.find('\n'))), R"({"d":"d1","len":1000,"n":2,"sum":5})")
      << out;
}

// A new state.version whose migrate fails on a stored state is refused before it runs: a
// reload fails naming the device (the running version stays), and so does a start; one that
// works takes every state over on first use.
TEST_F(EngineTest, AMigrateThatFailsOnAStoredStateRefusesTheRuleSet) {
  WriteConfig("shadows: {}\n", R"(
    return rule { name = "count", from = "devices/+/telemetry",
      handle = function(msg, ctx)
        ctx.state.n = (ctx.state.n or 0) + 1
        ctx.emit("out", { d = msg.device, n = ctx.state.n })
      end })");
  auto engine = Start(Line("d1", 1) + Line("bad", 2));
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
  const std::string v2 = R"(
    return rule { name = "count", from = "devices/+/telemetry",
      state = { version = 2 },
      migrate = function(old, from)
        if old.n == 1 and MIGRATE_FAILS then error("cannot take n = 1") end
        return { count = old.n }
      end,
      handle = function(msg, ctx)
        ctx.state.count = ctx.state.count + 1
        ctx.emit("out", { d = msg.device, count = ctx.state.count })
      end })";
  dir_.Write("rules/r.lua", "MIGRATE_FAILS = true\n" + v2);
  Status st = engine->ReloadRules("test");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("rule count: migrate fails on the state of device "),
            std::string::npos)
      << st.message();
  EXPECT_NE(st.message().find("stored under version 1"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("cannot take n = 1"), std::string::npos) << st.message();
  EXPECT_NE(engine->RulesJson("").find("\"ruleset_version\":1"), std::string::npos);
  engine->Stop();

  // A start with it fails the same way.
  auto app = LoadAppConfig(dir_.File("gnomon.yaml"), registry_);
  ASSERT_TRUE(app.ok()) << app.status().message();
  EngineOptions opts;
  opts.mode = Mode::kReplay;
  opts.replay_input = dir_.File("in.jsonl");
  auto refused = Engine::Create(std::move(app).value(), registry_, clock_, opts);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("migrate fails"), std::string::npos)
      << refused.status().message();

  // One that works: each device's state is migrated when the device is next seen.
  dir_.Write("rules/r.lua", v2);
  auto next = Start(Line("d1", 3) + Line("bad", 4));
  ASSERT_NE(next, nullptr);
  ASSERT_TRUE(WaitFor([&] { return next->Idle(); }, std::chrono::seconds(30)));
  next->Stop();
  std::string out;
  for (const std::string& line : testing::ReadLines(dir_.File("out.jsonl"))) {
    out += Canonical(line) + "\n";
  }
  EXPECT_NE(out.find(R"({"count":2,"d":"d1"})"), std::string::npos) << out;
  EXPECT_NE(out.find(R"({"count":2,"d":"bad"})"), std::string::npos) << out;
}

// Without a store ctx.state cannot be kept: the call fails and says what to configure.
TEST_F(EngineTest, RuleStateWithoutAStoreFailsTheCallAndSaysWhy) {
  WriteConfig("", R"(
    return rule { name = "count", from = "devices/+/telemetry",
      handle = function(msg, ctx) ctx.state.n = 1 end })");
  auto engine = Start(Line("d1", 1));
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(WaitFor([&] { return engine->Idle(); }, std::chrono::seconds(30)));
  engine->Stop();
  EXPECT_EQ(engine->counts().dead_lettered, 1u);
  std::string dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
  EXPECT_NE(dl.find("rule state is kept in the shadow store"), std::string::npos) << dl;
}

TEST_F(EngineTest, DryRunPrintsEffectsInsteadOfDoingThem) {
  WriteConfig();
  dir_.Write("gnomon.yaml", "data_dir: data\nsinks: [{name: out, type: file, path: out.jsonl}]\n"
                            "rules: [rules/*.lua]\n");
  dir_.Write("in.jsonl", Line("a", 1) + Line("a", 2, ",\"fail\":true"));
  std::string out, err;
  int rc = testing::RunCommand({GNOMON_BINARY, "replay", "-c", dir_.File("gnomon.yaml"), "--input",
                                dir_.File("in.jsonl"), "--dry-run"},
                               &out, &err);
  ASSERT_EQ(rc, 0) << err;
  EXPECT_NE(out.find(R"({"effect":"emit","sink":"out","key":"a","rule":"seq","device":"a","record":{)"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find(R"("n":1)"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("effect":"dead_letter")"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("out.jsonl")));
}

}  // namespace
}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
// The outbox with a scripted destination (a fake is fine here; the webhook and SQL integration
// tests use real servers): order per device, retries, dead letters, limits, restarts, spilling.
#include "gnomon/connectors/outbox.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include "gnomon/connectors/record_fields.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/record.h"
#include "tests/support/test_support.h"

namespace gnomon::connectors {
namespace {

using testing::WaitFor;

// Plays the engine: counts reports, dead-letters failures (durably, at once) and releases the
// holds as the engine would.
class FakeEngine final : public DeliveryReporter, public DeliveryObserver {
 public:
  void Report(Record& r, const Status& s) override {
    {
      std::lock_guard lock(mu);
      if (s.ok()) {
        ++accepted;
      } else if (s.code() == StatusCode::kCancelled) {
        ++cancelled;
      } else {
        dead.push_back(r.payload + " | " + std::string(s.message()));
      }
    }
    if (r.delivery != nullptr) {
      r.delivery->Release();
    }
  }
  void OnDeliveryFinished(Delivery&) override {
    std::lock_guard lock(mu);
    ++finished;
  }
  size_t dead_count() {
    std::lock_guard lock(mu);
    return dead.size();
  }
  std::mutex mu;
  std::atomic<int> accepted{0}, cancelled{0}, finished{0};  // read by the test thread
  std::vector<std::string> dead;
};

// Answers from a script (by payload) and records what it delivered, in order.
class ScriptedDestination final : public SyncDestination {
 public:
  struct State {
    std::mutex mu;
    std::vector<std::string> delivered;
    std::map<std::string, int> failures_left;  // payload -> retryable failures before success
    std::set<std::string> refuse;              // payload -> dead-lettered by the destination
    std::atomic<bool> down{false};  // the test flips these while the sink runs
    std::atomic<int> batches{0};
    size_t max_batch_seen = 0;
  };
  explicit ScriptedDestination(std::shared_ptr<State> s) : s_(std::move(s)) {}

  void Deliver(std::span<OutboxEntry* const> batch, Done done) override {
    std::unique_lock lock(s_->mu);
    ++s_->batches;
    s_->max_batch_seen = std::max(s_->max_batch_seen, batch.size());
    if (s_->down) {
      lock.unlock();
      done(BatchResult::Retry(Unavailable("down"), 1));
      return;
    }
    for (OutboxEntry* e : batch) {
      auto it = s_->failures_left.find(e->record.payload);
      if (it != s_->failures_left.end() && it->second > 0) {
        --it->second;
        lock.unlock();
        done(BatchResult::Retry(Unavailable("flaky"), 1));
        return;
      }
    }
    BatchResult r;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (s_->refuse.count(batch[i]->record.payload)) {
        r.rejected.emplace_back(i, InvalidArgument("refused"));
      } else {
        s_->delivered.push_back(batch[i]->record.payload);
      }
    }
    lock.unlock();
    done(std::move(r));
  }

 private:
  std::shared_ptr<State> s_;
};

class OutboxTest : public ::testing::Test {
 protected:
  std::unique_ptr<Sink> Make(OutboxConfig c, const std::string& name = "hook") {
    PluginContext ctx{metrics_, engine_, clock_, dir_.path(), dir_.path(), name};
    ctx.route = 0;
    return NewOutboxSink(c, std::make_unique<ScriptedDestination>(state_), ctx);
  }

  Record Rec(const std::string& device, const std::string& payload) {
    Record r;
    r.device = device;
    r.payload = payload;
    r.delivery = new Delivery(&engine_, nullptr);
    return r;
  }

  std::vector<std::string> Delivered() {
    std::lock_guard lock(state_->mu);
    return state_->delivered;
  }

  int64_t RowsOnDisk(const std::string& name = "hook") {
    sqlite3* db = nullptr;
    sqlite3_open((dir_.path() + "/outbox/" + name + ".db").c_str(), &db);
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db, "SELECT count(*) FROM outbox", -1, &s, nullptr);
    int64_t n = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
  }

  testing::TempDir dir_;
  MetricsRegistry metrics_;
  FakeEngine engine_;
  SystemClock clock_;
  std::shared_ptr<ScriptedDestination::State> state_ =
      std::make_shared<ScriptedDestination::State>();
};

TEST_F(OutboxTest, DeliversEveryRecordInOrderPerDeviceAndEmptiesTheOutbox) {
  OutboxConfig c;
  c.lanes = 4;
  c.max_batch = 7;
  auto sink = Make(c);
  ASSERT_TRUE(sink->Start().ok());
  for (int i = 0; i < 500; ++i) {
    sink->Send(Rec("d" + std::to_string(i % 10), fmt::format("d{}:{}", i % 10, i / 10)));
  }
  ASSERT_TRUE(WaitFor([&] { return Delivered().size() == 500; })) << Delivered().size();
  std::map<std::string, int> last;
  for (const std::string& p : Delivered()) {
    std::string dev = p.substr(0, p.find(':'));
    int seq = std::stoi(p.substr(p.find(':') + 1));
    EXPECT_EQ(seq, last.count(dev) ? last[dev] + 1 : 0) << p;
    last[dev] = seq;
  }
  EXPECT_LE(state_->max_batch_seen, 7u);
  EXPECT_GT(state_->max_batch_seen, 1u);
  EXPECT_EQ(engine_.accepted, 500);
  ASSERT_TRUE(WaitFor([&] { return engine_.finished == 500; }));
  sink->Stop(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(RowsOnDisk(), 0);
}

TEST_F(OutboxTest, AcknowledgesOnceDurableAndResumesAfterARestart) {
  state_->down = true;
  OutboxConfig c;
  c.initial_backoff_ms = 5;
  c.max_attempts = 0;
  {
    auto sink = Make(c);
    ASSERT_TRUE(sink->Start().ok());
    for (int i = 0; i < 100; ++i) {
      sink->Send(Rec("d" + std::to_string(i % 3), "r" + std::to_string(i)));
    }
    // The source messages are finished while the destination is still down.
    ASSERT_TRUE(WaitFor([&] { return engine_.finished == 100; }));
    EXPECT_TRUE(Delivered().empty());
    sink->Stop(std::chrono::steady_clock::now() + std::chrono::milliseconds(200));
  }
  EXPECT_EQ(RowsOnDisk(), 100);
  state_->down = false;
  auto sink = Make(c);
  ASSERT_TRUE(sink->Start().ok());
  ASSERT_TRUE(WaitFor([&] { return Delivered().size() == 100; })) << Delivered().size();
  auto delivered = Delivered();
  std::set<std::string> got(delivered.begin(), delivered.end());
  EXPECT_EQ(got.size(), 100u);
  sink->Stop(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(RowsOnDisk(), 0);
  EXPECT_EQ(engine_.dead_count(), 0u);
}

TEST_F(OutboxTest, RetriesThenDeliversKeepingTheOrderBehindAFailure) {
  state_->failures_left["a1"] = 3;
  OutboxConfig c;
  c.lanes = 1;
  c.initial_backoff_ms = 5;
  auto sink = Make(c);
  ASSERT_TRUE(sink->Start().ok());
  for (const char* p : {"a0", "a1", "a2", "a3"}) {
    sink->Send(Rec("a", p));
  }
  ASSERT_TRUE(WaitFor([&] { return Delivered().size() == 4; }));
  EXPECT_EQ(Delivered(), (std::vector<std::string>{"a0", "a1", "a2", "a3"}));
  EXPECT_EQ(metrics_.GetCounter("gnomon_sink_records_total", "",
                                {{"sink", "hook"}, {"outcome", "retried"}})
                ->value(),
            3u);
  sink->Stop(std::chrono::steady_clock::now() + std::chrono::seconds(5));
}

TEST_F(OutboxTest, DeadLettersAfterMaxAttemptsAndRefusedRecordsAndDeletesThem) {
  state_->failures_left["bad"] = 1000;
  state_->refuse.insert("refused");
  OutboxConfig c;
  c.lanes = 2;
  c.max_attempts = 3;
  c.initial_backoff_ms = 2;
  auto sink = Make(c);
  ASSERT_TRUE(sink->Start().ok());
  sink->Send(Rec("x", "bad"));
  sink->Send(Rec("x", "after-bad"));
  sink->Send(Rec("y", "refused"));
  sink->Send(Rec("y", "fine"));
  ASSERT_TRUE(WaitFor([&] { return Delivered().size() == 2 && engine_.dead_count() == 2; }));
  std::vector<std::string> dead;
  {
    std::lock_guard lock(engine_.mu);
    dead = engine_.dead;
  }
  std::sort(dead.begin(), dead.end());
  EXPECT_EQ(dead[0], "bad | gave up after 3 attempts: flaky");
  EXPECT_EQ(dead[1], "refused | refused");
  ASSERT_TRUE(WaitFor([&] { return RowsOnDisk() == 0; }));
  sink->Stop(std::chrono::steady_clock::now() + std::chrono::seconds(5));
}

TEST_F(OutboxTest, OverItsLimitNewRecordsAreDeadLetteredNotDropped) {
  state_->down = true;
  OutboxConfig c;
  c.max_records = 10;
  c.max_attempts = 0;
  auto sink = Make(c);
  ASSERT_TRUE(sink->Start().ok());
  for (int i = 0; i < 25; ++i) {
    sink->Send(Rec("d", "r" + std::to_string(i)));
  }
  ASSERT_TRUE(WaitFor([&] { return engine_.finished == 25; }));
  EXPECT_EQ(engine_.accepted, 10);
  ASSERT_EQ(engine_.dead_count(), 15u);
  EXPECT_NE(engine_.dead[0].find("outbox of sink hook is full (10 records"), std::string::npos)
      << engine_.dead[0];
  EXPECT_EQ(metrics_.GetCounter("gnomon_outbox_rejected_total", "",
                                {{"sink", "hook"}, {"reason", "full"}})
                ->value(),
            15u);
  EXPECT_EQ(RowsOnDisk(), 10);
  sink->Stop(std::chrono::steady_clock::now());
}

TEST_F(OutboxTest, ExpiredRecordsAreDeadLettered) {
  state_->down = true;
  OutboxConfig c;
  c.max_age_ms = 1;  // everything waits longer than that while the destination is down
  c.max_attempts = 0;
  c.initial_backoff_ms = 20;
  auto sink = Make(c);
  ASSERT_TRUE(sink->Start().ok());
  sink->Send(Rec("d", "old"));
  ASSERT_TRUE(WaitFor([&] { return engine_.dead_count() == 1; }));
  EXPECT_NE(engine_.dead[0].find("in the outbox of sink hook (max_age_s"), std::string::npos)
      << engine_.dead[0];
  ASSERT_TRUE(WaitFor([&] { return RowsOnDisk() == 0; }));
  sink->Stop(std::chrono::steady_clock::now());
}

TEST_F(OutboxTest, SpillsToDiskBeyondTheMemoryWindowAndReadsBackInOrder) {
  state_->down = true;
  OutboxConfig c;
  c.memory_window = 16;
  c.lanes = 1;
  c.max_batch = 5;
  c.max_attempts = 0;
  c.initial_backoff_ms = 1;
  c.max_backoff_ms = 5;
  auto sink = Make(c);
  ASSERT_TRUE(sink->Start().ok());
  for (int i = 0; i < 300; ++i) {
    sink->Send(Rec("d", std::to_string(i)));
  }
  ASSERT_TRUE(WaitFor([&] { return engine_.finished == 300; }));
  state_->down = false;
  ASSERT_TRUE(WaitFor([&] { return Delivered().size() == 300; })) << Delivered().size();
  for (int i = 0; i < 300; ++i) {
    ASSERT_EQ(Delivered()[static_cast<size_t>(i)], std::to_string(i));
  }
  sink->Stop(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(RowsOnDisk(), 0);
}

TEST_F(OutboxTest, WithoutDurabilityRecordsAreAcknowledgedOnlyWhenDelivered) {
  state_->down = true;
  OutboxConfig c;
  c.durable = false;
  c.max_attempts = 0;
  c.initial_backoff_ms = 5;
  auto sink = Make(c);
  ASSERT_TRUE(sink->Start().ok());
  for (int i = 0; i < 10; ++i) {
    sink->Send(Rec("d", std::to_string(i)));
  }
  ASSERT_TRUE(WaitFor([&] { return state_->batches > 3; }));
  EXPECT_EQ(engine_.finished, 0);
  state_->down = false;
  ASSERT_TRUE(WaitFor([&] { return engine_.finished == 10; }));
  EXPECT_EQ(Delivered().size(), 10u);
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/outbox/hook.db"));
  sink->Stop(std::chrono::steady_clock::now());
}

TEST(RecordFieldsTest, ReadsPathsMetadataAndTemplates) {
  Record r;
  r.device = "dev/1";
  r.rule = "overheat";
  r.payload = R"({"a":{"b":[10,2.5,"x",true,null,{"k":1}]},"s":"hi"})";
  RecordFields f;
  ASSERT_TRUE(f.Reset(r).ok());
  auto get = [&](const char* p) {
    auto fp = FieldPath::Parse(p);
    EXPECT_TRUE(fp.ok()) << p;
    return f.Get(*fp);
  };
  EXPECT_EQ(get("$.a.b[0]").kind, FieldValue::kInt);
  EXPECT_EQ(get("$.a.b[0]").i, 10);
  EXPECT_EQ(get("$.a.b[1]").d, 2.5);
  EXPECT_EQ(get("$.a.b[2]").s, "x");
  EXPECT_EQ(get("$.a.b[3]").kind, FieldValue::kBool);
  EXPECT_EQ(get("$.a.b[4]").kind, FieldValue::kNull);
  EXPECT_EQ(get("$.a.b[5]").Text(), R"({"k":1})");
  EXPECT_EQ(get("$.a.b[9]").kind, FieldValue::kMissing);
  EXPECT_EQ(get("$.nope").kind, FieldValue::kMissing);
  EXPECT_EQ(get("@device").s, "dev/1");
  EXPECT_FALSE(FieldPath::Parse("a.b").ok());
  EXPECT_FALSE(FieldPath::Parse("$.a[x]").ok());
  EXPECT_FALSE(FieldPath::Parse("@nope").ok());

  auto t = RecordTemplate::Parse("https://h/${device}/${record.s}?r=${rule}");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->Render(f, true), "https://h/dev%2F1/hi?r=overheat");
  EXPECT_FALSE(RecordTemplate::Parse("x${nope}").ok());
  EXPECT_FALSE(RecordTemplate::Parse("x${device").ok());

  Record bad;
  bad.payload = "{not json";
  EXPECT_FALSE(f.Reset(bad).ok());
}

}  // namespace
}  // namespace gnomon::connectors

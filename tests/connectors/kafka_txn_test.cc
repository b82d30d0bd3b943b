// SPDX-License-Identifier: Apache-2.0
// The exactly-once source's transactional producer (connectors/kafka/src/kafka_txn.h) against
// the Kafka test broker, for the edges the end-to-end tests reach only by chance: a record of
// the source's messages after the transactions ended, a close with a transaction open, a
// record the producer refuses for itself.
#include "kafka_txn.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "broker.h"
#include "gnomon/connectors/kafka.h"
#include "tests/support/kafka_test_client.h"
#include "tests/support/test_support.h"

namespace gnomon::connectors::kafka {
namespace {

using gnomon::testing::KafkaTestBroker;

// What the producer reported, by record payload.
class Reporter : public DeliveryReporter {
 public:
  void Report(Record& r, const Status& status) override {
    {
      std::lock_guard lock(mu_);
      got_.emplace_back(r.payload, status);
    }
    if (r.delivery != nullptr) {
      r.delivery->Release();
      r.delivery = nullptr;
    }
    cv_.notify_all();
  }
  // The reports once there are `n` (or what there is after 10 s).
  std::vector<std::pair<std::string, Status>> Wait(size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10), [&] { return got_.size() >= n; });
    return got_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<std::string, Status>> got_;
};

// An acknowledgement inside the producer's transactions (the exactly-once source's).
class ScopedAck : public AckHandle {
 public:
  explicit ScopedAck(const void* scope) : scope_(scope) {}
  void Ack() override {}
  const void* Scope() const override { return scope_; }

 private:
  const void* scope_;
};

class TxnProducerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(broker_.Start(), "");
    broker_.CreateTopic("out", 1);
    settings_.brokers = broker_.bootstrap();
  }
  // A record for topic "out" with `payload`; of the source's messages when `scope` is given.
  static std::unique_ptr<Record> MakeRecord(const std::string& payload,
                                            const void* scope = nullptr) {
    auto r = std::make_unique<Record>();
    r->payload = payload;
    r->topic = "out";
    if (scope != nullptr) {
      r->delivery = new Delivery(nullptr, new ScopedAck(scope));
    }
    return r;
  }
  Status Start(TxnProducer& p, const std::string& id, int64_t timeout_ms = 10000) {
    return p.Start(settings_, id, timeout_ms, "in", [](Deadline) {});
  }
  // What a read_committed consumer finds in "out" (it reads until 500 ms pass with nothing new).
  std::vector<std::string> Committed() {
    std::vector<std::string> values;
    for (const auto& r : gnomon::testing::KafkaClient(broker_.bootstrap())
                             .ReadAll("out", 100, std::chrono::milliseconds(500))) {
      values.push_back(r.value);
    }
    return values;
  }
  uint64_t Transactions(const std::string& outcome) {
    return metrics_
        .GetCounter("gnomon_kafka_transactions_total", "", {{"source", "in"}, {"outcome", outcome}})
        ->value();
  }
  // The partition's batches by kind: transactional data, control (a transaction's marker),
  // and other.
  struct Kinds {
    int transactional = 0, control = 0, other = 0;
  };
  Kinds Batches() {
    Kinds k;
    for (const std::string& b : broker_.Batches("out", 0)) {
      auto attributes = static_cast<uint8_t>(b.at(22));
      (attributes & 0x20) != 0   ? ++k.control
      : (attributes & 0x10) != 0 ? ++k.transactional
                                 : ++k.other;
    }
    return k;
  }

  KafkaTestBroker broker_{{.port = 0, .partitions = 1}};
  ClientSettings settings_;
  Reporter reporter_;
  MetricsRegistry metrics_;
};

// Fenced by another producer with its transactional id, the producer sends nothing more: a
// record of the source's messages is reported cancelled (its message is left to the
// partition's next owner; sent outside the transactions, it would be there twice), any other
// is handed back for the sink to send its own way.
TEST_F(TxnProducerTest, AfterItIsFencedARecordOfTheSourcesMessagesIsCancelledNotSent) {
  TxnProducer first(reporter_, metrics_);
  ASSERT_TRUE(Start(first, "t").ok());
  auto before = MakeRecord("before", &first);
  ASSERT_TRUE(first.Produce(before));
  ASSERT_EQ(reporter_.Wait(1).size(), 1u) << "delivered into the open transaction";
  TxnProducer second(reporter_, metrics_);
  ASSERT_TRUE(Start(second, "t").ok());  // fences `first`
  EXPECT_EQ(first.Commit(nullptr, nullptr, [] { return false; }), TxnProducer::Outcome::kFenced);
  EXPECT_FALSE(first.Active());
  auto scoped = MakeRecord("scoped", &first);
  EXPECT_TRUE(first.Produce(scoped));
  auto reports = reporter_.Wait(2);
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[1].first, "scoped");
  EXPECT_EQ(reports[1].second.code(), StatusCode::kCancelled) << reports[1].second.message();
  auto other = MakeRecord("other");
  EXPECT_FALSE(first.Produce(other));
  ASSERT_NE(other, nullptr) << "handed back";
  EXPECT_EQ(other->payload, "other");
  EXPECT_EQ(Batches().other, 0) << "nothing went out of the transactions";
  // The new producer's committed record is all a read_committed consumer finds.
  auto after = MakeRecord("after");
  ASSERT_TRUE(second.Produce(after));
  ASSERT_EQ(second.Commit(nullptr, nullptr, [] { return false; }),
            TxnProducer::Outcome::kCommitted);
  EXPECT_EQ(Committed(), std::vector<std::string>{"after"});
}

// A transaction the broker aborted for its timeout (this process stalled) fences the
// producer's epoch; the producer, finding its transaction older than the timeout, takes it for
// that rather than for another instance: it starts a new producer and redoes the transaction
// with its records, which then commit once.
TEST_F(TxnProducerTest, ATransactionTheBrokerTimedOutIsRedoneByANewProducer) {
  TxnProducer p(reporter_, metrics_);
  // (A record waits up to the transaction timeout to be sent, and librdkafka may take a second
  // to learn a topic's leader: 3 s.)
  ASSERT_TRUE(Start(p, "t", /*timeout_ms=*/3000).ok());
  auto r = MakeRecord("kept", &p);
  ASSERT_TRUE(p.Produce(r));
  ASSERT_EQ(reporter_.Wait(1).size(), 1u) << "in the broker, in the open transaction";
  std::this_thread::sleep_for(std::chrono::milliseconds(4000));  // the broker aborts it
  EXPECT_EQ(p.Commit(nullptr, nullptr, [] { return false; }), TxnProducer::Outcome::kCommitted);
  EXPECT_TRUE(p.Active());
  EXPECT_EQ(Transactions("timed_out"), 1u);
  EXPECT_EQ(Transactions("fenced"), 0u);
  EXPECT_EQ(Committed(), std::vector<std::string>{"kept"});
}

// A transaction can fail with no record told. After a batch the broker refused for its topic
// (TOPIC_AUTHORIZATION_FAILED: that record fails alone, and the transaction is aborted), the
// partition's next batch skips the refused batch's sequence numbers: librdkafka then needs an
// epoch bump and keeps the batch's records queued without a report until the transaction is
// aborted. CheckAbortable finds that (the source asks when its messages stop finishing); the
// commit aborts, bumps the epoch and redoes the transaction with its records, which commit once.
// (The producer also asks the broker about the failed topic again within 5 s: librdkafka would
// otherwise refuse every record for it until its metadata refresh, minutes later.)
TEST_F(TxnProducerTest, ATransactionThatFailedWithNoRecordToldIsFoundAndRedone) {
  TxnProducer p(reporter_, metrics_);
  ASSERT_TRUE(Start(p, "t").ok());
  constexpr int16_t kProduce = 0;
  broker_.InjectError(kProduce, 29, 1, "out");  // TOPIC_AUTHORIZATION_FAILED, once
  auto refused = MakeRecord("refused", &p);
  ASSERT_TRUE(p.Produce(refused));
  auto reports = reporter_.Wait(1);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].second.code(), StatusCode::kUnavailable) << reports[0].second.message();
  EXPECT_EQ(p.Commit(nullptr, nullptr, [] { return false; }), TxnProducer::Outcome::kCommitted);
  std::this_thread::sleep_for(std::chrono::milliseconds(5500));  // (the topic asked about again)
  auto r = MakeRecord("once", &p);
  ASSERT_TRUE(p.Produce(r));
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  EXPECT_EQ(reporter_.Wait(1).size(), 1u) << "no report for the stuck record";
  EXPECT_TRUE(p.CheckAbortable());
  EXPECT_TRUE(p.NeedsAbort());
  EXPECT_EQ(p.Commit(nullptr, nullptr, [] { return false; }), TxnProducer::Outcome::kCommitted);
  EXPECT_EQ(Committed(), std::vector<std::string>{"once"});
}

// A close with a transaction open aborts it at once (read_committed consumers need not wait
// for the broker's timeout) and reports its records cancelled.
TEST_F(TxnProducerTest, CloseAbortsTheOpenTransaction) {
  TxnProducer p(reporter_, metrics_);
  ASSERT_TRUE(Start(p, "t").ok());
  for (const char* v : {"a", "b", "c"}) {
    auto r = MakeRecord(v);
    ASSERT_TRUE(p.Produce(r));
  }
  EXPECT_EQ(p.Open(), 3u);
  ASSERT_TRUE(gnomon::testing::WaitFor([&] { return Batches().transactional > 0; },
                                       std::chrono::seconds(10)))
      << "in the broker, in the open transaction";
  p.Close();
  auto reports = reporter_.Wait(3);
  ASSERT_EQ(reports.size(), 3u);
  for (const auto& [payload, status] : reports) {
    EXPECT_EQ(status.code(), StatusCode::kCancelled) << payload;
  }
  EXPECT_EQ(Batches().control, 1) << "the abort's marker, written before Close returned";
  auto late = MakeRecord("late");
  EXPECT_FALSE(p.Produce(late)) << "closed: the sink sends it its own way";
}

// A record the producer refuses for itself (too large) is reported failed at once (the engine
// dead-letters it); the transaction's other records commit.
TEST_F(TxnProducerTest, ARecordRefusedForItselfFailsAloneAndTheRestCommits) {
  TxnProducer p(reporter_, metrics_);
  ASSERT_TRUE(Start(p, "t").ok());
  auto huge = MakeRecord(std::string(2 * 1024 * 1024, 'x'));
  auto fine = MakeRecord("fine");
  ASSERT_TRUE(p.Produce(huge));
  ASSERT_TRUE(p.Produce(fine));
  EXPECT_EQ(p.Commit(nullptr, nullptr, [] { return false; }), TxnProducer::Outcome::kCommitted);
  auto reports = reporter_.Wait(2);
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[0].second.code(), StatusCode::kInvalidArgument) << reports[0].second.message();
  EXPECT_EQ(reports[1].first, "fine");
  EXPECT_TRUE(reports[1].second.ok()) << reports[1].second.message();
  EXPECT_EQ(Committed(), std::vector<std::string>{"fine"});
}

// A standby's reads of a change log (ReadTopicToEnd with positions): each read starts where
// the last one ended and leaves where it ended; an open transaction's records are not read
// (read committed) and the position stops before them, so that the next read gets them once
// they are committed — never skipped.
TEST_F(TxnProducerTest, ReadingOnFromAPositionGetsTheTailAndWaitsForOpenTransactions) {
  ConfigValue connection;
  connection.SetKind(ConfigValue::Kind::kMap);
  connection.AddField("type", ConfigValue::Scalar("kafka"));
  connection.AddField("brokers", ConfigValue::Scalar(broker_.bootstrap()));
  std::vector<std::string> got;
  auto read = [&](std::map<int32_t, int64_t>* positions) {
    got.clear();
    return ReadTopicToEnd(
        connection, "out",
        [&](int32_t, std::string_view, const std::string* value) {
          got.push_back(value != nullptr ? *value : "<tombstone>");
        },
        nullptr, nullptr, positions);
  };
  const uint64_t clients_before = TopicReadersMade();
  TxnProducer p(reporter_, metrics_);
  ASSERT_TRUE(Start(p, "t").ok());
  auto give_up = [] { return false; };
  for (const char* v : {"a", "b", "c"}) {
    auto r = MakeRecord(v);
    ASSERT_TRUE(p.Produce(r));
  }
  ASSERT_EQ(p.Commit(nullptr, nullptr, give_up), TxnProducer::Outcome::kCommitted);
  std::map<int32_t, int64_t> positions;
  auto n = read(&positions);
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(got, (std::vector<std::string>{"a", "b", "c"}));
  ASSERT_TRUE(positions.contains(0));
  const int64_t after_abc = positions[0];
  EXPECT_GE(after_abc, 3);

  // Nothing new: nothing read, the position stays.
  ASSERT_TRUE(read(&positions).ok());
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(positions[0], after_abc);

  // An open transaction: not read, and the position does not move past it.
  for (const char* v : {"d", "e"}) {
    auto r = MakeRecord(v);
    ASSERT_TRUE(p.Produce(r));
  }
  ASSERT_TRUE(gnomon::testing::WaitFor([&] { return Batches().transactional >= 2; },
                                       std::chrono::seconds(10)));
  ASSERT_TRUE(read(&positions).ok());
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(positions[0], after_abc);

  // Committed: the next read from there gets exactly them.
  ASSERT_EQ(p.Commit(nullptr, nullptr, give_up), TxnProducer::Outcome::kCommitted);
  ASSERT_TRUE(read(&positions).ok());
  EXPECT_EQ(got, (std::vector<std::string>{"d", "e"}));
  EXPECT_GT(positions[0], after_abc);

  // Without a position: the whole partition.
  std::map<int32_t, int64_t> fresh;
  ASSERT_TRUE(read(&fresh).ok());
  EXPECT_EQ(got, (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  EXPECT_EQ(fresh[0], positions[0]);
  // Every read above on this thread went through one client, kept between them (assigned
  // anew each time: no record of one read showed up in the next).
  EXPECT_EQ(TopicReadersMade() - clients_before, 1u);

  // A read given up (or failed) closes its client; the next one makes a new one.
  auto stopped = ReadTopicToEnd(
      connection, "out", [](int32_t, std::string_view, const std::string*) {}, nullptr,
      [] { return true; });
  EXPECT_EQ(stopped.status().code(), StatusCode::kCancelled);
  ASSERT_TRUE(read(nullptr).ok());
  EXPECT_EQ(got.size(), 5u);
  EXPECT_EQ(TopicReadersMade() - clients_before, 2u);
  // Another thread reads with a client of its own.
  std::thread([&] {
    std::map<int32_t, int64_t> other;
    EXPECT_TRUE(read(&other).ok());
  }).join();
  EXPECT_EQ(TopicReadersMade() - clients_before, 3u);
  p.Close();
}

}  // namespace
}  // namespace gnomon::connectors::kafka

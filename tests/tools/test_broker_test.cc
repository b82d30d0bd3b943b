// SPDX-License-Identifier: Apache-2.0
// The Kafka test broker (tools/test_broker) against librdkafka's own producer and consumer,
// and against hand-built requests for what a client would never send.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <librdkafka/rdkafka.h>
#include <netinet/in.h>
#include <simdjson.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/crc.hpp>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "broker.h"
#include "tests/support/kafka_test_client.h"
#include "tests/support/test_support.h"

namespace gnomon {
namespace {

using testing::KafkaTestBroker;

// A librdkafka producer: plain, idempotent, or transactional (with a transactional id).
class Producer {
 public:
  explicit Producer(const std::string& bootstrap, const std::string& mode = "plain",
                    const std::string& transactional_id = "", int timeout_ms = 60000) {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char err[256];
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err);
    rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err);
    if (mode != "plain") {
      rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err);
    }
    if (!transactional_id.empty()) {
      rd_kafka_conf_set(conf, "transactional.id", transactional_id.c_str(), err, sizeof err);
      rd_kafka_conf_set(conf, "transaction.timeout.ms", std::to_string(timeout_ms).c_str(), err,
                        sizeof err);
    }
    rd_kafka_conf_set_opaque(conf, this);
    rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* m, void* self) {
      ++(m->err == RD_KAFKA_RESP_ERR_NO_ERROR ? static_cast<Producer*>(self)->delivered
                                              : static_cast<Producer*>(self)->failed);
    });
    rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  }
  int delivered = 0;  // delivery reports (served from Flush)
  int failed = 0;
  // The transactional API: empty string on success, else the error's text.
  std::string Init() { return Text(rd_kafka_init_transactions(rk_, 30000)); }
  std::string Begin() { return Text(rd_kafka_begin_transaction(rk_)); }
  std::string Commit() { return Text(rd_kafka_commit_transaction(rk_, 30000)); }
  std::string Abort() { return Text(rd_kafka_abort_transaction(rk_, 30000)); }
  static std::string Text(rd_kafka_error_t* e) {
    if (e == nullptr) {
      return "";
    }
    std::string out = std::string(rd_kafka_error_name(e)) + ": " + rd_kafka_error_string(e) +
                      (rd_kafka_error_is_fatal(e) ? " (fatal)" : "");
    rd_kafka_error_destroy(e);
    return out;
  }
  ~Producer() { rd_kafka_destroy(rk_); }
  void Send(const std::string& topic, const std::string& key, const std::string& value) {
    while (rd_kafka_producev(rk_, RD_KAFKA_V_TOPIC(topic.c_str()),
                             RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
                             RD_KAFKA_V_KEY(key.data(), key.size()),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      rd_kafka_poll(rk_, 10);
    }
  }
  bool Flush() { return rd_kafka_flush(rk_, 30000) == RD_KAFKA_RESP_ERR_NO_ERROR; }
  // send_offsets_to_transaction: `offset` for `topic`'s partition `partition`, as a member of
  // the group `group` describes (empty string on success).
  std::string SendOffsets(const std::string& topic, int32_t partition, int64_t offset,
                          const rd_kafka_consumer_group_metadata_t* group) {
    rd_kafka_topic_partition_list_t* offsets = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(offsets, topic.c_str(), partition)->offset = offset;
    std::string out = Text(rd_kafka_send_offsets_to_transaction(rk_, offsets, group, 30000));
    rd_kafka_topic_partition_list_destroy(offsets);
    return out;
  }

 private:
  rd_kafka_t* rk_;
};

// A consumer assigned every partition of `topic` from `offset` (no group is joined).
class Consumer {
 public:
  Consumer(const std::string& bootstrap, const std::string& topic, int partitions,
           int64_t offset = RD_KAFKA_OFFSET_BEGINNING,
           const std::string& isolation = "read_committed") {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char err[256];
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err);
    // (librdkafka's consumer wants a group id even for assigned partitions; nothing is
    // committed and no group is joined)
    rd_kafka_conf_set(conf, "group.id", "test-broker-reader", err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "isolation.level", isolation.c_str(), err, sizeof err);
    rk_ = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(partitions);
    for (int p = 0; p < partitions; ++p) {
      rd_kafka_topic_partition_list_add(parts, topic.c_str(), p)->offset = offset;
    }
    rd_kafka_assign(rk_, parts);
    rd_kafka_topic_partition_list_destroy(parts);
  }
  ~Consumer() {
    rd_kafka_assign(rk_, nullptr);
    rd_kafka_destroy(rk_);
  }
  // Up to `want` records, waiting at most `timeout` for them.
  std::vector<testing::KafkaRecord> Read(size_t want, std::chrono::milliseconds timeout) {
    std::vector<testing::KafkaRecord> out;
    auto until = std::chrono::steady_clock::now() + testing::Scaled(timeout);
    while (out.size() < want && std::chrono::steady_clock::now() < until) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, 100);
      if (m == nullptr) {
        continue;
      }
      if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        testing::KafkaRecord r;
        r.partition = m->partition;
        r.offset = m->offset;
        r.key.assign(static_cast<const char*>(m->key), m->key_len);
        r.value.assign(static_cast<const char*>(m->payload), m->len);
        out.push_back(std::move(r));
      } else {
        errors.push_back(rd_kafka_err2name(m->err));
      }
      rd_kafka_message_destroy(m);
    }
    return out;
  }
  std::vector<std::string> errors;

 private:
  rd_kafka_t* rk_;
};

// A librdkafka consumer in group `group`, subscribed to `topic`.
class GroupConsumer {
 public:
  GroupConsumer(const std::string& bootstrap, const std::string& group, const std::string& topic) {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char err[256];
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", group.c_str(), err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err);
    rd_kafka_conf_set(conf, "session.timeout.ms", "6000", err, sizeof err);
    rd_kafka_conf_set(conf, "heartbeat.interval.ms", "200", err, sizeof err);
    rk_ = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    rd_kafka_poll_set_consumer(rk_);
    rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, topic.c_str(), RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rk_, topics);
    rd_kafka_topic_partition_list_destroy(topics);
  }
  ~GroupConsumer() {
    rd_kafka_consumer_close(rk_);
    rd_kafka_destroy(rk_);
  }
  // Polls once (up to 100 ms); a record is added to `got`.
  void Poll() {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, 100);
    if (m == nullptr) {
      return;
    }
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      got.emplace_back(static_cast<const char*>(m->payload), m->len);
      partitions.insert(m->partition);
    }
    rd_kafka_message_destroy(m);
  }
  bool Commit() { return rd_kafka_commit(rk_, nullptr, /*async=*/0) == RD_KAFKA_RESP_ERR_NO_ERROR; }
  // The member's group metadata (generation, member id) now, for transactions; the caller
  // destroys it.
  rd_kafka_consumer_group_metadata_t* Metadata() { return rd_kafka_consumer_group_metadata(rk_); }
  // The group's committed offset of `topic`'s partition `partition` (-1001: none).
  int64_t Committed(const std::string& topic, int32_t partition) {
    rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, topic.c_str(), partition);
    int64_t out = rd_kafka_committed(rk_, parts, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR
                      ? parts->elems[0].offset
                      : -2;
    rd_kafka_topic_partition_list_destroy(parts);
    return out;
  }
  int Assigned() {
    rd_kafka_topic_partition_list_t* parts = nullptr;
    if (rd_kafka_assignment(rk_, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return -1;
    }
    int n = parts->cnt;
    rd_kafka_topic_partition_list_destroy(parts);
    return n;
  }
  std::vector<std::string> got;
  std::set<int32_t> partitions;

 private:
  rd_kafka_t* rk_;
};

// Runs on the test broker, or on a real Kafka when GNOMON_TEST_KAFKA=host:port names one (so
// anyone with a cluster can confirm the broker's semantics are Kafka's). On a real Kafka the
// test's topics, transactional ids and groups get a suffix of their own (reruns start fresh).
class TestBrokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* real = std::getenv("GNOMON_TEST_KAFKA"); real != nullptr && *real != '\0') {
      bootstrap_ = real;
      suffix_ = "-" + std::to_string(std::chrono::system_clock::now().time_since_epoch().count());
      return;
    }
    ASSERT_EQ(broker_.Start(), "");
    bootstrap_ = broker_.bootstrap();
  }
  bool real() const { return !suffix_.empty(); }
  const std::string& bootstrap() const { return bootstrap_; }
  std::string Id(const std::string& name) const { return name + suffix_; }
  // Creates topic `name` (with the suffix) with `partitions`; returns its name.
  std::string Topic(const std::string& name, int partitions) {
    std::string topic = Id(name);
    if (!real()) {
      broker_.CreateTopic(topic, partitions);
      return topic;
    }
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char err[256];
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_.c_str(), err, sizeof err);
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    rd_kafka_NewTopic_t* t = rd_kafka_NewTopic_new(topic.c_str(), partitions, -1, err, sizeof err);
    rd_kafka_queue_t* q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, &t, 1, nullptr, q);
    rd_kafka_event_t* ev = rd_kafka_queue_poll(q, 30000);
    EXPECT_NE(ev, nullptr);
    if (ev != nullptr) {
      EXPECT_EQ(rd_kafka_event_error(ev), RD_KAFKA_RESP_ERR_NO_ERROR)
          << rd_kafka_event_error_string(ev);
      rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(t);
    rd_kafka_destroy(rk);
    return topic;
  }
  // A gnomon config for the exactly-once tests: source `in` on `input` (group and transactional
  // id of their own, a short session so a restart takes over quickly), sink `out` to `output`;
  // `more` is appended (more sinks' entries start with "  - ", then top-level keys).
  std::string EosConfig(const std::string& input, const std::string& output,
                        const std::string& group, const std::string& transactional_id,
                        const std::string& more_sinks = "", const std::string& more = "") {
    return "data_dir: data\nconnections:\n  bus: { type: kafka, brokers: \"" + bootstrap_ +
           "\" }\nsources:\n  - { name: in, connection: bus, topics: [" + input +
           "], group: " + Id(group) + ", transactional_id: " + Id(transactional_id) +
           ", device: key, delivery: exactly_once,\n      properties: { session.timeout.ms: " +
           (session_ms_ > 0 ? std::to_string(session_ms_)
            : real()        ? "6000"  // (Kafka's least by default: 6 s)
                            : "2000") +
           ", heartbeat.interval.ms: 300 } }\nsinks:\n  - { name: out, connection: bus, topic: " +
           output + " }\n" + more_sinks + more + "rules: [r.lua]\n";
  }
  // An exactly-once instance's directory: a rule forwarding every input of `input` as
  // {"n": n} to sink `out`, and EosConfig(input, output, group, transactional_id).
  void WriteForwarder(const testing::TempDir& dir, const std::string& input,
                      const std::string& output, const std::string& group,
                      const std::string& transactional_id) {
    dir.Write("r.lua", "return rule { name = \"fwd\", from = \"" + input +
                           "\",\n  handle = function(msg, ctx) ctx.emit(\"out\", { n = "
                           "msg.payload.n }) end }");
    dir.Write("g.yaml", EosConfig(input, output, group, transactional_id));
  }
  // As WriteForwarder, but the rule fails (error()) on every input whose n % `modulo` is 13,
  // and dead letters go to a Kafka sink `dlq` on topic `dlq_topic` (in the transactions).
  void WriteFailingForwarder(const testing::TempDir& dir, const std::string& input,
                             const std::string& output, const std::string& dlq_topic,
                             const std::string& group, const std::string& transactional_id,
                             int modulo) {
    dir.Write("r.lua", "return rule { name = \"fwd\", from = \"" + input +
                           "\",\n  quarantine = { failures = 1000000, device_failures = 1000000 },"
                           "\n  handle = function(msg, ctx)\n"
                           "    if msg.payload.n % " +
                           std::to_string(modulo) +
                           " == 13 then error(\"unlucky \" .. msg.payload.n) end\n"
                           "    ctx.emit(\"out\", { d = msg.device, n = msg.payload.n })\n  end }");
    dir.Write("g.yaml", EosConfig(input, output, group, transactional_id,
                                  "  - { name: dlq, connection: bus, topic: " + dlq_topic + " }\n",
                                  "dead_letter: { sink: dlq, per_device_per_s: 0 }\n"));
  }
  // Produces `n` records {"n":i} keyed d{i % devices} to `topic` on a thread, pausing `pause`
  // after every 1000 (so the input arrives over a while).
  // (A std::jthread: a failed assertion leaves the test with it joined, not terminated.)
  std::jthread Feed(const std::string& topic, int n, int devices, std::chrono::milliseconds pause) {
    return std::jthread([this, topic, n, devices, pause] {
      Producer producer(bootstrap_);
      for (int i = 0; i < n; ++i) {
        producer.Send(topic, "d" + std::to_string(i % devices),
                      "{\"n\":" + std::to_string(i) + "}");
        if (i % 1000 == 999) {
          std::this_thread::sleep_for(pause);
        }
      }
      EXPECT_TRUE(producer.Flush());
    });
  }
  KafkaTestBroker broker_{{.port = 0, .partitions = 3}};
  int session_ms_ = 0;  // the sources' session timeout in EosConfig; 0: the default above
  std::string bootstrap_;
  std::string suffix_;
};

// What librdkafka produces comes back to its consumer: every record once, each partition in
// the order produced, a key always in the same partition (the producer's partitioner), offsets
// from 0 with no gaps.
TEST_F(TestBrokerTest, ProducedRecordsComeBackInOrderPerPartition) {
  const std::string telemetry = Topic("telemetry", 3);
  Producer producer(bootstrap());
  constexpr int kRecords = 3000;
  for (int i = 0; i < kRecords; ++i) {
    producer.Send(telemetry, "d" + std::to_string(i % 17), std::to_string(i));
  }
  ASSERT_TRUE(producer.Flush());
  Consumer consumer(bootstrap(), telemetry, 3);
  std::vector<testing::KafkaRecord> got = consumer.Read(kRecords, std::chrono::seconds(30));
  ASSERT_EQ(got.size(), static_cast<size_t>(kRecords)) << ::testing::PrintToString(consumer.errors);
  std::map<std::string, int32_t> partition_of;
  std::map<std::string, int> last_of;
  std::map<int32_t, int64_t> next_offset;
  for (const testing::KafkaRecord& r : got) {
    auto [p, added] = partition_of.emplace(r.key, r.partition);
    EXPECT_EQ(p->second, r.partition) << r.key << " moved partition";
    int value = std::stoi(r.value);
    auto [l, first] = last_of.emplace(r.key, value);
    if (!first) {
      EXPECT_GT(value, l->second) << r.key << " out of order";
      l->second = value;
    }
    EXPECT_EQ(r.offset, next_offset[r.partition]++) << "partition " << r.partition;
  }
  EXPECT_EQ(last_of.size(), 17u);
  std::set<int32_t> used;
  for (const auto& [key, partition] : partition_of) {
    used.insert(partition);
  }
  EXPECT_EQ(used.size(), 3u) << "17 keys over 3 partitions";
}

// A consumer at the end of a partition waits (the fetch's max wait) and gets what is produced
// afterwards.
TEST_F(TestBrokerTest, AConsumerAtTheEndGetsWhatComesLater) {
  const std::string later = Topic("later", 1);
  Consumer consumer(bootstrap(), later, 1, RD_KAFKA_OFFSET_END);
  EXPECT_TRUE(consumer.Read(1, std::chrono::milliseconds(1500)).empty());
  Producer producer(bootstrap());
  producer.Send(later, "k", "after");
  ASSERT_TRUE(producer.Flush());
  std::vector<testing::KafkaRecord> got = consumer.Read(1, std::chrono::seconds(20));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].value, "after");
  EXPECT_EQ(got[0].offset, 0);
}

std::vector<std::string> Values(const std::vector<testing::KafkaRecord>& records) {
  std::vector<std::string> out;
  for (const testing::KafkaRecord& r : records) {
    out.push_back(r.value);
  }
  return out;
}

// An idempotent producer's records arrive once each, in order (sequence numbers checked).
TEST_F(TestBrokerTest, AnIdempotentProducersRecordsArriveOnceInOrder) {
  const std::string idem = Topic("idem", 1);
  Producer producer(bootstrap(), "idempotent");
  for (int i = 0; i < 2000; ++i) {
    producer.Send(idem, "k", std::to_string(i));
  }
  ASSERT_TRUE(producer.Flush());
  Consumer consumer(bootstrap(), idem, 1);
  std::vector<testing::KafkaRecord> got = consumer.Read(2000, std::chrono::seconds(20));
  ASSERT_EQ(got.size(), 2000u) << ::testing::PrintToString(consumer.errors);
  for (int i = 0; i < 2000; ++i) {
    ASSERT_EQ(got[static_cast<size_t>(i)].value, std::to_string(i));
  }
  EXPECT_TRUE(consumer.Read(1, std::chrono::milliseconds(500)).empty()) << "nothing twice";
}

// read_committed sees committed transactions only; read_uncommitted sees every record.
TEST_F(TestBrokerTest, ReadCommittedSeesCommittedTransactionsOnly) {
  const std::string txn = Topic("txn", 1);
  Producer producer(bootstrap(), "transactional", Id("t1"));
  ASSERT_EQ(producer.Init(), "");
  for (const char* outcome : {"commit", "abort", "commit"}) {
    ASSERT_EQ(producer.Begin(), "");
    for (int i = 0; i < 3; ++i) {
      producer.Send(txn, "k", std::string(outcome) + std::to_string(i));
    }
    ASSERT_TRUE(producer.Flush());  // (an abort drops what the client has not sent yet)
    ASSERT_EQ(std::string(outcome) == "commit" ? producer.Commit() : producer.Abort(), "");
  }
  Consumer committed(bootstrap(), txn, 1);
  std::vector<testing::KafkaRecord> got = committed.Read(6, std::chrono::seconds(10));
  EXPECT_EQ(Values(got), (std::vector<std::string>{"commit0", "commit1", "commit2", "commit0",
                                                   "commit1", "commit2"}))
      << ::testing::PrintToString(committed.errors);
  EXPECT_TRUE(committed.Read(1, std::chrono::milliseconds(500)).empty());
  Consumer everything(bootstrap(), txn, 1, RD_KAFKA_OFFSET_BEGINNING, "read_uncommitted");
  EXPECT_EQ(Values(everything.Read(9, std::chrono::seconds(10))),
            (std::vector<std::string>{"commit0", "commit1", "commit2", "abort0", "abort1", "abort2",
                                      "commit0", "commit1", "commit2"}))
      << "markers are not records";
}

// An open transaction holds read_committed consumers at its first record (the last stable
// offset), records produced after it by others included, until it ends.
TEST_F(TestBrokerTest, AnOpenTransactionHoldsReadCommittedConsumersBack) {
  const std::string lso = Topic("lso", 1);
  Producer txn(bootstrap(), "transactional", Id("t-lso"));
  ASSERT_EQ(txn.Init(), "");
  ASSERT_EQ(txn.Begin(), "");
  txn.Send(lso, "k", "in-txn");
  ASSERT_TRUE(txn.Flush());
  Producer plain(bootstrap());
  plain.Send(lso, "k", "after");
  ASSERT_TRUE(plain.Flush());
  Consumer committed(bootstrap(), lso, 1);
  EXPECT_TRUE(committed.Read(1, std::chrono::milliseconds(1500)).empty());
  Consumer uncommitted(bootstrap(), lso, 1, RD_KAFKA_OFFSET_BEGINNING, "read_uncommitted");
  EXPECT_EQ(Values(uncommitted.Read(2, std::chrono::seconds(5))),
            (std::vector<std::string>{"in-txn", "after"}));
  ASSERT_EQ(txn.Commit(), "");
  EXPECT_EQ(Values(committed.Read(2, std::chrono::seconds(5))),
            (std::vector<std::string>{"in-txn", "after"}));
}

// A second producer with the same transactional id fences the first: the first's open
// transaction is aborted and it can commit nothing more.
TEST_F(TestBrokerTest, ASecondProducerWithTheSameIdFencesTheFirst) {
  const std::string fence = Topic("fence", 1);
  Producer zombie(bootstrap(), "transactional", Id("t-fence"));
  ASSERT_EQ(zombie.Init(), "");
  ASSERT_EQ(zombie.Begin(), "");
  zombie.Send(fence, "k", "zombie");
  ASSERT_TRUE(zombie.Flush());
  Producer next(bootstrap(), "transactional", Id("t-fence"));
  ASSERT_EQ(next.Init(), "");
  ASSERT_EQ(next.Begin(), "");
  next.Send(fence, "k", "next");
  ASSERT_EQ(next.Commit(), "");
  std::string refused = zombie.Commit();
  EXPECT_NE(refused, "") << "the fenced producer's commit";
  Consumer committed(bootstrap(), fence, 1);
  EXPECT_EQ(Values(committed.Read(1, std::chrono::seconds(10))),
            (std::vector<std::string>{"next"}));
  EXPECT_TRUE(committed.Read(1, std::chrono::milliseconds(500)).empty()) << "not the zombie's";
  Consumer uncommitted(bootstrap(), fence, 1, RD_KAFKA_OFFSET_BEGINNING, "read_uncommitted");
  EXPECT_EQ(Values(uncommitted.Read(2, std::chrono::seconds(10))),
            (std::vector<std::string>{"zombie", "next"}))
      << "the zombie's record was written, then aborted";
}

// A transaction left open past its timeout is aborted by the broker, and the consumers move on.
TEST_F(TestBrokerTest, ATransactionPastItsTimeoutIsAborted) {
  const std::string topic = Topic("slow", 1);
  // (Long enough for the record to reach the broker first: the client gives up on a record
  // it could not send within the transaction's timeout.)
  Producer slow(bootstrap(), "transactional", Id("t-slow"), /*timeout_ms=*/4000);
  ASSERT_EQ(slow.Init(), "");
  ASSERT_EQ(slow.Begin(), "");
  slow.Send(topic, "k", "forgotten");
  ASSERT_TRUE(slow.Flush());
  ASSERT_EQ(slow.delivered, 1) << "the record is in the broker, in the open transaction";
  Producer plain(bootstrap());
  plain.Send(topic, "k", "later");
  ASSERT_TRUE(plain.Flush());
  Consumer uncommitted(bootstrap(), topic, 1, RD_KAFKA_OFFSET_BEGINNING, "read_uncommitted");
  EXPECT_EQ(Values(uncommitted.Read(2, std::chrono::seconds(10))),
            (std::vector<std::string>{"forgotten", "later"}));
  Consumer committed(bootstrap(), topic, 1);
  EXPECT_EQ(Values(committed.Read(1, std::chrono::seconds(20))),
            (std::vector<std::string>{"later"}));
  EXPECT_TRUE(committed.Read(1, std::chrono::milliseconds(500)).empty());
}

// Two consumers of one group share a topic's partitions (join, sync, the leader's assignment,
// heartbeats): together they read every record once. Offsets they commit are where the group
// starts again.
TEST_F(TestBrokerTest, AGroupSharesPartitionsAndResumesFromItsCommits) {
  const std::string shared = Topic("shared", 4);
  Producer producer(bootstrap());
  {
    GroupConsumer a(bootstrap(), Id("g"), shared);
    GroupConsumer b(bootstrap(), Id("g"), shared);
    // The group settles first (both joined, two partitions each), so no partition moves while
    // the records are read (a move before a commit reads records again: at-least-once).
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          a.Poll();
          b.Poll();
          return a.Assigned() == 2 && b.Assigned() == 2;
        },
        std::chrono::seconds(60)))
        << "assigned " << a.Assigned() << " + " << b.Assigned();
    for (int i = 0; i < 400; ++i) {
      producer.Send(shared, "k" + std::to_string(i), std::to_string(i));
    }
    ASSERT_TRUE(producer.Flush());
    std::set<std::string> all;
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          a.Poll();
          b.Poll();
          all = std::set<std::string>(a.got.begin(), a.got.end());
          all.insert(b.got.begin(), b.got.end());
          return all.size() >= 400;
        },
        std::chrono::seconds(60)))
        << a.got.size() << " + " << b.got.size();
    EXPECT_EQ(a.got.size() + b.got.size(), 400u) << "each record once";
    EXPECT_FALSE(a.got.empty());
    EXPECT_FALSE(b.got.empty());
    for (int32_t p : a.partitions) {
      EXPECT_EQ(b.partitions.count(p), 0u) << "partition " << p << " read by both";
    }
    EXPECT_TRUE(a.Commit());
    EXPECT_TRUE(b.Commit());
  }
  for (int i = 400; i < 410; ++i) {
    producer.Send(shared, "k" + std::to_string(i), std::to_string(i));
  }
  ASSERT_TRUE(producer.Flush());
  GroupConsumer again(bootstrap(), Id("g"), shared);
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        again.Poll();
        return again.got.size() >= 10;
      },
      std::chrono::seconds(60)));
  for (int i = 0; i < 10; ++i) {
    again.Poll();
  }
  std::set<std::string> resumed(again.got.begin(), again.got.end());
  EXPECT_EQ(again.got.size(), 10u) << "only what came after the commits";
  EXPECT_EQ(resumed.count("400"), 1u);
  EXPECT_EQ(resumed.count("409"), 1u);
}

// A member that dies (kill -9: no LeaveGroup) is removed when its session runs out, and the
// group rebalances its partitions to the members left.
TEST_F(TestBrokerTest, AMemberWhoseSessionRunsOutLosesItsPartitions) {
  const std::string crash = Topic("crash", 4);
  GroupConsumer a(bootstrap(), Id("gc"), crash);
  testing::Process other({"kcat", "-b", bootstrap(), "-G", Id("gc"), "-X",
                          "session.timeout.ms=1500", "-X", "heartbeat.interval.ms=200", "-q",
                          crash});
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        a.Poll();
        return a.Assigned() == 2;
      },
      std::chrono::seconds(60)))
      << "a has " << a.Assigned() << "; kcat: " << other.Stderr();
  other.Signal(SIGKILL);
  (void)other.Wait();
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        a.Poll();
        return a.Assigned() == 4;
      },
      std::chrono::seconds(60)))
      << "a has " << a.Assigned();
}

// A member that dies while another is joining holds the rebalance up for its session timeout,
// not its (much longer) rebalance timeout: a restarted instance takes over from its killed
// predecessor within seconds, as with Kafka.
TEST_F(TestBrokerTest, ACrashedMemberHoldsARebalanceOnlyForItsSession) {
  const std::string topic = Topic("takeover", 4);
  GroupConsumer a(bootstrap(), Id("gt"), topic);
  testing::Process dead({"kcat", "-b", bootstrap(), "-G", Id("gt"), "-X",
                         "session.timeout.ms=1500", "-X", "heartbeat.interval.ms=200", "-X",
                         "max.poll.interval.ms=300000", "-q", topic});
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        a.Poll();
        return a.Assigned() == 2;
      },
      std::chrono::seconds(60)))
      << "a has " << a.Assigned() << "; kcat: " << dead.Stderr();
  dead.Signal(SIGKILL);
  (void)dead.Wait();
  GroupConsumer b(bootstrap(), Id("gt"), topic);  // joins at once: a rebalance starts
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        a.Poll();
        b.Poll();
        return a.Assigned() + b.Assigned() == 4 && b.Assigned() > 0;
      },
      std::chrono::seconds(30)))
      << "a has " << a.Assigned() << ", b " << b.Assigned();
}

// Offsets sent with a transaction name the consumer group member and its generation
// (KIP-447): once the group has moved on to a newer generation (a member joined), offsets
// described by the old generation are refused (ILLEGAL_GENERATION, the transaction must be
// aborted), so a member that stalled through a rebalance cannot commit progress for
// partitions it may no longer own. The current generation's are taken, and commit with the
// transaction.
TEST_F(TestBrokerTest, TransactionalOffsetsFromAnOldGenerationAreRefused) {
  const std::string topic = Topic("kip447", 2);
  GroupConsumer first(bootstrap(), Id("kip447"), topic);
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        first.Poll();
        return first.Assigned() == 2;
      },
      std::chrono::seconds(30)));
  rd_kafka_consumer_group_metadata_t* old_generation = first.Metadata();
  GroupConsumer second(bootstrap(), Id("kip447"), topic);
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        first.Poll();
        second.Poll();
        return first.Assigned() == 1 && second.Assigned() == 1;
      },
      std::chrono::seconds(30)))
      << "the second member joins: a new generation";
  Producer producer(bootstrap(), "transactional", Id("t-kip447"));
  ASSERT_EQ(producer.Init(), "");
  ASSERT_EQ(producer.Begin(), "");
  std::string refused = producer.SendOffsets(topic, 0, 5, old_generation);
  rd_kafka_consumer_group_metadata_destroy(old_generation);
  EXPECT_NE(refused.find("ILLEGAL_GENERATION"), std::string::npos) << refused;
  EXPECT_EQ(producer.Abort(), "");
  ASSERT_EQ(producer.Begin(), "");
  rd_kafka_consumer_group_metadata_t* current = first.Metadata();
  EXPECT_EQ(producer.SendOffsets(topic, 0, 5, current), "");
  rd_kafka_consumer_group_metadata_destroy(current);
  ASSERT_EQ(producer.Commit(), "");
  EXPECT_EQ(first.Committed(topic, 0), 5);
}

// gnomon's own Kafka source (a consumer group, offsets committed after effects) and sink run
// against the broker: every record becomes one alert, and a restart resumes after what was
// committed. (The base the exactly-once tests of issue 18 will stand on.)
TEST_F(TestBrokerTest, GnomonRunsAKafkaPipelineAgainstIt) {
  const std::string telemetry = Topic("telemetry", 2);
  const std::string alerts_topic = Topic("alerts", 1);
  testing::TempDir dir;
  dir.Write("r.lua",
            "return rule { name = \"fwd\", from = \"" + telemetry +
                "\",\n  handle = function(msg, ctx) ctx.emit(\"out\", { d = msg.device, n = "
                "msg.payload.n }) end }");
  dir.Write("g.yaml", "data_dir: data\nconnections:\n  bus: { type: kafka, brokers: \"" +
                          bootstrap() +
                          "\" }\nsources:\n  - { name: in, connection: bus, topics: [" + telemetry +
                          "], group: " + Id("gnomon") +
                          ", device: key }\nsinks:\n  - { name: out, connection: bus, topic: " +
                          alerts_topic + " }\nrules: [r.lua]\n");
  Producer producer(bootstrap());
  auto produce = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      producer.Send(telemetry, "d" + std::to_string(i % 7), "{\"n\":" + std::to_string(i) + "}");
    }
    ASSERT_TRUE(producer.Flush());
  };
  Consumer alerts(bootstrap(), alerts_topic, 1);
  std::vector<testing::KafkaRecord> got;
  auto read = [&](size_t want) {
    std::vector<testing::KafkaRecord> more =
        alerts.Read(want - got.size(), std::chrono::seconds(60));
    got.insert(got.end(), more.begin(), more.end());
    return got.size();
  };
  {
    testing::Process gnomon({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")}, dir.path());
    produce(0, 200);
    ASSERT_EQ(read(200), 200u);
    gnomon.Signal(SIGTERM);
    EXPECT_EQ(gnomon.Wait(), 0) << gnomon.Stderr();
  }
  produce(200, 250);
  testing::Process gnomon({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")}, dir.path());
  ASSERT_EQ(read(250), 250u) << gnomon.Stderr();
  EXPECT_TRUE(alerts.Read(1, std::chrono::seconds(2)).empty())
      << "nothing twice after a clean stop";
  std::set<std::string> values;
  for (const testing::KafkaRecord& r : got) {
    values.insert(r.value);
  }
  EXPECT_EQ(values.size(), 250u);
  gnomon.Signal(SIGTERM);
  EXPECT_EQ(gnomon.Wait(), 0) << gnomon.Stderr();
}

// The number after "n": in a record's JSON value; -1 if none.
int64_t FieldN(const std::string& value) {
  size_t at = value.find("\"n\":");
  return at == std::string::npos ? -1 : std::strtoll(value.c_str() + at + 4, nullptr, 10);
}

// The alerts read (`got`) hold inputs 0..n-1 once each, and nothing more comes.
void ExpectEachOnce(Consumer& alerts, const std::vector<testing::KafkaRecord>& got, int n) {
  EXPECT_TRUE(alerts.Read(1, std::chrono::seconds(2)).empty()) << "an alert twice";
  std::set<int64_t> ns;
  for (const testing::KafkaRecord& r : got) {
    int64_t value = FieldN(r.value);
    EXPECT_TRUE(value >= 0 && value < n) << r.value;
    ns.insert(value);
  }
  EXPECT_EQ(ns.size(), static_cast<size_t>(n)) << "distinct inputs";
}

std::string Base64Decode(const std::string& in) {
  static const std::string kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t bits = 0;
  int n = 0;
  for (char c : in) {
    size_t v = kAlphabet.find(c);
    if (v == std::string::npos) {
      continue;  // padding
    }
    bits = (bits << 6) | static_cast<uint32_t>(v);
    if ((n += 6) >= 8) {
      n -= 8;
      out.push_back(static_cast<char>((bits >> n) & 0xff));
    }
  }
  return out;
}

// The dead letters (`dead`, gnomon's JSON) are of inputs that `fails`, each once, `count` of them.
template <typename Fails>
void ExpectDeadLetters(const std::vector<testing::KafkaRecord>& dead, Fails fails, int count) {
  std::set<int64_t> ns;
  for (const testing::KafkaRecord& r : dead) {
    size_t at = r.value.find("\"payload_base64\":\"");
    ASSERT_NE(at, std::string::npos) << r.value;
    at += 18;
    int64_t n = FieldN(Base64Decode(r.value.substr(at, r.value.find('"', at) - at)));
    EXPECT_TRUE(fails(n)) << r.value;
    EXPECT_TRUE(ns.insert(n).second) << "dead-lettered twice: " << r.value;
  }
  EXPECT_EQ(ns.size(), static_cast<size_t>(count));
}

// Exactly-once (issue 18): gnomon is killed with SIGKILL again and again while it turns 100k
// inputs into alerts inside Kafka transactions; a read_committed consumer then finds every
// input's alert exactly once, each device's in input order, and the dead letters (a Kafka sink
// in the same transactions) are exactly the inputs the rule failed on. The read_uncommitted
// view shows the kills did cut transactions: it holds the aborted duplicates.
TEST_F(TestBrokerTest, ExactlyOnceThroughKill9) {
  const std::string telemetry = Topic("telemetry", 4);
  const std::string alerts_topic = Topic("alerts", 3);
  const std::string dlq_topic = Topic("dlq", 1);
  constexpr int kInputs = 100000;
  constexpr int kDevices = 50;
  auto fails = [](int64_t n) { return n % 1000 == 13; };
  testing::TempDir dir;
  WriteFailingForwarder(dir, telemetry, alerts_topic, dlq_topic, "eos", "eos-1", 1000);
  int expected = 0;
  for (int i = 0; i < kInputs; ++i) {
    expected += fails(i) ? 0 : 1;
  }
  // The input arrives over several seconds while gnomon is killed and restarted.
  std::jthread feed = Feed(telemetry, kInputs, kDevices, std::chrono::milliseconds(60));
  // Each run waits for its output to grow, then is killed a moment later (mid-transaction,
  // mostly: one commits every 100 ms).
  Consumer progress(bootstrap(), alerts_topic, 3);
  size_t seen = 0;
  int mid_run_kills = 0;
  for (int round = 0; round < 5; ++round) {
    testing::Process gnomon({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")}, dir.path());
    size_t target = seen + 2000;
    auto until = std::chrono::steady_clock::now() + testing::Scaled(std::chrono::seconds(30));
    while (seen < target && seen < static_cast<size_t>(expected) && gnomon.Running() &&
           std::chrono::steady_clock::now() < until) {
      seen += progress.Read(target - seen, std::chrono::milliseconds(100)).size();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + 61 * round));
    gnomon.Signal(SIGKILL);
    EXPECT_EQ(gnomon.Wait(), 128 + SIGKILL) << gnomon.Stderr();
    seen += progress.Read(expected, std::chrono::milliseconds(300)).size();
    mid_run_kills += seen < static_cast<size_t>(expected) ? 1 : 0;
  }
  feed.join();
  EXPECT_GE(mid_run_kills, 3) << "the kills should land mid-run (outputs so far: " << seen << ")";
  testing::Process gnomon({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")}, dir.path());
  Consumer alerts(bootstrap(), alerts_topic, 3);
  std::vector<testing::KafkaRecord> got = alerts.Read(expected, std::chrono::seconds(120));
  ASSERT_EQ(got.size(), static_cast<size_t>(expected)) << gnomon.Stderr();
  std::vector<testing::KafkaRecord> more = alerts.Read(1, std::chrono::seconds(2));
  EXPECT_TRUE(more.empty()) << "more than one alert per input: " << more[0].value;
  Consumer dlq(bootstrap(), dlq_topic, 1);
  std::vector<testing::KafkaRecord> dead = dlq.Read(kInputs, std::chrono::seconds(3));
  gnomon.Signal(SIGTERM);
  EXPECT_EQ(gnomon.Wait(), 0) << gnomon.Stderr();

  // Every input once, each device's alerts in input order (one key, one partition).
  std::set<int64_t> ns;
  std::map<std::string, int64_t> last;
  std::vector<std::string> twice, wrong, out_of_order;
  for (const testing::KafkaRecord& r : got) {
    int64_t n = FieldN(r.value);
    if (!ns.insert(n).second) {
      twice.push_back(r.value);
    }
    if (n < 0 || fails(n) || r.key != "d" + std::to_string(n % kDevices)) {
      wrong.push_back(r.key + " " + r.value);
    }
    auto [it, fresh] = last.emplace(r.key, n);
    if (!fresh && it->second >= n) {
      out_of_order.push_back(r.key + " " + r.value);
    }
    it->second = n;
  }
  EXPECT_EQ(twice.size(), 0u) << "alerts twice, e.g. " << (twice.empty() ? "" : twice[0]);
  EXPECT_EQ(wrong.size(), 0u) << "wrong alerts, e.g. " << (wrong.empty() ? "" : wrong[0]);
  EXPECT_EQ(out_of_order.size(), 0u)
      << "out of device order, e.g. " << (out_of_order.empty() ? "" : out_of_order[0]);
  EXPECT_EQ(ns.size(), static_cast<size_t>(expected));
  // The dead letters: exactly the inputs the rule failed on, each once.
  ExpectDeadLetters(dead, fails, kInputs - expected);
  // The kills cut transactions: their records are in the log, hidden from read_committed.
  Consumer raw(bootstrap(), alerts_topic, 3, RD_KAFKA_OFFSET_BEGINNING, "read_uncommitted");
  EXPECT_GT(raw.Read(kInputs * 2, std::chrono::seconds(5)).size(), static_cast<size_t>(expected));
}

// Exactly-once: a second instance started with the first one's transactional id fences it.
// The fenced one aborts what it held, leaves the group (its partitions move to the other) and
// stays up, not processing; every input's alert is still there exactly once.
TEST_F(TestBrokerTest, ExactlyOnceAFencedInstanceLeavesItsPartitions) {
  const std::string telemetry = Topic("fence-in", 4);
  const std::string alerts_topic = Topic("fence-out", 2);
  constexpr int kInputs = 20000;
  testing::TempDir a_dir, b_dir;
  WriteForwarder(a_dir, telemetry, alerts_topic, "fence", "fence-shared");
  WriteForwarder(b_dir, telemetry, alerts_topic, "fence", "fence-shared");
  std::jthread feed = Feed(telemetry, kInputs, 20, std::chrono::milliseconds(100));
  testing::Process a({GNOMON_BINARY, "run", "-c", a_dir.File("g.yaml")}, a_dir.path());
  Consumer alerts(bootstrap(), alerts_topic, 2);
  std::vector<testing::KafkaRecord> got = alerts.Read(500, std::chrono::seconds(30));
  ASSERT_EQ(got.size(), 500u) << a.Stderr();
  testing::Process b({GNOMON_BINARY, "run", "-c", b_dir.File("g.yaml")}, b_dir.path());
  EXPECT_TRUE(testing::WaitFor(
      [&] { return a.Stderr().find("kafka transactional producer fenced") != std::string::npos; },
      std::chrono::seconds(60)))  // (usually ~1 s; once in several runs ~30 s, not understood yet)
      << a.Stderr();
  std::vector<testing::KafkaRecord> rest =
      alerts.Read(kInputs - got.size(), std::chrono::seconds(60));
  got.insert(got.end(), rest.begin(), rest.end());
  feed.join();
  ASSERT_EQ(got.size(), static_cast<size_t>(kInputs)) << b.Stderr();
  ExpectEachOnce(alerts, got, kInputs);
  if (!real()) {
    // Every batch of the output is transactional (or a transaction's marker): no record of an
    // input went out of the fenced instance some other way (its sink's own producer did, once,
    // for records made after the fencing: a duplicate when the new owner processed them).
    for (int32_t p = 0; p < 2; ++p) {
      for (const std::string& batch : broker_.Batches(alerts_topic, p)) {
        ASSERT_GE(batch.size(), 23u);
        EXPECT_NE(static_cast<uint8_t>(batch[22]) & 0x10, 0) << "a batch outside transactions";
      }
    }
  }
  EXPECT_TRUE(a.Running()) << "the fenced instance stays up (not ready) for its operator";
  a.Signal(SIGTERM);
  b.Signal(SIGTERM);
  EXPECT_EQ(a.Wait(), 0) << a.Stderr();
  EXPECT_EQ(b.Wait(), 0) << b.Stderr();
}

// Exactly-once through rebalances: a second instance (its own transactional id) joins the group
// mid-stream, then the first stops mid-stream; each revocation commits the open transaction
// before letting go. Every input's alert is there exactly once, each device's in order.
TEST_F(TestBrokerTest, ExactlyOnceThroughRebalances) {
  const std::string telemetry = Topic("rebal-in", 4);
  const std::string alerts_topic = Topic("rebal-out", 2);
  constexpr int kInputs = 30000;
  testing::TempDir a_dir, b_dir;
  WriteForwarder(a_dir, telemetry, alerts_topic, "rebal", "rebal-a");
  WriteForwarder(b_dir, telemetry, alerts_topic, "rebal", "rebal-b");
  std::jthread feed = Feed(telemetry, kInputs, 20, std::chrono::milliseconds(150));
  Consumer alerts(bootstrap(), alerts_topic, 2);
  std::vector<testing::KafkaRecord> got;
  auto read = [&](size_t want) {
    std::vector<testing::KafkaRecord> more =
        alerts.Read(want - got.size(), std::chrono::seconds(60));
    got.insert(got.end(), more.begin(), more.end());
    return got.size();
  };
  testing::Process a({GNOMON_BINARY, "run", "-c", a_dir.File("g.yaml")}, a_dir.path());
  ASSERT_EQ(read(3000), 3000u) << a.Stderr();
  testing::Process b({GNOMON_BINARY, "run", "-c", b_dir.File("g.yaml")}, b_dir.path());
  ASSERT_TRUE(testing::WaitFor(
      [&] { return b.Stderr().find("kafka partitions assigned") != std::string::npos; },
      std::chrono::seconds(30)))
      << b.Stderr();
  ASSERT_EQ(read(12000), 12000u) << b.Stderr();
  a.Signal(SIGTERM);  // leaves mid-stream: its partitions move to b
  EXPECT_EQ(a.Wait(), 0) << a.Stderr();
  ASSERT_EQ(read(kInputs), static_cast<size_t>(kInputs)) << b.Stderr();
  feed.join();
  ExpectEachOnce(alerts, got, kInputs);
  EXPECT_NE(a.Stderr().find("kafka partitions revoked"), std::string::npos) << a.Stderr();
  b.Signal(SIGTERM);
  EXPECT_EQ(b.Wait(), 0) << b.Stderr();
}

// Exactly-once through broker errors at commit: retriable ones (the group coordinator
// loading, a transaction still ending) are retried; one that makes the transaction abortable (a
// group authorization failure on the offsets) aborts it and begins it again with the same records,
// so no message runs twice and every alert is still there once. The aborted records stay in the
// log, hidden from read_committed.
TEST_F(TestBrokerTest, ExactlyOnceAnAbortedTransactionIsRedoneWithItsRecords) {
  if (real()) {
    GTEST_SKIP() << "needs the test broker's error injection";
  }
  const std::string telemetry = Topic("redo-in", 2);
  const std::string alerts_topic = Topic("redo-out", 2);
  constexpr int kInputs = 6000;
  testing::TempDir dir;
  WriteForwarder(dir, telemetry, alerts_topic, "redo", "redo-1");
  constexpr int16_t kTxnOffsetCommit = 28;
  constexpr int16_t kEndTxn = 26;
  std::jthread feed = Feed(telemetry, kInputs / 2, 20, std::chrono::milliseconds(100));
  testing::Process gnomon({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")}, dir.path());
  Consumer alerts(bootstrap(), alerts_topic, 2);
  std::vector<testing::KafkaRecord> got = alerts.Read(1000, std::chrono::seconds(30));
  ASSERT_EQ(got.size(), 1000u) << gnomon.Stderr();
  broker_.InjectError(kTxnOffsetCommit, 14, 3);  // COORDINATOR_LOAD_IN_PROGRESS: retried
  broker_.InjectError(kTxnOffsetCommit, 30, 2);  // GROUP_AUTHORIZATION_FAILED: abortable
  broker_.InjectError(kEndTxn, 51, 2);           // CONCURRENT_TRANSACTIONS: retried
  feed.join();
  feed = Feed(telemetry, kInputs / 2, 20, std::chrono::milliseconds(100));  // n repeats: fine
  std::vector<testing::KafkaRecord> rest =
      alerts.Read(kInputs - got.size(), std::chrono::seconds(60));
  got.insert(got.end(), rest.begin(), rest.end());
  feed.join();
  ASSERT_EQ(got.size(), static_cast<size_t>(kInputs)) << gnomon.Stderr();
  EXPECT_TRUE(alerts.Read(1, std::chrono::seconds(2)).empty()) << "an alert twice";
  std::map<int64_t, int> count;
  for (const testing::KafkaRecord& r : got) {
    count[FieldN(r.value)]++;
  }
  EXPECT_EQ(count.size(), static_cast<size_t>(kInputs / 2));
  for (const auto& [n, c] : count) {
    ASSERT_EQ(c, 2) << "input " << n << " (each n is sent twice)";
  }
  EXPECT_NE(gnomon.Stderr().find("kafka transaction could not commit; aborting it"),
            std::string::npos)
      << gnomon.Stderr();
  Consumer raw(bootstrap(), alerts_topic, 2, RD_KAFKA_OFFSET_BEGINNING, "read_uncommitted");
  EXPECT_GT(raw.Read(kInputs * 2, std::chrono::seconds(5)).size(), static_cast<size_t>(kInputs))
      << "the aborted transactions' records are in the log";
  gnomon.Signal(SIGTERM);
  EXPECT_EQ(gnomon.Wait(), 0) << gnomon.Stderr();
}

// Exactly-once through a transaction the broker aborted for its timeout: gnomon stalls
// (SIGSTOP) longer than transaction_timeout_ms but well within its group session, so it keeps
// its partitions while the broker aborts its open transaction and fences the producer's epoch.
// Resumed, it finds its transaction gone, takes a new producer epoch and redoes the transaction
// with its records: every input's alert is there exactly once, and the same instance goes on
// (before, it stayed fenced, processing nothing until restarted).
TEST_F(TestBrokerTest, ExactlyOnceATransactionTheBrokerTimedOutIsRedone) {
  const std::string telemetry = Topic("timeout-in", 2);
  const std::string alerts_topic = Topic("timeout-out", 2);
  constexpr int kInputs = 60000;
  session_ms_ = 30000;
  testing::TempDir dir;
  WriteForwarder(dir, telemetry, alerts_topic, "timeout", "timeout-1");
  {  // (the source's line in the config: its transactions time out after 2 s)
    std::string config = testing::ReadFile(dir.File("g.yaml"));
    config.replace(config.find("delivery: exactly_once,"), 23,
                   "delivery: exactly_once, transaction_timeout_ms: 2000,");
    dir.Write("g.yaml", config);
  }
  testing::Process gnomon({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")}, dir.path());
  ASSERT_TRUE(testing::WaitFor(
      [&] { return gnomon.Stderr().find("kafka partitions assigned") != std::string::npos; },
      std::chrono::seconds(30)))
      << gnomon.Stderr();
  // (Steady input, so a transaction is open on the broker whenever gnomon stops.)
  std::jthread feed = Feed(telemetry, kInputs, 20, std::chrono::milliseconds(50));
  Consumer alerts(bootstrap(), alerts_topic, 2);
  std::vector<testing::KafkaRecord> got = alerts.Read(1000, std::chrono::seconds(30));
  ASSERT_EQ(got.size(), 1000u) << gnomon.Stderr();
  gnomon.Signal(SIGSTOP);  // mid-transaction: the input flows and commits are 100 ms apart
  std::this_thread::sleep_for(std::chrono::milliseconds(4500));
  gnomon.Signal(SIGCONT);
  std::vector<testing::KafkaRecord> rest =
      alerts.Read(kInputs - got.size(), std::chrono::seconds(60));
  got.insert(got.end(), rest.begin(), rest.end());
  feed.join();
  ASSERT_EQ(got.size(), static_cast<size_t>(kInputs)) << gnomon.Stderr();
  ExpectEachOnce(alerts, got, kInputs);
  // Either librdkafka found the records it held past the timeout first (an abortable error:
  // the abort bumps the epoch, KIP-360, which the broker grants the producer a timeout
  // fenced) or the broker's refusal of the old epoch (fatal: a new producer is started).
  EXPECT_TRUE(gnomon.Stderr().find("kafka transaction timed out") != std::string::npos ||
              gnomon.Stderr().find("kafka transaction aborted and begun again") !=
                  std::string::npos)
      << gnomon.Stderr();
  EXPECT_EQ(gnomon.Stderr().find("kafka transactional producer fenced"), std::string::npos)
      << gnomon.Stderr();
  // Records that waited out the stall in the producer's queue failed the transaction, not
  // themselves: none was dead-lettered.
  EXPECT_EQ(testing::ReadLines(dir.File("data/dead-letter.jsonl")).size(), 0u);
  gnomon.Signal(SIGTERM);
  EXPECT_EQ(gnomon.Wait(), 0) << gnomon.Stderr();
}

// Exactly-once when a message is given up half-way: the broker refuses its dead letter (the
// producer may not write the dead-letter topic, for a while). Its other records may be in the
// transaction while its offset cannot commit, so the transaction is aborted and the partitions
// go back to their committed offsets: every finished message of it is processed again. Once
// the dead letters are taken, every input's alert is there once and the dead letters are
// exactly the failing inputs, once each.
TEST_F(TestBrokerTest, ExactlyOnceAMessageGivenUpHalfWayIsProcessedAgain) {
  if (real()) {
    GTEST_SKIP() << "needs the test broker's error injection";
  }
  const std::string telemetry = Topic("given-up-in", 2);
  const std::string alerts_topic = Topic("given-up-out", 2);
  const std::string dlq_topic = Topic("given-up-dlq", 1);
  constexpr int kInputs = 6000;
  auto fails = [](int64_t n) { return n % 500 == 13; };
  testing::TempDir dir;
  WriteFailingForwarder(dir, telemetry, alerts_topic, dlq_topic, "given-up", "given-up-1", 500);
  testing::Process gnomon({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")}, dir.path());
  ASSERT_TRUE(testing::WaitFor(
      [&] { return gnomon.Stderr().find("kafka partitions assigned") != std::string::npos; },
      std::chrono::seconds(30)))
      << gnomon.Stderr();
  constexpr int16_t kProduce = 0;
  broker_.InjectError(kProduce, 29, 3, dlq_topic);  // TOPIC_AUTHORIZATION_FAILED
  std::jthread feed = Feed(telemetry, kInputs, 20, std::chrono::milliseconds(100));
  int expected = 0;
  for (int i = 0; i < kInputs; ++i) {
    expected += fails(i) ? 0 : 1;
  }
  Consumer alerts(bootstrap(), alerts_topic, 2);
  std::vector<testing::KafkaRecord> got = alerts.Read(expected, std::chrono::seconds(60));
  feed.join();
  ASSERT_EQ(got.size(), static_cast<size_t>(expected)) << gnomon.Stderr();
  EXPECT_TRUE(alerts.Read(1, std::chrono::seconds(2)).empty()) << "an alert twice";
  std::set<int64_t> ns;
  for (const testing::KafkaRecord& r : got) {
    int64_t n = FieldN(r.value);
    EXPECT_FALSE(fails(n)) << r.value;
    ns.insert(n);
  }
  EXPECT_EQ(ns.size(), static_cast<size_t>(expected));
  Consumer dlq(bootstrap(), dlq_topic, 1);
  std::vector<testing::KafkaRecord> dead = dlq.Read(kInputs, std::chrono::seconds(3));
  ExpectDeadLetters(dead, fails, kInputs - expected);
  EXPECT_NE(gnomon.Stderr().find("a message was given up"), std::string::npos) << gnomon.Stderr();
  gnomon.Signal(SIGTERM);
  EXPECT_EQ(gnomon.Wait(), 0) << gnomon.Stderr();
}

// Exactly-once against a zombie: an instance stopped (SIGSTOP) past its session loses its
// partitions to another; when it resumes (SIGCONT) it may try to commit the transaction it had
// open, but the broker refuses offsets from an old generation of the group (KIP-447), so it
// aborts, rejoins, and every input's alert is still there exactly once.
TEST_F(TestBrokerTest, ExactlyOnceAZombieCommitsNothing) {
  const std::string telemetry = Topic("zombie-in", 4);
  const std::string alerts_topic = Topic("zombie-out", 2);
  constexpr int kInputs = 30000;
  testing::TempDir a_dir, b_dir;
  WriteForwarder(a_dir, telemetry, alerts_topic, "zombie", "zombie-a");
  WriteForwarder(b_dir, telemetry, alerts_topic, "zombie", "zombie-b");
  std::jthread feed = Feed(telemetry, kInputs, 20, std::chrono::milliseconds(300));
  Consumer alerts(bootstrap(), alerts_topic, 2);
  std::vector<testing::KafkaRecord> got;
  auto read = [&](size_t want) {
    std::vector<testing::KafkaRecord> more =
        alerts.Read(want - got.size(), std::chrono::seconds(60));
    got.insert(got.end(), more.begin(), more.end());
    return got.size();
  };
  testing::Process a({GNOMON_BINARY, "run", "-c", a_dir.File("g.yaml")}, a_dir.path());
  ASSERT_EQ(read(2000), 2000u) << a.Stderr();
  a.Signal(SIGSTOP);
  testing::Process b({GNOMON_BINARY, "run", "-c", b_dir.File("g.yaml")}, b_dir.path());
  // b gets partitions once a's session has run out (the group waits for a until then), and
  // makes progress with them; only then does a wake up.
  ASSERT_TRUE(testing::WaitFor(
      [&] { return b.Stderr().find("kafka partitions assigned") != std::string::npos; },
      std::chrono::seconds(30)))
      << b.Stderr();
  std::vector<testing::KafkaRecord> more = alerts.Read(kInputs, std::chrono::seconds(1));
  got.insert(got.end(), more.begin(), more.end());
  size_t target = got.size() + 2000;
  ASSERT_LT(target, static_cast<size_t>(kInputs)) << "the input should still be coming";
  ASSERT_EQ(read(target), target) << b.Stderr();
  a.Signal(SIGCONT);
  ASSERT_EQ(read(kInputs), static_cast<size_t>(kInputs)) << a.Stderr() << b.Stderr();
  feed.join();
  ExpectEachOnce(alerts, got, kInputs);
  // The zombie had a transaction open when it stopped (the input flows, commits are 100 ms
  // apart): on resuming it found its partitions lost and aborted it, or the broker refused it.
  bool lost = a.Stderr().find("kafka partitions lost") != std::string::npos;
  bool refused = a.Stderr().find("kafka transaction refused") != std::string::npos;
  EXPECT_TRUE(lost || refused) << a.Stderr();
  std::printf("the zombie %s\n", refused ? "had its offsets refused by the broker (KIP-447)"
                                         : "found its partitions lost and aborted");
  a.Signal(SIGTERM);
  b.Signal(SIGTERM);
  EXPECT_EQ(a.Wait(), 0) << a.Stderr();
  EXPECT_EQ(b.Wait(), 0) << b.Stderr();
}

// Fencing in a cluster (docs/cluster.md#fencing): an owner paused (SIGSTOP) past its session
// loses its partitions to the other instance, which takes the change log's partitions over
// (their transactional ids: the paused one's producers are fenced and what they left open
// aborted) before it restores them. When the paused one wakes up (SIGCONT) it may still
// process what it had fetched, but nothing it writes reaches the change log: every device's
// records there keep strictly rising versions, the writes the other made meanwhile stay, and
// every device ends at its last report.
TEST_F(TestBrokerTest, AClusterOwnerPausedPastItsSessionWritesNothingOnceItsPartitionsMoved) {
  constexpr int kPartitions = 4, kDevices = 20;
  const std::string name = Id("fence");
  const std::string changelog = Topic(name + ".changelog", kPartitions);
  Topic(name + ".ingress", kPartitions);
  Topic(name + ".members", 1);
  struct Instance {
    std::string id;
    int metrics = testing::FreePort(), api = testing::FreePort();
    std::unique_ptr<testing::Process> proc;
  };
  testing::TempDir dir;
  dir.Write("r.lua", R"(return rule { name = "report", from = "devices/+/telemetry",
    handle = function(msg, ctx) ctx.shadow:report(msg.payload) end })");
  auto start = [&](Instance& i) {
    dir.Write(i.id + ".yaml",
              "workers: 2\ndata_dir: data-" + i.id + "\nconnections:\n  bus: { type: kafka, " +
                  "brokers: \"" + bootstrap() +
                  "\", properties: { session.timeout.ms: 2000, heartbeat.interval.ms: 300 } }\n" +
                  "cluster: { name: " + name + ", partitions: " + std::to_string(kPartitions) +
                  ", instance_id: " + i.id + ", connection: bus }\n" +
                  "sources:\n  - { name: ingest, type: http, device: \"topic[2]\" }\n" +
                  "sinks:\n  - { name: out, type: file, path: out-" + i.id + ".jsonl }\n" +
                  "shadows: {}\nrules: [r.lua]\n" +
                  "metrics: { listen: \"127.0.0.1:" + std::to_string(i.metrics) + "\" }\n" +
                  "api: { listen: \"127.0.0.1:" + std::to_string(i.api) + "\" }\n");
    i.proc = std::make_unique<testing::Process>(
        std::vector<std::string>{GNOMON_BINARY, "run", "-c", dir.File(i.id + ".yaml")}, dir.path());
  };
  auto metric = [](const Instance& i, const std::string& series) {
    httplib::Client cli("127.0.0.1", i.metrics);
    cli.set_connection_timeout(1);
    cli.set_read_timeout(2);
    auto res = cli.Get("/metrics");
    size_t p = res ? res->body.find("\n" + series + " ") : std::string::npos;
    return p == std::string::npos ? -1.0 : std::atof(res->body.c_str() + p + series.size() + 2);
  };
  const std::string owned = "gnomon_cluster_partitions_owned";
  Instance a{"a"}, b{"b"};
  start(a);
  start(b);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return metric(a, owned) == kPartitions / 2 && metric(b, owned) == kPartitions / 2; },
      std::chrono::seconds(60)))
      << a.proc->Stderr() << b.proc->Stderr();

  // Reports for every device through b's HTTP ingest, one at a time (each is in Kafka when
  // answered, so each device's reports are in order), until told to stop.
  std::atomic<bool> stop{false};
  std::atomic<int> sent{0};
  std::jthread feed([&] {
    httplib::Client cli("127.0.0.1", b.api);
    cli.set_read_timeout(10);
    for (int i = 0; !stop.load(); ++i) {
      std::string path = "/v1/ingest/devices/d" + std::to_string(i % kDevices) + "/telemetry";
      std::string body = "{\"n\":" + std::to_string(i / kDevices) + "}";
      while (true) {
        auto res = cli.Post(path.c_str(), body, "application/json");
        if (res && res->status == 202) {
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      sent = i + 1;
    }
  });
  ASSERT_TRUE(testing::WaitFor([&] { return sent.load() > 2000; }, std::chrono::seconds(60)));
  a.proc->Signal(SIGSTOP);
  // b takes a's partitions over once a's session has run out: it fences the change log's
  // partitions, restores them and processes them; then desired writes for every device at b.
  ASSERT_TRUE(
      testing::WaitFor([&] { return metric(b, owned) == kPartitions; }, std::chrono::seconds(60)))
      << b.proc->Stderr();
  for (int d = 0; d < kDevices; ++d) {
    httplib::Client cli("127.0.0.1", b.api);
    auto res = cli.Post(("/v1/things/d" + std::to_string(d) + "/shadow").c_str(),
                        R"({"state":{"desired":{"mode":"b"}}})", "application/json");
    ASSERT_TRUE(res && res->status == 200) << (res ? res->body : "no answer") << b.proc->Stderr();
  }
  int at_resume = sent.load();
  ASSERT_TRUE(
      testing::WaitFor([&] { return sent.load() > at_resume + 1000; }, std::chrono::seconds(60)));
  // Desired writes at a from four clients, sent while it is still stopped: a serves them as it
  // wakes up, believing it still owns its devices until its consumer hears otherwise. Each
  // client writes its devices' `zombie` in rising order and notes the last one answered 200.
  std::array<int, kDevices> acked;
  acked.fill(-1);
  std::atomic<bool> stop_zombie{false};
  std::vector<std::jthread> zombie;
  for (int c = 0; c < 4; ++c) {
    zombie.emplace_back([&, c] {
      httplib::Client cli("127.0.0.1", a.api);
      cli.set_read_timeout(20);
      for (int k = 0; !stop_zombie.load(); ++k) {
        for (int d = c; d < kDevices; d += 4) {
          auto res = cli.Post(("/v1/things/d" + std::to_string(d) + "/shadow").c_str(),
                              "{\"state\":{\"desired\":{\"zombie\":" + std::to_string(k) + "}}}",
                              "application/json");
          if (res && res->status == 200) {
            acked[d] = k;
          }
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  a.proc->Signal(SIGCONT);
  // a learns it lost its partitions; the group settles (a may be given some back, restoring
  // them from the change log as b left them).
  ASSERT_TRUE(testing::WaitFor(
      [&] { return metric(a, owned) >= 0 && metric(a, owned) + metric(b, owned) == kPartitions; },
      std::chrono::seconds(60)));
  at_resume = sent.load();
  ASSERT_TRUE(
      testing::WaitFor([&] { return sent.load() > at_resume + 500; }, std::chrono::seconds(60)));
  stop_zombie = true;
  zombie.clear();
  stop = true;
  feed.join();
  const int total = sent.load();
  auto last_n = [&](int d) { return (total - 1 - d) / kDevices; };

  // Every device at its last report, with b's desired write, asked at either instance.
  auto shadow_is = [&](const Instance& i, int d, std::string* body) {
    httplib::Client cli("127.0.0.1", i.api);
    cli.set_read_timeout(15);
    auto res = cli.Get(("/v1/things/d" + std::to_string(d) + "/shadow").c_str());
    *body = res ? std::to_string(res->status) + " " + res->body : "no answer";
    if (!res || res->status != 200 ||
        res->body.find("\"n\":" + std::to_string(last_n(d)) + "}") == std::string::npos ||
        res->body.find("\"mode\":\"b\"") == std::string::npos) {
      return false;
    }
    // Every write answered 200 is there (a later one of the same client may have replaced it).
    if (acked[d] < 0) {
      return true;
    }
    simdjson::dom::parser parser;
    int64_t z = -1;
    (void)parser.parse(res->body).at_pointer("/state/desired/zombie").get_int64().get(z);
    *body += " (zombie write " + std::to_string(acked[d]) + " was answered 200)";
    return z >= acked[d];
  };
  std::string body;
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        for (int d = 0; d < kDevices; ++d) {
          if (!shadow_is(a, d, &body) || !shadow_is(b, d, &body)) {
            return false;
          }
        }
        return true;
      },
      std::chrono::seconds(90)))
      << body << a.proc->Stderr() << b.proc->Stderr();

  // The committed change log: each device's versions rise strictly, record after record (a
  // write of the fenced owner's landing after the new owner's would break that).
  Consumer log(bootstrap(), changelog, kPartitions);
  std::vector<testing::KafkaRecord> all;
  for (std::vector<testing::KafkaRecord> got;
       !(got = log.Read(100000, std::chrono::seconds(3))).empty();) {
    all.insert(all.end(), got.begin(), got.end());
  }
  std::map<std::string, int64_t> version;
  size_t records = 0;
  EXPECT_EQ(testing::VersionsThatDoNotRise(all, &version, &records), "");
  EXPECT_EQ(version.size(), static_cast<size_t>(kDevices));
  EXPECT_GT(records, static_cast<size_t>(total / 2));
  // a wrote (it had transactions open when it stopped) and was refused.
  EXPECT_GE(metric(a, "gnomon_kafka_partition_writers_fenced_total{sink=\"shadow-changelog\"}"), 1)
      << a.proc->Stderr();
  std::printf("%d reports, %zu change-log records\n", total, records);
  a.proc->Signal(SIGTERM);
  b.proc->Signal(SIGTERM);
  EXPECT_EQ(a.proc->Wait(), 0) << a.proc->Stderr();
  EXPECT_EQ(b.proc->Wait(), 0) << b.proc->Stderr();
}

// The tool: the same broker in its own process, as a developer runs it (and as a
// GNOMON_TEST_KAFKA target for this suite): it prints its address, kcat creates a topic by
// producing to it and reads it back, SIGTERM stops it cleanly.
TEST(TestBrokerToolTest, ServesUntilSigterm) {
  testing::Process tool({GNOMON_TEST_BROKER, "--partitions", "2"});
  ASSERT_TRUE(testing::WaitFor([&] { return tool.Stdout().find('\n') != std::string::npos; }))
      << tool.Stderr();
  std::string bootstrap = tool.Stdout().substr(0, tool.Stdout().find('\n'));
  ASSERT_EQ(bootstrap.rfind("127.0.0.1:", 0), 0u) << bootstrap;
  testing::TempDir dir;
  dir.Write("in.txt", "a:1\nb:2\nc:3\n");
  ASSERT_EQ(testing::RunCommand(
                {"kcat", "-b", bootstrap, "-t", "demo", "-P", "-K:", "-l", dir.File("in.txt")}),
            0);
  std::string out, err;
  ASSERT_EQ(
      testing::RunCommand(
          {"kcat", "-b", bootstrap, "-t", "demo", "-C", "-e", "-q", "-f", "%k=%s\n"}, &out, &err),
      0)
      << err;
  std::vector<std::string> lines;
  for (size_t at = 0, nl; (nl = out.find('\n', at)) != std::string::npos; at = nl + 1) {
    lines.push_back(out.substr(at, nl - at));
  }
  std::sort(lines.begin(), lines.end());
  EXPECT_EQ(lines, (std::vector<std::string>{"a=1", "b=2", "c=3"}));
  ASSERT_EQ(testing::RunCommand({"kcat", "-b", bootstrap, "-L", "-t", "demo"}, &out), 0);
  EXPECT_NE(out.find("topic \"demo\" with 2 partitions"), std::string::npos) << out;
  tool.Signal(SIGTERM);
  EXPECT_EQ(tool.Wait(), 0) << tool.Stderr();
}

// Raw requests: what librdkafka never sends.
class RawClient {
 public:
  explicit RawClient(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawClient() { ::close(fd_); }
  bool connected() const { return connected_; }
  // Sends a request (header v1) and returns the response's body after the correlation id;
  // nullopt when the broker closed the connection instead.
  std::optional<std::string> Call(int16_t key, int16_t version, const std::string& body) {
    std::string req;
    Put(req, key);
    Put(req, version);
    Put(req, int32_t{7});
    Put(req, int16_t{4});
    req += "test";
    req += body;
    std::string framed;
    Put(framed, static_cast<int32_t>(req.size()));
    framed += req;
    if (::send(fd_, framed.data(), framed.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(framed.size())) {
      return std::nullopt;
    }
    std::string size = Recv(4);
    if (size.size() != 4) {
      return std::nullopt;
    }
    int32_t n = (static_cast<uint8_t>(size[0]) << 24) | (static_cast<uint8_t>(size[1]) << 16) |
                (static_cast<uint8_t>(size[2]) << 8) | static_cast<uint8_t>(size[3]);
    std::string resp = Recv(static_cast<size_t>(n));
    if (resp.size() != static_cast<size_t>(n) || n < 4) {
      return std::nullopt;
    }
    return resp.substr(4);
  }
  template <typename T>
  static void Put(std::string& out, T v) {
    for (int i = sizeof(T) - 1; i >= 0; --i) {
      out.push_back(static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff));
    }
  }

 private:
  std::string Recv(size_t n) {
    std::string out(n, '\0');
    size_t got = 0;
    while (got < n) {
      ssize_t r = ::recv(fd_, out.data() + got, n - got, 0);
      if (r <= 0) {
        break;
      }
      got += static_cast<size_t>(r);
    }
    out.resize(got);
    return out;
  }
  int fd_;
  bool connected_ = false;
};

// A record batch v2 holding one record with `value` (no key), its CRC right or not.
std::string Batch(const std::string& value, bool good_crc) {
  std::string record;
  record.push_back(0);                                    // attributes
  record.push_back(0);                                    // timestamp delta (zigzag varint 0)
  record.push_back(0);                                    // offset delta
  record.push_back(1);                                    // key length -1 (zigzag)
  record.push_back(static_cast<char>(value.size() * 2));  // value length (zigzag, < 64)
  record += value;
  record.push_back(0);                                   // headers
  std::string body;                                      // from attributes on: what the CRC covers
  RawClient::Put(body, int16_t{0});                      // attributes
  RawClient::Put(body, int32_t{0});                      // last offset delta
  RawClient::Put(body, int64_t{1000});                   // base timestamp
  RawClient::Put(body, int64_t{1000});                   // max timestamp
  RawClient::Put(body, int64_t{-1});                     // producer id
  RawClient::Put(body, int16_t{-1});                     // producer epoch
  RawClient::Put(body, int32_t{-1});                     // base sequence
  RawClient::Put(body, int32_t{1});                      // records
  body.push_back(static_cast<char>(record.size() * 2));  // record length (zigzag, < 64)
  body += record;
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(body.data(), body.size());
  std::string batch;
  RawClient::Put(batch, int64_t{0});  // base offset
  RawClient::Put(batch, static_cast<int32_t>(4 + 1 + 4 + body.size()));
  RawClient::Put(batch, int32_t{0});  // partition leader epoch
  batch.push_back(2);                 // magic
  RawClient::Put(batch, static_cast<uint32_t>(good_crc ? crc.checksum() : crc.checksum() ^ 1));
  return batch + body;
}

// A Produce v3 request for partition 0 of `topic` with `records`.
std::string ProduceBody(const std::string& topic, const std::string& records) {
  std::string b;
  RawClient::Put(b, int16_t{-1});  // transactional id: null
  RawClient::Put(b, int16_t{1});   // acks
  RawClient::Put(b, int32_t{1000});
  RawClient::Put(b, int32_t{1});
  RawClient::Put(b, static_cast<int16_t>(topic.size()));
  b += topic;
  RawClient::Put(b, int32_t{1});
  RawClient::Put(b, int32_t{0});
  RawClient::Put(b, static_cast<int32_t>(records.size()));
  b += records;
  return b;
}

// The error code in a Produce v3 response with one topic and one partition.
int16_t ProduceError(const std::string& resp, const std::string& topic) {
  size_t at = 4 + 2 + topic.size() + 4 + 4;  // topics, name, partitions, index
  return static_cast<int16_t>((static_cast<uint8_t>(resp.at(at)) << 8) |
                              static_cast<uint8_t>(resp.at(at + 1)));
}

// A batch whose CRC does not match is refused (CORRUPT_MESSAGE) and nothing of it is kept; a
// good one is kept with the broker's offset; a request for an API not offered closes the
// connection, as Kafka does.
TEST(TestBrokerRawTest, BadBatchesAreRefusedAndUnknownApisClose) {
  KafkaTestBroker broker_({.port = 0, .partitions = 1});
  ASSERT_EQ(broker_.Start(), "");
  broker_.CreateTopic("raw", 1);
  RawClient c(broker_.port());
  ASSERT_TRUE(c.connected());
  auto bad = c.Call(0, 3, ProduceBody("raw", Batch("x", false)));
  ASSERT_TRUE(bad.has_value());
  EXPECT_EQ(ProduceError(*bad, "raw"), 2);
  EXPECT_TRUE(broker_.Batches("raw", 0).empty());
  auto good = c.Call(0, 3, ProduceBody("raw", Batch("hello", true)));
  ASSERT_TRUE(good.has_value());
  EXPECT_EQ(ProduceError(*good, "raw"), 0);
  ASSERT_EQ(broker_.Batches("raw", 0).size(), 1u);
  EXPECT_NE(broker_.Batches("raw", 0)[0].find("hello"), std::string::npos);
  EXPECT_FALSE(c.Call(29, 0, "").has_value()) << "DescribeAcls is not offered: closed";
  RawClient again(broker_.port());
  EXPECT_TRUE(again.Call(18, 0, "").has_value()) << "the broker serves on";
}

// InitProducerId v3/v4 (KIP-360, flexible encodings): a producer naming its current id and
// epoch gets the epoch bumped (how librdkafka recovers from an abortable error that needs one);
// naming an older epoch is refused as fenced (PRODUCER_FENCED from v4, INVALID_PRODUCER_EPOCH
// before), but for the epoch a transaction timeout fenced: that producer may recover, once.
TEST(TestBrokerRawTest, AnEpochBumpIsForTheCurrentProducerOrTheOneATimeoutFenced) {
  KafkaTestBroker broker_({.port = 0, .partitions = 1});
  ASSERT_EQ(broker_.Start(), "");
  broker_.CreateTopic("bump", 1);
  RawClient c(broker_.port());
  ASSERT_TRUE(c.connected());
  struct Answer {
    int16_t error;
    int64_t pid;
    int16_t epoch;
  };
  auto init = [&](int16_t version, int32_t timeout_ms, int64_t pid, int16_t epoch) {
    std::string b;
    b.push_back(0);  // request header v2: tagged fields
    b.push_back(2);  // transactional id "t" (compact: length + 1)
    b += "t";
    RawClient::Put(b, timeout_ms);
    if (version >= 3) {
      RawClient::Put(b, pid);
      RawClient::Put(b, epoch);
    }
    b.push_back(0);  // tagged fields
    std::optional<std::string> r = c.Call(22, version, b);
    EXPECT_TRUE(r.has_value() && r->size() == 1 + 4 + 2 + 8 + 2 + 1);
    if (!r.has_value() || r->size() < 17) {
      return Answer{-1, -1, -1};
    }
    auto big = [&](size_t at, int n) {
      uint64_t v = 0;
      for (int i = 0; i < n; ++i) {
        v = (v << 8) | static_cast<uint8_t>((*r)[at + static_cast<size_t>(i)]);
      }
      return v;
    };
    // (after the response header's tagged fields and throttle_time_ms)
    return Answer{static_cast<int16_t>(big(5, 2)), static_cast<int64_t>(big(7, 8)),
                  static_cast<int16_t>(big(15, 2))};
  };
  Answer first = init(4, 60000, -1, -1);
  ASSERT_EQ(first.error, 0);
  EXPECT_EQ(first.epoch, 0);
  Answer bumped = init(4, 60000, first.pid, 0);
  EXPECT_EQ(bumped.error, 0);
  EXPECT_EQ(bumped.pid, first.pid);
  EXPECT_EQ(bumped.epoch, 1);
  EXPECT_EQ(init(4, 60000, first.pid, 0).error, 90) << "an old epoch: PRODUCER_FENCED";
  EXPECT_EQ(init(3, 60000, first.pid, 0).error, 47) << "v3: INVALID_PRODUCER_EPOCH";
  EXPECT_EQ(init(4, 60000, first.pid + 1, 1).error, 90) << "another producer id";

  // A transaction left open past its timeout (200 ms) is aborted and its epoch (1) fenced;
  // that producer, naming epoch 1, gets the new epoch (2) without another bump, once.
  ASSERT_EQ(init(4, 200, first.pid, 1).epoch, 2);
  std::string add;
  RawClient::Put(add, int16_t{1});
  add += "t";
  RawClient::Put(add, first.pid);
  RawClient::Put(add, int16_t{2});
  RawClient::Put(add, int32_t{1});  // topics
  RawClient::Put(add, int16_t{4});
  add += "bump";
  RawClient::Put(add, int32_t{1});  // partitions
  RawClient::Put(add, int32_t{0});
  ASSERT_TRUE(c.Call(24, 0, add).has_value());  // AddPartitionsToTxn: the transaction is open
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  Answer recovered = init(4, 200, first.pid, 2);
  EXPECT_EQ(recovered.error, 0);
  EXPECT_EQ(recovered.epoch, 3) << "the timeout's bump";
  EXPECT_EQ(init(4, 200, first.pid, 2).error, 90) << "once";
}

}  // namespace
}  // namespace gnomon

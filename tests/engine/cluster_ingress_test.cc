// SPDX-License-Identifier: Apache-2.0
// ClusterIngress with a fake sink and engine: what a forwarded record carries, and that a
// message is acknowledged only once Kafka has its record or its dead letter is durable.
#include "cluster_ingress.h"

#include <gtest/gtest.h>

#include <vector>

#include "gnomon/core/partition.h"

namespace gnomon::engine {
namespace {

struct Acks {
  int acked = 0;
  int abandoned = 0;
};

class CountingAck final : public AckHandle {
 public:
  explicit CountingAck(Acks& a) : a_(a) {}
  void Ack() override { ++a_.acked; }
  void Abandon() override { ++a_.abandoned; }

 private:
  Acks& a_;
};

// Records how a delivery ended (its flags).
class Finished final : public DeliveryObserver {
 public:
  void OnDeliveryFinished(Delivery& d) override { flags.push_back(d.flags()); }
  std::vector<uint8_t> flags;
};

class KeepingSink final : public Sink {
 public:
  Status Start() override { return {}; }
  void Send(Record&& r) override { records.push_back(std::move(r)); }
  void Stop(Deadline) override {}
  std::vector<Record> records;
};

struct Rejected {
  Message m;
  std::unique_ptr<AckHandle> ack;
  std::string reason;
  std::string error;
};

class KeepingEngine final : public Ingest {
 public:
  bool Submit(Message&&, std::unique_ptr<AckHandle>) override {
    ADD_FAILURE() << "the ingress never hands messages to the workers";
    return false;
  }
  void Reject(Message&& m, std::unique_ptr<AckHandle> ack, std::string_view reason,
              std::string_view error) override {
    rejected.push_back({std::move(m), std::move(ack), std::string(reason), std::string(error)});
  }
  std::vector<Rejected> rejected;
};

class ClusterIngressTest : public ::testing::Test {
 protected:
  ClusterIngressTest() { ingress_.SetSink(&sink_); }

  void Submit(const std::string& device, const std::string& payload = "{\"t\":1}") {
    Message m;
    m.topic = "devices/" + device + "/telemetry";
    m.device = device;
    m.payload = payload;
    m.headers = {{"h", "v"}};
    m.source = &source_;
    m.ts_ms = 42;
    ASSERT_TRUE(ingress_.Submit(std::move(m), std::make_unique<CountingAck>(acks_)));
  }

  std::string source_ = "mqtt-in";
  MetricsRegistry metrics_;
  KeepingSink sink_;
  KeepingEngine engine_;
  ClusterIngress ingress_{engine_, "fleet.ingress", 12, {"mqtt-in"}, metrics_};
  Acks acks_;

  double Counted(const char* outcome) {
    return metrics_
        .GetCounter("gnomon_cluster_ingress_total", "",
                    {{"source", "mqtt-in"}, {"outcome", outcome}})
        ->value();
  }
};

TEST_F(ClusterIngressTest, ARecordIsKeyedByDeviceInItsPartitionWithTheTopicAndPayloadAsTheyCame) {
  Submit("sensor-17", std::string("\xff\x00raw", 5));
  ASSERT_EQ(sink_.records.size(), 1u);
  const Record& r = sink_.records[0];
  EXPECT_EQ(r.topic, "fleet.ingress");
  EXPECT_EQ(r.key, "sensor-17");
  EXPECT_EQ(r.partition, KafkaPartitionOf("sensor-17", 12));
  EXPECT_EQ(r.source_topic, "devices/sensor-17/telemetry");  // the gnomon-source-topic header
  EXPECT_EQ(r.payload, std::string("\xff\x00raw", 5));
  EXPECT_FALSE(r.json);
  ASSERT_EQ(r.headers.size(), 1u);
  EXPECT_EQ(r.headers[0].second, "v");
  EXPECT_EQ(r.source, &source_);
  EXPECT_EQ(r.ts_ms, 42);
  EXPECT_EQ(acks_.acked, 0);  // not before Kafka has it
  ingress_.Report(sink_.records[0], {});
  EXPECT_EQ(acks_.acked, 1);
  EXPECT_EQ(acks_.abandoned, 0);
  EXPECT_EQ(Counted("forwarded"), 1);
}

TEST_F(ClusterIngressTest, ARecordKafkaGaveUpOnIsDeadLetteredAndAckedOnceTheDeadLetterIsDurable) {
  Submit("d1");
  ingress_.Report(sink_.records[0], Unavailable("kafka delivery to fleet.ingress: timed out"));
  ASSERT_EQ(engine_.rejected.size(), 1u);
  Rejected& r = engine_.rejected[0];
  EXPECT_EQ(r.reason, "ingress");
  EXPECT_NE(r.error.find("timed out"), std::string::npos);
  EXPECT_EQ(r.m.topic, "devices/d1/telemetry");
  EXPECT_EQ(r.m.device, "d1");
  EXPECT_EQ(r.m.payload, "{\"t\":1}");
  EXPECT_EQ(*r.m.source, "mqtt-in");
  EXPECT_EQ(acks_.acked, 0);  // the dead letter is not durable yet
  r.ack->Ack();
  EXPECT_EQ(acks_.acked, 1);
  EXPECT_EQ(acks_.abandoned, 0);
  EXPECT_EQ(Counted("dead_lettered"), 1);
  EXPECT_EQ(Counted("forwarded"), 0);
}

TEST_F(ClusterIngressTest, ACancelledRecordOrALostDeadLetterAbandonsTheMessage) {
  Submit("d1");
  Submit("d2");
  ingress_.Report(sink_.records[0], Status(StatusCode::kCancelled, "kafka sink stopped"));
  EXPECT_EQ(acks_.abandoned, 1);
  ingress_.Report(sink_.records[1], Unavailable("fatal"));
  ASSERT_EQ(engine_.rejected.size(), 1u);
  engine_.rejected.clear();  // the engine dropped the dead letter (stopping) without acking
  EXPECT_EQ(acks_.abandoned, 2);
  EXPECT_EQ(acks_.acked, 0);
  EXPECT_EQ(Counted("cancelled"), 1);
}

// gnomon's own topics are refused from sources (a device must not forge a keyed window's
// event); gnomon's own events go through SubmitOwn, in their key's partition, and release the
// message they came from once Kafka has them (abandon it when cancelled).
TEST_F(ClusterIngressTest, OwnTopicsAreRefusedFromSourcesAndGnomonsOwnEventsReleaseTheirMessage) {
  Message forged;
  forged.topic = "$gnomon/rules/rooms/keyed";
  forged.device = "r1";
  forged.payload = R"({"window":"w","t":1,"v":1})";
  forged.source = &source_;
  ASSERT_TRUE(ingress_.Submit(std::move(forged), std::make_unique<CountingAck>(acks_)));
  EXPECT_TRUE(sink_.records.empty());
  ASSERT_EQ(engine_.rejected.size(), 1u);
  EXPECT_EQ(engine_.rejected[0].reason, "reserved_topic");
  EXPECT_NE(engine_.rejected[0].error.find("gnomon's own topics"), std::string::npos);

  Finished finished;
  for (bool cancelled : {false, true}) {
    auto* message = new Delivery(&finished, nullptr);
    message->Hold();  // (what RouteKeyedEvents takes for the event)
    Message event;
    event.topic = "$gnomon/rules/rooms/keyed";
    event.device = "r1";
    event.payload = R"({"window":"w","t":1,"v":1})";
    event.source = &source_;
    ingress_.SubmitOwn(std::move(event), message);
    ASSERT_FALSE(sink_.records.empty());
    Record& r = sink_.records.back();
    EXPECT_EQ(r.partition, KafkaPartitionOf("r1", 12));
    EXPECT_EQ(r.source_topic, "$gnomon/rules/rooms/keyed");
    message->Release();  // the message's processing hold: its event still holds it
    EXPECT_EQ(finished.flags.size(), cancelled ? 1u : 0u);
    ingress_.Report(r, cancelled ? Status(StatusCode::kCancelled, "stopping") : Status());
    ASSERT_EQ(finished.flags.size(), cancelled ? 2u : 1u);
    EXPECT_EQ((finished.flags.back() & Delivery::kAbandoned) != 0, cancelled);
  }
}

}  // namespace
}  // namespace gnomon::engine

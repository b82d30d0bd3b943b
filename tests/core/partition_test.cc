// SPDX-License-Identifier: Apache-2.0
// Devices are partitioned the way Kafka's producers partition keys: checked against librdkafka's
// own murmur2 partitioner and the Java client's published values.
#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>

#include <string>

#include "gnomon/core/partition.h"

namespace gnomon {
namespace {

TEST(KafkaPartitionTest, Murmur2MatchesTheJavaClientsValues) {
  // Kafka's UtilsTest.testMurmur2 (the Java producer's partitioner).
  EXPECT_EQ(static_cast<int32_t>(KafkaMurmur2("21")), -973932308);
  EXPECT_EQ(static_cast<int32_t>(KafkaMurmur2("foobar")), -790332482);
  EXPECT_EQ(static_cast<int32_t>(KafkaMurmur2("a-little-bit-long-string")), -985981536);
  EXPECT_EQ(static_cast<int32_t>(KafkaMurmur2("a-little-bit-longer-string")), -1486304829);
  EXPECT_EQ(static_cast<int32_t>(KafkaMurmur2("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8")),
            -58897971);
  EXPECT_EQ(static_cast<int32_t>(KafkaMurmur2("abc")), 479470107);
}

// (Out of the TSan run with the other librdkafka tests: scripts/test.)
TEST(KafkaPartitionLibrdkafkaTest, PartitionsAgreeWithLibrdkafkasMurmur2Partitioner) {
  char err[256];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  ASSERT_NE(rk, nullptr) << err;
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, "t", nullptr);
  for (int32_t partitions : {1, 2, 3, 7, 12, 64, 1000}) {
    for (int i = 0; i < 2000; ++i) {
      // Every length's tail (0-3 bytes), bytes above 0x7f, and an empty key.
      std::string key = i == 0 ? "" : "device-" + std::to_string(i * 7919);
      if (i % 5 == 0) {
        key += static_cast<char>(0xC0 + i % 64);
      }
      int32_t expected = rd_kafka_msg_partitioner_murmur2(rkt, key.data(), key.size(), partitions,
                                                         nullptr, nullptr);
      ASSERT_EQ(KafkaPartitionOf(key, partitions), expected)
          << "key '" << key << "', " << partitions << " partitions";
    }
  }
  rd_kafka_topic_destroy(rkt);
  rd_kafka_destroy(rk);
}

TEST(KafkaPartitionTest, EveryPartitionGetsDevices) {
  int counts[16] = {};
  for (int i = 0; i < 16000; ++i) {
    ++counts[KafkaPartitionOf("sensor-" + std::to_string(i), 16)];
  }
  for (int c : counts) {
    EXPECT_GT(c, 800);
    EXPECT_LT(c, 1200);
  }
}

}  // namespace
}  // namespace gnomon

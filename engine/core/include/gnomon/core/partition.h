// SPDX-License-Identifier: Apache-2.0
// Which Kafka partition a key belongs to, the way Kafka's default producer decides (murmur2).
#pragma once

#include <cstdint>
#include <string_view>

namespace gnomon {

// Kafka's murmur2 of `key` (the Java client's `Utils.murmur2`, librdkafka's `murmur2`
// partitioner): what a keyed record's partition is computed from.
uint32_t KafkaMurmur2(std::string_view key);

// The partition of `key` among `partitions` (> 0): `murmur2(key) & 0x7fffffff mod partitions`,
// so a producer outside gnomon keyed by device id lands where gnomon routes the device.
int32_t KafkaPartitionOf(std::string_view key, int32_t partitions);

}  // namespace gnomon

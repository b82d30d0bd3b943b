// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/core/registry.h"

namespace gnomon::connectors {

// Registers connection, source and sink type "kafka" (librdkafka).
void RegisterKafkaConnector(Registry& registry);

// Reads every record of `topic` (all partitions) from the beginning to where it ends now, in
// partition order; `value` is null for tombstones. For restoring state from a compacted topic.
// Returns how many records were read; a missing topic is an empty one. With `only`, just those
// partitions. With `stop`, gives up (kCancelled) once it returns true. With `positions`, a
// partition it names is read from that offset on (a tail: what came after an earlier read),
// and each partition read ends up there at the offset the next read starts from. The client
// is kept for the next read on the same thread and connection (one client per reading
// thread, not one per read).
Result<size_t> ReadTopicToEnd(const ConfigValue& connection, const std::string& topic,
                              const std::function<void(int32_t partition, std::string_view key,
                                                       const std::string* value)>& fn,
                              const std::vector<int32_t>* only = nullptr,
                              const std::function<bool()>& stop = nullptr,
                              std::map<int32_t, int64_t>* positions = nullptr);

// The clients ReadTopicToEnd has made so far (in all threads).
uint64_t TopicReadersMade();

// Reads `topic` (every partition it has when first found) from the beginning and follows it
// until `stop()` returns true (checked at least every 500 ms): `fn` for each record, `value`
// null for tombstones. A topic that does not exist yet is waited for. Errors only when the
// client cannot be made.
Status FollowTopic(const ConfigValue& connection, const std::string& topic,
                   const std::function<void(std::string_view key, const std::string* value)>& fn,
                   const std::function<bool()>& stop);

// The number of partitions `topic` has on the cluster of `connection`; 0 when it does not exist
// (it is not created by asking). kUnavailable when the cluster does not answer within
// `timeout_ms`.
Result<int32_t> KafkaTopicPartitions(const ConfigValue& connection, const std::string& topic,
                                     int timeout_ms = 15000);

}  // namespace gnomon::connectors

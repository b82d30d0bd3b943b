// SPDX-License-Identifier: Apache-2.0
// Record: one output record on its way to a sink; DeliveryReporter: how sinks report it.
#pragma once

#include <cstdint>
#include <string>

#include "gnomon/core/message.h"
#include "gnomon/core/status.h"

namespace gnomon {

// One output record on its way to a sink.
struct Record {
  std::string payload;      // JSON text, or raw bytes for string emits
  bool json = true;         // false: payload is raw bytes (a Lua string emit)
  bool null_value = false;  // no value at all (a Kafka tombstone); payload is ignored
  std::string key;          // record key (Kafka); device id unless the emit gives one
  std::string topic;        // destination topic (MQTT publish, Kafka override); empty: sink default
  Headers headers;
  int32_t partition = -1;  // Kafka: the record's partition; -1: the producer's partitioner
  int qos = -1;            // -1: the sink's default
  bool retain = false;

  // Provenance, for headers and dead letters.
  std::string device;
  std::string rule;
  std::string source_topic;
  const std::string* source = nullptr;
  int64_t ts_ms = 0;
  int attempts = 0;

  // Holds one Hold() of the originating message until the sink reports the record.
  Delivery* delivery = nullptr;
  // The engine's routing tag (which sink took the record); sinks leave it alone.
  int32_t route = -1;
};

// Implemented by the engine. Sinks report every record they took, exactly once.
class DeliveryReporter {
 public:
  virtual ~DeliveryReporter() = default;
  // ok: the record is durable at the destination. An error: the sink gave up on it (the engine
  // dead-letters it with the status as reason). kCancelled: shutdown before delivery (the
  // originating message is abandoned, not acknowledged).
  virtual void Report(Record& record, const Status& status) = 0;
};

}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
// Message: one unit of input; Delivery: tracks it until every effect it caused is durable.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace gnomon {

using Headers = std::vector<std::pair<std::string, std::string>>;

class Delivery;

// Told when a Delivery finishes. Implemented by the engine (accounting) and chained to the
// source's own acknowledgement.
class DeliveryObserver {
 public:
  virtual ~DeliveryObserver() = default;
  // Called exactly once per Delivery, on whichever thread released the last hold.
  virtual void OnDeliveryFinished(Delivery& d) = 0;
};

// Source-specific acknowledgement (MQTT: none possible after PUBACK; Kafka: offset commit).
class AckHandle {
 public:
  virtual ~AckHandle() = default;
  // Every effect of the message is durable (or dead-lettered durably).
  virtual void Ack() = 0;
  // What the Delivery calls to acknowledge, with its flags (Delivery::Flag); the default is
  // Ack(). A handle that answers a client overrides it to tell "done" from "dead-lettered".
  virtual void Acknowledge(uint8_t /*flags*/) { Ack(); }
  // The message could not be completed (shutdown mid-flight); the source may redeliver.
  virtual void Abandon() {}
  // Where the message is kept at its source, for dead letters and logs (Kafka:
  // "topic[partition]@offset"); empty when the source keeps no position.
  virtual std::string Origin() const { return {}; }
  // Acknowledgements that complete inside one transaction share a scope (the Kafka source
  // running exactly-once: its transaction). Null: none.
  virtual const void* Scope() const { return nullptr; }
};

// Counts the outstanding effects of one source message. Starts with one hold (the processing
// itself). Thread-safe. Deletes itself after the last Release().
class Delivery {
 public:
  // kUnlogged: a change-log record of the message's writes (cluster) was refused; the message
  // is dead-lettered, and its writes are in this instance's store but not in the change log.
  enum Flag : uint8_t { kDeadLettered = 1, kAbandoned = 2, kUnmatched = 4, kUnlogged = 8 };

  Delivery(DeliveryObserver* observer, AckHandle* ack) : observer_(observer), ack_(ack) {}

  void Hold(int n = 1) { pending_.fetch_add(n, std::memory_order_relaxed); }
  void Mark(Flag f) { flags_.fetch_or(f, std::memory_order_relaxed); }
  void Release() {
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      Finish();
    }
  }

  uint8_t flags() const { return flags_.load(std::memory_order_relaxed); }
  AckHandle* ack() const { return ack_; }

 private:
  ~Delivery() = default;
  void Finish();

  std::atomic<int> pending_{1};
  std::atomic<uint8_t> flags_{0};
  DeliveryObserver* observer_;
  AckHandle* ack_;  // owned: deleted when the delivery finishes
};

struct Message {
  std::string topic;
  std::string device;
  std::string payload;
  std::string key;  // Kafka key or empty
  Headers headers;
  int64_t ts_ms = 0;
  const std::string* source = nullptr;  // name owned by the source, outlives the message
  Delivery* delivery = nullptr;         // owned by itself; one hold belongs to this message
};

}  // namespace gnomon

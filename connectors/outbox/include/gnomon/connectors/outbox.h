// SPDX-License-Identifier: Apache-2.0
// The delivery machinery of sinks whose destination can be slow or down (webhooks, SQL): a
// durable per-sink outbox in data_dir, in-order lanes by device, batching, retries with
// backoff, and dead letters when a record cannot be delivered or the outbox is over its limits.
//
// A sink is an OutboxSink around a Destination. With `durable` (the default) a record is
// reported to the engine once it is committed to the outbox (so its source message can be
// acknowledged) and deleted from the outbox once the destination has it; a restart resumes
// delivery of whatever is left. Without `durable` records wait in memory and are reported when
// the destination has them.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "gnomon/core/config.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/record.h"
#include "gnomon/core/sink.h"

namespace gnomon::connectors {

struct OutboxConfig {
  bool durable = true;
  int64_t max_records = 1'000'000;          // over this, new records are dead-lettered
  int64_t max_bytes = int64_t{1} << 30;     // payload bytes held
  int64_t max_age_ms = 7 * 24 * 3600 * 1000LL;  // older records are dead-lettered, not sent
  int lanes = 4;              // batches in flight at once; a device always uses the same lane
  int max_batch = 1;          // records per delivery
  int64_t max_batch_bytes = 1 << 20;
  int linger_ms = 0;          // how long a lane waits for its batch to fill
  int max_attempts = 8;       // 0: retry for ever (until max_age)
  int64_t initial_backoff_ms = 200;
  int64_t max_backoff_ms = 30000;
  int memory_window = 20000;  // records held in memory; the rest wait on disk
};

// Reads the `outbox`, `retry`, `batch` and `concurrency` keys of a sink entry (see
// schemas/sinks/http.json) over `defaults`.
OutboxConfig ParseOutboxConfig(const ConfigValue& cfg, OutboxConfig defaults);

// One record in the outbox.
struct OutboxEntry {
  uint64_t seq = 0;  // outbox order (0 without durability)
  int64_t enqueued_ms = 0;
  int attempts = 0;
  Record record;
};

// What delivering one batch came to.
struct BatchResult {
  enum Kind { kDelivered, kRetry, kFailed };
  Kind kind = kDelivered;
  Status status;                 // why, for kRetry and kFailed
  int64_t retry_after_ms = -1;   // the destination's own wish (Retry-After); else backoff
  // With kDelivered: records the destination refused one by one (index into the batch, why).
  // They are dead-lettered; the rest of the batch is delivered.
  std::vector<std::pair<size_t, Status>> rejected;

  static BatchResult Delivered() { return {}; }
  static BatchResult Retry(Status s, int64_t after_ms = -1) {
    BatchResult r;
    r.kind = kRetry;
    r.status = std::move(s);
    r.retry_after_ms = after_ms;
    return r;
  }
  static BatchResult Failed(Status s) {
    BatchResult r;
    r.kind = kFailed;
    r.status = std::move(s);
    return r;
  }
};

// Where records go. All calls come from the sink's one delivery thread.
class Destination {
 public:
  using Done = std::function<void(BatchResult)>;
  virtual ~Destination() = default;
  // Starts delivering `batch` (records of one lane, in order). `done` is called exactly once,
  // inline or from a later Poll().
  virtual void Deliver(std::span<OutboxEntry* const> batch, Done done) = 0;
  // Makes progress on deliveries for up to `timeout`; returns early after Wakeup().
  virtual void Poll(std::chrono::milliseconds timeout) = 0;
  // Thread-safe: makes a Poll() in progress return.
  virtual void Wakeup() = 0;
  // Whether `b` may share a batch with `a` (e.g. the same rendered URL).
  virtual bool Batchable(const Record& a, const Record& b) const { return true; }
};

// A Destination whose Deliver() finishes inline: Poll() just waits for Wakeup().
class SyncDestination : public Destination {
 public:
  void Poll(std::chrono::milliseconds timeout) override;
  void Wakeup() override;

 private:
  Mutex mu_;
  std::condition_variable cv_;
  bool woken_ GNOMON_GUARDED_BY(mu_) = false;
};

std::unique_ptr<Sink> NewOutboxSink(OutboxConfig config, std::unique_ptr<Destination> dest,
                                    PluginContext& ctx);

}  // namespace gnomon::connectors

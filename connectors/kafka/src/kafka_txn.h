// SPDX-License-Identifier: Apache-2.0
// Exactly-once (`delivery: exactly_once` on a Kafka source): one transactional producer per
// connection, shared by that source and the Kafka sinks of its connection (the shadow change
// log and a Kafka dead-letter sink included).
//
// The source runs the transactions. Its messages' records go into the open transaction; every
// transaction_ms (or transaction_messages) it stops taking messages, waits until all it handed
// out are finished, and commits the transaction together with the consumed offsets
// (send_offsets_to_transaction with the group's metadata). Output and offsets become visible
// together or not at all.
//
// A record caused by one of the source's messages (its AckHandle's Scope() is this producer) is
// reported delivered once the broker holds it in the open transaction: the message's offset
// commits in the same transaction, so a crash before the commit replays the message and cannot
// lose the record. Any other record (a shadow change made over REST, say) is reported only when
// its transaction has committed. The open transaction's records are kept until it commits: one
// the broker makes us abort is begun again with the same records, so an abortable error makes
// no message run twice. A fenced producer (another instance took the transactional id) cancels
// what it holds: those messages are left to the new owner.
#pragma once

#include <librdkafka/rdkafka.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gnomon/core/metrics.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/record.h"
#include "gnomon/core/sink.h"
#include "kafka_common.h"

namespace gnomon::connectors::kafka {

class TxnProducer {
 public:
  TxnProducer(DeliveryReporter& reporter, MetricsRegistry& metrics);
  ~TxnProducer();
  TxnProducer(const TxnProducer&) = delete;
  TxnProducer& operator=(const TxnProducer&) = delete;

  // The source: creates the producer (`transactional_id`), fences any earlier instance with the
  // same id, and opens the first transaction. `finish` is the source's last step (commit or
  // abort), run once by the first Finish().
  Status Start(const ClientSettings& settings, const std::string& transactional_id,
               int64_t transaction_timeout_ms, const std::string& source,
               std::function<void(Deadline)> finish);
  // Before Start: a transaction the broker timed out fences this producer like another
  // instance taking its transactional id would, instead of renewing it (a new epoch for the
  // same id). For ids that move between instances (a cluster's change-log partitions), where
  // renewing could fence the id's new holder.
  void NoRenewal() { renew_ = false; }
  // Started, not fenced and not closed: the connection's sinks send through Produce.
  bool Active() const { return active_.load(std::memory_order_acquire); }
  // A sink: `r` (topic set) into the open transaction; the producer owns it. False (and `r`
  // untouched) when not active: the sink sends it its own way; but a record of the source's
  // messages is then reported cancelled (true), never sent outside the transactions.
  bool Produce(std::unique_ptr<Record>& r);
  // `r` was caused by one of the source's messages (its ack's Scope() is this producer).
  bool Scopes(const Record& r) const;
  // The open transaction hit an error that needs an abort: the source calls Abort(false).
  bool NeedsAbort() const { return needs_abort_.load(std::memory_order_acquire); }
  // Asks librdkafka whether the open transaction failed with no record told (a partition's
  // sequence that needs an epoch bump keeps its records queued, reporting nothing): then
  // NeedsAbort() and true. For the source when its messages stop finishing.
  bool CheckAbortable();

  // kLost: the group has a newer generation without this member (it stalled past its session,
  // a zombie): the broker refused its offsets, the transaction was aborted and the source's
  // records dropped; their partitions belong to another member now.
  enum class Outcome { kCommitted, kRedone, kFenced, kLost, kGaveUp };
  using GiveUp = std::function<bool()>;
  // The source, with every message it handed out finished: commits the open transaction with
  // `offsets` (may be empty) and begins the next. Retriable errors are retried and a
  // transaction that must be aborted is begun again with its records, until it commits, the
  // producer is fenced or `give_up()`.
  Outcome Commit(const rd_kafka_topic_partition_list_t* offsets,
                 const rd_kafka_consumer_group_metadata_t* group, const GiveUp& give_up);
  // Aborts the open transaction and begins it again with its records. With `drop_scoped`, the
  // records of the source's messages are dropped instead (their partitions are gone, or a
  // message was given up: they are processed again), the others begun again.
  Outcome Abort(bool drop_scoped, const GiveUp& give_up);
  // Runs the source's finish step once (sinks call it as they stop, the source as it goes).
  void Finish(Deadline deadline);
  // No more transactions: what is still held is cancelled, the producer destroyed.
  void Close();
  // Records in the open transaction.
  size_t Open() const;

 private:
  struct Held {
    std::unique_ptr<Record> record;
    bool scoped = false;    // caused by a message of the source
    bool reported = false;  // its Report() was made
    bool failed = false;    // the broker refused this record: reported as failed, not redone
  };
  struct Send {  // one produce of a held record, the delivery report's opaque
    Held* held;
    uint64_t txn;
  };
  Status Connect() GNOMON_REQUIRES(rk_mu_);
  rd_kafka_resp_err_t ProduceHeld(Held* h) GNOMON_REQUIRES_SHARED(txn_mu_);
  // The open transaction's first record is older than the transaction timeout: a fatal
  // "fenced" error is then the broker having aborted it for its timeout (and bumped the
  // producer's epoch), not another instance with our transactional id, whose fencing comes
  // within a transaction's usual lifetime.
  bool TimedOut() const;
  // After a timeout: the producer is replaced by a new one (same transactional id, a new epoch)
  // with a transaction begun; false if that failed. The caller redoes the held records.
  bool Renew(const std::string& why) GNOMON_REQUIRES(txn_mu_);
  void OnDelivery(const rd_kafka_message_t* m);
  void OnError(rd_kafka_resp_err_t err, const char* reason);
  // Aborts and begins again; records of the source are dropped with `drop_scoped`. Reports to
  // make once txn_mu_ is released go to `reports`.
  using Reports = std::vector<std::pair<std::unique_ptr<Held>, Status>>;
  Outcome AbortAndRedo(bool drop_scoped, const GiveUp& give_up, Reports& reports)
      GNOMON_REQUIRES(txn_mu_);
  void MakeReports(Reports& reports);
  // Runs `call` until it succeeds, is fenced, needs an abort or give_up(); null on success.
  rd_kafka_error_t* Retry(const std::function<rd_kafka_error_t*()>& call, const GiveUp& give_up);
  void Fence(const std::string& why, Reports& reports) GNOMON_REQUIRES(txn_mu_);
  // Moves every held record out: the unreported ones into `reports` with `status`.
  void ReapHeld(const Status& status, Reports& reports);
  // Makes the reports the delivery reports queued (failures: a dead letter they cause may
  // produce through this producer, so never from inside librdkafka). Poller thread.
  void ReportFailures();

  DeliveryReporter& reporter_;
  std::string source_;
  std::string transactional_id_;
  ClientSettings settings_;
  int64_t timeout_ms_ = 0;
  bool renew_ = true;
  std::function<void(Deadline)> finish_ GNOMON_GUARDED_BY(mu_);
  std::atomic<bool> active_{false};
  std::atomic<bool> needs_abort_{false};
  std::atomic<uint64_t> txn_{0};  // which transaction is open (for stale delivery reports)
  // Produce holds it shared; commit, abort and close exclusively (librdkafka takes no record
  // while a transaction ends).
  SharedMutex txn_mu_;
  // Replacing the producer (Renew, Close) holds it, and so does the poller around
  // rd_kafka_poll; others use rk_ under txn_mu_, which Renew holds exclusively.
  Mutex rk_mu_;
  rd_kafka_t* rk_ = nullptr;
  std::jthread poller_;
  mutable Mutex mu_;
  std::vector<std::unique_ptr<Held>> held_ GNOMON_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Held>> retired_ GNOMON_GUARDED_BY(mu_);  // freed a commit later
  bool finished_ GNOMON_GUARDED_BY(mu_) = false;
  // When the open transaction got its first record ({} while it has none).
  std::chrono::steady_clock::time_point first_record_ GNOMON_GUARDED_BY(mu_);
  // Records the broker refused, to be reported failed by the poller thread.
  std::vector<std::pair<std::unique_ptr<Held>, Status>> failures_ GNOMON_GUARDED_BY(mu_);
  FailedTopics failed_topics_;  // refreshed by the poller
  MetricsRegistry& metrics_;
  Counter* committed_ = nullptr;
  Counter* aborted_ = nullptr;
  Counter* fenced_ = nullptr;
  Counter* timed_out_ = nullptr;
  Counter* record_failures_ = nullptr;
  Histogram* records_ = nullptr;
  Histogram* commit_seconds_ = nullptr;
};

}  // namespace gnomon::connectors::kafka

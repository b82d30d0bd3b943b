// SPDX-License-Identifier: Apache-2.0
#include "kafka_txn.h"

#include <fmt/format.h>
#include <pthread.h>

#include <algorithm>
#include <chrono>

#include "gnomon/core/log.h"
#include "gnomon/core/message.h"

namespace gnomon::connectors::kafka {
namespace {

constexpr int kCallTimeoutMs = 10000;

// A delivery error that is the record's own (redoing the transaction would fail it again), as
// against one of the transaction (it is aborted and begun again with the record).
bool RecordError(rd_kafka_resp_err_t err) {
  switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
      return true;
    // (A record that timed out waiting to be sent, _MSG_TIMED_OUT, is not one: the
    // transaction could not finish in time — a stall, the broker away — and is redone.)
    default:
      return false;
  }
}

std::string Text(const rd_kafka_error_t* e) {
  return fmt::format("{}: {}", rd_kafka_error_name(e), rd_kafka_error_string(e));
}

}  // namespace

TxnProducer::TxnProducer(DeliveryReporter& reporter, MetricsRegistry& metrics)
    : reporter_(reporter), metrics_(metrics) {}

TxnProducer::~TxnProducer() { Close(); }

Status TxnProducer::Start(const ClientSettings& settings, const std::string& transactional_id,
                          int64_t transaction_timeout_ms, const std::string& source,
                          std::function<void(Deadline)> finish) {
  source_ = source;
  transactional_id_ = transactional_id;
  {
    MutexLock lock(mu_);
    finish_ = std::move(finish);
  }
  auto outcome = [&](const char* o) {
    return metrics_.GetCounter("gnomon_kafka_transactions_total",
                               "Kafka transactions by outcome (exactly-once sources)",
                               {{"source", source_}, {"outcome", o}});
  };
  committed_ = outcome("committed");
  aborted_ = outcome("aborted");
  fenced_ = outcome("fenced");
  record_failures_ = metrics_.GetCounter(
      "gnomon_kafka_transaction_records_lost_total",
      "Records refused by the broker when an aborted transaction was redone, after they were "
      "reported delivered (logged with their rule and device)",
      {{"source", source_}});
  records_ = metrics_.GetHistogram("gnomon_kafka_transaction_records",
                                   "Records per committed Kafka transaction", {{"source", source_}},
                                   {1, 10, 100, 1000, 10000, 100000});
  commit_seconds_ = metrics_.GetHistogram(
      "gnomon_kafka_transaction_commit_seconds",
      "Time to commit a Kafka transaction (sending the offsets and committing)",
      {{"source", source_}});
  timed_out_ = outcome("timed_out");
  settings_ = settings;
  timeout_ms_ = transaction_timeout_ms;
  poller_ = std::jthread([this](const std::stop_token& st) {
    pthread_setname_np(pthread_self(), "gnomon-kafka-t");
    while (!st.stop_requested()) {
      {
        MutexLock lock(rk_mu_);
        if (rk_ != nullptr) {
          rd_kafka_poll(rk_, 50);
          failed_topics_.Refresh(rk_, {"source", source_});
        }
      }
      ReportFailures();
    }
  });
  {
    MutexLock lock(rk_mu_);
    GNOMON_RETURN_IF_ERROR(Connect());
  }
  txn_.store(1, std::memory_order_release);
  active_.store(true, std::memory_order_release);
  log::Info("kafka transactions started",
            {{"source", source_}, {"transactional_id", transactional_id_}});
  return {};
}

// A new producer with the same transactional id, its first transaction begun.
Status TxnProducer::Connect() {
  GNOMON_ASSIGN_OR_RETURN(
      rd_kafka_conf_t * conf,
      MakeConf(settings_, {{"transactional.id", transactional_id_},
                           {"enable.idempotence", "true"},
                           {"transaction.timeout.ms", std::to_string(timeout_ms_)},
                           {"client.id", "gnomon-" + source_ + "-txn"}}));
  rd_kafka_conf_set_opaque(conf, this);
  rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* m, void* self) {
    static_cast<TxnProducer*>(self)->OnDelivery(m);
  });
  rd_kafka_conf_set_error_cb(conf, [](rd_kafka_t*, int err, const char* reason, void* self) {
    static_cast<TxnProducer*>(self)->OnError(static_cast<rd_kafka_resp_err_t>(err), reason);
  });
  char err[512];
  rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (rk_ == nullptr) {
    rd_kafka_conf_destroy(conf);
    return Unavailable(fmt::format("kafka source {}: transactional producer: {}", source_, err));
  }
  // Fences an earlier producer with this id and aborts what it left open.
  if (rd_kafka_error_t* e = rd_kafka_init_transactions(rk_, 30000); e != nullptr) {
    std::string text = Text(e);
    rd_kafka_error_destroy(e);
    return Unavailable(
        fmt::format("kafka source {}: initialising transactions (transactional id {}): {}", source_,
                    transactional_id_, text));
  }
  if (rd_kafka_error_t* e = rd_kafka_begin_transaction(rk_); e != nullptr) {
    std::string text = Text(e);
    rd_kafka_error_destroy(e);
    return Unavailable(fmt::format("kafka source {}: beginning a transaction: {}", source_, text));
  }
  return {};
}

rd_kafka_resp_err_t TxnProducer::ProduceHeld(Held* h) {
  const Record& r = *h->record;
  auto* send = new Send{h, txn_.load(std::memory_order_acquire)};
  rd_kafka_headers_t* headers = RecordHeaders(r);
  while (true) {
    rd_kafka_resp_err_t err = rd_kafka_producev(
        rk_, RD_KAFKA_V_TOPIC(r.topic.c_str()),
        RD_KAFKA_V_PARTITION(r.partition >= 0 ? r.partition : RD_KAFKA_PARTITION_UA),
        RD_KAFKA_V_VALUE(r.null_value ? nullptr : const_cast<char*>(r.payload.data()),
                         r.null_value ? 0 : r.payload.size()),
        RD_KAFKA_V_KEY(r.key.data(), r.key.size()), RD_KAFKA_V_HEADERS(headers),
        RD_KAFKA_V_OPAQUE(send), RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      return err;  // the producer owns the headers now
    }
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && Active() &&
        rd_kafka_fatal_error(rk_, nullptr, 0) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the poller makes room
      continue;
    }
    rd_kafka_headers_destroy(headers);
    delete send;
    return err;
  }
}

bool TxnProducer::Scopes(const Record& r) const {
  return r.delivery != nullptr && r.delivery->ack() != nullptr &&
         r.delivery->ack()->Scope() == this;
}

bool TxnProducer::Produce(std::unique_ptr<Record>& r) {
  std::unique_ptr<Held> refused;
  Status why;
  {
    ReaderLock lock(txn_mu_);
    if (!Active()) {
      if (!Scopes(*r)) {
        return false;
      }
      // Fenced or closed: its message is left to the partition's next owner (sent outside
      // the transactions, its record would be there twice).
      refused = std::make_unique<Held>();
      refused->record = std::move(r);
      why = Cancelled("the Kafka transactions ended before the record was sent");
    } else {
      auto h = std::make_unique<Held>();
      h->scoped = Scopes(*r);
      h->record = std::move(r);
      Held* held = h.get();
      {
        MutexLock l(mu_);
        if (held_.empty()) {
          first_record_ = std::chrono::steady_clock::now();
        }
        held_.push_back(std::move(h));
      }
      rd_kafka_resp_err_t err = ProduceHeld(held);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        return true;
      }
      if (!RecordError(err) && err != RD_KAFKA_RESP_ERR__INVALID_ARG) {
        // The transaction cannot take records now (it needs an abort): the redo produces it.
        needs_abort_.store(true, std::memory_order_release);
        return true;
      }
      failed_topics_.Note(held->record->topic, err);
      MutexLock l(mu_);
      auto it =
          std::find_if(held_.begin(), held_.end(), [&](const auto& p) { return p.get() == held; });
      refused = std::move(*it);
      held_.erase(it);
      why = InvalidArgument(
          fmt::format("kafka produce to {}: {}", refused->record->topic, rd_kafka_err2str(err)));
    }
  }
  reporter_.Report(*refused->record, why);
  return true;
}

void TxnProducer::OnDelivery(const rd_kafka_message_t* m) {
  auto* send = static_cast<Send*>(m->_private);
  Held* h = send->held;
  bool stale = send->txn != txn_.load(std::memory_order_acquire);
  delete send;
  if (stale) {
    return;  // a report of an aborted transaction's record (it was produced again since)
  }
  if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    bool report = false;
    {
      MutexLock lock(mu_);
      if (h->scoped && !h->reported && !h->failed) {
        h->reported = report = true;
      }
    }
    if (report) {
      // Its message's offset commits with this transaction: the record is as durable as
      // the message (both or neither).
      reporter_.Report(*h->record, {});
      h->record->delivery = nullptr;
    }
    return;
  }
  if (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE || m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT) {
    return;  // the transaction is being aborted; the redo produces it again
  }
  needs_abort_.store(true, std::memory_order_release);  // a failed record fails its transaction
  if (!RecordError(m->err)) {
    return;  // the transaction's error, not the record's: redone with it
  }
  failed_topics_.Note(rd_kafka_topic_name(m->rkt), m->err);
  Status st = Unavailable(fmt::format("kafka delivery to {}: {}", rd_kafka_topic_name(m->rkt),
                                      rd_kafka_err2str(m->err)));
  MutexLock lock(mu_);
  auto it = std::find_if(held_.begin(), held_.end(), [&](const auto& p) { return p.get() == h; });
  if (it == held_.end()) {
    return;
  }
  h->failed = true;
  if (h->reported) {
    record_failures_->Inc();
    log::Error(
        "a record of a redone Kafka transaction was refused after it was reported "
        "delivered; it is lost",
        {{"source", source_},
         {"rule", h->record->rule},
         {"device", h->record->device},
         {"error", st.message()}});
    retired_.push_back(std::move(*it));
  } else {
    failures_.emplace_back(std::move(*it), std::move(st));
  }
  held_.erase(it);
}

void TxnProducer::ReportFailures() {
  std::vector<std::pair<std::unique_ptr<Held>, Status>> failures;
  {
    MutexLock lock(mu_);
    failures.swap(failures_);
  }
  MakeReports(failures);
}

void TxnProducer::MakeReports(Reports& reports) {
  for (auto& [h, st] : reports) {
    reporter_.Report(*h->record, st);
  }
  reports.clear();
}

void TxnProducer::OnError(rd_kafka_resp_err_t err, const char* reason) {
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    // Fenced (or another fatal error): the records waiting in the producer get no delivery
    // report. The source's next step (an abort) finds the producer fenced and cancels them.
    needs_abort_.store(true, std::memory_order_release);
  }
  static log::RateLimiter limiter(5);
  if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
    log::Warn("kafka transactional producer error",
              {{"source", source_},
               {"error", rd_kafka_err2name(err)},
               {"reason", reason},
               {"suppressed_before", std::to_string(suppressed)}});
  }
}

rd_kafka_error_t* TxnProducer::Retry(const std::function<rd_kafka_error_t*()>& call,
                                     const GiveUp& give_up) {
  auto backoff = std::chrono::milliseconds(50);
  while (true) {
    rd_kafka_error_t* e = call();
    if (e == nullptr || !rd_kafka_error_is_retriable(e) || give_up()) {
      return e;
    }
    static log::RateLimiter limiter(2);
    if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
      log::Warn("kafka transaction call failed; retrying",
                {{"source", source_},
                 {"error", Text(e)},
                 {"suppressed_before", std::to_string(suppressed)}});
    }
    rd_kafka_error_destroy(e);
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
  }
}

TxnProducer::Outcome TxnProducer::Commit(const rd_kafka_topic_partition_list_t* offsets,
                                         const rd_kafka_consumer_group_metadata_t* group,
                                         const GiveUp& give_up) {
  Reports reports;
  Outcome outcome = Outcome::kGaveUp;
  {
    WriterLock lock(txn_mu_);
    while (Active()) {
      if (NeedsAbort()) {
        if (Outcome o = AbortAndRedo(false, give_up, reports); o != Outcome::kRedone) {
          outcome = o;
          break;
        }
      }
      auto start = std::chrono::steady_clock::now();
      rd_kafka_error_t* e = nullptr;
      if (offsets != nullptr && offsets->cnt > 0) {
        e = Retry(
            [&] {
              return rd_kafka_send_offsets_to_transaction(rk_, offsets, group, kCallTimeoutMs);
            },
            give_up);
      }
      if (e == nullptr) {
        e = Retry([&] { return rd_kafka_commit_transaction(rk_, kCallTimeoutMs); }, give_up);
      }
      if (e == nullptr) {
        commit_seconds_->Observe(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        committed_->Inc();
        {
          MutexLock l(mu_);
          records_->Observe(static_cast<double>(held_.size()));
          retired_.clear();  // (a commit ago: no delivery report can still reach them)
          for (auto& h : held_) {
            if (!h->reported && !h->failed) {
              h->reported = true;
              reports.emplace_back(std::move(h), Status());
            } else {
              retired_.push_back(std::move(h));
            }
          }
          held_.clear();
          first_record_ = {};
        }
        txn_.fetch_add(1, std::memory_order_acq_rel);
        if (rd_kafka_error_t* b = rd_kafka_begin_transaction(rk_); b != nullptr) {
          Fence("beginning a transaction: " + Text(b), reports);
          rd_kafka_error_destroy(b);
          outcome = Outcome::kFenced;
        } else {
          outcome = Outcome::kCommitted;
        }
        break;
      }
      std::string text = Text(e);
      bool fatal = rd_kafka_error_is_fatal(e);
      bool abort = rd_kafka_error_txn_requires_abort(e);
      rd_kafka_resp_err_t code = rd_kafka_error_code(e);
      rd_kafka_error_destroy(e);
      if (fatal && TimedOut()) {
        needs_abort_.store(true, std::memory_order_release);  // (the abort renews the producer)
        continue;
      }
      if (fatal) {
        Fence(text, reports);
        outcome = Outcome::kFenced;
        break;
      }
      if (code == RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION ||
          code == RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID ||
          code == RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID) {
        log::Warn(
            "kafka transaction refused: this member is no longer in the group's current "
            "generation (it stalled past its session); aborting it, its messages are left "
            "to their partitions' new owner",
            {{"source", source_}, {"error", text}});
        outcome = AbortAndRedo(/*drop_scoped=*/true, give_up, reports);
        if (outcome == Outcome::kRedone) {
          outcome = Outcome::kLost;
        }
        break;
      }
      if (!abort && give_up()) {
        break;
      }
      log::Warn(
          "kafka transaction could not commit; aborting it and producing its records "
          "again",
          {{"source", source_}, {"error", text}});
      needs_abort_.store(true, std::memory_order_release);
    }
  }
  // Records reported now are durable with the commit (or cancelled by a fence); a report
  // may lead to more records through this producer, so not under txn_mu_.
  MakeReports(reports);
  return outcome;
}

TxnProducer::Outcome TxnProducer::AbortAndRedo(bool drop_scoped, const GiveUp& give_up,
                                               Reports& reports) {
  aborted_->Inc();
  rd_kafka_error_t* e =
      Retry([&] { return rd_kafka_abort_transaction(rk_, kCallTimeoutMs); }, give_up);
  if (e == nullptr) {
    txn_.fetch_add(1, std::memory_order_acq_rel);  // what reports come of the aborted one are stale
    needs_abort_.store(false, std::memory_order_release);
    e = rd_kafka_begin_transaction(rk_);
  }
  if (e != nullptr) {
    std::string text = Text(e);
    bool fatal = rd_kafka_error_is_fatal(e);
    rd_kafka_error_destroy(e);
    if (fatal && !(TimedOut() && Renew(text))) {
      Fence(text, reports);
      return Outcome::kFenced;
    }
    if (!fatal) {
      needs_abort_.store(true, std::memory_order_release);
      return Outcome::kGaveUp;
    }
  }
  std::vector<Held*> redo;
  {
    MutexLock l(mu_);
    static log::RateLimiter limiter(2);
    if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
      log::Warn(drop_scoped ? "kafka transaction aborted; its messages are processed again"
                            : "kafka transaction aborted and begun again with its records",
                {{"source", source_},
                 {"records", std::to_string(held_.size())},
                 {"suppressed_before", std::to_string(suppressed)}});
    }
    std::vector<std::unique_ptr<Held>> keep;
    for (auto& h : held_) {
      if (drop_scoped && h->scoped) {
        // Its message is processed again by whoever owns its partition now.
        if (!h->reported) {
          h->reported = true;
          reports.emplace_back(std::move(h),
                               Cancelled("its Kafka partition was lost before the commit"));
        } else {
          retired_.push_back(std::move(h));
        }
        continue;
      }
      redo.push_back(h.get());
      keep.push_back(std::move(h));
    }
    held_ = std::move(keep);
  }
  for (Held* h : redo) {
    rd_kafka_resp_err_t err = ProduceHeld(h);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      continue;
    }
    needs_abort_.store(true, std::memory_order_release);
    if (!RecordError(err)) {
      break;  // the next round aborts and redoes again
    }
    failed_topics_.Note(h->record->topic, err);
    MutexLock l(mu_);
    auto it = std::find_if(held_.begin(), held_.end(), [&](const auto& p) { return p.get() == h; });
    h->failed = true;
    if (h->reported) {
      record_failures_->Inc();
      retired_.push_back(std::move(*it));
    } else {
      h->reported = true;
      reports.emplace_back(std::move(*it),
                           InvalidArgument(fmt::format("kafka produce to {}: {}", h->record->topic,
                                                       rd_kafka_err2str(err))));
    }
    held_.erase(it);
  }
  MutexLock l(mu_);
  first_record_ =
      held_.empty() ? std::chrono::steady_clock::time_point{} : std::chrono::steady_clock::now();
  return Outcome::kRedone;
}

bool TxnProducer::TimedOut() const {
  if (!renew_) {
    return false;  // (a fatal error is then always a fence)
  }
  MutexLock l(mu_);
  return first_record_ != std::chrono::steady_clock::time_point{} &&
         std::chrono::steady_clock::now() - first_record_ >= std::chrono::milliseconds(timeout_ms_);
}

bool TxnProducer::Renew(const std::string& why) {
  timed_out_->Inc();
  log::Warn(
      "kafka transaction timed out on the broker (open longer than transaction_timeout_ms: "
      "this process stalled, or the broker was away); starting a new producer and redoing "
      "the transaction with its records",
      {{"source", source_},
       {"transactional_id", transactional_id_},
       {"transaction_timeout_ms", std::to_string(timeout_ms_)},
       {"error", why}});
  txn_.fetch_add(1, std::memory_order_acq_rel);  // the old producer's reports are stale
  MutexLock lock(rk_mu_);  // (the poller waits; its failure reports, which may produce, do not)
  // Its records are the aborted transaction's: purged, their reports served (and ignored).
  rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  rd_kafka_flush(rk_, 2000);
  rd_kafka_destroy(rk_);
  rk_ = nullptr;
  needs_abort_.store(false, std::memory_order_release);
  if (Status st = Connect(); !st.ok()) {
    log::Error("kafka transactional producer could not be started again",
               {{"source", source_}, {"error", st.message()}});
    return false;
  }
  return true;
}

bool TxnProducer::CheckAbortable() {
  ReaderLock lock(txn_mu_);
  if (!Active()) {
    return false;
  }
  // Refused inside a transaction; the refusal carries the transaction's state.
  rd_kafka_error_t* e = rd_kafka_begin_transaction(rk_);
  if (e == nullptr) {
    return false;  // (no transaction was open: now one is)
  }
  bool failed = rd_kafka_error_txn_requires_abort(e) || rd_kafka_error_is_fatal(e);
  if (failed) {
    log::Warn("kafka transaction failed without a record's error; aborting it",
              {{"source", source_}, {"error", Text(e)}});
    needs_abort_.store(true, std::memory_order_release);
  }
  rd_kafka_error_destroy(e);
  return failed;
}

TxnProducer::Outcome TxnProducer::Abort(bool drop_scoped, const GiveUp& give_up) {
  Reports reports;
  Outcome o = Outcome::kGaveUp;
  {
    WriterLock lock(txn_mu_);
    if (Active()) {
      o = AbortAndRedo(drop_scoped, give_up, reports);
    }
  }
  MakeReports(reports);
  return o;
}

void TxnProducer::Fence(const std::string& why, Reports& reports) {
  active_.store(false, std::memory_order_release);
  fenced_->Inc();
  log::Error(
      "kafka transactional producer fenced: another instance took its transactional id "
      "(or the broker ended it); its messages are left to the partitions' new owner",
      {{"source", source_}, {"transactional_id", transactional_id_}, {"error", why}});
  ReapHeld(Cancelled("the Kafka transaction was fenced before it committed"), reports);
}

void TxnProducer::ReapHeld(const Status& status, Reports& reports) {
  MutexLock l(mu_);
  for (auto& h : held_) {
    if (!h->reported && !h->failed) {
      h->reported = true;
      reports.emplace_back(std::move(h), status);
    } else {
      retired_.push_back(std::move(h));
    }
  }
  held_.clear();
  first_record_ = {};
}

void TxnProducer::Finish(Deadline deadline) {
  std::function<void(Deadline)> finish;
  {
    MutexLock lock(mu_);
    if (finished_) {
      return;
    }
    finished_ = true;
    finish = std::move(finish_);
  }
  if (finish) {
    finish(deadline);
  }
}

void TxnProducer::Close() {
  Reports reports;
  {
    WriterLock lock(txn_mu_);
    active_.store(false, std::memory_order_release);
    if (rk_ != nullptr && Open() > 0) {
      // Not committed: abort now rather than leave read_committed consumers waiting for the
      // broker's transaction timeout.
      if (rd_kafka_error_t* e = rd_kafka_abort_transaction(rk_, 5000); e != nullptr) {
        rd_kafka_error_destroy(e);
      }
    }
    ReapHeld(Cancelled("kafka transactions closed before the record committed"), reports);
  }
  MakeReports(reports);
  poller_.request_stop();
  if (poller_.joinable()) {
    poller_.join();
  }
  {
    MutexLock lock(rk_mu_);
    if (rk_ != nullptr) {
      rd_kafka_flush(rk_, 1000);
      rd_kafka_destroy(rk_);
      rk_ = nullptr;
    }
  }
  ReportFailures();
  MutexLock lock(mu_);
  retired_.clear();
}

size_t TxnProducer::Open() const {
  MutexLock lock(mu_);
  return held_.size();
}

}  // namespace gnomon::connectors::kafka

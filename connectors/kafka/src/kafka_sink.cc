// SPDX-License-Identifier: Apache-2.0
// Kafka sink: an idempotent producer (acks=all, ordered retries), one message per record, key =
// device id unless the emit gave one, gnomon's provenance headers. A record is reported
// delivered from librdkafka's delivery report, so a source message is finished only when the
// cluster has its output. On the connection of a Kafka source running exactly-once, records go
// through that source's transactional producer (kafka_txn.h) while it runs.
//
// Fenced by partition (internal: the cluster's change log, docs/cluster.md#fencing): each
// partition's records go through a transactional producer of its own, transactional id
// `{fence_transactional_id}.{partition}`, created when the engine Acquire()s the partition
// (which fences the id's previous holder and aborts what it left open) and committed every
// fence_commit_ms; a record is reported delivered once its transaction commits. Records of a
// partition this instance does not hold (any more) are cancelled.
#include <fmt/format.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <thread>

#include "gnomon/connectors/kafka.h"
#include "gnomon/core/factory.h"
#include "gnomon/core/log.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/record.h"
#include "gnomon/core/sink.h"
#include "kafka_common.h"
#include "kafka_txn.h"

namespace gnomon::connectors::kafka {
namespace {

struct KafkaSinkConfig {
  ClientSettings settings;
  std::string topic;
  bool create = false;
  int partitions = 4;
  int replication_factor = -1;
  bool compact = false;
  std::string fence_prefix;           // fenced by partition (see above); empty: not
  int64_t fence_timeout_ms = 120000;  // transaction.timeout.ms of the partitions' producers
  int64_t fence_commit_ms = 100;      // how often their transactions commit
};

class KafkaSink final : public Sink, public PartitionedWriter {
 public:
  KafkaSink(KafkaSinkConfig config, PluginContext& ctx)
      : config_(std::move(config)),
        name_(ctx.name),
        reporter_(ctx.reporter),
        metrics_(ctx.metrics) {
    queue_full_ = ctx.metrics.GetCounter("gnomon_kafka_producer_queue_full_total",
                                         "Sends that waited because the producer queue was full",
                                         {{"sink", name_}});
    if (fenced()) {
      fenced_partitions_ = ctx.metrics.GetCounter(
          "gnomon_kafka_partition_writers_fenced_total",
          "Partitions whose transactional writer was fenced: another instance took them over "
          "(their pending records were thrown away)",
          {{"sink", name_}});
    } else if (ctx.shared != nullptr && ctx.connection != nullptr) {
      txn_ = ctx.shared->Get<TxnProducer>(
          ctx.connection, [&] { return new TxnProducer(ctx.reporter, ctx.metrics); });
    }
  }
  ~KafkaSink() override { Stop(std::chrono::steady_clock::now()); }

  Status Start() override {
    GNOMON_ASSIGN_OR_RETURN(rd_kafka_conf_t * conf,
                            MakeConf(config_.settings, {{"enable.idempotence", "true"},
                                                        {"client.id", "gnomon-" + name_}}));
    rd_kafka_conf_set_opaque(conf, this);
    rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* m, void* self) {
      static_cast<KafkaSink*>(self)->OnDelivery(m);
    });
    rd_kafka_conf_set_error_cb(conf, [](rd_kafka_t*, int err, const char* reason, void* self) {
      static_cast<KafkaSink*>(self)->OnError(static_cast<rd_kafka_resp_err_t>(err), reason);
    });
    char err[512];
    rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (rk_ == nullptr) {
      rd_kafka_conf_destroy(conf);
      return Unavailable(fmt::format("kafka sink {}: {}", name_, err));
    }
    if (fenced()) {
      committer_ = std::jthread([this](const std::stop_token& st) { CommitPartitions(st); });
    }
    poller_ = std::jthread([this](const std::stop_token& st) {
      pthread_setname_np(pthread_self(), "gnomon-kafka-p");
      if (config_.create) {
        CreateTopic();  // here, not in Start(): an unreachable cluster must not delay the start
      }
      ReachabilityProbe probe;
      const std::string who = "sink " + name_;
      while (!st.stop_requested()) {
        rd_kafka_poll(rk_, 100);
        probe.Check(rk_, brokers_down_, who);
        failed_topics_.Refresh(rk_, {"sink", name_});
      }
    });
    return {};
  }

  void Send(Record&& record) override {
    if (fenced()) {
      SendFenced(std::move(record));
      return;
    }
    // (A record of an exactly-once source's message goes to the transactions even once they
    // ended: it is cancelled there, never sent outside them.)
    if (txn_ != nullptr && (txn_->Active() || txn_->Scopes(record))) {
      auto t = std::make_unique<Record>(std::move(record));
      if (t->topic.empty()) {
        t->topic = config_.topic;
      }
      if (txn_->Produce(t)) {
        return;
      }
      record = std::move(*t);  // the transactions ended meanwhile
    }
    auto* r = new Record(std::move(record));
    ReaderLock alive(alive_mu_);  // Stop() destroys the producer under the unique lock
    if (rk_ == nullptr) {
      Finish(r, Cancelled("kafka sink is not running"));
      return;
    }
    const std::string& topic = r->topic.empty() ? config_.topic : r->topic;
    rd_kafka_headers_t* headers = RecordHeaders(*r);
    while (true) {
      if (stopping_.load(std::memory_order_acquire)) {
        rd_kafka_headers_destroy(headers);
        Finish(r, Cancelled("kafka sink stopped before the record was sent"));
        return;
      }
      rd_kafka_resp_err_t err = rd_kafka_producev(
          rk_, RD_KAFKA_V_TOPIC(topic.c_str()),
          RD_KAFKA_V_PARTITION(r->partition >= 0 ? r->partition : RD_KAFKA_PARTITION_UA),
          RD_KAFKA_V_VALUE(r->null_value ? nullptr : r->payload.data(),
                           r->null_value ? 0 : r->payload.size()),
          RD_KAFKA_V_KEY(r->key.data(), r->key.size()), RD_KAFKA_V_HEADERS(headers),
          RD_KAFKA_V_OPAQUE(r), RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        inflight_.fetch_add(1, std::memory_order_relaxed);
        return;  // the producer owns the headers now
      }
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        // Back-pressure: wait for delivery reports to make room.
        queue_full_->Inc();
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        continue;
      }
      rd_kafka_headers_destroy(headers);
      failed_topics_.Note(topic, err);
      Finish(r, InvalidArgument(fmt::format("kafka produce to {}: {}", topic, rd_kafka_err2str(err))));
      return;
    }
  }

  void Stop(Deadline deadline) override {
    if (rk_ == nullptr || stopped_.exchange(true)) {
      return;
    }
    if (txn_ != nullptr) {
      txn_->Finish(deadline);  // the last transaction commits before this sink goes
    }
    if (fenced()) {
      committer_.request_stop();
      if (committer_.joinable()) {
        committer_.join();
      }
      std::map<int32_t, std::shared_ptr<TxnProducer>> parts;
      {
        MutexLock lock(parts_mu_);
        parts.swap(parts_);
      }
      auto give_up = [deadline] { return std::chrono::steady_clock::now() >= deadline; };
      for (auto& [p, t] : parts) {
        if (t->Active() && t->Open() > 0) {
          t->Commit(nullptr, nullptr, give_up);
        }
        t->Close();  // (what did not commit in time is cancelled)
      }
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  deadline - std::chrono::steady_clock::now())
                  .count();
    rd_kafka_flush(rk_, static_cast<int>(std::max<int64_t>(ms, 0)));
    stopping_.store(true, std::memory_order_release);
    // What is left was not delivered in time: purged, reported as cancelled (not acked).
    rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(rk_, 1000);
    poller_.request_stop();
    if (poller_.joinable()) {
      poller_.join();
    }
    rd_kafka_poll(rk_, 0);
    WriterLock lock(alive_mu_);
    rd_kafka_destroy(rk_);
    rk_ = nullptr;
  }

  // Creates the topic if missing. Not fatal: the cluster may be down now and the topic may be
  // auto-created or made by an operator later.
  void CreateTopic() {
    char err[512];
    rd_kafka_NewTopic_t* nt = rd_kafka_NewTopic_new(config_.topic.c_str(), config_.partitions,
                                                    config_.replication_factor, err, sizeof err);
    if (nt == nullptr) {
      log::Warn("kafka topic not created", {{"sink", name_}, {"error", err}});
      return;
    }
    if (config_.compact) {
      rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
    }
    rd_kafka_queue_t* q = rd_kafka_queue_new(rk_);
    rd_kafka_AdminOptions_t* opts = rd_kafka_AdminOptions_new(rk_, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, 8000, err, sizeof err);
    rd_kafka_CreateTopics(rk_, &nt, 1, opts, q);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_event_t* ev = rd_kafka_queue_poll(q, 10000);
    std::string outcome = "timed out";
    if (ev != nullptr) {
      const rd_kafka_CreateTopics_result_t* res = rd_kafka_event_CreateTopics_result(ev);
      size_t n = 0;
      const rd_kafka_topic_result_t** topics =
          res != nullptr ? rd_kafka_CreateTopics_result_topics(res, &n) : nullptr;
      if (rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        outcome = rd_kafka_event_error_string(ev);
      } else if (n == 1) {
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(topics[0]);
        outcome = e == RD_KAFKA_RESP_ERR_NO_ERROR                 ? "created"
                  : e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS ? "exists"
                                                                : rd_kafka_err2str(e);
      }
      rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    if (outcome == "created" || outcome == "exists") {
      log::Info("kafka topic", {{"sink", name_}, {"topic", config_.topic}, {"state", outcome},
                                {"compact", config_.compact ? "true" : "false"}});
    } else {
      log::Warn("kafka topic not created", {{"sink", name_}, {"topic", config_.topic},
                                            {"error", outcome}});
    }
  }

  bool Ready() const override { return !brokers_down_.load(std::memory_order_relaxed); }
  size_t QueueDepth() const override {
    size_t open = 0;
    if (fenced()) {
      MutexLock lock(parts_mu_);
      for (const auto& [p, t] : parts_) {
        open += t->Open();
      }
    }
    return open +
           static_cast<size_t>(std::max<int64_t>(0, inflight_.load(std::memory_order_relaxed)));
  }

  // PartitionedWriter (fenced by partition only).
  Status Acquire(const std::vector<int32_t>& partitions) override {
    if (!fenced()) {
      return {};
    }
    for (int32_t p : partitions) {
      {
        MutexLock lock(parts_mu_);
        if (parts_.contains(p)) {
          continue;
        }
      }
      auto t = std::make_shared<TxnProducer>(reporter_, metrics_);
      t->NoRenewal();
      // (Fences the id's previous holder: what it left open is aborted.)
      GNOMON_RETURN_IF_ERROR(t->Start(config_.settings,
                                      fmt::format("{}.{}", config_.fence_prefix, p),
                                      config_.fence_timeout_ms, name_, [](Deadline) {}));
      MutexLock lock(parts_mu_);
      parts_[p] = std::move(t);
    }
    return {};
  }

  void Release(const std::vector<int32_t>& partitions, bool lost) override {
    for (int32_t p : partitions) {
      std::shared_ptr<TxnProducer> t;
      {
        MutexLock lock(parts_mu_);
        auto it = parts_.find(p);
        if (it == parts_.end()) {
          continue;
        }
        t = std::move(it->second);
        parts_.erase(it);
      }
      if (!lost && t->Active() && t->Open() > 0) {
        auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        t->Commit(nullptr, nullptr, [until] { return std::chrono::steady_clock::now() >= until; });
      }
      t->Close();  // (lost: what is pending is thrown away; the next holder aborted it already)
    }
  }

 private:
  void Finish(Record* r, const Status& st) {
    reporter_.Report(*r, st);
    delete r;
  }

  bool fenced() const { return !config_.fence_prefix.empty(); }

  void SendFenced(Record&& record) {
    auto r = std::make_unique<Record>(std::move(record));
    if (r->topic.empty()) {
      r->topic = config_.topic;
    }
    std::shared_ptr<TxnProducer> t;
    {
      MutexLock lock(parts_mu_);
      if (auto it = parts_.find(r->partition); it != parts_.end()) {
        t = it->second;
      }
    }
    if (t != nullptr && t->Produce(r)) {
      return;
    }
    reporter_.Report(*r, Cancelled(fmt::format("{} partition {} is not written by this instance "
                                               "(any more): another owns it",
                                               r->topic, r->partition)));
  }

  // Commits each partition's open transaction every fence_commit_ms; a partition whose
  // producer was fenced (another instance took it over) is dropped.
  void CommitPartitions(const std::stop_token& st) {
    pthread_setname_np(pthread_self(), "gnomon-kafka-c");
    auto give_up = [&st, this] {
      return st.stop_requested() || stopping_.load(std::memory_order_acquire);
    };
    while (!st.stop_requested()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(config_.fence_commit_ms));
      std::vector<std::pair<int32_t, std::shared_ptr<TxnProducer>>> parts;
      {
        MutexLock lock(parts_mu_);
        parts.assign(parts_.begin(), parts_.end());
      }
      for (auto& [p, t] : parts) {
        if (st.stop_requested()) {
          break;
        }
        if (t->Active() && t->Open() > 0) {
          t->Commit(nullptr, nullptr, give_up);
        }
        if (!t->Active()) {
          MutexLock lock(parts_mu_);
          if (auto it = parts_.find(p); it != parts_.end() && it->second == t) {
            parts_.erase(it);
            fenced_partitions_->Inc();
            log::Error(
                "kafka partition writer fenced: another instance took the partition over; "
                "its pending records were thrown away",
                {{"sink", name_}, {"partition", std::to_string(p)}});
          }
        }
      }
    }
  }

  void OnDelivery(const rd_kafka_message_t* m) {
    auto* r = static_cast<Record*>(m->_private);
    inflight_.fetch_sub(1, std::memory_order_relaxed);
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      brokers_down_.store(false, std::memory_order_relaxed);
      Finish(r, {});
    } else if (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
               m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT) {
      Finish(r, Cancelled("kafka sink stopped before the record was delivered"));
    } else {
      // The idempotent producer retried what can be retried; this is final.
      failed_topics_.Note(rd_kafka_topic_name(m->rkt), m->err);
      Finish(r, Unavailable(fmt::format("kafka delivery to {}: {}", rd_kafka_topic_name(m->rkt),
                                        rd_kafka_err2str(m->err))));
    }
  }

  void OnError(rd_kafka_resp_err_t err, const char* reason) {
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
      brokers_down_.store(true, std::memory_order_relaxed);
    }
    static log::RateLimiter limiter(5);
    if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
      log::Warn("kafka producer error", {{"sink", name_},
                                         {"error", rd_kafka_err2name(err)},
                                         {"reason", reason},
                                         {"suppressed_before", std::to_string(suppressed)}});
    }
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
      char buf[512];
      rd_kafka_fatal_error(rk_, buf, sizeof buf);
      log::Error("kafka producer fatal error: records will be dead-lettered",
                 {{"sink", name_}, {"error", buf}});
    }
  }

  KafkaSinkConfig config_;
  std::string name_;
  DeliveryReporter& reporter_;
  MetricsRegistry& metrics_;
  Counter* queue_full_;
  Counter* fenced_partitions_ = nullptr;
  mutable Mutex parts_mu_;
  std::map<int32_t, std::shared_ptr<TxnProducer>> parts_ GNOMON_GUARDED_BY(parts_mu_);
  std::jthread committer_;
  rd_kafka_t* rk_ = nullptr;
  SharedMutex alive_mu_;
  std::jthread poller_;
  std::atomic<int64_t> inflight_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<bool> brokers_down_{false};
  FailedTopics failed_topics_;
  std::shared_ptr<TxnProducer> txn_;  // the connection's, when a source runs exactly-once
};

class KafkaSinkFactory final : public TypedSinkFactory<KafkaSinkConfig> {
 public:
  std::string_view schema() const override { return "sinks/kafka.json"; }
  void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const override {
    CheckProperties(cfg, path, errors);
  }
  Result<KafkaSinkConfig> Parse(const ConfigValue& cfg, const PluginContext& ctx) const override {
    KafkaSinkConfig c;
    GNOMON_ASSIGN_OR_RETURN(c.settings, Settings(*ctx.connection, cfg));
    c.topic = cfg.GetString("topic");
    if (const ConfigValue* create = cfg.Get("create")) {
      c.create = true;
      c.partitions = static_cast<int>(create->GetInt("partitions", 4));
      c.replication_factor = static_cast<int>(create->GetInt("replication_factor", -1));
      c.compact = create->GetBool("compact", false);
    }
    // (Internal, set by the engine for the cluster's change log; not in the sink's schema.)
    c.fence_prefix = cfg.GetString("fence_transactional_id", "");
    c.fence_timeout_ms = cfg.GetInt("fence_transaction_timeout_ms", c.fence_timeout_ms);
    c.fence_commit_ms = cfg.GetInt("fence_commit_ms", c.fence_commit_ms);
    return c;
  }
  Result<std::unique_ptr<Sink>> CreateTyped(KafkaSinkConfig c, PluginContext& ctx) override {
    return std::unique_ptr<Sink>(new KafkaSink(std::move(c), ctx));
  }
};

}  // namespace

std::unique_ptr<SinkFactory> NewKafkaSinkFactory() { return std::make_unique<KafkaSinkFactory>(); }

}  // namespace gnomon::connectors::kafka

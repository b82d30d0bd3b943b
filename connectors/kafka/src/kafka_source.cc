// SPDX-License-Identifier: Apache-2.0
// Kafka source: a consumer-group member with manual offsets. Each partition keeps the offsets it
// handed out, in order; a message's acknowledgement (all its effects durable) marks its offset
// done, and the committed position of a partition is the first offset not yet done. So a crash
// loses nothing: consumption restarts at the first unfinished message (at-least-once).
// On revocation the source waits for the partition's in-flight messages and commits before it
// lets go, so two owners never process the same message at once.
// With `delivery: exactly_once` the offsets are not committed on their own but sent in the
// Kafka transaction that holds the messages' records (kafka_txn.h).
#include <fmt/format.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "gnomon/connectors/kafka.h"
#include "gnomon/core/device_rule.h"
#include "gnomon/core/factory.h"
#include "gnomon/core/json.h"
#include "gnomon/core/log.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/source.h"
#include "gnomon/core/topic.h"
#include "kafka_common.h"
#include "kafka_txn.h"

namespace gnomon::connectors::kafka {
namespace {

constexpr auto kRevokeWait = std::chrono::seconds(20);
// Exactly-once: how long a commit waits with no message finishing before it asks whether the
// transaction failed unannounced.
constexpr auto kStalledTransaction = std::chrono::milliseconds(500);

struct KafkaSourceConfig {
  ClientSettings settings;
  std::vector<std::string> topics;
  std::string group;
  DeviceRule device;
  std::string start = "earliest";
  int64_t max_inflight = 5000;
  int64_t commit_interval_ms = 1000;
  size_t max_payload_bytes = 1 << 20;
  // The record's topic for the rules is this header's value (when the record has it): MQTT
  // bridged into Kafka, and gnomon's own cluster ingress. Empty: the Kafka topic.
  std::string topic_header;
  std::vector<std::string> reserved;  // topic prefixes a header may not name (gnomon's own)
  // Exactly-once: transactions through the connection's shared producer.
  bool exactly_once = false;
  ClientSettings producer_settings;  // the connection's, for the transactional producer
  std::string transactional_id;
  int64_t transaction_ms = 100;
  int64_t transaction_messages = 10000;
  int64_t transaction_timeout_ms = 10000;
};

using PartitionKey = std::pair<std::string, int32_t>;

// The offsets of one partition handed out under one assignment.
struct Track {
  uint64_t generation = 0;
  std::deque<std::pair<int64_t, bool>> pending;  // offset, done; in offset order
  int64_t next_commit = -1;                      // all offsets below are done (-1: nothing yet)
  int64_t committed = -1;                        // what was last committed
};

class KafkaSource;

class KafkaAck final : public AckHandle {
 public:
  KafkaAck(KafkaSource* src, PartitionKey key, int64_t offset, uint64_t generation)
      : src_(src), key_(std::move(key)), offset_(offset), generation_(generation) {}
  void Ack() override;
  void Abandon() override;
  std::string Origin() const override {
    return fmt::format("{}[{}]@{}", key_.first, key_.second, offset_);
  }
  const void* Scope() const override;

 private:
  KafkaSource* src_;
  PartitionKey key_;
  int64_t offset_;
  uint64_t generation_;
};

class KafkaSource final : public Source {
 public:
  KafkaSource(KafkaSourceConfig config, PluginContext& ctx)
      : config_(std::move(config)), name_(ctx.name), clock_(ctx.clock), listener_(ctx.partitions) {
    auto c = [&](const char* name, const char* help) {
      return ctx.metrics.GetCounter(name, help, {{"source", name_}});
    };
    commits_ = c("gnomon_kafka_commits_total", "Offset commits sent");
    commit_failures_ = c("gnomon_kafka_commit_failures_total", "Offset commits that failed");
    pauses_ = c("gnomon_kafka_pauses_total", "Times the source paused its partitions (back-pressure)");
    rebalances_ = c("gnomon_kafka_rebalances_total", "Partition assignments and revocations");
    rewinds_total_ = c("gnomon_kafka_rewinds_total",
                       "Exactly-once: transactions aborted because a message was given up, and "
                       "the partitions taken back to their committed offsets");
    partitions_gauge_ = ctx.metrics.GetGauge(
        "gnomon_kafka_partitions", "Partitions assigned to this instance's source right now",
        {{"source", name_}});
    lag_gauge_ = ctx.metrics.GetGauge("gnomon_kafka_inflight",
                                      "Messages taken from Kafka and not yet finished",
                                      {{"source", name_}});
    if (config_.exactly_once) {
      // Shared with the Kafka sinks of this connection (they send through it while it runs).
      auto make = [&] { return new TxnProducer(ctx.reporter, ctx.metrics); };
      txn_ = ctx.shared != nullptr ? ctx.shared->Get<TxnProducer>(ctx.connection, make)
                                   : std::shared_ptr<TxnProducer>(make());
    }
  }

  const void* scope() const { return txn_.get(); }

  ~KafkaSource() override {
    Stop();
    if (txn_ != nullptr) {
      txn_->Finish(std::chrono::steady_clock::now() + std::chrono::seconds(5));
      txn_->Close();
    }
    if (rk_ != nullptr && txn_ != nullptr) {
      closing_ = true;
      rd_kafka_consumer_close(rk_);  // (the revocation commits nothing: Finish did)
      rd_kafka_destroy(rk_);
    } else if (rk_ != nullptr) {
      // Everything acknowledged by now is committed; what is not (abandoned at shutdown) is
      // consumed again by the next owner.
      CommitDone(/*sync=*/true);
      closing_ = true;
      rd_kafka_consumer_close(rk_);
      rd_kafka_destroy(rk_);
    }
  }

  Status Start(Ingest& ingest) override {
    ingest_ = &ingest;
    Properties fixed = {{"group.id", config_.group},
                        {"enable.auto.commit", "false"},
                        {"enable.auto.offset.store", "false"},
                        {"auto.offset.reset", config_.start},
                        {"client.id", "gnomon-" + name_}};
    if (txn_ != nullptr) {
      // Exactly-once reads only committed input, and revokes all partitions at once (a
      // transaction holds records of all of them: it commits or aborts as a whole).
      fixed["isolation.level"] = "read_committed";
      fixed["partition.assignment.strategy"] = "range,roundrobin";
    }
    GNOMON_ASSIGN_OR_RETURN(
        rd_kafka_conf_t * conf,
        MakeConf(config_.settings, fixed,
                 // A crashed member's partitions move on within seconds, not librdkafka's 45 s;
                 // the poll loop never stops polling for long (it pauses instead).
                 {{"session.timeout.ms", "10000"},
                  {"heartbeat.interval.ms", "1000"},
                  {"max.poll.interval.ms", "60000"}}));
    rd_kafka_conf_set_opaque(conf, this);
    rd_kafka_conf_set_rebalance_cb(
        conf, [](rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts,
                 void* self) { static_cast<KafkaSource*>(self)->OnRebalance(rk, err, parts); });
    rd_kafka_conf_set_error_cb(conf, [](rd_kafka_t*, int err, const char* reason, void* self) {
      static_cast<KafkaSource*>(self)->OnError(static_cast<rd_kafka_resp_err_t>(err), reason);
    });
    rd_kafka_conf_set_offset_commit_cb(
        conf, [](rd_kafka_t*, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* offsets,
                 void* self) { static_cast<KafkaSource*>(self)->OnCommitted(err, offsets); });
    char err[512];
    rk_ = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (rk_ == nullptr) {
      rd_kafka_conf_destroy(conf);
      return Unavailable(fmt::format("kafka source {}: {}", name_, err));
    }
    rd_kafka_poll_set_consumer(rk_);
    if (txn_ != nullptr) {
      GNOMON_RETURN_IF_ERROR(txn_->Start(config_.producer_settings, config_.transactional_id,
                                         config_.transaction_timeout_ms, name_,
                                         [this](Deadline d) { FinishTransactions(d); }));
    }
    rd_kafka_topic_partition_list_t* topics =
        rd_kafka_topic_partition_list_new(static_cast<int>(config_.topics.size()));
    for (const auto& t : config_.topics) {
      rd_kafka_topic_partition_list_add(topics, t.c_str(), RD_KAFKA_PARTITION_UA);
    }
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk_, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return Unavailable(fmt::format("kafka source {}: subscribe: {}", name_, rd_kafka_err2str(e)));
    }
    thread_ = std::jthread([this](const std::stop_token& st) { Run(st); });
    return {};
  }

  void Stop() override {
    if (thread_.joinable()) {
      thread_.request_stop();
      thread_.join();
    }
  }

  bool Ready() const override {
    return rk_ != nullptr && !brokers_down_.load(std::memory_order_relaxed) &&
           (txn_ == nullptr || txn_->Active()) && !rewinding_.load(std::memory_order_relaxed);
  }

  void Done(const PartitionKey& key, int64_t offset, uint64_t generation, bool done) {
    {
      MutexLock lock(mu_);
      auto it = tracks_.find(key);
      if (it != tracks_.end() && it->second.generation == generation) {
        Track& t = it->second;
        auto pos = std::lower_bound(t.pending.begin(), t.pending.end(),
                                    std::make_pair(offset, false),
                                    [](const auto& a, const auto& b) { return a.first < b.first; });
        if (pos != t.pending.end() && pos->first == offset && done) {
          pos->second = true;
        } else if (!done) {
          abandoned_ = true;
        }
        while (!t.pending.empty() && t.pending.front().second) {
          t.next_commit = t.pending.front().first + 1;
          t.pending.pop_front();
        }
      }
      inflight_--;
    }
    cv_.notify_all();
  }

 private:
  void Run(const std::stop_token& st) {
    pthread_setname_np(pthread_self(), "gnomon-kafka-c");
    auto last_commit = std::chrono::steady_clock::now();
    bool paused = false;
    bool stopped_consuming = false;
    ReachabilityProbe probe;
    const std::string who = "source " + name_;
    while (!st.stop_requested()) {
      probe.Check(rk_, brokers_down_, who);
      auto now = std::chrono::steady_clock::now();
      if (txn_ != nullptr) {
        if (!txn_->Active()) {
          if (!stopped_consuming) {
            // Fenced: another instance owns this transactional id. Leave the group so the
            // partitions move on; this instance reports not ready until restarted.
            stopped_consuming = true;
            rd_kafka_unsubscribe(rk_);
          }
        } else if (taken_ >= config_.transaction_messages ||
                   (now - last_commit >= std::chrono::milliseconds(config_.transaction_ms) &&
                    (taken_ > 0 || txn_->Open() > 0))) {
          CommitTransaction([&] { return st.stop_requested(); });
          last_commit = std::chrono::steady_clock::now();
          continue;
        }
      } else if (now - last_commit >= std::chrono::milliseconds(config_.commit_interval_ms)) {
        CommitDone(/*sync=*/false);
        last_commit = now;
      }
      int64_t inflight = Inflight();
      lag_gauge_->Set(inflight);
      if (inflight >= config_.max_inflight && !paused) {
        // Full: wait for the pipeline without fetching more. Short waits only: librdkafka
        // serves rebalances inside poll. If it stays full, pause the partitions and keep
        // polling (pause drops prefetched data and costs a fetch round trip on resume, so it
        // is the fallback, not the first resort).
        MutexLock lock(mu_);
        if (cv_.wait_for(lock.native(), std::chrono::milliseconds(100), [&] {
              mu_.AssertHeld();
              return inflight_ < config_.max_inflight || st.stop_requested();
            })) {
          full_since_ = {};
          continue;
        }
        if (full_since_ == std::chrono::steady_clock::time_point{}) {
          full_since_ = now;
        }
        if (now - full_since_ < std::chrono::seconds(2)) {
          continue;
        }
        lock.Unlock();
        SetPaused(true);
        paused = true;
        pauses_->Inc();
      } else if (paused && inflight <= config_.max_inflight / 2) {
        SetPaused(false);
        paused = false;
        full_since_ = {};
      }
      // (After a rewind: the partitions wait a while before they are processed again.)
      if (bool wait = now < rewind_until_; wait != rewind_paused_) {
        rewind_paused_ = wait;
        if (wait || !paused) {
          SetPaused(wait);
        }
      }
      rd_kafka_message_t* msg = rd_kafka_consumer_poll(rk_, 100);
      if (msg == nullptr) {
        continue;
      }
      if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
          static log::RateLimiter limiter(5);
          if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
            log::Warn("kafka consume error",
                      {{"source", name_},
                       {"topic", msg->rkt != nullptr ? rd_kafka_topic_name(msg->rkt) : ""},
                       {"error", rd_kafka_message_errstr(msg)},
                       {"suppressed_before", std::to_string(suppressed)}});
          }
        }
        rd_kafka_message_destroy(msg);
        continue;
      }
      Take(msg);
      rd_kafka_message_destroy(msg);
    }
  }

  void Take(rd_kafka_message_t* msg) {
    PartitionKey key{rd_kafka_topic_name(msg->rkt), msg->partition};
    uint64_t generation = 0;
    {
      MutexLock lock(mu_);
      auto it = tracks_.find(key);
      if (it == tracks_.end()) {
        return;  // not (or no longer) ours
      }
      it->second.pending.emplace_back(msg->offset, false);
      generation = it->second.generation;
      inflight_++;
    }
    taken_++;
    auto ack = std::make_unique<KafkaAck>(this, key, msg->offset, generation);
    Message m;
    m.topic = key.first;
    if (msg->key != nullptr) {
      m.key.assign(static_cast<const char*>(msg->key), msg->key_len);
    }
    m.ts_ms = clock_.NowMs();
    m.source = &name_;
    rd_kafka_headers_t* hdrs = nullptr;
    if (rd_kafka_message_headers(msg, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      const char* name;
      const void* value;
      size_t size;
      for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &size) ==
                         RD_KAFKA_RESP_ERR_NO_ERROR;
           ++i) {
        m.headers.emplace_back(name, value != nullptr
                                         ? std::string(static_cast<const char*>(value), size)
                                         : std::string());
      }
    }
    if (!config_.topic_header.empty()) {
      if (Status bad = TopicFromHeader(m); !bad.ok()) {
        if (auto device = config_.device.Extract(m); device.ok()) {
          m.device = std::move(device).value();  // for the dead letter, when it can be told
        }
        ingest_->Reject(
            std::move(m), std::move(ack), "bad_topic",
            fmt::format("{} ({}[{}]@{})", bad.message(), key.first, key.second, msg->offset));
        return;
      }
    }
    if (msg->len > config_.max_payload_bytes) {
      ingest_->Reject(std::move(m), std::move(ack), "oversize",
                      fmt::format("{} bytes (max_payload_bytes {}), {}[{}]@{}", msg->len,
                                  config_.max_payload_bytes, key.first, key.second, msg->offset));
      return;
    }
    m.payload.reserve(msg->len + 64);  // simdjson padding: parsed in place
    m.payload.assign(static_cast<const char*>(msg->payload), msg->len);
    auto device = config_.device.Extract(m);
    if (!device.ok()) {
      ingest_->Reject(std::move(m), std::move(ack), "no_device",
                      fmt::format("{} ({}[{}]@{})", device.status().message(), key.first,
                                  key.second, msg->offset));
      return;
    }
    m.device = std::move(device).value();
    ingest_->Submit(std::move(m), std::move(ack));  // blocks while the engine is full
  }

  // Moves the `topic_header` header's value (if any) into m.topic. A topic that is not a topic
  // name, or is under one of gnomon's own prefixes (shadow and presence topics), is refused:
  // whoever writes the Kafka topic does not thereby speak for a device's shadow.
  Status TopicFromHeader(Message& m) const {
    auto it = std::find_if(m.headers.begin(), m.headers.end(),
                           [&](const auto& h) { return h.first == config_.topic_header; });
    if (it == m.headers.end()) {
      return {};
    }
    std::string topic = std::move(it->second);
    m.headers.erase(it);
    if (config_.topic_header == "gnomon-source-topic") {
      // A record gnomon wrote (the cluster's ingress): its other provenance headers are not
      // the message's either.
      std::erase_if(m.headers, [](const auto& h) {
        return h.first == "gnomon-rule" || h.first == "gnomon-device";
      });
    }
    if (topic.size() > 1024 || !ValidateTopicName(topic).ok() || !json::IsValidUtf8(topic)) {
      return InvalidArgument(
          fmt::format("header {} is not a topic name (1-1024 bytes of UTF-8, "
                      "no + or #)",
                      config_.topic_header));
    }
    for (const std::string& prefix : config_.reserved) {
      if (TopicUnder(topic, prefix)) {
        return InvalidArgument(fmt::format("header {} names {}, under {} (gnomon's own topics)",
                                           config_.topic_header, topic, prefix));
      }
    }
    m.topic = std::move(topic);
    return {};
  }

  // Exactly-once: takes no more messages until every one handed out is finished (their records
  // are in the open transaction), then commits the transaction with their offsets. On the poll
  // thread, or as the last step once it has stopped.
  void CommitTransaction(const TxnProducer::GiveUp& give_up) {
    bool abandoned = false;
    {
      MutexLock lock(mu_);
      int64_t last = inflight_;
      auto moved = std::chrono::steady_clock::now();
      while (inflight_ > 0) {
        if (give_up()) {
          return;
        }
        if (txn_->NeedsAbort()) {
          lock.Unlock();
          TxnProducer::Outcome o = txn_->Abort(/*drop_scoped=*/false, give_up);
          lock.Lock();
          if (o != TxnProducer::Outcome::kRedone) {
            return;
          }
          continue;
        }
        cv_.wait_for(lock.native(), std::chrono::milliseconds(20));
        if (auto now = std::chrono::steady_clock::now(); inflight_ != last) {
          last = inflight_;
          moved = now;
        } else if (now - moved >= kStalledTransaction) {
          // Nothing finished for a while: the transaction may have failed without telling
          // any record.
          moved = now;
          lock.Unlock();
          txn_->CheckAbortable();
          lock.Lock();
        }
      }
      abandoned = abandoned_;
      abandoned_ = false;
    }
    if (rd_kafka_assignment_lost(rk_) != 0) {
      // This member stalled past its session (a zombie): its partitions may be another
      // member's already, so nothing of this transaction may commit. (A broker with KIP-447
      // would refuse the offsets anyway; this also covers a commit without a generation.)
      log::Warn(
          "kafka partitions lost before the transaction committed; aborting it, its "
          "messages are left to their partitions' new owner",
          {{"source", name_}});
      txn_->Abort(/*drop_scoped=*/true, give_up);
      taken_ = 0;
      return;
    }
    if (abandoned) {
      // A message given up half-way (its dead letter could not be written, say) may have some
      // of its records in the transaction but its offset cannot commit: abort, and go back to
      // the committed offsets so the transaction's messages are processed again. Again and
      // again if the cause stays (a dead-letter topic the producer may not write): the
      // partitions wait, longer each time (0.1 s doubling to 30 s), and from the third time
      // in a row the source reports not ready; nothing is skipped.
      txn_->Abort(/*drop_scoped=*/true, give_up);
      taken_ = 0;
      Rewind();
      rewinds_total_->Inc();
      ++rewinds_;
      auto wait = std::min<std::chrono::milliseconds>(
          std::chrono::milliseconds(100) * (int64_t{1} << std::min(rewinds_ - 1, 9)),
          std::chrono::seconds(30));
      rewind_until_ = std::chrono::steady_clock::now() + wait;
      rewinding_.store(rewinds_ >= 3, std::memory_order_relaxed);
      static log::RateLimiter limiter(2);
      if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
        log::Error(
            "kafka transaction aborted: a message was given up (see the error before this); "
            "its partitions go back to their committed offsets and are processed again",
            {{"source", name_},
             {"times_in_a_row", std::to_string(rewinds_)},
             {"waiting_ms", std::to_string(wait.count())},
             {"suppressed_before", std::to_string(suppressed)}});
      }
      return;
    }
    rd_kafka_topic_partition_list_t* offsets = rd_kafka_topic_partition_list_new(8);
    {
      MutexLock lock(mu_);
      for (auto& [key, t] : tracks_) {
        if (t.next_commit > t.committed) {
          rd_kafka_topic_partition_list_add(offsets, key.first.c_str(), key.second)->offset =
              t.next_commit;
        }
      }
    }
    rd_kafka_consumer_group_metadata_t* group = rd_kafka_consumer_group_metadata(rk_);
    TxnProducer::Outcome o = txn_->Commit(offsets, group, give_up);
    rd_kafka_consumer_group_metadata_destroy(group);
    if (o == TxnProducer::Outcome::kLost) {
      taken_ = 0;  // (the revocation that follows forgets the partitions' positions)
    }
    if (o == TxnProducer::Outcome::kCommitted) {
      taken_ = 0;
      if (offsets->cnt > 0) {
        commits_->Inc();
        rewinds_ = 0;  // progress
        rewinding_.store(false, std::memory_order_relaxed);
      }
      MutexLock lock(mu_);
      for (int i = 0; i < offsets->cnt; ++i) {
        auto it = tracks_.find({offsets->elems[i].topic, offsets->elems[i].partition});
        if (it != tracks_.end()) {
          it->second.committed = std::max(it->second.committed, offsets->elems[i].offset);
        }
      }
    }
    rd_kafka_topic_partition_list_destroy(offsets);
  }

  // Exactly-once, after an abort that dropped the records of messages already finished: their
  // offsets must not commit, so every partition goes back to the group's committed offset and
  // its messages are processed again (into the next transaction).
  void Rewind() {
    rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(8);
    {
      MutexLock lock(mu_);
      for (auto& [key, t] : tracks_) {
        rd_kafka_topic_partition_list_add(parts, key.first.c_str(), key.second);
      }
    }
    rd_kafka_resp_err_t err =
        parts->cnt > 0 ? rd_kafka_committed(rk_, parts, 5000) : RD_KAFKA_RESP_ERR_NO_ERROR;
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR && parts->cnt > 0) {
      for (int i = 0; i < parts->cnt; ++i) {
        if (parts->elems[i].offset < 0) {  // nothing committed: where the group starts
          parts->elems[i].offset =
              config_.start == "latest" ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
        }
      }
      if (rd_kafka_error_t* e = rd_kafka_seek_partitions(rk_, parts, 5000); e != nullptr) {
        err = rd_kafka_error_code(e);
        rd_kafka_error_destroy(e);
      }
      MutexLock lock(mu_);
      for (auto& [key, t] : tracks_) {
        t = Track();
        t.generation = ++generation_;  // what is still reported for the old positions is ignored
      }
    }
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      log::Error("kafka source could not go back to its committed offsets after an abort",
                 {{"source", name_}, {"error", rd_kafka_err2str(err)}});
    }
    rd_kafka_topic_partition_list_destroy(parts);
  }

  // Exactly-once, the last step (the engine stopping, its workers done): commits what is
  // finished, or aborts if something is still in flight (those messages are processed again by
  // the next owner of their partitions).
  void FinishTransactions(Deadline deadline) {
    deadline = std::max(deadline, std::chrono::steady_clock::now() + std::chrono::seconds(2));
    auto give_up = [deadline] { return std::chrono::steady_clock::now() >= deadline; };
    bool idle = false;
    {
      MutexLock lock(mu_);
      idle = cv_.wait_until(lock.native(), deadline, [&] {
        mu_.AssertHeld();
        return inflight_ == 0;
      });
    }
    if (idle) {
      CommitTransaction(give_up);
    } else {
      txn_->Abort(/*drop_scoped=*/true, give_up);
    }
  }

  int64_t Inflight() {
    MutexLock lock(mu_);
    return inflight_;
  }

  void SetPaused(bool pause) {
    rd_kafka_topic_partition_list_t* parts = nullptr;
    if (rd_kafka_assignment(rk_, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR || parts == nullptr) {
      return;
    }
    if (pause) {
      rd_kafka_pause_partitions(rk_, parts);
    } else {
      rd_kafka_resume_partitions(rk_, parts);
    }
    rd_kafka_topic_partition_list_destroy(parts);
  }

  // Commits, per partition, the first offset not yet done (only where it moved). With
  // `only`, just those partitions.
  void CommitDone(bool sync, const rd_kafka_topic_partition_list_t* only = nullptr) {
    rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(8);
    {
      MutexLock lock(mu_);
      for (auto& [key, t] : tracks_) {
        if (only != nullptr &&
            rd_kafka_topic_partition_list_find(only, key.first.c_str(), key.second) == nullptr) {
          continue;
        }
        if (t.next_commit > t.committed) {
          rd_kafka_topic_partition_list_add(list, key.first.c_str(), key.second)->offset =
              t.next_commit;
          t.committed = t.next_commit;
        }
      }
    }
    if (list->cnt > 0) {
      commits_->Inc();
      rd_kafka_resp_err_t err = rd_kafka_commit(rk_, list, sync ? 0 : 1);
      // A synchronous commit is the last one (revocation, shutdown): there is no next commit
      // to catch up, so a failed one (the coordinator moving, say) is tried again a few times.
      for (int attempt = 1; sync && err != RD_KAFKA_RESP_ERR_NO_ERROR && attempt < 5; ++attempt) {
        commit_failures_->Inc();
        std::this_thread::sleep_for(std::chrono::milliseconds(100 * attempt));
        err = rd_kafka_commit(rk_, list, 0);
      }
      if (sync && err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        commit_failures_->Inc();
        log::Warn("kafka offset commit failed",
                  {{"source", name_}, {"error", rd_kafka_err2str(err)}});
      }
    }
    rd_kafka_topic_partition_list_destroy(list);
  }

  // A failed commit (the coordinator moving, say) is sent again with the next CommitDone:
  // its partitions no longer count as committed that far.
  void OnCommitted(rd_kafka_resp_err_t err, const rd_kafka_topic_partition_list_t* offsets) {
    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET || offsets == nullptr) {
      return;
    }
    bool failed = false;
    MutexLock lock(mu_);
    for (int i = 0; i < offsets->cnt; ++i) {
      const rd_kafka_topic_partition_t& p = offsets->elems[i];
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR && p.err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        continue;
      }
      failed = true;
      auto it = tracks_.find({p.topic, p.partition});
      if (it != tracks_.end() && it->second.committed >= p.offset) {
        it->second.committed = -1;  // unknown: commit next_commit again
      }
    }
    if (failed) {
      commit_failures_->Inc();
    }
  }

  static std::vector<int32_t> PartitionsOf(const rd_kafka_topic_partition_list_t* parts) {
    std::vector<int32_t> out;
    out.reserve(static_cast<size_t>(parts->cnt));
    for (int i = 0; i < parts->cnt; ++i) {
      out.push_back(parts->elems[i].partition);
    }
    return out;
  }

  void OnRebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err,
                   rd_kafka_topic_partition_list_t* parts) {
    bool cooperative = std::string_view(rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE";
    if (cooperative && parts->cnt == 0) {
      // A cooperative rebalance that changes nothing here (another member's partitions moved):
      // not counted, and nothing to drain.
      rd_kafka_error_t* e = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS
                                ? rd_kafka_incremental_assign(rk, parts)
                                : rd_kafka_incremental_unassign(rk, parts);
      if (e != nullptr) {
        rd_kafka_error_destroy(e);
      }
      return;
    }
    rebalances_->Inc();
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      {
        MutexLock lock(mu_);
        for (int i = 0; i < parts->cnt; ++i) {
          Track& t = tracks_[{parts->elems[i].topic, parts->elems[i].partition}];
          t = Track();
          t.generation = ++generation_;
        }
        partitions_gauge_->Set(static_cast<double>(tracks_.size()));
      }
      log::Info("kafka partitions assigned",
                {{"source", name_}, {"partitions", std::to_string(parts->cnt)}});
      if (listener_ != nullptr) {
        listener_->Assigned(PartitionsOf(parts));
      }
      if (cooperative) {
        rd_kafka_error_t* e = rd_kafka_incremental_assign(rk, parts);
        if (e != nullptr) {
          rd_kafka_error_destroy(e);
        }
      } else {
        rd_kafka_assign(rk, parts);
      }
      return;
    }
    // Revoked: let the partitions' in-flight messages finish (not at shutdown: what is in
    // flight then is abandoned), commit, and only then let go.
    auto in_flight = [&] {
      mu_.AssertHeld();  // called under the lock below
      size_t n = 0;
      for (int i = 0; i < parts->cnt; ++i) {
        auto it = tracks_.find({parts->elems[i].topic, parts->elems[i].partition});
        if (it != tracks_.end()) {
          n += it->second.pending.size();
        }
      }
      return n;
    };
    // Exactly-once: a lost assignment (this member was thrown out of the group) may already
    // belong to another instance, so nothing of it may commit.
    bool transactional = txn_ != nullptr && txn_->Active() && !closing_;
    bool lost = transactional && rd_kafka_assignment_lost(rk) != 0;
    // (Fenced: nothing of these partitions can commit here any more, and the messages in
    // flight were cancelled, left to the next owner: nothing to wait for.)
    bool fenced = txn_ != nullptr && !txn_->Active();
    bool drained = true;
    if (!closing_ && !lost && !fenced) {
      MutexLock lock(mu_);
      auto until = std::chrono::steady_clock::now() + kRevokeWait;
      // (Exactly-once: a transaction that needs an abort, or whose producer was fenced, will
      // not finish its messages; the abort below cancels them.)
      size_t last = in_flight();
      auto moved = std::chrono::steady_clock::now();
      while (in_flight() > 0 && !(transactional && txn_->NeedsAbort()) &&
             std::chrono::steady_clock::now() < until) {
        cv_.wait_for(lock.native(), std::chrono::milliseconds(20));
        if (auto now = std::chrono::steady_clock::now(); in_flight() != last) {
          last = in_flight();
          moved = now;
        } else if (transactional && now - moved >= kStalledTransaction) {
          moved = now;  // (as in CommitTransaction)
          lock.Unlock();
          txn_->CheckAbortable();
          lock.Lock();
        }
      }
      if (in_flight() > 0) {
        drained = false;
        log::Warn("kafka partitions revoked with messages still in flight; the next owner may "
                  "process them again",
                  {{"source", name_}, {"in_flight", std::to_string(in_flight())}});
      }
    }
    if (txn_ == nullptr) {
      CommitDone(/*sync=*/true, parts);
    } else if (transactional) {
      auto until = std::chrono::steady_clock::now() + kRevokeWait;
      auto give_up = [until] { return std::chrono::steady_clock::now() >= until; };
      if (lost || !drained) {
        if (lost) {
          log::Warn(
              "kafka partitions lost (this member was dropped from the group); aborting "
              "the open transaction, its messages are left to their partitions' new owner",
              {{"source", name_}});
        }
        txn_->Abort(/*drop_scoped=*/true, give_up);
        taken_ = 0;
      } else {
        CommitTransaction(give_up);
      }
    }
    {
      MutexLock lock(mu_);
      for (int i = 0; i < parts->cnt; ++i) {
        tracks_.erase({parts->elems[i].topic, parts->elems[i].partition});
      }
      partitions_gauge_->Set(static_cast<double>(tracks_.size()));
      // A message given up with them (cancelled by the abort of a lost assignment) concerns
      // only these partitions (eager assignment: all of them), not the next assignment's.
      abandoned_ = false;
    }
    if (txn_ != nullptr) {  // (so do rewinds: the next assignment starts afresh)
      rewinds_ = 0;
      rewind_until_ = {};
      rewind_paused_ = false;
      rewinding_.store(false, std::memory_order_relaxed);
    }
    log::Info("kafka partitions revoked",
              {{"source", name_}, {"partitions", std::to_string(parts->cnt)}});
    if (listener_ != nullptr) {
      listener_->Revoked(PartitionsOf(parts), rd_kafka_assignment_lost(rk) != 0);
    }
    if (cooperative) {
      rd_kafka_error_t* e = rd_kafka_incremental_unassign(rk, parts);
      if (e != nullptr) {
        rd_kafka_error_destroy(e);
      }
    } else {
      rd_kafka_assign(rk, nullptr);
    }
  }

  void OnError(rd_kafka_resp_err_t err, const char* reason) {
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
      brokers_down_.store(true, std::memory_order_relaxed);
    } else if (err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__RESOLVE) {
      // One broker; others may be fine.
    }
    static log::RateLimiter limiter(5);
    if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
      log::Warn("kafka consumer error", {{"source", name_},
                                         {"error", rd_kafka_err2name(err)},
                                         {"reason", reason},
                                         {"suppressed_before", std::to_string(suppressed)}});
    }
  }

  KafkaSourceConfig config_;
  std::string name_;
  const Clock& clock_;
  PartitionListener* listener_;  // (the cluster's ingress source only)
  Ingest* ingest_ = nullptr;
  rd_kafka_t* rk_ = nullptr;
  std::jthread thread_;
  Mutex mu_;
  std::condition_variable cv_;
  std::map<PartitionKey, Track> tracks_ GNOMON_GUARDED_BY(mu_);
  int64_t inflight_ GNOMON_GUARDED_BY(mu_) = 0;
  uint64_t generation_ GNOMON_GUARDED_BY(mu_) = 0;
  bool abandoned_ GNOMON_GUARDED_BY(mu_) = false;  // a message was given up since the last commit
  std::atomic<bool> brokers_down_{false};
  std::atomic<bool> closing_{false};
  std::shared_ptr<TxnProducer> txn_;  // exactly-once only
  int64_t taken_ = 0;                 // messages taken since the last commit (poll thread)
  // Exactly-once rewinds (CommitTransaction) in a row, and until when the partitions wait
  // (poll thread); rewinding_: three or more in a row, not ready.
  int rewinds_ = 0;
  std::chrono::steady_clock::time_point rewind_until_{};
  bool rewind_paused_ = false;
  std::atomic<bool> rewinding_{false};
  std::chrono::steady_clock::time_point full_since_{};  // poll thread only
  Counter* commits_;
  Counter* commit_failures_;
  Counter* pauses_;
  Counter* rebalances_;
  Counter* rewinds_total_;
  Gauge* lag_gauge_;
  Gauge* partitions_gauge_;
};

void KafkaAck::Ack() { src_->Done(key_, offset_, generation_, true); }
void KafkaAck::Abandon() { src_->Done(key_, offset_, generation_, false); }
const void* KafkaAck::Scope() const { return src_->scope(); }

class KafkaSourceFactory final : public TypedSourceFactory<KafkaSourceConfig> {
 public:
  std::string_view schema() const override { return "sources/kafka.json"; }
  void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const override {
    auto rule = DeviceRule::Parse(cfg.GetString("device", "key"));
    if (!rule.ok()) {
      errors.Add(cfg.Get("device"), path + ".device", rule.status().message());
    }
    CheckProperties(cfg, path, errors);
  }
  Result<KafkaSourceConfig> Parse(const ConfigValue& cfg, const PluginContext& ctx) const override {
    KafkaSourceConfig c;
    GNOMON_ASSIGN_OR_RETURN(c.settings, Settings(*ctx.connection, cfg));
    c.topics = cfg.GetStrings("topics");
    c.group = cfg.GetString("group");
    GNOMON_ASSIGN_OR_RETURN(c.device, DeviceRule::Parse(cfg.GetString("device", "key")));
    c.start = cfg.GetString("start", "earliest");
    c.max_inflight = cfg.GetInt("max_inflight", 5000);
    c.commit_interval_ms = cfg.GetInt("commit_interval_ms", 1000);
    c.max_payload_bytes = static_cast<size_t>(cfg.GetInt("max_payload_bytes", 1 << 20));
    c.topic_header = cfg.GetString("topic_header", "");
    c.reserved = ctx.reserved_topic_prefixes;
    c.exactly_once = cfg.GetString("delivery", "at_least_once") == "exactly_once";
    if (c.exactly_once) {
      ConfigValue none;
      none.SetKind(ConfigValue::Kind::kMap);
      GNOMON_ASSIGN_OR_RETURN(c.producer_settings, Settings(*ctx.connection, none));
      c.transaction_ms = cfg.GetInt("transaction_ms", 100);
      c.transaction_messages = cfg.GetInt("transaction_messages", 10000);
      c.transaction_timeout_ms = cfg.GetInt("transaction_timeout_ms", 10000);
      c.transactional_id = cfg.GetString("transactional_id", "");
      if (c.transactional_id.empty()) {
        char host[256] = {};
        gethostname(host, sizeof host - 1);
        c.transactional_id = fmt::format("gnomon-{}-{}-{}", c.group, ctx.name, host);
      }
    }
    return c;
  }
  Result<std::unique_ptr<Source>> CreateTyped(KafkaSourceConfig c, PluginContext& ctx) override {
    return std::unique_ptr<Source>(new KafkaSource(std::move(c), ctx));
  }
};

}  // namespace

std::unique_ptr<SinkFactory> NewKafkaSinkFactory();

}  // namespace gnomon::connectors::kafka

namespace gnomon::connectors {

void RegisterKafkaConnector(Registry& registry) {
  registry.AddConnection("kafka", "connections/kafka.json");
  registry.AddSource("kafka", std::make_unique<kafka::KafkaSourceFactory>());
  registry.AddSink("kafka", kafka::NewKafkaSinkFactory());
}

}  // namespace gnomon::connectors

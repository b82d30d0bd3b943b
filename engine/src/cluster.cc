// SPDX-License-Identifier: Apache-2.0
// The engine in a cluster (docs/cluster.md): this instance's sources forward their messages to
// the ingress topic through a ClusterIngress; the ingress consumer, in the cluster's consumer
// group, takes the partitions Kafka assigns this instance and feeds their messages to the
// workers as any Kafka source does (offsets committed after the effects are durable).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "api_error.h"
#include "call_book.h"
#include "cluster_ingress.h"
#include "engine_impl.h"
#include "forward.h"
#include "gnomon/core/json.h"
#include "gnomon/core/log.h"
#include "gnomon/core/partition.h"
#include "shadow_owner.h"
#include "state_owner.h"

namespace gnomon::engine {

namespace {
// Members announce themselves this often (and at once when their partitions change); one not
// heard of for kMemberStaleMs is not forwarded to.
constexpr int64_t kAnnounceMs = 5000;
constexpr int64_t kMemberStaleMs = 15000;
// A standby reads the change log's tail of its partitions this often.
constexpr int64_t kStandbyRoundMs = 1000;
}  // namespace

Status Engine::Impl::InitCluster() {
  const AppConfig::Cluster& cl = config_.cluster;
  if (!cl.enabled || options_.mode != Mode::kRun) {
    return {};
  }
  SinkFactory* sink_factory = registry_.sink("kafka");
  SourceFactory* source_factory = registry_.source("kafka");
  if (sink_factory == nullptr || source_factory == nullptr) {
    return FailedPrecondition("cluster: this build has no kafka connector");
  }
  const std::string topic = cl.IngressTopic();
  cluster_ingress_ =
      std::make_unique<ClusterIngress>(*this, topic, cl.partitions, source_names_, metrics_);

  // The producer of the ingress records (created with P partitions if missing; main() refused
  // to start if it exists with another count).
  ConfigValue out;
  out.SetKind(ConfigValue::Kind::kMap);
  out.AddField("name", ConfigValue::Scalar("cluster-ingress"));
  out.AddField("topic", ConfigValue::Scalar(topic));
  ConfigValue create;
  create.SetKind(ConfigValue::Kind::kMap);
  create.AddField("partitions", ConfigValue::Scalar(std::to_string(cl.partitions)));
  out.AddField("create", std::move(create));
  PluginContext octx{metrics_,         *cluster_ingress_, clock_,        config_.data_dir,
                     config_.base_dir, "cluster-ingress", cl.connection, 1};
  GNOMON_ASSIGN_OR_RETURN(cluster_sink_, sink_factory->Create(out, octx));
  cluster_ingress_->SetSink(cluster_sink_.get());

  // The members topic: this instance's announcements go out through a producer of its own.
  class MembersReporter final : public DeliveryReporter {
   public:
    void Report(Record& r, const Status& st) override {
      if (!st.ok() && st.code() != StatusCode::kCancelled) {
        static log::RateLimiter limiter(2);
        if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
          log::Warn("cluster: an announcement to the members topic failed (sent again soon)",
                    {{"topic", r.topic},
                     {"error", st.message()},
                     {"suppressed_before", std::to_string(suppressed)}});
        }
      }
    }
  };
  members_ = std::make_unique<ClusterMembers>(cl.instance_id, kMemberStaleMs);
  // (A quarter of the API's waiting threads per owner, half in all: docs/cluster.md.)
  int threads = static_cast<int>(std::max<int64_t>(1, config_.api.handler_threads));
  forward_gate_ = std::make_unique<ForwardGate>(std::max(1, threads / 4), std::max(1, threads / 2));
  // Forwards to https:// members: their certificates checked against cluster.tls_ca, this
  // instance's API certificate shown when they ask for one (docs/cluster.md#rest-anywhere).
  auto tls = ForwardTls::Make(cl.tls_ca, config_.api.tls_cert, config_.api.tls_key);
  if (!tls.ok()) {
    return tls.status().WithContext("cluster: forwarding to other instances");
  }
  forward_tls_ = std::move(tls).value();
  members_reporter_ = std::make_unique<MembersReporter>();
  ConfigValue mout;
  mout.SetKind(ConfigValue::Kind::kMap);
  mout.AddField("name", ConfigValue::Scalar("cluster-members"));
  mout.AddField("topic", ConfigValue::Scalar(cl.MembersTopic()));
  ConfigValue mcreate;
  mcreate.SetKind(ConfigValue::Kind::kMap);
  mcreate.AddField("partitions", ConfigValue::Scalar("1"));
  mcreate.AddField("compact", ConfigValue::Scalar("true"));
  mout.AddField("create", std::move(mcreate));
  PluginContext mctx{metrics_,         *members_reporter_, clock_,        config_.data_dir,
                     config_.base_dir, "cluster-members",  cl.connection, 1};
  GNOMON_ASSIGN_OR_RETURN(members_sink_, sink_factory->Create(mout, mctx));
  if (!options_.follow_topic) {
    return FailedPrecondition("cluster: members need a topic follower (EngineOptions)");
  }

  // The consumer of this instance's partitions of it.
  ConfigValue in;
  in.SetKind(ConfigValue::Kind::kMap);
  in.AddField("name", ConfigValue::Scalar("cluster"));
  in.AddField("topics", ConfigValue::Scalar(topic));
  in.AddField("group", ConfigValue::Scalar(cl.group));
  in.AddField("device", ConfigValue::Scalar("key"));
  in.AddField("topic_header", ConfigValue::Scalar("gnomon-source-topic"));
  // Static membership: a restarted instance (same id, back within the session timeout) takes
  // its partitions back without moving anyone else's. Cooperative-sticky: a rebalance moves
  // only the partitions that change owner; the others keep running.
  ConfigValue props;
  props.SetKind(ConfigValue::Kind::kMap);
  props.AddField("group.instance.id", ConfigValue::Scalar(cl.instance_id));
  props.AddField("partition.assignment.strategy", ConfigValue::Scalar("cooperative-sticky"));
  in.AddField("properties", std::move(props));
  PluginContext ictx{metrics_,         *this,     clock_,        config_.data_dir,
                     config_.base_dir, "cluster", cl.connection, 1};
  ictx.shared = &shared_;
  // Ownership follows the ingress partitions this instance is given.
  owned_ = std::make_unique<std::atomic<uint8_t>[]>(static_cast<size_t>(cl.partitions));
  for (int32_t p = 0; p < cl.partitions; ++p) {
    owned_[static_cast<size_t>(p)].store(kNotOwned, std::memory_order_relaxed);
  }
  class Listener final : public PartitionListener {
   public:
    explicit Listener(Impl& e) : e_(e) {}
    void Assigned(const std::vector<int32_t>& partitions) override {
      e_.AssignPartitions(partitions);
    }
    void Revoked(const std::vector<int32_t>& partitions, bool lost) override {
      e_.RevokePartitions(partitions, lost);
    }

   private:
    Impl& e_;
  };
  partition_listener_ = std::make_unique<Listener>(*this);
  ictx.partitions = partition_listener_.get();
  InitClusterMetrics();
  // Connections to owners kept open between forwards: as many per owner as may wait on it.
  forward_connections_ = std::make_unique<ForwardConnections>(
      static_cast<size_t>(std::max<int64_t>(1, config_.api.handler_threads / 4)),
      std::chrono::seconds(20), cluster_forward_opened_, cluster_forward_kept_);
  if (shadow_store_ && !options_.read_topic) {
    return FailedPrecondition("cluster: shadows need a change-log reader (EngineOptions)");
  }
  ictx.reserved_topic_prefixes = config_.reserved_topic_prefixes;
  GNOMON_ASSIGN_OR_RETURN(auto src, source_factory->Create(in, ictx));
  cluster_source_ = sources_.size();
  sources_.push_back(std::move(src));
  source_names_.emplace_back("cluster");
  source_counters_["cluster"] = metrics_.GetCounter(
      "gnomon_source_messages_total", "Messages taken in, by source", {{"source", "cluster"}});
  log::Info("cluster member", {{"cluster", cl.name},
                               {"instance", cl.instance_id},
                               {"group", cl.group},
                               {"partitions", std::to_string(cl.partitions)},
                               {"ingress", topic}});
  return {};
}

void Engine::Impl::InitClusterMetrics() {
  cluster_owned_ =
      metrics_.GetGauge("gnomon_cluster_partitions_owned",
                        "Ingress partitions this instance owns (restored and processing)");
  auto restored = [&](const char* what) {
    return metrics_.GetCounter("gnomon_cluster_restored_total",
                               "Change-log records read and shadows restored for partitions this "
                               "instance was given",
                               {{"what", what}});
  };
  cluster_restored_records_ = restored("records");
  cluster_restored_shadows_ = restored("shadows");
  cluster_restore_corrupt_ = metrics_.GetCounter(
      "gnomon_cluster_changelog_corrupt_total",
      "Change-log records skipped at a restore (not a shadow document, or in the wrong "
      "partition)");
  cluster_restore_failures_ = metrics_.GetCounter(
      "gnomon_cluster_restore_failures_total",
      "Restores of a partition that failed (Kafka or the store); each is tried again");
  cluster_forwarded_ =
      metrics_.GetCounter("gnomon_cluster_forwarded_total",
                          "API requests for another instance's device, forwarded to it, by outcome",
                          {{"outcome", "answered"}});
  cluster_forward_failed_ =
      metrics_.GetCounter("gnomon_cluster_forwarded_total",
                          "API requests for another instance's device, forwarded to it, by outcome",
                          {{"outcome", "unreachable"}});
  cluster_forward_busy_ =
      metrics_.GetCounter("gnomon_cluster_forwarded_total",
                          "API requests for another instance's device, forwarded to it, by outcome",
                          {{"outcome", "busy"}});
  cluster_forward_opened_ = metrics_.GetCounter(
      "gnomon_cluster_forward_connections_total",
      "Forwards by the connection to the owner they went on: opened for them, or kept open from "
      "an earlier forward",
      {{"connection", "opened"}});
  cluster_forward_kept_ = metrics_.GetCounter(
      "gnomon_cluster_forward_connections_total",
      "Forwards by the connection to the owner they went on: opened for them, or kept open from "
      "an earlier forward",
      {{"connection", "kept"}});
  cluster_standby_partitions_ = metrics_.GetGauge(
      "gnomon_cluster_standby_partitions",
      "Partitions this instance keeps a standby copy of (cluster.standby_replicas)");
  cluster_standby_records_ = metrics_.GetCounter(
      "gnomon_cluster_standby_records_total",
      "Change-log records read into standby copies of other instances' partitions");
  cluster_refused_ = metrics_.GetCounter(
      "gnomon_cluster_not_owner_total",
      "Shadow requests refused (503) because another instance owns the device or its partition "
      "is moving");
}

int32_t Engine::Impl::PartitionOf(std::string_view device) const {
  return KafkaPartitionOf(device, config_.cluster.partitions);
}

bool Engine::Impl::InPartitions(const std::vector<int32_t>& partitions,
                                std::string_view device) const {
  return std::ranges::find(partitions, PartitionOf(device)) != partitions.end();
}

bool Engine::Impl::OwnsDevice(std::string_view device) const {
  if (!owned_) {
    return true;
  }
  return owned_[static_cast<size_t>(PartitionOf(device))].load(std::memory_order_acquire) == kOwned;
}

HttpResponse Engine::Impl::NotOwnedResponse(std::string_view device, std::string why,
                                            std::string_view owner) const {
  cluster_refused_->Inc();
  int32_t p = PartitionOf(device);
  bool restoring = owned_[static_cast<size_t>(p)].load(std::memory_order_acquire) == kRestoring;
  if (why.empty()) {
    why = restoring ? fmt::format("partition {} of {} is being restored here; try again", p, device)
                    : fmt::format(
                          "{} (partition {}) is owned by another instance of cluster {}, "
                          "and none is known to own it now; try again",
                          device, p, config_.cluster.name);
  }
  HttpResponse out = ErrorResponse(ApiError(503, restoring ? "PARTITION_MOVING" : "NOT_OWNER", why),
                                   clock_.NowMs() / 1000);
  out.headers.emplace_back("Retry-After", "1");
  if (!owner.empty()) {
    out.headers.emplace_back("X-Gnomon-Owner", std::string(owner));
  }
  return out;
}

HttpResponse Engine::Impl::ForwardToOwner(const HttpRequest& req, std::string_view device) {
  int32_t p = PartitionOf(device);
  if (owned_[static_cast<size_t>(p)].load(std::memory_order_acquire) == kRestoring) {
    return NotOwnedResponse(device);
  }
  std::optional<ClusterMember> owner =
      members_ ? members_->OwnerOf(p, clock_.NowMs()) : std::nullopt;
  if (!req.forwarded_by.empty()) {
    // (Never forwarded twice: the two instances disagree on who owns it while it moves.)
    return NotOwnedResponse(
        device,
        fmt::format("{} (partition {}) is not owned here either ({} forwarded the request to "
                    "{}); it is moving, try again",
                    device, p, req.forwarded_by, config_.cluster.instance_id));
  }
  if (!owner || owner->api.empty()) {
    return NotOwnedResponse(device);
  }
  auto ticket = forward_gate_->Enter(owner->instance);
  if (!ticket) {
    cluster_forward_busy_->Inc();
    return NotOwnedResponse(
        device,
        fmt::format("{} (partition {}) is owned by instance {}, which has not answered the "
                    "requests already forwarded to it; try again",
                    device, p, owner->instance),
        owner->api);
  }
  auto answer = ForwardRequest(owner->api, req, config_.cluster.instance_id, {}, forward_tls_.get(),
                               forward_connections_.get());
  if (!answer.ok()) {
    cluster_forward_failed_->Inc();
    static log::RateLimiter limiter(5);
    if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
      log::Warn("cluster: a request could not be forwarded to its owner",
                {{"device", std::string(device)},
                 {"owner", owner->instance},
                 {"error", answer.status().message()},
                 {"suppressed_before", std::to_string(suppressed)}});
    }
    return NotOwnedResponse(
        device,
        fmt::format("{} (partition {}) is owned by instance {}, which could not be reached: {}",
                    device, p, owner->instance, answer.status().message()),
        owner->api);
  }
  cluster_forwarded_->Inc();
  answer->headers.emplace_back("X-Gnomon-Served-By", owner->instance);
  return std::move(*answer);
}

void Engine::Impl::DropPartitionsOnWorkers(const std::vector<int32_t>& partitions, bool schedule) {
  auto done = std::make_shared<std::latch>(static_cast<std::ptrdiff_t>(workers_.size()));
  for (auto& w : workers_) {
    if (!w->queue.PushForce(PartitionDrop{partitions, done, schedule})) {
      done->count_down();  // stopped: nothing runs there any more
    }
  }
  done->wait();
  if (schedule) {
    return;
  }
  committed_.EraseIf([&](const std::string& key) {
    return InPartitions(partitions, std::string_view(key.data(), key.find('\0')));
  });
}

void Engine::Impl::DropPartitions(Worker& w, PartitionDrop& d) {
  auto mine = [&](std::string_view device) { return InPartitions(d.partitions, device); };
  if (d.schedule) {
    // Restored and owned: their rows due before the worker's horizon into its index (later
    // ones come in with StateOwner::Extend as time moves on).
    if (w.calls) {
      // Their calls, as their last owner stored them: unfinished ones go on here.
      auto calls = w.shadows->reader().Calls();
      if (!calls.ok()) {
        log::Error("cluster: the service calls of restored partitions could not be read",
                   {{"partitions", fmt::format("{}", fmt::join(d.partitions, ","))},
                    {"error", calls.status().message()}});
      } else {
        for (const auto& [thing, stored] : *calls) {
          if (mine(thing) && OwnerOf(thing) == w.index) {
            if (auto c = ServiceCall::FromStored(stored); c.ok()) {
              w.calls->Restore(std::move(c).value());
            }
          }
        }
      }
    }
    if (w.states) {
      Status st = w.shadows->reader().Due(
          1, w.states->covered(), [&](std::string_view device, std::string_view rule, int64_t due) {
            if (mine(device) && OwnerOf(device) == w.index) {
              w.states->Schedule(StateKey(rule, device), due);
            }
          });
      if (!st.ok()) {
        // (Their rows are scheduled again when a message of their device uses them.)
        log::Error("cluster: the rule timers of restored partitions could not be read",
                   {{"partitions", fmt::format("{}", fmt::join(d.partitions, ","))},
                    {"error", st.message()}});
      }
    }
    d.done->count_down();
    return;
  }
  if (w.shadows) {
    w.shadows->DropThings(mine);
  }
  if (w.states) {
    w.states->DropDevices(mine);
  }
  if (w.calls) {
    w.calls->DropThings(mine);
  }
  d.done->count_down();
}

int64_t Engine::Impl::OpenWindowsIn(const std::vector<int32_t>& partitions) {
  shadow_store_->Flush();
  int64_t open = 0;
  auto reader = shadow_store_->NewReader();
  Status st = reader.ok() ? (*reader)->StateRows([&](std::string_view device, std::string_view,
                                                     std::string_view windows) {
    if (!windows.empty() && InPartitions(partitions, device)) {
      open += rules::OpenWindows(windows);
    }
  })
                          : reader.status();
  if (!st.ok()) {
    log::Warn("cluster: the windows of moved partitions could not be counted",
              {{"error", st.message()}});
  }
  return open;
}

void Engine::Impl::AssignPartitions(const std::vector<int32_t>& partitions) {
  for (int32_t p : partitions) {
    owned_[static_cast<size_t>(p)].store(kRestoring, std::memory_order_release);
  }
  if (shadow_store_) {
    DropPartitionsOnWorkers(partitions);  // (nothing should be there; a rule may have read one)
    auto started = std::chrono::steady_clock::now();
    // The standby copies of these partitions are theirs now: read from where they are.
    std::map<int32_t, int64_t> positions;
    size_t from_standby = 0;
    {
      MutexLock lock(standby_mu_);  // (after a round in flight)
      for (int32_t p : partitions) {
        if (auto it = standby_.find(p); it != standby_.end()) {
          positions[p] = it->second.position;
          standby_.erase(it);
          ++from_standby;
        }
      }
      cluster_standby_partitions_->Set(static_cast<double>(standby_.size()));
      MutexLock view(cluster_mu_);
      standby_view_ = standby_;
    }
    auto wait = std::chrono::milliseconds(500);
    while (true) {
      size_t records = 0;
      size_t shadows = 0;
      // First the change log's partitions are taken over: whoever wrote them before (an owner
      // that stalled past its session, say) is fenced and what it left open aborted, so the
      // log read next is final for them.
      Status st = changelog_writer_ != nullptr ? changelog_writer_->Acquire(partitions) : Status();
      if (st.ok()) {
        // (A failed read leaves `positions` as it was: the next try reads the same again.)
        st = RestorePartitions(partitions, &positions, &records, &shadows);
      }
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::steady_clock::now() - started)
                    .count();
      {
        MutexLock lock(cluster_mu_);
        last_restore_ = RestoreInfo{partitions,
                                    records,
                                    shadows,
                                    from_standby,
                                    ms,
                                    clock_.NowMs(),
                                    st.ok() ? "" : st.message()};
      }
      restore_failing_.store(!st.ok());
      if (st.ok()) {
        log::Info("cluster partitions restored",
                  {{"partitions", fmt::format("{}", fmt::join(partitions, ","))},
                   {"records", std::to_string(records)},
                   {"shadows", std::to_string(shadows)},
                   {"from_standby", std::to_string(from_standby)},
                   {"ms", std::to_string(ms)}});
        break;
      }
      cluster_restore_failures_->Inc();
      log::Error(
          "cluster partitions could not be restored; trying again",
          {{"partitions", fmt::format("{}", fmt::join(partitions, ","))}, {"error", st.message()}});
      if (stopped_.load()) {
        return;  // stopping: they stay not owned (nothing of them is processed here)
      }
      std::this_thread::sleep_for(wait);
      wait = std::min(wait * 2, std::chrono::milliseconds(5000));
    }
  }
  if (shadow_store_) {
    windows_open_at_start_ += OpenWindowsIn(partitions);
  }
  for (int32_t p : partitions) {
    owned_[static_cast<size_t>(p)].store(kOwned, std::memory_order_release);
  }
  if (shadow_store_) {
    // (Owned first: a timer tick in between would skip their rows as not owned.)
    DropPartitionsOnWorkers(partitions, /*schedule=*/true);
  }
  cluster_owned_->Increment(static_cast<double>(partitions.size()));
  announce_now_.store(true);
}

void Engine::Impl::RevokePartitions(const std::vector<int32_t>& partitions, bool lost) {
  size_t were_owned = 0;
  for (int32_t p : partitions) {
    if (owned_[static_cast<size_t>(p)].exchange(kNotOwned, std::memory_order_acq_rel) == kOwned) {
      ++were_owned;
    }
  }
  cluster_owned_->Decrement(static_cast<double>(were_owned));
  announce_now_.store(true);
  if (!shadow_store_ || stopped_.load()) {
    // (Stopping: the workers are done and the store keeps its shadows; whoever is given these
    // partitions next restores them from the change log, this instance too.)
    return;
  }
  // Requests already on a worker finish first; whatever reaches a worker after this is refused.
  DropPartitionsOnWorkers(partitions);
  // Writes no ingress message waits for (a timer's firing, a REST write) durable, so their
  // change-log records are sent before the writers are released.
  shadow_store_->Flush();
  // Their change-log records out before the next owner restores (the messages' own records
  // are, since their offsets were committed only after them): Release commits what their
  // writers hold (lost: throws it away; the next owner fenced them already).
  if (changelog_writer_ != nullptr) {
    changelog_writer_->Release(partitions, lost);
  }
  // (Under the standby lock: a standby round may have started copying them the moment they
  // were not owned here, while the workers still wrote them; such a copy is reset with the
  // rest and read again from the beginning.)
  MutexLock standby_lock(standby_mu_);
  for (int32_t p : partitions) {
    standby_.erase(p);
  }
  windows_open_at_start_ -= OpenWindowsIn(partitions);
  if (Status st = PurgePartitions(partitions, {}); !st.ok()) {
    log::Warn(
        "cluster: the store kept shadows of partitions given away (reset at their next "
        "restore)",
        {{"error", st.message()}});
  }
  if (lost) {
    log::Warn(
        "cluster partitions lost (this instance was dropped from the group): their "
        "devices are another instance's now",
        {{"partitions", fmt::format("{}", fmt::join(partitions, ","))}});
  }
}

Status Engine::Impl::RestorePartitions(const std::vector<int32_t>& partitions,
                                       std::map<int32_t, int64_t>* positions, size_t* records,
                                       size_t* shadows, bool standby) {
  // Read from the beginning: the store's shadows of them the log does not have are reset.
  std::vector<int32_t> whole;
  for (int32_t p : partitions) {
    if (!positions->contains(p)) {
      whole.push_back(p);
    }
  }
  Counter* counted = standby ? cluster_standby_records_ : cluster_restored_records_;
  // The shadows (ShadowKey) and rule rows (their change-log keys) read.
  std::unordered_set<std::string> seen;
  const uint64_t failures = shadow_store_->stats().failures;
  const std::string reset = shadow::ShadowDocument().StoredJson();
  const size_t max_pending = config_.shadows.max_pending_writes;
  auto read = options_.read_topic(
      *config_.shadows.changelog_connection, config_.shadows.changelog_topic,
      [&](int32_t partition, std::string_view key, const std::string* value) {
        ++*records;
        counted->Inc();
        size_t slash = key.find('/');
        std::string thing(key.substr(0, slash));
        std::string name(slash == std::string_view::npos ? "" : key.substr(slash + 1));
        // A record that is not a shadow of this partition: skipped, counted, named.
        auto skip = [&](std::string_view why) {
          cluster_restore_corrupt_->Inc();
          static log::RateLimiter limiter(5);
          if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
            log::Warn("change-log record skipped",
                      {{"topic", config_.shadows.changelog_topic},
                       {"partition", std::to_string(partition)},
                       {"key", std::string(key)},
                       {"error", std::string(why)},
                       {"suppressed_before", std::to_string(suppressed)}});
          }
        };
        if (thing.empty() || PartitionOf(thing) != partition) {
          skip("its key is not a device of the partition");
          return;
        }
        if (auto call = ParseCallChangelogKey(key)) {
          // A service call of the thing, as its owner last stored it.
          if (call->first != thing || call->second.empty()) {
            skip("its key is not a service call of a device");
            return;
          }
          std::string stored;  // (empty: forgotten)
          if (value != nullptr) {
            auto c = ServiceCall::FromStored(*value);
            if (!c.ok() || c->thing != thing || c->id != call->second) {
              skip(c.ok() ? "the call is not the one its key names" : c.status().message());
              return;
            }
            stored = *value;
          }
          seen.insert(std::string(key));
          shadow_store_->WriteCall(std::move(thing), std::string(call->second), std::move(stored),
                                   nullptr);
          return;
        }
        if (auto row = shadow::ParseStateChangelogKey(key)) {
          // A rule's row of the device (ctx.state, timers, windows).
          shadow::RuleState state;  // (empty: deleted)
          if (value != nullptr) {
            auto got = shadow::RuleState::FromChangelog(*value);
            if (!got.ok()) {
              skip(got.status().message());
              return;
            }
            state = std::move(got).value();
          }
          if (row->first != thing || row->second.empty()) {
            skip("its key is not a rule row of a device");
            return;
          }
          seen.insert(std::string(key));
          shadow_store_->WriteState(std::string(row->second), std::move(thing), std::move(state),
                                    nullptr);
          if ((*records & 1023) == 0) {
            (void)shadow_store_->WaitPendingAtMost(max_pending, std::chrono::seconds(60));
          }
          return;
        }
        std::string stored;
        if (value == nullptr) {
          stored = reset;  // deleted
        } else if (auto s = shadow::ShadowDocument::StoredFromChangelog(*value); s.ok()) {
          stored = std::move(s).value();  // (no document built: the owner builds it when read)
        } else {
          skip(s.status().message());
          return;
        }
        seen.insert(ShadowKey(thing, name));
        shadow_store_->Write(std::move(thing), std::move(name), std::move(stored), nullptr);
        if ((*records & 1023) == 0) {
          (void)shadow_store_->WaitPendingAtMost(max_pending, std::chrono::seconds(60));
        }
      },
      &partitions,
      [this, standby] { return stopped_.load() || (standby && standby_stopping_.load()); },
      positions);
  if (!read.ok()) {
    return read.status();
  }
  if (!whole.empty()) {
    GNOMON_RETURN_IF_ERROR(PurgePartitions(whole, seen));
  }
  shadow_store_->Flush();
  if (shadow_store_->stats().failures != failures) {
    return Unavailable("the shadow store could not save the restored shadows");
  }
  *shadows = static_cast<size_t>(std::ranges::count_if(
      seen, [](const std::string& k) { return k.find('\0') != std::string::npos; }));
  if (!standby) {
    cluster_restored_shadows_->Inc(static_cast<double>(*shadows));
  }
  return {};
}

void Engine::Impl::StandbyRound() {
  const int64_t now = clock_.NowMs();
  if (!members_->Fresh(now)) {
    return;  // (its own announcements do not come back: Kafka is away; the copies stay)
  }
  std::vector<int32_t> claimed;
  std::vector<int32_t> mine =
      members_->StandbyPartitions(config_.cluster.standby_replicas, now, &claimed);
  MutexLock lock(standby_mu_);
  // The copies of partitions no fresh member claims are kept and followed: their owner is gone
  // (killed, its last word gone stale before Kafka gave the partition away), and the copy is
  // what its next owner, maybe this instance, needs.
  std::vector<int32_t> want;
  for (int32_t p = 0; p < config_.cluster.partitions; ++p) {
    bool keep = std::ranges::binary_search(mine, p) ||
                (standby_.contains(p) && !std::ranges::binary_search(claimed, p));
    if (keep && owned_[static_cast<size_t>(p)].load(std::memory_order_acquire) == kNotOwned) {
      want.push_back(p);
    }
  }
  // Copies no longer wanted (the ring changed) are reset in the store; one of a partition just
  // given here is left to its restore.
  std::vector<int32_t> dropped;
  for (const auto& [p, copy] : standby_) {
    if (!std::ranges::binary_search(want, p) &&
        owned_[static_cast<size_t>(p)].load(std::memory_order_acquire) == kNotOwned) {
      dropped.push_back(p);
    }
  }
  for (int32_t p : dropped) {
    standby_.erase(p);
  }
  if (!dropped.empty()) {
    if (Status st = PurgePartitions(dropped, {}); !st.ok()) {
      log::Warn("cluster: the store kept standby copies no longer wanted (reset later)",
                {{"error", st.message()}});
    }
  }
  std::vector<int32_t> read;
  std::map<int32_t, int64_t> positions;
  for (int32_t p : want) {
    // (Given here since the ring was read: the restore has it.)
    if (owned_[static_cast<size_t>(p)].load(std::memory_order_acquire) != kNotOwned) {
      continue;
    }
    read.push_back(p);
    if (auto it = standby_.find(p); it != standby_.end()) {
      positions[p] = it->second.position;
    }
  }
  if (!read.empty()) {
    size_t records = 0;
    size_t shadows = 0;
    Status st = RestorePartitions(read, &positions, &records, &shadows, /*standby=*/true);
    if (!st.ok()) {
      static log::RateLimiter limiter(1);
      if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
        log::Warn("cluster: standby copies could not be brought up to date; trying again",
                  {{"partitions", fmt::format("{}", fmt::join(read, ","))},
                   {"error", st.message()},
                   {"suppressed_before", std::to_string(suppressed)}});
      }
    } else {
      for (int32_t p : read) {
        auto at = positions.find(p);  // (none: the topic has no such partition yet)
        standby_[p] = StandbyCopy{at != positions.end() ? at->second : 0, clock_.NowMs()};
      }
    }
  }
  cluster_standby_partitions_->Set(static_cast<double>(standby_.size()));
  MutexLock view(cluster_mu_);
  standby_view_ = standby_;
}

Status Engine::Impl::PurgePartitions(const std::vector<int32_t>& partitions,
                                     const std::unordered_set<std::string>& keep) {
  shadow_store_->Flush();
  GNOMON_ASSIGN_OR_RETURN(auto reader, shadow_store_->NewReader());
  const std::string reset = shadow::ShadowDocument().StoredJson();
  std::string after_thing, after_name;
  while (true) {
    GNOMON_ASSIGN_OR_RETURN(auto shadows, reader->Shadows(after_thing, after_name, 4096));
    if (shadows.empty()) {
      break;
    }
    after_thing = shadows.back().first;
    after_name = shadows.back().second;
    for (auto& [thing, name] : shadows) {
      if (InPartitions(partitions, thing) && !keep.contains(ShadowKey(thing, name))) {
        shadow_store_->Write(std::move(thing), std::move(name), reset, nullptr);
      }
    }
  }
  // The rule rows likewise (deleted).
  std::vector<std::pair<std::string, std::string>> rows;
  GNOMON_RETURN_IF_ERROR(
      reader->StateRows([&](std::string_view device, std::string_view rule, std::string_view) {
        if (InPartitions(partitions, device) &&
            !keep.contains(shadow::StateChangelogKey(device, rule))) {
          rows.emplace_back(device, rule);
        }
      }));
  for (auto& [device, rule] : rows) {
    shadow_store_->WriteState(std::move(rule), std::move(device), {}, nullptr);
  }
  // And the service calls (forgotten).
  GNOMON_ASSIGN_OR_RETURN(auto calls, reader->Calls());
  for (auto& [thing, stored] : calls) {
    if (!InPartitions(partitions, thing)) {
      continue;
    }
    auto c = ServiceCall::FromStored(stored);
    if (c.ok() && !keep.contains(CallChangelogKey(thing, c->id))) {
      shadow_store_->WriteCall(std::move(thing), c->id, "", nullptr);
    }
  }
  return {};
}

void Engine::Impl::StartMembers() {
  if (!members_) {
    return;
  }
  const AppConfig::Cluster& cl = config_.cluster;
  advertise_ = cl.advertise;
  if (advertise_.empty() && !config_.api_listen.empty() && api_port() != 0) {
    // http(s):// and api.listen's host (a wildcard: this machine's name), the port it got.
    std::string host = config_.api_listen.substr(0, config_.api_listen.rfind(':'));
    if (host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]") {
      char name[256] = {};
      host = gethostname(name, sizeof name - 1) == 0 ? name : "localhost";
    }
    advertise_ = fmt::format("{}://{}:{}", config_.api.tls_cert.empty() ? "http" : "https", host,
                             api_port());
  }
  if (Status st = members_sink_->Start(); !st.ok()) {
    log::Error(
        "cluster: the members producer did not start; requests for other instances' "
        "devices are answered 503",
        {{"error", st.message()}});
  }
  members_follower_ = std::jthread([this](const std::stop_token& st) {
    pthread_setname_np(pthread_self(), "gnomon-members");
    while (!st.stop_requested()) {
      Status s = options_.follow_topic(
          *config_.cluster.connection, config_.cluster.MembersTopic(),
          [&](std::string_view key, const std::string* value) {
            if (!members_->Apply(key, value)) {
              log::Warn("cluster: a members record skipped (not a member's announcement)",
                        {{"topic", config_.cluster.MembersTopic()}, {"key", std::string(key)}});
            }
          },
          [&] { return st.stop_requested(); });
      if (!s.ok()) {
        log::Error("cluster: the members topic cannot be read; trying again",
                   {{"error", s.message()}});
        for (int i = 0; i < 20 && !st.stop_requested(); ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
      }
    }
  });
  if (config_.cluster.standby_replicas > 0 && shadow_store_) {
    standby_follower_ = std::jthread([this](const std::stop_token& st) {
      pthread_setname_np(pthread_self(), "gnomon-standby");
      while (!st.stop_requested()) {
        StandbyRound();
        for (int64_t i = 0; i < kStandbyRoundMs / 50 && !st.stop_requested(); ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      }
    });
  }
  members_announcer_ = std::jthread([this](const std::stop_token& st) {
    pthread_setname_np(pthread_self(), "gnomon-announce");
    auto last = std::chrono::steady_clock::now() - std::chrono::hours(1);
    while (!st.stop_requested()) {
      auto now = std::chrono::steady_clock::now();
      if (announce_now_.exchange(false) || now - last >= std::chrono::milliseconds(kAnnounceMs)) {
        Announce(false);
        last = now;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
}

void Engine::Impl::Announce(bool leaving) {
  const AppConfig::Cluster& cl = config_.cluster;
  Record r;
  r.topic = cl.MembersTopic();
  r.partition = 0;
  r.key = cl.instance_id;
  r.json = true;
  if (leaving) {
    r.null_value = true;
  } else {
    ClusterMember me;
    me.instance = cl.instance_id;
    me.api = advertise_;
    OwnedPartitions(&me.owned, &me.restoring);
    {
      MutexLock lock(cluster_mu_);
      for (const auto& [p, copy] : standby_view_) {
        me.standby.push_back(p);
      }
    }
    me.at_ms = clock_.NowMs();
    r.payload = me.Json();
  }
  members_sink_->Send(std::move(r));
}

void Engine::Impl::StopMembers(Deadline deadline) {
  if (!members_ || !members_announcer_.joinable()) {
    return;
  }
  if (standby_follower_.joinable()) {
    standby_stopping_.store(true);
    standby_follower_.request_stop();
    standby_follower_.join();
  }
  members_announcer_.request_stop();
  members_announcer_.join();
  Announce(true);  // the others stop forwarding here at once
  members_sink_->Stop(deadline);
  members_follower_.request_stop();
  members_follower_.join();
}

void Engine::Impl::OwnedPartitions(std::vector<int32_t>* owned,
                                   std::vector<int32_t>* restoring) const {
  for (int32_t p = 0; p < config_.cluster.partitions; ++p) {
    uint8_t st = owned_[static_cast<size_t>(p)].load(std::memory_order_acquire);
    if (st == kOwned) {
      owned->push_back(p);
    } else if (st == kRestoring) {
      restoring->push_back(p);
    }
  }
}

std::string Engine::Impl::ClusterNotReady() const {
  if (!restore_failing_.load()) {
    return "";
  }
  MutexLock lock(cluster_mu_);
  return fmt::format("cluster: partitions {} not restored: {}",
                     fmt::join(last_restore_.partitions, ","), last_restore_.error);
}

std::string Engine::Impl::ClusterJson() const {
  const AppConfig::Cluster& cl = config_.cluster;
  std::vector<int32_t> owned, restoring;
  OwnedPartitions(&owned, &restoring);
  auto list = [](const std::vector<int32_t>& v) { return fmt::format("[{}]", fmt::join(v, ",")); };
  std::string restore = "null";
  {
    MutexLock lock(cluster_mu_);
    if (last_restore_.at_ms != 0) {
      restore.clear();
      json::ObjectWriter w(restore);
      w.FieldRaw("partitions", list(last_restore_.partitions))
          .Field("records", static_cast<int64_t>(last_restore_.records))
          .Field("shadows", static_cast<int64_t>(last_restore_.shadows))
          .Field("from_standby", static_cast<int64_t>(last_restore_.from_standby))
          .Field("ms", last_restore_.ms)
          .Field("at", last_restore_.at_ms);
      if (!last_restore_.error.empty()) {
        w.Field("error", last_restore_.error);
      }
      w.Close();
    }
  }
  // The rule versions this instance runs: a rollout half done shows as instances that differ.
  auto cur = rules_->Current();
  std::string rules = "[";
  for (const rules::RuleInfo& r : cur->set->rules()) {
    rules += rules.size() > 1 ? "," : "";
    json::ObjectWriter(rules).Field("name", r.name).Field("version", r.version).Close();
  }
  rules += "]";
  std::string out;
  json::ObjectWriter w(out);
  w.Field("cluster", cl.name)
      .Field("instance", cl.instance_id)
      .Field("group", cl.group)
      .Field("partitions", static_cast<int64_t>(cl.partitions))
      .Field("ingress", cl.IngressTopic());
  if (shadow_store_) {
    w.Field("changelog", config_.shadows.changelog_topic);
  }
  std::string members = "[";
  if (members_) {
    int64_t now = clock_.NowMs();
    for (const ClusterMember& m : members_->Members()) {
      members += members.size() > 1 ? "," : "";
      // Its announcement, and how old it is here.
      std::string j = m.Json();
      j.pop_back();
      members += fmt::format("{},\"age_ms\":{},\"fresh\":{}}}", j, now - m.at_ms,
                             now - m.at_ms <= members_->stale_ms());
    }
  }
  members += "]";
  // This instance's standby copies: how far each is read and how long since it caught up.
  std::string standby = "[";
  {
    int64_t now = clock_.NowMs();
    MutexLock lock(cluster_mu_);
    for (const auto& [p, copy] : standby_view_) {
      standby += standby.size() > 1 ? "," : "";
      json::ObjectWriter(standby)
          .Field("partition", static_cast<int64_t>(p))
          .Field("position", copy.position)
          .Field("lag_ms", now - copy.caught_up_ms)
          .Close();
    }
  }
  standby += "]";
  w.Field("api", advertise_)
      .FieldRaw("owned", list(owned))
      .FieldRaw("restoring", list(restoring))
      .Field("standby_replicas", static_cast<int64_t>(cl.standby_replicas))
      .FieldRaw("standby", standby)
      .FieldRaw("last_restore", restore)
      .Field("ruleset_version", static_cast<int64_t>(cur->version))
      .FieldRaw("rules", rules)
      .FieldRaw("members", members);
  w.Close();
  return out;
}

void Engine::Impl::SetClusterContext(PluginContext& ctx) const {
  if (config_.cluster.enabled) {
    ctx.instance_id = config_.cluster.instance_id;
    ctx.share_group = config_.cluster.group;
  }
}

Ingest& Engine::Impl::IngestFor(size_t source) {
  if (cluster_ingress_ && source != cluster_source_) {
    return *cluster_ingress_;
  }
  return *this;
}

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
// The shadow service: every shadow has one writer, the worker that owns its thing (the same
// hash that routes the thing's messages), whatever channel a request comes from (MQTT, REST, a
// rule of this or another worker). Accepted writes go to the SQLite store in group commits; an
// answer or event leaves only after the write it reports is durable, in queue order.
#include <algorithm>
#include <cctype>
#include <future>
#include <optional>

#include "api_error.h"
#include "effect_printer.h"
#include "engine_impl.h"
#include "gnomon/core/factory.h"
#include "gnomon/core/json.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/source.h"
#include "gnomon/core/topic.h"

namespace gnomon::engine {

// ctx.shadow reads for the rules of one worker: its own shadows from its cache (the single
// writer's current state), others' from the store (their last committed state).
class WorkerShadowReader final : public rules::ShadowReader {
 public:
  WorkerShadowReader(Engine::Impl* impl, void* worker) : impl_(impl), worker_(worker) {}
  Result<std::optional<std::string>> ReadShadow(std::string_view thing,
                                                std::string_view name) override;
  std::optional<Result<std::optional<int64_t>>> ReadShadowVersion(std::string_view thing,
                                                                  std::string_view name) override {
    return impl_->ReadOwnShadowVersion(worker_, thing, name);
  }
  const shadow::ThingModel* Model(std::string_view thing) override {
    return impl_->ModelFor(thing);
  }

 private:
  Engine::Impl* impl_;
  void* worker_;
  friend class Engine::Impl;
};

Result<std::optional<std::string>> WorkerShadowReader::ReadShadow(std::string_view thing,
                                                                  std::string_view name) {
  return impl_->ReadShadowFor(worker_, thing, name);
}

std::optional<Result<std::optional<int64_t>>> Engine::Impl::ReadOwnShadowVersion(
    void* worker, std::string_view thing, std::string_view name) {
  Worker& w = *static_cast<Worker*>(worker);
  if (!shadow_store_ || OwnerOf(thing) != w.index) {
    return std::nullopt;
  }
  auto doc = w.shadows->Get(std::string(thing), std::string(name));
  if (!doc.ok()) {
    return Result<std::optional<int64_t>>(doc.status());
  }
  return Result<std::optional<int64_t>>((*doc)->exists() ? std::optional<int64_t>((*doc)->version())
                                                         : std::optional<int64_t>());
}

Result<std::optional<std::string>> Engine::Impl::ReadShadowFor(void* worker,
                                                               std::string_view thing,
                                                               std::string_view name) {
  Worker& w = *static_cast<Worker*>(worker);
  if (!shadow_store_) {
    return FailedPrecondition("ctx.shadow: device shadows are not enabled (see `shadows:`)");
  }
  int64_t now_s = clock_.NowMs() / 1000;
  if (OwnerOf(thing) == w.index) {
    GNOMON_ASSIGN_OR_RETURN(shadow::ShadowDocument * doc,
                            w.shadows->Get(std::string(thing), std::string(name)));
    if (!doc->exists()) {
      return std::optional<std::string>();
    }
    return std::optional<std::string>(std::get<std::string>(doc->Get(name, now_s)));
  }
  GNOMON_ASSIGN_OR_RETURN(auto stored, w.shadows->reader().Load(thing, name));
  if (!stored) {
    return std::optional<std::string>();
  }
  GNOMON_ASSIGN_OR_RETURN(shadow::ShadowDocument doc, shadow::ShadowDocument::FromStored(*stored));
  if (!doc.exists()) {
    return std::optional<std::string>();
  }
  return std::optional<std::string>(std::get<std::string>(doc.Get(name, now_s)));
}

// What the shadow topics' MQTT source takes: shadow requests, and service replies (which are
// data: they reach rules too).
class Engine::Impl::ShadowIngest final : public Ingest {
 public:
  explicit ShadowIngest(Impl& engine) : engine_(engine) {}
  bool Submit(Message&& m, std::unique_ptr<AckHandle> ack) override {
    if (!engine_.OwnsDevice(m.device)) {
      // In a cluster every instance gets every request (brokers do not share `$` topics, so
      // no shared subscription): the device's owner answers it, the others let it go
      // (docs/cluster.md#shadows-over-mqtt).
      engine_.cluster_shadow_ignored_->Inc();
      if (ack) {
        ack->Ack();
      }
      return true;
    }
    bool reply = m.topic.size() > 6 && m.topic.compare(m.topic.size() - 6, 6, "/reply") == 0 &&
                 m.topic.find("/services/") != std::string::npos;
    if (reply) {
      return engine_.Admit(std::move(m), std::move(ack));
    }
    return engine_.Admit(ShadowRequest{.msg = std::move(m), .channel = ShadowChannel::kMqtt},
                         std::move(ack));
  }
  void Reject(Message&& m, std::unique_ptr<AckHandle> ack, std::string_view reason,
              std::string_view error) override {
    engine_.Reject(std::move(m), std::move(ack), reason, error);
  }

 private:
  Impl& engine_;
};

Status Engine::Impl::InitShadows() {
  InitShadowMetrics();
  if (!config_.shadows.enabled) {
    return {};
  }
  GNOMON_RETURN_IF_ERROR(OpenShadowStore());
  GNOMON_RETURN_IF_ERROR(InitShadowMqtt());
  GNOMON_RETURN_IF_ERROR(InitChangelog());
  if (shadow_sink_) {
    InitSinkMetrics(*shadow_sink_);
  }
  return {};
}

void Engine::Impl::InitShadowMetrics() {
  auto counter = [&](const char* outcome) {
    return metrics_.GetCounter("gnomon_shadow_updates_total", "Shadow writes by outcome",
                               {{"outcome", outcome}});
  };
  shadow_accepted_ = counter("accepted");
  auto reads = [&](const char* path) {
    return metrics_.GetCounter("gnomon_shadow_api_reads_total",
                               "REST shadow gets by where they were answered from",
                               {{"path", path}});
  };
  reads_committed_ = reads("committed");
  reads_owner_ = reads("owner");
  reads_standby_ = reads("standby");
  shadow_rejected_ = counter("rejected");
  shadow_unchanged_ = counter("unchanged");
  model_failures_ = metrics_.GetCounter(
      "gnomon_model_validation_failures_total",
      "Shadow properties refused by a thing model (strict: whole writes; weak: the fields)");
  shadow_store_failures_ = metrics_.GetCounter(
      "gnomon_shadow_store_failures_total",
      "Shadow and service-call writes the store refused (a failed transaction, or made on top "
      "of a refused write)");
  shadow_cache_loads_ = metrics_.GetCounter(
      "gnomon_shadow_cache_loads_total", "Shadows read from the store into their owner's cache");
  shadow_cache_drops_ = metrics_.GetCounter(
      "gnomon_shadow_cache_drops_total",
      "Shadows dropped from their owner's cache beyond shadows.cache_shadows");
  auto presence = [&](const char* outcome) {
    return metrics_.GetCounter("gnomon_presence_reports_total",
                               "Device status messages by what they said", {{"outcome", outcome}});
  };
  presence_connected_ = presence("connected");
  presence_disconnected_ = presence("disconnected");
  presence_invalid_ = presence("invalid");
}

// The store, the REST reader on it, and the store's own metrics.
Status Engine::Impl::OpenShadowStore() {
  const AppConfig::Shadows& sc = config_.shadows;
  GNOMON_ASSIGN_OR_RETURN(shadow_store_,
                          shadow::ShadowStore::Open(
                              {.path = config_.data_dir + "/shadows.db",
                               .sync_full = sc.sync_full,
                               .history_log_bytes =
                                   sc.history == 0 ? 0
                                                   : (sc.history_mb << 20) *
                                                         static_cast<size_t>(
                                                             std::max(1, config_.workers))}));
  {
    GNOMON_ASSIGN_OR_RETURN(auto reader, shadow_store_->NewReader());
    MutexLock lock(api_reader_mu_);
    api_reader_ = std::move(reader);
  }
  committed_.set_capacity(sc.cache_shadows * static_cast<size_t>(std::max(1, config_.workers)));
  metrics_.AddCollector([this](std::vector<prometheus::MetricFamily>& out) {
    shadow::StoreStats st = shadow_store_->stats();
    using prometheus::MetricType;
    out.push_back(OneSample("gnomon_shadow_store_transactions_total",
                            "Group commits of the shadow store", MetricType::Counter,
                            static_cast<double>(st.transactions)));
    out.push_back(
        OneSample("gnomon_shadow_store_rows_total",
                  "Shadow rows written (repeated writes of a shadow in one commit count once)",
                  MetricType::Counter, static_cast<double>(st.rows)));
    out.push_back(OneSample("gnomon_shadow_store_queue", "Shadow writes waiting for their commit",
                            MetricType::Gauge, static_cast<double>(shadow_store_->queued())));
    out.push_back(OneSample("gnomon_shadow_store_pending_max",
                            "The most store writes not yet durable at once since start (bounded "
                            "by shadows.max_pending_writes, see docs/performance.md)",
                            MetricType::Gauge, static_cast<double>(st.max_pending)));
  });
  return {};
}

// Requests in and answers out over MQTT (a printer in dry runs).
Status Engine::Impl::InitShadowMqtt() {
  const AppConfig::Shadows& sc = config_.shadows;
  if (sc.connection != nullptr && options_.mode == Mode::kRun) {
    // Requests in: update, get, delete of classic and named shadows.
    ConfigValue src;
    src.SetKind(ConfigValue::Kind::kMap);
    src.AddField("name", ConfigValue::Scalar(shadow_source_name_));
    ConfigValue topics;
    topics.SetKind(ConfigValue::Kind::kList);
    for (const char* op : {"update", "get", "delete"}) {
      topics.AddItem(ConfigValue::Scalar(fmt::format("{}/+/shadow/{}", sc.topic_prefix, op)));
      topics.AddItem(
          ConfigValue::Scalar(fmt::format("{}/+/shadow/name/+/{}", sc.topic_prefix, op)));
    }
    if (!config_.models.empty()) {
      topics.AddItem(ConfigValue::Scalar(fmt::format("{}/+/services/+/reply", sc.topic_prefix)));
    }
    src.AddField("topics", std::move(topics));
    src.AddField("qos", ConfigValue::Scalar("1"));
    size_t levels = 1 + static_cast<size_t>(
                            std::count(sc.topic_prefix.begin(), sc.topic_prefix.end(), '/'));
    src.AddField("device", ConfigValue::Scalar(fmt::format("topic[{}]", levels + 1)));
    PluginContext sctx{metrics_, *this, clock_, config_.data_dir, config_.base_dir,
                       shadow_source_name_, sc.connection, 2};
    // In a cluster: a client id of this instance's own, and no shared subscription (every
    // instance takes every request; the owner answers).
    if (config_.cluster.enabled) {
      sctx.instance_id = config_.cluster.instance_id;
    }
    GNOMON_ASSIGN_OR_RETURN(shadow_source_, registry_.source("mqtt")->Create(src, sctx));
    shadow_ingest_ = std::make_unique<ShadowIngest>(*this);
    cluster_shadow_ignored_ = metrics_.GetCounter(
        "gnomon_cluster_shadow_requests_ignored_total",
        "MQTT shadow requests and service replies for devices another instance owns (that one "
        "answers them), or whose partition was moving (nobody did)");
    source_counters_[shadow_source_name_] = metrics_.GetCounter(
        "gnomon_source_messages_total", "Messages taken in, by source",
        {{"source", shadow_source_name_}});

    // Answers and events out.
    ConfigValue snk;
    snk.SetKind(ConfigValue::Kind::kMap);
    snk.AddField("name", ConfigValue::Scalar("shadows"));
    snk.AddField("qos", ConfigValue::Scalar("1"));
    PluginContext kctx{metrics_, *this, clock_, config_.data_dir, config_.base_dir, "shadows",
                       sc.connection, 2};
    SetClusterContext(kctx);  // (a client id of this instance's own)
    shadow_sink_ = std::make_unique<SinkEntry>();
    shadow_sink_->name = "shadows";
    GNOMON_ASSIGN_OR_RETURN(shadow_sink_->sink, registry_.sink("mqtt")->Create(snk, kctx));
  } else if (options_.mode == Mode::kDryRun) {
    shadow_sink_ = std::make_unique<SinkEntry>();
    shadow_sink_->name = "shadows";
    shadow_sink_->sink = NewEffectPrinter("shadow", "shadows", *this);
  }
  return {};
}

// Every accepted write produced to the Kafka changelog (shadows.changelog).
Status Engine::Impl::InitChangelog() {
  const AppConfig::Shadows& sc = config_.shadows;
  if (!sc.changelog_topic.empty() && options_.mode != Mode::kDryRun) {
    ConfigValue cl;
    cl.SetKind(ConfigValue::Kind::kMap);
    cl.AddField("name", ConfigValue::Scalar("shadow-changelog"));
    cl.AddField("topic", ConfigValue::Scalar(sc.changelog_topic));
    ConfigValue create;
    create.SetKind(ConfigValue::Kind::kMap);
    create.AddField("partitions", ConfigValue::Scalar(std::to_string(sc.changelog_partitions)));
    create.AddField("compact", ConfigValue::Scalar("true"));
    cl.AddField("create", std::move(create));
    if (config_.cluster.enabled && options_.mode == Mode::kRun) {
      // Each partition written by its owner only (docs/cluster.md#fencing).
      cl.AddField("fence_transactional_id", ConfigValue::Scalar(sc.changelog_topic));
    }
    PluginContext lctx{metrics_, *this, clock_, config_.data_dir, config_.base_dir,
                       "shadow-changelog", sc.changelog_connection, 1};
    lctx.shared = &shared_;
    SinkFactory* kafka = registry_.sink("kafka");
    if (kafka == nullptr) {
      return FailedPrecondition("shadows.changelog: this build has no kafka connector");
    }
    changelog_sink_ = std::make_unique<SinkEntry>();
    changelog_sink_->name = "shadow-changelog";
    GNOMON_ASSIGN_OR_RETURN(changelog_sink_->sink, kafka->Create(cl, lctx));
    InitSinkMetrics(*changelog_sink_);
    if (config_.cluster.enabled && options_.mode == Mode::kRun) {
      changelog_writer_ = dynamic_cast<PartitionedWriter*>(changelog_sink_->sink.get());
      if (changelog_writer_ == nullptr) {
        return FailedPrecondition("cluster: the change-log sink cannot be fenced by partition");
      }
    }
  }
  return {};
}

Status Engine::Impl::InitWorkerShadows(Worker& w) {
  if (shadow_store_ == nullptr && config_.models.empty()) {
    return {};  // ctx.shadow and ctx.model have nothing to read
  }
  if (shadow_store_) {
    GNOMON_ASSIGN_OR_RETURN(auto reader, shadow_store_->NewReader());
    const AppConfig::Shadows& sc = config_.shadows;
    w.shadows = std::make_unique<ShadowOwner>(
        ShadowOwner::Options{.cache_shadows = sc.cache_shadows,
                             .history = sc.history,
                             .history_bytes = sc.history_mb << 20},
        *shadow_store_, std::move(reader),
        ShadowOwner::Counters{.loads = shadow_cache_loads_, .drops = shadow_cache_drops_});
  }
  w.rule_shadows = std::make_unique<WorkerShadowReader>(this, &w);
  return {};
}

size_t Engine::Impl::OwnerOf(std::string_view thing) const {
  return std::hash<std::string_view>{}(thing) % workers_.size();
}

std::string Engine::Impl::ShadowTopic(std::string_view thing, std::string_view name) const {
  return engine::ShadowTopic(config_.shadows.topic_prefix, thing, name);
}

Status Engine::Impl::RestoreHistory() {
  if (shadow_store_ == nullptr || config_.shadows.history == 0) {
    return {};
  }
  GNOMON_ASSIGN_OR_RETURN(auto reader, shadow_store_->NewReader());
  std::vector<ShadowOwner*> owners;
  for (auto& w : workers_) {
    owners.push_back(w->shadows.get());
  }
  auto restored = ShadowOwner::RestoreHistory(
      *reader, owners, [this](std::string_view thing) { return OwnerOf(thing); });
  if (!restored.ok()) {
    log::Error("shadow change history could not be read back; starting without it",
               {{"error", restored.status().message()}});
  } else if (*restored > 0) {
    log::Info("shadow change history restored", {{"changes", std::to_string(*restored)}});
  }
  return {};
}

void Engine::Impl::Answer(ShadowReplyTo to, int status, std::string body,
                          std::string_view suffix) {
  switch (to.channel) {
    case ShadowChannel::kApi:
      if (to.reply) {
        to.reply(status, std::move(body));
      }
      break;
    case ShadowChannel::kMqtt:
      if (shadow_sink_ && !suffix.empty()) {
        Record r;
        r.payload = std::move(body);
        r.topic = to.topic + std::string(suffix);
        r.qos = 1;
        r.source = to.source;
        r.delivery = to.delivery;
        r.route = kShadowRoute;
        to.delivery->Hold();
        shadow_sink_->sink->Send(std::move(r));
      }
      break;
    case ShadowChannel::kRouted:
      if (status >= 300) {
        DeadLetter(to.delivery, "shadow_rejected", body, to.rule, to.source, to.topic, "",
                   to.payload, 1, clock_.NowMs());
      }
      break;
  }
  to.delivery->Release();
}

void Engine::Impl::RejectShadow(ShadowReplyTo to, const shadow::ShadowError& err) {
  shadow_rejected_->Inc();
  std::string body = err.Json(clock_.NowMs() / 1000);
  int code = err.code;
  // After the writes queued before it: answers leave in request order.
  shadow_store_->After([this, to = std::move(to), code, body = std::move(body)](
                           const Status&) mutable {
    Answer(std::move(to), code, std::move(body), "/rejected");
  });
}

void Engine::Impl::StoreShadow(Worker& w, const std::string& thing, const std::string& name,
                               std::string stored, shadow::ShadowStore::Done done,
                               std::optional<shadow::ShadowChange> change) {
  uint64_t epoch = w.shadows->epoch(thing, name);
  w.shadows->Store(
      thing, name, std::move(stored),
      [this, thing, name, epoch, done = std::move(done)](const Status& st) {
        if (!st.ok()) {
          shadow_store_failures_->Inc();
          log::Error("shadow write could not be stored",
                     {{"thing", thing}, {"shadow", name}, {"error", st.message()}});
          EvictShadow(thing, name, epoch);
        }
        done(st);
      },
      std::move(change));
}

void Engine::Impl::DropShadow(Worker& w, const ShadowEviction& evict) {
  w.shadows->Evict(evict.thing, evict.name, evict.epoch);
}

void Engine::Impl::EvictShadow(const std::string& thing, const std::string& name,
                               uint64_t epoch) {
  (void)workers_[OwnerOf(thing)]->queue.PushForce(  // closed: stopping anyway
      ShadowEviction{thing, name, epoch});
}

void Engine::Impl::PublishShadowEvent(const std::string& thing, const std::string& topic,
                                      std::string payload, Delivery* hold) {
  // Inside gnomon: a message on the event's topic, for the rules that listen to it.
  if (accepting_) {
    auto rules = rules_->Current();
    std::vector<uint32_t> matches;
    rules->set->Match(topic, matches);
    if (!matches.empty()) {
      Message m;
      m.topic = topic;
      m.device = thing;
      m.payload = payload;
      m.payload.reserve(m.payload.size() + 64);  // SIMDJSON_PADDING
      m.source = &shadow_source_name_;
      m.ts_ms = clock_.NowMs();
      auto* d = new Delivery(this, nullptr);
      m.delivery = d;
      in_->Inc();
      // Never blocks: the writer thread must not wait on a worker that may wait on it.
      if (!workers_[OwnerOf(thing)]->queue.PushForce(std::move(m))) {
        d->Mark(Delivery::kAbandoned);
        d->Release();
      }
    }
  }
  // Outside: on the MQTT shadow topics.
  if (shadow_sink_ && hold != nullptr) {
    Record r;
    r.payload = std::move(payload);
    r.topic = topic;
    r.qos = 1;
    r.device = thing;
    r.delivery = hold;
    r.route = kShadowRoute;
    hold->Hold();
    shadow_sink_->sink->Send(std::move(r));
  }
}

unsigned Engine::Impl::ShadowEventsWanted(const std::string& thing, const std::string& name,
                                          ShadowChannel channel) {
  if (shadow_sink_) {
    return shadow::kAllEvents;  // every event goes out on the MQTT shadow topics
  }
  unsigned wanted = channel == ShadowChannel::kRouted ? 0 : shadow::kEventAccepted;
  if (changelog_sink_ || watchers_.Watching(ShadowKey(thing, name))) {
    wanted |= shadow::kEventDocuments;
  }
  if (!accepting_) {
    return wanted;
  }
  auto rules = rules_->Current();
  std::vector<uint32_t> matches;
  std::string topic = ShadowTopic(thing, name) + "/update/";
  size_t base = topic.size();
  for (auto [suffix, event] : {std::pair<const char*, unsigned>{"accepted", shadow::kEventAccepted},
                               {"documents", shadow::kEventDocuments},
                               {"delta", shadow::kEventDelta},
                               {"synced", shadow::kEventDelta}}) {
    if ((wanted & event) != 0) {
      continue;
    }
    topic.resize(base);
    topic += suffix;
    matches.clear();
    rules->set->Match(topic, matches);
    if (!matches.empty()) {
      wanted |= event;
    }
  }
  return wanted;
}

void Engine::Impl::ProduceChangelog(const std::string& thing, const std::string& name,
                                    const std::string* documents, Delivery* hold) {
  if (!changelog_sink_) {
    return;
  }
  SendChangelog(name.empty() ? thing : thing + "/" + name, thing, ShadowTopic(thing, name),
                documents != nullptr ? std::optional<std::string>(*documents) : std::nullopt, hold);
}

void Engine::Impl::ProduceStateChangelog(const std::string& device, const std::string& row,
                                         std::string record, Delivery* hold) {
  SendChangelog(shadow::StateChangelogKey(device, row), device, "$gnomon/rules/" + row + "/state",
                record.empty() ? std::nullopt : std::optional<std::string>(std::move(record)),
                hold);
}

void Engine::Impl::SendChangelog(std::string key, const std::string& device,
                                 std::string source_topic, std::optional<std::string> payload,
                                 Delivery* hold) {
  Record r;
  r.key = std::move(key);
  if (payload) {
    r.payload = std::move(*payload);
  } else {
    r.null_value = true;
  }
  r.device = device;
  if (owned_) {
    r.partition = PartitionOf(device);  // co-partitioned with ingress (docs/cluster.md)
  }
  r.rule = "shadows";
  r.source_topic = std::move(source_topic);
  r.delivery = hold;
  r.route = kChangelogRoute;
  hold->Hold();
  changelog_sink_->sink->Send(std::move(r));
}

void Engine::Impl::PersistAndAnswer(Worker& w, const std::string& thing, const std::string& name,
                                    shadow::ShadowDocument& doc, shadow::UpdateResult result,
                                    ShadowReplyTo to) {
  if (!result.changed || result.replayed) {
    shadow_unchanged_->Inc();
    shadow_store_->After([this, to = std::move(to), body = std::move(result.accepted)](
                             const Status&) mutable {
      Answer(std::move(to), 200, std::move(body), "/accepted");
    });
    return;
  }
  shadow_accepted_->Inc();
  shadow::ShadowChange change{doc.version(), clock_.NowMs() / 1000, std::move(result.patch)};
  std::optional<shadow::ShadowChange> logged;  // for the store's history log
  if (config_.shadows.history > 0) {
    logged = change;
  }
  w.shadows->RecordChange(thing, name, std::move(change));
  StoreShadow(
      w, thing, name, doc.StoredJson(),
      [this, to = std::move(to), result = std::move(result), thing,
       name](const Status& st) mutable {
        UpdateDurableOnWriter(st, thing, name, std::move(result), std::move(to));
      },
      std::move(logged));
}

void Engine::Impl::UpdateDurableOnWriter(const Status& st, const std::string& thing,
                                         const std::string& name, shadow::UpdateResult result,
                                         ShadowReplyTo to) {
  if (!st.ok()) {
    shadow::ShadowError err =
        ApiError(500, "INTERNAL_ERROR", "The shadow store could not save the update");
    err.client_token = std::move(result.client_token);
    Answer(std::move(to), 500, err.Json(clock_.NowMs() / 1000), "/rejected");
    return;
  }
  committed_.Put(ShadowKey(thing, name), std::move(result.view));
  // Events first (they hold the request until they are out), then the answer.
  Delivery* hold = to.delivery;
  std::string base = ShadowTopic(thing, name);
  // (Payloads nobody consumed when the write was applied were not built: ShadowEventsWanted.)
  if (!result.documents.empty()) {
    ProduceChangelog(thing, name, &result.documents, hold);
    watchers_.Notify(ShadowKey(thing, name), "update", result.documents);
  }
  if (!result.accepted.empty()) {
    // Subscribers see update/accepted whatever channel the update came from; an MQTT
    // requester's own goes out through Answer (rules still see it: no hold, no sink).
    PublishShadowEvent(thing, base + "/update/accepted", result.accepted,
                       to.channel == ShadowChannel::kMqtt ? nullptr : hold);
  }
  if (!result.documents.empty()) {
    PublishShadowEvent(thing, base + "/update/documents", std::move(result.documents), hold);
  }
  if (!result.delta.empty()) {
    PublishShadowEvent(thing, base + "/update/delta", std::move(result.delta), hold);
  }
  if (!result.synced.empty()) {
    PublishShadowEvent(thing, base + "/update/synced", std::move(result.synced), hold);
  }
  Answer(std::move(to), 200, std::move(result.accepted), "/accepted");
}

const shadow::ThingModel* Engine::Impl::BoundModel(std::string_view thing) const {
  for (const auto& m : config_.models) {
    if (m->Matches(thing)) {
      return m.get();
    }
  }
  return nullptr;
}

std::variant<std::string, shadow::ShadowError> Engine::Impl::ApplyModel(std::string_view thing,
                                                                        std::string request,
                                                                        std::string* failed) {
  if (config_.models.empty()) {
    return request;
  }
  const shadow::ThingModel* model = BoundModel(thing);
  if (model == nullptr || model->mode() == shadow::ValidationMode::kOff) {
    return request;
  }
  auto v = shadow::Value::Parse(request);
  shadow::Value* state = v.ok() && v->is_object() ? v->Find("state") : nullptr;
  if (state == nullptr || !state->is_object()) {
    return request;  // not a valid request: the document's own checks say why
  }
  std::vector<shadow::ModelProblem> all;
  bool weak = model->mode() == shadow::ValidationMode::kWeak;
  for (auto [key, section] : {std::pair{"reported", shadow::StateSection::kReported},
                              std::pair{"desired", shadow::StateSection::kDesired}}) {
    shadow::Value* patch = state->Find(key);
    if (patch == nullptr || !patch->is_object()) {
      continue;
    }
    auto problems = model->Validate(*patch, section);
    for (auto& p : problems) {
      if (weak) {
        // Drop the whole property whose value is wrong; keep the rest of the write.
        std::string top = p.path.substr(1, p.path.find('/', 1) - 1);
        patch->Erase(top);
      }
      p.path = "/state/" + std::string(key) + p.path;
      all.push_back(std::move(p));
    }
  }
  if (all.empty()) {
    return request;
  }
  model_failures_->Inc(all.size());
  const std::string& model_name = model->ref();
  bool nothing_left = true;  // weak mode with every property refused: nothing to write
  for (const char* key : {"reported", "desired"}) {
    const shadow::Value* patch = state->Find(key);
    nothing_left = nothing_left && (patch == nullptr || !patch->is_object() || patch->members().empty());
  }
  if (!weak || nothing_left) {
    shadow::ShadowError e;
    e.code = 400;
    e.error = "MODEL_VALIDATION";
    e.message = fmt::format("The request does not match thing model {}", model_name);
    e.details = shadow::ProblemsJson(all);
    if (const shadow::Value* token = v->Find("clientToken");
        token != nullptr && token->kind() == shadow::Value::Kind::kString) {
      e.client_token = token->as_string();
    }
    return e;
  }
  *failed = shadow::ProblemsJson(all);
  return v->Json();
}

namespace {
// Weak mode: the accepted document lists what the model refused.
void AddCheckFailed(std::string& accepted, const std::string& failed) {
  if (!failed.empty() && !accepted.empty() && accepted.back() == '}') {
    accepted.pop_back();
    accepted += ",\"checkFailedData\":" + failed + "}";
  }
}
}  // namespace

void Engine::Impl::HandleShadowRequest(Worker& w, ShadowRequest& req) {
  Message& m = req.msg;
  ShadowReplyTo to;
  to.channel = req.channel;
  to.topic = m.topic;
  to.reply = std::move(req.reply);
  to.delivery = m.delivery;
  to.source = m.source;
  if (req.channel == ShadowChannel::kRouted) {
    to.rule = std::move(req.rule);
    to.payload = m.payload;
  }
  // `to` carries the message's processing hold from here on: Answer releases it.
  int64_t now_s = clock_.NowMs() / 1000;
  if (!shadow_store_) {
    shadow::ShadowError err = ApiError(503, "SHADOWS_DISABLED", "Device shadows are not enabled");
    Answer(std::move(to), err.code, err.Json(now_s), "/rejected");
    return;
  }
  if (!req.target) {  // MQTT: the topic says
    auto parsed = ParseShadowTopic(config_.shadows.topic_prefix, m.topic);
    if (auto* err = std::get_if<shadow::ShadowError>(&parsed)) {
      RejectShadow(std::move(to), *err);
      return;
    }
    req.target = std::get<ShadowTarget>(std::move(parsed));
  }
  const ShadowTarget& op = *req.target;
  if (!OwnsDevice(op.thing)) {
    // (A request that reached the worker as its partition moved away: the route checked.)
    HttpResponse refused = NotOwnedResponse(op.thing);
    Answer(std::move(to), refused.status, std::move(refused.body), "/rejected");
    return;
  }
  if (op.verb == ShadowVerb::kGet || op.verb == ShadowVerb::kDelete) {
    to.token = shadow::RequestClientToken(m.payload, shadow::Limits().max_client_token_bytes);
  }
  auto doc = w.shadows->Get(op.thing, op.name);
  if (!doc.ok()) {
    log::Error("shadow could not be loaded", {{"thing", op.thing}, {"error", doc.status().message()}});
    shadow::ShadowError err = ApiError(500, "INTERNAL_ERROR", "The shadow could not be loaded");
    // (An update's token is read here only: this is rare, and updates parse their payload once.)
    err.client_token =
        op.verb == ShadowVerb::kUpdate
            ? shadow::RequestClientToken(m.payload, shadow::Limits().max_client_token_bytes)
            : to.token;
    RejectShadow(std::move(to), err);
    return;
  }
  shadow::ShadowDocument& d = **doc;
  switch (op.verb) {
    case ShadowVerb::kUpdate:
      return ShadowUpdate(w, op, d, m.payload, req.idempotency_key, std::move(to), now_s);
    case ShadowVerb::kChanges:
      return ShadowChanges(w, op, d, req.since_version, std::move(to), now_s);
    case ShadowVerb::kGet:
      return ShadowGet(op, d, std::move(to), now_s);
    case ShadowVerb::kDelete:
      return ShadowDelete(w, op, d, std::move(to), now_s);
  }
}

void Engine::Impl::ShadowUpdate(Worker& w, const ShadowTarget& op, shadow::ShadowDocument& d,
                                const std::string& payload, const std::string& idempotency_key,
                                ShadowReplyTo to, int64_t now_s) {
  std::string failed;
  auto request = ApplyModel(op.thing, payload, &failed);
  if (auto* err = std::get_if<shadow::ShadowError>(&request)) {
    RejectShadow(std::move(to), *err);
    return;
  }
  if (const shadow::ThingModel* model = BoundModel(op.thing)) {
    d.SetModel(model->ref());
  }
  auto r = d.Update(std::get<std::string>(request), now_s, idempotency_key,
                    ShadowEventsWanted(op.thing, op.name, to.channel));
  if (auto* err = std::get_if<shadow::ShadowError>(&r)) {
    RejectShadow(std::move(to), *err);
    return;
  }
  auto result = std::get<shadow::UpdateResult>(std::move(r));
  AddCheckFailed(result.accepted, failed);
  to.topic = ShadowTopic(op.thing, op.name) + "/update";
  PersistAndAnswer(w, op.thing, op.name, d, std::move(result), std::move(to));
}

// The changes of a shadow since a version (REST only), from its owner's history.
void Engine::Impl::ShadowChanges(Worker& w, const ShadowTarget& op, shadow::ShadowDocument& d,
                                 int64_t since, ShadowReplyTo to, int64_t now_s) {
  if (to.channel != ShadowChannel::kApi) {
    RejectShadow(std::move(to), ApiError(400, "INVALID_TOPIC", "changes is a REST request"));
    return;
  }
  if (!d.exists()) {
    RejectShadow(std::move(to), std::get<shadow::ShadowError>(d.Get(op.name, now_s)));
    return;
  }
  std::string body;
  json::ObjectWriter out(body);
  out.Field("version", d.version());
  const std::deque<ShadowOwner::Change>* kept = w.shadows->History(op.thing, op.name);
  bool complete = since >= d.version() ||
                  (kept != nullptr && !kept->empty() && kept->front().version <= since + 1);
  if (!complete) {
    // Older than what is kept (or from before a delete): start over from the document.
    out.FieldRaw("resync", "true")
        .FieldRaw("document", std::get<std::string>(d.Get(op.name, now_s)));
  } else {
    std::string list = "[";
    if (kept != nullptr) {
      for (const auto& c : *kept) {
        if (c.version <= since) {
          continue;
        }
        if (list.size() > 1) {
          list += ',';
        }
        json::ObjectWriter e(list);
        e.Field("version", c.version).Field("timestamp", c.timestamp).FieldRaw("ops", c.ops);
        e.Close();
      }
    }
    list += ']';
    out.Field("sinceVersion", since).FieldRaw("changes", list);
  }
  out.Close();
  shadow_store_->After([this, to = std::move(to), body = std::move(body)](const Status&) mutable {
    Answer(std::move(to), 200, std::move(body), "");
  });
}

void Engine::Impl::ShadowGet(const ShadowTarget& op, shadow::ShadowDocument& d, ShadowReplyTo to,
                             int64_t now_s) {
  auto r = d.Get(op.name.empty() ? "Unnamed Shadow" : op.name, now_s);
  if (auto* err = std::get_if<shadow::ShadowError>(&r)) {
    err->client_token = to.token;
    RejectShadow(std::move(to), *err);
    return;
  }
  shadow_store_->After([this, to = std::move(to), body = std::get<std::string>(std::move(r)),
                        key = ShadowKey(op.thing, op.name)](const Status&) mutable {
    // Durable now (every write before this get is): later REST gets need not come here.
    committed_.Put(key, body);
    shadow::ShadowDocument::AddClientToken(body, to.token);
    Answer(std::move(to), 200, std::move(body), "/accepted");
  });
}

void Engine::Impl::ShadowDelete(Worker& w, const ShadowTarget& op, shadow::ShadowDocument& d,
                                ShadowReplyTo to, int64_t now_s) {
  auto r = d.Delete(op.name.empty() ? "Unnamed Shadow" : op.name, now_s, to.token);
  if (auto* err = std::get_if<shadow::ShadowError>(&r)) {
    RejectShadow(std::move(to), *err);
    return;
  }
  w.shadows->EraseHistory(op.thing, op.name);
  std::optional<shadow::ShadowChange> reset;  // the stored history ends here too
  if (config_.shadows.history > 0) {
    reset = shadow::ShadowChange{d.version(), now_s, ""};
  }
  StoreShadow(
      w, op.thing, op.name, d.StoredJson(),
      [this, to = std::move(to), body = std::get<std::string>(std::move(r)), thing = op.thing,
       name = op.name](const Status& st) mutable {
        DeleteDurableOnWriter(st, thing, name, std::move(body), std::move(to));
      },
      std::move(reset));
}

void Engine::Impl::DeleteDurableOnWriter(const Status& st, const std::string& thing,
                                         const std::string& name, std::string body,
                                         ShadowReplyTo to) {
  if (!st.ok()) {
    shadow::ShadowError err =
        ApiError(500, "INTERNAL_ERROR", "The shadow store could not save the delete");
    err.client_token = to.token;
    Answer(std::move(to), 500, err.Json(clock_.NowMs() / 1000), "/rejected");
    return;
  }
  committed_.Erase(ShadowKey(thing, name));
  ProduceChangelog(thing, name, nullptr, to.delivery);
  watchers_.Notify(ShadowKey(thing, name), "delete", body);
  PublishShadowEvent(thing, ShadowTopic(thing, name) + "/delete/accepted", body,
                     to.channel != ShadowChannel::kMqtt ? to.delivery : nullptr);
  Answer(std::move(to), 200, std::move(body), "/accepted");
}

bool Engine::Impl::ApplyPresence(Worker& w, Message& m) {
  std::optional<bool> connected = shadow::ParsePresence(m.payload);
  if (!connected) {
    presence_invalid_->Inc();
    DeadLetter(m.delivery, "bad_presence",
               fmt::format("a message on {} (shadows.presence.from) is not a presence: expected "
                           "online/offline, true/false, 1/0 or JSON with a boolean `connected`",
                           config_.shadows.presence_from),
               "", m.source, m.topic, m.device, m.payload, 1, m.ts_ms);
    return false;
  }
  auto doc = w.shadows->Get(m.device, "");
  if (!doc.ok()) {
    DeadLetter(m.delivery, "shadow_error", doc.status().message(), "", m.source, m.topic,
               m.device, m.payload, 1, m.ts_ms);
    return false;
  }
  (*connected ? presence_connected_ : presence_disconnected_)->Inc();
  bool changed = (*doc)->connected() != connected;
  int64_t now_ms = clock_.NowMs();
  (*doc)->SetPresence(*connected, now_ms);
  std::string view;  // the document's metadata changed: what a get shows once durable
  if ((*doc)->exists()) {
    view = std::get<std::string>((*doc)->Get("", now_ms / 1000));
  }
  Delivery* hold = m.delivery;
  hold->Hold();  // until the presence is stored (and announced)
  StoreShadow(
      w, m.device, "", (*doc)->StoredJson(),
      [this, hold, changed, now_ms, connected = *connected, thing = m.device,
       source = m.source, topic = m.topic, payload = m.payload, ts = m.ts_ms,
       view = std::move(view)](const Status& st) mutable {
        if (!st.ok()) {
          DeadLetter(hold, "shadow_error",
                     fmt::format("presence of {} could not be stored: {}", thing, st.message()),
                     "", source, topic, thing, payload, 1, ts);
          hold->Release();
          return;
        }
        if (!view.empty()) {
          committed_.Put(ShadowKey(thing, ""), std::move(view));
        }
        if (changed) {
          // AWS IoT's lifecycle event layout, so existing consumers of it work.
          const char* type = connected ? "connected" : "disconnected";
          std::string event;
          json::ObjectWriter(event)
              .Field("clientId", thing)
              .Field("timestamp", now_ms)
              .Field("eventType", type)
              .Close();
          PublishShadowEvent(thing, fmt::format("$aws/events/presence/{}/{}", type, thing),
                             std::move(event), hold);
        }
        hold->Release();
      });
  if (changed && *connected && services_enabled()) {
    w.calls->SendQueued(m.device);  // calls kept while it was away, in the order they were made
  }
  return true;
}

bool Engine::Impl::CheckEvent(Message& m, const shadow::ThingModel* model) {
  if (model == nullptr) {
    return true;  // not a modelled thing: an ordinary message
  }
  std::string_view identifier = std::string_view(m.topic).substr(m.topic.rfind('/') + 1);
  const std::string& model_ref = model->ref();
  std::vector<shadow::ModelProblem> problems;
  if (model->mode() != shadow::ValidationMode::kOff) {
    auto params = shadow::Value::Parse(m.payload);
    if (!params.ok()) {
      problems.push_back({"", "TM_TYPE_MISMATCH", "the event's params are not JSON"});
    } else {
      problems = model->ValidateEvent(identifier, *params);
    }
  }
  if (!problems.empty()) {
    model_failures_->Inc();
    if (model->mode() == shadow::ValidationMode::kStrict) {
      DeadLetter(m.delivery, "model_validation",
                 fmt::format("event {} of {} refused by {}: {}", identifier, m.device, model_ref,
                             shadow::ProblemsJson(problems)),
                 "", m.source, m.topic, m.device, m.payload, 1, m.ts_ms);
      return false;
    }
    m.headers.emplace_back("gnomon-model-problems", shadow::ProblemsJson(problems));
  }
  m.headers.emplace_back("gnomon-event", std::string(identifier));
  if (const std::string* type = model->EventType(identifier)) {
    m.headers.emplace_back("gnomon-event-type", *type);
  }
  m.headers.emplace_back("gnomon-model", model_ref);
  return true;
}

bool Engine::Impl::CheckPropertyPost(Message& m, const shadow::ThingModel& model) {
  std::vector<shadow::ModelProblem> problems;
  if (model.mode() != shadow::ValidationMode::kOff) {
    auto v = shadow::Value::Parse(m.payload);
    if (!v.ok()) {
      problems.push_back({"", "TM_TYPE_MISMATCH",
                          fmt::format("the property post is not JSON: {}", v.status().message())});
    } else if (!v->is_object()) {
      problems.push_back({"", "TM_TYPE_MISMATCH", "a property post is a JSON object"});
    } else {
      problems = model.Validate(*v, shadow::StateSection::kReported);
    }
  }
  if (!problems.empty()) {
    model_failures_->Inc(problems.size());
    if (model.mode() == shadow::ValidationMode::kStrict) {
      DeadLetter(m.delivery, "model_validation",
                 fmt::format("properties posted by {} on {} refused by {}: {}", m.device,
                             m.topic, model.ref(), shadow::ProblemsJson(problems)),
                 "", m.source, m.topic, m.device, m.payload, 1, m.ts_ms);
      return false;
    }
    m.headers.emplace_back("gnomon-model-problems", shadow::ProblemsJson(problems));
  }
  m.headers.emplace_back("gnomon-model", model.ref());
  return true;
}

// A rule's shadow write to a shadow this worker owns, applied to the owner's copy and waiting
// to be stored.
struct Engine::Impl::ShadowWriteStep {
  std::string thing, name;
  shadow::UpdateResult result;
  std::string payload;
  shadow::ShadowDocument* cached;  // the owner's copy
};

bool Engine::Impl::CommitShadowWrites(Worker& w, const Message& m, const rules::RuleInfo& rule,
                                      rules::CallResult& result) {
  size_t writes = 0;
  for (const rules::Effect& e : result.effects) {
    writes += e.kind == rules::Effect::Kind::kShadowUpdate ? 1 : 0;
  }
  if (writes == 0) {
    return true;
  }
  auto reject = [&](const std::string& why) {
    shadow_rejected_->Inc();
    DeadLetter(m.delivery, "shadow_rejected", why, rule.name, m.source, m.topic, m.device,
               m.payload, 1, m.ts_ms);
    return false;
  };
  if (!shadow_store_) {
    return reject("ctx.shadow: device shadows are not enabled (see `shadows:` in the config)");
  }
  if (options_.mode == Mode::kDryRun) {
    PrintShadowWrites(m, rule, result);  // shown, not applied
    return true;
  }
  std::vector<ShadowWriteStep> steps;
  if (auto rejected = ApplyLocalShadowWrites(w, result, steps)) {
    return reject(*rejected);
  }
  PersistShadowWrites(w, m, rule, steps);
  RouteShadowWrites(w, m, rule, result);
  return true;
}

void Engine::Impl::PrintShadowWrites(const Message& m, const rules::RuleInfo& rule,
                                     rules::CallResult& result) {
  for (rules::Effect& e : result.effects) {
    if (e.kind == rules::Effect::Kind::kShadowUpdate) {
      Record r;
      r.payload = std::move(e.payload);
      r.topic = ShadowTopic(e.thing, e.shadow_name) + "/update";
      r.device = e.thing;
      r.rule = rule.name;
      r.delivery = m.delivery;
      r.route = kShadowRoute;
      m.delivery->Hold();
      shadow_sink_->sink->Send(std::move(r));
    }
  }
}

// Local writes are tried first on copies: effects of a call are all-or-nothing, so one rejected
// write leaves every shadow as it was. The reason when one is rejected.
std::optional<std::string> Engine::Impl::ApplyLocalShadowWrites(
    Worker& w, const rules::CallResult& result, std::vector<ShadowWriteStep>& steps) {
  int64_t now_s = clock_.NowMs() / 1000;
  // The owner's copy → its new state (the owner's copies stay put until the next Trim).
  std::vector<std::pair<shadow::ShadowDocument*, shadow::ShadowDocument>> staged;
  // One local write (the usual case) needs no copy: a rejected update changes nothing.
  size_t local = 0;
  for (const rules::Effect& e : result.effects) {
    local += e.kind == rules::Effect::Kind::kShadowUpdate && OwnerOf(e.thing) == w.index;
  }
  for (const rules::Effect& e : result.effects) {
    if (e.kind != rules::Effect::Kind::kShadowUpdate || OwnerOf(e.thing) != w.index) {
      continue;
    }
    auto owned = w.shadows->Get(e.thing, e.shadow_name);
    if (!owned.ok()) {
      return std::string(owned.status().message());
    }
    shadow::ShadowDocument* doc = nullptr;
    for (auto& [cached, copy] : staged) {
      if (cached == *owned) {
        doc = &copy;
      }
    }
    if (doc == nullptr) {
      doc = local == 1 ? *owned : &staged.emplace_back(*owned, **owned).second;
    }
    std::string failed;
    auto request = ApplyModel(e.thing, e.payload, &failed);
    if (auto* err = std::get_if<shadow::ShadowError>(&request)) {
      return fmt::format("shadow update of {}{}{} rejected: {}", e.thing,
                         e.shadow_name.empty() ? "" : "/", e.shadow_name, err->Json(now_s));
    }
    std::string model_before = doc->model();
    if (const shadow::ThingModel* model = BoundModel(e.thing)) {
      doc->SetModel(model->ref());
    }
    auto r = doc->Update(std::get<std::string>(request), now_s, {},
                         ShadowEventsWanted(e.thing, e.shadow_name, ShadowChannel::kRouted));
    if (auto* err = std::get_if<shadow::ShadowError>(&r)) {
      doc->SetModel(model_before);
      return fmt::format("shadow update of {}{}{} rejected: {}", e.thing,
                         e.shadow_name.empty() ? "" : "/", e.shadow_name, err->Json(now_s));
    }
    steps.push_back({e.thing, e.shadow_name, std::get<shadow::UpdateResult>(std::move(r)),
                     e.payload, *owned});
  }
  for (auto& [cached, copy] : staged) {
    *cached = std::move(copy);
  }
  return std::nullopt;
}

void Engine::Impl::PersistShadowWrites(Worker& w, const Message& m, const rules::RuleInfo& rule,
                                       std::vector<ShadowWriteStep>& steps) {
  for (ShadowWriteStep& s : steps) {
    ShadowReplyTo to;
    to.channel = ShadowChannel::kRouted;
    to.topic = ShadowTopic(s.thing, s.name) + "/update";
    to.delivery = m.delivery;
    to.source = m.source;
    to.rule = rule.name;
    to.payload = std::move(s.payload);
    m.delivery->Hold();
    // Intermediate states of a shadow written twice in one call are not stored separately:
    // the store keeps the last, and events still go out for each write, in order.
    PersistAndAnswer(w, s.thing, s.name, *s.cached, std::move(s.result), std::move(to));
  }
}

// Writes to shadows other workers own: to their owner, applied there in order.
void Engine::Impl::RouteShadowWrites(Worker& w, const Message& m, const rules::RuleInfo& rule,
                                     rules::CallResult& result) {
  for (rules::Effect& e : result.effects) {
    if (e.kind != rules::Effect::Kind::kShadowUpdate || OwnerOf(e.thing) == w.index) {
      continue;
    }
    ShadowRequest req;
    req.channel = ShadowChannel::kRouted;
    req.rule = rule.name;
    req.target = ShadowTarget{e.thing, e.shadow_name, ShadowVerb::kUpdate};
    Message& rm = req.msg;
    rm.topic = ShadowTopic(e.thing, e.shadow_name) + "/update";
    rm.device = e.thing;
    rm.payload = std::move(e.payload);
    rm.source = m.source;
    rm.ts_ms = m.ts_ms;
    rm.delivery = m.delivery;
    m.delivery->Hold();
    if (!workers_[OwnerOf(e.thing)]->queue.PushForce(std::move(req))) {
      m.delivery->Mark(Delivery::kAbandoned);
      m.delivery->Release();
    }
  }
}

}  // namespace gnomon::engine

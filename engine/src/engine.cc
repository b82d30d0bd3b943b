// SPDX-License-Identifier: Apache-2.0
#include "gnomon/engine/engine.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "effect_printer.h"
#include "engine_impl.h"
#include "gnomon/core/api_router.h"
#include "gnomon/core/json.h"
#include "gnomon/core/log.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/queue.h"
#include "gnomon/core/topic.h"
#include "http_server.h"

namespace gnomon::engine {

Status Engine::Impl::Init() {
  if (!config_.device_id_pattern.empty()) {
    device_pattern_.emplace(config_.device_id_pattern);  // checked by the config loader
  }
  std::error_code ec;
  std::filesystem::create_directories(config_.data_dir, ec);
  if (ec) {
    return Unavailable(fmt::format("data_dir {}: {}", config_.data_dir, ec.message()));
  }
  if (size_t n = poison_.Load(config_.data_dir + "/poison.jsonl"); n > 0) {
    log::Warn("poison messages recorded before a restart will be dead-lettered (rule_timeout)",
              {{"file", config_.data_dir + "/poison.jsonl"}, {"entries", std::to_string(n)}});
  }
  InitMessageMetrics();
  GNOMON_RETURN_IF_ERROR(InitSinks());
  GNOMON_RETURN_IF_ERROR(InitShadows());
  GNOMON_RETURN_IF_ERROR(CheckMigrations(config_.rules));
  GNOMON_RETURN_IF_ERROR(InitSources());
  GNOMON_RETURN_IF_ERROR(InitCluster());
  GNOMON_RETURN_IF_ERROR(InitWorkers());
  GNOMON_RETURN_IF_ERROR(RestoreHistory());
  GNOMON_RETURN_IF_ERROR(RestoreStates());
  return InitServices();
}

// The accounting of messages in, done, dead-lettered and abandoned.
void Engine::Impl::InitMessageMetrics() {
  InitStateMetrics();
  store_waits_ = metrics_.GetCounter(
      "gnomon_worker_store_waits_total",
      "Times a worker waited for the shadow store (shadows.max_pending_writes reached)");
  in_ = metrics_.GetCounter("gnomon_messages_in_total", "Messages taken in from all sources");
  done_ = metrics_.GetCounter("gnomon_messages_done_total",
                              "Messages whose effects are all durable");
  dead_lettered_msgs_ = metrics_.GetCounter(
      "gnomon_messages_dead_lettered_total",
      "Messages finished with at least one dead letter (durable) instead of their effect");
  abandoned_ = metrics_.GetCounter(
      "gnomon_messages_abandoned_total",
      "Messages given up at shutdown (not acknowledged; the source may redeliver)");
  unmatched_ = metrics_.GetCounter("gnomon_messages_unmatched_total",
                                   "Messages whose topic matched no rule");
  dead_letter_failures_ = metrics_.GetCounter(
      "gnomon_dead_letter_failures_total", "Dead letters the dead-letter sink could not write");
  metrics_.AddCollector(
      [this](std::vector<prometheus::MetricFamily>& out) { CollectAccounting(out); });
}

// Sinks, in the order rules know them, and the dead-letter and publish sinks among them (the
// default dead-letter file when none is named).
Status Engine::Impl::InitSinks() {
  for (const Entry& e : config_.sinks) {
    GNOMON_RETURN_IF_ERROR(CreateSink(e));
  }
  for (auto& s : sinks_) {
    if (s.name == config_.dead_letter_sink) {
      dead_letter_sink_ = &s;
    }
    if (s.name == config_.publish_sink) {
      publish_sink_ = &s;
    }
  }
  if (dead_letter_sink_ == nullptr) {
    dead_letter_ = std::make_unique<SinkEntry>();
    dead_letter_->name = "dead-letter";
    if (options_.mode == Mode::kDryRun) {
      dead_letter_->sink = NewEffectPrinter("dead_letter", "dead-letter", *this);
    } else {
      ConfigValue dl;
      dl.SetKind(ConfigValue::Kind::kMap);
      dl.AddField("name", ConfigValue::Scalar("dead-letter"));
      dl.AddField("type", ConfigValue::Scalar("file"));
      dl.AddField("path", ConfigValue::Scalar(config_.data_dir + "/dead-letter.jsonl"));
      // Bounded: rotated by size, and never allowed to take the disk space the shadow store
      // and the outboxes need (past the reserve it drops, counted).
      dl.AddField("max_mb", ConfigValue::Scalar(std::to_string(config_.dead_letters.max_mb)));
      dl.AddField("keep", ConfigValue::Scalar(std::to_string(config_.dead_letters.keep)));
      dl.AddField("min_free_mb",
                  ConfigValue::Scalar(std::to_string(config_.dead_letters.disk_reserve_mb)));
      dl.AddField("when_full", ConfigValue::Scalar("drop"));
      PluginContext ctx{metrics_, *this, clock_, config_.data_dir, config_.base_dir, "dead-letter"};
      GNOMON_ASSIGN_OR_RETURN(dead_letter_->sink, registry_.sink("file")->Create(dl, ctx));
    }
    Labels l = {{"sink", "dead-letter"}};
    dead_letter_->delivered = metrics_.GetCounter("gnomon_sink_records_total", "Records by sink and outcome", {{"sink", "dead-letter"}, {"outcome", "delivered"}});
    dead_letter_->failed = metrics_.GetCounter("gnomon_sink_records_total", "Records by sink and outcome", {{"sink", "dead-letter"}, {"outcome", "failed"}});
    dead_letter_->dead_lettered = dead_letter_->failed;
    dead_letter_->queue_depth = metrics_.GetGauge("gnomon_sink_queue_depth", "Records waiting in the sink's queue", l);
    dead_letter_sink_ = dead_letter_.get();
  }

  return {};
}

// The configured sources (a file of the recorded input when replaying).
Status Engine::Impl::InitSources() {
  if (options_.mode == Mode::kRun) {
    for (const Entry& e : config_.sources) {
      PluginContext ctx{metrics_,     *this, clock_, config_.data_dir, config_.base_dir, e.name,
                        e.connection, e.connection_users};
      ctx.api = this;
      ctx.shared = &shared_;
      ctx.reserved_topic_prefixes = config_.reserved_topic_prefixes;
      SetClusterContext(ctx);
      GNOMON_ASSIGN_OR_RETURN(auto src, registry_.source(e.type)->Create(*e.config, ctx));
      sources_.push_back(std::move(src));
      source_names_.push_back(e.name);
    }
  } else {
    ConfigValue rc;
    rc.SetKind(ConfigValue::Kind::kMap);
    rc.AddField("name", ConfigValue::Scalar("replay"));
    rc.AddField("type", ConfigValue::Scalar("file"));
    rc.AddField("path", ConfigValue::Scalar(options_.replay_input));
    std::string device = options_.replay_device;
    if (device.empty()) {
      device = config_.sources.empty() ? "topic[2]"
                                       : config_.sources[0].config->GetString("device", "topic[2]");
    }
    rc.AddField("device", ConfigValue::Scalar(device));
    PluginContext ctx{metrics_, *this, clock_, config_.data_dir, ".", "replay"};
    GNOMON_ASSIGN_OR_RETURN(auto src, registry_.source("file")->Create(rc, ctx));
    sources_.push_back(std::move(src));
    source_names_.emplace_back("replay");
  }
  if (!source_routes_.empty() && config_.api_listen.empty()) {
    return InvalidArgument(fmt::format(
        "a source of type http serves POST {}... on the API listener: set `api.listen`",
        source_routes_[0].prefix));
  }
  for (const auto& n : source_names_) {
    source_counters_[n] = metrics_.GetCounter("gnomon_source_messages_total",
                                              "Messages taken in, by source", {{"source", n}});
  }

  return {};
}

// The rules, and the workers: each with its own Lua state holding every rule.
Status Engine::Impl::InitWorkers() {
  switch_seconds_ = metrics_.GetHistogram(
      "gnomon_rule_switch_seconds", "Pause of a worker loading a reloaded rule set");
  rules_ = std::make_unique<RuleVersions>(
      metrics_, clock_, [this]() -> Result<std::shared_ptr<const rules::RuleSet>> {
        GNOMON_ASSIGN_OR_RETURN(auto set, LoadRules(config_, nullptr));
        GNOMON_RETURN_IF_ERROR(CheckMigrations(set));  // a failing migrate refuses the reload
        return set;
      });
  rules_->Start(config_.rules);
  std::shared_ptr<const LoadedRules> loaded = rules_->Current();

  for (int i = 0; i < config_.workers; ++i) {
    auto w = std::make_unique<Worker>(config_.worker_queue);
    w->index = static_cast<size_t>(i);
    GNOMON_RETURN_IF_ERROR(InitWorkerShadows(*w));
    GNOMON_RETURN_IF_ERROR(InitWorkerStates(*w));
    GNOMON_ASSIGN_OR_RETURN(w->runtime, rules::RuleRuntime::Create(loaded->set, clock_));
    w->loaded = loaded;
    w->depth = metrics_.GetGauge("gnomon_worker_queue_depth", "Messages waiting per worker",
                                 {{"worker", std::to_string(i)}});
    workers_.push_back(std::move(w));
  }
  return {};
}

Status Engine::Impl::CreateSink(const Entry& e) {
  SinkEntry s;
  s.name = e.name;
  if (options_.mode == Mode::kDryRun) {
    s.sink = NewEffectPrinter(e.name == config_.publish_sink ? "publish" : "emit", e.name, *this);
  } else {
    PluginContext ctx{metrics_,     *this, clock_, config_.data_dir, config_.base_dir, e.name,
                      e.connection, e.connection_users};
    ctx.route = static_cast<int32_t>(sinks_.size());
    ctx.shared = &shared_;
    SetClusterContext(ctx);
    GNOMON_ASSIGN_OR_RETURN(s.sink, registry_.sink(e.type)->Create(*e.config, ctx));
  }
  InitSinkMetrics(s);
  sinks_.push_back(std::move(s));
  return {};
}

void Engine::Impl::InitSinkMetrics(SinkEntry& s) {
  auto c = [&](const char* outcome) {
    return metrics_.GetCounter("gnomon_sink_records_total", "Records by sink and outcome",
                               {{"sink", s.name}, {"outcome", outcome}});
  };
  s.delivered = c("delivered");
  s.failed = c("failed");
  s.dead_lettered = c("dead_lettered");
  s.queue_depth = metrics_.GetGauge("gnomon_sink_queue_depth",
                                    "Records waiting in the sink's queue", {{"sink", s.name}});
}

Status Engine::Impl::Start() {
  for (auto& s : sinks_) {
    GNOMON_RETURN_IF_ERROR(s.sink->Start().WithContext("sink " + s.name));
  }
  if (dead_letter_) {
    GNOMON_RETURN_IF_ERROR(dead_letter_->sink->Start().WithContext("dead-letter sink"));
  }
  if (shadow_sink_) {
    GNOMON_RETURN_IF_ERROR(shadow_sink_->sink->Start().WithContext("shadow sink"));
  }
  if (changelog_sink_) {
    GNOMON_RETURN_IF_ERROR(changelog_sink_->sink->Start().WithContext("shadow change log"));
  }
  for (size_t i = 0; i < workers_.size(); ++i) {
    workers_[i]->thread = std::jthread([this, i] { RunWorker(i); });
  }
  watchdog_ = std::jthread([this](const std::stop_token& st) { Watchdog(st); });
  if (services_enabled()) {
    service_timer_ = std::jthread([this](const std::stop_token& st) { ServiceTimer(st); });
  }
  if (shadow_store_ && options_.mode != Mode::kDryRun) {
    state_timer_ = std::jthread([this](const std::stop_token& st) { StateTimer(st); });
  }
  accepting_ = true;
  started_ = true;
  if (cluster_sink_) {
    GNOMON_RETURN_IF_ERROR(cluster_sink_->Start().WithContext("cluster ingress"));
  }
  for (size_t i = 0; i < sources_.size(); ++i) {
    GNOMON_RETURN_IF_ERROR(
        sources_[i]->Start(IngestFor(i)).WithContext("source " + source_names_[i]));
  }
  if (shadow_source_) {
    GNOMON_RETURN_IF_ERROR(shadow_source_->Start(*shadow_ingest_).WithContext("shadow service"));
  }
  if (options_.mode == Mode::kRun) {
    bool shared = !config_.api_listen.empty() && config_.api_listen == config_.metrics_listen;
    auto options = [&](const std::string& listen, const AppConfig::Listener& l, size_t max_body,
                       bool api, bool metrics) {
      HttpServerOptions o;
      o.listen = listen;
      o.max_body_bytes = max_body;
      o.name = api ? "api" : "ops";
      o.limits.max_connections = static_cast<size_t>(l.max_connections);
      o.limits.io_threads = static_cast<int>(l.io_threads);
      o.limits.handler_threads = static_cast<int>(l.handler_threads);
      o.limits.max_header_bytes = static_cast<size_t>(l.max_header_bytes);
      o.limits.max_header_fields = static_cast<size_t>(l.max_header_fields);
      o.limits.header_timeout = std::chrono::milliseconds(l.header_timeout_ms);
      o.limits.body_timeout = std::chrono::milliseconds(l.body_timeout_ms);
      o.limits.idle_timeout = std::chrono::milliseconds(l.idle_timeout_ms);
      o.tls = {l.tls_cert, l.tls_key, l.tls_client_ca};
      if (api) {
        for (const auto& t : config_.api_tokens) {
          o.tokens.push_back({t.token, t.scopes});
        }
      }
      if (metrics) {
        for (const auto& t : config_.metrics_tokens) {
          o.tokens.push_back({t, kScopeMetrics});
        }
      }
      return o;
    };
    if (!config_.metrics_listen.empty()) {
      auto routes = OpsRoutes();
      if (shared) {
        auto api = ApiRoutes();
        routes.insert(routes.end(), api.begin(), api.end());
      }
      // On a shared port the API's settings (TLS, limits) hold.
      GNOMON_ASSIGN_OR_RETURN(
          http_, HttpServer::Start(options(config_.metrics_listen,
                                           shared ? config_.api : config_.metrics,
                                           shared ? api_max_body_ : size_t{1} << 20, shared, true),
                                   std::move(routes)));
    }
    if (!config_.api_listen.empty() && !shared) {
      auto routes = ApiRoutes();
      auto ops = OpsRoutes();
      for (auto& r : ops) {
        if (r.pattern != "/metrics") {
          routes.push_back(std::move(r));  // health checks on the API port too
        }
      }
      GNOMON_ASSIGN_OR_RETURN(
          api_http_, HttpServer::Start(options(config_.api_listen, config_.api, api_max_body_,
                                               true, false),
                                       std::move(routes)));
    }
    if (config_.watch_rules && !config_.rule_patterns.empty()) {
      watcher_ = std::jthread([this](const std::stop_token& st) { WatchRules(st); });
    }
    StartMembers();  // (once the API listens: its address goes out)
  }
  log::Info("gnomon started", {{"workers", std::to_string(workers_.size())},
                               {"rules", std::to_string(rules_->Current()->set->rules().size())},
                               {"sources", std::to_string(sources_.size())},
                               {"sinks", std::to_string(sinks_.size())},
                               {"metrics", config_.metrics_listen},
                               {"api", config_.api_listen}});
  return {};
}

void Engine::Impl::Stop() {
  if (!started_ || stopped_.exchange(true)) {
    return;
  }
  if (watcher_.joinable()) {
    watcher_.request_stop();
    watcher_.join();
  }
  if (state_timer_.joinable()) {
    state_timer_.request_stop();
    state_timer_.join();
  }
  if (service_timer_.joinable()) {
    service_timer_.request_stop();
    service_timer_.join();
  }
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(config_.shutdown_timeout_ms);
  StopMembers(std::min(deadline, std::chrono::steady_clock::now() + std::chrono::seconds(2)));
  // 1. Sources: no new messages.
  for (auto& s : sources_) {
    s->Stop();
  }
  if (shadow_source_) {
    shadow_source_->Stop();
  }
  if (cluster_sink_) {
    cluster_sink_->Stop(deadline);  // what the sources forwarded reaches Kafka, or is abandoned
  }
  accepting_ = false;
  // 2. Workers: finish what is queued. A worker blocked on a full sink (its destination down)
  // would never finish; at the deadline the sinks stop taking records, so it can.
  for (auto& w : workers_) {
    w->queue.Close();
  }
  auto workers_done = [&] {
    for (auto& w : workers_) {
      if (!w->exited.load()) {
        return false;
      }
    }
    return true;
  };
  while (!workers_done() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // 3. Sinks: deliver until the deadline; the dead-letter sink last, since the others may
  // still dead-letter records while they stop. Sink Stop() is idempotent.
  auto stop_sinks = [&] {
    for (auto& s : sinks_) {
      if (&s != dead_letter_sink_) {
        s.sink->Stop(deadline);
      }
    }
    if (shadow_sink_) {
      shadow_sink_->sink->Stop(deadline);
    }
    if (changelog_sink_) {
      changelog_sink_->sink->Stop(deadline);
    }
  };
  if (!workers_done()) {
    log::Warn("shutdown deadline reached with workers blocked on sinks; abandoning the rest");
    stop_sinks();
  }
  for (auto& w : workers_) {
    if (w->thread.joinable()) {
      w->thread.join();
    }
  }
  if (watchdog_.joinable()) {
    watchdog_.request_stop();
    watchdog_.join();
  }
  if (shadow_store_) {
    shadow_store_->Flush();  // every accepted write durable, its answers and events handed on
  }
  stop_sinks();
  dead_letter_sink_->sink->Stop(std::max(deadline, std::chrono::steady_clock::now() +
                                                       std::chrono::seconds(1)));
  if (watcher_.joinable()) {
    watcher_.request_stop();
    watcher_.join();
  }
  watchers_.Close();
  if (http_) {
    http_->Stop();
  }
  if (api_http_) {
    api_http_->Stop();
  }
  Counts c = counts();
  log::Info("gnomon stopped", {{"in", std::to_string(c.in)},
                               {"done", std::to_string(c.done)},
                               {"dead_lettered", std::to_string(c.dead_lettered)},
                               {"abandoned", std::to_string(c.abandoned)}});
}

bool Engine::Impl::Idle() const {
  for (const auto& s : sources_) {
    if (!s->Finished()) {
      return false;
    }
  }
  Counts c = counts();
  return c.in == c.done + c.dead_lettered + c.abandoned;
}

bool Engine::Impl::Ready() const {
  for (const auto& s : sources_) {
    if (!s->Ready()) {
      return false;
    }
  }
  if (shadow_source_ && !shadow_source_->Ready()) {
    return false;
  }
  if (cluster_sink_ && !cluster_sink_->Ready()) {
    return false;
  }
  if (restore_failing_.load()) {
    return false;
  }
  return started_ && !stopped_;
}

Engine::Counts Engine::Impl::counts() const {
  Counts c;
  // Finished counts first: a message finishing between the reads is then seen as in flight,
  // never as finished-but-not-in.
  c.done = done_->value();
  c.dead_lettered = dead_lettered_msgs_->value();
  c.abandoned = abandoned_->value();
  c.in = in_->value();
  return c;
}

void Engine::Impl::CollectAccounting(std::vector<prometheus::MetricFamily>& out) const {
  Counts c = counts();
  for (auto& s : sinks_) {
    s.queue_depth->Set(static_cast<int64_t>(s.sink->QueueDepth()));
  }
  if (dead_letter_) {
    dead_letter_->queue_depth->Set(static_cast<int64_t>(dead_letter_->sink->QueueDepth()));
  }
  if (shadow_sink_) {
    shadow_sink_->queue_depth->Set(static_cast<int64_t>(shadow_sink_->sink->QueueDepth()));
  }
  if (changelog_sink_) {
    changelog_sink_->queue_depth->Set(static_cast<int64_t>(changelog_sink_->sink->QueueDepth()));
  }
  for (auto& w : workers_) {
    w->depth->Set(static_cast<int64_t>(w->queue.size()));
  }
  // in = done + in_flight + dead_lettered (abandoned messages stay in flight: they were not
  // finished and the source may deliver them again).
  out.push_back(OneSample("gnomon_messages_in_flight", "Messages taken in and not yet finished",
                          prometheus::MetricType::Gauge,
                          static_cast<double>(c.in - c.done - c.dead_lettered)));
}

namespace {

// A device id as it may appear in logs and dead letters: at most 64 bytes, control and
// non-ASCII bytes escaped.
std::string PrintableId(std::string_view id) {
  std::string out;
  for (size_t i = 0; i < id.size() && i < 64; ++i) {
    auto c = static_cast<unsigned char>(id[i]);
    if (c < 0x20 || c >= 0x7f || c == '\\') {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return id.size() > 64 ? out + "..." : out;
}

}  // namespace

bool Engine::Impl::ValidDevice(std::string_view id) const {
  if (device_pattern_) {
    return std::regex_match(id.begin(), id.end(), *device_pattern_);
  }
  return shadow::ValidShadowId(id, 128);
}

bool Engine::Impl::Enter(Message& m, std::unique_ptr<AckHandle> ack) {
  if (!ValidDevice(m.device)) {
    // A device id from a payload field or a topic level can hold anything: "lock-1/cmd/x"
    // reached another device's command topics through rules. Refused at the door.
    std::string why = fmt::format(
        "device id '{}' is not valid: {}", PrintableId(m.device),
        device_pattern_ ? "it does not match device_id_pattern"
                        : "1-128 characters of A-Z a-z 0-9 : _ - (like thing names; set "
                          "device_id_pattern to allow others)");
    Reject(std::move(m), std::move(ack), "bad_device", why);
    return false;
  }
  m.delivery = new Delivery(this, ack.release());
  in_->Inc();
  if (auto it = source_counters_.find(*m.source); it != source_counters_.end()) {
    it->second->Inc();
  }
  return true;
}

bool Engine::Impl::Admit(WorkItem&& item, std::unique_ptr<AckHandle> ack) {
  Message& m = *HeadOf(item);  // items from outside all carry one
  if (!accepting_) {
    if (ack) {
      ack->Abandon();
    }
    return false;
  }
  if (!Enter(m, std::move(ack))) {
    return true;
  }
  Delivery* d = m.delivery;
  if (!workers_[OwnerOf(m.device)]->queue.Push(std::move(item))) {
    d->Mark(Delivery::kAbandoned);  // counted once, when the delivery finishes
    d->Release();
    return false;
  }
  return true;
}

bool Engine::Impl::SubmitBatch(std::vector<Message>& batch) {
  if (!accepting_) {
    return false;
  }
  // Grouped by owner, in arrival order within each group (a device's messages stay in order).
  // Per thread: sources call this from their own threads.
  thread_local std::vector<std::vector<WorkItem>> groups;
  groups.resize(workers_.size());
  for (auto& m : batch) {
    if (Enter(m, nullptr)) {
      size_t w = OwnerOf(m.device);
      groups[w].emplace_back(std::move(m));
    }
  }
  bool all = true;
  for (size_t w = 0; w < workers_.size(); ++w) {
    auto& g = groups[w];
    for (size_t i = workers_[w]->queue.PushMany(g); i < g.size(); ++i) {
      Delivery* d = HeadOf(g[i])->delivery;  // the queue closed: not taken
      d->Mark(Delivery::kAbandoned);
      d->Release();
      all = false;
    }
    g.clear();
  }
  return all;
}

void Engine::Impl::Reject(Message&& m, std::unique_ptr<AckHandle> ack, std::string_view reason,
                          std::string_view error) {
  auto* d = new Delivery(this, ack.release());
  in_->Inc();
  if (auto it = source_counters_.find(*m.source); it != source_counters_.end()) {
    it->second->Inc();
  }
  static log::RateLimiter limiter(10);
  if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
    log::Warn("message rejected", {{"source", *m.source},
                                   {"topic", m.topic},
                                   {"reason", reason},
                                   {"error", error},
                                   {"suppressed_before", std::to_string(suppressed)}});
  }
  DeadLetter(d, reason, error, "", m.source, m.topic, m.device, m.payload, 0, m.ts_ms);
  d->Release();
}

// Moves worker `w` to the rules loaded last (a reload happened since its last message).
void Engine::Impl::SwitchRules(Worker& w) {
  auto cur = rules_->Current();
  if (cur == w.loaded) {
    return;
  }
  auto t0 = std::chrono::steady_clock::now();
  auto rt = rules::RuleRuntime::Create(cur->set, clock_);
  switch_seconds_->Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (rt.ok()) {
    MutexLock lock(w.runtime_mu);
    w.runtime = std::move(rt).value();
    w.loaded = std::move(cur);
    w.device_breakers.clear();  // a reload lifts every quarantine
  } else {
    log::Error("worker cannot load the new rules; keeping the old ones",
               {{"worker", std::to_string(w.index)}, {"error", rt.status().message()}});
  }
}

void Engine::Impl::RunWorker(size_t index) {
  pthread_setname_np(pthread_self(), fmt::format("gnomon-w{}", index).c_str());
  Worker& w = *workers_[index];
  std::vector<WorkItem> batch;
  batch.reserve(kWorkerBatch);
  std::vector<uint32_t> matches;
  rules::CallResult result;
  while (true) {
    // Back-pressure on the disk: take no more messages while the shadow store holds more than
    // shadows.max_pending_writes writes that are not durable yet (its queue never refuses, so
    // without this a source faster than the disk grew memory without bound). The store's
    // writer never waits for a worker, so this cannot deadlock.
    if (shadow_store_) {
      bool waited = false;
      while (!shadow_store_->WaitPendingAtMost(config_.shadows.max_pending_writes,
                                               std::chrono::milliseconds(waited ? 1000 : 0))) {
        if (!waited) {
          store_waits_->Inc();
          waited = true;
        }
      }
    }
    if (!w.queue.PopBatch(batch, kWorkerBatch)) {
      break;
    }
    for (WorkItem& item : batch) {
      // A reload switches this worker between two messages: each message runs wholly on one
      // version, and a worker (so each of its devices) never goes back.
      if (rules_->version() != w.loaded->version) {
        SwitchRules(w);
      }
      std::visit(Overloaded{
                     [&](Message& m) { Process(w, m, matches, result); },
                     [&](ShadowRequest& r) { HandleShadowRequest(w, r); },
                     [&](ShadowEviction& e) { e.state ? DropState(w, e) : DropShadow(w, e); },
                     [&](CallInvoke& c) { InvokeService(w, c); },
                     [&](CallQuery& q) { QueryCall(w, q); },
                     [&](CallEvent& e) { w.calls->On(e); },
                     [&](CallTick&) { w.calls->Tick(); },
                     [&](StateTick&) { FireDue(w); },
                     [&](WindowEvent& e) { ApplyWindowEvent(w, e); },
                     [&](PartitionDrop& d) { DropPartitions(w, d); },
                 },
                 item);
    }
    batch.clear();
    if (w.shadows) {
      w.shadows->Trim();
    }
    if (w.states) {
      w.states->Trim();
    }
  }
  w.exited = true;
}

void Engine::Impl::Process(Worker& w, Message& m, std::vector<uint32_t>& matches,
                           rules::CallResult& result) {
  const LoadedRules& loaded = *w.loaded;
  const rules::RuleSet& set = *loaded.set;
  if (!m.topic.empty() && m.topic[0] == '$' && TakeKeyedEvent(w, m)) {
    return;  // a keyed window's event from another instance (cluster)
  }
  bool presence = false;
  bool reply = false;
  if (!BeforeRules(w, m, presence, reply)) {
    return;
  }
  matches.clear();
  set.Match(m.topic, matches);
  if (matches.empty() && !presence && !reply) {
    unmatched_->Inc();
    m.delivery->Mark(Delivery::kUnmatched);
  }
  rules::MessageView view{
      m.topic, m.device,        &m.payload,           *m.source,          &m.headers,
      m.ts_ms, ++w.message_seq, w.rule_shadows.get(), w.rule_states.get()};
  for (uint32_t idx : matches) {
    RunRule(w, m, idx, view, result);
  }
  m.delivery->Release();  // the processing hold
}

// Presence reports, thing-model checks and service replies, before any rule sees the message.
// False when the message went no further (dead-lettered, or handed to the thing's owner).
bool Engine::Impl::BeforeRules(Worker& w, Message& m, bool& presence, bool& reply) {
  presence = !config_.shadows.presence_from.empty() && shadow_store_ &&
             options_.mode != Mode::kDryRun && TopicMatches(config_.shadows.presence_from, m.topic);
  if (presence && !ApplyPresence(w, m)) {
    m.delivery->Release();  // dead-lettered; rules do not see it
    return false;
  }
  if (!config_.models.empty()) {
    const shadow::ThingModel* model = BoundModel(m.device);
    bool ok = true;
    if (TopicMatches(config_.events_from, m.topic)) {
      ok = CheckEvent(m, model);
    } else if (model != nullptr && !model->topic().empty() &&
               TopicMatches(model->topic(), m.topic)) {
      ok = CheckPropertyPost(m, *model);
    }
    if (!ok) {
      m.delivery->Release();  // refused by the thing's model: dead-lettered
      return false;
    }
  }
  reply = !service_reply_filter_.empty() && TopicMatches(service_reply_filter_, m.topic);
  if (reply && !HandleServiceReply(w, m)) {
    return false;  // dead-lettered, or handed to the thing's owner
  }
  return true;
}

// One matched rule on one message: poison and quarantine checks, the call (with its retries),
// then what its outcome means.
void Engine::Impl::RunRule(Worker& w, Message& m, uint32_t idx, const rules::MessageView& view,
                           rules::CallResult& result) {
  const LoadedRules& loaded = *w.loaded;
  const rules::RuleInfo& rule = loaded.set->rules()[idx];
  const RuleMetrics& rm = loaded.metrics[idx];
  RuleHealth& health = *loaded.health[idx];
  rm.matched->Inc();
  if (!poison_.empty() && poison_.Contains(rule.name, m)) {
    rm.dead_lettered->Inc();
    DeadLetter(m.delivery, "rule_timeout",
               fmt::format("rule {} was stuck in compiled code on this message past 3 x its "
                           "wall_ms ({} ms) and gnomon exited (code 70); the message is not "
                           "run again (data_dir/poison.jsonl)",
                           rule.name, rule.wall_ms),
               rule.name, m.source, m.topic, m.device, m.payload, 0, m.ts_ms);
    return;
  }
  int64_t now_ms = clock_.NowMs();
  Breaker::Verdict rule_verdict = health.breaker.Allow(now_ms);
  Breaker* device_breaker = nullptr;
  Breaker::Verdict device_verdict = Breaker::Verdict::kRun;
  if (!w.device_breakers.empty()) {
    auto it = w.device_breakers.find(DeviceBreakerKey(idx, m.device, view.keyed));
    if (it != w.device_breakers.end()) {
      device_breaker = &it->second;
      device_verdict = device_breaker->Allow(now_ms);
    }
  }
  if (rule_verdict == Breaker::Verdict::kRefuse || device_verdict == Breaker::Verdict::kRefuse) {
    bool whole = rule_verdict == Breaker::Verdict::kRefuse;
    const Breaker& b = whole ? health.breaker : *device_breaker;
    rm.dead_lettered->Inc();
    DeadLetter(m.delivery, "quarantined",
               fmt::format("rule {} is quarantined{} (more than {} failures in {} s that were "
                           "the rule's own fault); one message probes it again in {} s, a "
                           "successful reload lifts it now",
                           rule.name, whole ? "" : " for this device",
                           whole ? rule.quarantine_failures : rule.quarantine_device_failures,
                           rule.quarantine_window_s,
                           std::max<int64_t>(0, (b.open_until_ms() - now_ms + 999) / 1000)),
               rule.name, m.source, m.topic, m.device, m.payload, 0, m.ts_ms);
    if (rule_verdict == Breaker::Verdict::kProbe) {
      health.breaker.ReleaseProbe();  // it did not run: the next message probes
    }
    if (device_verdict == Breaker::Verdict::kProbe) {
      device_breaker->ReleaseProbe();
    }
    return;
  }
  int attempts = 0;
  while (true) {
    ++attempts;
    auto t0 = std::chrono::steady_clock::now();
    w.call_rule.store(&rule, std::memory_order_release);
    w.call_message.store(&m, std::memory_order_release);
    w.call_started_ns.store(t0.time_since_epoch().count(), std::memory_order_release);
    w.runtime->Run(idx, view, result);
    w.call_started_ns.store(0, std::memory_order_release);
    rm.duration->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (result.outcome != rules::Outcome::kFailed || rule.on_error != rules::OnError::kRetry ||
        attempts >= rule.max_attempts) {
      break;
    }
  }
  // The row (ctx.state, timers) is the call's last effect; it is applied after the others
  // (UpdateRow), and only if they were.
  std::optional<rules::Effect> row;
  if (result.outcome == rules::Outcome::kOk && !result.effects.empty() &&
      result.effects.back().kind == rules::Effect::Kind::kState) {
    row = std::move(result.effects.back());
    result.effects.pop_back();
  }
  bool applied = false;
  bool rule_probe = rule_verdict == Breaker::Verdict::kProbe;
  bool device_probe = device_verdict == Breaker::Verdict::kProbe;
  bool fault = result.outcome == rules::Outcome::kFailed && !result.input_failure;
  if (!fault && (rule_probe || device_probe)) {
    if (rule_probe && health.breaker.RecordSuccess(true)) {
      health.quarantined_gauge->Set(0);
      log::Info("rule quarantine lifted: its probe succeeded", {{"rule", rule.name}});
    }
    if (device_probe && device_breaker->RecordSuccess(true)) {
      health.devices_quarantined.fetch_sub(1);
      w.device_breakers.erase(DeviceBreakerKey(idx, m.device, view.keyed));
    }
  }
  switch (result.outcome) {
    case rules::Outcome::kOk:
      if (!result.effects.empty() || row) {
        rm.emitted->Inc();
      }
      applied = Commit(w, m, rule, result);
      break;
    case rules::Outcome::kFiltered: {
      // ctx.drop: counted (outcome="filtered"); its reason is kept as the rule's last drop
      // (/v1/rules) and logged at debug level.
      rm.filtered->Inc();
      std::string_view reason = std::string_view(result.reason).substr(0, 256);
      log::Debug(
          "rule dropped the message",
          {{"rule", rule.name}, {"device", m.device}, {"topic", m.topic}, {"reason", reason}});
      MutexLock lock(health.mu);
      health.last_drop.assign(reason);
      health.last_drop_device.assign(m.device);
      health.last_drop_topic.assign(m.topic, 0, 1024);
      health.last_drop_ms = clock_.NowMs();
      break;
    }
    case rules::Outcome::kFailed:
      rm.failed->Inc();
      if (result.state_reset) {
        rm.state_resets->Inc();
      }
      if (fault) {
        RecordFailure(w, idx, m, view.keyed, rule_probe, device_probe, health, rule, result.reason);
      }
      if (uint64_t suppressed = 0; rule_failure_log_.Allow(&suppressed)) {
        log::Warn("rule failed", {{"rule", rule.name},
                                  {"device", m.device},
                                  {"topic", m.topic},
                                  {"error", result.reason.substr(0, result.reason.find('\n'))},
                                  {"suppressed_before", std::to_string(suppressed)}});
      }
      if (rule.on_error != rules::OnError::kDrop) {
        rm.dead_lettered->Inc();
        DeadLetter(m.delivery, result.timed_out ? "rule_timeout" : "rule_error", result.reason,
                   rule.name, m.source, m.topic, m.device, m.payload, attempts, m.ts_ms);
      }
      break;
  }
  if (w.states && ((row && applied) || view.call != rules::MessageView::Call::kHandle ||
                   rule.inactivity_ms > 0)) {
    UpdateRow(w, m, rule, row && applied ? &*row : nullptr, view.call, view.keyed);
  }
  if (result.window_skips > 0) {
    window_skipped_->Inc(static_cast<double>(result.window_skips));
  }
  if (applied && w.states && !result.keyed_events.empty()) {
    RouteKeyedEvents(m, rule, std::move(result.keyed_events));
  }
  if (applied && w.states && (!result.closed_windows.empty() || !result.late_windows.empty())) {
    std::vector<std::string> late = std::move(result.late_windows);
    WindowsClosed(w, m, idx, rule, view, std::move(result.closed_windows), late);
  }
}

bool Engine::Impl::Commit(Worker& w, const Message& m, const rules::RuleInfo& rule,
                          rules::CallResult& result) {
  if (!CommitShadowWrites(w, m, rule, result)) {
    return false;  // a shadow write was rejected: the message is dead-lettered, nothing applies
  }
  for (rules::Effect& e : result.effects) {
    if (e.kind == rules::Effect::Kind::kShadowUpdate) {
      continue;
    }
    if (e.kind == rules::Effect::Kind::kInvoke) {
      // To the thing's owner, which makes the call; held until the call is durable.
      CallInvoke call;
      call.rule = rule.name;
      call.source_topic = m.topic;
      Message& im = call.msg;
      im.device = std::move(e.thing);
      im.topic = std::move(e.topic);
      im.payload = std::move(e.payload);
      im.key = std::move(e.key);
      im.source = m.source;
      im.ts_ms = m.ts_ms;
      im.delivery = m.delivery;
      m.delivery->Hold();
      size_t owner = OwnerOf(im.device);
      if (!workers_[owner]->queue.PushForce(std::move(call))) {
        m.delivery->Mark(Delivery::kAbandoned);
        m.delivery->Release();
      }
      continue;
    }
    SinkEntry* target = e.kind == rules::Effect::Kind::kEmit ? &sinks_[e.sink] : publish_sink_;
    Record r;
    r.payload = std::move(e.payload);
    r.json = e.json;
    if (e.key.empty()) {
      r.key = m.device;
    } else {
      r.key = std::move(e.key);
    }
    r.topic = std::move(e.topic);
    r.headers = std::move(e.headers);
    r.qos = e.qos;
    r.retain = e.retain;
    r.device = m.device;
    r.rule = rule.name;
    r.source_topic = m.topic;
    r.source = m.source;
    r.ts_ms = m.ts_ms;
    r.delivery = m.delivery;
    r.route = target != nullptr ? static_cast<int32_t>(target - sinks_.data()) : -1;
    m.delivery->Hold();
    if (target == nullptr) {
      // ctx.publish with no MQTT sink configured: the record cannot go anywhere.
      Report(r, FailedPrecondition("ctx.publish: no MQTT sink configured (see `publish.sink`)"));
      continue;
    }
    target->sink->Send(std::move(r));
  }
  return true;
}

void Engine::Impl::CountDeadLetter(std::string_view reason) {
  MutexLock lock(dl_counter_mu_);
  auto it = dl_reasons_.find(reason);
  if (it == dl_reasons_.end()) {
    it = dl_reasons_
             .emplace(std::string(reason),
                      metrics_.GetCounter("gnomon_dead_letters_total", "Dead letters by reason",
                                          {{"reason", std::string(reason)}}))
             .first;
  }
  it->second->Inc();
}

void Engine::Impl::DeadLetter(Delivery* d, std::string_view reason, std::string_view error,
                              std::string_view rule, const std::string* source,
                              std::string_view topic, std::string_view device,
                              std::string_view payload, int attempts, int64_t ts) {
  if (!dl_limiter_.Allow(device, reason, clock_.NowMs())) {
    // Past the device's rate: the message is finished as dead-lettered and counted, its record
    // is not written (one device cannot flood the dead-letter file).
    d->Mark(Delivery::kDeadLettered);
    CountDeadLetter(reason);
    return;
  }
  size_t cap = config_.dead_letters.payload_max_bytes;
  bool cut = payload.size() > cap;
  // Where the input is kept (Kafka: topic[partition]@offset), in the error too, whatever the
  // reason, so a data team can find the record.
  std::string origin = d->ack() != nullptr ? d->ack()->Origin() : std::string();
  std::string error_text(error.substr(0, 4096));
  if (!origin.empty() && error_text.find(origin) == std::string::npos) {
    error_text += " (" + origin + ")";
  }
  Record r;
  json::ObjectWriter w(r.payload);
  w.Field("reason", reason)
      .Field("error", error_text)
      .Field("rule", rule)
      .Field("source", source != nullptr ? std::string_view(*source) : std::string_view())
      .Field("topic", topic.substr(0, 4096))
      .Field("device", device.substr(0, 256))
      .Field("attempts", attempts)
      .Field("payload_base64", json::Base64(cut ? payload.substr(0, cap) : payload));
  if (cut) {
    w.FieldRaw("payload_truncated", "true").Field("payload_bytes", static_cast<int64_t>(payload.size()));
  }
  w.Field("ts", clock_.NowMs()).Field("message_ts", ts);
  if (!origin.empty()) {
    w.Field("origin", origin);
  }
  w.Close();
  r.key = std::string(device);
  r.device = std::string(device);
  r.rule = std::string(rule);
  r.route = kDeadLetterRoute;
  r.source_topic = std::string(topic);
  r.source = source;
  r.ts_ms = ts;
  r.delivery = d;
  d->Mark(Delivery::kDeadLettered);
  d->Hold();
  CountDeadLetter(reason);
  dead_letter_sink_->sink->Send(std::move(r));
}

void Engine::Impl::Report(Record& r, const Status& status) {
  Delivery* d = r.delivery;
  bool is_dead_letter = r.route == kDeadLetterRoute;
  SinkEntry* entry = is_dead_letter              ? dead_letter_sink_
                     : r.route == kShadowRoute    ? shadow_sink_.get()
                     : r.route == kChangelogRoute ? changelog_sink_.get()
                     : r.route >= 0               ? &sinks_[static_cast<size_t>(r.route)]
                                                  : nullptr;
  if (status.ok()) {
    if (entry != nullptr) {
      entry->delivered->Inc();
    }
  } else if (status.code() == StatusCode::kCancelled) {
    d->Mark(Delivery::kAbandoned);
  } else if (is_dead_letter) {
    dead_letter_failures_->Inc();
    entry->failed->Inc();
    d->Mark(Delivery::kAbandoned);
    log::Error("dead letter could not be written", {{"error", status.message()}});
  } else {
    if (entry != nullptr) {
      entry->dead_lettered->Inc();
    }
    static log::RateLimiter limiter(10);
    if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
      log::Warn("record failed; dead-lettering", {{"rule", r.rule},
                                                  {"device", r.device},
                                                  {"error", status.message()},
                                                  {"suppressed_before", std::to_string(suppressed)}});
    }
    if (r.route == kChangelogRoute && d != nullptr) {
      d->Mark(Delivery::kUnlogged);  // (a REST write is then not answered as done)
    }
    DeadLetter(d, "sink_error", status.message(), r.rule, r.source, r.source_topic, r.device,
               r.payload, r.attempts, r.ts_ms);
  }
  if (d != nullptr) {
    d->Release();
  }
}

void Engine::Impl::OnDeliveryFinished(Delivery& d) {
  uint8_t f = d.flags();
  if (f & Delivery::kAbandoned) {
    abandoned_->Inc();
  } else if (f & Delivery::kDeadLettered) {
    dead_lettered_msgs_->Inc();
  } else {
    done_->Inc();
  }
}

// The rule failed through its own fault on `m`: charge the device's breaker and, while that
// one is closed, the rule's. One device adds at most quarantine_device_failures to the rule's
// count before it is quarantined alone.
void Engine::Impl::RecordFailure(Worker& w, uint32_t idx, const Message& m, bool keyed,
                                 bool rule_probe, bool device_probe, RuleHealth& h,
                                 const rules::RuleInfo& rule, const std::string& reason) {
  int64_t now = clock_.NowMs();
  {
    MutexLock lock(h.mu);
    h.last_error = reason.substr(0, reason.find('\n'));
    h.last_error_ms = now;
  }
  std::string key = DeviceBreakerKey(idx, m.device, keyed);
  auto it = w.device_breakers.find(key);
  if (it == w.device_breakers.end()) {
    if (w.device_breakers.size() >= kMaxDeviceBreakers) {
      // Bounded: forget a closed breaker (its device's count starts again).
      for (auto e = w.device_breakers.begin(); e != w.device_breakers.end(); ++e) {
        if (!e->second.open()) {
          w.device_breakers.erase(e);
          break;
        }
      }
    }
    if (w.device_breakers.size() >= kMaxDeviceBreakers) {
      it = w.device_breakers.end();  // every one is open: count on the rule alone
    } else {
      it = w.device_breakers.try_emplace(std::move(key)).first;
    }
  }
  if (it != w.device_breakers.end() &&
      it->second.RecordFailure(h.device_options, now, device_probe)) {
    h.devices_quarantined.fetch_add(1);
    log::Warn("rule quarantined for one device: its messages fail the rule; the rule runs on "
              "for every other device",
              {{"rule", rule.name},
               {"device", m.device},
               {"failures", std::to_string(rule.quarantine_device_failures + 1)},
               {"cooldown_s", std::to_string(rule.quarantine_cooldown_s)},
               {"last_error", reason.substr(0, reason.find('\n'))}});
    return;
  }
  if (device_probe) {
    return;  // the device was quarantined already: its failures do not count for the rule
  }
  if (h.breaker.RecordFailure(h.options, now, rule_probe)) {
    h.quarantined_gauge->Set(1);
    log::Error("rule quarantined: it stops running for its cool-down, then one message probes it",
               {{"rule", rule.name},
                {"failures", std::to_string(rule.quarantine_failures + 1)},
                {"window_s", std::to_string(rule.quarantine_window_s)},
                {"cooldown_s", std::to_string(rule.quarantine_cooldown_s)},
                {"last_error", reason.substr(0, reason.find('\n'))}});
  }
}

// A rule call over its `limits.wall_ms` is interrupted (it fails with a wall-clock error at its
// next interpreted instruction or pattern-matcher step). An interpreted rule always reaches
// one: every C function a rule can call is bounded by its instruction or memory budget, so
// gnomon never exits for it and only says so if the call is slow to stop. A call still running
// at three times the limit in a jit = true rule is stuck in LuaJIT-compiled code, where nothing
// can interrupt it: its worker and every device on it would stall and back-pressure would stop
// the sources, so gnomon records the message as poison (PoisonList) and exits (code 70)
// for its supervisor to restart it, and says why.
void Engine::Impl::Watchdog(const std::stop_token& st) {
  pthread_setname_np(pthread_self(), "gnomon-watchdog");
  std::vector<int64_t> interrupted(workers_.size(), 0);  // the call_started_ns we interrupted
  std::vector<int64_t> reported(workers_.size(), 0);     // ... and reported as slow to stop
  while (!st.stop_requested()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
    for (size_t i = 0; i < workers_.size(); ++i) {
      Worker& w = *workers_[i];
      if (w.call_started_ns.load(std::memory_order_relaxed) == 0) {
        continue;  // idle: no need for the lock
      }
      // Under runtime_mu the worker cannot swap its rule set, so `rule` (which points into
      // that set) stays valid while we look at it.
      MutexLock lock(w.runtime_mu);
      int64_t started = w.call_started_ns.load(std::memory_order_acquire);
      const rules::RuleInfo* rule = w.call_rule.load(std::memory_order_acquire);
      if (started == 0 || rule == nullptr) {
        continue;
      }
      int64_t wall_ns = rule->wall_ms * 1000000;
      int64_t elapsed = now - started;
      if (elapsed > wall_ns && interrupted[i] != started) {
        interrupted[i] = started;
        w.runtime->Interrupt(w.runtime->call_seq());
        log::Warn("rule call over its wall-clock limit; interrupting",
                  {{"rule", rule->name}, {"worker", std::to_string(i)},
                   {"wall_ms", std::to_string(rule->wall_ms)}});
      } else if (elapsed > 3 * wall_ns && interrupted[i] == started && !rule->jit) {
        if (reported[i] != started) {
          reported[i] = started;
          log::Warn("an interpreted rule call is slow to stop after its interrupt (inside a C "
                    "library function); it stops at its next instruction, gnomon keeps running",
                    {{"rule", rule->name}, {"worker", std::to_string(i)},
                     {"elapsed_ms", std::to_string(elapsed / 1000000)}});
        }
      } else if (elapsed > 3 * wall_ns && interrupted[i] == started) {
        const Message* m = w.call_message.load(std::memory_order_acquire);
        if (m != nullptr && w.call_started_ns.load(std::memory_order_acquire) == started) {
          // The worker has been in this call for 3 x wall_ms, so `m` is alive; were the call to
          // end right now, the record would be of a message that finished (harmless: it is
          // dead-lettered only if it comes back), but reading it races its release. We exit
          // either way.
          (void)poison_.Record(rule->name, *m, clock_.NowMs());  // best effort: exiting
        }
        log::Error("a jit = true rule is stuck in compiled code and cannot be interrupted; "
                   "exiting so a supervisor restarts gnomon. The message is recorded in "
                   "data_dir/poison.jsonl and dead-lettered (rule_timeout) when it comes back. "
                   "Mark the rule jit = false to keep it under the instruction limit",
                   {{"rule", rule->name}, {"worker", std::to_string(i)},
                    {"stuck_ms", std::to_string(elapsed / 1000000)}});
        std::_Exit(70);
      }
    }
  }
}

void Engine::Impl::WatchRules(const std::stop_token& st) {
  pthread_setname_np(pthread_self(), "gnomon-watch");
  std::string seen = RuleFilesSignature(config_);
  while (!st.stop_requested()) {
    for (int i = 0; i < 20 && !st.stop_requested(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::string now = RuleFilesSignature(config_);
    if (now != seen) {
      seen = now;
      rules_->Reload("file change").IgnoreError();  // logged and counted; the old rules stay
    }
  }
}

std::string Engine::Impl::RulesJson(std::string_view only) const {
  auto cur = rules_->Current();
  std::string list = "[";
  std::string one;
  for (size_t i = 0; i < cur->set->rules().size(); ++i) {
    const rules::RuleInfo& r = cur->set->rules()[i];
    const RuleMetrics& m = cur->metrics[i];
    RuleHealth& h = *cur->health[i];
    std::string counters;
    json::ObjectWriter(counters)
        .Field("matched", static_cast<int64_t>(m.matched->value()))
        .Field("emitted", static_cast<int64_t>(m.emitted->value()))
        .Field("filtered", static_cast<int64_t>(m.filtered->value()))
        .Field("failed", static_cast<int64_t>(m.failed->value()))
        .Field("dead_lettered", static_cast<int64_t>(m.dead_lettered->value()))
        .Close();
    std::string last_error = "null";
    std::string last_drop = "null";
    {
      MutexLock lock(h.mu);
      if (!h.last_error.empty()) {
        last_error.clear();
        json::ObjectWriter(last_error)
            .Field("message", h.last_error)
            .Field("ts", h.last_error_ms)
            .Close();
      }
      if (h.last_drop_ms != 0) {
        last_drop.clear();
        json::ObjectWriter(last_drop)
            .Field("reason", h.last_drop)
            .Field("device", h.last_drop_device)
            .Field("topic", h.last_drop_topic)
            .Field("ts", h.last_drop_ms)
            .Close();
      }
    }
    std::string from = "[";
    for (size_t f = 0; f < r.from.size(); ++f) {
      from += f ? "," : "";
      json::AppendQuoted(from, r.from[f]);
    }
    from += "]";
    std::string rule;
    json::ObjectWriter(rule)
        .Field("name", r.name)
        .Field("file", r.file)
        .Field("version", r.version)
        .FieldRaw("from", from)
        .Field("state", h.breaker.open() ? "quarantined" : "running")
        .Field("devices_quarantined", h.devices_quarantined.load())
        .Field("loaded_at", cur->loaded_at_ms)
        .Field("ruleset_version", static_cast<int64_t>(cur->version))
        .FieldRaw("jit", r.jit ? "true" : "false")
        .FieldRaw("counters", counters)
        .FieldRaw("last_error", last_error)
        .FieldRaw("last_drop", last_drop)
        .Close();
    if (!only.empty() && r.name == only) {
      one = rule;
    }
    list += (list.size() > 1 ? "," : "") + rule;
  }
  list += "]";
  if (!only.empty()) {
    return one;
  }
  std::string out;
  json::ObjectWriter w(out);
  w.Field("ruleset_version", static_cast<int64_t>(cur->version))
      .Field("loaded_at", cur->loaded_at_ms)
      .FieldRaw("rules", list);
  if (std::string reload = rules_->LastReloadJson(); !reload.empty()) {
    w.FieldRaw("last_reload", reload);
  }
  w.Close();
  return out;
}

namespace {
HttpResponse ErrorResponse(int code, std::string_view error, std::string_view message) {
  HttpResponse r;
  r.status = code;
  json::ObjectWriter(r.body).Field("code", code).Field("error", error).Field("message", message).Close();
  return r;
}
}  // namespace

std::vector<HttpRoute> Engine::Impl::OpsRoutes() {
  std::vector<HttpRoute> routes;
  routes.push_back({"GET", "/metrics",
                    [this](const HttpRequest&) {
                      HttpResponse r;
                      r.body = metrics_.Render();
                      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
                      return r;
                    },
                    config_.metrics_tokens.empty() ? kScopeNone : kScopeMetrics});
  routes.push_back({"GET", "/healthz",
                    [](const HttpRequest&) {
                      HttpResponse r;
                      r.body = "{\"status\":\"ok\"}";
                      return r;
                    },
                    kScopeNone, /*run_inline=*/true});
  routes.push_back({"GET", "/readyz", [this](const HttpRequest&) {
                      std::string why;
                      bool ok = true;
                      for (size_t i = 0; i < sources_.size(); ++i) {
                        if (!sources_[i]->Ready()) {
                          why += fmt::format("source {} not connected; ", source_names_[i]);
                          ok = false;
                        }
                      }
                      for (auto& s : sinks_) {
                        if (!s.sink->Ready()) {
                          why += fmt::format("sink {} not connected; ", s.name);
                          ok = false;
                        }
                      }
                      if (std::string cluster = ClusterNotReady(); !cluster.empty()) {
                        why += cluster + "; ";
                        ok = false;
                      }
                      HttpResponse r;
                      r.status = ok ? 200 : 503;
                      json::ObjectWriter w(r.body);
                      w.Field("status", ok ? "ready" : "not_ready");
                      if (!ok) {
                        w.Field("reason", why);
                      }
                      w.Close();
                      return r;
                    },
                    kScopeNone, /*run_inline=*/true});
  return routes;
}

std::vector<HttpRoute> Engine::Impl::ApiRoutes() {
  // With tokens configured, every API route needs one holding its scope: GETs read, POSTs
  // write, DELETEs (and reloads) admin. The server checks it from the header, before the body.
  bool guarded = !config_.api_tokens.empty();
  auto scoped = [guarded](HttpRoute r, unsigned scope = 0) {
    if (scope == 0) {
      scope = r.method == "GET" ? kScopeRead : r.method == "DELETE" ? kScopeAdmin : kScopeWrite;
    }
    r.scope = guarded ? scope : kScopeNone;
    return r;
  };
  std::vector<HttpRoute> routes;
  for (HttpRoute& r : ShadowRoutes()) {
    routes.push_back(scoped(std::move(r)));
  }
  for (HttpRoute& r : ServiceRoutes()) {
    routes.push_back(scoped(std::move(r)));
  }
  if (shadow_store_) {
    routes.push_back(scoped({"GET", "/v1/things/(.+)/state", [this](const HttpRequest& req) {
                               return RuleStateRoute(req, /*keyed=*/false);
                             }}));
    routes.push_back(
        scoped({"GET", "/v1/rules/([a-z0-9_-]+)/keys/([^/]+)/state",
                [this](const HttpRequest& req) { return RuleStateRoute(req, /*keyed=*/true); }}));
  }
  for (const SourceRoute& sr : source_routes_) {
    routes.push_back(scoped({"POST", sr.prefix + "(.*)", [h = sr.handler](const HttpRequest& req) {
                               ApiRequest in;
                               in.path = req.params.at(0);
                               in.body = req.body;
                               in.content_type = req.content_type;
                               in.query = &req.query;
                               ApiResponse a = h(in);
                               HttpResponse r;
                               r.status = a.status;
                               r.body = std::move(a.body);
                               r.headers = std::move(a.headers);
                               return r;
                             }}));
  }
  if (owned_) {
    routes.push_back(scoped({"GET", "/v1/cluster", [this](const HttpRequest&) {
                               HttpResponse r;
                               r.body = ClusterJson();
                               return r;
                             }}));
  }
  routes.push_back(scoped({"GET", "/v1/rules", [this](const HttpRequest&) {
                             HttpResponse r;
                             r.body = RulesJson("");
                             return r;
                           }}));
  routes.push_back(scoped({"GET", "/v1/rules/([A-Za-z0-9_-]+)", [this](const HttpRequest& req) {
                             HttpResponse r;
                             r.body = RulesJson(req.params.at(0));
                             if (r.body.empty()) {
                               return ErrorResponse(404, "RULE_NOT_FOUND",
                                                    "no rule named " + req.params.at(0));
                             }
                             return r;
                           }}));
  routes.push_back(scoped({"POST", "/v1/rules/reload",
                           [this](const HttpRequest&) {
                             Status st = rules_->Reload("POST /v1/rules/reload");
                             if (!st.ok()) {
                               return ErrorResponse(422, "RELOAD_FAILED", st.message());
                             }
                             HttpResponse r;
                             r.body = RulesJson("");
                             return r;
                           }},
                          kScopeAdmin));
  return routes;
}

Status Engine::Impl::AddPost(std::string prefix,
                             std::function<ApiResponse(const ApiRequest&)> handler,
                             size_t max_body_bytes) {
  for (const SourceRoute& r : source_routes_) {
    if (r.prefix == prefix) {
      return InvalidArgument(fmt::format("two sources serve POST {}: keep one", prefix));
    }
  }
  source_routes_.push_back({std::move(prefix), std::move(handler)});
  api_max_body_ = std::max(api_max_body_, max_body_bytes);
  return {};
}

// ---------------------------------------------------------------------------------------------

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

Result<std::unique_ptr<Engine>> Engine::Create(AppConfig config, const Registry& registry,
                                               const Clock& clock, EngineOptions options) {
  auto impl = std::make_unique<Impl>(std::move(config), registry, clock, std::move(options));
  GNOMON_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Status Engine::Start() { return impl_->Start(); }
bool Engine::Idle() const { return impl_->Idle(); }
void Engine::Stop() { impl_->Stop(); }
bool Engine::Ready() const { return impl_->Ready(); }
MetricsRegistry& Engine::metrics() { return impl_->metrics(); }
Status Engine::ReloadRules(std::string_view why) { return impl_->ReloadRules(why); }
std::string Engine::RulesJson(std::string_view name) const { return impl_->RulesJson(name); }
int Engine::api_port() const { return impl_->api_port(); }
Engine::Counts Engine::counts() const { return impl_->counts(); }

}  // namespace gnomon::engine

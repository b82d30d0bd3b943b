// SPDX-License-Identifier: Apache-2.0
// Engine::Impl: shared by engine.cc (pipeline) and shadows.cc (the shadow service).
#pragma once

#include <fmt/format.h>
#include <pthread.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <variant>

#include "breaker.h"
#include "call_book.h"
#include "cluster_ingress.h"
#include "cluster_members.h"
#include "committed_shadows.h"
#include "dead_letter_limiter.h"
#include "forward.h"
#include "gnomon/core/api_router.h"
#include "gnomon/core/log.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/queue.h"
#include "gnomon/core/record.h"
#include "gnomon/core/shared_objects.h"
#include "gnomon/core/source.h"
#include "gnomon/engine/engine.h"
#include "gnomon/shadow/document.h"
#include "gnomon/shadow/store.h"
#include "http_server.h"
#include "poison_list.h"
#include "rule_versions.h"
#include "shadow_owner.h"
#include "shadow_watchers.h"
#include "state_owner.h"
#include "work.h"

namespace gnomon::engine {

inline constexpr size_t kWorkerBatch = 256;
// Per-(rule, device) quarantine breakers a worker keeps at most (only devices that made a
// rule fail get one).
inline constexpr size_t kMaxDeviceBreakers = 10000;

// `keyed`: the breaker of a keyed window's key, apart from the device of the same name (a
// device that names another's id as a key must not quarantine that device).
inline std::string DeviceBreakerKey(uint32_t rule_index, std::string_view device, bool keyed) {
  std::string key = std::to_string(rule_index);
  key += keyed ? '\1' : '\0';
  key += device;
  return key;
}
inline constexpr int32_t kDeadLetterRoute = -2;
inline constexpr int32_t kShadowRoute = -3;  // shadow answers and events (the shadows sink)
inline constexpr int32_t kChangelogRoute = -4;  // the shadow change log (Kafka)

struct SinkEntry {
  std::string name;
  std::unique_ptr<Sink> sink;
  Counter* delivered;
  Counter* failed;
  Counter* dead_lettered;
  Gauge* queue_depth;
};

class Engine::Impl final : public Ingest,
                           public DeliveryReporter,
                           public DeliveryObserver,
                           public ApiRouter {
 public:
  Impl(AppConfig config, const Registry& registry, const Clock& clock, EngineOptions options)
      : config_(std::move(config)),
        registry_(registry),
        clock_(clock),
        options_(std::move(options)) {}

  ~Impl() override {
    Stop();
    // The sources first, while everything they may call back into is alive: a Kafka source
    // closes its consumer here, and the cluster's revokes its partitions through
    // partition_listener_ (RevokePartitions, which reads owned_).
    sources_.clear();
  }

  Status Init();
  Status ReloadRules(std::string_view why) { return rules_->Reload(why); }
  void InitMessageMetrics();
  Status InitSinks();
  Status InitSources();
  Status InitWorkers();
  // In a cluster (cluster.cc): the ingress producer and consumer; which Ingest a source feeds.
  Status InitCluster();
  Ingest& IngestFor(size_t source);
  void SetClusterContext(PluginContext& ctx) const;
  // Cluster ownership (cluster.cc, docs/cluster.md#shadows). The ingress consumer's rebalances:
  // a partition given is restored from the change log before any of its messages runs; one
  // taken away is dropped from the workers' caches and the store once its messages finished.
  void AssignPartitions(const std::vector<int32_t>& partitions);
  void RevokePartitions(const std::vector<int32_t>& partitions, bool lost);
  // The shadows of `partitions` from the change log into the store; the store's shadows of
  // them that the log does not have are reset. Counts into *records and *shadows. A partition
  // with a place in `positions` (a standby copy, read up to there) is only read from there on
  // (its tail); every partition read leaves its new place there. `standby`: counted as a
  // standby's reads, not a restore's.
  Status RestorePartitions(const std::vector<int32_t>& partitions,
                           std::map<int32_t, int64_t>* positions, size_t* records, size_t* shadows,
                           bool standby = false);
  // Standbys (docs/cluster.md#standbys): the partitions the members' ring gives this instance
  // are followed into the store, a round every kStandbyRoundMs; the copy a partition has when
  // it is given here makes its restore a tail.
  void StandbyRound();
  // Resets the store's shadows of `partitions` except those named in `keep` (ShadowKey), and
  // deletes their rule rows except those named there (shadow::StateChangelogKey).
  Status PurgePartitions(const std::vector<int32_t>& partitions,
                         const std::unordered_set<std::string>& keep);
  // Every worker drops what it keeps of the devices of `partitions`; returns once all did.
  // `schedule` (after their restore): each then schedules their rule rows due soon.
  void DropPartitionsOnWorkers(const std::vector<int32_t>& partitions, bool schedule = false);
  // Windows open in the store's rule rows of `partitions` (for gnomon_rule_windows_open).
  int64_t OpenWindowsIn(const std::vector<int32_t>& partitions);
  void InitClusterMetrics();
  int32_t PartitionOf(std::string_view device) const;
  bool InPartitions(const std::vector<int32_t>& partitions, std::string_view device) const;
  // This instance may write `device`'s shadow now (always true outside a cluster).
  bool OwnsDevice(std::string_view device) const;
  // The 503 for a request about a device this instance does not own (moving, or another's);
  // `why` replaces the reason, `owner` (an API address) goes into X-Gnomon-Owner.
  HttpResponse NotOwnedResponse(std::string_view device, std::string why = "",
                                std::string_view owner = "") const;
  // A request about a device this instance does not own: forwarded to its owner (the freshest
  // member announcing its partition), unless it was forwarded here already, the partition is
  // being restored here, no owner is known or the owner cannot be reached (then the 503).
  HttpResponse ForwardToOwner(const HttpRequest& req, std::string_view device);
  // The members topic (cluster.cc): this instance's announcements (at start, whenever its
  // partitions change, every kAnnounceMs; a tombstone when it stops) and the others'.
  void StartMembers();
  void StopMembers(Deadline deadline);
  void Announce(bool leaving);
  // The partitions this instance owns and those it restores now, in order.
  void OwnedPartitions(std::vector<int32_t>* owned, std::vector<int32_t>* restoring) const;
  // GET /v1/cluster: this instance's view (its partitions, restores, rule versions).
  std::string ClusterJson() const;
  // Why this instance is not ready as a cluster member ("" when it is).
  std::string ClusterNotReady() const;
  Status Start();
  void Stop();
  bool Idle() const;
  bool Ready() const;
  Counts counts() const;
  MetricsRegistry& metrics() { return metrics_; }
  std::string RulesJson(std::string_view name) const;
  int api_port() const { return api_http_ ? api_http_->port() : (http_ ? http_->port() : 0); }

  // ctx.shadow reads of the rules on `worker` (a Worker*), see shadows.cc.
  Result<std::optional<std::string>> ReadShadowFor(void* worker, std::string_view thing,
                                                   std::string_view name);
  // The version of a shadow `worker` owns (from its copy); nullopt: not its own (or no store).
  std::optional<Result<std::optional<int64_t>>> ReadOwnShadowVersion(void* worker,
                                                                     std::string_view thing,
                                                                     std::string_view name);
  // ctx.state reads of the rules on `worker` (a Worker*), see states.cc.
  Result<const rules::StoredState*> ReadStateFor(void* worker, std::string_view rule,
                                                 std::string_view device);
  // ctx.model: the model `thing` is bound to, or null.
  const shadow::ThingModel* ModelFor(std::string_view thing) const { return BoundModel(thing); }

  // gnomon::Ingest
  bool Submit(Message&& m, std::unique_ptr<AckHandle> ack) override {
    return Admit(std::move(m), std::move(ack));
  }
  bool SubmitBatch(std::vector<Message>& batch) override;
  void Reject(Message&& m, std::unique_ptr<AckHandle> ack, std::string_view reason,
              std::string_view error) override;

  // gnomon::DeliveryReporter
  void Report(Record& record, const Status& status) override;

  // gnomon::DeliveryObserver
  void OnDeliveryFinished(Delivery& d) override;

 private:
  struct Worker {
    explicit Worker(size_t capacity) : queue(capacity) {}
    BoundedQueue<WorkItem> queue;
    std::shared_ptr<const LoadedRules> loaded;  // the version `runtime` runs
    std::unique_ptr<rules::RuleRuntime> runtime;
    Gauge* depth = nullptr;
    std::atomic<bool> exited{false};
    uint64_t message_seq = 0;  // ids for MessageView: rules of one message share a parse
    // For the watchdog: the call in progress (0: none) and its rule.
    std::atomic<int64_t> call_started_ns{0};
    std::atomic<const rules::RuleInfo*> call_rule{nullptr};
    std::atomic<const Message*> call_message{nullptr};  // valid while call_started_ns != 0
    // Per-(rule, device) quarantine of the devices this worker owns that made a rule fail; at
    // most kMaxDeviceBreakers, cleared when the worker switches rule versions.
    std::unordered_map<std::string, Breaker> device_breakers;  // key: rule index \0 device
    Mutex runtime_mu;  // held by the watchdog to interrupt, by the worker to swap `runtime`
    std::jthread thread;
    size_t index = 0;
    // Shadows this worker owns (null without `shadows:`).
    std::unique_ptr<ShadowOwner> shadows;
    // Service calls of the things this worker owns (null without services).
    std::unique_ptr<CallBook::Effects> call_effects;
    std::unique_ptr<CallBook> calls;
    std::unique_ptr<rules::ShadowReader> rule_shadows;          // what ctx.shadow reads
    // Rule states (ctx.state) of the devices this worker owns (null without a store).
    std::unique_ptr<StateOwner> states;
    std::unique_ptr<rules::StateReader> rule_states;  // what ctx.state reads
    std::atomic<bool> tick_queued{false};             // a StateTick is in `queue`
    bool row_written = false;                         // UpdateRow wrote a row (Fire looks)
  };

  // Where the answer to a shadow request goes.
  struct ShadowReplyTo {
    ShadowChannel channel = ShadowChannel::kMqtt;
    std::string topic;  // the request topic (replies go to topic + "/accepted" | "/rejected")
    Reply reply;        // kApi
    // Held until the reply is out (MQTT: handed to the sink; the sink holds it further).
    Delivery* delivery = nullptr;
    const std::string* source = nullptr;
    std::string rule;  // kShadowRouted: the rule that wrote, for dead letters
    std::string payload;  // kShadowRouted: the request, for dead letters
    std::string token;    // a get's or delete's clientToken, echoed in its answer
  };

  // Takes a message or a request from outside (a source, the REST API) to the worker that owns
  // its device, as Submit describes. `item` is a Message, ShadowRequest, CallInvoke or
  // CallQuery.
  bool Admit(WorkItem&& item, std::unique_ptr<AckHandle> ack);
  // Admit's door: refuses (dead-letters) a message whose device id is not valid, else counts it
  // in and gives it its delivery. False when it was refused.
  bool Enter(Message& m, std::unique_ptr<AckHandle> ack);
  class ShadowIngest;  // the MQTT shadow topics' source submits through it (shadows.cc)
  Status CreateSink(const Entry& e);
  // gnomon_sink_records_total{sink,outcome} and gnomon_sink_queue_depth{sink} for `s.name`.
  void InitSinkMetrics(SinkEntry& s);
  void RunWorker(size_t index);
  void SwitchRules(Worker& w);
  void Process(Worker& w, Message& m, std::vector<uint32_t>& matches, rules::CallResult& result);
  bool BeforeRules(Worker& w, Message& m, bool& presence, bool& reply);
  void RunRule(Worker& w, Message& m, uint32_t idx, const rules::MessageView& view,
               rules::CallResult& result);
  // The call's effects but its row (see UpdateRow); false when a shadow write was rejected
  // (the message was dead-lettered and nothing applied).
  bool Commit(Worker& w, const Message& m, const rules::RuleInfo& rule, rules::CallResult& result);

  // Rule state (states.cc).
  void InitStateMetrics();
  Status InitWorkerStates(Worker& w);
  void DropPartitions(Worker& w, PartitionDrop& d);  // cluster.cc, on the worker's thread
  // A call's new state (its kState effect): the owner's copy now, durable before the message
  // is finished; a failed write dead-letters the message.
  // At start, before the workers run: the rows with something due, to their owners' schedule.
  Status RestoreStates();
  // Before a rule set runs (at start, on a reload): each rule with `migrate` is tried on up to
  // kMigrateSample states stored under another version; an error names the rule, the device
  // and what migrate said, and refuses the set (on a reload the running version stays).
  Status CheckMigrations(const std::shared_ptr<const rules::RuleSet>& set);
  static constexpr size_t kMigrateSample = 100;
  // After a call of `rule` on `m.device`: the row takes the call's kState effect (`e`, null:
  // none), a handle call moves the inactivity deadline, and the row is scheduled for what is
  // due next. A changed row is written, holding the message until it is durable (a refused
  // write dead-letters it as state_not_stored); a firing (`call` not kHandle) always writes.
  // `keyed`: the row is a keyed window's key's (m.device is the key), not the device's.
  void UpdateRow(Worker& w, const Message& m, const rules::RuleInfo& rule, rules::Effect* e,
                 rules::MessageView::Call call, bool keyed);
  void DropState(Worker& w, const ShadowEviction& evict);
  void StateTimer(const std::stop_token& st);
  // On a StateTick: the due timers and silences of the worker's rows, each a call of its own.
  void FireDue(Worker& w);
  void Fire(Worker& w, uint32_t idx, const rules::RuleInfo& rule, const std::string& device,
            rules::MessageView::Call call, std::string event, bool keyed);
  // GET /v1/things/{device}/state; `keyed`: GET /v1/rules/{rule}/keys/{key}/state.
  HttpResponse RuleStateRoute(const HttpRequest& req, bool keyed);
  Counter* state_stored_ = nullptr;
  Counter* state_failed_ = nullptr;
  Counter* state_loads_ = nullptr;
  Counter* timers_fired_ = nullptr;
  Counter* inactive_fired_ = nullptr;
  Counter* windows_closed_ = nullptr;
  Counter* window_late_ = nullptr;
  Counter* window_skipped_ = nullptr;
  std::atomic<int64_t> windows_open_at_start_{0};  // in the store at start (RestoreStates)
  // A call's events for keyed windows, to the owners of their keys (holding `m` until each
  // is durable there; in a cluster, until the ingress topic has it, in the key's partition).
  void RouteKeyedEvents(const Message& m, const rules::RuleInfo& rule,
                        std::vector<rules::KeyedEvent> events);
  // On the key's owner: a keyed window takes the event.
  void ApplyWindowEvent(Worker& w, WindowEvent& e);
  // In a cluster: a message from the ingress that is a keyed window's event from another
  // instance ("$gnomon/rules/{rule}/keyed") is applied as one; false for any other message.
  bool TakeKeyedEvent(Worker& w, Message& m);
  // After a call that moved windows on: on_window for each closed one, and on_late (or a
  // late_event dead letter) for the windows `m` was late for.
  void WindowsClosed(Worker& w, Message& m, uint32_t idx, const rules::RuleInfo& rule,
                     const rules::MessageView& view, std::vector<std::string> closed,
                     const std::vector<std::string>& late);
  std::string timer_source_name_ = "timer";
  std::jthread state_timer_;

  // Shadows (shadows.cc).
  Status InitShadows();
  void InitShadowMetrics();
  Status OpenShadowStore();
  Status InitShadowMqtt();
  Status InitChangelog();
  Status InitWorkerShadows(Worker& w);
  size_t OwnerOf(std::string_view thing) const;
  std::string ShadowTopic(std::string_view thing, std::string_view name) const;
  void HandleShadowRequest(Worker& w, ShadowRequest& req);
  // HandleShadowRequest's verbs, on the owner's thread.
  void ShadowUpdate(Worker& w, const ShadowTarget& op, shadow::ShadowDocument& d,
                    const std::string& payload, const std::string& idempotency_key,
                    ShadowReplyTo to, int64_t now_s);
  void ShadowChanges(Worker& w, const ShadowTarget& op, shadow::ShadowDocument& d, int64_t since,
                     ShadowReplyTo to, int64_t now_s);
  void ShadowGet(const ShadowTarget& op, shadow::ShadowDocument& d, ShadowReplyTo to,
                 int64_t now_s);
  void ShadowDelete(Worker& w, const ShadowTarget& op, shadow::ShadowDocument& d, ShadowReplyTo to,
                    int64_t now_s);
  // On the store's writer thread, once a write is durable (or refused: `st`): the events and
  // the answer.
  void UpdateDurableOnWriter(const Status& st, const std::string& thing, const std::string& name,
                             shadow::UpdateResult result, ShadowReplyTo to);
  void DeleteDurableOnWriter(const Status& st, const std::string& thing, const std::string& name,
                             std::string body, ShadowReplyTo to);
  // Thing-model validation of an update request for `thing` (spec step 9): the request to apply
  // (weak mode: without the invalid properties, listed in `failed`) or MODEL_VALIDATION.
  std::variant<std::string, shadow::ShadowError> ApplyModel(std::string_view thing,
                                                            std::string request,
                                                            std::string* failed);
  // Applies a rule's shadow writes (those this worker owns now; others go to their owner).
  // False: one was rejected; the message was dead-lettered and no effect of the call applies.
  bool CommitShadowWrites(Worker& w, const Message& m, const rules::RuleInfo& rule,
                          rules::CallResult& result);
  // CommitShadowWrites' steps.
  struct ShadowWriteStep;
  void PrintShadowWrites(const Message& m, const rules::RuleInfo& rule, rules::CallResult& result);
  std::optional<std::string> ApplyLocalShadowWrites(Worker& w, const rules::CallResult& result,
                                                    std::vector<ShadowWriteStep>& steps);
  void PersistShadowWrites(Worker& w, const Message& m, const rules::RuleInfo& rule,
                           std::vector<ShadowWriteStep>& steps);
  void RouteShadowWrites(Worker& w, const Message& m, const rules::RuleInfo& rule,
                         rules::CallResult& result);
  // Queues the durable write of an accepted update and, once durable, its events and reply.
  void PersistAndAnswer(Worker& w, const std::string& thing, const std::string& name,
                        shadow::ShadowDocument& doc, shadow::UpdateResult result,
                        ShadowReplyTo to);
  // Sends `body` as the answer (after earlier writes are durable when `ordered`).
  void Answer(ShadowReplyTo to, int status, std::string body, std::string_view suffix);
  void RejectShadow(ShadowReplyTo to, const shadow::ShadowError& err);
  // Queues the stored form of a shadow this worker owns, with its copy's epoch. A write the
  // store refuses is counted and makes the owner drop that copy before `done` hears of it.
  // `change` goes to the store's history log with it.
  void StoreShadow(Worker& w, const std::string& thing, const std::string& name,
                   std::string stored, shadow::ShadowStore::Done done,
                   std::optional<shadow::ShadowChange> change = std::nullopt);
  // After a refused store write: the owner of (thing, name) forgets its copy of that epoch,
  // which holds the write the store does not (the store is the truth; REST gets already show
  // it). Later writes of the same epoch are refused by the store; the reloaded copy writes on
  // with the next epoch.
  void EvictShadow(const std::string& thing, const std::string& name, uint64_t epoch);
  void DropShadow(Worker& w, const ShadowEviction& evict);
  // At start: the history kept in the store's history log, back to its owners.
  Status RestoreHistory();
  void PublishShadowEvent(const std::string& thing, const std::string& topic,
                          std::string payload, Delivery* hold);
  // The event payloads (shadow::UpdateEvents) a write of (thing, name) from `channel` has
  // consumers for now: the answer, the MQTT shadow topics, rules listening on them, the change
  // log, watch streams. Rules loaded between the write and its events miss them.
  unsigned ShadowEventsWanted(const std::string& thing, const std::string& name,
                              ShadowChannel channel);
  // Produces an accepted write (the documents event; nullptr: a delete, as a tombstone) to the
  // change log, holding `hold` until Kafka has it.
  void ProduceChangelog(const std::string& thing, const std::string& name,
                        const std::string* documents, Delivery* hold);
  // In a cluster: a rule row written (its RuleState::ChangelogJson; empty: deleted) to the
  // change log, under StateChangelogKey, holding `hold` until Kafka has it.
  void ProduceStateChangelog(const std::string& device, const std::string& row, std::string record,
                             Delivery* hold);
  void SendChangelog(std::string key, const std::string& device, std::string source_topic,
                     std::optional<std::string> payload, Delivery* hold);
  // In a cluster: a service call's stored state (nullopt: forgotten) to the change log, under
  // CallChangelogKey, holding `hold` (or a delivery of its own) until Kafka has it.
  void ProduceCallChangelog(const std::string& thing, const std::string& id,
                            std::optional<std::string> record, Delivery* hold);
  std::vector<HttpRoute> ShadowRoutes();
  // Answers a shadow get from the committed cache (or a bad name's error): false when the
  // cache does not have it. Runs on the listener's I/O thread.
  bool CachedShadowGet(const HttpRequest& req, HttpResponse& out);
  HttpResponse ShadowChangesRoute(const HttpRequest& req);
  // A get with `?read=standby` at an instance that keeps a standby copy of the device's
  // partition: answered from the copy, with its lag (docs/cluster.md#standbys); nothing when
  // there is no copy here (the owner answers).
  std::optional<HttpResponse> StandbyShadowGet(const ShadowTarget& target);
  HttpResponse ListShadowNames(const HttpRequest& req);
  HttpResponse ListThings(const HttpRequest& req);
  // A REST shadow request, answered by the owner of `target.thing`.
  HttpResponse ShadowApiCall(ShadowTarget target, std::string body, int64_t since_version = 0,
                             std::string idempotency_key = {});
  // A status message on `shadows.presence.from`: records the device connected or disconnected
  // in its shadow (durably, holding the message until then) and announces changes. False when
  // the message was dead-lettered instead (not a presence payload, store error).
  bool ApplyPresence(Worker& w, Message& m);
  // An event post from a thing bound to a model (`events.from`): validated against the model's
  // event and labelled with headers for the rules. False when it was dead-lettered.
  bool CheckEvent(Message& m, const shadow::ThingModel* model);  // model: the thing's, or null
  // Service calls (services.cc).
  Status InitServices();
  // A device's reply on {prefix}/{thing}/services/{service}/reply: finishes its call (durably,
  // holding the message until then). False when it was dead-lettered instead.
  bool HandleServiceReply(Worker& w, Message& m);
  void InvokeService(Worker& w, CallInvoke& call);
  std::variant<ServiceCall, shadow::ShadowError> MakeCall(Worker& w, const CallInvoke& call_request,
                                                          int64_t now_ms);
  void CallStoredOnWriter(const Status& st, const std::string& thing, const std::string& id,
                          std::string body, bool rest, const Reply& answer, Delivery* delivery);
  void QueryCall(Worker& w, CallQuery& query);
  class CallEffects;  // a worker's CallBook::Effects (services.cc)
  // Publishes the request of `c` on the shadow connection.
  void SendCall(const ServiceCall& c);
  void ServiceTimer(const std::stop_token& st);
  std::optional<bool> Presence(Worker& w, const std::string& thing);
  // Submits a REST request (a CallInvoke, CallQuery or ShadowRequest, answered through its
  // `reply`, which this sets) and waits up to `wait_ms`.
  HttpResponse ApiCall(WorkItem item, int64_t wait_ms);
  static constexpr int64_t kApiWaitMs = 10000;  // answers that need no device: at most this
  // Tells the owner of `thing` what became of call `id`.
  void NoteCall(const std::string& thing, const std::string& id, CallEvent::What what);
  std::vector<HttpRoute> ServiceRoutes();
  bool services_enabled() const { return shadow_store_ != nullptr && !config_.models.empty(); }
  std::string service_reply_filter_;  // {prefix}/+/services/+/reply
  std::string service_request_prefix_;
  std::jthread service_timer_;
  std::unique_ptr<DeliveryObserver> service_sent_;  // turns request publishes into messages
  Counter* calls_made_ = nullptr;
  std::array<Counter*, 6> calls_finished_{};  // by CallState (final states), made at init
  Counter* service_refused_ = nullptr;
  Counter* late_replies_ = nullptr;

  // A message on the bound model's match.topic: its payload is a property post, validated
  // against the model's properties like a report. False when it was dead-lettered.
  bool CheckPropertyPost(Message& m, const shadow::ThingModel& model);
  // The model a thing is bound to (the first whose match fits), or null.
  const shadow::ThingModel* BoundModel(std::string_view thing) const;
  // Sends a dead letter for `m` (or a record); holds `d` until it is durable.
  void DeadLetter(Delivery* d, std::string_view reason, std::string_view error,
                  std::string_view rule, const std::string* source, std::string_view topic,
                  std::string_view device, std::string_view payload, int attempts, int64_t ts);
  void CollectAccounting(std::vector<prometheus::MetricFamily>& out) const;
  void RecordFailure(Worker& w, uint32_t idx, const Message& m, bool keyed, bool rule_probe,
                     bool device_probe, RuleHealth& h, const rules::RuleInfo& rule,
                     const std::string& reason);
  std::vector<HttpRoute> OpsRoutes();
  std::vector<HttpRoute> ApiRoutes();
  // ApiRouter: sources' routes on the API listener (HTTP ingest).
  Status AddPost(std::string prefix, std::function<ApiResponse(const ApiRequest&)> handler,
                 size_t max_body_bytes) override;
  struct SourceRoute {
    std::string prefix;
    std::function<ApiResponse(const ApiRequest&)> handler;
  };
  std::vector<SourceRoute> source_routes_;
  size_t api_max_body_ = 1 << 20;
  void WatchRules(const std::stop_token& st);
  void Watchdog(const std::stop_token& st);
  void CountDeadLetter(std::string_view reason);
  // Whether a source's device id may enter: device_id_pattern, or the thing-name charset.
  bool ValidDevice(std::string_view id) const;
  std::optional<std::regex> device_pattern_;  // set once in Init
  // Poison messages: a message that kept a compiled (jit) rule stuck past 3 x wall_ms made
  // gnomon exit; it is written to data_dir/poison.jsonl first, and after the restart the same
  // (rule, message) is dead-lettered as rule_timeout instead of run again (a crash loop).
  PoisonList poison_;  // loaded in Init; read-only once workers run
  Counter* store_waits_ = nullptr;

  AppConfig config_;
  const Registry& registry_;
  const Clock& clock_;
  EngineOptions options_;
  MetricsRegistry metrics_;
  DeadLetterLimiter dl_limiter_{config_.dead_letters.per_device_per_s, config_.dead_letters.burst,
                                metrics_};

  // Shared by the connectors below (one Kafka connection's transactional producer).
  SharedObjects shared_;
  std::vector<std::unique_ptr<Source>> sources_;
  std::vector<std::string> source_names_;
  // Cluster: this instance's sources forward through cluster_ingress_ (its producer is
  // cluster_sink_); sources_[cluster_source_] consumes this instance's ingress partitions.
  std::unique_ptr<ClusterIngress> cluster_ingress_;
  std::unique_ptr<Sink> cluster_sink_;
  size_t cluster_source_ = SIZE_MAX;
  // By ingress partition: kNotOwned, kRestoring or kOwned (cluster.cc).
  static constexpr uint8_t kNotOwned = 0, kRestoring = 1, kOwned = 2;
  std::unique_ptr<std::atomic<uint8_t>[]> owned_;
  std::unique_ptr<PartitionListener> partition_listener_;
  // The change log's writer per partition (fencing): taken before a restore, let go after a
  // revocation. Null outside a cluster or without shadows.
  PartitionedWriter* changelog_writer_ = nullptr;
  Gauge* cluster_owned_ = nullptr;
  Counter* cluster_restored_records_ = nullptr;
  Counter* cluster_restored_shadows_ = nullptr;
  Counter* cluster_restore_corrupt_ = nullptr;
  Counter* cluster_restore_failures_ = nullptr;
  Counter* cluster_refused_ = nullptr;
  // The restores of this instance's partitions, for /readyz and GET /v1/cluster.
  std::atomic<bool> restore_failing_{false};
  mutable Mutex cluster_mu_;
  struct RestoreInfo {
    std::vector<int32_t> partitions;
    size_t records = 0;
    size_t shadows = 0;
    size_t from_standby = 0;  // partitions whose standby copy made it a tail
    int64_t ms = 0;     // how long it took
    int64_t at_ms = 0;  // when it finished (or failed)
    std::string error;  // the last failure ("" once one succeeded)
  };
  RestoreInfo last_restore_ GNOMON_GUARDED_BY(cluster_mu_);
  // The standby copies: partition → the change-log offset the copy is read up to, and when
  // it last caught up (this instance's clock); taken over by AssignPartitions.
  struct StandbyCopy {
    int64_t position = 0;
    int64_t caught_up_ms = 0;
  };
  mutable Mutex standby_mu_;
  std::map<int32_t, StandbyCopy> standby_ GNOMON_GUARDED_BY(standby_mu_);
  std::jthread standby_follower_;
  std::atomic<bool> standby_stopping_{false};
  // What standby_ held after the last round, for announcements and /v1/cluster (a round may
  // hold standby_mu_ for a while).
  std::map<int32_t, StandbyCopy> standby_view_ GNOMON_GUARDED_BY(cluster_mu_);
  Gauge* cluster_standby_partitions_ = nullptr;
  Counter* cluster_standby_records_ = nullptr;
  // Members: who owns which partition, where their API is (cluster_members.h).
  std::unique_ptr<ClusterMembers> members_;
  std::unique_ptr<DeliveryReporter> members_reporter_;
  std::unique_ptr<Sink> members_sink_;
  std::string advertise_;  // this instance's API for the others (set at Start)
  std::jthread members_follower_;
  std::jthread members_announcer_;
  std::atomic<bool> announce_now_{false};
  Counter* cluster_forwarded_ = nullptr;
  Counter* cluster_forward_failed_ = nullptr;
  Counter* cluster_forward_busy_ = nullptr;
  Counter* cluster_forward_opened_ = nullptr;
  Counter* cluster_forward_kept_ = nullptr;
  std::unique_ptr<ForwardGate> forward_gate_;  // set with members_
  std::shared_ptr<const ForwardTls> forward_tls_;  // set with members_
  std::unique_ptr<ForwardConnections> forward_connections_;  // set with members_
  std::map<std::string, Counter*> source_counters_;
  std::vector<SinkEntry> sinks_;  // in RuleSetOptions::sinks order
  std::unique_ptr<SinkEntry> dead_letter_;  // the default file, when no sink is configured
  SinkEntry* dead_letter_sink_ = nullptr;
  SinkEntry* publish_sink_ = nullptr;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<HttpServer> http_;      // metrics.listen (and the API when on the same port)
  std::unique_ptr<HttpServer> api_http_;  // api.listen, when different

  // The rules' versions and reloads; set in InitWorkers.
  std::unique_ptr<RuleVersions> rules_;
  Histogram* switch_seconds_ = nullptr;  // a worker's pause to load a new rule version
  std::jthread watcher_;
  std::jthread watchdog_;

  Counter* in_;
  Counter* done_;
  Counter* dead_lettered_msgs_;
  Counter* abandoned_;
  Counter* unmatched_;
  Counter* dead_letter_failures_;
  Mutex dl_counter_mu_;
  std::map<std::string, Counter*, std::less<>> dl_reasons_ GNOMON_GUARDED_BY(dl_counter_mu_);

  log::RateLimiter rule_failure_log_{10};  // lines per second; failures are all counted
  std::atomic<bool> started_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<bool> accepting_{false};

  // Shadows: the store, the MQTT service (source of requests, sink of replies and events).
  std::unique_ptr<shadow::ShadowStore> shadow_store_;
  std::unique_ptr<Source> shadow_source_;
  std::unique_ptr<Ingest> shadow_ingest_;
  Counter* cluster_shadow_ignored_ = nullptr;  // requests another instance answers
  std::unique_ptr<SinkEntry> shadow_sink_;
  std::unique_ptr<SinkEntry> changelog_sink_;
  std::string shadow_source_name_ = "shadows";
  std::string api_source_name_ = "api";
  Mutex api_reader_mu_;
  std::unique_ptr<shadow::ShadowStore::Reader> api_reader_ GNOMON_GUARDED_BY(api_reader_mu_);
  CommittedShadows committed_;
  Counter* reads_committed_ = nullptr;  // REST gets answered from committed_
  Counter* reads_owner_ = nullptr;      // ... and by the owner (first read after a start)
  Counter* reads_standby_ = nullptr;    // ... from a standby copy (?read=standby)
  Counter* shadow_accepted_ = nullptr;
  Counter* shadow_rejected_ = nullptr;
  Counter* shadow_unchanged_ = nullptr;
  Counter* shadow_store_failures_ = nullptr;
  Counter* shadow_cache_loads_ = nullptr;
  Counter* shadow_cache_drops_ = nullptr;
  Counter* model_failures_ = nullptr;  // properties and event posts refused by a thing model
  Counter* presence_connected_ = nullptr;  // presence reports by what they said
  Counter* presence_disconnected_ = nullptr;
  Counter* presence_invalid_ = nullptr;

  ShadowWatchers watchers_;  // the watch streams (GET .../shadow/watch)
  HttpResponse Watch(const std::string& thing, const std::string& name);
};

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
// The rules' durable rows per device (docs/rules.md#state): ctx.state, ctx.timer timers and the
// inactivity deadline. What a rule reads, how a call's new row is committed with its other
// effects, how due timers and silences become calls of their own (on_timer, on_inactive) on
// the device's worker, and GET /v1/things/{device}/state. A device's rows belong to the worker
// that owns the device (its messages run there), kept by that worker's StateOwner and written
// in the shadow store's group commits.
#include <algorithm>

#include "api_error.h"
#include "engine_impl.h"
#include "gnomon/core/json.h"
#include "state_owner.h"

namespace gnomon::engine {

namespace {
// Rows a worker fires per tick at most (the rest on the next tick, 20 ms later).
constexpr size_t kFiresPerTick = 1024;
constexpr auto kStateTick = std::chrono::milliseconds(20);

// How much later than the device's last message the durable inactivity deadline may be: it is
// pushed only once per this much time, not on every message (after a restart on_inactive can
// come this late; while gnomon runs it comes on time).
int64_t InactivitySlack(int64_t inactivity_ms) {
  return std::max<int64_t>(1000, inactivity_ms / 10);
}

// When the row's next timer, silence or window close is due (0: nothing).
int64_t NextDue(const StateOwner::Row& row, const rules::RuleInfo* rule) {
  int64_t next = row.next_timer();
  if (row.window_due > 0) {
    next = next == 0 ? row.window_due : std::min(next, row.window_due);
  }
  if (row.inactive_due > 0 && rule != nullptr && rule->inactivity_ms > 0) {
    int64_t exact = row.last_seen > 0 ? row.last_seen + rule->inactivity_ms : row.inactive_due;
    next = next == 0 ? exact : std::min(next, exact);
  } else if (row.inactive_due > 0) {
    next = next == 0 ? row.inactive_due : std::min(next, row.inactive_due);
  }
  return next;
}
}  // namespace

// ctx.state and ctx.timer for the rules of one worker: the rows of the devices it owns.
class WorkerStateReader final : public rules::StateReader {
 public:
  WorkerStateReader(Engine::Impl* impl, void* worker) : impl_(impl), worker_(worker) {}
  Result<const rules::StoredState*> ReadState(std::string_view rule,
                                              std::string_view device) override {
    return impl_->ReadStateFor(worker_, rule, device);
  }

 private:
  Engine::Impl* impl_;
  void* worker_;
};

void Engine::Impl::InitStateMetrics() {
  auto writes = [&](const char* outcome) {
    return metrics_.GetCounter(
        "gnomon_rule_state_writes_total",
        "Rule state rows (ctx.state, timers, inactivity) written, by outcome",
        {{"outcome", outcome}});
  };
  state_stored_ = writes("stored");
  state_failed_ = writes("failed");
  state_loads_ =
      metrics_.GetCounter("gnomon_rule_state_loads_total",
                          "Rule state rows read from the store into their worker's cache");
  auto fired = [&](const char* kind) {
    return metrics_.GetCounter("gnomon_rule_timer_firings_total",
                               "on_timer and on_inactive calls made", {{"kind", kind}});
  };
  timers_fired_ = fired("timer");
  inactive_fired_ = fired("inactive");
  windows_closed_ = metrics_.GetCounter("gnomon_rule_windows_closed_total",
                                        "Windows closed (each an on_window call)");
  auto events = [&](const char* outcome) {
    return metrics_.GetCounter("gnomon_rule_window_events_total",
                               "Messages a window did not take, by why", {{"outcome", outcome}});
  };
  window_late_ = events("late");
  window_skipped_ = events("skipped");
  metrics_.AddCollector([this](std::vector<prometheus::MetricFamily>& out) {
    double pending = 0;
    for (const auto& w : workers_) {
      pending += w->states ? static_cast<double>(w->states->pending()) : 0;
    }
    out.push_back(OneSample(
        "gnomon_rule_timers_pending",
        "Rule state rows with a timer, silence or window close due in the next 10-20 s (in memory)",
        prometheus::MetricType::Gauge, pending));
    double open = static_cast<double>(windows_open_at_start_.load(std::memory_order_relaxed));
    for (const auto& w : workers_) {
      open += w->states ? static_cast<double>(w->states->open_windows()) : 0;
    }
    out.push_back(OneSample("gnomon_rule_windows_open",
                            "Windows open in the rules' rows (a sliding window holding events "
                            "is one), devices' and keys'",
                            prometheus::MetricType::Gauge, open));
  });
}

Status Engine::Impl::InitWorkerStates(Worker& w) {
  if (!shadow_store_) {
    return {};  // ctx.state fails the call: there is no store to keep it in
  }
  w.states = std::make_unique<StateOwner>(config_.shadows.state_cache_mb << 20, *shadow_store_,
                                          state_loads_);
  w.rule_states = std::make_unique<WorkerStateReader>(this, &w);
  return {};
}

Status Engine::Impl::RestoreStates() {
  if (!shadow_store_) {
    return {};
  }
  if (owned_) {
    // A cluster: nothing is owned yet; each partition's rows are scheduled (and their windows
    // counted) when it is given here and restored (AssignPartitions).
    for (auto& w : workers_) {
      w->states->Cover(clock_.NowMs() + StateOwner::kMarginMs);
    }
    return {};
  }
  GNOMON_ASSIGN_OR_RETURN(auto reader, shadow_store_->NewReader());
  int64_t open = 0;
  GNOMON_RETURN_IF_ERROR(
      reader->Windows([&](std::string_view windows) { open += rules::OpenWindows(windows); }));
  windows_open_at_start_ = open;
  // What is due soon (or overdue) now; the rest comes in as time moves on (StateOwner::Extend).
  int64_t until = clock_.NowMs() + StateOwner::kMarginMs;
  for (auto& w : workers_) {
    w->states->Cover(until);
  }
  size_t n = 0;
  GNOMON_RETURN_IF_ERROR(
      reader->Due(1, until, [&](std::string_view device, std::string_view rule, int64_t due) {
        workers_[OwnerOf(device)]->states->Schedule(StateKey(rule, device), due);
        ++n;
      }));
  if (n > 0) {
    log::Info("rule timers restored", {{"rows", std::to_string(n)}});
  }
  return {};
}

namespace {
// One stored state, for a migrate check.
class OneStoredState final : public rules::StateReader {
 public:
  Result<const rules::StoredState*> ReadState(std::string_view, std::string_view) override {
    return &state;
  }
  rules::StoredState state;
};
}  // namespace

Status Engine::Impl::CheckMigrations(const std::shared_ptr<const rules::RuleSet>& set) {
  if (!shadow_store_ || set == nullptr ||
      std::none_of(set->rules().begin(), set->rules().end(),
                   [](const rules::RuleInfo& r) { return r.has_migrate; })) {
    return {};
  }
  GNOMON_ASSIGN_OR_RETURN(auto rt, rules::RuleRuntime::Create(set, clock_));
  for (uint32_t idx = 0; idx < set->rules().size(); ++idx) {
    const rules::RuleInfo& rule = set->rules()[idx];
    if (!rule.has_migrate) {
      continue;
    }
    // The devices' rows, then the keys' (keyed windows' on_window may keep ctx.state too).
    std::vector<std::tuple<std::string, rules::StoredState, bool>> rows;
    for (bool keyed : {false, true}) {
      MutexLock lock(api_reader_mu_);
      GNOMON_RETURN_IF_ERROR(api_reader_->StatesToMigrate(
          rules::StateRowName(rule.name, keyed), rule.state_version, kMigrateSample,
          [&](std::string_view device, const shadow::RuleState& row) {
            rows.emplace_back(std::string(device),
                              rules::StoredState{row.version, row.json, {}, {}}, keyed);
          }));
    }
    for (auto& [device, stored, keyed] : rows) {
      OneStoredState reader;
      int64_t from = stored.version;
      reader.state = std::move(stored);
      std::string topic = "$gnomon/rules/" + rule.name + "/migrate";
      std::string payload = "{}";
      Headers none;
      rules::MessageView view{topic,          device, &payload, "migrate", &none,
                              clock_.NowMs(), 0,      nullptr,  &reader};
      view.call = rules::MessageView::Call::kMigrate;
      view.keyed = keyed;
      rules::CallResult result;
      rt->Run(idx, view, result);
      if (result.outcome == rules::Outcome::kFailed) {
        return FailedPrecondition(fmt::format(
            "rule {}: migrate fails on the state of {} {} stored under version {} (checked "
            "on up to {} stored states before the rule runs): {}",
            rule.name, keyed ? "key" : "device", device, from, kMigrateSample,
            std::string_view(result.reason).substr(0, result.reason.find('\n'))));
      }
    }
  }
  return {};
}

// The row stays in the owner's cache, unchanged, until the call ends: rows change and are
// dropped only between calls (UpdateRow, Evict, Trim).
Result<const rules::StoredState*> Engine::Impl::ReadStateFor(void* worker, std::string_view rule,
                                                             std::string_view device) {
  Worker& w = *static_cast<Worker*>(worker);
  GNOMON_ASSIGN_OR_RETURN(
      StateOwner::Row * row,
      w.states->Get(std::string(rule), std::string(device), w.shadows->reader()));
  if (row->state.json.empty() && row->state.timers.empty() && row->state.windows.empty()) {
    return nullptr;
  }
  return &row->state;
}

void Engine::Impl::UpdateRow(Worker& w, const Message& m, const rules::RuleInfo& rule,
                             rules::Effect* e, rules::MessageView::Call call, bool keyed) {
  if (options_.mode == Mode::kDryRun || !w.states) {
    return;  // a dry run applies nothing (and without a store no call gets this far)
  }
  using Call = rules::MessageView::Call;
  bool handle = call == Call::kHandle;
  std::string row_name = rules::StateRowName(rule.name, keyed);
  auto got = w.states->Get(row_name, m.device, w.shadows->reader());
  if (!got.ok()) {
    // Only an inactivity update can get here without the row read already (a call that used
    // ctx.state read it): the deadline is not moved; the next message tries again.
    log::Error("rule state could not be read",
               {{"rule", rule.name}, {"device", m.device}, {"error", got.status().message()}});
    return;
  }
  StateOwner::Row& row = **got;
  // A firing always writes: its timer, deadline or window close is gone.
  bool write = call == Call::kTimer || call == Call::kInactive || call == Call::kAdvance;
  if (e != nullptr) {
    row.state.version = e->state_version;
    row.state.json = std::move(e->payload);
    row.state.timers = std::move(e->timers);
    w.states->SetWindows(row, std::move(e->windows));
    row.window_due = e->window_due;
    write = true;
  }
  if (handle && rule.inactivity_ms > 0) {
    int64_t now = clock_.NowMs();
    row.last_seen = now;
    if (row.inactive_due < now + rule.inactivity_ms) {
      row.inactive_due = now + rule.inactivity_ms + InactivitySlack(rule.inactivity_ms);
      write = true;
    }
  }
  w.states->Schedule(StateKey(row_name, m.device), NextDue(row, &rule));
  if (!write) {
    return;
  }
  w.row_written = true;
  uint64_t epoch = w.states->epoch(row_name, m.device);
  m.delivery->Hold();  // until the row is durable
  // In a cluster the row goes to the change log too, once durable here (as a shadow's write
  // does): it moves with its device's partition (docs/cluster.md).
  std::shared_ptr<std::string> record;  // (filled by Put, read once durable)
  if (owned_ && changelog_sink_) {
    record = std::make_shared<std::string>();
  }
  std::string* record_out = record.get();
  w.states->Put(
      row_name, m.device,
      [this, d = m.delivery, row = row_name, rule = rule.name, device = m.device, epoch,
       source = m.source, topic = m.topic, payload = m.payload, ts = m.ts_ms,
       record = std::move(record)](const Status& st) {
        if (st.ok()) {
          state_stored_->Inc();
          if (record) {
            ProduceStateChangelog(device, row, std::move(*record), d);
          }
        } else {
          // The message's other effects went out; its row did not: it is dead-lettered (a
          // replay runs it again) and the worker reads the row from the store again.
          state_failed_->Inc();
          log::Error("rule state could not be stored",
                     {{"rule", rule}, {"device", device}, {"error", st.message()}});
          (void)workers_[OwnerOf(device)]->queue.PushForce(
              ShadowEviction{device, row, epoch, /*state=*/true});
          DeadLetter(
              d, "state_not_stored",
              fmt::format("ctx.state of rule {} could not be stored: {}", rule, st.message()), rule,
              source, topic, device, payload, 1, ts);
        }
        d->Release();
      },
      record_out);
}

void Engine::Impl::DropState(Worker& w, const ShadowEviction& evict) {
  if (w.states && w.states->Evict(evict.name, evict.thing, evict.epoch)) {
    // Read back now, so the windows the store holds count again at once (not at the row's
    // next use); a failed read leaves that to the next use.
    (void)w.states->Get(evict.name, evict.thing, w.shadows->reader());
  }
}

void Engine::Impl::StateTimer(const std::stop_token& st) {
  pthread_setname_np(pthread_self(), "gnomon-timers");
  uint64_t n = 0;
  while (!st.stop_requested()) {
    std::this_thread::sleep_for(kStateTick);
    // Every second a tick for every worker: rows due later than its horizon come in from the
    // store as time moves on (StateOwner::Extend), whether or not something is due now.
    bool all = ++n % 50 == 0;
    for (auto& w : workers_) {
      // One tick in a queue at a time; behind messages, which it must not overtake anyway.
      if (w->states && (all || w->states->pending() > 0) && !w->tick_queued.exchange(true)) {
        (void)w->queue.PushForce(StateTick{});
      }
    }
  }
}

void Engine::Impl::FireDue(Worker& w) {
  w.tick_queued = false;
  if (!w.states || !accepting_) {
    return;
  }
  int64_t now = clock_.NowMs();
  auto extended = w.states->Extend(now, w.shadows->reader(), [&](std::string_view device) {
    // (In a cluster the store holds other instances' rows too: standby copies.)
    return OwnerOf(device) == w.index && OwnsDevice(device);
  });
  if (!extended.ok()) {
    log::Error("rule timers due soon could not be read from the store",
               {{"error", extended.status().message()}});
  }
  const rules::RuleSet& set = *w.loaded->set;
  for (const std::string& key : w.states->TakeDue(now, kFiresPerTick)) {
    size_t zero = key.find('\0');
    std::string row_name = key.substr(0, zero);  // the rule's, or its keyed windows' (StateRowName)
    std::string device = key.substr(zero + 1);
    if (!OwnsDevice(device)) {
      continue;  // its partition moved (or is being restored: scheduled again after)
    }
    std::pair<std::string_view, bool> parsed = rules::ParseStateRowName(row_name);
    std::string_view rule_name = parsed.first;
    bool keyed = parsed.second;
    const auto& rules = set.rules();
    auto it = std::find_if(rules.begin(), rules.end(),
                           [&](const rules::RuleInfo& r) { return r.name == rule_name; });
    if (it == rules.end()) {
      continue;  // the rule is gone: its row waits (it is scheduled again if the rule returns
                 // and the device's next message reaches it, or at the next start)
    }
    const rules::RuleInfo& rule = *it;
    auto idx = static_cast<uint32_t>(it - rules.begin());
    auto got = w.states->Get(row_name, device, w.shadows->reader());
    if (!got.ok()) {
      log::Error("rule state could not be read for its timers",
                 {{"rule", row_name}, {"device", device}, {"error", got.status().message()}});
      w.states->Schedule(key, now + 1000);  // try again in a second
      continue;
    }
    bool ingest_windows = std::any_of(rule.windows.begin(), rule.windows.end(),
                                      [](const rules::WindowDecl& d) { return d.by_clock(); });
    while (true) {
      StateOwner::Row& row = **got;
      if (row.window_due > 0 && row.window_due <= now && ingest_windows) {
        row.window_due = 0;  // (set again by the call from what is still open)
        Fire(w, idx, rule, device, rules::MessageView::Call::kAdvance, "{}", keyed);
        got = w.states->Get(row_name, device, w.shadows->reader());
        if (!got.ok()) {
          break;
        }
        continue;
      }
      auto t = std::min_element(
          row.state.timers.begin(), row.state.timers.end(),
          [](const rules::RuleTimer& a, const rules::RuleTimer& b) { return a.due_ms < b.due_ms; });
      bool timer = t != row.state.timers.end() && t->due_ms <= now;
      int64_t silent_since = 0;
      bool inactive = false;
      if (!timer && row.inactive_due > 0 && rule.inactivity_ms > 0) {
        int64_t exact = row.last_seen > 0 ? row.last_seen + rule.inactivity_ms : row.inactive_due;
        inactive = exact <= now;
        silent_since = row.last_seen > 0 ? row.last_seen
                                         : row.inactive_due - rule.inactivity_ms -
                                               InactivitySlack(rule.inactivity_ms);
      }
      if (!timer && !inactive) {
        w.states->Schedule(key, NextDue(row, &rule));
        break;
      }
      std::string event;
      json::ObjectWriter ev(event);
      rules::MessageView::Call call;
      if (timer) {
        ev.Field("name", t->name).Field("due", t->due_ms);
        if (!t->data.empty()) {
          ev.FieldRaw("data", t->data);
        }
        row.state.timers.erase(t);  // gone with this call, whatever becomes of it
        call = rules::MessageView::Call::kTimer;
        timers_fired_->Inc();
      } else {
        ev.Field("last_seen", silent_since).Field("inactivity_ms", rule.inactivity_ms);
        row.inactive_due = 0;  // until the device's next message
        call = rules::MessageView::Call::kInactive;
        inactive_fired_->Inc();
      }
      ev.Close();
      Fire(w, idx, rule, device, call, std::move(event), keyed);
      got = w.states->Get(row_name, device, w.shadows->reader());  // (a refused write evicts)
      if (!got.ok()) {
        break;
      }
    }
  }
}

void Engine::Impl::Fire(Worker& w, uint32_t idx, const rules::RuleInfo& rule,
                        const std::string& device, rules::MessageView::Call call, std::string event,
                        bool keyed) {
  using Call = rules::MessageView::Call;
  Message m;
  m.topic = "$gnomon/rules/" + rule.name +
            (call == Call::kTimer      ? "/timer"
             : call == Call::kInactive ? "/inactive"
             : call == Call::kWindow   ? "/window"
                                       : "/advance");
  m.device = device;
  m.payload = std::move(event);
  m.source = &timer_source_name_;
  m.ts_ms = clock_.NowMs();
  m.delivery = new Delivery(this, nullptr);
  in_->Inc();
  rules::MessageView view{
      m.topic, m.device,        &m.payload,           *m.source,          &m.headers,
      m.ts_ms, ++w.message_seq, w.rule_shadows.get(), w.rule_states.get()};
  view.call = call;
  view.event = m.payload;
  view.keyed = keyed;
  rules::CallResult result;
  w.row_written = false;
  RunRule(w, m, idx, view, result);
  if (!w.row_written && call != Call::kWindow) {
    UpdateRow(w, m, rule, nullptr, call,
              keyed);  // the timer, deadline or close is gone even if the
                       // call failed (it was dead-lettered) or did not run
  }
  m.delivery->Release();  // the processing hold
}

void Engine::Impl::RouteKeyedEvents(const Message& m, const rules::RuleInfo& rule,
                                    std::vector<rules::KeyedEvent> events) {
  if (options_.mode == Mode::kDryRun) {
    return;
  }
  for (rules::KeyedEvent& k : events) {
    WindowEvent e;
    e.rule = rule.name;
    e.msg.topic = "$gnomon/rules/" + rule.name + "/keyed";
    json::ObjectWriter w(e.msg.payload);
    w.Field("window", k.window).Field("t", k.t);
    std::string v;
    json::AppendNumber(v, k.value);
    w.FieldRaw("v", v).Close();
    e.msg.device = std::move(k.key);
    e.msg.source = m.source;
    e.msg.ts_ms = m.ts_ms;
    m.delivery->Hold();
    if (cluster_ingress_ != nullptr) {
      // In a cluster the key's partition is generally another instance's: the event goes to
      // its owner through the ingress topic, in the key's partition (docs/cluster.md).
      cluster_ingress_->SubmitOwn(std::move(e.msg), m.delivery);
      continue;
    }
    e.msg.delivery = m.delivery;
    size_t owner = OwnerOf(e.msg.device);
    if (!workers_[owner]->queue.PushForce(std::move(e))) {
      m.delivery->Mark(Delivery::kAbandoned);
      m.delivery->Release();
    }
  }
}

bool Engine::Impl::TakeKeyedEvent(Worker& w, Message& m) {
  // "$gnomon/rules/{rule}/keyed", from the cluster's ingress (ClusterIngress refuses these
  // topics from any other source, so only gnomon's own events come this way).
  constexpr std::string_view kPrefix = "$gnomon/rules/";
  constexpr std::string_view kSuffix = "/keyed";
  if (cluster_ingress_ == nullptr || !m.topic.starts_with(kPrefix) || !m.topic.ends_with(kSuffix) ||
      m.topic.size() <= kPrefix.size() + kSuffix.size()) {
    return false;
  }
  WindowEvent e;
  e.rule = m.topic.substr(kPrefix.size(), m.topic.size() - kPrefix.size() - kSuffix.size());
  e.msg = std::move(m);
  ApplyWindowEvent(w, e);  // (releases the message's processing hold)
  return true;
}

void Engine::Impl::ApplyWindowEvent(Worker& w, WindowEvent& e) {
  const auto& rules = w.loaded->set->rules();
  auto it = std::find_if(rules.begin(), rules.end(),
                         [&](const rules::RuleInfo& r) { return r.name == e.rule; });
  if (it != rules.end() && w.states) {
    auto idx = static_cast<uint32_t>(it - rules.begin());
    rules::MessageView view{e.msg.topic,     e.msg.device,         &e.msg.payload,
                            *e.msg.source,   &e.msg.headers,       e.msg.ts_ms,
                            ++w.message_seq, w.rule_shadows.get(), w.rule_states.get()};
    view.call = rules::MessageView::Call::kKeyed;
    view.event = e.msg.payload;
    view.keyed = true;
    rules::CallResult result;
    RunRule(w, e.msg, idx, view, result);
  }
  e.msg.delivery->Release();  // the hold RouteKeyedEvents took
}

void Engine::Impl::WindowsClosed(Worker& w, Message& m, uint32_t idx, const rules::RuleInfo& rule,
                                 const rules::MessageView& view, std::vector<std::string> closed,
                                 const std::vector<std::string>& late) {
  for (std::string& event : closed) {
    windows_closed_->Inc();
    Fire(w, idx, rule, m.device, rules::MessageView::Call::kWindow, std::move(event), view.keyed);
  }
  if (late.empty()) {
    return;
  }
  window_late_->Inc(static_cast<double>(late.size()));
  if (rule.has_on_late) {
    for (const std::string& name : late) {
      std::string event;
      json::ObjectWriter(event).Field("name", name).Close();
      rules::MessageView v = view;
      v.call = rules::MessageView::Call::kLate;
      v.event = event;
      rules::CallResult result;
      RunRule(w, m, idx, v, result);
    }
    return;
  }
  std::string names;
  for (const std::string& name : late) {
    names += (names.empty() ? "" : ", ") + name;
  }
  DeadLetter(m.delivery, "late_event",
             fmt::format("rule {}: the message is late for window(s) {} (they closed: its time "
                         "is before their end plus grace); the rest of the call applied",
                         rule.name, names),
             rule.name, m.source, m.topic, m.device, m.payload, 1, m.ts_ms);
}

// GET /v1/things/{device}/state[?rule=NAME]: the committed row of one rule for the device, or
// of every rule that keeps one. GET /v1/rules/{rule}/keys/{key}/state (`keyed`): the row of
// one key of the rule's keyed windows.
HttpResponse Engine::Impl::RuleStateRoute(const HttpRequest& req, bool keyed) {
  const std::string& device = req.params.at(keyed ? 1 : 0);
  int64_t now_s = clock_.NowMs() / 1000;
  if (keyed) {
    if (!rules::ValidWindowKey(device)) {
      return ErrorResponse(
          ApiError(400, "INVALID_KEY", "Window keys are 1-128 bytes of A-Z a-z 0-9 . : _ -"),
          now_s);
    }
  } else if (auto bad = CheckThingName(device)) {
    return ErrorResponse(*bad, now_s);
  }
  if (!keyed && !OwnsDevice(device)) {
    return ForwardToOwner(req, device);  // (a cluster: the device's owner has its rows)
  }
  const std::string* rule = keyed ? &req.params.at(0) : req.Query("rule");
  auto rules_now = rules_->Current();
  auto entry = [&](json::ObjectWriter& w, const std::string& rule_name,
                   const shadow::RuleState& s) {
    w.Field("version", s.version).FieldRaw("state", s.json.empty() ? "{}" : s.json);
    w.FieldRaw("timers", s.timers.empty() ? "[]" : s.timers);
    if (s.inactive_due > 0) {
      w.Field("inactive_by", s.inactive_due);
    }
    if (!s.windows.empty()) {
      const auto& all = rules_now->set->rules();
      auto it = std::find_if(all.begin(), all.end(),
                             [&](const rules::RuleInfo& r) { return r.name == rule_name; });
      if (it != all.end()) {
        w.FieldRaw("windows", rules::DescribeWindows(*it, s.windows));
      }
    }
  };
  HttpResponse out;
  MutexLock lock(api_reader_mu_);
  if (rule != nullptr) {
    auto s = api_reader_->LoadState(rules::StateRowName(*rule, keyed), device);
    if (!s.ok()) {
      return ErrorResponse(ApiError(500, "INTERNAL_ERROR", std::string(s.status().message())),
                           now_s);
    }
    if (!*s) {
      return ErrorResponse(ApiError(404, "NOT_FOUND",
                                    fmt::format("No state of rule '{}' for {} '{}'", *rule,
                                                keyed ? "key" : "device", device)),
                           now_s);
    }
    json::ObjectWriter w(out.body);
    w.Field(keyed ? "key" : "device", device).Field("rule", *rule);
    entry(w, *rule, **s);
    w.Close();
    return out;
  }
  auto all = api_reader_->StatesOf(device);
  if (!all.ok()) {
    return ErrorResponse(ApiError(500, "INTERNAL_ERROR", std::string(all.status().message())),
                         now_s);
  }
  std::string rules = "{";
  for (const auto& [name, s] : *all) {
    if (rules::ParseStateRowName(name).second) {
      continue;  // a key's row: a key of that name, not this device
    }
    if (rules.size() > 1) {
      rules += ',';
    }
    json::AppendQuoted(rules, name);
    rules += ':';
    json::ObjectWriter w(rules);
    entry(w, name, s);
    w.Close();
  }
  rules += '}';
  json::ObjectWriter w(out.body);
  w.Field("device", device).FieldRaw("rules", rules);
  w.Close();
  return out;
}

}  // namespace gnomon::engine

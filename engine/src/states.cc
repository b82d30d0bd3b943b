// SPDX-License-Identifier: Apache-2.0
// The rules' durable state per device (ctx.state, docs/rules.md#state): what a rule reads, how
// a call's new state is committed with its other effects, and GET /v1/things/{device}/state.
// A device's states belong to the worker that owns the device (its messages run there), kept
// by that worker's StateOwner and written in the shadow store's group commits.
#include "api_error.h"
#include "engine_impl.h"
#include "gnomon/core/json.h"
#include "state_owner.h"

namespace gnomon::engine {

// ctx.state for the rules of one worker: the states of the devices it owns, from its owner.
class WorkerStateReader final : public rules::StateReader {
 public:
  WorkerStateReader(Engine::Impl* impl, void* worker) : impl_(impl), worker_(worker) {}
  Result<std::optional<rules::StoredState>> ReadState(std::string_view rule,
                                                      std::string_view device) override {
    return impl_->ReadStateFor(worker_, rule, device);
  }

 private:
  Engine::Impl* impl_;
  void* worker_;
};

void Engine::Impl::InitStateMetrics() {
  auto writes = [&](const char* outcome) {
    return metrics_.GetCounter("gnomon_rule_state_writes_total",
                               "Rule state (ctx.state) writes by outcome", {{"outcome", outcome}});
  };
  state_stored_ = writes("stored");
  state_failed_ = writes("failed");
  state_loads_ = metrics_.GetCounter("gnomon_rule_state_loads_total",
                                     "Rule states read from the store into their worker's cache");
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

Result<std::optional<rules::StoredState>> Engine::Impl::ReadStateFor(void* worker,
                                                                     std::string_view rule,
                                                                     std::string_view device) {
  Worker& w = *static_cast<Worker*>(worker);
  GNOMON_ASSIGN_OR_RETURN(const std::optional<shadow::RuleState>* state,
                          w.states->Get(std::string(rule), std::string(device),
                                        w.shadows->reader()));
  if (!*state) {
    return std::optional<rules::StoredState>();
  }
  return std::optional<rules::StoredState>(rules::StoredState{(*state)->version, (*state)->json});
}

void Engine::Impl::CommitState(Worker& w, const Message& m, const rules::RuleInfo& rule,
                               rules::Effect& e) {
  if (options_.mode == Mode::kDryRun || !w.states) {
    return;  // a dry run applies nothing (and without a store no call gets this far)
  }
  std::optional<shadow::RuleState> state;
  if (!e.payload.empty()) {
    state = shadow::RuleState{e.state_version, std::move(e.payload)};
  }
  uint64_t epoch = w.states->epoch(rule.name, m.device);
  m.delivery->Hold();  // until the state is durable
  w.states->Put(
      rule.name, m.device, std::move(state),
      [this, d = m.delivery, rule = rule.name, device = m.device, epoch, source = m.source,
       topic = m.topic, payload = m.payload, ts = m.ts_ms](const Status& st) {
        if (st.ok()) {
          state_stored_->Inc();
        } else {
          // The message's other effects went out; its state did not: it is dead-lettered (a
          // replay runs it again) and the worker reads the state from the store again.
          state_failed_->Inc();
          log::Error("rule state could not be stored",
                     {{"rule", rule}, {"device", device}, {"error", st.message()}});
          (void)workers_[OwnerOf(device)]->queue.PushForce(
              ShadowEviction{device, rule, epoch, /*state=*/true});
          DeadLetter(d, "state_not_stored",
                     fmt::format("ctx.state of rule {} could not be stored: {}", rule,
                                 st.message()),
                     rule, source, topic, device, payload, 1, ts);
        }
        d->Release();
      });
}

void Engine::Impl::DropState(Worker& w, const ShadowEviction& evict) {
  if (w.states) {
    w.states->Evict(evict.name, evict.thing, evict.epoch);
  }
}

// GET /v1/things/{device}/state[?rule=NAME]: the committed state of one rule for the device,
// or of every rule that keeps one.
HttpResponse Engine::Impl::RuleStateRoute(const HttpRequest& req) {
  const std::string& device = req.params.at(0);
  int64_t now_s = clock_.NowMs() / 1000;
  if (auto bad = CheckThingName(device)) {
    return ErrorResponse(*bad, now_s);
  }
  const std::string* rule = req.Query("rule");
  auto entry = [](json::ObjectWriter& w, const shadow::RuleState& s) {
    w.Field("version", s.version).FieldRaw("state", s.json);
  };
  HttpResponse out;
  MutexLock lock(api_reader_mu_);
  if (rule != nullptr) {
    auto s = api_reader_->LoadState(*rule, device);
    if (!s.ok()) {
      return ErrorResponse(ApiError(500, "INTERNAL_ERROR", std::string(s.status().message())),
                           now_s);
    }
    if (!*s) {
      return ErrorResponse(
          ApiError(404, "NOT_FOUND", fmt::format("No state of rule '{}' for '{}'", *rule, device)),
          now_s);
    }
    json::ObjectWriter w(out.body);
    w.Field("device", device).Field("rule", *rule);
    entry(w, **s);
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
    if (rules.size() > 1) {
      rules += ',';
    }
    json::AppendQuoted(rules, name);
    rules += ':';
    json::ObjectWriter w(rules);
    entry(w, s);
    w.Close();
  }
  rules += '}';
  json::ObjectWriter w(out.body);
  w.Field("device", device).FieldRaw("rules", rules);
  w.Close();
  return out;
}

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include "rule_versions.h"

#include <chrono>
#include <utility>

#include "gnomon/core/json.h"
#include "gnomon/core/log.h"

namespace gnomon::engine {

RuleVersions::RuleVersions(MetricsRegistry& metrics, const Clock& clock, Loader load)
    : metrics_(metrics),
      clock_(clock),
      load_(std::move(load)),
      reloads_ok_(metrics.GetCounter("gnomon_rule_reloads_total", "Rule reloads by outcome",
                                     {{"outcome", "ok"}})),
      reloads_failed_(metrics.GetCounter("gnomon_rule_reloads_total", "Rule reloads by outcome",
                                         {{"outcome", "failed"}})) {}

void RuleVersions::Start(std::shared_ptr<const rules::RuleSet> set) {
  auto first = Make(std::move(set), 1);
  MutexLock lock(mu_);
  current_ = std::move(first);
  version_.store(1, std::memory_order_release);
}

std::shared_ptr<const LoadedRules> RuleVersions::Current() const {
  MutexLock lock(mu_);
  return current_;
}

std::shared_ptr<const LoadedRules> RuleVersions::Make(std::shared_ptr<const rules::RuleSet> set,
                                                      uint64_t version) {
  auto l = std::make_shared<LoadedRules>();
  l->set = std::move(set);
  l->version = version;
  l->loaded_at_ms = clock_.NowMs();
  for (const auto& r : l->set->rules()) {
    auto c = [&](const char* outcome) {
      return metrics_.GetCounter("gnomon_rule_messages_total", "Rule runs by outcome",
                                 {{"rule", r.name}, {"outcome", outcome}});
    };
    l->metrics.push_back({c("matched"), c("emitted"), c("filtered"), c("failed"),
                          c("dead_lettered"),
                          metrics_.GetHistogram("gnomon_rule_duration_seconds",
                                                "Time in a rule's handle", {{"rule", r.name}}),
                          metrics_.GetCounter("gnomon_rule_state_resets_total",
                                              "Rule states rebuilt after going over limits.heap_mb",
                                              {{"rule", r.name}})});
    auto h = std::make_unique<RuleHealth>();
    h->quarantined_gauge = metrics_.GetGauge("gnomon_rule_quarantined",
                                             "1 while the rule is quarantined", {{"rule", r.name}});
    h->quarantined_gauge->Set(0);  // a reload lifts a quarantine
    h->options = {r.quarantine_failures, r.quarantine_window_s * 1000,
                  r.quarantine_cooldown_s * 1000};
    h->device_options = {r.quarantine_device_failures, r.quarantine_window_s * 1000,
                         r.quarantine_cooldown_s * 1000};
    l->health.push_back(std::move(h));
  }
  return l;
}

Status RuleVersions::Reload(std::string_view why) {
  MutexLock lock(reload_mu_);
  auto t0 = std::chrono::steady_clock::now();
  auto set = load_();
  last_ms_ = clock_.NowMs();
  if (!set.ok()) {
    reloads_failed_->Inc();
    last_error_ = set.status().message();
    log::Error("rule reload failed; the running rules stay",
               {{"trigger", why}, {"error", last_error_}});
    return set.status();
  }
  last_error_.clear();
  // Only reloads change the version, and they hold reload_mu_: no other can race this one.
  uint64_t version = version_.load(std::memory_order_acquire) + 1;
  auto next = Make(std::move(set).value(), version);
  size_t rules = next->set->rules().size();
  {
    MutexLock rl(mu_);
    current_ = std::move(next);
    version_.store(version, std::memory_order_release);
  }
  reloads_ok_->Inc();
  log::Info("rules reloaded; workers switch at their next message",
            {{"trigger", why},
             {"version", std::to_string(version)},
             {"rules", std::to_string(rules)},
             {"compile_ms", std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                               std::chrono::steady_clock::now() - t0)
                                               .count())}});
  return {};
}

std::string RuleVersions::LastReloadJson() const {
  MutexLock lock(reload_mu_);
  if (last_ms_ == 0) {
    return {};
  }
  std::string out;
  json::ObjectWriter w(out);
  w.FieldRaw("ok", last_error_.empty() ? "true" : "false").Field("ts", last_ms_);
  if (!last_error_.empty()) {
    w.Field("error", last_error_);
  }
  w.Close();
  return out;
}

}  // namespace gnomon::engine

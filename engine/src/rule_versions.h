// SPDX-License-Identifier: Apache-2.0
// The loaded versions of the rules: the one workers run (each switches between two messages),
// reloads (one at a time; a failed one keeps the running version) and what the last reload
// said, and what the engine keeps per rule of a version (metrics, quarantine health).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "breaker.h"
#include "gnomon/core/clock.h"
#include "gnomon/core/metrics.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/status.h"
#include "gnomon/rules/rules.h"

namespace gnomon::engine {

// Per-rule metrics, created once.
struct RuleMetrics {
  Counter* matched;
  Counter* emitted;
  Counter* filtered;
  Counter* failed;
  Counter* dead_lettered;
  Histogram* duration;
  Counter* state_resets;  // the rule went over limits.heap_mb and its globals were reset
};

// A rule's quarantine: its breaker (the whole rule) and how many devices it is quarantined for
// (each worker keeps the per-device breakers of its devices).
struct RuleHealth {
  Breaker breaker;
  Breaker::Options options;
  Breaker::Options device_options;
  std::atomic<int64_t> devices_quarantined{0};
  Gauge* quarantined_gauge = nullptr;
  Mutex mu;
  std::string last_error GNOMON_GUARDED_BY(mu);
  int64_t last_error_ms GNOMON_GUARDED_BY(mu) = 0;
  // The last ctx.drop (its reason, cut to 256 bytes; the device and topic): /v1/rules.
  std::string last_drop GNOMON_GUARDED_BY(mu);
  std::string last_drop_device GNOMON_GUARDED_BY(mu);
  std::string last_drop_topic GNOMON_GUARDED_BY(mu);
  int64_t last_drop_ms GNOMON_GUARDED_BY(mu) = 0;
};

// One loaded version of the rules with what the engine keeps per rule. Immutable but for the
// health counters; shared by the workers that run it.
struct LoadedRules {
  std::shared_ptr<const rules::RuleSet> set;
  std::vector<RuleMetrics> metrics;
  std::vector<std::unique_ptr<RuleHealth>> health;
  uint64_t version = 0;
  int64_t loaded_at_ms = 0;
};

// Thread-safe. Version numbers start at 1 and grow by one per successful reload.
class RuleVersions {
 public:
  // Reads and checks the rule files (and runs their tests) for a reload.
  using Loader = std::function<Result<std::shared_ptr<const rules::RuleSet>>()>;

  RuleVersions(MetricsRegistry& metrics, const Clock& clock, Loader load);

  // Version 1: the set loaded at start.
  void Start(std::shared_ptr<const rules::RuleSet> set);

  // The version workers should run. Not for every message: compare version() first.
  std::shared_ptr<const LoadedRules> Current() const;
  // Current()->version, without a lock or a shared count (workers check it per message).
  uint64_t version() const { return version_.load(std::memory_order_acquire); }

  // Loads the files again. On success the new version is current (workers switch at their
  // next message); on failure the running one stays and the error is returned and kept.
  // `why` says what asked (logged).
  Status Reload(std::string_view why);

  // {"ok":bool,"ts":ms[,"error":"..."]} of the last reload, or "" if there was none.
  std::string LastReloadJson() const;

 private:
  std::shared_ptr<const LoadedRules> Make(std::shared_ptr<const rules::RuleSet> set,
                                          uint64_t version);

  MetricsRegistry& metrics_;
  const Clock& clock_;
  Loader load_;
  Counter* reloads_ok_;
  Counter* reloads_failed_;

  mutable Mutex mu_;
  std::shared_ptr<const LoadedRules> current_ GNOMON_GUARDED_BY(mu_);
  std::atomic<uint64_t> version_{0};

  mutable Mutex reload_mu_;  // one reload at a time; its outcome
  std::string last_error_ GNOMON_GUARDED_BY(reload_mu_);
  int64_t last_ms_ GNOMON_GUARDED_BY(reload_mu_) = 0;
};

}  // namespace gnomon::engine

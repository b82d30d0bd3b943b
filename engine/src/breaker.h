// SPDX-License-Identifier: Apache-2.0
// Quarantine as a circuit breaker: more than `failures` failures within `window_ms` open it;
// while open, calls are refused; after `cooldown_ms` it is half-open and lets one call through
// (the probe): a success closes it, a failure opens it for another cool-down. The engine keeps
// one per rule (shared by the workers) and one per (rule, device) that failed (each owned by
// the device's worker), so one device cannot take a rule down for the fleet.
// Thread-safe: every member is atomic; the per-device breakers are used by one thread only.
#pragma once

#include <atomic>
#include <cstdint>

namespace gnomon::engine {

class Breaker {
 public:
  struct Options {
    int64_t failures = 100;
    int64_t window_ms = 60000;
    int64_t cooldown_ms = 60000;
  };
  enum class Verdict { kRun, kProbe, kRefuse };

  // May a call run now? kProbe: it is the one call let through a half-open breaker; report
  // its outcome with `probe` set.
  Verdict Allow(int64_t now_ms) {
    int64_t until = open_until_ms_.load(std::memory_order_relaxed);
    if (until == 0) {
      return Verdict::kRun;
    }
    if (now_ms < until) {
      return Verdict::kRefuse;
    }
    bool expected = false;
    return probing_.compare_exchange_strong(expected, true) ? Verdict::kProbe : Verdict::kRefuse;
  }

  // A failure of a call that ran. True when this failure opened the breaker.
  bool RecordFailure(const Options& o, int64_t now_ms, bool probe) {
    if (probe) {
      open_until_ms_.store(now_ms + o.cooldown_ms);
      probing_.store(false);
      return false;  // it was open already
    }
    int64_t start = window_start_ms_.load(std::memory_order_relaxed);
    if (now_ms - start > o.window_ms &&
        window_start_ms_.compare_exchange_strong(start, now_ms)) {
      failures_.store(0, std::memory_order_relaxed);
    }
    if (failures_.fetch_add(1, std::memory_order_relaxed) + 1 > o.failures) {
      int64_t closed = 0;
      return open_until_ms_.compare_exchange_strong(closed, now_ms + o.cooldown_ms);
    }
    return false;
  }

  // A success of a call that ran. True when it closed the breaker (the probe succeeded).
  bool RecordSuccess(bool probe) {
    if (!probe) {
      return false;
    }
    failures_.store(0, std::memory_order_relaxed);
    window_start_ms_.store(0, std::memory_order_relaxed);
    open_until_ms_.store(0);
    probing_.store(false);
    return true;
  }

  // A probe that did not run after all (another breaker refused the call): the next call
  // probes instead.
  void ReleaseProbe() { probing_.store(false); }

  bool open() const { return open_until_ms_.load(std::memory_order_relaxed) != 0; }
  int64_t open_until_ms() const { return open_until_ms_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> window_start_ms_{0};
  std::atomic<int64_t> failures_{0};
  std::atomic<int64_t> open_until_ms_{0};  // 0: closed
  std::atomic<bool> probing_{false};        // a half-open probe is running
};

}  // namespace gnomon::engine

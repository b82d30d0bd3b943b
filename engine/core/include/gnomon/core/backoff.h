// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>

namespace gnomon {

// Exponential backoff with jitter: attempt 0 waits about `initial_ms`, each further attempt
// doubles it, capped at `max_ms`; the result is spread by ±20% (`jitter01` in [0, 1)) so a
// fleet of clients does not reconnect in lockstep, and never exceeds `max_ms`.
inline int64_t BackoffDelayMs(int attempt, int64_t initial_ms, int64_t max_ms, double jitter01) {
  int64_t d = initial_ms;
  for (int i = 0; i < attempt && d < max_ms; ++i) {
    d *= 2;
  }
  d = std::min(d, max_ms);
  auto jittered = static_cast<int64_t>(static_cast<double>(d) * (0.8 + 0.4 * jitter01));
  return std::clamp<int64_t>(jittered, 1, max_ms);
}

// Tracks consecutive failures; Reset() after a success.
class Backoff {
 public:
  Backoff(int64_t initial_ms, int64_t max_ms)
      : initial_ms_(initial_ms), max_ms_(max_ms), rng_(std::random_device{}()) {}
  int64_t NextDelayMs() {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    return BackoffDelayMs(attempt_++, initial_ms_, max_ms_, u(rng_));
  }
  void Reset() { attempt_ = 0; }
  int attempt() const { return attempt_; }

 private:
  int64_t initial_ms_;
  int64_t max_ms_;
  int attempt_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace gnomon

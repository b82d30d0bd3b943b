// SPDX-License-Identifier: Apache-2.0
// dead_letter.per_device_per_s: a token bucket per device, so one device sending bad input
// cannot fill the dead-letter sink for everyone. Bounded: at most kMaxDevices buckets; past
// that, every device starts again with a full bucket. Refusals are counted by reason
// (gnomon_dead_letters_suppressed_total). Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "gnomon/core/metrics.h"
#include "gnomon/core/mutex.h"

namespace gnomon::engine {

class DeadLetterLimiter {
 public:
  static constexpr size_t kMaxDevices = 100000;

  // `per_s` <= 0: no limit.
  DeadLetterLimiter(double per_s, int64_t burst, MetricsRegistry& metrics)
      : per_s_(per_s), burst_(static_cast<double>(burst)), metrics_(metrics) {}

  // Whether a dead letter of `device` may be written at `now_ms`.
  bool Allow(std::string_view device, std::string_view reason, int64_t now_ms);
  size_t devices() const;

 private:
  struct Bucket {
    double tokens;
    int64_t last_ms;
  };
  const double per_s_;
  const double burst_;
  MetricsRegistry& metrics_;
  mutable Mutex mu_;
  std::map<std::string, Bucket, std::less<>> buckets_ GNOMON_GUARDED_BY(mu_);
  std::map<std::string, Counter*, std::less<>> suppressed_ GNOMON_GUARDED_BY(mu_);
};

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include "dead_letter_limiter.h"

#include <algorithm>

namespace gnomon::engine {

bool DeadLetterLimiter::Allow(std::string_view device, std::string_view reason, int64_t now_ms) {
  if (per_s_ <= 0) {
    return true;
  }
  MutexLock lock(mu_);
  auto it = buckets_.find(device);
  if (it == buckets_.end()) {
    if (buckets_.size() >= kMaxDevices) {
      buckets_.clear();  // bounded: every device starts again with a full bucket
    }
    it = buckets_.emplace(std::string(device), Bucket{burst_, now_ms}).first;
  }
  Bucket& b = it->second;
  b.tokens = std::min(burst_, b.tokens + static_cast<double>(now_ms - b.last_ms) * per_s_ / 1000.0);
  b.last_ms = now_ms;
  if (b.tokens >= 1) {
    b.tokens -= 1;
    return true;
  }
  auto c = suppressed_.find(reason);
  if (c == suppressed_.end()) {
    c = suppressed_
            .emplace(std::string(reason),
                     metrics_.GetCounter("gnomon_dead_letters_suppressed_total",
                                         "Dead letters not written: their device was past "
                                         "dead_letter.per_device_per_s",
                                         {{"reason", std::string(reason)}}))
            .first;
  }
  c->second->Inc();
  return false;
}

size_t DeadLetterLimiter::devices() const {
  MutexLock lock(mu_);
  return buckets_.size();
}

}  // namespace gnomon::engine

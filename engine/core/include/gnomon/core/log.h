// SPDX-License-Identifier: Apache-2.0
// Structured logging: one JSON object per line on stderr (or a test sink).
// Thread-safe; a line is written with one write call.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace gnomon::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

using Field = std::pair<std::string_view, std::string_view>;

void SetLevel(Level level);
Level GetLevel();
// Replaces the output (default: stderr). Used by tests to capture lines.
void SetWriter(std::function<void(std::string_view line)> writer);

void Write(Level level, std::string_view msg, std::initializer_list<Field> fields);

// Lets at most `per_second` events through per second, so a storm of bad input cannot flood
// the log; every event is still counted by its own metric. Thread-safe.
class RateLimiter {
 public:
  explicit RateLimiter(uint32_t per_second) : per_second_(per_second) {}
  // True if this event may be logged. When it returns true after dropping some,
  // `*suppressed` is how many were dropped (log it with the event).
  bool Allow(uint64_t* suppressed);

 private:
  const uint32_t per_second_;
  std::atomic<int64_t> window_{0};
  std::atomic<uint32_t> count_{0};
  std::atomic<uint64_t> dropped_{0};
};

inline void Debug(std::string_view msg, std::initializer_list<Field> fields = {}) {
  if (GetLevel() <= Level::kDebug) {
    Write(Level::kDebug, msg, fields);
  }
}
inline void Info(std::string_view msg, std::initializer_list<Field> fields = {}) {
  Write(Level::kInfo, msg, fields);
}
inline void Warn(std::string_view msg, std::initializer_list<Field> fields = {}) {
  Write(Level::kWarn, msg, fields);
}
inline void Error(std::string_view msg, std::initializer_list<Field> fields = {}) {
  Write(Level::kError, msg, fields);
}

}  // namespace gnomon::log

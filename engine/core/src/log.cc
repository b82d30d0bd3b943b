// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "gnomon/core/json.h"
#include "gnomon/core/mutex.h"

namespace gnomon::log {
namespace {
std::atomic<Level> g_level{Level::kInfo};
Mutex g_mu;
std::function<void(std::string_view)> g_writer GNOMON_GUARDED_BY(g_mu);

const char* LevelName(Level l) {
  switch (l) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warn";
    case Level::kError: return "error";
  }
  return "info";
}
}  // namespace

bool RateLimiter::Allow(uint64_t* suppressed) {
  int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::steady_clock::now().time_since_epoch())
                    .count();
  int64_t w = window_.load(std::memory_order_relaxed);
  if (w != now && window_.compare_exchange_strong(w, now, std::memory_order_relaxed)) {
    count_.store(0, std::memory_order_relaxed);
  }
  if (count_.fetch_add(1, std::memory_order_relaxed) < per_second_) {
    *suppressed = dropped_.exchange(0, std::memory_order_relaxed);
    return true;
  }
  dropped_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

void SetLevel(Level level) { g_level = level; }
Level GetLevel() { return g_level; }

void SetWriter(std::function<void(std::string_view)> writer) {
  MutexLock lock(g_mu);
  g_writer = std::move(writer);
}

void Write(Level level, std::string_view msg, std::initializer_list<Field> fields) {
  if (level < g_level.load(std::memory_order_relaxed)) {
    return;
  }
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::string line;
  line.reserve(128);
  json::ObjectWriter w(line);
  w.Field("ts", fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z",
                            std::chrono::time_point_cast<std::chrono::seconds>(now), ms % 1000));
  w.Field("level", LevelName(level));
  w.Field("msg", msg);
  for (const auto& [k, v] : fields) {
    w.Field(k, v);
  }
  w.Close();
  line += '\n';
  MutexLock lock(g_mu);
  if (g_writer) {
    g_writer(line);
    return;
  }
  // One write per line so concurrent processes sharing stderr do not interleave.
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace gnomon::log

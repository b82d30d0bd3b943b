// SPDX-License-Identifier: Apache-2.0
// The watch streams of shadows (GET /v1/things/{thing}/shadow/watch, Server-Sent Events).
// Events are queued per watcher by Notify (on the store's writer thread, once a write is
// durable) and written by the watcher's own HTTP thread in Stream. Bounded: at most
// kMaxWatchers streams at once, each with at most kMaxPendingEvents frames waiting; a watcher
// that falls further behind gets a `resync` frame and its stream ends. Thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gnomon/core/mutex.h"

namespace gnomon::engine {

class ShadowWatchers {
 public:
  static constexpr size_t kMaxWatchers = 256;         // each holds an HTTP thread
  static constexpr size_t kMaxPendingEvents = 10000;  // per watcher
  using Write = std::function<bool(std::string_view)>;
  struct Watcher;

  // Registers a watcher of the shadow `key` (ShadowKey). nullptr when kMaxWatchers streams are
  // open or Close() was called.
  std::shared_ptr<Watcher> Add(const std::string& key);
  // On the watcher's HTTP thread: writes `first`, then its events as they come (a keep-alive
  // comment when none came for `keep_alive`), until `write` fails, the watcher fell behind or
  // Close() was called; then unregisters it.
  void Stream(const std::string& key, const std::shared_ptr<Watcher>& watcher,
              const std::string& first, const Write& write, std::chrono::milliseconds keep_alive);
  // Whether `key` has a watcher now. A write applied while it had none may skip building its
  // event: a watcher added later gets a first document that holds the write (the owner answers
  // the watch's get after every write applied before it).
  bool Watching(const std::string& key) const;
  // Queues an event for every watcher of `key`.
  void Notify(const std::string& key, std::string_view event, const std::string& data);
  // Ends every stream (they finish what is queued); later Adds fail.
  void Close();
  size_t size() const;

  // One SSE frame.
  static std::string Frame(std::string_view event, std::string_view data);

 private:
  mutable Mutex mu_;
  std::unordered_map<std::string, std::vector<std::shared_ptr<Watcher>>> watchers_
      GNOMON_GUARDED_BY(mu_);
  size_t count_ GNOMON_GUARDED_BY(mu_) = 0;
  bool closed_ GNOMON_GUARDED_BY(mu_) = false;
};

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include "shadow_watchers.h"

#include <algorithm>
#include <condition_variable>
#include <deque>

namespace gnomon::engine {

struct ShadowWatchers::Watcher {
  Mutex mu;
  std::condition_variable cv;
  std::deque<std::string> events GNOMON_GUARDED_BY(mu);  // complete SSE frames
  bool closed GNOMON_GUARDED_BY(mu) = false;
};

std::string ShadowWatchers::Frame(std::string_view event, std::string_view data) {
  std::string f;
  f.reserve(data.size() + event.size() + 16);
  f.append("event: ").append(event).append("\ndata: ").append(data).append("\n\n");
  return f;
}

std::shared_ptr<ShadowWatchers::Watcher> ShadowWatchers::Add(const std::string& key) {
  MutexLock lock(mu_);
  if (count_ >= kMaxWatchers || closed_) {
    return nullptr;
  }
  auto w = std::make_shared<Watcher>();
  watchers_[key].push_back(w);
  ++count_;
  return w;
}

void ShadowWatchers::Stream(const std::string& key, const std::shared_ptr<Watcher>& wt,
                            const std::string& first, const Write& write,
                            std::chrono::milliseconds keep_alive) {
  bool ok = write(first);
  while (ok) {
    MutexLock lock(wt->mu);
    wt->cv.wait_for(lock.native(), keep_alive, [&] {
      wt->mu.AssertHeld();
      return !wt->events.empty() || wt->closed;
    });
    std::deque<std::string> batch;
    batch.swap(wt->events);
    bool closed = wt->closed;
    lock.Unlock();
    if (batch.empty() && !closed) {
      ok = write(": keep-alive\n\n");
    }
    for (const auto& f : batch) {
      ok = ok && write(f);
    }
    if (closed) {
      break;
    }
  }
  MutexLock lock(mu_);
  auto& list = watchers_[key];
  list.erase(std::remove(list.begin(), list.end(), wt), list.end());
  if (list.empty()) {
    watchers_.erase(key);
  }
  --count_;
}

bool ShadowWatchers::Watching(const std::string& key) const {
  MutexLock lock(mu_);
  return !watchers_.empty() && watchers_.find(key) != watchers_.end();
}

void ShadowWatchers::Notify(const std::string& key, std::string_view event,
                            const std::string& data) {
  std::vector<std::shared_ptr<Watcher>> targets;
  {
    MutexLock lock(mu_);
    if (watchers_.empty()) {
      return;
    }
    auto it = watchers_.find(key);
    if (it == watchers_.end()) {
      return;
    }
    targets = it->second;
  }
  std::string frame = Frame(event, data);
  for (auto& wt : targets) {
    {
      MutexLock lock(wt->mu);
      if (wt->closed) {
        continue;
      }
      if (wt->events.size() >= kMaxPendingEvents) {
        // A reader that cannot keep up: tell it to start over rather than buffer without bound.
        wt->events.push_back(Frame("resync", R"({"reason":"the watcher fell behind"})"));
        wt->closed = true;
      } else {
        wt->events.push_back(frame);
      }
    }
    wt->cv.notify_all();
  }
}

void ShadowWatchers::Close() {
  MutexLock lock(mu_);
  closed_ = true;
  for (auto& [key, list] : watchers_) {
    for (auto& wt : list) {
      {
        MutexLock l(wt->mu);
        wt->closed = true;
      }
      wt->cv.notify_all();
    }
  }
}

size_t ShadowWatchers::size() const {
  MutexLock lock(mu_);
  return count_;
}

}  // namespace gnomon::engine

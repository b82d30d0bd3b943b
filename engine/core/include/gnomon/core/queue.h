// SPDX-License-Identifier: Apache-2.0
// A bounded multi-producer queue with blocking push (back-pressure) and batch pop.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <vector>

#include "gnomon/core/mutex.h"

namespace gnomon {

template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(capacity) {}

  // Blocks while full. Returns false (and leaves `item` untouched) once closed.
  bool Push(T&& item) {
    MutexLock lock(mu_);
    not_full_.wait(lock.native(), [&] {
      mu_.AssertHeld();
      return closed_ || items_.size() < capacity_;
    });
    if (closed_) {
      return false;
    }
    items_.push_back(std::move(item));
    lock.Unlock();
    not_empty_.notify_one();
    return true;
  }

  // Pushes even when full. For work the queue's own consumer generates (or that must not wait
  // on it, to avoid a cycle of blocked producers); callers bound it some other way.
  bool PushForce(T&& item) {
    {
      MutexLock lock(mu_);
      if (closed_) {
        return false;
      }
      items_.push_back(std::move(item));
    }
    not_empty_.notify_one();
    return true;
  }

  // Moves up to `max` items into `out`. Blocks until there is one or the queue is closed;
  // returns false when closed and drained.
  bool PopBatch(std::vector<T>& out, size_t max) {
    MutexLock lock(mu_);
    not_empty_.wait(lock.native(), [&] {
      mu_.AssertHeld();
      return closed_ || !items_.empty();
    });
    if (!TakeLocked(out, max)) {
      return false;
    }
    lock.Unlock();
    not_full_.notify_all();
    return true;
  }

  // As PopBatch, but waits at most `timeout`; returns true if still open or items were taken.
  template <typename Rep, typename Period>
  bool PopBatchFor(std::vector<T>& out, size_t max, std::chrono::duration<Rep, Period> timeout) {
    MutexLock lock(mu_);
    not_empty_.wait_for(lock.native(), timeout, [&] {
      mu_.AssertHeld();
      return closed_ || !items_.empty();
    });
    if (items_.empty()) {
      return !closed_;
    }
    if (!TakeLocked(out, max)) {
      return false;
    }
    lock.Unlock();
    not_full_.notify_all();
    return true;
  }

  // Wakes everyone; Push fails from now on, pops drain what is left.
  void Close() {
    {
      MutexLock lock(mu_);
      closed_ = true;
    }
    not_full_.notify_all();
    not_empty_.notify_all();
  }

  size_t size() const {
    MutexLock lock(mu_);
    return items_.size();
  }
  size_t capacity() const { return capacity_; }

 private:
  bool TakeLocked(std::vector<T>& out, size_t max) GNOMON_REQUIRES(mu_) {
    if (items_.empty()) {
      return false;
    }
    size_t n = std::min(max, items_.size());
    for (size_t i = 0; i < n; ++i) {
      out.push_back(std::move(items_.front()));
      items_.pop_front();
    }
    return true;
  }

  const size_t capacity_;
  mutable Mutex mu_;
  std::condition_variable not_full_;
  std::condition_variable not_empty_;
  std::deque<T> items_ GNOMON_GUARDED_BY(mu_);
  bool closed_ GNOMON_GUARDED_BY(mu_) = false;
};

}  // namespace gnomon

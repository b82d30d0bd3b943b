// SPDX-License-Identifier: Apache-2.0
// A bounded multi-producer queue with blocking push (back-pressure) and batch pop.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
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
      return closed_ || SizeLocked() < capacity_;
    });
    if (closed_) {
      return false;
    }
    items_.push_back(std::move(item));
    lock.Unlock();
    not_empty_.notify_one();
    return true;
  }

  // Pushes `items` in order (moving from them), waiting for room as Push does, but takes the
  // lock and wakes the consumer once for as many as fit rather than once per item. Returns how
  // many were pushed: all of them unless the queue was closed (the rest are left untouched).
  size_t PushMany(std::vector<T>& items) {
    size_t done = 0;
    MutexLock lock(mu_);
    while (done < items.size()) {
      not_full_.wait(lock.native(), [&] {
        mu_.AssertHeld();
        return closed_ || SizeLocked() < capacity_;
      });
      if (closed_) {
        break;
      }
      size_t n = std::min(capacity_ - SizeLocked(), items.size() - done);
      for (size_t i = 0; i < n; ++i) {
        items_.push_back(std::move(items[done + i]));
      }
      done += n;
      if (done < items.size()) {
        not_empty_.notify_one();  // full: let the consumer make room while we wait
      }
    }
    lock.Unlock();
    if (done > 0) {
      not_empty_.notify_one();
    }
    return done;
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
      return closed_ || SizeLocked() > 0;
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
      return closed_ || SizeLocked() > 0;
    });
    if (SizeLocked() == 0) {
      return !closed_;
    }
    if (!TakeLocked(out, max)) {
      return false;
    }
    lock.Unlock();
    not_full_.notify_all();
    return true;
  }

  // Moves up to `max` items into `out` without waiting; false when there were none.
  bool TryPopBatch(std::vector<T>& out, size_t max) {
    MutexLock lock(mu_);
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
    return SizeLocked();
  }
  size_t capacity() const { return capacity_; }

 private:
  size_t SizeLocked() const GNOMON_REQUIRES(mu_) { return items_.size() - head_; }

  bool TakeLocked(std::vector<T>& out, size_t max) GNOMON_REQUIRES(mu_) {
    size_t n = std::min(max, SizeLocked());
    if (n == 0) {
      return false;
    }
    for (size_t i = 0; i < n; ++i) {
      out.push_back(std::move(items_[head_ + i]));
    }
    head_ += n;
    if (head_ == items_.size()) {
      items_.clear();  // drained: the storage stays for the next items
      head_ = 0;
    } else if (head_ >= items_.size() / 2) {
      // Never drained (a consumer behind its producers): drop the taken half so the storage
      // stays within twice what is queued. Each item moves here at most once per halving.
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
    return true;
  }

  const size_t capacity_;
  mutable Mutex mu_;
  std::condition_variable not_full_;
  std::condition_variable not_empty_;
  // Items [head_, size) are queued; those before head_ were taken (moved from). A vector, not a
  // deque: no allocation per item (a deque of items this size allocates a node for each).
  std::vector<T> items_ GNOMON_GUARDED_BY(mu_);
  size_t head_ GNOMON_GUARDED_BY(mu_) = 0;
  bool closed_ GNOMON_GUARDED_BY(mu_) = false;
};

}  // namespace gnomon

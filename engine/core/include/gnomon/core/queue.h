// SPDX-License-Identifier: Apache-2.0
// A bounded multi-producer queue with blocking push (back-pressure) and batch pop.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <vector>

namespace gnomon {

template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(capacity) {}

  // Blocks while full. Returns false (and leaves `item` untouched) once closed.
  bool Push(T&& item) {
    std::unique_lock lock(mu_);
    not_full_.wait(lock, [&] { return closed_ || items_.size() < capacity_; });
    if (closed_) {
      return false;
    }
    items_.push_back(std::move(item));
    lock.unlock();
    not_empty_.notify_one();
    return true;
  }

  // Pushes even when full. For work the queue's own consumer generates (or that must not wait
  // on it, to avoid a cycle of blocked producers); callers bound it some other way.
  bool PushForce(T&& item) {
    {
      std::lock_guard lock(mu_);
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
    std::unique_lock lock(mu_);
    not_empty_.wait(lock, [&] { return closed_ || !items_.empty(); });
    return TakeLocked(out, max, lock);
  }

  // As PopBatch, but waits at most `timeout`; returns true if still open or items were taken.
  template <typename Rep, typename Period>
  bool PopBatchFor(std::vector<T>& out, size_t max, std::chrono::duration<Rep, Period> timeout) {
    std::unique_lock lock(mu_);
    not_empty_.wait_for(lock, timeout, [&] { return closed_ || !items_.empty(); });
    if (items_.empty()) {
      return !closed_;
    }
    return TakeLocked(out, max, lock);
  }

  // Wakes everyone; Push fails from now on, pops drain what is left.
  void Close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    not_full_.notify_all();
    not_empty_.notify_all();
  }

  size_t size() const {
    std::lock_guard lock(mu_);
    return items_.size();
  }
  size_t capacity() const { return capacity_; }

 private:
  bool TakeLocked(std::vector<T>& out, size_t max, std::unique_lock<std::mutex>& lock) {
    if (items_.empty()) {
      return false;
    }
    size_t n = std::min(max, items_.size());
    for (size_t i = 0; i < n; ++i) {
      out.push_back(std::move(items_.front()));
      items_.pop_front();
    }
    lock.unlock();
    not_full_.notify_all();
    return true;
  }

  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable not_full_;
  std::condition_variable not_empty_;
  std::deque<T> items_;  // GUARDED_BY(mu_)
  bool closed_ = false;  // GUARDED_BY(mu_)
};

}  // namespace gnomon

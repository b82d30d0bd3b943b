// SPDX-License-Identifier: Apache-2.0
// std::mutex and std::shared_mutex with clang thread-safety annotations, and the scoped locks
// that go with them. Same cost as the std types (they are inline wrappers).
//
//   Mutex mu_;
//   int n_ GNOMON_GUARDED_BY(mu_);
//   { MutexLock lock(mu_); ++n_; }
//   { MutexLock lock(mu_); cv_.wait(lock.native(), [&] { mu_.AssertHeld(); return n_ > 0; }); }
//
// Condition variables stay std::condition_variable: wait on `lock.native()`. A predicate lambda
// is analysed as its own function, so it states the lock it runs under with AssertHeld().
#pragma once

#include <mutex>
#include <shared_mutex>

#include "gnomon/core/thread_annotations.h"

namespace gnomon {

class GNOMON_CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() GNOMON_ACQUIRE() { mu_.lock(); }
  void Unlock() GNOMON_RELEASE() { mu_.unlock(); }
  // Tells the analysis the caller holds the lock (for lambdas and callbacks run under it).
  void AssertHeld() const GNOMON_ASSERT_CAPABILITY(this) {}

  // For std::unique_lock / std::condition_variable; the analysis does not see through it.
  std::mutex& native() { return mu_; }

 private:
  std::mutex mu_;
};

// Holds a Mutex for its scope; Unlock()/Lock() let a caller drop it early or take it back.
class GNOMON_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) GNOMON_ACQUIRE(mu) : lock_(mu.native()) {}
  ~MutexLock() GNOMON_RELEASE() {}
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void Unlock() GNOMON_RELEASE() { lock_.unlock(); }
  void Lock() GNOMON_ACQUIRE() { lock_.lock(); }

  // For std::condition_variable::wait and friends.
  std::unique_lock<std::mutex>& native() { return lock_; }

 private:
  std::unique_lock<std::mutex> lock_;
};

class GNOMON_CAPABILITY("shared mutex") SharedMutex {
 public:
  SharedMutex() = default;
  SharedMutex(const SharedMutex&) = delete;
  SharedMutex& operator=(const SharedMutex&) = delete;

  void Lock() GNOMON_ACQUIRE() { mu_.lock(); }
  void Unlock() GNOMON_RELEASE() { mu_.unlock(); }
  void LockShared() GNOMON_ACQUIRE_SHARED() { mu_.lock_shared(); }
  void UnlockShared() GNOMON_RELEASE_SHARED() { mu_.unlock_shared(); }
  void AssertHeld() const GNOMON_ASSERT_CAPABILITY(this) {}

 private:
  std::shared_mutex mu_;
};

class GNOMON_SCOPED_CAPABILITY WriterLock {
 public:
  explicit WriterLock(SharedMutex& mu) GNOMON_ACQUIRE(mu) : mu_(mu) { mu_.Lock(); }
  ~WriterLock() GNOMON_RELEASE() { mu_.Unlock(); }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  SharedMutex& mu_;
};

class GNOMON_SCOPED_CAPABILITY ReaderLock {
 public:
  explicit ReaderLock(SharedMutex& mu) GNOMON_ACQUIRE_SHARED(mu) : mu_(mu) { mu_.LockShared(); }
  ~ReaderLock() GNOMON_RELEASE() { mu_.UnlockShared(); }
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;

 private:
  SharedMutex& mu_;
};

}  // namespace gnomon

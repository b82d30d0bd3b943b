// SPDX-License-Identifier: Apache-2.0
// Clang thread-safety annotations (https://clang.llvm.org/docs/ThreadSafetyAnalysis.html).
// `scripts/thread-safety` checks them with clang's -Wthread-safety in CI; under GCC they expand
// to nothing. Annotate every member a mutex protects with GNOMON_GUARDED_BY, and every function
// that expects a lock held with GNOMON_REQUIRES.
#pragma once

#if defined(__clang__)
#define GNOMON_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define GNOMON_THREAD_ANNOTATION(x)
#endif

#define GNOMON_CAPABILITY(x) GNOMON_THREAD_ANNOTATION(capability(x))
#define GNOMON_SCOPED_CAPABILITY GNOMON_THREAD_ANNOTATION(scoped_lockable)
#define GNOMON_GUARDED_BY(x) GNOMON_THREAD_ANNOTATION(guarded_by(x))
#define GNOMON_PT_GUARDED_BY(x) GNOMON_THREAD_ANNOTATION(pt_guarded_by(x))
#define GNOMON_ACQUIRED_BEFORE(...) GNOMON_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define GNOMON_REQUIRES(...) GNOMON_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define GNOMON_REQUIRES_SHARED(...) \
  GNOMON_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define GNOMON_ACQUIRE(...) GNOMON_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define GNOMON_ACQUIRE_SHARED(...) GNOMON_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define GNOMON_RELEASE(...) GNOMON_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define GNOMON_RELEASE_SHARED(...) GNOMON_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define GNOMON_RELEASE_GENERIC(...) \
  GNOMON_THREAD_ANNOTATION(release_generic_capability(__VA_ARGS__))
#define GNOMON_TRY_ACQUIRE(...) GNOMON_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define GNOMON_EXCLUDES(...) GNOMON_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define GNOMON_ASSERT_CAPABILITY(x) GNOMON_THREAD_ANNOTATION(assert_capability(x))
#define GNOMON_RETURN_CAPABILITY(x) GNOMON_THREAD_ANNOTATION(lock_returned(x))
#define GNOMON_NO_THREAD_SAFETY_ANALYSIS GNOMON_THREAD_ANNOTATION(no_thread_safety_analysis)

// SPDX-License-Identifier: Apache-2.0
// Prometheus metrics: counters, gauges and histograms with bounded label sets, rendered in the
// text exposition format. (prometheus-cpp is not packaged in Debian 12; this is the small part
// of it gnomon needs.) Metric objects are created once and cached by their users; updating one
// is a relaxed atomic add. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace gnomon {

namespace internal {
// A small per-thread index, so threads bumping the same counter touch different cache lines.
size_t ThreadShard();
}  // namespace internal

// A monotonically increasing count. Inc() is a relaxed add on a per-thread-sharded cell: worker
// threads counting the same rule do not fight over one cache line.
class Counter {
 public:
  static constexpr size_t kShards = 8;
  void Inc(uint64_t n = 1) {
    cells_[internal::ThreadShard() % kShards].v.fetch_add(n, std::memory_order_relaxed);
  }
  uint64_t value() const {
    uint64_t sum = 0;
    for (const auto& c : cells_) {
      sum += c.v.load(std::memory_order_relaxed);
    }
    return sum;
  }

 private:
  struct alignas(64) Cell {
    std::atomic<uint64_t> v{0};
  };
  Cell cells_[kShards];
};

class Gauge {
 public:
  void Set(int64_t v) { v_.store(v, std::memory_order_relaxed); }
  void Add(int64_t n) { v_.fetch_add(n, std::memory_order_relaxed); }
  int64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> v_{0};
};

// Observations in seconds; buckets fixed at creation. Sharded per thread like Counter.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double seconds);
  uint64_t count() const;

 private:
  friend class MetricsRegistry;
  struct alignas(64) Shard {
    std::unique_ptr<std::atomic<uint64_t>[]> buckets;  // non-cumulative, bounds_.size() + 1
    std::atomic<uint64_t> sum_ns{0};
  };
  uint64_t Bucket(size_t i) const;
  uint64_t SumNs() const;
  std::vector<double> bounds_;
  Shard shards_[Counter::kShards];
};

using Labels = std::vector<std::pair<std::string, std::string>>;

class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();

  // Returns the metric with this name and labels, creating it on first use. The pointer stays
  // valid for the registry's lifetime. `help` is taken from the first call.
  Counter* GetCounter(std::string_view name, std::string_view help, const Labels& labels = {});
  Gauge* GetGauge(std::string_view name, std::string_view help, const Labels& labels = {});
  Histogram* GetHistogram(std::string_view name, std::string_view help, const Labels& labels = {},
                          std::vector<double> bounds = DefaultLatencyBounds());

  // A function called at every render, appending exposition lines (for derived values that
  // must be read together, like the in-flight accounting).
  void AddCollector(std::function<void(std::string& out)> collector);

  // Prometheus text format 0.0.4.
  std::string Render() const;

  static std::vector<double> DefaultLatencyBounds();

 private:
  struct Family;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gnomon

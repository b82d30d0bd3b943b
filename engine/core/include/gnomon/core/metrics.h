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

class Counter {
 public:
  void Inc(uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

class Gauge {
 public:
  void Set(int64_t v) { v_.store(v, std::memory_order_relaxed); }
  void Add(int64_t n) { v_.fetch_add(n, std::memory_order_relaxed); }
  int64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> v_{0};
};

// Observations in seconds; buckets fixed at creation.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double seconds);
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  friend class MetricsRegistry;
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // non-cumulative, bounds_.size() + 1
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_ns_{0};
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

// SPDX-License-Identifier: Apache-2.0
// Prometheus metrics on prometheus-cpp (Debian's prometheus-cpp-dev): samples are
// prometheus-cpp's data model (prometheus::MetricFamily, prometheus::ClientMetric), gauges are
// prometheus::Gauge, and the text exposition is prometheus::TextSerializer. Counters and
// histograms are gnomon's per-thread-sharded cells: the rule workers bump the same rule's
// counters on every message, and prometheus-cpp's counter (a compare-and-swap on one shared
// double) and histogram (a mutex per observation) cost 18 times as much as a sharded cell when
// two threads bump one metric (bench/metrics_bench.cc, figures in docs/performance.md).
//
// Metric objects are created once and cached by their users; updating one is a relaxed atomic
// add. Labels are rendered in the order given. Thread-safe.
#pragma once

#include <prometheus/client_metric.h>
#include <prometheus/collectable.h>
#include <prometheus/gauge.h>
#include <prometheus/metric_family.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
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
  // The sample, without labels (as prometheus-cpp's cells return it).
  prometheus::ClientMetric Collect() const;

 private:
  struct alignas(64) Cell {
    std::atomic<uint64_t> v{0};
  };
  Cell cells_[kShards];
};

// Set from one place at a time (queue depths, flags), never on a per-message path.
using Gauge = prometheus::Gauge;

// Observations in seconds; buckets fixed at creation. Sharded per thread like Counter.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double seconds);
  uint64_t count() const;
  // The sample with cumulative buckets, the last one +Inf, without labels.
  prometheus::ClientMetric Collect() const;

 private:
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

class MetricsRegistry : public prometheus::Collectable {
 public:
  // Appends families whose values are derived at collection time (like the in-flight
  // accounting, read from several counters together).
  using Collector = std::function<void(std::vector<prometheus::MetricFamily>& out)>;

  MetricsRegistry();
  ~MetricsRegistry() override;

  // Returns the metric with this name and labels, creating it on first use. The pointer stays
  // valid for the registry's lifetime. `help` is taken from the first call.
  Counter* GetCounter(std::string_view name, std::string_view help, const Labels& labels = {});
  Gauge* GetGauge(std::string_view name, std::string_view help, const Labels& labels = {});
  Histogram* GetHistogram(std::string_view name, std::string_view help, const Labels& labels = {},
                          std::vector<double> bounds = DefaultLatencyBounds());

  // A function called at every collection, before any metric is read: a value it derives from
  // counters is never newer than those counters in the same exposition.
  void AddCollector(Collector collector);

  // Every family, sorted by name (collectors' families last), metrics sorted by label text.
  std::vector<prometheus::MetricFamily> Collect() const override;

  // Prometheus text format 0.0.4, by prometheus::TextSerializer.
  std::string Render() const;

  static std::vector<double> DefaultLatencyBounds();

 private:
  struct Family;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A family of one sample without labels (a counter or a gauge), for collectors.
prometheus::MetricFamily OneSample(std::string name, std::string help, prometheus::MetricType type,
                                   double value);

}  // namespace gnomon

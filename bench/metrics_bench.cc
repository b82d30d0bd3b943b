// SPDX-License-Identifier: Apache-2.0
// Metric cells on the hot path: gnomon's per-thread-sharded counter and histogram against
// prometheus-cpp's own cells, from one thread and from two threads bumping the same metric
// (two workers running the same rule). The figures decide which cells core/metrics.h uses.
#include <benchmark/benchmark.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>

#include "gnomon/core/metrics.h"

namespace gnomon {
namespace {

void BM_CounterIncSharded(benchmark::State& state) {
  static Counter counter;
  for (auto _ : state) {
    counter.Inc();
  }
  benchmark::DoNotOptimize(counter.value());
}
BENCHMARK(BM_CounterIncSharded)->Threads(1)->Threads(2)->UseRealTime();

void BM_CounterIncPrometheus(benchmark::State& state) {
  static prometheus::Counter counter;
  for (auto _ : state) {
    counter.Increment();
  }
  benchmark::DoNotOptimize(counter.Value());
}
BENCHMARK(BM_CounterIncPrometheus)->Threads(1)->Threads(2)->UseRealTime();

void BM_HistogramObserveSharded(benchmark::State& state) {
  static Histogram histogram(MetricsRegistry::DefaultLatencyBounds());
  double v = 0.0002;
  for (auto _ : state) {
    histogram.Observe(v);
  }
  benchmark::DoNotOptimize(histogram.count());
}
BENCHMARK(BM_HistogramObserveSharded)->Threads(1)->Threads(2)->UseRealTime();

void BM_HistogramObservePrometheus(benchmark::State& state) {
  static prometheus::Histogram histogram(MetricsRegistry::DefaultLatencyBounds());
  double v = 0.0002;
  for (auto _ : state) {
    histogram.Observe(v);
  }
  benchmark::DoNotOptimize(histogram.Collect().histogram.sample_count);
}
BENCHMARK(BM_HistogramObservePrometheus)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace gnomon

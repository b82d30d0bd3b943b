// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/metrics.h"

#include <prometheus/text_serializer.h>

#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <map>

#include "gnomon/core/mutex.h"

namespace gnomon {

namespace internal {
size_t ThreadShard() {
  static std::atomic<size_t> next{0};
  thread_local size_t shard = next.fetch_add(1, std::memory_order_relaxed);
  return shard;
}
}  // namespace internal

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  for (auto& s : shards_) {
    s.buckets = std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1);
  }
}

void Histogram::Observe(double seconds) {
  size_t i = 0;
  while (i < bounds_.size() && seconds > bounds_[i]) {
    ++i;
  }
  Shard& s = shards_[internal::ThreadShard() % Counter::kShards];
  s.buckets[i].fetch_add(1, std::memory_order_relaxed);
  s.sum_ns.fetch_add(static_cast<uint64_t>(seconds * 1e9), std::memory_order_relaxed);
}

uint64_t Histogram::Bucket(size_t i) const {
  uint64_t n = 0;
  for (const auto& s : shards_) {
    n += s.buckets[i].load(std::memory_order_relaxed);
  }
  return n;
}

uint64_t Histogram::SumNs() const {
  uint64_t n = 0;
  for (const auto& s : shards_) {
    n += s.sum_ns.load(std::memory_order_relaxed);
  }
  return n;
}

uint64_t Histogram::count() const {
  uint64_t n = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    n += Bucket(i);
  }
  return n;
}

prometheus::ClientMetric Histogram::Collect() const {
  prometheus::ClientMetric m;
  uint64_t cumulative = 0;
  m.histogram.bucket.reserve(bounds_.size() + 1);
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += Bucket(i);
    m.histogram.bucket.push_back({.cumulative_count = cumulative, .upper_bound = bounds_[i]});
  }
  cumulative += Bucket(bounds_.size());
  m.histogram.bucket.push_back(
      {.cumulative_count = cumulative, .upper_bound = std::numeric_limits<double>::infinity()});
  m.histogram.sample_count = cumulative;
  m.histogram.sample_sum = static_cast<double>(SumNs()) / 1e9;
  return m;
}

prometheus::ClientMetric Counter::Collect() const {
  prometheus::ClientMetric m;
  m.counter.value = static_cast<double>(value());
  return m;
}

namespace {

// One labelled metric of a family.
template <typename Cell>
struct Series {
  Labels labels;
  std::unique_ptr<Cell> cell;
};

void AppendEscaped(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

// The labels as the exposition writes them, e.g. `{sink="a",outcome="ok"}`: the key a family's
// metrics are found and sorted by.
std::string LabelText(const Labels& labels) {
  if (labels.empty()) {
    return {};
  }
  std::string s = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i > 0) {
      s += ',';
    }
    s += labels[i].first;
    s += "=\"";
    AppendEscaped(s, labels[i].second);
    s += '"';
  }
  s += '}';
  return s;
}

template <typename Cell>
void CollectSeries(const std::map<std::string, Series<Cell>>& series,
                   prometheus::MetricFamily& family) {
  for (const auto& [key, s] : series) {
    prometheus::ClientMetric m = s.cell->Collect();
    m.label.reserve(s.labels.size());
    for (const auto& [name, value] : s.labels) {
      m.label.push_back({.name = name, .value = value});
    }
    family.metric.push_back(std::move(m));
  }
}

}  // namespace

struct MetricsRegistry::Family {
  std::string name;
  std::string help;
  prometheus::MetricType type;
  // Keyed by LabelText. Only the map of the family's type is used.
  std::map<std::string, Series<Counter>> counters;
  std::map<std::string, Series<Gauge>> gauges;
  std::map<std::string, Series<Histogram>> histograms;
};

struct MetricsRegistry::Impl {
  mutable Mutex mu;
  std::map<std::string, std::unique_ptr<Family>, std::less<>> families GNOMON_GUARDED_BY(mu);
  std::vector<Collector> collectors GNOMON_GUARDED_BY(mu);

  // A name is one family of one type; asking for it as another type is a programming error.
  Family& GetFamily(std::string_view name, std::string_view help, prometheus::MetricType type)
      GNOMON_REQUIRES(mu) {
    auto it = families.find(name);
    if (it == families.end()) {
      auto f = std::make_unique<Family>();
      f->name = std::string(name);
      f->help = std::string(help);
      f->type = type;
      it = families.emplace(std::string(name), std::move(f)).first;
    }
    if (it->second->type != type) {
      std::fprintf(stderr, "metric %.*s registered with two types\n", static_cast<int>(name.size()),
                   name.data());
      std::abort();
    }
    return *it->second;
  }

  template <typename Cell, typename Make>
  static Cell* Find(std::map<std::string, Series<Cell>>& series, const Labels& labels, Make make) {
    auto& s = series[LabelText(labels)];
    if (!s.cell) {
      s.labels = labels;
      s.cell = make();
    }
    return s.cell.get();
  }
};

MetricsRegistry::MetricsRegistry() : impl_(std::make_unique<Impl>()) {}
MetricsRegistry::~MetricsRegistry() = default;

std::vector<double> MetricsRegistry::DefaultLatencyBounds() {
  return {0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5};
}

Counter* MetricsRegistry::GetCounter(std::string_view name, std::string_view help,
                                     const Labels& labels) {
  MutexLock lock(impl_->mu);
  return Impl::Find(impl_->GetFamily(name, help, prometheus::MetricType::Counter).counters, labels,
                    [] { return std::make_unique<Counter>(); });
}

Gauge* MetricsRegistry::GetGauge(std::string_view name, std::string_view help,
                                 const Labels& labels) {
  MutexLock lock(impl_->mu);
  return Impl::Find(impl_->GetFamily(name, help, prometheus::MetricType::Gauge).gauges, labels,
                    [] { return std::make_unique<Gauge>(); });
}

Histogram* MetricsRegistry::GetHistogram(std::string_view name, std::string_view help,
                                         const Labels& labels, std::vector<double> bounds) {
  MutexLock lock(impl_->mu);
  return Impl::Find(impl_->GetFamily(name, help, prometheus::MetricType::Histogram).histograms,
                    labels, [&] { return std::make_unique<Histogram>(std::move(bounds)); });
}

void MetricsRegistry::AddCollector(Collector collector) {
  MutexLock lock(impl_->mu);
  impl_->collectors.push_back(std::move(collector));
}

std::vector<prometheus::MetricFamily> MetricsRegistry::Collect() const {
  MutexLock lock(impl_->mu);
  // Collectors derive values (such as messages in flight) from counters; they run before the
  // counters are read, so a derived value never looks newer than the counters it came from
  // (in flight 0 is then always shown together with the finished totals that make it 0).
  std::vector<prometheus::MetricFamily> collected;
  for (const auto& c : impl_->collectors) {
    c(collected);
  }
  std::vector<prometheus::MetricFamily> out;
  out.reserve(impl_->families.size() + collected.size());
  for (const auto& [name, f] : impl_->families) {
    prometheus::MetricFamily family{
        .name = f->name, .help = f->help, .type = f->type, .metric = {}};
    CollectSeries(f->counters, family);
    CollectSeries(f->gauges, family);
    CollectSeries(f->histograms, family);
    out.push_back(std::move(family));
  }
  std::move(collected.begin(), collected.end(), std::back_inserter(out));
  return out;
}

prometheus::MetricFamily OneSample(std::string name, std::string help, prometheus::MetricType type,
                                   double value) {
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return {.name = std::move(name), .help = std::move(help), .type = type, .metric = {m}};
}

std::string MetricsRegistry::Render() const {
  return prometheus::TextSerializer().Serialize(Collect());
}

}  // namespace gnomon

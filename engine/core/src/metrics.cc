// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/metrics.h"
#include "gnomon/core/mutex.h"

#include <fmt/format.h>

#include <map>

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

enum class MetricType { kCounter, kGauge, kHistogram };

struct MetricsRegistry::Family {
  std::string name;
  std::string help;
  MetricType type;
  // Keyed by rendered label text, e.g. `{sink="a",outcome="ok"}`.
  std::map<std::string, std::unique_ptr<Counter>> counters;
  std::map<std::string, std::unique_ptr<Gauge>> gauges;
  std::map<std::string, std::unique_ptr<Histogram>> histograms;
};

struct MetricsRegistry::Impl {
  mutable Mutex mu;
  std::map<std::string, std::unique_ptr<Family>, std::less<>> families GNOMON_GUARDED_BY(mu);
  std::vector<std::function<void(std::string&)>> collectors GNOMON_GUARDED_BY(mu);

  Family& GetFamily(std::string_view name, std::string_view help, MetricType type)
      GNOMON_REQUIRES(mu) {
    auto it = families.find(name);
    if (it == families.end()) {
      auto f = std::make_unique<Family>();
      f->name = std::string(name);
      f->help = std::string(help);
      f->type = type;
      it = families.emplace(std::string(name), std::move(f)).first;
    }
    return *it->second;
  }
};

namespace {
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

// Inserts `extra` (like `le="0.1"`) into a label text.
std::string WithLabel(const std::string& labels, const std::string& extra) {
  if (labels.empty()) {
    return "{" + extra + "}";
  }
  return labels.substr(0, labels.size() - 1) + "," + extra + "}";
}
}  // namespace

MetricsRegistry::MetricsRegistry() : impl_(std::make_unique<Impl>()) {}
MetricsRegistry::~MetricsRegistry() = default;

std::vector<double> MetricsRegistry::DefaultLatencyBounds() {
  return {0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5};
}

Counter* MetricsRegistry::GetCounter(std::string_view name, std::string_view help,
                                     const Labels& labels) {
  MutexLock lock(impl_->mu);
  auto& slot = impl_->GetFamily(name, help, MetricType::kCounter).counters[LabelText(labels)];
  if (!slot) {
    slot = std::make_unique<Counter>();
  }
  return slot.get();
}

Gauge* MetricsRegistry::GetGauge(std::string_view name, std::string_view help,
                                 const Labels& labels) {
  MutexLock lock(impl_->mu);
  auto& slot = impl_->GetFamily(name, help, MetricType::kGauge).gauges[LabelText(labels)];
  if (!slot) {
    slot = std::make_unique<Gauge>();
  }
  return slot.get();
}

Histogram* MetricsRegistry::GetHistogram(std::string_view name, std::string_view help,
                                         const Labels& labels, std::vector<double> bounds) {
  MutexLock lock(impl_->mu);
  auto& slot = impl_->GetFamily(name, help, MetricType::kHistogram).histograms[LabelText(labels)];
  if (!slot) {
    slot = std::make_unique<Histogram>(std::move(bounds));
  }
  return slot.get();
}

void MetricsRegistry::AddCollector(std::function<void(std::string&)> collector) {
  MutexLock lock(impl_->mu);
  impl_->collectors.push_back(std::move(collector));
}

std::string MetricsRegistry::Render() const {
  std::string out;
  MutexLock lock(impl_->mu);
  // Collectors derive values (such as messages in flight) from counters; they run before the
  // counters are rendered, so a derived value never looks newer than the counters it came from
  // (in flight 0 is then always shown together with the finished totals that make it 0).
  std::string collected;
  for (const auto& c : impl_->collectors) {
    c(collected);
  }
  auto it = std::back_inserter(out);
  for (const auto& [name, f] : impl_->families) {
    const char* type = f->type == MetricType::kCounter ? "counter"
                       : f->type == MetricType::kGauge ? "gauge"
                                                       : "histogram";
    fmt::format_to(it, "# HELP {} {}\n# TYPE {} {}\n", name, f->help, name, type);
    for (const auto& [labels, c] : f->counters) {
      fmt::format_to(it, "{}{} {}\n", name, labels, c->value());
    }
    for (const auto& [labels, g] : f->gauges) {
      fmt::format_to(it, "{}{} {}\n", name, labels, g->value());
    }
    for (const auto& [labels, h] : f->histograms) {
      uint64_t cumulative = 0;
      for (size_t i = 0; i < h->bounds_.size(); ++i) {
        cumulative += h->Bucket(i);
        fmt::format_to(it, "{}_bucket{} {}\n", name,
                       WithLabel(labels, fmt::format("le=\"{}\"", h->bounds_[i])), cumulative);
      }
      cumulative += h->Bucket(h->bounds_.size());
      fmt::format_to(it, "{}_bucket{} {}\n", name, WithLabel(labels, "le=\"+Inf\""), cumulative);
      fmt::format_to(it, "{}_sum{} {}\n", name, labels,
                     static_cast<double>(h->SumNs()) / 1e9);
      fmt::format_to(it, "{}_count{} {}\n", name, labels, cumulative);
    }
  }
  out += collected;
  return out;
}

}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
// Topic matching with many filters: the trie index against checking every filter.
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "gnomon/core/topic.h"

namespace gnomon {
namespace {

// `n` filters shaped like a real fleet's rules: per-model and per-device subscriptions,
// with + and # in a tenth of them.
std::vector<std::string> Filters(int n) {
  std::vector<std::string> f;
  std::mt19937 rng(1);
  for (int i = 0; i < n; ++i) {
    switch (i % 10) {
      case 0: f.push_back("tenant" + std::to_string(i % 97) + "/+/telemetry"); break;
      case 1: f.push_back("tenant" + std::to_string(i % 97) + "/dev" + std::to_string(i) + "/#"); break;
      default:
        f.push_back("tenant" + std::to_string(i % 97) + "/dev" + std::to_string(i) + "/" +
                    (i % 2 ? "telemetry" : "events/alarm"));
    }
  }
  f.push_back("$aws/things/+/shadow/update/delta");
  return f;
}

void BM_TopicIndexMatch(benchmark::State& state) {
  auto filters = Filters(static_cast<int>(state.range(0)));
  TopicIndex index;
  for (uint32_t i = 0; i < filters.size(); ++i) {
    index.Add(filters[i], i);
  }
  std::vector<std::string> topics;
  for (int i = 0; i < 1024; ++i) {
    topics.push_back("tenant" + std::to_string(i % 97) + "/dev" + std::to_string(i * 7) +
                     "/telemetry");
  }
  std::vector<uint32_t> out;
  size_t i = 0, matched = 0;
  for (auto _ : state) {
    out.clear();
    index.Match(topics[i++ & 1023], out);
    matched += out.size();
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["matches_per_topic"] =
      static_cast<double>(matched) / static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TopicIndexMatch)->Arg(100)->Arg(10000);

void BM_TopicLinearScan(benchmark::State& state) {
  auto filters = Filters(static_cast<int>(state.range(0)));
  std::string topic = "tenant5/dev700/telemetry";
  for (auto _ : state) {
    size_t n = 0;
    for (const auto& f : filters) {
      n += TopicMatches(f, topic) ? 1 : 0;
    }
    benchmark::DoNotOptimize(n);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TopicLinearScan)->Arg(100)->Arg(10000);

}  // namespace
}  // namespace gnomon

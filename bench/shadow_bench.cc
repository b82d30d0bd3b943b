// SPDX-License-Identifier: Apache-2.0
// Shadow update in memory (parse request, validate, merge, metadata, delta, events) on a
// ~500-byte document. Issue 4's target: >= 500k updates/s on one core.
#include <benchmark/benchmark.h>

#include "gnomon/shadow/document.h"

namespace gnomon::shadow {
namespace {

void BM_ShadowUpdate(benchmark::State& state) {
  ShadowDocument d;
  auto r = d.Update(
      R"({"state":{"reported":{"temp":21.5,"humidity":40,"fw":"1.2.0","mode":"heat","fan":"auto",)"
      R"("battery":88,"rssi":-61,"led":{"r":255,"g":0,"b":0},"schedule":[6,22],"room":"kitchen",)"
      R"("uptime":123456,"errors":0},"desired":{"mode":"heat","targetTemp":21.0,)"
      R"("led":{"r":255,"g":0,"b":0},"fan":"auto"}}})",
      1700000000);
  if (!std::holds_alternative<UpdateResult>(r)) {
    state.SkipWithError("setup failed");
    return;
  }
  std::string docsize = d.DocumentJson();
  const std::string updates[] = {
      R"({"state":{"reported":{"temp":21.7,"humidity":41,"uptime":123457}}})",
      R"({"state":{"reported":{"temp":21.6,"led":{"g":10}}}})",
      R"({"state":{"desired":{"targetTemp":22.0}}})",
      R"({"state":{"reported":{"targetTemp":22.0,"temp":21.9}}})"};
  int64_t t = 1700000000;  // (no clientTokens: a repeated token would replay, not update)
  size_t i = 0;
  for (auto _ : state) {
    auto res = d.Update(updates[i++ & 3], ++t);  // tokens expire per request: new timestamps
    benchmark::DoNotOptimize(res);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["doc_bytes"] = static_cast<double>(docsize.size());
}
BENCHMARK(BM_ShadowUpdate);

}  // namespace
}  // namespace gnomon::shadow

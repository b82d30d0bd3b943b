// SPDX-License-Identifier: Apache-2.0
// Shadow update in memory (parse request, validate, merge, metadata, delta, events) on a
// ~500-byte document. Issue 4's target: >= 500k updates/s on one core.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <unistd.h>

#include <filesystem>
#include <thread>

#include "gnomon/shadow/document.h"
#include "gnomon/shadow/store.h"

namespace gnomon::shadow {
namespace {

// The timed part of the in-memory update benchmarks: four updates in turn on `d`.
void RunUpdates(benchmark::State& state, ShadowDocument& d) {
  std::string docsize = d.DocumentJson();
  const std::string updates[] = {
      R"({"state":{"reported":{"temp":21.7,"humidity":41,"uptime":123457}}})",
      R"({"state":{"reported":{"temp":21.6,"led":{"g":10}}}})",
      R"({"state":{"desired":{"targetTemp":22.0}}})",
      R"({"state":{"reported":{"targetTemp":22.0,"temp":21.9}}})"};
  int64_t t = 1700000000;
  size_t i = 0;
  for (auto _ : state) {
    auto res = d.Update(updates[i++ & 3], ++t);
    benchmark::DoNotOptimize(res);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["doc_bytes"] = static_cast<double>(docsize.size());
}

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
  RunUpdates(state, d);
}
BENCHMARK(BM_ShadowUpdate);

// The same updates on a document with state.range(0) more reported members (~40 bytes each):
// an update re-serializes only the members it writes, so the cost grows with the document
// only by copying it into the outputs.
void BM_ShadowUpdateLargeDocument(benchmark::State& state) {
  ShadowDocument d;
  std::string init = R"({"state":{"reported":{"temp":21.5,"humidity":40,"uptime":1,"led":{"g":0})";
  for (int64_t i = 0; i < state.range(0); ++i) {
    init += ",\"sensor" + std::to_string(i) + "\":{\"v\":" + std::to_string(i) + ",\"unit\":\"C\"}";
  }
  init += R"(},"desired":{"targetTemp":21.0}}})";
  if (!std::holds_alternative<UpdateResult>(d.Update(init, 1700000000))) {
    state.SkipWithError("setup failed");
    return;
  }
  RunUpdates(state, d);
}
BENCHMARK(BM_ShadowUpdateLargeDocument)->Arg(100)->Arg(400);

// A change-log record (a documents event) of the quickstart-sized document with `extra` more
// reported members; empty when the document could not be made.
std::string RestoreRecord(int64_t extra) {
  ShadowDocument d;
  std::string init =
      R"({"state":{"reported":{"temp":21.5,"humidity":40,"fw":"1.2.0","mode":"heat","fan":"auto",)"
      R"("battery":88,"rssi":-61,"led":{"r":255,"g":0,"b":0},"schedule":[6,22],"room":"kitchen",)"
      R"("uptime":123456,"errors":0)";
  for (int64_t i = 0; i < extra; ++i) {
    init += ",\"sensor" + std::to_string(i) + "\":{\"v\":" + std::to_string(i) + ",\"unit\":\"C\"}";
  }
  init += R"(},"desired":{"mode":"heat","targetTemp":21.0,"fan":"auto"}}})";
  if (!std::holds_alternative<UpdateResult>(d.Update(init, 1700000000))) {
    return "";
  }
  return R"({"previous":null,"current":)" + d.DocumentJson() + R"(,"timestamp":1700000000})";
}

// A cluster's restore, per change-log record (docs/cluster.md#shadows): a documents event
// parsed into the shadow and its stored form built, what the consumer's thread did for each
// record before the store wrote it (until 2026-12-07). The document of BM_ShadowUpdate
// (~1.1 KB with its metadata) with state.range(0) more reported members.
void BM_ShadowRestoreRecord(benchmark::State& state) {
  std::string event = RestoreRecord(state.range(0));
  if (event.empty()) {
    state.SkipWithError("setup failed");
    return;
  }
  for (auto _ : state) {
    auto doc = ShadowDocument::FromChangelog(event);
    if (!doc.ok()) {
      state.SkipWithError("the record did not parse");
      return;
    }
    std::string stored = doc->StoredJson();
    benchmark::DoNotOptimize(stored);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["record_bytes"] = static_cast<double>(event.size());
}
BENCHMARK(BM_ShadowRestoreRecord)->Arg(0)->Arg(100);

// The same record as a restore takes it since 2026-12-07: its stored form straight from the
// record (validated, sections written as they are checked), no document built.
void BM_ShadowRestoreRecordStored(benchmark::State& state) {
  std::string event = RestoreRecord(state.range(0));
  if (event.empty()) {
    state.SkipWithError("setup failed");
    return;
  }
  for (auto _ : state) {
    auto stored = ShadowDocument::StoredFromChangelog(event);
    if (!stored.ok()) {
      state.SkipWithError("the record did not parse");
      return;
    }
    benchmark::DoNotOptimize(*stored);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["record_bytes"] = static_cast<double>(event.size());
}
BENCHMARK(BM_ShadowRestoreRecordStored)->Arg(0)->Arg(100);

// Durable updates: owners apply updates and queue the stored form (~600 bytes) to the SQLite
// store, which group-commits. One timed iteration is kUpdates updates spread over 10k shadows
// by state.range(1) producer threads (gnomon's workers; each owns its share of the shadows, the
// single-writer rule), and it ends only when every write is durable (the final Flush is timed).
// Issue 4's target: >= 100k/s. Args: sync_full, producers.
void BM_ShadowStoreDurableUpdates(benchmark::State& state) {
  constexpr int kShadows = 10000;
  constexpr int kUpdates = 200000;
  int producers = static_cast<int>(state.range(1));
  bool changes = state.range(2) != 0;  // with the history log (gnomon's default: 64 MiB a worker)
  std::string dir = "/tmp/gnomon-bench-store-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto store = ShadowStore::Open({.path = dir + "/shadows.db",
                                  .sync_full = state.range(0) != 0,
                                  .history_log_bytes = changes ? size_t{128} << 20 : 0});
  if (!store.ok()) {
    state.SkipWithError(std::string(store.status().message()).c_str());
    return;
  }
  struct Owner {
    std::vector<ShadowDocument> docs;
    std::vector<std::string> names;
  };
  std::vector<Owner> owners(static_cast<size_t>(producers));
  for (int p = 0; p < producers; ++p) {
    Owner& o = owners[static_cast<size_t>(p)];
    for (int i = p; i < kShadows; i += producers) {
      o.names.push_back("dev-" + std::to_string(i));
      o.docs.emplace_back();
      (void)!std::holds_alternative<UpdateResult>(o.docs.back().Update(
          R"({"state":{"reported":{"temp":21.5,"humidity":40,"fw":"1.2.0","mode":"heat",)"
          R"("battery":88,"rssi":-61,"led":{"r":255,"g":0,"b":0},"room":"kitchen"},)"
          R"("desired":{"mode":"heat","targetTemp":21.0}}})",
          1700000000));
    }
  }
  auto produce = [&](Owner& o, int n) {
    int64_t t = 1700000000;
    for (int i = 0; i < n; ++i) {
      size_t k = (static_cast<size_t>(i) * 7919) % o.docs.size();  // spread over the shadows
      ShadowDocument& d = o.docs[k];
      auto r = d.Update(R"({"state":{"reported":{"temp":21.7,"uptime":123457}}})", ++t / 64);
      std::optional<ShadowChange> change;
      if (auto* u = std::get_if<UpdateResult>(&r); u != nullptr && changes) {
        change = ShadowChange{d.version(), t / 64, std::move(u->patch)};
      }
      (*store)->Write(o.names[k], "", d.StoredJson(), nullptr, 0, std::move(change));
    }
  };
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (int p = 1; p < producers; ++p) {
      threads.emplace_back(produce, std::ref(owners[static_cast<size_t>(p)]), kUpdates / producers);
    }
    produce(owners[0], kUpdates / producers);
    for (auto& th : threads) {
      th.join();
    }
    (*store)->Flush();
  }
  state.SetItemsProcessed(state.iterations() * kUpdates);
  StoreStats st = (*store)->stats();
  state.counters["writes_per_txn"] =
      st.transactions ? static_cast<double>(st.writes) / static_cast<double>(st.transactions) : 0;
  store->reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_ShadowStoreDurableUpdates)
    ->ArgNames({"sync_full", "producers", "changes"})
    ->Args({1, 1, 0})->Args({0, 1, 0})->Args({1, 2, 0})->Args({0, 2, 0})
    ->Args({1, 1, 1})->Args({1, 2, 1})
    ->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

}  // namespace
}  // namespace gnomon::shadow

// SPDX-License-Identifier: Apache-2.0
// ShadowOwner against a real store in a temporary directory.
#include "shadow_owner.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <future>
#include <string>

#include "gnomon/core/metrics.h"
#include "tests/support/test_support.h"

namespace gnomon::engine {
namespace {

using shadow::ShadowChange;
using shadow::ShadowDocument;
using shadow::ShadowStore;
using testing::TempDir;

std::unique_ptr<ShadowStore> OpenStore(const std::string& path) {
  auto s = ShadowStore::Open({.path = path, .history_log_bytes = 1 << 20});
  EXPECT_TRUE(s.ok()) << s.status().message();
  return std::move(s).value();
}

std::unique_ptr<ShadowOwner> MakeOwner(ShadowStore& store, ShadowOwner::Options options,
                                       ShadowOwner::Counters counters = {}) {
  auto reader = store.NewReader();
  EXPECT_TRUE(reader.ok());
  return std::make_unique<ShadowOwner>(options, store, std::move(reader).value(), counters);
}

// Reports temp = `temp` on the owner's copy of (thing, "") and stores it; the status once
// the store has it.
Status Report(ShadowOwner& owner, ShadowStore& store, const std::string& thing, int64_t temp,
              uint64_t* epoch = nullptr) {
  auto doc = owner.Get(thing, "");
  EXPECT_TRUE(doc.ok()) << doc.status().message();
  auto r = (*doc)->Update(R"({"state":{"reported":{"temp":)" + std::to_string(temp) + "}}}", 100);
  EXPECT_TRUE(std::holds_alternative<shadow::UpdateResult>(r));
  if (epoch != nullptr) {
    *epoch = owner.epoch(thing, "");
  }
  auto out = std::make_shared<Status>();
  owner.Store(thing, "", (*doc)->StoredJson(), [out](const Status& st) { *out = st; });
  store.Flush();
  return *out;
}

int64_t Temp(ShadowDocument* doc) {
  const shadow::Value* t = doc->reported().Find("temp");
  return t != nullptr ? t->as_int() : -1;
}

TEST(ShadowOwnerTest, LoadsAShadowOnceAndKeepsItsCopy) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  MetricsRegistry metrics;
  Counter* loads = metrics.GetCounter("loads", "");
  auto owner = MakeOwner(*store, {}, {.loads = loads});
  auto fresh = owner->Get("t1", "");
  ASSERT_TRUE(fresh.ok());
  EXPECT_FALSE((*fresh)->exists()) << "never written: an empty document";
  ASSERT_TRUE(Report(*owner, *store, "t1", 21).ok());
  auto again = owner->Get("t1", "");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *fresh) << "the same copy";
  EXPECT_EQ(Temp(*again), 21);
  EXPECT_EQ(loads->value(), 1u);

  // Another owner of the same store (after a restart) reads what was stored.
  auto other = MakeOwner(*store, {});
  auto loaded = other->Get("t1", "");
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE((*loaded)->exists());
  EXPECT_EQ(Temp(*loaded), 21);
}

TEST(ShadowOwnerTest, AStoredFormThatIsNotAShadowIsAnErrorNamingIt) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  store->Write("bad", "n1", "{not a shadow", nullptr);
  store->Flush();
  auto owner = MakeOwner(*store, {});
  auto doc = owner->Get("bad", "n1");
  ASSERT_FALSE(doc.ok());
  EXPECT_NE(doc.status().message().find("shadow bad/n1 in the store"), std::string::npos)
      << doc.status().message();
  EXPECT_TRUE(owner->Get("good", "").ok()) << "other shadows are not affected";
}

// A partition moved away (cluster): the copies of its things are dropped, the others kept,
// and a dropped thing is read from the store again on its next use (what a restore put there).
TEST(ShadowOwnerTest, DropThingsForgetsTheirCopiesAndTheNextGetReadsTheStore) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  MetricsRegistry metrics;
  Counter* loads = metrics.GetCounter("loads", "");
  auto owner = MakeOwner(*store, {.history = 4, .history_bytes = 1 << 20}, {.loads = loads});
  ASSERT_TRUE(Report(*owner, *store, "keep", 1).ok());
  ASSERT_TRUE(Report(*owner, *store, "drop1", 2).ok());
  ASSERT_TRUE(Report(*owner, *store, "drop2", 3).ok());
  owner->RecordChange("drop1", "", {1, 100, "[]"});
  owner->RecordChange("keep", "", {1, 100, "[]"});
  EXPECT_EQ(owner->DropThings([](std::string_view t) { return t.starts_with("drop"); }), 2u);
  EXPECT_EQ(owner->cached(), 1u);
  EXPECT_EQ(owner->History("drop1", ""), nullptr);
  EXPECT_NE(owner->History("keep", ""), nullptr);
  // Another instance's restore wrote drop1 meanwhile: the next Get sees that, not the old copy.
  auto other = ShadowDocument();
  ASSERT_TRUE(std::holds_alternative<shadow::UpdateResult>(
      other.Update(R"({"state":{"reported":{"temp":42}}})", 100)));
  store->Write("drop1", "", other.StoredJson(), nullptr);
  store->Flush();
  uint64_t before = loads->value();
  auto doc = owner->Get("drop1", "");
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(Temp(*doc), 42);
  EXPECT_EQ(loads->value(), before + 1);
  auto kept = owner->Get("keep", "");
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(Temp(*kept), 1);
  EXPECT_EQ(loads->value(), before + 1) << "kept: no reload";
}

// Beyond cache_shadows, Trim drops the least recently used copies whose writes are done, and
// never one with a write still pending (a reload would miss it).
TEST(ShadowOwnerTest, TrimDropsOnlyDurableCopiesLeastRecentlyUsedFirst) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  MetricsRegistry metrics;
  Counter* drops = metrics.GetCounter("drops", "");
  Counter* loads = metrics.GetCounter("loads", "");
  auto owner = MakeOwner(*store, {.cache_shadows = 2}, {.loads = loads, .drops = drops});
  for (const char* t : {"a", "b", "c"}) {
    ASSERT_TRUE(Report(*owner, *store, t, 1).ok());
  }
  ASSERT_TRUE(owner->Get("a", "").ok());  // a is used again: b is now the oldest
  EXPECT_EQ(owner->Trim(), 1u);
  EXPECT_EQ(owner->cached(), 2u);
  uint64_t before = loads->value();
  ASSERT_TRUE(owner->Get("a", "").ok());
  ASSERT_TRUE(owner->Get("c", "").ok());
  EXPECT_EQ(loads->value(), before) << "a and c were kept";
  ASSERT_TRUE(owner->Get("b", "").ok());
  EXPECT_EQ(loads->value(), before + 1) << "b was dropped and read again";

  // Hold the store's writer so that the next write stays pending.
  std::promise<void> entered, release;
  auto released = release.get_future().share();
  store->After([&entered, released](const Status&) {
    entered.set_value();
    released.wait();
  });
  entered.get_future().wait();
  auto doc = owner->Get("a", "");  // a: the oldest now, with a write in flight
  ASSERT_TRUE(doc.ok());
  ASSERT_TRUE(owner->Get("b", "").ok());
  ASSERT_TRUE(owner->Get("c", "").ok());
  owner->Store("a", "", (*doc)->StoredJson(), nullptr);
  EXPECT_EQ(owner->Trim(), 1u);
  release.set_value();
  store->Flush();
  before = loads->value();
  ASSERT_TRUE(owner->Get("a", "").ok());
  EXPECT_EQ(loads->value(), before) << "a (pending) was kept, b went instead";
  EXPECT_EQ(drops->value(), 2u);
  EXPECT_EQ(owner->Trim(), 0u) << "at the cap";
}

TEST(ShadowOwnerTest, EvictDropsTheCopyOfThatEpochOnceAndWritesOnWithTheNext) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  auto owner = MakeOwner(*store, {.history = 10, .history_bytes = 1 << 20});
  uint64_t epoch = 99;
  ASSERT_TRUE(Report(*owner, *store, "t", 1, &epoch).ok());
  EXPECT_EQ(epoch, 0u);
  owner->RecordChange("t", "", ShadowChange{1, 100, "[1]"});
  // The copy moves on (temp 2) but, as if its write had been refused, is evicted.
  auto doc = owner->Get("t", "");
  ASSERT_TRUE(doc.ok());
  ASSERT_TRUE(std::holds_alternative<shadow::UpdateResult>(
      (*doc)->Update(R"({"state":{"reported":{"temp":2}}})", 100)));
  EXPECT_TRUE(owner->Evict("t", "", 0));
  EXPECT_FALSE(owner->Evict("t", "", 0)) << "that copy is gone already";
  EXPECT_EQ(owner->epoch("t", ""), 1u);
  EXPECT_EQ(owner->History("t", ""), nullptr) << "its history had the refused version";
  auto reread = owner->Get("t", "");
  ASSERT_TRUE(reread.ok());
  EXPECT_EQ(Temp(*reread), 1) << "read again from the store";
  ASSERT_TRUE(Report(*owner, *store, "t", 3, &epoch).ok());
  EXPECT_EQ(epoch, 1u) << "writes carry the new epoch";
  EXPECT_EQ(owner->epoch("other", ""), 0u);
}

// With a real refusal (a full disk): writes of the dropped copy's epoch stay refused once the
// disk has room again; the owner's reloaded copy writes on.
TEST(ShadowOwnerTest, AfterARefusedWriteOnlyTheReloadedCopyCanWrite) {
  if (::geteuid() != 0) {
    GNOMON_REQUIRE_SERVER(false, "mounting a small tmpfs needs root");
  }
  TempDir dir;
  testing::SmallDisk disk(dir.File("db"), "8m");
  GNOMON_REQUIRE_SERVER(disk.mounted(), "mount -t tmpfs failed: " + disk.why());
  auto store = OpenStore(dir.File("db/shadows.db"));
  auto owner = MakeOwner(*store, {});
  ASSERT_TRUE(Report(*owner, *store, "t", 1).ok());
  disk.Fill();
  uint64_t epoch = 99;
  Status refused = Report(*owner, *store, "t", 2, &epoch);
  ASSERT_FALSE(refused.ok());
  disk.Free();
  Status stale = Report(*owner, *store, "t", 3);  // on top of temp 2, never stored
  EXPECT_EQ(stale.code(), StatusCode::kFailedPrecondition) << stale.message();
  ASSERT_TRUE(owner->Evict("t", "", epoch));
  auto reread = owner->Get("t", "");
  ASSERT_TRUE(reread.ok());
  EXPECT_EQ(Temp(*reread), 1);
  EXPECT_TRUE(Report(*owner, *store, "t", 4).ok());
  auto other = MakeOwner(*store, {});
  auto stored = other->Get("t", "");
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(Temp(*stored), 4);
}

// A change's operations are built by appending, so their string can hold up to twice its size;
// the history keeps them at their size, which is what they are charged.
TEST(ShadowOwnerTest, HistoryKeepsOperationsAtTheirSize) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  auto owner = MakeOwner(*store, {.history = 3, .history_bytes = 1 << 20});
  const std::string ops = "[" + std::string(298, ' ') + "]";
  std::string built = ops;
  built.reserve(4096);
  owner->RecordChange("a", "", ShadowChange{1, 100, std::move(built)});
  const auto* a = owner->History("a", "");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->front().ops, ops);
  EXPECT_LT(a->front().ops.capacity(), 400u);
  EXPECT_EQ(owner->history_bytes(), ShadowChange::Bytes("a", "", ops));
}

TEST(ShadowOwnerTest, HistoryKeepsAtMostNPerShadowAndStaysWithinItsBudget) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  const std::string ops = "[" + std::string(98, ' ') + "]";  // 100 bytes
  const size_t each = ShadowChange::Bytes("a", "", ops);
  auto owner = MakeOwner(*store, {.history = 3, .history_bytes = 5 * each});
  for (int v = 1; v <= 4; ++v) {
    owner->RecordChange("a", "", ShadowChange{v, 100, ops});
  }
  const auto* a = owner->History("a", "");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->size(), 3u) << "at most 3 per shadow";
  EXPECT_EQ(a->front().version, 2);
  EXPECT_EQ(a->back().version, 4);
  // The fourth change of a still counts until it leaves the budget's order: 4 so far.
  EXPECT_EQ(owner->history_bytes(), 4 * each);
  owner->RecordChange("b", "", ShadowChange{1, 100, ops});
  owner->RecordChange("b", "", ShadowChange{2, 100, ops});
  EXPECT_EQ(owner->history_bytes(), 5 * each);
  // Over budget, the oldest charge left first: a's version 1, already out of a's list.
  a = owner->History("a", "");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->front().version, 2);
  owner->RecordChange("b", "", ShadowChange{3, 100, ops});
  EXPECT_EQ(owner->history_bytes(), 5 * each);
  // Then the oldest change of any shadow: a's version 2.
  EXPECT_EQ(a->front().version, 3);
  ASSERT_NE(owner->History("b", ""), nullptr);
  EXPECT_EQ(owner->History("b", "")->size(), 3u);
  owner->EraseHistory("a", "");
  EXPECT_EQ(owner->History("a", ""), nullptr);
  auto off = MakeOwner(*store, {.history = 0, .history_bytes = 1 << 20});
  off->RecordChange("a", "", ShadowChange{1, 100, ops});
  EXPECT_EQ(off->History("a", ""), nullptr) << "history 0 keeps none";
}

// The history log's changes go back to the owners of their things at start; a delete ends a
// shadow's history.
TEST(ShadowOwnerTest, RestoreGivesEachOwnerTheLoggedChangesOfItsThings) {
  TempDir dir;
  {
    auto store = OpenStore(dir.File("s.db"));
    auto owner = MakeOwner(*store, {});
    auto write = [&](const std::string& thing, int64_t v, std::string ops) {
      auto doc = owner->Get(thing, "");
      ASSERT_TRUE(doc.ok());
      owner->Store(thing, "", (*doc)->StoredJson(), nullptr, ShadowChange{v, 100, ops});
    };
    write("a", 1, "[1]");
    write("b", 1, "[1]");
    write("a", 2, "[2]");
    write("b", 2, "");  // b deleted
    write("b", 3, "[3]");
    store->Flush();
  }
  auto store = OpenStore(dir.File("s.db"));
  auto first = MakeOwner(*store, {.history = 10, .history_bytes = 1 << 20});
  auto second = MakeOwner(*store, {.history = 10, .history_bytes = 1 << 20});
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  auto restored = ShadowOwner::RestoreHistory(
      **reader, {first.get(), second.get()},
      [](std::string_view thing) -> size_t { return thing == "a" ? 0 : 1; });
  ASSERT_TRUE(restored.ok()) << restored.status().message();
  EXPECT_EQ(*restored, 4u);
  const auto* a = first->History("a", "");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->size(), 2u);
  EXPECT_EQ(a->back().ops, "[2]");
  EXPECT_EQ(second->History("a", ""), nullptr);
  const auto* b = second->History("b", "");
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->size(), 1u) << "the delete ended b's earlier history";
  EXPECT_EQ(b->front().version, 3);
}

}  // namespace
}  // namespace gnomon::engine

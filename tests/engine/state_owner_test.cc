// SPDX-License-Identifier: Apache-2.0
// StateOwner against a real store in a temporary directory.
#include "state_owner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <string>

#include "gnomon/core/metrics.h"
#include "tests/support/test_support.h"

namespace gnomon::engine {
namespace {

using shadow::RuleState;
using shadow::ShadowStore;
using testing::TempDir;

std::unique_ptr<ShadowStore> OpenStore(const std::string& path) {
  auto s = ShadowStore::Open({.path = path});
  EXPECT_TRUE(s.ok()) << s.status().message();
  return std::move(s).value();
}

// (rule, device)'s state as the owner has it: its JSON, "<none>", or the error.
std::string Json(StateOwner& owner, ShadowStore::Reader& reader, const std::string& rule,
                 const std::string& device) {
  auto s = owner.Get(rule, device, reader);
  if (!s.ok()) {
    return std::string(s.status().message());
  }
  return (*s)->exists() ? (*s)->state.json : "<none>";
}

// Sets (rule, device)'s state to `json` (version `version`; "" : none) and writes it.
void Put(StateOwner& owner, ShadowStore::Reader& reader, const std::string& rule,
         const std::string& device, const std::string& json, ShadowStore::Done done,
         int64_t version = 1) {
  auto row = owner.Get(rule, device, reader);
  ASSERT_TRUE(row.ok()) << row.status().message();
  (*row)->state.json = json;
  (*row)->state.version = version;
  owner.Put(rule, device, std::move(done));
}

// States are read from the store once, then served from the owner; a write is the owner's copy
// at once and the store's once durable; an empty state is deleted from both.
TEST(StateOwnerTest, ReadsOnceWritesThroughAndDeletes) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  MetricsRegistry metrics;
  Counter* loads = metrics.GetCounter("loads", "");
  StateOwner owner(1 << 20, *store, loads);
  EXPECT_EQ(Json(owner, **reader, "r", "d1"), "<none>");
  EXPECT_EQ(Json(owner, **reader, "r", "d1"), "<none>");
  EXPECT_EQ(loads->value(), 1u) << "a state that does not exist is cached too";
  std::promise<Status> durable;
  Put(
      owner, **reader, "r", "d1", R"({"n":1})",
      [&durable](const Status& st) { durable.set_value(st); }, 2);
  EXPECT_EQ(Json(owner, **reader, "r", "d1"), R"({"n":1})") << "the owner's copy at once";
  ASSERT_TRUE(durable.get_future().get().ok());
  auto stored = (*reader)->LoadState("r", "d1");
  ASSERT_TRUE(stored.ok() && stored->has_value());
  EXPECT_EQ((*stored)->version, 2);
  Put(owner, **reader, "r", "d1", "", nullptr);
  store->Flush();
  EXPECT_EQ(Json(owner, **reader, "r", "d1"), "<none>");
  stored = (*reader)->LoadState("r", "d1");
  ASSERT_TRUE(stored.ok());
  EXPECT_FALSE(stored->has_value());
  EXPECT_EQ(loads->value(), 1u);
}

// Beyond its byte budget Trim drops the least recently used states whose writes are done,
// never one with a write in flight; a dropped state is read again from the store.
TEST(StateOwnerTest, TrimKeepsTheBudgetAndNeverDropsAPendingWrite) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  MetricsRegistry metrics;
  Counter* loads = metrics.GetCounter("loads", "");
  const std::string big(1000, 'x');
  StateOwner owner(2500, *store, loads);  // two states of ~1.2 KB fit, three do not
  for (const char* d : {"a", "b", "c"}) {
    Put(owner, **reader, "r", d, "{\"s\":\"" + big + "\"}", nullptr);
  }
  store->Flush();
  EXPECT_EQ(owner.Trim(), 1u) << "a, the least recently used";
  EXPECT_LE(owner.bytes(), 2500u);
  EXPECT_EQ(owner.cached(), 2u);
  uint64_t before = loads->value();
  EXPECT_NE(Json(owner, **reader, "r", "a").find(big), std::string::npos);
  EXPECT_EQ(loads->value(), before + 1) << "a was read again from the store";

  // Hold the store's writer so that a write stays pending.
  std::promise<void> entered, release;
  auto released = release.get_future().share();
  store->After([&entered, released](const Status&) {
    entered.set_value();
    released.wait();
  });
  entered.get_future().wait();
  Put(owner, **reader, "r", "a", "{\"s\":\"" + big + "y\"}", nullptr);
  EXPECT_NE(Json(owner, **reader, "r", "b").find(big), std::string::npos);
  EXPECT_NE(Json(owner, **reader, "r", "c").find(big), std::string::npos);
  // a is the least recently used now, with its write in flight: b goes instead.
  owner.Trim();
  release.set_value();
  store->Flush();
  before = loads->value();
  EXPECT_NE(Json(owner, **reader, "r", "a").find(big + "y"), std::string::npos);
  EXPECT_EQ(loads->value(), before) << "a (pending) was kept";
  EXPECT_NE(Json(owner, **reader, "r", "b").find(big), std::string::npos);
  EXPECT_EQ(loads->value(), before + 1) << "b went instead";
}

// After a refused write the copy of that epoch is dropped once; the next Get reads the store
// and writes go on with the next epoch, which the store takes.
TEST(StateOwnerTest, EvictDropsTheCopyOfThatEpochOnceAndWritesOnWithTheNext) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  StateOwner owner(1 << 20, *store);
  Put(owner, **reader, "r", "d", R"({"n":1})", nullptr);
  store->Flush();
  EXPECT_EQ(owner.epoch("r", "d"), 0u);
  Put(owner, **reader, "r", "d", R"({"n":2})", nullptr);  // as if it was refused
  store->Flush();
  EXPECT_TRUE(owner.Evict("r", "d", 0));
  EXPECT_FALSE(owner.Evict("r", "d", 0)) << "that copy is gone already";
  EXPECT_EQ(owner.epoch("r", "d"), 1u);
  EXPECT_EQ(owner.epoch("r", "other"), 0u);
  EXPECT_EQ(Json(owner, **reader, "r", "d"), R"({"n":2})") << "read again from the store";
  std::promise<Status> durable;
  Put(owner, **reader, "r", "d", R"({"n":3})",
      [&durable](const Status& st) { durable.set_value(st); });
  EXPECT_TRUE(durable.get_future().get().ok());
}

// Timers and the inactivity deadline go to the store with the state; the store's due rows are
// what a restart schedules, and a row read again brings its schedule back.
TEST(StateOwnerTest, TimersAndDeadlinesAreStoredAndScheduledEarliestFirst) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  StateOwner owner(1 << 20, *store);
  auto row = owner.Get("r", "d1", **reader);
  ASSERT_TRUE(row.ok());
  (*row)->state.timers = {{"b", 300, R"({"x":[1,2]})"}, {"a", 200, ""}};
  (*row)->inactive_due = 250;
  owner.Put("r", "d1", nullptr);
  row = owner.Get("r", "d2", **reader);
  ASSERT_TRUE(row.ok());
  (*row)->inactive_due = 100;
  owner.Put("r", "d2", nullptr);
  store->Flush();
  auto stored = (*reader)->LoadState("r", "d1");
  ASSERT_TRUE(stored.ok() && stored->has_value());
  EXPECT_EQ((*stored)->next_due, 200);
  EXPECT_EQ((*stored)->inactive_due, 250);
  EXPECT_EQ((*stored)->json, "{}") << "a row with timers only";
  auto timers = DecodeTimers((*stored)->timers);
  ASSERT_TRUE(timers.ok()) << timers.status().message();
  EXPECT_EQ(*timers, (std::vector<rules::RuleTimer>{{"b", 300, R"({"x":[1,2]})"}, {"a", 200, ""}}));

  std::vector<std::string> due;
  ASSERT_TRUE((*reader)
                  ->Due(1, 1000,
                        [&](std::string_view device, std::string_view rule, int64_t at) {
                          due.push_back(std::string(device) + "/" + std::string(rule) + "@" +
                                        std::to_string(at));
                        })
                  .ok());
  std::sort(due.begin(), due.end());
  EXPECT_EQ(due, (std::vector<std::string>{"d1/r@200", "d2/r@100"}));

  // A fresh owner (a restart) schedules what the store says and hands out the earliest first.
  StateOwner after(1 << 20, *store);
  after.Schedule(StateKey("r", "d1"), 200);
  after.Schedule(StateKey("r", "d2"), 100);
  after.Schedule(StateKey("r", "d1"), 900);  // later than what is scheduled: no change
  EXPECT_EQ(after.pending(), 2u);
  EXPECT_TRUE(after.TakeDue(99, 10).empty());
  EXPECT_EQ(after.TakeDue(1000, 1), std::vector<std::string>{StateKey("r", "d2")});
  EXPECT_EQ(after.TakeDue(1000, 10), std::vector<std::string>{StateKey("r", "d1")});
  EXPECT_EQ(after.pending(), 0u);
  auto back = after.Get("r", "d1", **reader);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ((*back)->state.json, "") << "a timers-only row has no state";
  EXPECT_EQ((*back)->state.timers.size(), 2u);
  EXPECT_EQ(after.pending(), 1u) << "a row read with something due is scheduled again";
  EXPECT_EQ(after.TakeDue(1000, 10), std::vector<std::string>{StateKey("r", "d1")});

  // Nothing left: the row goes.
  (*back)->state.timers.clear();
  (*back)->inactive_due = 0;
  after.Put("r", "d1", nullptr);
  store->Flush();
  stored = (*reader)->LoadState("r", "d1");
  ASSERT_TRUE(stored.ok());
  EXPECT_FALSE(stored->has_value());
}

// In a cluster (docs/cluster.md): a write hands out the row's change-log record (what the next
// owner restores), and the rows of devices whose partition moves are forgotten, cached and due,
// while the others stay; a forgotten row is read again from the store as it is there.
TEST(StateOwnerTest, PutGivesTheChangeLogRecordAndDropDevicesForgetsOnlyThoseDevices) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  StateOwner owner(1 << 20, *store);
  owner.Cover(1000);
  for (const char* d : {"d1", "d2", "d3"}) {
    auto row = owner.Get("r", d, **reader);
    ASSERT_TRUE(row.ok());
    (*row)->state.json = std::string(R"({"dev":")") + d + "\"}";
    (*row)->state.timers = {{"t", 500, ""}};
    std::string record;
    owner.Put("r", d, nullptr, &record);
    owner.Schedule(StateKey("r", d), 500);
    auto back = RuleState::FromChangelog(record);
    ASSERT_TRUE(back.ok()) << back.status().message() << record;
    EXPECT_EQ(back->json, (*row)->state.json);
    EXPECT_EQ(back->next_due, 500);
    auto timers = DecodeTimers(back->timers);
    ASSERT_TRUE(timers.ok());
    EXPECT_EQ(*timers, (std::vector<rules::RuleTimer>{{"t", 500, ""}}));
  }
  store->Flush();
  EXPECT_EQ(owner.cached(), 3u);
  EXPECT_EQ(owner.pending(), 3u);
  // The store's copy of d2 changes behind the owner (a restore from the change log).
  store->WriteState("r", "d2", {7, R"({"restored":true})"}, nullptr);
  store->Flush();
  EXPECT_EQ(owner.DropDevices([](std::string_view d) { return d == "d2"; }), 2u);
  EXPECT_EQ(owner.cached(), 2u);
  EXPECT_EQ(owner.pending(), 2u);
  std::vector<std::string> due = owner.TakeDue(1000, 10);
  std::sort(due.begin(), due.end());
  EXPECT_EQ(due, (std::vector<std::string>{StateKey("r", "d1"), StateKey("r", "d3")}));
  EXPECT_EQ(Json(owner, **reader, "r", "d2"), R"({"restored":true})");
  EXPECT_EQ(Json(owner, **reader, "r", "d1"), R"({"dev":"d1"})");
  // A deleted row's record is empty (a tombstone).
  auto row = owner.Get("r", "d3", **reader);
  ASSERT_TRUE(row.ok());
  (*row)->state = {};
  std::string record = "x";
  owner.Put("r", "d3", nullptr, &record);
  EXPECT_EQ(record, "");
}

// Only rows due soon are kept in memory: the rest wait in the store's index and come in as time
// moves on, never before the writes that could have scheduled them are durable.
TEST(StateOwnerTest, RowsDueLaterThanTheHorizonComeInFromTheStoreAsTimeMovesOn) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  StateOwner owner(1 << 20, *store);
  owner.Cover(1000);
  owner.Schedule(StateKey("r", "soon"), 5000);
  owner.Schedule(StateKey("r", "later"), 50000);
  EXPECT_EQ(owner.pending(), 1u) << "50000 is beyond the horizon and its margin";
  store->WriteState("r", "later", RuleState{1, "{}", "", 0, 50000}, nullptr);
  store->WriteState("r", "theirs", RuleState{1, "{}", "", 0, 50000}, nullptr);
  store->Flush();
  auto mine = [](std::string_view device) { return device != "theirs"; };
  int64_t now = 0;
  size_t added = 0;
  while (owner.covered() <= 50000) {
    auto n = owner.Extend(now, **reader, mine);
    ASSERT_TRUE(n.ok()) << n.status().message();
    added += *n;
    EXPECT_LE(owner.covered(), now + 2 * StateOwner::kMarginMs);
    now += 1000;
  }
  EXPECT_EQ(added, 1u) << "its own row, once";
  EXPECT_EQ(owner.pending(), 2u);
  EXPECT_EQ(owner.TakeDue(60000, 10),
            (std::vector<std::string>{StateKey("r", "soon"), StateKey("r", "later")}));

  // A write still in flight holds the next extension back (it could be due in its stretch).
  std::promise<void> entered, release;
  auto released = release.get_future().share();
  store->After([&entered, released](const Status&) {
    entered.set_value();
    released.wait();
  });
  entered.get_future().wait();
  store->WriteState("r", "late-write", RuleState{1, "{}", "", 0, now + 25000}, nullptr);
  int64_t before = owner.covered();
  auto n = owner.Extend(before, **reader, mine);  // (moves: nothing was queued before the last)
  ASSERT_TRUE(n.ok());
  int64_t moved = owner.covered();
  EXPECT_GT(moved, before);
  n = owner.Extend(moved, **reader, mine);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(owner.covered(), moved) << "waits for the write queued before the last extension";
  release.set_value();
  store->Flush();
  size_t found = 0;
  for (int i = 0; i < 20; ++i) {
    auto more = owner.Extend(owner.covered(), **reader, mine);
    ASSERT_TRUE(more.ok());
    found += *more;
  }
  EXPECT_EQ(found, 1u) << "the write's row came in once durable";
}

TEST(StateOwnerTest, DamagedStoredTimersAreAnErrorNamingTheRow) {
  TempDir dir;
  auto store = OpenStore(dir.File("s.db"));
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  store->WriteState("r", "d1", RuleState{1, "{}", "[{\"nom\":1}]", 0, 5}, nullptr);
  store->Flush();
  StateOwner owner(1 << 20, *store);
  auto row = owner.Get("r", "d1", **reader);
  ASSERT_FALSE(row.ok());
  EXPECT_NE(row.status().message().find("the state of rule r for d1 in the store"),
            std::string::npos)
      << row.status().message();
}

}  // namespace
}  // namespace gnomon::engine

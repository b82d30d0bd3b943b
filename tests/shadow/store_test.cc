// SPDX-License-Identifier: Apache-2.0
#include "gnomon/shadow/store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "gnomon/shadow/document.h"
#include "tests/support/test_support.h"

namespace gnomon::shadow {
namespace {

using testing::TempDir;

std::unique_ptr<ShadowStore> OpenStore(const TempDir& dir) {
  auto s = ShadowStore::Open({.path = dir.File("shadows.db")});
  EXPECT_TRUE(s.ok()) << s.status().message();
  return std::move(s).value();
}

std::string Stored(int64_t temp, int64_t now = 100) {
  ShadowDocument d;
  auto r = d.Update(R"({"state":{"reported":{"temp":)" + std::to_string(temp) + "}}}", now);
  EXPECT_TRUE(std::holds_alternative<UpdateResult>(r));
  return d.StoredJson();
}

TEST(ShadowStoredFormTest, RoundTripsDocumentTombstoneAndIdempotencyKeys) {
  ShadowDocument d;
  const std::string req =
      R"({"state":{"desired":{"a":{"b":1}},"reported":{"a":{"b":2}}},"clientToken":"t1"})";
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(d.Update(req, 10, "key-1")));
  auto back = ShadowDocument::FromStored(d.StoredJson());
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->DocumentJson(), d.DocumentJson());
  EXPECT_EQ(back->Delta(), d.Delta());
  // The idempotency key survives: the same request replays the original response ...
  auto replay = back->Update(req, 20, "key-1");
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(replay));
  EXPECT_TRUE(std::get<UpdateResult>(replay).replayed);
  EXPECT_EQ(back->version(), 1);
  // ... while the client token alone never replays.
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(back->Update(req, 21)));
  EXPECT_EQ(back->version(), 2);

  // A deleted shadow keeps its version: the next update continues from it.
  ASSERT_TRUE(std::holds_alternative<std::string>(d.Delete("", 30)));
  auto tomb = ShadowDocument::FromStored(d.StoredJson());
  ASSERT_TRUE(tomb.ok());
  EXPECT_FALSE(tomb->exists());
  auto next = tomb->Update(R"({"state":{"reported":{"x":1}}})", 40);
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(next));
  EXPECT_EQ(tomb->version(), 2);
}

TEST(ShadowStoredFormTest, DocumentsRestoreTheirStateMetadataAndVersion) {
  ShadowDocument d;
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(
      d.Update(R"({"state":{"desired":{"a":{"b":1}},"reported":{"a":{"b":2},"c":[1,2]}}})", 10)));
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(
      d.Update(R"({"state":{"reported":{"c":null}}})", 11)));
  auto back = ShadowDocument::FromDocument(d.DocumentJson());
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->DocumentJson(), d.DocumentJson());
  EXPECT_EQ(back->version(), 2);
  EXPECT_EQ(back->Delta(), d.Delta());
  EXPECT_FALSE(ShadowDocument::FromDocument(R"({"state":{}})").ok());
  EXPECT_FALSE(ShadowDocument::FromDocument("nope").ok());
}

TEST(ShadowStoredFormTest, CorruptStoredFormIsAnError) {
  EXPECT_FALSE(ShadowDocument::FromStored("{not json").ok());
  EXPECT_FALSE(ShadowDocument::FromStored("[1]").ok());
  EXPECT_FALSE(ShadowDocument::FromStored(R"({"exists":1,"idempotency":[{"key":"x"}]})").ok());
  EXPECT_FALSE(ShadowDocument::FromStored(
                   R"({"exists":1,"idempotency":[{"key":1,"digest":"","response":"","at":1}]})")
                   .ok());
}

TEST(ShadowStoredFormTest, ClientTokensStoredByEarlierVersionsAreIgnored) {
  // Stored forms written while clientTokens deduplicated hold them as "tokens": read back,
  // they must not make a device's first update after a restart a replay.
  auto d = ShadowDocument::FromStored(
      R"({"exists":1,"version":1,"timestamp":10,"reported":{"fw":"0.9"},)"
      R"("meta_reported":{"fw":{"timestamp":10}},"tokens":[{"token":"dev-0",)"
      R"("request":"{\"state\":{\"reported\":{\"fw\":\"1.0\"}},\"clientToken\":\"dev-0\"}",)"
      R"("response":"{}","at":10}]})");
  ASSERT_TRUE(d.ok()) << d.status().message();
  auto r = d->Update(R"({"state":{"reported":{"fw":"1.0"}},"clientToken":"dev-0"})", 20);
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(r));
  EXPECT_FALSE(std::get<UpdateResult>(r).replayed);
  EXPECT_EQ(d->version(), 2);
  EXPECT_EQ(d->reported().Find("fw")->as_string(), "1.0");
}

TEST(ShadowStoreTest, WritesAreReadableAfterTheirCallbackAndAfterReopening) {
  TempDir dir;
  {
    auto store = OpenStore(dir);
    auto reader = store->NewReader();
    ASSERT_TRUE(reader.ok());
    std::atomic<int> ok{0};
    store->Write("dev-1", "", Stored(20), [&](const Status& s) { ok += s.ok(); });
    store->Write("dev-1", "cfg", Stored(21), [&](const Status& s) { ok += s.ok(); });
    store->Write("dev-2", "", Stored(22), [&](const Status& s) { ok += s.ok(); });
    store->Flush();
    EXPECT_EQ(ok.load(), 3);
    auto got = (*reader)->Load("dev-1", "cfg");
    ASSERT_TRUE(got.ok());
    ASSERT_TRUE(got->has_value());
    EXPECT_EQ(**got, Stored(21));
    auto missing = (*reader)->Load("dev-9", "");
    ASSERT_TRUE(missing.ok());
    EXPECT_FALSE(missing->has_value());
  }
  auto store = OpenStore(dir);
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  auto names = (*reader)->Names("dev-1");
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, (std::vector<std::string>{"", "cfg"}));
  auto things = (*reader)->Things("dev-", "", 10);
  ASSERT_TRUE(things.ok());
  EXPECT_EQ(*things, (std::vector<std::string>{"dev-1", "dev-2"}));
  auto page2 = (*reader)->Things("dev-", "dev-1", 10);
  ASSERT_TRUE(page2.ok());
  EXPECT_EQ(*page2, (std::vector<std::string>{"dev-2"}));
  EXPECT_TRUE((*reader)->Things("x", "", 10)->empty());
  // Every shadow as (thing, name), paged from the last one seen (a thing's named shadows may
  // span pages).
  using Keys = std::vector<std::pair<std::string, std::string>>;
  auto first = (*reader)->Shadows("", "", 2);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, (Keys{{"dev-1", ""}, {"dev-1", "cfg"}}));
  auto rest = (*reader)->Shadows("dev-1", "", 2);
  ASSERT_TRUE(rest.ok());
  EXPECT_EQ(*rest, (Keys{{"dev-1", "cfg"}, {"dev-2", ""}}));
  EXPECT_EQ(*(*reader)->Shadows("dev-1", "cfg", 10), (Keys{{"dev-2", ""}}));
  EXPECT_TRUE((*reader)->Shadows("dev-2", "", 10)->empty());
}

TEST(ShadowStoreTest, DeletedShadowsKeepTheirTombstoneButAreNotListed) {
  TempDir dir;
  auto store = OpenStore(dir);
  ShadowDocument d;
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(d.Update(R"({"state":{"reported":{"a":1}}})", 1)));
  ASSERT_TRUE(std::holds_alternative<std::string>(d.Delete("", 2)));
  store->Write("gone", "", d.StoredJson(), nullptr);
  store->Flush();
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE((*reader)->Things("", "", 10)->empty());
  EXPECT_TRUE((*reader)->Names("gone")->empty());
  EXPECT_TRUE((*reader)->Shadows("", "", 10)->empty());
  auto loaded = (*reader)->Load("gone", "");
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  auto doc = ShadowDocument::FromStored(**loaded);
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(doc->version(), 1);
  EXPECT_FALSE(doc->exists());
}

TEST(ShadowStoreTest, CallbacksRunInQueueOrderAndTheLastWriteOfAShadowWins) {
  TempDir dir;
  auto store = OpenStore(dir);
  std::vector<int> order;
  std::mutex mu;
  for (int i = 0; i < 5000; ++i) {
    store->Write("d" + std::to_string(i % 7), "", Stored(i), [&, i](const Status& s) {
      ASSERT_TRUE(s.ok()) << s.message();
      std::lock_guard lock(mu);
      order.push_back(i);
    });
  }
  store->Flush();
  ASSERT_EQ(order.size(), 5000u);
  for (int i = 0; i < 5000; ++i) {
    ASSERT_EQ(order[static_cast<size_t>(i)], i);
  }
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  for (int d = 0; d < 7; ++d) {
    int last = 4999 - ((4999 - d) % 7);
    EXPECT_EQ(**(*reader)->Load("d" + std::to_string(d), ""), Stored(last)) << d;
  }
  StoreStats st = store->stats();
  EXPECT_EQ(st.writes, 5000u);
  EXPECT_LE(st.rows, st.writes);
  EXPECT_GE(st.transactions, 1u);
}

// A child process writes and reports each write whose callback said durable; the parent kills
// it with SIGKILL mid-stream. Every write reported durable must be in the store afterwards.
TEST(ShadowStoreTest, EveryAcknowledgedWriteSurvivesKill9) {
  TempDir dir;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    auto store = ShadowStore::Open({.path = dir.File("shadows.db")});
    if (!store.ok()) {
      _exit(3);
    }
    for (int i = 0;; ++i) {
      std::string thing = "dev-" + std::to_string(i % 100);
      (*store)->Write(thing, "", Stored(i), [fd = fds[1], i](const Status& s) {
        if (s.ok()) {
          int32_t v = i;
          (void)!write(fd, &v, sizeof v);
        }
      });
      if (i % 64 == 0) {
        usleep(200);
      }
    }
  }
  close(fds[1]);
  int32_t acked = -1;
  int32_t v;
  while (acked < 3000 && read(fds[0], &v, sizeof v) == sizeof v) {
    acked = v;
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  while (read(fds[0], &v, sizeof v) == sizeof v) {
    acked = v;  // acknowledged before the kill but not yet read
  }
  close(fds[0]);
  ASSERT_GE(acked, 3000);

  auto store = OpenStore(dir);
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  // For each device, its last acknowledged write (or a later one) is there.
  for (int d = 0; d < 100; ++d) {
    int last_acked = acked - ((acked - d) % 100 + 100) % 100;
    auto got = (*reader)->Load("dev-" + std::to_string(d), "");
    ASSERT_TRUE(got.ok() && got->has_value()) << d;
    auto doc = ShadowDocument::FromStored(**got);
    ASSERT_TRUE(doc.ok());
    const Value* temp = doc->reported().Find("temp");
    ASSERT_NE(temp, nullptr);
    EXPECT_GE(temp->as_int(), last_acked) << "device " << d;
  }
}

// Writes of a shadow made on top of one the store refused carry its changes: they are refused
// too, even once the disk has room again, until a write of a newer epoch (the owner read the
// shadow again). Other shadows are not affected.
TEST(ShadowStoreTest, WritesMadeOnTopOfARefusedOneAreRefusedUntilANewerEpoch) {
  if (::geteuid() != 0) {
    GNOMON_REQUIRE_SERVER(false, "mounting a small tmpfs needs root");
  }
  TempDir dir;
  testing::SmallDisk disk(dir.File("db"), "8m");
  GNOMON_REQUIRE_SERVER(disk.mounted(), "mount -t tmpfs failed: " + disk.why());
  auto s = ShadowStore::Open({.path = dir.File("db/shadows.db"), .history_log_bytes = 1 << 20});
  ASSERT_TRUE(s.ok()) << s.status().message();
  auto& store = **s;
  auto write = [&](const std::string& thing, int64_t temp, uint64_t epoch) {
    auto st = std::make_shared<Status>();
    store.Write(thing, "", Stored(temp), [st](const Status& r) { *st = r; }, epoch,
                ShadowChange{temp, 0, "[" + std::to_string(temp) + "]"});
    store.Flush();
    return *st;
  };
  ASSERT_TRUE(write("a", 1, 0).ok());
  ASSERT_TRUE(write("b", 1, 0).ok());
  disk.Fill();
  Status refused = write("a", 2, 0);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.code(), StatusCode::kFailedPrecondition) << refused.message();
  disk.Free();
  Status stale = write("a", 3, 0);  // made on top of temp 2, which was never stored
  EXPECT_EQ(stale.code(), StatusCode::kFailedPrecondition) << stale.message();
  EXPECT_TRUE(write("b", 3, 0).ok()) << "another shadow";
  auto reader = store.NewReader();
  ASSERT_TRUE(reader.ok());
  auto loaded = (*reader)->Load("a", "");
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_NE((*loaded)->find(R"("temp":1)"), std::string::npos) << **loaded;
  EXPECT_TRUE(write("a", 4, 1).ok()) << "a newer epoch";
  EXPECT_TRUE(write("a", 5, 1).ok());
  loaded = (*reader)->Load("a", "");
  EXPECT_NE((*loaded)->find(R"("temp":5)"), std::string::npos) << **loaded;
  EXPECT_EQ(store.stats().stale, 1u);
  // Only the stored writes' changes are in the history log.
  std::string logged;
  ASSERT_TRUE((*reader)->Changes([&](std::string_view thing, std::string_view, ShadowChange c) {
    logged += std::string(thing) + c.ops;
  }).ok());
  EXPECT_EQ(logged, "a[1]b[1]b[3]a[4]a[5]");
}

TEST(ShadowStoreTest, RuleStateWritesMadeOnTopOfARefusedOneAreRefusedUntilANewerEpoch) {
  if (::geteuid() != 0) {
    GNOMON_REQUIRE_SERVER(false, "mounting a small tmpfs needs root");
  }
  TempDir dir;
  testing::SmallDisk disk(dir.File("db"), "8m");
  GNOMON_REQUIRE_SERVER(disk.mounted(), "mount -t tmpfs failed: " + disk.why());
  auto s = ShadowStore::Open({.path = dir.File("db/shadows.db")});
  ASSERT_TRUE(s.ok()) << s.status().message();
  auto& store = **s;
  auto write = [&](const std::string& device, int n, uint64_t epoch) {
    auto st = std::make_shared<Status>();
    store.WriteState(
        "r", device, {1, "{\"n\":" + std::to_string(n) + "}"}, [st](const Status& r) { *st = r; },
        epoch);
    store.Flush();
    return *st;
  };
  ASSERT_TRUE(write("a", 1, 0).ok());
  disk.Fill();
  Status refused = write("a", 2, 0);
  ASSERT_FALSE(refused.ok());
  disk.Free();
  Status stale = write("a", 3, 0);
  EXPECT_EQ(stale.code(), StatusCode::kFailedPrecondition) << stale.message();
  EXPECT_NE(stale.message().find("rule state"), std::string::npos) << stale.message();
  EXPECT_TRUE(write("b", 1, 0).ok()) << "another device";
  EXPECT_TRUE(write("a", 4, 1).ok()) << "a newer epoch";
  auto reader = store.NewReader();
  ASSERT_TRUE(reader.ok());
  auto loaded = (*reader)->LoadState("r", "a");
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->json, R"({"n":4})");
}

// Rule state (ctx.state) rides the shadows' queue: same order, same transactions, the last
// write of a (rule, device) in a batch wins, an empty state deletes the row, and a shadow with
// the device's name is a different thing.
TEST(ShadowStoreTest, RuleStatesAreStoredPerRuleAndDeviceAndSurviveReopening) {
  TempDir dir;
  std::vector<std::string> order;
  {
    auto store = OpenStore(dir);
    auto note = [&order](std::string what) {
      return [&order, what](const Status& st) { order.push_back(what + (st.ok() ? "" : "!")); };
    };
    store->WriteState("counter", "d1", {1, R"({"n":1})"}, note("s1"));
    store->Write("d1", "", Stored(20), note("shadow"));
    store->WriteState("counter", "d1", {2, R"({"n":2})"}, note("s2"));
    store->WriteState("counter", "d2", {1, R"({"n":7})"}, note("s3"));
    store->WriteState("other", "d1", {1, R"([1,2])"}, note("s4"));
    store->WriteState("gone", "d1", {1, R"({"x":1})"}, note("s5"));
    store->Flush();
    store->WriteState("gone", "d1", {1, ""}, note("s6"));
    store->Flush();
    EXPECT_EQ(order, (std::vector<std::string>{"s1", "shadow", "s2", "s3", "s4", "s5", "s6"}));
  }
  auto store = OpenStore(dir);
  auto reader = store->NewReader();
  ASSERT_TRUE(reader.ok());
  auto d1 = (*reader)->LoadState("counter", "d1");
  ASSERT_TRUE(d1.ok() && d1->has_value());
  EXPECT_EQ((*d1)->version, 2);
  EXPECT_EQ((*d1)->json, R"({"n":2})");
  auto d2 = (*reader)->LoadState("counter", "d2");
  ASSERT_TRUE(d2.ok() && d2->has_value());
  EXPECT_EQ((*d2)->json, R"({"n":7})");
  auto none = (*reader)->LoadState("counter", "d3");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto deleted = (*reader)->LoadState("gone", "d1");
  ASSERT_TRUE(deleted.ok());
  EXPECT_FALSE(deleted->has_value());
  auto all = (*reader)->StatesOf("d1");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].first, "counter");
  EXPECT_EQ((*all)[1].first, "other");
  EXPECT_EQ((*all)[1].second.json, "[1,2]");
  auto shadow = (*reader)->Load("d1", "");
  ASSERT_TRUE(shadow.ok() && shadow->has_value()) << "the shadow of d1 is its own row";
  EXPECT_NE((*shadow)->find(R"("temp":20)"), std::string::npos);
  std::set<std::string> rows;
  ASSERT_TRUE(
      (*reader)
          ->StateRows([&](std::string_view device, std::string_view rule, std::string_view) {
            rows.insert(std::string(device) + ":" + std::string(rule));
          })
          .ok());
  EXPECT_EQ(rows, (std::set<std::string>{"d1:counter", "d1:other", "d2:counter"}));
}

// How a rule row travels in a cluster's change log: every field as stored (the windows' bytes
// too), and a record that is not such a row refused with what is wrong.
TEST(RuleStateChangelogTest, ARowRoundTripsAndAnythingElseIsRefused) {
  std::string windows("w2\0\x01\xff\x80 binary", 13);
  RuleState row{3,
                R"({"n":2,"s":"x\"y","f":1.5,"a":[1,{"b":null}]})",
                R"([{"name":"idle","due":1700000000123,"data":{"k":1}}])",
                1700000000999,
                1700000000123,
                windows,
                1700000000500};
  std::string record = row.ChangelogJson("count/key");
  auto back = RuleState::FromChangelog(record);
  ASSERT_TRUE(back.ok()) << back.status().message() << "\n" << record;
  EXPECT_EQ(back->version, 3);
  EXPECT_EQ(back->json, row.json);
  EXPECT_EQ(back->timers, row.timers);
  EXPECT_EQ(back->inactive_due, row.inactive_due);
  EXPECT_EQ(back->next_due, row.next_due);
  EXPECT_EQ(back->windows, windows);
  EXPECT_EQ(back->window_due, row.window_due);
  // A row with timers only: "{}" state; none: no timers.
  auto bare = RuleState::FromChangelog(RuleState{1, "", "", 0, 0, "", 0}.ChangelogJson("r"));
  ASSERT_TRUE(bare.ok()) << bare.status().message();
  EXPECT_EQ(bare->json, "{}");
  EXPECT_EQ(bare->timers, "");
  EXPECT_EQ(bare->windows, "");

  for (
      const char* bad : {
          "{not json",
          "[]",
          R"({"version":1,"state":{},"timers":[],"inactive_due":0,"next_due":0,"window_due":0})",
          R"({"version":-1,"state":{},"timers":[],"inactive_due":0,"next_due":0,"window_due":0,"windows":""})",
          R"({"version":1,"state":[1],"timers":[],"inactive_due":0,"next_due":0,"window_due":0,"windows":""})",
          R"({"version":1,"state":{},"timers":[{"name":"t"}],"inactive_due":0,"next_due":0,"window_due":0,"windows":""})",
          R"({"version":1,"state":{},"timers":[],"inactive_due":0,"next_due":0,"window_due":0,"windows":"!!"})",
      }) {
    EXPECT_FALSE(RuleState::FromChangelog(bad).ok()) << bad;
  }
  auto named = RuleState::FromChangelog(R"({"version":1,"state":{},"timers":{}})");
  ASSERT_FALSE(named.ok());
  EXPECT_NE(named.status().message().find("inactive_due"), std::string::npos)
      << named.status().message();

  EXPECT_EQ(StateChangelogKey("dev-1", "count/key"), "dev-1/$state/count/key");
  auto key = ParseStateChangelogKey("dev-1/$state/count/key");
  ASSERT_TRUE(key.has_value());
  EXPECT_EQ(key->first, "dev-1");
  EXPECT_EQ(key->second, "count/key");
  EXPECT_FALSE(ParseStateChangelogKey("dev-1/main").has_value());
  EXPECT_FALSE(ParseStateChangelogKey("dev-1").has_value());
}

// Every change goes to the log with its write (coalesced writes too), in order; the oldest
// leave once the newer ones hold the budget.
TEST(ShadowStoreTest, TheHistoryLogKeepsEveryChangeWithinItsBudget) {
  TempDir dir;
  const std::string ops = "[" + std::string(198, ' ') + "]";
  const size_t each = ShadowChange::Bytes("t", "", ops);
  auto open = [&](size_t budget) {
    auto s = ShadowStore::Open(
        {.path = dir.File("shadows.db"), .sync_full = false, .history_log_bytes = budget});
    EXPECT_TRUE(s.ok()) << s.status().message();
    return std::move(s).value();
  };
  auto versions = [&](ShadowStore& store) {
    std::vector<int64_t> out;
    auto reader = store.NewReader();
    EXPECT_TRUE(reader.ok());
    EXPECT_TRUE((*reader)->Changes([&](std::string_view thing, std::string_view name,
                                       ShadowChange c) {
      EXPECT_EQ(thing, "t");
      EXPECT_EQ(name, "");
      EXPECT_EQ(c.timestamp, c.version * 10);
      EXPECT_EQ(c.ops, ops);
      out.push_back(c.version);
    }).ok());
    return out;
  };
  auto store = open(30 * each);
  for (int64_t v = 1; v <= 3; ++v) {  // queued together: one row, three changes
    store->Write("t", "", Stored(v), nullptr, 0, ShadowChange{v, v * 10, ops});
  }
  store->Write("t", "", Stored(3), nullptr);  // a write without a change (presence, say)
  store->Flush();
  EXPECT_EQ(versions(*store), (std::vector<int64_t>{1, 2, 3}));
  for (int64_t v = 4; v <= 300; ++v) {  // a transaction each
    store->Write("t", "", Stored(v), nullptr, 0, ShadowChange{v, v * 10, ops});
    store->Flush();
  }
  EXPECT_EQ(store->stats().changes, 300u);
  size_t kept = versions(*store).size();
  EXPECT_LT(kept, 300u) << "the oldest are deleted as it goes";
  EXPECT_GE(kept, 30u);
  store.reset();
  store = open(30 * each);  // reopened: exactly the newest that hold the budget
  std::vector<int64_t> newest;
  for (int64_t v = 271; v <= 300; ++v) {
    newest.push_back(v);
  }
  EXPECT_EQ(versions(*store), newest);
  store.reset();
  store = open(0);  // none kept
  EXPECT_TRUE(versions(*store).empty());
  store->Write("t", "", Stored(1), nullptr, 0, ShadowChange{301, 3010, ops});
  store->Flush();
  EXPECT_TRUE(versions(*store).empty());
}

}  // namespace
}  // namespace gnomon::shadow

namespace gnomon::shadow {
namespace {

std::string Patch(ShadowDocument& d, const std::string& request, int64_t now = 100) {
  auto r = d.Update(request, now);
  EXPECT_TRUE(std::holds_alternative<UpdateResult>(r)) << request;
  return std::holds_alternative<UpdateResult>(r) ? std::get<UpdateResult>(r).patch : "";
}

TEST(ShadowPatchTest, EachUpdateDescribesItsChangeAsJsonPatch) {
  ShadowDocument d;
  EXPECT_EQ(Patch(d, R"({"state":{"reported":{"a":1,"o":{"x":1}}}})"),
            R"([{"op":"add","path":"/state","value":{}},)"
            R"({"op":"add","path":"/state/reported","value":{"a":1,"o":{"x":1}}}])");
  EXPECT_EQ(Patch(d, R"({"state":{"reported":{"a":2,"o":{"y":2},"a/b~":true}}})"),
            R"([{"op":"replace","path":"/state/reported/a","value":2},)"
            R"({"op":"add","path":"/state/reported/o/y","value":2},)"
            R"({"op":"add","path":"/state/reported/a~1b~0","value":true}])");
  EXPECT_EQ(Patch(d, R"({"state":{"reported":{"o":null},"desired":{"a":3}}})"),
            R"([{"op":"add","path":"/state/desired","value":{"a":3}},)"
            R"({"op":"remove","path":"/state/reported/o"}])");
  EXPECT_EQ(Patch(d, R"({"state":{"desired":null}})"), R"([{"op":"remove","path":"/state/desired"}])");
  // Identical values still make a version (AWS behaviour) with no operations.
  EXPECT_EQ(Patch(d, R"({"state":{"reported":{"a":2.0}}})"), "[]");
}

}  // namespace
}  // namespace gnomon::shadow

namespace gnomon::shadow {
namespace {

// Writers back-pressure on the disk: WaitPendingAtMost returns once the writer has committed
// down to the limit, and the high-water mark of pending writes is kept.
TEST(ShadowStoreTest, WritersCanWaitForPendingWritesToDrain) {
  testing::TempDir dir;
  auto store = OpenStore(dir);
  ASSERT_NE(store, nullptr);
  std::atomic<int> done{0};
  for (int i = 0; i < 5000; ++i) {
    store->Write("t" + std::to_string(i % 100), "", "{\"state\":{}}", [&](const Status&) { ++done; });
  }
  EXPECT_TRUE(store->WaitPendingAtMost(10, std::chrono::seconds(30)));
  EXPECT_GE(done.load(), 4990);
  EXPECT_GE(store->stats().max_pending, 10u);
  EXPECT_LE(store->stats().max_pending, 5000u);
  store->Flush();
  EXPECT_TRUE(store->WaitPendingAtMost(0, std::chrono::milliseconds(0)));
  EXPECT_EQ(done.load(), 5000);
}

}  // namespace
}  // namespace gnomon::shadow

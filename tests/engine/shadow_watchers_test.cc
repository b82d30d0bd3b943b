// SPDX-License-Identifier: Apache-2.0
#include "shadow_watchers.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace gnomon::engine {
namespace {

using std::chrono::milliseconds;

TEST(ShadowWatchersTest, StreamsTheFirstFrameThenTheWatchedShadowsEventsInOrderUntilClosed) {
  ShadowWatchers watchers;
  auto w = watchers.Add("dev-1");
  ASSERT_NE(w, nullptr);
  std::vector<std::string> written;
  std::thread stream([&] {
    watchers.Stream(
        "dev-1", w, ShadowWatchers::Frame("document", "{}"),
        [&](std::string_view f) {
          written.emplace_back(f);
          return true;
        },
        milliseconds(60000));
  });
  watchers.Notify("dev-1", "update", R"({"v":1})");
  watchers.Notify("dev-2", "update", R"({"other":1})");  // another shadow: not this stream's
  watchers.Notify("dev-1", "delete", R"({"v":2})");
  watchers.Close();
  stream.join();
  ASSERT_EQ(written.size(), 3u);
  EXPECT_EQ(written[0], "event: document\ndata: {}\n\n");
  EXPECT_EQ(written[1], "event: update\ndata: {\"v\":1}\n\n");
  EXPECT_EQ(written[2], "event: delete\ndata: {\"v\":2}\n\n");
  EXPECT_EQ(watchers.size(), 0u);
  EXPECT_EQ(watchers.Add("dev-1"), nullptr);  // closed: no new streams
}

TEST(ShadowWatchersTest, AWatcherThatFallsBehindGetsResyncAndItsStreamEnds) {
  ShadowWatchers watchers;
  auto w = watchers.Add("dev-1");
  for (size_t i = 0; i < ShadowWatchers::kMaxPendingEvents + 5; ++i) {
    watchers.Notify("dev-1", "update", std::to_string(i));
  }
  std::vector<std::string> written;
  watchers.Stream(
      "dev-1", w, "first",
      [&](std::string_view f) {
        written.emplace_back(f);
        return true;
      },
      milliseconds(60000));  // returns by itself: the watcher is closed
  ASSERT_EQ(written.size(), 1 + ShadowWatchers::kMaxPendingEvents + 1);
  EXPECT_EQ(written[1], "event: update\ndata: 0\n\n");
  EXPECT_EQ(written.back(), "event: resync\ndata: {\"reason\":\"the watcher fell behind\"}\n\n");
  EXPECT_EQ(watchers.size(), 0u);
}

TEST(ShadowWatchersTest, AtMostMaxWatchersAndAStreamWhoseClientLeftFreesItsPlace) {
  ShadowWatchers watchers;
  std::vector<std::shared_ptr<ShadowWatchers::Watcher>> open;
  for (size_t i = 0; i < ShadowWatchers::kMaxWatchers; ++i) {
    open.push_back(watchers.Add("dev-" + std::to_string(i)));
    ASSERT_NE(open.back(), nullptr);
  }
  EXPECT_EQ(watchers.Add("one-more"), nullptr);
  // The client of dev-0 went away: its first keep-alive fails and the stream ends.
  int writes = 0;
  watchers.Stream(
      "dev-0", open[0], "first",
      [&](std::string_view f) {
        ++writes;
        return f == "first";
      },
      milliseconds(5));
  EXPECT_EQ(writes, 2);  // the first frame, then the keep-alive that failed
  EXPECT_EQ(watchers.size(), ShadowWatchers::kMaxWatchers - 1);
  EXPECT_NE(watchers.Add("one-more"), nullptr);
}

}  // namespace
}  // namespace gnomon::engine

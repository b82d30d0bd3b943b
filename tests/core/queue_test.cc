// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/test_support.h"

namespace gnomon {
namespace {

TEST(BoundedQueueTest, PushBlocksWhenFullUntilPopped) {
  BoundedQueue<int> q(2);
  ASSERT_TRUE(q.Push(1));
  ASSERT_TRUE(q.Push(2));
  std::atomic<bool> pushed{false};
  std::thread t([&] {
    q.Push(3);
    pushed = true;
  });
  // Still blocked: the queue holds its capacity and nothing was dropped.
  EXPECT_FALSE(testing::WaitFor([&] { return pushed.load(); }, std::chrono::milliseconds(100)));
  EXPECT_EQ(q.size(), 2u);
  std::vector<int> out;
  ASSERT_TRUE(q.PopBatch(out, 1));
  EXPECT_TRUE(testing::WaitFor([&] { return pushed.load(); }));
  t.join();
  ASSERT_TRUE(q.PopBatch(out, 10));
  EXPECT_EQ(out, (std::vector<int>{1, 2, 3}));
}

// PushMany takes what fits, waits for the consumer to make room for the rest, and keeps order.
TEST(BoundedQueueTest, PushManyFillsWaitsForRoomAndKeepsOrder) {
  BoundedQueue<int> q(3);
  ASSERT_TRUE(q.Push(0));
  std::vector<int> items{1, 2, 3, 4, 5};
  std::atomic<size_t> pushed{0};
  std::thread t([&] { pushed = q.PushMany(items); });
  // Two fit; the rest wait: nothing is dropped and the queue holds no more than its capacity.
  EXPECT_FALSE(
      testing::WaitFor([&] { return pushed.load() != 0; }, std::chrono::milliseconds(100)));
  EXPECT_EQ(q.size(), 3u);
  std::vector<int> out;
  while (out.size() < 6) {
    ASSERT_TRUE(q.PopBatch(out, 2));
  }
  t.join();
  EXPECT_EQ(pushed.load(), 5u);
  EXPECT_EQ(out, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(q.size(), 0u);
}

// Closed while it waits for room: it reports how many it pushed and leaves the rest untouched.
TEST(BoundedQueueTest, PushManyStopsWhenClosed) {
  BoundedQueue<std::string> q(2);
  std::vector<std::string> items{"a", "b", "c", "d"};
  std::atomic<size_t> pushed{99};
  std::thread t([&] { pushed = q.PushMany(items); });
  ASSERT_TRUE(testing::WaitFor([&] { return q.size() == 2; }));
  q.Close();
  t.join();
  EXPECT_EQ(pushed.load(), 2u);
  EXPECT_EQ(items[2], "c");  // not moved from
  EXPECT_EQ(items[3], "d");
  std::vector<std::string> out;
  EXPECT_TRUE(q.PopBatch(out, 10));
  EXPECT_EQ(out, (std::vector<std::string>{"a", "b"}));
  std::vector<std::string> none;
  EXPECT_EQ(q.PushMany(none), 0u);
}

// TryPopBatch takes what is there without waiting, and makes room for a blocked pusher.
TEST(BoundedQueueTest, TryPopBatchTakesWithoutWaitingAndMakesRoom) {
  BoundedQueue<int> q(2);
  std::vector<int> out;
  EXPECT_FALSE(q.TryPopBatch(out, 8));  // empty: answers at once
  ASSERT_TRUE(q.Push(1));
  ASSERT_TRUE(q.Push(2));
  std::atomic<bool> pushed{false};
  std::thread t([&] {
    q.Push(3);
    pushed = true;
  });
  ASSERT_TRUE(q.TryPopBatch(out, 1));
  EXPECT_EQ(out, std::vector<int>({1}));
  EXPECT_TRUE(testing::WaitFor([&] { return pushed.load(); }));
  t.join();
  ASSERT_TRUE(q.TryPopBatch(out, 8));
  EXPECT_EQ(out, std::vector<int>({1, 2, 3}));
  q.Close();
  EXPECT_FALSE(q.TryPopBatch(out, 8));
}

TEST(BoundedQueueTest, CloseDrainsThenEnds) {
  BoundedQueue<int> q(4);
  q.Push(1);
  q.Close();
  EXPECT_FALSE(q.Push(2));
  std::vector<int> out;
  EXPECT_TRUE(q.PopBatch(out, 10));
  EXPECT_FALSE(q.PopBatch(out, 10));
  EXPECT_EQ(out, (std::vector<int>{1}));
}

TEST(BoundedQueueTest, CloseWakesBlockedPusher) {
  BoundedQueue<int> q(1);
  q.Push(1);
  std::atomic<int> result{-1};
  std::thread t([&] { result = q.Push(2) ? 1 : 0; });
  q.Close();
  t.join();
  EXPECT_EQ(result.load(), 0);
}

// A consumer that never drains the queue (it takes less than is queued every time) still gets
// every item once, in order, and the storage stays within about twice what is queued.
TEST(BoundedQueueTest, PartialBatchesKeepOrderWhenTheQueueNeverDrains) {
  BoundedQueue<std::string> q(64);
  int next_in = 0;
  int next_out = 0;
  std::vector<std::string> out;
  for (int round = 0; round < 1000; ++round) {
    while (q.size() < q.capacity()) {
      ASSERT_TRUE(q.Push(std::to_string(next_in++)));
    }
    out.clear();
    ASSERT_TRUE(q.PopBatch(out, 1 + round % 7));
    for (const std::string& s : out) {
      ASSERT_EQ(s, std::to_string(next_out++));
    }
  }
  while (q.size() < q.capacity()) {
    ASSERT_TRUE(q.Push(std::to_string(next_in++)));
  }
  ASSERT_TRUE(q.PushForce("forced"));  // over capacity
  out.clear();
  ASSERT_TRUE(q.PopBatch(out, 1000));
  ASSERT_EQ(out.size(), 65u);
  EXPECT_EQ(out.front(), std::to_string(next_out));
  EXPECT_EQ(out.back(), "forced");
  EXPECT_EQ(q.size(), 0u);
}

}  // namespace
}  // namespace gnomon

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

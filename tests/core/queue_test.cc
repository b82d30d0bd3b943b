// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

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

}  // namespace
}  // namespace gnomon

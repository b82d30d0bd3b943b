// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/backoff.h"

#include <gtest/gtest.h>

namespace gnomon {
namespace {

TEST(BackoffTest, DoublesFromInitialAndCaps) {
  // jitter 0.5 → exactly the nominal delay.
  EXPECT_EQ(BackoffDelayMs(0, 1000, 30000, 0.5), 1000);
  EXPECT_EQ(BackoffDelayMs(1, 1000, 30000, 0.5), 2000);
  EXPECT_EQ(BackoffDelayMs(2, 1000, 30000, 0.5), 4000);
  EXPECT_EQ(BackoffDelayMs(4, 1000, 30000, 0.5), 16000);
  EXPECT_EQ(BackoffDelayMs(5, 1000, 30000, 0.5), 30000);
  EXPECT_EQ(BackoffDelayMs(50, 1000, 30000, 0.5), 30000);
}

TEST(BackoffTest, JitterSpreadsWithinTwentyPercentAndNeverExceedsCap) {
  EXPECT_EQ(BackoffDelayMs(1, 1000, 30000, 0.0), 1600);
  EXPECT_EQ(BackoffDelayMs(1, 1000, 30000, 0.999999), 2399);
  EXPECT_LE(BackoffDelayMs(10, 1000, 30000, 0.999999), 30000);
}

TEST(BackoffTest, ResetStartsOver) {
  Backoff b(100, 1000);
  b.NextDelayMs();
  b.NextDelayMs();
  EXPECT_EQ(b.attempt(), 2);
  b.Reset();
  int64_t d = b.NextDelayMs();
  EXPECT_GE(d, 80);
  EXPECT_LE(d, 120);
}

}  // namespace
}  // namespace gnomon

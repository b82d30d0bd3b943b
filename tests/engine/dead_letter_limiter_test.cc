// SPDX-License-Identifier: Apache-2.0
#include "dead_letter_limiter.h"

#include <gtest/gtest.h>

#include <string>

namespace gnomon::engine {
namespace {

TEST(DeadLetterLimiterTest, ABurstPerDeviceThenItsRateAndRefusalsAreCountedByReason) {
  MetricsRegistry metrics;
  DeadLetterLimiter limiter(2, 3, metrics);  // 2 per second, bursts of 3
  int64_t t = 1'000'000;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(limiter.Allow("noisy", "invalid_json", t)) << i;
  }
  EXPECT_FALSE(limiter.Allow("noisy", "invalid_json", t));
  EXPECT_FALSE(limiter.Allow("noisy", "oversize", t));
  EXPECT_TRUE(limiter.Allow("quiet", "invalid_json", t));  // another device has its own bucket
  EXPECT_TRUE(limiter.Allow("noisy", "invalid_json", t + 500));  // one token back per 500 ms
  EXPECT_FALSE(limiter.Allow("noisy", "invalid_json", t + 500));
  EXPECT_TRUE(limiter.Allow("noisy", "invalid_json", t + 60'000));  // refilled, up to the burst
  std::string text = metrics.Render();
  EXPECT_NE(text.find("gnomon_dead_letters_suppressed_total{reason=\"invalid_json\"} 2\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("gnomon_dead_letters_suppressed_total{reason=\"oversize\"} 1\n"),
            std::string::npos)
      << text;
}

TEST(DeadLetterLimiterTest, NoRateIsNoLimit) {
  MetricsRegistry metrics;
  DeadLetterLimiter limiter(0, 1, metrics);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(limiter.Allow("noisy", "invalid_json", 0));
  }
  EXPECT_EQ(limiter.devices(), 0u);
}

TEST(DeadLetterLimiterTest, BucketsAreBoundedAndStartOverFullPastTheBound) {
  MetricsRegistry metrics;
  DeadLetterLimiter limiter(1, 1, metrics);
  EXPECT_TRUE(limiter.Allow("first", "r", 0));
  EXPECT_FALSE(limiter.Allow("first", "r", 0));
  for (size_t i = 1; i < DeadLetterLimiter::kMaxDevices; ++i) {
    limiter.Allow("dev-" + std::to_string(i), "r", 0);
  }
  EXPECT_EQ(limiter.devices(), DeadLetterLimiter::kMaxDevices);
  EXPECT_TRUE(limiter.Allow("one-more", "r", 0));  // the buckets were dropped, then this one added
  EXPECT_EQ(limiter.devices(), 1u);
  EXPECT_TRUE(limiter.Allow("first", "r", 0));  // a full bucket again
}

}  // namespace
}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include "engine/src/breaker.h"

#include <gtest/gtest.h>

namespace gnomon::engine {
namespace {

using V = Breaker::Verdict;

TEST(BreakerTest, OpensPastTheLimitWithinTheWindowAndProbesAfterTheCooldown) {
  Breaker b;
  Breaker::Options o{3, 1000, 5000};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(b.Allow(100), V::kRun);
    EXPECT_FALSE(b.RecordFailure(o, 100 + i, false));
  }
  EXPECT_TRUE(b.RecordFailure(o, 200, false));  // the 4th within the window opens it
  EXPECT_TRUE(b.open());
  EXPECT_EQ(b.Allow(300), V::kRefuse);
  EXPECT_EQ(b.Allow(5199), V::kRefuse);
  // Half-open: one probe at a time.
  EXPECT_EQ(b.Allow(5200), V::kProbe);
  EXPECT_EQ(b.Allow(5201), V::kRefuse);
  // The probe fails: open for another cool-down.
  EXPECT_FALSE(b.RecordFailure(o, 5300, true));
  EXPECT_EQ(b.Allow(10299), V::kRefuse);
  EXPECT_EQ(b.Allow(10300), V::kProbe);
  // The probe succeeds: closed, and the count starts again.
  EXPECT_TRUE(b.RecordSuccess(true));
  EXPECT_FALSE(b.open());
  EXPECT_EQ(b.Allow(10301), V::kRun);
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(b.RecordFailure(o, 10400, false));
  }
  EXPECT_TRUE(b.RecordFailure(o, 10400, false));
}

TEST(BreakerTest, FailuresOutsideTheWindowDoNotAddUp) {
  Breaker b;
  Breaker::Options o{2, 1000, 5000};
  for (int64_t t = 0; t < 20000; t += 600) {  // one failure every 0.6 s: never 3 in 1 s
    EXPECT_FALSE(b.RecordFailure(o, t, false)) << t;
  }
  EXPECT_FALSE(b.open());
}

TEST(BreakerTest, AReleasedProbeLetsTheNextCallProbe) {
  Breaker b;
  Breaker::Options o{0, 1000, 100};
  EXPECT_TRUE(b.RecordFailure(o, 0, false));
  EXPECT_EQ(b.Allow(100), V::kProbe);
  b.ReleaseProbe();
  EXPECT_EQ(b.Allow(101), V::kProbe);
}

}  // namespace
}  // namespace gnomon::engine

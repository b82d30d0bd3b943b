// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/metrics.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace gnomon {
namespace {

TEST(MetricsTest, RendersCountersGaugesHistograms) {
  MetricsRegistry m;
  m.GetCounter("gnomon_x_total", "X things", {{"sink", "a\"b"}})->Inc(3);
  m.GetGauge("gnomon_depth", "Depth")->Set(-2);
  Histogram* h = m.GetHistogram("gnomon_d_seconds", "D", {{"rule", "r"}}, {0.1, 1});
  h->Observe(0.05);
  h->Observe(0.5);
  h->Observe(5);
  std::string text = m.Render();
  EXPECT_NE(text.find("# TYPE gnomon_x_total counter\ngnomon_x_total{sink=\"a\\\"b\"} 3\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("gnomon_depth -2\n"), std::string::npos);
  EXPECT_NE(text.find("gnomon_d_seconds_bucket{rule=\"r\",le=\"0.1\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("gnomon_d_seconds_bucket{rule=\"r\",le=\"1\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("gnomon_d_seconds_bucket{rule=\"r\",le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("gnomon_d_seconds_count{rule=\"r\"} 3\n"), std::string::npos);
}

TEST(MetricsTest, SameNameAndLabelsIsSameMetric) {
  MetricsRegistry m;
  Counter* a = m.GetCounter("c_total", "c", {{"k", "v"}});
  Counter* b = m.GetCounter("c_total", "c", {{"k", "v"}});
  Counter* c = m.GetCounter("c_total", "c", {{"k", "w"}});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(MetricsTest, CollectorsAppend) {
  MetricsRegistry m;
  m.AddCollector([](std::string& out) { out += "extra 1\n"; });
  EXPECT_NE(m.Render().find("extra 1\n"), std::string::npos);
}

TEST(MetricsTest, CollectorsRunBeforeCountersAreReadSoDerivedValuesAreNeverNewer) {
  MetricsRegistry m;
  Counter* done = m.GetCounter("done_total", "Done");
  Gauge* depth = m.GetGauge("depth", "Depth");
  // A collector that sees a counter and sets a gauge: what it set must be in the same render,
  // and a counter that moves during the collector must show at least the collector's view.
  m.AddCollector([&](std::string& out) {
    out += fmt::format("derived {}\n", done->value());
    depth->Set(7);
    done->Inc();
  });
  std::string text = m.Render();
  EXPECT_NE(text.find("derived 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("done_total 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("depth 7\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace gnomon

#include "gnomon/core/log.h"

namespace gnomon {
namespace {

TEST(RateLimiterTest, LetsThroughAtMostNPerSecondAndCountsTheRest) {
  log::RateLimiter limiter(3);
  uint64_t suppressed = 99;
  int allowed = 0;
  for (int i = 0; i < 10; ++i) {
    allowed += limiter.Allow(&suppressed) ? 1 : 0;
  }
  // All ten calls land in at most two one-second windows.
  EXPECT_GE(allowed, 3);
  EXPECT_LE(allowed, 6);
}

}  // namespace
}  // namespace gnomon

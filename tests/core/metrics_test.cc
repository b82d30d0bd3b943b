// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/metrics.h"

#include <gtest/gtest.h>

#include <cmath>

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

TEST(MetricsTest, LabelsStayInTheOrderGivenAndValuesAreEscaped) {
  MetricsRegistry m;
  m.GetCounter("r_total", "R", {{"rule", "z"}, {"outcome", "a\\b\nc"}})->Inc();
  std::string text = m.Render();
  EXPECT_NE(text.find("r_total{rule=\"z\",outcome=\"a\\\\b\\nc\"} 1\n"), std::string::npos) << text;
}

TEST(MetricsTest, CollectIsPrometheusCppsDataModel) {
  MetricsRegistry m;
  m.GetCounter("b_total", "B", {{"k", "2"}})->Inc(5);
  m.GetCounter("b_total", "B", {{"k", "1"}})->Inc(4);
  m.GetGauge("a", "A")->Set(-1);
  m.GetHistogram("c_seconds", "C", {}, {0.5})->Observe(1);
  std::vector<prometheus::MetricFamily> families = m.Collect();
  ASSERT_EQ(families.size(), 3u);
  EXPECT_EQ(families[0].name, "a");
  EXPECT_EQ(families[0].type, prometheus::MetricType::Gauge);
  EXPECT_EQ(families[0].metric.at(0).gauge.value, -1);
  EXPECT_EQ(families[1].name, "b_total");
  EXPECT_EQ(families[1].type, prometheus::MetricType::Counter);
  ASSERT_EQ(families[1].metric.size(), 2u);
  EXPECT_EQ(families[1].metric[0].label.at(0).value, "1");  // sorted by label text
  EXPECT_EQ(families[1].metric[0].counter.value, 4);
  EXPECT_EQ(families[1].metric[1].counter.value, 5);
  const auto& h = families[2].metric.at(0).histogram;
  EXPECT_EQ(h.sample_count, 1u);
  EXPECT_DOUBLE_EQ(h.sample_sum, 1);
  ASSERT_EQ(h.bucket.size(), 2u);
  EXPECT_EQ(h.bucket[0].cumulative_count, 0u);
  EXPECT_EQ(h.bucket[1].cumulative_count, 1u);
  EXPECT_TRUE(std::isinf(h.bucket[1].upper_bound));
}

TEST(MetricsTest, OneNameIsOneTypeAskingForAnotherAborts) {
  MetricsRegistry m;
  m.GetCounter("x_total", "X");
  EXPECT_DEATH(m.GetGauge("x_total", "X"), "registered with two types");
}

TEST(MetricsTest, CollectorsAppend) {
  MetricsRegistry m;
  m.AddCollector([](std::vector<prometheus::MetricFamily>& out) {
    out.push_back(OneSample("extra", "Extra", prometheus::MetricType::Gauge, 1));
  });
  EXPECT_NE(m.Render().find("# TYPE extra gauge\nextra 1\n"), std::string::npos) << m.Render();
}

TEST(MetricsTest, CollectorsRunBeforeCountersAreReadSoDerivedValuesAreNeverNewer) {
  MetricsRegistry m;
  Counter* done = m.GetCounter("done_total", "Done");
  Gauge* depth = m.GetGauge("depth", "Depth");
  // A collector that sees a counter and sets a gauge: what it set must be in the same render,
  // and a counter that moves during the collector must show at least the collector's view.
  m.AddCollector([&](std::vector<prometheus::MetricFamily>& out) {
    out.push_back(OneSample("derived", "Derived", prometheus::MetricType::Gauge,
                            static_cast<double>(done->value())));
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

// SPDX-License-Identifier: Apache-2.0
#include "rule_versions.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>

namespace gnomon::engine {
namespace {

std::shared_ptr<const rules::RuleSet> Rules(const std::string& names) {
  std::vector<std::pair<std::string, std::string>> files;
  for (char n : names) {
    std::string name(1, n);
    files.emplace_back(name + ".lua", "return rule { name = '" + name +
                                          "', from = 'a/+', handle = function() end }");
  }
  auto set = rules::RuleSet::FromSources(files, {});
  EXPECT_TRUE(set.ok()) << set.status().message();
  return *set;
}

struct Fixture {
  MetricsRegistry metrics;
  FixedClock clock{1000};
  Result<std::shared_ptr<const rules::RuleSet>> next = Rules("ab");
  RuleVersions versions{metrics, clock, [this] { return next; }};
};

TEST(RuleVersionsTest, StartIsVersionOneWithMetricsAndHealthPerRule) {
  Fixture f;
  f.versions.Start(Rules("xyz"));
  auto cur = f.versions.Current();
  EXPECT_EQ(f.versions.version(), 1u);
  EXPECT_EQ(cur->version, 1u);
  EXPECT_EQ(cur->loaded_at_ms, 1000);
  EXPECT_EQ(cur->set->rules().size(), 3u);
  EXPECT_EQ(cur->metrics.size(), 3u);
  EXPECT_EQ(cur->health.size(), 3u);
  EXPECT_EQ(f.versions.LastReloadJson(), "");  // no reload yet
  EXPECT_NE(f.metrics.Render().find("gnomon_rule_quarantined{rule=\"y\"} 0"), std::string::npos);
}

TEST(RuleVersionsTest, AReloadMakesTheNextVersionCurrentAndAFailedOneKeepsIt) {
  Fixture f;
  f.versions.Start(Rules("x"));
  auto first = f.versions.Current();
  f.clock.Set(2000);
  ASSERT_TRUE(f.versions.Reload("test").ok());
  auto second = f.versions.Current();
  EXPECT_NE(second, first);
  EXPECT_EQ(f.versions.version(), 2u);
  EXPECT_EQ(second->version, 2u);
  EXPECT_EQ(second->set->rules().size(), 2u);
  EXPECT_EQ(f.versions.LastReloadJson(), R"({"ok":true,"ts":2000})");

  f.next = InvalidArgument("r.lua:3: bad rule");
  f.clock.Set(3000);
  Status st = f.versions.Reload("test");
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.message(), "r.lua:3: bad rule");
  EXPECT_EQ(f.versions.Current(), second);  // the running version stays
  EXPECT_EQ(f.versions.version(), 2u);
  EXPECT_EQ(f.versions.LastReloadJson(), R"({"ok":false,"ts":3000,"error":"r.lua:3: bad rule"})");
  std::string text = f.metrics.Render();
  EXPECT_NE(text.find("gnomon_rule_reloads_total{outcome=\"ok\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("gnomon_rule_reloads_total{outcome=\"failed\"} 1"), std::string::npos)
      << text;
}

// Workers read version() per message and Current() when it changed, while reloads run.
TEST(RuleVersionsTest, ReadersNeverSeeAVersionGoBackOrACurrentOlderThanTheVersion) {
  Fixture f;
  f.versions.Start(Rules("x"));
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::thread reader([&] {
    uint64_t last = 0;
    while (!stop.load()) {
      uint64_t v = f.versions.version();
      if (v < last || f.versions.Current()->version < v) {
        bad.fetch_add(1);
      }
      last = v;
    }
  });
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(f.versions.Reload("test").ok());
  }
  stop = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(f.versions.version(), 51u);
}

}  // namespace
}  // namespace gnomon::engine

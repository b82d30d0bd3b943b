// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/topic.h"

#include <gtest/gtest.h>

#include <random>

namespace gnomon {
namespace {

TEST(TopicTest, ValidatesFilters) {
  EXPECT_TRUE(ValidateTopicFilter("a/b/c").ok());
  EXPECT_TRUE(ValidateTopicFilter("a/+/c").ok());
  EXPECT_TRUE(ValidateTopicFilter("a/#").ok());
  EXPECT_TRUE(ValidateTopicFilter("#").ok());
  EXPECT_TRUE(ValidateTopicFilter("+").ok());
  EXPECT_TRUE(ValidateTopicFilter("/").ok());
  EXPECT_FALSE(ValidateTopicFilter("").ok());
  EXPECT_FALSE(ValidateTopicFilter("a/#/c").ok());
  EXPECT_FALSE(ValidateTopicFilter("a/b#").ok());
  EXPECT_FALSE(ValidateTopicFilter("a/+b").ok());
  EXPECT_FALSE(ValidateTopicFilter(std::string_view("a\0b", 3)).ok());
  EXPECT_NE(ValidateTopicFilter("a/#/c").message().find("last level"), std::string::npos);
}

TEST(TopicTest, ValidatesNames) {
  EXPECT_TRUE(ValidateTopicName("devices/d1/telemetry").ok());
  EXPECT_FALSE(ValidateTopicName("").ok());
  EXPECT_FALSE(ValidateTopicName("a/+").ok());
  EXPECT_FALSE(ValidateTopicName("a/#").ok());
}

struct Case {
  const char* filter;
  const char* topic;
  bool match;
};

TEST(TopicTest, MatchesWithMqttSemantics) {
  const Case cases[] = {
      {"a/b", "a/b", true},         {"a/b", "a/c", false},        {"a/+", "a/b", true},
      {"a/+", "a/b/c", false},      {"a/+", "a", false},          {"a/+", "a/", true},
      {"a/#", "a", true},           {"a/#", "a/b", true},         {"a/#", "a/b/c", true},
      {"a/#", "b", false},          {"#", "a/b", true},           {"#", "/", true},
      {"+/+", "/", true},           {"+", "/a", false},           {"/+", "/a", true},
      {"+/b", "a/b", true},         {"a/+/c", "a/x/c", true},     {"a/+/c", "a/x/d", false},
      {"#", "$SYS/x", false},       {"+/x", "$SYS/x", false},     {"$SYS/#", "$SYS/x", true},
      {"$SYS/+", "$SYS/x", true},   {"a//b", "a//b", true},       {"a/+/b", "a//b", true},
      {"devices/+/telemetry", "devices/d1/telemetry", true},
      {"$aws/things/+/shadow/update/delta", "$aws/things/t1/shadow/update/delta", true},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(TopicMatches(c.filter, c.topic), c.match) << c.filter << " vs " << c.topic;
    TopicIndex index;
    index.Add(c.filter, 7);
    std::vector<uint32_t> out;
    index.Match(c.topic, out);
    EXPECT_EQ(!out.empty(), c.match) << "index: " << c.filter << " vs " << c.topic;
  }
}

TEST(TopicTest, LevelIsOneBased) {
  EXPECT_EQ(TopicLevel("devices/d1/telemetry", 1), "devices");
  EXPECT_EQ(TopicLevel("devices/d1/telemetry", 2), "d1");
  EXPECT_EQ(TopicLevel("devices/d1/telemetry", 3), "telemetry");
  EXPECT_EQ(TopicLevel("devices/d1/telemetry", 4), "");
  EXPECT_EQ(TopicLevel("devices/d1/telemetry", 0), "");
}

TEST(TopicIndexTest, ReturnsEveryMatchSortedOnce) {
  TopicIndex index;
  index.Add("a/b", 3);
  index.Add("a/+", 1);
  index.Add("#", 2);
  index.Add("a/#", 0);
  index.Add("a/b", 3);  // the same id twice is reported once
  std::vector<uint32_t> out;
  index.Match("a/b", out);
  EXPECT_EQ(out, (std::vector<uint32_t>{0, 1, 2, 3}));
}

// The index must agree with the reference matcher on random filters and topics.
TEST(TopicIndexTest, AgreesWithReferenceOnRandomInput) {
  std::mt19937 rng(42);
  const char* levels[] = {"a", "b", "c", "", "$x"};
  auto random_topic = [&](bool filter) {
    int n = 1 + static_cast<int>(rng() % 4);
    std::string t;
    for (int i = 0; i < n; ++i) {
      if (i > 0) {
        t += '/';
      }
      int r = static_cast<int>(rng() % 7);
      if (filter && r == 5) {
        t += '+';
      } else if (filter && r == 6 && i == n - 1) {
        t += '#';
      } else {
        t += levels[rng() % (i == 0 ? 5 : 4)];
      }
    }
    return t;
  };
  std::vector<std::string> filters;
  TopicIndex index;
  for (uint32_t i = 0; i < 300; ++i) {
    std::string f = random_topic(true);
    if (!ValidateTopicFilter(f).ok()) {
      continue;
    }
    index.Add(f, static_cast<uint32_t>(filters.size()));
    filters.push_back(f);
  }
  for (int i = 0; i < 2000; ++i) {
    std::string t = random_topic(false);
    std::vector<uint32_t> expected;
    for (uint32_t j = 0; j < filters.size(); ++j) {
      if (TopicMatches(filters[j], t)) {
        expected.push_back(j);
      }
    }
    std::vector<uint32_t> got;
    index.Match(t, got);
    ASSERT_EQ(got, expected) << "topic " << t;
  }
}

}  // namespace
}  // namespace gnomon

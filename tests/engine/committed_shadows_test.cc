// SPDX-License-Identifier: Apache-2.0
#include "committed_shadows.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>

namespace gnomon::engine {
namespace {

TEST(CommittedShadowsTest, PutGetAndEraseByKey) {
  CommittedShadows c;
  EXPECT_EQ(c.Get(std::string("a\0", 2)), nullptr);
  c.Put(std::string("a\0", 2), "{\"v\":1}");
  c.Put(std::string("a\0door", 6), "{\"v\":7}");
  auto classic = c.Get(std::string("a\0", 2));
  ASSERT_NE(classic, nullptr);
  EXPECT_EQ(*classic, "{\"v\":1}");
  c.Put(std::string("a\0", 2), "{\"v\":2}");
  EXPECT_EQ(*c.Get(std::string("a\0", 2)), "{\"v\":2}");
  EXPECT_EQ(*classic, "{\"v\":1}");  // a reader's copy stays valid after a newer Put
  c.Erase(std::string("a\0", 2));
  EXPECT_EQ(c.Get(std::string("a\0", 2)), nullptr);
  EXPECT_EQ(*c.Get(std::string("a\0door", 6)), "{\"v\":7}");
}

TEST(CommittedShadowsTest, CapacityBoundsEntriesAndNeverDropsTheOneJustPut) {
  CommittedShadows c;
  c.set_capacity(64);  // 4 per shard
  for (int i = 0; i < 10000; ++i) {
    std::string key = "t" + std::to_string(i);
    c.Put(key, std::to_string(i));
    auto got = c.Get(key);
    ASSERT_NE(got, nullptr) << key;
    EXPECT_EQ(*got, std::to_string(i));
  }
  int kept = 0;
  for (int i = 0; i < 10000; ++i) {
    kept += c.Get("t" + std::to_string(i)) != nullptr ? 1 : 0;
  }
  EXPECT_LE(kept, 64);
  EXPECT_GE(kept, 16);  // at least one per shard
}

TEST(CommittedShadowsTest, ConcurrentWritersAndReaders) {
  CommittedShadows c;
  c.set_capacity(1000);
  std::thread writer([&] {
    for (int i = 0; i < 20000; ++i) {
      c.Put("t" + std::to_string(i % 500), std::to_string(i));
      if (i % 7 == 0) {
        c.Erase("t" + std::to_string((i + 3) % 500));
      }
    }
  });
  for (int i = 0; i < 20000; ++i) {
    if (auto v = c.Get("t" + std::to_string(i % 500))) {
      // Whole values only: what was put for this key (i % 500 == key), never a torn one.
      ASSERT_EQ(std::stoi(*v) % 500, i % 500) << *v;
    }
  }
  writer.join();
  EXPECT_NE(c.Get("t499"), nullptr);  // 19999 % 500: written last, not erased after
}

}  // namespace
}  // namespace gnomon::engine

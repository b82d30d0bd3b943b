// SPDX-License-Identifier: Apache-2.0
#include "poison_list.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>

#include "tests/support/test_support.h"

namespace gnomon::engine {
namespace {

Message Msg(std::string topic, std::string device, std::string payload) {
  Message m;
  m.topic = std::move(topic);
  m.device = std::move(device);
  m.payload = std::move(payload);
  return m;
}

TEST(PoisonListTest, WhatIsRecordedIsRecognisedAfterARestartAndNothingElse) {
  testing::TempDir dir;
  std::string path = dir.File("poison.jsonl");
  Message bad = Msg("devices/d1/telemetry", "d1", R"({"loop":true})");
  {
    PoisonList before;
    EXPECT_EQ(before.Load(path), 0u);  // no file yet
    EXPECT_TRUE(before.empty());
    ASSERT_TRUE(before.Record("r", bad, 1234));
  }
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);  // it names devices and topics: private
  std::string text = testing::ReadFile(path);
  EXPECT_NE(text.find("\"rule\":\"r\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"device\":\"d1\""), std::string::npos) << text;
  EXPECT_EQ(text.find("loop"), std::string::npos) << "the payload is not copied: " << text;

  PoisonList after;
  EXPECT_EQ(after.Load(path), 1u);
  EXPECT_TRUE(after.Contains("r", bad));
  EXPECT_FALSE(after.Contains("other-rule", bad));
  EXPECT_FALSE(after.Contains("r", Msg("devices/d1/telemetry", "d1", R"({"loop":false})")));
  EXPECT_FALSE(after.Contains("r", Msg("devices/d2/telemetry", "d1", R"({"loop":true})")));
}

TEST(PoisonListTest, FieldsAreSeparatedInTheFingerprint) {
  EXPECT_NE(PoisonList::Fingerprint("ab", Msg("c", "", "")),
            PoisonList::Fingerprint("a", Msg("bc", "", "")));
  EXPECT_NE(PoisonList::Fingerprint("r", Msg("t", "d", "")),
            PoisonList::Fingerprint("r", Msg("t", "", "d")));
}

TEST(PoisonListTest, ReadsOnlyTheNewestEntriesAndSkipsATornLine) {
  testing::TempDir dir;
  std::string path = dir.File("poison.jsonl");
  PoisonList writer;
  writer.Load(path);
  for (size_t i = 0; i < PoisonList::kMaxEntries + 5; ++i) {
    ASSERT_TRUE(writer.Record("r", Msg("t", "d", std::to_string(i)), 0));
  }
  dir.Write("poison.jsonl", testing::ReadFile(path) + "{\"rule\":\"r\",\"fingerprint\":\"12");
  PoisonList reader;
  EXPECT_EQ(reader.Load(path), PoisonList::kMaxEntries);
  EXPECT_FALSE(reader.Contains("r", Msg("t", "d", "4")));  // among the oldest five
  EXPECT_TRUE(reader.Contains("r", Msg("t", "d", "5")));
  EXPECT_TRUE(reader.Contains("r", Msg("t", "d", std::to_string(PoisonList::kMaxEntries + 4))));
}

TEST(PoisonListTest, AnUnwritableFileIsReportedNotFatal) {
  PoisonList list;
  EXPECT_EQ(list.Load("/nonexistent-dir/poison.jsonl"), 0u);
  EXPECT_FALSE(list.Record("r", Msg("t", "d", "p"), 0));
}

}  // namespace
}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include "gnomon/rules/rules.h"
#include "tests/support/test_support.h"

namespace gnomon::rules {
namespace {

Status LoadOne(const std::string& src) {
  return RuleSet::FromSources({{"rules/r.lua", src}}, RuleSetOptions{{"out"}}).status();
}

TEST(RuleSetTest, LoadsAndIndexesRules) {
  auto set = RuleSet::FromSources(
      {{"a.lua", R"(return rule { name = "a", from = { "devices/+/telemetry", "x/#" },
                                  on_error = "drop", handle = function() end })"},
       {"b.lua", R"(return rule { name = "b", from = "devices/d1/#", handle = function() end })"}},
      {});
  ASSERT_TRUE(set.ok()) << set.status().message();
  ASSERT_EQ((*set)->rules().size(), 2u);
  EXPECT_EQ((*set)->rules()[0].on_error, OnError::kDrop);
  EXPECT_EQ((*set)->rules()[0].version.size(), 16u);
  std::vector<uint32_t> m;
  (*set)->Match("devices/d1/telemetry", m);
  EXPECT_EQ(m, (std::vector<uint32_t>{0, 1}));
  m.clear();
  (*set)->Match("devices/d2/telemetry", m);
  EXPECT_EQ(m, (std::vector<uint32_t>{0}));
}

TEST(RuleSetTest, SyntaxErrorNamesFileAndLine) {
  Status st = LoadOne("return rule {\n  name = 'r',\n  handle = function( end\n}\n");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message().rfind("rules/r.lua:3:", 0), 0u) << st.message();
}

TEST(RuleSetTest, RuntimeErrorAtLoadNamesFileAndLine) {
  Status st = LoadOne("local x = nil\nlocal y = x.field\nreturn rule {}\n");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("rules/r.lua:2:"), std::string::npos) << st.message();
}

TEST(RuleSetTest, ReportsEveryProblemOfTheTable) {
  Status st = LoadOne(
      "-- header\nreturn rule {\n  name = 'Bad Name', from = { 'a/#/b' },\n"
      "  on_error = 'explode', colour = 1, limits = { instructions = -1 },\n}\n");
  ASSERT_FALSE(st.ok());
  const std::string& m = st.message();
  EXPECT_NE(m.find("rules/r.lua:2: rule: unknown field 'colour'"), std::string::npos) << m;
  EXPECT_NE(m.find("rules/r.lua:2: rule.name: must match"), std::string::npos) << m;
  EXPECT_NE(m.find("rule.from[1]: topic filter 'a/#/b'"), std::string::npos) << m;
  EXPECT_NE(m.find("rule.handle: required"), std::string::npos) << m;
  EXPECT_NE(m.find("rule.on_error: must be"), std::string::npos) << m;
  EXPECT_NE(m.find("rule.limits.instructions: must be a positive number"), std::string::npos) << m;
}

TEST(RuleSetTest, FileMustReturnARule) {
  Status st = LoadOne("return { name = 'x' }");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("must return rule { ... }"), std::string::npos);
}

TEST(RuleSetTest, NameClashNamesBothFiles) {
  auto st = RuleSet::FromSources(
                {{"one.lua", "return rule { name = 'x', from = 'a', handle = function() end }"},
                 {"two.lua", "return rule { name = 'x', from = 'b', handle = function() end }"}},
                {})
                .status();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("two.lua:1: rule.name: 'x' is already used by one.lua"),
            std::string::npos)
      << st.message();
}

TEST(RuleSetTest, SandboxAppliesWhileLoading) {
  Status st = LoadOne("os.execute('touch /tmp/gnomon-pwned')\nreturn rule {}\n");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("rules/r.lua:1:"), std::string::npos) << st.message();
}

TEST(RuleSetTest, BytecodeIsRefused) {
  Status st = LoadOne(std::string("\x1bLJ\x02\x00garbage", 11));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("rules/r.lua: binary (bytecode) chunks are not allowed"),
            std::string::npos)
      << st.message();
}

TEST(RuleSetTest, ExpandsGlobsSorted) {
  testing::TempDir dir;
  dir.Write("rules/b.lua", "");
  dir.Write("rules/a.lua", "");
  dir.Write("rules/c.txt", "");
  dir.Write("rules/a.test.lua", "");  // tests beside rules are not rules
  dir.Write("rules/gnomon.d.lua", "");  // nor are editor annotations
  auto files = ExpandRulePaths({"rules/*.lua"}, dir.path());
  ASSERT_TRUE(files.ok());
  EXPECT_EQ(*files, (std::vector<std::string>{dir.File("rules/a.lua"), dir.File("rules/b.lua")}));
  EXPECT_FALSE(ExpandRulePaths({"rules/missing.lua"}, dir.path()).ok());
}

// The editor annotations must keep up with the API.
TEST(RuleSetTest, EditorAnnotationsCoverTheApi) {
  std::string d = testing::ReadFile(std::string(GNOMON_SOURCE_DIR) + "/rules/gnomon.d.lua");
  for (const char* item :
       {"function Context.emit", "function Context.publish", "function Context.drop",
        "function Context.fail", "function Context.now", "---@field log gnomon.Log",
        "---@field payload_error", "---@field headers", "function json.encode",
        "function json.decode", "function json.array", "function json.totable",
        "function json.pairs", "---@field null", "---@field limits?", "---@field quarantine?",
        "---@field jit?", "---@field tests?", "---@field on_error?", "function rule("}) {
    EXPECT_NE(d.find(item), std::string::npos) << item;
  }
}

}  // namespace
}  // namespace gnomon::rules

// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/config.h"

#include <gtest/gtest.h>

#include <cstdlib>

namespace gnomon {
namespace {

constexpr const char* kSchema = R"({
  "type": "object", "additionalProperties": false, "required": ["name"],
  "properties": {
    "name": { "type": "string", "minLength": 1 },
    "qos": { "type": "integer", "enum": [0, 1, 2], "default": 1 },
    "ratio": { "type": "number", "minimum": 0, "maximum": 1 },
    "on": { "type": "boolean" },
    "list": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
    "nested": { "type": "object", "additionalProperties": false,
                "properties": { "port": { "type": "integer", "minimum": 1, "maximum": 65535 } } }
  }
})";

Status Check(const std::string& yaml, ConfigValue* out = nullptr) {
  auto v = ParseYaml(yaml, "test.yaml");
  if (!v.ok()) {
    return v.status();
  }
  ConfigErrors errors("test.yaml");
  ValidateConfig(*v, kSchema, "", errors);
  if (out != nullptr) {
    *out = *v;
  }
  return errors.ToStatus();
}

TEST(ConfigTest, AcceptsValidAndFillsDefaults) {
  ConfigValue v;
  ASSERT_TRUE(Check("name: x\nratio: 0.5\non: true\nlist: [a, b]\n", &v).ok());
  EXPECT_EQ(v.GetInt("qos"), 1);
  EXPECT_DOUBLE_EQ(v.GetDouble("ratio"), 0.5);
  EXPECT_TRUE(v.GetBool("on"));
  EXPECT_EQ(v.GetStrings("list"), (std::vector<std::string>{"a", "b"}));
}

TEST(ConfigTest, EnumErrorNamesFileLineKeyAndValue) {
  Status st = Check("name: x\n\nqos: 3\n");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message(), "test.yaml:3: qos: must be 0, 1 or 2 (got 3)");
}

TEST(ConfigTest, ReportsEveryProblem) {
  Status st = Check("qos: x\nratio: 2\nbogus: 1\nnested: {port: 0}\nlist: []\n");
  ASSERT_FALSE(st.ok());
  const std::string& m = st.message();
  EXPECT_NE(m.find("test.yaml:1: qos: must be an integer (got x)"), std::string::npos) << m;
  EXPECT_NE(m.find("test.yaml:2: ratio: must be between 0 and 1 (got 2)"), std::string::npos) << m;
  EXPECT_NE(m.find("test.yaml:3: bogus: unknown key"), std::string::npos) << m;
  EXPECT_NE(m.find("test.yaml:4: nested.port: must be between 1 and 65535 (got 0)"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("list: must have at least 1 item(s)"), std::string::npos) << m;
  EXPECT_NE(m.find("name: is required"), std::string::npos) << m;
}

TEST(ConfigTest, QuotedNumberIsAString) {
  Status st = Check("name: x\nqos: \"1\"\n");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("qos: must be an integer"), std::string::npos);
}

TEST(ConfigTest, SubstitutesEnvironment) {
  ::setenv("GNOMON_TEST_NAME", "from-env", 1);
  ConfigValue v;
  ASSERT_TRUE(Check("name: pre-${env:GNOMON_TEST_NAME}-post\n", &v).ok());
  EXPECT_EQ(v.GetString("name"), "pre-from-env-post");
}

TEST(ConfigTest, UnsetEnvironmentIsAnError) {
  ::unsetenv("GNOMON_TEST_UNSET");
  auto v = ParseYaml("name: ${env:GNOMON_TEST_UNSET}\n", "test.yaml");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().message(), "test.yaml:1: environment variable GNOMON_TEST_UNSET is not set");
}

TEST(ConfigTest, YamlSyntaxErrorHasLine) {
  auto v = ParseYaml("a: 1\nb: [unclosed\n", "test.yaml");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().message().rfind("test.yaml:", 0), 0u) << v.status().message();
}

TEST(ConfigTest, DuplicateKeyIsAnError) {
  auto v = ParseYaml("a: 1\na: 2\n", "test.yaml");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("duplicate key 'a'"), std::string::npos);
}

TEST(ConfigTest, EmbeddedSchemasAreValidJsonAndDocumented) {
  ASSERT_FALSE(EmbeddedSchemaList().empty());
  for (auto name : EmbeddedSchemaList()) {
    ConfigValue empty;
    empty.SetKind(ConfigValue::Kind::kMap);
    ConfigErrors errors("x");
    ValidateConfig(empty, EmbeddedSchema(name), "", errors);
    for (const auto& e : errors.errors()) {
      EXPECT_EQ(e.message.find("internal error"), std::string::npos) << name;
    }
  }
  std::string docs = RenderConfigDocs();
  EXPECT_NE(docs.find("`worker_queue`"), std::string::npos);
  EXPECT_NE(docs.find("`max_inflight`"), std::string::npos);
}

}  // namespace
}  // namespace gnomon

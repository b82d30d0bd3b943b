// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include "gnomon/connectors/builtin.h"
#include "gnomon/engine/engine.h"
#include "tests/support/test_support.h"

namespace gnomon::engine {
namespace {

class ConfigLoaderTest : public ::testing::Test {
 protected:
  ConfigLoaderTest() { connectors::RegisterBuiltinConnectors(registry_); }

  Status Load(const std::string& yaml, AppConfig* out = nullptr) {
    dir_.Write("rules/ok.lua", "return rule { name = 'ok', from = 'a/#', handle = function() end }");
    dir_.Write("g.yaml", yaml);
    auto app = LoadAppConfig(dir_.File("g.yaml"), registry_);
    if (app.ok() && out != nullptr) {
      *out = std::move(app).value();
    }
    return app.status();
  }

  std::string File() { return dir_.File("g.yaml"); }

  testing::TempDir dir_;
  Registry registry_;
};

constexpr const char* kGood = R"(workers: 3
connections:
  broker: { type: mqtt, url: "mqtt://127.0.0.1:1883", client_id: gw }
sources:
  - name: telemetry
    connection: broker
    topics: ["devices/+/telemetry"]
  - name: rec
    type: file
    path: capture.jsonl
sinks:
  - name: devices
    connection: broker
  - name: archive
    type: file
    path: out.jsonl
rules: ["rules/*.lua"]
metrics: { listen: "127.0.0.1:9464" }
)";

TEST_F(ConfigLoaderTest, LoadsAndAppliesDefaults) {
  AppConfig app;
  ASSERT_TRUE(Load(kGood, &app).ok()) << Load(kGood).message();
  EXPECT_EQ(app.workers, 3);
  EXPECT_EQ(app.worker_queue, 4096u);
  ASSERT_EQ(app.sources.size(), 2u);
  EXPECT_EQ(app.sources[0].type, "mqtt");
  EXPECT_EQ(app.sources[0].config->GetInt("qos"), 1);
  EXPECT_EQ(app.sources[0].config->GetString("device"), "topic[2]");
  EXPECT_EQ(app.sources[1].type, "file");
  EXPECT_EQ(app.publish_sink, "devices");  // the first MQTT sink
  EXPECT_EQ(app.rules->rules().size(), 1u);
  EXPECT_EQ(app.data_dir, dir_.path() + "/./data");
}

TEST_F(ConfigLoaderTest, ErrorsNameFileLineAndKeyPath) {
  std::string yaml = kGood;
  const std::string from = "    topics: [\"devices/+/telemetry\"]";
  yaml.replace(yaml.find(from), from.size(),
               "    topics: [\"devices/#/x\"]\n    qos: 3");
  Status st = Load(yaml);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(File() + ":8: sources[0].qos: must be 0 or 1 (got 3)"),
            std::string::npos)
      << st.message();
  EXPECT_NE(st.message().find(File() + ":7: sources[0].topics[0]: topic filter 'devices/#/x'"),
            std::string::npos)
      << st.message();
}

TEST_F(ConfigLoaderTest, RejectsUnknownKeysEverywhere) {
  Status st = Load("workerz: 2\nsinks: [{name: a, type: file, path: x, colour: red}]\n");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(":1: workerz: unknown key"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find(":2: sinks[0].colour: unknown key"), std::string::npos)
      << st.message();
}

TEST_F(ConfigLoaderTest, KafkaEntriesAreCheckedIncludingLibrdkafkaProperties) {
  Status st = Load(
      "connections:\n  bus: { type: kafka, brokers: \"127.0.0.1:9092\" }\n"
      "sources:\n  - { name: k, connection: bus, topics: [t], group: g, device: nope,\n"
      "      properties: { fetch.wait.max.ms: 10, no.such.property: 1 } }\n"
      "sinks:\n  - { name: out, connection: bus, topic: o, properties: { compression.type: zzz } }\n"
      "  - { name: bad, connection: bus }\n");
  ASSERT_FALSE(st.ok());
  const std::string& m = st.message();
  EXPECT_NE(m.find("sources[0].properties.no.such.property: No such configuration property"),
            std::string::npos)
      << m;
  EXPECT_EQ(m.find("fetch.wait.max.ms"), std::string::npos) << m;
  EXPECT_NE(m.find("sources[0].device:"), std::string::npos) << m;
  EXPECT_NE(m.find("sinks[0].properties.compression.type:"), std::string::npos) << m;
  EXPECT_NE(m.find("sinks[1].topic: is required"), std::string::npos) << m;
}

TEST_F(ConfigLoaderTest, CrossReferencesAreChecked) {
  Status st = Load(
      "sources: [{name: s, connection: nowhere, topics: [a]}]\n"
      "sinks: [{name: a, type: bogus}, {name: a, type: file, path: x}]\n"
      "dead_letter: { sink: missing }\n");
  ASSERT_FALSE(st.ok());
  const std::string& m = st.message();
  EXPECT_NE(m.find("sources[0].connection: no connection named 'nowhere'"), std::string::npos) << m;
  EXPECT_NE(m.find("sinks[0]: unknown sink type 'bogus' (known: file, http, kafka, mqtt, sql)"), std::string::npos)
      << m;
  EXPECT_NE(m.find("sinks[1].name: 'a' is used twice"), std::string::npos) << m;
  EXPECT_NE(m.find("dead_letter.sink: no sink named 'missing'"), std::string::npos) << m;
}

TEST_F(ConfigLoaderTest, PresenceNeedsATopicFilter) {
  Status st = Load("shadows: { presence: { from: \"devices/#/status\" } }\n");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(":1: shadows.presence.from: not a topic filter"), std::string::npos)
      << st.message();
  st = Load("shadows: { presence: { } }\n");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("shadows.presence.from"), std::string::npos) << st.message();
}

TEST_F(ConfigLoaderTest, BadConnectionUrl) {
  Status st = Load("connections: { b: { type: mqtt, url: \"http://x\" } }\n");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(":1: connections.b.url: must match"), std::string::npos)
      << st.message();
}

TEST_F(ConfigLoaderTest, BrokenRuleStopsTheLoadWithFileAndLine) {
  dir_.Write("rules/bad.lua", "return rule {\n  name = 'x',\n  from = 'a', handle = function( end }\n");
  dir_.Write("g.yaml", "rules: [rules/bad.lua]\n");
  auto app = LoadAppConfig(dir_.File("g.yaml"), registry_);
  ASSERT_FALSE(app.ok());
  EXPECT_NE(app.status().message().find("rules/bad.lua:3:"), std::string::npos)
      << app.status().message();
}

TEST_F(ConfigLoaderTest, MissingFileAndNotAMap) {
  EXPECT_FALSE(LoadAppConfig(dir_.File("nope.yaml"), registry_).ok());
  EXPECT_FALSE(Load("- just\n- a list\n").ok());
  EXPECT_FALSE(Load("{{{").ok());
}

}  // namespace
}  // namespace gnomon::engine

#include <random>

namespace gnomon::engine {
namespace {

// Mangled configs must give an error (or load), never crash or hang.
TEST_F(ConfigLoaderTest, MangledConfigsNeverCrash) {
  std::mt19937 rng(5);
  const std::string noise = ":{}[],\"' \n-#&*!|>%@\t\\0123456789abcxyz${env:}";
  int loaded = 0, rejected = 0;
  for (int i = 0; i < 1500; ++i) {
    std::string yaml = kGood;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t pos = rng() % yaml.size();
      switch (rng() % 3) {
        case 0: yaml.erase(pos, 1 + rng() % 3); break;
        case 1: yaml.insert(pos, 1, noise[rng() % noise.size()]); break;
        default: {
          size_t len = std::min<size_t>(yaml.size() - pos, rng() % 20);
          yaml.insert(rng() % yaml.size(), yaml.substr(pos, len));
        }
      }
    }
    Status st = Load(yaml);
    (st.ok() ? loaded : rejected)++;
    if (!st.ok()) {
      EXPECT_FALSE(st.message().empty());
      EXPECT_EQ(st.message().rfind(File(), 0), 0u) << "error must name the file: " << st.message();
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace gnomon::engine

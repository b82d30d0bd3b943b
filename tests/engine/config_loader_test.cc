// SPDX-License-Identifier: Apache-2.0
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <map>

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
  EXPECT_EQ(app.worker_queue, 1024u);
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

// `delivery: exactly_once`: what takes part in the Kafka transactions and what does not is
// said (a warning each); two exactly-once sources on one connection are refused.
TEST_F(ConfigLoaderTest, ExactlyOnceSaysWhatStaysAtLeastOnce) {
  const std::string base = R"(connections:
  bus: { type: kafka, brokers: "127.0.0.1:9092" }
  other: { type: kafka, brokers: "127.0.0.1:9093" }
sources:
  - { name: in, connection: bus, topics: [t], group: g, delivery: exactly_once }
sinks:
  - { name: out, connection: bus, topic: o }
  - { name: far, connection: other, topic: o }
  - { name: hook, type: http, url: "http://127.0.0.1:1/x" }
rules: ["rules/*.lua"]
)";
  AppConfig app;
  ASSERT_TRUE(Load(base, &app).ok()) << Load(base).message();
  std::string all;
  for (const std::string& w : app.warnings) {
    all += w + "\n";
  }
  EXPECT_NE(all.find("sink 'hook' (http) stays at-least-once"), std::string::npos) << all;
  EXPECT_NE(all.find("sink 'far' (kafka) stays at-least-once"), std::string::npos) << all;
  EXPECT_EQ(all.find("sink 'out'"), std::string::npos) << all;
  EXPECT_NE(all.find("dead letters go to data_dir/dead-letter.jsonl, at-least-once"),
            std::string::npos)
      << all;

  AppConfig plain;
  std::string at_least_once = base;
  at_least_once.replace(at_least_once.find(", delivery: exactly_once"), 24, "");
  ASSERT_TRUE(Load(at_least_once, &plain).ok());
  EXPECT_TRUE(plain.warnings.empty());

  std::string two = base;
  two.insert(
      two.find("sinks:"),
      "  - { name: in2, connection: bus, topics: [u], group: g2, delivery: exactly_once }\n");
  Status st = Load(two);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("sources[1].delivery: source 'in' already runs exactly-once on "
                              "this connection"),
            std::string::npos)
      << st.message();
}

TEST_F(ConfigLoaderTest, AClusterNeedsAKafkaConnectionAndRefusesWhatCannotMoveYet) {
  const std::string base = R"(connections:
  bus: { type: kafka, brokers: "127.0.0.1:9092" }
  broker: { type: mqtt, url: "mqtt://127.0.0.1:1883" }
cluster: { name: fleet, partitions: 12, instance_id: gw-1, connection: bus }
sources:
  - { name: in, connection: broker, topics: ["devices/+/telemetry"] }
rules: ["rules/*.lua"]
)";
  AppConfig app;
  ASSERT_TRUE(Load(base, &app).ok()) << Load(base).message();
  EXPECT_TRUE(app.cluster.enabled);
  EXPECT_EQ(app.cluster.name, "fleet");
  EXPECT_EQ(app.cluster.group, "fleet");  // the default
  EXPECT_EQ(app.cluster.partitions, 12);
  EXPECT_EQ(app.cluster.instance_id, "gw-1");
  EXPECT_EQ(app.cluster.IngressTopic(), "fleet.ingress");
  EXPECT_NE(app.cluster.connection, nullptr);

  // Shadows go to the cluster's change log, co-partitioned with ingress.
  AppConfig with_shadows;
  std::string shadows_yaml = base;
  shadows_yaml.replace(shadows_yaml.find("rules:"), 6, "shadows: {}\nrules:");
  ASSERT_TRUE(Load(shadows_yaml, &with_shadows).ok()) << Load(shadows_yaml).message();
  EXPECT_TRUE(with_shadows.shadows.enabled);
  EXPECT_EQ(with_shadows.shadows.changelog_topic, "fleet.changelog");
  EXPECT_EQ(with_shadows.shadows.changelog_partitions, 12);
  EXPECT_EQ(with_shadows.shadows.changelog_connection, with_shadows.cluster.connection);
  AppConfig standbys;
  std::string standby_yaml = shadows_yaml;
  standby_yaml.replace(standby_yaml.find("connection: bus }"), 17,
                       "connection: bus, standby_replicas: 2 }");
  ASSERT_TRUE(Load(standby_yaml, &standbys).ok()) << Load(standby_yaml).message();
  EXPECT_EQ(standbys.cluster.standby_replicas, 2);

  AppConfig alone;
  std::string no_cluster = base;
  no_cluster.erase(no_cluster.find("cluster:"),
                   no_cluster.find("sources:") - no_cluster.find("cluster:"));
  ASSERT_TRUE(Load(no_cluster, &alone).ok());
  EXPECT_FALSE(alone.cluster.enabled);

  auto refused = [&](const std::string& from, const std::string& to, const std::string& why) {
    std::string yaml = base;
    yaml.replace(yaml.find(from), from.size(), to);
    Status st = Load(yaml);
    EXPECT_FALSE(st.ok()) << to;
    EXPECT_NE(st.message().find(why), std::string::npos) << st.message();
  };
  refused("connection: bus }", "connection: broker }",
          "cluster.connection: no kafka connection named 'broker'");
  refused("instance_id: gw-1", "instance_id: \"gw/1\"", "cluster.instance_id");
  refused("name: fleet,", "name: fleet, group: \"a/b\",", "cluster.group");
  refused("partitions: 12", "partitions: 0", "cluster.partitions");
  refused("connection: bus }", "connection: bus, standby_replicas: 9 }",
          "cluster.standby_replicas");
  refused("rules:", "shadows: { changelog: { connection: bus, topic: mine } }\nrules:",
          "shadows.changelog: in a cluster shadows go to the cluster's own change log "
          "('fleet.changelog', 12 partitions");
  refused("name: in,", "name: cluster,",
          "sources[0].name: 'cluster' is a name of the cluster's own");
  refused("rules:", "sinks: [{ name: cluster-ingress, type: file, path: x.jsonl }]\nrules:",
          "sinks[0].name: 'cluster-ingress' is a name of the cluster's own");
  refused("sources:\n",
          "sources:\n  - { name: k, connection: bus, topics: [t], group: g, "
          "delivery: exactly_once }\n",
          "exactly_once cannot run in a cluster yet");
  // Forwards to other instances: an https:// address needs this instance's API on TLS, and an
  // API on TLS an https:// one; the CAs to verify the others with must be readable.
  refused("connection: bus }", "connection: bus, advertise: \"https://gw-1:8443\" }",
          "cluster.advertise: is https:// but this instance's API has no TLS (api.tls)");
  refused("connection: bus }", "connection: bus, advertise: \"ftp://gw-1:21\" }",
          "cluster.advertise");
  refused("connection: bus }", "connection: bus, tls_ca: missing-ca.pem }",
          "cluster.tls_ca: cannot read");
  dir_.Write("api.crt", "(read at start, not at load)");
  dir_.Write("ca.pem", "(read at start, not at load)");
  const std::string api_tls =
      "api: { listen: \"127.0.0.1:0\", tls: { cert: api.crt, key: api.crt } }\n";
  std::string tls_yaml = base;
  tls_yaml.replace(tls_yaml.find("rules:"), 6, api_tls + "rules:");
  tls_yaml.replace(tls_yaml.find("connection: bus }"), 17,
                   "connection: bus, advertise: \"https://gw-1:8443\", tls_ca: ca.pem }");
  AppConfig tls;
  ASSERT_TRUE(Load(tls_yaml, &tls).ok()) << Load(tls_yaml).message();
  EXPECT_EQ(tls.cluster.advertise, "https://gw-1:8443");
  EXPECT_EQ(tls.cluster.tls_ca, dir_.File("ca.pem"));
  std::string plain_on_tls = tls_yaml;
  plain_on_tls.replace(plain_on_tls.find("https://"), 8, "http://");
  Status st = Load(plain_on_tls);
  EXPECT_NE(st.message().find("cluster.advertise: is http:// but this instance's API speaks TLS"),
            std::string::npos)
      << st.message();

  // Keyed windows run in a cluster too (their events go to the key's owner through ingress).
  dir_.Write("rules/rooms.lua", R"(return rule { name = "rooms", from = "a/#",
    windows = { per_room = { tumbling = "5m", of = "temp", agg = { "avg" },
                             key = "payload.room" } },
    handle = function() end, on_window = function() end })");
  EXPECT_TRUE(Load(shadows_yaml).ok()) << Load(shadows_yaml).message();
}

TEST_F(ConfigLoaderTest, MissingFileAndNotAMap) {
  EXPECT_FALSE(LoadAppConfig(dir_.File("nope.yaml"), registry_).ok());
  EXPECT_FALSE(Load("- just\n- a list\n").ok());
  EXPECT_FALSE(Load("{{{").ok());
}

// Every default in schemas/gnomon.json against what the code uses: with each section written
// but empty (the loader reads what validation filled in from the schema), with the sections
// left out (AppConfig's initial values of those sections), and in an AppConfig made in code.
// A default added to the schema needs a line here; a default changed in one place only fails.
TEST_F(ConfigLoaderTest, EveryDefaultOfTheSchemaIsWhatTheCodeUses) {
  // The schema's defaults, by dotted path.
  auto schema = ParseYaml(EmbeddedSchema("gnomon.json"), "gnomon.json");
  ASSERT_TRUE(schema.ok()) << schema.status().message();
  std::map<std::string, std::string> defaults;
  std::function<void(const ConfigValue&, const std::string&)> walk = [&](const ConfigValue& node,
                                                                         const std::string& path) {
    if (const ConfigValue* d = node.Get("default"); d != nullptr && !path.empty()) {
      defaults[path] = d->kind() == ConfigValue::Kind::kScalar ? d->scalar() : "<list>";
    }
    if (const ConfigValue* props = node.Get("properties")) {
      for (const auto& [key, child] : props->fields()) {
        walk(child, path.empty() ? key : path + "." + key);
      }
    }
  };
  walk(*schema, "");

  const std::string sections = R"(
shadows: {}
services: {}
dead_letter: {}
rule_limits: {}
log: {}
api: { listen: "127.0.0.1:0", insecure: true, limits: {} }
metrics: { listen: "127.0.0.1:0", limits: {} }
)";
  for (int pass = 0; pass < 3; ++pass) {
    bool written = pass == 0;
    bool loaded = pass < 2;
    SCOPED_TRACE(pass == 0   ? "sections written, empty"
                 : pass == 1 ? "sections left out"
                             : "AppConfig{}");
    AppConfig app;
    std::string yaml =
        "sources: [{ name: rec, type: file, path: in.jsonl }]\n"
        "rules: [\"rules/*.lua\"]\n";
    if (loaded) {
      ASSERT_TRUE(Load(yaml + (written ? sections : ""), &app).ok()) << Load(yaml).message();
    }
    auto b = [](bool v) { return std::string(v ? "true" : "false"); };
    auto n = [](auto v) { return std::to_string(v); };
    const auto& dl = app.dead_letters;
    const auto& sh = app.shadows;
    const auto& rl = app.rule_limits;
    std::map<std::string, std::string> code = {
        {"data_dir", std::filesystem::path(app.data_dir).lexically_normal() ==
                             std::filesystem::path(dir_.File("data"))
                         ? "./data"
                         : app.data_dir},
        {"worker_queue", n(app.worker_queue)},
        {"shutdown_timeout_ms", n(app.shutdown_timeout_ms)},
        {"dead_letter.max_mb", n(dl.max_mb)},
        {"dead_letter.keep", n(dl.keep)},
        {"dead_letter.disk_reserve_mb", n(dl.disk_reserve_mb)},
        {"dead_letter.payload_max_bytes", n(dl.payload_max_bytes)},
        {"dead_letter.per_device_per_s", fmt::format("{}", dl.per_device_per_s)},
        {"dead_letter.burst", n(dl.burst)},
        {"events.from", app.events_from},
        {"services.ttl_ms", n(app.services.ttl_ms)},
        {"services.keep_ms", n(app.services.keep_ms)},
        {"services.max_queued", n(app.services.max_queued)},
        {"umask", fmt::format("{:04o}", app.umask)},
        {"rule_limits.instructions", n(rl.instructions)},
        {"rule_limits.memory_mb", n(rl.memory_mb)},
        {"rule_limits.heap_mb", n(rl.heap_mb)},
        {"rule_limits.wall_ms", n(rl.wall_ms)},
        {"rule_limits.allow_jit", b(rl.allow_jit)},
        {"watch_rules", b(app.watch_rules)},
        {"shadows.topic_prefix", sh.topic_prefix},
        {"shadows.changelog.partitions", n(sh.changelog_partitions)},
        {"shadows.sync", sh.sync_full ? "full" : "normal"},
        {"shadows.max_pending_writes", n(sh.max_pending_writes)},
        {"shadows.cache_shadows", n(sh.cache_shadows)},
        {"shadows.state_cache_mb", n(sh.state_cache_mb)},
        {"shadows.history", n(sh.history)},
        {"shadows.history_mb", n(sh.history_mb)},
        {"cluster.standby_replicas", n(app.cluster.standby_replicas)},
    };
    for (auto [name, l] : {std::pair{"api", &app.api}, std::pair{"metrics", &app.metrics}}) {
      std::string p = std::string(name) + ".";
      code[p + "limits.max_connections"] = n(l->max_connections);
      code[p + "limits.io_threads"] = n(l->io_threads);
      code[p + "limits.handler_threads"] = n(l->handler_threads);
      code[p + "limits.max_header_bytes"] = n(l->max_header_bytes);
      code[p + "limits.max_header_fields"] = n(l->max_header_fields);
      code[p + "limits.header_timeout_ms"] = n(l->header_timeout_ms);
      code[p + "limits.body_timeout_ms"] = n(l->body_timeout_ms);
      code[p + "limits.idle_timeout_ms"] = n(l->idle_timeout_ms);
    }
    // Written above (an API without tokens needs it): checked when the section is left out.
    code["api.insecure"] = written ? defaults["api.insecure"] : b(app.api.insecure);
    // Not in AppConfig: read where they are used (log.level by main.cc, shadows.store has one
    // value, lists start empty).
    if (!loaded) {
      code["data_dir"] = defaults["data_dir"];  // a path only once resolved against the file
    }
    for (const char* elsewhere : {"log.level", "shadows.store", "rules", "models", "rule_libs"}) {
      code[elsewhere] = defaults[elsewhere];
    }
    for (const auto& [path, value] : defaults) {
      auto it = code.find(path);
      ASSERT_NE(it, code.end()) << "schema default of " << path << " (" << value
                                << ") is not checked against the code: add it here";
      EXPECT_EQ(it->second, value) << path;
    }
  }
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

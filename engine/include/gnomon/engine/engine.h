// SPDX-License-Identifier: Apache-2.0
// The engine: loads the config, routes messages from sources to per-device workers running
// Lua rules, hands effects to sinks, tracks every message until its effects are durable, and
// serves /metrics, /healthz and /readyz.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/core/clock.h"
#include "gnomon/core/config.h"
#include "gnomon/core/metrics.h"
#include "gnomon/core/registry.h"
#include "gnomon/core/status.h"
#include "gnomon/rules/rules.h"
#include "gnomon/shadow/model.h"

namespace gnomon::engine {

// One source, sink or connection entry of the config, validated.
struct Entry {
  std::string name;
  std::string type;
  const ConfigValue* config = nullptr;
  const ConfigValue* connection = nullptr;
  int connection_users = 1;
};

// The whole config, validated (schemas, cross-references, rule compilation).
struct AppConfig {
  ConfigValue root;
  std::string file;
  std::string base_dir;
  std::string data_dir;
  int workers = 1;
  size_t worker_queue = 1024;
  int64_t shutdown_timeout_ms = 10000;
  std::vector<Entry> sources;
  std::vector<Entry> sinks;
  std::string dead_letter_sink;  // empty: the default file in data_dir
  // `dead_letter:` bounds (see schemas/gnomon.json).
  struct DeadLetters {
    int64_t max_mb = 64;
    int64_t keep = 2;
    int64_t disk_reserve_mb = 64;
    size_t payload_max_bytes = 65536;
    double per_device_per_s = 10;
    int64_t burst = 100;
  } dead_letters;
  std::string publish_sink;      // empty: ctx.publish is an error
  std::string metrics_listen;
  std::vector<std::string> rule_patterns;  // `rules:` as written
  std::vector<std::string> rule_files;     // what they matched at load
  std::vector<std::string> rule_libs;      // folders for `require`, resolved
  rules::RuleLimitCeilings rule_limits;    // `rule_limits:`: the most a rule may ask for
  std::string device_id_pattern;           // empty: the thing-name charset, 1-128 bytes
  // The umask gnomon runs under (`umask:`, octal): what it creates in data_dir (shadows.db,
  // outboxes, dead letters) is private by default.
  unsigned umask = 077;
  std::shared_ptr<const rules::RuleSet> rules;
  // `shadows:`; enabled when the section is present.
  struct Shadows {
    bool enabled = false;
    std::string topic_prefix = "$aws/things";
    const ConfigValue* connection = nullptr;  // MQTT connection serving the shadow topics
    std::string connection_name;
    bool sync_full = true;
    size_t cache_shadows = 100'000;  // per worker (see Worker::shadows)
    size_t state_cache_mb = 32;      // rule rows (ctx.state, timers, windows) cached, per worker
    size_t max_pending_writes = 8192;  // store writes not yet durable before workers wait
    size_t history = 1000;           // versions of change history kept per shadow (0: none)
    size_t history_mb = 64;          // change history, per worker (memory, and its history log)
    // `changelog:`: the Kafka connection (null: none), its name, the topic, partitions.
    const ConfigValue* changelog_connection = nullptr;
    std::string changelog_connection_name;
    std::string changelog_topic;
    int changelog_partitions = 4;
    // `presence.from`: messages on topics matching this filter (from any source) report their
    // device connected or disconnected (empty: no presence).
    std::string presence_from;
  } shadows;
  // `models:`, in file order (the first match binds a thing).
  std::vector<std::shared_ptr<const shadow::ThingModel>> models;
  // `events.from`: thing-model event posts, the event identifier being the topic's last level.
  std::string events_from = "devices/+/events/+";
  // `services:` (thing-model service calls).
  struct Services {
    int64_t ttl_ms = 86'400'000;   // a queued call's life before EXPIRED
    int64_t keep_ms = 3'600'000;   // a finished call stays readable this long
    size_t max_queued = 1000;      // unfinished calls per thing
  } services;
  std::string api_listen;
  // `api.tokens`: each token and the scopes it holds (read 1, write 2, admin 4; a plain
  // string holds all three).
  struct ApiToken {
    std::string token;
    unsigned scopes = 7;
  };
  std::vector<ApiToken> api_tokens;
  // `api:` and `metrics:` listener settings (see schemas/gnomon.json).
  struct Listener {
    std::string tls_cert, tls_key, tls_client_ca;
    bool insecure = false;
    int64_t max_connections = 10000;
    int64_t io_threads = 2;
    int64_t handler_threads = 32;
    int64_t max_header_bytes = 16384;
    int64_t max_header_fields = 100;
    int64_t header_timeout_ms = 10000;
    int64_t body_timeout_ms = 60000;
    int64_t idle_timeout_ms = 60000;
  };
  Listener api;
  Listener metrics;
  std::vector<std::string> metrics_tokens;  // `metrics.tokens`: when set, /metrics needs one
  // Topics HTTP ingest refuses (the shadow service's and `$aws/events`): filled at load.
  std::vector<std::string> reserved_topic_prefixes;
  // `cluster:` (docs/cluster.md); enabled when the section is present.
  struct Cluster {
    bool enabled = false;
    std::string name;
    std::string group;
    int32_t partitions = 0;
    int standby_replicas = 0;  // instances following each partition into a warm copy
    std::string instance_id;
    // This instance's API as the others reach it (`http://host:port`, or `https://host:port`
    // with api.tls), for the requests they forward to it; empty: derived from api.listen.
    std::string advertise;
    // PEM CAs that sign the other instances' API certificates, for forwards to https://
    // members (empty: the system's trusted CAs).
    std::string tls_ca;
    std::string connection_name;
    const ConfigValue* connection = nullptr;  // the kafka connection
    std::string IngressTopic() const { return name + ".ingress"; }
    // Shadows' change log: co-partitioned with ingress (same P, same hash of the device).
    std::string ChangelogTopic() const { return name + ".changelog"; }
    // The members' API addresses and partitions (docs/cluster.md#rest-anywhere).
    std::string MembersTopic() const { return name + ".members"; }
  } cluster;
  // Things that work but are risky (`gnomon check` prints them, `run` logs them).
  std::vector<std::string> warnings;
  bool watch_rules = true;
};

// (Re)loads the rules of `app`: expands `rule_patterns`, compiles every file on a scratch state
// and runs the rules' tests. On success fills `files` and returns the set.
Result<std::shared_ptr<const rules::RuleSet>> LoadRules(const AppConfig& app,
                                                        std::vector<std::string>* files);

// The rule files' names, sizes and modification times: changes when a rule file does.
std::string RuleFilesSignature(const AppConfig& app);

// Reads and checks `path`. Every problem is reported, each as "file:line: key.path: message".
Result<AppConfig> LoadAppConfig(const std::string& path, const Registry& registry);

enum class Mode {
  kRun,     // sources from the config, run until Stop()
  kReplay,  // a file source instead of the config's sources; stop when it is done
  kDryRun,  // as kReplay, but every effect is printed as a JSON line on stdout
};

struct EngineOptions {
  Mode mode = Mode::kRun;
  std::string replay_input;   // kReplay, kDryRun
  std::string replay_device;  // device rule for the replay source; default: first source's
  bool progress = false;      // replay progress on stderr
  // Reads `topic` of a kafka connection from its beginning to where it ends now, only the
  // partitions `only` names (connectors::ReadTopicToEnd; `value` null for tombstones). How a
  // cluster member restores the shadows of the partitions it is given, and a standby follows
  // them; needed with `cluster` and `shadows`. Gives up once `stop` returns true. With
  // `positions`, reads the partitions it names from there and leaves where each read ended.
  using TopicReader = std::function<Result<size_t>(
      const ConfigValue& connection, const std::string& topic,
      const std::function<void(int32_t partition, std::string_view key, const std::string* value)>&
          each,
      const std::vector<int32_t>* only, const std::function<bool()>& stop,
      std::map<int32_t, int64_t>* positions)>;
  TopicReader read_topic;
  // Follows `topic` from its beginning until `stop` (connectors::FollowTopic): how a cluster
  // member learns the others' API addresses and partitions; needed with `cluster`.
  using TopicFollower = std::function<Status(
      const ConfigValue& connection, const std::string& topic,
      const std::function<void(std::string_view key, const std::string* value)>& each,
      const std::function<bool()>& stop)>;
  TopicFollower follow_topic;
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> Create(AppConfig config, const Registry& registry,
                                                const Clock& clock, EngineOptions options);
  ~Engine();

  // Starts sinks, workers, sources and the HTTP listener.
  Status Start();
  // For replay: true once every source is finished and nothing is in flight.
  bool Idle() const;
  // Sources → workers → sinks (until the shutdown deadline) → done. Idempotent.
  void Stop();

  bool Ready() const;
  MetricsRegistry& metrics();

  // Compiles and tests the rule files again and, if all is well, switches every worker to the
  // new set between two messages. On failure the running set stays. Thread-safe.
  Status ReloadRules(std::string_view why);
  // JSON: every rule (or one; empty if there is no such rule) with version, state, counters.
  std::string RulesJson(std::string_view name) const;
  // Port of the API listener (0 when none), for tests using port 0.
  int api_port() const;

  struct Counts {
    uint64_t in = 0, done = 0, dead_lettered = 0, abandoned = 0;
  };
  Counts counts() const;

  class Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace gnomon::engine

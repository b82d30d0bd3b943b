// SPDX-License-Identifier: Apache-2.0
// Source and Sink interfaces, their factories, and the Registry connectors register into.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gnomon/core/clock.h"
#include "gnomon/core/config.h"
#include "gnomon/core/message.h"
#include "gnomon/core/metrics.h"
#include "gnomon/core/status.h"

namespace gnomon {

using Deadline = std::chrono::steady_clock::time_point;

// One output record on its way to a sink.
struct Record {
  std::string payload;  // JSON text, or raw bytes for string emits
  bool json = true;     // false: payload is raw bytes (a Lua string emit)
  bool null_value = false;  // no value at all (a Kafka tombstone); payload is ignored
  std::string key;      // record key (Kafka); device id unless the emit gives one
  std::string topic;    // destination topic (MQTT publish, Kafka override); empty: sink default
  Headers headers;
  int qos = -1;  // -1: the sink's default
  bool retain = false;

  // Provenance, for headers and dead letters.
  std::string device;
  std::string rule;
  std::string source_topic;
  const std::string* source = nullptr;
  int64_t ts_ms = 0;
  int attempts = 0;

  // Holds one Hold() of the originating message until the sink reports the record.
  Delivery* delivery = nullptr;
  // The engine's routing tag (which sink took the record); sinks leave it alone.
  int32_t route = -1;
};

// Implemented by the engine. Sinks report every record they took, exactly once.
class DeliveryReporter {
 public:
  virtual ~DeliveryReporter() = default;
  // ok: the record is durable at the destination. An error: the sink gave up on it (the engine
  // dead-letters it with the status as reason). kCancelled: shutdown before delivery (the
  // originating message is abandoned, not acknowledged).
  virtual void Report(Record& record, const Status& status) = 0;
};

class Sink {
 public:
  virtual ~Sink() = default;
  virtual Status Start() = 0;
  // Takes `record`. May block while the sink is at capacity: that is the back-pressure that
  // slows workers and, through them, sources. Thread-safe.
  virtual void Send(Record&& record) = 0;
  // Delivers what is queued until `deadline`, then reports the rest as kCancelled.
  virtual void Stop(Deadline deadline) = 0;
  virtual bool Ready() const { return true; }
  virtual size_t QueueDepth() const { return 0; }
};

// Implemented by the engine; what sources hand messages to.
class Ingest {
 public:
  virtual ~Ingest() = default;
  // Takes a message with its acknowledgement handle (may be null). Blocks while the engine is
  // at capacity. Returns false when the engine is stopping (the message was not taken; the
  // handle was abandoned and deleted).
  virtual bool Submit(Message&& m, std::unique_ptr<AckHandle> ack) = 0;
  // A message the source could not route (no device id, oversize): counted and dead-lettered.
  virtual void Reject(Message&& m, std::unique_ptr<AckHandle> ack, std::string_view reason,
                      std::string_view error) = 0;
};

class Source {
 public:
  virtual ~Source() = default;
  virtual Status Start(Ingest& ingest) = 0;
  // Stops taking messages. After it returns, no more Submit calls come from this source.
  virtual void Stop() = 0;
  virtual bool Ready() const { return true; }
  // True once a finite source (a file) has submitted everything.
  virtual bool Finished() const { return false; }
};

// A request on the API listener for a source that serves one (HTTP ingest).
struct ApiRequest {
  std::string_view path;  // what follows the registered prefix
  std::string_view body;
  std::string_view content_type;
  const std::vector<std::pair<std::string, std::string>>* query = nullptr;
};

struct ApiResponse {
  int status = 200;
  std::string body;  // JSON
  std::vector<std::pair<std::string, std::string>> headers;
};

// Implemented by the engine: routes POST requests under `prefix` (e.g. "/v1/ingest/") to a
// source, after the API's bearer-token check. Handlers run on the listener's threads.
class ApiRouter {
 public:
  virtual ~ApiRouter() = default;
  virtual Status AddPost(std::string prefix, std::function<ApiResponse(const ApiRequest&)> handler,
                         size_t max_body_bytes) = 0;
};

// What a factory gets besides its own config.
struct PluginContext {
  MetricsRegistry& metrics;
  DeliveryReporter& reporter;
  const Clock& clock;
  std::string data_dir;
  std::string base_dir;                    // directory of the config file: relative paths start here
  std::string name;                        // the entry's name
  const ConfigValue* connection = nullptr;  // the named connection's config, if any
  int connection_users = 1;                 // entries of the same kind sharing that connection
  // The engine's tag for this sink's records (Record::route). A sink that reports records it
  // read back from its own storage (an outbox after a restart) sets it on them.
  int32_t route = -1;
  ApiRouter* api = nullptr;  // sources only
  // Topic prefixes that are gnomon's own (shadow requests and answers, presence events): a
  // source that takes topics from clients (HTTP ingest) refuses them.
  std::vector<std::string> reserved_topic_prefixes;
};

class SourceFactory {
 public:
  virtual ~SourceFactory() = default;
  // The embedded schema for entries of this type, e.g. "sources/mqtt.json" (or, starting
  // with '{', the schema's JSON text itself).
  virtual std::string_view schema() const = 0;
  // Cross-field checks after schema validation; add problems to `errors` with `path`.
  virtual void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const {}
  virtual Result<std::unique_ptr<Source>> Create(const ConfigValue& cfg, PluginContext& ctx) = 0;
};

class SinkFactory {
 public:
  virtual ~SinkFactory() = default;
  virtual std::string_view schema() const = 0;
  virtual void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const {}
  virtual Result<std::unique_ptr<Sink>> Create(const ConfigValue& cfg, PluginContext& ctx) = 0;
};

// Parse a plugin's typed config once, then create from it.
template <typename Config>
class TypedSinkFactory : public SinkFactory {
 public:
  virtual Result<Config> Parse(const ConfigValue& cfg, const PluginContext& ctx) const = 0;
  virtual Result<std::unique_ptr<Sink>> CreateTyped(Config config, PluginContext& ctx) = 0;
  Result<std::unique_ptr<Sink>> Create(const ConfigValue& cfg, PluginContext& ctx) final {
    GNOMON_ASSIGN_OR_RETURN(Config config, Parse(cfg, ctx));
    return CreateTyped(std::move(config), ctx);
  }
};

template <typename Config>
class TypedSourceFactory : public SourceFactory {
 public:
  virtual Result<Config> Parse(const ConfigValue& cfg, const PluginContext& ctx) const = 0;
  virtual Result<std::unique_ptr<Source>> CreateTyped(Config config, PluginContext& ctx) = 0;
  Result<std::unique_ptr<Source>> Create(const ConfigValue& cfg, PluginContext& ctx) final {
    GNOMON_ASSIGN_OR_RETURN(Config config, Parse(cfg, ctx));
    return CreateTyped(std::move(config), ctx);
  }
};

// Connector types by name. Filled explicitly by RegisterBuiltinConnectors(); no static init.
class Registry {
 public:
  void AddSource(std::string type, std::unique_ptr<SourceFactory> f) {
    sources_[std::move(type)] = std::move(f);
  }
  void AddSink(std::string type, std::unique_ptr<SinkFactory> f) {
    sinks_[std::move(type)] = std::move(f);
  }
  // The schema of a connection of `type` (e.g. "connections/mqtt.json").
  void AddConnection(std::string type, std::string schema) {
    connections_[std::move(type)] = std::move(schema);
  }
  SourceFactory* source(std::string_view type) const {
    auto it = sources_.find(std::string(type));
    return it == sources_.end() ? nullptr : it->second.get();
  }
  SinkFactory* sink(std::string_view type) const {
    auto it = sinks_.find(std::string(type));
    return it == sinks_.end() ? nullptr : it->second.get();
  }
  const std::string* connection_schema(std::string_view type) const {
    auto it = connections_.find(std::string(type));
    return it == connections_.end() ? nullptr : &it->second;
  }
  const std::map<std::string, std::unique_ptr<SourceFactory>>& sources() const { return sources_; }
  const std::map<std::string, std::unique_ptr<SinkFactory>>& sinks() const { return sinks_; }
  const std::map<std::string, std::string>& connections() const { return connections_; }

 private:
  std::map<std::string, std::unique_ptr<SourceFactory>> sources_;
  std::map<std::string, std::unique_ptr<SinkFactory>> sinks_;
  std::map<std::string, std::string> connections_;
};

// `path` relative to `base_dir` unless absolute (or "-").
std::string ResolvePath(const std::string& base_dir, const std::string& path);

// How a source finds the device id: `topic[N]`, `payload.FIELD` (dotted path) or `key`.
class DeviceRule {
 public:
  static Result<DeviceRule> Parse(std::string_view spec);
  // The device id of `m`, or an error saying why there is none.
  Result<std::string> Extract(const Message& m) const;
  const std::string& spec() const { return spec_; }

 private:
  enum class Kind { kTopic, kPayload, kKey };
  Kind kind_ = Kind::kTopic;
  int level_ = 0;
  std::vector<std::string> path_;
  std::string spec_;
};

}  // namespace gnomon

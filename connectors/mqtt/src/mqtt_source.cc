// SPDX-License-Identifier: Apache-2.0
// MQTT source. Delivery guarantee (see docs/mqtt.md): the PUBACK of an incoming QoS 1 message
// goes out once the read burst it came in was handed to the engine's queues, so the broker
// considers a message delivered as soon as it reaches gnomon's memory. gnomon therefore
// guarantees processing of every received message across clean shutdowns (SIGTERM drains),
// and relies on the persistent session for messages published while it is down; a crash
// (kill -9) can lose the messages in its queues.
#include <fmt/format.h>
#include <simdjson.h>

#include "gnomon/connectors/mqtt.h"
#include "gnomon/core/device_rule.h"
#include "gnomon/core/factory.h"
#include "gnomon/core/log.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/source.h"
#include "gnomon/core/topic.h"
#include "mqtt_client.h"
#include "mqtt_internal.h"

namespace gnomon::connectors {
namespace {

class MqttSource final : public Source {
 public:
  MqttSource(MqttSourceConfig config, PluginContext& ctx)
      : config_(std::move(config)),
        name_(ctx.name),
        clock_(ctx.clock),
        // A payload past max_payload_bytes is dead-lettered by its head; room for the topic
        // and the properties on top.
        client_(config_.connection, config_.client_id, "source " + ctx.name,
                config_.max_payload_bytes + kHeaderRoom),
        dropped_oversize_(ctx.metrics.GetCounter("gnomon_source_bad_records_total",
                                                 "Input records that could not be read",
                                                 {{"source", ctx.name}})) {}

  ~MqttSource() override { Stop(); }

  // gnomon::Source
  Status Start(Ingest& ingest) override {
    ingest_ = &ingest;
    MqttClient::Callbacks cb;
    cb.on_connect = [this] { Subscribe(); };
    cb.on_message = [this](const MqttMessage& m) { OnMessage(m); };
    cb.on_reads_done = [this] { Flush(); };
    return client_.Start(std::move(cb));
  }

  void Stop() override { client_.Stop(); }

  bool Ready() const override { return client_.connected(); }

 private:
  void Subscribe() {
    for (const auto& t : config_.topics) {
      client_.Subscribe(t, config_.qos);
    }
  }

  // Hands the batched messages to the engine. Blocks while the engine is full: the network
  // loop stops reading, TCP pushes back, and the broker holds the rest in the session queue.
  void Flush() {
    if (!batch_.empty()) {
      ingest_->SubmitBatch(batch_);
      batch_.clear();
      batch_bytes_ = 0;
    }
  }

  void OnMessage(const MqttMessage& mm) {
    Message m;
    m.source = &name_;
    m.topic = mm.topic;
    m.ts_ms = clock_.NowMs();
    size_t len = mm.payload_size;
    if (len > config_.max_payload_bytes) {
      Flush();  // what came before it goes first
      dropped_oversize_->Inc();
      m.payload.assign(mm.payload.substr(0, 1024));  // keep the head for the dead letter
      ingest_->Reject(std::move(m), nullptr, "oversize",
                      fmt::format("payload of {} bytes exceeds max_payload_bytes {}", len,
                                  config_.max_payload_bytes));
      return;
    }
    m.payload.reserve(len + simdjson::SIMDJSON_PADDING);
    m.payload.assign(mm.payload);
    // MQTT 5 user properties → headers.
    for (const auto& [k, v] : mm.user_properties) {
      m.headers.emplace_back(k, v);
    }
    auto device = config_.device.Extract(m);
    if (!device.ok()) {
      Flush();
      ingest_->Reject(std::move(m), nullptr, "no_device", device.status().message());
      return;
    }
    m.device = std::move(device).value();
    // Batched until the client has read what the socket holds (on_reads_done) or the batch is
    // full: the workers are woken once per batch, not once per message.
    batch_bytes_ += m.payload.size() + m.topic.size();
    batch_.push_back(std::move(m));
    if (batch_.size() >= kMaxBatch || batch_bytes_ >= kMaxBatchBytes) {
      Flush();
    }
  }

  // At most this many messages (and bytes of payload and topic) wait in a batch.
  static constexpr size_t kMaxBatch = 64;
  static constexpr size_t kMaxBatchBytes = 1 << 20;
  static constexpr size_t kHeaderRoom = 256 * 1024;

  MqttSourceConfig config_;
  std::string name_;
  const Clock& clock_;
  MqttClient client_;
  Counter* dropped_oversize_;
  Ingest* ingest_ = nullptr;
  std::vector<Message> batch_;  // on the client thread only
  size_t batch_bytes_ = 0;
};

class MqttSourceFactory final : public TypedSourceFactory<MqttSourceConfig> {
 public:
  std::string_view schema() const override { return "sources/mqtt.json"; }
  void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const override {
    if (const ConfigValue* topics = cfg.Get("topics")) {
      for (size_t i = 0; i < topics->items().size(); ++i) {
        Status st = ValidateTopicFilter(topics->items()[i].scalar());
        if (!st.ok()) {
          errors.Add(&topics->items()[i], fmt::format("{}.topics[{}]", path, i), st.message());
        }
      }
    }
    auto rule = DeviceRule::Parse(cfg.GetString("device", "topic[2]"));
    if (!rule.ok()) {
      errors.Add(cfg.Get("device"), path + ".device", rule.status().message());
    } else if (cfg.GetString("device") == "key") {
      errors.Add(cfg.Get("device"), path + ".device", "MQTT messages have no key");
    }
  }
  Result<MqttSourceConfig> Parse(const ConfigValue& cfg, const PluginContext& ctx) const override {
    MqttSourceConfig c;
    GNOMON_ASSIGN_OR_RETURN(c.connection, MqttConnectionConfig::Parse(*ctx.connection));
    c.client_id = ctx.connection_users > 1 ? c.connection.client_id + "-" + ctx.name
                                           : c.connection.client_id;
    c.topics = cfg.GetStrings("topics");
    if (!ctx.instance_id.empty()) {
      // A cluster: each instance its own session (a restarted one takes its queue back), and
      // each message to one instance of the group (MQTT 5 shared subscriptions; mosquitto
      // takes the same form from 3.1.1 clients).
      c.client_id += "-" + ctx.instance_id;
      for (auto& t : c.topics) {
        if (!ctx.share_group.empty()) {  // (the shadow service's requests are not shared)
          t = fmt::format("$share/{}/{}", ctx.share_group, t);
        }
      }
    }
    c.qos = static_cast<int>(cfg.GetInt("qos", 1));
    GNOMON_ASSIGN_OR_RETURN(c.device, DeviceRule::Parse(cfg.GetString("device", "topic[2]")));
    c.max_payload_bytes = static_cast<size_t>(cfg.GetInt("max_payload_bytes", 1 << 20));
    return c;
  }
  Result<std::unique_ptr<Source>> CreateTyped(MqttSourceConfig c, PluginContext& ctx) override {
    return std::unique_ptr<Source>(new MqttSource(std::move(c), ctx));
  }
};

}  // namespace

void RegisterMqttConnector(Registry& registry) {
  registry.AddConnection("mqtt", "connections/mqtt.json");
  registry.AddSource("mqtt", std::make_unique<MqttSourceFactory>());
  registry.AddSink("mqtt", NewMqttSinkFactory());
}

}  // namespace gnomon::connectors

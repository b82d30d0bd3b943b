// SPDX-License-Identifier: Apache-2.0
// MQTT sink: publishes records with a bounded in-flight window. A QoS 1 record is reported
// delivered on PUBACK (QoS 2 on PUBCOMP); QoS 0 once the client has queued it (at-most-once
// by protocol).
#include <fmt/format.h>

#include <condition_variable>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "gnomon/core/factory.h"
#include "gnomon/core/log.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/queue.h"
#include "gnomon/core/record.h"
#include "gnomon/core/sink.h"
#include "gnomon/core/topic.h"
#include "mqtt_client.h"
#include "mqtt_internal.h"

namespace gnomon::connectors {
namespace {

class MqttSink final : public Sink {
 public:
  MqttSink(MqttSinkConfig config, PluginContext& ctx)
      : config_(std::move(config)),
        name_(ctx.name),
        reporter_(ctx.reporter),
        queue_(config_.queue),
        client_(config_.connection, config_.client_id, "sink " + ctx.name),
        inflight_gauge_(ctx.metrics.GetGauge("gnomon_sink_inflight",
                                             "Records sent and awaiting acknowledgement",
                                             {{"sink", ctx.name}})) {}

  ~MqttSink() override {
    if (thread_.joinable()) {
      Stop(std::chrono::steady_clock::now());
    }
  }

  // gnomon::Sink
  Status Start() override {
    MqttClient::Callbacks cb;
    cb.on_connect = [this] { cv_.notify_all(); };
    cb.on_disconnect = [this] { OnDisconnect(); };
    cb.on_publish = [this](int mid, int reason) { OnPublish(mid, reason); };
    client_.set_send_maximum(config_.max_inflight);
    GNOMON_RETURN_IF_ERROR(client_.Start(std::move(cb)));
    thread_ = std::jthread([this](const std::stop_token& st) { Run(st); });
    return {};
  }

  void Send(Record&& record) override {
    if (!queue_.Push(std::move(record))) {
      reporter_.Report(record, Status(StatusCode::kCancelled, "sink stopped"));
    }
  }

  void Stop(Deadline deadline) override {
    {
      MutexLock lock(mu_);
      deadline_ = deadline;
    }
    queue_.Close();
    cv_.notify_all();
    if (thread_.joinable()) {
      thread_.join();  // drains the queue and waits for acks until the deadline
    }
    client_.Stop();
    std::unordered_map<int, Record> left;
    {
      MutexLock lock(mu_);
      left.swap(inflight_);
    }
    for (auto& [mid, r] : left) {
      reporter_.Report(r, Status(StatusCode::kCancelled, "sink stopped before acknowledgement"));
    }
  }

  bool Ready() const override { return client_.connected(); }
  size_t QueueDepth() const override { return queue_.size(); }

 private:
  void Run(const std::stop_token& st) {
    pthread_setname_np(pthread_self(), "gnomon-mqtt-snk");
    std::vector<Record> batch;
    while (true) {
      batch.clear();
      if (!queue_.PopBatchFor(batch, 256, std::chrono::milliseconds(200)) && batch.empty()) {
        break;  // closed and drained
      }
      for (Record& r : batch) {
        if (!Publish(r)) {
          // Stopping with the broker unreachable: what is left is abandoned, not lost; the
          // source messages are not acknowledged.
          reporter_.Report(r, Status(StatusCode::kCancelled, "sink stopped before delivery"));
        }
      }
    }
    // Wait for outstanding acknowledgements until the deadline.
    MutexLock lock(mu_);
    cv_.wait_until(lock.native(), deadline_, [&] {
      mu_.AssertHeld();
      return inflight_.empty();
    });
  }

  // Returns false only when stopping past the deadline without a connection.
  bool Publish(Record& r) {
    if (r.topic.empty()) {
      r.topic = config_.topic;
      size_t pos = r.topic.find("${device}");
      if (pos != std::string::npos) {
        r.topic.replace(pos, 9, r.device);
      }
    }
    if (Status st = ValidateTopicName(r.topic); !st.ok()) {
      reporter_.Report(r, InvalidArgument(fmt::format("sink {}: {}", name_, st.message())));
      return true;
    }
    int qos = r.qos >= 0 ? r.qos : config_.qos;
    bool retain = r.retain || config_.retain;
    MutexLock lock(mu_);
    while (true) {
      cv_.wait_until(lock.native(),
                     std::min(deadline_,
                              std::chrono::steady_clock::now() + std::chrono::milliseconds(200)),
                     [&] {
                       mu_.AssertHeld();
                       return client_.connected() &&
                              inflight_.size() < static_cast<size_t>(config_.max_inflight);
                     });
      if (client_.connected() && inflight_.size() < static_cast<size_t>(config_.max_inflight)) {
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline_) {
        return false;
      }
    }
    lock.Unlock();
    Result<int> sent = client_.Publish(r.topic, r.payload, qos, retain, r.headers);
    if (!sent.ok() && sent.status().code() != StatusCode::kUnavailable) {
      reporter_.Report(r, InvalidArgument(fmt::format("sink {}: publish to {}: {}", name_, r.topic,
                                                      sent.status().message())));
      return true;
    }
    if (!sent.ok()) {
      // Connection dropped between the check and the publish: try again once connected.
      return Publish(r);
    }
    int mid = sent.value();
    lock.Lock();
    // QoS 0 is at-most-once by protocol: delivered once the client has queued it.
    if (qos == 0 || early_.erase(mid) > 0) {  // or acknowledged before we recorded it
      lock.Unlock();
      reporter_.Report(r, Status());
      return true;
    }
    r.qos = qos;
    inflight_.emplace(mid, std::move(r));
    inflight_gauge_->Set(static_cast<int64_t>(inflight_.size()));
    return true;
  }

  void OnPublish(int mid, int reason) {
    Record r;
    {
      MutexLock lock(mu_);
      auto it = inflight_.find(mid);
      if (it == inflight_.end()) {
        early_.insert(mid);
        return;
      }
      r = std::move(it->second);
      inflight_.erase(it);
      inflight_gauge_->Set(static_cast<int64_t>(inflight_.size()));
    }
    cv_.notify_all();
    if (reason >= 128) {
      reporter_.Report(
          r,
          InvalidArgument(fmt::format(
              "sink {}: broker refused publish to {}: {}", name_, r.topic,
              mqtt::ReasonText(client_.config().v5, mqtt::kPuback, static_cast<uint8_t>(reason)))));
    } else {
      reporter_.Report(r, Status());
    }
  }

  // QoS 1 and 2 messages in flight are resent by the client after reconnecting, so nothing is
  // requeued here.
  void OnDisconnect() { cv_.notify_all(); }

  MqttSinkConfig config_;
  std::string name_;
  DeliveryReporter& reporter_;
  BoundedQueue<Record> queue_;
  MqttClient client_;
  Gauge* inflight_gauge_;
  Mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<int, Record> inflight_ GNOMON_GUARDED_BY(mu_);
  std::unordered_set<int> early_ GNOMON_GUARDED_BY(mu_);
  Deadline deadline_ GNOMON_GUARDED_BY(mu_) = Deadline::max();
  std::jthread thread_;
};

class MqttSinkFactory final : public TypedSinkFactory<MqttSinkConfig> {
 public:
  std::string_view schema() const override { return "sinks/mqtt.json"; }
  Result<MqttSinkConfig> Parse(const ConfigValue& cfg, const PluginContext& ctx) const override {
    MqttSinkConfig c;
    GNOMON_ASSIGN_OR_RETURN(c.connection, MqttConnectionConfig::Parse(*ctx.connection));
    c.client_id = c.connection.client_id + "-pub" +
                  (ctx.connection_users > 1 ? "-" + ctx.name : std::string()) +
                  (ctx.instance_id.empty() ? std::string() : "-" + ctx.instance_id);
    c.topic = cfg.GetString("topic");
    c.qos = static_cast<int>(cfg.GetInt("qos", 1));
    c.retain = cfg.GetBool("retain", false);
    c.max_inflight = static_cast<int>(cfg.GetInt("max_inflight", 1024));
    c.queue = static_cast<size_t>(cfg.GetInt("queue", 8192));
    return c;
  }
  Result<std::unique_ptr<Sink>> CreateTyped(MqttSinkConfig c, PluginContext& ctx) override {
    return std::unique_ptr<Sink>(new MqttSink(std::move(c), ctx));
  }
};

}  // namespace

std::unique_ptr<SinkFactory> NewMqttSinkFactory() { return std::make_unique<MqttSinkFactory>(); }

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
// MQTT sink: publishes records with a bounded in-flight window, from the client's own thread
// (Send queues and wakes it; no thread of the sink's own). A QoS 1 record is reported
// delivered on PUBACK (QoS 2 on PUBCOMP); QoS 0 once the client has queued it (at-most-once
// by protocol).
#include <fmt/format.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <unordered_map>

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
    if (started_) {
      Stop(std::chrono::steady_clock::now());
    }
  }

  // gnomon::Sink
  Status Start() override {
    MqttClient::Callbacks cb;
    cb.on_connect = [this] { cv_.notify_all(); };
    cb.on_disconnect = [this] { cv_.notify_all(); };
    cb.on_publish = [this](int mid, int reason) { OnPublish(mid, reason); };
    cb.on_pump = [this] { return Pump(); };
    client_.set_send_maximum(config_.max_inflight);
    GNOMON_RETURN_IF_ERROR(client_.Start(std::move(cb)));
    started_ = true;
    return {};
  }

  // Queued for the client's thread, which publishes from the queue while it is connected (one
  // hand-off from the worker to the network, woken once per burst).
  void Send(Record&& record) override {
    if (!queue_.Push(std::move(record))) {
      reporter_.Report(record, Status(StatusCode::kCancelled, "sink stopped"));
      return;
    }
    client_.Notify();
  }

  void Stop(Deadline deadline) override {
    if (!started_) {
      return;
    }
    started_ = false;
    queue_.Close();
    client_.Notify();
    {
      // What is queued goes out and is acknowledged, until the deadline.
      MutexLock lock(mu_);
      cv_.wait_until(lock.native(), deadline, [&] {
        mu_.AssertHeld();
        return inflight_.empty() && held_.empty() && !pumping_ && queue_.size() == 0;
      });
    }
    client_.Stop();
    // Stopping with the broker unreachable: what is left is abandoned, not lost; the source
    // messages are not acknowledged.
    std::vector<Record> left;
    while (queue_.PopBatchFor(left, 1024, std::chrono::milliseconds(0)) && !left.empty()) {
      for (Record& r : left) {
        reporter_.Report(r, Status(StatusCode::kCancelled, "sink stopped before delivery"));
      }
      left.clear();
    }
    std::unordered_map<int, Record> unacked;
    std::deque<Record> held;
    {
      MutexLock lock(mu_);
      unacked.swap(inflight_);
      held.swap(held_);
    }
    for (Record& r : held) {
      reporter_.Report(r, Status(StatusCode::kCancelled, "sink stopped before delivery"));
    }
    for (auto& [mid, r] : unacked) {
      reporter_.Report(r, Status(StatusCode::kCancelled, "sink stopped before acknowledgement"));
    }
  }

  bool Ready() const override { return client_.connected(); }
  size_t QueueDepth() const override { return queue_.size(); }

 private:
  // At most this many records a pump, so reads and acknowledgements are not held up behind a
  // full queue.
  static constexpr size_t kPumpRecords = 1024;

  // On the client's thread, while connected: publishes what is queued while fewer than
  // max_inflight wait for acknowledgement and the connection takes more. True when it stopped
  // at its own cap with more queued.
  bool Pump() {
    {
      MutexLock lock(mu_);
      pumping_ = true;  // records may be between the queue and inflight_
    }
    struct Done {
      MqttSink* sink;
      ~Done() {
        {
          MutexLock lock(sink->mu_);
          sink->pumping_ = false;
        }
        sink->cv_.notify_all();
      }
    } done_guard{this};
    size_t done = 0;
    while (done < kPumpRecords) {
      size_t room = 0;
      batch_.clear();
      {
        MutexLock lock(mu_);
        if (inflight_.size() >= static_cast<size_t>(config_.max_inflight)) {
          return false;  // an acknowledgement wakes the client, which pumps again
        }
        room = std::min(static_cast<size_t>(config_.max_inflight) - inflight_.size(),
                        kPumpRecords - done);
        // What a full connection held back goes first.
        while (!held_.empty() && batch_.size() < room) {
          batch_.push_back(std::move(held_.front()));
          held_.pop_front();
        }
      }
      if (batch_.empty()) {
        if (!queue_.TryPopBatch(batch_, room)) {
          return false;  // drained
        }
      }
      for (size_t i = 0; i < batch_.size(); ++i, ++done) {
        if (!Publish(batch_[i])) {
          // The connection's buffer is full (its socket is not taking more): these wait, in
          // order, until it is written.
          MutexLock lock(mu_);
          for (size_t j = batch_.size(); j > i; --j) {
            held_.push_front(std::move(batch_[j - 1]));
          }
          return false;
        }
      }
    }
    return true;
  }

  // False when the connection takes no more now (the record was not sent).
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
    Result<int> sent = client_.Publish(r.topic, r.payload, qos, retain, r.headers);
    if (!sent.ok()) {
      StatusCode code = sent.status().code();
      if (code == StatusCode::kResourceExhausted || code == StatusCode::kUnavailable) {
        return false;
      }
      reporter_.Report(r, InvalidArgument(fmt::format("sink {}: publish to {}: {}", name_, r.topic,
                                                      sent.status().message())));
      return true;
    }
    // QoS 0 is at-most-once by protocol: delivered once the client has queued it.
    if (qos == 0) {
      reporter_.Report(r, Status());
      return true;
    }
    // Acknowledged no sooner than the client's thread (this one) writes it.
    r.qos = qos;
    MutexLock lock(mu_);
    inflight_.emplace(sent.value(), std::move(r));
    inflight_gauge_->Set(static_cast<int64_t>(inflight_.size()));
    return true;
  }

  void OnPublish(int mid, int reason) {
    Record r;
    {
      MutexLock lock(mu_);
      auto it = inflight_.find(mid);
      if (it == inflight_.end()) {
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

  MqttSinkConfig config_;
  std::string name_;
  DeliveryReporter& reporter_;
  BoundedQueue<Record> queue_;
  MqttClient client_;
  Gauge* inflight_gauge_;
  bool started_ = false;
  std::vector<Record> batch_;  // the client thread's
  Mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<int, Record> inflight_ GNOMON_GUARDED_BY(mu_);
  std::deque<Record> held_ GNOMON_GUARDED_BY(mu_);  // taken from the queue, not yet sent
  bool pumping_ GNOMON_GUARDED_BY(mu_) = false;
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

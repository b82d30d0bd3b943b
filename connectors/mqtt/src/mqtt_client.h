// SPDX-License-Identifier: Apache-2.0
// A libmosquitto client on its own named thread, with reconnect by exponential backoff with
// jitter (reset after a successful connect).
#pragma once

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "gnomon/core/config.h"
#include "gnomon/core/status.h"

namespace gnomon::connectors {

struct MqttConnectionConfig {
  std::string host;
  int port = 1883;
  bool tls = false;
  std::string client_id;
  std::string username;
  std::string password;
  bool v5 = true;
  int keepalive_s = 60;
  int64_t session_expiry_s = 86400;
  bool clean_session = false;
  std::string ca_file, cert_file, key_file;
  bool tls_insecure = false;
  int64_t reconnect_initial_ms = 1000;
  int64_t reconnect_max_ms = 30000;

  static Result<MqttConnectionConfig> Parse(const ConfigValue& c);
};

class MqttClient {
 public:
  struct Callbacks {
    std::function<void()> on_connect;     // on the client thread, after each (re)connect
    std::function<void()> on_disconnect;  // on the client thread
    std::function<void(const mosquitto_message*, const mosquitto_property*)> on_message;
    std::function<void(int mid, int reason)> on_publish;  // reason >= 128: refused
    // On the client thread after each run of reads (on_message calls), and before a disconnect
    // is reported or the thread ends: where a source hands over what it batched.
    std::function<void()> on_reads_done;
  };

  MqttClient(MqttConnectionConfig config, std::string client_id, std::string owner);
  ~MqttClient();

  Status Start(Callbacks callbacks);
  // Disconnects and joins the thread. No callback runs after it returns.
  void Stop();

  bool connected() const { return connected_.load(); }
  mosquitto* handle() { return mosq_; }
  const MqttConnectionConfig& config() const { return config_; }

 private:
  void Run(const std::stop_token& st);
  void ReadsDone() {
    if (callbacks_.on_reads_done) {
      callbacks_.on_reads_done();
    }
  }
  static void OnConnect(mosquitto*, void* self, int rc, int flags, const mosquitto_property*);
  static void OnDisconnect(mosquitto*, void* self, int rc, const mosquitto_property*);
  static void OnMessage(mosquitto*, void* self, const mosquitto_message*, const mosquitto_property*);
  static void OnPublish(mosquitto*, void* self, int mid, int reason, const mosquitto_property*);

  MqttConnectionConfig config_;
  std::string client_id_;
  std::string owner_;  // "source telemetry" / "sink devices", for logs
  Callbacks callbacks_;
  mosquitto* mosq_ = nullptr;
  std::atomic<bool> connected_{false};
  std::atomic<bool> connect_ok_{false};
  std::jthread thread_;
};

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
// A plain libmosquitto client for the test's side of a broker (integration tests only).
#pragma once

#include <mosquitto.h>

#include <atomic>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "tests/support/test_support.h"

namespace gnomon::testing {

// How a Client logs in: a user name and password, and TLS with a CA file.
struct ClientLogin {
  std::string username;
  std::string password;
  std::string ca_file;  // set: TLS, the server's certificate checked against it
};

class Client {
 public:
  Client(int port, const std::string& id, const ClientLogin& login = {}) {
    mosquitto_lib_init();
    mosq_ = mosquitto_new(id.c_str(), true, this);
    mosquitto_message_callback_set(mosq_, [](mosquitto*, void* self, const mosquitto_message* m) {
      auto* c = static_cast<Client*>(self);
      std::lock_guard lock(c->mu_);
      c->received_.emplace_back(m->topic,
                                std::string(static_cast<const char*>(m->payload),
                                            static_cast<size_t>(m->payloadlen)));
    });
    mosquitto_publish_callback_set(mosq_, [](mosquitto*, void* self, int) {
      auto* c = static_cast<Client*>(self);
      std::lock_guard lock(c->mu_);
      c->acked_++;
    });
    mosquitto_subscribe_callback_set(mosq_, [](mosquitto*, void* self, int, int n, const int* qos) {
      auto* c = static_cast<Client*>(self);
      c->granted_ = n > 0 ? qos[0] : -1;
      c->subacks_++;
    });
    mosquitto_connect_callback_set(mosq_, [](mosquitto*, void* self, int rc) {
      static_cast<Client*>(self)->connack_ = rc;
      static_cast<Client*>(self)->connected_ = rc == 0;
    });
    mosquitto_disconnect_callback_set(mosq_, [](mosquitto*, void* self, int) {
      static_cast<Client*>(self)->connected_ = false;
      static_cast<Client*>(self)->disconnects_++;
    });
    if (!login.username.empty()) {
      mosquitto_username_pw_set(mosq_, login.username.c_str(), login.password.c_str());
    }
    if (!login.ca_file.empty()) {
      mosquitto_tls_set(mosq_, login.ca_file.c_str(), nullptr, nullptr, nullptr, nullptr);
    }
    mosquitto_connect(mosq_, "127.0.0.1", port, 30);
    mosquitto_loop_start(mosq_);
    WaitFor([&] { return connected_.load() || connack_.load() > 0 || disconnects_.load() > 0; });
  }
  bool connected() const { return connected_.load(); }
  // The CONNACK code (0 accepted, 4 bad user name or password, 5 not authorized), -1 if none
  // came (the TLS handshake or the connection failed).
  int connack() const { return connack_.load(); }
  int disconnects() const { return disconnects_.load(); }
  ~Client() {
    mosquitto_disconnect(mosq_);
    mosquitto_loop_stop(mosq_, false);
    mosquitto_destroy(mosq_);
  }
  // Returns once the broker has acknowledged the subscription: the QoS it granted, 128 if it
  // refused it, -1 without an answer.
  int Subscribe(const std::string& filter) {
    int mid = 0;
    int before = subacks_.load();
    mosquitto_subscribe(mosq_, &mid, filter.c_str(), 1);
    if (!WaitFor([&] { return subacks_.load() > before; })) {
      return -1;
    }
    return granted_.load();
  }
  void Publish(const std::string& topic, const std::string& payload, int qos = 1) {
    sent_++;
    mosquitto_publish(mosq_, nullptr, topic.c_str(), static_cast<int>(payload.size()),
                      payload.data(), qos, false);
  }
  bool AllAcked() {
    std::lock_guard lock(mu_);
    return acked_ >= sent_;
  }
  size_t count() {
    std::lock_guard lock(mu_);
    return received_.size();
  }
  std::vector<std::pair<std::string, std::string>> received() {
    std::lock_guard lock(mu_);
    return received_;
  }

 private:
  mosquitto* mosq_;
  std::atomic<bool> connected_{false};
  std::atomic<int> connack_{-1};
  std::atomic<int> granted_{-1};
  std::atomic<int> disconnects_{0};
  std::atomic<int> subacks_{0};
  std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> received_;
  int acked_ = 0;
  int sent_ = 0;
};


}  // namespace gnomon::testing

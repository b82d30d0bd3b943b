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

class Client {
 public:
  Client(int port, const std::string& id) {
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
    mosquitto_subscribe_callback_set(mosq_, [](mosquitto*, void* self, int, int, const int*) {
      static_cast<Client*>(self)->subacks_++;
    });
    mosquitto_connect_callback_set(mosq_, [](mosquitto*, void* self, int rc) {
      static_cast<Client*>(self)->connected_ = rc == 0;
    });
    mosquitto_connect(mosq_, "127.0.0.1", port, 30);
    mosquitto_loop_start(mosq_);
    WaitFor([&] { return connected_.load(); });
  }
  ~Client() {
    mosquitto_disconnect(mosq_);
    mosquitto_loop_stop(mosq_, false);
    mosquitto_destroy(mosq_);
  }
  // Returns once the broker has acknowledged the subscription.
  void Subscribe(const std::string& filter) {
    int mid = 0;
    int before = subacks_.load();
    mosquitto_subscribe(mosq_, &mid, filter.c_str(), 1);
    WaitFor([&] { return subacks_.load() > before; });
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
  std::atomic<int> subacks_{0};
  std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> received_;
  int acked_ = 0;
  int sent_ = 0;
};


}  // namespace gnomon::testing

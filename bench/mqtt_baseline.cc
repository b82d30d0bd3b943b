// SPDX-License-Identifier: Apache-2.0
// gnomon-mqtt-baseline: issue 19's hand-written baseline. What a good C++ engineer would write
// for bench/mqtt_rule.sh's workload in one thread, with no rule engine: take telemetry from
// `devices/+/telemetry` (libmosquitto, its network loop on this thread), parse it with simdjson
// On-Demand, merge every field into the device's state (an unordered_map of devices, each a
// small vector of fields holding the value's JSON text), count it, and publish an alert on
// `alerts/{device}` when the merged temperature is above 50.
//
// What it does not do, and gnomon does: acknowledge a message only after its effects are out
// (libmosquitto acknowledges a QoS 1 message before the callback runs), bound its memory
// (state and libmosquitto's outgoing queue grow as they like), isolate anything (a payload that
// throws inside the callback takes the process down), per-device order across threads (one
// thread), limits on rules, metrics, dead letters, reloads.
//
//   gnomon-mqtt-baseline --url mqtt://127.0.0.1:1883 --qos 1
#include <fmt/format.h>
#include <mosquitto.h>
#include <simdjson.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace {

volatile std::sig_atomic_t g_stop = 0;

struct Field {
  std::string key;
  std::string value;  // the value's JSON text
};

struct Device {
  std::vector<Field> fields;
  int64_t count = 0;
  double temp = 0;
};

// Heterogeneous lookup, so a device's state is found by the topic's view without a string.
struct Hash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct Baseline {
  std::unordered_map<std::string, Device, Hash, std::equal_to<>> devices;
  simdjson::ondemand::parser parser;
  std::string buffer;  // the payload with simdjson's padding after it
  std::string topic;
  fmt::memory_buffer alert;
  int qos = 1;
  int64_t messages = 0, alerts = 0, refused = 0;
};

std::string_view Trim(std::string_view s) {
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\n' || s.back() == '\r' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

// Merges one message into its device's state; false when the payload is not a JSON object.
bool Merge(Baseline& b, Device& dev, std::string_view payload) {
  b.buffer.assign(payload);
  b.buffer.resize(payload.size() + simdjson::SIMDJSON_PADDING);
  simdjson::ondemand::document doc;
  if (b.parser.iterate(b.buffer.data(), payload.size(), b.buffer.size()).get(doc)) {
    return false;
  }
  simdjson::ondemand::object obj;
  if (doc.get_object().get(obj)) {
    return false;
  }
  for (auto field : obj) {
    std::string_view key;
    if (field.unescaped_key().get(key)) {
      return false;
    }
    simdjson::ondemand::value v = field.value();
    simdjson::ondemand::json_type type;
    if (v.type().get(type)) {
      return false;
    }
    std::string_view text;
    if (type == simdjson::ondemand::json_type::object) {
      simdjson::ondemand::object o;
      if (v.get_object().get(o) || o.raw_json().get(text)) {
        return false;
      }
    } else if (type == simdjson::ondemand::json_type::array) {
      simdjson::ondemand::array a;
      if (v.get_array().get(a) || a.raw_json().get(text)) {
        return false;
      }
    } else {
      text = Trim(v.raw_json_token());
      if (key == "temp" && type == simdjson::ondemand::json_type::number) {
        double t;
        if (!v.get_double().get(t)) {
          dev.temp = t;
        }
      }
    }
    Field* slot = nullptr;
    for (auto& f : dev.fields) {
      if (f.key == key) {
        slot = &f;
        break;
      }
    }
    if (slot == nullptr) {
      slot = &dev.fields.emplace_back(Field{std::string(key), {}});
    }
    slot->value.assign(text);
  }
  return true;
}

void OnMessage(mosquitto* mosq, void* user, const mosquitto_message* m) {
  auto& b = *static_cast<Baseline*>(user);
  std::string_view topic(m->topic);
  size_t a = topic.find('/');
  size_t e = a == std::string_view::npos ? a : topic.find('/', a + 1);
  if (e == std::string_view::npos) {
    ++b.refused;
    return;
  }
  std::string_view device = topic.substr(a + 1, e - a - 1);
  auto it = b.devices.find(device);
  if (it == b.devices.end()) {
    it = b.devices.emplace(std::string(device), Device{}).first;
  }
  Device& dev = it->second;
  if (!Merge(b, dev, {static_cast<const char*>(m->payload), static_cast<size_t>(m->payloadlen)})) {
    ++b.refused;
    return;
  }
  ++dev.count;
  ++b.messages;
  if (dev.temp > 50) {
    std::string_view sent = "null";
    for (const auto& f : dev.fields) {
      if (f.key == "sent") {
        sent = f.value;
      }
    }
    b.alert.clear();
    fmt::format_to(std::back_inserter(b.alert),
                   R"({{"device":"{}","temp":{},"count":{},"sent":{}}})", device, dev.temp,
                   dev.count, sent);
    b.topic.assign("alerts/").append(device);
    mosquitto_publish(mosq, nullptr, b.topic.c_str(), static_cast<int>(b.alert.size()),
                      b.alert.data(), b.qos, false);
    ++b.alerts;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gnomon-mqtt-baseline: issue 19's hand-written MQTT → state → MQTT program"};
  std::string host = "127.0.0.1", from = "devices/+/telemetry";
  int port = 1883;
  Baseline b;
  app.add_option("--host", host);
  app.add_option("--port", port);
  app.add_option("--qos", b.qos)->check(CLI::Range(0, 1));
  app.add_option("--from", from, "Topic filter to take");
  CLI11_PARSE(app, argc, argv);
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });

  mosquitto_lib_init();
  mosquitto* mosq = mosquitto_new(fmt::format("gnomon-baseline-{}", ::getpid()).c_str(), true, &b);
  mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, 1000);
  mosquitto_max_inflight_messages_set(mosq, 1000);
  mosquitto_message_callback_set(mosq, OnMessage);
  int rc = mosquitto_connect(mosq, host.c_str(), port, 30);
  if (rc != MOSQ_ERR_SUCCESS) {
    std::fprintf(stderr, "gnomon-mqtt-baseline: cannot connect to %s:%d: %s\n", host.c_str(), port,
                 mosquitto_strerror(rc));
    return 1;
  }
  mosquitto_subscribe(mosq, nullptr, from.c_str(), b.qos);
  while (!g_stop) {
    rc = mosquitto_loop(mosq, 100, 1);
    if (rc != MOSQ_ERR_SUCCESS && !g_stop) {
      std::fprintf(stderr, "gnomon-mqtt-baseline: %s\n", mosquitto_strerror(rc));
      return 1;
    }
  }
  std::fprintf(stderr,
               "gnomon-mqtt-baseline: %lld messages, %lld alerts, %lld refused, %zu devices\n",
               static_cast<long long>(b.messages), static_cast<long long>(b.alerts),
               static_cast<long long>(b.refused), b.devices.size());
  mosquitto_disconnect(mosq);
  mosquitto_destroy(mosq);
  mosquitto_lib_cleanup();
  return 0;
}

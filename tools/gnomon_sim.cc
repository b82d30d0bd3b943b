// SPDX-License-Identifier: Apache-2.0
// gnomon-sim: a device simulator and load generator.
//   gnomon-sim devices --url mqtt://127.0.0.1:1883 --devices 20 --rate 2 --duration 30
//       N devices publish telemetry (random-walk temperatures) and print the commands they get.
//   gnomon-sim gen --devices 10000 --count 1000000 > capture.jsonl
//       a recorded file for `gnomon replay` (~200-byte telemetry messages).
//   gnomon-sim load --url ... --count 100000 --publish devices/{d}/telemetry --expect devices/+/cmd
//       publishes as fast as the QoS 1 window allows, counts what arrives on --expect, and prints
//       throughput and latency percentiles as one JSON line. --shape telemetry sends issue 19's
//       ~200-byte telemetry; --expect-count waits for fewer messages than it sent; --rate paces.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <mosquitto.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <mutex>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

std::atomic<bool> g_stop{false};

struct Url {
  std::string host = "127.0.0.1";
  int port = 1883;
};

Url ParseUrl(const std::string& s) {
  static const std::regex re("^mqtt://([^:/]+)(:([0-9]+))?/?$");
  std::smatch m;
  Url u;
  if (std::regex_match(s, m, re)) {
    u.host = m[1];
    if (m[3].matched) {
      u.port = std::stoi(m[3]);
    }
  } else {
    std::fprintf(stderr, "gnomon-sim: --url must be mqtt://host:port\n");
    std::exit(2);
  }
  return u;
}

std::string DeviceTopic(const std::string& pattern, int d) {
  std::string t = pattern;
  size_t p = t.find("{d}");
  if (p != std::string::npos) {
    t.replace(p, 3, "d" + std::to_string(d));
  }
  return t;
}

// A connected client with its network loop on a thread.
class Mqtt {
 public:
  Mqtt(const Url& url, const std::string& id, void* user) {
    mosquitto_lib_init();
    mosq_ = mosquitto_new(id.c_str(), true, user);
    mosquitto_int_option(mosq_, MOSQ_OPT_SEND_MAXIMUM, 1000);
    mosquitto_max_inflight_messages_set(mosq_, 1000);
    mosquitto_connect_callback_set(mosq_, [](mosquitto*, void*, int rc) {
      if (rc != 0) {
        std::fprintf(stderr, "gnomon-sim: broker refused: %s\n", mosquitto_connack_string(rc));
      }
    });
    int rc = mosquitto_connect(mosq_, url.host.c_str(), url.port, 30);
    if (rc != MOSQ_ERR_SUCCESS) {
      std::fprintf(stderr, "gnomon-sim: cannot connect to %s:%d: %s\n", url.host.c_str(), url.port,
                   mosquitto_strerror(rc));
      std::exit(1);
    }
    mosquitto_loop_start(mosq_);
  }
  ~Mqtt() {
    mosquitto_disconnect(mosq_);
    mosquitto_loop_stop(mosq_, false);
    mosquitto_destroy(mosq_);
  }
  mosquitto* get() { return mosq_; }

 private:
  mosquitto* mosq_;
};

// ---------------------------------------------------------------------------------------------

struct DevicesState {
  std::atomic<int64_t> commands{0};
  std::mutex mu;
  std::vector<std::string> recent;  // last commands, for the live view
};

int RunDevices(const Url& url, int devices, double rate, double duration, int qos) {
  DevicesState st;
  Mqtt m(url, fmt::format("gnomon-sim-{}", ::getpid()), &st);
  mosquitto_message_callback_set(m.get(), [](mosquitto*, void* user, const mosquitto_message* msg) {
    auto* s = static_cast<DevicesState*>(user);
    s->commands++;
    std::lock_guard lock(s->mu);
    s->recent.push_back(fmt::format("{} {}", msg->topic,
                                    std::string(static_cast<const char*>(msg->payload),
                                                static_cast<size_t>(msg->payloadlen))));
  });
  mosquitto_subscribe(m.get(), nullptr, "devices/+/cmd", 1);
  std::mt19937 rng(7);
  std::normal_distribution<double> step(0.0, 1.5);
  std::vector<double> temp(static_cast<size_t>(devices));
  for (auto& t : temp) {
    t = 35 + std::uniform_real_distribution<double>(0, 15)(rng);
  }
  auto start = Clock::now();
  auto interval = std::chrono::duration<double>(1.0 / std::max(rate, 0.001));
  int64_t sent = 0;
  auto next_print = start + std::chrono::seconds(1);
  std::printf("simulating %d devices, %.1f msg/s each; commands from gnomon appear below\n",
              devices, rate);
  std::fflush(stdout);
  auto tick = start;
  while (!g_stop && (duration <= 0 || Clock::now() - start < std::chrono::duration<double>(duration))) {
    for (int d = 0; d < devices; ++d) {
      auto& t = temp[static_cast<size_t>(d)];
      t = std::clamp(t + step(rng), 10.0, 70.0);
      std::string payload = fmt::format(R"({{"temp":{:.1f},"humidity":{},"fw":"1.2.0"}})", t,
                                        40 + static_cast<int>(rng() % 20));
      std::string topic = fmt::format("devices/d{}/telemetry", d);
      mosquitto_publish(m.get(), nullptr, topic.c_str(), static_cast<int>(payload.size()),
                        payload.data(), qos, false);
      ++sent;
    }
    tick += std::chrono::duration_cast<Clock::duration>(interval);
    std::this_thread::sleep_until(tick);
    if (Clock::now() >= next_print) {
      next_print += std::chrono::seconds(1);
      std::vector<std::string> recent;
      {
        std::lock_guard lock(st.mu);
        recent.swap(st.recent);
      }
      std::printf("[%3.0fs] sent %lld telemetry messages, received %lld fan commands\n",
                  std::chrono::duration<double>(Clock::now() - start).count(),
                  static_cast<long long>(sent), static_cast<long long>(st.commands.load()));
      for (size_t i = 0; i < std::min<size_t>(recent.size(), 3); ++i) {
        std::printf("        ← %s\n", recent[i].c_str());
      }
      std::fflush(stdout);
    }
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------

// Thermostats that keep a shadow the AWS way: they publish telemetry, listen on their
// `.../shadow/update/delta`, apply what the back end desires (the fan) and report it back, so
// the delta empties. Their temperature rises with the fan off and falls with it on.
struct ThermostatState {
  std::mutex mu;
  std::vector<bool> fan;
  std::vector<std::string> changes;
  std::atomic<int64_t> deltas{0};
  mosquitto* m = nullptr;
  int qos = 1;
};

int RunThermostats(const Url& url, int devices, double duration, int qos) {
  ThermostatState st;
  st.fan.assign(static_cast<size_t>(devices), false);
  st.qos = qos;
  Mqtt m(url, fmt::format("gnomon-sim-thermo-{}", ::getpid()), &st);
  st.m = m.get();
  mosquitto_message_callback_set(m.get(), [](mosquitto*, void* user, const mosquitto_message* msg) {
    auto* s = static_cast<ThermostatState*>(user);
    std::string topic = msg->topic;
    std::string body(static_cast<const char*>(msg->payload), static_cast<size_t>(msg->payloadlen));
    // $aws/things/dN/services/{service}/request: a thing-model service call; the thermostat
    // blinks (prints) and answers with the model's outputData.
    if (size_t sv = topic.find("/services/"); sv != std::string::npos) {
      size_t i = body.find("\"id\":\"");
      if (i == std::string::npos) {
        return;
      }
      std::string id = body.substr(i + 6, body.find('"', i + 6) - i - 6);
      std::string reply = fmt::format(R"({{"id":"{}","code":200,"data":{{"ok":true}}}})", id);
      std::string to = topic.substr(0, topic.rfind("/request")) + "/reply";
      {
        std::lock_guard lock(s->mu);
        s->changes.push_back(fmt::format("{} called: {}", topic.substr(12, sv - 12), body));
      }
      mosquitto_publish(s->m, nullptr, to.c_str(), static_cast<int>(reply.size()), reply.data(),
                        s->qos, false);
      return;
    }
    // $aws/things/dN/shadow/update/delta
    size_t a = topic.find("/d"), b = topic.find("/shadow/");
    if (a == std::string::npos || b == std::string::npos) {
      return;
    }
    int d = std::atoi(topic.c_str() + a + 2);
    bool on = body.find(R"("fan":"on")") != std::string::npos;
    bool off = body.find(R"("fan":"off")") != std::string::npos;
    if (!on && !off) {
      return;
    }
    s->deltas++;
    {
      std::lock_guard lock(s->mu);
      if (d < 0 || static_cast<size_t>(d) >= s->fan.size()) {
        return;
      }
      s->fan[static_cast<size_t>(d)] = on;
      s->changes.push_back(fmt::format("d{} fan {} (delta {})", d, on ? "on" : "off", body));
    }
    std::string reply = fmt::format(R"({{"state":{{"reported":{{"fan":"{}"}}}}}})", on ? "on" : "off");
    std::string up = fmt::format("$aws/things/d{}/shadow/update", d);
    mosquitto_publish(s->m, nullptr, up.c_str(), static_cast<int>(reply.size()), reply.data(),
                      s->qos, false);
  });
  mosquitto_subscribe(m.get(), nullptr, "$aws/things/+/shadow/update/delta", 1);
  mosquitto_subscribe(m.get(), nullptr, "$aws/things/+/services/+/request", 1);
  std::mt19937 rng(5);
  std::normal_distribution<double> noise(0.0, 0.2);
  std::vector<double> temp(static_cast<size_t>(devices));
  for (auto& t : temp) {
    t = 19 + std::uniform_real_distribution<double>(0, 6)(rng);
  }
  // Report the initial state once, as a device does when it boots.
  for (int d = 0; d < devices; ++d) {
    std::string body = R"({"state":{"reported":{"fan":"off"}}})";
    std::string up = fmt::format("$aws/things/d{}/shadow/update", d);
    mosquitto_publish(m.get(), nullptr, up.c_str(), static_cast<int>(body.size()), body.data(),
                      qos, false);
  }
  std::printf("simulating %d thermostats; they apply the fan setting gnomon desires\n", devices);
  std::fflush(stdout);
  auto start = Clock::now();
  auto tick = start;
  while (!g_stop && (duration <= 0 || Clock::now() - start < std::chrono::duration<double>(duration))) {
    std::vector<std::string> changes;
    {
      std::lock_guard lock(st.mu);
      for (int d = 0; d < devices; ++d) {
        auto& t = temp[static_cast<size_t>(d)];
        t += (st.fan[static_cast<size_t>(d)] ? -0.8 : 0.5) + noise(rng);
      }
      changes.swap(st.changes);
    }
    for (int d = 0; d < devices; ++d) {
      std::string payload = fmt::format(R"({{"temp":{:.1f}}})", temp[static_cast<size_t>(d)]);
      std::string topic = fmt::format("devices/d{}/telemetry", d);
      mosquitto_publish(m.get(), nullptr, topic.c_str(), static_cast<int>(payload.size()),
                        payload.data(), qos, false);
    }
    std::printf("[%3.0fs] %lld deltas applied\n",
                std::chrono::duration<double>(Clock::now() - start).count(),
                static_cast<long long>(st.deltas.load()));
    for (const auto& c : changes) {
      std::printf("        ← %s\n", c.c_str());
    }
    std::fflush(stdout);
    tick += std::chrono::seconds(1);
    std::this_thread::sleep_until(tick);
  }
  return st.deltas > 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------

int RunGen(int devices, int64_t count, int64_t start_ts) {
  std::mt19937 rng(11);
  std::string line;
  for (int64_t i = 0; i < count; ++i) {
    int d = static_cast<int>(i % devices);
    double temp = 20 + static_cast<double>(rng() % 4000) / 100.0;  // 20.00 .. 59.99
    line = fmt::format(
        R"({{"topic":"devices/dev{:05d}/telemetry","ts":{},"payload":{{"temp":{:.2f},"humidity":{},"battery":{},"rssi":-{},"fw":"1.2.0","seq":{},"status":"ok","loc":{{"lat":52.{},"lon":13.{}}}}}}})",
        d, start_ts + i, temp, 30 + rng() % 50, 50 + rng() % 50, 40 + rng() % 60, i,
        100000 + rng() % 900000, 100000 + rng() % 900000);
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stdout);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------

struct LoadState {
  std::mutex mu;
  std::condition_variable cv;
  int64_t inflight = 0;
  std::atomic<int64_t> received{0};
  std::vector<int64_t> latencies;  // ns, GUARDED_BY(mu)
};

// The telemetry of issue 19's workload: ~200 bytes, flat, a temperature above 50 for one
// message in six (i % 6 == 5, so a count that is a multiple of 6 ends on one).
std::string TelemetryPayload(int64_t i, int d) {
  uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ static_cast<uint32_t>(d) * 40503u;
  double temp = i % 6 == 5 ? 50.5 + h % 90 / 10.0 : 20.0 + h % 290 / 10.0;
  return fmt::format(
      R"({{"temp":{:.1f},"humidity":{},"battery":{},"rssi":-{},"fw":"1.2.0","status":"ok",)"
      R"("lat":52.{:06d},"lon":13.{:06d},"seq":{},"sent":{},"note":"{}"}})",
      temp, 30 + h % 50, 50 + (h >> 8) % 50, 40 + (h >> 4) % 60, h % 1000000, (h >> 3) % 1000000, i,
      NowNs(), std::string(36, 'x'));
}

// Publishes `count` messages (as fast as the window allows, or at `rate` per second when it is
// above 0) and waits for `expect_count` messages on `expect`.
int RunLoad(const Url& url, int64_t count, int devices, const std::string& publish,
            const std::string& expect, int qos, int window, double timeout_s, double rate,
            int64_t expect_count, const std::string& shape) {
  if (expect_count < 0) {
    expect_count = count;
  }
  LoadState st;
  st.latencies.reserve(static_cast<size_t>(count));
  Mqtt sub(url, fmt::format("gnomon-load-sub-{}", ::getpid()), &st);
  mosquitto_message_callback_set(sub.get(), [](mosquitto*, void* user, const mosquitto_message* m) {
    auto* s = static_cast<LoadState*>(user);
    // Payloads carry {"sent": ns} somewhere; find it without a JSON parser.
    std::string_view p(static_cast<const char*>(m->payload), static_cast<size_t>(m->payloadlen));
    size_t k = p.find("\"sent\":");
    int64_t lat = -1;
    if (k != std::string_view::npos) {
      lat = NowNs() - std::strtoll(p.data() + k + 7, nullptr, 10);
    }
    s->received++;
    if (lat >= 0) {
      std::lock_guard lock(s->mu);
      s->latencies.push_back(lat);
    }
  });
  mosquitto_subscribe(sub.get(), nullptr, expect.c_str(), qos);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let the SUBACK land

  Mqtt pub(url, fmt::format("gnomon-load-pub-{}", ::getpid()), &st);
  mosquitto_publish_callback_set(pub.get(), [](mosquitto*, void* user, int) {
    auto* s = static_cast<LoadState*>(user);
    {
      std::lock_guard lock(s->mu);
      s->inflight--;
    }
    s->cv.notify_one();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto start = Clock::now();
  std::string payload;
  for (int64_t i = 0; i < count && !g_stop; ++i) {
    {
      std::unique_lock lock(st.mu);
      st.cv.wait(lock, [&] { return st.inflight < window; });
      st.inflight++;
    }
    if (rate > 0) {
      std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(i / rate)));
    }
    int d = static_cast<int>(i % devices);
    if (shape == "telemetry") {
      payload = TelemetryPayload(i, d);
    } else {
      payload = fmt::format(R"({{"temp":{},"sent":{},"seq":{},"pad":"{}"}})", 51 + (i % 10),
                            NowNs(), i, std::string(100, 'x'));
    }
    std::string topic = DeviceTopic(publish, d);
    mosquitto_publish(pub.get(), nullptr, topic.c_str(), static_cast<int>(payload.size()),
                      payload.data(), qos, false);
  }
  auto sent_done = Clock::now();
  auto deadline = sent_done + std::chrono::duration<double>(timeout_s);
  while (st.received < expect_count && Clock::now() < deadline && !g_stop) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  auto end = Clock::now();
  double secs = std::chrono::duration<double>(end - start).count();
  std::vector<int64_t> lat;
  {
    std::lock_guard lock(st.mu);
    lat = st.latencies;
  }
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double q) {
    return lat.empty() ? 0.0 : static_cast<double>(lat[static_cast<size_t>(q * (lat.size() - 1))]) / 1e6;
  };
  std::printf(R"({"sent":%lld,"received":%lld,"seconds":%.3f,"msgs_per_s":%.0f,"sent_per_s":%.0f,)"
              R"("p50_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f})"
              "\n",
              static_cast<long long>(count), static_cast<long long>(st.received.load()), secs,
              static_cast<double>(st.received.load()) / secs, static_cast<double>(count) / secs,
              pct(0.5), pct(0.99), pct(1.0));
  return st.received >= expect_count ? 0 : 1;
}

// The least any MQTT-to-MQTT rule engine outside the broker must do: take each message on
// `from` and publish it again (QoS 1) on `to` with the topic's second level as {d}. No parsing,
// no rules, and (libmosquitto acknowledges on receipt) no delivery guarantee: an upper bound
// for bench/mqtt.sh to hold gnomon against, since both put every message through the broker
// twice.
int RunRelay(const Url& url, const std::string& from, const std::string& to, int qos) {
  struct Relay {
    std::string to;
    int qos;
    mosquitto* self = nullptr;
  } r{to, qos};
  Mqtt m(url, fmt::format("gnomon-relay-{}", ::getpid()), &r);
  r.self = m.get();
  mosquitto_message_callback_set(m.get(), [](mosquitto* mosq, void* user, const mosquitto_message* msg) {
    auto* rl = static_cast<Relay*>(user);
    std::string_view t(msg->topic);
    size_t a = t.find('/');
    size_t b = a == std::string_view::npos ? a : t.find('/', a + 1);
    std::string topic = rl->to;
    if (size_t p = topic.find("{d}"); p != std::string::npos && a != std::string_view::npos) {
      topic.replace(p, 3, std::string(t.substr(a + 1, b - a - 1)));
    }
    mosquitto_publish(mosq, nullptr, topic.c_str(), msg->payloadlen, msg->payload, rl->qos, false);
  });
  mosquitto_subscribe(m.get(), nullptr, from.c_str(), qos);
  while (!g_stop) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGINT, [](int) { g_stop = true; });
  std::signal(SIGTERM, [](int) { g_stop = true; });
  CLI::App app{"gnomon-sim: device simulator and load generator"};
  app.require_subcommand(1);
  std::string url = "mqtt://127.0.0.1:1883";
  int devices = 10, qos = 1, window = 1000;
  double rate = 1, duration = 0, timeout = 60;
  int64_t count = 1000000, start_ts = 1700000000000;
  std::string publish = "devices/{d}/telemetry", expect = "devices/+/cmd";

  auto* dev = app.add_subcommand("devices", "Simulate devices publishing telemetry");
  dev->add_option("--url", url);
  dev->add_option("--devices", devices);
  dev->add_option("--rate", rate, "Messages per second per device");
  dev->add_option("--duration", duration, "Seconds (0: until Ctrl-C)");
  dev->add_option("--qos", qos);

  auto* thermo = app.add_subcommand(
      "thermostats", "Simulate thermostats that apply shadow deltas (examples/thermostat)");
  thermo->add_option("--url", url);
  thermo->add_option("--devices", devices);
  thermo->add_option("--duration", duration, "Seconds (0: until Ctrl-C)");
  thermo->add_option("--qos", qos);

  auto* gen = app.add_subcommand("gen", "Write a recorded telemetry file to stdout");
  gen->add_option("--devices", devices);
  gen->add_option("--count", count);
  gen->add_option("--start-ts", start_ts);

  auto* load = app.add_subcommand("load", "Publish at full speed and measure what comes back");
  load->add_option("--url", url);
  load->add_option("--count", count);
  load->add_option("--devices", devices);
  load->add_option("--publish", publish, "Topic pattern; {d} is the device");
  load->add_option("--expect", expect, "Topic filter to count");
  load->add_option("--qos", qos);
  load->add_option("--window", window, "QoS 1 publishes in flight");
  load->add_option("--timeout", timeout, "Seconds to wait for the last messages");
  double load_rate = 0;
  int64_t expect_count = -1;
  std::string shape = "small";
  load->add_option("--rate", load_rate, "Messages per second in all (0: as fast as possible)");
  load->add_option("--expect-count", expect_count, "Messages to wait for (default: --count)");
  load->add_option("--shape", shape, "Payload: small, or telemetry (issue 19's ~200 bytes)")
      ->check(CLI::IsMember({"small", "telemetry"}));

  std::string relay_from = "devices/+/telemetry", relay_to = "devices/{d}/cmd";
  auto* relay = app.add_subcommand(
      "relay", "Republish every message (bench/mqtt.sh's bare-relay baseline) until stopped");
  relay->add_option("--url", url);
  relay->add_option("--from", relay_from, "Topic filter to take");
  relay->add_option("--to", relay_to, "Topic pattern to publish on; {d} is the topic's 2nd level");
  relay->add_option("--qos", qos);

  CLI11_PARSE(app, argc, argv);
  if (relay->parsed()) {
    return RunRelay(ParseUrl(url), relay_from, relay_to, qos);
  }
  if (dev->parsed()) {
    return RunDevices(ParseUrl(url), devices, rate, duration, qos);
  }
  if (thermo->parsed()) {
    return RunThermostats(ParseUrl(url), devices, duration, qos);
  }
  if (gen->parsed()) {
    return RunGen(devices, count, start_ts);
  }
  return RunLoad(ParseUrl(url), count, devices, publish, expect, qos, window, timeout, load_rate,
                 expect_count, shape);
}

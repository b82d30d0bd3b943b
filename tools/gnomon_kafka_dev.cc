// SPDX-License-Identifier: Apache-2.0
// gnomon-kafka-dev: a Kafka development cluster (librdkafka's mock cluster) in its own process,
// on loopback, until SIGTERM/SIGINT. Real clients (kcat, librdkafka, Java) connect to the printed
// bootstrap address. For development and tests only: data lives in memory.
//
// With --control FILE, faults can be injected while it runs (tests use this): write commands,
// one per line, to FILE (atomically: write elsewhere, then rename); the cluster takes the file
// within 100 ms, removes it and prints `control: ok LINE` or `control: error LINE: WHY`.
//   request-errors API ERROR COUNT   the next COUNT requests of API (Produce, Fetch, Metadata,
//                                    OffsetCommit, ...) fail with ERROR (NOT_LEADER_FOR_PARTITION)
//   clear-request-errors API         drops the errors still queued for API
//   topic-error TOPIC ERROR          Metadata reports ERROR for TOPIC (NO_ERROR clears it)
//   broker-down ID | broker-up ID    a broker (1..N) refuses connections / accepts them again
//   rtt ID MS                        a broker answers MS later
#include <CLI/CLI.hpp>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {
std::atomic<bool> g_stop{false};

bool ErrorByName(const std::string& name, rd_kafka_resp_err_t* out) {
  const rd_kafka_err_desc* descs = nullptr;
  size_t n = 0;
  rd_kafka_get_err_descs(&descs, &n);
  for (size_t i = 0; i < n; ++i) {
    if (descs[i].name != nullptr && name == descs[i].name) {
      *out = descs[i].code;
      return true;
    }
  }
  return false;
}

bool ApiByName(const std::string& name, int16_t* out) {
  static const std::map<std::string, int16_t> kApis = {
      {"Produce", 0},        {"Fetch", 1},          {"ListOffsets", 2},  {"Metadata", 3},
      {"OffsetCommit", 8},   {"OffsetFetch", 9},    {"FindCoordinator", 10},
      {"JoinGroup", 11},     {"Heartbeat", 12},     {"LeaveGroup", 13},  {"SyncGroup", 14},
      {"InitProducerId", 22}};
  auto it = kApis.find(name);
  if (it == kApis.end()) {
    return false;
  }
  *out = it->second;
  return true;
}

// Runs one control command; returns "" or why it failed.
std::string Control(rd_kafka_mock_cluster_t* cluster, int brokers, const std::string& line) {
  std::istringstream in(line);
  std::string cmd;
  in >> cmd;
  auto broker = [&](int32_t* id) {
    return static_cast<bool>(in >> *id) && *id >= 1 && *id <= brokers;
  };
  if (cmd == "request-errors") {
    std::string api, err;
    size_t count = 0;
    int16_t key = 0;
    rd_kafka_resp_err_t code;
    if (!(in >> api >> err >> count) || !ApiByName(api, &key) || !ErrorByName(err, &code)) {
      return "usage: request-errors API ERROR COUNT (API e.g. Produce, ERROR e.g. NOT_LEADER_FOR_PARTITION)";
    }
    std::vector<rd_kafka_resp_err_t> errors(count, code);
    rd_kafka_mock_push_request_errors_array(cluster, key, count, errors.data());
    return "";
  }
  if (cmd == "clear-request-errors") {
    std::string api;
    int16_t key = 0;
    if (!(in >> api) || !ApiByName(api, &key)) {
      return "usage: clear-request-errors API";
    }
    rd_kafka_mock_clear_request_errors(cluster, key);
    return "";
  }
  if (cmd == "topic-error") {
    std::string topic, err;
    rd_kafka_resp_err_t code;
    if (!(in >> topic >> err) || !ErrorByName(err, &code)) {
      return "usage: topic-error TOPIC ERROR";
    }
    rd_kafka_mock_topic_set_error(cluster, topic.c_str(), code);
    return "";
  }
  int32_t id = 0;
  if (cmd == "broker-down" || cmd == "broker-up") {
    if (!broker(&id)) {
      return "usage: " + cmd + " ID (1.." + std::to_string(brokers) + ")";
    }
    rd_kafka_resp_err_t e = cmd == "broker-down" ? rd_kafka_mock_broker_set_down(cluster, id)
                                                 : rd_kafka_mock_broker_set_up(cluster, id);
    return e == RD_KAFKA_RESP_ERR_NO_ERROR ? "" : rd_kafka_err2str(e);
  }
  if (cmd == "rtt") {
    int ms = 0;
    if (!broker(&id) || !(in >> ms) || ms < 0) {
      return "usage: rtt ID MS";
    }
    rd_kafka_resp_err_t e = rd_kafka_mock_broker_set_rtt(cluster, id, ms);
    return e == RD_KAFKA_RESP_ERR_NO_ERROR ? "" : rd_kafka_err2str(e);
  }
  return "unknown command";
}

// Takes the control file if there is one and runs its lines.
void PollControl(rd_kafka_mock_cluster_t* cluster, int brokers, const std::string& path) {
  std::error_code ec;
  std::string taken = path + ".taken";
  std::filesystem::rename(path, taken, ec);
  if (ec) {
    return;  // no file
  }
  std::ifstream f(taken);
  for (std::string line; std::getline(f, line);) {
    if (line.empty()) {
      continue;
    }
    std::string why = Control(cluster, brokers, line);
    if (why.empty()) {
      std::printf("control: ok %s\n", line.c_str());
    } else {
      std::printf("control: error %s: %s\n", line.c_str(), why.c_str());
    }
  }
  std::fflush(stdout);
  std::filesystem::remove(taken, ec);
}
}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGINT, [](int) { g_stop = true; });
  std::signal(SIGTERM, [](int) { g_stop = true; });
  CLI::App app{"gnomon-kafka-dev: an in-memory Kafka cluster for development and tests"};
  int brokers = 3;
  std::vector<std::string> topics;
  app.add_option("--brokers", brokers, "Number of brokers")->check(CLI::Range(1, 9));
  app.add_option("--topic", topics, "NAME:PARTITIONS to create (repeatable)");
  std::string control;
  app.add_option("--control", control, "A file to take fault-injection commands from (see the source)");
  CLI11_PARSE(app, argc, argv);

  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (rk == nullptr) {
    std::fprintf(stderr, "gnomon-kafka-dev: %s\n", err);
    return 1;
  }
  rd_kafka_mock_cluster_t* cluster = rd_kafka_mock_cluster_new(rk, brokers);
  if (cluster == nullptr) {
    std::fprintf(stderr, "gnomon-kafka-dev: cannot start the mock cluster\n");
    return 1;
  }
  for (const std::string& t : topics) {
    size_t colon = t.rfind(':');
    std::string name = colon == std::string::npos ? t : t.substr(0, colon);
    int partitions = colon == std::string::npos ? 4 : std::stoi(t.substr(colon + 1));
    if (rd_kafka_mock_topic_create(cluster, name.c_str(), partitions,
                                   std::min(brokers, 3)) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::fprintf(stderr, "gnomon-kafka-dev: cannot create topic %s\n", name.c_str());
      return 1;
    }
  }
  std::printf("bootstrap: %s\n", rd_kafka_mock_cluster_bootstraps(cluster));
  std::fflush(stdout);
  while (!g_stop) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!control.empty()) {
      PollControl(cluster, brokers, control);
    }
  }
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(rk);
  return 0;
}

// SPDX-License-Identifier: Apache-2.0
// gnomon-kafka-dev: a Kafka development cluster (librdkafka's mock cluster) in its own process,
// on loopback, until SIGTERM/SIGINT. Real clients (kcat, librdkafka, Java) connect to the printed
// bootstrap address. For development and tests only: data lives in memory.
#include <CLI/CLI.hpp>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace {
std::atomic<bool> g_stop{false};
}

int main(int argc, char** argv) {
  std::signal(SIGINT, [](int) { g_stop = true; });
  std::signal(SIGTERM, [](int) { g_stop = true; });
  CLI::App app{"gnomon-kafka-dev: an in-memory Kafka cluster for development and tests"};
  int brokers = 3;
  std::vector<std::string> topics;
  app.add_option("--brokers", brokers, "Number of brokers")->check(CLI::Range(1, 9));
  app.add_option("--topic", topics, "NAME:PARTITIONS to create (repeatable)");
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
  }
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(rk);
  return 0;
}

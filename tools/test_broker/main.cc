// SPDX-License-Identifier: Apache-2.0
// gnomon-test-broker: the Kafka test broker (tools/test_broker/broker.h) in its own process on
// 127.0.0.1, until SIGTERM/SIGINT; prints its bootstrap address. Data lives in memory.
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>

#include "broker.h"

int main(int argc, char** argv) {
  CLI::App app{"gnomon-test-broker: a one-node Kafka broker in memory, for tests"};
  int port = 0;
  int partitions = 1;
  app.add_option("--port", port, "port on 127.0.0.1 (0: any free one)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--partitions", partitions, "partitions of a topic created on first use")
      ->check(CLI::Range(1, 10000));
  CLI11_PARSE(app, argc, argv);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // (the broker's thread inherits the mask)
  gnomon::testing::KafkaTestBroker broker(
      {.port = static_cast<uint16_t>(port), .partitions = partitions});
  if (std::string why = broker.Start(); !why.empty()) {
    std::fprintf(stderr, "gnomon-test-broker: %s\n", why.c_str());
    return 1;
  }
  std::printf("%s\n", broker.bootstrap().c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  broker.Stop();
  return 0;
}

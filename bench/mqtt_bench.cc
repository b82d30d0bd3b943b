// SPDX-License-Identifier: Apache-2.0
// The MQTT client's hot path without a socket: taking a read burst of telemetry PUBLISH packets
// apart (and writing their PUBACKs), and encoding a publish. See docs/performance.md, issue 19.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <string>

#include "connectors/mqtt/src/mqtt_codec.h"

namespace {

using gnomon::connectors::mqtt::Packet;
using gnomon::connectors::mqtt::PacketReader;

std::string TelemetryBurst(bool v5, int n) {
  std::string out;
  std::string payload(200, 'x');
  payload.replace(0, 14, "{\"temp\":21.50,");
  for (int i = 0; i < n; ++i) {
    gnomon::connectors::mqtt::PublishOut p;
    std::string topic = "devices/dev-" + std::to_string(i % 10000) + "/telemetry";
    p.topic = topic;
    p.payload = payload;
    p.qos = 1;
    p.packet_id = static_cast<uint16_t>(i + 1);
    gnomon::connectors::mqtt::AppendPublish(out, v5, p);
  }
  return out;
}

// One read of `state.range(0)` QoS 1 publishes: copied into the reader as a read would, each
// taken apart, its PUBACK written.
void BM_MqttReadBurst(benchmark::State& state) {
  const bool v5 = state.range(1) != 0;
  const std::string burst = TelemetryBurst(v5, static_cast<int>(state.range(0)));
  PacketReader reader(v5, 1 << 20);
  std::string acks;
  Packet p;
  size_t bytes = 0;
  for (auto _ : state) {
    std::string_view in = burst;
    acks.clear();
    while (!in.empty()) {
      std::span<char> space = reader.WriteSpace();
      size_t n = std::min(space.size(), in.size());
      std::copy_n(in.begin(), n, space.begin());
      reader.Wrote(n);
      in.remove_prefix(n);
      while (reader.Next(p)) {
        bytes += p.payload.size();
        gnomon::connectors::mqtt::AppendAck(acks, gnomon::connectors::mqtt::kPuback,
                                            p.packet_id);
      }
    }
    benchmark::DoNotOptimize(acks.data());
  }
  benchmark::DoNotOptimize(bytes);
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(burst.size()));
}
BENCHMARK(BM_MqttReadBurst)->ArgsProduct({{20, 64}, {0, 1}})->ArgNames({"msgs", "v5"});

void BM_MqttEncodePublish(benchmark::State& state) {
  std::string payload(200, 'x');
  std::string out;
  gnomon::connectors::mqtt::PublishOut p;
  p.topic = "alerts/dev-1234";
  p.payload = payload;
  p.qos = 1;
  p.packet_id = 7;
  for (auto _ : state) {
    out.clear();
    gnomon::connectors::mqtt::AppendPublish(out, true, p);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MqttEncodePublish);

}  // namespace

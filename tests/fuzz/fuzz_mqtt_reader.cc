// SPDX-License-Identifier: Apache-2.0
// The MQTT client's packet reader on bytes from a broker: never crashes, never holds more than it
// keeps, and reads the same packets (or fails the same way) whether the bytes come at once or in
// pieces.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "connectors/mqtt/src/mqtt_codec.h"

namespace {

using gnomon::connectors::mqtt::Packet;
using gnomon::connectors::mqtt::PacketReader;

std::string Describe(const Packet& p) {
  std::string d = std::to_string(p.type) + "/" + std::to_string(p.flags) + " id " +
                  std::to_string(p.packet_id) + " r " + std::to_string(p.reason) + " " +
                  std::string(p.topic) + " " + std::to_string(p.payload_size) + " " +
                  std::string(p.payload) + " " + std::string(p.reason_string);
  for (const auto& [k, v] : p.user_properties) {
    d += " " + std::string(k) + "=" + std::string(v);
  }
  return d;
}

// The packets read from `in` written in pieces of `chunk`, and whether it failed.
std::vector<std::string> ReadAll(bool v5, size_t max_kept, std::string_view in, size_t chunk,
                                 bool& failed) {
  PacketReader r(v5, max_kept);
  std::vector<std::string> got;
  Packet p;
  failed = false;
  while (!in.empty() && !failed) {
    std::span<char> space = r.WriteSpace();
    if (space.size() > max_kept + 16384 + 64) {
      std::abort();  // the reader holds more than it keeps
    }
    size_t n = std::min({space.size(), in.size(), chunk});
    std::copy_n(in.begin(), n, space.begin());
    r.Wrote(n);
    in.remove_prefix(n);
    while (r.Next(p)) {
      got.push_back(Describe(p));
    }
    failed = !r.error().empty();
  }
  return got;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) {
    return 0;
  }
  bool v5 = (data[0] & 1) != 0;
  size_t chunk = 1 + data[1] % 64;
  std::string_view in(reinterpret_cast<const char*>(data) + 2, size - 2);
  bool failed_whole = false;
  bool failed_pieces = false;
  // Kept big enough for every packet here: the pieces must read exactly what the whole does.
  std::vector<std::string> whole = ReadAll(v5, 1 << 20, in, in.size(), failed_whole);
  std::vector<std::string> pieces = ReadAll(v5, 1 << 20, in, chunk, failed_pieces);
  if (failed_whole != failed_pieces || whole != pieces) {
    std::abort();
  }
  // Kept small: publishes are cut, other big packets are errors; nothing crashes.
  bool failed_small = false;
  (void)ReadAll(v5, 64 + (data[0] >> 1), in, chunk, failed_small);
  return 0;
}

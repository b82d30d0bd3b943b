// SPDX-License-Identifier: Apache-2.0
// Window state from bytes a damaged store could hold, then events and clock ticks from the rest
// of the input: Decode refuses what it did not write, and whatever it took behaves — within
// bounds, windows closed in order, the state round-trips through Encode — never a crash.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/rules/windows.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using gnomon::rules::ClosedWindow;
  using gnomon::rules::WindowSpec;
  using gnomon::rules::WindowState;
  if (size < 4) {
    return 0;
  }
  WindowSpec spec;
  spec.kind = static_cast<WindowSpec::Kind>(data[0] % 4);
  spec.size_ms = 1 + data[1] % 64;
  spec.hop_ms = spec.kind == WindowSpec::Kind::kHopping ? 1 + data[2] % spec.size_ms : 0;
  if (spec.hop_ms >= spec.size_ms) {
    spec.hop_ms = spec.size_ms > 1 ? spec.size_ms - 1 : 0;
  }
  spec.grace_ms = data[3] % 32;
  spec.max_open = 64;
  spec.max_events = 256;
  if (!spec.Problem().empty()) {
    return 0;
  }
  std::string_view in(reinterpret_cast<const char*>(data) + 4, size - 4);
  // Up to a NUL: a stored state to start from; after it: operations, 9 bytes each.
  size_t nul = in.find('\0');
  WindowState state(spec);
  if (nul != std::string_view::npos && nul > 0) {
    auto decoded = WindowState::Decode(spec, in.substr(0, nul));
    if (decoded.ok()) {
      state = std::move(decoded).value();
    }
  }
  std::string_view ops = nul == std::string_view::npos ? in : in.substr(nul + 1);
  std::vector<ClosedWindow> closed;
  for (size_t at = 0; at + 9 <= ops.size(); at += 9) {
    int64_t t;
    std::memcpy(&t, ops.data() + at, sizeof t);
    uint8_t op = static_cast<uint8_t>(ops[at + 8]);
    closed.clear();
    if (op < 32) {
      state.Advance(t, closed);
    } else {
      (void)state.Add(t % 100000, static_cast<double>(op) - 128.0, closed);
      (void)state.Add(t, static_cast<double>(op), closed);  // mostly out of range: refused
    }
    for (size_t i = 0; i < closed.size(); ++i) {
      if (closed[i].agg.count <= 0 || closed[i].end <= closed[i].start ||
          (i > 0 && closed[i].end < closed[i - 1].end)) {
        __builtin_trap();
      }
    }
    size_t bound = spec.kind == WindowSpec::Kind::kSliding ? spec.max_events : spec.max_open;
    if (state.open() > bound) {
      __builtin_trap();
    }
  }
  std::string bytes = state.Encode();
  auto again = WindowState::Decode(spec, bytes);
  if (!again.ok() || again->Encode() != bytes) {
    __builtin_trap();  // what it wrote it reads back
  }
  return 0;
}

// SPDX-License-Identifier: Apache-2.0
// Random identifiers (service call ids): 128 bits as 32 lowercase hex digits.
#pragma once

#include <cstdint>
#include <random>
#include <string>

namespace gnomon {

inline std::string NewId() {
  thread_local std::mt19937_64 gen{(uint64_t{std::random_device{}()} << 32) ^
                                   std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int half = 0; half < 2; ++half) {
    uint64_t v = gen();
    for (int i = 0; i < 16; ++i) {
      out[static_cast<size_t>(half * 16 + i)] = kHex[(v >> (i * 4)) & 0xf];
    }
  }
  return out;
}

}  // namespace gnomon

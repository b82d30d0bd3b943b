// SPDX-License-Identifier: Apache-2.0
// Random JSON documents for property tests: nesting, escapes, non-ASCII, awkward numbers.
#pragma once

#include <random>
#include <string>

namespace gnomon::testing {

class RandomJson {
 public:
  explicit RandomJson(uint32_t seed) : rng_(seed) {}
  std::string Doc() {
    std::string out;
    Value(out, 0, true);
    return out;
  }

 private:
  void String(std::string& out) {
    static const char* pieces[] = {"a", "Z", " ", "\\\"", "\\\\", "\\n", "\\t", "\\u00e9",
                                   "é", "\\ud83d\\ude00", "😀", "/", "\\/", "{", "]", "0"};
    out += '"';
    int n = static_cast<int>(rng_() % 6);
    for (int i = 0; i < n; ++i) {
      out += pieces[rng_() % (sizeof(pieces) / sizeof(pieces[0]))];
    }
    out += '"';
  }
  void Number(std::string& out) {
    static const char* nums[] = {"0", "-1", "42", "9007199254740992", "9007199254740993",
                                 "-9223372036854775808", "18446744073709551615", "1.5", "-0.25",
                                 "1e300", "2.2250738585072014e-308", "0.1", "123456.789",
                                 "1E3", "-0.0"};
    out += nums[rng_() % (sizeof(nums) / sizeof(nums[0]))];
  }
  void Value(std::string& out, int depth, bool container) {
    int kind = container ? static_cast<int>(rng_() % 2) : static_cast<int>(rng_() % (depth > 4 ? 5 : 7));
    switch (kind) {
      case 0: case 5: {  // object
        out += '{';
        int n = static_cast<int>(rng_() % 4);
        for (int i = 0; i < n; ++i) {
          if (i) out += ',';
          out += "\"k" + std::to_string(i) + (rng_() % 3 == 0 ? "é" : "") + "\":";
          Value(out, depth + 1, false);
        }
        out += '}';
        return;
      }
      case 1: case 6: {  // array
        out += '[';
        int n = static_cast<int>(rng_() % 4);
        for (int i = 0; i < n; ++i) {
          if (i) out += ',';
          Value(out, depth + 1, false);
        }
        out += ']';
        return;
      }
      case 2: String(out); return;
      case 3: Number(out); return;
      default: out += (rng_() % 3 == 0 ? "null" : rng_() % 2 ? "true" : "false"); return;
    }
  }
  std::mt19937 rng_;
};

}  // namespace gnomon::testing

// SPDX-License-Identifier: Apache-2.0
// Poison messages: a message that kept a compiled (jit = true) rule stuck past three times its
// wall_ms makes gnomon exit (nothing can stop code inside a LuaJIT trace). It is recorded
// first, in data_dir/poison.jsonl, and after the restart the same (rule, message) is
// dead-lettered as rule_timeout instead of run again: a source that delivers it again must
// not make a crash loop of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_set>

#include "gnomon/core/message.h"

namespace gnomon::engine {

// Load() before the workers run; Contains() is read-only after it. Record() is the watchdog's,
// just before the process exits.
class PoisonList {
 public:
  // Entries read back from the file: the newest ones (one is written per exit, so the file
  // only grows by crashes).
  static constexpr size_t kMaxEntries = 1000;

  // Reads the newest kMaxEntries fingerprints of `path` (none if it does not exist; a torn
  // last line is skipped) and records to it from now on. Returns how many were read.
  size_t Load(std::string path);

  bool empty() const { return fingerprints_.empty(); }
  bool Contains(std::string_view rule, const Message& m) const {
    return fingerprints_.count(Fingerprint(rule, m)) != 0;
  }

  // Appends (rule, message) and syncs it to disk; false if it could not be written.
  bool Record(std::string_view rule, const Message& m, int64_t now_ms) const;

  // FNV-1a 64 over rule, topic, device and payload, each followed by a 0 byte.
  static uint64_t Fingerprint(std::string_view rule, const Message& m);

 private:
  std::string path_;
  std::unordered_set<uint64_t> fingerprints_;
};

}  // namespace gnomon::engine

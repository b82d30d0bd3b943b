// SPDX-License-Identifier: Apache-2.0
#include "poison_list.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <deque>
#include <fstream>
#include <utility>

#include "gnomon/core/json.h"

namespace gnomon::engine {

uint64_t PoisonList::Fingerprint(std::string_view rule, const Message& m) {
  uint64_t h = 1469598103934665603ULL;
  auto add = [&h](std::string_view v) {
    for (unsigned char c : v) {
      h = (h ^ c) * 1099511628211ULL;
    }
    h = (h ^ 0) * 1099511628211ULL;
  };
  add(rule);
  add(m.topic);
  add(m.device);
  add(m.payload);
  return h;
}

size_t PoisonList::Load(std::string path) {
  path_ = std::move(path);
  std::ifstream in(path_);
  std::deque<uint64_t> newest;
  std::string line;
  constexpr std::string_view kField = "\"fingerprint\":\"";
  while (std::getline(in, line)) {
    size_t at = line.find(kField);
    if (at == std::string::npos || line.size() < at + kField.size() + 16) {
      continue;  // a torn last line
    }
    newest.push_back(std::strtoull(line.c_str() + at + kField.size(), nullptr, 16));
    if (newest.size() > kMaxEntries) {
      newest.pop_front();
    }
  }
  fingerprints_.insert(newest.begin(), newest.end());
  return newest.size();
}

bool PoisonList::Record(std::string_view rule, const Message& m, int64_t now_ms) const {
  std::string line;
  json::ObjectWriter o(line);
  o.Field("rule", rule)
      .Field("fingerprint", fmt::format("{:016x}", Fingerprint(rule, m)))
      .Field("topic", m.topic)
      .Field("device", m.device)
      .Field("ts", now_ms);
  o.Close();
  line += '\n';
  int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    return false;
  }
  bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  return ok;
}

}  // namespace gnomon::engine

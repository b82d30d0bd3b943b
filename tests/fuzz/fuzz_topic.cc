// SPDX-License-Identifier: Apache-2.0
// Topic filters and names: validation, the trie index and the single-filter matcher agree.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/core/topic.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> filters;
  std::string_view topic;
  while (!in.empty()) {
    size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
    if (in.empty()) {
      topic = line;
    } else if (gnomon::ValidateTopicFilter(line).ok()) {
      filters.emplace_back(line);
    }
  }
  gnomon::TopicIndex index;
  for (uint32_t i = 0; i < filters.size(); ++i) {
    index.Add(filters[i], i);
  }
  if (!gnomon::ValidateTopicName(topic).ok()) {
    return 0;
  }
  std::vector<uint32_t> got;
  index.Match(topic, got);
  std::vector<uint32_t> want;
  for (uint32_t i = 0; i < filters.size(); ++i) {
    if (gnomon::TopicMatches(filters[i], topic)) {
      want.push_back(i);
    }
  }
  if (got != want) {
    __builtin_trap();
  }
  return 0;
}

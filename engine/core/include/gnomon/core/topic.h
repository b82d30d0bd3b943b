// SPDX-License-Identifier: Apache-2.0
// MQTT topic filters and a trie index over them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/core/status.h"

namespace gnomon {

// Checks an MQTT topic filter: non-empty, `+` fills a whole level, `#` only as the whole last
// level, no NUL. Error messages name the problem.
Status ValidateTopicFilter(std::string_view filter);

// Checks a topic name (no wildcards, non-empty, no NUL).
Status ValidateTopicName(std::string_view topic);

// True if `topic` matches `filter` with exact MQTT semantics, including that topics starting
// with `$` are not matched by a filter whose first level is a wildcard.
bool TopicMatches(std::string_view filter, std::string_view topic);

// True if `topic` is `prefix` or a topic under it (`prefix/...`).
inline bool TopicUnder(std::string_view topic, std::string_view prefix) {
  return topic.substr(0, prefix.size()) == prefix &&
         (topic.size() == prefix.size() || topic[prefix.size()] == '/');
}

// Returns level `index` (1-based) of `topic`, or an empty view when there is no such level.
std::string_view TopicLevel(std::string_view topic, int index);

// An immutable-after-build index from topic filters to caller ids. Matching costs
// O(levels × branching at wildcard nodes), not O(filters).
// Thread-safety: Add() is not thread-safe; Match() is safe to call concurrently after building.
class TopicIndex {
 public:
  TopicIndex();
  ~TopicIndex();
  TopicIndex(TopicIndex&&) noexcept;
  TopicIndex& operator=(TopicIndex&&) noexcept;

  // REQUIRES: ValidateTopicFilter(filter).ok().
  void Add(std::string_view filter, uint32_t id);

  // Appends the ids of every filter matching `topic` to `out`, sorted and without duplicates.
  void Match(std::string_view topic, std::vector<uint32_t>& out) const;

  size_t size() const { return size_; }

 private:
  struct Node;
  std::unique_ptr<Node> root_;
  size_t size_ = 0;
};

}  // namespace gnomon

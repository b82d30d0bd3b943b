// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/topic.h"

#include <algorithm>
#include <unordered_map>

namespace gnomon {

Status ValidateTopicName(std::string_view topic) {
  if (topic.empty()) {
    return InvalidArgument("topic is empty");
  }
  if (topic.size() > 65535) {
    return InvalidArgument("topic is longer than 65535 bytes");
  }
  if (topic.find_first_of(std::string_view("+#\0", 3)) != std::string_view::npos) {
    return InvalidArgument("topic '" + std::string(topic) + "' contains a wildcard or NUL");
  }
  return {};
}

Status ValidateTopicFilter(std::string_view filter) {
  if (filter.empty()) {
    return InvalidArgument("topic filter is empty");
  }
  if (filter.find('\0') != std::string_view::npos) {
    return InvalidArgument("topic filter contains NUL");
  }
  size_t start = 0;
  while (true) {
    size_t end = filter.find('/', start);
    std::string_view level =
        filter.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (level.find_first_of("+#") != std::string_view::npos && level.size() != 1) {
      return InvalidArgument("topic filter '" + std::string(filter) +
                             "': a wildcard must fill a whole level");
    }
    if (level == "#" && end != std::string_view::npos) {
      return InvalidArgument("topic filter '" + std::string(filter) +
                             "': '#' must be the last level");
    }
    if (end == std::string_view::npos) {
      break;
    }
    start = end + 1;
  }
  return {};
}

bool TopicMatches(std::string_view filter, std::string_view topic) {
  if (!topic.empty() && topic[0] == '$' && !filter.empty() && (filter[0] == '+' || filter[0] == '#')) {
    return false;
  }
  size_t f = 0, t = 0;
  while (true) {
    size_t fe = filter.find('/', f);
    std::string_view flevel = filter.substr(f, fe == std::string_view::npos ? fe : fe - f);
    if (flevel == "#") {
      return true;
    }
    if (t > topic.size()) {
      return false;
    }
    size_t te = topic.find('/', t);
    std::string_view tlevel = topic.substr(t, te == std::string_view::npos ? te : te - t);
    if (flevel != "+" && flevel != tlevel) {
      return false;
    }
    bool fdone = fe == std::string_view::npos;
    bool tdone = te == std::string_view::npos;
    if (fdone || tdone) {
      if (fdone && tdone) {
        return true;
      }
      // "a/#" matches "a": filter continues with exactly "#".
      return tdone && !fdone && filter.substr(fe + 1) == "#";
    }
    f = fe + 1;
    t = te + 1;
  }
}

std::string_view TopicLevel(std::string_view topic, int index) {
  if (index < 1) {
    return {};
  }
  size_t start = 0;
  for (int i = 1; i < index; ++i) {
    size_t slash = topic.find('/', start);
    if (slash == std::string_view::npos) {
      return {};
    }
    start = slash + 1;
  }
  size_t end = topic.find('/', start);
  return topic.substr(start, end == std::string_view::npos ? end : end - start);
}

namespace {
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
}  // namespace

struct TopicIndex::Node {
  std::unordered_map<std::string, std::unique_ptr<Node>, StringHash, std::equal_to<>> children;
  std::unique_ptr<Node> plus;
  std::vector<uint32_t> ids;       // filters ending at this node
  std::vector<uint32_t> hash_ids;  // filters ending with '#' below this node
};

TopicIndex::TopicIndex() : root_(std::make_unique<Node>()) {}
TopicIndex::~TopicIndex() = default;
TopicIndex::TopicIndex(TopicIndex&&) noexcept = default;
TopicIndex& TopicIndex::operator=(TopicIndex&&) noexcept = default;

void TopicIndex::Add(std::string_view filter, uint32_t id) {
  Node* node = root_.get();
  size_t start = 0;
  while (true) {
    size_t end = filter.find('/', start);
    std::string_view level =
        filter.substr(start, end == std::string_view::npos ? end : end - start);
    if (level == "#") {
      node->hash_ids.push_back(id);
      ++size_;
      return;
    }
    std::unique_ptr<Node>* slot;
    if (level == "+") {
      slot = &node->plus;
    } else {
      auto it = node->children.find(level);
      if (it == node->children.end()) {
        it = node->children.emplace(std::string(level), nullptr).first;
      }
      slot = &it->second;
    }
    if (!*slot) {
      *slot = std::make_unique<Node>();
    }
    node = slot->get();
    if (end == std::string_view::npos) {
      node->ids.push_back(id);
      ++size_;
      return;
    }
    start = end + 1;
  }
}

namespace {
// `pos` is the offset of the next level in `topic`, or npos when the topic is consumed.
template <typename NodeT>
void MatchFrom(const NodeT* node, std::string_view topic, size_t pos, bool at_root_dollar,
               std::vector<uint32_t>& out) {
  if (!at_root_dollar) {
    out.insert(out.end(), node->hash_ids.begin(), node->hash_ids.end());
  }
  if (pos == std::string_view::npos) {
    out.insert(out.end(), node->ids.begin(), node->ids.end());
    return;
  }
  size_t end = topic.find('/', pos);
  std::string_view level = topic.substr(pos, end == std::string_view::npos ? end : end - pos);
  size_t next = end == std::string_view::npos ? end : end + 1;
  if (auto it = node->children.find(level); it != node->children.end()) {
    MatchFrom(it->second.get(), topic, next, false, out);
  }
  if (node->plus && !at_root_dollar) {
    MatchFrom(node->plus.get(), topic, next, false, out);
  }
}
}  // namespace

void TopicIndex::Match(std::string_view topic, std::vector<uint32_t>& out) const {
  size_t before = out.size();
  bool dollar = !topic.empty() && topic[0] == '$';
  MatchFrom(root_.get(), topic, 0, dollar, out);
  if (out.size() - before > 1) {
    std::sort(out.begin() + before, out.end());
    out.erase(std::unique(out.begin() + before, out.end()), out.end());
  }
}

}  // namespace gnomon

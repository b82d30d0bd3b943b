// SPDX-License-Identifier: Apache-2.0
#include "shadow_topic.h"

#include <fmt/format.h>

#include <array>

#include "api_error.h"

namespace gnomon::engine {

std::string_view VerbName(ShadowVerb verb) {
  switch (verb) {
    case ShadowVerb::kUpdate:
      return "update";
    case ShadowVerb::kGet:
      return "get";
    case ShadowVerb::kDelete:
      return "delete";
    case ShadowVerb::kChanges:
      return "changes";
  }
  return "get";
}

std::string ShadowTopic(std::string_view prefix, std::string_view thing, std::string_view name) {
  if (name.empty()) {
    return fmt::format("{}/{}/shadow", prefix, thing);
  }
  return fmt::format("{}/{}/shadow/name/{}", prefix, thing, name);
}

std::variant<ShadowTarget, shadow::ShadowError> ParseShadowTopic(std::string_view prefix,
                                                                 std::string_view topic) {
  if (topic.size() <= prefix.size() + 1 || topic.substr(0, prefix.size()) != prefix ||
      topic[prefix.size()] != '/') {
    // The topic is the device's: quote at most its first 256 bytes back.
    return ApiError(400, "INVALID_TOPIC",
                    fmt::format("not a shadow topic: {}", topic.substr(0, 256)));
  }
  // At most 5 levels after the prefix; a sixth means the shape is wrong.
  std::array<std::string_view, 6> seg;
  size_t n = 0;
  std::string_view rest = topic.substr(prefix.size() + 1);
  while (n < seg.size()) {
    size_t slash = rest.find('/');
    seg[n++] = rest.substr(0, slash);
    if (slash == std::string_view::npos) {
      break;
    }
    rest.remove_prefix(slash + 1);
  }
  bool shape = (n == 3 && seg[1] == "shadow") || (n == 5 && seg[1] == "shadow" && seg[2] == "name");
  if (!shape) {
    return ApiError(
        400, "INVALID_TOPIC",
        fmt::format("expected {}/{{thing}}/shadow[/name/{{name}}]/{{update|get|delete}}", prefix));
  }
  ShadowTarget op;
  op.thing = seg[0];
  std::string_view verb = seg[n - 1];
  if (n == 5) {
    op.name = seg[3];
    if (auto bad = CheckShadowName(op.name)) {
      return *bad;
    }
  }
  if (auto bad = CheckThingName(op.thing)) {
    return *bad;
  }
  for (ShadowVerb v :
       {ShadowVerb::kUpdate, ShadowVerb::kGet, ShadowVerb::kDelete, ShadowVerb::kChanges}) {
    if (verb == VerbName(v)) {
      op.verb = v;
      return op;
    }
  }
  return ApiError(400, "INVALID_TOPIC",
                  fmt::format("unknown shadow operation '{}'", verb.substr(0, 64)));
}

}  // namespace gnomon::engine

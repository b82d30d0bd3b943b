// SPDX-License-Identifier: Apache-2.0
// A rule's row for one device as a change-log record (docs/cluster.md): how rule state, timers
// and windows move with their device's partition in a cluster.
#include <fmt/format.h>
#include <simdjson.h>

#include "gnomon/core/json.h"
#include "gnomon/shadow/store.h"

namespace gnomon::shadow {

namespace {
constexpr std::string_view kStateMark = "/$state/";
}  // namespace

std::string StateChangelogKey(std::string_view device, std::string_view rule) {
  std::string key;
  key.reserve(device.size() + kStateMark.size() + rule.size());
  key.append(device).append(kStateMark).append(rule);
  return key;
}

std::optional<std::pair<std::string_view, std::string_view>> ParseStateChangelogKey(
    std::string_view key) {
  size_t at = key.find(kStateMark);
  if (at == std::string_view::npos) {
    return std::nullopt;
  }
  return std::pair{key.substr(0, at), key.substr(at + kStateMark.size())};
}

std::string RuleState::ChangelogJson(std::string_view rule) const {
  std::string out;
  out.reserve(json.size() + timers.size() + windows.size() * 4 / 3 + 160);
  json::ObjectWriter w(out);
  w.Field("rule", rule).Field("version", version);
  w.FieldRaw("state", json.empty() ? "{}" : json);
  w.FieldRaw("timers", timers.empty() ? "[]" : timers);
  w.Field("inactive_due", inactive_due).Field("next_due", next_due);
  w.Field("window_due", window_due).Field("windows", json::Base64(windows));
  w.Close();
  return out;
}

Result<RuleState> RuleState::FromChangelog(std::string_view record) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (auto err = parser.parse(record.data(), record.size()).get(doc); err) {
    return InvalidArgument(
        fmt::format("a rule state record is not JSON: {}", simdjson::error_message(err)));
  }
  if (!doc.is_object()) {
    return InvalidArgument("a rule state record is not a JSON object");
  }
  RuleState out;
  auto integer = [&](const char* field, int64_t& to) -> Status {
    if (doc[field].get_int64().get(to) != simdjson::SUCCESS || to < 0) {
      return InvalidArgument(
          fmt::format("a rule state record's \"{}\" is not a non-negative integer", field));
    }
    return {};
  };
  GNOMON_RETURN_IF_ERROR(integer("version", out.version));
  GNOMON_RETURN_IF_ERROR(integer("inactive_due", out.inactive_due));
  GNOMON_RETURN_IF_ERROR(integer("next_due", out.next_due));
  GNOMON_RETURN_IF_ERROR(integer("window_due", out.window_due));
  simdjson::dom::object state;
  if (doc["state"].get_object().get(state) != simdjson::SUCCESS) {
    return InvalidArgument("a rule state record's \"state\" is not an object");
  }
  out.json = simdjson::minify(state);
  simdjson::dom::array timers;
  if (doc["timers"].get_array().get(timers) != simdjson::SUCCESS) {
    return InvalidArgument("a rule state record's \"timers\" is not an array");
  }
  for (simdjson::dom::element t : timers) {
    std::string_view name;
    int64_t due = 0;
    if (t["name"].get_string().get(name) != simdjson::SUCCESS ||
        t["due"].get_int64().get(due) != simdjson::SUCCESS) {
      return InvalidArgument("a rule state record's timer is not {\"name\", \"due\"}");
    }
  }
  if (timers.size() > 0) {
    out.timers = simdjson::minify(timers);
  }
  std::string_view windows;
  if (doc["windows"].get_string().get(windows) != simdjson::SUCCESS ||
      !json::FromBase64(windows, out.windows)) {
    return InvalidArgument("a rule state record's \"windows\" is not base64");
  }
  return out;
}

}  // namespace gnomon::shadow

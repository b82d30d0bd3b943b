// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/device_rule.h"

#include <simdjson.h>

#include <charconv>

#include "gnomon/core/topic.h"

namespace gnomon {

Result<DeviceRule> DeviceRule::Parse(std::string_view spec) {
  DeviceRule r;
  r.spec_ = std::string(spec);
  if (spec == "key") {
    r.kind_ = Kind::kKey;
    return r;
  }
  if (spec.starts_with("topic[") && spec.ends_with("]")) {
    std::string_view num = spec.substr(6, spec.size() - 7);
    auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), r.level_);
    if (ec != std::errc() || p != num.data() + num.size() || r.level_ < 1) {
      return InvalidArgument("device: topic[N] needs a level N >= 1 (got '" + std::string(spec) +
                             "')");
    }
    r.kind_ = Kind::kTopic;
    return r;
  }
  if (spec.starts_with("payload.") && spec.size() > 8) {
    r.kind_ = Kind::kPayload;
    std::string_view rest = spec.substr(8);
    size_t start = 0;
    while (true) {
      size_t dot = rest.find('.', start);
      std::string_view part = rest.substr(start, dot == std::string_view::npos ? dot : dot - start);
      if (part.empty()) {
        return InvalidArgument("device: empty field name in '" + std::string(spec) + "'");
      }
      r.path_.emplace_back(part);
      if (dot == std::string_view::npos) {
        break;
      }
      start = dot + 1;
    }
    return r;
  }
  return InvalidArgument("device: must be topic[N], payload.FIELD or key (got '" +
                         std::string(spec) + "')");
}

Result<std::string> DeviceRule::Extract(const Message& m) const {
  switch (kind_) {
    case Kind::kKey:
      if (m.key.empty()) {
        return InvalidArgument("message has no key for the device id");
      }
      return m.key;
    case Kind::kTopic: {
      std::string_view level = TopicLevel(m.topic, level_);
      if (level.empty()) {
        return InvalidArgument("topic '" + m.topic + "' has no level " + std::to_string(level_) +
                               " for the device id");
      }
      return std::string(level);
    }
    case Kind::kPayload: {
      // One parser per thread: sources call this from their own threads.
      thread_local simdjson::dom::parser parser;
      simdjson::dom::element e;
      if (parser.parse(m.payload.data(), m.payload.size()).get(e) != simdjson::SUCCESS) {
        return InvalidArgument("payload is not JSON; cannot read " + spec_);
      }
      for (const auto& part : path_) {
        // Every key is looked at: a field the payload holds twice names no device (readers
        // disagree on which one counts; rules refuse it the same way).
        simdjson::dom::object o;
        if (e.get(o) != simdjson::SUCCESS) {
          return InvalidArgument("payload has no field " + spec_.substr(8));
        }
        int found = 0;
        for (auto field : o) {
          if (field.key == part && found++ == 0) {
            e = field.value;
          }
        }
        if (found == 0) {
          return InvalidArgument("payload has no field " + spec_.substr(8));
        }
        if (found > 1) {
          return InvalidArgument("payload holds the key \"" + part + "\" of " + spec_ +
                                 " more than once");
        }
      }
      if (e.is_string()) {
        return std::string(std::string_view(e));
      }
      if (e.is_int64()) {
        return std::to_string(int64_t(e));
      }
      if (e.is_uint64()) {
        return std::to_string(uint64_t(e));
      }
      return InvalidArgument(spec_ + " is not a string or integer");
    }
  }
  return Internal("unreachable");
}

}  // namespace gnomon

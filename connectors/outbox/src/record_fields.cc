// SPDX-License-Identifier: Apache-2.0
#include "gnomon/connectors/record_fields.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <cctype>

#include "gnomon/core/json.h"

namespace gnomon::connectors {

std::string FieldValue::Text() const {
  std::string out;
  switch (kind) {
    case kMissing:
    case kNull:
      break;
    case kBool:
      out = b ? "true" : "false";
      break;
    case kInt:
      json::AppendInt(out, i);
      break;
    case kDouble:
      json::AppendNumber(out, d);
      break;
    case kString:
    case kJson:
      out = s;
      break;
  }
  return out;
}

Result<FieldPath> FieldPath::Parse(std::string_view spec) {
  FieldPath p;
  p.spec_ = std::string(spec);
  if (!spec.empty() && spec[0] == '@') {
    std::string_view m = spec.substr(1);
    if (m != "device" && m != "rule" && m != "key" && m != "topic" && m != "ts") {
      return InvalidArgument(fmt::format(
          "unknown field `{}` (known: @device, @rule, @key, @topic, @ts, or a path like $.a.b)",
          spec));
    }
    p.meta_ = std::string(m);
    return p;
  }
  if (spec.empty() || spec[0] != '$') {
    return InvalidArgument(fmt::format("field `{}` must be a path like $.a.b or @device", spec));
  }
  size_t i = 1;
  while (i < spec.size()) {
    if (spec[i] == '.') {
      size_t j = i + 1;
      while (j < spec.size() && spec[j] != '.' && spec[j] != '[') {
        ++j;
      }
      if (j == i + 1) {
        return InvalidArgument(fmt::format("field `{}`: empty name at offset {}", spec, i + 1));
      }
      p.steps_.push_back({std::string(spec.substr(i + 1, j - i - 1)), -1});
      i = j;
    } else if (spec[i] == '[') {
      size_t j = spec.find(']', i);
      if (j == std::string_view::npos || j == i + 1) {
        return InvalidArgument(fmt::format("field `{}`: bad index at offset {}", spec, i));
      }
      int64_t idx = 0;
      for (size_t k = i + 1; k < j; ++k) {
        if (!std::isdigit(static_cast<unsigned char>(spec[k])) || idx > 1'000'000'000) {
          return InvalidArgument(fmt::format("field `{}`: bad index at offset {}", spec, i));
        }
        idx = idx * 10 + (spec[k] - '0');
      }
      p.steps_.push_back({"", idx});
      i = j + 1;
    } else {
      return InvalidArgument(
          fmt::format("field `{}`: expected `.` or `[` at offset {}", spec, i));
    }
  }
  return p;
}

struct RecordFields::Impl {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  bool parsed = false;
  const Record* record = nullptr;
};

RecordFields::RecordFields() : impl_(std::make_unique<Impl>()) {}
RecordFields::~RecordFields() = default;

Status RecordFields::Reset(const Record& r) {
  impl_->record = &r;
  impl_->parsed = false;
  if (!r.json || r.null_value) {
    return {};
  }
  auto res = impl_->parser.parse(r.payload.data(), r.payload.size());
  if (res.error()) {
    return InvalidArgument(
        fmt::format("record is not valid JSON: {}", simdjson::error_message(res.error())));
  }
  impl_->root = res.value_unsafe();
  impl_->parsed = true;
  return {};
}

FieldValue RecordFields::Get(const FieldPath& path) const {
  FieldValue v;
  const Record& r = *impl_->record;
  if (!path.meta_.empty()) {
    v.kind = FieldValue::kString;
    if (path.meta_ == "device") {
      v.s = r.device;
    } else if (path.meta_ == "rule") {
      v.s = r.rule;
    } else if (path.meta_ == "key") {
      v.s = r.key;
    } else if (path.meta_ == "topic") {
      v.s = r.source_topic;
    } else {
      v.kind = FieldValue::kInt;
      v.i = r.ts_ms;
    }
    return v;
  }
  if (!impl_->parsed) {
    if (path.steps_.empty() && !r.null_value) {  // `$` of a string record: the string
      v.kind = FieldValue::kString;
      v.s = r.payload;
    }
    return v;
  }
  simdjson::dom::element e = impl_->root;
  for (const auto& step : path.steps_) {
    simdjson::simdjson_result<simdjson::dom::element> next =
        step.index >= 0 ? e.at(static_cast<size_t>(step.index)) : e[step.key];
    if (next.error()) {
      return v;  // missing
    }
    e = next.value_unsafe();
  }
  switch (e.type()) {
    case simdjson::dom::element_type::NULL_VALUE:
      v.kind = FieldValue::kNull;
      break;
    case simdjson::dom::element_type::BOOL:
      v.kind = FieldValue::kBool;
      v.b = e.get_bool().value_unsafe();
      break;
    case simdjson::dom::element_type::INT64:
      v.kind = FieldValue::kInt;
      v.i = e.get_int64().value_unsafe();
      break;
    case simdjson::dom::element_type::UINT64:
      v.kind = FieldValue::kDouble;
      v.d = static_cast<double>(e.get_uint64().value_unsafe());
      break;
    case simdjson::dom::element_type::DOUBLE:
      v.kind = FieldValue::kDouble;
      v.d = e.get_double().value_unsafe();
      break;
    case simdjson::dom::element_type::STRING:
      v.kind = FieldValue::kString;
      v.s = std::string(e.get_string().value_unsafe());
      break;
    default:
      v.kind = FieldValue::kJson;
      v.s = simdjson::minify(e);
      break;
  }
  return v;
}

Result<RecordTemplate> RecordTemplate::Parse(std::string_view text) {
  RecordTemplate t;
  t.text_ = std::string(text);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t open = text.find("${", pos);
    if (open == std::string_view::npos) {
      t.parts_.push_back({false, std::string(text.substr(pos)), {}});
      break;
    }
    if (open > pos) {
      t.parts_.push_back({false, std::string(text.substr(pos, open - pos)), {}});
    }
    size_t close = text.find('}', open);
    if (close == std::string_view::npos) {
      return InvalidArgument(fmt::format("unterminated `${{` at offset {}", open));
    }
    std::string_view name = text.substr(open + 2, close - open - 2);
    std::string spec;
    if (name == "device" || name == "rule" || name == "key" || name == "topic") {
      spec = "@" + std::string(name);
    } else if (name.starts_with("record.")) {
      spec = "$." + std::string(name.substr(7));
    } else if (name == "record") {
      spec = "$";
    } else {
      return InvalidArgument(fmt::format(
          "unknown placeholder `${{{}}}` (known: ${{device}}, ${{rule}}, ${{key}}, ${{topic}}, "
          "${{record.FIELD}})",
          name));
    }
    auto path = FieldPath::Parse(spec);
    if (!path.ok()) {
      return path.status();
    }
    t.parts_.push_back({true, "", std::move(*path)});
    pos = close + 1;
  }
  return t;
}

bool RecordTemplate::reads_payload() const {
  for (const auto& p : parts_) {
    if (p.var && p.path.reads_payload()) {
      return true;
    }
  }
  return false;
}

std::string RecordTemplate::Render(const RecordFields& fields, bool escape) const {
  std::string out;
  for (const auto& p : parts_) {
    if (!p.var) {
      out += p.literal;
      continue;
    }
    std::string v = fields.Get(p.path).Text();
    if (!escape) {
      out += v;
      continue;
    }
    for (unsigned char c : v) {
      if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
        out += static_cast<char>(c);
      } else {
        out += fmt::format("%{:02X}", c);
      }
    }
  }
  return out;
}

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/config.h"

#include <fmt/format.h>
#include <simdjson.h>
#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

namespace gnomon {

// ---------------------------------------------------------------------------------------------
// ConfigValue

const ConfigValue* ConfigValue::Get(std::string_view key) const {
  if (kind_ != Kind::kMap) {
    return nullptr;
  }
  for (const auto& [k, v] : fields_) {
    if (k == key) {
      return &v;
    }
  }
  return nullptr;
}

ConfigValue* ConfigValue::GetMutable(std::string_view key) {
  return const_cast<ConfigValue*>(static_cast<const ConfigValue*>(this)->Get(key));
}

std::optional<int64_t> ConfigValue::AsInt() const {
  if (kind_ != Kind::kScalar) {
    return std::nullopt;
  }
  int64_t v = 0;
  const char* b = scalar_.data();
  const char* e = b + scalar_.size();
  if (b != e && *b == '+') {
    ++b;
  }
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec != std::errc() || p != e || b == e) {
    return std::nullopt;
  }
  return v;
}

std::optional<double> ConfigValue::AsDouble() const {
  if (kind_ != Kind::kScalar || scalar_.empty()) {
    return std::nullopt;
  }
  char* end = nullptr;
  double v = std::strtod(scalar_.c_str(), &end);
  if (end != scalar_.c_str() + scalar_.size() || !std::isfinite(v)) {
    return std::nullopt;
  }
  return v;
}

std::optional<bool> ConfigValue::AsBool() const {
  if (kind_ != Kind::kScalar || quoted_) {
    return std::nullopt;
  }
  if (scalar_ == "true" || scalar_ == "True" || scalar_ == "TRUE") {
    return true;
  }
  if (scalar_ == "false" || scalar_ == "False" || scalar_ == "FALSE") {
    return false;
  }
  return std::nullopt;
}

std::string ConfigValue::GetString(std::string_view key, std::string_view fallback) const {
  const ConfigValue* v = Get(key);
  return v != nullptr && v->is_scalar() ? v->scalar() : std::string(fallback);
}

int64_t ConfigValue::GetInt(std::string_view key, int64_t fallback) const {
  const ConfigValue* v = Get(key);
  auto i = v != nullptr ? v->AsInt() : std::nullopt;
  return i ? *i : fallback;
}

double ConfigValue::GetDouble(std::string_view key, double fallback) const {
  const ConfigValue* v = Get(key);
  auto d = v != nullptr ? v->AsDouble() : std::nullopt;
  return d ? *d : fallback;
}

bool ConfigValue::GetBool(std::string_view key, bool fallback) const {
  const ConfigValue* v = Get(key);
  auto b = v != nullptr ? v->AsBool() : std::nullopt;
  return b ? *b : fallback;
}

std::vector<std::string> ConfigValue::GetStrings(std::string_view key) const {
  std::vector<std::string> out;
  const ConfigValue* v = Get(key);
  if (v == nullptr) {
    return out;
  }
  if (v->is_scalar()) {
    out.push_back(v->scalar());
  }
  for (const auto& item : v->items()) {
    if (item.is_scalar()) {
      out.push_back(item.scalar());
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// YAML

namespace {

Status SubstituteEnv(std::string& s, int line, std::string_view file) {
  size_t pos = 0;
  while ((pos = s.find("${env:", pos)) != std::string::npos) {
    size_t end = s.find('}', pos);
    if (end == std::string::npos) {
      return InvalidArgument(fmt::format("{}:{}: unterminated ${{env:...}}", file, line));
    }
    std::string name = s.substr(pos + 6, end - pos - 6);
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) {
      return InvalidArgument(
          fmt::format("{}:{}: environment variable {} is not set", file, line, name));
    }
    s.replace(pos, end - pos + 1, value);
    pos += std::strlen(value);
  }
  return {};
}

Status Convert(const YAML::Node& node, ConfigValue& out, std::string_view file) {
  out.SetLine(node.Mark().line + 1);
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      out.SetKind(ConfigValue::Kind::kNull);
      return {};
    case YAML::NodeType::Scalar: {
      std::string s = node.Scalar();
      GNOMON_RETURN_IF_ERROR(SubstituteEnv(s, out.line(), file));
      ConfigValue v = ConfigValue::Scalar(std::move(s), out.line());
      v.SetQuoted(node.Tag() == "!");
      out = std::move(v);
      return {};
    }
    case YAML::NodeType::Sequence:
      out.SetKind(ConfigValue::Kind::kList);
      for (const auto& item : node) {
        ConfigValue child;
        GNOMON_RETURN_IF_ERROR(Convert(item, child, file));
        out.AddItem(std::move(child));
      }
      return {};
    case YAML::NodeType::Map:
      out.SetKind(ConfigValue::Kind::kMap);
      for (const auto& kv : node) {
        if (!kv.first.IsScalar()) {
          return InvalidArgument(
              fmt::format("{}:{}: map keys must be strings", file, kv.first.Mark().line + 1));
        }
        std::string key = kv.first.Scalar();
        if (out.Get(key) != nullptr) {
          return InvalidArgument(fmt::format("{}:{}: duplicate key '{}'", file,
                                             kv.first.Mark().line + 1, key));
        }
        ConfigValue child;
        GNOMON_RETURN_IF_ERROR(Convert(kv.second, child, file));
        if (child.line() == 0) {
          child.SetLine(kv.first.Mark().line + 1);
        }
        out.AddField(std::move(key), std::move(child));
      }
      return {};
  }
  return {};
}

}  // namespace

Result<ConfigValue> ParseYaml(std::string_view text, std::string_view file) {
  try {
    YAML::Node root = YAML::Load(std::string(text));
    ConfigValue out;
    GNOMON_RETURN_IF_ERROR(Convert(root, out, file));
    return out;
  } catch (const YAML::Exception& e) {
    return InvalidArgument(fmt::format("{}:{}: {}", file, e.mark.line + 1, e.msg));
  } catch (const std::exception& e) {
    return InvalidArgument(fmt::format("{}: {}", file, e.what()));
  }
}

Result<ConfigValue> LoadYamlFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return NotFound(fmt::format("{}: cannot open config file", path));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseYaml(ss.str(), path);
}

// ---------------------------------------------------------------------------------------------
// Errors

void ConfigErrors::Add(const ConfigValue* at, std::string path, std::string message) {
  errors_.push_back({at != nullptr ? at->line() : 0, std::move(path), std::move(message)});
}

Status ConfigErrors::ToStatus() const {
  if (errors_.empty()) {
    return {};
  }
  std::string all;
  for (const auto& e : errors_) {
    if (!all.empty()) {
      all += '\n';
    }
    all += e.line > 0 ? fmt::format("{}:{}: ", file_, e.line) : fmt::format("{}: ", file_);
    if (!e.path.empty()) {
      all += e.path + ": ";
    }
    all += e.message;
  }
  return InvalidArgument(std::move(all));
}

// ---------------------------------------------------------------------------------------------
// Schema validation

namespace {

using simdjson::dom::element;
using simdjson::dom::object;

std::string Describe(const ConfigValue& v) {
  switch (v.kind()) {
    case ConfigValue::Kind::kNull: return "null";
    case ConfigValue::Kind::kList: return "a list";
    case ConfigValue::Kind::kMap: return "a map";
    case ConfigValue::Kind::kScalar: return v.quoted() ? "\"" + v.scalar() + "\"" : v.scalar();
  }
  return "?";
}

std::string JsonScalarText(element e) {
  switch (e.type()) {
    case simdjson::dom::element_type::STRING: return std::string(std::string_view(e));
    case simdjson::dom::element_type::INT64: return std::to_string(int64_t(e));
    case simdjson::dom::element_type::UINT64: return std::to_string(uint64_t(e));
    case simdjson::dom::element_type::DOUBLE: return fmt::format("{}", double(e));
    case simdjson::dom::element_type::BOOL: return bool(e) ? "true" : "false";
    default: return simdjson::minify(e);
  }
}

ConfigValue FromJson(element e) {
  ConfigValue v;
  switch (e.type()) {
    case simdjson::dom::element_type::ARRAY:
      v.SetKind(ConfigValue::Kind::kList);
      for (element item : e.get_array()) {
        v.AddItem(FromJson(item));
      }
      return v;
    case simdjson::dom::element_type::OBJECT:
      v.SetKind(ConfigValue::Kind::kMap);
      for (auto field : e.get_object()) {
        v.AddField(std::string(field.key), FromJson(field.value));
      }
      return v;
    case simdjson::dom::element_type::NULL_VALUE:
      return v;
    default:
      return ConfigValue::Scalar(JsonScalarText(e));
  }
}

std::string JoinAlternatives(const std::vector<std::string>& alts) {
  std::string s;
  for (size_t i = 0; i < alts.size(); ++i) {
    if (i > 0) {
      s += i + 1 == alts.size() ? " or " : ", ";
    }
    s += alts[i];
  }
  return s;
}

bool TypeMatches(const ConfigValue& v, std::string_view type) {
  if (type == "object") return v.is_map();
  if (type == "array") return v.is_list();
  if (type == "null") return v.is_null();
  if (!v.is_scalar()) return false;
  if (type == "string") return true;
  if (type == "integer") return !v.quoted() && v.AsInt().has_value();
  if (type == "number") return !v.quoted() && v.AsDouble().has_value();
  if (type == "boolean") return v.AsBool().has_value();
  return false;
}

std::string TypeNoun(std::string_view type) {
  if (type == "object") return "a map";
  if (type == "array") return "a list";
  if (type == "integer") return "an integer";
  if (type == "number") return "a number";
  if (type == "boolean") return "true or false";
  if (type == "string") return "a string";
  return std::string(type);
}

void Validate(ConfigValue& v, element schema, const std::string& path, ConfigErrors& errors) {
  // type
  std::vector<std::string> types;
  element t;
  if (schema["type"].get(t) == simdjson::SUCCESS) {
    if (t.is_string()) {
      types.emplace_back(std::string_view(t));
    } else if (t.is_array()) {
      for (element x : t.get_array()) {
        types.emplace_back(std::string_view(x));
      }
    }
  }
  std::string matched;
  if (!types.empty()) {
    for (const auto& ty : types) {
      if (TypeMatches(v, ty)) {
        matched = ty;
        break;
      }
    }
    if (matched.empty()) {
      std::vector<std::string> nouns;
      nouns.reserve(types.size());
      for (const auto& ty : types) {
        nouns.push_back(TypeNoun(ty));
      }
      errors.Add(&v, path, fmt::format("must be {} (got {})", JoinAlternatives(nouns), Describe(v)));
      return;
    }
  }

  // enum
  simdjson::dom::array enum_values;
  if (schema["enum"].get(enum_values) == simdjson::SUCCESS && v.is_scalar()) {
    std::vector<std::string> alts;
    bool found = false;
    for (element e : enum_values) {
      std::string text = JsonScalarText(e);
      found = found || text == v.scalar();
      alts.push_back(text);
    }
    if (!found) {
      errors.Add(&v, path, fmt::format("must be {} (got {})", JoinAlternatives(alts), Describe(v)));
      return;
    }
  }

  if (v.is_scalar()) {
    double num = 0;
    bool numeric = (matched == "integer" || matched == "number") && v.AsDouble().has_value();
    if (numeric) {
      num = *v.AsDouble();
    }
    element bound;
    double lo = 0, hi = 0;
    bool has_lo = schema["minimum"].get(bound) == simdjson::SUCCESS &&
                  bound.get_double().get(lo) == simdjson::SUCCESS;
    bool has_hi = schema["maximum"].get(bound) == simdjson::SUCCESS &&
                  bound.get_double().get(hi) == simdjson::SUCCESS;
    if (numeric && ((has_lo && num < lo) || (has_hi && num > hi))) {
      if (has_lo && has_hi) {
        errors.Add(&v, path, fmt::format("must be between {} and {} (got {})", lo, hi, v.scalar()));
      } else if (has_lo) {
        errors.Add(&v, path, fmt::format("must be at least {} (got {})", lo, v.scalar()));
      } else {
        errors.Add(&v, path, fmt::format("must be at most {} (got {})", hi, v.scalar()));
      }
    }
    uint64_t min_len = 0;
    if (matched == "string" && schema["minLength"].get_uint64().get(min_len) == simdjson::SUCCESS &&
        v.scalar().size() < min_len) {
      errors.Add(&v, path, min_len == 1 ? "must not be empty"
                                        : fmt::format("must be at least {} characters", min_len));
    }
    std::string_view pattern;
    if (matched == "string" && schema["pattern"].get_string().get(pattern) == simdjson::SUCCESS) {
      std::regex re{std::string(pattern)};
      if (!std::regex_search(v.scalar(), re)) {
        errors.Add(&v, path, fmt::format("must match {} (got {})", pattern, Describe(v)));
      }
    }
  }

  if (v.is_list()) {
    uint64_t min_items = 0;
    if (schema["minItems"].get_uint64().get(min_items) == simdjson::SUCCESS &&
        v.items().size() < min_items) {
      errors.Add(&v, path, fmt::format("must have at least {} item(s)", min_items));
    }
    element items;
    if (schema["items"].get(items) == simdjson::SUCCESS) {
      auto& list = const_cast<std::vector<ConfigValue>&>(v.items());
      for (size_t i = 0; i < list.size(); ++i) {
        Validate(list[i], items, fmt::format("{}[{}]", path, i), errors);
      }
    }
  }

  if (v.is_map()) {
    object props;
    bool has_props = schema["properties"].get(props) == simdjson::SUCCESS;
    element additional;
    bool has_additional = schema["additionalProperties"].get(additional) == simdjson::SUCCESS;
    auto& fields = const_cast<std::vector<std::pair<std::string, ConfigValue>>&>(v.fields());
    for (auto& [key, child] : fields) {
      std::string child_path = path.empty() ? key : path + "." + key;
      element sub;
      if (has_props && props[key].get(sub) == simdjson::SUCCESS) {
        Validate(child, sub, child_path, errors);
      } else if (has_additional && additional.is_bool()) {
        if (!bool(additional)) {
          std::vector<std::string> known;
          if (has_props) {
            for (auto f : props) {
              known.emplace_back(f.key);
            }
          }
          errors.Add(&child, child_path,
                     fmt::format("unknown key (known: {})", fmt::join(known, ", ")));
        }
      } else if (has_additional && additional.is_object()) {
        Validate(child, additional, child_path, errors);
      }
    }
    simdjson::dom::array required;
    if (schema["required"].get(required) == simdjson::SUCCESS) {
      for (element r : required) {
        std::string_view key(r);
        if (v.Get(key) == nullptr) {
          errors.Add(&v, path.empty() ? std::string(key) : path + "." + std::string(key),
                     "is required");
        }
      }
    }
    if (has_props) {
      for (auto f : props) {
        element def;
        if (v.Get(f.key) == nullptr && f.value["default"].get(def) == simdjson::SUCCESS) {
          ConfigValue d = FromJson(def);
          d.SetLine(v.line());
          v.AddField(std::string(f.key), std::move(d));
        }
      }
    }
  }
}

}  // namespace

void ValidateConfig(ConfigValue& value, std::string_view schema_json, std::string_view path,
                    ConfigErrors& errors) {
  simdjson::dom::parser parser;
  element schema;
  if (parser.parse(schema_json.data(), schema_json.size()).get(schema) != simdjson::SUCCESS) {
    errors.Add(nullptr, std::string(path), "internal error: embedded schema is not valid JSON");
    return;
  }
  Validate(value, schema, std::string(path), errors);
}

// ---------------------------------------------------------------------------------------------
// Docs

namespace {

std::string TypeText(element schema) {
  element t;
  if (schema["type"].get(t) != simdjson::SUCCESS) {
    return "any";
  }
  if (t.is_string()) {
    return std::string(std::string_view(t));
  }
  std::vector<std::string> parts;
  for (element x : t.get_array()) {
    parts.emplace_back(std::string_view(x));
  }
  return fmt::format("{}", fmt::join(parts, " \\| "));
}

void RenderProps(element schema, const std::string& prefix, std::string& out) {
  object props;
  if (schema["properties"].get(props) != simdjson::SUCCESS) {
    return;
  }
  simdjson::dom::array required;
  bool has_required = schema["required"].get(required) == simdjson::SUCCESS;
  for (auto f : props) {
    std::string key = prefix.empty() ? std::string(f.key) : prefix + "." + std::string(f.key);
    std::string def = "—";
    element d;
    if (f.value["default"].get(d) == simdjson::SUCCESS) {
      def = "`" + simdjson::minify(d) + "`";
    } else if (has_required) {
      for (element r : required) {
        if (std::string_view(r) == f.key) {
          def = "required";
        }
      }
    }
    std::string constraints;
    simdjson::dom::array en;
    if (f.value["enum"].get(en) == simdjson::SUCCESS) {
      constraints = " One of: `" + simdjson::minify(en) + "`.";
    }
    double lo, hi;
    if (f.value["minimum"].get_double().get(lo) == simdjson::SUCCESS) {
      constraints += fmt::format(" Minimum {}.", lo);
    }
    if (f.value["maximum"].get_double().get(hi) == simdjson::SUCCESS) {
      constraints += fmt::format(" Maximum {}.", hi);
    }
    std::string_view desc;
    if (f.value["description"].get_string().get(desc) != simdjson::SUCCESS) {
      desc = "";
    }
    out += fmt::format("| `{}` | {} | {} | {}{} |\n", key, TypeText(f.value), def, desc,
                       constraints);
    element items;
    if (f.value["items"].get(items) == simdjson::SUCCESS) {
      RenderProps(items, key + "[]", out);
    }
    RenderProps(f.value, key, out);
  }
}

}  // namespace

std::string RenderConfigDocs() {
  std::string out =
      "# Configuration reference\n\n"
      "<!-- Generated from schemas/ by `gnomon config-docs`; a test fails when this file is "
      "stale. -->\n\n"
      "gnomon reads one YAML file (`gnomon run -c FILE`). Unknown keys are errors; "
      "`${env:NAME}` in any value is replaced from the environment. Each section below is one "
      "JSON Schema in `schemas/`.\n";
  simdjson::dom::parser parser;
  for (std::string_view name : EmbeddedSchemaList()) {
    std::string_view text = EmbeddedSchema(name);
    element schema;
    if (parser.parse(text.data(), text.size()).get(schema) != simdjson::SUCCESS) {
      continue;
    }
    std::string_view title = name, desc;
    if (schema["title"].get_string().get(title) != simdjson::SUCCESS) {
      title = name;
    }
    if (schema["description"].get_string().get(desc) != simdjson::SUCCESS) {
      desc = "";
    }
    out += fmt::format("\n## {}\n\nSchema: `schemas/{}`. {}\n\n", title, name, desc);
    out += "| key | type | default | description |\n|---|---|---|---|\n";
    RenderProps(schema, "", out);
  }
  return out;
}

}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
// Config nodes: a YAML document read into gnomon's own tree (no yaml-cpp in public headers),
// validated against the JSON Schemas in schemas/, with file:line and key paths in every error.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gnomon/core/status.h"

namespace gnomon {

class ConfigValue {
 public:
  enum class Kind { kNull, kScalar, kList, kMap };

  ConfigValue() = default;
  static ConfigValue Scalar(std::string s, int line = 0) {
    ConfigValue v;
    v.kind_ = Kind::kScalar;
    v.scalar_ = std::move(s);
    v.line_ = line;
    return v;
  }

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  bool is_map() const { return kind_ == Kind::kMap; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_scalar() const { return kind_ == Kind::kScalar; }
  // True if the scalar was quoted in YAML (then it is always a string).
  bool quoted() const { return quoted_; }
  int line() const { return line_; }  // 1-based; 0 when unknown

  const std::string& scalar() const { return scalar_; }
  const std::vector<ConfigValue>& items() const { return items_; }
  const std::vector<std::pair<std::string, ConfigValue>>& fields() const { return fields_; }

  // Map lookup; nullptr when absent or not a map.
  const ConfigValue* Get(std::string_view key) const;
  ConfigValue* GetMutable(std::string_view key);

  // Typed reads of validated values; fallback when absent.
  std::string GetString(std::string_view key, std::string_view fallback = {}) const;
  int64_t GetInt(std::string_view key, int64_t fallback = 0) const;
  double GetDouble(std::string_view key, double fallback = 0) const;
  bool GetBool(std::string_view key, bool fallback = false) const;
  std::vector<std::string> GetStrings(std::string_view key) const;

  std::optional<int64_t> AsInt() const;
  std::optional<double> AsDouble() const;
  std::optional<bool> AsBool() const;

  // Builders.
  void SetKind(Kind k) { kind_ = k; }
  void SetLine(int line) { line_ = line; }
  void SetQuoted(bool q) { quoted_ = q; }
  void AddItem(ConfigValue v) { items_.push_back(std::move(v)); }
  void AddField(std::string key, ConfigValue v) { fields_.emplace_back(std::move(key), std::move(v)); }

 private:
  Kind kind_ = Kind::kNull;
  bool quoted_ = false;
  int line_ = 0;
  std::string scalar_;
  std::vector<ConfigValue> items_;
  std::vector<std::pair<std::string, ConfigValue>> fields_;
};

// Reads YAML text; `${env:NAME}` in scalars is replaced from the environment (an unset variable
// is an error naming it). `file` is used in error messages.
Result<ConfigValue> ParseYaml(std::string_view text, std::string_view file);
Result<ConfigValue> LoadYamlFile(const std::string& path);

// A config problem: "file:line: path: message".
struct ConfigError {
  int line = 0;
  std::string path;
  std::string message;
};

// Collects every problem of one config load.
class ConfigErrors {
 public:
  explicit ConfigErrors(std::string file) : file_(std::move(file)) {}
  void Add(const ConfigValue* at, std::string path, std::string message);
  bool empty() const { return errors_.empty(); }
  const std::vector<ConfigError>& errors() const { return errors_; }
  // All errors, one per line, or ok.
  Status ToStatus() const;

 private:
  std::string file_;
  std::vector<ConfigError> errors_;
};

// Validates `value` against the JSON Schema text `schema_json` (subset: type, properties,
// required, additionalProperties, enum, minimum, maximum, minLength, minItems, pattern, items,
// default, oneOf of types) and fills in defaults of absent keys. `path` prefixes error paths.
void ValidateConfig(ConfigValue& value, std::string_view schema_json, std::string_view path,
                    ConfigErrors& errors);

// The embedded schema named like "gnomon.json" or "sources/mqtt.json"; empty if none.
std::string_view EmbeddedSchema(std::string_view name);
std::vector<std::string_view> EmbeddedSchemaList();

// Renders every embedded schema as Markdown (docs/configuration.md).
std::string RenderConfigDocs();

}  // namespace gnomon

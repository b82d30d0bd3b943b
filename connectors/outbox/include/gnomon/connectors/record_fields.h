// SPDX-License-Identifier: Apache-2.0
// Reading fields out of a record for sinks that map records (SQL columns, webhook templates):
// paths like `$.a.b` or `$.list[0]` into the record's JSON, `$` for the whole record, and the
// record's provenance as `@device`, `@rule`, `@key`, `@topic` (the source topic), `@ts` (ms).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/core/record.h"
#include "gnomon/core/status.h"

namespace gnomon::connectors {

struct FieldValue {
  enum Kind { kMissing, kNull, kBool, kInt, kDouble, kString, kJson };
  Kind kind = kMissing;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string s;  // kString: the text; kJson: compact JSON of an object or array

  // The value as text for a template or a text column: strings as they are, numbers and
  // booleans as JSON writes them, objects and arrays as JSON; empty for missing and null.
  std::string Text() const;
};

class FieldPath {
 public:
  static Result<FieldPath> Parse(std::string_view spec);
  const std::string& spec() const { return spec_; }
  bool reads_payload() const { return meta_.empty(); }

 private:
  friend class RecordFields;
  struct Step {
    std::string key;
    int64_t index = -1;  // >= 0: an array index
  };
  std::string spec_;
  std::string meta_;  // "device", "rule", ... or empty for a payload path
  std::vector<Step> steps_;
};

// A record's payload parsed once, for many lookups. Not thread-safe; reuse per thread.
class RecordFields {
 public:
  RecordFields();
  ~RecordFields();
  RecordFields(const RecordFields&) = delete;
  RecordFields& operator=(const RecordFields&) = delete;

  // Parses `r`'s payload if it is JSON (an error if it does not parse). `r` must outlive the
  // lookups.
  Status Reset(const Record& r);
  FieldValue Get(const FieldPath& path) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A string with `${device}`, `${rule}`, `${key}`, `${topic}` and `${record.PATH}` (PATH as in
// FieldPath, without the `$.`) placeholders.
class RecordTemplate {
 public:
  static Result<RecordTemplate> Parse(std::string_view text);
  bool is_constant() const { return parts_.size() <= 1 && (parts_.empty() || !parts_[0].var); }
  bool reads_payload() const;
  // Renders with `fields` (already Reset to the record); `escape` URL-encodes substituted values.
  std::string Render(const RecordFields& fields, bool escape) const;
  const std::string& text() const { return text_; }

 private:
  struct Part {
    bool var = false;
    std::string literal;
    FieldPath path;
  };
  std::string text_;
  std::vector<Part> parts_;
};

}  // namespace gnomon::connectors

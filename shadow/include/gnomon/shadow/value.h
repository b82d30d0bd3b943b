// SPDX-License-Identifier: Apache-2.0
// A small mutable JSON value for shadow documents: objects keep insertion order, numbers keep
// integer vs double, equality compares numbers by value (1 == 1.0).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gnomon/core/status.h"

namespace gnomon::shadow {

class Value {
 public:
  enum class Kind { kNull, kBool, kInt, kDouble, kString, kArray, kObject };
  using Member = std::pair<std::string, Value>;

  Value() = default;
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Double(double d);
  static Value String(std::string s);
  static Value Array();
  static Value Object();

  // Parses JSON text (simdjson). Errors say why (invalid JSON, not UTF-8, too deep).
  static Result<Value> Parse(std::string_view json);

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  bool is_object() const { return kind_ == Kind::kObject; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kDouble; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }
  double as_double() const { return kind_ == Kind::kInt ? static_cast<double>(i_) : d_; }
  const std::string& as_string() const { return s_; }

  const std::vector<Value>& items() const { return items_; }
  std::vector<Value>& items() { return items_; }
  const std::vector<Member>& members() const { return members_; }
  std::vector<Member>& members() { return members_; }

  // Object access; nullptr when absent or not an object.
  const Value* Find(std::string_view key) const;
  Value* Find(std::string_view key);
  // Sets (or replaces) `key`. REQUIRES: is_object().
  Value& Set(std::string key, Value v);
  // Removes `key` if present; true if it was.
  bool Erase(std::string_view key);

  // Deep equality: key order ignored, array order kept, numbers by value.
  friend bool operator==(const Value& a, const Value& b);

  // Compact JSON.
  std::string Json() const;
  void AppendJson(std::string& out) const;

  // Nesting depth: scalars 0, {} 1, {"a":{}} 2.
  int Depth() const;

  // A shadow's per-leaf metadata: when the leaf was last written (epoch seconds; 0 unknown).
  // Copied with the value; ignored by ==, Json() and Parse().
  int64_t stamp() const { return stamp_; }
  void set_stamp(int64_t t) { stamp_ = t; }

 private:
  Kind kind_ = Kind::kNull;
  bool b_ = false;
  int64_t i_ = 0;
  double d_ = 0;
  int64_t stamp_ = 0;
  std::string s_;
  std::vector<Value> items_;
  std::vector<Member> members_;
};

}  // namespace gnomon::shadow

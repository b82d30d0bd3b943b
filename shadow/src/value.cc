// SPDX-License-Identifier: Apache-2.0
#include "gnomon/shadow/value.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <string_view>
#include <unordered_set>

#include "gnomon/core/json.h"

namespace gnomon::shadow {

Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}
Value Value::Double(double d) {
  Value v;
  v.kind_ = Kind::kDouble;
  v.d_ = d;
  return v;
}
Value Value::String(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.s_ = std::move(s);
  return v;
}
Value Value::Array() {
  Value v;
  v.kind_ = Kind::kArray;
  return v;
}
Value Value::Object() {
  Value v;
  v.kind_ = Kind::kObject;
  return v;
}

namespace {
// The first key an object holds twice (such documents are refused, as rules refuse them:
// readers disagree on which of the two counts). `found` tells, since the key may be "".
struct Duplicate {
  bool found = false;
  std::string key;
};

Value FromElement(simdjson::dom::element e, Duplicate& duplicate) {
  using T = simdjson::dom::element_type;
  switch (e.type()) {
    case T::OBJECT: {
      // (Sized once; each key looked for once: a restore parses every change-log record, and
      // growing the members and scanning them twice per key was a fifth of its parse.)
      simdjson::dom::object o(e);
      Value v = Value::Object();
      auto& members = v.members();
      members.reserve(o.size());
      // Keys seen, for large objects: a linear scan per key is quadratic in their size.
      constexpr size_t kScanUpTo = 32;
      std::unordered_set<std::string_view> seen;
      if (o.size() > kScanUpTo) {
        seen.reserve(o.size());
      }
      for (auto f : o) {
        Value* existing = nullptr;
        if (o.size() <= kScanUpTo) {
          existing = v.Find(f.key);
        } else if (!seen.insert(f.key).second) {
          existing = v.Find(f.key);
        }
        if (existing != nullptr) {
          if (!duplicate.found) {
            duplicate.found = true;
            duplicate.key = std::string(f.key.substr(0, 64));
          }
          *existing = FromElement(f.value, duplicate);
          continue;
        }
        members.emplace_back(std::string(f.key), FromElement(f.value, duplicate));
      }
      return v;
    }
    case T::ARRAY: {
      simdjson::dom::array a(e);
      Value v = Value::Array();
      v.items().reserve(a.size());
      for (auto item : a) {
        v.items().push_back(FromElement(item, duplicate));
      }
      return v;
    }
    case T::INT64: return Value::Int(int64_t(e));
    case T::UINT64: return Value::Double(static_cast<double>(uint64_t(e)));
    case T::DOUBLE: return Value::Double(double(e));
    case T::STRING: return Value::String(std::string(std::string_view(e)));
    case T::BOOL: return Value::Bool(bool(e));
    case T::NULL_VALUE: return Value();
  }
  return Value();
}
}  // namespace

Result<Value> Value::Parse(std::string_view json) {
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element e;
  // An empty view may hold no pointer at all (string_view()); simdjson copies from it.
  const char* data = json.data() != nullptr ? json.data() : "";
  auto err = parser.parse(data, json.size()).get(e);
  if (err != simdjson::SUCCESS) {
    return InvalidArgument(simdjson::error_message(err));
  }
  Duplicate duplicate;
  Value v = FromElement(e, duplicate);
  if (duplicate.found) {
    return InvalidArgument("duplicate key \"" + duplicate.key + "\" in an object");
  }
  return v;
}

const Value* Value::Find(std::string_view key) const {
  if (kind_ != Kind::kObject) {
    return nullptr;
  }
  for (const auto& [k, v] : members_) {
    if (k == key) {
      return &v;
    }
  }
  return nullptr;
}

Value* Value::Find(std::string_view key) {
  return const_cast<Value*>(static_cast<const Value*>(this)->Find(key));
}

Value& Value::Set(std::string key, Value v) {
  if (Value* existing = Find(key)) {
    *existing = std::move(v);
    return *existing;
  }
  members_.emplace_back(std::move(key), std::move(v));
  return members_.back().second;
}

bool Value::Erase(std::string_view key) {
  auto it = std::find_if(members_.begin(), members_.end(),
                         [&](const Member& m) { return m.first == key; });
  if (it == members_.end()) {
    return false;
  }
  members_.erase(it);
  return true;
}

bool operator==(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind_ == Value::Kind::kInt && b.kind_ == Value::Kind::kInt) {
      return a.i_ == b.i_;
    }
    return a.as_double() == b.as_double();
  }
  if (a.kind_ != b.kind_) {
    return false;
  }
  switch (a.kind_) {
    case Value::Kind::kNull: return true;
    case Value::Kind::kBool: return a.b_ == b.b_;
    case Value::Kind::kString: return a.s_ == b.s_;
    case Value::Kind::kArray: return a.items_ == b.items_;
    case Value::Kind::kObject: {
      if (a.members_.size() != b.members_.size()) {
        return false;
      }
      for (const auto& [k, v] : a.members_) {
        const Value* o = b.Find(k);
        if (o == nullptr || !(v == *o)) {
          return false;
        }
      }
      return true;
    }
    default: return false;
  }
}

void Value::AppendJson(std::string& out) const {
  switch (kind_) {
    case Kind::kNull: out += "null"; return;
    case Kind::kBool: out += b_ ? "true" : "false"; return;
    case Kind::kInt: json::AppendInt(out, i_); return;
    case Kind::kDouble: json::AppendNumber(out, d_); return;
    case Kind::kString: json::AppendQuoted(out, s_); return;
    case Kind::kArray:
      out += '[';
      for (size_t i = 0; i < items_.size(); ++i) {
        if (i > 0) {
          out += ',';
        }
        items_[i].AppendJson(out);
      }
      out += ']';
      return;
    case Kind::kObject:
      out += '{';
      for (size_t i = 0; i < members_.size(); ++i) {
        if (i > 0) {
          out += ',';
        }
        json::AppendQuoted(out, members_[i].first);
        out += ':';
        members_[i].second.AppendJson(out);
      }
      out += '}';
      return;
  }
}

std::string Value::Json() const {
  std::string out;
  AppendJson(out);
  return out;
}

int Value::Depth() const {
  int d = 0;
  if (kind_ == Kind::kObject) {
    for (const auto& [k, v] : members_) {
      d = std::max(d, v.Depth());
    }
    return d + 1;
  }
  if (kind_ == Kind::kArray) {
    for (const auto& v : items_) {
      d = std::max(d, v.Depth());
    }
    return d + 1;
  }
  return 0;
}

}  // namespace gnomon::shadow

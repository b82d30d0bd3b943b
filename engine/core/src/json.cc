// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/json.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <array>
#include <cmath>
#include <cstring>

namespace gnomon::json {

bool IsValidUtf8(std::string_view s) { return simdjson::validate_utf8(s.data(), s.size()); }

namespace {
// The bytes a JSON string cannot hold as they are: control characters, '"' and '\\'.
constexpr std::array<bool, 256> kEscaped = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 0x20; ++c) {
    t[c] = true;
  }
  t['"'] = true;
  t['\\'] = true;
  return t;
}();
}  // namespace

void AppendQuoted(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  // Most strings (keys, identifiers) need no escape.
  size_t first = 0;
  while (first < s.size() && !kEscaped[static_cast<unsigned char>(s[first])]) {
    ++first;
  }
  // One resize and one copy; std::string's push_back and append each check the capacity and
  // branch on it, which costs more in a rule call than their instructions suggest.
  size_t at = out.size();
  out.resize(at + first + 2);
  char* p = out.data() + at;
  p[0] = '"';
  if (first > 0) {  // (an empty view's data() may be null, which memcpy must not be given)
    std::memcpy(p + 1, s.data(), first);
  }
  if (first == s.size()) {
    p[first + 1] = '"';
    return;
  }
  out.resize(at + first + 1);
  size_t run = first;  // start of the pending run of bytes that need no escape
  for (size_t i = first; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (!kEscaped[c]) {
      continue;
    }
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 15];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

void AppendInt(std::string& out, int64_t v) {
  fmt::format_int f(v);  // into a stack buffer; appending via back_inserter goes char by char
  out.append(f.data(), f.size());
}

void AppendNumber(std::string& out, double v) {
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  constexpr double kMaxExact = 9007199254740992.0;  // 2^53
  if (v == std::floor(v) && std::fabs(v) <= kMaxExact) {
    AppendInt(out, static_cast<int64_t>(v));
    return;
  }
  // fmt's shortest round-trip representation.
  char buf[64];
  char* end = fmt::format_to(buf, "{}", v);
  out.append(buf, end);
}

std::string Base64(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t n = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += kAlphabet[n >> 18];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t n = uint8_t(in[i]) << 16;
    out += kAlphabet[n >> 18];
    out += kAlphabet[(n >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    uint32_t n = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += kAlphabet[n >> 18];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += '=';
  }
  return out;
}

bool FromBase64(std::string_view text, std::string& out) {
  out.clear();
  if (text.size() % 4 != 0) {
    return false;
  }
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') {
      return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
      return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
      return c - '0' + 52;
    }
    return c == '+' ? 62 : c == '/' ? 63 : -1;
  };
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    bool last = i + 4 == text.size();
    // Padding only at the end: "xx==" or "xxx=".
    int pad = last && text[i + 3] == '=' ? (text[i + 2] == '=' ? 2 : 1) : 0;
    uint32_t n = 0;
    for (int k = 0; k < 4; ++k) {
      int v = k >= 4 - pad ? 0 : value(text[i + static_cast<size_t>(k)]);
      if (v < 0) {
        return false;
      }
      n = (n << 6) | static_cast<uint32_t>(v);
    }
    out += static_cast<char>(n >> 16);
    if (pad < 2) {
      out += static_cast<char>((n >> 8) & 0xff);
    }
    if (pad < 1) {
      out += static_cast<char>(n & 0xff);
    }
  }
  return true;
}

void ObjectWriter::Key(std::string_view key) {
  if (!first_) {
    out_ += ',';
  }
  first_ = false;
  AppendQuoted(out_, key);
  out_ += ':';
}

ObjectWriter& ObjectWriter::Field(std::string_view key, std::string_view value) {
  Key(key);
  if (IsValidUtf8(value)) {
    AppendQuoted(out_, value);
  } else {
    // Never write invalid JSON: replace bad bytes so the line stays parseable.
    std::string clean;
    clean.reserve(value.size());
    for (unsigned char c : value) {
      clean += c < 0x80 ? static_cast<char>(c) : '?';
    }
    AppendQuoted(out_, clean);
  }
  return *this;
}

ObjectWriter& ObjectWriter::Field(std::string_view key, int64_t value) {
  Key(key);
  AppendInt(out_, value);
  return *this;
}

ObjectWriter& ObjectWriter::FieldRaw(std::string_view key, std::string_view raw_json) {
  Key(key);
  out_ += raw_json;
  return *this;
}

ObjectWriter& ObjectWriter::FieldNull(std::string_view key) {
  Key(key);
  out_ += "null";
  return *this;
}

}  // namespace gnomon::json

// SPDX-License-Identifier: Apache-2.0
// Small JSON output helpers. Parsing is simdjson's job (in the private sources that need it).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace gnomon::json {

// True if `s` is well-formed UTF-8.
bool IsValidUtf8(std::string_view s);

// Appends `s` as a quoted JSON string with escapes. REQUIRES: IsValidUtf8(s).
void AppendQuoted(std::string& out, std::string_view s);

// Appends a number the way gnomon writes them: integral values within ±2^53 without a fraction,
// others with up to 17 significant digits. Non-finite values are written as null.
void AppendNumber(std::string& out, double v);
void AppendInt(std::string& out, int64_t v);

std::string Base64(std::string_view bytes);
// Decodes standard base64 (with its `=` padding) into `out`; false when `text` is not that.
bool FromBase64(std::string_view text, std::string& out);

// Builds a flat JSON object: w.Field("a", "x").Field("n", 1).Close().
class ObjectWriter {
 public:
  explicit ObjectWriter(std::string& out) : out_(out) { out_ += '{'; }
  ObjectWriter& Field(std::string_view key, std::string_view value);
  ObjectWriter& Field(std::string_view key, const char* value) {
    return Field(key, std::string_view(value));
  }
  ObjectWriter& Field(std::string_view key, int64_t value);
  ObjectWriter& Field(std::string_view key, int value) { return Field(key, int64_t{value}); }
  ObjectWriter& FieldRaw(std::string_view key, std::string_view raw_json);
  ObjectWriter& FieldNull(std::string_view key);
  void Close() { out_ += '}'; }

 private:
  void Key(std::string_view key);
  std::string& out_;
  bool first_ = true;
};

}  // namespace gnomon::json

// SPDX-License-Identifier: Apache-2.0
// Structured logging: one JSON object per line on stderr (or a test sink).
// Thread-safe; a line is written with one write call.
#pragma once

#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace gnomon::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

using Field = std::pair<std::string_view, std::string_view>;

void SetLevel(Level level);
Level GetLevel();
// Replaces the output (default: stderr). Used by tests to capture lines.
void SetWriter(std::function<void(std::string_view line)> writer);

void Write(Level level, std::string_view msg, std::initializer_list<Field> fields);

inline void Debug(std::string_view msg, std::initializer_list<Field> fields = {}) {
  if (GetLevel() <= Level::kDebug) {
    Write(Level::kDebug, msg, fields);
  }
}
inline void Info(std::string_view msg, std::initializer_list<Field> fields = {}) {
  Write(Level::kInfo, msg, fields);
}
inline void Warn(std::string_view msg, std::initializer_list<Field> fields = {}) {
  Write(Level::kWarn, msg, fields);
}
inline void Error(std::string_view msg, std::initializer_list<Field> fields = {}) {
  Write(Level::kError, msg, fields);
}

}  // namespace gnomon::log

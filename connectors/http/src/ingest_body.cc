// SPDX-License-Identifier: Apache-2.0
#include "ingest_body.h"

#include <fmt/format.h>
#include <simdjson.h>

namespace gnomon::connectors {

std::optional<IngestBodyError> SplitIngestBody(std::string_view content_type,
                                               std::string_view body, bool single,
                                               const IngestBodyLimits& limits,
                                               std::vector<std::string>& out) {
  std::string_view ct = content_type.substr(0, content_type.find(';'));
  auto too_big = [&](size_t i, size_t size) {
    return IngestBodyError{413, "TOO_LARGE",
                           fmt::format("message {} is {} bytes; max_message_bytes is {}", i + 1,
                                       size, limits.max_message_bytes)};
  };
  auto too_many = [&] {
    return IngestBodyError{413, "TOO_MANY",
                           fmt::format("more than max_messages ({}) in one request",
                                       limits.max_messages)};
  };
  if (ct == "application/octet-stream") {
    if (static_cast<int64_t>(body.size()) > limits.max_message_bytes) {
      return too_big(0, body.size());
    }
    if (!body.empty()) {  // an empty body holds no message (400 EMPTY, as for the JSON types)
      out.emplace_back(body);
    }
    return std::nullopt;
  }
  thread_local simdjson::dom::parser parser;
  if (ct == "application/x-ndjson" || ct == "application/jsonl" || ct == "application/json-seq") {
    size_t line = 0;
    std::string_view rest = body;
    while (!rest.empty()) {
      size_t nl = rest.find('\n');
      std::string_view l = rest.substr(0, nl);
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
      ++line;
      if (!l.empty() && l.back() == '\r') {
        l.remove_suffix(1);
      }
      if (!l.empty() && l.front() == '\x1e') {
        l.remove_prefix(1);  // application/json-seq (RFC 7464): RS before each record
      }
      if (l.find_first_not_of(" \t") == std::string_view::npos) {
        continue;
      }
      if (static_cast<int64_t>(l.size()) > limits.max_message_bytes) {
        return too_big(line - 1, l.size());
      }
      auto doc = parser.parse(l.data(), l.size());
      if (doc.error()) {
        return IngestBodyError{400, "BAD_JSON", fmt::format("line {}: {}", line,
                                                            simdjson::error_message(doc.error()))};
      }
      out.emplace_back(l);
      if (static_cast<int64_t>(out.size()) > limits.max_messages) {
        return too_many();
      }
    }
    return std::nullopt;
  }
  auto doc = parser.parse(body.data(), body.size());
  if (doc.error()) {
    return IngestBodyError{400, "BAD_JSON",
                           fmt::format("body: {}", simdjson::error_message(doc.error()))};
  }
  simdjson::dom::array arr;
  if (!single && doc.value_unsafe().get_array().get(arr) == simdjson::SUCCESS) {
    size_t i = 0;
    for (simdjson::dom::element e : arr) {
      std::string text = simdjson::minify(e);
      if (static_cast<int64_t>(text.size()) > limits.max_message_bytes) {
        return too_big(i, text.size());
      }
      out.push_back(std::move(text));
      if (static_cast<int64_t>(out.size()) > limits.max_messages) {
        return too_many();
      }
      ++i;
    }
    return std::nullopt;
  }
  if (static_cast<int64_t>(body.size()) > limits.max_message_bytes) {
    return too_big(0, body.size());
  }
  out.emplace_back(body);
  return std::nullopt;
}

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
// HTTP ingest bodies (connectors/http/src/ingest_body.h) of every content type: refused with a
// status, or split into messages that each parse as JSON (but for octet-stream) and keep to the
// limits.
#include <simdjson.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "connectors/http/src/ingest_body.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) {
    return 0;
  }
  static const char* kTypes[] = {"application/json", "application/x-ndjson; charset=utf-8",
                                 "application/jsonl", "application/json-seq",
                                 "application/octet-stream"};
  std::string_view type = kTypes[data[0] % 5];
  bool single = (data[1] & 1) != 0;
  std::string_view body(reinterpret_cast<const char*>(data) + 2, size - 2);
  gnomon::connectors::IngestBodyLimits limits{4096, 64};
  std::vector<std::string> out;
  auto refused = gnomon::connectors::SplitIngestBody(type, body, single, limits, out);
  if (refused) {
    if (refused->status != 400 && refused->status != 413) {
      __builtin_trap();
    }
    return 0;
  }
  if (static_cast<int64_t>(out.size()) > limits.max_messages) {
    __builtin_trap();
  }
  simdjson::dom::parser parser;
  for (const std::string& m : out) {
    if (static_cast<int64_t>(m.size()) > limits.max_message_bytes || m.empty()) {
      __builtin_trap();  // over the bound, or a message from nothing
    }
    simdjson::dom::element e;
    if (type != "application/octet-stream" && parser.parse(m).get(e) != simdjson::SUCCESS) {
      __builtin_trap();  // a message we accept as JSON is JSON
    }
  }
  return 0;
}

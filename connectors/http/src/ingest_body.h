// SPDX-License-Identifier: Apache-2.0
// The messages of an HTTP ingest request body (docs/ingest.md): NDJSON / JSON-lines / json-seq
// lines, the elements of a JSON array, one JSON value, or the bytes as they are
// (application/octet-stream). Pure: no I/O, no state; fuzzed (tests/fuzz/fuzz_ingest_body.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gnomon::connectors {

struct IngestBodyLimits {
  int64_t max_message_bytes = 1 << 20;
  int64_t max_messages = 10000;
};

// Why a body was refused: an HTTP status and the error document's code and message.
struct IngestBodyError {
  int status = 400;
  std::string code;
  std::string message;
};

// Appends the body's messages to `out`, or returns why the body is refused (nothing is to be
// taken then). `content_type` may carry parameters (`; charset=...`). `single`: a JSON array
// is one message (`?batch=false`), not one per element.
std::optional<IngestBodyError> SplitIngestBody(std::string_view content_type,
                                               std::string_view body, bool single,
                                               const IngestBodyLimits& limits,
                                               std::vector<std::string>& out);

}  // namespace gnomon::connectors

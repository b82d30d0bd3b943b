// SPDX-License-Identifier: Apache-2.0
// Request bodies with a Content-Encoding: inflated under a limit, whole streams only.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace gnomon::engine {

struct BodyRefusal {
  int status;          // 400 (broken stream), 413 (over the limit), 500 (zlib would not start)
  std::string error;   // BAD_ENCODING, PAYLOAD_TOO_LARGE, INTERNAL_ERROR
  std::string message;
};

// Inflates `body` in place: gzip (RFC 1952) or, with gzip false, zlib (RFC 1950, HTTP's
// "deflate"). The stream must be whole, trailer (checksum and length) included, with nothing
// after it; the output may not pass `limit` bytes, and inflation stops as soon as it would.
std::optional<BodyRefusal> InflateBody(std::string& body, bool gzip, size_t limit);

}  // namespace gnomon::engine

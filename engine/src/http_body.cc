// SPDX-License-Identifier: Apache-2.0
#include "http_body.h"

#include <fmt/format.h>
#include <zlib.h>

#include <array>
#include <string_view>

namespace gnomon::engine {

// Inflates a gzip (or zlib, for "deflate") body. The whole stream must be there, trailer
// included, with nothing after it; the output may not pass `limit`.
std::optional<BodyRefusal> InflateBody(std::string& body, bool gzip, size_t limit) {
  z_stream zs{};
  if (inflateInit2(&zs, gzip ? 16 + MAX_WBITS : MAX_WBITS) != Z_OK) {
    return BodyRefusal{500, "INTERNAL_ERROR", "cannot start zlib"};
  }
  std::string out;
  zs.next_in = reinterpret_cast<Bytef*>(body.data());
  zs.avail_in = static_cast<uInt>(body.size());
  std::array<char, 16384> chunk{};
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(chunk.data());
    zs.avail_out = chunk.size();
    rc = inflate(&zs, Z_NO_FLUSH);
    size_t got = chunk.size() - zs.avail_out;
    if (out.size() + got > limit) {
      inflateEnd(&zs);
      return BodyRefusal{
          413, "PAYLOAD_TOO_LARGE",
          fmt::format("The inflated payload exceeds the maximum size allowed ({} bytes)", limit)};
    }
    out.append(chunk.data(), got);
    // Z_BUF_ERROR: no progress with a fresh output buffer, so the input ran out mid-stream.
  }
  size_t trailing = zs.avail_in;
  std::string zmsg = zs.msg != nullptr ? zs.msg : "corrupt";
  inflateEnd(&zs);
  std::string_view what = gzip ? "gzip" : "deflate";
  if (rc == Z_STREAM_END && trailing == 0) {
    body = std::move(out);
    return std::nullopt;
  }
  if (rc == Z_STREAM_END) {
    return BodyRefusal{400, "BAD_ENCODING",
                       fmt::format("{} bytes follow the end of the {} stream", trailing, what)};
  }
  if (rc == Z_BUF_ERROR) {
    return BodyRefusal{400, "BAD_ENCODING",
                       fmt::format("The {} body ends before its end (truncated: no trailer)", what)};
  }
  return BodyRefusal{400, "BAD_ENCODING", fmt::format("The body is not valid {} ({})", what, zmsg)};
}

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
// Content-Encoding bodies (engine/src/http_body.h). Two modes, by the first byte:
//  - raw: the rest is taken as a gzip or deflate body: refused with 400/413, or inflated to at
//    most the limit;
//  - round trip: the rest is compressed, then cut at a chosen point (or left whole, or given a
//    trailing byte): only the whole stream inflates, and to exactly what went in.
#include <zlib.h>

#include <cstdint>
#include <string>

#include "engine/src/http_body.h"

namespace {

std::string Compress(const std::string& data, bool gzip) {
  z_stream zs{};
  deflateInit2(&zs, Z_BEST_SPEED, Z_DEFLATED, gzip ? 16 + MAX_WBITS : MAX_WBITS, 8,
               Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&zs, data.size()) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) {
    return 0;
  }
  bool gzip = (data[0] & 1) != 0;
  bool round_trip = (data[0] & 2) != 0;
  size_t limit = 1 + (data[1] % 64) * 1024;
  std::string rest(reinterpret_cast<const char*>(data) + 3, size - 3);
  if (!round_trip) {
    std::string body = rest;
    auto refused = gnomon::engine::InflateBody(body, gzip, limit);
    if (refused ? refused->status != 400 && refused->status != 413 : body.size() > limit) {
      __builtin_trap();
    }
    return 0;
  }
  std::string whole = Compress(rest, gzip);
  std::string body = whole;
  uint8_t how = data[2];
  bool intact = how == 0;
  if (how == 1) {
    body.push_back('x');  // a byte after the stream
  } else if (how > 1) {
    body.resize(whole.size() * (how - 2) / 254);  // cut short: at most one byte less
    if (body.size() == whole.size()) {
      body.pop_back();
    }
  }
  auto refused = gnomon::engine::InflateBody(body, gzip, 1 << 20);
  if (intact != !refused) {
    __builtin_trap();  // a whole stream refused, or a broken one taken
  }
  if (intact && body != rest) {
    __builtin_trap();
  }
  return 0;
}

// SPDX-License-Identifier: Apache-2.0
// Shadow documents under any sequence of update requests (one per line), gets and deletes,
// and the stored form's round trip: errors are ShadowErrors, never a crash.
#include <cstdint>
#include <string>
#include <string_view>

#include "gnomon/core/json.h"
#include "gnomon/shadow/document.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  gnomon::shadow::ShadowDocument doc;
  int64_t now = 1000;
  while (!in.empty()) {
    size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
    if (line == "GET") {
      (void)doc.Get("", now);
    } else if (line.substr(0, 4) == "GET ") {  // GET TOKEN: every answer echoes the token
      std::string token(line.substr(4, 64));
      auto r = doc.Get("", now, token);
      std::string answer = std::holds_alternative<std::string>(r)
                               ? std::get<std::string>(r)
                               : std::get<gnomon::shadow::ShadowError>(r).Json(now);
      auto parsed = gnomon::shadow::Value::Parse(answer);
      const gnomon::shadow::Value* echoed = parsed.ok() ? parsed->Find("clientToken") : nullptr;
      if (!token.empty() && gnomon::json::IsValidUtf8(token) &&
          (echoed == nullptr || echoed->kind() != gnomon::shadow::Value::Kind::kString ||
           echoed->as_string() != token)) {
        __builtin_trap();
      }
    } else if (line == "DELETE") {
      (void)doc.Delete("", now);
    } else if (line.substr(0, 4) == "KEY ") {  // KEY K BODY: an update with Idempotency-Key K
      std::string_view rest = line.substr(4);
      size_t sp = rest.find(' ');
      std::string_view key = rest.substr(0, sp);
      std::string_view body =
          sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
      int64_t before = doc.version();
      auto r = doc.Update(body, now, key);
      auto* result = std::get_if<gnomon::shadow::UpdateResult>(&r);
      if (result != nullptr && result->replayed && doc.version() != before) {
        __builtin_trap();  // a replay changes nothing
      }
    } else if (line == "ON" || line == "OFF") {
      doc.SetPresence(line == "ON", now * 1000);
    } else {
      (void)doc.Update(line, now);
    }
    now += 1;
  }
  std::string stored = doc.StoredJson();
  auto back = gnomon::shadow::ShadowDocument::FromStored(stored);
  if (!back.ok() || back->StoredJson() != stored) {
    __builtin_trap();  // what we store, we must read back the same
  }
  (void)gnomon::shadow::ShadowDocument::FromDocument(doc.DocumentJson());
  return 0;
}

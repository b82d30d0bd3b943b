// SPDX-License-Identifier: Apache-2.0
// Shadow documents under any sequence of update requests (one per line), gets and deletes,
// and the stored form's round trip: errors are ShadowErrors, never a crash.
#include <cstdint>
#include <string>
#include <string_view>

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
    } else if (line == "DELETE") {
      (void)doc.Delete("", now);
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

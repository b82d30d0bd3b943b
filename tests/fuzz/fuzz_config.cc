// SPDX-License-Identifier: Apache-2.0
// Any config text: YAML parsing and validation against the root schema report errors with
// paths, never crash.
#include <cstdint>
#include <string>
#include <string_view>

#include "gnomon/core/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto v = gnomon::ParseYaml(text, "fuzz.yaml");
  if (!v.ok()) {
    return 0;
  }
  gnomon::ConfigErrors errors("fuzz.yaml");
  gnomon::ValidateConfig(*v, gnomon::EmbeddedSchema("gnomon.json"), "", errors);
  (void)errors.ToStatus();
  return 0;
}

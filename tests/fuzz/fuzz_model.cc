// SPDX-License-Identifier: Apache-2.0
// Thing models: any model file, and any patch, event or service data validated against a
// model that parsed.
#include <cstdint>
#include <string>
#include <string_view>

#include "gnomon/shadow/document.h"
#include "gnomon/shadow/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t cut = in.find('\n');
  std::string_view model_text = in.substr(0, cut);
  std::string_view patch_text = cut == std::string_view::npos ? "{}" : in.substr(cut + 1);
  auto model = gnomon::shadow::ThingModel::Parse(model_text, "fuzz.json");
  if (!model.ok()) {
    return 0;
  }
  auto patch = gnomon::shadow::Value::Parse(patch_text);
  if (!patch.ok()) {
    return 0;
  }
  (void)(*model)->Validate(*patch, gnomon::shadow::StateSection::kReported);
  (void)(*model)->Validate(*patch, gnomon::shadow::StateSection::kDesired);
  (void)(*model)->ValidateEvent("e", *patch);
  return 0;
}

// SPDX-License-Identifier: Apache-2.0
// An MQTT shadow request as a device sends it: the first line is the topic, the rest the
// payload. The topic parses to a target or a 400; a target's thing and shadow name pass the
// name checks and rebuild the same topic; an update's payload goes through the shadow
// document's update. Errors are ShadowErrors, never a crash.
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "engine/src/api_error.h"
#include "engine/src/shadow_topic.h"
#include "gnomon/shadow/document.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using gnomon::engine::ShadowTarget;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t nl = in.find('\n');
  std::string_view topic = in.substr(0, nl);
  std::string_view payload = nl == std::string_view::npos ? "" : in.substr(nl + 1);
  constexpr std::string_view kPrefix = "$aws/things";
  auto parsed = gnomon::engine::ParseShadowTopic(kPrefix, topic);
  if (auto* err = std::get_if<gnomon::shadow::ShadowError>(&parsed)) {
    if (err->code != 400 || err->message.size() > 1024) {
      __builtin_trap();  // a bad topic is the device's fault, answered in bounded words
    }
    return 0;
  }
  const ShadowTarget& t = std::get<ShadowTarget>(parsed);
  if (gnomon::engine::CheckThingName(t.thing) ||
      (!t.name.empty() && gnomon::engine::CheckShadowName(t.name)) ||
      gnomon::engine::ShadowTopic(kPrefix, t.thing, t.name) + "/" +
              std::string(gnomon::engine::VerbName(t.verb)) !=
          topic) {
    __builtin_trap();  // what was accepted is exactly what the topic said, and well named
  }
  gnomon::shadow::ShadowDocument doc;
  switch (t.verb) {
    case gnomon::engine::ShadowVerb::kUpdate:
      (void)doc.Update(payload, 1000);
      (void)doc.Update(payload, 1001);  // the same request again: a no-op or a conflict
      break;
    case gnomon::engine::ShadowVerb::kDelete:
      (void)doc.Delete(t.name, 1000);
      break;
    default:
      (void)doc.Get(t.name, 1000);
      break;
  }
  return 0;
}

// SPDX-License-Identifier: Apache-2.0
// The MQTT topics of device shadows ({prefix}/{thing}/shadow[/name/{name}]/{verb}, as AWS IoT
// names them; docs/shadows.md#mqtt) and what a request on one is about. Topics come from
// devices: parsing never trusts them (tests/fuzz/fuzz_shadow_topic.cc).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "gnomon/shadow/document.h"

namespace gnomon::engine {

enum class ShadowVerb : uint8_t { kUpdate, kGet, kDelete, kChanges };

// What a shadow request is about: the shadow (name "": the classic one) and what to do.
struct ShadowTarget {
  std::string thing, name;
  ShadowVerb verb = ShadowVerb::kGet;
};

// The verb's last topic level ("update", "get", "delete", "changes").
std::string_view VerbName(ShadowVerb verb);

// {prefix}/{thing}/shadow, or {prefix}/{thing}/shadow/name/{name}: the base every verb and
// answer topic extends.
std::string ShadowTopic(std::string_view prefix, std::string_view thing, std::string_view name);

// Parses {prefix}/{thing}/shadow[/name/{name}]/{update|get|delete|changes}. The thing and
// shadow names are checked as on every channel; an error is the 400 to answer.
std::variant<ShadowTarget, shadow::ShadowError> ParseShadowTopic(std::string_view prefix,
                                                                 std::string_view topic);

}  // namespace gnomon::engine

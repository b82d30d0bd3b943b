// SPDX-License-Identifier: Apache-2.0
// Errors as the shadow and service APIs answer them (the AWS shadow error document: code,
// message, timestamp, clientToken; see docs/shadows.md#errors), and the checks of names that
// every channel (MQTT topic, REST path, rule) makes the same way.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "gnomon/shadow/document.h"
#include "http_server.h"

namespace gnomon::engine {

shadow::ShadowError ApiError(int code, std::string error, std::string message,
                             std::string details = "");
// 400 INVALID_THING_NAME unless `thing` is 1-128 bytes of A-Z a-z 0-9 : _ -.
std::optional<shadow::ShadowError> CheckThingName(std::string_view thing);
// 400 INVALID_SHADOW_NAME unless `name` is 1-64 bytes of A-Z a-z 0-9 : _ -.
std::optional<shadow::ShadowError> CheckShadowName(std::string_view name);
// The HTTP answer carrying `e`, stamped `now_s`.
HttpResponse ErrorResponse(const shadow::ShadowError& e, int64_t now_s);

}  // namespace gnomon::engine

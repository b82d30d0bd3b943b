// SPDX-License-Identifier: Apache-2.0
#include "api_error.h"

namespace gnomon::engine {

shadow::ShadowError ApiError(int code, std::string error, std::string message,
                             std::string details) {
  shadow::ShadowError e;
  e.code = code;
  e.error = std::move(error);
  e.message = std::move(message);
  e.details = std::move(details);
  return e;
}

std::optional<shadow::ShadowError> CheckThingName(std::string_view thing) {
  if (shadow::ValidShadowId(thing, 128)) {
    return std::nullopt;
  }
  return ApiError(400, "INVALID_THING_NAME", "Thing names are 1-128 bytes of A-Z a-z 0-9 : _ -");
}

std::optional<shadow::ShadowError> CheckShadowName(std::string_view name) {
  if (shadow::ValidShadowId(name, 64)) {
    return std::nullopt;
  }
  return ApiError(400, "INVALID_SHADOW_NAME", "Shadow names are 1-64 bytes of A-Z a-z 0-9 : _ -");
}

HttpResponse ErrorResponse(const shadow::ShadowError& e, int64_t now_s) {
  HttpResponse r;
  r.status = e.code;
  r.body = e.Json(now_s);
  return r;
}

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
// Forwarding an API request to another instance of the cluster (the device's owner): the same
// method, target, body and the headers that matter (Authorization, Content-Type,
// Idempotency-Key), plus `X-Gnomon-Forwarded-By` naming this instance, which the owner never
// forwards again (no loops). One connection per request, bounded in time and size.
#pragma once

#include <chrono>
#include <string>

#include "gnomon/core/status.h"
#include "http_server.h"

namespace gnomon::engine {

inline constexpr std::string_view kForwardedByHeader = "X-Gnomon-Forwarded-By";

struct ForwardLimits {
  std::chrono::milliseconds timeout{10000};  // connect, send and the whole answer
  size_t max_body_bytes = 64u << 20;
};

// Sends `req` to `base` (http://host:port) and returns the owner's answer (its status, body,
// Content-Type and Retry-After). Errors: the address is not http://host:port, or the owner
// could not be reached or did not answer in time (kUnavailable).
Result<HttpResponse> ForwardRequest(const std::string& base, const HttpRequest& req,
                                    const std::string& via, const ForwardLimits& limits = {});

}  // namespace gnomon::engine

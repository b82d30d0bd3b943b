// SPDX-License-Identifier: Apache-2.0
// ApiRouter: how a source serves requests on gnomon's API listener (HTTP ingest).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gnomon/core/status.h"

namespace gnomon {

// A request on the API listener for a source that serves one (HTTP ingest).
struct ApiRequest {
  std::string_view path;  // what follows the registered prefix
  std::string_view body;
  std::string_view content_type;
  const std::vector<std::pair<std::string, std::string>>* query = nullptr;
};

struct ApiResponse {
  int status = 200;
  std::string body;  // JSON
  std::vector<std::pair<std::string, std::string>> headers;
};

// Implemented by the engine: routes POST requests under `prefix` (e.g. "/v1/ingest/") to a
// source, after the API's bearer-token check. Handlers run on the listener's threads.
class ApiRouter {
 public:
  virtual ~ApiRouter() = default;
  virtual Status AddPost(std::string prefix, std::function<ApiResponse(const ApiRequest&)> handler,
                         size_t max_body_bytes) = 0;
};

}  // namespace gnomon

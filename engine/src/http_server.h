// SPDX-License-Identifier: Apache-2.0
// A small HTTP listener (cpp-httplib, its own threads) for the operations and API endpoints.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gnomon/core/status.h"

namespace gnomon::engine {

struct HttpRequest {
  std::string method;
  std::string path;
  std::string body;
  std::vector<std::string> params;  // regex captures of the route
  std::string authorization;        // the Authorization header
  std::string content_type;         // the Content-Type header
  std::vector<std::pair<std::string, std::string>> query;  // decoded query parameters
  // The first value of query parameter `name`, or nullptr.
  const std::string* Query(std::string_view name) const {
    for (const auto& [k, v] : query) {
      if (k == name) {
        return &v;
      }
    }
    return nullptr;
  }
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  // A streamed response (Server-Sent Events): called once on the connection's thread; it writes
  // with `write` until it is done or `write` fails (the client went away), then returns.
  std::function<void(const std::function<bool(std::string_view)>& write)> stream;
};

struct HttpRoute {
  std::string method;   // "GET", "POST" or "DELETE"
  std::string pattern;  // a regex over the path, e.g. "/v1/rules/([a-z0-9_-]+)"
  std::function<HttpResponse(const HttpRequest&)> handler;
};

class HttpServer {
 public:
  // `listen` is host:port; port 0 picks a free one (see port()).
  // Bodies over `max_body_bytes` are refused with 413 before any handler runs.
  static Result<std::unique_ptr<HttpServer>> Start(const std::string& listen,
                                                   std::vector<HttpRoute> routes,
                                                   size_t max_body_bytes = 1 << 20);
  ~HttpServer();
  void Stop();
  int port() const;

  struct Impl;

 private:
  HttpServer() = default;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
// The operations listener: /metrics, /healthz, /readyz (cpp-httplib, its own thread).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "gnomon/core/status.h"

namespace gnomon::engine {

class HttpServer {
 public:
  struct Handlers {
    std::function<std::string()> metrics;
    std::function<bool(std::string& why)> ready;
  };
  // `listen` is host:port; port 0 picks a free one (see port()).
  static Result<std::unique_ptr<HttpServer>> Start(const std::string& listen, Handlers handlers);
  ~HttpServer();
  void Stop();
  int port() const;

  struct Impl;

 private:
  HttpServer() = default;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gnomon::engine

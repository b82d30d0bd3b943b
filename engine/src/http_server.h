// SPDX-License-Identifier: Apache-2.0
// The HTTP listener for the API and operations endpoints: Boost.Beast on Boost.Asio.
//
// A fixed number of I/O threads serve every connection; handlers that may block (shadow and
// service calls, reloads, ingest) run on a separate pool, so a slow handler never holds the
// I/O threads. Everything a client sends is bounded while it is read: header bytes and fields,
// body bytes (after gzip inflation), the time to send a header or a body, the time a
// keep-alive connection may sit idle, and the number of connections (over it: 503 and close).
// Bearer tokens are checked from the header, before any body is read.
#pragma once

#include <chrono>
#include <cstdint>
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
  std::string target;  // the request target as sent (path and query, still escaped)
  std::string body;
  std::vector<std::string> params;  // regex captures of the route
  std::string authorization;        // the Authorization header
  std::string content_type;         // the Content-Type header
  std::string idempotency_key;      // the Idempotency-Key header (shadow updates)
  std::string forwarded_by;         // X-Gnomon-Forwarded-By: another instance sent it (cluster)
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
  // A streamed response (Server-Sent Events): called once on a thread of its own; it writes
  // with `write` until it is done or `write` fails (the client went away or is too slow), then
  // returns.
  std::function<void(const std::function<bool(std::string_view)>& write)> stream;
};

// What a bearer token may do. A route asks for one scope; a token holds a set.
enum Scope : unsigned {
  kScopeNone = 0,     // open: no token needed
  kScopeRead = 1,     // GET shadows, rules, calls
  kScopeWrite = 2,    // shadow updates, ingest, service calls
  kScopeAdmin = 4,    // reload rules, delete shadows
  kScopeMetrics = 8,  // GET /metrics
};
constexpr unsigned kApiScopes = kScopeRead | kScopeWrite | kScopeAdmin;

// Parses "read", "write", "admin" or "metrics"; 0 if none of them.
unsigned ParseScope(std::string_view name);

struct HttpToken {
  std::string token;
  unsigned scopes = kApiScopes;
};

struct HttpRoute {
  std::string method;   // "GET", "POST" or "DELETE"
  std::string pattern;  // a regex over the path, e.g. "/v1/rules/([a-z0-9_-]+)"
  std::function<HttpResponse(const HttpRequest&)> handler;
  unsigned scope = kScopeNone;  // the scope a token needs (none: open)
  // Cheap and never blocking (health checks): run on the I/O thread, so it answers even when
  // every handler thread is busy.
  bool run_inline = false;
  // Tried first, on the I/O thread: answers (returns true) when it can without waiting (a
  // shadow read from the committed cache, a refusal); otherwise `handler` runs on the pool.
  std::function<bool(const HttpRequest&, HttpResponse&)> fast;
};

struct HttpLimits {
  int io_threads = 2;
  int handler_threads = 32;
  size_t max_connections = 10000;  // also capped by the descriptor limit
  size_t max_header_bytes = 16384;  // request line and every header line together
  size_t max_header_fields = 100;
  std::chrono::milliseconds header_timeout{10000};  // from a request's first byte to its header's end
  std::chrono::milliseconds body_timeout{60000};    // to read a body once its header is taken
  std::chrono::milliseconds idle_timeout{60000};    // a keep-alive connection between requests
  std::chrono::milliseconds write_timeout{30000};   // to write one answer (or one stream event)
};

struct HttpTls {
  std::string cert;       // PEM certificate chain; empty: plain HTTP
  std::string key;        // PEM private key
  std::string client_ca;  // PEM CA bundle: when set, clients must present a certificate it signed
};

struct HttpServerOptions {
  std::string listen;  // host:port; port 0 picks a free one (see port())
  // Bodies over it (inflated) are refused with 413 while they are read.
  size_t max_body_bytes = 1 << 20;
  HttpLimits limits;
  HttpTls tls;
  std::vector<HttpToken> tokens;  // checked for routes whose scope is not kScopeNone
  std::string name = "http";      // the thread names' suffix and the log's listener name
};

class HttpServer {
 public:
  static Result<std::unique_ptr<HttpServer>> Start(HttpServerOptions options,
                                                   std::vector<HttpRoute> routes);
  ~HttpServer();
  // Closes the listener and every connection, waits for handlers and streams to return.
  void Stop();
  int port() const;
  size_t connections() const;  // open now

  struct Impl;

 private:
  HttpServer() = default;
  std::shared_ptr<Impl> impl_;
};

}  // namespace gnomon::engine

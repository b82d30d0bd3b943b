// SPDX-License-Identifier: Apache-2.0
#include "http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <chrono>
#include <thread>

#include "gnomon/core/json.h"

namespace gnomon::engine {

namespace {
constexpr size_t kHttpThreads = 32;

// The error document of spec/shadow.md for the answers cpp-httplib gives on its own (no route,
// a body over the limit, a request it cannot parse): every API answer is JSON.
void FillError(const httplib::Request& req, httplib::Response& res) {
  std::string_view error = "BAD_REQUEST";
  std::string message = "The request could not be read";
  switch (res.status) {
    case 404:
      error = "NOT_FOUND";
      message = fmt::format("No such endpoint: {} {}", req.method, req.path);
      break;
    case 413:
      error = "PAYLOAD_TOO_LARGE";
      message = "The payload exceeds the maximum size allowed";
      break;
    case 414:
      error = "URI_TOO_LONG";
      message = "The request URI is too long";
      break;
    default:
      if (res.status >= 500) {
        error = "INTERNAL_ERROR";
        message = "Internal error";
      }
      break;
  }
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  std::string body;
  json::ObjectWriter w(body);
  w.Field("code", res.status).Field("error", error).Field("message", message);
  w.Field("timestamp", static_cast<int64_t>(now));
  w.Close();
  res.set_content(body, "application/json");
}

bool HasBody(const httplib::Request& req) {
  return req.has_header("Content-Length") || req.has_header("Transfer-Encoding");
}
}  // namespace

struct HttpServer::Impl {
  httplib::Server server;
  std::thread thread;
  int port = 0;
};

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen,
                                                      std::vector<HttpRoute> routes,
                                                      size_t max_body_bytes) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgument("listen: must be host:port (got " + listen + ")");
  }
  std::string host = listen.substr(0, colon);
  int port = std::atoi(listen.c_str() + colon + 1);
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->impl_ = std::make_unique<Impl>();
  auto& srv = s->impl_->server;
  srv.set_payload_max_length(max_body_bytes);
  // Without it small responses wait for the delayed ACK (Nagle): ~40 ms per keep-alive request.
  srv.set_tcp_nodelay(true);
  // cpp-httplib closes a keep-alive connection after 5 requests by default: every client would
  // reconnect (a new accept and a thread hand-off) every fifth request.
  srv.set_keep_alive_max_count(100000);
  // One thread per keep-alive connection (and per watch stream): more than the default 8.
  srv.new_task_queue = [] { return new httplib::ThreadPool(kHttpThreads); };
  // cpp-httplib calls it for every answer of 400 or more, ours included: those have a body.
  srv.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.body.empty() && !res.is_chunked_content_provider_) {
      FillError(req, res);
    }
  });
  for (auto& r : routes) {
    auto serve = [h = r.handler, method = r.method](const httplib::Request& req,
                                                     httplib::Response& res, std::string body) {
      HttpRequest in;
      in.method = method;
      in.path = req.path;
      in.body = std::move(body);
      for (size_t i = 1; i < req.matches.size(); ++i) {
        in.params.push_back(req.matches[i].str());
      }
      in.authorization = req.get_header_value("Authorization");
      in.content_type = req.get_header_value("Content-Type");
      for (const auto& [k, v] : req.params) {
        in.query.emplace_back(k, v);
      }
      HttpResponse out = h(in);
      res.status = out.status;
      for (const auto& [k, v] : out.headers) {
        res.set_header(k, v);
      }
      if (out.stream) {
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider(
            out.content_type, [stream = std::move(out.stream)](size_t, httplib::DataSink& sink) {
              stream([&](std::string_view data) {
                return sink.is_writable() && sink.write(data.data(), data.size());
              });
              sink.done();
              return true;
            });
        return;
      }
      res.set_content(out.body, out.content_type.c_str());
    };
    // Bodies are read here, not by cpp-httplib: it would parse a form-encoded body (curl -d's
    // default type) into the query parameters, so a JSON body holding "&name=x" would pick the
    // shadow, and refuse such bodies over 8 KiB. It would also inflate a gzip body without
    // bound; here the limit holds for the inflated body.
    auto with_body = [serve, max_body_bytes](const httplib::Request& req,
                                             httplib::Response& res,
                                             const httplib::ContentReader& read) {
      std::string body;
      if (HasBody(req)) {  // none without Content-Length or Transfer-Encoding (RFC 9112 6.3)
        bool over = false;
        bool ok = read([&](const char* data, size_t len) {
          if (body.size() + len > max_body_bytes) {
            over = true;
            return false;
          }
          body.append(data, len);
          return true;
        });
        if (!ok) {
          res.status = over || res.status == 413 ? 413 : 400;
          res.set_header("Connection", "close");  // the rest of the body is not read
          return;
        }
      }
      serve(req, res, std::move(body));
    };
    auto without_body = [serve](const httplib::Request& req, httplib::Response& res) {
      serve(req, res, {});
    };
    if (r.method == "POST") {
      srv.Post(r.pattern, with_body);
    } else if (r.method == "DELETE") {
      srv.Delete(r.pattern, with_body);  // a DELETE with a body
      srv.Delete(r.pattern, without_body);
    } else {
      srv.Get(r.pattern, without_body);
    }
  }
  if (port == 0) {
    port = srv.bind_to_any_port(host.c_str());
  } else if (!srv.bind_to_port(host.c_str(), port)) {
    port = -1;
  }
  if (port < 0) {
    return Unavailable(fmt::format("cannot listen on {}", listen));
  }
  s->impl_->port = port;
  s->impl_->thread = std::thread([impl = s->impl_.get()] {
    pthread_setname_np(pthread_self(), "gnomon-http");
    impl->server.listen_after_bind();
  });
  return s;
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Stop() {
  if (impl_ && impl_->thread.joinable()) {
    impl_->server.stop();
    impl_->thread.join();
  }
}

int HttpServer::port() const { return impl_->port; }

}  // namespace gnomon::engine

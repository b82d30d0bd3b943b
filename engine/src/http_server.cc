// SPDX-License-Identifier: Apache-2.0
#include "http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <thread>

#include "gnomon/core/json.h"

namespace gnomon::engine {

struct HttpServer::Impl {
  httplib::Server server;
  std::thread thread;
  int port = 0;
};

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen,
                                                      Handlers handlers) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgument("metrics.listen: must be host:port (got " + listen + ")");
  }
  std::string host = listen.substr(0, colon);
  int port = std::atoi(listen.c_str() + colon + 1);
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->impl_ = std::make_unique<Impl>();
  auto& srv = s->impl_->server;
  srv.Get("/metrics", [h = handlers](const httplib::Request&, httplib::Response& res) {
    res.set_content(h.metrics(), "text/plain; version=0.0.4; charset=utf-8");
  });
  srv.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  srv.Get("/readyz", [h = handlers](const httplib::Request&, httplib::Response& res) {
    std::string why;
    bool ok = h.ready(why);
    std::string body;
    json::ObjectWriter w(body);
    w.Field("status", ok ? "ready" : "not_ready");
    if (!ok) {
      w.Field("reason", why);
    }
    w.Close();
    res.status = ok ? 200 : 503;
    res.set_content(body, "application/json");
  });
  if (port == 0) {
    port = srv.bind_to_any_port(host.c_str());
  } else if (!srv.bind_to_port(host.c_str(), port)) {
    port = -1;
  }
  if (port < 0) {
    return Unavailable(fmt::format("metrics.listen: cannot listen on {}", listen));
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

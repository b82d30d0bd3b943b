// SPDX-License-Identifier: Apache-2.0
#include "http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <thread>

namespace gnomon::engine {

namespace {
constexpr size_t kHttpThreads = 32;
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
  for (auto& r : routes) {
    auto handler = [h = r.handler, method = r.method](const httplib::Request& req,
                                                       httplib::Response& res) {
      HttpRequest in;
      in.method = method;
      in.path = req.path;
      in.body = req.body;
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
    if (r.method == "POST") {
      srv.Post(r.pattern, handler);
    } else if (r.method == "DELETE") {
      srv.Delete(r.pattern, handler);
    } else {
      srv.Get(r.pattern, handler);
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

// SPDX-License-Identifier: Apache-2.0
// The HTTP-server comparison behind gnomon's REST API (issue 4): the two candidates from Debian,
// cpp-httplib (what gnomon uses) and Boost.Beast (on Boost.Asio), each serving the same
// ~500-byte shadow document on GET with keep-alive, nothing else. bench/http_servers.sh drives
// both with wrk on the same machine, so the figures are each library's own ceiling here.
//
//   gnomon-http-bench httplib|beast PORT [THREADS]
#include <httplib.h>

#include <utility>  // Boost 1.74's asio/awaitable.hpp uses std::exchange without including it

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

const std::string kBody =
    R"({"state":{"desired":{"fan":"on","targetTemp":21.5},"reported":{"fan":"off","temp":22.9,)"
    R"("targetTemp":21.5,"mode":1},"delta":{"fan":"on"}},"metadata":{"desired":{"fan":)"
    R"({"timestamp":1733000000},"targetTemp":{"timestamp":1733000000}},"reported":{"fan":)"
    R"({"timestamp":1733000100},"temp":{"timestamp":1733000100},"targetTemp":{"timestamp":)"
    R"(1733000100},"mode":{"timestamp":1733000100}}},"version":42,"timestamp":1733000200,)"
    R"("clientToken":"bench-0000-0000-0000-000000000000","padding":"xxxxxxxxxxxxxxxxxxxxxxxxxx"})";

int RunHttplib(int port, int threads) {
  httplib::Server srv;
  srv.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  srv.set_tcp_nodelay(true);
  srv.set_keep_alive_max_count(1000000);
  srv.Get("/v1/things/bench/shadow", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(kBody, "application/json");
  });
  std::printf("cpp-httplib on %d with %d threads\n", port, threads);
  std::fflush(stdout);
  return srv.listen("127.0.0.1", port) ? 0 : 1;
}

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

// One keep-alive connection: read a request, answer it, repeat.
class Session : public std::enable_shared_from_this<Session> {
 public:
  explicit Session(tcp::socket socket) : stream_(std::move(socket)) {}
  void Start() { Read(); }

 private:
  void Read() {
    req_ = {};
    http::async_read(stream_, buffer_, req_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (!ec) {
                         self->Answer();
                       }
                     });
  }
  void Answer() {
    res_ = {};
    res_.version(req_.version());
    res_.keep_alive(req_.keep_alive());
    if (req_.method() == http::verb::get && req_.target() == "/v1/things/bench/shadow") {
      res_.result(http::status::ok);
      res_.set(http::field::content_type, "application/json");
      res_.body() = kBody;
    } else {
      res_.result(http::status::not_found);
    }
    res_.prepare_payload();
    http::async_write(stream_, res_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (!ec && self->res_.keep_alive()) {
        self->Read();
      }
    });
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  http::request<http::string_body> req_;
  http::response<http::string_body> res_;
};

void Accept(tcp::acceptor& acceptor) {
  acceptor.async_accept([&acceptor](beast::error_code ec, tcp::socket socket) {
    if (!ec) {
      socket.set_option(tcp::no_delay(true));
      std::make_shared<Session>(std::move(socket))->Start();
    }
    Accept(acceptor);
  });
}

int RunBeast(int port, int threads) {
  boost::asio::io_context ioc(threads);
  tcp::acceptor acceptor(ioc, {boost::asio::ip::make_address("127.0.0.1"),
                               static_cast<unsigned short>(port)});
  Accept(acceptor);
  std::printf("Boost.Beast on %d with %d threads\n", port, threads);
  std::fflush(stdout);
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) {
    pool.emplace_back([&ioc] { ioc.run(); });
  }
  ioc.run();
  for (auto& t : pool) {
    t.join();
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: gnomon-http-bench httplib|beast PORT [THREADS]\n");
    return 2;
  }
  std::string which = argv[1];
  int port = std::atoi(argv[2]);
  int threads = argc > 3 ? std::atoi(argv[3]) : 2;
  if (which == "httplib") {
    return RunHttplib(port, threads);
  }
  if (which == "beast") {
    return RunBeast(port, threads);
  }
  std::fprintf(stderr, "unknown server %s\n", which.c_str());
  return 2;
}

// SPDX-License-Identifier: Apache-2.0
// A request forwarded to a device's owner (docs/cluster.md#rest-anywhere), to an owner on
// 127.0.0.1 answering a shadow GET: plain HTTP against TLS, and a connection per forward (TLS:
// resuming the previous forward's session) against connections kept between forwards (what
// gnomon does). Certificates are made with the openssl command in a temporary directory.
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include "forward.h"
#include "http_server.h"

namespace gnomon::engine {
namespace {

// A CA and a certificate it signed for 127.0.0.1, in a temporary directory (removed at exit).
struct Certificates {
  std::string dir;
  Certificates() {
    char tmpl[] = "/tmp/gnomon-forward-bench-XXXXXX";
    dir = ::mkdtemp(tmpl);
    std::string cmd = fmt::format(
        "cd {} && printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && "
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 "
        "-subj /CN=bench-ca && "
        "openssl req -newkey rsa:2048 -nodes -keyout owner.key -out owner.csr -subj /CN=owner && "
        "openssl x509 -req -in owner.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 "
        "-extfile san.ext -out owner.crt",
        dir);
    if (std::system((cmd + " >/dev/null 2>&1").c_str()) != 0) {
      std::fprintf(stderr, "openssl failed in %s\n", dir.c_str());
      std::exit(1);
    }
  }
  ~Certificates() { std::filesystem::remove_all(dir); }
};

void BM_ForwardRequest(benchmark::State& state) {
  static Certificates certs;
  const bool tls = state.range(0) == 1;
  const bool kept = state.range(1) == 1;
  HttpRoute route;
  route.method = "GET";
  route.pattern = "/v1/things/([^/]+)/shadow";
  route.handler = [](const HttpRequest&) {
    HttpResponse out;
    out.status = 200;
    out.body = std::string(1000, 'x');  // about a shadow document's size
    return out;
  };
  std::vector<HttpRoute> routes{std::move(route)};
  HttpServerOptions o;
  o.listen = "127.0.0.1:0";
  if (tls) {
    o.tls.cert = certs.dir + "/owner.crt";
    o.tls.key = certs.dir + "/owner.key";
  }
  auto server = HttpServer::Start(o, std::move(routes));
  if (!server.ok()) {
    state.SkipWithError(server.status().message().c_str());
    return;
  }
  auto forward_tls = ForwardTls::Make(certs.dir + "/ca.crt", "", "");
  if (!forward_tls.ok()) {
    state.SkipWithError(forward_tls.status().message().c_str());
    return;
  }
  std::string base =
      fmt::format("{}://127.0.0.1:{}", tls ? "https" : "http", (*server)->port());
  HttpRequest req;
  req.method = "GET";
  req.path = "/v1/things/d1/shadow";
  std::optional<ForwardConnections> pool;
  if (kept) {
    pool.emplace(1);
  }
  for (auto _ : state) {
    auto answer =
        ForwardRequest(base, req, "bench", {}, forward_tls->get(), pool ? &*pool : nullptr);
    if (!answer.ok() || answer->status != 200) {
      state.SkipWithError("a forward failed");
      break;
    }
  }
  (*server)->Stop();
  state.SetLabel(fmt::format("{}, {}", tls ? "https" : "http",
                             kept ? "connection kept" : "a connection each"));
}
BENCHMARK(BM_ForwardRequest)
    ->ArgsProduct({{0, 1}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
}  // namespace gnomon::engine

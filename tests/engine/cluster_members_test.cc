// SPDX-License-Identifier: Apache-2.0
#include "cluster_members.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "forward.h"
#include "http_server.h"
#include "tests/support/test_support.h"

namespace gnomon::engine {
namespace {

std::string Announce(const std::string& instance, std::vector<int32_t> owned, int64_t at,
                     const std::string& api = "http://127.0.0.1:1") {
  ClusterMember m;
  m.instance = instance;
  m.api = api;
  m.owned = std::move(owned);
  m.at_ms = at;
  return m.Json();
}

TEST(ClusterMembersTest, TheFreshestOtherMemberClaimingAPartitionOwnsIt) {
  ClusterMembers members("a", 15000);
  std::string a = Announce("a", {0, 1}, 1000);
  std::string b = Announce("b", {2, 3}, 1000, "http://b:8080");
  ASSERT_TRUE(members.Apply("a", &a));
  ASSERT_TRUE(members.Apply("b", &b));
  EXPECT_FALSE(members.OwnerOf(0, 2000).has_value());  // its own: never forwarded to itself
  ASSERT_TRUE(members.OwnerOf(2, 2000).has_value());
  EXPECT_EQ(members.OwnerOf(2, 2000)->api, "http://b:8080");
  EXPECT_FALSE(members.OwnerOf(4, 2000).has_value());  // nobody's (moving)

  // b was killed; c took partition 2 and says so later: c wins; b's word goes stale.
  std::string c = Announce("c", {2}, 5000, "http://c:8080");
  ASSERT_TRUE(members.Apply("c", &c));
  EXPECT_EQ(members.OwnerOf(2, 6000)->instance, "c");
  EXPECT_EQ(members.OwnerOf(3, 6000)->instance, "b");
  EXPECT_FALSE(members.OwnerOf(3, 1000 + 15001).has_value());  // b not heard of for too long

  // An older announcement (replayed, or a clock that went back) does not undo a newer one.
  std::string old_c = Announce("c", {}, 4000);
  ASSERT_TRUE(members.Apply("c", &old_c));
  EXPECT_EQ(members.OwnerOf(2, 6000)->instance, "c");

  // A tombstone: c left.
  ASSERT_TRUE(members.Apply("c", nullptr));
  EXPECT_EQ(members.OwnerOf(2, 6000)->instance, "b");
  ASSERT_EQ(members.Members().size(), 2u);
  EXPECT_EQ(members.Members()[0].instance, "a");
}

TEST(ClusterMembersTest, RecordsThatAreNotAnnouncementsAreRefused) {
  ClusterMembers members("a", 15000);
  std::string junk = "not json";
  std::string wrong_key = Announce("b", {1}, 1);
  std::string no_lists = R"({"instance":"b","api":"","at":1})";
  std::string bad_partition = R"({"instance":"b","api":"","owned":[-1],"restoring":[],"at":1})";
  EXPECT_FALSE(members.Apply("b", &junk));
  EXPECT_FALSE(members.Apply("c", &wrong_key));  // the key must be the instance it names
  EXPECT_FALSE(members.Apply("b", &no_lists));
  EXPECT_FALSE(members.Apply("b", &bad_partition));
  EXPECT_TRUE(members.Members().empty());
  ClusterMember m;
  m.instance = "b";
  m.api = "http://x:1";
  m.owned = {1, 7};
  m.restoring = {3};
  m.standby = {5, 6};
  m.at_ms = 42;
  auto back = ClusterMember::FromJson(m.Json());
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->owned, m.owned);
  EXPECT_EQ(back->restoring, m.restoring);
  EXPECT_EQ(back->standby, m.standby);
  // (An announcement of an instance from before standbys has none.)
  auto older =
      ClusterMember::FromJson(R"({"instance":"b","api":"","owned":[],"restoring":[],"at":1})");
  ASSERT_TRUE(older.ok());
  EXPECT_TRUE(older->standby.empty());
  EXPECT_FALSE(ClusterMember::FromJson(
                   R"({"instance":"b","api":"","owned":[],"restoring":[],"standby":[-2],"at":1})")
                   .ok());
  EXPECT_EQ(back->at_ms, 42);
  EXPECT_EQ(back->api, "http://x:1");
}

TEST(ClusterMembersTest, StandbysAreTheMembersAfterAPartitionsOwnerInTheRingOfIds) {
  auto at = [](const std::string& self, int replicas, int64_t now) {
    ClusterMembers members(self, 15000);
    std::string a = Announce("a", {0, 1}, 1000);
    std::string b = Announce("b", {2, 3}, 1000);
    std::string c = Announce("c", {4}, 1000);
    members.Apply("c", &c);
    members.Apply("a", &a);
    members.Apply("b", &b);
    return members.StandbyPartitions(replicas, now);
  };
  using V = std::vector<int32_t>;
  // Ring a → b → c → a: one standby each, the member after the owner.
  EXPECT_EQ(at("a", 1, 2000), (V{4}));
  EXPECT_EQ(at("b", 1, 2000), (V{0, 1}));
  EXPECT_EQ(at("c", 1, 2000), (V{2, 3}));
  // Two: everyone stands by for every partition it does not own.
  EXPECT_EQ(at("a", 2, 2000), (V{2, 3, 4}));
  // More than there are others: still never its own.
  EXPECT_EQ(at("a", 5, 2000), (V{2, 3, 4}));
  EXPECT_TRUE(at("a", 0, 2000).empty());
  EXPECT_TRUE(at("d", 1, 2000).empty());          // not announced (yet): none
  EXPECT_TRUE(at("a", 1, 1000 + 15001).empty());  // everyone stale, itself too

  // A member gone stale leaves the ring: its partitions' claims with it.
  ClusterMembers members("a", 15000);
  std::string a = Announce("a", {0, 1}, 20000);
  std::string b = Announce("b", {2, 3}, 1000);      // killed long ago
  std::string c = Announce("c", {2, 3, 4}, 20000);  // took b's partitions
  members.Apply("a", &a);
  members.Apply("b", &b);
  members.Apply("c", &c);
  EXPECT_EQ(members.StandbyPartitions(1, 21000), (V{2, 3, 4}));  // ring a → c → a
  V claimed;
  members.StandbyPartitions(1, 21000, &claimed);
  EXPECT_EQ(claimed, (V{0, 1, 2, 3, 4}));
  EXPECT_TRUE(members.Fresh(21000));
  std::string a_later = Announce("a", {0, 1}, 30000);
  members.Apply("a", &a_later);
  members.StandbyPartitions(1, 36000, &claimed);  // c stale as well: only a's own
  EXPECT_EQ(claimed, (V{0, 1}));
  EXPECT_FALSE(members.Fresh(30000 + 15001));
  ClusterMembers for_c("c", 15000);
  for_c.Apply("a", &a);
  for_c.Apply("b", &b);
  for_c.Apply("c", &c);
  EXPECT_EQ(for_c.StandbyPartitions(1, 21000), (V{0, 1}));
}

TEST(ClusterMembersTest, AMemberNotHeardOfForADayIsForgotten) {
  ClusterMembers members("a", 15000);
  std::string b = Announce("b", {1}, 1000);
  std::string a = Announce("a", {0}, 1000 + 24 * 3600 * 1000 + 1);
  members.Apply("b", &b);
  ASSERT_EQ(members.Members().size(), 1u);
  members.Apply("a", &a);
  ASSERT_EQ(members.Members().size(), 1u);
  EXPECT_EQ(members.Members()[0].instance, "a");
}

TEST(ForwardRequestTest, TheOwnerGetsTheSameRequestAndItsAnswerComesBack) {
  HttpRequest seen;
  std::atomic<int> calls{0};
  std::vector<HttpRoute> routes;
  routes.push_back({"POST", "/v1/things/([^/]+)/shadow",
                    [&](const HttpRequest& req) {
                      seen = req;
                      ++calls;
                      HttpResponse out;
                      out.status = 409;
                      out.body = R"({"code":409})";
                      out.headers.emplace_back("Retry-After", "3");
                      return out;
                    },
                    kScopeWrite});
  HttpServerOptions o;
  o.listen = "127.0.0.1:0";
  o.tokens.push_back({"secret", kScopeWrite});
  auto server = HttpServer::Start(o, std::move(routes));
  ASSERT_TRUE(server.ok()) << server.status().message();
  std::string base = "http://127.0.0.1:" + std::to_string((*server)->port());

  HttpRequest req;
  req.method = "POST";
  req.path = "/v1/things/dev 1/shadow";
  req.target = "/v1/things/dev%201/shadow?name=cfg";
  req.body = R"({"state":{"desired":{"on":true}}})";
  req.authorization = "Bearer secret";
  req.content_type = "application/json";
  req.idempotency_key = "k-1";
  auto answer = ForwardRequest(base, req, "inst-a");
  ASSERT_TRUE(answer.ok()) << answer.status().message();
  EXPECT_EQ(answer->status, 409);
  EXPECT_EQ(answer->body, R"({"code":409})");
  ASSERT_EQ(answer->headers.size(), 1u);
  EXPECT_EQ(answer->headers[0].second, "3");
  ASSERT_EQ(calls.load(), 1);
  EXPECT_EQ(seen.path, "/v1/things/dev 1/shadow");
  ASSERT_NE(seen.Query("name"), nullptr);
  EXPECT_EQ(*seen.Query("name"), "cfg");
  EXPECT_EQ(seen.body, req.body);
  EXPECT_EQ(seen.idempotency_key, "k-1");
  EXPECT_EQ(seen.forwarded_by, "inst-a");

  // The owner checks the token itself.
  req.authorization = "Bearer wrong";
  answer = ForwardRequest(base, req, "inst-a");
  ASSERT_TRUE(answer.ok());
  EXPECT_EQ(answer->status, 401);
  EXPECT_EQ(calls.load(), 1);
  (*server)->Stop();
}

TEST(ForwardRequestTest, AnOwnerThatCannotBeReachedOrDoesNotAnswerIsAnError) {
  HttpRequest req;
  req.method = "GET";
  req.path = "/v1/things/d/shadow";
  // Nothing listens there (a port just closed).
  int port = 0;
  {
    HttpServerOptions o;
    o.listen = "127.0.0.1:0";
    auto s = HttpServer::Start(o, {});
    ASSERT_TRUE(s.ok());
    port = (*s)->port();
    (*s)->Stop();
  }
  auto refused = ForwardRequest("http://127.0.0.1:" + std::to_string(port), req, "a");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("connecting"), std::string::npos)
      << refused.status().message();

  // An owner that hangs: the answer's time is bounded.
  std::vector<HttpRoute> routes;
  std::atomic<bool> release{false};
  routes.push_back({"GET", "/v1/things/([^/]+)/shadow", [&](const HttpRequest&) {
                      while (!release.load()) {
                        std::this_thread::sleep_for(std::chrono::milliseconds(10));
                      }
                      return HttpResponse{};
                    }});
  HttpServerOptions o;
  o.listen = "127.0.0.1:0";
  auto server = HttpServer::Start(o, std::move(routes));
  ASSERT_TRUE(server.ok());
  ForwardLimits limits;
  limits.timeout = std::chrono::milliseconds(300);
  auto slow =
      ForwardRequest("http://127.0.0.1:" + std::to_string((*server)->port()), req, "a", limits);
  release = true;
  ASSERT_FALSE(slow.ok());
  EXPECT_EQ(slow.status().code(), StatusCode::kUnavailable);
  (*server)->Stop();

  EXPECT_EQ(ForwardRequest("https://x:1", req, "a").status().code(), StatusCode::kInvalidArgument)
      << "https:// without TLS set up";
  EXPECT_EQ(ForwardRequest("ftp://x:1", req, "a").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ForwardRequest("http://x", req, "a").status().code(), StatusCode::kInvalidArgument);
}

// An owner's API over TLS (HttpServer with `tls`), answering GETs of shadows with 200.
std::unique_ptr<HttpServer> TlsOwner(const testing::TempDir& dir, const std::string& cert,
                                     const std::string& client_ca = "") {
  std::vector<HttpRoute> routes;
  routes.push_back({"GET", "/v1/things/([^/]+)/shadow", [](const HttpRequest& req) {
                      HttpResponse out;
                      out.status = 200;
                      out.body = R"({"from":"owner"})";
                      return out;
                    }});
  HttpServerOptions o;
  o.listen = "127.0.0.1:0";
  o.tls.cert = dir.File(cert + ".crt");
  o.tls.key = dir.File(cert + ".key");
  o.tls.client_ca = client_ca.empty() ? "" : dir.File(client_ca);
  auto server = HttpServer::Start(o, std::move(routes));
  EXPECT_TRUE(server.ok()) << server.status().message();
  return server.ok() ? std::move(server).value() : nullptr;
}

// The test CA (MakeServerCertificates), a certificate it signs for another host only
// (elsewhere.crt), and a CA of its own that signed nothing here (other-ca.crt).
void MakeTlsFixtures(const testing::TempDir& dir) {
  std::string why;
  ASSERT_TRUE(testing::MakeServerCertificates(dir, &why)) << why;
  ASSERT_TRUE(testing::MakeSignedCertificate(dir, "elsewhere",
                                             "subjectAltName=DNS:elsewhere.example\n", &why))
      << why;
  std::string out, err;
  ASSERT_EQ(testing::RunCommand(
                {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                 "other-ca.key", "-out", "other-ca.crt", "-days", "2", "-subj", "/CN=another-ca"},
                &out, &err, dir.path()),
            0)
      << err;
}

TEST(ForwardRequestTest, OverTlsTheOwnersCertificateMustVerifyAndNameItsHost) {
  testing::TempDir dir;
  ASSERT_NO_FATAL_FAILURE(MakeTlsFixtures(dir));
  auto owner = TlsOwner(dir, "server");
  ASSERT_NE(owner, nullptr);
  std::string port = std::to_string(owner->port());
  HttpRequest req;
  req.method = "GET";
  req.path = "/v1/things/d1/shadow";

  auto trusted = ForwardTls::Make(dir.File("ca.crt"), "", "");
  ASSERT_TRUE(trusted.ok()) << trusted.status().message();
  for (const std::string& base :
       {"https://127.0.0.1:" + port, "https://localhost:" + port, "https://127.0.0.1:" + port}) {
    auto answer = ForwardRequest(base, req, "a", {}, trusted->get());
    ASSERT_TRUE(answer.ok()) << base << ": " << answer.status().message();
    EXPECT_EQ(answer->status, 200);
    EXPECT_EQ(answer->body, R"({"from":"owner"})");
  }
  // (The third resumed the first's session; the second, to another name, had none to offer.)
  EXPECT_EQ((*trusted)->resumed(), 1u);
  // Plain HTTP to a TLS owner gets no answer.
  EXPECT_FALSE(ForwardRequest("http://127.0.0.1:" + port, req, "a", {}, trusted->get()).ok());

  // A certificate from a CA this instance does not trust: refused in the handshake.
  auto other = ForwardTls::Make(dir.File("other-ca.crt"), "", "");
  ASSERT_TRUE(other.ok()) << other.status().message();
  auto untrusted = ForwardRequest("https://127.0.0.1:" + port, req, "a", {}, other->get());
  ASSERT_FALSE(untrusted.ok());
  EXPECT_EQ(untrusted.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(untrusted.status().message().find("TLS handshake"), std::string::npos)
      << untrusted.status().message();
  EXPECT_NE(untrusted.status().message().find("certificate verify failed"), std::string::npos)
      << untrusted.status().message();

  // A trusted certificate, but for another host than the one the address names.
  auto impostor = TlsOwner(dir, "elsewhere");
  ASSERT_NE(impostor, nullptr);
  auto wrong_host = ForwardRequest("https://127.0.0.1:" + std::to_string(impostor->port()), req,
                                   "a", {}, trusted->get());
  ASSERT_FALSE(wrong_host.ok()) << "a certificate for elsewhere.example taken for 127.0.0.1";
  EXPECT_NE(wrong_host.status().message().find("certificate verify failed"), std::string::npos)
      << wrong_host.status().message();

  // Files that cannot be read are an error when the TLS is made, not at the first forward.
  auto missing = ForwardTls::Make(dir.File("nothing.crt"), "", "");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("nothing.crt"), std::string::npos)
      << missing.status().message();
  EXPECT_FALSE(
      ForwardTls::Make(dir.File("ca.crt"), dir.File("server.crt"), dir.File("ca.key")).ok())
      << "a key that is not the certificate's";
  impostor->Stop();
  owner->Stop();
}

TEST(ForwardRequestTest, AnOwnerAskingForAClientCertificateGetsThisInstancesOwn) {
  testing::TempDir dir;
  ASSERT_NO_FATAL_FAILURE(MakeTlsFixtures(dir));
  auto owner = TlsOwner(dir, "server", "ca.crt");
  ASSERT_NE(owner, nullptr);
  std::string base = "https://127.0.0.1:" + std::to_string(owner->port());
  HttpRequest req;
  req.method = "GET";
  req.path = "/v1/things/d1/shadow";
  // This instance's API certificate (signed by the CA the owner takes clients of).
  auto with_cert =
      ForwardTls::Make(dir.File("ca.crt"), dir.File("server.crt"), dir.File("server.key"));
  ASSERT_TRUE(with_cert.ok()) << with_cert.status().message();
  // Each forward is a connection of its own; after the first they resume its TLS session.
  for (int i = 0; i < 3; ++i) {
    auto answer = ForwardRequest(base, req, "a", {}, with_cert->get());
    ASSERT_TRUE(answer.ok()) << i << ": " << answer.status().message();
    EXPECT_EQ(answer->status, 200);
  }
  EXPECT_EQ((*with_cert)->resumed(), 2u);
  // With connections kept, one handshake for all (and it resumed the session above).
  ForwardConnections pool(1);
  for (int i = 0; i < 3; ++i) {
    auto answer = ForwardRequest(base, req, "a", {}, with_cert->get(), &pool);
    ASSERT_TRUE(answer.ok()) << i << ": " << answer.status().message();
    EXPECT_EQ(answer->body, R"({"from":"owner"})");
  }
  EXPECT_EQ(pool.reused(), 2u);
  EXPECT_EQ((*with_cert)->resumed(), 3u);
  EXPECT_TRUE(testing::WaitFor([&] { return owner->connections() == 1; }))
      << "the kept one only (the earlier forwards' connections closed)";
  // Without one the owner refuses the connection.
  auto without = ForwardTls::Make(dir.File("ca.crt"), "", "");
  ASSERT_TRUE(without.ok());
  auto refused = ForwardRequest(base, req, "a", {}, without->get());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
  owner->Stop();
}

TEST(ForwardConnectionsTest, AConnectionToAnOwnerIsKeptForTheNextForwards) {
  std::atomic<int> calls{0};
  std::vector<HttpRoute> routes;
  auto answer_route = [&](const HttpRequest& req) {
    ++calls;
    HttpResponse out;
    out.status = 200;
    out.body = req.method + " " + req.path;
    return out;
  };
  routes.push_back({"GET", "/v1/things/([^/]+)/shadow", answer_route});
  routes.push_back({"POST", "/v1/things/([^/]+)/shadow", answer_route});
  HttpServerOptions o;
  o.listen = "127.0.0.1:0";
  o.limits.idle_timeout = std::chrono::milliseconds(300);
  auto server = HttpServer::Start(o, routes);
  ASSERT_TRUE(server.ok()) << server.status().message();
  const int port = (*server)->port();
  std::string base = "http://127.0.0.1:" + std::to_string(port);
  HttpRequest get;
  get.method = "GET";
  get.path = "/v1/things/d1/shadow";
  HttpRequest post = get;
  post.method = "POST";  // (no Idempotency-Key: never sent twice)
  post.body = "{}";

  ForwardConnections pool(/*per_owner=*/2);
  for (int i = 0; i < 3; ++i) {
    auto answer = ForwardRequest(base, i == 1 ? post : get, "a", {}, nullptr, &pool);
    ASSERT_TRUE(answer.ok()) << i << ": " << answer.status().message();
    EXPECT_EQ(answer->body, i == 1 ? "POST /v1/things/d1/shadow" : "GET /v1/things/d1/shadow");
  }
  EXPECT_EQ(pool.reused(), 2u);
  EXPECT_EQ(pool.idle(), 1u);
  EXPECT_EQ((*server)->connections(), 1u) << "all three on one connection";

  // The owner closes it (its idle timeout): found closed before it is used, so even a POST,
  // which is never sent twice, goes out on a new connection and is answered.
  ASSERT_TRUE(testing::WaitFor([&] { return (*server)->connections() == 0; }));
  auto after_idle = ForwardRequest(base, post, "a", {}, nullptr, &pool);
  ASSERT_TRUE(after_idle.ok()) << after_idle.status().message();
  EXPECT_EQ(pool.reused(), 2u);
  EXPECT_EQ(calls.load(), 4);

  // The owner restarts on the same port (its process gone, its sockets closed): the same.
  (*server)->Stop();
  server->reset();
  o.listen = "127.0.0.1:" + std::to_string(port);
  auto restarted = HttpServer::Start(o, routes);
  ASSERT_TRUE(restarted.ok()) << restarted.status().message();
  auto after_restart = ForwardRequest(base, post, "a", {}, nullptr, &pool);
  ASSERT_TRUE(after_restart.ok()) << after_restart.status().message();
  EXPECT_EQ(calls.load(), 5);

  // Two forwards at once open two connections; one owner's share of idle ones is kept.
  ForwardConnections one(/*per_owner=*/1);
  std::vector<HttpRoute> slow_routes;
  std::atomic<int> arrived{0};
  slow_routes.push_back({"GET", "/v1/things/([^/]+)/shadow", [&](const HttpRequest& req) {
                           ++arrived;
                           testing::WaitFor([&] { return arrived.load() >= 2; });
                           return answer_route(req);
                         }});
  o.listen = "127.0.0.1:0";
  auto slow = HttpServer::Start(o, slow_routes);
  ASSERT_TRUE(slow.ok());
  std::string slow_base = "http://127.0.0.1:" + std::to_string((*slow)->port());
  std::thread other(
      [&] { EXPECT_TRUE(ForwardRequest(slow_base, get, "a", {}, nullptr, &one).ok()); });
  EXPECT_TRUE(ForwardRequest(slow_base, get, "a", {}, nullptr, &one).ok());
  other.join();
  EXPECT_EQ(arrived.load(), 2);
  EXPECT_EQ(one.idle(), 1u);
  EXPECT_TRUE(testing::WaitFor([&] { return (*slow)->connections() == 1; }))
      << "the second connection is closed";
  (*slow)->Stop();
  (*restarted)->Stop();
}

// A kept connection unused for longer than the pool's max_idle is closed, not used again.
TEST(ForwardConnectionsTest, AConnectionIdleTooLongIsClosedNotReused) {
  std::vector<HttpRoute> routes;
  routes.push_back({"GET", "/v1/things/([^/]+)/shadow", [](const HttpRequest&) {
                      HttpResponse out;
                      out.status = 200;
                      return out;
                    }});
  HttpServerOptions o;
  o.listen = "127.0.0.1:0";
  auto server = HttpServer::Start(o, std::move(routes));
  ASSERT_TRUE(server.ok()) << server.status().message();
  std::string base = "http://127.0.0.1:" + std::to_string((*server)->port());
  HttpRequest get;
  get.method = "GET";
  get.path = "/v1/things/d1/shadow";
  ForwardConnections pool(2, std::chrono::milliseconds(100));
  ASSERT_TRUE(ForwardRequest(base, get, "a", {}, nullptr, &pool).ok());
  ASSERT_EQ(pool.idle(), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  ASSERT_TRUE(ForwardRequest(base, get, "a", {}, nullptr, &pool).ok());
  EXPECT_EQ(pool.reused(), 0u) << "the old connection was past max_idle";
  EXPECT_EQ(pool.idle(), 1u);  // (the new one)
  EXPECT_TRUE(testing::WaitFor([&] { return (*server)->connections() == 1; }))
      << "the idle one was closed";
  (*server)->Stop();
}

// An owner of its own making that answers the first request on a connection and closes the
// connection when a second one arrives on it, without answering: what a forward meets when the
// owner closes a kept connection just as the request is sent.
class ClosingOwner {
 public:
  ClosingOwner() {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(listener_, 8), 0);
    socklen_t len = sizeof addr;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~ClosingOwner() {
    ::shutdown(listener_, SHUT_RDWR);
    thread_.join();
    ::close(listener_);
  }
  std::string base() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int requests() const { return requests_.load(); }

 private:
  void Serve() {
    for (;;) {
      int fd = ::accept(listener_, nullptr, nullptr);
      if (fd < 0) {
        return;
      }
      for (int on_this = 0;; ++on_this) {
        std::string head;
        char c = 0;
        while (head.find("\r\n\r\n") == std::string::npos && ::read(fd, &c, 1) == 1) {
          head += c;
        }
        if (head.find("\r\n\r\n") == std::string::npos) {
          break;
        }
        if (auto at = head.find("Content-Length: "); at != std::string::npos) {
          std::string body(std::stoul(head.substr(at + 16)), '\0');
          ::read(fd, body.data(), body.size());
        }
        ++requests_;
        if (on_this > 0) {
          break;  // closed, not answered
        }
        std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        ::write(fd, answer.data(), answer.size());
      }
      ::close(fd);
    }
  }
  int listener_ = -1;
  int port_ = 0;
  std::atomic<int> requests_{0};
  std::thread thread_;
};

TEST(ForwardConnectionsTest, AKeptConnectionClosedAsItIsUsedIsReplacedOnlyWhenThatIsSafe) {
  ClosingOwner owner;
  HttpRequest get;
  get.method = "GET";
  get.path = "/v1/things/d1/shadow";
  ForwardConnections pool(2);
  ASSERT_TRUE(ForwardRequest(owner.base(), get, "a", {}, nullptr, &pool).ok());
  // A GET on the kept connection: closed unanswered, sent again on a new one.
  auto again = ForwardRequest(owner.base(), get, "a", {}, nullptr, &pool);
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ(again->body, "ok");
  EXPECT_EQ(owner.requests(), 3);

  // A POST without an Idempotency-Key: the owner may have applied it; not sent twice.
  HttpRequest post = get;
  post.method = "POST";
  post.body = R"({"state":{}})";
  auto once = ForwardRequest(owner.base(), post, "a", {}, nullptr, &pool);
  ASSERT_FALSE(once.ok());
  EXPECT_EQ(once.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(once.status().message().find("reading the answer"), std::string::npos)
      << once.status().message();
  EXPECT_EQ(owner.requests(), 4);

  // With one the owner applies it at most once: sent again.
  ASSERT_TRUE(ForwardRequest(owner.base(), post, "a", {}, nullptr, &pool).ok());  // (kept again)
  post.idempotency_key = "k-1";
  auto keyed = ForwardRequest(owner.base(), post, "a", {}, nullptr, &pool);
  ASSERT_TRUE(keyed.ok()) << keyed.status().message();
  EXPECT_EQ(owner.requests(), 7);
  EXPECT_EQ(pool.reused(), 3u);
}

TEST(ForwardGateTest, AnOwnerGetsItsShareAndAllOwnersTogetherTheTotal) {
  ForwardGate gate(/*per_owner=*/2, /*total=*/3);
  auto a1 = gate.Enter("a");
  auto a2 = gate.Enter("a");
  ASSERT_TRUE(a1 && a2);
  EXPECT_FALSE(gate.Enter("a"));  // a's share is taken
  auto b1 = gate.Enter("b");
  ASSERT_TRUE(b1);
  EXPECT_FALSE(gate.Enter("c"));  // the total is taken
  a1.reset();                     // one of a's came back
  auto c1 = gate.Enter("c");
  ASSERT_TRUE(c1);
  EXPECT_FALSE(gate.Enter("a"));
  {
    auto moved = std::move(*c1);  // (a ticket moved lets go once)
    c1.reset();
  }
  auto a3 = gate.Enter("a");
  ASSERT_TRUE(a3);
  EXPECT_FALSE(gate.Enter("b"));
  a2.reset();
  a3.reset();
  b1.reset();
  std::vector<ForwardGate::Ticket> all;
  for (int i = 0; i < 3; ++i) {  // nothing is left held: the whole total again
    auto t = gate.Enter(std::to_string(i));
    ASSERT_TRUE(t);
    all.push_back(std::move(*t));
  }
  EXPECT_FALSE(gate.Enter("x"));
}

}  // namespace
}  // namespace gnomon::engine

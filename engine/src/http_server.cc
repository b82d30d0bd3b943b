// SPDX-License-Identifier: Apache-2.0
// (Beast's string_view is std::string_view in every file of this library: the target's
// BOOST_BEAST_USE_STD_STRING_VIEW. Two files that differ in it break each other's templates.)
#include "http_server.h"
#include "http_body.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <sys/resource.h>

#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <condition_variable>
#include <future>
#include <limits>
#include <mutex>
#include <optional>
#include <regex>
#include <thread>

#include "gnomon/core/json.h"
#include "gnomon/core/log.h"
#include "gnomon/core/mutex.h"

namespace gnomon::engine {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

unsigned ParseScope(std::string_view name) {
  if (name == "read") {
    return kScopeRead;
  }
  if (name == "write") {
    return kScopeWrite;
  }
  if (name == "admin") {
    return kScopeAdmin;
  }
  if (name == "metrics") {
    return kScopeMetrics;
  }
  return 0;
}

namespace {

constexpr size_t kMaxTarget = 8192;  // bytes of a request's path and query

using Digest = std::array<unsigned char, 32>;

Digest Sha256(std::string_view s) {
  Digest d{};
  unsigned int n = 0;
  EVP_Digest(s.data(), s.size(), d.data(), &n, EVP_sha256(), nullptr);
  return d;
}

std::string ErrorJson(int code, std::string_view error, std::string_view message) {
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  std::string body;
  json::ObjectWriter w(body);
  w.Field("code", code).Field("error", error).Field("message", message);
  w.Field("timestamp", static_cast<int64_t>(now));
  w.Close();
  return body;
}

HttpResponse Refusal(int code, std::string_view error, std::string_view message) {
  HttpResponse r;
  r.status = code;
  r.body = ErrorJson(code, error, message);
  return r;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

// Percent-decodes `in` (and '+' as a space in a query). False on a broken escape.
bool Decode(std::string_view in, bool query, std::string& out) {
  out.clear();
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) {
        return false;
      }
      int hi = HexValue(in[i + 1]);
      int lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) {
        return false;
      }
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (query && c == '+') {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return true;
}

struct CompiledRoute {
  HttpRoute route;
  std::regex re;
  std::string prefix;  // the literal start of the pattern: a cheap test before the regex
};

std::string LiteralPrefix(const std::string& pattern) {
  std::string p;
  for (char c : pattern) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) {
      break;
    }
    p.push_back(c);
  }
  return p;
}

std::string_view ReasonPhrase(int status) {
  return http::obsolete_reason(static_cast<http::status>(status));
}

}  // namespace

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  HttpServerOptions opt;
  std::vector<CompiledRoute> routes;
  std::vector<std::pair<Digest, unsigned>> tokens;
  size_t max_connections = 0;
  int port = 0;
  std::atomic<size_t> connections{0};
  std::atomic<bool> stopping{false};
  Mutex stream_mu;
  std::condition_variable stream_cv;
  int streams GNOMON_GUARDED_BY(stream_mu) = 0;
  std::unique_ptr<asio::thread_pool> pool;
  std::vector<std::thread> io_threads;
  // Declared last: destroyed first, with the sessions its pending handlers hold.
  std::optional<asio::ssl::context> ssl;
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc};
  asio::steady_timer accept_retry{ioc};

  // The scope the request's bearer token grants: 0 for none or an unknown token. Every
  // configured token is compared, in constant time, against a digest of the offered one.
  unsigned Grants(std::string_view authorization) const {
    constexpr std::string_view kBearer = "bearer ";
    if (authorization.size() <= kBearer.size()) {
      return 0;
    }
    for (size_t i = 0; i < kBearer.size(); ++i) {
      if (std::tolower(static_cast<unsigned char>(authorization[i])) != kBearer[i]) {
        return 0;
      }
    }
    Digest offered = Sha256(authorization.substr(kBearer.size()));
    unsigned grants = 0;
    for (const auto& [digest, scopes] : tokens) {
      bool same = CRYPTO_memcmp(digest.data(), offered.data(), digest.size()) == 0;
      grants |= same ? scopes : 0;
    }
    return grants;
  }

  const CompiledRoute* Match(std::string_view method, const std::string& path,
                             std::smatch& m, bool& other_method) const {
    other_method = false;
    for (const auto& r : routes) {
      if (path.compare(0, r.prefix.size(), r.prefix) != 0) {
        continue;
      }
      if (std::regex_match(path, m, r.re)) {
        if (r.route.method == method) {
          return &r;
        }
        other_method = true;
      }
    }
    return nullptr;
  }

  void Accept();
  template <class Stream>
  void Serve(tcp::socket socket);
};

namespace {

template <class Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
 public:
  template <class... Args>
  Session(HttpServer::Impl* srv, Args&&... args)
      : srv_(srv), stream_(std::forward<Args>(args)...),
        buffer_(srv->opt.limits.max_header_bytes + 8192) {
    srv_->connections.fetch_add(1, std::memory_order_relaxed);
  }
  ~Session() { srv_->connections.fetch_sub(1, std::memory_order_relaxed); }

  void Run() {
    if constexpr (kTls) {
      Lowest().expires_after(srv_->opt.limits.header_timeout);
      stream_.async_handshake(asio::ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (ec) {
                                  return self->Close();
                                }
                                self->WaitRequest();
                              });
    } else {
      WaitRequest();
    }
  }

 private:
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

  beast::tcp_stream& Lowest() { return beast::get_lowest_layer(stream_); }

  // Between requests: wait (idle_timeout) for a first byte; the header then has header_timeout.
  void WaitRequest() {
    if (srv_->stopping) {
      return Close();
    }
    if (buffer_.size() > 0) {
      return ReadHeader();
    }
    buffer_.shrink_to_fit();  // an idle connection holds no big buffer
    Lowest().expires_after(srv_->opt.limits.idle_timeout);
    stream_.async_read_some(buffer_.prepare(512),
                            [self = this->shared_from_this()](beast::error_code ec, size_t n) {
                              if (ec) {
                                return self->Close();
                              }
                              self->buffer_.commit(n);
                              self->ReadHeader();
                            });
  }

  void ReadHeader() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(srv_->opt.limits.max_header_bytes));
    // No body limit while the header is read: a Content-Length over it is answered after the
    // token check (401 before 413), and the limit is set before the body is read.
    // (Not boost::none: Beast 1.74 compares a length with the optional, and none is smaller.)
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    Lowest().expires_after(srv_->opt.limits.header_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = this->shared_from_this()](beast::error_code ec, size_t) {
                              self->OnHeader(ec);
                            });
  }

  void OnHeader(beast::error_code ec) {
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      return Refuse(431, "HEADER_TOO_LARGE",
                    fmt::format("The request header exceeds {} bytes",
                                srv_->opt.limits.max_header_bytes));
    }
    if (ec == beast::error::timeout) {
      return Close();  // the stream closed the socket: no answer can go out
    }
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::connection_reset || ec == asio::error::operation_aborted) {
      return Close();
    }
    if (ec) {
      return Refuse(400, "BAD_REQUEST", fmt::format("The request could not be read: {}", ec.message()));
    }
    auto& req = parser_->get();
    size_t fields = std::distance(req.begin(), req.end());
    if (fields > srv_->opt.limits.max_header_fields) {
      return Refuse(431, "HEADER_TOO_LARGE",
                    fmt::format("The request has {} header fields; at most {} are taken", fields,
                                srv_->opt.limits.max_header_fields));
    }
    keep_alive_ = req.keep_alive();
    in_ = HttpRequest{};
    in_.method = std::string(req.method_string());
    std::string_view target = req.target();
    if (target.size() > kMaxTarget) {
      return Refuse(414, "URI_TOO_LONG",
                    fmt::format("The request URI is {} bytes; at most {} are taken", target.size(),
                                kMaxTarget));
    }
    in_.target = std::string(target);
    size_t q = target.find('?');
    if (!Decode(target.substr(0, q), false, in_.path) || in_.path.empty() || in_.path[0] != '/') {
      return Refuse(400, "BAD_REQUEST", "The request path is not a valid absolute path");
    }
    if (q != std::string_view::npos) {
      std::string_view query = target.substr(q + 1);
      while (!query.empty()) {
        size_t amp = query.find('&');
        std::string_view pair = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
        if (pair.empty()) {
          continue;
        }
        size_t eq = pair.find('=');
        std::string k, v;
        if (!Decode(pair.substr(0, eq), true, k) ||
            (eq != std::string_view::npos && !Decode(pair.substr(eq + 1), true, v))) {
          return Refuse(400, "BAD_REQUEST", "The query string has a broken %-escape");
        }
        in_.query.emplace_back(std::move(k), std::move(v));
      }
    }
    std::smatch m;
    bool other_method = false;
    route_ = srv_->Match(in_.method, in_.path, m, other_method);
    if (route_ == nullptr) {
      if (other_method) {
        return Refuse(405, "METHOD_NOT_ALLOWED",
                      fmt::format("{} is not allowed on {}", in_.method, in_.path));
      }
      return Refuse(404, "NOT_FOUND", fmt::format("No such endpoint: {} {}", in_.method, in_.path));
    }
    for (size_t i = 1; i < m.size(); ++i) {
      in_.params.push_back(m[i].str());
    }
    in_.authorization = std::string(req[http::field::authorization]);
    in_.content_type = std::string(req[http::field::content_type]);
    in_.idempotency_key = std::string(req["Idempotency-Key"]);
    in_.forwarded_by = std::string(req["X-Gnomon-Forwarded-By"]);
    if (unsigned need = route_->route.scope; need != kScopeNone) {
      unsigned grants = srv_->Grants(in_.authorization);
      if (grants == 0) {
        return Refuse(401, "UNAUTHORIZED", "missing or wrong bearer token",
                      {{"WWW-Authenticate", "Bearer"}});
      }
      if ((grants & need) == 0) {
        std::string_view scope = need == kScopeRead    ? "read"
                                 : need == kScopeWrite ? "write"
                                 : need == kScopeAdmin ? "admin"
                                                       : "metrics";
        return Refuse(403, "FORBIDDEN",
                      fmt::format("this token lacks the {} scope that {} {} needs", scope,
                                  in_.method, in_.path));
      }
    }
    if (auto len = parser_->content_length(); len && *len > srv_->opt.max_body_bytes) {
      return Refuse(413, "PAYLOAD_TOO_LARGE",
                    fmt::format("The payload exceeds the maximum size allowed ({} bytes)",
                                srv_->opt.max_body_bytes));
    }
    std::string_view encoding = req[http::field::content_encoding];
    if (!encoding.empty() && !beast::iequals(encoding, "identity") &&
        !beast::iequals(encoding, "gzip") && !beast::iequals(encoding, "x-gzip") &&
        !beast::iequals(encoding, "deflate")) {
      return Refuse(415, "UNSUPPORTED_ENCODING",
                    fmt::format("Content-Encoding {} is not supported (gzip, deflate)", encoding));
    }
    parser_->body_limit(srv_->opt.max_body_bytes);  // chunked bodies: counted as read
    if (parser_->is_done()) {
      return Dispatch();
    }
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      auto cont = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
      Lowest().expires_after(srv_->opt.limits.write_timeout);
      asio::async_write(stream_, asio::buffer(*cont),
                        [self = this->shared_from_this(), cont](beast::error_code ec, size_t) {
                          if (ec) {
                            return self->Close();
                          }
                          self->ReadBody();
                        });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    Lowest().expires_after(srv_->opt.limits.body_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, size_t) {
                       if (ec == http::error::body_limit) {
                         return self->Refuse(
                             413, "PAYLOAD_TOO_LARGE",
                             fmt::format("The payload exceeds the maximum size allowed ({} bytes)",
                                         self->srv_->opt.max_body_bytes));
                       }
                       if (ec == http::error::buffer_overflow) {
                         return self->Refuse(400, "BAD_REQUEST", "A chunk-size line is too long");
                       }
                       if (ec) {
                         return self->Close();
                       }
                       self->Dispatch();
                     });
  }

  void Dispatch() {
    auto& req = parser_->get();
    in_.body = std::move(req.body());
    std::string_view encoding = req[http::field::content_encoding];
    bool gzip = beast::iequals(encoding, "gzip") || beast::iequals(encoding, "x-gzip");
    if (gzip || beast::iequals(encoding, "deflate")) {
      if (auto bad = InflateBody(in_.body, gzip, srv_->opt.max_body_bytes)) {
        return Respond(Refusal(bad->status, bad->error, bad->message));
      }
    }
    parser_.reset();
    if (route_->route.run_inline) {
      return Respond(Call(route_->route.handler, in_));
    }
    if (route_->route.fast) {
      HttpResponse out;
      bool answered = false;
      try {
        answered = route_->route.fast(in_, out);
      } catch (const std::exception& e) {
        log::Error("HTTP handler failed", {{"path", in_.path}, {"error", e.what()}});
        return Respond(Refusal(500, "INTERNAL_ERROR", "Internal error"));
      }
      if (answered) {
        return Respond(std::move(out));
      }
    }
    asio::post(*srv_->pool, [self = this->shared_from_this(), h = &route_->route.handler]() mutable {
      HttpResponse out = Call(*h, self->in_);
      auto exec = self->stream_.get_executor();
      asio::post(exec, [self = std::move(self), out = std::move(out)]() mutable {
        self->Respond(std::move(out));
      });
    });
  }

  static HttpResponse Call(const std::function<HttpResponse(const HttpRequest&)>& h,
                           const HttpRequest& in) {
    try {
      return h(in);
    } catch (const std::exception& e) {
      log::Error("HTTP handler failed", {{"path", in.path}, {"error", e.what()}});
      return Refusal(500, "INTERNAL_ERROR", "Internal error");
    }
  }

  // An answer to a request that is not (fully) read: the connection closes after it.
  void Refuse(int status, std::string_view error, std::string_view message,
              std::vector<std::pair<std::string, std::string>> headers = {}) {
    keep_alive_ = false;
    linger_ = true;
    HttpResponse r = Refusal(status, error, message);
    r.headers = std::move(headers);
    parser_.reset();
    buffer_.clear();
    Respond(std::move(r));
  }

  void Respond(HttpResponse r) {
    if (r.stream) {
      return StartStream(std::move(r));
    }
    res_.emplace();
    res_->version(11);
    res_->result(static_cast<unsigned>(r.status));
    if (r.body.empty() && r.status >= 400) {
      r.body = ErrorJson(r.status, r.status >= 500 ? "INTERNAL_ERROR" : "BAD_REQUEST",
                         std::string(ReasonPhrase(r.status)));
    }
    res_->set(http::field::content_type, r.content_type);
    for (const auto& [k, v] : r.headers) {
      res_->set(k, v);
    }
    res_->body() = std::move(r.body);
    res_->keep_alive(keep_alive_ && !srv_->stopping);
    res_->prepare_payload();
    Lowest().expires_after(srv_->opt.limits.write_timeout);
    http::async_write(stream_, *res_,
                      [self = this->shared_from_this()](beast::error_code ec, size_t) {
                        bool again = !ec && self->res_->keep_alive();
                        self->res_.reset();
                        if (!again) {
                          return self->linger_ ? self->Linger(true) : self->Close();
                        }
                        self->WaitRequest();
                      });
  }

  // Server-Sent Events: the header here, then the stream function on a thread of its own
  // writing chunks through this connection's strand.
  void StartStream(HttpResponse r) {
    auto head = std::make_shared<std::string>(fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nCache-Control: no-cache\r\n"
        "Transfer-Encoding: chunked\r\n",
        r.status, ReasonPhrase(r.status), r.content_type));
    for (const auto& [k, v] : r.headers) {
      *head += fmt::format("{}: {}\r\n", k, v);
    }
    *head += "\r\n";
    {
      MutexLock lock(srv_->stream_mu);
      ++srv_->streams;
    }
    Lowest().expires_after(srv_->opt.limits.write_timeout);
    asio::async_write(
        stream_, asio::buffer(*head),
        [self = this->shared_from_this(), head,
         fn = std::move(r.stream)](beast::error_code ec, size_t) mutable {
          // The thread holds the server too: if Stop gives up waiting for it, the server (and
          // its io_context) outlive it, and the session goes first.
          std::thread([self, srv = self->srv_->shared_from_this(), ok = !ec,
                       fn = std::move(fn)]() mutable {
            pthread_setname_np(pthread_self(), "gnomon-sse");
            if (ok) {
              fn([&](std::string_view data) { return self->WriteChunk(data); });
              self->WriteChunk({});  // the last chunk
            }
            asio::post(self->stream_.get_executor(), [self] { self->Close(); });
            self.reset();
            fn = nullptr;
            MutexLock lock(srv->stream_mu);
            --srv->streams;
            srv->stream_cv.notify_all();
          }).detach();
        });
  }

  // From the stream's thread: one chunk (empty: the last), waited for.
  bool WriteChunk(std::string_view data) {
    if (srv_->stopping) {
      return false;
    }
    auto chunk = std::make_shared<std::string>(
        data.empty() ? std::string("0\r\n\r\n") : fmt::format("{:x}\r\n{}\r\n", data.size(), data));
    auto done = std::make_shared<std::promise<bool>>();
    auto result = done->get_future();
    asio::post(stream_.get_executor(), [self = this->shared_from_this(), chunk, done] {
      self->Lowest().expires_after(self->srv_->opt.limits.write_timeout);
      asio::async_write(self->stream_, asio::buffer(*chunk),
                        [chunk, done](beast::error_code ec, size_t) { done->set_value(!ec); });
    });
    while (result.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
      if (srv_->stopping) {
        return false;
      }
    }
    return result.get();
  }

  // After a refusal the client may still be sending (a body we did not read): closing at once
  // would reset the connection, and the client could lose the answer. Stop sending, read and
  // drop what comes for a short while (3 s at most), then close.
  void Linger(bool first) {
    if (first) {
      beast::error_code ec;
      Lowest().socket().shutdown(tcp::socket::shutdown_send, ec);
      buffer_.clear();
      buffer_.shrink_to_fit();
      linger_until_ = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    }
    Lowest().expires_at(linger_until_);
    Lowest().async_read_some(buffer_.prepare(4096),
                             [self = this->shared_from_this()](beast::error_code ec, size_t) {
                               if (ec) {
                                 return self->Close();
                               }
                               self->Linger(false);
                             });
  }

  void Close() {
    beast::error_code ec;
    Lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    Lowest().close();
  }

  HttpServer::Impl* srv_;
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::response<http::string_body>> res_;
  HttpRequest in_;
  const CompiledRoute* route_ = nullptr;
  bool keep_alive_ = true;
  bool linger_ = false;
  std::chrono::steady_clock::time_point linger_until_;
};

}  // namespace

template <class Stream>
void HttpServer::Impl::Serve(tcp::socket socket) {
  if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
    std::make_shared<Session<Stream>>(this, std::move(socket))->Run();
  } else {
    std::make_shared<Session<Stream>>(this, std::move(socket), *ssl)->Run();
  }
}

void HttpServer::Impl::Accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || stopping) {
      return;
    }
    if (ec) {
      // Out of descriptors (EMFILE) or the like: wait a little rather than spin.
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](beast::error_code e) {
        if (!e && !stopping) {
          Accept();
        }
      });
      return;
    }
    if (connections.load(std::memory_order_relaxed) >= max_connections) {
      // Refused at once, never queued: one short write that may not block, then close.
      std::string body = ErrorJson(503, "TOO_MANY_CONNECTIONS",
                                   fmt::format("At most {} connections at a time", max_connections));
      std::string msg = fmt::format(
          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
          "Content-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{}",
          body.size(), body);
      if (!ssl) {
        beast::error_code e;
        socket.non_blocking(true, e);
        socket.write_some(asio::buffer(msg), e);
      }
      beast::error_code e;
      socket.shutdown(tcp::socket::shutdown_both, e);
      socket.close(e);
    } else {
      socket.set_option(tcp::no_delay(true), ec);
      if (ssl) {
        Serve<beast::ssl_stream<beast::tcp_stream>>(std::move(socket));
      } else {
        Serve<beast::tcp_stream>(std::move(socket));
      }
    }
    Accept();
  });
}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(HttpServerOptions options,
                                                      std::vector<HttpRoute> routes) {
  const std::string listen = options.listen;  // a copy: options moves into the server
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgument("listen: must be host:port (got " + listen + ")");
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = std::atoi(listen.c_str() + colon + 1);
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->impl_ = std::make_shared<Impl>();
  Impl& impl = *s->impl_;
  impl.opt = std::move(options);
  const HttpLimits& lim = impl.opt.limits;
  for (auto& r : routes) {
    CompiledRoute c{std::move(r), std::regex(), ""};
    c.re = std::regex(c.route.pattern);
    c.prefix = LiteralPrefix(c.route.pattern);
    impl.routes.push_back(std::move(c));
  }
  for (const auto& t : impl.opt.tokens) {
    impl.tokens.emplace_back(Sha256(t.token), t.scopes);
  }
  // Connections are bounded by the descriptors the process may open: raise the soft limit to
  // the hard one, and keep a reserve for everything else (broker, sinks, rule files).
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  auto fds = static_cast<size_t>(rl.rlim_cur);
  size_t fd_room = fds > 512 ? fds - 256 : fds / 2;
  impl.max_connections = std::min(lim.max_connections, fd_room);

  if (!impl.opt.tls.cert.empty()) {
    try {
      impl.ssl.emplace(asio::ssl::context::tls_server);
      auto& ctx = *impl.ssl;
      ctx.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                      asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                      asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use);
      SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
      ctx.use_certificate_chain_file(impl.opt.tls.cert);
      ctx.use_private_key_file(impl.opt.tls.key, asio::ssl::context::pem);
      if (!impl.opt.tls.client_ca.empty()) {
        ctx.load_verify_file(impl.opt.tls.client_ca);
        ctx.set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
      }
      // Sessions resumed by clients (another instance forwarding, docs/cluster.md) are this
      // listener's: without a context OpenSSL fails a resumption when it verifies clients.
      static constexpr unsigned char kSessionContext[] = "gnomon-api";
      SSL_CTX_set_session_id_context(ctx.native_handle(), kSessionContext,
                                     sizeof(kSessionContext) - 1);
    } catch (const boost::system::system_error& e) {
      return InvalidArgument(fmt::format("{}: TLS: {} (cert {}, key {}{}{})", listen, e.what(),
                                         impl.opt.tls.cert, impl.opt.tls.key,
                                         impl.opt.tls.client_ca.empty() ? "" : ", client_ca ",
                                         impl.opt.tls.client_ca));
    }
  }

  boost::system::error_code ec;
  tcp::resolver resolver(impl.ioc);
  auto found = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
  if (ec || found.empty()) {
    return Unavailable(fmt::format("cannot listen on {}: {}", listen,
                                   ec ? ec.message() : "no such address"));
  }
  tcp::endpoint ep = *found.begin();
  impl.acceptor.open(ep.protocol(), ec);
  if (!ec) {
    impl.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    impl.acceptor.bind(ep, ec);
  }
  if (!ec) {
    impl.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  }
  if (ec) {
    return Unavailable(fmt::format("cannot listen on {}: {}", listen, ec.message()));
  }
  impl.port = impl.acceptor.local_endpoint().port();
  impl.pool = std::make_unique<asio::thread_pool>(std::max(1, lim.handler_threads));
  impl.Accept();
  for (int i = 0; i < std::max(1, lim.io_threads); ++i) {
    impl.io_threads.emplace_back([impl = &impl, i] {
      std::string name = fmt::format("gnomon-{}{}", impl->opt.name, i).substr(0, 15);
      pthread_setname_np(pthread_self(), name.c_str());
      impl->ioc.run();
    });
  }
  return s;
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) {
    return;
  }
  Impl& impl = *impl_;
  asio::post(impl.ioc, [&impl] {
    beast::error_code ec;
    impl.acceptor.close(ec);
    impl.accept_retry.cancel();
  });
  // Handlers that are running finish (and their answers are dropped); streams see `stopping`.
  if (impl.pool) {  // none if Start failed before it made one
    impl.pool->join();
  }
  {
    MutexLock lock(impl.stream_mu);
    if (!impl.stream_cv.wait_for(lock.native(), std::chrono::seconds(20), [&] {
          impl.stream_mu.AssertHeld();
          return impl.streams == 0;
        })) {
      log::Warn("HTTP streams still open at shutdown", {{"listener", impl.opt.listen}});
    }
  }
  impl.ioc.stop();
  for (auto& t : impl.io_threads) {
    t.join();
  }
  impl.io_threads.clear();
}

int HttpServer::port() const { return impl_->port; }

size_t HttpServer::connections() const {
  return impl_->connections.load(std::memory_order_relaxed);
}

}  // namespace gnomon::engine

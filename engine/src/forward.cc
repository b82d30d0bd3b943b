// SPDX-License-Identifier: Apache-2.0
#include "forward.h"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cerrno>
#include <iterator>
#include <map>

namespace gnomon::engine {

std::optional<ForwardGate::Ticket> ForwardGate::Enter(const std::string& owner) {
  MutexLock lock(mu_);
  auto it = waiting_.find(owner);
  if (all_ >= total_ || (it != waiting_.end() && it->second >= per_owner_)) {
    return std::nullopt;
  }
  if (it == waiting_.end()) {
    it = waiting_.emplace(owner, 0).first;
  }
  ++it->second;
  ++all_;
  return Ticket(this, owner);
}

void ForwardGate::Leave(const std::string& owner) {
  MutexLock lock(mu_);
  --all_;
  if (auto it = waiting_.find(owner); it != waiting_.end() && --it->second == 0) {
    waiting_.erase(it);  // (owners come and go: no entry outlives its last forward)
  }
}

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;

struct ForwardTls::Impl {
  ssl::context ctx{ssl::context::tls_client};
  // The last resumable TLS session with each owner (by address): the next forward there
  // resumes it instead of a full handshake (no certificate signed and verified again).
  Mutex mu;
  std::map<std::string, SSL_SESSION*, std::less<>> sessions GNOMON_GUARDED_BY(mu);
  std::atomic<uint64_t> resumed{0};
  static constexpr size_t kMaxOwners = 256;  // sessions kept, one per owner's address

  ~Impl() {
    MutexLock lock(mu);
    for (auto& [base, session] : sessions) {
      SSL_SESSION_free(session);
    }
  }
  // Offers the session kept for `base`, if any, to `ssl`.
  void Offer(const std::string& base, SSL* ssl) {
    MutexLock lock(mu);
    if (auto it = sessions.find(base); it != sessions.end()) {
      SSL_set_session(ssl, it->second);
    }
  }
  // Counts a handshake that resumed a session.
  void Handshaken(SSL* ssl) {
    if (SSL_session_reused(ssl) == 1) {
      resumed.fetch_add(1, std::memory_order_relaxed);
    }
  }
  // Keeps `ssl`'s session for `base` after a whole exchange (when it can be resumed: TLS 1.3
  // sends its tickets after the handshake, so they have arrived with the answer).
  void Keep(const std::string& base, SSL* ssl) {
    SSL_SESSION* session = SSL_get1_session(ssl);
    if (session == nullptr) {
      return;
    }
    if (SSL_SESSION_is_resumable(session) != 1) {
      SSL_SESSION_free(session);
      return;
    }
    MutexLock lock(mu);
    if (sessions.size() >= kMaxOwners && !sessions.contains(base)) {
      // (Owners are the cluster's instances; addresses that came and went are forgotten.)
      for (auto& entry : sessions) {
        SSL_SESSION_free(entry.second);
      }
      sessions.clear();
    }
    auto [it, added] = sessions.try_emplace(base, session);
    if (!added) {
      SSL_SESSION_free(it->second);
      it->second = session;
    }
  }
};

uint64_t ForwardTls::resumed() const { return impl_->resumed.load(std::memory_order_relaxed); }

ForwardTls::ForwardTls(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ForwardTls::~ForwardTls() = default;

Result<std::shared_ptr<const ForwardTls>> ForwardTls::Make(const std::string& ca_file,
                                                           const std::string& cert_file,
                                                           const std::string& key_file) {
  auto impl = std::make_unique<Impl>();
  ssl::context& ctx = impl->ctx;
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                  ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  ctx.set_verify_mode(ssl::verify_peer);
  beast::error_code ec;
  if (ca_file.empty()) {
    ctx.set_default_verify_paths(ec);
  } else {
    ctx.load_verify_file(ca_file, ec);
  }
  if (ec) {
    return InvalidArgument(fmt::format("the CAs to verify other instances with ({}): {}",
                                       ca_file.empty() ? "the system's" : ca_file, ec.message()));
  }
  if (!cert_file.empty()) {
    ctx.use_certificate_chain_file(cert_file, ec);
    if (!ec) {
      ctx.use_private_key_file(key_file, ssl::context::pem, ec);
    }
    if (ec) {
      return InvalidArgument(fmt::format("the certificate shown to other instances ({}, {}): {}",
                                         cert_file, key_file, ec.message()));
    }
  }
  return std::shared_ptr<const ForwardTls>(new ForwardTls(std::move(impl)));
}

// One connection to an owner: its own io_context (a forward runs it on the calling thread), the
// stream, plain or TLS, and what was read past the last answer (nothing, on a healthy one).
struct ForwardConnections::Conn {
  asio::io_context ioc;
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
  beast::flat_buffer buffer;
  bool clean = false;         // its last exchange was whole
  bool session_kept = false;  // its TLS session is ForwardTls's (kept once per connection)
  std::chrono::steady_clock::time_point idle_since;

  Conn(const ForwardTls* tls, bool https) {
    if (https) {
      secure.emplace(ioc, tls->impl().ctx);
    } else {
      plain.emplace(ioc);
    }
  }
  ~Conn() {
    if (secure && clean) {
      // Closed without a close_notify, but after whole exchanges: marked shut down, so that
      // OpenSSL does not take its session for one that failed (those it makes unresumable).
      SSL_set_shutdown(secure->native_handle(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    }
  }
  beast::tcp_stream& Lowest() { return secure ? beast::get_lowest_layer(*secure) : *plain; }

  // Still open, with nothing to read: the owner has not closed it (an end of stream or a TLS
  // alert waiting in the socket) nor sent anything unasked.
  bool Alive() {
    if (!clean || buffer.size() != 0 || !Lowest().socket().is_open()) {
      return false;
    }
    if (secure && SSL_pending(secure->native_handle()) > 0) {
      return false;
    }
    char byte = 0;
    ssize_t n = ::recv(Lowest().socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
};

ForwardConnections::ForwardConnections(size_t per_owner, std::chrono::milliseconds max_idle,
                                       Counter* opened, Counter* kept)
    : per_owner_(std::max<size_t>(1, per_owner)),
      max_idle_(max_idle),
      opened_(opened),
      kept_(kept) {}

ForwardConnections::~ForwardConnections() = default;

uint64_t ForwardConnections::reused() const {
  MutexLock lock(mu_);
  return reused_;
}

size_t ForwardConnections::idle() const {
  MutexLock lock(mu_);
  return count_;
}

std::unique_ptr<ForwardConnections::Conn> ForwardConnections::Take(const std::string& base) {
  for (;;) {
    std::unique_ptr<Conn> c;
    {
      MutexLock lock(mu_);
      auto it = idle_.find(base);
      if (it == idle_.end()) {
        return nullptr;
      }
      c = std::move(it->second.back());  // the most recently used first
      it->second.pop_back();
      --count_;
      if (it->second.empty()) {
        idle_.erase(it);
      }
    }
    // (Checked outside the lock; one that is not fit is closed and the next one tried.)
    if (std::chrono::steady_clock::now() - c->idle_since < max_idle_ && c->Alive()) {
      if (kept_ != nullptr) {
        kept_->Inc();
      }
      MutexLock lock(mu_);
      ++reused_;
      return c;
    }
  }
}

void ForwardConnections::Give(const std::string& base, std::unique_ptr<Conn> conn) {
  std::vector<std::unique_ptr<Conn>> closing;
  auto now = std::chrono::steady_clock::now();
  conn->idle_since = now;
  MutexLock lock(mu_);
  if (now - swept_ >= std::chrono::seconds(1)) {
    // Owners not forwarded to for a while: their connections are closed.
    swept_ = now;
    for (auto it = idle_.begin(); it != idle_.end();) {
      auto& conns = it->second;
      auto fresh = std::find_if(conns.begin(), conns.end(),
                                [&](const auto& c) { return now - c->idle_since < max_idle_; });
      count_ -= static_cast<size_t>(fresh - conns.begin());
      std::move(conns.begin(), fresh, std::back_inserter(closing));
      conns.erase(conns.begin(), fresh);
      it = conns.empty() ? idle_.erase(it) : std::next(it);
    }
  }
  auto it = idle_.find(base);
  if (it == idle_.end()) {
    if (idle_.size() >= kMaxOwners) {
      closing.push_back(std::move(conn));
      return;
    }
    it = idle_.try_emplace(base).first;
  }
  if (it->second.size() >= per_owner_) {
    closing.push_back(std::move(conn));
    return;
  }
  it->second.push_back(std::move(conn));
  ++count_;
}

namespace {

// How an exchange on one connection ended.
struct Exchanged {
  beast::error_code failed;
  std::string step;
  bool answer_started = false;  // some of the answer had arrived when it failed
};

}  // namespace

Result<HttpResponse> ForwardRequest(const std::string& base, const HttpRequest& req,
                                    const std::string& via, const ForwardLimits& limits,
                                    const ForwardTls* tls, ForwardConnections* pool) {
  const bool https = base.starts_with("https://");
  if (!https && !base.starts_with("http://")) {
    return InvalidArgument(fmt::format("{}: not an http:// or https:// address", base));
  }
  if (https && tls == nullptr) {
    return InvalidArgument(fmt::format("{}: https:// but no TLS set up to reach it", base));
  }
  std::string_view authority = std::string_view(base).substr(https ? 8 : 7);
  size_t colon = authority.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == authority.size() ||
      authority.find('/') != std::string_view::npos) {
    return InvalidArgument(fmt::format("{}: not http(s)://host:port", base));
  }
  std::string host(authority.substr(0, colon));
  std::string port(authority.substr(colon + 1));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }

  http::request<http::string_body> out{http::string_to_verb(req.method),
                                       req.target.empty() ? req.path : req.target, 11};
  out.set(http::field::host, authority);
  out.set(http::field::user_agent, "gnomon-forward");
  if (!req.authorization.empty()) {
    out.set(http::field::authorization, req.authorization);
  }
  if (!req.content_type.empty()) {
    out.set(http::field::content_type, req.content_type);
  }
  if (!req.idempotency_key.empty()) {
    out.set("Idempotency-Key", req.idempotency_key);
  }
  out.set(kForwardedByHeader, via);
  out.keep_alive(pool != nullptr);
  out.body() = req.body;
  out.prepare_payload();
  // Sent again on a new connection when a kept one fails before its answer began: safe when
  // the owner applies it at most once anyway.
  const bool replayable =
      req.method == "GET" || req.method == "HEAD" || !req.idempotency_key.empty();

  std::unique_ptr<ForwardConnections::Conn> conn;
  if (pool != nullptr) {
    conn = pool->Take(base);
  }
  const auto started = std::chrono::steady_clock::now();
  auto remaining = [&] {
    return limits.timeout - std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::steady_clock::now() - started);
  };
  std::optional<http::response_parser<http::string_body>> parser;
  Exchanged result;
  for (bool kept = conn != nullptr;; kept = false) {
    if (!kept) {
      conn = std::make_unique<ForwardConnections::Conn>(tls, https);
      if (pool != nullptr) {
        pool->Opened();
      }
    }
    ForwardConnections::Conn& c = *conn;
    beast::tcp_stream& stream = c.Lowest();
    c.clean = false;
    parser.emplace();
    parser->body_limit(limits.max_body_bytes);
    result = Exchanged{};
    result.step = kept ? "sending" : "resolving";
    auto fail = [&](beast::error_code ec, const char* what) {
      result.failed = ec;
      result.step = what;
    };
    // The request and its answer, on the plain or the TLS stream.
    auto exchange = [&](auto& s) {
      http::async_write(s, out, [&](beast::error_code ec, size_t) {
        if (ec) {
          return fail(ec, "sending");
        }
        http::async_read(s, c.buffer, *parser, [&](beast::error_code ec, size_t) {
          result.answer_started = parser->got_some();
          if (ec) {
            return fail(ec, "reading the answer");
          }
          c.clean = true;
          if (c.secure && !c.session_kept) {
            c.session_kept = true;
            tls->impl().Keep(base, c.secure->native_handle());
          }
        });
      });
    };
    asio::ip::tcp::resolver resolver(c.ioc);
    c.ioc.restart();
    if (kept) {
      stream.expires_after(remaining());
      if (c.secure) {
        exchange(*c.secure);
      } else {
        exchange(*c.plain);
      }
    } else {
      stream.expires_after(std::min(limits.connect_timeout, remaining()));
      resolver.async_resolve(host, port, [&](beast::error_code ec, auto results) {
        if (ec) {
          return fail(ec, "resolving");
        }
        stream.async_connect(results, [&](beast::error_code ec, const auto&) {
          if (ec) {
            return fail(ec, "connecting");
          }
          // The rest of the budget for the handshake, sending and the answer.
          stream.expires_after(remaining());
          if (!c.secure) {
            return exchange(*c.plain);
          }
          // The owner's certificate must name the host of its address (a DNS name or an IP
          // address in its subjectAltName); SNI for a name.
          beast::error_code not_ip;
          asio::ip::make_address(host, not_ip);
          if (not_ip && !SSL_set_tlsext_host_name(c.secure->native_handle(), host.c_str())) {
            return fail(beast::error_code(static_cast<int>(::ERR_get_error()),
                                          asio::error::get_ssl_category()),
                        "setting the TLS server name");
          }
          c.secure->set_verify_callback(ssl::host_name_verification(host));
          tls->impl().Offer(base, c.secure->native_handle());
          c.secure->async_handshake(ssl::stream_base::client, [&](beast::error_code ec) {
            if (ec) {
              return fail(ec, "the TLS handshake");
            }
            tls->impl().Handshaken(c.secure->native_handle());
            exchange(*c.secure);
          });
        });
      });
    }
    // (The resolver is not bound by the stream's timer: it gets the same budget of its own.)
    c.ioc.run_for(remaining() + std::chrono::seconds(1));
    if (!c.ioc.stopped()) {
      return Unavailable(fmt::format("{}: no answer in {} ms", base, limits.timeout.count()));
    }
    if (kept && result.failed && !result.answer_started && replayable &&
        result.failed != beast::error::timeout) {
      continue;  // (the owner closed it as it was being used: once more on a new connection)
    }
    break;
  }
  if (result.failed) {
    return Unavailable(fmt::format("{}: {}: {}", base, result.step, result.failed.message()));
  }
  if (!parser->is_done()) {
    return Unavailable(fmt::format("{}: no answer", base));
  }
  auto& res = parser->get();
  const bool keep = pool != nullptr && res.keep_alive() && !parser->need_eof();
  HttpResponse in;
  in.status = static_cast<int>(res.result_int());
  in.body = std::move(res.body());
  if (auto ct = res.find(http::field::content_type); ct != res.end()) {
    in.content_type = std::string(ct->value());
  }
  if (auto ra = res.find(http::field::retry_after); ra != res.end()) {
    in.headers.emplace_back("Retry-After", std::string(ra->value()));
  }
  if (keep) {
    pool->Give(base, std::move(conn));
  } else {
    beast::error_code ignored;
    conn->Lowest().socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  }
  return in;
}

}  // namespace gnomon::engine

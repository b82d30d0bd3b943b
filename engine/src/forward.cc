// SPDX-License-Identifier: Apache-2.0
#include "forward.h"

#include <fmt/format.h>

#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

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

Result<HttpResponse> ForwardRequest(const std::string& base, const HttpRequest& req,
                                    const std::string& via, const ForwardLimits& limits) {
  constexpr std::string_view kScheme = "http://";
  if (!base.starts_with(kScheme)) {
    return InvalidArgument(fmt::format("{}: not an http:// address", base));
  }
  std::string_view authority = std::string_view(base).substr(kScheme.size());
  size_t colon = authority.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == authority.size() ||
      authority.find('/') != std::string_view::npos) {
    return InvalidArgument(fmt::format("{}: not http://host:port", base));
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
  out.body() = req.body;
  out.prepare_payload();

  asio::io_context ioc;
  asio::ip::tcp::resolver resolver(ioc);
  beast::tcp_stream stream(ioc);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(limits.max_body_bytes);
  beast::error_code failed;
  std::string step = "resolving";
  auto fail = [&](beast::error_code ec, const char* what) {
    failed = ec;
    step = what;
  };
  auto started = std::chrono::steady_clock::now();
  stream.expires_after(std::min(limits.connect_timeout, limits.timeout));
  resolver.async_resolve(host, port, [&](beast::error_code ec, auto results) {
    if (ec) {
      return fail(ec, "resolving");
    }
    stream.async_connect(results, [&](beast::error_code ec, const auto&) {
      if (ec) {
        return fail(ec, "connecting");
      }
      // The rest of the budget for sending and the answer.
      stream.expires_after(limits.timeout - std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::steady_clock::now() - started));
      http::async_write(stream, out, [&](beast::error_code ec, size_t) {
        if (ec) {
          return fail(ec, "sending");
        }
        http::async_read(stream, buffer, parser, [&](beast::error_code ec, size_t) {
          if (ec) {
            return fail(ec, "reading the answer");
          }
          beast::error_code ignored;
          stream.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
        });
      });
    });
  });
  // (The resolver is not bound by the stream's timer: it gets the same budget of its own.)
  ioc.run_for(limits.timeout + std::chrono::seconds(1));
  if (!ioc.stopped()) {
    return Unavailable(fmt::format("{}: no answer in {} ms", base, limits.timeout.count()));
  }
  if (failed) {
    return Unavailable(fmt::format("{}: {}: {}", base, step, failed.message()));
  }
  if (!parser.is_done()) {
    return Unavailable(fmt::format("{}: no answer", base));
  }
  auto& res = parser.get();
  HttpResponse in;
  in.status = static_cast<int>(res.result_int());
  in.body = std::move(res.body());
  if (auto ct = res.find(http::field::content_type); ct != res.end()) {
    in.content_type = std::string(ct->value());
  }
  if (auto ra = res.find(http::field::retry_after); ra != res.end()) {
    in.headers.emplace_back("Retry-After", std::string(ra->value()));
  }
  return in;
}

}  // namespace gnomon::engine

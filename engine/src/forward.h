// SPDX-License-Identifier: Apache-2.0
// Forwarding an API request to another instance of the cluster (the device's owner): the same
// method, target, body and the headers that matter (Authorization, Content-Type,
// Idempotency-Key), plus `X-Gnomon-Forwarded-By` naming this instance, which the owner never
// forwards again (no loops). Bounded in time and size; connections to an owner are kept open
// between forwards (ForwardConnections).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gnomon/core/metrics.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/status.h"
#include "http_server.h"

namespace gnomon::engine {

inline constexpr std::string_view kForwardedByHeader = "X-Gnomon-Forwarded-By";

struct ForwardLimits {
  std::chrono::milliseconds connect_timeout{2000};  // resolving and connecting
  std::chrono::milliseconds timeout{10000};         // connect, send and the whole answer
  size_t max_body_bytes = 64u << 20;
};

// Bounds the forwards waiting at once, per owner and in all, so that an owner that hangs
// (paused, overloaded, a network that drops packets) holds a few API threads for a while and
// never all of them: requests this instance answers itself keep being answered.
class ForwardGate {
 public:
  ForwardGate(int per_owner, int total) : per_owner_(per_owner), total_(total) {}

  // Held while a forward waits; lets go of its place when destroyed.
  class Ticket {
   public:
    Ticket(Ticket&& other) noexcept
        : gate_(std::exchange(other.gate_, nullptr)), owner_(std::move(other.owner_)) {}
    Ticket& operator=(Ticket&&) = delete;
    ~Ticket() {
      if (gate_ != nullptr) {
        gate_->Leave(owner_);
      }
    }

   private:
    friend class ForwardGate;
    Ticket(ForwardGate* gate, std::string owner) : gate_(gate), owner_(std::move(owner)) {}
    ForwardGate* gate_;
    std::string owner_;
  };

  // A place for one more forward to `owner`, or nothing when its share or the total is taken.
  std::optional<Ticket> Enter(const std::string& owner);

 private:
  void Leave(const std::string& owner);

  const int per_owner_;
  const int total_;
  Mutex mu_;
  std::map<std::string, int, std::less<>> waiting_ GNOMON_GUARDED_BY(mu_);
  int all_ GNOMON_GUARDED_BY(mu_) = 0;
};

// How forwards reach owners whose API is https://: TLS 1.2 or later, the owner's certificate
// verified against `ca_file` (PEM; empty: the system's trusted CAs) and checked to name the host
// of its address, and this instance's `cert_file`/`key_file` shown when the owner asks for a
// client certificate (its api.tls.client_ca). Built once, shared by the API's threads; it keeps
// the last TLS session with each owner, so that the next forward there resumes it.
class ForwardTls {
 public:
  static Result<std::shared_ptr<const ForwardTls>> Make(const std::string& ca_file,
                                                        const std::string& cert_file,
                                                        const std::string& key_file);
  ~ForwardTls();
  // Forwards that resumed an earlier TLS session with their owner (an abbreviated handshake).
  uint64_t resumed() const;
  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  explicit ForwardTls(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Connections kept open between forwards (HTTP/1.1 keep-alive), so that a forward to an owner
// reached a moment ago skips the connect and the TLS handshake. At most `per_owner` idle
// connections per owner's address (more are never needed: that many forwards wait on one owner
// at once, ForwardGate) and at most 256 addresses; a connection idle for `max_idle` is closed
// by the next Take or Give that finds it, and one the owner closed (restarted, its idle timeout)
// is found so before it is used again.
class ForwardConnections {
 public:
  // Forwards are counted into `opened` (on a new connection) and `kept` (on a kept one).
  explicit ForwardConnections(size_t per_owner,
                              std::chrono::milliseconds max_idle = std::chrono::seconds(20),
                              Counter* opened = nullptr, Counter* kept = nullptr);
  ~ForwardConnections();
  ForwardConnections(const ForwardConnections&) = delete;
  ForwardConnections& operator=(const ForwardConnections&) = delete;

  uint64_t reused() const;  // forwards sent on a connection an earlier forward opened
  size_t idle() const;      // connections kept now

  struct Conn;
  // (ForwardRequest's:) an idle connection to `base` still open, or nothing.
  std::unique_ptr<Conn> Take(const std::string& base);
  // (ForwardRequest's:) keeps `conn` after a whole exchange, or closes it when there is no room.
  void Give(const std::string& base, std::unique_ptr<Conn> conn);
  // (ForwardRequest's:) a forward goes on a connection just opened.
  void Opened() {
    if (opened_ != nullptr) {
      opened_->Inc();
    }
  }

 private:
  static constexpr size_t kMaxOwners = 256;
  const size_t per_owner_;
  const std::chrono::milliseconds max_idle_;
  Counter* const opened_;
  Counter* const kept_;
  mutable Mutex mu_;
  // Per owner's address, oldest first.
  std::map<std::string, std::vector<std::unique_ptr<Conn>>, std::less<>> idle_
      GNOMON_GUARDED_BY(mu_);
  size_t count_ GNOMON_GUARDED_BY(mu_) = 0;
  std::chrono::steady_clock::time_point swept_ GNOMON_GUARDED_BY(mu_);
  uint64_t reused_ GNOMON_GUARDED_BY(mu_) = 0;
};

// Sends `req` to `base` (http://host:port, or https://host:port through `tls`) and returns the
// owner's answer (its status, body, Content-Type and Retry-After). Errors: the address is not
// http(s)://host:port or is https:// without `tls` (kInvalidArgument), or the owner could not
// be reached, failed the TLS handshake (its certificate not trusted or not for that host) or
// did not answer in time (kUnavailable). With `pool` the request goes on a connection kept from
// an earlier forward when there is one, and its connection is kept afterwards; a kept connection
// that fails before any of the answer arrived is replaced by a new one and the request sent
// again when that is safe (GET, HEAD, or an Idempotency-Key); otherwise the error is returned.
Result<HttpResponse> ForwardRequest(const std::string& base, const HttpRequest& req,
                                    const std::string& via, const ForwardLimits& limits = {},
                                    const ForwardTls* tls = nullptr,
                                    ForwardConnections* pool = nullptr);

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include "mqtt_client.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <regex>
#include <thread>

#include "gnomon/core/backoff.h"
#include "gnomon/core/log.h"

namespace gnomon::connectors {

Result<MqttConnectionConfig> MqttConnectionConfig::Parse(const ConfigValue& c) {
  MqttConnectionConfig m;
  static const std::regex kUrl("^(mqtts?)://([^:/]+)(:([0-9]+))?/?$");
  std::smatch match;
  std::string url = c.GetString("url");
  if (!std::regex_match(url, match, kUrl)) {
    return InvalidArgument("url: must be mqtt://host:port or mqtts://host:port (got " + url + ")");
  }
  m.tls = match[1] == "mqtts";
  m.host = match[2];
  m.port = match[4].matched ? std::stoi(match[4]) : (m.tls ? 8883 : 1883);
  if (m.port < 1 || m.port > 65535) {
    return InvalidArgument(fmt::format("url: port must be 1-65535 (got {})", m.port));
  }
  m.client_id = c.GetString("client_id", "gnomon");
  m.username = c.GetString("username");
  m.password = c.GetString("password");
  m.v5 = c.GetString("protocol", "5") == "5";
  m.keepalive_s = static_cast<int>(c.GetInt("keepalive_s", 60));
  m.session_expiry_s = c.GetInt("session_expiry_s", 86400);
  m.clean_session = c.GetBool("clean_session", false);
  if (const ConfigValue* tls = c.Get("tls")) {
    m.ca_file = tls->GetString("ca_file");
    m.cert_file = tls->GetString("cert_file");
    m.key_file = tls->GetString("key_file");
    m.tls_insecure = tls->GetBool("insecure", false);
    if (m.cert_file.empty() != m.key_file.empty()) {
      return InvalidArgument("tls: cert_file and key_file go together");
    }
  }
  if (const ConfigValue* r = c.Get("reconnect")) {
    m.reconnect_initial_ms = r->GetInt("initial_ms", 1000);
    m.reconnect_max_ms = r->GetInt("max_ms", 30000);
    if (m.reconnect_initial_ms > m.reconnect_max_ms) {
      return InvalidArgument("reconnect: initial_ms must be <= max_ms");
    }
  }
  return m;
}

namespace {

constexpr auto kConnectTimeout = std::chrono::seconds(10);
constexpr auto kStopFlushTimeout = std::chrono::seconds(1);
// Publishes encoded and not yet taken by the client thread: past this a publish waits.
constexpr size_t kMaxQueuedBytes = size_t{8} << 20;

std::string OpenSslError() {
  unsigned long e = ERR_get_error();  // NOLINT(google-runtime-int): OpenSSL's type
  if (e == 0) {
    return "unknown error";
  }
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

bool IsIpAddress(const std::string& host) {
  in6_addr a{};
  return ::inet_pton(AF_INET, host.c_str(), &a) == 1 ||
         ::inet_pton(AF_INET6, host.c_str(), &a) == 1;
}

}  // namespace

MqttClient::MqttClient(MqttConnectionConfig config, std::string client_id, std::string owner,
                       size_t max_kept)
    : config_(std::move(config)),
      client_id_(std::move(client_id)),
      owner_(std::move(owner)),
      reader_(config_.v5, max_kept) {}

MqttClient::~MqttClient() {
  Stop();
  CloseConnection();
  if (tls_ctx_ != nullptr) {
    SSL_CTX_free(tls_ctx_);
  }
  if (wake_fd_ >= 0) {
    ::close(wake_fd_);
  }
}

Status MqttClient::Start(Callbacks callbacks) {
  callbacks_ = std::move(callbacks);
  if (config_.username.empty() && !config_.password.empty()) {
    return InvalidArgument(owner_ + ": a password needs a username");
  }
  if (client_id_.size() > 65535 || config_.username.size() > 65535 ||
      config_.password.size() > 65535) {
    return InvalidArgument(owner_ + ": client_id, username and password are at most 65535 bytes");
  }
  if (config_.keepalive_s < 0 || config_.keepalive_s > 65535) {
    return InvalidArgument(
        fmt::format("{}: keepalive_s must be 0-65535 (got {})", owner_, config_.keepalive_s));
  }
  if (config_.tls) {
    tls_ctx_ = SSL_CTX_new(TLS_client_method());
    if (tls_ctx_ == nullptr) {
      return Internal(owner_ + ": tls: " + OpenSslError());
    }
    SSL_CTX_set_verify(tls_ctx_, SSL_VERIFY_PEER, nullptr);
    int ok = config_.ca_file.empty()
                 ? SSL_CTX_load_verify_locations(tls_ctx_, nullptr, "/etc/ssl/certs")
                 : SSL_CTX_load_verify_locations(tls_ctx_, config_.ca_file.c_str(), nullptr);
    if (ok != 1) {
      return InvalidArgument(
          fmt::format("{}: tls: ca_file {}: {}", owner_, config_.ca_file, OpenSslError()));
    }
    if (!config_.cert_file.empty()) {
      if (SSL_CTX_use_certificate_chain_file(tls_ctx_, config_.cert_file.c_str()) != 1) {
        return InvalidArgument(
            fmt::format("{}: tls: cert_file {}: {}", owner_, config_.cert_file, OpenSslError()));
      }
      if (SSL_CTX_use_PrivateKey_file(tls_ctx_, config_.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
          SSL_CTX_check_private_key(tls_ctx_) != 1) {
        return InvalidArgument(
            fmt::format("{}: tls: key_file {}: {}", owner_, config_.key_file, OpenSslError()));
      }
    }
  }
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    return Internal(fmt::format("{}: eventfd: {}", owner_, std::strerror(errno)));
  }
  thread_ = std::jthread([this](const std::stop_token& st) { Run(st); });
  return {};
}

void MqttClient::Stop() {
  if (!thread_.joinable()) {
    return;
  }
  thread_.request_stop();
  uint64_t one = 1;
  (void)::write(wake_fd_, &one, sizeof(one));
  thread_.join();
  connected_ = false;
}

void MqttClient::Subscribe(std::string_view filter, int qos) {
  uint16_t id = 0;
  {
    MutexLock lock(mu_);
    id = NextId();
    subscribing_.emplace(id, std::string(filter));
  }
  mqtt::AppendSubscribe(writing_, config_.v5, id, filter, qos);
}

uint16_t MqttClient::NextId() {
  do {
    if (++next_id_ == 0) {
      next_id_ = 1;
    }
  } while (inflight_.contains(next_id_) || subscribing_.contains(next_id_));
  return next_id_;
}

Result<int> MqttClient::Publish(std::string_view topic, std::string_view payload, int qos,
                                bool retain,
                                std::span<const std::pair<std::string, std::string>> props) {
  if (qos < 0 || qos > 2) {
    return InvalidArgument(fmt::format("qos must be 0, 1 or 2 (got {})", qos));
  }
  // MQTT strings have a 16-bit length: a longer one would make a packet the broker refuses,
  // again after every reconnect.
  if (topic.empty() || topic.size() > 65535) {
    return InvalidArgument(fmt::format("a topic of {} bytes (1-65535)", topic.size()));
  }
  if (config_.v5) {
    for (const auto& [k, v] : props) {
      if (k.size() > 65535 || v.size() > 65535) {
        return InvalidArgument(fmt::format("a user property of {} + {} bytes (at most 65535 each)",
                                           k.size(), v.size()));
      }
    }
  }
  mqtt::PublishOut p;
  p.topic = topic;
  p.payload = payload;
  p.qos = qos;
  p.retain = retain;
  if (config_.v5) {
    p.user_properties = props;
  }
  MutexLock lock(mu_);
  // Back-pressure: wait while the client thread has not taken what was queued, or while every
  // packet identifier is in use; the client thread itself (on_pump) is told instead.
  while (session_up_ && (out_.size() >= kMaxQueuedBytes || inflight_.size() >= 65000)) {
    if (std::this_thread::get_id() == thread_.get_id()) {
      return ResourceExhausted("the connection's send buffer is full");
    }
    space_cv_.wait_for(lock.native(), std::chrono::milliseconds(200));
  }
  if (!session_up_) {
    return Unavailable("not connected");
  }
  if (qos > max_qos_) {
    return InvalidArgument(
        fmt::format("QoS {} is above the broker's maximum QoS {}", qos, max_qos_));
  }
  std::string packet;
  std::string& into = qos == 0 ? out_ : packet;
  size_t before = into.size();
  if (qos > 0) {
    p.packet_id = NextId();
  }
  mqtt::AppendPublish(into, config_.v5, p);
  size_t size = into.size() - before;
  if ((max_packet_ > 0 && size > max_packet_) || size > (size_t{268435455} + 5)) {
    into.resize(before);
    return InvalidArgument(fmt::format("a packet of {} bytes is above the broker's maximum of {}",
                                       size, max_packet_ > 0 ? max_packet_ : 268435460));
  }
  if (qos == 0) {
    Wake();
    return 0;
  }
  Outgoing& o = inflight_[p.packet_id];
  o.packet = std::move(packet);
  o.seq = next_seq_++;
  waiting_.push_back(p.packet_id);
  SendWaiting();
  return static_cast<int>(p.packet_id);
}

void MqttClient::SendWaiting() {
  size_t before = out_.size();
  while (!waiting_.empty() && sent_ < window_) {
    uint16_t id = waiting_.front();
    waiting_.pop_front();
    auto it = inflight_.find(id);
    if (it == inflight_.end() || it->second.sent) {
      continue;
    }
    Outgoing& o = it->second;
    if (o.ever_sent) {
      o.packet[0] = static_cast<char>(o.packet[0] | 0x08);  // DUP
    }
    out_.append(o.packet);
    o.sent = o.ever_sent = true;
    ++sent_;
  }
  if (out_.size() != before) {
    Wake();
  }
}

void MqttClient::Wake() {
  if (wake_pending_ || std::this_thread::get_id() == thread_.get_id()) {
    return;  // already woken, or the client thread itself flushes after this
  }
  wake_pending_ = true;
  uint64_t one = 1;
  (void)::write(wake_fd_, &one, sizeof(one));
}

void MqttClient::Run(const std::stop_token& st) {
  pthread_setname_np(pthread_self(), "gnomon-mqtt");
  Backoff backoff(config_.reconnect_initial_ms, config_.reconnect_max_ms);
  while (!st.stop_requested()) {
    bool connect_ok = false;
    Status why = Connect(st);
    if (why.ok()) {
      connect_ok = true;
      Serve(st, why);
    }
    ReadsDone();
    CloseConnection();
    if (connected_.exchange(false) && callbacks_.on_disconnect) {
      callbacks_.on_disconnect();
    }
    if (st.stop_requested()) {
      break;
    }
    if (connect_ok) {
      backoff.Reset();  // the last connect succeeded: start the backoff over
    }
    int64_t delay = backoff.NextDelayMs();
    log::Warn("mqtt connection lost or refused; reconnecting",
              {{"client", owner_},
               {"broker", fmt::format("{}:{}", config_.host, config_.port)},
               {"error", why.message()},
               {"retry_in_ms", std::to_string(delay)}});
    auto until = Clock::now() + std::chrono::milliseconds(delay);
    while (!st.stop_requested() && Clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

bool MqttClient::Wait(short events, Clock::time_point deadline, const std::stop_token* st) {
  while (true) {
    if (st != nullptr && st->stop_requested()) {
      return false;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return false;
    }
    pollfd fds[2] = {{fd_, events, 0}, {wake_fd_, POLLIN, 0}};
    int n = ::poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count() + 1, 1000)));
    if (n < 0 && errno != EINTR) {
      return false;
    }
    if ((fds[1].revents & POLLIN) != 0) {
      uint64_t v = 0;
      (void)::read(wake_fd_, &v, sizeof(v));
      MutexLock lock(mu_);
      wake_pending_ = false;
    }
    if (fds[0].revents != 0) {
      return true;
    }
  }
}

ssize_t MqttClient::SocketResult(ssize_t r) {
  if (r >= 0) {
    return r;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
    return -1;
  }
  io_error_ = std::strerror(errno);
  return -2;
}

ssize_t MqttClient::TlsResult(int r) {
  if (r > 0) {
    tls_wants_write_ = false;
    return r;
  }
  int e = SSL_get_error(ssl_, r);
  if (e == SSL_ERROR_WANT_READ) {
    return -1;
  }
  if (e == SSL_ERROR_WANT_WRITE) {
    tls_wants_write_ = true;  // poll for writing, then call again
    return -1;
  }
  if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) {
    return 0;
  }
  io_error_ = e == SSL_ERROR_SYSCALL ? std::string(std::strerror(errno)) : "tls: " + OpenSslError();
  return -2;
}

ssize_t MqttClient::ReadSome(char* p, size_t n) {
  if (ssl_ == nullptr) {
    return SocketResult(::recv(fd_, p, n, 0));
  }
  ERR_clear_error();
  return TlsResult(SSL_read(ssl_, p, static_cast<int>(std::min<size_t>(n, INT32_MAX))));
}

ssize_t MqttClient::WriteSome(const char* p, size_t n) {
  ssize_t r = 0;
  if (ssl_ == nullptr) {
    r = SocketResult(::send(fd_, p, n, MSG_NOSIGNAL));
  } else {
    ERR_clear_error();
    r = TlsResult(SSL_write(ssl_, p, static_cast<int>(std::min<size_t>(n, INT32_MAX))));
  }
  if (r == 0) {
    io_error_ = "the broker closed the connection";
    return -2;
  }
  return r;
}

bool MqttClient::Flush() {
  while (true) {
    if (written_ == writing_.size()) {
      writing_.clear();
      written_ = 0;
      MutexLock lock(mu_);
      if (out_.empty()) {
        return true;
      }
      writing_.swap(out_);
      space_cv_.notify_all();
    }
    ssize_t n = WriteSome(writing_.data() + written_, writing_.size() - written_);
    if (n > 0) {
      written_ += static_cast<size_t>(n);
      last_write_ = Clock::now();
      continue;
    }
    return n == -1;
  }
}

bool MqttClient::WantsWrite() {
  if (written_ < writing_.size() || tls_wants_write_) {
    return true;
  }
  MutexLock lock(mu_);
  return !out_.empty();
}

Status MqttClient::Connect(const std::stop_token& st) {
  auto deadline = Clock::now() + kConnectTimeout;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string port = std::to_string(config_.port);
  if (int rc = ::getaddrinfo(config_.host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return Unavailable(fmt::format("resolve {}: {}", config_.host, ::gai_strerror(rc)));
  }
  std::string last = "no address";
  for (addrinfo* a = res; a != nullptr && fd_ < 0; a = a->ai_next) {
    int fd = ::socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last = std::strerror(errno);
      continue;
    }
    fd_ = fd;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last = std::strerror(errno);
    } else if (!Wait(POLLOUT, deadline, &st)) {
      last = st.stop_requested() ? "stopping" : "connect timed out";
    } else {
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) {
        break;
      }
      last = std::strerror(err);
    }
    ::close(fd);
    fd_ = -1;
  }
  ::freeaddrinfo(res);
  if (fd_ < 0) {
    return Unavailable(last);
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (config_.tls) {
    ssl_ = SSL_new(tls_ctx_);
    if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1) {
      return Unavailable("tls: " + OpenSslError());
    }
    SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    bool ip = IsIpAddress(config_.host);
    if (!ip) {
      SSL_set_tlsext_host_name(ssl_, config_.host.c_str());
    }
    if (!config_.tls_insecure) {
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
      int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, config_.host.c_str())
                  : X509_VERIFY_PARAM_set1_host(param, config_.host.c_str(), 0);
      if (ok != 1) {
        return Unavailable("tls: " + OpenSslError());
      }
    }
    while (true) {
      ERR_clear_error();
      int r = SSL_connect(ssl_);
      if (r == 1) {
        break;
      }
      int e = SSL_get_error(ssl_, r);
      short events = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
      if (events == 0) {
        long verify = SSL_get_verify_result(ssl_);  // NOLINT(google-runtime-int): OpenSSL's type
        return Unavailable("tls handshake: " +
                           (verify != X509_V_OK ? std::string(X509_verify_cert_error_string(verify))
                            : e == SSL_ERROR_SYSCALL ? std::string(errno != 0 ? std::strerror(errno)
                                                                              : "connection closed")
                                                     : OpenSslError()));
      }
      if (!Wait(events, deadline, &st)) {
        return Unavailable(st.stop_requested() ? "stopping" : "tls handshake timed out");
      }
    }
  }
  mqtt::ConnectOptions o;
  o.v5 = config_.v5;
  o.client_id = client_id_;
  o.username = config_.username;
  o.password = config_.password;
  o.has_password = !config_.password.empty();
  o.clean = config_.clean_session;
  o.keepalive_s = static_cast<uint16_t>(config_.keepalive_s);
  if (config_.v5 && !config_.clean_session && config_.session_expiry_s > 0) {
    o.session_expiry_s =
        static_cast<uint32_t>(std::min<int64_t>(config_.session_expiry_s, UINT32_MAX));
  }
  mqtt::AppendConnect(writing_, o);
  while (written_ < writing_.size()) {
    if (!Flush()) {
      return Unavailable(io_error_);
    }
    if (written_ < writing_.size() && !Wait(POLLOUT, deadline, &st)) {
      return Unavailable(st.stop_requested() ? "stopping" : "CONNECT not sent within 10 s");
    }
  }
  mqtt::Packet p;
  while (!reader_.Next(p)) {
    if (!reader_.error().empty()) {
      return Unavailable("malformed packet from the broker: " + reader_.error());
    }
    std::span<char> space = reader_.WriteSpace();
    ssize_t n = ReadSome(space.data(), space.size());
    if (n > 0) {
      reader_.Wrote(static_cast<size_t>(n));
    } else if (n == 0) {
      return Unavailable("the broker closed the connection before its CONNACK");
    } else if (n == -2) {
      return Unavailable(io_error_);
    } else if (!Wait(POLLIN, deadline, &st)) {
      return Unavailable(st.stop_requested() ? "stopping" : "no CONNACK within 10 s");
    }
  }
  if (p.type != mqtt::kConnack) {
    return Unavailable(fmt::format("the broker answered CONNECT with a packet of type {}",
                                   static_cast<int>(p.type)));
  }
  if (p.reason != 0) {
    std::string reason(mqtt::ReasonText(config_.v5, mqtt::kConnack, p.reason));
    log::Error("mqtt broker refused the connection", {{"client", owner_}, {"reason", reason}});
    return Unavailable("refused: " + reason);
  }
  OnConnected(p);
  return {};
}

void MqttClient::OnConnected(const mqtt::Packet& connack) {
  keepalive_s_ = connack.has_server_keepalive ? connack.server_keepalive : config_.keepalive_s;
  last_write_ = Clock::now();
  ping_outstanding_ = false;
  if (!connack.session_present) {
    qos2_received_.clear();
  }
  {
    MutexLock lock(mu_);
    session_up_ = true;
    window_ = std::min<size_t>(static_cast<size_t>(std::max(send_maximum_, 1)),
                               connack.receive_maximum > 0 ? connack.receive_maximum : 65535);
    max_qos_ = connack.maximum_qos;
    max_packet_ = connack.maximum_packet_size;
    // What was sent on the last connection and not acknowledged goes again, in the order it
    // was first sent: a PUBREL where the PUBREC came, else the PUBLISH with DUP set.
    std::vector<std::pair<uint64_t, uint16_t>> order;
    order.reserve(inflight_.size());
    sent_ = 0;
    for (auto& [id, o] : inflight_) {
      o.sent = false;
      if (o.released) {
        mqtt::AppendAck(writing_, mqtt::kPubrel, id);
        o.sent = true;
        ++sent_;
      } else {
        order.emplace_back(o.seq, id);
      }
    }
    std::sort(order.begin(), order.end());
    waiting_.clear();
    for (const auto& entry : order) {
      waiting_.push_back(entry.second);
    }
    SendWaiting();
  }
  connected_ = true;
  log::Info("mqtt connected", {{"client", owner_},
                               {"broker", fmt::format("{}:{}", config_.host, config_.port)},
                               {"session_present", connack.session_present ? "true" : "false"}});
  if (callbacks_.on_connect) {
    callbacks_.on_connect();
  }
}

void MqttClient::Serve(const std::stop_token& st, Status& why) {
  mqtt::Packet p;
  bool may_have_more = true;  // bytes may be waiting: read before polling
  while (true) {
    bool any = false;
    while (reader_.Next(p)) {
      any = true;
      if (!Handle(p, why)) {
        return;
      }
    }
    if (!reader_.error().empty()) {
      why = Unavailable("malformed packet from the broker: " + reader_.error());
      return;
    }
    if (any) {
      ReadsDone();  // the messages are handed over; their acknowledgements go out next
    }
    if (st.stop_requested()) {
      // Send what is queued (acknowledgements, publishes), then DISCONNECT.
      auto until = Clock::now() + kStopFlushTimeout;
      while (Flush() && WantsWrite() && Wait(POLLOUT, until, nullptr)) {
      }
      mqtt::AppendDisconnect(writing_);
      (void)Flush();
      if (ssl_ != nullptr) {
        SSL_shutdown(ssl_);
      }
      why = Unavailable("stopping");
      return;
    }
    auto now = Clock::now();
    if (keepalive_s_ > 0 && !ping_outstanding_ &&
        now - last_write_ >= std::chrono::seconds(keepalive_s_)) {
      mqtt::AppendPingreq(writing_);
      ping_outstanding_ = true;
      ping_sent_ = now;
    }
    bool pump_again = callbacks_.on_pump && callbacks_.on_pump();
    if (!Flush()) {
      why = Unavailable(io_error_);
      return;
    }
    bool readable = may_have_more || (ssl_ != nullptr && SSL_pending(ssl_) > 0);
    if (!readable) {
      pollfd fds[2] = {{fd_, static_cast<short>(POLLIN | (WantsWrite() ? POLLOUT : 0)), 0},
                       {wake_fd_, POLLIN, 0}};
      int timeout_ms = 1000;
      if (pump_again) {
        timeout_ms = 0;
      } else if (keepalive_s_ > 0) {
        auto next = (ping_outstanding_ ? ping_sent_ : last_write_) +
                    std::chrono::seconds(keepalive_s_) - now;
        timeout_ms = static_cast<int>(std::clamp<int64_t>(
            std::chrono::duration_cast<std::chrono::milliseconds>(next).count() + 1, 1, 1000));
      }
      int n = ::poll(fds, 2, timeout_ms);
      if (n < 0 && errno != EINTR) {
        why = Unavailable(fmt::format("poll: {}", std::strerror(errno)));
        return;
      }
      if ((fds[1].revents & POLLIN) != 0) {
        uint64_t v = 0;
        (void)::read(wake_fd_, &v, sizeof(v));
        MutexLock lock(mu_);
        wake_pending_ = false;
      }
      readable = (fds[0].revents & (POLLIN | POLLERR | POLLHUP)) != 0 ||
                 (tls_wants_write_ && (fds[0].revents & POLLOUT) != 0);
      if (!readable) {
        // The broker is dead only when nothing came for a keepalive after a ping while the
        // socket was idle: time spent blocked handing messages over does not count.
        if (ping_outstanding_ &&
            Clock::now() - ping_sent_ > std::chrono::seconds(keepalive_s_)) {
          why = Unavailable(fmt::format("nothing from the broker for a keepalive ({} s) after a "
                                        "PINGREQ",
                                        keepalive_s_));
          return;
        }
        continue;
      }
    }
    std::span<char> space = reader_.WriteSpace();
    ssize_t n = ReadSome(space.data(), space.size());
    if (n == 0) {
      why = Unavailable("the broker closed the connection");
      return;
    }
    if (n == -2) {
      why = Unavailable(io_error_);
      return;
    }
    may_have_more = n == static_cast<ssize_t>(space.size());
    if (n > 0) {
      reads_.fetch_add(1, std::memory_order_relaxed);
      reader_.Wrote(static_cast<size_t>(n));
    }
  }
}

bool MqttClient::Handle(const mqtt::Packet& p, Status& why) {
  ping_outstanding_ = false;  // anything from the broker shows it is there
  switch (p.type) {
    case mqtt::kPublish:
      if (p.qos == 2) {
        if (qos2_received_.insert(p.packet_id).second) {  // not a resend of one delivered
          Deliver(p);
        }
        mqtt::AppendAck(writing_, mqtt::kPubrec, p.packet_id);
      } else {
        Deliver(p);
        if (p.qos == 1) {
          mqtt::AppendAck(writing_, mqtt::kPuback, p.packet_id);
        }
      }
      return true;
    case mqtt::kPubrel:
      qos2_received_.erase(p.packet_id);
      mqtt::AppendAck(writing_, mqtt::kPubcomp, p.packet_id);
      return true;
    case mqtt::kPuback:
      Acked(p.packet_id, p.reason);
      return true;
    case mqtt::kPubcomp:
      Acked(p.packet_id, 0);  // the PUBREC said the broker has it
      return true;
    case mqtt::kPubrec: {
      if (p.reason >= 0x80) {
        Acked(p.packet_id, p.reason);
        return true;
      }
      MutexLock lock(mu_);
      auto it = inflight_.find(p.packet_id);
      if (it != inflight_.end()) {
        it->second.released = true;
        it->second.packet.clear();
        it->second.packet.shrink_to_fit();
      }
      mqtt::AppendAck(writing_, mqtt::kPubrel, p.packet_id);
      return true;
    }
    case mqtt::kSuback: {
      std::string filter;
      {
        MutexLock lock(mu_);
        auto it = subscribing_.find(p.packet_id);
        if (it != subscribing_.end()) {
          filter = std::move(it->second);
          subscribing_.erase(it);
        }
      }
      if (p.reason >= 0x80) {
        log::Error(
            "mqtt broker refused a subscription",
            {{"client", owner_},
             {"topic", filter},
             {"reason", std::string(mqtt::ReasonText(config_.v5, mqtt::kSuback, p.reason))}});
      }
      return true;
    }
    case mqtt::kPingresp:
      return true;
    case mqtt::kDisconnect:
      why = Unavailable(fmt::format("the broker disconnected: {}{}{}",
                                    mqtt::ReasonText(true, mqtt::kDisconnect, p.reason),
                                    p.reason_string.empty() ? "" : ": ", p.reason_string));
      return false;
    default:
      why = Unavailable(
          fmt::format("unexpected packet of type {} from the broker", static_cast<int>(p.type)));
      return false;
  }
}

void MqttClient::Deliver(const mqtt::Packet& p) {
  if (!callbacks_.on_message) {
    return;
  }
  MqttMessage m;
  m.topic = p.topic;
  m.payload = p.payload;
  m.payload_size = p.payload_size;
  m.qos = p.qos;
  m.retain = p.retain;
  m.user_properties = p.user_properties;
  callbacks_.on_message(m);
}

void MqttClient::Acked(uint16_t id, uint8_t reason) {
  {
    MutexLock lock(mu_);
    auto it = inflight_.find(id);
    if (it == inflight_.end()) {
      return;  // not ours (a resend acknowledged twice)
    }
    if (it->second.sent) {
      --sent_;
    }
    inflight_.erase(it);
    SendWaiting();
  }
  space_cv_.notify_all();
  if (callbacks_.on_publish) {
    callbacks_.on_publish(id, reason);
  }
}

void MqttClient::CloseConnection() {
  if (ssl_ != nullptr) {
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  reader_.Reset();
  writing_.clear();
  written_ = 0;
  tls_wants_write_ = false;
  {
    MutexLock lock(mu_);
    session_up_ = false;
    out_.clear();  // acknowledgements and QoS 0 publishes of the old connection
    subscribing_.clear();
    for (auto& [id, o] : inflight_) {
      o.sent = o.released;
    }
    sent_ = 0;
  }
  space_cv_.notify_all();
}

}  // namespace gnomon::connectors

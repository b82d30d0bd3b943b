// SPDX-License-Identifier: Apache-2.0
#include "mqtt_client.h"

#include <fmt/format.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
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
std::once_flag g_lib_init;
std::once_flag g_tls_init;

// libmosquitto 2.0 sets up its OpenSSL state (a UI method and an ex-data index) the first time a
// client connects with TLS, behind a plain bool. Clients connecting at once each build it and all
// but one copy leak (LeakSanitizer caught 88 + 35 bytes in CI). This runs that set-up once, on one
// thread, before any TLS client starts: a throwaway client makes a TLS connect to a listener of
// our own, which reads the ClientHello and hangs up. The connect fails by design; the set-up it
// passed through stays. Costs a few milliseconds, once per process.
void WarmUpMosquittoTls(const char* ca_file, const char* ca_path) {
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) {
    return;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(listener);
    return;
  }
  std::thread peer([listener] {
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, 5000) == 1) {
      int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) {
        // Read the ClientHello before hanging up, so the client never writes to a closed socket.
        pollfd q{fd, POLLIN, 0};
        char buf[4096];
        if (::poll(&q, 1, 5000) == 1) {
          (void)::recv(fd, buf, sizeof(buf), 0);
        }
        ::close(fd);
      }
    }
  });
  mosquitto* m = mosquitto_new(nullptr, true, nullptr);
  if (m != nullptr) {
    if (mosquitto_tls_set(m, ca_file, ca_path, nullptr, nullptr, nullptr) == MOSQ_ERR_SUCCESS) {
      (void)mosquitto_connect(m, "127.0.0.1", ntohs(addr.sin_port), 60);
    }
    mosquitto_destroy(m);
  }
  // Unblocks the peer if the connect never came (no CA, no socket).
  ::shutdown(listener, SHUT_RDWR);
  peer.join();
  ::close(listener);
}
}  // namespace

MqttClient::MqttClient(MqttConnectionConfig config, std::string client_id, std::string owner)
    : config_(std::move(config)), client_id_(std::move(client_id)), owner_(std::move(owner)) {
  std::call_once(g_lib_init, [] { mosquitto_lib_init(); });
}

MqttClient::~MqttClient() {
  Stop();
  if (mosq_ != nullptr) {
    mosquitto_destroy(mosq_);
  }
}

Status MqttClient::Start(Callbacks callbacks) {
  callbacks_ = std::move(callbacks);
  mosq_ = mosquitto_new(client_id_.c_str(), config_.clean_session, this);
  if (mosq_ == nullptr) {
    return Internal(owner_ + ": mosquitto_new failed");
  }
  mosquitto_int_option(mosq_, MOSQ_OPT_PROTOCOL_VERSION,
                       config_.v5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
  mosquitto_threaded_set(mosq_, true);
  if (!config_.username.empty() &&
      mosquitto_username_pw_set(mosq_, config_.username.c_str(),
                                config_.password.empty() ? nullptr : config_.password.c_str()) !=
          MOSQ_ERR_SUCCESS) {
    return InvalidArgument(owner_ + ": invalid username/password");
  }
  if (config_.tls) {
    const char* ca = config_.ca_file.empty() ? nullptr : config_.ca_file.c_str();
    const char* capath = ca == nullptr ? "/etc/ssl/certs" : nullptr;
    int rc = mosquitto_tls_set(mosq_, ca, capath,
                               config_.cert_file.empty() ? nullptr : config_.cert_file.c_str(),
                               config_.key_file.empty() ? nullptr : config_.key_file.c_str(),
                               nullptr);
    if (rc != MOSQ_ERR_SUCCESS) {
      return InvalidArgument(fmt::format("{}: tls: {}", owner_, mosquitto_strerror(rc)));
    }
    mosquitto_tls_insecure_set(mosq_, config_.tls_insecure);
    std::call_once(g_tls_init, [&] { WarmUpMosquittoTls(ca, capath); });
  }
  mosquitto_connect_v5_callback_set(mosq_, &MqttClient::OnConnect);
  mosquitto_disconnect_v5_callback_set(mosq_, &MqttClient::OnDisconnect);
  mosquitto_message_v5_callback_set(mosq_, &MqttClient::OnMessage);
  mosquitto_publish_v5_callback_set(mosq_, &MqttClient::OnPublish);
  thread_ = std::jthread([this](const std::stop_token& st) { Run(st); });
  return {};
}

void MqttClient::Stop() {
  if (!thread_.joinable()) {
    return;
  }
  thread_.request_stop();
  if (mosq_ != nullptr) {
    mosquitto_disconnect(mosq_);
  }
  thread_.join();
  connected_ = false;
}

void MqttClient::Run(const std::stop_token& st) {
  pthread_setname_np(pthread_self(), "gnomon-mqtt");
  Backoff backoff(config_.reconnect_initial_ms, config_.reconnect_max_ms);
  while (!st.stop_requested()) {
    mosquitto_property* props = nullptr;
    if (config_.v5 && !config_.clean_session && config_.session_expiry_s > 0) {
      mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                   static_cast<uint32_t>(config_.session_expiry_s));
    }
    connect_ok_ = false;
    int rc = mosquitto_connect_bind_v5(mosq_, config_.host.c_str(), config_.port,
                                       config_.keepalive_s, nullptr, props);
    mosquitto_property_free_all(&props);
    if (rc == MOSQ_ERR_SUCCESS) {
      // Service the connection until it drops or we are told to stop.
      while (!st.stop_requested()) {
        rc = mosquitto_loop(mosq_, 100, 1);
        // mosquitto_loop reads one packet per select(); under load more are already waiting.
        // Read them until the socket is drained (errno EAGAIN), then flush what they queued
        // (PUBACKs) in one go: far fewer system calls per message.
        for (int i = 0; rc == MOSQ_ERR_SUCCESS && i < 512; ++i) {
          errno = 0;
          rc = mosquitto_loop_read(mosq_, 1);
          if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
          }
        }
        ReadsDone();
        if (rc == MOSQ_ERR_SUCCESS && mosquitto_want_write(mosq_)) {
          rc = mosquitto_loop_write(mosq_, 1);
        }
        if (rc != MOSQ_ERR_SUCCESS) {
          break;
        }
      }
      if (st.stop_requested()) {
        // Flush what is pending (PUBACKs, last publishes) before going.
        for (int i = 0; i < 5 && mosquitto_loop(mosq_, 10, 1) == MOSQ_ERR_SUCCESS;) {
          ++i;
        }
        ReadsDone();
        break;
      }
    }
    ReadsDone();
    if (connected_.exchange(false) && callbacks_.on_disconnect) {
      callbacks_.on_disconnect();
    }
    if (connect_ok_) {
      backoff.Reset();  // the last connect succeeded: start the backoff over
    }
    int64_t delay = backoff.NextDelayMs();
    log::Warn("mqtt connection lost or refused; reconnecting",
              {{"client", owner_},
               {"broker", fmt::format("{}:{}", config_.host, config_.port)},
               {"error", rc == MOSQ_ERR_ERRNO ? std::strerror(errno) : mosquitto_strerror(rc)},
               {"retry_in_ms", std::to_string(delay)}});
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(delay);
    while (!st.stop_requested() && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ReadsDone();
  if (connected_.exchange(false) && callbacks_.on_disconnect) {
    callbacks_.on_disconnect();
  }
}

void MqttClient::OnConnect(mosquitto*, void* self, int rc, int flags, const mosquitto_property*) {
  auto* c = static_cast<MqttClient*>(self);
  if (rc != 0) {
    log::Error("mqtt broker refused the connection",
               {{"client", c->owner_}, {"reason", mosquitto_reason_string(rc)}});
    return;
  }
  c->connect_ok_ = true;
  c->connected_ = true;
  log::Info("mqtt connected", {{"client", c->owner_},
                               {"broker", fmt::format("{}:{}", c->config_.host, c->config_.port)},
                               {"session_present", (flags & 1) ? "true" : "false"}});
  if (c->callbacks_.on_connect) {
    c->callbacks_.on_connect();
  }
}

void MqttClient::OnDisconnect(mosquitto*, void* self, int rc, const mosquitto_property*) {
  auto* c = static_cast<MqttClient*>(self);
  if (c->connected_.exchange(false) && c->callbacks_.on_disconnect) {
    c->callbacks_.on_disconnect();
  }
}

void MqttClient::OnMessage(mosquitto*, void* self, const mosquitto_message* m,
                           const mosquitto_property* props) {
  auto* c = static_cast<MqttClient*>(self);
  if (c->callbacks_.on_message) {
    c->callbacks_.on_message(m, props);
  }
}

void MqttClient::OnPublish(mosquitto*, void* self, int mid, int reason, const mosquitto_property*) {
  auto* c = static_cast<MqttClient*>(self);
  if (c->callbacks_.on_publish) {
    c->callbacks_.on_publish(mid, reason);
  }
}

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
// An MQTT 3.1.1 / 5 client of our own on its own named thread (plain TCP or TLS through
// OpenSSL), with reconnect by exponential backoff with jitter (reset after a successful connect).
//
// Written for the hot path (issue 19): the socket is read through a buffer, so one `read` takes
// every packet that has arrived; the acknowledgements of a read burst go out in one `write`
// after the burst was handed over (`on_reads_done`); publishes from other threads are appended
// to one buffer and wake the client thread once per burst, not once per packet.
#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "gnomon/core/config.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/status.h"
#include "mqtt_codec.h"

namespace gnomon::connectors {

struct MqttConnectionConfig {
  std::string host;
  int port = 1883;
  bool tls = false;
  std::string client_id;
  std::string username;
  std::string password;
  bool v5 = true;
  int keepalive_s = 60;
  int64_t session_expiry_s = 86400;
  bool clean_session = false;
  std::string ca_file, cert_file, key_file;
  bool tls_insecure = false;
  int64_t reconnect_initial_ms = 1000;
  int64_t reconnect_max_ms = 30000;

  static Result<MqttConnectionConfig> Parse(const ConfigValue& c);
};

// A message as it was read. Its views hold during the on_message call only.
struct MqttMessage {
  std::string_view topic;
  std::string_view payload;  // cut at what the client keeps when it was bigger
  size_t payload_size = 0;   // the whole payload's size
  int qos = 0;
  bool retain = false;
  std::span<const std::pair<std::string_view, std::string_view>> user_properties;
};

class MqttClient {
 public:
  struct Callbacks {
    std::function<void()> on_connect;     // on the client thread, after each (re)connect
    std::function<void()> on_disconnect;  // on the client thread
    std::function<void(const MqttMessage&)> on_message;
    std::function<void(int mid, int reason)> on_publish;  // QoS > 0 only; reason >= 128: refused
    // On the client thread after each run of reads (on_message calls), and before a disconnect
    // is reported or the thread ends: where a source hands over what it batched. The
    // acknowledgements of the messages read go out after it returns.
    std::function<void()> on_reads_done;
    // On the client thread while connected, before each write and after each Notify(): where a
    // sink hands over what it queued, calling Publish from here (which then never waits: it
    // answers kResourceExhausted while 8 MiB wait to be written). Returns true when it left
    // work it could have done now (it is called again without waiting).
    std::function<bool()> on_pump;
  };

  // `max_kept`: a packet bigger than this is not held whole; a PUBLISH reaches on_message with
  // its payload cut there (the rest is read and dropped).
  MqttClient(MqttConnectionConfig config, std::string client_id, std::string owner,
             size_t max_kept = size_t{1} << 20);
  ~MqttClient();
  MqttClient(const MqttClient&) = delete;
  MqttClient& operator=(const MqttClient&) = delete;

  Status Start(Callbacks callbacks);
  // Sends what is queued, disconnects and joins the thread. No callback runs after it returns.
  void Stop();

  bool connected() const { return connected_.load(); }
  const MqttConnectionConfig& config() const { return config_; }

  // On the client thread (from on_connect). A refusal is logged when the SUBACK says so.
  void Subscribe(std::string_view filter, int qos);

  // Any thread. Returns the message id a QoS 1 or 2 publish is acknowledged under (on_publish),
  // 0 for QoS 0. kUnavailable while not connected; kInvalidArgument for what the broker's
  // limits refuse (QoS above its maximum, a packet above its maximum size).
  Result<int> Publish(std::string_view topic, std::string_view payload, int qos, bool retain,
                      std::span<const std::pair<std::string, std::string>> user_properties);
  // Any thread: wakes the client thread (for on_pump). One wake-up however many calls come
  // before the thread gets to it.
  void Notify() {
    MutexLock lock(mu_);
    Wake();
  }
  // At most this many QoS > 0 publishes sent and not yet acknowledged (the broker's receive
  // maximum lowers it); the rest wait in order. Before Start.
  void set_send_maximum(int n) { send_maximum_ = n; }

  // For tests: socket reads that brought bytes while connected.
  uint64_t reads() const { return reads_.load(std::memory_order_relaxed); }

 private:
  struct Outgoing {
    std::string packet;
    uint64_t seq = 0;
    bool sent = false;       // written on this connection (or queued to be)
    bool ever_sent = false;  // resent with DUP set
    bool released = false;   // QoS 2: PUBREC came, PUBREL sent
  };
  using Clock = std::chrono::steady_clock;

  void Run(const std::stop_token& st);
  Status Connect(const std::stop_token& st);
  void Serve(const std::stop_token& st, Status& why);
  void CloseConnection();
  // Waits for the socket (and the wake-up); false when stopping or past the deadline.
  bool Wait(short events, Clock::time_point deadline, const std::stop_token* st);
  // >0 bytes, 0 the peer closed, -1 would block, -2 error (in io_error_).
  ssize_t ReadSome(char* p, size_t n);
  ssize_t WriteSome(const char* p, size_t n);
  ssize_t SocketResult(ssize_t r);  // a recv/send result as the two above return it
  ssize_t TlsResult(int r);         // an SSL_read/SSL_write result likewise
  // Writes what is pending until the socket would block; false on error.
  bool Flush();
  bool WantsWrite();
  bool Handle(const mqtt::Packet& p, Status& why);
  void Deliver(const mqtt::Packet& p);
  void Acked(uint16_t id, uint8_t reason);
  uint16_t NextId() GNOMON_REQUIRES(mu_);
  void OnConnected(const mqtt::Packet& connack);
  void SendWaiting() GNOMON_REQUIRES(mu_);
  void Wake() GNOMON_REQUIRES(mu_);
  void ReadsDone() {
    if (callbacks_.on_reads_done) {
      callbacks_.on_reads_done();
    }
  }

  MqttConnectionConfig config_;
  std::string client_id_;
  std::string owner_;  // "source telemetry" / "sink devices", for logs
  Callbacks callbacks_;
  int send_maximum_ = 65535;
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> reads_{0};
  std::jthread thread_;
  int wake_fd_ = -1;  // eventfd

  // The client thread's.
  SSL_CTX* tls_ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  int fd_ = -1;
  bool tls_wants_write_ = false;
  mqtt::PacketReader reader_;
  std::string writing_;  // bytes being written; acknowledgements are appended here directly
  size_t written_ = 0;
  std::string io_error_;
  int keepalive_s_ = 60;
  Clock::time_point last_write_;
  Clock::time_point ping_sent_;
  bool ping_outstanding_ = false;
  std::unordered_set<uint16_t> qos2_received_;  // PUBREC sent, PUBREL not yet come

  // Shared with publishing threads.
  Mutex mu_;
  std::condition_variable space_cv_;  // out_ taken, an identifier freed, the session gone
  bool session_up_ GNOMON_GUARDED_BY(mu_) = false;
  bool wake_pending_ GNOMON_GUARDED_BY(mu_) = false;
  std::string out_ GNOMON_GUARDED_BY(mu_);  // encoded packets for the client thread to write
  std::unordered_map<uint16_t, Outgoing> inflight_ GNOMON_GUARDED_BY(mu_);
  std::deque<uint16_t> waiting_ GNOMON_GUARDED_BY(mu_);  // in inflight_, not yet sent
  size_t sent_ GNOMON_GUARDED_BY(mu_) = 0;               // in inflight_ and sent
  size_t window_ GNOMON_GUARDED_BY(mu_) = 65535;
  int max_qos_ GNOMON_GUARDED_BY(mu_) = 2;
  uint32_t max_packet_ GNOMON_GUARDED_BY(mu_) = 0;
  std::unordered_map<uint16_t, std::string> subscribing_ GNOMON_GUARDED_BY(mu_);
  uint16_t next_id_ GNOMON_GUARDED_BY(mu_) = 0;
  uint64_t next_seq_ GNOMON_GUARDED_BY(mu_) = 0;
};

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
// The MQTT client of our own: its packets byte for byte, its reader on input split anywhere,
// cut or malformed, and the client against a broker of the test's own that sends exactly what
// each case needs (bursts, QoS 2, a receive maximum, a dropped connection). The client against
// the real mosquitto: tests/integration (every MQTT source and sink goes through it).
#include "connectors/mqtt/src/mqtt_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "connectors/mqtt/src/mqtt_codec.h"
#include "tests/support/test_support.h"

namespace gnomon::connectors {
namespace {

using mqtt::Packet;
using mqtt::PacketReader;
using testing::WaitFor;

std::string Bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) {
    s.push_back(static_cast<char>(c));
  }
  return s;
}

std::string Publish(bool v5, std::string_view topic, std::string_view payload, int qos, uint16_t id,
                    bool dup = false, std::vector<std::pair<std::string, std::string>> props = {}) {
  std::string out;
  mqtt::PublishOut p;
  p.topic = topic;
  p.payload = payload;
  p.qos = qos;
  p.packet_id = id;
  p.dup = dup;
  p.user_properties = props;
  mqtt::AppendPublish(out, v5, p);
  return out;
}

// Everything the reader hands over from `stream` written in pieces of `chunk` bytes.
std::vector<std::string> ReadAll(PacketReader& r, std::string_view stream, size_t chunk) {
  std::vector<std::string> got;
  Packet p;
  for (size_t at = 0; at < stream.size(); at += chunk) {
    std::string_view piece = stream.substr(at, chunk);
    std::span<char> space = r.WriteSpace(piece.size());
    std::copy(piece.begin(), piece.end(), space.begin());
    r.Wrote(piece.size());
    while (r.Next(p)) {
      std::string d = std::to_string(p.type) + " id=" + std::to_string(p.packet_id) +
                      " reason=" + std::to_string(p.reason);
      if (p.type == mqtt::kPublish) {
        d += " qos=" + std::to_string(p.qos) + " dup=" + std::to_string(p.dup) + " " +
             std::string(p.topic) + " " + std::string(p.payload) + " of " +
             std::to_string(p.payload_size);
        for (const auto& [k, v] : p.user_properties) {
          d += " " + std::string(k) + "=" + std::string(v);
        }
      }
      if (p.type == mqtt::kConnack) {
        d += " present=" + std::to_string(p.session_present) +
             " rmax=" + std::to_string(p.receive_maximum) +
             " maxqos=" + std::to_string(p.maximum_qos);
      }
      got.push_back(d);
    }
    EXPECT_EQ(r.error(), "");
  }
  return got;
}

TEST(MqttCodecTest, PacketsAreWrittenAsTheSpecificationSays) {
  std::string out;
  mqtt::ConnectOptions c;
  c.v5 = false;
  c.client_id = "c";
  c.clean = true;
  c.keepalive_s = 60;
  mqtt::AppendConnect(out, c);
  EXPECT_EQ(out, Bytes({0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 1, 'c'}));
  out.clear();
  c.v5 = true;
  c.clean = false;
  c.username = "u";
  c.password = "pw";
  c.has_password = true;
  c.session_expiry_s = 86400;
  mqtt::AppendConnect(out, c);
  EXPECT_EQ(out, Bytes({0x10, 26, 0,    4,    'M', 'Q', 'T', 'T', 5, 0xC0, 0, 60, 5,   0x11,
                        0,    1,  0x51, 0x80, 0,   1,   'c', 0,   1, 'u',  0, 2,  'p', 'w'}));
  EXPECT_EQ(Publish(false, "a/b", "hi", 1, 0x1234),
            Bytes({0x32, 9, 0, 3, 'a', '/', 'b', 0x12, 0x34, 'h', 'i'}));
  EXPECT_EQ(Publish(true, "t", "x", 0, 0, false, {{"k", "v"}}),
            Bytes({0x30, 12, 0, 1, 't', 7, 0x26, 0, 1, 'k', 0, 1, 'v', 'x'}));
  out.clear();
  mqtt::AppendSubscribe(out, true, 7, "a/#", 1);
  EXPECT_EQ(out, Bytes({0x82, 9, 0, 7, 0, 0, 3, 'a', '/', '#', 1}));
  out.clear();
  mqtt::AppendAck(out, mqtt::kPubrel, 258);
  EXPECT_EQ(out, Bytes({0x62, 2, 1, 2}));
  // A remaining length past 127 takes two bytes.
  std::string big = Publish(false, "t", std::string(200, 'x'), 0, 0);
  EXPECT_EQ(big.substr(0, 3), Bytes({0x30, 0xCB, 0x01}));
}

TEST(MqttCodecTest, PacketsSplitAnywhereReadBackTheSame) {
  std::string stream = Bytes({0x20, 10, 1, 0, 7, 0x21, 0, 2, 0x24, 1, 0x2A, 0}) +  // CONNACK, 5
                       Publish(true, "d/1/t", "{\"a\":1}", 1, 1, false, {{"k", "v"}}) +
                       Publish(true, "d/2/t", "", 0, 0) +
                       Publish(true, "d/3/t", std::string(300, 'z'), 2, 65535, true) +
                       Bytes({0x40, 2, 0, 9}) +                     // PUBACK, short form
                       Bytes({0x40, 4, 0, 10, 0x10, 0}) +           // PUBACK, reason, no props
                       Bytes({0x90, 4, 0, 3, 0, 0x80}) +            // SUBACK refused
                       Bytes({0xD0, 0}) +                           // PINGRESP
                       Bytes({0xE0, 6, 0x8B, 4, 0x1F, 0, 1, 'x'});  // DISCONNECT + reason string
  PacketReader whole(true, 1 << 20);
  std::vector<std::string> want = ReadAll(whole, stream, stream.size());
  ASSERT_EQ(want.size(), 9u);
  EXPECT_EQ(want[0], "2 id=0 reason=0 present=1 rmax=2 maxqos=1");
  EXPECT_EQ(want[1], "3 id=1 reason=0 qos=1 dup=0 d/1/t {\"a\":1} of 7 k=v");
  EXPECT_EQ(want[3], "3 id=65535 reason=0 qos=2 dup=1 d/3/t " + std::string(300, 'z') + " of 300");
  EXPECT_EQ(want[5], "4 id=10 reason=16");
  EXPECT_EQ(want[6], "9 id=3 reason=128");
  EXPECT_EQ(want[8], "14 id=0 reason=139");
  for (size_t chunk = 1; chunk < 40; ++chunk) {
    PacketReader r(true, 1 << 20);
    EXPECT_EQ(ReadAll(r, stream, chunk), want) << "in pieces of " << chunk;
  }
}

TEST(MqttCodecTest, APublishBiggerThanWhatIsKeptIsHandedOverCutAndTheRestDropped) {
  std::string payload(50000, 'p');
  payload.replace(0, 5, "HEAD:");
  std::string stream =
      Publish(false, "big/1", payload, 1, 42) + Publish(false, "small/1", "s", 1, 43);
  for (size_t chunk : {1000u, 4096u, 70000u}) {
    PacketReader r(false, 8192);
    std::vector<std::string> got;
    Packet p;
    size_t biggest = 0;
    for (size_t at = 0; at < stream.size(); at += chunk) {
      std::string_view piece = std::string_view(stream).substr(at, chunk);
      // As the client does: write into what it offers, as much as fits.
      while (!piece.empty()) {
        std::span<char> space = r.WriteSpace();
        size_t n = std::min(space.size(), piece.size());
        std::copy_n(piece.begin(), n, space.begin());
        r.Wrote(n);
        piece.remove_prefix(n);
        biggest = std::max(biggest, space.size());
        while (r.Next(p)) {
          got.push_back(std::string(p.topic) + " id=" + std::to_string(p.packet_id) + " " +
                        std::string(p.payload.substr(0, 5)) + " kept " +
                        std::to_string(p.payload.size() < 8192) + " of " +
                        std::to_string(p.payload_size));
        }
        ASSERT_EQ(r.error(), "");
      }
    }
    ASSERT_EQ(got.size(), 2u) << chunk;
    EXPECT_EQ(got[0], "big/1 id=42 HEAD: kept 1 of 50000");
    EXPECT_EQ(got[1], "small/1 id=43 s kept 1 of 1");
    EXPECT_LT(biggest, 8192u + 16384u + 64u) << "the reader held more than it keeps";
  }
  // Anything else that big is an error, not memory.
  PacketReader r(false, 100);
  std::string suback = Bytes({0x90, 0x80, 0x02}) + std::string(256, 0);
  std::span<char> space = r.WriteSpace();
  std::copy(suback.begin(), suback.end(), space.begin());
  r.Wrote(suback.size());
  Packet p;
  EXPECT_FALSE(r.Next(p));
  EXPECT_NE(r.error().find("bigger than the 100 kept"), std::string::npos) << r.error();
}

TEST(MqttCodecTest, MalformedInputIsAnErrorThatNamesIt) {
  struct Case {
    std::string bytes;
    std::string error;
  };
  std::vector<Case> cases = {
      {Bytes({0x30, 0xff, 0xff, 0xff, 0xff, 0x01}), "malformed remaining length"},
      {Bytes({0x36, 3, 0, 1, 't'}), "QoS 3"},
      {Bytes({0x30, 3, 0, 9, 't'}), "malformed PUBLISH"},
      {Bytes({0x32, 5, 0, 1, 't', 0, 0}), "malformed PUBLISH"},  // packet id 0
      {Bytes({0x30, 5, 0, 1, 't', 1, 0x7F}), "unknown property 0x7f"},
      {Bytes({0x30, 8, 0, 1, 't', 4, 0x26, 0, 9, 'k'}), "malformed property 0x26"},
      {Bytes({0x30, 5, 0, 1, 't', 2, 0x7F}), "malformed properties"},
      {Bytes({0x20, 1, 0}), "malformed CONNACK"},
      {Bytes({0x10, 0}), "unexpected packet type 1"},
      {Bytes({0xF0, 0}), "unexpected packet type 15"},
  };
  for (const Case& c : cases) {
    PacketReader r(true, 1 << 20);
    std::span<char> space = r.WriteSpace();
    std::copy(c.bytes.begin(), c.bytes.end(), space.begin());
    r.Wrote(c.bytes.size());
    Packet p;
    EXPECT_FALSE(r.Next(p));
    EXPECT_NE(r.error().find(c.error), std::string::npos) << r.error() << " for " << c.error;
  }
}

// A broker of the test's own on 127.0.0.1: accepts, reads packets, sends bytes.
class TestBroker {
 public:
  TestBroker() {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    EXPECT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(listener_, 4), 0);
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~TestBroker() {
    Drop();
    ::close(listener_);
  }
  int port() const { return port_; }

  // Accepts the client and reads its CONNECT; answers with `connack`.
  bool Accept(const std::string& connack) {
    pollfd p{listener_, POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) {
      return false;
    }
    fd_ = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    Packet c;
    if (!Read(c, mqtt::kConnect)) {
      return false;
    }
    Send(connack);
    return true;
  }
  void Send(const std::string& bytes) {
    ASSERT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  void Drop() {
    buf_.clear();
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  // The next packet from the client: its first byte and body. False after 10 s or EOF.
  bool ReadRaw(uint8_t& first, std::string& body) {
    while (true) {
      if (buf_.size() >= 2) {
        size_t len = 0;
        size_t mult = 1;
        size_t at = 1;
        for (; at < buf_.size() && at < 5; ++at) {
          len += (static_cast<uint8_t>(buf_[at]) & 0x7f) * mult;
          mult *= 128;
          if ((static_cast<uint8_t>(buf_[at]) & 0x80) == 0) {
            break;
          }
        }
        if (at < buf_.size() && buf_.size() >= at + 1 + len) {
          first = static_cast<uint8_t>(buf_[0]);
          body = buf_.substr(at + 1, len);
          buf_.erase(0, at + 1 + len);
          return true;
        }
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 10000) != 1) {
        return false;
      }
      char tmp[65536];
      ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
      if (n <= 0) {
        return false;
      }
      ++reads_with_data_;
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }
  // The next packet, which must be of `type`; its packet id in `p.packet_id`.
  bool Read(Packet& p, mqtt::PacketType type) {
    uint8_t first = 0;
    std::string body;
    if (!ReadRaw(first, body)) {
      return false;
    }
    p = Packet{};
    p.type = static_cast<mqtt::PacketType>(first >> 4);
    p.flags = first & 0x0f;
    if (p.type != type) {
      ADD_FAILURE() << "expected packet type " << type << ", got " << int{p.type};
      return false;
    }
    if (type != mqtt::kConnect && type != mqtt::kPingreq && type != mqtt::kDisconnect) {
      size_t at = type == mqtt::kPublish
                      ? 2 + ((static_cast<uint8_t>(body[0]) << 8) | static_cast<uint8_t>(body[1]))
                      : 0;
      p.packet_id = static_cast<uint16_t>((static_cast<uint8_t>(body[at]) << 8) |
                                          static_cast<uint8_t>(body[at + 1]));
      p.dup = (p.flags & 0x08) != 0;
    }
    return true;
  }
  // Client writes that arrived as separate reads (an upper bound on the client's writes).
  int reads_with_data() const { return reads_with_data_; }

 private:
  int listener_ = -1;
  int fd_ = -1;
  int port_ = 0;
  std::string buf_;
  int reads_with_data_ = 0;
};

MqttConnectionConfig Config(int port, bool v5) {
  MqttConnectionConfig c;
  c.host = "127.0.0.1";
  c.port = port;
  c.v5 = v5;
  c.reconnect_initial_ms = 10;
  c.reconnect_max_ms = 20;
  return c;
}

TEST(MqttClientTest, ABurstIsReadInAFewReadsAndAcknowledgedAfterItWasHandedOver) {
  TestBroker broker;
  MqttClient client(Config(broker.port(), false), "c", "test");
  std::atomic<int> delivered{0};
  std::atomic<int> handed_over{0};  // messages delivered when on_reads_done last ran
  std::atomic<int> acks_before_handover{0};
  std::atomic<int> acks_seen{0};
  MqttClient::Callbacks cb;
  cb.on_message = [&](const MqttMessage& m) {
    EXPECT_EQ(m.topic, "d/" + std::to_string(delivered.load()) + "/t");
    ++delivered;
  };
  cb.on_reads_done = [&] {
    // Nothing of this burst may be acknowledged before it is handed over.
    acks_before_handover += acks_seen.load() > handed_over.load() ? 1 : 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    handed_over = delivered.load();
  };
  ASSERT_TRUE(client.Start(std::move(cb)).ok());
  ASSERT_TRUE(broker.Accept(Bytes({0x20, 2, 0, 0})));
  constexpr int kBurst = 300;
  std::string burst;
  for (int i = 0; i < kBurst; ++i) {
    burst += Publish(false, "d/" + std::to_string(i) + "/t", "{\"temp\":21.5}", 1,
                     static_cast<uint16_t>(i + 1));
  }
  broker.Send(burst);  // ~9 KB in one write
  for (int i = 0; i < kBurst; ++i) {
    Packet ack;
    ASSERT_TRUE(broker.Read(ack, mqtt::kPuback)) << i;
    EXPECT_EQ(ack.packet_id, i + 1);
    ++acks_seen;
  }
  EXPECT_EQ(delivered.load(), kBurst);
  EXPECT_EQ(acks_before_handover.load(), 0);
  // One read took the burst (a byte-by-byte reader makes ~4 per message), and its 300 PUBACKs
  // went out together: the broker's reads bound the client's writes (CONNECT's one included).
  EXPECT_LE(client.reads(), 3u);
  EXPECT_LE(broker.reads_with_data(), 4);
  client.Stop();
}

TEST(MqttClientTest, QosTwoIsDeliveredOnceAndPublishedThroughPubrelAndPubcomp) {
  TestBroker broker;
  MqttClient client(Config(broker.port(), true), "c", "test");
  std::atomic<int> delivered{0};
  std::mutex mu;
  std::vector<std::pair<int, int>> acked;
  MqttClient::Callbacks cb;
  cb.on_message = [&](const MqttMessage& m) {
    EXPECT_EQ(m.qos, 2);
    ++delivered;
  };
  cb.on_publish = [&](int mid, int reason) {
    std::lock_guard lock(mu);
    acked.emplace_back(mid, reason);
  };
  ASSERT_TRUE(client.Start(std::move(cb)).ok());
  ASSERT_TRUE(broker.Accept(Bytes({0x20, 3, 0, 0, 0})));
  ASSERT_TRUE(WaitFor([&] { return client.connected(); }));
  // In: the same message twice (the second a resend), then its PUBREL.
  broker.Send(Publish(true, "a/1/t", "{}", 2, 7) + Publish(true, "a/1/t", "{}", 2, 7, true));
  Packet p;
  ASSERT_TRUE(broker.Read(p, mqtt::kPubrec));
  EXPECT_EQ(p.packet_id, 7);
  ASSERT_TRUE(broker.Read(p, mqtt::kPubrec));
  broker.Send(Bytes({0x62, 2, 0, 7}));
  ASSERT_TRUE(broker.Read(p, mqtt::kPubcomp));
  EXPECT_EQ(p.packet_id, 7);
  EXPECT_EQ(delivered.load(), 1);
  // Out: PUBLISH, PUBREC, PUBREL, PUBCOMP; acknowledged only at the PUBCOMP.
  Result<int> mid = client.Publish("b/1", "x", 2, false, {});
  ASSERT_TRUE(mid.ok());
  ASSERT_TRUE(broker.Read(p, mqtt::kPublish));
  EXPECT_EQ(p.packet_id, mid.value());
  broker.Send(Bytes({0x50, 2, 0, static_cast<int>(p.packet_id)}));
  ASSERT_TRUE(broker.Read(p, mqtt::kPubrel));
  EXPECT_EQ(p.flags, 0x02);
  {
    std::lock_guard lock(mu);
    EXPECT_TRUE(acked.empty());
  }
  broker.Send(Bytes({0x70, 2, 0, static_cast<int>(p.packet_id)}));
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard lock(mu);
    return acked.size() == 1;
  }));
  std::lock_guard lock(mu);
  EXPECT_EQ(acked[0], std::make_pair(mid.value(), 0));
  // QoS above what the broker takes is refused before it is sent.
  client.Stop();
}

TEST(MqttClientTest, TheReceiveMaximumHoldsPublishesBackAndAReconnectResendsInOrder) {
  TestBroker broker;
  MqttClient client(Config(broker.port(), true), "c", "test");
  std::mutex mu;
  std::vector<int> acked;
  MqttClient::Callbacks cb;
  cb.on_publish = [&](int mid, int) {
    std::lock_guard lock(mu);
    acked.push_back(mid);
  };
  ASSERT_TRUE(client.Start(std::move(cb)).ok());
  // CONNACK (5): receive maximum 2, maximum QoS 1.
  ASSERT_TRUE(broker.Accept(Bytes({0x20, 8, 0, 0, 5, 0x21, 0, 2, 0x24, 1})));
  ASSERT_TRUE(WaitFor([&] { return client.connected(); }));
  EXPECT_EQ(client.Publish("t", "x", 2, false, {}).status().code(), StatusCode::kInvalidArgument);
  // What would make a packet the broker refuses (again after every reconnect) is not sent.
  std::vector<std::pair<std::string, std::string>> big = {{"k", std::string(70000, 'v')}};
  EXPECT_EQ(client.Publish("t", "x", 1, false, big).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(client.Publish("", "x", 1, false, {}).status().code(), StatusCode::kInvalidArgument);
  std::vector<int> mids;
  for (int i = 0; i < 5; ++i) {
    Result<int> mid = client.Publish("t/" + std::to_string(i), "x", 1, false, {});
    ASSERT_TRUE(mid.ok());
    mids.push_back(mid.value());
  }
  Packet p;
  ASSERT_TRUE(broker.Read(p, mqtt::kPublish));
  EXPECT_EQ(p.packet_id, mids[0]);
  ASSERT_TRUE(broker.Read(p, mqtt::kPublish));
  EXPECT_EQ(p.packet_id, mids[1]);
  // Two unacknowledged: the third waits until one is acknowledged.
  broker.Send(Bytes({0x40, 2, 0, mids[0]}));
  ASSERT_TRUE(broker.Read(p, mqtt::kPublish));
  EXPECT_EQ(p.packet_id, mids[2]);
  EXPECT_FALSE(p.dup);
  // The connection drops with mids[1..4] unacknowledged (two of them never sent).
  broker.Drop();
  ASSERT_TRUE(broker.Accept(Bytes({0x20, 3, 1, 0, 0})));  // session present, no limit
  for (int i = 1; i < 5; ++i) {
    ASSERT_TRUE(broker.Read(p, mqtt::kPublish)) << i;
    EXPECT_EQ(p.packet_id, mids[i]);
    EXPECT_EQ(p.dup, i <= 2) << "only what was sent before is marked a resend";
    broker.Send(Bytes({0x40, 2, 0, mids[i]}));
  }
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard lock(mu);
    return acked.size() == 5;
  }));
  std::lock_guard lock(mu);
  EXPECT_EQ(acked, mids);
  client.Stop();
}

// A CA, certificate or key that cannot be read fails the start, naming the file, before any
// connection is tried.
TEST(MqttClientTest, TlsFilesThatCannotBeReadFailTheStartNamingThem) {
  testing::TempDir dir;
  dir.Write("not-a-cert.pem", "not a certificate\n");
  struct Case {
    std::string ca, cert, key, named;
  };
  for (const Case& c :
       {Case{dir.File("missing-ca.pem"), "", "", "ca_file " + dir.File("missing-ca.pem")},
        Case{dir.File("not-a-cert.pem"), "", "", "ca_file " + dir.File("not-a-cert.pem")},
        Case{"", dir.File("missing.crt"), dir.File("missing.key"),
             "cert_file " + dir.File("missing.crt")}}) {
    MqttConnectionConfig config = Config(1, true);
    config.tls = true;
    config.ca_file = c.ca;
    config.cert_file = c.cert;
    config.key_file = c.key;
    MqttClient client(config, "c", "test");
    Status st = client.Start({});
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << c.named;
    EXPECT_NE(st.message().find(c.named), std::string::npos) << st.message();
    EXPECT_FALSE(client.connected());
  }
}

// An idle connection is pinged every keepalive; a broker that answers keeps it, one that stays
// silent for a keepalive after a ping is left (and the client reconnects).
TEST(MqttClientTest, AnIdleConnectionIsPingedAndASilentBrokerIsLeft) {
  TestBroker broker;
  MqttConnectionConfig config = Config(broker.port(), false);
  config.keepalive_s = 1;
  MqttClient client(config, "c", "test");
  std::atomic<int> disconnects{0};
  MqttClient::Callbacks cb;
  cb.on_disconnect = [&] { ++disconnects; };
  ASSERT_TRUE(client.Start(std::move(cb)).ok());
  ASSERT_TRUE(broker.Accept(Bytes({0x20, 2, 0, 0})));
  Packet p;
  ASSERT_TRUE(broker.Read(p, mqtt::kPingreq));
  broker.Send(Bytes({0xD0, 0}));
  ASSERT_TRUE(broker.Read(p, mqtt::kPingreq));  // the next keepalive: still connected
  EXPECT_EQ(disconnects.load(), 0);
  ASSERT_TRUE(WaitFor([&] { return disconnects.load() == 1; }));  // not answered
  broker.Drop();
  ASSERT_TRUE(broker.Accept(Bytes({0x20, 2, 0, 0})));
  ASSERT_TRUE(WaitFor([&] { return client.connected(); }));
  client.Stop();
}

TEST(MqttClientTest, AMalformedPacketFromTheBrokerDropsTheConnectionAndItReconnects) {
  TestBroker broker;
  MqttClient client(Config(broker.port(), false), "c", "test");
  std::atomic<int> disconnects{0};
  MqttClient::Callbacks cb;
  cb.on_disconnect = [&] { ++disconnects; };
  ASSERT_TRUE(client.Start(std::move(cb)).ok());
  ASSERT_TRUE(broker.Accept(Bytes({0x20, 2, 0, 0})));
  ASSERT_TRUE(WaitFor([&] { return client.connected(); }));
  broker.Send(Bytes({0x36, 3, 0, 1, 't'}));  // QoS 3
  ASSERT_TRUE(WaitFor([&] { return disconnects.load() == 1; }));
  broker.Drop();
  ASSERT_TRUE(broker.Accept(Bytes({0x20, 2, 0, 0})));
  ASSERT_TRUE(WaitFor([&] { return client.connected(); }));
  client.Stop();
  EXPECT_FALSE(client.connected());
}

}  // namespace
}  // namespace gnomon::connectors

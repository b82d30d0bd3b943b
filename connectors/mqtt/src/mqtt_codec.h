// SPDX-License-Identifier: Apache-2.0
// MQTT 3.1.1 and 5 packets, as a client writes and reads them: encoders that append a whole
// packet to a buffer, and a reader that takes the packets out of bytes as they arrive from the
// socket (many packets per read, a packet split over reads). Pure: no sockets, no threads.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gnomon::connectors::mqtt {

enum PacketType : uint8_t {
  kConnect = 1,
  kConnack = 2,
  kPublish = 3,
  kPuback = 4,
  kPubrec = 5,
  kPubrel = 6,
  kPubcomp = 7,
  kSubscribe = 8,
  kSuback = 9,
  kPingreq = 12,
  kPingresp = 13,
  kDisconnect = 14,
  kAuth = 15,
};

using StringPair = std::pair<std::string_view, std::string_view>;

struct ConnectOptions {
  bool v5 = true;
  std::string_view client_id;
  std::string_view username;  // empty: none
  std::string_view password;  // only with a username
  bool has_password = false;
  bool clean = false;  // clean session (3.1.1) / clean start (5)
  uint16_t keepalive_s = 60;
  uint32_t session_expiry_s = 0;  // 5 only; 0: not sent
};

struct PublishOut {
  std::string_view topic;
  std::string_view payload;
  int qos = 0;
  bool retain = false;
  bool dup = false;
  uint16_t packet_id = 0;                                                // qos > 0
  std::span<const std::pair<std::string, std::string>> user_properties;  // 5 only
};

void AppendConnect(std::string& out, const ConnectOptions& o);
void AppendPublish(std::string& out, bool v5, const PublishOut& p);
// SUBSCRIBE of one filter.
void AppendSubscribe(std::string& out, bool v5, uint16_t packet_id, std::string_view filter,
                     int qos);
// PUBACK, PUBREC, PUBREL, PUBCOMP: the short form (success).
void AppendAck(std::string& out, PacketType type, uint16_t packet_id);
void AppendPingreq(std::string& out);
void AppendDisconnect(std::string& out);

// Where a PUBLISH's bytes are bigger than the reader keeps, it is handed over with its payload
// cut at what was kept (`payload_size` says how big it was) and the rest is skipped as it comes.
struct Packet {
  PacketType type{};
  uint8_t flags = 0;  // the fixed header's low four bits
  // CONNACK
  bool session_present = false;
  uint8_t reason = 0;  // CONNACK, PUBACK..PUBCOMP, DISCONNECT; SUBACK: the first code
  // CONNACK (5): the server's limits; 0 where it sent none
  uint16_t receive_maximum = 0;
  uint32_t maximum_packet_size = 0;
  int maximum_qos = 2;
  uint16_t server_keepalive = 0;
  bool has_server_keepalive = false;
  // PUBLISH
  std::string_view topic;
  std::string_view payload;
  size_t payload_size = 0;
  int qos = 0;
  bool retain = false;
  bool dup = false;
  uint16_t packet_id = 0;  // PUBLISH (qos > 0), PUBACK..PUBCOMP, SUBACK
  std::vector<StringPair> user_properties;
  std::string_view reason_string;  // 5: CONNACK, DISCONNECT, acks
};

class PacketReader {
 public:
  // A packet bigger than `max_kept` bytes is handed over cut (PUBLISH) or is an error.
  explicit PacketReader(bool v5, size_t max_kept) : v5_(v5), max_kept_(max_kept) {}

  // Where the next bytes go: at least `min` bytes free.
  std::span<char> WriteSpace(size_t min = 16384);
  void Wrote(size_t n) { end_ += n; }

  // The next whole packet in what was written, or false when more bytes are needed. The
  // packet's views hold until the next call. On malformed input returns false with `error()`
  // set; the connection must then be closed.
  bool Next(Packet& p);
  const std::string& error() const { return error_; }

  void Reset();

 private:
  bool Fail(std::string e) {
    error_ = std::move(e);
    return false;
  }
  bool Decode(uint8_t header, std::string_view body, size_t whole_body, Packet& p);
  bool ReadProperties(std::string_view& in, Packet& p);

  bool v5_;
  size_t max_kept_;
  std::string buf_;
  size_t begin_ = 0;  // first unread byte
  size_t end_ = 0;    // one past the last written byte
  size_t skip_ = 0;   // bytes of a cut packet still to be dropped as they arrive
  std::string error_;
};

// The text of a CONNACK's return code (3.1.1) or a reason code (5).
std::string_view ReasonText(bool v5, PacketType type, uint8_t code);

}  // namespace gnomon::connectors::mqtt

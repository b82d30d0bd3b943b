// SPDX-License-Identifier: Apache-2.0
#include "mqtt_codec.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace gnomon::connectors::mqtt {
namespace {

constexpr size_t kReadChunk = 16384;

size_t VarIntSize(size_t n) { return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4; }

void PutVarInt(std::string& out, size_t n) {
  do {
    auto b = static_cast<uint8_t>(n % 128);
    n /= 128;
    if (n > 0) {
      b |= 0x80;
    }
    out.push_back(static_cast<char>(b));
  } while (n > 0);
}

void Put16(std::string& out, size_t v) {
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}

void Put32(std::string& out, uint32_t v) {
  Put16(out, v >> 16);
  Put16(out, v & 0xffff);
}

void PutString(std::string& out, std::string_view s) {
  Put16(out, s.size());
  out.append(s);
}

void PutHeader(std::string& out, uint8_t first, size_t remaining) {
  out.reserve(out.size() + 1 + VarIntSize(remaining) + remaining);
  out.push_back(static_cast<char>(first));
  PutVarInt(out, remaining);
}

// Readers over a packet's body: each takes from the front of `in`, false when it is too short.
bool Get8(std::string_view& in, uint8_t& v) {
  if (in.empty()) {
    return false;
  }
  v = static_cast<uint8_t>(in[0]);
  in.remove_prefix(1);
  return true;
}

bool Get16(std::string_view& in, uint16_t& v) {
  if (in.size() < 2) {
    return false;
  }
  v = static_cast<uint16_t>((static_cast<uint8_t>(in[0]) << 8) | static_cast<uint8_t>(in[1]));
  in.remove_prefix(2);
  return true;
}

bool Get32(std::string_view& in, uint32_t& v) {
  uint16_t hi = 0;
  uint16_t lo = 0;
  if (!Get16(in, hi) || !Get16(in, lo)) {
    return false;
  }
  v = (static_cast<uint32_t>(hi) << 16) | lo;
  return true;
}

bool GetVarInt(std::string_view& in, size_t& v) {
  v = 0;
  size_t mult = 1;
  for (int i = 0; i < 4; ++i) {
    uint8_t b = 0;
    if (!Get8(in, b)) {
      return false;
    }
    v += (b & 0x7f) * mult;
    if ((b & 0x80) == 0) {
      return true;
    }
    mult *= 128;
  }
  return false;
}

bool GetString(std::string_view& in, std::string_view& s) {
  uint16_t n = 0;
  if (!Get16(in, n) || in.size() < n) {
    return false;
  }
  s = in.substr(0, n);
  in.remove_prefix(n);
  return true;
}

enum class Shape { kUnknown, kByte, kTwoBytes, kFourBytes, kVarInt, kString, kPair };

// What follows a property's identifier (MQTT 5, 2.2.2.2).
Shape PropertyShape(size_t id) {
  // clang-format off
  switch (id) {
    case 0x01: case 0x17: case 0x19: case 0x24: case 0x25: case 0x28: case 0x29: case 0x2A:
      return Shape::kByte;
    case 0x13: case 0x21: case 0x22: case 0x23:
      return Shape::kTwoBytes;
    case 0x02: case 0x11: case 0x18: case 0x27:
      return Shape::kFourBytes;
    case 0x0B:
      return Shape::kVarInt;
    case 0x03: case 0x08: case 0x09: case 0x12: case 0x15: case 0x16: case 0x1A: case 0x1C:
    case 0x1F:
      return Shape::kString;
    case 0x26:
      return Shape::kPair;
    default:
      return Shape::kUnknown;
  }
  // clang-format on
}

}  // namespace

void AppendConnect(std::string& out, const ConnectOptions& o) {
  size_t props = 0;
  if (o.v5 && o.session_expiry_s > 0) {
    props += 5;
  }
  bool user = !o.username.empty();
  bool pass = user && o.has_password;
  size_t body = 10 + (o.v5 ? VarIntSize(props) + props : 0) + 2 + o.client_id.size() +
                (user ? 2 + o.username.size() : 0) + (pass ? 2 + o.password.size() : 0);
  PutHeader(out, kConnect << 4, body);
  PutString(out, "MQTT");
  out.push_back(static_cast<char>(o.v5 ? 5 : 4));
  uint8_t flags = (user ? 0x80 : 0) | (pass ? 0x40 : 0) | (o.clean ? 0x02 : 0);
  out.push_back(static_cast<char>(flags));
  Put16(out, o.keepalive_s);
  if (o.v5) {
    PutVarInt(out, props);
    if (o.session_expiry_s > 0) {
      out.push_back(0x11);
      Put32(out, o.session_expiry_s);
    }
  }
  PutString(out, o.client_id);
  if (user) {
    PutString(out, o.username);
  }
  if (pass) {
    PutString(out, o.password);
  }
}

void AppendPublish(std::string& out, bool v5, const PublishOut& p) {
  size_t props = 0;
  if (v5) {
    for (const auto& [k, v] : p.user_properties) {
      props += 5 + k.size() + v.size();
    }
  }
  size_t body = 2 + p.topic.size() + (p.qos > 0 ? 2 : 0) + (v5 ? VarIntSize(props) + props : 0) +
                p.payload.size();
  PutHeader(out,
            static_cast<uint8_t>((kPublish << 4) | (p.dup ? 0x08 : 0) | (p.qos << 1) |
                                 (p.retain ? 1 : 0)),
            body);
  PutString(out, p.topic);
  if (p.qos > 0) {
    Put16(out, p.packet_id);
  }
  if (v5) {
    PutVarInt(out, props);
    for (const auto& [k, v] : p.user_properties) {
      out.push_back(0x26);
      PutString(out, k);
      PutString(out, v);
    }
  }
  out.append(p.payload);
}

void AppendSubscribe(std::string& out, bool v5, uint16_t packet_id, std::string_view filter,
                     int qos) {
  size_t body = 2 + (v5 ? 1 : 0) + 2 + filter.size() + 1;
  PutHeader(out, (kSubscribe << 4) | 0x02, body);
  Put16(out, packet_id);
  if (v5) {
    out.push_back(0);  // no properties
  }
  PutString(out, filter);
  out.push_back(static_cast<char>(qos));
}

void AppendAck(std::string& out, PacketType type, uint16_t packet_id) {
  out.push_back(static_cast<char>((type << 4) | (type == kPubrel ? 0x02 : 0)));
  out.push_back(2);
  Put16(out, packet_id);
}

void AppendPingreq(std::string& out) {
  out.push_back(static_cast<char>(kPingreq << 4));
  out.push_back(0);
}

void AppendDisconnect(std::string& out) {
  out.push_back(static_cast<char>(kDisconnect << 4));
  out.push_back(0);
}

std::span<char> PacketReader::WriteSpace(size_t min) {
  if (begin_ == end_) {
    begin_ = end_ = 0;
    if (buf_.size() > 4 * kReadChunk && buf_.size() > min) {
      std::string().swap(buf_);  // a big packet passed: give its memory back
    }
  }
  if (buf_.size() - end_ < min) {
    if (begin_ > 0) {
      std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    if (buf_.size() - end_ < min) {
      buf_.resize(end_ + std::max(min, kReadChunk));
    }
  }
  return {buf_.data() + end_, buf_.size() - end_};
}

void PacketReader::Reset() {
  std::string().swap(buf_);
  begin_ = end_ = skip_ = 0;
  error_.clear();
}

bool PacketReader::Next(Packet& p) {
  if (skip_ > 0) {
    size_t n = std::min(skip_, end_ - begin_);
    begin_ += n;
    skip_ -= n;
    if (skip_ > 0) {
      return false;
    }
  }
  std::string_view in(buf_.data() + begin_, end_ - begin_);
  if (in.size() < 2) {
    return false;
  }
  auto header = static_cast<uint8_t>(in[0]);
  size_t remaining = 0;
  size_t mult = 1;
  size_t at = 1;
  for (;; ++at) {
    if (at > 4) {
      return Fail("malformed remaining length");
    }
    if (at >= in.size()) {
      return false;
    }
    auto b = static_cast<uint8_t>(in[at]);
    remaining += (b & 0x7f) * mult;
    mult *= 128;
    if ((b & 0x80) == 0) {
      ++at;
      break;
    }
  }
  size_t whole = at + remaining;
  if (whole > max_kept_) {
    if ((header >> 4) != kPublish) {
      return Fail(fmt::format("a packet of type {} and {} bytes is bigger than the {} kept",
                              header >> 4, whole, max_kept_));
    }
    if (in.size() < max_kept_) {
      return false;  // keep reading up to the part that is kept
    }
    // Hand over what is kept; drop the rest, here and as it arrives.
    begin_ += max_kept_;
    skip_ = whole - max_kept_;
    return Decode(header, in.substr(at, max_kept_ - at), remaining, p);
  }
  if (in.size() < whole) {
    return false;
  }
  begin_ += whole;
  return Decode(header, in.substr(at, remaining), remaining, p);
}

bool PacketReader::ReadProperties(std::string_view& in, Packet& p) {
  size_t len = 0;
  if (!GetVarInt(in, len) || in.size() < len) {
    return Fail("malformed properties");
  }
  std::string_view props = in.substr(0, len);
  in.remove_prefix(len);
  while (!props.empty()) {
    size_t id = 0;
    if (!GetVarInt(props, id)) {
      return Fail("malformed property");
    }
    uint8_t b = 0;
    uint16_t s = 0;
    uint32_t w = 0;
    size_t v = 0;
    std::string_view a;
    std::string_view c;
    bool ok = false;
    switch (PropertyShape(id)) {
      case Shape::kByte:
        ok = Get8(props, b);
        break;
      case Shape::kTwoBytes:
        ok = Get16(props, s);
        break;
      case Shape::kFourBytes:
        ok = Get32(props, w);
        break;
      case Shape::kVarInt:
        ok = GetVarInt(props, v);
        break;
      case Shape::kString:  // strings and binary data
        ok = GetString(props, a);
        break;
      case Shape::kPair:
        ok = GetString(props, a) && GetString(props, c);
        break;
      case Shape::kUnknown:
        return Fail(fmt::format("unknown property 0x{:02x}", id));
    }
    if (!ok) {
      return Fail(fmt::format("malformed property 0x{:02x}", id));
    }
    switch (id) {  // what the client uses
      case 0x13:
        p.server_keepalive = s;
        p.has_server_keepalive = true;
        break;
      case 0x1F:
        p.reason_string = a;
        break;
      case 0x21:
        p.receive_maximum = s;
        break;
      case 0x24:
        p.maximum_qos = b;
        break;
      case 0x26:
        p.user_properties.emplace_back(a, c);
        break;
      case 0x27:
        p.maximum_packet_size = w;
        break;
      default:
        break;
    }
  }
  return true;
}

bool PacketReader::Decode(uint8_t header, std::string_view body, size_t whole_body, Packet& p) {
  p = Packet{};
  p.type = static_cast<PacketType>(header >> 4);
  p.flags = header & 0x0f;
  std::string_view in = body;
  switch (p.type) {
    case kConnack: {
      uint8_t flags = 0;
      if (!Get8(in, flags) || !Get8(in, p.reason)) {
        return Fail("malformed CONNACK");
      }
      p.session_present = (flags & 1) != 0;
      return !v5_ || in.empty() || ReadProperties(in, p);
    }
    case kPublish: {
      p.qos = (p.flags >> 1) & 3;
      p.retain = (p.flags & 1) != 0;
      p.dup = (p.flags & 8) != 0;
      if (p.qos == 3) {
        return Fail("PUBLISH with QoS 3");
      }
      if (!GetString(in, p.topic) || (p.qos > 0 && !Get16(in, p.packet_id)) ||
          (p.qos > 0 && p.packet_id == 0) || (v5_ && !ReadProperties(in, p))) {
        return error_.empty() ? Fail("malformed PUBLISH") : false;
      }
      p.payload = in;
      p.payload_size = whole_body - (body.size() - in.size());
      return true;
    }
    case kPuback:
    case kPubrec:
    case kPubrel:
    case kPubcomp:
      if (!Get16(in, p.packet_id)) {
        return Fail("malformed acknowledgement");
      }
      if (v5_ && !in.empty()) {
        Get8(in, p.reason);
        if (!in.empty() && !ReadProperties(in, p)) {
          return false;
        }
      }
      return true;
    case kSuback:
      if (!Get16(in, p.packet_id) || (v5_ && !ReadProperties(in, p)) || !Get8(in, p.reason)) {
        return error_.empty() ? Fail("malformed SUBACK") : false;
      }
      return true;
    case kPingresp:
      return true;
    case kDisconnect:
      if (!in.empty()) {
        Get8(in, p.reason);
        if (v5_ && !in.empty() && !ReadProperties(in, p)) {
          return false;
        }
      }
      return true;
    default:
      return Fail(fmt::format("unexpected packet type {} from the broker", header >> 4));
  }
}

std::string_view ReasonText(bool v5, PacketType type, uint8_t code) {
  if (!v5 && type == kConnack) {  // 3.1.1's return codes
    static constexpr std::string_view kCodes[] = {
        "accepted",           "unacceptable protocol version", "identifier rejected",
        "server unavailable", "bad user name or password",     "not authorized"};
    return code < std::size(kCodes) ? kCodes[code] : "refused";
  }
  static constexpr std::pair<uint8_t, std::string_view> kReasons[] = {
      {0x00, "success"},
      {0x01, "granted QoS 1"},
      {0x02, "granted QoS 2"},
      {0x10, "no matching subscribers"},
      {0x80, "unspecified error"},
      {0x81, "malformed packet"},
      {0x82, "protocol error"},
      {0x83, "implementation specific error"},
      {0x84, "unsupported protocol version"},
      {0x85, "client identifier not valid"},
      {0x86, "bad user name or password"},
      {0x87, "not authorized"},
      {0x88, "server unavailable"},
      {0x89, "server busy"},
      {0x8A, "banned"},
      {0x8B, "server shutting down"},
      {0x8C, "bad authentication method"},
      {0x8D, "keep alive timeout"},
      {0x8E, "session taken over"},
      {0x8F, "topic filter invalid"},
      {0x90, "topic name invalid"},
      {0x91, "packet identifier in use"},
      {0x92, "packet identifier not found"},
      {0x93, "receive maximum exceeded"},
      {0x94, "topic alias invalid"},
      {0x95, "packet too large"},
      {0x96, "message rate too high"},
      {0x97, "quota exceeded"},
      {0x98, "administrative action"},
      {0x99, "payload format invalid"},
      {0x9A, "retain not supported"},
      {0x9B, "QoS not supported"},
      {0x9C, "use another server"},
      {0x9D, "server moved"},
      {0x9E, "shared subscriptions not supported"},
      {0x9F, "connection rate exceeded"},
      {0xA1, "subscription identifiers not supported"},
      {0xA2, "wildcard subscriptions not supported"},
  };
  for (const auto& [c, text] : kReasons) {
    if (c == code) {
      return text;
    }
  }
  return "unknown reason";
}

}  // namespace gnomon::connectors::mqtt

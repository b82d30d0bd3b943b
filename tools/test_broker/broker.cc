// SPDX-License-Identifier: Apache-2.0
#include "broker.h"

// clang-format off
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without it
// clang-format on

#include <algorithm>
#include <array>
#include <boost/asio.hpp>
#include <boost/crc.hpp>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>

namespace gnomon::testing {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;

// Kafka's error codes used here.
constexpr int16_t kNone = 0;
constexpr int16_t kOffsetOutOfRange = 1;
constexpr int16_t kCorruptMessage = 2;
constexpr int16_t kUnknownTopicOrPartition = 3;
constexpr int16_t kUnsupportedVersion = 35;
constexpr int16_t kInvalidRequest = 42;
constexpr int16_t kOutOfOrderSequence = 45;
constexpr int16_t kInvalidProducerEpoch = 47;
constexpr int16_t kInvalidTxnState = 48;
constexpr int16_t kInvalidProducerIdMapping = 49;
constexpr int16_t kUnknownProducerId = 59;
constexpr int16_t kProducerFenced = 90;
constexpr int16_t kIllegalGeneration = 22;
constexpr int16_t kUnknownMemberId = 25;
constexpr int16_t kRebalanceInProgress = 27;
constexpr int16_t kMemberIdRequired = 79;
constexpr int16_t kTopicAlreadyExists = 36;
constexpr int16_t kInvalidPartitions = 37;

// API keys.
constexpr int16_t kProduce = 0;
constexpr int16_t kFetch = 1;
constexpr int16_t kListOffsets = 2;
constexpr int16_t kMetadata = 3;
constexpr int16_t kOffsetCommit = 8;
constexpr int16_t kOffsetFetch = 9;
constexpr int16_t kFindCoordinator = 10;
constexpr int16_t kJoinGroup = 11;
constexpr int16_t kHeartbeat = 12;
constexpr int16_t kLeaveGroup = 13;
constexpr int16_t kSyncGroup = 14;
constexpr int16_t kApiVersions = 18;
constexpr int16_t kCreateTopics = 19;
constexpr int16_t kInitProducerId = 22;
constexpr int16_t kAddPartitionsToTxn = 24;
constexpr int16_t kAddOffsetsToTxn = 25;
constexpr int16_t kEndTxn = 26;
constexpr int16_t kTxnOffsetCommit = 28;

struct ApiRange {
  int16_t key, min, max;
};
// The versions offered: the non-flexible ones (no compact encodings), but for ApiVersions v3
// and TxnOffsetCommit v3 (KIP-447: the offsets carry the consumer group's generation, so a
// member that lost its partitions cannot commit for them).
constexpr std::array<ApiRange, 18> kApis{{
    {kCreateTopics, 0, 4},
    {kProduce, 3, 7},
    {kFetch, 4, 11},
    {kListOffsets, 1, 5},
    {kMetadata, 1, 8},
    {kOffsetCommit, 2, 7},
    {kOffsetFetch, 1, 5},
    {kFindCoordinator, 0, 2},
    {kJoinGroup, 0, 5},
    {kHeartbeat, 0, 3},
    {kLeaveGroup, 0, 2},
    {kSyncGroup, 0, 3},
    {kApiVersions, 0, 3},
    {kInitProducerId, 0, 4},
    {kAddPartitionsToTxn, 0, 2},
    {kAddOffsetsToTxn, 0, 2},
    {kEndTxn, 0, 2},
    {kTxnOffsetCommit, 0, 3},
}};

constexpr int32_t kNodeId = 1;
constexpr size_t kMaxRequestBytes = 100 << 20;
// Record batch v2: where its fields are.
constexpr size_t kBatchLengthAt = 8;
constexpr size_t kMagicAt = 16;
constexpr size_t kCrcAt = 17;
constexpr size_t kAttributesAt = 21;
constexpr size_t kLastOffsetDeltaAt = 23;
constexpr size_t kProducerIdAt = 43;
constexpr size_t kProducerEpochAt = 51;
constexpr size_t kBaseSequenceAt = 53;
constexpr size_t kBatchHeaderBytes = 61;
constexpr int16_t kTransactionalBit = 0x10;
constexpr int16_t kControlBit = 0x20;
// Batches of a producer remembered per partition to answer a retried one (as Kafka: 5).
constexpr size_t kRecentBatches = 5;

template <typename T>
T LoadBig(const char* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) {
    v = static_cast<T>((static_cast<uint64_t>(v) << 8) | static_cast<uint8_t>(p[i]));
  }
  return v;
}

template <typename T>
void StoreBig(char* p, T v) {
  auto u = static_cast<uint64_t>(v);
  for (size_t i = 0; i < sizeof(T); ++i) {
    p[sizeof(T) - 1 - i] = static_cast<char>(u & 0xff);
    u >>= 8;
  }
}

uint32_t Crc32c(std::string_view bytes) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(bytes.data(), bytes.size());
  return crc.checksum();
}

// Reads Kafka's big-endian primitives; a read past the end marks it bad (and reads zeros).
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  bool ok() const { return ok_; }
  template <typename T>
  T Int() {
    if (!Need(sizeof(T))) {
      return 0;
    }
    T v = LoadBig<T>(s_.data() + at_);
    at_ += sizeof(T);
    return v;
  }
  int8_t I8() { return Int<int8_t>(); }
  int16_t I16() { return Int<int16_t>(); }
  int32_t I32() { return Int<int32_t>(); }
  int64_t I64() { return Int<int64_t>(); }
  // STRING / NULLABLE_STRING (null reads as empty).
  std::string_view String() {
    int16_t n = I16();
    return n < 0 ? std::string_view() : Take(static_cast<size_t>(n));
  }
  // NULLABLE_BYTES / RECORDS.
  std::optional<std::string_view> Bytes() {
    int32_t n = I32();
    if (n < 0) {
      return std::nullopt;
    }
    return Take(static_cast<size_t>(n));
  }
  // An ARRAY's length (-1: null), refused when it cannot fit in what is left.
  int32_t ArrayLength() {
    int32_t n = I32();
    if (n > static_cast<int32_t>(s_.size() - at_)) {
      ok_ = false;
      return 0;
    }
    return n;
  }
  uint64_t UVarint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b = static_cast<uint8_t>(I8());
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0 || !ok_) {
        return v;
      }
    }
    ok_ = false;
    return 0;
  }
  // COMPACT_STRING / COMPACT_NULLABLE_STRING (null reads as empty).
  std::string_view CompactString() {
    uint64_t n = UVarint();
    return n == 0 ? std::string_view() : Take(static_cast<size_t>(n - 1));
  }
  // A COMPACT_ARRAY's length (-1: null), refused when it cannot fit in what is left.
  int32_t CompactArrayLength() {
    uint64_t n = UVarint();
    if (n > s_.size() - at_ + 1) {
      ok_ = false;
      return 0;
    }
    return static_cast<int32_t>(n) - 1;
  }
  void SkipTaggedFields() {
    uint64_t n = UVarint();
    for (uint64_t i = 0; i < n && ok_; ++i) {
      (void)UVarint();
      Take(UVarint());
    }
  }
  std::string_view Take(size_t n) {
    if (!Need(n)) {
      return {};
    }
    std::string_view v = s_.substr(at_, n);
    at_ += n;
    return v;
  }

 private:
  bool Need(size_t n) {
    if (!ok_ || s_.size() - at_ < n) {
      ok_ = false;
      return false;
    }
    return true;
  }
  std::string_view s_;
  size_t at_ = 0;
  bool ok_ = true;
};

class Writer {
 public:
  template <typename T>
  Writer& Int(T v) {
    char buf[sizeof(T)];
    StoreBig(buf, v);
    out_.append(buf, sizeof(T));
    return *this;
  }
  Writer& I8(int8_t v) { return Int(v); }
  Writer& I16(int16_t v) { return Int(v); }
  Writer& I32(int32_t v) { return Int(v); }
  Writer& I64(int64_t v) { return Int(v); }
  Writer& Bool(bool v) { return I8(v ? 1 : 0); }
  Writer& String(std::string_view s) {
    I16(static_cast<int16_t>(s.size()));
    out_.append(s);
    return *this;
  }
  Writer& NullString() { return I16(-1); }
  Writer& Bytes(std::string_view s) {
    I32(static_cast<int32_t>(s.size()));
    out_.append(s);
    return *this;
  }
  Writer& Array(size_t n) { return I32(static_cast<int32_t>(n)); }
  Writer& CompactString(std::string_view s) {
    UVarint(s.size() + 1);
    out_.append(s);
    return *this;
  }
  Writer& CompactArray(size_t n) { return UVarint(n + 1); }
  Writer& UVarint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
    return *this;
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

struct Batch {
  int64_t base = 0;
  int64_t last = 0;
  std::string bytes;  // as stored: baseOffset set
};

// An idempotent producer's place in one partition: the epoch and sequence expected next,
// and its last batches (base sequence, base offset) to answer a retry of one.
struct Sequences {
  int16_t epoch = 0;
  int32_t next = 0;
  std::vector<std::pair<int32_t, int64_t>> recent;
};

// An aborted transaction's span in a partition: from its first record to its abort marker.
struct Aborted {
  int64_t producer_id;
  int64_t first;
  int64_t marker;
};

struct Partition {
  std::vector<Batch> batches;
  int64_t next = 0;  // the high watermark: the next offset to assign
  std::map<int64_t, Sequences> producers;
  std::map<int64_t, int64_t> open;  // producer id -> first offset of its open transaction here
  std::vector<Aborted> aborted;
  // The last stable offset: the first offset of the earliest open transaction, or the end.
  int64_t stable() const {
    int64_t lso = next;
    for (const auto& [pid, first] : open) {
      lso = std::min(lso, first);
    }
    return lso;
  }
};

// A transactional id's producer and its transaction, if one is open.
struct Transaction {
  int64_t producer_id = -1;
  int16_t epoch = 0;
  int32_t timeout_ms = 60000;
  int16_t timed_out_epoch = -1;  // the epoch a transaction timeout fenced (KIP-360 may bump it)
  bool open = false;
  std::chrono::steady_clock::time_point started;
  std::set<std::pair<std::string, int32_t>> partitions;
  // Offsets sent with the transaction (group, topic, partition): committed with it.
  std::map<std::tuple<std::string, std::string, int32_t>, int64_t> offsets;
};

// Answers a request that was parked (a JoinGroup or SyncGroup waiting for the rest of the
// group) with its response's body.
using Reply = std::function<void(std::string)>;

struct Member {
  int32_t session_timeout_ms = 10000;
  int32_t rebalance_timeout_ms = 60000;
  std::vector<std::pair<std::string, std::string>> protocols;  // name, metadata
  std::chrono::steady_clock::time_point seen;
  Reply join;  // its JoinGroup, parked until the group has rejoined
  int16_t join_version = 0;
  Reply sync;  // its SyncGroup, parked until the leader's assignment
  int16_t sync_version = 0;
  std::string assignment;
};

// A consumer group, as Kafka's coordinator keeps one: a rebalance (every member rejoins, the
// leader assigns) whenever a member joins, leaves or times out.
struct Group {
  enum class State { kEmpty, kPreparing, kCompleting, kStable };
  State state = State::kEmpty;
  int32_t generation = 0;
  std::string protocol_type;
  std::string protocol;
  std::string leader;
  std::map<std::string, Member> members;
  std::set<std::string> pending;  // ids handed out with MEMBER_ID_REQUIRED, not joined yet
  std::chrono::steady_clock::time_point rebalance_started;
};

// A control batch (a transaction's commit or abort marker) at `base`.
std::string ControlBatch(int64_t producer_id, int16_t epoch, bool commit, int64_t base,
                         int64_t now_ms) {
  Writer rec;             // one record: key (version, type), value (version, coordinator epoch)
  rec.I8(0).I8(0).I8(0);  // attributes, timestamp delta, offset delta (zigzag varints of 0)
  rec.I8(8).I16(0).I16(commit ? 1 : 0);  // key: 4 bytes
  rec.I8(12).I16(0).I32(0);              // value: 6 bytes
  rec.I8(0);                             // headers
  Writer body;
  body.I16(kTransactionalBit | kControlBit).I32(0).I64(now_ms).I64(now_ms);
  body.I64(producer_id).I16(epoch).I32(-1).I32(1);
  body.I8(static_cast<int8_t>(rec.out().size() * 2));  // record length (zigzag varint, < 64)
  body.out() += rec.out();
  Writer batch;
  batch.I64(base).I32(static_cast<int32_t>(4 + 1 + 4 + body.out().size())).I32(0).I8(2);
  batch.Int(Crc32c(body.out()));
  return std::move(batch.out()) + body.out();
}

}  // namespace

struct KafkaTestBroker::Impl {
  explicit Impl(Options o) : options(o), acceptor(io) {}

  Options options;
  asio::io_context io;
  tcp::acceptor acceptor;
  std::thread thread;
  uint16_t port = 0;

  mutable std::mutex mu;
  // Errors to answer instead, by API key and topic ("": any), the next requests of it
  // (InjectError). Under mu.
  std::map<std::pair<int16_t, std::string>, std::deque<int16_t>, std::less<>> injected;
  int16_t TakeInjected(int16_t api, std::string_view topic = "") {
    for (std::string_view t : {topic, std::string_view()}) {
      auto it = injected.find(std::make_pair(api, std::string(t)));
      if (it != injected.end() && !it->second.empty()) {
        int16_t e = it->second.front();
        it->second.pop_front();
        return e;
      }
      if (topic.empty()) {
        break;
      }
    }
    return 0;
  }
  std::map<std::string, std::vector<Partition>, std::less<>> topics;
  std::map<std::string, Transaction, std::less<>> transactions;  // by transactional id
  std::map<int64_t, int16_t> epochs;  // every producer id given out: its current epoch
  int64_t next_producer_id = 1000;
  // Committed offsets by group, (topic, partition).
  std::map<std::string, std::map<std::pair<std::string, int32_t>, int64_t>, std::less<>> offsets;
  std::map<std::string, Group, std::less<>> groups;
  int64_t next_member = 1;
  asio::steady_timer ticker{io};

  // Every 100 ms: members whose session ran out leave their group; rebalances past their
  // timeout go on without the members that did not rejoin.
  void Tick();
  void Rebalance(Group& g);
  void MaybeCompleteJoin(Group& g);
  void CompleteSyncs(Group& g);

  Partition* Find(std::string_view topic, int32_t index) {
    auto it = topics.find(topic);
    if (it == topics.end() || index < 0 || static_cast<size_t>(index) >= it->second.size()) {
      return nullptr;
    }
    return &it->second[static_cast<size_t>(index)];
  }
  static int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  // Ends `t`'s open transaction: a marker in each of its partitions; on commit, its offsets.
  void EndLocked(Transaction& t, bool commit);
  // Aborts the transactions open longer than their timeout; true when it aborted one.
  bool ExpireLocked();

  std::vector<Partition>& Topic(std::string_view name) {
    auto it = topics.find(name);
    if (it == topics.end()) {
      it =
          topics
              .emplace(std::string(name),
                       std::vector<Partition>(static_cast<size_t>(std::max(options.partitions, 1))))
              .first;
    }
    return it->second;
  }

  void Accept();

  // Fetches waiting for records (io thread only): each entry wakes one, which then answers
  // with what there is. Woken when records arrive or a transaction ends (the last stable
  // offset moves), as Kafka answers a waiting fetch once it has data rather than at its
  // max_wait_ms.
  std::vector<std::function<void()>> fetch_waiters;
  void WakeFetchers() {
    std::vector<std::function<void()>> waiters;
    waiters.swap(fetch_waiters);
    for (const auto& wake : waiters) {
      wake();
    }
  }

  // One request: the response's body, or nullopt when the connection is to close (a request
  // this broker cannot read). A fetch with nothing to return sets `wait_ms`: answer it again
  // after that long (then with whatever there is). A request the group parks sets `parked`:
  // `reply` answers it later.
  std::optional<std::string> Handle(int16_t key, int16_t version, Reader& r, bool may_wait,
                                    int32_t* wait_ms, const Reply& reply, bool* parked);
  std::optional<std::string> JoinGroup(int16_t version, Reader& r, const Reply& reply,
                                       bool* parked);
  std::optional<std::string> SyncGroup(int16_t version, Reader& r, const Reply& reply,
                                       bool* parked);
  std::string Heartbeat(int16_t version, Reader& r);
  std::string LeaveGroup(int16_t version, Reader& r);
  std::string OffsetCommit(int16_t version, Reader& r);
  std::string OffsetFetch(int16_t version, Reader& r);
  std::string CreateTopics(int16_t version, Reader& r);
  std::string ApiVersions(int16_t version);
  std::string Metadata(int16_t version, Reader& r);
  std::string Produce(int16_t version, Reader& r);
  std::string ListOffsets(int16_t version, Reader& r);
  std::string Fetch(int16_t version, Reader& r, bool may_wait, int32_t* wait_ms);
  std::string FindCoordinator(int16_t version, Reader& r);
  std::string InitProducerId(int16_t version, Reader& r);
  std::string AddPartitionsToTxn(int16_t version, Reader& r);
  std::string AddOffsetsToTxn(int16_t version, Reader& r);
  std::string EndTxn(int16_t version, Reader& r);
  std::string TxnOffsetCommit(int16_t version, Reader& r);
  // The error (or kNone) for a transactional request naming `id`, `producer_id`, `epoch`.
  int16_t CheckTransactional(std::string_view id, int64_t producer_id, int16_t epoch,
                             Transaction** out);
};

namespace {

// One client connection: requests are read and answered in order.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, KafkaTestBroker::Impl& broker)
      : socket_(std::move(socket)), broker_(broker), timer_(socket_.get_executor()) {}

  void Start() { ReadSize(); }

 private:
  void ReadSize() {
    auto self = shared_from_this();
    asio::async_read(socket_, asio::buffer(size_), [self](boost::system::error_code ec, size_t) {
      if (ec) {
        return;
      }
      auto n = LoadBig<int32_t>(self->size_.data());
      if (n < 8 || static_cast<size_t>(n) > kMaxRequestBytes) {
        return;  // not a Kafka request: close
      }
      self->request_.resize(static_cast<size_t>(n));
      asio::async_read(self->socket_, asio::buffer(self->request_),
                       [self](boost::system::error_code ec2, size_t) {
                         if (!ec2) {
                           self->Answer(/*may_wait=*/true);
                         }
                       });
    });
  }

  void Answer(bool may_wait) {
    Reader r(request_);
    int16_t key = r.I16();
    int16_t version = r.I16();
    int32_t correlation = r.I32();
    (void)r.String();  // client_id
    if (((key == kApiVersions || key == kTxnOffsetCommit) && version >= 3) ||
        (key == kInitProducerId && version >= 2)) {
      r.SkipTaggedFields();  // request header v2 (flexible versions)
    }
    if (!r.ok()) {
      return;
    }
    int32_t wait_ms = 0;
    bool parked = false;
    auto self = shared_from_this();
    Reply reply = [self, correlation](std::string body) {
      self->Respond(correlation, std::move(body));
    };
    std::optional<std::string> body =
        broker_.Handle(key, version, r, may_wait, &wait_ms, reply, &parked);
    if (parked) {
      return;  // answered through `reply`
    }
    if (!body) {
      if (wait_ms > 0) {
        auto self = shared_from_this();
        timer_.expires_after(std::chrono::milliseconds(wait_ms));
        timer_.async_wait([self](boost::system::error_code ec) {
          if (!ec || ec == asio::error::operation_aborted) {  // (aborted: woken by records)
            self->Answer(/*may_wait=*/false);
          }
        });
        if (!waker_registered_) {  // (one entry per session: an idle broker does not grow)
          waker_registered_ = true;
          broker_.fetch_waiters.push_back([weak = weak_from_this()] {
            if (auto s = weak.lock()) {
              s->waker_registered_ = false;
              s->timer_.cancel();
            }
          });
        }
      }
      return;  // (no body and no wait: close)
    }
    Respond(correlation, std::move(*body));
  }

  void Respond(int32_t correlation, std::string body) {
    Writer w;
    w.I32(static_cast<int32_t>(4 + body.size())).I32(correlation);
    response_ = std::move(w.out());
    response_ += body;
    auto self = shared_from_this();
    asio::async_write(socket_, asio::buffer(response_),
                      [self](boost::system::error_code ec, size_t) {
                        if (!ec) {
                          self->ReadSize();
                        }
                      });
  }

  tcp::socket socket_;
  KafkaTestBroker::Impl& broker_;
  asio::steady_timer timer_;
  bool waker_registered_ = false;  // in broker_.fetch_waiters (io thread only)
  std::array<char, 4> size_{};
  std::string request_;
  std::string response_;
};

}  // namespace

void KafkaTestBroker::Impl::Accept() {
  acceptor.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
    if (ec) {
      return;  // stopped
    }
    socket.set_option(tcp::no_delay(true));
    std::make_shared<Session>(std::move(socket), *this)->Start();
    Accept();
  });
}

std::optional<std::string> KafkaTestBroker::Impl::Handle(int16_t key, int16_t version, Reader& r,
                                                         bool may_wait, int32_t* wait_ms,
                                                         const Reply& reply, bool* parked) {
  if (key == kApiVersions) {
    return ApiVersions(version);
  }
  auto api =
      std::find_if(kApis.begin(), kApis.end(), [&](const ApiRange& a) { return a.key == key; });
  if (api == kApis.end() || version < api->min || version > api->max) {
    return std::nullopt;  // as Kafka does with what it does not offer: close
  }
  bool expired = false;
  {
    std::lock_guard lock(mu);
    expired = ExpireLocked();
  }
  if (expired) {
    WakeFetchers();
  }
  std::optional<std::string> body;
  switch (key) {
    case kJoinGroup:
      body = JoinGroup(version, r, reply, parked);
      break;
    case kSyncGroup:
      body = SyncGroup(version, r, reply, parked);
      break;
    case kHeartbeat:
      body = Heartbeat(version, r);
      break;
    case kLeaveGroup:
      body = LeaveGroup(version, r);
      break;
    case kOffsetCommit:
      body = OffsetCommit(version, r);
      break;
    case kOffsetFetch:
      body = OffsetFetch(version, r);
      break;
    case kCreateTopics:
      body = CreateTopics(version, r);
      break;
    case kFindCoordinator:
      body = FindCoordinator(version, r);
      break;
    case kInitProducerId:
      body = InitProducerId(version, r);
      break;
    case kAddPartitionsToTxn:
      body = AddPartitionsToTxn(version, r);
      break;
    case kAddOffsetsToTxn:
      body = AddOffsetsToTxn(version, r);
      break;
    case kEndTxn:
      body = EndTxn(version, r);
      break;
    case kTxnOffsetCommit:
      body = TxnOffsetCommit(version, r);
      break;
    case kMetadata:
      body = Metadata(version, r);
      break;
    case kProduce:
      body = Produce(version, r);
      break;
    case kListOffsets:
      body = ListOffsets(version, r);
      break;
    case kFetch: {
      std::string out = Fetch(version, r, may_wait, wait_ms);
      if (*wait_ms > 0) {
        return std::nullopt;
      }
      body = std::move(out);
      break;
    }
    default:
      break;
  }
  if (key == kProduce || key == kEndTxn) {
    WakeFetchers();  // (records to read, or a moved last stable offset)
  }
  if (*parked) {
    return std::nullopt;
  }
  if (!r.ok()) {
    return std::nullopt;  // a request cut short or malformed: close
  }
  return body;
}

std::string KafkaTestBroker::Impl::ApiVersions(int16_t version) {
  Writer w;
  if (version > 3) {
    // Answered in v0's form with the versions offered, so the client can retry with one.
    w.I16(kUnsupportedVersion).Array(kApis.size());
    for (const ApiRange& a : kApis) {
      w.I16(a.key).I16(a.min).I16(a.max);
    }
    return std::move(w.out());
  }
  w.I16(kNone);
  if (version >= 3) {
    w.UVarint(kApis.size() + 1);
    for (const ApiRange& a : kApis) {
      w.I16(a.key).I16(a.min).I16(a.max).UVarint(0);
    }
    w.I32(0).UVarint(0);  // throttle_time_ms, tagged fields
    return std::move(w.out());
  }
  w.Array(kApis.size());
  for (const ApiRange& a : kApis) {
    w.I16(a.key).I16(a.min).I16(a.max);
  }
  if (version >= 1) {
    w.I32(0);
  }
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::Metadata(int16_t version, Reader& r) {
  std::vector<std::string> wanted;
  int32_t n = r.ArrayLength();
  bool all = n < 0;
  for (int32_t i = 0; i < n && r.ok(); ++i) {
    wanted.emplace_back(r.String());
  }
  bool create = version < 4 || r.I8() != 0;
  std::lock_guard lock(mu);
  if (all) {
    for (const auto& [name, parts] : topics) {
      wanted.push_back(name);
    }
  }
  Writer w;
  if (version >= 3) {
    w.I32(0);
  }
  w.Array(1).I32(kNodeId).String("127.0.0.1").I32(port).NullString();
  if (version >= 2) {
    w.String("gnomon-test-broker");
  }
  w.I32(kNodeId);  // controller
  w.Array(wanted.size());
  for (const std::string& name : wanted) {
    auto it = topics.find(name);
    if (it == topics.end() && create && !name.empty()) {
      Topic(name);
      it = topics.find(name);
    }
    if (it == topics.end()) {
      w.I16(kUnknownTopicOrPartition).String(name).Bool(false).Array(0);
    } else {
      w.I16(kNone).String(name).Bool(false).Array(it->second.size());
      for (size_t p = 0; p < it->second.size(); ++p) {
        w.I16(kNone).I32(static_cast<int32_t>(p)).I32(kNodeId);
        if (version >= 7) {
          w.I32(0);  // leader epoch
        }
        w.Array(1).I32(kNodeId).Array(1).I32(kNodeId);
        if (version >= 5) {
          w.Array(0);  // offline replicas
        }
      }
    }
    if (version >= 8) {
      w.I32(INT32_MIN);  // authorized operations: not asked
    }
  }
  if (version >= 8) {
    w.I32(INT32_MIN);
  }
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::Produce(int16_t version, Reader& r) {
  (void)r.String();  // transactional_id
  (void)r.I16();     // acks
  (void)r.I32();     // timeout_ms
  Writer w;
  int32_t topics_n = r.ArrayLength();
  w.Array(std::max(topics_n, 0));
  std::lock_guard lock(mu);
  for (int32_t t = 0; t < topics_n && r.ok(); ++t) {
    std::string_view name = r.String();
    w.String(name);
    int32_t parts_n = r.ArrayLength();
    w.Array(std::max(parts_n, 0));
    for (int32_t i = 0; i < parts_n && r.ok(); ++i) {
      int32_t index = r.I32();
      std::optional<std::string_view> records = r.Bytes();
      std::vector<Partition>& parts = Topic(name);
      int16_t error = TakeInjected(kProduce, name);
      int64_t base = -1;
      if (error != kNone) {
        // (injected)
      } else if (index < 0 || static_cast<size_t>(index) >= parts.size()) {
        error = kUnknownTopicOrPartition;
      } else if (!records) {
        error = kInvalidRequest;
      } else {
        // Every batch is checked before any is appended: a request is taken whole or not.
        std::vector<std::string_view> batches;
        std::string_view rest = *records;
        while (!rest.empty() && error == kNone) {
          if (rest.size() < kBatchHeaderBytes) {
            error = kCorruptMessage;
            break;
          }
          auto length = LoadBig<int32_t>(rest.data() + kBatchLengthAt);
          size_t total = 12 + static_cast<size_t>(std::max(length, 0));
          if (length < static_cast<int32_t>(kBatchHeaderBytes - 12) || total > rest.size() ||
              rest[kMagicAt] != 2 ||
              LoadBig<uint32_t>(rest.data() + kCrcAt) !=
                  Crc32c(rest.substr(kAttributesAt, total - kAttributesAt)) ||
              LoadBig<int32_t>(rest.data() + kLastOffsetDeltaAt) < 0) {
            error = kCorruptMessage;
            break;
          }
          batches.push_back(rest.substr(0, total));
          rest.remove_prefix(total);
        }
        if (error == kNone && batches.empty()) {
          error = kInvalidRequest;
        }
        Partition& p = parts[static_cast<size_t>(index)];
        // The producers' checks first, on copies of their sequences (idempotence: each batch
        // the one expected next, or a retry of a recent one; transactions: a partition added
        // to the producer's open transaction, by its current epoch).
        std::map<int64_t, Sequences> seqs;
        std::vector<std::optional<int64_t>> retried(batches.size());
        for (size_t b = 0; error == kNone && b < batches.size(); ++b) {
          const char* h = batches[b].data();
          auto pid = LoadBig<int64_t>(h + kProducerIdAt);
          if (pid < 0) {
            continue;
          }
          auto epoch = LoadBig<int16_t>(h + kProducerEpochAt);
          auto seq = LoadBig<int32_t>(h + kBaseSequenceAt);
          int32_t count = LoadBig<int32_t>(h + kLastOffsetDeltaAt) + 1;
          auto current = epochs.find(pid);
          if (current == epochs.end()) {
            error = kUnknownProducerId;
            break;
          }
          if (epoch < current->second) {
            error = kInvalidProducerEpoch;  // fenced: a newer epoch has been given out
            break;
          }
          if ((LoadBig<int16_t>(h + kAttributesAt) & kTransactionalBit) != 0) {
            auto t = std::find_if(transactions.begin(), transactions.end(),
                                  [&](const auto& e) { return e.second.producer_id == pid; });
            if (t == transactions.end() || !t->second.open || t->second.epoch != epoch ||
                t->second.partitions.count({std::string(name), index}) == 0) {
              error = kInvalidTxnState;
              break;
            }
          }
          auto [it, fresh] = seqs.try_emplace(pid);
          if (fresh) {
            auto known = p.producers.find(pid);
            it->second = known != p.producers.end() ? known->second : Sequences{epoch, 0, {}};
          }
          Sequences& sq = it->second;
          if (epoch > sq.epoch) {
            sq = Sequences{epoch, 0, {}};
          }
          if (seq == sq.next) {
            sq.recent.emplace_back(seq, -1);
            sq.next += count;
          } else if (auto r = std::find_if(sq.recent.begin(), sq.recent.end(),
                                           [&](const auto& e) { return e.first == seq; });
                     r != sq.recent.end() && r->second >= 0) {
            retried[b] = r->second;  // a retry of a batch stored already: its offset again
          } else {
            error = kOutOfOrderSequence;
          }
        }
        for (size_t b = 0; error == kNone && b < batches.size(); ++b) {
          if (retried[b]) {
            base = b == 0 ? *retried[b] : base;
            continue;
          }
          Batch stored;
          stored.bytes = std::string(batches[b]);
          stored.base = p.next;
          stored.last = p.next + LoadBig<int32_t>(stored.bytes.data() + kLastOffsetDeltaAt);
          StoreBig(stored.bytes.data(), stored.base);  // (not covered by the CRC)
          if (b == 0) {
            base = stored.base;
          }
          const char* h = stored.bytes.data();
          auto pid = LoadBig<int64_t>(h + kProducerIdAt);
          if (pid >= 0) {
            Sequences& sq = p.producers[pid];
            Sequences& checked = seqs[pid];
            for (auto& [seq, offset] : checked.recent) {
              if (seq == LoadBig<int32_t>(h + kBaseSequenceAt) && offset < 0) {
                offset = stored.base;
              }
            }
            if (checked.recent.size() > kRecentBatches) {
              checked.recent.erase(
                  checked.recent.begin(),
                  checked.recent.end() - static_cast<std::ptrdiff_t>(kRecentBatches));
            }
            sq = checked;
            if ((LoadBig<int16_t>(h + kAttributesAt) & kTransactionalBit) != 0) {
              p.open.try_emplace(pid, stored.base);
            }
          }
          p.next = stored.last + 1;
          p.batches.push_back(std::move(stored));
        }
      }
      w.I32(index).I16(error).I64(base);
      w.I64(-1);  // log_append_time_ms: create time is used
      if (version >= 5) {
        w.I64(0);  // log_start_offset
      }
    }
  }
  w.I32(0);  // throttle_time_ms
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::ListOffsets(int16_t version, Reader& r) {
  (void)r.I32();  // replica_id
  bool committed_only = version >= 2 && r.I8() == 1;
  Writer w;
  if (version >= 2) {
    w.I32(0);
  }
  int32_t topics_n = r.ArrayLength();
  w.Array(std::max(topics_n, 0));
  std::lock_guard lock(mu);
  for (int32_t t = 0; t < topics_n && r.ok(); ++t) {
    std::string_view name = r.String();
    w.String(name);
    int32_t parts_n = r.ArrayLength();
    w.Array(std::max(parts_n, 0));
    for (int32_t i = 0; i < parts_n && r.ok(); ++i) {
      int32_t index = r.I32();
      if (version >= 4) {
        (void)r.I32();  // current_leader_epoch
      }
      int64_t timestamp = r.I64();
      auto it = topics.find(name);
      int16_t error = kNone;
      int64_t offset = -1;
      if (it == topics.end() || index < 0 || static_cast<size_t>(index) >= it->second.size()) {
        error = kUnknownTopicOrPartition;
      } else {
        // -1: latest (the high watermark); -2 and anything else: earliest (timestamps are
        // not indexed: every record is at or after its partition's start).
        const Partition& p = it->second[static_cast<size_t>(index)];
        offset = timestamp == -1 ? (committed_only ? p.stable() : p.next) : 0;
      }
      w.I32(index).I16(error).I64(-1).I64(offset);
      if (version >= 4) {
        w.I32(0);  // leader_epoch
      }
    }
  }
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::Fetch(int16_t version, Reader& r, bool may_wait,
                                         int32_t* wait_ms) {
  (void)r.I32();  // replica_id
  int32_t max_wait = r.I32();
  (void)r.I32();  // min_bytes
  (void)r.I32();  // max_bytes
  bool committed_only = r.I8() == 1;  // read_committed
  if (version >= 7) {
    (void)r.I32();  // session_id
    (void)r.I32();  // session_epoch
  }
  struct Want {
    int32_t index;
    int64_t offset;
    int32_t max_bytes;
  };
  std::vector<std::pair<std::string, std::vector<Want>>> wanted;
  int32_t topics_n = r.ArrayLength();
  for (int32_t t = 0; t < topics_n && r.ok(); ++t) {
    wanted.emplace_back(std::string(r.String()), std::vector<Want>());
    int32_t parts_n = r.ArrayLength();
    for (int32_t i = 0; i < parts_n && r.ok(); ++i) {
      Want want{};
      want.index = r.I32();
      if (version >= 9) {
        (void)r.I32();  // current_leader_epoch
      }
      want.offset = r.I64();
      if (version >= 5) {
        (void)r.I64();  // log_start_offset
      }
      want.max_bytes = r.I32();
      wanted.back().second.push_back(want);
    }
  }
  // (Forgotten topics and rack id, v7+ and v11: fetch sessions are not kept.)
  Writer w;
  w.I32(0);  // throttle_time_ms
  if (version >= 7) {
    w.I16(kNone).I32(0);  // error_code, session_id
  }
  w.Array(wanted.size());
  size_t data = 0;
  std::lock_guard lock(mu);
  for (const auto& [name, parts] : wanted) {
    w.String(name).Array(parts.size());
    auto it = topics.find(name);
    for (const Want& want : parts) {
      w.I32(want.index);
      if (it == topics.end() || want.index < 0 ||
          static_cast<size_t>(want.index) >= it->second.size()) {
        w.I16(kUnknownTopicOrPartition).I64(-1).I64(-1);
        if (version >= 5) {
          w.I64(-1);
        }
        w.Array(0);
        if (version >= 11) {
          w.I32(-1);
        }
        w.Bytes("");
        continue;
      }
      const Partition& p = it->second[static_cast<size_t>(want.index)];
      std::string records;
      int16_t error = kNone;
      // read_committed: nothing at or after the last stable offset (an open transaction's
      // records, and what follows them, wait for its end).
      int64_t stable = p.stable();
      int64_t end = committed_only ? stable : p.next;
      int64_t fetched_last = -1;
      if (want.offset < 0 || want.offset > p.next) {
        error = kOffsetOutOfRange;
      } else {
        auto first = std::lower_bound(p.batches.begin(), p.batches.end(), want.offset,
                                      [](const Batch& b, int64_t o) { return b.last < o; });
        for (auto b = first; b != p.batches.end() && b->last < end; ++b) {
          if (!records.empty() &&
              records.size() + b->bytes.size() > static_cast<size_t>(std::max(want.max_bytes, 0))) {
            break;  // (the first batch goes whatever its size, so a consumer always progresses)
          }
          records += b->bytes;
          fetched_last = b->last;
        }
      }
      data += records.size();
      w.I16(error).I64(p.next).I64(stable);  // high watermark, last stable offset
      if (version >= 5) {
        w.I64(0);  // log_start_offset
      }
      // The aborted transactions in what is returned, for read_committed consumers to drop
      // their records (null for read_uncommitted, as Kafka).
      if (!committed_only) {
        w.I32(-1);
      } else {
        std::vector<const Aborted*> in_range;
        for (const Aborted& a : p.aborted) {
          if (a.first <= fetched_last && a.marker >= want.offset) {
            in_range.push_back(&a);
          }
        }
        w.Array(in_range.size());
        for (const Aborted* a : in_range) {
          w.I64(a->producer_id).I64(a->first);
        }
      }
      if (version >= 11) {
        w.I32(-1);  // preferred_read_replica
      }
      w.Bytes(records);
    }
  }
  if (data == 0 && may_wait && max_wait > 0) {
    *wait_ms = std::min(max_wait, 500);
    return {};
  }
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::FindCoordinator(int16_t version, Reader& r) {
  (void)r.String();  // key: this broker coordinates every group and transaction
  if (version >= 1) {
    (void)r.I8();  // key type
  }
  Writer w;
  if (version >= 1) {
    w.I32(0);
  }
  w.I16(kNone);
  if (version >= 1) {
    w.NullString();  // error message
  }
  w.I32(kNodeId).String("127.0.0.1").I32(port);
  return std::move(w.out());
}

// v2 on is flexible; v3 on names the producer's current id and epoch (KIP-360): an epoch
// bump for a producer recovering from an error (its open transaction aborted), accepted only
// from the current epoch or the one a transaction timeout fenced, else the producer is fenced.
std::string KafkaTestBroker::Impl::InitProducerId(int16_t version, Reader& r) {
  const bool flexible = version >= 2;
  std::string_view id = flexible ? r.CompactString() : r.String();  // null reads as ""
  int32_t timeout = r.I32();
  int64_t given_pid = -1;
  int16_t given_epoch = -1;
  if (version >= 3) {
    given_pid = r.I64();
    given_epoch = r.I16();
  }
  Writer w;
  if (flexible) {
    w.UVarint(0);  // the response header's tagged fields
  }
  w.I32(0);
  auto answer = [&](int16_t error, int64_t pid, int16_t epoch) {
    w.I16(error).I64(pid).I16(epoch);
    if (flexible) {
      w.UVarint(0);
    }
    return std::move(w.out());
  };
  const int16_t fenced = version >= 4 ? kProducerFenced : kInvalidProducerEpoch;
  std::lock_guard lock(mu);
  if (id.empty()) {
    if (given_pid >= 0) {
      auto e = epochs.find(given_pid);
      if (e == epochs.end() || e->second != given_epoch) {
        return answer(fenced, -1, -1);
      }
      return answer(kNone, given_pid, ++e->second);
    }
    int64_t pid = next_producer_id++;
    epochs[pid] = 0;
    return answer(kNone, pid, 0);
  }
  auto [it, fresh] = transactions.try_emplace(std::string(id));
  Transaction& t = it->second;
  if (given_pid >= 0 && (fresh || given_pid != t.producer_id ||
                         (given_epoch != t.epoch && given_epoch != t.timed_out_epoch))) {
    if (fresh) {
      transactions.erase(it);
    }
    return answer(fenced, -1, -1);
  }
  if (fresh) {
    t.producer_id = next_producer_id++;
    t.epoch = 0;
  } else if (given_pid >= 0 && given_epoch == t.timed_out_epoch) {
    // The producer whose transaction timed out, recovering: the timeout bumped its epoch.
  } else {
    if (t.open) {
      EndLocked(t, /*commit=*/false);  // the previous producer's transaction is aborted
    }
    ++t.epoch;  // and that producer fenced
  }
  t.timed_out_epoch = -1;
  t.timeout_ms = timeout;
  epochs[t.producer_id] = t.epoch;
  return answer(kNone, t.producer_id, t.epoch);
}

int16_t KafkaTestBroker::Impl::CheckTransactional(std::string_view id, int64_t producer_id,
                                                  int16_t epoch, Transaction** out) {
  auto it = transactions.find(id);
  if (it == transactions.end() || it->second.producer_id != producer_id) {
    return kInvalidProducerIdMapping;
  }
  if (epoch != it->second.epoch) {
    return kInvalidProducerEpoch;
  }
  *out = &it->second;
  return kNone;
}

std::string KafkaTestBroker::Impl::AddPartitionsToTxn(int16_t /*version*/, Reader& r) {
  std::string_view id = r.String();
  int64_t pid = r.I64();
  int16_t epoch = r.I16();
  Writer w;
  w.I32(0);
  std::lock_guard lock(mu);
  Transaction* t = nullptr;
  int16_t error = CheckTransactional(id, pid, epoch, &t);
  int32_t topics_n = r.ArrayLength();
  w.Array(std::max(topics_n, 0));
  for (int32_t i = 0; i < topics_n && r.ok(); ++i) {
    std::string name(r.String());
    int32_t parts_n = r.ArrayLength();
    w.String(name).Array(std::max(parts_n, 0));
    for (int32_t j = 0; j < parts_n && r.ok(); ++j) {
      int32_t index = r.I32();
      int16_t e = error;
      if (e == kNone && Find(name, index) == nullptr) {
        e = kUnknownTopicOrPartition;
      }
      if (e == kNone) {
        if (!t->open) {
          t->open = true;
          t->started = std::chrono::steady_clock::now();
        }
        t->partitions.emplace(name, index);
      }
      w.I32(index).I16(e);
    }
  }
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::AddOffsetsToTxn(int16_t /*version*/, Reader& r) {
  std::string_view id = r.String();
  int64_t pid = r.I64();
  int16_t epoch = r.I16();
  (void)r.String();  // group id: its offsets come with TxnOffsetCommit
  std::lock_guard lock(mu);
  Transaction* t = nullptr;
  int16_t error = CheckTransactional(id, pid, epoch, &t);
  if (error == kNone && !t->open) {
    t->open = true;
    t->started = std::chrono::steady_clock::now();
  }
  Writer w;
  w.I32(0).I16(error);
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::TxnOffsetCommit(int16_t version, Reader& r) {
  const bool flexible = version >= 3;
  auto str = [&] { return flexible ? r.CompactString() : r.String(); };
  auto array = [&] { return flexible ? r.CompactArrayLength() : r.ArrayLength(); };
  std::string_view id = str();
  std::string group(str());
  int64_t pid = r.I64();
  int16_t epoch = r.I16();
  int32_t generation = -1;
  std::string member;
  if (flexible) {
    generation = r.I32();
    member = std::string(r.CompactString());
    (void)r.CompactString();  // group instance id
  }
  Writer w;
  if (flexible) {
    w.UVarint(0);  // the response header's tagged fields (header v1 follows the correlation id)
  }
  w.I32(0);
  std::lock_guard lock(mu);
  Transaction* t = nullptr;
  int16_t error = CheckTransactional(id, pid, epoch, &t);
  if (error == kNone && !t->open) {
    error = kInvalidTxnState;
  }
  if (error == kNone && flexible && (generation >= 0 || !member.empty())) {
    // KIP-447: only a member of the group's current generation commits for it.
    auto g = groups.find(group);
    if (g == groups.end() || g->second.members.count(member) == 0) {
      error = kUnknownMemberId;
    } else if (generation != g->second.generation) {
      error = kIllegalGeneration;
    }
  }
  if (error == kNone) {
    error = TakeInjected(kTxnOffsetCommit);
  }
  int32_t topics_n = array();
  flexible ? w.CompactArray(std::max(topics_n, 0)) : w.Array(std::max(topics_n, 0));
  for (int32_t i = 0; i < topics_n && r.ok(); ++i) {
    std::string name(str());
    int32_t parts_n = array();
    flexible ? w.CompactString(name).CompactArray(std::max(parts_n, 0))
             : w.String(name).Array(std::max(parts_n, 0));
    for (int32_t j = 0; j < parts_n && r.ok(); ++j) {
      int32_t index = r.I32();
      int64_t offset = r.I64();
      if (version >= 2) {
        (void)r.I32();  // committed leader epoch
      }
      (void)str();  // metadata
      if (flexible) {
        r.SkipTaggedFields();
      }
      if (error == kNone) {
        t->offsets[{group, name, index}] = offset;  // visible once the transaction commits
      }
      w.I32(index).I16(error);
      if (flexible) {
        w.UVarint(0);
      }
    }
    if (flexible) {
      r.SkipTaggedFields();
      w.UVarint(0);
    }
  }
  if (flexible) {
    r.SkipTaggedFields();
    w.UVarint(0);
  }
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::EndTxn(int16_t /*version*/, Reader& r) {
  std::string_view id = r.String();
  int64_t pid = r.I64();
  int16_t epoch = r.I16();
  bool commit = r.I8() != 0;
  std::lock_guard lock(mu);
  Transaction* t = nullptr;
  int16_t error = CheckTransactional(id, pid, epoch, &t);
  if (int16_t injected_error = TakeInjected(kEndTxn); error == kNone && injected_error != kNone) {
    error = injected_error;
  }
  if (error == kNone && t->open) {
    EndLocked(*t, commit);
  }
  // (Ending a transaction with nothing in it is accepted: clients commit empty ones.)
  Writer w;
  w.I32(0).I16(error);
  return std::move(w.out());
}

void KafkaTestBroker::Impl::EndLocked(Transaction& t, bool commit) {
  int64_t now = NowMs();
  for (const auto& [topic, index] : t.partitions) {
    Partition* p = Find(topic, index);
    if (p == nullptr) {
      continue;
    }
    Batch marker;
    marker.base = marker.last = p->next;
    marker.bytes = ControlBatch(t.producer_id, t.epoch, commit, p->next, now);
    ++p->next;
    auto first = p->open.find(t.producer_id);
    if (first != p->open.end()) {
      if (!commit) {
        p->aborted.push_back({t.producer_id, first->second, marker.base});
      }
      p->open.erase(first);
    }
    p->batches.push_back(std::move(marker));
  }
  if (commit) {
    for (const auto& [key, offset] : t.offsets) {
      const auto& [group, topic, index] = key;
      offsets[group][{topic, index}] = offset;
    }
  }
  t.open = false;
  t.partitions.clear();
  t.offsets.clear();
}

bool KafkaTestBroker::Impl::ExpireLocked() {
  auto now = std::chrono::steady_clock::now();
  bool expired = false;
  for (auto& [id, t] : transactions) {
    if (t.open && now - t.started > std::chrono::milliseconds(t.timeout_ms)) {
      EndLocked(t, /*commit=*/false);
      t.timed_out_epoch = t.epoch;
      ++t.epoch;  // as Kafka: the producer that let it time out is fenced
      epochs[t.producer_id] = t.epoch;
      expired = true;
    }
  }
  return expired;
}

// JoinGroup's response body (`members`: the leader's list, empty for the others).
std::string JoinResponse(int16_t version, int16_t error, int32_t generation,
                         const std::string& protocol, const std::string& leader,
                         const std::string& member,
                         const std::vector<std::pair<std::string, std::string>>& members) {
  Writer w;
  if (version >= 2) {
    w.I32(0);
  }
  w.I16(error).I32(generation).String(protocol).String(leader).String(member);
  w.Array(members.size());
  for (const auto& [id, metadata] : members) {
    w.String(id);
    if (version >= 5) {
      w.NullString();  // group instance id
    }
    w.Bytes(metadata);
  }
  return std::move(w.out());
}

std::string SyncResponse(int16_t version, int16_t error, const std::string& assignment) {
  Writer w;
  if (version >= 1) {
    w.I32(0);
  }
  w.I16(error).Bytes(assignment);
  return std::move(w.out());
}

std::optional<std::string> KafkaTestBroker::Impl::JoinGroup(int16_t version, Reader& r,
                                                            const Reply& reply, bool* parked) {
  std::string group_id(r.String());
  int32_t session_timeout = r.I32();
  int32_t rebalance_timeout = version >= 1 ? r.I32() : session_timeout;
  std::string member_id(r.String());
  if (version >= 5) {
    (void)r.String();  // group instance id (static membership is not kept apart)
  }
  std::string protocol_type(r.String());
  std::vector<std::pair<std::string, std::string>> protocols;
  int32_t n = r.ArrayLength();
  for (int32_t i = 0; i < n && r.ok(); ++i) {
    std::string name(r.String());
    std::optional<std::string_view> metadata = r.Bytes();
    protocols.emplace_back(std::move(name), std::string(metadata.value_or("")));
  }
  if (!r.ok() || protocols.empty()) {
    return std::nullopt;
  }
  std::lock_guard lock(mu);
  Group& g = groups[group_id];
  if (member_id.empty()) {
    member_id = "member-" + std::to_string(next_member++);
    if (version >= 4) {
      g.pending.insert(member_id);  // (KIP-394: the client joins again with this id)
      return JoinResponse(version, kMemberIdRequired, -1, "", "", member_id, {});
    }
  } else if (g.members.count(member_id) == 0 && g.pending.count(member_id) == 0) {
    return JoinResponse(version, kUnknownMemberId, -1, "", "", member_id, {});
  }
  g.pending.erase(member_id);
  if (g.members.empty()) {
    g.protocol_type = protocol_type;
  }
  Member& m = g.members[member_id];
  m.session_timeout_ms = session_timeout;
  m.rebalance_timeout_ms = rebalance_timeout;
  m.protocols = std::move(protocols);
  m.seen = std::chrono::steady_clock::now();
  m.join = reply;
  m.join_version = version;
  *parked = true;
  if (g.state != Group::State::kPreparing) {
    Rebalance(g);
  }
  MaybeCompleteJoin(g);
  return std::nullopt;
}

void KafkaTestBroker::Impl::Rebalance(Group& g) {
  g.state = g.members.empty() ? Group::State::kEmpty : Group::State::kPreparing;
  g.rebalance_started = std::chrono::steady_clock::now();
  for (auto& [id, m] : g.members) {
    if (m.sync) {  // a member waiting for an assignment of the old generation: join again
      m.sync(SyncResponse(m.sync_version, kRebalanceInProgress, ""));
      m.sync = nullptr;
    }
  }
}

void KafkaTestBroker::Impl::MaybeCompleteJoin(Group& g) {
  if (g.state != Group::State::kPreparing || g.members.empty() ||
      std::any_of(g.members.begin(), g.members.end(),
                  [](const auto& e) { return !e.second.join; })) {
    return;
  }
  ++g.generation;
  if (g.members.count(g.leader) == 0) {
    g.leader = g.members.begin()->first;
  }
  // The first of the leader's protocols every member has.
  g.protocol.clear();
  for (const auto& [name, metadata] : g.members[g.leader].protocols) {
    if (std::all_of(g.members.begin(), g.members.end(), [&](const auto& e) {
          return std::any_of(e.second.protocols.begin(), e.second.protocols.end(),
                             [&](const auto& p) { return p.first == name; });
        })) {
      g.protocol = name;
      break;
    }
  }
  std::vector<std::pair<std::string, std::string>> all;
  for (const auto& [id, m] : g.members) {
    for (const auto& [name, metadata] : m.protocols) {
      if (name == g.protocol) {
        all.emplace_back(id, metadata);
      }
    }
  }
  g.state = Group::State::kCompleting;
  for (auto& [id, m] : g.members) {
    m.assignment.clear();
    Reply join = std::move(m.join);
    m.join = nullptr;
    m.seen = std::chrono::steady_clock::now();
    join(JoinResponse(m.join_version, kNone, g.generation, g.protocol, g.leader, id,
                      id == g.leader ? all : std::vector<std::pair<std::string, std::string>>{}));
  }
}

void KafkaTestBroker::Impl::CompleteSyncs(Group& g) {
  for (auto& [id, m] : g.members) {
    if (m.sync) {
      Reply sync = std::move(m.sync);
      m.sync = nullptr;
      sync(SyncResponse(m.sync_version, kNone, m.assignment));
    }
  }
}

std::optional<std::string> KafkaTestBroker::Impl::SyncGroup(int16_t version, Reader& r,
                                                            const Reply& reply, bool* parked) {
  std::string group_id(r.String());
  int32_t generation = r.I32();
  std::string member_id(r.String());
  if (version >= 3) {
    (void)r.String();  // group instance id
  }
  std::map<std::string, std::string> assignments;
  int32_t n = r.ArrayLength();
  for (int32_t i = 0; i < n && r.ok(); ++i) {
    std::string id(r.String());
    assignments[id] = std::string(r.Bytes().value_or(""));
  }
  if (!r.ok()) {
    return std::nullopt;
  }
  std::lock_guard lock(mu);
  auto g = groups.find(group_id);
  if (g == groups.end() || g->second.members.count(member_id) == 0) {
    return SyncResponse(version, kUnknownMemberId, "");
  }
  Group& group = g->second;
  if (generation != group.generation) {
    return SyncResponse(version, kIllegalGeneration, "");
  }
  if (group.state == Group::State::kPreparing) {
    return SyncResponse(version, kRebalanceInProgress, "");
  }
  Member& m = group.members[member_id];
  m.seen = std::chrono::steady_clock::now();
  if (group.state == Group::State::kStable) {
    return SyncResponse(version, kNone, m.assignment);
  }
  m.sync = reply;
  m.sync_version = version;
  *parked = true;
  if (member_id == group.leader) {
    for (auto& [id, member] : group.members) {
      auto a = assignments.find(id);
      member.assignment = a != assignments.end() ? a->second : "";
    }
    group.state = Group::State::kStable;
    CompleteSyncs(group);
  }
  return std::nullopt;
}

std::string KafkaTestBroker::Impl::Heartbeat(int16_t version, Reader& r) {
  std::string group_id(r.String());
  int32_t generation = r.I32();
  std::string member_id(r.String());
  if (version >= 3) {
    (void)r.String();
  }
  int16_t error = kNone;
  {
    std::lock_guard lock(mu);
    auto g = groups.find(group_id);
    if (g == groups.end() || g->second.members.count(member_id) == 0) {
      error = kUnknownMemberId;
    } else if (g->second.state == Group::State::kPreparing) {
      error = kRebalanceInProgress;  // join again
    } else if (generation != g->second.generation) {
      error = kIllegalGeneration;
    } else {
      g->second.members[member_id].seen = std::chrono::steady_clock::now();
    }
  }
  Writer w;
  if (version >= 1) {
    w.I32(0);
  }
  w.I16(error);
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::LeaveGroup(int16_t version, Reader& r) {
  std::string group_id(r.String());
  std::string member_id(r.String());
  int16_t error = kNone;
  {
    std::lock_guard lock(mu);
    auto g = groups.find(group_id);
    if (g == groups.end() || g->second.members.erase(member_id) == 0) {
      error = kUnknownMemberId;
    } else {
      Rebalance(g->second);
      MaybeCompleteJoin(g->second);
    }
  }
  Writer w;
  if (version >= 1) {
    w.I32(0);
  }
  w.I16(error);
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::OffsetCommit(int16_t version, Reader& r) {
  std::string group_id(r.String());
  int32_t generation = r.I32();
  std::string member_id(r.String());
  if (version >= 7) {
    (void)r.String();  // group instance id
  }
  if (version >= 2 && version <= 4) {
    (void)r.I64();  // retention time
  }
  Writer w;
  if (version >= 3) {
    w.I32(0);
  }
  std::lock_guard lock(mu);
  // A commit by a member (generation >= 0) must be of the group's current generation.
  int16_t error = kNone;
  if (generation >= 0) {
    auto g = groups.find(group_id);
    if (g == groups.end() || g->second.members.count(member_id) == 0) {
      error = kUnknownMemberId;
    } else if (g->second.generation != generation) {
      error = kIllegalGeneration;
    } else if (g->second.state == Group::State::kPreparing) {
      error = kRebalanceInProgress;
    }
  }
  int32_t topics_n = r.ArrayLength();
  w.Array(std::max(topics_n, 0));
  for (int32_t t = 0; t < topics_n && r.ok(); ++t) {
    std::string name(r.String());
    int32_t parts_n = r.ArrayLength();
    w.String(name).Array(std::max(parts_n, 0));
    for (int32_t i = 0; i < parts_n && r.ok(); ++i) {
      int32_t index = r.I32();
      int64_t offset = r.I64();
      if (version >= 6) {
        (void)r.I32();  // committed leader epoch
      }
      (void)r.String();  // metadata
      if (error == kNone && r.ok()) {
        offsets[group_id][{name, index}] = offset;
      }
      w.I32(index).I16(error);
    }
  }
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::OffsetFetch(int16_t version, Reader& r) {
  std::string group_id(r.String());
  std::vector<std::pair<std::string, std::vector<int32_t>>> wanted;
  int32_t topics_n = r.ArrayLength();
  for (int32_t t = 0; t < topics_n && r.ok(); ++t) {
    wanted.emplace_back(std::string(r.String()), std::vector<int32_t>());
    int32_t parts_n = r.ArrayLength();
    for (int32_t i = 0; i < parts_n && r.ok(); ++i) {
      wanted.back().second.push_back(r.I32());
    }
  }
  std::lock_guard lock(mu);
  const auto& committed = offsets[group_id];
  if (topics_n < 0) {  // every committed offset of the group
    for (const auto& [tp, offset] : committed) {
      if (wanted.empty() || wanted.back().first != tp.first) {
        wanted.emplace_back(tp.first, std::vector<int32_t>());
      }
      wanted.back().second.push_back(tp.second);
    }
  }
  Writer w;
  if (version >= 3) {
    w.I32(0);
  }
  w.Array(wanted.size());
  for (const auto& [name, parts] : wanted) {
    w.String(name).Array(parts.size());
    for (int32_t index : parts) {
      auto it = committed.find({name, index});
      w.I32(index).I64(it != committed.end() ? it->second : -1);
      if (version >= 5) {
        w.I32(-1);  // leader epoch
      }
      w.String("").I16(kNone);
    }
  }
  if (version >= 2) {
    w.I16(kNone);
  }
  return std::move(w.out());
}

std::string KafkaTestBroker::Impl::CreateTopics(int16_t version, Reader& r) {
  struct Want {
    std::string name;
    int32_t partitions;
  };
  std::vector<Want> wanted;
  int32_t n = r.ArrayLength();
  for (int32_t i = 0; i < n && r.ok(); ++i) {
    Want want{std::string(r.String()), r.I32()};
    (void)r.I16();  // replication factor: one node
    int32_t assignments = r.ArrayLength();
    for (int32_t a = 0; a < assignments && r.ok(); ++a) {
      (void)r.I32();
      int32_t brokers = r.ArrayLength();
      for (int32_t b = 0; b < brokers && r.ok(); ++b) {
        (void)r.I32();
      }
      want.partitions = std::max(want.partitions, assignments);
    }
    int32_t configs = r.ArrayLength();
    for (int32_t c = 0; c < configs && r.ok(); ++c) {
      (void)r.String();
      (void)r.String();
    }
    wanted.push_back(std::move(want));
  }
  (void)r.I32();  // timeout
  bool validate_only = version >= 1 && r.I8() != 0;
  Writer w;
  if (version >= 2) {
    w.I32(0);
  }
  w.Array(wanted.size());
  std::lock_guard lock(mu);
  for (const Want& want : wanted) {
    int16_t error = kNone;
    int32_t partitions = want.partitions == -1 ? options.partitions : want.partitions;
    if (topics.count(want.name) > 0) {
      error = kTopicAlreadyExists;
    } else if (partitions < 1 || partitions > 10000) {
      error = kInvalidPartitions;
    } else if (!validate_only) {
      topics.emplace(want.name, std::vector<Partition>(static_cast<size_t>(partitions)));
    }
    w.String(want.name).I16(error);
    if (version >= 1) {
      w.NullString();  // error message
    }
  }
  return std::move(w.out());
}

void KafkaTestBroker::Impl::Tick() {
  ticker.expires_after(std::chrono::milliseconds(100));
  ticker.async_wait([this](boost::system::error_code ec) {
    if (ec) {
      return;
    }
    bool expired = false;
    {
      std::lock_guard lock(mu);
      expired = ExpireLocked();
      auto now = std::chrono::steady_clock::now();
      for (auto& [id, g] : groups) {
        bool changed = false;
        for (auto m = g.members.begin(); m != g.members.end();) {
          const Member& member = m->second;
          // A member neither waiting in a join nor in a sync must heartbeat within its
          // session, rebalancing or not (a crashed member holds a rebalance up for its session
          // timeout, as in Kafka); in a rebalance, one that has not rejoined within its
          // rebalance timeout is dropped too.
          bool waiting = member.join || member.sync;
          bool gone =
              (!waiting &&
               now - member.seen > std::chrono::milliseconds(member.session_timeout_ms)) ||
              (g.state == Group::State::kPreparing && !member.join &&
               now - g.rebalance_started >
                   std::chrono::milliseconds(member.rebalance_timeout_ms));
          if (gone) {
            m = g.members.erase(m);
            changed = true;
          } else {
            ++m;
          }
        }
        if (changed) {
          if (g.state != Group::State::kPreparing) {
            Rebalance(g);
          }
          MaybeCompleteJoin(g);
        }
      }
    }
    if (expired) {
      WakeFetchers();
    }
    Tick();
  });
}

KafkaTestBroker::KafkaTestBroker(Options options) : impl_(std::make_unique<Impl>(options)) {}

KafkaTestBroker::~KafkaTestBroker() { Stop(); }

std::string KafkaTestBroker::Start() {
  boost::system::error_code ec;
  tcp::endpoint at(asio::ip::make_address("127.0.0.1"), impl_->options.port);
  impl_->acceptor.open(at.protocol(), ec);
  if (!ec) {
    impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  }
  if (!ec) {
    impl_->acceptor.bind(at, ec);
  }
  if (!ec) {
    impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  }
  if (ec) {
    return "cannot listen on 127.0.0.1:" + std::to_string(impl_->options.port) + ": " +
           ec.message();
  }
  impl_->port = impl_->acceptor.local_endpoint().port();
  impl_->Accept();
  impl_->Tick();
  impl_->thread = std::thread([this] { impl_->io.run(); });
  return {};
}

void KafkaTestBroker::Stop() {
  if (impl_->thread.joinable()) {
    impl_->io.stop();
    impl_->thread.join();
  }
}

uint16_t KafkaTestBroker::port() const { return impl_->port; }

std::string KafkaTestBroker::bootstrap() const {
  return "127.0.0.1:" + std::to_string(impl_->port);
}

void KafkaTestBroker::InjectError(int16_t api_key, int16_t error, int times,
                                  const std::string& topic) {
  std::lock_guard lock(impl_->mu);
  for (int i = 0; i < times; ++i) {
    impl_->injected[{api_key, topic}].push_back(error);
  }
}

void KafkaTestBroker::CreateTopic(const std::string& name, int32_t partitions) {
  std::lock_guard lock(impl_->mu);
  impl_->topics[name] = std::vector<Partition>(static_cast<size_t>(std::max(partitions, 1)));
}

std::vector<std::string> KafkaTestBroker::Batches(const std::string& topic,
                                                  int32_t partition) const {
  std::lock_guard lock(impl_->mu);
  std::vector<std::string> out;
  auto it = impl_->topics.find(topic);
  if (it != impl_->topics.end() && partition >= 0 &&
      static_cast<size_t>(partition) < it->second.size()) {
    for (const Batch& b : it->second[static_cast<size_t>(partition)].batches) {
      out.push_back(b.bytes);
    }
  }
  return out;
}

}  // namespace gnomon::testing

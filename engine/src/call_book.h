// SPDX-License-Identifier: Apache-2.0
// CallBook: the thing-model service calls (docs/thing-models.md#services) of the things one
// worker owns, and the state machine they go through:
//
//   QUEUED ──(request acknowledged by the broker)──▶ SENT ──(reply)──▶ SUCCEEDED | FAILED
//     │  │                                             └──(timeoutMs)──▶ TIMEOUT
//     │  └──(publish dead-lettered)──▶ FAILED;  sync: (timeoutMs after it was made) ──▶ TIMEOUT
//     └──(ttl passed while the device was offline)──▶ EXPIRED
//
// A call is sent only once its first write is durable; every later state is stored before it
// is reported (Effects::Store, in order with the shadow writes). Finished calls stay readable
// for keep_ms.
//
// Threads: one book per worker, touched only by that worker's thread (and by the engine before
// the workers start: Restore); live() may be read from anywhere. Effects are called on the
// owner's thread; the `done` a book hands to Effects::Store runs on the store's writer thread
// and touches nothing but the call's waiter and its delivery.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>

#include "gnomon/core/clock.h"
#include "gnomon/core/message.h"
#include "gnomon/core/metrics.h"
#include "gnomon/core/status.h"
#include "gnomon/shadow/document.h"
#include "gnomon/shadow/store.h"
#include "work.h"

namespace gnomon::engine {

// A stored call's change-log key in a cluster, "{thing}/$call/{id}" (docs/cluster.md), and
// back: the (thing, id) a key names, or nullopt for any other key.
std::string CallChangelogKey(std::string_view thing, std::string_view id);
std::optional<std::pair<std::string_view, std::string_view>> ParseCallChangelogKey(
    std::string_view key);

enum class CallState : uint8_t { kQueued, kSent, kSucceeded, kFailed, kTimeout, kExpired };
// As the API and the store spell it: "QUEUED", "SENT", ...
std::string_view CallStateName(CallState s);
std::optional<CallState> ParseCallState(std::string_view name);

struct ServiceCall {
  std::string id, thing, service;
  std::string params;  // JSON object
  std::string model;   // modelId@version
  std::string rule;    // the rule that made the call ("": REST)
  CallState state = CallState::kQueued;
  bool sync = false;
  bool in_flight = false;  // with the store (first write) or the sink (request), not back yet
  int64_t timeout_ms = 0;
  int64_t created_ms = 0, expires_ms = 0, sent_ms = 0, finished_ms = 0;
  bool has_code = false;
  int64_t code = 0;            // the device's reply code
  std::string data;            // the reply's data (JSON), "" when none
  std::string error, message;  // why it did not succeed
  std::string details;         // problems (JSON array): strict refusals, weak checkFailedData
  Reply waiter;                // a sync REST caller (not stored)

  bool finished() const { return state != CallState::kQueued && state != CallState::kSent; }
  // The status document (GET .../calls/{id}, invoke answers); also its stored form, which
  // FromStored reads back.
  std::string Json() const;
  static Result<ServiceCall> FromStored(std::string_view stored);
};

class CallBook {
 public:
  // What the book does through the engine.
  class Effects {
   public:
    virtual ~Effects() = default;
    // Publishes the call's request. Its outcome comes back as a CallEvent (kSent, kUnsent,
    // kFailed).
    virtual void Send(const ServiceCall& c) = 0;
    // Stores the call's state (empty `stored`: forgets it); `done` (may be null) runs on the
    // store's writer thread. `hold` (may be null): the message this state comes from (a call
    // made by a rule, a reply), which whatever else the state is sent to may hold.
    virtual void Store(const ServiceCall& c, std::string stored, shadow::ShadowStore::Done done,
                       Delivery* hold) = 0;
    // Whether presence says the device is offline now (unknown: false).
    virtual bool Offline(const std::string& thing) = 0;
  };
  struct Options {
    size_t max_queued = 100;  // unfinished calls per thing at most (services.max_queued)
    int64_t keep_ms = 0;      // finished calls stay readable this long (services.keep_ms)
  };
  // Counted as they happen, when given (shared by the books).
  struct Counters {
    std::array<Counter*, 6> finished{};  // by CallState (final states only)
    Counter* store_failures = nullptr;   // a call's end that could not be stored
  };

  CallBook(Options options, const Clock& clock, Effects& effects, Counters counters);

  // At start: a call stored by an earlier run. Unfinished ones go on: QUEUED ones are sent by
  // the next Tick (unless the device is offline), SENT ones time out or get their reply.
  void Restore(ServiceCall c);
  // 429 TM_TOO_MANY_CALLS when `thing` has max_queued unfinished calls.
  std::optional<shadow::ShadowError> CheckRoom(const std::string& thing) const;
  // Takes a new call (409 CALL_EXISTS when its id is taken): in flight until its first write
  // is durable (kSend) or failed (kUnstored). The caller stores it. The reference stays valid
  // until the call is forgotten (kUnstored, or keep_ms after it finished).
  std::variant<ServiceCall*, shadow::ShadowError> Add(ServiceCall c);
  ServiceCall* Find(std::string_view id);
  void On(const CallEvent& e);
  // Moves `c` to a final state, stores it, then answers a sync caller waiting and releases
  // `hold` (a reply message; abandoned when the store fails, so it comes again).
  void Finish(ServiceCall& c, CallState state, Delivery* hold);
  // Timeouts, expiry, finished calls past keep_ms, and calls to send (restored, or an
  // earlier send given up).
  void Tick();
  // Sends the queued calls of `thing` that are not in flight, in order, unless it is offline
  // (presence just said it connected).
  void SendQueued(const std::string& thing);

  // Forgets every call of the things `drop` names (their partition moved to another instance,
  // which restores them); a sync caller still waiting is answered 503 NOT_OWNER. Returns how
  // many were forgotten.
  size_t DropThings(const std::function<bool(std::string_view thing)>& drop);

  size_t unfinished(const std::string& thing) const;
  size_t live() const { return live_.load(std::memory_order_relaxed); }  // thread-safe

 private:
  void Send(ServiceCall& c);
  void Erase(std::unordered_map<std::string, uint64_t>::iterator id);

  const Options options_;
  const Clock& clock_;
  Effects& effects_;
  Counters counters_;
  uint64_t next_seq_ = 1;
  std::map<uint64_t, ServiceCall> calls_;               // in the order they were made
  std::unordered_map<std::string, uint64_t> by_id_;     // id → seq
  std::unordered_map<std::string, size_t> unfinished_;  // thing → its unfinished calls
  std::atomic<size_t> live_{0};  // calls held (the service timer ticks books with some)
};

}  // namespace gnomon::engine

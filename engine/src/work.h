// SPDX-License-Identifier: Apache-2.0
// What a worker's queue carries: input for the rules, and typed requests for the owner of a
// thing (its shadows and service calls). A worker dispatches them with std::visit
// (Engine::Impl::RunWorker); nothing here leaves the engine.
#pragma once

#include <cstdint>
#include <functional>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "gnomon/core/message.h"
#include "shadow_topic.h"

namespace gnomon::engine {

// The answer to a REST request: called once, on whichever thread finishes it, with the HTTP
// status and the body.
using Reply = std::function<void(int status, std::string body)>;

// Where a shadow request came from, which says where its answer goes.
enum class ShadowChannel : uint8_t {
  kMqtt,    // on {prefix}/{thing}/shadow/...: answered on {topic}/accepted | /rejected
  kRouted,  // a rule's write to a shadow another worker owns: a rejection is dead-lettered
  kApi,     // REST: answered through `reply`
};

// A shadow request for the owner of `msg.device`. `msg.payload` is its body (an update's
// request document); `msg.delivery`'s processing hold goes with it. REST requests and rules'
// writes come with their `target` checked; an MQTT request's is read from `msg.topic`
// ({prefix}/{thing}/shadow[/name/{name}]/{update|get|delete}) by the owner, which answers
// a bad topic on it.
struct ShadowRequest {
  Message msg;
  ShadowChannel channel = ShadowChannel::kMqtt;
  Reply reply;       // kApi
  std::string rule;  // kRouted: the rule that wrote, for dead letters
  std::optional<ShadowTarget> target;
  int64_t since_version = 0;  // kChanges: the changes after this version
  std::string idempotency_key;  // kApi updates: the Idempotency-Key header (empty: none)
};

// A write of shadow (thing, name) could not be stored: its owner drops its copy of that epoch,
// so the next use reads the store again (Engine::Impl::EvictShadow, DropState).
// With `state`: a rule state's write (thing: the device, name: the rule), for its StateOwner.
struct ShadowEviction {
  std::string thing, name;
  uint64_t epoch = 0;
  bool state = false;
};

// A new thing-model service call for the owner of `msg.device`: `msg.topic` is the service,
// `msg.payload` the params, `msg.key` the call id (empty: one is made). REST calls are
// answered through `reply`; a rule's call (no `reply`) is dead-lettered when refused.
struct CallInvoke {
  Message msg;
  Reply reply;
  std::string rule;  // a rule's call: the rule, and the topic of the message it ran on
  std::string source_topic;
  int64_t ttl_ms = 0;  // a shorter time to live than services.ttl_ms (0: that one)
};

// GET of call `msg.key` of thing `msg.device`; answered through `reply`.
struct CallQuery {
  Message msg;
  Reply reply;
};

// What became of call `id` of `thing`, for its owner.
struct CallEvent {
  enum class What : uint8_t {
    kSend,      // the call is durable: send it (unless the device is offline)
    kSent,      // the broker acknowledged its request
    kUnsent,    // its request publish was given up (stopping): sent again by a later tick
    kFailed,    // its request publish was dead-lettered
    kUnstored,  // its first write failed: it was never made
  };
  std::string thing, id;
  What what = What::kSend;
};

// The service timer: look at timeouts, expiry and calls waiting to be sent.
struct CallTick {};

// The rule timer: fire the rows whose timers or inactivity are due (Engine::Impl::FireDue).
struct StateTick {};

// A message's event for a keyed window of `rule`, for the owner of the key: `msg.device` is the
// key, `msg.payload` the event ({"window", "t", "v"}); `msg.delivery` is the message's, held
// until the window has it durably.
struct WindowEvent {
  Message msg;
  std::string rule;
};

// Cluster: these partitions moved (or are being restored); drop what the worker keeps of their
// devices, then count `done` down. Queued behind everything the worker has already taken.
struct PartitionDrop {
  std::vector<int32_t> partitions;
  std::shared_ptr<std::latch> done;
  bool schedule = false;  // restored: schedule their rule rows due soon (timers, silences, windows)
};

using WorkItem = std::variant<Message, ShadowRequest, ShadowEviction, CallInvoke, CallQuery,
                              CallEvent, CallTick, StateTick, WindowEvent, PartitionDrop>;

// The message an item from outside carries (its device, source and delivery); null for the
// engine's own items (evictions, call events, ticks).
inline Message* HeadOf(WorkItem& item) {
  return std::visit(
      [](auto& x) -> Message* {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, Message>) {
          return &x;
        } else if constexpr (requires { x.msg; }) {
          return &x.msg;
        } else {
          return nullptr;
        }
      },
      item);
}

// Where a REST request's answer goes; null for items that are not requests.
inline Reply* ReplyOf(WorkItem& item) {
  return std::visit(
      [](auto& x) -> Reply* {
        if constexpr (requires { x.reply; }) {
          return &x.reply;
        } else {
          return nullptr;
        }
      },
      item);
}

// std::visit(Overloaded{[](Message&) {...}, [](CallTick&) {...}, ...}, item)
template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include "call_book.h"

#include <fmt/format.h>

#include <iterator>

#include "api_error.h"
#include "gnomon/core/json.h"
#include "gnomon/core/log.h"
#include "gnomon/shadow/value.h"

namespace gnomon::engine {
namespace {

constexpr std::string_view kStateNames[] = {"QUEUED", "SENT",    "SUCCEEDED",
                                            "FAILED", "TIMEOUT", "EXPIRED"};

}  // namespace

std::string_view CallStateName(CallState s) { return kStateNames[static_cast<size_t>(s)]; }

std::optional<CallState> ParseCallState(std::string_view name) {
  for (size_t i = 0; i < std::size(kStateNames); ++i) {
    if (kStateNames[i] == name) {
      return static_cast<CallState>(i);
    }
  }
  return std::nullopt;
}

std::string ServiceCall::Json() const {
  std::string out;
  json::ObjectWriter w(out);
  w.Field("id", id)
      .Field("thing", thing)
      .Field("service", service)
      .Field("state", CallStateName(state))
      .Field("model", model)
      .FieldRaw("params", params)
      .Field("createdAt", created_ms)
      .Field("expiresAt", expires_ms)
      .Field("timeoutMs", timeout_ms)
      .Field("callType", sync ? "sync" : "async");
  if (!rule.empty()) {
    w.Field("rule", rule);
  }
  if (sent_ms != 0) {
    w.Field("sentAt", sent_ms);
  }
  if (finished_ms != 0) {
    w.Field("finishedAt", finished_ms);
  }
  if (has_code) {
    w.Field("code", code);
  }
  if (!data.empty()) {
    w.FieldRaw("data", data);
  }
  if (!error.empty()) {
    w.Field("error", error).Field("message", message);
  }
  if (!details.empty()) {
    // Problems of a refused reply (strict), or what weak validation let through.
    w.FieldRaw(state == CallState::kSucceeded ? "checkFailedData" : "details", details);
  }
  w.Close();
  return out;
}

Result<ServiceCall> ServiceCall::FromStored(std::string_view stored) {
  GNOMON_ASSIGN_OR_RETURN(shadow::Value v, shadow::Value::Parse(stored));
  ServiceCall c;
  auto str = [&](const char* key, std::string& out) {
    if (const shadow::Value* f = v.Find(key);
        f != nullptr && f->kind() == shadow::Value::Kind::kString) {
      out = f->as_string();
    }
  };
  auto num = [&](const char* key, int64_t& out) {
    const shadow::Value* f = v.Find(key);
    if (f != nullptr && f->is_number()) {
      out = static_cast<int64_t>(f->as_double());
      return true;
    }
    return false;
  };
  auto raw = [&](const char* key, std::string& out) {
    if (const shadow::Value* f = v.Find(key)) {
      out = f->Json();
    }
  };
  str("id", c.id);
  str("thing", c.thing);
  str("service", c.service);
  std::string state;
  str("state", state);
  str("model", c.model);
  str("rule", c.rule);
  str("error", c.error);
  str("message", c.message);
  raw("params", c.params);
  raw("data", c.data);
  raw("details", c.details);
  raw("checkFailedData", c.details);
  num("createdAt", c.created_ms);
  num("expiresAt", c.expires_ms);
  num("timeoutMs", c.timeout_ms);
  num("sentAt", c.sent_ms);
  num("finishedAt", c.finished_ms);
  c.has_code = num("code", c.code);
  std::string type;
  str("callType", type);
  c.sync = type == "sync";
  if (c.id.empty() || c.thing.empty() || c.service.empty() || c.params.empty()) {
    return InvalidArgument("a stored service call without id, thing, service or params");
  }
  if (!state.empty()) {
    std::optional<CallState> s = ParseCallState(state);
    if (!s) {
      return InvalidArgument(fmt::format("a stored service call in an unknown state '{}'", state));
    }
    c.state = *s;
  }
  return c;
}

CallBook::CallBook(Options options, const Clock& clock, Effects& effects, Counters counters)
    : options_(options), clock_(clock), effects_(effects), counters_(counters) {}

std::string CallChangelogKey(std::string_view thing, std::string_view id) {
  return fmt::format("{}/$call/{}", thing, id);
}

std::optional<std::pair<std::string_view, std::string_view>> ParseCallChangelogKey(
    std::string_view key) {
  constexpr std::string_view kMark = "/$call/";
  size_t at = key.find(kMark);
  if (at == std::string_view::npos) {
    return std::nullopt;
  }
  return std::pair{key.substr(0, at), key.substr(at + kMark.size())};
}

size_t CallBook::DropThings(const std::function<bool(std::string_view thing)>& drop) {
  size_t dropped = 0;
  for (auto it = by_id_.begin(); it != by_id_.end();) {
    ServiceCall& c = calls_.at(it->second);
    if (!drop(c.thing)) {
      ++it;
      continue;
    }
    if (c.waiter) {
      c.waiter(503, ApiError(503, "NOT_OWNER",
                             fmt::format("{} moved to another instance while call {} was waiting "
                                         "for its reply; ask for the call there",
                                         c.thing, c.id))
                        .Json(clock_.NowMs() / 1000));
    }
    if (!c.finished()) {
      if (auto u = unfinished_.find(c.thing); u != unfinished_.end() && --u->second == 0) {
        unfinished_.erase(u);
      }
    }
    auto next = std::next(it);
    Erase(it);
    it = next;
    ++dropped;
  }
  return dropped;
}

void CallBook::Restore(ServiceCall c) {
  if (!c.finished()) {
    ++unfinished_[c.thing];
  }
  c.in_flight = false;
  uint64_t seq = next_seq_++;
  by_id_[c.id] = seq;
  calls_.emplace(seq, std::move(c));
  live_.fetch_add(1, std::memory_order_relaxed);
}

std::optional<shadow::ShadowError> CallBook::CheckRoom(const std::string& thing) const {
  if (auto it = unfinished_.find(thing);
      it != unfinished_.end() && it->second >= options_.max_queued) {
    return ApiError(
        429, "TM_TOO_MANY_CALLS",
        fmt::format("{} already has {} unfinished calls (services.max_queued)", thing, it->second));
  }
  return std::nullopt;
}

std::variant<ServiceCall*, shadow::ShadowError> CallBook::Add(ServiceCall c) {
  if (by_id_.count(c.id) != 0) {
    return ApiError(409, "CALL_EXISTS", fmt::format("A call with id {} exists", c.id));
  }
  uint64_t seq = next_seq_++;
  by_id_[c.id] = seq;
  ++unfinished_[c.thing];
  live_.fetch_add(1, std::memory_order_relaxed);
  ServiceCall& call = calls_.emplace(seq, std::move(c)).first->second;
  // Durable first; then sent. Until then nothing else sends it.
  call.in_flight = true;
  return &call;
}

ServiceCall* CallBook::Find(std::string_view id) {
  auto it = by_id_.find(std::string(id));
  return it != by_id_.end() ? &calls_.at(it->second) : nullptr;
}

size_t CallBook::unfinished(const std::string& thing) const {
  auto it = unfinished_.find(thing);
  return it != unfinished_.end() ? it->second : 0;
}

void CallBook::Send(ServiceCall& c) {
  c.in_flight = true;
  effects_.Send(c);
}

void CallBook::Erase(std::unordered_map<std::string, uint64_t>::iterator id) {
  uint64_t seq = id->second;
  by_id_.erase(id);
  calls_.erase(seq);
  live_.fetch_sub(1, std::memory_order_relaxed);
}

void CallBook::On(const CallEvent& e) {
  auto it = by_id_.find(e.id);
  ServiceCall* c = it != by_id_.end() ? &calls_.at(it->second) : nullptr;
  if (c == nullptr || c->finished()) {
    return;  // e.g. a reply came before the broker's acknowledgement of the request
  }
  switch (e.what) {
    case CallEvent::What::kSend:
      // Durable now: sent unless the device is offline (then when it connects).
      c->in_flight = false;
      if (c->state == CallState::kQueued && !effects_.Offline(c->thing)) {
        Send(*c);
      }
      break;
    case CallEvent::What::kSent:
      c->in_flight = false;
      if (c->state == CallState::kQueued) {
        c->state = CallState::kSent;
        c->sent_ms = clock_.NowMs();
        effects_.Store(*c, c->Json(), nullptr, nullptr);
      }
      break;
    case CallEvent::What::kUnsent:
      c->in_flight = false;  // sent again by the next tick
      break;
    case CallEvent::What::kFailed:
      c->error = "TM_SEND_FAILED";
      c->message = "The request could not be published (see the dead letter)";
      Finish(*c, CallState::kFailed, nullptr);
      break;
    case CallEvent::What::kUnstored:
      // Never made: the caller was told 500 (a sync caller is told here).
      if (c->waiter) {
        c->waiter(500, ApiError(500, "INTERNAL_ERROR", "The call could not be stored")
                           .Json(clock_.NowMs() / 1000));
      }
      if (auto u = unfinished_.find(c->thing); u != unfinished_.end() && --u->second == 0) {
        unfinished_.erase(u);
      }
      Erase(it);
      break;
  }
}

void CallBook::Finish(ServiceCall& c, CallState state, Delivery* hold) {
  c.state = state;
  c.finished_ms = clock_.NowMs();
  c.in_flight = false;
  if (auto it = unfinished_.find(c.thing); it != unfinished_.end() && --it->second == 0) {
    unfinished_.erase(it);
  }
  if (Counter* counter = counters_.finished[static_cast<size_t>(c.state)]) {
    counter->Inc();
  }
  Reply waiter = std::move(c.waiter);
  c.waiter = nullptr;
  int status = 200;
  std::string body = c.Json();
  std::string stored = body;
  if (c.state == CallState::kTimeout || c.state == CallState::kExpired) {
    status = 504;
    body =
        ApiError(504, "TM_SERVICE_TIMEOUT",
                 fmt::format("{} did not answer {} within {} ms", c.thing, c.service, c.timeout_ms),
                 body)
            .Json(c.finished_ms / 1000);
  }
  effects_.Store(
      c, std::move(stored),
      [clock = &clock_, failures = counters_.store_failures, waiter = std::move(waiter), status,
       body = std::move(body), hold, thing = c.thing, id = c.id](const Status& st) {
        if (!st.ok()) {
          if (failures != nullptr) {
            failures->Inc();
          }
          log::Error("a service call's end could not be stored",
                     {{"thing", thing}, {"call", id}, {"error", st.message()}});
          if (waiter) {
            waiter(500, ApiError(500, "INTERNAL_ERROR", "The call's state could not be stored")
                            .Json(clock->NowMs() / 1000));
          }
          if (hold != nullptr) {
            // The reply is not acknowledged: let it come again.
            hold->Mark(Delivery::kAbandoned);
            hold->Release();
          }
          return;
        }
        if (waiter) {
          waiter(status, body);
        }
        if (hold != nullptr) {
          hold->Release();
        }
      },
      hold);
}

void CallBook::Tick() {
  int64_t now = clock_.NowMs();
  std::unordered_map<std::string, bool> offline;  // per tick: one presence look-up per thing
  for (auto it = calls_.begin(); it != calls_.end();) {
    ServiceCall& c = it->second;
    if (c.finished()) {
      if (now >= c.finished_ms + options_.keep_ms) {
        effects_.Store(c, "", nullptr, nullptr);
        by_id_.erase(c.id);
        it = calls_.erase(it);
        live_.fetch_sub(1, std::memory_order_relaxed);
        continue;
      }
    } else if (c.sync && now >= c.created_ms + c.timeout_ms) {
      c.error = "TM_SERVICE_TIMEOUT";
      c.message = fmt::format("no reply within {} ms", c.timeout_ms);
      Finish(c, CallState::kTimeout, nullptr);
    } else if (c.state == CallState::kSent && now >= c.sent_ms + c.timeout_ms) {
      c.error = "TM_SERVICE_TIMEOUT";
      c.message = fmt::format("no reply within {} ms of sending", c.timeout_ms);
      Finish(c, CallState::kTimeout, nullptr);
    } else if (c.state == CallState::kQueued && !c.in_flight) {
      if (now >= c.expires_ms) {
        c.error = "TM_CALL_EXPIRED";
        c.message = "the device did not come online before the call's time to live ran out";
        Finish(c, CallState::kExpired, nullptr);
      } else {
        auto [o, fresh] = offline.try_emplace(c.thing, false);
        if (fresh) {
          o->second = effects_.Offline(c.thing);
        }
        if (!o->second) {
          Send(c);  // restored from the store, or its earlier send was given up
        }
      }
    }
    ++it;
  }
}

void CallBook::SendQueued(const std::string& thing) {
  if (unfinished_.find(thing) == unfinished_.end() || effects_.Offline(thing)) {
    return;
  }
  for (auto& [seq, c] : calls_) {
    if (c.thing == thing && c.state == CallState::kQueued && !c.in_flight) {
      Send(c);
    }
  }
}

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
// Thing-model service calls (docs/thing-models.md#services). A call is kept by the worker that
// owns its thing, like the thing's shadows, so its state changes in one place and in order:
//
//   QUEUED ──(request acknowledged by the broker)──▶ SENT ──(reply)──▶ SUCCEEDED | FAILED
//     │                                                └──(timeoutMs)──▶ TIMEOUT
//     └──(ttl passed while the device was offline)──▶ EXPIRED
//
// Every state is stored in the shadow store (same group commits, same order as shadow writes)
// before it is reported; a call is sent only once it is durable, so a crash never forgets a
// call that was answered 202. Requests are published (QoS 1) on the shadow connection.
#include <algorithm>
#include <future>

#include "engine_impl.h"
#include "gnomon/core/id.h"
#include "gnomon/core/json.h"
#include "gnomon/core/topic.h"
#include "gnomon/shadow/model.h"
#include "gnomon/shadow/value.h"

namespace gnomon::engine {
namespace {

constexpr auto kTickInterval = std::chrono::milliseconds(100);
constexpr int64_t kApiWaitMs = 10000;  // answers that need no device: at most this long
constexpr CallState kFinalStates[] = {CallState::kSucceeded, CallState::kFailed,
                                      CallState::kTimeout, CallState::kExpired};
constexpr std::string_view kStateNames[] = {"QUEUED", "SENT",    "SUCCEEDED",
                                            "FAILED", "TIMEOUT", "EXPIRED"};

shadow::ShadowError Error(int code, std::string error, std::string message,
                          std::string details = "") {
  shadow::ShadowError e;
  e.code = code;
  e.error = std::move(error);
  e.message = std::move(message);
  e.details = std::move(details);
  return e;
}

// What the sink's acknowledgement of a request publish must find again.
class SendTicket final : public AckHandle {
 public:
  SendTicket(std::string thing, std::string id) : thing(std::move(thing)), id(std::move(id)) {}
  void Ack() override {}
  std::string thing, id;
};

void Header(Headers& h, std::string_view key, std::string value) {
  h.emplace_back(std::string(key), std::move(value));
}

const std::string* FindHeader(const Headers& h, std::string_view key) {
  for (const auto& [k, v] : h) {
    if (k == key) {
      return &v;
    }
  }
  return nullptr;
}

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

// Request publishes finish here (on a sink thread): the owner learns the outcome as a message.
class ServiceSentObserver final : public DeliveryObserver {
 public:
  using Note = std::function<void(const std::string&, const std::string&, CallEvent::What)>;
  explicit ServiceSentObserver(Note to) : to_(std::move(to)) {}
  void OnDeliveryFinished(Delivery& d) override {
    auto* t = static_cast<SendTicket*>(d.ack());
    uint8_t f = d.flags();
    to_(t->thing, t->id,
        (f & Delivery::kAbandoned)      ? CallEvent::What::kUnsent
        : (f & Delivery::kDeadLettered) ? CallEvent::What::kFailed
                                        : CallEvent::What::kSent);
  }

 private:
  Note to_;
};

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
    if (const shadow::Value* f = v.Find(key); f != nullptr && f->kind() == shadow::Value::Kind::kString) {
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

Status Engine::Impl::InitServices() {
  calls_made_ = metrics_.GetCounter("gnomon_service_calls_total",
                                    "Thing-model service calls made (REST and ctx.invoke)");
  for (CallState state : kFinalStates) {
    calls_finished_[static_cast<size_t>(state)] = metrics_.GetCounter(
        "gnomon_service_calls_finished_total", "Service calls by how they ended",
        {{"state", std::string(CallStateName(state))}});
  }
  service_refused_ = metrics_.GetCounter(
      "gnomon_service_calls_refused_total",
      "Service calls refused before they were made (no model or service, invalid params, "
      "device offline, too many calls)");
  late_replies_ = metrics_.GetCounter(
      "gnomon_service_late_replies_total",
      "Replies to calls that had already ended (timed out, expired, answered)");
  if (!services_enabled()) {
    return {};
  }
  const std::string& prefix = config_.shadows.topic_prefix;
  service_reply_filter_ = prefix + "/+/services/+/reply";
  service_sent_ = std::make_unique<ServiceSentObserver>(
      [this](const std::string& thing, const std::string& id, CallEvent::What what) {
        NoteCall(thing, id, what);
      });
  // Calls stored by an earlier run: unfinished ones go on (SENT ones time out or get their
  // reply, which the broker kept for our persistent session), finished ones stay readable.
  GNOMON_ASSIGN_OR_RETURN(auto reader, shadow_store_->NewReader());
  GNOMON_ASSIGN_OR_RETURN(auto stored, reader->Calls());
  size_t restored = 0;
  for (const auto& [thing, text] : stored) {
    auto c = ServiceCall::FromStored(text);
    if (!c.ok()) {
      log::Error("a stored service call cannot be read; skipping it",
                 {{"thing", thing}, {"error", c.status().message()}});
      continue;
    }
    Worker& w = *workers_[OwnerOf(c->thing)];
    uint64_t seq = next_call_seq_++;
    if (!c->finished()) {
      ++w.unfinished[c->thing];
    }
    w.call_seq[c->id] = seq;
    w.calls.emplace(seq, std::move(c).value());
    w.live_calls.fetch_add(1, std::memory_order_relaxed);
    ++restored;
  }
  if (restored > 0) {
    log::Info("service calls restored", {{"calls", std::to_string(restored)}});
  }
  return {};
}

void Engine::Impl::NoteCall(const std::string& thing, const std::string& id,
                            CallEvent::What what) {
  (void)workers_[OwnerOf(thing)]->queue.PushForce(  // closed: stopping anyway
      CallEvent{thing, id, what});
}

std::optional<bool> Engine::Impl::Presence(Worker& w, const std::string& thing) {
  if (config_.shadows.presence_from.empty()) {
    return std::nullopt;
  }
  auto doc = w.shadows->Get(thing, "");
  if (!doc.ok()) {
    return std::nullopt;
  }
  return (*doc)->connected();
}

void Engine::Impl::StoreCall(const ServiceCall& c, shadow::ShadowStore::Done done) {
  shadow_store_->WriteCall(c.thing, c.id, c.Json(), std::move(done));
}

void Engine::Impl::SendCall(ServiceCall& c) {
  Record r;
  json::ObjectWriter w(r.payload);
  w.Field("id", c.id)
      .Field("service", c.service)
      .FieldRaw("params", c.params)
      .Field("timestamp", clock_.NowMs());
  w.Close();
  r.topic = fmt::format("{}/{}/services/{}/request", config_.shadows.topic_prefix, c.thing,
                        c.service);
  r.qos = 1;
  r.device = c.thing;
  r.rule = c.rule;
  r.source = &api_source_name_;
  r.source_topic = r.topic;
  r.route = kShadowRoute;
  r.delivery = new Delivery(service_sent_.get(), new SendTicket(c.thing, c.id));
  c.in_flight = true;
  shadow_sink_->sink->Send(std::move(r));
}

void Engine::Impl::SendQueuedCalls(Worker& w, const std::string& thing) {
  if (w.unfinished.find(thing) == w.unfinished.end() || Presence(w, thing) == false) {
    return;
  }
  for (auto& [seq, c] : w.calls) {
    if (c.thing == thing && c.state == CallState::kQueued && !c.in_flight) {
      SendCall(c);
    }
  }
}

void Engine::Impl::FinishCall(Worker& w, ServiceCall& c, CallState state, Delivery* hold) {
  c.state = state;
  c.finished_ms = clock_.NowMs();
  c.in_flight = false;
  if (auto it = w.unfinished.find(c.thing); it != w.unfinished.end() && --it->second == 0) {
    w.unfinished.erase(it);
  }
  if (Counter* counter = calls_finished_[static_cast<size_t>(c.state)]) {
    counter->Inc();
  }
  auto waiter = std::move(c.waiter);
  c.waiter = nullptr;
  int status = 200;
  std::string body = c.Json();
  if (c.state == CallState::kTimeout || c.state == CallState::kExpired) {
    status = 504;
    body = Error(504, "TM_SERVICE_TIMEOUT",
                 fmt::format("{} did not answer {} within {} ms", c.thing, c.service,
                             c.timeout_ms),
                 body)
               .Json(c.finished_ms / 1000);
  }
  StoreCall(c, [this, waiter = std::move(waiter), status, body = std::move(body), hold,
                thing = c.thing, id = c.id](const Status& st) {
    if (!st.ok()) {
      shadow_store_failures_->Inc();
      log::Error("a service call's end could not be stored",
                 {{"thing", thing}, {"call", id}, {"error", st.message()}});
      if (waiter) {
        waiter(500, Error(500, "INTERNAL_ERROR", "The call's state could not be stored")
                        .Json(clock_.NowMs() / 1000));
      }
      if (hold != nullptr) {
        hold->Mark(Delivery::kAbandoned);  // the reply is not acknowledged: let it come again
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
  });
}

void Engine::Impl::InvokeService(Worker& w, CallInvoke& call_request) {
  Message& m = call_request.msg;
  Reply& reply = call_request.reply;
  int64_t now_ms = clock_.NowMs();
  const std::string& thing = m.device;
  const std::string& service = m.topic;
  const std::string* rule = FindHeader(m.headers, "gnomon-rule");
  auto refuse = [&](const shadow::ShadowError& e) {
    service_refused_->Inc();
    std::string body = e.Json(now_ms / 1000);
    if (reply) {
      reply(e.code, std::move(body));
    } else {
      const std::string* topic = FindHeader(m.headers, "gnomon-source-topic");
      DeadLetter(m.delivery, "service_rejected",
                 fmt::format("ctx.invoke of {} on {} refused: {}", service, thing, body),
                 rule != nullptr ? *rule : "", m.source, topic != nullptr ? *topic : "", thing,
                 m.payload, 1, m.ts_ms);
    }
    m.delivery->Release();
  };
  if (!shadow::ValidShadowId(thing, 128)) {
    return refuse(Error(400, "INVALID_THING_NAME",
                        "Thing names are 1-128 bytes of A-Z a-z 0-9 : _ -"));
  }
  if (!services_enabled() || shadow_sink_ == nullptr) {
    return refuse(Error(503, "SERVICES_UNAVAILABLE",
                        "Service calls need `shadows:` with a `connection` (the MQTT broker "
                        "devices listen on) and `models:`"));
  }
  const shadow::ThingModel* model = BoundModel(thing);
  if (model == nullptr) {
    return refuse(Error(404, "TM_MODEL_NOT_FOUND",
                        fmt::format("No thing model is bound to {}", thing)));
  }
  const shadow::ServiceInfo* info = model->Service(service);
  if (info == nullptr) {
    return refuse(Error(404, "TM_UNKNOWN_IDENTIFIER",
                        fmt::format("{} is not a service of {}", service, model->ref())));
  }
  auto params = shadow::Value::Parse(m.payload.empty() ? std::string_view("{}") : m.payload);
  if (!params.ok()) {
    return refuse(Error(400, "INVALID_JSON",
                        fmt::format("The params are not valid JSON: {}", params.status().message())));
  }
  if (!params->is_object()) {
    return refuse(Error(400, "TM_TYPE_MISMATCH", "The params must be a JSON object"));
  }
  // Inputs are checked strictly in weak mode too: a command is never sent with some of its
  // params silently left out.
  if (auto problems = model->ValidateService(service, *params, false); !problems.empty()) {
    model_failures_->Inc(problems.size());
    return refuse(Error(400, "MODEL_VALIDATION",
                        fmt::format("The params do not match {} of {}", service, model->ref()),
                        shadow::ProblemsJson(problems)));
  }
  if (auto it = w.unfinished.find(thing);
      it != w.unfinished.end() && it->second >= config_.services.max_queued) {
    return refuse(Error(429, "TM_TOO_MANY_CALLS",
                        fmt::format("{} already has {} unfinished calls (services.max_queued)",
                                    thing, it->second)));
  }
  bool offline = Presence(w, thing) == false;
  if (info->sync && offline) {
    return refuse(Error(503, "TM_DEVICE_OFFLINE",
                        fmt::format("{} is offline; {} is a sync service", thing, service)));
  }
  ServiceCall c;
  c.id = m.key.empty() ? NewId() : m.key;
  if (w.call_seq.count(c.id) != 0) {
    return refuse(Error(409, "CALL_EXISTS", fmt::format("A call with id {} exists", c.id)));
  }
  c.thing = thing;
  c.service = service;
  c.params = params->Json();
  c.model = model->ref();
  c.rule = rule != nullptr ? *rule : "";
  c.sync = info->sync && reply != nullptr;  // a rule's call never waits
  c.timeout_ms = info->timeout_ms;
  c.created_ms = now_ms;
  int64_t ttl = config_.services.ttl_ms;
  if (const std::string* t = FindHeader(m.headers, "ttl-ms")) {
    ttl = std::min(ttl, std::max<int64_t>(1, std::atoll(t->c_str())));
  }
  c.expires_ms = now_ms + ttl;
  calls_made_->Inc();
  bool rest = reply != nullptr;
  uint64_t seq = next_call_seq_++;
  w.call_seq[c.id] = seq;
  ++w.unfinished[thing];
  w.live_calls.fetch_add(1, std::memory_order_relaxed);
  if (c.sync) {
    c.waiter = std::move(reply);
  }
  ServiceCall& call = w.calls.emplace(seq, std::move(c)).first->second;
  // Durable first; then answered, and sent by the owner. Until then nothing else sends it.
  call.in_flight = true;
  StoreCall(call, [this, rest, answer = std::move(reply), delivery = m.delivery,
                   body = call.Json(), thing = call.thing, id = call.id](const Status& st) {
    if (!st.ok()) {
      shadow_store_failures_->Inc();
      NoteCall(thing, id, CallEvent::What::kUnstored);
      if (answer) {
        answer(500, Error(500, "INTERNAL_ERROR", "The call could not be stored")
                        .Json(clock_.NowMs() / 1000));
      } else if (!rest) {
        delivery->Mark(Delivery::kAbandoned);  // a rule's call: the source may deliver again
      }
      delivery->Release();
      return;
    }
    NoteCall(thing, id, CallEvent::What::kSend);  // the owner sends it
    if (answer) {
      answer(202, body);
    }
    delivery->Release();
  });
}

void Engine::Impl::QueryCall(Worker& w, CallQuery& query) {
  const Message& m = query.msg;
  auto it = w.call_seq.find(m.key);
  ServiceCall* c = it != w.call_seq.end() ? &w.calls.at(it->second) : nullptr;
  if (c == nullptr || c->thing != m.device) {
    query.reply(404, Error(404, "TM_CALL_NOT_FOUND",
                           fmt::format("{} has no call {} (finished calls are kept for "
                                       "services.keep_ms)",
                                       m.device, m.key))
                         .Json(clock_.NowMs() / 1000));
    m.delivery->Release();
    return;
  }
  // After what is queued in the store: the answer shows durable state only.
  shadow_store_->After([reply = std::move(query.reply), body = c->Json(),
                        d = m.delivery](const Status&) {
    reply(200, body);
    d->Release();
  });
}

void Engine::Impl::OnCallEvent(Worker& w, const CallEvent& e) {
  auto it = w.call_seq.find(e.id);
  ServiceCall* c = it != w.call_seq.end() ? &w.calls.at(it->second) : nullptr;
  if (c == nullptr || c->finished()) {
    return;  // e.g. a reply came before the broker's acknowledgement of the request
  }
  switch (e.what) {
    case CallEvent::What::kSend:
      // Durable now: sent unless the device is offline (then when it connects).
      c->in_flight = false;
      if (c->state == CallState::kQueued && Presence(w, c->thing) != false) {
        SendCall(*c);
      }
      break;
    case CallEvent::What::kSent:
      c->in_flight = false;
      if (c->state == CallState::kQueued) {
        c->state = CallState::kSent;
        c->sent_ms = clock_.NowMs();
        StoreCall(*c, nullptr);
      }
      break;
    case CallEvent::What::kUnsent:
      c->in_flight = false;  // sent again by the next tick
      break;
    case CallEvent::What::kFailed:
      c->error = "TM_SEND_FAILED";
      c->message = "The request could not be published (see the dead letter)";
      FinishCall(w, *c, CallState::kFailed, nullptr);
      break;
    case CallEvent::What::kUnstored: {
      // Never made: the caller was told 500 (a sync caller is told here).
      if (c->waiter) {
        c->waiter(500, Error(500, "INTERNAL_ERROR", "The call could not be stored")
                           .Json(clock_.NowMs() / 1000));
      }
      if (auto u = w.unfinished.find(c->thing); u != w.unfinished.end() && --u->second == 0) {
        w.unfinished.erase(u);
      }
      uint64_t seq = it->second;
      w.call_seq.erase(it);
      w.calls.erase(seq);
      w.live_calls.fetch_sub(1, std::memory_order_relaxed);
      break;
    }
  }
}

void Engine::Impl::ServiceTick(Worker& w) {
  int64_t now = clock_.NowMs();
  std::unordered_map<std::string, bool> offline;  // per tick: one presence look-up per thing
  for (auto it = w.calls.begin(); it != w.calls.end();) {
    ServiceCall& c = it->second;
    if (c.finished()) {
      if (now >= c.finished_ms + config_.services.keep_ms) {
        shadow_store_->WriteCall(c.thing, c.id, "", nullptr);
        w.call_seq.erase(c.id);
        it = w.calls.erase(it);
        w.live_calls.fetch_sub(1, std::memory_order_relaxed);
        continue;
      }
    } else if (c.sync && now >= c.created_ms + c.timeout_ms) {
      c.error = "TM_SERVICE_TIMEOUT";
      c.message = fmt::format("no reply within {} ms", c.timeout_ms);
      FinishCall(w, c, CallState::kTimeout, nullptr);
    } else if (c.state == CallState::kSent && now >= c.sent_ms + c.timeout_ms) {
      c.error = "TM_SERVICE_TIMEOUT";
      c.message = fmt::format("no reply within {} ms of sending", c.timeout_ms);
      FinishCall(w, c, CallState::kTimeout, nullptr);
    } else if (c.state == CallState::kQueued && !c.in_flight) {
      if (now >= c.expires_ms) {
        c.error = "TM_CALL_EXPIRED";
        c.message = "the device did not come online before the call's time to live ran out";
        FinishCall(w, c, CallState::kExpired, nullptr);
      } else {
        auto [o, fresh] = offline.try_emplace(c.thing, false);
        if (fresh) {
          o->second = Presence(w, c.thing) == false;
        }
        if (!o->second) {
          SendCall(c);  // restored from the store, or its earlier send was given up
        }
      }
    }
    ++it;
  }
}

bool Engine::Impl::HandleServiceReply(Worker& w, Message& m) {
  // {prefix}/{thing}/services/{service}/reply
  std::string_view rest = std::string_view(m.topic).substr(config_.shadows.topic_prefix.size() + 1);
  std::string thing(rest.substr(0, rest.find('/')));
  rest.remove_prefix(thing.size() + sizeof("/services/") - 1);
  std::string service(rest.substr(0, rest.find('/')));
  if (OwnerOf(thing) != w.index) {
    // The source named the device differently: the thing's owner handles it (and its rules).
    m.device = thing;
    Delivery* d = m.delivery;
    if (!workers_[OwnerOf(thing)]->queue.PushForce(std::move(m))) {
      d->Mark(Delivery::kAbandoned);  // the queue is closed: stopping
      d->Release();
    }
    return false;
  }
  auto dead = [&](const char* reason, const std::string& why) {
    DeadLetter(m.delivery, reason, why, "", m.source, m.topic, thing, m.payload, 1, m.ts_ms);
    m.delivery->Release();
    return false;
  };
  auto v = shadow::Value::Parse(m.payload);
  const shadow::Value* id = v.ok() ? v->Find("id") : nullptr;
  if (id == nullptr || id->kind() != shadow::Value::Kind::kString) {
    return dead("bad_service_reply",
                v.ok() ? "a service reply must be a JSON object with a string `id`"
                       : fmt::format("a service reply is not JSON: {}", v.status().message()));
  }
  auto seq = w.call_seq.find(id->as_string());
  ServiceCall* c = seq != w.call_seq.end() ? &w.calls.at(seq->second) : nullptr;
  if (c == nullptr || c->thing != thing || c->service != service) {
    return dead("unknown_service_call",
                fmt::format("{} has no call {} of {} (finished calls are forgotten after "
                            "services.keep_ms)",
                            thing, id->as_string(), service));
  }
  Header(m.headers, "gnomon-call-id", c->id);
  Header(m.headers, "gnomon-service", c->service);
  if (c->finished()) {
    late_replies_->Inc();
    log::Warn("a service reply came after its call ended; keeping the end",
              {{"thing", thing}, {"call", c->id}, {"state", CallStateName(c->state)}});
    Header(m.headers, "gnomon-call-state", std::string(CallStateName(c->state)));
    return true;
  }
  const shadow::Value* code = v->Find("code");
  const shadow::Value* data = v->Find("data");
  c->has_code = code != nullptr && code->is_number();
  c->code = c->has_code ? static_cast<int64_t>(code->as_double()) : 200;
  c->data = data != nullptr ? data->Json() : "";
  if (code != nullptr && !code->is_number()) {
    c->error = "TM_TYPE_MISMATCH";
    c->message = "the reply's code is not a number";
  } else if (c->code != 200 && c->code != 0) {
    c->error = "TM_DEVICE_ERROR";
    c->message = fmt::format("the device answered code {}", c->code);
  }
  CallState state = c->error.empty() ? CallState::kSucceeded : CallState::kFailed;
  const shadow::ThingModel* model = BoundModel(thing);
  if (state == CallState::kSucceeded && model != nullptr) {
    shadow::Value empty = shadow::Value::Object();
    auto problems = model->ValidateService(service, data != nullptr ? *data : empty, true);
    if (!problems.empty()) {
      model_failures_->Inc(problems.size());
      c->details = shadow::ProblemsJson(problems);
      if (model->mode() == shadow::ValidationMode::kStrict) {
        c->error = "MODEL_VALIDATION";
        c->message = fmt::format("the reply's data does not match {} of {}", service, model->ref());
        state = CallState::kFailed;
      }
    }
  }
  m.delivery->Hold();  // until the call's end is durable
  FinishCall(w, *c, state, m.delivery);
  Header(m.headers, "gnomon-call-state", std::string(CallStateName(c->state)));
  return true;
}

void Engine::Impl::ServiceTimer(const std::stop_token& st) {
  pthread_setname_np(pthread_self(), "gnomon-services");
  while (!st.stop_requested()) {
    std::this_thread::sleep_for(kTickInterval);
    for (auto& w : workers_) {
      if (w->live_calls.load(std::memory_order_relaxed) == 0 || w->queue.size() > 0) {
        continue;  // nothing to watch, or busy (the tick comes when it is not)
      }
      (void)w->queue.PushForce(CallTick{});
    }
  }
}

HttpResponse Engine::Impl::ApiCall(WorkItem item, int64_t wait_ms) {
  auto done = std::make_shared<std::promise<std::pair<int, std::string>>>();
  auto answer = done->get_future();
  Reply* reply = ReplyOf(item);
  Message* head = HeadOf(item);
  if (reply == nullptr || head == nullptr) {
    std::abort();  // not a REST request: a bug
  }
  *reply = [done](int status, std::string b) { done->set_value({status, std::move(b)}); };
  head->source = &api_source_name_;
  head->ts_ms = clock_.NowMs();
  HttpResponse out;
  if (!Admit(std::move(item), nullptr)) {
    out.status = 503;
    out.body = Error(503, "UNAVAILABLE", "gnomon is stopping").Json(clock_.NowMs() / 1000);
    return out;
  }
  if (answer.wait_for(std::chrono::milliseconds(wait_ms)) != std::future_status::ready) {
    out.status = 503;
    out.body = Error(503, "TIMEOUT", "The request was not answered in time; retry")
                   .Json(clock_.NowMs() / 1000);
    return out;
  }
  auto [status, text] = answer.get();
  out.status = status;
  out.body = std::move(text);
  return out;
}

std::vector<HttpRoute> Engine::Impl::ServiceRoutes() {
  std::vector<HttpRoute> routes;
  if (!shadow_store_) {
    return routes;
  }
  auto bad_thing = [this](const std::string& thing, HttpResponse& out) {
    if (shadow::ValidShadowId(thing, 128)) {
      return false;
    }
    out.status = 400;
    out.body = Error(400, "INVALID_THING_NAME", "Thing names are 1-128 bytes of A-Z a-z 0-9 : _ -")
                   .Json(clock_.NowMs() / 1000);
    return true;
  };
  routes.push_back(
      {"GET", "/v1/things/([^/]+)/services/calls/([^/]+)", [this, bad_thing](const HttpRequest& req) {
         HttpResponse out;
         if (bad_thing(req.params.at(0), out)) {
           return out;
         }
         CallQuery query;
         query.msg.device = req.params.at(0);
         query.msg.key = req.params.at(1);
         return ApiCall(std::move(query), kApiWaitMs);
       }});
  routes.push_back(
      {"POST", "/v1/things/([^/]+)/services/([^/]+)", [this, bad_thing](const HttpRequest& req) {
         HttpResponse out;
         const std::string& thing = req.params.at(0);
         if (bad_thing(thing, out)) {
           return out;
         }
         CallInvoke call;
         Message& m = call.msg;
         m.device = thing;
         m.topic = req.params.at(1);
         m.payload = req.body;
         if (const std::string* ttl = req.Query("ttlMs")) {
           char* end = nullptr;
           long long v = std::strtoll(ttl->c_str(), &end, 10);
           if (end == ttl->c_str() || *end != '\0' || v < 1) {
             out.status = 400;
             out.body = Error(400, "INVALID_TTL", "ttlMs must be an integer >= 1")
                            .Json(clock_.NowMs() / 1000);
             return out;
           }
           Header(m.headers, "ttl-ms", std::to_string(v));
         }
         // A sync service's caller waits for the device, up to the service's timeoutMs.
         int64_t wait = kApiWaitMs;
         if (const shadow::ThingModel* model = BoundModel(thing)) {
           if (const shadow::ServiceInfo* info = model->Service(m.topic); info && info->sync) {
             wait += info->timeout_ms;
           }
         }
         return ApiCall(std::move(call), wait);
       }});
  return routes;
}

}  // namespace gnomon::engine

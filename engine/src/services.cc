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

#include "api_error.h"
#include "engine_impl.h"
#include "gnomon/core/id.h"
#include "gnomon/core/json.h"
#include "gnomon/core/topic.h"
#include "gnomon/shadow/model.h"
#include "gnomon/shadow/value.h"

namespace gnomon::engine {
namespace {

constexpr auto kTickInterval = std::chrono::milliseconds(100);
constexpr CallState kFinalStates[] = {CallState::kSucceeded, CallState::kFailed,
                                      CallState::kTimeout, CallState::kExpired};

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

}  // namespace

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

// What a worker's CallBook does through the engine.
class Engine::Impl::CallEffects final : public CallBook::Effects {
 public:
  CallEffects(Impl& impl, Worker& w) : impl_(impl), w_(w) {}
  void Send(const ServiceCall& c) override { impl_.SendCall(c); }
  void Store(const ServiceCall& c, std::string stored, shadow::ShadowStore::Done done,
             Delivery* hold) override {
    if (!impl_.owned_ || !impl_.changelog_sink_) {
      impl_.shadow_store_->WriteCall(c.thing, c.id, std::move(stored), std::move(done));
      return;
    }
    // In a cluster the call's state goes to the change log too, once durable here: it moves
    // with its thing's partition (docs/cluster.md#service-calls).
    std::optional<std::string> record;
    if (!stored.empty()) {
      record = stored;
    }
    impl_.shadow_store_->WriteCall(
        c.thing, c.id, std::move(stored),
        [impl = &impl_, thing = c.thing, id = c.id, record = std::move(record),
         done = std::move(done), hold](const Status& st) mutable {
          if (st.ok()) {
            impl->ProduceCallChangelog(thing, id, std::move(record), hold);
          }
          if (done) {
            done(st);
          }
        });
  }
  bool Offline(const std::string& thing) override { return impl_.Presence(w_, thing) == false; }

 private:
  Impl& impl_;
  Worker& w_;
};

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
  for (auto& w : workers_) {
    w->call_effects = std::make_unique<CallEffects>(*this, *w);
    w->calls = std::make_unique<CallBook>(
        CallBook::Options{.max_queued = config_.services.max_queued,
                          .keep_ms = config_.services.keep_ms},
        clock_, *w->call_effects,
        CallBook::Counters{.finished = calls_finished_, .store_failures = shadow_store_failures_});
  }
  if (owned_) {
    return {};  // a cluster: each partition's calls are restored when it is given here
  }
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
    size_t owner = OwnerOf(c->thing);
    workers_[owner]->calls->Restore(std::move(c).value());
    ++restored;
  }
  if (restored > 0) {
    log::Info("service calls restored", {{"calls", std::to_string(restored)}});
  }
  return {};
}

void Engine::Impl::ProduceCallChangelog(const std::string& thing, const std::string& id,
                                        std::optional<std::string> record, Delivery* hold) {
  Delivery* d = hold != nullptr ? hold : new Delivery(this, nullptr);
  SendChangelog(CallChangelogKey(thing, id), thing, "$gnomon/services/" + thing, std::move(record),
                d);
  if (hold == nullptr) {
    d->Release();  // (the record holds it until Kafka has it)
  }
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

void Engine::Impl::SendCall(const ServiceCall& c) {
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
  shadow_sink_->sink->Send(std::move(r));
}

void Engine::Impl::InvokeService(Worker& w, CallInvoke& call_request) {
  Message& m = call_request.msg;
  Reply& reply = call_request.reply;
  int64_t now_ms = clock_.NowMs();
  auto made = MakeCall(w, call_request, now_ms);
  auto refuse = [&](const shadow::ShadowError& e) {
    service_refused_->Inc();
    std::string body = e.Json(now_ms / 1000);
    if (reply) {
      reply(e.code, std::move(body));
    } else {
      DeadLetter(m.delivery, "service_rejected",
                 fmt::format("ctx.invoke of {} on {} refused: {}", m.topic, m.device, body),
                 call_request.rule, m.source, call_request.source_topic, m.device, m.payload, 1,
                 m.ts_ms);
    }
    m.delivery->Release();
  };
  if (auto* e = std::get_if<shadow::ShadowError>(&made)) {
    return refuse(*e);
  }
  bool rest = reply != nullptr;
  auto added = w.calls->Add(std::get<ServiceCall>(std::move(made)));
  if (auto* e = std::get_if<shadow::ShadowError>(&added)) {
    return refuse(*e);
  }
  calls_made_->Inc();
  ServiceCall& call = *std::get<ServiceCall*>(added);
  Reply answer;  // told 202 now, unless a sync caller waits for the call's end
  if (call.sync) {
    call.waiter = std::move(reply);
  } else {
    answer = std::move(reply);
  }
  // Durable first (through the same effect as every later state); then answered, and sent by
  // the owner.
  std::string body = call.Json();
  w.call_effects->Store(
      call, body,
      [this, rest, answer = std::move(answer), delivery = m.delivery, body, thing = call.thing,
       id = call.id](const Status& st) mutable {
        CallStoredOnWriter(st, thing, id, std::move(body), rest, answer, delivery);
      },
      m.delivery);
}

// A call as asked for (the thing's model, the service, its params checked; room in the book;
// a sync call only to a device that is not known to be offline), or why it is refused.
std::variant<ServiceCall, shadow::ShadowError> Engine::Impl::MakeCall(
    Worker& w, const CallInvoke& call_request, int64_t now_ms) {
  const Message& m = call_request.msg;
  const std::string& thing = m.device;
  const std::string& service = m.topic;
  if (auto bad = CheckThingName(thing)) {
    return *bad;
  }
  if (!services_enabled() || shadow_sink_ == nullptr) {
    return ApiError(503, "SERVICES_UNAVAILABLE",
                    "Service calls need `shadows:` with a `connection` (the MQTT broker "
                    "devices listen on) and `models:`");
  }
  const shadow::ThingModel* model = BoundModel(thing);
  if (model == nullptr) {
    return ApiError(404, "TM_MODEL_NOT_FOUND", fmt::format("No thing model is bound to {}", thing));
  }
  const shadow::ServiceInfo* info = model->Service(service);
  if (info == nullptr) {
    return ApiError(404, "TM_UNKNOWN_IDENTIFIER",
                    fmt::format("{} is not a service of {}", service, model->ref()));
  }
  auto params = shadow::Value::Parse(m.payload.empty() ? std::string_view("{}") : m.payload);
  if (!params.ok()) {
    return ApiError(400, "INVALID_JSON",
                    fmt::format("The params are not valid JSON: {}", params.status().message()));
  }
  if (!params->is_object()) {
    return ApiError(400, "TM_TYPE_MISMATCH", "The params must be a JSON object");
  }
  // Inputs are checked strictly in weak mode too: a command is never sent with some of its
  // params silently left out.
  if (auto problems = model->ValidateService(service, *params, false); !problems.empty()) {
    model_failures_->Inc(problems.size());
    return ApiError(400, "MODEL_VALIDATION",
                    fmt::format("The params do not match {} of {}", service, model->ref()),
                    shadow::ProblemsJson(problems));
  }
  if (auto full = w.calls->CheckRoom(thing)) {
    return *full;
  }
  bool offline = Presence(w, thing) == false;
  if (info->sync && offline) {
    return ApiError(503, "TM_DEVICE_OFFLINE",
                    fmt::format("{} is offline; {} is a sync service", thing, service));
  }
  ServiceCall c;
  c.id = m.key.empty() ? NewId() : m.key;
  c.thing = thing;
  c.service = service;
  c.params = params->Json();
  c.model = model->ref();
  c.rule = call_request.rule;
  c.sync = info->sync && call_request.reply != nullptr;  // a rule's call never waits
  c.timeout_ms = info->timeout_ms;
  c.created_ms = now_ms;
  int64_t ttl = config_.services.ttl_ms;
  if (call_request.ttl_ms > 0) {
    ttl = std::min(ttl, call_request.ttl_ms);
  }
  c.expires_ms = now_ms + ttl;
  return c;
}

// On the store's writer thread, once a call's first state is durable (or refused: `st`):
// answered, and the owner told to send it.
void Engine::Impl::CallStoredOnWriter(const Status& st, const std::string& thing,
                                      const std::string& id, std::string body, bool rest,
                                      const Reply& answer, Delivery* delivery) {
  if (!st.ok()) {
    shadow_store_failures_->Inc();
    NoteCall(thing, id, CallEvent::What::kUnstored);
    if (answer) {
      answer(500, ApiError(500, "INTERNAL_ERROR", "The call could not be stored")
                      .Json(clock_.NowMs() / 1000));
    } else if (!rest) {
      delivery->Mark(Delivery::kAbandoned);  // a rule's call: the source may deliver again
    }
    delivery->Release();
    return;
  }
  NoteCall(thing, id, CallEvent::What::kSend);  // the owner sends it
  if (answer) {
    answer(202, std::move(body));
  }
  delivery->Release();
}

void Engine::Impl::QueryCall(Worker& w, CallQuery& query) {
  const Message& m = query.msg;
  ServiceCall* c = w.calls ? w.calls->Find(m.key) : nullptr;
  if (c == nullptr || c->thing != m.device) {
    query.reply(404, ApiError(404, "TM_CALL_NOT_FOUND",
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
  ServiceCall* c = w.calls->Find(id->as_string());
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
  w.calls->Finish(*c, state, m.delivery);
  Header(m.headers, "gnomon-call-state", std::string(CallStateName(c->state)));
  return true;
}

void Engine::Impl::ServiceTimer(const std::stop_token& st) {
  pthread_setname_np(pthread_self(), "gnomon-services");
  while (!st.stop_requested()) {
    std::this_thread::sleep_for(kTickInterval);
    for (auto& w : workers_) {
      if (w->calls->live() == 0 || w->queue.size() > 0) {
        continue;  // nothing to watch, or busy (the tick comes when it is not)
      }
      (void)w->queue.PushForce(CallTick{});
    }
  }
}

}  // namespace gnomon::engine

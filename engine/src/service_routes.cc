// SPDX-License-Identifier: Apache-2.0
// The REST routes of thing-model service calls (docs/thing-models.md#services): they build a
// CallInvoke or CallQuery for the owner of the thing and wait for its answer (ApiCall).
#include <cstdlib>
#include <future>
#include <optional>

#include "api_error.h"
#include "engine_impl.h"
#include "gnomon/shadow/model.h"

namespace gnomon::engine {

HttpResponse Engine::Impl::ApiCall(WorkItem item, int64_t wait_ms) {
  auto done = std::make_shared<std::promise<std::pair<int, std::string>>>();
  auto answer = done->get_future();
  Reply* reply = ReplyOf(item);
  Message* head = HeadOf(item);
  if (reply == nullptr || head == nullptr) {
    std::abort();  // not a REST request: a bug
  }
  std::unique_ptr<AckHandle> ack;
  if (owned_ &&
      (std::holds_alternative<ShadowRequest>(item) || std::holds_alternative<CallInvoke>(item))) {
    // In a cluster a shadow write or a new service call lives in the change log (whoever owns
    // the device next restores it from there): the answer waits until the request's delivery
    // finishes, its change-log record durable; a write whose record the log did not take (the
    // partition moved, the instance was fenced, Kafka refused the record) is answered 503,
    // never 200 or 202.
    struct Durable {
      Mutex mu;
      std::optional<std::pair<int, std::string>> answer GNOMON_GUARDED_BY(mu);
      bool finished GNOMON_GUARDED_BY(mu) = false;
      bool abandoned GNOMON_GUARDED_BY(mu) = false;
      std::string not_durable;  // the 503's body
      std::shared_ptr<std::promise<std::pair<int, std::string>>> done;
      void Settle() GNOMON_REQUIRES(mu) {  // once both are known
        if (!finished || !answer) {
          return;
        }
        if (abandoned && answer->first < 300) {
          answer = {503, std::move(not_durable)};
        }
        done->set_value(std::move(*answer));
        finished = false;  // (settled)
        answer.reset();
      }
    };
    auto state = std::make_shared<Durable>();
    state->done = done;
    state->not_durable =
        ApiError(503, "NOT_DURABLE",
                 "the write could not be made durable in the cluster's change "
                 "log (its partition moved, this instance lost it, or Kafka refused "
                 "the record); retry")
            .Json(clock_.NowMs() / 1000);
    *reply = [state](int status, std::string b) {
      MutexLock lock(state->mu);
      state->answer.emplace(status, std::move(b));
      state->Settle();
    };
    class AnswerWhenDurable final : public AckHandle {
     public:
      explicit AnswerWhenDurable(std::shared_ptr<Durable> s) : s_(std::move(s)) {}
      void Ack() override { Finish(false); }
      // Dead-lettered because the change log refused the write's record: not durable in the
      // cluster (the next owner would not find it), so not answered as done.
      void Acknowledge(uint8_t flags) override { Finish((flags & Delivery::kUnlogged) != 0); }
      void Abandon() override { Finish(true); }

     private:
      void Finish(bool abandoned) {
        MutexLock lock(s_->mu);
        s_->finished = true;
        s_->abandoned = abandoned;
        s_->Settle();
      }
      std::shared_ptr<Durable> s_;
    };
    ack = std::make_unique<AnswerWhenDurable>(state);
  } else {
    *reply = [done](int status, std::string b) { done->set_value({status, std::move(b)}); };
  }
  head->source = &api_source_name_;
  head->ts_ms = clock_.NowMs();
  HttpResponse out;
  if (!Admit(std::move(item), std::move(ack))) {
    out.status = 503;
    out.body = ApiError(503, "UNAVAILABLE", "gnomon is stopping").Json(clock_.NowMs() / 1000);
    return out;
  }
  if (answer.wait_for(std::chrono::milliseconds(wait_ms)) != std::future_status::ready) {
    out.status = 503;
    out.body = ApiError(503, "TIMEOUT", "The request was not answered in time; retry")
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
  routes.push_back({.method = "GET",
                    .pattern = "/v1/things/([^/]+)/services/calls/([^/]+)",
                    .handler = [this](const HttpRequest& req) {
                      if (auto bad = CheckThingName(req.params.at(0))) {
                        return ErrorResponse(*bad, clock_.NowMs() / 1000);
                      }
                      if (!OwnsDevice(req.params.at(0))) {
                        return ForwardToOwner(req, req.params.at(0));
                      }
                      CallQuery query;
                      query.msg.device = req.params.at(0);
                      query.msg.key = req.params.at(1);
                      return ApiCall(std::move(query), kApiWaitMs);
                    }});
  routes.push_back(
      {.method = "POST",
       .pattern = "/v1/things/([^/]+)/services/([^/]+)",
       .handler = [this](const HttpRequest& req) {
         const std::string& thing = req.params.at(0);
         if (auto bad = CheckThingName(thing)) {
           return ErrorResponse(*bad, clock_.NowMs() / 1000);
         }
         if (!OwnsDevice(thing)) {
           return ForwardToOwner(req, thing);
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
             return ErrorResponse(ApiError(400, "INVALID_TTL", "ttlMs must be an integer >= 1"),
                                  clock_.NowMs() / 1000);
           }
           call.ttl_ms = v;
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

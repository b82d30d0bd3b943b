// SPDX-License-Identifier: Apache-2.0
// HTTP ingest: POST /v1/ingest/{topic...} on the API listener. A request is answered 202 only
// once every message in it is finished — every effect durable at its sink, or the message
// durably dead-lettered — so a crash after 202 loses nothing. Bodies are checked whole before
// any message is taken: a bad line refuses the request (400) and nothing of it enters.
#include <fmt/format.h>
#include <simdjson.h>

#include <condition_variable>
#include <mutex>
#include <shared_mutex>

#include "gnomon/connectors/http.h"
#include "gnomon/core/api_router.h"
#include "gnomon/core/device_rule.h"
#include "gnomon/core/factory.h"
#include "gnomon/core/json.h"
#include "gnomon/core/log.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/source.h"
#include "gnomon/core/topic.h"
#include "ingest_body.h"

namespace gnomon::connectors {
namespace {

constexpr std::string_view kPrefix = "/v1/ingest/";

struct IngestConfig {
  DeviceRule device;
  int64_t max_body_bytes = 16 << 20;
  int64_t max_message_bytes = 1 << 20;
  int64_t max_messages = 100000;
  int64_t max_in_flight = 20000;
  int64_t ack_timeout_ms = 30000;
  // Topics starting with '$' are refused unless set (gnomon's own prefixes always are).
  bool allow_dollar_topics = false;
  std::vector<std::string> reserved;  // from PluginContext::reserved_topic_prefixes
};

// One request's messages, waited for by its handler.
struct RequestWait {
  Mutex mu;
  std::condition_variable cv;
  int64_t pending GNOMON_GUARDED_BY(mu) = 0;
  int64_t acked GNOMON_GUARDED_BY(mu) = 0;
  int64_t abandoned GNOMON_GUARDED_BY(mu) = 0;
};

struct Shared {
  std::atomic<int64_t> in_flight{0};
};

class IngestAck final : public AckHandle {
 public:
  IngestAck(std::shared_ptr<RequestWait> wait, std::shared_ptr<Shared> shared)
      : wait_(std::move(wait)), shared_(std::move(shared)) {}
  void Ack() override { Finish(true); }
  void Abandon() override { Finish(false); }

 private:
  void Finish(bool ok) {
    shared_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    {
      MutexLock lock(wait_->mu);
      (ok ? wait_->acked : wait_->abandoned)++;
      --wait_->pending;
    }
    wait_->cv.notify_all();
  }
  std::shared_ptr<RequestWait> wait_;
  std::shared_ptr<Shared> shared_;
};

ApiResponse Error(int status, std::string_view code, std::string_view message) {
  ApiResponse r;
  r.status = status;
  json::ObjectWriter(r.body).Field("code", status).Field("error", code).Field("message", message).Close();
  return r;
}

class IngestSource final : public Source {
 public:
  IngestSource(IngestConfig config, PluginContext& ctx)
      : config_(std::move(config)), name_(ctx.name), shared_(std::make_shared<Shared>()) {
    Labels l = {{"source", name_}};
    requests_ok_ = ctx.metrics.GetCounter("gnomon_ingest_requests_total", "HTTP ingest requests by outcome",
                                          {{"source", name_}, {"outcome", "accepted"}});
    requests_bad_ = ctx.metrics.GetCounter("gnomon_ingest_requests_total", "HTTP ingest requests by outcome",
                                           {{"source", name_}, {"outcome", "bad_request"}});
    requests_busy_ = ctx.metrics.GetCounter("gnomon_ingest_requests_total", "HTTP ingest requests by outcome",
                                            {{"source", name_}, {"outcome", "throttled"}});
    requests_failed_ = ctx.metrics.GetCounter("gnomon_ingest_requests_total", "HTTP ingest requests by outcome",
                                              {{"source", name_}, {"outcome", "unavailable"}});
  }

  Status Register(ApiRouter& api) {
    return api.AddPost(std::string(kPrefix), [this](const ApiRequest& r) { return Handle(r); },
                       static_cast<size_t>(config_.max_body_bytes));
  }

  Status Start(Ingest& ingest) override {
    WriterLock lock(mu_);
    ingest_ = &ingest;
    return {};
  }

  void Stop() override {
    WriterLock lock(mu_);  // waits for requests that are submitting
    ingest_ = nullptr;
  }

 private:
  ApiResponse Handle(const ApiRequest& req) {
    std::string topic(req.path);
    if (topic.empty() || topic.size() > 1024 || topic.find_first_of("+#") != std::string::npos ||
        !json::IsValidUtf8(topic) || topic.find('\0') != std::string::npos) {
      requests_bad_->Inc();
      return Error(400, "BAD_TOPIC",
                   "the topic after /v1/ingest/ must be 1-1024 bytes of UTF-8 without + or #");
    }
    for (const std::string& prefix : config_.reserved) {
      if (TopicUnder(topic, prefix)) {
        requests_bad_->Inc();
        return Error(400, "RESERVED_TOPIC",
                     fmt::format("{} is under {}, which is gnomon's own (shadow and presence "
                                 "topics): ingest may not publish there",
                                 topic, prefix));
      }
    }
    if (topic[0] == '$' && !config_.allow_dollar_topics) {
      requests_bad_->Inc();
      return Error(400, "RESERVED_TOPIC",
                   fmt::format("{} starts with '$' (reserved for brokers and gnomon); set "
                               "allow_dollar_topics on source {} to take such topics",
                               topic, name_));
    }
    if (static_cast<int64_t>(req.body.size()) > config_.max_body_bytes) {
      requests_bad_->Inc();
      return Error(413, "TOO_LARGE", fmt::format("body is {} bytes; max_body_bytes is {}",
                                                 req.body.size(), config_.max_body_bytes));
    }
    std::vector<std::string> payloads;
    if (ApiResponse bad; !Split(req, payloads, bad)) {
      requests_bad_->Inc();
      return bad;
    }
    if (payloads.empty()) {
      requests_bad_->Inc();
      return Error(400, "EMPTY", "the body holds no message");
    }
    std::vector<Message> messages(payloads.size());
    for (size_t i = 0; i < payloads.size(); ++i) {
      Message& m = messages[i];
      m.topic = topic;
      m.payload = std::move(payloads[i]);
      m.source = &name_;
      auto device = config_.device.Extract(m);
      if (!device.ok()) {
        requests_bad_->Inc();
        return Error(400, "NO_DEVICE", fmt::format("message {}: {}", i + 1, device.status().message()));
      }
      m.device = std::move(*device);
    }
    auto n = static_cast<int64_t>(messages.size());
    if (shared_->in_flight.fetch_add(n) + n > config_.max_in_flight) {
      shared_->in_flight.fetch_sub(n);
      requests_busy_->Inc();
      ApiResponse r = Error(429, "BUSY", fmt::format("{} messages are in flight (max_in_flight {}); retry",
                                                     shared_->in_flight.load(), config_.max_in_flight));
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
    auto wait = std::make_shared<RequestWait>();
    {
      MutexLock lock(wait->mu);  // not shared yet; the lock is for the analysis
      wait->pending = n;
    }
    {
      ReaderLock lock(mu_);
      int64_t now = 0;
      for (Message& m : messages) {
        if (ingest_ == nullptr) {
          break;
        }
        if (now == 0) {
          now = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
        }
        m.ts_ms = now;
        // On false the engine abandoned (and counted) the handle itself.
        bool taken = ingest_->Submit(std::move(m), std::make_unique<IngestAck>(wait, shared_));
        --n;
        if (!taken) {
          break;
        }
      }
    }
    if (n > 0) {  // never submitted: the engine is stopping
      shared_->in_flight.fetch_sub(n);
      MutexLock lock(wait->mu);
      wait->pending -= n;
      wait->abandoned += n;
    }
    MutexLock lock(wait->mu);
    bool done =
        wait->cv.wait_for(lock.native(), std::chrono::milliseconds(config_.ack_timeout_ms), [&] {
          wait->mu.AssertHeld();
          return wait->pending == 0;
        });
    if (!done) {
      requests_failed_->Inc();
      return Error(503, "TIMEOUT",
                   fmt::format("{} of {} messages finished within {} ms; the rest may still be "
                               "delivered: retrying may duplicate them",
                               wait->acked, messages.size(), config_.ack_timeout_ms));
    }
    if (wait->abandoned > 0) {
      requests_failed_->Inc();
      ApiResponse r = Error(503, "UNAVAILABLE",
                            fmt::format("gnomon is stopping: {} of {} messages were not finished; "
                                        "retry them",
                                        wait->abandoned, messages.size()));
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
    requests_ok_->Inc();
    ApiResponse r;
    r.status = 202;
    json::ObjectWriter(r.body).Field("accepted", static_cast<int64_t>(messages.size())).Close();
    return r;
  }

  // The messages of a body (see ingest_body.h).
  bool Split(const ApiRequest& req, std::vector<std::string>& out, ApiResponse& bad) {
    bool single = false;
    if (req.query != nullptr) {
      for (const auto& [k, v] : *req.query) {
        single |= k == "batch" && v == "false";
      }
    }
    auto refused = SplitIngestBody(req.content_type, req.body, single,
                                   {config_.max_message_bytes, config_.max_messages}, out);
    if (refused) {
      bad = Error(refused->status, refused->code, refused->message);
      return false;
    }
    return true;
  }

  IngestConfig config_;
  std::string name_;
  std::shared_ptr<Shared> shared_;
  SharedMutex mu_;
  Ingest* ingest_ GNOMON_GUARDED_BY(mu_) = nullptr;
  Counter *requests_ok_, *requests_bad_, *requests_busy_, *requests_failed_;
};

class IngestSourceFactory final : public TypedSourceFactory<IngestConfig> {
 public:
  std::string_view schema() const override { return "sources/http.json"; }
  void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const override {
    auto rule = DeviceRule::Parse(cfg.GetString("device", "topic[1]"));
    if (!rule.ok()) {
      errors.Add(cfg.Get("device"), path + ".device", rule.status().message());
    }
  }
  Result<IngestConfig> Parse(const ConfigValue& cfg, const PluginContext& ctx) const override {
    IngestConfig c;
    GNOMON_ASSIGN_OR_RETURN(c.device, DeviceRule::Parse(cfg.GetString("device", "topic[1]")));
    c.max_body_bytes = cfg.GetInt("max_body_bytes", c.max_body_bytes);
    c.max_message_bytes = cfg.GetInt("max_message_bytes", c.max_message_bytes);
    c.max_messages = cfg.GetInt("max_messages", c.max_messages);
    c.max_in_flight = cfg.GetInt("max_in_flight", c.max_in_flight);
    c.ack_timeout_ms = cfg.GetInt("ack_timeout_ms", c.ack_timeout_ms);
    c.allow_dollar_topics = cfg.GetBool("allow_dollar_topics", false);
    c.reserved = ctx.reserved_topic_prefixes;
    return c;
  }
  Result<std::unique_ptr<Source>> CreateTyped(IngestConfig c, PluginContext& ctx) override {
    if (ctx.api == nullptr) {
      return FailedPrecondition("source type http needs the API listener");
    }
    auto s = std::make_unique<IngestSource>(std::move(c), ctx);
    GNOMON_RETURN_IF_ERROR(s->Register(*ctx.api));
    return std::unique_ptr<Source>(std::move(s));
  }
};

}  // namespace

void RegisterHttpIngestSource(Registry& registry) {
  registry.AddSource("http", std::make_unique<IngestSourceFactory>());
}

}  // namespace gnomon::connectors

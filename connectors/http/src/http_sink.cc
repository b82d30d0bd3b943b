// SPDX-License-Identifier: Apache-2.0
// Webhook sink: records (or JSON-array batches of them) POSTed with libcurl's multi interface,
// one transfer per outbox lane at a time, connections kept alive and reused. Delivery, order,
// retries and dead letters are the outbox's; this file turns HTTP outcomes into BatchResults.
#include <curl/curl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <unordered_map>

#include "gnomon/connectors/http.h"
#include "gnomon/connectors/outbox.h"
#include "gnomon/connectors/record_fields.h"
#include "gnomon/core/factory.h"
#include "gnomon/core/json.h"
#include "gnomon/core/log.h"
#include "gnomon/core/path.h"
#include "gnomon/core/plugin_context.h"

namespace gnomon::connectors {

void RegisterHttpIngestSource(Registry& registry);  // ingest_source.cc

namespace {

struct HttpSinkConfig {
  RecordTemplate url;
  std::string method = "POST";
  std::vector<std::pair<std::string, RecordTemplate>> headers;
  int64_t timeout_ms = 10000;
  int64_t connect_timeout_ms = 5000;
  bool tls_verify = true;
  std::string ca_file;
  std::string signing_secret;
  std::string signing_header = "X-Gnomon-Signature";
  bool array = false;  // batch.max_records > 1: bodies are JSON arrays
  OutboxConfig outbox;
};

// The body of a batch: one record as it is, or an array of records.
void AppendRecord(std::string& out, const Record& r) {
  if (r.json) {
    out += r.payload;
  } else if (json::IsValidUtf8(r.payload)) {
    json::AppendQuoted(out, r.payload);
  } else {
    out += '"';
    out += json::Base64(r.payload);
    out += '"';
  }
}

std::string HmacHex(const std::string& secret, std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &len);
  std::string hex;
  hex.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    hex += fmt::format("{:02x}", mac[i]);
  }
  return hex;
}

// Retry-After: delay-seconds or an HTTP-date. -1 when absent or unreadable.
int64_t ParseRetryAfter(std::string_view v, int64_t now_s) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) {
    v.remove_prefix(1);
  }
  while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' ')) {
    v.remove_suffix(1);
  }
  if (v.empty()) {
    return -1;
  }
  if (std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return v.size() > 9 ? -1 : std::stoll(std::string(v)) * 1000;
  }
  time_t t = curl_getdate(std::string(v).c_str(), nullptr);
  if (t < 0) {
    return -1;
  }
  return std::max<int64_t>(0, (static_cast<int64_t>(t) - now_s) * 1000);
}

class HttpDestination final : public Destination {
 public:
  HttpDestination(HttpSinkConfig config, std::string name)
      : config_(std::move(config)), name_(std::move(name)) {
    multi_ = curl_multi_init();
    curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(config_.outbox.lanes));
    constant_target_ = config_.url.is_constant();
    reads_payload_ = config_.url.reads_payload();
    for (const auto& [k, t] : config_.headers) {
      constant_target_ &= t.is_constant();
      reads_payload_ |= t.reads_payload();
    }
  }
  ~HttpDestination() override {
    for (auto& [easy, t] : transfers_) {
      curl_multi_remove_handle(multi_, easy);
      curl_easy_cleanup(easy);
      curl_slist_free_all(t->headers);
    }
    for (CURL* easy : idle_) {
      curl_easy_cleanup(easy);
    }
    curl_multi_cleanup(multi_);
  }

  void Deliver(std::span<OutboxEntry* const> batch, Done done) override {
    auto t = std::make_unique<Transfer>();
    t->done = std::move(done);
    const Record& first = batch.front()->record;
    if (Status s = fields_.Reset(first); !s.ok() && reads_payload_) {
      t->done(BatchResult::Failed(s.WithContext("rendering the URL")));
      return;
    }
    std::string url = config_.url.Render(fields_, true);
    // Headers: the configured ones, rendered for the first record (Batchable() keeps a batch to
    // records that render alike), then gnomon's own.
    for (const auto& [k, tmpl] : config_.headers) {
      std::string v = tmpl.Render(fields_, false);
      if (v.find_first_of("\r\n") != std::string::npos) {
        t->done(BatchResult::Failed(
            InvalidArgument(fmt::format("header {} would contain a line break", k))));
        return;
      }
      t->headers = curl_slist_append(t->headers, fmt::format("{}: {}", k, v).c_str());
    }
    if (config_.array) {
      t->body += '[';
      for (size_t i = 0; i < batch.size(); ++i) {
        if (i > 0) {
          t->body += ',';
        }
        AppendRecord(t->body, batch[i]->record);
      }
      t->body += ']';
      t->headers = curl_slist_append(t->headers, "Content-Type: application/json");
    } else {
      AppendRecord(t->body, first);
      t->headers = curl_slist_append(t->headers, "Content-Type: application/json");
      if (!first.device.empty() && json::IsValidUtf8(first.device) &&
          first.device.find_first_of("\r\n") == std::string::npos) {
        t->headers = curl_slist_append(t->headers, ("Gnomon-Device: " + first.device).c_str());
      }
      if (!first.rule.empty()) {
        t->headers = curl_slist_append(t->headers, ("Gnomon-Rule: " + first.rule).c_str());
      }
    }
    if (batch.front()->seq != 0) {
      // Stable across retries and restarts: receivers can drop duplicates by it.
      t->headers = curl_slist_append(
          t->headers, fmt::format("Gnomon-Delivery: {}-{}-{}", name_, batch.front()->seq,
                                  batch.back()->seq)
                          .c_str());
    }
    if (!config_.signing_secret.empty()) {
      auto ts = std::to_string(std::time(nullptr));
      std::string signed_data = ts + "." + t->body;
      t->headers = curl_slist_append(t->headers, ("Gnomon-Timestamp: " + ts).c_str());
      t->headers = curl_slist_append(
          t->headers, fmt::format("{}: sha256={}", config_.signing_header,
                                  HmacHex(config_.signing_secret, signed_data))
                          .c_str());
    }
    t->headers = curl_slist_append(t->headers, "Expect:");  // no 100-continue round trip

    CURL* easy = Easy();
    curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, t->body.data());
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(t->body.size()));
    if (config_.method != "POST") {
      curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, config_.method.c_str());
    }
    curl_easy_setopt(easy, CURLOPT_PRIVATE, t.get());
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, t.get());
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, t.get());
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, t->error);
    if (CURLMcode mc = curl_multi_add_handle(multi_, easy); mc != CURLM_OK) {
      curl_slist_free_all(t->headers);
      idle_.push_back(easy);
      t->done(BatchResult::Retry(Unavailable(curl_multi_strerror(mc))));
      return;
    }
    transfers_.emplace(easy, std::move(t));
  }

  void Poll(std::chrono::milliseconds timeout) override {
    int running = 0;
    curl_multi_perform(multi_, &running);
    if (running > 0 || transfers_.empty()) {
      curl_multi_poll(multi_, nullptr, 0, static_cast<int>(timeout.count()), nullptr);
      curl_multi_perform(multi_, &running);
    }
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
      if (msg->msg != CURLMSG_DONE) {
        continue;
      }
      CURL* easy = msg->easy_handle;
      CURLcode result = msg->data.result;
      curl_multi_remove_handle(multi_, easy);
      auto it = transfers_.find(easy);
      std::unique_ptr<Transfer> t = std::move(it->second);
      transfers_.erase(it);
      long status = 0;
      curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
      curl_slist_free_all(t->headers);
      t->headers = nullptr;
      idle_.push_back(easy);
      t->done(Classify(*t, result, status));
    }
  }

  void Wakeup() override { curl_multi_wakeup(multi_); }

  bool Batchable(const Record& a, const Record& b) const override {
    if (constant_target_) {
      return true;
    }
    RecordFields& fa = batch_a_;
    RecordFields& fb = batch_b_;
    if ((!fa.Reset(a).ok() || !fb.Reset(b).ok()) && reads_payload_) {
      return false;
    }
    if (config_.url.Render(fa, true) != config_.url.Render(fb, true)) {
      return false;
    }
    for (const auto& [k, t] : config_.headers) {
      if (t.Render(fa, false) != t.Render(fb, false)) {
        return false;
      }
    }
    return true;
  }

 private:
  struct Transfer {
    Done done;
    std::string body;
    curl_slist* headers = nullptr;
    std::string response;  // the first bytes, for error messages
    int64_t retry_after_ms = -1;
    char error[CURL_ERROR_SIZE] = {};
  };

  CURL* Easy() {
    if (!idle_.empty()) {
      CURL* e = idle_.back();
      idle_.pop_back();
      return e;
    }
    CURL* e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(config_.timeout_ms));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config_.connect_timeout_ms));
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, config_.tls_verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, config_.tls_verify ? 2L : 0L);
    if (!config_.ca_file.empty()) {
      curl_easy_setopt(e, CURLOPT_CAINFO, config_.ca_file.c_str());
    }
    curl_easy_setopt(e, CURLOPT_USERAGENT, "gnomon/" GNOMON_VERSION);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, +[](char* p, size_t s, size_t n, void* ud) {
      auto* t = static_cast<Transfer*>(ud);
      size_t room = t->response.size() < 512 ? 512 - t->response.size() : 0;
      t->response.append(p, std::min(room, s * n));
      return s * n;
    });
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, +[](char* p, size_t s, size_t n, void* ud) {
      auto* t = static_cast<Transfer*>(ud);
      std::string_view line(p, s * n);
      constexpr std::string_view kRetryAfter = "retry-after:";
      if (line.size() > kRetryAfter.size() &&
          strncasecmp(line.data(), kRetryAfter.data(), kRetryAfter.size()) == 0) {
        t->retry_after_ms = ParseRetryAfter(line.substr(kRetryAfter.size()), std::time(nullptr));
      }
      return s * n;
    });
    return e;
  }

  BatchResult Classify(const Transfer& t, CURLcode result, long status) {
    if (result != CURLE_OK) {
      // Connection refused or reset, timeouts, TLS failures: the receiver may come back (or
      // its certificate be fixed); retry until max_attempts.
      std::string why = t.error[0] != '\0' ? t.error : curl_easy_strerror(result);
      return BatchResult::Retry(Unavailable(fmt::format("{} {}: {}", config_.method,
                                                        config_.url.text(), why)));
    }
    if (status >= 200 && status < 300) {
      return BatchResult::Delivered();
    }
    std::string body = t.response.substr(0, 200);
    if (!json::IsValidUtf8(body)) {
      body = "(binary)";
    }
    Status why(status == 429 ? StatusCode::kResourceExhausted : StatusCode::kUnavailable,
               fmt::format("HTTP {} from {}: {}", status, config_.url.text(), body));
    if (status == 408 || status == 429 || status >= 500) {
      return BatchResult::Retry(why, t.retry_after_ms);
    }
    return BatchResult::Failed(
        Status(StatusCode::kInvalidArgument, std::string(why.message())));
  }

  HttpSinkConfig config_;
  std::string name_;
  CURLM* multi_;
  bool constant_target_ = true;
  bool reads_payload_ = false;
  RecordFields fields_;
  mutable RecordFields batch_a_, batch_b_;
  std::unordered_map<CURL*, std::unique_ptr<Transfer>> transfers_;
  std::vector<CURL*> idle_;
};

class HttpSinkFactory final : public TypedSinkFactory<HttpSinkConfig> {
 public:
  std::string_view schema() const override { return "sinks/http.json"; }

  void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const override {
    auto url = RecordTemplate::Parse(cfg.GetString("url"));
    if (!url.ok()) {
      errors.Add(cfg.Get("url"), path + ".url", url.status().message());
    } else {
      std::string u = cfg.GetString("url");
      if (!u.starts_with("http://") && !u.starts_with("https://")) {
        errors.Add(cfg.Get("url"), path + ".url", "must start with http:// or https://");
      }
    }
    if (const ConfigValue* h = cfg.Get("headers"); h != nullptr && h->is_map()) {
      for (const auto& [k, v] : h->fields()) {
        if (auto t = RecordTemplate::Parse(v.scalar()); !t.ok()) {
          errors.Add(&v, path + ".headers." + k, t.status().message());
        }
      }
    }
  }

  Result<HttpSinkConfig> Parse(const ConfigValue& cfg, const PluginContext& ctx) const override {
    HttpSinkConfig c;
    GNOMON_ASSIGN_OR_RETURN(c.url, RecordTemplate::Parse(cfg.GetString("url")));
    c.method = cfg.GetString("method", "POST");
    if (const ConfigValue* h = cfg.Get("headers"); h != nullptr && h->is_map()) {
      for (const auto& [k, v] : h->fields()) {
        GNOMON_ASSIGN_OR_RETURN(auto t, RecordTemplate::Parse(v.scalar()));
        c.headers.emplace_back(k, std::move(t));
      }
    }
    c.timeout_ms = cfg.GetInt("timeout_ms", c.timeout_ms);
    c.connect_timeout_ms = cfg.GetInt("connect_timeout_ms", c.connect_timeout_ms);
    if (const ConfigValue* tls = cfg.Get("tls"); tls != nullptr && tls->is_map()) {
      c.tls_verify = tls->GetBool("verify", true);
      if (tls->Get("ca_file") != nullptr) {
        c.ca_file = ResolvePath(ctx.base_dir, tls->GetString("ca_file"));
      }
    }
    if (const ConfigValue* s = cfg.Get("signing"); s != nullptr && s->is_map()) {
      c.signing_secret = s->GetString("secret");
      c.signing_header = s->GetString("header", c.signing_header);
    }
    c.outbox = ParseOutboxConfig(cfg, OutboxConfig{});
    c.array = c.outbox.max_batch > 1;
    return c;
  }

  Result<std::unique_ptr<Sink>> CreateTyped(HttpSinkConfig c, PluginContext& ctx) override {
    if (!c.tls_verify) {
      log::Warn("TLS verification is off for this webhook sink", {{"sink", ctx.name}});
    }
    OutboxConfig oc = c.outbox;
    return NewOutboxSink(oc, std::make_unique<HttpDestination>(std::move(c), ctx.name), ctx);
  }
};

}  // namespace

void RegisterHttpConnector(Registry& registry) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  registry.AddSink("http", std::make_unique<HttpSinkFactory>());
  RegisterHttpIngestSource(registry);
}

}  // namespace gnomon::connectors

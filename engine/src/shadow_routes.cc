// SPDX-License-Identifier: Apache-2.0
// The REST routes of device shadows (docs/shadows.md#rest-api): reads the committed cache can
// answer on the listener's thread, the rest as typed ShadowRequests for the owner of the thing
// (ApiCall), and the watch streams (Server-Sent Events) fed once writes are durable.
#include <algorithm>
#include <cstdlib>

#include "api_error.h"
#include "engine_impl.h"
#include "gnomon/core/json.h"
#include "gnomon/core/mutex.h"
#include "shadow_watchers.h"

namespace gnomon::engine {

namespace {
constexpr auto kKeepAlive = std::chrono::seconds(15);
}  // namespace

HttpResponse Engine::Impl::Watch(const std::string& thing, const std::string& name) {
  std::string key = ShadowKey(thing, name);
  std::shared_ptr<ShadowWatchers::Watcher> wt = stopped_ ? nullptr : watchers_.Add(key);
  if (wt == nullptr) {
    HttpResponse busy;
    busy.status = 503;
    busy.body =
        ApiError(503, "TOO_MANY_WATCHERS",
                 fmt::format("At most {} watch streams at a time", ShadowWatchers::kMaxWatchers))
            .Json(clock_.NowMs() / 1000);
    return busy;
  }
  // Registered first, then the current document: no change falls between the two (events with
  // a version at or below the document's can be ignored by the client).
  HttpResponse now = ShadowApiCall(ShadowTarget{thing, name, ShadowVerb::kGet}, "");
  HttpResponse out;
  out.content_type = "text/event-stream";
  std::string first = ShadowWatchers::Frame("document", now.status == 200 ? now.body : "null");
  out.stream = [this, wt, key, first = std::move(first)](const ShadowWatchers::Write& write) {
    watchers_.Stream(key, wt, first, write, kKeepAlive);
  };
  return out;
}

HttpResponse Engine::Impl::ShadowApiCall(ShadowTarget target, std::string body,
                                         int64_t since_version, std::string idempotency_key) {
  ShadowRequest req;
  req.channel = ShadowChannel::kApi;
  req.msg.topic = ShadowTopic(target.thing, target.name);  // for logs and dead letters
  req.msg.device = target.thing;
  req.msg.payload = std::move(body);
  req.since_version = since_version;
  req.idempotency_key = std::move(idempotency_key);
  req.target = std::move(target);
  return ApiCall(std::move(req), kApiWaitMs);
}

namespace {
// The shadow a request names: the thing from the path, ?name= (none: the classic shadow).
// Errors: a name that is not valid.
std::variant<ShadowTarget, shadow::ShadowError> RequestedShadow(const HttpRequest& req,
                                                                ShadowVerb verb) {
  const std::string& thing = req.params.at(0);
  const std::string* name = req.Query("name");
  if (auto bad = CheckThingName(thing)) {
    return *bad;
  }
  if (name != nullptr) {
    if (auto bad = CheckShadowName(*name)) {
      return *bad;
    }
  }
  return ShadowTarget{thing, name != nullptr ? *name : "", verb};
}
}  // namespace

std::vector<HttpRoute> Engine::Impl::ShadowRoutes() {
  std::vector<HttpRoute> routes;
  if (!shadow_store_) {
    return routes;
  }
  // An update or a delete, for the owner.
  auto call = [this](ShadowVerb verb) {
    return [this, verb](const HttpRequest& req) {
      auto t = RequestedShadow(req, verb);
      if (auto* bad = std::get_if<shadow::ShadowError>(&t)) {
        return ErrorResponse(*bad, clock_.NowMs() / 1000);
      }
      if (!OwnsDevice(req.params.at(0))) {
        return ForwardToOwner(req, req.params.at(0));
      }
      if (verb != ShadowVerb::kUpdate) {
        return ShadowApiCall(std::get<ShadowTarget>(std::move(t)), "");
      }
      if (!req.idempotency_key.empty() &&
          !shadow::ValidIdempotencyKey(req.idempotency_key,
                                       shadow::Limits().max_idempotency_key_bytes)) {
        return ErrorResponse(
            ApiError(400, "INVALID_IDEMPOTENCY_KEY",
                     fmt::format("Idempotency-Key must be 1-{} printable ASCII characters",
                                 shadow::Limits().max_idempotency_key_bytes)),
            clock_.NowMs() / 1000);
      }
      return ShadowApiCall(std::get<ShadowTarget>(std::move(t)), req.body, 0, req.idempotency_key);
    };
  };
  routes.push_back({"GET", "/v1/things/(.+)/shadow/changes",
                    [this](const HttpRequest& req) { return ShadowChangesRoute(req); }});
  routes.push_back({"GET", "/v1/things/(.+)/shadow/watch", [this](const HttpRequest& req) {
                      auto t = RequestedShadow(req, ShadowVerb::kGet);
                      if (auto* bad = std::get_if<shadow::ShadowError>(&t)) {
                        return ErrorResponse(*bad, clock_.NowMs() / 1000);
                      }
                      const ShadowTarget& shadow = std::get<ShadowTarget>(t);
                      if (!OwnsDevice(shadow.thing)) {
                        // (A stream is not forwarded: the owner is named for the client.)
                        std::optional<ClusterMember> owner =
                            members_ ? members_->OwnerOf(PartitionOf(shadow.thing), clock_.NowMs())
                                     : std::nullopt;
                        return NotOwnedResponse(shadow.thing, "",
                                                owner ? std::string_view(owner->api) : "");
                      }
                      return Watch(shadow.thing, shadow.name);
                    }});
  // A read the committed cache can answer (or a bad name) is answered on the listener's I/O
  // thread; the rest go to the owner worker from a handler thread.
  HttpRoute get{"GET", "/v1/things/(.+)/shadow", [this](const HttpRequest& req) {
                  HttpResponse out;
                  if (CachedShadowGet(req, out)) {
                    return out;
                  }
                  const std::string* read = req.Query("read");
                  if (read != nullptr && *read != "owner" && *read != "standby") {
                    return ErrorResponse(ApiError(400, "INVALID_READ",
                                                  "read must be owner (the default) or standby"),
                                         clock_.NowMs() / 1000);
                  }
                  if (!OwnsDevice(req.params.at(0))) {
                    if (read != nullptr && *read == "standby") {
                      auto t = RequestedShadow(req, ShadowVerb::kGet);
                      if (auto local = StandbyShadowGet(std::get<ShadowTarget>(t))) {
                        return std::move(*local);
                      }
                    }
                    return ForwardToOwner(req, req.params.at(0));
                  }
                  reads_owner_->Inc();
                  return ShadowApiCall(
                      std::get<ShadowTarget>(RequestedShadow(req, ShadowVerb::kGet)), "");
                }};
  get.fast = [this](const HttpRequest& req, HttpResponse& out) {
    return CachedShadowGet(req, out);
  };
  routes.push_back(std::move(get));
  routes.push_back({"POST", "/v1/things/(.+)/shadow", call(ShadowVerb::kUpdate)});
  routes.push_back({"DELETE", "/v1/things/(.+)/shadow", call(ShadowVerb::kDelete)});
  routes.push_back({"GET", "/v1/things/(.+)/shadows",
                    [this](const HttpRequest& req) { return ListShadowNames(req); }});
  routes.push_back(
      {"GET", "/v1/things", [this](const HttpRequest& req) { return ListThings(req); }});
  return routes;
}

bool Engine::Impl::CachedShadowGet(const HttpRequest& req, HttpResponse& out) {
  auto t = RequestedShadow(req, ShadowVerb::kGet);
  if (auto* bad = std::get_if<shadow::ShadowError>(&t)) {
    out = ErrorResponse(*bad, clock_.NowMs() / 1000);
    return true;
  }
  const ShadowTarget& shadow = std::get<ShadowTarget>(t);
  if (!OwnsDevice(shadow.thing)) {
    return false;  // forwarded from a handler thread
  }
  if (auto view = committed_.Get(ShadowKey(shadow.thing, shadow.name))) {
    reads_committed_->Inc();
    out.body = *view;
    return true;
  }
  return false;
}

std::optional<HttpResponse> Engine::Impl::StandbyShadowGet(const ShadowTarget& target) {
  const int32_t p = PartitionOf(target.thing);
  StandbyCopy copy;
  {
    MutexLock lock(cluster_mu_);
    auto it = standby_view_.find(p);
    if (it == standby_view_.end()) {
      return std::nullopt;
    }
    copy = it->second;
  }
  Result<std::optional<std::string>> stored = std::optional<std::string>();
  {
    MutexLock lock(api_reader_mu_);
    stored = api_reader_->Load(target.thing, target.name);
  }
  if (!stored.ok()) {
    return std::nullopt;  // (the owner answers)
  }
  const int64_t now = clock_.NowMs();
  shadow::ShadowDocument doc;
  if (stored->has_value()) {
    auto restored = shadow::ShadowDocument::FromStored(**stored);
    if (!restored.ok()) {
      return std::nullopt;
    }
    doc = std::move(*restored);
  }
  HttpResponse out;
  auto answer = doc.Get(target.name, now / 1000);
  if (auto* err = std::get_if<shadow::ShadowError>(&answer)) {
    out = ErrorResponse(*err, now / 1000);
  } else {
    out.body = std::move(std::get<std::string>(answer));
  }
  reads_standby_->Inc();
  out.headers.emplace_back("X-Gnomon-Read", "standby");
  out.headers.emplace_back("X-Gnomon-Lag-Ms",
                           std::to_string(std::max<int64_t>(0, now - copy.caught_up_ms)));
  out.headers.emplace_back("X-Gnomon-Standby-Position", std::to_string(copy.position));
  return out;
}

HttpResponse Engine::Impl::ShadowChangesRoute(const HttpRequest& req) {
  auto t = RequestedShadow(req, ShadowVerb::kChanges);
  if (auto* bad = std::get_if<shadow::ShadowError>(&t)) {
    return ErrorResponse(*bad, clock_.NowMs() / 1000);
  }
  if (!OwnsDevice(req.params.at(0))) {
    return ForwardToOwner(req, req.params.at(0));
  }
  const std::string* since = req.Query("sinceVersion");
  char* end = nullptr;
  long long v = since != nullptr ? std::strtoll(since->c_str(), &end, 10) : -1;
  if (since == nullptr || end == since->c_str() || *end != '\0' || v < 0) {
    return ErrorResponse(ApiError(400, "INVALID_VERSION", "sinceVersion must be an integer >= 0"),
                         clock_.NowMs() / 1000);
  }
  return ShadowApiCall(std::get<ShadowTarget>(std::move(t)), "", v);
}

// The names of a thing's shadows, from the store.
HttpResponse Engine::Impl::ListShadowNames(const HttpRequest& req) {
  HttpResponse out;
  const std::string& thing = req.params.at(0);
  if (auto bad = CheckThingName(thing)) {
    return ErrorResponse(*bad, clock_.NowMs() / 1000);
  }
  if (!OwnsDevice(thing)) {
    return ForwardToOwner(req, thing);
  }
  MutexLock lock(api_reader_mu_);
  auto names = api_reader_->Names(thing);
  if (!names.ok()) {
    out.status = 500;
    out.body = ApiError(500, "INTERNAL_ERROR", std::string(names.status().message()))
                   .Json(clock_.NowMs() / 1000);
    return out;
  }
  std::string list = "[";
  bool classic = false;
  for (const auto& n : *names) {
    if (n.empty()) {
      classic = true;
      continue;
    }
    if (list.size() > 1) {
      list += ',';
    }
    json::AppendQuoted(list, n);
  }
  list += ']';
  json::ObjectWriter w(out.body);
  w.Field("thing", thing).Field("classic", classic ? 1 : 0).FieldRaw("results", list);
  w.Close();
  return out;
}

// Things with shadows, by prefix, a page at a time.
HttpResponse Engine::Impl::ListThings(const HttpRequest& req) {
  HttpResponse out;
  const std::string* prefix = req.Query("prefix");
  const std::string* cursor = req.Query("cursor");
  const std::string* limit_s = req.Query("limit");
  size_t limit = 100;
  if (limit_s != nullptr) {
    char* end = nullptr;
    long v = std::strtol(limit_s->c_str(), &end, 10);
    if (end == limit_s->c_str() || *end != '\0' || v < 1 || v > 1000) {
      out.status = 400;
      out.body = ApiError(400, "INVALID_LIMIT", "limit must be 1-1000").Json(clock_.NowMs() / 1000);
      return out;
    }
    limit = static_cast<size_t>(v);
  }
  MutexLock lock(api_reader_mu_);
  auto things = api_reader_->Things(prefix != nullptr ? *prefix : "",
                                    cursor != nullptr ? *cursor : "", limit + 1);
  std::string next_cursor;  // where the next page starts when this one stopped scanning early
  if (owned_ && things.ok()) {
    // In a cluster: the things this instance owns (its store may still hold others' from
    // before a crash; they are reset when their partition comes back). A page scans at most
    // kMaxScanned things of the store (the lock is held meanwhile): one that found fewer than
    // `limit` then still has a nextCursor, where the scan stopped.
    constexpr size_t kMaxScanned = 20000;
    size_t scanned = 0;
    std::vector<std::string> mine;
    while (things.ok() && !things->empty()) {
      bool last_page = things->size() < limit + 1;
      std::string after = things->back();
      scanned += things->size();
      for (std::string& t : *things) {
        if (mine.size() < limit + 1 && OwnsDevice(t)) {
          mine.push_back(std::move(t));
        }
      }
      if (mine.size() > limit || last_page) {
        break;
      }
      if (scanned >= kMaxScanned) {
        next_cursor = after;
        break;
      }
      things = api_reader_->Things(prefix != nullptr ? *prefix : "", after, limit + 1);
    }
    if (things.ok()) {
      things = std::move(mine);
    }
  }
  if (!things.ok()) {
    out.status = 500;
    out.body = ApiError(500, "INTERNAL_ERROR", std::string(things.status().message()))
                   .Json(clock_.NowMs() / 1000);
    return out;
  }
  if (things->size() > limit) {
    things->resize(limit);
    next_cursor = things->back();
  }
  std::string list = "[";
  for (const auto& t : *things) {
    if (list.size() > 1) {
      list += ',';
    }
    json::AppendQuoted(list, t);
  }
  list += ']';
  json::ObjectWriter w(out.body);
  w.FieldRaw("things", list);
  if (!next_cursor.empty()) {
    w.Field("nextCursor", next_cursor);
  }
  w.Close();
  return out;
}

}  // namespace gnomon::engine

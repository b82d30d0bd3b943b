// SPDX-License-Identifier: Apache-2.0
#include "cluster_members.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>

#include "gnomon/core/json.h"

namespace gnomon::engine {

namespace {
std::string List(const std::vector<int32_t>& v) { return fmt::format("[{}]", fmt::join(v, ",")); }

bool ReadList(simdjson::dom::object o, std::string_view key, std::vector<int32_t>& out) {
  simdjson::dom::array a;
  if (o[key].get_array().get(a) != simdjson::SUCCESS) {
    return false;
  }
  for (simdjson::dom::element e : a) {
    int64_t p = 0;
    if (e.get_int64().get(p) != simdjson::SUCCESS || p < 0 || p > INT32_MAX) {
      return false;
    }
    out.push_back(static_cast<int32_t>(p));
  }
  return true;
}
}  // namespace

std::string ClusterMember::Json() const {
  std::string out;
  json::ObjectWriter(out)
      .Field("instance", instance)
      .Field("api", api)
      .FieldRaw("owned", List(owned))
      .FieldRaw("restoring", List(restoring))
      .Field("at", at_ms)
      .Close();
  return out;
}

Result<ClusterMember> ClusterMember::FromJson(std::string_view json) {
  thread_local simdjson::dom::parser parser;
  simdjson::dom::object o;
  if (parser.parse(json.data(), json.size()).get_object().get(o) != simdjson::SUCCESS) {
    return InvalidArgument("not a JSON object");
  }
  ClusterMember m;
  std::string_view instance, api;
  if (o["instance"].get_string().get(instance) != simdjson::SUCCESS ||
      o["api"].get_string().get(api) != simdjson::SUCCESS ||
      o["at"].get_int64().get(m.at_ms) != simdjson::SUCCESS || !ReadList(o, "owned", m.owned) ||
      !ReadList(o, "restoring", m.restoring)) {
    return InvalidArgument("a member needs instance, api, owned, restoring and at");
  }
  m.instance = instance;
  m.api = api;
  return m;
}

bool ClusterMembers::Apply(std::string_view key, const std::string* value) {
  MutexLock lock(mu_);
  auto it = std::ranges::lower_bound(members_, key, {}, &ClusterMember::instance);
  bool found = it != members_.end() && it->instance == key;
  if (value == nullptr) {
    if (found) {
      members_.erase(it);
    }
    return true;
  }
  auto m = ClusterMember::FromJson(*value);
  if (!m.ok() || m->instance != key) {
    return false;
  }
  if (found) {
    if (m->at_ms >= it->at_ms) {  // (a compacted log replays in order; a restart's clock may not)
      *it = std::move(*m);
    }
  } else {
    members_.insert(it, std::move(*m));
  }
  return true;
}

std::optional<ClusterMember> ClusterMembers::OwnerOf(int32_t partition, int64_t now_ms) const {
  MutexLock lock(mu_);
  const ClusterMember* best = nullptr;
  for (const ClusterMember& m : members_) {
    if (m.instance == self_ || now_ms - m.at_ms > stale_ms_ ||
        std::ranges::find(m.owned, partition) == m.owned.end()) {
      continue;
    }
    if (best == nullptr || m.at_ms > best->at_ms) {
      best = &m;
    }
  }
  if (best == nullptr) {
    return std::nullopt;
  }
  return *best;
}

std::vector<ClusterMember> ClusterMembers::Members() const {
  MutexLock lock(mu_);
  return members_;
}

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include "cluster_members.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <map>

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
      .FieldRaw("standby", List(standby))
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
  if (o["standby"].error() != simdjson::NO_SUCH_FIELD && !ReadList(o, "standby", m.standby)) {
    return InvalidArgument("a member's standby is a list of partitions");
  }
  m.instance = instance;
  m.api = api;
  return m;
}

bool ClusterMembers::Fresh(int64_t now_ms) const {
  MutexLock lock(mu_);
  auto it = std::ranges::find(members_, self_, &ClusterMember::instance);
  return it != members_.end() && now_ms - it->at_ms <= stale_ms_;
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
  const int64_t newest = std::ranges::max(members_, {}, &ClusterMember::at_ms).at_ms;
  std::erase_if(members_, [&](const ClusterMember& x) { return newest - x.at_ms > kForgetMs; });
  return true;
}

std::vector<int32_t> ClusterMembers::StandbyPartitions(int replicas, int64_t now_ms,
                                                       std::vector<int32_t>* claimed) const {
  MutexLock lock(mu_);
  std::vector<const ClusterMember*> ring;  // fresh, by id
  for (const ClusterMember& m : members_) {
    if (now_ms - m.at_ms <= stale_ms_) {
      ring.push_back(&m);
    }
  }
  auto self = std::ranges::find(ring, self_, &ClusterMember::instance);
  const size_t k = ring.size();
  const size_t me = static_cast<size_t>(self - ring.begin());
  // Each partition's owner: the freshest claim.
  std::map<int32_t, size_t> owner;
  for (size_t i = 0; i < k; ++i) {
    for (const auto* list : {&ring[i]->owned, &ring[i]->restoring}) {
      for (int32_t p : *list) {
        auto [it, fresh] = owner.emplace(p, i);
        if (!fresh && ring[i]->at_ms > ring[it->second]->at_ms) {
          it->second = i;
        }
      }
    }
  }
  if (claimed != nullptr) {
    claimed->clear();
    for (const auto& [p, o] : owner) {
      claimed->push_back(p);
    }
  }
  std::vector<int32_t> out;
  if (replicas <= 0 || self == ring.end()) {
    return out;
  }
  for (const auto& [p, o] : owner) {
    size_t distance = (me + k - o) % k;  // how far after the owner this instance is
    if (distance >= 1 && distance <= static_cast<size_t>(replicas)) {
      out.push_back(p);
    }
  }
  return out;
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

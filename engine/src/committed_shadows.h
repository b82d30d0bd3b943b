// SPDX-License-Identifier: Apache-2.0
// The shadows REST GETs read without asking their owner (engine/src/shadow_routes.cc).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

#include "gnomon/core/mutex.h"

namespace gnomon::engine {

// The last durable state of shadows as a get shows it, by "thing\0name": REST GETs read it
// without going through the owner. Entries are put only once a write is durable (by the store's
// thread, in commit order) and dropped when the shadow is deleted, so a read never shows a write
// that could still be lost, and a write's 200 comes after its entry. Thread-safe (sharded locks).
class CommittedShadows {
 public:
  // At most about `total` documents: beyond it a Put drops another one (a get of that shadow
  // then goes to its owner again).
  void set_capacity(size_t total) { per_shard_ = std::max<size_t>(1, total / kShards); }
  void Put(const std::string& key, std::string view) {
    auto v = std::make_shared<const std::string>(std::move(view));
    Shard& s = shard(key);
    MutexLock lock(s.mu);
    auto [it, added] = s.map.insert_or_assign(key, std::move(v));
    if (added && s.map.size() > per_shard_) {
      auto victim = s.map.begin();
      s.map.erase(victim != it ? victim : std::next(victim));
    }
  }
  void Erase(const std::string& key) {
    Shard& s = shard(key);
    MutexLock lock(s.mu);
    s.map.erase(key);
  }
  // Drops every entry whose key `drop` names.
  void EraseIf(const std::function<bool(const std::string& key)>& drop) {
    for (Shard& s : shards_) {
      MutexLock lock(s.mu);
      std::erase_if(s.map, [&](const auto& kv) { return drop(kv.first); });
    }
  }
  std::shared_ptr<const std::string> Get(const std::string& key) {
    Shard& s = shard(key);
    MutexLock lock(s.mu);
    auto it = s.map.find(key);
    return it != s.map.end() ? it->second : nullptr;
  }

 private:
  struct Shard {
    Mutex mu;
    std::unordered_map<std::string, std::shared_ptr<const std::string>> map GNOMON_GUARDED_BY(mu);
  };
  static constexpr size_t kShards = 16;
  Shard& shard(const std::string& key) {
    return shards_[std::hash<std::string>{}(key) % kShards];
  }
  Shard shards_[kShards];
  size_t per_shard_ = SIZE_MAX;
};

}  // namespace gnomon::engine

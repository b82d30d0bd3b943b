// SPDX-License-Identifier: Apache-2.0
#include "shadow_owner.h"

#include <fmt/format.h>

namespace gnomon::engine {

ShadowOwner::ShadowOwner(Options options, shadow::ShadowStore& store,
                         std::unique_ptr<shadow::ShadowStore::Reader> reader, Counters counters)
    : options_(options), store_(store), reader_(std::move(reader)), counters_(counters) {}

Result<shadow::ShadowDocument*> ShadowOwner::Get(const std::string& thing,
                                                 const std::string& name) {
  std::string key = ShadowKey(thing, name);
  auto it = docs_.find(key);
  if (it != docs_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return &it->second.doc;
  }
  GNOMON_ASSIGN_OR_RETURN(auto stored, reader_->Load(thing, name));
  shadow::ShadowDocument doc;
  if (stored) {
    auto restored = shadow::ShadowDocument::FromStored(*stored);
    if (!restored.ok()) {
      return restored.status().WithContext(
          fmt::format("shadow {}{}{} in the store", thing, name.empty() ? "" : "/", name));
    }
    doc = std::move(restored).value();
  }
  if (counters_.loads != nullptr) {
    counters_.loads->Inc();
  }
  it = docs_.emplace(std::move(key), Entry{std::move(doc)}).first;
  lru_.push_front(&it->first);
  it->second.lru = lru_.begin();
  return &it->second.doc;
}

uint64_t ShadowOwner::EpochOf(const std::string& key) const {
  if (epochs_.empty()) {
    return 0;  // no copy was ever dropped (the usual case)
  }
  auto e = epochs_.find(key);
  return e != epochs_.end() ? e->second : 0;
}

uint64_t ShadowOwner::epoch(std::string_view thing, std::string_view name) const {
  return epochs_.empty() ? 0 : EpochOf(ShadowKey(thing, name));
}

void ShadowOwner::Store(const std::string& thing, const std::string& name, std::string stored,
                        shadow::ShadowStore::Done done,
                        std::optional<shadow::ShadowChange> change) {
  std::string key = ShadowKey(thing, name);
  uint64_t epoch = EpochOf(key);
  uint64_t seq = store_.Write(thing, name, std::move(stored), std::move(done), epoch,
                              std::move(change));
  if (auto c = docs_.find(key); c != docs_.end()) {
    c->second.written = seq;
  }
}

bool ShadowOwner::Evict(const std::string& thing, const std::string& name, uint64_t epoch) {
  std::string key = ShadowKey(thing, name);
  uint64_t& current = epochs_[key];
  if (current != epoch) {
    return false;  // that copy is gone already (several of its writes were refused)
  }
  ++current;
  history_.erase(key);  // it has the refused write's version, which the reloaded copy reuses
  Forget(key);
  return true;
}

void ShadowOwner::Forget(const std::string& key) {
  // (Its history stays: it matches the stored document, which is read again when next used.)
  if (auto it = docs_.find(key); it != docs_.end()) {
    lru_.erase(it->second.lru);
    docs_.erase(it);
  }
}

size_t ShadowOwner::DropThings(const std::function<bool(std::string_view thing)>& drop) {
  auto thing_of = [](const std::string& key) {
    return std::string_view(key.data(), key.find('\0'));
  };
  size_t dropped = 0;
  for (auto it = docs_.begin(); it != docs_.end();) {
    if (drop(thing_of(it->first))) {
      lru_.erase(it->second.lru);
      it = docs_.erase(it);
      ++dropped;
    } else {
      ++it;
    }
  }
  // (Their changes stay counted in history_order_ until they leave it, as after EraseHistory.)
  std::erase_if(history_, [&](const auto& kv) { return drop(thing_of(kv.first)); });
  return dropped;
}

size_t ShadowOwner::Trim() {
  size_t cap = options_.cache_shadows;
  if (docs_.size() <= cap) {
    return 0;
  }
  // Only documents whose writes are all done: a reload must see them.
  uint64_t done = store_.committed();
  size_t excess = docs_.size() - cap;
  size_t dropped = 0;
  size_t looked = 0;
  for (auto it = lru_.end(); excess > 0 && it != lru_.begin() && looked < excess + 256;
       ++looked) {
    --it;
    if (docs_.find(**it)->second.written > done) {
      continue;
    }
    auto older = std::next(it);
    Forget(**it);
    if (counters_.drops != nullptr) {
      counters_.drops->Inc();
    }
    ++dropped;
    it = older;
    --excess;
  }
  return dropped;
}

void ShadowOwner::RecordChange(std::string_view thing, std::string_view name,
                               shadow::ShadowChange c) {
  const size_t per_shadow = options_.history;
  if (per_shadow == 0) {
    return;
  }
  // What the change holds (its operations, its key here and in history_order_, the
  // containers' own overhead), as the store's history log charges it.
  size_t bytes = shadow::ShadowChange::Bytes(thing, name, c.ops);
  std::string key = ShadowKey(thing, name);
  auto& changes = history_[key];
  c.ops.shrink_to_fit();  // built by appending: up to twice its size otherwise, uncharged
  changes.push_back({c.version, c.timestamp, std::move(c.ops)});
  if (changes.size() > per_shadow) {
    changes.pop_front();
  }
  history_order_.push_back({std::move(key), c.version, bytes});
  history_bytes_ += bytes;
  while (history_bytes_ > options_.history_bytes && !history_order_.empty()) {
    Recorded& oldest = history_order_.front();
    if (auto it = history_.find(oldest.key); it != history_.end()) {
      if (!it->second.empty() && it->second.front().version == oldest.version) {
        it->second.pop_front();
      }
      if (it->second.empty()) {
        history_.erase(it);
      }
    }
    history_bytes_ -= oldest.bytes;
    history_order_.pop_front();
  }
}

void ShadowOwner::EraseHistory(std::string_view thing, std::string_view name) {
  history_.erase(ShadowKey(thing, name));
}

void ShadowOwner::ClearHistory() {
  history_.clear();
  history_order_.clear();
  history_bytes_ = 0;
}

const std::deque<ShadowOwner::Change>* ShadowOwner::History(std::string_view thing,
                                                            std::string_view name) const {
  auto it = history_.find(ShadowKey(thing, name));
  return it != history_.end() ? &it->second : nullptr;
}

Result<size_t> ShadowOwner::RestoreHistory(
    shadow::ShadowStore::Reader& reader, const std::vector<ShadowOwner*>& owners,
    const std::function<size_t(std::string_view)>& owner_of) {
  size_t restored = 0;
  Status read = reader.Changes(
      [&](std::string_view thing, std::string_view name, shadow::ShadowChange c) {
        ShadowOwner& owner = *owners.at(owner_of(thing));
        if (c.ops.empty()) {
          owner.EraseHistory(thing, name);  // deleted: what came before no longer applies
          return;
        }
        owner.RecordChange(thing, name, std::move(c));
        ++restored;
      });
  if (!read.ok()) {
    for (ShadowOwner* owner : owners) {
      owner->ClearHistory();
    }
    return read;
  }
  return restored;
}

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include "state_owner.h"

#include <iterator>

namespace gnomon::engine {
namespace {
// What an entry costs beyond its key and JSON: the map node, the LRU node, the optional.
constexpr size_t kEntryOverhead = 160;
}  // namespace

StateOwner::StateOwner(size_t budget_bytes, shadow::ShadowStore& store, Counter* loads)
    : budget_(budget_bytes), store_(store), loads_(loads) {}

std::string StateOwner::Key(std::string_view rule, std::string_view device) {
  std::string k;
  k.reserve(rule.size() + device.size() + 1);
  k.append(rule).push_back('\0');
  k.append(device);
  return k;
}

void StateOwner::Charge(Entry& e, const std::string& key) {
  bytes_ -= e.charged;
  e.charged = key.size() + (e.state ? e.state->json.size() : 0) + kEntryOverhead;
  bytes_ += e.charged;
}

StateOwner::Entry& StateOwner::Insert(std::string key, std::optional<shadow::RuleState> state) {
  auto it = states_.emplace(std::move(key), Entry{std::move(state)}).first;
  lru_.push_front(&it->first);
  it->second.lru = lru_.begin();
  Charge(it->second, it->first);
  return it->second;
}

Result<const std::optional<shadow::RuleState>*> StateOwner::Get(
    const std::string& rule, const std::string& device, shadow::ShadowStore::Reader& reader) {
  std::string key = Key(rule, device);
  if (auto it = states_.find(key); it != states_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    last_key_ = &it->first;
    last_ = &it->second;
    return &it->second.state;
  }
  GNOMON_ASSIGN_OR_RETURN(std::optional<shadow::RuleState> stored,
                          reader.LoadState(rule, device));
  if (loads_ != nullptr) {
    loads_->Inc();
  }
  Entry& e = Insert(std::move(key), std::move(stored));
  last_key_ = *e.lru;
  last_ = &e;
  return &e.state;
}

uint64_t StateOwner::epoch(const std::string& rule, const std::string& device) const {
  if (epochs_.empty()) {
    return 0;
  }
  auto e = epochs_.find(Key(rule, device));
  return e != epochs_.end() ? e->second : 0;
}

void StateOwner::Put(const std::string& rule, const std::string& device,
                     std::optional<shadow::RuleState> state, shadow::ShadowStore::Done done) {
  std::string key = Key(rule, device);
  uint64_t ep = epoch(rule, device);
  shadow::RuleState row = state ? *state : shadow::RuleState{};
  if (!state) {
    row.json.clear();  // deleted
  }
  uint64_t seq = store_.WriteState(rule, device, std::move(row), std::move(done), ep);
  Entry* e = last_ != nullptr && *last_key_ == key ? last_ : nullptr;
  const std::string* k = last_key_;
  if (e == nullptr) {
    auto it = states_.find(key);
    if (it == states_.end()) {
      it = states_.emplace(key, Entry{}).first;
      lru_.push_front(&it->first);
      it->second.lru = lru_.begin();
    }
    e = &it->second;
    k = &it->first;
  }
  lru_.splice(lru_.begin(), lru_, e->lru);
  e->state = std::move(state);
  e->written = seq;
  Charge(*e, *k);
}

bool StateOwner::Evict(const std::string& rule, const std::string& device, uint64_t epoch) {
  std::string key = Key(rule, device);
  uint64_t& current = epochs_[key];
  if (current != epoch) {
    return false;
  }
  ++current;
  Forget(key);
  return true;
}

void StateOwner::Forget(const std::string& key) {
  last_ = nullptr;
  last_key_ = nullptr;
  if (auto it = states_.find(key); it != states_.end()) {
    bytes_ -= it->second.charged;
    lru_.erase(it->second.lru);
    states_.erase(it);
  }
}

size_t StateOwner::Trim() {
  if (bytes_ <= budget_) {
    return 0;
  }
  uint64_t done = store_.committed();
  size_t dropped = 0;
  size_t looked = 0;
  for (auto it = lru_.end(); bytes_ > budget_ && it != lru_.begin() && looked < 4096; ++looked) {
    --it;
    if (states_.find(**it)->second.written > done) {
      continue;  // a reload must see its write
    }
    auto older = std::next(it);
    Forget(**it);
    ++dropped;
    it = older;
  }
  return dropped;
}

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
// StateOwner: the rules' durable per-device state (ctx.state) of the devices one worker owns,
// next to its ShadowOwner. It keeps the states in use (read from the store on first use, kept
// within a byte budget), queues their writes in the shadow store's transactions, and names
// each copy with an epoch the way ShadowOwner does: after a refused write the copy is dropped,
// the next use reads the store again, and writes go on with the next epoch.
//
// Threads: touched only by its worker's thread. The `done` of Put runs on the store's writer
// thread: it must only hand work back to the worker (an eviction), never touch the owner.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "gnomon/core/metrics.h"
#include "gnomon/core/status.h"
#include "gnomon/shadow/store.h"

namespace gnomon::engine {

class StateOwner {
 public:
  // `budget_bytes`: what the cached states may take (their JSON and keys); beyond it the least
  // recently used whose writes are done are dropped. `loads` counts reads from the store.
  StateOwner(size_t budget_bytes, shadow::ShadowStore& store, Counter* loads = nullptr);

  // Rule `rule`'s state for `device` (nullopt: none): the cached copy, or read with `reader`.
  // The pointer stays valid until the next Put, Evict or Trim.
  Result<const std::optional<shadow::RuleState>*> Get(const std::string& rule,
                                                      const std::string& device,
                                                      shadow::ShadowStore::Reader& reader);
  // The call's new state (nullopt: none) becomes the cached copy and is queued for the store
  // with the copy's epoch; `done` runs on the writer thread once it is durable or refused.
  void Put(const std::string& rule, const std::string& device,
           std::optional<shadow::RuleState> state, shadow::ShadowStore::Done done);
  // A write of (rule, device) made by the copy of `epoch` was refused: drops that copy. False
  // when it was dropped already.
  bool Evict(const std::string& rule, const std::string& device, uint64_t epoch);
  uint64_t epoch(const std::string& rule, const std::string& device) const;
  // Drops least recently used states beyond the budget whose writes are done. Returns how many.
  size_t Trim();

  size_t cached() const { return states_.size(); }
  size_t bytes() const { return bytes_; }

 private:
  struct Entry {
    std::optional<shadow::RuleState> state;
    uint64_t written = 0;  // the store's sequence number of its last write
    size_t charged = 0;
    std::list<const std::string*>::iterator lru{};
  };
  static std::string Key(std::string_view rule, std::string_view device);
  Entry& Insert(std::string key, std::optional<shadow::RuleState> state);
  void Charge(Entry& e, const std::string& key);
  void Forget(const std::string& key);

  const size_t budget_;
  shadow::ShadowStore& store_;
  Counter* loads_;
  std::unordered_map<std::string, Entry> states_;  // by Key(rule, device)
  std::list<const std::string*> lru_;              // most recently used first
  std::unordered_map<std::string, uint64_t> epochs_;  // copies dropped after a refused write
  size_t bytes_ = 0;
  // The entry the last Get returned (a call reads its state, then writes it): Put finds it
  // without a second lookup. Null after anything that may move or drop entries.
  const std::string* last_key_ = nullptr;
  Entry* last_ = nullptr;
};

}  // namespace gnomon::engine

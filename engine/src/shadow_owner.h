// SPDX-License-Identifier: Apache-2.0
// ShadowOwner: the shadows one worker owns (the things that hash to it). It keeps their
// documents (loaded from the store on first use, at most `cache_shadows` of them kept), the
// epoch of each copy (which names it in the store's writes), and their recent changes for
// GET .../changes (within a per-shadow count and a byte budget).
//
// Threads: one owner per worker, touched only by that worker's thread (and by the engine
// before the workers start: Restore). The `done` of Store runs on the store's writer thread:
// it must only hand work back to the worker (Engine::Impl::EvictShadow), never touch the owner.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gnomon/core/metrics.h"
#include "gnomon/core/status.h"
#include "gnomon/shadow/document.h"
#include "gnomon/shadow/store.h"

namespace gnomon::engine {

// "thing\0name": how a shadow is named in the owner's maps and CommittedShadows.
inline std::string ShadowKey(std::string_view thing, std::string_view name) {
  std::string k;
  k.reserve(thing.size() + name.size() + 1);
  k.append(thing).push_back('\0');
  k.append(name);
  return k;
}

class ShadowOwner {
 public:
  struct Options {
    size_t cache_shadows = 100000;  // documents kept; beyond it Trim drops durable ones
    size_t history = 0;             // changes kept per shadow (0: no history)
    size_t history_bytes = 0;       // all changes kept, as ShadowChange::Bytes charges them
  };
  // Counted as they happen, when given (shared by the owners).
  struct Counters {
    Counter* loads = nullptr;  // documents read from the store
    Counter* drops = nullptr;  // documents Trim dropped
  };
  struct Change {
    int64_t version;
    int64_t timestamp;  // epoch seconds
    std::string ops;    // RFC 6902, a JSON array
  };

  // `reader` reads the store for this owner's thread only.
  ShadowOwner(Options options, shadow::ShadowStore& store,
              std::unique_ptr<shadow::ShadowStore::Reader> reader, Counters counters);

  // The document of (thing, name): the cached copy, or read from the store (a shadow never
  // written is an empty document that does not exist yet). Errors: the store cannot be read,
  // or holds something that is not a stored shadow. The pointer stays valid until Evict or
  // Trim.
  Result<shadow::ShadowDocument*> Get(const std::string& thing, const std::string& name);

  // Queues the stored form of (thing, name) with its copy's epoch (epoch(): what a refused
  // write's `done` passes on to Evict). `done` runs on the store's writer thread once the write
  // is durable (ok) or refused; until then Trim keeps that copy (a reload would not see the
  // write). `change` goes to the store's history log with it.
  void Store(const std::string& thing, const std::string& name, std::string stored,
             shadow::ShadowStore::Done done,
             std::optional<shadow::ShadowChange> change = std::nullopt);
  // The store refused a write of (thing, name) made by the copy of `epoch`: that copy holds a
  // state the store does not, and later writes of its epoch are refused too. Drops it (and its
  // history, which has the refused version) so the next Get reads the store again and writes
  // on with the next epoch. False when that copy was dropped already.
  bool Evict(const std::string& thing, const std::string& name, uint64_t epoch);
  // Drops the least recently used documents beyond cache_shadows whose writes are all done
  // (looking at most 256 past the excess). Returns how many were dropped.
  size_t Trim();

  // Drops the documents and histories of the things `drop` names (their partition moved to
  // another cluster member: docs/cluster.md). Returns how many documents were dropped.
  size_t DropThings(const std::function<bool(std::string_view thing)>& drop);

  // Adds an accepted write's change, within the per-shadow count and the byte budget (the
  // oldest changes of any shadow go first).
  void RecordChange(std::string_view thing, std::string_view name, shadow::ShadowChange c);
  // The shadow was deleted: what came before no longer applies.
  void EraseHistory(std::string_view thing, std::string_view name);
  void ClearHistory();
  // The changes kept for (thing, name), oldest first; null when none.
  const std::deque<Change>* History(std::string_view thing, std::string_view name) const;

  // At start, before the workers run: the changes in the store's history log, back to the
  // owners of their things (owners[owner_of(thing)]). Returns how many. A log that cannot be
  // read whole leaves every owner without history, and is the error: a history with a hole
  // would answer `changes` without what fell into it (clients resync from the documents).
  static Result<size_t> RestoreHistory(shadow::ShadowStore::Reader& reader,
                                       const std::vector<ShadowOwner*>& owners,
                                       const std::function<size_t(std::string_view)>& owner_of);

  // What the store's reader of this owner reads (others' committed shadows too).
  shadow::ShadowStore::Reader& reader() { return *reader_; }
  size_t cached() const { return docs_.size(); }
  size_t history_bytes() const { return history_bytes_; }
  // The epoch of the copy of (thing, name): its writes carry it.
  uint64_t epoch(std::string_view thing, std::string_view name) const;

 private:
  struct Entry {
    shadow::ShadowDocument doc;
    uint64_t written = 0;  // the store's sequence number of its last write
    std::list<const std::string*>::iterator lru{};
  };
  struct Recorded {  // a change kept, with what it was charged
    std::string key;
    int64_t version;
    size_t bytes;
  };
  void Forget(const std::string& key);
  uint64_t EpochOf(const std::string& key) const;

  const Options options_;
  shadow::ShadowStore& store_;
  std::unique_ptr<shadow::ShadowStore::Reader> reader_;
  Counters counters_;
  std::unordered_map<std::string, Entry> docs_;  // by ShadowKey
  std::list<const std::string*> lru_;             // keys of docs_, most recently used first
  // The epochs of copies dropped after a refused write (absent: 0).
  std::unordered_map<std::string, uint64_t> epochs_;
  std::unordered_map<std::string, std::deque<Change>> history_;
  // Every change kept, oldest first, with its charge: it counts until it leaves here (also
  // when its shadow dropped it sooner).
  std::deque<Recorded> history_order_;
  size_t history_bytes_ = 0;
};

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
// StateOwner: the rules' durable rows per device — ctx.state, ctx.timer timers and the
// inactivity deadline — of the devices one worker owns, next to its ShadowOwner. It keeps the
// rows in use (read from the store on first use, kept within a byte budget), queues their
// writes in the shadow store's transactions, names each copy with an epoch the way ShadowOwner
// does (after a refused write the copy is dropped, the next use reads the store again, and
// writes go on with the next epoch), and schedules the rows with something due: a min-ordered
// index of (due, row) that the worker takes due rows from.
//
// Threads: touched only by its worker's thread (and by the engine before the workers start:
// Schedule at restore), except pending(), which any thread may read. The `done` of Put runs
// on the store's writer thread: it must only hand work back to the worker, never touch the
// owner.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "gnomon/core/metrics.h"
#include "gnomon/core/status.h"
#include "gnomon/rules/rules.h"
#include "gnomon/shadow/store.h"

namespace gnomon::engine {

// "rule\0device": how a row is named in the owner's maps and the due index.
inline std::string StateKey(std::string_view rule, std::string_view device) {
  std::string k;
  k.reserve(rule.size() + device.size() + 1);
  k.append(rule).push_back('\0');
  k.append(device);
  return k;
}

// The timers as the store keeps them (a JSON array of {"name","due","data"}) and back.
std::string EncodeTimers(const std::vector<rules::RuleTimer>& timers);
Result<std::vector<rules::RuleTimer>> DecodeTimers(std::string_view json);

class StateOwner {
 public:
  // One (rule, device)'s row.
  struct Row {
    rules::StoredState state;  // version, JSON ("": none) and pending timers
    int64_t inactive_due = 0;  // durable: on_inactive is due by then at the latest (0: none)
    int64_t last_seen = 0;     // memory only: the device's last message to the rule (0: unknown)
    int64_t window_due = 0;    // when an ingest-time window closes next (0: none)
    int64_t open_windows = 0;  // memory only: windows open in state.windows (SetWindows)
    bool exists() const {
      return !state.json.empty() || !state.timers.empty() || inactive_due || !state.windows.empty();
    }
    int64_t next_timer() const;  // the earliest timer's due, or 0
  };

  // `budget_bytes`: what the cached rows may take (their JSON and keys); beyond it the least
  // recently used whose writes are done are dropped. `loads` counts reads from the store.
  StateOwner(size_t budget_bytes, shadow::ShadowStore& store, Counter* loads = nullptr);

  // Rule `rule`'s row for `device` (empty when it has none): the cached copy, or read with
  // `reader`. The pointer stays valid until the next Get of another row, Evict or Trim; the
  // caller may change it and then Put it.
  Result<Row*> Get(const std::string& rule, const std::string& device,
                   shadow::ShadowStore::Reader& reader);
  // Queues the row as it is now (after Get and changes) for the store with the copy's epoch;
  // `done` runs on the writer thread once it is durable or refused. With `record`, that gets
  // the row's change-log record (RuleState::ChangelogJson; empty: the row is deleted).
  void Put(const std::string& rule, const std::string& device, shadow::ShadowStore::Done done,
           std::string* record = nullptr);
  // A write of (rule, device) made by the copy of `epoch` was refused: drops that copy. False
  // when it was dropped already.
  bool Evict(const std::string& rule, const std::string& device, uint64_t epoch);
  uint64_t epoch(const std::string& rule, const std::string& device) const;
  // Drops least recently used rows beyond the budget whose writes are done. Returns how many.
  size_t Trim();
  // Forgets every row of the devices `drop` names, cached or due (their partition moved away,
  // or is being restored from the change log: the store has them as they are now). Returns
  // how many rows and due entries were forgotten.
  size_t DropDevices(const std::function<bool(std::string_view device)>& drop);

  // Due index. Schedule: row `key` has something due at `due` (0: nothing); an entry already
  // earlier stays (taking it early is harmless: the worker looks and schedules again). Only
  // rows due before covered() + kMarginMs are kept: later ones wait in the store's index of
  // next_due until Extend brings them in, so memory holds what is due soon, not every timer.
  void Schedule(const std::string& key, int64_t due);
  static constexpr int64_t kMarginMs = 10'000;
  // Every row due before this is in the index (or fired).
  int64_t covered() const { return covered_; }
  // At start: the rows due before `until` were loaded (Schedule'd after this).
  void Cover(int64_t until) { covered_ = until; }
  // Once `now` is within kMarginMs of covered(): brings in the rows due in the next stretch
  // (at most kMarginMs / 2 further) from the store, those `mine` says this worker owns. Waits
  // (returns 0) until the writes queued before the previous extension are durable: a row
  // written since then and due in the new stretch is found by the next one (Schedule kept any
  // due sooner). Returns how many rows were added.
  Result<size_t> Extend(int64_t now, shadow::ShadowStore::Reader& reader,
                        const std::function<bool(std::string_view)>& mine);
  // Takes (removes) up to `max` rows due at or before `now`, earliest first.
  std::vector<std::string> TakeDue(int64_t now, size_t max);
  // Rows in the due index; safe from any thread.
  size_t pending() const { return pending_.load(std::memory_order_relaxed); }

  // Windows open in the rows this owner wrote since start (a delta on what the store held
  // then; the engine adds that). SetWindows: `row` (from the last Get) now holds `windows`.
  void SetWindows(Row& row, std::string windows);
  int64_t open_windows() const { return open_windows_.load(std::memory_order_relaxed); }

  size_t cached() const { return rows_.size(); }
  size_t bytes() const { return bytes_; }

 private:
  struct Entry {
    Row row;
    uint64_t written = 0;  // the store's sequence number of its last write
    size_t charged = 0;
    std::list<const std::string*>::iterator lru{};
  };
  void Charge(Entry& e, const std::string& key);
  // Whether (rule, device) is the entry the last Get returned (last_).
  bool IsLast(std::string_view rule, std::string_view device) const;
  void Forget(const std::string& key);

  const size_t budget_;
  shadow::ShadowStore& store_;
  Counter* loads_;
  std::unordered_map<std::string, Entry> rows_;       // by StateKey
  std::list<const std::string*> lru_;                 // most recently used first
  std::unordered_map<std::string, uint64_t> epochs_;  // copies dropped after a refused write
  // Rows dropped after a refused write, whose windows are counted again when read back.
  std::unordered_set<std::string> recount_;
  std::atomic<int64_t> open_windows_{0};
  size_t bytes_ = 0;
  // The entry the last Get returned (a call reads its row, then writes it): Put finds it
  // without a second lookup. Null after anything that may drop entries.
  const std::string* last_key_ = nullptr;
  Entry* last_ = nullptr;
  // The due index: (due, key) ordered, and each key's due in it.
  std::set<std::pair<int64_t, std::string>> due_;
  std::unordered_map<std::string, int64_t> indexed_;
  std::atomic<size_t> pending_{0};
  int64_t covered_ = 0;
  uint64_t extend_seq_ = 0;  // the store's queued sequence at the previous extension
};

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
// The durable shadow store: one SQLite database (WAL) in data_dir. Writes are queued and
// committed by one writer thread in group transactions (many writes per fsync; repeated writes
// of one shadow within a batch are coalesced to the last); each write's callback runs after the
// transaction holding it is durable, in the order the writes were queued.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gnomon/core/status.h"

namespace gnomon::shadow {

struct StoreOptions {
  std::string path;            // database file
  size_t max_batch = 4096;     // writes per transaction at most
  bool sync_full = true;       // synchronous=FULL (power-loss safe) or NORMAL (process-crash safe)
  // The history log: the newest changes, written with their shadows, at least this many bytes
  // of them (ShadowChange::Bytes) and one transaction's more at most; the oldest are deleted
  // first. 0 keeps none.
  size_t history_log_bytes = 0;
};

// One accepted version of a shadow, written in the same transaction as the shadow itself.
struct ShadowChange {
  int64_t version = 0;
  int64_t timestamp = 0;  // epoch seconds
  std::string ops;        // RFC 6902 operations (a JSON array); empty: the history ends here
                          // (the shadow was deleted), earlier changes no longer apply
  // What it is charged in the history log (and in the owner's memory): the operations, the
  // shadow's key twice (the owner keeps it by shadow and in its age order) and 224 bytes for
  // the owner's two records of it, their containers and the allocator's rounding (measured:
  // with 128 here the owners' RSS grew ~1.3× what they were charged).
  static size_t Bytes(std::string_view thing, std::string_view name, std::string_view ops) {
    return ops.size() + 2 * (thing.size() + 1 + name.size()) + 224;
  }
};

// A rule's durable row for one device (docs/rules.md#state): the rule's `state.version` it
// was written under, the state as JSON (ctx.state), its pending timers (ctx.timer, a JSON array,
// "" for none), when on_inactive is due at the latest (0: not armed), the windows' states and
// when one closes next, and the earliest of what is due (0: nothing), which the store indexes.
struct RuleState {
  int64_t version = 1;
  std::string json;
  std::string timers;
  int64_t inactive_due = 0;
  int64_t next_due = 0;
  std::string windows;     // the rule's windows' states ("": none)
  int64_t window_due = 0;  // when an ingest-time window closes next (0: none)

  // The row as a change-log record (docs/cluster.md#rule-state-timers-and-windows): a JSON
  // object with `rule`, `version`, `state` and `timers` as stored, the due times, and the
  // windows' bytes in base64. FromChangelog refuses anything else, naming what is wrong.
  std::string ChangelogJson(std::string_view rule) const;
  static Result<RuleState> FromChangelog(std::string_view record);
};

// A rule row's change-log key, "{device}/$state/{rule}" ("$" is in no shadow name, so it never
// names a shadow), and back: the (device, rule) a key names, or nullopt for a shadow's key.
std::string StateChangelogKey(std::string_view device, std::string_view rule);
std::optional<std::pair<std::string_view, std::string_view>> ParseStateChangelogKey(
    std::string_view key);

struct StoreStats {
  uint64_t transactions = 0;
  uint64_t writes = 0;     // queued writes committed
  uint64_t rows = 0;       // rows written (after coalescing)
  uint64_t failures = 0;   // transactions that failed (their writes' callbacks got the error)
  uint64_t stale = 0;      // writes refused as made on top of a refused one
  uint64_t changes = 0;    // changes written to the history log
  uint64_t max_pending = 0;  // the most writes ever not done at once (queued or committing)
};

class ShadowStore {
 public:
  // Called on the writer thread once the write is durable (ok) or could not be made so.
  using Done = std::function<void(const Status&)>;

  static Result<std::unique_ptr<ShadowStore>> Open(StoreOptions options);
  // Commits everything queued, then closes.
  ~ShadowStore();

  // Queues the stored form of shadow (thing, name). Thread-safe; never blocks on I/O.
  // `epoch` names the writer's copy of the shadow. When a write cannot be stored, every later
  // write of that shadow with the same or an older epoch is refused too (FailedPrecondition,
  // nothing written): it was made on top of the refused state. The writer drops its copy,
  // reads the shadow again from the store, and writes on with a newer epoch.
  // Returns the write's sequence number (see committed()).
  // `change`, when given, goes to the history log with it (not if the write is refused).
  uint64_t Write(std::string thing, std::string name, std::string stored, Done done,
                 uint64_t epoch = 0, std::optional<ShadowChange> change = std::nullopt);
  // Queues the stored form of service call `id` of `thing` (empty `stored`: the call is
  // forgotten). In the same order and transactions as the shadow writes.
  void WriteCall(std::string thing, std::string id, std::string stored, Done done);
  // Queues rule `rule`'s row for `device` (empty `json`: the row is deleted). In the same
  // order and transactions as the shadow writes, with the same `epoch` rule: after a refused
  // write of this (rule, device), writes of the same or an older epoch are refused too.
  uint64_t WriteState(std::string rule, std::string device, RuleState state, Done done,
                      uint64_t epoch = 0);
  // Runs `done` (on the writer thread) once every write queued before it is committed: replies
  // that must not overtake earlier writes (a get after an update) go through here.
  void After(Done done);
  // Waits until everything queued before the call is committed.
  void Flush();

  // A read connection for one thread (not thread-safe itself). Sees committed writes only.
  class Reader {
   public:
    virtual ~Reader() = default;
    // The stored form, or nullopt when the shadow was never written.
    virtual Result<std::optional<std::string>> Load(std::string_view thing,
                                                    std::string_view name) = 0;
    // Names of the thing's existing shadows ("" for the classic one), sorted.
    virtual Result<std::vector<std::string>> Names(std::string_view thing) = 0;
    // Things with at least one existing shadow, sorted, starting after `after`, with `prefix`.
    virtual Result<std::vector<std::string>> Things(std::string_view prefix,
                                                    std::string_view after, size_t limit) = 0;
    // Existing shadows as (thing, name), sorted, starting after (after_thing, after_name).
    virtual Result<std::vector<std::pair<std::string, std::string>>> Shadows(
        std::string_view after_thing, std::string_view after_name, size_t limit) = 0;
    // Rule `rule`'s state for `device`, or nullopt when it has none.
    virtual Result<std::optional<RuleState>> LoadState(std::string_view rule,
                                                       std::string_view device) = 0;
    // Every rule's state for `device` as (rule, state), by rule name.
    virtual Result<std::vector<std::pair<std::string, RuleState>>> StatesOf(
        std::string_view device) = 0;
    // Calls `each` with every row that has something due in [from, to) (device, rule,
    // next_due).
    using EachDue =
        std::function<void(std::string_view device, std::string_view rule, int64_t next_due)>;
    virtual Status Due(int64_t from, int64_t to, const EachDue& each) = 0;
    // Calls `each` with up to `limit` rows of `rule` holding a state stored under another
    // version than `version` (device, row): what a new version's migrate would see.
    using EachRow = std::function<void(std::string_view device, const RuleState& row)>;
    virtual Status StatesToMigrate(std::string_view rule, int64_t version, size_t limit,
                                   const EachRow& each) = 0;
    // Calls `each` with the device, rule and windows of every rule row (a scan of the table).
    using EachStateRow = std::function<void(std::string_view device, std::string_view rule,
                                            std::string_view windows)>;
    virtual Status StateRows(const EachStateRow& each) = 0;
    // Calls `each` with the windows of every row that has some (a scan of the table).
    virtual Status Windows(const std::function<void(std::string_view windows)>& each) = 0;
    // Every stored service call as (thing, stored form), in the order they were first written.
    virtual Result<std::vector<std::pair<std::string, std::string>>> Calls() = 0;
    // Calls `each` with every change in the history log, oldest first.
    using EachChange = std::function<void(std::string_view thing, std::string_view name,
                                          ShadowChange change)>;
    virtual Status Changes(const EachChange& each) = 0;
  };
  Result<std::unique_ptr<Reader>> NewReader();

  StoreStats stats() const;
  size_t queued() const;
  // Blocks while more than `n` writes are not done yet (queued, or in the transaction being
  // committed), for at most `timeout`; true when at most `n` are. How writers back-pressure
  // on the disk: the store's queue itself never refuses a write.
  bool WaitPendingAtMost(size_t n, std::chrono::milliseconds timeout);
  // Every write whose sequence number is at most this is done (durable, or refused).
  uint64_t committed() const;
  // The sequence number of the last write queued.
  uint64_t queued_seq() const;

  class Impl;

 private:
  explicit ShadowStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace gnomon::shadow

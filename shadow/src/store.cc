// SPDX-License-Identifier: Apache-2.0
#include "gnomon/shadow/store.h"

#include <fmt/format.h>
#include <pthread.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "gnomon/core/mutex.h"
#include "gnomon/sqlite/sqlite.h"

namespace gnomon::shadow {
namespace {

constexpr const char* kSchema =
    // A rowid table (documents are too large for WITHOUT ROWID's in-tree rows) with the
    // shadow's identity as a unique key.
    "CREATE TABLE IF NOT EXISTS shadows ("
    "  id INTEGER PRIMARY KEY,"
    "  thing TEXT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  present INTEGER NOT NULL,"
    "  stored TEXT NOT NULL,"
    "  UNIQUE (thing, name));"
    // Thing-model service calls that are not finished or still kept for status queries,
    // in the order they were made (seq).
    "CREATE TABLE IF NOT EXISTS service_calls ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  thing TEXT NOT NULL,"
    "  stored TEXT NOT NULL);"
    // The history log: one row per transaction holding its changes in the order written
    // (EncodeChange), appended with the shadows and deleted from the oldest end. `bytes` is
    // what its changes are charged (ShadowChange::Bytes). A row per change cost durable
    // updates ~20%, a table keyed by shadow and version ~60% (a page of its own per write).
    // Rules' durable state per device (ctx.state): the rule's state.version it was written
    // under and the state as JSON. WITHOUT ROWID: one b-tree to update per write, not a table
    // and its key's index (states are small: 64 KiB at most by default).
    "CREATE TABLE IF NOT EXISTS rule_state ("
    "  device TEXT NOT NULL,"
    "  rule TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  state TEXT NOT NULL,"
    "  timers TEXT NOT NULL,"
    "  inactive_due INTEGER NOT NULL,"
    "  next_due INTEGER NOT NULL,"
    "  windows TEXT NOT NULL,"
    "  window_due INTEGER NOT NULL,"
    "  PRIMARY KEY (device, rule)) WITHOUT ROWID;"
    // The rows with something due, read at start to schedule them.
    "CREATE INDEX IF NOT EXISTS rule_state_due ON rule_state (next_due) WHERE next_due > 0;"
    "CREATE TABLE IF NOT EXISTS shadow_changes ("
    "  seq INTEGER PRIMARY KEY,"
    "  bytes INTEGER NOT NULL,"
    "  log BLOB NOT NULL)";

// A change in the log: "<thing bytes> <name bytes> <ops bytes> <version> <timestamp>\n", then
// thing, name and ops as they are.
void EncodeChange(std::string& out, std::string_view thing, std::string_view name,
                  const ShadowChange& c) {
  char head[5 * 21];
  char* p = head;
  for (int64_t v : {static_cast<int64_t>(thing.size()), static_cast<int64_t>(name.size()),
                    static_cast<int64_t>(c.ops.size()), c.version, c.timestamp}) {
    p = std::to_chars(p, head + sizeof(head), v).ptr;
    *p++ = ' ';
  }
  p[-1] = '\n';
  out.append(head, p);
  out.append(thing);
  out.append(name);
  out.append(c.ops);
}

// The changes of one row to `each`; false if the row is damaged (what came before it stands).
bool DecodeChanges(std::string_view log, const ShadowStore::Reader::EachChange& each) {
  while (!log.empty()) {
    int64_t v[5];
    const char* p = log.data();
    const char* end = p + log.size();
    for (int64_t& x : v) {
      auto r = std::from_chars(p, end, x);
      if (r.ec != std::errc() || r.ptr == end || x < 0) {
        return false;
      }
      p = r.ptr + 1;
    }
    auto at = static_cast<size_t>(p - log.data());
    auto thing = static_cast<size_t>(v[0]), name = static_cast<size_t>(v[1]),
         ops = static_cast<size_t>(v[2]);
    if (at > log.size() || log.size() - at < thing + name + ops) {
      return false;
    }
    each(log.substr(at, thing), log.substr(at + thing, name),
         ShadowChange{v[3], v[4], std::string(log.substr(at + thing + name, ops))});
    log.remove_prefix(at + thing + name + ops);
  }
  return true;
}

Status SqlError(const sqlite::Db& db, std::string_view what) {
  return Unavailable(fmt::format("shadow store: {}: {}", what, db.Error()));
}

// The wrapper's calls, their errors named as the shadow store's.
Status Exec(sqlite::Db& db, std::string_view sql) {
  return db.Exec(sql).WithContext("shadow store");
}
Status Prepare(sqlite::Db& db, std::string_view sql, sqlite::Stmt& st) {
  return db.Prepare(sql, st).WithContext("shadow store");
}

class SqliteReader final : public ShadowStore::Reader {
 public:
  ~SqliteReader() override {
    load_.Reset();
    names_.Reset();
    things_.Reset();
    shadows_.Reset();
    calls_.Reset();
    changes_.Reset();
    state_.Reset();
    states_of_.Reset();
    due_.Reset();
    to_migrate_.Reset();
    db_.Close();
  }

  Status Init(const std::string& path) {
    GNOMON_RETURN_IF_ERROR(db_.Open(path, sqlite::Db::Mode::kReadOnly).WithContext("shadow store"));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "SELECT stored FROM shadows WHERE thing = ?1 AND name = ?2", load_));
    GNOMON_RETURN_IF_ERROR(Prepare(
        db_, "SELECT name FROM shadows WHERE thing = ?1 AND present = 1 ORDER BY name", names_));
    GNOMON_RETURN_IF_ERROR(Prepare(db_,
                                   "SELECT DISTINCT thing FROM shadows WHERE present = 1 AND "
                                   "thing > ?1 AND substr(thing, 1, length(?2)) = ?2 "
                                   "ORDER BY thing LIMIT ?3",
                                   things_));
    GNOMON_RETURN_IF_ERROR(Prepare(db_,
                                   "SELECT thing, name FROM shadows WHERE present = 1 AND "
                                   "(thing > ?1 OR (thing = ?1 AND name > ?2)) "
                                   "ORDER BY thing, name LIMIT ?3",
                                   shadows_));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "SELECT thing, stored FROM service_calls ORDER BY seq", calls_));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "SELECT seq, log FROM shadow_changes ORDER BY seq", changes_));
    GNOMON_RETURN_IF_ERROR(Prepare(db_,
                                   "SELECT version, state, timers, inactive_due, next_due, "
                                   "windows, window_due FROM rule_state WHERE device = ?1 AND "
                                   "rule = ?2",
                                   state_));
    GNOMON_RETURN_IF_ERROR(Prepare(db_,
                                   "SELECT rule, version, state, timers, inactive_due, next_due, "
                                   "windows, window_due FROM rule_state WHERE device = ?1 ORDER "
                                   "BY rule",
                                   states_of_));
    GNOMON_RETURN_IF_ERROR(Prepare(
        db_,
        "SELECT device, rule, next_due FROM rule_state WHERE next_due >= ?1 AND next_due < ?2 "
        "AND next_due > 0",
        due_));
    GNOMON_RETURN_IF_ERROR(Prepare(db_,
                                   "SELECT device, version, state, timers, inactive_due, next_due, "
                                   "windows, window_due FROM rule_state WHERE rule = ?1 AND "
                                   "version != ?2 AND state != '{}' LIMIT ?3",
                                   to_migrate_));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "SELECT windows FROM rule_state WHERE length(windows) > 0", windows_));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "SELECT device, rule, windows FROM rule_state", state_rows_));
    return {};
  }

  Status StateRows(const EachStateRow& each) override {
    sqlite3_stmt* s = state_rows_.get();
    sqlite3_reset(s);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      each(sqlite::ColumnText(s, 0), sqlite::ColumnText(s, 1), sqlite::ColumnText(s, 2));
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "rule state");
    }
    return {};
  }

  Status Windows(const std::function<void(std::string_view windows)>& each) override {
    sqlite3_stmt* s = windows_.get();
    sqlite3_reset(s);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      each(sqlite::ColumnText(s, 0));
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "rule state");
    }
    return {};
  }

  Result<std::optional<RuleState>> LoadState(std::string_view rule,
                                             std::string_view device) override {
    sqlite3_stmt* s = state_.get();
    sqlite3_reset(s);
    sqlite::BindText(s, 1, device);
    sqlite::BindText(s, 2, rule);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
      return std::optional<RuleState>();
    }
    if (rc != SQLITE_ROW) {
      return SqlError(db_, "rule state");
    }
    std::optional<RuleState> out = Row(s, 0);
    sqlite3_reset(s);
    return out;
  }

  // The row at column `c` on: version, state, timers, inactive_due, next_due, windows,
  // window_due.
  static RuleState Row(sqlite3_stmt* s, int c) {
    return RuleState{sqlite3_column_int64(s, c),
                     std::string(sqlite::ColumnText(s, c + 1)),
                     std::string(sqlite::ColumnText(s, c + 2)),
                     sqlite3_column_int64(s, c + 3),
                     sqlite3_column_int64(s, c + 4),
                     std::string(sqlite::ColumnText(s, c + 5)),
                     sqlite3_column_int64(s, c + 6)};
  }

  Status StatesToMigrate(std::string_view rule, int64_t version, size_t limit,
                         const EachRow& each) override {
    sqlite3_stmt* s = to_migrate_.get();
    sqlite3_reset(s);
    sqlite::BindText(s, 1, rule);
    sqlite3_bind_int64(s, 2, version);
    sqlite3_bind_int64(s, 3, static_cast<int64_t>(limit));
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      each(sqlite::ColumnText(s, 0), Row(s, 1));
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "rule state");
    }
    return {};
  }

  Status Due(int64_t from, int64_t to, const EachDue& each) override {
    sqlite3_stmt* s = due_.get();
    sqlite3_reset(s);
    sqlite3_bind_int64(s, 1, std::max<int64_t>(from, 1));
    sqlite3_bind_int64(s, 2, to);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      each(sqlite::ColumnText(s, 0), sqlite::ColumnText(s, 1), sqlite3_column_int64(s, 2));
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "rule state");
    }
    return {};
  }

  Result<std::vector<std::pair<std::string, RuleState>>> StatesOf(
      std::string_view device) override {
    sqlite3_stmt* s = states_of_.get();
    sqlite3_reset(s);
    sqlite::BindText(s, 1, device);
    std::vector<std::pair<std::string, RuleState>> out;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      out.emplace_back(std::string(sqlite::ColumnText(s, 0)), Row(s, 1));
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "rule state");
    }
    return out;
  }

  Status Changes(const EachChange& each) override {
    sqlite3_stmt* s = changes_.get();
    sqlite3_reset(s);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      const auto* blob = static_cast<const char*>(sqlite3_column_blob(s, 1));
      std::string_view log(blob != nullptr ? blob : "",
                           static_cast<size_t>(sqlite3_column_bytes(s, 1)));
      if (!DecodeChanges(log, each)) {
        int64_t seq = sqlite3_column_int64(s, 0);
        sqlite3_reset(s);
        return Internal(fmt::format("shadow store: history log row {} is damaged", seq));
      }
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "changes");
    }
    return {};
  }

  Result<std::vector<std::pair<std::string, std::string>>> Calls() override {
    sqlite3_stmt* s = calls_.get();
    sqlite3_reset(s);
    std::vector<std::pair<std::string, std::string>> out;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      out.emplace_back(std::string(sqlite::ColumnText(s, 0)),
                       std::string(sqlite::ColumnText(s, 1)));
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "calls");
    }
    return out;
  }

  Result<std::optional<std::string>> Load(std::string_view thing, std::string_view name) override {
    sqlite3_stmt* s = load_.get();
    sqlite3_reset(s);
    sqlite::BindText(s, 1, thing);
    sqlite::BindText(s, 2, name);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
      return std::optional<std::string>();
    }
    if (rc != SQLITE_ROW) {
      return SqlError(db_, "load");
    }
    std::optional<std::string> out = std::string(sqlite::ColumnText(s, 0));
    sqlite3_reset(s);
    return out;
  }

  Result<std::vector<std::string>> Names(std::string_view thing) override {
    sqlite3_stmt* s = names_.get();
    sqlite3_reset(s);
    sqlite::BindText(s, 1, thing);
    return Rows(s);
  }

  Result<std::vector<std::string>> Things(std::string_view prefix, std::string_view after,
                                          size_t limit) override {
    sqlite3_stmt* s = things_.get();
    sqlite3_reset(s);
    sqlite::BindText(s, 1, after);
    sqlite::BindText(s, 2, prefix);
    sqlite3_bind_int64(s, 3, static_cast<int64_t>(limit));
    return Rows(s);
  }

  Result<std::vector<std::pair<std::string, std::string>>> Shadows(std::string_view after_thing,
                                                                   std::string_view after_name,
                                                                   size_t limit) override {
    sqlite3_stmt* s = shadows_.get();
    sqlite3_reset(s);
    sqlite::BindText(s, 1, after_thing);
    sqlite::BindText(s, 2, after_name);
    sqlite3_bind_int64(s, 3, static_cast<int64_t>(limit));
    return Rows<std::pair<std::string, std::string>>(s, [](sqlite3_stmt* row) {
      return std::pair<std::string, std::string>(sqlite::ColumnText(row, 0),
                                                 sqlite::ColumnText(row, 1));
    });
  }

 private:
  // Every row of `s`, each made by `make` (default: its first column as text).
  template <class T = std::string, class F = std::string (*)(sqlite3_stmt*)>
  Result<std::vector<T>> Rows(
      sqlite3_stmt* s,
      F make = [](sqlite3_stmt* row) { return std::string(sqlite::ColumnText(row, 0)); }) {
    std::vector<T> out;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      out.push_back(make(s));
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "query");
    }
    return out;
  }

  sqlite::Db db_;
  sqlite::Stmt load_, names_, things_, shadows_, calls_, changes_, state_, states_of_, due_,
      to_migrate_, windows_, state_rows_;
};

}  // namespace

class ShadowStore::Impl {
 public:
  struct Pending {
    std::string thing, name, stored;
    Done done;
    bool barrier = false;  // no write: only `done`, in order
    bool call = false;     // a service call: `name` is its id; empty `stored` deletes it
    bool state = false;    // a rule's row: `thing` is the device, `name` the rule, `stored`
                           // the state's JSON (empty: the row is deleted), the rest in `row`
    RuleState row{};       // state: version, timers, inactive_due, next_due (json unused)
    uint64_t epoch = 0;    // of the writer's copy of the shadow (see ShadowStore::Write)
    std::optional<ShadowChange> change{};
  };

  ~Impl() {
    {
      MutexLock lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    if (writer_.joinable()) {
      writer_.join();
    }
    upsert_.Reset();
    call_upsert_.Reset();
    call_delete_.Reset();
    state_upsert_.Reset();
    state_delete_.Reset();
    change_insert_.Reset();
    change_prune_.Reset();
    db_.Close();
  }

  Status Init(StoreOptions options) {
    options_ = std::move(options);
    GNOMON_RETURN_IF_ERROR(db_.Open(options_.path).WithContext("shadow store"));
    GNOMON_RETURN_IF_ERROR(Exec(db_, "PRAGMA journal_mode=WAL"));
    GNOMON_RETURN_IF_ERROR(
        Exec(db_, options_.sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"));
    // The writer's page cache: 64 MiB (SQLite's default is 2 MiB). With 10k shadows and the
    // history log it took durable updates from ~140k/s to ~165k/s (bench, two producers).
    GNOMON_RETURN_IF_ERROR(Exec(db_, "PRAGMA cache_size=-65536"));
    GNOMON_RETURN_IF_ERROR(Exec(db_, kSchema));
    GNOMON_RETURN_IF_ERROR(Prepare(db_,
                                   "INSERT INTO shadows (thing, name, present, stored) "
                                   "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (thing, name) DO UPDATE "
                                   "SET present = excluded.present, stored = excluded.stored",
                                   upsert_));
    GNOMON_RETURN_IF_ERROR(Prepare(db_,
                                   "INSERT INTO service_calls (id, thing, stored) VALUES "
                                   "(?1, ?2, ?3) ON CONFLICT (id) DO UPDATE SET stored = "
                                   "excluded.stored",
                                   call_upsert_));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "DELETE FROM service_calls WHERE id = ?1", call_delete_));
    GNOMON_RETURN_IF_ERROR(Prepare(db_,
                                   "INSERT INTO rule_state (rule, device, version, state, timers, "
                                   "inactive_due, next_due, windows, window_due) VALUES (?1, ?2, "
                                   "?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (device, rule) DO "
                                   "UPDATE SET version = excluded.version, state = "
                                   "excluded.state, timers = excluded.timers, inactive_due = "
                                   "excluded.inactive_due, next_due = excluded.next_due, windows "
                                   "= excluded.windows, window_due = excluded.window_due",
                                   state_upsert_));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "DELETE FROM rule_state WHERE device = ?1 AND rule = ?2", state_delete_));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "INSERT INTO shadow_changes (bytes, log) VALUES (?1, ?2)", change_insert_));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "DELETE FROM shadow_changes WHERE seq <= ?1", change_prune_));
    GNOMON_RETURN_IF_ERROR(ReadHistoryLogSizes());
    writer_ = std::thread([this] { Run(); });
    return {};
  }

  uint64_t Write(Pending p) {
    bool wake;
    uint64_t seq;
    {
      MutexLock lock(mu_);
      queue_.push_back(std::move(p));
      seq = ++queued_seq_;
      stats_.max_pending = std::max(stats_.max_pending, queued_seq_ - committed_seq_);
      wake = writer_waiting_;  // a busy writer takes this write with its next batch
    }
    if (wake) {
      cv_.notify_one();
    }
    return seq;
  }

  uint64_t committed() const {
    MutexLock lock(mu_);
    return committed_seq_;
  }
  uint64_t queued_seq() const {
    MutexLock lock(mu_);
    return queued_seq_;
  }

  void Flush() {
    MutexLock lock(mu_);
    uint64_t target = queued_seq_;
    done_cv_.wait(lock.native(), [&] {
      mu_.AssertHeld();
      return committed_seq_ >= target;
    });
  }

  StoreStats stats() const {
    MutexLock lock(mu_);
    return stats_;
  }
  size_t queued() const {
    MutexLock lock(mu_);
    return queue_.size();
  }
  bool WaitPendingAtMost(size_t n, std::chrono::milliseconds timeout) {
    MutexLock lock(mu_);
    return done_cv_.wait_for(lock.native(), timeout, [&] {
      mu_.AssertHeld();
      return queued_seq_ - committed_seq_ <= n;
    });
  }
  const std::string& path() const { return options_.path; }
  bool logs_changes() const { return options_.history_log_bytes > 0; }

 private:
  void Run() {
    pthread_setname_np(pthread_self(), "gnomon-shadowdb");
    std::deque<Pending> batch;
    std::unordered_map<std::string_view, size_t> last;  // "thing\0name" → index in batch
    std::vector<std::string> keys;
    std::vector<bool> stale;
    while (true) {
      {
        MutexLock lock(mu_);
        writer_waiting_ = true;
        cv_.wait(lock.native(), [&] {
          mu_.AssertHeld();
          return closing_ || !queue_.empty();
        });
        writer_waiting_ = false;
        if (queue_.empty()) {
          return;  // closing and drained
        }
        // Take the queue whole when it fits in one batch: the workers queueing writes wait for
        // this lock, and moving thousands of writes one by one under it made them sleep on it
        // (the biggest cause of their waits in the stateful replay).
        if (queue_.size() <= options_.max_batch) {
          batch.swap(queue_);
        } else {
          for (size_t i = 0; i < options_.max_batch; ++i) {
            batch.push_back(std::move(queue_.front()));
            queue_.pop_front();
          }
        }
      }
      // Writes made on top of a refused one are refused too (they carry its changes), until
      // a write of a newer epoch: the writer's copy was read again from the store.
      // Coalesce: only the last write of each shadow in the batch reaches the database.
      keys.clear();
      keys.reserve(batch.size());
      last.clear();
      stale.assign(batch.size(), false);
      for (size_t i = 0; i < batch.size(); ++i) {
        keys.push_back(batch[i].call    ? '\1' + batch[i].name
                       : batch[i].state ? '\2' + batch[i].name + '\0' + batch[i].thing
                                        : batch[i].thing + '\0' + batch[i].name);
      }
      for (size_t i = 0; i < batch.size(); ++i) {
        if (batch[i].barrier) {
          continue;
        }
        if (auto r = batch[i].call ? refused_.end() : refused_.find(keys[i]);
            r != refused_.end() && batch[i].epoch <= r->second) {
          stale[i] = true;
          continue;
        }
        last[keys[i]] = i;
      }
      logged_changes_ = 0;
      Status st = last.empty() ? Status() : Commit(batch, last, stale);
      if (st.ok()) {
        if (logged_changes_ > 0) {
          change_sizes_.emplace_back(logged_seq_, logged_bytes_);
          change_bytes_ += logged_bytes_;
        }
        TrimHistoryLog();
        for (const auto& [key, i] : last) {
          if (!refused_.empty()) {
            refused_.erase(std::string(key));  // a newer epoch is stored
          }
        }
      } else {
        for (const auto& [key, i] : last) {
          if (!batch[i].call) {  // (a call the store refuses is forgotten by its owner)
            uint64_t& e = refused_[std::string(key)];
            e = std::max(e, batch[i].epoch);
          }
        }
      }
      size_t stale_count = 0;
      for (size_t i = 0; i < batch.size(); ++i) {
        Pending& p = batch[i];
        if (stale[i]) {
          ++stale_count;
        }
        if (p.done) {
          p.done(stale[i] ? FailedPrecondition(fmt::format(
                                "an earlier write of this {} could not be stored, and this "
                                "one was made on top of it",
                                p.state ? "rule state" : "shadow"))
                          : st);
        }
      }
      {
        MutexLock lock(mu_);
        stats_.transactions += last.empty() ? 0 : 1;
        stats_.writes += batch.size();
        stats_.rows += last.size();
        stats_.stale += stale_count;
        stats_.changes += st.ok() ? logged_changes_ : 0;
        if (!st.ok()) {
          stats_.failures++;
        }
        committed_seq_ += batch.size();
      }
      done_cv_.notify_all();
      batch.clear();
    }
  }

  Status Commit(std::deque<Pending>& batch,
                const std::unordered_map<std::string_view, size_t>& last,
                const std::vector<bool>& stale) {
    GNOMON_RETURN_IF_ERROR(Exec(db_, "BEGIN IMMEDIATE"));
    // Every change, coalesced writes' too, in the order written; the oldest go in bulk.
    GNOMON_RETURN_IF_ERROR(LogChanges(batch, stale));
    if (prune_to_ >= pruned_ + kPruneRows) {
      GNOMON_RETURN_IF_ERROR(Prune());
    }
    sqlite3_stmt* s = upsert_.get();
    for (const auto& [key, i] : last) {
      const Pending& p = batch[i];
      if (p.call) {
        GNOMON_RETURN_IF_ERROR(WriteCall(p));
        continue;
      }
      if (p.state) {
        GNOMON_RETURN_IF_ERROR(WriteState(p));
        continue;
      }
      sqlite::BindText(s, 1, p.thing);
      sqlite::BindText(s, 2, p.name);
      // The stored form starts with {"exists":1 or {"exists":0 (StoredJson's first field).
      bool present = p.stored.compare(0, 11, "{\"exists\":1") == 0;
      sqlite3_bind_int(s, 3, present ? 1 : 0);
      sqlite::BindText(s, 4, p.stored);
      GNOMON_RETURN_IF_ERROR(Step(s, "write"));
    }
    Status st = Exec(db_, "COMMIT");
    if (!st.ok()) {
      (void)Exec(db_, "ROLLBACK").ok();
    }
    return st;
  }

  // Runs a bound statement of Commit's transaction, rolling the transaction back if it fails.
  Status Step(sqlite3_stmt* s, std::string_view what) {
    bool ok = sqlite3_step(s) == SQLITE_DONE;
    Status err = ok ? Status() : SqlError(db_, what);
    sqlite3_reset(s);
    if (!ok) {
      (void)Exec(db_, "ROLLBACK").ok();
    }
    return err;
  }

  // Inside Commit's transaction; rolls it back on failure.
  Status LogChanges(const std::deque<Pending>& batch, const std::vector<bool>& stale) {
    log_.clear();
    size_t bytes = 0;
    size_t n = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const Pending& p = batch[i];
      if (p.change && !stale[i]) {
        EncodeChange(log_, p.thing, p.name, *p.change);
        bytes += ShadowChange::Bytes(p.thing, p.name, p.change->ops);
        ++n;
      }
    }
    if (n == 0) {
      return {};
    }
    sqlite3_stmt* s = change_insert_.get();
    sqlite3_reset(s);
    sqlite3_bind_int64(s, 1, static_cast<int64_t>(bytes));
    sqlite3_bind_blob(s, 2, log_.data(), static_cast<int>(log_.size()), SQLITE_STATIC);
    GNOMON_RETURN_IF_ERROR(Step(s, "history log"));
    logged_seq_ = sqlite3_last_insert_rowid(db_.get());
    logged_bytes_ = bytes;
    logged_changes_ = n;
    return {};
  }

  // Inside Commit's transaction; rolls it back on failure.
  Status Prune() {
    sqlite3_stmt* s = change_prune_.get();
    sqlite3_reset(s);
    sqlite3_bind_int64(s, 1, prune_to_);
    GNOMON_RETURN_IF_ERROR(Step(s, "history log"));
    pruned_ = prune_to_;  // (if the transaction fails, the next one deletes them again)
    return {};
  }

  // Marks the oldest rows of the history log for deletion while the newer ones still hold the
  // budget: the log keeps at least that much of the newest changes, plus one row at most.
  void TrimHistoryLog() {
    while (!change_sizes_.empty() &&
           change_bytes_ - change_sizes_.front().second >= options_.history_log_bytes) {
      prune_to_ = change_sizes_.front().first;
      change_bytes_ -= change_sizes_.front().second;
      change_sizes_.pop_front();
    }
  }

  // The sizes of the changes kept from an earlier run (and those beyond the budget now).
  Status ReadHistoryLogSizes() {
    sqlite::Stmt sizes;
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "SELECT seq, bytes FROM shadow_changes ORDER BY seq", sizes));
    int rc;
    while ((rc = sqlite3_step(sizes.get())) == SQLITE_ROW) {
      auto bytes = static_cast<size_t>(sqlite3_column_int64(sizes.get(), 1));
      change_sizes_.emplace_back(sqlite3_column_int64(sizes.get(), 0), bytes);
      change_bytes_ += bytes;
    }
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "history log");
    }
    TrimHistoryLog();
    if (prune_to_ > 0) {  // a smaller budget than the last run's (or none): delete now
      GNOMON_RETURN_IF_ERROR(Exec(db_, "BEGIN IMMEDIATE"));
      GNOMON_RETURN_IF_ERROR(Prune());
      GNOMON_RETURN_IF_ERROR(Exec(db_, "COMMIT"));
    }
    return {};
  }

  // Inside Commit's transaction; rolls it back on failure.
  Status WriteCall(const Pending& p) {
    sqlite3_stmt* s = p.stored.empty() ? call_delete_.get() : call_upsert_.get();
    sqlite3_reset(s);
    sqlite::BindText(s, 1, p.name);
    if (!p.stored.empty()) {
      sqlite::BindText(s, 2, p.thing);
      sqlite::BindText(s, 3, p.stored);
    }
    return Step(s, "service call");
  }

  // Inside Commit's transaction; rolls it back on failure.
  Status WriteState(const Pending& p) {
    sqlite3_stmt* s = p.stored.empty() ? state_delete_.get() : state_upsert_.get();
    sqlite3_reset(s);
    if (p.stored.empty()) {
      sqlite::BindText(s, 1, p.thing);
      sqlite::BindText(s, 2, p.name);
    } else {
      sqlite::BindText(s, 1, p.name);
      sqlite::BindText(s, 2, p.thing);
      sqlite3_bind_int64(s, 3, p.row.version);
      sqlite::BindText(s, 4, p.stored);
      sqlite::BindText(s, 5, p.row.timers);
      sqlite3_bind_int64(s, 6, p.row.inactive_due);
      sqlite3_bind_int64(s, 7, p.row.next_due);
      sqlite::BindBlob(s, 8, p.row.windows);  // binary window states
      sqlite3_bind_int64(s, 9, p.row.window_due);
    }
    return Step(s, "rule state");
  }

  static constexpr int64_t kPruneRows = 64;  // history log rows (transactions) deleted at a time

  StoreOptions options_;
  sqlite::Db db_;
  sqlite::Stmt upsert_, call_upsert_, call_delete_, state_upsert_, state_delete_, change_insert_,
      change_prune_;
  mutable Mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Pending> queue_ GNOMON_GUARDED_BY(mu_);
  uint64_t queued_seq_ GNOMON_GUARDED_BY(mu_) = 0;
  uint64_t committed_seq_ GNOMON_GUARDED_BY(mu_) = 0;
  bool closing_ GNOMON_GUARDED_BY(mu_) = false;
  bool writer_waiting_ GNOMON_GUARDED_BY(mu_) = false;
  StoreStats stats_ GNOMON_GUARDED_BY(mu_);
  // Writer thread only: "thing\0name" → the newest epoch of a refused write of that shadow.
  std::unordered_map<std::string, uint64_t> refused_;
  // Writer thread only: the history log's rows (seq, bytes) within the budget, oldest first;
  // rows up to prune_to_ are beyond it, up to pruned_ deleted; this transaction's row.
  std::deque<std::pair<int64_t, size_t>> change_sizes_;
  size_t change_bytes_ = 0;
  int64_t prune_to_ = 0;
  int64_t pruned_ = 0;
  std::string log_;
  int64_t logged_seq_ = 0;
  size_t logged_bytes_ = 0;
  size_t logged_changes_ = 0;
  std::thread writer_;
};

ShadowStore::ShadowStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ShadowStore::~ShadowStore() = default;

Result<std::unique_ptr<ShadowStore>> ShadowStore::Open(StoreOptions options) {
  auto impl = std::make_unique<Impl>();
  GNOMON_RETURN_IF_ERROR(impl->Init(std::move(options)));
  return std::unique_ptr<ShadowStore>(new ShadowStore(std::move(impl)));
}

uint64_t ShadowStore::Write(std::string thing, std::string name, std::string stored, Done done,
                            uint64_t epoch, std::optional<ShadowChange> change) {
  Impl::Pending p{std::move(thing), std::move(name), std::move(stored), std::move(done)};
  p.epoch = epoch;
  if (impl_->logs_changes()) {
    p.change = std::move(change);
  }
  return impl_->Write(std::move(p));
}

uint64_t ShadowStore::committed() const { return impl_->committed(); }
uint64_t ShadowStore::queued_seq() const { return impl_->queued_seq(); }

void ShadowStore::WriteCall(std::string thing, std::string id, std::string stored, Done done) {
  Impl::Pending p{std::move(thing), std::move(id), std::move(stored), std::move(done)};
  p.call = true;
  impl_->Write(std::move(p));
}

uint64_t ShadowStore::WriteState(std::string rule, std::string device, RuleState state, Done done,
                                 uint64_t epoch) {
  Impl::Pending p{std::move(device), std::move(rule), std::move(state.json), std::move(done)};
  p.state = true;
  p.row = std::move(state);
  p.epoch = epoch;
  return impl_->Write(std::move(p));
}

void ShadowStore::After(Done done) {
  Impl::Pending p;
  p.done = std::move(done);
  p.barrier = true;
  impl_->Write(std::move(p));
}

void ShadowStore::Flush() { impl_->Flush(); }

Result<std::unique_ptr<ShadowStore::Reader>> ShadowStore::NewReader() {
  auto r = std::make_unique<SqliteReader>();
  GNOMON_RETURN_IF_ERROR(r->Init(impl_->path()));
  return std::unique_ptr<Reader>(std::move(r));
}

StoreStats ShadowStore::stats() const { return impl_->stats(); }
size_t ShadowStore::queued() const { return impl_->queued(); }
bool ShadowStore::WaitPendingAtMost(size_t n, std::chrono::milliseconds timeout) {
  return impl_->WaitPendingAtMost(n, timeout);
}

}  // namespace gnomon::shadow

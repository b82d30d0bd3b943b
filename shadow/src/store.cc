// SPDX-License-Identifier: Apache-2.0
#include "gnomon/shadow/store.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sqlite3.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

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
    "  stored TEXT NOT NULL)";

Status SqlError(sqlite3* db, std::string_view what) {
  return Unavailable(fmt::format("shadow store: {}: {}", what, sqlite3_errmsg(db)));
}

Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    Status s = Unavailable(fmt::format("shadow store: {}: {}", sql, err != nullptr ? err : "?"));
    sqlite3_free(err);
    return s;
  }
  return {};
}

Result<sqlite3*> OpenDb(const std::string& path, bool write) {
  sqlite3* db = nullptr;
  int flags = SQLITE_OPEN_NOMUTEX | (write ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
                                           : SQLITE_OPEN_READONLY);
  if (sqlite3_open_v2(path.c_str(), &db, flags, nullptr) != SQLITE_OK) {
    Status s = Unavailable(fmt::format("shadow store {}: {}", path,
                                       db != nullptr ? sqlite3_errmsg(db) : "cannot open"));
    sqlite3_close(db);
    return s;
  }
  sqlite3_busy_timeout(db, 5000);
  return db;
}

struct Stmt {
  sqlite3_stmt* s = nullptr;
  Stmt() = default;
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() { Reset(); }
  void Reset() {
    sqlite3_finalize(s);
    s = nullptr;
  }
};

Status Prepare(sqlite3* db, const char* sql, Stmt& st) {
  if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st.s, nullptr) != SQLITE_OK) {
    return SqlError(db, sql);
  }
  return {};
}

void Bind(sqlite3_stmt* s, int i, std::string_view v) {
  sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
}

std::string Column(sqlite3_stmt* s, int i) {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
  return p != nullptr ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(s, i)))
                      : std::string();
}

class SqliteReader final : public ShadowStore::Reader {
 public:
  ~SqliteReader() override {
    load_.Reset();
    names_.Reset();
    things_.Reset();
    calls_.Reset();
    sqlite3_close(db_);
  }

  Status Init(const std::string& path) {
    GNOMON_ASSIGN_OR_RETURN(db_, OpenDb(path, false));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "SELECT stored FROM shadows WHERE thing = ?1 AND name = ?2", load_));
    GNOMON_RETURN_IF_ERROR(Prepare(
        db_, "SELECT name FROM shadows WHERE thing = ?1 AND present = 1 ORDER BY name", names_));
    GNOMON_RETURN_IF_ERROR(Prepare(db_,
                                   "SELECT DISTINCT thing FROM shadows WHERE present = 1 AND "
                                   "thing > ?1 AND substr(thing, 1, length(?2)) = ?2 "
                                   "ORDER BY thing LIMIT ?3",
                                   things_));
    GNOMON_RETURN_IF_ERROR(
        Prepare(db_, "SELECT thing, stored FROM service_calls ORDER BY seq", calls_));
    return {};
  }

  Result<std::vector<std::pair<std::string, std::string>>> Calls() override {
    sqlite3_stmt* s = calls_.s;
    sqlite3_reset(s);
    std::vector<std::pair<std::string, std::string>> out;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      out.emplace_back(Column(s, 0), Column(s, 1));
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "calls");
    }
    return out;
  }

  Result<std::optional<std::string>> Load(std::string_view thing, std::string_view name) override {
    sqlite3_stmt* s = load_.s;
    sqlite3_reset(s);
    Bind(s, 1, thing);
    Bind(s, 2, name);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
      return std::optional<std::string>();
    }
    if (rc != SQLITE_ROW) {
      return SqlError(db_, "load");
    }
    std::optional<std::string> out = Column(s, 0);
    sqlite3_reset(s);
    return out;
  }

  Result<std::vector<std::string>> Names(std::string_view thing) override {
    sqlite3_stmt* s = names_.s;
    sqlite3_reset(s);
    Bind(s, 1, thing);
    return Rows(s);
  }

  Result<std::vector<std::string>> Things(std::string_view prefix, std::string_view after,
                                          size_t limit) override {
    sqlite3_stmt* s = things_.s;
    sqlite3_reset(s);
    Bind(s, 1, after);
    Bind(s, 2, prefix);
    sqlite3_bind_int64(s, 3, static_cast<int64_t>(limit));
    return Rows(s);
  }

 private:
  Result<std::vector<std::string>> Rows(sqlite3_stmt* s) {
    std::vector<std::string> out;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      out.push_back(Column(s, 0));
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      return SqlError(db_, "query");
    }
    return out;
  }

  sqlite3* db_ = nullptr;
  Stmt load_, names_, things_, calls_;
};

}  // namespace

class ShadowStore::Impl {
 public:
  struct Pending {
    std::string thing, name, stored;
    Done done;
    bool barrier = false;  // no write: only `done`, in order
    bool call = false;     // a service call: `name` is its id; empty `stored` deletes it
    uint64_t epoch = 0;    // of the writer's copy of the shadow (see ShadowStore::Write)
  };

  ~Impl() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    if (writer_.joinable()) {
      writer_.join();
    }
    upsert_.Reset();
    call_upsert_.Reset();
    call_delete_.Reset();
    sqlite3_close(db_);
  }

  Status Init(StoreOptions options) {
    options_ = std::move(options);
    GNOMON_ASSIGN_OR_RETURN(db_, OpenDb(options_.path, true));
    GNOMON_RETURN_IF_ERROR(Exec(db_, "PRAGMA journal_mode=WAL"));
    GNOMON_RETURN_IF_ERROR(
        Exec(db_, options_.sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"));
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
    writer_ = std::thread([this] { Run(); });
    return {};
  }

  uint64_t Write(Pending p) {
    bool wake;
    uint64_t seq;
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(p));
      seq = ++queued_seq_;
      wake = writer_waiting_;  // a busy writer takes this write with its next batch
    }
    if (wake) {
      cv_.notify_one();
    }
    return seq;
  }

  uint64_t committed() const {
    std::lock_guard lock(mu_);
    return committed_seq_;
  }

  void Flush() {
    std::unique_lock lock(mu_);
    uint64_t target = queued_seq_;
    done_cv_.wait(lock, [&] { return committed_seq_ >= target; });
  }

  StoreStats stats() const {
    std::lock_guard lock(mu_);
    return stats_;
  }
  size_t queued() const {
    std::lock_guard lock(mu_);
    return queue_.size();
  }
  const std::string& path() const { return options_.path; }

 private:
  void Run() {
    pthread_setname_np(pthread_self(), "gnomon-shadowdb");
    std::vector<Pending> batch;
    std::unordered_map<std::string_view, size_t> last;  // "thing\0name" → index in batch
    std::vector<std::string> keys;
    std::vector<bool> stale;
    while (true) {
      {
        std::unique_lock lock(mu_);
        writer_waiting_ = true;
        cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
        writer_waiting_ = false;
        if (queue_.empty()) {
          return;  // closing and drained
        }
        size_t n = std::min(queue_.size(), options_.max_batch);
        batch.reserve(n);
        for (size_t i = 0; i < n; ++i) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
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
        keys.push_back(batch[i].call ? '\1' + batch[i].name
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
      Status st = last.empty() ? Status() : Commit(batch, last);
      if (st.ok()) {
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
          p.done(stale[i] ? FailedPrecondition(
                                "an earlier write of this shadow could not be stored, and this "
                                "one was made on top of it")
                          : st);
        }
      }
      {
        std::lock_guard lock(mu_);
        stats_.transactions += last.empty() ? 0 : 1;
        stats_.writes += batch.size();
        stats_.rows += last.size();
        stats_.stale += stale_count;
        if (!st.ok()) {
          stats_.failures++;
        }
        committed_seq_ += batch.size();
      }
      done_cv_.notify_all();
      batch.clear();
    }
  }

  Status Commit(std::vector<Pending>& batch,
                const std::unordered_map<std::string_view, size_t>& last) {
    GNOMON_RETURN_IF_ERROR(Exec(db_, "BEGIN IMMEDIATE"));
    sqlite3_stmt* s = upsert_.s;
    for (const auto& [key, i] : last) {
      const Pending& p = batch[i];
      if (p.call) {
        GNOMON_RETURN_IF_ERROR(WriteCall(p));
        continue;
      }
      sqlite3_reset(s);
      Bind(s, 1, p.thing);
      Bind(s, 2, p.name);
      // The stored form starts with {"exists":1 or {"exists":0 (StoredJson's first field).
      bool present = p.stored.compare(0, 11, "{\"exists\":1") == 0;
      sqlite3_bind_int(s, 3, present ? 1 : 0);
      Bind(s, 4, p.stored);
      if (sqlite3_step(s) != SQLITE_DONE) {
        Status err = SqlError(db_, "write");
        sqlite3_reset(s);
        (void)Exec(db_, "ROLLBACK").ok();
        return err;
      }
    }
    sqlite3_reset(s);
    Status st = Exec(db_, "COMMIT");
    if (!st.ok()) {
      (void)Exec(db_, "ROLLBACK").ok();
    }
    return st;
  }

  // Inside Commit's transaction; rolls it back on failure.
  Status WriteCall(const Pending& p) {
    sqlite3_stmt* s = p.stored.empty() ? call_delete_.s : call_upsert_.s;
    sqlite3_reset(s);
    Bind(s, 1, p.name);
    if (!p.stored.empty()) {
      Bind(s, 2, p.thing);
      Bind(s, 3, p.stored);
    }
    if (sqlite3_step(s) != SQLITE_DONE) {
      Status err = SqlError(db_, "service call");
      sqlite3_reset(s);
      (void)Exec(db_, "ROLLBACK").ok();
      return err;
    }
    sqlite3_reset(s);
    return {};
  }

  StoreOptions options_;
  sqlite3* db_ = nullptr;
  Stmt upsert_, call_upsert_, call_delete_;
  mutable std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Pending> queue_;       // GUARDED_BY(mu_)
  uint64_t queued_seq_ = 0;         // GUARDED_BY(mu_)
  uint64_t committed_seq_ = 0;      // GUARDED_BY(mu_)
  bool closing_ = false;            // GUARDED_BY(mu_)
  bool writer_waiting_ = false;     // GUARDED_BY(mu_)
  StoreStats stats_;                // GUARDED_BY(mu_)
  // Writer thread only: "thing\0name" → the newest epoch of a refused write of that shadow.
  std::unordered_map<std::string, uint64_t> refused_;
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
                            uint64_t epoch) {
  Impl::Pending p{std::move(thing), std::move(name), std::move(stored), std::move(done)};
  p.epoch = epoch;
  return impl_->Write(std::move(p));
}

uint64_t ShadowStore::committed() const { return impl_->committed(); }

void ShadowStore::WriteCall(std::string thing, std::string id, std::string stored, Done done) {
  Impl::Pending p{std::move(thing), std::move(id), std::move(stored), std::move(done)};
  p.call = true;
  impl_->Write(std::move(p));
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

}  // namespace gnomon::shadow

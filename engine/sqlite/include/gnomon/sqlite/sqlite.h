// SPDX-License-Identifier: Apache-2.0
// gnomon's one wrapper of the SQLite C API: owning handles for a connection and a prepared
// statement, and the bind/column helpers. Internal: the shadow store, the outbox and the SQLite
// sink link it privately, so no public header of theirs exports <sqlite3.h>.
//
// A Db and its statements are used by one thread at a time (connections open with
// SQLITE_OPEN_NOMUTEX). Errors come back as Status naming the file or the statement.
#pragma once

#include <sqlite3.h>

#include <string>
#include <string_view>

#include "gnomon/core/status.h"

namespace gnomon::sqlite {

// A prepared statement; finalized when reset, replaced or destroyed.
class Stmt {
 public:
  Stmt() = default;
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt(Stmt&& o) noexcept : s_(o.s_) { o.s_ = nullptr; }
  Stmt& operator=(Stmt&& o) noexcept;
  ~Stmt() { Reset(); }
  void Reset();
  sqlite3_stmt* get() const { return s_; }
  // For sqlite3_prepare_*: finalizes what was held.
  sqlite3_stmt** out() {
    Reset();
    return &s_;
  }

 private:
  sqlite3_stmt* s_ = nullptr;
};

// A connection; closed when destroyed. Close() finalizes nothing: statements prepared on it
// must be reset first (sqlite3_close_v2 defers the close until they are).
class Db {
 public:
  enum class Mode { kReadWrite, kReadOnly };

  Db() = default;
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  ~Db() { Close(); }
  void Close();
  // kReadWrite creates the file. Waits up to 5 s for another connection's lock.
  Status Open(const std::string& path, Mode mode = Mode::kReadWrite);
  sqlite3* get() const { return db_; }
  std::string Error() const;

  // Unavailable naming the statement (its first 60 bytes) on failure.
  Status Exec(std::string_view sql);
  // A persistent prepared statement; InvalidArgument naming the statement on failure (a
  // statement built from configuration names a table or column that does not exist).
  Status Prepare(std::string_view sql, Stmt& out);

 private:
  sqlite3* db_ = nullptr;
};

// A text or blob column as bytes (valid until the statement steps or resets).
std::string_view ColumnText(sqlite3_stmt* s, int i);
// Bound without a copy: `v` must outlive the statement's next step.
void BindText(sqlite3_stmt* s, int i, std::string_view v);
void BindBlob(sqlite3_stmt* s, int i, std::string_view v);

}  // namespace gnomon::sqlite

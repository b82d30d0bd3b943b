// SPDX-License-Identifier: Apache-2.0
#include "gnomon/sqlite/sqlite.h"

#include <fmt/format.h>

namespace gnomon::sqlite {

Stmt& Stmt::operator=(Stmt&& o) noexcept {
  if (this != &o) {
    Reset();
    s_ = o.s_;
    o.s_ = nullptr;
  }
  return *this;
}

void Stmt::Reset() {
  if (s_ != nullptr) {
    sqlite3_finalize(s_);
    s_ = nullptr;
  }
}

void Db::Close() {
  if (db_ != nullptr) {
    sqlite3_close_v2(db_);
    db_ = nullptr;
  }
}

Status Db::Open(const std::string& path, Mode mode) {
  Close();
  int flags =
      SQLITE_OPEN_NOMUTEX | (mode == Mode::kReadWrite ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
                                                      : SQLITE_OPEN_READONLY);
  int rc = sqlite3_open_v2(path.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    Status s = Unavailable(fmt::format("open {}: {}", path,
                                       db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc)));
    Close();
    return s;
  }
  sqlite3_busy_timeout(db_, 5000);
  return {};
}

std::string Db::Error() const { return db_ != nullptr ? sqlite3_errmsg(db_) : "not open"; }

Status Db::Exec(std::string_view sql) {
  std::string s(sql);
  char* err = nullptr;
  if (sqlite3_exec(db_, s.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : Error();
    sqlite3_free(err);
    return Unavailable(fmt::format("{}: {}", sql.substr(0, 60), msg));
  }
  return {};
}

Status Db::Prepare(std::string_view sql, Stmt& out) {
  if (sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT,
                         out.out(), nullptr) != SQLITE_OK) {
    return InvalidArgument(fmt::format("prepare `{}`: {}", sql, Error()));
  }
  return {};
}

std::string_view ColumnText(sqlite3_stmt* s, int i) {
  const void* p = sqlite3_column_blob(s, i);
  int n = sqlite3_column_bytes(s, i);
  return p == nullptr ? std::string_view() : std::string_view(static_cast<const char*>(p), n);
}

void BindText(sqlite3_stmt* s, int i, std::string_view v) {
  sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
}

void BindBlob(sqlite3_stmt* s, int i, std::string_view v) {
  sqlite3_bind_blob(s, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
}

}  // namespace gnomon::sqlite

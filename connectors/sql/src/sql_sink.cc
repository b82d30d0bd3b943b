// SPDX-License-Identifier: Apache-2.0
// SQL sinks: records mapped to table rows by `columns` (record paths), written with prepared
// statements only, one transaction per batch, optional upsert on `key`, optional CREATE TABLE.
// A record whose values do not fit (a type mismatch, a constraint violation) is dead-lettered
// on its own; the rest of its batch is written. SQLite (embedded), PostgreSQL (libpq, in
// pipeline mode so a batch costs one round trip) and MariaDB / MySQL (mariadb.cc).
#include <fmt/format.h>
#include <libpq-fe.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <regex>

#include "gnomon/connectors/outbox.h"
#include "gnomon/connectors/record_fields.h"
#include "gnomon/connectors/sql.h"
#include "gnomon/core/factory.h"
#include "gnomon/core/json.h"
#include "gnomon/core/log.h"
#include "gnomon/core/path.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/sqlite/sqlite.h"
#include "sql_internal.h"

namespace gnomon::connectors {
namespace sql {

const char* TypeName(ColType t) {
  switch (t) {
    case ColType::kAuto: return "any";
    case ColType::kText: return "text";
    case ColType::kInteger: return "integer";
    case ColType::kReal: return "real";
    case ColType::kBoolean: return "boolean";
    case ColType::kJson: return "json";
  }
  return "?";
}

std::optional<ColType> ParseType(std::string_view s) {
  for (ColType t : {ColType::kText, ColType::kInteger, ColType::kReal, ColType::kBoolean,
                    ColType::kJson}) {
    if (s == TypeName(t)) {
      return t;
    }
  }
  return std::nullopt;
}

bool ValidIdentifier(std::string_view s, bool allow_schema) {
  static const std::regex plain("[A-Za-z_][A-Za-z0-9_]{0,62}");
  static const std::regex qualified("([A-Za-z_][A-Za-z0-9_]{0,62}\\.)?[A-Za-z_][A-Za-z0-9_]{0,62}");
  return std::regex_match(s.begin(), s.end(), allow_schema ? qualified : plain);
}

std::string Quote(std::string_view ident, Dialect d) {
  size_t dot = ident.find('.');
  if (dot != std::string_view::npos) {
    return Quote(ident.substr(0, dot), d) + "." + Quote(ident.substr(dot + 1), d);
  }
  // Identifiers are checked to be letters, digits and `_`, so neither quote can occur inside.
  return d == Dialect::kMariaDb ? fmt::format("`{}`", ident) : fmt::format("\"{}\"", ident);
}

Status Convert(const Column& c, FieldValue v, Cell& out) {
  out.null = v.kind == FieldValue::kMissing || v.kind == FieldValue::kNull;
  out.v = std::move(v);
  if (out.null || c.type == ColType::kAuto) {
    return {};
  }
  FieldValue& x = out.v;
  auto mismatch = [&] {
    std::string shown = x.Text().substr(0, 40);
    return InvalidArgument(fmt::format("column {} ({}): cannot store {} `{}` from {}", c.name,
                                       TypeName(c.type),
                                       x.kind == FieldValue::kString ? "string"
                                       : x.kind == FieldValue::kJson ? "object/array"
                                       : x.kind == FieldValue::kBool ? "boolean"
                                                                     : "number",
                                       shown, c.path.spec()));
  };
  switch (c.type) {
    case ColType::kInteger:
      if (x.kind == FieldValue::kDouble && std::isfinite(x.d) && x.d == std::floor(x.d) &&
          std::fabs(x.d) < 9.2e18) {
        x.kind = FieldValue::kInt;
        x.i = static_cast<int64_t>(x.d);
      }
      if (x.kind != FieldValue::kInt) {
        return mismatch();
      }
      break;
    case ColType::kReal:
      if (x.kind == FieldValue::kInt) {
        x.kind = FieldValue::kDouble;
        x.d = static_cast<double>(x.i);
      }
      if (x.kind != FieldValue::kDouble) {
        return mismatch();
      }
      break;
    case ColType::kBoolean:
      if (x.kind != FieldValue::kBool) {
        return mismatch();
      }
      break;
    case ColType::kText:
      if (x.kind == FieldValue::kJson) {
        return mismatch();
      }
      break;
    case ColType::kJson:
      if (x.kind == FieldValue::kString) {  // a JSON string value
        std::string quoted;
        json::AppendQuoted(quoted, x.s);
        x.s = quoted;
      } else {
        x.s = x.Text();
      }
      x.kind = FieldValue::kJson;
      break;
    case ColType::kAuto:
      break;
  }
  return {};
}

void MapBatch(const std::vector<Column>& columns, std::span<OutboxEntry* const> batch,
              RecordFields& fields, std::vector<std::vector<Cell>>& rows,
              std::vector<std::pair<size_t, Status>>& rejected) {
  rows.assign(batch.size(), {});
  for (size_t i = 0; i < batch.size(); ++i) {
    if (Status s = fields.Reset(batch[i]->record); !s.ok()) {
      rejected.emplace_back(i, s);
      continue;
    }
    rows[i].resize(columns.size());
    for (size_t c = 0; c < columns.size(); ++c) {
      if (Status s = Convert(columns[c], fields.Get(columns[c].path), rows[i][c]); !s.ok()) {
        rejected.emplace_back(i, s);
        rows[i].clear();
        break;
      }
    }
  }
}

void MergeRejected(std::vector<std::pair<size_t, Status>>& into,
                   std::vector<std::pair<size_t, Status>> more) {
  if (more.empty()) {
    return;
  }
  into.insert(into.end(), std::make_move_iterator(more.begin()),
              std::make_move_iterator(more.end()));
  std::sort(into.begin(), into.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
}

std::string InsertSql(const SqlSinkConfig& c, size_t rows) {
  const Dialect d = c.dialect;
  auto is_key = [&](const std::string& name) {
    return std::find(c.key.begin(), c.key.end(), name) != c.key.end();
  };
  std::string cols, params, updates;
  for (size_t i = 0; i < c.columns.size(); ++i) {
    std::string q = Quote(c.columns[i].name, d);
    cols += (i ? ", " : "") + q;
    params += (i ? ", " : "") + (d == Dialect::kPostgres ? fmt::format("${}", i + 1) : "?");
    if (!is_key(c.columns[i].name)) {
      updates += fmt::format("{}{} = ", updates.empty() ? "" : ", ", q);
      // VALUES(col) rather than MySQL 8's row alias: MariaDB knows only the former.
      updates += d == Dialect::kMariaDb ? fmt::format("VALUES({})", q) : "excluded." + q;
    }
  }
  std::string sql = fmt::format("INSERT INTO {} ({}) VALUES ({})", Quote(c.table, d), cols, params);
  for (size_t r = 1; r < rows; ++r) {
    sql += fmt::format(", ({})", params);
  }
  if (c.key.empty()) {
    return sql;
  }
  if (d == Dialect::kMariaDb) {
    // The key's own columns only: a no-op update keeps the row as it is (INSERT IGNORE would
    // also turn real errors into warnings).
    std::string first = Quote(c.key[0], d);
    return sql + " ON DUPLICATE KEY UPDATE " +
           (updates.empty() ? fmt::format("{} = {}", first, first) : updates);
  }
  std::string keys;
  for (size_t i = 0; i < c.key.size(); ++i) {
    keys += (i ? ", " : "") + Quote(c.key[i], d);
  }
  return sql + (updates.empty() ? fmt::format(" ON CONFLICT ({}) DO NOTHING", keys)
                                : fmt::format(" ON CONFLICT ({}) DO UPDATE SET {}", keys, updates));
}

namespace {
const char* ColumnType(const Column& col, bool in_key, Dialect d) {
  switch (d) {
    case Dialect::kSqlite:
      switch (col.type) {
        case ColType::kAuto:
          return "";
        case ColType::kText:
        case ColType::kJson:
          return "text";
        case ColType::kInteger:
        case ColType::kBoolean:
          return "integer";
        case ColType::kReal:
          return "real";
      }
      break;
    case Dialect::kPostgres:
      switch (col.type) {
        case ColType::kAuto:
        case ColType::kText:
          return "text";
        case ColType::kInteger:
          return "bigint";
        case ColType::kReal:
          return "double precision";
        case ColType::kBoolean:
          return "boolean";
        case ColType::kJson:
          return "jsonb";
      }
      break;
    case Dialect::kMariaDb:
      switch (col.type) {
        // A key column must have a length (InnoDB indexes at most 3072 bytes: three
        // VARCHAR(255) utf8mb4 columns).
        case ColType::kAuto:
        case ColType::kText:
          return in_key ? "varchar(255)" : "mediumtext";
        case ColType::kInteger:
          return "bigint";
        case ColType::kReal:
          return "double";
        case ColType::kBoolean:
          return "boolean";
        case ColType::kJson:
          return "json";
      }
      break;
  }
  return "";
}
}  // namespace

std::string CreateSql(const SqlSinkConfig& c) {
  const Dialect d = c.dialect;
  std::string body;
  for (const Column& col : c.columns) {
    bool in_key = std::find(c.key.begin(), c.key.end(), col.name) != c.key.end();
    body += fmt::format("{}{} {}", body.empty() ? "" : ", ", Quote(col.name, d),
                        ColumnType(col, in_key, d));
  }
  if (!c.key.empty()) {
    std::string keys;
    for (size_t i = 0; i < c.key.size(); ++i) {
      keys += (i ? ", " : "") + Quote(c.key[i], d);
    }
    body += fmt::format(", PRIMARY KEY ({})", keys);
  }
  std::string sql = fmt::format("CREATE TABLE IF NOT EXISTS {} ({})", Quote(c.table, d), body);
  if (d == Dialect::kMariaDb) {
    sql += " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";  // transactions: a batch is all or nothing
  }
  return sql;
}

namespace {

// ---- SQLite ------------------------------------------------------------------------------

class SqliteDestination final : public SyncDestination {
 public:
  SqliteDestination(SqlSinkConfig config, std::string name)
      : config_(std::move(config)), name_(std::move(name)) {}

  void Deliver(std::span<OutboxEntry* const> batch, Done done) override {
    if (!open_) {
      if (Status s = Open(); !s.ok()) {
        db_.Close();
        done(BatchResult::Retry(s));
        return;
      }
      open_ = true;
    }
    BatchResult result;
    MapBatch(config_.columns, batch, fields_, rows_, result.rejected);
    if (Status s = db_.Exec("BEGIN"); !s.ok()) {
      done(BatchResult::Retry(s));
      return;
    }
    sqlite3_stmt* st = insert_.get();
    std::vector<std::pair<size_t, Status>> rejected;
    size_t next_rejected = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (next_rejected < result.rejected.size() && result.rejected[next_rejected].first == i) {
        rejected.push_back(std::move(result.rejected[next_rejected++]));
        continue;
      }
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      const auto& row = rows_[i];
      for (size_t c = 0; c < row.size(); ++c) {
        int p = static_cast<int>(c) + 1;
        const Cell& cell = row[c];
        if (cell.null) {
          sqlite3_bind_null(st, p);
          continue;
        }
        switch (cell.v.kind) {
          case FieldValue::kBool: sqlite3_bind_int(st, p, cell.v.b ? 1 : 0); break;
          case FieldValue::kInt: sqlite3_bind_int64(st, p, cell.v.i); break;
          case FieldValue::kDouble: sqlite3_bind_double(st, p, cell.v.d); break;
          default: sqlite::BindText(st, p, cell.v.s); break;
        }
      }
      int rc = sqlite3_step(st);
      if (rc == SQLITE_DONE) {
        continue;
      }
      if ((rc & 0xff) == SQLITE_CONSTRAINT || (rc & 0xff) == SQLITE_MISMATCH ||
          (rc & 0xff) == SQLITE_TOOBIG) {
        // Only this statement was rolled back; the transaction goes on.
        rejected.emplace_back(i, InvalidArgument(fmt::format("{}: {}", config_.table, db_.Error())));
        continue;
      }
      Status s = Unavailable(fmt::format("insert into {}: {}", config_.table, db_.Error()));
      sqlite3_reset(st);
      (void)db_.Exec("ROLLBACK");
      done(BatchResult::Retry(s));
      return;
    }
    sqlite3_reset(st);
    if (Status s = db_.Exec("COMMIT"); !s.ok()) {
      (void)db_.Exec("ROLLBACK");
      done(BatchResult::Retry(s));
      return;
    }
    result.rejected = std::move(rejected);
    done(std::move(result));
  }

 private:
  Status Open() {
    std::error_code ec;
    auto parent = std::filesystem::path(config_.target).parent_path();
    if (!parent.empty()) {
      std::filesystem::create_directories(parent, ec);
    }
    GNOMON_RETURN_IF_ERROR(db_.Open(config_.target));
    GNOMON_RETURN_IF_ERROR(db_.Exec("PRAGMA journal_mode=WAL"));
    GNOMON_RETURN_IF_ERROR(db_.Exec("PRAGMA synchronous=FULL"));
    if (config_.create) {
      GNOMON_RETURN_IF_ERROR(db_.Exec(CreateSql(config_)));
    }
    return db_.Prepare(InsertSql(config_), insert_);
  }

  SqlSinkConfig config_;
  std::string name_;
  sqlite::Db db_;
  sqlite::Stmt insert_;
  bool open_ = false;
  RecordFields fields_;
  std::vector<std::vector<Cell>> rows_;
};

// ---- PostgreSQL --------------------------------------------------------------------------

struct PgResult {
  explicit PgResult(PGresult* r) : r(r) {}
  ~PgResult() { PQclear(r); }
  PgResult(const PgResult&) = delete;
  PgResult& operator=(const PgResult&) = delete;
  PGresult* r;
};

Oid TypeOid(ColType t) {
  switch (t) {
    case ColType::kText: return 25;
    case ColType::kInteger: return 20;
    case ColType::kReal: return 701;
    case ColType::kBoolean: return 16;
    case ColType::kJson: return 3802;
    case ColType::kAuto: return 0;  // the server infers it from the column
  }
  return 0;
}

// SQLSTATE classes that belong to one row (data exceptions, integrity constraints) rather than
// to the connection or the statement.
bool RowError(const char* sqlstate) {
  return sqlstate != nullptr &&
         (std::strncmp(sqlstate, "22", 2) == 0 || std::strncmp(sqlstate, "23", 2) == 0 ||
          std::strcmp(sqlstate, "42804") == 0);
}

class PostgresDestination final : public SyncDestination {
 public:
  PostgresDestination(SqlSinkConfig config, std::string name)
      : config_(std::move(config)), name_(std::move(name)) {
    for (const Column& c : config_.columns) {
      oids_.push_back(TypeOid(c.type));
    }
  }
  ~PostgresDestination() override { Disconnect(); }

  void Deliver(std::span<OutboxEntry* const> batch, Done done) override {
    if (Status s = Connect(); !s.ok()) {
      done(BatchResult::Retry(s));
      return;
    }
    BatchResult result;
    MapBatch(config_.columns, batch, fields_, rows_, result.rejected);
    std::vector<bool> skip(batch.size(), false);
    for (const auto& [i, s] : result.rejected) {
      skip[i] = true;
    }
    // Fast path: the whole batch in one pipelined transaction.
    Status s = Pipelined(skip);
    if (s.ok()) {
      done(std::move(result));
      return;
    }
    if (s.code() != StatusCode::kInvalidArgument) {
      Disconnect();  // a clean slate for the retry
      done(BatchResult::Retry(s));
      return;
    }
    // A row was refused: again row by row, each behind a savepoint, refusing only the rows the
    // server refuses.
    std::vector<std::pair<size_t, Status>> refused;
    s = RowByRow(skip, refused);
    if (!s.ok()) {
      Disconnect();
      done(BatchResult::Retry(s));
      return;
    }
    MergeRejected(result.rejected, std::move(refused));
    done(std::move(result));
  }

 private:
  Status Connect() {
    if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK) {
      return {};
    }
    Disconnect();
    const char* keys[] = {"dbname", "connect_timeout", "application_name", nullptr};
    const char* values[] = {config_.target.c_str(), "5", "gnomon", nullptr};
    conn_ = PQconnectdbParams(keys, values, 1);
    if (PQstatus(conn_) != CONNECTION_OK) {
      Status s = Unavailable(fmt::format("PostgreSQL: {}", Trim(PQerrorMessage(conn_))));
      Disconnect();
      return s;
    }
    if (config_.create) {
      PgResult r(PQexec(conn_, CreateSql(config_).c_str()));
      if (PQresultStatus(r.r) != PGRES_COMMAND_OK) {
        Status s = Unavailable(fmt::format("create table {}: {}", config_.table,
                                           Trim(PQresultErrorMessage(r.r))));
        Disconnect();
        return s;
      }
    }
    std::string sql = InsertSql(config_);
    PgResult r(PQprepare(conn_, "gnomon_insert", sql.c_str(), static_cast<int>(oids_.size()),
                         oids_.data()));
    if (PQresultStatus(r.r) != PGRES_COMMAND_OK) {
      Status s = Unavailable(fmt::format("prepare `{}`: {}", sql, Trim(PQresultErrorMessage(r.r))));
      Disconnect();
      return s;
    }
    log::Info("connected to PostgreSQL", {{"sink", name_}, {"table", config_.table}});
    return {};
  }

  void Disconnect() {
    if (conn_ != nullptr) {
      PQfinish(conn_);
      conn_ = nullptr;
    }
  }

  static std::string Trim(const char* s) {
    std::string out = s != nullptr ? s : "";
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) {
      out.pop_back();
    }
    return out;
  }

  // The parameters of row i as text (libpq's text format).
  void Params(size_t i, std::vector<std::string>& text, std::vector<const char*>& ptrs) {
    const auto& row = rows_[i];
    text.resize(row.size());
    ptrs.resize(row.size());
    for (size_t c = 0; c < row.size(); ++c) {
      if (row[c].null) {
        ptrs[c] = nullptr;
        continue;
      }
      text[c] = row[c].v.Text();
      ptrs[c] = text[c].c_str();
    }
  }

  Status SendRow(size_t i) {
    Params(i, text_, ptrs_);
    if (!PQsendQueryPrepared(conn_, "gnomon_insert", static_cast<int>(ptrs_.size()), ptrs_.data(),
                             nullptr, nullptr, 0)) {
      return Unavailable(fmt::format("PostgreSQL: {}", Trim(PQerrorMessage(conn_))));
    }
    return {};
  }

  // Every row in one pipeline (one round trip). kInvalidArgument when a row was refused (the
  // whole batch rolled back), kUnavailable for anything else.
  Status Pipelined(const std::vector<bool>& skip) {
    if (!PQenterPipelineMode(conn_)) {
      return Unavailable("PostgreSQL: cannot enter pipeline mode");
    }
    // No BEGIN/COMMIT: the statements up to the sync point are one implicit transaction,
    // committed at the sync, rolled back whole if any statement fails.
    Status sent;
    for (size_t i = 0; i < skip.size() && sent.ok(); ++i) {
      if (!skip[i]) {
        sent = SendRow(i);
      }
    }
    if (sent.ok() && !PQpipelineSync(conn_)) {
      sent = Unavailable(fmt::format("PostgreSQL: {}", Trim(PQerrorMessage(conn_))));
    }
    if (!sent.ok()) {
      PQexitPipelineMode(conn_);
      return sent;
    }
    // Results of each row (each followed by a null), then the sync point. After a refused row
    // the rest come back PGRES_PIPELINE_ABORTED.
    Status st;
    for (;;) {
      PGresult* r = PQgetResult(conn_);
      if (r == nullptr) {
        if (PQstatus(conn_) != CONNECTION_OK) {
          break;
        }
        continue;
      }
      PgResult hold(r);
      ExecStatusType es = PQresultStatus(r);
      if (es == PGRES_PIPELINE_SYNC) {
        break;
      }
      if (es == PGRES_FATAL_ERROR && st.ok()) {
        const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        std::string msg = Trim(PQresultErrorMessage(r));
        st = RowError(state) ? InvalidArgument(msg) : Unavailable(msg);
      }
      if (PQstatus(conn_) != CONNECTION_OK) {
        break;
      }
    }
    PQexitPipelineMode(conn_);
    if (PQstatus(conn_) != CONNECTION_OK) {
      return Unavailable(fmt::format("PostgreSQL: connection lost: {}", Trim(PQerrorMessage(conn_))));
    }
    return st;
  }

  Status Exec(const char* sql) {
    PgResult r(PQexec(conn_, sql));
    if (PQresultStatus(r.r) != PGRES_COMMAND_OK) {
      return Unavailable(fmt::format("{}: {}", sql, Trim(PQresultErrorMessage(r.r))));
    }
    return {};
  }

  Status RowByRow(const std::vector<bool>& skip, std::vector<std::pair<size_t, Status>>& refused) {
    GNOMON_RETURN_IF_ERROR(Exec("BEGIN"));
    for (size_t i = 0; i < skip.size(); ++i) {
      if (skip[i]) {
        continue;
      }
      GNOMON_RETURN_IF_ERROR(Exec("SAVEPOINT gnomon_row"));
      Params(i, text_, ptrs_);
      PgResult r(PQexecPrepared(conn_, "gnomon_insert", static_cast<int>(ptrs_.size()),
                                ptrs_.data(), nullptr, nullptr, 0));
      if (PQresultStatus(r.r) == PGRES_COMMAND_OK) {
        GNOMON_RETURN_IF_ERROR(Exec("RELEASE SAVEPOINT gnomon_row"));
        continue;
      }
      const char* state = PQresultErrorField(r.r, PG_DIAG_SQLSTATE);
      std::string msg = Trim(PQresultErrorMessage(r.r));
      if (!RowError(state)) {
        (void)Exec("ROLLBACK");
        return Unavailable(msg);
      }
      refused.emplace_back(i, InvalidArgument(fmt::format("{}: {}", config_.table, msg)));
      GNOMON_RETURN_IF_ERROR(Exec("ROLLBACK TO SAVEPOINT gnomon_row"));
    }
    return Exec("COMMIT");
  }

  SqlSinkConfig config_;
  std::string name_;
  PGconn* conn_ = nullptr;
  std::vector<Oid> oids_;
  RecordFields fields_;
  std::vector<std::vector<Cell>> rows_;
  std::vector<std::string> text_;
  std::vector<const char*> ptrs_;
};

// ---- config ------------------------------------------------------------------------------

class SqlSinkFactory final : public TypedSinkFactory<SqlSinkConfig> {
 public:
  std::string_view schema() const override { return "sinks/sql.json"; }

  void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const override {
    std::string url = cfg.GetString("url");
    bool pg = url.starts_with("postgresql://") || url.starts_with("postgres://");
    bool maria = IsMariaDbUrl(url);
    if (maria) {
      if (auto u = ParseMariaDbUrl(url); !u.ok()) {
        errors.Add(cfg.Get("url"), path + ".url", u.status().message());
      }
    } else if (!pg && !url.starts_with("sqlite://")) {
      errors.Add(cfg.Get("url"), path + ".url",
                 "must start with sqlite:// (a file), postgresql:// (a libpq URI) or mysql:// "
                 "(also mariadb://)");
    }
    if (!ValidIdentifier(cfg.GetString("table"), pg || maria)) {
      errors.Add(cfg.Get("table"), path + ".table",
                 "must be a plain SQL identifier (letters, digits, _; `schema.table` for "
                 "PostgreSQL, `database.table` for MySQL and MariaDB)");
    }
    std::vector<std::string> names;
    if (const ConfigValue* cols = cfg.Get("columns"); cols != nullptr && cols->is_map()) {
      for (const auto& [name, v] : cols->fields()) {
        std::string p = path + ".columns." + name;
        names.push_back(name);
        if (!ValidIdentifier(name, false)) {
          errors.Add(&v, p, "column names must be plain SQL identifiers (letters, digits, _)");
        }
        std::string spec = v.is_map() ? v.GetString("path") : v.scalar();
        if (auto fp = FieldPath::Parse(spec); !fp.ok()) {
          errors.Add(&v, v.is_map() ? p + ".path" : p, fp.status().message());
        }
      }
    }
    for (const std::string& k : cfg.GetStrings("key")) {
      if (std::find(names.begin(), names.end(), k) == names.end()) {
        errors.Add(cfg.Get("key"), path + ".key", fmt::format("`{}` is not one of the columns", k));
      }
    }
  }

  Result<SqlSinkConfig> Parse(const ConfigValue& cfg, const PluginContext& ctx) const override {
    SqlSinkConfig c;
    std::string url = cfg.GetString("url");
    c.dialect = url.starts_with("sqlite://") ? Dialect::kSqlite
                : IsMariaDbUrl(url)          ? Dialect::kMariaDb
                                             : Dialect::kPostgres;
    c.target = c.dialect == Dialect::kSqlite ? ResolvePath(ctx.base_dir, url.substr(9)) : url;
    if (c.dialect == Dialect::kMariaDb) {
      GNOMON_ASSIGN_OR_RETURN(c.mariadb, ParseMariaDbUrl(url));
    }
    c.table = cfg.GetString("table");
    if (const ConfigValue* cols = cfg.Get("columns"); cols != nullptr && cols->is_map()) {
      for (const auto& [name, v] : cols->fields()) {
        Column col;
        col.name = name;
        GNOMON_ASSIGN_OR_RETURN(col.path,
                                FieldPath::Parse(v.is_map() ? v.GetString("path") : v.scalar()));
        if (v.is_map() && v.Get("type") != nullptr) {
          col.type = ParseType(v.GetString("type")).value_or(ColType::kAuto);
        }
        c.columns.push_back(std::move(col));
      }
    }
    c.key = cfg.GetStrings("key");
    c.create = cfg.GetBool("create", false);
    OutboxConfig defaults;
    // A local SQLite file needs no outbox in front of it.
    defaults.durable = c.dialect != Dialect::kSqlite;
    defaults.lanes = 1;             // one connection, rows in record order
    defaults.max_batch = 1000;
    defaults.max_batch_bytes = 16 << 20;
    defaults.max_attempts = 0;      // a database that is down is waited for (max_age applies)
    c.outbox = ParseOutboxConfig(cfg, defaults);
    return c;
  }

  Result<std::unique_ptr<Sink>> CreateTyped(SqlSinkConfig c, PluginContext& ctx) override {
    OutboxConfig oc = c.outbox;
    std::unique_ptr<Destination> dest;
    switch (c.dialect) {
      case Dialect::kPostgres:
        dest = std::make_unique<PostgresDestination>(std::move(c), ctx.name);
        break;
      case Dialect::kMariaDb:
        dest = NewMariaDbDestination(std::move(c), ctx.name);
        break;
      case Dialect::kSqlite:
        dest = std::make_unique<SqliteDestination>(std::move(c), ctx.name);
        break;
    }
    return NewOutboxSink(oc, std::move(dest), ctx);
  }
};

}  // namespace
}  // namespace sql

void RegisterSqlConnector(Registry& registry) {
  registry.AddSink("sql", std::make_unique<sql::SqlSinkFactory>());
}

}  // namespace gnomon::connectors

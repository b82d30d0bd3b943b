// SPDX-License-Identifier: Apache-2.0
// What the SQL sink's destinations share: the parsed config, mapping records to typed cells,
// and the INSERT / CREATE TABLE text for each dialect. Private to connector_sql.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gnomon/connectors/outbox.h"
#include "gnomon/connectors/record_fields.h"
#include "gnomon/core/status.h"

namespace gnomon::connectors::sql {

enum class Dialect { kSqlite, kPostgres, kMariaDb };

enum class ColType { kAuto, kText, kInteger, kReal, kBoolean, kJson };

struct Column {
  std::string name;
  FieldPath path;
  ColType type = ColType::kAuto;
};

// mysql://[user[:password]@]host[:port][/database][?option=value&...] (or mariadb://). User and
// password are percent-decoded. Options: ssl-mode (disabled, required, verify-ca,
// verify-identity), ssl-ca, ssl-cert, ssl-key, socket, connect-timeout (seconds), bulk (auto:
// bulk executions when the server has them; off: multi-row INSERTs, as for MySQL servers).
struct MariaDbUrl {
  std::string user;
  std::string password;
  std::string host = "localhost";
  unsigned port = 3306;
  std::string database;
  std::string socket;
  enum class Tls { kDisabled, kRequired, kVerifyCa, kVerifyIdentity } tls = Tls::kDisabled;
  std::string ssl_ca, ssl_cert, ssl_key;
  unsigned connect_timeout_s = 5;
  bool bulk = true;
};

struct SqlSinkConfig {
  Dialect dialect = Dialect::kSqlite;
  std::string target;  // SQLite file path, or the server's URL
  MariaDbUrl mariadb;  // kMariaDb: `target` parsed
  std::string table;
  std::vector<Column> columns;
  std::vector<std::string> key;
  bool create = false;
  OutboxConfig outbox;
};

const char* TypeName(ColType t);
std::optional<ColType> ParseType(std::string_view s);

// Letters, digits and `_`, at most 63; with `allow_schema`, one `schema.` (or `database.`) in
// front.
bool ValidIdentifier(std::string_view s, bool allow_schema);

// The identifier quoted for the dialect ("x" or `x`), each part of `a.b` on its own.
std::string Quote(std::string_view ident, Dialect d);

// A record's value for one column, checked against the column's type.
struct Cell {
  bool null = true;
  FieldValue v;
};

Status Convert(const Column& c, FieldValue v, Cell& out);

// Maps every record of a batch to cells; rejects (index, why) those that do not map, in index
// order, leaving their row empty.
void MapBatch(const std::vector<Column>& columns, std::span<OutboxEntry* const> batch,
              RecordFields& fields, std::vector<std::vector<Cell>>& rows,
              std::vector<std::pair<size_t, Status>>& rejected);

// Adds `more` to `into`, keeping (batch index, why) pairs in index order.
void MergeRejected(std::vector<std::pair<size_t, Status>>& into,
                   std::vector<std::pair<size_t, Status>> more);

// INSERT with one parameter per column; an upsert on `key` when it is set. `rows` > 1 (MariaDB
// only): that many parenthesised rows of parameters.
std::string InsertSql(const SqlSinkConfig& c, size_t rows = 1);
// CREATE TABLE IF NOT EXISTS from the columns, `key` as the primary key.
std::string CreateSql(const SqlSinkConfig& c);

// ---- MariaDB / MySQL (mariadb.cc) ---------------------------------------------------------

bool IsMariaDbUrl(std::string_view url);
Result<MariaDbUrl> ParseMariaDbUrl(std::string_view url);

std::unique_ptr<Destination> NewMariaDbDestination(SqlSinkConfig config, std::string name);

}  // namespace gnomon::connectors::sql

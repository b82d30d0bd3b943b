// SPDX-License-Identifier: Apache-2.0
// The SQL sink's MariaDB / MySQL destination (MariaDB Connector/C). A batch is one transaction:
// against MariaDB its rows go as one bulk execution of the prepared INSERT (array binding, one
// round trip per chunk); a MySQL server has no bulk protocol and gets one execution per row in
// the same transaction. When the server refuses a row, the transaction is rolled back and the
// batch is written again row by row, so only the refused rows are dead-lettered (InnoDB rolls
// back just the failing statement).
#include <fmt/format.h>
#include <mysql.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <charconv>
#include <cstring>
#include <mutex>

#include "gnomon/core/log.h"
#include "sql_internal.h"

namespace gnomon::connectors::sql {

bool IsMariaDbUrl(std::string_view url) {
  return url.starts_with("mysql://") || url.starts_with("mariadb://");
}

namespace {

bool PercentDecode(std::string_view in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    unsigned v = 0;
    if (i + 2 >= in.size()) {
      return false;
    }
    auto [p, ec] = std::from_chars(in.data() + i + 1, in.data() + i + 3, v, 16);
    if (ec != std::errc() || p != in.data() + i + 3) {
      return false;
    }
    out += static_cast<char>(v);
    i += 2;
  }
  return true;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

}  // namespace

Result<MariaDbUrl> ParseMariaDbUrl(std::string_view url) {
  MariaDbUrl u;
  size_t scheme = url.find("://");
  if (!IsMariaDbUrl(url) || scheme == std::string_view::npos) {
    return InvalidArgument("must start with mysql:// or mariadb://");
  }
  std::string_view rest = url.substr(scheme + 3);
  std::string_view query;
  if (size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  // The last `@` ends the credentials, so a password may hold `@` or `/` (better percent-encoded).
  if (size_t at = rest.rfind('@'); at != std::string_view::npos) {
    std::string_view auth = rest.substr(0, at);
    rest = rest.substr(at + 1);
    size_t colon = auth.find(':');
    if (!PercentDecode(auth.substr(0, colon), u.user) ||
        (colon != std::string_view::npos && !PercentDecode(auth.substr(colon + 1), u.password))) {
      return InvalidArgument("bad percent-encoding in the user or password");
    }
  }
  std::string_view hostport = rest;
  if (size_t slash = rest.find('/'); slash != std::string_view::npos) {
    hostport = rest.substr(0, slash);
    if (!PercentDecode(rest.substr(slash + 1), u.database)) {
      return InvalidArgument("bad percent-encoding in the database name");
    }
    for (unsigned char c : u.database) {
      if (!std::isalnum(c) && c != '_' && c != '$' && c != '-') {
        return InvalidArgument(
            fmt::format("database `{}`: only letters, digits, _, $ and - are allowed", u.database));
      }
    }
  }
  std::string_view host = hostport, port;
  if (hostport.starts_with('[')) {  // [v6 address]:port
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) {
      return InvalidArgument("an IPv6 host needs its closing ]");
    }
    host = hostport.substr(1, close - 1);
    std::string_view after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') {
        return InvalidArgument("expected :port after the IPv6 host");
      }
      port = after.substr(1);
    }
  } else if (size_t colon = hostport.rfind(':'); colon != std::string_view::npos) {
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
  }
  if (!host.empty()) {
    u.host = std::string(host);
  }
  if (!port.empty()) {
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), u.port);
    if (ec != std::errc() || p != port.data() + port.size() || u.port == 0 || u.port > 65535) {
      return InvalidArgument(fmt::format("port `{}` is not a number from 1 to 65535", port));
    }
  }
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (item.empty()) {
      continue;
    }
    size_t eq = item.find('=');
    std::string key = Lower(item.substr(0, eq));
    std::string value;
    if (eq == std::string_view::npos || !PercentDecode(item.substr(eq + 1), value)) {
      return InvalidArgument(fmt::format("option `{}` needs a value (`{}=...`)", key, key));
    }
    if (key == "ssl-mode" || key == "sslmode") {
      std::string v = Lower(value);
      std::replace(v.begin(), v.end(), '_', '-');
      if (v == "disabled" || v == "disable") {
        u.tls = MariaDbUrl::Tls::kDisabled;
      } else if (v == "required" || v == "require") {
        u.tls = MariaDbUrl::Tls::kRequired;
      } else if (v == "verify-ca") {
        u.tls = MariaDbUrl::Tls::kVerifyCa;
      } else if (v == "verify-identity" || v == "verify-full") {
        u.tls = MariaDbUrl::Tls::kVerifyIdentity;
      } else {
        return InvalidArgument(fmt::format(
            "ssl-mode `{}`: one of disabled, required, verify-ca, verify-identity", value));
      }
    } else if (key == "ssl-ca") {
      u.ssl_ca = value;
    } else if (key == "ssl-cert") {
      u.ssl_cert = value;
    } else if (key == "ssl-key") {
      u.ssl_key = value;
    } else if (key == "bulk") {
      std::string v = Lower(value);
      if (v != "auto" && v != "off") {
        return InvalidArgument(fmt::format("bulk `{}`: auto or off", value));
      }
      u.bulk = v == "auto";
    } else if (key == "socket") {
      u.socket = value;
    } else if (key == "connect-timeout") {
      auto [p, ec] =
          std::from_chars(value.data(), value.data() + value.size(), u.connect_timeout_s);
      if (ec != std::errc() || p != value.data() + value.size() || u.connect_timeout_s == 0 ||
          u.connect_timeout_s > 3600) {
        return InvalidArgument(fmt::format("connect-timeout `{}`: seconds, 1 to 3600", value));
      }
    } else {
      return InvalidArgument(
          fmt::format("unknown option `{}` (known: ssl-mode, ssl-ca, ssl-cert, ssl-key, socket, "
                      "connect-timeout, bulk)",
                      key));
    }
  }
  if (u.ssl_cert.empty() != u.ssl_key.empty()) {
    return InvalidArgument("ssl-cert and ssl-key go together");
  }
  if (u.tls == MariaDbUrl::Tls::kVerifyCa && u.ssl_ca.empty()) {
    return InvalidArgument("ssl-mode verify-ca needs ssl-ca (the CA file to verify against)");
  }
  return u;
}

namespace {

// Errors that belong to one row (a value that does not fit its column, a constraint): the
// server rolled back only that statement. SQLSTATE classes 22 and 23 and the conversion errors
// MySQL reports as HY000.
bool RowError(unsigned err, const char* sqlstate) {
  if (sqlstate != nullptr &&
      (std::strncmp(sqlstate, "22", 2) == 0 || std::strncmp(sqlstate, "23", 2) == 0)) {
    return true;
  }
  switch (err) {
    case 1048:  // ER_BAD_NULL_ERROR
    case 1062:  // ER_DUP_ENTRY (a unique key other than `key`)
    case 1264:  // ER_WARN_DATA_OUT_OF_RANGE
    case 1265:  // WARN_DATA_TRUNCATED
    case 1292:  // ER_TRUNCATED_WRONG_VALUE
    case 1300:  // ER_INVALID_CHARACTER_STRING
    case 1364:  // ER_NO_DEFAULT_FOR_FIELD
    case 1365:  // ER_DIVISION_BY_ZERO
    case 1366:  // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
    case 1367:  // ER_ILLEGAL_VALUE_FOR_TYPE
    case 1406:  // ER_DATA_TOO_LONG
    case 1411:  // ER_WRONG_VALUE_FOR_TYPE
    case 1451:  // ER_ROW_IS_REFERENCED_2
    case 1452:  // ER_NO_REFERENCED_ROW_2
    case 1690:  // ER_DATA_OUT_OF_RANGE
    case 1977:  // ER_CANNOT_CONVERT_CHARACTER
    case 3140:  // MySQL ER_INVALID_JSON_TEXT
    case 3819:  // MySQL ER_CHECK_CONSTRAINT_VIOLATED
    case 4025:  // MariaDB ER_CONSTRAINT_FAILED
      return true;
    default:
      return false;
  }
}

enum class Bind { kString, kLongLong, kDouble, kTiny };

Bind BindOf(ColType t) {
  switch (t) {
    case ColType::kInteger:
      return Bind::kLongLong;
    case ColType::kReal:
      return Bind::kDouble;
    case ColType::kBoolean:
      return Bind::kTiny;
    default:
      return Bind::kString;
  }
}

// One column's values for the rows being written, in the layouts Connector/C reads: arrays
// indexed by row (bulk, column-wise binding) or one element of them (a single execution).
struct ColumnValues {
  Bind bind = Bind::kString;
  std::vector<const char*> ptrs;
  std::vector<unsigned long> lens;
  std::vector<char> ind;  // STMT_INDICATOR_NONE / _NULL; also a my_bool is_null
  std::vector<long long> ints;
  std::vector<double> doubles;
  std::vector<signed char> tinys;
};

class MariaDbDestination final : public SyncDestination {
 public:
  MariaDbDestination(SqlSinkConfig config, std::string name)
      : config_(std::move(config)), name_(std::move(name)), url_(config_.mariadb) {
    static std::once_flag init;
    std::call_once(init, [] { mysql_library_init(0, nullptr, nullptr); });
    values_.resize(config_.columns.size());
    for (size_t c = 0; c < config_.columns.size(); ++c) {
      values_[c].bind = BindOf(config_.columns[c].type);
    }
    binds_.resize(config_.columns.size());
  }
  ~MariaDbDestination() override { Disconnect(); }

  void Deliver(std::span<OutboxEntry* const> batch, Done done) override {
    if (Status s = Connect(); !s.ok()) {
      done(BatchResult::Retry(s));
      return;
    }
    BatchResult result;
    MapBatch(config_.columns, batch, fields_, rows_, result.rejected);
    Collect(batch.size(), result.rejected);
    Status s = bulk_ ? WriteBulk() : WriteValues();
    if (s.ok()) {
      s = Commit();
      if (s.ok()) {
        done(std::move(result));
        return;
      }
    }
    if (s.code() != StatusCode::kInvalidArgument) {
      Disconnect();  // a clean slate for the retry
      done(BatchResult::Retry(s));
      return;
    }
    // A refused row: again one execution per row in a new transaction.
    mysql_rollback(conn_);
    std::vector<std::pair<size_t, Status>> refused;
    if (s = RowByRow(refused); s.ok()) {
      s = Commit();
    }
    if (!s.ok()) {
      Disconnect();
      done(BatchResult::Retry(s));
      return;
    }
    MergeRejected(result.rejected, std::move(refused));
    done(std::move(result));
  }

 private:
  std::string Where() const {
    return url_.socket.empty() ? fmt::format("{}:{}", url_.host, url_.port) : url_.socket;
  }

  Status ConnError(std::string_view what) const {
    return Unavailable(fmt::format("MariaDB/MySQL {} ({}): {} (error {})", what, Where(),
                                   mysql_error(conn_), mysql_errno(conn_)));
  }

  static Status StmtError(MYSQL_STMT* st, std::string_view what) {
    unsigned err = mysql_stmt_errno(st);
    std::string msg = fmt::format("{}: {} (error {})", what, mysql_stmt_error(st), err);
    return RowError(err, mysql_stmt_sqlstate(st)) ? InvalidArgument(msg) : Unavailable(msg);
  }
  Status StmtError(std::string_view what) const { return StmtError(stmt_, what); }

  Status Query(const std::string& sql) {
    if (mysql_real_query(conn_, sql.data(), sql.size()) != 0) {
      return ConnError(sql.substr(0, 60));
    }
    if (MYSQL_RES* r = mysql_store_result(conn_); r != nullptr) {
      mysql_free_result(r);
    }
    return {};
  }

  Status Connect() {
    if (conn_ != nullptr) {
      return {};
    }
    conn_ = mysql_init(nullptr);
    if (conn_ == nullptr) {
      return ResourceExhausted("MariaDB/MySQL: out of memory");
    }
    unsigned connect_timeout = url_.connect_timeout_s, io_timeout = 60;
    mysql_optionsv(conn_, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
    mysql_optionsv(conn_, MYSQL_OPT_READ_TIMEOUT, &io_timeout);
    mysql_optionsv(conn_, MYSQL_OPT_WRITE_TIMEOUT, &io_timeout);
    mysql_optionsv(conn_, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    if (url_.tls != MariaDbUrl::Tls::kDisabled) {
      my_bool enforce = 1;
      my_bool verify = url_.tls != MariaDbUrl::Tls::kRequired;
      mysql_optionsv(conn_, MYSQL_OPT_SSL_ENFORCE, &enforce);
      mysql_optionsv(conn_, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify);
      if (!url_.ssl_ca.empty()) {
        mysql_optionsv(conn_, MYSQL_OPT_SSL_CA, url_.ssl_ca.c_str());
      }
      if (!url_.ssl_cert.empty()) {
        mysql_optionsv(conn_, MYSQL_OPT_SSL_CERT, url_.ssl_cert.c_str());
        mysql_optionsv(conn_, MYSQL_OPT_SSL_KEY, url_.ssl_key.c_str());
      }
    }
    if (mysql_real_connect(conn_, url_.host.c_str(), url_.user.c_str(), url_.password.c_str(),
                           url_.database.empty() ? nullptr : url_.database.c_str(), url_.port,
                           url_.socket.empty() ? nullptr : url_.socket.c_str(), 0) == nullptr) {
      Status s = ConnError("connect");
      Disconnect();
      return s;
    }
    Status s = Setup();
    if (!s.ok()) {
      Disconnect();
      return s;
    }
    log::Info("connected to MariaDB/MySQL", {{"sink", name_},
                                             {"table", config_.table},
                                             {"server", mysql_get_server_info(conn_)},
                                             {"bulk", bulk_ ? "yes" : "no"}});
    return {};
  }

  Status Setup() {
    // A value that does not fit is an error, never silently cut or zeroed (non-strict servers).
    GNOMON_RETURN_IF_ERROR(
        Query("SET SESSION sql_mode = TRIM(BOTH ',' FROM CONCAT(@@SESSION.sql_mode, "
              "',STRICT_ALL_TABLES'))"));
    if (mysql_autocommit(conn_, 0) != 0) {
      return ConnError("autocommit off");
    }
    max_packet_ = 16 << 20;
    if (mysql_query(conn_, "SELECT @@max_allowed_packet") == 0) {
      if (MYSQL_RES* r = mysql_store_result(conn_); r != nullptr) {
        if (MYSQL_ROW row = mysql_fetch_row(r); row != nullptr && row[0] != nullptr) {
          max_packet_ = std::strtoull(row[0], nullptr, 10);
        }
        mysql_free_result(r);
      }
    }
    if (config_.create) {
      if (Status s = Query(CreateSql(config_)); !s.ok()) {
        return Unavailable(fmt::format("create table {}: {}", config_.table, s.message()));
      }
    }
    GNOMON_RETURN_IF_ERROR(Prepare(1, stmt_));
    // MariaDB 10.2+ announces bulk execution; MySQL servers (CLIENT_MYSQL) have none.
    unsigned long caps = 0, ext_caps = 0;
    mariadb_get_infov(conn_, MARIADB_CONNECTION_SERVER_CAPABILITIES, &caps);
    mariadb_get_infov(conn_, MARIADB_CONNECTION_EXTENDED_SERVER_CAPABILITIES, &ext_caps);
    bulk_ = url_.bulk && (caps & CLIENT_MYSQL) == 0 &&
            (ext_caps & (MARIADB_CLIENT_STMT_BULK_OPERATIONS >> 32)) != 0;
    return {};
  }

  // The INSERT for `rows` rows (VALUES (?, ...), (?, ...), ...), prepared.
  Status Prepare(size_t rows, MYSQL_STMT*& st) {
    st = mysql_stmt_init(conn_);
    std::string sql = InsertSql(config_, rows);
    if (st == nullptr || mysql_stmt_prepare(st, sql.data(), sql.size()) != 0) {
      return st == nullptr
                 ? ConnError("statement")
                 : Unavailable(fmt::format("prepare `{}`: {} (error {})", sql.substr(0, 200),
                                           mysql_stmt_error(st), mysql_stmt_errno(st)));
    }
    return {};
  }

  void Disconnect() {
    for (MYSQL_STMT*& st : multi_) {
      if (st != nullptr) {
        mysql_stmt_close(st);
        st = nullptr;
      }
    }
    if (stmt_ != nullptr) {
      mysql_stmt_close(stmt_);
      stmt_ = nullptr;
    }
    if (conn_ != nullptr) {
      mysql_close(conn_);
      conn_ = nullptr;
    }
  }

  Status Commit() {
    if (mysql_commit(conn_) != 0) {
      return ConnError("commit");
    }
    return {};
  }

  // Lays out the rows that mapped (all but `rejected`) column by column; a row too large for
  // one packet is refused here, as the server would close the connection over it.
  void Collect(size_t n, std::vector<std::pair<size_t, Status>>& rejected) {
    live_.clear();
    row_bytes_.clear();
    for (ColumnValues& v : values_) {
      v.ptrs.clear();
      v.lens.clear();
      v.ind.clear();
      v.ints.clear();
      v.doubles.clear();
      v.tinys.clear();
    }
    std::vector<std::pair<size_t, Status>> too_big;
    size_t next = 0;
    for (size_t i = 0; i < n; ++i) {
      if (next < rejected.size() && rejected[next].first == i) {
        ++next;
        continue;
      }
      size_t bytes = 16;
      for (size_t c = 0; c < values_.size(); ++c) {
        Cell& cell = rows_[i][c];
        bytes += 9;
        if (!cell.null && values_[c].bind == Bind::kString) {
          if (cell.v.kind == FieldValue::kBool) {
            cell.v.s.assign(1, cell.v.b ? '1' : '0');  // MySQL booleans are integers
          } else if (cell.v.kind != FieldValue::kString && cell.v.kind != FieldValue::kJson) {
            cell.v.s = cell.v.Text();
          }
          bytes += cell.v.s.size();
        }
      }
      if (bytes + 1024 > max_packet_) {
        too_big.emplace_back(
            i, InvalidArgument(fmt::format("{}: a row of {} bytes is over the server's "
                                           "max_allowed_packet ({} bytes)",
                                           config_.table, bytes, max_packet_)));
        continue;
      }
      live_.push_back(i);
      row_bytes_.push_back(bytes);
      for (size_t c = 0; c < values_.size(); ++c) {
        const Cell& cell = rows_[i][c];
        ColumnValues& v = values_[c];
        v.ind.push_back(cell.null ? STMT_INDICATOR_NULL : STMT_INDICATOR_NONE);
        switch (v.bind) {
          case Bind::kString:
            v.ptrs.push_back(cell.null ? "" : cell.v.s.data());
            v.lens.push_back(cell.null ? 0 : cell.v.s.size());
            break;
          case Bind::kLongLong:
            v.ints.push_back(cell.null ? 0 : cell.v.i);
            break;
          case Bind::kDouble:
            v.doubles.push_back(cell.null ? 0 : cell.v.d);
            break;
          case Bind::kTiny:
            v.tinys.push_back(cell.null ? 0 : (cell.v.b ? 1 : 0));
            break;
        }
      }
    }
    MergeRejected(rejected, std::move(too_big));
  }

  static enum_field_types FieldType(Bind b) {
    switch (b) {
      case Bind::kLongLong:
        return MYSQL_TYPE_LONGLONG;
      case Bind::kDouble:
        return MYSQL_TYPE_DOUBLE;
      case Bind::kTiny:
        return MYSQL_TYPE_TINY;
      case Bind::kString:
        break;
    }
    return MYSQL_TYPE_STRING;
  }

  // Binds rows [first, first + n) of live_ as arrays (bulk).
  Status BindArrays(size_t first, unsigned n) {
    for (size_t c = 0; c < values_.size(); ++c) {
      ColumnValues& v = values_[c];
      MYSQL_BIND& b = binds_[c];
      std::memset(&b, 0, sizeof(b));
      b.buffer_type = FieldType(v.bind);
      b.u.indicator = v.ind.data() + first;
      switch (v.bind) {
        case Bind::kString:
          b.buffer = const_cast<const char**>(v.ptrs.data() + first);
          b.length = v.lens.data() + first;
          break;
        case Bind::kLongLong:
          b.buffer = v.ints.data() + first;
          break;
        case Bind::kDouble:
          b.buffer = v.doubles.data() + first;
          break;
        case Bind::kTiny:
          b.buffer = v.tinys.data() + first;
          break;
      }
    }
    if (mysql_stmt_attr_set(stmt_, STMT_ATTR_ARRAY_SIZE, &n) != 0 ||
        mysql_stmt_bind_param(stmt_, binds_.data()) != 0) {
      return StmtError("bind");
    }
    return {};
  }

  // Points `b` at live row k's value of column c (a single execution's layout).
  void BindCell(MYSQL_BIND& b, size_t k, size_t c) {
    ColumnValues& v = values_[c];
    std::memset(&b, 0, sizeof(b));
    b.buffer_type = FieldType(v.bind);
    b.is_null = reinterpret_cast<my_bool*>(&v.ind[k]);
    switch (v.bind) {
      case Bind::kString:
        b.buffer = const_cast<char*>(v.ptrs[k]);
        b.buffer_length = v.lens[k];
        b.length = &v.lens[k];
        break;
      case Bind::kLongLong:
        b.buffer = &v.ints[k];
        break;
      case Bind::kDouble:
        b.buffer = &v.doubles[k];
        break;
      case Bind::kTiny:
        b.buffer = &v.tinys[k];
        break;
    }
  }

  // Binds live_[k] alone (a single execution).
  Status BindRow(size_t k) {
    unsigned zero = 0;
    for (size_t c = 0; c < values_.size(); ++c) {
      BindCell(binds_[c], k, c);
    }
    if (mysql_stmt_attr_set(stmt_, STMT_ATTR_ARRAY_SIZE, &zero) != 0 ||
        mysql_stmt_bind_param(stmt_, binds_.data()) != 0) {
      return StmtError("bind");
    }
    return {};
  }

  // Without bulk execution (MySQL, or `bulk=off`): multi-row INSERTs of 2^j rows (at most
  // kMaxValuesRows, at most 65535 parameters, at most half a packet), each prepared once.
  Status WriteValues() {
    static constexpr size_t kMaxValuesRows = 128;
    const size_t budget = std::max<size_t>(max_packet_ / 2, 64 << 10);
    const size_t cols = std::max<size_t>(values_.size(), 1);
    const size_t max_rows = std::min(kMaxValuesRows, std::bit_floor(65535 / cols));
    for (size_t k = 0; k < live_.size();) {
      size_t n = std::bit_floor(std::min(max_rows, live_.size() - k));
      auto bytes = [&](size_t rows) {
        size_t sum = 0;
        for (size_t r = k; r < k + rows; ++r) {
          sum += row_bytes_[r];
        }
        return sum;
      };
      while (n > 1 && bytes(n) > budget) {
        n /= 2;
      }
      if (n == 1) {
        GNOMON_RETURN_IF_ERROR(BindRow(k));
        if (mysql_stmt_execute(stmt_) != 0) {
          return StmtError(fmt::format("insert into {}", config_.table));
        }
        ++k;
        continue;
      }
      size_t j = std::countr_zero(n);
      if (multi_.size() <= j) {
        multi_.resize(j + 1, nullptr);
      }
      if (multi_[j] == nullptr) {
        GNOMON_RETURN_IF_ERROR(Prepare(n, multi_[j]));
      }
      multi_binds_.resize(n * values_.size());
      for (size_t r = 0; r < n; ++r) {
        for (size_t c = 0; c < values_.size(); ++c) {
          BindCell(multi_binds_[r * values_.size() + c], k + r, c);
        }
      }
      if (mysql_stmt_bind_param(multi_[j], multi_binds_.data()) != 0) {
        return StmtError(multi_[j], "bind");
      }
      if (mysql_stmt_execute(multi_[j]) != 0) {
        return StmtError(multi_[j], fmt::format("insert into {}", config_.table));
      }
      k += n;
    }
    return {};
  }

  // All live rows as bulk executions of at most half a packet each.
  Status WriteBulk() {
    const size_t budget = std::max<size_t>(max_packet_ / 2, 64 << 10);
    for (size_t first = 0; first < live_.size();) {
      size_t end = first, bytes = 0;
      while (end < live_.size() && (end == first || bytes + row_bytes_[end] <= budget)) {
        bytes += row_bytes_[end++];
      }
      GNOMON_RETURN_IF_ERROR(BindArrays(first, static_cast<unsigned>(end - first)));
      if (mysql_stmt_execute(stmt_) != 0) {
        return StmtError(fmt::format("insert into {}", config_.table));
      }
      first = end;
    }
    return {};
  }

  Status RowByRow(std::vector<std::pair<size_t, Status>>& refused) {
    for (size_t k = 0; k < live_.size(); ++k) {
      GNOMON_RETURN_IF_ERROR(BindRow(k));
      if (mysql_stmt_execute(stmt_) == 0) {
        continue;
      }
      Status s = StmtError(config_.table);
      if (s.code() != StatusCode::kInvalidArgument) {
        mysql_rollback(conn_);
        return s;
      }
      refused.emplace_back(live_[k], std::move(s));
    }
    return {};
  }

  SqlSinkConfig config_;
  std::string name_;
  MariaDbUrl url_;
  MYSQL* conn_ = nullptr;
  MYSQL_STMT* stmt_ = nullptr;      // the one-row INSERT
  std::vector<MYSQL_STMT*> multi_;  // [j]: the INSERT of 2^j rows, once used
  std::vector<MYSQL_BIND> multi_binds_;
  bool bulk_ = false;
  size_t max_packet_ = 16 << 20;
  RecordFields fields_;
  std::vector<std::vector<Cell>> rows_;
  std::vector<size_t> live_;       // batch indexes of the rows to write
  std::vector<size_t> row_bytes_;  // their estimated size on the wire
  std::vector<ColumnValues> values_;
  std::vector<MYSQL_BIND> binds_;
};

}  // namespace

std::unique_ptr<Destination> NewMariaDbDestination(SqlSinkConfig config, std::string name) {
  return std::make_unique<MariaDbDestination>(std::move(config), std::move(name));
}

}  // namespace gnomon::connectors::sql

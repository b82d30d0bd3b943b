// SPDX-License-Identifier: Apache-2.0
// HTTP ingest → rule → SQL with the real gnomon binary: PostgreSQL and MariaDB servers started
// by the tests (down at start, lost mid-stream, gnomon killed meanwhile), rows refused by the
// server one by one, upserts, values that need escaping, wrong credentials, a missing table,
// TLS; and the embedded SQLite sink.
#include <gtest/gtest.h>
#include <httplib.h>
#include <libpq-fe.h>
#include <mysql.h>
#include <signal.h>
#include <sqlite3.h>

#include "tests/support/test_support.h"

namespace gnomon {
namespace {

using testing::Process;
using testing::TempDir;
using testing::WaitFor;

class SqlIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    api_port_ = testing::FreePort();
    dir_.Write("rules/store.lua", R"(
      return rule { name = "store", from = "in/#",
        handle = function(msg, ctx)
          ctx.emit("db", { device = msg.device, seq = msg.payload.seq, temp = msg.payload.temp,
                           note = msg.payload.note, hot = msg.payload.hot })
        end })");
  }

  void WriteConfig(const std::string& sink) {
    dir_.Write("gnomon.yaml",
               "workers: 2\ndata_dir: data\n"
               "sources:\n  - { name: ingest, type: http, device: \"topic[2]\" }\n"
               "sinks:\n  - name: db\n    type: sql\n" + sink +
               "rules: [rules/*.lua]\n"
               "api: { listen: \"127.0.0.1:" + std::to_string(api_port_) + "\" }\n");
  }

  std::unique_ptr<Process> StartGnomon() {
    auto p = std::make_unique<Process>(
        std::vector<std::string>{GNOMON_BINARY, "run", "-c", dir_.File("gnomon.yaml")});
    bool ready = WaitFor(
        [&] {
          httplib::Client cli("127.0.0.1", api_port_);
          auto r = cli.Get("/readyz");
          return (r && r->status == 200) || !p->Running();
        },
        std::chrono::milliseconds(20000));
    EXPECT_TRUE(ready && p->Running()) << p->Stderr();
    return p;
  }

  // `n` messages for device `device`, seq first.., temp = seq / 10.
  void Post(const std::string& device, int first, int n, const std::string& extra = "") {
    std::string body;
    for (int i = first; i < first + n; ++i) {
      body += R"({"seq":)" + std::to_string(i) + R"(,"temp":)" + std::to_string(i / 10.0) + "}\n";
    }
    body += extra;
    httplib::Client cli("127.0.0.1", api_port_);
    cli.set_read_timeout(30);
    auto r = cli.Post(("/v1/ingest/in/" + device + "/t").c_str(), body, "application/x-ndjson");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 202) << r->body;
  }

  std::string DeadLetters() { return testing::ReadFile(dir_.File("data/dead-letter.jsonl")); }

  void MariaDbBatches(bool bulk);
  void MariaDbOutages(bool bulk);

  TempDir dir_;
  int api_port_ = 0;
};

// One-value queries against PostgreSQL; -1 when it cannot ask.
int64_t PgCount(const std::string& url, const std::string& sql) {
  PGconn* c = PQconnectdb(url.c_str());
  int64_t n = -1;
  if (PQstatus(c) == CONNECTION_OK) {
    PGresult* r = PQexec(c, sql.c_str());
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
      n = std::atoll(PQgetvalue(r, 0, 0));
    }
    PQclear(r);
  }
  PQfinish(c);
  return n;
}

bool PgExec(const std::string& url, const std::string& sql, std::string* why) {
  PGconn* c = PQconnectdb(url.c_str());
  bool ok = PQstatus(c) == CONNECTION_OK;
  if (ok) {
    PGresult* r = PQexec(c, sql.c_str());
    ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
      *why = PQresultErrorMessage(r);
    }
    PQclear(r);
  } else {
    *why = PQerrorMessage(c);
  }
  PQfinish(c);
  return ok;
}

TEST_F(SqlIntegrationTest, PostgresWritesBatchesUpsertsAndDeadLettersRefusedRowsOneByOne) {
  testing::Postgres pg;
  std::string why;
  GNOMON_REQUIRE_SERVER(pg.Start(&why), why);
  ASSERT_TRUE(PgExec(pg.url(),
                     "CREATE TABLE readings (device text, seq bigint, temp double precision "
                     "CHECK (temp < 1000), PRIMARY KEY (device, seq))",
                     &why))
      << why;
  WriteConfig("    url: \"" + pg.url() + "\"\n    table: readings\n"
              "    columns: { device: \"@device\", seq: \"$.seq\", temp: \"$.temp\" }\n"
              "    key: [device, seq]\n");
  auto g = StartGnomon();
  // Two rows the server refuses: a text for a double (22P02) and a CHECK violation (23514).
  Post("a", 0, 500, "{\"seq\":900,\"temp\":\"hot\"}\n{\"seq\":901,\"temp\":5000}\n");
  Post("b", 0, 500);
  ASSERT_TRUE(WaitFor([&] { return PgCount(pg.url(), "SELECT count(*) FROM readings") == 1000; }))
      << PgCount(pg.url(), "SELECT count(*) FROM readings") << g->Stderr();
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = DeadLetters();
    return std::count(dl.begin(), dl.end(), '\n') == 2;
  })) << dl;
  EXPECT_NE(dl.find("invalid input syntax for type double precision"), std::string::npos) << dl;
  EXPECT_NE(dl.find("violates check constraint"), std::string::npos) << dl;
  // Redelivered or repeated records update their row instead of adding one.
  Post("a", 0, 10, "{\"seq\":3,\"temp\":42.5}\n");
  ASSERT_TRUE(WaitFor([&] {
    return PgCount(pg.url(), "SELECT (temp * 10)::bigint FROM readings WHERE device='a' AND seq=3") == 425;
  }));
  EXPECT_EQ(PgCount(pg.url(), "SELECT count(*) FROM readings"), 1000);
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(SqlIntegrationTest, PostgresDownAtStartAndMidStreamWithKill9LosesNothing) {
  testing::Postgres pg;
  std::string why;
  GNOMON_REQUIRE_SERVER(pg.Start(&why), why);
  pg.Stop();  // down at start
  WriteConfig("    url: \"" + pg.url() + "\"\n    table: public.readings\n    create: true\n"
              "    columns: { device: \"@device\", seq: { path: \"$.seq\", type: integer },"
              " temp: { path: \"$.temp\", type: real } }\n"
              "    key: [device, seq]\n"
              "    retry: { initial_ms: 50, max_ms: 500 }\n");
  auto g = StartGnomon();
  Post("a", 0, 200);  // 202 while the database is down: durable in the outbox
  ASSERT_TRUE(pg.Start(&why)) << why;
  ASSERT_TRUE(WaitFor([&] { return PgCount(pg.url(), "SELECT count(*) FROM readings") == 200; }));
  pg.Stop();  // lost mid-stream
  Post("a", 200, 200);
  Post("b", 0, 200, "{\"seq\":\"x\"}\n");  // a type error, caught before the database
  ::kill(g->pid(), SIGKILL);
  g->Wait();
  ASSERT_TRUE(pg.Start(&why)) << why;
  g = StartGnomon();
  ASSERT_TRUE(WaitFor([&] { return PgCount(pg.url(), "SELECT count(*) FROM readings") == 600; },
                      std::chrono::milliseconds(30000)))
      << PgCount(pg.url(), "SELECT count(*) FROM readings");
  // The type error's dead letter may still be on its way when the rows are in.
  std::string dl;
  EXPECT_TRUE(WaitFor([&] {
    dl = DeadLetters();
    return dl.find("column seq (integer): cannot store string `x`") != std::string::npos;
  })) << dl;
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(SqlIntegrationTest, SqliteSinkCreatesTheTableAndDeadLettersTypeErrors) {
  WriteConfig("    url: \"sqlite://out/readings.db\"\n    table: readings\n    create: true\n"
              "    columns: { device: \"@device\", seq: { path: \"$.seq\", type: integer },"
              " temp: { path: \"$.temp\", type: real }, raw: \"$\" }\n"
              "    key: [device, seq]\n");
  auto g = StartGnomon();
  Post("a", 0, 300, "{\"seq\":1.5}\n");
  Post("a", 0, 5);  // upserts
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(dir_.File("out/readings.db").c_str(), &db), SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*), sum(seq), max(temp) FROM readings", -1, &s, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(s, 0), 300);
  EXPECT_EQ(sqlite3_column_int64(s, 1), 299 * 300 / 2);
  EXPECT_DOUBLE_EQ(sqlite3_column_double(s, 2), 29.9);
  sqlite3_finalize(s);
  sqlite3_close(db);
  EXPECT_NE(DeadLetters().find("column seq (integer): cannot store number `1.5`"), std::string::npos)
      << DeadLetters();
}

TEST_F(SqlIntegrationTest, BadSqlConfigIsRefusedWithThePath) {
  WriteConfig(
      "    url: \"oracle://x\"\n    table: \"x; DROP TABLE y\"\n"
      "    columns: { \"bad name\": \"$.a\", ok: \"a.b\" }\n    key: [nope]\n");
  std::string out, err;
  EXPECT_EQ(testing::RunCommand({GNOMON_BINARY, "check", "-c", dir_.File("gnomon.yaml")}, &out, &err), 1);
  for (const char* want : {"sinks[0].url", "sinks[0].table", "sinks[0].columns.bad name",
                           "sinks[0].columns.ok", "sinks[0].key"}) {
    EXPECT_NE(err.find(want), std::string::npos) << want << "\n" << err;
  }
}

// ---- MariaDB ------------------------------------------------------------------------------

// Runs `sql` against the test's MariaDB server; the first column of the first row, or nullopt
// (with `why`) when it cannot. A statement without rows gives "".
std::optional<std::string> MyQuery(const testing::MariaDb& db, const std::string& sql,
                                   std::string* why = nullptr) {
  MYSQL* c = mysql_init(nullptr);
  // A server that accepts but does not answer (busy recovering) must not hang the test.
  unsigned connect_timeout = 2, io_timeout = 10;
  mysql_optionsv(c, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
  mysql_optionsv(c, MYSQL_OPT_READ_TIMEOUT, &io_timeout);
  std::optional<std::string> out;
  if (mysql_real_connect(c, "127.0.0.1", "gnomon", "s3cret", "gnomon", db.port(), nullptr, 0) !=
          nullptr &&
      mysql_set_character_set(c, "utf8mb4") == 0 && mysql_query(c, sql.c_str()) == 0) {
    out = "";
    if (MYSQL_RES* r = mysql_store_result(c); r != nullptr) {
      if (MYSQL_ROW row = mysql_fetch_row(r); row != nullptr && row[0] != nullptr) {
        out = std::string(row[0], mysql_fetch_lengths(r)[0]);
      }
      mysql_free_result(r);
    }
  } else if (why != nullptr) {
    *why = mysql_error(c);
  }
  mysql_close(c);
  return out;
}

int64_t MyCount(const testing::MariaDb& db, const std::string& sql) {
  auto v = MyQuery(db, sql);
  return v && !v->empty() ? std::atoll(v->c_str()) : -1;
}

int64_t Lines(const std::string& s) { return std::count(s.begin(), s.end(), '\n'); }

// `bulk`: bulk executions (MariaDB's protocol), or multi-row INSERTs (what MySQL servers get).
void SqlIntegrationTest::MariaDbBatches(bool bulk) {
  testing::MariaDb db;
  std::string why;
  GNOMON_REQUIRE_SERVER(db.Start(&why), why);
  ASSERT_TRUE(MyQuery(db,
                      "CREATE TABLE readings (device varchar(64), seq bigint, temp double "
                      "CHECK (temp < 1000), note varchar(64), PRIMARY KEY (device, seq)) "
                      "DEFAULT CHARSET=utf8mb4",
                      &why))
      << why;
  WriteConfig("    url: \"" + db.url() + (bulk ? "" : "?bulk=off") +
              "\"\n    table: readings\n"
              "    columns: { device: \"@device\", seq: \"$.seq\", temp: \"$.temp\","
              " note: \"$.note\" }\n"
              "    key: [device, seq]\n");
  auto g = StartGnomon();
  // Three rows the server refuses: a text for a double, a CHECK violation, a note too long for
  // its column. And one whose note needs escaping in any SQL text.
  const std::string tricky = R"(it's \"q\" \\ `x`; DROP TABLE readings; -- \u00e9\ud83d\ude00)";
  Post("a", 0, 500,
       "{\"seq\":900,\"temp\":\"hot\"}\n{\"seq\":901,\"temp\":5000}\n"
       "{\"seq\":902,\"temp\":1,\"note\":\"" +
           std::string(100, 'n') +
           "\"}\n"
           "{\"seq\":903,\"temp\":2,\"note\":\"" +
           tricky + "\"}\n");
  Post("b", 0, 500);
  ASSERT_TRUE(WaitFor([&] { return MyCount(db, "SELECT count(*) FROM readings") == 1001; },
                      std::chrono::milliseconds(30000)))
      << MyCount(db, "SELECT count(*) FROM readings") << DeadLetters() << g->Stderr();
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = DeadLetters();
    return Lines(dl) == 3;
  })) << dl;
  EXPECT_NE(dl.find("Incorrect double value: 'hot' for column `gnomon`.`readings`.`temp`"),
            std::string::npos)
      << dl;
  EXPECT_NE(dl.find("CONSTRAINT `readings.temp` failed"), std::string::npos) << dl;
  EXPECT_NE(dl.find("Data too long for column 'note'"), std::string::npos) << dl;
  EXPECT_EQ(MyQuery(db, "SELECT note FROM readings WHERE device='a' AND seq=903"),
            std::string("it's \"q\" \\ `x`; DROP TABLE readings; -- \xc3\xa9\xf0\x9f\x98\x80"));
  // Redelivered or repeated records update their row instead of adding one.
  Post("a", 0, 10, "{\"seq\":3,\"temp\":42.5}\n");
  ASSERT_TRUE(WaitFor([&] {
    return MyCount(db, "SELECT round(temp * 10) FROM readings WHERE device='a' AND seq=3") == 425;
  }));
  EXPECT_EQ(MyCount(db, "SELECT count(*) FROM readings"), 1001);
  EXPECT_EQ(MyCount(db, "SELECT sum(seq) FROM readings WHERE device='b'"), 499 * 500 / 2);
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(SqlIntegrationTest, MariaDbWritesBatchesUpsertsEscapesAndDeadLettersRefusedRowsOneByOne) {
  MariaDbBatches(true);
}

TEST_F(SqlIntegrationTest, MariaDbWithoutBulkWritesMultiRowInsertsWithTheSameOutcome) {
  MariaDbBatches(false);
}

void SqlIntegrationTest::MariaDbOutages(bool bulk) {
  testing::MariaDb db;
  std::string why;
  GNOMON_REQUIRE_SERVER(db.Start(&why), why);
  db.Stop();  // down at start
  WriteConfig("    url: \"" + db.url() + "?connect-timeout=2" + (bulk ? "" : "&bulk=off") +
              "\"\n    table: gnomon.readings\n"
              "    create: true\n"
              "    columns: { device: \"@device\", seq: { path: \"$.seq\", type: integer },"
              " temp: { path: \"$.temp\", type: real }, hot: { path: \"$.hot\", type: boolean },"
              " raw: { path: \"$\", type: json } }\n"
              "    key: [device, seq]\n"
              "    retry: { initial_ms: 50, max_ms: 500 }\n");
  auto g = StartGnomon();
  Post("a", 0, 200);  // 202 while the database is down: durable in the outbox
  ASSERT_TRUE(db.Start(&why)) << why;
  ASSERT_TRUE(WaitFor([&] { return MyCount(db, "SELECT count(*) FROM readings") == 200; },
                      std::chrono::milliseconds(30000)))
      << g->Stderr();
  db.Kill();  // lost mid-stream, without a clean shutdown
  Post("a", 200, 200);
  Post("b", 0, 200, "{\"seq\":\"x\"}\n{\"seq\":7000,\"hot\":true}\n");  // a type error
  ::kill(g->pid(), SIGKILL);
  g->Wait();
  ASSERT_TRUE(db.Start(&why)) << why;
  g = StartGnomon();
  ASSERT_TRUE(WaitFor([&] { return MyCount(db, "SELECT count(*) FROM readings") == 601; },
                      std::chrono::milliseconds(30000)))
      << MyCount(db, "SELECT count(*) FROM readings") << g->Stderr();
  // MariaDB gets a batch as bulk executions (one round trip), unless told otherwise.
  EXPECT_NE(g->Stderr().find(R"("msg":"connected to MariaDB/MySQL")"), std::string::npos);
  EXPECT_NE(g->Stderr().find(bulk ? R"("bulk":"yes")" : R"("bulk":"no")"), std::string::npos)
      << g->Stderr();
  EXPECT_EQ(MyCount(db, "SELECT hot FROM readings WHERE device='b' AND seq=7000"), 1);
  EXPECT_EQ(MyQuery(db, "SELECT JSON_VALUE(raw, '$.seq') FROM readings WHERE device='b' AND seq=5"),
            std::string("5"));
  EXPECT_EQ(MyCount(db, "SELECT count(*) FROM readings WHERE hot IS NULL"), 600);
  std::string dl;
  EXPECT_TRUE(WaitFor([&] {
    dl = DeadLetters();
    return dl.find("column seq (integer): cannot store string `x`") != std::string::npos;
  })) << dl;
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(SqlIntegrationTest, MariaDbDownAtStartAndKilledMidStreamWithGnomonKilledLosesNothing) {
  MariaDbOutages(true);
}

TEST_F(SqlIntegrationTest, MariaDbWithoutBulkDownAndKilledLosesNothing) { MariaDbOutages(false); }

TEST_F(SqlIntegrationTest, MariaDbWrongCredentialsAndAMissingTableHoldRecordsAndSayWhy) {
  testing::MariaDb db;
  std::string why;
  GNOMON_REQUIRE_SERVER(db.Start(&why), why);
  std::string wrong = db.url();
  wrong.replace(wrong.find(":s3cret@"), 8, ":wrong@");
  const std::string columns =
      "    table: readings\n"
      "    columns: { device: \"@device\", seq: \"$.seq\" }\n"
      "    retry: { initial_ms: 50, max_ms: 200 }\n";
  WriteConfig("    url: \"" + wrong + "\"\n" + columns);
  auto g = StartGnomon();
  Post("a", 0, 50);
  EXPECT_TRUE(WaitFor([&] {
    return g->Stderr().find("Access denied for user 'gnomon'") != std::string::npos;
  })) << g->Stderr();
  EXPECT_EQ(g->Stderr().find("wrong"), std::string::npos) << "the password is not logged";
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
  // The right password, but no table yet: the records wait in the outbox until it exists.
  WriteConfig("    url: \"${env:GNOMON_TEST_MARIADB_URL}\"\n" + columns);
  ::setenv("GNOMON_TEST_MARIADB_URL", db.url().c_str(), 1);
  g = StartGnomon();
  Post("a", 50, 50);
  EXPECT_TRUE(WaitFor([&] {
    return g->Stderr().find("Table 'gnomon.readings' doesn't exist") != std::string::npos;
  })) << g->Stderr();
  ASSERT_TRUE(MyQuery(db, "CREATE TABLE readings (device text, seq int)", &why)) << why;
  ASSERT_TRUE(WaitFor([&] { return MyCount(db, "SELECT count(*) FROM readings") == 100; },
                      std::chrono::milliseconds(30000)))
      << MyCount(db, "SELECT count(*) FROM readings") << g->Stderr();
  EXPECT_EQ(MyCount(db, "SELECT sum(seq) FROM readings"), 99 * 100 / 2);
  EXPECT_EQ(DeadLetters(), "");
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(SqlIntegrationTest, MariaDbOverVerifiedTls) {
  TempDir certs;
  auto run = [&](std::vector<std::string> argv) {
    std::string out, err;
    ASSERT_EQ(testing::RunCommand(argv, &out, &err, certs.path()), 0) << argv[0] << ": " << err;
  };
  std::string why;
  ASSERT_TRUE(testing::MakeServerCertificates(certs, &why)) << why;
  // A second, unrelated CA.
  run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out",
       "other.crt", "-days", "2", "-subj", "/CN=someone-else"});
  testing::MariaDb db;
  GNOMON_REQUIRE_SERVER(
      db.Start(&why, {"--ssl-cert=" + certs.File("server.crt"),
                      "--ssl-key=" + certs.File("server.key"), "--require-secure-transport=ON"}),
      why);
  ASSERT_TRUE(MyQuery(db, "SELECT 1", &why) == std::nullopt) << "plain connections are refused";
  const std::string columns =
      "    table: readings\n    create: true\n"
      "    columns: { device: \"@device\", seq: { path: \"$.seq\", type: integer } }\n"
      "    retry: { initial_ms: 50, max_ms: 200 }\n";
  // A CA that did not sign the server's certificate: refused, and said why.
  WriteConfig("    url: \"" + db.url() +
              "?ssl-mode=verify-identity&ssl-ca=" + certs.File("other.crt") + "\"\n" + columns);
  auto g = StartGnomon();
  Post("a", 0, 20);
  EXPECT_TRUE(WaitFor([&] {
    return g->Stderr().find("certificate") != std::string::npos &&
           g->Stderr().find("delivery failed") != std::string::npos;
  })) << g->Stderr();
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
  WriteConfig("    url: \"" + db.url() +
              "?ssl-mode=verify-identity&ssl-ca=" + certs.File("ca.crt") + "\"\n" + columns);
  g = StartGnomon();
  Post("a", 20, 20);
  // Reading back needs TLS too.
  auto count = [&] {
    MYSQL* c = mysql_init(nullptr);
    unsigned connect_timeout = 2, io_timeout = 10;
    mysql_optionsv(c, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
    mysql_optionsv(c, MYSQL_OPT_READ_TIMEOUT, &io_timeout);
    my_bool enforce = 1;
    mysql_optionsv(c, MYSQL_OPT_SSL_ENFORCE, &enforce);
    int64_t n = -1;
    if (mysql_real_connect(c, "127.0.0.1", "gnomon", "s3cret", "gnomon", db.port(), nullptr, 0) &&
        mysql_query(c, "SELECT count(*) FROM readings") == 0) {
      if (MYSQL_RES* r = mysql_store_result(c); r != nullptr) {
        MYSQL_ROW row = mysql_fetch_row(r);
        n = row != nullptr && row[0] != nullptr ? std::atoll(row[0]) : -1;
        mysql_free_result(r);
      }
    }
    mysql_close(c);
    return n;
  };
  ASSERT_TRUE(WaitFor([&] { return count() == 40; })) << count() << g->Stderr();
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(SqlIntegrationTest, BadMariaDbUrlsAreRefusedWithWhatIsWrong) {
  for (const auto& [url, want] : std::vector<std::pair<std::string, std::string>>{
           {"mysql://u@h:99999/db", "port `99999`"},
           {"mysql://u@h/db?ssl-mode=maybe", "ssl-mode `maybe`"},
           {"mariadb://u@h/db?sslca=x", "unknown option `sslca`"},
           {"mysql://u@h/db?ssl-mode=verify-ca", "verify-ca needs ssl-ca"},
           {"mysql://u@h/db?bulk=yes", "bulk `yes`: auto or off"},
           {"mysql://u:%zz@h/db", "percent-encoding"},
           {"mysql://u@h/db;drop", "database `db;drop`"}}) {
    WriteConfig("    url: \"" + url + "\"\n    table: t\n    columns: { a: \"$.a\" }\n");
    std::string out, err;
    EXPECT_EQ(
        testing::RunCommand({GNOMON_BINARY, "check", "-c", dir_.File("gnomon.yaml")}, &out, &err),
        1)
        << url;
    EXPECT_NE(err.find("sinks[0].url"), std::string::npos) << url << "\n" << err;
    EXPECT_NE(err.find(want), std::string::npos) << url << "\n" << err;
  }
  WriteConfig(
      "    url: \"mysql://u:p%40ss@db.internal:3307/telemetry?ssl-mode=required\"\n"
      "    table: telemetry.readings\n    columns: { a: \"$.a\" }\n");
  std::string out, err;
  EXPECT_EQ(
      testing::RunCommand({GNOMON_BINARY, "check", "-c", dir_.File("gnomon.yaml")}, &out, &err), 0)
      << err;
}

}  // namespace
}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
// HTTP ingest → rule → SQL with the real gnomon binary: a PostgreSQL server started by the test
// (down at start, lost mid-stream, gnomon killed meanwhile), rows refused by the server one by
// one, upserts; and the embedded SQLite sink.
#include <gtest/gtest.h>
#include <httplib.h>
#include <libpq-fe.h>
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
          ctx.emit("db", { device = msg.device, seq = msg.payload.seq, temp = msg.payload.temp })
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
  WriteConfig("    url: \"mysql://x\"\n    table: \"x; DROP TABLE y\"\n"
              "    columns: { \"bad name\": \"$.a\", ok: \"a.b\" }\n    key: [nope]\n");
  std::string out, err;
  EXPECT_EQ(testing::RunCommand({GNOMON_BINARY, "check", "-c", dir_.File("gnomon.yaml")}, &out, &err), 1);
  for (const char* want : {"sinks[0].url", "sinks[0].table", "sinks[0].columns.bad name",
                           "sinks[0].columns.ok", "sinks[0].key"}) {
    EXPECT_NE(err.find(want), std::string::npos) << want << "\n" << err;
  }
}

}  // namespace
}  // namespace gnomon

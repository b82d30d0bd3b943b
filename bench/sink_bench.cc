// SPDX-License-Identifier: Apache-2.0
// End-to-end load for HTTP ingest and the outbox sinks: starts build/gnomon with a generated
// config, POSTs NDJSON batches to /v1/ingest from several client threads, and measures until
// every record has arrived where it goes.
//
//   gnomon-sink-bench --gnomon build/gnomon
//                     --mode ingest|webhook|webhook-batch|postgres|mariadb
//                     [--messages N] [--batch B] [--clients C] [--concurrency K] [--pg URL]
//                     [--mysql URL]
//                     [--sink-extra "YAML line added to the sink entry"]
//
// ingest:        the rule drops every message; messages/s = N / time until all requests got 202
//                (202 means every message finished).
// webhook:       one record per request to an in-process receiver (cpp-httplib); records/s
//                until the receiver has all N.
// webhook-batch: the same with batch.max_records 500 (bodies are JSON arrays).
// postgres:      rows/s until `SELECT count(*)` reaches N (run bench/sinks.sh: it starts
//                PostgreSQL).
// mariadb:       the same against MariaDB (--mysql mysql://user:password@host:port/db; run
//                bench/sinks.sh: it starts MariaDB).
#include <httplib.h>
#include <libpq-fe.h>
#include <mysql.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

// A port nothing listens on (bound and closed again; a bound httplib::Server would keep it).
int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string gnomon = "build/gnomon", mode = "webhook", pg_url, mysql_url, sink_extra;
  long messages = 200000, batch = 1000, clients = 4, concurrency = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--gnomon") gnomon = v;
    else if (k == "--mode") mode = v;
    else if (k == "--messages") messages = std::atol(v.c_str());
    else if (k == "--batch") batch = std::atol(v.c_str());
    else if (k == "--clients") clients = std::atol(v.c_str());
    else if (k == "--pg") pg_url = v;
    else if (k == "--mysql") mysql_url = v;
    else if (k == "--concurrency") concurrency = std::atol(v.c_str());
    else if (k == "--sink-extra") sink_extra = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  gnomon = std::filesystem::absolute(gnomon).string();
  auto dir = std::filesystem::temp_directory_path() / ("gnomon-sink-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir / "rules");
  int api = FreePort();

  // The receiver: counts records (one per request, or the elements of an array).
  std::atomic<long> received{0};
  httplib::Server rx;
  rx.new_task_queue = [] { return new httplib::ThreadPool(16); };
  rx.set_keep_alive_max_count(1000000);  // cpp-httplib closes after 5 requests by default
  rx.set_tcp_nodelay(true);
  rx.Post("/hook", [&](const httplib::Request& req, httplib::Response& res) {
    long n = 1;
    if (!req.body.empty() && req.body[0] == '[') {
      n = 0;
      for (char c : req.body) n += c == '{';
    }
    received += n;
    res.status = 204;
  });
  int hook = rx.bind_to_any_port("127.0.0.1");
  std::thread rx_thread([&] { rx.listen_after_bind(); });

  std::string rule = mode == "ingest" ? "ctx.drop()" : "ctx.emit(\"out\", msg.payload)";
  std::ofstream(dir / "rules/bench.lua")
      << "return rule { name = \"bench\", from = \"in/#\", handle = function(msg, ctx) " << rule
      << " end }\n";
  std::string sink;
  if (mode == "ingest") {
    sink = "  - { name: out, type: file, path: out.jsonl }\n";
  } else if (mode == "webhook" || mode == "webhook-batch") {
    sink = "  - name: out\n    type: http\n    url: \"http://127.0.0.1:" + std::to_string(hook) +
           "/hook\"\n    concurrency: " + std::to_string(concurrency) + "\n";
    if (mode == "webhook-batch") {
      sink += "    batch: { max_records: 500 }\n";
    }
  } else if (mode == "postgres" || mode == "mariadb") {
    sink = "  - name: out\n    type: sql\n    url: \"" + (mode == "postgres" ? pg_url : mysql_url) +
           "\"\n    table: bench_rows\n    create: true\n"
           "    columns: { device: \"@device\", seq: { path: \"$.seq\", type: integer }, "
           "temp: { path: \"$.temp\", type: real } }\n"
           "    batch: { max_records: 2000 }\n";
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  if (!sink_extra.empty()) {
    sink += "    " + sink_extra + "\n";
  }
  std::ofstream(dir / "gnomon.yaml")
      << "workers: 2\ndata_dir: data\nsources:\n"
         "  - { name: ingest, type: http, device: \"topic[2]\", max_in_flight: 1000000 }\n"
         "sinks:\n" << sink << "rules: [rules/*.lua]\napi: { listen: \"127.0.0.1:" << api << "\" }\n";

  // The databases are asked for their row count; the table starts empty.
  PGconn* pg = nullptr;
  if (mode == "postgres") {
    pg = PQconnectdb(pg_url.c_str());
    PQclear(PQexec(pg, "DROP TABLE IF EXISTS bench_rows"));  // each run counts its own rows
  }
  MYSQL* my = nullptr;
  if (mode == "mariadb") {
    // mysql://user:password@host:port/db, as the sink reads it (no percent-encoding here).
    std::string u = mysql_url.substr(mysql_url.find("://") + 3);
    std::string user = u.substr(0, u.find(':')), pass = u.substr(u.find(':') + 1, u.find('@') - u.find(':') - 1);
    std::string hostport = u.substr(u.find('@') + 1, u.find('/', u.find('@')) - u.find('@') - 1);
    std::string db = u.substr(u.find('/', u.find('@')) + 1);
    db = db.substr(0, db.find('?'));
    my = mysql_init(nullptr);
    if (!mysql_real_connect(my, hostport.substr(0, hostport.find(':')).c_str(), user.c_str(), pass.c_str(),
                            db.c_str(), std::atoi(hostport.substr(hostport.find(':') + 1).c_str()), nullptr, 0)) {
      std::fprintf(stderr, "mariadb: %s\n", mysql_error(my));
    }
    mysql_query(my, "DROP TABLE IF EXISTS bench_rows");  // each run counts its own rows
  }
  std::string cfg = (dir / "gnomon.yaml").string();
  std::string log = (dir / "gnomon.log").string();
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  char* args[] = {gnomon.data(), const_cast<char*>("run"), const_cast<char*>("-c"), cfg.data(), nullptr};
  pid_t pid;
  if (posix_spawn(&pid, gnomon.c_str(), &fa, nullptr, args, environ) != 0) {
    std::perror("spawn gnomon");
    return 1;
  }
  httplib::Client probe("127.0.0.1", api);
  for (int i = 0; i < 200; ++i) {
    auto r = probe.Get("/readyz");
    if (r && r->status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  // Load: each client POSTs batches of `batch` NDJSON lines, devices spread over 10k.
  std::atomic<long> next{0}, failed{0};
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (long c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      httplib::Client cli("127.0.0.1", api);
      cli.set_read_timeout(60);
      std::string body;
      for (;;) {
        long first = next.fetch_add(batch);
        if (first >= messages) break;
        long n = std::min(batch, messages - first);
        body.clear();
        for (long i = first; i < first + n; ++i) {
          body += "{\"seq\":" + std::to_string(i) + ",\"temp\":" + std::to_string(20 + i % 50) +
                  ",\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n";
        }
        std::string path = "/v1/ingest/in/d" + std::to_string((first / batch + c) % 10000) + "/t";
        auto r = cli.Post(path.c_str(), body, "application/x-ndjson");
        if (!r || r->status != 202) {
          ++failed;
          std::fprintf(stderr, "POST failed: %d %s\n", r ? r->status : 0,
                       r ? r->body.c_str() : httplib::to_string(r.error()).c_str());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  auto accepted = Clock::now();

  long arrived = 0;
  for (;;) {
    if (mode == "ingest") {
      arrived = messages;
    } else if (mode == "postgres") {
      PGresult* r = PQexec(pg, "SELECT count(*) FROM bench_rows");
      arrived = PQresultStatus(r) == PGRES_TUPLES_OK ? std::atol(PQgetvalue(r, 0, 0)) : 0;
      PQclear(r);
    } else if (mode == "mariadb") {
      arrived = 0;
      if (mysql_query(my, "SELECT count(*) FROM bench_rows") == 0) {
        if (MYSQL_RES* r = mysql_store_result(my)) {
          MYSQL_ROW row = mysql_fetch_row(r);
          arrived = row && row[0] ? std::atol(row[0]) : 0;
          mysql_free_result(r);
        }
      }
    } else {
      arrived = received.load();
    }
    if (arrived >= messages || Seconds(accepted, Clock::now()) > 300) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  auto done = Clock::now();
  if (pg) PQfinish(pg);
  if (my) mysql_close(my);

  std::printf("mode=%s messages=%ld batch=%ld clients=%ld failed_requests=%ld\n", mode.c_str(),
              messages, batch, clients, failed.load());
  std::printf("ingest accepted (202): %.0f messages/s (%.2f s)\n",
              static_cast<double>(messages) / Seconds(start, accepted), Seconds(start, accepted));
  if (mode != "ingest") {
    std::printf("delivered end to end: %ld records, %.0f records/s (%.2f s)\n", arrived,
                static_cast<double>(arrived) / Seconds(start, done), Seconds(start, done));
  }
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  rx.stop();
  if (rx_thread.joinable()) rx_thread.join();
  std::filesystem::remove_all(dir);
  return failed.load() == 0 && arrived >= messages ? 0 : 1;
}

// SPDX-License-Identifier: Apache-2.0
// Test helpers: temp dirs, WaitFor, free ports, child processes, a mosquitto broker.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace gnomon::testing {

// Scales timeouts (GNOMON_TEST_TIMEOUT_SCALE, default 1; sanitizer builds set more).
std::chrono::milliseconds Scaled(std::chrono::milliseconds ms);

// Polls `pred` until it holds or `timeout` (scaled) passes. No sleeps in tests: use this.
bool WaitFor(const std::function<bool()>& pred,
             std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));

// A fresh directory under /tmp, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  void Write(const std::string& name, const std::string& text) const;

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path);
std::vector<std::string> ReadLines(const std::string& path);
// A flat JSON object with its keys sorted (Lua tables keep no order), for comparisons; `text`
// itself when it is not an object.
std::string SortedJson(const std::string& text);

// A TCP port free on 127.0.0.1 right now.
int FreePort();

// Sends `request` as it is to 127.0.0.1:port and returns all that comes back until the server
// closes the connection (send "Connection: close"), or "" if it cannot connect. For requests
// an HTTP client library will not send (no Content-Length on a POST, say).
std::string RawHttp(int port, const std::string& request);

// True under CI (CI=true): a missing server binary fails instead of skipping.
bool UnderCi();

// A child process with stdout/stderr captured to files.
class Process {
 public:
  Process(std::vector<std::string> argv, const std::string& dir = "");
  ~Process();
  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Waits for exit; returns the exit code (128+signal if killed), or -1 on timeout.
  int Wait(std::chrono::milliseconds timeout = std::chrono::milliseconds(20000));
  bool Running();
  std::string Stdout() const;
  std::string Stderr() const;

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  std::string out_, err_;
};

// Runs a command to completion; returns its exit code, stdout in `out`, stderr in `err`.
int RunCommand(const std::vector<std::string>& argv, std::string* out = nullptr,
               std::string* err = nullptr, const std::string& dir = "");

// Writes a private CA (ca.crt, ca.key) and a server certificate it signed for 127.0.0.1 and
// localhost (server.crt, server.key) into `dir` with openssl. False, with `why`, on failure.
bool MakeServerCertificates(const TempDir& dir, std::string* why);
// A client certificate for `name` (name.crt, name.key, CN=name) signed by the CA that
// MakeServerCertificates made in `dir`. False, with `why`, on failure.
bool MakeClientCertificate(const TempDir& dir, const std::string& name, std::string* why);
// A certificate for `name` (name.crt, name.key, CN=name) signed by that CA, with the X.509
// extensions `extensions` (openssl's extfile lines, e.g. "subjectAltName=DNS:host\n").
bool MakeSignedCertificate(const TempDir& dir, const std::string& name,
                           const std::string& extensions, std::string* why);

// A mosquitto broker on a free loopback port, with persistence in a temp dir.
// A small tmpfs mounted on a directory for the life of the object (the tests run as root in CI).
class SmallDisk {
 public:
  SmallDisk(const std::string& dir, const std::string& size);
  ~SmallDisk();
  bool mounted() const { return mounted_; }
  const std::string& why() const { return why_; }
  // Fills what is left with a ballast file.
  void Fill();
  void Free();

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string why_;
};

class Mosquitto {
 public:
  // Returns false and sets `why` when the broker does not start. `extra` is appended to the
  // config (more listeners, auth). Check MosquittoBinary() first to skip when it is missing.
  bool Start(std::string* why, const std::string& extra = "");
  const TempDir& dir() const { return dir_; }
  void Stop();
  void Kill();
  int port() const { return port_; }
  ~Mosquitto();

 private:
  TempDir dir_;
  int port_ = 0;
  std::unique_ptr<Process> proc_;
};

std::string MosquittoBinary();

// A PostgreSQL server of its own (initdb in a temp dir, trust auth for user `gnomon`, loopback
// on a free port). Run as the `postgres` user when the tests run as root. The port stays the
// same across Stop()/Start(), so a client can reconnect.
class Postgres {
 public:
  bool Start(std::string* why);
  void Stop();  // fast shutdown
  ~Postgres();
  int port() const { return port_; }
  // postgresql://gnomon@127.0.0.1:PORT/postgres
  std::string url() const;

 private:
  TempDir dir_;
  int port_ = 0;
  bool initialized_ = false;
  std::unique_ptr<Process> proc_;
};

// The directory with initdb and postgres (/usr/lib/postgresql/N/bin), or "".
std::string PostgresBinDir();

// A MariaDB server of its own: mariadb-install-db in a temp dir, user `gnomon` (password
// `s3cret`, all privileges) and database `gnomon`, loopback on a free port. The port and the
// data stay across Stop()/Kill()/Start(), so a client can reconnect and find its rows.
class MariaDb {
 public:
  // `extra`: more server options (TLS, say).
  bool Start(std::string* why, const std::vector<std::string>& extra = {});
  void Stop();  // clean shutdown
  void Kill();  // SIGKILL: crash recovery on the next Start()
  ~MariaDb();
  int port() const { return port_; }
  const TempDir& dir() const { return dir_; }
  // mysql://gnomon:s3cret@127.0.0.1:PORT/gnomon
  std::string url() const;

 private:
  TempDir dir_;
  int port_ = 0;
  bool initialized_ = false;
  std::unique_ptr<Process> proc_;
};

}  // namespace gnomon::testing

// Skips locally, fails under CI, when a required server is missing.
#define GNOMON_REQUIRE_SERVER(ok, why)                                        \
  do {                                                                        \
    if (!(ok)) {                                                              \
      if (::gnomon::testing::UnderCi()) {                                     \
        FAIL() << "required server missing under CI: " << (why);             \
      }                                                                       \
      GTEST_SKIP() << "server missing (set CI=true to make this fail): " << (why); \
    }                                                                         \
  } while (0)

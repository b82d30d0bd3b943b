// SPDX-License-Identifier: Apache-2.0
#include "tests/support/test_support.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <simdjson.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

namespace gnomon::testing {

std::chrono::milliseconds Scaled(std::chrono::milliseconds ms) {
  const char* s = std::getenv("GNOMON_TEST_TIMEOUT_SCALE");
  double scale = s != nullptr ? std::atof(s) : 1.0;
  if (scale <= 0) {
    scale = 1.0;
  }
  return std::chrono::milliseconds(static_cast<int64_t>(static_cast<double>(ms.count()) * scale));
}

bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + Scaled(timeout);
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "gnomon-test-XXXXXX").string();
  char* p = ::mkdtemp(tmpl.data());
  path_ = p != nullptr ? p : "/tmp";
  // Readable by servers that drop root privileges (mosquitto runs as its own user).
  ::chmod(path_.c_str(), 0755);
}

TempDir::~TempDir() {
  std::error_code ec;
  if (path_ != "/tmp") {
    std::filesystem::remove_all(path_, ec);
  }
}

void TempDir::Write(const std::string& name, const std::string& text) const {
  std::filesystem::create_directories(std::filesystem::path(File(name)).parent_path());
  std::ofstream out(File(name), std::ios::binary);
  out << text;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string RawHttp(int port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) {
      out.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  return out;
}

std::vector<std::string> ReadLines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) {
      lines.push_back(line);
    }
  }
  return lines;
}

namespace {
// Whether a server could listen on 127.0.0.1:`port` now (0: the kernel picks one). Returns
// the port it got, or 0.
int TryListen(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    return 0;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  int got = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      got = ntohs(addr.sin_port);
    }
  }
  ::close(fd);
  return got;
}
}  // namespace

// A port below the kernel's ephemeral range (net.ipv4.ip_local_port_range): one inside it can be
// handed to another socket between this check and the server's bind — a bind to port 0 (an
// embedded Kafka broker once took a gnomon's metrics port so) or an outgoing connection's local
// end. Chosen at random, so that test processes running side by side rarely try the same one.
int FreePort() {
  int ephemeral = 32768;
  if (std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range"); range) {
    range >> ephemeral;
  }
  constexpr int kLowest = 10000;
  if (ephemeral - 1 > kLowest + 1000) {
    static std::mutex mu;
    static std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(::getpid()));
    // (Never the same port twice in one process: a test asks for several before starting what
    // binds them.)
    static std::set<int> given;
    std::lock_guard lock(mu);
    std::uniform_int_distribution<int> pick(kLowest, ephemeral - 1);
    for (int attempt = 0; attempt < 256; ++attempt) {
      int port = pick(rng);
      if (!given.contains(port) && TryListen(port) != 0) {
        given.insert(port);
        return port;
      }
    }
  }
  return TryListen(0);
}

bool UnderCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

Process::Process(std::vector<std::string> argv, const std::string& dir) {
  static int counter = 0;
  std::string base = (std::filesystem::temp_directory_path() /
                      ("gnomon-proc-" + std::to_string(::getpid()) + "-" +
                       std::to_string(counter++)))
                         .string();
  out_ = base + ".out";
  err_ = base + ".err";
  pid_ = ::fork();
  if (pid_ == 0) {
    // The parent (a test) may block signals; the child must not inherit that.
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, nullptr);
    int out = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = ::open(err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(err, 2);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    if (!dir.empty() && ::chdir(dir.c_str()) != 0) {
      ::_exit(126);
    }
    std::vector<char*> args;
    for (auto& a : argv) {
      args.push_back(a.data());
    }
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
}

Process::~Process() {
  if (pid_ > 0 && status_ == -1) {
    ::kill(pid_, SIGKILL);
    Wait(std::chrono::milliseconds(5000));
  }
  std::error_code ec;
  std::filesystem::remove(out_, ec);
  std::filesystem::remove(err_, ec);
}

void Process::Signal(int sig) {
  if (pid_ > 0 && status_ == -1) {
    ::kill(pid_, sig);
  }
}

bool Process::Running() {
  if (status_ != -1) {
    return false;
  }
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  return true;
}

int Process::Wait(std::chrono::milliseconds timeout) {
  WaitFor([&] { return !Running(); }, timeout);
  return status_;
}

std::string Process::Stdout() const { return ReadFile(out_); }
std::string Process::Stderr() const { return ReadFile(err_); }

int RunCommand(const std::vector<std::string>& argv, std::string* out, std::string* err,
               const std::string& dir) {
  Process p(argv, dir);
  int rc = p.Wait(std::chrono::milliseconds(60000));
  if (out != nullptr) {
    *out = p.Stdout();
  }
  if (err != nullptr) {
    *err = p.Stderr();
  }
  return rc;
}

std::string MosquittoBinary() {
  for (const char* p : {"/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"}) {
    if (::access(p, X_OK) == 0) {
      return p;
    }
  }
  return "";
}

bool Mosquitto::Start(std::string* why, const std::string& extra) {
  std::string bin = MosquittoBinary();
  if (bin.empty()) {
    *why = "mosquitto binary not found (apt-get install mosquitto)";
    return false;
  }
  std::error_code ec;
  std::filesystem::permissions(dir_.path(), std::filesystem::perms::all, ec);  // persistence
  if (port_ == 0) {
    port_ = FreePort();
  }
  dir_.Write("mosquitto.conf",
             "per_listener_settings true\n"
             "listener " + std::to_string(port_) + " 127.0.0.1\n"
             "allow_anonymous true\n"
             "persistence true\n"
             "persistence_location " + dir_.path() + "/\n"
             "max_queued_messages 100000\n"
             "max_inflight_messages 0\n"
             "log_dest stderr\n" + extra);
  proc_ = std::make_unique<Process>(
      std::vector<std::string>{bin, "-c", dir_.File("mosquitto.conf")});
  // Ready when the port accepts connections.
  bool up = WaitFor(
      [&] {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(static_cast<uint16_t>(port_));
        bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
        ::close(fd);
        return ok || !proc_->Running();
      },
      std::chrono::milliseconds(10000));
  if (!up || !proc_->Running()) {
    *why = "mosquitto did not start: " + proc_->Stderr();
    return false;
  }
  return true;
}

void Mosquitto::Stop() {
  if (proc_) {
    proc_->Signal(SIGTERM);
    proc_->Wait();
    proc_.reset();
  }
}

void Mosquitto::Kill() {
  if (proc_) {
    proc_->Signal(SIGKILL);
    proc_->Wait();
    proc_.reset();
  }
}

Mosquitto::~Mosquitto() { Stop(); }

std::string PostgresBinDir() {
  std::error_code ec;
  std::string best;
  for (const auto& e : std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
    std::string bin = e.path().string() + "/bin";
    if (::access((bin + "/initdb").c_str(), X_OK) == 0 && bin > best) {
      best = bin;
    }
  }
  return best;
}

namespace {
// As root, a command runs as the postgres user (PostgreSQL refuses to run as root). setpriv
// execs the command in place, so signals reach the server itself.
std::vector<std::string> AsPostgres(std::vector<std::string> argv) {
  if (::geteuid() != 0) {
    return argv;
  }
  std::vector<std::string> out = {"setpriv", "--reuid=postgres", "--regid=postgres",
                                  "--init-groups", "--"};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}
}  // namespace

bool Postgres::Start(std::string* why) {
  std::string bin = PostgresBinDir();
  if (bin.empty()) {
    *why = "PostgreSQL not found (apt-get install postgresql)";
    return false;
  }
  std::string data = dir_.File("pgdata");
  if (!initialized_) {
    if (::geteuid() == 0 && RunCommand({"chown", "-R", "postgres", dir_.path()}) != 0) {
      *why = "chown to postgres failed";
      return false;
    }
    std::string out, err;
    if (RunCommand(AsPostgres({bin + "/initdb", "-D", data, "-U", "gnomon", "--auth=trust",
                               "-E", "UTF8", "--no-sync"}),
                   &out, &err) != 0) {
      *why = "initdb failed: " + err;
      return false;
    }
    port_ = FreePort();
    initialized_ = true;
  }
  proc_ = std::make_unique<Process>(AsPostgres(
      {bin + "/postgres", "-D", data, "-p", std::to_string(port_), "-h", "127.0.0.1", "-k",
       dir_.path(), "-c", "fsync=off", "-c", "logging_collector=off"}));
  bool up = WaitFor(
      [&] {
        return RunCommand({bin + "/pg_isready", "-h", "127.0.0.1", "-p", std::to_string(port_)}) ==
                   0 ||
               !proc_->Running();
      },
      std::chrono::milliseconds(30000));
  if (!up || !proc_->Running()) {
    *why = "postgres did not start: " + proc_->Stderr();
    return false;
  }
  return true;
}

void Postgres::Stop() {
  if (proc_) {
    proc_->Signal(SIGINT);  // fast shutdown: disconnects clients
    proc_->Wait();
    proc_.reset();
  }
}

Postgres::~Postgres() { Stop(); }

std::string Postgres::url() const {
  return "postgresql://gnomon@127.0.0.1:" + std::to_string(port_) + "/postgres";
}

bool MakeServerCertificates(const TempDir& dir, std::string* why) {
  dir.Write("san.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  const std::vector<std::vector<std::string>> steps = {
      {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
       "ca.crt", "-days", "2", "-subj", "/CN=gnomon-test-ca"},
      {"openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
       "server.csr", "-subj", "/CN=localhost"},
      {"openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
       "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext"}};
  for (const auto& argv : steps) {
    std::string out, err;
    if (RunCommand(argv, &out, &err, dir.path()) != 0) {
      *why = argv[1] + ": " + err;
      return false;
    }
  }
  return true;
}

bool MakeClientCertificate(const TempDir& dir, const std::string& name, std::string* why) {
  return MakeSignedCertificate(dir, name, "extendedKeyUsage=clientAuth\n", why);
}

bool MakeSignedCertificate(const TempDir& dir, const std::string& name,
                           const std::string& extensions, std::string* why) {
  dir.Write(name + ".ext", extensions);
  const std::vector<std::vector<std::string>> steps = {
      {"openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out",
       name + ".csr", "-subj", "/CN=" + name},
      {"openssl", "x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
       "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", name + ".ext"},
      {"chmod", "0644", name + ".key"}};
  for (const auto& argv : steps) {
    std::string out, err;
    if (RunCommand(argv, &out, &err, dir.path()) != 0) {
      *why = argv[0] + " " + argv[1] + ": " + err;
      return false;
    }
  }
  return true;
}

bool MariaDb::Start(std::string* why, const std::vector<std::string>& extra) {
  const std::string server = "/usr/sbin/mariadbd";
  if (::access(server.c_str(), X_OK) != 0) {
    *why = "MariaDB not found (apt-get install mariadb-server)";
    return false;
  }
  std::string data = dir_.File("data");
  // A temp dir of its own: servers started by tests running side by side must not share /tmp
  // (two bootstraps there removed each other's temporary tables).
  std::string tmp = dir_.File("tmp");
  std::filesystem::create_directories(tmp);
  if (!initialized_) {
    std::string out, err;
    std::vector<std::string> install = {"mariadb-install-db",
                                        "--no-defaults",
                                        "--datadir=" + data,
                                        "--tmpdir=" + tmp,
                                        "--auth-root-authentication-method=normal",
                                        "--skip-test-db",
                                        "--skip-name-resolve"};
    if (::geteuid() == 0) {
      install.push_back("--user=root");
    }
    if (RunCommand(install, &out, &err) != 0) {
      *why = "mariadb-install-db failed: " + err;
      return false;
    }
    dir_.Write("init.sql",
               "CREATE USER IF NOT EXISTS 'gnomon'@'%' IDENTIFIED BY 's3cret';\n"
               "GRANT ALL ON *.* TO 'gnomon'@'%';\n"
               "CREATE DATABASE IF NOT EXISTS gnomon;\n");
    port_ = FreePort();
    initialized_ = true;
  }
  std::vector<std::string> argv = {server,
                                   "--no-defaults",
                                   "--datadir=" + data,
                                   "--tmpdir=" + tmp,
                                   "--port=" + std::to_string(port_),
                                   "--bind-address=127.0.0.1",
                                   "--socket=" + dir_.File("mysqld.sock"),
                                   "--pid-file=" + dir_.File("mysqld.pid"),
                                   "--init-file=" + dir_.File("init.sql"),
                                   "--skip-name-resolve",
                                   "--character-set-server=utf8mb4",  // as Debian configures it
                                   "--innodb-buffer-pool-size=64M",
                                   "--innodb-log-file-size=16M",
                                   "--innodb-flush-log-at-trx-commit=2"};
  if (::geteuid() == 0) {
    argv.push_back("--user=root");
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  proc_ = std::make_unique<Process>(argv);
  bool up = WaitFor(
      [&] {
        return RunCommand({"mariadb-admin", "--no-defaults", "-h", "127.0.0.1", "-P",
                           std::to_string(port_), "-u", "gnomon", "-ps3cret", "--connect-timeout=2",
                           "status"}) == 0 ||
               !proc_->Running();
      },
      std::chrono::milliseconds(60000));
  if (!up || !proc_->Running()) {
    *why = "mariadbd did not start: " + proc_->Stderr();
    return false;
  }
  return true;
}

void MariaDb::Stop() {
  if (proc_) {
    proc_->Signal(SIGTERM);
    proc_->Wait(std::chrono::milliseconds(60000));
    proc_.reset();
  }
}

void MariaDb::Kill() {
  if (proc_) {
    proc_->Signal(SIGKILL);
    proc_->Wait();
    proc_.reset();
  }
}

MariaDb::~MariaDb() { Stop(); }

std::string MariaDb::url() const {
  return "mysql://gnomon:s3cret@127.0.0.1:" + std::to_string(port_) + "/gnomon";
}

SmallDisk::SmallDisk(const std::string& dir, const std::string& size) : dir_(dir) {
  std::filesystem::create_directories(dir);
  mounted_ = RunCommand({"mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", dir}, nullptr,
                        &why_) == 0;
}

SmallDisk::~SmallDisk() {
  if (mounted_) {
    RunCommand({"umount", "-l", dir_});
  }
}

void SmallDisk::Fill() { RunCommand({"dd", "if=/dev/zero", "of=" + dir_ + "/ballast", "bs=4096"}); }

void SmallDisk::Free() { std::filesystem::remove(dir_ + "/ballast"); }

std::string SortedJson(const std::string& text) {
  simdjson::dom::parser p;
  simdjson::dom::element e;
  if (p.parse(text).get(e) != simdjson::SUCCESS || !e.is_object()) {
    return text;
  }
  std::map<std::string, std::string> fields;
  for (auto f : simdjson::dom::object(e)) {
    fields[std::string(f.key)] = simdjson::minify(f.value);
  }
  std::string out = "{";
  for (const auto& [k, v] : fields) {
    out += (out.size() > 1 ? ",\"" : "\"") + k + "\":" + v;
  }
  return out + "}";
}

}  // namespace gnomon::testing

// SPDX-License-Identifier: Apache-2.0
// HTTP ingest → rule → webhook with the real gnomon binary and a real HTTP receiver (cpp-httplib
// on loopback) that can answer 500 / 429 / 400, hang, go down, or present a certificate gnomon
// must not trust; kill -9 of gnomon during an outage loses nothing.
#define CPPHTTPLIB_OPENSSL_SUPPORT
#include <gtest/gtest.h>
#include <httplib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "tests/support/test_support.h"

namespace gnomon {
namespace {

using testing::Process;
using testing::TempDir;
using testing::WaitFor;

constexpr const char* kSecret = "0123456789abcdef-secret";

std::string HmacHex(std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), kSecret, static_cast<int>(std::strlen(kSecret)),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &len);
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) {
    char b[3];
    std::snprintf(b, sizeof b, "%02x", mac[i]);
    hex += b;
  }
  return hex;
}

// A webhook receiver whose behaviour the test scripts.
class Receiver {
 public:
  struct Request {
    std::string path, body, delivery, signature, timestamp;
  };
  enum class Mode { kOk, kFail500, kRetryAfter429, kHang };

  explicit Receiver(int port, httplib::Server* server = nullptr)
      : port_(port), own_(server == nullptr ? std::make_unique<httplib::Server>() : nullptr),
        srv_(server != nullptr ? server : own_.get()) {
    srv_->Post(".*", [this](const httplib::Request& req, httplib::Response& res) {
      Mode mode;
      {
        std::lock_guard lock(mu_);
        ++attempts_;
        mode = failures_left_ > 0 ? mode_ : Mode::kOk;
        if (failures_left_ > 0) {
          --failures_left_;
        }
      }
      if (req.path.find("/reject") != std::string::npos) {
        res.status = 400;
        res.set_content(R"({"error":"no such device"})", "application/json");
        return;
      }
      switch (mode) {
        case Mode::kFail500:
          res.status = 500;
          return;
        case Mode::kRetryAfter429:
          res.status = 429;
          res.set_header("Retry-After", "1");
          return;
        case Mode::kHang:
          std::this_thread::sleep_for(std::chrono::milliseconds(1500));
          break;
        case Mode::kOk:
          break;
      }
      std::lock_guard lock(mu_);
      got_.push_back({req.path, req.body, req.get_header_value("Gnomon-Delivery"),
                      req.get_header_value("X-Gnomon-Signature"),
                      req.get_header_value("Gnomon-Timestamp")});
      res.status = 204;
    });
  }
  ~Receiver() { Stop(); }

  void Start() {
    thread_ = std::thread([this] { srv_->listen("127.0.0.1", port_); });
    WaitFor([&] { return srv_->is_running(); });
  }
  void Stop() {
    srv_->stop();
    if (thread_.joinable()) {
      thread_.join();
    }
  }
  void FailNext(Mode mode, int n) {
    std::lock_guard lock(mu_);
    mode_ = mode;
    failures_left_ = n;
  }
  std::vector<Request> got() {
    std::lock_guard lock(mu_);
    return got_;
  }
  int attempts() {
    std::lock_guard lock(mu_);
    return attempts_;
  }

 private:
  int port_;
  std::unique_ptr<httplib::Server> own_;
  httplib::Server* srv_;
  std::thread thread_;
  std::mutex mu_;
  Mode mode_ = Mode::kOk;
  int failures_left_ = 0;
  int attempts_ = 0;
  std::vector<Request> got_;
};

class WebhookIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    hook_port_ = testing::FreePort();
    api_port_ = testing::FreePort();
    dir_.Write("rules/forward.lua", R"(
      return rule { name = "forward", from = "in/#",
        handle = function(msg, ctx)
          ctx.emit("hook", { device = msg.device, seq = msg.payload.seq })
        end })");
    WriteConfig("");
  }

  void WriteConfig(const std::string& sink_extra, const std::string& url = "",
                   const std::string& source_extra = "") {
    std::string u = url.empty() ? "http://127.0.0.1:" + std::to_string(hook_port_) + "/hook/${device}" : url;
    dir_.Write("gnomon.yaml",
               "workers: 2\ndata_dir: data\n"
               "sources:\n  - { name: ingest, type: http, device: \"topic[2]\"" + source_extra + " }\n"
               "sinks:\n  - name: hook\n    type: http\n    url: \"" + u + "\"\n"
               "    signing: { secret: \"" + kSecret + "\" }\n"
               "    timeout_ms: 500\n"
               "    retry: " + retry_ + "\n" + sink_extra +
               "rules: [rules/*.lua]\n"
               "api: { listen: \"127.0.0.1:" + std::to_string(api_port_) + "\", tokens: [t0ken] }\n"
               "metrics: { listen: \"127.0.0.1:" + std::to_string(api_port_) + "\" }\n");
  }

  std::unique_ptr<Process> StartGnomon() {
    auto p = std::make_unique<Process>(
        std::vector<std::string>{GNOMON_BINARY, "run", "-c", dir_.File("gnomon.yaml")});
    bool ready = WaitFor([&] { return Get("/readyz").first == 200 || !p->Running(); },
                         std::chrono::milliseconds(20000));
    EXPECT_TRUE(ready && p->Running()) << p->Stderr();
    return p;
  }

  std::pair<int, std::string> Get(const std::string& path) {
    httplib::Client cli("127.0.0.1", api_port_);
    cli.set_connection_timeout(1);
    auto res = cli.Get(path.c_str());
    return res ? std::make_pair(res->status, res->body) : std::make_pair(0, std::string());
  }

  httplib::Result Post(const std::string& path, const std::string& body,
                       const std::string& type = "application/x-ndjson",
                       const std::string& token = "t0ken") {
    httplib::Client cli("127.0.0.1", api_port_);
    cli.set_read_timeout(30);
    httplib::Headers h;
    if (!token.empty()) {
      h.emplace("Authorization", "Bearer " + token);
    }
    return cli.Post(path.c_str(), h, body, type.c_str());
  }

  // NDJSON of `per_device` messages for each of `devices` devices, seq first..first+per_device.
  static std::string Lines(int devices, int per_device, int first = 0) {
    std::string s;
    for (int i = first; i < first + per_device; ++i) {
      for (int d = 0; d < devices; ++d) {
        s += R"({"seq":)" + std::to_string(i) + "}\n";
      }
    }
    return s;
  }

  void PostTelemetry(int devices, int per_device, int first = 0) {
    for (int d = 0; d < devices; ++d) {
      std::string body;
      for (int i = first; i < first + per_device; ++i) {
        body += R"({"seq":)" + std::to_string(i) + "}\n";
      }
      auto res = Post("/v1/ingest/in/d" + std::to_string(d) + "/telemetry", body);
      ASSERT_TRUE(res);
      ASSERT_EQ(res->status, 202) << res->body;
    }
  }

  // Per device, the seqs received in arrival order.
  static std::map<std::string, std::vector<int>> ByDevice(const std::vector<Receiver::Request>& got) {
    std::map<std::string, std::vector<int>> out;
    for (const auto& r : got) {
      std::string body = r.body;
      size_t seq = body.find("\"seq\":");
      size_t dev = body.find("\"device\":\"");
      if (seq == std::string::npos || dev == std::string::npos) {
        continue;
      }
      std::string device = body.substr(dev + 10, body.find('"', dev + 10) - dev - 10);
      out[device].push_back(std::stoi(body.substr(seq + 6)));
    }
    return out;
  }

  TempDir dir_;
  std::string retry_ = "{ initial_ms: 50, max_ms: 400, max_attempts: 0 }";
  int hook_port_ = 0;
  int api_port_ = 0;
};

TEST_F(WebhookIntegrationTest, DeliversSignedRecordsInOrderPerDevice) {
  Receiver rx(hook_port_);
  rx.Start();
  auto g = StartGnomon();
  PostTelemetry(4, 50);
  ASSERT_TRUE(WaitFor([&] { return rx.got().size() == 200; })) << rx.got().size();
  auto got = rx.got();
  for (const auto& [device, seqs] : ByDevice(got)) {
    ASSERT_EQ(seqs.size(), 50u) << device;
    for (int i = 0; i < 50; ++i) {
      EXPECT_EQ(seqs[static_cast<size_t>(i)], i) << device;
    }
  }
  for (const auto& r : got) {
    EXPECT_EQ(r.signature, "sha256=" + HmacHex(r.timestamp + "." + r.body));
    EXPECT_TRUE(r.delivery.starts_with("hook-")) << r.delivery;
    EXPECT_TRUE(r.path.starts_with("/hook/d")) << r.path;
  }
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(WebhookIntegrationTest, Kill9DuringAnOutageLosesNothing) {
  Receiver rx(hook_port_);  // not started: the receiver is down
  auto g = StartGnomon();
  PostTelemetry(3, 100);  // 202: every message is durable in the outbox
  ::kill(g->pid(), SIGKILL);
  g->Wait();
  rx.Start();
  g = StartGnomon();
  auto all_arrived = [&] {
    auto by = ByDevice(rx.got());
    if (by.size() != 3) {
      return false;
    }
    for (const auto& [device, seqs] : by) {
      if (std::set<int>(seqs.begin(), seqs.end()).size() != 100) {
        return false;
      }
    }
    return true;
  };
  ASSERT_TRUE(WaitFor(all_arrived, std::chrono::milliseconds(30000))) << rx.got().size();
  auto by = ByDevice(rx.got());
  for (const auto& [device, seqs] : by) {
    // In order, each seq at least once.
    EXPECT_TRUE(std::is_sorted(seqs.begin(), seqs.end())) << device;
  }
  std::set<std::string> ids;
  for (const auto& r : rx.got()) {
    ids.insert(r.delivery);
  }
  EXPECT_EQ(ids.size(), 300u);
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(WebhookIntegrationTest, RetriesServerErrorsAndRetryAfterThenDeadLettersA400) {
  Receiver rx(hook_port_);
  rx.Start();
  rx.FailNext(Receiver::Mode::kFail500, 3);
  auto g = StartGnomon();
  PostTelemetry(1, 5);
  ASSERT_TRUE(WaitFor([&] { return rx.got().size() == 5; })) << rx.got().size();
  EXPECT_GE(rx.attempts(), 8);

  rx.FailNext(Receiver::Mode::kRetryAfter429, 1);
  auto start = std::chrono::steady_clock::now();
  PostTelemetry(1, 1, 5);
  ASSERT_TRUE(WaitFor([&] { return rx.got().size() == 6; }));
  // Retry-After: 1 is honoured (capped by retry.max_ms = 400 ms here).
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(350));

  // A 400 is not retried: the record is dead-lettered with the receiver's answer.
  auto res = Post("/v1/ingest/in/reject/telemetry", R"({"seq":1})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 202);
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
    return dl.find("HTTP 400") != std::string::npos;
  })) << dl;
  EXPECT_NE(dl.find(R"("reason":"sink_error")"), std::string::npos) << dl;
  EXPECT_NE(dl.find(R"(no such device)"), std::string::npos) << dl;
  std::string metrics = Get("/metrics").second;
  EXPECT_NE(metrics.find(R"(gnomon_sink_records_total{sink="hook",outcome="retried"})"),
            std::string::npos);
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(WebhookIntegrationTest, AHangingReceiverTimesOutAndIsRetried) {
  Receiver rx(hook_port_);
  rx.Start();
  rx.FailNext(Receiver::Mode::kHang, 1);  // 1.5 s, over timeout_ms 500
  auto g = StartGnomon();
  PostTelemetry(1, 1);
  ASSERT_TRUE(WaitFor([&] { return !rx.got().empty(); }));
  EXPECT_GE(rx.attempts(), 2);
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(WebhookIntegrationTest, BatchesAreJsonArrays) {
  WriteConfig("    batch: { max_records: 50, linger_ms: 50 }\n",
              "http://127.0.0.1:" + std::to_string(hook_port_) + "/batch");
  Receiver rx(hook_port_);
  rx.Start();
  auto g = StartGnomon();
  PostTelemetry(2, 100);
  ASSERT_TRUE(WaitFor([&] {
    size_t n = 0;
    for (const auto& r : rx.got()) {
      n += static_cast<size_t>(std::count(r.body.begin(), r.body.end(), '{'));
    }
    return n == 200;
  }));
  auto got = rx.got();
  EXPECT_LT(got.size(), 200u);
  for (const auto& r : got) {
    EXPECT_EQ(r.body.front(), '[');
    EXPECT_EQ(r.body.back(), ']');
  }
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(WebhookIntegrationTest, ACertificateThatIsNotTrustedIsRetriedThenTrustedWithCaFile) {
  std::string why;
  ASSERT_EQ(testing::RunCommand({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                 "-keyout", dir_.File("key.pem"), "-out", dir_.File("cert.pem"),
                                 "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                                 "subjectAltName=IP:127.0.0.1"},
                                nullptr, &why),
            0)
      << why;
  httplib::SSLServer tls(dir_.File("cert.pem").c_str(), dir_.File("key.pem").c_str());
  Receiver rx(hook_port_, &tls);
  rx.Start();
  std::string url = "https://127.0.0.1:" + std::to_string(hook_port_) + "/tls";
  retry_ = "{ initial_ms: 20, max_ms: 50, max_attempts: 2 }";
  WriteConfig("", url);
  {
    auto g = StartGnomon();
    PostTelemetry(1, 1);
    std::string dl;
    ASSERT_TRUE(WaitFor([&] {
      dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
      return dl.find("gave up after 2 attempts") != std::string::npos;
    })) << dl;
    EXPECT_NE(dl.find("certificate"), std::string::npos) << dl;
    EXPECT_TRUE(rx.got().empty());
    g->Signal(SIGTERM);
    EXPECT_EQ(g->Wait(), 0);
  }
  WriteConfig("    tls: { ca_file: cert.pem }\n", url);
  auto g = StartGnomon();
  PostTelemetry(1, 1, 1);
  ASSERT_TRUE(WaitFor([&] { return rx.got().size() == 1; }));
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(WebhookIntegrationTest, IngestRefusesBadBodiesAndAnswers429UnderBackPressure) {
  WriteConfig("    outbox: { durable: false }\n", "", ", max_in_flight: 3, max_message_bytes: 100");
  Receiver rx(hook_port_);  // down: records stay in flight
  auto g = StartGnomon();
  auto r = Post("/v1/ingest/in/d1/t", "{\"seq\":1}\n{\"seq\":\n", "application/x-ndjson");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("line 2"), std::string::npos) << r->body;
  r = Post("/v1/ingest/in/d1/t", "\xff\xfe", "application/json");
  EXPECT_EQ(r->status, 400) << r->body;
  r = Post("/v1/ingest/in/d1/t", "{\"seq\":\"" + std::string(200, 'x') + "\"}", "application/json");
  EXPECT_EQ(r->status, 413) << r->body;
  r = Post("/v1/ingest/in/d1/t", "{}", "application/json", "");
  EXPECT_EQ(r->status, 401) << r->body;
  r = Post("/v1/ingest/in/+/t", "{}", "application/json");
  EXPECT_EQ(r->status, 400) << r->body;
  r = Post("/v1/ingest/in", "{}", "application/json");  // no topic[2]
  EXPECT_EQ(r->status, 400) << r->body;
  r = Post("/v1/ingest/in/d1/t", std::string(17 << 20, ' '), "application/json");
  EXPECT_EQ(r->status, 413);

  // Three messages wait for the receiver; a fourth is refused with 429.
  std::thread first([&] {
    auto res = Post("/v1/ingest/in/d1/t", "[{\"seq\":0},{\"seq\":1},{\"seq\":2}]", "application/json");
    EXPECT_TRUE(res && res->status == 202) << (res ? res->body : "no answer");
  });
  ASSERT_TRUE(WaitFor([&] {
    return Get("/metrics").second.find("gnomon_outbox_records{sink=\"hook\"} 3") != std::string::npos;
  }));
  r = Post("/v1/ingest/in/d2/t", "{\"seq\":9}", "application/json");
  EXPECT_EQ(r->status, 429) << r->body;
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  rx.Start();  // the receiver comes up: the waiting request is answered 202
  first.join();
  EXPECT_EQ(rx.got().size(), 3u);
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

}  // namespace
}  // namespace gnomon

namespace gnomon {
namespace {

// Accepts connections on a port, reads the request and answers with a TCP reset (SO_LINGER 0),
// as a receiver behind a crashing proxy does.
class ResettingListener {
 public:
  explicit ResettingListener(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    bound_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
             ::listen(fd_, 64) == 0;
    thread_ = std::thread([this] {
      for (;;) {
        int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) {
          return;  // shut down
        }
        char buf[4096];
        (void)::recv(c, buf, sizeof(buf), 0);
        linger l{1, 0};
        ::setsockopt(c, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        ::close(c);
        ++resets_;
      }
    });
  }
  ~ResettingListener() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  bool bound() const { return bound_; }
  int resets() const { return resets_.load(); }

 private:
  int fd_ = -1;
  bool bound_ = false;
  std::atomic<int> resets_{0};
  std::thread thread_;
};

TEST_F(WebhookIntegrationTest, ConnectionResetsAreRetriedUntilTheReceiverIsBack) {
  auto g = StartGnomon();
  {
    ResettingListener reset(hook_port_);
    ASSERT_TRUE(reset.bound());
    std::thread post([&] { PostTelemetry(2, 20); });  // 202 once durable in the outbox
    ASSERT_TRUE(WaitFor([&] { return reset.resets() >= 3; })) << reset.resets();
    post.join();
  }
  EXPECT_NE(Get("/metrics").second.find("gnomon_sink_records_total{sink=\"hook\",outcome=\"retried\"}"),
            std::string::npos) << Get("/metrics").second;
  Receiver rx(hook_port_);
  rx.Start();
  ASSERT_TRUE(WaitFor([&] { return rx.got().size() >= 40; }, std::chrono::milliseconds(20000)))
      << rx.got().size();
  for (const auto& [device, seqs] : ByDevice(rx.got())) {
    EXPECT_EQ(std::set<int>(seqs.begin(), seqs.end()).size(), 20u) << device;
    EXPECT_TRUE(std::is_sorted(seqs.begin(), seqs.end())) << device;
  }
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(WebhookIntegrationTest, IngestTakesJsonSeqArraysRawBytesAndSingleArrays) {
  Receiver rx(hook_port_);
  rx.Start();
  auto g = StartGnomon();
  const std::string path = "/v1/ingest/in/d1/t";
  auto r = Post(path, "\x1e{\"seq\":0}\n\x1e{\"seq\":1}\n", "application/json-seq");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 202) << r->body;
  EXPECT_EQ(r->body, R"({"accepted":2})");
  r = Post(path, R"([{"seq":2},{"seq":3}])", "application/json");
  EXPECT_EQ(r->status, 202) << r->body;
  EXPECT_EQ(r->body, R"({"accepted":2})");
  r = Post(path, R"({"seq":4})", "application/octet-stream");
  EXPECT_EQ(r->status, 202) << r->body;
  // An empty body is no message, whatever its type (docs/ingest.md): 400 EMPTY.
  for (const char* type : {"application/octet-stream", "application/x-ndjson"}) {
    r = Post(path, "", type);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << type << ": " << r->body;
    EXPECT_NE(r->body.find("EMPTY"), std::string::npos) << r->body;
  }
  r = Post(path + "?batch=false", R"([{"seq":5}])", "application/json");  // one message: an array
  EXPECT_EQ(r->status, 202) << r->body;
  EXPECT_EQ(r->body, R"({"accepted":1})");
  ASSERT_TRUE(WaitFor([&] { return rx.got().size() == 6; })) << rx.got().size();
  EXPECT_EQ(ByDevice(rx.got())["d1"], (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(rx.got().back().body.find("seq"), std::string::npos) << rx.got().back().body;
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

TEST_F(WebhookIntegrationTest, AFullDiskHoldsIntakeReportsItAndRecoversWithoutLoss) {
  if (::geteuid() != 0) {
    GNOMON_REQUIRE_SERVER(false, "mounting a small tmpfs needs root");
  }
  testing::SmallDisk disk(dir_.File("data/outbox"), "16m");  // room for SQLite's WAL (up to ~4 MB)
  GNOMON_REQUIRE_SERVER(disk.mounted(), "mount -t tmpfs failed: " + disk.why());
  // Records of ~1 KB: 200 of them cannot fit in whatever slack SQLite's files have.
  dir_.Write("rules/forward.lua", R"(
    return rule { name = "forward", from = "in/#",
      handle = function(msg, ctx)
        ctx.emit("hook", { device = msg.device, seq = msg.payload.seq, pad = msg.payload.pad })
      end })");
  auto g = StartGnomon();  // the outbox database is created on the small disk
  disk.Fill();

  // The POST is held: its messages cannot be made durable, so it is not answered.
  std::string body;
  for (int i = 0; i < 200; ++i) {
    body += R"({"seq":)" + std::to_string(i) + R"(,"pad":")" + std::string(1000, 'p') + "\"}\n";
  }
  std::atomic<int> status{0};
  std::thread post([&] {
    auto res = Post("/v1/ingest/in/d1/t", body);
    status = res ? res->status : -1;
  });
  auto metric_positive = [&](const std::string& name) {
    std::string m = Get("/metrics").second;
    size_t at = m.find(name);
    return at != std::string::npos && m.compare(at + name.size(), 2, " 0") != 0;
  };
  ASSERT_TRUE(WaitFor([&] { return metric_positive("gnomon_outbox_write_errors_total{sink=\"hook\"}"); }));
  EXPECT_TRUE(WaitFor([&] { return Get("/readyz").first == 503; }));
  EXPECT_EQ(status.load(), 0) << "answered while the outbox could not write";

  Receiver rx(hook_port_);
  rx.Start();
  disk.Free();  // space again: the held records commit, the POST is answered, all are delivered
  post.join();
  EXPECT_EQ(status.load(), 202);
  ASSERT_TRUE(WaitFor([&] { return rx.got().size() >= 200; }, std::chrono::milliseconds(20000)))
      << rx.got().size();
  auto seqs = ByDevice(rx.got())["d1"];
  EXPECT_EQ(std::set<int>(seqs.begin(), seqs.end()).size(), 200u);
  EXPECT_TRUE(std::is_sorted(seqs.begin(), seqs.end()));
  EXPECT_TRUE(WaitFor([&] { return Get("/readyz").first == 200; })) << Get("/readyz").second;
  EXPECT_NE(g->Stderr().find("outbox write failed"), std::string::npos);
  EXPECT_NE(g->Stderr().find("outbox writable again"), std::string::npos);
  g->Signal(SIGTERM);
  EXPECT_EQ(g->Wait(), 0);
}

}  // namespace
}  // namespace gnomon

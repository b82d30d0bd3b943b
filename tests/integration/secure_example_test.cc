// SPDX-License-Identifier: Apache-2.0
// examples/secure as shipped: its setup script, its mosquitto config and ACL (a real mosquitto
// with TLS and password files) and its gnomon config (the API over TLS with scoped tokens). A
// device's shadow works end to end; another device, an anonymous client and a wrong password
// get nowhere.
#define CPPHTTPLIB_OPENSSL_SUPPORT
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <filesystem>
#include <map>
#include <string>

#include "tests/support/mqtt_test_client.h"
#include "tests/support/test_support.h"

namespace gnomon {
namespace {

using testing::Client;
using testing::ClientLogin;
using testing::Process;
using testing::TempDir;
using testing::WaitFor;

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) {
    s.replace(p, from.size(), to);
  }
  return s;
}

class SecureExampleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GNOMON_REQUIRE_SERVER(!testing::MosquittoBinary().empty(),
                          "mosquitto (apt-get install mosquitto)");
    namespace fs = std::filesystem;
    fs::path example = fs::path(GNOMON_SOURCE_DIR) / "examples" / "secure";
    fs::copy(example, dir_.path(), fs::copy_options::recursive);
    fs::remove_all(dir_.File("certs"));
    fs::remove_all(dir_.File("data"));
    std::string out, err;
    ASSERT_EQ(testing::RunCommand({dir_.File("setup.sh"), dir_.File("certs")}, &out, &err), 0)
        << out << err;
    for (const auto& line : testing::ReadLines(dir_.File("certs/secrets.env"))) {
      size_t eq = line.find('=');
      secrets_[line.substr(0, eq)] = line.substr(eq + 1);
    }
    // The example's fixed ports, moved to free ones.
    device_port_ = testing::FreePort();
    backend_port_ = testing::FreePort();
    api_port_ = testing::FreePort();
    std::string conf = testing::ReadFile(dir_.File("mosquitto.conf"));
    conf = Replace(conf, "listener 8883", "listener " + std::to_string(device_port_) + " 127.0.0.1");
    conf = Replace(conf, "listener 8884", "listener " + std::to_string(backend_port_));
    dir_.Write("mosquitto.conf", conf + "log_dest stderr\n");
    std::string yaml = testing::ReadFile(dir_.File("gnomon.yaml"));
    yaml = Replace(yaml, "localhost:8884", "localhost:" + std::to_string(backend_port_));
    yaml = Replace(yaml, ":8443", ":" + std::to_string(api_port_));
    yaml = Replace(yaml, ":9464", ":" + std::to_string(testing::FreePort()));
    dir_.Write("gnomon.yaml", yaml);
    // mosquitto drops to its own user when started as root: it must reach the folder.
    fs::permissions(dir_.path(), fs::perms::owner_all | fs::perms::group_read |
                                     fs::perms::group_exec | fs::perms::others_read |
                                     fs::perms::others_exec);

    broker_ = std::make_unique<Process>(
        std::vector<std::string>{testing::MosquittoBinary(), "-c", dir_.File("mosquitto.conf")},
        dir_.path());
    ASSERT_TRUE(WaitFor([&] {
      return broker_->Stderr().find("running") != std::string::npos || !broker_->Running();
    }));
    ASSERT_TRUE(broker_->Running()) << broker_->Stderr();

    for (const auto& [k, v] : secrets_) {
      ::setenv(k.c_str(), v.c_str(), 1);
    }
    gnomon_ = std::make_unique<Process>(
        std::vector<std::string>{GNOMON_BINARY, "run", "-c", dir_.File("gnomon.yaml")},
        dir_.path());
    ASSERT_TRUE(WaitFor([&] {
      auto r = Api()->Get("/readyz");
      return (r && r->status == 200) || !gnomon_->Running();
    }, std::chrono::milliseconds(20000)));
    ASSERT_TRUE(gnomon_->Running()) << gnomon_->Stderr();
  }

  void TearDown() override {
    if (gnomon_ && gnomon_->Running()) {
      gnomon_->Signal(SIGTERM);
      EXPECT_EQ(gnomon_->Wait(), 0) << gnomon_->Stderr();
    }
  }

  ClientLogin Login(const std::string& user, const std::string& password) {
    return {user, password, dir_.File("certs/ca.pem")};
  }

  std::unique_ptr<httplib::SSLClient> Api() {
    auto cli = std::make_unique<httplib::SSLClient>("localhost", api_port_);
    cli->set_ca_cert_path(dir_.File("certs/ca.pem").c_str());
    cli->enable_server_certificate_verification(true);
    cli->set_read_timeout(10);
    return cli;
  }

  std::string Shadow(const std::string& thing) {
    auto r = Api()->Get(("/v1/things/" + thing + "/shadow").c_str(),
                       {{"Authorization", "Bearer " + secrets_["GNOMON_API_DEVICE_APP_TOKEN"]}});
    return r ? std::to_string(r->status) + " " + r->body : "no answer";
  }

  TempDir dir_;
  std::map<std::string, std::string> secrets_;
  int device_port_ = 0, backend_port_ = 0, api_port_ = 0;
  std::unique_ptr<Process> broker_, gnomon_;
};

TEST_F(SecureExampleTest, TheDeviceWorksEndToEndAndTheIntruderGetsNowhere) {
  // The device: its shadow over MQTT (TLS, its password), read back over the API (TLS, token).
  Client lock1(device_port_, "lock-1", Login("lock-1", secrets_["LOCK1_PASSWORD"]));
  ASSERT_TRUE(lock1.connected()) << "connack " << lock1.connack() << "\n" << broker_->Stderr();
  ASSERT_EQ(lock1.Subscribe("$aws/things/lock-1/shadow/#"), 1);
  lock1.Publish("$aws/things/lock-1/shadow/update", R"({"state":{"reported":{"locked":true}}})");
  ASSERT_TRUE(WaitFor([&] {
    for (const auto& [t, p] : lock1.received()) {
      if (t == "$aws/things/lock-1/shadow/update/accepted") {
        return true;
      }
    }
    return false;
  })) << gnomon_->Stderr();
  lock1.Publish("devices/lock-1/telemetry", R"({"battery":77})");
  ASSERT_TRUE(WaitFor([&] { return Shadow("lock-1").find(R"("battery":77)") != std::string::npos; }))
      << Shadow("lock-1");

  // The intruder: a real device of the fleet (lock-2, with its own password).
  Client lock2(device_port_, "lock-1", Login("lock-2", secrets_["LOCK2_PASSWORD"]));
  ASSERT_TRUE(lock2.connected()) << lock2.connack();
  // mosquitto grants the subscriptions and checks the ACL on each delivery: lock-1's answers
  // below must not reach them.
  EXPECT_GE(lock2.Subscribe("$aws/things/lock-1/shadow/#"), 0);
  EXPECT_GE(lock2.Subscribe("$aws/things/+/shadow/#"), 0);
  lock2.Publish("$aws/things/lock-1/shadow/update", R"({"state":{"desired":{"locked":false}}})");
  lock2.Publish("$aws/things/lock-1/shadow/update/delta", R"({"state":{"locked":false},"version":99})");
  lock2.Publish("$aws/events/presence/disconnected/lock-1", R"({"clientId":"lock-1"})");
  lock2.Publish("devices/lock-1/telemetry", R"({"battery":1})");
  ASSERT_TRUE(WaitFor([&] { return lock2.AllAcked(); }));
  // It used "lock-1" as its client id: the broker made it "lock-2", so lock-1 stayed on.
  EXPECT_TRUE(lock1.connected());
  EXPECT_EQ(lock1.disconnects(), 0);
  // lock-1's next update is a sync point: everything the intruder sent came before it.
  lock1.Publish("$aws/things/lock-1/shadow/update", R"({"state":{"reported":{"locked":true,"n":2}}})");
  ASSERT_TRUE(WaitFor([&] { return Shadow("lock-1").find(R"("n":2)") != std::string::npos; }));
  std::string doc = Shadow("lock-1");
  EXPECT_EQ(doc.find("desired"), std::string::npos) << doc;
  EXPECT_NE(doc.find(R"("battery":77)"), std::string::npos) << doc;
  for (const auto& [t, p] : lock1.received()) {
    EXPECT_EQ(t.find("/delta"), std::string::npos) << "a forged delta reached lock-1: " << p;
  }
  ASSERT_TRUE(WaitFor([&] {
    for (const auto& [t, p] : lock1.received()) {
      if (t == "$aws/things/lock-1/shadow/update/accepted" && p.find(R"("n":2)") != std::string::npos) {
        return true;
      }
    }
    return false;
  })) << "lock-1 got its answer (the intruder, subscribed first, would have too)";
  for (const auto& [t, p] : lock2.received()) {
    ADD_FAILURE() << "the intruder read " << t << ": " << p;
  }

  // Anonymous, a wrong password, and plain text on the TLS port: refused.
  Client anonymous(device_port_, "anon", {"", "", dir_.File("certs/ca.pem")});
  EXPECT_FALSE(anonymous.connected());
  EXPECT_EQ(anonymous.connack(), 5) << "not authorized";
  Client guess(device_port_, "lock-1", Login("lock-1", "guess"));
  EXPECT_FALSE(guess.connected());
  EXPECT_EQ(guess.connack(), 5);
  Client plain(device_port_, "lock-1", {"lock-1", secrets_["LOCK1_PASSWORD"], ""});
  EXPECT_FALSE(plain.connected());
  EXPECT_TRUE(lock1.connected()) << "the failed logins did not take lock-1's session";

  // The API: the device app's token reads and writes but cannot reload rules; no token, 401.
  auto reload = Api()->Post("/v1/rules/reload",
                           {{"Authorization", "Bearer " + secrets_["GNOMON_API_DEVICE_APP_TOKEN"]}},
                           "", "application/json");
  ASSERT_TRUE(reload);
  EXPECT_EQ(reload->status, 403);
  auto admin = Api()->Post("/v1/rules/reload",
                          {{"Authorization", "Bearer " + secrets_["GNOMON_API_ADMIN_TOKEN"]}}, "",
                          "application/json");
  ASSERT_TRUE(admin);
  EXPECT_EQ(admin->status, 200);
  auto none = Api()->Get("/v1/things/lock-1/shadow");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_TRUE(gnomon_->Running());
}

}  // namespace
}  // namespace gnomon

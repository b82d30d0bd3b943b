// SPDX-License-Identifier: Apache-2.0
// The AWS IoT Device SDKs themselves against gnomon: npm's aws-iot-device-sdk (v1,
// thingShadow) and aws-iot-device-sdk-v2 (MQTT 5, IotShadowClientv2), pinned in
// tests/sdk/package-lock.json, run the device flows of tests/sdk/*.js against the real gnomon
// binary through a real mosquitto with a TLS listener that wants client certificates (made here
// with openssl), as devices meet AWS IoT. Each script prints one line per scenario; the test
// asserts every one of them passed.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>

#include "tests/support/test_support.h"

namespace gnomon {
namespace {

using testing::Mosquitto;
using testing::Process;
using testing::TempDir;
using testing::WaitFor;

// `node` on PATH, or empty.
std::string NodeBinary() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/usr/local/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    std::string candidate = dir + "/node";
    if (::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

const std::string kSdkDir = std::string(GNOMON_SOURCE_DIR) + "/tests/sdk";

class SdkConformanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GNOMON_REQUIRE_SERVER(!testing::MosquittoBinary().empty(),
                          "mosquitto (apt-get install mosquitto)");
    node_ = NodeBinary();
    GNOMON_REQUIRE_SERVER(!node_.empty(), "Node.js (apt-get install nodejs npm)");
    for (const char* package : {"aws-iot-device-sdk", "aws-iot-device-sdk-v2", "aws-crt"}) {
      GNOMON_REQUIRE_SERVER(
          std::filesystem::exists(kSdkDir + "/node_modules/" + package + "/package.json"),
          std::string(package) + " is not installed: npm ci --prefix tests/sdk --ignore-scripts");
    }
    std::string why;
    ASSERT_TRUE(testing::MakeServerCertificates(certs_, &why)) << why;
    ASSERT_TRUE(testing::MakeClientCertificate(certs_, "device", &why)) << why;
    ASSERT_TRUE(testing::MakeClientCertificate(certs_, "gnomon", &why)) << why;
    ASSERT_EQ(testing::RunCommand({"chmod", "0644", "server.key"}, nullptr, nullptr, certs_.path()),
              0);
    tls_port_ = testing::FreePort();
    // As on AWS IoT: TLS only, and a client certificate from the fleet's CA is required.
    ASSERT_TRUE(broker_.Start(&why, "listener " + std::to_string(tls_port_) + " 127.0.0.1\n" +
                                        "allow_anonymous true\nrequire_certificate true\n" +
                                        "cafile " + certs_.File("ca.crt") + "\ncertfile " +
                                        certs_.File("server.crt") + "\nkeyfile " +
                                        certs_.File("server.key") + "\n"))
        << why;
    api_port_ = testing::FreePort();
    dir_.Write("gnomon.yaml",
               "data_dir: data\n"
               "connections:\n"
               "  broker: { type: mqtt, url: \"mqtts://localhost:" +
                   std::to_string(tls_port_) +
                   "\", client_id: gnomon-sdk,\n"
                   "            tls: { ca_file: " +
                   certs_.File("ca.crt") + ", cert_file: " + certs_.File("gnomon.crt") +
                   ", key_file: " + certs_.File("gnomon.key") +
                   " },\n"
                   "            reconnect: { initial_ms: 50, max_ms: 500 } }\n"
                   "shadows: { connection: broker }\n"
                   "api: { listen: \"127.0.0.1:" +
                   std::to_string(api_port_) + "\" }\n");
    gnomon_ = std::make_unique<Process>(
        std::vector<std::string>{GNOMON_BINARY, "run", "-c", dir_.File("gnomon.yaml")});
    httplib::Client api("127.0.0.1", api_port_);
    bool ready = WaitFor(
        [&] {
          auto res = api.Get("/readyz");
          return (res && res->status == 200) || !gnomon_->Running();
        },
        std::chrono::milliseconds(20000));
    ASSERT_TRUE(ready && gnomon_->Running()) << gnomon_->Stderr();
  }

  void TearDown() override {
    if (gnomon_ != nullptr) {
      gnomon_->Signal(SIGTERM);
      EXPECT_EQ(gnomon_->Wait(), 0) << gnomon_->Stderr();
    }
  }

  // Runs tests/sdk/`script` for `thing`; every scenario must pass, and there must be `scenarios`
  // of them (a script that stops early fails too).
  void RunScript(const std::string& script, const std::string& thing, int scenarios) {
    std::string settings = "{\"host\":\"localhost\",\"port\":" + std::to_string(tls_port_) +
                           ",\"ca\":\"" + certs_.File("ca.crt") + "\",\"cert\":\"" +
                           certs_.File("device.crt") + "\",\"key\":\"" + certs_.File("device.key") +
                           "\",\"api\":\"http://127.0.0.1:" + std::to_string(api_port_) +
                           "\",\"thing\":\"" + thing + "\"}";
    std::string out, err;
    int rc = testing::RunCommand({node_, kSdkDir + "/" + script, settings}, &out, &err, kSdkDir);
    EXPECT_EQ(rc, 0) << out << err << gnomon_->Stderr();
    EXPECT_NE(out.find("scenarios: " + std::to_string(scenarios) + " passed, 0 failed"),
              std::string::npos)
        << out << err;
    EXPECT_EQ(out.find("not ok"), std::string::npos) << out;
    std::cout << out;  // the scenarios, in the test's log
  }

  TempDir certs_;
  TempDir dir_;
  Mosquitto broker_;
  std::unique_ptr<Process> gnomon_;
  std::string node_;
  int tls_port_ = 0;
  int api_port_ = 0;
};

TEST_F(SdkConformanceTest, DeviceSdkV1ThingShadowWholeFlow) {
  RunScript("v1_thing_shadow.js", "sdk-v1", 28);
}

TEST_F(SdkConformanceTest, DeviceSdkV2ShadowClientOverMqtt5) {
  RunScript("v2_shadow_client.js", "sdk-v2", 14);
}

}  // namespace
}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
// Device shadows end to end: the real gnomon binary, a real mosquitto broker (AWS topic
// layout), the REST API through a real HTTP client, rules reading and writing shadows, and
// durability across kill -9.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <simdjson.h>
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "tests/support/mqtt_test_client.h"
#include "tests/support/test_support.h"

namespace gnomon {
namespace {

using testing::Client;
using testing::Mosquitto;
using testing::Process;
using testing::TempDir;
using testing::WaitFor;

class ShadowIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GNOMON_REQUIRE_SERVER(!testing::MosquittoBinary().empty(),
                          "mosquitto (apt-get install mosquitto)");
    std::string why;
    ASSERT_TRUE(broker_.Start(&why)) << why;
    api_port_ = testing::FreePort();
    // Telemetry is reported into the shadow; a second rule reacts to deltas.
    dir_.Write("rules/report.lua", R"(
      return rule { name = "report", from = "devices/+/telemetry",
        handle = function(msg, ctx)
          ctx.shadow:report { temp = msg.payload.temp }
          if msg.payload.room then
            ctx.shadow_of("room-" .. msg.payload.room):report { last = msg.device }
          end
          if msg.payload.bad then
            ctx.shadow:report { ["$bad"] = 1 }
            ctx.emit("archive", { never = true })
          end
        end })");
    dir_.Write("rules/on_delta.lua", R"(
      return rule { name = "on_delta", from = "$aws/things/+/shadow/update/delta",
        handle = function(msg, ctx)
          ctx.emit("archive", { thing = msg.device, delta = msg.payload.state,
                                version = msg.payload.version })
        end })");
    dir_.Write("gnomon.yaml", Fill(R"(workers: 2
data_dir: data
connections:
  broker: { type: mqtt, url: "mqtt://127.0.0.1:{port}", client_id: gnomon-sh,
            reconnect: { initial_ms: 50, max_ms: 500 } }
sources:
  - { name: telemetry, connection: broker, topics: ["devices/+/telemetry"], qos: 1 }
sinks:
  - { name: archive, type: file, path: archive.jsonl, linger_ms: 0 }
shadows: { connection: broker }
rules: [rules/*.lua]
api: { listen: "127.0.0.1:{api}" }
metrics: { listen: "127.0.0.1:{api}" }
)"));
  }

  std::string Fill(std::string s) {
    auto rep = [&](const std::string& k, const std::string& v) {
      for (size_t p; (p = s.find(k)) != std::string::npos;) {
        s.replace(p, k.size(), v);
      }
    };
    rep("{port}", std::to_string(broker_.port()));
    rep("{api}", std::to_string(api_port_));
    return s;
  }

  std::unique_ptr<Process> StartGnomon() {
    auto p = std::make_unique<Process>(
        std::vector<std::string>{GNOMON_BINARY, "run", "-c", dir_.File("gnomon.yaml")});
    bool ready = WaitFor([&] { return Call("GET", "/readyz").first == 200 || !p->Running(); },
                         std::chrono::milliseconds(20000));
    EXPECT_TRUE(ready && p->Running()) << p->Stderr();
    return p;
  }

  std::pair<int, std::string> Call(const std::string& method, const std::string& path,
                                   const std::string& body = "", const std::string& token = "",
                                   httplib::Headers h = {}) {
    httplib::Client cli("127.0.0.1", api_port_);
    cli.set_connection_timeout(2);
    cli.set_read_timeout(15);
    if (!token.empty()) {
      h.emplace("Authorization", "Bearer " + token);
    }
    httplib::Result res = method == "GET"    ? cli.Get(path.c_str(), h)
                          : method == "POST" ? cli.Post(path.c_str(), h, body, "application/json")
                                             : cli.Delete(path.c_str(), h);
    if (!res) {
      return {0, ""};
    }
    return {res->status, res->body};
  }

  // The payload of the first message on `topic` containing `needle`, waiting for it.
  std::optional<std::string> Await(Client& c, const std::string& topic,
                                   const std::string& needle = "") {
    std::optional<std::string> found;
    WaitFor([&] {
      for (const auto& [t, p] : c.received()) {
        if (t == topic && p.find(needle) != std::string::npos) {
          found = p;
          return true;
        }
      }
      return false;
    }, std::chrono::milliseconds(15000));
    return found;
  }

  // The stateful-rule tests' setup: `rule` as the only rule, HTTP ingest ("devices/{d}/..."),
  // the store on, and `sinks` (YAML list items).
  void UseIngestRule(const std::string& rule,
                     const std::string& sinks =
                         "  - { name: archive, type: file, path: archive.jsonl, linger_ms: 0 }\n",
                     const std::string& extra = "") {
    dir_.Write("rules/report.lua", rule);
    std::filesystem::remove(dir_.File("rules/on_delta.lua"));
    dir_.Write("gnomon.yaml", Fill("workers: 2\ndata_dir: data\nsources:\n"
                                   "  - { name: ingest, type: http, device: \"topic[2]\" }\n" +
                                   extra + "sinks:\n" + sinks +
                                   "shadows: {}\nrules: [rules/*.lua]\n"
                                   "api: { listen: \"127.0.0.1:{api}\" }\n"
                                   "metrics: { listen: \"127.0.0.1:{api}\" }\n"));
  }

  Mosquitto broker_;
  TempDir dir_;
  int api_port_ = 0;
};

TEST_F(ShadowIntegrationTest, DeviceSdkStyleMqttRequestsGetAwsAnswers) {
  auto gnomon = StartGnomon();
  Client device(broker_.port(), "dev1-sdk");
  device.Subscribe("$aws/things/dev1/shadow/#");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));

  device.Publish("$aws/things/dev1/shadow/update",
                 R"({"state":{"reported":{"color":"GREEN"}},"clientToken":"t1"})");
  auto accepted = Await(device, "$aws/things/dev1/shadow/update/accepted", "\"t1\"");
  ASSERT_TRUE(accepted) << gnomon->Stderr();
  EXPECT_NE(accepted->find(R"("version":1)"), std::string::npos) << *accepted;
  auto documents = Await(device, "$aws/things/dev1/shadow/update/documents");
  ASSERT_TRUE(documents);
  EXPECT_NE(documents->find(R"("previous":null)"), std::string::npos) << *documents;

  // The back end sets desired over REST; the device gets the delta over MQTT.
  auto [code, body] = Call("POST", "/v1/things/dev1/shadow",
                           R"({"state":{"desired":{"color":"RED"}},"version":1})");
  ASSERT_EQ(code, 200) << body;
  EXPECT_NE(body.find(R"("version":2)"), std::string::npos) << body;
  auto delta = Await(device, "$aws/things/dev1/shadow/update/delta");
  ASSERT_TRUE(delta);
  EXPECT_NE(delta->find(R"("state":{"color":"RED"})"), std::string::npos) << *delta;
  EXPECT_NE(delta->find(R"("version":2)"), std::string::npos) << *delta;

  // get over MQTT: the document with its delta.
  device.Publish("$aws/things/dev1/shadow/get", R"({"clientToken":"g"})");
  auto got = Await(device, "$aws/things/dev1/shadow/get/accepted");
  ASSERT_TRUE(got);
  EXPECT_NE(got->find(R"("delta":{"color":"RED"})"), std::string::npos) << *got;

  // Rejections go back on .../rejected with the error document.
  device.Publish("$aws/things/dev1/shadow/update", R"({"state":{"reported":)");
  auto bad_json = Await(device, "$aws/things/dev1/shadow/update/rejected", "INVALID_JSON");
  ASSERT_TRUE(bad_json);
  EXPECT_NE(bad_json->find(R"("code":400)"), std::string::npos) << *bad_json;
  device.Publish("$aws/things/dev1/shadow/update",
                 R"({"state":{"desired":{"x":1}},"version":1,"clientToken":"stale"})");
  auto conflict = Await(device, "$aws/things/dev1/shadow/update/rejected", "stale");
  ASSERT_TRUE(conflict);
  EXPECT_NE(conflict->find("VERSION_CONFLICT"), std::string::npos) << *conflict;
  EXPECT_NE(conflict->find(R"("code":409)"), std::string::npos) << *conflict;

  // Named shadows and delete.
  device.Publish("$aws/things/dev1/shadow/name/cfg/update", R"({"state":{"reported":{"v":1}}})");
  ASSERT_TRUE(Await(device, "$aws/things/dev1/shadow/name/cfg/update/accepted"));
  auto names = Call("GET", "/v1/things/dev1/shadows");
  EXPECT_EQ(names.first, 200);
  EXPECT_NE(names.second.find(R"("results":["cfg"])"), std::string::npos) << names.second;
  device.Publish("$aws/things/dev1/shadow/name/cfg/delete", "{}");
  ASSERT_TRUE(Await(device, "$aws/things/dev1/shadow/name/cfg/delete/accepted"));
  auto gone = Call("GET", "/v1/things/dev1/shadow?name=cfg");
  EXPECT_EQ(gone.first, 404) << gone.second;
  EXPECT_NE(gone.second.find("SHADOW_NOT_FOUND"), std::string::npos) << gone.second;

  // The delta rule saw the delta event as a message.
  ASSERT_TRUE(WaitFor([&] {
    return testing::ReadFile(dir_.File("archive.jsonl")).find(R"("thing":"dev1")") !=
           std::string::npos;
  })) << testing::ReadFile(dir_.File("archive.jsonl"))
         << testing::ReadFile(dir_.File("data/dead-letter.jsonl")) << gnomon->Stderr();
  std::string archive = testing::ReadFile(dir_.File("archive.jsonl"));
  EXPECT_NE(archive.find(R"("delta":{"color":"RED"})"), std::string::npos) << archive;
  EXPECT_NE(archive.find(R"("version":2)"), std::string::npos) << archive;
}

// ctx.shadow:report(msg.payload): the payload goes into the shadow as received, through the
// engine and the store; a payload holding a key twice is refused before anything is written.
TEST_F(ShadowIntegrationTest, ARuleReportsTheWholePayloadIntoTheShadow) {
  dir_.Write("rules/whole.lua", R"(
    return rule { name = "whole", from = "sensors/+/state",
      handle = function(msg, ctx) ctx.shadow:report(msg.payload) end })");
  std::string cfg = testing::ReadFile(dir_.File("gnomon.yaml"));
  cfg.replace(cfg.find("topics: [\"devices/+/telemetry\"]"), 31,
              "topics: [\"devices/+/telemetry\", \"sensors/+/state\"]");
  dir_.Write("gnomon.yaml", cfg);
  auto gnomon = StartGnomon();
  Client in(broker_.port(), "sensor-pub");
  in.Publish("sensors/s1/state", "{ \"temp\": 21.50,\n  \"mode\": \"eco\", \"led\": {\"r\": 1} }");
  std::pair<int, std::string> doc;
  ASSERT_TRUE(WaitFor([&] {
    doc = Call("GET", "/v1/things/s1/shadow");
    return doc.first == 200;
  })) << doc.second
      << gnomon->Stderr();
  EXPECT_NE(doc.second.find(R"("reported":{"temp":21.5,"mode":"eco","led":{"r":1}})"),
            std::string::npos)
      << doc.second;
  EXPECT_NE(doc.second.find(R"("version":1)"), std::string::npos) << doc.second;

  in.Publish("sensors/s1/state", R"({"mode":"a","mode":"b"})");
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
    return dl.find(R"("rule":"whole")") != std::string::npos;
  })) << gnomon->Stderr();
  EXPECT_NE(dl.find("rule_error"), std::string::npos) << dl;
  EXPECT_NE(dl.find("duplicate key"), std::string::npos) << dl;
  EXPECT_NE(Call("GET", "/v1/things/s1/shadow").second.find(R"("version":1)"), std::string::npos);
}

// Vectors 16 and 18 over MQTT: clientTokens only correlate. A device SDK numbers its tokens from
// 0 again after every restart, so a repeated token (even with the same body) is a new request.
TEST_F(ShadowIntegrationTest, ClientTokensAreEchoedOnEveryAnswerAndNeverDeduplicated) {
  auto gnomon = StartGnomon();
  Client device(broker_.port(), "tok-sdk");
  device.Subscribe("$aws/things/tok/shadow/#");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const std::string base = "$aws/things/tok/shadow";

  // get and delete of a shadow that does not exist: rejected, token echoed.
  device.Publish(base + "/get", R"({"clientToken":"tok-0"})");
  auto get_missing = Await(device, base + "/get/rejected", "\"tok-0\"");
  ASSERT_TRUE(get_missing) << gnomon->Stderr();
  EXPECT_NE(get_missing->find("SHADOW_NOT_FOUND"), std::string::npos) << *get_missing;
  device.Publish(base + "/name/cfg/delete", R"({"clientToken":"tok-1"})");
  auto delete_missing = Await(device, base + "/name/cfg/delete/rejected", "\"tok-1\"");
  ASSERT_TRUE(delete_missing);
  EXPECT_NE(delete_missing->find(R"("code":404)"), std::string::npos) << *delete_missing;

  // The same token and body twice: both applied, versions 1 and 2.
  const std::string update = R"({"state":{"reported":{"fw":"1.0"}},"clientToken":"tok-2"})";
  device.Publish(base + "/update", update);
  ASSERT_TRUE(Await(device, base + "/update/accepted", R"("version":1)"));
  device.Publish(base + "/update", update);
  auto second = Await(device, base + "/update/accepted", R"("version":2)");
  ASSERT_TRUE(second);
  EXPECT_NE(second->find(R"("clientToken":"tok-2")"), std::string::npos) << *second;
  // The same token, another body: applied too (no CLIENT_TOKEN_REUSED).
  device.Publish(base + "/update", R"({"state":{"reported":{"fw":"1.1"}},"clientToken":"tok-2"})");
  ASSERT_TRUE(Await(device, base + "/update/accepted", R"("version":3)"));

  // get and delete that succeed echo the token too; an empty get payload is answered without.
  device.Publish(base + "/get", R"({"clientToken":"tok-3"})");
  auto got = Await(device, base + "/get/accepted", "\"tok-3\"");
  ASSERT_TRUE(got);
  EXPECT_NE(got->find(R"("reported":{"fw":"1.1"})"), std::string::npos) << *got;
  EXPECT_NE(got->find(R"("version":3)"), std::string::npos) << *got;
  // The REST read (from the cache the MQTT get filled) carries no token.
  auto rest = Call("GET", "/v1/things/tok/shadow");
  EXPECT_EQ(rest.first, 200);
  EXPECT_EQ(rest.second.find("clientToken"), std::string::npos) << rest.second;
  device.Publish(base + "/delete", R"({"clientToken":"tok-4"})");
  auto deleted = Await(device, base + "/delete/accepted", "\"tok-4\"");
  ASSERT_TRUE(deleted);
  EXPECT_NE(deleted->find(R"("version":3)"), std::string::npos) << *deleted;

  // Recreated with the deleted shadow's version (what the SDK sends): continues at 4.
  device.Publish(base + "/update",
                 R"({"state":{"reported":{"fw":"2.0"}},"version":3,"clientToken":"tok-5"})");
  auto recreated = Await(device, base + "/update/accepted", "\"tok-5\"");
  ASSERT_TRUE(recreated) << testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
  EXPECT_NE(recreated->find(R"("version":4)"), std::string::npos) << *recreated;
}

// Vector 17: idempotency is opt-in over REST with an Idempotency-Key header.
TEST_F(ShadowIntegrationTest, RestIdempotencyKeysReturnTheFirstAnswer) {
  auto gnomon = StartGnomon();
  const std::string body = R"({"state":{"desired":{"speed":3}},"clientToken":"c1"})";
  auto first = Call("POST", "/v1/things/idem/shadow", body, "", {{"Idempotency-Key", "k-1"}});
  ASSERT_EQ(first.first, 200) << first.second << gnomon->Stderr();
  auto second = Call("POST", "/v1/things/idem/shadow", body, "", {{"Idempotency-Key", "k-1"}});
  ASSERT_EQ(second.first, 200) << second.second;
  EXPECT_EQ(second.second, first.second);
  auto doc = Call("GET", "/v1/things/idem/shadow");
  EXPECT_NE(doc.second.find(R"("version":1)"), std::string::npos) << doc.second;
  auto reused = Call("POST", "/v1/things/idem/shadow", R"({"state":{"desired":{"speed":4}}})", "",
                     {{"Idempotency-Key", "k-1"}});
  EXPECT_EQ(reused.first, 409) << reused.second;
  EXPECT_NE(reused.second.find("IDEMPOTENCY_KEY_REUSED"), std::string::npos) << reused.second;
  auto bad = Call("POST", "/v1/things/idem/shadow", body, "", {{"Idempotency-Key", "a b"}});
  EXPECT_EQ(bad.first, 400) << bad.second;
  EXPECT_NE(bad.second.find("INVALID_IDEMPOTENCY_KEY"), std::string::npos) << bad.second;
  // Without a key the same body applies again.
  auto plain = Call("POST", "/v1/things/idem/shadow", body);
  ASSERT_EQ(plain.first, 200) << plain.second;
  EXPECT_NE(plain.second.find(R"("version":2)"), std::string::npos) << plain.second;
  // The key is durable: after a restart the retry still returns the first answer.
  gnomon->Signal(SIGTERM);
  ASSERT_EQ(gnomon->Wait(), 0) << gnomon->Stderr();
  gnomon = StartGnomon();
  auto after = Call("POST", "/v1/things/idem/shadow", body, "", {{"Idempotency-Key", "k-1"}});
  EXPECT_EQ(after.first, 200) << after.second;
  EXPECT_EQ(after.second, first.second);
  doc = Call("GET", "/v1/things/idem/shadow");
  EXPECT_NE(doc.second.find(R"("version":2)"), std::string::npos) << doc.second;
}

TEST_F(ShadowIntegrationTest, RulesReportIntoShadowsAndRoutedWritesReachTheirOwner) {
  auto gnomon = StartGnomon();
  Client in(broker_.port(), "pub");
  for (int i = 1; i <= 50; ++i) {
    for (int d = 0; d < 8; ++d) {
      in.Publish("devices/d" + std::to_string(d) + "/telemetry",
                 R"({"temp":)" + std::to_string(i) + R"(,"room":"r)" + std::to_string(d % 2) +
                     R"("})");
    }
  }
  for (int d = 0; d < 8; ++d) {
    std::string path = "/v1/things/d" + std::to_string(d) + "/shadow";
    std::pair<int, std::string> r;
    ASSERT_TRUE(WaitFor([&] {
      r = Call("GET", path);
      return r.first == 200 && r.second.find(R"("temp":50)") != std::string::npos;
    })) << path << " " << r.first << " " << r.second << "\n" << gnomon->Stderr();
    // Every report was applied, in order: 50 writes, versions 1..50.
    EXPECT_NE(r.second.find(R"("version":50)"), std::string::npos) << r.second;
  }
  // Writes to room shadows came from both workers and were applied by the room's owner (they
  // are routed there asynchronously, so they may still be landing when the devices' are in).
  std::pair<int, std::string> room;
  WaitFor([&] {
    room = Call("GET", "/v1/things/room-r0/shadow");
    return room.second.find(R"("version":200)") != std::string::npos;
  });
  EXPECT_EQ(room.first, 200) << room.second;
  EXPECT_NE(room.second.find(R"("version":200)"), std::string::npos) << room.second;

  auto things = Call("GET", "/v1/things?prefix=d&limit=5");
  EXPECT_EQ(things.first, 200);
  EXPECT_NE(things.second.find(R"("things":["d0","d1","d2","d3","d4"],"nextCursor":"d4")"),
            std::string::npos)
      << things.second;
  auto page2 = Call("GET", "/v1/things?prefix=d&limit=5&cursor=d4");
  EXPECT_NE(page2.second.find(R"("things":["d5","d6","d7"]})"), std::string::npos)
      << page2.second;

  // A rejected rule write dead-letters the message; none of its effects apply.
  in.Publish("devices/d0/telemetry", R"({"temp":99,"bad":true})");
  ASSERT_TRUE(WaitFor([&] {
    return testing::ReadFile(dir_.File("data/dead-letter.jsonl")).find("shadow_rejected") !=
           std::string::npos;
  })) << gnomon->Stderr();
  std::string dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
  EXPECT_NE(dl.find("INVALID_KEY"), std::string::npos) << dl;
  EXPECT_NE(dl.find(R"("rule":"report")"), std::string::npos) << dl;
  auto d0 = Call("GET", "/v1/things/d0/shadow");
  EXPECT_NE(d0.second.find(R"("temp":50)"), std::string::npos) << "unchanged: " << d0.second;
  EXPECT_EQ(testing::ReadFile(dir_.File("archive.jsonl")).find("never"), std::string::npos);

  auto metrics = Call("GET", "/metrics").second;
  EXPECT_NE(metrics.find("gnomon_shadow_updates_total{outcome=\"accepted\"} 800"),
            std::string::npos)
      << metrics;
}

TEST_F(ShadowIntegrationTest, RestBadInputGetsExactErrors) {
  auto gnomon = StartGnomon();
  auto post = [&](const std::string& thing, const std::string& body) {
    return Call("POST", "/v1/things/" + thing + "/shadow", body);
  };
  EXPECT_EQ(post("d", "{\"state\":{\"reported\":{\"a\":\"\xff\xfe\"}}}").first, 415);
  auto trunc = post("d", R"({"state":{"reported":{"a":1})");
  EXPECT_EQ(trunc.first, 400);
  EXPECT_NE(trunc.second.find("INVALID_JSON"), std::string::npos) << trunc.second;
  auto badthing = post("a%23b", R"({"state":{}})");
  EXPECT_EQ(badthing.first, 400) << badthing.second;
  EXPECT_NE(badthing.second.find("INVALID_THING_NAME"), std::string::npos) << badthing.second;
  EXPECT_EQ(post("a/b", R"({"state":{}})").first, 400);
  EXPECT_EQ(post("a+b", R"({"state":{}})").first, 400);
  EXPECT_EQ(post(std::string(200, 't'), R"({"state":{}})").first, 400);
  auto badname = Call("GET", "/v1/things/d/shadow?name=no/pe");
  EXPECT_EQ(badname.first, 400);
  EXPECT_NE(badname.second.find("INVALID_SHADOW_NAME"), std::string::npos) << badname.second;
  EXPECT_EQ(Call("GET", "/v1/things/d/shadow?name=unknown").first, 404);
  // 10 MB: refused before it is read into a shadow.
  std::string huge = R"({"state":{"reported":{"a":")" + std::string(10 << 20, 'x') + "\"}}}";
  EXPECT_EQ(post("d", huge).first, 413);
  std::string big = R"({"state":{"reported":{"a":")" + std::string(70000, 'x') + "\"}}}";
  EXPECT_EQ(post("d", big).first, 413);

  // Concurrent writers with the same stale version: exactly one wins.
  ASSERT_EQ(post("race", R"({"state":{"reported":{"n":0}}})").first, 200);
  std::atomic<int> ok{0}, conflict{0};
  std::vector<std::thread> writers;
  for (int i = 0; i < 8; ++i) {
    writers.emplace_back([&, i] {
      auto r = post("race", R"({"state":{"reported":{"n":)" + std::to_string(i) +
                                R"(}},"version":1})");
      (r.first == 200 ? ok : conflict)++;
    });
  }
  for (auto& t : writers) {
    t.join();
  }
  EXPECT_EQ(ok.load(), 1);
  EXPECT_EQ(conflict.load(), 7);
  auto race = Call("GET", "/v1/things/race/shadow");
  EXPECT_NE(race.second.find(R"("version":2)"), std::string::npos) << race.second;
  EXPECT_TRUE(gnomon->Running());
}

// The peak resident memory of process `pid` in KiB (VmHWM), or -1.
long PeakRssKib(pid_t pid) {
  std::string status = testing::ReadFile("/proc/" + std::to_string(pid) + "/status");
  size_t p = status.find("VmHWM:");
  return p == std::string::npos ? -1 : std::stol(status.substr(p + 6));
}

TEST_F(ShadowIntegrationTest, RestBodiesAreReadAsSentWhateverTheirHeaders) {
  auto gnomon = StartGnomon();
  httplib::Client cli("127.0.0.1", api_port_);
  cli.set_read_timeout(30);
  auto form = [&](const std::string& path, const std::string& body) {
    // curl -d's default type: the body must not be taken for form fields.
    return cli.Post(path.c_str(), body, "application/x-www-form-urlencoded");
  };
  std::string nine_kib = R"({"state":{"reported":{"s":")" + std::string(9000, 'x') + "\"}}}";
  auto big = form("/v1/things/f1/shadow", nine_kib);
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 200) << big->body;
  EXPECT_NE(Call("GET", "/v1/things/f1/shadow").second.find(std::string(9000, 'x')),
            std::string::npos);
  auto fields = form("/v1/things/f2/shadow", R"({"state":{"reported":{"s":"a&name=evil&b"}}})");
  ASSERT_TRUE(fields);
  EXPECT_EQ(fields->status, 200) << fields->body;
  EXPECT_EQ(Call("GET", "/v1/things/f2/shadows").second,
            R"({"thing":"f2","classic":1,"results":[]})")
      << "the body chose a named shadow";

  // A small gzip body that inflates far past the limit: refused while it is read.
  long before = PeakRssKib(gnomon->pid());
  ASSERT_GT(before, 0);
  httplib::Client zip("127.0.0.1", api_port_);
  zip.set_compress(true);
  zip.set_read_timeout(30);
  std::string bomb = R"({"state":{"reported":{"s":")" + std::string(200 << 20, 'x') + "\"}}}";
  auto inflated = zip.Post("/v1/things/f3/shadow", bomb, "application/json");
  bomb.clear();
  ASSERT_TRUE(inflated);
  EXPECT_EQ(inflated->status, 413);
  EXPECT_NE(inflated->body.find(R"("error":"PAYLOAD_TOO_LARGE")"), std::string::npos)
      << inflated->body;
  EXPECT_LT(PeakRssKib(gnomon->pid()) - before, 64 << 10) << "the inflated body was kept";
  auto small = zip.Post("/v1/things/f3/shadow", R"({"state":{"reported":{"z":1}}})",
                        "application/json");
  ASSERT_TRUE(small);
  EXPECT_EQ(small->status, 200) << "gzip bodies are taken: " << small->body;

  // Answers cpp-httplib would give on its own carry the error document too.
  auto huge = Call("POST", "/v1/things/f4/shadow", std::string(2 << 20, 'x'));
  EXPECT_EQ(huge.first, 413);
  EXPECT_NE(huge.second.find(R"("error":"PAYLOAD_TOO_LARGE")"), std::string::npos) << huge.second;
  auto nowhere = Call("GET", "/v1/nowhere");
  EXPECT_EQ(nowhere.first, 404);
  EXPECT_NE(nowhere.second.find(R"("error":"NOT_FOUND")"), std::string::npos) << nowhere.second;
  auto long_uri = Call("GET", "/v1/things/" + std::string(9000, 'a') + "/shadow");
  EXPECT_EQ(long_uri.first, 414);
  EXPECT_NE(long_uri.second.find(R"("error":"URI_TOO_LONG")"), std::string::npos)
      << long_uri.second;
  std::string garbage =
      testing::RawHttp(api_port_, "GARBAGE\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(garbage.rfind("HTTP/1.1 400", 0), 0u) << garbage;
  EXPECT_NE(garbage.find(R"("error":"BAD_REQUEST")"), std::string::npos) << garbage;
  // A POST without Content-Length has an empty body (RFC 9112 6.3): gnomon's own 400.
  std::string raw = testing::RawHttp(
      api_port_, "POST /v1/things/f5/shadow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(raw.rfind("HTTP/1.1 400", 0), 0u) << raw;
  EXPECT_NE(raw.find(R"("error":"INVALID_JSON")"), std::string::npos) << raw;

  // Deeper than the JSON parser goes is still TOO_DEEP, not INVALID_JSON.
  std::string deep = std::string(2000, '[') + std::string(2000, ']');
  auto too_deep = Call("POST", "/v1/things/f6/shadow",
                       R"({"state":{"reported":{"a":)" + deep + "}}}");
  EXPECT_EQ(too_deep.first, 400);
  EXPECT_NE(too_deep.second.find(R"("error":"TOO_DEEP")"), std::string::npos) << too_deep.second;
  EXPECT_TRUE(gnomon->Running());
}

TEST_F(ShadowIntegrationTest, ChangesSinceAVersionAreJsonPatchesOrAResync) {
  auto gnomon = StartGnomon();
  ASSERT_EQ(Call("POST", "/v1/things/c1/shadow", R"({"state":{"reported":{"a":1}}})").first, 200);
  ASSERT_EQ(Call("POST", "/v1/things/c1/shadow", R"({"state":{"desired":{"a":2}}})").first, 200);
  ASSERT_EQ(Call("POST", "/v1/things/c1/shadow", R"({"state":{"reported":{"a":2}}})").first, 200);
  auto r = Call("GET", "/v1/things/c1/shadow/changes?sinceVersion=1");
  ASSERT_EQ(r.first, 200) << r.second;
  EXPECT_NE(r.second.find(R"("version":3)"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find(R"({"version":2,)"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find(R"("ops":[{"op":"add","path":"/state/desired","value":{"a":2}}])"),
            std::string::npos)
      << r.second;
  EXPECT_NE(r.second.find(R"("ops":[{"op":"replace","path":"/state/reported/a","value":2}])"),
            std::string::npos)
      << r.second;
  EXPECT_EQ(r.second.find(R"({"version":1,)"), std::string::npos) << "only after 1: " << r.second;
  auto all = Call("GET", "/v1/things/c1/shadow/changes?sinceVersion=0");
  EXPECT_NE(all.second.find(R"({"version":1,)"), std::string::npos) << all.second;
  auto none = Call("GET", "/v1/things/c1/shadow/changes?sinceVersion=3");
  EXPECT_NE(none.second.find(R"("changes":[])"), std::string::npos) << none.second;
  EXPECT_EQ(Call("GET", "/v1/things/c1/shadow/changes?sinceVersion=x").first, 400);
  EXPECT_EQ(Call("GET", "/v1/things/c1/shadow/changes").first, 400);
  EXPECT_EQ(Call("GET", "/v1/things/nobody/shadow/changes?sinceVersion=0").first, 404);

  // A delete takes the history with it: a client from before it starts over.
  ASSERT_EQ(Call("DELETE", "/v1/things/c1/shadow").first, 200);
  ASSERT_EQ(Call("POST", "/v1/things/c1/shadow", R"({"state":{"reported":{"b":1}}})").first, 200);
  auto gone = Call("GET", "/v1/things/c1/shadow/changes?sinceVersion=1");
  EXPECT_EQ(gone.first, 200);
  EXPECT_NE(gone.second.find(R"("resync":true)"), std::string::npos) << gone.second;
  EXPECT_NE(gone.second.find(R"("document":{"state":{"reported":{"b":1}})"), std::string::npos)
      << gone.second;
  auto fresh = Call("GET", "/v1/things/c1/shadow/changes?sinceVersion=3");
  EXPECT_NE(fresh.second.find(R"("changes":[{"version":4,)"), std::string::npos) << fresh.second;
  EXPECT_NE(fresh.second.find(R"("ops":[{"op":"add","path":"/state","value":{}},{"op":"add","path":"/state/reported","value":{"b":1}}])"),
            std::string::npos) << fresh.second;

  // The history is in the store too: a restart keeps it, and the delete's end of it.
  gnomon->Signal(SIGTERM);
  ASSERT_EQ(gnomon->Wait(), 0);
  gnomon = StartGnomon();
  EXPECT_EQ(Call("GET", "/v1/things/c1/shadow/changes?sinceVersion=3").second, fresh.second);
  auto still_gone = Call("GET", "/v1/things/c1/shadow/changes?sinceVersion=1");
  EXPECT_NE(still_gone.second.find(R"("resync":true)"), std::string::npos) << still_gone.second;
}

// A history log that cannot be read back is dropped whole: a history with a hole would answer
// `changes` without what fell into it.
TEST_F(ShadowIntegrationTest, ADamagedHistoryLogIsDroppedNotServedWithAHole) {
  auto gnomon = StartGnomon();
  for (int i = 1; i <= 3; ++i) {
    ASSERT_EQ(Call("POST", "/v1/things/h1/shadow",
                   R"({"state":{"reported":{"n":)" + std::to_string(i) + "}}}").first, 200);
  }
  gnomon->Signal(SIGTERM);
  ASSERT_EQ(gnomon->Wait(), 0) << gnomon->Stderr();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(dir_.File("data/shadows.db").c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(db,
                         "UPDATE shadow_changes SET log = CAST('2 0 9' AS BLOB) "
                         "WHERE seq = (SELECT max(seq) FROM shadow_changes)",
                         nullptr, nullptr, &err),
            SQLITE_OK)
      << (err != nullptr ? err : "");
  EXPECT_EQ(sqlite3_changes(db), 1);
  sqlite3_free(err);
  sqlite3_close(db);

  gnomon = StartGnomon();
  auto resync = Call("GET", "/v1/things/h1/shadow/changes?sinceVersion=1");
  EXPECT_EQ(resync.first, 200);
  EXPECT_NE(resync.second.find(R"("resync":true)"), std::string::npos) << resync.second;
  EXPECT_NE(resync.second.find(R"("reported":{"n":3})"), std::string::npos) << resync.second;
  EXPECT_NE(gnomon->Stderr().find("shadow change history could not be read back"),
            std::string::npos)
      << gnomon->Stderr();
  ASSERT_EQ(Call("POST", "/v1/things/h1/shadow", R"({"state":{"reported":{"n":4}}})").first, 200);
  auto fresh = Call("GET", "/v1/things/h1/shadow/changes?sinceVersion=3");
  EXPECT_NE(fresh.second.find(R"("changes":[{"version":4,)"), std::string::npos) << fresh.second;
}

// shadows.history bounds each shadow's history; shadows.history_mb the worker's, the oldest
// changes of any shadow going first.
TEST_F(ShadowIntegrationTest, HistoryIsKeptWithinItsVersionAndMemoryBounds) {
  std::string yaml = testing::ReadFile(dir_.File("gnomon.yaml"));
  yaml.replace(yaml.find("workers: 2"), 10, "workers: 1");  // one worker: one budget
  yaml.replace(yaml.find("shadows: { connection: broker }"), 31,
               "shadows: { connection: broker, history: 3, history_mb: 1 }");
  dir_.Write("gnomon.yaml", yaml);
  auto gnomon = StartGnomon();
  auto post = [&](const std::string& thing, const std::string& value) {
    return Call("POST", "/v1/things/" + thing + "/shadow",
                R"({"state":{"reported":{"v":")" + value + R"("}}})").first;
  };
  auto changes = [&](const std::string& thing, int since) {
    return Call("GET", "/v1/things/" + thing + "/shadow/changes?sinceVersion=" +
                           std::to_string(since)).second;
  };
  ASSERT_EQ(post("quiet", "a"), 200);
  for (int i = 1; i <= 10; ++i) {
    ASSERT_EQ(post("k1", std::to_string(i)), 200);
  }
  auto kept = changes("k1", 7);
  EXPECT_NE(kept.find(R"("changes":[{"version":8,)"), std::string::npos) << kept;
  EXPECT_NE(kept.find(R"({"version":10,)"), std::string::npos) << kept;
  for (int since : {6, 0}) {
    auto old = changes("k1", since);
    EXPECT_NE(old.find(R"("resync":true)"), std::string::npos) << since << old;
    EXPECT_NE(old.find(R"("reported":{"v":"10"})"), std::string::npos) << old;
  }
  EXPECT_NE(changes("quiet", 0).find(R"("changes":[{"version":1,)"), std::string::npos);
  // ~1.2 MiB of changes (20 KB each) on other shadows: the oldest, quiet's, go first.
  for (int i = 0; i < 60; ++i) {
    ASSERT_EQ(post("big-" + std::to_string(i % 2), std::string(20000, static_cast<char>('a' + i % 26))), 200);
  }
  EXPECT_NE(changes("quiet", 0).find(R"("resync":true)"), std::string::npos);
  auto big = changes("big-1", 27);
  EXPECT_NE(big.find(R"("changes":[{"version":28,)"), std::string::npos) << big.substr(0, 200);
  EXPECT_NE(big.find(R"({"version":30,)"), std::string::npos) << big.substr(0, 200);
}

TEST_F(ShadowIntegrationTest, WatchStreamsEveryAcceptedChangeAsServerSentEvents) {
  auto gnomon = StartGnomon();
  ASSERT_EQ(Call("POST", "/v1/things/w1/shadow", R"({"state":{"reported":{"n":0}}})").first, 200);
  std::mutex mu;
  std::string stream;
  std::atomic<bool> done{false};
  std::thread reader([&] {
    httplib::Client cli("127.0.0.1", api_port_);
    cli.set_read_timeout(30);
    cli.Get("/v1/things/w1/shadow/watch", [&](const char* data, size_t len) {
      std::lock_guard lock(mu);
      stream.append(data, len);
      return !done.load();
    });
  });
  auto seen = [&](const std::string& needle) {
    return WaitFor([&] {
      std::lock_guard lock(mu);
      return stream.find(needle) != std::string::npos;
    });
  };
  ASSERT_TRUE(seen("event: document\ndata: {\"state\":{\"reported\":{\"n\":0}}")) << stream;
  for (int i = 1; i <= 3; ++i) {
    ASSERT_EQ(Call("POST", "/v1/things/w1/shadow",
                   R"({"state":{"reported":{"n":)" + std::to_string(i) + "}}}")
                  .first,
              200);
  }
  ASSERT_EQ(Call("POST", "/v1/things/other/shadow", R"({"state":{"reported":{"x":1}}})").first, 200);
  ASSERT_EQ(Call("DELETE", "/v1/things/w1/shadow").first, 200);
  ASSERT_TRUE(seen("event: delete\n")) << stream;
  done = true;
  ASSERT_EQ(Call("POST", "/v1/things/w1/shadow", R"({"state":{"reported":{"n":9}}})").first, 200);
  reader.join();
  std::lock_guard lock(mu);
  // Every change of w1, in version order, and nothing of other shadows.
  size_t v2 = stream.find(R"("version":2)"), v3 = stream.find(R"("version":3)"),
         v4 = stream.find(R"("version":4)");
  EXPECT_NE(v2, std::string::npos) << stream;
  EXPECT_LT(v2, v3) << stream;
  EXPECT_LT(v3, v4) << stream;
  EXPECT_LT(v4, stream.find("event: delete")) << stream;
  EXPECT_EQ(stream.find(R"("x":1)"), std::string::npos) << stream;
}

TEST_F(ShadowIntegrationTest, ThingModelsValidateWritesStrictlyOrWeakly) {
  const char* props = R"("properties": [
      { "identifier": "target", "accessMode": "rw",
        "dataType": { "type": "float", "specs": { "min": 5, "max": 35, "step": 0.5 } } },
      { "identifier": "temp", "accessMode": "r", "dataType": { "type": "float" } } ])";
  dir_.Write("models/strict.json", std::string(R"({ "modelId": "acme:strict", "version": "1",
      "match": { "devicePrefix": "th-" }, "validation": "strict", )") + props + "}");
  dir_.Write("models/weak.json", std::string(R"({ "modelId": "acme:weak",
      "match": { "devicePrefix": "wk-" }, "validation": "weak", )") + props + "}");
  dir_.Write("gnomon.yaml", testing::ReadFile(dir_.File("gnomon.yaml")) + "models: [models/*.json]\n");
  dir_.Write("rules/report.lua", R"(
      return rule { name = "report", from = "devices/+/telemetry",
        handle = function(msg, ctx) ctx.shadow:report { temp = msg.payload.temp } end })");
  dir_.Write("rules/on_delta.lua", R"(
      return rule { name = "on_delta", from = "$aws/things/+/shadow/update/delta",
        handle = function(msg, ctx) end })");
  auto gnomon = StartGnomon();

  auto ok = Call("POST", "/v1/things/th-1/shadow", R"({"state":{"desired":{"target":21.5}}})");
  EXPECT_EQ(ok.first, 200) << ok.second;
  auto bad = Call("POST", "/v1/things/th-1/shadow",
                  R"({"state":{"desired":{"target":40,"temp":3,"x":1}},"clientToken":"c9"})");
  EXPECT_EQ(bad.first, 400) << bad.second;
  EXPECT_NE(bad.second.find("MODEL_VALIDATION"), std::string::npos) << bad.second;
  EXPECT_NE(bad.second.find("acme:strict@1"), std::string::npos) << bad.second;
  EXPECT_NE(bad.second.find(R"({"path":"/state/desired/target","error":"TM_OUT_OF_RANGE","message":"value 40 is greater than max 35"})"),
            std::string::npos)
      << bad.second;
  EXPECT_NE(bad.second.find(R"("path":"/state/desired/temp","error":"TM_ACCESS_DENIED")"), std::string::npos) << bad.second;
  EXPECT_NE(bad.second.find(R"("path":"/state/desired/x","error":"TM_UNKNOWN_IDENTIFIER")"), std::string::npos) << bad.second;
  EXPECT_NE(bad.second.find(R"("clientToken":"c9")"), std::string::npos) << bad.second;
  auto after = Call("GET", "/v1/things/th-1/shadow");
  EXPECT_NE(after.second.find(R"("version":1)"), std::string::npos) << "nothing applied: " << after.second;
  EXPECT_NE(after.second.find(R"("model":"acme:strict@1")"), std::string::npos)
      << "the shadow records modelId@version: " << after.second;

  // Weak: the valid part is applied, the rest listed.
  auto weak = Call("POST", "/v1/things/wk-1/shadow", R"({"state":{"desired":{"target":21.3,"x":1}},"clientToken":"w"})");
  EXPECT_EQ(weak.first, 400) << "nothing valid left: refused as a whole: " << weak.second;
  EXPECT_NE(weak.second.find("TM_STEP_MISMATCH"), std::string::npos) << weak.second;
  auto weak2 = Call("POST", "/v1/things/wk-1/shadow", R"({"state":{"desired":{"target":22,"x":1}}})");
  EXPECT_EQ(weak2.first, 200) << weak2.second;
  EXPECT_NE(weak2.second.find(R"("checkFailedData":[{"path":"/state/desired/x","error":"TM_UNKNOWN_IDENTIFIER")"),
            std::string::npos)
      << weak2.second;
  auto wdoc = Call("GET", "/v1/things/wk-1/shadow");
  EXPECT_NE(wdoc.second.find(R"("desired":{"target":22})"), std::string::npos) << wdoc.second;
  EXPECT_NE(wdoc.second.find(R"("model":"acme:weak")"), std::string::npos) << wdoc.second;

  // Things no model matches are not checked; rule writes are checked too.
  EXPECT_EQ(Call("POST", "/v1/things/free/shadow", R"({"state":{"desired":{"x":1}}})").first, 200);
  Client in(broker_.port(), "pub-m");
  in.Publish("devices/th-2/telemetry", R"({"temp":"hot"})");
  ASSERT_TRUE(WaitFor([&] {
    return testing::ReadFile(dir_.File("data/dead-letter.jsonl")).find("MODEL_VALIDATION") !=
           std::string::npos;
  })) << gnomon->Stderr();
  auto metrics = Call("GET", "/metrics").second;
  EXPECT_NE(metrics.find("gnomon_model_validation_failures_total"), std::string::npos);
}

TEST_F(ShadowIntegrationTest, BearerTokensAreRequiredWhenConfigured) {
  dir_.Write("gnomon.yaml", testing::ReadFile(dir_.File("gnomon.yaml")) + "");
  std::string cfg = testing::ReadFile(dir_.File("gnomon.yaml"));
  cfg.replace(cfg.find("api: {"), 6, "api: { tokens: [s3cret],");
  dir_.Write("gnomon.yaml", cfg);
  auto gnomon = StartGnomon();
  EXPECT_EQ(Call("GET", "/v1/things/d/shadow").first, 401);
  EXPECT_EQ(Call("GET", "/v1/things/d/shadow", "", "wrong").first, 401);
  EXPECT_EQ(Call("GET", "/v1/things/d/shadow", "", "s3cret").first, 404);
}

TEST_F(ShadowIntegrationTest, EveryAcceptedWriteSurvivesKill9) {
  auto gnomon = StartGnomon();
  int accepted = 0;
  for (int i = 1; i <= 200; ++i) {
    auto r = Call("POST", "/v1/things/k" + std::to_string(i % 10) + "/shadow",
                  R"({"state":{"reported":{"i":)" + std::to_string(i) + "}}}");
    ASSERT_EQ(r.first, 200) << r.second;
    accepted = i;
  }
  ::kill(gnomon->pid(), SIGKILL);
  gnomon->Wait();
  gnomon = StartGnomon();
  for (int k = 0; k < 10; ++k) {
    auto r = Call("GET", "/v1/things/k" + std::to_string(k) + "/shadow");
    ASSERT_EQ(r.first, 200) << r.second;
    int last = accepted - ((accepted - k) % 10 + 10) % 10;
    if (k == 0) {
      last = 200;
    }
    EXPECT_NE(r.second.find(R"("i":)" + std::to_string(last) + "}"), std::string::npos)
        << "k" << k << ": " << r.second;
    EXPECT_NE(r.second.find(R"("version":20)"), std::string::npos) << r.second;
  }
  // The version continues where it was.
  auto next = Call("POST", "/v1/things/k1/shadow", R"({"state":{"reported":{"i":0}}})");
  EXPECT_NE(next.second.find(R"("version":21)"), std::string::npos) << next.second;
  // And so does every accepted change: k3 was written by i = 3, 13, ..., 193.
  auto changes = Call("GET", "/v1/things/k3/shadow/changes?sinceVersion=0");
  EXPECT_EQ(changes.second.find(R"("resync")"), std::string::npos) << changes.second;
  for (int v = 1; v <= 20; ++v) {
    std::string entry = R"({"version":)" + std::to_string(v) + ",";
    EXPECT_NE(changes.second.find(entry), std::string::npos) << v << ": " << changes.second;
  }
  EXPECT_NE(changes.second.find(R"("value":193})"), std::string::npos) << changes.second;
}

// ctx.state over real HTTP ingest: every message answered 202 has its state durable, so a
// kill -9 right after the last answer loses none of it; REST shows it, and counting goes on.
TEST_F(ShadowIntegrationTest, RuleStateOfEveryAnsweredMessageSurvivesKill9AndIsReadOverRest) {
  UseIngestRule(R"(
    return rule { name = "count", from = "devices/+/telemetry",
      state = { version = 2 },
      handle = function(msg, ctx)
        ctx.state.n = (ctx.state.n or 0) + 1
        ctx.state.last = msg.payload.i
      end })");
  auto gnomon = StartGnomon();
  for (int round = 0; round < 4; ++round) {
    for (int k = 0; k < 5; ++k) {
      std::string body = "[";
      for (int i = 0; i < 10; ++i) {
        body += (i > 0 ? R"(,{"i":)" : R"({"i":)") + std::to_string(round * 10 + i) + "}";
      }
      body += "]";
      auto r = Call("POST", "/v1/ingest/devices/k" + std::to_string(k) + "/telemetry", body);
      ASSERT_EQ(r.first, 202) << r.second;
    }
  }
  ::kill(gnomon->pid(), SIGKILL);
  gnomon->Wait();
  gnomon = StartGnomon();
  for (int k = 0; k < 5; ++k) {
    auto r = Call("GET", "/v1/things/k" + std::to_string(k) + "/state?rule=count");
    ASSERT_EQ(r.first, 200) << r.second;
    // (The state's keys come in the order Lua's table has them.)
    EXPECT_EQ(
        r.second.rfind(
            "{\"device\":\"k" + std::to_string(k) + R"(","rule":"count","version":2,"state":{)", 0),
        0u)
        << r.second;
    EXPECT_NE(r.second.find(R"("n":40)"), std::string::npos) << r.second;
    EXPECT_NE(r.second.find(R"("last":39)"), std::string::npos) << r.second;
  }
  auto all = Call("GET", "/v1/things/k1/state");
  ASSERT_EQ(all.first, 200) << all.second;
  EXPECT_EQ(all.second.rfind(R"({"device":"k1","rules":{"count":{"version":2,"state":{)", 0), 0u)
      << all.second;
  EXPECT_NE(all.second.find(R"("n":40)"), std::string::npos) << all.second;
  auto none = Call("GET", "/v1/things/k1/state?rule=other");
  EXPECT_EQ(none.first, 404) << none.second;
  EXPECT_NE(none.second.find("No state of rule 'other' for device 'k1'"), std::string::npos);
  EXPECT_EQ(Call("GET", "/v1/things/k9/state").second, R"({"device":"k9","rules":{}})");
  EXPECT_EQ(Call("GET", "/v1/things/a%2Fb/state").first, 400);
  auto more = Call("POST", "/v1/ingest/devices/k1/telemetry", R"({"i":100})");
  ASSERT_EQ(more.first, 202) << more.second;
  auto after = Call("GET", "/v1/things/k1/state?rule=count");
  EXPECT_NE(after.second.find(R"("n":41)"), std::string::npos) << after.second;
  EXPECT_NE(after.second.find(R"("last":100)"), std::string::npos) << after.second;
}

}  // namespace
}  // namespace gnomon

namespace gnomon {
namespace {

// Presence from a real device's MQTT last will: a device announces itself, dies without a
// goodbye (kill -9), the broker publishes its will, and the shadow says so.
TEST_F(ShadowIntegrationTest, PresenceFromStatusMessagesAndALastWillIsKeptAndAnnounced) {
  dir_.Write("rules/presence.lua", R"(
    return rule { name = "presence", from = "$aws/events/presence/+/+",
      handle = function(msg, ctx)
        ctx.emit("archive", { event = msg.payload.eventType, thing = msg.payload.clientId })
      end })");
  std::string cfg = testing::ReadFile(dir_.File("gnomon.yaml"));
  cfg.replace(cfg.find("topics: [\"devices/+/telemetry\"]"), 31,
              "topics: [\"devices/+/telemetry\", \"devices/+/status\"]");
  cfg.replace(cfg.find("shadows: { connection: broker }"), 31,
              "shadows: { connection: broker, presence: { from: \"devices/+/status\" } }");
  dir_.Write("gnomon.yaml", cfg);
  auto gnomon = StartGnomon();
  ASSERT_EQ(Call("POST", "/v1/things/th-1/shadow", R"({"state":{"reported":{"temp":20}}})").first,
            200);

  // The device connects with a last will and says it is online.
  Process device({"stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", std::to_string(broker_.port()), "-i",
                  "th-1", "-d", "-q", "1", "-t", "devices/th-1/cmd", "--will-topic",
                  "devices/th-1/status", "--will-payload", "offline", "--will-qos", "1"});
  Client status(broker_.port(), "th-1-status");
  status.Publish("devices/th-1/status", "online");
  auto connected = [&](const std::string& want) {
    return WaitFor([&] {
      return Call("GET", "/v1/things/th-1/shadow").second.find("\"connected\":" + want) !=
             std::string::npos;
    });
  };
  ASSERT_TRUE(connected("true")) << Call("GET", "/v1/things/th-1/shadow").second << gnomon->Stderr();
  std::string doc = Call("GET", "/v1/things/th-1/shadow").second;
  EXPECT_NE(doc.find("\"lastSeen\":"), std::string::npos) << doc;
  EXPECT_NE(doc.find("\"version\":1"), std::string::npos) << "presence is not a state update: " << doc;

  // Killed without a DISCONNECT: the broker publishes the will.
  // -d prints the CONNACK (line-buffered by stdbuf): the broker has the will from then on.
  ASSERT_TRUE(WaitFor([&] { return device.Stdout().find("CONNACK") != std::string::npos; }))
      << device.Stdout() << device.Stderr();
  device.Signal(SIGKILL);
  device.Wait();
  ASSERT_TRUE(connected("false")) << Call("GET", "/v1/things/th-1/shadow").second;

  // Announced to rules as AWS lifecycle events, in order.
  std::string archive;
  ASSERT_TRUE(WaitFor([&] {
    archive = testing::ReadFile(dir_.File("archive.jsonl"));
    return archive.find("disconnected") != std::string::npos;
  })) << archive;
  size_t on = archive.find(R"("event":"connected")");
  size_t off = archive.find(R"("event":"disconnected")");
  EXPECT_NE(on, std::string::npos) << archive;
  EXPECT_LT(on, off) << archive;
  EXPECT_NE(archive.find(R"("thing":"th-1")"), std::string::npos) << archive;

  // Not a presence: dead-lettered with the reason, nothing else changes.
  status.Publish("devices/th-1/status", "maybe");
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
    return dl.find("bad_presence") != std::string::npos;
  })) << dl;

  std::string metrics = Call("GET", "/metrics").second;
  EXPECT_NE(metrics.find("gnomon_presence_reports_total{outcome=\"invalid\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("gnomon_presence_reports_total{outcome=\"disconnected\"} 1"), std::string::npos)
      << metrics;

  // Durable: after a restart the shadow still says disconnected.
  gnomon->Signal(SIGTERM);
  EXPECT_EQ(gnomon->Wait(), 0) << gnomon->Stderr();
  gnomon = StartGnomon();
  doc = Call("GET", "/v1/things/th-1/shadow").second;
  EXPECT_NE(doc.find("\"connected\":false"), std::string::npos) << doc;
}

}  // namespace
}  // namespace gnomon

namespace gnomon {
namespace {

TEST_F(ShadowIntegrationTest, ThingModelEventsAreValidatedAndReachRulesWithTheirType) {
  const char* events = R"("properties": [], "events": [
      { "identifier": "overheat", "type": "alert",
        "outputData": [ { "identifier": "temp", "dataType": { "type": "float", "specs": { "max": 200 } } },
                        { "identifier": "seq", "required": false, "dataType": { "type": "int" } } ] } ])";
  dir_.Write("models/strict.json", std::string(R"({ "modelId": "acme:strict", "version": "1",
      "match": { "devicePrefix": "th-" }, "validation": "strict", )") + events + "}");
  dir_.Write("models/weak.json", std::string(R"({ "modelId": "acme:weak",
      "match": { "devicePrefix": "wk-" }, "validation": "weak", )") + events + "}");
  std::string cfg = testing::ReadFile(dir_.File("gnomon.yaml"));
  cfg.replace(cfg.find("topics: [\"devices/+/telemetry\"]"), 31,
              "topics: [\"devices/+/telemetry\", \"devices/+/events/+\"]");
  dir_.Write("gnomon.yaml", cfg + "models: [models/*.json]\n");
  dir_.Write("rules/events.lua", R"(
    return rule { name = "events", from = "devices/+/events/+",
      handle = function(msg, ctx)
        ctx.emit("archive", { thing = msg.device, seq = msg.payload.seq,
                              event = msg.headers["gnomon-event"] or "none",
                              type = msg.headers["gnomon-event-type"] or "none",
                              model = msg.headers["gnomon-model"] or "none",
                              problems = msg.headers["gnomon-model-problems"] or "" })
      end })");
  auto gnomon = StartGnomon();
  Client device(broker_.port(), "ev-dev");
  device.Publish("devices/th-1/events/overheat", R"({"temp":71.5,"seq":1})");
  device.Publish("devices/th-1/events/overheat", R"({"temp":"hot","seq":2})");   // strict: refused
  device.Publish("devices/th-1/events/unplugged", R"({"seq":3})");              // not in the model
  device.Publish("devices/wk-1/events/overheat", R"({"temp":"hot","seq":4})");  // weak: passed on
  device.Publish("devices/xx-1/events/anything", R"({"seq":5})");               // no model
  device.Publish("devices/th-1/events/overheat", "hot!");                       // not JSON
  std::string archive;
  ASSERT_TRUE(WaitFor([&] {
    archive = testing::ReadFile(dir_.File("archive.jsonl"));
    return std::count(archive.begin(), archive.end(), '\n') >= 3;
  })) << archive << gnomon->Stderr();
  EXPECT_EQ(std::count(archive.begin(), archive.end(), '\n'), 3) << archive;
  auto line = [&](int seq) {
    for (const std::string& l : testing::ReadLines(dir_.File("archive.jsonl"))) {
      if (l.find("\"seq\":" + std::to_string(seq) + ",") != std::string::npos ||
          l.find("\"seq\":" + std::to_string(seq) + "}") != std::string::npos) {
        return l;
      }
    }
    return std::string();
  };
  auto has = [](const std::string& l, const char* what) { return l.find(what) != std::string::npos; };
  std::string l1 = line(1), l4 = line(4), l5 = line(5);
  EXPECT_TRUE(has(l1, R"("event":"overheat")") && has(l1, R"("type":"alert")") &&
              has(l1, R"("model":"acme:strict@1")") && has(l1, R"("problems":"")"))
      << l1;
  EXPECT_TRUE(has(l4, R"("event":"overheat")") && has(l4, "TM_TYPE_MISMATCH")) << "weak lists the problem: " << l4;
  EXPECT_TRUE(has(l5, R"("event":"none")") && has(l5, R"("model":"none")")) << "no model: " << l5;
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
    return std::count(dl.begin(), dl.end(), '\n') >= 3;
  })) << dl;
  EXPECT_NE(dl.find("model_validation"), std::string::npos) << dl;
  EXPECT_NE(dl.find("the event's params are not JSON"), std::string::npos) << dl;
  EXPECT_NE(dl.find(R"(event overheat of th-1 refused by acme:strict@1: [{\"path\":\"/temp\",\"error\":\"TM_TYPE_MISMATCH\")"),
            std::string::npos) << dl;
  EXPECT_NE(dl.find("unplugged is not an event of acme:strict"), std::string::npos) << dl;
  EXPECT_EQ(Call("GET", "/v1/things/th-1/shadow").first, 404) << "events are not stored in the shadow";
}

}  // namespace
}  // namespace gnomon

namespace gnomon {
namespace {

// A device on the broker answering its service requests: `answer(service, request)` returns
// the reply's payload, or "" for none. Requests are kept in arrival order.
class ServiceDevice {
 public:
  using Answer = std::function<std::string(const std::string& service, const std::string& id,
                                           const std::string& request)>;
  ServiceDevice(int port, const std::string& thing, Answer answer)
      : client_(port, thing + "-device"), thing_(thing), answer_(std::move(answer)) {
    client_.Subscribe("$aws/things/" + thing + "/services/+/request");
    thread_ = std::jthread([this](std::stop_token st) { Run(st); });
  }
  std::vector<std::string> requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }
  Client& client() { return client_; }

 private:
  void Run(std::stop_token st) {
    size_t seen = 0;
    while (!st.stop_requested()) {
      auto got = client_.received();
      for (; seen < got.size(); ++seen) {
        const auto& [topic, payload] = got[seen];
        size_t s = topic.find("/services/") + 10;
        std::string service = topic.substr(s, topic.rfind("/request") - s);
        size_t i = payload.find("\"id\":\"") + 6;
        std::string id = payload.substr(i, payload.find('"', i) - i);
        {
          std::lock_guard lock(mu_);
          requests_.push_back(payload);
        }
        std::string reply = answer_(service, id, payload);
        if (!reply.empty()) {
          client_.Publish("$aws/things/" + thing_ + "/services/" + service + "/reply", reply);
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  Client client_;
  std::string thing_;
  Answer answer_;
  std::mutex mu_;
  std::vector<std::string> requests_;
  std::jthread thread_;
};

std::string Field(const std::string& json, const std::string& key) {
  size_t p = json.find("\"" + key + "\":");
  if (p == std::string::npos) {
    return "";
  }
  p += key.size() + 3;
  if (json[p] == '"') {
    return json.substr(p + 1, json.find('"', p + 1) - p - 1);
  }
  return json.substr(p, json.find_first_of(",}", p) - p);
}

class ServiceIntegrationTest : public ShadowIntegrationTest {
 protected:
  void SetUp() override {
    ShadowIntegrationTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) {
      return;
    }
    dir_.Write("models/th.json", R"({ "modelId": "acme:th", "version": "2",
      "match": { "devicePrefix": "th-" }, "validation": "strict",
      "properties": [ { "identifier": "temp", "accessMode": "r", "dataType": { "type": "float" } } ],
      "services": [
        { "identifier": "reboot", "callType": "async", "timeoutMs": 3000,
          "inputData": [ { "identifier": "delaySec", "required": false,
                           "dataType": { "type": "int", "specs": { "min": 0, "max": 3600 } } } ],
          "outputData": [ { "identifier": "ok", "dataType": { "type": "bool" } } ] },
        { "identifier": "ping", "callType": "sync", "timeoutMs": 600,
          "outputData": [ { "identifier": "ms", "dataType": { "type": "int" } } ] },
        { "identifier": "silent", "callType": "async", "timeoutMs": 300 },
        { "identifier": "note", "callType": "async", "timeoutMs": 3000,
          "inputData": [ { "identifier": "text", "dataType": { "type": "text" } } ] } ] })");
    std::string cfg = testing::ReadFile(dir_.File("gnomon.yaml"));
    cfg.replace(cfg.find("topics: [\"devices/+/telemetry\"]"), 31,
                "topics: [\"devices/+/telemetry\", \"devices/+/status\"]");
    cfg.replace(cfg.find("shadows: { connection: broker }"), 31,
                "shadows: { connection: broker, presence: { from: \"devices/+/status\" } }");
    dir_.Write("gnomon.yaml", cfg + "models: [models/*.json]\nservices: { keep_ms: 600000 }\n");
  }

  // Creates `thing`'s shadow and has presence say it is offline (published by `status`).
  void MarkOffline(Client& status, const std::string& thing) {
    ASSERT_EQ(Call("POST", "/v1/things/" + thing + "/shadow",
                   R"({"state":{"reported":{"temp":20}}})").first, 200);
    status.Publish("devices/" + thing + "/status", "offline");
    ASSERT_TRUE(WaitFor([&] {
      return Call("GET", "/v1/things/" + thing + "/shadow").second.find("\"connected\":false") !=
             std::string::npos;
    }));
  }

  // Waits until call `id` of `thing` is in `state`; returns its document.
  std::string AwaitCall(const std::string& thing, const std::string& id, const std::string& state) {
    std::string doc;
    WaitFor([&] {
      doc = Call("GET", "/v1/things/" + thing + "/services/calls/" + id).second;
      return Field(doc, "state") == state;
    }, std::chrono::milliseconds(15000));
    return doc;
  }
};

// Replies as the model says for reboot and ping; `silent` gets no answer; a reboot with
// delaySec 13 answers with data the model refuses, 66 with a device error.
std::string ModelDevice(const std::string& service, const std::string& id, const std::string& req) {
  if (service == "ping") {
    return R"({"id":")" + id + R"(","code":200,"data":{"ms":7}})";
  }
  if (service == "reboot") {
    std::string delay = Field(req.substr(req.find("params")), "delaySec");
    if (delay == "13") {
      return R"({"id":")" + id + R"(","code":200,"data":{"ok":"yes"}})";
    }
    if (delay == "66") {
      return R"({"id":")" + id + R"(","code":503,"data":{"reason":"busy"}})";
    }
    return R"({"id":")" + id + R"(","code":200,"data":{"ok":true}})";
  }
  return "";
}

TEST_F(ServiceIntegrationTest, CallsGoToTheDeviceOverMqttAndFollowTheirLifecycle) {
  auto gnomon = StartGnomon();
  ServiceDevice device(broker_.port(), "th-1", ModelDevice);

  // sync: the caller waits for the device's reply.
  auto [code, body] = Call("POST", "/v1/things/th-1/services/ping", "{}");
  ASSERT_EQ(code, 200) << body << gnomon->Stderr();
  EXPECT_EQ(Field(body, "state"), "SUCCEEDED") << body;
  EXPECT_NE(body.find(R"("data":{"ms":7})"), std::string::npos) << body;
  EXPECT_EQ(Field(body, "model"), "acme:th@2") << body;

  // async: 202 with the id at once; the state moves on to SUCCEEDED.
  std::tie(code, body) = Call("POST", "/v1/things/th-1/services/reboot", R"({"delaySec":5})");
  ASSERT_EQ(code, 202) << body;
  EXPECT_EQ(Field(body, "state"), "QUEUED") << body;
  std::string id = Field(body, "id");
  ASSERT_EQ(id.size(), 32u) << body;
  std::string done = AwaitCall("th-1", id, "SUCCEEDED");
  EXPECT_EQ(Field(done, "state"), "SUCCEEDED") << done;
  EXPECT_NE(done.find(R"("data":{"ok":true})"), std::string::npos) << done;
  EXPECT_NE(done.find(R"("params":{"delaySec":5})"), std::string::npos) << done;
  EXPECT_NE(Field(done, "finishedAt"), "") << done;
  // What the device got: the id, the service and the params.
  ASSERT_TRUE(WaitFor([&] { return device.requests().size() == 2; }));
  std::string req = device.requests()[1];
  EXPECT_NE(req.find(R"("id":")" + id + "\""), std::string::npos) << req;
  EXPECT_NE(req.find(R"("service":"reboot","params":{"delaySec":5})"), std::string::npos) << req;

  // The device's output is validated (strict: FAILED with the problems); device errors fail.
  std::tie(code, body) = Call("POST", "/v1/things/th-1/services/reboot", R"({"delaySec":13})");
  ASSERT_EQ(code, 202) << body;
  std::string bad = AwaitCall("th-1", Field(body, "id"), "FAILED");
  EXPECT_EQ(Field(bad, "error"), "MODEL_VALIDATION") << bad;
  EXPECT_NE(bad.find(R"("path":"/ok","error":"TM_TYPE_MISMATCH")"), std::string::npos) << bad;
  std::tie(code, body) = Call("POST", "/v1/things/th-1/services/reboot", R"({"delaySec":66})");
  std::string busy = AwaitCall("th-1", Field(body, "id"), "FAILED");
  EXPECT_EQ(Field(busy, "error"), "TM_DEVICE_ERROR") << busy;
  EXPECT_EQ(Field(busy, "code"), "503") << busy;

  // No answer: TIMEOUT after the service's timeoutMs from SENT.
  std::tie(code, body) = Call("POST", "/v1/things/th-1/services/silent");
  ASSERT_EQ(code, 202) << body;
  std::string silent = AwaitCall("th-1", Field(body, "id"), "TIMEOUT");
  EXPECT_EQ(Field(silent, "error"), "TM_SERVICE_TIMEOUT") << silent;
  EXPECT_NE(Field(silent, "sentAt"), "") << silent;

  // Refused before anything is sent, each with its exact error.
  auto error = [&](const std::string& path, const std::string& params) {
    auto [c, b] = Call("POST", path, params);
    return std::to_string(c) + " " + Field(b, "error");
  };
  EXPECT_EQ(error("/v1/things/th-1/services/reboot", R"({"delaySec":99999})"), "400 MODEL_VALIDATION");
  EXPECT_NE(Call("POST", "/v1/things/th-1/services/reboot", R"({"delaySec":99999})").second.find(
                R"("path":"/delaySec","error":"TM_OUT_OF_RANGE")"),
            std::string::npos);
  EXPECT_EQ(error("/v1/things/th-1/services/reboot", R"({"force":true})"), "400 MODEL_VALIDATION");
  EXPECT_EQ(error("/v1/things/th-1/services/reboot", "[1]"), "400 TM_TYPE_MISMATCH");
  EXPECT_EQ(error("/v1/things/th-1/services/reboot", "{\"delaySec\":"), "400 INVALID_JSON");
  EXPECT_EQ(error("/v1/things/th-1/services/explode", "{}"), "404 TM_UNKNOWN_IDENTIFIER");
  EXPECT_EQ(error("/v1/things/xx-1/services/reboot", "{}"), "404 TM_MODEL_NOT_FOUND");
  EXPECT_EQ(error("/v1/things/th%2B1/services/reboot", "{}"), "400 INVALID_THING_NAME");
  EXPECT_EQ(error("/v1/things/th-1/services/reboot?ttlMs=soon", "{}"), "400 INVALID_TTL");
  auto [nc, nb] = Call("GET", "/v1/things/th-1/services/calls/0123456789abcdef0123456789abcdef");
  EXPECT_EQ(nc, 404) << nb;
  EXPECT_EQ(Field(nb, "error"), "TM_CALL_NOT_FOUND") << nb;
  EXPECT_EQ(Call("GET", "/v1/things/th-2/services/calls/" + id).first, 404)
      << "a call is found under its own thing only";

  // Replies that are not replies are dead-lettered; a reply to an ended call changes nothing.
  device.client().Publish("$aws/things/th-1/services/reboot/reply", "not json");
  device.client().Publish("$aws/things/th-1/services/reboot/reply", R"({"id":"nope","code":200})");
  device.client().Publish("$aws/things/th-1/services/silent/reply",
                          R"({"id":")" + Field(silent, "id") + R"(","code":200})");
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
    return dl.find("unknown_service_call") != std::string::npos;
  })) << dl;
  EXPECT_NE(dl.find("bad_service_reply"), std::string::npos) << dl;
  std::string metrics;
  ASSERT_TRUE(WaitFor([&] {
    metrics = Call("GET", "/metrics").second;
    return metrics.find("gnomon_service_late_replies_total 1") != std::string::npos;
  })) << metrics;
  EXPECT_EQ(Field(Call("GET", "/v1/things/th-1/services/calls/" + Field(silent, "id")).second,
                  "state"),
            "TIMEOUT");
  EXPECT_NE(metrics.find("gnomon_service_calls_finished_total{state=\"SUCCEEDED\"} 2"),
            std::string::npos) << metrics;
  EXPECT_NE(metrics.find("gnomon_service_calls_finished_total{state=\"FAILED\"} 2"),
            std::string::npos) << metrics;
}

TEST_F(ServiceIntegrationTest, SyncCallsTimeOutWith504AndAreRefusedForOfflineDevices) {
  auto gnomon = StartGnomon();
  // A device that never answers: the sync caller gets 504 after the service's timeoutMs.
  ServiceDevice mute(broker_.port(), "th-3", [](auto&, auto&, auto&) { return std::string(); });
  auto [code, body] = Call("POST", "/v1/things/th-3/services/ping", "{}");
  EXPECT_EQ(code, 504) << body;
  EXPECT_EQ(Field(body, "error"), "TM_SERVICE_TIMEOUT") << body;
  std::string id = Field(body.substr(body.find("details")), "id");
  EXPECT_EQ(Field(Call("GET", "/v1/things/th-3/services/calls/" + id).second, "state"), "TIMEOUT");

  Client status(broker_.port(), "th-4-status");
  MarkOffline(status, "th-4");
  if (HasFatalFailure()) {
    return;
  }
  std::tie(code, body) = Call("POST", "/v1/things/th-4/services/ping", "{}");
  EXPECT_EQ(code, 503) << body;
  EXPECT_EQ(Field(body, "error"), "TM_DEVICE_OFFLINE") << body;
}

TEST_F(ServiceIntegrationTest, CallsToAnOfflineDeviceSurviveKill9AndAreSentInOrderWhenItReturns) {
  auto gnomon = StartGnomon();
  Client status(broker_.port(), "th-2-status");
  MarkOffline(status, "th-2");
  if (HasFatalFailure()) {
    return;
  }
  std::vector<std::string> ids;
  for (int delay : {1, 2, 3}) {
    auto [code, body] = Call("POST", "/v1/things/th-2/services/reboot",
                             R"({"delaySec":)" + std::to_string(delay) + "}");
    ASSERT_EQ(code, 202) << body;
    ids.push_back(Field(body, "id"));
  }
  auto [ec, eb] = Call("POST", "/v1/things/th-2/services/reboot?ttlMs=200", R"({"delaySec":9})");
  ASSERT_EQ(ec, 202) << eb;
  std::string expiring = Field(eb, "id");

  // Every 202 was durable: a kill -9 loses none of them.
  gnomon->Signal(SIGKILL);
  gnomon->Wait();
  gnomon = StartGnomon();
  for (const auto& id : ids) {
    EXPECT_EQ(Field(Call("GET", "/v1/things/th-2/services/calls/" + id).second, "state"), "QUEUED");
  }
  EXPECT_EQ(Field(AwaitCall("th-2", expiring, "EXPIRED"), "error"), "TM_CALL_EXPIRED");

  // Back online: the kept calls go out in the order they were made and finish.
  ServiceDevice device(broker_.port(), "th-2", ModelDevice);
  status.Publish("devices/th-2/status", "online");
  for (const auto& id : ids) {
    EXPECT_EQ(Field(AwaitCall("th-2", id, "SUCCEEDED"), "state"), "SUCCEEDED") << gnomon->Stderr();
  }
  auto got = device.requests();
  ASSERT_EQ(got.size(), 3u) << "the expired call is never sent";
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NE(got[i].find(ids[i]), std::string::npos) << i << ": " << got[i];
  }
}

// An offline device's queue is bounded by services.max_queued (429 beyond it); once its calls
// are sent and finished, calls are taken again.
TEST_F(ServiceIntegrationTest, UnfinishedCallsBeyondMaxQueuedAreRefusedWith429) {
  std::string cfg = testing::ReadFile(dir_.File("gnomon.yaml"));
  cfg.replace(cfg.find("services: { keep_ms: 600000 }"), 29,
              "services: { keep_ms: 600000, max_queued: 2 }");
  dir_.Write("gnomon.yaml", cfg);
  auto gnomon = StartGnomon();
  Client status(broker_.port(), "th-7-status");
  MarkOffline(status, "th-7");
  if (HasFatalFailure()) {
    return;
  }
  std::vector<std::string> ids;
  for (int delay : {1, 2}) {
    auto [code, body] = Call("POST", "/v1/things/th-7/services/reboot",
                             R"({"delaySec":)" + std::to_string(delay) + "}");
    ASSERT_EQ(code, 202) << body;
    ids.push_back(Field(body, "id"));
  }
  auto [code, body] = Call("POST", "/v1/things/th-7/services/reboot", R"({"delaySec":3})");
  EXPECT_EQ(code, 429) << body;
  EXPECT_EQ(Field(body, "error"), "TM_TOO_MANY_CALLS") << body;
  EXPECT_NE(body.find("already has 2 unfinished calls"), std::string::npos) << body;
  // Another thing's calls are not limited by th-7's.
  ServiceDevice other(broker_.port(), "th-8", ModelDevice);
  EXPECT_EQ(Call("POST", "/v1/things/th-8/services/ping", "{}").first, 200);

  ServiceDevice device(broker_.port(), "th-7", ModelDevice);
  status.Publish("devices/th-7/status", "online");
  for (const auto& id : ids) {
    EXPECT_EQ(Field(AwaitCall("th-7", id, "SUCCEEDED"), "state"), "SUCCEEDED");
  }
  std::tie(code, body) = Call("POST", "/v1/things/th-7/services/reboot", R"({"delaySec":4})");
  ASSERT_EQ(code, 202) << body;
  EXPECT_EQ(Field(AwaitCall("th-7", Field(body, "id"), "SUCCEEDED"), "state"), "SUCCEEDED");
  EXPECT_EQ(device.requests().size(), 3u) << "the refused call was never sent";
}

// A request the broker cannot take (larger than its max_packet_size) is dead-lettered by the
// sink; the call is FAILED with TM_SEND_FAILED and the device gets nothing.
TEST_F(ServiceIntegrationTest, ARequestTheBrokerCannotTakeFailsTheCall) {
  broker_.Stop();
  std::string why;
  ASSERT_TRUE(broker_.Start(&why, "max_packet_size 4000\n")) << why;
  auto gnomon = StartGnomon();
  ServiceDevice device(broker_.port(), "th-9", ModelDevice);
  ASSERT_EQ(Call("POST", "/v1/things/th-9/services/ping", "{}").first, 200) << gnomon->Stderr();
  auto [code, body] = Call("POST", "/v1/things/th-9/services/note",
                           R"({"text":")" + std::string(6000, 'n') + "\"}");
  ASSERT_EQ(code, 202) << body;
  std::string failed = AwaitCall("th-9", Field(body, "id"), "FAILED");
  EXPECT_EQ(Field(failed, "error"), "TM_SEND_FAILED") << failed << gnomon->Stderr();
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
    return dl.find("/services/note/request") != std::string::npos;
  })) << dl;
  // A small one still goes through.
  std::tie(code, body) = Call("POST", "/v1/things/th-9/services/note", R"({"text":"hi"})");
  ASSERT_EQ(code, 202) << body;
  EXPECT_EQ(Field(AwaitCall("th-9", Field(body, "id"), "SENT"), "state"), "SENT");
  ASSERT_TRUE(WaitFor([&] { return device.requests().size() == 2; }));
  EXPECT_EQ(device.requests()[1].find(std::string(100, 'n')), std::string::npos);
}

// Without a shadow connection there is no broker to send requests on: 503.
TEST_F(ServiceIntegrationTest, CallsAreUnavailableWithoutAShadowConnection) {
  std::string cfg = testing::ReadFile(dir_.File("gnomon.yaml"));
  cfg.replace(cfg.find("shadows: { connection: broker, presence: { from: \"devices/+/status\" } }"),
              71, "shadows: { sync: normal }");
  dir_.Write("gnomon.yaml", cfg);
  auto gnomon = StartGnomon();
  auto [code, body] = Call("POST", "/v1/things/th-1/services/reboot", "{}");
  EXPECT_EQ(code, 503) << body << gnomon->Stderr();
  EXPECT_EQ(Field(body, "error"), "SERVICES_UNAVAILABLE") << body;
  // Shadows themselves still work over REST.
  EXPECT_EQ(Call("POST", "/v1/things/th-1/shadow", R"({"state":{"reported":{"temp":20}}})").first, 200);
}

// A call the store cannot save is answered 500 and forgotten: never sent, not listed.
TEST_F(ServiceIntegrationTest, ACallTheStoreCannotSaveIsRefusedAndNeverSent) {
  if (::geteuid() != 0) {
    GNOMON_REQUIRE_SERVER(false, "mounting a small tmpfs needs root");
  }
  testing::SmallDisk disk(dir_.File("data"), "16m");
  GNOMON_REQUIRE_SERVER(disk.mounted(), "mount -t tmpfs failed: " + disk.why());
  std::string cfg = testing::ReadFile(dir_.File("gnomon.yaml"));
  cfg.replace(cfg.find("sinks:\n"), 7,
              "dead_letter: { sink: dl }\nsinks:\n  - { name: dl, type: file, path: dl.jsonl, linger_ms: 0 }\n");
  dir_.Write("gnomon.yaml", cfg);
  auto gnomon = StartGnomon();
  ServiceDevice device(broker_.port(), "th-6", ModelDevice);
  ASSERT_EQ(Call("POST", "/v1/things/th-6/services/ping", "{}").first, 200) << gnomon->Stderr();

  disk.Fill();
  for (const char* service : {"reboot", "ping"}) {  // async and sync
    auto [code, body] = Call("POST", std::string("/v1/things/th-6/services/") + service, "{}");
    EXPECT_EQ(code, 500) << service << " " << body;
    EXPECT_EQ(Field(body, "error"), "INTERNAL_ERROR") << body;
  }
  std::string metrics = Call("GET", "/metrics").second;
  EXPECT_EQ(metrics.find("gnomon_shadow_store_failures_total 0\n"), std::string::npos) << metrics;

  disk.Free();
  auto [code, body] = Call("POST", "/v1/things/th-6/services/reboot", R"({"delaySec":8})");
  ASSERT_EQ(code, 202) << body;
  EXPECT_EQ(Field(AwaitCall("th-6", Field(body, "id"), "SUCCEEDED"), "state"), "SUCCEEDED");
  auto got = device.requests();
  ASSERT_EQ(got.size(), 2u) << "the unstored calls were never sent";
  EXPECT_NE(got[1].find(R"("delaySec":8)"), std::string::npos) << got[1];
}

TEST_F(ServiceIntegrationTest, RulesInvokeServicesAndSeeTheReplies) {
  dir_.Write("rules/invoke.lua", R"(
    return rule { name = "invoke", from = "devices/+/telemetry",
      handle = function(msg, ctx)
        if msg.payload.temp > 50 then
          local id = ctx.invoke(msg.device, "reboot", { delaySec = msg.payload.delay })
          ctx.emit("archive", { invoked = id, thing = msg.device })
        end
      end })");
  dir_.Write("rules/replies.lua", R"(
    return rule { name = "replies", from = "$aws/things/+/services/+/reply",
      handle = function(msg, ctx)
        ctx.emit("archive", { reply = msg.headers["gnomon-call-id"],
                              state = msg.headers["gnomon-call-state"],
                              ok = msg.payload.data.ok })
      end })");
  auto gnomon = StartGnomon();
  ServiceDevice device(broker_.port(), "th-5", ModelDevice);
  Client sensor(broker_.port(), "th-5-sensor");
  sensor.Publish("devices/th-5/telemetry", R"({"temp":80,"delay":2})");
  sensor.Publish("devices/th-5/telemetry", R"({"temp":81,"delay":-1})");  // refused by the model
  std::string archive;
  ASSERT_TRUE(WaitFor([&] {
    archive = testing::ReadFile(dir_.File("archive.jsonl"));
    return archive.find("\"reply\"") != std::string::npos;
  })) << archive << gnomon->Stderr();
  std::string invoked = Field(archive, "invoked");
  ASSERT_EQ(invoked.size(), 32u) << archive;
  std::string reply = archive.substr(archive.rfind('{', archive.find("\"reply\"")));
  reply = reply.substr(0, reply.find('\n'));
  EXPECT_EQ(Field(reply, "reply"), invoked) << reply;
  EXPECT_EQ(Field(reply, "state"), "SUCCEEDED") << reply;
  EXPECT_EQ(Field(reply, "ok"), "true") << reply;
  std::string call = AwaitCall("th-5", invoked, "SUCCEEDED");
  EXPECT_EQ(Field(call, "rule"), "invoke") << call;
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
    return dl.find("service_rejected") != std::string::npos;
  })) << dl;
  EXPECT_NE(dl.find("TM_OUT_OF_RANGE"), std::string::npos) << dl;
  EXPECT_NE(dl.find(R"("rule":"invoke")"), std::string::npos) << dl;
  EXPECT_EQ(device.requests().size(), 1u);
}

}  // namespace
}  // namespace gnomon

namespace gnomon {
namespace {

TEST_F(ShadowIntegrationTest, MessagesOnAModelsMatchTopicAreValidatedPropertyPosts) {
  const char* props = R"("properties": [
      { "identifier": "temp", "accessMode": "r", "dataType": { "type": "float", "specs": { "max": 100 } } } ])";
  dir_.Write("models/strict.json", std::string(R"({ "modelId": "acme:strict", "version": "1",
      "match": { "devicePrefix": "th-", "topic": "devices/+/telemetry" }, "validation": "strict", )") +
                                       props + "}");
  dir_.Write("models/weak.json", std::string(R"({ "modelId": "acme:weak",
      "match": { "devicePrefix": "wk-", "topic": "devices/+/telemetry" }, "validation": "weak", )") +
                                     props + "}");
  dir_.Write("gnomon.yaml", testing::ReadFile(dir_.File("gnomon.yaml")) + "models: [models/*.json]\n");
  dir_.Write("rules/posts.lua", R"(
    return rule { name = "posts", from = "devices/+/telemetry",
      handle = function(msg, ctx)
        ctx.emit("archive", { thing = msg.device, n = msg.payload.n,
                              model = msg.headers["gnomon-model"] or "none",
                              problems = msg.headers["gnomon-model-problems"] or "" })
      end })");
  auto gnomon = StartGnomon();
  Client device(broker_.port(), "posts-dev");
  device.Publish("devices/th-1/telemetry", R"({"temp":21.5})");
  device.Publish("devices/th-1/telemetry", R"({"temp":500})");   // strict: refused
  device.Publish("devices/th-1/telemetry", R"({"humidity":3})");  // not a property: refused
  device.Publish("devices/wk-1/telemetry", R"({"temp":"hot"})");  // weak: passed on
  device.Publish("devices/xx-1/telemetry", R"({"anything":1})");  // no model
  std::string archive;
  ASSERT_TRUE(WaitFor([&] {
    archive = testing::ReadFile(dir_.File("archive.jsonl"));
    return std::count(archive.begin(), archive.end(), '\n') >= 3;
  })) << archive << gnomon->Stderr();
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = testing::ReadFile(dir_.File("data/dead-letter.jsonl"));
    // The fixture's report rule dead-letters wk-1's shadow write too, so wait for the two
    // refused posts themselves rather than for a number of lines.
    return dl.find("TM_OUT_OF_RANGE") != std::string::npos &&
           dl.find("TM_UNKNOWN_IDENTIFIER") != std::string::npos;
  })) << dl;
  EXPECT_EQ(std::count(archive.begin(), archive.end(), '\n'), 3) << archive;
  EXPECT_NE(archive.find(R"("model":"acme:strict@1")"), std::string::npos) << archive;
  EXPECT_NE(archive.find("TM_TYPE_MISMATCH"), std::string::npos) << "weak lists the problem: " << archive;
  EXPECT_NE(archive.find(R"("model":"none")"), std::string::npos) << archive;
  EXPECT_NE(dl.find(R"(properties posted by th-1 on devices/th-1/telemetry refused by acme:strict@1: [{\"path\":\"/temp\",\"error\":\"TM_OUT_OF_RANGE\")"),
            std::string::npos) << dl;
  EXPECT_NE(dl.find(R"(properties posted by th-1 on devices/th-1/telemetry refused by acme:strict@1: [{\"path\":\"/humidity\",\"error\":\"TM_UNKNOWN_IDENTIFIER\")"),
            std::string::npos) << dl;
}

}  // namespace
}  // namespace gnomon

namespace gnomon {
namespace {

// REST gets are answered from the last durable state without a trip to the owner: every
// channel's writes, deletes and restarts must show up there exactly as the owner would say.
TEST_F(ShadowIntegrationTest, RestGetsShowTheLastDurableStateWhateverWroteIt) {
  auto gnomon = StartGnomon();
  auto get = [&](const std::string& path) { return Call("GET", path); };
  ASSERT_EQ(get("/v1/things/g1/shadow").first, 404);
  ASSERT_EQ(Call("POST", "/v1/things/g1/shadow", R"({"state":{"reported":{"fan":"off"}}})").first, 200);
  auto [code, doc] = get("/v1/things/g1/shadow");
  EXPECT_EQ(code, 200);
  EXPECT_NE(doc.find(R"("reported":{"fan":"off"})"), std::string::npos) << doc;
  ASSERT_EQ(Call("POST", "/v1/things/g1/shadow", R"({"state":{"desired":{"fan":"on"}}})").first, 200);
  doc = get("/v1/things/g1/shadow").second;
  EXPECT_NE(doc.find(R"("delta":{"fan":"on"})"), std::string::npos) << doc;
  EXPECT_NE(doc.find(R"("version":2)"), std::string::npos) << doc;

  // A device over MQTT and a rule write; the get sees each once it is durable.
  Client device(broker_.port(), "g1");
  device.Subscribe("$aws/things/g1/shadow/update/accepted");
  device.Publish("$aws/things/g1/shadow/update", R"({"state":{"reported":{"fan":"on"}}})");
  ASSERT_TRUE(WaitFor([&] { return device.count() >= 1; }));
  doc = get("/v1/things/g1/shadow").second;
  EXPECT_NE(doc.find(R"("version":3)"), std::string::npos) << doc;
  EXPECT_EQ(doc.find("delta"), std::string::npos) << "in sync: no delta: " << doc;
  device.Publish("devices/g1/telemetry", R"({"temp":30})");
  ASSERT_TRUE(WaitFor([&] {
    return get("/v1/things/g1/shadow").second.find(R"("temp":30)") != std::string::npos;
  })) << get("/v1/things/g1/shadow").second;
  // A named shadow is its own entry.
  ASSERT_EQ(Call("POST", "/v1/things/g1/shadow?name=cfg", R"({"state":{"desired":{"x":1}}})").first, 200);
  EXPECT_NE(get("/v1/things/g1/shadow?name=cfg").second.find(R"("version":1)"), std::string::npos);
  EXPECT_NE(get("/v1/things/g1/shadow").second.find(R"("version":4)"), std::string::npos);

  // Deleted: 404 at once; written again: the version goes on.
  ASSERT_EQ(Call("DELETE", "/v1/things/g1/shadow").first, 200);
  EXPECT_EQ(get("/v1/things/g1/shadow").first, 404);
  ASSERT_EQ(Call("POST", "/v1/things/g1/shadow", R"({"state":{"reported":{"fan":"auto"}}})").first, 200);
  doc = get("/v1/things/g1/shadow").second;
  EXPECT_NE(doc.find(R"("version":5)"), std::string::npos) << doc;
  EXPECT_EQ(doc.find("temp"), std::string::npos) << "nothing from before the delete: " << doc;
  std::string metrics = get("/metrics").second;
  EXPECT_NE(metrics.find("gnomon_shadow_api_reads_total{path=\"committed\"}"), std::string::npos)
      << metrics;

  // After a restart the first get asks the owner (the store), the next ones do not.
  gnomon->Signal(SIGTERM);
  ASSERT_EQ(gnomon->Wait(), 0) << gnomon->Stderr();
  gnomon = StartGnomon();
  EXPECT_EQ(get("/v1/things/g1/shadow").second, doc);
  EXPECT_EQ(get("/v1/things/g1/shadow").second, doc);
  metrics = get("/metrics").second;
  EXPECT_NE(metrics.find("gnomon_shadow_api_reads_total{path=\"owner\"} 1\n"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("gnomon_shadow_api_reads_total{path=\"committed\"} 1\n"), std::string::npos)
      << metrics;
}

}  // namespace
}  // namespace gnomon

namespace gnomon {
namespace {

// With a cache of 2 shadows per worker, most shadows are dropped between batches and read
// again from the store: every write still builds on the last durable state, and gets (REST,
// whose own cache is as small, and rules' ctx.shadow) show it.
TEST_F(ShadowIntegrationTest, ShadowsBeyondTheCacheAreDroppedAndReadAgainWithNothingLost) {
  std::string cfg = testing::ReadFile(dir_.File("gnomon.yaml"));
  cfg.replace(cfg.find("shadows: { connection: broker }"), 31,
              "shadows: { connection: broker, cache_shadows: 2 }");
  dir_.Write("gnomon.yaml", cfg);
  auto gnomon = StartGnomon();
  constexpr int kThings = 24;
  for (int round = 1; round <= 3; ++round) {
    for (int i = 0; i < kThings; ++i) {
      std::string body = "{\"state\":{\"reported\":{\"r" + std::to_string(round) + "\":" +
                         std::to_string(i) + "}}}";
      auto [code, answer] = Call("POST", "/v1/things/c-" + std::to_string(i) + "/shadow", body);
      ASSERT_EQ(code, 200) << answer << gnomon->Stderr();
      EXPECT_EQ(Field(answer, "version"), std::to_string(round)) << answer;
    }
  }
  // Telemetry through the rule: ctx.shadow:report on shadows that were dropped.
  Client sensor(broker_.port(), "cache-sensor");
  // Five per thing, back to back: a shadow is dropped only once its queued writes are durable,
  // or a reload would miss them (versions would repeat).
  for (int k = 0; k < 5; ++k) {
    for (int i = 0; i < kThings; ++i) {
      sensor.Publish("devices/c-" + std::to_string(i) + "/telemetry",
                     "{\"temp\":" + std::to_string(i * 10 + k) + "}");
    }
  }
  for (int i = 0; i < kThings; ++i) {
    std::string doc;
    std::string want = "{\"r1\":" + std::to_string(i) + ",\"r2\":" + std::to_string(i) +
                       ",\"r3\":" + std::to_string(i) + ",\"temp\":" + std::to_string(i * 10 + 4) +
                       "}";
    ASSERT_TRUE(WaitFor([&] {
      doc = Call("GET", "/v1/things/c-" + std::to_string(i) + "/shadow").second;
      return doc.find(want) != std::string::npos;
    })) << i << ": " << doc;
    EXPECT_NE(doc.find("\"version\":8"), std::string::npos) << doc;
  }
  std::string metrics = Call("GET", "/metrics").second;
  auto value = [&](const std::string& name) {
    size_t p = metrics.find("\n" + name + " ");
    return p == std::string::npos ? -1.0 : std::stod(metrics.substr(p + name.size() + 2));
  };
  EXPECT_GT(value("gnomon_shadow_cache_drops_total"), kThings) << metrics;
  EXPECT_GT(value("gnomon_shadow_cache_loads_total"), 2 * kThings) << metrics;
}

TEST_F(ShadowIntegrationTest, AFullDiskRefusesWritesAndLosesOrAltersNothingAcceptedBefore) {
  if (::geteuid() != 0) {
    GNOMON_REQUIRE_SERVER(false, "mounting a small tmpfs needs root");
  }
  testing::SmallDisk disk(dir_.File("data"), "16m");
  GNOMON_REQUIRE_SERVER(disk.mounted(), "mount -t tmpfs failed: " + disk.why());
  std::string cfg = testing::ReadFile(dir_.File("gnomon.yaml"));
  cfg.replace(cfg.find("topics: [\"devices/+/telemetry\"]"), 31,
              "topics: [\"devices/+/telemetry\", \"devices/+/status\"]");
  cfg.replace(cfg.find("shadows: { connection: broker }"), 31,
              "shadows: { connection: broker, presence: { from: \"devices/+/status\" } }");
  // Dead letters go to a disk that is not full.
  cfg.replace(cfg.find("sinks:\n"), 7,
              "dead_letter: { sink: dl }\nsinks:\n  - { name: dl, type: file, path: dl.jsonl, linger_ms: 0 }\n");
  dir_.Write("gnomon.yaml", cfg);
  auto gnomon = StartGnomon();
  ASSERT_EQ(Call("POST", "/v1/things/f1/shadow", R"({"state":{"reported":{"n":1}}})").first, 200);
  std::string before = Call("GET", "/v1/things/f1/shadow").second;

  disk.Fill();
  auto [code, body] = Call("POST", "/v1/things/f1/shadow",
                           R"({"state":{"reported":{"n":2}},"clientToken":"full-1"})");
  EXPECT_EQ(code, 500) << body;
  EXPECT_NE(body.find("INTERNAL_ERROR"), std::string::npos) << body;
  EXPECT_NE(body.find(R"("clientToken":"full-1")"), std::string::npos) << body;
  EXPECT_EQ(Call("GET", "/v1/things/f1/shadow").second, before) << "the refused write is not shown";
  // Over MQTT, a delete the store refuses: delete/rejected with 500 and the request's token.
  Client device(broker_.port(), "f1-device");
  device.Subscribe("$aws/things/f1/shadow/delete/#");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  device.Publish("$aws/things/f1/shadow/delete", R"({"clientToken":"full-2"})");
  auto refused = Await(device, "$aws/things/f1/shadow/delete/rejected", "\"full-2\"");
  ASSERT_TRUE(refused) << gnomon->Stderr();
  EXPECT_NE(refused->find(R"("code":500)"), std::string::npos) << *refused;
  EXPECT_NE(refused->find("INTERNAL_ERROR"), std::string::npos) << *refused;
  EXPECT_EQ(Call("GET", "/v1/things/f1/shadow").second, before)
      << "the refused delete is not shown";
  Client status(broker_.port(), "f1-status");
  status.Publish("devices/f1/status", "online");
  std::string dl;
  ASSERT_TRUE(WaitFor([&] {
    dl = testing::ReadFile(dir_.File("dl.jsonl"));
    return dl.find("shadow_error") != std::string::npos;
  })) << dl << gnomon->Stderr();
  EXPECT_NE(dl.find("presence of f1 could not be stored"), std::string::npos) << dl;
  std::string metrics = Call("GET", "/metrics").second;
  EXPECT_EQ(metrics.find("gnomon_shadow_store_failures_total 0\n"), std::string::npos) << metrics;

  // Room again: writes go on from the last durable state (the refused one never happened).
  disk.Free();
  ASSERT_EQ(Call("POST", "/v1/things/f1/shadow", R"({"state":{"reported":{"m":3}}})").first, 200);
  std::string after = Call("GET", "/v1/things/f1/shadow").second;
  EXPECT_NE(after.find(R"("reported":{"n":1,"m":3})"), std::string::npos) << after;
  EXPECT_NE(after.find(R"("version":2)"), std::string::npos) << after;
  gnomon->Signal(SIGTERM);
  ASSERT_EQ(gnomon->Wait(), 0) << gnomon->Stderr();
  gnomon = StartGnomon();
  EXPECT_EQ(Call("GET", "/v1/things/f1/shadow").second, after);
}

// Timers and inactivity over kill -9: a timer set by an answered message and a device's
// silence both fire after the restart, once each; REST shows them pending before.
TEST_F(ShadowIntegrationTest, TimersAndSilencesDueDuringAKill9FireOnceWhenGnomonIsBack) {
  UseIngestRule(R"(
    return rule { name = "watch", from = "devices/+/telemetry",
      inactivity = "2s",
      handle = function(msg, ctx)
        ctx.timer.after("check", 1500, { n = msg.payload.n })
      end,
      on_timer = function(t, ctx)
        ctx.emit("archive", { kind = "timer", d = ctx.shadow.thing, n = t.data.n })
      end,
      on_inactive = function(ev, ctx)
        ctx.emit("archive", { kind = "silent", d = ctx.shadow.thing })
      end })");
  auto gnomon = StartGnomon();
  for (int k = 0; k < 4; ++k) {
    auto r = Call("POST", "/v1/ingest/devices/t" + std::to_string(k) + "/telemetry",
                  R"({"n":)" + std::to_string(k) + "}");
    ASSERT_EQ(r.first, 202) << r.second;
  }
  auto pending = Call("GET", "/v1/things/t1/state?rule=watch");
  EXPECT_NE(pending.second.find(R"("timers":[{"name":"check","due":)"), std::string::npos)
      << pending.second;
  EXPECT_NE(pending.second.find(R"("inactive_by":)"), std::string::npos) << pending.second;
  ::kill(gnomon->pid(), SIGKILL);
  gnomon->Wait();
  EXPECT_EQ(testing::ReadFile(dir_.File("archive.jsonl")), "") << "nothing was due yet";
  std::this_thread::sleep_for(std::chrono::milliseconds(1600));
  gnomon = StartGnomon();
  auto count = [&](const std::string& needle) {
    std::string a = testing::ReadFile(dir_.File("archive.jsonl"));
    size_t n = 0;
    for (size_t at = a.find(needle); at != std::string::npos; at = a.find(needle, at + 1)) {
      ++n;
    }
    return n;
  };
  ASSERT_TRUE(
      WaitFor([&] { return count(R"("kind":"silent")") >= 4; }, std::chrono::milliseconds(20000)))
      << testing::ReadFile(dir_.File("archive.jsonl"));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(count(R"("kind":"timer")"), 4u) << testing::ReadFile(dir_.File("archive.jsonl"));
  EXPECT_EQ(count(R"("kind":"silent")"), 4u) << testing::ReadFile(dir_.File("archive.jsonl"));
  std::string archive = testing::ReadFile(dir_.File("archive.jsonl"));
  for (size_t at = 0; at < archive.size();) {
    size_t end = archive.find('\n', at);
    std::string line = archive.substr(at, end - at);
    at = end + 1;
    if (line.find(R"("kind":"timer")") == std::string::npos) {
      continue;
    }
    simdjson::dom::parser p;
    simdjson::dom::element e = p.parse(line);
    EXPECT_EQ(std::string(std::string_view(e["d"])), "t" + std::to_string(int64_t(e["n"])))
        << "each device's timer has its own data: " << line;
  }
  auto after = Call("GET", "/v1/things/t1/state?rule=watch");
  EXPECT_EQ(after.first, 404) << "nothing left pending: " << after.second;
  std::string metrics = Call("GET", "/metrics").second;
  EXPECT_NE(metrics.find("gnomon_rule_timers_pending 0"), std::string::npos) << metrics;
}

// GET .../state shows a rule's open windows with what they hold so far.
TEST_F(ShadowIntegrationTest, RestShowsTheOpenWindowsOfARule) {
  UseIngestRule(R"(
    return rule { name = "hourly", from = "devices/+/telemetry",
      windows = { h = { tumbling = "1h", of = "temp", agg = { "avg", "max" } } },
      handle = function(msg, ctx) end,
      on_window = function(w, ctx) end })");
  auto gnomon = StartGnomon();
  for (const char* t : {"10", "20.5"}) {
    ASSERT_EQ(
        Call("POST", "/v1/ingest/devices/w1/telemetry", std::string(R"({"temp":)") + t + "}").first,
        202);
  }
  auto r = Call("GET", "/v1/things/w1/state?rule=hourly");
  ASSERT_EQ(r.first, 200) << r.second;
  simdjson::dom::parser p;
  simdjson::dom::element e = p.parse(r.second);
  simdjson::dom::array open = e["windows"]["h"];
  ASSERT_EQ(open.size(), 1u) << r.second;
  simdjson::dom::element w = open.at(0);
  EXPECT_EQ(int64_t(w["count"]), 2) << r.second;
  EXPECT_EQ(double(w["avg"]), 15.25) << r.second;
  EXPECT_EQ(double(w["max"]), 20.5) << r.second;
  EXPECT_EQ(int64_t(w["end"]) - int64_t(w["start"]), 3600000) << r.second;
}

// A keyed window's key has a row of its own, shown at /v1/rules/{rule}/keys/{key}/state; the
// device of the same name keeps its own row, untouched and listed without the key's.
TEST_F(ShadowIntegrationTest, RestShowsAKeysWindowsApartFromTheDeviceOfThatName) {
  UseIngestRule(R"(
    return rule { name = "rooms", from = "devices/+/telemetry",
      windows = { room = { tumbling = "1h", of = "temp", agg = { "avg" }, key = "room" } },
      handle = function(msg, ctx) ctx.state.n = (ctx.state.n or 0) + 1 end,
      on_window = function(w, ctx) end })");
  auto gnomon = StartGnomon();
  ASSERT_EQ(Call("POST", "/v1/ingest/devices/v1/telemetry", R"({"temp":1})").first, 202);
  for (const char* t : {"50", "60"}) {
    ASSERT_EQ(Call("POST", "/v1/ingest/devices/a1/telemetry",
                   std::string(R"({"room":"v1","temp":)") + t + "}")
                  .first,
              202);
  }
  auto key = Call("GET", "/v1/rules/rooms/keys/v1/state");
  ASSERT_EQ(key.first, 200) << key.second;
  simdjson::dom::parser p;
  simdjson::dom::element e = p.parse(key.second);
  EXPECT_EQ(std::string_view(e["key"]), "v1") << key.second;
  EXPECT_EQ(simdjson::minify(e["state"]), "{}") << key.second;
  simdjson::dom::array open = e["windows"]["room"];
  ASSERT_EQ(open.size(), 1u) << key.second;
  EXPECT_EQ(int64_t(open.at(0)["count"]), 2) << key.second;
  EXPECT_EQ(double(open.at(0)["avg"]), 55) << key.second;
  // The device v1: its count, no window of the key's.
  auto device = Call("GET", "/v1/things/v1/state?rule=rooms");
  ASSERT_EQ(device.first, 200) << device.second;
  EXPECT_NE(device.second.find(R"("state":{"n":1})"), std::string::npos) << device.second;
  EXPECT_NE(device.second.find(R"("windows":{"room":[]})"), std::string::npos) << device.second;
  auto all = Call("GET", "/v1/things/v1/state");
  ASSERT_EQ(all.first, 200) << all.second;
  EXPECT_EQ(all.second.find("rooms/key"), std::string::npos) << all.second;
  EXPECT_NE(all.second.find(R"("rooms":{)"), std::string::npos) << all.second;
  EXPECT_EQ(Call("GET", "/v1/rules/rooms/keys/a%20b/state").first, 400);
  EXPECT_EQ(Call("GET", "/v1/rules/rooms/keys/nobody/state").first, 404);
  EXPECT_EQ(Call("GET", "/v1/rules/rooms/keys/a1/state").first, 404) << "a device is not a key";
}

// A state the store cannot take: the message is dead-lettered (state_not_stored), the state
// stays the last durable one, and once there is room counting goes on from it.
TEST_F(ShadowIntegrationTest, ARuleStateTheDiskCannotTakeDeadLettersTheMessageAndChangesNothing) {
  if (::geteuid() != 0) {
    GNOMON_REQUIRE_SERVER(false, "mounting a small tmpfs needs root");
  }
  testing::SmallDisk disk(dir_.File("data"), "16m");
  GNOMON_REQUIRE_SERVER(disk.mounted(), "mount -t tmpfs failed: " + disk.why());
  UseIngestRule(R"(
    return rule { name = "count", from = "devices/+/telemetry",
      windows = { h = { tumbling = "1h", time = "t", grace = "10h" } },
      on_window = function(w, ctx) end,
      handle = function(msg, ctx) ctx.state.n = (ctx.state.n or 0) + 1 end })",
                "  - { name: dl, type: file, path: dl.jsonl, linger_ms: 0 }\n",
                "dead_letter: { sink: dl }\n");
  auto gnomon = StartGnomon();
  auto post = [&](const char* t = "1") {
    return Call("POST", "/v1/ingest/devices/f1/telemetry", std::string(R"({"t":)") + t + "}")
        .first;
  };
  auto n = [&] { return Call("GET", "/v1/things/f1/state?rule=count").second; };
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(post(), 202);
  }
  EXPECT_NE(n().find(R"("state":{"n":3})"), std::string::npos) << n();
  disk.Fill();
  EXPECT_EQ(post("3600001"), 202) << "finished: dead-lettered (it would open a second hour)";
  std::string dl = testing::ReadFile(dir_.File("dl.jsonl"));
  EXPECT_NE(dl.find("state_not_stored"), std::string::npos) << dl;
  EXPECT_NE(dl.find("ctx.state of rule count could not be stored"), std::string::npos) << dl;
  EXPECT_NE(n().find(R"("state":{"n":3})"), std::string::npos) << n();
  std::string metrics = Call("GET", "/metrics").second;
  EXPECT_NE(metrics.find("gnomon_rule_state_writes_total{outcome=\"failed\"} 1"), std::string::npos)
      << metrics;
  // The refused copy's second window is not counted; the store's one is.
  EXPECT_NE(metrics.find("\ngnomon_rule_windows_open 1\n"), std::string::npos) << metrics;
  disk.Free();
  ASSERT_EQ(post(), 202);
  EXPECT_NE(n().find(R"("state":{"n":4})"), std::string::npos)
      << "on from the durable state: " << n();
}

}  // namespace
}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <sstream>

#include "gnomon/connectors/file.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/record.h"
#include "gnomon/core/source.h"
#include "tests/support/test_support.h"

namespace gnomon::connectors {
namespace {

struct Captured {
  Message m;
  std::string reason, error;
};

// An Ingest that records what a source hands it.
class RecordingIngest final : public Ingest {
 public:
  bool Submit(Message&& m, std::unique_ptr<AckHandle>) override {
    std::lock_guard lock(mu);
    got.push_back({std::move(m), "", ""});
    return true;
  }
  void Reject(Message&& m, std::unique_ptr<AckHandle>, std::string_view reason,
              std::string_view error) override {
    std::lock_guard lock(mu);
    got.push_back({std::move(m), std::string(reason), std::string(error)});
  }
  std::mutex mu;
  std::vector<Captured> got;
};

class NullReporter final : public DeliveryReporter {
 public:
  void Report(Record&, const Status&) override {}
};

std::vector<Captured> Replay(const std::string& lines, const std::string& device = "topic[2]") {
  testing::TempDir dir;
  dir.Write("in.jsonl", lines);
  Registry registry;
  RegisterFileConnector(registry);
  MetricsRegistry metrics;
  NullReporter reporter;
  FixedClock clock(42);
  PluginContext ctx{metrics, reporter, clock, dir.path(), dir.path(), "rec"};
  auto cfg = ParseYaml("{name: rec, type: file, path: in.jsonl, device: \"" + device + "\"}", "t");
  EXPECT_TRUE(cfg.ok());
  auto src = registry.source("file")->Create(*cfg, ctx);
  EXPECT_TRUE(src.ok()) << src.status().message();
  RecordingIngest ingest;
  EXPECT_TRUE((*src)->Start(ingest).ok());
  EXPECT_TRUE(testing::WaitFor([&] { return (*src)->Finished(); }));
  (*src)->Stop();
  return std::move(ingest.got);
}

TEST(FileSourceTest, ReadsPlainLinesWithRawPayloadText) {
  auto got = Replay(R"({"topic":"devices/d1/telemetry","payload":{"t":1, "s":"}{]["},"ts":5})"
                    "\n\n"
                    R"(  {"ts": 6, "payload": [1,2] , "topic": "devices/d2/x" }  )"
                    "\n");
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].reason, "");
  EXPECT_EQ(got[0].m.topic, "devices/d1/telemetry");
  EXPECT_EQ(got[0].m.device, "d1");
  EXPECT_EQ(got[0].m.payload, R"({"t":1, "s":"}{]["})");  // exactly as recorded
  EXPECT_EQ(got[0].m.ts_ms, 5);
  EXPECT_EQ(got[1].m.payload, "[1,2]");
  EXPECT_EQ(got[1].m.device, "d2");
  EXPECT_EQ(got[1].m.ts_ms, 6);
}

TEST(FileSourceTest, EscapesHeadersAndKeysTakeTheFullParser) {
  auto got = Replay(
      R"({"topic":"devices\/d\u00e9\/t","raw":"caf\u00e9 \"x\"","key":"k1","headers":{"h":"v"}})"
      "\n",
      "key");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].reason, "") << got[0].error;
  EXPECT_EQ(got[0].m.topic, "devices/dé/t");
  EXPECT_EQ(got[0].m.payload, "café \"x\"");
  EXPECT_EQ(got[0].m.device, "k1");
  EXPECT_EQ(got[0].m.headers, (Headers{{"h", "v"}}));
  EXPECT_EQ(got[0].m.ts_ms, 42);  // no ts: the clock
}

TEST(FileSourceTest, BadLinesAreRejectedWithFileLineAndReason) {
  auto got = Replay(
      "not json\n"
      R"({"topic":"a/b"})" "\n"
      R"({"payload":{}})" "\n"
      R"({"topic":"a/b","payload":{},"colour":1})" "\n"
      R"({"topic":"a/+","payload":{}})" "\n"
      R"({"topic":"a/b","payload":{},"ts":1.5})" "\n"
      R"({"topic":"a","payload":{}})" "\n"
      R"({"topic":"a/b","payload":{} } trailing)" "\n");
  ASSERT_EQ(got.size(), 8u);
  const char* expect[] = {":1:", "missing \"payload\"", "missing \"topic\"", "unknown field \"colour\"",
                          "wildcard", "\"ts\" must be an integer", "has no level 2", ":8:"};
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NE(got[i].reason, "") << i;
    EXPECT_NE(got[i].error.find(expect[i]), std::string::npos) << i << ": " << got[i].error;
  }
  EXPECT_EQ(got[6].reason, "no_device");
  EXPECT_EQ(got[0].reason, "bad_record");
}

TEST(FileSourceTest, OversizePayloadIsRejected) {
  std::string big = "{\"topic\":\"a/b\",\"payload\":\"" + std::string(2 << 20, 'x') + "\"}\n";
  auto got = Replay(big);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].reason, "oversize");
}

}  // namespace
}  // namespace gnomon::connectors

#include <simdjson.h>

#include "tests/support/random_json.h"

namespace gnomon::connectors {
namespace {

// Lines in every shape the recording format allows (key order, spacing, escapes, payload or
// raw): the fast scanner and the full parser must agree with what the line says.
TEST(FileSourceTest, RandomLinesReadAsTheirJsonSays) {
  testing::RandomJson gen(99);
  std::mt19937 rng(7);
  const char* topics[] = {"devices/d1/telemetry", "devices\\/d2\\/t", "devices/d\\u00e93/x",
                          "devices/\\\"q\\\"/y"};
  std::string lines;
  for (int i = 0; i < 2000; ++i) {
    std::string topic = std::string("\"topic\":\"") + topics[rng() % 4] + "\"";
    std::string body = rng() % 4 == 0 ? "\"raw\":\"r\\\\a w\\n" + std::to_string(i) + "\""
                                      : "\"payload\":" + gen.Doc();
    std::string ts = "\"ts\":" + std::to_string(1000 + i);
    std::string sp = rng() % 2 ? " " : "";
    std::string parts[] = {topic, body, ts};
    std::shuffle(std::begin(parts), std::end(parts), rng);
    lines += "{" + sp + parts[0] + "," + sp + parts[1] + sp + "," + parts[2] + sp + "}\n";
  }
  auto got = Replay(lines);
  ASSERT_EQ(got.size(), 2000u);
  simdjson::dom::parser p, q;
  std::istringstream in(lines);
  std::string line;
  size_t i = 0;
  while (std::getline(in, line)) {
    simdjson::dom::element e;
    ASSERT_EQ(p.parse(line).get(e), simdjson::SUCCESS);
    const Captured& c = got[i++];
    ASSERT_EQ(c.reason, "") << line << ": " << c.error;
    EXPECT_EQ(c.m.topic, std::string_view(e["topic"])) << line;
    EXPECT_EQ(c.m.ts_ms, int64_t(e["ts"])) << line;
    simdjson::dom::element payload;
    if (e["raw"].get(payload) == simdjson::SUCCESS) {
      EXPECT_EQ(c.m.payload, std::string_view(payload)) << line;
    } else {
      ASSERT_EQ(e["payload"].get(payload), simdjson::SUCCESS);
      simdjson::dom::element mine;
      ASSERT_EQ(q.parse(c.m.payload).get(mine), simdjson::SUCCESS) << c.m.payload;
      EXPECT_EQ(simdjson::minify(mine), simdjson::minify(payload)) << line;
    }
  }
}

}  // namespace
}  // namespace gnomon::connectors

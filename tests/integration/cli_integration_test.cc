// SPDX-License-Identifier: Apache-2.0
// The gnomon binary as users run it: exit codes, messages, signals, docs generation.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "tests/support/test_support.h"

namespace gnomon {
namespace {

using testing::RunCommand;
using testing::TempDir;

// `gnomon replay -c g.yaml --input in.jsonl` in `dir`; returns the exit code.
int Replay(const TempDir& dir, std::string* out, std::string* err, bool dry_run = false) {
  std::vector<std::string> argv = {GNOMON_BINARY, "replay", "-c", dir.File("g.yaml"), "--input",
                                   dir.File("in.jsonl")};
  if (dry_run) {
    argv.emplace_back("--dry-run");
  }
  return RunCommand(argv, out, err);
}

TEST(CliTest, VersionAndUsage) {
  std::string out, err;
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "version"}, &out), 0);
  EXPECT_EQ(out.rfind("gnomon ", 0), 0u);
  EXPECT_EQ(RunCommand({GNOMON_BINARY}, &out, &err), 2);
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "run"}, &out, &err), 2);
  EXPECT_NE(err.find("--config"), std::string::npos) << err;
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "frobnicate"}, &out, &err), 2);
}

TEST(CliTest, CheckReportsBadConfigWithFileLineAndKey) {
  TempDir dir;
  dir.Write("g.yaml", "workers: 2\nsinks:\n  - name: x\n    type: file\n    path: o.jsonl\n"
                      "    fsync: maybe\n");
  std::string out, err;
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "check", "-c", dir.File("g.yaml")}, &out, &err), 1);
  EXPECT_NE(err.find(dir.File("g.yaml") + ":6: sinks[0].fsync: must be true or false (got maybe)"),
            std::string::npos)
      << err;
}

TEST(CliTest, CheckValidatesThingModelsAndEmitsTheirSchemas) {
  TempDir dir;
  dir.Write("g.yaml", "models: [models/*.json]\n");
  dir.Write("models/a.json", R"({"modelId":"acme:a","properties":[
      {"identifier":"t","dataType":{"type":"float","specs":{"min":1,"max":0}}}]})");
  std::string out, err;
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "check", "-c", dir.File("g.yaml")}, &out, &err), 1);
  EXPECT_NE(err.find("a.json: properties[0].dataType.specs.min: must be <= max (1 > 0)"),
            std::string::npos)
      << err;
  dir.Write("models/a.json", R"({"modelId":"acme:a","properties":[
      {"identifier":"t","dataType":{"type":"float","specs":{"min":0,"max":1}}}]})");
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "check", "-c", dir.File("g.yaml"), "--emit-schemas",
                        dir.File("schemas")},
                       &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("1 models"), std::string::npos) << out;
  std::string schema = testing::ReadFile(dir.File("schemas/acme_a.schema.json"));
  EXPECT_NE(schema.find(R"("t":{"type":"number","minimum":0,"maximum":1})"), std::string::npos)
      << schema;
}

TEST(CliTest, CheckCompilesRules) {
  TempDir dir;
  dir.Write("g.yaml", "rules: [r.lua]\n");
  dir.Write("r.lua", "return rule { name = 'r', from = 'a/#', handle = function(msg, ctx) end }");
  std::string out, err;
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "check", "-c", dir.File("g.yaml")}, &out, &err), 0) << err;
  EXPECT_NE(out.find("ok (0 sources, 0 sinks, 1 rules, 0 models)"), std::string::npos) << out;
  dir.Write("r.lua", "return rule { name = 'r', from = 'a/#', handle = function(msg, ctx) end");
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "check", "-c", dir.File("g.yaml")}, &out, &err), 1);
  EXPECT_NE(err.find("r.lua:1:"), std::string::npos) << err;
}

TEST(CliTest, TestCommandRunsRuleTestsAndCheckRefusesFailingOnes) {
  TempDir dir;
  dir.Write("rules/r.lua", R"(return rule { name = "r", from = "a/+",
    handle = function(msg, ctx) ctx.emit("out", { v = msg.payload.v }) end,
    tests = { { name = "doubles", input = { topic = "a/b", payload = { v = 2 } },
                expect = { emit = { out = { { v = 4 } } } } } } })");
  dir.Write("g.yaml", "sinks: [{name: out, type: file, path: o.jsonl}]\nrules: [rules/*.lua]\n");
  std::string out, err;
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "test", dir.File("rules"), "--junit", dir.File("j.xml")},
                       &out, &err),
            1);
  EXPECT_NE(out.find("FAIL r › doubles"), std::string::npos) << out;
  EXPECT_NE(out.find("0 passed, 1 failed"), std::string::npos) << out;
  EXPECT_NE(testing::ReadFile(dir.File("j.xml")).find("failures=\"1\""), std::string::npos);
  // `check` (and `run`) refuse to start with failing rule tests.
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "check", "-c", dir.File("g.yaml")}, &out, &err), 1);
  EXPECT_NE(err.find("rule tests failed"), std::string::npos) << err;
  dir.Write("rules/r.lua", R"(return rule { name = "r", from = "a/+",
    handle = function(msg, ctx) ctx.emit("out", { v = msg.payload.v * 2 }) end,
    tests = { { name = "doubles", input = { topic = "a/b", payload = { v = 2 } },
                expect = { emit = { out = { { v = 4 } } } } } } })");
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "test", "-c", dir.File("g.yaml"), dir.File("rules")}, &out,
                       &err),
            0)
      << out << err;
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "check", "-c", dir.File("g.yaml")}, &out, &err), 0) << err;
}

TEST(CliTest, RunStopsOnSigtermAndExitsZero) {
  TempDir dir;
  dir.Write("g.yaml", "data_dir: data\nsources: [{name: f, type: file, path: in.jsonl}]\n");
  dir.Write("in.jsonl", "{\"topic\":\"a/b\",\"payload\":{}}\n");
  testing::Process p({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")});
  ASSERT_TRUE(testing::WaitFor([&] { return p.Stderr().find("file source finished") != std::string::npos; }))
      << p.Stderr();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(), 0) << p.Stderr();
  EXPECT_NE(p.Stderr().find("\"msg\":\"gnomon stopped\",\"in\":\"1\",\"done\":\"1\""),
            std::string::npos)
      << p.Stderr();
}

TEST(CliTest, DropReasonsAreCountedLoggedAtDebugAndShownByTheRulesApi) {
  TempDir dir;
  dir.Write("rules/r.lua", R"(return rule { name = 'r', from = 'a/+',
    handle = function(msg, ctx)
      if msg.payload.t < 10 then return ctx.drop("too cold: " .. msg.payload.t) end
      ctx.emit('out', msg.payload)
    end })");
  dir.Write("in.jsonl",
            "{\"topic\":\"a/d1\",\"payload\":{\"t\":1}}\n"
            "{\"topic\":\"a/d2\",\"payload\":{\"t\":20}}\n"
            "{\"topic\":\"a/d3\",\"payload\":{\"t\":3}}\n");
  int port = testing::FreePort();
  dir.Write("g.yaml",
            "data_dir: data\nlog: { level: debug }\n"
            "sources: [{name: f, type: file, path: in.jsonl}]\n"
            "sinks: [{name: out, type: file, path: o.jsonl}]\n"
            "rules: [rules/*.lua]\napi: { listen: \"127.0.0.1:" +
                std::to_string(port) + "\" }\n");
  testing::Process p({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")});
  ASSERT_TRUE(testing::WaitFor([&] {
    return p.Stderr().find("file source finished") != std::string::npos;
  })) << p.Stderr();
  httplib::Client cli("127.0.0.1", port);
  std::string body;
  ASSERT_TRUE(testing::WaitFor([&] {
    auto res = cli.Get("/v1/rules/r");
    body = res ? res->body : "";
    return body.find("\"filtered\":2") != std::string::npos;
  })) << body;
  EXPECT_NE(body.find(R"("last_drop":{"reason":"too cold: 3","device":"d3","topic":"a/d3","ts":)"),
            std::string::npos)
      << body;
  std::string log = p.Stderr();
  EXPECT_NE(log.find(R"("msg":"rule dropped the message")"), std::string::npos) << log;
  EXPECT_NE(log.find(R"("reason":"too cold: 1")"), std::string::npos) << log;
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(), 0) << p.Stderr();
}

TEST(CliTest, RulesApiReloadsOnRequestSignalAndFileChange) {
  TempDir dir;
  auto rule = [](int n) {
    return "return rule { name = 'r', from = 'a/+', handle = function(msg, ctx) ctx.emit('out', " +
           std::to_string(n) + ") end }";
  };
  dir.Write("rules/r.lua", rule(1));
  int port = testing::FreePort();
  dir.Write("g.yaml", "data_dir: data\nsinks: [{name: out, type: file, path: o.jsonl}]\n"
                      "rules: [rules/*.lua]\napi: { listen: \"127.0.0.1:" + std::to_string(port) +
                      "\", tokens: [s3cret] }\n");
  testing::Process p({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")});
  httplib::Client cli("127.0.0.1", port);
  httplib::Headers auth = {{"Authorization", "Bearer s3cret"}};
  ASSERT_TRUE(testing::WaitFor([&] { return cli.Get("/healthz") != nullptr; })) << p.Stderr();
  auto version = [&] {
    auto res = cli.Get("/v1/rules", auth);
    if (!res) {
      return std::string("none");
    }
    size_t at = res->body.find("\"ruleset_version\":");
    return res->body.substr(at + 18, res->body.find(',', at) - at - 18);
  };

  auto res = cli.Get("/v1/rules");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_NE(res->body.find("\"error\":\"UNAUTHORIZED\""), std::string::npos);
  res = cli.Get("/v1/rules/r", auth);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->body.find("\"name\":\"r\""), std::string::npos) << res->body;
  EXPECT_NE(res->body.find("\"state\":\"running\""), std::string::npos) << res->body;
  EXPECT_EQ(cli.Get("/v1/rules/nope", auth)->status, 404);
  EXPECT_EQ(version(), "1");

  res = cli.Post("/v1/rules/reload", auth, "", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(version(), "2");

  dir.Write("rules/r.lua", "return rule { name = 'r', from = 'a/+', handle = ");  // broken
  res = cli.Post("/v1/rules/reload", auth, "", "application/json");
  EXPECT_EQ(res->status, 422);
  EXPECT_NE(res->body.find("r.lua:1:"), std::string::npos) << res->body;
  EXPECT_EQ(version(), "2");  // the running rules stay

  dir.Write("rules/r.lua", rule(3));  // the watcher picks it up
  EXPECT_TRUE(testing::WaitFor([&] { return version() == "3"; })) << p.Stderr();
  p.Signal(SIGHUP);
  EXPECT_TRUE(testing::WaitFor([&] { return version() == "4"; })) << p.Stderr();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(), 0) << p.Stderr();
}

TEST(CliTest, WatchdogInterruptsSlowRulesAndExitsOnAStuckJitRule) {
  TempDir dir;
  dir.Write("g.yaml", "data_dir: data\nrules: [r.lua]\n");
  dir.Write("in.jsonl", "{\"topic\":\"a/b\",\"payload\":{}}\n");
  // Interpreted, with a huge instruction budget: the wall-clock limit interrupts it.
  dir.Write("r.lua", "return rule { name = 'r', from = 'a/+', "
                     "limits = { instructions = 1e15, wall_ms = 100 }, "
                     "handle = function(msg, ctx) while true do end end }");
  std::string out, err;
  EXPECT_EQ(Replay(dir, &out, &err),
            0)
      << err;
  EXPECT_NE(testing::ReadFile(dir.File("data/dead-letter.jsonl")).find("wall-clock limit of 100 ms"),
            std::string::npos);
  // Compiled (jit = true): nothing can interrupt a compiled endless loop; gnomon exits 70.
  dir.Write("r.lua", "return rule { name = 'r', from = 'a/+', jit = true, "
                     "limits = { wall_ms = 100 }, "
                     "handle = function(msg, ctx) local n = 0 while true do n = n + 1 end end }");
  EXPECT_EQ(Replay(dir, &out, &err),
            70)
      << err;
  EXPECT_NE(err.find("stuck in compiled code"), std::string::npos) << err;
  // The poison message was recorded before the exit; run again, it is dead-lettered as
  // rule_timeout instead of sticking the worker again (with Kafka it would come back forever).
  EXPECT_NE(testing::ReadFile(dir.File("data/poison.jsonl")).find("\"rule\":\"r\""),
            std::string::npos);
  dir.Write("in.jsonl", "{\"topic\":\"a/b\",\"payload\":{}}\n{\"topic\":\"a/c\",\"payload\":{}}\n");
  EXPECT_EQ(Replay(dir, &out, &err),
            70)
      << err;  // a/c is a new message: it sticks the rule too, and is recorded in turn
  EXPECT_EQ(Replay(dir, &out, &err),
            0)
      << err;
  std::string dl = testing::ReadFile(dir.File("data/dead-letter.jsonl"));
  EXPECT_NE(dl.find("\"reason\":\"rule_timeout\""), std::string::npos) << dl;
  EXPECT_NE(dl.find("\"topic\":\"a/c\""), std::string::npos) << dl;
}

// An interpreted rule never makes gnomon exit: a pattern match over a 100 KB payload (a C
// function, where LuaJIT's own matcher had no hook) fails its call; the good messages around it
// are processed.
TEST(CliTest, APatternOverALargePayloadIsDeadLetteredAndTheRestGoesOn) {
  TempDir dir;
  dir.Write("g.yaml", "data_dir: data\nsinks: [{name: out, type: file, path: o.jsonl}]\n"
                      "rules: [r.lua]\n");
  dir.Write("r.lua", "return rule { name = 'r', from = 'a/+', limits = { wall_ms = 200 }, "
                     "handle = function(msg, ctx) local k, v = msg.raw:match('(.-)%s*=%s*(.-);') "
                     "ctx.emit('out', { k = k or 'none' }) end }");
  std::string lines;
  for (int i = 0; i < 5; ++i) {
    lines += "{\"topic\":\"a/d" + std::to_string(i) + "\",\"raw\":\"x=1;\"}\n";
    if (i == 2) {
      lines += "{\"topic\":\"a/poison\",\"raw\":\"" + std::string(100000, 'a') + "\"}\n";
    }
  }
  dir.Write("in.jsonl", lines);
  std::string out, err;
  EXPECT_EQ(Replay(dir, &out, &err),
            0)
      << err;
  std::string dl = testing::ReadFile(dir.File("data/dead-letter.jsonl"));
  EXPECT_NE(dl.find("\"reason\":\"rule_timeout\""), std::string::npos) << dl;
  EXPECT_NE(dl.find("\"device\":\"poison\""), std::string::npos) << dl;
  std::string o = testing::ReadFile(dir.File("o.jsonl"));
  EXPECT_EQ(std::count(o.begin(), o.end(), '\n'), 5) << o;
}

// Top-level code runs under a load budget: check and reload answer; SIGTERM ends check and run.
TEST(CliTest, ATopLevelEndlessLoopFailsCheckAndReloadAndSignalsStillWork) {
  TempDir dir;
  int port = testing::FreePort();
  dir.Write("g.yaml", "data_dir: data\nrules: [rules/*.lua]\napi: { listen: \"127.0.0.1:" +
                          std::to_string(port) + "\", tokens: [t] }\nwatch_rules: false\n");
  dir.Write("rules/r.lua", "return rule { name = 'r', from = 'a/+', handle = function() end }");
  testing::Process p({GNOMON_BINARY, "run", "-c", dir.File("g.yaml")});
  httplib::Client cli("127.0.0.1", port);
  httplib::Headers auth = {{"Authorization", "Bearer t"}};
  ASSERT_TRUE(testing::WaitFor([&] { return cli.Get("/healthz") != nullptr; })) << p.Stderr();
  dir.Write("rules/r.lua", "while true do end\n"
                           "return rule { name = 'r', from = 'a/+', handle = function() end }");
  std::string out, err;
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "check", "-c", dir.File("g.yaml")}, &out, &err), 1);
  EXPECT_NE(err.find("r.lua:1: top-level code ran over its instruction budget"), std::string::npos)
      << err;
  cli.set_read_timeout(60, 0);
  auto res = cli.Post("/v1/rules/reload", auth, "", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 422) << res->body;
  EXPECT_NE(res->body.find("instruction budget"), std::string::npos) << res->body;
  // A compiled rule whose test loops: its tests run interpreted, so check and reload end with
  // the limit instead of hanging in a trace no hook can stop.
  dir.Write("rules/r.lua",
            "return rule { name = 'r', from = 'a/+', jit = true, handle = function(msg, ctx)\n"
            "  while msg.payload.loop do end end,\n"
            "  tests = { { name = 'loops', input = { topic = 'a/b', payload = { loop = true } },"
            " expect = { drop = false } } } }");
  testing::Process jit_check({GNOMON_BINARY, "check", "-c", dir.File("g.yaml")});
  EXPECT_EQ(jit_check.Wait(std::chrono::milliseconds(60000)), 1) << jit_check.Stderr();
  EXPECT_NE(jit_check.Stderr().find("instruction limit"), std::string::npos) << jit_check.Stderr();
  res = cli.Post("/v1/rules/reload", auth, "", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 422) << res->body;
  EXPECT_NE(res->body.find("instruction limit"), std::string::npos) << res->body;
  ASSERT_TRUE(cli.Get("/healthz"));
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(), 0) << p.Stderr();
  // check and test take signals: a SIGTERM ends them (the default action), mid-load included.
  dir.Write("rules/r.lua", "local t = os.clock() while os.clock() - t < 3600 do end\n"
                           "return rule { name = 'r', from = 'a/+', handle = function() end }");
  testing::Process check({GNOMON_BINARY, "check", "-c", dir.File("g.yaml")});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  check.Signal(SIGTERM);
  EXPECT_EQ(check.Wait(std::chrono::milliseconds(5000)), 128 + SIGTERM);
  testing::Process test({GNOMON_BINARY, "test", dir.File("rules")});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  test.Signal(SIGINT);
  EXPECT_EQ(test.Wait(std::chrono::milliseconds(5000)), 128 + SIGINT);
}

TEST(CliTest, DeviceIdsAreValidatedAndFilesArePrivate) {
  TempDir dir;
  dir.Write("g.yaml", "data_dir: data\nsinks: [{name: out, type: file, path: o.jsonl}]\n"
                      "sources: [{name: f, type: file, path: in.jsonl, device: payload.id}]\n"
                      "rules: [r.lua]\n");
  dir.Write("r.lua", "return rule { name = 'r', from = 'a/+', handle = function(msg, ctx) "
                     "ctx.emit('out', 'devices/' .. msg.device .. '/cmd') end }");
  dir.Write("in.jsonl",
            "{\"topic\":\"a/b\",\"payload\":{\"id\":\"lock-1\"}}\n"
            "{\"topic\":\"a/b\",\"payload\":{\"id\":\"lock-1/cmd/x\"}}\n"
            "{\"topic\":\"a/b\",\"payload\":{\"id\":\"\"}}\n"
            "{\"topic\":\"a/b\",\"payload\":{\"id\":\"$SYS/x\"}}\n"
            "{\"topic\":\"a/b\",\"payload\":{\"id\":\"a\\u0001b\"}}\n"
            // A key held twice names no device (lock-1 is not reached through it).
            "{\"topic\":\"a/b\",\"payload\":{\"id\":\"lock-1\",\"id\":\"lock-2\"}}\n");
  std::string out, err;
  EXPECT_EQ(Replay(dir, &out, &err, /*dry_run=*/true),
            0)
      << err;
  // Only lock-1 reached the rule: no command went to another device's topics.
  EXPECT_NE(out.find("\"record\":\"devices/lock-1/cmd\""), std::string::npos) << out;
  EXPECT_EQ(out.find("\"record\":\"devices/lock-1/cmd/x/cmd"), std::string::npos) << out;
  EXPECT_EQ(out.find("\"record\":\"devices/$SYS"), std::string::npos) << out;
  EXPECT_EQ(Replay(dir, &out, &err),
            0)
      << err;
  std::string dl = testing::ReadFile(dir.File("data/dead-letter.jsonl"));
  size_t bad = 0;
  for (size_t at = dl.find("\"reason\":\"bad_device\""); at != std::string::npos;
       at = dl.find("\"reason\":\"bad_device\"", at + 1)) {
    ++bad;
  }
  EXPECT_EQ(bad, 4u) << dl;
  EXPECT_NE(dl.find("device id 'lock-1/cmd/x' is not valid"), std::string::npos) << dl;
  EXPECT_NE(dl.find("a\\\\x01b"), std::string::npos) << dl;
  EXPECT_NE(dl.find(R"(payload holds the key \"id\" of payload.id more than once)"),
            std::string::npos)
      << dl;
  // Private by default: data_dir 0700, what is in it 0600.
  struct stat st {};
  ASSERT_EQ(::stat(dir.File("data").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat(dir.File("data/dead-letter.jsonl").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // A pattern of the operator's own.
  dir.Write("g.yaml", testing::ReadFile(dir.File("g.yaml")) + "device_id_pattern: \"[a-z0-9/-]+\"\n");
  EXPECT_EQ(Replay(dir, &out, &err, /*dry_run=*/true),
            0)
      << err;
  EXPECT_NE(out.find("\"record\":\"devices/lock-1/cmd/x/cmd"), std::string::npos) << out;
}

TEST(CliTest, ConfigurationDocsAreCurrent) {
  std::string out;
  ASSERT_EQ(RunCommand({GNOMON_BINARY, "config-docs"}, &out), 0);
  std::string committed = testing::ReadFile(std::string(GNOMON_SOURCE_DIR) + "/docs/configuration.md");
  EXPECT_EQ(out, committed)
      << "docs/configuration.md is stale: run `build/gnomon config-docs > docs/configuration.md`";
}

TEST(CliTest, ExamplesPassCheckAndTheirTests) {
  std::string out, err;
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "test", std::string(GNOMON_SOURCE_DIR) + "/examples/quickstart/rules"},
                       &out, &err),
            0)
      << out << err;
  EXPECT_NE(out.find("3 passed, 0 failed"), std::string::npos) << out;
  EXPECT_EQ(RunCommand({GNOMON_BINARY, "test",
                        std::string(GNOMON_SOURCE_DIR) + "/examples/thermostat/rules"},
                       &out, &err),
            0)
      << out << err;
  EXPECT_NE(out.find("4 passed, 0 failed"), std::string::npos) << out;
  for (const char* cfg : {"/examples/quickstart/gnomon.yaml", "/examples/thermostat/gnomon.yaml"}) {
    std::string out, err;
    EXPECT_EQ(RunCommand({GNOMON_BINARY, "check", "-c", std::string(GNOMON_SOURCE_DIR) + cfg},
                         &out, &err),
              0)
        << cfg << ": " << err;
  }
}

// Bad input cannot fill the disk: dead letters are cut, rotated and kept off the reserve the
// shadow store needs. Before, six 1 MB bad payloads filled an 8 MB data_dir and every shadow
// write failed after them.
TEST(CliTest, DeadLettersAreBoundedAndCannotStarveShadowWrites) {
  testing::TempDir dir;
  testing::SmallDisk disk(dir.File("data"), "8m");
  GNOMON_REQUIRE_SERVER(disk.mounted(), "mount -t tmpfs failed: " + disk.why());
  dir.Write("g.yaml", "data_dir: data\nshadows: {}\nrules: [r.lua]\n"
                      "dead_letter: { max_mb: 1, keep: 1, disk_reserve_mb: 2 }\n");
  dir.Write("r.lua", "return rule { name = 'r', from = 'a/+', handle = function(msg, ctx) "
                     "if msg.payload.bad then error('bad input') end "
                     "ctx.shadow:report({ n = msg.payload.n }) end }");
  std::string big(1 << 20, 'x');
  std::string lines;
  for (int i = 0; i < 40; ++i) {
    lines += "{\"topic\":\"a/bad" + std::to_string(i) + "\",\"payload\":{\"bad\":true,\"pad\":\"" +
             big + "\"}}\n";
    lines += "{\"topic\":\"a/good" + std::to_string(i) + "\",\"payload\":{\"n\":" +
             std::to_string(i) + "}}\n";
  }
  dir.Write("in.jsonl", lines);
  std::string out, err;
  EXPECT_EQ(Replay(dir, &out, &err),
            0)
      << err;
  // Every good message's shadow write is durable; only the bad ones are dead-lettered.
  EXPECT_NE(err.find("replayed 80 messages"), std::string::npos) << err;
  EXPECT_NE(err.find(": 40 done, 40 dead-lettered"), std::string::npos) << err;
  std::string dl = testing::ReadFile(dir.File("data/dead-letter.jsonl")) +
                   testing::ReadFile(dir.File("data/dead-letter.jsonl.1"));
  EXPECT_NE(dl.find("\"payload_truncated\":true,\"payload_bytes\":1048"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir.File("data/dead-letter.jsonl.2")));
  std::error_code ec;
  EXPECT_LE(std::filesystem::file_size(dir.File("data/dead-letter.jsonl"), ec), 2u << 20);
}

TEST(CliTest, OneDeviceCannotFloodTheDeadLetterFile) {
  testing::TempDir dir;
  dir.Write("g.yaml", "data_dir: data\nrules: [r.lua]\n"
                      "dead_letter: { per_device_per_s: 0.001, burst: 20 }\n");
  dir.Write("r.lua", "return rule { name = 'r', from = 'a/+', handle = function(msg, ctx) "
                     "error('always') end }");
  std::string lines;
  for (int i = 0; i < 200; ++i) {
    lines += "{\"topic\":\"a/noisy\",\"payload\":{}}\n";
  }
  lines += "{\"topic\":\"a/quiet\",\"payload\":{}}\n";
  dir.Write("in.jsonl", lines);
  std::string out, err;
  EXPECT_EQ(Replay(dir, &out, &err),
            0)
      << err;
  EXPECT_NE(err.find(": 0 done, 201 dead-lettered"), std::string::npos) << err;  // all counted
  auto written = testing::ReadLines(dir.File("data/dead-letter.jsonl"));
  EXPECT_EQ(written.size(), 21u);  // the noisy device's burst, and the quiet one's
  EXPECT_EQ(std::count_if(written.begin(), written.end(),
                          [](const std::string& l) {
                            return l.find("\"device\":\"quiet\"") != std::string::npos;
                          }),
            1);
}

}  // namespace
}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
// gnomon: run | check | replay | test | restore | version
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>

#include "gnomon/connectors/builtin.h"
#include "gnomon/connectors/kafka.h"
#include "gnomon/core/log.h"
#include "gnomon/core/path.h"
#include "gnomon/engine/engine.h"
#include "gnomon/rules/testing.h"
#include "gnomon/shadow/document.h"
#include "gnomon/shadow/store.h"

namespace {

using gnomon::engine::AppConfig;
using gnomon::engine::Engine;
using gnomon::engine::EngineOptions;
using gnomon::engine::Mode;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

void ApplyLogLevel(const AppConfig& app) {
  const gnomon::ConfigValue* log = app.root.Get("log");
  std::string level = log != nullptr ? log->GetString("level", "info") : "info";
  using gnomon::log::Level;
  gnomon::log::SetLevel(level == "debug"  ? Level::kDebug
                        : level == "warn" ? Level::kWarn
                        : level == "error" ? Level::kError
                                           : Level::kInfo);
}

// A cluster's ingress topic must have the cluster's partition count, or devices would be
// consumed from other partitions than the ones they are routed to. A missing topic is created
// with the right count. kUnavailable: the cluster could not be asked.
gnomon::Status CheckClusterTopics(const AppConfig& app, int timeout_ms) {
  if (!app.cluster.enabled || app.cluster.connection == nullptr) {
    return {};
  }
  // The change log is checked as ingress is: a device's shadow must be in the partition of the
  // same number (created by the first instance with shadows).
  std::vector<std::string> topics = {app.cluster.IngressTopic()};
  if (app.shadows.enabled) {
    topics.push_back(app.cluster.ChangelogTopic());
  }
  for (const std::string& topic : topics) {
    GNOMON_ASSIGN_OR_RETURN(int32_t n, gnomon::connectors::KafkaTopicPartitions(
                                           *app.cluster.connection, topic, timeout_ms));
    if (n != 0 && n != app.cluster.partitions) {
      return gnomon::FailedPrecondition(fmt::format(
          "cluster.partitions is {} but topic {} has {} partitions: devices would be routed to "
          "partitions other instances do not read them from. Set cluster.partitions to {}, or "
          "give the cluster another name (a partition count is fixed for a cluster's life)",
          app.cluster.partitions, topic, n, n));
    }
  }
  return {};
}

int Check(const std::string& config, const gnomon::Registry& registry,
          const std::string& emit_schemas) {
  auto app = gnomon::engine::LoadAppConfig(config, registry);
  if (!app.ok()) {
    std::fprintf(stderr, "%s\n", app.status().message().c_str());
    return kExitFailed;
  }
  if (!emit_schemas.empty()) {
    // One JSON Schema per thing model, for the topics and tables the models shape.
    std::error_code ec;
    std::filesystem::create_directories(emit_schemas, ec);
    for (const auto& m : app->models) {
      std::string name = m->id();
      std::replace_if(name.begin(), name.end(), [](char c) { return !std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_'; }, '_');
      std::string path = emit_schemas + "/" + name + ".schema.json";
      std::FILE* f = std::fopen(path.c_str(), "w");
      if (f == nullptr) {
        std::fprintf(stderr, "%s: cannot write\n", path.c_str());
        return kExitFailed;
      }
      std::string schema = m->JsonSchema() + "\n";
      std::fwrite(schema.data(), 1, schema.size(), f);
      std::fclose(f);
      std::printf("wrote %s\n", path.c_str());
    }
  }
  if (gnomon::Status st = CheckClusterTopics(*app, 5000); !st.ok()) {
    if (st.code() != gnomon::StatusCode::kUnavailable) {
      std::fprintf(stderr, "%s: cluster: %s\n", config.c_str(), st.message().c_str());
      return kExitFailed;
    }
    app->warnings.push_back("cluster: the ingress topic's partitions were not checked: " +
                            st.message());
  }
  for (const auto& w : app->warnings) {
    std::fprintf(stderr, "%s: warning: %s\n", config.c_str(), w.c_str());
  }
  std::printf("%s: ok (%zu sources, %zu sinks, %zu rules, %zu models)\n", config.c_str(),
              app->sources.size(), app->sinks.size(), app->rules->rules().size(),
              app->models.size());
  return kExitOk;
}

int Test(const std::vector<std::string>& paths, const std::string& junit, const std::string& config,
         const std::vector<std::string>& libs, bool verbose, const gnomon::Registry& registry) {
  gnomon::rules::TestOptions options;
  options.lib_dirs = libs;
  if (!config.empty()) {
    // The config's sinks are the only ones rules may emit to.
    auto root = gnomon::LoadYamlFile(config);
    if (!root.ok()) {
      std::fprintf(stderr, "%s\n", root.status().message().c_str());
      return kExitFailed;
    }
    if (const gnomon::ConfigValue* sinks = root->Get("sinks")) {
      for (const auto& s : sinks->items()) {
        options.sinks.push_back(s.GetString("name"));
      }
    }
    std::string base = std::filesystem::path(config).parent_path().string();
    for (const auto& dir : root->GetStrings("rule_libs")) {
      options.lib_dirs.push_back(gnomon::ResolvePath(base.empty() ? "." : base, dir));
    }
  }
  auto report = gnomon::rules::RunRuleTests(paths, options);
  if (!report.ok()) {
    std::fprintf(stderr, "%s\n", report.status().message().c_str());
    return kExitFailed;
  }
  std::fputs(report->Text(verbose).c_str(), stdout);
  if (!junit.empty()) {
    std::FILE* f = std::fopen(junit.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "%s: cannot write\n", junit.c_str());
      return kExitFailed;
    }
    std::fputs(report->JUnitXml().c_str(), f);
    std::fclose(f);
  }
  return report->failed() == 0 ? kExitOk : kExitFailed;
}

// Runs until SIGTERM/SIGINT (kRun) or until the replay input is done.
// Restores the shadow store from the change log (the latest record per shadow; tombstones drop
// it). With `only_if_empty`, only when the store holds no shadow: the first step of moving a
// shadow store to a new machine, or of recovering a lost disk.
gnomon::Result<size_t> RestoreShadows(const AppConfig& app, bool only_if_empty) {
  namespace sh = gnomon::shadow;
  if (app.shadows.changelog_connection == nullptr) {
    return gnomon::FailedPrecondition("no shadows.changelog in the config");
  }
  std::error_code ec;
  std::filesystem::create_directories(app.data_dir, ec);
  GNOMON_ASSIGN_OR_RETURN(auto store, sh::ShadowStore::Open({.path = app.data_dir + "/shadows.db"}));
  if (only_if_empty) {
    GNOMON_ASSIGN_OR_RETURN(auto reader, store->NewReader());
    GNOMON_ASSIGN_OR_RETURN(auto things, reader->Things("", "", 1));
    if (!things.empty()) {
      return size_t{0};
    }
  }
  std::map<std::string, std::optional<std::string>> latest;
  GNOMON_ASSIGN_OR_RETURN(
      size_t records,
      gnomon::connectors::ReadTopicToEnd(
          *app.shadows.changelog_connection, app.shadows.changelog_topic,
          [&](int32_t, std::string_view key, const std::string* value) {
            latest[std::string(key)] = value != nullptr ? std::optional<std::string>(*value)
                                                        : std::nullopt;
          }));
  size_t restored = 0;
  size_t rows = 0;
  size_t calls = 0;
  for (const auto& [key, value] : latest) {
    if (!value) {
      continue;  // deleted
    }
    if (auto row = sh::ParseStateChangelogKey(key)) {
      // A rule's row of a device (a cluster's change log carries them: docs/cluster.md).
      auto state = sh::RuleState::FromChangelog(*value);
      if (!state.ok()) {
        gnomon::log::Warn("change log record skipped",
                          {{"key", key}, {"error", state.status().message()}});
        continue;
      }
      store->WriteState(std::string(row->second), std::string(row->first), std::move(state).value(),
                        nullptr);
      ++rows;
      continue;
    }
    if (size_t call = key.find("/$call/"); call != std::string::npos) {
      // A service call as its owner stored it (read back, and checked, at the next start).
      store->WriteCall(key.substr(0, call), key.substr(call + 7), *value, nullptr);
      ++calls;
      continue;
    }
    size_t slash = key.find('/');
    std::string thing = key.substr(0, slash);
    std::string name = slash == std::string::npos ? "" : key.substr(slash + 1);
    auto doc = sh::ShadowDocument::FromChangelog(*value);
    if (!doc.ok()) {
      gnomon::log::Warn("change log record skipped",
                        {{"key", key}, {"error", doc.status().message()}});
      continue;
    }
    store->Write(thing, name, doc->StoredJson(), nullptr);
    ++restored;
  }
  store->Flush();
  if (store->stats().failures > 0) {
    return gnomon::Unavailable("the shadow store could not save the restored shadows");
  }
  gnomon::log::Info("shadows restored from the change log",
                    {{"topic", app.shadows.changelog_topic},
                     {"records", std::to_string(records)},
                     {"shadows", std::to_string(restored)},
                     {"rule_rows", std::to_string(rows)},
                     {"service_calls", std::to_string(calls)}});
  return restored;
}

int Restore(const std::string& config, const gnomon::Registry& registry) {
  auto app = gnomon::engine::LoadAppConfig(config, registry);
  if (!app.ok()) {
    std::fprintf(stderr, "%s\n", app.status().message().c_str());
    return kExitFailed;
  }
  ::umask(app->umask);
  auto n = RestoreShadows(*app, /*only_if_empty=*/false);
  if (!n.ok()) {
    std::fprintf(stderr, "restore: %s\n", n.status().message().c_str());
    return kExitFailed;
  }
  std::printf("%zu shadows restored into %s/shadows.db\n", *n, app->data_dir.c_str());
  return kExitOk;
}

int Run(const std::string& config, const gnomon::Registry& registry, const EngineOptions& options) {
  auto app = gnomon::engine::LoadAppConfig(config, registry);
  if (!app.ok()) {
    std::fprintf(stderr, "%s\n", app.status().message().c_str());
    return kExitFailed;
  }
  ApplyLogLevel(*app);
  for (const auto& w : app->warnings) {
    gnomon::log::Warn("config", {{"warning", w}});
  }
  ::umask(app->umask);  // before anything is created in data_dir
  if (options.mode == Mode::kRun) {
    if (gnomon::Status st = CheckClusterTopics(*app, 15000); !st.ok()) {
      if (st.code() != gnomon::StatusCode::kUnavailable) {
        gnomon::log::Error("cannot start", {{"error", st.message()}});
        return kExitFailed;
      }
      gnomon::log::Warn("cluster: the ingress topic's partitions were not checked",
                        {{"error", st.message()}});
    }
  }
  if (app->shadows.enabled && app->shadows.changelog_connection != nullptr &&
      options.mode != Mode::kDryRun && !app->cluster.enabled) {
    // (In a cluster, each partition is restored when this instance is given it.)
    // An empty store with a change log: start from the change log.
    auto n = RestoreShadows(*app, /*only_if_empty=*/true);
    if (!n.ok()) {
      gnomon::log::Error("cannot restore shadows from the change log",
                         {{"error", n.status().message()}});
      return kExitFailed;
    }
  }
  gnomon::SystemClock clock;
  bool replay = options.mode != Mode::kRun;
  auto engine = Engine::Create(std::move(app).value(), registry, clock, options);
  if (!engine.ok()) {
    gnomon::log::Error("cannot start", {{"error", engine.status().message()}});
    return kExitFailed;
  }
  if (gnomon::Status st = (*engine)->Start(); !st.ok()) {
    gnomon::log::Error("cannot start", {{"error", st.message()}});
    (*engine)->Stop();
    return kExitFailed;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  auto start = std::chrono::steady_clock::now();
  auto last_progress = start;
  while (true) {
    timespec timeout{0, 50 * 1000 * 1000};
    int sig = sigtimedwait(&set, nullptr, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      gnomon::log::Info("signal received; draining", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
      break;
    }
    if (sig == SIGHUP) {
      (*engine)->ReloadRules("SIGHUP").IgnoreError();  // logged, counted, shown in /v1/rules
    }
    if (replay) {
      auto now = std::chrono::steady_clock::now();
      if (options.progress && now - last_progress > std::chrono::milliseconds(500)) {
        last_progress = now;
        auto c = (*engine)->counts();
        double secs = std::chrono::duration<double>(now - start).count();
        std::fprintf(stderr, "\r%llu messages, %.0f/s   ", static_cast<unsigned long long>(c.in),
                     static_cast<double>(c.in) / secs);
      }
      if ((*engine)->Idle()) {
        break;
      }
    }
  }
  (*engine)->Stop();
  if (replay) {
    auto c = (*engine)->counts();
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "%sreplayed %llu messages in %.3f s (%.0f/s): %llu done, %llu dead-lettered\n",
                 options.progress ? "\r" : "", static_cast<unsigned long long>(c.in), secs,
                 static_cast<double>(c.in) / secs, static_cast<unsigned long long>(c.done),
                 static_cast<unsigned long long>(c.dead_lettered));
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);

  gnomon::Registry registry;
  gnomon::connectors::RegisterBuiltinConnectors(registry);

  CLI::App app{"gnomon: rule engine and device shadows for IoT fleets"};
  app.require_subcommand(1);
  std::string config;

  auto* run = app.add_subcommand("run", "Run until SIGTERM/SIGINT, then drain and exit 0");
  run->add_option("-c,--config", config, "Config file (YAML)")->required();

  auto* check = app.add_subcommand("check", "Validate config, thing models and rules; exit 0/1");
  check->add_option("-c,--config", config, "Config file (YAML)")->required();
  std::string emit_schemas;
  check->add_option("--emit-schemas", emit_schemas,
                    "Also write a JSON Schema per thing model into this folder");

  auto* replay = app.add_subcommand("replay", "Feed a recorded file through the rules and exit");
  std::string input, device;
  bool dry_run = false;
  replay->add_option("-c,--config", config, "Config file (YAML)")->required();
  replay->add_option("--input", input, "JSON lines: {\"topic\", \"payload\"|\"raw\", \"ts\"}")
      ->required();
  replay->add_option("--device", device,
                     "Device id rule for the input (default: the first source's)");
  replay->add_flag("--dry-run", dry_run, "Print every effect as a JSON line instead of doing it");

  auto* test = app.add_subcommand("test", "Run the tests of rule files; exit 0 if all pass");
  std::vector<std::string> test_paths;
  std::string junit;
  bool verbose = false;
  test->add_option("paths", test_paths, "Rule files or directories")->required();
  test->add_option("--junit", junit, "Also write JUnit XML to this file");
  test->add_option("-c,--config", config, "Config whose sinks the rules may emit to");
  test->add_flag("-v,--verbose", verbose, "List passing tests too");
  std::vector<std::string> libs;
  test->add_option("--lib", libs, "A folder rules may require modules from (repeatable)");

  auto* restore = app.add_subcommand(
      "restore", "Rebuild the shadow store in data_dir from the shadow change log (Kafka)");
  bool from_changelog = false;
  restore->add_option("-c,--config", config, "Config file (YAML)")->required();
  restore->add_flag("--from-changelog", from_changelog, "Read shadows.changelog")->required();

  app.add_subcommand("version", "Print the version");
  auto* docs = app.add_subcommand("config-docs", "Print the configuration reference (Markdown)");
  docs->group("");  // hidden: used to generate docs/configuration.md

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }

  if (app.got_subcommand("version")) {
    std::printf("gnomon %s\n", GNOMON_VERSION);
    return kExitOk;
  }
  if (app.got_subcommand("config-docs")) {
    std::fputs(gnomon::RenderConfigDocs().c_str(), stdout);
    return kExitOk;
  }
  if (app.got_subcommand("test")) {
    return Test(test_paths, junit, config, libs, verbose, registry);
  }
  if (app.got_subcommand("check")) {
    return Check(config, registry, emit_schemas);
  }
  if (app.got_subcommand("restore")) {
    return Restore(config, registry);
  }
  // run and replay take SIGTERM, SIGINT and SIGHUP synchronously on the main thread (drain,
  // reload); block them before any thread starts so every thread inherits the mask. The other
  // subcommands keep the default action: SIGTERM or SIGINT ends them at once, even inside a
  // rule's top-level code or tests.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  EngineOptions options;
  options.read_topic = &gnomon::connectors::ReadTopicToEnd;
  options.follow_topic = &gnomon::connectors::FollowTopic;
  if (app.got_subcommand("replay")) {
    options.mode = dry_run ? Mode::kDryRun : Mode::kReplay;
    options.replay_input = input;
    options.replay_device = device;
    options.progress = !dry_run && isatty(STDERR_FILENO);
  }
  return Run(config, registry, options);
}

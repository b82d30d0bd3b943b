// SPDX-License-Identifier: Apache-2.0
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "gnomon/core/path.h"
#include "gnomon/core/topic.h"
#include "gnomon/engine/engine.h"
#include "gnomon/rules/testing.h"

namespace gnomon::engine {
namespace {

// A factory names an embedded schema ("sinks/file.json") or gives the JSON text itself.
std::string_view SchemaText(std::string_view schema) {
  return schema.starts_with("{") ? schema : EmbeddedSchema(schema);
}

// Validates the entries of `list` (sources or sinks): each against the schema of its type.
void CheckEntries(const ConfigValue* list, const char* section, bool is_source,
                  const Registry& registry, const ConfigValue* connections,
                  std::vector<Entry>& out, ConfigErrors& errors) {
  if (list == nullptr) {
    return;
  }
  std::set<std::string> names;
  std::map<std::string, int> users;  // connection name → entries using it
  for (const auto& item : list->items()) {
    if (item.is_map() && item.Get("connection") != nullptr) {
      users[item.GetString("connection")]++;
    }
  }
  auto& items = const_cast<std::vector<ConfigValue>&>(list->items());
  for (size_t i = 0; i < items.size(); ++i) {
    ConfigValue& item = items[i];
    std::string path = fmt::format("{}[{}]", section, i);
    if (!item.is_map()) {
      continue;  // already reported by the top-level schema
    }
    Entry e;
    e.name = item.GetString("name");
    if (!names.insert(e.name).second) {
      errors.Add(item.Get("name"), path + ".name", fmt::format("'{}' is used twice", e.name));
    }
    const ConfigValue* conn_name = item.Get("connection");
    const ConfigValue* type = item.Get("type");
    if (conn_name != nullptr && type != nullptr) {
      errors.Add(type, path, "give either `connection` or `type`, not both");
      continue;
    }
    if (conn_name != nullptr) {
      const ConfigValue* conn =
          connections != nullptr ? connections->Get(conn_name->scalar()) : nullptr;
      if (conn == nullptr) {
        errors.Add(conn_name, path + ".connection",
                   fmt::format("no connection named '{}' in `connections`", conn_name->scalar()));
        continue;
      }
      e.type = conn->GetString("type");
      e.connection = conn;
      e.connection_users = users[conn_name->scalar()];
    } else if (type != nullptr) {
      e.type = type->scalar();
    } else {
      errors.Add(&item, path, "needs `connection` (a name from `connections`) or `type`");
      continue;
    }
    // Sources and sinks differ only in the registry map they look in.
    auto check = [&](auto* factory, const auto& known_map, const char* kind) {
      if (factory == nullptr) {
        std::vector<std::string> known;
        known.reserve(known_map.size());
        for (const auto& kv : known_map) {
          known.push_back(kv.first);
        }
        errors.Add(&item, path, fmt::format("unknown {} type '{}' (known: {})", kind, e.type,
                                            fmt::join(known, ", ")));
        return false;
      }
      ValidateConfig(item, SchemaText(factory->schema()), path, errors);
      factory->Check(item, path, errors);
      return true;
    };
    bool known = is_source ? check(registry.source(e.type), registry.sources(), "source")
                           : check(registry.sink(e.type), registry.sinks(), "sink");
    if (!known) {
      continue;
    }
    e.config = &item;
    out.push_back(std::move(e));
  }
}

}  // namespace

Result<std::shared_ptr<const rules::RuleSet>> LoadRules(const AppConfig& app,
                                                        std::vector<std::string>* files_out) {
  GNOMON_ASSIGN_OR_RETURN(std::vector<std::string> files,
                          rules::ExpandRulePaths(app.rule_patterns, app.base_dir));
  if (files.empty() && !app.rule_patterns.empty()) {
    return NotFound(fmt::format("no rule file matches {}", fmt::join(app.rule_patterns, ", ")));
  }
  rules::RuleSetOptions opts;
  for (const auto& s : app.sinks) {
    opts.sinks.push_back(s.name);
  }
  opts.lib_dirs = app.rule_libs;
  opts.max_limits = app.rule_limits;
  GNOMON_ASSIGN_OR_RETURN(auto set, rules::RuleSet::Load(files, opts));
  // Rules ship with tests; a rule whose tests fail does not start.
  if (!files.empty()) {
    rules::TestOptions topts;
    topts.sinks = opts.sinks;
    topts.lib_dirs = opts.lib_dirs;
    if (topts.sinks.empty()) {
      topts.sinks.emplace_back();  // no sinks configured: emits are errors, not "any sink"
    }
    GNOMON_ASSIGN_OR_RETURN(rules::TestReport report, rules::RunRuleTests(files, topts));
    if (report.failed() > 0) {
      return InvalidArgument("rule tests failed:\n" + report.Text(false));
    }
  }
  if (files_out != nullptr) {
    *files_out = std::move(files);
  }
  return set;
}

std::string RuleFilesSignature(const AppConfig& app) {
  std::string sig;
  auto files = rules::ExpandRulePaths(app.rule_patterns, app.base_dir);
  if (!files.ok()) {
    return "error:" + files.status().message();
  }
  // Test files beside the rules count too: they gate a reload.
  std::vector<std::string> all = *files;
  for (const auto& f : *files) {
    std::error_code ec;
    auto dir = std::filesystem::path(f).parent_path();
    for (const auto& e : std::filesystem::directory_iterator(dir.empty() ? "." : dir, ec)) {
      if (e.path().string().ends_with(".test.lua")) {
        all.push_back(e.path().string());
      }
    }
  }
  for (const auto& dir : app.rule_libs) {
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path().extension() == ".lua") {
        all.push_back(it->path().string());
      }
    }
  }
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  for (const auto& f : all) {
    std::error_code ec;
    auto size = std::filesystem::file_size(f, ec);
    auto mtime = std::filesystem::last_write_time(f, ec).time_since_epoch().count();
    sig += fmt::format("{}:{}:{};", f, size, mtime);
  }
  return sig;
}

namespace {

bool IsLoopback(std::string_view host) {
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost" || host == "::1") {
    return true;
  }
  // 127.0.0.0/8
  unsigned a = 0, b = 0, c = 0, d = 0;
  char tail = 0;
  return std::sscanf(std::string(host).c_str(), "%u.%u.%u.%u%c", &a, &b, &c, &d, &tail) == 4 &&
         a == 127 && b < 256 && c < 256 && d < 256;
}

// `api:` or `metrics:`: TLS and the connection limits.
void ParseListener(const ConfigValue& v, std::string_view section, const std::string& base_dir,
                   AppConfig::Listener& l, ConfigErrors& errors) {
  l.insecure = v.GetBool("insecure", l.insecure);
  if (const ConfigValue* tls = v.Get("tls")) {
    auto file_of = [&](const char* key) {
      std::string f = tls->GetString(key);
      return f.empty() ? f : ResolvePath(base_dir, f);
    };
    l.tls_cert = file_of("cert");
    l.tls_key = file_of("key");
    l.tls_client_ca = file_of("client_ca");
    for (const char* key : {"cert", "key", "client_ca"}) {
      std::string file = file_of(key);
      if (!file.empty() && ::access(file.c_str(), R_OK) != 0) {
        errors.Add(tls->Get(key), fmt::format("{}.tls.{}", section, key),
                   fmt::format("cannot read {}: {}", file, std::strerror(errno)));
      }
    }
  }
  if (const ConfigValue* lim = v.Get("limits")) {
    l.max_connections = lim->GetInt("max_connections", l.max_connections);
    l.io_threads = lim->GetInt("io_threads", l.io_threads);
    l.handler_threads = lim->GetInt("handler_threads", l.handler_threads);
    l.max_header_bytes = lim->GetInt("max_header_bytes", l.max_header_bytes);
    l.max_header_fields = lim->GetInt("max_header_fields", l.max_header_fields);
    l.header_timeout_ms = lim->GetInt("header_timeout_ms", l.header_timeout_ms);
    l.body_timeout_ms = lim->GetInt("body_timeout_ms", l.body_timeout_ms);
    l.idle_timeout_ms = lim->GetInt("idle_timeout_ms", l.idle_timeout_ms);
  }
}

// Connections: each against the schema of its type.
void CheckConnections(ConfigValue* connections, const Registry& registry, ConfigErrors& errors) {
  if (connections != nullptr && connections->is_map()) {
    auto& fields =
        const_cast<std::vector<std::pair<std::string, ConfigValue>>&>(connections->fields());
    for (auto& [name, conn] : fields) {
      std::string type = conn.GetString("type");
      const std::string* schema = registry.connection_schema(type);
      if (schema == nullptr) {
        continue;  // the top-level schema reported the type
      }
      ValidateConfig(conn, EmbeddedSchema(*schema), "connections." + name, errors);
    }
  }
}

// data_dir, workers, queues, shutdown and the metrics listener.
void LoadProcess(AppConfig& app, ConfigErrors& errors) {
  app.data_dir = ResolvePath(app.base_dir, app.root.GetString("data_dir"));  // schema default
  int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.workers = static_cast<int>(app.root.GetInt("workers", cores));
  // Defaults: the schema's (validation filled them in); AppConfig starts with the same values
  // (ConfigLoaderTest.EveryDefaultOfTheSchemaIsWhatTheCodeUses).
  app.worker_queue =
      static_cast<size_t>(app.root.GetInt("worker_queue", static_cast<int64_t>(app.worker_queue)));
  app.shutdown_timeout_ms = app.root.GetInt("shutdown_timeout_ms", app.shutdown_timeout_ms);
  if (const ConfigValue* m = app.root.Get("metrics")) {
    app.metrics_listen = m->GetString("listen");
    app.metrics_tokens = m->GetStrings("tokens");
    ParseListener(*m, "metrics", app.base_dir, app.metrics, errors);
  }
}

bool HasSink(const AppConfig& app, const std::string& name) {
  return std::any_of(app.sinks.begin(), app.sinks.end(),
                     [&](const auto& s) { return s.name == name; });
}

void LoadDeadLetter(AppConfig& app, ConfigErrors& errors) {
  if (const ConfigValue* dl = app.root.Get("dead_letter")) {
    app.dead_letter_sink = dl->GetString("sink");
    AppConfig::DeadLetters& d = app.dead_letters;
    d.max_mb = dl->GetInt("max_mb", d.max_mb);
    d.keep = dl->GetInt("keep", d.keep);
    d.disk_reserve_mb = dl->GetInt("disk_reserve_mb", d.disk_reserve_mb);
    d.payload_max_bytes = static_cast<size_t>(
        dl->GetInt("payload_max_bytes", static_cast<int64_t>(d.payload_max_bytes)));
    d.per_device_per_s = dl->GetDouble("per_device_per_s", d.per_device_per_s);
    d.burst = dl->GetInt("burst", d.burst);
    if (!app.dead_letter_sink.empty() && !HasSink(app, app.dead_letter_sink)) {
      errors.Add(dl->Get("sink"), "dead_letter.sink",
                 fmt::format("no sink named '{}' in `sinks`", app.dead_letter_sink));
    }
  }
}

// Where ctx.publish goes: the named sink, else the first mqtt sink.
void LoadPublish(AppConfig& app, ConfigErrors& errors) {
  if (const ConfigValue* p = app.root.Get("publish"); p != nullptr && p->Get("sink") != nullptr) {
    app.publish_sink = p->GetString("sink");
    if (!HasSink(app, app.publish_sink)) {
      errors.Add(p->Get("sink"), "publish.sink",
                 fmt::format("no sink named '{}' in `sinks`", app.publish_sink));
    }
  } else {
    for (const auto& s : app.sinks) {
      if (s.type == "mqtt") {
        app.publish_sink = s.name;
        break;
      }
    }
  }
}

// The API listener, its tokens and scopes, and the checks that it is not open by accident.
void LoadApi(AppConfig& app, ConfigErrors& errors) {
  if (const ConfigValue* api = app.root.Get("api")) {
    app.api_listen = api->GetString("listen");
    if (const ConfigValue* tokens = api->Get("tokens")) {
      for (size_t i = 0; i < tokens->items().size(); ++i) {
        const ConfigValue& t = tokens->items()[i];
        AppConfig::ApiToken tok;
        if (t.is_scalar()) {
          tok.token = t.scalar();
        } else {
          tok.token = t.GetString("token");
          tok.scopes = 0;
          for (const std::string& scope : t.GetStrings("scopes")) {
            tok.scopes |= scope == "read" ? 1u : scope == "write" ? 2u : scope == "admin" ? 4u : 0u;
          }
        }
        if (tok.token.empty()) {
          // `${env:X}` of an unset variable: a token anyone could send.
          errors.Add(&t, fmt::format("api.tokens[{}]", i), "the token is empty");
        }
        app.api_tokens.push_back(std::move(tok));
      }
    }
    ParseListener(*api, "api", app.base_dir, app.api, errors);
    std::string host = app.api_listen.substr(0, app.api_listen.rfind(':'));
    bool exposed = !app.api_listen.empty() && !IsLoopback(host);
    if (exposed && app.api_tokens.empty()) {
      if (!app.api.insecure) {
        errors.Add(api->Get("listen"), "api.listen",
                   fmt::format("{} is reachable from other machines and api.tokens is empty: "
                               "anyone who reaches it could change shadows, call services and "
                               "reload rules. Set api.tokens (and api.tls), listen on 127.0.0.1, "
                               "or set `api.insecure: true` to accept that",
                               app.api_listen));
      } else {
        app.warnings.push_back(fmt::format(
            "api.listen {} is reachable from other machines with no tokens (api.insecure: true): "
            "anyone who reaches it can change shadows, call services and reload rules",
            app.api_listen));
      }
    }
    if (exposed && !app.api_tokens.empty() && app.api.tls_cert.empty()) {
      app.warnings.push_back(fmt::format(
          "api.listen {} is reachable from other machines without api.tls: bearer tokens cross "
          "the network in clear text",
          app.api_listen));
    }
  }
}

void LoadShadows(AppConfig& app, const ConfigValue* connections, ConfigErrors& errors) {
  if (const ConfigValue* sh = app.root.Get("shadows")) {
    app.shadows.enabled = true;
    app.shadows.topic_prefix = sh->GetString("topic_prefix", app.shadows.topic_prefix);
    app.shadows.sync_full =
        sh->GetString("sync", app.shadows.sync_full ? "full" : "normal") == "full";
    app.shadows.cache_shadows = static_cast<size_t>(
        sh->GetInt("cache_shadows", static_cast<int64_t>(app.shadows.cache_shadows)));
    app.shadows.state_cache_mb = static_cast<size_t>(
        sh->GetInt("state_cache_mb", static_cast<int64_t>(app.shadows.state_cache_mb)));
    app.shadows.max_pending_writes = static_cast<size_t>(sh->GetInt(
        "max_pending_writes", static_cast<int64_t>(app.shadows.max_pending_writes)));
    app.shadows.history =
        static_cast<size_t>(sh->GetInt("history", static_cast<int64_t>(app.shadows.history)));
    app.shadows.history_mb = static_cast<size_t>(
        sh->GetInt("history_mb", static_cast<int64_t>(app.shadows.history_mb)));
    if (Status st = ValidateTopicName(app.shadows.topic_prefix); !st.ok() ||
        app.shadows.topic_prefix.back() == '/') {
      errors.Add(sh->Get("topic_prefix"), "shadows.topic_prefix",
                 "must be a topic name without wildcards or a trailing /");
    }
    if (const ConfigValue* p = sh->Get("presence")) {
      app.shadows.presence_from = p->GetString("from");
      if (Status st = ValidateTopicFilter(app.shadows.presence_from); !st.ok()) {
        errors.Add(p->Get("from"), "shadows.presence.from",
                   fmt::format("not a topic filter: {}", st.message()));
      }
    }
    if (const ConfigValue* c = sh->Get("connection")) {
      app.shadows.connection_name = c->scalar();
      const ConfigValue* conn = connections != nullptr ? connections->Get(c->scalar()) : nullptr;
      if (conn == nullptr) {
        errors.Add(c, "shadows.connection",
                   fmt::format("no connection named '{}' in `connections`", c->scalar()));
      } else if (conn->GetString("type") != "mqtt") {
        errors.Add(c, "shadows.connection",
                   fmt::format("'{}' is a {} connection; shadows are served over mqtt",
                               c->scalar(), conn->GetString("type")));
      } else {
        app.shadows.connection = conn;
      }
    }
  }
  if (const ConfigValue* cl = app.root.Get("shadows") ? app.root.Get("shadows")->Get("changelog")
                                                      : nullptr) {
    app.shadows.changelog_connection_name = cl->GetString("connection");
    app.shadows.changelog_topic = cl->GetString("topic");
    app.shadows.changelog_partitions =
        static_cast<int>(cl->GetInt("partitions", app.shadows.changelog_partitions));
    const ConfigValue* conn = connections != nullptr
                                  ? connections->Get(app.shadows.changelog_connection_name)
                                  : nullptr;
    if (conn == nullptr || conn->GetString("type") != "kafka") {
      errors.Add(cl->Get("connection"), "shadows.changelog.connection",
                 fmt::format("no kafka connection named '{}' in `connections`",
                             app.shadows.changelog_connection_name));
    } else {
      app.shadows.changelog_connection = conn;
    }
  }
}

// `cluster:`: the names, the connection (kafka), and what cannot run in a cluster yet.
void LoadCluster(AppConfig& app, const ConfigValue* connections, ConfigErrors& errors) {
  const ConfigValue* c = app.root.Get("cluster");
  if (c == nullptr) {
    return;
  }
  AppConfig::Cluster& cl = app.cluster;
  cl.enabled = true;
  cl.name = c->GetString("name");
  cl.group = c->GetString("group", cl.name);
  cl.partitions = static_cast<int32_t>(c->GetInt("partitions", 1));
  cl.instance_id = c->GetString("instance_id");
  cl.standby_replicas = static_cast<int>(c->GetInt("standby_replicas", cl.standby_replicas));
  cl.connection_name = c->GetString("connection");
  cl.advertise = c->GetString("advertise", "");
  if (!cl.advertise.empty() && !cl.advertise.starts_with("http://") &&
      !cl.advertise.starts_with("https://")) {
    errors.Add(c->Get("advertise"), "cluster.advertise",
               "must be http://host:port, or https://host:port when api.tls is set");
  } else if (cl.advertise.starts_with("https://") && app.api.tls_cert.empty()) {
    errors.Add(c->Get("advertise"), "cluster.advertise",
               "is https:// but this instance's API has no TLS (api.tls)");
  } else if (cl.advertise.starts_with("http://") && !app.api.tls_cert.empty()) {
    errors.Add(c->Get("advertise"), "cluster.advertise",
               "is http:// but this instance's API speaks TLS (api.tls): use https://");
  }
  if (const ConfigValue* ca = c->Get("tls_ca")) {
    cl.tls_ca = ResolvePath(app.base_dir, ca->scalar());
    if (::access(cl.tls_ca.c_str(), R_OK) != 0) {
      errors.Add(ca, "cluster.tls_ca",
                 fmt::format("cannot read {}: {}", cl.tls_ca, std::strerror(errno)));
    }
  }
  const ConfigValue* conn = connections != nullptr ? connections->Get(cl.connection_name) : nullptr;
  if (conn == nullptr || conn->GetString("type") != "kafka") {
    errors.Add(c->Get("connection"), "cluster.connection",
               fmt::format("no kafka connection named '{}' in `connections`", cl.connection_name));
  } else {
    cl.connection = conn;
  }
  // The names of the cluster's own source and sink (in logs, metrics and dead letters).
  for (auto [list, kind] : {std::pair{&app.sources, "sources"}, std::pair{&app.sinks, "sinks"}}) {
    for (size_t i = 0; i < list->size(); ++i) {
      const std::string& name = (*list)[i].name;
      if (name == "cluster" || name == "cluster-ingress") {
        errors.Add((*list)[i].config->Get("name"), fmt::format("{}[{}].name", kind, i),
                   fmt::format("'{}' is a name of the cluster's own (its ingress producer and "
                               "consumer); choose another",
                               name));
      }
    }
  }
  // Shadows move with their device's partition (docs/cluster.md#shadows): each accepted write
  // goes to the cluster's change log, from which an instance restores a partition it is given.
  if (const ConfigValue* s = app.root.Get("shadows")) {
    if (const ConfigValue* own = s->Get("changelog")) {
      errors.Add(own, "shadows.changelog",
                 fmt::format("in a cluster shadows go to the cluster's own change log ('{}', "
                             "{} partitions, like the ingress topic); remove shadows.changelog",
                             cl.ChangelogTopic(), cl.partitions));
    }
    app.shadows.changelog_connection_name = cl.connection_name;
    app.shadows.changelog_connection = cl.connection;
    app.shadows.changelog_topic = cl.ChangelogTopic();
    app.shadows.changelog_partitions = cl.partitions;
  }
  for (size_t i = 0; i < app.sources.size(); ++i) {
    const Entry& s = app.sources[i];
    if (s.type == "kafka" && s.config->GetString("delivery", "") == "exactly_once") {
      errors.Add(s.config->Get("delivery"), fmt::format("sources[{}].delivery", i),
                 "exactly_once cannot run in a cluster yet: the source's messages go through "
                 "the ingress topic, outside its transactions");
    }
  }
}

// Exactly-once Kafka sources: at most one per connection; what takes part in their
// transactions and what stays at-least-once (warnings: `gnomon check` prints them, `run` logs
// them).
void LoadDelivery(AppConfig& app, ConfigErrors& errors) {
  std::map<const ConfigValue*, std::string> transactional;  // connection -> its source
  for (size_t i = 0; i < app.sources.size(); ++i) {
    const Entry& s = app.sources[i];
    if (s.type != "kafka" || s.config->GetString("delivery", "") != "exactly_once") {
      continue;
    }
    auto [it, fresh] = transactional.emplace(s.connection, s.name);
    if (!fresh) {
      errors.Add(s.config->Get("delivery"), fmt::format("sources[{}].delivery", i),
                 fmt::format("source '{}' already runs exactly-once on this connection; one "
                             "exactly_once source per connection",
                             it->second));
    }
  }
  if (transactional.empty()) {
    return;
  }
  auto joins = [&](const Entry& e) {
    return e.type == "kafka" && transactional.count(e.connection) > 0;
  };
  for (const Entry& k : app.sinks) {
    if (!joins(k)) {
      app.warnings.push_back(fmt::format(
          "sink '{}' ({}) stays at-least-once: only kafka sinks on an exactly_once source's "
          "connection take part in its transactions",
          k.name, k.type));
    }
  }
  for (const Entry& s : app.sources) {
    if (!joins(s) || s.config->GetString("delivery", "") != "exactly_once") {
      app.warnings.push_back(fmt::format(
          "source '{}' ({}) is at-least-once: its records on the transactional kafka sinks are "
          "acknowledged once their transaction commits, and may be written twice if it "
          "redelivers",
          s.name, s.type));
    }
  }
  if (app.dead_letter_sink.empty()) {
    app.warnings.emplace_back(
        "dead letters go to data_dir/dead-letter.jsonl, at-least-once: a message processed "
        "again after a crash may be dead-lettered twice (set dead_letter.sink to a kafka sink on "
        "the exactly_once source's connection to put them in its transactions)");
  }
  if (!app.shadows.changelog_topic.empty() &&
      transactional.count(app.shadows.changelog_connection) == 0) {
    app.warnings.emplace_back(
        "shadows.changelog is on another connection than the exactly_once source: it stays "
        "at-least-once");
  }
  if (app.root.Get("shadows") != nullptr) {
    app.warnings.emplace_back(
        "shadows and rule state (ctx.state) live in data_dir, outside Kafka's transactions: the "
        "messages of a transaction open at a crash are applied to them again when processed "
        "again (their Kafka output is still written once)");
  }
}

// Thing models: every file parsed, model ids unique.
void LoadModels(AppConfig& app, ConfigErrors& errors) {
  if (const ConfigValue* models = app.root.Get("models")) {
    auto files = rules::ExpandRulePaths(app.root.GetStrings("models"), app.base_dir);
    if (!files.ok()) {
      errors.Add(models, "models", std::string(files.status().message()));
    } else {
      std::map<std::string, std::string> ids;
      for (const auto& f : *files) {
        std::ifstream in(f, std::ios::binary);
        std::stringstream ss;
        ss << in.rdbuf();
        auto m = shadow::ThingModel::Parse(ss.str(), f);
        if (!m.ok()) {
          errors.Add(models, "models", std::string(m.status().message()));
          continue;
        }
        if (auto [it, fresh] = ids.emplace((*m)->id(), f); !fresh) {
          errors.Add(models, "models",
                     fmt::format("{}: modelId {} is also in {}", f, (*m)->id(), it->second));
          continue;
        }
        app.models.push_back(std::move(m).value());
      }
    }
  }
}

void LoadEventsAndServices(AppConfig& app, ConfigErrors& errors) {
  if (const ConfigValue* ev = app.root.Get("events")) {
    app.events_from = ev->GetString("from", app.events_from);
    if (Status st = ValidateTopicFilter(app.events_from); !st.ok()) {
      errors.Add(ev->Get("from"), "events.from", fmt::format("not a topic filter: {}", st.message()));
    }
  }
  if (const ConfigValue* sv = app.root.Get("services")) {
    app.services.ttl_ms = sv->GetInt("ttl_ms", app.services.ttl_ms);
    app.services.keep_ms = sv->GetInt("keep_ms", app.services.keep_ms);
    app.services.max_queued =
        static_cast<size_t>(sv->GetInt("max_queued", static_cast<int64_t>(app.services.max_queued)));
  }
}

// Rule-side settings: reload, device ids, umask, rule limits and libraries.
void LoadRuleSettings(AppConfig& app, ConfigErrors& errors) {
  app.watch_rules = app.root.GetBool("watch_rules", app.watch_rules);
  app.device_id_pattern = app.root.GetString("device_id_pattern", "");
  {
    std::string mask = app.root.GetString("umask", fmt::format("{:04o}", app.umask));
    char* end = nullptr;
    unsigned long v = std::strtoul(mask.c_str(), &end, 8);
    if (mask.empty() || *end != '\0' || v > 0777) {
      errors.Add(app.root.Get("umask"), "umask",
                 fmt::format("must be an octal mode like \"0077\" (got '{}')", mask));
    } else {
      app.umask = static_cast<unsigned>(v);
    }
  }
  if (!app.device_id_pattern.empty()) {
    try {
      std::regex check(app.device_id_pattern);
    } catch (const std::regex_error& e) {
      errors.Add(app.root.Get("device_id_pattern"), "device_id_pattern",
                 fmt::format("not a regular expression: {}", e.what()));
    }
  }
  if (const ConfigValue* rl = app.root.Get("rule_limits")) {
    rules::RuleLimitCeilings& c = app.rule_limits;
    c.instructions = rl->GetInt("instructions", c.instructions);
    c.memory_mb = rl->GetInt("memory_mb", c.memory_mb);
    c.heap_mb = rl->GetInt("heap_mb", c.heap_mb);
    c.wall_ms = rl->GetInt("wall_ms", c.wall_ms);
    c.allow_jit = rl->GetBool("allow_jit", c.allow_jit);
  }
  for (const auto& dir : app.root.GetStrings("rule_libs")) {
    std::string resolved = ResolvePath(app.base_dir, dir);
    if (!std::filesystem::is_directory(resolved)) {
      errors.Add(app.root.Get("rule_libs"), "rule_libs", resolved + ": no such folder");
    }
    app.rule_libs.push_back(std::move(resolved));
  }
}

}  // namespace

Result<AppConfig> LoadAppConfig(const std::string& path, const Registry& registry) {
  AppConfig app;
  GNOMON_ASSIGN_OR_RETURN(app.root, LoadYamlFile(path));
  app.file = path;
  app.base_dir = std::filesystem::path(path).parent_path().string();
  if (app.base_dir.empty()) {
    app.base_dir = ".";
  }
  ConfigErrors errors(path);
  if (!app.root.is_map()) {
    errors.Add(&app.root, "", "the config must be a map of sections");
    return errors.ToStatus();
  }
  ValidateConfig(app.root, EmbeddedSchema("gnomon.json"), "", errors);

  ConfigValue* connections = app.root.GetMutable("connections");
  CheckConnections(connections, registry, errors);
  CheckEntries(app.root.Get("sources"), "sources", true, registry, connections, app.sources,
               errors);
  CheckEntries(app.root.Get("sinks"), "sinks", false, registry, connections, app.sinks, errors);

  LoadProcess(app, errors);
  LoadDeadLetter(app, errors);
  LoadPublish(app, errors);
  if (!errors.empty()) {
    return errors.ToStatus();
  }

  LoadApi(app, errors);
  LoadShadows(app, connections, errors);
  LoadDelivery(app, errors);
  LoadCluster(app, connections, errors);
  LoadModels(app, errors);
  LoadEventsAndServices(app, errors);
  LoadRuleSettings(app, errors);
  // gnomon's own topics: shadow requests and answers, and its presence events. HTTP ingest
  // may not publish on them (a client could forge a delta or an offline event).
  app.reserved_topic_prefixes = {app.shadows.topic_prefix, "$aws/events"};
  if (!errors.empty()) {
    return errors.ToStatus();
  }

  // Rules last: they need the sink names.
  app.rule_patterns = app.root.GetStrings("rules");
  auto set = LoadRules(app, &app.rule_files);
  if (!set.ok()) {
    Status st = set.status();
    if (st.code() == StatusCode::kNotFound) {  // a pattern that matches nothing
      errors.Add(app.root.Get("rules"), "rules", st.message());
      return errors.ToStatus();
    }
    return st;
  }
  app.rules = std::move(set).value();
  return app;
}

}  // namespace gnomon::engine

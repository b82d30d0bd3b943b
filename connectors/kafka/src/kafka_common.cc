// SPDX-License-Identifier: Apache-2.0
#include "kafka_common.h"

#include <fmt/format.h>
#include <librdkafka/rdkafka_mock.h>

#include <mutex>

#include "gnomon/core/log.h"
#include "gnomon/core/mutex.h"

namespace gnomon::connectors::kafka {

Properties ReadProperties(const ConfigValue* map) {
  Properties out;
  if (map != nullptr && map->is_map()) {
    for (const auto& [k, v] : map->fields()) {
      out[k] = v.scalar();
    }
  }
  return out;
}

Result<std::string> EmbeddedBootstrap() {
  static Mutex mu;
  static rd_kafka_t* rk = nullptr;
  static rd_kafka_mock_cluster_t* cluster = nullptr;
  MutexLock lock(mu);
  if (cluster == nullptr) {
    char err[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (rk == nullptr) {
      return Unavailable(fmt::format("embedded kafka: {}", err));
    }
    cluster = rd_kafka_mock_cluster_new(rk, 3);
    if (cluster == nullptr) {
      return Unavailable("embedded kafka: cannot start librdkafka's mock cluster");
    }
    // Lives until the process exits: sources and sinks may use it until their last moment.
    log::Warn("embedded Kafka cluster started: for development only, its data is lost when "
              "gnomon stops",
              {{"bootstrap", rd_kafka_mock_cluster_bootstraps(cluster)},
               {"try", fmt::format("kcat -b {} -L", rd_kafka_mock_cluster_bootstraps(cluster))}});
  }
  return std::string(rd_kafka_mock_cluster_bootstraps(cluster));
}

Result<ClientSettings> Settings(const ConfigValue& connection, const ConfigValue& entry) {
  ClientSettings s;
  s.brokers = connection.GetString("brokers");
  if (s.brokers == "embedded") {
    GNOMON_ASSIGN_OR_RETURN(s.brokers, EmbeddedBootstrap());
  }
  s.properties = ReadProperties(connection.Get("properties"));
  for (auto& [k, v] : ReadProperties(entry.Get("properties"))) {
    s.properties[k] = v;
  }
  return s;
}

Result<rd_kafka_conf_t*> MakeConf(const ClientSettings& settings, const Properties& fixed,
                                  const Properties& defaults) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  auto set = [&](const std::string& k, const std::string& v) -> Status {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      return InvalidArgument(fmt::format("kafka property {}: {}", k, err));
    }
    return {};
  };
  Status st = set("bootstrap.servers", settings.brokers);
  for (const auto& [k, v] : defaults) {
    if (st.ok()) {
      st = set(k, v);
    }
  }
  for (const auto& [k, v] : settings.properties) {
    if (st.ok()) {
      st = set(k, v);
    }
  }
  for (const auto& [k, v] : fixed) {
    if (st.ok()) {
      st = set(k, v);
    }
  }
  if (!st.ok()) {
    rd_kafka_conf_destroy(conf);
    return st;
  }
  rd_kafka_conf_set_log_cb(conf, LogCallback);
  return conf;
}

void CheckProperties(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) {
  const ConfigValue* props = cfg.Get("properties");
  if (props == nullptr || !props->is_map()) {
    return;
  }
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  for (const auto& [k, v] : props->fields()) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.scalar().c_str(), err, sizeof err) !=
        RD_KAFKA_CONF_OK) {
      errors.Add(&v, fmt::format("{}.properties.{}", path, k), err);
    }
  }
  rd_kafka_conf_destroy(conf);
}

bool BrokersReachable(rd_kafka_t* rk, int timeout_ms) {
  const rd_kafka_metadata_t* md = nullptr;
  if (rd_kafka_metadata(rk, 0, nullptr, &md, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return false;
  }
  rd_kafka_metadata_destroy(md);
  return true;
}

void ReachabilityProbe::Check(rd_kafka_t* rk, std::atomic<bool>& down, std::string_view who) {
  if (!down.load(std::memory_order_relaxed)) {
    return;
  }
  auto now = std::chrono::steady_clock::now();
  if (now < next_) {
    return;
  }
  next_ = now + std::chrono::seconds(1);
  if (BrokersReachable(rk, 500)) {
    down.store(false, std::memory_order_relaxed);
    log::Info("kafka brokers reachable again", {{"client", std::string(who)}});
  }
}

void LogCallback(const rd_kafka_t* rk, int level, const char* fac, const char* buf) {
  static log::RateLimiter limiter(10);
  if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
    auto lvl = level <= 3 ? log::Level::kError : level <= 4 ? log::Level::kWarn : log::Level::kInfo;
    log::Write(lvl, "kafka", {{"client", rd_kafka_name(rk)},
                              {"facility", fac},
                              {"detail", buf},
                              {"suppressed_before", std::to_string(suppressed)}});
  }
}

void FailedTopics::Note(const std::string& topic, rd_kafka_resp_err_t err) {
  if (err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
      err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) {
    MutexLock lock(mu_);
    topics_.insert(topic);
  }
}

void FailedTopics::Refresh(rd_kafka_t* rk, const std::pair<std::string, std::string>& who) {
  auto now = std::chrono::steady_clock::now();
  if (now < next_) {
    return;
  }
  next_ = now + std::chrono::seconds(5);
  std::set<std::string> topics;
  {
    MutexLock lock(mu_);
    topics.swap(topics_);
  }
  for (const std::string& t : topics) {
    rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, t.c_str(), nullptr);
    const rd_kafka_metadata_t* md = nullptr;
    bool ok = rd_kafka_metadata(rk, 0, rkt, &md, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR &&
              md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR;
    if (md != nullptr) {
      rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(rkt);
    log::Info(ok ? "kafka topic usable again" : "kafka topic still failing",
              {{who.first, who.second}, {"topic", t}});
  }
}

rd_kafka_headers_t* RecordHeaders(const Record& r) {
  rd_kafka_headers_t* headers = rd_kafka_headers_new(4 + r.headers.size());
  auto header = [&](std::string_view k, std::string_view v) {
    rd_kafka_header_add(headers, k.data(), static_cast<ssize_t>(k.size()), v.data(),
                        static_cast<ssize_t>(v.size()));
  };
  header("gnomon-rule", r.rule);
  header("gnomon-device", r.device);
  header("gnomon-source-topic", r.source_topic);
  if (r.json && !r.null_value) {
    header("content-type", "application/json");
  }
  for (const auto& [k, v] : r.headers) {
    header(k, v);
  }
  return headers;
}

}  // namespace gnomon::connectors::kafka

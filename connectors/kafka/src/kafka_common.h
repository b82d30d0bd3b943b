// SPDX-License-Identifier: Apache-2.0
// What the Kafka source and sink share: connection settings, librdkafka configuration from
// gnomon config (unknown properties are errors), and the embedded development cluster.
#pragma once

#include <librdkafka/rdkafka.h>

#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <string_view>

#include "gnomon/core/config.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/record.h"
#include "gnomon/core/status.h"

namespace gnomon::connectors::kafka {

using Properties = std::map<std::string, std::string>;

inline Status Cancelled(std::string m) { return Status(StatusCode::kCancelled, std::move(m)); }

// The connection's bootstrap servers (starting the embedded cluster for `embedded`) and
// properties, then `overrides` (the entry's own `properties`).
struct ClientSettings {
  std::string brokers;
  Properties properties;
};
Result<ClientSettings> Settings(const ConfigValue& connection, const ConfigValue& entry);

// A `properties:` map as strings.
Properties ReadProperties(const ConfigValue* map);

// A new librdkafka configuration: gnomon's `defaults`, then `settings` (the user's), then
// `fixed` (which users cannot override). Errors name the property.
Result<rd_kafka_conf_t*> MakeConf(const ClientSettings& settings, const Properties& fixed,
                                  const Properties& defaults = {});

// Checks every property of a `properties:` map against librdkafka (for `gnomon check`).
void CheckProperties(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors);

// The in-process development cluster's bootstrap servers (started on first use; 3 brokers).
Result<std::string> EmbeddedBootstrap();

// Whether a broker answers a metadata request within `timeout_ms`. librdkafka reports
// "all brokers down" but no recovery, so readiness asks again after an outage.
bool BrokersReachable(rd_kafka_t* rk, int timeout_ms);

// Calls BrokersReachable at most once a second while `down` is set, and clears it (with a log
// line) once a broker answers. For one thread.
class ReachabilityProbe {
 public:
  void Check(rd_kafka_t* rk, std::atomic<bool>& down, std::string_view who);

 private:
  std::chrono::steady_clock::time_point next_{};
};

// librdkafka keeps a topic's authorization or existence error until its next metadata refresh
// (topic.metadata.refresh.interval.ms, 5 minutes by default) and fails every record for it
// meanwhile. Failed topics are asked about every 5 s instead, so fixing an ACL or creating the
// topic takes effect within seconds. Thread-safe.
class FailedTopics {
 public:
  void Note(const std::string& topic, rd_kafka_resp_err_t err);
  // At most every 5 s (one thread): asks the broker about each noted topic through `rk`, which
  // clears librdkafka's error once the topic is fine. `who` labels the log line.
  void Refresh(rd_kafka_t* rk, const std::pair<std::string, std::string>& who);

 private:
  Mutex mu_;
  std::set<std::string> topics_ GNOMON_GUARDED_BY(mu_);
  std::chrono::steady_clock::time_point next_{};  // (the refreshing thread's)
};

// A record's Kafka headers: gnomon's provenance (gnomon-rule, gnomon-device,
// gnomon-source-topic, content-type for JSON) and the emit's own.
rd_kafka_headers_t* RecordHeaders(const Record& r);

// Logs librdkafka's log lines as gnomon JSON log lines.
void LogCallback(const rd_kafka_t* rk, int level, const char* fac, const char* buf);

}  // namespace gnomon::connectors::kafka

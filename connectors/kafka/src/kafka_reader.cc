// SPDX-License-Identifier: Apache-2.0
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <thread>

#include "gnomon/connectors/kafka.h"
#include "kafka_common.h"

namespace gnomon::connectors {

namespace {

// A consumer that joins no group (partitions are assigned by hand), closed and destroyed with
// its owner.
struct Reader {
  rd_kafka_t* rk = nullptr;
  Reader() = default;
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;
  ~Reader() {
    if (rk != nullptr) {
      rd_kafka_consumer_close(rk);
      rd_kafka_destroy(rk);
    }
  }
};

Status OpenReader(const ConfigValue& connection, const std::string& what, kafka::Properties fixed,
                  Reader& out) {
  ConfigValue none;
  GNOMON_ASSIGN_OR_RETURN(kafka::ClientSettings settings, kafka::Settings(connection, none));
  fixed["enable.auto.commit"] = "false";
  GNOMON_ASSIGN_OR_RETURN(rd_kafka_conf_t * conf, kafka::MakeConf(settings, fixed));
  char err[512];
  out.rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (out.rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return Unavailable(fmt::format("kafka {}: {}", what, err));
  }
  return {};
}

// The restore reader of the last read on this thread, kept for the next read on the same
// connection: a standby reads its partitions' tails every second, and a client each time meant
// a new connection to every broker each second (with TLS or SASL a handshake each). Closed
// when the thread ends, when a read fails, or when the next read is for another connection.
struct KeptReader {
  std::string connection;  // brokers and properties
  Reader reader;
};
thread_local std::unique_ptr<KeptReader> kept_reader;
std::atomic<uint64_t> readers_made{0};

std::string ConnectionKey(const kafka::ClientSettings& settings) {
  std::string key = settings.brokers;
  for (const auto& [k, v] : settings.properties) {
    key += '\0';
    key += k;
    key += '=';
    key += v;
  }
  return key;
}

}  // namespace

uint64_t TopicReadersMade() { return readers_made.load(std::memory_order_relaxed); }

Result<size_t> ReadTopicToEnd(const ConfigValue& connection, const std::string& topic,
                              const std::function<void(int32_t partition, std::string_view key,
                                                       const std::string* value)>& fn,
                              const std::vector<int32_t>* only, const std::function<bool()>& stop,
                              std::map<int32_t, int64_t>* positions) {
  ConfigValue none;
  GNOMON_ASSIGN_OR_RETURN(kafka::ClientSettings settings, kafka::Settings(connection, none));
  std::string key = ConnectionKey(settings);
  std::unique_ptr<KeptReader> kept = std::move(kept_reader);
  if (kept == nullptr || kept->connection != key) {
    kept = std::make_unique<KeptReader>();
    kept->connection = std::move(key);
    GNOMON_RETURN_IF_ERROR(OpenReader(
        connection, "restore",
        // (Kept idle between reads: brokers closing idle connections is not worth a log line.)
        {{"group.id", "gnomon-restore"},
         {"enable.partition.eof", "true"},
         {"log.connection.close", "false"}},
        kept->reader));
    readers_made.fetch_add(1, std::memory_order_relaxed);
  }
  rd_kafka_t* rk = kept->reader.rk;
  // Kept for the next read once this one has read to its end (a failed read's client is
  // closed); unassigned first, so that nothing of this read is fetched for the next.
  auto keep = [&] {
    rd_kafka_assign(rk, nullptr);
    kept_reader = std::move(kept);
  };
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  const rd_kafka_metadata_t* md = nullptr;
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 15000);
  rd_kafka_topic_destroy(rkt);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Unavailable(fmt::format("kafka restore: metadata of {}: {}", topic, rd_kafka_err2str(e)));
  }
  std::map<int32_t, int64_t> ends;  // partition → high watermark now
  std::map<int32_t, int64_t> from;  // partition → where its read starts
  std::map<int32_t, int64_t> reached;  // partition → where the next read starts
  if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    for (int i = 0; i < md->topics[0].partition_cnt; ++i) {
      int32_t p = md->topics[0].partitions[i].id;
      if (only != nullptr && std::find(only->begin(), only->end(), p) == only->end()) {
        continue;
      }
      int64_t lo = 0, hi = 0;
      e = rd_kafka_query_watermark_offsets(rk, topic.c_str(), p, &lo, &hi, 15000);
      if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_metadata_destroy(md);
        return Unavailable(fmt::format("kafka restore: offsets of {}[{}]: {}", topic, p,
                                       rd_kafka_err2str(e)));
      }
      int64_t start = lo;
      if (positions != nullptr) {
        if (auto it = positions->find(p); it != positions->end()) {
          // (Below the first offset kept: from there.)
          start = std::clamp(it->second, lo, std::max(lo, hi));
        }
      }
      reached[p] = start;
      if (hi > start) {
        ends[p] = hi;
        from[p] = start;
      }
    }
  }
  rd_kafka_metadata_destroy(md);
  auto done = [&](size_t n) -> Result<size_t> {
    keep();
    if (positions != nullptr) {
      for (const auto& [p, at] : reached) {
        (*positions)[p] = at;
      }
    }
    return n;
  };
  if (ends.empty()) {
    return done(0);
  }
  rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(static_cast<int>(ends.size()));
  for (const auto& [p, hi] : ends) {
    rd_kafka_topic_partition_list_add(parts, topic.c_str(), p)->offset = from.at(p);
  }
  rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  size_t n = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
  while (!ends.empty()) {
    if (stop && stop()) {
      return Status(StatusCode::kCancelled, fmt::format("kafka restore: {}: stopped", topic));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return Unavailable(fmt::format("kafka restore: {} did not reach its end in 10 minutes", topic));
    }
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk, 500);
    if (m == nullptr) {
      continue;
    }
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      // (Read committed: the end is the last stable offset, below an open transaction, whose
      // records the next read gets once it is committed.)
      reached[m->partition] = std::max(reached[m->partition], m->offset);
      ends.erase(m->partition);
    } else if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::string why = rd_kafka_message_errstr(m);
      rd_kafka_message_destroy(m);
      return Unavailable(fmt::format("kafka restore: reading {}: {}", topic, why));
    } else {
      std::string_view key = m->key != nullptr
                                 ? std::string_view(static_cast<const char*>(m->key), m->key_len)
                                 : std::string_view();
      if (m->payload == nullptr) {
        fn(m->partition, key, nullptr);
      } else {
        std::string value(static_cast<const char*>(m->payload), m->len);
        fn(m->partition, key, &value);
      }
      ++n;
      reached[m->partition] = m->offset + 1;
      auto it = ends.find(m->partition);
      if (it != ends.end() && m->offset + 1 >= it->second) {
        ends.erase(it);
      }
    }
    rd_kafka_message_destroy(m);
  }
  return done(n);
}

Status FollowTopic(const ConfigValue& connection, const std::string& topic,
                   const std::function<void(std::string_view key, const std::string* value)>& fn,
                   const std::function<bool()>& stop) {
  Reader reader;
  GNOMON_RETURN_IF_ERROR(
      OpenReader(connection, "follow " + topic,
                 {{"group.id", "gnomon-follow"}, {"allow.auto.create.topics", "false"}}, reader));
  rd_kafka_t* rk = reader.rk;
  // Its partitions, once it exists.
  int partitions = 0;
  while (partitions == 0) {
    if (stop()) {
      return {};
    }
    rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
    const rd_kafka_metadata_t* md = nullptr;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 2000);
    rd_kafka_topic_destroy(rkt);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        partitions = md->topics[0].partition_cnt;
      }
      rd_kafka_metadata_destroy(md);
    }
    if (partitions == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }
  rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(parts, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  while (!stop()) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk, 500);
    if (m == nullptr) {
      continue;
    }
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::string_view key = m->key != nullptr
                                 ? std::string_view(static_cast<const char*>(m->key), m->key_len)
                                 : std::string_view();
      if (m->payload == nullptr) {
        fn(key, nullptr);
      } else {
        std::string value(static_cast<const char*>(m->payload), m->len);
        fn(key, &value);
      }
    }
    // (Other errors are transient here: librdkafka keeps fetching.)
    rd_kafka_message_destroy(m);
  }
  return {};
}

}  // namespace gnomon::connectors

namespace gnomon::connectors {

Result<int32_t> KafkaTopicPartitions(const ConfigValue& connection, const std::string& topic,
                                     int timeout_ms) {
  ConfigValue none;
  GNOMON_ASSIGN_OR_RETURN(kafka::ClientSettings settings, kafka::Settings(connection, none));
  // A consumer: its metadata requests never auto-create the topic they ask about.
  GNOMON_ASSIGN_OR_RETURN(rd_kafka_conf_t * conf,
                          kafka::MakeConf(settings, {{"group.id", "gnomon-metadata"},
                                                     {"allow.auto.create.topics", "false"}}));
  char err[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return Unavailable(fmt::format("kafka metadata: {}", err));
  }
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  const rd_kafka_metadata_t* md = nullptr;
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
  rd_kafka_topic_destroy(rkt);
  int32_t n = 0;
  if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
    if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      n = md->topics[0].partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
  }
  rd_kafka_destroy(rk);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Unavailable(fmt::format("kafka metadata of {}: {}", topic, rd_kafka_err2str(e)));
  }
  return n;
}

}  // namespace gnomon::connectors

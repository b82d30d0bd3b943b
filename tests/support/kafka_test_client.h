// SPDX-License-Identifier: Apache-2.0
// A real librdkafka client for the test's side of a Kafka cluster, and the development cluster
// (gnomon-kafka-dev, librdkafka's mock cluster over TCP) in its own process (integration tests).
#pragma once

#include <librdkafka/rdkafka.h>
#include <simdjson.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/test_support.h"

namespace gnomon::testing {

struct KafkaRecord {
  std::string topic;
  int32_t partition = 0;
  int64_t offset = 0;
  std::string key;
  std::string value;
  std::map<std::string, std::string> headers;
};

// gnomon-kafka-dev in its own process: survives gnomon being killed.
class KafkaDevCluster {
 public:
  bool Start(const std::vector<std::string>& topics, std::string* why) {
    // GNOMON_KAFKA_DEV: a cluster binary built without sanitizers (librdkafka's mock cluster is
    // not instrumented and crashes under TSan's runtime; it is test scaffolding, not gnomon).
    const char* bin = std::getenv("GNOMON_KAFKA_DEV");
    std::vector<std::string> argv = {bin != nullptr && *bin != '\0' ? bin : GNOMON_KAFKA_DEV,
                                     "--brokers", "3", "--control", dir_.File("control")};
    for (const auto& t : topics) {
      argv.push_back("--topic");
      argv.push_back(t);
    }
    proc_ = std::make_unique<Process>(argv);
    bool ok = WaitFor([&] { return proc_->Stdout().find('\n') != std::string::npos || !proc_->Running(); });
    std::string out = proc_->Stdout();
    if (!ok || out.rfind("bootstrap: ", 0) != 0) {
      *why = "gnomon-kafka-dev did not start: " + out + proc_->Stderr();
      return false;
    }
    bootstrap_ = out.substr(11, out.find('\n') - 11);
    return true;
  }
  const std::string& bootstrap() const { return bootstrap_; }

  // Injects a fault (a gnomon-kafka-dev control command, e.g. "broker-down 1"); true once the
  // cluster has applied it.
  bool Inject(const std::string& command) {
    std::string marker = "control: ok " + command + "\n";
    size_t before = Count(proc_->Stdout(), marker);
    dir_.Write("control.new", command + "\n");
    std::filesystem::rename(dir_.File("control.new"), dir_.File("control"));
    return WaitFor([&] { return Count(proc_->Stdout(), marker) > before; });
  }

 private:
  static size_t Count(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
      ++n;
    }
    return n;
  }

  TempDir dir_;
  std::unique_ptr<Process> proc_;
  std::string bootstrap_;
};

class KafkaClient {
 public:
  explicit KafkaClient(const std::string& bootstrap) : bootstrap_(bootstrap) {}
  ~KafkaClient() {
    if (producer_ != nullptr) {
      rd_kafka_flush(producer_, 10000);
      rd_kafka_destroy(producer_);
    }
  }

  void Produce(const std::string& topic, const std::string& key, const std::string& value,
               const std::vector<std::pair<std::string, std::string>>& headers = {},
               int32_t partition = RD_KAFKA_PARTITION_UA) {
    if (producer_ == nullptr) {
      rd_kafka_conf_t* conf = rd_kafka_conf_new();
      char err[256];
      rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_.c_str(), err, sizeof err);
      rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err);
      producer_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    }
    while (true) {
      rd_kafka_headers_t* hs = rd_kafka_headers_new(headers.size());
      for (const auto& [k, v] : headers) {
        rd_kafka_header_add(hs, k.data(), static_cast<ssize_t>(k.size()), v.data(),
                            static_cast<ssize_t>(v.size()));
      }
      rd_kafka_resp_err_t e = rd_kafka_producev(
          producer_, RD_KAFKA_V_TOPIC(topic.c_str()),
          RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
          RD_KAFKA_V_KEY(key.empty() ? nullptr : key.data(), key.size()), RD_KAFKA_V_HEADERS(hs),
          RD_KAFKA_V_PARTITION(partition),
          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
        break;  // the producer owns the headers
      }
      rd_kafka_headers_destroy(hs);
      if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        break;
      }
      rd_kafka_poll(producer_, 10);
    }
    rd_kafka_poll(producer_, 0);
  }
  bool Flush() { return rd_kafka_flush(producer_, 30000) == RD_KAFKA_RESP_ERR_NO_ERROR; }

  // Every record of `topic` (all partitions, from the start) until `want` records arrived, or
  // every partition has been read to its end and nothing new came for `quiet` (for the first
  // record: 30 s, group joins). The quiet time only runs once every partition reported its end:
  // a busy machine may fetch one partition well before the next, and a reader that stopped at
  // the first pause returned a fraction of the topic.
  std::vector<KafkaRecord> ReadAll(const std::string& topic, size_t want,
                                   std::chrono::milliseconds quiet = std::chrono::milliseconds(3000)) {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char err[256];
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_.c_str(), err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", "gnomon-test-reader", err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof err);
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    const rd_kafka_metadata_t* md = nullptr;
    rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
    std::vector<KafkaRecord> out;
    if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1) {
      rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(8);
      std::map<int32_t, bool> at_end;  // partition -> read to its end (and nothing since)
      for (int i = 0; i < md->topics[0].partition_cnt; ++i) {
        rd_kafka_topic_partition_list_add(parts, topic.c_str(), md->topics[0].partitions[i].id)
            ->offset = RD_KAFKA_OFFSET_BEGINNING;
        at_end[md->topics[0].partitions[i].id] = false;
      }
      rd_kafka_assign(rk, parts);
      rd_kafka_topic_partition_list_destroy(parts);
      auto all_at_end = [&] {
        for (const auto& [partition, done] : at_end) {
          if (!done) {
            return false;
          }
        }
        return true;
      };
      // Bounds a partition that never reports its end (a broker down for good).
      const auto give_up = std::chrono::steady_clock::now() + Scaled(std::chrono::milliseconds(90000));
      auto last = std::chrono::steady_clock::now();
      auto first_wait = Scaled(std::chrono::milliseconds(30000));
      while (out.size() < want && std::chrono::steady_clock::now() < give_up &&
             (!all_at_end() || std::chrono::steady_clock::now() - last <
                                   (out.empty() ? first_wait : Scaled(quiet)))) {
        rd_kafka_message_t* m = rd_kafka_consumer_poll(rk, 100);
        if (m == nullptr) {
          continue;
        }
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
          at_end[m->partition] = true;
        } else if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
          at_end[m->partition] = false;
          KafkaRecord r;
          r.topic = topic;
          r.partition = m->partition;
          r.offset = m->offset;
          if (m->key != nullptr) {
            r.key.assign(static_cast<const char*>(m->key), m->key_len);
          }
          if (m->payload != nullptr) {
            r.value.assign(static_cast<const char*>(m->payload), m->len);
          }
          rd_kafka_headers_t* h = nullptr;
          if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            const char* name;
            const void* value;
            size_t size;
            for (size_t i = 0; rd_kafka_header_get_all(h, i, &name, &value, &size) ==
                               RD_KAFKA_RESP_ERR_NO_ERROR;
                 ++i) {
              r.headers[name] = std::string(static_cast<const char*>(value), size);
            }
          }
          out.push_back(std::move(r));
          last = std::chrono::steady_clock::now();
        }
        rd_kafka_message_destroy(m);
      }
      rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(rkt);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return out;
  }

 private:
  std::string bootstrap_;
  rd_kafka_t* producer_ = nullptr;
};

// A cluster's change log as read (records of one key are in one partition, so in order): the
// shadows' records whose `current.version` does not rise strictly from the key's record before,
// one line each ("" when every shadow's do: what a fenced owner's late write would break).
// Rule rows and service calls ("{device}/$..."), tombstones and records that are not a documents
// event are skipped, the last named too. `*versions` gets each shadow's last version and
// `*shadow_records` how many shadow records were read.
inline std::string VersionsThatDoNotRise(const std::vector<KafkaRecord>& records,
                                         std::map<std::string, int64_t>* versions,
                                         size_t* shadow_records) {
  std::string out;
  simdjson::dom::parser parser;
  for (const auto& r : records) {
    if (r.key.find("/$") != std::string::npos || r.value.empty()) {
      continue;
    }
    int64_t v = -1;
    if (parser.parse(r.value).at_pointer("/current/version").get_int64().get(v) !=
        simdjson::SUCCESS) {
      out += r.key + ": not a documents event: " + r.value + "\n";
      continue;
    }
    ++*shadow_records;
    auto [it, fresh] = versions->emplace(r.key, v);
    if (!fresh) {
      if (v <= it->second) {
        out += r.key + ": version " + std::to_string(v) + " after " + std::to_string(it->second) +
               " at offset " + std::to_string(r.offset) + " of partition " +
               std::to_string(r.partition) + "\n";
      }
      it->second = v;
    }
  }
  return out;
}

}  // namespace gnomon::testing

// SPDX-License-Identifier: Apache-2.0
// The baseline for bench/kafka.sh: a no-logic librdkafka consume → produce loop with the same
// guarantees gnomon gives (manual commits after delivery, idempotent producer, key kept).
// Consumes COUNT records of IN in group GROUP, produces each to OUT, waits for every delivery
// report, commits, and prints {"records", "seconds", "records_per_s"}. Also a loader:
//   gnomon-kafka-bench load BOOTSTRAP TOPIC COUNT DEVICES
// a shadow change-log loader and a plain reader (bench/cluster_restore.sh):
//   gnomon-kafka-bench changelog BOOTSTRAP TOPIC COUNT
//   gnomon-kafka-bench read BOOTSTRAP TOPIC PARTITIONS COUNT
//   gnomon-kafka-bench pass BOOTSTRAP IN OUT GROUP COUNT
// and the exactly-once baseline for bench/kafka_eos.sh: the same loop in transactions
// committed every 100 ms with the consumed offsets (send_offsets_to_transaction):
//   gnomon-kafka-bench txpass BOOTSTRAP IN OUT GROUP COUNT
// and what a group has committed on a topic (the sum over its partitions):
//   gnomon-kafka-bench committed BOOTSTRAP GROUP TOPIC PARTITIONS
#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

rd_kafka_t* Client(rd_kafka_type_t type, const std::string& bootstrap, const std::string& group,
                   void (*dr)(rd_kafka_t*, const rd_kafka_message_t*, void*) = nullptr) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[256];
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err);
  if (type == RD_KAFKA_PRODUCER) {
    rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err);
    rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err);
    if (dr != nullptr) {
      rd_kafka_conf_set_dr_msg_cb(conf, dr);
    }
  } else {
    rd_kafka_conf_set(conf, "group.id", group.c_str(), err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err);
  }
  rd_kafka_t* rk = rd_kafka_new(type, conf, err, sizeof err);
  if (rk == nullptr) {
    std::fprintf(stderr, "%s\n", err);
    std::exit(1);
  }
  return rk;
}

std::atomic<long> g_delivered{0};

int Load(const std::string& bootstrap, const std::string& topic, long count, long devices) {
  rd_kafka_t* p = Client(RD_KAFKA_PRODUCER, bootstrap, "");
  char value[256];
  for (long i = 0; i < count; ++i) {
    std::string key = "dev" + std::to_string(i % devices);
    // ~200 bytes of telemetry; a third of it hot.
    int n = std::snprintf(value, sizeof value,
                          R"({"temp":%ld.5,"humidity":41,"battery":87,"rssi":-61,"fw":"1.2.0",)"
                          R"("seq":%ld,"status":"ok","loc":{"lat":52.52,"lon":13.40},)"
                          R"("mode":"auto","uptime":123456,"errors":0,"pad":"xxxxxxxxxxxxxx"})",
                          30 + (i % 30), i);
    while (rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_VALUE(value, n),
                             RD_KAFKA_V_KEY(key.data(), key.size()),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      rd_kafka_poll(p, 10);
    }
    rd_kafka_poll(p, 0);
  }
  rd_kafka_flush(p, 60000);
  rd_kafka_destroy(p);
  return 0;
}

// COUNT shadow change-log records (the documents event of a ~1 KB reported state with its
// metadata), keyed dev0..dev{COUNT-1}, partitioned by murmur2 as a gnomon cluster's change log.
int LoadChangelog(const std::string& bootstrap, const std::string& topic, long count) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[256];
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err);
  rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err);
  rd_kafka_conf_set(conf, "linger.ms", "20", err, sizeof err);
  rd_kafka_conf_set(conf, "partitioner", "murmur2_random", err, sizeof err);
  static std::atomic<long> failed{0};
  static std::string first_error;
  rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* m, void*) {
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR && failed++ == 0) {
      first_error = rd_kafka_err2str(m->err);
    }
  });
  rd_kafka_t* p = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (p == nullptr) {
    std::fprintf(stderr, "%s\n", err);
    return 1;
  }
  std::string reported, metadata;
  for (int f = 0; f < 16; ++f) {
    reported += (f == 0 ? "" : ",") + std::string("\"field") + std::to_string(f) + "\":\"value-" +
                std::to_string(f) + "-abcdefghijklmnop\"";
    metadata += (f == 0 ? "" : ",") + std::string("\"field") + std::to_string(f) +
                "\":{\"timestamp\":1796550000}";
  }
  size_t bytes = 0;
  for (long i = 0; i < count; ++i) {
    std::string key = "dev" + std::to_string(i);
    std::string doc = "{\"state\":{\"reported\":{\"seq\":" + std::to_string(i) + "," + reported +
                      "}},\"metadata\":{\"reported\":{\"seq\":{\"timestamp\":1796550000}," +
                      metadata + "}},\"version\":7,\"timestamp\":1796550000}";
    std::string value = "{\"previous\":null,\"current\":" + doc + ",\"timestamp\":1796550000}";
    bytes += value.size();
    while (rd_kafka_producev(
               p, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_VALUE(value.data(), value.size()),
               RD_KAFKA_V_KEY(key.data(), key.size()), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
               RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      rd_kafka_poll(p, 10);
    }
    rd_kafka_poll(p, 0);
  }
  if (rd_kafka_flush(p, 120000) != RD_KAFKA_RESP_ERR_NO_ERROR || failed > 0) {
    std::fprintf(stderr, "changelog: %ld records not delivered (%s)\n",
                 failed.load() + rd_kafka_outq_len(p), first_error.c_str());
    rd_kafka_destroy(p);
    return 1;
  }
  rd_kafka_destroy(p);
  std::printf("{\"records\":%ld,\"value_bytes_avg\":%zu}\n", count,
              bytes / static_cast<size_t>(std::max(1L, count)));
  return 0;
}

// Reads TOPIC from its beginning until COUNT records came (no group, no commits): what
// reading a change log costs without doing anything with it.
int Read(const std::string& bootstrap, const std::string& topic, int partitions, long count) {
  rd_kafka_t* c = Client(RD_KAFKA_CONSUMER, bootstrap, "bench-read");
  rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(partitions);
  for (int i = 0; i < partitions; ++i) {
    rd_kafka_topic_partition_list_add(parts, topic.c_str(), i)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(c, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  long n = 0;
  size_t bytes = 0;
  auto t0 = std::chrono::steady_clock::now();
  int idle = 0;
  while (n < count) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(c, 100);
    if (m == nullptr) {
      if (++idle == 100) {  // 10 s without a record: the topic holds fewer
        std::fprintf(stderr, "read: only %ld of %ld records\n", n, count);
        return 1;
      }
      continue;
    }
    idle = 0;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      ++n;
      bytes += m->len;
    }
    rd_kafka_message_destroy(m);
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"records\":%ld,\"seconds\":%.3f,\"records_per_s\":%.0f}\n", n, s, n / s);
  rd_kafka_consumer_close(c);
  rd_kafka_destroy(c);
  return 0;
}

// Produces a copy of `m` (key and value) to `out`, waiting while the producer queue is full.
void Forward(rd_kafka_t* p, const rd_kafka_message_t* m, const std::string& out) {
  while (rd_kafka_producev(p, RD_KAFKA_V_TOPIC(out.c_str()), RD_KAFKA_V_VALUE(m->payload, m->len),
                           RD_KAFKA_V_KEY(m->key, m->key_len),
                           RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                           RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
    rd_kafka_poll(p, 5);
  }
  rd_kafka_poll(p, 0);
}

int Pass(const std::string& bootstrap, const std::string& in, const std::string& out,
         const std::string& group, long count) {
  rd_kafka_t* c = Client(RD_KAFKA_CONSUMER, bootstrap, group);
  rd_kafka_t* p = Client(RD_KAFKA_PRODUCER, bootstrap, "", [](rd_kafka_t*, const rd_kafka_message_t* m, void*) {
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      g_delivered++;
    }
  });
  rd_kafka_poll_set_consumer(c);
  rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, in.c_str(), RD_KAFKA_PARTITION_UA);
  rd_kafka_subscribe(c, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  long consumed = 0;
  std::chrono::steady_clock::time_point t0;
  while (consumed < count) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(c, 100);
    if (m == nullptr) {
      continue;
    }
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (consumed++ == 0) {
        t0 = std::chrono::steady_clock::now();
      }
      Forward(p, m, out);
    }
    rd_kafka_message_destroy(m);
    if (consumed % 10000 == 0) {
      rd_kafka_commit(c, nullptr, 1);  // the baseline commits without tracking per message
    }
  }
  while (g_delivered < count) {
    rd_kafka_poll(p, 10);
  }
  rd_kafka_commit(c, nullptr, 0);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(R"({"records":%ld,"seconds":%.3f,"records_per_s":%.0f})" "\n", count, secs,
              static_cast<double>(count) / secs);
  rd_kafka_consumer_close(c);
  rd_kafka_destroy(c);
  rd_kafka_destroy(p);
  return 0;
}

void Check(rd_kafka_error_t* e, const char* what) {
  if (e != nullptr) {
    std::fprintf(stderr, "%s: %s\n", what, rd_kafka_error_string(e));
    std::exit(1);
  }
}

int TxPass(const std::string& bootstrap, const std::string& in, const std::string& out,
           const std::string& group, long count) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[256];
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err);
  rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err);
  rd_kafka_conf_set(conf, "transactional.id", ("bench-" + group).c_str(), err, sizeof err);
  rd_kafka_t* p = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  rd_kafka_t* c = Client(RD_KAFKA_CONSUMER, bootstrap, group);
  Check(rd_kafka_init_transactions(p, 30000), "init_transactions");
  Check(rd_kafka_begin_transaction(p), "begin_transaction");
  rd_kafka_poll_set_consumer(c);
  rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, in.c_str(), RD_KAFKA_PARTITION_UA);
  rd_kafka_subscribe(c, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  auto commit = [&] {
    rd_kafka_topic_partition_list_t* offsets = nullptr;
    rd_kafka_assignment(c, &offsets);
    rd_kafka_position(c, offsets);
    rd_kafka_consumer_group_metadata_t* meta = rd_kafka_consumer_group_metadata(c);
    Check(rd_kafka_send_offsets_to_transaction(p, offsets, meta, 30000), "send_offsets");
    rd_kafka_consumer_group_metadata_destroy(meta);
    rd_kafka_topic_partition_list_destroy(offsets);
    Check(rd_kafka_commit_transaction(p, 30000), "commit_transaction");
  };
  long consumed = 0;
  std::chrono::steady_clock::time_point t0, last;
  while (consumed < count) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(c, 100);
    if (m != nullptr && m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (consumed++ == 0) {
        t0 = last = std::chrono::steady_clock::now();
      }
      Forward(p, m, out);
    }
    if (m != nullptr) {
      rd_kafka_message_destroy(m);
    }
    if (consumed > 0 && std::chrono::steady_clock::now() - last >= std::chrono::milliseconds(100)) {
      commit();
      Check(rd_kafka_begin_transaction(p), "begin_transaction");
      last = std::chrono::steady_clock::now();
    }
  }
  commit();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(R"({"records":%ld,"seconds":%.3f,"records_per_s":%.0f})" "\n", count, secs,
              static_cast<double>(count) / secs);
  rd_kafka_consumer_close(c);
  rd_kafka_destroy(c);
  rd_kafka_destroy(p);
  return 0;
}

int Committed(const std::string& bootstrap, const std::string& group, const std::string& topic,
              int partitions) {
  rd_kafka_t* c = Client(RD_KAFKA_CONSUMER, bootstrap, group);
  rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(partitions);
  for (int i = 0; i < partitions; ++i) {
    rd_kafka_topic_partition_list_add(parts, topic.c_str(), i);
  }
  long sum = 0;
  if (rd_kafka_committed(c, parts, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    for (int i = 0; i < parts->cnt; ++i) {
      sum += parts->elems[i].offset > 0 ? parts->elems[i].offset : 0;
    }
  }
  std::printf("%ld\n", sum);
  rd_kafka_topic_partition_list_destroy(parts);
  rd_kafka_destroy(c);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "load" && argc == 6) {
    return Load(argv[2], argv[3], std::atol(argv[4]), std::atol(argv[5]));
  }
  if (mode == "changelog" && argc == 5) {
    return LoadChangelog(argv[2], argv[3], std::atol(argv[4]));
  }
  if (mode == "read" && argc == 6) {
    return Read(argv[2], argv[3], std::atoi(argv[4]), std::atol(argv[5]));
  }
  if (mode == "pass" && argc == 7) {
    return Pass(argv[2], argv[3], argv[4], argv[5], std::atol(argv[6]));
  }
  if (mode == "committed" && argc == 6) {
    return Committed(argv[2], argv[3], argv[4], std::atoi(argv[5]));
  }
  if (mode == "txpass" && argc == 7) {
    return TxPass(argv[2], argv[3], argv[4], argv[5], std::atol(argv[6]));
  }
  std::fprintf(stderr,
               "usage: gnomon-kafka-bench load BOOTSTRAP TOPIC COUNT DEVICES\n"
               "       gnomon-kafka-bench changelog BOOTSTRAP TOPIC COUNT\n"
               "       gnomon-kafka-bench read BOOTSTRAP TOPIC PARTITIONS COUNT\n"
               "       gnomon-kafka-bench pass BOOTSTRAP IN OUT GROUP COUNT\n"
               "       gnomon-kafka-bench txpass BOOTSTRAP IN OUT GROUP COUNT\n"
               "       gnomon-kafka-bench committed BOOTSTRAP GROUP TOPIC PARTITIONS\n");
  return 2;
}

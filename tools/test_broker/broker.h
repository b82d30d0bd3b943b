// SPDX-License-Identifier: Apache-2.0
// A Kafka broker for tests and local development (issue 18): one node on 127.0.0.1, topics and
// their records in memory, speaking enough of Kafka's wire protocol for librdkafka's producer
// and consumer. It exists because the only Kafka these machines can run, librdkafka's mock
// cluster, accepts transaction requests and ignores them; this broker is where transaction
// semantics (read_committed, the last stable offset, control records, fencing) are to be
// built, each with its own tests against librdkafka.
//
// Built so far: ApiVersions, Metadata (topics are created on first use with
// Options::partitions partitions), Produce (record batches v2, offsets assigned by the broker),
// ListOffsets (earliest, latest) and Fetch (a fetch with nothing to return waits up to its
// max_wait_ms for records); the idempotent producer (InitProducerId, sequence numbers per
// partition); transactions (FindCoordinator, AddPartitionsToTxn, AddOffsetsToTxn,
// TxnOffsetCommit, EndTxn with control batches, fencing by epoch, timeouts), and
// read_committed fetches (the last stable offset, the aborted transactions); consumer groups
// (JoinGroup, SyncGroup, Heartbeat, LeaveGroup, session expiry, OffsetCommit, OffsetFetch).
// Only the non-flexible versions of each API are offered but for ApiVersions v3 (clients ask
// for it first), TxnOffsetCommit v3 (KIP-447's generation check) and InitProducerId v2-v4
// (KIP-360's epoch bump, which librdkafka needs to recover from an abortable error).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace gnomon::testing {

class KafkaTestBroker {
 public:
  struct Options {
    uint16_t port = 0;       // 0: any free port
    int32_t partitions = 1;  // of a topic created on first use
  };
  explicit KafkaTestBroker(Options options);
  ~KafkaTestBroker();
  KafkaTestBroker(const KafkaTestBroker&) = delete;
  KafkaTestBroker& operator=(const KafkaTestBroker&) = delete;

  // Listens and serves on a thread of its own. Empty string: started; otherwise why not.
  std::string Start();
  void Stop();
  uint16_t port() const;
  std::string bootstrap() const;  // "127.0.0.1:PORT"

  void CreateTopic(const std::string& name, int32_t partitions);
  // The next `times` requests of API `api_key` are answered with `error` (Kafka's code) where
  // the request can fail (for tests of clients' error handling): TxnOffsetCommit (28), every
  // partition of it; EndTxn (26), the transaction left as it was; Produce (0), each partition
  // of `topic` (empty: of any topic) counting as one, nothing of it appended.
  void InjectError(int16_t api_key, int16_t error, int times = 1, const std::string& topic = "");
  // The record batches (v2, as stored: offsets assigned) of a partition, for tests.
  std::vector<std::string> Batches(const std::string& topic, int32_t partition) const;

  struct Impl;  // (named by the implementation's connection handler)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gnomon::testing

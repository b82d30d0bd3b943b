// SPDX-License-Identifier: Apache-2.0
// ClusterIngress: in a cluster, what sources that do not partition by device take (MQTT, HTTP,
// files) goes to the cluster's ingress topic instead of the workers: one record per message,
// keyed by device id, in the device's partition (murmur2, as Kafka's producers), the original
// topic in its `gnomon-source-topic` header. The instance that owns the partition consumes it
// like any Kafka source. A message is acknowledged to its source once Kafka has its record.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/core/message.h"
#include "gnomon/core/metrics.h"
#include "gnomon/core/record.h"
#include "gnomon/core/sink.h"
#include "gnomon/core/source.h"

namespace gnomon::engine {

class ClusterIngress final : public Ingest, public DeliveryReporter {
 public:
  // `engine` takes what cannot be forwarded (Reject: dead letters). The producing sink is set
  // with SetSink before the first Submit; it reports its records to this object. `sources`:
  // the names of the sources that forward (their messages are counted by source).
  ClusterIngress(Ingest& engine, std::string topic, int32_t partitions,
                 const std::vector<std::string>& sources, MetricsRegistry& metrics);

  void SetSink(Sink* sink) { sink_ = sink; }

  // Ingest: forwards to the ingress topic. Blocks while the producer's queue is full (the
  // back-pressure a worker queue gives on one instance). A message on one of gnomon's own
  // topics (under kOwnTopics) is refused: dead-lettered, reason `reserved_topic`.
  bool Submit(Message&& m, std::unique_ptr<AckHandle> ack) override;
  // gnomon's own event for another partition's owner (a keyed window's event, for its key's
  // owner): forwarded like a message; `hold` (taken by the caller) is released once Kafka has
  // it (abandoned if it is cancelled).
  void SubmitOwn(Message&& m, Delivery* hold);
  static constexpr std::string_view kOwnTopics = "$gnomon/";
  void Reject(Message&& m, std::unique_ptr<AckHandle> ack, std::string_view reason,
              std::string_view error) override;

  // DeliveryReporter: a record Kafka has acknowledges its message; one Kafka gave up on is
  // dead-lettered (reason `ingress`), and the message acknowledged once the dead letter is
  // durable; a cancelled one (shutdown) abandons its message.
  void Report(Record& record, const Status& status) override;

  const std::string& topic() const { return topic_; }

 private:
  void Forward(Message&& m, Delivery* d);
  Ingest& engine_;
  std::string topic_;
  int32_t partitions_;
  Sink* sink_ = nullptr;
  enum Outcome { kForwarded, kDeadLettered, kCancelled };
  // gnomon_cluster_ingress_total{source, outcome}; fixed after construction (read unlocked).
  std::map<std::string, std::array<Counter*, 3>, std::less<>> counters_;
  void Count(const std::string* source, Outcome o);
};

}  // namespace gnomon::engine

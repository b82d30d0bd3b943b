// SPDX-License-Identifier: Apache-2.0
// PluginContext: what a connector factory gets besides its own config.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gnomon/core/api_router.h"
#include "gnomon/core/clock.h"
#include "gnomon/core/config.h"
#include "gnomon/core/metrics.h"
#include "gnomon/core/record.h"
#include "gnomon/core/shared_objects.h"
#include "gnomon/core/status.h"

namespace gnomon {

// Told when a Kafka source's partitions are assigned and revoked: how the cluster's ingress
// consumer moves device ownership (docs/cluster.md). Called on the consumer's thread, inside the
// rebalance, so nothing of the partitions is fetched or processed meanwhile.
class PartitionListener {
 public:
  virtual ~PartitionListener() = default;
  // Before the source fetches from `partitions`; returns once their state is ready here.
  virtual void Assigned(const std::vector<int32_t>& partitions) = 0;
  // After their messages in flight finished (or were given up) and their offsets were
  // committed. `lost`: this member was dropped from the group (a session timeout), so the
  // partitions may have a new owner already.
  virtual void Revoked(const std::vector<int32_t>& partitions, bool lost) = 0;
};

// A sink whose records for each partition go out through a writer only that partition's
// current owner may use (the cluster's change log: a Kafka transactional producer per
// partition, docs/cluster.md#fencing). Whoever takes a partition over fences the writer of its
// previous owner, so an owner that stalled past its session and wakes up cannot write any more.
class PartitionedWriter {
 public:
  virtual ~PartitionedWriter() = default;
  // Takes `partitions` over (fencing their previous writer, whose unfinished records are thrown
  // away); records for them are taken from now on. An error: not all could be taken (try again).
  virtual Status Acquire(const std::vector<int32_t>& partitions) = 0;
  // Lets `partitions` go: what is pending for them is finished first, or with `lost` (another
  // instance may hold them already) thrown away; records for them are refused (cancelled) after.
  virtual void Release(const std::vector<int32_t>& partitions, bool lost) = 0;
};

// What a factory gets besides its own config.
struct PluginContext {
  MetricsRegistry& metrics;
  DeliveryReporter& reporter;
  const Clock& clock;
  std::string data_dir;
  std::string base_dir;  // directory of the config file: relative paths start here
  std::string name;      // the entry's name
  const ConfigValue* connection = nullptr;  // the named connection's config, if any
  int connection_users = 1;                 // entries of the same kind sharing that connection
  // The engine's tag for this sink's records (Record::route). A sink that reports records it
  // read back from its own storage (an outbox after a restart) sets it on them.
  int32_t route = -1;
  ApiRouter* api = nullptr;  // sources only
  // Topic prefixes that are gnomon's own (shadow requests and answers, presence events): a
  // source that takes topics from clients (HTTP ingest) refuses them.
  std::vector<std::string> reserved_topic_prefixes;
  // In a cluster (docs/cluster.md): this instance's id, from which client ids that must differ
  // between instances derive (MQTT), and the group instances share work in (MQTT shared
  // subscriptions). Empty when gnomon runs alone.
  std::string instance_id;
  std::string share_group;
  // Kafka sources only: told of partition assignments and revocations (the cluster's ingress).
  PartitionListener* partitions = nullptr;
  // Objects shared with the engine's other connectors (keyed by `connection`, say).
  SharedObjects* shared = nullptr;
};

}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
// ClusterMembers: who else is in the cluster, where their API is and which partitions they own,
// as they announce it on the compacted topic `{name}.members` (one record per instance, keyed
// by its id; a tombstone when it stops). Kafka's group decides the ownership; this only spreads
// the word, so that an instance can forward a request to the device's owner
// (docs/cluster.md#rest-anywhere). An announcement older than the staleness bound is ignored
// (an instance killed with -9 leaves its last one behind); when two claim a partition (the old
// owner's last word and the new owner's), the newer wins.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/core/mutex.h"
#include "gnomon/core/status.h"

namespace gnomon::engine {

struct ClusterMember {
  std::string instance;
  std::string api;                 // http://host:port; empty: it cannot be forwarded to
  std::vector<int32_t> owned;      // restored and processing
  std::vector<int32_t> restoring;  // given, being restored
  std::vector<int32_t> standby;    // followed into a warm copy (docs/cluster.md#standbys)
  int64_t at_ms = 0;               // when it said so (its wall clock)

  // The record's value.
  std::string Json() const;
  static Result<ClusterMember> FromJson(std::string_view json);
};

class ClusterMembers {
 public:
  ClusterMembers(std::string self, int64_t stale_ms)
      : self_(std::move(self)), stale_ms_(stale_ms) {}

  // A record of the members topic: `value` null is a tombstone (the instance left). A value
  // that does not parse is ignored (false).
  bool Apply(std::string_view key, const std::string* value);
  // The other instance that owns `partition` by the freshest announcement, if any is fresh.
  std::optional<ClusterMember> OwnerOf(int32_t partition, int64_t now_ms) const;
  // The partitions this instance keeps a standby copy of with `replicas` standbys per
  // partition: the fresh members in the order of their ids form a ring, and a partition's
  // standbys are the `replicas` members after its owner (the freshest claim, given or
  // restoring). Every member computes the same from the same announcements; none while this
  // instance has not heard itself announced. With `claimed`, the partitions some fresh member
  // claims, in order (the others' owner is gone or not known yet: a copy of them is kept).
  std::vector<int32_t> StandbyPartitions(int replicas, int64_t now_ms,
                                         std::vector<int32_t>* claimed = nullptr) const;
  // This instance's own announcement came back and is fresh (it knows where it stands).
  bool Fresh(int64_t now_ms) const;
  // Every member known (self included, as last read back), by instance id.
  std::vector<ClusterMember> Members() const;
  int64_t stale_ms() const { return stale_ms_; }

 private:
  const std::string self_;
  const int64_t stale_ms_;
  // A member not heard of for this long is forgotten (left without its tombstone: killed).
  static constexpr int64_t kForgetMs = 24 * 3600 * 1000;
  mutable Mutex mu_;
  std::vector<ClusterMember> members_ GNOMON_GUARDED_BY(mu_);  // sorted by instance
};

}  // namespace gnomon::engine

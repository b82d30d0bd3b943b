// SPDX-License-Identifier: Apache-2.0
// The engine in a cluster (docs/cluster.md): this instance's sources forward their messages to
// the ingress topic through a ClusterIngress; the ingress consumer, in the cluster's consumer
// group, takes the partitions Kafka assigns this instance and feeds their messages to the
// workers as any Kafka source does (offsets committed after the effects are durable).
#include <fmt/format.h>

#include "cluster_ingress.h"
#include "engine_impl.h"
#include "gnomon/core/log.h"

namespace gnomon::engine {

Status Engine::Impl::InitCluster() {
  const AppConfig::Cluster& cl = config_.cluster;
  if (!cl.enabled || options_.mode != Mode::kRun) {
    return {};
  }
  SinkFactory* sink_factory = registry_.sink("kafka");
  SourceFactory* source_factory = registry_.source("kafka");
  if (sink_factory == nullptr || source_factory == nullptr) {
    return FailedPrecondition("cluster: this build has no kafka connector");
  }
  const std::string topic = cl.IngressTopic();
  cluster_ingress_ =
      std::make_unique<ClusterIngress>(*this, topic, cl.partitions, source_names_, metrics_);

  // The producer of the ingress records (created with P partitions if missing; main() refused
  // to start if it exists with another count).
  ConfigValue out;
  out.SetKind(ConfigValue::Kind::kMap);
  out.AddField("name", ConfigValue::Scalar("cluster-ingress"));
  out.AddField("topic", ConfigValue::Scalar(topic));
  ConfigValue create;
  create.SetKind(ConfigValue::Kind::kMap);
  create.AddField("partitions", ConfigValue::Scalar(std::to_string(cl.partitions)));
  out.AddField("create", std::move(create));
  PluginContext octx{metrics_,         *cluster_ingress_, clock_,        config_.data_dir,
                     config_.base_dir, "cluster-ingress", cl.connection, 1};
  GNOMON_ASSIGN_OR_RETURN(cluster_sink_, sink_factory->Create(out, octx));
  cluster_ingress_->SetSink(cluster_sink_.get());

  // The consumer of this instance's partitions of it.
  ConfigValue in;
  in.SetKind(ConfigValue::Kind::kMap);
  in.AddField("name", ConfigValue::Scalar("cluster"));
  in.AddField("topics", ConfigValue::Scalar(topic));
  in.AddField("group", ConfigValue::Scalar(cl.group));
  in.AddField("device", ConfigValue::Scalar("key"));
  in.AddField("topic_header", ConfigValue::Scalar("gnomon-source-topic"));
  // Static membership: a restarted instance (same id, back within the session timeout) takes
  // its partitions back without moving anyone else's. Cooperative-sticky: a rebalance moves
  // only the partitions that change owner; the others keep running.
  ConfigValue props;
  props.SetKind(ConfigValue::Kind::kMap);
  props.AddField("group.instance.id", ConfigValue::Scalar(cl.instance_id));
  props.AddField("partition.assignment.strategy", ConfigValue::Scalar("cooperative-sticky"));
  in.AddField("properties", std::move(props));
  PluginContext ictx{metrics_,         *this,     clock_,        config_.data_dir,
                     config_.base_dir, "cluster", cl.connection, 1};
  ictx.shared = &shared_;
  ictx.reserved_topic_prefixes = config_.reserved_topic_prefixes;
  GNOMON_ASSIGN_OR_RETURN(auto src, source_factory->Create(in, ictx));
  cluster_source_ = sources_.size();
  sources_.push_back(std::move(src));
  source_names_.emplace_back("cluster");
  source_counters_["cluster"] = metrics_.GetCounter(
      "gnomon_source_messages_total", "Messages taken in, by source", {{"source", "cluster"}});
  log::Info("cluster member", {{"cluster", cl.name},
                               {"instance", cl.instance_id},
                               {"group", cl.group},
                               {"partitions", std::to_string(cl.partitions)},
                               {"ingress", topic}});
  return {};
}

void Engine::Impl::SetClusterContext(PluginContext& ctx) const {
  if (config_.cluster.enabled) {
    ctx.instance_id = config_.cluster.instance_id;
    ctx.share_group = config_.cluster.group;
  }
}

Ingest& Engine::Impl::IngestFor(size_t source) {
  if (cluster_ingress_ && source != cluster_source_) {
    return *cluster_ingress_;
  }
  return *this;
}

}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include "cluster_ingress.h"

#include <fmt/format.h>

#include <utility>

#include "gnomon/core/partition.h"

namespace gnomon::engine {
namespace {

// Releases a forwarded message's delivery once its dead letter is durable (or abandons it).
class ReleaseOnAck final : public AckHandle {
 public:
  explicit ReleaseOnAck(Delivery* d) : d_(d) {}
  ~ReleaseOnAck() override {
    if (d_ != nullptr) {
      Abandon();
    }
  }
  void Ack() override { std::exchange(d_, nullptr)->Release(); }
  void Abandon() override {
    Delivery* d = std::exchange(d_, nullptr);
    d->Mark(Delivery::kAbandoned);
    d->Release();
  }

 private:
  Delivery* d_;
};

}  // namespace

ClusterIngress::ClusterIngress(Ingest& engine, std::string topic, int32_t partitions,
                               const std::vector<std::string>& sources, MetricsRegistry& metrics)
    : engine_(engine), topic_(std::move(topic)), partitions_(partitions) {
  for (const std::string& source : sources) {
    auto c = [&](const char* outcome) {
      return metrics.GetCounter(
          "gnomon_cluster_ingress_total",
          "Messages a source forwarded to the cluster's ingress topic, by outcome",
          {{"source", source}, {"outcome", outcome}});
    };
    counters_[source] = {c("forwarded"), c("dead_lettered"), c("cancelled")};
  }
}

void ClusterIngress::Count(const std::string* source, Outcome o) {
  if (source == nullptr) {
    return;
  }
  if (auto it = counters_.find(*source); it != counters_.end()) {
    it->second[o]->Inc();
  }
}

bool ClusterIngress::Submit(Message&& m, std::unique_ptr<AckHandle> ack) {
  if (m.topic.starts_with(kOwnTopics)) {
    // (At the owner, a record on these topics is taken as gnomon's own: a keyed window's event.)
    std::string why = fmt::format("{} is one of gnomon's own topics ({}...)", m.topic, kOwnTopics);
    engine_.Reject(std::move(m), std::move(ack), "reserved_topic", why);
    return true;
  }
  Forward(std::move(m), new Delivery(nullptr, ack.release()));  // acks (or abandons) when done
  return true;
}

void ClusterIngress::SubmitOwn(Message&& m, Delivery* hold) {
  Forward(std::move(m), new Delivery(nullptr, new ReleaseOnAck(hold)));
}

void ClusterIngress::Forward(Message&& m, Delivery* d) {
  Record r;
  r.partition = KafkaPartitionOf(m.device, partitions_);
  r.topic = topic_;
  r.key = m.device;
  r.json = false;  // the payload as it came, byte for byte
  r.payload = std::move(m.payload);
  r.headers = std::move(m.headers);
  r.device = std::move(m.device);
  r.source_topic = std::move(m.topic);  // becomes the `gnomon-source-topic` header
  r.source = m.source;
  r.ts_ms = m.ts_ms;
  r.delivery = d;
  sink_->Send(std::move(r));
}

void ClusterIngress::Reject(Message&& m, std::unique_ptr<AckHandle> ack, std::string_view reason,
                            std::string_view error) {
  engine_.Reject(std::move(m), std::move(ack), reason, error);
}

void ClusterIngress::Report(Record& record, const Status& status) {
  Delivery* d = std::exchange(record.delivery, nullptr);
  if (status.ok()) {
    Count(record.source, kForwarded);
    d->Release();
    return;
  }
  if (status.code() == StatusCode::kCancelled) {
    Count(record.source, kCancelled);
    d->Mark(Delivery::kAbandoned);
    d->Release();
    return;
  }
  Count(record.source, kDeadLettered);
  Message m;
  m.topic = std::move(record.source_topic);
  m.device = std::move(record.device);
  m.payload = std::move(record.payload);
  m.headers = std::move(record.headers);
  m.source = record.source;
  m.ts_ms = record.ts_ms;
  engine_.Reject(std::move(m), std::make_unique<ReleaseOnAck>(d), "ingress", status.message());
}

}  // namespace gnomon::engine

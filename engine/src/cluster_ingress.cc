// SPDX-License-Identifier: Apache-2.0
#include "cluster_ingress.h"

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
                               MetricsRegistry& metrics)
    : engine_(engine), topic_(std::move(topic)), partitions_(partitions) {
  auto c = [&](const char* outcome) {
    return metrics.GetCounter("gnomon_cluster_ingress_total",
                              "Messages forwarded to the cluster's ingress topic, by outcome",
                              {{"outcome", outcome}});
  };
  forwarded_ = c("forwarded");
  failed_ = c("dead_lettered");
  cancelled_ = c("cancelled");
}

bool ClusterIngress::Submit(Message&& m, std::unique_ptr<AckHandle> ack) {
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
  r.delivery = new Delivery(nullptr, ack.release());  // acks (or abandons) when it finishes
  sink_->Send(std::move(r));
  return true;
}

void ClusterIngress::Reject(Message&& m, std::unique_ptr<AckHandle> ack, std::string_view reason,
                            std::string_view error) {
  engine_.Reject(std::move(m), std::move(ack), reason, error);
}

void ClusterIngress::Report(Record& record, const Status& status) {
  Delivery* d = std::exchange(record.delivery, nullptr);
  if (status.ok()) {
    forwarded_->Inc();
    d->Release();
    return;
  }
  if (status.code() == StatusCode::kCancelled) {
    cancelled_->Inc();
    d->Mark(Delivery::kAbandoned);
    d->Release();
    return;
  }
  failed_->Inc();
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

// SPDX-License-Identifier: Apache-2.0
#include "effect_printer.h"

#include <unistd.h>

#include <mutex>

#include "gnomon/core/json.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/record.h"
#include "gnomon/core/sink.h"

namespace gnomon::engine {
namespace {

Mutex g_stdout_mu;  // one line at a time across printers

class EffectPrinter final : public Sink {
 public:
  EffectPrinter(std::string kind, std::string name, DeliveryReporter& reporter)
      : kind_(std::move(kind)), name_(std::move(name)), reporter_(reporter) {}

  // gnomon::Sink
  Status Start() override { return {}; }

  void Send(Record&& r) override {
    std::string line;
    json::ObjectWriter w(line);
    w.Field("effect", kind_);
    if (kind_ == "publish") {
      w.Field("topic", r.topic);
    } else {
      w.Field("sink", name_);
      w.Field("key", r.key);
      if (!r.topic.empty()) {
        w.Field("topic", r.topic);
      }
    }
    w.Field("rule", r.rule).Field("device", r.device);
    if (r.json) {
      w.FieldRaw(kind_ == "publish" ? "payload" : "record", r.payload);
    } else {
      w.Field(kind_ == "publish" ? "payload" : "record", r.payload);
    }
    w.Close();
    line += '\n';
    {
      MutexLock lock(g_stdout_mu);
      size_t off = 0;
      while (off < line.size()) {
        ssize_t n = ::write(STDOUT_FILENO, line.data() + off, line.size() - off);
        if (n <= 0) {
          break;
        }
        off += static_cast<size_t>(n);
      }
    }
    reporter_.Report(r, Status());
  }

  void Stop(Deadline) override {}

 private:
  std::string kind_;
  std::string name_;
  DeliveryReporter& reporter_;
};

}  // namespace

std::unique_ptr<Sink> NewEffectPrinter(std::string kind, std::string name,
                                       DeliveryReporter& reporter) {
  return std::make_unique<EffectPrinter>(std::move(kind), std::move(name), reporter);
}

}  // namespace gnomon::engine

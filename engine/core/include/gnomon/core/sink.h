// SPDX-License-Identifier: Apache-2.0
// Sink: what connectors implement to take records out of gnomon.
#pragma once

#include <chrono>
#include <cstddef>

#include "gnomon/core/record.h"
#include "gnomon/core/status.h"

namespace gnomon {

using Deadline = std::chrono::steady_clock::time_point;

class Sink {
 public:
  virtual ~Sink() = default;
  virtual Status Start() = 0;
  // Takes `record`. May block while the sink is at capacity: that is the back-pressure that
  // slows workers and, through them, sources. Thread-safe.
  virtual void Send(Record&& record) = 0;
  // Delivers what is queued until `deadline`, then reports the rest as kCancelled.
  virtual void Stop(Deadline deadline) = 0;
  virtual bool Ready() const { return true; }
  virtual size_t QueueDepth() const { return 0; }
};

}  // namespace gnomon

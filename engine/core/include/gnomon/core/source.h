// SPDX-License-Identifier: Apache-2.0
// Source: what connectors implement to bring messages in; Ingest: what they hand them to.
#pragma once

#include <memory>
#include <string_view>

#include "gnomon/core/message.h"
#include "gnomon/core/status.h"

namespace gnomon {

// Implemented by the engine; what sources hand messages to.
class Ingest {
 public:
  virtual ~Ingest() = default;
  // Takes a message with its acknowledgement handle (may be null). Blocks while the engine is
  // at capacity. Returns false when the engine is stopping (the message was not taken; the
  // handle was abandoned and deleted).
  virtual bool Submit(Message&& m, std::unique_ptr<AckHandle> ack) = 0;
  // A message the source could not route (no device id, oversize): counted and dead-lettered.
  virtual void Reject(Message&& m, std::unique_ptr<AckHandle> ack, std::string_view reason,
                      std::string_view error) = 0;
};

class Source {
 public:
  virtual ~Source() = default;
  virtual Status Start(Ingest& ingest) = 0;
  // Stops taking messages. After it returns, no more Submit calls come from this source.
  virtual void Stop() = 0;
  virtual bool Ready() const { return true; }
  // True once a finite source (a file) has submitted everything.
  virtual bool Finished() const { return false; }
};

}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
// Source: what connectors implement to bring messages in; Ingest: what they hand them to.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

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
  // As Submit for each of `batch` in order (messages without acknowledgement handles), moving
  // from them; an engine hands them to its workers together, one wake-up per worker rather than
  // one per message. Returns false when the engine is stopping (what was not taken is dropped).
  virtual bool SubmitBatch(std::vector<Message>& batch) {
    for (auto& m : batch) {
      if (!Submit(std::move(m), nullptr)) {
        return false;
      }
    }
    return true;
  }
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

// SPDX-License-Identifier: Apache-2.0
// SharedObjects: what connectors of one engine share, keyed by what they have in common (a
// connection's config). The Kafka source that runs exactly-once and the Kafka sinks of its
// connection share one transactional producer this way.
#pragma once

#include <map>
#include <memory>

#include "gnomon/core/mutex.h"

namespace gnomon {

class SharedObjects {
 public:
  // The object kept under `key`, made by `make()` on first use. Every user of a key must ask
  // for the same type T.
  template <typename T, typename Make>
  std::shared_ptr<T> Get(const void* key, Make make) {
    MutexLock lock(mu_);
    std::shared_ptr<void>& slot = objects_[key];
    if (slot == nullptr) {
      slot = std::shared_ptr<T>(make());
    }
    return std::static_pointer_cast<T>(slot);
  }

 private:
  Mutex mu_;
  std::map<const void*, std::shared_ptr<void>> objects_ GNOMON_GUARDED_BY(mu_);
};

}  // namespace gnomon

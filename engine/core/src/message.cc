// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/message.h"

namespace gnomon {

void Delivery::Finish() {
  if (ack_ != nullptr) {
    if (flags() & kAbandoned) {
      ack_->Abandon();
    } else {
      ack_->Acknowledge(flags());
    }
  }
  if (observer_ != nullptr) {
    observer_->OnDeliveryFinished(*this);
  }
  delete ack_;
  delete this;
}

}  // namespace gnomon

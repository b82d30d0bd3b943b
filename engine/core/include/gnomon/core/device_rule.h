// SPDX-License-Identifier: Apache-2.0
// DeviceRule: how a source finds the device id of a message.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "gnomon/core/message.h"
#include "gnomon/core/status.h"

namespace gnomon {

// How a source finds the device id: `topic[N]`, `payload.FIELD` (dotted path) or `key`.
class DeviceRule {
 public:
  static Result<DeviceRule> Parse(std::string_view spec);
  // The device id of `m`, or an error saying why there is none.
  Result<std::string> Extract(const Message& m) const;
  const std::string& spec() const { return spec_; }

 private:
  enum class Kind { kTopic, kPayload, kKey };
  Kind kind_ = Kind::kTopic;
  int level_ = 0;
  std::vector<std::string> path_;
  std::string spec_;
};

}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <memory>
#include <string>

#include "gnomon/core/plugin.h"

namespace gnomon::connectors {

struct FileSourceConfig {
  std::string path;
  DeviceRule device;
  size_t max_payload_bytes = 1 << 20;
};

struct FileSinkConfig {
  std::string path;
  bool fsync = true;
  int64_t linger_ms = 2;
  size_t queue = 8192;
};

std::unique_ptr<Source> NewFileSource(FileSourceConfig config, PluginContext& ctx);
std::unique_ptr<Sink> NewFileSink(FileSinkConfig config, PluginContext& ctx);

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <memory>
#include <string>

#include "gnomon/core/device_rule.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/sink.h"
#include "gnomon/core/source.h"

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
  // Rotation: past max_bytes the file becomes path.1 (path.1 becomes path.2, ...); at most
  // `keep` rotated files stay, the oldest go. 0: one file that grows without bound.
  uint64_t max_bytes = 0;
  int keep = 1;
  // Free space to leave on the file's filesystem for others (shadows, outboxes).
  uint64_t min_free_bytes = 0;
  // When a write would eat into min_free_bytes or fails for lack of space: wait (retry until
  // it fits) or drop the batch, counted (for records whose loss is acceptable: dead letters).
  bool drop_when_full = false;
};

std::unique_ptr<Source> NewFileSource(FileSourceConfig config, PluginContext& ctx);
std::unique_ptr<Sink> NewFileSink(FileSinkConfig config, PluginContext& ctx);

}  // namespace gnomon::connectors

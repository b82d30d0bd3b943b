// SPDX-License-Identifier: Apache-2.0
#include "file_internal.h"
#include "gnomon/connectors/file.h"
#include "gnomon/core/device_rule.h"
#include "gnomon/core/factory.h"
#include "gnomon/core/path.h"
#include "gnomon/core/plugin_context.h"

namespace gnomon::connectors {
namespace {

class FileSourceFactory final : public TypedSourceFactory<FileSourceConfig> {
 public:
  std::string_view schema() const override { return "sources/file.json"; }
  void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const override {
    auto rule = DeviceRule::Parse(cfg.GetString("device", "topic[2]"));
    if (!rule.ok()) {
      errors.Add(cfg.Get("device"), path + ".device", rule.status().message());
    }
  }
  Result<FileSourceConfig> Parse(const ConfigValue& cfg, const PluginContext& ctx) const override {
    FileSourceConfig c;
    c.path = ResolvePath(ctx.base_dir, cfg.GetString("path"));
    GNOMON_ASSIGN_OR_RETURN(c.device, DeviceRule::Parse(cfg.GetString("device", "topic[2]")));
    c.max_payload_bytes = static_cast<size_t>(cfg.GetInt("max_payload_bytes", 1 << 20));
    return c;
  }
  Result<std::unique_ptr<Source>> CreateTyped(FileSourceConfig c, PluginContext& ctx) override {
    return NewFileSource(std::move(c), ctx);
  }
};

class FileSinkFactory final : public TypedSinkFactory<FileSinkConfig> {
 public:
  std::string_view schema() const override { return "sinks/file.json"; }
  Result<FileSinkConfig> Parse(const ConfigValue& cfg, const PluginContext& ctx) const override {
    FileSinkConfig c;
    c.path = ResolvePath(ctx.base_dir, cfg.GetString("path"));
    c.fsync = cfg.GetBool("fsync", true);
    c.linger_ms = cfg.GetInt("linger_ms", 2);
    c.queue = static_cast<size_t>(cfg.GetInt("queue", 8192));
    c.max_bytes = static_cast<uint64_t>(cfg.GetInt("max_mb", 0)) << 20;
    c.keep = static_cast<int>(cfg.GetInt("keep", 1));
    c.min_free_bytes = static_cast<uint64_t>(cfg.GetInt("min_free_mb", 0)) << 20;
    c.drop_when_full = cfg.GetString("when_full", "wait") == "drop";
    return c;
  }
  Result<std::unique_ptr<Sink>> CreateTyped(FileSinkConfig c, PluginContext& ctx) override {
    return NewFileSink(std::move(c), ctx);
  }
};

}  // namespace

void RegisterFileConnector(Registry& registry) {
  registry.AddSource("file", std::make_unique<FileSourceFactory>());
  registry.AddSink("file", std::make_unique<FileSinkFactory>());
}

}  // namespace gnomon::connectors

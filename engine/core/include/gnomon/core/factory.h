// SPDX-License-Identifier: Apache-2.0
// SourceFactory and SinkFactory: how connectors are created from their config.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "gnomon/core/config.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/sink.h"
#include "gnomon/core/source.h"
#include "gnomon/core/status.h"

namespace gnomon {

class SourceFactory {
 public:
  virtual ~SourceFactory() = default;
  // The embedded schema for entries of this type, e.g. "sources/mqtt.json" (or, starting
  // with '{', the schema's JSON text itself).
  virtual std::string_view schema() const = 0;
  // Cross-field checks after schema validation; add problems to `errors` with `path`.
  virtual void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const {}
  virtual Result<std::unique_ptr<Source>> Create(const ConfigValue& cfg, PluginContext& ctx) = 0;
};

class SinkFactory {
 public:
  virtual ~SinkFactory() = default;
  virtual std::string_view schema() const = 0;
  virtual void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const {}
  virtual Result<std::unique_ptr<Sink>> Create(const ConfigValue& cfg, PluginContext& ctx) = 0;
};

// Parse a plugin's typed config once, then create from it.
template <typename Config>
class TypedSinkFactory : public SinkFactory {
 public:
  virtual Result<Config> Parse(const ConfigValue& cfg, const PluginContext& ctx) const = 0;
  virtual Result<std::unique_ptr<Sink>> CreateTyped(Config config, PluginContext& ctx) = 0;
  Result<std::unique_ptr<Sink>> Create(const ConfigValue& cfg, PluginContext& ctx) final {
    GNOMON_ASSIGN_OR_RETURN(Config config, Parse(cfg, ctx));
    return CreateTyped(std::move(config), ctx);
  }
};

template <typename Config>
class TypedSourceFactory : public SourceFactory {
 public:
  virtual Result<Config> Parse(const ConfigValue& cfg, const PluginContext& ctx) const = 0;
  virtual Result<std::unique_ptr<Source>> CreateTyped(Config config, PluginContext& ctx) = 0;
  Result<std::unique_ptr<Source>> Create(const ConfigValue& cfg, PluginContext& ctx) final {
    GNOMON_ASSIGN_OR_RETURN(Config config, Parse(cfg, ctx));
    return CreateTyped(std::move(config), ctx);
  }
};

}  // namespace gnomon

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

// How entries of one connector type are made; Product is Source or Sink.
template <typename Product>
class Factory {
 public:
  virtual ~Factory() = default;
  // The embedded schema for entries of this type, e.g. "sources/mqtt.json" (or, starting
  // with '{', the schema's JSON text itself).
  virtual std::string_view schema() const = 0;
  // Cross-field checks after schema validation; add problems to `errors` with `path`.
  virtual void Check(const ConfigValue& cfg, const std::string& path, ConfigErrors& errors) const {}
  virtual Result<std::unique_ptr<Product>> Create(const ConfigValue& cfg, PluginContext& ctx) = 0;
};

using SourceFactory = Factory<Source>;
using SinkFactory = Factory<Sink>;

// Parses a connector's typed config once, then creates from it.
template <typename Product, typename Config>
class TypedFactory : public Factory<Product> {
 public:
  virtual Result<Config> Parse(const ConfigValue& cfg, const PluginContext& ctx) const = 0;
  virtual Result<std::unique_ptr<Product>> CreateTyped(Config config, PluginContext& ctx) = 0;
  Result<std::unique_ptr<Product>> Create(const ConfigValue& cfg, PluginContext& ctx) final {
    GNOMON_ASSIGN_OR_RETURN(Config config, Parse(cfg, ctx));
    return CreateTyped(std::move(config), ctx);
  }
};

template <typename Config>
using TypedSourceFactory = TypedFactory<Source, Config>;
template <typename Config>
using TypedSinkFactory = TypedFactory<Sink, Config>;

}  // namespace gnomon

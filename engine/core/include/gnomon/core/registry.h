// SPDX-License-Identifier: Apache-2.0
// Registry: connector types by name.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "gnomon/core/factory.h"

namespace gnomon {

// Connector types by name. Filled explicitly by RegisterBuiltinConnectors(); no static init.
class Registry {
 public:
  void AddSource(std::string type, std::unique_ptr<SourceFactory> f) {
    sources_[std::move(type)] = std::move(f);
  }
  void AddSink(std::string type, std::unique_ptr<SinkFactory> f) {
    sinks_[std::move(type)] = std::move(f);
  }
  // The schema of a connection of `type` (e.g. "connections/mqtt.json").
  void AddConnection(std::string type, std::string schema) {
    connections_[std::move(type)] = std::move(schema);
  }
  SourceFactory* source(std::string_view type) const {
    auto it = sources_.find(std::string(type));
    return it == sources_.end() ? nullptr : it->second.get();
  }
  SinkFactory* sink(std::string_view type) const {
    auto it = sinks_.find(std::string(type));
    return it == sinks_.end() ? nullptr : it->second.get();
  }
  const std::string* connection_schema(std::string_view type) const {
    auto it = connections_.find(std::string(type));
    return it == connections_.end() ? nullptr : &it->second;
  }
  const std::map<std::string, std::unique_ptr<SourceFactory>>& sources() const { return sources_; }
  const std::map<std::string, std::unique_ptr<SinkFactory>>& sinks() const { return sinks_; }
  const std::map<std::string, std::string>& connections() const { return connections_; }

 private:
  std::map<std::string, std::unique_ptr<SourceFactory>> sources_;
  std::map<std::string, std::unique_ptr<SinkFactory>> sinks_;
  std::map<std::string, std::string> connections_;
};

}  // namespace gnomon

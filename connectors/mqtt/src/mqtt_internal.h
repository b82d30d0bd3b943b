// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gnomon/core/device_rule.h"
#include "gnomon/core/factory.h"
#include "mqtt_client.h"

namespace gnomon::connectors {

struct MqttSourceConfig {
  MqttConnectionConfig connection;
  std::string client_id;
  std::vector<std::string> topics;
  int qos = 1;
  DeviceRule device;
  size_t max_payload_bytes = 1 << 20;
};

struct MqttSinkConfig {
  MqttConnectionConfig connection;
  std::string client_id;
  std::string topic;
  int qos = 1;
  bool retain = false;
  int max_inflight = 1024;
  size_t queue = 8192;
};

std::unique_ptr<SinkFactory> NewMqttSinkFactory();

}  // namespace gnomon::connectors

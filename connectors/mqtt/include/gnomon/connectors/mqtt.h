// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "gnomon/core/registry.h"

namespace gnomon::connectors {

// Registers connection, source and sink type "mqtt" (MQTT 3.1.1 and 5, a client of our own).
void RegisterMqttConnector(Registry& registry);

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "gnomon/core/registry.h"

namespace gnomon::connectors {

// Registers connection, source and sink type "mqtt" (libmosquitto).
void RegisterMqttConnector(Registry& registry);

}  // namespace gnomon::connectors

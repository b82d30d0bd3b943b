// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "gnomon/core/plugin.h"

namespace gnomon::connectors {

// Registers connection, source and sink type "kafka" (librdkafka).
void RegisterKafkaConnector(Registry& registry);

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
#include "gnomon/connectors/builtin.h"

#include "gnomon/connectors/file.h"
#include "gnomon/connectors/http.h"
#include "gnomon/connectors/kafka.h"
#include "gnomon/connectors/sql.h"
#ifdef GNOMON_WITH_MQTT
#include "gnomon/connectors/mqtt.h"
#endif

namespace gnomon::connectors {

void RegisterBuiltinConnectors(Registry& registry) {
  RegisterFileConnector(registry);
  RegisterKafkaConnector(registry);
  RegisterHttpConnector(registry);
  RegisterSqlConnector(registry);
#ifdef GNOMON_WITH_MQTT
  RegisterMqttConnector(registry);
#endif
}

}  // namespace gnomon::connectors

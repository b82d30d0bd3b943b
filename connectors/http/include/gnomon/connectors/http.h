// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "gnomon/core/registry.h"

namespace gnomon::connectors {

// Registers sink type "http" (webhooks through the durable outbox) and source type "http"
// (POST /v1/ingest/{topic...} on the API listener).
void RegisterHttpConnector(Registry& registry);

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "gnomon/core/registry.h"

namespace gnomon::connectors {

// Registers source and sink type "file" (JSON lines).
void RegisterFileConnector(Registry& registry);

}  // namespace gnomon::connectors

// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "gnomon/core/registry.h"

namespace gnomon::connectors {

// Registers every connector built into this binary. Explicit: no static initializers.
void RegisterBuiltinConnectors(Registry& registry);

}  // namespace gnomon::connectors

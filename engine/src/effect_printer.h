// SPDX-License-Identifier: Apache-2.0
// The sink `gnomon replay --dry-run` puts in place of every real one: each record becomes one
// JSON line on stdout describing the effect, and is reported delivered.
#pragma once

#include <memory>
#include <string>

#include "gnomon/core/record.h"
#include "gnomon/core/sink.h"

namespace gnomon::engine {

// `kind`: "emit", "publish" or "dead_letter"; `name`: the sink it stands in for.
std::unique_ptr<Sink> NewEffectPrinter(std::string kind, std::string name,
                                       DeliveryReporter& reporter);

}  // namespace gnomon::engine

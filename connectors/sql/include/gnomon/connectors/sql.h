// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "gnomon/core/registry.h"

namespace gnomon::connectors {

// Registers sink type "sql" (SQLite files, PostgreSQL, MariaDB and MySQL).
void RegisterSqlConnector(Registry& registry);

}  // namespace gnomon::connectors

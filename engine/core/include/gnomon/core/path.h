// SPDX-License-Identifier: Apache-2.0
// Paths in config, relative to the config file.
#pragma once

#include <string>

namespace gnomon {

// `path` relative to `base_dir` unless absolute (or "-").
std::string ResolvePath(const std::string& base_dir, const std::string& path);

}  // namespace gnomon

// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/path.h"

namespace gnomon {

std::string ResolvePath(const std::string& base_dir, const std::string& path) {
  if (path.empty() || path[0] == '/' || path == "-" || base_dir.empty() || base_dir == ".") {
    return path;
  }
  return base_dir + "/" + path;
}

}  // namespace gnomon

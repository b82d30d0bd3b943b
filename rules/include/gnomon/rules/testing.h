// SPDX-License-Identifier: Apache-2.0
// Running the tests that ship with rules: each rule's `tests` table and `*.test.lua` files
// beside the rule files (`return { rule = "name", tests = { ... } }`).
#pragma once

#include <string>
#include <vector>

#include "gnomon/core/status.h"

namespace gnomon::rules {

struct TestCaseResult {
  std::string rule;
  std::string file;  // where the test is written
  int line = 0;      // the test's line (0 when unknown)
  std::string name;
  bool passed = false;
  std::string failure;  // why, with expected/actual JSON
  double seconds = 0;
};

struct TestReport {
  std::vector<TestCaseResult> cases;
  int passed() const;
  int failed() const;
  // Human-readable: one line per test, details for failures, a closing "N passed, N failed".
  std::string Text(bool verbose) const;
  // JUnit XML for CI systems.
  std::string JUnitXml() const;
};

struct TestOptions {
  // Sinks rules may emit to; empty: any name (no config given).
  std::vector<std::string> sinks;
  // Folders `require` loads modules from.
  std::vector<std::string> lib_dirs;
};

// Loads `paths` (rule files, or directories whose *.lua files are rules) and runs every test.
// A rule file that does not load is an error; a failing test is a failed case in the report.
Result<TestReport> RunRuleTests(const std::vector<std::string>& paths, const TestOptions& options);

}  // namespace gnomon::rules

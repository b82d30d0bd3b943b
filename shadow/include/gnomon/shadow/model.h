// SPDX-License-Identifier: Apache-2.0
// Thing models (docs/thing-models.md, Alibaba TSL style): a product's properties, events and
// services with typed data. This part loads and checks model files and validates shadow state
// against the properties; binding devices and services live in the engine.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/core/status.h"
#include "gnomon/shadow/value.h"

namespace gnomon::shadow {

// One problem: `{"path": "/targetTemp", "error": "TM_OUT_OF_RANGE", "message": "..."}`.
struct ModelProblem {
  std::string path;
  std::string error;
  std::string message;
};

enum class ValidationMode { kStrict, kWeak, kOff };

// timeoutMs of a service is at most a day.
inline constexpr int64_t kMaxServiceTimeoutMs = 86'400'000;

// A service of a model (its inputData and outputData stay inside the model).
struct ServiceInfo {
  std::string id;
  bool sync = false;          // callType: sync callers wait for the reply
  int64_t timeout_ms = 30000;  // from SENT to the reply
};
enum class StateSection { kReported, kDesired };

class ThingModel {
 public:
  // Parses and checks a model file. On failure the status lists every problem, one per line,
  // as "FILE: json.path: message" (e.g. "m.json: properties[2].dataType.specs.min: must be <= max").
  static Result<std::shared_ptr<const ThingModel>> Parse(std::string_view json,
                                                         const std::string& file);
  ~ThingModel();

  const std::string& id() const;       // modelId
  const std::string& version() const;  // version
  const std::string& ref() const;      // "modelId@version" (modelId alone without a version)
  ValidationMode mode() const;
  // match.devicePrefix (empty: every thing) and match.topic (empty: none).
  const std::string& device_prefix() const;
  const std::string& topic() const;
  bool Matches(std::string_view thing) const;

  // Problems of a patch to `section` (a JSON merge patch: null deletes and is always allowed).
  std::vector<ModelProblem> Validate(const Value& patch, StateSection section) const;
  // The type (info, alert, error) of the event `identifier`, or null when the model has none.
  const std::string* EventType(std::string_view identifier) const;
  // Problems of an event post: `params` (an object) against the event's outputData (paths
  // /param...), or TM_UNKNOWN_IDENTIFIER for an event the model does not have.
  std::vector<ModelProblem> ValidateEvent(std::string_view identifier, const Value& params) const;
  // The service `identifier`, or null when the model has none.
  const ServiceInfo* Service(std::string_view identifier) const;
  // Problems of a service call's params (inputData) or of a reply's data (`output`: outputData),
  // paths /param...; TM_UNKNOWN_IDENTIFIER for a service the model does not have (whatever the
  // validation mode: a call needs a service to call).
  std::vector<ModelProblem> ValidateService(std::string_view identifier, const Value& data,
                                            bool output) const;
  // The properties as a JSON Schema (draft 2020-12) of the reported state.
  std::string JsonSchema() const;

  struct Impl;

 private:
  ThingModel();
  std::unique_ptr<Impl> impl_;
};

// The problems as the `details` JSON array of a MODEL_VALIDATION error.
std::string ProblemsJson(const std::vector<ModelProblem>& problems);

}  // namespace gnomon::shadow

// SPDX-License-Identifier: Apache-2.0
#include "gnomon/shadow/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include "gnomon/core/json.h"

namespace gnomon::shadow {
namespace {

enum class Type { kInt, kLong, kFloat, kDouble, kText, kDate, kBool, kEnum, kStruct, kArray };

struct DataType;
struct Field {
  std::string id;
  bool required = true;
  std::shared_ptr<DataType> type;
};

struct DataType {
  Type type = Type::kInt;
  std::optional<double> min, max, step;
  std::string unit;
  int64_t length = 10240;          // text
  std::set<int64_t> enum_keys;     // enum
  std::map<int64_t, std::string> enum_labels;
  std::vector<Field> fields;       // struct
  int64_t size = 512;              // array
  std::shared_ptr<DataType> item;  // array
};

struct Property {
  std::string id;
  bool readable = true;  // devices report it
  bool writable = true;  // the back end desires it
  std::shared_ptr<DataType> type;
};

// Collects "path: message" problems of the model file itself.
struct Checker {
  std::vector<std::string> problems;
  void Add(const std::string& path, const std::string& message) {
    problems.push_back(path + ": " + message);
  }
};

bool ValidIdentifier(std::string_view id) {
  if (id.empty() || id.size() > 64 || std::isdigit(static_cast<unsigned char>(id[0]))) {
    return false;
  }
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') {
      return false;
    }
  }
  return true;
}

std::optional<double> Number(const Value* v) {
  if (v == nullptr) {
    return std::nullopt;
  }
  if (v->is_number()) {
    return v->as_double();
  }
  if (v->kind() == Value::Kind::kString) {  // TSL files often quote numbers in specs
    char* end = nullptr;
    double d = std::strtod(v->as_string().c_str(), &end);
    if (end != v->as_string().c_str() && *end == '\0') {
      return d;
    }
  }
  return std::nullopt;
}

std::shared_ptr<DataType> ParseType(const Value* v, const std::string& path, Checker& c, int depth);

// The `identifier` of an entry at `path`, checked and unique among `seen` ("" on a problem).
std::string ParseIdentifier(const Value& entry, const std::string& path, std::set<std::string>& seen,
                            Checker& c) {
  const Value* id = entry.Find("identifier");
  if (id == nullptr || id->kind() != Value::Kind::kString || !ValidIdentifier(id->as_string())) {
    c.Add(path + ".identifier", "required: letters, digits and _, not starting with a digit");
    return "";
  }
  if (!seen.insert(id->as_string()).second) {
    c.Add(path + ".identifier", fmt::format("'{}' is used twice", id->as_string()));
    return "";
  }
  return id->as_string();
}

// A list of { identifier, dataType, required } (struct fields, event and service params).
void ParseFields(const Value& fields, const std::string& path, Checker& c, int depth,
                 std::vector<Field>& out) {
  if (fields.items().size() > 50) {
    c.Add(path, "at most 50 fields");
  }
  std::set<std::string> seen;
  for (size_t i = 0; i < fields.items().size(); ++i) {
    const Value& f = fields.items()[i];
    std::string fp = fmt::format("{}[{}]", path, i);
    Field field;
    field.id = ParseIdentifier(f, fp, seen, c);
    if (const Value* req = f.Find("required"); req != nullptr && req->kind() == Value::Kind::kBool) {
      field.required = req->as_bool();
    }
    field.type = ParseType(f.Find("dataType"), fp + ".dataType", c, depth + 1);
    out.push_back(std::move(field));
  }
}

void ParseNumericSpecs(const Value* specs, DataType& t, const std::string& path, Checker& c) {
  if (specs == nullptr) {
    return;
  }
  for (const char* key : {"min", "max", "step"}) {
    const Value* f = specs->Find(key);
    if (f == nullptr) {
      continue;
    }
    auto n = Number(f);
    if (!n) {
      c.Add(path + ".specs." + key, "must be a number");
      continue;
    }
    (std::string_view(key) == "min" ? t.min : std::string_view(key) == "max" ? t.max : t.step) = n;
  }
  if (t.min && t.max && *t.min > *t.max) {
    c.Add(path + ".specs.min", fmt::format("must be <= max ({} > {})", *t.min, *t.max));
  }
  if (t.step && *t.step <= 0) {
    c.Add(path + ".specs.step", "must be > 0");
  }
  if (const Value* u = specs->Find("unit"); u != nullptr && u->kind() == Value::Kind::kString) {
    t.unit = u->as_string();
  }
}

std::shared_ptr<DataType> ParseType(const Value* v, const std::string& path, Checker& c, int depth) {
  auto t = std::make_shared<DataType>();
  if (v == nullptr || !v->is_object()) {
    c.Add(path, "required: an object { type, specs }");
    return t;
  }
  if (depth > 8) {
    c.Add(path, "nested more than 8 levels");
    return t;
  }
  const Value* type = v->Find("type");
  static const std::map<std::string, Type, std::less<>> kTypes = {
      {"int", Type::kInt},   {"long", Type::kLong},     {"float", Type::kFloat},
      {"double", Type::kDouble}, {"text", Type::kText}, {"date", Type::kDate},
      {"bool", Type::kBool}, {"enum", Type::kEnum},     {"struct", Type::kStruct},
      {"array", Type::kArray}};
  auto it = type != nullptr && type->kind() == Value::Kind::kString ? kTypes.find(type->as_string())
                                                                     : kTypes.end();
  if (it == kTypes.end()) {
    c.Add(path + ".type",
          "must be one of int, long, float, double, text, date, bool, enum, struct, array");
    return t;
  }
  t->type = it->second;
  const Value* specs = v->Find("specs");
  std::string sp = path + ".specs";
  switch (t->type) {
    case Type::kInt:
    case Type::kLong:
    case Type::kFloat:
    case Type::kDouble:
      ParseNumericSpecs(specs, *t, path, c);
      break;
    case Type::kText:
      if (const Value* len = specs != nullptr ? specs->Find("length") : nullptr) {
        auto n = Number(len);
        if (!n || *n < 1 || *n > 10240 || *n != std::floor(*n)) {
          c.Add(sp + ".length", "must be an integer 1-10240");
        } else {
          t->length = static_cast<int64_t>(*n);
        }
      }
      break;
    case Type::kEnum:
      if (specs == nullptr || !specs->is_object() || specs->members().empty()) {
        c.Add(sp, "an enum needs its keys: { \"0\": \"off\", ... }");
      } else if (specs->members().size() > 100) {
        c.Add(sp, "at most 100 values");
      } else {
        for (const auto& [k, label] : specs->members()) {
          char* end = nullptr;
          long long key = std::strtoll(k.c_str(), &end, 10);
          if (k.empty() || *end != '\0') {
            c.Add(sp + "." + k, "enum keys are integers");
            continue;
          }
          t->enum_keys.insert(key);
          t->enum_labels[key] = label.kind() == Value::Kind::kString ? label.as_string() : "";
        }
      }
      break;
    case Type::kStruct: {
      const Value* fields = specs;
      if (fields == nullptr || !fields->is_array() || fields->items().empty()) {
        c.Add(sp, "a struct needs its fields: [ { identifier, dataType }, ... ]");
        break;
      }
      ParseFields(*fields, sp, c, depth, t->fields);
      break;
    }
    case Type::kArray:
      if (specs == nullptr || !specs->is_object()) {
        c.Add(sp, "an array needs { size, item: { type, specs } }");
        break;
      }
      if (const Value* size = specs->Find("size")) {
        auto n = Number(size);
        if (!n || *n < 1 || *n > 512 || *n != std::floor(*n)) {
          c.Add(sp + ".size", "must be an integer 1-512");
        } else {
          t->size = static_cast<int64_t>(*n);
        }
      }
      t->item = ParseType(specs->Find("item"), sp + ".item", c, depth + 1);
      break;
    case Type::kDate:
    case Type::kBool:
      break;
  }
  return t;
}

size_t CodePoints(std::string_view s) {
  size_t n = 0;
  for (unsigned char ch : s) {
    n += (ch & 0xC0) != 0x80 ? 1 : 0;
  }
  return n;
}

std::string Fmt(double d) { return fmt::format("{}", d); }

void Check(const Value& v, const DataType& t, const std::string& path,
           std::vector<ModelProblem>& out) {
  auto problem = [&](const char* error, std::string message) {
    out.push_back({path, error, std::move(message)});
  };
  auto range = [&](double d) {
    if (t.min && d < *t.min) {
      problem("TM_OUT_OF_RANGE", fmt::format("value {} is less than min {}", Fmt(d), Fmt(*t.min)));
    } else if (t.max && d > *t.max) {
      problem("TM_OUT_OF_RANGE",
              fmt::format("value {} is greater than max {}", Fmt(d), Fmt(*t.max)));
    } else if (t.step) {
      double k = (d - t.min.value_or(0)) / *t.step;
      if (std::fabs(k - std::round(k)) > 1e-9) {
        problem("TM_STEP_MISMATCH",
                fmt::format("value {} is not a multiple of step {}", Fmt(d), Fmt(*t.step)));
      }
    }
  };
  switch (t.type) {
    case Type::kInt:
    case Type::kLong: {
      if (v.kind() != Value::Kind::kInt) {
        problem("TM_TYPE_MISMATCH", fmt::format("expected an integer ({})",
                                                t.type == Type::kInt ? "int" : "long"));
        return;
      }
      if (t.type == Type::kInt && (v.as_int() < std::numeric_limits<int32_t>::min() ||
                                   v.as_int() > std::numeric_limits<int32_t>::max())) {
        problem("TM_OUT_OF_RANGE", fmt::format("value {} does not fit an int (32 bits)", v.as_int()));
        return;
      }
      range(static_cast<double>(v.as_int()));
      return;
    }
    case Type::kFloat:
    case Type::kDouble: {
      if (!v.is_number()) {
        problem("TM_TYPE_MISMATCH", "expected a number");
        return;
      }
      double d = v.as_double();
      if (!std::isfinite(d)) {
        problem("TM_NOT_FINITE", "expected a finite number");
        return;
      }
      if (t.type == Type::kFloat && std::fabs(d) > 3.4e38) {
        problem("TM_OUT_OF_RANGE", fmt::format("value {} does not fit a float", Fmt(d)));
        return;
      }
      range(d);
      return;
    }
    case Type::kText:
      if (v.kind() != Value::Kind::kString) {
        problem("TM_TYPE_MISMATCH", "expected a string");
      } else if (static_cast<int64_t>(CodePoints(v.as_string())) > t.length) {
        problem("TM_LENGTH_EXCEEDED", fmt::format("{} characters; at most {}",
                                                  CodePoints(v.as_string()), t.length));
      }
      return;
    case Type::kDate:
      if (v.kind() != Value::Kind::kInt || v.as_int() < 0) {
        problem("TM_TYPE_MISMATCH", "expected epoch milliseconds (an integer)");
      }
      return;
    case Type::kBool:
      if (v.kind() != Value::Kind::kBool &&
          !(v.kind() == Value::Kind::kInt && (v.as_int() == 0 || v.as_int() == 1))) {
        problem("TM_TYPE_MISMATCH", "expected true/false or 0/1");
      }
      return;
    case Type::kEnum:
      if (v.kind() != Value::Kind::kInt) {
        problem("TM_TYPE_MISMATCH", "expected an enum key (an integer)");
      } else if (!t.enum_keys.count(v.as_int())) {
        problem("TM_ENUM_INVALID", fmt::format("{} is not one of the enum's keys", v.as_int()));
      }
      return;
    case Type::kStruct: {
      if (!v.is_object()) {
        problem("TM_TYPE_MISMATCH", "expected an object");
        return;
      }
      for (const auto& [k, fv] : v.members()) {
        const auto& key = k;  // clang 14 cannot capture a structured binding
        auto it = std::find_if(t.fields.begin(), t.fields.end(),
                               [&](const Field& f) { return f.id == key; });
        if (it == t.fields.end()) {
          out.push_back({path + "/" + k, "TM_STRUCT_FIELD_UNKNOWN", "not a field of the struct"});
        } else {
          Check(fv, *it->type, path + "/" + k, out);
        }
      }
      for (const Field& f : t.fields) {
        if (f.required && v.Find(f.id) == nullptr) {
          out.push_back({path + "/" + f.id, "TM_REQUIRED_MISSING", "required field missing"});
        }
      }
      return;
    }
    case Type::kArray:
      if (!v.is_array()) {
        problem("TM_TYPE_MISMATCH", "expected an array");
        return;
      }
      if (static_cast<int64_t>(v.items().size()) > t.size) {
        problem("TM_ARRAY_SIZE_EXCEEDED",
                fmt::format("{} items; at most {}", v.items().size(), t.size));
        return;
      }
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (t.item) {
          Check(v.items()[i], *t.item, fmt::format("{}/{}", path, i), out);
        }
      }
      return;
  }
}

void AppendSchema(const DataType& t, std::string& out) {
  json::ObjectWriter w(out);
  auto numeric = [&](const char* type) {
    w.Field("type", type);
    if (t.min) {
      w.FieldRaw("minimum", Fmt(*t.min));
    }
    if (t.max) {
      w.FieldRaw("maximum", Fmt(*t.max));
    }
    if (t.step && !t.min) {
      w.FieldRaw("multipleOf", Fmt(*t.step));
    }
  };
  switch (t.type) {
    case Type::kInt:
    case Type::kLong:
      numeric("integer");
      break;
    case Type::kFloat:
    case Type::kDouble:
      numeric("number");
      break;
    case Type::kText:
      w.Field("type", "string").Field("maxLength", t.length);
      break;
    case Type::kDate:
      w.Field("type", "integer").Field("minimum", int64_t{0}).Field("description", "epoch ms");
      break;
    case Type::kBool:
      w.FieldRaw("type", R"(["boolean","integer"])").FieldRaw("enum", "[true,false,0,1]");
      break;
    case Type::kEnum: {
      std::string keys = "[";
      for (int64_t k : t.enum_keys) {
        keys += keys.size() > 1 ? "," : "";
        keys += std::to_string(k);
      }
      w.Field("type", "integer").FieldRaw("enum", keys + "]");
      break;
    }
    case Type::kStruct: {
      std::string props = "{", required = "[";
      for (const Field& f : t.fields) {
        props += props.size() > 1 ? "," : "";
        json::AppendQuoted(props, f.id);
        props += ':';
        AppendSchema(*f.type, props);
        if (f.required) {
          required += required.size() > 1 ? "," : "";
          json::AppendQuoted(required, f.id);
        }
      }
      w.Field("type", "object").FieldRaw("properties", props + "}").FieldRaw("required", required + "]")
          .FieldRaw("additionalProperties", "false");
      break;
    }
    case Type::kArray: {
      std::string item;
      if (t.item) {
        AppendSchema(*t.item, item);
      } else {
        item = "{}";
      }
      w.Field("type", "array").Field("maxItems", t.size).FieldRaw("items", item);
      break;
    }
  }
  w.Close();
}

}  // namespace

struct Event {
  std::string id;
  std::string type = "info";  // info | alert | error
  DataType params;            // a struct of the outputData
};

struct ServiceDef {
  ServiceInfo info;
  DataType input, output;  // structs of inputData and outputData
};

struct ThingModel::Impl {
  std::string id, version, device_prefix, topic;
  std::string ref;  // id@version (id alone without a version)
  ValidationMode mode = ValidationMode::kStrict;
  std::vector<Property> properties;
  std::vector<Event> events;
  std::vector<ServiceDef> services;

  const ServiceDef* FindService(std::string_view id) const {
    for (const ServiceDef& s : services) {
      if (s.info.id == id) {
        return &s;
      }
    }
    return nullptr;
  }
};

ThingModel::ThingModel() : impl_(std::make_unique<Impl>()) {}
ThingModel::~ThingModel() = default;

Result<std::shared_ptr<const ThingModel>> ThingModel::Parse(std::string_view json,
                                                            const std::string& file) {
  auto v = Value::Parse(json);
  if (!v.ok()) {
    return InvalidArgument(fmt::format("{}: {}", file, v.status().message()));
  }
  Checker c;
  std::shared_ptr<ThingModel> m(new ThingModel());
  Impl& im = *m->impl_;
  if (!v->is_object()) {
    return InvalidArgument(file + ": a thing model is a JSON object");
  }
  auto str = [&](std::string_view key, std::string& out, bool required) {
    const Value* f = v->Find(key);
    if (f == nullptr) {
      if (required) {
        c.Add(std::string(key), "required");
      }
      return;
    }
    if (f->kind() != Value::Kind::kString || f->as_string().empty()) {
      c.Add(std::string(key), "must be a non-empty string");
      return;
    }
    out = f->as_string();
  };
  str("modelId", im.id, true);
  str("version", im.version, false);
  if (const Value* match = v->Find("match")) {
    if (const Value* p = match->Find("devicePrefix"); p != nullptr && p->kind() == Value::Kind::kString) {
      im.device_prefix = p->as_string();
    }
    if (const Value* t = match->Find("topic"); t != nullptr && t->kind() == Value::Kind::kString) {
      im.topic = t->as_string();
    }
  }
  if (const Value* mode = v->Find("validation")) {
    std::string s = mode->kind() == Value::Kind::kString ? mode->as_string() : "";
    if (s == "strict" || s == "weak" || s == "off") {
      im.mode = s == "strict" ? ValidationMode::kStrict
                : s == "weak" ? ValidationMode::kWeak
                              : ValidationMode::kOff;
    } else {
      c.Add("validation", "must be strict, weak or off");
    }
  }
  std::set<std::string> seen;
  if (const Value* props = v->Find("properties")) {
    if (!props->is_array()) {
      c.Add("properties", "must be an array");
    } else {
      for (size_t i = 0; i < props->items().size(); ++i) {
        const Value& p = props->items()[i];
        std::string path = fmt::format("properties[{}]", i);
        Property prop;
        prop.id = ParseIdentifier(p, path, seen, c);
        std::string access = "rw";
        if (const Value* a = p.Find("accessMode")) {
          access = a->kind() == Value::Kind::kString ? a->as_string() : "?";
          if (access != "r" && access != "w" && access != "rw") {
            c.Add(path + ".accessMode", "must be r, w or rw");
          }
        }
        prop.readable = access.find('r') != std::string::npos;
        prop.writable = access.find('w') != std::string::npos;
        prop.type = ParseType(p.Find("dataType"), path + ".dataType", c, 0);
        im.properties.push_back(std::move(prop));
      }
    }
  }
  if (const Value* events = v->Find("events"); events != nullptr && !events->is_array()) {
    c.Add("events", "must be an array");
  } else if (events != nullptr) {
    std::set<std::string> seen;
    for (size_t i = 0; i < events->items().size(); ++i) {
      const Value& e = events->items()[i];
      std::string path = fmt::format("events[{}]", i);
      Event ev;
      ev.params.type = Type::kStruct;
      ev.id = ParseIdentifier(e, path, seen, c);
      if (const Value* type = e.Find("type")) {
        ev.type = type->kind() == Value::Kind::kString ? type->as_string() : "?";
        if (ev.type != "info" && ev.type != "alert" && ev.type != "error") {
          c.Add(path + ".type", "must be info, alert or error");
        }
      }
      if (const Value* out = e.Find("outputData")) {
        if (!out->is_array()) {
          c.Add(path + ".outputData", "must be an array of { identifier, dataType }");
        } else {
          ParseFields(*out, path + ".outputData", c, 0, ev.params.fields);
        }
      }
      im.events.push_back(std::move(ev));
    }
  }
  if (const Value* l = v->Find("services"); l != nullptr && !l->is_array()) {
    c.Add("services", "must be an array");
  } else if (l != nullptr) {
    std::set<std::string> seen;
    for (size_t i = 0; i < l->items().size(); ++i) {
      const Value& e = l->items()[i];
      std::string path = fmt::format("services[{}]", i);
      ServiceDef sv;
      sv.input.type = sv.output.type = Type::kStruct;
      sv.info.id = ParseIdentifier(e, path, seen, c);
      if (const Value* ct = e.Find("callType")) {
        std::string t = ct->kind() == Value::Kind::kString ? ct->as_string() : "?";
        if (t != "sync" && t != "async") {
          c.Add(path + ".callType", "must be sync or async");
        }
        sv.info.sync = t == "sync";
      }
      if (const Value* to = e.Find("timeoutMs")) {
        auto n = Number(to);
        if (!n || *n != std::floor(*n) || *n < 1 || *n > kMaxServiceTimeoutMs) {
          c.Add(path + ".timeoutMs",
                fmt::format("must be an integer from 1 to {} (ms)", kMaxServiceTimeoutMs));
        } else {
          sv.info.timeout_ms = static_cast<int64_t>(*n);
        }
      }
      for (auto [key, target] : {std::pair{"inputData", &sv.input.fields},
                                 std::pair{"outputData", &sv.output.fields}}) {
        if (const Value* f = e.Find(key)) {
          if (!f->is_array()) {
            c.Add(path + "." + key, "must be an array of { identifier, dataType }");
          } else {
            ParseFields(*f, path + "." + key, c, 0, *target);
          }
        }
      }
      im.services.push_back(std::move(sv));
    }
  }
  if (!c.problems.empty()) {
    std::string all;
    for (const auto& p : c.problems) {
      all += (all.empty() ? "" : "\n") + file + ": " + p;
    }
    return InvalidArgument(all);
  }
  im.ref = im.version.empty() ? im.id : im.id + "@" + im.version;
  return std::shared_ptr<const ThingModel>(std::move(m));
}

const std::string& ThingModel::id() const { return impl_->id; }
const std::string& ThingModel::version() const { return impl_->version; }
const std::string& ThingModel::ref() const { return impl_->ref; }
ValidationMode ThingModel::mode() const { return impl_->mode; }
const std::string& ThingModel::device_prefix() const { return impl_->device_prefix; }
const std::string& ThingModel::topic() const { return impl_->topic; }
bool ThingModel::Matches(std::string_view thing) const {
  return thing.substr(0, impl_->device_prefix.size()) == impl_->device_prefix;
}

std::vector<ModelProblem> ThingModel::Validate(const Value& patch, StateSection section) const {
  std::vector<ModelProblem> out;
  if (impl_->mode == ValidationMode::kOff || !patch.is_object()) {
    return out;
  }
  for (const auto& [k, v] : patch.members()) {
    std::string path = "/" + k;
    const auto& key = k;  // clang 14 cannot capture a structured binding
    auto it = std::find_if(impl_->properties.begin(), impl_->properties.end(),
                           [&](const Property& p) { return p.id == key; });
    if (it == impl_->properties.end()) {
      out.push_back({path, "TM_UNKNOWN_IDENTIFIER",
                     fmt::format("{} is not a property of {}", k, impl_->id)});
      continue;
    }
    if (section == StateSection::kDesired && !it->writable) {
      out.push_back({path, "TM_ACCESS_DENIED", fmt::format("{} is read-only", k)});
      continue;
    }
    if (section == StateSection::kReported && !it->readable) {
      out.push_back({path, "TM_ACCESS_DENIED", fmt::format("{} is write-only", k)});
      continue;
    }
    if (v.is_null()) {
      continue;  // deleting a property is always allowed
    }
    Check(v, *it->type, path, out);
  }
  return out;
}

const std::string* ThingModel::EventType(std::string_view identifier) const {
  for (const Event& e : impl_->events) {
    if (e.id == identifier) {
      return &e.type;
    }
  }
  return nullptr;
}

std::vector<ModelProblem> ThingModel::ValidateEvent(std::string_view identifier,
                                                    const Value& params) const {
  std::vector<ModelProblem> out;
  if (impl_->mode == ValidationMode::kOff) {
    return out;
  }
  for (const Event& e : impl_->events) {
    if (e.id == identifier) {
      Check(params, e.params, "", out);
      return out;
    }
  }
  out.push_back({"", "TM_UNKNOWN_IDENTIFIER",
                 fmt::format("{} is not an event of {}", identifier, impl_->id)});
  return out;
}

const ServiceInfo* ThingModel::Service(std::string_view identifier) const {
  const ServiceDef* s = impl_->FindService(identifier);
  return s != nullptr ? &s->info : nullptr;
}

std::vector<ModelProblem> ThingModel::ValidateService(std::string_view identifier,
                                                      const Value& data, bool output) const {
  std::vector<ModelProblem> out;
  const ServiceDef* s = impl_->FindService(identifier);
  if (s == nullptr) {
    out.push_back({"", "TM_UNKNOWN_IDENTIFIER",
                   fmt::format("{} is not a service of {}", identifier, impl_->id)});
    return out;
  }
  if (impl_->mode != ValidationMode::kOff) {
    Check(data, output ? s->output : s->input, "", out);
  }
  return out;
}

std::string ThingModel::JsonSchema() const {
  std::string props = "{";
  for (const Property& p : impl_->properties) {
    props += props.size() > 1 ? "," : "";
    json::AppendQuoted(props, p.id);
    props += ':';
    AppendSchema(*p.type, props);
  }
  props += '}';
  std::string out;
  json::ObjectWriter w(out);
  w.Field("$schema", "https://json-schema.org/draft/2020-12/schema")
      .Field("$id", "gnomon:model:" + impl_->ref)
      .Field("title", impl_->id)
      .Field("type", "object")
      .FieldRaw("properties", props)
      .FieldRaw("additionalProperties", "false");
  w.Close();
  return out;
}

std::string ProblemsJson(const std::vector<ModelProblem>& problems) {
  std::string out = "[";
  for (const auto& p : problems) {
    out += out.size() > 1 ? "," : "";
    json::ObjectWriter w(out);
    w.Field("path", p.path).Field("error", p.error).Field("message", p.message);
    w.Close();
  }
  return out + "]";
}

}  // namespace gnomon::shadow

// SPDX-License-Identifier: Apache-2.0
#include "gnomon/shadow/model.h"

#include <gtest/gtest.h>

namespace gnomon::shadow {
namespace {

constexpr const char* kThermostat = R"({
  "modelId": "acme:thermostat", "version": "1.2.0",
  "match": { "topic": "devices/+/telemetry", "devicePrefix": "th-" },
  "validation": "strict",
  "properties": [
    { "identifier": "targetTemp", "accessMode": "rw",
      "dataType": { "type": "float", "specs": { "min": 5, "max": 35, "step": 0.5, "unit": "°C" } } },
    { "identifier": "mode", "accessMode": "rw",
      "dataType": { "type": "enum", "specs": { "0": "off", "1": "heat", "2": "cool" } } },
    { "identifier": "temp", "accessMode": "r", "dataType": { "type": "float" } },
    { "identifier": "count", "dataType": { "type": "int", "specs": { "min": "0" } } },
    { "identifier": "name", "dataType": { "type": "text", "specs": { "length": 4 } } },
    { "identifier": "on", "dataType": { "type": "bool" } },
    { "identifier": "since", "dataType": { "type": "date" } },
    { "identifier": "slots", "dataType": { "type": "array",
        "specs": { "size": 2, "item": { "type": "int" } } } },
    { "identifier": "loc", "dataType": { "type": "struct", "specs": [
        { "identifier": "lat", "dataType": { "type": "double" } },
        { "identifier": "note", "required": false, "dataType": { "type": "text" } } ] } }
  ],
  "events": [], "services": []
})";

std::vector<ModelProblem> Problems(const ThingModel& m, const std::string& patch,
                                   StateSection s = StateSection::kReported) {
  auto v = Value::Parse(patch);
  EXPECT_TRUE(v.ok()) << patch;
  return m.Validate(*v, s);
}

std::string Codes(const std::vector<ModelProblem>& ps) {
  std::string out;
  for (const auto& p : ps) {
    out += (out.empty() ? "" : " ") + p.path + "=" + p.error;
  }
  return out;
}

TEST(ThingModelTest, ValidValuesPass) {
  auto m = ThingModel::Parse(kThermostat, "t.json");
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ((*m)->id(), "acme:thermostat");
  EXPECT_TRUE((*m)->Matches("th-1"));
  EXPECT_FALSE((*m)->Matches("lamp-1"));
  EXPECT_EQ(Codes(Problems(**m,
                           R"({"targetTemp":21.5,"mode":1,"temp":20.25,"count":3,"name":"kité",)"
                           R"("on":1,"since":1700000000000,"slots":[1,2],"loc":{"lat":52.5}})")),
            "");
  EXPECT_EQ(Codes(Problems(**m, R"({"temp":null})")),
            "");
}

TEST(ThingModelTest, EveryErrorCodeOfTheSpecWithItsPath) {
  auto m = ThingModel::Parse(kThermostat, "t.json");
  ASSERT_TRUE(m.ok());
  const ThingModel& tm = **m;
  EXPECT_EQ(Codes(Problems(tm, R"({"targetTemp":40})")), "/targetTemp=TM_OUT_OF_RANGE");
  EXPECT_EQ(Problems(tm, R"({"targetTemp":40})")[0].message, "value 40 is greater than max 35");
  EXPECT_EQ(Codes(Problems(tm, R"({"targetTemp":21.3})")), "/targetTemp=TM_STEP_MISMATCH");
  EXPECT_EQ(Codes(Problems(tm, R"({"targetTemp":"warm"})")), "/targetTemp=TM_TYPE_MISMATCH");
  EXPECT_EQ(Codes(Problems(tm, R"({"mode":7})")), "/mode=TM_ENUM_INVALID");
  EXPECT_EQ(Codes(Problems(tm, R"({"count":1.5})")), "/count=TM_TYPE_MISMATCH");
  EXPECT_EQ(Codes(Problems(tm, R"({"count":-1})")), "/count=TM_OUT_OF_RANGE");
  EXPECT_EQ(Codes(Problems(tm, R"({"count":3000000000})")), "/count=TM_OUT_OF_RANGE");
  EXPECT_EQ(Codes(Problems(tm, R"({"name":"kitchen"})")), "/name=TM_LENGTH_EXCEEDED");
  EXPECT_EQ(Codes(Problems(tm, R"({"on":2})")), "/on=TM_TYPE_MISMATCH");
  EXPECT_EQ(Codes(Problems(tm, R"({"slots":[1,2,3]})")), "/slots=TM_ARRAY_SIZE_EXCEEDED");
  EXPECT_EQ(Codes(Problems(tm, R"({"slots":[1,"x"]})")), "/slots/1=TM_TYPE_MISMATCH");
  EXPECT_EQ(Codes(Problems(tm, R"({"loc":{"lat":1,"alt":2}})")), "/loc/alt=TM_STRUCT_FIELD_UNKNOWN");
  EXPECT_EQ(Codes(Problems(tm, R"({"loc":{"note":"x"}})")), "/loc/lat=TM_REQUIRED_MISSING");
  EXPECT_EQ(Codes(Problems(tm, R"({"humidity":3})")), "/humidity=TM_UNKNOWN_IDENTIFIER");
  EXPECT_EQ(Codes(Problems(tm, R"({"temp":3})", StateSection::kDesired)), "/temp=TM_ACCESS_DENIED");
  // Every problem, not just the first.
  EXPECT_EQ(Codes(Problems(tm, R"({"mode":9,"count":-2})")),
            "/mode=TM_ENUM_INVALID /count=TM_OUT_OF_RANGE");
}

TEST(ThingModelTest, BrokenModelFilesListEveryProblemWithItsPath) {
  auto m = ThingModel::Parse(R"({
    "properties": [
      { "identifier": "a", "dataType": { "type": "float", "specs": { "min": 9, "max": 1 } } },
      { "identifier": "a", "accessMode": "x", "dataType": { "type": "nope" } },
      { "identifier": "9b", "dataType": { "type": "enum" } },
      { "identifier": "c", "dataType": { "type": "array", "specs": { "size": 900, "item": {} } } }
    ],
    "validation": "sometimes" })",
                             "m.json");
  ASSERT_FALSE(m.ok());
  const std::string msg(m.status().message());
  for (const char* want :
       {"m.json: modelId: required", "m.json: validation: must be strict, weak or off",
        "m.json: properties[0].dataType.specs.min: must be <= max (9 > 1)",
        "m.json: properties[1].identifier: 'a' is used twice",
        "m.json: properties[1].accessMode: must be r, w or rw",
        "m.json: properties[1].dataType.type: must be one of",
        "m.json: properties[2].identifier: required",
        "m.json: properties[2].dataType.specs: an enum needs its keys",
        "m.json: properties[3].dataType.specs.size: must be an integer 1-512",
        "m.json: properties[3].dataType.specs.item.type: must be one of"}) {
    EXPECT_NE(msg.find(want), std::string::npos) << want << "\n" << msg;
  }
  EXPECT_FALSE(ThingModel::Parse("{not json", "x.json").ok());
}

TEST(ThingModelTest, CompilesToJsonSchema) {
  auto m = ThingModel::Parse(kThermostat, "t.json");
  ASSERT_TRUE(m.ok());
  std::string s = (*m)->JsonSchema();
  EXPECT_NE(s.find(R"("$id":"gnomon:model:acme:thermostat@1.2.0")"), std::string::npos) << s;
  EXPECT_NE(s.find(R"("targetTemp":{"type":"number","minimum":5,"maximum":35})"), std::string::npos) << s;
  EXPECT_NE(s.find(R"("mode":{"type":"integer","enum":[0,1,2]})"), std::string::npos) << s;
  EXPECT_NE(s.find(R"("slots":{"type":"array","maxItems":2,"items":{"type":"integer"}})"),
            std::string::npos)
      << s;
  EXPECT_NE(s.find(R"("required":["lat"])"), std::string::npos) << s;
  EXPECT_TRUE(Value::Parse(s).ok());
}

}  // namespace
}  // namespace gnomon::shadow

namespace gnomon::shadow {
namespace {

constexpr const char* kWithEvents = R"({
  "modelId": "acme:thermostat", "version": "1.2.0", "validation": "strict",
  "properties": [],
  "events": [
    { "identifier": "overheat", "type": "alert",
      "outputData": [ { "identifier": "temp", "dataType": { "type": "float", "specs": { "max": 200 } } },
                      { "identifier": "note", "required": false, "dataType": { "type": "text" } } ] },
    { "identifier": "boot" }
  ]
})";

TEST(ThingModelEventsTest, EventPostsAreValidatedAgainstTheirOutputData) {
  auto m = ThingModel::Parse(kWithEvents, "m.json");
  ASSERT_TRUE(m.ok()) << m.status().message();
  ASSERT_NE((*m)->EventType("overheat"), nullptr);
  EXPECT_EQ(*(*m)->EventType("overheat"), "alert");
  EXPECT_EQ(*(*m)->EventType("boot"), "info");
  EXPECT_EQ((*m)->EventType("nope"), nullptr);
  auto check = [&](const char* event, const char* params) {
    std::string codes;
    for (const auto& p : (*m)->ValidateEvent(event, *Value::Parse(params))) {
      codes += (codes.empty() ? "" : " ") + p.path + ":" + p.error;
    }
    return codes;
  };
  EXPECT_EQ(check("overheat", R"({"temp":71.5})"), "");
  EXPECT_EQ(check("overheat", R"({"temp":71.5,"note":"fan stuck"})"), "");
  EXPECT_EQ(check("overheat", R"({})"), "/temp:TM_REQUIRED_MISSING");
  EXPECT_EQ(check("overheat", R"({"temp":"hot"})"), "/temp:TM_TYPE_MISMATCH");
  EXPECT_EQ(check("overheat", R"({"temp":300})"), "/temp:TM_OUT_OF_RANGE");
  EXPECT_EQ(check("overheat", R"({"temp":1,"x":2})"), "/x:TM_STRUCT_FIELD_UNKNOWN");
  EXPECT_EQ(check("overheat", R"([1])"), ":TM_TYPE_MISMATCH");
  EXPECT_EQ(check("boot", R"({})"), "");
  EXPECT_EQ(check("nope", R"({})"), ":TM_UNKNOWN_IDENTIFIER");
}

TEST(ThingModelEventsTest, BadEventDefinitionsAreListedWithTheirPaths) {
  auto m = ThingModel::Parse(R"({"modelId": "x", "properties": [], "events": [
      { "identifier": "a", "type": "panic" },
      { "identifier": "a" },
      { "identifier": "1b", "outputData": { "temp": 1 } },
      { "identifier": "c", "outputData": [ { "identifier": "t", "dataType": { "type": "nope" } } ] }
    ]})", "m.json");
  ASSERT_FALSE(m.ok());
  std::string msg(m.status().message());
  EXPECT_NE(msg.find("m.json: events[0].type: must be info, alert or error"), std::string::npos) << msg;
  EXPECT_NE(msg.find("m.json: events[1].identifier: 'a' is used twice"), std::string::npos) << msg;
  EXPECT_NE(msg.find("m.json: events[2].identifier: required"), std::string::npos) << msg;
  EXPECT_NE(msg.find("m.json: events[2].outputData: must be an array"), std::string::npos) << msg;
  EXPECT_NE(msg.find("m.json: events[3].outputData[0].dataType"), std::string::npos) << msg;
}

TEST(ThingModelServicesTest, ServicesAreParsedAndTheirInputsAndOutputsValidated) {
  auto m = ThingModel::Parse(R"({"modelId": "x", "validation": "weak", "services": [
      { "identifier": "reboot", "callType": "async", "timeoutMs": 30000,
        "inputData": [ { "identifier": "delaySec", "required": false,
                         "dataType": { "type": "int", "specs": { "min": 0, "max": 3600 } } } ],
        "outputData": [ { "identifier": "ok", "dataType": { "type": "bool" } } ] },
      { "identifier": "ping", "callType": "sync" } ]})", "m.json");
  ASSERT_TRUE(m.ok()) << m.status().message();
  const ServiceInfo* reboot = (*m)->Service("reboot");
  ASSERT_NE(reboot, nullptr);
  EXPECT_FALSE(reboot->sync);
  EXPECT_EQ(reboot->timeout_ms, 30000);
  ASSERT_NE((*m)->Service("ping"), nullptr);
  EXPECT_TRUE((*m)->Service("ping")->sync);
  EXPECT_EQ((*m)->Service("ping")->timeout_ms, 30000) << "the default";
  EXPECT_EQ((*m)->Service("nope"), nullptr);
  auto check = [&](const char* service, const char* data, bool output) {
    std::string codes;
    for (const auto& p : (*m)->ValidateService(service, *Value::Parse(data), output)) {
      codes += (codes.empty() ? "" : " ") + p.path + ":" + p.error;
    }
    return codes;
  };
  EXPECT_EQ(check("reboot", R"({})", false), "");
  EXPECT_EQ(check("reboot", R"({"delaySec":10})", false), "");
  EXPECT_EQ(check("reboot", R"({"delaySec":-1})", false), "/delaySec:TM_OUT_OF_RANGE");
  EXPECT_EQ(check("reboot", R"({"delaySec":1.5})", false), "/delaySec:TM_TYPE_MISMATCH");
  EXPECT_EQ(check("reboot", R"({"force":true})", false), "/force:TM_STRUCT_FIELD_UNKNOWN");
  EXPECT_EQ(check("reboot", R"({"ok":true})", true), "");
  EXPECT_EQ(check("reboot", R"({})", true), "/ok:TM_REQUIRED_MISSING");
  EXPECT_EQ(check("reboot", R"({"ok":"yes"})", true), "/ok:TM_TYPE_MISMATCH");
  EXPECT_EQ(check("ping", R"({})", false), "");
  EXPECT_EQ(check("nope", R"({})", false), ":TM_UNKNOWN_IDENTIFIER");
}

TEST(ThingModelServicesTest, BadServiceDefinitionsAreListedWithTheirPaths) {
  auto m = ThingModel::Parse(R"({"modelId": "x", "services": [
      { "identifier": "a", "callType": "later" },
      { "identifier": "a" },
      { "identifier": "b", "timeoutMs": 0 },
      { "identifier": "c", "timeoutMs": 1.5, "inputData": { "x": 1 } },
      { "identifier": "d", "outputData": [ { "identifier": "t", "dataType": { "type": "nope" } } ] }
    ]})", "m.json");
  ASSERT_FALSE(m.ok());
  std::string msg(m.status().message());
  EXPECT_NE(msg.find("m.json: services[0].callType: must be sync or async"), std::string::npos) << msg;
  EXPECT_NE(msg.find("m.json: services[1].identifier: 'a' is used twice"), std::string::npos) << msg;
  EXPECT_NE(msg.find("m.json: services[2].timeoutMs: must be an integer from 1 to 86400000"),
            std::string::npos) << msg;
  EXPECT_NE(msg.find("m.json: services[3].timeoutMs"), std::string::npos) << msg;
  EXPECT_NE(msg.find("m.json: services[3].inputData: must be an array"), std::string::npos) << msg;
  EXPECT_NE(msg.find("m.json: services[4].outputData[0].dataType"), std::string::npos) << msg;
}

}  // namespace
}  // namespace gnomon::shadow

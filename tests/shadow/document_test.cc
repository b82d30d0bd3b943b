// SPDX-License-Identifier: Apache-2.0
// The conformance vectors of docs/shadows.md, one test each, and property tests.
#include "gnomon/shadow/document.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <random>

namespace gnomon::shadow {
namespace {

constexpr int64_t kT = 1700000000;

UpdateResult MustUpdate(ShadowDocument& d, const std::string& req, int64_t t = kT) {
  auto r = d.Update(req, t);
  if (auto* e = std::get_if<ShadowError>(&r)) {
    ADD_FAILURE() << req << " → " << e->Json(t);
    return {};
  }
  return std::get<UpdateResult>(r);
}

ShadowError MustFail(ShadowDocument& d, const std::string& req, int64_t t = kT) {
  auto r = d.Update(req, t);
  if (auto* e = std::get_if<ShadowError>(&r)) {
    return *e;
  }
  ADD_FAILURE() << req << " was accepted";
  return {};
}

Value J(const std::string& s) { return *Value::Parse(s); }

TEST(ShadowPresenceTest, PresenceShowsInMetadataWithoutChangingTheVersion) {
  ShadowDocument d;
  d.SetPresence(true, 1700000000123);  // before the shadow exists: kept, not shown
  EXPECT_TRUE(std::holds_alternative<ShadowError>(d.Get("", kT)));
  MustUpdate(d, R"({"state":{"reported":{"temp":21}}})");
  Value doc = J(std::get<std::string>(d.Get("", kT)));
  EXPECT_EQ(doc.Find("version")->as_int(), 1);
  EXPECT_TRUE(doc.Find("metadata")->Find("connected")->as_bool());
  EXPECT_EQ(doc.Find("metadata")->Find("lastSeen")->as_int(), 1700000000123);
  EXPECT_NE(doc.Find("metadata")->Find("reported"), nullptr);

  d.SetPresence(false, 1700000009000);
  EXPECT_EQ(d.version(), 1);
  doc = J(std::get<std::string>(d.Get("", kT)));
  EXPECT_FALSE(doc.Find("metadata")->Find("connected")->as_bool());
  EXPECT_EQ(doc.Find("metadata")->Find("lastSeen")->as_int(), 1700000009000);

  // Durable form and published form both keep it; a delete keeps it for the device.
  auto restored = ShadowDocument::FromStored(d.StoredJson());
  ASSERT_TRUE(restored.ok());
  EXPECT_EQ(restored->connected(), std::optional<bool>(false));
  EXPECT_EQ(restored->last_seen_ms(), 1700000009000);
  EXPECT_EQ(restored->DocumentJson(), d.DocumentJson());
  auto published = ShadowDocument::FromDocument(d.DocumentJson());
  ASSERT_TRUE(published.ok());
  EXPECT_EQ(published->connected(), std::optional<bool>(false));
  d.Delete("", kT);
  auto after = ShadowDocument::FromStored(d.StoredJson());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->connected(), std::optional<bool>(false));
}

TEST(ShadowPresenceTest, WithoutPresenceTheDocumentIsUnchanged) {
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"reported":{"temp":21}}})");
  EXPECT_EQ(d.DocumentJson().find("connected"), std::string::npos);
  EXPECT_EQ(d.connected(), std::nullopt);
  ShadowDocument only;
  only.SetPresence(true, 5);
  MustUpdate(only, R"({"state":{"desired":{"fan":"on"}}})");
  // Metadata holds desired's leaves and then the presence, as valid JSON.
  Value doc = J(only.DocumentJson());
  EXPECT_TRUE(doc.Find("metadata")->Find("connected")->as_bool());
  EXPECT_NE(doc.Find("metadata")->Find("desired"), nullptr);
}

TEST(ShadowPresenceTest, StatusPayloadsAreReadTheWayDevicesWriteThem) {
  for (const char* on : {"online", "ONLINE", " connected\n", "true", "1", "\"online\"", "true ",
                         R"({"connected":true})", R"({"online":true,"ts":5})",
                         R"({"state":"online"})", R"({"status":"Connected"})"}) {
    EXPECT_EQ(ParsePresence(on), std::optional<bool>(true)) << on;
  }
  for (const char* off : {"offline", "Disconnected", "false", "0", "\"offline\"",
                          R"({"connected":false})", R"({"status":"offline"})"}) {
    EXPECT_EQ(ParsePresence(off), std::optional<bool>(false)) << off;
  }
  for (const char* bad : {"", "maybe", "2", "{", R"({"connected":"yes"})", "[true]", "null",
                          R"({"state":1})", "\xff\xfe"}) {
    EXPECT_EQ(ParsePresence(bad), std::nullopt) << bad;
  }
}

TEST(ShadowPresenceTest, TheShadowRecordsItsModel) {
  ShadowDocument d;
  d.SetModel("acme:thermostat@1.2.0");
  MustUpdate(d, R"({"state":{"reported":{"temp":21}}})");
  Value doc = J(std::get<std::string>(d.Get("", kT)));
  EXPECT_EQ(doc.Find("metadata")->Find("model")->as_string(), "acme:thermostat@1.2.0");
  d.SetPresence(true, 7);
  doc = J(d.DocumentJson());
  EXPECT_TRUE(doc.Find("metadata")->Find("connected")->as_bool());
  EXPECT_EQ(doc.Find("metadata")->Find("model")->as_string(), "acme:thermostat@1.2.0");
  auto restored = ShadowDocument::FromStored(d.StoredJson());
  ASSERT_TRUE(restored.ok());
  EXPECT_EQ(restored->model(), "acme:thermostat@1.2.0");
  EXPECT_EQ(restored->DocumentJson(), d.DocumentJson());
  EXPECT_EQ(ShadowDocument::FromDocument(d.DocumentJson())->model(), "acme:thermostat@1.2.0");
}

TEST(ShadowConformanceTest, V01_FirstReportCreatesVersion1WithoutDelta) {
  ShadowDocument d;
  UpdateResult r = MustUpdate(d, R"({"state":{"reported":{"a":1}}})");
  EXPECT_EQ(d.version(), 1);
  EXPECT_EQ(d.reported(), J(R"({"a":1})"));
  EXPECT_TRUE(r.delta.empty());
  EXPECT_NE(r.accepted.find(R"("metadata":{"reported":{"a":{"timestamp":1700000000}}})"),
            std::string::npos)
      << r.accepted;
  EXPECT_NE(r.documents.find(R"("previous":null)"), std::string::npos);
}

TEST(ShadowConformanceTest, V02_DesiredMakesADeltaEvent) {
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"reported":{"a":1}}})");
  UpdateResult r = MustUpdate(d, R"({"state":{"desired":{"a":2,"b":{"c":3}}}})");
  EXPECT_EQ(d.version(), 2);
  EXPECT_EQ(d.Delta(), J(R"({"a":2,"b":{"c":3}})"));
  ASSERT_FALSE(r.delta.empty());
  EXPECT_NE(r.delta.find(R"("state":{"a":2,"b":{"c":3}})"), std::string::npos) << r.delta;
  EXPECT_NE(r.delta.find(R"("metadata":{"a":{"timestamp":1700000000},"b":{"c":{"timestamp":1700000000}}})"),
            std::string::npos)
      << r.delta;
}

TEST(ShadowConformanceTest, V03_ReportNarrowsTheDelta) {
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"reported":{"a":1}}})");
  MustUpdate(d, R"({"state":{"desired":{"a":2,"b":{"c":3}}}})");
  UpdateResult r = MustUpdate(d, R"({"state":{"reported":{"a":2}}})");
  EXPECT_EQ(d.version(), 3);
  EXPECT_EQ(d.Delta(), J(R"({"b":{"c":3}})"));
  EXPECT_NE(r.delta.find(R"("state":{"b":{"c":3}})"), std::string::npos) << r.delta;
}

TEST(ShadowConformanceTest, V04_NestedDeltaOnlyHasTheDifferingLeaf) {
  EXPECT_EQ(ComputeDelta(J(R"({"l":{"r":255,"g":255}})"), J(R"({"l":{"r":255,"g":0}})")),
            J(R"({"l":{"g":255}})"));
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"desired":{"l":{"r":255,"g":255}},"reported":{"l":{"r":255,"g":0}}}})");
  auto got = d.Get("t", kT);
  ASSERT_TRUE(std::holds_alternative<std::string>(got));
  EXPECT_NE(std::get<std::string>(got).find(R"("delta":{"l":{"g":255}})"), std::string::npos)
      << std::get<std::string>(got);
}

TEST(ShadowConformanceTest, V05_DifferingArraysAppearWhole) {
  EXPECT_EQ(ComputeDelta(J(R"({"c":["R","G"]})"), J(R"({"c":["R"]})")), J(R"({"c":["R","G"]})"));
}

TEST(ShadowConformanceTest, V06_NullRemovesKeyAndEmptySectionAndMetadata) {
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"desired":{"x":1}}})");
  MustUpdate(d, R"({"state":{"desired":{"x":null}}})");
  EXPECT_TRUE(d.desired().is_null());
  EXPECT_EQ(d.DocumentJson().find("desired"), std::string::npos) << d.DocumentJson();
}

TEST(ShadowConformanceTest, V07_NullInArrayIsRejectedAndNothingChanges) {
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"desired":{"c":["B"]}}})");
  ShadowError e = MustFail(d, R"({"state":{"desired":{"c":[null,"R"]}}})");
  EXPECT_EQ(e.code, 400);
  EXPECT_EQ(e.error, "ARRAY_NULL");
  EXPECT_EQ(d.version(), 1);
  EXPECT_EQ(d.desired(), J(R"({"c":["B"]})"));
}

TEST(ShadowConformanceTest, V08_StaleVersionConflictsAndEchoesTheToken) {
  ShadowDocument d;
  for (int i = 0; i < 10; ++i) {
    MustUpdate(d, R"({"state":{"reported":{"i":)" + std::to_string(i) + "}}}");
  }
  ShadowError e = MustFail(d, R"({"state":{"desired":{"y":1}},"version":9,"clientToken":"t"})");
  EXPECT_EQ(e.code, 409);
  EXPECT_EQ(e.error, "VERSION_CONFLICT");
  EXPECT_NE(e.Json(kT).find(R"("clientToken":"t")"), std::string::npos);
  EXPECT_EQ(d.version(), 10);
  MustUpdate(d, R"({"state":{"desired":{"y":1}},"version":10})");
  EXPECT_EQ(d.version(), 11);
}

TEST(ShadowConformanceTest, V09_DeltaIsNotWritable) {
  ShadowDocument d;
  EXPECT_EQ(MustFail(d, R"({"state":{"delta":{}}})").error, "INVALID_NODE");
}

TEST(ShadowConformanceTest, V10_IfChangedWithSameValuesChangesNothing) {
  ShadowDocument d;
  for (int i = 0; i < 9; ++i) {
    MustUpdate(d, R"({"state":{"reported":{"t":0}}})");
  }
  MustUpdate(d, R"({"state":{"reported":{"t":1}}})");
  ASSERT_EQ(d.version(), 10);
  UpdateResult r = MustUpdate(d, R"({"state":{"reported":{"t":1}},"options":{"ifChanged":true}})");
  EXPECT_FALSE(r.changed);
  EXPECT_NE(r.accepted.find(R"("changed":false,"version":10)"), std::string::npos) << r.accepted;
  EXPECT_TRUE(r.documents.empty());
  EXPECT_TRUE(r.delta.empty());
  EXPECT_EQ(d.version(), 10);
  // Without ifChanged an identical write still counts (AWS behaviour).
  MustUpdate(d, R"({"state":{"reported":{"t":1}}})");
  EXPECT_EQ(d.version(), 11);
}

TEST(ShadowConformanceTest, V11_NineLevelsAreTooDeep) {
  ShadowDocument d;
  std::string deep = "1";
  for (int i = 0; i < 9; ++i) {
    deep = R"({"l":)" + deep + "}";
  }
  EXPECT_EQ(MustFail(d, R"({"state":{"reported":)" + deep + "}}").error, "TOO_DEEP");
  std::string ok = "1";
  for (int i = 0; i < 8; ++i) {
    ok = R"({"l":)" + ok + "}";
  }
  MustUpdate(d, R"({"state":{"reported":)" + ok + "}}");
  // Past what the JSON parser takes (1024 levels), objects or arrays: still TOO_DEEP.
  std::string objects;
  for (int i = 0; i < 2000; ++i) {
    objects += R"({"l":)";
  }
  objects += "1" + std::string(2000, '}');
  EXPECT_EQ(MustFail(d, R"({"state":{"reported":)" + objects + "}}").error, "TOO_DEEP");
  std::string arrays = std::string(3000, '[') + std::string(3000, ']');
  EXPECT_EQ(MustFail(d, R"({"state":{"reported":{"a":)" + arrays + "}}}").error, "TOO_DEEP");
  // Brackets inside strings do not count; a shallow document that is cut short is not JSON.
  std::string brackets(5000, '[');
  EXPECT_EQ(MustFail(d, R"({"state":{"reported":{"a":")" + brackets + R"(")").error,
            "INVALID_JSON");
}

TEST(ShadowConformanceTest, V12_UpdateWithin48hOfDeleteContinuesTheVersion) {
  ShadowDocument d;
  for (int i = 0; i < 10; ++i) {
    MustUpdate(d, R"({"state":{"reported":{"i":1}}})");
  }
  auto del = d.Delete("t", kT);
  ASSERT_TRUE(std::holds_alternative<std::string>(del));
  EXPECT_EQ(std::get<std::string>(del), R"({"version":10,"timestamp":1700000000})");
  EXPECT_EQ(std::get<ShadowError>(d.Get("t", kT)).error, "SHADOW_NOT_FOUND");
  EXPECT_EQ(std::get<ShadowError>(d.Get("t", kT)).message, "No shadow exists with name: t");
  MustUpdate(d, R"({"state":{"reported":{"i":2}}})", kT + 3600);
  EXPECT_EQ(d.version(), 11);
  // With the deleted shadow's version, as AWS's SDKs send it after a delete: accepted too.
  ShadowDocument v;
  for (int i = 0; i < 10; ++i) {
    MustUpdate(v, R"({"state":{"reported":{"i":1}}})");
  }
  (void)v.Delete("t", kT);
  EXPECT_EQ(MustFail(v, R"({"state":{"reported":{"i":2}},"version":9})", kT + 60).error,
            "VERSION_CONFLICT");
  EXPECT_EQ(MustFail(v, R"({"state":{"reported":{"i":2}},"version":11})", kT + 60).error,
            "VERSION_CONFLICT");
  MustUpdate(v, R"({"state":{"reported":{"i":2}},"version":10})", kT + 60);
  EXPECT_EQ(v.version(), 11);
  EXPECT_EQ(MustFail(v, R"({"state":{"reported":{"i":3}},"version":10})", kT + 61).error,
            "VERSION_CONFLICT");
  // "Must not exist" (version 0) still holds for a deleted shadow.
  ShadowDocument z;
  MustUpdate(z, R"({"state":{"reported":{"i":1}}})");
  (void)z.Delete("t", kT);
  MustUpdate(z, R"({"state":{"reported":{"i":2}},"version":0})", kT + 60);
  EXPECT_EQ(z.version(), 2);
  // After the 48 h window the version starts over, and the old one conflicts.
  ShadowDocument e;
  MustUpdate(e, R"({"state":{"reported":{"i":1}}})");
  (void)e.Delete("t", kT);
  EXPECT_EQ(MustFail(e, R"({"state":{"reported":{"i":2}},"version":1})", kT + 49 * 3600).error,
            "VERSION_CONFLICT");
  MustUpdate(e, R"({"state":{"reported":{"i":2}}})", kT + 49 * 3600);
  EXPECT_EQ(e.version(), 1);
}

TEST(ShadowConformanceTest, V13_ReachingDesiredEmptiesTheDeltaAndFiresSynced) {
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"desired":{"a":1},"reported":{"a":0}}})");
  UpdateResult r = MustUpdate(d, R"({"state":{"reported":{"a":1}}})");
  EXPECT_TRUE(d.Delta().members().empty());
  EXPECT_TRUE(r.delta.empty());
  EXPECT_NE(r.synced.find(R"("version":2)"), std::string::npos) << r.synced;
}

TEST(ShadowConformanceTest, V14_NumbersCompareByValue) {
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"reported":{"n":1}}})");
  UpdateResult r = MustUpdate(d, R"({"state":{"reported":{"n":1.0}},"options":{"ifChanged":true}})");
  EXPECT_FALSE(r.changed);
}

TEST(ShadowConformanceTest, V15_NullStateClearsBothButKeepsTheShadow) {
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"desired":{"a":1},"reported":{"b":2}}})");
  MustUpdate(d, R"({"state":null})");
  EXPECT_EQ(d.version(), 2);
  EXPECT_TRUE(d.desired().is_null());
  EXPECT_TRUE(d.reported().is_null());
  EXPECT_TRUE(d.exists());
  EXPECT_EQ(d.DocumentJson(), R"({"state":{},"metadata":{},"version":2,"timestamp":1700000000})");
}

TEST(ShadowConformanceTest, V16_ARepeatedClientTokenIsAppliedAgainAndEchoed) {
  // What the AWS IoT Device SDK v1 sends after a restart: its tokens start again from 0.
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"reported":{"a":0}}})");
  const std::string req = R"({"state":{"reported":{"a":1}},"clientToken":"dev-0"})";
  UpdateResult first = MustUpdate(d, req);
  UpdateResult second = MustUpdate(d, req, kT + 5);
  EXPECT_EQ(d.version(), 3);
  EXPECT_FALSE(second.replayed);
  EXPECT_NE(first.accepted.find(R"("version":2)"), std::string::npos) << first.accepted;
  EXPECT_NE(second.accepted.find(R"("version":3)"), std::string::npos) << second.accepted;
  for (const UpdateResult* r : {&first, &second}) {
    EXPECT_NE(r->accepted.find(R"("clientToken":"dev-0")"), std::string::npos) << r->accepted;
    EXPECT_NE(r->documents.find(R"("clientToken":"dev-0")"), std::string::npos) << r->documents;
  }
  // The same token with a different body is a new request, not a conflict.
  UpdateResult third = MustUpdate(d, R"({"state":{"reported":{"a":2}},"clientToken":"dev-0"})");
  EXPECT_EQ(d.version(), 4);
  EXPECT_EQ(J(d.reported().Json()), J(R"({"a":2})"));
  EXPECT_NE(third.accepted.find(R"("clientToken":"dev-0")"), std::string::npos);
}

TEST(ShadowConformanceTest, V17_AnIdempotencyKeyReturnsTheFirstAnswerAndChangesNothing) {
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"reported":{"a":0}}})");
  const std::string req = R"({"state":{"reported":{"a":1}},"clientToken":"c"})";
  auto first = d.Update(req, kT, "key-1");
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(first));
  auto second = d.Update(req, kT + 5, "key-1");
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(second));
  EXPECT_EQ(d.version(), 2);
  EXPECT_TRUE(std::get<UpdateResult>(second).replayed);
  EXPECT_FALSE(std::get<UpdateResult>(second).changed);
  EXPECT_EQ(std::get<UpdateResult>(second).accepted, std::get<UpdateResult>(first).accepted);
  EXPECT_TRUE(std::get<UpdateResult>(second).documents.empty());
  // The same key with another body: 409, the token echoed, nothing applied.
  auto reuse = d.Update(R"({"state":{"reported":{"a":2}},"clientToken":"c2"})", kT + 6, "key-1");
  ASSERT_TRUE(std::holds_alternative<ShadowError>(reuse));
  EXPECT_EQ(std::get<ShadowError>(reuse).code, 409);
  EXPECT_EQ(std::get<ShadowError>(reuse).error, "IDEMPOTENCY_KEY_REUSED");
  EXPECT_EQ(std::get<ShadowError>(reuse).client_token, "c2");
  EXPECT_EQ(d.version(), 2);
  // Another key applies; without a key the same body applies too.
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(d.Update(req, kT + 7, "key-2")));
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(d.Update(req, kT + 8)));
  EXPECT_EQ(d.version(), 4);
  // A key survives a delete (a retry must not recreate the shadow) ...
  ASSERT_TRUE(std::holds_alternative<std::string>(d.Delete("", kT + 9)));
  auto after_delete = d.Update(req, kT + 10, "key-1");
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(after_delete));
  EXPECT_TRUE(std::get<UpdateResult>(after_delete).replayed);
  EXPECT_FALSE(d.exists());
  // ... and is forgotten after five minutes.
  auto later = d.Update(req, kT + 400, "key-1");
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(later));
  EXPECT_FALSE(std::get<UpdateResult>(later).replayed);
  EXPECT_EQ(d.version(), 5);
}

TEST(ShadowIdempotencyTest, KeptKeysAreBoundedInCountAndBytes) {
  // A client with the write scope cannot make a shadow carry megabytes of old answers: at most
  // max_idempotency_keys keys and max_idempotency_bytes of answers, the oldest going first.
  ShadowDocument d;
  const std::string big(30 * 1024, 'x');
  for (int i = 0; i < 20; ++i) {  // ~30 KiB answers: 20 of them would be ~600 KiB
    std::string req = R"({"state":{"reported":{"blob":")" + big + std::to_string(i) + R"("}}})";
    ASSERT_TRUE(std::holds_alternative<UpdateResult>(d.Update(req, kT + i, fmt::format("k{}", i))));
  }
  EXPECT_LT(d.StoredJson().size(), 256u * 1024 + 64u * 1024) << "answers kept beyond the bound";
  // The newest key still replays; the oldest was let go, so its retry is applied again.
  std::string last = R"({"state":{"reported":{"blob":")" + big + "19" + R"("}}})";
  auto replay = d.Update(last, kT + 30, "k19");
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(replay));
  EXPECT_TRUE(std::get<UpdateResult>(replay).replayed);
  std::string first = R"({"state":{"reported":{"blob":")" + big + "0" + R"("}}})";
  auto again = d.Update(first, kT + 31, "k0");
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(again));
  EXPECT_FALSE(std::get<UpdateResult>(again).replayed);
  // By count: 200 small answers keep the newest 128.
  ShadowDocument c;
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(std::holds_alternative<UpdateResult>(
        c.Update(R"({"state":{"reported":{"a":1}}})", kT, fmt::format("c{}", i))));
  }
  EXPECT_TRUE(
      std::get<UpdateResult>(c.Update(R"({"state":{"reported":{"a":1}}})", kT, "c72")).replayed);
  EXPECT_FALSE(
      std::get<UpdateResult>(c.Update(R"({"state":{"reported":{"a":1}}})", kT, "c71")).replayed);
}

TEST(ShadowConformanceTest, V18_GetAndDeleteEchoTheirClientTokenAcceptedAndRejected) {
  ShadowDocument d;
  auto missing_get = d.Get("Unnamed Shadow", kT, "g-1");
  ASSERT_TRUE(std::holds_alternative<ShadowError>(missing_get));
  EXPECT_EQ(J(std::get<ShadowError>(missing_get).Json(kT)),
            J(R"({"code":404,"error":"SHADOW_NOT_FOUND",
                  "message":"No shadow exists with name: Unnamed Shadow",
                  "timestamp":1700000000,"clientToken":"g-1"})"));
  auto missing_delete = d.Delete("n", kT, "d-1");
  ASSERT_TRUE(std::holds_alternative<ShadowError>(missing_delete));
  EXPECT_EQ(std::get<ShadowError>(missing_delete).client_token, "d-1");
  MustUpdate(d, R"({"state":{"desired":{"a":1}}})");
  auto got = d.Get("", kT, "g-2");
  ASSERT_TRUE(std::holds_alternative<std::string>(got));
  Value doc = J(std::get<std::string>(got));
  ASSERT_NE(doc.Find("clientToken"), nullptr) << std::get<std::string>(got);
  EXPECT_EQ(doc.Find("clientToken")->as_string(), "g-2");
  EXPECT_EQ(J(doc.Find("state")->Json()), J(R"({"desired":{"a":1},"delta":{"a":1}})"));
  // Without a token the answer has none; a token that needs escaping is escaped.
  EXPECT_EQ(std::get<std::string>(d.Get("", kT)).find("clientToken"), std::string::npos);
  EXPECT_EQ(J(std::get<std::string>(d.Get("", kT, "a\"b"))).Find("clientToken")->as_string(),
            "a\"b");
  auto del = d.Delete("", kT + 1, "d-2");
  ASSERT_TRUE(std::holds_alternative<std::string>(del));
  EXPECT_EQ(J(std::get<std::string>(del)),
            J(R"({"version":1,"timestamp":1700000001,"clientToken":"d-2"})"));
}

TEST(ShadowRequestTest, AnEmptyViewWithoutDataIsInvalidJson) {
  // std::string_view() holds a null pointer: found by fuzz_shadow (UBSan: memcpy from null).
  EXPECT_FALSE(Value::Parse(std::string_view()).ok());
  ShadowDocument d;
  auto r = d.Update(std::string_view(), kT, "key");
  ASSERT_TRUE(std::holds_alternative<ShadowError>(r));
  EXPECT_EQ(std::get<ShadowError>(r).error, "INVALID_JSON");
  EXPECT_EQ(RequestClientToken(std::string_view(), 64), "");
}

TEST(ShadowRequestTest, GetAndDeletePayloadsGiveTheirClientToken) {
  EXPECT_EQ(RequestClientToken(R"({"clientToken":"x-1"})", 64), "x-1");
  EXPECT_EQ(RequestClientToken("", 64), "");
  EXPECT_EQ(RequestClientToken("{}", 64), "");
  EXPECT_EQ(RequestClientToken("not json", 64), "");
  EXPECT_EQ(RequestClientToken(R"(["clientToken"])", 64), "");
  EXPECT_EQ(RequestClientToken(R"({"clientToken":7})", 64), "");
  EXPECT_EQ(RequestClientToken(R"({"clientToken":")" + std::string(65, 'x') + R"("})", 64), "");
  EXPECT_EQ(RequestClientToken("{\"clientToken\":\"\xff\"}", 64), "");
  EXPECT_TRUE(ValidIdempotencyKey("a-b_c:1", 128));
  EXPECT_FALSE(ValidIdempotencyKey("", 128));
  EXPECT_FALSE(ValidIdempotencyKey("a b", 128));
  EXPECT_FALSE(ValidIdempotencyKey(std::string(129, 'k'), 128));
  EXPECT_FALSE(ValidIdempotencyKey("caf\xc3\xa9", 128));
}

TEST(ShadowErrorsTest, EveryErrorInOrder) {
  ShadowDocument d;
  struct Case {
    std::string req;
    int code;
    const char* error;
  } cases[] = {
      {"{\"state\":{\"reported\":{\"a\":\"\xff\"}}}", 415, "UNSUPPORTED_ENCODING"},
      {"{\"state\":", 400, "INVALID_JSON"},
      {"[1]", 400, "INVALID_JSON"},
      {"{\"state\":{\"reported\":{\"a\":\"" + std::string(70000, 'x') + "\"}}}", 413,
       "PAYLOAD_TOO_LARGE"},
      {"{}", 400, "MISSING_STATE"},
      {"{\"state\":1}", 400, "STATE_NOT_OBJECT"},
      {"{\"state\":{\"desired\":[1]}}", 400, "DESIRED_NOT_OBJECT"},
      {"{\"state\":{\"reported\":\"x\"}}", 400, "REPORTED_NOT_OBJECT"},
      {"{\"state\":{},\"version\":-1}", 400, "INVALID_VERSION"},
      {"{\"state\":{},\"version\":1.5}", 400, "INVALID_VERSION"},
      {"{\"state\":{},\"clientToken\":\"" + std::string(65, 't') + "\"}", 400,
       "INVALID_CLIENT_TOKEN"},
      {"{\"state\":{\"reported\":{\"$x\":1}}}", 400, "INVALID_KEY"},
      {"{\"state\":{\"reported\":{\"\":1}}}", 400, "INVALID_KEY"},
      {"{\"state\":{\"reported\":{\"" + std::string(129, 'k') + "\":1}}}", 400, "INVALID_KEY"},
      {"{\"state\":{\"reported\":{\"a\":[1,null]}}}", 400, "ARRAY_NULL"},
      {"{\"state\":{},\"version\":3}", 409, "VERSION_CONFLICT"},
  };
  for (const auto& c : cases) {
    ShadowError e = MustFail(d, c.req);
    EXPECT_EQ(e.code, c.code) << c.req.substr(0, 80);
    EXPECT_EQ(e.error, c.error) << c.req.substr(0, 80);
  }
  EXPECT_FALSE(d.exists());
  // A section over 32 KiB after merging.
  MustUpdate(d, "{\"state\":{\"reported\":{\"a\":\"" + std::string(20000, 'x') + "\"}}}");
  ShadowError e = MustFail(d, "{\"state\":{\"reported\":{\"b\":\"" + std::string(20000, 'y') + "\"}}}");
  EXPECT_EQ(e.code, 413);
  EXPECT_NE(e.Json(kT).find(R"("details":{"section":"reported","bytes":)"), std::string::npos);
  EXPECT_EQ(d.version(), 1);
}

// Random update sequences: the delta always equals delta(desired, reported) recomputed from
// scratch, versions go up by one per accepted write, metadata mirrors the state's leaves.
TEST(ShadowPropertyTest, RandomUpdatesKeepTheInvariants) {
  std::mt19937 rng(17);
  const char* keys[] = {"a", "b", "c"};
  auto random_value = [&](auto& self, int depth) -> std::string {
    switch (rng() % (depth > 2 ? 4 : 6)) {
      case 0: return std::to_string(rng() % 3);
      case 1: return "\"s" + std::to_string(rng() % 2) + "\"";
      case 2: return "null";
      case 3: return "[1,2]";
      default: {
        std::string o = "{";
        int n = static_cast<int>(rng() % 3);
        uint32_t first = rng();  // distinct keys: an object never holds a key twice
        for (int i = 0; i < n; ++i) {
          o += std::string(i ? "," : "") + "\"" + keys[(first + i) % 3] + "\":" + self(self, depth + 1);
        }
        return o + "}";
      }
    }
  };
  for (int run = 0; run < 50; ++run) {
    ShadowDocument d;
    int64_t version = 0;
    for (int step = 0; step < 60; ++step) {
      std::string section = rng() % 2 ? "desired" : "reported";
      std::string patch = "{\"" + std::string(keys[rng() % 3]) + "\":" + random_value(random_value, 1) + "}";
      auto r = d.Update("{\"state\":{\"" + section + "\":" + patch + "}}", kT + step);
      if (std::holds_alternative<ShadowError>(r)) {
        continue;
      }
      ++version;
      ASSERT_EQ(d.version(), version);
      EXPECT_EQ(d.Delta(), ComputeDelta(d.desired(), d.reported()));
      // What the update says a get now shows is what a get shows.
      EXPECT_EQ(std::get<UpdateResult>(r).view, std::get<std::string>(d.Get("", kT + step)));
      // The stored document parses and its sections equal the in-memory ones.
      Value doc = *Value::Parse(d.DocumentJson());
      const Value* st = doc.Find("state");
      ASSERT_NE(st, nullptr);
      EXPECT_EQ(st->Find("desired") ? *st->Find("desired") : Value(), d.desired());
      EXPECT_EQ(st->Find("reported") ? *st->Find("reported") : Value(), d.reported());
      // Every state leaf has metadata.
      const Value* meta = doc.Find("metadata");
      for (const char* s : {"desired", "reported"}) {
        const Value* sv = st->Find(s);
        const Value* mv = meta->Find(s);
        ASSERT_EQ(sv == nullptr, mv == nullptr) << s << " " << d.DocumentJson();
        if (sv == nullptr) {
          continue;
        }
        auto check = [&](auto& self, const Value& v, const Value& m) -> void {
          for (const auto& [k, child] : v.members()) {
            const Value* cm = m.Find(k);
            ASSERT_NE(cm, nullptr) << k << " in " << d.DocumentJson();
            if (child.is_object() && !child.members().empty()) {
              self(self, child, *cm);
            } else {
              EXPECT_NE(cm->Find("timestamp"), nullptr) << k << " in " << d.DocumentJson();
            }
          }
          EXPECT_EQ(v.members().size(), m.members().size()) << d.DocumentJson();
        };
        check(check, *sv, *mv);
      }
    }
  }
}

// RFC 7396: an empty object merges into an object without changing it, and replaces anything
// else; a leaf {} it names is written (fresh timestamp).
TEST(ShadowMergeTest, EmptyObjectsMergeTheWayRfc7396Says) {
  ShadowDocument d;
  MustUpdate(d, R"({"state":{"reported":{"o":{"x":1},"n":5,"e":{}}}})", kT);
  UpdateResult r = MustUpdate(d, R"({"state":{"reported":{"o":{},"n":{},"e":{}}}})", kT + 7);
  EXPECT_EQ(d.reported(), J(R"({"o":{"x":1},"n":{},"e":{}})"));
  EXPECT_EQ(r.patch, R"([{"op":"replace","path":"/state/reported/n","value":{}}])");
  Value doc = J(d.DocumentJson());
  EXPECT_EQ(*doc.Find("metadata")->Find("reported"),
            J(R"({"o":{"x":{"timestamp":1700000000}},"n":{"timestamp":1700000007},)"
              R"("e":{"timestamp":1700000007}})"));
}

// RFC 6902 on a Value, for checking the patches updates describe: add, remove, replace of
// object members (what shadow patches use).
bool ApplyOp(Value& doc, const Value& op) {
  const Value* kind = op.Find("op");
  const Value* path = op.Find("path");
  if (kind == nullptr || path == nullptr) {
    return false;
  }
  std::vector<std::string> tokens;
  const std::string& p = path->as_string();
  for (size_t at = 0; at < p.size();) {
    if (p[at] != '/') {
      return false;
    }
    size_t next = p.find('/', at + 1);
    std::string raw = p.substr(at + 1, next == std::string::npos ? std::string::npos : next - at - 1);
    std::string token;
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '~' && i + 1 < raw.size()) {
        token += raw[++i] == '1' ? '/' : '~';
      } else {
        token += raw[i];
      }
    }
    tokens.push_back(token);
    at = next == std::string::npos ? p.size() : next;
  }
  if (tokens.empty()) {
    return false;
  }
  Value* parent = &doc;
  for (size_t i = 0; i + 1 < tokens.size(); ++i) {
    parent = parent->Find(tokens[i]);
    if (parent == nullptr || !parent->is_object()) {
      return false;
    }
  }
  const std::string& last = tokens.back();
  if (kind->as_string() == "remove") {
    return parent->Erase(last);
  }
  const Value* value = op.Find("value");
  if (value == nullptr || !parent->is_object()) {
    return false;
  }
  bool exists = parent->Find(last) != nullptr;
  if (exists != (kind->as_string() == "replace")) {
    return false;  // add of a present member, or replace of an absent one
  }
  parent->Set(last, *value);
  return true;
}

// RFC 7396, the reference: the merged section (null when absent or left empty).
Value ReferenceMerge(const Value& target, const Value& patch) {
  if (!patch.is_object()) {
    return patch;
  }
  Value out = target.is_object() ? target : Value::Object();
  for (const auto& [k, pv] : patch.members()) {
    if (pv.is_null()) {
      out.Erase(k);
    } else {
      const Value* cur = out.Find(k);
      Value merged = ReferenceMerge(cur != nullptr ? *cur : Value(), pv);
      out.Set(k, std::move(merged));
    }
  }
  return out;
}

const Value* At(const Value* v, std::initializer_list<std::string_view> keys) {
  for (std::string_view k : keys) {
    v = v != nullptr ? v->Find(k) : nullptr;
  }
  return v;
}

// Random updates of both sections (some refused as too large): each accepted update's patch
// turns the previous document's state into the new one; each section equals the RFC 7396
// reference merge; the leaves the request wrote are stamped now and the others keep their
// stamps; the stored form restores the same document; a refused update changes nothing.
TEST(ShadowPropertyTest, PatchesMergesAndStampsMatchTheReference) {
  std::mt19937 rng(29);
  const char* keys[] = {"a", "b", "c", "d/e"};
  auto random_value = [&](auto& self, int depth) -> std::string {
    switch (rng() % (depth > 2 ? 5 : 7)) {
      case 0: return std::to_string(rng() % 3);
      case 1: return "\"s" + std::to_string(rng() % 2) + "\"";
      case 2: return "null";
      case 3: return "[1,2]";
      case 4: return "\"" + std::string(rng() % 40, 'x') + "\"";
      default: {
        std::string o = "{";
        int n = static_cast<int>(rng() % 4);
        uint32_t first = rng();  // distinct keys: an object never holds a key twice
        for (int i = 0; i < n; ++i) {
          o += std::string(i ? "," : "") + "\"" + keys[(first + i) % 4] + "\":" + self(self, depth + 1);
        }
        return o + "}";
      }
    }
  };
  int refused = 0;
  for (int run = 0; run < 60; ++run) {
    Limits limits;
    limits.max_section_bytes = 160;
    ShadowDocument d(limits);
    for (int step = 0; step < 80; ++step) {
      int64_t now = kT + run * 1000 + step;
      std::string state;
      for (const char* section : {"desired", "reported"}) {
        if (rng() % 3 == 0) {
          continue;
        }
        std::string patch = rng() % 12 == 0 ? "null" : "{";
        uint32_t first = rng();  // distinct keys
        for (int i = 0, n = static_cast<int>(1 + rng() % 3); patch != "null" && i < n; ++i) {
          patch += std::string(i ? "," : "") + "\"" + keys[(first + i) % 4] + "\":" +
                   random_value(random_value, 1);
        }
        if (patch != "null") {
          patch += "}";
        }
        state += std::string(state.empty() ? "" : ",") + "\"" + section + "\":" + patch;
      }
      std::string request = "{\"state\":{" + state + "}}";
      std::string before_json = d.exists() ? d.DocumentJson() : "";
      Value before = before_json.empty() ? Value::Object() : J(before_json);
      auto r = d.Update(request, now);
      if (auto* e = std::get_if<ShadowError>(&r)) {
        ASSERT_EQ(e->code, 413) << request << " " << e->Json(now);
        ++refused;
        EXPECT_EQ(d.exists() ? d.DocumentJson() : "", before_json) << request;
        continue;
      }
      const UpdateResult& res = std::get<UpdateResult>(r);
      Value after = J(d.DocumentJson());
      // The patch turns the previous state into the new one.
      Value patched = before;
      Value ops = J(res.patch);
      for (const Value& op : ops.items()) {
        ASSERT_TRUE(ApplyOp(patched, op)) << op.Json() << " in " << res.patch << " on " << before_json;
      }
      const Value* want_state = after.Find("state");
      const Value* got_state = patched.Find("state");
      ASSERT_NE(got_state, nullptr) << res.patch;
      EXPECT_EQ(*got_state, *want_state) << request << "\n" << res.patch << "\n" << before_json;
      // Sections: the reference merge of the request into the previous ones.
      Value req = J(request);
      for (const char* s : {"desired", "reported"}) {
        const Value* patch = At(&req, {"state", s});
        const Value* old = At(&before, {"state", s});
        Value expect = old != nullptr ? *old : Value();
        if (patch != nullptr) {
          expect = ReferenceMerge(expect, *patch);
          if (expect.is_object() && expect.members().empty()) {
            expect = Value();
          }
        }
        const Value* got = want_state->Find(s);
        EXPECT_EQ(got != nullptr ? *got : Value(), expect) << s << " after " << request;
        // Stamps: top-level members the request names are stamped now, when they are leaves;
        // members it does not name keep their metadata exactly.
        if (got == nullptr) {
          continue;
        }
        for (const auto& [k, v] : got->members()) {
          const Value* written = patch != nullptr && patch->is_object() ? patch->Find(k) : nullptr;
          const Value* meta = At(&after, {"metadata", s, k});
          ASSERT_NE(meta, nullptr) << k << " in " << d.DocumentJson();
          if (written == nullptr) {
            const Value* old_meta = At(&before, {"metadata", s, k});
            ASSERT_NE(old_meta, nullptr) << k << " in " << before_json;
            EXPECT_EQ(*meta, *old_meta) << k << " after " << request;
          } else if (!(v.is_object() && !v.members().empty())) {
            EXPECT_EQ(*meta, J("{\"timestamp\":" + std::to_string(now) + "}")) << k;
          }
        }
      }
      // The stored form restores this document exactly, and the view is a get.
      auto restored = ShadowDocument::FromStored(d.StoredJson(), limits);
      ASSERT_TRUE(restored.ok());
      EXPECT_EQ(restored->DocumentJson(), d.DocumentJson());
      EXPECT_EQ(res.view, std::get<std::string>(d.Get("", now)));
    }
  }
  EXPECT_GT(refused, 20);  // the refused path ran
}

}  // namespace
}  // namespace gnomon::shadow

namespace gnomon::shadow {
namespace {

// The same rule as rules apply to payloads: an object that holds a key twice is refused
// (readers disagree on which one counts), never merged with the last one winning.
TEST(ShadowDocTest, UpdatesWithADuplicateKeyAreRefused) {
  ShadowDocument doc;
  auto r = doc.Update(R"({"state":{"reported":{"lock":"open","lock":"closed"}}})", 100);
  ASSERT_TRUE(std::holds_alternative<ShadowError>(r));
  EXPECT_EQ(std::get<ShadowError>(r).error, "INVALID_JSON");
  EXPECT_FALSE(doc.exists());
  EXPECT_FALSE(Value::Parse(R"([{"a":1},{"b":{"c":1,"c":2}}])").ok());
  EXPECT_TRUE(Value::Parse(R"({"a":{"a":1},"b":{"a":2}})").ok());
  // The empty key too (found by fuzzing: it was let through, taken for "no duplicate").
  auto empty_twice = Value::Parse(R"({"x":{"":1,"":2}})");
  ASSERT_FALSE(empty_twice.ok());
  EXPECT_NE(empty_twice.status().message().find("duplicate key \"\""), std::string::npos)
      << empty_twice.status().message();
  EXPECT_TRUE(Value::Parse(R"({"":1,"a":{"":2}})").ok());
  EXPECT_TRUE(std::holds_alternative<ShadowError>(
      doc.Update(R"({"state":{"reported":{"":"a","":"b"}}})", 100)));
}

// A published document's metadata is read member by member in the state's order when it is
// in that order (gnomon writes it so), and by name when it is not: the same stamps either way,
// the document's own timestamp for a member without metadata.
TEST(ShadowDocTest, MetadataInAnyOrderGivesEachMemberItsStamp) {
  for (const char* meta : {R"({"a":{"timestamp":10},"b":{"timestamp":20},"c":{"timestamp":30}})",
                           R"({"c":{"timestamp":30},"b":{"timestamp":20},"a":{"timestamp":10}})",
                           R"({"c":{"timestamp":30},"a":{"timestamp":10}})"}) {
    std::string json =
        std::string(R"({"state":{"reported":{"a":1,"b":2,"c":3}},"metadata":{"reported":)") +
        meta + R"(},"version":4,"timestamp":99})";
    auto doc = ShadowDocument::FromDocument(json);
    ASSERT_TRUE(doc.ok()) << doc.status().message();
    Value back = J(doc->DocumentJson());
    const bool has_b = std::string_view(meta).find("\"b\"") != std::string_view::npos;
    for (auto [key, want] :
         {std::pair{"a", 10}, std::pair{"b", has_b ? 20 : 99}, std::pair{"c", 30}}) {
      const Value* ts = back.Find("metadata")->Find("reported")->Find(key)->Find("timestamp");
      ASSERT_NE(ts, nullptr) << meta << " " << key;
      EXPECT_EQ(ts->as_int(), want) << meta << " " << key;
    }
  }
}

// Objects of more than a few dozen keys find duplicates through a set rather than a scan per
// key: the same answer, the order kept, for a duplicate anywhere in them.
TEST(ShadowDocTest, LargeObjectsFindDuplicateKeysAndKeepTheirOrder) {
  for (int keys : {8, 33, 200}) {
    std::string json = "{";
    for (int i = 0; i < keys; ++i) {
      json += (i > 0 ? ",\"k" : "\"k") + std::to_string(i) + "\":" + std::to_string(i);
    }
    auto parsed = Value::Parse(json + "}");
    ASSERT_TRUE(parsed.ok()) << parsed.status().message();
    ASSERT_EQ(parsed->members().size(), static_cast<size_t>(keys));
    for (int i = 0; i < keys; ++i) {
      EXPECT_EQ(parsed->members()[i].first, "k" + std::to_string(i));
      EXPECT_EQ(parsed->members()[i].second.as_int(), i);
    }
    for (int dup : {0, keys / 2, keys - 1}) {
      auto twice = Value::Parse(json + ",\"k" + std::to_string(dup) + "\":-1}");
      ASSERT_FALSE(twice.ok()) << keys << " " << dup;
      EXPECT_NE(twice.status().message().find("\"k" + std::to_string(dup) + "\""),
                std::string::npos)
          << twice.status().message();
    }
  }
}

// The events a caller leaves out are not built; the change, the document and the view are
// the same as with every event, and a later update with all of them sees the same state.
TEST(ShadowEventsTest, EventsLeftOutAreNotBuiltAndChangeNothingElse) {
  const std::vector<std::string> requests = {
      R"({"state":{"desired":{"t":5,"mode":"eco"}}})", R"({"state":{"reported":{"t":1}}})",
      R"({"state":{"reported":{"t":5,"mode":"eco"}},"clientToken":"c1"})",
      R"({"state":{"reported":{"t":null}}})"};
  for (unsigned events :
       {0u, unsigned{kEventAccepted}, unsigned{kEventDocuments}, unsigned{kEventDelta}}) {
    ShadowDocument all, some;
    for (const std::string& req : requests) {
      auto a = all.Update(req, kT);
      auto s = some.Update(req, kT, {}, events);
      ASSERT_TRUE(std::holds_alternative<UpdateResult>(a) &&
                  std::holds_alternative<UpdateResult>(s));
      const auto& ra = std::get<UpdateResult>(a);
      const auto& rs = std::get<UpdateResult>(s);
      SCOPED_TRACE(fmt::format("events {} request {}", events, req));
      EXPECT_EQ(rs.patch, ra.patch);
      EXPECT_EQ(rs.view, ra.view);
      EXPECT_EQ(rs.client_token, ra.client_token);
      EXPECT_EQ(rs.accepted, (events & kEventAccepted) != 0 ? ra.accepted : "");
      EXPECT_EQ(rs.documents, (events & kEventDocuments) != 0 ? ra.documents : "");
      EXPECT_EQ(rs.delta, (events & kEventDelta) != 0 ? ra.delta : "");
      EXPECT_EQ(rs.synced, (events & kEventDelta) != 0 ? ra.synced : "");
      EXPECT_EQ(some.DocumentJson(), all.DocumentJson());
      EXPECT_EQ(some.StoredJson(), all.StoredJson());
    }
    // The documents event after updates that skipped it still names the right previous.
    auto a = all.Update(R"({"state":{"reported":{"x":1}}})", kT + 1);
    auto s = some.Update(R"({"state":{"reported":{"x":1}}})", kT + 1);
    EXPECT_EQ(std::get<UpdateResult>(s).documents, std::get<UpdateResult>(a).documents);
  }
  // An idempotency key's answer is kept for its repeats: accepted is built whatever was asked.
  ShadowDocument d;
  auto r = d.Update(R"({"state":{"reported":{"a":1}}})", kT, "key-1", 0);
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(r));
  EXPECT_FALSE(std::get<UpdateResult>(r).accepted.empty());
  auto again = d.Update(R"({"state":{"reported":{"a":1}}})", kT, "key-1", 0);
  ASSERT_TRUE(std::holds_alternative<UpdateResult>(again));
  EXPECT_TRUE(std::get<UpdateResult>(again).replayed);
  EXPECT_EQ(std::get<UpdateResult>(again).accepted, std::get<UpdateResult>(r).accepted);
}

}  // namespace
}  // namespace gnomon::shadow

namespace gnomon::shadow {
namespace {

// What a restore writes for a change-log record (StoredFromChangelog, no document built) reads
// back as the document FromChangelog builds, and the same records are refused.
void ExpectStoredAsBuilt(const std::string& event) {
  auto built = ShadowDocument::FromChangelog(event);
  auto stored = ShadowDocument::StoredFromChangelog(event);
  ASSERT_EQ(built.ok(), stored.ok()) << event << "\n"
                                     << (built.ok() ? stored.status() : built.status()).message();
  if (!built.ok()) {
    return;
  }
  auto back = ShadowDocument::FromStored(*stored);
  ASSERT_TRUE(back.ok()) << *stored << ": " << back.status().message();
  EXPECT_EQ(back->DocumentJson(), built->DocumentJson()) << event << "\n" << *stored;
  EXPECT_EQ(back->StoredJson(), built->StoredJson()) << event << "\n" << *stored;
  EXPECT_EQ(back->Delta(), built->Delta()) << event;
}

TEST(ShadowRestoreTest, TheStoredFormOfARecordReadsBackAsTheDocumentItHolds) {
  std::mt19937 rng(20261207);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
  const std::vector<std::string> leaves = {"1",
                                           "-7",
                                           "1.0",
                                           "0.1",
                                           "1e300",
                                           "-2.5e-8",
                                           "18446744073709551615",
                                           "true",
                                           "null",
                                           "\"x\"",
                                           "\"é\\u00e9\\n\\\"\"",
                                           "[1,2.0,\"a\",[]]",
                                           "{}",
                                           "{\"n\":{\"m\":3.25}}"};
  for (int round = 0; round < 300; ++round) {
    ShadowDocument d;
    int updates = 1 + pick(4);
    for (int u = 0; u < updates; ++u) {
      std::string req = "{\"state\":{";
      for (std::string section : {"desired", "reported"}) {
        if (pick(3) == 0) {
          continue;
        }
        if (req.back() != '{') {
          req += ',';
        }
        req += "\"" + section + "\":{";
        int members = pick(3) == 0 ? 40 : 1 + pick(6);  // (past 32 members: the set path)
        for (int m = 0; m < members; ++m) {
          req += fmt::format("{}\"k{}\":{}", m == 0 ? "" : ",", pick(50),
                             leaves[pick(static_cast<int>(leaves.size()))]);
        }
        req += "}";
      }
      req += "}}";
      (void)d.Update(req, kT + round + u);  // (some are refused: duplicates, nulls in arrays)
    }
    if (pick(2) == 0) {
      d.SetPresence(pick(2) == 0, 1700000000123 + round);
    }
    if (pick(3) == 0) {
      d.SetModel("thermostat@" + std::to_string(pick(3)));
    }
    if (!d.exists()) {
      continue;
    }
    ExpectStoredAsBuilt(R"({"previous":null,"current":)" + d.DocumentJson() + R"(,"timestamp":1})");
  }
  // Records gnomon does not write the way it writes them, and ones it refuses.
  for (
      const char* event : {
          R"({"current":{"state":{"reported":{"a":1,"b":{"c":2}}},"version":3,"timestamp":9}})",
          R"({"current":{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":4},"gone":{"timestamp":5}}},"version":3}})",
          R"({"current":{"state":{"reported":{"a":1},"desired":7},"metadata":{"reported":5,"desired":{"x":1}},"version":3,"timestamp":2}})",
          R"({"current":{"state":{"desired":{}},"metadata":[],"version":1,"timestamp":2}})",
          R"({"current":{"state":{"reported":{"a":1}},"metadata":{"connected":"yes","lastSeen":1,"model":3},"version":3}})",
          R"({"current":{"state":{"reported":{"a":1}},"metadata":{"connected":false},"version":3}})",
          // (a timestamp that is a whole double does not count: the record's own is taken)
          R"({"current":{"state":{"desired":{"fan":2.0}},"metadata":{"desired":{"fan":{"timestamp":170000.000}}},"version":3,"timestamp":1700000000}})",
          R"({"current":{"state":{},"version":1.5}})",
          R"({"current":{"state":{},"version":18446744073709551615}})",
          R"({"current":{"state":[],"version":1}})",
          R"({"current":[1]})",
          R"({"current":null})",
          R"({"previous":{"a":1,"a":2},"current":{"state":{},"version":1}})",
          R"({"current":{"state":{"reported":{"a":{"b":1,"b":1}}},"version":1}})",
          R"({"current":{"state":{},"version":1},"current":{"state":{},"version":2}})",
          R"({"current":{"state":{"reported":{"":1,"a":2,"":3}},"version":1}})",
          R"({"current":{"state":{"reported":{"a":1},"reported":{"a":2}},"version":1}})",
          R"({"current":{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":1,"timestamp":2}}},"version":1}})",
          R"({"current":{"state":{"desired":5},"metadata":{"desired":{"a":[{"x":1,"x":1}]}},"version":1}})",
          R"({"current":{"state":{"reported":{"a":1}},"version":1,"other":{"k":1,"k":2}}})",
          R"({"current":{"state":{},"version":1}})",
          R"([{"current":{"state":{},"version":1}}])",
          "{\"current\":{\"state\":{\"reported\":{\"s\":\"\xff\"}},\"version\":1}}",
          R"({"current":{"state":{},"version":1})",
          "",
      }) {
    ExpectStoredAsBuilt(event);
  }
}

}  // namespace
}  // namespace gnomon::shadow

// SPDX-License-Identifier: Apache-2.0
#include "shadow_topic.h"

#include <gtest/gtest.h>

#include <string>
#include <variant>

namespace gnomon::engine {
namespace {

constexpr std::string_view kPrefix = "$aws/things";

ShadowTarget Parsed(std::string_view topic) {
  auto r = ParseShadowTopic(kPrefix, topic);
  if (auto* err = std::get_if<shadow::ShadowError>(&r)) {
    ADD_FAILURE() << topic << ": " << err->code << " " << err->message;
    return {};
  }
  return std::get<ShadowTarget>(r);
}

shadow::ShadowError Refused(std::string_view topic) {
  auto r = ParseShadowTopic(kPrefix, topic);
  if (!std::holds_alternative<shadow::ShadowError>(r)) {
    ADD_FAILURE() << topic << " parsed";
    return {};
  }
  return std::get<shadow::ShadowError>(r);
}

TEST(ShadowTopicTest, ParsesClassicAndNamedShadowsAndEveryVerb) {
  ShadowTarget t = Parsed("$aws/things/lock-1/shadow/update");
  EXPECT_EQ(t.thing, "lock-1");
  EXPECT_EQ(t.name, "");
  EXPECT_EQ(t.verb, ShadowVerb::kUpdate);
  t = Parsed("$aws/things/lock-1/shadow/name/door_2/delete");
  EXPECT_EQ(t.thing, "lock-1");
  EXPECT_EQ(t.name, "door_2");
  EXPECT_EQ(t.verb, ShadowVerb::kDelete);
  EXPECT_EQ(Parsed("$aws/things/a/shadow/get").verb, ShadowVerb::kGet);
  EXPECT_EQ(Parsed("$aws/things/a/shadow/changes").verb, ShadowVerb::kChanges);
}

TEST(ShadowTopicTest, ATopicIsItsBasePlusItsVerb) {
  for (std::string_view name : {"", "door"}) {
    for (ShadowVerb v :
         {ShadowVerb::kUpdate, ShadowVerb::kGet, ShadowVerb::kDelete, ShadowVerb::kChanges}) {
      std::string topic = ShadowTopic(kPrefix, "t-9", name) + "/" + std::string(VerbName(v));
      ShadowTarget t = Parsed(topic);
      EXPECT_EQ(t.thing, "t-9");
      EXPECT_EQ(t.name, name);
      EXPECT_EQ(t.verb, v);
    }
  }
}

TEST(ShadowTopicTest, RefusesOtherShapesBadNamesAndUnknownVerbsWith400) {
  for (std::string_view topic : {
           "$aws/things",                              // the prefix alone
           "$aws/things/",                             // nothing after it
           "$aws/thingsX/a/shadow/get",                // another prefix
           "$aws/things/a/shadow",                     // no verb
           "$aws/things/a/shadows/get",                // not "shadow"
           "$aws/things/a/shadow/name/n",              // named, no verb
           "$aws/things/a/shadow/named/n/get",         // not "name"
           "$aws/things/a/shadow/name/n/get/extra",    // a level too many
           "$aws/things/a/shadow/update/accepted",     // an answer topic, not a request
           "$aws/things/a/shadow/name/n/update/x/y/z"  // many too many
       }) {
    shadow::ShadowError e = Refused(topic);
    EXPECT_EQ(e.code, 400) << topic;
    EXPECT_EQ(e.error, "INVALID_TOPIC") << topic;
  }
  EXPECT_EQ(Refused("$aws/things/a b/shadow/get").error, "INVALID_THING_NAME");
  EXPECT_EQ(Refused("$aws/things//shadow/get").error, "INVALID_THING_NAME");
  EXPECT_EQ(Refused("$aws/things/+/shadow/get").error, "INVALID_THING_NAME");
  EXPECT_EQ(Refused("$aws/things/" + std::string(129, 'a') + "/shadow/get").error,
            "INVALID_THING_NAME");
  EXPECT_EQ(Refused("$aws/things/a/shadow/name//get").error, "INVALID_SHADOW_NAME");
  EXPECT_EQ(Refused("$aws/things/a/shadow/name/n\x01/get").error, "INVALID_SHADOW_NAME");
  shadow::ShadowError e = Refused("$aws/things/a/shadow/patch");
  EXPECT_EQ(e.error, "INVALID_TOPIC");
  EXPECT_NE(e.message.find("'patch'"), std::string::npos) << e.message;
}

TEST(ShadowTopicTest, ErrorsQuoteAtMostABoundedPartOfTheTopic) {
  std::string huge = "x/" + std::string(1 << 20, 'y');
  EXPECT_LT(Refused(huge).message.size(), 512u);
  std::string verb = "$aws/things/a/shadow/" + std::string(1 << 20, 'v');
  EXPECT_LT(Refused(verb).message.size(), 512u);
}

}  // namespace
}  // namespace gnomon::engine

// SPDX-License-Identifier: Apache-2.0
#include "gnomon/core/json.h"

#include <gtest/gtest.h>

namespace gnomon::json {
namespace {

TEST(JsonTest, QuotesAndEscapes) {
  std::string out;
  AppendQuoted(out, "a\"b\\c\n\t\x01é");
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\n\\t\\u0001é\"");
}

// An empty view quotes as "" without its data being read (a default view's data() is null:
// the dead letter of a refused change-log record quoted one, and UBSan stopped gnomon on the
// memcpy).
TEST(JsonTest, QuotesAnEmptyViewWithoutTouchingItsData) {
  std::string out = "x";
  AppendQuoted(out, std::string_view());
  EXPECT_EQ(out, "x\"\"");
}

TEST(JsonTest, WritesIntegralNumbersWithoutFraction) {
  std::string out;
  AppendNumber(out, 42.0);
  out += ',';
  AppendNumber(out, -0.5);
  out += ',';
  AppendNumber(out, 9007199254740992.0);
  out += ',';
  AppendNumber(out, 1e300);
  out += ',';
  AppendNumber(out, 0.1);
  EXPECT_EQ(out, "42,-0.5,9007199254740992,1e+300,0.1");
}

TEST(JsonTest, NonFiniteBecomesNull) {
  std::string out;
  AppendNumber(out, std::numeric_limits<double>::infinity());
  EXPECT_EQ(out, "null");
}

TEST(JsonTest, ValidatesUtf8) {
  EXPECT_TRUE(IsValidUtf8("héllo"));
  EXPECT_FALSE(IsValidUtf8("\xff\xfe"));
  EXPECT_FALSE(IsValidUtf8("\xc3"));
}

TEST(JsonTest, Base64) {
  EXPECT_EQ(Base64(""), "");
  EXPECT_EQ(Base64("f"), "Zg==");
  EXPECT_EQ(Base64("fo"), "Zm8=");
  EXPECT_EQ(Base64("foo"), "Zm9v");
  EXPECT_EQ(Base64("foobar"), "Zm9vYmFy");
}

TEST(JsonTest, FromBase64ReadsWhatBase64WritesAndRefusesTheRest) {
  std::string bytes;
  for (int i = 0; i < 256; ++i) {
    bytes += static_cast<char>(i);
  }
  std::string out;
  for (size_t n = 0; n <= bytes.size(); n += 37) {
    ASSERT_TRUE(FromBase64(Base64(bytes.substr(0, n)), out)) << n;
    EXPECT_EQ(out, bytes.substr(0, n));
  }
  for (const char* bad : {"Zg=", "Z===", "Zm9v!A==", "=Zg=", "Zg==Zg==", "Zm 9"}) {
    EXPECT_FALSE(FromBase64(bad, out)) << bad;
  }
}

TEST(JsonTest, ObjectWriterNeverWritesInvalidUtf8) {
  std::string out;
  ObjectWriter(out).Field("a", "x\xff").Field("n", 3).FieldNull("z").Close();
  EXPECT_EQ(out, "{\"a\":\"x?\",\"n\":3,\"z\":null}");
}

}  // namespace
}  // namespace gnomon::json

// SPDX-License-Identifier: Apache-2.0
// Randomized JSON documents through a rule, both ways (lazy view re-encoded, and
// json.decode + json.encode): the output must equal the input as a JSON value.
#include <gtest/gtest.h>
#include <simdjson.h>

#include <random>

#include "gnomon/rules/rules.h"
#include "tests/support/random_json.h"

namespace gnomon::rules {
namespace {

// Same JSON value? Objects compare as maps, numbers by value (integers exactly; beyond 2^53
// the rule gives strings, which must spell the original digits).
bool SameValue(simdjson::dom::element a, simdjson::dom::element b, std::string& why) {
  using T = simdjson::dom::element_type;
  if (a.type() == T::OBJECT && b.type() == T::OBJECT) {
    simdjson::dom::object oa(a), ob(b);
    if (oa.size() != ob.size()) {
      why = "object sizes differ";
      return false;
    }
    for (auto f : oa) {
      simdjson::dom::element v;
      if (ob.at_key(f.key).get(v) != simdjson::SUCCESS) {
        why = "missing key " + std::string(f.key);
        return false;
      }
      if (!SameValue(f.value, v, why)) {
        return false;
      }
    }
    return true;
  }
  if (a.type() == T::ARRAY && b.type() == T::ARRAY) {
    simdjson::dom::array aa(a), ab(b);
    if (aa.size() != ab.size()) {
      why = "array sizes differ";
      return false;
    }
    auto it = ab.begin();
    for (auto v : aa) {
      if (!SameValue(v, *it, why)) {
        return false;
      }
      ++it;
    }
    return true;
  }
  constexpr int64_t kExact = int64_t{1} << 53;
  bool a_big = (a.type() == T::INT64 && (int64_t(a) > kExact || int64_t(a) < -kExact)) ||
               (a.type() == T::UINT64 && uint64_t(a) > (uint64_t{1} << 53));
  if (a_big && b.type() == T::STRING) {
    std::string digits = simdjson::minify(a);
    if (std::string_view(b) == digits) {
      return true;
    }
  }
  double x, y;
  if (a.get_double().get(x) == simdjson::SUCCESS && b.get_double().get(y) == simdjson::SUCCESS) {
    if (x == y) {
      return true;
    }
  } else if (simdjson::minify(a) == simdjson::minify(b)) {
    return true;
  }
  why = simdjson::minify(a) + " became " + simdjson::minify(b);
  return false;
}

TEST(JsonFidelityTest, RandomDocumentsSurviveViewsAndDecodeEncode) {
  auto set = RuleSet::FromSources(
      {{"r.lua", "return rule { name = 'r', from = 'x/#', handle = function(msg, ctx) "
                 "ctx.emit('out', msg.payload) "
                 "ctx.emit('out', json.decode(msg.raw)) "
                 "ctx.emit('out', json.totable(msg.payload)) end }"}},
      RuleSetOptions{{"out"}});
  ASSERT_TRUE(set.ok()) << set.status().message();
  FixedClock clock(0);
  auto rt = RuleRuntime::Create(*set, clock);
  ASSERT_TRUE(rt.ok());
  testing::RandomJson gen(1234);
  simdjson::dom::parser pin, pout;
  for (int i = 0; i < 3000; ++i) {
    std::string doc = gen.Doc();
    doc.reserve(doc.size() + simdjson::SIMDJSON_PADDING);
    simdjson::dom::element in;
    ASSERT_EQ(pin.parse(doc).get(in), simdjson::SUCCESS) << doc;
    MessageView m{"x/1", "d", &doc, "s", nullptr, 0, static_cast<uint64_t>(i + 1)};
    CallResult r;
    (*rt)->Run(0, m, r);
    ASSERT_EQ(r.outcome, Outcome::kOk) << doc << "\n" << r.reason;
    ASSERT_EQ(r.effects.size(), 3u);
    for (size_t e = 0; e < 3; ++e) {
      simdjson::dom::element out;
      ASSERT_EQ(pout.parse(r.effects[e].payload).get(out), simdjson::SUCCESS)
          << r.effects[e].payload;
      std::string why;
      // The view (e == 0) is copied verbatim; decode/encode (1, 2) goes through Lua numbers.
      EXPECT_TRUE(SameValue(in, out, why)) << "effect " << e << ": " << why << "\n  in:  " << doc
                                           << "\n  out: " << r.effects[e].payload;
    }
  }
}

}  // namespace
}  // namespace gnomon::rules

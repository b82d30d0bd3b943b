// SPDX-License-Identifier: Apache-2.0
// The payload a device sends, through what a rule does with it: lazy view reads, json.totable,
// json.pairs, json.decode of the raw bytes, json.encode of the view and of its copy. Checks that
// the tape scan for duplicate keys agrees with the DOM walk, and that emitting the payload fails
// with "duplicate key" exactly when it holds one.
#include <simdjson.h>

#include <cstdint>
#include <memory>
#include <string>

#include "gnomon/rules/rules.h"
#include "rules/src/lua_json.h"

namespace {

constexpr const char* kRule = R"lua(
return rule { name = "f", from = "#", handle = function(msg, ctx)
  local p = msg.payload
  if p == nil then return ctx.drop(msg.payload_error) end
  local n = 0
  local function walk(v, depth)
    if depth > 20 or n > 2000 then return end
    n = n + 1
    if type(v) == "userdata" then
      local _ = #v
      for k, x in json.pairs(v) do walk(x, depth + 1) end
      local _ = v[1], v.a, v[""]
    end
  end
  -- Each step on its own: a key held twice fails the step that reads it.
  pcall(walk, p, 0)
  pcall(function() ctx.emit("out", json.totable(p)) end)
  local ok, t = pcall(json.decode, msg.raw)
  if ok then ctx.emit("out", json.encode(t)) end
  ctx.emit("out", p)  -- last, unprotected: fails the call exactly when p holds a key twice
end }
)lua";

struct Harness {
  Harness() {
    auto set = gnomon::rules::RuleSet::FromSources({{"f.lua", kRule}},
                                                   gnomon::rules::RuleSetOptions{{"out"}});
    if (!set.ok()) {
      __builtin_trap();
    }
    rt = std::move(gnomon::rules::RuleRuntime::Create(*set, clock)).value();
  }
  gnomon::FixedClock clock{0};
  std::unique_ptr<gnomon::rules::RuleRuntime> rt;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Harness h;
  static uint64_t id = 0;
  std::string payload(reinterpret_cast<const char*>(data), size);
  if (size % 2 == 0) {
    payload.reserve(size + simdjson::SIMDJSON_PADDING);  // both parse paths: in place and copied
  }
  gnomon::rules::MessageView m{"d/x", "x", &payload, "fuzz", nullptr, 0, ++id};
  gnomon::rules::CallResult r;
  h.rt->Run(0, m, r);
  // The tape scan for duplicate keys and the DOM walk it stands in front of agree.
  static simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (parser.parse(data, size).get(root) == simdjson::SUCCESS &&
      (root.is_object() || root.is_array())) {
    auto fast = gnomon::rules::ScanTapeForDuplicateKeys(parser.doc);
    std::string where;
    bool slow = gnomon::rules::FindDuplicateKey(root, where);
    if (fast != gnomon::rules::KeyScan::kUnknown &&
        (fast == gnomon::rules::KeyScan::kDuplicate) != slow) {
      __builtin_trap();
    }
    bool refused = r.outcome == gnomon::rules::Outcome::kFailed &&
                   r.reason.find("duplicate key") != std::string::npos;
    // (Filtered: the rule saw no payload, as when the runtime's parse refused it.)
    if (slow && r.outcome != gnomon::rules::Outcome::kFailed &&
        r.outcome != gnomon::rules::Outcome::kFiltered) {
      __builtin_trap();  // a key held twice went out
    }
    if (!slow && refused) {
      __builtin_trap();  // a document without one was refused
    }
  }
  return 0;
}

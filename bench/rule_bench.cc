// SPDX-License-Identifier: Apache-2.0
// One rule call on a ~200-byte telemetry message: the lazy payload view against decoding the
// whole payload into a table, the cost of the call itself, and reporting the payload into the
// shadow.
#include <benchmark/benchmark.h>
#include <simdjson.h>

#include "gnomon/rules/rules.h"

namespace gnomon::rules {
namespace {

constexpr const char* kPayload =
    R"({"temp":57.25,"humidity":41,"battery":88,"rssi":-61,"fw":"1.2.0","seq":123456,)"
    R"("status":"ok","loc":{"lat":52.123456,"lon":13.654321},"tags":["a","b","c"]})";

std::unique_ptr<RuleRuntime> Runtime(const std::string& body, bool jit = false) {
  static FixedClock clock(0);
  std::string src = std::string("return rule { name = 'b', from = 'devices/+/telemetry',") +
                    (jit ? " jit = true," : "") + "\n  handle = function(msg, ctx)\n" + body +
                    "\n end }";
  auto set = RuleSet::FromSources({{"b.lua", src}}, RuleSetOptions{{"alerts"}});
  if (!set.ok()) {
    std::abort();
  }
  return std::move(RuleRuntime::Create(*set, clock)).value();
}

void RunRule(benchmark::State& state, const std::string& body, bool jit = false) {
  auto rt = Runtime(body, jit);
  std::string payload = kPayload;
  payload.reserve(payload.size() + simdjson::SIMDJSON_PADDING);
  MessageView m{"devices/dev00042/telemetry", "dev00042", &payload, "bench", nullptr, 1};
  CallResult r;
  for (auto _ : state) {
    rt->Run(0, m, r);
    if (r.outcome == Outcome::kFailed) {
      state.SkipWithError(r.reason.c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

// The quickstart's overheat rule: read one field, emit an alert (JSON-encoded record). The
// payload comes from `source` ("msg.payload" or a full decode).
std::string OverheatBody(const std::string& source) {
  return "local p = " + source + R"(
    local t = p.temp
    if t == nil then return ctx.drop("no temp") end
    if t > 50 then
      ctx.emit("alerts", { device = msg.device, temp = t, ts = msg.ts,
                           severity = t > 55 and "high" or "warn" })
    end)";
}

void BM_OverheatRuleLazy(benchmark::State& state) { RunRule(state, OverheatBody("msg.payload")); }
BENCHMARK(BM_OverheatRuleLazy);

// The same rule with `jit = true`: compiled, no instruction budget (limits cost).
void BM_OverheatRuleLazyJit(benchmark::State& state) {
  RunRule(state, OverheatBody("msg.payload"), true);
}
BENCHMARK(BM_OverheatRuleLazyJit);

// A loop-heavy rule, where the interpreter (limits on) and the JIT differ most.
void BM_LoopRuleInterpreted(benchmark::State& state) {
  RunRule(state, "local n = 0 for i = 1, 1000 do n = n + i * msg.ts end");
}
BENCHMARK(BM_LoopRuleInterpreted);

void BM_LoopRuleJit(benchmark::State& state) {
  RunRule(state, "local n = 0 for i = 1, 1000 do n = n + i * msg.ts end", true);
}
BENCHMARK(BM_LoopRuleJit);

// The same rule building the whole payload as a table first (what the lazy view avoids).
void BM_OverheatRuleDecodeTable(benchmark::State& state) {
  RunRule(state, OverheatBody("json.decode(msg.raw)"));
}
BENCHMARK(BM_OverheatRuleDecodeTable);

// Field access alone: one lazy read vs a full decode, no emit.
void BM_PayloadFieldLazy(benchmark::State& state) {
  RunRule(state, "local t = msg.payload.loc.lat");
}
BENCHMARK(BM_PayloadFieldLazy);

void BM_PayloadFieldDecodeTable(benchmark::State& state) {
  RunRule(state, "local t = json.decode(msg.raw).loc.lat");
}
BENCHMARK(BM_PayloadFieldDecodeTable);

// The floor: calling an empty handle.
void BM_EmptyRuleCall(benchmark::State& state) { RunRule(state, ""); }
BENCHMARK(BM_EmptyRuleCall);

// The shadow's core loop: every message reported into the device's shadow. The payload view
// is written as it came; the workaround it replaces made a Lua table of it first.
void BM_ShadowReportPayloadView(benchmark::State& state) {
  RunRule(state, "ctx.shadow:report(msg.payload)");
}
BENCHMARK(BM_ShadowReportPayloadView);

void BM_ShadowReportToTable(benchmark::State& state) {
  RunRule(state, "ctx.shadow:report(json.totable(msg.payload))");
}
BENCHMARK(BM_ShadowReportToTable);

}  // namespace
}  // namespace gnomon::rules

// SPDX-License-Identifier: Apache-2.0
// One rule call on a ~200-byte telemetry message: the lazy payload view against decoding the
// whole payload into a table, the cost of the call itself, and reporting the payload into the
// shadow.
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <simdjson.h>

#include <string>
#include <vector>

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

// ctx.state as the engine keeps it for one device: the committed JSON, replaced by each
// call's state effect.
class OneState final : public StateReader {
 public:
  Result<const StoredState*> ReadState(std::string_view, std::string_view) override {
    if (stored.json.empty() && stored.windows.empty()) {
      return nullptr;
    }
    return &stored;  // read in place, as the engine's reader does
  }
  StoredState stored;
};

// Calls `body` once per iteration; with `devices` > 1, for that many devices in turn.
void RunRule(benchmark::State& state, const std::string& body, bool jit = false,
             OneState* states = nullptr, int devices = 1) {
  auto rt = Runtime(body, jit);
  std::string payload = kPayload;
  payload.reserve(payload.size() + simdjson::SIMDJSON_PADDING);
  MessageView m{"devices/dev00042/telemetry", "dev00042", &payload, "bench", nullptr, 1};
  m.states = states;
  std::vector<std::string> names;
  for (int i = 0; devices > 1 && i < devices; ++i) {
    names.push_back(fmt::format("dev{:05}", i));
  }
  size_t next = 0;
  CallResult r;
  for (auto _ : state) {
    m.ts_ms += 1000;
    if (!names.empty()) {
      m.device = names[next++ % names.size()];
    }
    rt->Run(0, m, r);
    if (r.outcome == Outcome::kFailed) {
      state.SkipWithError(r.reason.c_str());
      break;
    }
    if (states != nullptr && !r.effects.empty() && r.effects.back().kind == Effect::Kind::kState) {
      states->stored.json = std::move(r.effects.back().payload);
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

// Issue 19's merge: every field of the payload into its device's state, a Lua table kept across
// calls, through json.pairs over the view; 10,000 devices in turn, so the rule keeps what the
// benchmark's rule keeps (and its garbage collector has that much to go through).
void BM_MergeRuleJsonPairs(benchmark::State& state) {
  RunRule(state, R"(
    devices = devices or {}
    local s = devices[msg.device]
    if s == nil then s = { count = 0 }; devices[msg.device] = s end
    for k, v in json.pairs(msg.payload) do s[k] = v end
    s.count = s.count + 1)",
          false, nullptr, 10000);
}
BENCHMARK(BM_MergeRuleJsonPairs);

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

namespace gnomon::rules {
namespace {

// bench/rules/stateful.lua's window update: kept in ctx.state (decoded, changed and encoded on
// every call) against the same update on a Lua table the rule keeps itself (no durability).
constexpr const char* kWindowBody = R"(
    local t = msg.payload.temp
    local start = msg.ts - msg.ts % 300000
    if s.start ~= start then
      if s.start then
        ctx.emit("alerts", { device = msg.device, start = s.start, count = s.count,
                             avg = s.sum / s.count, min = s.min, max = s.max })
      end
      s.start, s.count, s.sum, s.min, s.max = start, 0, 0, t, t
    end
    s.count, s.sum = s.count + 1, s.sum + t
    if t < s.min then s.min = t end
    if t > s.max then s.max = t end)";

void BM_WindowInCtxState(benchmark::State& state) {
  OneState states;
  RunRule(state, std::string("local s = ctx.state\n") + kWindowBody, false, &states);
}
BENCHMARK(BM_WindowInCtxState);

void BM_WindowInLuaGlobal(benchmark::State& state) {
  RunRule(state, std::string("W = W or {}; local s = W[msg.device] or {}; W[msg.device] = s\n") +
                     kWindowBody);
}
BENCHMARK(BM_WindowInLuaGlobal);

// bench/rules/stateful.lua's call: a declared 5-minute window of temp (avg, min, max, count)
// and a ctx.state counter, both read and written back on every call.
void BM_DeclaredWindowAndState(benchmark::State& state) {
  static FixedClock clock(0);
  std::string src = R"(return rule { name = 'b', from = 'devices/+/telemetry',
    windows = { t5m = { tumbling = '5m', of = 'temp', agg = { 'avg', 'min', 'max', 'count' },
                        time = 'msg.ts' } },
    on_window = function(w, ctx) end,
    handle = function(msg, ctx) ctx.state.n = (ctx.state.n or 0) + 1 end })";
  auto set = RuleSet::FromSources({{"b.lua", src}}, RuleSetOptions{{"alerts"}});
  auto rt = std::move(RuleRuntime::Create(*set, clock)).value();
  std::string payload = kPayload;
  payload.reserve(payload.size() + simdjson::SIMDJSON_PADDING);
  MessageView m{"devices/dev00042/telemetry", "dev00042", &payload, "bench", nullptr, 1};
  OneState states;
  StoredState row;
  m.states = &states;
  CallResult r;
  for (auto _ : state) {
    m.ts_ms += 1000;
    ++m.id;
    rt->Run(0, m, r);
    if (r.outcome == Outcome::kFailed) {
      state.SkipWithError(r.reason.c_str());
      break;
    }
    if (!r.effects.empty() && r.effects.back().kind == Effect::Kind::kState) {
      states.stored.json = std::move(r.effects.back().payload);
      states.stored.windows = std::move(r.effects.back().windows);
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DeclaredWindowAndState);

// The state read only (nothing changes, nothing is encoded... but the table is).
void BM_CtxStateReadOnly(benchmark::State& state) {
  OneState states;
  states.stored.json = R"({"start":1700000000000,"count":12,"sum":612.5,"min":40.25,"max":57.25})";
  RunRule(state, "local s = ctx.state; if s.count > 1e9 then ctx.drop('x') end", false, &states);
}
BENCHMARK(BM_CtxStateReadOnly);

}  // namespace
}  // namespace gnomon::rules

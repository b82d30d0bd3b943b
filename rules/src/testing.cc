// SPDX-License-Identifier: Apache-2.0
#include "gnomon/rules/testing.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <tuple>

#include "gnomon/core/json.h"
#include "gnomon/core/topic.h"
#include "gnomon/rules/rules.h"
#include "gnomon/rules/windows.h"
#include "gnomon/shadow/document.h"
#include "sandbox.h"

namespace gnomon::rules {
namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

std::string ReadText(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  *ok = static_cast<bool>(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The 1-based line where `"name"` (or 'name') first appears in `text`; 0 if nowhere.
int LineOf(const std::string& text, const std::string& name) {
  for (const std::string& quoted : {"\"" + name + "\"", "'" + name + "'"}) {
    size_t pos = text.find(quoted);
    if (pos != std::string::npos) {
      return 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<long>(pos), '\n'));
    }
  }
  return 0;
}

bool NumbersEqual(element a, element b) {
  double x = 0, y = 0;
  if (a.get_double().get(x) != simdjson::SUCCESS || b.get_double().get(y) != simdjson::SUCCESS) {
    return false;
  }
  return x == y;
}

bool IsNumber(element e) {
  auto t = e.type();
  return t == element_type::INT64 || t == element_type::UINT64 || t == element_type::DOUBLE;
}

// Does `actual` contain `expected`? Objects: every expected key matches; arrays: same length,
// item by item; scalars: equal (numbers by value). On a mismatch, `why` says where.
bool SubsetMatch(element expected, element actual, const std::string& path, std::string& why) {
  if (IsNumber(expected) && IsNumber(actual)) {
    if (NumbersEqual(expected, actual)) {
      return true;
    }
  } else if (expected.type() == element_type::OBJECT && actual.type() == element_type::OBJECT) {
    for (auto f : simdjson::dom::object(expected)) {
      element a;
      std::string p = path + "." + std::string(f.key);
      if (simdjson::dom::object(actual).at_key(f.key).get(a) != simdjson::SUCCESS) {
        why = fmt::format("{}: expected {}, got nothing", p, simdjson::minify(f.value));
        return false;
      }
      if (!SubsetMatch(f.value, a, p, why)) {
        return false;
      }
    }
    return true;
  } else if (expected.type() == element_type::ARRAY && actual.type() == element_type::ARRAY) {
    simdjson::dom::array e(expected), a(actual);
    if (e.size() != a.size()) {
      why = fmt::format("{}: expected {} item(s), got {}", path, e.size(), a.size());
      return false;
    }
    size_t i = 0;
    auto ai = a.begin();
    for (element item : e) {
      if (!SubsetMatch(item, *ai, fmt::format("{}[{}]", path, ++i), why)) {
        return false;
      }
      ++ai;
    }
    return true;
  } else if (expected.type() == actual.type() && simdjson::minify(expected) == simdjson::minify(actual)) {
    return true;
  }
  why = fmt::format("{}: expected {}, got {}", path, simdjson::minify(expected),
                    simdjson::minify(actual));
  return false;
}

// A JSON object of lists, built as text: {"sink": [record, ...], ...}.
using Buckets = std::map<std::string, std::vector<std::string>>;

std::string BucketsJson(const Buckets& b) {
  std::string out = "{";
  for (const auto& [k, list] : b) {
    if (out.size() > 1) {
      out += ',';
    }
    json::AppendQuoted(out, k);
    out += ":[";
    for (size_t i = 0; i < list.size(); ++i) {
      out += i ? "," : "";
      out += list[i];
    }
    out += ']';
  }
  return out + "}";
}

// Compares expected `emit`/`publish` (by sink or topic) with what happened. Every key with
// records must be expected; `{}` for a key means no records.
bool MatchBuckets(element expected, const Buckets& actual, const std::string& what,
                  std::string& why) {
  if (expected.type() != element_type::OBJECT && expected.type() != element_type::ARRAY) {
    why = fmt::format("expect.{} must be a table of lists", what);
    return false;
  }
  std::string actual_json = BucketsJson(actual);
  simdjson::dom::parser parser;
  element act = parser.parse(actual_json);
  if (expected.type() == element_type::ARRAY && simdjson::dom::array(expected).size() == 0) {
    if (!actual.empty()) {
      why = fmt::format("{}: expected none, got {}", what, actual_json);
      return false;
    }
    return true;
  }
  for (const auto& [k, list] : actual) {
    element e;
    if (simdjson::dom::object(expected).at_key(k).get(e) != simdjson::SUCCESS) {
      why = fmt::format("{}.{}: expected nothing, got {} record(s)\n  actual: {}", what, k,
                        list.size(), actual_json);
      return false;
    }
  }
  for (auto f : simdjson::dom::object(expected)) {
    element a;
    std::string empty_list = "[]";
    simdjson::dom::parser p2;
    if (simdjson::dom::object(act).at_key(f.key).get(a) != simdjson::SUCCESS) {
      a = p2.parse(empty_list);
    }
    element e = f.value;
    simdjson::dom::parser p3;
    if (e.type() == element_type::OBJECT && simdjson::dom::object(e).size() == 0) {
      e = p3.parse(empty_list);  // `{}` from Lua: an empty list
    }
    std::string sub;
    if (!SubsetMatch(e, a, what + "." + std::string(f.key), sub)) {
      why = fmt::format("{}\n  expected: {}\n  actual:   {}", sub, simdjson::minify(e),
                        simdjson::minify(a));
      return false;
    }
  }
  return true;
}

// The shadows of one test, in memory: reads see what earlier inputs of the test wrote.
class TestShadows final : public ShadowReader {
 public:
  explicit TestShadows(int64_t now_ms) : now_s_(now_ms / 1000) {}

  Result<std::optional<std::string>> ReadShadow(std::string_view thing,
                                                std::string_view name) override {
    auto it = docs_.find({std::string(thing), std::string(name)});
    if (it == docs_.end() || !it->second.exists()) {
      return std::optional<std::string>();
    }
    auto got = it->second.Get(name, now_s_);
    return std::optional<std::string>(std::get<std::string>(std::move(got)));
  }

  // Applies an update request; an error names the shadow and the error document.
  Status Update(const std::string& thing, const std::string& name, std::string_view request) {
    auto r = docs_[{thing, name}].Update(request, now_s_);
    if (auto* err = std::get_if<shadow::ShadowError>(&r)) {
      return InvalidArgument(fmt::format("shadow update of {}{}{} rejected: {}", thing,
                                         name.empty() ? "" : "/", name, err->Json(now_s_)));
    }
    return {};
  }

  // {"reported":..., "desired":..., "delta":..., "version": N} of the classic shadow of
  // `thing`, or nothing when it does not exist.
  std::optional<std::string> View(const std::string& thing) const {
    auto it = docs_.find({thing, ""});
    if (it == docs_.end() || !it->second.exists()) {
      return std::nullopt;
    }
    const shadow::ShadowDocument& d = it->second;
    std::string out;
    json::ObjectWriter w(out);
    if (!d.reported().is_null()) {
      w.FieldRaw("reported", d.reported().Json());
    }
    if (!d.desired().is_null()) {
      w.FieldRaw("desired", d.desired().Json());
    }
    shadow::Value delta = d.Delta();
    if (!delta.members().empty()) {
      w.FieldRaw("delta", delta.Json());
    }
    w.Field("version", d.version());
    w.Close();
    return out;
  }

 private:
  int64_t now_s_;
  std::map<std::pair<std::string, std::string>, shadow::ShadowDocument> docs_;
};

// A row of TestStates: a device's by its name, a keyed window's key's by "\1" and the key
// (apart, as in the engine: see StateRowName).
std::string RowId(bool keyed, std::string_view device) {
  return keyed ? "\1" + std::string(device) : std::string(device);
}
// The device (or key) of a row id, and whether it is a key.
std::pair<std::string, bool> ParseRowId(const std::string& id) {
  if (!id.empty() && id[0] == '\1') {
    return {id.substr(1), true};
  }
  return {id, false};
}

// The rule's states (ctx.state) of one test by row (RowId), in memory; the test's calls see
// what earlier ones committed.
class TestStates final : public StateReader {
 public:
  Result<const StoredState*> ReadState(std::string_view rule, std::string_view device) override {
    auto it = states_.find(RowId(ParseStateRowName(rule).second, device));
    if (it == states_.end()) {
      return nullptr;
    }
    return &it->second;
  }
  void Set(const std::string& device, StoredState s) { states_[device] = std::move(s); }
  void Apply(const std::string& device, const Effect& e) {
    if (e.payload.empty() && e.timers.empty() && e.windows.empty()) {
      states_.erase(device);
    } else {
      states_[device] = StoredState{e.state_version, e.payload, e.timers, e.windows};
    }
    if (e.window_due > 0) {
      window_due_[device] = e.window_due;
    } else {
      window_due_.erase(device);
    }
  }
  // The earliest ingest-time window close of any row: (due, row id); nullopt when none.
  std::optional<std::pair<int64_t, std::string>> NextClose() const {
    std::optional<std::pair<int64_t, std::string>> next;
    for (const auto& [device, due] : window_due_) {
      if (!next || due < next->first) {
        next = std::make_pair(due, device);
      }
    }
    return next;
  }
  void Closing(const std::string& device) { window_due_.erase(device); }
  // A device's state (not a key's).
  const StoredState* Find(const std::string& device) const {
    auto it = states_.find(device);
    return it == states_.end() || it->second.json.empty() ? nullptr : &it->second;
  }
  // The earliest pending timer of any row: (due, row id, name); nullopt when none.
  std::optional<std::tuple<int64_t, std::string, std::string>> NextTimer() const {
    std::optional<std::tuple<int64_t, std::string, std::string>> next;
    for (const auto& [device, s] : states_) {
      for (const RuleTimer& t : s.timers) {
        if (!next || t.due_ms < std::get<0>(*next)) {
          next = std::make_tuple(t.due_ms, device, t.name);
        }
      }
    }
    return next;
  }
  // Removes timer `name` of `device` (it fires) and returns it.
  RuleTimer Take(const std::string& device, const std::string& name) {
    auto& timers = states_[device].timers;
    auto it = std::find_if(timers.begin(), timers.end(),
                           [&](const RuleTimer& t) { return t.name == name; });
    RuleTimer t = *it;
    timers.erase(it);
    return t;
  }

 private:
  std::map<std::string, StoredState> states_;
  std::map<std::string, int64_t> window_due_;
};

struct Rule {
  std::string file;
  std::string text;
  std::shared_ptr<const RuleSet> set;
};

// Runs one test (a JSON object) against `rule`.
TestCaseResult RunOne(const Rule& rule, element test, const std::string& file,
                      const std::string& file_text) {
  TestCaseResult r;
  r.rule = rule.set->rules()[0].name;
  r.file = file;
  std::string_view name = "(unnamed)";
  if (test.type() == element_type::OBJECT &&
      test["name"].get_string().get(name) != simdjson::SUCCESS) {
    name = "(unnamed)";
  }
  r.name = std::string(name);
  r.line = LineOf(file_text, r.name);
  auto fail = [&](std::string why) {
    r.passed = false;
    r.failure = std::move(why);
    return r;
  };
  if (test.type() != element_type::OBJECT) {
    return fail("a test must be a table { name =, input =, expect = }");
  }
  element e;
  for (auto f : simdjson::dom::object(test)) {
    if (f.key != "name" && f.key != "input" && f.key != "expect" && f.key != "now" &&
        f.key != "shadow" && f.key != "state") {
      return fail(fmt::format(
          "unknown test field '{}' (known: name, input, now, shadow, state, expect)", f.key));
    }
  }
  int64_t now = 0;
  double now_d = 0;
  if (test["now"].get_double().get(now_d) == simdjson::SUCCESS) {
    now = static_cast<int64_t>(now_d);
  }
  TestShadows shadows(now);
  if (test["shadow"].get(e) == simdjson::SUCCESS) {
    if (e.type() != element_type::OBJECT) {
      return fail("test.shadow: a table of initial shadows by device, "
                  "{ d1 = { reported = {...}, desired = {...} } }");
    }
    for (auto f : simdjson::dom::object(e)) {
      if (f.value.type() != element_type::OBJECT) {
        return fail(fmt::format("test.shadow.{}: a table {{ reported =, desired = }}", f.key));
      }
      Status st = shadows.Update(std::string(f.key), "",
                                 "{\"state\":" + simdjson::minify(f.value) + "}");
      if (!st.ok()) {
        return fail(fmt::format("test.shadow.{}: {}", f.key, st.message()));
      }
    }
  }
  TestStates states;
  if (test["state"].get(e) == simdjson::SUCCESS) {
    if (e.type() != element_type::OBJECT) {
      return fail(
          "test.state: a table of the rule's initial state by device, "
          "{ d1 = { count = 3 } }");
    }
    for (auto f : simdjson::dom::object(e)) {
      if (f.value.type() != element_type::OBJECT && f.value.type() != element_type::ARRAY) {
        return fail(fmt::format("test.state.{}: a table (the device's ctx.state)", f.key));
      }
      states.Set(std::string(f.key),
                 StoredState{rule.set->rules()[0].state_version, simdjson::minify(f.value)});
    }
  }
  FixedClock clock(now);
  auto rt = RuleRuntime::Create(rule.set, clock);
  if (!rt.ok()) {
    return fail(rt.status().message());
  }
  element input;
  if (test["input"].get(input) != simdjson::SUCCESS) {
    return fail("test.input: required, a message { topic =, payload = } or a list of them");
  }
  std::vector<element> inputs;
  if (input.type() == element_type::ARRAY) {
    for (element m : simdjson::dom::array(input)) {
      inputs.push_back(m);
    }
  } else {
    inputs.push_back(input);
  }
  Buckets emits, publishes, invokes;
  bool dropped = false;
  std::string drop_reason;  // the last ctx.drop's
  std::string failed;
  const RuleInfo& info = rule.set->rules()[0];
  // A call's outcome and effects, as the engine would apply them: shadow writes (a rejected
  // one fails the call), the row, then what the test compares.
  // on_window for what a call closed, on_late for what it was late for (run after it, as in
  // the engine); `view` is the call's message.
  std::function<void(const std::string&, CallResult&, const MessageView&)> settle;
  auto after_windows = [&](const std::string& device, CallResult& result, const MessageView& view) {
    std::vector<std::string> closed = std::move(result.closed_windows);
    std::vector<std::string> late = std::move(result.late_windows);
    std::vector<KeyedEvent> keyed = std::move(result.keyed_events);
    for (KeyedEvent& k : keyed) {  // to the key's row, as its owner would
      std::string event;
      json::ObjectWriter ew(event);
      ew.Field("window", k.window).Field("t", k.t);
      std::string v;
      json::AppendNumber(v, k.value);
      ew.FieldRaw("v", v).Close();
      std::string topic = "$gnomon/rules/" + info.name + "/keyed";
      Headers none;
      MessageView kv{topic, k.key, &event, "timer", &none, clock.NowMs(), 0, &shadows, &states};
      kv.call = MessageView::Call::kKeyed;
      kv.event = event;
      kv.keyed = true;
      CallResult r;
      (*rt)->Run(0, kv, r);
      settle(k.key, r, kv);
    }
    for (std::string& event : closed) {
      std::string topic = "$gnomon/rules/" + info.name + "/window";
      Headers none;
      MessageView v{topic, device, &event, "timer", &none, clock.NowMs(), 0, &shadows, &states};
      v.call = MessageView::Call::kWindow;
      v.event = event;
      v.keyed = view.keyed;
      CallResult r;
      (*rt)->Run(0, v, r);
      settle(device, r, v);
    }
    if (info.has_on_late) {
      for (const std::string& name : late) {
        std::string event;
        json::ObjectWriter(event).Field("name", name).Close();
        MessageView v = view;
        v.call = MessageView::Call::kLate;
        v.event = event;
        CallResult r;
        (*rt)->Run(0, v, r);
        settle(device, r, v);
      }
    }
  };
  settle = [&](const std::string& device, CallResult& result, const MessageView& view) {
    if (result.outcome == Outcome::kOk) {
      for (const Effect& eff : result.effects) {
        if (eff.kind != Effect::Kind::kShadowUpdate) {
          continue;
        }
        Status st = shadows.Update(eff.thing, eff.shadow_name, eff.payload);
        if (!st.ok()) {
          result.outcome = Outcome::kFailed;
          result.reason = st.message();
          break;
        }
      }
    }
    if (result.outcome == Outcome::kOk && !result.effects.empty() &&
        result.effects.back().kind == Effect::Kind::kState) {
      states.Apply(RowId(view.keyed, device), result.effects.back());
    }
    if (result.outcome == Outcome::kFailed) {
      failed = result.reason;
      return;
    }
    after_windows(device, result, view);
    if (result.outcome == Outcome::kFiltered) {
      dropped = true;
      drop_reason = result.reason;
      return;
    }
    for (const Effect& eff : result.effects) {
      std::string record;
      if (eff.json) {
        record = eff.payload;
      } else {
        json::AppendQuoted(record, json::IsValidUtf8(eff.payload) ? eff.payload : "<binary>");
      }
      if (eff.kind == Effect::Kind::kEmit) {
        emits[(*rt)->sink_name(eff.sink)].push_back(record);
      } else if (eff.kind == Effect::Kind::kPublish) {
        publishes[eff.topic].push_back(record);
      } else if (eff.kind == Effect::Kind::kInvoke) {
        std::string call;
        json::ObjectWriter(call)
            .Field("service", eff.topic)
            .FieldRaw("params", eff.payload)
            .Close();
        invokes[eff.thing].push_back(std::move(call));
      }
    }
  };
  // Virtual time: the timers and silences due up to `until` fire, earliest first, each with
  // the clock at its due time (as gnomon would run them); then the clock is `until`.
  std::map<std::string, int64_t> last_seen;  // devices whose silence is armed (inactivity)
  auto fire_until = [&](int64_t until) {
    while (true) {
      if (auto close = states.NextClose();
          close && close->first <= until &&
          (!states.NextTimer() || close->first <= std::get<0>(*states.NextTimer()))) {
        clock.Set(std::max(clock.NowMs(), close->first));
        states.Closing(close->second);
        auto [device, keyed] = ParseRowId(close->second);
        std::string topic = "$gnomon/rules/" + info.name + "/advance";
        std::string payload = "{}";
        Headers none;
        MessageView v{topic, device, &payload, "timer", &none, clock.NowMs(), 0, &shadows, &states};
        v.call = MessageView::Call::kAdvance;
        v.event = payload;
        v.keyed = keyed;
        CallResult r;
        (*rt)->Run(0, v, r);
        settle(device, r, v);
        continue;
      }
      auto timer = states.NextTimer();
      std::optional<std::pair<int64_t, std::string>> silence;
      for (const auto& [device, seen] : last_seen) {
        if (!silence || seen + info.inactivity_ms < silence->first) {
          silence = std::make_pair(seen + info.inactivity_ms, device);
        }
      }
      bool fire_timer = timer && std::get<0>(*timer) <= until &&
                        (!silence || std::get<0>(*timer) <= silence->first);
      bool fire_silence = !fire_timer && silence && silence->first <= until;
      if (!fire_timer && !fire_silence) {
        break;
      }
      std::string device, event;
      bool keyed = false;
      json::ObjectWriter ev(event);
      MessageView::Call call;
      if (fire_timer) {
        RuleTimer t = states.Take(std::get<1>(*timer), std::get<2>(*timer));
        std::tie(device, keyed) = ParseRowId(std::get<1>(*timer));
        clock.Set(std::max(clock.NowMs(), t.due_ms));
        ev.Field("name", t.name).Field("due", t.due_ms);
        if (!t.data.empty()) {
          ev.FieldRaw("data", t.data);
        }
        call = MessageView::Call::kTimer;
      } else {
        device = silence->second;
        clock.Set(std::max(clock.NowMs(), silence->first));
        ev.Field("last_seen", last_seen[device]).Field("inactivity_ms", info.inactivity_ms);
        last_seen.erase(device);
        call = MessageView::Call::kInactive;
      }
      ev.Close();
      std::string topic = "$gnomon/rules/" + info.name +
                          (call == MessageView::Call::kTimer ? "/timer" : "/inactive");
      std::string payload = event;
      Headers none;
      MessageView view{topic,         device, &payload, "timer", &none,
                       clock.NowMs(), 0,      &shadows, &states};
      view.call = call;
      view.event = event;
      view.keyed = keyed;
      CallResult result;
      (*rt)->Run(0, view, result);
      settle(device, result, view);
    }
    clock.Set(std::max(clock.NowMs(), until));
  };
  for (size_t i = 0; i < inputs.size(); ++i) {
    element m = inputs[i];
    std::string where = inputs.size() > 1 ? fmt::format("test.input[{}]", i + 1) : "test.input";
    element adv;
    if (m.type() == element_type::OBJECT && m["advance"].get(adv) == simdjson::SUCCESS) {
      std::string_view text;
      double ms_d = 0;
      Result<int64_t> ms = adv.get_string().get(text) == simdjson::SUCCESS ? ParseDurationMs(text)
                           : adv.get_double().get(ms_d) == simdjson::SUCCESS && ms_d >= 0
                               ? Result<int64_t>(static_cast<int64_t>(ms_d))
                               : Result<int64_t>(InvalidArgument("a duration (\"5m\") or ms"));
      if (!ms.ok()) {
        return fail(fmt::format("{}.advance: {}", where, ms.status().message()));
      }
      fire_until(clock.NowMs() + *ms);
      continue;
    }
    std::string_view topic;
    if (m.type() != element_type::OBJECT || m["topic"].get_string().get(topic) != simdjson::SUCCESS) {
      return fail(where + ".topic: required, a string");
    }
    bool matches = false;
    for (const auto& f : info.from) {
      matches = matches || TopicMatches(f, topic);
    }
    if (!matches) {
      return fail(fmt::format("{}.topic '{}' does not match rule.from", where, topic));
    }
    std::string payload;
    element p;
    std::string_view raw;
    if (m["payload"].get(p) == simdjson::SUCCESS) {
      payload = simdjson::minify(p);
    } else if (m["raw"].get_string().get(raw) == simdjson::SUCCESS) {
      payload = std::string(raw);
    }
    payload.reserve(payload.size() + simdjson::SIMDJSON_PADDING);
    std::string_view device_sv;
    std::string device = m["device"].get_string().get(device_sv) == simdjson::SUCCESS
                             ? std::string(device_sv)
                             : std::string(TopicLevel(topic, 2));
    Headers headers;
    simdjson::dom::object h;
    if (m["headers"].get_object().get(h) == simdjson::SUCCESS) {
      for (auto f : h) {
        std::string_view v;
        if (f.value.get_string().get(v) == simdjson::SUCCESS) {
          headers.emplace_back(f.key, v);
        }
      }
    }
    double at_d = 0;
    if (m["at"].get_double().get(at_d) == simdjson::SUCCESS) {
      if (at_d < static_cast<double>(clock.NowMs())) {
        return fail(
            fmt::format("{}.at: {} is before the test's clock ({}): time only goes "
                        "forward",
                        where, static_cast<int64_t>(at_d), clock.NowMs()));
      }
      fire_until(static_cast<int64_t>(at_d));
    } else {
      fire_until(clock.NowMs());
    }
    int64_t ts = clock.NowMs();
    double ts_d = 0;
    if (m["ts"].get_double().get(ts_d) == simdjson::SUCCESS) {
      ts = static_cast<int64_t>(ts_d);
    }
    std::string topic_s(topic);
    MessageView view{topic_s, device, &payload, "test", &headers, ts, 0, &shadows, &states};
    CallResult result;
    (*rt)->Run(0, view, result);
    if (info.inactivity_ms > 0) {
      last_seen[device] = clock.NowMs();
    }
    settle(device, result, view);
  }

  element expect;
  if (test["expect"].get(expect) != simdjson::SUCCESS || expect.type() != element_type::OBJECT) {
    return fail("test.expect: required, a table");
  }
  std::string_view fail_sub;
  bool want_fail = expect["fail"].get_string().get(fail_sub) == simdjson::SUCCESS;
  // expect.drop: true, or a substring of the reason given to ctx.drop.
  bool want_drop = false;
  std::string_view drop_sub;
  if (expect["drop"].get_string().get(drop_sub) == simdjson::SUCCESS) {
    want_drop = true;
  } else if (expect["drop"].get_bool().get(want_drop) != simdjson::SUCCESS) {
    want_drop = false;
  }
  for (auto f : simdjson::dom::object(expect)) {
    if (f.key != "emit" && f.key != "publish" && f.key != "drop" && f.key != "fail" &&
        f.key != "shadow" && f.key != "invoke" && f.key != "state") {
      return fail(fmt::format(
          "unknown expect field '{}' (known: emit, publish, shadow, state, invoke, drop, fail)",
          f.key));
    }
  }
  if (want_fail) {
    if (failed.empty()) {
      return fail(fmt::format("expected the call to fail with \"{}\", but it did not", fail_sub));
    }
    if (failed.find(fail_sub) == std::string::npos) {
      return fail(fmt::format("expected a failure containing \"{}\", got: {}", fail_sub,
                              failed.substr(0, failed.find('\n'))));
    }
  } else if (!failed.empty()) {
    return fail("the rule failed: " + failed);
  }
  if (want_drop && !dropped) {
    return fail("expected ctx.drop, but the message was not dropped");
  }
  if (want_drop && drop_reason.find(drop_sub) == std::string::npos) {
    return fail(fmt::format("expected a drop with a reason containing \"{}\", got \"{}\"", drop_sub,
                            drop_reason));
  }
  // What a rule that dropped unexpectedly said, with whatever expectation it missed.
  auto with_drop = [&](std::string why) {
    if (dropped && !want_drop) {
      why += fmt::format(" (the rule dropped the message: \"{}\")", drop_reason);
    }
    return why;
  };
  std::string why;
  if (expect["emit"].get(e) == simdjson::SUCCESS && !MatchBuckets(e, emits, "emit", why)) {
    return fail(with_drop(why));
  }
  if (expect["publish"].get(e) == simdjson::SUCCESS && !MatchBuckets(e, publishes, "publish", why)) {
    return fail(with_drop(why));
  }
  if (expect["invoke"].get(e) == simdjson::SUCCESS && !MatchBuckets(e, invokes, "invoke", why)) {
    return fail(with_drop(why));
  }
  if (expect["shadow"].get(e) == simdjson::SUCCESS) {
    if (e.type() != element_type::OBJECT) {
      return fail("expect.shadow: a table of expected shadows by device");
    }
    for (auto f : simdjson::dom::object(e)) {
      std::string thing(f.key);
      std::optional<std::string> actual = shadows.View(thing);
      if (!actual) {
        return fail(fmt::format("shadow.{}: expected {}, but the device has no shadow", thing,
                                simdjson::minify(f.value)));
      }
      simdjson::dom::parser ap;
      element a = ap.parse(*actual);
      std::string sub;
      if (!SubsetMatch(f.value, a, "shadow." + thing, sub)) {
        return fail(fmt::format("{}\n  expected: {}\n  actual:   {}", sub,
                                simdjson::minify(f.value), *actual));
      }
    }
  }
  if (expect["state"].get(e) == simdjson::SUCCESS) {
    if (e.type() != element_type::OBJECT) {
      return fail(
          "expect.state: a table of the rule's expected state by device "
          "(false: the device has none)");
    }
    for (auto f : simdjson::dom::object(e)) {
      std::string device(f.key);
      const StoredState* actual = states.Find(device);
      bool want_none = f.value.type() == element_type::BOOL && !bool(f.value);
      if (want_none) {
        if (actual != nullptr) {
          return fail(fmt::format("state.{}: expected none, got {}", device, actual->json));
        }
        continue;
      }
      if (actual == nullptr) {
        return fail(fmt::format("state.{}: expected {}, but the device has no state", device,
                                simdjson::minify(f.value)));
      }
      simdjson::dom::parser ap;
      element a = ap.parse(actual->json);
      std::string sub;
      if (!SubsetMatch(f.value, a, "state." + device, sub)) {
        return fail(fmt::format("{}\n  expected: {}\n  actual:   {}", sub,
                                simdjson::minify(f.value), actual->json));
      }
    }
  }
  r.passed = true;
  return r;
}

std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

int TestReport::passed() const {
  return static_cast<int>(std::count_if(cases.begin(), cases.end(), [](auto& c) { return c.passed; }));
}
int TestReport::failed() const { return static_cast<int>(cases.size()) - passed(); }

std::string TestReport::Text(bool verbose) const {
  std::string out;
  for (const auto& c : cases) {
    if (c.passed) {
      if (verbose) {
        out += fmt::format("PASS {} › {}\n", c.rule, c.name);
      }
      continue;
    }
    out += fmt::format("FAIL {} › {} ({}:{})\n", c.rule, c.name, c.file, c.line);
    std::istringstream lines(c.failure);
    std::string line;
    while (std::getline(lines, line)) {
      out += "     " + line + "\n";
    }
  }
  out += fmt::format("{} passed, {} failed\n", passed(), failed());
  return out;
}

std::string TestReport::JUnitXml() const {
  std::map<std::string, std::vector<const TestCaseResult*>> by_rule;
  double total = 0;
  for (const auto& c : cases) {
    by_rule[c.rule].push_back(&c);
    total += c.seconds;
  }
  std::string out = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"gnomon\" tests=\"{}\" "
      "failures=\"{}\" time=\"{:.6f}\">\n",
      cases.size(), failed(), total);
  for (const auto& [rule, list] : by_rule) {
    int failures = 0;
    for (auto* c : list) {
      failures += c->passed ? 0 : 1;
    }
    out += fmt::format("  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">\n", XmlEscape(rule),
                       list.size(), failures);
    for (auto* c : list) {
      out += fmt::format("    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" line=\"{}\" time=\"{:.6f}\"",
                         XmlEscape(rule), XmlEscape(c->name), XmlEscape(c->file), c->line,
                         c->seconds);
      if (c->passed) {
        out += "/>\n";
      } else {
        out += fmt::format(">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                           XmlEscape(c->failure.substr(0, c->failure.find('\n'))),
                           XmlEscape(c->failure));
      }
    }
    out += "  </testsuite>\n";
  }
  out += "</testsuites>\n";
  return out;
}

Result<TestReport> RunRuleTests(const std::vector<std::string>& paths, const TestOptions& options) {
  namespace fs = std::filesystem;
  std::vector<std::string> rule_files, test_files;
  std::vector<std::string> dirs;
  for (const auto& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      dirs.push_back(p);
      for (const auto& entry : fs::directory_iterator(p, ec)) {
        std::string f = entry.path().lexically_normal().string();
        if (f.ends_with(".test.lua")) {
          test_files.push_back(f);
        } else if (f.ends_with(".lua") && !f.ends_with(".d.lua")) {
          rule_files.push_back(f);
        }
      }
    } else if (fs::is_regular_file(p, ec)) {
      (p.ends_with(".test.lua") ? test_files : rule_files).push_back(p);
      std::string dir = fs::path(p).parent_path().string();
      dirs.push_back(dir.empty() ? "." : dir);
    } else {
      return NotFound(p + ": no such file or directory");
    }
  }
  // *.test.lua files beside the given rule files.
  for (const auto& d : dirs) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(d, ec)) {
      std::string f = entry.path().lexically_normal().string();
      if (f.ends_with(".test.lua")) {
        test_files.push_back(f);
      }
    }
  }
  std::sort(rule_files.begin(), rule_files.end());
  rule_files.erase(std::unique(rule_files.begin(), rule_files.end()), rule_files.end());
  std::sort(test_files.begin(), test_files.end());
  test_files.erase(std::unique(test_files.begin(), test_files.end()), test_files.end());

  RuleSetOptions opts;
  opts.sinks = options.sinks;
  opts.any_sink = options.sinks.empty();
  opts.lib_dirs = options.lib_dirs;
  opts.interpreted = true;
  std::map<std::string, Rule> rules;  // by name
  std::vector<std::string> order;
  std::string errors;
  for (const auto& f : rule_files) {
    bool ok = false;
    std::string text = ReadText(f, &ok);
    if (!ok) {
      return NotFound(f + ": cannot read");
    }
    auto set = RuleSet::FromSources({{f, text}}, opts);
    if (!set.ok()) {
      errors += (errors.empty() ? "" : "\n") + set.status().message();
      continue;
    }
    const std::string& name = (*set)->rules()[0].name;
    if (rules.count(name) != 0) {
      errors += fmt::format("{}{}: rule.name: '{}' is already used by {}", errors.empty() ? "" : "\n",
                            f, name, rules[name].file);
      continue;
    }
    order.push_back(name);
    rules[name] = Rule{f, text, *set};
  }
  if (!errors.empty()) {
    return InvalidArgument(errors);
  }

  TestReport report;
  simdjson::dom::parser parser;
  auto run_list = [&](const Rule& rule, const std::string& tests_json, const std::string& file,
                      const std::string& text) -> Status {
    simdjson::dom::element tests;
    if (parser.parse(tests_json).get(tests) != simdjson::SUCCESS) {
      return Internal(file + ": tests did not encode to JSON");
    }
    std::vector<element> list;
    if (tests.type() == element_type::ARRAY) {
      for (element t : simdjson::dom::array(tests)) {
        list.push_back(t);
      }
    } else if (tests.type() == element_type::OBJECT && simdjson::dom::object(tests).size() == 0) {
      // `tests = {}`: none
    } else {
      return InvalidArgument(file + ": rule.tests must be a list of tests");
    }
    for (element t : list) {
      auto t0 = std::chrono::steady_clock::now();
      TestCaseResult r = RunOne(rule, t, file, text);
      r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      report.cases.push_back(std::move(r));
    }
    return {};
  };
  for (const auto& name : order) {
    const Rule& rule = rules[name];
    FixedClock clock(0);
    auto rt = RuleRuntime::Create(rule.set, clock);
    if (!rt.ok()) {
      return rt.status();
    }
    auto tests = (*rt)->TestsJson(0);
    if (!tests.ok()) {
      return tests.status().WithContext(rule.file);
    }
    GNOMON_RETURN_IF_ERROR(run_list(rule, *tests, rule.file, rule.text));
  }
  for (const auto& f : test_files) {
    bool ok = false;
    std::string text = ReadText(f, &ok);
    if (!ok) {
      return NotFound(f + ": cannot read");
    }
    GNOMON_ASSIGN_OR_RETURN(std::string json_text, EvalFileToJson(f, text));
    element doc;
    if (parser.parse(json_text).get(doc) != simdjson::SUCCESS) {
      return Internal(f + ": did not encode to JSON");
    }
    std::vector<element> groups;
    if (doc.type() == element_type::ARRAY) {
      for (element g : simdjson::dom::array(doc)) {
        groups.push_back(g);
      }
    } else {
      groups.push_back(doc);
    }
    // Copy what we need before `parser` is reused by run_list.
    std::vector<std::pair<std::string, std::string>> work;
    for (element g : groups) {
      std::string_view rule_name;
      element tests;
      if (g.type() != element_type::OBJECT ||
          g["rule"].get_string().get(rule_name) != simdjson::SUCCESS ||
          g["tests"].get(tests) != simdjson::SUCCESS) {
        return InvalidArgument(f + ": must return { rule = \"name\", tests = { ... } }");
      }
      if (rules.count(std::string(rule_name)) == 0) {
        return InvalidArgument(fmt::format("{}: no rule named '{}' among the rules given", f,
                                           rule_name));
      }
      work.emplace_back(std::string(rule_name), simdjson::minify(tests));
    }
    for (const auto& [rule_name, tests_json] : work) {
      GNOMON_RETURN_IF_ERROR(run_list(rules[rule_name], tests_json, f, text));
    }
  }
  return report;
}

}  // namespace gnomon::rules

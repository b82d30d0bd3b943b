// SPDX-License-Identifier: Apache-2.0
// Lua rules: loading and validating rule files into an immutable RuleSet, and running them on a
// per-worker RuleRuntime (one LuaJIT state each). Shadows are reached through ShadowReader and
// kShadowUpdate effects; only the test harness (testing.cc) uses shadow documents directly.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gnomon/core/clock.h"
#include "gnomon/core/message.h"
#include "gnomon/core/status.h"
#include "gnomon/rules/windows.h"

namespace gnomon::shadow {
class ThingModel;
}

namespace gnomon::rules {

enum class OnError { kDeadLetter, kDrop, kRetry };

// A declared window (`windows = { NAME = { tumbling = "5m", of = "temp", ... } }`).
struct WindowDecl {
  std::string name;
  WindowSpec spec;
  std::vector<std::string> of;    // the aggregated field's path in the payload (empty: none,
                                  // the window counts events)
  std::vector<std::string> time;  // the event time's path in the payload (epoch ms)
  bool msg_ts = false;            // `time = "msg.ts"`: the message's timestamp is the event time
  // Neither: processing time (the clock when the message is handled), and the window also
  // closes by the clock.
  bool by_clock() const { return time.empty() && !msg_ts; }
  std::vector<Agg> aggs;  // what on_window and ctx.window show (default: count)
  // `key = "payload.room"`: the window is per value of this payload field, not per device;
  // its events go to the key's owner (CallResult::keyed_events).
  std::vector<std::string> key;
};

// A message's event for a keyed window, for the owner of its key.
struct KeyedEvent {
  std::string window;
  std::string key;
  int64_t t = 0;
  double value = 0;
};

// One rule as loaded from its file. Immutable.
struct RuleInfo {
  std::string name;
  std::string file;
  int line = 0;  // line of `rule {`
  std::vector<std::string> from;
  OnError on_error = OnError::kDeadLetter;
  int max_attempts = 3;  // with on_error = "retry": runs of one message before it dead-letters
  // Per call. With jit = false (default) the rule runs interpreted and the instruction budget
  // holds; with jit = true it is compiled and only the memory cap applies.
  int64_t max_instructions = 1000000;
  int64_t memory_mb = 32;
  // What the rule's Lua state may hold at all, across calls (its globals, caches, modules).
  // A call that would pass it fails; if the rule still holds more than half of it after a
  // full collection, its globals are reset (its state is built afresh).
  int64_t heap_mb = 64;
  // Wall-clock limit per call, enforced by the engine's watchdog (see RuleRuntime::Interrupt).
  int64_t wall_ms = 5000;
  bool jit = false;
  // ctx.state (docs/rules.md): the state's version (`migrate` runs on a state stored under
  // another) and the most its JSON may take per device.
  int64_t state_version = 1;
  int64_t state_max_bytes = 65536;
  bool has_migrate = false;
  // `inactivity` (ms; 0: none): on_inactive runs once a device that reached this rule has sent
  // it nothing for so long. on_timer runs the rule's ctx.timer timers.
  int64_t inactivity_ms = 0;
  bool has_on_timer = false;
  bool has_on_inactive = false;
  // `windows`, in name order; on_window runs as each closes, on_late for a late event.
  std::vector<WindowDecl> windows;
  bool has_on_window = false;
  bool has_on_late = false;
  // Quarantine (a circuit breaker; only failures that are the rule's own fault count: errors
  // in its code and exceeded limits, not ctx.fail): more than `quarantine_failures` within
  // `quarantine_window_s` stop the rule for `quarantine_cooldown_s`, then one message probes
  // it; more than `quarantine_device_failures` from one device stop the rule for that device
  // only. A successful reload lifts every quarantine.
  int64_t quarantine_failures = 100;
  int64_t quarantine_window_s = 60;
  int64_t quarantine_device_failures = 10;
  int64_t quarantine_cooldown_s = 60;
  std::string source;    // the file's text
  std::string version;   // content hash (hex)
};

// The largest state.max_bytes a rule may declare.
inline constexpr int64_t kMaxStateBytes = 1 << 20;
// ctx.timer: timers one rule may have pending per device, the JSON of a timer's data, how far
// ahead one may be set (10 years), and a timer name's bytes ([A-Za-z0-9_.:-]).
inline constexpr size_t kMaxTimers = 32;
inline constexpr size_t kMaxTimerDataBytes = 4096;
inline constexpr int64_t kMaxTimerAheadMs = int64_t{10} * 366 * 86'400'000;
inline constexpr size_t kMaxTimerNameBytes = 64;

// A pending ctx.timer timer of one (rule, device).
struct RuleTimer {
  std::string name;
  int64_t due_ms = 0;  // epoch ms
  std::string data;    // JSON ("": none)
  bool operator==(const RuleTimer&) const = default;
};

// The most a rule may ask for (`rules.max_limits`, `rules.allow_jit` in the config): a rule
// whose limits are above them fails to load.
struct RuleLimitCeilings {
  int64_t instructions = 1000000000000000;  // the wall-clock ceiling bounds every call anyway
  int64_t memory_mb = 1024;
  int64_t heap_mb = 1024;
  int64_t wall_ms = 60000;
  bool allow_jit = true;
};

struct RuleSetOptions {
  // Sink names rules may emit to; `ctx.emit` to any other name fails the call.
  std::vector<std::string> sinks;
  // Accept any sink name (rule tests without a config); new names get the next indexes.
  bool any_sink = false;
  // Folders `require` loads modules from (`rule_libs` in the config).
  std::vector<std::string> lib_dirs;
  RuleLimitCeilings max_limits;
  // Run every rule interpreted under its instruction budget, whatever its `jit` says. Rule
  // tests do: code inside a compiled trace cannot be stopped, and a test that loops must end
  // (with a limit error) or it would hang `check`, start and every reload.
  bool interpreted = false;
};

// A validated set of rules and the topic index over their `from` filters. Shared read-only
// between workers (shared_ptr<const RuleSet>).
class RuleSet {
 public:
  // Reads, compiles and checks every file on a scratch Lua state. Errors name file and line;
  // every problem of every file is reported, one per line.
  static Result<std::shared_ptr<const RuleSet>> Load(const std::vector<std::string>& files,
                                                     RuleSetOptions options);
  // From in-memory sources (name → text); used by tests and benchmarks.
  static Result<std::shared_ptr<const RuleSet>> FromSources(
      const std::vector<std::pair<std::string, std::string>>& files, RuleSetOptions options);

  ~RuleSet();
  const std::vector<RuleInfo>& rules() const { return rules_; }
  const RuleSetOptions& options() const { return options_; }
  // Appends the indexes of the rules whose `from` matches `topic`, in rule order.
  void Match(std::string_view topic, std::vector<uint32_t>& out) const;

 private:
  RuleSet();
  std::vector<RuleInfo> rules_;
  RuleSetOptions options_;
  struct Index;
  std::unique_ptr<Index> index_;
};

// Expands rule paths and glob patterns (relative to `base_dir`) into sorted file names.
Result<std::vector<std::string>> ExpandRulePaths(const std::vector<std::string>& patterns,
                                                 const std::string& base_dir);

// The open windows of `rule` in a stored row's windows (StoredState::windows) as JSON:
// { NAME: [ { "start", "end", "count", aggregates... } ] } (for GET .../state).
std::string DescribeWindows(const RuleInfo& rule, std::string_view stored);
// The windows open in a row's windows (StoredState::windows), every window of it counted
// (WindowState::OpenIn); without decoding them.
int64_t OpenWindows(std::string_view stored);

// One buffered effect of a rule call.
struct Effect {
  enum class Kind { kEmit, kPublish, kShadowUpdate, kInvoke, kState };
  Kind kind = Kind::kEmit;
  uint32_t sink = 0;   // kEmit: index into RuleSetOptions::sinks
  std::string topic;   // kPublish: the topic; kEmit: optional topic override; kInvoke: service
  // kEmit, kPublish: the record. kShadowUpdate: the update request (docs/shadows.md) as JSON.
  // kInvoke: the params (a JSON object). kState: the rule's new state for the message's
  // device as JSON (empty: it has none now), when it or the timers changed; one at most per
  // call, the last effect.
  std::string payload;
  int64_t state_version = 0;      // kState: the rule's state.version
  std::vector<RuleTimer> timers;  // kState: the (rule, device)'s pending timers, all of them
  std::string windows;            // kState: the windows' states
  int64_t window_due = 0;         // kState: when an ingest-time window closes next (0: none)
  // kShadowUpdate: the shadow's thing and name ("": classic). kInvoke: the thing.
  std::string thing;
  std::string shadow_name;
  bool json = true;    // false: a Lua string emitted as raw bytes
  std::string key;  // kEmit: the record key; kInvoke: the call id ctx.invoke returned
  Headers headers;
  int qos = -1;
  bool retain = false;
};

enum class Outcome { kOk, kFiltered, kFailed };

struct CallResult {
  Outcome outcome = Outcome::kOk;
  std::string reason;            // drop reason, or the error with file:line and traceback
  std::vector<Effect> effects;   // committed only when outcome == kOk
  // The call went over limits.heap_mb and the rule's globals were reset.
  bool state_reset = false;
  // The call failed on its instruction or wall-clock limit (dead-lettered as rule_timeout).
  bool timed_out = false;
  // The rule failed the message itself (ctx.fail): bad input, not the rule's fault.
  bool input_failure = false;
  // kOk: the windows that closed (each an on_window event, a JSON object), and the names of
  // the windows the message was late for, both to be handled after the call's effects.
  std::vector<std::string> closed_windows;
  std::vector<std::string> late_windows;
  // kOk: events for keyed windows, to be added by their keys' owners (Call::kKeyed).
  std::vector<KeyedEvent> keyed_events;
  // Messages skipped by a window (no time or value where it looked, or not a number).
  int64_t window_skips = 0;
};

// Committed shadow state for ctx.shadow and ctx.shadow_of, provided by the engine (or the
// test harness). Called on the worker thread during a call.
class ShadowReader {
 public:
  virtual ~ShadowReader() = default;
  // The shadow's document with its delta (the get/accepted form), nullopt when there is none,
  // or an error (bad thing name, store failure) that fails the call.
  virtual Result<std::optional<std::string>> ReadShadow(std::string_view thing,
                                                        std::string_view name) = 0;
  // The version of the same document when the reader has it without building the document
  // (ctx.shadow.version when nothing else of the shadow was read in the call); the inner
  // nullopt: there is no shadow. nullopt: not cheaply, the document is read instead (the
  // default; a version and a document read apart could also disagree when another thread
  // writes the shadow in between).
  virtual std::optional<Result<std::optional<int64_t>>> ReadShadowVersion(
      std::string_view /*thing*/, std::string_view /*name*/) {
    return std::nullopt;
  }
  // The thing model bound to `thing` (ctx.model), or null.
  virtual const shadow::ThingModel* Model(std::string_view /*thing*/) { return nullptr; }
};

// A rule's durable state for one device (ctx.state) as stored: the rule's state.version it
// was written under, and the state as JSON.
struct StoredState {
  int64_t version = 1;
  std::string json;               // "": no state (the row may hold timers only)
  std::vector<RuleTimer> timers;  // pending, by name
  std::string windows;            // the windows' states, as FinishState encodes them ("": none)
};

// The name a rule's rows are kept under: the rule's own for a device's row, the rule's with
// "/key" after it for the row of a keyed window's key. Rule names have no '/', so a key's row
// and a device's row never meet, whatever the key and the device are called: a device that
// sends key = "d2" reaches the window of key d2, never device d2's ctx.state or timers.
std::string StateRowName(std::string_view rule, bool keyed);
// The rule of a row name, and whether the row is a key's.
std::pair<std::string_view, bool> ParseStateRowName(std::string_view row);
// A keyed window's key: 1-128 characters of [A-Za-z0-9_.:-].
bool ValidWindowKey(std::string_view key);

// ctx.state's committed state, provided by the engine (or the test harness). Called on the
// worker thread during a call, for the message's device (or key) only.
class StateReader {
 public:
  virtual ~StateReader() = default;
  // The state of row `rule` (StateRowName: a device's or a key's) for `device`; null when it
  // has none; an error (store failure) fails the call. What it points to stays as it is until
  // the call ends (the runtime reads it in place, without a copy).
  virtual Result<const StoredState*> ReadState(std::string_view rule, std::string_view device) = 0;
};

// What a rule sees of a message. Views must outlive the call.
struct MessageView {
  // Which of the rule's functions runs: handle(msg, ctx); on_timer(t, ctx), on_inactive(ev,
  // ctx) or on_window(w, ctx) with `event` (a JSON object) as their first argument; on_late(msg,
  // w, ctx); or none: kAdvance moves the ingest-time windows to the clock, kKeyed adds a
  // keyed window's event (`event`: {"window", "t", "v"}) to the row of `device` (the key) —
  // what closes is in CallResult::closed_windows.
  // kMigrate only reads ctx.state (running migrate when the stored state is of another
  // version): a check that migrate takes a stored state.
  enum class Call : uint8_t {
    kHandle,
    kTimer,
    kInactive,
    kWindow,
    kLate,
    kAdvance,
    kKeyed,
    kMigrate
  };
  std::string_view topic;
  std::string_view device;
  // The payload; if its std::string has SIMDJSON_PADDING spare capacity it is parsed in place.
  const std::string* payload = nullptr;
  std::string_view source;
  const Headers* headers = nullptr;
  int64_t ts_ms = 0;
  // Identifies the message across the rule calls it gets (0: unknown). Calls with the same id
  // share one parse of the payload.
  uint64_t id = 0;
  // Shadow reads; null: ctx.shadow reads fail with "device shadows are not enabled".
  ShadowReader* shadows = nullptr;
  // ctx.state and ctx.timer; null: using them fails the call (no store to keep them in).
  StateReader* states = nullptr;
  Call call = Call::kHandle;
  std::string_view event;  // kTimer, kInactive
  // The call is for a keyed window's key (`device` is the key; its row is the key's, see
  // StateRowName), not for a device: kKeyed always, kWindow, kLate, kAdvance and kTimer when
  // the row is a key's. ctx.shadow (the device's own shadow) fails in such a call.
  bool keyed = false;
};

// A worker's rules: every rule of a set loaded in a LuaJIT state of its own (so no rule can
// observe or change another's data, and each has its own heap cap). Not thread-safe: owned
// and used by one thread, except Interrupt().
class RuleRuntime {
 public:
  static Result<std::unique_ptr<RuleRuntime>> Create(std::shared_ptr<const RuleSet> set,
                                                     const Clock& clock);
  ~RuleRuntime();

  // Runs rule `index` of the set on `msg`. `out` is reset first. Never throws; a Lua error is
  // kFailed with the reason.
  void Run(uint32_t index, const MessageView& msg, CallResult& out);

  // Asks the call numbered `call` (see call_seq()) to stop with a wall-clock limit error. Safe
  // from another thread (the watchdog). Takes effect at the call's next interpreted
  // instruction; code running inside a LuaJIT-compiled trace (jit = true) does not see it.
  void Interrupt(uint64_t call);
  // The number of the call in progress or last made; bumped at the start of every Run().
  uint64_t call_seq() const;

  // The bytes rule `index`'s Lua state holds now.
  size_t heap_bytes(uint32_t index) const;

  // The sink name behind Effect::sink (includes names added under `any_sink`).
  const std::string& sink_name(uint32_t index) const;

  // The rule's `tests` table as JSON (an empty array when it has none), or an error naming
  // the value that cannot be encoded.
  Result<std::string> TestsJson(uint32_t index);

  const RuleSet& rule_set() const { return *set_; }
  const std::shared_ptr<const RuleSet>& rule_set_ptr() const { return set_; }

  struct State;

 private:
  RuleRuntime() = default;
  std::shared_ptr<const RuleSet> set_;
  std::unique_ptr<State> state_;
};

}  // namespace gnomon::rules

// SPDX-License-Identifier: Apache-2.0
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "gnomon/core/id.h"
#include "gnomon/core/json.h"
#include "gnomon/core/log.h"
#include "gnomon/core/topic.h"
#include "gnomon/rules/rules.h"
#include "gnomon/rules/windows.h"
#include "gnomon/shadow/document.h"
#include "gnomon/shadow/model.h"
#include "lua_json.h"
#include "pattern.h"
#include "sandbox.h"

namespace gnomon::rules {

namespace {
// Hidden key in msg tables holding the call generation.
char kGenerationKey;
// The count hook runs every this many VM instructions.
constexpr int kHookInterval = 1000;

enum class Stop { kNone, kDrop, kFail };
}  // namespace

// One rule's Lua state. Each rule runs in a state of its own: nothing a rule can reach (its
// ctx, the metatables, the string library, its `require` cache, math.random's generator, its
// heap) is shared with another rule, and its heap has a cap of its own (limits.heap_mb).
struct RuleSlot {
  lua_State* L = nullptr;
  JsonContext json;
  MemoryBudget memory;
  int handle_ref = LUA_NOREF;  // the rule's handle function
  int on_timer_ref = LUA_NOREF;     // on_timer, on_inactive, on_window, on_late (LUA_REFNIL:
  int on_inactive_ref = LUA_NOREF;  // none)
  int on_window_ref = LUA_NOREF;
  int on_late_ref = LUA_NOREF;
  int rule_ref = LUA_NOREF;    // the rule's table
  int ctx_ref = LUA_NOREF;
  int msg_meta_ref = LUA_NOREF;
  int traceback_ref = LUA_NOREF;
  // The msg table's field names, interned once: a lua_setfield per field and call would hash
  // and look up the name each time.
  enum MsgKey { kTopic, kDevice, kSource, kTs, kMsgKeys };
  int msg_key_refs[kMsgKeys] = {LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF};
  bool gc_tight = false;  // collecting at kTightGcPause (see KeepGarbageBounded)

  ~RuleSlot() {
    if (L != nullptr) {
      lua_close(L);
    }
  }
};

// Lua starts a collection when its heap reaches `pause`% of what the last one left (LuaJIT's
// default 200: as much garbage as live data, before the collector runs again). That is nothing
// for a rule that keeps little, and half the heap for one that keeps a table per device: above
// kTightGcAbove the rule collects at 120% instead (a fifth of its live data in garbage, for
// about 9% more instructions per call on a rule that keeps 10k devices' state, measured with
// callgrind on BM_MergeRuleJsonPairs), and goes back to the default below kLooseGcBelow.
namespace {
constexpr int kTightGcPause = 120;
constexpr int kDefaultGcPause = 200;
constexpr size_t kTightGcAbove = size_t{2} << 20;
constexpr size_t kLooseGcBelow = size_t{1} << 20;

void KeepGarbageBounded(RuleSlot* slot) {
  size_t heap = slot->memory.live;
  if (!slot->gc_tight && heap > kTightGcAbove) {
    lua_gc(slot->L, LUA_GCSETPAUSE, kTightGcPause);
    slot->gc_tight = true;
  } else if (slot->gc_tight && heap < kLooseGcBelow) {
    lua_gc(slot->L, LUA_GCSETPAUSE, kDefaultGcPause);
    slot->gc_tight = false;
  }
}
}  // namespace

struct RuleRuntime::State {
  std::vector<std::unique_ptr<RuleSlot>> slots;  // by rule index; null: could not be rebuilt
  int64_t ticks_left = INT64_MAX;  // hook intervals the current call may still run
  std::atomic<uint64_t> call_seq{0};
  std::atomic<uint64_t> interrupt_seq{0};  // the watchdog asked this call to stop
  std::atomic<bool> hook_dirty{false};     // Interrupt() changed the hook; restore it
  std::atomic<lua_State*> running{nullptr};  // the state of the call in progress
  // The payload parse of message `parsed_id`, reused by every rule that message reaches.
  simdjson::dom::parser payload_parser;
  uint64_t parsed_id = 0;
  simdjson::dom::element parsed_root;
  std::string parsed_error;  // empty: parsed_root is valid
  std::string parse_scratch;  // a payload rewritten with its big numbers quoted
  bool parsed_rewritten = false;  // parsed_root was parsed from parse_scratch
  const Clock* clock = nullptr;
  std::unordered_map<std::string, uint32_t> sink_index;
  std::vector<std::string> sink_names;
  bool any_sink = false;

  // The call in progress.
  RuleSlot* slot = nullptr;
  const MessageView* msg = nullptr;
  CallResult* result = nullptr;
  const RuleInfo* rule = nullptr;
  Stop stop = Stop::kNone;
  std::string stop_reason;
  bool stop_timeout = false;  // `stop` came from the instruction or wall-clock limit
  // ctx.state of the call in progress: its table (LUA_NOREF: not used in this call), the JSON
  // it was read as ("": none), and whether it is written even if unchanged (it was stored
  // under another state.version).
  int state_ref = LUA_NOREF;
  bool state_rewrite = false;
  // The stored row of the call's (rule, device), read on the first ctx.state or ctx.timer, and
  // the call's timers (copied from it on the first ctx.timer).
  bool stored_read = false;
  const StoredState* stored = nullptr;  // the reader's, as it is until the call ends
  bool timers_used = false;
  bool timers_changed = false;
  std::vector<RuleTimer> timers;
  // The call's windows (rule.windows order), read from the row on first use; what the message
  // closed and was late for.
  bool windows_loaded = false;
  bool windows_changed = false;
  std::vector<WindowState> windows;
  std::vector<std::string> closed;
  std::vector<std::string> late;
  std::vector<KeyedEvent> keyed;
  int64_t window_skips = 0;
};

namespace {

using State = RuleRuntime::State;

State* GetState(lua_State* L) {
  return static_cast<State*>(lua_touserdata(L, lua_upvalueindex(1)));
}

// The call's payload parsed (once per message id): s->parsed_root, or s->parsed_error.
void EnsureParsed(State* s) {
  if (s->msg->id == 0 || s->msg->id != s->parsed_id) {
    const std::string& p = *s->msg->payload;
    s->parsed_error =
        ParseRuleJson(s->payload_parser, p.data(), p.size(),
                      p.capacity() - p.size() >= simdjson::SIMDJSON_PADDING, s->parsed_root,
                      s->parse_scratch, /*refuse_duplicates=*/false, &s->parsed_rewritten);
    s->parsed_id = s->msg->id;
  }
}

Status CheckInCall(State* s, const char* what) {
  if (s->result == nullptr) {
    return FailedPrecondition(fmt::format("{} called outside handle", what));
  }
  return {};
}

std::string ToStringArg(lua_State* L, int idx) {
  if (idx < 0) {
    idx = lua_gettop(L) + idx + 1;
  }
  lua_getglobal(L, "tostring");
  lua_pushvalue(L, idx);
  lua_call(L, 1, 1);
  size_t len = 0;
  const char* s = lua_tolstring(L, -1, &len);
  std::string out = s != nullptr ? std::string(s, len) : std::string("?");
  lua_pop(L, 1);
  return out;
}

// Reads {key=, topic=, headers=, qos=, retain=} options into `e`.
Status ReadOptions(lua_State* L, int idx, Effect& e, const char* fn) {
  if (lua_isnoneornil(L, idx)) {
    return {};
  }
  if (lua_type(L, idx) != LUA_TTABLE) {
    return InvalidArgument(fmt::format("{}: options must be a table", fn));
  }
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    std::string key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    int t = lua_type(L, -1);
    Status st;
    if ((key == "key" || key == "topic") && t == LUA_TSTRING) {
      (key == "key" ? e.key : e.topic) = lua_tostring(L, -1);
    } else if (key == "qos" && t == LUA_TNUMBER) {
      double q = lua_tonumber(L, -1);
      if (q != 0 && q != 1) {
        st = InvalidArgument(fmt::format("{}: qos must be 0 or 1 (got {})", fn, q));
      }
      e.qos = static_cast<int>(q);
    } else if (key == "retain" && t == LUA_TBOOLEAN) {
      e.retain = lua_toboolean(L, -1) != 0;
    } else if (key == "headers" && t == LUA_TTABLE) {
      int h = lua_gettop(L);
      lua_pushnil(L);
      while (lua_next(L, h) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING) {
          e.headers.emplace_back(lua_tostring(L, -2), ToStringArg(L, -1));
        }
        lua_pop(L, 1);
      }
    } else {
      st = InvalidArgument(fmt::format("{}: unknown or mistyped option '{}'", fn, key));
    }
    lua_pop(L, 1);
    if (!st.ok()) {
      lua_pop(L, 1);
      return st;
    }
  }
  return {};
}

Status EncodePayload(lua_State* L, State* s, int idx, Effect& e, const char* what) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    size_t len = 0;
    const char* p = lua_tolstring(L, idx, &len);
    e.payload.assign(p, len);
    e.json = false;
    return {};
  }
  if (lua_isnoneornil(L, idx)) {
    return InvalidArgument(fmt::format("{}: missing record", what));
  }
  return EncodeValue(L, idx, &s->slot->json, e.payload, what);
}

// ctx.emit(sink, record [, opts])
Result<int> CtxEmit(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.emit"));
  if (lua_type(L, 1) != LUA_TSTRING) {
    return InvalidArgument("ctx.emit: the first argument must be a sink name");
  }
  const char* sink = lua_tostring(L, 1);
  auto it = s->sink_index.find(sink);
  if (it == s->sink_index.end()) {
    if (!s->any_sink) {
      return InvalidArgument(fmt::format("ctx.emit: unknown sink '{}'", sink));
    }
    it = s->sink_index.emplace(sink, static_cast<uint32_t>(s->sink_names.size())).first;
    s->sink_names.emplace_back(sink);
  }
  Effect e;
  e.kind = Effect::Kind::kEmit;
  e.sink = it->second;
  GNOMON_RETURN_IF_ERROR(EncodePayload(L, s, 2, e, "record"));
  GNOMON_RETURN_IF_ERROR(ReadOptions(L, 3, e, "ctx.emit"));
  s->result->effects.push_back(std::move(e));
  return 0;
}

// ctx.publish(topic, payload [, {qos=, retain=}])
Result<int> CtxPublish(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.publish"));
  if (lua_type(L, 1) != LUA_TSTRING) {
    return InvalidArgument("ctx.publish: the first argument must be a topic");
  }
  Effect e;
  e.kind = Effect::Kind::kPublish;
  e.topic = lua_tostring(L, 1);
  GNOMON_RETURN_IF_ERROR(ValidateTopicName(e.topic).WithContext("ctx.publish"));
  GNOMON_RETURN_IF_ERROR(EncodePayload(L, s, 2, e, "payload"));
  GNOMON_RETURN_IF_ERROR(ReadOptions(L, 3, e, "ctx.publish"));
  s->result->effects.push_back(std::move(e));
  return 0;
}

// ctx.invoke(thing, service [, params]) -> the call id. The call is made (stored, then sent to
// the device) when handle returns, by the engine; refusals dead-letter the message.
Result<int> CtxInvoke(lua_State* L);

// Whether argument `idx` can stand for a JSON object: a table, or a view of an object in the
// call's payload (msg.payload, msg.payload.settings, ...), which is encoded from the parsed
// payload without becoming a Lua table. (A view kept from an earlier call passes here: encoding
// it fails with "used after handle returned".)
bool IsObjectArg(lua_State* L, int idx, State* s) {
  if (lua_type(L, idx) == LUA_TTABLE) {
    return true;
  }
  JsonViewKind kind = ViewKindAt(L, idx, &s->slot->json);
  return kind == JsonViewKind::kObject || kind == JsonViewKind::kDead;
}

// Shadow names and things as docs/shadows.md allows them.
Status CheckShadowId(std::string_view v, size_t max, const char* what) {
  if (v.empty() || v.size() > max) {
    return InvalidArgument(fmt::format("{} must be 1-{} bytes (got {})", what, max, v.size()));
  }
  if (!shadow::ValidShadowId(v, max)) {
    return InvalidArgument(
        fmt::format("{} '{}' may only hold A-Z a-z 0-9 : _ -", what, v.substr(0, 64)));
  }
  return {};
}

Status CheckShadowArgs(lua_State* L, std::string_view& thing, std::string_view& name,
                       const char* fn) {
  if (lua_type(L, 1) != LUA_TSTRING) {
    return InvalidArgument(fmt::format("{}: the thing name must be a string", fn));
  }
  size_t len = 0;
  const char* p = lua_tolstring(L, 1, &len);
  thing = {p, len};
  name = {};
  if (!lua_isnoneornil(L, 2)) {
    if (lua_type(L, 2) != LUA_TSTRING) {
      return InvalidArgument(fmt::format("{}: the shadow name must be a string", fn));
    }
    p = lua_tolstring(L, 2, &len);
    name = {p, len};
    GNOMON_RETURN_IF_ERROR(CheckShadowId(name, 64, fn));
  }
  return CheckShadowId(thing, 128, fn);
}

Result<int> CtxInvoke(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.invoke"));
  if (lua_type(L, 1) != LUA_TSTRING) {
    return InvalidArgument("ctx.invoke: the first argument must be a thing name");
  }
  if (lua_type(L, 2) != LUA_TSTRING) {
    return InvalidArgument("ctx.invoke: the second argument must be a service identifier");
  }
  Effect e;
  e.kind = Effect::Kind::kInvoke;
  size_t len = 0;
  const char* p = lua_tolstring(L, 1, &len);
  e.thing.assign(p, len);
  GNOMON_RETURN_IF_ERROR(CheckShadowId(e.thing, 128, "ctx.invoke: the thing"));
  p = lua_tolstring(L, 2, &len);
  e.topic.assign(p, len);
  if (e.topic.empty() || e.topic.size() > 128 || e.topic.find('/') != std::string::npos ||
      e.topic.find('+') != std::string::npos || e.topic.find('#') != std::string::npos) {
    return InvalidArgument(fmt::format("ctx.invoke: '{}' is not a service identifier",
                                       e.topic.substr(0, 64)));
  }
  if (lua_isnoneornil(L, 3)) {
    e.payload = "{}";
  } else if (IsObjectArg(L, 3, s)) {
    GNOMON_RETURN_IF_ERROR(EncodeValue(L, 3, &s->slot->json, e.payload, "params"));
  } else {
    return InvalidArgument("ctx.invoke: params must be a table or a JSON object of msg.payload");
  }
  e.key = NewId();
  lua_pushlstring(L, e.key.data(), e.key.size());
  s->result->effects.push_back(std::move(e));
  return 1;
}

// A read's (thing, name) arguments, checked, and the call's shadow reader.
Result<ShadowReader*> ShadowReadArgs(lua_State* L, State* s, std::string_view& thing,
                                     std::string_view& name) {
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.shadow"));
  GNOMON_RETURN_IF_ERROR(CheckShadowArgs(L, thing, name, "ctx.shadow"));
  if (s->msg->shadows == nullptr) {
    return FailedPrecondition("ctx.shadow: device shadows are not enabled (see `shadows:`)");
  }
  return s->msg->shadows;
}

// __shadow_read(thing, name) -> the document (with delta) as tables, or nil.
Result<int> ShadowRead(lua_State* L) {
  State* s = GetState(L);
  std::string_view thing, name;
  GNOMON_ASSIGN_OR_RETURN(ShadowReader * reader, ShadowReadArgs(L, s, thing, name));
  auto doc = reader->ReadShadow(thing, name);
  if (!doc.ok()) {
    return doc.status().WithContext("ctx.shadow");
  }
  if (!doc->has_value()) {
    lua_pushnil(L);
    return 1;
  }
  GNOMON_RETURN_IF_ERROR(PushDecoded(L, &s->slot->json, **doc).WithContext("ctx.shadow"));
  return 1;
}

// __shadow_version(thing, name) -> the document's version, nil when there is no shadow, or
// false when the reader has no cheaper way than reading the document (ctx.shadow.version).
Result<int> ShadowVersion(lua_State* L) {
  State* s = GetState(L);
  std::string_view thing, name;
  GNOMON_ASSIGN_OR_RETURN(ShadowReader * reader, ShadowReadArgs(L, s, thing, name));
  auto version = reader->ReadShadowVersion(thing, name);
  if (!version) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (!version->ok()) {
    return version->status().WithContext("ctx.shadow");
  }
  if (!(*version)->has_value()) {
    lua_pushnil(L);
  } else {
    lua_pushnumber(L, static_cast<lua_Number>(***version));
  }
  return 1;
}

// __shadow_write(thing, name, section, value): section "reported" / "desired" wraps `value`
// as {"state":{section: value}}; section nil: `value` is the whole update request (a table or
// JSON text).
Result<int> ShadowWrite(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.shadow"));
  std::string_view thing, name;
  GNOMON_RETURN_IF_ERROR(CheckShadowArgs(L, thing, name, "ctx.shadow"));
  Effect e;
  e.kind = Effect::Kind::kShadowUpdate;
  e.thing = thing;
  e.shadow_name = name;
  if (lua_type(L, 3) == LUA_TSTRING) {
    const char* section = lua_tostring(L, 3);
    if (!IsObjectArg(L, 4, s)) {
      return InvalidArgument(fmt::format(
          "ctx.shadow: {} patch must be a table or a JSON object of msg.payload", section));
    }
    // (The shadow parses the request again: msg.payload goes as it was received.)
    e.payload.reserve(64);
    e.payload.append("{\"state\":{\"").append(section).append("\":");
    GNOMON_RETURN_IF_ERROR(
        EncodeValue(L, 4, &s->slot->json, e.payload, section, /*as_received=*/true));
    e.payload += "}}";
  } else if (lua_type(L, 4) == LUA_TSTRING) {
    size_t len = 0;
    const char* p = lua_tolstring(L, 4, &len);
    e.payload.assign(p, len);
  } else if (IsObjectArg(L, 4, s)) {
    GNOMON_RETURN_IF_ERROR(
        EncodeValue(L, 4, &s->slot->json, e.payload, "request", /*as_received=*/true));
  } else {
    return InvalidArgument(
        "ctx.shadow:update: the request must be a table, a JSON object of msg.payload or JSON "
        "text");
  }
  s->result->effects.push_back(std::move(e));
  return 0;
}

// __shadow_call() -> a number identifying the call in progress (memoised reads expire with it).
Result<int> ShadowCall(lua_State* L) {
  lua_pushnumber(L, static_cast<lua_Number>(GetState(L)->slot->json.generation));
  return 1;
}

// __shadow_device([what]) -> msg.device of the call in progress. With `what` (ctx.shadow,
// ctx.model): the device whose own shadow or model is wanted, which a key's call has not.
Result<int> ShadowDevice(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.device"));
  if (s->msg->keyed && lua_type(L, 1) == LUA_TSTRING) {
    // The call is a key's (a keyed window's), fed by whichever devices named the key: it has
    // no device of its own whose shadow it could read or write.
    return FailedPrecondition(fmt::format(
        "{}: this call is for key '{}' of a keyed window, not for a device; name the thing "
        "with ctx.shadow_of",
        lua_tostring(L, 1), s->msg->device));
  }
  lua_pushlstring(L, s->msg->device.data(), s->msg->device.size());
  return 1;
}

// __model_info(thing) -> modelId, version, "modelId@version" of the bound model, or nil.
// The model bound to the thing named by argument 1, or null.
const shadow::ThingModel* ModelArg(lua_State* L, State* s) {
  size_t len = 0;
  const char* p = lua_tolstring(L, 1, &len);
  return s->msg->shadows != nullptr && p != nullptr ? s->msg->shadows->Model({p, len}) : nullptr;
}

Result<int> ModelInfo(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.model"));
  const shadow::ThingModel* m = ModelArg(L, s);
  if (m == nullptr) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, m->id().data(), m->id().size());
  lua_pushlstring(L, m->version().data(), m->version().size());
  lua_pushlstring(L, m->ref().data(), m->ref().size());
  return 3;
}

// __model_validate(thing, patch, section) -> true, or false and the problems
// ({ {path=, error=, message=}, ... }) of `patch` against the properties.
Result<int> ModelValidate(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.model"));
  const shadow::ThingModel* m = ModelArg(L, s);
  if (m == nullptr) {
    return FailedPrecondition("ctx.model:validate: the device has no thing model");
  }
  if (!IsObjectArg(L, 2, s)) {
    return InvalidArgument(
        "ctx.model:validate: the patch must be a table or a JSON object of msg.payload");
  }
  shadow::StateSection section = shadow::StateSection::kReported;
  if (!lua_isnoneornil(L, 3)) {
    std::string_view sec = lua_type(L, 3) == LUA_TSTRING ? lua_tostring(L, 3) : "";
    if (sec != "reported" && sec != "desired") {
      return InvalidArgument("ctx.model:validate: the section is \"reported\" or \"desired\"");
    }
    section = sec == "desired" ? shadow::StateSection::kDesired : shadow::StateSection::kReported;
  }
  std::string json;
  GNOMON_RETURN_IF_ERROR(EncodeValue(L, 2, &s->slot->json, json, "patch"));
  GNOMON_ASSIGN_OR_RETURN(shadow::Value v, shadow::Value::Parse(json));
  auto problems = m->Validate(v, section);
  lua_pushboolean(L, problems.empty() ? 1 : 0);
  if (problems.empty()) {
    return 1;
  }
  lua_createtable(L, static_cast<int>(problems.size()), 0);
  for (size_t i = 0; i < problems.size(); ++i) {
    lua_createtable(L, 0, 3);
    lua_pushlstring(L, problems[i].path.data(), problems[i].path.size());
    lua_setfield(L, -2, "path");
    lua_pushlstring(L, problems[i].error.data(), problems[i].error.size());
    lua_setfield(L, -2, "error");
    lua_pushlstring(L, problems[i].message.data(), problems[i].message.size());
    lua_setfield(L, -2, "message");
    lua_rawseti(L, -2, static_cast<int>(i + 1));
  }
  return 2;
}

// __state_load() -> ctx.state's table for this call; or, when it was stored under another
// state.version and the rule has `migrate`: the stored table, its version and migrate (the
// prelude runs migrate and hands its result to __state_set).
// The stored row of the call's (rule, device), read once per call. `what` names the caller in
// errors.
Result<const StoredState*> StoredRow(State* s, const char* what) {
  if (!s->stored_read) {
    if (s->msg->states == nullptr) {
      return FailedPrecondition(fmt::format(
          "{}: rule state is kept in the shadow store, which is off (see `shadows:` in the "
          "config)",
          what));
    }
    auto stored =
        s->msg->states->ReadState(StateRowName(s->rule->name, s->msg->keyed), s->msg->device);
    if (!stored.ok()) {
      return stored.status().WithContext(what);
    }
    s->stored = *stored;
    s->stored_read = true;
  }
  return s->stored;
}

Result<int> StateLoad(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.state"));
  if (s->state_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->state_ref);
    return 1;
  }
  GNOMON_ASSIGN_OR_RETURN(const StoredState* stored, StoredRow(s, "ctx.state"));
  s->state_rewrite = false;
  if (stored == nullptr || stored->json.empty()) {
    lua_newtable(L);
  } else {
    GNOMON_RETURN_IF_ERROR(
        PushDecoded(L, &s->slot->json, stored->json).WithContext("ctx.state: the stored state"));
    if (lua_type(L, -1) != LUA_TTABLE) {
      return Internal("ctx.state: the stored state is not a table");
    }
    if (stored->version != s->rule->state_version) {
      s->state_rewrite = true;
      if (s->rule->has_migrate) {
        lua_pushnumber(L, static_cast<lua_Number>(stored->version));
        lua_rawgeti(L, LUA_REGISTRYINDEX, s->slot->rule_ref);
        lua_getfield(L, -1, "migrate");
        lua_remove(L, -2);
        return 3;
      }
    }
  }
  lua_pushvalue(L, -1);
  s->state_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

// __state_set(t) -> t: what migrate returned becomes ctx.state (written when the call ends).
Result<int> StateSet(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.state"));
  if (lua_type(L, 1) != LUA_TTABLE) {
    return InvalidArgument(fmt::format("rule.migrate must return the new state (a table), got {}",
                                       luaL_typename(L, 1)));
  }
  if (s->state_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, s->state_ref);
  }
  lua_settop(L, 1);
  lua_pushvalue(L, 1);
  s->state_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  s->state_rewrite = true;
  return 1;
}

// The windows' states in a row: for each window, "NAME LENGTH\n" and its encoded state.
void AppendWindow(std::string& out, std::string_view name, std::string_view bytes) {
  out.append(name);
  out += ' ';
  char buf[24];
  out.append(buf, std::to_chars(buf, buf + sizeof(buf), bytes.size()).ptr);
  out += '\n';
  out.append(bytes);
}

// Calls each(name, bytes) for the windows in `row` ("NAME LEN\n" and LEN bytes each, see
// AppendWindow) until it returns false or the row ends (or is damaged).
template <typename F>
void ForEachWindow(std::string_view row, F each) {
  while (!row.empty()) {
    size_t sp = row.find(' ');
    size_t nl = row.find('\n');
    size_t len = 0;
    if (sp == std::string_view::npos || nl == std::string_view::npos || nl < sp ||
        std::from_chars(row.data() + sp + 1, row.data() + nl, len).ec != std::errc() ||
        row.size() - nl - 1 < len) {
      return;
    }
    if (!each(row.substr(0, sp), row.substr(nl + 1, len))) {
      return;
    }
    row.remove_prefix(nl + 1 + len);
  }
}

// The encoded state of window `name` in `row`, or nullopt (absent or damaged).
std::optional<std::string_view> FindWindow(std::string_view row, std::string_view name) {
  std::optional<std::string_view> found;
  ForEachWindow(row, [&](std::string_view n, std::string_view bytes) {
    if (n == name) {
      found = bytes;
    }
    return !found;
  });
  return found;
}

// The windows of the call's (rule, device), from the row (a window stored under another spec,
// or not stored, starts empty).
Status LoadWindows(State* s, const RuleInfo& rule) {
  if (s->windows_loaded) {
    return {};
  }
  GNOMON_ASSIGN_OR_RETURN(const StoredState* stored, StoredRow(s, "rule.windows"));
  s->windows.clear();
  for (const WindowDecl& d : rule.windows) {
    std::optional<WindowState> w;
    if (stored != nullptr) {
      if (auto bytes = FindWindow(stored->windows, d.name)) {
        if (auto decoded = WindowState::Decode(d.spec, *bytes); decoded.ok()) {
          w = std::move(decoded).value();
        }
      }
    }
    s->windows.push_back(w ? std::move(*w) : WindowState(d.spec));
  }
  s->windows_loaded = true;
  return {};
}

// A number at `path` in the payload, or nullopt.
std::optional<double> PayloadNumber(simdjson::dom::element root,
                                    const std::vector<std::string>& path) {
  simdjson::dom::element e = root;
  for (const std::string& k : path) {
    if (e.at_key(k).get(e) != simdjson::SUCCESS) {
      return std::nullopt;
    }
  }
  double d = 0;
  int64_t i = 0;
  uint64_t u = 0;
  if (e.get_int64().get(i) == simdjson::SUCCESS) {
    return static_cast<double>(i);
  }
  if (e.get_uint64().get(u) == simdjson::SUCCESS) {
    return static_cast<double>(u);
  }
  if (e.get_double().get(d) == simdjson::SUCCESS) {
    return d;
  }
  return std::nullopt;
}

// A keyed window's key at `path` in the payload: a string (or an integer) of 1-128 characters
// of [A-Za-z0-9_.:-]; nullopt otherwise.
std::optional<std::string> PayloadKey(simdjson::dom::element root,
                                      const std::vector<std::string>& path) {
  simdjson::dom::element e = root;
  for (const std::string& k : path) {
    if (e.at_key(k).get(e) != simdjson::SUCCESS) {
      return std::nullopt;
    }
  }
  std::string key;
  std::string_view sv;
  int64_t i = 0;
  if (e.get_string().get(sv) == simdjson::SUCCESS) {
    key = sv;
  } else if (e.get_int64().get(i) == simdjson::SUCCESS) {
    key = std::to_string(i);
  } else {
    return std::nullopt;
  }
  return ValidWindowKey(key) ? std::optional<std::string>(std::move(key)) : std::nullopt;
}

// The aggregates `d` shows, as fields of `w`.
void WriteAggregates(json::ObjectWriter& w, const WindowDecl& d, const Aggregates& agg) {
  bool count = false;
  for (Agg a : d.aggs) {
    count = count || a == Agg::kCount;
    std::optional<double> v = agg.Value(a);
    if (a == Agg::kCount) {
      w.Field("count", agg.count);
    } else if (v && std::isfinite(*v)) {
      std::string num;
      json::AppendNumber(num, *v);
      w.FieldRaw(AggName(a), num);
    } else {
      w.FieldNull(AggName(a));
    }
  }
  if (!count) {
    w.Field("count", agg.count);
  }
}

// on_window's event for a closed window.
std::string ClosedEvent(const WindowDecl& d, const ClosedWindow& c) {
  std::string out;
  json::ObjectWriter w(out);
  w.Field("name", d.name).Field("start", c.start).Field("end", c.end);
  WriteAggregates(w, d, c.agg);
  w.Close();
  return out;
}

// Adds an event to window `i` of the call's windows: what closes goes to on_window, a late one
// is noted; a bound passed is the error.
Status AddEvent(State* s, const RuleInfo& rule, size_t i, int64_t t, double v) {
  const WindowDecl& d = rule.windows[i];
  std::vector<ClosedWindow> closed;
  auto took = s->windows[i].Add(t, v, closed);
  if (!took.ok()) {
    return took.status().WithContext("windows." + d.name);
  }
  if (*took == WindowState::Took::kLate) {
    s->late.push_back(d.name);
    return {};
  }
  s->windows_changed = true;
  for (const ClosedWindow& c : closed) {
    s->closed.push_back(ClosedEvent(d, c));
  }
  return {};
}

// The message's event into each window (before handle runs, so ctx.window sees it). A window
// whose time, value or key is missing or not usable skips the message (counted); one the
// message is late for is noted; a bound passed fails the call. A keyed window's event is handed
// back (CallResult::keyed_events) for its key's owner.
Status AddToWindows(State* s, const RuleInfo& rule, const MessageView& msg) {
  GNOMON_RETURN_IF_ERROR(LoadWindows(s, rule));
  EnsureParsed(s);
  bool parsed = s->parsed_error.empty();
  for (size_t i = 0; i < rule.windows.size(); ++i) {
    const WindowDecl& d = rule.windows[i];
    std::optional<double> t = static_cast<double>(d.msg_ts ? msg.ts_ms : s->clock->NowMs());
    if (!d.time.empty()) {
      t = parsed ? PayloadNumber(s->parsed_root, d.time) : std::nullopt;
    }
    std::optional<double> v = 0.0;
    if (!d.of.empty()) {
      v = parsed ? PayloadNumber(s->parsed_root, d.of) : std::nullopt;
    }
    std::optional<std::string> key;
    if (!d.key.empty()) {
      key = parsed ? PayloadKey(s->parsed_root, d.key) : std::nullopt;
    }
    if (!t || !v || !std::isfinite(*t) || !std::isfinite(*v) ||
        std::abs(*t) > static_cast<double>(kMaxWindowTime) || (!d.key.empty() && !key)) {
      ++s->window_skips;
      continue;
    }
    if (key) {
      s->keyed.push_back(KeyedEvent{d.name, std::move(*key), static_cast<int64_t>(*t), *v});
      continue;
    }
    GNOMON_RETURN_IF_ERROR(AddEvent(s, rule, i, static_cast<int64_t>(*t), *v));
  }
  return {};
}

// kKeyed: a keyed window's event ({"window", "t", "v"}) into the key's row.
Status AddKeyedEvent(State* s, const RuleInfo& rule, std::string_view event) {
  GNOMON_RETURN_IF_ERROR(LoadWindows(s, rule));
  simdjson::dom::parser parser;
  simdjson::dom::element e;
  std::string_view name;
  int64_t t = 0;
  double v = 0;
  if (parser.parse(event).get(e) != simdjson::SUCCESS ||
      e["window"].get_string().get(name) != simdjson::SUCCESS ||
      e["t"].get_int64().get(t) != simdjson::SUCCESS ||
      e["v"].get_double().get(v) != simdjson::SUCCESS) {
    return InvalidArgument("a keyed window event is {\"window\", \"t\", \"v\"}");
  }
  for (size_t i = 0; i < rule.windows.size(); ++i) {
    if (rule.windows[i].name == name) {
      return AddEvent(s, rule, i, t, v);
    }
  }
  return FailedPrecondition(fmt::format("rule {} has no window {}", rule.name, name));
}

// kAdvance: the ingest-time windows move to the clock; what closes goes to on_window.
Status AdvanceWindows(State* s, const RuleInfo& rule) {
  GNOMON_RETURN_IF_ERROR(LoadWindows(s, rule));
  std::vector<ClosedWindow> closed;
  int64_t now = s->clock->NowMs();
  for (size_t i = 0; i < rule.windows.size(); ++i) {
    const WindowDecl& d = rule.windows[i];
    if (!d.by_clock()) {
      continue;  // event time moves with events only
    }
    closed.clear();
    s->windows[i].Advance(now, closed);
    for (const ClosedWindow& c : closed) {
      s->closed.push_back(ClosedEvent(d, c));
      s->windows_changed = true;
    }
  }
  return {};
}

}  // namespace

bool ValidWindowKey(std::string_view key) {
  bool ok = !key.empty() && key.size() <= 128;
  for (char c : key) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-' || c == '.' || c == ':');
  }
  return ok;
}

std::string StateRowName(std::string_view rule, bool keyed) {
  std::string row(rule);
  if (keyed) {
    row += "/key";
  }
  return row;
}

std::pair<std::string_view, bool> ParseStateRowName(std::string_view row) {
  constexpr std::string_view kKeyed = "/key";
  if (row.size() > kKeyed.size() && row.substr(row.size() - kKeyed.size()) == kKeyed) {
    return {row.substr(0, row.size() - kKeyed.size()), true};
  }
  return {row, false};
}

int64_t OpenWindows(std::string_view row) {
  int64_t open = 0;
  ForEachWindow(row, [&](std::string_view, std::string_view bytes) {
    open += WindowState::OpenIn(bytes);
    return true;
  });
  return open;
}

std::string DescribeWindows(const RuleInfo& rule, std::string_view stored) {
  std::string out;
  json::ObjectWriter w(out);
  for (const WindowDecl& d : rule.windows) {
    auto bytes = FindWindow(stored, d.name);
    auto state =
        bytes ? WindowState::Decode(d.spec, *bytes) : Result<WindowState>(WindowState(d.spec));
    if (!state.ok()) {
      continue;
    }
    std::string list = "[";
    for (const ClosedWindow& c : state->Open()) {
      if (list.size() > 1) {
        list += ',';
      }
      json::ObjectWriter ow(list);
      ow.Field("start", c.start).Field("end", c.end);
      WriteAggregates(ow, d, c.agg);
      ow.Close();
    }
    list += ']';
    w.FieldRaw(d.name, list);
  }
  w.Close();
  return out;
}

namespace {

// ctx.window: { NAME = { count =, avg =, ... } } for the sliding windows, as of this call.
Result<int> WindowView(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.window"));
  const RuleInfo& rule = *s->rule;
  GNOMON_RETURN_IF_ERROR(LoadWindows(s, rule));
  std::string out;
  json::ObjectWriter w(out);
  for (size_t i = 0; i < rule.windows.size(); ++i) {
    const WindowDecl& d = rule.windows[i];
    if (d.spec.kind != WindowSpec::Kind::kSliding || !d.key.empty()) {
      continue;  // (a keyed window lives with its key's owner)
    }
    std::string one;
    json::ObjectWriter ow(one);
    WriteAggregates(ow, d, s->windows[i].Current());
    ow.Close();
    w.FieldRaw(d.name, one);
  }
  w.Close();
  GNOMON_RETURN_IF_ERROR(PushDecoded(L, &s->slot->json, out));
  return 1;
}

// At the end of a successful call that used ctx.state or ctx.timer: the row's new state and
// timers as the call's last effect when either changed (or the state must be rewritten under
// the current state.version). An error fails the call: a value JSON cannot hold, or over
// state.max_bytes.
Status FinishState(lua_State* L, State* s, const RuleInfo& rule, CallResult& out) {
  std::string json;
  bool state_changed = false;
  if (s->state_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->state_ref);
    Status st = EncodeValue(L, -1, &s->slot->json, json, "ctx.state");
    lua_pop(L, 1);
    GNOMON_RETURN_IF_ERROR(st);
    if (json == "{}" || json == "[]") {
      json.clear();  // no state
    }
    if (static_cast<int64_t>(json.size()) > rule.state_max_bytes) {
      return FailedPrecondition(
          fmt::format("ctx.state: {} bytes as JSON, over rule.state.max_bytes ({})", json.size(),
                      rule.state_max_bytes));
    }
    // (s->stored is what ctx.state was decoded from: the reader keeps it as it is for the call)
    std::string_view loaded = s->stored != nullptr ? std::string_view(s->stored->json) : "";
    state_changed = s->state_rewrite || json != loaded;
  }
  if (!state_changed && !s->timers_changed && !s->windows_changed) {
    return {};
  }
  Effect e;
  e.kind = Effect::Kind::kState;
  if (s->state_ref != LUA_NOREF) {
    e.payload = std::move(json);
    e.state_version = rule.state_version;
  } else {  // only the timers changed
    e.payload = s->stored ? s->stored->json : std::string();
    e.state_version = s->stored ? s->stored->version : rule.state_version;
  }
  if (s->timers_used) {
    e.timers = std::move(s->timers);
  } else if (s->stored) {
    e.timers = s->stored->timers;
  }
  if (s->windows_loaded) {
    for (size_t i = 0; i < rule.windows.size(); ++i) {
      AppendWindow(e.windows, rule.windows[i].name, s->windows[i].Encode());
      if (rule.windows[i].by_clock()) {
        if (std::optional<int64_t> next = s->windows[i].NextClose()) {
          e.window_due = e.window_due == 0 ? *next : std::min(e.window_due, *next);
        }
      }
    }
  } else if (s->stored) {
    e.windows = s->stored->windows;
  }
  out.effects.push_back(std::move(e));
  return {};
}

// ctx.timer: the call's timers, copied from the stored row on first use.
Result<std::vector<RuleTimer>*> CallTimers(State* s) {
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.timer"));
  if (!s->timers_used) {
    GNOMON_ASSIGN_OR_RETURN(const StoredState* stored, StoredRow(s, "ctx.timer"));
    if (stored != nullptr) {
      s->timers = stored->timers;
    }
    s->timers_used = true;
  }
  return &s->timers;
}

Result<std::string> TimerName(lua_State* L, int idx) {
  if (lua_type(L, idx) != LUA_TSTRING) {
    return InvalidArgument("ctx.timer: the first argument must be the timer's name (a string)");
  }
  size_t len = 0;
  const char* p = lua_tolstring(L, idx, &len);
  std::string_view name(p, len);
  bool ok = !name.empty() && name.size() <= kMaxTimerNameBytes;
  for (char c : name) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-' || c == '.' || c == ':');
  }
  if (!ok) {
    return InvalidArgument(
        fmt::format("ctx.timer: a timer's name is 1-{} characters of [A-Za-z0-9_.:-] (got '{}')",
                    kMaxTimerNameBytes, name.substr(0, 80)));
  }
  return std::string(name);
}

// Sets timer `name` (replacing one of that name) to fire at `due` with the data at `data_idx`.
Status SetTimer(lua_State* L, State* s, std::string name, int64_t due, int data_idx) {
  std::string data;
  if (!lua_isnoneornil(L, data_idx)) {
    GNOMON_RETURN_IF_ERROR(EncodeValue(L, data_idx, &s->slot->json, data, "ctx.timer data"));
    if (data.size() > kMaxTimerDataBytes) {
      return InvalidArgument(fmt::format("ctx.timer: data of {} bytes as JSON, over {}",
                                         data.size(), kMaxTimerDataBytes));
    }
  }
  GNOMON_ASSIGN_OR_RETURN(std::vector<RuleTimer> * timers, CallTimers(s));
  for (RuleTimer& t : *timers) {
    if (t.name == name) {
      t.due_ms = due;
      t.data = std::move(data);
      s->timers_changed = true;
      return {};
    }
  }
  if (timers->size() >= kMaxTimers) {
    return FailedPrecondition(fmt::format(
        "ctx.timer: {} timers are pending for this device already (at most {} per rule and "
        "device); cancel one first",
        timers->size(), kMaxTimers));
  }
  timers->push_back(RuleTimer{std::move(name), due, std::move(data)});
  s->timers_changed = true;
  return {};
}

// ctx.timer.after(name, duration [, data]): fires on_timer `duration` from now.
Result<int> TimerAfter(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.timer"));
  GNOMON_ASSIGN_OR_RETURN(std::string name, TimerName(L, 1));
  int64_t ms = 0;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    double d = lua_tonumber(L, 2);
    if (!(d >= 0 && d <= static_cast<double>(kMaxTimerAheadMs))) {
      return InvalidArgument("ctx.timer.after: the delay must be 0 to 10 years (in ms)");
    }
    ms = static_cast<int64_t>(d);
  } else if (lua_type(L, 2) == LUA_TSTRING) {
    auto parsed = ParseDurationMs(lua_tostring(L, 2));
    if (!parsed.ok()) {
      return parsed.status().WithContext("ctx.timer.after");
    }
    ms = *parsed;
  } else {
    return InvalidArgument("ctx.timer.after: the delay must be a duration (\"1m\") or ms");
  }
  if (ms > kMaxTimerAheadMs) {
    return InvalidArgument("ctx.timer.after: at most 10 years ahead");
  }
  GNOMON_RETURN_IF_ERROR(SetTimer(L, s, std::move(name), s->clock->NowMs() + ms, 3));
  return 0;
}

// ctx.timer.at(name, epoch_ms [, data]): fires on_timer at that time (at once if it passed).
Result<int> TimerAt(lua_State* L) {
  State* s = GetState(L);
  GNOMON_RETURN_IF_ERROR(CheckInCall(s, "ctx.timer"));
  GNOMON_ASSIGN_OR_RETURN(std::string name, TimerName(L, 1));
  double at = lua_type(L, 2) == LUA_TNUMBER ? lua_tonumber(L, 2) : -1;
  int64_t now = s->clock->NowMs();
  if (!(at >= 0 && at <= static_cast<double>(now + kMaxTimerAheadMs))) {
    return InvalidArgument("ctx.timer.at: the time must be epoch ms, from 0 to 10 years from now");
  }
  GNOMON_RETURN_IF_ERROR(SetTimer(L, s, std::move(name), static_cast<int64_t>(at), 3));
  return 0;
}

// ctx.timer.cancel(name) -> whether a timer of that name was pending.
Result<int> TimerCancel(lua_State* L) {
  State* s = GetState(L);
  GNOMON_ASSIGN_OR_RETURN(std::string name, TimerName(L, 1));
  GNOMON_ASSIGN_OR_RETURN(std::vector<RuleTimer> * timers, CallTimers(s));
  auto it = std::find_if(timers->begin(), timers->end(),
                         [&](const RuleTimer& t) { return t.name == name; });
  lua_pushboolean(L, it != timers->end() ? 1 : 0);
  if (it != timers->end()) {
    timers->erase(it);
    s->timers_changed = true;
  }
  return 1;
}

// ctx.timer.due(name) -> the epoch ms timer `name` fires at, or nil.
Result<int> TimerDue(lua_State* L) {
  State* s = GetState(L);
  GNOMON_ASSIGN_OR_RETURN(std::string name, TimerName(L, 1));
  GNOMON_ASSIGN_OR_RETURN(std::vector<RuleTimer> * timers, CallTimers(s));
  for (const RuleTimer& t : *timers) {
    if (t.name == name) {
      lua_pushnumber(L, static_cast<lua_Number>(t.due_ms));
      return 1;
    }
  }
  lua_pushnil(L);
  return 1;
}

// Shadow handles, in Lua: reads are fetched once per call and shared by every handle of the
// same shadow in that call; writes become effects, applied when handle returns.
constexpr const char* kShadowPrelude = R"lua(
local read, read_version, write, call, device, setmetatable, rawget, model_info,
      model_validate, state_load, state_set, window_view = ...
local memo, versions, memo_call = {}, {}, nil
local function memo_key(thing, name)
  local c = call()
  if c ~= memo_call then memo, versions, memo_call = {}, {}, c end
  return thing .. "\0" .. (name or "")
end
local function document(thing, name)
  local key = memo_key(thing, name)
  local d = memo[key]
  if d == nil then
    d = read(thing, name) or false
    memo[key] = d
  end
  return d or nil
end
-- The version alone, without decoding the document, when the reader can (a shadow this
-- worker owns); else, or when this call read the document already, the document's.
local function version_of(thing, name)
  local key = memo_key(thing, name)
  if memo[key] == nil then
    local v = versions[key]
    if v == nil then
      v = read_version(thing, name)  -- a number; nil: no shadow; false: read the document
      if v == nil then v = -1 end
      versions[key] = v
    end
    if v then return v >= 0 and v or nil end
  end
  local d = document(thing, name)
  return d and d.version or nil
end
local methods = {
  get = function(self) return document(self.thing, self.name) end,
  report = function(self, patch) write(self.thing, self.name, "reported", patch) end,
  desire = function(self, patch) write(self.thing, self.name, "desired", patch) end,
  update = function(self, request) write(self.thing, self.name, nil, request) end,
}
local meta = {
  __metatable = false,
  __index = function(self, k)
    local m = methods[k]
    if m then return m end
    if k == "version" then
      return version_of(rawget(self, "thing"), rawget(self, "name"))
    end
    if k == "reported" or k == "desired" or k == "delta" then
      local d = document(rawget(self, "thing"), rawget(self, "name"))
      return d and d.state and d.state[k]
    end
    return nil
  end,
}
local function shadow_of(thing, name)
  return setmetatable({ thing = thing, name = name }, meta)
end
local model_meta = { __metatable = false, __index = {
  validate = function(self, patch, section) return model_validate(self.thing, patch, section) end,
} }
-- ctx.state: read on first use in a call; migrated first when stored under another version.
local function ctx_state()
  local t, from, migrate = state_load()
  if from ~= nil then t = state_set(migrate(t, from)) end
  return t
end
local function ctx_index(_, k)
  if k == "shadow" then return shadow_of(device("ctx.shadow")) end
  if k == "state" then return ctx_state() end
  if k == "device" then return device() end
  if k == "window" then return window_view() end
  if k == "model" then
    local thing = device("ctx.model")
    local id, version, ref = model_info(thing)
    if id == nil then return nil end
    return setmetatable({ thing = thing, id = id, version = version, ref = ref }, model_meta)
  end
  return nil
end
-- freeze(t, what): a read-only view of t (what a rule is handed and must not change).
local function freeze(t, what)
  return setmetatable({}, {
    __index = t,
    __newindex = function() error(what .. " is read-only", 2) end,
    __metatable = false,
  })
end
return shadow_of, ctx_index, freeze
)lua";

int RaiseStop(lua_State* L, State* s, Stop kind) {
  s->stop = kind;
  s->stop_reason = lua_isnoneornil(L, 1) ? "" : ToStringArg(L, 1);
  lua_pushlightuserdata(L, StopSentinel());
  return lua_error(L);
}

// The runtime whose call is in progress on this thread (one per worker thread).
thread_local State* t_current = nullptr;

// Instruction budget: fires every kHookInterval VM instructions of interpreted code.
void CountHook(lua_State* L, lua_Debug*) {
  State* s = t_current;
  if (s == nullptr || s->result == nullptr) {
    return;
  }
  bool interrupted = s->interrupt_seq.load(std::memory_order_acquire) ==
                     s->call_seq.load(std::memory_order_relaxed);
  if (!interrupted && s->hook_dirty.exchange(false)) {
    // An Interrupt() meant for the previous call left a hook on every instruction here.
    lua_sethook(L, CountHook, LUA_MASKCOUNT, kHookInterval);
    return;
  }
  if (!interrupted && --s->ticks_left >= 0) {
    return;
  }
  if (s->stop == Stop::kNone) {
    s->stop = Stop::kFail;
    s->stop_timeout = true;
    s->stop_reason =
        interrupted
            ? fmt::format("wall-clock limit of {} ms exceeded (rule.limits.wall_ms)",
                          s->rule->wall_ms)
            : fmt::format("instruction limit of {} exceeded (rule.limits.instructions)",
                          s->rule->max_instructions);
  }
  lua_pushlightuserdata(L, StopSentinel());
  lua_error(L);
}

int CtxDrop(lua_State* L) { return RaiseStop(L, GetState(L), Stop::kDrop); }
int CtxFail(lua_State* L) { return RaiseStop(L, GetState(L), Stop::kFail); }

Result<int> CtxNow(lua_State* L) {
  lua_pushnumber(L, static_cast<lua_Number>(GetState(L)->clock->NowMs()));
  return 1;
}

template <log::Level kLevel>
Result<int> CtxLog(lua_State* L) {
  State* s = GetState(L);
  std::string text;
  int n = lua_gettop(L);
  for (int i = 1; i <= n; ++i) {
    if (i > 1) {
      text += ' ';
    }
    text += ToStringArg(L, i);
  }
  std::string_view rule = s->rule != nullptr ? std::string_view(s->rule->name) : "";
  std::string_view device = s->msg != nullptr ? s->msg->device : "";
  log::Write(kLevel, text, {{"rule", rule}, {"device", device}});
  return 0;
}

// msg.__index: payload, payload_error, raw, headers are materialised on first use and cached
// in the (per-call) msg table.
Result<int> MsgIndex(lua_State* L) {
  State* s = GetState(L);
  if (lua_type(L, 2) != LUA_TSTRING) {
    lua_pushnil(L);
    return 1;
  }
  std::string_view key = lua_tostring(L, 2);
  lua_pushlightuserdata(L, &kGenerationKey);
  lua_rawget(L, 1);
  bool live = s->msg != nullptr &&
              static_cast<uint64_t>(lua_tonumber(L, -1)) == s->slot->json.generation;
  lua_pop(L, 1);
  if (key != "payload" && key != "payload_error" && key != "raw" && key != "headers") {
    lua_pushnil(L);
    return 1;
  }
  if (!live) {
    return FailedPrecondition(fmt::format("msg.{} used after handle returned", key));
  }
  if (key == "payload" || key == "payload_error") {
    bool want_payload = key == "payload";
    lua_pushliteral(L, "payload_error");  // a cached failure?
    lua_rawget(L, 1);
    if (lua_isstring(L, -1)) {
      if (want_payload) {
        lua_pushnil(L);
      }
      return 1;
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "payload");
    lua_rawget(L, 1);  // a cached success?
    if (!lua_isnil(L, -1)) {
      if (!want_payload) {
        lua_pushnil(L);
      }
      return 1;
    }
    lua_pop(L, 1);
    EnsureParsed(s);
    if (s->parsed_error.empty()) {
      PushPayload(L, &s->slot->json, s->payload_parser.doc, s->parsed_root,
                  s->parsed_rewritten ? std::string_view() : std::string_view(*s->msg->payload));
      lua_pushvalue(L, -1);
      lua_setfield(L, 1, "payload");
      if (!want_payload) {
        lua_pushnil(L);
      }
      return 1;
    }
    const std::string& why = s->parsed_error;
    lua_pushlstring(L, why.data(), why.size());
    lua_pushvalue(L, -1);
    lua_setfield(L, 1, "payload_error");
    if (want_payload) {
      lua_pushnil(L);
    }
    return 1;
  }
  if (key == "raw") {
    lua_pushlstring(L, s->msg->payload->data(), s->msg->payload->size());
  } else {
    lua_createtable(L, 0, s->msg->headers != nullptr ? static_cast<int>(s->msg->headers->size()) : 0);
    if (s->msg->headers != nullptr) {
      for (const auto& [k, v] : *s->msg->headers) {
        lua_pushlstring(L, v.data(), v.size());
        lua_setfield(L, -2, k.c_str());
      }
    }
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, 1, std::string(key).c_str());
  return 1;
}

// Error handler: keeps the stop sentinel, otherwise message + traceback.
int Traceback(lua_State* L) {
  if (lua_touserdata(L, 1) == StopSentinel()) {
    return 1;
  }
  const char* msg = lua_tostring(L, 1);
  if (msg == nullptr) {
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

void PushStateClosure(lua_State* L, State* s, lua_CFunction f) {
  lua_pushlightuserdata(L, s);
  lua_pushcclosure(L, f, 1);
}

}  // namespace

namespace {

// Pushes handle's msg table for `msg`.
void PushMsg(lua_State* L, RuleSlot* slot, const MessageView& msg) {
  lua_createtable(L, 0, 6);
  auto set = [L, slot](RuleSlot::MsgKey key, std::string_view value) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, slot->msg_key_refs[key]);
    lua_pushlstring(L, value.data(), value.size());
    lua_rawset(L, -3);
  };
  set(RuleSlot::kTopic, msg.topic);
  set(RuleSlot::kDevice, msg.device);
  set(RuleSlot::kSource, msg.source);
  lua_rawgeti(L, LUA_REGISTRYINDEX, slot->msg_key_refs[RuleSlot::kTs]);
  lua_pushnumber(L, static_cast<lua_Number>(msg.ts_ms));
  lua_rawset(L, -3);
  lua_pushlightuserdata(L, &kGenerationKey);
  lua_pushnumber(L, static_cast<lua_Number>(slot->json.generation));
  lua_rawset(L, -3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, slot->msg_meta_ref);
  lua_setmetatable(L, -2);
}

// Builds rule `info`'s state: the sandbox, ctx (frozen), and the rule file loaded in it.
Result<std::unique_ptr<RuleSlot>> BuildSlot(State* s, const RuleSetOptions& options,
                                            const RuleInfo& info) {
  auto slot = std::make_unique<RuleSlot>();
  slot->memory.cap = static_cast<size_t>(info.heap_mb) << 20;
  slot->memory.limit = slot->memory.cap;
  GNOMON_ASSIGN_OR_RETURN(slot->L, NewSandboxState(&slot->json, &slot->memory, options.lib_dirs));
  lua_State* L = slot->L;
  lua_sethook(L, CountHook, LUA_MASKCOUNT, kHookInterval);

  lua_pushcfunction(L, Traceback);
  slot->traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  static constexpr const char* kMsgKeyNames[RuleSlot::kMsgKeys] = {"topic", "device", "source",
                                                                   "ts"};
  for (int k = 0; k < RuleSlot::kMsgKeys; ++k) {
    lua_pushstring(L, kMsgKeyNames[k]);
    slot->msg_key_refs[k] = luaL_ref(L, LUA_REGISTRYINDEX);
  }

  lua_createtable(L, 0, 2);
  PushStateClosure(L, s, LuaThunk<MsgIndex>);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  slot->msg_meta_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  lua_createtable(L, 0, 8);
  PushStateClosure(L, s, LuaThunk<CtxEmit>);
  lua_setfield(L, -2, "emit");
  PushStateClosure(L, s, LuaThunk<CtxPublish>);
  lua_setfield(L, -2, "publish");
  PushStateClosure(L, s, CtxDrop);
  lua_setfield(L, -2, "drop");
  PushStateClosure(L, s, CtxFail);
  lua_setfield(L, -2, "fail");
  PushStateClosure(L, s, LuaThunk<CtxNow>);
  lua_setfield(L, -2, "now");
  PushStateClosure(L, s, LuaThunk<CtxInvoke>);
  lua_setfield(L, -2, "invoke");
  lua_createtable(L, 0, 4);
  PushStateClosure(L, s, LuaThunk<TimerAfter>);
  lua_setfield(L, -2, "after");
  PushStateClosure(L, s, LuaThunk<TimerAt>);
  lua_setfield(L, -2, "at");
  PushStateClosure(L, s, LuaThunk<TimerCancel>);
  lua_setfield(L, -2, "cancel");
  PushStateClosure(L, s, LuaThunk<TimerDue>);
  lua_setfield(L, -2, "due");
  lua_setfield(L, -2, "timer");
  lua_createtable(L, 0, 4);
  PushStateClosure(L, s, LuaThunk<CtxLog<log::Level::kDebug>>);
  lua_setfield(L, -2, "debug");
  PushStateClosure(L, s, LuaThunk<CtxLog<log::Level::kInfo>>);
  lua_setfield(L, -2, "info");
  PushStateClosure(L, s, LuaThunk<CtxLog<log::Level::kWarn>>);
  lua_setfield(L, -2, "warn");
  PushStateClosure(L, s, LuaThunk<CtxLog<log::Level::kError>>);
  lua_setfield(L, -2, "error");
  lua_setfield(L, -2, "log");
  // ctx.shadow (for msg.device, made on use) and ctx.shadow_of come from the shadow prelude.
  if (luaL_loadbuffer(L, kShadowPrelude, std::strlen(kShadowPrelude), "=gnomon.shadow") != 0) {
    return Internal(fmt::format("shadow prelude: {}", lua_tostring(L, -1)));
  }
  PushStateClosure(L, s, LuaThunk<ShadowRead>);
  PushStateClosure(L, s, LuaThunk<ShadowVersion>);
  PushStateClosure(L, s, LuaThunk<ShadowWrite>);
  PushStateClosure(L, s, LuaThunk<ShadowCall>);
  PushStateClosure(L, s, LuaThunk<ShadowDevice>);
  lua_getglobal(L, "setmetatable");
  lua_getglobal(L, "rawget");
  PushStateClosure(L, s, LuaThunk<ModelInfo>);
  PushStateClosure(L, s, LuaThunk<ModelValidate>);
  PushStateClosure(L, s, LuaThunk<StateLoad>);
  PushStateClosure(L, s, LuaThunk<StateSet>);
  PushStateClosure(L, s, LuaThunk<WindowView>);
  if (lua_pcall(L, 12, 3, 0) != 0) {
    return Internal(fmt::format("shadow prelude: {}", lua_tostring(L, -1)));
  }
  // stack: ctx, shadow_of, ctx_index, freeze
  int freeze = lua_gettop(L);
  int ctx = freeze - 3;
  lua_pushvalue(L, freeze - 2);
  lua_setfield(L, ctx, "shadow_of");
  lua_getfield(L, ctx, "log");
  lua_pushvalue(L, freeze);
  lua_insert(L, -2);
  lua_pushliteral(L, "ctx.log");
  lua_call(L, 2, 1);
  lua_setfield(L, ctx, "log");
  lua_getfield(L, ctx, "timer");
  lua_pushvalue(L, freeze);
  lua_insert(L, -2);
  lua_pushliteral(L, "ctx.timer");
  lua_call(L, 2, 1);
  lua_setfield(L, ctx, "timer");
  lua_createtable(L, 0, 2);  // ctx's own metatable: shadow and model are made on use
  lua_pushvalue(L, freeze - 1);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, ctx);
  lua_pushvalue(L, freeze);
  lua_pushvalue(L, ctx);
  lua_pushliteral(L, "ctx");
  lua_call(L, 2, 1);
  slot->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);

  // pushes the rule table
  GNOMON_RETURN_IF_ERROR(LoadRuleChunk(L, info.file, info.source, /*interpreted=*/!info.jit));
  lua_getfield(L, -1, "handle");
  slot->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, -1, "on_timer");
  slot->on_timer_ref = luaL_ref(L, LUA_REGISTRYINDEX);  // LUA_REFNIL when there is none
  lua_getfield(L, -1, "on_inactive");
  slot->on_inactive_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, -1, "on_window");
  slot->on_window_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, -1, "on_late");
  slot->on_late_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  slot->rule_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
  return slot;
}

}  // namespace

Result<std::unique_ptr<RuleRuntime>> RuleRuntime::Create(std::shared_ptr<const RuleSet> set,
                                                         const Clock& clock) {
  std::unique_ptr<RuleRuntime> rt(new RuleRuntime());
  rt->set_ = std::move(set);
  rt->state_ = std::make_unique<State>();
  State* s = rt->state_.get();
  s->clock = &clock;
  const auto& sinks = rt->set_->options().sinks;
  for (uint32_t i = 0; i < sinks.size(); ++i) {
    s->sink_index.emplace(sinks[i], i);
  }
  s->sink_names = sinks;
  s->any_sink = rt->set_->options().any_sink;
  for (const RuleInfo& info : rt->set_->rules()) {
    GNOMON_ASSIGN_OR_RETURN(auto slot, BuildSlot(s, rt->set_->options(), info));
    s->slots.push_back(std::move(slot));
  }
  return rt;
}

RuleRuntime::~RuleRuntime() = default;

void RuleRuntime::Interrupt(uint64_t call) {
  State* s = state_.get();
  if (s->call_seq.load(std::memory_order_acquire) != call) {
    return;  // that call is over
  }
  lua_State* L = s->running.load(std::memory_order_acquire);
  if (L == nullptr) {
    return;
  }
  s->interrupt_seq.store(call, std::memory_order_release);
  s->hook_dirty.store(true);
  // lua_sethook may be called asynchronously (it is how Lua interrupts from signal handlers):
  // a hook on every instruction makes the interpreter check at once.
  lua_sethook(L, CountHook, LUA_MASKCOUNT, 1);
}

uint64_t RuleRuntime::call_seq() const { return state_->call_seq.load(std::memory_order_acquire); }

const std::string& RuleRuntime::sink_name(uint32_t index) const {
  return state_->sink_names.at(index);
}

Result<std::string> RuleRuntime::TestsJson(uint32_t index) {
  RuleSlot* slot = state_->slots.at(index).get();
  if (slot == nullptr) {
    return FailedPrecondition("the rule's state could not be rebuilt");
  }
  lua_State* L = slot->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, slot->rule_ref);
  lua_getfield(L, -1, "tests");
  std::string out;
  Status st;
  if (lua_isnil(L, -1)) {
    out = "[]";
  } else {
    st = EncodeValue(L, -1, &slot->json, out, "tests");
  }
  lua_settop(L, top);
  if (!st.ok()) {
    return st;
  }
  return out;
}

size_t RuleRuntime::heap_bytes(uint32_t index) const {
  const RuleSlot* slot = state_->slots.at(index).get();
  return slot != nullptr ? slot->memory.live : 0;
}

namespace {

// Pattern functions charge the call's budget: kMatchStepsPerCheck steps cost one hook tick.
const char* CallMatchCheck(void* ctx) {
  auto* s = static_cast<State*>(ctx);
  bool interrupted = s->interrupt_seq.load(std::memory_order_acquire) ==
                     s->call_seq.load(std::memory_order_relaxed);
  if (!interrupted && --s->ticks_left >= 0) {
    return nullptr;
  }
  if (s->stop == Stop::kNone) {
    s->stop = Stop::kFail;
    s->stop_timeout = true;
    s->stop_reason =
        interrupted
            ? fmt::format("wall-clock limit of {} ms exceeded in a string pattern function "
                          "(rule.limits.wall_ms)",
                          s->rule->wall_ms)
            : fmt::format("instruction limit of {} exceeded in a string pattern function "
                          "(rule.limits.instructions)",
                          s->rule->max_instructions);
  }
  return "limit exceeded";
}

}  // namespace

void RuleRuntime::Run(uint32_t index, const MessageView& msg, CallResult& out) {
  State* s = state_.get();
  out.outcome = Outcome::kOk;
  out.reason.clear();
  out.effects.clear();
  out.state_reset = false;
  out.timed_out = false;
  out.input_failure = false;
  out.closed_windows.clear();
  out.late_windows.clear();
  out.keyed_events.clear();
  out.window_skips = 0;
  const RuleInfo& rule = set_->rules()[index];
  RuleSlot* slot = s->slots[index].get();
  if (slot == nullptr) {
    // Its globals were reset and its file no longer loads (its top-level code is not
    // deterministic): it fails until the next reload.
    auto rebuilt = BuildSlot(s, set_->options(), rule);
    if (!rebuilt.ok()) {
      out.outcome = Outcome::kFailed;
      out.reason = "the rule's state could not be rebuilt after a reset: " +
                   std::string(rebuilt.status().message());
      return;
    }
    s->slots[index] = std::move(rebuilt).value();
    slot = s->slots[index].get();
  }
  lua_State* L = slot->L;
  s->slot = slot;
  s->msg = &msg;
  s->result = &out;
  s->rule = &rule;
  s->stop = Stop::kNone;
  s->stop_reason.clear();
  s->stop_timeout = false;
  s->ticks_left = rule.jit ? INT64_MAX : std::max<int64_t>(1, rule.max_instructions / kHookInterval);
  MemoryBudget& memory = slot->memory;
  memory.refused = false;
  memory.refused_cap = false;
  memory.limit = std::min(memory.cap, memory.live + (static_cast<size_t>(rule.memory_mb) << 20));
  s->running.store(L, std::memory_order_release);
  s->call_seq.fetch_add(1, std::memory_order_release);
  t_current = s;
  MatchBudget budget{CallMatchCheck, s, /*raise_stop=*/true};
  CurrentMatchBudget() = &budget;

  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, slot->traceback_ref);
  int errfunc = lua_gettop(L);
  int rc = 0;
  int nargs = 2;
  using Call = MessageView::Call;
  if (msg.call == Call::kMigrate) {
    // ctx.state, read as a rule would (migrate runs in the prelude's ctx_state).
    lua_pushcfunction(L, [](lua_State* l) -> int {
      lua_getfield(l, 1, "state");
      return 0;
    });
    lua_rawgeti(L, LUA_REGISTRYINDEX, slot->ctx_ref);
    rc = lua_pcall(L, 1, 0, errfunc);
    nargs = -1;
  } else if (msg.call == Call::kAdvance || msg.call == Call::kKeyed) {
    nargs = -1;  // no Lua: the windows move to the clock, or take a keyed event
    Status st =
        msg.call == Call::kAdvance ? AdvanceWindows(s, rule) : AddKeyedEvent(s, rule, msg.event);
    if (!st.ok()) {
      lua_pushlstring(L, st.message().data(), st.message().size());
      rc = LUA_ERRRUN;
    }
  } else if (msg.call == Call::kHandle) {
    Status st = rule.windows.empty() ? Status() : AddToWindows(s, rule, msg);
    if (!st.ok()) {
      lua_pushlstring(L, st.message().data(), st.message().size());
      rc = LUA_ERRRUN;
    } else {
      lua_rawgeti(L, LUA_REGISTRYINDEX, slot->handle_ref);
      PushMsg(L, slot, msg);
    }
  } else {
    int ref = msg.call == Call::kTimer      ? slot->on_timer_ref
              : msg.call == Call::kInactive ? slot->on_inactive_ref
              : msg.call == Call::kWindow   ? slot->on_window_ref
                                            : slot->on_late_ref;
    const char* fn = msg.call == Call::kTimer      ? "on_timer"
                     : msg.call == Call::kInactive ? "on_inactive"
                     : msg.call == Call::kWindow   ? "on_window"
                                                   : "on_late";
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    Status st;
    if (!lua_isfunction(L, -1)) {
      st = FailedPrecondition(fmt::format("rule {} has no {}", rule.name, fn));
    } else {
      if (msg.call == Call::kLate) {
        PushMsg(L, slot, msg);
        nargs = 3;
      }
      st = PushDecoded(L, &slot->json, msg.event);
    }
    if (!st.ok()) {
      lua_pushlstring(L, st.message().data(), st.message().size());
      rc = LUA_ERRRUN;
    }
  }
  if (rc == 0 && nargs > 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, slot->ctx_ref);
    rc = lua_pcall(L, nargs, 0, errfunc);
  }
  memory.limit = memory.cap;
  CurrentMatchBudget() = nullptr;
  t_current = nullptr;
  s->running.store(nullptr, std::memory_order_release);
  if (s->hook_dirty.exchange(false)) {
    lua_sethook(L, CountHook, LUA_MASKCOUNT, kHookInterval);  // undo Interrupt's hook
  }
  if (memory.refused && s->stop != Stop::kDrop) {
    out.outcome = Outcome::kFailed;
    out.reason = memory.refused_cap
                     ? fmt::format("heap limit of {} MB exceeded (rule.limits.heap_mb: what the "
                                   "rule keeps across calls, globals included)",
                                   rule.heap_mb)
                     : fmt::format("memory limit of {} MB exceeded (rule.limits.memory_mb)",
                                   rule.memory_mb);
  } else if (s->stop == Stop::kDrop) {
    out.outcome = Outcome::kFiltered;
    out.reason = std::move(s->stop_reason);
  } else if (s->stop == Stop::kFail) {
    out.outcome = Outcome::kFailed;
    out.timed_out = s->stop_timeout;
    out.input_failure = !s->stop_timeout;
    out.reason = s->stop_reason.empty() ? "ctx.fail" : std::move(s->stop_reason);
  } else if (rc != 0) {
    out.outcome = Outcome::kFailed;
    size_t len = 0;
    const char* m = lua_tolstring(L, -1, &len);
    out.reason = m != nullptr ? std::string(m, len) : "unknown error";
    if (rc == LUA_ERRMEM) {
      out.reason = "out of memory: " + out.reason;
    }
  }
  if (s->state_ref != LUA_NOREF || s->timers_used || s->windows_loaded) {
    if (out.outcome == Outcome::kOk) {
      if (Status st = FinishState(L, s, rule, out); !st.ok()) {
        out.outcome = Outcome::kFailed;
        out.reason = std::string(st.message());
      }
    }
    if (s->state_ref != LUA_NOREF) {
      luaL_unref(L, LUA_REGISTRYINDEX, s->state_ref);
    }
    s->state_ref = LUA_NOREF;
  }
  if (out.outcome == Outcome::kOk) {
    out.closed_windows = std::move(s->closed);
    out.late_windows = std::move(s->late);
    out.keyed_events = std::move(s->keyed);
  }
  out.window_skips = s->window_skips;
  s->stored_read = false;
  s->stored = nullptr;
  s->timers_used = false;
  s->timers_changed = false;
  s->timers.clear();
  s->windows_loaded = false;
  s->windows_changed = false;
  s->windows.clear();
  s->closed.clear();
  s->late.clear();
  s->keyed.clear();
  s->window_skips = 0;
  if (out.outcome != Outcome::kOk) {
    out.effects.clear();
  }
  lua_settop(L, top);
  ++slot->json.generation;  // views and msg tables of this call are dead now
  KeepGarbageBounded(slot);
  s->msg = nullptr;
  s->result = nullptr;
  s->rule = nullptr;
  s->slot = nullptr;
  if (memory.refused_cap) {
    // The heap cap was hit. If what the rule keeps (after a full collection) still holds more
    // than half of it, the next calls would fail the same way: reset the rule's globals by
    // building its state afresh.
    lua_gc(L, LUA_GCCOLLECT, 0);
    if (memory.live > memory.cap / 2) {
      out.state_reset = true;
      out.reason += "; the rule's globals were reset";
      s->slots[index].reset();
      auto rebuilt = BuildSlot(s, set_->options(), rule);
      if (rebuilt.ok()) {
        s->slots[index] = std::move(rebuilt).value();
      }
    }
  }
}

}  // namespace gnomon::rules

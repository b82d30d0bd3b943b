// SPDX-License-Identifier: Apache-2.0
// JSON <-> Lua for rules: lazy read-only views over simdjson documents, decode into tables
// (arrays keep an array metatable), and encode of tables, views and scalars.
#pragma once

#include <lua.hpp>
#include <simdjson.h>

#include <cstdint>
#include <string>

#include "gnomon/core/status.h"

namespace gnomon::rules {

// Per-state JSON context; lives in RuleRuntime::State.
struct JsonContext {
  simdjson::dom::parser payload_parser;  // the current message's payload
  simdjson::dom::parser decode_parser;   // json.decode
  uint64_t generation = 1;               // bumped after each call: older views are dead
  const void* view_meta = nullptr;       // the view metatable (set by OpenJson), for identity
  int view_meta_ref = LUA_NOREF;         // ... and its registry slot, to push it
  // The document msg.payload's views read (SetPayload), and whether it holds a key twice
  // anywhere: -1 not looked yet, 0 no, 1 maybe (the tape scan, once per call at most).
  const simdjson::dom::document* payload_doc = nullptr;
  simdjson::dom::element payload_root;
  int payload_duplicates = -1;
  // The text payload_root was parsed from, byte for byte; empty when the parse rewrote it
  // (numbers beyond range quoted), so the views do not read that text.
  std::string_view payload_text;
};

// Makes `root` (of `doc`) the document this call's views read; pushes its view (or scalar).
// Its objects are not checked for keys they hold twice until they are read: reading such a
// key, and copying or encoding an object or array that holds one anywhere (json.totable,
// json.pairs, #, tostring, json.encode, ctx.emit, ...), fails with the key and its path.
void PushPayload(lua_State* L, JsonContext* ctx, const simdjson::dom::document& doc,
                 simdjson::dom::element root, std::string_view text = {});

// Parses `text` the way rules see JSON (msg.payload, json.decode): a number beyond the range
// of a 64-bit integer or a double (123456789012345678901234567890, 1e400) is kept as an exact
// string, and with `refuse_duplicates` an object that holds a key twice is refused (readers
// disagree on which one counts; msg.payload checks when it is read instead, see PushPayload).
// Returns the error text ("" on success); `scratch` holds a rewritten copy if needed, and
// `*rewritten` (when given) says whether `out` was parsed from it.
std::string ParseRuleJson(simdjson::dom::parser& parser, const char* data, size_t len, bool padded,
                          simdjson::dom::element& out, std::string& scratch,
                          bool refuse_duplicates = true, bool* rewritten = nullptr);

// The two ways ParseRuleJson looks for a key an object holds twice, exposed for the test that
// holds them to each other. ScanTapeForDuplicateKeys reads the parsed document's tape in one
// pass without allocating; past 32 open containers or 128 keys in the open objects it answers
// kUnknown. FindDuplicateKey walks the DOM under `el` (an object or an array) and writes the
// first such key, after its path, to `where` (`.list[1]"k"`).
enum class KeyScan { kUnique, kDuplicate, kUnknown };
KeyScan ScanTapeForDuplicateKeys(const simdjson::dom::document& doc);
bool FindDuplicateKey(simdjson::dom::element el, std::string& where);

// Registers the view and array metatables and returns (pushes) the `json` library table.
// `ctx` must outlive the state.
void OpenJson(lua_State* L, JsonContext* ctx);

// Pushes `el`: scalars as Lua values (null → json.null, integers beyond ±2^53 → strings),
// objects and arrays as lazy views valid for the current generation.
void PushElement(lua_State* L, JsonContext* ctx, simdjson::dom::element el);

// Parses `text` and pushes it as plain Lua tables (as json.decode does).
Status PushDecoded(lua_State* L, JsonContext* ctx, std::string_view text);

// What the value at `idx` is, when it is a JSON view (msg.payload or a part of it) of the call
// in progress: such a view is encoded straight from the parsed payload, never through Lua
// tables. kDead for a view kept from an earlier call (encoding it fails and says so), kNone
// for anything else.
enum class JsonViewKind { kNone, kObject, kArray, kDead };
JsonViewKind ViewKindAt(lua_State* L, int idx, JsonContext* ctx);

// Appends the JSON encoding of the value at `idx` to `out`. `path` names it in errors
// ("record.a[2]: cannot encode a function"). With `as_received`, msg.payload itself (the
// root view) is appended as the text it was parsed from, whitespace and number spelling
// included, instead of re-serialized: for consumers that parse it again (shadow writes).
Status EncodeValue(lua_State* L, int idx, JsonContext* ctx, std::string& out,
                   const std::string& path, bool as_received = false);

// Raises a Lua error with `message` after the C++ caller's locals are gone: bindings are
// written as Result<int>(lua_State*) and wrapped with this thunk.
template <Result<int> (*F)(lua_State*)>
int LuaThunk(lua_State* L) {
  {
    Result<int> r = F(L);
    if (r.ok()) {
      return *r;
    }
    Status st = r.status();
    lua_pushlstring(L, st.message().data(), st.message().size());
  }
  return lua_error(L);
}

}  // namespace gnomon::rules

// SPDX-License-Identifier: Apache-2.0
#include "lua_json.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "gnomon/core/json.h"

namespace gnomon::rules {
namespace {

constexpr const char* kViewMeta = "gnomon.json_view";
constexpr const char* kArrayMeta = "gnomon.json_array";
constexpr int kMaxEncodeDepth = 128;

struct View {
  uint64_t generation;
  simdjson::dom::element el;
};

JsonContext* Ctx(lua_State* L) {
  return static_cast<JsonContext*>(lua_touserdata(L, lua_upvalueindex(1)));
}

// The view at `idx`, or nullptr if it is not one. The metatable is compared by identity, not
// looked up by name in the registry (a string look-up per call on every payload read).
View* ToView(lua_State* L, int idx, JsonContext* ctx) {
  if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) {
    return nullptr;
  }
  bool view = lua_topointer(L, -1) == ctx->view_meta;
  lua_pop(L, 1);
  return view ? static_cast<View*>(lua_touserdata(L, idx)) : nullptr;
}

// What reading a view (or walking one) of a call that has returned fails with.
Status DeadViewError() {
  return FailedPrecondition(
      "msg.payload used after handle returned (copy values out with json.totable)");
}

// `v` if it belongs to the call in progress; an error otherwise.
Result<View*> Live(View* v, JsonContext* ctx) {
  if (v->generation != ctx->generation) {
    return DeadViewError();
  }
  return v;
}

// The view at `idx` if it is one and still alive; an error otherwise.
Result<View*> CheckView(lua_State* L, int idx, JsonContext* ctx) {
  View* v = ToView(L, idx, ctx);
  if (v == nullptr) {
    return InvalidArgument("expected a JSON view");
  }
  return Live(v, ctx);
}

// Two elements are the same value of the same document when their bytes are (a document
// pointer and a tape index): simdjson has no public identity for them.
static_assert(std::is_trivially_copyable_v<simdjson::dom::element>);
bool SameElement(const simdjson::dom::element& a, const simdjson::dom::element& b) {
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

// The path of `target` under `el` (".a[2].b"), found by walking the document. For error texts.
bool PathTo(simdjson::dom::element el, const simdjson::dom::element& target, std::string& path) {
  using T = simdjson::dom::element_type;
  if (SameElement(el, target)) {
    return true;
  }
  if (el.type() == T::ARRAY) {
    size_t i = 0;
    for (simdjson::dom::element item : simdjson::dom::array(el)) {
      if (PathTo(item, target, path)) {
        path = fmt::format("[{}]{}", i, path);
        return true;
      }
      ++i;
    }
  } else if (el.type() == T::OBJECT) {
    for (auto field : simdjson::dom::object(el)) {
      if (PathTo(field.value, target, path)) {
        path = fmt::format(".{}{}", field.key.substr(0, 64), path);
        return true;
      }
    }
  }
  return false;
}

std::string PathOf(JsonContext* ctx, const simdjson::dom::element& el) {
  std::string path;
  PathTo(ctx->payload_root, el, path);
  return "$" + path;
}

Status DuplicateKeyError(std::string_view key, const std::string& path) {
  std::string quoted;
  json::AppendQuoted(quoted, key.substr(0, 64));
  return InvalidArgument(fmt::format("duplicate key {} in the object at {}", quoted, path));
}

// May the payload hold a key twice anywhere? The tape scan answers once per call.
bool PayloadMayHaveDuplicates(JsonContext* ctx) {
  if (ctx->payload_duplicates < 0) {
    ctx->payload_duplicates =
        ctx->payload_doc == nullptr ||
                ScanTapeForDuplicateKeys(*ctx->payload_doc) != KeyScan::kUnique
            ? 1
            : 0;
  }
  return ctx->payload_duplicates != 0;
}

// An error naming the first key held twice by an object anywhere under `el` (the whole value a
// rule copies or encodes), or OK.
Status CheckNoDuplicates(JsonContext* ctx, simdjson::dom::element el) {
  if (!el.is_object() && !el.is_array()) {
    return {};
  }
  std::string where;
  if (!PayloadMayHaveDuplicates(ctx) || !FindDuplicateKey(el, where)) {
    return {};
  }
  size_t q = where.find('"');  // where: `.list[1]"k"`, below `el`
  return InvalidArgument(fmt::format("duplicate key {} in the object at {}{}", where.substr(q),
                                     PathOf(ctx, el), where.substr(0, q)));
}

// An error if the object `el` itself holds a key twice (json.pairs and # list its keys).
Status CheckObjectKeys(JsonContext* ctx, simdjson::dom::object o,
                       const simdjson::dom::element& el) {
  if (!PayloadMayHaveDuplicates(ctx)) {
    return {};
  }
  std::vector<std::string_view> keys;
  keys.reserve(o.size());
  for (auto field : o) {
    keys.push_back(field.key);
  }
  std::sort(keys.begin(), keys.end());
  auto dup = std::adjacent_find(keys.begin(), keys.end());
  return dup == keys.end() ? Status() : DuplicateKeyError(*dup, PathOf(ctx, el));
}

constexpr int64_t kMaxExact = int64_t{1} << 53;

void PushInt(lua_State* L, int64_t i) {
  if (i >= -kMaxExact && i <= kMaxExact) {
    lua_pushnumber(L, static_cast<lua_Number>(i));
  } else {
    std::string s = std::to_string(i);
    lua_pushlstring(L, s.data(), s.size());
  }
}

void PushScalar(lua_State* L, simdjson::dom::element el) {
  using T = simdjson::dom::element_type;
  switch (el.type()) {
    case T::INT64: PushInt(L, int64_t(el)); return;
    case T::UINT64: {
      uint64_t u = uint64_t(el);
      if (u <= static_cast<uint64_t>(kMaxExact)) {
        lua_pushnumber(L, static_cast<lua_Number>(u));
      } else {
        std::string s = std::to_string(u);
        lua_pushlstring(L, s.data(), s.size());
      }
      return;
    }
    case T::DOUBLE: lua_pushnumber(L, double(el)); return;
    case T::STRING: {
      std::string_view s(el);
      lua_pushlstring(L, s.data(), s.size());
      return;
    }
    case T::BOOL: lua_pushboolean(L, bool(el)); return;
    case T::NULL_VALUE: lua_pushlightuserdata(L, nullptr); return;
    default: lua_pushnil(L); return;
  }
}

// Builds Lua tables from `el` (json.decode, json.totable).
void PushTable(lua_State* L, simdjson::dom::element el) {
  using T = simdjson::dom::element_type;
  lua_checkstack(L, 4);
  if (el.type() == T::ARRAY) {
    simdjson::dom::array a(el);
    lua_createtable(L, static_cast<int>(a.size()), 0);
    int i = 1;
    for (simdjson::dom::element item : a) {
      PushTable(L, item);
      lua_rawseti(L, -2, i++);
    }
    luaL_getmetatable(L, kArrayMeta);
    lua_setmetatable(L, -2);
  } else if (el.type() == T::OBJECT) {
    simdjson::dom::object o(el);
    lua_createtable(L, 0, static_cast<int>(o.size()));
    for (auto field : o) {
      lua_pushlstring(L, field.key.data(), field.key.size());
      PushTable(L, field.value);
      lua_rawset(L, -3);
    }
  } else {
    PushScalar(L, el);
  }
}

Result<int> ViewIndex(lua_State* L) {
  JsonContext* ctx = Ctx(L);
  GNOMON_ASSIGN_OR_RETURN(View * v, CheckView(L, 1, ctx));
  simdjson::dom::element child;
  if (v->el.is_object()) {
    if (lua_type(L, 2) != LUA_TSTRING) {
      lua_pushnil(L);
      return 1;
    }
    size_t len = 0;
    const char* k = lua_tolstring(L, 2, &len);
    std::string_view key(k, len);
    simdjson::dom::object o(v->el);
    if (ctx->payload_duplicates == 0) {  // known to hold no key twice: the first match is it
      if (o.at_key(key).get(child) != simdjson::SUCCESS) {
        lua_pushnil(L);
        return 1;
      }
    } else {
      // Every key is looked at: a key the object holds twice is refused when it is read.
      bool found = false;
      for (auto field : o) {
        if (field.key.size() == len && std::memcmp(field.key.data(), k, len) == 0) {
          if (found) {
            return DuplicateKeyError(key, PathOf(ctx, v->el));
          }
          child = field.value;
          found = true;
        }
      }
      if (!found) {
        lua_pushnil(L);
        return 1;
      }
    }
  } else {
    if (lua_type(L, 2) != LUA_TNUMBER) {
      lua_pushnil(L);
      return 1;
    }
    double d = lua_tonumber(L, 2);
    if (d < 1 || d != std::floor(d) ||
        simdjson::dom::array(v->el).at(static_cast<size_t>(d) - 1).get(child) !=
            simdjson::SUCCESS) {
      lua_pushnil(L);
      return 1;
    }
  }
  PushElement(L, ctx, child);
  return 1;
}

Result<int> ViewLen(lua_State* L) {
  GNOMON_ASSIGN_OR_RETURN(View * v, CheckView(L, 1, Ctx(L)));
  if (v->el.is_object()) {
    GNOMON_RETURN_IF_ERROR(CheckObjectKeys(Ctx(L), simdjson::dom::object(v->el), v->el));
  }
  size_t n = v->el.is_array() ? simdjson::dom::array(v->el).size()
                              : simdjson::dom::object(v->el).size();
  lua_pushnumber(L, static_cast<lua_Number>(n));
  return 1;
}

Result<int> ViewToString(lua_State* L) {
  GNOMON_ASSIGN_OR_RETURN(View * v, CheckView(L, 1, Ctx(L)));
  GNOMON_RETURN_IF_ERROR(CheckNoDuplicates(Ctx(L), v->el));
  std::string s = simdjson::minify(v->el);
  lua_pushlstring(L, s.data(), s.size());
  return 1;
}

Result<int> JsonEncode(lua_State* L) {
  std::string out;
  GNOMON_RETURN_IF_ERROR(EncodeValue(L, 1, Ctx(L), out, "value"));
  lua_pushlstring(L, out.data(), out.size());
  return 1;
}

Result<int> JsonDecode(lua_State* L) {
  if (lua_type(L, 1) != LUA_TSTRING) {
    return InvalidArgument("json.decode: expected a string");
  }
  size_t len = 0;
  const char* s = lua_tolstring(L, 1, &len);
  simdjson::dom::element el;
  std::string scratch;
  std::string err = ParseRuleJson(Ctx(L)->decode_parser, s, len, false, el, scratch);
  if (!err.empty()) {
    return InvalidArgument(fmt::format("json.decode: {}", err));
  }
  PushTable(L, el);
  return 1;
}

}  // namespace

Status PushDecoded(lua_State* L, JsonContext* ctx, std::string_view text) {
  simdjson::dom::element el;
  std::string scratch;
  std::string err = ParseRuleJson(ctx->decode_parser, text.data(), text.size(), false, el, scratch);
  if (!err.empty()) {
    return InvalidArgument(err);
  }
  PushTable(L, el);
  return {};
}

namespace {


// Is the number token out of the range simdjson parses (so it reports NUMBER_ERROR)?
bool OutOfRange(std::string_view tok, bool integer) {
  if (integer) {
    bool neg = !tok.empty() && tok[0] == '-';
    std::string_view digits = neg ? tok.substr(1) : tok;
    std::string_view max = neg ? "9223372036854775808" : "18446744073709551615";
    return digits.size() > max.size() || (digits.size() == max.size() && digits > max);
  }
  std::string copy(tok);
  return std::isinf(std::strtod(copy.c_str(), nullptr));
}

// `text` with every out-of-range number token put in quotes; false if there is none.
bool QuoteOutOfRangeNumbers(std::string_view text, std::string& out) {
  out.clear();
  out.reserve(text.size() + 16);
  bool changed = false, in_string = false;
  size_t n = text.size();
  auto digit = [&](size_t j) { return j < n && text[j] >= '0' && text[j] <= '9'; };
  for (size_t i = 0; i < n;) {
    char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < n) {
        out += text[i + 1];
        i += 2;
        continue;
      }
      in_string = c != '"';
      ++i;
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      ++i;
      continue;
    }
    if (c != '-' && !digit(i)) {
      out += c;
      ++i;
      continue;
    }
    size_t j = i + (c == '-' ? 1 : 0);
    bool integer = true;
    while (digit(j)) {
      ++j;
    }
    if (j < n && text[j] == '.') {
      integer = false;
      for (++j; digit(j); ++j) {
      }
    }
    if (j < n && (text[j] == 'e' || text[j] == 'E')) {
      integer = false;
      ++j;
      if (j < n && (text[j] == '+' || text[j] == '-')) {
        ++j;
      }
      while (digit(j)) {
        ++j;
      }
    }
    std::string_view tok = text.substr(i, j - i);
    if (OutOfRange(tok, integer)) {
      out += '"';
      out += tok;
      out += '"';
      changed = true;
    } else {
      out += tok;
    }
    i = j;
  }
  return changed;
}

// Equal keys have equal fingerprints (length, first and last 8 bytes); keys are compared in
// full only when fingerprints match, so most objects cost a few integer operations per key.
// Keys live in simdjson's string buffer, which is padded well past its last string: reading 8
// bytes from a key's start stays inside it (the bytes past the key are masked off).
inline uint64_t KeyFingerprint(std::string_view k) {
  static constexpr uint64_t kKeep[9] = {0,           0xff,         0xffff,         0xffffff,
                                        0xffffffff,  0xffffffffff, 0xffffffffffff, 0xffffffffffffff,
                                        ~uint64_t{0}};
  uint64_t head;
  std::memcpy(&head, k.data(), 8);
  size_t n = k.size();
  head &= kKeep[n < 8 ? n : 8];  // the key's own bytes only
  uint64_t tail = 0;
  if (n > 8) {
    std::memcpy(&tail, k.data() + n - 8, 8);
  }
  return (head * 0x9E3779B97F4A7C15ULL) ^ ((tail + n) * 0xC2B2AE3D27D4EB4FULL);
}

}  // namespace

bool FindDuplicateKey(simdjson::dom::element el, std::string& where) {
  using T = simdjson::dom::element_type;
  if (el.type() == T::ARRAY) {
    size_t i = 0;
    for (simdjson::dom::element item : simdjson::dom::array(el)) {
      T t = item.type();
      if ((t == T::OBJECT || t == T::ARRAY) && FindDuplicateKey(item, where)) {
        where = fmt::format("[{}]{}", i, where);
        return true;
      }
      ++i;
    }
    return false;
  }
  simdjson::dom::object o(el);
  constexpr size_t kInline = 32;
  uint64_t fps[kInline];  // fingerprints of the first kInline keys, in order
  size_t n = 0;
  uint64_t seen = 0;
  std::vector<std::pair<uint64_t, std::string_view>> more;  // every key, past kInline
  for (auto field : o) {
    T t = field.value.type();
    if ((t == T::OBJECT || t == T::ARRAY) && FindDuplicateKey(field.value, where)) {
      where = fmt::format(".{}{}", field.key.substr(0, 64), where);
      return true;
    }
    uint64_t fp = KeyFingerprint(field.key);
    if (n < kInline) {
      // A one-word filter over the fingerprints seen: a key whose bit is clear cannot equal
      // one before it, and most keys skip the comparisons below.
      uint64_t bit = uint64_t{1} << (fp >> 58);
      if ((seen & bit) == 0) {
        seen |= bit;
        fps[n++] = fp;
        continue;
      }
      for (size_t b = 0; b < n; ++b) {
        if (fps[b] == fp) {
          // Same fingerprint: find that key and compare in full.
          size_t i = 0;
          for (auto other : o) {
            if (i++ == b) {
              if (other.key == field.key) {
                where = fmt::format("\"{}\"", field.key.substr(0, 64));
                return true;
              }
              break;
            }
          }
        }
      }
      fps[n++] = fp;
      continue;
    }
    if (more.empty()) {
      size_t i = 0;
      for (auto other : o) {
        if (i == kInline) {
          break;
        }
        more.emplace_back(fps[i++], other.key);
      }
    }
    more.emplace_back(fp, field.key);
    ++n;
  }
  if (more.empty()) {
    return false;
  }
  std::sort(more.begin(), more.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < more.size(); ++i) {
    for (size_t j = i; j-- > 0 && more[j].first == more[i].first;) {
      if (more[j].second == more[i].second) {
        where = fmt::format("\"{}\"", more[i].second.substr(0, 64));
        return true;
      }
    }
  }
  return false;
}

namespace {

// One pass over simdjson's tape (its doc/tape.md): one 64-bit word per node, the type character
// in the top byte. '{' and '[' open a container and '}' and ']' close it; a '"' word holds the
// offset of a string in the string buffer (a 4-byte length, then the bytes); 'l', 'u' and 'd'
// are followed by a second word holding the number; 't', 'f' and 'n' are one word. Inside an
// object, nodes alternate key, value. Word 0 is the root and holds the index past the end.
class TapeKeyScan {
 public:
  explicit TapeKeyScan(const simdjson::dom::document& doc)
      : tape_(doc.tape.get()), strings_(doc.string_buf.get()) {}

  KeyScan Run() {
    size_t i = Value(1, 0);
    return i == kDuplicate ? KeyScan::kDuplicate
           : i == kUnknown ? KeyScan::kUnknown
                           : KeyScan::kUnique;
  }

 private:
  static constexpr uint64_t kValueMask = 0x00ffffffffffffffULL;
  static constexpr size_t kMaxDepth = 32;  // open containers
  static constexpr size_t kMaxKeys = 128;  // keys of the open objects, together
  static constexpr size_t kDuplicate = SIZE_MAX;
  static constexpr size_t kUnknown = SIZE_MAX - 1;

  // The value at `i`; returns the index past it, or kDuplicate / kUnknown.
  size_t Value(size_t i, size_t depth) {
    switch (static_cast<char>(tape_[i] >> 56)) {
      case 'l':
      case 'u':
      case 'd':
        return i + 2;
      case '{':
        return depth == kMaxDepth ? kUnknown : Object(i + 1, depth + 1);
      case '[':
        return depth == kMaxDepth ? kUnknown : Array(i + 1, depth + 1);
      default:  // a string, true, false, null
        return i + 1;
    }
  }

  // The value at `i`, of type `type`, without a call for scalars (most of a payload).
  size_t Next(size_t i, char type, size_t depth) {
    if (type == '{' || type == '[') {
      return Value(i, depth);
    }
    return i + (type == 'l' || type == 'u' || type == 'd' ? 2 : 1);
  }

  size_t Array(size_t i, size_t depth) {
    for (;;) {
      char type = static_cast<char>(tape_[i] >> 56);
      if (type == ']') {
        return i + 1;
      }
      i = Next(i, type, depth);
      if (i >= kUnknown) {
        return i;
      }
    }
  }

  // Keys are told apart by their length and first 8 bytes (`head`), and compared in full only
  // when those match; a one-word filter over `head` skips the comparisons for most keys.
  size_t Object(size_t i, size_t depth) {
    static constexpr uint64_t kKeep[9] = {
        0,           0xff,         0xffff,         0xffffff,
        0xffffffff,  0xffffffffff, 0xffffffffffff, 0xffffffffffffff,
        ~uint64_t{0}};
    size_t first = keys_;
    uint64_t seen = 0;
    for (;;) {
      uint64_t word = tape_[i];
      if (static_cast<char>(word >> 56) == '}') {
        keys_ = first;
        return i + 1;
      }
      const uint8_t* at = strings_ + (word & kValueMask);
      uint32_t len;
      std::memcpy(&len, at, sizeof(len));
      uint64_t head;
      std::memcpy(&head, at + sizeof(len), sizeof(head));  // the buffer is padded past its end
      head = (head & kKeep[len < 8 ? len : 8]) ^ (uint64_t{len} << 59);
      uint64_t bit = uint64_t{1} << ((head * 0x9E3779B97F4A7C15ULL) >> 58);
      if ((seen & bit) != 0) {
        for (size_t k = first; k < keys_; ++k) {
          // In full every time: keys of different lengths can share a head (the length is
          // folded into its top bits, over the 8th byte of a longer key).
          if (heads_[k] == head && Name(names_[k]) == Name(at)) {
            return kDuplicate;
          }
        }
      }
      if (keys_ == kMaxKeys) {
        return kUnknown;
      }
      seen |= bit;
      heads_[keys_] = head;
      names_[keys_++] = at;
      ++i;
      i = Next(i, static_cast<char>(tape_[i] >> 56), depth);
      if (i >= kUnknown) {
        return i;
      }
    }
  }

  static std::string_view Name(const uint8_t* at) {
    uint32_t len;
    std::memcpy(&len, at, sizeof(len));
    return {reinterpret_cast<const char*>(at + sizeof(len)), len};
  }

  const uint64_t* tape_;
  const uint8_t* strings_;
  uint64_t heads_[kMaxKeys];
  const uint8_t* names_[kMaxKeys];
  size_t keys_ = 0;
};

}  // namespace

KeyScan ScanTapeForDuplicateKeys(const simdjson::dom::document& doc) {
  return TapeKeyScan(doc).Run();
}

std::string ParseRuleJson(simdjson::dom::parser& parser, const char* data, size_t len, bool padded,
                          simdjson::dom::element& out, std::string& scratch,
                          bool refuse_duplicates, bool* rewritten) {
  auto err = parser.parse(data, len, !padded).get(out);
  if (rewritten != nullptr) {
    *rewritten = false;
  }
  if (err == simdjson::NUMBER_ERROR && QuoteOutOfRangeNumbers({data, len}, scratch)) {
    err = parser.parse(scratch).get(out);  // big numbers as exact strings
    if (rewritten != nullptr) {
      *rewritten = true;
    }
  }
  if (err != simdjson::SUCCESS) {
    return len == 0 ? std::string("empty payload")
                    : fmt::format("invalid JSON: {}", simdjson::error_message(err));
  }
  if (!refuse_duplicates) {
    return {};
  }
  std::string where;
  simdjson::dom::element_type t = out.type();
  // The tape scan settles almost every payload; the DOM walk names the key, and decides the
  // documents past the scan's fixed bounds.
  if ((t == simdjson::dom::element_type::OBJECT || t == simdjson::dom::element_type::ARRAY) &&
      ScanTapeForDuplicateKeys(parser.doc) != KeyScan::kUnique && FindDuplicateKey(out, where)) {
    size_t q = where.find('"');
    std::string path = where.substr(0, q);
    return fmt::format("invalid JSON: duplicate key {} in the object at ${}", where.substr(q),
                       path);
  }
  return {};
}

namespace {
// json.totable(v): a deep copy of a view as tables; other values unchanged.
Result<int> JsonToTable(lua_State* L) {
  View* view = ToView(L, 1, Ctx(L));
  if (view == nullptr) {
    lua_settop(L, 1);
    return 1;
  }
  GNOMON_ASSIGN_OR_RETURN(View * v, Live(view, Ctx(L)));
  GNOMON_RETURN_IF_ERROR(CheckNoDuplicates(Ctx(L), v->el).WithContext("json.totable"));
  PushTable(L, v->el);
  return 1;
}

// json.pairs over a view walks the document in place: the state is this cursor (one small
// userdata), not a table of every field copied out of the view. Fields come in the document's
// order; an array gives its 1-based index and item.
struct PairsCursor {
  const void* tag;  // &kCursorTag: what tells a cursor from any other userdata
  uint64_t generation;
  bool array;
  lua_Integer index;  // items of an array handed out so far
  simdjson::dom::object::iterator field, fields_end;
  simdjson::dom::array::iterator item, items_end;
};
static_assert(std::is_trivially_destructible_v<PairsCursor>);
constexpr char kCursorTag = 0;

// The iterator json.pairs returns for a view: (cursor, _) → key, value, or nothing at the end.
Result<int> JsonPairsNext(lua_State* L) {
  JsonContext* ctx = Ctx(L);
  // Read as a cursor only what is one: a userdata of its size that starts with its tag (a
  // rule cannot write a userdata's bytes, so only json.pairs makes one).
  if (lua_type(L, 1) != LUA_TUSERDATA || lua_objlen(L, 1) != sizeof(PairsCursor) ||
      static_cast<PairsCursor*>(lua_touserdata(L, 1))->tag != &kCursorTag) {
    return InvalidArgument("json.pairs: the iterator was given something other than its state");
  }
  auto* c = static_cast<PairsCursor*>(lua_touserdata(L, 1));
  if (c->generation != ctx->generation) {
    return DeadViewError();
  }
  if (c->array) {
    if (c->item == c->items_end) {
      return 0;
    }
    lua_pushinteger(L, ++c->index);
    PushElement(L, ctx, *c->item);
    ++c->item;
    return 2;
  }
  if (c->field == c->fields_end) {
    return 0;
  }
  std::string_view key = c->field.key();
  lua_pushlstring(L, key.data(), key.size());
  PushElement(L, ctx, c->field.value());
  ++c->field;
  return 2;
}

// json.pairs(v): iterate a view (object fields or array items) or a table.
Result<int> JsonPairs(lua_State* L) {
  if (View* view = ToView(L, 1, Ctx(L)); view != nullptr) {
    JsonContext* ctx = Ctx(L);
    GNOMON_ASSIGN_OR_RETURN(View * v, Live(view, ctx));
    lua_pushvalue(L, lua_upvalueindex(2));  // JsonPairsNext
    auto* c = new (lua_newuserdata(L, sizeof(PairsCursor))) PairsCursor{};
    c->tag = &kCursorTag;
    c->generation = ctx->generation;
    if (v->el.is_array()) {
      simdjson::dom::array items(v->el);
      c->array = true;
      c->item = items.begin();
      c->items_end = items.end();
    } else {
      simdjson::dom::object fields(v->el);
      GNOMON_RETURN_IF_ERROR(CheckObjectKeys(ctx, fields, v->el).WithContext("json.pairs"));
      c->field = fields.begin();
      c->fields_end = fields.end();
    }
    lua_pushnil(L);
    return 3;
  }
  if (lua_type(L, 1) != LUA_TTABLE) {
    return InvalidArgument("json.pairs: expected a table or a JSON view");
  }
  lua_getglobal(L, "next");
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

// json.array(t): marks t as an array so `{}` encodes as `[]`.
Result<int> JsonArray(lua_State* L) {
  if (lua_isnoneornil(L, 1)) {
    lua_newtable(L);
  } else if (lua_type(L, 1) != LUA_TTABLE) {
    return InvalidArgument("json.array: expected a table");
  }
  luaL_getmetatable(L, kArrayMeta);
  lua_setmetatable(L, -2);
  return 1;
}

// Is the table at `idx` a sequence 1..n with n > 0 and no other keys?
bool IsSequence(lua_State* L, int idx, size_t& n) {
  n = lua_objlen(L, idx);
  if (n == 0) {
    return false;
  }
  size_t count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    ++count;
    if (count > n) {
      lua_pop(L, 1);
      return false;
    }
  }
  return count == n;
}

// Where the encoder is, for error messages only: built into text only when an error happens.
struct PathSegment {
  std::string_view key;  // empty: an array index
  size_t index = 0;
};
using Path = std::vector<PathSegment>;

std::string PathText(const std::string& root, const Path& path) {
  std::string s = root;
  for (const auto& seg : path) {
    if (seg.key.data() != nullptr) {
      s += '.';
      s += seg.key;
    } else {
      s += fmt::format("[{}]", seg.index);
    }
  }
  return s;
}

// ASCII is valid UTF-8; most record strings are ASCII, so check that first, 8 bytes at a time.
bool IsValidUtf8Fast(std::string_view s) {
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    if (w & 0x8080808080808080ULL) {
      return json::IsValidUtf8(s);
    }
  }
  for (; i < s.size(); ++i) {
    if (static_cast<unsigned char>(s[i]) & 0x80) {
      return json::IsValidUtf8(s);
    }
  }
  return true;
}

struct Encoder {
  lua_State* L;
  JsonContext* ctx;
  std::string& out;
  const std::string& root;
  Path path;

  Status Error(std::string_view what) {
    return InvalidArgument(fmt::format("{}: {}", PathText(root, path), what));
  }

  Status Table(int idx, int depth) {
    bool marked_array = false;
    if (lua_getmetatable(L, idx)) {
      luaL_getmetatable(L, kArrayMeta);
      marked_array = lua_rawequal(L, -1, -2);
      lua_pop(L, 2);
    }
    size_t n = 0;
    if (marked_array || IsSequence(L, idx, n)) {
      n = lua_objlen(L, idx);
      out += '[';
      for (size_t i = 1; i <= n; ++i) {
        if (i > 1) {
          out += ',';
        }
        lua_rawgeti(L, idx, static_cast<int>(i));
        path.push_back({{}, i});
        Status st = Value(lua_gettop(L), depth + 1);
        path.pop_back();
        lua_pop(L, 1);
        GNOMON_RETURN_IF_ERROR(st);
      }
      out += ']';
      return {};
    }
    out += '{';
    bool first = true;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
      std::string_view key;
      std::string numeric_key;
      if (lua_type(L, -2) == LUA_TSTRING) {
        size_t len = 0;
        const char* k = lua_tolstring(L, -2, &len);
        key = std::string_view(k, len);
      } else if (lua_type(L, -2) == LUA_TNUMBER) {
        json::AppendNumber(numeric_key, lua_tonumber(L, -2));
        key = numeric_key;
      } else {
        Status st = Error(fmt::format("cannot encode a {} key", lua_typename(L, lua_type(L, -2))));
        lua_pop(L, 2);
        return st;
      }
      if (!IsValidUtf8Fast(key)) {
        Status st = Error("key is not valid UTF-8");
        lua_pop(L, 2);
        return st;
      }
      if (!first) {
        out += ',';
      }
      first = false;
      json::AppendQuoted(out, key);
      out += ':';
      path.push_back({key.data() != nullptr ? key : std::string_view(""), 0});
      Status st = Value(lua_gettop(L), depth + 1);
      path.pop_back();
      lua_pop(L, 1);
      if (!st.ok()) {
        lua_pop(L, 1);
        return st;
      }
    }
    out += '}';
    return {};
  }

  Status Value(int idx, int depth) {
    if (depth > kMaxEncodeDepth) {
      return Error(fmt::format("nested deeper than {} levels (a cycle?)", kMaxEncodeDepth));
    }
    if (!lua_checkstack(L, 4)) {
      return ResourceExhausted(PathText(root, path) + ": Lua stack exhausted");
    }
    switch (lua_type(L, idx)) {
      case LUA_TNIL: out += "null"; return {};
      case LUA_TBOOLEAN: out += lua_toboolean(L, idx) ? "true" : "false"; return {};
      case LUA_TNUMBER: {
        double d = lua_tonumber(L, idx);
        if (!std::isfinite(d)) {
          return Error(fmt::format("cannot encode {} (not finite)", d));
        }
        json::AppendNumber(out, d);
        return {};
      }
      case LUA_TSTRING: {
        size_t len = 0;
        const char* s = lua_tolstring(L, idx, &len);
        std::string_view sv(s, len);
        if (!IsValidUtf8Fast(sv)) {
          return Error("string is not valid UTF-8");
        }
        json::AppendQuoted(out, sv);
        return {};
      }
      case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == nullptr) {
          out += "null";
          return {};
        }
        break;
      case LUA_TUSERDATA: {
        if (View* view = ToView(L, idx, ctx); view != nullptr) {
          GNOMON_ASSIGN_OR_RETURN(View * v, Live(view, ctx));
          if (Status s = CheckNoDuplicates(ctx, v->el); !s.ok()) {
            return Error(s.message());
          }
          out += simdjson::minify(v->el);
          return {};
        }
        break;
      }
      case LUA_TTABLE: return Table(idx, depth);
      default: break;
    }
    return Error(fmt::format("cannot encode a {}", lua_typename(L, lua_type(L, idx))));
  }
};

void PushClosure(lua_State* L, JsonContext* ctx, lua_CFunction f) {
  lua_pushlightuserdata(L, ctx);
  lua_pushcclosure(L, f, 1);
}

}  // namespace

void PushElement(lua_State* L, JsonContext* ctx, simdjson::dom::element el) {
  if (el.is_object() || el.is_array()) {
    void* mem = lua_newuserdata(L, sizeof(View));
    new (mem) View{ctx->generation, el};
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->view_meta_ref);
    lua_setmetatable(L, -2);
    return;
  }
  PushScalar(L, el);
}

void PushPayload(lua_State* L, JsonContext* ctx, const simdjson::dom::document& doc,
                 simdjson::dom::element root, std::string_view text) {
  ctx->payload_doc = &doc;
  ctx->payload_root = root;
  ctx->payload_duplicates = -1;
  ctx->payload_text = text;
  PushElement(L, ctx, root);
}

JsonViewKind ViewKindAt(lua_State* L, int idx, JsonContext* ctx) {
  View* v = ToView(L, idx, ctx);
  if (v == nullptr) {
    return JsonViewKind::kNone;
  }
  if (v->generation != ctx->generation) {
    return JsonViewKind::kDead;
  }
  return v->el.is_object() ? JsonViewKind::kObject : JsonViewKind::kArray;
}

Status EncodeValue(lua_State* L, int idx, JsonContext* ctx, std::string& out,
                   const std::string& path, bool as_received) {
  if (idx < 0) {
    idx = lua_gettop(L) + idx + 1;
  }
  if (as_received && !ctx->payload_text.empty()) {
    if (View* view = ToView(L, idx, ctx);
        view != nullptr && view->generation == ctx->generation &&
        SameElement(view->el, ctx->payload_root)) {
      GNOMON_RETURN_IF_ERROR(CheckNoDuplicates(ctx, view->el).WithContext(path));
      out.append(ctx->payload_text);
      return {};
    }
  }
  Encoder e{L, ctx, out, path, {}};
  return e.Value(idx, 0);
}

void OpenJson(lua_State* L, JsonContext* ctx) {
  luaL_newmetatable(L, kViewMeta);
  PushClosure(L, ctx, LuaThunk<ViewIndex>);
  lua_setfield(L, -2, "__index");
  PushClosure(L, ctx, LuaThunk<ViewLen>);
  lua_setfield(L, -2, "__len");
  PushClosure(L, ctx, LuaThunk<ViewToString>);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "json view");
  lua_setfield(L, -2, "__metatable");
  ctx->view_meta = lua_topointer(L, -1);
  ctx->view_meta_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  luaL_newmetatable(L, kArrayMeta);
  lua_pushliteral(L, "array");
  lua_setfield(L, -2, "__jsontype");
  lua_pushliteral(L, "json array");  // frozen: getmetatable gives this text, setmetatable fails
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);

  lua_createtable(L, 0, 8);
  PushClosure(L, ctx, LuaThunk<JsonEncode>);
  lua_setfield(L, -2, "encode");
  PushClosure(L, ctx, LuaThunk<JsonDecode>);
  lua_setfield(L, -2, "decode");
  PushClosure(L, ctx, LuaThunk<JsonToTable>);
  lua_setfield(L, -2, "totable");
  lua_pushlightuserdata(L, ctx);
  PushClosure(L, ctx, LuaThunk<JsonPairsNext>);
  lua_pushcclosure(L, LuaThunk<JsonPairs>, 2);
  lua_setfield(L, -2, "pairs");
  PushClosure(L, ctx, LuaThunk<JsonArray>);
  lua_setfield(L, -2, "array");
  lua_pushlightuserdata(L, nullptr);
  lua_setfield(L, -2, "null");
}

}  // namespace gnomon::rules

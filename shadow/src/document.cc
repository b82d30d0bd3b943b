// SPDX-License-Identifier: Apache-2.0
#include "gnomon/shadow/document.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <optional>
#include <tuple>
#include <unordered_set>

#include "gnomon/core/json.h"

namespace gnomon::shadow {
namespace {

ShadowError Error(int code, std::string error, std::string message, const std::string& token) {
  ShadowError e;
  e.code = code;
  e.error = std::move(error);
  e.message = std::move(message);
  e.client_token = token;
  return e;
}

// A section's metadata: {"timestamp": t} per leaf (a leaf is anything but a non-empty object),
// mirroring the value's object structure. t is the leaf's stamp, or `fixed` when >= 0.
void AppendMeta(const Value& v, std::string& out, int64_t fixed = -1) {
  if (v.is_object() && !v.members().empty()) {
    char sep = '{';
    for (const auto& [k, child] : v.members()) {
      out += sep;
      sep = ',';
      json::AppendQuoted(out, k);
      out += ':';
      AppendMeta(child, out, fixed);
    }
    out += '}';
    return;
  }
  out += "{\"timestamp\":";
  json::AppendInt(out, fixed >= 0 ? fixed : v.stamp());
  out += '}';
}

// Reads the leaves' stamps of `v` from its parsed metadata; `fallback` where it has none.
void LoadStamps(Value& v, const Value* meta, int64_t fallback) {
  if (v.is_object() && !v.members().empty()) {
    // The metadata's members are in the state's order when gnomon wrote both: each is looked
    // for where the order says first (a search per member made restoring large documents
    // quadratic in their size).
    const std::vector<Value::Member>* in_order =
        meta != nullptr && meta->is_object() ? &meta->members() : nullptr;
    size_t i = 0;
    for (auto& [k, child] : v.members()) {
      const Value* m = nullptr;
      if (in_order != nullptr && i < in_order->size() && (*in_order)[i].first == k) {
        m = &(*in_order)[i].second;
      } else if (meta != nullptr) {
        m = meta->Find(k);
      }
      ++i;
      LoadStamps(child, m, fallback);
    }
    return;
  }
  const Value* ts = meta != nullptr ? meta->Find("timestamp") : nullptr;
  v.set_stamp(ts != nullptr && ts->kind() == Value::Kind::kInt ? ts->as_int() : fallback);
}

void StampAll(Value& v, int64_t t) {
  v.set_stamp(t);
  if (v.is_object()) {
    for (auto& [k, child] : v.members()) {
      StampAll(child, t);
    }
  }
}

// RFC 7396: nulls inside a value that replaces wholesale are removed.
void StripNulls(Value& v) {
  if (!v.is_object()) {
    return;
  }
  auto& m = v.members();
  m.erase(std::remove_if(m.begin(), m.end(), [](const Value::Member& e) { return e.second.is_null(); }),
          m.end());
  for (auto& [k, child] : m) {
    StripNulls(child);
  }
}

// Whether merging `patch` into object `target` (RFC 7396) would change its value.
bool WouldChange(const Value& target, const Value& patch) {
  for (const auto& [k, pv] : patch.members()) {
    const Value* tv = target.Find(k);
    if (pv.is_null()) {
      if (tv != nullptr) {
        return true;
      }
    } else if (pv.is_object() && tv != nullptr && tv->is_object()) {
      if (WouldChange(*tv, pv)) {
        return true;
      }
    } else {
      if (tv == nullptr) {
        return true;
      }
      Value nv = pv;
      StripNulls(nv);
      if (!(*tv == nv)) {
        return true;
      }
    }
  }
  return false;
}

// RFC 6901: "~" → "~0", "/" → "~1".
void AppendPointerToken(std::string& path, std::string_view key) {
  path += '/';
  for (char c : key) {
    if (c == '~') {
      path += "~0";
    } else if (c == '/') {
      path += "~1";
    } else {
      path += c;
    }
  }
}

void AppendOp(std::string& ops, std::string_view op, const std::string& path, const Value* value) {
  ops += ops.size() > 1 ? ",{\"op\":" : "{\"op\":";
  json::AppendQuoted(ops, op);
  ops += ",\"path\":";
  json::AppendQuoted(ops, path);
  if (value != nullptr) {
    ops += ",\"value\":";
    value->AppendJson(ops);
  }
  ops += '}';
}

void Merge(Value& target, Value& patch, int64_t t, std::string& path, std::string& ops);

enum class Merged { kNothing, kErased, kChanged, kAppended };

// One member (`key`, `pv`) of a merge patch into object `target` (see Merge). `*at` is the
// member's index in `target` (before an erase; the new last one for an append).
Merged MergeMember(Value& target, std::string& key, Value& pv, int64_t t, std::string& path,
                   std::string& ops, size_t* at) {
  auto& members = target.members();
  size_t i = 0;
  while (i < members.size() && members[i].first != key) {
    ++i;
  }
  *at = i;
  Value* tv = i < members.size() ? &members[i].second : nullptr;
  size_t len = path.size();
  AppendPointerToken(path, key);
  Merged what = Merged::kChanged;
  if (pv.is_null()) {
    what = Merged::kNothing;
    if (tv != nullptr) {
      members.erase(members.begin() + static_cast<std::ptrdiff_t>(i));
      AppendOp(ops, "remove", path, nullptr);
      what = Merged::kErased;
    }
  } else if (pv.is_object() && tv != nullptr && tv->is_object()) {
    Merge(*tv, pv, t, path, ops);
    if (tv->members().empty()) {
      tv->set_stamp(t);  // emptied, or {} written: a leaf
    }
  } else {
    StripNulls(pv);
    StampAll(pv, t);
    if (tv == nullptr) {
      AppendOp(ops, "add", path, &pv);
      members.emplace_back(std::move(key), std::move(pv));
      what = Merged::kAppended;
    } else {
      if (!(*tv == pv)) {
        AppendOp(ops, "replace", path, &pv);
      }
      *tv = std::move(pv);
    }
  }
  path.resize(len);
  return what;
}

// JSON Merge Patch (RFC 7396) of `patch` into object `target`, in place: objects merge
// recursively (an empty one into an object changes nothing), the patch's other values are moved
// in, and the leaves written are stamped `t`. Appends the change as RFC 6902 operations at
// `path` to `ops`: one per member the patch changes, in the patch's order.
void Merge(Value& target, Value& patch, int64_t t, std::string& path, std::string& ops) {
  size_t at;
  for (auto& [k, pv] : patch.members()) {
    MergeMember(target, k, pv, t, path, ops, &at);
  }
}

// "key":value and "key":metadata of one section member.
void SerializeMember(const Value::Member& m, std::string& json, std::string& meta) {
  json.clear();
  json::AppendQuoted(json, m.first);
  json += ':';
  meta.assign(json);  // the quoted key, escaped once
  m.second.AppendJson(json);
  AppendMeta(m.second, meta);
}

// {part,part,...}
void JoinParts(const std::vector<std::string>& parts, std::string& out) {
  size_t bytes = 2 + parts.size();
  for (const std::string& p : parts) {
    bytes += p.size();
  }
  out.clear();
  out.reserve(bytes);
  out += '{';
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) {
      out += ',';
    }
    out += parts[i];
  }
  out += '}';
}

bool KeysValid(const Value& v, std::string& bad) {
  if (v.is_object()) {
    for (const auto& [k, child] : v.members()) {
      if (k.empty() || k.size() > 128 || k[0] == '$') {
        bad = k;
        return false;
      }
      if (!KeysValid(child, bad)) {
        return false;
      }
    }
  } else if (v.is_array()) {
    for (const auto& item : v.items()) {
      if (!KeysValid(item, bad)) {
        return false;
      }
    }
  }
  return true;
}

bool HasArrayNull(const Value& v, bool in_array) {
  if (v.is_null()) {
    return in_array;
  }
  if (v.is_object()) {
    for (const auto& [k, child] : v.members()) {
      if (HasArrayNull(child, false)) {
        return true;
      }
    }
  } else if (v.is_array()) {
    for (const auto& item : v.items()) {
      if (HasArrayNull(item, true)) {
        return true;
      }
    }
  }
  return false;
}

// What an idempotency key remembers of its request's body: 64-bit FNV-1a, in hex. A body that
// collides with another under the same key gets the first answer instead of 409; only the
// client that chose both bodies and the key is affected.
std::string RequestDigest(std::string_view body) {
  uint64_t h = 14695981039346656037ULL;
  for (unsigned char c : body) {
    h = (h ^ c) * 1099511628211ULL;
  }
  return fmt::format("{:016x}", h);
}

void AppendToken(json::ObjectWriter& w, const std::string& token) {
  if (!token.empty()) {
    w.Field("clientToken", token);
  }
}

// Whether JSON text nests objects and arrays more than `levels` deep (strings skipped). Only
// for text the parser refused, to tell "too deep" from "not JSON".
bool DeeperThan(std::string_view json, int levels) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > levels) {
        return true;
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return false;
}

}  // namespace

std::string ShadowError::Json(int64_t timestamp_s) const {
  std::string out;
  json::ObjectWriter w(out);
  w.Field("code", code).Field("error", error).Field("message", message);
  if (!details.empty()) {
    w.FieldRaw("details", details);
  }
  w.Field("timestamp", timestamp_s);
  AppendToken(w, client_token);
  w.Close();
  return out;
}

bool ValidShadowId(std::string_view id, size_t max_bytes) {
  if (id.empty() || id.size() > max_bytes) {
    return false;
  }
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == ':' || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

Value ComputeDelta(const Value& desired, const Value& reported) {
  Value out = Value::Object();
  if (!desired.is_object()) {
    return out;
  }
  for (const auto& [k, dv] : desired.members()) {
    const Value* rv = reported.is_object() ? reported.Find(k) : nullptr;
    if (rv == nullptr) {
      out.Set(k, dv);
    } else if (dv.is_object() && rv->is_object()) {
      Value sub = ComputeDelta(dv, *rv);
      if (!sub.members().empty()) {
        out.Set(k, std::move(sub));
      }
    } else if (!(dv == *rv)) {
      out.Set(k, dv);
    }
  }
  return out;
}

void ShadowDocument::RebuildDocumentJson() {
  std::string& out = doc_json_;
  out.clear();
  out.reserve(desired_json_.size() + reported_json_.size() + meta_desired_json_.size() +
              meta_reported_json_.size() + 96);
  auto pair = [&](const std::string& d, const std::string& r) {
    if (!d.empty()) {
      out += "\"desired\":";
      out += d;
    }
    if (!r.empty()) {
      out += d.empty() ? "\"reported\":" : ",\"reported\":";
      out += r;
    }
  };
  out += "{\"state\":{";
  pair(desired_json_, reported_json_);
  out += "},\"metadata\":{";
  pair(meta_desired_json_, meta_reported_json_);
  bool more = !meta_desired_json_.empty() || !meta_reported_json_.empty();
  auto member = [&](std::string_view key) {
    out += more ? ",\"" : "\"";
    out += key;
    out += "\":";
    more = true;
  };
  if (presence_ >= 0) {
    member("connected");
    out += presence_ == 1 ? "true" : "false";
    member("lastSeen");
    json::AppendInt(out, last_seen_ms_);
  }
  if (!model_.empty()) {
    member("model");
    json::AppendQuoted(out, model_);
  }
  out += "},\"version\":";
  json::AppendInt(out, version_);
  out += ",\"timestamp\":";
  json::AppendInt(out, timestamp_s_);
  out += '}';
}

std::string ShadowDocument::DocumentJson() const { return doc_json_; }

void ShadowDocument::Parts::Rebuild(const Value& section, std::string& section_json,
                                    std::string& section_meta) {
  json.resize(section.is_object() ? section.members().size() : 0);
  meta.resize(json.size());
  for (size_t i = 0; i < json.size(); ++i) {
    SerializeMember(section.members()[i], json[i], meta[i]);
  }
  section_json.clear();
  section_meta.clear();
  if (section.is_object()) {
    JoinParts(json, section_json);
    JoinParts(meta, section_meta);
  }
}

void ShadowDocument::RestoreSections() {
  auto load = [&](const std::string& json, const std::string& meta_json, Value& value) {
    if (json.empty()) {
      value = Value();
      return;
    }
    auto v = Value::Parse(json);  // the section's own serialization: it parses
    auto m = Value::Parse(meta_json);
    GNOMON_DCHECK(v.ok() && m.ok());
    value = v.ok() ? std::move(*v) : Value();
    LoadStamps(value, m.ok() ? &*m : nullptr, timestamp_s_);
  };
  load(desired_json_, meta_desired_json_, desired_);
  load(reported_json_, meta_reported_json_, reported_);
  SectionsLoaded();
}

void ShadowDocument::SectionsLoaded() {
  desired_parts_.Rebuild(desired_, desired_json_, meta_desired_json_);
  reported_parts_.Rebuild(reported_, reported_json_, meta_reported_json_);
  delta_ = ComputeDelta(desired_, reported_);
}

void ShadowDocument::SetModel(const std::string& model_ref) {
  if (model_ref == model_) {
    return;  // the usual case: no copy, no rebuild
  }
  model_ = model_ref;
  if (exists_) {
    RebuildDocumentJson();
  }
}

void ShadowDocument::SetPresence(bool connected, int64_t at_ms) {
  presence_ = connected ? 1 : 0;
  last_seen_ms_ = at_ms;
  if (exists_) {
    RebuildDocumentJson();
  }
}

std::string ShadowDocument::StoredJson() const {
  std::string out;
  json::ObjectWriter w(out);
  w.Field("exists", exists_ ? 1 : 0)
      .Field("version", version_)
      .Field("timestamp", timestamp_s_)
      .Field("deleted_at", deleted_at_s_);
  auto section = [&](std::string_view key, const std::string& json) {
    if (!json.empty()) {
      w.FieldRaw(key, json);
    }
  };
  section("desired", desired_json_);
  section("reported", reported_json_);
  section("meta_desired", meta_desired_json_);
  section("meta_reported", meta_reported_json_);
  if (presence_ >= 0) {
    w.Field("connected", presence_).Field("last_seen", last_seen_ms_);
  }
  if (!model_.empty()) {
    w.Field("model", model_);
  }
  // (Stored forms written before clientTokens stopped deduplicating hold them as "tokens";
  // those are ignored when read back.)
  if (!idempotent_.empty()) {
    std::string keys = "[";
    for (const Idempotent& t : idempotent_) {
      if (keys.size() > 1) {
        keys += ',';
      }
      json::ObjectWriter tw(keys);
      tw.Field("key", t.key)
          .Field("digest", t.digest)
          .Field("response", t.response)
          .Field("at", t.at_s);
      tw.Close();
    }
    keys += ']';
    w.FieldRaw("idempotency", keys);
  }
  w.Close();
  return out;
}

Result<ShadowDocument> ShadowDocument::FromChangelog(std::string_view event, Limits limits) {
  GNOMON_ASSIGN_OR_RETURN(Value v, Value::Parse(event));
  Value* current = v.Find("current");
  if (current == nullptr) {
    return InvalidArgument("no \"current\" document");
  }
  return FromDocumentValue(std::move(*current), limits);
}

namespace {

namespace dom = simdjson::dom;
using T = dom::element_type;

// Keys of one object seen so far, to find one it holds twice (Value::Parse refuses such
// documents): a scan of the few for small objects, a set past 32 keys (a scan per key is
// quadratic).
class KeysSeen {
 public:
  explicit KeysSeen(size_t keys) : few_(keys <= kScanUpTo) {}
  // False when `key` was seen already (and then `duplicate` names it).
  bool Add(std::string_view key, std::string* duplicate) {
    bool twice = false;
    if (few_) {
      for (size_t i = 0; i < n_ && !twice; ++i) {
        twice = len_[i] == key.size() && std::memcmp(ptr_[i], key.data(), key.size()) == 0;
      }
      ptr_[n_] = key.data();
      len_[n_++] = key.size();
    } else {
      twice = !seen_.insert(key).second;
    }
    if (twice) {
      *duplicate = std::string(key.substr(0, 64));
    }
    return !twice;
  }

 private:
  static constexpr size_t kScanUpTo = 32;
  const bool few_;
  size_t n_ = 0;
  const char* ptr_[kScanUpTo];  // (not initialized: only the first n_ are read)
  size_t len_[kScanUpTo];
  std::unordered_set<std::string_view> seen_;
};

// Whether object `o` holds a key twice (its own keys; not its members' values).
bool KeyTwice(dom::object o, std::string* duplicate) {
  KeysSeen seen(o.size());
  for (auto f : o) {
    if (!seen.Add(f.key, duplicate)) {
      return true;
    }
  }
  return false;
}

// Appends `e` as JSON to `out` (as a Value parsed from it would write itself; with `out` null,
// nothing), or returns false with `duplicate` set when an object in it holds a key twice.
bool AppendChecked(dom::element e, std::string* out, std::string* duplicate) {
  switch (e.type()) {
    case T::OBJECT: {
      dom::object o(e);
      KeysSeen seen(o.size());
      if (out != nullptr) {
        *out += '{';
      }
      bool first = true;
      for (auto f : o) {
        if (!seen.Add(f.key, duplicate)) {
          return false;
        }
        if (out != nullptr) {
          if (!first) {
            *out += ',';
          }
          json::AppendQuoted(*out, f.key);
          *out += ':';
        }
        first = false;
        if (!AppendChecked(f.value, out, duplicate)) {
          return false;
        }
      }
      if (out != nullptr) {
        *out += '}';
      }
      return true;
    }
    case T::ARRAY: {
      if (out != nullptr) {
        *out += '[';
      }
      bool first = true;
      for (auto item : dom::array(e)) {
        if (out != nullptr && !first) {
          *out += ',';
        }
        first = false;
        if (!AppendChecked(item, out, duplicate)) {
          return false;
        }
      }
      if (out != nullptr) {
        *out += ']';
      }
      return true;
    }
    default:
      break;
  }
  if (out == nullptr) {
    return true;
  }
  switch (e.type()) {
    case T::INT64:
      json::AppendInt(*out, int64_t(e));
      break;
    case T::UINT64:
      json::AppendNumber(*out, static_cast<double>(uint64_t(e)));
      break;
    case T::DOUBLE: {
      // A whole double is written as an integer: kept a double here (".0"), since a
      // timestamp in the metadata counts only when it is an integer.
      size_t at = out->size();
      json::AppendNumber(*out, double(e));
      if (out->find_first_of(".eE", at) == std::string::npos) {
        *out += ".0";
      }
      break;
    }
    case T::STRING:
      json::AppendQuoted(*out, std::string_view(e));
      break;
    case T::BOOL:
      *out += bool(e) ? "true" : "false";
      break;
    default:
      *out += "null";
      break;
  }
  return true;
}

// The member `key` of `obj` when `obj` is an object holding it (of `type`, unless `any`).
std::optional<dom::element> Member(dom::element obj, std::string_view key, T type,
                                   bool any = false) {
  dom::element f;
  if (obj.type() != T::OBJECT || dom::object(obj).at_key(key).get(f) != simdjson::SUCCESS ||
      (!any && f.type() != type)) {
    return std::nullopt;
  }
  return f;
}

}  // namespace

Result<std::string> ShadowDocument::StoredFromChangelog(std::string_view event) {
  thread_local dom::parser parser;
  dom::element root;
  const char* data = event.data() != nullptr ? event.data() : "";
  if (auto err = parser.parse(data, event.size()).get(root); err != simdjson::SUCCESS) {
    return InvalidArgument(simdjson::error_message(err));
  }
  // Every object of the record is checked for keys held twice, as Value::Parse checks them;
  // the sections kept are checked as they are written.
  auto current = Member(root, "current", T::OBJECT, /*any=*/true);
  auto state = current ? Member(*current, "state", T::OBJECT) : std::nullopt;
  auto meta = current ? Member(*current, "metadata", T::OBJECT, /*any=*/true) : std::nullopt;
  if (meta && meta->type() != T::OBJECT) {
    meta.reset();
  }
  std::string sections[4];  // desired, reported, and their metadata
  bool kept[4] = {false, false, false, false};
  std::string duplicate;
  // Checks `obj`'s keys and its members' values, each member through `member` (which checks
  // it, and writes the ones kept into sections[]).
  auto check = [&](dom::element obj, auto&& member) -> bool {
    if (obj.type() != T::OBJECT) {
      return AppendChecked(obj, nullptr, &duplicate);
    }
    if (KeyTwice(dom::object(obj), &duplicate)) {
      return false;
    }
    for (auto f : dom::object(obj)) {
      if (!member(f.key, f.value)) {
        return false;
      }
    }
    return true;
  };
  auto only_check = [&](std::string_view, dom::element v) {
    return AppendChecked(v, nullptr, &duplicate);
  };
  // The desired or reported section (i: 0 or 1) or its metadata (2 or 3) kept.
  auto keep = [&](int i, dom::element v) {
    kept[i] = true;
    return AppendChecked(v, &sections[i], &duplicate);
  };
  bool ok = check(root, [&](std::string_view key, dom::element v) {
    if (key != "current") {
      return only_check(key, v);
    }
    return check(v, [&](std::string_view k, dom::element cv) {
      if (k == "state" && cv.type() == T::OBJECT) {
        return check(cv, [&](std::string_view sk, dom::element sv) {
          bool section = (sk == "desired" || sk == "reported") && sv.type() == T::OBJECT;
          return section ? keep(sk == "desired" ? 0 : 1, sv) : only_check(sk, sv);
        });
      }
      if (k == "metadata" && cv.type() == T::OBJECT) {
        return check(cv, [&](std::string_view mk, dom::element mv) {
          // (A section's metadata is kept when the section is: LoadStamps reads it as it is.)
          bool section = (mk == "desired" || mk == "reported") && state &&
                         Member(*state, mk, T::OBJECT).has_value();
          return section ? keep(mk == "desired" ? 2 : 3, mv) : only_check(mk, mv);
        });
      }
      return only_check(k, cv);
    });
  });
  if (!ok) {
    return InvalidArgument("duplicate key \"" + duplicate + "\" in an object");
  }
  if (!current) {
    return InvalidArgument("no \"current\" document");
  }
  auto version = Member(*current, "version", T::INT64);
  if (current->type() != T::OBJECT || !state || !version) {
    return InvalidArgument("shadow document: needs state (object) and version (integer)");
  }
  auto timestamp = Member(*current, "timestamp", T::INT64);
  std::string out;
  out.reserve(event.size() + 64);
  json::ObjectWriter w(out);
  w.Field("exists", 1)
      .Field("version", int64_t(*version))
      .Field("timestamp", timestamp ? int64_t(*timestamp) : int64_t{0})
      .Field("deleted_at", 0);
  static constexpr std::string_view kStoredKeys[4] = {"desired", "reported", "meta_desired",
                                                      "meta_reported"};
  for (int i = 0; i < 4; ++i) {
    if (kept[i]) {
      w.FieldRaw(kStoredKeys[i], sections[i]);
    }
  }
  if (meta) {
    if (auto c = Member(*meta, "connected", T::BOOL)) {
      auto seen = Member(*meta, "lastSeen", T::INT64);
      w.Field("connected", bool(*c) ? 1 : 0).Field("last_seen", seen ? int64_t(*seen) : int64_t{0});
    }
    if (auto model = Member(*meta, "model", T::STRING)) {
      w.Field("model", std::string_view(*model));
    }
  }
  w.Close();
  return out;
}

Result<ShadowDocument> ShadowDocument::FromDocument(std::string_view document, Limits limits) {
  GNOMON_ASSIGN_OR_RETURN(Value v, Value::Parse(document));
  return FromDocumentValue(std::move(v), limits);
}

Result<ShadowDocument> ShadowDocument::FromDocumentValue(Value v, Limits limits) {
  Value* state = v.Find("state");
  const Value* version = v.Find("version");
  if (!v.is_object() || state == nullptr || !state->is_object() || version == nullptr ||
      version->kind() != Value::Kind::kInt) {
    return InvalidArgument("shadow document: needs state (object) and version (integer)");
  }
  ShadowDocument d(limits);
  d.exists_ = true;
  d.version_ = version->as_int();
  if (const Value* ts = v.Find("timestamp"); ts != nullptr && ts->kind() == Value::Kind::kInt) {
    d.timestamp_s_ = ts->as_int();
  }
  const Value* meta = v.Find("metadata");
  auto section = [&](std::string_view key, Value& value) {
    if (Value* f = state->Find(key); f != nullptr && f->is_object()) {
      value = std::move(*f);
      LoadStamps(value, meta != nullptr ? meta->Find(key) : nullptr, d.timestamp_s_);
    }
  };
  section("desired", d.desired_);
  section("reported", d.reported_);
  d.SectionsLoaded();
  if (meta != nullptr) {
    const Value* c = meta->Find("connected");
    const Value* seen = meta->Find("lastSeen");
    if (c != nullptr && c->kind() == Value::Kind::kBool) {
      d.presence_ = c->as_bool() ? 1 : 0;
      d.last_seen_ms_ = seen != nullptr && seen->kind() == Value::Kind::kInt ? seen->as_int() : 0;
    }
    if (const Value* model = meta->Find("model"); model != nullptr && model->kind() == Value::Kind::kString) {
      d.model_ = model->as_string();
    }
  }
  d.RebuildDocumentJson();
  return d;
}

Result<ShadowDocument> ShadowDocument::FromStored(std::string_view stored, Limits limits) {
  GNOMON_ASSIGN_OR_RETURN(Value v, Value::Parse(stored));
  if (!v.is_object()) {
    return InvalidArgument("stored shadow: not an object");
  }
  auto integer = [&](std::string_view key) -> int64_t {
    const Value* f = v.Find(key);
    return f != nullptr && f->kind() == Value::Kind::kInt ? f->as_int() : 0;
  };
  ShadowDocument d(limits);
  d.exists_ = integer("exists") != 0;
  d.version_ = integer("version");
  d.timestamp_s_ = integer("timestamp");
  d.deleted_at_s_ = integer("deleted_at");
  auto section = [&](std::string_view key, std::string_view meta_key, Value& value) {
    if (Value* f = v.Find(key); f != nullptr && f->is_object()) {
      value = std::move(*f);
      LoadStamps(value, v.Find(meta_key), d.timestamp_s_);
    }
  };
  section("desired", "meta_desired", d.desired_);
  section("reported", "meta_reported", d.reported_);
  d.SectionsLoaded();
  if (const Value* c = v.Find("connected"); c != nullptr && c->kind() == Value::Kind::kInt) {
    d.presence_ = c->as_int() != 0 ? 1 : 0;
    d.last_seen_ms_ = integer("last_seen");
  }
  if (const Value* m = v.Find("model"); m != nullptr && m->kind() == Value::Kind::kString) {
    d.model_ = m->as_string();
  }
  if (const Value* keys = v.Find("idempotency"); keys != nullptr && keys->is_array()) {
    for (const Value& t : keys->items()) {
      const Value* key = t.Find("key");
      const Value* digest = t.Find("digest");
      const Value* response = t.Find("response");
      const Value* at = t.Find("at");
      auto is = [](const Value* f, Value::Kind k) { return f != nullptr && f->kind() == k; };
      if (!is(key, Value::Kind::kString) || !is(digest, Value::Kind::kString) ||
          !is(response, Value::Kind::kString) || !is(at, Value::Kind::kInt)) {
        return InvalidArgument("stored shadow: malformed idempotency key entry");
      }
      d.idempotent_bytes_ += response->as_string().size();
      d.idempotent_.push_back(
          {key->as_string(), digest->as_string(), response->as_string(), at->as_int()});
    }
  }
  if (d.exists_) {
    d.RebuildDocumentJson();
  }
  return d;
}

// An update request with steps 1-8 of docs/shadows.md checked. Its pointers point into
// `value`, so it stays where it was parsed.
struct ShadowDocument::Request {
  Value value;
  std::string token;  // the clientToken when it is a valid one, else empty
  Value* state = nullptr;
  Value* desired = nullptr;  // (absent: nullptr)
  Value* reported = nullptr;
  const Value* version = nullptr;
  bool if_changed = false;
  bool touch_desired = false;  // the update writes the section (a null state writes both)
  bool touch_reported = false;

  Request() = default;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
};

// Steps 1-8: encoding, JSON, size, the shape of state, version, clientToken, options, keys,
// depth, nulls in arrays.
std::optional<ShadowError> ShadowDocument::Parse(std::string_view request, Request& r) const {
  // 1. UTF-8, a JSON object, size.
  if (!json::IsValidUtf8(request)) {
    return Error(415, "UNSUPPORTED_ENCODING",
                 "Unsupported documented encoding; supported encoding is UTF-8", "");
  }
  auto parsed = Value::Parse(request);
  if (!parsed.ok() && DeeperThan(request, 1000)) {
    // Deeper than the parser goes (1024 levels), so far past max_depth.
    return Error(400, "TOO_DEEP",
                 fmt::format("JSON contains too many levels of nesting; maximum is {}",
                             limits_.max_depth),
                 "");
  }
  if (!parsed.ok() || !parsed->is_object()) {
    return Error(400, "INVALID_JSON", "Invalid JSON", "");
  }
  r.value = std::move(parsed).value();
  Value& req = r.value;  // the merge moves its values into the sections
  const Value* token_v = req.Find("clientToken");
  if (token_v != nullptr && token_v->kind() == Value::Kind::kString &&
      token_v->as_string().size() <= limits_.max_client_token_bytes) {
    r.token = token_v->as_string();
  }
  const std::string& token = r.token;
  if (request.size() > limits_.max_request_bytes) {
    return Error(413, "PAYLOAD_TOO_LARGE", "The payload exceeds the maximum size allowed", token);
  }
  // 2-4. The shape of state.
  r.state = req.Find("state");
  if (r.state == nullptr) {
    return Error(400, "MISSING_STATE", "Missing required node: state", token);
  }
  if (!r.state->is_null() && !r.state->is_object()) {
    return Error(400, "STATE_NOT_OBJECT", "State node must be an object", token);
  }
  if (r.state->is_object()) {
    for (const auto& [k, v] : r.state->members()) {
      if (k != "desired" && k != "reported") {
        return Error(400, "INVALID_NODE", "Invalid node: " + k, token);
      }
    }
    r.desired = r.state->Find("desired");
    r.reported = r.state->Find("reported");
    if (r.desired != nullptr && !r.desired->is_null() && !r.desired->is_object()) {
      return Error(400, "DESIRED_NOT_OBJECT", "Desired node must be an object", token);
    }
    if (r.reported != nullptr && !r.reported->is_null() && !r.reported->is_object()) {
      return Error(400, "REPORTED_NOT_OBJECT", "Reported node must be an object", token);
    }
  }
  r.touch_desired = r.state->is_null() || r.desired != nullptr;
  r.touch_reported = r.state->is_null() || r.reported != nullptr;
  // 5. version, clientToken, options.
  r.version = req.Find("version");
  if (r.version != nullptr && (r.version->kind() != Value::Kind::kInt || r.version->as_int() < 0)) {
    return Error(400, "INVALID_VERSION", "Invalid version", token);
  }
  if (token_v != nullptr && (token_v->kind() != Value::Kind::kString ||
                             token_v->as_string().size() > limits_.max_client_token_bytes)) {
    return Error(400, "INVALID_CLIENT_TOKEN", "Invalid clientToken", "");
  }
  if (const Value* options = req.Find("options")) {
    const Value* ic = options->Find("ifChanged");
    if (!options->is_object() || (ic != nullptr && ic->kind() != Value::Kind::kBool)) {
      return Error(400, "INVALID_JSON", "options must be {\"ifChanged\": true|false}", token);
    }
    r.if_changed = ic != nullptr && ic->as_bool();
  }
  // 6-8. Keys, depth, nulls in arrays.
  for (const Value* section : {r.desired, r.reported}) {
    if (section == nullptr || section->is_null()) {
      continue;
    }
    std::string bad;
    if (!KeysValid(*section, bad)) {
      return Error(400, "INVALID_KEY",
                   fmt::format("Invalid key '{}': keys must be 1-128 bytes and not start with $",
                               bad),
                   token);
    }
    if (section->Depth() > limits_.max_depth) {
      return Error(400, "TOO_DEEP",
                   fmt::format("JSON contains too many levels of nesting; maximum is {}",
                               limits_.max_depth),
                   token);
    }
    if (HasArrayNull(*section, false)) {
      return Error(400, "ARRAY_NULL", "Arrays may not contain null", token);
    }
  }
  // (9. Thing-model validation belongs to the caller that knows the model.)
  return std::nullopt;
}

// Idempotency (ext, REST's Idempotency-Key): a key accepted within the TTL replays its answer,
// or conflicts when the request differs. nullopt: no key, or a new one.
std::optional<std::variant<UpdateResult, ShadowError>> ShadowDocument::Replay(
    std::string_view request, std::string_view key, const std::string& token, int64_t now_s) {
  while (!idempotent_.empty() && (now_s - idempotent_.front().at_s > limits_.idempotency_ttl_s)) {
    idempotent_bytes_ -= idempotent_.front().response.size();
    idempotent_.pop_front();
  }
  if (key.empty()) {
    return std::nullopt;
  }
  for (const Idempotent& t : idempotent_) {
    if (t.key == key) {
      if (t.digest != RequestDigest(request)) {
        return Error(409, "IDEMPOTENCY_KEY_REUSED",
                     "Idempotency-Key was already used for a different request", token);
      }
      UpdateResult replay;
      replay.replayed = true;
      replay.changed = false;
      replay.accepted = t.response;
      return replay;
    }
  }
  return std::nullopt;
}

// 10. Optimistic locking (after a tombstone older than its window stopped carrying the
// version on).
std::optional<ShadowError> ShadowDocument::CheckVersion(const Request& r, int64_t now_s) {
  if (!exists_ && version_ > 0 && now_s - deleted_at_s_ > limits_.tombstone_s) {
    version_ = 0;
  }
  if (r.version != nullptr) {
    // 0: "must not exist". A deleted shadow's version (within the tombstone's window) is
    // accepted too: AWS's SDKs send the last version they saw, and the update continues it.
    int64_t want = r.version->as_int();
    bool conflict = exists_ ? want != version_ : (want != 0 && want != version_);
    if (conflict) {
      return Error(409, "VERSION_CONFLICT", "Version conflict", r.token);
    }
  }
  return std::nullopt;
}

// Whether the update would change a section (options.ifChanged).
bool ShadowDocument::WouldChangeAny(const Request& r) const {
  auto changes = [&](bool touch, const Value* patch, const Value& section) {
    if (!touch) {
      return false;
    }
    if (r.state->is_null() || patch->is_null()) {
      return !section.is_null();
    }
    return WouldChange(section.is_object() ? section : Value::Object(), *patch);
  };
  return changes(r.touch_desired, r.desired, desired_) ||
         changes(r.touch_reported, r.reported, reported_);
}

// Merges `patch` (a null state or section: removal) into one section in place, appending its
// operations to `ops`; `next` gets the section's joined JSON and metadata.
void ShadowDocument::MergeSection(const Request& r, Value* patch, const char* path0, Value& section,
                                  Parts& parts, int64_t now_s, std::string& ops,
                                  SectionText& next) {
  if (r.state->is_null() || patch->is_null()) {
    if (!section.is_null()) {
      AppendOp(ops, "remove", path0, nullptr);
      section = Value();
      parts = Parts();
    }
    return;
  }
  bool created = !section.is_object();
  if (created) {
    section = Value::Object();
    parts = Parts();
  }
  size_t mark = ops.size();
  std::string path = path0;
  for (auto& [k, pv] : patch->members()) {
    size_t at;
    switch (MergeMember(section, k, pv, now_s, path, ops, &at)) {
      case Merged::kNothing:
        break;
      case Merged::kErased:
        parts.json.erase(parts.json.begin() + static_cast<std::ptrdiff_t>(at));
        parts.meta.erase(parts.meta.begin() + static_cast<std::ptrdiff_t>(at));
        break;
      case Merged::kAppended:
        parts.json.emplace_back();
        parts.meta.emplace_back();
        [[fallthrough]];
      case Merged::kChanged:
        SerializeMember(section.members()[at], parts.json[at], parts.meta[at]);
        break;
    }
  }
  GNOMON_DCHECK(parts.json.size() == section.members().size());
  if (section.members().empty()) {  // a section left empty is removed
    ops.resize(mark);
    section = Value();
    parts = Parts();
    if (!created) {
      AppendOp(ops, "remove", path0, nullptr);
    }
    return;
  }
  if (created) {
    ops.resize(mark);
    AppendOp(ops, "add", path0, &section);
  }
  JoinParts(parts.json, next.json);
  JoinParts(parts.meta, next.meta);
}

// Merge in place; 11. sizes (a refused merge is undone from the serialized sections); then the
// new version, and the events' payloads.
std::optional<ShadowError> ShadowDocument::Write(Request& r, int64_t now_s, unsigned events,
                                                 UpdateResult& result) {
  const std::string& token = r.token;
  // update/accepted: the request's state (with its nulls) and the written leaves' metadata,
  // taken before the merge moves the request's values into the sections.
  std::string accepted_state, accepted_meta;
  if ((events & kEventAccepted) != 0) {
    accepted_state = r.state->Json();
    accepted_meta = "{";
  }
  for (auto [name, patch] : {std::pair<const char*, const Value*>{"desired", r.desired},
                             std::pair<const char*, const Value*>{"reported", r.reported}}) {
    if (patch != nullptr && !accepted_meta.empty()) {
      accepted_meta += accepted_meta.size() > 1 ? ",\"" : "\"";
      accepted_meta += name;
      accepted_meta += "\":";
      if (patch->is_null()) {
        accepted_meta += "{}";
      } else {
        AppendMeta(*patch, accepted_meta, now_s);
      }
    }
  }
  if (!accepted_meta.empty()) {
    accepted_meta += '}';
  }

  result.patch += '[';
  if (!exists_) {
    // A new shadow (or one deleted before): the document appears.
    Value empty = Value::Object();
    AppendOp(result.patch, "add", "/state", &empty);
  }
  SectionText next_desired, next_reported;
  if (r.touch_desired) {
    MergeSection(r, r.desired, "/state/desired", desired_, desired_parts_, now_s, result.patch,
                 next_desired);
  }
  if (r.touch_reported) {
    MergeSection(r, r.reported, "/state/reported", reported_, reported_parts_, now_s, result.patch,
                 next_reported);
  }
  result.patch += ']';
  for (auto [name, touched, next] : {std::tuple<const char*, bool, const SectionText*>{
                                         "desired", r.touch_desired, &next_desired},
                                     std::tuple<const char*, bool, const SectionText*>{
                                         "reported", r.touch_reported, &next_reported}}) {
    size_t bytes = next->json.size();
    if (touched && bytes > limits_.max_section_bytes) {
      RestoreSections();
      ShadowError e = Error(413, "PAYLOAD_TOO_LARGE",
                            fmt::format("The {} section would be {} bytes; the limit is {}", name,
                                        bytes, limits_.max_section_bytes),
                            token);
      e.details = fmt::format(R"({{"section":"{}","bytes":{},"limit":{}}})", name, bytes,
                              limits_.max_section_bytes);
      return e;
    }
  }
  if (r.touch_desired) {
    desired_json_ = std::move(next_desired.json);
    meta_desired_json_ = std::move(next_desired.meta);
  }
  if (r.touch_reported) {
    reported_json_ = std::move(next_reported.json);
    meta_reported_json_ = std::move(next_reported.meta);
  }
  std::string previous;
  if ((events & kEventDocuments) != 0) {
    previous = exists_ ? std::move(doc_json_) : std::string("null");
  }
  version_ += 1;
  timestamp_s_ = now_s;
  exists_ = true;
  RebuildDocumentJson();
  Value delta = ComputeDelta(desired_, reported_);
  Announce(r, events, accepted_state, accepted_meta, previous, delta, now_s, result);
  delta_ = std::move(delta);
  return std::nullopt;
}

// The events of a written update: accepted, documents, delta (when it changed, or desired was
// written) and synced (when the delta emptied). delta_ is still the delta before the update.
void ShadowDocument::Announce(const Request& r, unsigned events, const std::string& accepted_state,
                              const std::string& accepted_meta, const std::string& previous,
                              const Value& delta, int64_t now_s, UpdateResult& result) const {
  const Value& old_delta = delta_;
  const std::string& token = r.token;
  if ((events & kEventAccepted) != 0) {
    json::ObjectWriter w(result.accepted);
    w.FieldRaw("state", accepted_state).FieldRaw("metadata", accepted_meta);
    w.Field("version", version_).Field("timestamp", now_s);
    AppendToken(w, token);
    w.Close();
  }
  if ((events & kEventDocuments) != 0) {
    result.documents.reserve(previous.size() + doc_json_.size() + 96);
    json::ObjectWriter w(result.documents);
    w.FieldRaw("previous", previous).FieldRaw("current", doc_json_);
    w.Field("timestamp", now_s);
    AppendToken(w, token);
    w.Close();
  }
  std::string delta_json = delta.members().empty() ? std::string() : delta.Json();
  result.view = WithDelta(doc_json_, delta_json);
  if ((events & kEventDelta) == 0) {
    return;
  }
  if (!delta.members().empty() && (r.touch_desired || !(delta == old_delta))) {
    // The delta's values are copies of desired's, stamps included: its metadata is theirs.
    std::string delta_meta;
    AppendMeta(delta, delta_meta);
    json::ObjectWriter w(result.delta);
    w.FieldRaw("state", delta_json)
        .FieldRaw("metadata", delta_meta)
        .Field("version", version_)
        .Field("timestamp", now_s);
    AppendToken(w, token);
    w.Close();
  }
  if (!old_delta.members().empty() && delta.members().empty()) {
    json::ObjectWriter w(result.synced);
    w.Field("version", version_).Field("timestamp", now_s);
    AppendToken(w, token);
    w.Close();
  }
}

std::variant<UpdateResult, ShadowError> ShadowDocument::Update(std::string_view request,
                                                               int64_t now_s,
                                                               std::string_view idempotency_key,
                                                               unsigned events) {
  if (!idempotency_key.empty()) {
    events |= kEventAccepted;  // what a repeat of the key is answered
  }
  Request r;
  if (auto e = Parse(request, r)) {
    return *std::move(e);
  }
  if (auto replay = Replay(request, idempotency_key, r.token, now_s)) {
    return *std::move(replay);
  }
  if (auto e = CheckVersion(r, now_s)) {
    return *std::move(e);
  }
  UpdateResult result;
  result.client_token = r.token;
  if (r.if_changed && exists_ && !WouldChangeAny(r)) {
    result.changed = false;
    json::ObjectWriter w(result.accepted);
    w.FieldRaw("changed", "false").Field("version", version_).Field("timestamp", now_s);
    AppendToken(w, r.token);
    w.Close();
  } else if (auto e = Write(r, now_s, events, result)) {
    return *std::move(e);
  }
  if (!idempotency_key.empty()) {
    idempotent_bytes_ += result.accepted.size();
    idempotent_.push_back(
        {std::string(idempotency_key), RequestDigest(request), result.accepted, now_s});
    while (idempotent_.size() > limits_.max_idempotency_keys ||
           idempotent_bytes_ > limits_.max_idempotency_bytes) {
      idempotent_bytes_ -= idempotent_.front().response.size();
      idempotent_.pop_front();
    }
  }
  return result;
}

std::variant<std::string, ShadowError> ShadowDocument::Get(std::string_view name, int64_t now_s,
                                                           std::string_view client_token) const {
  if (!exists_) {
    return Error(404, "SHADOW_NOT_FOUND", fmt::format("No shadow exists with name: {}", name),
                 std::string(client_token));
  }
  std::string out = WithDelta(doc_json_, delta_.members().empty() ? std::string() : delta_.Json());
  AddClientToken(out, client_token);
  return out;
}

void ShadowDocument::AddClientToken(std::string& answer, std::string_view token) {
  if (token.empty() || answer.size() < 2 || answer.back() != '}') {
    return;
  }
  answer.pop_back();
  answer += answer.size() > 1 ? ",\"clientToken\":" : "\"clientToken\":";
  json::AppendQuoted(answer, token);
  answer += '}';
}

std::string ShadowDocument::WithDelta(std::string_view doc, std::string_view delta) {
  if (delta.empty()) {
    return std::string(doc);
  }
  // Insert the delta into "state": the document starts with {"state":{ ... }.
  size_t close = doc.find("},\"metadata\"");
  std::string out;
  out.reserve(doc.size() + delta.size() + 10);
  out.append(doc.substr(0, close));
  out += out.size() > std::string_view("{\"state\":{").size() ? ",\"delta\":" : "\"delta\":";
  out.append(delta);
  out.append(doc.substr(close));
  return out;
}

std::variant<std::string, ShadowError> ShadowDocument::Delete(std::string_view name, int64_t now_s,
                                                              std::string_view client_token) {
  if (!exists_) {
    return Error(404, "SHADOW_NOT_FOUND", fmt::format("No shadow exists with name: {}", name),
                 std::string(client_token));
  }
  exists_ = false;
  deleted_at_s_ = now_s;
  desired_ = reported_ = Value();
  delta_ = Value::Object();
  desired_parts_ = reported_parts_ = Parts();
  desired_json_.clear();
  reported_json_.clear();
  meta_desired_json_.clear();
  meta_reported_json_.clear();
  doc_json_.clear();
  // Idempotency keys stay: a retried update that was accepted before the delete must not
  // recreate the shadow.
  std::string out;
  json::ObjectWriter w(out);
  w.Field("version", version_).Field("timestamp", now_s);
  AppendToken(w, std::string(client_token));
  w.Close();
  return out;
}

bool ValidIdempotencyKey(std::string_view key, size_t max_bytes) {
  if (key.empty() || key.size() > max_bytes) {
    return false;
  }
  return std::all_of(key.begin(), key.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

std::string RequestClientToken(std::string_view payload, size_t max_bytes) {
  // A token is at most max_bytes (escaped: 6 bytes a character) plus the object around it.
  if (payload.empty() || payload.size() > Limits{}.max_request_bytes ||
      !json::IsValidUtf8(payload)) {
    return {};
  }
  auto parsed = Value::Parse(payload);
  if (!parsed.ok() || !parsed->is_object()) {
    return {};
  }
  const Value* token = parsed->Find("clientToken");
  if (token == nullptr || token->kind() != Value::Kind::kString ||
      token->as_string().size() > max_bytes) {
    return {};
  }
  return token->as_string();
}

// What a device status message says: connected (true), disconnected (false), or nothing usable.
std::optional<bool> ParsePresence(std::string_view payload) {
  while (!payload.empty() && std::isspace(static_cast<unsigned char>(payload.front()))) {
    payload.remove_prefix(1);
  }
  while (!payload.empty() && std::isspace(static_cast<unsigned char>(payload.back()))) {
    payload.remove_suffix(1);
  }
  auto word = [](std::string_view w) -> std::optional<bool> {
    std::string lower(w);
    for (char& c : lower) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    if (lower == "online" || lower == "connected" || lower == "true" || lower == "1") {
      return true;
    }
    if (lower == "offline" || lower == "disconnected" || lower == "false" || lower == "0") {
      return false;
    }
    return std::nullopt;
  };
  if (payload.empty() || (payload.front() != '{' && payload.front() != '"')) {
    return word(payload);
  }
  auto v = Value::Parse(payload);
  if (!v.ok()) {
    return std::nullopt;
  }
  if (v->kind() == Value::Kind::kString) {
    return word(v->as_string());
  }
  if (!v->is_object()) {
    return std::nullopt;
  }
  for (std::string_view key : {"connected", "online"}) {
    if (const Value* b = v->Find(key); b != nullptr && b->kind() == Value::Kind::kBool) {
      return b->as_bool();
    }
  }
  for (std::string_view key : {"state", "status"}) {
    if (const Value* t = v->Find(key); t != nullptr && t->kind() == Value::Kind::kString) {
      return word(t->as_string());
    }
  }
  return std::nullopt;
}

}  // namespace gnomon::shadow

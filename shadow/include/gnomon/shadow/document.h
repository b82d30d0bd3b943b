// SPDX-License-Identifier: Apache-2.0
// One device shadow (AWS IoT Device Shadow semantics, docs/shadows.md): desired and reported
// state, per-leaf metadata, version, the computed delta, clientToken echoing, opt-in idempotency
// keys (REST's Idempotency-Key), ifChanged, delete with a version tombstone. Pure logic: no I/O, no
// clock (times are passed in), not thread-safe (a shadow has exactly one writer, the worker that
// owns its device).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <variant>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/shadow/value.h"

namespace gnomon::shadow {

// The error document of docs/shadows.md.
struct ShadowError {
  int code = 400;
  std::string error;    // stable machine code, e.g. "VERSION_CONFLICT"
  std::string message;  // the AWS text where there is one
  std::string details;  // optional JSON (e.g. for PAYLOAD_TOO_LARGE), empty if none
  std::string client_token;
  std::string Json(int64_t timestamp_s) const;
};

// What an accepted update produced. Event payloads are JSON, ready to publish.
struct UpdateResult {
  bool changed = true;        // false: ifChanged and nothing would change (no events)
  std::string accepted;       // update/accepted payload (or the {"changed":false,...} reply)
  std::string documents;      // update/documents payload; empty when !changed
  std::string delta;          // update/delta payload, or empty when no delta event fires
  std::string synced;         // update/synced payload (ext), or empty
  bool replayed = false;      // a repeated idempotency key: `accepted` is the original response
  std::string client_token;   // the request's clientToken (empty: none), for answers made later
  // The change as RFC 6902 operations on the document (paths under /state), a JSON array;
  // empty when !changed.
  std::string patch;
  // The document as a get shows it after the update (with its delta); empty when !changed.
  std::string view;
};

// Which of an update's event payloads to build (UpdateResult's accepted, documents, and delta
// with synced). A write nobody answers or listens to skips building them: the caller says what
// it will consume. `patch` and `view` are always built.
enum UpdateEvents : unsigned {
  kEventAccepted = 1,
  kEventDocuments = 2,
  kEventDelta = 4,  // update/delta and update/synced
  kAllEvents = 7,
};

struct Limits {
  size_t max_request_bytes = 64 * 1024;
  size_t max_section_bytes = 32 * 1024;
  int max_depth = 8;
  size_t max_client_token_bytes = 64;
  size_t max_idempotency_key_bytes = 128;
  int64_t idempotency_ttl_s = 300;    // how long an idempotency key's answer is kept
  // Per shadow, the kept keys and the bytes of their answers; the oldest go first past either.
  size_t max_idempotency_keys = 128;
  size_t max_idempotency_bytes = 256 * 1024;
  int64_t tombstone_s = 48 * 3600;
};

class ShadowDocument {
 public:
  ShadowDocument() = default;
  explicit ShadowDocument(Limits limits) : limits_(limits) {}

  // Applies an update request (the raw JSON body), checked in the order of docs/shadows.md.
  // `now_s` is epoch seconds. The request's clientToken is echoed in every answer and never
  // used to skip or refuse anything (device SDKs reuse tokens after a restart).
  // `idempotency_key` (ext, REST's Idempotency-Key header; empty: none): when an update with
  // the same key was accepted within `idempotency_ttl_s`, its answer is returned again and
  // nothing changes (`replayed`); the same key with a different body is 409
  // IDEMPOTENCY_KEY_REUSED. The caller checks the key's form (ValidIdempotencyKey).
  // `events` (UpdateEvents): the payloads to build; those left out stay empty (with an
  // idempotency key, accepted is always built: it is what a repeat gets).
  std::variant<UpdateResult, ShadowError> Update(std::string_view request, int64_t now_s,
                                                 std::string_view idempotency_key = {},
                                                 unsigned events = kAllEvents);

  // The document with its delta (get/accepted), or 404 SHADOW_NOT_FOUND; both carry
  // `client_token` when it is not empty.
  std::variant<std::string, ShadowError> Get(std::string_view shadow_name, int64_t now_s,
                                             std::string_view client_token = {}) const;

  // Deletes the shadow; the version survives for `tombstone_s`. Returns delete/accepted
  // ({"version","timestamp"} and `client_token` when it is not empty) or 404.
  std::variant<std::string, ShadowError> Delete(std::string_view shadow_name, int64_t now_s,
                                                std::string_view client_token = {});

  // Presence (docs/thing-models.md): whether the device is connected to its broker and when that
  // was last reported (epoch ms), shown in the document's metadata as "connected" and
  // "lastSeen". Not a state update: the version stays, no update events fire. Kept for a thing
  // whose shadow does not exist (yet) too, and across Delete().
  void SetPresence(bool connected, int64_t at_ms);
  std::optional<bool> connected() const {
    return presence_ < 0 ? std::nullopt : std::optional<bool>(presence_ == 1);
  }
  int64_t last_seen_ms() const { return last_seen_ms_; }

  // The thing model the shadow's writes are validated against, as "modelId@version" (spec:
  // "the shadow records modelId@version"); shown as metadata.model. Set before an update so
  // the update's document carries it. Empty: none.
  void SetModel(const std::string& model_ref);
  const std::string& model() const { return model_; }

  bool exists() const { return exists_; }
  int64_t version() const { return version_; }
  const Value& desired() const { return desired_; }
  const Value& reported() const { return reported_; }
  // delta(desired, reported) per docs/shadows.md; kept with the sections (computed once per
  // write).
  const Value& Delta() const { return delta_; }
  // The stored document (no delta), as kept and as in the documents event. Cached: rebuilt
  // from per-section JSON at each write.
  std::string DocumentJson() const;
  // `document` (a DocumentJson()) with `delta` (a JSON object; empty: none) in its state: the
  // form a get returns.
  static std::string WithDelta(std::string_view document, std::string_view delta);
  // Appends "clientToken": `token` to JSON object `answer` (nothing when `token` is empty).
  static void AddClientToken(std::string& answer, std::string_view token);

  // The durable form: the document, its tombstone and its recent idempotency keys, as one JSON
  // object. FromStored() restores exactly this state.
  std::string StoredJson() const;
  static Result<ShadowDocument> FromStored(std::string_view stored, Limits limits = {});
  // From a stored document as published (DocumentJson(), the change log's "current"): state,
  // metadata, version, timestamp. Idempotency keys and tombstones are not part of it.
  static Result<ShadowDocument> FromDocument(std::string_view document, Limits limits = {});
  // From a change-log record's value (the documents event: its "current").
  static Result<ShadowDocument> FromChangelog(std::string_view event, Limits limits = {});
  // The stored form (StoredJson) of a change-log record's shadow, without building the
  // document: what a restore writes. Refused exactly when FromChangelog refuses, and read back
  // (FromStored) it is the document FromChangelog builds; it may differ from that document's
  // StoredJson in spelling (numbers, members' metadata the state no longer has).
  static Result<std::string> StoredFromChangelog(std::string_view event);

 private:
  static Result<ShadowDocument> FromDocumentValue(Value v, Limits limits);
  struct Idempotent {
    std::string key;
    std::string digest;  // of the body (RequestDigest), to tell a replay from a reuse
    std::string response;
    int64_t at_s;
  };

  Limits limits_;
  bool exists_ = false;
  int64_t version_ = 0;
  int64_t timestamp_s_ = 0;
  int64_t deleted_at_s_ = 0;  // with !exists_ and version_ > 0: the tombstone
  Value desired_;             // null when the section is absent; leaves stamped (metadata)
  Value reported_;
  Value delta_ = Value::Object();  // ComputeDelta(desired_, reported_)
  // Serialized forms of the sections and their metadata, kept in step with the values above
  // (empty: section absent).
  std::string desired_json_, reported_json_, meta_desired_json_, meta_reported_json_;
  std::string doc_json_;
  // Per member of a section, its "key":value and "key":metadata: an update re-serializes only
  // the members it writes and joins the rest. In step with the section's members.
  struct Parts {
    std::vector<std::string> json, meta;
    // From `section` (null: none), with the section's joined JSON and metadata (empty: none).
    void Rebuild(const Value& section, std::string& section_json, std::string& section_meta);
  };
  Parts desired_parts_, reported_parts_;
  std::deque<Idempotent> idempotent_;
  size_t idempotent_bytes_ = 0;  // the answers' bytes in idempotent_
  int presence_ = -1;  // -1: never reported, 0: disconnected, 1: connected
  int64_t last_seen_ms_ = 0;
  std::string model_;

  // Update's steps, in order (document.cc says which steps of docs/shadows.md each takes).
  struct Request;
  struct SectionText {
    std::string json, meta;  // a section's joined members and metadata (empty: absent)
  };
  std::optional<ShadowError> Parse(std::string_view request, Request& r) const;
  std::optional<std::variant<UpdateResult, ShadowError>> Replay(std::string_view request,
                                                                std::string_view key,
                                                                const std::string& token,
                                                                int64_t now_s);
  std::optional<ShadowError> CheckVersion(const Request& r, int64_t now_s);
  bool WouldChangeAny(const Request& r) const;
  std::optional<ShadowError> Write(Request& r, int64_t now_s, unsigned events,
                                   UpdateResult& result);
  static void MergeSection(const Request& r, Value* patch, const char* path0, Value& section,
                           Parts& parts, int64_t now_s, std::string& ops, SectionText& next);
  void Announce(const Request& r, unsigned events, const std::string& accepted_state,
                const std::string& accepted_meta, const std::string& previous, const Value& delta,
                int64_t now_s, UpdateResult& result) const;

  void RebuildDocumentJson();
  // Rebuilds desired_ and reported_ from their serialized forms (undoes a refused merge).
  void RestoreSections();
  // After the sections were replaced: their members' serialized forms, and the delta.
  void SectionsLoaded();
};

// An Idempotency-Key (ext): 1-`max_bytes` bytes of printable ASCII (0x21-0x7e).
bool ValidIdempotencyKey(std::string_view key, size_t max_bytes);

// The clientToken of a get or delete request's payload (empty, or {"clientToken": "..."}): the
// token when it is a string of at most `max_bytes`, else empty (a payload that is not such an
// object is not refused: get and delete take no other input).
std::string RequestClientToken(std::string_view payload, size_t max_bytes);

// Thing (1-128 bytes) and shadow (1-64 bytes) names of docs/shadows.md: only A-Z a-z 0-9 : _ -.
bool ValidShadowId(std::string_view id, size_t max_bytes);

// What a device status message says (shadows.presence): true (connected) for online,
// connected, true, 1; false for offline, disconnected, false, 0 (any case, surrounding blanks
// ignored); the same as a JSON string; JSON true/false; an object with a boolean `connected`
// or `online`, or a string `state` or `status`. nullopt for anything else.
std::optional<bool> ParsePresence(std::string_view payload);

// delta(D, R) of docs/shadows.md, on its own (for tests and the REST layer).
Value ComputeDelta(const Value& desired, const Value& reported);

}  // namespace gnomon::shadow

// SPDX-License-Identifier: Apache-2.0
#include "state_owner.h"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>

#include "gnomon/core/json.h"
#include "gnomon/shadow/value.h"

namespace gnomon::engine {
namespace {
// What an entry costs beyond its key, JSON and timers: the map node, the LRU node, the row.
constexpr size_t kEntryOverhead = 200;
}  // namespace

std::string EncodeTimers(const std::vector<rules::RuleTimer>& timers) {
  if (timers.empty()) {
    return {};
  }
  std::string out = "[";
  for (const rules::RuleTimer& t : timers) {
    if (out.size() > 1) {
      out += ',';
    }
    json::ObjectWriter w(out);
    w.Field("name", t.name).Field("due", t.due_ms);
    if (!t.data.empty()) {
      w.FieldRaw("data", t.data);
    }
    w.Close();
  }
  out += ']';
  return out;
}

Result<std::vector<rules::RuleTimer>> DecodeTimers(std::string_view text) {
  std::vector<rules::RuleTimer> out;
  if (text.empty()) {
    return out;
  }
  GNOMON_ASSIGN_OR_RETURN(shadow::Value v, shadow::Value::Parse(text));
  if (!v.is_array()) {
    return Internal("stored timers are not a JSON array");
  }
  for (const shadow::Value& t : v.items()) {
    const shadow::Value* name = t.is_object() ? t.Find("name") : nullptr;
    const shadow::Value* due = t.is_object() ? t.Find("due") : nullptr;
    if (name == nullptr || name->kind() != shadow::Value::Kind::kString || due == nullptr ||
        due->kind() != shadow::Value::Kind::kInt) {
      return Internal("a stored timer is not {\"name\", \"due\"}");
    }
    const shadow::Value* data = t.Find("data");
    out.push_back({name->as_string(), due->as_int(), data != nullptr ? data->Json() : ""});
  }
  return out;
}

int64_t StateOwner::Row::next_timer() const {
  int64_t next = 0;
  for (const rules::RuleTimer& t : state.timers) {
    next = next == 0 ? t.due_ms : std::min(next, t.due_ms);
  }
  return next;
}

StateOwner::StateOwner(size_t budget_bytes, shadow::ShadowStore& store, Counter* loads)
    : budget_(budget_bytes), store_(store), loads_(loads) {}

void StateOwner::Charge(Entry& e, const std::string& key) {
  bytes_ -= e.charged;
  size_t timers = 0;
  for (const rules::RuleTimer& t : e.row.state.timers) {
    timers += t.name.size() + t.data.size() + sizeof(rules::RuleTimer);
  }
  e.charged =
      key.size() + e.row.state.json.size() + e.row.state.windows.size() + timers + kEntryOverhead;
  bytes_ += e.charged;
}

bool StateOwner::IsLast(std::string_view rule, std::string_view device) const {
  if (last_ == nullptr) {
    return false;
  }
  std::string_view k = *last_key_;
  return k.size() == rule.size() + 1 + device.size() && k.substr(0, rule.size()) == rule &&
         k[rule.size()] == '\0' && k.substr(rule.size() + 1) == device;
}

Result<StateOwner::Row*> StateOwner::Get(const std::string& rule, const std::string& device,
                                         shadow::ShadowStore::Reader& reader) {
  if (IsLast(rule, device)) {
    return &last_->row;  // a call reads its row, then the engine updates it: one lookup
  }
  std::string key = StateKey(rule, device);
  if (auto it = rows_.find(key); it != rows_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    last_key_ = &it->first;
    last_ = &it->second;
    return &it->second.row;
  }
  GNOMON_ASSIGN_OR_RETURN(std::optional<shadow::RuleState> stored, reader.LoadState(rule, device));
  if (loads_ != nullptr) {
    loads_->Inc();
  }
  Row row;
  if (stored) {
    auto timers = DecodeTimers(stored->timers);
    if (!timers.ok()) {
      return timers.status().WithContext(
          fmt::format("the state of rule {} for {} in the store", rule, device));
    }
    if (stored->json == "{}") {
      stored->json.clear();  // a row with timers only
    }
    row.state = rules::StoredState{stored->version, std::move(stored->json),
                                   std::move(timers).value(), std::move(stored->windows)};
    row.inactive_due = stored->inactive_due;
    row.window_due = stored->window_due;
    row.open_windows = rules::OpenWindows(row.state.windows);
  }
  if (!recount_.empty() && recount_.erase(key) > 0) {
    open_windows_.fetch_add(row.open_windows, std::memory_order_relaxed);
  }
  auto it = rows_.emplace(std::move(key), Entry{std::move(row)}).first;
  lru_.push_front(&it->first);
  it->second.lru = lru_.begin();
  Charge(it->second, it->first);
  last_key_ = &it->first;
  last_ = &it->second;
  if (stored && stored->next_due > 0) {
    Schedule(it->first, stored->next_due);  // (rows read again after a Trim keep their timers)
  }
  return &it->second.row;
}

uint64_t StateOwner::epoch(const std::string& rule, const std::string& device) const {
  if (epochs_.empty()) {
    return 0;
  }
  auto e = epochs_.find(StateKey(rule, device));
  return e != epochs_.end() ? e->second : 0;
}

void StateOwner::Put(const std::string& rule, const std::string& device,
                     shadow::ShadowStore::Done done, std::string* record) {
  Entry* e = IsLast(rule, device) ? last_ : nullptr;
  const std::string* k = last_key_;
  if (e == nullptr) {
    std::string key = StateKey(rule, device);
    auto it = rows_.find(key);
    if (it == rows_.end()) {
      it = rows_.emplace(key, Entry{}).first;
      lru_.push_front(&it->first);
      it->second.lru = lru_.begin();
    }
    e = &it->second;
    k = &it->first;
  }
  const Row& row = e->row;
  shadow::RuleState stored;
  if (row.exists()) {
    stored.version = row.state.version;
    stored.json = row.state.json;
    stored.timers = EncodeTimers(row.state.timers);
    stored.inactive_due = row.inactive_due;
    stored.windows = row.state.windows;
    stored.window_due = row.window_due;
    int64_t next = 0;
    for (int64_t due : {row.next_timer(), row.inactive_due, row.window_due}) {
      next = due == 0 ? next : next == 0 ? due : std::min(next, due);
    }
    stored.next_due = next;
    if (stored.json.empty()) {
      stored.json = "{}";  // (a row with timers only; an empty text would delete it)
    }
  }
  if (record != nullptr) {
    *record = row.exists() ? stored.ChangelogJson(rule) : std::string();
  }
  e->written =
      store_.WriteState(rule, device, std::move(stored), std::move(done), epoch(rule, device));
  lru_.splice(lru_.begin(), lru_, e->lru);
  Charge(*e, *k);
}

bool StateOwner::Evict(const std::string& rule, const std::string& device, uint64_t epoch) {
  std::string key = StateKey(rule, device);
  uint64_t& current = epochs_[key];
  if (current != epoch) {
    return false;
  }
  ++current;
  if (auto it = rows_.find(key); it != rows_.end()) {
    // The copy's windows were counted; the store's are counted again when read back. (A row
    // no longer in memory when its refusal comes back keeps its count: off until restart.)
    open_windows_.fetch_sub(it->second.row.open_windows, std::memory_order_relaxed);
    recount_.insert(key);
  }
  Forget(key);
  return true;
}

void StateOwner::SetWindows(Row& row, std::string windows) {
  int64_t open = windows.empty() ? 0 : rules::OpenWindows(windows);
  open_windows_.fetch_add(open - row.open_windows, std::memory_order_relaxed);
  row.open_windows = open;
  row.state.windows = std::move(windows);
}

void StateOwner::Forget(const std::string& key) {
  last_ = nullptr;
  last_key_ = nullptr;
  if (auto it = rows_.find(key); it != rows_.end()) {
    bytes_ -= it->second.charged;
    lru_.erase(it->second.lru);
    rows_.erase(it);
  }
}

size_t StateOwner::Trim() {
  if (bytes_ <= budget_) {
    return 0;
  }
  uint64_t done = store_.committed();
  size_t dropped = 0;
  size_t looked = 0;
  for (auto it = lru_.end(); bytes_ > budget_ && it != lru_.begin() && looked < 4096; ++looked) {
    --it;
    if (rows_.find(**it)->second.written > done) {
      continue;  // a reload must see its write
    }
    auto older = std::next(it);
    Forget(**it);
    ++dropped;
    it = older;
  }
  return dropped;
}

size_t StateOwner::DropDevices(const std::function<bool(std::string_view device)>& drop) {
  auto device_of = [](std::string_view key) { return key.substr(key.find('\0') + 1); };
  size_t dropped = 0;
  std::vector<std::string> rows;
  for (const auto& [key, entry] : rows_) {
    if (drop(device_of(key))) {
      rows.push_back(key);
    }
  }
  for (const std::string& key : rows) {
    Forget(
        key);  // (their windows stay counted: the engine counts the partition's, docs/cluster.md)
    ++dropped;
  }
  for (auto it = indexed_.begin(); it != indexed_.end();) {
    if (drop(device_of(it->first))) {
      due_.erase({it->second, it->first});
      it = indexed_.erase(it);
      ++dropped;
    } else {
      ++it;
    }
  }
  // (epochs_ stay: the store refuses writes of a refused copy's epoch whoever makes them.)
  pending_.store(due_.size(), std::memory_order_relaxed);
  last_ = nullptr;
  last_key_ = nullptr;
  return dropped;
}

void StateOwner::Schedule(const std::string& key, int64_t due) {
  if (due <= 0 || due >= covered_ + kMarginMs) {
    return;  // (beyond the margin: the store's index keeps it until Extend)
  }
  auto [it, added] = indexed_.try_emplace(key, due);
  if (!added) {
    if (it->second <= due) {
      return;
    }
    due_.erase({it->second, key});
    it->second = due;
  }
  due_.emplace(due, key);
  pending_.store(due_.size(), std::memory_order_relaxed);
}

Result<size_t> StateOwner::Extend(int64_t now, shadow::ShadowStore::Reader& reader,
                                  const std::function<bool(std::string_view)>& mine) {
  if (covered_ - now >= kMarginMs || store_.committed() < extend_seq_) {
    return size_t{0};
  }
  int64_t from = covered_;
  int64_t to = std::min(now + 2 * kMarginMs, covered_ + kMarginMs / 2);
  extend_seq_ = store_.queued_seq();
  covered_ = to;
  size_t added = 0;
  GNOMON_RETURN_IF_ERROR(
      reader.Due(from, to, [&](std::string_view device, std::string_view rule, int64_t due) {
        if (mine(device)) {
          Schedule(StateKey(rule, device), due);
          ++added;
        }
      }));
  return added;
}

std::vector<std::string> StateOwner::TakeDue(int64_t now, size_t max) {
  std::vector<std::string> out;
  while (!due_.empty() && out.size() < max && due_.begin()->first <= now) {
    auto node = due_.extract(due_.begin());
    indexed_.erase(node.value().second);
    out.push_back(std::move(node.value().second));
  }
  pending_.store(due_.size(), std::memory_order_relaxed);
  return out;
}

}  // namespace gnomon::engine

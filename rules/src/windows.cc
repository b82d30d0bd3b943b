// SPDX-License-Identifier: Apache-2.0
#include "gnomon/rules/windows.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>

namespace gnomon::rules {

Result<int64_t> ParseDurationMs(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') {
    ++digits;
  }
  std::string_view unit = text.substr(digits);
  int64_t scale = unit == "ms"  ? 1
                  : unit == "s" ? 1000
                  : unit == "m" ? 60'000
                  : unit == "h" ? 3'600'000
                  : unit == "d" ? 86'400'000
                                : 0;
  if (digits == 0 || digits > 12 || scale == 0) {
    return InvalidArgument(fmt::format(
        "'{}' is not a duration (an integer and a unit: ms, s, m, h or d, as in \"10m\")",
        text.substr(0, 64)));
  }
  int64_t n = 0;
  for (size_t i = 0; i < digits; ++i) {
    n = n * 10 + (text[i] - '0');
  }
  if (n <= 0 || n > kMaxWindowSpan / scale) {
    return InvalidArgument(
        fmt::format("duration '{}' must be above 0 and at most 2^40 ms (about 35 years)", text));
  }
  return n * scale;
}

namespace {

constexpr std::array<std::string_view, 8> kAggNames = {"count", "sum",   "avg",  "min",
                                                       "max",   "first", "last", "stddev"};

// floor(a / b) for b > 0, whatever a's sign.
int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// The state's text form reads numbers separated by single spaces or newlines.
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  bool Int(int64_t& v) {
    return Next([&](const char* b, const char* e) { return std::from_chars(b, e, v).ptr == e; });
  }
  // (Sums of large values may have overflowed to inf: kept as they are.)
  bool Double(double& v) {
    return Next([&](const char* b, const char* e) { return std::from_chars(b, e, v).ptr == e; });
  }
  bool Word(std::string_view& w) {
    return Next([&](const char* b, const char* e) {
      w = std::string_view(b, static_cast<size_t>(e - b));
      return true;
    });
  }
  bool AtEnd() const { return at_ == s_.size(); }

 private:
  template <typename F>
  bool Next(F parse) {
    size_t end = at_;
    while (end < s_.size() && s_[end] != ' ' && s_[end] != '\n') {
      ++end;
    }
    if (end == at_) {
      return false;
    }
    bool ok = parse(s_.data() + at_, s_.data() + end);
    at_ = end < s_.size() ? end + 1 : end;
    return ok;
  }
  std::string_view s_;
  size_t at_ = 0;
};

// The state's binary form (what Encode writes): "w2", then every number as 8 bytes in the
// machine's order (little-endian on every machine gnomon builds for), integers as int64 and
// values as doubles. Read back with the same checks as the text form.
static_assert(std::endian::native == std::endian::little, "window states are little-endian");
class BinaryReader {
 public:
  explicit BinaryReader(std::string_view s) : s_(s) {}
  bool Int(int64_t& v) { return Take(&v); }
  bool Double(double& v) { return Take(&v); }
  bool AtEnd() const { return at_ == s_.size(); }

 private:
  template <typename T>
  bool Take(T* v) {
    if (s_.size() - at_ < sizeof(T)) {
      return false;
    }
    std::memcpy(v, s_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return true;
  }
  std::string_view s_;
  size_t at_ = 0;
};

class BinaryWriter {
 public:
  explicit BinaryWriter(std::string& out) : out_(out) {}
  void Int(int64_t v) { Put(v); }
  void Double(double v) { Put(v); }

 private:
  template <typename T>
  void Put(T v) {
    char buf[sizeof(T)];
    std::memcpy(buf, &v, sizeof(T));
    out_.append(buf, sizeof(T));
  }
  std::string& out_;
};

void WriteAggregates(BinaryWriter& w, const Aggregates& a) {
  w.Int(a.count);
  for (double d : {a.sum, a.min, a.max, a.first, a.last}) {
    w.Double(d);
  }
  w.Int(a.first_t);
  w.Int(a.last_t);
  w.Double(a.mean);
  w.Double(a.m2);
}

template <typename R>
bool ReadAggregates(R& r, Aggregates& a) {
  return r.Int(a.count) && a.count >= 0 && a.count <= kMaxWindowTime && r.Double(a.sum) &&
         r.Double(a.min) && r.Double(a.max) && r.Double(a.first) && r.Double(a.last) &&
         r.Int(a.first_t) && r.Int(a.last_t) && r.Double(a.mean) && r.Double(a.m2);
}

}  // namespace

std::optional<Agg> ParseAgg(std::string_view name) {
  for (size_t i = 0; i < kAggNames.size(); ++i) {
    if (kAggNames[i] == name) {
      return static_cast<Agg>(i);
    }
  }
  return std::nullopt;
}

std::string_view AggName(Agg agg) { return kAggNames[static_cast<size_t>(agg)]; }

void Aggregates::Add(int64_t t, double v) {
  if (count == 0) {
    min = max = first = last = v;
    first_t = last_t = t;
  } else {
    min = std::min(min, v);
    max = std::max(max, v);
    if (t < first_t) {
      first = v;
      first_t = t;
    }
    if (t >= last_t) {
      last = v;
      last_t = t;
    }
  }
  ++count;
  sum += v;
  double d = v - mean;
  mean += d / static_cast<double>(count);
  m2 += d * (v - mean);
}

void Aggregates::Merge(const Aggregates& o) {
  if (o.count == 0) {
    return;
  }
  if (count == 0) {
    *this = o;
    return;
  }
  min = std::min(min, o.min);
  max = std::max(max, o.max);
  if (o.first_t < first_t) {
    first = o.first;
    first_t = o.first_t;
  }
  if (o.last_t >= last_t) {
    last = o.last;
    last_t = o.last_t;
  }
  double n = static_cast<double>(count), m = static_cast<double>(o.count);
  double d = o.mean - mean;
  mean += d * m / (n + m);
  m2 += o.m2 + d * d * n * m / (n + m);
  count += o.count;
  sum += o.sum;
}

std::optional<double> Aggregates::Value(Agg agg) const {
  switch (agg) {
    case Agg::kCount:
      return static_cast<double>(count);
    case Agg::kSum:
      return sum;
    default:
      break;
  }
  if (count == 0) {
    return std::nullopt;
  }
  switch (agg) {
    case Agg::kAvg:
      return sum / static_cast<double>(count);
    case Agg::kMin:
      return min;
    case Agg::kMax:
      return max;
    case Agg::kFirst:
      return first;
    case Agg::kLast:
      return last;
    case Agg::kStddev:
      return std::sqrt(std::max(0.0, m2 / static_cast<double>(count)));
    default:
      return std::nullopt;
  }
}

std::string WindowSpec::Problem() const {
  if (size_ms <= 0) {
    return kind == Kind::kSession ? "the session gap must be positive"
                                  : "the window's length must be positive";
  }
  if (kind == Kind::kHopping && (hop_ms <= 0 || hop_ms >= size_ms)) {
    return "a hopping window's hop must be positive and shorter than its length";
  }
  if (grace_ms < 0) {
    return "grace must not be negative";
  }
  if (size_ms > kMaxWindowSpan || hop_ms > kMaxWindowSpan || grace_ms > kMaxWindowSpan) {
    return fmt::format("lengths, hops and grace are at most {} ms", kMaxWindowSpan);
  }
  if (max_open == 0 || max_events == 0) {
    return "the bounds must be positive";
  }
  if (kind == Kind::kHopping && static_cast<uint64_t>(size_ms / hop_ms) > max_open) {
    // Every event is in length / hop windows at once.
    return fmt::format(
        "a hopping window's length over its hop ({}) is more than the {} windows "
        "that may be open",
        size_ms / hop_ms, max_open);
  }
  return "";
}

bool WindowState::Late(int64_t t) const {
  if (!seen_) {
    return false;
  }
  switch (spec_.kind) {
    case WindowSpec::Kind::kTumbling:
    case WindowSpec::Kind::kHopping: {
      int64_t hop = spec_.kind == WindowSpec::Kind::kHopping ? spec_.hop_ms : spec_.size_ms;
      int64_t last_start = FloorDiv(t, hop) * hop;  // the last window holding t
      return last_start + spec_.size_ms + spec_.grace_ms <= watermark_;
    }
    case WindowSpec::Kind::kSession:
      // A session it would start is closed already, or it reaches into one that closed.
      return t + spec_.size_ms + spec_.grace_ms <= watermark_ || t < closed_until_;
    case WindowSpec::Kind::kSliding:
      return t <= watermark_ - spec_.size_ms;
  }
  return false;
}

Result<WindowState::Took> WindowState::Add(int64_t t, double value,
                                           std::vector<ClosedWindow>& closed) {
  if (t < -kMaxWindowTime || t > kMaxWindowTime) {
    return InvalidArgument(fmt::format("the event time {} is out of range", t));
  }
  if (!std::isfinite(value)) {
    return InvalidArgument("the value is not a finite number");
  }
  if (Late(t)) {
    return Took::kLate;
  }
  int64_t next_watermark = seen_ ? std::max(watermark_, t) : t;
  switch (spec_.kind) {
    case WindowSpec::Kind::kTumbling:
    case WindowSpec::Kind::kHopping: {
      int64_t hop = spec_.kind == WindowSpec::Kind::kHopping ? spec_.hop_ms : spec_.size_ms;
      int64_t first = FloorDiv(t - spec_.size_ms, hop) + 1;  // the first window holding t
      int64_t last = FloorDiv(t, hop);
      // The windows of t still open (a hopping event may find its earliest ones closed).
      std::vector<int64_t> starts;
      size_t added = 0;
      for (int64_t k = first; k <= last; ++k) {
        int64_t start = k * hop;
        if (seen_ && start + spec_.size_ms + spec_.grace_ms <= watermark_) {
          continue;
        }
        starts.push_back(start);
        added += windows_.count(start) == 0 ? 1 : 0;
      }
      if (windows_.size() + added > spec_.max_open) {
        return InvalidArgument(
            fmt::format("the event at {} would open a window past the bound of {} open windows", t,
                        spec_.max_open));
      }
      for (int64_t start : starts) {
        windows_[start].Add(t, value);
      }
      break;
    }
    case WindowSpec::Kind::kSession: {
      const int64_t gap = spec_.size_ms;
      size_t lo = sessions_.size(), hi = 0;  // the sessions t merges ([lo, hi))
      for (size_t i = 0; i < sessions_.size(); ++i) {
        if (sessions_[i].start - gap < t && t < sessions_[i].last + gap) {
          lo = std::min(lo, i);
          hi = i + 1;
        }
      }
      if (lo >= hi) {
        if (sessions_.size() + 1 > spec_.max_open) {
          return InvalidArgument(
              fmt::format("the event at {} would open a session past the bound of {} open sessions",
                          t, spec_.max_open));
        }
        Session s{t, t, {}};
        s.agg.Add(t, value);
        auto at = std::upper_bound(sessions_.begin(), sessions_.end(), t,
                                   [](int64_t v, const Session& x) { return v < x.start; });
        sessions_.insert(at, s);
      } else {
        Session& into = sessions_[lo];
        for (size_t i = lo + 1; i < hi; ++i) {
          into.last = std::max(into.last, sessions_[i].last);
          into.agg.Merge(sessions_[i].agg);
        }
        into.start = std::min(into.start, t);
        into.last = std::max(into.last, t);
        into.agg.Add(t, value);
        sessions_.erase(sessions_.begin() + static_cast<std::ptrdiff_t>(lo + 1),
                        sessions_.begin() + static_cast<std::ptrdiff_t>(hi));
      }
      break;
    }
    case WindowSpec::Kind::kSliding: {
      size_t evicted = 0;
      while (evicted < events_.size() && events_[evicted].first <= next_watermark - spec_.size_ms) {
        ++evicted;
      }
      if (events_.size() - evicted + 1 > spec_.max_events) {
        return InvalidArgument(fmt::format(
            "the event at {} would hold more than the sliding window's bound of {} events", t,
            spec_.max_events));
      }
      events_.erase(events_.begin(), events_.begin() + static_cast<std::ptrdiff_t>(evicted));
      auto at = std::upper_bound(events_.begin(), events_.end(), t,
                                 [](int64_t v, const auto& e) { return v < e.first; });
      events_.insert(at, {t, value});
      break;
    }
  }
  seen_ = true;
  watermark_ = next_watermark;
  CloseUntil(watermark_, closed);
  return Took::kAccepted;
}

void WindowState::Advance(int64_t now, std::vector<ClosedWindow>& closed) {
  now = std::clamp(now, -kMaxWindowTime, kMaxWindowTime);
  if (seen_ && now <= watermark_) {
    return;
  }
  seen_ = true;
  watermark_ = now;
  CloseUntil(watermark_, closed);
}

void WindowState::CloseUntil(int64_t watermark, std::vector<ClosedWindow>& closed) {
  switch (spec_.kind) {
    case WindowSpec::Kind::kTumbling:
    case WindowSpec::Kind::kHopping:
      // All of one length: by start is by end.
      while (!windows_.empty() &&
             windows_.begin()->first + spec_.size_ms + spec_.grace_ms <= watermark) {
        auto it = windows_.begin();
        closed.push_back({it->first, it->first + spec_.size_ms, it->second});
        windows_.erase(it);
      }
      break;
    case WindowSpec::Kind::kSession: {
      // Apart by at least the gap: by start is by last event.
      size_t n = 0;
      while (n < sessions_.size() &&
             sessions_[n].last + spec_.size_ms + spec_.grace_ms <= watermark) {
        const Session& s = sessions_[n];
        closed.push_back({s.start, s.last + spec_.size_ms, s.agg});
        closed_until_ = std::max(closed_until_, s.last + spec_.size_ms);
        ++n;
      }
      sessions_.erase(sessions_.begin(), sessions_.begin() + static_cast<std::ptrdiff_t>(n));
      break;
    }
    case WindowSpec::Kind::kSliding:
      while (!events_.empty() && events_.front().first <= watermark - spec_.size_ms) {
        events_.pop_front();
      }
      break;
  }
}

std::optional<int64_t> WindowState::NextClose() const {
  switch (spec_.kind) {
    case WindowSpec::Kind::kTumbling:
    case WindowSpec::Kind::kHopping:
      if (!windows_.empty()) {
        return windows_.begin()->first + spec_.size_ms + spec_.grace_ms;
      }
      break;
    case WindowSpec::Kind::kSession:
      if (!sessions_.empty()) {
        return sessions_.front().last + spec_.size_ms + spec_.grace_ms;
      }
      break;
    case WindowSpec::Kind::kSliding:
      break;
  }
  return std::nullopt;
}

Aggregates WindowState::Current() const {
  Aggregates a;
  for (const auto& [t, v] : events_) {
    if (t > watermark_ - spec_.size_ms) {
      a.Add(t, v);
    }
  }
  return a;
}

size_t WindowState::open() const {
  switch (spec_.kind) {
    case WindowSpec::Kind::kTumbling:
    case WindowSpec::Kind::kHopping:
      return windows_.size();
    case WindowSpec::Kind::kSession:
      return sessions_.size();
    case WindowSpec::Kind::kSliding:
      return events_.size();
  }
  return 0;
}

std::vector<ClosedWindow> WindowState::Open() const {
  std::vector<ClosedWindow> out;
  switch (spec_.kind) {
    case WindowSpec::Kind::kTumbling:
    case WindowSpec::Kind::kHopping:
      for (const auto& [start, agg] : windows_) {
        out.push_back({start, start + spec_.size_ms, agg});
      }
      break;
    case WindowSpec::Kind::kSession:
      for (const Session& s : sessions_) {
        out.push_back({s.start, s.last + spec_.size_ms, s.agg});
      }
      break;
    case WindowSpec::Kind::kSliding:
      if (seen_) {
        out.push_back({watermark_ - spec_.size_ms, watermark_, Current()});
      }
      break;
  }
  return out;
}

std::string WindowState::Encode() const {
  std::string out = "w2";
  size_t n = open();
  size_t each = spec_.kind == WindowSpec::Kind::kSliding   ? 16
                : spec_.kind == WindowSpec::Kind::kSession ? 96
                                                           : 88;
  out.reserve(2 + 5 * 8 + n * each);
  BinaryWriter w(out);
  w.Int(static_cast<int>(spec_.kind));
  w.Int(seen_ ? 1 : 0);
  w.Int(watermark_);
  w.Int(closed_until_);
  w.Int(static_cast<int64_t>(n));
  switch (spec_.kind) {
    case WindowSpec::Kind::kTumbling:
    case WindowSpec::Kind::kHopping:
      for (const auto& [start, agg] : windows_) {
        w.Int(start);
        WriteAggregates(w, agg);
      }
      break;
    case WindowSpec::Kind::kSession:
      for (const Session& s : sessions_) {
        w.Int(s.start);
        w.Int(s.last);
        WriteAggregates(w, s.agg);
      }
      break;
    case WindowSpec::Kind::kSliding:
      for (const auto& [t, v] : events_) {
        w.Int(t);
        w.Double(v);
      }
      break;
  }
  return out;
}

Result<WindowState> WindowState::Decode(const WindowSpec& spec, std::string_view bytes) {
  if (bytes.substr(0, 2) == "w2") {
    BinaryReader r(bytes.substr(2));
    return DecodeFrom(spec, r);
  }
  // The text form of earlier builds: "w1 <kind> <seen> <watermark> <closed_until> <n>", then
  // one line per window, session or event.
  Reader r(bytes);
  std::string_view magic;
  if (!r.Word(magic) || magic != "w1") {
    return InvalidArgument("window state: not a window state of this version");
  }
  return DecodeFrom(spec, r);
}

int64_t WindowState::OpenIn(std::string_view bytes) {
  int64_t kind = 0, seen = 0, watermark = 0, closed_until = 0, n = 0;
  auto read = [&](auto& r) {
    return r.Int(kind) && r.Int(seen) && r.Int(watermark) && r.Int(closed_until) && r.Int(n) &&
           n >= 0;
  };
  bool ok = false;
  if (bytes.substr(0, 2) == "w2") {
    BinaryReader r(bytes.substr(2));
    ok = read(r);
  } else {
    Reader r(bytes);
    std::string_view magic;
    ok = r.Word(magic) && magic == "w1" && read(r);
  }
  if (!ok) {
    return 0;
  }
  return kind == static_cast<int64_t>(WindowSpec::Kind::kSliding) ? (n > 0 ? 1 : 0) : n;
}

template <typename R>
Result<WindowState> WindowState::DecodeFrom(const WindowSpec& spec, R& r) {
  auto bad = [](std::string_view why) {
    return InvalidArgument(fmt::format("window state: {}", why));
  };
  int64_t kind = 0, seen = 0, n = 0;
  WindowState w(spec);
  if (!r.Int(kind) || !r.Int(seen) || !r.Int(w.watermark_) || !r.Int(w.closed_until_) ||
      !r.Int(n) || n < 0 || (seen != 0 && seen != 1)) {
    return bad("a damaged header");
  }
  if (kind != static_cast<int>(spec.kind)) {
    return bad("kept for another kind of window");
  }
  auto in_range = [](int64_t t) { return t >= -kMaxWindowTime && t <= kMaxWindowTime; };
  if (!in_range(w.watermark_) ||
      (w.closed_until_ != std::numeric_limits<int64_t>::min() && !in_range(w.closed_until_))) {
    return bad("a time out of range");
  }
  w.seen_ = seen == 1;
  size_t bound = spec.kind == WindowSpec::Kind::kSliding ? spec.max_events : spec.max_open;
  if (static_cast<uint64_t>(n) > bound) {
    return bad(fmt::format("holds {} entries, more than the bound of {}", n, bound));
  }
  for (int64_t i = 0; i < n; ++i) {
    bool ok = false;
    switch (spec.kind) {
      case WindowSpec::Kind::kTumbling:
      case WindowSpec::Kind::kHopping: {
        int64_t start = 0;
        Aggregates a;
        ok = r.Int(start) && in_range(start) && ReadAggregates(r, a) && a.count > 0 &&
             (w.windows_.empty() || w.windows_.rbegin()->first < start);
        if (ok) {
          w.windows_.emplace(start, a);
        }
        break;
      }
      case WindowSpec::Kind::kSession: {
        Session s{};
        ok = r.Int(s.start) && r.Int(s.last) && in_range(s.start) && in_range(s.last) &&
             ReadAggregates(r, s.agg) && s.agg.count > 0 && s.start <= s.last &&
             (w.sessions_.empty() || w.sessions_.back().last + spec.size_ms <= s.start);
        if (ok) {
          w.sessions_.push_back(s);
        }
        break;
      }
      case WindowSpec::Kind::kSliding: {
        int64_t t = 0;
        double v = 0;
        ok = r.Int(t) && in_range(t) && r.Double(v) &&
             (w.events_.empty() || w.events_.back().first <= t);
        if (ok) {
          w.events_.emplace_back(t, v);
        }
        break;
      }
    }
    if (!ok) {
      return bad(fmt::format("entry {} is damaged or out of order", i + 1));
    }
  }
  if (!r.AtEnd()) {
    return bad("more bytes than its entries");
  }
  return w;
}

}  // namespace gnomon::rules

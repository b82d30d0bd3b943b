// SPDX-License-Identifier: Apache-2.0
// Window math for stateful rules (../shared/spec/state.md, issue 17): the windows of one
// (rule, key) — tumbling, hopping, sliding and session — over event or ingest time, with
// grace for late events and aggregates computed natively. Pure: no clock, no I/O, no Lua; the
// caller feeds events and the time, takes the windows that closed, and stores the encoded
// state with the call's other effects.
//
// Time. Every event has a time t (ms). The watermark is the largest t observed (or the time
// given to Advance: ingest-time windows advance with the clock). A window [start, end) closes
// once the watermark reaches end + grace; an event is late when every window it would belong to
// has closed (it is counted by the caller and not added).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gnomon/core/status.h"

namespace gnomon::rules {

enum class Agg : uint8_t { kCount, kSum, kAvg, kMin, kMax, kFirst, kLast, kStddev };

// "count", "sum", "avg", "min", "max", "first", "last", "stddev".
std::optional<Agg> ParseAgg(std::string_view name);
std::string_view AggName(Agg agg);

// The running aggregates of the values a window took, in constant space. first and last are by
// event time (ties: the earlier arrival is first, the later last); stddev is the population
// standard deviation (Welford's running variance; merged with Chan's formula).
struct Aggregates {
  int64_t count = 0;
  double sum = 0;
  double min = 0;
  double max = 0;
  double first = 0;
  double last = 0;
  int64_t first_t = 0;
  int64_t last_t = 0;
  double mean = 0;
  double m2 = 0;  // sum of squared differences from the mean

  void Add(int64_t t, double v);
  void Merge(const Aggregates& other);  // `other`'s values as if they arrived after these
  // nullopt: no value (count is 0 for everything but count and sum).
  std::optional<double> Value(Agg agg) const;
  bool operator==(const Aggregates&) const = default;
};

// A duration as rules write it: a number of ms, or a string "250ms", "30s", "10m", "2h", "1d"
// (an integer and one unit). Errors name the text. At most kMaxWindowSpan.
Result<int64_t> ParseDurationMs(std::string_view text);

// Times an event may carry (ms; about ±146 million years, so the sums below cannot overflow),
// and the longest length, hop or grace (2^40 ms, about 35 years).
constexpr int64_t kMaxWindowTime = int64_t{1} << 62;
constexpr int64_t kMaxWindowSpan = int64_t{1} << 40;

struct WindowSpec {
  enum class Kind : uint8_t { kTumbling, kHopping, kSliding, kSession };
  Kind kind = Kind::kTumbling;
  int64_t size_ms = 0;   // tumbling, hopping, sliding: the length; session: the gap
  int64_t hop_ms = 0;    // hopping: how far each window starts after the previous (< size)
  int64_t grace_ms = 0;  // how long after its end a window still takes events
  // Bounds: windows open at once (tumbling, hopping, session), events held (sliding).
  size_t max_open = 64;
  size_t max_events = 10000;

  // Why the spec cannot be used, or empty.
  std::string Problem() const;
};

struct ClosedWindow {
  int64_t start = 0;
  int64_t end = 0;  // exclusive; a session's is its last event + the gap
  Aggregates agg;
  bool operator==(const ClosedWindow&) const = default;
};

class WindowState {
 public:
  explicit WindowState(const WindowSpec& spec) : spec_(spec) {}

  enum class Took { kAccepted, kLate };
  // Adds an event at `t` with `value` (a window without a field counts events: pass 0). The
  // windows that closed as the watermark moved to t are appended to `closed`, by end. Error
  // (nothing changed): the event would take more than the spec's bounds, its time is beyond
  // ±kMaxWindowTime, or its value is not a finite number.
  Result<Took> Add(int64_t t, double value, std::vector<ClosedWindow>& closed);
  // Moves the watermark to `now` (ingest time, or a timer; clamped to ±kMaxWindowTime):
  // appends what closed.
  void Advance(int64_t now, std::vector<ClosedWindow>& closed);
  // When the next window closes (end + grace of the first to go), for a timer; nullopt: none
  // open (sliding windows never close).
  std::optional<int64_t> NextClose() const;
  // A sliding window's aggregates over (watermark - size, watermark].
  Aggregates Current() const;
  // The windows open now, by start: [start, end) with what they took (a session's end is its
  // last event + the gap; a sliding window is one, (watermark - size, watermark]).
  std::vector<ClosedWindow> Open() const;

  int64_t watermark() const { return watermark_; }
  size_t open() const;

  // The state as bytes (for the store: a binary form, "w2"), and back. Decode also reads the
  // text form of earlier builds ("w1"), and refuses bytes it did not write for this kind of
  // window.
  std::string Encode() const;
  static Result<WindowState> Decode(const WindowSpec& spec, std::string_view bytes);
  // The windows open in encoded bytes, read off their header without decoding them (a
  // sliding window that holds events is one); 0 for bytes that are not a window state.
  static int64_t OpenIn(std::string_view bytes);

 private:
  struct Session {
    int64_t start;
    int64_t last;
    Aggregates agg;
  };
  void CloseUntil(int64_t watermark, std::vector<ClosedWindow>& closed);
  bool Late(int64_t t) const;
  template <typename R>
  static Result<WindowState> DecodeFrom(const WindowSpec& spec, R& r);

  WindowSpec spec_;
  bool seen_ = false;  // whether any time was observed (the watermark means something)
  int64_t watermark_ = 0;
  // session: the end of the last closed session (none: the earliest time there is)
  int64_t closed_until_ = std::numeric_limits<int64_t>::min();
  std::map<int64_t, Aggregates> windows_;          // tumbling, hopping: by start
  std::vector<Session> sessions_;                  // session: by start, apart by at least the gap
  std::deque<std::pair<int64_t, double>> events_;  // sliding: by time
};

}  // namespace gnomon::rules

// SPDX-License-Identifier: Apache-2.0
// The window math against a straightforward reference that keeps every event and recomputes
// everything from scratch at each step, on random streams with out-of-order and late events;
// and the cases the spec names, one by one.
#include "gnomon/rules/windows.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>

namespace gnomon::rules {
namespace {

using Kind = WindowSpec::Kind;

struct Ev {
  int64_t t;
  double v;
  int64_t wm_before;  // the watermark when it arrived (seen: whether there was one)
  bool seen;
};

// Aggregates straight from a list of events in arrival order.
struct RefAgg {
  int64_t count = 0;
  double sum = 0, min = 0, max = 0, first = 0, last = 0, stddev = 0;
};

RefAgg Reduce(const std::vector<Ev>& evs) {
  RefAgg a;
  if (evs.empty()) {
    return a;
  }
  a.count = static_cast<int64_t>(evs.size());
  a.min = a.max = evs[0].v;
  const Ev* first = &evs[0];
  const Ev* last = &evs[0];
  for (const Ev& e : evs) {
    a.sum += e.v;
    a.min = std::min(a.min, e.v);
    a.max = std::max(a.max, e.v);
    if (e.t < first->t) {
      first = &e;  // earliest time; ties: the earlier arrival
    }
    if (e.t >= last->t) {
      last = &e;  // latest time; ties: the later arrival
    }
  }
  a.first = first->v;
  a.last = last->v;
  double mean = a.sum / static_cast<double>(a.count);
  double sq = 0;
  for (const Ev& e : evs) {
    sq += (e.v - mean) * (e.v - mean);
  }
  a.stddev = std::sqrt(sq / static_cast<double>(a.count));
  return a;
}

void ExpectSame(const Aggregates& got, const RefAgg& want, const std::string& where) {
  EXPECT_EQ(got.count, want.count) << where;
  if (got.count == 0 || want.count == 0) {
    return;
  }
  EXPECT_DOUBLE_EQ(*got.Value(Agg::kSum), want.sum) << where;
  EXPECT_DOUBLE_EQ(*got.Value(Agg::kMin), want.min) << where;
  EXPECT_DOUBLE_EQ(*got.Value(Agg::kMax), want.max) << where;
  EXPECT_DOUBLE_EQ(*got.Value(Agg::kFirst), want.first) << where;
  EXPECT_DOUBLE_EQ(*got.Value(Agg::kLast), want.last) << where;
  EXPECT_NEAR(*got.Value(Agg::kAvg), want.sum / static_cast<double>(want.count), 1e-9) << where;
  EXPECT_NEAR(*got.Value(Agg::kStddev), want.stddev, 1e-6) << where;
}

struct RefWindow {
  int64_t start, end;
  std::vector<Ev> evs;
};

class Reference {
 public:
  explicit Reference(const WindowSpec& spec) : spec_(spec) {}

  // Whether an event at t is late; else it is kept.
  bool Add(int64_t t, double v) {
    if (Late(t)) {
      return false;
    }
    all_.push_back({t, v, wm_, seen_});
    wm_ = seen_ ? std::max(wm_, t) : t;
    seen_ = true;
    return true;
  }
  void Advance(int64_t now) {
    if (!seen_ || now > wm_) {
      wm_ = now;
      seen_ = true;
    }
  }

  // The windows closed by the watermark and not reported before, by end.
  std::vector<RefWindow> NewlyClosed() {
    std::vector<RefWindow> out;
    for (RefWindow& w : Windows()) {
      if (w.end + spec_.grace_ms <= wm_ && emitted_.insert({w.start, w.end}).second) {
        out.push_back(std::move(w));
      }
    }
    std::sort(out.begin(), out.end(),
              [](const RefWindow& a, const RefWindow& b) { return a.end < b.end; });
    return out;
  }

  // The sliding window's events: time in (watermark - size, watermark], by time then arrival.
  std::vector<Ev> Sliding() const {
    std::vector<Ev> out;
    for (const Ev& e : all_) {
      if (e.t > wm_ - spec_.size_ms) {
        out.push_back(e);
      }
    }
    std::stable_sort(out.begin(), out.end(), [](const Ev& a, const Ev& b) { return a.t < b.t; });
    return out;
  }

 private:
  int64_t Hop() const { return spec_.kind == Kind::kHopping ? spec_.hop_ms : spec_.size_ms; }

  // Every window holding t, by brute force over the grid.
  std::vector<int64_t> StartsHolding(int64_t t) const {
    std::vector<int64_t> starts;
    int64_t hop = Hop();
    int64_t s = (t - spec_.size_ms - 2 * hop) / hop * hop - hop;
    for (; s <= t; s += hop) {
      if (s <= t && t < s + spec_.size_ms) {
        starts.push_back(s);
      }
    }
    return starts;
  }

  bool Late(int64_t t) {
    if (!seen_) {
      return false;
    }
    switch (spec_.kind) {
      case Kind::kTumbling:
      case Kind::kHopping:
        for (int64_t s : StartsHolding(t)) {
          if (s + spec_.size_ms + spec_.grace_ms > wm_) {
            return false;
          }
        }
        return true;
      case Kind::kSession: {
        if (t + spec_.size_ms + spec_.grace_ms <= wm_) {
          return true;
        }
        for (const RefWindow& w : Windows()) {
          bool closed = emitted_.count({w.start, w.end}) != 0;
          if (closed && w.start - spec_.size_ms < t && t < w.end) {
            return true;
          }
        }
        return false;
      }
      case Kind::kSliding:
        return t <= wm_ - spec_.size_ms;
    }
    return false;
  }

  std::vector<RefWindow> Windows() const {
    std::vector<RefWindow> out;
    if (spec_.kind == Kind::kSession) {
      std::vector<Ev> sorted = all_;
      std::stable_sort(sorted.begin(), sorted.end(),
                       [](const Ev& a, const Ev& b) { return a.t < b.t; });
      for (const Ev& e : sorted) {
        if (out.empty() || e.t >= out.back().end) {
          out.push_back({e.t, e.t + spec_.size_ms, {}});
        }
        out.back().end = e.t + spec_.size_ms;
        out.back().evs.push_back(e);
      }
      // Members in arrival order, as the aggregates saw them.
      for (RefWindow& w : out) {
        std::vector<Ev> arrival;
        for (const Ev& e : all_) {
          if (e.t >= w.start && e.t < w.end) {
            arrival.push_back(e);
          }
        }
        w.evs = arrival;
      }
      return out;
    }
    if (spec_.kind == Kind::kSliding) {
      return out;
    }
    std::map<int64_t, RefWindow> by_start;
    for (const Ev& e : all_) {
      for (int64_t s : StartsHolding(e.t)) {
        // A window that had closed when the event came did not take it.
        if (e.seen && s + spec_.size_ms + spec_.grace_ms <= e.wm_before) {
          continue;
        }
        auto [it, fresh] = by_start.try_emplace(s, RefWindow{s, s + spec_.size_ms, {}});
        it->second.evs.push_back(e);
      }
    }
    for (auto& [s, w] : by_start) {
      out.push_back(std::move(w));
    }
    return out;
  }

  WindowSpec spec_;
  bool seen_ = false;
  int64_t wm_ = 0;
  std::vector<Ev> all_;
  std::set<std::pair<int64_t, int64_t>> emitted_;
};

WindowSpec RandomSpec(std::mt19937_64& rng, Kind kind) {
  WindowSpec s;
  s.kind = kind;
  s.size_ms = std::uniform_int_distribution<int64_t>(5, 60)(rng);
  if (kind == Kind::kHopping) {
    s.hop_ms = std::uniform_int_distribution<int64_t>(1, s.size_ms - 1)(rng);
  }
  s.grace_ms = std::uniform_int_distribution<int64_t>(0, 3)(rng) == 0
                   ? 0
                   : std::uniform_int_distribution<int64_t>(0, 40)(rng);
  s.max_open = 100000;
  s.max_events = 100000;
  return s;
}

void RunRandomStream(Kind kind, uint64_t seed) {
  std::mt19937_64 rng(seed);
  WindowSpec spec = RandomSpec(rng, kind);
  ASSERT_EQ(spec.Problem(), "");
  WindowState state(spec);
  Reference ref(spec);
  int64_t clock = std::uniform_int_distribution<int64_t>(-1000, 1000)(rng);
  std::uniform_int_distribution<int> pct(0, 99);
  // Mostly small steps with jitter (out of order within a few windows), some far-late events,
  // some quiet stretches (sessions end), some ticks of the clock without an event.
  size_t late = 0;
  for (int i = 0; i < 400; ++i) {
    std::string where =
        fmt::format("seed {} step {} (kind {}, size {}, hop {}, grace {})", seed, i,
                    static_cast<int>(kind), spec.size_ms, spec.hop_ms, spec.grace_ms);
    std::vector<ClosedWindow> got;
    int p = pct(rng);
    if (p < 5) {
      int64_t now = clock + std::uniform_int_distribution<int64_t>(0, 3 * spec.size_ms)(rng);
      state.Advance(now, got);
      ref.Advance(now);
    } else {
      clock += p < 10 ? std::uniform_int_distribution<int64_t>(spec.size_ms, 4 * spec.size_ms)(rng)
                      : std::uniform_int_distribution<int64_t>(0, spec.size_ms / 3 + 1)(rng);
      int64_t t = clock - std::uniform_int_distribution<int64_t>(0, spec.size_ms)(rng);
      if (p >= 95) {
        t -= 10 * spec.size_ms;  // far late
      }
      double v = static_cast<double>(std::uniform_int_distribution<int>(-50, 50)(rng));
      auto took = state.Add(t, v, got);
      ASSERT_TRUE(took.ok()) << took.status().message() << " at " << where;
      bool kept = ref.Add(t, v);
      ASSERT_EQ(*took == WindowState::Took::kAccepted, kept) << "t " << t << " at " << where;
      late += kept ? 0 : 1;
    }
    std::vector<RefWindow> want = ref.NewlyClosed();
    ASSERT_EQ(got.size(), want.size()) << where;
    for (size_t k = 0; k < got.size(); ++k) {
      EXPECT_EQ(got[k].start, want[k].start) << where;
      EXPECT_EQ(got[k].end, want[k].end) << where;
      ExpectSame(got[k].agg, Reduce(want[k].evs), where + fmt::format(" window {}", k));
    }
    if (kind == Kind::kSliding) {
      ExpectSame(state.Current(), Reduce(ref.Sliding()), where + " current");
    }
    if (i % 37 == 0) {  // what the store keeps is all there is
      auto restored = WindowState::Decode(spec, state.Encode());
      ASSERT_TRUE(restored.ok()) << restored.status().message() << " at " << where;
      ASSERT_EQ(restored->Encode(), state.Encode()) << where;
      state = std::move(restored).value();
    }
  }
  EXPECT_GT(late, 0u) << "the stream had late events (seed " << seed << ")";
}

class WindowReferenceTest : public ::testing::TestWithParam<Kind> {};

TEST_P(WindowReferenceTest, MatchesTheReferenceOnRandomStreams) {
  for (uint64_t seed = 1; seed <= 60; ++seed) {
    RunRandomStream(GetParam(), seed);
  }
}

std::string KindName(const ::testing::TestParamInfo<Kind>& info) {
  switch (info.param) {
    case Kind::kTumbling:
      return "Tumbling";
    case Kind::kHopping:
      return "Hopping";
    case Kind::kSliding:
      return "Sliding";
    case Kind::kSession:
      return "Session";
  }
  return "Unknown";
}

INSTANTIATE_TEST_SUITE_P(EveryKind, WindowReferenceTest,
                         ::testing::Values(Kind::kTumbling, Kind::kHopping, Kind::kSession,
                                           Kind::kSliding),
                         KindName);

TEST(WindowTest, TumblingClosesAtEndPlusGraceAndTakesEventsUntilThen) {
  WindowState w({.kind = Kind::kTumbling, .size_ms = 10, .grace_ms = 5});
  std::vector<ClosedWindow> closed;
  EXPECT_EQ(*w.Add(3, 1, closed), WindowState::Took::kAccepted);
  EXPECT_EQ(*w.Add(12, 2, closed), WindowState::Took::kAccepted);
  EXPECT_EQ(*w.Add(9, 3, closed), WindowState::Took::kAccepted) << "within grace";
  EXPECT_TRUE(closed.empty());
  EXPECT_EQ(w.NextClose(), 15);
  EXPECT_EQ(*w.Add(15, 4, closed), WindowState::Took::kAccepted);
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].start, 0);
  EXPECT_EQ(closed[0].end, 10);
  EXPECT_EQ(closed[0].agg.count, 2);
  EXPECT_EQ(*closed[0].agg.Value(Agg::kFirst), 1);
  EXPECT_EQ(*closed[0].agg.Value(Agg::kLast), 3);
  closed.clear();
  EXPECT_EQ(*w.Add(8, 5, closed), WindowState::Took::kLate);
  EXPECT_EQ(w.open(), 1u);
  w.Advance(25, closed);
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].start, 10);
  EXPECT_EQ(*closed[0].agg.Value(Agg::kSum), 6);
  EXPECT_EQ(w.NextClose(), std::nullopt);
}

TEST(WindowTest, AHoppingEventGoesIntoEveryWindowThatHoldsIt) {
  WindowState w({.kind = Kind::kHopping, .size_ms = 10, .hop_ms = 5});
  std::vector<ClosedWindow> closed;
  ASSERT_TRUE(w.Add(7, 1, closed).ok());  // [0,10) and [5,15)
  EXPECT_EQ(w.open(), 2u);
  w.Advance(100, closed);
  ASSERT_EQ(closed.size(), 2u);
  EXPECT_EQ(closed[0].start, 0);
  EXPECT_EQ(closed[1].start, 5);
  EXPECT_EQ(closed[1].agg.count, 1);
}

TEST(WindowTest, AnEventBetweenTwoSessionsMergesThem) {
  WindowState w({.kind = Kind::kSession, .size_ms = 10, .grace_ms = 100});
  std::vector<ClosedWindow> closed;
  ASSERT_TRUE(w.Add(0, 1, closed).ok());
  ASSERT_TRUE(w.Add(18, 3, closed).ok());
  EXPECT_EQ(w.open(), 2u);
  ASSERT_TRUE(w.Add(9, 2, closed).ok());  // within 10 of both
  EXPECT_EQ(w.open(), 1u);
  w.Advance(1000, closed);
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].start, 0);
  EXPECT_EQ(closed[0].end, 28);
  EXPECT_EQ(closed[0].agg.count, 3);
  EXPECT_EQ(*closed[0].agg.Value(Agg::kFirst), 1);
  EXPECT_EQ(*closed[0].agg.Value(Agg::kLast), 3);
  // An event reaching into the closed session is late.
  closed.clear();
  EXPECT_EQ(*w.Add(990, 9, closed), WindowState::Took::kAccepted);
  EXPECT_EQ(*w.Add(30, 9, closed), WindowState::Took::kLate);
}

TEST(WindowTest, SlidingHoldsTheLastSizeOfEvents) {
  WindowState w({.kind = Kind::kSliding, .size_ms = 10});
  std::vector<ClosedWindow> closed;
  for (int t = 0; t < 30; ++t) {
    ASSERT_TRUE(w.Add(t, t, closed).ok());
  }
  Aggregates now = w.Current();
  EXPECT_EQ(now.count, 10);  // 20..29
  EXPECT_EQ(*now.Value(Agg::kMin), 20);
  EXPECT_EQ(*now.Value(Agg::kAvg), 24.5);
  EXPECT_TRUE(closed.empty()) << "a sliding window never closes";
  EXPECT_EQ(w.NextClose(), std::nullopt);
}

TEST(WindowTest, AggregatesOfKnownValues) {
  Aggregates a;
  int64_t t = 0;
  for (double v : {2, 4, 4, 4, 5, 5, 7, 9}) {
    a.Add(t++, v);
  }
  EXPECT_EQ(*a.Value(Agg::kCount), 8);
  EXPECT_EQ(*a.Value(Agg::kSum), 40);
  EXPECT_EQ(*a.Value(Agg::kAvg), 5);
  EXPECT_DOUBLE_EQ(*a.Value(Agg::kStddev), 2);  // population
  Aggregates b, c;
  for (int i = 0; i < 4; ++i) {
    b.Add(i, std::vector<double>{2, 4, 4, 4}[i]);
    c.Add(i + 4, std::vector<double>{5, 5, 7, 9}[i]);
  }
  b.Merge(c);
  EXPECT_DOUBLE_EQ(*b.Value(Agg::kStddev), 2);
  EXPECT_EQ(*b.Value(Agg::kLast), 9);
  EXPECT_EQ(Aggregates().Value(Agg::kAvg), std::nullopt);
  EXPECT_EQ(*Aggregates().Value(Agg::kCount), 0);
  for (std::string_view name : {"count", "sum", "avg", "min", "max", "first", "last", "stddev"}) {
    ASSERT_TRUE(ParseAgg(name).has_value()) << name;
    EXPECT_EQ(AggName(*ParseAgg(name)), name);
  }
  EXPECT_FALSE(ParseAgg("median").has_value());
}

TEST(WindowTest, BoundsFailTheEventAndChangeNothing) {
  WindowState tumbling({.kind = Kind::kTumbling, .size_ms = 10, .grace_ms = 1000, .max_open = 3});
  std::vector<ClosedWindow> closed;
  for (int t : {0, 10, 20}) {
    ASSERT_TRUE(tumbling.Add(t, 1, closed).ok());
  }
  std::string before = tumbling.Encode();
  auto over = tumbling.Add(30, 1, closed);
  ASSERT_FALSE(over.ok());
  EXPECT_NE(over.status().message().find("bound of 3 open windows"), std::string::npos)
      << over.status().message();
  EXPECT_EQ(tumbling.Encode(), before);
  EXPECT_TRUE(tumbling.Add(25, 1, closed).ok()) << "an open window still takes events";

  WindowState sliding({.kind = Kind::kSliding, .size_ms = 100, .max_events = 2});
  ASSERT_TRUE(sliding.Add(0, 1, closed).ok());
  ASSERT_TRUE(sliding.Add(1, 1, closed).ok());
  EXPECT_FALSE(sliding.Add(2, 1, closed).ok());
  EXPECT_TRUE(sliding.Add(100, 1, closed).ok()) << "0 left the window";
}

TEST(WindowTest, SpecsAndStatesThatCannotBeUsedAreRefusedWithWhy) {
  EXPECT_NE(WindowSpec{.kind = Kind::kTumbling}.Problem(), "");
  EXPECT_NE((WindowSpec{.kind = Kind::kHopping, .size_ms = 10, .hop_ms = 10}.Problem()), "");
  EXPECT_NE((WindowSpec{.kind = Kind::kSession, .size_ms = 10, .grace_ms = -1}.Problem()), "");
  EXPECT_EQ((WindowSpec{.kind = Kind::kHopping, .size_ms = 10, .hop_ms = 5}.Problem()), "");
  // A length a million hops long would put every event into a million windows.
  EXPECT_NE((WindowSpec{.kind = Kind::kHopping, .size_ms = 1000000, .hop_ms = 1}.Problem()), "");
  EXPECT_NE((WindowSpec{.kind = Kind::kTumbling, .size_ms = kMaxWindowSpan + 1}.Problem()), "");

  // Times far in the future or past, and values that are not numbers, are refused.
  WindowState t({.kind = Kind::kSession, .size_ms = kMaxWindowSpan, .grace_ms = kMaxWindowSpan});
  std::vector<ClosedWindow> none;
  EXPECT_TRUE(t.Add(kMaxWindowTime, 1, none).ok());
  EXPECT_TRUE(t.Add(kMaxWindowTime - 1, 1, none).ok());
  EXPECT_FALSE(t.Add(std::numeric_limits<int64_t>::max(), 1, none).ok());
  EXPECT_FALSE(t.Add(std::numeric_limits<int64_t>::min(), 1, none).ok());
  EXPECT_FALSE(t.Add(kMaxWindowTime, std::numeric_limits<double>::infinity(), none).ok());
  EXPECT_FALSE(t.Add(kMaxWindowTime, std::nan(""), none).ok());
  t.Advance(std::numeric_limits<int64_t>::max(), none);
  EXPECT_EQ(t.watermark(), kMaxWindowTime);
  EXPECT_TRUE(
      WindowState::Decode({.kind = Kind::kSession, .size_ms = kMaxWindowSpan}, t.Encode()).ok());
  // Sums that overflowed are kept as they are: the state still reads back.
  WindowState big({.kind = Kind::kTumbling, .size_ms = 10});
  ASSERT_TRUE(big.Add(1, 1e308, none).ok());
  ASSERT_TRUE(big.Add(2, 1e308, none).ok());
  auto back = WindowState::Decode({.kind = Kind::kTumbling, .size_ms = 10}, big.Encode());
  ASSERT_TRUE(back.ok()) << back.status().message() << " " << big.Encode();
  EXPECT_EQ(back->Encode(), big.Encode());

  WindowSpec spec{.kind = Kind::kSession, .size_ms = 10, .grace_ms = 100};
  WindowState w(spec);
  std::vector<ClosedWindow> closed;
  ASSERT_TRUE(w.Add(0, 1, closed).ok());
  ASSERT_TRUE(w.Add(50, 1, closed).ok());
  std::string good = w.Encode();
  ASSERT_TRUE(WindowState::Decode(spec, good).ok());
  for (std::string bad :
       {std::string(""), std::string("w2 3 1 0 0 0"), good + " 1", good.substr(0, good.size() - 3),
        std::string("w1 3 1 0 0 -1"), std::string("w1 3 1 -9223372036854775808 0 0"),
        std::string("w1 3 1 0 0 1\n9223372036854775807 9223372036854775807 1 1 1 1 1 1 0 0 1 0")}) {
    EXPECT_FALSE(WindowState::Decode(spec, bad).ok()) << bad;
  }
  EXPECT_FALSE(WindowState::Decode({.kind = Kind::kTumbling, .size_ms = 10}, good).ok())
      << "another kind";
  ASSERT_EQ(w.open(), 2u);
  EXPECT_FALSE(WindowState::Decode(
                   {.kind = Kind::kSession, .size_ms = 10, .grace_ms = 100, .max_open = 1}, good)
                   .ok())
      << "over the bound";
  EXPECT_EQ(good.substr(0, 2), "w2") << "binary";
  auto wrong_order = WindowState::Decode(
      spec, "w1 3 1 60 0 2\n50 50 1 1 1 1 1 1 50 50 1 0\n0 0 1 1 1 1 1 1 0 0 1 0");
  ASSERT_FALSE(wrong_order.ok());
  EXPECT_NE(wrong_order.status().message().find("entry 2"), std::string::npos)
      << wrong_order.status().message();
}

// Rows written by earlier builds hold the text form ("w1"): it still reads, as the same state.
TEST(WindowStateTest, TheTextFormOfEarlierBuildsStillReads) {
  WindowSpec spec{.kind = Kind::kTumbling, .size_ms = 10};
  WindowState now(spec);
  std::vector<ClosedWindow> closed;
  ASSERT_TRUE(now.Add(1, 2.0, closed).ok());
  ASSERT_TRUE(now.Add(3, 4.0, closed).ok());
  auto old = WindowState::Decode(spec, "w1 0 1 3 -9223372036854775808 1\n0 2 6 2 4 2 4 1 3 3 2");
  ASSERT_TRUE(old.ok()) << old.status().message();
  EXPECT_EQ(old->Encode(), now.Encode());
  EXPECT_EQ(old->Open(), now.Open());
}

// The open windows read off encoded bytes, without decoding them.
TEST(WindowStateTest, OpenWindowsAreReadOffTheEncodedHeader) {
  std::vector<ClosedWindow> closed;
  WindowState hopping({.kind = Kind::kHopping, .size_ms = 10, .hop_ms = 5});
  ASSERT_TRUE(hopping.Add(7, 1, closed).ok());  // in [0, 10) and [5, 15)
  EXPECT_EQ(WindowState::OpenIn(hopping.Encode()), 2);
  WindowState sliding({.kind = Kind::kSliding, .size_ms = 10});
  EXPECT_EQ(WindowState::OpenIn(sliding.Encode()), 0);
  ASSERT_TRUE(sliding.Add(1, 1, closed).ok());
  ASSERT_TRUE(sliding.Add(2, 1, closed).ok());
  EXPECT_EQ(WindowState::OpenIn(sliding.Encode()), 1) << "a sliding window is one";
  EXPECT_EQ(WindowState::OpenIn("w1 0 1 3 -9223372036854775808 1\n0 2 6 2 4 2 4 1 3 3 2"), 1);
  EXPECT_EQ(WindowState::OpenIn("w2"), 0);
  EXPECT_EQ(WindowState::OpenIn("junk"), 0);
}

}  // namespace
}  // namespace gnomon::rules

// SPDX-License-Identifier: Apache-2.0
#include "pattern.h"

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstring>

#include "sandbox.h"

namespace gnomon::rules {
namespace {

constexpr int kMaxCaptures = 32;
// Recursion depth of the matcher (one level per quantified item or capture still open); the
// same bound Lua 5.2 introduced, so a pattern of thousands of items cannot exhaust the C stack.
constexpr int kMaxDepth = 200;
constexpr ptrdiff_t kUnfinished = -1;
constexpr ptrdiff_t kPosition = -2;
constexpr char kEsc = '%';
constexpr const char* kSpecials = "^$*+?.([%-";

// Why a match stopped early. Matching code returns nullptr and sets this; the Lua-facing
// functions raise it after the matcher's frames are gone.
enum class Abort { kNone, kMalformed, kTooComplex, kBudget };

struct Matcher {
  const char* src;
  const char* src_end;
  const char* pat_end;
  lua_State* L;
  int level;
  int depth;
  int64_t countdown;
  Abort abort;
  const char* why;  // static text for kMalformed / kTooComplex; the budget's reason for kBudget
  struct {
    const char* init;
    ptrdiff_t len;
  } capture[kMaxCaptures];

  // One unit of work; every kMatchStepsPerCheck of them ask the budget.
  bool Step() {
    if (--countdown > 0) {
      return true;
    }
    countdown = kMatchStepsPerCheck;
    MatchBudget* b = CurrentMatchBudget();
    if (b == nullptr) {
      return true;
    }
    if (const char* stop = b->check(b->ctx); stop != nullptr) {
      Fail(Abort::kBudget, stop);
      return false;
    }
    return true;
  }

  const char* Fail(Abort a, const char* text) {
    if (abort == Abort::kNone) {
      abort = a;
      why = text;
    }
    return nullptr;
  }

  static bool ClassMatches(int c, int cl) {
    bool res;
    switch (std::tolower(cl)) {
      case 'a': res = std::isalpha(c) != 0; break;
      case 'c': res = std::iscntrl(c) != 0; break;
      case 'd': res = std::isdigit(c) != 0; break;
      case 'l': res = std::islower(c) != 0; break;
      case 'p': res = std::ispunct(c) != 0; break;
      case 's': res = std::isspace(c) != 0; break;
      case 'u': res = std::isupper(c) != 0; break;
      case 'w': res = std::isalnum(c) != 0; break;
      case 'x': res = std::isxdigit(c) != 0; break;
      case 'z': res = c == 0; break;
      default: return cl == c;
    }
    return std::isupper(cl) ? !res : res;
  }

  // `p` is at '[', `last` at the closing ']'.
  static bool SetMatches(int c, const char* p, const char* last) {
    bool match_means = true;
    if (static_cast<unsigned char>(p[1]) == '^') {
      match_means = false;
      ++p;
    }
    while (++p < last) {
      if (*p == kEsc) {
        ++p;
        if (ClassMatches(c, static_cast<unsigned char>(*p))) {
          return match_means;
        }
      } else if (p[1] == '-' && p + 2 < last) {
        p += 2;
        if (static_cast<unsigned char>(p[-2]) <= c && c <= static_cast<unsigned char>(*p)) {
          return match_means;
        }
      } else if (static_cast<unsigned char>(*p) == c) {
        return match_means;
      }
    }
    return !match_means;
  }

  // The end of the single-character class starting at `p`, or nullptr (malformed).
  const char* ClassEnd(const char* p) {
    char c = *p++;
    if (c == kEsc) {
      if (p >= pat_end) {
        return Fail(Abort::kMalformed, "malformed pattern (ends with '%')");
      }
      return p + 1;
    }
    if (c == '[') {
      if (p < pat_end && *p == '^') {
        ++p;
      }
      do {  // the first character of a set is never its end: "[]]" holds ']'
        if (p >= pat_end) {
          return Fail(Abort::kMalformed, "malformed pattern (missing ']')");
        }
        c = *p++;
        if (c == kEsc && p < pat_end) {
          ++p;
        }
      } while (p >= pat_end || *p != ']');
      return p + 1;
    }
    return p;
  }

  bool SingleMatches(const char* s, const char* p, const char* ep) const {
    if (s >= src_end) {
      return false;
    }
    int c = static_cast<unsigned char>(*s);
    switch (*p) {
      case '.': return true;
      case kEsc: return ClassMatches(c, static_cast<unsigned char>(p[1]));
      case '[': return SetMatches(c, p, ep - 1);
      default: return static_cast<unsigned char>(*p) == c;
    }
  }

  const char* Balance(const char* s, const char* p) {
    if (p + 1 >= pat_end) {
      return Fail(Abort::kMalformed, "malformed pattern (missing arguments to '%b')");
    }
    if (s >= src_end || *s != *p) {
      return nullptr;
    }
    char open = p[0], close = p[1];
    int depth_count = 1;
    while (++s < src_end) {
      if (!Step()) {
        return nullptr;
      }
      if (*s == close) {
        if (--depth_count == 0) {
          return s + 1;
        }
      } else if (*s == open) {
        ++depth_count;
      }
    }
    return nullptr;
  }

  const char* MaxExpand(const char* s, const char* p, const char* ep) {
    ptrdiff_t i = 0;
    while (SingleMatches(s + i, p, ep)) {
      if (!Step()) {
        return nullptr;
      }
      ++i;
    }
    while (i >= 0) {  // try the longest run first, then shorter ones
      const char* res = Match(s + i, ep + 1);
      if (res != nullptr || abort != Abort::kNone) {
        return res;
      }
      --i;
    }
    return nullptr;
  }

  const char* MinExpand(const char* s, const char* p, const char* ep) {
    while (true) {
      const char* res = Match(s, ep + 1);
      if (res != nullptr || abort != Abort::kNone) {
        return res;
      }
      if (!SingleMatches(s, p, ep)) {
        return nullptr;
      }
      ++s;
    }
  }

  const char* StartCapture(const char* s, const char* p, ptrdiff_t what) {
    if (level >= kMaxCaptures) {
      return Fail(Abort::kMalformed, "too many captures");
    }
    capture[level].init = s;
    capture[level].len = what;
    ++level;
    const char* res = Match(s, p);
    if (res == nullptr) {
      --level;
    }
    return res;
  }

  const char* EndCapture(const char* s, const char* p) {
    int l = -1;
    for (int i = level - 1; i >= 0; --i) {
      if (capture[i].len == kUnfinished) {
        l = i;
        break;
      }
    }
    if (l < 0) {
      return Fail(Abort::kMalformed, "invalid pattern capture");
    }
    capture[l].len = s - capture[l].init;
    const char* res = Match(s, p);
    if (res == nullptr) {
      capture[l].len = kUnfinished;
    }
    return res;
  }

  const char* BackReference(const char* s, int digit) {
    int l = digit - '1';
    if (l < 0 || l >= level || capture[l].len == kUnfinished) {
      return Fail(Abort::kMalformed, "invalid capture index");
    }
    size_t len = static_cast<size_t>(capture[l].len);
    if (static_cast<size_t>(src_end - s) >= len && std::memcmp(capture[l].init, s, len) == 0) {
      return s + len;
    }
    return nullptr;
  }

  // The end of the match of pattern `p` at `s`, or nullptr (no match, or `abort` is set).
  const char* Match(const char* s, const char* p) {
    if (++depth > kMaxDepth) {
      --depth;
      return Fail(Abort::kTooComplex, "pattern too complex (more than 200 nested items)");
    }
    const char* res = MatchLoop(s, p);
    --depth;
    return res;
  }

  const char* MatchLoop(const char* s, const char* p) {
    while (true) {
      if (!Step()) {
        return nullptr;
      }
      if (p >= pat_end) {
        return s;
      }
      switch (*p) {
        case '(':
          if (p + 1 < pat_end && p[1] == ')') {
            return StartCapture(s, p + 2, kPosition);
          }
          return StartCapture(s, p + 1, kUnfinished);
        case ')':
          return EndCapture(s, p + 1);
        case '$':
          if (p + 1 == pat_end) {
            return s == src_end ? s : nullptr;
          }
          break;
        case kEsc:
          if (p + 1 < pat_end && p[1] == 'b') {
            s = Balance(s, p + 2);
            if (s == nullptr) {
              return nullptr;
            }
            p += 4;
            continue;
          }
          if (p + 1 < pat_end && p[1] == 'f') {
            p += 2;
            if (p >= pat_end || *p != '[') {
              return Fail(Abort::kMalformed, "missing '[' after '%f' in pattern");
            }
            const char* ep = ClassEnd(p);
            if (ep == nullptr) {
              return nullptr;
            }
            int prev = s == src ? 0 : static_cast<unsigned char>(s[-1]);
            int cur = s < src_end ? static_cast<unsigned char>(*s) : 0;
            if (SetMatches(prev, p, ep - 1) || !SetMatches(cur, p, ep - 1)) {
              return nullptr;
            }
            p = ep;
            continue;
          }
          if (p + 1 < pat_end && std::isdigit(static_cast<unsigned char>(p[1]))) {
            s = BackReference(s, p[1]);
            if (s == nullptr) {
              return nullptr;
            }
            p += 2;
            continue;
          }
          break;
        default:
          break;
      }
      const char* ep = ClassEnd(p);
      if (ep == nullptr) {
        return nullptr;
      }
      bool m = SingleMatches(s, p, ep);
      char q = ep < pat_end ? *ep : '\0';
      switch (q) {
        case '?': {
          if (m) {
            const char* res = Match(s + 1, ep + 1);
            if (res != nullptr || abort != Abort::kNone) {
              return res;
            }
          }
          p = ep + 1;
          continue;
        }
        case '*': return MaxExpand(s, p, ep);
        case '+': return m ? MaxExpand(s + 1, p, ep) : nullptr;
        case '-': return MinExpand(s, p, ep);
        default:
          if (!m) {
            return nullptr;
          }
          ++s;
          p = ep;
          continue;
      }
    }
  }
};

void Init(Matcher& m, lua_State* L, const char* s, size_t ls, const char* p, size_t lp) {
  m.src = s;
  m.src_end = s + ls;
  m.pat_end = p + lp;
  m.L = L;
  m.level = 0;
  m.depth = 0;
  m.countdown = kMatchStepsPerCheck;
  m.abort = Abort::kNone;
  m.why = nullptr;
}

// Raises the matcher's abort. Called with no C++ object alive in the caller.
int RaiseAbort(lua_State* L, const Matcher& m, const char* fn) {
  if (m.abort == Abort::kBudget) {
    MatchBudget* b = CurrentMatchBudget();
    if (b != nullptr && b->raise_stop) {
      lua_pushlightuserdata(L, StopSentinel());
      return lua_error(L);
    }
    return luaL_error(L, "string.%s: %s", fn, m.why);
  }
  return luaL_error(L, "string.%s: %s", fn, m.why);
}

// Pushes capture `i` of a match spanning [s, e); returns false with the matcher's abort set
// on a bad index.
bool PushCapture(Matcher& m, int i, const char* s, const char* e) {
  if (i >= m.level) {
    if (i != 0) {
      m.Fail(Abort::kMalformed, "invalid capture index");
      return false;
    }
    lua_pushlstring(m.L, s, static_cast<size_t>(e - s));
    return true;
  }
  ptrdiff_t len = m.capture[i].len;
  if (len == kUnfinished) {
    m.Fail(Abort::kMalformed, "unfinished capture");
    return false;
  }
  if (len == kPosition) {
    lua_pushinteger(m.L, m.capture[i].init - m.src + 1);
  } else {
    lua_pushlstring(m.L, m.capture[i].init, static_cast<size_t>(len));
  }
  return true;
}

// Pushes every capture (or the whole match when there are none); -1 on a bad capture.
int PushCaptures(Matcher& m, const char* s, const char* e) {
  int n = (m.level == 0 && s != nullptr) ? 1 : m.level;
  luaL_checkstack(m.L, n, "too many captures");
  for (int i = 0; i < n; ++i) {
    if (!PushCapture(m, i, s, e)) {
      lua_pop(m.L, i);
      return -1;
    }
  }
  return n;
}

// The 0-based start of a search from argument `arg` (1-based, negative from the end), clamped
// to the subject as Lua 5.1 and LuaJIT (without its 5.2 compatibility) do.
ptrdiff_t StartIndex(lua_State* L, int arg, size_t len) {
  ptrdiff_t init = luaL_optinteger(L, arg, 1);
  if (init < 0) {
    init += static_cast<ptrdiff_t>(len);
  } else {
    init -= 1;
  }
  if (init < 0) {
    init = 0;
  }
  return std::min(init, static_cast<ptrdiff_t>(len));
}

const char* PlainFind(const char* s, size_t ls, const char* p, size_t lp) {
  if (lp == 0) {
    return s;
  }
  if (lp > ls) {
    return nullptr;
  }
  const void* r = memmem(s, ls, p, lp);
  return static_cast<const char*>(r);
}

int FindOrMatch(lua_State* L, bool find) {
  size_t ls = 0, lp = 0;
  const char* s = luaL_checklstring(L, 1, &ls);
  const char* p = luaL_checklstring(L, 2, &lp);
  ptrdiff_t init = StartIndex(L, 3, ls);
  const char* fn = find ? "find" : "match";
  if (find && (lua_toboolean(L, 4) || std::strpbrk(p, kSpecials) == nullptr) &&
      std::strlen(p) == lp) {
    // Plain search: linear in the subject (memmem), nothing to budget.
    const char* at = PlainFind(s + init, ls - static_cast<size_t>(init), p, lp);
    if (at == nullptr) {
      lua_pushnil(L);
      return 1;
    }
    lua_pushinteger(L, at - s + 1);
    lua_pushinteger(L, at - s + static_cast<ptrdiff_t>(lp));
    return 2;
  }
  Matcher m;
  Init(m, L, s, ls, p, lp);
  bool anchor = lp > 0 && *p == '^';
  if (anchor) {
    ++p;
  }
  const char* s1 = s + init;
  do {
    m.level = 0;
    const char* e = m.Match(s1, p);
    if (m.abort != Abort::kNone) {
      return RaiseAbort(L, m, fn);
    }
    if (e != nullptr) {
      int n;
      if (find) {
        lua_pushinteger(L, s1 - s + 1);
        lua_pushinteger(L, e - s);
        n = PushCaptures(m, nullptr, nullptr);
        if (n < 0) {
          return RaiseAbort(L, m, fn);
        }
        return n + 2;
      }
      n = PushCaptures(m, s1, e);
      if (n < 0) {
        return RaiseAbort(L, m, fn);
      }
      return n;
    }
    if (!m.Step()) {
      return RaiseAbort(L, m, fn);
    }
  } while (s1++ < m.src_end && !anchor);
  lua_pushnil(L);
  return 1;
}

int Find(lua_State* L) { return FindOrMatch(L, true); }
int MatchFn(lua_State* L) { return FindOrMatch(L, false); }

// The iterator of gmatch: upvalues are the subject, the pattern and the next position.
int GmatchNext(lua_State* L) {
  size_t ls = 0, lp = 0;
  const char* s = lua_tolstring(L, lua_upvalueindex(1), &ls);
  const char* p = lua_tolstring(L, lua_upvalueindex(2), &lp);
  Matcher m;
  Init(m, L, s, ls, p, lp);
  for (const char* src = s + lua_tointeger(L, lua_upvalueindex(3)); src <= m.src_end; ++src) {
    m.level = 0;
    const char* e = m.Match(src, p);
    if (m.abort != Abort::kNone) {
      return RaiseAbort(L, m, "gmatch");
    }
    if (e != nullptr) {
      ptrdiff_t next = e - s;
      if (e == src) {
        ++next;  // an empty match: move on by one
      }
      lua_pushinteger(L, next);
      lua_replace(L, lua_upvalueindex(3));
      int n = PushCaptures(m, src, e);
      if (n < 0) {
        return RaiseAbort(L, m, "gmatch");
      }
      return n;
    }
    if (!m.Step()) {
      return RaiseAbort(L, m, "gmatch");
    }
  }
  return 0;
}

int Gmatch(lua_State* L) {
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  lua_settop(L, 2);
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, GmatchNext, 3);
  return 1;
}

// Appends the replacement of one match to `b` (gsub). False: the matcher's abort is set.
bool AddReplacement(Matcher& m, luaL_Buffer* b, const char* s, const char* e) {
  lua_State* L = m.L;
  switch (lua_type(L, 3)) {
    case LUA_TNUMBER:
    case LUA_TSTRING: {
      size_t l = 0;
      const char* news = lua_tolstring(L, 3, &l);
      for (size_t i = 0; i < l; ++i) {
        if (news[i] != kEsc) {
          luaL_addchar(b, news[i]);
          continue;
        }
        ++i;
        if (i >= l || !std::isdigit(static_cast<unsigned char>(news[i]))) {
          if (i < l) {
            luaL_addchar(b, news[i]);
          }
          continue;
        }
        if (news[i] == '0') {
          luaL_addlstring(b, s, static_cast<size_t>(e - s));
          continue;
        }
        if (!PushCapture(m, news[i] - '1', s, e)) {
          return false;
        }
        luaL_addvalue(b);
      }
      return true;
    }
    case LUA_TFUNCTION: {
      lua_pushvalue(L, 3);
      int n = PushCaptures(m, s, e);
      if (n < 0) {
        lua_pop(L, 1);
        return false;
      }
      lua_call(L, n, 1);
      break;
    }
    case LUA_TTABLE:
      if (!PushCapture(m, 0, s, e)) {
        return false;
      }
      lua_gettable(L, 3);
      break;
    default:
      break;
  }
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    luaL_addlstring(b, s, static_cast<size_t>(e - s));  // keep the original text
    return true;
  }
  if (!lua_isstring(L, -1)) {
    m.Fail(Abort::kMalformed, "invalid replacement value (not a string or number)");
    lua_pop(L, 1);
    return false;
  }
  luaL_addvalue(b);
  return true;
}

int Gsub(lua_State* L) {
  size_t ls = 0, lp = 0;
  const char* src = luaL_checklstring(L, 1, &ls);
  const char* p = luaL_checklstring(L, 2, &lp);
  int tr = lua_type(L, 3);
  luaL_argcheck(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE,
                3, "string/function/table expected");
  lua_Integer max_s = luaL_optinteger(L, 4, static_cast<lua_Integer>(ls) + 1);
  bool anchor = lp > 0 && *p == '^';
  if (anchor) {
    ++p;
  }
  Matcher m;
  Init(m, L, src, ls, p, lp - (anchor ? 1 : 0));
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_Integer n = 0;
  while (n < max_s) {
    m.level = 0;
    const char* e = m.Match(src, p);
    if (m.abort != Abort::kNone) {
      return RaiseAbort(L, m, "gsub");
    }
    if (e != nullptr) {
      ++n;
      if (!AddReplacement(m, &b, src, e)) {
        return RaiseAbort(L, m, "gsub");
      }
    }
    if (e != nullptr && e > src) {
      src = e;
    } else if (src < m.src_end) {
      luaL_addchar(&b, *src++);
    } else {
      break;
    }
    if (anchor) {
      break;
    }
    if (!m.Step()) {
      return RaiseAbort(L, m, "gsub");
    }
  }
  luaL_addlstring(&b, src, static_cast<size_t>(m.src_end - src));
  luaL_pushresult(&b);
  lua_pushinteger(L, n);
  return 2;
}

}  // namespace

MatchBudget*& CurrentMatchBudget() {
  thread_local MatchBudget* budget = nullptr;
  return budget;
}

void PushPatternFunctions(lua_State* L) {
  lua_createtable(L, 0, 4);
  lua_pushcfunction(L, Find);
  lua_setfield(L, -2, "find");
  lua_pushcfunction(L, MatchFn);
  lua_setfield(L, -2, "match");
  lua_pushcfunction(L, Gmatch);
  lua_setfield(L, -2, "gmatch");
  lua_pushcfunction(L, Gsub);
  lua_setfield(L, -2, "gsub");
}

}  // namespace gnomon::rules

// SPDX-License-Identifier: Apache-2.0
// An LD_PRELOAD shim for tests: OpenSSL's UI_create_method, which libmosquitto calls in its
// one-time TLS set-up, takes 100 ms and appends a line to $GNOMON_TEST_UI_LOG. The slowness holds
// the set-up's race window open, so a test can count how many threads went through it.
#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

extern "C" void* UI_create_method(const char* name) {
  using Fn = void* (*)(const char*);
  static Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "UI_create_method"));
  if (const char* log = std::getenv("GNOMON_TEST_UI_LOG"); log != nullptr) {
    if (FILE* f = std::fopen(log, "a"); f != nullptr) {
      std::fprintf(f, "%d %s\n", static_cast<int>(getpid()), name != nullptr ? name : "");
      std::fclose(f);
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  return real != nullptr ? real(name) : nullptr;
}

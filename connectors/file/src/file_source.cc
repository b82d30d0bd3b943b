// SPDX-License-Identifier: Apache-2.0
// Replays a recorded file of JSON lines through the engine.
#include <fmt/format.h>
#include <simdjson.h>

#include <atomic>
#include <charconv>
#include <cstdio>
#include <thread>

#include "file_internal.h"
#include "gnomon/core/log.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/source.h"
#include "gnomon/core/topic.h"

namespace gnomon::connectors {
namespace {

class FileSource final : public Source {
 public:
  FileSource(FileSourceConfig config, PluginContext& ctx)
      : config_(std::move(config)),
        name_(ctx.name),
        clock_(ctx.clock),
        bad_lines_(ctx.metrics.GetCounter("gnomon_source_bad_records_total",
                                          "Input records that could not be read",
                                          {{"source", ctx.name}})) {}

  ~FileSource() override { Stop(); }

  // gnomon::Source
  Status Start(Ingest& ingest) override {
    file_ = config_.path == "-" ? stdin : std::fopen(config_.path.c_str(), "rb");
    if (file_ == nullptr) {
      return NotFound(fmt::format("source {}: cannot open {}", name_, config_.path));
    }
    thread_ = std::jthread([this, &ingest](const std::stop_token& st) { Run(ingest, st); });
    return {};
  }

  void Stop() override {
    if (thread_.joinable()) {
      thread_.request_stop();
      thread_.join();
    }
    if (file_ != nullptr && file_ != stdin) {
      std::fclose(file_);
    }
    file_ = nullptr;
  }

  bool Finished() const override { return finished_.load(); }

 private:
  void Run(Ingest& ingest, const std::stop_token& st) {
    pthread_setname_np(pthread_self(), "gnomon-file-src");
    simdjson::dom::parser parser;
    std::string line;
    line.reserve(4096);
    char* buf = nullptr;
    size_t cap = 0;
    int64_t lineno = 0;
    ssize_t n;
    while (!st.stop_requested() && (n = ::getline(&buf, &cap, file_)) >= 0) {
      ++lineno;
      std::string_view text(buf, static_cast<size_t>(n));
      while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
        text.remove_suffix(1);
      }
      if (text.empty()) {
        continue;
      }
      Message m;
      m.source = &name_;
      std::string error;
      bool ok = ScanLine(text, m);
      if (ok) {
        if (m.ts_ms == 0) {
          m.ts_ms = clock_.NowMs();
        }
      } else {
        m = Message();
        m.source = &name_;
        line.assign(text);
        line.reserve(line.size() + simdjson::SIMDJSON_PADDING);
        ok = ParseLine(parser, line, m, error);
      }
      if (!ok) {
        bad_lines_->Inc();
        m.payload.assign(text);
        ingest.Reject(std::move(m), nullptr, "bad_record",
                      fmt::format("{}:{}: {}", config_.path, lineno, error));
        continue;
      }
      if (m.payload.size() > config_.max_payload_bytes) {
        ingest.Reject(std::move(m), nullptr, "oversize",
                      fmt::format("{}:{}: payload of {} bytes exceeds max_payload_bytes {}",
                                  config_.path, lineno, m.payload.size(),
                                  config_.max_payload_bytes));
        continue;
      }
      auto device = config_.device.Extract(m);
      if (!device.ok()) {
        ingest.Reject(std::move(m), nullptr, "no_device",
                      fmt::format("{}:{}: {}", config_.path, lineno, device.status().message()));
        continue;
      }
      m.device = std::move(device).value();
      if (!ingest.Submit(std::move(m), nullptr)) {
        break;
      }
    }
    std::free(buf);
    finished_ = true;
    log::Info("file source finished", {{"source", name_},
                                       {"path", config_.path},
                                       {"lines", std::to_string(lineno)}});
  }

  // The fast path for the common line: keys and strings without escapes, the payload taken as
  // its raw text (the worker's lazy view parses and validates it; a broken payload still
  // reaches the rule with msg.payload_error). Returns false when the line needs the full
  // parser (escapes, headers, anything unusual); then nothing in `m` is relied upon.
  static bool ScanLine(std::string_view line, Message& m) {
    size_t i = 0;
    auto ws = [&] {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) {
        ++i;
      }
    };
    // A string without escapes or control characters.
    auto str = [&](std::string_view& out) {
      if (i >= line.size() || line[i] != '"') {
        return false;
      }
      size_t start = ++i;
      while (i < line.size() && line[i] != '"') {
        if (line[i] == '\\' || static_cast<unsigned char>(line[i]) < 0x20) {
          return false;
        }
        ++i;
      }
      if (i >= line.size()) {
        return false;
      }
      out = line.substr(start, i - start);
      ++i;
      return true;
    };
    // Skips one JSON value, returning its text. Balanced brackets and strings only.
    auto value = [&](std::string_view& out) {
      size_t start = i;
      int depth = 0;
      while (i < line.size()) {
        char c = line[i];
        if (c == '"') {
          ++i;
          while (i < line.size() && line[i] != '"') {
            i += line[i] == '\\' ? 2 : 1;
          }
          if (i >= line.size()) {
            return false;
          }
        } else if (c == '{' || c == '[') {
          ++depth;
        } else if (c == '}' || c == ']') {
          if (depth == 0) {
            break;
          }
          if (--depth == 0) {
            ++i;
            break;
          }
        } else if (c == ',' && depth == 0) {
          break;
        }
        ++i;
      }
      if (depth != 0) {
        return false;
      }
      out = line.substr(start, i - start);
      while (!out.empty() && (out.back() == ' ' || out.back() == '\t')) {
        out.remove_suffix(1);
      }
      return !out.empty();
    };
    ws();
    if (i >= line.size() || line[i] != '{') {
      return false;
    }
    ++i;
    bool have_topic = false, have_payload = false;
    while (true) {
      ws();
      std::string_view key;
      if (!str(key)) {
        return false;
      }
      ws();
      if (i >= line.size() || line[i] != ':') {
        return false;
      }
      ++i;
      ws();
      std::string_view v;
      if (key == "topic") {
        if (!str(v)) {
          return false;
        }
        m.topic.assign(v);
        have_topic = true;
      } else if (key == "payload") {
        if (!value(v)) {
          return false;
        }
        m.payload.reserve(v.size() + simdjson::SIMDJSON_PADDING);
        m.payload.assign(v);
        have_payload = true;
      } else if (key == "raw" || key == "key") {
        if (!str(v)) {
          return false;
        }
        if (key == "raw") {
          m.payload.reserve(v.size() + simdjson::SIMDJSON_PADDING);
          m.payload.assign(v);
          have_payload = true;
        } else {
          m.key.assign(v);
        }
      } else if (key == "ts") {
        auto [p, ec] = std::from_chars(line.data() + i, line.data() + line.size(), m.ts_ms);
        if (ec != std::errc()) {
          return false;
        }
        i = static_cast<size_t>(p - line.data());
      } else {
        return false;  // headers or unknown fields: the full parser decides
      }
      ws();
      if (i < line.size() && line[i] == ',') {
        ++i;
        continue;
      }
      if (i < line.size() && line[i] == '}') {
        ++i;
        break;
      }
      return false;
    }
    ws();
    return i == line.size() && have_topic && have_payload && !m.topic.empty() &&
           m.topic.find_first_of(std::string_view("+#\0", 3)) == std::string::npos;
  }

  // {"topic": "...", "payload": {...} | "raw": "...", "ts": ms, "key": "...", "headers": {...}}
  // The DOM parser dispatches to the best SIMD kernel at run time (the on-demand API would be
  // fixed at compile time to the portable fallback kernel with Debian's default flags).
  bool ParseLine(simdjson::dom::parser& parser, const std::string& line, Message& m,
                 std::string& error) {
    simdjson::dom::element doc;
    if (auto err = parser.parse(line).get(doc); err) {
      error = simdjson::error_message(err);
      return false;
    }
    simdjson::dom::object obj;
    if (doc.get_object().get(obj) != simdjson::SUCCESS) {
      error = "a line must be a JSON object";
      return false;
    }
    bool have_payload = false;
    for (auto field : obj) {
      std::string_view key = field.key;
      simdjson::dom::element v = field.value;
      if (key == "topic") {
        std::string_view s;
        if (v.get_string().get(s) != simdjson::SUCCESS) {
          error = "\"topic\" must be a string";
          return false;
        }
        m.topic = s;
      } else if (key == "payload") {
        std::string text = simdjson::minify(v);
        m.payload.reserve(text.size() + simdjson::SIMDJSON_PADDING);
        m.payload.assign(text);
        have_payload = true;
      } else if (key == "raw") {
        std::string_view s;
        if (v.get_string().get(s) != simdjson::SUCCESS) {
          error = "\"raw\" must be a string";
          return false;
        }
        m.payload.reserve(s.size() + simdjson::SIMDJSON_PADDING);
        m.payload.assign(s);
        have_payload = true;
      } else if (key == "ts") {
        int64_t ts = 0;
        if (v.get_int64().get(ts) != simdjson::SUCCESS) {
          error = "\"ts\" must be an integer (epoch ms)";
          return false;
        }
        m.ts_ms = ts;
      } else if (key == "key") {
        std::string_view s;
        if (v.get_string().get(s) != simdjson::SUCCESS) {
          error = "\"key\" must be a string";
          return false;
        }
        m.key = s;
      } else if (key == "headers") {
        simdjson::dom::object h;
        if (v.get_object().get(h) != simdjson::SUCCESS) {
          error = "\"headers\" must be an object of strings";
          return false;
        }
        for (auto hf : h) {
          std::string_view hv;
          if (hf.value.get_string().get(hv) != simdjson::SUCCESS) {
            error = "\"headers\" must be an object of strings";
            return false;
          }
          m.headers.emplace_back(hf.key, hv);
        }
      } else {
        error = fmt::format("unknown field \"{}\" (known: topic, payload, raw, ts, key, headers)",
                            key);
        return false;
      }
    }
    if (m.topic.empty()) {
      error = "missing \"topic\"";
      return false;
    }
    if (Status st = ValidateTopicName(m.topic); !st.ok()) {
      error = st.message();
      return false;
    }
    if (!have_payload) {
      error = "missing \"payload\" or \"raw\"";
      return false;
    }
    if (m.ts_ms == 0) {
      m.ts_ms = clock_.NowMs();
    }
    return true;
  }

  FileSourceConfig config_;
  std::string name_;
  const Clock& clock_;
  Counter* bad_lines_;
  std::FILE* file_ = nullptr;
  std::atomic<bool> finished_{false};
  std::jthread thread_;
};

}  // namespace

std::unique_ptr<Source> NewFileSource(FileSourceConfig config, PluginContext& ctx) {
  return std::make_unique<FileSource>(std::move(config), ctx);
}

}  // namespace gnomon::connectors

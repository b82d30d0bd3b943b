// SPDX-License-Identifier: Apache-2.0
// Appends records as JSON lines. Batches: one write (and one fdatasync) per batch, so
// durability costs one sync per batch rather than per record.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>

#include "file_internal.h"
#include "gnomon/core/backoff.h"
#include "gnomon/core/json.h"
#include "gnomon/core/log.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/queue.h"
#include "gnomon/core/record.h"
#include "gnomon/core/sink.h"

namespace gnomon::connectors {
namespace {

constexpr size_t kMaxBatch = 8192;

class FileSink final : public Sink {
 public:
  FileSink(FileSinkConfig config, PluginContext& ctx)
      : config_(std::move(config)),
        name_(ctx.name),
        reporter_(ctx.reporter),
        queue_(config_.queue),
        write_errors_(ctx.metrics.GetCounter("gnomon_sink_write_errors_total",
                                             "Failed writes (retried) by sink",
                                             {{"sink", ctx.name}})),
        dropped_(ctx.metrics.GetCounter(
            "gnomon_sink_records_dropped_total",
            "Records a sink with when_full: drop did not write (disk reserve or no space)",
            {{"sink", ctx.name}})),
        rotated_out_(ctx.metrics.GetCounter("gnomon_sink_rotated_bytes_deleted_total",
                                            "Bytes of rotated files deleted past `keep`",
                                            {{"sink", ctx.name}})) {}

  ~FileSink() override {
    if (thread_.joinable()) {
      Stop(std::chrono::steady_clock::now());
    }
    if (fd_ >= 0 && fd_ != STDOUT_FILENO) {
      ::close(fd_);
    }
  }

  // gnomon::Sink
  Status Start() override {
    if (config_.path == "-") {
      fd_ = STDOUT_FILENO;
    } else {
      std::error_code ec;
      auto parent = std::filesystem::path(config_.path).parent_path();
      if (!parent.empty()) {
        std::filesystem::create_directories(parent, ec);
      }
      GNOMON_RETURN_IF_ERROR(Open());
    }
    thread_ = std::jthread([this] { Run(); });
    return {};
  }

  void Send(Record&& record) override {
    if (!queue_.Push(std::move(record))) {
      reporter_.Report(record, Status(StatusCode::kCancelled, "sink stopped"));
    }
  }

  void Stop(Deadline deadline) override {
    deadline_ = deadline;
    queue_.Close();
    if (thread_.joinable()) {
      thread_.join();
    }
  }

  size_t QueueDepth() const override { return queue_.size(); }

 private:
  void Run() {
    pthread_setname_np(pthread_self(), "gnomon-file-snk");
    std::vector<Record> batch;
    batch.reserve(kMaxBatch);
    std::string buf;
    Backoff backoff(100, 5000);
    while (queue_.PopBatch(batch, kMaxBatch)) {
      // Group commit: give a small batch a moment to grow, so one fdatasync covers many records.
      // The thread sleeps through the linger rather than waiting on the queue: a waiting
      // consumer is woken by every record pushed meanwhile (a futex call in the producer, a
      // context switch here, per record); a sleeping one costs the producers nothing.
      if (config_.fsync && config_.linger_ms > 0 && batch.size() < kMaxBatch) {
        std::this_thread::sleep_for(std::chrono::milliseconds(config_.linger_ms));
        (void)queue_.PopBatchFor(batch, kMaxBatch - batch.size(), std::chrono::milliseconds(0));
      }
      buf.clear();
      for (const Record& r : batch) {
        if (r.json) {
          buf += r.payload;
        } else if (json::IsValidUtf8(r.payload)) {
          json::AppendQuoted(buf, r.payload);
        } else {
          buf += '"';
          buf += json::Base64(r.payload);
          buf += '"';
        }
        buf += '\n';
      }
      if (config_.max_bytes > 0 && size_ > 0 && size_ + buf.size() > config_.max_bytes) {
        Rotate();
      }
      if (config_.drop_when_full && !Fits(buf.size())) {
        dropped_->Inc(batch.size());
        if (uint64_t suppressed = 0; full_log_.Allow(&suppressed)) {
          log::Warn("file sink dropped a batch: the disk is (nearly) full and the sink may drop",
                    {{"sink", name_},
                     {"path", config_.path},
                     {"records", std::to_string(batch.size())},
                     {"min_free_mb", std::to_string(config_.min_free_bytes >> 20)},
                     {"suppressed_before", std::to_string(suppressed)}});
        }
        for (Record& r : batch) {
          reporter_.Report(r, Status());
        }
        batch.clear();
        continue;
      }
      // Never drop (unless when_full: drop and the disk is full): retry until written or, when
      // stopping, until the deadline.
      Status st;
      while (!(st = WriteAll(buf)).ok()) {
        if (config_.drop_when_full && no_space_) {
          break;
        }
        write_errors_->Inc();
        log::Error("file sink write failed; retrying",
                   {{"sink", name_}, {"path", config_.path}, {"error", st.message()}});
        if (std::chrono::steady_clock::now() > deadline_.load()) {
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(backoff.NextDelayMs()));
      }
      backoff.Reset();
      if (!st.ok() && config_.drop_when_full && no_space_) {
        dropped_->Inc(batch.size());
        st = Status();
      }
      Status report = st.ok() ? Status() : Status(StatusCode::kCancelled, st.message());
      for (Record& r : batch) {
        reporter_.Report(r, report);
      }
      batch.clear();
    }
  }

  Status Open() {
    fd_ = ::open(config_.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (fd_ < 0) {
      return Unavailable(
          fmt::format("sink {}: cannot open {}: {}", name_, config_.path, std::strerror(errno)));
    }
    struct stat st {};
    size_ = ::fstat(fd_, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
    return {};
  }

  // path.(keep) goes, path.(i) becomes path.(i+1), path becomes path.1, and a new path opens.
  void Rotate() {
    if (fd_ == STDOUT_FILENO) {
      return;
    }
    auto name = [&](int i) { return i == 0 ? config_.path : config_.path + "." + std::to_string(i); };
    std::error_code ec;
    for (int i = config_.keep; i >= 0; --i) {
      if (!std::filesystem::exists(name(i), ec)) {
        continue;
      }
      if (i == config_.keep) {
        rotated_out_->Inc(std::filesystem::file_size(name(i), ec));
        std::filesystem::remove(name(i), ec);
      } else {
        std::filesystem::rename(name(i), name(i + 1), ec);
      }
    }
    ::close(fd_);
    fd_ = -1;
    if (Status st = Open(); !st.ok()) {
      log::Error("file sink cannot reopen after rotating", {{"sink", name_}, {"error", st.message()}});
    }
  }

  // Is there room for `bytes` more, leaving min_free_bytes free?
  bool Fits(size_t bytes) {
    if (no_space_) {
      no_space_ = false;  // try again: space may have been freed
    }
    if (config_.min_free_bytes == 0 || fd_ == STDOUT_FILENO) {
      return true;
    }
    struct statvfs vfs {};
    if (::fstatvfs(fd_, &vfs) != 0) {
      return true;
    }
    uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    return free_bytes >= config_.min_free_bytes + bytes;
  }

  Status WriteAll(const std::string& buf) {
    size_t off = 0;
    while (off < buf.size()) {
      ssize_t n = ::write(fd_, buf.data() + off, buf.size() - off);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        no_space_ = errno == ENOSPC || errno == EDQUOT;
        // A partial line may be on disk; readers skip lines that do not parse.
        return Unavailable(fmt::format("write {}: {}", config_.path, std::strerror(errno)));
      }
      off += static_cast<size_t>(n);
      size_ += static_cast<uint64_t>(n);
    }
    if (config_.fsync && fd_ != STDOUT_FILENO && ::fdatasync(fd_) != 0) {
      return Unavailable(fmt::format("fdatasync {}: {}", config_.path, std::strerror(errno)));
    }
    return {};
  }

  FileSinkConfig config_;
  std::string name_;
  DeliveryReporter& reporter_;
  BoundedQueue<Record> queue_;
  Counter* write_errors_;
  Counter* dropped_;
  Counter* rotated_out_;
  log::RateLimiter full_log_{1};
  uint64_t size_ = 0;       // of the current file
  bool no_space_ = false;   // the last write failed for lack of space
  int fd_ = -1;
  std::atomic<Deadline> deadline_{Deadline::max()};
  std::jthread thread_;
};

}  // namespace

std::unique_ptr<Sink> NewFileSink(FileSinkConfig config, PluginContext& ctx) {
  return std::make_unique<FileSink>(std::move(config), ctx);
}

}  // namespace gnomon::connectors

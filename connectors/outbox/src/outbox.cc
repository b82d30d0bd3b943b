// SPDX-License-Identifier: Apache-2.0
// OutboxSink: a writer thread appends records to data_dir/outbox/<sink>.db (SQLite WAL, group
// commit, synchronous=FULL) and reports them to the engine once committed; a delivery thread
// feeds them to the Destination lane by lane, in outbox order, and deletes them once delivered.
//
// Memory stays bounded: at most `memory_window` records are held in memory; when more wait, the
// rest stay on disk ("spilled") and are read back in order as the window drains.
#include "gnomon/connectors/outbox.h"

#include <fmt/format.h>
#include <pthread.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <filesystem>
#include <set>
#include <thread>

#include "gnomon/core/backoff.h"
#include "gnomon/core/log.h"
#include "gnomon/core/mutex.h"
#include "gnomon/core/plugin_context.h"
#include "gnomon/core/record.h"
#include "gnomon/core/sink.h"
#include "gnomon/sqlite/sqlite.h"

namespace gnomon::connectors {

void SyncDestination::Poll(std::chrono::milliseconds timeout) {
  MutexLock lock(mu_);
  cv_.wait_for(lock.native(), timeout, [&] {
    mu_.AssertHeld();
    return woken_;
  });
  woken_ = false;
}

void SyncDestination::Wakeup() {
  {
    MutexLock lock(mu_);
    woken_ = true;
  }
  cv_.notify_one();
}

OutboxConfig ParseOutboxConfig(const ConfigValue& cfg, OutboxConfig c) {
  if (const ConfigValue* o = cfg.Get("outbox"); o != nullptr && o->is_map()) {
    c.durable = o->GetBool("durable", c.durable);
    c.max_records = o->GetInt("max_records", c.max_records);
    c.max_bytes = o->GetInt("max_bytes", c.max_bytes);
    c.max_age_ms = o->GetInt("max_age_s", c.max_age_ms / 1000) * 1000;
    c.memory_window = static_cast<int>(o->GetInt("memory_window", c.memory_window));
  }
  if (const ConfigValue* r = cfg.Get("retry"); r != nullptr && r->is_map()) {
    c.max_attempts = static_cast<int>(r->GetInt("max_attempts", c.max_attempts));
    c.initial_backoff_ms = r->GetInt("initial_ms", c.initial_backoff_ms);
    c.max_backoff_ms = r->GetInt("max_ms", c.max_backoff_ms);
  }
  if (const ConfigValue* b = cfg.Get("batch"); b != nullptr && b->is_map()) {
    c.max_batch = static_cast<int>(b->GetInt("max_records", c.max_batch));
    c.max_batch_bytes = b->GetInt("max_bytes", c.max_batch_bytes);
    c.linger_ms = static_cast<int>(b->GetInt("linger_ms", c.linger_ms));
  }
  c.lanes = static_cast<int>(cfg.GetInt("concurrency", c.lanes));
  return c;
}

namespace {

constexpr size_t kMaxPendingAppends = 8192;  // records waiting for the writer; then Send blocks

// Headers as length-prefixed pairs.
std::string EncodeHeaders(const Headers& h) {
  std::string out;
  for (const auto& [k, v] : h) {
    for (const std::string* s : {&k, &v}) {
      uint32_t n = static_cast<uint32_t>(s->size());
      out.append(reinterpret_cast<const char*>(&n), sizeof n);
      out += *s;
    }
  }
  return out;
}

Headers DecodeHeaders(std::string_view in) {
  Headers h;
  std::string parts[2];
  int i = 0;
  while (in.size() >= sizeof(uint32_t)) {
    uint32_t n;
    std::memcpy(&n, in.data(), sizeof n);
    in.remove_prefix(sizeof n);
    if (n > in.size()) {
      break;
    }
    parts[i] = std::string(in.substr(0, n));
    in.remove_prefix(n);
    if (++i == 2) {
      h.emplace_back(std::move(parts[0]), std::move(parts[1]));
      i = 0;
    }
  }
  return h;
}

enum RowFlags : int { kJson = 1, kNullValue = 2 };

// State shared with the acknowledgements of dead letters, which may arrive after the sink is
// gone (the dead-letter sink reports last).
struct Shared {
  Mutex mu;
  std::condition_variable writer_cv;
  // (seq, bytes) delivered or dead-lettered
  std::vector<std::pair<uint64_t, int64_t>> deletes GNOMON_GUARDED_BY(mu);
  bool alive GNOMON_GUARDED_BY(mu) = true;

  void Delete(uint64_t seq, int64_t bytes) {
    {
      MutexLock lock(mu);
      if (!alive) {
        return;
      }
      deletes.emplace_back(seq, bytes);
    }
    writer_cv.notify_one();
  }
};

// Deletes a dead-lettered row once its dead letter is durable; keeps it if that failed.
class RowAck final : public AckHandle {
 public:
  RowAck(std::shared_ptr<Shared> shared, uint64_t seq, int64_t bytes)
      : shared_(std::move(shared)), seq_(seq), bytes_(bytes) {}
  void Ack() override { shared_->Delete(seq_, bytes_); }

 private:
  std::shared_ptr<Shared> shared_;
  uint64_t seq_;
  int64_t bytes_;
};

class OutboxSink final : public Sink {
 public:
  OutboxSink(OutboxConfig config, std::unique_ptr<Destination> dest, PluginContext& ctx)
      : config_(config),
        dest_(std::move(dest)),
        name_(ctx.name),
        route_(ctx.route),
        reporter_(ctx.reporter),
        clock_(ctx.clock),
        shared_(std::make_shared<Shared>()) {
    config_.lanes = std::max(1, config_.lanes);
    config_.max_batch = std::max(1, config_.max_batch);
    config_.memory_window = std::max(config_.memory_window, 16);
    if (config_.durable) {
      path_ = (std::filesystem::path(ctx.data_dir) / "outbox" / (name_ + ".db")).string();
    }
    Labels l = {{"sink", name_}};
    records_gauge_ = ctx.metrics.GetGauge("gnomon_outbox_records", "Records waiting in the outbox", l);
    bytes_gauge_ = ctx.metrics.GetGauge("gnomon_outbox_bytes", "Payload bytes waiting in the outbox", l);
    oldest_gauge_ = ctx.metrics.GetGauge("gnomon_outbox_oldest_age_seconds",
                                         "Age of the oldest record waiting in memory", l);
    delivered_ = ctx.metrics.GetCounter("gnomon_outbox_delivered_total",
                                        "Records the destination took", l);
    retried_ = ctx.metrics.GetCounter("gnomon_sink_records_total", "Records by sink and outcome",
                                      {{"sink", name_}, {"outcome", "retried"}});
    full_ = ctx.metrics.GetCounter("gnomon_outbox_rejected_total",
                                   "Records dead-lettered by the outbox's limits",
                                   {{"sink", name_}, {"reason", "full"}});
    expired_ = ctx.metrics.GetCounter("gnomon_outbox_rejected_total",
                                      "Records dead-lettered by the outbox's limits",
                                      {{"sink", name_}, {"reason", "expired"}});
    write_errors_ = ctx.metrics.GetCounter("gnomon_outbox_write_errors_total",
                                           "Failed outbox commits (retried)", l);
  }

  ~OutboxSink() override {
    Stop(std::chrono::steady_clock::now());
    dest_.reset();  // before the lanes, which may still hold a batch it was sending
    MutexLock lock(shared_->mu);
    shared_->alive = false;
  }

  Status Start() override {
    if (config_.durable) {
      std::error_code ec;
      std::filesystem::create_directories(std::filesystem::path(path_).parent_path(), ec);
      GNOMON_RETURN_IF_ERROR(OpenDb(wdb_).WithContext("sink " + name_ + " outbox"));
      GNOMON_RETURN_IF_ERROR(OpenDb(rdb_).WithContext("sink " + name_ + " outbox"));
      {
        sqlite::Stmt s;
        GNOMON_RETURN_IF_ERROR(
            wdb_.Prepare("SELECT count(*), coalesce(sum(length(payload)),0), coalesce(max(seq),0) FROM outbox", s));
        if (sqlite3_step(s.get()) == SQLITE_ROW) {
          count_ = sqlite3_column_int64(s.get(), 0);
          bytes_ = sqlite3_column_int64(s.get(), 1);
          last_committed_seq_ = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 2));
        }
      }
      next_seq_ = last_committed_seq_ + 1;
      spilled_ = count_ > 0;
      if (count_ > 0) {
        log::Info("outbox: resuming delivery", {{"sink", name_},
                                                {"records", std::to_string(count_)},
                                                {"path", path_}});
      }
      GNOMON_RETURN_IF_ERROR(wdb_.Prepare(
          "INSERT INTO outbox(seq, enqueued_ms, device, key, rule, source, source_topic, topic, "
          "ts_ms, flags, headers, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
          insert_));
      GNOMON_RETURN_IF_ERROR(wdb_.Prepare("DELETE FROM outbox WHERE seq = ?", delete_));
      GNOMON_RETURN_IF_ERROR(rdb_.Prepare(
          "SELECT seq, enqueued_ms, device, key, rule, source, source_topic, topic, ts_ms, flags, "
          "headers, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
          select_));
      UpdateGauges();
      writer_ = std::jthread([this] { WriterLoop(); });
    }
    driver_ = std::jthread([this] { DriverLoop(); });
    return {};
  }

  void Send(Record&& record) override {
    MutexLock lock(shared_->mu);
    if (config_.durable) {
      space_cv_.wait(lock.native(), [&] {
        shared_->mu.AssertHeld();
        return pending_.size() < kMaxPendingAppends || stop_;
      });
      if (!stop_) {
        pending_.push_back(std::move(record));
        lock.Unlock();
        shared_->writer_cv.notify_one();
        return;
      }
    } else {
      space_cv_.wait(lock.native(), [&] {
        shared_->mu.AssertHeld();
        return in_memory_ < config_.memory_window || stop_;
      });
      if (!stop_) {
        auto e = std::make_unique<OutboxEntry>();
        e->enqueued_ms = clock_.NowMs();
        e->record = std::move(record);
        ready_.push_back(std::move(e));
        ++in_memory_;
        lock.Unlock();
        dest_->Wakeup();
        return;
      }
    }
    lock.Unlock();
    reporter_.Report(record, Status(StatusCode::kCancelled, "sink stopped"));
  }

  void Stop(Deadline deadline) override {
    {
      MutexLock lock(shared_->mu);
      if (stop_) {
        return;
      }
      stop_ = true;
      deadline_ = deadline;
    }
    space_cv_.notify_all();
    // The driver first (it finishes batches in flight), then the writer, which commits the
    // deletions those batches caused and any appends still waiting.
    dest_->Wakeup();
    if (driver_.joinable()) {
      driver_.join();
    }
    {
      MutexLock lock(shared_->mu);
      stop_writer_ = true;
    }
    shared_->writer_cv.notify_all();
    if (writer_.joinable()) {
      writer_.join();
    }
  }

  // Ready while the outbox can take records durably, whether or not the destination is up:
  // an unreachable destination shows in gnomon_outbox_records and the retried counter.
  bool Ready() const override { return healthy_.load(std::memory_order_relaxed); }
  size_t QueueDepth() const override {
    return static_cast<size_t>(config_.durable ? count_.load() : in_memory_.load());
  }

 private:
  struct Lane {
    std::deque<std::unique_ptr<OutboxEntry>> q;
    std::vector<OutboxEntry*> batch;
    bool busy = false;
    int64_t next_try_ms = 0;
    Backoff backoff{200, 30000};
  };

  Status OpenDb(sqlite::Db& db) {
    GNOMON_RETURN_IF_ERROR(db.Open(path_));
    GNOMON_RETURN_IF_ERROR(db.Exec("PRAGMA journal_mode=WAL"));
    GNOMON_RETURN_IF_ERROR(db.Exec("PRAGMA synchronous=FULL"));
    // After a burst (an outage) the WAL is cut back to 64 MB at the next checkpoint instead of
    // keeping its high-water size on disk.
    GNOMON_RETURN_IF_ERROR(db.Exec("PRAGMA journal_size_limit=67108864"));
    return db.Exec(
        "CREATE TABLE IF NOT EXISTS outbox(seq INTEGER PRIMARY KEY, enqueued_ms INTEGER NOT NULL, "
        "device TEXT, key TEXT, rule TEXT, source TEXT, source_topic TEXT, topic TEXT, "
        "ts_ms INTEGER, flags INTEGER, headers BLOB, payload BLOB)");
  }

  const std::string* Intern(std::string_view s) {
    MutexLock lock(names_mu_);
    return &*names_.emplace(s).first;
  }

  // ---- writer thread -------------------------------------------------------------------------

  void WriterLoop() {
    pthread_setname_np(pthread_self(), "gnomon-outbox-w");
    std::vector<Record> appends;
    std::vector<std::pair<uint64_t, int64_t>> deletes;
    std::vector<std::unique_ptr<OutboxEntry>> committed;
    Backoff backoff(100, 5000);
    static log::RateLimiter full_limiter(1);
    for (;;) {
      bool stopping;
      {
        MutexLock lock(shared_->mu);
        shared_->writer_cv.wait(lock.native(), [&] {
          shared_->mu.AssertHeld();
          return !pending_.empty() || !shared_->deletes.empty() || stop_writer_;
        });
        stopping = stop_writer_;
        if (pending_.empty() && shared_->deletes.empty()) {
          break;  // stopping with nothing left to write
        }
        appends.swap(pending_);
        deletes.swap(shared_->deletes);
      }
      space_cv_.notify_all();

      // Limits: over them, a record is dead-lettered instead of held. Never a silent drop.
      committed.clear();
      int64_t count = count_, bytes = bytes_;
      for (auto& [seq, b] : deletes) {
        --count;
        bytes -= b;
      }
      for (Record& r : appends) {
        auto size = static_cast<int64_t>(r.payload.size());
        if (count + 1 > config_.max_records || bytes + size > config_.max_bytes) {
          full_->Inc();
          if (uint64_t suppressed = 0; full_limiter.Allow(&suppressed)) {
            log::Error("ALARM outbox full: dead-lettering new records",
                       {{"sink", name_},
                        {"records", std::to_string(count)},
                        {"bytes", std::to_string(bytes)},
                        {"max_records", std::to_string(config_.max_records)},
                        {"max_bytes", std::to_string(config_.max_bytes)},
                        {"suppressed_before", std::to_string(suppressed)}});
          }
          reporter_.Report(r, ResourceExhausted(fmt::format(
                                  "outbox of sink {} is full ({} records, {} bytes)", name_,
                                  count, bytes)));
          continue;
        }
        ++count;
        bytes += size;
        auto e = std::make_unique<OutboxEntry>();
        e->record = std::move(r);
        committed.push_back(std::move(e));
      }
      appends.clear();

      // Commit; on failure (disk full, I/O error) hold everything, report, and retry. Sends
      // block meanwhile once kMaxPendingAppends wait: sources stop, nothing is dropped.
      Status st;
      while (!(st = Commit(committed, deletes)).ok()) {
        write_errors_->Inc();
        healthy_ = false;
        log::Error("outbox write failed; retrying", {{"sink", name_},
                                                    {"error", st.message()},
                                                    {"appends", std::to_string(committed.size())},
                                                    {"deletes", std::to_string(deletes.size())}});
        if (stopping && std::chrono::steady_clock::now() >= deadline_.load()) {
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(backoff.NextDelayMs()));
        MutexLock lock(shared_->mu);
        stopping = stop_writer_;
      }
      if (!st.ok()) {
        for (auto& e : committed) {
          reporter_.Report(e->record, Status(StatusCode::kCancelled, st.message()));
        }
        break;
      }
      if (!healthy_) {
        log::Info("outbox writable again", {{"sink", name_}});
      }
      healthy_ = true;
      backoff.Reset();
      count_ = count;
      bytes_ = bytes;
      deletes.clear();
      for (auto& e : committed) {
        reporter_.Report(e->record, Status());  // durable in the outbox: the sink has it
        e->record.delivery = nullptr;
      }
      UpdateGauges();
      if (!committed.empty()) {
        {
          MutexLock lock(shared_->mu);
          last_committed_seq_ = committed.back()->seq;
          auto n = static_cast<int>(committed.size());
          if (!spilled_ && in_memory_ + n <= config_.memory_window) {
            for (auto& e : committed) {
              ready_.push_back(std::move(e));
            }
            in_memory_ += n;
            mem_high_seq_ = last_committed_seq_;
          } else {
            spilled_ = true;  // on disk only; the driver reads them back in order
          }
        }
        committed.clear();
        dest_->Wakeup();
      }
    }
  }

  Status Commit(std::vector<std::unique_ptr<OutboxEntry>>& entries,
                const std::vector<std::pair<uint64_t, int64_t>>& deletes) {
    GNOMON_RETURN_IF_ERROR(wdb_.Exec("BEGIN IMMEDIATE"));
    int64_t now = clock_.NowMs();
    uint64_t seq = next_seq_;
    auto fail = [&](std::string what) {
      Status s = Unavailable(fmt::format("{}: {}", what, wdb_.Error()));
      (void)wdb_.Exec("ROLLBACK");
      return s;
    };
    for (auto& e : entries) {
      Record& r = e->record;
      e->seq = seq++;
      e->enqueued_ms = now;
      std::string headers = EncodeHeaders(r.headers);
      sqlite3_stmt* s = insert_.get();
      sqlite3_reset(s);
      sqlite3_bind_int64(s, 1, static_cast<int64_t>(e->seq));
      sqlite3_bind_int64(s, 2, now);
      sqlite::BindText(s, 3, r.device);
      sqlite::BindText(s, 4, r.key);
      sqlite::BindText(s, 5, r.rule);
      sqlite::BindText(s, 6, r.source != nullptr ? std::string_view(*r.source) : "");
      sqlite::BindText(s, 7, r.source_topic);
      sqlite::BindText(s, 8, r.topic);
      sqlite3_bind_int64(s, 9, r.ts_ms);
      sqlite3_bind_int(s, 10, (r.json ? kJson : 0) | (r.null_value ? kNullValue : 0));
      sqlite::BindBlob(s, 11, headers);
      sqlite::BindBlob(s, 12, r.payload);
      if (sqlite3_step(s) != SQLITE_DONE) {
        return fail("outbox insert");
      }
      if (r.source != nullptr) {
        r.source = Intern(*r.source);  // the source may be gone before delivery
      }
    }
    for (const auto& [dseq, b] : deletes) {
      sqlite3_stmt* s = delete_.get();
      sqlite3_reset(s);
      sqlite3_bind_int64(s, 1, static_cast<int64_t>(dseq));
      if (sqlite3_step(s) != SQLITE_DONE) {
        return fail("outbox delete");
      }
    }
    if (Status c = wdb_.Exec("COMMIT"); !c.ok()) {
      (void)wdb_.Exec("ROLLBACK");
      return c;
    }
    next_seq_ = seq;
    return {};
  }

  void UpdateGauges() {
    records_gauge_->Set(config_.durable ? count_.load() : in_memory_.load());
    bytes_gauge_->Set(bytes_.load());
  }

  // ---- delivery thread -----------------------------------------------------------------------

  void DriverLoop() {
    pthread_setname_np(pthread_self(), "gnomon-outbox-d");
    lanes_.resize(static_cast<size_t>(config_.lanes));
    for (auto& l : lanes_) {
      l.backoff = Backoff(config_.initial_backoff_ms, config_.max_backoff_ms);
    }
    std::vector<std::unique_ptr<OutboxEntry>> incoming;
    for (;;) {
      bool stopping, spilled;
      {
        MutexLock lock(shared_->mu);
        incoming.swap(ready_);
        stopping = stop_;
        spilled = spilled_;
      }
      for (auto& e : incoming) {
        LaneOf(e->record).q.push_back(std::move(e));
      }
      incoming.clear();
      if (spilled && in_memory_ < config_.memory_window / 2) {
        Reload();
      }
      int64_t now = clock_.NowMs();
      bool busy = false, pending = false;
      int64_t wake_ms = now + 200;
      for (size_t i = 0; i < lanes_.size(); ++i) {
        Lane& l = lanes_[i];
        if (!l.busy && !l.q.empty() && (!stopping || !config_.durable) &&
            StartBatch(i, now, stopping, &wake_ms) && !l.busy && !l.q.empty()) {
          wake_ms = now;  // delivered inline and more is waiting: go again at once
        }
        busy |= l.busy;
        pending |= !l.q.empty();
      }
      UpdateOldest(now);
      if (stopping) {
        bool past = std::chrono::steady_clock::now() >= deadline_.load();
        if (config_.durable ? (!busy || past) : ((!busy && !pending) || past)) {
          break;
        }
      }
      dest_->Poll(std::chrono::milliseconds(std::clamp<int64_t>(wake_ms - now, 0, 200)));
    }
    // Whatever is left: in the outbox for the next run (durable) or abandoned (memory).
    if (!config_.durable) {
      MutexLock lock(shared_->mu);
      for (auto& e : ready_) {
        LaneOf(e->record).q.push_back(std::move(e));
      }
      ready_.clear();
    }
    // A batch still in flight stays allocated: the destination is destroyed after the lanes.
    if (!config_.durable) {
      for (Lane& l : lanes_) {
        for (auto& e : l.q) {
          reporter_.Report(e->record, Status(StatusCode::kCancelled, "sink stopped"));
        }
      }
    }
  }

  Lane& LaneOf(const Record& r) {
    size_t h = std::hash<std::string_view>{}(r.device.empty() ? std::string_view(r.key) : r.device);
    return lanes_[h % lanes_.size()];
  }

  // Returns whether a batch was handed to the destination.
  bool StartBatch(size_t li, int64_t now, bool stopping, int64_t* wake_ms) {
    Lane& l = lanes_[li];
    if (l.next_try_ms > now) {
      *wake_ms = std::min(*wake_ms, l.next_try_ms);
      return false;
    }
    while (!l.q.empty() && config_.max_age_ms > 0 &&
           now - l.q.front()->enqueued_ms > config_.max_age_ms) {
      expired_->Inc();
      auto e = std::move(l.q.front());
      l.q.pop_front();
      DeadLetter(*e, ResourceExhausted(fmt::format(
                         "record waited {} s in the outbox of sink {} (max_age_s {})",
                         (now - e->enqueued_ms) / 1000, name_, config_.max_age_ms / 1000)));
    }
    if (l.q.empty()) {
      return false;
    }
    l.batch.clear();
    int64_t bytes = 0;
    for (auto& e : l.q) {
      auto size = static_cast<int64_t>(e->record.payload.size());
      if (!l.batch.empty() &&
          (static_cast<int>(l.batch.size()) >= config_.max_batch ||
           bytes + size > config_.max_batch_bytes ||
           !dest_->Batchable(l.batch.front()->record, e->record))) {
        break;
      }
      l.batch.push_back(e.get());
      bytes += size;
    }
    if (config_.linger_ms > 0 && static_cast<int>(l.batch.size()) < config_.max_batch &&
        !stopping && l.batch.size() == l.q.size()) {
      int64_t until = l.q.front()->enqueued_ms + config_.linger_ms;
      if (until > now) {
        *wake_ms = std::min(*wake_ms, until);
        l.batch.clear();
        return false;
      }
    }
    l.busy = true;
    dest_->Deliver(l.batch, [this, li](BatchResult r) { OnDone(li, std::move(r)); });
    return true;
  }

  void OnDone(size_t li, BatchResult r) {
    Lane& l = lanes_[li];
    size_t n = l.batch.size();
    l.busy = false;
    l.batch.clear();
    static log::RateLimiter limiter(5);
    if (r.kind == BatchResult::kRetry) {
      bool give_up = false;
      for (size_t i = 0; i < n; ++i) {
        give_up |= config_.max_attempts > 0 && ++l.q[i]->attempts >= config_.max_attempts;
      }
      if (!give_up) {
        retried_->Inc(n);
        int64_t delay = r.retry_after_ms >= 0
                            ? std::min(r.retry_after_ms, config_.max_backoff_ms)
                            : l.backoff.NextDelayMs();
        l.next_try_ms = clock_.NowMs() + delay;
        if (uint64_t suppressed = 0; limiter.Allow(&suppressed)) {
          log::Warn("delivery failed; retrying",
                    {{"sink", name_},
                     {"error", r.status.message()},
                     {"records", std::to_string(n)},
                     {"retry_in_ms", std::to_string(delay)},
                     {"suppressed_before", std::to_string(suppressed)}});
        }
        return;
      }
      r = BatchResult::Failed(Status(r.status.code(),
                                     fmt::format("gave up after {} attempts: {}",
                                                 l.q.front()->attempts, r.status.message())));
    }
    l.backoff.Reset();
    l.next_try_ms = 0;
    size_t rejected_at = 0;
    for (size_t i = 0; i < n; ++i) {
      auto e = std::move(l.q.front());
      l.q.pop_front();
      if (r.kind == BatchResult::kFailed) {
        if (e->attempts == 0) {
          e->attempts = 1;
        }
        DeadLetter(*e, r.status);
        continue;
      }
      if (rejected_at < r.rejected.size() && r.rejected[rejected_at].first == i) {
        DeadLetter(*e, r.rejected[rejected_at].second);
        ++rejected_at;
        continue;
      }
      Complete(*e);
    }
  }

  void Complete(OutboxEntry& e) {
    delivered_->Inc();
    if (config_.durable) {
      shared_->Delete(e.seq, static_cast<int64_t>(e.record.payload.size()));
    } else {
      reporter_.Report(e.record, Status());
    }
    Released();
  }

  void DeadLetter(OutboxEntry& e, const Status& why) {
    e.record.attempts = std::max(e.attempts, 1);
    if (e.record.route < 0) {
      e.record.route = route_;
    }
    if (config_.durable) {
      // The row goes once the dead letter is durable.
      e.record.delivery = new Delivery(
          nullptr, new RowAck(shared_, e.seq, static_cast<int64_t>(e.record.payload.size())));
      reporter_.Report(e.record, why);
    } else {
      reporter_.Report(e.record, why);
    }
    Released();
  }

  void Released() {
    {
      MutexLock lock(shared_->mu);
      --in_memory_;
    }
    space_cv_.notify_one();
    if (!config_.durable) {
      UpdateGauges();
    }
  }

  void Reload() {
    int64_t room = config_.memory_window - in_memory_;
    uint64_t after;
    {
      MutexLock lock(shared_->mu);
      after = mem_high_seq_;
    }
    sqlite3_stmt* s = select_.get();
    sqlite3_reset(s);
    sqlite3_bind_int64(s, 1, static_cast<int64_t>(after));
    sqlite3_bind_int64(s, 2, room);
    int64_t n = 0;
    uint64_t high = after;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      auto e = std::make_unique<OutboxEntry>();
      e->seq = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
      e->enqueued_ms = sqlite3_column_int64(s, 1);
      Record& r = e->record;
      r.device = sqlite::ColumnText(s, 2);
      r.key = sqlite::ColumnText(s, 3);
      r.rule = sqlite::ColumnText(s, 4);
      std::string_view src = sqlite::ColumnText(s, 5);
      r.source = src.empty() ? nullptr : Intern(src);
      r.source_topic = sqlite::ColumnText(s, 6);
      r.topic = sqlite::ColumnText(s, 7);
      r.ts_ms = sqlite3_column_int64(s, 8);
      int flags = sqlite3_column_int(s, 9);
      r.json = (flags & kJson) != 0;
      r.null_value = (flags & kNullValue) != 0;
      r.headers = DecodeHeaders(sqlite::ColumnText(s, 10));
      r.payload = sqlite::ColumnText(s, 11);
      r.route = route_;
      high = e->seq;
      LaneOf(r).q.push_back(std::move(e));
      ++n;
    }
    if (rc != SQLITE_DONE) {
      log::Error("outbox read failed", {{"sink", name_}, {"error", rdb_.Error()}});
    }
    sqlite3_reset(s);
    MutexLock lock(shared_->mu);
    in_memory_ += static_cast<int>(n);
    mem_high_seq_ = high;
    if (n < room && last_committed_seq_ == mem_high_seq_) {
      spilled_ = false;
    }
  }

  void UpdateOldest(int64_t now) {
    int64_t oldest = now;
    for (const Lane& l : lanes_) {
      if (!l.q.empty()) {
        oldest = std::min(oldest, l.q.front()->enqueued_ms);
      }
    }
    oldest_gauge_->Set((now - oldest) / 1000);
    if (!config_.durable) {
      UpdateGauges();
    }
  }

  OutboxConfig config_;
  std::unique_ptr<Destination> dest_;
  std::string name_;
  int32_t route_;
  DeliveryReporter& reporter_;
  const Clock& clock_;
  std::string path_;

  std::shared_ptr<Shared> shared_;  // its mutex guards everything below marked (mu)
  std::condition_variable space_cv_;
  std::vector<Record> pending_;                         // (mu) waiting for the writer
  std::vector<std::unique_ptr<OutboxEntry>> ready_;     // (mu) committed, for the driver
  bool stop_ = false;                                   // (mu)
  bool stop_writer_ = false;                            // (mu) the driver has stopped
  bool spilled_ = false;                                // (mu) records on disk only
  uint64_t last_committed_seq_ = 0;                     // (mu)
  uint64_t mem_high_seq_ = 0;                           // (mu) highest seq handed to memory
  std::atomic<int> in_memory_{0};                       // written under (mu)
  std::atomic<Deadline> deadline_{Deadline::max()};

  // Writer thread.
  sqlite::Db wdb_;
  sqlite::Stmt insert_, delete_;
  uint64_t next_seq_ = 1;
  std::atomic<int64_t> count_{0}, bytes_{0};
  std::atomic<bool> healthy_{true};

  // Delivery thread.
  sqlite::Db rdb_;
  sqlite::Stmt select_;
  std::deque<Lane> lanes_;  // a deque: Lane is not nothrow-movable

  Mutex names_mu_;
  std::set<std::string, std::less<>> names_ GNOMON_GUARDED_BY(names_mu_);

  Gauge *records_gauge_, *bytes_gauge_, *oldest_gauge_;
  Counter *delivered_, *retried_, *full_, *expired_, *write_errors_;
  std::jthread writer_, driver_;
};

}  // namespace

std::unique_ptr<Sink> NewOutboxSink(OutboxConfig config, std::unique_ptr<Destination> dest,
                                    PluginContext& ctx) {
  return std::make_unique<OutboxSink>(config, std::move(dest), ctx);
}

}  // namespace gnomon::connectors

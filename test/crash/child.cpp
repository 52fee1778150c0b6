// One life of the crash harness's workload: the engine on a SQLite file at
// synchronous FULL, a starter, and a simulated external system whose completer
// threads complete serials and log each acknowledged completion durably.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <iostream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <SQLiteCpp/SQLiteCpp.h>
#include <asyncflow/asyncflow.hpp>
#include <fmt/format.h>

#include "crash.hpp"

namespace asyncflow::crash {
namespace {

// Each life's lease: a killed life's instances are taken over this long after
// its last commit.
constexpr std::chrono::milliseconds kLease{250};

}  // namespace

namespace {

// Consecutive StoreError or Conflict answers a completer accepts before it gives up.
constexpr int kMaxTransientErrors = 1000;

// An append-only text file, one write(2) per line, shared by threads. With
// `durable` each line is fsynced before append() returns. A SIGKILL cannot undo
// a write(2) that returned (the page cache outlives the process), so without
// fsync lines are lost only to a power cut, which this harness does not cause.
// Opening cuts an incomplete last line that a kill left (it was never a record),
// so the next line starts on a line of its own.
class AppendLog {
 public:
  AppendLog(const std::string& path, bool durable)
      : fd_(::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644)),
        durable_(durable) {
    if (fd_ < 0) throw std::runtime_error(fmt::format("cannot open {}: errno {}", path, errno));
    std::size_t torn = 0;
    std::size_t keep = 0;
    for (const std::string& line : readCompleteLines(path, torn)) keep += line.size() + 1;
    if (torn != 0 && ::ftruncate(fd_, static_cast<off_t>(keep)) != 0) {
      ::close(fd_);
      throw std::runtime_error(
          fmt::format("cannot cut the torn line of {}: errno {}", path, errno));
    }
  }
  ~AppendLog() { ::close(fd_); }
  AppendLog(const AppendLog&) = delete;
  AppendLog& operator=(const AppendLog&) = delete;

  // Appends `line` (which ends in '\n'). False, with errno set, on an I/O error.
  bool append(std::string_view line) {
    std::lock_guard lock(mutex_);
    while (!line.empty()) {
      const ssize_t written = ::write(fd_, line.data(), line.size());
      if (written < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      line.remove_prefix(static_cast<std::size_t>(written));
    }
    return !durable_ || ::fsync(fd_) == 0;
  }

 private:
  std::mutex mutex_;
  int fd_;
  bool durable_;
};

class Life;

// Tells the life of every instance that completes or fails.
class EndListener final : public Listener {
 public:
  explicit EndListener(Life& life) : life_(life) {}
  void onEvent(const HistoryEvent& event) override;

 private:
  Life& life_;
};

// One life: run() returns a ChildExit unless a SIGKILL ends the process first.
class Life {
 public:
  explicit Life(const CrashConfig& config)
      : config_(config), acks_(ackLogPath(config), true), handlers_(handlerLogPath(config), false) {
  }

  int run() {
    auto store = SqliteStore::open(databasePath(config_));  // synchronous FULL by default
    if (!store) return fatalNow("open: " + store.error().toString());
    std::size_t existing = 0;
    std::size_t completedBefore = 0;
    {
      SQLite::Database reader(databasePath(config_), SQLite::OPEN_READONLY);
      existing =
          static_cast<std::size_t>(reader.execAndGet("SELECT COUNT(*) FROM instances").getInt64());
      completedBefore = static_cast<std::size_t>(
          reader.execAndGet("SELECT COUNT(*) FROM instances WHERE status = 'Completed'")
              .getInt64());
    }
    const std::size_t quota =
        config_.quota == 0 ? config_.instances : std::min(config_.quota, config_.instances);
    {
      std::lock_guard lock(mutex_);
      target_ = quota - std::min(quota, completedBefore);
    }

    EngineOptions options;
    options.workers = config_.workers;
    // The process has no timeouts; the timer takes over what a killed life
    // held once its lease expires, which a short lease keeps quick.
    options.timerThread = true;
    options.leaseDuration = kLease;
    options.listener = std::make_shared<EndListener>(*this);
    engine_ = std::make_unique<Engine>(std::move(*store), std::move(options));

    std::vector<std::thread> completers;
    for (std::size_t i = 0; i < config_.completers; ++i) {
      completers.emplace_back([this, i] { completerLoop(i); });
    }
    const int code = drive(existing, quota);
    if (code == kAllDone && config_.idleFd >= 0) {
      // Done before the kill: tell the parent, which counts the kill as landing
      // on an idle life, and wait for it. (PR_SET_PDEATHSIG ends an orphan.)
      while (::write(config_.idleFd, "d", 1) < 0 && errno == EINTR) {
      }
      for (;;) ::pause();
    }
    {
      std::lock_guard lock(mutex_);
      finished_ = true;
    }
    changed_.notify_all();
    for (auto& thread : completers) thread.join();
    engine_->waitIdle();
    if (code == kAllDone && config_.verbose) {
      std::cout << fmt::format(
          "life {}: {} instances were Completed before it, {} started by it, {} completed by "
          "it; {} completions acknowledged, {} answered AlreadyCompleted\n",
          config_.life, completedBefore, quota - std::min(quota, existing), completedNow_,
          acknowledged_, alreadyCompleted_);
    }
    return code;
  }

  // The listener: an instance reached its end.
  void onEnd(const HistoryEvent& event) {
    {
      std::lock_guard lock(mutex_);
      if (event.kind == HistoryKind::Completed) {
        ++completedNow_;
      } else {
        failure_ = fmt::format("instance {} {}: {}", event.instance, historyKindName(event.kind),
                               event.detail);
        failureCode_ = kInstanceFailed;
      }
    }
    changed_.notify_all();
  }

 private:
  // The external system remembers the serials handed to it before the crash
  // (the Wait lines of the handler log) and completes those it has not logged
  // an acknowledgement for as soon as define() has registered the process:
  // concurrently with the recovery define() queues for the workers, which may
  // be re-running those very handlers. The missing instances start, and the
  // life waits until every instance is Completed.
  int drive(std::size_t existing, std::size_t quota) {
    std::size_t torn = 0;
    std::set<std::string, std::less<>> acknowledged;
    for (const std::string& line : readCompleteLines(ackLogPath(config_), torn)) {
      acknowledged.insert(line.substr(0, line.find(' ')));
    }
    for (const std::string& line : readCompleteLines(handlerLogPath(config_), torn)) {
      std::istringstream fields(line);  // "<instance> <step> <attempt> <serial> L<life>"
      std::string instance, step, attempt, serial;
      if (fields >> instance >> step >> attempt >> serial && step == kWait &&
          acknowledged.insert(serial).second) {
        hand(serial);
      }
    }
    auto defined = engine_->define(workload());
    {
      std::lock_guard lock(mutex_);
      defined_ = true;  // completions before this would answer ProcessNotDefined
    }
    changed_.notify_all();
    if (!defined) return fatalNow("define: " + defined.error().toString());
    for (std::size_t seq = existing + 1; seq <= quota; ++seq) {
      auto started = engine_->start(kProcess, {{kSeq, static_cast<std::int64_t>(seq)}});
      if (!started) return fatalNow(fmt::format("start #{}: {}", seq, started.error().toString()));
    }

    std::unique_lock lock(mutex_);
    startingDone_ = true;
    for (;;) {
      changed_.wait(lock, [&] { return done() || failureCode_ != 0 || quiet(); });
      if (failureCode_ != 0) return report(lock);
      if (done()) return kAllDone;
      // Nothing queued for the external system and no completer busy: only the
      // engine's workers can still produce work (a Wait handler handing out its
      // serial). When they are idle too, the external system sweeps the engine's
      // waiting steps; when none waits, yet instances are open, the life is stuck.
      lock.unlock();
      engine_->waitIdle();
      auto swept = sweepWaiting();
      lock.lock();
      if (!swept) {
        failure_ = "waiting: " + swept.error().toString();
        failureCode_ = kChildFatal;
      } else if (*swept == 0 && failureCode_ == 0 && !done() && quiet()) {
        // Instances a killed life held wait for their lease to expire; then
        // the timer takes them over. Stuck only when nothing moves for longer.
        const std::size_t before = completedNow_;
        const bool moved = changed_.wait_for(lock, kLease * 8 + std::chrono::seconds(2), [&] {
          return done() || failureCode_ != 0 || completedNow_ != before || !quiet();
        });
        if (!moved) {
          failure_ = "no serial to complete and the engine is idle, yet " +
                     std::to_string(target_ - completedNow_) + " instances are open";
          failureCode_ = kChildStuck;
        }
      }
    }
  }

  // Hands every waiting step's serial to the external system; returns how many.
  Result<std::size_t> sweepWaiting() {
    WaitingFilter filter;
    filter.limit = 1000;
    std::size_t handed = 0;
    for (;;) {
      auto page = engine_->waiting(filter);
      if (!page) return tl::unexpected(page.error());
      for (const WaitingStep& step : page->steps) hand(step.serial);
      handed += page->steps.size();
      if (!page->next) return handed;
      filter.after = *page->next;
    }
  }

  bool done() const { return startingDone_ && completedNow_ >= target_; }
  bool quiet() const { return startingDone_ && inbox_.empty() && activeCompleters_ == 0; }

  int report(std::unique_lock<std::mutex>& lock) {
    const std::string message = failure_;
    const int code = failureCode_;
    lock.unlock();
    std::cerr << fmt::format("asyncflow_crash child (life {}): {}\n", config_.life, message);
    if (code == kChildStuck) printOpenInstances();
    return code;
  }

  int fatalNow(const std::string& message) {
    std::cerr << fmt::format("asyncflow_crash child (life {}): {}\n", config_.life, message);
    return kChildFatal;
  }

  void fatal(std::string message) {
    {
      std::lock_guard lock(mutex_);
      if (failureCode_ == 0) {
        failure_ = std::move(message);
        failureCode_ = kChildFatal;
      }
    }
    changed_.notify_all();
  }

  void printOpenInstances() {
    try {
      SQLite::Database reader(databasePath(config_), SQLite::OPEN_READONLY);
      SQLite::Statement open(reader,
                             "SELECT i.id, i.status, r.step, r.status, r.attempt FROM instances i "
                             "JOIN step_runs r ON r.instance_id = i.id AND r.run = i.current_run "
                             "WHERE i.status != 'Completed' ORDER BY i.id LIMIT 20");
      while (open.executeStep()) {
        std::cerr << fmt::format("  instance {} {}: step {} {} (attempt {})\n",
                                 open.getColumn(0).getInt64(), open.getColumn(1).getString(),
                                 open.getColumn(2).getString(), open.getColumn(3).getString(),
                                 open.getColumn(4).getInt());
      }
    } catch (const std::exception& e) {
      std::cerr << "  (cannot list them: " << e.what() << ")\n";
    }
  }

  // The process: Prepare -> Wait -> Finish -> end. Every handler logs the
  // attempt it saw before doing anything, and records it in a field.
  Process workload() {
    Process process(kProcess, 1);
    process.field(kSeq, Type::Int64)
        .field(kToken, Type::String)
        .field(kFinishedToken, Type::String)
        .field(kPrepareAttempt, Type::Int64)
        .field(kWaitAttempt, Type::Int64)
        .field(kFinishAttempt, Type::Int64)
        .step(Step(kPrepare,
                   [this](StepContext& ctx) {
                     logHandler(ctx, "-");
                     ctx.fields().set(kPrepareAttempt, ctx.attempt());
                     return StepOutcome::next();
                   }))
        .step(AsyncStep(kWait,
                        [this](AsyncStepContext& ctx) {
                          logHandler(ctx, ctx.serial());
                          ctx.fields().set(kWaitAttempt, ctx.attempt());
                          hand(ctx.serial());  // the outbound call to the external system
                          return StartOutcome::wait();
                        }))
        .step(Step(kFinish, [this](StepContext& ctx) {
          logHandler(ctx, "-");
          ctx.fields().set(kFinishAttempt, ctx.attempt());
          ctx.fields().set(kFinishedToken, ctx.fields().getOr<std::string>(kToken, ""));
          return StepOutcome::next();
        }));
    return process;
  }

  void logHandler(const StepContext& ctx, std::string_view serial) {
    if (!handlers_.append(fmt::format("{} {} {} {} L{}\n", ctx.instanceId(), ctx.stepName(),
                                      ctx.attempt(), serial, config_.life))) {
      fatal(fmt::format("handler log: write failed, errno {}", errno));
    }
  }

  // The external system receives a serial.
  void hand(std::string serial) {
    {
      std::lock_guard lock(mutex_);
      inbox_.push_back(std::move(serial));
    }
    changed_.notify_all();
  }

  // One thread of the external system: completes serials with a unique token and,
  // once a completion is acknowledged, appends "<serial> <token>" to the ack log.
  void completerLoop(std::size_t index) {
    std::uint64_t sent = 0;
    int transient = 0;
    for (;;) {
      std::string serial;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return finished_ || (defined_ && !inbox_.empty()); });
        if (finished_) return;
        serial = std::move(inbox_.front());
        inbox_.pop_front();
        ++activeCompleters_;
      }
      const std::string token = fmt::format("L{}-C{}-{}", config_.life, index, ++sent);
      auto completed = engine_->completeServerEvent(serial, {{kToken, token}});
      bool again = false;
      if (completed) {
        transient = 0;
        if (!acks_.append(serial + " " + token + "\n")) {
          fatal(fmt::format("ack log: write failed, errno {}", errno));
        }
      } else if (completed.error().code == Errc::AlreadyCompleted) {
        transient = 0;  // an earlier life (or another thread) completed it
      } else if ((completed.error().code == Errc::StoreError ||
                  completed.error().code == Errc::Conflict) &&
                 ++transient < kMaxTransientErrors) {
        again = true;
      } else {
        fatal(fmt::format("completeServerEvent({}): {}", serial, completed.error().toString()));
      }
      {
        std::lock_guard lock(mutex_);
        if (completed) ++acknowledged_;
        if (hasCode(completed, Errc::AlreadyCompleted)) ++alreadyCompleted_;
        if (again) inbox_.push_back(std::move(serial));
        --activeCompleters_;
      }
      changed_.notify_all();
    }
  }

  const CrashConfig& config_;
  AppendLog acks_;
  AppendLog handlers_;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::string> inbox_;  // serials handed to the external system
  std::size_t activeCompleters_ = 0;
  std::size_t target_ = 0;        // instances this life must see complete
  std::size_t completedNow_ = 0;  // ... and has seen complete
  bool defined_ = false;          // define() registered the process; completers may begin
  bool startingDone_ = false;
  bool finished_ = false;
  int failureCode_ = 0;
  std::string failure_;
  std::size_t acknowledged_ = 0;
  std::size_t alreadyCompleted_ = 0;

  // Last: destroyed first, while the handlers' targets above still exist.
  std::unique_ptr<Engine> engine_;
};

void EndListener::onEvent(const HistoryEvent& event) {
  if (event.kind == HistoryKind::Completed || event.kind == HistoryKind::Failed ||
      event.kind == HistoryKind::Cancelled) {
    life_.onEnd(event);
  }
}

}  // namespace

int runChild(const CrashConfig& config) {
  try {
    Life life(config);
    return life.run();
  } catch (const std::exception& e) {
    std::cerr << fmt::format("asyncflow_crash child (life {}): {}\n", config.life, e.what());
    return kChildFatal;
  }
}

}  // namespace asyncflow::crash

// One life of the crash harness's workload: the engine on a SQLite file at
// synchronous FULL (or on a PostgreSQL schema), a starter, and a simulated external system whose
// completer threads complete serials and log each acknowledged completion durably. Alone on the
// file, or one of several hosts at once (CrashConfig::hosts).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <exception>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <errno.h>
#include <unistd.h>

#include <asyncflow/asyncflow.hpp>
#include <fmt/format.h>

#include "crash.hpp"
#include "support/test_store.hpp"

namespace asyncflow::crash {
namespace {

// Consecutive StoreError or Conflict answers a completer (or a start) accepts
// before it gives up.
constexpr int kMaxTransientErrors = 1000;

// With several hosts: how often a life looks at the database's counts and at
// the other lives' handler logs, how long without any instance completing (in
// any host) before it sweeps waiting(), and before it calls the run stuck.
constexpr std::chrono::milliseconds kPollInterval{100};
constexpr std::chrono::milliseconds kScoutInterval{20};
constexpr std::chrono::seconds kSweepAfter{1};
constexpr std::chrono::seconds kStuckAfter{20};
// With several hosts: Running instances (in all hosts) above which no life
// starts one more, and how long a starter then waits before it looks again.
constexpr std::int64_t kMaxRunning = 60;
constexpr std::chrono::milliseconds kStartPause{10};

// The external system's memory of the serials other lives handed out: the Wait
// lines of their handler logs. The first poll() reads every life's log, leaving
// out the serials some ack log shows completed; later ones read what the lives
// still running (none is recorded dead in lives.log yet) appended since, and the
// logs of lives started after this one. Not thread-safe: one thread polls.
class SerialScout {
 public:
  explicit SerialScout(const CrashConfig& config) : config_(config), nextLife_(config.life + 1) {}

  // Wait serials of other lives' handler logs that no poll returned before.
  std::vector<std::string> poll() {
    std::vector<std::string> found;
    readDeaths();
    if (!started_) {
      started_ = true;
      std::size_t torn = 0;
      for (const auto& [life, path] : lifeLogs(config_, "acks")) {
        for (const std::string& line : readCompleteLines(path, torn)) {
          seen_.insert(line.substr(0, line.find(' ')));
        }
      }
      for (const auto& [life, path] : lifeLogs(config_, "handlers")) {
        if (life == config_.life) continue;
        std::size_t offset = 0;
        read(life, offset, found);
        if (config_.hosts > 1 && dead_.count(life) == 0) tails_[life] = offset;
      }
      // Lives started before this one that have not opened their log yet.
      for (std::size_t life = 1; config_.hosts > 1 && life < config_.life; ++life) {
        if (dead_.count(life) == 0) tails_.emplace(life, 0);
      }
      return found;
    }
    for (auto tail = tails_.begin(); tail != tails_.end();) {
      read(tail->first, tail->second, found);
      // A life recorded dead wrote its last line before the record: drop it.
      tail = dead_.count(tail->first) != 0 ? tails_.erase(tail) : std::next(tail);
    }
    for (;;) {
      std::size_t offset = 0;
      if (std::filesystem::exists(handlerLogPath(config_, nextLife_))) {
        read(nextLife_, offset, found);
        if (dead_.count(nextLife_) == 0) tails_[nextLife_] = offset;
      } else if (dead_.count(nextLife_) == 0) {
        break;  // not started yet, or not yet at its log
      }
      ++nextLife_;
    }
    return found;
  }

 private:
  void read(std::size_t life, std::size_t& offset, std::vector<std::string>& found) {
    std::size_t torn = 0;
    std::size_t consumed = 0;
    for (const std::string& line :
         readCompleteLines(handlerLogPath(config_, life), torn, offset, &consumed)) {
      const auto parsed = parseHandlerLine(line);
      if (parsed && parsed->begins && parsed->step == kWait &&
          seen_.insert(parsed->serial).second) {
        found.push_back(parsed->serial);
      }
    }
    offset += consumed;
  }

  // "killed L<life> <micros>" and "exited L<life> <micros>" lines the parent added.
  void readDeaths() {
    std::size_t torn = 0;
    std::size_t consumed = 0;
    for (const std::string& line :
         readCompleteLines(livesLogPath(config_), torn, livesOffset_, &consumed)) {
      const auto mark = line.find(" L");
      if (mark != std::string::npos)
        dead_.insert(std::strtoull(line.c_str() + mark + 2, nullptr, 10));
    }
    livesOffset_ += consumed;
  }

  const CrashConfig& config_;
  bool started_ = false;
  std::set<std::string, std::less<>> seen_;  // serials returned, or acknowledged in a log
  std::set<std::size_t> dead_;
  std::size_t livesOffset_ = 0;
  std::map<std::size_t, std::size_t> tails_;  // life -> bytes of its log already read
  std::size_t nextLife_;                      // the first later life not yet tailed
};

// The life's store: the shared store, with a line in the life's starts log for
// every step start a commit is about to write, before it is written, with the
// lease written along ("start ..."), and one for each of them that the commit
// then did not write ("lost ...": a conflict, a taken start key or a failure).
// A kill during the commit leaves the first line, so every StepStarted entry
// in the file has its "start" line (see startLogPath).
class StartLoggingStore final : public StoreWrapper {
 public:
  StartLoggingStore(std::shared_ptr<Store> target, AppendLog& log, std::size_t life)
      : StoreWrapper(std::move(target)), log_(log), life_(life) {}

  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override {
    std::vector<std::string> starts(batch.size());  // per set: its lines, without the verb
    std::string lines;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const ChangeSet& set = batch[i];
      for (const HistoryEvent& event : set.history) {
        if (event.kind != HistoryKind::StepStarted) continue;
        const auto run = std::find_if(set.stepRuns.begin(), set.stepRuns.end(),
                                      [&](const StepRunRecord& r) { return r.run == event.run; });
        const bool leased = !set.instance.leaseOwner.empty() && set.instance.leaseExpiry;
        starts[i] += fmt::format(
            " {} {} {} {} {} {} {} L{}\n", set.instance.id,
            set.instance.id == 0 ? set.fields.getOr<std::int64_t>(kSeq, 0) : 0, event.run,
            event.step, run == set.stepRuns.end() ? 0 : run->attempt, microsOf(event.at),
            leased ? std::to_string(microsOf(*set.instance.leaseExpiry)) : std::string("-"), life_);
      }
      lines += prefixed("start", starts[i]);
    }
    if (lines.empty()) return StoreWrapper::apply(std::move(batch));
    if (!log_.append(lines)) {
      return fail(Errc::StoreError, fmt::format("starts log: write failed, errno {}", errno));
    }
    auto results = StoreWrapper::apply(std::move(batch));
    std::string lost;
    for (std::size_t i = 0; i < starts.size(); ++i) {
      if (!results || (*results)[i].status != ApplyStatus::Applied) {
        lost += prefixed("lost", starts[i]);
      }
    }
    if (!lost.empty()) log_.append(lost);  // lost with a kill, it only leaves a line unmatched
    return results;
  }

 private:
  static std::int64_t microsOf(Timestamp t) {
    return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  }

  // Each line of `lines` (" ...\n" each) with `verb` in front.
  static std::string prefixed(std::string_view verb, const std::string& lines) {
    std::string out;
    std::size_t begin = 0;
    for (std::size_t end = lines.find('\n'); end != std::string::npos;
         begin = end + 1, end = lines.find('\n', begin)) {
      out += verb;
      out.append(lines, begin, end + 1 - begin);
    }
    return out;
  }

  AppendLog& log_;
  const std::size_t life_;
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
      : config_(config), acks_(ackLogPath(config, config.life), true),
        handlers_(handlerLogPath(config, config.life), false),
        engineLog_(engineLogPath(config, config.life), false),
        startsLog_(startLogPath(config, config.life), false), scout_(config) {}

  int run() {
    // SQLite at synchronous FULL by default; PostgreSQL commits are durable.
    auto store = testing::openTestStore(storeSpec(config_));
    if (!store) return fatalNow("open: " + store.error().toString());
    std::size_t existing = 0;
    std::size_t completedBefore = 0;
    {
      auto reader = testing::openTestSql(storeSpec(config_));
      existing = static_cast<std::size_t>(reader->count("SELECT COUNT(*) FROM instances"));
      completedBefore = static_cast<std::size_t>(
          reader->count("SELECT COUNT(*) FROM instances WHERE status = 'Completed'"));
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
    // Kept for the checker: an instance the engine had trouble with (a store
    // failure, then a drive after a back-off) may re-run early on this host.
    options.log = [this](LogLevel level, std::string_view message) {
      if (level < LogLevel::Warning) return;
      std::string line = fmt::format("{} {} {}\n", wallMicros(),
                                     level == LogLevel::Warning ? "Warning" : "Error", message);
      std::replace(line.begin(), line.end() - 1, '\n', ' ');
      engineLog_.append(line);
    };
    engine_ = std::make_unique<Engine>(
        std::make_shared<StartLoggingStore>(std::shared_ptr<Store>(std::move(*store)), startsLog_,
                                            config_.life),
        std::move(options));

    std::vector<std::thread> completers;
    for (std::size_t i = 0; i < config_.completers; ++i) {
      completers.emplace_back([this, i] { completerLoop(i); });
    }
    const int code = config_.hosts > 1 ? driveShared(quota) : drive(existing, quota);
    if (code == kAllDone && config_.idleFd >= 0 && config_.hosts == 1) {
      // Done before the kill: tell the parent, which counts the kill as landing
      // on an idle life, and wait for it. (PR_SET_PDEATHSIG ends an orphan.)
      sayIdle();
      for (;;) ::pause();
    }
    {
      std::lock_guard lock(mutex_);
      finished_ = true;
    }
    changed_.notify_all();
    for (auto& thread : completers) thread.join();
    if (scoutThread_.joinable()) scoutThread_.join();
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
  // Alone on the file. The external system remembers the serials handed to it
  // before the crash (the Wait lines of the handler logs) and completes those
  // it has not logged an acknowledgement for as soon as define() has
  // registered the process: concurrently with the recovery define() queues for
  // the workers, which may be re-running those very handlers. The missing
  // instances start, and the life waits until every instance is Completed.
  int drive(std::size_t existing, std::size_t quota) {
    for (std::string& serial : scout_.poll()) hand(std::move(serial));
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

  // One of several hosts on the file (config.hosts > 1). The lives that run at
  // once share the work: each starts the instances up to its quota (all of
  // them, as the parent runs it) that none started (by start key), drives what its engine runs or
  // takes over, and completes every serial it hears of, its own handlers' and, from their logs, the
  // other lives'. So completions come from any host, and often two hosts complete one serial (one
  // is answered AlreadyCompleted). Whether the work is done is the database's count, since other
  // hosts complete instances too. A life serves until the parent's last-kill mark, then returns
  // once every instance is Completed. (The parent paces its kills by the same count.)
  int driveShared(std::size_t quota) {
    for (std::string& serial : scout_.poll()) hand(std::move(serial));
    scoutThread_ = std::thread([this] { scoutLoop(); });
    auto defined = engine_->define(workload());
    {
      std::lock_guard lock(mutex_);
      defined_ = true;
    }
    changed_.notify_all();
    if (!defined) return fatalNow("define: " + defined.error().toString());
    try {
      if (auto trouble = startMissing(quota)) return fatalNow(*trouble);
      {
        std::lock_guard lock(mutex_);
        startingDone_ = true;
      }
      auto reader = testing::openTestSql(storeSpec(config_));
      const auto began = std::chrono::steady_clock::now();
      auto lastMove = began;
      auto lastSweep = began;
      std::int64_t lastCompleted = -1;
      for (;;) {
        {
          std::unique_lock lock(mutex_);
          if (changed_.wait_for(lock, kPollInterval, [&] { return failureCode_ != 0; })) {
            return report(lock);
          }
        }
        const WorkCounts work = countWork(*reader);
        const std::int64_t total = work.total;
        const std::int64_t completed = work.completed();
        const auto now = std::chrono::steady_clock::now();
        if (completed != lastCompleted) {
          lastCompleted = completed;
          lastMove = now;
        }
        if (completed >= static_cast<std::int64_t>(config_.instances) &&
            std::filesystem::exists(lastKillMarkPath(config_))) {
          return kAllDone;
        }
        if (now - lastMove >= kSweepAfter && now - lastSweep >= kSweepAfter) {
          // No instance completed anywhere for a while: ask the engine what waits.
          lastSweep = now;
          if (auto swept = sweepWaiting(); !swept) {
            return fatalNow("waiting: " + swept.error().toString());
          }
        }
        if (completed < total && now - lastMove >= kStuckAfter) {
          std::cerr << fmt::format(
              "asyncflow_crash child (life {}): no instance completed in any host for {} s, "
              "yet {} of {} are open\n",
              config_.life, kStuckAfter.count(), total - completed, total);
          printOpenInstances();
          return kChildStuck;
        }
      }
    } catch (const std::exception& e) {
      return fatalNow(fmt::format("reading the database: {}", e.what()));
    }
  }

  // Starts each instance up to Seq `quota` that the database lacks, keyed by its
  // Seq: lives racing for one Seq make one instance. Starts wait while
  // kMaxRunning instances are Running (in any host), so that the hosts are not
  // handed more than they drive within a lease. A message on failure.
  std::optional<std::string> startMissing(std::size_t quota) {
    auto reader = testing::openTestSql(storeSpec(config_));
    std::set<std::int64_t> existing;
    for (const auto& row : reader->rows("SELECT value FROM fields WHERE name = 'Seq'")) {
      existing.insert(std::stoll(row.at(0).value_or("0")));
    }
    for (std::int64_t seq = 1; seq <= static_cast<std::int64_t>(quota); ++seq) {
      if (existing.count(seq) != 0) continue;
      while (countWork(*reader).running >= kMaxRunning) {
        std::unique_lock lock(mutex_);
        if (changed_.wait_for(lock, kStartPause, [&] { return failureCode_ != 0; })) {
          return std::nullopt;  // the loop after reports it
        }
      }
      for (int transient = 0;;) {
        auto started = engine_->startOnce(kProcess, fmt::format("seq-{}", seq), {{kSeq, seq}});
        if (started) break;
        if (started.error().code != Errc::StoreError || ++transient >= kMaxTransientErrors) {
          return fmt::format("startOnce #{}: {}", seq, started.error().toString());
        }
      }
    }
    return std::nullopt;
  }

  // Hands the serials other lives' handlers hand out as their logs grow.
  void scoutLoop() {
    std::unique_lock lock(mutex_);
    while (!changed_.wait_for(lock, kScoutInterval, [&] { return finished_; })) {
      lock.unlock();
      try {
        for (std::string& serial : scout_.poll()) hand(std::move(serial));
      } catch (const std::exception& e) {
        fatal(fmt::format("reading the other lives' logs: {}", e.what()));
      }
      lock.lock();
    }
  }

  // Tells the parent (if it listens) that this life's share of the work is done.
  void sayIdle() {
    if (config_.idleFd < 0) return;
    while (::write(config_.idleFd, "d", 1) < 0 && errno == EINTR) {
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
      auto reader = testing::openTestSql(storeSpec(config_));
      for (const auto& row :
           reader->rows("SELECT i.id, i.status, r.step, r.status, r.attempt FROM instances i "
                        "JOIN step_runs r ON r.instance_id = i.id AND r.run = i.current_run "
                        "WHERE i.status != 'Completed' ORDER BY i.id LIMIT 20")) {
        std::cerr << fmt::format("  instance {} {}: step {} {} (attempt {})\n",
                                 row.at(0).value_or(""), row.at(1).value_or(""),
                                 row.at(2).value_or(""), row.at(3).value_or(""),
                                 row.at(4).value_or(""));
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
                     const std::uint64_t run = logBegin(ctx, "-");
                     ctx.fields().set(kPrepareAttempt, ctx.attempt());
                     logEnd(run);
                     return StepOutcome::next();
                   }))
        .step(AsyncStep(kWait,
                        [this](AsyncStepContext& ctx) {
                          const std::uint64_t run = logBegin(ctx, ctx.serial());
                          ctx.fields().set(kWaitAttempt, ctx.attempt());
                          hand(ctx.serial());  // the outbound call to the external system
                          logEnd(run);
                          return StartOutcome::wait();
                        }))
        .step(Step(kFinish, [this](StepContext& ctx) {
          const std::uint64_t run = logBegin(ctx, "-");
          ctx.fields().set(kFinishAttempt, ctx.attempt());
          ctx.fields().set(kFinishedToken, ctx.fields().getOr<std::string>(kToken, ""));
          logEnd(run);
          return StepOutcome::next();
        }));
    return process;
  }

  // The handler log's "run" line (see HandlerLine), its time read before the
  // handler does anything; returns the run's number for logEnd().
  std::uint64_t logBegin(const StepContext& ctx, std::string_view serial) {
    const std::uint64_t run = ++handlerRuns_;
    if (!handlers_.append(fmt::format("run {} {} {} {} L{} {} {}\n", ctx.instanceId(),
                                      ctx.stepName(), ctx.attempt(), serial, config_.life, run,
                                      wallMicros()))) {
      fatal(fmt::format("handler log: write failed, errno {}", errno));
    }
    return run;
  }

  // The "end" line, its time read after everything the handler did.
  void logEnd(std::uint64_t run) {
    if (!handlers_.append(fmt::format("end L{} {} {}\n", config_.life, run, wallMicros()))) {
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
        // An earlier life, another host or another thread completed it; only
        // that call's success wrote an ack line.
        transient = 0;
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
  AppendLog engineLog_;
  AppendLog startsLog_;
  std::atomic<std::uint64_t> handlerRuns_{0};
  SerialScout scout_;  // drive() polls it once; with several hosts, then only scoutThread_
  std::thread scoutThread_;

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

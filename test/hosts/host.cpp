// asyncflow_host: one host of the multi-host tests, in its own OS process with
// its own Engine on a shared SQLite file, or a shared PostgreSQL schema when F
// is "postgres:<schema>" (support/test_store.hpp; test/hosts/multi_host_test.cpp
// runs it). The process definitions, file descriptors and log format are in
// host_protocol.hpp.
//
//   asyncflow_host host --db F --log L --process P|Q|R --name N [--workers W]
//                       [--lease-ms MS] [--start K] [--spread] [--block-fd FD]
//                       [--no-timer] [--exit-after-start]
//     Opens F, reports "owner <owner>", defines the process and reports
//     "defined <µs define() took>", starts K instances (R: --spread gives
//     instance i Slot i % 20; otherwise Slot 0) and reports "started K". Then
//     it exits (--exit-after-start) or serves until "exit" (or EOF) on stdin,
//     at most kIdleCap. Reports every log line it writes, "waiting <id>" and
//     "completed <id>" as its engine commits them, "failed <id> <why>", and
//     "bye" once the engine is destroyed.
//
//   asyncflow_host batch --db F --log L --expect K
//     The integration job of the seed: defines nothing, lists the K waiting
//     Q.Wait steps, checks that an undeclared field and a wrongly typed one are
//     InvalidField, then completes each with Result "done-<id>", logging
//     "completed" after each. Reports "invalid-field ok" and "done K".
//
// Exit codes: 0 done; 2 usage; 3 setup (open, define, start) failed; 4 a batch
// check failed; 5 no command came within kIdleCap.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <asyncflow/asyncflow.hpp>

#include "host_protocol.hpp"
#include "support/test_store.hpp"

namespace {

using namespace asyncflow;
using namespace asyncflow::hosts;

constexpr int kUsage = 2;
constexpr int kSetupFailed = 3;
constexpr int kBatchFailed = 4;
constexpr int kNoCommand = 5;

// How long a host serves without a command, and a blocked handler waits for
// its release byte: longer than any test, so only a lost parent reaches them.
constexpr std::chrono::seconds kIdleCap{120};
constexpr std::chrono::seconds kReleaseCap{60};

struct HostConfig {
  std::string mode;  // "host" or "batch"
  std::string db;
  std::string log;
  std::string process;  // P, Q or R
  std::string name;     // EngineOptions::ownerName
  std::size_t workers = 0;
  std::chrono::milliseconds lease{30000};
  std::size_t start = 0;
  bool spread = false;
  int blockFd = -1;
  bool timer = true;
  bool exitAfterStart = false;
  std::size_t expect = 0;
};

// Writes all of `text` to `fd`, one write(2) unless it is interrupted.
// Lines below PIPE_BUF reach a pipe, or an O_APPEND file, whole.
bool writeAll(int fd, std::string_view text) {
  while (!text.empty()) {
    const ssize_t written = ::write(fd, text.data(), text.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    text.remove_prefix(static_cast<std::size_t>(written));
  }
  return true;
}

void report(const std::string& line) {
  if (!writeAll(kReportFd, line + '\n')) std::cerr << "asyncflow_host: cannot report " << line;
}

// The shared handler log, opened with O_APPEND: each line is one write(2), so
// the lines of several processes interleave but never mix.
class HandlerLog {
 public:
  explicit HandlerLog(const std::string& path)
      : fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) {
    if (fd_ < 0) throw std::runtime_error("cannot open " + path);
  }
  ~HandlerLog() { ::close(fd_); }
  HandlerLog(const HandlerLog&) = delete;
  HandlerLog& operator=(const HandlerLog&) = delete;

  // Appends the line and reports it.
  void append(const LogLine& line) {
    const std::string text = line.text();
    if (!writeAll(fd_, text)) throw std::runtime_error("cannot append to the handler log");
    report(text.substr(0, text.size() - 1));
  }

 private:
  int fd_;
};

// Waits for one release byte on `fd`, a non-blocking pipe that several
// handlers share (another may take the byte poll() saw). False when the pipe
// was closed, or after `cap`.
bool awaitRelease(int fd, std::chrono::milliseconds cap) {
  const auto deadline = std::chrono::steady_clock::now() + cap;
  for (;;) {
    char byte = 0;
    const ssize_t got = ::read(fd, &byte, 1);
    if (got == 1) return true;
    if (got == 0) return false;
    if (errno != EAGAIN && errno != EINTR) return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd wait{fd, POLLIN, 0};
    ::poll(&wait, 1, static_cast<int>(left.count()));
  }
}

// Reports the transitions the tests wait for.
class Reporter final : public Listener {
 public:
  void onEvent(const HistoryEvent& event) override {
    const std::string id = std::to_string(event.instance);
    switch (event.kind) {
      case HistoryKind::Waiting: report("waiting " + id); break;
      case HistoryKind::Completed: report("completed " + id); break;
      case HistoryKind::Failed: report("failed " + id + " " + event.detail); break;
      case HistoryKind::Cancelled: report("cancelled " + id + " " + event.detail); break;
      default: break;
    }
  }
};

// One engine on the shared file, with the handlers of P, Q and R.
class Host {
 public:
  explicit Host(HostConfig config) : config_(std::move(config)), log_(config_.log) {}

  int run() {
    auto store = asyncflow::testing::openTestStore(config_.db);
    if (!store) return setupFailed("open: " + store.error().toString());
    EngineOptions options;
    options.workers = config_.workers;
    options.leaseDuration = config_.lease;
    options.ownerName = config_.name;
    options.timerThread = config_.timer;
    options.listener = std::make_shared<Reporter>();
    options.log = [this](LogLevel level, std::string_view message) {
      if (level >= LogLevel::Warning) std::cerr << config_.name << ": " << message << '\n';
    };
    engine_ = std::make_unique<Engine>(std::shared_ptr<Store>(std::move(*store)), options);
    owner_ = engine_->owner();
    report("owner " + owner_);
    return config_.mode == "batch" ? batch() : serve();
  }

 private:
  int serve() {
    const auto before = std::chrono::steady_clock::now();
    auto defined = engine_->define(process());
    const auto took = std::chrono::steady_clock::now() - before;
    if (!defined) return setupFailed("define: " + defined.error().toString());
    report("defined " +
           std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(took).count()));
    for (std::size_t i = 0; i < config_.start; ++i) {
      Fields fields;
      if (config_.process == "R") {
        fields.set("Slot", static_cast<std::int64_t>(config_.spread ? i % kSlots : 0));
      }
      auto started = engine_->start(config_.process, fields);
      if (!started) return setupFailed("start: " + started.error().toString());
    }
    report("started " + std::to_string(config_.start));
    const int code = config_.exitAfterStart ? 0 : awaitExit();
    engine_.reset();  // an orderly stop: hands what it drives over
    report("bye");
    return code;
  }

  // Reads commands until "exit" or EOF; kNoCommand after kIdleCap of silence.
  int awaitExit() {
    std::string pending;
    const auto deadline = std::chrono::steady_clock::now() + kIdleCap;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd in{STDIN_FILENO, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&in, 1, static_cast<int>(left.count())) == 0) {
        std::cerr << config_.name << ": no command within " << kIdleCap.count() << " s\n";
        return kNoCommand;
      }
      char buffer[256];
      const ssize_t got = ::read(STDIN_FILENO, buffer, sizeof buffer);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return 0;  // the parent closed our stdin: stop as on "exit"
      pending.append(buffer, static_cast<std::size_t>(got));
      for (auto end = pending.find('\n'); end != std::string::npos; end = pending.find('\n')) {
        const std::string command = pending.substr(0, end);
        pending.erase(0, end + 1);
        if (command == "exit") return 0;
        std::cerr << config_.name << ": unknown command '" << command << "'\n";
      }
    }
  }

  int batch() {
    std::vector<WaitingStep> waiting;
    WaitingFilter filter;
    filter.process = "Q";
    filter.step = "Wait";
    for (;;) {
      auto page = engine_->waiting(filter);
      if (!page) return batchFailed("waiting: " + page.error().toString());
      waiting.insert(waiting.end(), page->steps.begin(), page->steps.end());
      if (!page->next) break;
      filter.after = *page->next;
    }
    if (waiting.size() != config_.expect) {
      return batchFailed("waiting() lists " + std::to_string(waiting.size()) + " steps, not " +
                         std::to_string(config_.expect));
    }
    // The stored declaration answers for the process this job never defined.
    const std::string& first = waiting.front().serial;
    for (const Fields& bad : {Fields{{"Undeclared", "x"}}, Fields{{"Result", 7}}}) {
      auto refused = engine_->completeServerEvent(first, bad);
      if (refused || refused.error().code != Errc::InvalidField) {
        return batchFailed("a bad field on " + first + " was not InvalidField: " +
                           (refused ? std::string("it succeeded") : refused.error().toString()));
      }
    }
    report("invalid-field ok");
    for (const WaitingStep& step : waiting) {
      const Fields result{{"Result", "done-" + std::to_string(step.instance)}};
      auto completed = engine_->completeServerEvent(step.serial, result);
      if (!completed) {
        return batchFailed("complete " + step.serial + ": " + completed.error().toString());
      }
      note(kCompleted, step.instance, 0, systemMicros());
    }
    report("done " + std::to_string(waiting.size()));
    engine_.reset();
    report("bye");
    return 0;
  }

  Process process() {
    const std::string& name = config_.process;
    Process p(name, 1);
    if (name == "P") {
      p.step(Step("Slow", [this](StepContext& ctx) {
        note(kStart, ctx.instanceId(), ctx.attempt(), steadyMicros());
        blockOnFirstAttempt(ctx);
        note(kEnd, ctx.instanceId(), ctx.attempt(), steadyMicros());
        return StepOutcome::next();
      }));
    } else if (name == "Q") {
      p.field("Result", Type::String)
          .step(AsyncStep("Wait",
                          [this](AsyncStepContext& ctx) {
                            note(kWait, ctx.instanceId(), ctx.attempt(), systemMicros(),
                                 ctx.serial());
                            return StartOutcome::wait();
                          }))
          .step(Step("After", [this](StepContext& ctx) {
            note(kAfter, ctx.instanceId(), ctx.attempt(), systemMicros());
            return StepOutcome::next();
          }));
    } else if (name == "R") {
      p.field("Slot", Type::Int64, std::int64_t{0});
      p.step(Step("Route", [](StepContext& ctx) {
        return StepOutcome::goTo("Wait" +
                                 std::to_string(ctx.fields().getOr<std::int64_t>("Slot", 0)));
      }));
      for (int slot = 0; slot < kSlots; ++slot) {
        p.step(AsyncStep("Wait" + std::to_string(slot), [this](AsyncStepContext& ctx) {
                 note(kWait, ctx.instanceId(), ctx.attempt(), steadyMicros(), ctx.serial());
                 return StartOutcome::wait();
               }).timeout(slotTimeout(slot), "Escalate"));
      }
      p.step(Step("Escalate", [this](StepContext& ctx) {
        note(kEscalate, ctx.instanceId(), ctx.attempt(), steadyMicros());
        blockOnFirstAttempt(ctx);
        note(kEscalated, ctx.instanceId(), ctx.attempt(), steadyMicros());
        return StepOutcome::next();
      }));
    } else {
      throw std::invalid_argument("unknown process " + name);
    }
    return p;
  }

  // With --block-fd, a first attempt waits for its release byte (a re-run by
  // another host, or on this one, does not). Throws, failing the step, when no
  // byte comes.
  void blockOnFirstAttempt(const StepContext& ctx) {
    if (config_.blockFd < 0 || ctx.attempt() != 1) return;
    if (!awaitRelease(config_.blockFd, kReleaseCap)) {
      throw std::runtime_error("instance " + std::to_string(ctx.instanceId()) +
                               ": no release byte came");
    }
  }

  // Appends "<event> <instance> <attempt> <this host's owner> <micros> [<serial>]".
  void note(const char* event, InstanceId instance, int attempt, std::int64_t micros,
            std::string serial = {}) {
    log_.append({event, instance, attempt, owner_, micros, std::move(serial)});
  }

  int setupFailed(const std::string& why) {
    std::cerr << config_.name << ": " << why << '\n';
    return kSetupFailed;
  }
  int batchFailed(const std::string& why) {
    std::cerr << "batch: " << why << '\n';
    return kBatchFailed;
  }

  const HostConfig config_;
  HandlerLog log_;
  // Set before define(), then only read: handlers may still run while
  // engine_ is being destroyed.
  std::string owner_;
  std::unique_ptr<Engine> engine_;
};

void usage() {
  std::cerr << "usage: asyncflow_host host --db F --log L --process P|Q|R --name N [--workers W] "
               "[--lease-ms MS] [--start K] [--spread] [--block-fd FD] [--no-timer] "
               "[--exit-after-start]\n"
               "       asyncflow_host batch --db F --log L --expect K\n";
}

// Parses argv into `config`; false (after a message) on a bad command line.
bool parse(int argc, char** argv, HostConfig& config) {
  if (argc < 2) return false;
  config.mode = argv[1];
  if (config.mode != "host" && config.mode != "batch") return false;
  if (config.mode == "batch") config.name = "batch";
  for (int i = 2; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--spread") {
      config.spread = true;
    } else if (flag == "--no-timer") {
      config.timer = false;
    } else if (flag == "--exit-after-start") {
      config.exitAfterStart = true;
    } else if (i + 1 < argc) {
      const std::string value = argv[++i];
      try {
        if (flag == "--db") {
          config.db = value;
        } else if (flag == "--log") {
          config.log = value;
        } else if (flag == "--process") {
          config.process = value;
        } else if (flag == "--name") {
          config.name = value;
        } else if (flag == "--workers") {
          config.workers = std::stoul(value);
        } else if (flag == "--lease-ms") {
          config.lease = std::chrono::milliseconds(std::stol(value));
        } else if (flag == "--start") {
          config.start = std::stoul(value);
        } else if (flag == "--block-fd") {
          config.blockFd = std::stoi(value);
        } else if (flag == "--expect") {
          config.expect = std::stoul(value);
        } else {
          std::cerr << "asyncflow_host: unknown flag " << flag << '\n';
          return false;
        }
      } catch (const std::exception&) {
        std::cerr << "asyncflow_host: " << flag << " needs a number, not '" << value << "'\n";
        return false;
      }
    } else {
      std::cerr << "asyncflow_host: " << flag << " needs a value\n";
      return false;
    }
  }
  return !config.db.empty() && !config.log.empty() &&
         (config.mode == "batch" || !config.process.empty());
}

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);  // a parent gone: writes fail instead of killing us
  HostConfig config;
  if (!parse(argc, argv, config)) {
    usage();
    return kUsage;
  }
  try {
    Host host(std::move(config));
    return host.run();
  } catch (const std::exception& e) {
    std::cerr << "asyncflow_host: " << e.what() << '\n';
    return kSetupFailed;
  }
}

// asyncflow_crash: the crash-kill harness (issue 6, item 1).
//
// A child process ("life") runs the engine on a SQLite file at synchronous FULL
// with a workload: instances of Prepare (sync) -> Wait (async) -> Finish (sync),
// and a simulated external system whose --completers threads complete the
// serials handed to it, appending "<serial> <token>" to the life's fsynced ack
// log after each acknowledged completion. The external system remembers the
// serials of earlier lives and completes them while the new life's recovery
// runs. Every handler logs its run's begin and end (crash.hpp, HandlerLine),
// every commit that starts a step logs the start and its lease first (starts
// logs), and the parent records when each life was seen dead (lives.log).
//
// One host (--hosts 1, the default): the parent SIGKILLs each life a random
// --min-delay-ms..--max-delay-ms after spawning it (5-200 ms; the upper bound
// adapts to how fast lives finish their work, so most kills land on a busy
// life), --kills times; life L of K may start instances up to L/(K+1) of
// --instances, so kills land throughout the workload (a life that finished its
// share waits for its kill; the summary counts those). A final life runs
// uninterrupted until every instance is Completed.
//
// Several hosts (--hosts H): H lives run at once on the file, each its own
// engine with a lease and a timer, and take over what a killed one held once
// its lease expires. Any life may start any missing instance (by start key, as
// several may try one at once), while fewer than 60 instances are Running.
// Kill j of the K comes once j/(K+1) of the instances are Completed, after a
// random delay of the same bounds (so kills land throughout the work on any
// machine): the parent SIGKILLs one of the lives, chosen at random, and starts
// a new life in its place. Completions come from any host: each life also
// completes the serials the other lives' handlers logged. After the last kill
// the parent makes a mark, and the lives exit once every instance is Completed.
//
// Then the checker (crash.hpp lists what it checks) verifies that no
// acknowledged completion was lost, every instance completed exactly once, no
// step run took two completions, every handler that ran again saw a higher
// attempt(), no two handler runs of one instance overlapped in time (in one
// host or two), every handler ran in the life that scheduled its attempt, and
// every takeover came after the lease it took had expired.
//
//   asyncflow_crash run [--kills 25] [--instances 1000] [--hosts 1] [--seed N] [--dir D]
//                       [--keep] [--completers 4] [--workers 2] [--min-delay-ms 5]
//                       [--max-delay-ms 200] [--store postgres]
//   asyncflow_crash check --dir D --instances N [--hosts H]  # check a kept directory again
//   asyncflow_crash selftest [--seed N]                       # the checker rejects tampered files
//   asyncflow_crash child ...                                 # one life (the parent runs it)
//
// --store postgres runs the lives on a fresh schema of the PostgreSQL test
// server (ASYNCFLOW_TEST_POSTGRES, or the ctest fixture's: support/test_store.hpp)
// instead of the file; the checker reads it the same way, but for SQLite's
// integrity check. ctest crash.hosts3.postgres runs crash.hosts3 so.
//
// The seed is printed first; the same seed replays the same kill delays and
// choices (the interleavings inside the lives still vary). On failure the files
// are kept.
//
// CI runs the bounded modes: ctest crash.kill25 (25 kills, 1,000 instances, seed
// 25; about 9 s on a 2-core VM, as under ASan) and crash.hosts3 (3 hosts, 20
// kills, 600 instances, seed 3; about 4 s, 6 s under ASan, 9 s under TSan). The
// long modes, for manual runs (README.md, "Reliability", has their figures; 60
// instances per kill keep most kills landing on a life with work left):
//
//   build/default/test/crash/asyncflow_crash run --kills 1000 --instances 60000
//   build/default/test/crash/asyncflow_crash run --hosts 3 --kills 500 --instances 30000
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <stdlib.h>

#include "crash.hpp"
#include "support/test_store.hpp"

namespace {

using namespace asyncflow::crash;
namespace fs = std::filesystem;
namespace testing = asyncflow::testing;

constexpr int kUsageError = 64;
// With several hosts, the parent gives up when no instance completes this long.
constexpr std::chrono::seconds kNoProgress{60};

void usage() {
  std::cerr << "usage: asyncflow_crash run|check|selftest|child [--kills K] [--instances N] "
               "[--hosts H] [--seed S] [--dir D] [--keep] [--completers C] [--workers W] "
               "[--min-delay-ms A] [--max-delay-ms B] [--store postgres] [--life L] [--verbose]\n";
}

// Parses the flags after the mode into `config`. False (after a message) on a bad flag.
bool parseFlags(int argc, char** argv, CrashConfig& config) {
  for (int i = 2; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--keep") {
      config.keep = true;
      continue;
    }
    if (flag == "--verbose") {
      config.verbose = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::cerr << "asyncflow_crash: " << flag << " needs a value\n";
      return false;
    }
    const std::string value = argv[++i];
    try {
      std::size_t used = 0;
      auto number = [&] {
        const unsigned long long n = std::stoull(value, &used);
        if (used != value.size()) throw std::invalid_argument(value);
        return n;
      };
      if (flag == "--dir") {
        config.dir = value;
      } else if (flag == "--store") {
        if (value != "postgres" && !testing::isPostgresSpec(value)) {
          std::cerr << "asyncflow_crash: --store takes postgres (or postgres:<schema>)\n";
          return false;
        }
        config.store = value;
      } else if (flag == "--seed") {
        config.seed = number();
      } else if (flag == "--kills") {
        config.kills = number();
      } else if (flag == "--instances") {
        config.instances = number();
      } else if (flag == "--hosts") {
        config.hosts = number();
      } else if (flag == "--completers") {
        config.completers = number();
      } else if (flag == "--workers") {
        config.workers = number();
      } else if (flag == "--min-delay-ms") {
        config.minDelayMs = static_cast<int>(number());
      } else if (flag == "--max-delay-ms") {
        config.maxDelayMs = static_cast<int>(number());
      } else if (flag == "--life") {
        config.life = number();
      } else if (flag == "--quota") {
        config.quota = number();
      } else if (flag == "--idle-fd") {
        config.idleFd = static_cast<int>(number());
      } else {
        std::cerr << "asyncflow_crash: unknown flag " << flag << '\n';
        return false;
      }
    } catch (const std::exception&) {
      std::cerr << "asyncflow_crash: " << flag << " needs a whole number, not '" << value << "'\n";
      return false;
    }
  }
  if (config.instances == 0 || config.completers == 0 || config.hosts == 0 ||
      config.minDelayMs > config.maxDelayMs) {
    std::cerr << "asyncflow_crash: --instances, --completers and --hosts must be positive, and "
                 "--min-delay-ms at most --max-delay-ms\n";
    return false;
  }
  return true;
}

// A life the parent started: its pid and, for lives that will be killed, the
// read end of the pipe on which it says it finished its work.
struct Spawned {
  pid_t pid = -1;
  int idleRead = -1;
};

// Starts one life of the workload: this program, re-executed in "child" mode,
// allowed to start instances up to `quota`. A killable life gets a pipe as fd 3
// (--idle-fd 3) and dies with the parent (PR_SET_PDEATHSIG). It executes
// /proc/self/exe, the parent's own file even if a build replaced the path
// meanwhile, so every life of a run is the same program.
Spawned spawnLife(const CrashConfig& config, std::size_t life, std::size_t quota, bool killable,
                  bool verbose) {
  constexpr int kIdleFd = 3;
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::vector<std::string> args = {self,           "child",
                                   "--dir",        config.dir,
                                   "--instances",  std::to_string(config.instances),
                                   "--hosts",      std::to_string(config.hosts),
                                   "--quota",      std::to_string(quota),
                                   "--completers", std::to_string(config.completers),
                                   "--workers",    std::to_string(config.workers),
                                   "--life",       std::to_string(life)};
  if (!config.store.empty()) {
    args.emplace_back("--store");
    args.emplace_back(config.store);
  }
  if (killable) {
    args.emplace_back("--idle-fd");
    args.emplace_back(std::to_string(kIdleFd));
  }
  if (verbose) args.emplace_back("--verbose");
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);

  int idle[2] = {-1, -1};
  if (killable && ::pipe2(idle, O_CLOEXEC | O_NONBLOCK) != 0) return {};
  const pid_t parent = ::getpid();
  std::cout.flush();
  std::cerr.flush();
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (killable) {
      if (idle[1] == kIdleFd) {
        ::fcntl(kIdleFd, F_SETFD, 0);
      } else {
        ::dup2(idle[1], kIdleFd);  // the copy is not close-on-exec
      }
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
    }
    ::execv("/proc/self/exe", argv.data());
    ::_exit(127);
  }
  if (killable) ::close(idle[1]);
  if (pid < 0 && killable) ::close(idle[0]);
  return {pid, killable ? idle[0] : -1};
}

// "killed by SIGKILL", "exited with 0", ...
std::string describeStatus(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("ended with status {}", status);
}

// A fresh directory under the system's temp directory.
std::string makeScratchDir() {
  std::string pattern = (fs::temp_directory_path() / "asyncflow-crash-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return pattern;
}

// Prints the report's failures; true when there are none.
bool printFailures(const CheckReport& report) {
  for (const std::string& failure : report.failures) std::cout << "  FAIL " << failure << '\n';
  return report.failures.empty();
}

// The parent's side of a run: spawns the lives, kills them, records their ends.
// Each method returns a message when the run cannot go on.
class Parent {
 public:
  explicit Parent(const CrashConfig& config)
      : config_(config), random_(config.seed), lives_(livesLogPath(config), true),
        maxDelayMs_(config.maxDelayMs) {}

  std::size_t idleKills() const { return idleKills_; }

  // One host: config.kills lives, each SIGKILLed a random delay after its spawn,
  // then a final life runs uninterrupted. Life L of the K killed ones may start
  // instances up to L/(K+1) of the total, so every life has new work, and kills
  // land throughout the workload; a life that is done before its kill waits for
  // it (counted as a kill of an idle life).
  std::optional<std::string> runAlone() {
    for (std::size_t life = 1; life <= config_.kills; ++life) {
      const std::size_t quota = (config_.instances * life + config_.kills) / (config_.kills + 1);
      const auto delay = nextDelay();
      const Spawned child = spawnLife(config_, life, quota, true, false);
      if (child.pid < 0) return "cannot start a life";
      std::this_thread::sleep_for(delay);  // the kill lands at a random moment of the life
      if (auto trouble = kill(child, life)) return trouble;
    }
    const std::size_t last = config_.kills + 1;
    const Spawned child = spawnLife(config_, last, config_.instances, false, config_.verbose);
    if (child.pid < 0) return "cannot run the final life";
    return awaitExit(child, last);
  }

  // Several hosts: config.hosts lives at once, each of which may start any
  // instance (the lives throttle their starts, see Life::startMissing). Kill j
  // of the K waits until j/(K+1) of the instances are Completed (so kills land
  // throughout the work, however fast this machine is), then a random delay;
  // then one of the lives, chosen at random, is SIGKILLed and a new life takes
  // its place. After the last kill the lives finish the work.
  std::optional<std::string> runShared() {
    struct Host {
      Spawned process;
      std::size_t life = 0;
    };
    std::vector<Host> hosts;
    std::size_t next = 1;
    for (; next <= config_.hosts; ++next) {
      hosts.push_back({spawnLife(config_, next, config_.instances, true, false), next});
      if (hosts.back().process.pid < 0) return "cannot start a life";
    }
    // A life ends only by a kill until the mark.
    auto endedEarly = [&]() -> std::optional<std::string> {
      for (const Host& host : hosts) {
        int status = 0;
        if (::waitpid(host.process.pid, &status, WNOHANG) == host.process.pid) {
          return fmt::format("life {} {} before the last kill", host.life, describeStatus(status));
        }
      }
      return std::nullopt;
    };
    for (std::size_t kills = 0; kills < config_.kills; ++kills, ++next) {
      const auto due =
          static_cast<std::int64_t>(config_.instances * (kills + 1) / (config_.kills + 1));
      std::int64_t completed = -1;
      auto moved = std::chrono::steady_clock::now();
      for (;;) {
        if (auto trouble = endedEarly()) return trouble;
        const std::int64_t now = completedSoFar();
        if (now >= due) break;
        if (now != completed) {
          completed = now;
          moved = std::chrono::steady_clock::now();
        } else if (std::chrono::steady_clock::now() - moved > kNoProgress) {
          return fmt::format("no instance completed for {} s before kill {} ({} of {} wanted)",
                             kNoProgress.count(), kills + 1, completed, due);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      const auto until = std::chrono::steady_clock::now() + nextDelay();
      while (std::chrono::steady_clock::now() < until) {
        if (auto trouble = endedEarly()) return trouble;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      Host& victim = hosts[random_() % hosts.size()];
      if (auto trouble = kill(victim.process, victim.life)) return trouble;
      victim = {spawnLife(config_, next, config_.instances, true, false), next};
      if (victim.process.pid < 0) return "cannot start a life";
    }
    std::ofstream(lastKillMarkPath(config_)) << "no more kills\n";
    // Every life must now exit with kAllDone. One that ends otherwise fails
    // the run at once, and the others, which may wait for work that only it
    // would have done, are killed.
    while (!hosts.empty()) {
      for (auto host = hosts.begin(); host != hosts.end();) {
        int status = 0;
        if (::waitpid(host->process.pid, &status, WNOHANG) != host->process.pid) {
          ++host;
          continue;
        }
        if (auto trouble = ended(host->process, host->life, status)) {
          for (const Host& other : hosts) {
            if (other.process.pid != host->process.pid) ::kill(other.process.pid, SIGKILL);
          }
          return trouble;
        }
        host = hosts.erase(host);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return std::nullopt;
  }

 private:
  // The delays adapt to how long a life takes on this machine: after a kill that
  // found the life idle (its work was done) the upper bound halves; after one
  // that found it busy, it grows by a quarter, up to --max-delay-ms. So most
  // kills land while a life still works, on a fast machine as on a slow one.
  std::chrono::milliseconds nextDelay() {
    const auto span = static_cast<std::uint64_t>(maxDelayMs_ - config_.minDelayMs) + 1;
    return std::chrono::milliseconds(config_.minDelayMs + static_cast<int>(random_() % span));
  }

  // SIGKILLs a life and records, once waitpid() saw it die, that it was dead by then.
  std::optional<std::string> kill(const Spawned& child, std::size_t life) {
    char done = 0;
    const bool idle = ::read(child.idleRead, &done, 1) == 1;
    if (idle) ++idleKills_;
    maxDelayMs_ = idle ? std::max(config_.minDelayMs, maxDelayMs_ / 2)
                       : std::min(config_.maxDelayMs, maxDelayMs_ + maxDelayMs_ / 4 + 1);
    ::close(child.idleRead);
    ::kill(child.pid, SIGKILL);
    int status = 0;
    if (::waitpid(child.pid, &status, 0) != child.pid) return "waitpid failed";
    if (!record("killed", life)) return "lives log: write failed";
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
      return fmt::format("life {} {}", life, describeStatus(status));
    }
    return std::nullopt;
  }

  // Waits for a life that is not to be killed; it must end with kAllDone.
  std::optional<std::string> awaitExit(const Spawned& child, std::size_t life) {
    int status = 0;
    if (::waitpid(child.pid, &status, 0) != child.pid) return "waitpid failed";
    return ended(child, life, status);
  }

  // Records the end of a life that was not to be killed (waitpid() gave its
  // status); it must have ended with kAllDone.
  std::optional<std::string> ended(const Spawned& child, std::size_t life, int status) {
    if (child.idleRead >= 0) ::close(child.idleRead);
    if (!record("exited", life)) return "lives log: write failed";
    if (!WIFEXITED(status) || WEXITSTATUS(status) != kAllDone) {
      return fmt::format("life {} (not to be killed) {}", life, describeStatus(status));
    }
    return std::nullopt;
  }

  // Completed instances, from a read-only connection opened once the lives
  // made the database; 0 before.
  std::int64_t completedSoFar() {
    try {
      if (!reader_) {
        if (config_.store.empty() && !fs::exists(databasePath(config_))) return 0;
        reader_ = testing::openTestSql(storeSpec(config_));
      }
      return countWork(*reader_).completed();
    } catch (const std::exception&) {
      reader_.reset();  // not a database yet (a life is creating it): look again later
      return 0;
    }
  }

  bool record(const char* how, std::size_t life) {
    return lives_.append(fmt::format("{} L{} {}\n", how, life, wallMicros()));
  }

  const CrashConfig& config_;
  std::mt19937_64 random_;  // the kill delays and victims
  AppendLog lives_;
  std::unique_ptr<testing::TestSql> reader_;
  int maxDelayMs_;
  std::size_t idleKills_ = 0;
};

// Runs the lives (Parent), then checks. Returns the exit code; with `report`,
// hands the check's report out.
int runHarness(CrashConfig config, bool quietSummary = false, CheckReport* report = nullptr) {
  const bool ownDir = config.dir.empty();
  if (ownDir) {
    config.dir = makeScratchDir();
  } else {
    fs::create_directories(config.dir);
    if (fs::exists(databasePath(config)) || fs::exists(storeNamePath(config))) {
      std::cerr << "asyncflow_crash: " << config.dir << " already holds a run; use an empty one\n";
      return kUsageError;
    }
  }
  if (config.store == "postgres") {
    // A schema of its own on the test server, named where check --dir finds it.
    config.store = fmt::format("postgres:crash_{}_{}", ::getpid(), config.seed % 1'000'000);
    std::ofstream(storeNamePath(config)) << config.store << '\n';
  }
  if (!quietSummary) {
    std::cout << fmt::format(
        "asyncflow_crash: seed {}; {} hosts, {} kills, {} instances, {} completers, {} workers, "
        "kill after {}-{} ms; dir {}{}\n",
        config.seed, config.hosts, config.kills, config.instances, config.completers,
        config.workers, config.minDelayMs, config.maxDelayMs, config.dir,
        config.store.empty() ? std::string() : "; store " + config.store);
  }
  const auto began = std::chrono::steady_clock::now();
  auto fail = [&](const std::string& why) {
    std::cout << fmt::format("FAIL (seed {}): {}\nfiles kept in {}{}\n", config.seed, why,
                             config.dir,
                             config.store.empty() ? std::string() : ", store " + config.store);
    return 1;
  };

  config.verbose = !quietSummary;
  std::size_t idleKills = 0;
  {
    Parent parent(config);
    const auto trouble = config.hosts > 1 ? parent.runShared() : parent.runAlone();
    if (trouble) return fail(*trouble);
    idleKills = parent.idleKills();
  }

  CheckReport checked = check(config);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  if (!quietSummary || !checked.failures.empty()) {
    std::cout << fmt::format(
        "crash: seed {}: {} hosts, {} kills{}, {} lives, {} instances each Completed exactly once, "
        "{} acknowledged completions checked "
        "({} more acknowledged but not logged before a kill), {} handler runs, {} re-runs "
        "(Prepare {}, Wait {}, Finish {}) each with a higher attempt(), no two handler runs of "
        "an instance at once, {} step starts after a crash: {} takeovers by another life ({} of "
        "a life dead by then), each after the lease it took expired; {} restarts by the same "
        "life after its lease expired, {} before it after a store failure, {} before it without "
        "one, {} not attributed; {} engine warnings, {} torn log lines, {:.1f} s; lost: {}\n",
        config.seed, config.hosts, config.kills,
        config.hosts > 1 ? std::string(" (kill j once j/(kills+1) of the instances were Completed)")
                         : fmt::format(" ({} of them after the life had done its work)", idleKills),
        checked.lives, checked.instances, checked.acknowledged, checked.unlogged,
        checked.handlerRuns, checked.reruns(), checked.rerunsPrepare, checked.rerunsWait,
        checked.rerunsFinish, checked.crashStarts, checked.takeovers, checked.takeoversOfDead,
        checked.restartsOwnExpired, checked.restartsAfterTrouble, checked.restartsByHolder,
        checked.restartsUnattributed, checked.engineWarnings, checked.tornLines, seconds,
        checked.failures.empty() ? "0" : "see failures");
    for (const std::string& line : checked.someWarnings) std::cout << "  engine: " << line << '\n';
  }
  if (!printFailures(checked)) return fail("the checker found the failures above");
  if (report != nullptr) *report = std::move(checked);
  if (ownDir && !config.keep) {
    fs::remove_all(config.dir);
    if (!config.store.empty()) testing::dropTestStores(config.store);
  } else if (!quietSummary) {
    std::cout << "files kept in " << config.dir << '\n';
  }
  return 0;
}

// One way to break a passing run's files, and what the checker must then say.
// `base` is the passing run's report.
struct Tamper {
  const char* what;
  const char* expected;  // part of a failure message
  void (*apply)(const CrashConfig& config, const CheckReport& base);
};

void execSql(const CrashConfig& config, const std::string& sql) {
  if (testing::openTestSql(storeSpec(config))->change(sql) < 1) {
    throw std::runtime_error("tamper changed nothing: " + sql);
  }
}

void appendLine(const std::string& path, const std::string& line) {
  std::ofstream(path, std::ios::app) << line << '\n';
}

// Replaces the line that starts with `prefix` (the first one) by `line`.
void replaceLine(const std::string& path, const std::string& prefix, const std::string& line) {
  std::size_t torn = 0;
  std::vector<std::string> lines = readCompleteLines(path, torn);
  const auto found = std::find_if(lines.begin(), lines.end(), [&](const std::string& each) {
    return each.compare(0, prefix.size(), prefix) == 0;
  });
  if (found == lines.end()) throw std::runtime_error(path + " has no line '" + prefix + "...'");
  *found = line;
  std::ofstream out(path, std::ios::trunc);
  for (const std::string& each : lines) out << each << '\n';
}

// Rewrites every line of `path` through `edit`, which returns the new line or
// nothing to drop it.
template <class Edit>
void rewriteLines(const std::string& path, Edit edit) {
  std::size_t torn = 0;
  std::vector<std::string> lines = readCompleteLines(path, torn);
  std::ofstream out(path, std::ios::trunc);
  for (const std::string& each : lines) {
    if (std::optional<std::string> line = edit(each)) out << *line << '\n';
  }
}

// The first ack log and its first line.
std::pair<std::string, std::string> firstAck(const CrashConfig& config) {
  std::size_t torn = 0;
  for (const auto& [life, path] : lifeLogs(config, "acks")) {
    const auto lines = readCompleteLines(path, torn);
    if (!lines.empty()) return {path, lines.front()};
  }
  throw std::runtime_error("no ack log has a line");
}

const Tamper kTampers[] = {
    {"an acknowledged completion whose token the file lacks", "lost:",
     [](const CrashConfig& c, const CheckReport&) {
       const auto [path, line] = firstAck(c);
       appendLine(path, line.substr(0, line.find(' ')) + " L0-C0-0");
     }},
    {"an acknowledged serial no instance has", "lost:",
     [](const CrashConfig& c, const CheckReport&) {
       appendLine(firstAck(c).first, "999999_2_AAAA L0-C0-0");
     }},
    {"a run with a second StepCompleted entry", "StepCompleted entries",
     [](const CrashConfig& c, const CheckReport&) {
       execSql(c,
               "INSERT INTO history (instance_id, seq, at, kind, run, step, detail) SELECT 1, "
               "MAX(seq) + 1, 0, 'StepCompleted', 2, 'Wait', 'Token' FROM history WHERE "
               "instance_id = 1");
     }},
    {"an instance left Waiting", "not Completed",
     [](const CrashConfig& c, const CheckReport&) {
       execSql(c, "UPDATE instances SET status = 'Waiting' WHERE id = 1");
     }},
    {"an instance with a second Completed entry", "Completed entries",
     [](const CrashConfig& c, const CheckReport&) {
       execSql(c,
               "INSERT INTO history (instance_id, seq, at, kind, run, step, detail) SELECT 2, "
               "MAX(seq) + 1, 0, 'Completed', 0, '', '' FROM history WHERE instance_id = 2");
     }},
    {"two instances with the same Seq (started twice)", "Seq",
     [](const CrashConfig& c, const CheckReport&) {
       execSql(c, "UPDATE fields SET value = 1 WHERE name = 'Seq' AND instance_id = 2");
     }},
    {"a re-run handler that saw attempt() 1 again", "re-ran with attempt() 1",
     [](const CrashConfig& c, const CheckReport&) {
       const std::int64_t now = wallMicros();
       appendLine(handlerLogPath(c, 99), fmt::format("run 3 Prepare 1 - L99 1 {}", now));
       appendLine(handlerLogPath(c, 99), fmt::format("end L99 1 {}", now + 1));
     }},
    {"a completion still pending on a run", "pending",
     [](const CrashConfig& c, const CheckReport&) {
       execSql(c,
               "INSERT INTO completion_fields (instance_id, run, name, type, value) VALUES (1, 2, "
               "'Token', 'String', 'again')");
     }},
};

// Tampers that need a takeover in the base run (base.someTakeovers not empty).
const Tamper kTakeoverTampers[] = {
    {"a handler run that went on after another life's run of its instance began", "at once",
     [](const CrashConfig& c, const CheckReport& base) {
       // The life taken over ends its handler run (or, killed in it, dies) 1 µs
       // after the taking life's run began.
       const Takeover& t = base.someTakeovers.front();
       const std::string path = handlerLogPath(c, t.fromLife);
       const std::string end = fmt::format("end L{} {} ", t.fromLife, t.fromRun);
       std::size_t torn = 0;
       const auto lines = readCompleteLines(path, torn);
       const bool ended = std::any_of(lines.begin(), lines.end(), [&](const std::string& line) {
         return line.compare(0, end.size(), end) == 0;
       });
       if (ended) {
         replaceLine(path, end, end + std::to_string(t.toBegin + 1));
       } else {
         const std::string killed = fmt::format("killed L{} ", t.fromLife);
         replaceLine(livesLogPath(c), killed, killed + std::to_string(t.toBegin + 1));
       }
     }},
    {"a takeover 1 ms before the lease it took expired", "before the lease",
     [](const CrashConfig& c, const CheckReport& base) {
       // The taking life's StepStarted entry, in the history and in its starts
       // log, moves to 1 ms before the earliest expiry the lease could have had.
       const Takeover& t = base.someTakeovers.front();
       const std::int64_t early =
           t.fromScheduled + std::chrono::microseconds(kLease).count() - 1000;
       execSql(c, fmt::format("UPDATE history SET at = {} WHERE instance_id = {} AND step = '{}' "
                              "AND kind = 'StepStarted' AND at = {}",
                              early, t.instance, t.step, t.toScheduled));
       const std::string path = startLogPath(c, t.toLife);
       const std::string start = fmt::format("start {} ", t.instance);
       const std::string at = fmt::format(" {} ", t.toScheduled);
       std::size_t torn = 0;
       for (const std::string& line : readCompleteLines(path, torn)) {
         const auto where = line.find(at);
         if (line.compare(0, start.size(), start) == 0 && where != std::string::npos) {
           replaceLine(
               path, line,
               line.substr(0, where) + fmt::format(" {} ", early) + line.substr(where + at.size()));
         }
       }
     }},
    {"a restart by the lease holder before its lease expired, with no trouble logged",
     "did not crash",
     [](const CrashConfig& c, const CheckReport& base) {
       // The taking life's start of attempt k + 1 becomes the taken life's own,
       // 1 ms after it scheduled attempt k (long before that lease expired),
       // and no engine log names the instance.
       const Takeover& t = base.someTakeovers.front();
       const std::int64_t early = t.fromScheduled + 1000;
       execSql(c, fmt::format("UPDATE history SET at = {} WHERE instance_id = {} AND step = '{}' "
                              "AND kind = 'StepStarted' AND at = {}",
                              early, t.instance, t.step, t.toScheduled));
       const std::string start = fmt::format("start {} ", t.instance);
       const std::string at = fmt::format(" {} ", t.toScheduled);
       const std::string toWord = fmt::format(" L{}", t.toLife);
       std::optional<std::string> moved;
       rewriteLines(startLogPath(c, t.toLife), [&](const std::string& line) {
         const auto where = line.find(at);
         if (moved || line.compare(0, start.size(), start) != 0 || where == std::string::npos ||
             line.size() < toWord.size() ||
             line.compare(line.size() - toWord.size(), toWord.size(), toWord) != 0) {
           return std::optional<std::string>(line);
         }
         moved = line.substr(0, where) + fmt::format(" {} ", early) +
                 line.substr(where + at.size(), line.size() - toWord.size() - where - at.size()) +
                 fmt::format(" L{}", t.fromLife);
         return std::optional<std::string>();
       });
       if (!moved) throw std::runtime_error("the takeover's start line is not in its log");
       appendLine(startLogPath(c, t.fromLife), *moved);
       const std::string named = fmt::format(" instance {}:", t.instance);
       for (const auto& [life, path] : lifeLogs(c, "engine")) {
         rewriteLines(path, [&](const std::string& line) {
           return line.find(named) == std::string::npos ? std::optional<std::string>(line)
                                                        : std::optional<std::string>();
         });
       }
     }},
};

// Copies the base run's files once per tamper, applies it and checks the copy:
// each must fail with the expected message. False (after saying which) if one passed.
template <std::size_t N>
bool rejectsAll(const CrashConfig& base, const CheckReport& report, const Tamper (&tampers)[N],
                const std::string& scratch, std::size_t& rejected) {
  for (const Tamper& tamper : tampers) {
    CrashConfig copy = base;
    copy.dir = fmt::format("{}/tamper{}", scratch, rejected);
    fs::copy(base.dir, copy.dir, fs::copy_options::recursive);
    tamper.apply(copy, report);
    const CheckReport checked = check(copy);
    const bool found = std::any_of(checked.failures.begin(), checked.failures.end(),
                                   [&](const std::string& failure) {
                                     return failure.find(tamper.expected) != std::string::npos;
                                   });
    if (!found) {
      std::cout << fmt::format(
          "FAIL: the checker accepted {} in a {}-host run (wanted a failure with '{}')\n",
          tamper.what, base.hosts, tamper.expected);
      printFailures(checked);
      std::cout << "files kept in " << scratch << '\n';
      return false;
    }
    ++rejected;
  }
  return true;
}

// Runs two small harnesses, one host and three, then checks tampered copies of
// their files: each must fail with the expected message. Proves the checker can
// fail. The three-host run is repeated with the next seed until it holds a
// takeover for the takeover tampers (a kill of a life with no lease is possible).
int runSelfTest(CrashConfig config) {
  if (!config.store.empty()) {
    std::cerr << "asyncflow_crash selftest: the tampered copies are SQLite files; no --store\n";
    return kUsageError;
  }
  const std::string scratch = makeScratchDir();
  std::size_t rejected = 0;
  std::size_t copies = 0;

  CrashConfig alone = config;
  alone.kills = 3;
  alone.instances = 30;
  alone.keep = true;
  alone.dir = scratch + "/alone";
  CheckReport aloneReport;
  if (int code = runHarness(alone, true, &aloneReport); code != 0) return code;
  copies += std::size(kTampers);
  if (!rejectsAll(alone, aloneReport, kTampers, scratch, rejected)) return 1;

  CrashConfig shared = config;
  shared.hosts = 3;
  shared.kills = 6;
  shared.instances = 90;
  shared.keep = true;
  CheckReport sharedReport;
  for (int tries = 0; sharedReport.someTakeovers.empty(); ++tries, ++shared.seed) {
    if (tries == 5) {
      std::cout << "FAIL: five 3-host runs without a takeover\nfiles kept in " << scratch << '\n';
      return 1;
    }
    shared.dir = fmt::format("{}/shared{}", scratch, tries);
    if (int code = runHarness(shared, true, &sharedReport); code != 0) return code;
  }
  copies += std::size(kTampers) + std::size(kTakeoverTampers);
  if (!rejectsAll(shared, sharedReport, kTampers, scratch, rejected) ||
      !rejectsAll(shared, sharedReport, kTakeoverTampers, scratch, rejected)) {
    return 1;
  }
  fs::remove_all(scratch);
  std::cout << fmt::format(
      "checker self-test: a {}-kill run on one host and a {}-kill run on 3 hosts (seed {}, "
      "takeovers: {}) passed; {} of {} tampered copies rejected\n",
      alone.kills, shared.kills, shared.seed - 1, sharedReport.takeovers, rejected, copies);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage();
    return kUsageError;
  }
  const std::string_view mode = argv[1];
  CrashConfig config;
  config.seed = std::random_device()();
  if (!parseFlags(argc, argv, config)) {
    usage();
    return kUsageError;
  }
  try {
    if (mode == "run") return runHarness(config);
    if (mode == "selftest") return runSelfTest(config);
    if (mode == "child") {
      if (config.dir.empty()) {
        std::cerr << "asyncflow_crash child: --dir is required\n";
        return kUsageError;
      }
      return runChild(config);
    }
    if (mode == "check") {
      if (config.dir.empty()) {
        std::cerr << "asyncflow_crash check: --dir is required\n";
        return kUsageError;
      }
      if (std::ifstream named(storeNamePath(config)); named) named >> config.store;
      const CheckReport report = check(config);
      std::cout << fmt::format(
          "check: {} instances, {} acknowledged completions, {} handler runs, {} re-runs, {} "
          "takeovers, {} torn lines\n",
          report.instances, report.acknowledged, report.handlerRuns, report.reruns(),
          report.takeovers, report.tornLines);
      return printFailures(report) ? 0 : 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "asyncflow_crash: " << e.what() << '\n';
    return 1;
  }
  usage();
  return kUsageError;
}

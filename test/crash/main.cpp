// asyncflow_crash: the crash-kill harness (issue 6, item 1).
//
// A child process ("life") runs the engine on a SQLite file at synchronous FULL
// with a workload: instances of Prepare (sync) -> Wait (async) -> Finish (sync),
// and a simulated external system whose --completers threads complete the
// serials handed to it, appending "<serial> <token>" to an fsynced ack log after
// each acknowledged completion. The external system remembers the serials of
// earlier lives and completes them while the new life's recovery runs. The
// parent SIGKILLs each life a random --min-delay-ms..--max-delay-ms after
// spawning it (5-200 ms; the upper bound adapts to how fast lives finish their
// work, so most kills land on a busy life), --kills times; life L of K may start instances up to
// L/(K+1) of --instances, so kills land throughout the workload (a life that
// finished its share waits for its kill; the summary counts those). A final
// life runs uninterrupted until every instance is Completed; then the checker
// (crash.hpp lists what it checks) verifies that no acknowledged completion was
// lost, every instance completed exactly once, no step run took two
// completions, and every handler that ran again saw a higher attempt().
//
//   asyncflow_crash run [--kills 25] [--instances 1000] [--seed N] [--dir D] [--keep]
//                       [--completers 4] [--workers 2] [--min-delay-ms 5] [--max-delay-ms 200]
//   asyncflow_crash check --dir D --instances N   # check a kept directory again
//   asyncflow_crash selftest [--seed N]            # the checker rejects tampered files
//   asyncflow_crash child ...                      # one life (the parent runs it)
//
// The seed is printed first; the same seed replays the same kill delays (the
// interleavings inside the lives still vary). On failure the files are kept.
//
// CI runs the bounded mode: ctest crash.kill25 (25 kills, 1,000 instances, seed
// 25; about 4 s on a 2-core VM, 6 s under ASan). The long mode, for manual runs
// (about 2.5 minutes on the same VM; 60 instances per life keep most kills
// landing on a life with work left):
//
//   build/default/test/crash/asyncflow_crash run --kills 1000 --instances 60000
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
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

#include <SQLiteCpp/SQLiteCpp.h>
#include <fmt/format.h>
#include <stdlib.h>

#include "crash.hpp"

namespace {

using namespace asyncflow::crash;
namespace fs = std::filesystem;

constexpr int kUsageError = 64;

void usage() {
  std::cerr << "usage: asyncflow_crash run|check|selftest|child [--kills K] [--instances N] "
               "[--seed S] [--dir D] [--keep] [--completers C] [--workers W] [--min-delay-ms A] "
               "[--max-delay-ms B] [--life L] [--verbose]\n";
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
      } else if (flag == "--seed") {
        config.seed = number();
      } else if (flag == "--kills") {
        config.kills = number();
      } else if (flag == "--instances") {
        config.instances = number();
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
  if (config.instances == 0 || config.completers == 0 || config.minDelayMs > config.maxDelayMs) {
    std::cerr << "asyncflow_crash: --instances and --completers must be positive, and "
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
// (--idle-fd 3) and dies with the parent (PR_SET_PDEATHSIG).
Spawned spawnLife(const CrashConfig& config, std::size_t life, std::size_t quota, bool killable,
                  bool verbose) {
  constexpr int kIdleFd = 3;
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::vector<std::string> args = {self,           "child",
                                   "--dir",        config.dir,
                                   "--instances",  std::to_string(config.instances),
                                   "--quota",      std::to_string(quota),
                                   "--completers", std::to_string(config.completers),
                                   "--workers",    std::to_string(config.workers),
                                   "--life",       std::to_string(life)};
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
    ::execv(self.c_str(), argv.data());
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

// Spawns config.kills lives and SIGKILLs each a random delay after its spawn,
// then runs the final life uninterrupted, then checks. Returns the exit code.
// Life L of the K killed ones may start instances up to L/(K+1) of the total, so
// every life has new work, and kills land throughout the workload; a life that
// is done before its kill waits for it (counted as a kill of an idle life).
int runHarness(CrashConfig config, bool quietSummary = false) {
  const bool ownDir = config.dir.empty();
  if (ownDir) {
    config.dir = makeScratchDir();
  } else {
    fs::create_directories(config.dir);
    if (fs::exists(databasePath(config))) {
      std::cerr << "asyncflow_crash: " << config.dir << " already holds a run; use an empty one\n";
      return kUsageError;
    }
  }
  if (!quietSummary) {
    std::cout << fmt::format(
        "asyncflow_crash: seed {}; {} kills, {} instances, {} completers, {} workers, kill "
        "after {}-{} ms; dir {}\n",
        config.seed, config.kills, config.instances, config.completers, config.workers,
        config.minDelayMs, config.maxDelayMs, config.dir);
  }
  const auto began = std::chrono::steady_clock::now();
  std::mt19937_64 delays(config.seed);
  std::size_t idleKills = 0;
  auto fail = [&](const std::string& why) {
    std::cout << fmt::format("FAIL (seed {}): {}\nfiles kept in {}\n", config.seed, why,
                             config.dir);
    return 1;
  };

  // The delays adapt to how long a life takes on this machine: after a kill that
  // found the life idle (its work was done) the upper bound halves; after one
  // that found it busy, it grows by a quarter, up to --max-delay-ms. So most
  // kills land while a life still works, on a fast machine as on a slow one.
  int maxDelayMs = config.maxDelayMs;
  for (std::size_t life = 1; life <= config.kills; ++life) {
    const std::size_t quota = (config.instances * life + config.kills) / (config.kills + 1);
    const auto span = static_cast<std::uint64_t>(maxDelayMs - config.minDelayMs) + 1;
    const auto delay =
        std::chrono::milliseconds(config.minDelayMs + static_cast<int>(delays() % span));
    const Spawned child = spawnLife(config, life, quota, true, false);
    if (child.pid < 0) return fail("cannot start a life");
    std::this_thread::sleep_for(delay);  // the kill lands at a random moment of the life
    char done = 0;
    const bool idle = ::read(child.idleRead, &done, 1) == 1;
    if (idle) ++idleKills;
    maxDelayMs = idle ? std::max(config.minDelayMs, maxDelayMs / 2)
                      : std::min(config.maxDelayMs, maxDelayMs + maxDelayMs / 4 + 1);
    ::close(child.idleRead);
    ::kill(child.pid, SIGKILL);
    int status = 0;
    if (::waitpid(child.pid, &status, 0) != child.pid) return fail("waitpid failed");
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
      return fail(fmt::format("life {} {}", life, describeStatus(status)));
    }
  }

  const std::size_t lives = config.kills + 1;
  const Spawned last = spawnLife(config, lives, config.instances, false, !quietSummary);
  int status = 0;
  if (last.pid < 0 || ::waitpid(last.pid, &status, 0) != last.pid) {
    return fail("cannot run the final life");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != kAllDone) {
    return fail(fmt::format("the final life {}", describeStatus(status)));
  }

  const CheckReport report = check(config);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  if (!quietSummary || !report.failures.empty()) {
    std::cout << fmt::format(
        "crash: seed {}: {} kills ({} of them after the life had done its work), {} lives, "
        "{} instances each Completed exactly once, {} acknowledged completions checked ({} "
        "more acknowledged but not logged before a kill), {} handler runs, {} re-runs "
        "(Prepare {}, Wait {}, Finish {}) each with a higher attempt(), {} step starts after "
        "a crash, {} torn log lines, {:.1f} s; lost: {}\n",
        config.seed, config.kills, idleKills, lives, report.instances, report.acknowledged,
        report.unlogged, report.handlerRuns, report.reruns(), report.rerunsPrepare,
        report.rerunsWait, report.rerunsFinish, report.crashStarts, report.tornLines, seconds,
        report.failures.empty() ? "0" : "see failures");
  }
  if (!printFailures(report)) return fail("the checker found the failures above");
  if (ownDir && !config.keep) {
    fs::remove_all(config.dir);
  } else if (!quietSummary) {
    std::cout << "files kept in " << config.dir << '\n';
  }
  return 0;
}

// One way to break a passing run's files, and what the checker must then say.
struct Tamper {
  const char* what;
  const char* expected;  // part of a failure message
  void (*apply)(const CrashConfig& config);
};

void execSql(const CrashConfig& config, const char* sql) {
  SQLite::Database db(databasePath(config), SQLite::OPEN_READWRITE);
  if (db.exec(sql) < 1) throw std::runtime_error(std::string("tamper changed nothing: ") + sql);
}

void appendLine(const std::string& path, const std::string& line) {
  std::ofstream(path, std::ios::app) << line << '\n';
}

std::string firstLine(const std::string& path) {
  std::size_t torn = 0;
  const auto lines = readCompleteLines(path, torn);
  if (lines.empty()) throw std::runtime_error(path + " is empty");
  return lines.front();
}

const Tamper kTampers[] = {
    {"an acknowledged completion whose token the file lacks", "lost:",
     [](const CrashConfig& c) {
       const std::string line = firstLine(ackLogPath(c));
       appendLine(ackLogPath(c), line.substr(0, line.find(' ')) + " L0-C0-0");
     }},
    {"an acknowledged serial no instance has",
     "lost:", [](const CrashConfig& c) { appendLine(ackLogPath(c), "999999_2_AAAA L0-C0-0"); }},
    {"a run with a second StepCompleted entry", "StepCompleted entries",
     [](const CrashConfig& c) {
       execSql(c,
               "INSERT INTO history (instance_id, seq, at, kind, run, step, detail) SELECT 1, "
               "MAX(seq) + 1, 0, 'StepCompleted', 2, 'Wait', 'Token' FROM history WHERE "
               "instance_id = 1");
     }},
    {"an instance left Waiting", "not Completed",
     [](const CrashConfig& c) {
       execSql(c, "UPDATE instances SET status = 'Waiting' WHERE id = 1");
     }},
    {"an instance with a second Completed entry", "Completed entries",
     [](const CrashConfig& c) {
       execSql(c,
               "INSERT INTO history (instance_id, seq, at, kind, run, step, detail) SELECT 2, "
               "MAX(seq) + 1, 0, 'Completed', 0, '', '' FROM history WHERE instance_id = 2");
     }},
    {"two instances with the same Seq (started twice)", "Seq",
     [](const CrashConfig& c) {
       execSql(c, "UPDATE fields SET value = 1 WHERE name = 'Seq' AND instance_id = 2");
     }},
    {"a re-run handler that saw attempt() 1 again", "re-ran with attempt() 1",
     [](const CrashConfig& c) { appendLine(handlerLogPath(c), "3 Prepare 1 - L99"); }},
    {"a completion still pending on a run", "pending",
     [](const CrashConfig& c) {
       execSql(c,
               "INSERT INTO completion_fields (instance_id, run, name, type, value) VALUES (1, 2, "
               "'Token', 'String', 'again')");
     }},
};

// Runs a small harness, then checks tampered copies of its files: each must fail
// with the expected message. Proves the checker can fail.
int runSelfTest(CrashConfig config) {
  config.kills = 3;
  config.instances = 30;
  config.keep = true;
  const std::string base = makeScratchDir();
  config.dir = base + "/run";
  if (int code = runHarness(config, true); code != 0) return code;
  int rejected = 0;
  for (const Tamper& tamper : kTampers) {
    CrashConfig copy = config;
    copy.dir = fmt::format("{}/tamper{}", base, rejected);
    fs::copy(config.dir, copy.dir, fs::copy_options::recursive);
    tamper.apply(copy);
    const CheckReport report = check(copy);
    const bool found = std::any_of(report.failures.begin(), report.failures.end(),
                                   [&](const std::string& failure) {
                                     return failure.find(tamper.expected) != std::string::npos;
                                   });
    if (!found) {
      std::cout << fmt::format("FAIL: the checker accepted {} (wanted a failure with '{}')\n",
                               tamper.what, tamper.expected);
      printFailures(report);
      std::cout << "files kept in " << base << '\n';
      return 1;
    }
    ++rejected;
  }
  fs::remove_all(base);
  std::cout << fmt::format(
      "checker self-test: a {}-kill run passed; {} of {} tampered copies rejected\n", config.kills,
      rejected, std::size(kTampers));
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
      const CheckReport report = check(config);
      std::cout << fmt::format(
          "check: {} instances, {} acknowledged completions, {} re-runs, {} torn lines\n",
          report.instances, report.acknowledged, report.reruns(), report.tornLines);
      return printFailures(report) ? 0 : 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "asyncflow_crash: " << e.what() << '\n';
    return 1;
  }
  usage();
  return kUsageError;
}

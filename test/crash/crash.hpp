// asyncflow_crash: what its modes (run, child, check, selftest) share.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace asyncflow::testing {
class TestSql;
}

namespace asyncflow::crash {

// Settings of one harness run, from the command line (see main.cpp for the flags).
struct CrashConfig {
  std::string dir;  // holds crash.db (or the store file) and the logs below
  // The store (support/test_store.hpp): empty for the SQLite file crash.db in
  // dir; "postgres:<schema>" for a schema of the PostgreSQL test server. The
  // run flag --store postgres makes a fresh schema and names it in dir/store.
  std::string store;
  std::uint64_t seed = 0;        // seeds the kill delays; printed, so a run can be replayed
  std::size_t kills = 25;        // run: SIGKILLs to deliver
  std::size_t instances = 1000;  // instances the workload starts in total
  std::size_t hosts = 1;         // host processes at once on the file (1: one life after another)
  std::size_t completers = 4;    // threads of the simulated external system
  std::size_t workers = 2;       // EngineOptions::workers of the child's engine
  // run: a kill lands this many ms after its life's spawn (one host), or after
  // its share of the work was done (several), at least, and at most maxDelayMs.
  int minDelayMs = 5;
  int maxDelayMs = 200;
  std::size_t life = 0;   // child: which life this is (makes tokens and log files unique)
  std::size_t quota = 0;  // child: start instances up to this Seq; 0: all of them
  int idleFd = -1;        // child: when done, write a byte here (see runChild)
  bool keep = false;      // run: keep the directory after a passing check
  bool verbose = false;   // child: print a summary line when the work is done
};

// Each life's EngineOptions::leaseDuration: a killed life's instances are taken
// over this long after its last lease write. The checker relies on it too.
inline constexpr std::chrono::milliseconds kLease{250};

// The workload's process and the names its fields and steps have in the database.
inline constexpr const char* kProcess = "CrashWork";
inline constexpr const char* kPrepare = "Prepare";  // sync: records the attempt it saw
inline constexpr const char* kWait = "Wait";        // async: hands its serial out, waits
inline constexpr const char* kFinish = "Finish";    // sync: copies the token, ends
inline constexpr const char* kSeq = "Seq";          // 1..instances, set by start(Once)
inline constexpr const char* kToken = "Token";      // set by the completion
inline constexpr const char* kFinishedToken = "FinishedToken";  // Finish's copy of Token
inline constexpr const char* kPrepareAttempt = "PrepareAttempt";
inline constexpr const char* kWaitAttempt = "WaitAttempt";
inline constexpr const char* kFinishAttempt = "FinishAttempt";

// Files in CrashConfig::dir. Every life writes logs of its own, so that a kill
// in the middle of a line never tears another process's line.
inline std::string databasePath(const CrashConfig& c) { return c.dir + "/crash.db"; }
// The spec of the store the lives share: CrashConfig::store, or the SQLite file.
inline std::string storeSpec(const CrashConfig& c) {
  return c.store.empty() ? databasePath(c) : c.store;
}
// With a PostgreSQL store: the spec of its schema, so that check --dir finds it.
inline std::string storeNamePath(const CrashConfig& c) { return c.dir + "/store"; }
// "<serial> <token>\n" per acknowledged completion: written after success, fsynced.
inline std::string ackLogPath(const CrashConfig& c, std::size_t life) {
  return c.dir + "/acks.L" + std::to_string(life) + ".log";
}
// Two lines per handler run (see HandlerLine), written as it begins and ends.
inline std::string handlerLogPath(const CrashConfig& c, std::size_t life) {
  return c.dir + "/handlers.L" + std::to_string(life) + ".log";
}
// "start <instance> <seq> <run> <step> <attempt> <at> <lease expiry or -> L<life>"
// for every StepStarted entry the life's engine is about to commit (times in
// micros; instance 0 and the Seq when the commit creates the instance; the
// expiry of the lease the same commit writes), written before the commit, and
// the same line with "lost" for "start" when the commit did not write it.
inline std::string startLogPath(const CrashConfig& c, std::size_t life) {
  return c.dir + "/starts.L" + std::to_string(life) + ".log";
}
// The Warning and Error lines of the life's engine: "<micros> <level> <message>".
inline std::string engineLogPath(const CrashConfig& c, std::size_t life) {
  return c.dir + "/engine.L" + std::to_string(life) + ".log";
}
// The parent's record of how each life ended, fsynced: "killed L<life> <micros>"
// once waitpid() saw it die, "exited L<life> <micros>" once it returned. So each
// time is a moment at which the life was certainly no longer running.
inline std::string livesLogPath(const CrashConfig& c) { return c.dir + "/lives.log"; }
// Made by the parent (with several hosts) after its last kill: lives exit once
// every instance is Completed instead of waiting for a kill.
inline std::string lastKillMarkPath(const CrashConfig& c) { return c.dir + "/no-more-kills"; }

// The logs of one kind ("acks", "handlers", "starts" or "engine") in
// config.dir, as (life, path), in life order.
std::vector<std::pair<std::size_t, std::string>> lifeLogs(const CrashConfig& config,
                                                          std::string_view kind);

// The one clock of every log line: CLOCK_REALTIME in microseconds since the
// epoch, which is also the engine's clock (the system clock) and so the clock of
// the history's and the leases' times in the database. Never fails.
std::int64_t wallMicros();

// A line of a handler log:
//   "run <instance> <step> <attempt> <serial or -> L<life> <n> <micros>" as the
//   life's n-th handler run begins (n = 1, 2, ...), and
//   "end L<life> <n> <micros>" as it returns.
struct HandlerLine {
  bool begins = true;  // false: an end line, which has only life, run and micros
  std::int64_t instance = 0;
  std::string step;
  int attempt = 0;
  std::string serial;  // "-" for sync steps
  std::size_t life = 0;
  std::uint64_t run = 0;  // n: numbers the handler runs of one life
  std::int64_t micros = 0;
};

// Parses a line in the form above; none for any other text.
std::optional<HandlerLine> parseHandlerLine(std::string_view line);

// The complete ('\n'-terminated) lines of a text file from byte `offset` on,
// without their '\n'; an incomplete last line is left out and counted in `torn`.
// A missing file has none. `consumed`, when given, gets the bytes of the lines
// returned, so that a reader can continue after them.
std::vector<std::string> readCompleteLines(const std::string& path, std::size_t& torn,
                                           std::size_t offset = 0, std::size_t* consumed = nullptr);

// An append-only text file, one write(2) per line, shared by threads. With
// `durable` each line is fsynced before append() returns. A SIGKILL cannot undo
// a write(2) that returned (the page cache outlives the process), so without
// fsync lines are lost only to a power cut, which this harness does not cause.
// Opening cuts an incomplete last line that a kill left (it was never a record),
// so the next line starts on a line of its own. Throws std::runtime_error when
// the file cannot be opened.
class AppendLog {
 public:
  AppendLog(const std::string& path, bool durable);
  ~AppendLog();
  AppendLog(const AppendLog&) = delete;
  AppendLog& operator=(const AppendLog&) = delete;

  // Appends `line` (which ends in '\n'). False, with errno set, on an I/O error.
  bool append(std::string_view line);

 private:
  std::mutex mutex_;
  int fd_;
  bool durable_;
};

// The instances in the database by state, from three indexed counts (the
// workload's instances never fail): cheap enough to poll often.
struct WorkCounts {
  std::int64_t total = 0;
  std::int64_t running = 0;
  std::int64_t waiting = 0;
  std::int64_t completed() const { return total - running - waiting; }
};
// Throws std::runtime_error when the database cannot be read.
WorkCounts countWork(testing::TestSql& db);

// How a child life ends when nobody kills it.
enum ChildExit : int {
  kAllDone = 0,         // every instance exists and is Completed
  kChildFatal = 2,      // an unexpected error; the message is on stderr
  kChildStuck = 3,      // nothing left to do, yet instances are not Completed
  kInstanceFailed = 4,  // an instance Failed
};

// One life of the workload on the files in config.dir: opens the database
// (recovering what the last life left), starts the missing instances up to
// config.quota, completes the serials it hears of from config.completers
// threads, and returns a ChildExit once every instance is Completed (or
// something went wrong). Alone (config.hosts == 1) with config.idleFd, a life
// that is done says so there and waits for its SIGKILL instead of returning;
// among several hosts a life serves until the parent's last-kill mark.
int runChild(const CrashConfig& config);

// A takeover the checker found: life `to` scheduled attempt toAttempt of a
// step run that life `from` had scheduled at fromAttempt (see
// Checker::checkTakeovers in checker.cpp), with a handler run of each life on
// the instance.
struct Takeover {
  std::int64_t instance = 0;
  std::string step;
  std::size_t fromLife = 0;
  std::uint64_t fromRun = 0;  // from's last handler run on the instance before to's (n of its log)
  int fromAttempt = 0;
  std::int64_t fromScheduled = 0;  // micros of fromAttempt's StepStarted entry
  std::size_t toLife = 0;
  std::uint64_t toRun = 0;  // to's handler run of toAttempt
  int toAttempt = 0;
  std::int64_t toScheduled = 0;
  std::int64_t toBegin = 0;  // micros of to's handler run's begin line
};

// What check() found. `failures` is empty when every property holds.
struct CheckReport {
  std::size_t instances = 0;      // instances in the database, each Completed exactly once
  std::size_t acknowledged = 0;   // complete lines of the ack logs, each reflected in the file
  std::size_t unlogged = 0;       // completions in the file whose ack line a kill prevented
  std::size_t tornLines = 0;      // incomplete last lines left out (0 or 1 per log)
  std::size_t lives = 0;          // lives with a handler log
  std::size_t handlerRuns = 0;    // handler invocations in the handler logs
  std::size_t rerunsPrepare = 0;  // invocations after the first one of the same step run
  std::size_t rerunsWait = 0;
  std::size_t rerunsFinish = 0;
  // Step starts beyond the first (attempt - 1, summed), each one of:
  std::size_t crashStarts = 0;
  std::size_t takeovers = 0;              // by another life than the last attempt's...
  std::size_t takeoversOfDead = 0;        // ... (of those, from a life recorded dead by then)
  std::size_t restartsOwnExpired = 0;     // by the same life, once its own lease expired
  std::size_t restartsAfterTrouble = 0;   // by the same life, early, after a logged trouble
  std::size_t restartsByHolder = 0;       // by the same life, early, with no trouble logged:
                                          // the engine re-ran a step that did not crash (a
                                          // failure)
  std::size_t restartsUnattributed = 0;   // two lives' start lines for one entry, say
  std::vector<Takeover> someTakeovers;    // the first few, for the self-test
  std::size_t engineWarnings = 0;         // Warning and Error lines the engines logged
  std::vector<std::string> someWarnings;  // the first few of them
  std::vector<std::string> failures;

  std::size_t reruns() const { return rerunsPrepare + rerunsWait + rerunsFinish; }
};

// Checks the files in config.dir after the final life:
// - every complete ack-log line names a Completed Wait run whose instance's Token
//   is the logged token, and no serial is acknowledged twice (in any life's log);
// - every instance is Completed exactly once: Seq runs 1..config.instances
//   without gaps or repeats, one Completed history entry, runs Prepare, Wait,
//   Finish each Completed with exactly one StepCompleted entry; with several
//   hosts each instance holds the start key of its Seq;
// - no run holds two completions: tokens are unique, at most one
//   CompletionRecorded per run, no completion fields left pending;
// - handlers that ran again saw a higher attempt() each time (so every re-run
//   saw attempt() > 1), the run's attempt counts its StepStarted entries, and
//   the committed invocation was the last one logged;
// - no two handler runs of one instance overlap in time, in one host or in two
//   (a run a kill cut short ends when its life was recorded dead);
// - every StepStarted entry was logged by exactly one life before its commit,
//   with a lease of kLease; every handler ran in the life that scheduled its
//   attempt; every takeover (a restart by another life) came at or after the
//   expiry of the lease written with the attempt it took over;
// - PRAGMA integrity_check is ok.
CheckReport check(const CrashConfig& config);

}  // namespace asyncflow::crash

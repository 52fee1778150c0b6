// asyncflow_crash: what its three modes (run, child, check) share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace asyncflow::crash {

// Settings of one harness run, from the command line (see main.cpp for the flags).
struct CrashConfig {
  std::string dir;               // holds crash.db, acks.log and handlers.log
  std::uint64_t seed = 0;        // seeds the kill delays; printed, so a run can be replayed
  std::size_t kills = 25;        // run: SIGKILLs to deliver before the final life
  std::size_t instances = 1000;  // instances the workload starts in total
  std::size_t completers = 4;    // threads of the simulated external system
  std::size_t workers = 2;       // EngineOptions::workers of the child's engine
  int minDelayMs = 5;            // run: a kill lands this many ms after the spawn, at least...
  int maxDelayMs = 200;          // ...and at most
  std::size_t life = 0;          // child: which life this is (makes completion tokens unique)
  std::size_t quota = 0;         // child: start instances up to this Seq; 0: all of them
  int idleFd = -1;               // child: when done, write a byte here and wait for the kill
  bool keep = false;             // run: keep the directory after a passing check
  bool verbose = false;          // child: print a summary line when the work is done
};

// The workload's process and the names its fields and steps have in the database.
inline constexpr const char* kProcess = "CrashWork";
inline constexpr const char* kPrepare = "Prepare";  // sync: records the attempt it saw
inline constexpr const char* kWait = "Wait";        // async: hands its serial out, waits
inline constexpr const char* kFinish = "Finish";    // sync: copies the token, ends
inline constexpr const char* kSeq = "Seq";          // 1..instances, set by start()
inline constexpr const char* kToken = "Token";      // set by the completion
inline constexpr const char* kFinishedToken = "FinishedToken";  // Finish's copy of Token
inline constexpr const char* kPrepareAttempt = "PrepareAttempt";
inline constexpr const char* kWaitAttempt = "WaitAttempt";
inline constexpr const char* kFinishAttempt = "FinishAttempt";

// Files in CrashConfig::dir.
inline std::string databasePath(const CrashConfig& c) { return c.dir + "/crash.db"; }
// "<serial> <token>\n" per acknowledged completion, written after success and fsynced.
inline std::string ackLogPath(const CrashConfig& c) { return c.dir + "/acks.log"; }
// "<instance> <step> <attempt> <serial or -> L<life>\n" as each handler begins.
inline std::string handlerLogPath(const CrashConfig& c) { return c.dir + "/handlers.log"; }

// How a child life ends when nobody kills it.
enum ChildExit : int {
  kAllDone = 0,         // every instance exists and is Completed
  kChildFatal = 2,      // an unexpected error; the message is on stderr
  kChildStuck = 3,      // nothing left to do, yet instances are not Completed
  kInstanceFailed = 4,  // an instance Failed
};

// The complete ('\n'-terminated) lines of a text file, without their '\n'; an
// incomplete last line is left out and counted in `torn`. A missing file has none.
std::vector<std::string> readCompleteLines(const std::string& path, std::size_t& torn);

// One life of the workload on the files in config.dir: opens the database
// (recovering what the last life left), starts the missing instances up to
// config.quota, completes waiting serials from config.completers threads, and
// returns a ChildExit once every instance is Completed (or something went
// wrong). With config.idleFd, a life that is done says so there and waits for
// its SIGKILL instead of returning.
int runChild(const CrashConfig& config);

// What check() found. `failures` is empty when every property holds.
struct CheckReport {
  std::size_t instances = 0;      // instances in the database, each Completed exactly once
  std::size_t acknowledged = 0;   // complete lines of the ack log, each reflected in the file
  std::size_t unlogged = 0;       // completions in the file whose ack line a kill prevented
  std::size_t tornLines = 0;      // incomplete last lines left out (0 or 1 per log)
  std::size_t handlerRuns = 0;    // handler invocations in the handler log
  std::size_t rerunsPrepare = 0;  // invocations after the first one of the same step run
  std::size_t rerunsWait = 0;
  std::size_t rerunsFinish = 0;
  std::size_t crashStarts = 0;  // step starts beyond the first (attempt - 1, summed)
  std::vector<std::string> failures;

  std::size_t reruns() const { return rerunsPrepare + rerunsWait + rerunsFinish; }
};

// Checks the files in config.dir after the final life:
// - every complete ack-log line names a Completed Wait run whose instance's Token
//   is the logged token, and no serial is acknowledged twice;
// - every instance is Completed exactly once: Seq runs 1..config.instances
//   without gaps or repeats, one Completed history entry, runs Prepare, Wait,
//   Finish each Completed with exactly one StepCompleted entry;
// - no run holds two completions: tokens are unique, at most one
//   CompletionRecorded per run, no completion fields left pending;
// - handlers that ran again saw a higher attempt() each time (so every re-run
//   saw attempt() > 1), the run's attempt counts its StepStarted entries, and
//   the committed invocation was the last one logged;
// - PRAGMA integrity_check is ok.
CheckReport check(const CrashConfig& config);

}  // namespace asyncflow::crash

// Several hosts on one SQLite file, each a real OS process with its own engine
// (asyncflow_host, host.cpp); built again as multi_host_pg_test with
// ASYNCFLOW_HOSTS_ON_POSTGRES, the hosts share one PostgreSQL schema instead: DESIGN.md section 8
// as the processes see it. A second host that defines a process leaves the first's live leases
// alone; a host killed with SIGKILL inside its handlers has every instance taken over, with attempt
// 2, once the leases expire; a batch job that defines nothing completes waiting steps against the
// stored declaration, and the host that defines the process continues them; deadlines written by a
// process that exited fire exactly once across two timer hosts, also when one is killed.
//
// The processes tell the test where they are through pipes (a report line per
// event, read with poll() and a timeout that fails the test saying what it
// waited for); nothing sleeps to synchronise. Every handler appends to one
// O_APPEND log, which the test checks once the hosts are done: who ran what,
// with which attempt, and when (intervals on CLOCK_MONOTONIC, shared by all
// processes). The figures (define time, takeover, latencies) go to stdout.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdlib.h>

#include "hosts/host_protocol.hpp"
#include "support/test_store.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using namespace asyncflow::hosts;
using asyncflow::testing::info;
using std::chrono::milliseconds;

namespace {

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ASYNCFLOW_HOSTS_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ASYNCFLOW_HOSTS_SANITIZED 1
#endif
#ifdef ASYNCFLOW_HOSTS_SANITIZED
// Timing bounds are not asserted under a sanitizer (it slows every process).
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// Caps on the waits: far above what a run takes, so that reaching one means
// the awaited thing will not happen.
constexpr milliseconds kStartup{20000};  // a host opens the file and defines
constexpr milliseconds kWork{30000};     // hosts finish what the test awaits
// The contract: an expired lease is taken over within the lease duration plus
// the timer tolerance (1 s on SQLite across processes).
constexpr milliseconds kTolerance{1000};

// A fresh directory from mkdtemp, removed with its files at the end.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "asyncflow-hosts-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
    static int made = 0;
    schema_ = "hosts_" + std::to_string(::getpid()) + "_" + std::to_string(++made);
    asyncflow::testing::dropTestStores(db());  // a pid's leftover from an earlier run
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
    asyncflow::testing::dropTestStores(db());
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  // The hosts' store: a file here, or (multi_host_pg_test) a schema of the
  // test server, named for this process and directory and dropped with it.
#if ASYNCFLOW_HOSTS_ON_POSTGRES
  std::string db() const { return "postgres:" + schema_; }
#else
  std::string db() const { return path_ + "/hosts.db"; }
#endif
  std::string log() const { return path_ + "/handlers.log"; }

 private:
  std::string path_;
  std::string schema_;
};

// Moves `fd` to a number of at least 10, close-on-exec, so that it collides
// with none of the numbers a host inherits (0, 3, 4) and no other host gets it.
int highFd(int fd) {
  const int high = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
  REQUIRE(high >= 0);
  ::close(fd);
  return high;
}

// The pipe whose bytes release blocked handlers (--block-fd): the host gets
// the non-blocking read end, the test keeps the write end.
class ReleasePipe {
 public:
  ReleasePipe() {
    int ends[2];
    REQUIRE(::pipe2(ends, O_CLOEXEC) == 0);
    read_ = highFd(ends[0]);
    write_ = highFd(ends[1]);
    REQUIRE(::fcntl(read_, F_SETFL, O_NONBLOCK) == 0);  // shared by the host's handlers
  }
  ~ReleasePipe() {
    closeReadEnd();
    ::close(write_);
  }
  ReleasePipe(const ReleasePipe&) = delete;
  ReleasePipe& operator=(const ReleasePipe&) = delete;

  int readEnd() const { return read_; }
  // Once the host has its copy.
  void closeReadEnd() {
    if (read_ >= 0) ::close(read_);
    read_ = -1;
  }
  // Releases `count` handlers.
  void release(std::size_t count) {
    const std::string bytes(count, 'r');
    REQUIRE(::write(write_, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  }

 private:
  int read_ = -1;
  int write_ = -1;
};

// One asyncflow_host process: its reports (read from its kReportFd pipe) and
// its stdin (commands). Killed and reaped at the end if it still runs, so a
// failing test leaves no process behind (and PR_SET_PDEATHSIG ends a host
// whose test process died).
class HostProcess {
 public:
  // Starts asyncflow_host with `args`; `releaseRead`, when given, becomes its kReleaseFd.
  HostProcess(std::string label, std::vector<std::string> args, int releaseRead = -1)
      : label_(std::move(label)) {
    ::signal(SIGPIPE, SIG_IGN);  // a command to a dead host fails instead of killing the test
    args.insert(args.begin(), ASYNCFLOW_HOST_PROGRAM);
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    int reports[2];
    int commands[2];
    REQUIRE(::pipe2(reports, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(commands, O_CLOEXEC) == 0);
    reports_ = highFd(reports[0]);
    const int reportWrite = highFd(reports[1]);
    const int commandRead = highFd(commands[0]);
    commands_ = highFd(commands[1]);
    const pid_t parent = ::getpid();
    std::cout.flush();
    std::cerr.flush();
    pid_ = ::fork();
    if (pid_ == 0) {
      // Only async-signal-safe calls until exec. dup2 clears close-on-exec.
      if (::dup2(commandRead, STDIN_FILENO) < 0 || ::dup2(reportWrite, kReportFd) < 0 ||
          (releaseRead >= 0 && ::dup2(releaseRead, kReleaseFd) < 0)) {
        ::_exit(126);
      }
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(125);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(reportWrite);
    ::close(commandRead);
    REQUIRE(pid_ > 0);
    REQUIRE(::fcntl(reports_, F_SETFL, O_NONBLOCK) == 0);
  }
  ~HostProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (reports_ >= 0) ::close(reports_);
    if (commands_ >= 0) ::close(commands_);
  }
  HostProcess(const HostProcess&) = delete;
  HostProcess& operator=(const HostProcess&) = delete;

  const std::string& label() const { return label_; }
  int reportFd() const { return reports_; }
  bool reportsEnded() const { return reports_ < 0; }

  // Reads what the pipe holds into reports(); at EOF closes it.
  void readReports() {
    char buffer[4096];
    for (;;) {
      const ssize_t got = ::read(reports_, buffer, sizeof buffer);
      if (got > 0) {
        pending_.append(buffer, static_cast<std::size_t>(got));
        for (auto end = pending_.find('\n'); end != std::string::npos; end = pending_.find('\n')) {
          lines_.push_back(pending_.substr(0, end));
          pending_.erase(0, end + 1);
        }
        continue;
      }
      if (got < 0 && errno == EINTR) continue;
      if (got == 0) {
        ::close(reports_);
        reports_ = -1;
      }
      return;  // EOF, or EAGAIN: nothing more for now
    }
  }

  // Every report line so far.
  const std::vector<std::string>& reports() const { return lines_; }
  // The lines that start with "<word> ".
  std::vector<std::string> reportsOf(std::string_view word) const {
    std::vector<std::string> found;
    const std::string prefix = std::string(word) + ' ';
    for (const std::string& line : lines_) {
      if (line.compare(0, prefix.size(), prefix) == 0) found.push_back(line.substr(prefix.size()));
    }
    return found;
  }
  std::size_t count(std::string_view word) const { return reportsOf(word).size(); }

  // Writes a command line to the host's stdin.
  void send(const std::string& command) {
    const std::string line = command + '\n';
    INFO(label_ << ": command " << command);
    REQUIRE(::write(commands_, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
  }

  // SIGKILLs the host and reaps it; returns the steady time (µs) just before
  // the signal. Reports written before the kill stay readable.
  std::int64_t kill() {
    const std::int64_t at = steadyMicros();
    REQUIRE(::kill(pid_, SIGKILL) == 0);
    int status = 0;
    REQUIRE(::waitpid(pid_, &status, 0) == pid_);
    pid_ = -1;
    CHECK(WIFSIGNALED(status));
    awaitEnd("its report pipe to end after the kill");
    return at;
  }

  // Reaps the host once its report pipe ends (it exited), at most `timeout`
  // from now: the test fails unless it exited with 0.
  void awaitExit(milliseconds timeout = kWork);

 private:
  // Reads reports until the pipe ends (every write end closed), at most kWork.
  void awaitEnd(const std::string& what);

  std::string label_;
  pid_t pid_ = -1;
  int reports_ = -1;
  int commands_ = -1;
  std::string pending_;  // an incomplete last line
  std::vector<std::string> lines_;
};

// Reads the reports of `hosts` until `done()` holds. The test fails after
// `timeout`, when every pipe ended first, or when a host reports that an
// instance failed, saying it waited for `what`.
void awaitReports(std::initializer_list<HostProcess*> hosts, const std::function<bool()>& done,
                  milliseconds timeout, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (done()) return;
    for (HostProcess* host : hosts) {
      // An instance failed: what is awaited will not come.
      if (host->count("failed") > 0) {
        FAIL(host->label() << ": failed " << host->reportsOf("failed").front());
      }
    }
    std::vector<pollfd> fds;
    std::vector<HostProcess*> open;
    for (HostProcess* host : hosts) {
      if (host->reportsEnded()) continue;
      fds.push_back(pollfd{host->reportFd(), POLLIN, 0});
      open.push_back(host);
    }
    const auto left =
        std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
    std::string seen;
    for (HostProcess* host : hosts) {
      seen += "\n  " + host->label() + ": " + std::to_string(host->reports().size()) +
              " report lines" + (host->reportsEnded() ? " (ended)" : "") +
              (host->reports().empty() ? "" : ", the last: " + host->reports().back());
    }
    if (fds.empty()) FAIL("every host ended before " << what << seen);
    if (left.count() <= 0) FAIL("no " << what << " within " << timeout.count() << " ms" << seen);
    const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(left.count()));
    if (ready < 0 && errno != EINTR) FAIL("poll: errno " << errno);
    for (std::size_t i = 0; ready > 0 && i < fds.size(); ++i) {
      if (fds[i].revents != 0) open[i]->readReports();
    }
  }
}

void HostProcess::awaitEnd(const std::string& what) {
  awaitReports(
      {this}, [this] { return reportsEnded(); }, kWork, label_ + ": " + what);
}

void HostProcess::awaitExit(milliseconds timeout) {
  awaitReports(
      {this}, [this] { return reportsEnded(); }, timeout, label_ + " to exit");
  int status = 0;
  REQUIRE(::waitpid(pid_, &status, 0) == pid_);
  pid_ = -1;
  INFO(label_ << " ended with wait status " << status);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

// The text after "<word> " of the host's first such report, awaited.
std::string awaitValue(HostProcess& host, std::string_view word, milliseconds timeout = kStartup) {
  awaitReports(
      {&host}, [&] { return host.count(word) > 0; }, timeout,
      host.label() + "'s '" + std::string(word) + "' report");
  return host.reportsOf(word).front();
}

// The distinct instances named by "<word> <instance> ..." reports of `hosts`.
std::set<std::int64_t> instancesReported(std::initializer_list<HostProcess*> hosts,
                                         std::string_view word) {
  std::set<std::int64_t> ids;
  for (HostProcess* host : hosts) {
    for (const std::string& rest : host->reportsOf(word)) ids.insert(std::stoll(rest));
  }
  return ids;
}

// asyncflow_host's command line for a host of `process` named `name`.
std::vector<std::string> hostArgs(const ScratchDir& dir, const std::string& name,
                                  const std::string& process,
                                  std::initializer_list<std::string> extra = {}) {
  std::vector<std::string> args = {"host",   "--db", dir.db(),    "--log", dir.log(),
                                   "--name", name,   "--process", process};
  args.insert(args.end(), extra);
  return args;
}

// Every line of the handler log; the test fails on a line of another shape.
std::vector<LogLine> readLog(const std::string& path) {
  std::ifstream in(path);
  std::vector<LogLine> lines;
  std::string text;
  while (std::getline(in, text)) {
    auto line = LogLine::parse(text);
    if (!line) FAIL("malformed handler log line: '" << text << "'");
    lines.push_back(*std::move(line));
  }
  return lines;
}

// The log lines of `event`, by instance, in log order.
std::map<std::int64_t, std::vector<LogLine>> byInstance(const std::vector<LogLine>& log,
                                                        std::string_view event) {
  std::map<std::int64_t, std::vector<LogLine>> lines;
  for (const LogLine& line : log) {
    if (line.event == event) lines[line.instance].push_back(line);
  }
  return lines;
}

// The median and the largest of durations in µs, in ms.
struct Spread {
  double medianMs = 0;
  double maxMs = 0;
};
Spread spreadOf(std::vector<std::int64_t> micros) {
  REQUIRE_FALSE(micros.empty());
  std::sort(micros.begin(), micros.end());
  return {static_cast<double>(micros[micros.size() / 2]) / 1000.0,
          static_cast<double>(micros.back()) / 1000.0};
}

// For reading what the hosts left: an engine on the file that defines
// nothing and runs no timer.
class Inspector {
 public:
  explicit Inspector(const std::string& path) {
    auto store = asyncflow::testing::openTestStore(path);
    REQUIRE(store);
    EngineOptions options;
    options.timerThread = false;
    options.changeCheckInterval = milliseconds::zero();
    engine_ = std::make_unique<Engine>(std::shared_ptr<Store>(std::move(*store)), options);
  }
  InstanceInfo operator()(InstanceId id) const { return info(*engine_, id); }

 private:
  std::unique_ptr<Engine> engine_;
};

// One handler run as the log shows it: [start, end], where a run that the
// kill of its host cut short ends at the kill.
struct Interval {
  std::int64_t start = 0;
  std::int64_t end = 0;
  std::string owner;
  int attempt = 0;
};

// The runs of one instance's handler from its begin and end lines; a begin
// without an end is allowed only for `killedOwner`, and ends at `killedAt`.
std::vector<Interval> intervalsOf(const std::vector<LogLine>& begins,
                                  const std::vector<LogLine>& ends, const std::string& killedOwner,
                                  std::int64_t killedAt) {
  std::vector<Interval> runs;
  for (const LogLine& begin : begins) {
    Interval run{begin.micros, 0, begin.owner, begin.attempt};
    auto end = std::find_if(ends.begin(), ends.end(), [&](const LogLine& e) {
      return e.owner == begin.owner && e.attempt == begin.attempt;
    });
    if (end != ends.end()) {
      run.end = end->micros;
    } else {
      INFO("instance " << begin.instance << ": a run by " << begin.owner << " never ended");
      REQUIRE(begin.owner == killedOwner);
      run.end = killedAt;
    }
    runs.push_back(run);
  }
  std::sort(runs.begin(), runs.end(),
            [](const Interval& a, const Interval& b) { return a.start < b.start; });
  return runs;
}

// No two runs of one instance overlap.
void checkNoOverlap(std::int64_t instance, const std::vector<Interval>& runs) {
  for (std::size_t i = 1; i < runs.size(); ++i) {
    INFO("instance " << instance << ": the run of " << runs[i].owner << " (attempt "
                     << runs[i].attempt << ") began " << (runs[i - 1].end - runs[i].start)
                     << " µs before the run of " << runs[i - 1].owner << " (attempt "
                     << runs[i - 1].attempt << ") ended");
    CHECK(runs[i].start >= runs[i - 1].end);
  }
}

// Checks the instances 1..count ended Completed.
void checkAllCompleted(const ScratchDir& dir, std::int64_t count) {
  Inspector inspect(dir.db());
  for (InstanceId id = 1; id <= count; ++id) {
    INFO("instance " << id);
    CHECK(inspect(id).status == InstanceStatus::Completed);
  }
}

}  // namespace

TEST_CASE("a second host that defines the process runs nothing while the first lives") {
  constexpr std::int64_t kInstances = 50;
  ScratchDir dir;
  ReleasePipe release;
  HostProcess a("A",
                hostArgs(dir, "A", "P",
                         {"--workers", "50", "--lease-ms", "30000", "--start", "50", "--block-fd",
                          std::to_string(kReleaseFd)}),
                release.readEnd());
  release.closeReadEnd();
  const std::string ownerA = awaitValue(a, "owner");
  awaitReports(
      {&a}, [&] { return a.count(kStart) == kInstances; }, kWork, "A's 50 handler starts");

  HostProcess b("B", hostArgs(dir, "B", "P", {"--workers", "8"}));
  const std::string ownerB = awaitValue(b, "owner");
  const double defineMs = static_cast<double>(std::stoll(awaitValue(b, "defined"))) / 1000.0;
  std::cout << "hosts: B's define() beside A's 50 live leases took " << defineMs << " ms\n";
  if (!kSanitized) CHECK(defineMs < 100.0);

  release.release(kInstances);
  awaitReports(
      {&a, &b}, [&] { return instancesReported({&a}, "completed").size() == kInstances; }, kWork,
      "A completing its 50 instances");
  CHECK(b.count(kStart) == 0);
  CHECK(b.count("completed") == 0);
  b.send("exit");
  b.awaitExit();
  a.send("exit");
  a.awaitExit();

  const std::vector<LogLine> log = readLog(dir.log());
  const auto starts = byInstance(log, kStart);
  const auto ends = byInstance(log, kEnd);
  CHECK(starts.size() == kInstances);
  CHECK(ends.size() == kInstances);
  for (std::int64_t id = 1; id <= kInstances; ++id) {
    INFO("instance " << id);
    REQUIRE(starts.count(id) == 1);
    REQUIRE(starts.at(id).size() == 1);
    CHECK(starts.at(id).front().owner == ownerA);
    CHECK(starts.at(id).front().attempt == 1);
    REQUIRE(ends.count(id) == 1);
    CHECK(ends.at(id).size() == 1);
  }
  for (const LogLine& line : log) CHECK(line.owner != ownerB);
  checkAllCompleted(dir, kInstances);
}

TEST_CASE(
    "kill -9 of a host inside its handlers: another host takes every instance over with "
    "attempt 2") {
  constexpr std::int64_t kInstances = 50;
  constexpr milliseconds kLease{1000};
  ScratchDir dir;
  ReleasePipe release;
  HostProcess a("A",
                hostArgs(dir, "A", "P",
                         {"--workers", "50", "--lease-ms", std::to_string(kLease.count()),
                          "--start", "50", "--block-fd", std::to_string(kReleaseFd)}),
                release.readEnd());
  release.closeReadEnd();
  const std::string ownerA = awaitValue(a, "owner");
  awaitReports(
      {&a}, [&] { return a.count(kStart) == kInstances; }, kWork, "A's 50 handler starts");
  HostProcess b("B", hostArgs(dir, "B", "P",
                              {"--workers", "8", "--lease-ms", std::to_string(kLease.count())}));
  const std::string ownerB = awaitValue(b, "owner");
  awaitValue(b, "defined");
  CHECK(b.count(kStart) == 0);  // A's leases are live

  const std::int64_t killedAt = a.kill();
  awaitReports(
      {&b}, [&] { return instancesReported({&b}, "completed").size() == kInstances; }, kWork,
      "B completing the 50 instances A held");
  b.send("exit");
  b.awaitExit();

  const std::vector<LogLine> log = readLog(dir.log());
  const auto starts = byInstance(log, kStart);
  const auto ends = byInstance(log, kEnd);
  std::vector<std::int64_t> takeovers;
  for (std::int64_t id = 1; id <= kInstances; ++id) {
    INFO("instance " << id);
    REQUIRE(starts.count(id) == 1);
    const std::vector<LogLine>& begun = starts.at(id);
    REQUIRE(begun.size() == 2);
    CHECK(begun[0].owner == ownerA);
    CHECK(begun[0].attempt == 1);
    CHECK(begun[1].owner == ownerB);
    CHECK(begun[1].attempt == 2);
    CHECK(begun[1].micros > killedAt);
    REQUIRE(ends.count(id) == 1);
    REQUIRE(ends.at(id).size() == 1);
    CHECK(ends.at(id).front().owner == ownerB);
    checkNoOverlap(id, intervalsOf(begun, ends.at(id), ownerA, killedAt));
    takeovers.push_back(begun[1].micros - killedAt);
  }
  const Spread takeover = spreadOf(takeovers);
  std::cout << "hosts: takeover after kill -9 (lease " << kLease.count()
            << " ms), B's start minus the kill: median " << takeover.medianMs << " ms, max "
            << takeover.maxMs << " ms\n";
  if (!kSanitized) CHECK(takeover.maxMs < static_cast<double>((kLease + kTolerance).count()));
  checkAllCompleted(dir, kInstances);
}

TEST_CASE("a batch process that defines nothing completes 200 serials while the host runs") {
  constexpr std::int64_t kInstances = 200;
  ScratchDir dir;
  HostProcess a("A", hostArgs(dir, "A", "Q", {"--workers", "4", "--start", "200"}));
  const std::string ownerA = awaitValue(a, "owner");
  awaitReports(
      {&a}, [&] { return instancesReported({&a}, "waiting").size() == kInstances; }, kWork,
      "A's 200 instances waiting");

  HostProcess job("batch", {"batch", "--db", dir.db(), "--log", dir.log(), "--expect", "200"});
  // A's pipe is drained meanwhile: it reports each After it runs.
  awaitReports(
      {&job, &a}, [&] { return job.reportsEnded(); }, kWork, "the batch job to end");
  job.awaitExit();
  CHECK(job.count("invalid-field") == 1);  // an undeclared field, a wrong type: InvalidField
  CHECK(job.reportsOf("done") == std::vector<std::string>{"200"});
  awaitReports(
      {&a}, [&] { return instancesReported({&a}, "completed").size() == kInstances; }, kWork,
      "A continuing the 200 completed waits");
  a.send("exit");
  a.awaitExit();

  const std::vector<LogLine> log = readLog(dir.log());
  const auto completions = byInstance(log, kCompleted);
  const auto afters = byInstance(log, kAfter);
  std::vector<std::int64_t> latencies;
  Inspector inspect(dir.db());
  for (std::int64_t id = 1; id <= kInstances; ++id) {
    INFO("instance " << id);
    REQUIRE(completions.count(id) == 1);
    REQUIRE(completions.at(id).size() == 1);
    REQUIRE(afters.count(id) == 1);
    REQUIRE(afters.at(id).size() == 1);  // After ran exactly once...
    const LogLine& after = afters.at(id).front();
    CHECK(after.owner == ownerA);  // ...on A
    CHECK(after.attempt == 1);
    latencies.push_back(after.micros - completions.at(id).front().micros);
    const InstanceInfo instance = inspect(id);
    CHECK(instance.status == InstanceStatus::Completed);
    CHECK(instance.fields.getOr<std::string>("Result", "") == "done-" + std::to_string(id));
  }
  const Spread latency = spreadOf(latencies);
  std::cout << "hosts: a batch completion to A's After step: median " << latency.medianMs
            << " ms, max " << latency.maxMs << " ms\n";
  if (!kSanitized) CHECK(latency.maxMs < 1000.0);
}

TEST_CASE(
    "deadlines written by an exiting process fire on the running host, exactly once "
    "across two timer hosts") {
  constexpr std::int64_t kInstances = 20;
  const std::string lease = "1000";
  ScratchDir dir;
  HostProcess a("A", hostArgs(dir, "A", "R", {"--workers", "4", "--lease-ms", lease}));
  const std::string ownerA = awaitValue(a, "owner");
  HostProcess b("B", hostArgs(dir, "B", "R", {"--workers", "4", "--lease-ms", lease}));
  const std::string ownerB = awaitValue(b, "owner");
  awaitValue(a, "defined");
  awaitValue(b, "defined");

  HostProcess c("C",
                hostArgs(dir, "C", "R", {"--start", "20", "--exit-after-start", "--no-timer"}));
  c.awaitExit();
  CHECK(c.reportsOf("started") == std::vector<std::string>{"20"});
  awaitReports(
      {&a, &b},
      [&] {
        return instancesReported({&a, &b}, "completed").size() == kInstances;
      },
      kWork, "A and B completing the 20 escalated instances");
  a.send("exit");
  b.send("exit");
  a.awaitExit();
  b.awaitExit();

  const std::vector<LogLine> log = readLog(dir.log());
  const auto waits = byInstance(log, kWait);
  const auto escalations = byInstance(log, kEscalate);
  const auto escalated = byInstance(log, kEscalated);
  std::vector<std::int64_t> lateness;
  std::map<std::string, int> firedBy;
  for (std::int64_t id = 1; id <= kInstances; ++id) {
    INFO("instance " << id);
    REQUIRE(waits.count(id) == 1);
    REQUIRE(escalations.count(id) == 1);
    REQUIRE(escalations.at(id).size() == 1);  // fired exactly once, by one of the two
    REQUIRE(escalated.count(id) == 1);
    CHECK(escalated.at(id).size() == 1);
    const LogLine& escalation = escalations.at(id).front();
    CHECK((escalation.owner == ownerA || escalation.owner == ownerB));
    CHECK(escalation.attempt == 1);
    ++firedBy[escalation.owner];
    // The deadline is set as the wait is committed, just after its handler logged.
    const std::int64_t deadline =
        waits.at(id).front().micros + std::chrono::microseconds(slotTimeout(0)).count();
    CHECK(escalation.micros >= deadline);
    lateness.push_back(escalation.micros - deadline);
  }
  const Spread late = spreadOf(lateness);
  std::cout << "hosts: C's deadlines fired " << firedBy[ownerA] << " times by A, "
            << firedBy[ownerB] << " by B; escalation after the deadline: median " << late.medianMs
            << " ms, max " << late.maxMs << " ms\n";
  if (!kSanitized) CHECK(late.maxMs < static_cast<double>(kTolerance.count()));
  checkAllCompleted(dir, kInstances);
}

TEST_CASE(
    "kill -9 of a timer host inside an escalation: the other fires the rest and takes over "
    "what it held") {
  constexpr std::int64_t kInstances = 20;
  constexpr milliseconds kLease{1000};
  const std::string lease = std::to_string(kLease.count());
  ScratchDir dir;
  ReleasePipe release;  // never written: A's escalations block until the kill
  HostProcess a(
      "A",
      hostArgs(dir, "A", "R",
               {"--workers", "20", "--lease-ms", lease, "--block-fd", std::to_string(kReleaseFd)}),
      release.readEnd());
  release.closeReadEnd();
  const std::string ownerA = awaitValue(a, "owner");  // B opens the file once A has
  HostProcess b("B", hostArgs(dir, "B", "R", {"--workers", "4", "--lease-ms", lease}));
  const std::string ownerB = awaitValue(b, "owner");
  awaitValue(a, "defined");
  awaitValue(b, "defined");

  // Deadlines 1.0, 1.1, ... 2.9 s after C's starts (Slot 0..19).
  HostProcess c("C", hostArgs(dir, "C", "R",
                              {"--start", "20", "--spread", "--exit-after-start", "--no-timer"}));
  c.awaitExit();
  // A and B race for each deadline; A's escalations block, so A holds the
  // first it fires when it is killed (should B win all 20, A holds none).
  awaitReports(
      {&a, &b},
      [&] {
        return a.count(kEscalate) > 0 || instancesReported({&b}, kEscalate).size() == kInstances;
      },
      kWork, "A's first escalation");
  const std::int64_t killedAt = a.kill();
  awaitReports(
      {&b},
      [&] {
        return instancesReported({&a, &b}, "completed").size() == kInstances;
      },
      kWork, "B completing the 20 escalated instances");
  b.send("exit");
  b.awaitExit();

  const std::vector<LogLine> log = readLog(dir.log());
  const auto escalations = byInstance(log, kEscalate);
  const auto escalated = byInstance(log, kEscalated);
  std::vector<std::int64_t> takeovers;
  int firedByB = 0;
  for (std::int64_t id = 1; id <= kInstances; ++id) {
    INFO("instance " << id);
    REQUIRE(escalations.count(id) == 1);  // started at least once
    REQUIRE(escalated.count(id) == 1);
    REQUIRE(escalated.at(id).size() == 1);  // completed once, by B
    CHECK(escalated.at(id).front().owner == ownerB);
    const std::vector<LogLine>& begun = escalations.at(id);
    checkNoOverlap(id, intervalsOf(begun, escalated.at(id), ownerA, killedAt));
    const bool heldByA = begun.front().owner == ownerA;
    if (heldByA) {
      CHECK(begun.front().attempt == 1);
      REQUIRE(begun.size() == 2);
      CHECK(begun[1].owner == ownerB);
      CHECK(begun[1].attempt == 2);
      CHECK(begun[1].micros > killedAt);
      takeovers.push_back(begun[1].micros - killedAt);
    } else {
      CHECK(begun.size() == 1);
      CHECK(begun.front().owner == ownerB);
      ++firedByB;
    }
  }
  if (takeovers.empty()) {
    WARN("B fired all 20 deadlines before A fired one: no takeover was exercised");
  } else {
    const Spread takeover = spreadOf(takeovers);
    std::cout << "hosts: A held " << takeovers.size() << " escalation(s) at its kill; B fired "
              << firedByB << " and took A's over: B's start minus the kill, median "
              << takeover.medianMs << " ms, max " << takeover.maxMs << " ms\n";
    if (!kSanitized) CHECK(takeover.maxMs < static_cast<double>((kLease + kTolerance).count()));
  }
  checkAllCompleted(dir, kInstances);
}

// SqliteStore::open of a file that does not exist yet, by several processes at
// once: switching a new file to WAL answers SQLITE_BUSY without calling the
// busy handler, so open() tries it again until the busy timeout. Without that,
// about one open in a hundred failed with two processes, more with four.
TEST_CASE("processes that open one new store at the same moment all open it") {
  constexpr int kRounds = 40;
  constexpr int kProcesses = 4;
  ScratchDir dir;
  int failures = 0;
  std::string firstError;
  for (int round = 0; round < kRounds; ++round) {
    const std::string path = dir.db() + "_" + std::to_string(round);
    int go[2];
    int errors[2];
    REQUIRE(::pipe2(go, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(errors, O_CLOEXEC) == 0);
    std::vector<pid_t> children;
    for (int i = 0; i < kProcesses; ++i) {
      const pid_t child = ::fork();
      REQUIRE(child >= 0);
      if (child == 0) {
        // The test process has no other thread: the child may use the library.
        ::close(go[1]);
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        pollfd start{go[0], POLLIN, 0};
        char byte = 0;
        if (::poll(&start, 1, 10000) != 1 || ::read(go[0], &byte, 1) != 1) ::_exit(2);
        auto store = asyncflow::testing::openTestStore(path);
        if (store) ::_exit(0);
        const std::string message = store.error().toString() + '\n';
        ::write(errors[1], message.data(), message.size());
        ::_exit(1);
      }
      children.push_back(child);
    }
    ::close(go[0]);
    ::close(errors[1]);
    const std::string bytes(kProcesses, 'g');
    REQUIRE(::write(go[1], bytes.data(), bytes.size()) == kProcesses);
    ::close(go[1]);
    // Each child ends within its start cap plus the busy timeout.
    for (pid_t child : children) {
      int status = 0;
      REQUIRE(::waitpid(child, &status, 0) == child);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failures;
    }
    char buffer[512];
    const ssize_t got = ::read(errors[0], buffer, sizeof buffer);
    if (got > 0 && firstError.empty()) {
      firstError = "round " + std::to_string(round) + ": " +
                   std::string(buffer, static_cast<std::size_t>(got));
    }
    ::close(errors[0]);
  }
  INFO(failures << " of " << kRounds * kProcesses << " opens failed; the first: " << firstError);
  CHECK(failures == 0);
}

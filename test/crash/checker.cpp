// The crash harness's checker: reads the database and the logs after the
// final life and verifies what SIGKILLs must never break.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <asyncflow/asyncflow.hpp>
#include <fmt/format.h>

#include "crash.hpp"
#include "support/test_store.hpp"

namespace asyncflow::crash {
namespace {

// Failure messages kept in the report; the rest are only counted.
constexpr std::size_t kMaxFailureMessages = 40;
// Takeovers kept in CheckReport::someTakeovers, engine log lines in someWarnings.
constexpr std::size_t kTakeoversKept = 16;
constexpr std::size_t kWarningsKept = 5;

// "{instance}_{run}_{secret}". New secrets are base62, but one stored before
// base62 is base64url and may hold '_', so only the first two underscores separate.
struct SerialParts {
  InstanceId instance = 0;
  std::int64_t run = 0;
  std::string secret;
};

std::optional<SerialParts> parseSerial(std::string_view text) {
  const auto first = text.find('_');
  if (first == std::string_view::npos) return std::nullopt;
  const auto second = text.find('_', first + 1);
  if (second == std::string_view::npos) return std::nullopt;
  try {
    SerialParts parts;
    parts.instance = std::stoll(std::string(text.substr(0, first)));
    parts.run = std::stoll(std::string(text.substr(first + 1, second - first - 1)));
    parts.secret = std::string(text.substr(second + 1));
    return parts;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::string serialOf(const StepRunRecord& run) {
  return fmt::format("{}_{}_{}", run.instance, run.run, run.secret);
}

// One handler run, from its two lines in its life's handler log.
struct HandlerRun {
  std::string step;
  int attempt = 0;
  std::string serial;  // "-" for sync steps
  std::size_t life = 0;
  std::uint64_t run = 0;  // its number in the life's log
  std::int64_t begin = 0;
  std::optional<std::int64_t> end;  // none: a kill cut it short (or the end line is missing)
  // When it was over for sure: its end, or else the time its life was recorded
  // dead (killed or exited); the largest time when neither is known.
  std::int64_t over = 0;
};

// A line of a starts log: the life that wrote a StepStarted entry, the
// attempt it scheduled and the expiry of the lease it wrote with it.
struct StartLine {
  std::size_t life = 0;
  int attempt = 0;
  std::optional<std::int64_t> expiry;
};

// How the parent recorded a life's end in lives.log.
struct LifeEnd {
  bool killed = false;
  std::int64_t at = 0;
};

// What the checker keeps of one instance while it reads the logs.
struct InstanceFacts {
  std::string waitSerial;
  std::string token;
  std::map<std::string, int, std::less<>> attempts;  // step -> its run's attempt
  // step -> the times of its run's StepStarted entries: [k - 1] scheduled attempt k.
  std::map<std::string, std::vector<std::int64_t>, std::less<>> scheduled;
};

std::int64_t microsOf(Timestamp t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

// "Wait attempt 2 in life 3 (run 17, 1712345678.123456-1712345678.123470)": a
// handler run, for messages.
std::string describe(const HandlerRun& run) {
  auto time = [](std::int64_t micros) {
    return micros == std::numeric_limits<std::int64_t>::max()
               ? std::string("?")
               : fmt::format("{}.{:06}", micros / 1'000'000, micros % 1'000'000);
  };
  return fmt::format("{} attempt {} in life {} (run {}, {}-{}{})", run.step, run.attempt, run.life,
                     run.run, time(run.begin), time(run.over), run.end ? "" : " when seen dead");
}

class Checker {
 public:
  explicit Checker(const CrashConfig& config) : config_(config) {}

  CheckReport run() {
    try {
      checkDatabase();
      checkAcks();
      readLives();
      readEngineLogs();
      readStarts();
      checkHandlers();
    } catch (const std::exception& e) {
      failure(fmt::format("checker: {}", e.what()));
    }
    if (suppressed_ > 0) {
      report_.failures.push_back(fmt::format("... and {} more failures", suppressed_));
    }
    return std::move(report_);
  }

 private:
  void failure(std::string message) {
    if (report_.failures.size() < kMaxFailureMessages) {
      report_.failures.push_back(std::move(message));
    } else {
      ++suppressed_;
    }
  }

  void checkDatabase() {
    std::vector<InstanceId> ids;
    {
      auto db = testing::openTestSql(storeSpec(config_));
      if (!testing::isPostgresSpec(storeSpec(config_))) {
        // PostgreSQL has no such check: its pages carry no checksums by default.
        const std::string integrity = db->rows("PRAGMA integrity_check").at(0).at(0).value_or("");
        if (integrity != "ok") failure("PRAGMA integrity_check: " + integrity);
      }
      const auto pending = db->count("SELECT COUNT(*) FROM completion_fields");
      if (pending != 0) {
        failure(fmt::format("{} completion field rows are still pending", pending));
      }
      for (const auto& row : db->rows("SELECT id FROM instances ORDER BY id")) {
        ids.push_back(std::stoll(row.at(0).value_or("0")));
      }
    }
    report_.instances = ids.size();
    if (ids.size() != config_.instances) {
      failure(
          fmt::format("{} instances in the database, {} started", ids.size(), config_.instances));
    }
    if (config_.hosts > 1) checkStartKeys();

    auto store = testing::openTestStore(storeSpec(config_));
    if (!store) throw std::runtime_error("open: " + store.error().toString());
    std::vector<bool> seqSeen(config_.instances + 1, false);
    std::map<std::string, InstanceId> tokenOwner;
    for (InstanceId id : ids) {
      auto snapshot = (*store)->loadInstance(id);
      if (!snapshot) {
        failure(fmt::format("instance {}: {}", id, snapshot.error().toString()));
        continue;
      }
      checkInstance(**store, *snapshot, seqSeen, tokenOwner);
    }
    for (std::size_t seq = 1; seq < seqSeen.size(); ++seq) {
      if (!seqSeen[seq]) failure(fmt::format("no instance has Seq {}: a start was lost", seq));
    }
  }

  // With several hosts each instance is started by startOnce with the key
  // "seq-<Seq>": exactly one key per instance, naming its own Seq.
  void checkStartKeys() {
    auto db = testing::openTestSql(storeSpec(config_));
    const auto keys = db->count("SELECT COUNT(*) FROM start_keys");
    const auto wrong = db->count(
        "SELECT COUNT(*) FROM start_keys k LEFT JOIN fields f ON "
        "f.instance_id = k.instance_id AND f.name = 'Seq' WHERE f.value IS "
        "NULL OR k.idempotency_key != 'seq-' || f.value");
    if (keys != static_cast<std::int64_t>(config_.instances) || wrong != 0) {
      failure(fmt::format("{} start keys for {} instances, {} not naming the instance's Seq", keys,
                          config_.instances, wrong));
    }
  }

  void checkInstance(Store& store, const InstanceSnapshot& snapshot, std::vector<bool>& seqSeen,
                     std::map<std::string, InstanceId>& tokenOwner) {
    const InstanceRecord& record = snapshot.record;
    const InstanceId id = record.id;
    const Fields& fields = snapshot.fields;
    if (record.status != InstanceStatus::Completed) {
      failure(fmt::format("instance {} is {}, not Completed", id, statusName(record.status)));
    }

    const std::int64_t seq = fields.getOr<std::int64_t>(kSeq, 0);
    if (seq < 1 || static_cast<std::size_t>(seq) > config_.instances) {
      failure(fmt::format("instance {} has Seq {}", id, seq));
    } else if (seqSeen[static_cast<std::size_t>(seq)]) {
      failure(fmt::format("instance {} repeats Seq {}: started twice", id, seq));
    } else {
      seqSeen[static_cast<std::size_t>(seq)] = true;
      seqOwner_[seq] = id;
    }

    InstanceFacts& facts = instances_[id];
    facts.token = fields.getOr<std::string>(kToken, "");
    if (facts.token.empty()) {
      failure(fmt::format("instance {} has no Token: its Wait never completed", id));
    } else if (auto [owner, inserted] = tokenOwner.emplace(facts.token, id); !inserted) {
      failure(
          fmt::format("token {} completed instances {} and {}", facts.token, owner->second, id));
    }
    if (fields.getOr<std::string>(kFinishedToken, "") != facts.token) {
      failure(fmt::format("instance {}: Finish saw token '{}', the completion set '{}'", id,
                          fields.getOr<std::string>(kFinishedToken, ""), facts.token));
    }

    auto history = store.loadHistory(id);
    if (!history) {
      failure(fmt::format("instance {}: history: {}", id, history.error().toString()));
      return;
    }
    std::map<HistoryKind, int> instanceLevel;
    std::map<std::pair<std::int64_t, HistoryKind>, int> perRun;
    for (const HistoryEvent& event : *history) {
      if (event.run == 0) {
        ++instanceLevel[event.kind];
      } else {
        ++perRun[{event.run, event.kind}];
        if (event.kind == HistoryKind::StepStarted) {
          facts.scheduled[event.step].push_back(microsOf(event.at));
        }
      }
    }
    if (instanceLevel[HistoryKind::Started] != 1 || instanceLevel[HistoryKind::Completed] != 1 ||
        instanceLevel.size() != 2) {
      failure(
          fmt::format("instance {}: {} Started and {} Completed entries, {} kinds in all; "
                      "want one each",
                      id, instanceLevel[HistoryKind::Started],
                      instanceLevel[HistoryKind::Completed], instanceLevel.size()));
    }

    if (record.lastRun != 3 || record.currentRun != 3) {
      failure(fmt::format("instance {}: {} step runs (current {}), want 3", id, record.lastRun,
                          record.currentRun));
    }
    const char* const steps[] = {kPrepare, kWait, kFinish};
    const char* const attemptFields[] = {kPrepareAttempt, kWaitAttempt, kFinishAttempt};
    for (std::int64_t runNumber = 1; runNumber <= 3; ++runNumber) {
      auto run = store.loadStepRun(id, runNumber);
      if (!run) {
        failure(fmt::format("run {}_{}: {}", id, runNumber, run.error().toString()));
        continue;
      }
      const std::string step = steps[runNumber - 1];
      const std::string shown = fmt::format("run {}_{} ({})", id, runNumber, step);
      facts.attempts[step] = run->attempt;
      if (run->step != step) failure(fmt::format("{} is step '{}'", shown, run->step));
      if (run->status != StepRunStatus::Completed) {
        failure(fmt::format("{} is {}, not Completed", shown, statusName(run->status)));
      }
      const bool async = step == kWait;
      if (run->hasCompletion != async || !run->completion.empty()) {
        failure(fmt::format("{}: hasCompletion {}, {} completion fields pending", shown,
                            run->hasCompletion, run->completion.size()));
      }
      if (async) facts.waitSerial = serialOf(*run);
      if (run->attempt < 1) failure(fmt::format("{} has attempt {}", shown, run->attempt));
      report_.crashStarts += static_cast<std::size_t>(run->attempt > 1 ? run->attempt - 1 : 0);
      const std::int64_t committed = fields.getOr<std::int64_t>(attemptFields[runNumber - 1], 0);
      if (committed != run->attempt) {
        failure(fmt::format("{}: the committed handler saw attempt {}, the run says {}", shown,
                            committed, run->attempt));
      }

      const int completedEntries = perRun[{runNumber, HistoryKind::StepCompleted}];
      if (completedEntries != 1) {
        failure(fmt::format("{} has {} StepCompleted entries: want exactly one completion", shown,
                            completedEntries));
      }
      const int recorded = perRun[{runNumber, HistoryKind::CompletionRecorded}];
      if (recorded > (async ? 1 : 0)) {
        failure(fmt::format("{} has {} CompletionRecorded entries", shown, recorded));
      }
      const int started = perRun[{runNumber, HistoryKind::StepStarted}];
      if (started != run->attempt) {
        failure(
            fmt::format("{}: {} StepStarted entries for attempt {}", shown, started, run->attempt));
      }
      for (HistoryKind bad : {HistoryKind::StepFailed, HistoryKind::TimedOut, HistoryKind::Retried,
                              HistoryKind::Heartbeat}) {
        if (perRun[{runNumber, bad}] != 0) {
          failure(fmt::format("{} has a {} entry", shown, historyKindName(bad)));
        }
      }
    }
  }

  // Every complete line of the ack log is a completion the file still holds.
  void checkAcks() {
    std::size_t torn = 0;
    std::set<std::string> ackedSerials;
    std::set<InstanceId> ackedInstances;
    std::vector<std::string> lines;
    for (const auto& [life, path] : lifeLogs(config_, "acks")) {
      for (std::string& line : readCompleteLines(path, torn)) lines.push_back(std::move(line));
    }
    for (const std::string& line : lines) {
      const auto space = line.find(' ');
      const std::string serial = line.substr(0, space);
      const std::string token = space == std::string::npos ? "" : line.substr(space + 1);
      ++report_.acknowledged;
      if (!ackedSerials.insert(serial).second) {
        failure(
            fmt::format("serial {} was acknowledged twice: a run took two completions", serial));
      }
      const auto parts = parseSerial(serial);
      const auto found = parts ? instances_.find(parts->instance) : instances_.end();
      if (found == instances_.end()) {
        failure(fmt::format("lost: acknowledged serial {} names no instance", serial));
        continue;
      }
      ackedInstances.insert(parts->instance);
      InstanceFacts& facts = found->second;
      if (facts.waitSerial != serial) {
        failure(fmt::format("lost: acknowledged serial {} is not the Wait run {}", serial,
                            facts.waitSerial));
      } else if (facts.token != token) {
        failure(
            fmt::format("lost: the completion of {} with token {} was acknowledged, the "
                        "file holds token '{}'",
                        serial, token, facts.token));
      }
    }
    report_.tornLines += torn;
    report_.unlogged = instances_.size() - ackedInstances.size();
  }

  // The parent's "killed L<life> <micros>" and "exited L<life> <micros>" lines.
  void readLives() {
    std::size_t torn = 0;
    for (const std::string& line : readCompleteLines(livesLogPath(config_), torn)) {
      std::istringstream in(line);
      std::string how, life;
      LifeEnd end;
      std::size_t number = 0;
      if (!(in >> how >> life >> end.at) || (how != "killed" && how != "exited") ||
          life.size() < 2 || life[0] != 'L' ||
          (number = std::strtoull(life.c_str() + 1, nullptr, 10)) == 0) {
        failure("lives log: malformed line '" + line + "'");
        continue;
      }
      end.killed = how == "killed";
      if (!lives_.emplace(number, end).second) failure(fmt::format("life {} ended twice", number));
    }
    report_.tornLines += torn;
  }

  // Reads every life's handler log into runs by instance, each run with the
  // moment it was surely over.
  std::map<InstanceId, std::vector<HandlerRun>> readHandlerRuns() {
    std::map<InstanceId, std::vector<HandlerRun>> runs;
    for (const auto& [life, path] : lifeLogs(config_, "handlers")) {
      ++report_.lives;
      std::size_t torn = 0;
      std::map<std::uint64_t, std::pair<InstanceId, std::size_t>> byNumber;
      for (const std::string& line : readCompleteLines(path, torn)) {
        const auto parsed = parseHandlerLine(line);
        if (!parsed || parsed->life != life) {
          failure(fmt::format("handler log of life {}: malformed line '{}'", life, line));
          continue;
        }
        if (parsed->begins) {
          auto& list = runs[parsed->instance];
          if (!byNumber.emplace(parsed->run, std::make_pair(parsed->instance, list.size()))
                   .second) {
            failure(fmt::format("handler log of life {}: run {} begins twice", life, parsed->run));
            continue;
          }
          HandlerRun run;
          run.step = parsed->step;
          run.attempt = parsed->attempt;
          run.serial = parsed->serial;
          run.life = life;
          run.run = parsed->run;
          run.begin = parsed->micros;
          list.push_back(std::move(run));
          ++report_.handlerRuns;
          continue;
        }
        const auto found = byNumber.find(parsed->run);
        if (found == byNumber.end()) {
          failure(fmt::format("handler log of life {}: run {} ends before it begins", life,
                              parsed->run));
          continue;
        }
        HandlerRun& run = runs[found->second.first][found->second.second];
        if (run.end) {
          failure(fmt::format("handler log of life {}: run {} ends twice", life, parsed->run));
        }
        run.end = parsed->micros;
      }
      report_.tornLines += torn;
    }

    for (auto& [id, list] : runs) {
      for (HandlerRun& run : list) {
        const auto died = lives_.find(run.life);
        if (run.end) {
          run.over = *run.end;
        } else if (died != lives_.end()) {
          run.over = died->second.at;
        } else {
          run.over = std::numeric_limits<std::int64_t>::max();
        }
        if (!run.end && died == lives_.end()) {
          failure(fmt::format("instance {}: {} has no end, and life {} no recorded end", id,
                              describe(run), run.life));
        }
        if (run.over < run.begin) {
          failure(fmt::format("instance {}: {} ends before it begins", id, describe(run)));
        }
        if (died != lives_.end() && std::max(run.begin, run.over) > died->second.at) {
          failure(fmt::format("instance {}: {} went on after its life was recorded dead at {}", id,
                              describe(run), died->second.at));
        }
      }
      std::sort(list.begin(), list.end(), [](const HandlerRun& a, const HandlerRun& b) {
        return std::tie(a.begin, a.life, a.run) < std::tie(b.begin, b.life, b.run);
      });
    }
    return runs;
  }

  // Handlers that ran again saw a higher attempt each time, in time order; the
  // last invocation is the one whose result was committed; no two runs of one
  // instance overlap; every takeover came after the lease had expired.
  void checkHandlers() {
    std::map<InstanceId, std::vector<HandlerRun>> runs = readHandlerRuns();
    for (const auto& [id, facts] : instances_) {
      const auto found = runs.find(id);
      const std::vector<HandlerRun> none;
      const std::vector<HandlerRun>& all = found == runs.end() ? none : found->second;
      checkOverlaps(id, all);
      std::map<std::string, std::vector<const HandlerRun*>, std::less<>> bySteps;
      for (const HandlerRun& run : all) bySteps[run.step].push_back(&run);
      for (const auto& [step, attempt] : facts.attempts) {
        auto entries = bySteps.find(step);
        if (entries == bySteps.end()) {
          failure(
              fmt::format("instance {}: handler {} completed but never logged a run", id, step));
          continue;
        }
        checkAttempts(id, facts, step, attempt, entries->second);
        bySteps.erase(entries);
      }
      for (const auto& [step, entries] : bySteps) {
        failure(fmt::format("instance {}: {} handler runs of step '{}', which it has no run of", id,
                            entries.size(), step));
      }
      checkTakeovers(id, facts, all);
      if (found != runs.end()) runs.erase(found);
    }
    for (const auto& [id, list] : runs) {
      failure(fmt::format("handler log: {} runs for instance {}, which the database lacks",
                          list.size(), id));
    }
  }

  // `runs` (one step's, in time order) saw rising attempts, the last the
  // committed one, and (Wait) the run's serial.
  void checkAttempts(InstanceId id, const InstanceFacts& facts, const std::string& step,
                     int attempt, const std::vector<const HandlerRun*>& runs) {
    for (std::size_t i = 1; i < runs.size(); ++i) {
      if (runs[i]->attempt <= runs[i - 1]->attempt) {
        failure(fmt::format(
            "instance {}: {} re-ran with attempt() {} (life {}) after attempt() {} "
            "(life {})",
            id, step, runs[i]->attempt, runs[i]->life, runs[i - 1]->attempt, runs[i - 1]->life));
      }
    }
    if (runs.back()->attempt != attempt) {
      failure(
          fmt::format("instance {}: the last {} handler saw attempt() {}, the run committed "
                      "attempt {}",
                      id, step, runs.back()->attempt, attempt));
    }
    const auto scheduled = facts.scheduled.find(step);
    for (const HandlerRun* run : runs) {
      if (step == kWait && run->serial != facts.waitSerial) {
        failure(fmt::format("instance {}: a Wait handler saw serial {}, the run is {}", id,
                            run->serial, facts.waitSerial));
      }
      // The engine counts an attempt durably before its handler runs.
      if (scheduled != facts.scheduled.end() && run->attempt >= 1 &&
          static_cast<std::size_t>(run->attempt) <= scheduled->second.size() &&
          run->begin < scheduled->second[run->attempt - 1]) {
        failure(fmt::format("instance {}: {} began before its StepStarted entry ({})", id,
                            describe(*run), scheduled->second[run->attempt - 1]));
      }
    }
    const std::size_t reruns = runs.size() - 1;
    if (step == kPrepare) report_.rerunsPrepare += reruns;
    if (step == kWait) report_.rerunsWait += reruns;
    if (step == kFinish) report_.rerunsFinish += reruns;
  }

  // No handler of an instance runs while another does, in one host or in two:
  // each run's [begin, over] is disjoint from every other's (`runs` is in
  // begin order, so each is compared with the latest-ending before it).
  void checkOverlaps(InstanceId id, const std::vector<HandlerRun>& runs) {
    const HandlerRun* latest = nullptr;
    for (const HandlerRun& run : runs) {
      if (latest != nullptr && run.begin < latest->over) {
        failure(fmt::format("instance {}: two handler runs at once: {} and {}", id,
                            describe(*latest), describe(run)));
      }
      if (latest == nullptr || run.over > latest->over) latest = &run;
    }
  }

  // Instances an engine logged a Warning or Error about ("instance <id>: ...",
  // such as a store failure and the drive retried after a back-off).
  void readEngineLogs() {
    for (const auto& [life, path] : lifeLogs(config_, "engine")) {
      std::size_t torn = 0;
      for (const std::string& line : readCompleteLines(path, torn)) {
        ++report_.engineWarnings;
        if (report_.someWarnings.size() < kWarningsKept) report_.someWarnings.push_back(line);
        const auto mark = line.find(" instance ");
        if (mark != std::string::npos) {
          troubled_.insert(std::strtoll(line.c_str() + mark + 10, nullptr, 10));
        }
      }
      report_.tornLines += torn;
    }
  }

  // The starts logs: which life wrote each StepStarted entry, and the lease it
  // wrote with it. Keyed by (instance, step, at); a create's line, which has
  // no instance id yet, by its Seq through seqOwner_. A "lost" line takes back
  // the same life's "start" line before it: that commit did not write it.
  void readStarts() {
    for (const auto& [life, path] : lifeLogs(config_, "starts")) {
      std::size_t torn = 0;
      for (const std::string& line : readCompleteLines(path, torn)) {
        std::istringstream in(line);
        std::string kind, step, expiry, lifeWord;
        InstanceId instance = 0;
        std::int64_t seq = 0, run = 0, at = 0;
        StartLine start;
        if (!(in >> kind >> instance >> seq >> run >> step >> start.attempt >> at >> expiry >>
              lifeWord) ||
            (kind != "start" && kind != "lost") || lifeWord != fmt::format("L{}", life)) {
          failure(fmt::format("starts log of life {}: malformed line '{}'", life, line));
          continue;
        }
        start.life = life;
        if (expiry != "-") start.expiry = std::strtoll(expiry.c_str(), nullptr, 10);
        if (instance == 0) {
          const auto owner = seqOwner_.find(seq);
          if (owner == seqOwner_.end()) continue;  // a start that never landed
          instance = owner->second;
        }
        std::vector<StartLine>& lines = starts_[{instance, step, at}];
        if (kind == "start") {
          lines.push_back(start);
          continue;
        }
        const auto taken = std::find_if(lines.begin(), lines.end(), [&](const StartLine& l) {
          return l.life == start.life && l.attempt == start.attempt && l.expiry == start.expiry;
        });
        if (taken == lines.end()) {
          failure(fmt::format("starts log of life {}: '{}' follows no start line", life, line));
        } else {
          lines.erase(taken);
        }
      }
      report_.tornLines += torn;
    }
  }

  // Who scheduled each attempt of each step run, and under which lease: every
  // StepStarted entry must have exactly one line in the lives' starts logs
  // (written before its commit, so a kill cannot lose it), with a full lease.
  //
  // Then the properties of leases and takeovers, exactly as the data shows them:
  // - a handler run of attempt k ran in the life that scheduled attempt k: no
  //   host runs a handler under another host's lease (only an offered lease is
  //   taken as it is, and nothing in this workload offers one);
  // - a restart (attempt k + 1) by another life than the one that scheduled
  //   attempt k is a takeover, and its StepStarted time, read by the taking
  //   host when it found the lease expired, is at or after the expiry written
  //   with attempt k. Later lease writes by the holder (renewals) only move the
  //   expiry later, and the lives never stop in order (which would hand the
  //   instance over early), so this is exactly "every lease taken over was
  //   expired". A restart by the scheduling life itself needs no expired lease;
  //   one before the expiry, on an instance its engine logged no trouble with,
  //   is the engine re-running a step that did not crash: a failure.
  void checkTakeovers(InstanceId id, const InstanceFacts& facts,
                      const std::vector<HandlerRun>& runs) {
    const std::int64_t lease = std::chrono::microseconds(kLease).count();
    for (const char* step : {kPrepare, kWait, kFinish}) {
      const auto scheduled = facts.scheduled.find(step);
      if (scheduled == facts.scheduled.end()) continue;
      const std::vector<std::int64_t>& at = scheduled->second;
      std::vector<const StartLine*> writers(at.size(), nullptr);
      for (std::size_t k = 0; k < at.size(); ++k) {
        const auto found = starts_.find({id, step, at[k]});
        const std::size_t lines = found == starts_.end() ? 0 : found->second.size();
        if (lines != 1) {
          // Two lives' lines for one microsecond, both killed before they knew
          // whether their commit landed, would be ambiguous: not a failure.
          if (lines == 0) {
            failure(fmt::format("instance {}: {} attempt {} (at {}) is in no life's starts log", id,
                                step, k + 1, at[k]));
          }
          continue;
        }
        const StartLine& start = found->second.front();
        writers[k] = &start;
        if (start.attempt != static_cast<int>(k + 1)) {
          failure(fmt::format("instance {}: {} attempt {} was logged as attempt {} by life {}", id,
                              step, k + 1, start.attempt, start.life));
        }
        if (!start.expiry || *start.expiry < at[k] + lease) {
          failure(
              fmt::format("instance {}: {} attempt {} was scheduled by life {} without a "
                          "lease of {} ms",
                          id, step, k + 1, start.life, kLease.count()));
        }
      }
      for (const HandlerRun& run : runs) {
        if (run.step != step || run.attempt < 1 ||
            static_cast<std::size_t>(run.attempt) > writers.size()) {
          continue;
        }
        const StartLine* writer = writers[run.attempt - 1];
        if (writer != nullptr && writer->life != run.life) {
          failure(
              fmt::format("instance {}: {} ran, but life {} scheduled that attempt: a "
                          "handler under another host's lease",
                          id, describe(run), writer->life));
        }
      }
      for (std::size_t k = 1; k < at.size(); ++k) {
        const StartLine* from = writers[k - 1];
        const StartLine* to = writers[k];
        if (from == nullptr || to == nullptr || !from->expiry) {
          ++report_.restartsUnattributed;
          continue;
        }
        const bool early = at[k] < *from->expiry;
        if (from->life == to->life) {
          if (!early) {
            ++report_.restartsOwnExpired;
          } else if (troubled_.count(id) != 0) {
            ++report_.restartsAfterTrouble;
          } else {
            ++report_.restartsByHolder;
            failure(fmt::format(
                "instance {}: life {} restarted {} at attempt {} {} µs before its own lease "
                "expired, with no trouble logged: a step re-run that did not crash",
                id, to->life, step, k + 1, *from->expiry - at[k]));
          }
          continue;
        }
        ++report_.takeovers;
        const auto died = lives_.find(from->life);
        if (died != lives_.end() && died->second.at <= at[k]) ++report_.takeoversOfDead;
        if (early) {
          failure(
              fmt::format("instance {}: life {} took {} over at attempt {} {} µs before the "
                          "lease life {} wrote with attempt {} expired",
                          id, to->life, step, k + 1, *from->expiry - at[k], from->life, k));
        }
        rememberTakeover(id, step, *from, static_cast<int>(k), at[k - 1], *to,
                         static_cast<int>(k + 1), at[k], runs);
      }
    }
  }

  // Keeps a takeover for the self-test, when the logs show a handler run of
  // the taking life's attempt and one of the life taken over on that instance.
  void rememberTakeover(InstanceId id, const char* step, const StartLine& from, int fromAttempt,
                        std::int64_t fromAt, const StartLine& to, int toAttempt, std::int64_t toAt,
                        const std::vector<HandlerRun>& runs) {
    if (report_.someTakeovers.size() >= kTakeoversKept) return;
    const HandlerRun* taking = nullptr;
    const HandlerRun* taken = nullptr;
    for (const HandlerRun& run : runs) {
      if (run.life == to.life && run.step == step && run.attempt == toAttempt) taking = &run;
    }
    for (const HandlerRun& run : runs) {
      if (run.life == from.life && taking != nullptr && run.begin < taking->begin) taken = &run;
    }
    if (taking == nullptr || taken == nullptr) return;
    report_.someTakeovers.push_back({id, step, from.life, taken->run, fromAttempt, fromAt, to.life,
                                     taking->run, toAttempt, toAt, taking->begin});
  }

  const CrashConfig& config_;
  CheckReport report_;
  std::size_t suppressed_ = 0;
  std::map<InstanceId, InstanceFacts> instances_;
  std::map<std::size_t, LifeEnd> lives_;  // from lives.log
  std::set<InstanceId> troubled_;         // named in an engine's Warning or Error
  std::map<std::int64_t, InstanceId> seqOwner_;
  std::map<std::tuple<InstanceId, std::string, std::int64_t>, std::vector<StartLine>> starts_;
};

}  // namespace

CheckReport check(const CrashConfig& config) { return Checker(config).run(); }

}  // namespace asyncflow::crash

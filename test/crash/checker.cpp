// The crash harness's checker: reads the database and the two logs after the
// final life and verifies what SIGKILLs must never break.
#include <exception>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <SQLiteCpp/SQLiteCpp.h>
#include <asyncflow/asyncflow.hpp>
#include <fmt/format.h>

#include "crash.hpp"

namespace asyncflow::crash {
namespace {

// Failure messages kept in the report; the rest are only counted.
constexpr std::size_t kMaxFailureMessages = 40;

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

// One line of the handler log.
struct HandlerEntry {
  int attempt = 0;
  std::string serial;  // "-" for sync steps
  std::string life;    // "L3": the life it ran in
};

// What the checker keeps of one instance while it reads the logs.
struct InstanceFacts {
  std::string waitSerial;
  std::string token;
  std::map<std::string, int, std::less<>> attempts;  // step -> its run's attempt
};

class Checker {
 public:
  explicit Checker(const CrashConfig& config) : config_(config) {}

  CheckReport run() {
    try {
      checkDatabase();
      checkAcks();
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
      SQLite::Database db(databasePath(config_), SQLite::OPEN_READONLY);
      const std::string integrity = db.execAndGet("PRAGMA integrity_check").getString();
      if (integrity != "ok") failure("PRAGMA integrity_check: " + integrity);
      const auto pending = db.execAndGet("SELECT COUNT(*) FROM completion_fields").getInt64();
      if (pending != 0) {
        failure(fmt::format("{} completion field rows are still pending", pending));
      }
      SQLite::Statement select(db, "SELECT id FROM instances ORDER BY id");
      while (select.executeStep()) ids.push_back(select.getColumn(0).getInt64());
    }
    report_.instances = ids.size();
    if (ids.size() != config_.instances) {
      failure(
          fmt::format("{} instances in the database, {} started", ids.size(), config_.instances));
    }

    auto store = SqliteStore::open(databasePath(config_));
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
    for (const std::string& line : readCompleteLines(ackLogPath(config_), torn)) {
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
      const InstanceFacts& facts = found->second;
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

  // Handlers that ran again saw a higher attempt each time; the last invocation
  // is the one whose result was committed.
  void checkHandlers() {
    std::size_t torn = 0;
    std::map<std::pair<InstanceId, std::string>, std::vector<HandlerEntry>> runs;
    for (const std::string& line : readCompleteLines(handlerLogPath(config_), torn)) {
      std::istringstream in(line);
      InstanceId instance = 0;
      std::string step;
      HandlerEntry entry;
      if (!(in >> instance >> step >> entry.attempt >> entry.serial >> entry.life)) {
        failure("handler log: malformed line '" + line + "'");
        continue;
      }
      runs[{instance, step}].push_back(std::move(entry));
      ++report_.handlerRuns;
    }
    report_.tornLines += torn;

    for (const auto& [id, facts] : instances_) {
      for (const auto& [step, attempt] : facts.attempts) {
        auto found = runs.find({id, step});
        if (found == runs.end()) {
          failure(
              fmt::format("instance {}: handler {} completed but never logged a run", id, step));
          continue;
        }
        const std::vector<HandlerEntry>& entries = found->second;
        for (std::size_t i = 1; i < entries.size(); ++i) {
          if (entries[i].attempt <= entries[i - 1].attempt) {
            failure(
                fmt::format("instance {}: {} re-ran with attempt() {} (life {}) after "
                            "attempt() {} (life {})",
                            id, step, entries[i].attempt, entries[i].life.substr(1),
                            entries[i - 1].attempt, entries[i - 1].life.substr(1)));
          }
        }
        if (entries.back().attempt != attempt) {
          failure(
              fmt::format("instance {}: the last {} handler saw attempt() {}, the run "
                          "committed attempt {}",
                          id, step, entries.back().attempt, attempt));
        }
        if (step == kWait) {
          for (const HandlerEntry& entry : entries) {
            if (entry.serial != facts.waitSerial) {
              failure(fmt::format("instance {}: a Wait handler saw serial {}, the run is {}", id,
                                  entry.serial, facts.waitSerial));
            }
          }
        }
        const std::size_t reruns = entries.size() - 1;
        if (step == kPrepare) report_.rerunsPrepare += reruns;
        if (step == kWait) report_.rerunsWait += reruns;
        if (step == kFinish) report_.rerunsFinish += reruns;
        runs.erase(found);
      }
    }
    for (const auto& [key, entries] : runs) {
      failure(fmt::format("handler log: {} runs of {} for instance {}, which the database lacks",
                          entries.size(), key.second, key.first));
    }
  }

  const CrashConfig& config_;
  CheckReport report_;
  std::size_t suppressed_ = 0;
  std::map<InstanceId, InstanceFacts> instances_;
};

}  // namespace

std::vector<std::string> readCompleteLines(const std::string& path, std::size_t& torn) {
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> lines;
  std::size_t begin = 0;
  for (std::size_t end = text.find('\n'); end != std::string::npos;
       begin = end + 1, end = text.find('\n', begin)) {
    lines.push_back(text.substr(begin, end - begin));
  }
  if (begin < text.size()) ++torn;
  return lines;
}

CheckReport check(const CrashConfig& config) { return Checker(config).run(); }

}  // namespace asyncflow::crash

// fuzz_complete: completeServerEvent, failServerEvent and heartbeat with
// arbitrary serials and fields against a populated store.
//
// Two worlds are built the same way, one on a MemoryStore and one on a
// SqliteStore (":memory:"), with a manual clock and seeded secrets, so their
// serials are equal. Each holds instances in every state a serial can name:
// waiting (secret and bare serials), completed, waiting at a second step,
// cancelled, timed out, failed through an error line, failed outright, one
// whose process version is defined only by the stored declaration (a host
// without it records a completion for one that defines it), and runs left Ready/Starting by a
// "crash" (for early completions). The input is a list of operations
// (server events, timer firings, starts, cancels); a server event's serial is
// raw bytes, a known serial, a mutated known serial (another secret, a flipped
// character, ids off by one, no secret, truncated, ...), or synthesized.
//
// After every operation, in each world:
// - the answer is success or one of the documented Errc, and is exactly what the
//   state before allows: success when nothing stands in the way, otherwise one of
//   the codes of the obstacles present (malformed or wrong secret, unknown,
//   completed, failed, timed out, cancelled, a version nobody declared, bad field);
// - a serial whose secret is not the run's never completes anything, and no
//   answer tells a stored secret that the caller did not send;
// - an error changes nothing in the store;
// - a success changes only the instance the serial names, and in it only the
//   named run and the runs after it, in the way the event says;
// and the two worlds give the same answer and hold the same state.
// Both worlds are rebuilt every 64 inputs, when fewer than 4 runs are open, and
// when they hold more than 48 instances, so that iterations stay fast.
//
// Input: up to 32 operations, each an operation byte and its arguments.
//   byte % 8: 0-2 complete, 3 fail, 4 heartbeat, 5 timers, 6 start, 7 cancel;
//   bit 3: use the engine with SerialForm::Bare; bits 4-5: the serial's source.
//   server events: the serial (by source: 0 a length byte and raw text; 1 two
//     bytes picking a known run, instances in id order; 2 the same plus a
//     mutation byte and its argument; 3 instance byte, run byte, secret byte
//     and maybe 22 secret bytes or a run-picking byte), for fail a length-prefixed
//     reason, then (not for heartbeat) a length byte and that many bytes of
//     fields in fuzz_support.hpp's encoding;
//   timers: a byte of minutes to advance the clock; start: fields as above
//   (bit 4: process Plain, else Order); cancel: an instance byte.
// ASYNCFLOW_FUZZ_VERBOSE=1 prints each operation and its answer.
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "model/serial.hpp"

namespace {

using namespace asyncflow;
using fuzz::broken;
using fuzz::ByteReader;
using fuzz::identical;
using fuzz::shown;
using std::chrono::hours;
using std::chrono::minutes;

// A deterministic "CSPRNG" (splitmix64), so both worlds draw the same secrets.
class SeededRandom final : public RandomSource {
 public:
  explicit SeededRandom(std::uint64_t seed) : state_(seed) {}
  Result<void> fill(std::uint8_t* out, std::size_t size) override {
    for (std::size_t i = 0; i < size; ++i) {
      state_ += 0x9e3779b97f4a7c15ULL;
      std::uint64_t z = state_;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      out[i] = static_cast<std::uint8_t>(z ^ (z >> 31));
    }
    return {};
  }

 private:
  std::uint64_t state_;
};

// --- the processes ----------------------------------------------------------------

struct Declared {
  std::string name;
  Type type;
};

const std::vector<Declared> kOrderFields = {{"OrderId", Type::String},
                                            {"Status", Type::String},
                                            {"Amount", Type::Double},
                                            {"Count", Type::Int64},
                                            {"Flag", Type::Bool}};
const std::vector<Declared> kPlainFields = {{"Note", Type::String}};

// Names the input's fields draw from: both processes' and one nobody declares.
const std::vector<std::string> kFieldNames = {"OrderId", "Status", "Amount", "Count",
                                              "Flag",    "Note",   "Bogus"};

Process orderProcess() {
  Process p("Order", 1);
  p.field("OrderId", Type::String)
      .field("Status", Type::String, "Pending")
      .field("Amount", Type::Double)
      .field("Count", Type::Int64)
      .field("Flag", Type::Bool);
  p.step(AsyncStep("Submit", [](AsyncStepContext&) { return StartOutcome::wait(); })
             .timeout(hours(1), "Escalate")
             .heartbeat(minutes(10))
             .onError("Repair"))
      .step(AsyncStep("Approve", [](AsyncStepContext&) { return StartOutcome::wait(); }))
      .step(Step("Notify", [](StepContext&) { return StepOutcome::finish(); }))
      .step(Step("Escalate", [](StepContext&) { return StepOutcome::finish(); }))
      .step(Step("Repair", [](StepContext&) { return StepOutcome::finish(); }));
  return p;
}

Process plainProcess() {
  Process p("Plain", 1);
  p.field("Note", Type::String);
  p.step(AsyncStep("Wait", [](AsyncStepContext&) { return StartOutcome::wait(); }));
  return p;
}

// Defined only by the engine that populates the store: the fuzzed engines check
// events of its instances against its stored declaration (no fields) and
// record a completion for a host that defines it (DESIGN.md section 8).
Process goneProcess() {
  Process p("Gone", 1);
  p.step(AsyncStep("Wait", [](AsyncStepContext&) { return StartOutcome::wait(); }));
  return p;
}

const std::vector<Declared>* declaredBy(const std::string& process) {
  if (process == "Order") return &kOrderFields;
  if (process == "Plain") return &kPlainFields;
  static const std::vector<Declared> kGoneFields;  // declares none
  if (process == "Gone") return &kGoneFields;      // stored; not defined in the fuzzed engines
  return nullptr;
}

// Whether the engine must accept `fields` for `process`, and what it stores.
bool fieldsValid(const std::vector<Declared>& declared, const Fields& fields, Fields* normalized) {
  for (const auto& [name, value] : fields) {
    const Declared* found = nullptr;
    for (const auto& d : declared) {
      if (d.name == name) found = &d;
    }
    if (found == nullptr) return false;
    if (value.type() == Type::Double && std::isnan(*value.as<double>())) return false;
    const bool widened = found->type == Type::Double && value.type() == Type::Int64;
    if (!value.isNull() && value.type() != found->type && !widened) return false;
    if (normalized != nullptr) {
      normalized->set(name, widened ? Value(*value.as<double>()) : value);
    }
  }
  return true;
}

// --- a world: a store, the engines on it, and what it holds ------------------------

struct InstanceState {
  InstanceSnapshot snapshot;
  std::map<std::int64_t, StepRunRecord> runs;
};
using State = std::map<InstanceId, InstanceState>;

struct World {
  const char* label = "";
  std::shared_ptr<Store> store;
  std::shared_ptr<ManualClock> clock;
  std::unique_ptr<Engine> secret;  // SerialForm::WithSecret
  std::unique_ptr<Engine> bare;    // SerialForm::Bare
  InstanceId lastId = 0;
  State state;  // as of the last operation

  Engine& engine(bool useBare) { return useBare ? *bare : *secret; }
};

EngineOptions optionsFor(const World& world, SerialForm form, std::uint64_t seed) {
  EngineOptions options;
  options.serials = form;
  options.clock = world.clock;
  options.random = std::make_shared<SeededRandom>(seed);
  options.timerThread = false;
  options.recoverOnDefine = false;  // keep the "crashed" runs as they are
  return options;
}

State snapshotOf(World& world) {
  State state;
  for (InstanceId id = 1; id <= world.lastId; ++id) {
    auto snapshot = world.store->loadInstance(id);
    if (!snapshot) broken("the store loads every instance", snapshot.error().toString());
    InstanceState entry;
    for (std::int64_t run = 1; run <= snapshot->record.lastRun; ++run) {
      auto record = world.store->loadStepRun(id, run);
      if (!record) broken("the store loads every step run", record.error().toString());
      entry.runs.emplace(run, std::move(*record));
    }
    entry.snapshot = std::move(*snapshot);
    state.emplace(id, std::move(entry));
  }
  return state;
}

bool sameInstance(const InstanceState& a, const InstanceState& b) {
  return a.snapshot.record == b.snapshot.record &&
         identical(a.snapshot.fields, b.snapshot.fields) && a.runs == b.runs;
}

// The first instance whose state differs, or 0.
InstanceId firstDifference(const State& a, const State& b) {
  for (const auto& [id, entry] : a) {
    auto other = b.find(id);
    if (other == b.end() || !sameInstance(entry, other->second)) return id;
  }
  for (const auto& [id, entry] : b) {
    if (a.count(id) == 0) return id;
  }
  return 0;
}

void must(const Result<void>& done, const char* step) {
  if (!done) broken(std::string("populating: ") + step, done.error().toString());
}

InstanceId mustStart(World& world, Engine& engine, const char* process, Fields fields = {}) {
  auto id = engine.start(process, std::move(fields));
  if (!id) broken("populating: start", id.error().toString());
  world.lastId = *id;
  return *id;
}

std::string serialOf(World& world, InstanceId id) {
  auto info = world.secret->instance(id);
  if (!info) broken("populating: instance()", info.error().toString());
  return info->serial;
}

// An instance left mid-handler by a crash: its first run is committed with its
// serial, status `status`, and the handler has not returned.
void addCrashed(World& world, StepRunStatus status, bool withSecret) {
  ChangeSet set;
  set.instance.process = "Order";
  set.instance.processVersion = 1;
  set.instance.status = InstanceStatus::Running;
  set.instance.currentRun = 1;
  set.instance.lastRun = 1;
  set.instance.createdAt = world.clock->now();
  set.instance.updatedAt = world.clock->now();
  set.fields.set("Status", "Pending");
  StepRunRecord run;
  run.run = 1;
  run.step = "Submit";
  run.kind = StepKind::Async;
  run.status = status;
  run.attempt = status == StepRunStatus::Ready ? 0 : 1;
  if (withSecret) {
    SeededRandom source(world.lastId + 2000);
    auto secret = detail::newSecret(source);
    run.secret = *secret;
  }
  run.createdAt = world.clock->now();
  set.stepRuns.push_back(std::move(run));
  std::vector<ChangeSet> batch;
  batch.push_back(std::move(set));
  auto applied = world.store->apply(std::move(batch));
  if (!applied || applied->front().status != ApplyStatus::Applied) {
    broken("populating: a crashed instance", applied ? "conflict" : applied.error().toString());
  }
  world.lastId = applied->front().instance;
}

void build(World& world, bool sqlite) {
  world.secret.reset();
  world.bare.reset();
  if (sqlite) {
    auto opened = SqliteStore::open(":memory:");
    if (!opened) broken("SqliteStore opens :memory:", opened.error().toString());
    world.store = std::shared_ptr<Store>(std::move(*opened));
  } else {
    world.store = std::make_shared<MemoryStore>();
  }
  world.clock = std::make_shared<ManualClock>();
  world.lastId = 0;
  world.secret =
      std::make_unique<Engine>(world.store, optionsFor(world, SerialForm::WithSecret, 1));
  world.bare = std::make_unique<Engine>(world.store, optionsFor(world, SerialForm::Bare, 2));
  for (Engine* engine : {world.secret.get(), world.bare.get()}) {
    must(engine->define(orderProcess()), "define Order");
    must(engine->define(plainProcess()), "define Plain");
  }
  Engine setup(world.store, optionsFor(world, SerialForm::WithSecret, 3));
  must(setup.define(goneProcess()), "define Gone");

  Engine& engine = *world.secret;
  // 1: timed out at Submit, escalated, completed.
  mustStart(world, engine, "Order", {{"OrderId", "late"}});
  world.clock->advance(hours(2));
  auto fired = engine.runDueTimers();
  if (!fired || *fired != 1) broken("populating: one timer fires");
  // 2-7: waiting at Submit.
  for (int i = 0; i < 6; ++i) {
    mustStart(world, engine, "Order", {{"OrderId", "A-" + std::to_string(i)}, {"Amount", 12.5}});
  }
  // 8: Submit completed, waiting at Approve.
  InstanceId id = mustStart(world, engine, "Order");
  must(engine.completeServerEvent(serialOf(world, id), {{"Status", "Approved"}}), "complete 8");
  // 9: completed: Submit, Approve, Notify (a sync run).
  id = mustStart(world, engine, "Order");
  must(engine.completeServerEvent(serialOf(world, id)), "complete 9 Submit");
  must(engine.completeServerEvent(serialOf(world, id), {{"Flag", true}}), "complete 9 Approve");
  // 10: cancelled while waiting.
  id = mustStart(world, engine, "Order");
  must(engine.cancel(id, "withdrawn"), "cancel 10");
  // 11: failed from outside, repaired through the error line, completed.
  id = mustStart(world, engine, "Order");
  must(engine.failServerEvent(serialOf(world, id), "limit", {{"Status", "Rejected"}}), "fail 11");
  // 12: waiting at Submit with a bare serial.
  mustStart(world, *world.bare, "Order", {{"OrderId", "bare"}});
  // 13: failed with no error line; 14: waiting.
  id = mustStart(world, engine, "Plain");
  must(engine.failServerEvent(serialOf(world, id), "broken"), "fail 13");
  mustStart(world, engine, "Plain", {{"Note", "waits"}});
  // 15: waiting, but its process version is not defined in the fuzzed engines.
  mustStart(world, setup, "Gone");
  // 16, 17: a crash left Submit Starting (secret) and Ready (bare).
  addCrashed(world, StepRunStatus::Starting, true);
  addCrashed(world, StepRunStatus::Ready, false);
  world.state = snapshotOf(world);
}

World gWorlds[2];
std::size_t gInputs = 0;

// Runs a server event can still act on (waiting, or before their handler returned).
std::size_t openRuns(const State& state) {
  std::size_t open = 0;
  for (const auto& [id, entry] : state) {
    for (const auto& [number, run] : entry.runs) {
      if (run.kind == StepKind::Async && !isTerminal(run.status)) ++open;
    }
  }
  return open;
}
// ASYNCFLOW_FUZZ_VERBOSE=1 prints each operation and its answer (to read a seed
// or a crash input: run the target on that one file).
const bool gVerbose = std::getenv("ASYNCFLOW_FUZZ_VERBOSE") != nullptr;

// --- operations ----------------------------------------------------------------------

enum class Event { Complete, Fail, Heartbeat };

const char* nameOf(Event event) {
  switch (event) {
    case Event::Complete: return "completeServerEvent";
    case Event::Fail: return "failServerEvent";
    case Event::Heartbeat: return "heartbeat";
  }
  return "?";
}

// A run that exists in `state`, picked by two bytes; null when there is none.
const StepRunRecord* pickRun(const State& state, std::uint8_t instanceByte, std::uint8_t runByte) {
  if (state.empty()) return nullptr;
  auto it = state.begin();
  std::advance(it, instanceByte % state.size());
  const auto& runs = it->second.runs;
  if (runs.empty()) return nullptr;
  auto run = runs.begin();
  std::advance(run, runByte % runs.size());
  return &run->second;
}

std::string serialOf(const StepRunRecord& run) {
  return detail::formatSerial(run.instance, run.run, run.secret);
}

constexpr char kBase64Url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// The serial of a server event, from the input (see the header comment).
std::string pickSerial(ByteReader& in, int source, const State& state) {
  switch (source) {
    case 0: return in.text();
    case 1: {
      const std::uint8_t instanceByte = in.byte();
      const StepRunRecord* run = pickRun(state, instanceByte, in.byte());
      return run != nullptr ? serialOf(*run) : std::string("1_1");
    }
    case 2: {
      const std::uint8_t instanceByte = in.byte();
      const StepRunRecord* run = pickRun(state, instanceByte, in.byte());
      if (run == nullptr) return "1_1";
      std::string secret = run->secret;
      InstanceId instance = run->instance;
      std::int64_t number = run->run;
      const std::uint8_t how = in.byte();
      const std::uint8_t arg = in.byte();
      switch (how % 10) {
        case 0:  // one character of the secret changed
          if (secret.empty()) secret = std::string(detail::kSecretChars, 'A');
          {
            char& c = secret[arg % secret.size()];
            const char* at = std::strchr(kBase64Url, c);
            c = kBase64Url[((at != nullptr ? at - kBase64Url : 0) + 1 + arg / 32) % 64];
          }
          break;
        case 1: ++instance; break;
        case 2: ++number; break;
        case 3: secret.clear(); break;
        case 4: {  // another run's secret
          const StepRunRecord* other = pickRun(state, arg, arg / 16);
          if (other != nullptr) secret = other->secret;
          break;
        }
        case 5: return serialOf(*run).substr(0, arg % (serialOf(*run).size() + 1));
        case 6: return serialOf(*run) + static_cast<char>(arg);
        case 7: secret = std::string(detail::kSecretChars, kBase64Url[arg % 64]); break;
        case 8: return "0" + serialOf(*run);
        default:  // the last character changed (or not), maybe to '-' or '_'
          if (!secret.empty()) secret.back() = kBase64Url[arg % 64];
          break;
      }
      return detail::formatSerial(instance, number, secret);
    }
    default: {
      const InstanceId instance = in.byte();
      const std::int64_t number = in.byte();
      const std::uint8_t how = in.byte();
      std::string secret;
      if (how % 3 == 1) secret = in.bytes(detail::kSecretChars);
      if (how % 3 == 2) {
        const StepRunRecord* other = pickRun(state, how, in.byte());
        if (other != nullptr) secret = other->secret;
      }
      return std::to_string(instance) + "_" + std::to_string(number) +
             (secret.empty() ? "" : "_" + secret);
    }
  }
}

// The codes a server event may answer given the state before it; empty when it
// must succeed.
std::set<Errc> obstacles(const State& before, bool bareEngine, Event event,
                         const std::string& serial, const Fields& fields) {
  std::set<Errc> codes;
  auto parsed = detail::parseSerial(serial);
  if (!parsed) return {Errc::InvalidSerial};
  if (parsed->secret.empty() && !bareEngine) codes.insert(Errc::InvalidSerial);
  auto instance = before.find(parsed->instance);
  if (instance == before.end()) return codes.insert(Errc::NotFound), codes;
  auto found = instance->second.runs.find(parsed->run);
  if (found == instance->second.runs.end()) return codes.insert(Errc::NotFound), codes;
  const StepRunRecord& run = found->second;
  const InstanceRecord& record = instance->second.snapshot.record;
  if (run.secret != parsed->secret) codes.insert(Errc::InvalidSerial);
  if (run.kind != StepKind::Async) codes.insert(Errc::NotFound);
  if (run.status == StepRunStatus::Cancelled || record.status == InstanceStatus::Cancelled) {
    codes.insert(Errc::Cancelled);
  }
  if (run.status == StepRunStatus::Completed) codes.insert(Errc::AlreadyCompleted);
  if (run.status == StepRunStatus::Failed) codes.insert(Errc::StepFailed);
  if (run.status == StepRunStatus::TimedOut) codes.insert(Errc::TimedOut);
  // A completion recorded early, or on a Waiting run by a host without the
  // version, answers a second one AlreadyCompleted.
  if (!isTerminal(run.status) && run.hasCompletion && event != Event::Heartbeat) {
    codes.insert(Errc::AlreadyCompleted);
  }
  const auto* declared = declaredBy(record.process);
  if (declared == nullptr) {
    codes.insert(Errc::ProcessNotDefined);
  } else if (event != Event::Heartbeat && !fieldsValid(*declared, fields, nullptr)) {
    codes.insert(Errc::InvalidField);
  }
  return codes;
}

std::string describe(const World& world, Event event, bool bareEngine, const std::string& serial,
                     const Fields& fields) {
  return std::string(world.label) + ": " + nameOf(event) + (bareEngine ? " (bare engine)" : "") +
         " serial '" + shown(serial) + "' fields " + shown(fields);
}

// What a successful server event may have done to the instance it names.
void checkSuccess(const World& world, const State& before, const State& after, Event event,
                  const std::string& serial, const Fields& fields, const std::string& reason,
                  const std::string& context) {
  auto parsed = detail::parseSerial(serial);
  const InstanceId id = parsed->instance;
  const InstanceState& was = before.at(id);
  const InstanceState& now = after.at(id);
  const StepRunRecord& runBefore = was.runs.at(parsed->run);
  if (runBefore.secret != parsed->secret) {
    broken("a wrong secret never completes anything", context);
  }
  for (const auto& [other, entry] : before) {
    if (other != id && !sameInstance(entry, after.at(other))) {
      broken("a success changes only the instance its serial names",
             context + "; instance " + std::to_string(other) + " changed");
    }
  }
  if (now.snapshot.record.version <= was.snapshot.record.version) {
    broken("a success is a durable change", context);
  }
  for (const auto& [number, run] : was.runs) {
    if (number < parsed->run && !(now.runs.at(number) == run)) {
      broken("a success changes no earlier run", context);
    }
  }
  const StepRunRecord& runAfter = now.runs.at(parsed->run);
  // The fuzzed engines do not define "Gone": its waiting run is only recorded.
  const bool definedHere = was.snapshot.record.process != "Gone";
  const bool waited = runBefore.status == StepRunStatus::Waiting && definedHere;
  Fields normalized;
  if (event != Event::Heartbeat) {
    fieldsValid(*declaredBy(was.snapshot.record.process), fields, &normalized);
  }
  switch (event) {
    case Event::Complete:
    case Event::Fail: {
      const StepRunStatus wanted =
          event == Event::Complete ? StepRunStatus::Completed : StepRunStatus::Failed;
      if (waited) {
        if (runAfter.status != wanted) broken("the waiting run is closed", context);
        Fields expected = was.snapshot.fields;
        expected.merge(normalized);
        if (!identical(now.snapshot.fields, expected)) {
          broken("the event's fields are merged", context + "; expected " + shown(expected) +
                                                      ", holds " + shown(now.snapshot.fields));
        }
      } else {
        if (runAfter.status != runBefore.status || !runAfter.hasCompletion ||
            !identical(runAfter.completion, normalized) ||
            !identical(now.snapshot.fields, was.snapshot.fields)) {
          broken("an early event is recorded, not applied", context);
        }
        if (!definedHere && (now.snapshot.record.status != InstanceStatus::Running ||
                             !now.snapshot.record.leaseOwner.empty() || runAfter.deadline)) {
          broken("a wait finished on a host without the version is offered, its deadline gone",
                 context);
        }
        if (event == Event::Fail && runAfter.error != reason &&
            !(reason.empty() && !runAfter.error.empty())) {
          broken("an early failure keeps its reason", context);
        }
      }
      break;
    }
    case Event::Heartbeat:
      if (runAfter.status != runBefore.status ||
          !identical(now.snapshot.fields, was.snapshot.fields)) {
        broken("a heartbeat changes no status and no field", context);
      }
      if (waited && runAfter.deadline != runBefore.deadline && !runAfter.deadline) {
        broken("a heartbeat keeps a deadline", context);
      }
      break;
  }
  (void)world;
}

// The answer of one operation in each world, to compare them.
struct Answer {
  bool ok = true;
  Errc code = Errc::Internal;
  std::size_t count = 0;  // timers fired
};

// An operation's fields: a length byte, then that many bytes in the field encoding.
Fields fieldsFrom(ByteReader& in) {
  const std::string encoded = in.text();
  ByteReader fields(reinterpret_cast<const std::uint8_t*>(encoded.data()), encoded.size());
  return fuzz::decodeFields(fields, kFieldNames, 8);
}

Answer answerOf(const Result<void>& done) {
  return done ? Answer{} : Answer{false, done.error().code};
}

// An answer never tells a stored secret the caller did not send: it may repeat
// what the input (or an earlier failure's reason) holds, nothing else.
void requireNoSecretLeaks(const State& before, const Error& error, const std::string& serial,
                          const Fields& fields, const std::string& reason,
                          const std::string& context) {
  auto given = [&](const std::string& secret) {
    if (serial.find(secret) != std::string::npos || reason.find(secret) != std::string::npos) {
      return true;
    }
    for (const auto& [name, value] : fields) {
      if (name.find(secret) != std::string::npos) return true;
    }
    for (const auto& [id, entry] : before) {
      if (entry.snapshot.record.error.find(secret) != std::string::npos) return true;
      for (const auto& [number, run] : entry.runs) {
        if (run.error.find(secret) != std::string::npos) return true;
      }
    }
    return false;
  };
  for (const auto& [id, entry] : before) {
    for (const auto& [number, run] : entry.runs) {
      if (!run.secret.empty() && error.message.find(run.secret) != std::string::npos &&
          !given(run.secret)) {
        broken("an answer never tells a secret the caller did not send",
               context + "; " + shown(error.message, 300));
      }
    }
  }
}

Answer serverEvent(World& world, Event event, bool bareEngine, const std::string& serial,
                   const Fields& fields, const std::string& reason) {
  const State before = world.state;
  Engine& engine = world.engine(bareEngine);
  Result<void> done;
  switch (event) {
    case Event::Complete: done = engine.completeServerEvent(serial, fields); break;
    case Event::Fail: done = engine.failServerEvent(serial, reason, fields); break;
    case Event::Heartbeat: done = engine.heartbeat(serial); break;
  }
  world.state = snapshotOf(world);
  const std::string context = describe(world, event, bareEngine, serial, fields);
  const std::set<Errc> allowed = obstacles(before, bareEngine, event, serial, fields);
  if (done) {
    if (!allowed.empty()) {
      std::string codes;
      for (Errc code : allowed) codes += std::string(errcName(code)) + " ";
      broken("success only when nothing stands in the way", context + "; expected one of " + codes);
    }
    checkSuccess(world, before, world.state, event, serial, fields, reason, context);
  } else {
    requireNoSecretLeaks(before, done.error(), serial, fields, reason, context);
    if (allowed.count(done.error().code) == 0) {
      std::string codes;
      for (Errc code : allowed) codes += std::string(errcName(code)) + " ";
      broken("the answer is one the state allows",
             context + "; answered " + done.error().toString() +
                 "; allowed: " + (codes.empty() ? "success" : codes));
    }
    if (const InstanceId changed = firstDifference(before, world.state); changed != 0) {
      broken("an error changes nothing",
             context + "; " + done.error().toString() + "; instance " + std::to_string(changed));
    }
  }
  return answerOf(done);
}

Answer fireTimers(World& world, minutes by) {
  world.clock->advance(by);
  auto fired = world.secret->runDueTimers();
  if (!fired)
    broken("runDueTimers succeeds", std::string(world.label) + ": " + fired.error().toString());
  world.state = snapshotOf(world);
  return Answer{true, Errc::Internal, *fired};
}

Answer startOne(World& world, bool bareEngine, bool plain, const Fields& fields) {
  const State before = world.state;
  const char* process = plain ? "Plain" : "Order";
  auto id = world.engine(bareEngine).start(process, fields);
  const bool valid = fieldsValid(plain ? kPlainFields : kOrderFields, fields, nullptr);
  const std::string context = std::string(world.label) + ": start " + process + " " + shown(fields);
  if (id.has_value() != valid) {
    broken("start accepts exactly the valid fields",
           context + (id ? "" : "; " + id.error().toString()));
  }
  if (!id) {
    if (id.error().code != Errc::InvalidField) broken("bad fields are InvalidField", context);
    if (world.store->loadInstance(world.lastId + 1)) broken("a refused start writes nothing");
    return Answer{false, id.error().code};
  }
  if (*id != world.lastId + 1) broken("ids count up", context);
  world.lastId = *id;
  world.state = snapshotOf(world);
  if (firstDifference(before, world.state) != *id) broken("a start changes only its instance");
  return Answer{};
}

Answer cancelOne(World& world, InstanceId id) {
  const State before = world.state;
  auto done = world.secret->cancel(id, "fuzz");
  world.state = snapshotOf(world);
  const InstanceId changed = firstDifference(before, world.state);
  const std::string context = std::string(world.label) + ": cancel " + std::to_string(id);
  if (done) {
    if (changed != id) broken("a cancel changes only its instance", context);
  } else {
    const Errc code = done.error().code;
    if (code != Errc::NotFound && code != Errc::AlreadyCompleted && code != Errc::StepFailed &&
        code != Errc::Cancelled) {
      broken("cancel answers a documented code", context + ": " + done.error().toString());
    }
    if (changed != 0) broken("a refused cancel changes nothing", context);
  }
  return answerOf(done);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Rebuilding costs about as much as 4 inputs: do it every 64 inputs, as soon
  // as fewer than 4 runs are open (a timer op times most of them out), and
  // before snapshots of many instances slow every operation down.
  if (gInputs++ % 64 == 0 || openRuns(gWorlds[0].state) < 4 || gWorlds[0].lastId > 48) {
    gWorlds[0].label = "MemoryStore";
    gWorlds[1].label = "SqliteStore";
    build(gWorlds[0], false);
    build(gWorlds[1], true);
  }
  ByteReader in(data, size);
  for (int op = 0; op < 32 && !in.empty(); ++op) {
    const std::uint8_t code = in.byte();
    const bool bareEngine = (code >> 3) & 1;
    const int source = (code >> 4) & 3;
    Answer answers[2];
    std::string what;
    switch (code % 8) {
      case 0:
      case 1:
      case 2:
      case 3:
      case 4: {
        const Event event = code % 8 == 3   ? Event::Fail
                            : code % 8 == 4 ? Event::Heartbeat
                                            : Event::Complete;
        const std::string serial = pickSerial(in, source, gWorlds[0].state);
        const std::string reason = event == Event::Fail ? in.text() : std::string();
        Fields fields;
        if (event != Event::Heartbeat) fields = fieldsFrom(in);
        what = describe(gWorlds[0], event, bareEngine, serial, fields);
        for (int w = 0; w < 2; ++w) {
          answers[w] = serverEvent(gWorlds[w], event, bareEngine, serial, fields, reason);
        }
        break;
      }
      case 5: {
        const minutes by(in.byte());
        what = "timers after " + std::to_string(by.count()) + " min";
        for (int w = 0; w < 2; ++w) answers[w] = fireTimers(gWorlds[w], by);
        break;
      }
      case 6: {
        const Fields fields = fieldsFrom(in);
        what = "start " + shown(fields);
        for (int w = 0; w < 2; ++w)
          answers[w] = startOne(gWorlds[w], bareEngine, source & 1, fields);
        break;
      }
      default: {
        const InstanceId id = in.byte() % (gWorlds[0].lastId + 2);
        what = "cancel " + std::to_string(id);
        for (int w = 0; w < 2; ++w) answers[w] = cancelOne(gWorlds[w], id);
        break;
      }
    }
    if (gVerbose) {
      std::fprintf(stderr, "%s -> %s\n", what.c_str(),
                   answers[0].ok ? "ok" : std::string(errcName(answers[0].code)).c_str());
    }
    if (answers[0].ok != answers[1].ok || answers[0].count != answers[1].count ||
        (!answers[0].ok && answers[0].code != answers[1].code)) {
      broken("MemoryStore and SqliteStore answer alike", what);
    }
    if (const InstanceId differs = firstDifference(gWorlds[0].state, gWorlds[1].state)) {
      broken("MemoryStore and SqliteStore hold the same state",
             what + "; instance " + std::to_string(differs));
    }
  }
  return 0;
}

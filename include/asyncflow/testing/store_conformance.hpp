// asyncflow: the store conformance suite, store.hpp's contract as Catch2 checks.
//
// A Store implementation conforms when this passes in one of its own tests:
//
//   #include <asyncflow/testing/store_conformance.hpp>
//
//   TEST_CASE("MyStore conforms to the asyncflow Store contract") {
//     asyncflow::testing::checkStoreConformance([] { return std::make_shared<MyStore>(); });
//   }
//
// Each case is a Catch2 SECTION that asks the factory for a fresh, empty store,
// so a failure names the case and the cases do not see each other's data. The
// suite is header-only and needs only asyncflow's public headers and Catch2 (v2
// or v3); it defines no Catch::StringMaker, so it mixes with a project's own
// printers. No case sleeps; four cases use 4 threads.
//
// Where store.hpp says "at most limit", the suite asks for full pages while more
// rows match: the engine takes a short page for the last one.
#pragma once

#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#elif __has_include(<catch2/catch.hpp>)
#include <catch2/catch.hpp>
#else
#error "asyncflow/testing/store_conformance.hpp needs Catch2 v2 or v3"
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <asyncflow/error.hpp>
#include <asyncflow/fields.hpp>
#include <asyncflow/store.hpp>
#include <asyncflow/value.hpp>

namespace asyncflow::testing {

// Makes a new, empty store each time it is called. The suite calls it once per
// case and releases the store at the end of the case.
using StoreFactory = std::function<std::shared_ptr<Store>()>;

// Runs every conformance case against stores made by `makeStore`, each case as a
// SECTION of the calling TEST_CASE.
inline void checkStoreConformance(const StoreFactory& makeStore);

namespace detail {

// --- exact descriptions: compared as strings, so a failure shows both sides ------------

// Strings longer than this are described by their head, length and a hash.
constexpr std::size_t kDescribedBytes = 120;

inline std::string describeBytes(std::string_view bytes) {
  std::string out = "\"";
  const std::size_t shown = bytes.size() > kDescribedBytes ? kDescribedBytes / 2 : bytes.size();
  for (std::size_t i = 0; i < shown; ++i) {
    const auto byte = static_cast<unsigned char>(bytes[i]);
    if (byte == '"' || byte == '\\') {
      out += '\\';
      out += static_cast<char>(byte);
    } else if (byte >= 0x20 && byte < 0x7f) {
      out += static_cast<char>(byte);
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", byte);
      out += escaped;
    }
  }
  out += '"';
  if (shown < bytes.size()) {
    std::uint64_t hash = 14695981039346656037ull;  // FNV-1a
    for (char c : bytes) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    char tail[80];
    std::snprintf(tail, sizeof tail, "... (%zu bytes, fnv1a %016llx)", bytes.size(),
                  static_cast<unsigned long long>(hash));
    out += tail;
  }
  return out;
}

// Seconds since the epoch with all nine decimals, so a lost microsecond shows.
inline std::string describe(Timestamp t) {
  const long long ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  const unsigned long long magnitude =
      ns < 0 ? 0ull - static_cast<unsigned long long>(ns) : static_cast<unsigned long long>(ns);
  char out[48];
  std::snprintf(out, sizeof out, "%s%llu.%09llus", ns < 0 ? "-" : "", magnitude / 1'000'000'000ull,
                magnitude % 1'000'000'000ull);
  return out;
}

inline std::string describe(const std::optional<Timestamp>& t) {
  return t ? describe(*t) : std::string("none");
}

// The type and the exact value: a double shows its bits in hex (so -0.0 differs
// from 0.0), a string its bytes.
inline std::string describe(const Value& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, std::monostate>) {
          return "null";
        } else if constexpr (std::is_same_v<V, bool>) {
          return v ? "bool true" : "bool false";
        } else if constexpr (std::is_same_v<V, std::int64_t>) {
          return "int64 " + std::to_string(v);
        } else if constexpr (std::is_same_v<V, double>) {
          char out[80];
          std::snprintf(out, sizeof out, "double %.17g (%a)", v, v);
          return out;
        } else {
          return "string " + describeBytes(v);
        }
      },
      value.variant());
}

inline std::string describe(const Fields& fields) {
  std::string out = "{";
  for (const auto& [name, value] : fields) {
    if (out.size() > 1) out += ", ";
    out += describeBytes(name) + ": " + describe(value);
  }
  return out + "}";
}

inline std::string describe(InstanceStatus status) { return std::string(statusName(status)); }
inline std::string describe(StepRunStatus status) { return std::string(statusName(status)); }
inline std::string describe(StepKind kind) { return kind == StepKind::Sync ? "Sync" : "Async"; }
inline std::string describe(ApplyStatus status) {
  switch (status) {
    case ApplyStatus::Applied: return "Applied";
    case ApplyStatus::Conflict: return "Conflict";
    case ApplyStatus::KeyTaken: return "KeyTaken";
  }
  return "ApplyStatus " + std::to_string(static_cast<int>(status));
}

inline std::string describe(const InstanceRecord& r) {
  return "{id " + std::to_string(r.id) + ", process " + describeBytes(r.process) +
         ", processVersion " + std::to_string(r.processVersion) + ", status " + describe(r.status) +
         ", version " + std::to_string(r.version) + ", currentRun " + std::to_string(r.currentRun) +
         ", lastRun " + std::to_string(r.lastRun) + ", error " + describeBytes(r.error) +
         ", createdAt " + describe(r.createdAt) + ", updatedAt " + describe(r.updatedAt) +
         ", leaseOwner " + describeBytes(r.leaseOwner) + ", leaseExpiry " +
         describe(r.leaseExpiry) + "}";
}

inline std::string describe(const StepRunRecord& r) {
  return "{" + std::to_string(r.instance) + "_" + std::to_string(r.run) + ", step " +
         describeBytes(r.step) + ", kind " + describe(r.kind) + ", status " + describe(r.status) +
         ", attempt " + std::to_string(r.attempt) + ", secret " + describeBytes(r.secret) +
         ", hasCompletion " + (r.hasCompletion ? "true" : "false") + ", completion " +
         describe(r.completion) + ", error " + describeBytes(r.error) + ", createdAt " +
         describe(r.createdAt) + ", waitingSince " + describe(r.waitingSince) + ", finishedAt " +
         describe(r.finishedAt) + ", deadline " + describe(r.deadline) + ", correlationKey " +
         describeBytes(r.correlationKey) + ", branch " + std::to_string(r.branch) + "}";
}

inline std::string describe(HistoryKind kind) { return std::string(historyKindName(kind)); }

inline std::string describe(const HistoryEvent& e) {
  return "{instance " + std::to_string(e.instance) + ", at " + describe(e.at) + ", " +
         describe(e.kind) + ", run " + std::to_string(e.run) + ", step " + describeBytes(e.step) +
         ", detail " + describeBytes(e.detail) + "}";
}

// One event a line, so a failure shows where two histories part.
inline std::string describe(const std::vector<HistoryEvent>& events) {
  std::string out = "[";
  for (const HistoryEvent& event : events) out += "\n  " + describe(event);
  return out + "]";
}

inline std::string describe(const std::vector<ApplyResult>& results) {
  std::string out = "[";
  for (const ApplyResult& result : results) {
    if (out.size() > 1) out += ", ";
    out += describe(result.status) + " " + std::to_string(result.instance);
  }
  return out + "]";
}

inline std::string describe(const std::optional<StartKeyRecord>& claim) {
  if (!claim) return "none";
  return "{instance " + std::to_string(claim->instance) + ", processVersion " +
         std::to_string(claim->processVersion) + ", fingerprint " +
         std::to_string(claim->fingerprint) + "}";
}

inline std::string describe(const ExpiredLease& lease) {
  return "{instance " + std::to_string(lease.instance) + ", process " +
         describeBytes(lease.process) + ", processVersion " + std::to_string(lease.processVersion) +
         ", owner " + describeBytes(lease.owner) + ", expiry " + describe(lease.expiry) + "}";
}

// One lease a line, so a failure shows where two pages part.
inline std::string describe(const std::vector<ExpiredLease>& leases) {
  std::string out = "[";
  for (const ExpiredLease& lease : leases) out += "\n  " + describe(lease);
  return out + "]";
}

// "Approve Async heartbeat 30000000us"; a kind outside StepKind as "StepKind 42".
inline std::string describe(const StepDeclaration& step) {
  const int kind = static_cast<int>(step.kind);
  return describeBytes(step.name) + " " +
         (kind >= 0 && kind <= static_cast<int>(StepKind::Async)
              ? describe(step.kind)
              : "StepKind " + std::to_string(kind)) +
         (step.heartbeat ? " heartbeat " + std::to_string(step.heartbeat->count()) + "us"
                         : std::string(" no heartbeat"));
}

inline std::string describe(const ProcessDeclaration& declaration) {
  std::string out = "{process " + describeBytes(declaration.process) + ", version " +
                    std::to_string(declaration.version) + ", fields [";
  for (std::size_t i = 0; i < declaration.fields.size(); ++i) {
    const FieldDeclaration& field = declaration.fields[i];
    if (i > 0) out += ", ";
    const int type = static_cast<int>(field.type);
    out += describeBytes(field.name) + " " +
           (type >= 0 && type <= static_cast<int>(Type::String) ? std::string(typeName(field.type))
                                                                : "Type " + std::to_string(type));
  }
  out += "], steps [";
  for (std::size_t i = 0; i < declaration.steps.size(); ++i) {
    if (i > 0) out += ", ";
    out += describe(declaration.steps[i]);
  }
  return out + "]}";
}

inline std::string describe(const std::optional<ProcessDeclaration>& declaration) {
  return declaration ? describe(*declaration) : std::string("none");
}

// "3_1" for run 1 of instance 3.
inline std::string keyOf(InstanceId instance, std::int64_t run) {
  return std::to_string(instance) + "_" + std::to_string(run);
}

// The keys of the rows, in order: "[1_2, 1_3, 4_1]".
inline std::string describeKeys(const std::vector<WaitingRow>& rows) {
  std::string out = "[";
  for (const WaitingRow& row : rows) {
    if (out.size() > 1) out += ", ";
    out += keyOf(row.run.instance, row.run.run);
  }
  return out + "]";
}

inline std::string describeKeys(const std::vector<StepRunKey>& keys) {
  std::string out = "[";
  for (const StepRunKey& key : keys) {
    if (out.size() > 1) out += ", ";
    out += keyOf(key.instance, key.run);
  }
  return out + "]";
}

inline std::string describeKeys(const std::vector<std::string>& keys) {
  std::string out = "[";
  for (const std::string& key : keys) {
    if (out.size() > 1) out += ", ";
    out += key;
  }
  return out + "]";
}

inline std::string describe(const std::vector<InstanceId>& ids) {
  std::string out = "[";
  for (InstanceId id : ids) {
    if (out.size() > 1) out += ", ";
    out += std::to_string(id);
  }
  return out + "]";
}

// Checks that `actual` is exactly `expected`: their descriptions first (readable,
// and stricter than == for -0.0), then operator== for any member the
// description might not show.
template <class T>
void checkSame(const T& actual, const T& expected) {
  const std::string seen = describe(actual);
  const std::string wanted = describe(expected);
  CHECK(seen == wanted);
  if (seen == wanted) CHECK(actual == expected);
}

// The field's description, or "absent".
inline std::string describeField(const Fields& fields, std::string_view name) {
  const Value* found = fields.find(name);
  return found ? describe(*found) : std::string("absent");
}

// Field by field, so a failure names the field.
inline void checkSameFields(const Fields& actual, const Fields& expected) {
  for (const auto& [name, value] : expected) {
    INFO("field " << describeBytes(name));
    CHECK(describeField(actual, name) == describe(value));
    if (describeField(actual, name) == describe(value)) CHECK((*actual.find(name) == value));
  }
  for (const auto& [name, value] : actual) {
    INFO("field " << describeBytes(name) << " = " << describe(value));
    CHECK(expected.contains(name));
  }
}

inline void checkSame(const InstanceSnapshot& actual, const InstanceSnapshot& expected) {
  checkSame(actual.record, expected.record);
  checkSameFields(actual.fields, expected.fields);
}

// "ok" for a value, else the error code's name: `CHECK(codeOf(r) == "NotFound")`.
template <class T>
std::string codeOf(const Result<T>& result) {
  return result ? std::string("ok") : std::string(errcName(result.error().code));
}

// --- calls that must succeed -----------------------------------------------------------

template <class T>
T valueOf(Result<T> result, const char* call) {
  if (!result) FAIL(call << " failed: " << result.error().toString());
  return std::move(*result);
}

inline std::vector<ApplyResult> applyBatch(Store& store, std::vector<ChangeSet> batch) {
  const std::size_t size = batch.size();
  auto results = valueOf(store.apply(std::move(batch)), "apply");
  INFO("apply answered " << describe(results) << " for " << size << " change sets");
  REQUIRE(results.size() == size);
  return results;
}

inline ApplyResult applyOne(Store& store, ChangeSet set) {
  std::vector<ChangeSet> batch;
  batch.push_back(std::move(set));
  return applyBatch(store, std::move(batch)).front();
}

inline InstanceId create(Store& store, ChangeSet set) {
  const ApplyResult result = applyOne(store, std::move(set));
  REQUIRE(describe(result.status) == "Applied");
  REQUIRE(result.instance > 0);
  return result.instance;
}

inline InstanceSnapshot load(Store& store, InstanceId id) {
  return valueOf(store.loadInstance(id), "loadInstance");
}

inline StepRunRecord loadRun(Store& store, InstanceId instance, std::int64_t run) {
  return valueOf(store.loadStepRun(instance, run), "loadStepRun");
}

inline std::vector<WaitingRow> listWaiting(Store& store, const WaitingQuery& query) {
  return valueOf(store.listWaiting(query), "listWaiting");
}

inline std::vector<InstanceId> listRunning(Store& store, const RunningQuery& query) {
  return valueOf(store.listRunning(query), "listRunning");
}

inline std::optional<Timestamp> nextDeadline(Store& store, Timestamp after = Timestamp::min()) {
  return valueOf(store.nextDeadline(after), "nextDeadline");
}

inline std::vector<DueRun> listDuePage(Store& store, Timestamp now, std::size_t limit,
                                       std::optional<DueRun> after = std::nullopt) {
  DueQuery query;
  query.now = now;
  query.limit = limit;
  query.after = after;
  return valueOf(store.listDue(query), "listDue");
}

// The keys of the first page of due runs.
inline std::vector<StepRunKey> listDue(Store& store, Timestamp now, std::size_t limit) {
  std::vector<StepRunKey> keys;
  for (const DueRun& due : listDuePage(store, now, limit)) keys.push_back(due.key);
  return keys;
}

inline std::vector<StepRunKey> findByKey(Store& store, std::string process, std::string step,
                                         std::string key, std::size_t limit = 100) {
  KeyQuery query;
  query.process = std::move(process);
  query.step = std::move(step);
  query.key = std::move(key);
  query.limit = limit;
  return valueOf(store.findByKey(query), "findByKey");
}

inline std::vector<HistoryEvent> loadHistory(Store& store, InstanceId id) {
  return valueOf(store.loadHistory(id), "loadHistory");
}

inline std::optional<StartKeyRecord> findStartKey(Store& store, std::string_view process,
                                                  std::string_view key) {
  return valueOf(store.findStartKey(process, key), "findStartKey");
}

inline std::optional<Timestamp> nextLeaseExpiry(Store& store, Timestamp after = Timestamp::min(),
                                                std::string_view notOwnedBy = {}) {
  return valueOf(store.nextLeaseExpiry(after, notOwnedBy), "nextLeaseExpiry");
}

inline std::vector<ExpiredLease> listExpiredLeases(
    Store& store, Timestamp now, std::size_t limit = 256,
    std::optional<LeaseCursor> after = std::nullopt) {
  LeaseQuery query;
  query.now = now;
  query.after = after;
  query.limit = limit;
  return valueOf(store.listExpiredLeases(query), "listExpiredLeases");
}

inline ProcessDeclaration declare(Store& store, const ProcessDeclaration& declaration) {
  return valueOf(store.declare(declaration), "declare");
}

inline std::optional<ProcessDeclaration> loadDeclaration(Store& store, std::string_view process,
                                                         int version) {
  return valueOf(store.loadDeclaration(process, version), "loadDeclaration");
}

inline std::uint64_t changeMark(Store& store) { return valueOf(store.changeMark(), "changeMark"); }

// --- records to write ------------------------------------------------------------------

// A timestamp with microseconds, the precision stores keep.
inline Timestamp at(std::int64_t micros) {
  return Timestamp(std::chrono::seconds(1'700'000'000)) + std::chrono::microseconds(micros);
}

inline StepRunRecord stepRun(std::int64_t run, std::string step, StepRunStatus status) {
  StepRunRecord r;
  r.run = run;
  r.step = std::move(step);
  r.kind = StepKind::Async;
  r.status = status;
  r.attempt = 1;
  r.secret = "c2VjcmV0LXNlcmlhbA";
  r.createdAt = at(run * 1'000'003);
  if (status == StepRunStatus::Waiting) r.waitingSince = at(run * 1'000'003 + 17);
  if (isTerminal(status)) r.finishedAt = at(run * 1'000'003 + 29);
  return r;
}

// A change set creating a Running instance of `process` with one Starting run.
inline ChangeSet creation(std::string process = "Order", int processVersion = 1,
                          Fields fields = {{"OrderId", "A-1"}}) {
  ChangeSet set;
  set.instance.process = std::move(process);
  set.instance.processVersion = processVersion;
  set.instance.status = InstanceStatus::Running;
  set.instance.currentRun = 1;
  set.instance.lastRun = 1;
  set.instance.createdAt = at(1);
  set.instance.updatedAt = at(2);
  set.fields = std::move(fields);
  set.stepRuns.push_back(stepRun(1, "Submit", StepRunStatus::Starting));
  return set;
}

// A change set creating an instance with exactly `runs`.
inline ChangeSet creationWith(std::string process, int processVersion, InstanceStatus status,
                              std::vector<StepRunRecord> runs) {
  ChangeSet set = creation(std::move(process), processVersion);
  set.instance.status = status;
  set.instance.currentRun = runs.empty() ? 0 : runs.back().run;
  set.instance.lastRun = set.instance.currentRun;
  set.stepRuns = std::move(runs);
  return set;
}

// A change set creating an instance of `process` with `status` and the lease
// (owner, expiry): leased or expired with an owner, offered without one.
inline ChangeSet leasedCreation(std::string owner, std::optional<Timestamp> expiry,
                                InstanceStatus status = InstanceStatus::Running,
                                std::string process = "Order", int processVersion = 1) {
  ChangeSet set = creation(std::move(process), processVersion);
  set.instance.status = status;
  set.instance.leaseOwner = std::move(owner);
  set.instance.leaseExpiry = expiry;
  return set;
}

// A declaration of (process, version) with `fields` and `steps`, in the order given.
inline ProcessDeclaration processDeclaration(std::string process, int version,
                                             std::vector<FieldDeclaration> fields = {},
                                             std::vector<StepDeclaration> steps = {}) {
  ProcessDeclaration out;
  out.process = std::move(process);
  out.version = version;
  out.fields = std::move(fields);
  out.steps = std::move(steps);
  return out;
}

// A declared step whose heartbeat moves a deadline by `heartbeatMicros`; none by default.
inline StepDeclaration stepDeclaration(std::string name, StepKind kind,
                                       std::optional<std::int64_t> heartbeatMicros = std::nullopt) {
  StepDeclaration out;
  out.name = std::move(name);
  out.kind = kind;
  if (heartbeatMicros) out.heartbeat = std::chrono::microseconds(*heartbeatMicros);
  return out;
}

// A change set updating `current` (as loaded), guarded by its version.
inline ChangeSet updateOf(const InstanceSnapshot& current) {
  ChangeSet set;
  set.instance = current.record;
  set.expectedVersion = current.record.version;
  set.instance.updatedAt = current.record.updatedAt + std::chrono::microseconds(1'000'001);
  return set;
}

// What the store must hold after creating `set` as `id`.
inline InstanceRecord createdRecord(const ChangeSet& set, InstanceId id) {
  InstanceRecord record = set.instance;
  record.id = id;
  record.version = 1;
  return record;
}

// Lets `count` threads start together, so they contend from the first call.
class StartGate {
 public:
  explicit StartGate(int count) : waiting_(count) {}
  void arriveAndWait() {
    waiting_.fetch_sub(1);
    while (waiting_.load() > 0) std::this_thread::yield();
  }

 private:
  std::atomic<int> waiting_;
};

constexpr int kThreads = 4;
constexpr int kCallsPerThread = 100;

// --- the cases ---------------------------------------------------------------------------

inline void createAssignsIdsAndVersionOne(Store& store) {
  ChangeSet first = creation();
  first.expectedVersion = 41;   // ignored on create
  first.instance.version = 99;  // so is the header's version
  first.stepRuns.front().instance = 0;
  StepRunRecord second = stepRun(2, "Notify", StepRunStatus::Ready);
  second.instance = 777;  // whatever the caller wrote, the assigned id wins
  first.stepRuns.push_back(second);

  std::vector<InstanceId> ids;
  ids.push_back(create(store, first));
  ids.push_back(create(store, creation()));
  std::vector<ChangeSet> batch;
  batch.push_back(creation("Order", 1, {{"OrderId", "in a batch, first"}}));
  batch.push_back(creation("Order", 1, {{"OrderId", "in a batch, second"}}));
  for (const ApplyResult& result : applyBatch(store, std::move(batch))) {
    CHECK(describe(result.status) == "Applied");
    ids.push_back(result.instance);
  }

  INFO("ids assigned: " << describe(ids));
  CHECK(ids.front() == 1);
  for (std::size_t i = 1; i < ids.size(); ++i) CHECK(ids[i] > ids[i - 1]);
  for (InstanceId id : ids) {
    const InstanceSnapshot snapshot = load(store, id);
    CHECK(snapshot.record.id == id);
    CHECK(snapshot.record.version == 1);
  }
  checkSameFields(load(store, ids[2]).fields, Fields{{"OrderId", "in a batch, first"}});
  checkSameFields(load(store, ids[3]).fields, Fields{{"OrderId", "in a batch, second"}});

  StepRunRecord expectedFirst = first.stepRuns[0];
  expectedFirst.instance = ids[0];
  checkSame(loadRun(store, ids[0], 1), expectedFirst);
  StepRunRecord expectedSecond = second;
  expectedSecond.instance = ids[0];
  checkSame(loadRun(store, ids[0], 2), expectedSecond);
  CHECK(loadRun(store, ids[1], 1).instance == ids[1]);
}

inline void loadInstanceReturnsWhatWasWritten(Store& store) {
  ChangeSet set = creation("Order-Approval", 7,
                           {{"OrderId", "A-17"}, {"Amount", 12.5}, {"Urgent", true}, {"Items", 3}});
  set.instance.status = InstanceStatus::Waiting;
  set.instance.currentRun = 3;
  set.instance.lastRun = 5;
  set.instance.error = "it's \"late\"\nsecond line, caf\xc3\xa9";
  set.instance.createdAt = at(123'456);
  set.instance.updatedAt = at(987'654'321);
  const InstanceId id = create(store, set);
  checkSame(load(store, id), InstanceSnapshot{createdRecord(set, id), set.fields});

  SECTION("an instance without fields has none") {
    ChangeSet bare = creation("Order", 1, {});
    const InstanceId bareId = create(store, bare);
    checkSame(load(store, bareId), InstanceSnapshot{createdRecord(bare, bareId), Fields{}});
  }

  SECTION("every instance status") {
    for (InstanceStatus status :
         {InstanceStatus::Running, InstanceStatus::Waiting, InstanceStatus::Completed,
          InstanceStatus::Failed, InstanceStatus::Cancelled}) {
      ChangeSet other = creation();
      other.instance.status = status;
      const InstanceId otherId = create(store, other);
      checkSame(load(store, otherId).record, createdRecord(other, otherId));
    }
  }
}

inline void loadStepRunReturnsWhatWasWritten(Store& store) {
  StepRunRecord full;
  full.run = 1;
  full.step = "SubmitToErp";
  full.kind = StepKind::Async;
  full.status = StepRunStatus::Waiting;
  full.attempt = 3;
  full.secret = "YR5uXTMXPlKL6UWT2Bu-Zn_";
  full.hasCompletion = true;
  full.completion = Fields{{"Status", "Approved"}, {"Ticket", 1001}, {"Score", 0.25}};
  full.error = "ERP said: \"busy\"; retried\n\ttwice";
  full.createdAt = at(1);
  full.waitingSince = at(2'000'002);
  full.finishedAt = at(3'000'003);
  full.deadline = at(86'400'000'007);
  full.branch = 1;

  StepRunRecord bare;  // deadline unset, no completion, epoch times, no secret
  bare.run = 2;
  bare.step = "Validate";
  bare.kind = StepKind::Sync;
  bare.status = StepRunStatus::Ready;

  StepRunRecord applied = stepRun(3, "Notify", StepRunStatus::Completed);
  applied.hasCompletion = true;  // a completion whose fields are applied: none left
  applied.deadline = at(5);
  applied.branch = 9'007'199'254'740'993;  // 2^53 + 1: no double holds it

  ChangeSet set = creationWith("Order", 1, InstanceStatus::Waiting, {full, bare, applied});
  const InstanceId id = create(store, set);
  for (StepRunRecord expected : {full, bare, applied}) {
    expected.instance = id;
    INFO("run " << expected.run);
    checkSame(loadRun(store, id, expected.run), expected);
  }

  SECTION("every step run status and kind") {
    std::vector<StepRunRecord> runs;
    for (StepRunStatus status :
         {StepRunStatus::Ready, StepRunStatus::Starting, StepRunStatus::Waiting,
          StepRunStatus::Completed, StepRunStatus::Failed, StepRunStatus::TimedOut,
          StepRunStatus::Cancelled}) {
      for (StepKind kind : {StepKind::Sync, StepKind::Async}) {
        StepRunRecord run = stepRun(static_cast<std::int64_t>(runs.size()) + 1, "S", status);
        run.kind = kind;
        runs.push_back(run);
      }
    }
    const InstanceId many = create(store, creationWith("Order", 1, InstanceStatus::Running, runs));
    for (StepRunRecord expected : runs) {
      expected.instance = many;
      checkSame(loadRun(store, many, expected.run), expected);
    }
  }
}

// loadInstanceRun returns what loadInstance and loadStepRun return, the
// instance's NotFound when it is missing and the run's when only the run is.
inline void loadInstanceRunReadsBoth(Store& store) {
  StepRunRecord waiting = stepRun(2, "SubmitToErp", StepRunStatus::Waiting);
  waiting.kind = StepKind::Async;
  waiting.secret = "s3cret";
  waiting.hasCompletion = true;
  waiting.completion = Fields{{"Status", "Approved"}, {"Ticket", 1001}};
  ChangeSet set = creationWith("Order", 1, InstanceStatus::Waiting,
                               {stepRun(1, "Validate", StepRunStatus::Completed), waiting});
  set.fields = Fields{{"OrderId", "A-17"}, {"Amount", 12.5}};
  const InstanceId id = create(store, set);
  const InstanceId bare = create(store, creation("Order", 1, {}));

  for (const auto& [instance, run] : {std::pair<InstanceId, std::int64_t>{id, 1}, {id, 2}}) {
    INFO("run " << instance << "_" << run);
    auto both = store.loadInstanceRun(instance, run);
    REQUIRE(codeOf(both) == "ok");
    checkSame(both->snapshot, load(store, instance));
    checkSame(both->run, loadRun(store, instance, run));
  }
  CHECK(store.loadInstanceRun(id, 2)->snapshot.fields.size() == 2);

  auto noInstance = store.loadInstanceRun(bare + 1, 1);
  CHECK(codeOf(noInstance) == "NotFound");
  CHECK(codeOf(store.loadInstance(bare + 1)) == "NotFound");
  if (!noInstance)
    CHECK(noInstance.error().message == store.loadInstance(bare + 1).error().message);
  for (const auto& [instance, run] :
       {std::pair<InstanceId, std::int64_t>{id, 3}, {id, 0}, {bare, 5}}) {
    INFO("run " << instance << "_" << run);
    auto noRun = store.loadInstanceRun(instance, run);
    REQUIRE(codeOf(noRun) == "NotFound");
    auto alone = store.loadStepRun(instance, run);
    REQUIRE(codeOf(alone) == "NotFound");
    CHECK(noRun.error().message == alone.error().message);
  }
}

inline void unknownIdsAreNotFound(Store& store) {
  CHECK(codeOf(store.loadInstance(1)) == "NotFound");
  CHECK(codeOf(store.loadInstance(0)) == "NotFound");
  CHECK(codeOf(store.loadStepRun(1, 1)) == "NotFound");
  const InstanceId id = create(store, creation());
  CHECK(codeOf(store.loadInstance(id + 1)) == "NotFound");
  CHECK(codeOf(store.loadInstance(-1)) == "NotFound");
  CHECK(codeOf(store.loadInstance(0)) == "NotFound");
  CHECK(codeOf(store.loadStepRun(id, 2)) == "NotFound");
  CHECK(codeOf(store.loadStepRun(id, 0)) == "NotFound");
  CHECK(codeOf(store.loadStepRun(id, -1)) == "NotFound");
  CHECK(codeOf(store.loadStepRun(id + 1, 1)) == "NotFound");
  CHECK(codeOf(store.loadStepRun(0, 1)) == "NotFound");
}

inline void updateAppliesAndBumpsTheVersion(Store& store) {
  const InstanceId id = create(store, creation("Order", 1,
                                               {{"OrderId", "A-1"},
                                                {"Status", "Pending"},
                                                {"Ticket", "none"},
                                                {"Amount", 10},
                                                {"Kept", 1.5}}));
  const InstanceSnapshot before = load(store, id);

  ChangeSet set = updateOf(before);
  set.instance.version = 1000;  // ignored: the store writes expectedVersion + 1
  set.instance.status = InstanceStatus::Waiting;
  set.instance.currentRun = 2;
  set.instance.lastRun = 2;
  set.instance.error = "e";
  // Replaced, replaced with another type, replaced with null, added.
  set.fields = Fields{{"Status", "Approved"}, {"Ticket", 42}, {"Amount", nullptr}, {"New", false}};
  const ApplyResult result = applyOne(store, set);
  CHECK(describe(result.status) == "Applied");
  CHECK(result.instance == id);

  InstanceRecord expected = set.instance;
  expected.version = 2;
  const InstanceSnapshot after = load(store, id);
  checkSame(after.record, expected);
  checkSameFields(after.fields, Fields{{"OrderId", "A-1"},
                                       {"Status", "Approved"},
                                       {"Ticket", 42},
                                       {"Amount", nullptr},
                                       {"Kept", 1.5},
                                       {"New", false}});

  SECTION("the next update expects the new version") {
    ChangeSet again = updateOf(after);
    again.instance.version = 0;
    CHECK(describe(applyOne(store, again).status) == "Applied");
    CHECK(load(store, id).record.version == 3);
    checkSameFields(load(store, id).fields, after.fields);  // no fields in the set: all kept
  }
}

inline void updateInsertsAndReplacesRuns(Store& store) {
  ChangeSet first = creation();
  StepRunRecord original = stepRun(1, "Submit", StepRunStatus::Waiting);
  original.hasCompletion = true;
  original.completion = Fields{{"Status", "Early"}, {"Extra", 1}};
  original.error = "was waiting";
  original.deadline = at(50'000'000);
  first.stepRuns = {original, stepRun(2, "Untouched", StepRunStatus::Completed)};
  const InstanceId id = create(store, first);
  const InstanceId other = create(store, creation());
  const StepRunRecord otherRun = loadRun(store, other, 1);

  ChangeSet set = updateOf(load(store, id));
  // Every member of run 1 changes, as when the engine applies an early
  // completion (its fields move to the instance): nothing of the old row stays.
  StepRunRecord replaced;
  replaced.instance = id;
  replaced.run = 1;
  replaced.step = "Resubmit";
  replaced.kind = StepKind::Sync;
  replaced.status = StepRunStatus::Completed;
  replaced.attempt = 2;
  replaced.secret = "";
  replaced.hasCompletion = true;
  replaced.completion = Fields{};
  replaced.error = "";
  replaced.createdAt = at(7);
  replaced.waitingSince = Timestamp{};
  replaced.finishedAt = at(60'000'001);
  replaced.deadline = std::nullopt;
  StepRunRecord inserted = stepRun(3, "Notify", StepRunStatus::Waiting);
  inserted.instance = id;
  inserted.deadline = at(70'000'000);
  set.instance.currentRun = 3;
  set.instance.lastRun = 3;
  set.stepRuns = {inserted, replaced};
  REQUIRE(describe(applyOne(store, set).status) == "Applied");

  checkSame(loadRun(store, id, 1), replaced);
  StepRunRecord untouched = first.stepRuns[1];
  untouched.instance = id;
  checkSame(loadRun(store, id, 2), untouched);
  checkSame(loadRun(store, id, 3), inserted);
  // Another instance's run with the same run number is another row.
  checkSame(loadRun(store, other, 1), otherRun);
  CHECK(codeOf(store.loadStepRun(other, 3)) == "NotFound");

  SECTION("a replaced run may gain a completion and a deadline again") {
    ChangeSet again = updateOf(load(store, id));
    StepRunRecord reopened = original;
    reopened.instance = id;
    reopened.attempt = 4;
    again.stepRuns = {reopened};
    REQUIRE(describe(applyOne(store, again).status) == "Applied");
    checkSame(loadRun(store, id, 1), reopened);
  }

  SECTION("a replaced run may drop its completion: hasCompletion back to false") {
    ChangeSet again = updateOf(load(store, id));
    StepRunRecord withCompletion = original;
    withCompletion.instance = id;
    again.stepRuns = {withCompletion};
    REQUIRE(describe(applyOne(store, again).status) == "Applied");
    ChangeSet dropped = updateOf(load(store, id));
    StepRunRecord without = withCompletion;
    without.hasCompletion = false;
    without.completion = Fields{};
    dropped.stepRuns = {without};
    REQUIRE(describe(applyOne(store, dropped).status) == "Applied");
    checkSame(loadRun(store, id, 1), without);
  }
}

inline void staleUpdateIsAConflict(Store& store) {
  const InstanceId id = create(store, creation("Order", 1, {{"OrderId", "A-1"}}));
  const InstanceSnapshot original = load(store, id);
  REQUIRE(describe(applyOne(store, updateOf(original)).status) == "Applied");
  const InstanceSnapshot current = load(store, id);
  REQUIRE(current.record.version == 2);
  const StepRunRecord run1 = loadRun(store, id, 1);

  ChangeSet stale = updateOf(original);  // expects version 1
  SECTION("expecting an older version") {}
  SECTION("expecting a newer version") { stale.expectedVersion = 3; }
  stale.instance.version = 2;  // the header's version is no way around the check
  stale.instance.status = InstanceStatus::Failed;
  stale.instance.error = "stale";
  stale.fields = Fields{{"OrderId", "overwritten"}, {"New", 1}};
  StepRunRecord replaced = stepRun(1, "Submit", StepRunStatus::Failed);
  replaced.instance = id;
  StepRunRecord inserted = stepRun(2, "Inserted", StepRunStatus::Waiting);
  inserted.instance = id;
  stale.stepRuns = {replaced, inserted};

  const ApplyResult result = applyOne(store, stale);
  CHECK(describe(result.status) == "Conflict");
  CHECK(result.instance == id);

  checkSame(load(store, id), current);
  checkSame(loadRun(store, id, 1), run1);
  CHECK(codeOf(store.loadStepRun(id, 2)) == "NotFound");
  CHECK(listWaiting(store, WaitingQuery{}).empty());
  RunningQuery running;
  running.process = "Order";
  running.processVersion = 1;
  CHECK(describe(listRunning(store, running)) == describe(std::vector<InstanceId>{id}));
}

inline void updateOfAMissingInstanceIsAConflict(Store& store) {
  const InstanceId existing = create(store, creation());
  const InstanceId missing = existing + 4;
  ChangeSet set = creationWith("Order", 1, InstanceStatus::Running,
                               {stepRun(1, "Submit", StepRunStatus::Waiting)});
  set.instance.id = missing;
  set.stepRuns.front().instance = missing;
  set.expectedVersion = 1;

  SECTION("alone") {
    const ApplyResult result = applyOne(store, set);
    CHECK(describe(result.status) == "Conflict");
    CHECK(result.instance == missing);
  }
  SECTION("expecting version 0") {
    set.expectedVersion = 0;
    const ApplyResult result = applyOne(store, set);
    CHECK(describe(result.status) == "Conflict");
    CHECK(result.instance == missing);
  }

  CHECK(codeOf(store.loadInstance(missing)) == "NotFound");
  CHECK(codeOf(store.loadStepRun(missing, 1)) == "NotFound");
  CHECK(listWaiting(store, WaitingQuery{}).empty());
  RunningQuery running;
  running.process = "Order";
  running.processVersion = 1;
  CHECK(describe(listRunning(store, running)) == describe(std::vector<InstanceId>{existing}));
  // The next create still gets an id of its own, and nothing of the failed set.
  const InstanceId next = create(store, creation("Order", 1, {{"OrderId", "next"}}));
  CHECK(next > existing);
  checkSameFields(load(store, next).fields, Fields{{"OrderId", "next"}});
}

inline void batchReportsEachSetInOrder(Store& store) {
  const InstanceId a = create(store, creation("Order", 1, {{"OrderId", "a"}}));
  const InstanceId b = create(store, creation("Order", 1, {{"OrderId", "b"}}));
  const InstanceSnapshot a1 = load(store, a);
  const InstanceSnapshot b1 = load(store, b);

  ChangeSet good = updateOf(a1);
  good.fields = Fields{{"OrderId", "a-good"}};
  // Stale because `good`, earlier in the same batch, moves a to version 2.
  ChangeSet stale = updateOf(a1);
  stale.fields = Fields{{"OrderId", "a-stale"}, {"Stale", true}};
  stale.instance.status = InstanceStatus::Failed;
  stale.stepRuns = {stepRun(2, "Stale", StepRunStatus::Waiting)};
  stale.stepRuns.front().instance = a;
  ChangeSet goodForB = updateOf(b1);
  goodForB.fields = Fields{{"OrderId", "b-good"}};

  std::vector<ChangeSet> batch;
  batch.push_back(good);
  batch.push_back(stale);
  batch.push_back(goodForB);
  const auto results = applyBatch(store, std::move(batch));
  CHECK(describe(results) ==
        describe(std::vector<ApplyResult>{
            {ApplyStatus::Applied, a}, {ApplyStatus::Conflict, a}, {ApplyStatus::Applied, b}}));

  const InstanceSnapshot a2 = load(store, a);
  CHECK(a2.record.version == 2);
  CHECK(describe(a2.record.status) == "Running");
  checkSameFields(a2.fields, Fields{{"OrderId", "a-good"}});
  CHECK(codeOf(store.loadStepRun(a, 2)) == "NotFound");
  const InstanceSnapshot b2 = load(store, b);
  CHECK(b2.record.version == 2);
  checkSameFields(b2.fields, Fields{{"OrderId", "b-good"}});
}

inline void batchCreatesThenUpdates(Store& store) {
  const InstanceId existing = create(store, creation("Order", 1, {{"OrderId", "existing"}}));
  ChangeSet update = updateOf(load(store, existing));
  update.fields = Fields{{"OrderId", "updated"}};

  ChangeSet created = creation("Order", 1, {{"OrderId", "created"}});
  std::vector<ChangeSet> batch;
  batch.push_back(created);
  batch.push_back(update);
  const auto results = applyBatch(store, std::move(batch));
  CHECK(describe(results[0].status) == "Applied");
  CHECK(results[0].instance > existing);
  CHECK(describe(results[1].status) == "Applied");
  CHECK(results[1].instance == existing);

  checkSame(load(store, results[0].instance),
            InstanceSnapshot{createdRecord(created, results[0].instance), created.fields});
  CHECK(loadRun(store, results[0].instance, 1).instance == results[0].instance);
  const InstanceSnapshot after = load(store, existing);
  CHECK(after.record.version == 2);
  checkSameFields(after.fields, Fields{{"OrderId", "updated"}});
}

inline void emptyBatchAppliesNothing(Store& store) {
  CHECK(applyBatch(store, {}).empty());
  CHECK(codeOf(store.loadInstance(1)) == "NotFound");
  const InstanceId id = create(store, creation());
  CHECK(id == 1);
  CHECK(applyBatch(store, {}).empty());
  CHECK(load(store, id).record.version == 1);
}

inline void readsAreCopies(Store& store) {
  ChangeSet set = creation("Order", 1, {{"OrderId", "A-1"}});
  set.stepRuns.front().status = StepRunStatus::Waiting;
  std::vector<ChangeSet> batch{set};
  const InstanceId id = applyBatch(store, batch).front().instance;
  const InstanceSnapshot stored = load(store, id);
  const StepRunRecord storedRun = loadRun(store, id, 1);

  // What the caller keeps of the batch is its own.
  batch.front().fields.set("OrderId", "changed after apply");
  batch.front().instance.status = InstanceStatus::Failed;
  batch.front().stepRuns.front().step = "changed after apply";

  InstanceSnapshot snapshot = load(store, id);
  snapshot.record.status = InstanceStatus::Cancelled;
  snapshot.record.version = 50;
  snapshot.fields.set("OrderId", "mutated");
  snapshot.fields.set("Extra", true);
  StepRunRecord run = loadRun(store, id, 1);
  run.status = StepRunStatus::Failed;
  run.step = "mutated";
  run.completion.set("Extra", true);
  std::vector<WaitingRow> rows = listWaiting(store, WaitingQuery{});
  REQUIRE(rows.size() == 1);
  rows.front().run.step = "mutated";
  rows.front().process = "mutated";

  checkSame(load(store, id), stored);
  checkSame(loadRun(store, id, 1), storedRun);
  rows = listWaiting(store, WaitingQuery{});
  REQUIRE(rows.size() == 1);
  checkSame(rows.front().run, storedRun);
  CHECK(rows.front().process == "Order");
}

// Every kind of value, with the edges a store's encoding is likely to get wrong.
// NaN is absent: the engine refuses it.
inline Fields edgeValues() {
  std::string allBytes;
  for (int byte = 0; byte < 256; ++byte) allBytes += static_cast<char>(byte);
  std::string longText;
  for (int i = 0; i < 70'000; ++i) longText += static_cast<char>('a' + i % 26);
  using Int = std::numeric_limits<std::int64_t>;
  using Real = std::numeric_limits<double>;
  return Fields{
      {"Null", nullptr},
      {"True", true},
      {"False", false},
      {"IntZero", std::int64_t{0}},
      {"IntMinusOne", std::int64_t{-1}},
      {"IntMin", Int::min()},
      {"IntMax", Int::max()},
      {"DoubleZero", 0.0},
      {"DoubleNegativeZero", -0.0},
      {"DoubleIntegral", 2.0},
      {"DoubleTenth", 0.1},
      {"DoubleTiny", 1e-300},
      {"DoubleHuge", 1e300},
      {"DoubleSubnormal", Real::denorm_min()},
      {"DoubleMax", Real::max()},
      {"DoubleLowest", Real::lowest()},
      {"DoubleInfinity", Real::infinity()},
      {"DoubleMinusInfinity", -Real::infinity()},
      {"StringEmpty", ""},
      {"StringNul", std::string("a\0b\0", 4)},
      {"StringOnlyNul", std::string(1, '\0')},
      {"StringInvalidUtf8", "\xff\xfe\xc3\x28\x80"},
      {"StringAllBytes", allBytes},
      {"StringUtf8",
       "Gr\xc3\xbc\xc3\x9f"
       "e \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x9a\x80"},
      {"StringNumeric", "42"},
      {"StringDecimal", "1.50"},
      {"StringNullWord", "null"},
      {"StringQuotes", "it's \"quoted\"'; DROP TABLE fields; --"},
      {"StringControl", "line1\nline2\r\n\ttab"},
      {"StringLong", longText},
      {"name with spaces and caf\xc3\xa9", "odd names round-trip too"},
  };
}

inline void fieldValuesRoundTrip(Store& store) {
  const Fields edges = edgeValues();
  ChangeSet set = creation("Order", 1, edges);
  StepRunRecord waiting = stepRun(1, "Submit", StepRunStatus::Waiting);
  waiting.hasCompletion = true;
  waiting.completion = edges;
  set.stepRuns = {waiting};
  set.instance.status = InstanceStatus::Waiting;
  const InstanceId id = create(store, set);
  waiting.instance = id;

  SECTION("in an instance's fields") { checkSameFields(load(store, id).fields, edges); }

  // Not listed too: listWaiting leaves out a run with a completion recorded.
  SECTION("in a run's completion") { checkSame(loadRun(store, id, 1), waiting); }

  SECTION("replacing each field with another kind of value") {
    // Field i takes the value of field i + 1: every value lands on a name that
    // held another one, mostly of another type.
    std::vector<std::string> names;
    std::vector<Value> values;
    for (const auto& [name, value] : edges) {
      names.push_back(name);
      values.push_back(value);
    }
    Fields rotated;
    for (std::size_t i = 0; i < names.size(); ++i) {
      rotated.set(names[i], values[(i + 1) % values.size()]);
    }
    ChangeSet update = updateOf(load(store, id));
    update.fields = rotated;
    StepRunRecord replaced = waiting;
    replaced.completion = rotated;
    update.stepRuns = {replaced};
    REQUIRE(describe(applyOne(store, update).status) == "Applied");
    checkSameFields(load(store, id).fields, rotated);
    checkSame(loadRun(store, id, 1), replaced);
  }
}

// Keys of the waiting runs created by addWaitingFixture, in (instance, run) order.
struct WaitingFixture {
  std::vector<std::string> all;      // every waiting run
  std::vector<std::string> order;    // process "Order", any step
  std::vector<std::string> approve;  // step "Approve", any process
  std::vector<std::string> orderApprove;
  std::vector<WaitingRow> rows;  // every waiting run as listWaiting must return it
};

// Instances of several processes whose waiting runs are interleaved with runs in
// every other status and written out of key order.
inline WaitingFixture addWaitingFixture(Store& store) {
  struct Planned {
    std::string process;
    int version;
    std::vector<std::pair<std::string, StepRunStatus>> runs;  // run i + 1
  };
  using S = StepRunStatus;
  const std::vector<Planned> plan = {
      {"Order", 1, {{"Approve", S::Waiting}}},
      {"Invoice", 2, {{"Approve", S::Completed}, {"Approve", S::Waiting}, {"Pay", S::Waiting}}},
      {"Order", 3, {{"Submit", S::Ready}, {"Submit", S::Starting}, {"Submit", S::Failed}}},
      {"Order",
       1,
       {{"Submit", S::Completed},
        {"Approve", S::Waiting},
        {"Approve", S::TimedOut},
        {"Ship", S::Waiting},
        {"Approve", S::Waiting},
        {"Ship", S::Cancelled},
        {"Ship", S::Waiting}}},
      {"Orders", 1, {{"Approve", S::Waiting}, {"Ship", S::Waiting}}},
      {"Order", 2, {{"Approve", S::Waiting}, {"Approve", S::Waiting}, {"Ship", S::Waiting}}},
      {"order", 1, {{"Approve", S::Waiting}}},
      {"Order", 1, {{"Ship", S::Waiting}, {"Ship", S::Waiting}, {"Approve", S::Waiting}}},
      {"Invoice", 1, {{"Pay", S::Waiting}, {"Pay", S::Waiting}, {"Approve", S::Waiting}}},
      {"Order", 1, {{"Ship", S::Completed}}},
      {"Order", 1, {{"Approve", S::Waiting}, {"Ship", S::Waiting}, {"Ship", S::Starting}}},
      {"Order",
       1,
       {{"Approve", S::Waiting},
        {"Ship", S::Waiting},
        {"Ship", S::Waiting},
        {"Approve", S::Waiting}}},
  };

  // Create every instance with its first run only, then add the other runs in
  // reverse, instances last to first, so that insertion order is not key order.
  WaitingFixture fixture;
  std::vector<InstanceId> ids;
  std::vector<std::vector<StepRunRecord>> written(plan.size());
  for (std::size_t i = 0; i < plan.size(); ++i) {
    StepRunRecord first = stepRun(1, plan[i].runs[0].first, plan[i].runs[0].second);
    ids.push_back(create(
        store, creationWith(plan[i].process, plan[i].version, InstanceStatus::Waiting, {first})));
    first.instance = ids.back();
    written[i].resize(plan[i].runs.size());
    written[i][0] = first;
  }
  for (std::size_t i = plan.size(); i-- > 0;) {
    if (plan[i].runs.size() < 2) continue;
    ChangeSet set = updateOf(load(store, ids[i]));
    for (std::size_t r = plan[i].runs.size(); r-- > 1;) {
      StepRunRecord run =
          stepRun(static_cast<std::int64_t>(r) + 1, plan[i].runs[r].first, plan[i].runs[r].second);
      run.instance = ids[i];
      if (r % 2 == 0) run.deadline = at(static_cast<std::int64_t>(r) * 3'600'000'000 + 11);
      set.stepRuns.push_back(run);
      written[i][r] = run;
    }
    REQUIRE(describe(applyOne(store, set).status) == "Applied");
  }

  for (std::size_t i = 0; i < plan.size(); ++i) {
    for (std::size_t r = 0; r < plan[i].runs.size(); ++r) {
      if (plan[i].runs[r].second != StepRunStatus::Waiting) continue;
      const std::string key = keyOf(ids[i], static_cast<std::int64_t>(r) + 1);
      const bool order = plan[i].process == "Order";
      const bool approve = plan[i].runs[r].first == "Approve";
      fixture.all.push_back(key);
      if (order) fixture.order.push_back(key);
      if (approve) fixture.approve.push_back(key);
      if (order && approve) fixture.orderApprove.push_back(key);
      fixture.rows.push_back(WaitingRow{written[i][r], plan[i].process, plan[i].version});
    }
  }
  REQUIRE(fixture.all.size() == 25);
  return fixture;
}

inline WaitingQuery waitingQuery(std::string process, std::string step, std::size_t limit = 100) {
  WaitingQuery query;
  query.process = std::move(process);
  query.step = std::move(step);
  query.limit = limit;
  return query;
}

inline void listWaitingReturnsWaitingRunsInOrder(Store& store) {
  CHECK(listWaiting(store, WaitingQuery{}).empty());
  const WaitingFixture fixture = addWaitingFixture(store);

  const auto rows = listWaiting(store, WaitingQuery{});
  CHECK(describeKeys(rows) == describeKeys(fixture.all));
  if (rows.size() == fixture.rows.size()) {
    for (std::size_t i = 0; i < rows.size(); ++i) {
      INFO("row " << i);
      checkSame(rows[i].run, fixture.rows[i].run);
      CHECK(rows[i].process == fixture.rows[i].process);
      CHECK(rows[i].processVersion == fixture.rows[i].processVersion);
    }
  }

  SECTION("a run that stops waiting leaves the list") {
    const WaitingRow& first = fixture.rows.front();
    ChangeSet set = updateOf(load(store, first.run.instance));
    StepRunRecord done = first.run;
    done.status = StepRunStatus::Completed;
    done.finishedAt = at(99);
    set.stepRuns = {done};
    REQUIRE(describe(applyOne(store, set).status) == "Applied");
    std::vector<std::string> rest(fixture.all.begin() + 1, fixture.all.end());
    CHECK(describeKeys(listWaiting(store, WaitingQuery{})) == describeKeys(rest));
  }
}

inline void listWaitingFilters(Store& store) {
  const WaitingFixture fixture = addWaitingFixture(store);
  CHECK(describeKeys(listWaiting(store, waitingQuery("Order", ""))) == describeKeys(fixture.order));
  CHECK(describeKeys(listWaiting(store, waitingQuery("", "Approve"))) ==
        describeKeys(fixture.approve));
  CHECK(describeKeys(listWaiting(store, waitingQuery("Order", "Approve"))) ==
        describeKeys(fixture.orderApprove));
  CHECK(listWaiting(store, waitingQuery("Unknown", "")).empty());
  CHECK(listWaiting(store, waitingQuery("", "Unknown")).empty());
  CHECK(listWaiting(store, waitingQuery("Invoice", "Ship")).empty());
  CHECK(listWaiting(store, waitingQuery("Ord", "")).empty());           // no prefix match
  CHECK(listWaiting(store, waitingQuery("Order", "approve")).empty());  // case matters

  // A filtered walk in pages of 2 returns the filtered list, each run once.
  std::vector<std::string> walked;
  WaitingQuery query = waitingQuery("Order", "Approve", 2);
  for (int page = 0; page < 20; ++page) {
    const auto rows = listWaiting(store, query);
    for (const WaitingRow& row : rows) walked.push_back(keyOf(row.run.instance, row.run.run));
    if (rows.size() < query.limit) break;
    query.afterInstance = rows.back().run.instance;
    query.afterRun = rows.back().run.run;
  }
  CHECK(describeKeys(walked) == describeKeys(fixture.orderApprove));
}

inline void listWaitingPages(Store& store) {
  const WaitingFixture fixture = addWaitingFixture(store);

  SECTION("a walk in pages of 7 returns each run once, in full pages until the last") {
    std::vector<std::string> walked;
    std::vector<std::size_t> pageSizes;
    WaitingQuery query;
    query.limit = 7;
    for (int page = 0; page < 20; ++page) {
      const auto rows = listWaiting(store, query);
      pageSizes.push_back(rows.size());
      for (const WaitingRow& row : rows) walked.push_back(keyOf(row.run.instance, row.run.run));
      // The engine takes a short page for the last one.
      if (rows.size() < query.limit) break;
      query.afterInstance = rows.back().run.instance;
      query.afterRun = rows.back().run.run;
    }
    CHECK(describeKeys(walked) == describeKeys(fixture.all));
    CHECK(describe(std::vector<InstanceId>(pageSizes.begin(), pageSizes.end())) == "[7, 7, 7, 4]");
  }

  SECTION("the cursor is exclusive and orders by (instance, run)") {
    // After every waiting key, the list continues with exactly the later keys.
    for (std::size_t i = 0; i < fixture.rows.size(); ++i) {
      WaitingQuery query;
      query.afterInstance = fixture.rows[i].run.instance;
      query.afterRun = fixture.rows[i].run.run;
      INFO("after " << fixture.all[i]);
      const std::vector<std::string> later(fixture.all.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                                           fixture.all.end());
      CHECK(describeKeys(listWaiting(store, query)) == describeKeys(later));
    }
    // Run 0 of an instance is before all its runs; a large run after all of them.
    const InstanceId second = fixture.rows[1].run.instance;
    WaitingQuery query;
    query.afterInstance = second;
    query.afterRun = 0;
    CHECK(describeKeys(listWaiting(store, query)) ==
          describeKeys(std::vector<std::string>(fixture.all.begin() + 1, fixture.all.end())));
    query.afterRun = std::numeric_limits<std::int64_t>::max();
    CHECK(describeKeys(listWaiting(store, query)) ==
          describeKeys(std::vector<std::string>(fixture.all.begin() + 3, fixture.all.end())));
  }

  SECTION("the limit caps the page") {
    for (std::size_t limit :
         {std::size_t{0}, std::size_t{1}, std::size_t{24}, std::size_t{25}, std::size_t{26}}) {
      WaitingQuery query;
      query.limit = limit;
      INFO("limit " << limit);
      const std::vector<std::string> head(
          fixture.all.begin(),
          fixture.all.begin() + static_cast<std::ptrdiff_t>(std::min(limit, fixture.all.size())));
      CHECK(describeKeys(listWaiting(store, query)) == describeKeys(head));
    }
  }
}

inline void listWaitingLeavesOutRunsWithACompletion(Store& store) {
  // In key order: a run waiting for the external system; two the external system
  // finished through a host that does not define their version (completed, its
  // fields kept for a host that does; failed, a completion with an error); and
  // another waiting one, of another process.
  const StepRunRecord open = stepRun(1, "Approve", StepRunStatus::Waiting);
  StepRunRecord completed = open;
  completed.hasCompletion = true;
  completed.completion = Fields{{"Status", "Approved"}};
  completed.deadline = at(60'000'000);
  completed.correlationKey = "A-2";
  StepRunRecord failed = open;
  failed.hasCompletion = true;
  failed.error = "rejected by the external system";
  const InstanceId first = create(store, creationWith("Order", 1, InstanceStatus::Waiting, {open}));
  const InstanceId second =
      create(store, creationWith("Order", 1, InstanceStatus::Waiting, {completed}));
  const InstanceId third =
      create(store, creationWith("Order", 1, InstanceStatus::Waiting, {failed}));
  const InstanceId fourth =
      create(store, creationWith("Invoice", 2, InstanceStatus::Waiting, {open}));
  const std::vector<std::string> listed{keyOf(first, 1), keyOf(fourth, 1)};

  CHECK(describeKeys(listWaiting(store, WaitingQuery{})) == describeKeys(listed));
  CHECK(describeKeys(listWaiting(store, waitingQuery("Order", ""))) ==
        describeKeys(std::vector<std::string>{keyOf(first, 1)}));
  CHECK(describeKeys(listWaiting(store, waitingQuery("", "Approve"))) == describeKeys(listed));
  CHECK(describeKeys(listWaiting(store, waitingQuery("Order", "Approve"))) ==
        describeKeys(std::vector<std::string>{keyOf(first, 1)}));

  // The limit counts listed runs only: a page of one after the first run is
  // the fourth, not a short page that would end the walk.
  WaitingQuery query;
  query.limit = 1;
  CHECK(describeKeys(listWaiting(store, query)) ==
        describeKeys(std::vector<std::string>{keyOf(first, 1)}));
  query.afterInstance = first;
  query.afterRun = 1;
  CHECK(describeKeys(listWaiting(store, query)) ==
        describeKeys(std::vector<std::string>{keyOf(fourth, 1)}));
  query.afterInstance = fourth;
  CHECK(listWaiting(store, query).empty());

  // Left out of the list, the runs are kept whole.
  completed.instance = second;
  checkSame(loadRun(store, second, 1), completed);
  failed.instance = third;
  checkSame(loadRun(store, third, 1), failed);

  SECTION("a run leaves the list when a completion is recorded, and returns when it drops it") {
    ChangeSet record = updateOf(load(store, first));
    StepRunRecord recorded = open;
    recorded.instance = first;
    recorded.hasCompletion = true;
    recorded.completion = Fields{{"Status", "Late"}};
    record.stepRuns = {recorded};
    REQUIRE(describe(applyOne(store, record).status) == "Applied");
    CHECK(describeKeys(listWaiting(store, WaitingQuery{})) ==
          describeKeys(std::vector<std::string>{keyOf(fourth, 1)}));

    ChangeSet drop = updateOf(load(store, first));
    StepRunRecord dropped = recorded;
    dropped.hasCompletion = false;
    dropped.completion = Fields{};
    drop.stepRuns = {dropped};
    REQUIRE(describe(applyOne(store, drop).status) == "Applied");
    CHECK(describeKeys(listWaiting(store, WaitingQuery{})) == describeKeys(listed));
  }
}

inline RunningQuery runningQuery(std::string process, int version, InstanceId after = 0,
                                 std::size_t limit = 1000) {
  RunningQuery query;
  query.process = std::move(process);
  query.processVersion = version;
  query.afterInstance = after;
  query.limit = limit;
  return query;
}

inline void listRunningReturnsRunningInstancesOfOneVersion(Store& store) {
  CHECK(listRunning(store, runningQuery("Order", 1)).empty());
  struct Planned {
    std::string process;
    int version;
    InstanceStatus status;
  };
  using I = InstanceStatus;
  const std::vector<Planned> plan = {
      {"Order", 1, I::Running},   {"Order", 1, I::Waiting},  {"Order", 2, I::Running},
      {"Order", 1, I::Running},   {"Orders", 1, I::Running}, {"order", 1, I::Running},
      {"Order", 1, I::Completed}, {"Order", 1, I::Failed},   {"Order", 1, I::Cancelled},
      {"Invoice", 1, I::Running}, {"Order", 1, I::Running},  {"Order", 11, I::Running},
      {"Order", 1, I::Running},   {"Order", 1, I::Running},  {"Order", 1, I::Running},
  };
  std::vector<InstanceId> ids;
  std::vector<InstanceId> expected;
  for (const Planned& planned : plan) {
    ChangeSet set = creation(planned.process, planned.version);
    set.instance.status = planned.status;
    ids.push_back(create(store, set));
    if (planned.process == "Order" && planned.version == 1 && planned.status == I::Running) {
      expected.push_back(ids.back());
    }
  }
  REQUIRE(expected.size() == 6);

  CHECK(describe(listRunning(store, runningQuery("Order", 1))) == describe(expected));
  CHECK(describe(listRunning(store, runningQuery("Order", 2))) ==
        describe(std::vector<InstanceId>{ids[2]}));
  CHECK(listRunning(store, runningQuery("Order", 3)).empty());
  CHECK(listRunning(store, runningQuery("Ord", 1)).empty());
  CHECK(listRunning(store, runningQuery("Unknown", 1)).empty());

  SECTION("after a cursor, exclusive") {
    for (std::size_t i = 0; i < expected.size(); ++i) {
      INFO("after " << expected[i]);
      CHECK(describe(listRunning(store, runningQuery("Order", 1, expected[i]))) ==
            describe(std::vector<InstanceId>(expected.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                                             expected.end())));
    }
    // A cursor that is not a Running instance's id works as well.
    CHECK(describe(listRunning(store, runningQuery("Order", 1, ids[1]))) ==
          describe(std::vector<InstanceId>(expected.begin() + 1, expected.end())));
  }

  SECTION("the limit caps the page; a walk returns each id once") {
    CHECK(listRunning(store, runningQuery("Order", 1, 0, 0)).empty());
    CHECK(describe(listRunning(store, runningQuery("Order", 1, 0, 1))) ==
          describe(std::vector<InstanceId>{expected[0]}));
    std::vector<InstanceId> walked;
    std::vector<InstanceId> pageSizes;
    RunningQuery query = runningQuery("Order", 1, 0, 4);
    for (int page = 0; page < 20; ++page) {
      const auto pageIds = listRunning(store, query);
      pageSizes.push_back(static_cast<InstanceId>(pageIds.size()));
      walked.insert(walked.end(), pageIds.begin(), pageIds.end());
      if (pageIds.size() < query.limit) break;
      query.afterInstance = pageIds.back();
    }
    CHECK(describe(walked) == describe(expected));
    CHECK(describe(pageSizes) == "[4, 2]");
  }

  SECTION("status changes move instances in and out") {
    ChangeSet waits = updateOf(load(store, expected[0]));
    waits.instance.status = InstanceStatus::Waiting;
    ChangeSet resumes = updateOf(load(store, ids[1]));
    resumes.instance.status = InstanceStatus::Running;
    std::vector<ChangeSet> batch{waits, resumes};
    CHECK(describe(applyBatch(store, std::move(batch))) ==
          describe(std::vector<ApplyResult>{{ApplyStatus::Applied, expected[0]},
                                            {ApplyStatus::Applied, ids[1]}}));
    std::vector<InstanceId> now(expected.begin() + 1, expected.end());
    now.insert(now.begin(), ids[1]);
    CHECK(describe(listRunning(store, runningQuery("Order", 1))) == describe(now));
  }
}

// --- correlation keys, timers and history ------------------------------------------------

// A step run of `step` with the given status and correlation key.
inline StepRunRecord keyedRun(std::int64_t run, std::string step, StepRunStatus status,
                              std::string key) {
  StepRunRecord r = stepRun(run, std::move(step), status);
  r.correlationKey = std::move(key);
  return r;
}

// A step run with the given status and deadline.
inline StepRunRecord runDueAt(std::int64_t run, StepRunStatus status,
                              std::optional<Timestamp> deadline) {
  StepRunRecord r = stepRun(run, "Approve", status);
  r.deadline = deadline;
  return r;
}

// Applies an update of instance `id` that writes `runs` (each with the instance's id).
inline void writeRuns(Store& store, InstanceId id, std::vector<StepRunRecord> runs) {
  ChangeSet set = updateOf(load(store, id));
  for (StepRunRecord& run : runs) run.instance = id;
  set.stepRuns = std::move(runs);
  REQUIRE(describe(applyOne(store, set).status) == "Applied");
}

inline void correlationKeysRoundTrip(Store& store) {
  const StepRunRecord keyed = keyedRun(1, "Approve", StepRunStatus::Waiting, "ORDER-17");
  // Any bytes: NULs, invalid UTF-8, a line break, a trailing space.
  const StepRunRecord bytes =
      keyedRun(2, "Approve", StepRunStatus::Waiting, std::string("K\0ey\xff\n \0", 8));
  const StepRunRecord none = keyedRun(3, "Approve", StepRunStatus::Waiting, "");
  // A run keeps its key after it stops waiting.
  const StepRunRecord closed = keyedRun(4, "Ship", StepRunStatus::Completed, "ORDER-17");
  const InstanceId id = create(
      store, creationWith("Order", 1, InstanceStatus::Waiting, {keyed, bytes, none, closed}));
  for (StepRunRecord expected : {keyed, bytes, none, closed}) {
    expected.instance = id;
    INFO("run " << expected.run);
    checkSame(loadRun(store, id, expected.run), expected);
  }
  const auto rows = listWaiting(store, WaitingQuery{});
  REQUIRE(rows.size() == 3);
  CHECK(describeBytes(rows[0].run.correlationKey) == describeBytes(keyed.correlationKey));
  CHECK(describeBytes(rows[1].run.correlationKey) == describeBytes(bytes.correlationKey));
  CHECK(describeBytes(rows[2].run.correlationKey) == describeBytes(""));

  SECTION("a replaced run takes the new key: changed, cleared, or set where there was none") {
    StepRunRecord changed = keyed;
    changed.correlationKey = "ORDER-18";
    StepRunRecord cleared = bytes;
    cleared.correlationKey.clear();
    StepRunRecord gained = none;
    gained.correlationKey = std::string(1, '\0');
    writeRuns(store, id, {changed, cleared, gained});
    for (StepRunRecord expected : {changed, cleared, gained}) {
      expected.instance = id;
      INFO("run " << expected.run);
      checkSame(loadRun(store, id, expected.run), expected);
    }
  }
}

// A history entry at `micros`.
inline HistoryEvent historyEvent(HistoryKind kind, std::int64_t run, std::string step,
                                 std::string detail, std::int64_t micros) {
  HistoryEvent event;
  event.at = at(micros);
  event.kind = kind;
  event.run = run;
  event.step = std::move(step);
  event.detail = std::move(detail);
  return event;
}

// `events` as the store must return them for instance `id`.
inline std::vector<HistoryEvent> ofInstance(std::vector<HistoryEvent> events, InstanceId id) {
  for (HistoryEvent& event : events) event.instance = id;
  return events;
}

inline void historyIsAppendedInWriteOrder(Store& store) {
  using K = HistoryKind;
  CHECK(loadHistory(store, 1).empty());

  ChangeSet created = creation();
  created.history = {historyEvent(K::Started, 0, "", "version 1", 1),
                     historyEvent(K::StepStarted, 1, "Submit", "", 2)};
  created.history[1].instance = 777;  // whatever the caller wrote, the set's id wins
  const InstanceId id = create(store, created);
  const InstanceId other = create(store, creation());  // a set without history
  std::vector<HistoryEvent> expected = ofInstance(created.history, id);
  checkSame(loadHistory(store, id), expected);
  CHECK(loadHistory(store, other).empty());

  // Entries keep the order they were written, not the order of their times.
  ChangeSet waits = updateOf(load(store, id));
  waits.history = {historyEvent(K::Waiting, 1, "Submit", "1_1_c2VjcmV0", 900),
                   historyEvent(K::Heartbeat, 1, "Submit", "", 5),
                   historyEvent(K::Heartbeat, 1, "Submit", "", 5)};
  REQUIRE(describe(applyOne(store, waits).status) == "Applied");
  REQUIRE(describe(applyOne(store, updateOf(load(store, id))).status) == "Applied");
  expected.insert(expected.end(), waits.history.begin(), waits.history.end());
  checkSame(loadHistory(store, id), ofInstance(expected, id));

  SECTION("in a batch: sets of several instances, two of the same instance") {
    const InstanceSnapshot current = load(store, id);
    ChangeSet forOther = updateOf(load(store, other));
    forOther.history = {historyEvent(K::Cancelled, 0, "", "by the operator", 10)};
    ChangeSet completes = updateOf(current);
    completes.history = {historyEvent(K::StepCompleted, 1, "Submit", "{\"Status\":\"Ok\"}", 20)};
    ChangeSet ends = updateOf(current);
    ends.expectedVersion = current.record.version + 1;  // follows `completes`
    ends.history = {historyEvent(K::Completed, 0, "", "", 30)};
    std::vector<ChangeSet> batch{completes, forOther, ends};
    CHECK(describe(applyBatch(store, std::move(batch))) ==
          describe(std::vector<ApplyResult>{{ApplyStatus::Applied, id},
                                            {ApplyStatus::Applied, other},
                                            {ApplyStatus::Applied, id}}));
    expected.push_back(completes.history[0]);
    expected.push_back(ends.history[0]);
    checkSame(loadHistory(store, id), ofInstance(expected, id));
    checkSame(loadHistory(store, other), ofInstance(forOther.history, other));
  }

  SECTION("every kind, and any bytes in step and detail, round-trip") {
    const std::vector<HistoryKind> kinds = {
        K::Started,       K::StepStarted, K::Waiting,  K::CompletionRecorded,
        K::StepCompleted, K::StepFailed,  K::TimedOut, K::Heartbeat,
        K::Retried,       K::Completed,   K::Failed,   K::Cancelled};
    ChangeSet set = updateOf(load(store, id));
    for (std::size_t i = 0; i < kinds.size(); ++i) {
      set.history.push_back(historyEvent(kinds[i], static_cast<std::int64_t>(i) * 1'000'000'007,
                                         std::string("st\0ep\xff", 6) + std::to_string(i),
                                         std::string("line 1\nline \"2\"\0\xc3\xa9", 18),
                                         static_cast<std::int64_t>(i) * 1'000'003 - 500));
    }
    set.history.push_back(historyEvent(K::Failed, 0, "", std::string(70'000, 'x'), 0));
    set.history.back().at = Timestamp{};  // the epoch is a time like any other
    REQUIRE(describe(applyOne(store, set).status) == "Applied");
    expected.insert(expected.end(), set.history.begin(), set.history.end());
    checkSame(loadHistory(store, id), ofInstance(expected, id));
  }

  SECTION("an unknown id has an empty history, not NotFound") {
    for (InstanceId unknown : {InstanceId{0}, InstanceId{-1}, other + 1, other + 1000}) {
      INFO("instance " << unknown);
      CHECK(codeOf(store.loadHistory(unknown)) == "ok");
      CHECK(loadHistory(store, unknown).empty());
    }
  }
}

inline void conflictAppendsNoHistory(Store& store) {
  using K = HistoryKind;
  ChangeSet created = creation();
  created.history = {historyEvent(K::Started, 0, "", "version 1", 1)};
  const InstanceId id = create(store, created);
  const InstanceId other = create(store, creation());
  const InstanceSnapshot original = load(store, id);
  ChangeSet moves = updateOf(original);
  moves.history = {historyEvent(K::StepStarted, 1, "Submit", "", 2)};
  REQUIRE(describe(applyOne(store, moves).status) == "Applied");
  const std::vector<HistoryEvent> expected = ofInstance({created.history[0], moves.history[0]}, id);

  SECTION("alone") {
    ChangeSet stale = updateOf(original);
    stale.history = {historyEvent(K::Failed, 0, "", "stale", 3)};
    CHECK(describe(applyOne(store, stale).status) == "Conflict");
  }
  SECTION("between applied sets of the same batch") {
    ChangeSet before = updateOf(load(store, other));
    before.history = {historyEvent(K::Cancelled, 0, "", "applied", 4)};
    ChangeSet stale = updateOf(original);
    stale.history = {historyEvent(K::Failed, 0, "", "stale", 5),
                     historyEvent(K::Failed, 0, "", "stale too", 6)};
    ChangeSet after = updateOf(load(store, other));
    after.expectedVersion += 1;
    after.history = {historyEvent(K::Completed, 0, "", "applied", 7)};
    std::vector<ChangeSet> batch{before, stale, after};
    CHECK(describe(applyBatch(store, std::move(batch))) ==
          describe(std::vector<ApplyResult>{{ApplyStatus::Applied, other},
                                            {ApplyStatus::Conflict, id},
                                            {ApplyStatus::Applied, other}}));
    checkSame(loadHistory(store, other), ofInstance({before.history[0], after.history[0]}, other));
  }
  SECTION("an update of an instance that does not exist") {
    ChangeSet missing = updateOf(original);
    missing.instance.id = other + 5;
    missing.history = {historyEvent(K::Failed, 0, "", "nowhere", 8)};
    CHECK(describe(applyOne(store, missing).status) == "Conflict");
    CHECK(loadHistory(store, other + 5).empty());
  }

  checkSame(loadHistory(store, id), expected);
  // The next applied set appends right after what was there.
  ChangeSet next = updateOf(load(store, id));
  next.history = {historyEvent(K::Completed, 0, "", "", 9)};
  REQUIRE(describe(applyOne(store, next).status) == "Applied");
  std::vector<HistoryEvent> then = expected;
  then.push_back(ofInstance(next.history, id)[0]);
  checkSame(loadHistory(store, id), then);
}

inline void nextDeadlineIsTheEarliestWaitingDeadline(Store& store) {
  using S = StepRunStatus;
  CHECK(describe(nextDeadline(store)) == "none");

  // Waiting without a deadline, and earlier deadlines on runs that do not wait.
  const InstanceId quiet = create(
      store, creationWith("Order", 1, InstanceStatus::Waiting,
                          {runDueAt(1, S::Waiting, std::nullopt), runDueAt(2, S::Completed, at(10)),
                           runDueAt(3, S::TimedOut, at(20)), runDueAt(4, S::Ready, at(30)),
                           runDueAt(5, S::Starting, at(40)), runDueAt(6, S::Failed, at(50)),
                           runDueAt(7, S::Cancelled, at(60))}));
  CHECK(describe(nextDeadline(store)) == "none");

  const InstanceId a = create(store, creationWith("Order", 1, InstanceStatus::Waiting,
                                                  {runDueAt(1, S::Waiting, at(3'000)),
                                                   runDueAt(2, S::Waiting, at(2'000))}));
  const InstanceId b = create(store, creationWith("Invoice", 2, InstanceStatus::Waiting,
                                                  {runDueAt(1, S::Waiting, at(2'500))}));
  CHECK(describe(nextDeadline(store)) == describe(at(2'000)));

  SECTION("it follows updates") {
    writeRuns(store, a, {runDueAt(2, S::Completed, at(2'000))});
    CHECK(describe(nextDeadline(store)) == describe(at(2'500)));
    writeRuns(store, b, {runDueAt(1, S::Waiting, at(4'000))});  // a heartbeat extends it
    CHECK(describe(nextDeadline(store)) == describe(at(3'000)));
    writeRuns(store, quiet, {runDueAt(8, S::Waiting, at(1))});
    CHECK(describe(nextDeadline(store)) == describe(at(1)));
    writeRuns(store, quiet, {runDueAt(8, S::Waiting, std::nullopt)});
    CHECK(describe(nextDeadline(store)) == describe(at(3'000)));
    writeRuns(store, a, {runDueAt(1, S::TimedOut, at(3'000))});
    writeRuns(store, b, {runDueAt(1, S::Cancelled, at(4'000))});
    CHECK(describe(nextDeadline(store)) == "none");
  }

  SECTION("after a time: only later deadlines count, the time itself excluded") {
    CHECK(describe(nextDeadline(store, at(1'999))) == describe(at(2'000)));
    CHECK(describe(nextDeadline(store, at(2'000))) == describe(at(2'500)));
    CHECK(describe(nextDeadline(store, at(2'500))) == describe(at(3'000)));
    CHECK(describe(nextDeadline(store, at(3'000))) == "none");
    CHECK(describe(nextDeadline(store, at(-5'000))) == describe(at(2'000)));
  }

  SECTION("a deadline at or before the epoch is still a deadline") {
    writeRuns(store, quiet, {runDueAt(8, S::Waiting, Timestamp{})});
    CHECK(describe(nextDeadline(store)) == describe(Timestamp{}));
    writeRuns(store, b, {runDueAt(1, S::Waiting, Timestamp{} - std::chrono::microseconds(1))});
    CHECK(describe(nextDeadline(store)) == describe(Timestamp{} - std::chrono::microseconds(1)));
  }
}

inline void listDueReturnsDueWaitingRunsInDeadlineOrder(Store& store) {
  using S = StepRunStatus;
  CHECK(listDue(store, at(1'000'000'000), 100).empty());

  // Ties on at(2'000) across instances and within one, written out of key order;
  // runs that do not wait, or have no deadline, are never due.
  const InstanceId a = create(
      store, creationWith("Order", 1, InstanceStatus::Waiting, {runDueAt(1, S::Completed, at(5))}));
  const InstanceId b = create(
      store, creationWith("Invoice", 3, InstanceStatus::Waiting, {runDueAt(1, S::Ready, at(5))}));
  const InstanceId c = create(
      store, creationWith("Order", 2, InstanceStatus::Waiting, {runDueAt(1, S::Waiting, at(999))}));
  writeRuns(store, b,
            {runDueAt(3, S::Waiting, at(3'000)), runDueAt(2, S::TimedOut, at(500)),
             runDueAt(4, S::Waiting, at(2'000))});
  writeRuns(store, a,
            {runDueAt(5, S::Waiting, at(2'000)), runDueAt(4, S::Waiting, std::nullopt),
             runDueAt(3, S::Starting, at(6)), runDueAt(2, S::Waiting, at(1'000)),
             runDueAt(6, S::Waiting, at(2'000))});
  // What is due at at(2'000), deadline first, then (instance, run).
  const std::vector<StepRunKey> due = {{c, 1}, {a, 2}, {a, 5}, {a, 6}, {b, 4}};

  CHECK(describeKeys(listDue(store, at(2'000), 100)) == describeKeys(due));
  CHECK(describeKeys(listDue(store, at(2'000) - std::chrono::microseconds(1), 100)) ==
        describeKeys(std::vector<StepRunKey>(due.begin(), due.begin() + 2)));
  std::vector<StepRunKey> all = due;
  all.push_back({b, 3});
  CHECK(describeKeys(listDue(store, at(3'000), 100)) == describeKeys(all));
  CHECK(describeKeys(listDue(store, at(1'000'000'000), 100)) == describeKeys(all));
  CHECK(describeKeys(listDue(store, at(999), 100)) ==
        describeKeys(std::vector<StepRunKey>{{c, 1}}));
  CHECK(listDue(store, at(998), 100).empty());

  SECTION("the limit caps the list; full while that many more are due") {
    for (std::size_t limit : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{5},
                              std::size_t{6}, std::size_t{7}}) {
      INFO("limit " << limit);
      const std::vector<StepRunKey> head(
          all.begin(), all.begin() + static_cast<std::ptrdiff_t>(std::min(limit, all.size())));
      CHECK(describeKeys(listDue(store, at(3'000), limit)) == describeKeys(head));
    }
  }

  SECTION("each run carries its deadline; pages continue after an exclusive cursor") {
    const std::vector<DueRun> page = listDuePage(store, at(3'000), 100);
    REQUIRE(page.size() == all.size());
    const std::vector<Timestamp> deadlines = {at(999),   at(1'000), at(2'000),
                                              at(2'000), at(2'000), at(3'000)};
    for (std::size_t i = 0; i < page.size(); ++i) {
      CHECK(describe(page[i].deadline) == describe(deadlines[i]));
    }
    for (std::size_t size : {std::size_t{1}, std::size_t{2}, std::size_t{4}}) {
      INFO("pages of " << size);
      std::vector<StepRunKey> walked;
      std::optional<DueRun> after;
      for (int pages = 0; pages < 10; ++pages) {
        const std::vector<DueRun> next = listDuePage(store, at(3'000), size, after);
        for (const DueRun& due : next) walked.push_back(due.key);
        if (next.size() < size) break;
        after = next.back();
      }
      CHECK(describeKeys(walked) == describeKeys(all));
    }
    // The cursor orders by (deadline, instance, run): a cursor between two runs
    // with the same deadline splits them.
    CHECK(describeKeys(listDue(store, at(3'000), 100)) == describeKeys(all));
    const std::vector<DueRun> tail = listDuePage(store, at(3'000), 100, DueRun{{a, 5}, at(2'000)});
    std::vector<StepRunKey> tailKeys;
    for (const DueRun& due : tail) tailKeys.push_back(due.key);
    CHECK(describeKeys(tailKeys) == describeKeys(std::vector<StepRunKey>{{a, 6}, {b, 4}, {b, 3}}));
    // A cursor before every deadline is the first page; after the last, nothing.
    CHECK(listDuePage(store, at(3'000), 100, DueRun{{0, 0}, at(-1)}).size() == all.size());
    CHECK(listDuePage(store, at(3'000), 100, DueRun{{b, 3}, at(3'000)}).empty());
  }

  SECTION("a run that stops waiting or is extended leaves the list") {
    writeRuns(store, a, {runDueAt(2, S::TimedOut, at(1'000))});
    writeRuns(store, c, {runDueAt(1, S::Waiting, at(2'500))});  // a heartbeat
    CHECK(describeKeys(listDue(store, at(2'000), 100)) ==
          describeKeys(std::vector<StepRunKey>{{a, 5}, {a, 6}, {b, 4}}));
  }
}

// Parallel branches (DESIGN.md section 9): one instance with an open run on
// each of several branches. Each run is listed, found by its key and due on
// its own, keeps its branch, and leaves the lists alone when it closes.
inline void severalOpenRunsOfOneInstance(Store& store) {
  using S = StepRunStatus;
  auto onBranch = [](StepRunRecord run, std::int64_t branch) {
    run.kind = StepKind::Async;
    run.branch = branch;
    return run;
  };
  StepRunRecord split = stepRun(1, "Split", S::Completed);
  StepRunRecord hr = onBranch(keyedRun(2, "ApproveHr", S::Waiting, "ORDER-9"), 2);
  hr.deadline = at(100);
  StepRunRecord it = onBranch(keyedRun(3, "ApproveIt", S::Waiting, "ORDER-9"), 3);
  it.deadline = at(200);
  StepRunRecord finance = onBranch(stepRun(4, "ApproveFinance", S::Starting), 4);
  const InstanceId id =
      create(store, creationWith("Order", 1, InstanceStatus::Waiting, {split, hr, it, finance}));
  const InstanceId other =
      create(store, creationWith("Order", 1, InstanceStatus::Waiting,
                                 {onBranch(keyedRun(1, "ApproveHr", S::Waiting, "ORDER-9"), 0)}));

  for (StepRunRecord expected : {split, hr, it, finance}) {
    expected.instance = id;
    INFO("run " << expected.run);
    checkSame(loadRun(store, id, expected.run), expected);
  }
  CHECK(describeKeys(listWaiting(store, WaitingQuery{})) ==
        describeKeys(std::vector<std::string>{keyOf(id, 2), keyOf(id, 3), keyOf(other, 1)}));
  const auto rows = listWaiting(store, WaitingQuery{});
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].run.branch == 2);
  CHECK(rows[1].run.branch == 3);
  CHECK(rows[2].run.branch == 0);
  CHECK(describeKeys(findByKey(store, "Order", "ApproveIt", "ORDER-9")) ==
        describeKeys(std::vector<StepRunKey>{{id, 3}}));
  CHECK(describeKeys(findByKey(store, "Order", "ApproveHr", "ORDER-9")) ==
        describeKeys(std::vector<StepRunKey>{{id, 2}, {other, 1}}));
  CHECK(describeKeys(listDue(store, at(200), 100)) ==
        describeKeys(std::vector<StepRunKey>{{id, 2}, {id, 3}}));
  CHECK(describe(nextDeadline(store)) == describe(at(100)));

  // One branch's run closes; the others stay open, listed and due.
  StepRunRecord closed = hr;
  closed.instance = id;
  closed.status = S::Completed;
  closed.finishedAt = at(50);
  closed.branch = 7;  // a replaced run is written whole, its branch included
  writeRuns(store, id, {closed});
  CHECK(describeKeys(listWaiting(store, WaitingQuery{})) ==
        describeKeys(std::vector<std::string>{keyOf(id, 3), keyOf(other, 1)}));
  CHECK(describeKeys(findByKey(store, "Order", "ApproveHr", "ORDER-9")) ==
        describeKeys(std::vector<StepRunKey>{{other, 1}}));
  CHECK(describeKeys(listDue(store, at(200), 100)) ==
        describeKeys(std::vector<StepRunKey>{{id, 3}}));
  CHECK(describe(nextDeadline(store)) == describe(at(200)));
  CHECK(loadRun(store, id, 2).branch == 7);
  CHECK(loadRun(store, id, 3).branch == 3);
  CHECK(loadRun(store, id, 4).status == S::Starting);
}

inline void findByKeyReturnsWaitingRunsOfOneStepWithTheKey(Store& store) {
  using S = StepRunStatus;
  CHECK(findByKey(store, "Order", "Approve", "K-1").empty());
  const std::string nul("K\0-1", 4);
  const InstanceId a = create(store, creationWith("Order", 1, InstanceStatus::Waiting,
                                                  {keyedRun(1, "Approve", S::Waiting, "K-1"),
                                                   keyedRun(2, "Approve", S::Completed, "K-1"),
                                                   keyedRun(3, "Approve", S::Waiting, "K-1"),
                                                   keyedRun(4, "Approve", S::TimedOut, "K-1")}));
  const InstanceId b = create(store, creationWith("Order", 2, InstanceStatus::Waiting,
                                                  {keyedRun(1, "Approve", S::Waiting, "K-2"),
                                                   keyedRun(2, "Ship", S::Waiting, "K-1")}));
  const InstanceId c = create(store, creationWith("Invoice", 1, InstanceStatus::Waiting,
                                                  {keyedRun(1, "Approve", S::Waiting, "K-1")}));
  const InstanceId d = create(store, creationWith("Order", 1, InstanceStatus::Waiting,
                                                  {keyedRun(1, "Approve", S::Ready, "K-1"),
                                                   keyedRun(2, "Approve", S::Starting, "K-1")}));
  const InstanceId e = create(store, creationWith("Orders", 1, InstanceStatus::Waiting,
                                                  {keyedRun(1, "Approve", S::Waiting, "K-1")}));
  const InstanceId f = create(
      store,
      creationWith(
          "Order", 3, InstanceStatus::Waiting,
          {keyedRun(1, "Approve", S::Waiting, "k-1"), keyedRun(2, "Approve", S::Waiting, "K-1 "),
           keyedRun(3, "Approve", S::Waiting, "K-"), keyedRun(4, "Approve", S::Waiting, nul),
           keyedRun(5, "Approve", S::Waiting, ""), keyedRun(6, "approve", S::Waiting, "K-1")}));
  // Written after the others, into the first instance: (instance, run) order, not write order.
  writeRuns(store, a,
            {keyedRun(6, "Approve", S::Waiting, "K-1"), keyedRun(5, "Approve", S::Waiting, "K-1")});
  const std::vector<StepRunKey> k1 = {{a, 1}, {a, 3}, {a, 5}, {a, 6}};

  CHECK(describeKeys(findByKey(store, "Order", "Approve", "K-1")) == describeKeys(k1));
  CHECK(describeKeys(findByKey(store, "Order", "Approve", "K-2")) ==
        describeKeys(std::vector<StepRunKey>{{b, 1}}));
  CHECK(describeKeys(findByKey(store, "Order", "Ship", "K-1")) ==
        describeKeys(std::vector<StepRunKey>{{b, 2}}));
  CHECK(describeKeys(findByKey(store, "Invoice", "Approve", "K-1")) ==
        describeKeys(std::vector<StepRunKey>{{c, 1}}));
  CHECK(describeKeys(findByKey(store, "Orders", "Approve", "K-1")) ==
        describeKeys(std::vector<StepRunKey>{{e, 1}}));
  CHECK(describeKeys(findByKey(store, "Order", "Approve", nul)) ==
        describeKeys(std::vector<StepRunKey>{{f, 4}}));
  CHECK(describeKeys(findByKey(store, "Order", "Approve", "K-")) ==
        describeKeys(std::vector<StepRunKey>{{f, 3}}));
  CHECK(findByKey(store, "Order", "Approve", "K").empty());    // no prefix match
  CHECK(findByKey(store, "Order", "Approve", "K-3").empty());  // no such key
  CHECK(findByKey(store, "Order", "Unknown", "K-1").empty());  // no such step
  CHECK(findByKey(store, "Ord", "Approve", "K-1").empty());    // process matches exactly
  CHECK(findByKey(store, "Invoice", "Ship", "K-1").empty());   // another process's step
  // The empty key means "no key": it finds nothing, not the runs without one.
  CHECK(findByKey(store, "Order", "Approve", "").empty());

  SECTION("the limit caps the list; the default of 2 tells one from ambiguous") {
    for (std::size_t limit : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{3},
                              std::size_t{4}, std::size_t{5}}) {
      INFO("limit " << limit);
      const std::vector<StepRunKey> head(
          k1.begin(), k1.begin() + static_cast<std::ptrdiff_t>(std::min(limit, k1.size())));
      CHECK(describeKeys(findByKey(store, "Order", "Approve", "K-1", limit)) == describeKeys(head));
    }
    KeyQuery query;
    query.process = "Order";
    query.step = "Approve";
    query.key = "K-1";
    CHECK(describeKeys(valueOf(store.findByKey(query), "findByKey")) ==
          describeKeys(std::vector<StepRunKey>{{a, 1}, {a, 3}}));
  }

  SECTION("runs enter and leave as they start and stop waiting or change key") {
    writeRuns(
        store, a,
        {keyedRun(1, "Approve", S::Completed, "K-1"), keyedRun(3, "Approve", S::Waiting, "K-9")});
    writeRuns(store, d, {keyedRun(2, "Approve", S::Waiting, "K-1")});
    writeRuns(store, b, {keyedRun(1, "Approve", S::Waiting, "K-1")});
    CHECK(describeKeys(findByKey(store, "Order", "Approve", "K-1")) ==
          describeKeys(std::vector<StepRunKey>{{a, 5}, {a, 6}, {b, 1}, {d, 2}}));
    CHECK(describeKeys(findByKey(store, "Order", "Approve", "K-9")) ==
          describeKeys(std::vector<StepRunKey>{{a, 3}}));
  }
}

// A change set creating an Order (or `process`) instance that claims `key`.
inline ChangeSet claiming(std::string key, std::uint64_t fingerprint, std::string process = "Order",
                          int processVersion = 1) {
  ChangeSet set = creation(std::move(process), processVersion);
  set.startKey = StartKey{std::move(key), fingerprint};
  return set;
}

// The claim as findStartKey must report it.
inline std::string claimOf(InstanceId instance, int processVersion, std::uint64_t fingerprint) {
  return describe(
      std::optional<StartKeyRecord>(StartKeyRecord{instance, processVersion, fingerprint}));
}

// A fingerprint whose top bit is set, so that a store keeping it in a signed
// 64-bit column must keep all of its bits.
constexpr std::uint64_t kHighFingerprint = 0xfedcba9876543210ull;

inline void startKeysAreClaimedWithTheirInstance(Store& store) {
  ChangeSet first = claiming("order-17", kHighFingerprint, "Order", 3);
  first.history = {historyEvent(HistoryKind::Started, 0, "", "version 3", 1)};
  const InstanceId id = create(store, first);
  CHECK(describe(findStartKey(store, "Order", "order-17")) == claimOf(id, 3, kHighFingerprint));
  // The instance is written as without a key.
  checkSame(load(store, id), InstanceSnapshot{createdRecord(first, id), first.fields});
  checkSame(loadHistory(store, id), ofInstance(first.history, id));

  SECTION("keys and processes are exact bytes; an absent pair is empty, not an error") {
    const InstanceId upper = create(store, claiming("ORDER-17", 5));
    const InstanceId nul = create(store, claiming(std::string("order-17\0", 9), 6));
    CHECK(describe(findStartKey(store, "Order", "ORDER-17")) == claimOf(upper, 1, 5));
    CHECK(describe(findStartKey(store, "Order", std::string("order-17\0", 9))) ==
          claimOf(nul, 1, 6));
    CHECK(describe(findStartKey(store, "Order", "order-17")) == claimOf(id, 3, kHighFingerprint));
    for (const auto& [process, key] :
         std::vector<std::pair<std::string, std::string>>{{"Order", "order-18"},
                                                          {"Order", "order-1"},
                                                          {"Order", ""},
                                                          {"order", "order-17"},
                                                          {"Invoice", "order-17"},
                                                          {"", ""}}) {
      INFO("process " << describeBytes(process) << ", key " << describeBytes(key));
      CHECK(codeOf(store.findStartKey(process, key)) == "ok");
      CHECK(describe(findStartKey(store, process, key)) == "none");
    }
  }
  SECTION("a create without a key claims none") {
    const InstanceId plain = create(store, creation());
    CHECK(plain > id);
    CHECK(describe(findStartKey(store, "Order", "")) == "none");
  }
  SECTION("an update ignores a start key: only a create claims one") {
    ChangeSet update = updateOf(load(store, id));
    update.startKey = StartKey{"order-99", 1};
    CHECK(describe(applyOne(store, update).status) == "Applied");
    CHECK(describe(findStartKey(store, "Order", "order-99")) == "none");
    CHECK(describe(findStartKey(store, "Order", "order-17")) == claimOf(id, 3, kHighFingerprint));
  }
}

inline void aTakenStartKeyWritesNothing(Store& store) {
  ChangeSet first = claiming("order-17", 11);
  first.history = {historyEvent(HistoryKind::Started, 0, "", "first", 1)};
  const InstanceId holder = create(store, first);
  const InstanceSnapshot held = load(store, holder);

  ChangeSet again = claiming("order-17", 22, "Order", 2);
  again.fields = Fields{{"OrderId", "A-2"}, {"Extra", true}};
  again.stepRuns.push_back(stepRun(2, "Notify", StepRunStatus::Waiting));
  again.history = {historyEvent(HistoryKind::Started, 0, "", "again", 2)};

  SECTION("alone: KeyTaken with the holder's id") {
    const ApplyResult taken = applyOne(store, again);
    CHECK(describe(taken.status) == "KeyTaken");
    CHECK(taken.instance == holder);
    checkSame(load(store, holder), held);
  }
  SECTION("in a batch, between sets that apply") {
    ChangeSet before = updateOf(held);
    before.fields = Fields{{"OrderId", "updated"}};
    std::vector<ChangeSet> batch{before, again, creation("Order", 1, {{"OrderId", "after"}})};
    const std::vector<ApplyResult> results = applyBatch(store, std::move(batch));
    CHECK(describe(results[0].status) == "Applied");
    CHECK(describe(results[1].status) == "KeyTaken");
    CHECK(results[1].instance == holder);
    CHECK(describe(results[2].status) == "Applied");
    CHECK(results[2].instance > holder);
    checkSameFields(load(store, holder).fields, Fields{{"OrderId", "updated"}});
    checkSameFields(load(store, results[2].instance).fields, Fields{{"OrderId", "after"}});
  }

  // The key keeps its first claim, and nothing of the refused set is anywhere:
  // not on the holder, and no instance of its version 2, fields or history.
  CHECK(describe(findStartKey(store, "Order", "order-17")) == claimOf(holder, 1, 11));
  checkSame(loadHistory(store, holder), ofInstance(first.history, holder));
  CHECK(codeOf(store.loadStepRun(holder, 2)) == "NotFound");
  CHECK(describe(listRunning(store, RunningQuery{"Order", 2, 0, 100})) ==
        describe(std::vector<InstanceId>{}));
  for (InstanceId other : listRunning(store, RunningQuery{"Order", 1, 0, 100})) {
    if (other == holder) continue;
    INFO("instance " << other);
    CHECK(loadHistory(store, other).empty());
    CHECK(load(store, other).fields.find("Extra") == nullptr);
  }
  // The store goes on creating.
  const InstanceId next = create(store, creation());
  CHECK(next > holder);
  CHECK(codeOf(store.loadStepRun(next, 2)) == "NotFound");
}

inline void aStartKeyIsScopedByProcess(Store& store) {
  const InstanceId order = create(store, claiming("shared-key", 1, "Order"));
  const InstanceId invoice = create(store, claiming("shared-key", 2, "Invoice"));
  CHECK(invoice != order);
  CHECK(describe(findStartKey(store, "Order", "shared-key")) == claimOf(order, 1, 1));
  CHECK(describe(findStartKey(store, "Invoice", "shared-key")) == claimOf(invoice, 1, 2));
  const ApplyResult taken = applyOne(store, claiming("shared-key", 3, "Invoice"));
  CHECK(describe(taken.status) == "KeyTaken");
  CHECK(taken.instance == invoice);
}

inline void twoClaimsOfOneKeyInOneBatch(Store& store) {
  std::vector<ChangeSet> batch{claiming("k-1", 1), claiming("k-1", 2), claiming("k-2", 3),
                               claiming("k-2", 3)};
  const std::vector<ApplyResult> results = applyBatch(store, std::move(batch));
  CHECK(describe(results[0].status) == "Applied");
  CHECK(describe(results[1].status) == "KeyTaken");
  CHECK(results[1].instance == results[0].instance);
  CHECK(describe(results[2].status) == "Applied");
  CHECK(describe(results[3].status) == "KeyTaken");
  CHECK(results[3].instance == results[2].instance);
  CHECK(describe(findStartKey(store, "Order", "k-1")) == claimOf(results[0].instance, 1, 1));
  CHECK(describe(findStartKey(store, "Order", "k-2")) == claimOf(results[2].instance, 1, 3));
  CHECK(describe(listRunning(store, RunningQuery{"Order", 1, 0, 100})) ==
        describe(std::vector<InstanceId>{results[0].instance, results[2].instance}));
}

inline void concurrentClaimsOfOneKeyCreateOne(Store& store) {
  constexpr int kKeys = 25;
  // results[t][k]: thread t's claim of key k.
  std::vector<std::vector<ApplyResult>> results(kThreads);
  std::vector<std::string> errors(kThreads);
  StartGate gate(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      gate.arriveAndWait();
      for (int k = 0; k < kKeys; ++k) {
        std::vector<ChangeSet> batch;
        batch.push_back(claiming("key-" + std::to_string(k), static_cast<std::uint64_t>(k)));
        auto applied = store.apply(std::move(batch));
        if (!applied || applied->size() != 1) {
          errors[t] = applied ? "apply answered " + describe(*applied) : applied.error().toString();
          return;
        }
        results[t].push_back(applied->front());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    REQUIRE(errors[t] == "");
  }
  std::vector<InstanceId> holders;
  for (int k = 0; k < kKeys; ++k) {
    INFO("key-" << k);
    std::optional<InstanceId> holder;
    int applied = 0;
    for (int t = 0; t < kThreads; ++t) {
      if (results[t][k].status == ApplyStatus::Applied) {
        ++applied;
        holder = results[t][k].instance;
      }
    }
    REQUIRE(applied == 1);
    for (int t = 0; t < kThreads; ++t) {
      INFO("thread " << t);
      CHECK(results[t][k].instance == *holder);
      if (results[t][k].status != ApplyStatus::Applied) {
        CHECK(describe(results[t][k].status) == "KeyTaken");
      }
    }
    CHECK(describe(findStartKey(store, "Order", "key-" + std::to_string(k))) ==
          claimOf(*holder, 1, static_cast<std::uint64_t>(k)));
    holders.push_back(*holder);
  }
  std::sort(holders.begin(), holders.end());
  CHECK(describe(listRunning(store, RunningQuery{"Order", 1, 0, 1000})) == describe(holders));
}

inline void concurrentCreatesGetDistinctIds(Store& store) {
  std::vector<std::vector<InstanceId>> ids(kThreads);
  std::vector<std::string> errors(kThreads);
  StartGate gate(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      gate.arriveAndWait();
      for (int i = 0; i < kCallsPerThread; ++i) {
        std::vector<ChangeSet> batch;
        batch.push_back(creation("Order", 1, {{"Thread", t}, {"Index", i}}));
        auto results = store.apply(std::move(batch));
        if (!results) {
          errors[t] = results.error().toString();
          return;
        }
        if (results->size() != 1 || results->front().status != ApplyStatus::Applied) {
          errors[t] = "apply answered " + describe(*results);
          return;
        }
        ids[t].push_back(results->front().instance);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    CHECK(errors[t] == "");
  }
  std::set<InstanceId> distinct;
  for (const auto& perThread : ids) distinct.insert(perThread.begin(), perThread.end());
  CHECK(distinct.size() == static_cast<std::size_t>(kThreads * kCallsPerThread));
  CHECK(*distinct.begin() > 0);
  // Each id holds the fields of the create that got it.
  int mismatched = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (std::size_t i = 0; i < ids[t].size(); ++i) {
      auto snapshot = store.loadInstance(ids[t][i]);
      if (!snapshot || snapshot->record.version != 1 ||
          snapshot->fields != Fields{{"Thread", t}, {"Index", static_cast<std::int64_t>(i)}}) {
        ++mismatched;
      }
    }
  }
  CHECK(mismatched == 0);
}

inline void concurrentGuardedIncrementsLoseNone(Store& store) {
  const InstanceId id = create(store, creation("Order", 1, {{"Counter", 0}}));
  // Generous: a thread meets at most one conflict per increment of another thread.
  constexpr int kMaxAttempts = 100 * kThreads * kCallsPerThread;
  std::vector<std::string> errors(kThreads);
  std::atomic<int> conflicts{0};
  StartGate gate(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      gate.arriveAndWait();
      for (int i = 0; i < kCallsPerThread; ++i) {
        for (int attempt = 0;; ++attempt) {
          if (attempt == kMaxAttempts) {
            errors[t] = "an increment still conflicts after " + std::to_string(attempt) + " tries";
            return;
          }
          auto current = store.loadInstance(id);
          if (!current) {
            errors[t] = current.error().toString();
            return;
          }
          ChangeSet set = updateOf(*current);
          set.fields = Fields{{"Counter", current->fields.getOr<std::int64_t>("Counter", -1) + 1}};
          std::vector<ChangeSet> batch;
          batch.push_back(std::move(set));
          auto results = store.apply(std::move(batch));
          if (!results) {
            errors[t] = results.error().toString();
            return;
          }
          if (results->size() != 1) {
            errors[t] = "apply answered " + describe(*results);
            return;
          }
          if (results->front().status == ApplyStatus::Applied) break;
          ++conflicts;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    CHECK(errors[t] == "");
  }
  const InstanceSnapshot after = load(store, id);
  INFO(conflicts.load() << " conflicts were retried");
  CHECK(after.fields.getOr<std::int64_t>("Counter", -1) == kThreads * kCallsPerThread);
  CHECK(after.record.version == 1 + kThreads * kCallsPerThread);
}

// --- several hosts on one store: leases, declarations, the change mark -------------------

// What the store must hold after applying the update `set`.
inline InstanceRecord updatedRecord(const ChangeSet& set) {
  InstanceRecord record = set.instance;
  record.version = set.expectedVersion + 1;
  return record;
}

// Applies an update of instance `id` that sets its status and its lease.
inline void writeLease(Store& store, InstanceId id, InstanceStatus status, std::string owner,
                       std::optional<Timestamp> expiry) {
  ChangeSet set = updateOf(load(store, id));
  set.instance.status = status;
  set.instance.leaseOwner = std::move(owner);
  set.instance.leaseExpiry = expiry;
  REQUIRE(describe(applyOne(store, set).status) == "Applied");
}

inline void leasesRoundTrip(Store& store) {
  using I = InstanceStatus;
  const std::vector<ChangeSet> sets = {
      leasedCreation("host-a", at(60'000'000)),                // leased
      leasedCreation("", at(5)),                               // offered
      leasedCreation(std::string("h\0st\xff \n", 7), at(-3)),  // an owner of any bytes
      leasedCreation("host-b", Timestamp{}),  // an expiry at the epoch is an expiry
      leasedCreation("host-c", Timestamp{} - std::chrono::microseconds(1)),
      leasedCreation("", std::nullopt),             // no lease
      leasedCreation("host-d", std::nullopt),       // an owner alone: kept as written
      leasedCreation("host-e", at(7), I::Waiting),  // on a Waiting instance: kept as written
  };
  std::vector<InstanceId> ids;
  for (const ChangeSet& set : sets) ids.push_back(create(store, set));
  for (std::size_t i = 0; i < sets.size(); ++i) {
    INFO("instance " << ids[i]);
    checkSame(load(store, ids[i]),
              InstanceSnapshot{createdRecord(sets[i], ids[i]), sets[i].fields});
  }
  // No expiry and an expiry at the epoch are two things.
  CHECK(describe(load(store, ids[5]).record.leaseExpiry) == "none");
  CHECK(describe(load(store, ids[3]).record.leaseExpiry) == describe(Timestamp{}));

  SECTION("an update renews, moves, offers and clears a lease, and sets one where none was") {
    const auto step = [&](InstanceId id, I status, std::string owner,
                          std::optional<Timestamp> expiry) {
      ChangeSet set = updateOf(load(store, id));
      set.instance.status = status;
      set.instance.leaseOwner = std::move(owner);
      set.instance.leaseExpiry = expiry;
      REQUIRE(describe(applyOne(store, set).status) == "Applied");
      checkSame(load(store, id).record, updatedRecord(set));
    };
    step(ids[0], I::Running, "host-a", at(90'000'000));   // renewed
    step(ids[0], I::Running, "host-b", at(120'000'000));  // taken over
    step(ids[0], I::Running, "", at(120'000'000));        // offered
    step(ids[0], I::Waiting, "", std::nullopt);           // cleared as it waits
    step(ids[5], I::Running, "host-f", Timestamp{});      // gained
    step(ids[3], I::Running, "host-b", std::nullopt);     // expiry cleared, owner kept
  }

  SECTION("a Conflict leaves the lease as it was") {
    const InstanceSnapshot original = load(store, ids[0]);
    REQUIRE(describe(applyOne(store, updateOf(original)).status) == "Applied");
    const InstanceSnapshot current = load(store, ids[0]);
    ChangeSet stale = updateOf(original);
    stale.instance.leaseOwner = "host-late";
    stale.instance.leaseExpiry = at(1);
    CHECK(describe(applyOne(store, stale).status) == "Conflict");
    checkSame(load(store, ids[0]), current);
  }
}

inline void nextLeaseExpiryIsTheEarliestOfRunningInstances(Store& store) {
  using I = InstanceStatus;
  CHECK(describe(nextLeaseExpiry(store)) == "none");
  // Running without an expiry, and earlier expiries on instances that do not run.
  const InstanceId quiet = create(store, leasedCreation("host-a", std::nullopt));
  std::int64_t earlier = 10;
  for (I status : {I::Waiting, I::Completed, I::Failed, I::Cancelled}) {
    create(store, leasedCreation("host-a", at(earlier++), status));
  }
  CHECK(describe(nextLeaseExpiry(store)) == "none");

  const InstanceId a = create(store, leasedCreation("host-a", at(3'000)));
  const InstanceId b = create(store, leasedCreation("", at(2'000), I::Running, "Invoice", 2));
  const InstanceId c = create(store, leasedCreation("host-b", at(2'500)));
  CHECK(describe(nextLeaseExpiry(store)) == describe(at(2'000)));

  SECTION("after a time: only later expiries count, the time itself excluded") {
    CHECK(describe(nextLeaseExpiry(store, at(1'999))) == describe(at(2'000)));
    CHECK(describe(nextLeaseExpiry(store, at(2'000))) == describe(at(2'500)));
    CHECK(describe(nextLeaseExpiry(store, at(2'500))) == describe(at(3'000)));
    CHECK(describe(nextLeaseExpiry(store, at(3'000))) == "none");
    CHECK(describe(nextLeaseExpiry(store, at(-5'000))) == describe(at(2'000)));
  }

  SECTION("it follows updates: cleared, no longer Running, gained, Running again") {
    writeLease(store, b, I::Running, "", std::nullopt);
    CHECK(describe(nextLeaseExpiry(store)) == describe(at(2'500)));
    writeLease(store, c, I::Waiting, "host-b", at(2'500));  // not Running: not counted
    CHECK(describe(nextLeaseExpiry(store)) == describe(at(3'000)));
    writeLease(store, quiet, I::Running, "host-c", at(1));
    CHECK(describe(nextLeaseExpiry(store)) == describe(at(1)));
    writeLease(store, quiet, I::Running, "host-c", at(4'000));  // renewed
    CHECK(describe(nextLeaseExpiry(store)) == describe(at(3'000)));
    writeLease(store, c, I::Running, "host-b", at(2'500));
    CHECK(describe(nextLeaseExpiry(store)) == describe(at(2'500)));
    writeLease(store, a, I::Completed, "", std::nullopt);
    writeLease(store, c, I::Failed, "host-b", at(2'500));
    writeLease(store, quiet, I::Cancelled, "host-c", at(4'000));
    CHECK(describe(nextLeaseExpiry(store)) == "none");
  }

  SECTION("a host leaves its own leases out, never an offer") {
    CHECK(describe(nextLeaseExpiry(store, Timestamp::min(), "host-a")) == describe(at(2'000)));
    CHECK(describe(nextLeaseExpiry(store, at(2'000), "host-b")) == describe(at(3'000)));
    CHECK(describe(nextLeaseExpiry(store, at(2'000), "host-a")) == describe(at(2'500)));
    CHECK(describe(nextLeaseExpiry(store, at(2'500), "host-a")) == "none");
    writeLease(store, c, I::Running, "host-a", at(2'500));
    CHECK(describe(nextLeaseExpiry(store, at(2'000), "host-a")) == "none");
    CHECK(describe(nextLeaseExpiry(store, at(2'000), "host-b")) == describe(at(2'500)));
  }

  SECTION("an expiry at or before the epoch is still an expiry") {
    writeLease(store, quiet, I::Running, "host-c", Timestamp{});
    CHECK(describe(nextLeaseExpiry(store)) == describe(Timestamp{}));
    writeLease(store, b, I::Running, "", Timestamp{} - std::chrono::microseconds(1));
    CHECK(describe(nextLeaseExpiry(store)) == describe(Timestamp{} - std::chrono::microseconds(1)));
  }
}

inline void listExpiredLeasesPagesByExpiryAndInstance(Store& store) {
  using I = InstanceStatus;
  CHECK(listExpiredLeases(store, at(1'000'000'000)).empty());
  // Ties on at(2'000), offered instances among them, and instances never
  // listed: no expiry, not Running.
  const InstanceId a = create(store, leasedCreation("host-a", at(2'000)));
  const InstanceId b = create(store, leasedCreation("host-b", at(1'000), I::Running, "Invoice", 3));
  create(store, leasedCreation("host-a", at(500), I::Waiting));
  const InstanceId c = create(store, leasedCreation("", at(2'000), I::Running, "Invoice", 2));
  const InstanceId later = create(store, leasedCreation("", std::nullopt));
  const InstanceId d = create(store, leasedCreation("host-c", at(3'000)));
  const InstanceId e = create(store, leasedCreation("host-a", at(999)));
  create(store, leasedCreation("host-a", at(600), I::Completed));
  create(store, leasedCreation("host-a", at(700), I::Cancelled));
  // Leased after the later instances were written: id order, not write order.
  writeLease(store, later, I::Running, "host-d", at(2'000));

  const std::vector<ExpiredLease> all = {
      {e, "Order", 1, "host-a", at(999)},       {b, "Invoice", 3, "host-b", at(1'000)},
      {a, "Order", 1, "host-a", at(2'000)},     {c, "Invoice", 2, "", at(2'000)},
      {later, "Order", 1, "host-d", at(2'000)}, {d, "Order", 1, "host-c", at(3'000)},
  };
  const auto head = [&](std::size_t n) {
    return std::vector<ExpiredLease>(
        all.begin(), all.begin() + static_cast<std::ptrdiff_t>(std::min(n, all.size())));
  };
  CHECK(describe(listExpiredLeases(store, at(2'000))) == describe(head(5)));
  CHECK(describe(listExpiredLeases(store, at(2'000) - std::chrono::microseconds(1))) ==
        describe(head(2)));
  CHECK(describe(listExpiredLeases(store, at(3'000))) == describe(all));
  CHECK(describe(listExpiredLeases(store, at(1'000'000'000))) == describe(all));
  CHECK(describe(listExpiredLeases(store, at(999))) == describe(head(1)));
  CHECK(listExpiredLeases(store, at(998)).empty());

  SECTION("the limit caps the page; full while that many more have expired") {
    for (std::size_t limit : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{5},
                              std::size_t{6}, std::size_t{7}}) {
      INFO("limit " << limit);
      CHECK(describe(listExpiredLeases(store, at(3'000), limit)) == describe(head(limit)));
    }
  }

  SECTION("pages continue after an exclusive (expiry, instance) cursor") {
    for (std::size_t size : {std::size_t{1}, std::size_t{2}, std::size_t{4}}) {
      INFO("pages of " << size);
      std::vector<ExpiredLease> walked;
      std::optional<LeaseCursor> after;
      for (int pages = 0; pages < 10; ++pages) {
        const std::vector<ExpiredLease> page = listExpiredLeases(store, at(3'000), size, after);
        walked.insert(walked.end(), page.begin(), page.end());
        if (page.size() < size) break;
        after = page.back().cursor();
      }
      CHECK(describe(walked) == describe(all));
    }
    // A cursor between two instances with the same expiry splits them.
    CHECK(describe(listExpiredLeases(store, at(3'000), 100, LeaseCursor{at(2'000), a})) ==
          describe(std::vector<ExpiredLease>(all.begin() + 3, all.end())));
    // A cursor need not name a leased instance.
    CHECK(describe(listExpiredLeases(store, at(3'000), 100, LeaseCursor{at(1'500), 0})) ==
          describe(std::vector<ExpiredLease>(all.begin() + 2, all.end())));
    // Before every expiry: the first page; after the last: nothing.
    CHECK(describe(listExpiredLeases(store, at(3'000), 100, LeaseCursor{at(-1), 0})) ==
          describe(all));
    CHECK(listExpiredLeases(store, at(3'000), 100, LeaseCursor{at(3'000), d}).empty());
  }

  SECTION("a lease renewed, cleared, or on an instance that stops running leaves the list") {
    writeLease(store, a, I::Running, "host-a", at(5'000));
    writeLease(store, b, I::Running, "", std::nullopt);
    writeLease(store, c, I::Completed, "", at(2'000));
    CHECK(describe(listExpiredLeases(store, at(2'000))) ==
          describe(std::vector<ExpiredLease>{all[0], all[4]}));
  }
}

inline void declareStoresTheFirstDeclarationOfAVersion(Store& store) {
  CHECK(describe(loadDeclaration(store, "Order", 1)) == "none");
  const ProcessDeclaration first = processDeclaration("Order", 1,
                                                      {{"Amount", Type::Double},
                                                       {"Items", Type::Int64},
                                                       {"OrderId", Type::String},
                                                       {"Status", Type::String},
                                                       {"Urgent", Type::Bool}});
  checkSame(declare(store, first), first);
  checkSame(loadDeclaration(store, "Order", 1), std::optional<ProcessDeclaration>(first));

  SECTION("the same declaration again returns it") {
    checkSame(declare(store, first), first);
    checkSame(loadDeclaration(store, "Order", 1), std::optional<ProcessDeclaration>(first));
  }

  SECTION("another declaration of the version returns the first, which stays") {
    ProcessDeclaration retyped = first;
    retyped.fields[0].type = Type::String;
    ProcessDeclaration more = first;
    more.fields.push_back({"Zone", Type::String});
    ProcessDeclaration fewer = first;
    fewer.fields.pop_back();
    for (const ProcessDeclaration& other : {retyped, more, fewer, processDeclaration("Order", 1)}) {
      INFO("declaring " << describe(other));
      checkSame(declare(store, other), first);
    }
    checkSame(loadDeclaration(store, "Order", 1), std::optional<ProcessDeclaration>(first));
  }

  SECTION("each (process, version) is declared apart; a version without fields is declared") {
    const ProcessDeclaration empty = processDeclaration("Order", 2);
    checkSame(declare(store, empty), empty);
    checkSame(loadDeclaration(store, "Order", 2), std::optional<ProcessDeclaration>(empty));
    const ProcessDeclaration lower = processDeclaration("order", 1, {{"Id", Type::Int64}});
    checkSame(declare(store, lower), lower);
    checkSame(loadDeclaration(store, "Order", 1), std::optional<ProcessDeclaration>(first));
    checkSame(loadDeclaration(store, "order", 1), std::optional<ProcessDeclaration>(lower));
    for (const auto& [process, version] : std::vector<std::pair<std::string, int>>{
             {"Order", 3}, {"Order", 0}, {"Order", -1}, {"Orders", 1}, {"Ord", 1}, {"", 1}}) {
      INFO("process " << describeBytes(process) << ", version " << version);
      CHECK(codeOf(store.loadDeclaration(process, version)) == "ok");
      CHECK(describe(loadDeclaration(store, process, version)) == "none");
    }
  }

  SECTION("fields given in any order come back in name order; names are exact bytes") {
    const ProcessDeclaration given = processDeclaration(std::string("Inv\0oice\xff", 9), 4,
                                                        {{"b", Type::Int64},
                                                         {"\xc3\xa9t\xc3\xa9", Type::Double},
                                                         {std::string("a\0z", 3), Type::Bool},
                                                         {"A", Type::String},
                                                         {"a", Type::Null}});
    const ProcessDeclaration sorted = processDeclaration(given.process, 4,
                                                         {{"A", Type::String},
                                                          {"a", Type::Null},
                                                          {std::string("a\0z", 3), Type::Bool},
                                                          {"b", Type::Int64},
                                                          {"\xc3\xa9t\xc3\xa9", Type::Double}});
    checkSame(declare(store, given), sorted);
    checkSame(loadDeclaration(store, given.process, 4), std::optional<ProcessDeclaration>(sorted));
    checkSame(declare(store, sorted), sorted);
    CHECK(describe(loadDeclaration(store, "Inv", 4)) == "none");
  }
}

inline void declareRefusesInvalidDeclarationsWritingNothing(Store& store) {
  const std::uint64_t before = changeMark(store);
  const std::vector<std::pair<std::string, ProcessDeclaration>> refused = {
      {"an empty process name", processDeclaration("", 1, {{"Id", Type::Int64}})},
      {"version 0", processDeclaration("Order", 0)},
      {"a negative version", processDeclaration("Order", -1, {{"Id", Type::Int64}})},
      {"an empty field name",
       processDeclaration("Order", 1, {{"Id", Type::Int64}, {"", Type::Bool}})},
      {"a repeated field name",
       processDeclaration("Order", 1,
                          {{"Id", Type::Int64}, {"Note", Type::String}, {"Id", Type::Int64}})},
      {"a type that is no Type", processDeclaration("Order", 1, {{"Id", static_cast<Type>(42)}})},
  };
  for (const auto& [why, bad] : refused) {
    INFO(why);
    CHECK(codeOf(store.declare(bad)) == "InvalidArgument");
    CHECK(describe(loadDeclaration(store, bad.process, bad.version)) == "none");
  }
  CHECK(changeMark(store) == before);
  // The refusals claimed nothing: the version is declared by the first valid call.
  const ProcessDeclaration valid = processDeclaration("Order", 1, {{"Id", Type::Int64}});
  checkSame(declare(store, valid), valid);
}

inline void declaredStepsRoundTripInNameOrder(Store& store) {
  using Int = std::numeric_limits<std::int64_t>;
  // Out of order; a step may share a field's name; names are exact bytes;
  // heartbeats from none and zero to the largest.
  const std::vector<FieldDeclaration> fields{{"Approve", Type::Bool}, {"OrderId", Type::String}};
  const ProcessDeclaration given =
      processDeclaration("Order", 1, fields,
                         {stepDeclaration("Ship", StepKind::Sync),
                          stepDeclaration("Approve", StepKind::Async, 30'000'000),
                          stepDeclaration(std::string("a\0z", 3), StepKind::Async, 0),
                          stepDeclaration("approve", StepKind::Async, Int::max()),
                          stepDeclaration("\xc3\xa9tape\xff", StepKind::Sync, 1),
                          stepDeclaration("A", StepKind::Async)});
  const ProcessDeclaration sorted =
      processDeclaration("Order", 1, fields,
                         {stepDeclaration("A", StepKind::Async),
                          stepDeclaration("Approve", StepKind::Async, 30'000'000),
                          stepDeclaration("Ship", StepKind::Sync),
                          stepDeclaration(std::string("a\0z", 3), StepKind::Async, 0),
                          stepDeclaration("approve", StepKind::Async, Int::max()),
                          stepDeclaration("\xc3\xa9tape\xff", StepKind::Sync, 1)});
  checkSame(declare(store, given), sorted);
  checkSame(loadDeclaration(store, "Order", 1), std::optional<ProcessDeclaration>(sorted));
  checkSame(declare(store, sorted), sorted);

  SECTION("another declaration of the version returns the first one's steps") {
    ProcessDeclaration retimed = sorted;
    retimed.steps[1].heartbeat = std::chrono::microseconds(60'000'000);
    ProcessDeclaration rekinded = sorted;
    rekinded.steps[2].kind = StepKind::Async;
    ProcessDeclaration more = sorted;
    more.steps.push_back(stepDeclaration("Zone", StepKind::Sync));
    for (const ProcessDeclaration& other :
         {retimed, rekinded, more, processDeclaration("Order", 1, fields)}) {
      INFO("declaring " << describe(other));
      checkSame(declare(store, other), sorted);
    }
    checkSame(loadDeclaration(store, "Order", 1), std::optional<ProcessDeclaration>(sorted));
  }

  SECTION("each version has its own steps; a version may have steps without fields") {
    const ProcessDeclaration stepsOnly =
        processDeclaration("Order", 2, {}, {stepDeclaration("Submit", StepKind::Sync, 5)});
    checkSame(declare(store, stepsOnly), stepsOnly);
    checkSame(loadDeclaration(store, "Order", 2), std::optional<ProcessDeclaration>(stepsOnly));
    checkSame(loadDeclaration(store, "Order", 1), std::optional<ProcessDeclaration>(sorted));
  }

  SECTION("a version first declared without steps keeps none") {
    const ProcessDeclaration none = processDeclaration("Order", 3, fields);
    checkSame(declare(store, none), none);
    checkSame(declare(store, processDeclaration("Order", 3, fields, sorted.steps)), none);
    checkSame(loadDeclaration(store, "Order", 3), std::optional<ProcessDeclaration>(none));
  }
}

inline void declareRefusesInvalidStepsWritingNothing(Store& store) {
  using Int = std::numeric_limits<std::int64_t>;
  const std::uint64_t before = changeMark(store);
  const std::vector<FieldDeclaration> fields{{"OrderId", Type::String}};
  const StepDeclaration approve = stepDeclaration("Approve", StepKind::Async, 30'000'000);
  const auto withSteps = [&](std::vector<StepDeclaration> steps) {
    return processDeclaration("Order", 1, fields, std::move(steps));
  };
  const std::vector<std::pair<std::string, ProcessDeclaration>> refused = {
      {"an empty step name", withSteps({approve, stepDeclaration("", StepKind::Sync)})},
      {"a repeated step name", withSteps({approve, stepDeclaration("Ship", StepKind::Sync),
                                          stepDeclaration("Approve", StepKind::Sync)})},
      {"a kind just past StepKind's last",
       withSteps({approve, stepDeclaration("Ship", static_cast<StepKind>(2))})},
      {"a kind that is no StepKind",
       withSteps({stepDeclaration("Ship", static_cast<StepKind>(42))})},
      {"a negative kind", withSteps({stepDeclaration("Ship", static_cast<StepKind>(-1))})},
      {"a heartbeat of -1 us", withSteps({approve, stepDeclaration("Ship", StepKind::Sync, -1)})},
      {"the most negative heartbeat",
       withSteps({stepDeclaration("Ship", StepKind::Async, Int::min())})},
  };
  for (const auto& [why, bad] : refused) {
    INFO(why);
    CHECK(codeOf(store.declare(bad)) == "InvalidArgument");
    CHECK(describe(loadDeclaration(store, bad.process, bad.version)) == "none");
  }
  CHECK(changeMark(store) == before);
  // The refusals claimed nothing: the version is declared by the first valid call.
  const ProcessDeclaration valid = withSteps({approve});
  checkSame(declare(store, valid), valid);
}

inline void concurrentFirstDeclarationsAgreeOnOne(Store& store) {
  constexpr int kVersions = 25;
  // results[t][v]: what thread t's declaration of version v + 1 returned.
  std::vector<std::vector<ProcessDeclaration>> results(kThreads);
  std::vector<std::string> errors(kThreads);
  StartGate gate(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      gate.arriveAndWait();
      for (int v = 1; v <= kVersions; ++v) {
        // Each thread declares the version differently, so the winner shows.
        auto stored = store.declare(
            processDeclaration("Order", v, {{"ByThread" + std::to_string(t), Type::Int64}}));
        if (!stored) {
          errors[t] = stored.error().toString();
          return;
        }
        results[t].push_back(std::move(*stored));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    REQUIRE(errors[t] == "");
  }
  for (int v = 1; v <= kVersions; ++v) {
    INFO("version " << v);
    const std::optional<ProcessDeclaration> stored = loadDeclaration(store, "Order", v);
    REQUIRE(stored.has_value());
    REQUIRE(stored->fields.size() == 1);
    CHECK(stored->fields[0].name.rfind("ByThread", 0) == 0);
    for (int t = 0; t < kThreads; ++t) {
      INFO("thread " << t);
      checkSame(results[t][static_cast<std::size_t>(v - 1)], *stored);
    }
  }
}

inline void changeMarkChangesWithEveryWrite(Store& store) {
  std::uint64_t mark = changeMark(store);
  // Whether the mark differs from the last one seen; remembers the new one.
  const auto changed = [&] {
    const std::uint64_t next = changeMark(store);
    const bool differs = next != mark;
    mark = next;
    return differs;
  };
  CHECK_FALSE(changed());

  const InstanceId id = create(store, claiming("k-1", 1));
  CHECK(changed());
  CHECK_FALSE(changed());

  // Reads change nothing.
  (void)load(store, id);
  (void)loadRun(store, id, 1);
  (void)listWaiting(store, WaitingQuery{});
  (void)listRunning(store, runningQuery("Order", 1));
  (void)nextDeadline(store);
  (void)listDue(store, at(1'000'000), 10);
  (void)findByKey(store, "Order", "Submit", "k-1");
  (void)loadHistory(store, id);
  (void)findStartKey(store, "Order", "k-1");
  (void)nextLeaseExpiry(store);
  (void)listExpiredLeases(store, at(1'000'000));
  (void)loadDeclaration(store, "Order", 1);
  CHECK_FALSE(changed());

  // An apply that writes no set changes nothing: empty, Conflict, KeyTaken.
  const InstanceSnapshot original = load(store, id);
  REQUIRE(describe(applyOne(store, updateOf(original)).status) == "Applied");
  CHECK(changed());
  CHECK(applyBatch(store, {}).empty());
  CHECK_FALSE(changed());
  CHECK(describe(applyOne(store, updateOf(original)).status) == "Conflict");
  CHECK_FALSE(changed());
  CHECK(describe(applyOne(store, claiming("k-1", 2)).status) == "KeyTaken");
  CHECK_FALSE(changed());
  std::vector<ChangeSet> nothing{updateOf(original), claiming("k-1", 3)};
  CHECK(
      describe(applyBatch(store, std::move(nothing))) ==
      describe(std::vector<ApplyResult>{{ApplyStatus::Conflict, id}, {ApplyStatus::KeyTaken, id}}));
  CHECK_FALSE(changed());

  // One set written among refused ones is a write.
  std::vector<ChangeSet> some{updateOf(original), updateOf(load(store, id))};
  CHECK(
      describe(applyBatch(store, std::move(some))) ==
      describe(std::vector<ApplyResult>{{ApplyStatus::Conflict, id}, {ApplyStatus::Applied, id}}));
  CHECK(changed());
  // A lease is written as part of the header, like any other change.
  writeLease(store, id, InstanceStatus::Running, "host-a", at(5'000'000));
  CHECK(changed());

  // A declare that stores is a write; one that finds the version declared, or
  // is refused, is not.
  const ProcessDeclaration first = processDeclaration("Order", 1, {{"OrderId", Type::String}});
  (void)declare(store, first);
  CHECK(changed());
  (void)declare(store, first);
  CHECK_FALSE(changed());
  (void)declare(store, processDeclaration("Order", 1));
  CHECK_FALSE(changed());
  CHECK(codeOf(store.declare(processDeclaration("", 1))) == "InvalidArgument");
  CHECK_FALSE(changed());
  (void)declare(store, processDeclaration("Order", 2));
  CHECK(changed());
  CHECK_FALSE(changed());
}

}  // namespace detail

inline void checkStoreConformance(const StoreFactory& makeStore) {
  const auto run = [&makeStore](void (*check)(Store&)) {
    const std::shared_ptr<Store> store = makeStore();
    REQUIRE(store != nullptr);
    check(*store);
  };
  SECTION("create assigns increasing ids from 1, version 1, and the runs' instance") {
    run(detail::createAssignsIdsAndVersionOne);
  }
  SECTION("loadInstance returns the header and fields exactly as written") {
    run(detail::loadInstanceReturnsWhatWasWritten);
  }
  SECTION("loadStepRun returns the run exactly as written") {
    run(detail::loadStepRunReturnsWhatWasWritten);
  }
  SECTION("loadInstanceRun reads the instance and the run together") {
    run(detail::loadInstanceRunReadsBoth);
  }
  SECTION("unknown ids are NotFound") { run(detail::unknownIdsAreNotFound); }
  SECTION("an update with the expected version applies, writes expectedVersion + 1, upserts") {
    run(detail::updateAppliesAndBumpsTheVersion);
  }
  SECTION("an update inserts runs and replaces them whole by (instance, run)") {
    run(detail::updateInsertsAndReplacesRuns);
  }
  SECTION("an update with a stale version is a Conflict and writes nothing of its set") {
    run(detail::staleUpdateIsAConflict);
  }
  SECTION("an update of an instance that does not exist is a Conflict and creates nothing") {
    run(detail::updateOfAMissingInstanceIsAConflict);
  }
  SECTION("a batch reports each set in order: applied, conflict, applied") {
    run(detail::batchReportsEachSetInOrder);
  }
  SECTION("a batch may create one instance and update another") {
    run(detail::batchCreatesThenUpdates);
  }
  SECTION("an empty batch applies nothing and answers no results") {
    run(detail::emptyBatchAppliesNothing);
  }
  SECTION("reads return copies and the store keeps copies") { run(detail::readsAreCopies); }
  SECTION("field values of every type round-trip exactly, edge values included") {
    run(detail::fieldValuesRoundTrip);
  }
  SECTION("listWaiting returns only Waiting runs, in (instance, run) order") {
    run(detail::listWaitingReturnsWaitingRunsInOrder);
  }
  SECTION("listWaiting filters by process, by step, and by both") {
    run(detail::listWaitingFilters);
  }
  SECTION("listWaiting pages with an exclusive (instance, run) cursor and a limit") {
    run(detail::listWaitingPages);
  }
  SECTION("listWaiting leaves out Waiting runs with a completion recorded") {
    run(detail::listWaitingLeavesOutRunsWithACompletion);
  }
  SECTION("listRunning returns Running instances of exactly one process version, paged") {
    run(detail::listRunningReturnsRunningInstancesOfOneVersion);
  }
  SECTION("correlation keys round-trip exactly; empty is none") {
    run(detail::correlationKeysRoundTrip);
  }
  SECTION("history is appended in write order, with the set's instance id") {
    run(detail::historyIsAppendedInWriteOrder);
  }
  SECTION("a Conflict appends no history") { run(detail::conflictAppendsNoHistory); }
  SECTION("nextDeadline is the earliest deadline of a Waiting run, after a time") {
    run(detail::nextDeadlineIsTheEarliestWaitingDeadline);
  }
  SECTION("listDue pages due Waiting runs by (deadline, instance, run) after a cursor") {
    run(detail::listDueReturnsDueWaitingRunsInDeadlineOrder);
  }
  SECTION("findByKey returns Waiting runs of exactly one process, step and key") {
    run(detail::findByKeyReturnsWaitingRunsOfOneStepWithTheKey);
  }
  SECTION("several open runs of one instance, one per parallel branch") {
    run(detail::severalOpenRunsOfOneInstance);
  }
  SECTION("a create claims its start key with it; findStartKey reports the claim") {
    run(detail::startKeysAreClaimedWithTheirInstance);
  }
  SECTION("a create whose start key is taken is KeyTaken, names the holder, writes nothing") {
    run(detail::aTakenStartKeyWritesNothing);
  }
  SECTION("a start key is scoped by the process name") { run(detail::aStartKeyIsScopedByProcess); }
  SECTION("two creates with one start key in one batch: the first applies, the second is taken") {
    run(detail::twoClaimsOfOneKeyInOneBatch);
  }
  SECTION("concurrent creates with one start key from 4 threads create one instance") {
    run(detail::concurrentClaimsOfOneKeyCreateOne);
  }
  SECTION("concurrent creates from 4 threads get 400 distinct ids") {
    run(detail::concurrentCreatesGetDistinctIds);
  }
  SECTION("concurrent version-guarded increments from 4 threads lose none") {
    run(detail::concurrentGuardedIncrementsLoseNone);
  }
  SECTION("leases round-trip exactly through create and update: none, epoch, cleared") {
    run(detail::leasesRoundTrip);
  }
  SECTION("nextLeaseExpiry is the earliest lease expiry of a Running instance, after a time") {
    run(detail::nextLeaseExpiryIsTheEarliestOfRunningInstances);
  }
  SECTION("listExpiredLeases pages expired and offered leases by (expiry, instance)") {
    run(detail::listExpiredLeasesPagesByExpiryAndInstance);
  }
  SECTION("declare stores the first declaration of a version and returns the stored one") {
    run(detail::declareStoresTheFirstDeclarationOfAVersion);
  }
  SECTION("declare refuses an invalid declaration with InvalidArgument and writes nothing") {
    run(detail::declareRefusesInvalidDeclarationsWritingNothing);
  }
  SECTION("declared steps round-trip in name order with their kind and heartbeat") {
    run(detail::declaredStepsRoundTripInNameOrder);
  }
  SECTION("declare refuses an invalid step with InvalidArgument and writes nothing") {
    run(detail::declareRefusesInvalidStepsWritingNothing);
  }
  SECTION("concurrent first declarations of a version from 4 threads all return the winner's") {
    run(detail::concurrentFirstDeclarationsAgreeOnOne);
  }
  SECTION("changeMark changes with every write and with nothing else") {
    run(detail::changeMarkChangesWithEveryWrite);
  }
}

}  // namespace asyncflow::testing

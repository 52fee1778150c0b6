// PostgresStore: the Store methods over a pool of libpq connections, one
// transaction per apply() batch, a listening connection for changeMark, and
// open(). The schema, codec, SQL and the libpq layer live beside it.
#include "asyncflow/postgres_store.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <poll.h>
#include <unistd.h>

#include <fmt/format.h>

#include "store/declaration.hpp"
#include "store/enum_names.hpp"
#include "store/postgres/codec.hpp"
#include "store/postgres/pq.hpp"
#include "store/postgres/schema.hpp"
#include "store/postgres/statements.hpp"
#include "util/mutex.hpp"

namespace asyncflow {
namespace {

using detail::CondVar;
using detail::Mutex;
using detail::MutexLock;
using namespace detail::pg;

constexpr std::string_view kApply = "apply (nothing was written)";
constexpr std::string_view kDeclare = "declare (nothing was written)";

// Runs `body`, mapping every exception to a StoreError for `operation`.
template <class F>
auto mapExceptions(std::string_view operation, F&& body) -> decltype(body()) {
  try {
    return std::forward<F>(body)();
  } catch (const PgError& e) {
    return fail(Errc::StoreError, fmt::format("{}: {}", operation, e.what()));
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, fmt::format("{}: out of memory", operation));
  } catch (const std::exception& e) {
    return fail(Errc::StoreError, fmt::format("{}: {}", operation, e.what()));
  } catch (...) {
    return fail(Errc::StoreError, fmt::format("{}: unknown error", operation));
  }
}

// What every connection of the store is opened with.
struct ConnectionSettings {
  std::string conninfo;
  std::string schema;
  int connectTimeoutSeconds = 10;
  std::chrono::milliseconds statementTimeout{0};
};

// A connection set up for the store: its schema on the search_path, the
// statement timeout, every statement prepared. Throws PgError.
std::unique_ptr<Connection> openConnection(const ConnectionSettings& settings, bool prepare) {
  auto connection = std::make_unique<Connection>(settings.conninfo, settings.connectTimeoutSeconds);
  connection->exec(fmt::format("SET search_path TO {}; SET statement_timeout = {}", settings.schema,
                               settings.statementTimeout.count()));
  if (prepare) {
    for (const Statement& statement : kAll) connection->prepare(statement.name, statement.sql);
  }
  return connection;
}

// The connections of the store's calls: at most `size` open, each lent to one
// call at a time. A connection that broke is dropped when it is returned, and
// the call that next needs one opens a new one: no call waits for a dead one.
class Pool {
 public:
  Pool(ConnectionSettings settings, std::size_t size)
      : settings_(std::move(settings)), size_(size) {}

  // A connection lent for a scope; returned (or dropped when broken) at its end.
  class Lent {
   public:
    Lent(Pool& pool, std::unique_ptr<Connection> connection, bool reused)
        : pool_(pool), connection_(std::move(connection)), reused_(reused) {}
    Lent(Lent&& other) noexcept
        : pool_(other.pool_), connection_(std::move(other.connection_)), reused_(other.reused_) {}
    Lent(const Lent&) = delete;
    Lent& operator=(const Lent&) = delete;
    Lent& operator=(Lent&&) = delete;
    ~Lent() {
      if (connection_ != nullptr) pool_.giveBack(std::move(connection_));
    }
    Connection& operator*() const noexcept { return *connection_; }
    Connection* operator->() const noexcept { return connection_.get(); }
    // Whether it served an earlier call (it may have broken while idle).
    bool reused() const noexcept { return reused_; }

   private:
    Pool& pool_;
    std::unique_ptr<Connection> connection_;
    bool reused_;
  };

  // Runs `body` on a lent connection. When a connection that waited in the
  // pool turns out to be lost (the server restarted or dropped it while it was
  // idle), the other idle ones are dropped too, and `body` runs once more on a
  // new connection: so a restart costs a host no failed call. `body` must be
  // safe to run again after a lost connection: a read, or a write whose first
  // statement is the one that failed. Throws PgError.
  template <class F>
  auto with(F&& body) -> decltype(body(std::declval<Connection&>())) {
    {
      Lent c = take();
      try {
        return body(*c);
      } catch (const PgError& e) {
        if (!e.connectionLost() || !c.reused()) throw;
      }
    }
    dropIdle();
    Lent c = take();
    return body(*c);
  }

  // A connection with a transaction begun, and the transaction's id (to ask,
  // after a connection lost during COMMIT, whether it took effect); through
  // with()'s one retry, so a connection lost while idle costs no failed call.
  // Throws PgError.
  std::pair<Lent, std::string> begin() {
    for (int attempt = 0;; ++attempt) {
      Lent c = take();
      try {
        std::string id(c->exec("BEGIN; SELECT txid_current()").text(0, 0));
        return {std::move(c), std::move(id)};
      } catch (const PgError& e) {
        if (!e.connectionLost() || !c.reused() || attempt > 0) throw;
      }
      dropIdle();
    }
  }

  // Runs the prepared statement `name` (a read) through with().
  PgResult query(const char* name, Params& params) {
    return with([&](Connection& c) { return c.run(name, params); });
  }

  // Waits for a free connection, opening one when fewer than `size` are open.
  // Throws PgError when opening fails.
  Lent take() ASYNCFLOW_EXCLUDES(mutex_) {
    MutexLock lock(mutex_);
    for (;;) {
      if (!idle_.empty()) {
        std::unique_ptr<Connection> connection = std::move(idle_.back());
        idle_.pop_back();
        return Lent(*this, std::move(connection), true);
      }
      if (open_ < size_) break;
      freed_.wait(lock);
    }
    ++open_;
    lock.unlock();
    try {
      return Lent(*this, openConnection(settings_, true), false);
    } catch (...) {
      lock.lock();
      --open_;
      freed_.notifyOne();
      throw;
    }
  }

  // Closes every idle connection (they are likely lost with the one that was).
  void dropIdle() ASYNCFLOW_EXCLUDES(mutex_) {
    std::vector<std::unique_ptr<Connection>> dropped;
    {
      MutexLock lock(mutex_);
      dropped.swap(idle_);
      open_ -= dropped.size();
    }
    freed_.notifyAll();
  }

  // Hands an already open connection to the pool (open() made it).
  void adopt(std::unique_ptr<Connection> connection) ASYNCFLOW_EXCLUDES(mutex_) {
    MutexLock lock(mutex_);
    ++open_;
    idle_.push_back(std::move(connection));
  }

 private:
  void giveBack(std::unique_ptr<Connection> connection) ASYNCFLOW_EXCLUDES(mutex_) {
    // Only a connection with no transaction open is reused: a call that
    // failed inside one and could not roll it back leaves it broken.
    const bool reusable = connection != nullptr && connection->ok() && connection->idle();
    {
      MutexLock lock(mutex_);
      if (reusable) {
        idle_.push_back(std::move(connection));
      } else {
        --open_;
      }
    }
    freed_.notifyOne();
  }

  const ConnectionSettings settings_;
  const std::size_t size_;
  Mutex mutex_;
  CondVar freed_;
  std::vector<std::unique_ptr<Connection>> idle_ ASYNCFLOW_GUARDED_BY(mutex_);
  std::size_t open_ ASYNCFLOW_GUARDED_BY(mutex_) = 0;
};

// Rolls back the connection's open transaction, if any; a failure leaves the
// connection broken (the pool drops it). Never throws.
void rollbackQuietly(Connection& connection) noexcept {
  if (!connection.ok() || connection.idle()) return;
  try {
    connection.exec("ROLLBACK");
  } catch (...) {
    // The pool sees it is not idle and drops it.
  }
}

// --- row readers -----------------------------------------------------------------------

StepRunRecord readStepRun(const PgResult& r, int row) {
  StepRunRecord s;
  s.instance = r.int64(row, 0);
  s.run = r.int64(row, 1);
  s.step = textOf(r, row, 2);
  s.kind = nameOf<StepKind>(r, row, 3, "step kind");
  s.status = nameOf<StepRunStatus>(r, row, 4, "step status");
  s.attempt = static_cast<int>(r.int64(row, 5));
  s.secret = textOf(r, row, 6);
  s.hasCompletion = r.text(row, 7) == "t";
  s.error = textOf(r, row, 8);
  s.createdAt = timeOf(r, row, 9);
  s.waitingSince = timeOrEpoch(r, row, 10);
  s.finishedAt = timeOrEpoch(r, row, 11);
  s.deadline = optionalTime(r, row, 12);
  s.correlationKey = textOf(r, row, 13);  // NULL reads as empty
  s.branch = r.int64(row, 14);
  return s;
}

// Adds the completion field in columns name, type, value from `column`, if the
// row has one (a LEFT JOIN row without one has NULLs).
void addCompletionField(const PgResult& r, int row, int column, StepRunRecord& record) {
  if (r.isNull(row, column)) return;
  std::string name = textOf(r, row, column);
  Value value = readValue(r, row, column + 1, name);
  record.completion.set(name, std::move(value));
}

std::optional<ProcessDeclaration> readDeclaration(Connection& c, const std::string& process,
                                                  int version) {
  Params params;
  addText(params, process);
  params.add(version);
  const PgResult fields = c.run(kDeclaration.name, params);
  if (fields.rows() == 0) return std::nullopt;
  ProcessDeclaration declaration;
  declaration.process = process;
  declaration.version = version;
  for (int row = 0; row < fields.rows(); ++row) {
    if (fields.isNull(row, 0)) continue;  // no fields: the LEFT JOIN's one empty row
    FieldDeclaration field;
    field.name = textOf(fields, row, 0);
    field.type = nameOf<Type>(fields, row, 1, "declared type");
    declaration.fields.push_back(std::move(field));
  }
  const PgResult steps = c.run(kDeclaredSteps.name, params);
  for (int row = 0; row < steps.rows(); ++row) {
    StepDeclaration step;
    step.name = textOf(steps, row, 0);
    step.kind = nameOf<StepKind>(steps, row, 1, "declared step kind");
    if (!steps.isNull(row, 2)) step.heartbeat = std::chrono::microseconds(steps.int64(row, 2));
    declaration.steps.push_back(std::move(step));
  }
  // Bytewise name order, as the Store contract gives it (the encoded text's
  // order differs where an escape stands).
  std::sort(declaration.fields.begin(), declaration.fields.end(),
            [](const FieldDeclaration& a, const FieldDeclaration& b) { return a.name < b.name; });
  std::sort(declaration.steps.begin(), declaration.steps.end(),
            [](const StepDeclaration& a, const StepDeclaration& b) { return a.name < b.name; });
  return declaration;
}

// --- row writers -----------------------------------------------------------------------

// Whether another host may have work from `set` once it commits, so that the
// commit announces itself (NOTIFY): a Running instance (a lease another host
// takes over when it expires, or an instance offered to any host), or a waiting
// run with a deadline (a timer) or with a completion recorded for a host that
// defines its version. An instance left finished, or waiting with nothing due,
// gives nobody work: most completions end so, and skip the NOTIFY and the
// lock PostgreSQL takes for it at commit.
bool concernsOtherHosts(const ChangeSet& set) {
  if (set.instance.status == InstanceStatus::Running) return true;
  for (const StepRunRecord& run : set.stepRuns) {
    if (run.status == StepRunStatus::Waiting && (run.deadline || run.hasCompletion)) return true;
  }
  return false;
}

// Adds $1..$10 of insert_instance and update_instance.
void addHeader(Params& p, const InstanceRecord& r) {
  addText(p, r.process);
  p.add(r.processVersion);
  p.add(std::string(statusName(r.status)));
  p.add(static_cast<std::int64_t>(r.currentRun));
  p.add(static_cast<std::int64_t>(r.lastRun));
  addText(p, r.error);
  addTime(p, r.createdAt);
  addTime(p, r.updatedAt);
  addText(p, r.leaseOwner);
  addOptionalTime(p, r.leaseExpiry);
}

Call prepared(const Statement& statement, Params params) {
  return Call{statement.name, false, std::move(params)};
}
Call sql(std::string text) { return Call{std::move(text), true, Params()}; }

// Writes one batch in one transaction, in as few round trips as its guards
// allow: a statement waits until a guard (the version-guarded UPDATE that
// decides whether the rest of its set is written, or a create's INSERT whose id
// the rest needs) or the end must hear back from the server, and goes in the
// same pipeline. A batch without start keys is one implicit transaction of the
// pipeline (Connection::beginImplicit: no BEGIN, no COMMIT, committed at the
// Sync), so a completion (one update set) is two round trips and no statement
// but its own: the guarded UPDATE; the rest of the set, and the Sync. A start
// key needs a savepoint, which needs BEGIN and COMMIT: a batch with one is an
// explicit transaction, each round trip a pipeline of its own. Throws PgError;
// the caller calls abandon(), then rolls back.
class BatchWriter {
 public:
  BatchWriter(Connection& c, bool explicitTransaction) : c_(c), explicit_(explicitTransaction) {
    if (explicit_) {
      pending_.push_back(sql("BEGIN"));  // waits for the first round trip
    } else {
      c_.beginImplicit();
    }
    // The transaction's id comes back with the first write that guards a set
    // (RETURNING txid_current()).
  }

  // Closes the connection when an implicit transaction is left unfinished, so
  // that nothing of it is committed.
  void abandon() noexcept { c_.abandonImplicit(); }

  ApplyResult apply(ChangeSet& set) {
    InstanceRecord& header = set.instance;
    if (header.id == 0) {
      if (auto taken = create(set)) return *taken;
    } else {
      // When the UPDATE changes no row (stale version or no such instance)
      // nothing of the set is written.
      header.version = set.expectedVersion + 1;
      Params p;
      addHeader(p, header);
      p.add(static_cast<std::int64_t>(header.version));
      p.add(static_cast<std::int64_t>(header.id));
      p.add(static_cast<std::int64_t>(set.expectedVersion));
      const PgResult updated = send(prepared(kUpdateInstance, std::move(p)));
      if (updated.affected() == 0) return ApplyResult{ApplyStatus::Conflict, header.id};
      noteTransaction(updated, 0);
    }
    queueRest(set);
    return ApplyResult{ApplyStatus::Applied, header.id};
  }

  // Sends what waits, then `notify` (unless empty) and the end (COMMIT, or the
  // Sync of an implicit transaction), in one round trip.
  void commit(const std::string& notify) {
    if (!notify.empty()) pending_.push_back(sql(notify));
    if (explicit_) {
      pending_.push_back(sql("COMMIT"));
      flush();
    } else {
      std::vector<Call> calls;
      calls.swap(pending_);
      c_.end(calls);
      sentAny_ = true;
    }
  }

  // The transaction's id once the first round trip is done; empty before.
  const std::string& transaction() const noexcept { return transaction_; }
  // Whether any round trip of this batch has completed.
  bool sentAny() const noexcept { return sentAny_; }

 private:
  // Sends the waiting statements and `last`; the result of `last`.
  PgResult send(Call last) {
    pending_.push_back(std::move(last));
    std::vector<PgResult> results = flush();
    return std::move(results.back());
  }

  std::vector<PgResult> flush() {
    std::vector<Call> calls;
    calls.swap(pending_);
    std::vector<PgResult> results = explicit_ ? c_.pipeline(calls) : c_.exchange(calls);
    sentAny_ = true;  // only once it went through: a first one lost was lost while idle
    return results;
  }

  // Keeps the transaction's id from column `column` of a guard's row.
  void noteTransaction(const PgResult& guard, int column) {
    if (transaction_.empty()) transaction_ = std::string(guard.text(0, column));
  }

  // The instance holding (process, key), if one does (sends what waits).
  std::optional<InstanceId> startKeyHolder(const std::string& process, const std::string& key) {
    Params p;
    addText(p, process);
    addText(p, key);
    const PgResult r = send(prepared(kStartKeyHolder, std::move(p)));
    if (r.rows() == 0) return std::nullopt;
    return r.int64(0, 0);
  }

  // Creates the set's instance; KeyTaken when its start key is held. A host
  // that claims the key at the same moment makes the key's INSERT fail: the
  // savepoint undoes this set alone, and the holder is read again (its
  // transaction has committed by then).
  std::optional<ApplyResult> create(ChangeSet& set) {
    InstanceRecord& header = set.instance;
    if (set.startKey) {
      if (auto holder = startKeyHolder(header.process, set.startKey->key)) {
        return ApplyResult{ApplyStatus::KeyTaken, *holder};
      }
      pending_.push_back(sql("SAVEPOINT start_key"));
    }
    Params p;
    addHeader(p, header);
    const PgResult inserted = send(prepared(kInsertInstance, std::move(p)));
    header.id = inserted.int64(0, 0);
    noteTransaction(inserted, 1);
    header.version = 1;
    if (!set.startKey) return std::nullopt;
    Params k;
    addText(k, header.process);
    addText(k, set.startKey->key);
    k.add(static_cast<std::int64_t>(header.id));
    k.add(static_cast<std::int64_t>(set.startKey->fingerprint));
    addTime(k, header.createdAt);
    try {
      send(prepared(kInsertStartKey, std::move(k)));
    } catch (const PgError& e) {
      if (e.sqlstate() != kUniqueViolation) throw;
      send(sql("ROLLBACK TO SAVEPOINT start_key"));
      header.id = 0;
      if (auto holder = startKeyHolder(header.process, set.startKey->key)) {
        return ApplyResult{ApplyStatus::KeyTaken, *holder};
      }
      throw;
    }
    pending_.push_back(sql("RELEASE SAVEPOINT start_key"));
    return std::nullopt;
  }

  // The set's fields, runs (each with its completion rows) and history.
  void queueRest(const ChangeSet& set) {
    const auto id = static_cast<std::int64_t>(set.instance.id);  // the set's instance wins
    for (const auto& [name, value] : set.fields) {
      Params p;
      p.add(id);
      addText(p, name);
      addValue(p, value);
      pending_.push_back(prepared(kUpsertField, std::move(p)));
    }
    for (const StepRunRecord& run : set.stepRuns) queueStepRun(id, run);
    // The entries in statements of up to four, in order.
    constexpr std::size_t kMost = std::size(kInsertHistories);
    for (std::size_t first = 0; first < set.history.size(); first += kMost) {
      const std::size_t n = std::min(kMost, set.history.size() - first);
      Params p;
      p.add(id);
      for (std::size_t i = first; i < first + n; ++i) {
        const HistoryEvent& event = set.history[i];
        addTime(p, event.at);
        p.add(std::string(historyKindName(event.kind)));
        p.add(event.run);
        addText(p, event.step);
        addText(p, event.detail);
      }
      pending_.push_back(prepared(*kInsertHistories[n - 1], std::move(p)));
    }
  }

  void queueStepRun(std::int64_t instance, const StepRunRecord& r) {
    Params p;
    p.add(instance);
    p.add(r.run);
    addText(p, r.step);
    p.add(std::string(detail::nameOf(r.kind)));
    p.add(std::string(statusName(r.status)));
    p.add(r.attempt);
    addText(p, r.secret);
    p.add(std::string(r.hasCompletion ? "true" : "false"));
    addText(p, r.error);
    addTime(p, r.createdAt);
    addTimeOrNull(p, r.waitingSince);
    addTimeOrNull(p, r.finishedAt);
    addOptionalTime(p, r.deadline);
    if (r.correlationKey.empty()) {
      p.addNull();  // no key: outside step_runs_waiting_key
    } else {
      addText(p, r.correlationKey);
    }
    p.add(r.branch);
    // The run's completion rows become the record's completion (a replaced
    // run may drop one): upsert_step_run deletes them, the record's follow.
    pending_.push_back(prepared(kUpsertStepRun, std::move(p)));
    for (const auto& [name, value] : r.completion) {
      Params f;
      f.add(instance);
      f.add(r.run);
      addText(f, name);
      addValue(f, value);
      pending_.push_back(prepared(kInsertCompletion, std::move(f)));
    }
  }

  Connection& c_;
  const bool explicit_;  // BEGIN ... COMMIT, not an implicit transaction
  std::vector<Call> pending_;
  std::string transaction_;  // txid_current(), once a guard returned it
  bool sentAny_ = false;
};

// A connection that listens on `channel`. Throws PgError.
std::unique_ptr<Connection> openListener(const ConnectionSettings& settings,
                                         const std::string& channel) {
  auto listener = openConnection(settings, false);
  listener->exec(fmt::format("LISTEN {}", channel));
  return listener;
}

// The pushed change signal (Store::watchChanges): one thread with a listening
// connection of its own, started by the first watch, that calls every watch's
// callback when another store object's commit notifies the channel. Calls
// within kMerge of each other are merged into one, so that a busy database
// wakes a host's timer at most every kMerge. A listening connection that
// breaks is opened again (every second while the server is away), and the
// callbacks are called then: notifications may have been missed.
class Watcher {
 public:
  static constexpr std::chrono::milliseconds kMerge{5};
  static constexpr std::chrono::milliseconds kReconnect{1000};

  Watcher(ConnectionSettings settings, std::string channel, std::string self)
      : settings_(std::move(settings)), channel_(std::move(channel)), self_(std::move(self)) {}

  ~Watcher() ASYNCFLOW_EXCLUDES(mutex_) {
    bool started = false;
    {
      MutexLock lock(mutex_);
      started = started_;
      stopping_ = true;
    }
    if (!started) return;
    const char byte = 0;
    while (::write(wake_[1], &byte, 1) < 0 && errno == EINTR) {
    }
    thread_.join();
    ::close(wake_[0]);
    ::close(wake_[1]);
  }
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;

  // Registers `changed`; its id for remove(). Starts the thread on first use;
  // nullopt when it cannot (no pipe or thread).
  std::optional<std::uint64_t> add(std::function<void()> changed) ASYNCFLOW_EXCLUDES(mutex_) {
    MutexLock lock(mutex_);
    if (!started_) {
      if (::pipe(wake_) != 0) return std::nullopt;
      try {
        thread_ = std::thread([this] { run(); });
      } catch (...) {
        ::close(wake_[0]);
        ::close(wake_[1]);
        return std::nullopt;
      }
      started_ = true;
    }
    const std::uint64_t id = ++lastId_;
    callbacks_.emplace(id, std::move(changed));
    return id;
  }

  // Unregisters `id`; returns once no call of it is in progress.
  void remove(std::uint64_t id) ASYNCFLOW_EXCLUDES(mutex_, calling_) {
    {
      MutexLock lock(mutex_);
      callbacks_.erase(id);
    }
    MutexLock waitForCall(calling_);
  }

 private:
  // Waits until the listening connection (or, without one, nothing) has
  // something to read, `timeout` passes (negative: no limit), or stop is
  // asked. True when stop was asked.
  bool wait(const Connection* listener, int timeoutMs) {
    pollfd fds[2] = {{wake_[0], POLLIN, 0}, {-1, POLLIN, 0}};
    if (listener != nullptr) fds[1].fd = listener->socket();
    const int n = ::poll(fds, listener != nullptr ? 2 : 1, timeoutMs);
    return n > 0 && (fds[0].revents & POLLIN) != 0;
  }

  void deliver() ASYNCFLOW_EXCLUDES(mutex_, calling_) {
    MutexLock call(calling_);
    std::vector<std::function<void()>> targets;
    {
      MutexLock lock(mutex_);
      for (const auto& entry : callbacks_) targets.push_back(entry.second);
    }
    for (const auto& changed : targets) changed();
  }

  void run() {
    std::unique_ptr<Connection> listener;
    for (;;) {
      if (listener == nullptr) {
        try {
          listener = openListener(settings_, channel_);
        } catch (...) {
          if (wait(nullptr, static_cast<int>(kReconnect.count()))) return;
          continue;
        }
        deliver();  // what was committed while nobody listened
      }
      if (wait(listener.get(), -1)) return;
      try {
        if (listener->takeNotifications(self_) == 0) continue;
        // Merge what arrives within kMerge into this call.
        if (wait(nullptr, static_cast<int>(kMerge.count()))) return;
        listener->takeNotifications(self_);
      } catch (...) {
        listener.reset();  // lost: opened again, and the callbacks called then
        continue;
      }
      deliver();
    }
  }

  const ConnectionSettings settings_;
  const std::string channel_;
  const std::string self_;
  int wake_[2] = {-1, -1};  // written once to stop the thread
  std::thread thread_;

  Mutex mutex_;
  std::map<std::uint64_t, std::function<void()>> callbacks_ ASYNCFLOW_GUARDED_BY(mutex_);
  std::uint64_t lastId_ ASYNCFLOW_GUARDED_BY(mutex_) = 0;
  bool started_ ASYNCFLOW_GUARDED_BY(mutex_) = false;
  bool stopping_ ASYNCFLOW_GUARDED_BY(mutex_) = false;
  // Held while callbacks run, so that remove() can wait for a call to end.
  Mutex calling_;
};

// A watch: unregisters its callback when destroyed.
class PostgresWatch final : public ChangeWatch {
 public:
  PostgresWatch(Watcher& watcher, std::uint64_t id) : watcher_(watcher), id_(id) {}
  ~PostgresWatch() override { watcher_.remove(id_); }

 private:
  Watcher& watcher_;
  std::uint64_t id_;
};

// 16 random hex digits naming one store object in its notifications.
std::string storeId() {
  std::random_device device;
  const std::uint64_t bits = (static_cast<std::uint64_t>(device()) << 32) ^ device();
  return fmt::format("{:016x}", bits);
}

}  // namespace

// --- the store -------------------------------------------------------------------------

namespace {

// The instance of load_instance's rows; NotFound when there are none.
Result<InstanceSnapshot> instanceOf(const PgResult& r, InstanceId id) {
  if (r.rows() == 0) return fail(Errc::NotFound, fmt::format("no instance {}", id));
  InstanceSnapshot snapshot;
  InstanceRecord& h = snapshot.record;
  h.id = id;
  h.process = textOf(r, 0, 0);
  h.processVersion = static_cast<int>(r.int64(0, 1));
  h.status = nameOf<InstanceStatus>(r, 0, 2, "instance status");
  h.currentRun = r.int64(0, 3);
  h.lastRun = r.int64(0, 4);
  h.error = textOf(r, 0, 5);
  h.createdAt = timeOf(r, 0, 6);
  h.updatedAt = timeOf(r, 0, 7);
  h.leaseOwner = textOf(r, 0, 8);
  h.leaseExpiry = optionalTime(r, 0, 9);
  h.version = static_cast<std::uint64_t>(r.int64(0, kInstanceColumns));
  constexpr int kField = kInstanceColumns + 1;  // name, type, value
  for (int row = 0; row < r.rows(); ++row) {
    if (r.isNull(row, kField)) continue;  // no fields: the LEFT JOIN's one empty row
    std::string name = textOf(r, row, kField);
    Value value = readValue(r, row, kField + 1, name);
    snapshot.fields.set(name, std::move(value));
  }
  return snapshot;
}

// The run of load_step_run's rows; NotFound when there are none.
Result<StepRunRecord> stepRunOf(const PgResult& r, InstanceId instance, std::int64_t run) {
  if (r.rows() == 0) return fail(Errc::NotFound, fmt::format("no step run {}_{}", instance, run));
  StepRunRecord record = readStepRun(r, 0);
  for (int row = 0; row < r.rows(); ++row) addCompletionField(r, row, kRunColumns, record);
  return record;
}

}  // namespace

class PostgresStore::Impl {
 public:
  Impl(ConnectionSettings settings, std::size_t poolSize, std::unique_ptr<Connection> first)
      : settings_(std::move(settings)), channel_(channelOf(settings_.schema)), self_(storeId()),
        notify_(fmt::format("NOTIFY {}, '{}'", channel_, self_)), pool_(settings_, poolSize),
        watcher_(settings_, channel_, self_) {
    pool_.adopt(std::move(first));
  }

  // The channel the stores on `schema` notify.
  static std::string channelOf(const std::string& schema) {
    return fmt::format("asyncflow_{}", schema);
  }

  // Opens the listening connection of changeMark. Throws PgError.
  void listen() ASYNCFLOW_EXCLUDES(listenerMutex_) {
    MutexLock lock(listenerMutex_);
    listener_ = openListener(settings_, channel_);
  }

  std::unique_ptr<ChangeWatch> watchChanges(std::function<void()> changed) {
    auto id = watcher_.add(std::move(changed));
    if (!id) return nullptr;
    return std::make_unique<PostgresWatch>(watcher_, *id);
  }

  Result<InstanceSnapshot> loadInstance(InstanceId id) {
    return mapExceptions("loadInstance", [&]() -> Result<InstanceSnapshot> {
      Params p;
      p.add(static_cast<std::int64_t>(id));
      // One statement, so the header and the fields come from one snapshot.
      return instanceOf(pool_.query(kLoadInstance.name, p), id);
    });
  }

  Result<StepRunRecord> loadStepRun(InstanceId instance, std::int64_t run) {
    return mapExceptions("loadStepRun", [&]() -> Result<StepRunRecord> {
      Params p;
      p.add(static_cast<std::int64_t>(instance));
      p.add(run);
      return stepRunOf(pool_.query(kLoadStepRun.name, p), instance, run);
    });
  }

  // loadInstance's statement, then loadStepRun's, in one pipeline: one round
  // trip. The server runs them in order, so the run is read after the instance.
  Result<InstanceRun> loadInstanceRun(InstanceId instance, std::int64_t run) {
    return mapExceptions("loadInstanceRun", [&]() -> Result<InstanceRun> {
      std::vector<PgResult> results = pool_.with([&](Connection& c) {
        std::vector<Call> calls(2);
        calls[0].statement = kLoadInstance.name;
        calls[0].params.add(static_cast<std::int64_t>(instance));
        calls[1].statement = kLoadStepRun.name;
        calls[1].params.add(static_cast<std::int64_t>(instance));
        calls[1].params.add(run);
        return c.pipeline(calls);
      });
      auto snapshot = instanceOf(results[0], instance);
      if (!snapshot) return tl::unexpected(snapshot.error());
      auto found = stepRunOf(results[1], instance, run);
      if (!found) return tl::unexpected(found.error());
      return InstanceRun{std::move(*snapshot), std::move(*found)};
    });
  }

  // One transaction for the batch. A set that finds a Conflict or KeyTaken has
  // written nothing; any error rolls the whole batch back. When the connection
  // is lost during COMMIT, the transaction's status is asked on another
  // connection, so that a commit that took effect is reported as applied.
  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) {
    if (batch.empty()) return std::vector<ApplyResult>{};
    return mapExceptions(kApply, [&]() -> Result<std::vector<ApplyResult>> {
      for (int attempt = 0;; ++attempt) {
        Pool::Lent c = pool_.take();
        const bool startKeys = std::any_of(batch.begin(), batch.end(), [](const ChangeSet& set) {
          return set.instance.id == 0 && set.startKey.has_value();
        });
        std::optional<BatchWriter> writer;
        try {
          writer.emplace(*c, startKeys);
          std::vector<ApplyResult> results;
          bool wrote = false;
          bool announce = false;
          for (ChangeSet& set : batch) {
            results.push_back(writer->apply(set));
            if (results.back().status != ApplyStatus::Applied) continue;
            wrote = true;
            announce = announce || concernsOtherHosts(set);
          }
          try {
            writer->commit(announce ? notify_ : std::string());
          } catch (const PgError& e) {
            // Nothing written: the results hold whether COMMIT arrived or not.
            if (!e.connectionLost() || (wrote && !committed(writer->transaction()))) throw;
          }
          if (wrote) commits_.fetch_add(1, std::memory_order_release);
          return results;
        } catch (const PgError& e) {
          const bool sent = writer && writer->sentAny();
          if (writer) writer->abandon();
          rollbackQuietly(*c);
          // Lost in the first round trip (while idle in the pool, or killed
          // before answering): nothing was committed; once more, anew.
          const bool again = e.connectionLost() && !sent && c.reused() && attempt == 0;
          if (!again) throw;
        } catch (...) {
          if (writer) writer->abandon();
          rollbackQuietly(*c);
          throw;
        }
        pool_.dropIdle();
      }
    });
  }

  Result<std::vector<WaitingRow>> listWaiting(const WaitingQuery& query) {
    return mapExceptions("listWaiting", [&]() -> Result<std::vector<WaitingRow>> {
      Params p;
      p.add(static_cast<std::int64_t>(query.afterInstance));
      p.add(query.afterRun);
      if (query.process.empty()) {
        p.addNull();
      } else {
        addText(p, query.process);
      }
      if (query.step.empty()) {
        p.addNull();
      } else {
        addText(p, query.step);
      }
      p.add(limitOf(query.limit));
      const PgResult r = pool_.query(kListWaiting.name, p);
      std::vector<WaitingRow> rows;
      for (int row = 0; row < r.rows(); ++row) {
        const InstanceId instance = r.int64(row, 0);
        const std::int64_t run = r.int64(row, 1);
        // Rows repeat a run once per completion field; a new key starts a new run.
        if (rows.empty() || rows.back().run.instance != instance || rows.back().run.run != run) {
          WaitingRow w;
          w.run = readStepRun(r, row);
          w.process = textOf(r, row, kRunColumns);
          w.processVersion = static_cast<int>(r.int64(row, kRunColumns + 1));
          rows.push_back(std::move(w));
        }
        addCompletionField(r, row, kRunColumns + 2, rows.back().run);
      }
      return rows;
    });
  }

  Result<std::vector<InstanceId>> listRunning(const RunningQuery& query) {
    return mapExceptions("listRunning", [&]() -> Result<std::vector<InstanceId>> {
      Params p;
      addText(p, query.process);
      p.add(query.processVersion);
      p.add(static_cast<std::int64_t>(query.afterInstance));
      p.add(limitOf(query.limit));
      const PgResult r = pool_.query(kListRunning.name, p);
      std::vector<InstanceId> ids;
      for (int row = 0; row < r.rows(); ++row) ids.push_back(r.int64(row, 0));
      return ids;
    });
  }

  Result<std::optional<Timestamp>> nextDeadline(Timestamp after) {
    return mapExceptions("nextDeadline", [&]() -> Result<std::optional<Timestamp>> {
      Params p;
      addTime(p, after);
      const PgResult r = pool_.query(kNextDeadline.name, p);
      return optionalTime(r, 0, 0);  // an aggregate: one row, NULL for none
    });
  }

  Result<std::vector<DueRun>> listDue(const DueQuery& query) {
    return mapExceptions("listDue", [&]() -> Result<std::vector<DueRun>> {
      Params p;
      addTime(p, query.now);
      if (query.after) {
        addTime(p, query.after->deadline);
        p.add(static_cast<std::int64_t>(query.after->key.instance));
        p.add(query.after->key.run);
      } else {
        p.add(std::numeric_limits<std::int64_t>::min());  // before every deadline
        p.add(std::int64_t{0});
        p.add(std::int64_t{0});
      }
      p.add(limitOf(query.limit));
      const PgResult r = pool_.query(kListDue.name, p);
      std::vector<DueRun> due;
      for (int row = 0; row < r.rows(); ++row) {
        due.push_back(DueRun{StepRunKey{r.int64(row, 0), r.int64(row, 1)}, timeOf(r, row, 2)});
      }
      return due;
    });
  }

  Result<std::vector<StepRunKey>> findByKey(const KeyQuery& query) {
    return mapExceptions("findByKey", [&]() -> Result<std::vector<StepRunKey>> {
      // The empty key means "no key" (stored as NULL): it names no run.
      if (query.key.empty()) return std::vector<StepRunKey>{};
      Params p;
      addText(p, query.process);
      addText(p, query.step);
      addText(p, query.key);
      p.add(limitOf(query.limit));
      const PgResult r = pool_.query(kFindByKey.name, p);
      std::vector<StepRunKey> keys;
      for (int row = 0; row < r.rows(); ++row) {
        keys.push_back(StepRunKey{r.int64(row, 0), r.int64(row, 1)});
      }
      return keys;
    });
  }

  Result<std::optional<StartKeyRecord>> findStartKey(std::string_view process,
                                                     std::string_view key) {
    return mapExceptions("findStartKey", [&]() -> Result<std::optional<StartKeyRecord>> {
      Params p;
      addText(p, process);
      addText(p, key);
      const PgResult r = pool_.query(kFindStartKey.name, p);
      if (r.rows() == 0) return std::optional<StartKeyRecord>();
      StartKeyRecord claim;
      claim.instance = r.int64(0, 0);
      claim.processVersion = static_cast<int>(r.int64(0, 1));
      claim.fingerprint = static_cast<std::uint64_t>(r.int64(0, 2));
      return std::optional<StartKeyRecord>(claim);
    });
  }

  Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) {
    return mapExceptions("loadHistory", [&]() -> Result<std::vector<HistoryEvent>> {
      Params p;
      p.add(static_cast<std::int64_t>(id));
      const PgResult r = pool_.query(kLoadHistory.name, p);
      std::vector<HistoryEvent> events;
      for (int row = 0; row < r.rows(); ++row) {
        HistoryEvent e;
        e.instance = id;
        e.at = timeOf(r, row, 0);
        e.kind = nameOf<HistoryKind>(r, row, 1, "history kind");
        e.run = r.int64(row, 2);
        e.step = textOf(r, row, 3);
        e.detail = textOf(r, row, 4);
        events.push_back(std::move(e));
      }
      return events;
    });
  }

  Result<std::optional<Timestamp>> nextLeaseExpiry(Timestamp after, std::string_view notOwnedBy) {
    return mapExceptions("nextLeaseExpiry", [&]() -> Result<std::optional<Timestamp>> {
      Params p;
      addTime(p, after);
      addText(p, notOwnedBy);
      const PgResult r = pool_.query(kNextLeaseExpiry.name, p);
      return optionalTime(r, 0, 0);
    });
  }

  Result<std::vector<ExpiredLease>> listExpiredLeases(const LeaseQuery& query) {
    return mapExceptions("listExpiredLeases", [&]() -> Result<std::vector<ExpiredLease>> {
      Params p;
      addTime(p, query.now);
      if (query.after) {
        addTime(p, query.after->expiry);
        p.add(static_cast<std::int64_t>(query.after->instance));
      } else {
        p.add(std::numeric_limits<std::int64_t>::min());
        p.add(std::int64_t{0});
      }
      p.add(limitOf(query.limit));
      const PgResult r = pool_.query(kExpiredLeases.name, p);
      std::vector<ExpiredLease> expired;
      for (int row = 0; row < r.rows(); ++row) {
        ExpiredLease lease;
        lease.instance = r.int64(row, 0);
        lease.process = textOf(r, row, 1);
        lease.processVersion = static_cast<int>(r.int64(row, 2));
        lease.owner = textOf(r, row, 3);
        lease.expiry = timeOf(r, row, 4);
        expired.push_back(std::move(lease));
      }
      return expired;
    });
  }

  // Looked up first (the version is usually declared already); else written in
  // a transaction of its own. ON CONFLICT DO NOTHING makes a second host that
  // declares at the same moment wait for the first's row: it then inserts
  // nothing and reads the first's declaration.
  Result<ProcessDeclaration> declare(const ProcessDeclaration& declaration) {
    return mapExceptions(kDeclare, [&]() -> Result<ProcessDeclaration> {
      auto valid = detail::validDeclaration(declaration);
      if (!valid) return valid;
      if (auto stored = pool_.with(
              [&](Connection& c) { return readDeclaration(c, valid->process, valid->version); })) {
        return std::move(*stored);
      }
      auto begun = pool_.begin();
      Pool::Lent& c = begun.first;
      try {
        Params v;
        addText(v, valid->process);
        v.add(valid->version);
        addTime(v, std::chrono::system_clock::now());
        if (c->run(kInsertProcessVersion.name, v).affected() == 0) {
          c->exec("ROLLBACK");
          auto stored = readDeclaration(*c, valid->process, valid->version);
          if (!stored) return fail(Errc::StoreError, "declare: the declaration vanished");
          return std::move(*stored);
        }
        for (const FieldDeclaration& field : valid->fields) {
          Params f;
          addText(f, valid->process);
          f.add(valid->version);
          addText(f, field.name);
          f.add(std::string(typeName(field.type)));
          c->run(kInsertProcessField.name, f);
        }
        for (const StepDeclaration& step : valid->steps) {
          Params s;
          addText(s, valid->process);
          s.add(valid->version);
          addText(s, step.name);
          s.add(std::string(detail::nameOf(step.kind)));
          if (step.heartbeat) {
            s.add(static_cast<std::int64_t>(step.heartbeat->count()));
          } else {
            s.addNull();
          }
          c->run(kInsertProcessStep.name, s);
        }
        notify(*c);
        c->exec("COMMIT");
        commits_.fetch_add(1, std::memory_order_release);
        return std::move(*valid);
      } catch (...) {
        rollbackQuietly(*c);
        throw;
      }
    });
  }

  Result<std::optional<ProcessDeclaration>> loadDeclaration(std::string_view process, int version) {
    return mapExceptions("loadDeclaration", [&]() -> Result<std::optional<ProcessDeclaration>> {
      return pool_.with(
          [&](Connection& c) { return readDeclaration(c, std::string(process), version); });
    });
  }

  // This store's own commits, and the notifications the listening connection
  // took in. An empty statement on it first, so that a commit another store
  // finished before this call is counted by it: the server delivers pending
  // notifications before it answers. A listening connection that broke is
  // opened again, and counts as a change (notifications may have been missed).
  Result<std::uint64_t> changeMark() ASYNCFLOW_EXCLUDES(listenerMutex_) {
    return mapExceptions("changeMark", [&]() -> Result<std::uint64_t> {
      MutexLock lock(listenerMutex_);
      bool changed = false;
      for (int attempt = 0;; ++attempt) {
        if (listener_ == nullptr || !listener_->ok()) {
          listener_.reset();
          listener_ = openListener(settings_, channel_);
          changed = true;
        }
        try {
          listener_->exec("");
          if (listener_->takeNotifications(self_) != 0) changed = true;
          break;
        } catch (const PgError& e) {
          // Lost while idle (a restart, a dropped connection): listen again, once.
          listener_.reset();
          if (!e.connectionLost() || attempt > 0) throw;
        }
      }
      const std::uint64_t commits = commits_.load(std::memory_order_acquire);
      if (commits != markCommits_) changed = true;
      markCommits_ = commits;
      if (changed) ++mark_;
      return mark_;
    });
  }

 private:
  // Tells the other stores on the schema, at this transaction's commit; the
  // payload names this store, whose own listeners leave it out.
  void notify(Connection& c) const { c.exec(notify_); }

  // Whether the transaction `id` committed, asked on another connection (the
  // one that sent COMMIT was lost). Throws PgError when that fails too: the
  // outcome is then unknown, and the caller reports the first error.
  bool committed(const std::string& id) {
    Params p;
    p.add(id);
    const PgResult r = pool_.query(kTransactionStatus.name, p);
    return r.rows() == 1 && r.text(0, 0) == "committed";
  }

  const ConnectionSettings settings_;
  const std::string channel_;
  const std::string self_;    // this store's id in its notifications
  const std::string notify_;  // NOTIFY channel_, 'self_'
  Pool pool_;
  std::atomic<std::uint64_t> commits_{0};
  Watcher watcher_;

  Mutex listenerMutex_;
  std::unique_ptr<Connection> listener_ ASYNCFLOW_GUARDED_BY(listenerMutex_);
  std::uint64_t mark_ ASYNCFLOW_GUARDED_BY(listenerMutex_) = 0;
  std::uint64_t markCommits_ ASYNCFLOW_GUARDED_BY(listenerMutex_) = 0;
};

Result<std::unique_ptr<PostgresStore>> PostgresStore::open(const std::string& conninfo,
                                                           PostgresOptions options) {
  if (!validSchemaName(options.schema)) {
    return fail(Errc::InvalidArgument,
                fmt::format("PostgresOptions::schema '{}' is not 1 to 63 of a-z, 0-9 and _ "
                            "(not starting with a digit)",
                            options.schema));
  }
  if (options.poolSize < 1 || options.poolSize > 256) {
    return fail(Errc::InvalidArgument,
                fmt::format("PostgresOptions::poolSize {} is not from 1 to 256", options.poolSize));
  }
  if (options.statementTimeout.count() < 0) {
    return fail(Errc::InvalidArgument, "PostgresOptions::statementTimeout is negative");
  }
  ConnectionSettings settings;
  settings.conninfo = conninfo;
  settings.schema = options.schema;
  settings.connectTimeoutSeconds = static_cast<int>(std::clamp<std::int64_t>(
      (options.connectTimeout.count() + 999) / 1000, 1, std::numeric_limits<int>::max()));
  settings.statementTimeout = options.statementTimeout;
  const std::string operation = "cannot open the PostgreSQL store";
  return mapExceptions(operation, [&]() -> Result<std::unique_ptr<PostgresStore>> {
    auto first = std::make_unique<Connection>(conninfo, settings.connectTimeoutSeconds);
    first->exec(fmt::format("SET statement_timeout = {}", settings.statementTimeout.count()));
    auto migrated = migrate(*first, settings.schema);
    if (!migrated) return tl::unexpected(migrated.error());
    first->exec(fmt::format("SET search_path TO {}", settings.schema));
    for (const Statement& statement : kAll) first->prepare(statement.name, statement.sql);
    auto impl = std::make_unique<Impl>(settings, options.poolSize, std::move(first));
    impl->listen();
    return std::unique_ptr<PostgresStore>(new PostgresStore(std::move(impl)));
  });
}

PostgresStore::PostgresStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PostgresStore::~PostgresStore() = default;

int PostgresStore::schemaVersion() noexcept { return latestSchemaVersion(); }

Result<InstanceSnapshot> PostgresStore::loadInstance(InstanceId id) {
  return impl_->loadInstance(id);
}
Result<StepRunRecord> PostgresStore::loadStepRun(InstanceId instance, std::int64_t run) {
  return impl_->loadStepRun(instance, run);
}
Result<InstanceRun> PostgresStore::loadInstanceRun(InstanceId instance, std::int64_t run) {
  return impl_->loadInstanceRun(instance, run);
}
Result<std::vector<ApplyResult>> PostgresStore::apply(std::vector<ChangeSet> batch) {
  return impl_->apply(std::move(batch));
}
Result<std::vector<WaitingRow>> PostgresStore::listWaiting(const WaitingQuery& query) {
  return impl_->listWaiting(query);
}
Result<std::vector<InstanceId>> PostgresStore::listRunning(const RunningQuery& query) {
  return impl_->listRunning(query);
}
Result<std::optional<Timestamp>> PostgresStore::nextDeadline(Timestamp after) {
  return impl_->nextDeadline(after);
}
Result<std::vector<DueRun>> PostgresStore::listDue(const DueQuery& query) {
  return impl_->listDue(query);
}
Result<std::vector<StepRunKey>> PostgresStore::findByKey(const KeyQuery& query) {
  return impl_->findByKey(query);
}
Result<std::vector<HistoryEvent>> PostgresStore::loadHistory(InstanceId id) {
  return impl_->loadHistory(id);
}
Result<std::optional<StartKeyRecord>> PostgresStore::findStartKey(std::string_view process,
                                                                  std::string_view key) {
  return impl_->findStartKey(process, key);
}
Result<std::optional<Timestamp>> PostgresStore::nextLeaseExpiry(Timestamp after,
                                                                std::string_view notOwnedBy) {
  return impl_->nextLeaseExpiry(after, notOwnedBy);
}
Result<std::vector<ExpiredLease>> PostgresStore::listExpiredLeases(const LeaseQuery& query) {
  return impl_->listExpiredLeases(query);
}
Result<ProcessDeclaration> PostgresStore::declare(const ProcessDeclaration& declaration) {
  return impl_->declare(declaration);
}
Result<std::optional<ProcessDeclaration>> PostgresStore::loadDeclaration(std::string_view process,
                                                                         int version) {
  return impl_->loadDeclaration(process, version);
}
Result<std::uint64_t> PostgresStore::changeMark() { return impl_->changeMark(); }
std::unique_ptr<ChangeWatch> PostgresStore::watchChanges(std::function<void()> changed) {
  return impl_->watchChanges(std::move(changed));
}

}  // namespace asyncflow

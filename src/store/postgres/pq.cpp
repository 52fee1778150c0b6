#include "store/postgres/pq.hpp"

#include <atomic>
#include <charconv>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include "store/postgres/round_trips.hpp"

namespace asyncflow::detail::pg {
namespace {

std::atomic<std::uint64_t> sent{0};

// libpq's message without its trailing newline.
std::string trimmed(const char* message) {
  std::string text = message != nullptr ? message : "";
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text.empty() ? std::string("unknown libpq error") : text;
}

}  // namespace

PgResult& PgResult::operator=(PgResult&& other) noexcept {
  if (this != &other) {
    PQclear(result_);
    result_ = other.result_;
    other.result_ = nullptr;
  }
  return *this;
}

PgResult::~PgResult() { PQclear(result_); }

std::int64_t PgResult::affected() const {
  const char* count = PQcmdTuples(result_);
  std::int64_t n = 0;
  if (count == nullptr || *count == '\0') return 0;
  const std::string_view text(count);
  std::from_chars(text.data(), text.data() + text.size(), n);
  return n;
}

std::int64_t PgResult::int64(int row, int column) const {
  if (isNull(row, column)) {
    throw PgError(fmt::format("column {} of row {} is NULL where a number belongs", column, row),
                  "", false);
  }
  const std::string_view value = text(row, column);
  std::int64_t n = 0;
  const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (error != std::errc() || end != value.data() + value.size()) {
    throw PgError(fmt::format("the database holds '{}' where a number belongs", value), "", false);
  }
  return n;
}

Params& Params::add(std::string value) {
  storage_.push_back(std::move(value));
  null_.push_back(false);
  return *this;
}

Params& Params::addNull() {
  storage_.emplace_back();
  null_.push_back(true);
  return *this;
}

const char* const* Params::values() {
  values_.clear();
  lengths_.clear();
  for (std::size_t i = 0; i < storage_.size(); ++i) {
    values_.push_back(null_[i] ? nullptr : storage_[i].c_str());
    lengths_.push_back(static_cast<int>(storage_[i].size()));
  }
  return values_.data();
}

Connection::Connection(const std::string& conninfo, int connectTimeoutSeconds) {
  // The caller's conninfo first; ours after it win: a fixed client encoding (the
  // codec writes UTF-8) and the connect timeout.
  const std::string timeout = std::to_string(connectTimeoutSeconds < 1 ? 1 : connectTimeoutSeconds);
  const char* keys[] = {"dbname", "client_encoding", "connect_timeout", "fallback_application_name",
                        nullptr};
  const char* values[] = {conninfo.c_str(), "UTF8", timeout.c_str(), "asyncflow", nullptr};
  conn_ = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (conn_ == nullptr) throw PgError("cannot connect: out of memory", "", true);
  if (PQstatus(conn_) != CONNECTION_OK) {
    std::string message = trimmed(PQerrorMessage(conn_));
    PQfinish(conn_);
    conn_ = nullptr;
    throw PgError(message, "", true);
  }
  // The server's notices (CREATE ... IF NOT EXISTS skipping, and the like) are
  // no business of the host's stderr.
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
}

Connection::~Connection() { PQfinish(conn_); }

std::uint64_t roundTrips() noexcept { return sent.load(std::memory_order_relaxed); }

PgResult Connection::check(PGresult* result, const char* what) {
  sent.fetch_add(1, std::memory_order_relaxed);
  const ExecStatusType status = result != nullptr ? PQresultStatus(result) : PGRES_FATAL_ERROR;
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_EMPTY_QUERY) {
    return PgResult(result);
  }
  std::string message =
      trimmed(result != nullptr ? PQresultErrorMessage(result) : PQerrorMessage(conn_));
  if (message == "unknown libpq error") message = trimmed(PQerrorMessage(conn_));
  const char* state = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  std::string sqlstate = state != nullptr ? state : "";
  PQclear(result);
  const bool lost = PQstatus(conn_) != CONNECTION_OK;
  throw PgError(fmt::format("{}: {}", what, message), std::move(sqlstate), lost);
}

PgResult Connection::exec(const std::string& sql) {
  return check(PQexec(conn_, sql.c_str()), "exec");
}

PgResult Connection::exec(const std::string& sql, Params& params) {
  const char* const* values = params.values();
  return check(PQexecParams(conn_, sql.c_str(), params.size(), nullptr, values, params.lengths(),
                            nullptr, 0),
               "query");
}

PgResult Connection::run(const std::string& name, Params& params) {
  const char* const* values = params.values();
  return check(
      PQexecPrepared(conn_, name.c_str(), params.size(), values, params.lengths(), nullptr, 0),
      name.c_str());
}

void Connection::prepare(const std::string& name, const std::string& sql) {
  check(PQprepare(conn_, name.c_str(), sql.c_str(), 0, nullptr), "prepare");
}

PgError Connection::lost(const char* what) const {
  return PgError(fmt::format("pipeline: {}: {}", what, trimmed(PQerrorMessage(conn_))), "",
                 PQstatus(conn_) != CONNECTION_OK);
}

void Connection::send(std::vector<Call>& calls) {
  for (Call& call : calls) {
    const char* const* values = call.params.values();
    const int sentOk = call.sql
                           ? PQsendQueryParams(conn_, call.statement.c_str(), call.params.size(),
                                               nullptr, values, call.params.lengths(), nullptr, 0)
                           : PQsendQueryPrepared(conn_, call.statement.c_str(), call.params.size(),
                                                 values, call.params.lengths(), nullptr, 0);
    if (sentOk != 1) throw lost("cannot send");
  }
}

std::vector<PgResult> Connection::receive(const std::vector<Call>& calls) {
  std::vector<PgResult> results;
  results.reserve(calls.size());
  std::optional<PgError> first;
  for (std::size_t i = 0; i < calls.size(); ++i) {
    PGresult* result = PQgetResult(conn_);
    if (result == nullptr) throw lost("the server sent no result");
    const ExecStatusType status = PQresultStatus(result);
    if (status == PGRES_PIPELINE_ABORTED) {
      PQclear(result);
      results.emplace_back(nullptr);
    } else if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) {
      results.emplace_back(result);
    } else {
      const char* field = PQresultErrorField(result, PG_DIAG_SQLSTATE);
      std::string state = field != nullptr ? field : "";  // copied: it lives in `result`
      std::string message = trimmed(PQresultErrorMessage(result));
      // A FATAL error ends the session: the server closes the connection after
      // it, though libpq may not have seen the close yet.
      const char* severity = PQresultErrorField(result, PG_DIAG_SEVERITY_NONLOCALIZED);
      const bool fatal = severity != nullptr && (std::string_view(severity) == "FATAL" ||
                                                 std::string_view(severity) == "PANIC");
      PQclear(result);
      const bool gone = fatal || PQstatus(conn_) != CONNECTION_OK;
      if (!first) {
        first.emplace(
            fmt::format("{}: {}", calls[i].sql ? "statement" : calls[i].statement, message),
            std::move(state), gone);
      }
      results.emplace_back(nullptr);
      if (gone) throw *first;
    }
    // Each call's results end with a null.
    if (PGresult* extra = PQgetResult(conn_)) {
      PQclear(extra);
      throw lost("the server sent more than one result for a call");
    }
  }
  if (first) throw *first;
  return results;
}

void Connection::receiveSync() {
  PGresult* sync = PQgetResult(conn_);
  const ExecStatusType status = sync != nullptr ? PQresultStatus(sync) : PGRES_FATAL_ERROR;
  std::string message =
      status == PGRES_PIPELINE_SYNC || sync == nullptr ? "" : trimmed(PQresultErrorMessage(sync));
  PQclear(sync);
  if (status != PGRES_PIPELINE_SYNC) {
    // The implicit transaction's COMMIT failed at the Sync (or the connection).
    if (message.empty()) throw lost("no end of the pipeline");
    throw PgError(fmt::format("pipeline: commit: {}", message), "",
                  PQstatus(conn_) != CONNECTION_OK);
  }
  if (PQexitPipelineMode(conn_) != 1) throw lost("cannot leave pipeline mode");
}

std::vector<PgResult> Connection::pipeline(std::vector<Call>& calls) {
  sent.fetch_add(1, std::memory_order_relaxed);
  if (PQenterPipelineMode(conn_) != 1) throw lost("cannot enter pipeline mode");
  // Leaves pipeline mode however this ends; a connection that cannot is broken
  // (the pool drops a connection that is not idle).
  struct Exit {
    PGconn* conn;
    ~Exit() {
      if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF) PQexitPipelineMode(conn);
    }
  } exit{conn_};
  send(calls);
  if (PQpipelineSync(conn_) != 1) throw lost("cannot sync");
  std::optional<PgError> failed;
  std::vector<PgResult> results;
  try {
    results = receive(calls);
  } catch (const PgError& e) {
    if (e.connectionLost()) throw;
    failed.emplace(e);  // the Sync's result is still to be read
  }
  PGresult* sync = PQgetResult(conn_);
  const bool synced = sync != nullptr && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
  PQclear(sync);
  if (!synced) throw lost("no end of the pipeline");
  if (failed) throw *failed;
  return results;
}

void Connection::beginImplicit() {
  if (PQenterPipelineMode(conn_) != 1) throw lost("cannot enter pipeline mode");
  implicit_ = true;
}

std::vector<PgResult> Connection::exchange(std::vector<Call>& calls) {
  sent.fetch_add(1, std::memory_order_relaxed);
  try {
    send(calls);
    if (PQsendFlushRequest(conn_) != 1) throw lost("cannot flush");
    return receive(calls);
  } catch (...) {
    abandonImplicit();
    throw;
  }
}

std::vector<PgResult> Connection::end(std::vector<Call>& calls) {
  sent.fetch_add(1, std::memory_order_relaxed);
  try {
    send(calls);
    if (PQpipelineSync(conn_) != 1) throw lost("cannot sync");
    std::vector<PgResult> results = receive(calls);
    receiveSync();
    implicit_ = false;
    return results;
  } catch (...) {
    abandonImplicit();
    throw;
  }
}

void Connection::abandonImplicit() noexcept {
  if (!implicit_) return;
  implicit_ = false;
  // Closing is the one way to end the transaction without a Sync, which would
  // commit what was written so far.
  PQfinish(conn_);
  conn_ = nullptr;
}

std::size_t Connection::takeNotifications(std::string_view ignore) {
  if (PQconsumeInput(conn_) == 0) {
    throw PgError(fmt::format("listen: {}", trimmed(PQerrorMessage(conn_))), "", true);
  }
  std::size_t count = 0;
  while (PGnotify* notification = PQnotifies(conn_)) {
    const bool own = !ignore.empty() && notification->extra != nullptr &&
                     std::string_view(notification->extra) == ignore;
    PQfreemem(notification);
    if (!own) ++count;
  }
  return count;
}

}  // namespace asyncflow::detail::pg

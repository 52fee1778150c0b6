// A small RAII layer over libpq (internal to the PostgreSQL store): one
// connection, its results, and the parameters of a statement.
//
// Every call throws PgError on failure; the store maps it to a StoreError at its
// boundary (errors.hpp), so no exception crosses the Store interface. Values
// travel in libpq's text format: the store's codec decides what they mean.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <libpq-fe.h>

namespace asyncflow::detail::pg {

// A failure of the server or of the connection. `sqlstate` is the server's
// five-character code ("40001", "23505", ...), empty when libpq itself failed;
// `connectionLost` says the connection is unusable and must be opened again.
class PgError : public std::runtime_error {
 public:
  PgError(const std::string& message, std::string sqlstate, bool connectionLost)
      : std::runtime_error(message), sqlstate_(std::move(sqlstate)),
        connectionLost_(connectionLost) {}
  const std::string& sqlstate() const noexcept { return sqlstate_; }
  bool connectionLost() const noexcept { return connectionLost_; }

 private:
  std::string sqlstate_;
  bool connectionLost_;
};

// SQLSTATE unique_violation: an INSERT met an existing key.
inline constexpr std::string_view kUniqueViolation = "23505";

// One statement's result, owned. Rows and columns count from 0.
class PgResult {
 public:
  explicit PgResult(PGresult* result) noexcept : result_(result) {}
  PgResult(PgResult&& other) noexcept : result_(other.result_) { other.result_ = nullptr; }
  PgResult& operator=(PgResult&& other) noexcept;
  PgResult(const PgResult&) = delete;
  PgResult& operator=(const PgResult&) = delete;
  ~PgResult();

  int rows() const noexcept { return PQntuples(result_); }
  // How many rows an INSERT, UPDATE or DELETE touched.
  std::int64_t affected() const;
  bool isNull(int row, int column) const noexcept { return PQgetisnull(result_, row, column) != 0; }
  // The column's text; empty for NULL. Valid while this result lives.
  std::string_view text(int row, int column) const noexcept {
    return std::string_view(PQgetvalue(result_, row, column),
                            static_cast<std::size_t>(PQgetlength(result_, row, column)));
  }
  // The column as a bigint (or integer); throws PgError for NULL or other text.
  std::int64_t int64(int row, int column) const;

 private:
  PGresult* result_;
};

// The parameters of one statement, as text ($1, $2, ...).
class Params {
 public:
  Params& add(std::string value);
  Params& add(std::int64_t value) { return add(std::to_string(value)); }
  Params& add(int value) { return add(std::to_string(value)); }
  Params& addNull();

  int size() const noexcept { return static_cast<int>(values_.size()); }
  // libpq's arrays; valid until the next add().
  const char* const* values();
  const int* lengths() const noexcept { return lengths_.data(); }

 private:
  std::vector<std::string> storage_;
  std::vector<bool> null_;
  std::vector<const char*> values_;
  std::vector<int> lengths_;
};

// One statement of a pipeline: a prepared statement by name, or SQL text
// (BEGIN, COMMIT, NOTIFY ...), with its parameters.
struct Call {
  std::string statement;  // a prepared statement's name, or SQL when `sql`
  bool sql = false;
  Params params;
};

// One open connection, with the statements it has prepared. Not thread-safe:
// one thread at a time (the store's pool hands it out).
class Connection {
 public:
  // Connects, waiting at most connectTimeout seconds; throws PgError (with the
  // server's or libpq's message) when the server is unreachable or refuses.
  Connection(const std::string& conninfo, int connectTimeoutSeconds);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // Runs one or more statements without parameters; throws PgError.
  PgResult exec(const std::string& sql);
  // Runs one statement with text parameters; throws PgError.
  PgResult exec(const std::string& sql, Params& params);
  // Runs the statement prepared under `name` (prepare()); throws PgError.
  PgResult run(const std::string& name, Params& params);
  // Prepares `sql` under `name` for run(); throws PgError.
  void prepare(const std::string& name, const std::string& sql);
  // Sends every call, then reads every result: one round trip for them all
  // (libpq's pipeline mode). The results in call order; throws PgError for the
  // first call that failed (the server skipped those after it; an open
  // transaction is then in a failed state, to be rolled back).
  std::vector<PgResult> pipeline(std::vector<Call>& calls);

  // One implicit transaction in pipeline mode, over several round trips. In the
  // extended query protocol every statement up to a Sync is one transaction,
  // committed at the Sync unless a statement failed; so a batch needs no BEGIN
  // and no COMMIT. exchange() sends calls with a flush request (no Sync) and
  // reads their results; end() sends the last calls and the Sync, and reads
  // them and the commit's outcome. Throws PgError as pipeline() does. Once a
  // call failed, or when the transaction is abandoned before end(), the
  // connection is closed (ok() is then false), so that nothing of it commits.
  // No other call on the connection in between.
  void beginImplicit();
  std::vector<PgResult> exchange(std::vector<Call>& calls);
  std::vector<PgResult> end(std::vector<Call>& calls);
  // Closes the connection if an implicit transaction is open (see above).
  void abandonImplicit() noexcept;

  // Whether the connection still works (libpq's CONNECTION_OK).
  bool ok() const noexcept { return PQstatus(conn_) == CONNECTION_OK; }
  // Whether no transaction is open (or one failed and must be rolled back: false).
  bool idle() const noexcept { return PQtransactionStatus(conn_) == PQTRANS_IDLE; }

  // LISTEN support: the socket to wait on, and how many notifications have
  // arrived since the last call, leaving out those whose payload is `ignore`
  // (reads what the server sent, never blocks). Throws PgError when the
  // connection is lost.
  int socket() const noexcept { return PQsocket(conn_); }
  std::size_t takeNotifications(std::string_view ignore = {});

 private:
  // Throws PgError for a result that is not `expected` (freeing it).
  PgResult check(PGresult* result, const char* what);
  // Sends every call in pipeline mode (entered already); throws PgError.
  void send(std::vector<Call>& calls);
  // Reads the results of `calls`, as pipeline() describes.
  std::vector<PgResult> receive(const std::vector<Call>& calls);
  // Reads the Sync's result, then leaves pipeline mode; throws PgError.
  void receiveSync();
  // A PgError about the connection, with libpq's message.
  PgError lost(const char* what) const;

  PGconn* conn_;
  bool implicit_ = false;  // an implicit transaction is open (beginImplicit)
};

}  // namespace asyncflow::detail::pg

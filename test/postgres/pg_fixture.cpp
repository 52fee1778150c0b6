// asyncflow_pg_fixture: the throwaway PostgreSQL server of the PostgreSQL tests,
// started and stopped by the ctest fixture tests postgres.start and postgres.stop.
//
//   asyncflow_pg_fixture [--bindir DIR] start STATE_FILE
//   asyncflow_pg_fixture stop STATE_FILE
//   asyncflow_pg_fixture restart STATE_FILE
//   asyncflow_pg_fixture conninfo STATE_FILE
//
// start: with ASYNCFLOW_TEST_POSTGRES set, records that conninfo as an external
// server and starts nothing. Otherwise initdb's a fresh cluster in a mkdtemp
// folder under the temp dir (owned by, and run as, the postgres user when we are
// root), listening on 127.0.0.1 only, on a free port, with its Unix socket in
// that folder; creates the database asyncflow_test; writes STATE_FILE last.
// stop: stops the server and removes its folder and STATE_FILE; a missing
// STATE_FILE means nothing was started, and is success. restart: stops and
// starts the server on the same port and data (tests simulate a server restart).
// conninfo: prints the libpq conninfo.
//
// STATE_FILE holds key=value lines: conninfo, datadir, bindir, runas (postgres,
// or empty when not root) and external (0 or 1).
//
// Exit codes: 0 done, 1 failed (the reason on stderr), 2 usage, 3 restart of an
// external server (unsupported).
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pwd.h>

namespace fs = std::filesystem;

namespace {

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnsupported = 3;

// A start that fails because another process took the port is retried on a new
// one, this many attempts in all.
constexpr int kStartAttempts = 5;
constexpr const char* kDatabase = "asyncflow_test";
constexpr const char* kSuperuser = "postgres";
// The prefix of every data folder; stop refuses to remove a folder without it.
constexpr const char* kFolderPrefix = "asyncflow-pg-";

// A failure with the message for stderr.
struct Failure {
  std::string message;
};

struct State {
  std::string conninfo;
  std::string datadir;
  std::string bindir;
  std::string runas;  // the user the server runs as; empty: ourselves
  bool external = false;
};

struct ProcessResult {
  int status = -1;     // the exit code; -1 when it did not run or died of a signal
  std::string output;  // stdout and stderr, interleaved
};

std::string describe(const std::vector<std::string>& argv) {
  std::string text;
  for (const std::string& arg : argv) text += (text.empty() ? "" : " ") + arg;
  return text;
}

// Runs argv (no shell; argv[0] looked up on PATH) with stdin from /dev/null and
// stdout and stderr captured, and waits for it. The child runs in "/" so that a
// tool run as another user never trips over a working directory it cannot read.
ProcessResult run(const std::vector<std::string>& argv) {
  ProcessResult result;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    result.output = std::string("pipe: ") + std::strerror(errno);
    return result;
  }
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);

  const pid_t pid = ::fork();
  if (pid < 0) {
    result.output = std::string("fork: ") + std::strerror(errno);
    ::close(fds[0]);
    ::close(fds[1]);
    return result;
  }
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    const int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) ::dup2(null, STDIN_FILENO);
    ::dup2(fds[1], STDOUT_FILENO);
    ::dup2(fds[1], STDERR_FILENO);
    if (::chdir("/") != 0) ::_exit(126);
    ::execvp(args[0], args.data());
    const char* what = "exec failed: ";
    (void)!::write(STDERR_FILENO, what, std::strlen(what));
    (void)!::write(STDERR_FILENO, args[0], std::strlen(args[0]));
    (void)!::write(STDERR_FILENO, "\n", 1);
    ::_exit(127);
  }
  ::close(fds[1]);
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buffer, sizeof buffer);
    if (n > 0) {
      result.output.append(buffer, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// argv for one of the server's binaries, through runuser when it runs as another user.
std::vector<std::string> serverCommand(const State& state, const std::string& tool,
                                       std::vector<std::string> args) {
  std::vector<std::string> argv;
  if (!state.runas.empty()) argv = {"runuser", "-u", state.runas, "--"};
  argv.push_back(state.bindir + "/" + tool);
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

// Runs a server binary; a Failure naming the command and its output unless it exits 0.
void runOrFail(const State& state, const std::string& tool, std::vector<std::string> args) {
  const std::vector<std::string> argv = serverCommand(state, tool, std::move(args));
  const ProcessResult result = run(argv);
  if (result.status != 0) {
    throw Failure{describe(argv) + " failed (exit " + std::to_string(result.status) + "):\n" +
                  result.output};
  }
}

std::string readFile(const fs::path& path, std::streamoff from = 0) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  in.seekg(from);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The size of the server log, 0 when it does not exist yet: where this attempt's lines begin.
std::streamoff logSize(const fs::path& log) {
  std::error_code error;
  const std::uintmax_t size = fs::file_size(log, error);
  return error ? 0 : static_cast<std::streamoff>(size);
}

// The last lines of the server log from byte `from` on, for a failure message.
std::string logTail(const fs::path& log, std::streamoff from = 0, size_t lines = 30) {
  const std::string text = readFile(log, from);
  if (text.empty()) return "  (" + log.string() + " is empty or missing)\n";
  size_t start = text.size();
  for (size_t seen = 0; start > 0 && seen <= lines;) {
    --start;
    if (text[start] == '\n' && start + 1 < text.size()) ++seen;
  }
  if (start > 0) ++start;
  return "--- last lines of " + log.string() + " ---\n" + text.substr(start);
}

std::optional<State> readState(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::map<std::string, std::string> values;
  for (std::string line; std::getline(in, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) values[line.substr(0, eq)] = line.substr(eq + 1);
  }
  State state;
  state.conninfo = values["conninfo"];
  state.datadir = values["datadir"];
  state.bindir = values["bindir"];
  state.runas = values["runas"];
  state.external = values["external"] == "1";
  if (state.conninfo.empty()) throw Failure{path.string() + ": no conninfo line"};
  if (!state.external && (state.datadir.empty() || state.bindir.empty())) {
    throw Failure{path.string() + ": no datadir or bindir line"};
  }
  return state;
}

// Written to a temporary name and renamed: a reader sees the whole file or none.
// Mode 0600: the conninfo holds the password.
void writeState(const fs::path& path, const State& state) {
  for (const std::string* value : {&state.conninfo, &state.datadir, &state.bindir}) {
    if (value->find('\n') != std::string::npos) throw Failure{"a state value holds a newline"};
  }
  const fs::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << "conninfo=" << state.conninfo << "\n"
        << "datadir=" << state.datadir << "\n"
        << "bindir=" << state.bindir << "\n"
        << "runas=" << state.runas << "\n"
        << "external=" << (state.external ? 1 : 0) << "\n";
    out.flush();
    if (!out) throw Failure{"cannot write " + temporary.string()};
  }
  ::chmod(temporary.c_str(), 0600);
  std::error_code error;
  fs::rename(temporary, path, error);
  if (error) throw Failure{"cannot rename " + temporary.string() + ": " + error.message()};
}

// A major version folder name ("15", "9.6") as numbers, for ordering.
std::vector<int> versionOf(const std::string& name) {
  std::vector<int> parts;
  std::istringstream in(name);
  for (std::string part; std::getline(in, part, '.');) {
    if (part.empty() || part.find_first_not_of("0123456789") != std::string::npos) return {};
    parts.push_back(std::stoi(part));
  }
  return parts;
}

// The newest /usr/lib/postgresql/<version>/bin that has pg_ctl.
std::string findBindir() {
  std::vector<int> best;
  std::string bindir;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator("/usr/lib/postgresql", error)) {
    const std::vector<int> version = versionOf(entry.path().filename().string());
    const fs::path bin = entry.path() / "bin";
    if (version.empty() || ::access((bin / "pg_ctl").c_str(), X_OK) != 0) continue;
    if (bindir.empty() || version > best) {
      best = version;
      bindir = bin.string();
    }
  }
  if (bindir.empty()) {
    throw Failure{
        "no PostgreSQL server binaries: no /usr/lib/postgresql/*/bin/pg_ctl (Debian: "
        "postgresql); pass --bindir DIR or set ASYNCFLOW_TEST_POSTGRES to a server's conninfo"};
  }
  return bindir;
}

// A port that was free a moment ago: bound to 127.0.0.1 port 0 and read back.
// The socket is closed before the server binds it, hence the retries in start.
int freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Failure{std::string("socket: ") + std::strerror(errno)};
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    const std::string reason = std::strerror(errno);
    ::close(fd);
    throw Failure{"cannot find a free port on 127.0.0.1: " + reason};
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

// 32 hex digits from /dev/urandom.
std::string randomPassword() {
  unsigned char bytes[16];
  std::ifstream in("/dev/urandom", std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(bytes), sizeof bytes)) {
    throw Failure{"cannot read /dev/urandom"};
  }
  static const char kHex[] = "0123456789abcdef";
  std::string password;
  for (unsigned char byte : bytes) {
    password += kHex[byte >> 4];
    password += kHex[byte & 0xf];
  }
  return password;
}

// A postgresql.conf string literal.
std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

// The fixture's settings live in asyncflow_fixture.conf, included from
// postgresql.conf and rewritten for each port tried; restart reads the same file,
// so the port stays.
void writeSettings(const fs::path& datadir, int port, const passwd* owner) {
  const fs::path settings = datadir / "asyncflow_fixture.conf";
  {
    std::ofstream out(settings, std::ios::trunc);
    out << "# Written by asyncflow_pg_fixture.\n"
        << "listen_addresses = '127.0.0.1'\n"
        << "port = " << port << "\n"
        << "unix_socket_directories = " << quoted(datadir.string()) << "\n"
        << "fsync = on\n"
        << "max_connections = 200\n";
    if (!out) throw Failure{"cannot write " + settings.string()};
  }
  if (owner != nullptr && ::chown(settings.c_str(), owner->pw_uid, owner->pw_gid) != 0) {
    throw Failure{"chown " + settings.string() + ": " + std::strerror(errno)};
  }
}

void includeSettings(const fs::path& datadir) {
  std::ofstream out(datadir / "postgresql.conf", std::ios::app);
  out << "\n# asyncflow_pg_fixture\ninclude 'asyncflow_fixture.conf'\n";
  if (!out) throw Failure{"cannot append to " + (datadir / "postgresql.conf").string()};
}

bool serverRunning(const State& state) {
  // pg_ctl status: 0 running, 3 not running, 4 no data folder.
  return run(serverCommand(state, "pg_ctl", {"status", "-D", state.datadir})).status == 0;
}

// Stops the server (fast, then immediate) if it runs, then removes its folder.
// The folder stays when the server would not stop, so that nothing is deleted
// under a live server.
void stopAndRemove(const State& state) {
  if (serverRunning(state)) {
    ProcessResult fast =
        run(serverCommand(state, "pg_ctl", {"-D", state.datadir, "-m", "fast", "-w", "stop"}));
    if (fast.status != 0) {
      ProcessResult immediate = run(
          serverCommand(state, "pg_ctl", {"-D", state.datadir, "-m", "immediate", "-w", "stop"}));
      if (immediate.status != 0) {
        throw Failure{"cannot stop the server in " + state.datadir + ":\n" + fast.output +
                      immediate.output + logTail(fs::path(state.datadir) / "server.log")};
      }
    }
  }
  const fs::path datadir(state.datadir);
  if (datadir.filename().string().rfind(kFolderPrefix, 0) != 0) {
    throw Failure{"refusing to remove " + state.datadir + ": not a folder of this fixture"};
  }
  std::error_code error;
  fs::remove_all(datadir, error);
  if (error) throw Failure{"cannot remove " + state.datadir + ": " + error.message()};
}

// Removes a file when it goes out of scope.
class RemoveOnExit {
 public:
  explicit RemoveOnExit(fs::path path) : path_(std::move(path)) {}
  ~RemoveOnExit() {
    std::error_code ignored;
    fs::remove(path_, ignored);
  }
  RemoveOnExit(const RemoveOnExit&) = delete;
  RemoveOnExit& operator=(const RemoveOnExit&) = delete;

 private:
  fs::path path_;
};

// initdb into state.datadir (empty) with the superuser's password from a pwfile.
void initCluster(const State& state, const std::string& password, const passwd* owner) {
  std::string pwfile = (fs::temp_directory_path() / "asyncflow-pg-pw-XXXXXX").string();
  const int fd = ::mkstemp(pwfile.data());
  if (fd < 0) throw Failure{"mkstemp " + pwfile + ": " + std::strerror(errno)};
  RemoveOnExit removePwfile(pwfile);
  const std::string line = password + "\n";
  const bool written = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  const bool owned = owner == nullptr || ::fchown(fd, owner->pw_uid, owner->pw_gid) == 0;
  ::close(fd);
  if (!written || !owned) throw Failure{"cannot write " + pwfile + ": " + std::strerror(errno)};

  runOrFail(state, "initdb",
            {"-D", state.datadir, "-U", kSuperuser, "--pwfile=" + pwfile, "--auth-local=trust",
             "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"});
}

// Starts the cluster on a free port, trying a new port when the server lost the
// race for the last one. Returns the port.
int startOnFreePort(const State& state, const passwd* owner) {
  const fs::path log = fs::path(state.datadir) / "server.log";
  for (int attempt = 1;; ++attempt) {
    const int port = freePort();
    writeSettings(state.datadir, port, owner);
    const std::streamoff logStart = logSize(log);
    const ProcessResult result = run(serverCommand(
        state, "pg_ctl", {"-w", "-t", "60", "-D", state.datadir, "-l", log.string(), "start"}));
    if (result.status == 0) return port;

    // The server's messages are in English: initdb --locale=C sets lc_messages.
    const std::string attemptLog = readFile(log, logStart);
    const bool portTaken = attemptLog.find("Address already in use") != std::string::npos;
    if (!portTaken || attempt == kStartAttempts || serverRunning(state)) {
      throw Failure{"pg_ctl start failed (exit " + std::to_string(result.status) + ", port " +
                    std::to_string(port) + ", attempt " + std::to_string(attempt) + "):\n" +
                    result.output + logTail(log, logStart)};
    }
    std::cerr << "asyncflow_pg_fixture: port " << port << " was taken; trying another\n";
  }
}

int startExternal(const fs::path& statePath, const std::string& conninfo) {
  State state;
  state.conninfo = conninfo;
  state.external = true;
  writeState(statePath, state);
  std::cout << "asyncflow_pg_fixture: using the external server of ASYNCFLOW_TEST_POSTGRES\n";
  return 0;
}

int start(const fs::path& statePath, std::string bindir) {
  // A state file left by an interrupted run: its server goes first.
  std::optional<State> old;
  try {
    old = readState(statePath);
  } catch (const Failure& unreadable) {
    std::cerr << "asyncflow_pg_fixture: ignoring " << unreadable.message << "\n";
    fs::remove(statePath);
  }
  if (old) {
    std::cerr << "asyncflow_pg_fixture: stopping the server of an earlier run ("
              << statePath.string() << ")\n";
    if (!old->external) stopAndRemove(*old);
    fs::remove(statePath);
  }
  if (const char* external = std::getenv("ASYNCFLOW_TEST_POSTGRES"); external && *external) {
    return startExternal(statePath, external);
  }

  State state;
  state.bindir = bindir.empty() ? findBindir() : std::move(bindir);
  const passwd* owner = nullptr;
  if (::geteuid() == 0) {
    // initdb and postgres refuse to run as root.
    owner = ::getpwnam(kSuperuser);
    if (owner == nullptr) {
      throw Failure{"running as root, and there is no 'postgres' user to run the server as"};
    }
    state.runas = kSuperuser;
  }

  std::string datadir =
      (fs::temp_directory_path() / (std::string(kFolderPrefix) + "XXXXXX")).string();
  if (::mkdtemp(datadir.data()) == nullptr) {
    throw Failure{"mkdtemp " + datadir + ": " + std::strerror(errno)};
  }
  state.datadir = datadir;
  try {
    if (owner != nullptr && ::chown(datadir.c_str(), owner->pw_uid, owner->pw_gid) != 0) {
      throw Failure{"chown " + datadir + ": " + std::strerror(errno)};
    }
    const std::string password = randomPassword();
    initCluster(state, password, owner);
    includeSettings(state.datadir);
    const int port = startOnFreePort(state, owner);
    // Over the Unix socket in the data folder, where the superuser needs no password.
    runOrFail(state, "createdb",
              {"-h", state.datadir, "-p", std::to_string(port), "-U", kSuperuser, kDatabase});
    state.conninfo = "host=127.0.0.1 port=" + std::to_string(port) + " dbname=" + kDatabase +
                     " user=" + kSuperuser + " password=" + password;
    writeState(statePath, state);
    std::cout << "asyncflow_pg_fixture: PostgreSQL (" << state.bindir << ") on 127.0.0.1:" << port
              << ", data in " << state.datadir << "\n";
    return 0;
  } catch (const Failure&) {
    try {
      stopAndRemove(state);
    } catch (const Failure& cleanup) {
      std::cerr << "asyncflow_pg_fixture: " << cleanup.message << "\n";
    }
    throw;
  }
}

int stop(const fs::path& statePath) {
  const std::optional<State> state = readState(statePath);
  if (!state) return 0;  // nothing was started
  if (!state->external) stopAndRemove(*state);
  fs::remove(statePath);
  return 0;
}

int restart(const fs::path& statePath) {
  const std::optional<State> state = readState(statePath);
  if (!state) throw Failure{"no state file " + statePath.string() + ": no server was started"};
  if (state->external) {
    std::cerr << "asyncflow_pg_fixture: restart is unsupported for the external server of "
                 "ASYNCFLOW_TEST_POSTGRES\n";
    return kExitUnsupported;
  }
  // -l again: without it the restarted server would write to our stdout.
  const fs::path log = fs::path(state->datadir) / "server.log";
  const std::streamoff logStart = logSize(log);
  const ProcessResult result = run(serverCommand(
      *state, "pg_ctl",
      {"-w", "-t", "60", "-D", state->datadir, "-l", log.string(), "-m", "fast", "restart"}));
  if (result.status != 0) {
    throw Failure{"pg_ctl restart failed (exit " + std::to_string(result.status) + "):\n" +
                  result.output + logTail(log, logStart)};
  }
  return 0;
}

int conninfo(const fs::path& statePath) {
  const std::optional<State> state = readState(statePath);
  if (!state) throw Failure{"no state file " + statePath.string() + ": no server was started"};
  std::cout << state->conninfo << "\n";
  return 0;
}

int usage() {
  std::cerr << "usage: asyncflow_pg_fixture [--bindir DIR] start STATE_FILE\n"
               "       asyncflow_pg_fixture stop|restart|conninfo STATE_FILE\n";
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string bindir;
  if (args.size() >= 2 && args[0] == "--bindir") {
    bindir = args[1];
    args.erase(args.begin(), args.begin() + 2);
  }
  if (args.size() != 2 || args[1].empty()) return usage();
  const std::string& command = args[0];
  const fs::path statePath = fs::absolute(args[1]);
  try {
    if (command == "start") return start(statePath, bindir);
    if (!bindir.empty()) return usage();
    if (command == "stop") return stop(statePath);
    if (command == "restart") return restart(statePath);
    if (command == "conninfo") return conninfo(statePath);
    return usage();
  } catch (const Failure& failure) {
    std::cerr << "asyncflow_pg_fixture " << command << ": " << failure.message << "\n";
    return kExitFailed;
  } catch (const std::exception& error) {
    std::cerr << "asyncflow_pg_fixture " << command << ": " << error.what() << "\n";
    return kExitFailed;
  }
}

#include "postgres/pg_test_server.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <vector>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spawn.h>

extern char** environ;

namespace asyncflow::testing {
namespace {

// A variable's value; empty when unset.
std::string variable(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

// The key=value lines of the fixture's state file; empty when it cannot be read.
std::map<std::string, std::string> readState(const std::string& path) {
  std::map<std::string, std::string> values;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) values[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return values;
}

}  // namespace

std::optional<PgTestServer> pgTestServer() {
  if (std::string conninfo = variable("ASYNCFLOW_TEST_POSTGRES"); !conninfo.empty()) {
    return PgTestServer{std::move(conninfo), true};
  }
  const std::string statePath = variable("ASYNCFLOW_PG_STATE");
  if (statePath.empty()) return std::nullopt;
  std::map<std::string, std::string> state = readState(statePath);
  if (state["conninfo"].empty()) return std::nullopt;
  return PgTestServer{state["conninfo"], state["external"] == "1"};
}

bool restartPgTestServer(std::string& error) {
  if (!variable("ASYNCFLOW_TEST_POSTGRES").empty()) {
    error = "the server of ASYNCFLOW_TEST_POSTGRES is external: it cannot be restarted";
    return false;
  }
  const std::string fixture = variable("ASYNCFLOW_PG_FIXTURE");
  const std::string statePath = variable("ASYNCFLOW_PG_STATE");
  if (fixture.empty() || statePath.empty()) {
    error = "ASYNCFLOW_PG_FIXTURE or ASYNCFLOW_PG_STATE is not set (run the test through ctest)";
    return false;
  }

  // The fixture's stdout and stderr come back through a pipe, for `error`.
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    error = std::string("pipe: ") + std::strerror(errno);
    return false;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  std::string command = "restart";
  std::vector<char*> argv = {const_cast<char*>(fixture.c_str()), command.data(),
                             const_cast<char*>(statePath.c_str()), nullptr};
  pid_t pid = 0;
  const int spawned = ::posix_spawn(&pid, fixture.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (spawned != 0) {
    ::close(fds[0]);
    error = "cannot run " + fixture + ": " + std::strerror(spawned);
    return false;
  }

  std::string output;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buffer, sizeof buffer);
    if (n > 0) {
      output.append(buffer, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
  error = fixture + " restart " + statePath + " " +
          (WIFEXITED(status) ? "exited with " + std::to_string(WEXITSTATUS(status))
                             : std::string("died of a signal")) +
          ":\n" + output;
  return false;
}

}  // namespace asyncflow::testing

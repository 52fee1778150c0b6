// The crash harness's log files: where they are, how their lines read, and
// the append-only writer every life and the parent use; and the work counts
// the lives and the parent poll.
#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <time.h>

#include "crash.hpp"
#include "support/test_store.hpp"

namespace asyncflow::crash {
namespace {

// The next space-separated word of `rest`, removed from it; empty at the end.
std::string_view nextWord(std::string_view& rest) {
  const auto begin = rest.find_first_not_of(' ');
  if (begin == std::string_view::npos) {
    rest = {};
    return {};
  }
  rest.remove_prefix(begin);
  const auto end = std::min(rest.find(' '), rest.size());
  const std::string_view word = rest.substr(0, end);
  rest.remove_prefix(end);
  return word;
}

template <typename Number>
bool parseNumber(std::string_view word, Number& out) {
  if (word.empty()) return false;
  const auto [end, error] = std::from_chars(word.data(), word.data() + word.size(), out);
  return error == std::errc() && end == word.data() + word.size();
}

// "L<life>".
bool parseLife(std::string_view word, std::size_t& life) {
  return word.size() > 1 && word[0] == 'L' && parseNumber(word.substr(1), life);
}

}  // namespace

std::vector<std::pair<std::size_t, std::string>> lifeLogs(const CrashConfig& config,
                                                          std::string_view kind) {
  const std::string prefix = std::string(kind) + ".L";
  std::vector<std::pair<std::size_t, std::string>> logs;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(config.dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= prefix.size() + 4 || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - 4, 4, ".log") != 0) {
      continue;
    }
    std::size_t life = 0;
    if (parseNumber(std::string_view(name).substr(prefix.size(), name.size() - prefix.size() - 4),
                    life)) {
      logs.emplace_back(life, entry.path().string());
    }
  }
  std::sort(logs.begin(), logs.end());
  return logs;
}

std::int64_t wallMicros() {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000 + now.tv_nsec / 1000;
}

WorkCounts countWork(testing::TestSql& db) {
  // One statement, so one snapshot; each count reads an index (the Waiting
  // instances are those whose current run waits).
  const auto rows = db.rows(
      "SELECT (SELECT COUNT(*) FROM instances), (SELECT COUNT(*) FROM "
      "instances WHERE status = 'Running'), (SELECT COUNT(*) FROM step_runs "
      "WHERE status = 'Waiting')");
  auto number = [&](std::size_t column) {
    const auto& value = rows.at(0).at(column);
    return value ? std::stoll(*value) : std::int64_t{0};
  };
  WorkCounts work;
  work.total = number(0);
  work.running = number(1);
  work.waiting = number(2);
  return work;
}

std::optional<HandlerLine> parseHandlerLine(std::string_view line) {
  HandlerLine parsed;
  std::string_view rest = line;
  const std::string_view kind = nextWord(rest);
  if (kind == "run") {
    parsed.begins = true;
    if (!parseNumber(nextWord(rest), parsed.instance)) return std::nullopt;
    parsed.step = std::string(nextWord(rest));
    if (parsed.step.empty() || !parseNumber(nextWord(rest), parsed.attempt)) return std::nullopt;
    parsed.serial = std::string(nextWord(rest));
    if (parsed.serial.empty()) return std::nullopt;
  } else if (kind == "end") {
    parsed.begins = false;
  } else {
    return std::nullopt;
  }
  if (!parseLife(nextWord(rest), parsed.life) || !parseNumber(nextWord(rest), parsed.run) ||
      !parseNumber(nextWord(rest), parsed.micros) || !nextWord(rest).empty()) {
    return std::nullopt;
  }
  return parsed;
}

std::vector<std::string> readCompleteLines(const std::string& path, std::size_t& torn,
                                           std::size_t offset, std::size_t* consumed) {
  std::ifstream in(path, std::ios::binary);
  if (offset != 0) in.seekg(static_cast<std::streamoff>(offset));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> lines;
  std::size_t begin = 0;
  for (std::size_t end = text.find('\n'); end != std::string::npos;
       begin = end + 1, end = text.find('\n', begin)) {
    lines.push_back(text.substr(begin, end - begin));
  }
  if (begin < text.size()) ++torn;
  if (consumed != nullptr) *consumed = begin;
  return lines;
}

AppendLog::AppendLog(const std::string& path, bool durable)
    : fd_(::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644)), durable_(durable) {
  if (fd_ < 0) throw std::runtime_error(fmt::format("cannot open {}: errno {}", path, errno));
  std::size_t torn = 0;
  std::size_t keep = 0;
  readCompleteLines(path, torn, 0, &keep);
  if (torn != 0 && ::ftruncate(fd_, static_cast<off_t>(keep)) != 0) {
    ::close(fd_);
    throw std::runtime_error(fmt::format("cannot cut the torn line of {}: errno {}", path, errno));
  }
}

AppendLog::~AppendLog() { ::close(fd_); }

bool AppendLog::append(std::string_view line) {
  std::lock_guard lock(mutex_);
  while (!line.empty()) {
    const ssize_t written = ::write(fd_, line.data(), line.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    line.remove_prefix(static_cast<std::size_t>(written));
  }
  return !durable_ || ::fsync(fd_) == 0;
}

}  // namespace asyncflow::crash

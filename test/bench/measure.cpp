#include "measure.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

#include <SQLiteCpp/SQLiteCpp.h>
#include <stdlib.h>

namespace asyncflow::bench {
namespace {

namespace fs = std::filesystem;

// Holds threads until the clock starts, then releases them together.
class StartGate {
 public:
  void wait() {
    std::unique_lock lock(mutex_);
    opened_.wait(lock, [this] { return open_; });
  }
  void open() {
    {
      std::lock_guard lock(mutex_);
      open_ = true;
    }
    opened_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable opened_;
  bool open_ = false;
};

void fsyncFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path + " to fsync it");
  const int synced = ::fsync(fd);
  ::close(fd);
  if (synced != 0) throw std::runtime_error("cannot fsync " + path);
}

}  // namespace

double secondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

double microsBetween(SteadyClock::time_point from, SteadyClock::time_point to) {
  return std::chrono::duration<double, std::micro>(to - from).count();
}

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const std::size_t middle = values.size() / 2;
  if (values.size() % 2 == 1) return values[middle];
  return (values[middle - 1] + values[middle]) / 2;
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * values.size()));
  return values[std::clamp<std::size_t>(rank, 1, values.size()) - 1];
}

std::uint64_t residentBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;  // "... kB"
  }
  throw std::runtime_error("no VmRSS in /proc/self/status");
}

std::uint64_t fileBytes(const std::string& path) { return fs::file_size(path); }

void checkpoint(const std::string& path) {
  SQLite::Database db(path, SQLite::OPEN_READWRITE);
  db.setBusyTimeout(5000);
  SQLite::Statement truncate(db, "PRAGMA wal_checkpoint(TRUNCATE)");
  if (!truncate.executeStep() || truncate.getColumn(0).getInt() != 0) {
    throw std::runtime_error("the WAL checkpoint of " + path + " could not complete");
  }
}

void removeDatabase(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) fs::remove(path + suffix);
}

void copyDatabase(const std::string& from, const std::string& to) {
  removeDatabase(to);
  fs::copy_file(from, to);
  fsyncFile(to);
}

Share shareOf(std::size_t count, unsigned parts, unsigned part) {
  return Share{count * part / parts, count * (part + 1) / parts};
}

double timeOnThreads(unsigned threads, const std::function<void(unsigned)>& body) {
  StartGate gate;
  std::vector<std::exception_ptr> errors(threads);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) {
    pool.emplace_back([&, i] {
      gate.wait();
      try {
        body(i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    });
  }
  const auto start = SteadyClock::now();
  gate.open();
  for (std::thread& thread : pool) thread.join();
  const double seconds = secondsSince(start);
  for (const std::exception_ptr& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  return seconds;
}

void throwError(const Error& error, const std::string& what) {
  throw std::runtime_error(what + ": " + error.toString());
}

void orThrow(Result<void> result, const std::string& what) {
  if (!result) throwError(result.error(), what);
}

ScratchDir::ScratchDir(const std::string& given) {
  if (!given.empty()) {
    fs::create_directories(given);
    path_ = given;
    return;
  }
  std::string pattern = (fs::temp_directory_path() / "asyncflow_bench.XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("cannot create a directory like " + pattern);
  }
  path_ = pattern;
  owned_ = true;
}

ScratchDir::~ScratchDir() {
  if (!owned_) return;
  std::error_code ignored;
  fs::remove_all(path_, ignored);
}

std::string ScratchDir::file(const std::string& name) const {
  return (fs::path(path_) / name).string();
}

}  // namespace asyncflow::bench

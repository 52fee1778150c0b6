// What asyncflow_host (host.cpp) and the multi-host tests (multi_host_test.cpp)
// agree on: the file descriptors a host inherits, the processes it can define,
// and the line format of the shared handler log.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>

namespace asyncflow::hosts {

// A host writes its reports here, one line per write(2) ("owner A/3f9c...",
// "defined 812", "start 7 1 A/3f9c... 123456", "completed 7", "bye"); it reads
// its commands ("exit") from stdin. --block-fd names the read end of a pipe of
// release bytes (non-blocking; one byte releases one blocked handler).
inline constexpr int kReportFd = 3;
inline constexpr int kReleaseFd = 4;

// The processes a host can define (--process), version 1 each:
//   P: Slow (sync): logs start, blocks on attempt 1 when --block-fd is given,
//      logs end; the instance then completes.
//   Q: Wait (async): logs its serial and waits; After (sync): logs after.
//      Field Result (String).
//   R: Route (sync) goes to Wait<Slot>; Wait0..Wait19 (async) log wait and time
//      out after kSlotTimeout(Slot), escalating to Escalate (sync): logs
//      escalate, blocks on attempt 1 when --block-fd is given, logs escalated.
//      Field Slot (Int64, default 0).
inline constexpr int kSlots = 20;
inline std::chrono::milliseconds slotTimeout(std::int64_t slot) {
  return std::chrono::milliseconds(1000 + 100 * slot);
}

// Handler log events. Steady-clock times (CLOCK_MONOTONIC: one clock for every
// process of the machine) so that intervals compare across processes; the
// events of process Q and of the batch carry system-clock times.
inline constexpr const char* kStart = "start";          // P.Slow began
inline constexpr const char* kEnd = "end";              // P.Slow returns
inline constexpr const char* kWait = "wait";            // Q.Wait, R.Wait<n> (then the serial)
inline constexpr const char* kAfter = "after";          // Q.After (system time)
inline constexpr const char* kCompleted = "completed";  // the batch's completion returned
inline constexpr const char* kEscalate = "escalate";    // R.Escalate began
inline constexpr const char* kEscalated = "escalated";  // R.Escalate returns

inline std::int64_t steadyMicros() {
  using namespace std::chrono;
  return duration_cast<microseconds>(steady_clock::now().time_since_epoch()).count();
}
inline std::int64_t systemMicros() {
  using namespace std::chrono;
  return duration_cast<microseconds>(system_clock::now().time_since_epoch()).count();
}

// One line of the handler log: "<event> <instance> <attempt> <owner> <µs>
// [<serial>]\n", appended with O_APPEND in a single write(2).
struct LogLine {
  std::string event;
  std::int64_t instance = 0;
  int attempt = 0;
  std::string owner;
  std::int64_t micros = 0;
  std::string serial;  // wait lines only

  std::string text() const {
    std::string line = event + ' ' + std::to_string(instance) + ' ' + std::to_string(attempt) +
                       ' ' + owner + ' ' + std::to_string(micros);
    if (!serial.empty()) line += ' ' + serial;
    return line + '\n';
  }

  // The line without its '\n'; none when it has another shape.
  static std::optional<LogLine> parse(const std::string& text) {
    std::istringstream in(text);
    LogLine line;
    if (!(in >> line.event >> line.instance >> line.attempt >> line.owner >> line.micros)) {
      return std::nullopt;
    }
    in >> line.serial;
    return line;
  }
};

}  // namespace asyncflow::hosts

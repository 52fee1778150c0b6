// asyncflow: what the engine tells the host as it works: transitions and log lines.
#pragma once

#include <functional>
#include <string_view>

#include "asyncflow/records.hpp"

namespace asyncflow {

// Told of every transition, after it is durable: for metrics, logs, tracing.
// Called on the thread that committed it, so it must be quick and thread-safe;
// an exception it throws is caught and ignored.
class Listener {
 public:
  virtual ~Listener() = default;
  virtual void onEvent(const HistoryEvent& event) = 0;
};

// Severity of a log line.
enum class LogLevel { Debug, Info, Warning, Error };

// Where log lines go: a host function, called from any engine thread.
using LogSink = std::function<void(LogLevel level, std::string_view message)>;

}  // namespace asyncflow

#include "asyncflow/clock.hpp"

namespace asyncflow {
namespace {

class SystemClock final : public Clock {
 public:
  Timestamp now() override { return std::chrono::system_clock::now(); }
};

}  // namespace

std::shared_ptr<Clock> systemClock() {
  static const auto clock = std::make_shared<SystemClock>();
  return clock;
}

}  // namespace asyncflow

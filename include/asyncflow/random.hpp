// asyncflow: the engine's source of randomness, used for serial secrets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "asyncflow/error.hpp"

namespace asyncflow {

// Fills buffers with random bytes. Implementations must be thread-safe.
class RandomSource {
 public:
  virtual ~RandomSource() = default;
  // Fills `size` bytes at `out`, or fails (Internal) without a partial promise.
  virtual Result<void> fill(std::uint8_t* out, std::size_t size) = 0;
};

// The OS CSPRNG (getrandom(2), falling back to /dev/urandom). Shared,
// thread-safe; never null. Serial secrets must come from a source this strong.
std::shared_ptr<RandomSource> osRandom();

}  // namespace asyncflow

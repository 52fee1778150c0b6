#include "asyncflow/random.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <fmt/format.h>

namespace asyncflow {
namespace {

// getrandom(2) blocks only until the kernel's pool is first initialised, and
// never returns short reads below 256 bytes once it has. /dev/urandom is the
// fallback for kernels or sandboxes without the syscall.
class OsRandom final : public RandomSource {
 public:
  Result<void> fill(std::uint8_t* out, std::size_t size) override {
    std::size_t done = 0;
    while (done < size) {
      const ssize_t n = ::getrandom(out + done, size - done, 0);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && errno == ENOSYS) {
        return fillFromDevice(out + done, size - done);
      } else {
        return fail(Errc::Internal, fmt::format("getrandom failed: {}", std::strerror(errno)));
      }
    }
    return {};
  }

 private:
  static Result<void> fillFromDevice(std::uint8_t* out, std::size_t size) {
    const int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return fail(Errc::Internal, fmt::format("open /dev/urandom: {}", std::strerror(errno)));
    }
    std::size_t done = 0;
    while (done < size) {
      const ssize_t n = ::read(fd, out + done, size - done);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        ::close(fd);
        return fail(Errc::Internal, "reading /dev/urandom failed");
      }
    }
    ::close(fd);
    return {};
  }
};

}  // namespace

std::shared_ptr<RandomSource> osRandom() {
  static const auto random = std::make_shared<OsRandom>();
  return random;
}

}  // namespace asyncflow

// Pins ProcessRegistry (src/engine/process_registry.hpp): versions by name,
// the newest, refusal of a version defined twice, and readers beside a writer.
#include "engine/process_registry.hpp"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/test_support.hpp"

using asyncflow::Errc;
using asyncflow::detail::CompiledProcess;
using asyncflow::detail::ProcessRegistry;

namespace {

ProcessRegistry::ProcessPtr version(std::string name, int v) {
  auto p = std::make_shared<CompiledProcess>();
  p->name = std::move(name);
  p->version = v;
  return p;
}

}  // namespace

TEST_CASE("find and newest answer what was added, null for the rest") {
  ProcessRegistry registry;
  CHECK(registry.find("Order", 1) == nullptr);
  CHECK(registry.newest("Order") == nullptr);
  CHECK(registry.all().empty());
  auto v2 = version("Order", 2);
  auto v1 = version("Order", 1);
  auto other = version("Invoice", 7);
  REQUIRE(registry.add(v2));
  REQUIRE(registry.add(v1));
  REQUIRE(registry.add(other));
  CHECK(registry.find("Order", 1) == v1);
  CHECK(registry.find("Order", 2) == v2);
  CHECK(registry.find("Order", 3) == nullptr);
  CHECK(registry.find("order", 1) == nullptr);  // names are exact
  CHECK(registry.newest("Order") == v2);
  CHECK(registry.newest("Invoice") == other);
  CHECK(registry.all() == std::vector<ProcessRegistry::ProcessPtr>{other, v1, v2});
}

TEST_CASE("a name and version added twice is InvalidProcess, and the first stays") {
  ProcessRegistry registry;
  auto first = version("Order", 1);
  REQUIRE(registry.add(first));
  auto again = registry.add(version("Order", 1));
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error().code == Errc::InvalidProcess);
  CHECK(asyncflow::testing::contains(again.error().message, "'Order' version 1"));
  CHECK(registry.find("Order", 1) == first);
  CHECK(registry.all().size() == 1);
}

TEST_CASE("readers keep finding versions while another thread adds more") {
  ProcessRegistry registry;
  auto base = version("Base", 1);
  REQUIRE(registry.add(base));
  std::atomic<bool> done{false};
  std::atomic<long> misses{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&] {
      while (!done) {
        if (registry.find("Base", 1) != base) ++misses;
        (void)registry.newest("Grow");
      }
    });
  }
  for (int v = 1; v <= 500; ++v) REQUIRE(registry.add(version("Grow", v)));
  done = true;
  for (auto& r : readers) r.join();
  CHECK(misses == 0);
  CHECK(registry.newest("Grow")->version == 500);
}

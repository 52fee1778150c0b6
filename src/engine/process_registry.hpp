// The process versions an engine has defined (internal).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "asyncflow/error.hpp"
#include "model/process_model.hpp"
#include "util/mutex.hpp"

namespace asyncflow::detail {

// Compiled process versions by name and version. Thread-safe: many readers (every
// drive looks its version up) or one writer (define). Versions are immutable and
// shared, so a reader keeps using one while another is added.
class ProcessRegistry {
 public:
  using ProcessPtr = std::shared_ptr<const CompiledProcess>;

  // Adds a version; InvalidProcess when that name and version is already
  // defined (the first stays in use). `process` must not be null.
  Result<void> add(ProcessPtr process) ASYNCFLOW_EXCLUDES(mutex_);

  // The version, or null when it is not defined here.
  ProcessPtr find(std::string_view name, int version) const ASYNCFLOW_EXCLUDES(mutex_);

  // The highest defined version of `name`, or null when there is none.
  ProcessPtr newest(std::string_view name) const ASYNCFLOW_EXCLUDES(mutex_);

  // Every defined version, by name and then version.
  std::vector<ProcessPtr> all() const ASYNCFLOW_EXCLUDES(mutex_);

  using DeclaredPtr = std::shared_ptr<const DeclaredProcess>;

  // A declaration read from the store for a version not defined here, kept
  // (declarations never change) so that each is read once; the one kept first
  // is returned. `declared` must not be null.
  DeclaredPtr keepDeclared(DeclaredPtr declared) ASYNCFLOW_EXCLUDES(mutex_);

  // The declaration kept for the version, or null.
  DeclaredPtr findDeclared(std::string_view name, int version) const ASYNCFLOW_EXCLUDES(mutex_);

 private:
  mutable SharedMutex mutex_;
  std::map<std::string, std::map<int, ProcessPtr>, std::less<>> processes_
      ASYNCFLOW_GUARDED_BY(mutex_);
  std::map<std::pair<std::string, int>, DeclaredPtr, std::less<>> declared_
      ASYNCFLOW_GUARDED_BY(mutex_);
};

}  // namespace asyncflow::detail

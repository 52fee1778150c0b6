#include "engine/process_registry.hpp"

#include <fmt/format.h>

#include "util/text.hpp"

namespace asyncflow::detail {

Result<void> ProcessRegistry::add(ProcessPtr process) {
  WriterLock lock(mutex_);
  auto& versions = processes_[process->name];
  if (!versions.emplace(process->version, process).second) {
    return fail(Errc::InvalidProcess, fmt::format("process '{}' version {} is already defined",
                                                  quoted(process->name), process->version));
  }
  return {};
}

ProcessRegistry::ProcessPtr ProcessRegistry::find(std::string_view name, int version) const {
  ReaderLock lock(mutex_);
  auto it = processes_.find(name);
  if (it == processes_.end()) return nullptr;
  auto found = it->second.find(version);
  return found == it->second.end() ? nullptr : found->second;
}

ProcessRegistry::ProcessPtr ProcessRegistry::newest(std::string_view name) const {
  ReaderLock lock(mutex_);
  auto it = processes_.find(name);
  if (it == processes_.end() || it->second.empty()) return nullptr;
  return it->second.rbegin()->second;
}

std::vector<ProcessRegistry::ProcessPtr> ProcessRegistry::all() const {
  ReaderLock lock(mutex_);
  std::vector<ProcessPtr> versions;
  for (const auto& [name, byVersion] : processes_) {
    for (const auto& [version, process] : byVersion) versions.push_back(process);
  }
  return versions;
}

ProcessRegistry::DeclaredPtr ProcessRegistry::keepDeclared(DeclaredPtr declared) {
  WriterLock lock(mutex_);
  auto kept = declared_.emplace(std::make_pair(declared->name, declared->version), declared);
  return kept.first->second;
}

ProcessRegistry::DeclaredPtr ProcessRegistry::findDeclared(std::string_view name,
                                                           int version) const {
  ReaderLock lock(mutex_);
  auto found = declared_.find(std::make_pair(std::string(name), version));
  return found == declared_.end() ? nullptr : found->second;
}

}  // namespace asyncflow::detail

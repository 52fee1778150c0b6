// Records the store tests write, and the store calls they expect to succeed.
// The builders are the conformance suite's (asyncflow/testing/store_conformance.hpp,
// installed, so it cannot include this folder): the suite and each store's own
// tests build their change sets one way. Every timestamp is kT0 or a little after.
#pragma once

#include <utility>
#include <vector>

#include <asyncflow/testing/store_conformance.hpp>

#include "asyncflow/records.hpp"
#include "asyncflow/store.hpp"

namespace asyncflow::testing {

// 2023-11-14 22:13:20 UTC: the builders' epoch (their at(0)).
inline const Timestamp kT0 = detail::at(0);

// stepRun(run, step, status): an async run with a secret, created just after
// kT0; waitingSince set when Waiting, finishedAt when terminal.
using detail::stepRun;
// creation(process = "Order", version = 1, fields = {OrderId: A-1}): a Running
// instance whose run 1 (Submit) is Starting.
using detail::creation;
// creationWith(process, version, status, runs): an instance with exactly `runs`.
using detail::creationWith;
// updateOf(snapshot): the loaded instance again, guarded by its version.
using detail::updateOf;
// leasedCreation(owner, expiry, status = Running, process = "Order", version = 1):
// creation() with the lease (owner, expiry); an empty owner with an expiry is offered.
using detail::leasedCreation;
// processDeclaration(process, version, fields = {}, steps = {}): both in the order given.
using detail::processDeclaration;
// stepDeclaration(name, kind, heartbeatMicros = none): one declared step.
using detail::stepDeclaration;

// applyBatch(store, batch): apply() must succeed with one result per set.
using detail::applyBatch;
// create(store, set): the set must be Applied; the new instance's id.
using detail::create;
// load(store, id): loadInstance() must succeed.
using detail::load;

// Creates creation(); the new instance's id.
inline InstanceId create(Store& store) { return detail::create(store, creation()); }

// A batch of the one change set.
inline std::vector<ChangeSet> batchOf(ChangeSet set) {
  std::vector<ChangeSet> batch;
  batch.push_back(std::move(set));
  return batch;
}

}  // namespace asyncflow::testing

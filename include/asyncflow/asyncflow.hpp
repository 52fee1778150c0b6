// asyncflow: the whole public API in one include.
#pragma once

#include "asyncflow/clock.hpp"
#include "asyncflow/engine.hpp"
#include "asyncflow/error.hpp"
#include "asyncflow/fields.hpp"
#include "asyncflow/memory_store.hpp"
#include "asyncflow/observer.hpp"
#include "asyncflow/process.hpp"
#include "asyncflow/random.hpp"
#include "asyncflow/records.hpp"
#include "asyncflow/sqlite_store.hpp"
#include "asyncflow/step.hpp"
#include "asyncflow/store.hpp"
#include "asyncflow/value.hpp"
#include "asyncflow/version.hpp"

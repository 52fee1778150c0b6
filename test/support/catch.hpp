// Includes Catch2 v3 when it is installed, else Catch2 v2's single header, so
// the tests build against either (Debian 12 ships v2).
#pragma once

#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif

// The one translation unit that holds Catch2's runner for all unit tests.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

// Minimal leveled logging to stderr, prefixed with the rank; WEFT_LOG_LEVEL picks the threshold.
#pragma once

#include <string>

#include "weft/error.hpp"

namespace weft {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// From the environment variable WEFT_LOG_LEVEL (debug, info, warning, error); default warning.
LogLevel log_level();
void log_message(LogLevel level, const std::string& message);

}  // namespace weft

#define WEFT_LOG(level, ...)                                                             \
  do {                                                                                   \
    if (::weft::LogLevel::level >= ::weft::log_level()) {                                \
      ::weft::log_message(::weft::LogLevel::level, ::weft::detail::concat(__VA_ARGS__)); \
    }                                                                                    \
  } while (0)

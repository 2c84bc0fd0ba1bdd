// Leveled logging to stderr with the rank in front, threshold from WEFT_LOG_LEVEL.
#include "weft/log.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace weft {

LogLevel log_level() {
  static const LogLevel level = [] {
    const char* env = std::getenv("WEFT_LOG_LEVEL");
    if (env == nullptr) return LogLevel::kWarning;
    if (std::strcmp(env, "debug") == 0) return LogLevel::kDebug;
    if (std::strcmp(env, "info") == 0) return LogLevel::kInfo;
    if (std::strcmp(env, "error") == 0) return LogLevel::kError;
    return LogLevel::kWarning;
  }();
  return level;
}

void log_message(LogLevel level, const std::string& message) {
  static const char* const kNames[] = {"debug", "info", "warning", "error"};
  // One fprintf per line so that lines from concurrent ranks do not interleave mid-line.
  if (error_rank() >= 0) {
    std::fprintf(stderr, "[weft %s rank %d] %s\n", kNames[static_cast<int>(level)], error_rank(),
                 message.c_str());
  } else {
    std::fprintf(stderr, "[weft %s] %s\n", kNames[static_cast<int>(level)], message.c_str());
  }
}

}  // namespace weft

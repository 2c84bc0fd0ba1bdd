// weft::Error and the check macros every layer of the library throws through.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace weft {

enum class ErrorCode {
  kInvalidArgument,  // shapes, divisibility, dtypes, flags: the caller's input
  kCuda,
  kCublas,
  kNccl,
  kMpi,
  kDnnl,
  kIo,
  kInternal,
};

const char* error_code_name(ErrorCode code);

// The rank stamped into every Error raised by this process; set once the communicator knows it
// (-1 until then). Messages from several ranks interleave on one terminal, so each says whose it
// is.
void set_error_rank(int rank);
int error_rank();

// A std::runtime_error that also says what failed, where, and on which rank.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message, const char* expression, const char* file,
        int line);

  ErrorCode code() const { return code_; }
  // The caller's message alone, without the location prefix that what() carries.
  const std::string& message() const { return message_; }
  const std::string& expression() const { return expression_; }
  const char* file() const { return file_; }
  int line() const { return line_; }
  int rank() const { return rank_; }

 private:
  ErrorCode code_;
  std::string message_;
  std::string expression_;
  const char* file_;
  int line_;
  int rank_;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  append(os, args...);
  return os.str();
}
[[noreturn]] void throw_error(ErrorCode code, const std::string& message, const char* expression,
                              const char* file, int line);
}  // namespace detail

}  // namespace weft

// The one generic check underneath all others: `status` is evaluated once, compared with `ok`,
// and on mismatch `describe(status)` is prepended to the caller's message.
#define WEFT_CHECK_GEN(code, status_expr, ok, describe, ...)                           \
  do {                                                                                 \
    auto weft_status_ = (status_expr);                                                 \
    if (weft_status_ != (ok)) {                                                        \
      ::weft::detail::throw_error(                                                     \
          (code), ::weft::detail::concat(describe(weft_status_), ". ", ##__VA_ARGS__), \
          #status_expr, __FILE__, __LINE__);                                           \
    }                                                                                  \
  } while (0)

// Checks a condition on the caller's input; the variadic tail is streamed into the message, so
// it can name the offending values: WEFT_CHECK(n % tp == 0, "out_features ", n, " ...").
#define WEFT_CHECK(cond, ...)                                                                      \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      ::weft::detail::throw_error(::weft::ErrorCode::kInvalidArgument,                             \
                                  ::weft::detail::concat(__VA_ARGS__), #cond, __FILE__, __LINE__); \
    }                                                                                              \
  } while (0)

// Like WEFT_CHECK, for broken invariants inside the library rather than bad input.
#define WEFT_ASSERT(cond, ...)                                                                     \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      ::weft::detail::throw_error(::weft::ErrorCode::kInternal,                                    \
                                  ::weft::detail::concat(__VA_ARGS__), #cond, __FILE__, __LINE__); \
    }                                                                                              \
  } while (0)

#define WEFT_THROW(code, ...) \
  ::weft::detail::throw_error((code), ::weft::detail::concat(__VA_ARGS__), "", __FILE__, __LINE__)

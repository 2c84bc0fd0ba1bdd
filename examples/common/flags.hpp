// A small command-line parser for the examples: --name value / --name=value, typed, with help,
// and a clear error for unknown flags or bad values.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "weft/error.hpp"

namespace weft::examples {

// A bad command line: every rank parses the same one, so every rank throws this alike and the
// program can exit cleanly without any rank waiting for another.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Flags {
 public:
  explicit Flags(std::string program, std::string summary)
      : program_(std::move(program)), summary_(std::move(summary)) {}

  // An integer flag, accepted in [min, max] (its range is part of --help): anything else,
  // including a value that does not fit in 64 bits, is a usage error.
  void add(const std::string& name, int64_t* target, const std::string& help, int64_t min,
           int64_t max) {
    const std::string range = "[" + std::to_string(min) + ", " + std::to_string(max) + "]";
    add_flag(name, help, std::to_string(*target), range,
             [target, name, min, max, range](const std::string& v) {
               size_t used = 0;
               long long parsed = 0;
               try {
                 parsed = std::stoll(v, &used);
               } catch (const std::exception&) {
                 used = 0;
               }
               WEFT_CHECK(used == v.size() && !v.empty() && parsed >= min && parsed <= max, "--",
                          name, " expects an integer in ", range, ", got '", v, "'");
               *target = parsed;
             });
  }
  // A number flag: finite (never NaN or infinite) and in [min, max].
  void add(const std::string& name, double* target, const std::string& help, double min,
           double max) {
    std::ostringstream range;
    range << "[" << min << ", " << max << "]";
    add_flag(name, help, std::to_string(*target), range.str(),
             [target, name, min, max, range = range.str()](const std::string& v) {
               size_t used = 0;
               double parsed = 0;
               try {
                 parsed = std::stod(v, &used);
               } catch (const std::exception&) {
                 used = 0;
               }
               WEFT_CHECK(used == v.size() && !v.empty(), "--", name, " expects a number, got '",
                          v, "'");
               WEFT_CHECK(std::isfinite(parsed) && parsed >= min && parsed <= max, "--", name,
                          " must be a finite number in ", range, ", got '", v, "'");
               *target = parsed;
             });
  }
  // A switch: --name alone sets it; --name=true / --name=false also work.
  void add(const std::string& name, bool* target, const std::string& help) {
    add_flag(name, help, *target ? "true" : "false", "", [target, name](const std::string& v) {
      WEFT_CHECK(v == "true" || v == "false" || v == "1" || v == "0", "--", name,
                 " expects true or false, got '", v, "'");
      *target = v == "true" || v == "1";
    });
    switches_.push_back(name);
  }
  void add(const std::string& name, std::string* target, const std::string& help) {
    add_flag(name, help, *target, "", [target](const std::string& v) { *target = v; });
  }

  // Returns false when --help was given (usage() says what to print). Throws UsageError on an
  // unknown flag, a missing value or a value of the wrong type.
  bool parse(int argc, char** argv) {
    try {
      return parse_or_throw(argc, argv);
    } catch (const weft::Error& e) {
      throw UsageError(program_ + ": " + e.message() + " (see --help)");
    }
  }

  // Whether --name was on the command line (not just its default).
  bool given(const std::string& name) const {
    return std::find(given_.begin(), given_.end(), name) != given_.end();
  }

  std::string usage() const {
    std::ostringstream os;
    os << summary_ << "\n\nusage: " << program_ << " [flags]\n";
    for (const std::string& name : order_) {
      const Flag& f = flags_.at(name);
      os << "  --" << name << " (default " << f.default_value;
      if (!f.range.empty()) os << ", range " << f.range;
      os << ")\n      " << f.help << "\n";
    }
    return os.str();
  }

 private:
  bool parse_or_throw(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") return false;
      WEFT_CHECK(arg.rfind("--", 0) == 0, "unexpected argument '", arg,
                 "' (flags look like --name value)");
      std::string name = arg.substr(2), value;
      const size_t eq = name.find('=');
      bool has_value = eq != std::string::npos;
      if (has_value) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      auto it = flags_.find(name);
      WEFT_CHECK(it != flags_.end(), "unknown flag --", name);
      const bool is_switch = std::find(switches_.begin(), switches_.end(), name) != switches_.end();
      if (!has_value && is_switch) {
        value = "true";
      } else if (!has_value) {
        WEFT_CHECK(i + 1 < argc, "flag --", name, " needs a value");
        value = argv[++i];
      }
      it->second.set(value);
      given_.push_back(name);
    }
    return true;
  }

  struct Flag {
    std::string help, default_value, range;
    std::function<void(const std::string&)> set;
  };
  void add_flag(const std::string& name, const std::string& help, const std::string& default_value,
                const std::string& range, std::function<void(const std::string&)> set) {
    flags_[name] = Flag{help, default_value, range, std::move(set)};
    order_.push_back(name);
  }

  std::string program_, summary_;
  std::map<std::string, Flag> flags_;
  std::vector<std::string> order_;
  std::vector<std::string> switches_;  // flags that take no value
  std::vector<std::string> given_;     // flags on the command line
};

// A usage error unless `cond`: for rules between flags, checked on every rank alike before any
// work (the message names the flags and their values).
template <typename... Args>
void usage_check(bool cond, const std::string& program, const Args&... message) {
  if (!cond) throw UsageError(program + ": " + weft::detail::concat(message...));
}

}  // namespace weft::examples

// A small command-line parser for the examples: --name value / --name=value, typed, with help,
// and a clear error for unknown flags or bad values.
#pragma once

#include <algorithm>
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

  void add(const std::string& name, int64_t* target, const std::string& help) {
    add_flag(name, help, std::to_string(*target), [target, name](const std::string& v) {
      size_t used = 0;
      long long parsed = 0;
      try {
        parsed = std::stoll(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      WEFT_CHECK(used == v.size() && !v.empty(), "--", name, " expects an integer, got '", v, "'");
      *target = parsed;
    });
  }
  void add(const std::string& name, double* target, const std::string& help) {
    add_flag(name, help, std::to_string(*target), [target, name](const std::string& v) {
      size_t used = 0;
      double parsed = 0;
      try {
        parsed = std::stod(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      WEFT_CHECK(used == v.size() && !v.empty(), "--", name, " expects a number, got '", v, "'");
      *target = parsed;
    });
  }
  // A switch: --name alone sets it; --name=true / --name=false also work.
  void add(const std::string& name, bool* target, const std::string& help) {
    add_flag(name, help, *target ? "true" : "false", [target, name](const std::string& v) {
      WEFT_CHECK(v == "true" || v == "false" || v == "1" || v == "0", "--", name,
                 " expects true or false, got '", v, "'");
      *target = v == "true" || v == "1";
    });
    switches_.push_back(name);
  }
  void add(const std::string& name, std::string* target, const std::string& help) {
    add_flag(name, help, *target, [target](const std::string& v) { *target = v; });
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

  std::string usage() const {
    std::ostringstream os;
    os << summary_ << "\n\nusage: " << program_ << " [flags]\n";
    for (const std::string& name : order_) {
      const Flag& f = flags_.at(name);
      os << "  --" << name << " (default " << f.default_value << ")\n      " << f.help << "\n";
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
    }
    return true;
  }

  struct Flag {
    std::string help, default_value;
    std::function<void(const std::string&)> set;
  };
  void add_flag(const std::string& name, const std::string& help, const std::string& default_value,
                std::function<void(const std::string&)> set) {
    flags_[name] = Flag{help, default_value, std::move(set)};
    order_.push_back(name);
  }

  std::string program_, summary_;
  std::map<std::string, Flag> flags_;
  std::vector<std::string> order_;
  std::vector<std::string> switches_;  // flags that take no value
};

}  // namespace weft::examples

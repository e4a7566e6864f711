// Errors with mnv3's exit codes (src/mnv3/errors.py): one line for the user, a code for scripts.
#pragma once
#include <stdexcept>
#include <string>

namespace mnv3 {

enum ExitCode { EXIT_USAGE = 2, EXIT_DATA = 3, EXIT_MODEL = 7, EXIT_BACKEND = 8, EXIT_INTERRUPTED = 130 };

struct Failure : std::runtime_error {
    int code;
    Failure(int c, const std::string& msg) : std::runtime_error(msg), code(c) {}
};
inline Failure usage_error(const std::string& m) { return Failure(EXIT_USAGE, m); }
inline Failure data_error(const std::string& m) { return Failure(EXIT_DATA, m); }
inline Failure model_error(const std::string& m) { return Failure(EXIT_MODEL, m); }

}  // namespace mnv3

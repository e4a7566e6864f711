// SHA-256 of a file, hex encoded: the check mnv3's Python side does on model.xml / model.bin.
#pragma once
#include <string>

namespace mnv3 {
// Lowercase hex digest; throws std::runtime_error when the file cannot be read.
std::string sha256_file(const std::string& path);
std::string sha256_hex(const void* data, size_t size);
}  // namespace mnv3

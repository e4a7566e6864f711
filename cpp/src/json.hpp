// A small JSON reader for meta.json (objects, arrays, strings, numbers, true/false/null).
// Enough for a file mnv3 itself writes; a malformed file is a JsonError naming the offset.
#pragma once

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mnv3 {

struct JsonError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Json {
public:
    enum class Type { Null, Bool, Number, String, Array, Object };

    Type type = Type::Null;
    bool boolean = false;
    double number = 0.0;
    std::string string;
    std::vector<Json> array;
    std::map<std::string, Json> object;

    static Json parse(const std::string& text);

    bool is_null() const { return type == Type::Null; }
    bool has(const std::string& key) const {
        return type == Type::Object && object.count(key) && !object.at(key).is_null();
    }
    // Typed accessors: JsonError("<key> ...") when the value has another type.
    const Json& at(const std::string& key) const;
    const std::string& as_string(const char* what) const;
    double as_number(const char* what) const;
    long long as_int(const char* what) const;
    bool as_bool(const char* what) const;
    const std::vector<Json>& as_array(const char* what) const;
};

}  // namespace mnv3

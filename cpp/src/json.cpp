#include "json.hpp"

#include <cmath>
#include <cstdlib>

namespace mnv3 {
namespace {

class Parser {
public:
    explicit Parser(const std::string& s) : s_(s) {}

    Json document() {
        Json v = value(0);
        skip_ws();
        if (i_ != s_.size()) fail("unexpected text after the JSON value");
        return v;
    }

private:
    const std::string& s_;
    size_t i_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        throw JsonError(what + " at byte " + std::to_string(i_));
    }
    void skip_ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t'))
            ++i_;
    }
    bool eat(const char* word) {
        size_t n = std::char_traits<char>::length(word);
        if (s_.compare(i_, n, word) == 0) { i_ += n; return true; }
        return false;
    }
    Json value(int depth) {
        if (depth > 64) fail("JSON nested too deeply");
        skip_ws();
        if (i_ >= s_.size()) fail("unexpected end of JSON");
        Json v;
        char c = s_[i_];
        if (c == '{') {
            v.type = Json::Type::Object;
            ++i_;
            skip_ws();
            if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
            for (;;) {
                skip_ws();
                if (i_ >= s_.size() || s_[i_] != '"') fail("expected a string key");
                std::string key = str();
                skip_ws();
                if (i_ >= s_.size() || s_[i_] != ':') fail("expected ':'");
                ++i_;
                v.object[key] = value(depth + 1);
                skip_ws();
                if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
                if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
                fail("expected ',' or '}'");
            }
        }
        if (c == '[') {
            v.type = Json::Type::Array;
            ++i_;
            skip_ws();
            if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
            for (;;) {
                v.array.push_back(value(depth + 1));
                skip_ws();
                if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
                if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
                fail("expected ',' or ']'");
            }
        }
        if (c == '"') { v.type = Json::Type::String; v.string = str(); return v; }
        if (eat("true")) { v.type = Json::Type::Bool; v.boolean = true; return v; }
        if (eat("false")) { v.type = Json::Type::Bool; return v; }
        if (eat("null")) return v;
        if (eat("NaN")) { v.type = Json::Type::Number; v.number = NAN; return v; }
        if (c == '-' || (c >= '0' && c <= '9')) {
            const char* begin = s_.c_str() + i_;
            char* end = nullptr;
            v.type = Json::Type::Number;
            v.number = std::strtod(begin, &end);
            if (end == begin) fail("bad number");
            i_ += static_cast<size_t>(end - begin);
            return v;
        }
        fail("unexpected character");
    }
    static void utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) out += static_cast<char>(cp);
        else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18)); out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }
    unsigned hex4() {
        if (i_ + 4 > s_.size()) fail("bad \\u escape");
        unsigned cp = 0;
        for (int k = 0; k < 4; ++k) {
            char h = s_[i_++];
            cp <<= 4;
            if (h >= '0' && h <= '9') cp |= h - '0';
            else if (h >= 'a' && h <= 'f') cp |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F') cp |= h - 'A' + 10;
            else fail("bad \\u escape");
        }
        return cp;
    }
    std::string str() {
        ++i_;  // opening quote
        std::string out;
        while (i_ < s_.size()) {
            char c = s_[i_++];
            if (c == '"') return out;
            if (c != '\\') { out += c; continue; }
            if (i_ >= s_.size()) break;
            char e = s_[i_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(i_, 2, "\\u") == 0) {
                        i_ += 2;
                        unsigned lo = hex4();
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    }
                    utf8(out, cp);
                    break;
                }
                default: fail("bad escape");
            }
        }
        fail("unterminated string");
    }
};

const char* type_name(Json::Type t) {
    switch (t) {
        case Json::Type::Null: return "null";
        case Json::Type::Bool: return "a boolean";
        case Json::Type::Number: return "a number";
        case Json::Type::String: return "a string";
        case Json::Type::Array: return "an array";
        default: return "an object";
    }
}

[[noreturn]] void wrong(const char* what, const char* expected, Json::Type got) {
    throw JsonError(std::string(what) + " should be " + expected + ", not " + type_name(got));
}

}  // namespace

Json Json::parse(const std::string& text) { return Parser(text).document(); }

const Json& Json::at(const std::string& key) const {
    static const Json null;
    if (type != Type::Object) throw JsonError("expected an object holding '" + key + "'");
    auto it = object.find(key);
    return it == object.end() ? null : it->second;
}
const std::string& Json::as_string(const char* what) const {
    if (type != Type::String) wrong(what, "a string", type);
    return string;
}
double Json::as_number(const char* what) const {
    if (type != Type::Number) wrong(what, "a number", type);
    return number;
}
long long Json::as_int(const char* what) const {
    double v = as_number(what);
    if (v != std::floor(v) || std::fabs(v) > 9e15) throw JsonError(std::string(what) + " should be an integer");
    return static_cast<long long>(v);
}
bool Json::as_bool(const char* what) const {
    if (type != Type::Bool) wrong(what, "true or false", type);
    return boolean;
}
const std::vector<Json>& Json::as_array(const char* what) const {
    if (type != Type::Array) wrong(what, "an array", type);
    return array;
}

}  // namespace mnv3

#include "dataset.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common.hpp"

namespace fs = std::filesystem;

namespace mnv3 {
namespace {

const char* EXTENSIONS[] = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"};

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}
std::string strip(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\r\n\f\v"), b = s.find_last_not_of(" \t\r\n\f\v");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}
bool is_wnid(const std::string& t) {
    if (t.size() != 9 || t[0] != 'n') return false;
    return std::all_of(t.begin() + 1, t.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::vector<std::string> read_lines(const std::string& path, const char* what) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) throw data_error(std::string(what) + " " + path + " is a folder, expected a text file");
    std::ifstream f(path, std::ios::binary);
    if (!f) throw data_error(std::string(what) + " " + path + " does not exist; check the path");
    std::stringstream ss;
    ss << f.rdbuf();
    std::string text = ss.str();
    if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // utf-8-sig
    std::vector<std::string> lines;
    std::string line;
    std::istringstream in(text);
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        lines.push_back(line);
    }
    return lines;
}

// Image files under root, relative (posix) and sorted; hidden entries skipped (datasets._find_images).
std::vector<std::string> find_images(const std::string& root) {
    std::vector<std::string> found;
    std::error_code ec;
    auto opts = fs::directory_options::follow_directory_symlink | fs::directory_options::skip_permission_denied;
    for (auto it = fs::recursive_directory_iterator(root, opts, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (!name.empty() && name[0] == '.') {
            if (it->is_directory()) it.disable_recursion_pending();
            continue;
        }
        if (it.depth() > 32) { it.disable_recursion_pending(); continue; }  // symlink loops
        if (it->is_directory()) continue;
        std::string ext = lower(it->path().extension().string());
        if (std::find(std::begin(EXTENSIONS), std::end(EXTENSIONS), ext) == std::end(EXTENSIONS)) continue;
        found.push_back(fs::relative(it->path(), root).generic_string());
    }
    if (found.empty())
        throw data_error("no images found in " + root +
                         "; looked for files ending in .jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff (any case)");
    std::sort(found.begin(), found.end());
    return found;
}

// A file name as text that is always valid UTF-8: each byte of an invalid sequence as \xNN
// (Python's decode("utf-8", "backslashreplace"), mnv3.data.files.escape_name). File names are
// bytes on Linux; result files name the image this way, and label files may too.
std::string escape_name(const std::string& raw) {
    std::string out;
    static const char* hex = "0123456789abcdef";
    for (size_t i = 0; i < raw.size();) {
        unsigned char c = static_cast<unsigned char>(raw[i]);
        size_t n = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3
                 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        bool ok = n > 0 && i + n <= raw.size();
        for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(raw[i + k]) & 0xC0) == 0x80;
        if (ok && n >= 3) {  // no overlong forms, no surrogates, nothing past U+10FFFF
            unsigned char c1 = static_cast<unsigned char>(raw[i + 1]);
            ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0) &&
                 !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90);
        }
        if (ok) {
            out.append(raw, i, n);
            i += n;
        } else {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
            ++i;
        }
    }
    return out;
}

// A label-file name that cannot leave the image folder (datasets._safe_name).
std::string safe_name(std::string name, const std::string& where) {
    std::replace(name.begin(), name.end(), '\\', '/');
    bool drive = name.size() >= 2 && std::isalpha(static_cast<unsigned char>(name[0])) && name[1] == ':';
    std::vector<std::string> parts;
    std::stringstream ss(name);
    std::string p;
    bool dotdot = false;
    while (std::getline(ss, p, '/')) {
        if (p == "..") dotdot = true;
        if (!p.empty() && p != ".") parts.push_back(p);
    }
    if ((!name.empty() && name[0] == '/') || dotdot || drive)
        throw data_error(where + ": file name '" + name +
                         "' points outside the image folder; names must be relative to it (like 'img_001.JPEG')");
    std::string out;
    for (size_t i = 0; i < parts.size(); ++i) out += (i ? "/" : "") + parts[i];
    return out;
}

void check_range(long long label, const std::string& where, int num_classes) {
    if (label < 0 || (num_classes > 0 && label >= num_classes)) {
        std::string bound = num_classes > 0 ? "0.." + std::to_string(num_classes - 1) : ">= 0";
        throw data_error(where + ": class index " + std::to_string(label) + " is out of range (expected " + bound + ")");
    }
}

int parse_label(const std::string& tok, const std::string& where, const Synsets* syn, int num_classes) {
    if (is_wnid(tok)) {
        if (!syn) throw data_error(where + ": label " + tok + " is a wnid; pass the synsets file (--synsets) that maps wnids to class indices");
        auto it = std::find(syn->wnids.begin(), syn->wnids.end(), tok);
        if (it == syn->wnids.end()) throw data_error(where + ": wnid " + tok + " is not in the synsets file; pass the synsets file of the dataset the labels come from");
        return static_cast<int>(it - syn->wnids.begin());
    }
    char* end = nullptr;
    long long v = std::strtoll(tok.c_str(), &end, 10);
    if (tok.empty() || *end != 0)
        throw data_error(where + ": label '" + tok + "' is neither a class index nor a wnid (like n01440764)");
    check_range(v, where, num_classes);
    return static_cast<int>(v);
}

std::string join(const std::string& root, const std::string& rel) {
    return (fs::path(root) / rel).string();
}

}  // namespace

Synsets load_synsets(const std::string& path) {
    auto lines = read_lines(path, "synsets file");
    while (!lines.empty() && strip(lines.back()).empty()) lines.pop_back();
    Synsets s;
    for (size_t i = 0; i < lines.size(); ++i) {
        std::string text = strip(lines[i]);
        std::string where = path + ":" + std::to_string(i + 1);
        if (text.empty()) throw data_error(where + ": blank line in a synsets file; line N must be class N, so remove the blank line");
        size_t sp = text.find(' ');
        std::string first = text.substr(0, sp);
        if (is_wnid(first)) {
            std::string rest = sp == std::string::npos ? "" : strip(text.substr(sp + 1));
            if (std::find(s.wnids.begin(), s.wnids.end(), first) != s.wnids.end())
                throw data_error(where + ": wnid " + first + " appears twice; each class must appear once");
            s.wnids.push_back(first);
            s.names.push_back(rest.empty() ? first : rest);
        } else {
            s.wnids.push_back("");
            s.names.push_back(text);
        }
    }
    if (s.names.empty()) throw data_error("synsets file " + path + " is empty; expected one 'wnid name' line per class");
    return s;
}

std::vector<Sample> load_samples(const std::string& image_dir, const std::string& label_file,
                                 const Synsets* syn, int num_classes, bool only_listed) {
    std::error_code ec;
    if (!fs::is_directory(image_dir, ec))
        throw data_error("image folder " + image_dir + " does not exist or is not a folder; pass the folder that holds your images");
    if (only_listed && label_file.empty()) throw usage_error("--only-listed needs --label-file");
    std::vector<std::string> images;
    if (!only_listed) images = find_images(image_dir);
    // label files name undecodable file names as result files do (\xNN): checked before the
    // backslash-to-slash rule of safe_name, as datasets.load_labels does
    std::map<std::string, std::string> escaped;
    auto index_escaped = [&](const std::vector<std::string>& names) {
        for (const auto& rel : names)
            if (escape_name(rel) != rel) escaped[escape_name(rel)] = rel;
    };
    index_escaped(images);
    bool listed_escapes = false;
    std::vector<Sample> samples;
    if (!label_file.empty()) {
        std::set<std::string> on_disk(images.begin(), images.end());
        std::map<std::string, std::pair<int, size_t>> labels;
        auto lines = read_lines(label_file, "label file");
        for (size_t i = 0; i < lines.size(); ++i) {
            std::string text = strip(lines[i]);
            if (text.empty() || text[0] == '#') continue;
            std::string where = label_file + ":" + std::to_string(i + 1);
            size_t cut = text.find_last_of(" \t\r\n\f\v");  // the name may contain spaces, the label not
            if (cut == std::string::npos)
                throw data_error(where + ": cannot parse '" + text + "'; expected 'filename class_index' or 'filename wnid'");
            std::string token = strip(text.substr(0, cut));
            if (only_listed && !listed_escapes && token.find("\\x") != std::string::npos) {
                listed_escapes = true;  // an escaped name: find the file it stands for
                index_escaped(find_images(image_dir));
            }
            auto raw = escaped.find(token);
            std::string name = raw != escaped.end() ? raw->second : safe_name(token, where);
            std::string tok = text.substr(cut + 1);
            int label = (only_listed && tok == "-") ? -1 : parse_label(tok, where, syn, num_classes);
            if (labels.count(name))
                throw data_error(where + ": " + name + " is already labelled on line " + std::to_string(labels[name].second) + "; remove one of the lines");
            if (only_listed) {
                // anything there (a FIFO, a broken link) is listed: decoding skips it with the
                // reason, as the Python engine does
                if (!fs::exists(fs::symlink_status(fs::path(image_dir) / name, ec)))
                    throw data_error(where + ": " + name + " is not a file in " + image_dir + "; remove the line or add the image");
                images.push_back(name);
            } else if (!on_disk.count(name))
                throw data_error(where + ": label for " + name + " but there is no such image in " + image_dir + "; remove the line or add the image");
            labels[name] = {label, i + 1};
        }
        if (labels.empty())
            throw data_error("label file " + label_file + " has no 'filename class_index' lines; fill it in, or drop the label file to predict without labels");
        for (const auto& rel : images) {
            auto it = labels.find(rel);
            if (it == labels.end())
                throw data_error("image " + join(image_dir, rel) + " has no label in " + label_file + "; add a line '" + rel +
                                 " class_index' or move the image out of the folder");
            samples.push_back({join(image_dir, rel), rel, it->second.first});
        }
    } else if (std::all_of(images.begin(), images.end(), [](const std::string& r) { return r.find('/') == std::string::npos; })) {
        for (const auto& rel : images) samples.push_back({join(image_dir, rel), rel, -1});
    } else {  // ImageFolder: class index = rank of the sorted class folders, or the wnid's line
        std::set<std::string> classes;
        for (const auto& rel : images) {
            size_t slash = rel.find('/');
            if (slash == std::string::npos)
                throw data_error(image_dir + " mixes images (" + rel + ") with class sub-folders; put every image in its class folder (ImageFolder), or give a label file");
            classes.insert(rel.substr(0, slash));
        }
        for (auto& d : fs::directory_iterator(image_dir, ec)) {
            std::string n = d.path().filename().string();
            if (d.is_directory() && !n.empty() && n[0] != '.') classes.insert(n);
        }
        bool by_wnid = syn && std::any_of(syn->wnids.begin(), syn->wnids.end(), [](const std::string& w) { return !w.empty(); });
        std::map<std::string, int> index;
        int rank = 0;
        for (const auto& c : classes) {
            if (by_wnid) {
                auto it = std::find(syn->wnids.begin(), syn->wnids.end(), c);
                if (it == syn->wnids.end())
                    throw data_error("class folder " + join(image_dir, c) + " is not a wnid of the synsets file; name class folders by wnid (like n01440764)");
                index[c] = static_cast<int>(it - syn->wnids.begin());
            } else {
                index[c] = rank++;
            }
            check_range(index[c], join(image_dir, c), num_classes);
        }
        for (const auto& rel : images) samples.push_back({join(image_dir, rel), rel, index[rel.substr(0, rel.find('/'))]});
    }
    std::sort(samples.begin(), samples.end(), [](const Sample& a, const Sample& b) { return a.path < b.path; });
    // Names relative to the deepest folder all samples share (inference._display_names).
    std::vector<std::string> common;
    for (size_t i = 0; i < samples.size(); ++i) {
        std::vector<std::string> dirs;
        std::stringstream ss(samples[i].name);
        std::string part;
        while (std::getline(ss, part, '/')) dirs.push_back(part);
        dirs.pop_back();
        if (i == 0) common = dirs;
        size_t k = 0;
        while (k < common.size() && k < dirs.size() && common[k] == dirs[k]) ++k;
        common.resize(k);
    }
    size_t strip_chars = 0;
    for (const auto& d : common) strip_chars += d.size() + 1;
    for (auto& s : samples) s.name = escape_name(s.name.substr(strip_chars));  // as mnv3 infer names it
    return samples;
}

}  // namespace mnv3

#include "model.hpp"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common.hpp"
#include "json.hpp"
#include "sha256.hpp"

namespace fs = std::filesystem;

namespace mnv3 {
namespace {

constexpr int FORMAT_VERSION = 1;
const char* REBUILD = "rebuild the model with 'mnv3 build --backend openvino'";

bool plain_name(const std::string& n) {
    return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos;
}

void check_file(const std::string& dir, const std::string& name, const std::string& expected, const char* what) {
    if (!plain_name(name))
        throw model_error(dir + "/meta.json names " + what + " '" + name +
                          "', which is not a plain file name inside the model directory; " + REBUILD);
    std::string path = (fs::path(dir) / name).string();
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) throw model_error(dir + " lacks its " + what + " " + name + "; " + REBUILD);
    std::string got;
    try {
        got = sha256_file(path);
    } catch (const std::exception&) {
        throw model_error("cannot read " + path + "; check its permissions");
    }
    if (expected.empty() || got != expected)
        throw model_error(path + " does not match the sha256 recorded in meta.json: the file is corrupt or was replaced; " + REBUILD);
}

std::string meta_name(const std::string& mode, bool mutable_, int batch) {
    return mode + (mutable_ ? "_true_" : "_false_") + std::to_string(batch);
}

}  // namespace

ModelInfo read_model_dir(const std::string& dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) throw model_error("model directory " + dir + " does not exist; build one with 'mnv3 build --backend openvino'");
    std::string meta_path = (fs::path(dir) / "meta.json").string();
    std::ifstream f(meta_path, std::ios::binary);
    if (!f) throw model_error(dir + " has no meta.json, so it is not a built mnv3 model; " + std::string(REBUILD));
    std::stringstream ss;
    ss << f.rdbuf();
    ModelInfo info;
    info.dir = dir;
    try {
        Json m = Json::parse(ss.str());
        if (m.type != Json::Type::Object) throw JsonError("not a JSON object");
        const Json& version = m.at("format_version");
        if (version.type != Json::Type::Number || version.as_int("format_version") > FORMAT_VERSION)
            throw model_error(meta_path + " has a format_version this mnv3-infer-cpp does not read (it reads up to " +
                              std::to_string(FORMAT_VERSION) + "); rebuild mnv3-infer-cpp ('mnv3 build-cpp') or the model");
        std::string backend = m.at("backend").as_string("backend");
        if (backend != "openvino")
            throw model_error(dir + " was built for backend '" + backend +
                              "'; mnv3-infer-cpp runs OpenVINO models: build one with 'mnv3 build --backend openvino', "
                              "or run this one with 'mnv3 infer' (Python)");
        info.quant_mode = m.at("quant_mode").as_string("quant_mode");
        info.shape_mutable = m.at("shape_mutable").as_bool("shape_mutable");
        info.batch = static_cast<int>(m.at("batch_size").as_int("batch_size"));
        info.num_classes = static_cast<int>(m.at("num_classes").as_int("num_classes"));
        info.name = meta_name(info.quant_mode, info.shape_mutable, info.batch);
        const Json& extra = m.at("extra");
        std::string xml = m.at("compiled_file").as_string("compiled_file");
        std::string bin = extra.has("bin_file") ? extra.at("bin_file").as_string("extra.bin_file") : "model.bin";
        check_file(dir, xml, m.has("compiled_sha256") ? m.at("compiled_sha256").as_string("compiled_sha256") : "", "compiled file");
        check_file(dir, bin, extra.has("bin_sha256") ? extra.at("bin_sha256").as_string("extra.bin_sha256") : "", "weights file");
        info.xml = (fs::path(dir) / xml).string();
        info.bin = (fs::path(dir) / bin).string();
        info.precision = extra.has("inference_precision") ? extra.at("inference_precision").as_string("extra.inference_precision") : "";
        const Json& p = m.at("preprocess");
        PreprocessCfg& c = info.preprocess;
        if (p.has("resize")) c.resize = static_cast<int>(p.at("resize").as_int("preprocess.resize"));
        if (p.has("crop")) c.crop = static_cast<int>(p.at("crop").as_int("preprocess.crop"));
        if (p.has("interpolation")) c.interpolation = p.at("interpolation").as_string("preprocess.interpolation");
        if (p.has("channel_order")) c.bgr = p.at("channel_order").as_string("preprocess.channel_order") == "BGR";
        for (const char* key : {"mean", "std"}) {
            if (!p.has(key)) continue;
            const auto& v = p.at(key).as_array(key);
            if (v.size() != 3) throw JsonError(std::string("preprocess.") + key + " needs 3 values");
            for (int i = 0; i < 3; ++i) (std::string(key) == "mean" ? c.mean : c.std)[i] = static_cast<float>(v[i].as_number(key));
        }
        if (c.crop <= 0 || c.resize < c.crop || c.std[0] <= 0 || c.std[1] <= 0 || c.std[2] <= 0)
            throw JsonError("preprocess needs 0 < crop <= resize and std > 0");
        const auto& shape = m.at("input_shape").as_array("input_shape");
        if (shape.size() != 4 || shape[3].type != Json::Type::Number || shape[3].as_int("input_shape") != c.crop)
            throw JsonError("input_shape should be [batch, 3, crop, crop]");
        if (m.has("class_names"))
            for (const auto& n : m.at("class_names").as_array("class_names")) info.class_names.push_back(n.as_string("class_names"));
        if (info.batch < 1 || info.num_classes < 1) throw JsonError("batch_size and num_classes must be positive");
    } catch (const JsonError& e) {
        throw model_error(meta_path + " is missing fields or has bad values (" + e.what() + "); " + REBUILD);
    }
    return info;
}

ov::CompiledModel compile(ov::Core& core, const ModelInfo& info, const CompileOptions& opt) {
    auto devices = core.get_available_devices();
    bool found = false;
    std::string names;
    for (const auto& d : devices) {
        names += (names.empty() ? "" : ", ") + d;
        if (d == opt.device || d.rfind(opt.device + ".", 0) == 0) found = true;
    }
    if (!found)
        throw Failure(EXIT_BACKEND, "OpenVINO has no " + opt.device + " device on this machine (available: " + names +
                                        "); pass --device " + (devices.empty() ? "CPU" : devices.front()));
    // A compiled-model cache beside the model, as the Python backend keeps (<model>/.ov_cache).
    std::error_code ec;
    fs::path cache = fs::path(info.dir) / ".ov_cache";
    fs::create_directories(cache, ec);
    if (!ec && access(cache.c_str(), W_OK) == 0) core.set_property(ov::cache_dir(cache.string()));

    std::shared_ptr<ov::Model> model;
    try {
        model = core.read_model(info.xml, info.bin);
        if (model->inputs().size() != 1) throw std::runtime_error("expected one input");
        // A fixed batch for the engine: the program always sends full (zero-padded) batches.
        model->reshape(ov::PartialShape{opt.batch, 3, info.preprocess.crop, info.preprocess.crop});
    } catch (const std::exception& e) {
        throw model_error("OpenVINO cannot read " + info.xml + " (" + std::string(e.what()).substr(0, 300) + "); " + REBUILD);
    }
    ov::AnyMap config;
    if (opt.device == "CPU") {
        // backends/openvino.py::_compile_config: latency hint for batch 1, throughput otherwise;
        // the precision recorded at build (f32 set explicitly: a bf16 CPU would otherwise run
        // "fp32" in bf16), falling back as the Python side does where this CPU lacks it.
        std::string precision = info.precision.empty() ? "f32" : info.precision;
        auto caps = core.get_property("CPU", ov::device::capabilities);
        auto has = [&](const char* c) { return std::find(caps.begin(), caps.end(), c) != caps.end(); };
        if (info.quant_mode == "force_bfloat16" && !has("BF16"))
            throw Failure(EXIT_BACKEND, "force_bfloat16 needs a CPU with bfloat16 support (AVX512-BF16 or AMX); use a force_float32 or force_float16 model");
        if ((precision == "bf16" && !has("BF16")) || (precision == "f16" && !has("FP16"))) {
            bool f16_mode = info.quant_mode == "force_float16" || info.quant_mode == "qint8_mixed_float16";
            precision = f16_mode && has("FP16") ? "f16" : (info.quant_mode == "qint8_mixed_float16" && has("BF16")) ? "bf16" : "f32";
        }
        ov::element::Type et = precision == "bf16" ? ov::element::bf16 : precision == "f16" ? ov::element::f16 : ov::element::f32;
        config[ov::hint::performance_mode.name()] =
            opt.batch == 1 ? ov::hint::PerformanceMode::LATENCY : ov::hint::PerformanceMode::THROUGHPUT;
        config[ov::hint::inference_precision.name()] = et;
        config[ov::num_streams.name()] = ov::streams::Num(opt.streams);
        if (opt.threads > 0) config[ov::inference_num_threads.name()] = opt.threads;  // in all
    }
    try {
        return core.compile_model(model, opt.device, config);
    } catch (const std::exception& e) {
        throw model_error("OpenVINO cannot compile " + info.xml + " for " + opt.device + " (" +
                          std::string(e.what()).substr(0, 300) + "); " + REBUILD);
    }
}

}  // namespace mnv3

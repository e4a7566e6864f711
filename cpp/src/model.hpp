// A built mnv3 model directory (meta.json + model.xml/model.bin), checked and compiled with
// the OpenVINO C++ API the way src/mnv3/backends/openvino.py compiles it.
#pragma once
#include <openvino/openvino.hpp>

#include <string>
#include <vector>

#include "image.hpp"

namespace mnv3 {

struct ModelInfo {
    std::string dir, xml, bin, quant_mode, precision, name;
    bool shape_mutable = false;
    int batch = 1, num_classes = 0;
    PreprocessCfg preprocess;
    std::vector<std::string> class_names;
};

// Reads and checks meta.json and the sha256 of model.xml / model.bin: a Failure (exit 7) with
// one line saying what is wrong and what to do.
ModelInfo read_model_dir(const std::string& dir);

struct CompileOptions {
    std::string device = "CPU";
    int batch = 0;    // engine batch (mutable models are reshaped to it)
    int threads = 0;  // engine threads in all, shared by the streams; 0 = OpenVINO's choice
    int streams = 1;
};

ov::CompiledModel compile(ov::Core& core, const ModelInfo& info, const CompileOptions& opt);

}  // namespace mnv3

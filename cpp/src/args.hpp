// The command line of mnv3-infer-cpp: the flags 'mnv3 infer --engine cpp' passes (seed spellings
// with underscores accepted too), checked here so that a mistake is one usage line (exit 2)
// before any model or image is read.
#pragma once
#include <string>

namespace mnv3 {

struct Args {
    std::string model, image_dir, label_file, synsets, output_dir, device = "CPU", json, dump_dir;
    int batch = 0, image_num = 0, threads = 0, streams = 0, workers = 0, warmup = 10;
    double bench = 0;  // seconds of --bench; 0: infer over the images
    bool save_images = false, strict = false, quiet = false, only_listed = false, profile = false;
};

// --help and --version print and exit 0; anything wrong is a usage_error.
Args parse_args(int argc, char** argv);

// One per CPU this process may run on: the default of --workers and of --threads.
int default_workers();

// Fills in --threads and --streams when not given (see args.cpp for the measured choice).
void resolve_threads(Args* a);

}  // namespace mnv3

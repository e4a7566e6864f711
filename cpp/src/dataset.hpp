// Image folders and label files -> samples, as src/mnv3/data/datasets.py reads them:
// a folder plus a label file ('filename class_index' or, with synsets, 'filename wnid'),
// an ImageFolder tree (one sub-folder per class), or a plain folder (no labels).
#pragma once
#include <string>
#include <vector>

namespace mnv3 {

struct Sample {
    std::string path;  // file to read
    std::string name;  // relative to the folder all samples share: the name in result files
    int label = -1;    // -1: unlabeled
};

// synsets: "wnid name" (or bare "name") per line, line N = class N; empty path = none.
struct Synsets {
    std::vector<std::string> wnids, names;
};
Synsets load_synsets(const std::string& path);

// only_listed: the label file lists exactly the images to run (others in the folder are
// ignored; a label '-' means unlabeled): how 'mnv3 infer --engine cpp' hands over the samples
// Python resolved.
std::vector<Sample> load_samples(const std::string& image_dir, const std::string& label_file,
                                 const Synsets* synsets, int num_classes, bool only_listed = false);

}  // namespace mnv3

// What a run reports when it is done: the summary lines on stdout (as 'mnv3 infer' prints them),
// the same figures as --json, and --profile's breakdown of where the time went.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "args.hpp"
#include "output.hpp"

namespace mnv3 {

class Pipeline;

// skipped: (file, reason) as skipped.txt lists them; only the first five are printed.
void print_summary(const Args& a, const Summary& s, long images, int batch, int workers, double seconds, double engine,
                   const std::vector<std::pair<std::string, std::string>>& skipped);
std::string summary_json(const Args& a, const Summary& s, long images, int batch, int workers, double seconds,
                         double engine, long peak_rss_kb, const std::vector<std::pair<std::string, std::string>>& skipped);

// j and a newline to the --json target: a file, or stdout for '-'.
void write_json(const std::string& where, const std::string& j);

// --profile as JSON: decode threads' CPU ms per image by stage, their waits for a free request,
// the main thread's wait for results, the engine's busy time, the process's CPU time in all.
std::string profile_json(const Pipeline& p, double seconds, double cpu_s);

// The process's peak resident memory (VmHWM) in KiB; 0 when /proc cannot tell.
long peak_rss_kb();

}  // namespace mnv3

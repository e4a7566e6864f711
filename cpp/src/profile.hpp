// --profile's counters (pipeline.cpp) and the process CPU clock --bench reads (bench.cpp).
#pragma once
#include <sys/resource.h>
#include <time.h>

namespace mnv3 {

// --profile: CPU time per stage of the decode threads (CLOCK_THREAD_CPUTIME_ID, so time the
// thread spent descheduled is not counted), and wall time spent waiting.
struct StageTimes {
    double read = 0, decode = 0, resize = 0, normalize = 0, wait = 0;
    long images = 0;
    void add(const StageTimes& o) {
        read += o.read; decode += o.decode; resize += o.resize; normalize += o.normalize;
        wait += o.wait; images += o.images;
    }
};

class StageClock {
public:
    explicit StageClock(bool on) : on_(on) {}
    void mark() { if (on_) t_ = now(); }
    void lap(double* acc) {
        if (!on_) return;
        double n = now();
        *acc += n - t_;
        t_ = n;
    }
    static double now() {
        timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return ts.tv_sec + 1e-9 * ts.tv_nsec;
    }

private:
    bool on_;
    double t_ = 0;
};

inline double process_cpu_seconds() {
    rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

}  // namespace mnv3

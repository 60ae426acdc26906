// sdsl-lite csa_wt_int<> reference for benchmarks/fm_index_bench.py (same text, same workload).
// usage: sdsl_bench TEXT.u32 WORKLOAD.i32 REPEATS
//   TEXT.u32: the indexed text (reversed documents, each followed by separator 1; ids >= 2)
//   WORKLOAD.i32: for each n-gram: n, then its n symbols (already shifted like TEXT)
// Prints one JSON object: build_s, bytes, n_symbols, steps, step_us (per repeat), avg_distinct.
#include <sdsl/suffix_arrays.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <vector>

using namespace sdsl;

template <class T>
static std::vector<T> read_all(const char* path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    std::vector<T> out(in.tellg() / sizeof(T));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(out.data()), out.size() * sizeof(T));
    return out;
}

int main(int argc, char** argv) {
    if (argc != 4) {
        std::cerr << "usage: sdsl_bench TEXT.u32 WORKLOAD.i32 REPEATS\n";
        return 2;
    }
    auto text = read_all<uint32_t>(argv[1]);
    auto work = read_all<int32_t>(argv[2]);
    int repeats = std::atoi(argv[3]);

    int_vector<> iv(text.size(), 0, 32);
    for (size_t i = 0; i < text.size(); ++i) iv[i] = text[i];
    util::bit_compress(iv);

    csa_wt_int<> csa;
    auto t0 = std::chrono::steady_clock::now();
    construct_im(csa, iv, 0);
    double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    std::vector<std::vector<uint64_t>> grams;
    for (size_t p = 0; p < work.size();) {
        int n = work[p++];
        grams.emplace_back(work.begin() + p, work.begin() + p + n);
        p += n;
    }
    size_t sigma = csa.wavelet_tree.sigma;
    std::vector<uint64_t> cs(sigma);
    std::vector<uint64_t> ri(sigma), rj(sigma);

    std::printf("{\"build_s\": %.4f, \"bytes\": %zu, \"n_symbols\": %zu, \"step_us\": [", build_s,
                (size_t)size_in_bytes(csa), (size_t)text.size());
    size_t steps = 0, distinct = 0;
    for (int rep = 0; rep < repeats; ++rep) {
        steps = distinct = 0;
        auto t1 = std::chrono::steady_clock::now();
        for (auto& g : grams) {
            uint64_t lb = 0, rb = csa.size() - 1;
            for (uint64_t c : g) {
                backward_search(csa, lb, rb, c, lb, rb);  // extend on the right (reversed text)
                uint64_t k = 0;
                if (rb + 1 > lb) csa.wavelet_tree.interval_symbols(lb, rb + 1, k, cs, ri, rj);
                for (uint64_t j = 0; j < k; ++j) distinct += cs[j] > 1;  // skip sentinel/separator
                ++steps;
            }
        }
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
        std::printf("%s%.3f", rep ? ", " : "", s / steps * 1e6);
    }
    std::printf("], \"steps\": %zu, \"avg_distinct\": %.3f}\n", steps, (double)distinct / steps);
    return 0;
}

// Thread CPU per weight of the FP8_DYNAMIC per-channel kernel on bf16 (bench/README.md, "FP8
// channel kernel with AVX-512 BF16"): the Highway kernel against the AVX-512 BF16 one, on
// Kimi-shaped short rows (128 columns) and Llama-shaped long rows, the chunk hot in cache
// (as in the pipeline, whose reads bring it in) and cold (a fresh chunk each call). The
// hand-written kernel is the AVX-512 BF16 one where the CPU has it, else the AVX2 one
// (fp8_bf16_avx2.h); "highway" turns both off.
//   quench-fp8-bench [repeats]

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "schemes/fp8.h"
#include "schemes/fp8_bf16.h"
#include "schemes/fp8_bf16_avx2.h"
#include "thread_cpu.h"

namespace {

// Best of `repeats` of quantizing `copies` chunks of rows x cols one after another.
double NsPerWeight(size_t rows, size_t cols, size_t copies, int repeats, bool hand_written) {
  quench::fp8::internal::SetFp8Bf16Enabled(hand_written);
  quench::fp8::internal::SetFp8Bf16Avx2Enabled(hand_written);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<uint16_t> data(rows * cols * copies);
  for (auto& h : data) {
    const float f = normal(rng);
    uint32_t b;
    __builtin_memcpy(&b, &f, 4);
    h = static_cast<uint16_t>((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
  }
  std::vector<uint8_t> codes(rows * cols * copies);
  std::vector<uint8_t> scales(rows * 2 * copies);
  double best = 1e30;
  for (int rep = 0; rep < repeats; ++rep) {
    const double t0 = ThreadCpu();
    for (size_t k = 0; k < copies; ++k) {
      quench::WeightChunk in;
      in.data = reinterpret_cast<const uint8_t*>(data.data() + k * rows * cols);
      in.dtype = quench::DType::kBF16;
      in.rows = rows;
      in.cols = cols;
      quench::ChunkOutputs out;
      out.out[0] = codes.data() + k * rows * cols;
      out.out[1] = scales.data() + k * rows * 2;
      if (!quench::fp8::QuantizeChannel(in, out)) std::abort();
    }
    best = std::min(best, (ThreadCpu() - t0) * 1e9 / static_cast<double>(data.size()));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 20;
  std::printf("AVX-512 BF16 available: %d, AVX2 kernel available: %d\n",
              quench::fp8::Fp8Bf16Available(), quench::fp8::Fp8Bf16Avx2Available());
  struct Shape {
    const char* name;
    size_t rows, cols, copies;
  } shapes[] = {
      {"kimi 1024x128 hot", 1024, 128, 1},
      {"kimi 1024x128 cold (64 MiB)", 1024, 128, 256},
      {"llama 32x4096 hot", 32, 4096, 1},
      {"llama 32x4096 cold (64 MiB)", 32, 4096, 256},
  };
  for (const Shape& s : shapes) {
    const double hwy = NsPerWeight(s.rows, s.cols, s.copies, repeats, false);
    const double hand = NsPerWeight(s.rows, s.cols, s.copies, repeats, true);
    std::printf("%-30s highway %.3f ns/weight  hand-written %.3f ns/weight  (%.2fx)\n", s.name,
                hwy, hand, hwy / hand);
  }
  return 0;
}

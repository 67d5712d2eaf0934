// Private to the fused FP8-source kernels (fp8_source_quant.cc: int4, fp8_source_nvfp4.cc:
// NVFP4; fp8_source_quant.h says why they are exact): the per-thread table workspace, the
// per-band decode tables, and the AVX-512 VBMI steps both kernels share.
#ifndef QUENCH_SCHEMES_FP8_SOURCE_TABLES_H_
#define QUENCH_SCHEMES_FP8_SOURCE_TABLES_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "schemes/float_formats.h"
#include "schemes/fp8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QUENCH_FUSED_X86 1
#include <immintrin.h>
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_*().
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define QUENCH_VBMI \
  __attribute__((target("avx2,bmi,bmi2,avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi")))
#endif

#ifdef QUENCH_FUSED_X86
namespace quench::fp8::fused {

constexpr size_t kMags = 128;        // code magnitudes (low 7 bits)
constexpr size_t kTableBytes = 256;  // per (block column, mc): results of +m, then of -m

// Per-thread tables, reused across calls: for each block column of the current band its
// decode table (bf16 bits of x(m)), and for each (column, mc) the scheme's table and the
// group's scale byte(s). A stamp (the band's epoch) says what is built; the table memory is
// allocated untouched, so only the slots a band uses are ever faulted in. NVFP4 keeps its
// scale codes per column instead (col_scale: 128 bytes a column, 0 = not built in the band;
// fp8_source_nvfp4.cc).
struct Workspace {
  size_t cols_cap = 0;
  std::unique_ptr<uint8_t, decltype(&std::free)> tables{nullptr, &std::free};
  std::unique_ptr<uint8_t, decltype(&std::free)> decode{nullptr, &std::free};
  std::unique_ptr<uint8_t, decltype(&std::free)> col_scale{nullptr, &std::free};
  std::vector<uint32_t> slot_stamp;
  std::vector<uint16_t> slot_scale;
  std::vector<uint32_t> col_stamp;
  uint32_t epoch = 0;

  void Reserve(size_t scale_cols) {
    if (scale_cols <= cols_cap) return;
    void* t = std::aligned_alloc(64, scale_cols * kMags * kTableBytes);
    void* d = std::aligned_alloc(64, scale_cols * kMags * 2);
    void* c = std::aligned_alloc(64, scale_cols * kMags);
    if (t == nullptr || d == nullptr || c == nullptr) {
      std::free(t);
      std::free(d);
      std::free(c);
      throw std::bad_alloc();
    }
    tables.reset(static_cast<uint8_t*>(t));
    decode.reset(static_cast<uint8_t*>(d));
    col_scale.reset(static_cast<uint8_t*>(c));
    slot_stamp.assign(scale_cols * kMags, 0u);
    slot_scale.assign(scale_cols * kMags, 0u);
    col_stamp.assign(scale_cols, 0u);
    cols_cap = scale_cols;
    epoch = 0;
  }
  // A fresh epoch for a new band (or call): nothing built yet.
  void NextEpoch() {
    if (++epoch == 0) {
      std::fill(slot_stamp.begin(), slot_stamp.end(), 0u);
      std::fill(col_stamp.begin(), col_stamp.end(), 0u);
      epoch = 1;
    }
  }
};

inline Workspace& ThreadWorkspace() {
  thread_local Workspace ws;
  return ws;
}

// f32 values of the 128 E4M3 magnitudes (the NaN code's entry is never read as a result).
inline const float* E4M3Magnitudes() {
  alignas(64) static float table[kMags];
  static const bool init = [] {
    for (size_t m = 0; m < kMags; ++m) table[m] = m == 0x7F ? 0.f : E4M3ToF32(m);
    return true;
  }();
  (void)init;
  return table;
}

// RNE_bf16 of f32 lanes, as f32 (int_shared.h's RoundToDType for bf16; NaN-free inputs).
QUENCH_VBMI inline __m512 RoundBf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// The decode table of one block column: bf16 bits of RNE_bf16(e4m3(m) * scale), m < 128.
QUENCH_VBMI inline void BuildDecode(float scale, uint16_t* dst) {
  const float* mags = E4M3Magnitudes();
  const __m512 s = _mm512_set1_ps(scale);
  for (size_t m = 0; m < kMags; m += 16) {
    const __m512 y = RoundBf16(_mm512_mul_ps(_mm512_load_ps(mags + m), s));
    _mm256_store_si256(reinterpret_cast<__m256i*>(dst + m),
                       _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(y), 16)));
  }
}

// x(m) for 16 magnitudes from a decode table, as f32.
QUENCH_VBMI inline __m512 LoadDecoded(const uint16_t* dec) {
  const __m512i w =
      _mm512_cvtepu16_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(dec)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

// The band's machinery shared by both schemes: decode tables per block column, built on
// first use in the band, and the slot of (column, mc), built by `build` on first use.
struct Band {
  Workspace& ws;
  const SourceChunk& in;
  const float* scale_row = nullptr;

  const uint16_t* Decode(size_t j) {
    uint16_t* dec = reinterpret_cast<uint16_t*>(ws.decode.get()) + j * kMags;
    if (ws.col_stamp[j] != ws.epoch) {
      BuildDecode(scale_row[j], dec);
      ws.col_stamp[j] = ws.epoch;
    }
    return dec;
  }
};

// The block column of each group of `group` columns (an integer division per group would
// cost more than the group's lookups).
inline std::vector<uint32_t> BlockColumns(const SourceChunk& in, size_t group) {
  std::vector<uint32_t> col_of(in.cols / group);
  for (size_t g = 0; g < col_of.size(); ++g) {
    col_of[g] = static_cast<uint32_t>(g * group / in.block_cols);
  }
  return col_of;
}

// Largest code magnitude of n (a multiple of 64) codes at p.
QUENCH_VBMI inline uint32_t MaxMagnitude(const uint8_t* p, size_t n) {
  const __m512i low7 = _mm512_set1_epi8(0x7F);
  __m512i m = _mm512_and_si512(_mm512_loadu_si512(p), low7);
  for (size_t i = 64; i < n; i += 64) {
    m = _mm512_max_epu8(m, _mm512_and_si512(_mm512_loadu_si512(p + i), low7));
  }
  __m256i h = _mm256_max_epu8(_mm512_castsi512_si256(m), _mm512_extracti64x4_epi64(m, 1));
  __m128i q = _mm_max_epu8(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 8));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 4));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 2));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(q)) & 0xFFu;
}

// 64 codes through a (+m, -m) table: the result byte of each code.
QUENCH_VBMI inline __m512i Lookup64(const uint8_t* table, __m512i codes) {
  const __m512i pos = _mm512_permutex2var_epi8(_mm512_load_si512(table), codes,
                                               _mm512_load_si512(table + 64));
  const __m512i neg = _mm512_permutex2var_epi8(_mm512_load_si512(table + 128), codes,
                                               _mm512_load_si512(table + 192));
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(codes), pos, neg);
}

// 64 nibbles (one per byte, < 16) packed two a byte, even element low: 32 bytes.
QUENCH_VBMI inline __m256i Packed(__m512i u) {
  return _mm512_cvtepi16_epi8(_mm512_or_si512(u, _mm512_srli_epi16(u, 4)));
}

// The packed outputs of a chunk: one stream of bytes written in address order, 32 at a time
// (each row's outputs follow the previous row's). They go to a pooled buffer that is written
// to the file from memory, so they are stored non-temporally: an ordinary store to a line
// not in the cache first reads the line from memory (a read for ownership) and then leaves
// it in the cache, where it evicts codes and tables; a streaming store of a whole aligned
// line does neither. The stream's start need not be aligned (a tensor's data lies where the
// file's layout puts it), so each aligned line is the previous piece's last k bytes and the
// current piece's first 32 - k (k = start mod 32, one byte permute). The line holding the
// first piece's start is shared with bytes before the stream, and the last line with bytes
// after it: those pieces are also stored ordinarily (unaligned, only the stream's own bytes;
// the same values twice where they overlap the streamed line). Finish() orders the
// streaming stores before whatever hands the buffer on (they are weakly ordered).
class StreamOut {
 public:
  QUENCH_VBMI explicit StreamOut(const uint8_t* start)
      : k_(reinterpret_cast<uintptr_t>(start) & 31) {
    // Byte i of the aligned line = byte (32 - k + i) of prev:cur (prev bytes 0-31, cur 32-63).
    alignas(32) uint8_t idx[32];
    for (size_t i = 0; i < 32; ++i) idx[i] = static_cast<uint8_t>(32 - k_ + i);
    idx_ = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx));
  }
  // The 32 bytes at p, the stream's next piece.
  QUENCH_VBMI void Put(uint8_t* p, __m256i v) {
    if (k_ == 0) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
      return;
    }
    if (last_ == nullptr) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
    } else {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p - k_),
                          _mm256_permutex2var_epi8(prev_, idx_, v));
    }
    prev_ = v;
    last_ = p;
  }
  // After the last Put: the last piece's bytes past the last streamed line, and the fence.
  QUENCH_VBMI void Finish() {
    if (last_ != nullptr) _mm256_storeu_si256(reinterpret_cast<__m256i*>(last_), prev_);
    _mm_sfence();
  }

 private:
  size_t k_;
  __m256i idx_;
  __m256i prev_ = _mm256_setzero_si256();
  uint8_t* last_ = nullptr;
};

// True when no scale of the chunk has its sign bit set (-0: the one non-negative scale whose
// products flip signs; the caller refused negative ones).
inline bool ScalesUnsigned(const SourceChunk& in) {
  const size_t bands = in.rows == 0 ? 0
                                    : (in.first_row + in.rows - 1) / in.block_rows -
                                          in.first_row / in.block_rows + 1;
  for (size_t i = 0; i < bands * in.scale_cols; ++i) {
    if (std::signbit(in.scales[i])) return false;
  }
  return true;
}

// The chunks both fused int4 kernels (VBMI and AVX2) take: groups of 64-element multiples that
// tile the source blocks, and unsigned scales.
inline bool Int4Accepts(const SourceChunk& in, size_t group) {
  return group != 0 && group % 64 == 0 && in.block_cols % group == 0 && in.cols % group == 0 &&
         in.block_rows != 0 && ScalesUnsigned(in);
}

// The chunks both fused NVFP4 kernels take: rows of whole 64-element lines, blocks of whole
// 16-element groups, a positive finite global scale, and unsigned scales.
inline bool Nvfp4Accepts(const SourceChunk& in, float global_scale) {
  return in.cols % 64 == 0 && in.block_cols % 16 == 0 && in.block_rows != 0 &&
         global_scale > 0.f && std::isfinite(global_scale) && ScalesUnsigned(in);
}


}  // namespace quench::fp8::fused
#endif  // QUENCH_FUSED_X86

#endif  // QUENCH_SCHEMES_FP8_SOURCE_TABLES_H_

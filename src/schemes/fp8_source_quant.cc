// FP8-block source -> int4 / NVFP4 in one pass by per-(block, largest code) tables; see the
// header for why this is exact. Every table entry is computed by the same operations as the
// definitions (fp8.cc's decode, int.cc's and fp4.cc's quantization), in f32 lanes, so a code
// maps to the byte the decode-then-quantize path writes for it:
//   x(c)   = RNE_bf16(f32(e4m3(c)) * s_block)                  (decode, fp8.cc)
//   amax_g = x(mc), mc = max over the group of (code & 0x7F)   (RNE and the product are
//            monotonic in |code| for s_block >= +0; the NaN code 0x7F is the largest)
//   int4:  scale = calculate_qparams(amax_g) (int_shared.h ComputeParams),
//          u = round_half_even(clamp(RNE_bf16(x / scale), -8, 7)) + 8, packed two a byte;
//   NVFP4: s = Nvfp4ScaleCode(amax_g, gs), eff = f32(e4m3(s) / gs),
//          nibble = E2M1(x / eff) (fp4_shared.h Fp4Nibble).
// A negative code decodes to -x(c & 0x7F) exactly (the product's and RNE's symmetry, with the
// scale's sign bit clear), so each table holds the results of the 128 magnitudes with either
// sign. tests/test_fp8_source_quant.cc compares every code, group, block width and awkward
// scale against DequantizeSourceScalar followed by the scalar scheme references.

#include "schemes/fp8_source_quant.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "schemes/float_formats.h"
#include "schemes/fp4_shared.h"
#include "schemes/fp8_shared.h"
#include "schemes/int_shared.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QUENCH_FUSED_X86 1
#include <immintrin.h>
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_*().
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define QUENCH_VBMI \
  __attribute__((target("avx2,bmi,bmi2,avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi")))
#endif

namespace quench::fp8 {

bool FusedSourceAvailable() {
#ifdef QUENCH_FUSED_X86
  static const bool ok = __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("bmi2");
  return ok;
#else
  return false;
#endif
}

#ifdef QUENCH_FUSED_X86
namespace {

constexpr size_t kMags = 128;        // code magnitudes (low 7 bits)
constexpr size_t kTableBytes = 256;  // per (block column, mc): results of +m, then of -m

// Per-thread tables, reused across calls: for each block column of the current band its
// decode table (bf16 bits of x(m)), and for each (column, mc) the scheme's table and the
// group's scale byte(s). A stamp (the band's epoch) says what is built; the table memory is
// allocated untouched, so only the slots a band uses are ever faulted in.
struct Workspace {
  size_t cols_cap = 0;
  std::unique_ptr<uint8_t, decltype(&std::free)> tables{nullptr, &std::free};
  std::unique_ptr<uint8_t, decltype(&std::free)> decode{nullptr, &std::free};
  std::vector<uint32_t> slot_stamp;
  std::vector<uint16_t> slot_scale;
  std::vector<uint32_t> col_stamp;
  uint32_t epoch = 0;

  void Reserve(size_t scale_cols) {
    if (scale_cols <= cols_cap) return;
    void* t = std::aligned_alloc(64, scale_cols * kMags * kTableBytes);
    void* d = std::aligned_alloc(64, scale_cols * kMags * 2);
    if (t == nullptr || d == nullptr) {
      std::free(t);
      std::free(d);
      throw std::bad_alloc();
    }
    tables.reset(static_cast<uint8_t*>(t));
    decode.reset(static_cast<uint8_t*>(d));
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

Workspace& ThreadWorkspace() {
  thread_local Workspace ws;
  return ws;
}

// f32 values of the 128 E4M3 magnitudes (the NaN code's entry is never read as a result).
const float* E4M3Magnitudes() {
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
QUENCH_VBMI void BuildDecode(float scale, uint16_t* dst) {
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
std::vector<uint32_t> BlockColumns(const SourceChunk& in, size_t group) {
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

// 64 nibbles (one per byte, < 16) packed two a byte, even element low: 32 bytes at dst.
QUENCH_VBMI inline void StorePacked(__m512i u, uint8_t* dst) {
  const __m512i w = _mm512_or_si512(u, _mm512_srli_epi16(u, 4));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi16_epi8(w));
}

// ---- int4, symmetric ----

// The table of (column j, mc): u = q + 8 of +-x(m); the group's scale (bf16 bits) to *scale.
// False when x(mc) is not finite in bf16.
QUENCH_VBMI bool BuildInt4(const uint16_t* dec, uint32_t mc, uint8_t* table, uint16_t* scale) {
  if ((dec[mc] & 0x7FFFu) >= 0x7F80u) return false;
  intq::internal::Layout l{};
  l.bits = 4;
  l.qmin = -8;
  l.qmax = 7;
  const float amax = BF16ToF32(dec[mc]);
  const float s = intq::internal::ComputeParams(0.0f, amax, l, /*symmetric=*/true,
                                                DType::kBF16).scale;
  *scale = static_cast<uint16_t>(F32ToBits(s) >> 16);  // a bf16 value
  // RNE_bf16(x / s): by the reciprocal where fp8_shared.h's proof allows (x and s in bf16).
  const bool recip = internal::ReciprocalIsExact(s, DType::kBF16);
  const __m512 by = _mm512_set1_ps(recip ? 1.0f / s : s);
  const __m512 magic = _mm512_set1_ps(12582912.0f);      // 1.5 * 2^23: RNE to integers
  const __m512 magic8 = _mm512_set1_ps(12582920.0f);     // ... plus the offset 8
  const __m512 seven = _mm512_set1_ps(7.0f), eight = _mm512_set1_ps(8.0f);
  for (size_t m = 0; m <= mc; m += 16) {  // only the entries this group can look up
    const __m512 x = LoadDecoded(dec + m);
    const __m512 v = RoundBf16(recip ? _mm512_mul_ps(x, by) : _mm512_div_ps(x, by));
    // +x: clamp to 7, round half to even, + 8 (the low byte of the magic sum).
    const __m512i pos = _mm512_castps_si512(_mm512_add_ps(_mm512_min_ps(v, seven), magic8));
    // -x: v is -RNE(x / s) exactly; clamp to -8: q = -round(min(v, 8)), u = 8 - that. The
    // magic sum's bits are 0x4B400000 + round(min(v, 8)), so 0x4B400008 minus them is u.
    const __m512i rq = _mm512_castps_si512(_mm512_add_ps(_mm512_min_ps(v, eight), magic));
    const __m512i neg = _mm512_sub_epi32(_mm512_set1_epi32(0x4B400008), rq);
    _mm_store_si128(reinterpret_cast<__m128i*>(table + m), _mm512_cvtepi32_epi8(pos));
    _mm_store_si128(reinterpret_cast<__m128i*>(table + 128 + m), _mm512_cvtepi32_epi8(neg));
  }
  return true;
}

QUENCH_VBMI FusedResult Int4Impl(const SourceChunk& in, size_t group, const ChunkOutputs& out) {
  Workspace& ws = ThreadWorkspace();
  ws.Reserve(in.scale_cols);
  const size_t n_groups = in.cols / group;
  const size_t first_band = in.first_row / in.block_rows;
  const std::vector<uint32_t> col_of = BlockColumns(in, group);
  Band band{ws, in};
  size_t cur = ~size_t{0};
  for (size_t r = 0; r < in.rows; ++r) {
    const size_t b = (in.first_row + r) / in.block_rows;
    if (b != cur) {
      ws.NextEpoch();
      band.scale_row = in.scales + (b - first_band) * in.scale_cols;
      cur = b;
    }
    const uint8_t* codes = in.codes + r * in.cols;
    uint8_t* packed = out.out[0] + r * (in.cols / 2);
    uint8_t* scales = out.out[1] + r * n_groups * 2;
    for (size_t g = 0; g < n_groups; ++g) {
      const uint8_t* gc = codes + g * group;
      _mm_prefetch(reinterpret_cast<const char*>(gc) + 2048, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(gc) + 2048 + 64, _MM_HINT_T0);
      const uint32_t mc = MaxMagnitude(gc, group);
      if (mc == 0x7F) return FusedResult::kNotFinite;  // a NaN code
      const size_t j = col_of[g];
      const size_t slot = j * kMags + mc;
      uint8_t* table = ws.tables.get() + slot * kTableBytes;
      if (ws.slot_stamp[slot] != ws.epoch) {
        if (!BuildInt4(band.Decode(j), mc, table, &ws.slot_scale[slot])) {
          return FusedResult::kNotFinite;
        }
        ws.slot_stamp[slot] = ws.epoch;
      }
      for (size_t i = 0; i < group; i += 64) {
        StorePacked(Lookup64(table, _mm512_loadu_si512(gc + i)), packed + (g * group + i) / 2);
      }
      std::memcpy(scales + 2 * g, &ws.slot_scale[slot], 2);
    }
  }
  return FusedResult::kOk;
}

// ---- NVFP4 ----

// The table of (column j, mc) for the global scale gs: byte m = nibble(+x(m)) |
// nibble(-x(m)) << 4; the group's E4M3 scale code to *scale. False when x(mc) is not finite.
QUENCH_VBMI bool BuildNvfp4(const uint16_t* dec, uint32_t mc, float gs, uint8_t* table,
                            uint16_t* scale) {
  if ((dec[mc] & 0x7FFFu) >= 0x7F80u) return false;
  const uint8_t code = fp4::internal::Nvfp4ScaleCode(BF16ToF32(dec[mc]), gs, DType::kBF16);
  *scale = code;
  // _quantize: eff = scale / global_scale (f32), then v = x / eff (f32, IEEE division).
  const __m512 eff = _mm512_set1_ps(E4M3ToF32(code) / gs);
  const __m512 magic = _mm512_set1_ps(4194304.0f);  // 2^22
  // Only the entries a group with this mc can look up (m <= mc) are built.
  for (size_t m = 0; m <= mc; m += 16) {
    const __m512 v = _mm512_div_ps(LoadDecoded(dec + m), eff);  // >= +0
    // Fp4Nibble's E2M1 index of min(v, 6), as fp4.cc's Fp4Codes computes it: below 1,
    // v + 2^22 rounds v to a multiple of 0.5 (ties to even: 0.25 -> 0, 0.75 -> 1); from 1
    // up, RNE to one mantissa bit, and (bits >> 22) - (252 << 22 >> 22) is the index
    // (1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4 in the 1-bit mantissa sense).
    const __m512 a = _mm512_min_ps(v, _mm512_set1_ps(6.0f));
    const __m512i sub = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(a, magic)),
                                         _mm512_castps_si512(magic));
    const __m512i bits = _mm512_castps_si512(a);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 22), _mm512_set1_epi32(1));
    const __m512i normal = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x1FFFFF - (252 << 22))), lsb),
        22);
    const __m512i idx = _mm512_mask_blend_epi32(
        _mm512_cmp_ps_mask(a, _mm512_set1_ps(1.0f), _CMP_LT_OQ), normal, sub);
    // -x(m) / eff is -v exactly: the sign nibble bit iff -v < 0, i.e. v > 0.
    const __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512i neg = _mm512_mask_or_epi32(idx, pos, idx, _mm512_set1_epi32(8));
    const __m512i both = _mm512_or_si512(idx, _mm512_slli_epi32(neg, 4));
    _mm_store_si128(reinterpret_cast<__m128i*>(table + m), _mm512_cvtepi32_epi8(both));
  }
  return true;
}

// Builds the NVFP4 table of `slot` (column j, largest magnitude mc) and stamps it; kept out
// of line so that the lookup loop stays small. False when x(mc) is not finite.
[[gnu::noinline]] QUENCH_VBMI bool BuildNvfp4Slot(Band& band, size_t j, uint32_t mc, float gs,
                                                  size_t slot) {
  Workspace& ws = band.ws;
  if (!BuildNvfp4(band.Decode(j), mc, gs, ws.tables.get() + slot * kTableBytes,
                  &ws.slot_scale[slot])) {
    return false;
  }
  ws.slot_stamp[slot] = ws.epoch;
  return true;
}

QUENCH_VBMI FusedResult Nvfp4Impl(const SourceChunk& in, float gs, const ChunkOutputs& out) {
  Workspace& ws = ThreadWorkspace();
  ws.Reserve(in.scale_cols);
  constexpr size_t kGroup = 16;
  const size_t n_groups = in.cols / kGroup;
  const size_t first_band = in.first_row / in.block_rows;
  Band band{ws, in};
  size_t cur = ~size_t{0};
  // Byte 16k of a vector to byte k: the four groups' maxima after the in-lane reduction.
  const __m512i gather = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                          0x30201000);
  const __m512i low7 = _mm512_set1_epi8(0x7F), low4 = _mm512_set1_epi8(0x0F);
  const std::vector<uint32_t> col_of = BlockColumns(in, kGroup);
  std::vector<uint32_t> col_base(col_of.size());  // first slot of each group's column
  for (size_t g = 0; g < col_of.size(); ++g) col_base[g] = col_of[g] * kMags;
  // Raw views of the workspace for the inner loop (the compiler cannot keep a vector's data
  // pointer in a register across the stores).
  const uint32_t* stamp = ws.slot_stamp.data();
  const uint16_t* slot_scale = ws.slot_scale.data();
  const uint8_t* tab = ws.tables.get();
  uint32_t epoch = 0;
  for (size_t r = 0; r < in.rows; ++r) {
    const size_t b = (in.first_row + r) / in.block_rows;
    if (b != cur) {
      ws.NextEpoch();
      epoch = ws.epoch;
      band.scale_row = in.scales + (b - first_band) * in.scale_cols;
      cur = b;
    }
    const uint8_t* codes = in.codes + r * in.cols;
    uint8_t* packed = out.out[0] + r * (in.cols / 2);
    uint8_t* scales = out.out[1] + r * n_groups;
    for (size_t c0 = 0; c0 < in.cols; c0 += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(codes + c0) + 2048, _MM_HINT_T0);
      // The four groups' largest magnitudes: max within each 16-byte lane, then gathered.
      __m512i m = _mm512_and_si512(_mm512_loadu_si512(codes + c0), low7);
      m = _mm512_max_epu8(m, _mm512_bsrli_epi128(m, 8));
      m = _mm512_max_epu8(m, _mm512_bsrli_epi128(m, 4));
      m = _mm512_max_epu8(m, _mm512_bsrli_epi128(m, 2));
      m = _mm512_max_epu8(m, _mm512_bsrli_epi128(m, 1));
      const uint32_t maxima = static_cast<uint32_t>(
          _mm_cvtsi128_si32(_mm512_castsi512_si128(_mm512_permutexvar_epi8(gather, m))));
      // The groups' tables, built where missing. No vector is live across a build (a call
      // clobbers every vector register, so one would be spilled and reloaded each step).
      const uint8_t* tables[4];
      uint32_t codes4 = 0;
      for (size_t k = 0; k < 4; ++k) {
        const uint32_t mc = (maxima >> (8 * k)) & 0xFFu;
        const size_t slot = col_base[c0 / kGroup + k] + mc;
        if (stamp[slot] != epoch) {
          if (mc == 0x7F) return FusedResult::kNotFinite;  // a NaN code (never built)
          if (!BuildNvfp4Slot(band, col_of[c0 / kGroup + k], mc, gs, slot)) {
            return FusedResult::kNotFinite;
          }
        }
        tables[k] = tab + slot * kTableBytes;
        codes4 |= static_cast<uint32_t>(slot_scale[slot]) << (8 * k);
      }
      const __m512i v = _mm512_loadu_si512(codes + c0);
      // Each group's 16 lanes through its own table.
      __m512i res = _mm512_permutex2var_epi8(_mm512_load_si512(tables[0]), v,
                                             _mm512_load_si512(tables[0] + 64));
      for (size_t k = 1; k < 4; ++k) {
        const __m512i rk = _mm512_permutex2var_epi8(_mm512_load_si512(tables[k]), v,
                                                    _mm512_load_si512(tables[k] + 64));
        res = _mm512_mask_blend_epi8(0xFFFFull << (16 * k), res, rk);
      }
      // The nibble for the code's sign: the high one for negative codes.
      const __m512i nib = _mm512_mask_blend_epi8(
          _mm512_movepi8_mask(v), _mm512_and_si512(res, low4),
          _mm512_and_si512(_mm512_srli_epi16(res, 4), low4));
      StorePacked(nib, packed + c0 / 2);
      std::memcpy(scales + c0 / kGroup, &codes4, 4);
    }
  }
  return FusedResult::kOk;
}

// True when no scale of the chunk has its sign bit set (-0: the one non-negative scale whose
// products flip signs; the caller refused negative ones).
bool ScalesUnsigned(const SourceChunk& in) {
  const size_t bands = in.rows == 0 ? 0
                                    : (in.first_row + in.rows - 1) / in.block_rows -
                                          in.first_row / in.block_rows + 1;
  for (size_t i = 0; i < bands * in.scale_cols; ++i) {
    if (std::signbit(in.scales[i])) return false;
  }
  return true;
}

}  // namespace
#endif  // QUENCH_FUSED_X86

FusedResult QuantizeSourceInt4(const SourceChunk& in, size_t group, const ChunkOutputs& out) {
#ifdef QUENCH_FUSED_X86
  if (!FusedSourceAvailable() || group == 0 || group % 64 != 0 || in.block_cols % group != 0 ||
      in.cols % group != 0 || in.block_rows == 0 || !ScalesUnsigned(in)) {
    return FusedResult::kNotHandled;
  }
  if (in.rows == 0) return FusedResult::kOk;
  return Int4Impl(in, group, out);
#else
  (void)in;
  (void)group;
  (void)out;
  return FusedResult::kNotHandled;
#endif
}

FusedResult QuantizeSourceNvfp4(const SourceChunk& in, float global_scale,
                                const ChunkOutputs& out) {
#ifdef QUENCH_FUSED_X86
  if (!FusedSourceAvailable() || in.cols % 64 != 0 || in.block_cols % 16 != 0 ||
      in.block_rows == 0 || !(global_scale > 0.f) || !std::isfinite(global_scale) ||
      !ScalesUnsigned(in)) {
    return FusedResult::kNotHandled;
  }
  if (in.rows == 0) return FusedResult::kOk;
  return Nvfp4Impl(in, global_scale, out);
#else
  (void)in;
  (void)global_scale;
  (void)out;
  return FusedResult::kNotHandled;
#endif
}

}  // namespace quench::fp8

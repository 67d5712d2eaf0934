// FP8 E4M3 weight quantization (FP8_DYNAMIC per channel, FP8_BLOCK per 128x128 tile) and the
// decoding of FP8 sources (E4M3 weights with block scale multipliers): the scalar references
// (the definitions) and the Highway kernels, compiled once per target through Highway's
// foreach_target skeleton.
//
// The definition, as compressed-tensors 0.19.0 / llm-compressor 0.14.0.1 / torch 2.13.0
// compute it for a weight in dtype D (bf16, f16 or f32); see docs/reference-notes.md
// section 3 (steps 1-4):
//   amax  = max |x| over the row (channel) or the zero-padded 128x128 tile (block)
//           (observer: amin/amax, then min(mn, 0) / max(mx, 0), then max of the absolutes);
//   scale = RNE_D(amax / 448), the quotient taken in f32 (torch's reduced-float division);
//           if scale == 0 exactly it becomes eps(D) (calculate_qparams step 5);
//   q     = e4m3(clamp(RNE_D(x / scale), -448, 448)), e4m3 being c10's RNE conversion.
// The scale is stored in D. This was checked bit for bit against the installed reference
// (initialize_quantized_linear + calibrate_weight + compress_module, the path model_free_ptq
// takes) on bf16/f16/f32 tensors: random, subnormal, near-max, all-zero, tie and
// every-bit-pattern cases, plus rows where RNE_D changes the e4m3 code (double rounding).
// Two facts follow from the formats: with x and scale both in D, the f32 quotient is never
// exactly halfway between two D values unless it is below D's normal range (where the e4m3
// code is 0 anyway); and torch 2.13's e4m3 conversion saturates, so the clamp never changes
// a code. Both steps are still implemented exactly as defined, except that for bf16 the
// kernels take the quotient as x * RN(1 / scale) where that provably gives the same code
// (internal::ReciprocalIsExact in fp8_shared.h, with the proof); the scalar reference always
// divides.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "schemes/float_formats.h"
#include "schemes/fp8.h"
#include "schemes/fp8_bf16.h"
#include "schemes/fp8_bf16_avx2.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/schemes/fp8.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"

// Scalar helpers shared by the reference and the kernels' per-row / per-tile scale step
// (compiled once, outside the per-target namespaces).
#include "schemes/fp8_shared.h"

#include "schemes/rounding-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::fp8 {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace rounding = quench::HWY_NAMESPACE::rounding;

using DF = hn::ScalableTag<float>;
using DU = hn::RebindToUnsigned<DF>;
using DI = hn::RebindToSigned<DF>;
using VF = hn::Vec<DF>;
using VU = hn::Vec<DU>;

using rounding::AbsBitsMax;
using rounding::EncodeE4M3;
using rounding::LoadF32;
using rounding::ReduceMax;
using rounding::RoundToDType;
using rounding::Traits;

// The f32 value of an abs bit pattern of dtype D (finite, so the scalar decoders are exact).
template <DType D>
HWY_INLINE float AbsBitsToF32(typename Traits<D>::T bits) {
  if constexpr (D == DType::kBF16) return BF16ToF32(bits);
  if constexpr (D == DType::kF16) return F16ToF32(bits);
  return BitsToF32(bits);
}

// q = e4m3(clamp(RNE_D(x / scale), -448, 448)) for one vector of f32 lanes (the clamp is
// implied by EncodeE4M3's saturation). kByReciprocal: `by` is RN_f32(1 / scale) and the
// quotient is taken as x * by, which internal::ReciprocalIsExact proves gives the same code;
// otherwise `by` is the scale and the quotient is the IEEE f32 division.
template <DType D, bool kByReciprocal>
HWY_INLINE VU QuantizeLanes(DF df, VF x, VF by) {
  const VF quotient = kByReciprocal ? hn::Mul(x, by) : hn::Div(x, by);
  return EncodeE4M3(df, RoundToDType<D>(df, quotient));
}

template <DType D, bool kByReciprocal>
HWY_INLINE void QuantizeRunBy(const uint8_t* src, size_t n, float by, uint8_t* dst);

// Quantizes n elements of dtype D at src with one scale, writing n codes to dst.
template <DType D>
HWY_INLINE void QuantizeRun(const uint8_t* src, size_t n, float scale, uint8_t* dst) {
  if (internal::ReciprocalIsExact(scale, D)) {
    QuantizeRunBy<D, true>(src, n, 1.0f / scale, dst);
  } else {
    QuantizeRunBy<D, false>(src, n, scale, dst);
  }
}

template <DType D, bool kByReciprocal>
HWY_INLINE void QuantizeRunBy(const uint8_t* src, size_t n, float by, uint8_t* dst) {
  constexpr size_t kEsz = sizeof(typename Traits<D>::T);
  const DF df;
  const hn::Rebind<uint8_t, DF> d8;
  const size_t lanes = hn::Lanes(df);
  const VF vscale = hn::Set(df, by);
  size_t i = 0;
  if (n >= 2 * lanes) {
    for (; i <= n - 2 * lanes; i += 2 * lanes) {
      const VU q0 =
          QuantizeLanes<D, kByReciprocal>(df, LoadF32<D>(df, src + i * kEsz), vscale);
      const VU q1 =
          QuantizeLanes<D, kByReciprocal>(df, LoadF32<D>(df, src + (i + lanes) * kEsz), vscale);
      hn::StoreU(hn::TruncateTo(d8, q0), d8, dst + i);
      hn::StoreU(hn::TruncateTo(d8, q1), d8, dst + i + lanes);
    }
  }
  for (; i + lanes <= n; i += lanes) {
    const VU q = QuantizeLanes<D, kByReciprocal>(df, LoadF32<D>(df, src + i * kEsz), vscale);
    hn::StoreU(hn::TruncateTo(d8, q), d8, dst + i);
  }
  if (i < n) {
    // Tail: the same vector code on a zero-padded copy, keeping only the real lanes.
    HWY_ALIGN uint8_t in_buf[HWY_MAX_BYTES] = {};
    HWY_ALIGN uint8_t out_buf[HWY_MAX_BYTES];
    std::memcpy(in_buf, src + i * kEsz, (n - i) * kEsz);
    const VU q = QuantizeLanes<D, kByReciprocal>(df, LoadF32<D>(df, in_buf), vscale);
    hn::StoreU(hn::TruncateTo(d8, q), d8, out_buf);
    std::memcpy(dst + i, out_buf, n - i);
  }
}

// Elements per piece of a row in ChannelImpl: a multiple of every target's lane count.
constexpr size_t kPrefetchPiece = 512;

template <DType D>
bool ChannelImpl(const WeightChunk& in, const ChunkOutputs& out) {
  using T = typename Traits<D>::T;
  const hn::ScalableTag<T> dt;
  const size_t row_bytes = in.cols * sizeof(T);
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* row = in.data + r * row_bytes;
    const T amax_bits = ReduceMax(dt, AbsBitsMax<D>(row, in.cols, hn::Zero(dt)));
    if (amax_bits >= Traits<D>::kInfBits) return false;  // Inf or NaN in the row
    const float scale = internal::ScaleFromAmax(AbsBitsToF32<D>(amax_bits), D);
    internal::StoreScale(out.out[1] + r * sizeof(T), scale, D);
    // The row in pieces, each with the same stretch of the next row asked for (asking for
    // the whole next row at once stalls on the full line-fill buffers).
    const uint8_t* next_row = r + 1 < in.rows ? row + row_bytes : nullptr;
    for (size_t c = 0; c < in.cols; c += kPrefetchPiece) {
      const size_t n = std::min(kPrefetchPiece, in.cols - c);
      if (next_row != nullptr) rounding::PrefetchBytes(next_row + c * sizeof(T), n * sizeof(T));
      QuantizeRun<D>(row + c * sizeof(T), n, scale, out.out[0] + r * in.cols + c);
    }
  }
  return true;
}

template <DType D>
bool BlockImpl(const WeightChunk& in, const ChunkOutputs& out) {
  using T = typename Traits<D>::T;
  const hn::ScalableTag<T> dt;
  const size_t lanes = hn::Lanes(dt);
  const size_t rows = in.rows;
  const size_t cols = in.cols;
  const size_t row_bytes = cols * sizeof(T);
  const size_t tiles_c = internal::CeilDiv(cols, kBlock);
  if (rows == 0 || cols == 0) return true;  // nothing to write (as the reference)
  // One abs-bits accumulator vector per tile of the current 128-row band.
  auto acc = hwy::AllocateAligned<T>(tiles_c * lanes);
  auto scales = hwy::AllocateAligned<float>(tiles_c);
  if (!acc || !scales) throw std::bad_alloc();  // the caller reports it; false means NaN/Inf
  for (size_t r0 = 0, band = 0; r0 < rows; r0 += kBlock, ++band) {
    const size_t r1 = std::min(rows, r0 + kBlock);
    // Pass 1: amax per tile, one sweep over the band's rows in memory order. Rows past the
    // tensor's end are the zero padding, which cannot raise a max of absolute values.
    for (size_t j = 0; j < tiles_c; ++j) hn::Store(hn::Zero(dt), dt, acc.get() + j * lanes);
    for (size_t r = r0; r < r1; ++r) {
      const uint8_t* row = in.data + r * row_bytes;
      for (size_t j = 0; j < tiles_c; ++j) {
        const size_t c0 = j * kBlock;
        const size_t width = std::min(kBlock, cols - c0);
        T* a = acc.get() + j * lanes;
        hn::Store(AbsBitsMax<D>(row + c0 * sizeof(T), width, hn::Load(dt, a)), dt, a);
      }
    }
    uint8_t* scale_out = out.out[1] + band * tiles_c * sizeof(T);
    for (size_t j = 0; j < tiles_c; ++j) {
      const T amax_bits = ReduceMax(dt, hn::Load(dt, acc.get() + j * lanes));
      if (amax_bits >= Traits<D>::kInfBits) return false;  // Inf or NaN in the tile
      scales[j] = internal::ScaleFromAmax(AbsBitsToF32<D>(amax_bits), D);
      internal::StoreScale(scale_out + j * sizeof(T), scales[j], D);
    }
    // Pass 2: quantize the band (now warm in cache) tile by tile.
    for (size_t r = r0; r < r1; ++r) {
      const uint8_t* row = in.data + r * row_bytes;
      uint8_t* dst = out.out[0] + r * cols;
      for (size_t j = 0; j < tiles_c; ++j) {
        const size_t c0 = j * kBlock;
        QuantizeRun<D>(row + c0 * sizeof(T), std::min(kBlock, cols - c0), scales[j], dst + c0);
      }
    }
  }
  return true;
}

bool QuantizeChannelKernel(const WeightChunk& in, const ChunkOutputs& out) {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  // bf16 on CPUs with AVX-512 BF16: a fraction of this target's CPU (fp8_bf16.h). Taken
  // from the AVX-512 targets only, so that tests running the lesser targets still run their
  // Highway code.
  if (Fp8Bf16Handles(in)) return QuantizeChannelBf16(in, out);
#elif HWY_TARGET == HWY_AVX2
  // bf16 on the AVX2 target: e4m3 on 16-bit lanes (fp8_bf16_avx2.h), taken from this target
  // only for the same reason.
  if (Fp8Bf16Avx2Handles(in)) return QuantizeChannelBf16Avx2(in, out);
#endif
  switch (in.dtype) {
    case DType::kBF16: return ChannelImpl<DType::kBF16>(in, out);
    case DType::kF16: return ChannelImpl<DType::kF16>(in, out);
    case DType::kF32: return ChannelImpl<DType::kF32>(in, out);
    default: return false;
  }
}

template <DType D>
bool TensorImpl(const WeightChunk& in, const ChunkOutputs& out) {
  using T = typename Traits<D>::T;
  const hn::ScalableTag<T> dt;
  const size_t row_bytes = in.cols * sizeof(T);
  const float scale = in.params.global_scale;
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* row = in.data + r * row_bytes;
    // The pre-pass saw every value; a NaN or Inf here means the source changed since.
    const T amax_bits = ReduceMax(dt, AbsBitsMax<D>(row, in.cols, hn::Zero(dt)));
    if (amax_bits >= Traits<D>::kInfBits) return false;
    QuantizeRun<D>(row, in.cols, scale, out.out[0] + r * in.cols);
  }
  return true;
}

bool QuantizeTensorKernel(const WeightChunk& in, const ChunkOutputs& out) {
  switch (in.dtype) {
    case DType::kBF16: return TensorImpl<DType::kBF16>(in, out);
    case DType::kF16: return TensorImpl<DType::kF16>(in, out);
    case DType::kF32: return TensorImpl<DType::kF32>(in, out);
    default: return false;
  }
}

bool QuantizeBlockKernel(const WeightChunk& in, const ChunkOutputs& out) {
  switch (in.dtype) {
    case DType::kBF16: return BlockImpl<DType::kBF16>(in, out);
    case DType::kF16: return BlockImpl<DType::kF16>(in, out);
    case DType::kF32: return BlockImpl<DType::kF32>(in, out);
    default: return false;
  }
}


// ---- Source decoding: x = RNE_bf16(f32(e4m3) * scale) ----

// The exact f32 value of E4M3 codes in the low 8 bits of u32 lanes (NaN codes give garbage;
// the caller checks them apart). Normal codes (exponent field e > 0) are 1.m * 2^(e-7): the
// f32 bits are the code's exponent-mantissa bits moved to f32's fields, exponent rebiased by
// 127 - 7 = 120. Subnormal codes are m * 2^-9, exact in f32.
HWY_INLINE VF DecodeE4M3Lanes(DF df, VU code) {
  const DU du;
  const DI di;
  const VU em = hn::And(code, hn::Set(du, 0x7Fu));
  const VU normal = hn::Add(hn::ShiftLeft<20>(em), hn::Set(du, 120u << 23));
  const VF subnormal = hn::Mul(hn::ConvertTo(df, hn::BitCast(di, em)),
                              hn::Set(df, 0.001953125f));  // 2^-9
  // Signed compares: Highway has no unsigned Lt/Ge for u32 on every target, and em < 128.
  const VF mag = hn::IfThenElse(
      hn::RebindMask(df, hn::Lt(hn::BitCast(di, em), hn::Set(di, 8))), subnormal,
      hn::BitCast(df, normal));
  const VU sign = hn::ShiftLeft<24>(hn::And(code, hn::Set(du, 0x80u)));
  return hn::BitCast(df, hn::Or(hn::BitCast(du, mag), sign));
}

// n codes at src times one scale, as bf16 at dst. False on a NaN code or a non-finite result.
HWY_INLINE bool DequantizeRun(const uint8_t* src, size_t n, float scale, uint8_t* dst) {
  const DF df;
  const DU du;
  const DI di;
  const hn::Rebind<uint8_t, DF> d8;
  const hn::Rebind<uint16_t, DF> d16;
  const size_t lanes = hn::Lanes(df);
  const VF vscale = hn::Set(df, scale);
  const VU nan_code = hn::Set(du, 0x7Fu);
  const hn::Vec<DI> max_finite = hn::Set(di, 0x7F7FFFFF);  // abs bits above: Inf or NaN
  const VU abs_mask = hn::Set(du, 0x7FFFFFFFu);
  // Decodes Lanes(df) codes; true when one of them is bad.
  auto lanes_of = [&](const uint8_t* codes, uint8_t* out) {
    const VU code = hn::PromoteTo(du, hn::LoadU(d8, codes));
    const VF y = RoundToDType<DType::kBF16>(df, hn::Mul(DecodeE4M3Lanes(df, code), vscale));
    const VU bits = hn::BitCast(du, y);
    const auto bad = hn::Or(
        hn::Eq(hn::And(code, nan_code), nan_code),
        hn::RebindMask(du, hn::Gt(hn::BitCast(di, hn::And(bits, abs_mask)), max_finite)));
    hn::StoreU(hn::TruncateTo(d16, hn::ShiftRight<16>(bits)), d16,
               reinterpret_cast<uint16_t*>(out));
    return !hn::AllFalse(du, bad);
  };
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    if (lanes_of(src + i, dst + 2 * i)) return false;
  }
  if (i < n) {
    // Tail: the same vector code on a zero-padded copy (code 0 is +0, never bad).
    HWY_ALIGN uint8_t in_buf[HWY_MAX_BYTES] = {};
    HWY_ALIGN uint8_t out_buf[2 * HWY_MAX_BYTES];
    std::memcpy(in_buf, src + i, n - i);
    if (lanes_of(in_buf, out_buf)) return false;
    std::memcpy(dst + 2 * i, out_buf, 2 * (n - i));
  }
  return true;
}

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
// AVX-512 (BW): decoding by table. Within one tile every element is RNE_bf16(f32(code) *
// scale) with the same scale, so the 128 magnitudes' results (codes 0x00-0x7F) are computed
// once per tile, by the same vector arithmetic as DequantizeRun, and each element becomes a
// lookup of its code's low 7 bits (two 64-entry permutes and a blend per 32 elements) with
// the code's sign bit moved to bf16's: (-c) * s = -(c * s) exactly and RNE is symmetric, and
// a zero product keeps the code's sign, as f32 multiplication by a scale >= +0 gives. A scale
// with its sign bit set (-0) would flip signs, so such a tile is decoded by DequantizeRun.
// The NaN code's entry (0x7F) is 0x7FFF, and a product not finite in bf16 is 0x7F80: both
// have magnitude bits >= 0x7F80, which is the one check (once per run).
constexpr size_t kTableEntries = 128;
constexpr size_t kDecodePrefetchAhead = 2048;

// The 128 results of `scale` as bf16 bits at table (64-byte aligned).
HWY_INLINE void BuildDecodeTable(float scale, uint16_t* table) {
  const DF df;
  const DU du;
  const hn::Rebind<uint16_t, DF> d16;
  const size_t lanes = hn::Lanes(df);
  const VF vscale = hn::Set(df, scale);
  for (size_t m = 0; m < kTableEntries; m += lanes) {
    const VU code = hn::Iota(du, static_cast<uint32_t>(m));
    const VF y = RoundToDType<DType::kBF16>(df, hn::Mul(DecodeE4M3Lanes(df, code), vscale));
    hn::Store(hn::TruncateTo(d16, hn::ShiftRight<16>(hn::BitCast(du, y))), d16, table + m);
  }
  table[0x7F] = 0x7FFF;  // the NaN code
}

// n codes at src through `table`, as bf16 at dst; the max magnitude bits go into *acc.
HWY_INLINE void LookupRun(const uint8_t* src, size_t n, const uint16_t* table, uint8_t* dst,
                          __m512i* acc) {
  const __m512i t0 = _mm512_load_si512(table);
  const __m512i t1 = _mm512_load_si512(table + 32);
  const __m512i t2 = _mm512_load_si512(table + 64);
  const __m512i t3 = _mm512_load_si512(table + 96);
  const __m512i bit6 = _mm512_set1_epi16(0x40);
  const __m512i sign = _mm512_set1_epi16(static_cast<int16_t>(0x8000));
  const __m512i abs = _mm512_set1_epi16(0x7FFF);
  __m512i m = *acc;
  auto lanes32 = [&](__m512i code) {
    // Entries 0-63 and 64-127 (the permutes use the index's low 6 bits), chosen by bit 6.
    const __m512i lo = _mm512_permutex2var_epi16(t0, code, t1);
    const __m512i hi = _mm512_permutex2var_epi16(t2, code, t3);
    const __m512i mag = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(code, bit6), lo, hi);
    m = _mm512_max_epu16(m, mag);
    // mag | ((code << 8) & 0x8000): 0xF8 is A | (B & C).
    return _mm512_ternarylogic_epi32(mag, _mm512_slli_epi16(code, 8), sign, 0xF8);
  };
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    // The codes come from the page cache, so from memory: ask for them well ahead (past
    // 4 KiB page ends, where the hardware prefetcher stops).
    if ((i & 63) == 0) hwy::Prefetch(src + i + kDecodePrefetchAhead);
    const __m512i code = _mm512_cvtepu8_epi16(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    _mm512_storeu_si512(dst + 2 * i, lanes32(code));
  }
  if (i < n) {
    const __mmask32 k = _bzhi_u32(0xFFFFFFFFu, static_cast<uint32_t>(n - i));
    const __m512i code = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(k, src + i));
    // Lanes past n hold code 0 (+0), whose magnitude cannot raise the max.
    _mm512_mask_storeu_epi16(dst + 2 * i, k, lanes32(code));
  }
  *acc = _mm512_and_si512(m, abs);
}

bool DequantizeByTable(const SourceChunk& in, uint8_t* out) {
  const size_t first_tile_row = in.first_row / in.block_rows;
  auto tables = hwy::AllocateAligned<uint16_t>(in.scale_cols * kTableEntries);
  std::vector<uint8_t> usable(in.scale_cols);
  if (!tables) throw std::bad_alloc();
  __m512i acc = _mm512_setzero_si512();
  size_t built_for = ~size_t{0};  // the tile row whose tables are built
  for (size_t r = 0; r < in.rows; ++r) {
    const size_t tile_row = (in.first_row + r) / in.block_rows - first_tile_row;
    const float* scale_row = in.scales + tile_row * in.scale_cols;
    if (tile_row != built_for) {
      for (size_t j = 0; j < in.scale_cols; ++j) {
        usable[j] = !std::signbit(scale_row[j]);
        if (usable[j]) BuildDecodeTable(scale_row[j], tables.get() + j * kTableEntries);
      }
      built_for = tile_row;
    }
    const uint8_t* codes = in.codes + r * in.cols;
    uint8_t* dst = out + 2 * r * in.cols;
    for (size_t c0 = 0, j = 0; c0 < in.cols; c0 += in.block_cols, ++j) {
      const size_t n = std::min(in.block_cols, in.cols - c0);
      if (usable[j]) {
        LookupRun(codes + c0, n, tables.get() + j * kTableEntries, dst + 2 * c0, &acc);
      } else if (!DequantizeRun(codes + c0, n, scale_row[j], dst + 2 * c0)) {
        return false;
      }
    }
  }
  // Any lane whose magnitude bits reached 0x7F80 (Inf, or the NaN code's 0x7FFF) is bad.
  return _mm512_cmpge_epu16_mask(acc, _mm512_set1_epi16(0x7F80)) == 0;
}
#endif

// SourceAbsMax (below, the scalar version has the argument): per tile row, the largest code
// magnitude of each column over the band's rows, elementwise in vectors (one max per code
// byte), then per block column the largest of those, times its scale.
bool SourceAbsMaxKernel(const SourceChunk& in, float* amax) {
  const hn::ScalableTag<uint8_t> d8;
  const size_t lanes = hn::Lanes(d8);
  const size_t first_tile_row = in.first_row / in.block_rows;
  auto top = hwy::AllocateAligned<uint8_t>(in.cols + lanes);
  if (!top) throw std::bad_alloc();
  const auto low7 = hn::Set(d8, uint8_t{0x7F});
  float best = 0.f;
  for (size_t r = 0; r < in.rows;) {
    const size_t tile_row = (in.first_row + r) / in.block_rows;
    const size_t end = std::min(in.rows, (tile_row + 1) * in.block_rows - in.first_row);
    std::fill(top.get(), top.get() + in.cols, uint8_t{0});
    for (; r < end; ++r) {
      const uint8_t* codes = in.codes + r * in.cols;
      size_t c = 0;
      for (; c + lanes <= in.cols; c += lanes) {
        hn::Store(hn::Max(hn::Load(d8, top.get() + c), hn::And(hn::LoadU(d8, codes + c), low7)),
                  d8, top.get() + c);
      }
      for (; c < in.cols; ++c) top[c] = std::max<uint8_t>(top[c], codes[c] & 0x7F);
    }
    const float* scales = in.scales + (tile_row - first_tile_row) * in.scale_cols;
    for (size_t j = 0, c0 = 0; c0 < in.cols; c0 += in.block_cols, ++j) {
      const size_t c1 = std::min(in.cols, c0 + in.block_cols);
      const uint8_t m = *std::max_element(top.get() + c0, top.get() + c1);
      if (m == 0x7F) return false;  // a NaN code (the largest magnitude bits there are)
      const float y = BF16ToF32(F32ToBF16(E4M3ToF32(m) * scales[j]));
      if (!std::isfinite(y)) return false;
      best = std::max(best, std::fabs(y));
    }
  }
  *amax = best;
  return true;
}

bool DequantizeSourceKernel(const SourceChunk& in, uint8_t* out) {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  return DequantizeByTable(in, out);
#else
  const size_t first_tile_row = in.first_row / in.block_rows;
  for (size_t r = 0; r < in.rows; ++r) {
    const float* scale_row =
        in.scales + ((in.first_row + r) / in.block_rows - first_tile_row) * in.scale_cols;
    const uint8_t* codes = in.codes + r * in.cols;
    uint8_t* dst = out + 2 * r * in.cols;
    for (size_t c0 = 0, j = 0; c0 < in.cols; c0 += in.block_cols, ++j) {
      const size_t n = std::min(in.block_cols, in.cols - c0);
      if (!DequantizeRun(codes + c0, n, scale_row[j], dst + 2 * c0)) return false;
    }
  }
  return true;
#endif
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::fp8
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench::fp8 {

HWY_EXPORT(QuantizeChannelKernel);
HWY_EXPORT(QuantizeBlockKernel);
HWY_EXPORT(QuantizeTensorKernel);
HWY_EXPORT(DequantizeSourceKernel);
HWY_EXPORT(SourceAbsMaxKernel);

bool QuantizeChannel(const WeightChunk& in, const ChunkOutputs& out) {
  return HWY_DYNAMIC_DISPATCH(QuantizeChannelKernel)(in, out);
}

bool QuantizeBlock(const WeightChunk& in, const ChunkOutputs& out) {
  return HWY_DYNAMIC_DISPATCH(QuantizeBlockKernel)(in, out);
}

bool QuantizeTensor(const WeightChunk& in, const ChunkOutputs& out) {
  return HWY_DYNAMIC_DISPATCH(QuantizeTensorKernel)(in, out);
}

float TensorScale(float amax, DType d) { return internal::ScaleFromAmax(amax, d); }

bool DequantizeSource(const SourceChunk& in, uint8_t* out) {
  return HWY_DYNAMIC_DISPATCH(DequantizeSourceKernel)(in, out);
}

namespace {

// Element (r, c) of the chunk as an exact f32.
float ElementAt(const WeightChunk& in, size_t r, size_t c) {
  return ElementToF32(in.data, in.dtype, r * in.cols + c);
}

// q = e4m3(clamp(RNE_D(x / scale), -448, 448)): _quantize's `x / scale` in the weight dtype
// (f32 division, rounded to D), round_to_quantized_type_args' clamp, then `.to(fp8)`.
uint8_t QuantizeElement(float x, float scale, DType d) {
  float v = internal::RoundToDType(x / scale, d);
  if (v < -internal::kE4M3Max) v = -internal::kE4M3Max;
  if (v > internal::kE4M3Max) v = internal::kE4M3Max;
  return F32ToE4M3(v);
}

bool IsSupported(DType d) { return d == DType::kBF16 || d == DType::kF16 || d == DType::kF32; }

}  // namespace

bool QuantizeChannelScalar(const WeightChunk& in, const ChunkOutputs& out) {
  if (!IsSupported(in.dtype)) return false;
  const size_t esz = DTypeBits(in.dtype) / 8;
  for (size_t r = 0; r < in.rows; ++r) {
    // Observer: amin/amax over the row, widened to include 0, then the larger magnitude.
    float mn = 0.0f;
    float mx = 0.0f;
    for (size_t c = 0; c < in.cols; ++c) {
      const float x = ElementAt(in, r, c);
      if (!std::isfinite(x)) return false;
      mn = std::min(mn, x);
      mx = std::max(mx, x);
    }
    const float amax = std::max(-mn, mx);
    const float scale = internal::ScaleFromAmax(amax, in.dtype);
    internal::StoreScale(out.out[1] + r * esz, scale, in.dtype);
    for (size_t c = 0; c < in.cols; ++c) {
      out.out[0][r * in.cols + c] = QuantizeElement(ElementAt(in, r, c), scale, in.dtype);
    }
  }
  return true;
}

bool QuantizeTensorScalar(const WeightChunk& in, const ChunkOutputs& out) {
  if (!IsSupported(in.dtype)) return false;
  for (size_t r = 0; r < in.rows; ++r) {
    for (size_t c = 0; c < in.cols; ++c) {
      const float x = ElementAt(in, r, c);
      if (!std::isfinite(x)) return false;
      out.out[0][r * in.cols + c] = QuantizeElement(x, in.params.global_scale, in.dtype);
    }
  }
  return true;
}

bool QuantizeBlockScalar(const WeightChunk& in, const ChunkOutputs& out) {
  if (!IsSupported(in.dtype)) return false;
  const size_t esz = DTypeBits(in.dtype) / 8;
  const size_t tiles_r = internal::CeilDiv(in.rows, kBlock);
  const size_t tiles_c = internal::CeilDiv(in.cols, kBlock);
  for (size_t r = 0; r < in.rows; ++r) {
    for (size_t c = 0; c < in.cols; ++c) {
      if (!std::isfinite(ElementAt(in, r, c))) return false;
    }
  }
  for (size_t bi = 0; bi < tiles_r; ++bi) {
    for (size_t bj = 0; bj < tiles_c; ++bj) {
      const size_t r0 = bi * kBlock, r1 = std::min(in.rows, r0 + kBlock);
      const size_t c0 = bj * kBlock, c1 = std::min(in.cols, c0 + kBlock);
      // The tile after zero padding to 128x128: the padding only adds zeros, which the
      // min(mn, 0) / max(mx, 0) widening already includes.
      float mn = 0.0f;
      float mx = 0.0f;
      for (size_t r = r0; r < r1; ++r) {
        for (size_t c = c0; c < c1; ++c) {
          const float x = ElementAt(in, r, c);
          mn = std::min(mn, x);
          mx = std::max(mx, x);
        }
      }
      const float scale = internal::ScaleFromAmax(std::max(-mn, mx), in.dtype);
      internal::StoreScale(out.out[1] + (bi * tiles_c + bj) * esz, scale, in.dtype);
      for (size_t r = r0; r < r1; ++r) {
        for (size_t c = c0; c < c1; ++c) {
          out.out[0][r * in.cols + c] = QuantizeElement(ElementAt(in, r, c), scale, in.dtype);
        }
      }
    }
  }
  return true;
}

// The definition, element by element.
bool DequantizeSourceScalar(const SourceChunk& in, uint8_t* out) {
  const size_t first_tile_row = in.first_row / in.block_rows;
  for (size_t r = 0; r < in.rows; ++r) {
    const size_t tile_row = (in.first_row + r) / in.block_rows - first_tile_row;
    for (size_t c = 0; c < in.cols; ++c) {
      const float x = E4M3ToF32(in.codes[r * in.cols + c]);
      const float scale = in.scales[tile_row * in.scale_cols + c / in.block_cols];
      const uint16_t y = F32ToBF16(x * scale);  // f32 product, one RNE to bf16
      if (!std::isfinite(x) || !std::isfinite(BF16ToF32(y))) return false;
      std::memcpy(out + 2 * (r * in.cols + c), &y, 2);
    }
  }
  return true;
}

bool SourceAbsMax(const SourceChunk& in, float* amax) {
  return HWY_DYNAMIC_DISPATCH(SourceAbsMaxKernel)(in, amax);
}

bool SourceAbsMaxScalar(const SourceChunk& in, float* amax) {
  const size_t first_tile_row = in.first_row / in.block_rows;
  std::vector<uint8_t> top(in.scale_cols);
  float best = 0.f;
  for (size_t r = 0; r < in.rows;) {
    const size_t tile_row = (in.first_row + r) / in.block_rows;
    const size_t end = std::min(in.rows, (tile_row + 1) * in.block_rows - in.first_row);
    std::fill(top.begin(), top.end(), uint8_t{0});
    for (; r < end; ++r) {
      const uint8_t* codes = in.codes + r * in.cols;
      for (size_t j = 0, c0 = 0; c0 < in.cols; c0 += in.block_cols, ++j) {
        const size_t c1 = std::min(in.cols, c0 + in.block_cols);
        uint8_t m = top[j];
        for (size_t c = c0; c < c1; ++c) m = std::max<uint8_t>(m, codes[c] & 0x7F);
        top[j] = m;
      }
    }
    const float* scales = in.scales + (tile_row - first_tile_row) * in.scale_cols;
    for (size_t j = 0; j < in.scale_cols; ++j) {
      if (top[j] == 0x7F) return false;  // a NaN code (the largest magnitude bits there are)
      const float y = BF16ToF32(F32ToBF16(E4M3ToF32(top[j]) * scales[j]));
      if (!std::isfinite(y)) return false;
      best = std::max(best, std::fabs(y));
    }
  }
  *amax = best;
  return true;
}

}  // namespace quench::fp8
#endif  // HWY_ONCE

// bfloat16 kernels on AVX-512 BF16 (`vcvtneps2bf16`), for CPUs that have it whatever `-march` the build
// used: each function carries its own target attribute, and Swift calls them only after
// `concord_bf16_avx512_usable()` said yes (CPU and OS). No unsafe flags, no separate build.
//
// They compute exactly what the portable Swift kernels compute (ConcordKernels/SIMDLoops.swift): widen
// to float32, combine, round to nearest even, NaN stays a quiet NaN. One difference of the instruction
// is corrected: it flushes float32 subnormal inputs to ±0, so a vector holding any subnormal is rounded
// by integer arithmetic in those lanes instead (a rare, slower path). Tails use masked loads and stores:
// no scalar loop, no read or write past `count`.
#include "CConcordCPU.h"

#if defined(__x86_64__) && defined(__clang__)
#include <immintrin.h>

#define AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,evex512")))
#define INLINE static inline __attribute__((always_inline))

int concord_bf16_avx512_usable(void) {
    const uint64_t needed = (UINT64_C(1) << CONCORD_CPU_AVX512F) | (UINT64_C(1) << CONCORD_CPU_AVX512BW) |
                            (UINT64_C(1) << CONCORD_CPU_AVX512DQ) | (UINT64_C(1) << CONCORD_CPU_AVX512VL) |
                            (UINT64_C(1) << CONCORD_CPU_AVX512BF16);
    return (concord_cpu_usable_now() & needed) == needed;
}

/// 16 bfloat16 → 16 float32 (exact).
INLINE AVX512_BF16 __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/// 16 float32 → 16 bfloat16, rounding to nearest even, subnormals kept (see the file comment).
INLINE AVX512_BF16 __m256i narrow(__m512 v) {
    __m256i r = (__m256i)_mm512_cvtneps_pbh(v);
    const __mmask16 subnormal = _mm512_fpclass_ps_mask(v, 0x20);  // one instruction: the check costs ~15%
    if (__builtin_expect(subnormal != 0, 0)) {
        const __m512i bits = _mm512_castps_si512(v);
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        const __m512i bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF));
        const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
        r = _mm256_mask_mov_epi16(r, subnormal, _mm512_cvtepi32_epi16(rounded));
    }
    return r;
}

/// The lanes of a tail of `n` < 16 elements.
INLINE __mmask16 tail_mask(size_t n) { return (__mmask16)((1u << n) - 1u); }

/// `op` as ReduceKernels applies it: min = `b < a ? b : a`, max = `b >= a ? b : a` (Swift.min/max).
INLINE AVX512_BF16 __m512 apply(int op, __m512 a, __m512 b) {
    switch (op) {
    case CONCORD_BF16_PROD: return _mm512_mul_ps(a, b);
    case CONCORD_BF16_MIN: return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(b, a, _CMP_LT_OQ), a, b);
    case CONCORD_BF16_MAX: return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(b, a, _CMP_GE_OQ), a, b);
    default: return _mm512_add_ps(a, b);
    }
}

INLINE AVX512_BF16 void combine(uint16_t *d, const uint16_t *s, size_t count, int op) {
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        const __m512 a = widen(_mm256_loadu_si256((const __m256i *)(d + i)));
        const __m512 b = widen(_mm256_loadu_si256((const __m256i *)(s + i)));
        _mm256_storeu_si256((__m256i *)(d + i), narrow(apply(op, a, b)));
    }
    if (i < count) {
        const __mmask16 m = tail_mask(count - i);
        const __m512 a = widen(_mm256_maskz_loadu_epi16(m, d + i));
        const __m512 b = widen(_mm256_maskz_loadu_epi16(m, s + i));
        _mm256_mask_storeu_epi16(d + i, m, narrow(apply(op, a, b)));
    }
}

AVX512_BF16 void concord_bf16_combine_avx512(void *destination, const void *source, size_t count, int op) {
    uint16_t *d = destination;
    const uint16_t *s = source;
    switch (op) {  // one loop per op, the op a constant in each
    case CONCORD_BF16_PROD: combine(d, s, count, CONCORD_BF16_PROD); break;
    case CONCORD_BF16_MIN: combine(d, s, count, CONCORD_BF16_MIN); break;
    case CONCORD_BF16_MAX: combine(d, s, count, CONCORD_BF16_MAX); break;
    default: combine(d, s, count, CONCORD_BF16_SUM); break;
    }
}

AVX512_BF16 void concord_bf16_scale_avx512(void *buffer, size_t count, float factor) {
    uint16_t *p = buffer;
    const __m512 f = _mm512_set1_ps(factor);
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        const __m512 a = widen(_mm256_loadu_si256((const __m256i *)(p + i)));
        _mm256_storeu_si256((__m256i *)(p + i), narrow(_mm512_mul_ps(a, f)));
    }
    if (i < count) {
        const __mmask16 m = tail_mask(count - i);
        const __m512 a = widen(_mm256_maskz_loadu_epi16(m, p + i));
        _mm256_mask_storeu_epi16(p + i, m, narrow(_mm512_mul_ps(a, f)));
    }
}

AVX512_BF16 void concord_bf16_from_float32_avx512(const void *source, void *destination, size_t count) {
    const float *s = source;
    uint16_t *d = destination;
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        const __m512 v = _mm512_loadu_ps(s + i);
        _mm256_storeu_si256((__m256i *)(d + i), narrow(v));
    }
    if (i < count) {
        const __mmask16 m = tail_mask(count - i);
        _mm256_mask_storeu_epi16(d + i, m, narrow(_mm512_maskz_loadu_ps(m, s + i)));
    }
}

#else  // no AVX-512 BF16 code on this architecture or compiler: never usable, never called.

int concord_bf16_avx512_usable(void) { return 0; }
void concord_bf16_combine_avx512(void *destination, const void *source, size_t count, int op) {
    (void)destination, (void)source, (void)count, (void)op;
    __builtin_trap();
}
void concord_bf16_scale_avx512(void *buffer, size_t count, float factor) {
    (void)buffer, (void)count, (void)factor;
    __builtin_trap();
}
void concord_bf16_from_float32_avx512(const void *source, void *destination, size_t count) {
    (void)source, (void)destination, (void)count;
    __builtin_trap();
}

#endif

// CPU-specific C for Concord: the CPU-feature guard of its binaries, and bfloat16 kernels on AVX-512 BF16.
//
// The guard. A release build made with `-Xcc -march=x86-64-v3` (or `native`) lets the compiler use AVX2,
// FMA, F16C and friends anywhere in the package's code. Run on an older CPU, such a binary would die of
// SIGILL at the first such instruction. Instead, a constructor (CConcordCPU.c) that runs before `main`
// checks that the CPU (and the OS, for AVX and AVX-512 register state) provides every feature the build
// assumed, and otherwise prints one line naming the missing features and how to rebuild, and exits with
// status 1. What the build assumed is read from the compiler's predefined macros (`__AVX2__`, …) in
// CConcordCPU.c, which receives the same `-Xcc -march=…` as every other target; the check itself is
// compiled for baseline x86-64 (a target attribute on every function of that file), so it cannot execute
// an AVX instruction itself. The decision is a pure function of a `concord_cpu_id` snapshot, so tests can
// feed it any CPU.
//
// The bfloat16 kernels (BFloat16AVX512.c) carry their own target attribute and run only where
// `concord_bf16_avx512_usable()` says so; ConcordKernels chooses them at run time (KernelPath).
#ifndef CCONCORD_CPU_H
#define CCONCORD_CPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The CPU features the guard knows, as bit numbers of a feature mask (`1 << CONCORD_CPU_…`).
typedef enum concord_cpu_feature {
    CONCORD_CPU_SSE3 = 0,
    CONCORD_CPU_SSSE3,
    CONCORD_CPU_SSE4_1,
    CONCORD_CPU_SSE4_2,
    CONCORD_CPU_POPCNT,
    CONCORD_CPU_CX16,
    CONCORD_CPU_LAHF_SAHF,
    CONCORD_CPU_PCLMUL,
    CONCORD_CPU_AES,
    CONCORD_CPU_XSAVE,
    CONCORD_CPU_MOVBE,
    CONCORD_CPU_RDRND,
    CONCORD_CPU_RDSEED,
    CONCORD_CPU_ADX,
    CONCORD_CPU_SHA,
    CONCORD_CPU_BMI,
    CONCORD_CPU_BMI2,
    CONCORD_CPU_LZCNT,
    CONCORD_CPU_AVX,
    CONCORD_CPU_AVX2,
    CONCORD_CPU_FMA,
    CONCORD_CPU_F16C,
    CONCORD_CPU_VAES,
    CONCORD_CPU_VPCLMULQDQ,
    CONCORD_CPU_GFNI,
    CONCORD_CPU_AVXVNNI,
    CONCORD_CPU_AVX512F,
    CONCORD_CPU_AVX512CD,
    CONCORD_CPU_AVX512BW,
    CONCORD_CPU_AVX512DQ,
    CONCORD_CPU_AVX512VL,
    CONCORD_CPU_AVX512IFMA,
    CONCORD_CPU_AVX512VBMI,
    CONCORD_CPU_AVX512VBMI2,
    CONCORD_CPU_AVX512VNNI,
    CONCORD_CPU_AVX512BITALG,
    CONCORD_CPU_AVX512VPOPCNTDQ,
    CONCORD_CPU_AVX512BF16,
    CONCORD_CPU_AVX512FP16,
    CONCORD_CPU_FEATURE_COUNT
} concord_cpu_feature;

/// The raw `cpuid`/`xgetbv` words the decision needs (all zero on other architectures).
typedef struct concord_cpu_id {
    uint32_t leaf1_ecx;    ///< cpuid(1).ecx
    uint32_t leaf1_edx;    ///< cpuid(1).edx
    uint32_t leaf7_ebx;    ///< cpuid(7, 0).ebx
    uint32_t leaf7_ecx;    ///< cpuid(7, 0).ecx
    uint32_t leaf7_edx;    ///< cpuid(7, 0).edx
    uint32_t leaf7_1_eax;  ///< cpuid(7, 1).eax
    uint32_t ext1_ecx;     ///< cpuid(0x80000001).ecx
    uint64_t xcr0;         ///< xgetbv(0): register state the OS saves; 0 when OSXSAVE is clear
} concord_cpu_id;

/// The features this build may use: those the compiler was told to target (`-march`), as a mask.
uint64_t concord_cpu_required(void);

/// Reads this CPU's `concord_cpu_id` (cpuid and xgetbv).
concord_cpu_id concord_cpu_read(void);

/// The features usable on `cpu`: the CPU reports them and, for AVX and AVX-512, the OS saves the
/// registers (XCR0). Pure.
uint64_t concord_cpu_usable(const concord_cpu_id *cpu);

/// The lowercase name of a feature bit (`"avx2"`), or NULL for an unknown bit.
const char *concord_cpu_feature_name(unsigned feature);

/// Writes the one-line error for `missing` (a non-zero mask), NUL-terminated and ending in a newline,
/// into `buffer` (truncated to `capacity`). Returns the length written, without the NUL.
size_t concord_cpu_format_error(uint64_t missing, char *buffer, size_t capacity);

/// Parses a comma- or space-separated list of feature names into a mask (unknown names are ignored).
uint64_t concord_cpu_parse_names(const char *names);

/// The features usable on this machine, minus those named in the environment variable `CONCORD_CPU_HIDE`
/// (a testing aid, e.g. `CONCORD_CPU_HIDE=avx2,fma`: the guard then reports them missing, and the kernels'
/// run-time dispatch does not use them).
uint64_t concord_cpu_usable_now(void);

/// What the guard decides on this machine: `concord_cpu_required() & ~concord_cpu_usable_now()`. Zero means
/// the binary may run.
uint64_t concord_cpu_missing_now(void);

// MARK: - bfloat16 on AVX-512 BF16 (BFloat16AVX512.c)

/// The combining ops of the bfloat16 kernels (the raw values of Concord's ReduceOp; avg combines as sum).
enum { CONCORD_BF16_SUM = 1, CONCORD_BF16_PROD = 2, CONCORD_BF16_MIN = 3, CONCORD_BF16_MAX = 4 };

/// Whether the AVX-512 BF16 kernels below may run here: the CPU has AVX512F, BW, DQ, VL and BF16 and the OS
/// saves the ZMM state. The others must not be called otherwise.
int concord_bf16_avx512_usable(void);

/// `destination[i] = bf16(op(float(destination[i]), float(source[i])))` for `count` bfloat16 values at any
/// alignment; `destination` may equal `source`. Rounds to nearest even; NaN stays NaN.
void concord_bf16_combine_avx512(void *destination, const void *source, size_t count, int op);

/// `buffer[i] = bf16(float(buffer[i]) * factor)`.
void concord_bf16_scale_avx512(void *buffer, size_t count, float factor);

/// float32 → bfloat16 for `count` values, rounding to nearest even; `destination` may equal `source`.
void concord_bf16_from_float32_avx512(const void *source, void *destination, size_t count);

/// The calling thread's CPU mask (`bytes` bytes, one bit per CPU) into `mask`: 0, or -1 with errno set.
int concord_thread_affinity_get(unsigned char *mask, unsigned long bytes);
/// Binds the calling thread to the CPUs set in `mask`: 0, or -1 with errno set.
int concord_thread_affinity_set(const unsigned char *mask, unsigned long bytes);

#ifdef __cplusplus
}
#endif

#endif

// The CPU-feature guard: see include/CConcordCPU.h for why it exists.
//
// Every function in this file, and every inline function of the headers it includes, is compiled for
// baseline x86-64 whatever `-march` the build passes: the pragma below gives each one a target attribute.
// `arch=x86-64` alone is not enough: `-march=native` passes each host feature explicitly and clang keeps
// those under a target attribute, so the features the compiler could use in plain C code are switched off
// by name too (`no-sse3` also switches off everything built on it: SSSE3, SSE4, AVX, AVX2, FMA, F16C,
// AVX-512). Check with `clang -O2 -march=native -c CConcordCPU.c && objdump -d CConcordCPU.o`: no `v…`
// instruction, no ymm/zmm register. The macros tested in `concord_cpu_required` are still the build's: a
// target attribute changes code generation, not the predefined macros. Nothing here allocates or calls
// into Swift; the constructor uses only cpuid, xgetbv, getenv, write and _exit.
#if defined(__x86_64__) || defined(__i386__)
#pragma clang attribute push(__attribute__((target("arch=x86-64,no-sse3,no-popcnt,no-bmi,no-bmi2,no-lzcnt,no-movbe,no-cx16,no-sahf,no-crc32,no-adx"))), apply_to = function)
#define CONCORD_X86 1
#endif

#include "CConcordCPU.h"

#include <stdlib.h>
#include <unistd.h>

#define BIT(feature) (UINT64_C(1) << (feature))

/// Which cpuid word holds a feature, and which bit.
enum word { L1_ECX, L1_EDX, L7_EBX, L7_ECX, L7_EDX, L7_1_EAX, EXT1_ECX };

/// One row per feature: its name (as `-march`/`/proc/cpuinfo` spell it, roughly), where cpuid reports
/// it, and which register state the OS must save for it to be usable.
enum state { PLAIN, YMM, ZMM };

static const struct {
    const char *name;
    enum word word;
    unsigned bit;
    enum state state;
} features[CONCORD_CPU_FEATURE_COUNT] = {
    [CONCORD_CPU_SSE3] = {"sse3", L1_ECX, 0, PLAIN},
    [CONCORD_CPU_SSSE3] = {"ssse3", L1_ECX, 9, PLAIN},
    [CONCORD_CPU_SSE4_1] = {"sse4.1", L1_ECX, 19, PLAIN},
    [CONCORD_CPU_SSE4_2] = {"sse4.2", L1_ECX, 20, PLAIN},
    [CONCORD_CPU_POPCNT] = {"popcnt", L1_ECX, 23, PLAIN},
    [CONCORD_CPU_CX16] = {"cx16", L1_ECX, 13, PLAIN},
    [CONCORD_CPU_LAHF_SAHF] = {"lahf_lm", EXT1_ECX, 0, PLAIN},
    [CONCORD_CPU_PCLMUL] = {"pclmul", L1_ECX, 1, PLAIN},
    [CONCORD_CPU_AES] = {"aes", L1_ECX, 25, PLAIN},
    [CONCORD_CPU_XSAVE] = {"xsave", L1_ECX, 26, PLAIN},
    [CONCORD_CPU_MOVBE] = {"movbe", L1_ECX, 22, PLAIN},
    [CONCORD_CPU_RDRND] = {"rdrnd", L1_ECX, 30, PLAIN},
    [CONCORD_CPU_RDSEED] = {"rdseed", L7_EBX, 18, PLAIN},
    [CONCORD_CPU_ADX] = {"adx", L7_EBX, 19, PLAIN},
    [CONCORD_CPU_SHA] = {"sha", L7_EBX, 29, PLAIN},
    [CONCORD_CPU_BMI] = {"bmi1", L7_EBX, 3, PLAIN},
    [CONCORD_CPU_BMI2] = {"bmi2", L7_EBX, 8, PLAIN},
    [CONCORD_CPU_LZCNT] = {"lzcnt", EXT1_ECX, 5, PLAIN},
    [CONCORD_CPU_AVX] = {"avx", L1_ECX, 28, YMM},
    [CONCORD_CPU_AVX2] = {"avx2", L7_EBX, 5, YMM},
    [CONCORD_CPU_FMA] = {"fma", L1_ECX, 12, YMM},
    [CONCORD_CPU_F16C] = {"f16c", L1_ECX, 29, YMM},
    [CONCORD_CPU_VAES] = {"vaes", L7_ECX, 9, YMM},
    [CONCORD_CPU_VPCLMULQDQ] = {"vpclmulqdq", L7_ECX, 10, YMM},
    [CONCORD_CPU_GFNI] = {"gfni", L7_ECX, 8, PLAIN},
    [CONCORD_CPU_AVXVNNI] = {"avxvnni", L7_1_EAX, 4, YMM},
    [CONCORD_CPU_AVX512F] = {"avx512f", L7_EBX, 16, ZMM},
    [CONCORD_CPU_AVX512CD] = {"avx512cd", L7_EBX, 28, ZMM},
    [CONCORD_CPU_AVX512BW] = {"avx512bw", L7_EBX, 30, ZMM},
    [CONCORD_CPU_AVX512DQ] = {"avx512dq", L7_EBX, 17, ZMM},
    [CONCORD_CPU_AVX512VL] = {"avx512vl", L7_EBX, 31, ZMM},
    [CONCORD_CPU_AVX512IFMA] = {"avx512ifma", L7_EBX, 21, ZMM},
    [CONCORD_CPU_AVX512VBMI] = {"avx512vbmi", L7_ECX, 1, ZMM},
    [CONCORD_CPU_AVX512VBMI2] = {"avx512vbmi2", L7_ECX, 6, ZMM},
    [CONCORD_CPU_AVX512VNNI] = {"avx512vnni", L7_ECX, 11, ZMM},
    [CONCORD_CPU_AVX512BITALG] = {"avx512bitalg", L7_ECX, 12, ZMM},
    [CONCORD_CPU_AVX512VPOPCNTDQ] = {"avx512vpopcntdq", L7_ECX, 14, ZMM},
    [CONCORD_CPU_AVX512BF16] = {"avx512bf16", L7_1_EAX, 5, ZMM},
    [CONCORD_CPU_AVX512FP16] = {"avx512fp16", L7_EDX, 23, ZMM},
};

uint64_t concord_cpu_required(void) {
    uint64_t r = 0;
#ifdef __SSE3__
    r |= BIT(CONCORD_CPU_SSE3);
#endif
#ifdef __SSSE3__
    r |= BIT(CONCORD_CPU_SSSE3);
#endif
#ifdef __SSE4_1__
    r |= BIT(CONCORD_CPU_SSE4_1);
#endif
#ifdef __SSE4_2__
    r |= BIT(CONCORD_CPU_SSE4_2);
#endif
#ifdef __POPCNT__
    r |= BIT(CONCORD_CPU_POPCNT);
#endif
#if defined(CONCORD_X86) && defined(__GCC_HAVE_SYNC_COMPARE_AND_SWAP_16)
    r |= BIT(CONCORD_CPU_CX16);
#endif
#ifdef __LAHF_SAHF__
    r |= BIT(CONCORD_CPU_LAHF_SAHF);
#endif
#ifdef __PCLMUL__
    r |= BIT(CONCORD_CPU_PCLMUL);
#endif
#ifdef __AES__
    r |= BIT(CONCORD_CPU_AES);
#endif
#ifdef __XSAVE__
    r |= BIT(CONCORD_CPU_XSAVE);
#endif
#ifdef __MOVBE__
    r |= BIT(CONCORD_CPU_MOVBE);
#endif
#ifdef __RDRND__
    r |= BIT(CONCORD_CPU_RDRND);
#endif
#ifdef __RDSEED__
    r |= BIT(CONCORD_CPU_RDSEED);
#endif
#ifdef __ADX__
    r |= BIT(CONCORD_CPU_ADX);
#endif
#ifdef __SHA__
    r |= BIT(CONCORD_CPU_SHA);
#endif
#ifdef __BMI__
    r |= BIT(CONCORD_CPU_BMI);
#endif
#ifdef __BMI2__
    r |= BIT(CONCORD_CPU_BMI2);
#endif
#ifdef __LZCNT__
    r |= BIT(CONCORD_CPU_LZCNT);
#endif
#ifdef __AVX__
    r |= BIT(CONCORD_CPU_AVX);
#endif
#ifdef __AVX2__
    r |= BIT(CONCORD_CPU_AVX2);
#endif
#ifdef __FMA__
    r |= BIT(CONCORD_CPU_FMA);
#endif
#ifdef __F16C__
    r |= BIT(CONCORD_CPU_F16C);
#endif
#ifdef __VAES__
    r |= BIT(CONCORD_CPU_VAES);
#endif
#ifdef __VPCLMULQDQ__
    r |= BIT(CONCORD_CPU_VPCLMULQDQ);
#endif
#ifdef __GFNI__
    r |= BIT(CONCORD_CPU_GFNI);
#endif
#ifdef __AVXVNNI__
    r |= BIT(CONCORD_CPU_AVXVNNI);
#endif
#ifdef __AVX512F__
    r |= BIT(CONCORD_CPU_AVX512F);
#endif
#ifdef __AVX512CD__
    r |= BIT(CONCORD_CPU_AVX512CD);
#endif
#ifdef __AVX512BW__
    r |= BIT(CONCORD_CPU_AVX512BW);
#endif
#ifdef __AVX512DQ__
    r |= BIT(CONCORD_CPU_AVX512DQ);
#endif
#ifdef __AVX512VL__
    r |= BIT(CONCORD_CPU_AVX512VL);
#endif
#ifdef __AVX512IFMA__
    r |= BIT(CONCORD_CPU_AVX512IFMA);
#endif
#ifdef __AVX512VBMI__
    r |= BIT(CONCORD_CPU_AVX512VBMI);
#endif
#ifdef __AVX512VBMI2__
    r |= BIT(CONCORD_CPU_AVX512VBMI2);
#endif
#ifdef __AVX512VNNI__
    r |= BIT(CONCORD_CPU_AVX512VNNI);
#endif
#ifdef __AVX512BITALG__
    r |= BIT(CONCORD_CPU_AVX512BITALG);
#endif
#ifdef __AVX512VPOPCNTDQ__
    r |= BIT(CONCORD_CPU_AVX512VPOPCNTDQ);
#endif
#ifdef __AVX512BF16__
    r |= BIT(CONCORD_CPU_AVX512BF16);
#endif
#ifdef __AVX512FP16__
    r |= BIT(CONCORD_CPU_AVX512FP16);
#endif
    return r;
}

#ifdef CONCORD_X86
static void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(subleaf));
}
#endif

concord_cpu_id concord_cpu_read(void) {
    concord_cpu_id id = {0};
#ifdef CONCORD_X86
    uint32_t r[4];
    cpuid(0, 0, r);
    uint32_t max_leaf = r[0];
    if (max_leaf >= 1) {
        cpuid(1, 0, r);
        id.leaf1_ecx = r[2];
        id.leaf1_edx = r[3];
    }
    if (max_leaf >= 7) {
        cpuid(7, 0, r);
        id.leaf7_ebx = r[1];
        id.leaf7_ecx = r[2];
        id.leaf7_edx = r[3];
        uint32_t max_subleaf = r[0];
        if (max_subleaf >= 1) {
            cpuid(7, 1, r);
            id.leaf7_1_eax = r[0];
        }
    }
    cpuid(0x80000000u, 0, r);
    if (r[0] >= 0x80000001u) {
        cpuid(0x80000001u, 0, r);
        id.ext1_ecx = r[2];
    }
    if (id.leaf1_ecx & (UINT32_C(1) << 27)) {  // OSXSAVE: xgetbv is allowed
        uint32_t lo, hi;
        __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));  // xgetbv
        id.xcr0 = ((uint64_t)hi << 32) | lo;
    }
#endif
    return id;
}

uint64_t concord_cpu_usable(const concord_cpu_id *cpu) {
    const uint32_t words[] = {
        [L1_ECX] = cpu->leaf1_ecx, [L1_EDX] = cpu->leaf1_edx,     [L7_EBX] = cpu->leaf7_ebx,
        [L7_ECX] = cpu->leaf7_ecx, [L7_EDX] = cpu->leaf7_edx,     [L7_1_EAX] = cpu->leaf7_1_eax,
        [EXT1_ECX] = cpu->ext1_ecx,
    };
    const int osxsave = (cpu->leaf1_ecx >> 27) & 1;
    const int ymm = osxsave && (cpu->xcr0 & 0x6) == 0x6;       // XMM and YMM state
    const int zmm = ymm && (cpu->xcr0 & 0xE0) == 0xE0;         // opmask, ZMM_Hi256, Hi16_ZMM state
    uint64_t usable = 0;
    for (unsigned f = 0; f < CONCORD_CPU_FEATURE_COUNT; f++) {
        if (!((words[features[f].word] >> features[f].bit) & 1)) continue;
        if (features[f].state == YMM && !ymm) continue;
        if (features[f].state == ZMM && !zmm) continue;
        usable |= BIT(f);
    }
    return usable;
}

const char *concord_cpu_feature_name(unsigned feature) {
    return feature < CONCORD_CPU_FEATURE_COUNT ? features[feature].name : NULL;
}

/// Appends `text` at `*length` within `capacity - 1` bytes.
static void append(char *buffer, size_t capacity, size_t *length, const char *text) {
    while (*text && *length + 1 < capacity) buffer[(*length)++] = *text++;
}

size_t concord_cpu_format_error(uint64_t missing, char *buffer, size_t capacity) {
    if (capacity == 0) return 0;
    size_t length = 0;
    append(buffer, capacity, &length, "concord: this binary was built for a newer CPU; this one lacks:");
    for (unsigned f = 0; f < CONCORD_CPU_FEATURE_COUNT; f++) {
        if (!(missing & BIT(f))) continue;
        append(buffer, capacity, &length, " ");
        append(buffer, capacity, &length, features[f].name);
    }
    append(buffer, capacity, &length,
           ". Rebuild for this machine with `make build ARCH=x86-64` (portable) or `make build ARCH=native`.\n");
    if (length + 1 < capacity || length == 0) {
        buffer[length] = 0;
    } else {  // truncated: still end the line
        buffer[length - 1] = '\n';
        buffer[length] = 0;
    }
    return length;
}

/// Whether `name` (of length `length`) equals the NUL-terminated `candidate`.
static int same_name(const char *name, size_t length, const char *candidate) {
    size_t i = 0;
    for (; i < length; i++) {
        if (candidate[i] != name[i]) return 0;
    }
    return candidate[i] == 0;
}

uint64_t concord_cpu_parse_names(const char *names) {
    uint64_t mask = 0;
    if (!names) return 0;
    const char *p = names;
    while (*p) {
        while (*p == ',' || *p == ' ') p++;
        const char *start = p;
        while (*p && *p != ',' && *p != ' ') p++;
        size_t length = (size_t)(p - start);
        if (length == 0) continue;
        for (unsigned f = 0; f < CONCORD_CPU_FEATURE_COUNT; f++) {
            if (same_name(start, length, features[f].name)) mask |= BIT(f);
        }
    }
    return mask;
}

uint64_t concord_cpu_usable_now(void) {
    const concord_cpu_id id = concord_cpu_read();
    return concord_cpu_usable(&id) & ~concord_cpu_parse_names(getenv("CONCORD_CPU_HIDE"));
}

uint64_t concord_cpu_missing_now(void) { return concord_cpu_required() & ~concord_cpu_usable_now(); }

/// Runs before `main` (and before any Swift code of the package): refuses to continue on a CPU that
/// lacks what the build assumed.
__attribute__((constructor(101))) static void concord_cpu_guard(void) {
    const uint64_t missing = concord_cpu_missing_now();
    if (!missing) return;
    char line[640];
    const size_t length = concord_cpu_format_error(missing, line, sizeof line);
    ssize_t ignored = write(2, line, length);
    (void)ignored;
    _exit(1);
}

#ifdef CONCORD_X86
#pragma clang attribute pop
#endif

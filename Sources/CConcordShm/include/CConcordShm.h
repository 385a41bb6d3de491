// Atomics on shared memory for Concord's shared-memory channel (Sources/ConcordUV/SharedMemoryChannel.swift).
//
// Swift's `Atomic` lives inside a Swift value; it cannot be laid over a word of a region that another
// process maps at another address. These functions give Swift what C11 gives C: acquire loads, release
// stores, an exchange and a sequentially consistent fence on a plain `uint64_t` or `uint32_t` in memory,
// through the GCC/Clang `__atomic` builtins (which act on ordinary integers, no `_Atomic` cast needed).
// They are `static inline`, so a call compiles to the instruction itself (on x86-64 with clang: a plain
// `mov` for acquire and release, `xchg` for the exchange, `lock or $0, (%rsp)` for the fence). Across processes they are as
// good as within one because 4- and 8-byte atomics are lock-free, hence address-free: CConcordShm.c
// refuses to compile otherwise. One plain function names errno values for error messages.
#ifndef CCONCORD_SHM_H
#define CCONCORD_SHM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Loads `*word` with acquire ordering: what the storing side wrote before its release store is visible.
static inline uint64_t concord_shm_load_acquire_64(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

/// Stores `value` to `*word` with release ordering: everything written before it is visible to an
/// acquire load that sees `value`.
static inline void concord_shm_store_release_64(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

/// Loads `*word` with acquire ordering.
static inline uint32_t concord_shm_load_acquire_32(const uint32_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

/// Loads `*word` with no ordering (atomic, but ordered only by a fence around it).
static inline uint32_t concord_shm_load_relaxed_32(const uint32_t *word) {
    return __atomic_load_n(word, __ATOMIC_RELAXED);
}

/// Stores `value` to `*word` with release ordering.
static inline void concord_shm_store_release_32(uint32_t *word, uint32_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

/// Stores `value` to `*word` with no ordering (atomic, but ordered only by a fence after it).
static inline void concord_shm_store_relaxed_32(uint32_t *word, uint32_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELAXED);
}

/// Replaces `*word` by `value` and returns what it held, as one sequentially consistent atomic step.
static inline uint32_t concord_shm_exchange_32(uint32_t *word, uint32_t value) {
    return __atomic_exchange_n(word, value, __ATOMIC_SEQ_CST);
}

/// A sequentially consistent fence: no load after it is satisfied before every store before it is
/// visible to all threads (the store-buffering case a release/acquire pair does not cover).
static inline void concord_shm_fence_seq_cst(void) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/// A hint to the CPU inside a busy-wait loop (`pause` on x86, `yield` on ARM): saves power and lets the
/// sibling hyper-thread run.
static inline void concord_shm_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

/// The symbolic name of an errno value ("EEXIST"), or NULL where the C library cannot say
/// (strerrorname_np, glibc 2.32 and later).
const char *concord_shm_errno_name(int code);

#ifdef __cplusplus
}
#endif

#endif

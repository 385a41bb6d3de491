// The atomics are inline in the header; this file holds the one plain function, and checks at compile
// time the property the channel's cross-process protocol rests on.
#define _GNU_SOURCE
#include "CConcordShm.h"

#include <string.h>

// A lock-free atomic is address-free: it works on memory that two processes map at different addresses.
// A lock-based one (a lock table inside libatomic, private to each process) would not exclude the other
// process at all.
_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0), "64-bit atomics must be lock-free");
_Static_assert(__atomic_always_lock_free(sizeof(uint32_t), 0), "32-bit atomics must be lock-free");

const char *concord_shm_errno_name(int code) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    return strerrorname_np(code);
#else
    (void)code;
    return NULL;
#endif
}

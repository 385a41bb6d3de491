// The calling thread's CPU affinity, for `concord run --bind` (Sources/ConcordLauncher/CPUBinding.swift).
// sched_getaffinity and sched_setaffinity are GNU extensions that Swift's Glibc module does not declare.
#define _GNU_SOURCE
#include <sched.h>

#include "CConcordCPU.h"

int concord_thread_affinity_get(unsigned char *mask, unsigned long bytes) {
    return sched_getaffinity(0, bytes, (cpu_set_t *)mask);
}

int concord_thread_affinity_set(const unsigned char *mask, unsigned long bytes) {
    return sched_setaffinity(0, bytes, (const cpu_set_t *)mask);
}

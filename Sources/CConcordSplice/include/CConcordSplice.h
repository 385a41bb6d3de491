// Zero-copy sends on Linux: the bytes of a large frame's payload go to a TCP socket as references to the
// caller's pages (vmsplice into a pipe, splice from the pipe into the socket) instead of being copied into
// socket buffers. Swift's Glibc module exposes neither call, hence this C shim. Only ConcordUV imports it;
// PeerLink.swift says when it is used and why that is safe (the receiver acknowledges what it consumed).
#ifndef CCONCORD_SPLICE_H
#define CCONCORD_SPLICE_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Opens what a link splices through: `fds[0]`, `fds[1]` the pipe's ends (non-blocking, close-on-exec, its
/// capacity raised towards `capacity` bytes as far as the system allows) and `fds[2]` /dev/null (where pages
/// the socket did not take are dropped; -1 if it cannot be opened). Returns 0, or -errno.
int concord_splice_open(int fds[3], int capacity);

/// Writes `head` (copied) and then hands `data` to the socket `sock` without copying it, until all of it is
/// handed or the socket would block. Never blocks. Returns the bytes written and handed, head included
/// (0 ... head_length + data_length), or -errno after a socket error. `*unsupported` becomes 1 when the
/// system cannot splice here (the caller then writes the rest the plain way, and stops splicing). The
/// pipe is empty on return.
ssize_t concord_splice_send(
    int sock, const int fds[3], const void *head, size_t head_length, const void *data, size_t data_length,
    int *unsupported);

#ifdef __cplusplus
}
#endif

#endif

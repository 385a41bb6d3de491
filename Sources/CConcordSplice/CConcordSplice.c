// See include/CConcordSplice.h.
#define _GNU_SOURCE
#include "CConcordSplice.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

int concord_splice_open(int fds[3], int capacity) {
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return -errno;
    // A bigger pipe moves more per pair of calls; the default (64 KiB) is the floor, pipe-max-size the roof.
    for (int bytes = capacity; bytes > 65536; bytes /= 2) {
        if (fcntl(fds[1], F_SETPIPE_SZ, bytes) >= 0) break;
    }
    fds[2] = open("/dev/null", O_WRONLY | O_CLOEXEC);  // -1 is fine: `drain` then reads instead
    return 0;
}

/// Empties the pipe of pages the socket did not take (spliced to /dev/null: nothing is copied).
static void drain(const int fds[3], size_t bytes) {
    char scratch[4096];
    while (bytes > 0) {
        ssize_t n = fds[2] >= 0 ? splice(fds[0], NULL, fds[2], NULL, bytes, SPLICE_F_NONBLOCK) : -1;
        if (n <= 0) n = read(fds[0], scratch, bytes < sizeof scratch ? bytes : sizeof scratch);
        if (n <= 0) return;
        bytes -= (size_t)n;
    }
}

ssize_t concord_splice_send(
    int sock, const int fds[3], const void *head, size_t head_length, const void *data, size_t data_length,
    int *unsupported) {
    *unsupported = 0;
    size_t done = 0;
    while (done < head_length) {
        // MSG_MORE: the header waits for the payload instead of going out as a segment of its own.
        ssize_t n = send(sock, (const char *)head + done, head_length - done, MSG_MORE | MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? (ssize_t)done : -errno;
        }
        done += (size_t)n;
    }
    size_t handed = 0;
    while (handed < data_length) {
        struct iovec piece = {(char *)data + handed, data_length - handed};
        ssize_t in_pipe = vmsplice(fds[1], &piece, 1, SPLICE_F_NONBLOCK);
        if (in_pipe < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) *unsupported = 1;
            break;
        }
        size_t left = (size_t)in_pipe;
        while (left > 0) {
            unsigned flags = SPLICE_F_NONBLOCK | SPLICE_F_MOVE | (handed + left < data_length ? SPLICE_F_MORE : 0);
            ssize_t n = splice(fds[0], NULL, sock, NULL, left, flags);
            if (n == 0) {  // not expected with bytes in the pipe; the caller writes the rest the plain way
                drain(fds, left);
                return (ssize_t)(done + handed);
            }
            if (n < 0) {
                if (errno == EINTR) continue;
                int error = errno;
                drain(fds, left);
                if (error == EAGAIN || error == EWOULDBLOCK) return (ssize_t)(done + handed);
                if (error == EINVAL || error == ENOSYS || error == EOPNOTSUPP) {
                    *unsupported = 1;
                    return (ssize_t)(done + handed);
                }
                return -error;
            }
            left -= (size_t)n;
            handed += (size_t)n;
        }
    }
    return (ssize_t)(done + handed);
}

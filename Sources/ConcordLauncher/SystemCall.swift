// SystemCall.swift — the launcher's one seam to libc.
//
// Every system call that reports failure as -1/errno goes through `systemCall(_:_:)`: it retries on
// EINTR and turns any other failure into a `SystemError` naming the C function and the errno. Callers
// that expect a particular errno (EAGAIN on a non-blocking pipe, ESRCH from kill) catch the error and
// look at `errno`; no return code is dropped silently. Functions that return the error number instead
// (posix_spawn, pthread_sigmask) are checked with `check(_:_:)`.
//
// `FileSink` is the launcher's own stdout or stderr: it writes whole buffers (so one call writes whole
// lines), waits with poll(2) if the descriptor happens to be non-blocking, and stops writing — without
// stopping the job — once the reader has gone away (EPIPE; SIGPIPE is ignored by the launcher).

import Glibc

/// A system call failed for an environmental reason.
struct SystemError: Error, CustomStringConvertible {
    /// The C function that failed, e.g. `"posix_spawn"`.
    let call: String
    /// The errno value it reported.
    let errno: Int32

    /// The text of `errno` from strerror(3), e.g. `"No such file or directory"`.
    var reason: String { errnoText(errno) }

    var description: String { "\(call) failed: \(reason)" }
}

/// The text strerror(3) gives for `code`.
func errnoText(_ code: Int32) -> String {
    String(cString: strerror(code))
}

/// Calls `body` until it does not fail with EINTR.
///
/// - Parameters:
///   - call: The C function's name, for the error.
///   - body: Performs the call; returns -1 and sets errno on failure.
/// - Returns: The call's result.
/// - Throws: `SystemError` for any failure other than EINTR.
@discardableResult
func systemCall<Result: BinaryInteger>(
    _ call: String, _ body: () -> Result
) throws(SystemError) -> Result {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Glibc.errno
        if code != EINTR { throw SystemError(call: call, errno: code) }
    }
}

/// Checks a C function that returns 0 or an error number (posix_spawn, pthread_sigmask).
///
/// - Throws: `SystemError` when `returned` is not 0.
func check(_ call: String, _ returned: Int32) throws(SystemError) {
    if returned != 0 { throw SystemError(call: call, errno: returned) }
}

/// Makes sure descriptors 0, 1 and 2 exist, opening /dev/null for any that is closed, so that pipes
/// created later never land on them. Calls fcntl(2) and open(2).
func ensureStandardDescriptorsOpen() {
    for fd: Int32 in 0...2 where fcntl(fd, F_GETFD) == -1 && Glibc.errno == EBADF {
        let opened = open("/dev/null", O_RDWR)
        precondition(opened == fd, "opening /dev/null for closed descriptor \(fd) gave \(opened)")
    }
}

/// One of the launcher's own output descriptors (stdout or stderr).
final class FileSink {
    private let fd: Int32
    /// Set once the reader went away or the descriptor failed; later writes are dropped.
    private(set) var isBroken = false

    init(fd: Int32) {
        self.fd = fd
    }

    /// Writes all of `bytes`, looping over partial writes. Calls write(2) (and poll(2) on EAGAIN).
    func write(_ bytes: [UInt8]) {
        guard !isBroken, !bytes.isEmpty else { return }
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                do throws(SystemError) {
                    offset += try systemCall("write") {
                        Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                    }
                } catch  where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
                    var ready = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    _ = try? systemCall("poll") { poll(&ready, 1, -1) }
                } catch {
                    isBroken = true  // EPIPE or worse: nobody is reading; keep supervising the ranks.
                    return
                }
            }
        }
    }

    /// Writes `line` followed by a newline.
    func writeLine(_ line: String) {
        write(Array((line + "\n").utf8))
    }
}

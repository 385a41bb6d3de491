// SignalFD.swift — signals as readable events in the launcher's poll loop.
//
// The launcher blocks SIGCHLD, SIGINT, SIGTERM and SIGHUP in its only thread and reads them from a
// signalfd(2) next to the ranks' output pipes, so there is no signal handler at all and nothing is
// shared with one: "a rank exited" and "the user pressed ^C" are ordinary events of the loop. The
// ranks undo the blocking — posix_spawn gives them an empty signal mask and default dispositions.
// Blocking happens before the first rank is spawned, so a SIGCHLD can never be missed: it stays
// pending until the loop reads it (and SIGCHLDs that coalesce are harmless, because every SIGCHLD
// makes the loop ask every running rank with waitpid(WNOHANG)).
//
// Glibc's Swift module map does not include <sys/signalfd.h> and this target has no C shim target, so
// signalfd is looked up with dlsym(3) and called through a C function pointer. Of the 128-byte
// `struct signalfd_siginfo` only the first field, `uint32_t ssi_signo`, is read.

import Glibc

/// A signalfd(2) descriptor that reports the signals it was created for, which are blocked.
struct SignalFD: ~Copyable {
    /// The non-blocking, close-on-exec descriptor; readable when a signal is pending.
    let fd: Int32

    /// Blocks `signals` in the calling thread and opens a signalfd that reports them.
    /// Calls pthread_sigmask(3) and signalfd(2).
    ///
    /// - Throws: `SystemError` if either call fails.
    init(blocking signals: [Int32]) throws(SystemError) {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        try check("pthread_sigmask", pthread_sigmask(SIG_BLOCK, &set, nil))
        let open = Self.lookUpSignalFD()
        fd = try systemCall("signalfd") { open(-1, &set, O_NONBLOCK | O_CLOEXEC) }
    }

    deinit {
        close(fd)
    }

    /// Reads every pending signal without blocking. Calls read(2).
    ///
    /// - Returns: The signal numbers, oldest first; empty when none is pending.
    /// - Throws: `SystemError` if the read fails for a reason other than "nothing pending".
    func readPending() throws(SystemError) -> [Int32] {
        var signals: [Int32] = []
        var info = [UInt8](repeating: 0, count: Self.siginfoSize)
        while true {
            let count: Int
            do throws(SystemError) {
                count = try systemCall("read(signalfd)") { read(fd, &info, info.count) }
            } catch  where error.errno == EAGAIN {
                return signals
            }
            precondition(count == Self.siginfoSize, "signalfd read \(count) bytes")
            let signo = info.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt32.self) }
            signals.append(Int32(signo))
        }
    }

    /// sizeof(struct signalfd_siginfo), fixed by the kernel ABI.
    private static let siginfoSize = 128

    private typealias SignalFDFunction =
        @convention(c) (Int32, UnsafePointer<sigset_t>?, Int32) -> Int32

    /// Finds signalfd(2) in the C library already loaded into the process.
    private static func lookUpSignalFD() -> SignalFDFunction {
        guard let process = dlopen(nil, RTLD_NOW), let symbol = dlsym(process, "signalfd") else {
            fatalError("concord: the C library has no signalfd(2); the launcher needs Linux with glibc")
        }
        return unsafeBitCast(symbol, to: SignalFDFunction.self)
    }
}

// WaitStatus.swift — how a rank ended, decoded from waitpid(2).
//
// The WIFEXITED/WEXITSTATUS/WTERMSIG macros are not imported into Swift, so the status word is
// decoded here by the layout every Linux ABI uses: the low 7 bits hold the terminating signal (0 when
// the process exited), bits 8–15 the exit status. Stopped/continued statuses never reach the
// launcher because it does not pass WUNTRACED or WCONTINUED.
//
// `exitCode` is the shell convention the launcher also exits with: the status itself, or 128 + the
// signal number.

import Glibc

/// How a process ended.
enum WaitStatus: Equatable, CustomStringConvertible {
    /// It called exit with this status (0–255).
    case exited(Int32)
    /// It was terminated by this signal.
    case signaled(Int32)

    /// Decodes the status word filled in by waitpid(2).
    init(rawValue status: Int32) {
        let signal = status & 0x7f
        self = signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }

    /// Whether the process exited with status 0.
    var isSuccess: Bool { self == .exited(0) }

    /// The status a shell would report: the exit status, or 128 + the signal number.
    var exitCode: Int32 {
        switch self {
        case .exited(let status): status
        case .signaled(let signal): 128 + signal
        }
    }

    /// "exited with status 3" or "was killed by signal 9 (SIGKILL)".
    var description: String {
        switch self {
        case .exited(let status): "exited with status \(status)"
        case .signaled(let signal): "was killed by \(describeSignal(signal))"
        }
    }
}

/// "signal 9 (SIGKILL)", or "signal 40" for a signal without a conventional name.
func describeSignal(_ signal: Int32) -> String {
    guard let name = signalName(signal) else { return "signal \(signal)" }
    return "signal \(signal) (\(name))"
}

/// The conventional name of `signal` ("SIGTERM"), or nil for real-time and unknown signals.
func signalName(_ signal: Int32) -> String? {
    let names: [Int32: String] = [
        SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP",
        SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1",
        SIGSEGV: "SIGSEGV", SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM",
        SIGTERM: "SIGTERM", SIGSTKFLT: "SIGSTKFLT", SIGCHLD: "SIGCHLD", SIGCONT: "SIGCONT",
        SIGSTOP: "SIGSTOP", SIGTSTP: "SIGTSTP", SIGTTIN: "SIGTTIN", SIGTTOU: "SIGTTOU",
        SIGURG: "SIGURG",
        SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ", SIGVTALRM: "SIGVTALRM", SIGPROF: "SIGPROF",
        SIGWINCH: "SIGWINCH", SIGIO: "SIGIO", SIGPWR: "SIGPWR", SIGSYS: "SIGSYS",
    ]
    return names[signal]
}

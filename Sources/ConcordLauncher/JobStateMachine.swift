// JobStateMachine.swift — when to stop the job, how hard, and with which exit status.
//
// The decisions of the launcher, separated from its mechanics (ProcessGroup): events go in — a rank
// started, exited, could not be spawned; a signal arrived; time passed — and actions come out — print
// this line, signal every rank's process group, give up on leftover output. No I/O happens here.
//
// Phases:
//
//     running ──(rank fails | spawn fails | signal)──▶ stopping ──(grace over | 2nd signal)──▶ killed
//                 report it; send SIGTERM (or the                   SIGKILL to every rank's
//                 received signal) to every rank's group            process group
//
// Only the first failure is reported and decides the exit status ("the cause"); ranks that die
// afterwards were most likely stopped by us. Independently of the phase, once every rank has exited
// the output pipes get `grace` more to reach end-of-file (a rank's background children may still hold
// them) before the launcher stops reading them.
//
// Exit status (also documented in `concord run --help`): 0 if every rank exited 0; otherwise decided by
// the cause — the failed rank's status, 128 + signal if it was killed by one or if the launcher was
// interrupted by one, 127/126 (as a shell) if the program could not be spawned.

import Glibc

/// The launcher's decisions about one job.
struct JobStateMachine {
    /// What made the launcher stop the job.
    enum StopCause: Equatable {
        /// A rank exited with a non-zero status or was killed by a signal.
        case rankFailed(rank: Int, pid: Int32, status: WaitStatus)
        /// The launcher received this signal.
        case interrupted(signal: Int32)
        /// posix_spawn failed for this rank with this errno.
        case spawnFailed(rank: Int, errno: Int32)
    }

    /// What the caller must do.
    enum Action: Equatable {
        /// Print this line on the launcher's stderr.
        case report(String)
        /// Send this signal to the process group of every rank that may still have processes.
        case signalRanks(Int32)
        /// Stop waiting for end-of-file on the output pipes: print partial lines and close them.
        case abandonOutput
    }

    private enum Phase: Equatable {
        case running
        case stopping(killAt: ContinuousClock.Instant)
        case killed
    }

    /// Time between SIGTERM and SIGKILL, and for output to drain after the last rank exits.
    let grace: Duration
    /// The first reason to stop, or nil while every rank is fine.
    private(set) var cause: StopCause?
    /// How many started ranks have not exited yet.
    private(set) var runningRanks = 0
    private var phase = Phase.running
    private var outputDeadline: ContinuousClock.Instant?

    init(grace: Duration) {
        precondition(grace >= .zero, "grace must not be negative")
        self.grace = grace
    }

    /// The status the launcher exits with, given what happened so far.
    var exitCode: Int32 {
        switch cause {
        case nil: 0
        case .rankFailed(_, _, let status): status.exitCode
        case .interrupted(let signal): 128 + signal
        case .spawnFailed(_, let errno): errno == ENOENT ? 127 : 126
        }
    }

    /// The earliest time at which `deadlinesPassed(now:)` has something to do, or nil.
    var nextDeadline: ContinuousClock.Instant? {
        var deadlines: [ContinuousClock.Instant] = []
        if case .stopping(let killAt) = phase { deadlines.append(killAt) }
        if let outputDeadline { deadlines.append(outputDeadline) }
        return deadlines.min()
    }

    /// A rank was spawned.
    mutating func rankStarted() {
        runningRanks += 1
    }

    /// A rank was reaped.
    mutating func rankExited(
        rank: Int, pid: Int32, status: WaitStatus, now: ContinuousClock.Instant
    ) -> [Action] {
        precondition(runningRanks > 0, "rank \(rank) exited but no rank was running")
        runningRanks -= 1
        if runningRanks == 0 { outputDeadline = now + grace }
        guard !status.isSuccess, cause == nil else { return [] }
        cause = .rankFailed(rank: rank, pid: pid, status: status)
        let others = runningRanks > 0 ? "; stopping the other ranks" : ""
        return [.report("concord: rank \(rank) (pid \(pid)) \(status)\(others)")]
            + stop(sending: SIGTERM, now: now)
    }

    /// posix_spawn failed for `rank`; no further rank will be started.
    mutating func spawnFailed(
        rank: Int, program: String, error: SystemError, now: ContinuousClock.Instant
    ) -> [Action] {
        if cause == nil { cause = .spawnFailed(rank: rank, errno: error.errno) }
        if runningRanks == 0 { outputDeadline = now + grace }
        let others = runningRanks > 0 ? "; stopping the other ranks" : ""
        let line = "concord: cannot start rank \(rank) (\(program)): \(error)\(others)"
        return [.report(line)] + stop(sending: SIGTERM, now: now)
    }

    /// The launcher received `signal` (SIGINT, SIGTERM or SIGHUP).
    mutating func signalReceived(_ signal: Int32, now: ContinuousClock.Instant) -> [Action] {
        let name = signalName(signal) ?? "signal \(signal)"
        switch phase {
        case .running:
            cause = cause ?? .interrupted(signal: signal)
            let line = "concord: interrupted by \(name); forwarding it to all ranks and stopping them"
            return [.report(line)] + stop(sending: signal, now: now)
        case .stopping:
            phase = .killed
            return [
                .report("concord: \(name) while stopping; sending SIGKILL to all ranks"),
                .signalRanks(SIGKILL),
            ]
        case .killed:
            return []
        }
    }

    /// Time has passed; acts on the deadlines that are due at `now`.
    mutating func deadlinesPassed(now: ContinuousClock.Instant) -> [Action] {
        var actions: [Action] = []
        if case .stopping(let killAt) = phase, now >= killAt {
            phase = .killed
            if runningRanks > 0 {
                let ranks = runningRanks == 1 ? "1 rank is" : "\(runningRanks) ranks are"
                actions.append(
                    .report(
                        "concord: \(ranks) still running \(Self.format(grace)) after SIGTERM; sending SIGKILL"))
            }
            actions.append(.signalRanks(SIGKILL))
        }
        if let deadline = outputDeadline, now >= deadline {
            outputDeadline = nil
            actions.append(.abandonOutput)
        }
        return actions
    }

    private mutating func stop(sending signal: Int32, now: ContinuousClock.Instant) -> [Action] {
        phase = .stopping(killAt: now + grace)
        return [.signalRanks(signal)]
    }

    /// "3 s", "0.5 s".
    private static func format(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        if attoseconds == 0 { return "\(seconds) s" }
        return "\(Double(seconds) + Double(attoseconds) / 1e18) s"
    }
}

// ProcessGroup.swift — the N ranks of one job and the loop that supervises them.
//
// One thread, one poll(2) loop, no busy waiting. The loop waits on
// - the signalfd (SignalFD.swift): SIGCHLD means "reap whoever exited", SIGINT/SIGTERM/SIGHUP mean
//   "the user wants the job stopped";
// - the read end of every rank's stdout and stderr pipe: bytes go through that stream's LinePrefixer
//   and whole "[rank k] …" lines are written to the launcher's stdout or stderr;
// - a timeout: the next deadline of the JobStateMachine (SIGKILL after the grace period, giving up on
//   output that never reaches end-of-file).
// Every decision — what to report, whom to signal, which exit status — is made by JobStateMachine;
// this file only turns its actions into system calls.
//
// Output is never lost: when a rank is reaped, whatever is already in its pipes is read before the
// "rank k exited" report, and the loop keeps reading until every pipe reaches end-of-file. A pipe can
// stay open after its rank exited only if the rank's own children hold it; those get the grace period
// (and, if the job is being stopped, SIGKILL with the rank's process group).
//
// Process groups are signalled only while they may still have members — the rank is unreaped or one
// of its pipes is still open — so a group id is never signalled after it could have been reused.

import Glibc

/// The ranks of one job, supervised until all of them have exited.
final class ProcessGroup {
    private let plan: LaunchPlan
    private let stdout = FileSink(fd: STDOUT_FILENO)
    private let stderr = FileSink(fd: STDERR_FILENO)
    private var state: JobStateMachine
    /// Started ranks, indexed by rank.
    private var ranks: [RankProcess] = []
    /// Ranks not reaped yet.
    private var unreaped: Set<Int> = []
    /// Output pipes that have not reached end-of-file.
    private var streams: [OutputStream] = []
    /// Reused read buffer.
    private var buffer = [UInt8](repeating: 0, count: 64 * 1024)

    /// One output pipe of one rank.
    private struct OutputStream {
        let rank: Int
        let fd: Int32
        let sink: FileSink
        var prefixer: LinePrefixer
    }

    /// The most bytes read from one rank's pipes when it is reaped, so that a descendant that keeps
    /// writing cannot hold up the report forever.
    private static let reapDrainLimit = 16 * 1024 * 1024

    init(plan: LaunchPlan) {
        self.plan = plan
        self.state = JobStateMachine(grace: plan.grace)
    }

    /// Starts every rank and supervises the job until all ranks have exited and their output is printed.
    ///
    /// - Returns: The status the launcher should exit with (see JobStateMachine).
    /// - Throws: `SystemError` if the launcher's own machinery (signalfd, poll) fails; failures of ranks
    ///   are not errors but part of the outcome.
    func run() throws(SystemError) -> Int32 {
        ensureStandardDescriptorsOpen()
        signal(SIGPIPE, SIG_IGN)  // a vanished reader must not kill the supervisor; FileSink handles EPIPE
        signal(SIGCHLD, SIG_DFL)  // an inherited SIG_IGN would make the kernel reap the ranks for us
        let signals = try SignalFD(blocking: [SIGCHLD, SIGINT, SIGTERM, SIGHUP])
        startRanks()
        reapExitedRanks()
        while !(unreaped.isEmpty && streams.isEmpty) {
            var descriptors = [pollfd(fd: signals.fd, events: Int16(POLLIN), revents: 0)]
            descriptors += streams.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let timeout = Self.milliseconds(until: state.nextDeadline)
            try systemCall("poll") { poll(&descriptors, nfds_t(descriptors.count), timeout) }

            // Output first, so that a rank's last lines come before the report of its exit.
            let readable = Set(descriptors.dropFirst().filter { $0.revents != 0 }.map(\.fd))
            for index in streams.indices.reversed() where readable.contains(streams[index].fd) {
                readOnce(streamAt: index)
            }
            if descriptors[0].revents != 0 {
                for received in try signals.readPending() {
                    if received == SIGCHLD {
                        reapExitedRanks()
                    } else {
                        perform(state.signalReceived(received, now: .now))
                    }
                }
            }
            perform(state.deadlinesPassed(now: .now))
        }
        return state.exitCode
    }

    // MARK: - Starting and reaping

    private func startRanks() {
        for rank in 0..<plan.processCount {
            do throws(SystemError) {
                let process = try RankProcess.spawn(plan, rank: rank)
                ranks.append(process)
                unreaped.insert(rank)
                state.rankStarted()
                let prefix = "[rank \(plan.rank(ofProcess: rank))] "
                streams.append(
                    OutputStream(
                        rank: rank, fd: process.stdoutFD, sink: stdout, prefixer: LinePrefixer(prefix: prefix)))
                streams.append(
                    OutputStream(
                        rank: rank, fd: process.stderrFD, sink: stderr, prefixer: LinePrefixer(prefix: prefix)))
            } catch {
                perform(
                    state.spawnFailed(
                        rank: plan.rank(ofProcess: rank), program: plan.arguments[0], error: error, now: .now))
                return
            }
        }
    }

    /// Reaps every rank that has exited (waitpid with WNOHANG), printing its remaining output first.
    private func reapExitedRanks() {
        for rank in unreaped.sorted() {
            let pid = ranks[rank].pid
            var status: Int32 = 0
            let reaped: pid_t
            do throws(SystemError) {
                reaped = try systemCall("waitpid") { waitpid(pid, &status, WNOHANG) }
            } catch {
                preconditionFailure("waitpid(\(pid)) for rank \(rank): \(error)")  // ECHILD: not our child
            }
            guard reaped == pid else { continue }
            unreaped.remove(rank)
            drain(rank: rank)
            perform(
                state.rankExited(
                    rank: plan.rank(ofProcess: rank), pid: pid, status: WaitStatus(rawValue: status), now: .now))
        }
    }

    // MARK: - Output

    /// Reads what `rank`'s pipes hold right now (up to `reapDrainLimit` bytes).
    private func drain(rank: Int) {
        var budget = Self.reapDrainLimit
        for index in streams.indices.reversed() where streams[index].rank == rank {
            while budget > 0, let count = readOnce(streamAt: index), count > 0 {
                budget -= count
            }
        }
    }

    /// Reads once from the stream at `index` and writes the lines it completes; closes the stream at
    /// end-of-file or on a read error.
    ///
    /// - Returns: The number of bytes read; 0 if nothing was available; nil if the stream was closed.
    @discardableResult
    private func readOnce(streamAt index: Int) -> Int? {
        let fd = streams[index].fd
        let count: Int
        do throws(SystemError) {
            count = try systemCall("read") { read(fd, &buffer, buffer.count) }
        } catch  where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
            return 0
        } catch {
            stderr.writeLine("concord: reading the output of rank \(streams[index].rank): \(error)")
            closeStream(at: index)
            return nil
        }
        if count == 0 {
            closeStream(at: index)
            return nil
        }
        let lines = streams[index].prefixer.append(buffer[..<count])
        streams[index].sink.write(lines)
        return count
    }

    /// Prints the stream's partial last line, closes it and forgets it.
    private func closeStream(at index: Int) {
        let stream = streams.remove(at: index)
        var prefixer = stream.prefixer
        stream.sink.write(prefixer.finish())
        close(stream.fd)
    }

    // MARK: - Actions

    private func perform(_ actions: [JobStateMachine.Action]) {
        for action in actions {
            switch action {
            case .report(let line):
                stderr.writeLine(line)
            case .signalRanks(let signal):
                signalRanks(signal)
            case .abandonOutput:
                for index in streams.indices.reversed() { closeStream(at: index) }
            }
        }
    }

    /// Sends `signal` to the process group of every rank that may still have processes. Calls kill(2).
    private func signalRanks(_ signal: Int32) {
        let withOpenPipes = Set(streams.map(\.rank))
        for process in ranks
        where unreaped.contains(process.rank) || withOpenPipes.contains(process.rank) {
            do throws(SystemError) {
                try systemCall("kill") { kill(-process.pid, signal) }
            } catch  where error.errno == ESRCH {
                // The whole group has exited already.
            } catch {
                stderr.writeLine(
                    "concord: cannot signal rank \(process.rank) (process group \(process.pid)): \(error)")
            }
        }
    }

    /// The poll(2) timeout that wakes the loop at `deadline`: -1 (none) or milliseconds, rounded up.
    private static func milliseconds(until deadline: ContinuousClock.Instant?) -> Int32 {
        guard let deadline else { return -1 }
        let (seconds, attoseconds) = (deadline - .now).components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: milliseconds)
    }
}

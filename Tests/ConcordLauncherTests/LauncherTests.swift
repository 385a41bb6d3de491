// LauncherTests.swift — end-to-end tests of the built `concord` executable.
//
// Each test runs the real binary with `sh -c` scripts as ranks and checks what a user would see:
// prefixed lines, exit statuses, the stop-on-failure and signal-forwarding behaviour, and the help
// text (pinned here, so a change to HelpText.swift must be made on purpose). Ranks print their pid
// (`$$`) first where it matters, so a test can verify with kill(pid, 0) that no rank outlived the
// launcher.
//
// Nothing may hang: every launch has a deadline (`LaunchedConcord.wait(timeout:)`), after which the
// launcher gets SIGTERM, then SIGKILL, and the test fails. `ConcordExecutable` finds the binary:
// $CONCORD_BIN_DIR, else next to the test bundle, else in the package's .build/debug folder.

import ConcordTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - Finding and running the executable

/// Locates the built `concord` executable.
enum ConcordExecutable {
    struct NotFound: Error, CustomStringConvertible {
        var description: String { "concord executable not found (build it first, or set CONCORD_BIN_DIR)" }
    }

    static let path: Result<String, NotFound> = builtExecutable("concord").map { .success($0) } ?? .failure(NotFound())
}

/// One run of `concord`, with stdout and stderr captured in temporary files.
final class LaunchedConcord {
    /// How the launcher ended.
    struct Outcome {
        /// The exit status, or nil if the launcher itself was killed by a signal.
        let exitStatus: Int32?
        let stdout: String
        let stderr: String
        /// Time from launch to exit.
        let elapsed: Duration

        var stdoutLines: [String] { stdout.split(separator: "\n").map(String.init) }
        var stderrLines: [String] { stderr.split(separator: "\n").map(String.init) }
    }

    private let child: ChildProcess
    private let arguments: [String]
    private let started = ContinuousClock.now

    /// Starts `concord arguments...`.
    ///
    /// - Parameter environment: Variables added to the test's own environment.
    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        self.arguments = arguments
        child = try ChildProcess(try ConcordExecutable.path.get(), arguments, environment: environment)
    }

    /// The launcher's pid.
    var pid: pid_t { child.pid }

    /// What the launcher has written to stdout so far.
    var stdoutSoFar: String { child.stdout }

    /// Waits for the launcher to exit, polling without blocking a thread. If it has not exited
    /// `timeout` after launch, records a test failure and sends it SIGTERM (which it forwards to the
    /// ranks), then SIGKILL, so no test hangs.
    func wait(timeout: Duration = .seconds(30)) async -> Outcome {
        let seconds = Double(timeout.components.seconds) - Double((ContinuousClock.now - started).components.seconds)
        if !(await child.exited(within: seconds)) {
            Issue.record("concord \(arguments) did not exit within \(timeout)")
            kill(pid, SIGTERM)
            if !(await child.exited(within: 5)) { child.kill() }
        }
        return Outcome(
            exitStatus: child.exitStatus, stdout: child.stdout, stderr: child.stderr,
            elapsed: ContinuousClock.now - started)
    }

    /// Waits until stdout has at least `count` lines, for at most `timeout`.
    ///
    /// - Returns: Whether it got there in time.
    func waitForStdoutLines(_ count: Int, timeout: Duration = .seconds(15)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if stdoutSoFar.split(separator: "\n").count >= count { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

}

/// The CPUs of a list such as "0-3,6".
func cpuList(_ text: String) -> Set<Int> {
    var cpus = Set<Int>()
    for part in text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
        let ends = part.split(separator: "-").compactMap { Int($0) }
        if let first = ends.first { cpus.formUnion(first...(ends.last ?? first)) }
    }
    return cpus
}

/// Runs `concord arguments...` to completion (or its deadline).
func runConcord(_ arguments: [String], environment: [String: String] = [:]) async throws
    -> LaunchedConcord.Outcome
{
    try await LaunchedConcord(arguments, environment: environment).wait()
}

/// The pids that ranks printed as the first thing on their stdout ("[rank k] <pid>").
func rankPIDs(in lines: [String]) -> [Int: pid_t] {
    var pids: [Int: pid_t] = [:]
    for line in lines {
        let parts = line.split(separator: " ")
        guard parts.count == 3, parts[0] == "[rank", let rank = Int(parts[1].dropLast()),
            let pid = pid_t(parts[2]), pids[rank] == nil
        else { continue }
        pids[rank] = pid
    }
    return pids
}

/// Whether a process with this pid exists (kill(pid, 0) succeeds). A zombie counts as existing.
func processExists(_ pid: pid_t) -> Bool {
    kill(pid, 0) == 0 || errno == EPERM
}

/// Checks that none of `pids` still exists; kills any survivor so the test leaves nothing behind.
func expectGone(_ pids: [Int: pid_t], sourceLocation: SourceLocation = #_sourceLocation) {
    for (rank, pid) in pids.sorted(by: { $0.key < $1.key }) where processExists(pid) {
        Issue.record(
            "rank \(rank) (pid \(pid)) is still running after concord exited",
            sourceLocation: sourceLocation)
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
    }
}

// MARK: - Tests

@Suite("concord launcher", .timeLimit(.minutes(2)))
struct LauncherTests {
    @Test("concord --help explains the launcher, its environment and failure handling")
    func rootHelp() async throws {
        let result = try await runConcord(["--help"])
        #expect(result.exitStatus == 0)
        for phrase in [
            "CONCORD_RANK", "CONCORD_WORLD_SIZE", "CONCORD_LOCAL_RANK", "CONCORD_MASTER_ADDR",
            "CONCORD_MASTER_PORT",
            "SIGTERM", "SIGKILL", "SIGINT", "run", "torchrun", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK",
            "concord run -n 4 -- concord-bench allreduce -b 8 -e 64M -f 2",
        ] {
            #expect(result.stdout.contains(phrase), "concord --help lacks \"\(phrase)\"")
        }
    }

    @Test("concord run --help documents options, environment, failures, signals and exit statuses")
    func runHelp() async throws {
        let result = try await runConcord(["run", "--help"])
        #expect(result.exitStatus == 0)
        for phrase in [
            "-n", "--master-addr", "--master-port", "--grace", "--bind <auto|none>",
            "CONCORD_RANK", "CONCORD_WORLD_SIZE", "CONCORD_LOCAL_RANK", "CONCORD_LOCAL_WORLD_SIZE",
            "CONCORD_MASTER_ADDR", "CONCORD_MASTER_PORT", "127.0.0.1",
            "[rank k]", "SIGTERM", "SIGKILL", "SIGINT", "process group", "EXIT STATUS", "128+k",
            "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT",
            "SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID",
            "OMPI_COMM_WORLD_RANK", "concord run -n 4 -- concord-bench allreduce -b 8 -e 64M -f 2",
        ] {
            #expect(result.stdout.contains(phrase), "concord run --help lacks \"\(phrase)\"")
        }
    }

    @Test("concord --version prints 0.1.0")
    func version() async throws {
        let result = try await runConcord(["--version"])
        #expect(result.exitStatus == 0)
        #expect(result.stdout == "0.1.0\n")
    }

    @Test(
        "every rank's stdout lines are prefixed, and all ranks share one master port, below the kernel's ephemeral range"
    )
    func prefixedStdout() async throws {
        let result = try await runConcord([
            "run", "-n", "3", "--", "sh", "-c",
            "echo hello $CONCORD_RANK of $CONCORD_WORLD_SIZE; echo port $CONCORD_MASTER_PORT >&2",
        ])
        #expect(result.exitStatus == 0)
        #expect(
            result.stdoutLines.sorted() == [
                "[rank 0] hello 0 of 3", "[rank 1] hello 1 of 3", "[rank 2] hello 2 of 3",
            ])
        let ports = Set(
            result.stderrLines.filter { $0.contains(" port ") }.map { $0.split(separator: " ").last! })
        #expect(ports.count == 1, "ranks got different ports: \(result.stderr)")
        #expect(ports.first.flatMap { Int($0) }.map { (1...65535).contains($0) } == true)
        #expect(result.stderrLines.filter { $0.contains(" port ") }.count == 3)
        // Outgoing connections take their ports from the ephemeral range; one could take the master port
        // between the launcher's choice and rank 0's bind.
        let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))?
            .split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        if let low = range?.first, low >= 11_000, let port = ports.first.flatMap({ Int($0) }) {
            #expect((10_000..<low).contains(port), "port \(port), ephemeral range from \(low)")
        }
    }

    @Test("--bind auto gives each of K ranks its own share of the CPUs when there is a CPU for each; none and -n 1 leave them")
    func cpuBinding() async throws {
        /// Each rank's allowed CPUs, by its prefix.
        func allowed(_ arguments: [String]) async throws -> [String: Set<Int>] {
            let result = try await runConcord(
                ["run"] + arguments + ["--", "sh", "-c", "grep Cpus_allowed_list /proc/self/status"])
            #expect(result.exitStatus == 0, "\(result.stderr)")
            var sets: [String: Set<Int>] = [:]
            for line in result.stdoutLines {
                let parts = line.split(separator: "\t")
                sets[String(line.prefix { $0 != "]" })] = cpuList(String(parts.last ?? ""))
            }
            return sets
        }
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let mine = cpuList(String(status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list") }!
            .split(separator: "\t").last!))
        let two = try await allowed(["-n", "2"])
        #expect(two.count == 2)
        if mine.count >= 2 {
            let (a, b) = (two["[rank 0"] ?? [], two["[rank 1"] ?? [])
            #expect(!a.isEmpty && !b.isEmpty && a.isDisjoint(with: b) && a.union(b) == mine, "\(two)")
            #expect(a.count == mine.count / 2, "\(two)")
        } else {
            #expect(two.values.allSatisfy { $0 == mine }, "\(two)")
        }
        let unbound = try await allowed(["-n", "2", "--bind", "none"])
        #expect(unbound.values.allSatisfy { $0 == mine } && unbound.count == 2, "\(unbound)")
        #expect(try await allowed(["-n", "1"]) == ["[rank 0": mine])
        let over = try await allowed(["-n", "\(mine.count + 1)"])
        #expect(over.values.allSatisfy { $0 == mine } && over.count == mine.count + 1, "\(over)")
    }

    @Test("every rank's stderr lines are prefixed and go to concord's stderr")
    func prefixedStderr() async throws {
        let result = try await runConcord([
            "run", "-n", "2", "--", "sh", "-c", "echo oops $CONCORD_RANK >&2; echo fine",
        ])
        #expect(result.exitStatus == 0)
        #expect(result.stderrLines.sorted() == ["[rank 0] oops 0", "[rank 1] oops 1"])
        #expect(result.stdoutLines.sorted() == ["[rank 0] fine", "[rank 1] fine"])
    }

    @Test("the ranks share a fresh 256-bit job secret, or the inherited one, or run insecure with --insecure")
    func jobSecret() async throws {
        let script = "echo ${#CONCORD_SECRET} $CONCORD_SECRET ${CONCORD_INSECURE:-secure}"
        let fresh = try await runConcord(["run", "-n", "2", "--", "sh", "-c", script])
        #expect(fresh.exitStatus == 0)
        let secrets = Set(fresh.stdoutLines.map { $0.split(separator: " ").dropFirst(3).first ?? "" })
        #expect(secrets.count == 1 && fresh.stdoutLines.allSatisfy { $0.contains(" 64 ") }, "\(fresh.stdoutLines)")
        let again = try await runConcord(["run", "-n", "1", "--", "sh", "-c", script])
        #expect(!again.stdout.contains(secrets.first ?? "-"), "a new job gets a new secret")
        let inherited = try await runConcord(
            ["run", "-n", "2", "--", "sh", "-c", script], environment: ["CONCORD_SECRET": "ours"])
        #expect(inherited.stdoutLines.sorted() == ["[rank 0] 4 ours secure", "[rank 1] 4 ours secure"])
        let insecure = try await runConcord(["run", "-n", "1", "--insecure", "--", "sh", "-c", script])
        #expect(insecure.stdoutLines == ["[rank 0] 0 1"], "\(insecure.stdoutLines)")
        let contradiction = try await runConcord(
            ["run", "-n", "1", "--insecure", "--", "true"], environment: ["CONCORD_SECRET": "ours"])
        #expect(contradiction.exitStatus == 64 && contradiction.stderr.contains("--insecure contradicts"))
    }

    @Test("each rank receives the whole environment contract, replacing inherited CONCORD_* values")
    func environmentContract() async throws {
        let result = try await runConcord(
            [
                "run", "-n", "2", "--master-addr", "10.1.2.3", "--master-port", "23456", "--", "sh", "-c",
                "echo $CONCORD_RANK $CONCORD_WORLD_SIZE $CONCORD_LOCAL_RANK $CONCORD_LOCAL_WORLD_SIZE"
                    + " $CONCORD_MASTER_ADDR $CONCORD_MASTER_PORT $INHERITED_BY_RANKS",
            ],
            environment: ["CONCORD_RANK": "99", "CONCORD_MASTER_PORT": "1", "INHERITED_BY_RANKS": "yes"])
        #expect(result.exitStatus == 0)
        #expect(
            result.stdoutLines.sorted() == [
                "[rank 0] 0 2 0 2 10.1.2.3 23456 yes",
                "[rank 1] 1 2 1 2 10.1.2.3 23456 yes",
            ])
    }

    @Test("lines of different ranks are never interleaved")
    func noInterleaving() async throws {
        // Each rank writes 200 lines of 5000 copies of its rank digit, far more than one pipe buffer.
        let script = """
            line=$(printf '%05000d' 0 | tr 0 $CONCORD_RANK); i=0
            while [ $i -lt 200 ]; do echo $line; i=$((i+1)); done
            """
        let result = try await runConcord(["run", "-n", "4", "--", "sh", "-c", script])
        #expect(result.exitStatus == 0)
        #expect(result.stdoutLines.count == 800)
        for rank in 0..<4 {
            let expected = "[rank \(rank)] " + String(repeating: Character("\(rank)"), count: 5000)
            #expect(
                result.stdoutLines.filter { $0 == expected }.count == 200, "rank \(rank) lines were mangled"
            )
        }
    }

    @Test("a final line without newline is still printed, with a newline added")
    func partialLastLine() async throws {
        let result = try await runConcord(["run", "-n", "1", "--", "printf", "abc"])
        #expect(result.exitStatus == 0)
        #expect(result.stdout == "[rank 0] abc\n")
    }

    @Test("a rank exiting non-zero stops the others; concord exits with its status")
    func failingRankStopsTheOthers() async throws {
        // Rank 1 waits a little so every rank has printed its pid before the job is stopped. The long
        // grace period makes sure the others were stopped by SIGTERM, not by the SIGKILL that follows it.
        let result = try await runConcord([
            "run", "-n", "3", "--grace", "20", "--", "sh", "-c",
            "echo $$; if [ $CONCORD_RANK = 1 ]; then sleep 0.5; exit 7; fi; sleep 60",
        ])
        #expect(result.exitStatus == 7)
        #expect(result.elapsed < .seconds(10))
        #expect(result.stderr.contains("rank 1"))
        #expect(result.stderr.contains("exited with status 7"))
        #expect(result.stderr.contains("stopping the other ranks"))
        let pids = rankPIDs(in: result.stdoutLines)
        #expect(pids.count == 3, "expected a pid from every rank: \(result.stdout)")
        expectGone(pids)
    }

    @Test("a rank killed by a signal stops the others; concord exits with 128 + the signal")
    func killedRankStopsTheOthers() async throws {
        let result = try await runConcord([
            "run", "-n", "3", "--grace", "20", "--", "sh", "-c",
            "echo $$; if [ $CONCORD_RANK = 0 ]; then sleep 0.5; kill -9 $$; fi; sleep 60",
        ])
        #expect(result.exitStatus == 128 + SIGKILL)
        #expect(result.elapsed < .seconds(10))
        #expect(result.stderr.contains("rank 0"))
        #expect(result.stderr.contains("signal 9 (SIGKILL)"))
        let pids = rankPIDs(in: result.stdoutLines)
        #expect(pids.count == 3, "expected a pid from every rank: \(result.stdout)")
        expectGone(pids)
    }

    @Test("ranks that ignore SIGTERM are killed with SIGKILL after --grace")
    func graceThenSIGKILL() async throws {
        let result = try await runConcord([
            "run", "-n", "2", "--grace", "1", "--", "sh", "-c",
            "trap '' TERM; echo $$; if [ $CONCORD_RANK = 1 ]; then sleep 0.5; exit 3; fi; sleep 60",
        ])
        #expect(result.exitStatus == 3)
        #expect(result.elapsed >= .seconds(1))
        #expect(result.elapsed < .seconds(10))
        #expect(result.stderr.contains("SIGKILL"))
        expectGone(rankPIDs(in: result.stdoutLines))
    }

    @Test("SIGTERM to concord is forwarded to every rank; concord exits non-zero")
    func sigtermIsForwarded() async throws {
        let launched = try LaunchedConcord([
            "run", "-n", "3", "--grace", "20", "--", "sh", "-c", "echo $$; sleep 60",
        ])
        let allStarted = await launched.waitForStdoutLines(3)
        #expect(allStarted, "ranks did not start: \(launched.stdoutSoFar)")
        kill(launched.pid, SIGTERM)
        let signalled = ContinuousClock.now
        let result = await launched.wait()
        #expect(ContinuousClock.now - signalled < .seconds(10))
        #expect(result.exitStatus == 128 + SIGTERM)
        #expect(result.stderr.contains("interrupted by SIGTERM"))
        let pids = rankPIDs(in: result.stdoutLines)
        #expect(pids.count == 3)
        expectGone(pids)
    }

    @Test("SIGINT to concord reaches the ranks as SIGINT")
    func sigintIsForwarded() async throws {
        let launched = try LaunchedConcord([
            "run", "-n", "2", "--grace", "20", "--", "sh", "-c",
            "trap 'echo got SIGINT; exit 0' INT; echo $$; while :; do sleep 0.1; done",
        ])
        let allStarted = await launched.waitForStdoutLines(2)
        #expect(allStarted, "ranks did not start: \(launched.stdoutSoFar)")
        kill(launched.pid, SIGINT)
        let signalled = ContinuousClock.now
        let result = await launched.wait()
        #expect(ContinuousClock.now - signalled < .seconds(10))
        #expect(result.stderr.contains("interrupted by SIGINT"))
        #expect(result.exitStatus == 128 + SIGINT)
        #expect(
            result.stdoutLines.filter { $0.hasSuffix("] got SIGINT") }.count == 2, "\(result.stdout)")
        expectGone(rankPIDs(in: result.stdoutLines))
    }

    @Test("-n 0 is a usage error")
    func zeroRanks() async throws {
        let result = try await runConcord(["run", "-n", "0", "--", "true"])
        #expect(result.exitStatus == 64)
        #expect(result.stderr.contains("-n must be at least 1"))
        #expect(result.elapsed < .seconds(30), "a usage error must not wait for anything")
    }

    @Test("a missing program is reported in one line, before any rank starts")
    func missingProgram() async throws {
        let result = try await runConcord(["run", "-n", "2", "--", "/nonexistent/prog"])
        #expect(result.exitStatus == 127)
        #expect(
            result.stderrLines == [
                "concord: error: cannot run '/nonexistent/prog': No such file or directory"
            ])
        #expect(result.stdout.isEmpty)
        #expect(result.elapsed < .seconds(30), "a usage error must not wait for anything")

        let unknown = try await runConcord([
            "run", "-n", "2", "--", "concord-no-such-command-\(getpid())",
        ])
        #expect(unknown.exitStatus == 127)
        #expect(unknown.stderr.contains("not found in PATH"))
    }

    @Test("no program is a usage error")
    func noProgram() async throws {
        let result = try await runConcord(["run", "-n", "2"])
        #expect(result.exitStatus == 64)
        #expect(result.stderr.contains("no program given"))
    }
}

// RunCommand.swift — `concord run`: parse and validate the command line, then hand over.
//
// This file is the user-facing surface: options, help text, validation. `validate()` checks what can
// be checked without touching the system (usage errors, exit status 64); `run()` resolves the program
// (126/127 with one line when it cannot be run), picks the rendezvous port, builds a LaunchPlan and
// gives it to ProcessGroup, whose result becomes the exit status. The help text is pinned by
// Tests/ConcordLauncherTests, so change both together.

import ArgumentParser
import Glibc

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start N ranks of PROGRAM on this host and supervise them.",
        usage: "concord run -n <N> [<options>] -- <program> [<argument> ...]",
        discussion: HelpText.run)

    @Option(
        name: [.customShort("n"), .customLong("ranks")],
        help: ArgumentHelp("The number of ranks to start (at least 1).", valueName: "N"))
    var ranks: Int

    @Option(
        help: ArgumentHelp(
            "The rendezvous address given to every rank as CONCORD_MASTER_ADDR.", valueName: "address"))
    var masterAddr = "127.0.0.1"

    @Option(
        help: ArgumentHelp(
            "The rendezvous port given to every rank as CONCORD_MASTER_PORT (default: a free TCP port on 127.0.0.1).",
            valueName: "port"))
    var masterPort: Int?

    @Option(
        help: ArgumentHelp(
            "Seconds between SIGTERM and SIGKILL when the job is stopped.", valueName: "seconds"))
    var grace: Double = 3

    @Flag(
        help: ArgumentHelp(
            "Run without a job secret (CONCORD_INSECURE=1): any process that reaches the job's ports can join it. "
                + "By default the ranks get a fresh CONCORD_SECRET, or the one in this environment."))
    var insecure = false

    @Argument(
        parsing: .captureForPassthrough,
        help: ArgumentHelp(
            "The program every rank runs, and its arguments (after --).", valueName: "program"))
    var command: [String] = []

    /// The program and its arguments, without the `--` that separates them from concord's options.
    private var programArguments: [String] {
        command.first == "--" ? Array(command.dropFirst()) : command
    }

    func validate() throws {
        guard ranks >= 1 else {
            throw ValidationError("-n must be at least 1 (got \(ranks))")
        }
        guard let program = programArguments.first, !program.isEmpty else {
            throw ValidationError(
                "no program given; write it after --, e.g. concord run -n \(ranks) -- ./my-program")
        }
        if let masterPort, !(1...65535).contains(masterPort) {
            throw ValidationError("--master-port must be between 1 and 65535 (got \(masterPort))")
        }
        guard grace.isFinite, (0...86_400).contains(grace) else {
            throw ValidationError("--grace must be a number of seconds from 0 to 86400 (got \(grace))")
        }
        guard !masterAddr.isEmpty else {
            throw ValidationError("--master-addr must not be empty")
        }
        if insecure
            && (Self.environmentValue("CONCORD_SECRET") != nil || Self.environmentValue("CONCORD_SECRET_FILE") != nil)
        {
            throw ValidationError(
                "--insecure contradicts the CONCORD_SECRET or CONCORD_SECRET_FILE in this environment")
        }
    }

    func run() throws {
        let arguments = programArguments
        let executable: ExecutablePath
        do throws(ExecutablePath.LookupError) {
            executable = try ExecutablePath(
                resolving: arguments[0], searchPath: Self.environmentValue("PATH"))
        } catch {
            Self.fail("\(error)", exitCode: error.exitCode)
        }
        var port = masterPort ?? 0
        do throws(SystemError) {
            if masterPort == nil { port = try LaunchPlan.freeLoopbackPort() }
        } catch {
            Self.fail(
                "cannot pick a free port for CONCORD_MASTER_PORT: \(error); pass --master-port", exitCode: 1
            )
        }
        var plan = LaunchPlan(
            executable: executable, arguments: arguments, worldSize: ranks, masterAddress: masterAddr,
            masterPort: port, grace: .seconds(grace))
        if insecure {
            plan.security = [("CONCORD_INSECURE", "1")]
        } else if Self.environmentValue("CONCORD_SECRET") == nil && Self.environmentValue("CONCORD_SECRET_FILE") == nil
        {
            plan.security = [("CONCORD_SECRET", LaunchPlan.randomSecret())]
        }
        let exitCode: Int32
        do throws(SystemError) {
            exitCode = try ProcessGroup(plan: plan).run()
        } catch {
            Self.fail("\(error)", exitCode: 1)
        }
        if exitCode != 0 { throw ExitCode(exitCode) }
    }

    /// Prints "concord: error: <message>" on stderr and exits.
    private static func fail(_ message: String, exitCode: Int32) -> Never {
        FileSink(fd: STDERR_FILENO).writeLine("concord: error: \(message)")
        Glibc.exit(exitCode)
    }

    private static func environmentValue(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}

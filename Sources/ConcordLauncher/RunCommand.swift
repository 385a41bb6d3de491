// RunCommand.swift — `concord run`: parse and validate the command line, then hand over.
//
// This file is the user-facing surface: options, help text, validation. `validate()` checks what can
// be checked without touching the system (usage errors, exit status 64); `run()` resolves the program
// (126/127 with one line when it cannot be run), picks the rendezvous port, builds a LaunchPlan and
// gives it to ProcessGroup, whose result becomes the exit status. The help text is pinned by
// Tests/ConcordLauncherTests, so change both together.

import ArgumentParser
import Concord
import Foundation
import Glibc
import Synchronization

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start N ranks of PROGRAM on this host and supervise them.",
        usage: "concord run -n <N> [<options>] -- <program> [<argument> ...]",
        discussion: HelpText.run)

    @Option(
        name: [.customShort("n"), .customLong("ranks")],
        help: ArgumentHelp(
            "The number of ranks to start on this host (at least 1; with --discover, default 1).", valueName: "N"))
    var ranksOption: Int?

    @Flag(
        help: ArgumentHelp(
            "Find the other members on the network (UDP multicast beacons), agree on members, ranks and a ring "
                + "ordered by measured round trips, then run the program as this host's member(s)."))
    var discover = false

    @Option(help: ArgumentHelp("With --discover: the job's name; only members of this job join.", valueName: "name"))
    var job = "concord"

    @Option(help: ArgumentHelp("With --discover: start once this many members are present.", valueName: "N"))
    var worldSize: Int?

    @Option(
        help: ArgumentHelp(
            "With --discover: start with at least M members once nobody new appeared for --settle seconds "
                + "(choose M above half of the members you run, or two halves of a partition may both start).",
            valueName: "M"))
    var minSize: Int?

    @Option(help: ArgumentHelp("With --min-size: the settle window in seconds.", valueName: "seconds"))
    var settle: Double = 2

    @Option(
        help: ArgumentHelp(
            "With --discover: which interface to advertise, NCCL syntax (eth0, =eth0, ^lo,docker); default "
                + "CONCORD_IFACE, else the default route's.", valueName: "spec"))
    var iface: String?

    @Option(
        help: ArgumentHelp(
            "Every member's host:port, comma-separated (default CONCORD_PEERS): members find each other at these "
                + "addresses instead of (or besides) by multicast; implies --discover. Each member takes the first "
                + "entry of this host whose port is free.", valueName: "list"))
    var peers: String?

    @Option(help: ArgumentHelp("A file holding the job secret (instead of CONCORD_SECRET).", valueName: "path"))
    var secretFile: String?

    @Option(help: ArgumentHelp("With --discover: seconds to wait for the group.", valueName: "seconds"))
    var discoveryTimeout: Double = 60

    @Option(
        help: ArgumentHelp(
            "auto: when this host runs 2 or more ranks and has a CPU for each, bind each rank to its own equal "
                + "share of the CPUs (as mpirun does); none: leave placement to the scheduler.",
            valueName: "auto|none"))
    var bind: CPUBinding = .auto

    private var ranks: Int { ranksOption ?? 1 }

    private var staticPeers: [String] {
        (peers ?? Self.environmentValue("CONCORD_PEERS") ?? "").split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespaces)
        }.filter { !$0.isEmpty }
    }

    private var isDiscovering: Bool { discover || !staticPeers.isEmpty }

    @Option(
        help: ArgumentHelp(
            "The rendezvous address given to every rank as CONCORD_MASTER_ADDR.", valueName: "address"))
    var masterAddr = "127.0.0.1"

    @Option(
        help: ArgumentHelp(
            "The rendezvous port given to every rank as CONCORD_MASTER_PORT (default: a free TCP port below the range the kernel gives outgoing connections).",
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
        // `concord run --help`: with -n optional, the passthrough argument captures the flag; show the help.
        if let first = command.first, first == "--help" || first == "-h" { throw CleanExit.helpRequest(self) }
        if !isDiscovering && ranksOption == nil {
            throw ValidationError("give the number of ranks with -n N (or use --discover)")
        }
        if isDiscovering && worldSize == nil && minSize == nil {
            throw ValidationError("--discover needs --world-size N or --min-size M")
        }
        if !isDiscovering && (worldSize != nil || minSize != nil) {
            throw ValidationError("--world-size and --min-size go with --discover")
        }
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
            && (secretFile != nil || Self.isSet("CONCORD_SECRET")
                || Self.isSet("CONCORD_SECRET_FILE"))
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
            if masterPort == nil { port = try LaunchPlan.freeMasterPort() }
        } catch {
            Self.fail(
                "cannot pick a free port for CONCORD_MASTER_PORT: \(error); pass --master-port", exitCode: 1
            )
        }
        var plan = LaunchPlan(
            executable: executable, arguments: arguments, worldSize: ranks, masterAddress: masterAddr,
            masterPort: port, grace: .seconds(grace))
        var members: [DiscoveryMember] = []
        defer { members.forEach { $0.close() } }
        if let secretFile { plan.security = [("CONCORD_SECRET_FILE", secretFile)] }
        if insecure {
            plan.security = [("CONCORD_INSECURE", "1")]
        } else if secretFile == nil && !Self.isSet("CONCORD_SECRET")
            && !Self.isSet("CONCORD_SECRET_FILE")
        {
            // Every member this launcher's own (all local): a fresh secret that only they know.
            if isDiscovering && worldSize != ranks {
                Self.fail(
                    "--discover needs the job's secret on every member: set CONCORD_SECRET or pass --secret-file "
                        + "(or --insecure on a trusted network)", exitCode: 64)
            }
            plan.security = [("CONCORD_SECRET", LaunchPlan.randomSecret())]
        }
        if isDiscovering {
            // Discovery starts threads (its event loop); they inherit this mask. Without it the kernel may
            // hand SIGCHLD (or SIGINT, SIGTERM) to such a thread, and the signalfd that ProcessGroup reads
            // on this one never sees it: the launcher would not notice its program exit.
            var signals = sigset_t()
            sigemptyset(&signals)
            for signal in [SIGCHLD, SIGINT, SIGTERM, SIGHUP] { sigaddset(&signals, signal) }
            pthread_sigmask(SIG_BLOCK, &signals, nil)
            do {
                (members, plan.discovered) = try discoverGroup(
                    generatedSecret: plan.security.first { $0.0 == "CONCORD_SECRET" }?.1)
            } catch {
                Self.fail("\(error)", exitCode: 1)
            }
        }
        if bind == .auto {
            plan.cpuSlices = CPUBinding.slices(processes: plan.processCount, cpus: CPUBinding.allowedCPUs())
        }
        let exitCode: Int32
        do throws(SystemError) {
            exitCode = try ProcessGroup(plan: plan).run()
        } catch {
            Self.fail("\(error)", exitCode: 1)
        }
        if exitCode != 0 { throw ExitCode(exitCode) }
    }

    /// Runs `ranks` discovery members on this host until they agree on a group; prints the group and
    /// returns each member's rank and variables (the members keep answering until closed).
    private func discoverGroup(generatedSecret: String?) throws -> (
        [DiscoveryMember], [(rank: Int, environment: [(name: String, value: String)])]
    ) {
        let authentication: Authentication
        if insecure {
            authentication = .insecure
        } else if let secretFile {
            authentication = .secret(try JobSecret(contentsOfFile: secretFile))
        } else if let generatedSecret {
            authentication = .secret(try JobSecret(string: generatedSecret))
        } else {
            guard let found = try Configuration.authentication(environment: ProcessInfo.processInfo.environment) else {
                throw ConcordError.invalidConfiguration("no job secret")
            }
            authentication = found
        }
        var options = DiscoveryOptions(
            jobName: job, authentication: authentication, worldSize: worldSize, minSize: minSize)
        options.settleSeconds = settle
        options.interfaces = iface ?? Self.environmentValue("CONCORD_IFACE")
        options.timeout = discoveryTimeout
        options.staticPeers = staticPeers
        if let group = Self.environmentValue("CONCORD_DISCOVERY_GROUP") { options.group = group }
        if let port = Self.environmentValue("CONCORD_DISCOVERY_PORT").flatMap(Int.init) { options.port = port }
        let members = try (0..<ranks).map { _ in try DiscoveryMember(options: options) }
        // One thread per member: they must all run at once (each waits for the others to agree).
        let outcomes = Mutex([Result<DiscoveredGroup, any Error>?](repeating: nil, count: members.count))
        let done = DispatchGroup()
        for (i, member) in members.enumerated() {
            done.enter()
            Thread.detachNewThread {
                let outcome = Result { try member.run() }
                outcomes.withLock { $0[i] = outcome }
                done.leave()
            }
        }
        done.wait()
        let groups = try outcomes.withLock { $0 }.map { try $0!.get() }
        let out = FileSink(fd: STDOUT_FILENO)
        for line in groups[0].summary { out.writeLine("concord: \(line)") }
        let processes = zip(members, groups).enumerated().map { index, pair in
            let (member, group) = pair
            let environment: [(name: String, value: String)] = [
                ("CONCORD_RANK", "\(group.rank)"), ("CONCORD_WORLD_SIZE", "\(group.worldSize)"),
                ("CONCORD_LOCAL_RANK", "\(index)"), ("CONCORD_LOCAL_WORLD_SIZE", "\(members.count)"),
                ("CONCORD_MASTER_ADDR", group.master.host), ("CONCORD_MASTER_PORT", "\(group.master.port)"),
                ("CONCORD_HOST", member.host), ("CONCORD_JOB", job),
                // Every discovered member is a device of its own: data between them goes over the network.
                ("CONCORD_NODE", member.node.description),
            ]
            return (rank: group.rank, environment: environment)
        }
        return (members, processes)
    }

    /// Prints "concord: error: <message>" on stderr and exits.
    private static func fail(_ message: String, exitCode: Int32) -> Never {
        FileSink(fd: STDERR_FILENO).writeLine("concord: error: \(message)")
        Glibc.exit(exitCode)
    }

    private static func isSet(_ name: String) -> Bool { !(environmentValue(name) ?? "").isEmpty }

    private static func environmentValue(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}

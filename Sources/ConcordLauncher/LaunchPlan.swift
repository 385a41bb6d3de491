// LaunchPlan.swift — everything decided before the first rank starts.
//
// The plan is the validated command line turned into values: which executable, which argv, how many
// ranks, where they rendezvous and how long they get to stop. `environment(forRank:)` is the launcher's
// whole contract with the programs it starts (the CONCORD_* variables, documented in `concord run
// --help`); keeping it here, as a pure function, keeps that contract in one place.
//
// The default rendezvous port is a free one, chosen below the kernel's ephemeral range (FreePort in
// ConcordCore): unlike a fixed default it lets several jobs on one host run side by side, and no outgoing
// connection can take it before rank 0 binds it.

import ConcordCore
import Glibc

/// A validated description of one job.
struct LaunchPlan {
    /// The resolved executable, passed to posix_spawn.
    let executable: ExecutablePath
    /// The argument vector, starting with the program name as the user typed it.
    let arguments: [String]
    /// N, the number of ranks.
    let worldSize: Int
    /// The rendezvous address given to every rank.
    let masterAddress: String
    /// The rendezvous port given to every rank.
    let masterPort: Int
    /// How long ranks get between SIGTERM and SIGKILL.
    let grace: Duration
    /// Variables that secure the job, the same for every rank: a fresh `CONCORD_SECRET` when the launcher's
    /// environment names none, `CONCORD_INSECURE=1` with `--insecure`, nothing when a secret is inherited.
    var security: [(name: String, value: String)] = []
    /// With `--discover`: the rank the group agreed for each process this launcher starts, and its
    /// variables (nil: ranks 0..<worldSize, all on this host).
    var discovered: [(rank: Int, environment: [(name: String, value: String)])]?
    /// The CPUs each process is bound to, by process index (nil: not bound; see CPUBinding.swift).
    var cpuSlices: [[Int]]?

    /// How many processes this launcher starts.
    var processCount: Int { discovered?.count ?? worldSize }

    /// The rank of the process at `index` (for prefixes and reports).
    func rank(ofProcess index: Int) -> Int { discovered?[index].rank ?? index }

    /// The inherited variables the processes' own values replace.
    var replacedNames: [String] {
        Array(Set(Self.variableNames + environment(forRank: 0).map(\.name))).sorted()
    }

    /// The names of the variables `environment(forRank:)` sets; the inherited values of these are
    /// replaced.
    static let variableNames = [
        "CONCORD_RANK", "CONCORD_WORLD_SIZE", "CONCORD_LOCAL_RANK", "CONCORD_LOCAL_WORLD_SIZE",
        "CONCORD_MASTER_ADDR", "CONCORD_MASTER_PORT",
    ]

    /// The variables rank `rank` receives on top of the launcher's environment, in `variableNames` order.
    ///
    /// All ranks run on this host, so the local rank is the rank and the local world size is N.
    func environment(forRank rank: Int) -> [(name: String, value: String)] {
        if let discovered { return discovered[rank].environment + security }
        precondition((0..<worldSize).contains(rank), "rank \(rank) outside 0..<\(worldSize)")
        return [
            ("CONCORD_RANK", "\(rank)"),
            ("CONCORD_WORLD_SIZE", "\(worldSize)"),
            ("CONCORD_LOCAL_RANK", "\(rank)"),
            ("CONCORD_LOCAL_WORLD_SIZE", "\(worldSize)"),
            ("CONCORD_MASTER_ADDR", masterAddress),
            ("CONCORD_MASTER_PORT", "\(masterPort)"),
        ] + security
    }

    /// 32 random bytes as hex, from the system's secure generator (getrandom(2) on Linux).
    static func randomSecret() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in
            let byte = UInt8.random(in: 0...255, using: &generator)
            return (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }.joined()
    }

    /// A TCP port for the rendezvous that is free on every address right now, below the kernel's ephemeral
    /// range where there is room (see ConcordCore/FreePort.swift).
    ///
    /// - Returns: A port number in 1...65535.
    /// - Throws: `SystemError` if socket(2) fails, or every bind(2) does.
    static func freeMasterPort() throws(SystemError) -> Int {
        do {
            return try FreePort.tcp()
        } catch {
            guard case .system(_, let call, let code, _) = error else { throw SystemError(call: "bind", errno: EINVAL) }
            throw SystemError(call: call, errno: code)
        }
    }
}

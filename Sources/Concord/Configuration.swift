// The environment-variable contract: where a rank learns who it is and where the master is.
import ConcordCore
@_exported import ConcordDiscovery
import ConcordUV
import Foundation

/// Everything a `Communicator` needs to join its group.
public struct Configuration: Sendable {
    public var rank: Int
    public var worldSize: Int
    public var localRank: Int
    public var masterAddress: String
    public var masterPort: Int
    /// Seconds for the whole join (`CONCORD_TIMEOUT`, default 60).
    public var joinTimeout: Double
    /// Seconds of silence after which a peer is declared lost (`CONCORD_PEER_TIMEOUT`, default 10).
    public var peerTimeout: Double
    /// Host published to the other ranks (`CONCORD_HOST`); nil: the local address that reaches the master.
    public var advertisedHost: String?
    /// Port of this rank's ring listener (`CONCORD_PORT`, default 0: any free port).
    public var listenPort: Int
    /// Which launcher's variables supplied rank and world size, for messages.
    public var source: String
    /// How ring neighbours on one host talk (`CONCORD_TRANSPORT`: tcp, shm or auto, the default).
    public var linkMedium: LinkMedium = .auto
    /// Microseconds a rank waiting for a small transfer polls before it sleeps (`CONCORD_SPIN_US`,
    /// default 50; 0 never spins). Spinning saves a thread wake-up per ring step.
    public var spinMicroseconds = Configuration.defaultSpinMicroseconds
    /// Bytes of every TCP link's receive buffer (`CONCORD_SOCKET_BUFFER`; 0: the kernel's autotuning).
    /// nil, the default: 4 MiB where `net.core.rmem_max` allows it, else autotuning (docs/algorithms.md).
    public var receiveBufferBytes: Int?
    /// Congestion control of TCP links between ranks on one machine (`CONCORD_LOCAL_CONGESTION`: a name the
    /// kernel offers, or `system` for the system's default, written ""). nil, the default: reno, which
    /// neither paces nor bounds the window on a link that cannot lose packets (docs/algorithms.md).
    public var sameMachineCongestionControl: String?
    /// Whether TCP data frames of 1 MiB or more are sent without the kernel's copy (`CONCORD_ZEROCOPY`: 1,
    /// the default, or 0). Each is acknowledged by its receiver either way (see ConcordUV/PeerLink.swift).
    public var zeroCopySends = true

    /// Whether large float32 sums size ring chunks by measured link capacity, and compress on slow links
    /// (`CONCORD_CAPACITY`: off, the default; weighted; or fp16, bf16, int8 for weighted chunks with that
    /// compression on links much slower than the rest). The same on every rank.
    public var capacityPolicy = CapacityPolicy.off
    /// Collectives between two measurements of the links under a capacity policy (`CONCORD_REPLAN_EVERY`,
    /// default 50).
    public var replanEvery = 50

    /// The name of this machine at the rendezvous (`CONCORD_NODE`); ranks with the same name use shared
    /// memory between them. nil: the host name and boot id (two containers that share /dev/shm may set one).
    public var node: String?

    /// The job's name (`CONCORD_JOB`, default "concord"): connections of another job are refused.
    public var jobName = "concord"
    /// How every connection proves it belongs to the job: `.secret` (`CONCORD_SECRET`, or the file named by
    /// `CONCORD_SECRET_FILE`), or `.insecure` (`CONCORD_INSECURE=1`). nil: joining fails and says how to
    /// set one (`concord run` makes a secret for the ranks it starts).
    public var authentication: Authentication?

    public static let defaultSpinMicroseconds = 50

    public static let defaultMasterPort = 29500

    public init(
        rank: Int, worldSize: Int, localRank: Int? = nil, masterAddress: String = "127.0.0.1",
        masterPort: Int = Configuration.defaultMasterPort, joinTimeout: Double = 60, peerTimeout: Double = 10,
        advertisedHost: String? = nil, listenPort: Int = 0, source: String = "explicit"
    ) {
        self.rank = rank
        self.worldSize = worldSize
        self.localRank = localRank ?? rank
        self.masterAddress = masterAddress
        self.masterPort = masterPort
        self.joinTimeout = joinTimeout
        self.peerTimeout = peerTimeout
        self.advertisedHost = advertisedHost
        self.listenPort = listenPort
        self.source = source
    }

    /// The secret from `CONCORD_SECRET` or `CONCORD_SECRET_FILE`, or insecure with `CONCORD_INSECURE=1`.
    public static func authentication(environment env: [String: String]) throws -> Authentication? {
        let insecure = ["1", "true", "yes"].contains(env["CONCORD_INSECURE"]?.lowercased() ?? "")
        let text = env["CONCORD_SECRET"].flatMap { $0.isEmpty ? nil : $0 }
        let file = env["CONCORD_SECRET_FILE"].flatMap { $0.isEmpty ? nil : $0 }
        if text != nil && file != nil {
            throw ConcordError.invalidConfiguration("set CONCORD_SECRET or CONCORD_SECRET_FILE, not both")
        }
        if insecure && (text != nil || file != nil) {
            throw ConcordError.invalidConfiguration("CONCORD_INSECURE=1 contradicts the job secret that is set")
        }
        do {
            if let text { return .secret(try JobSecret(string: text)) }
            if let file { return .secret(try JobSecret(contentsOfFile: file)) }
        } catch {
            throw ConcordError.invalidConfiguration("the job secret: \(error)")
        }
        return insecure ? .insecure : nil
    }

    /// The launchers whose variables are understood, in order of precedence.
    static let families: [(name: String, rank: String, size: String, local: String, addr: String?, port: String?)] = [
        (
            "concord", "CONCORD_RANK", "CONCORD_WORLD_SIZE", "CONCORD_LOCAL_RANK", "CONCORD_MASTER_ADDR",
            "CONCORD_MASTER_PORT"
        ),
        ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"),
        ("SLURM", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", nil, nil),
        ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", nil, nil),
    ]

    /// Reads the contract: `CONCORD_*` first, then torchrun's, SLURM's and Open MPI's variables for rank
    /// and world size. The master address and port come from `CONCORD_MASTER_*`, else `MASTER_*`, else
    /// 127.0.0.1:29500. With none of the rank variables set, this is a world of one rank.
    ///
    /// - Throws: `ConcordError.invalidConfiguration` naming the variable when a value is malformed or
    ///   out of range.
    public init(environment env: [String: String]) throws {
        func integer(_ name: String) throws -> Int? {
            guard let text = env[name]?.trimmingCharacters(in: .whitespaces), !text.isEmpty else { return nil }
            guard let value = Int(text) else {
                throw ConcordError.invalidConfiguration("\(name)=\(text) is not an integer")
            }
            return value
        }
        func seconds(_ name: String, default value: Double) throws -> Double {
            guard let text = env[name], !text.isEmpty else { return value }
            guard let v = Double(text), v > 0 else {
                throw ConcordError.invalidConfiguration("\(name)=\(text) must be a positive number of seconds")
            }
            return v
        }
        var found: (name: String, rank: Int, size: Int, local: Int?)?
        for family in Self.families {
            let rank = try integer(family.rank)
            let size = try integer(family.size)
            if rank == nil && size == nil { continue }
            guard let rank, let size else {
                throw ConcordError.invalidConfiguration(
                    "\(rank == nil ? family.rank : family.size) is missing while \(rank == nil ? family.size : family.rank) is set"
                )
            }
            found = (family.name, rank, size, try integer(family.local))
            break
        }
        let (source, rank, size, local) = found ?? ("default (no launcher variables)", 0, 1, nil)
        guard size >= 1 else {
            throw ConcordError.invalidConfiguration("world size \(size) (from \(source)) must be at least 1")
        }
        guard (0..<size).contains(rank) else {
            throw ConcordError.invalidConfiguration("rank \(rank) (from \(source)) is outside 0..<\(size)")
        }
        let address = env["CONCORD_MASTER_ADDR"] ?? env["MASTER_ADDR"] ?? "127.0.0.1"
        let portName = env["CONCORD_MASTER_PORT"] != nil ? "CONCORD_MASTER_PORT" : "MASTER_PORT"
        let port = try integer(portName) ?? Self.defaultMasterPort
        guard (1...65535).contains(port) else {
            throw ConcordError.invalidConfiguration("\(portName)=\(port) is not a TCP port (1...65535)")
        }
        let listenPort = try integer("CONCORD_PORT") ?? 0
        guard (0...65535).contains(listenPort) else {
            throw ConcordError.invalidConfiguration("CONCORD_PORT=\(listenPort) is not a TCP port (0...65535)")
        }
        self.init(
            rank: rank, worldSize: size, localRank: local ?? rank, masterAddress: address, masterPort: port,
            joinTimeout: try seconds("CONCORD_TIMEOUT", default: 60),
            peerTimeout: try seconds("CONCORD_PEER_TIMEOUT", default: 10),
            advertisedHost: env["CONCORD_HOST"].flatMap { $0.isEmpty ? nil : $0 }, listenPort: listenPort,
            source: source)
        if let text = env["CONCORD_TRANSPORT"], !text.isEmpty {
            guard let medium = LinkMedium(rawValue: text.lowercased()) else {
                throw ConcordError.invalidConfiguration("CONCORD_TRANSPORT=\(text) is not one of tcp, shm, auto")
            }
            linkMedium = medium
        }
        node = env["CONCORD_NODE"].flatMap { $0.isEmpty ? nil : $0 }
        if let job = env["CONCORD_JOB"], !job.isEmpty { jobName = job }
        authentication = try Self.authentication(environment: env)
        if let text = env["CONCORD_CAPACITY"], !text.isEmpty {
            guard let policy = CapacityPolicy(text.lowercased()) else {
                throw ConcordError.invalidConfiguration(
                    "CONCORD_CAPACITY=\(text) is not one of off, weighted, fp16, bf16, int8")
            }
            capacityPolicy = policy
        }
        if let every = try integer("CONCORD_REPLAN_EVERY") {
            guard every >= 1 else {
                throw ConcordError.invalidConfiguration("CONCORD_REPLAN_EVERY=\(every) must be at least 1")
            }
            replanEvery = every
        }
        if let spin = try integer("CONCORD_SPIN_US") {
            guard (0...1_000_000).contains(spin) else {
                throw ConcordError.invalidConfiguration("CONCORD_SPIN_US=\(spin) must be in 0...1000000 microseconds")
            }
            spinMicroseconds = spin
        }
        if let bytes = try integer("CONCORD_SOCKET_BUFFER") {
            guard (0...(1 << 30)).contains(bytes) else {
                throw ConcordError.invalidConfiguration(
                    "CONCORD_SOCKET_BUFFER=\(bytes) must be 0 (autotuning) or a size in bytes up to 1 GiB")
            }
            receiveBufferBytes = bytes
        }
        if let zeroCopy = try integer("CONCORD_ZEROCOPY") {
            guard zeroCopy == 0 || zeroCopy == 1 else {
                throw ConcordError.invalidConfiguration("CONCORD_ZEROCOPY=\(zeroCopy) must be 0 or 1")
            }
            zeroCopySends = zeroCopy == 1
        }
        if let name = env["CONCORD_LOCAL_CONGESTION"], !name.isEmpty {
            if name == "system" {
                sameMachineCongestionControl = ""
            } else {
                let available = LinkTuning.availableCongestionControls
                guard available.isEmpty || available.contains(name) else {
                    throw ConcordError.invalidConfiguration(
                        "CONCORD_LOCAL_CONGESTION=\(name) is not a congestion control this kernel offers "
                            + "(\(available.joined(separator: ", ")), or system for the system's default")
                }
                sameMachineCongestionControl = name
            }
        }
    }
}

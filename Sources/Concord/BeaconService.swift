// A node's presence on the network: it announces itself with beacons and keeps the table of the nodes
// of its job that it hears.
//
//             every 250 ms (the loop's tick)                       each datagram received
//   Beacon(seq+1) ─▶ encode + tag ─▶ group G:P (multicast)     bytes ─▶ Beacon.decode ─▶ PeerTable.observe
//                                 └▶ broadcast B:P (fallback)           │ (job, version, MAC checked)
//                                                                       └▶ dropped: counted per reason,
//   expire(now) on every tick: a node silent for the TTL is gone            logged once per reason and source
//
// One UDP socket per service, bound to 0.0.0.0:P with SO_REUSEADDR so that every process of a host shares
// the beacon port; it joins G on the listening interfaces, sends through the advertised interface
// (IP_MULTICAST_IF) and, as a fallback for networks that drop multicast, to the directed broadcast
// address of that interface's subnet (127.255.255.255 on loopback). Every node therefore hears each beacon
// twice, and its own beacons too: PeerTable keeps a beacon only when its sequence number is new and
// ignores the node's own id.
//
// Threading: all mutable state belongs to the event loop (`EventLoop`) and is touched only by its driver:
// the receive handler, the tick, and the code inside `loop.drive`. After every change the loop publishes
// an immutable `Snapshot` under a lock, so `snapshot`, `peers` and the async waits read it from any
// thread without taking the loop. `waitUntilBlocking` drives the loop itself instead, on the caller's
// thread. Nothing on the loop blocks: a send is `uv_udp_try_send`, a receive is a decode and a table
// update.
//
// Audiences: a node in a job (`.job(credentials)`) accepts only beacons of its job that verify with its
// secret (or, insecure, only insecure ones). An observer (`concord peers`) may listen to every job
// (`.everyJob(secret:)`): it reads the job id from each datagram and verifies insecure beacons as such
// and tagged ones with the secret it was given, if any. An observer sends nothing.
//
// Drops are counted per `DropReason`; the first drop of each reason from each source address is logged in
// one line naming the reason (node and job ids are public; secrets and keys are never printed).
import ConcordCore
import ConcordDiscovery
import ConcordUV
import Foundation
import Synchronization

/// Announces this node to the other nodes of its job with UDP beacons, and tracks the nodes it hears.
///
/// ```swift
/// let service = try BeaconService(
///     credentials: JobCredentials(jobName: "train", authentication: .secret(secret)), nodeID: .random(),
///     advertisement: .init(host: "192.168.1.20", port: 40123, capabilities: BeaconService.localCapabilities()),
///     channel: .init(interfaceAddress: "192.168.1.20"))
/// _ = await service.waitForPeers(count: 3, deadline: .after(seconds: 10))
/// print(service.peers)
/// service.close()
/// ```
///
/// Call `close()` when done: until then the service keeps its socket, and its own loop keeps a thread.
public final class BeaconService: @unchecked Sendable {
    // @unchecked: mutable state is confined to the loop's driver; `published` is behind a Mutex.

    /// Where beacons travel: the multicast group and UDP port, and the interfaces used.
    public struct Channel: Sendable, Equatable {
        /// The group used when none is configured (administratively scoped, RFC 2365).
        public static let defaultGroup = "239.255.77.77"
        /// The UDP port used when none is configured.
        public static let defaultPort = 29577

        /// The IPv4 multicast group.
        public var group: String
        /// The UDP port every node binds (shared with SO_REUSEADDR).
        public var port: Int
        /// The address of the interface beacons leave from (IP_MULTICAST_IF).
        public var interfaceAddress: String
        /// The interfaces (by address) on which the group is joined; by default `interfaceAddress` only.
        public var listenInterfaces: [String]
        /// Where a second copy of every beacon goes, for networks that drop multicast; by default the
        /// directed broadcast address of `interfaceAddress`'s subnet (127.255.255.255 on loopback), nil
        /// when it has none. Set to nil to send multicast only.
        public var broadcastAddress: String?
        /// How many routers a beacon may cross (1: the local network only).
        public var multicastTTL = 1

        /// A channel on `group:port` through the interface with address `interfaceAddress`.
        public init(group: String = defaultGroup, port: Int = defaultPort, interfaceAddress: String) {
            self.group = group
            self.port = port
            self.interfaceAddress = interfaceAddress
            self.listenInterfaces = [interfaceAddress]
            self.broadcastAddress = Self.directedBroadcast(for: interfaceAddress)
        }

        /// The broadcast address of the subnet of the local IPv4 interface with address `address`
        /// (address | ~netmask, from getifaddrs(3)); nil when no interface has it or its subnet has none.
        public static func directedBroadcast(for address: String) -> String? {
            var list: UnsafeMutablePointer<ifaddrs>? = nil
            guard getifaddrs(&list) == 0 else { return nil }
            defer { freeifaddrs(list) }
            var wanted = in_addr()
            guard inet_pton(AF_INET, address, &wanted) == 1 else { return nil }
            var cursor = list
            while let entry = cursor?.pointee {
                cursor = entry.ifa_next
                guard let sa = entry.ifa_addr, Int32(sa.pointee.sa_family) == AF_INET, let mask = entry.ifa_netmask
                else { continue }
                let found = UnsafeRawPointer(sa).load(
                    fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_addr)!, as: in_addr.self)
                guard found.s_addr == wanted.s_addr else { continue }
                let netmask = UnsafeRawPointer(mask).load(
                    fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_addr)!, as: in_addr.self)
                guard netmask.s_addr != UInt32.max else { return nil }  // a /32 has no broadcast address
                var broadcast = in_addr(s_addr: found.s_addr | ~netmask.s_addr)
                var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                guard inet_ntop(AF_INET, &broadcast, &text, socklen_t(text.count)) != nil else { return nil }
                return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            return nil
        }

        /// The addresses of this host's IPv4 interfaces that are up (loopback included), for an observer
        /// that listens everywhere.
        ///
        /// - Throws: `DiscoveryError.system` when the interfaces cannot be listed.
        public static func localIPv4Interfaces() throws -> [String] {
            try NetworkInterface.host().filter { $0.isUp && !$0.isIPv6 }.map(\.address)
        }
    }

    /// What this node announces: where its TCP listener is, and what it can do.
    public struct Advertisement: Sendable, Equatable {
        /// The host or address of the TCP listener ("" means: the address the beacon came from).
        public var host: String
        /// The port of the TCP listener.
        public var port: UInt16
        /// Cores, memory, platform, throughput and label.
        public var capabilities: Beacon.Capabilities

        /// An advertisement from its fields.
        public init(host: String, port: UInt16, capabilities: Beacon.Capabilities) {
            self.host = host
            self.port = port
            self.capabilities = capabilities
        }
    }

    /// Whose beacons the service accepts.
    public enum Audience: Sendable {
        /// The nodes of this job, verified with its credentials; beacons of other jobs are dropped.
        case job(JobCredentials)
        /// Every job heard: insecure beacons verify as such, tagged ones with `secret` when one is given
        /// (dropped otherwise). For observers only.
        case everyJob(secret: JobSecret?)
    }

    /// Why a received datagram was not taken as a beacon.
    public enum DropReason: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
        /// A beacon of another job.
        case otherJob = "other job"
        /// A tagged beacon whose tag does not verify: another secret, or an altered datagram.
        case badMAC = "bad MAC"
        /// One side has a secret and the other none.
        case authenticationMismatch = "secret vs no secret"
        /// Another version of the beacon format.
        case otherVersion = "other version"
        /// Not a beacon at all, or a damaged one.
        case malformed = "malformed"

        /// The reason in a few words.
        public var description: String { rawValue }

        init(_ error: DiscoveryError) {
            switch error {
            case .otherJob: self = .otherJob
            case .badMAC: self = .badMAC
            case .authenticationMismatch: self = .authenticationMismatch
            case .protocolVersion: self = .otherVersion
            default: self = .malformed
            }
        }
    }

    /// What the service knows at one moment; published by the loop after every change.
    public struct Snapshot: Sendable {
        /// The live nodes of each job heard (this node excluded), sorted by node id. A job service always
        /// has an entry for its own job.
        public var peersByJob: [JobID: [PeerTable.Peer]] = [:]
        /// Datagrams dropped, per reason.
        public var dropped: [DropReason: Int] = [:]
        /// The node ids claimed by beacons whose tag did not verify (untrusted: anyone can claim any id), at
        /// most `BeaconService.badMACNodeLimit` of them, so that a flood of forged beacons cannot grow it.
        public var badMACNodes: Set<NodeID> = []
        /// Datagrams received, of any kind.
        public var datagramsReceived = 0
        /// This node's own beacons heard back (multicast loops back, and the broadcast copy too).
        public var ownBeaconsHeard = 0
        /// Beacon datagrams sent (a beacon to the group and to the broadcast address counts twice).
        public var beaconsSent = 0
        /// Sends that failed.
        public var sendErrors = 0
        /// The listening interfaces on which joining the group failed, with the reason.
        public var joinFailures: [String] = []

        /// Every live node heard, of every job, sorted by node id.
        public var peers: [PeerTable.Peer] { peersByJob.values.flatMap { $0 }.sorted { $0.nodeID < $1.nodeID } }

        /// Datagrams dropped for `reason`.
        public func dropped(_ reason: DropReason) -> Int { dropped[reason] ?? 0 }
    }

    /// The most claimed node ids `Snapshot.badMACNodes` keeps.
    public static let badMACNodeLimit = 256

    /// Milliseconds between beacons (the tick of a service's own event loop).
    public static let beaconIntervalMilliseconds: UInt64 = 250

    /// This node's id (an observer's is random and never sent).
    public let nodeID: NodeID
    /// Where beacons travel.
    public let channel: Channel
    /// Whose beacons are accepted.
    public let audience: Audience
    /// Seconds without a new beacon after which a node is gone.
    public let ttl: Double
    private let advertisement: Advertisement?
    private let loop: EventLoop
    private let ownsLoop: Bool
    private let log: (@Sendable (String) -> Void)?
    private let published = Mutex(Snapshot())

    // Loop-confined state.
    private var socket: DatagramSocket?
    private var destinations: [DatagramAddress] = []
    private var tables: [JobID: PeerTable] = [:]
    private var credentialsByJob: [JobID: (insecure: JobCredentials, secure: JobCredentials?)] = [:]
    private var counters = Snapshot()
    private var loggedDrops: Set<String> = []
    private var loggedSendFailures: Set<String> = []
    private var sequence: UInt64 = 0
    private var tickToken: Int?
    private var isClosed = false
    /// Whether the service's own loop closed without a leaked handle (nil: not closed yet, or the loop is
    /// shared).
    package private(set) var loopClosedCleanly: Bool?

    /// Starts announcing this node in `credentials`' job and listening for the others, on an event loop of
    /// its own (one thread).
    ///
    /// - Parameters:
    ///   - credentials: the job id, and its secret or the explicit choice of none.
    ///   - nodeID: this node's identity; its own beacons are recognised by it.
    ///   - advertisement: the TCP endpoint and capabilities to announce.
    ///   - channel: group, port and interfaces.
    ///   - ttl: seconds of silence after which a node is forgotten (default 3).
    ///   - log: receives one line per first drop of each reason from each source, and per first failure
    ///     of each send destination; nil: silent. Default: standard error.
    /// - Throws: `ConcordError` when the socket cannot be set up (port held without sharing, no multicast
    ///   route, an interface address that is not this host's), `DiscoveryError.fieldTooLong` when the
    ///   advertisement does not fit in a beacon.
    public convenience init(
        credentials: JobCredentials, nodeID: NodeID, advertisement: Advertisement, channel: Channel,
        ttl: Double = 3, log: (@Sendable (String) -> Void)? = BeaconService.standardErrorLog
    ) throws {
        let loop = try EventLoop(name: "concord-beacons", tickMilliseconds: Self.beaconIntervalMilliseconds)
        try self.init(
            audience: .job(credentials), nodeID: nodeID, advertisement: advertisement, channel: channel, ttl: ttl,
            log: log, loop: loop, ownsLoop: true)
    }

    /// The same on a loop shared with other users (a communicator's): beacons go out on its tick, and the
    /// caller stops the loop after `close()`.
    package convenience init(
        credentials: JobCredentials, nodeID: NodeID, advertisement: Advertisement, channel: Channel,
        ttl: Double = 3, log: (@Sendable (String) -> Void)? = BeaconService.standardErrorLog, loop: EventLoop
    ) throws {
        try self.init(
            audience: .job(credentials), nodeID: nodeID, advertisement: advertisement, channel: channel, ttl: ttl,
            log: log, loop: loop, ownsLoop: false)
    }

    /// Listens without announcing anything (for `concord peers`), on an event loop of its own.
    ///
    /// - Parameters:
    ///   - audience: one job, or every job heard.
    ///   - channel: group, port and the interfaces to listen on (`interfaceAddress` is not used to send).
    ///   - ttl: seconds of silence after which a node is forgotten.
    ///   - log: as for a node; nil by default.
    /// - Throws: `ConcordError` when the socket cannot be bound or the group joined on any interface.
    public convenience init(
        observing audience: Audience, channel: Channel, ttl: Double = 3, log: (@Sendable (String) -> Void)? = nil
    ) throws {
        let loop = try EventLoop(name: "concord-beacons", tickMilliseconds: Self.beaconIntervalMilliseconds)
        try self.init(
            audience: audience, nodeID: .random(), advertisement: nil, channel: channel, ttl: ttl, log: log,
            loop: loop, ownsLoop: true)
    }

    private init(
        audience: Audience, nodeID: NodeID, advertisement: Advertisement?, channel: Channel, ttl: Double,
        log: (@Sendable (String) -> Void)?, loop: EventLoop, ownsLoop: Bool
    ) throws {
        precondition(ttl > 0, "a peer TTL must be positive, got \(ttl)")
        self.audience = audience
        self.nodeID = nodeID
        self.advertisement = advertisement
        self.channel = channel
        self.ttl = ttl
        self.log = log
        self.loop = loop
        self.ownsLoop = ownsLoop
        do {
            if case .job(let credentials) = audience {
                tables[credentials.jobID] = PeerTable(selfID: nodeID, ttl: ttl)
                if let advertisement {  // a beacon that cannot be encoded fails here, not on every tick
                    _ = try beacon(advertisement, flags: []).encode(credentials: credentials)
                }
            }
            try loop.drive { try start() }
        } catch {
            if ownsLoop { loop.stop() }
            throw error
        }
    }

    /// One line on standard error.
    public static let standardErrorLog: @Sendable (String) -> Void = { line in
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    // MARK: - Reading the state

    /// What the service knows now (readable from any thread; never waits for the loop).
    public var snapshot: Snapshot { published.withLock { $0 } }

    /// The live nodes heard (this node excluded), sorted by node id.
    public var peers: [PeerTable.Peer] { snapshot.peers }

    /// Waits until `condition` holds for the snapshot or `deadline` passes, without blocking a thread
    /// (polls every 10 ms); returns whether it held.
    public func waitUntil(deadline: Deadline, _ condition: (Snapshot) -> Bool) async -> Bool {
        while true {
            if condition(snapshot) { return true }
            if deadline.hasPassed { return false }
            try? await Task.sleep(for: .milliseconds(min(10, max(1, deadline.remainingMilliseconds ?? 10))))
        }
    }

    /// Waits until at least `count` nodes are heard or `deadline` passes; returns whether they were.
    public func waitForPeers(count: Int, deadline: Deadline) async -> Bool {
        await waitUntil(deadline: deadline) { $0.peers.count >= count }
    }

    /// Waits until `condition` holds or `deadline` passes, driving the loop on the calling thread; returns
    /// whether it held. Not from inside a libuv callback of this loop.
    public func waitUntilBlocking(deadline: Deadline, _ condition: (Snapshot) -> Bool) -> Bool {
        loop.drive {
            if isClosed { return condition(snapshot) }  // an own loop is stopped by then: nothing to turn
            return loop.run(until: { condition(snapshot) }, deadline: deadline)
        }
    }

    /// Waits until at least `count` nodes are heard or `deadline` passes, driving the loop on the calling
    /// thread; returns whether they were.
    public func waitForPeersBlocking(count: Int, deadline: Deadline) -> Bool {
        waitUntilBlocking(deadline: deadline) { $0.peers.count >= count }
    }

    // MARK: - Stopping

    /// Stops announcing and listening. With `announcingDeparture`, a last beacon flagged `leaving` tells
    /// the others to forget this node now rather than after their TTL. A service with its own loop stops
    /// it (and records whether a handle leaked). Idempotent.
    public func close(announcingDeparture: Bool = true) {
        let closedNow = loop.drive { () -> Bool in
            guard !isClosed else { return false }
            isClosed = true
            if let tickToken { loop.removeTick(tickToken) }
            tickToken = nil
            if announcingDeparture, advertisement != nil { sendBeacon(flags: .leaving) }
            socket?.close()
            socket = nil
            publish(now: .now)
            return true
        }
        if closedNow && ownsLoop && !loop.isLoopThread {
            loop.stop()
            loopClosedCleanly = loop.closedCleanly
        }
    }

    // MARK: - On the loop

    private func start() throws {
        let socket = try DatagramSocket(loop: loop)
        do {
            try socket.bind(host: "0.0.0.0", port: channel.port, reuseAddress: true)
            var joined = 0
            var firstFailure: Error?
            for interface in channel.listenInterfaces {
                do {
                    try socket.joinMulticast(group: channel.group, interfaceAddress: interface)
                    joined += 1
                } catch {
                    firstFailure = firstFailure ?? error
                    counters.joinFailures.append("\(interface): \(error)")
                }
            }
            if joined == 0 {
                throw firstFailure
                    ?? ConcordError.invalidConfiguration(
                        "no interface to listen for beacons on (listenInterfaces is empty)")
            }
            if advertisement != nil {
                try socket.setMulticastInterface(channel.interfaceAddress)
                try socket.setMulticastTTL(channel.multicastTTL)
                destinations = [try DatagramAddress(host: channel.group, port: channel.port)]
                if let broadcast = channel.broadcastAddress {
                    try socket.setBroadcast(true)
                    destinations.append(try DatagramAddress(host: broadcast, port: channel.port))
                }
            }
            try socket.startReceiving { [weak self] bytes, source in self?.receive(bytes, from: source) }
        } catch {
            socket.close()
            throw error
        }
        self.socket = socket
        tickToken = loop.addTick { [weak self] in self?.tick() }
        if advertisement != nil { sendBeacon(flags: []) }  // the first beacon now, not one tick later
        publish(now: .now)
    }

    private func tick() {
        let now = ContinuousClock.now
        for job in Array(tables.keys) { tables[job]!.expire(now: now) }
        if advertisement != nil { sendBeacon(flags: []) }
        publish(now: now)
    }

    private func beacon(_ advertisement: Advertisement, flags: Beacon.Flags) -> Beacon {
        Beacon(
            nodeID: nodeID, host: advertisement.host, port: advertisement.port,
            capabilities: advertisement.capabilities, sequence: sequence,
            sentAtMilliseconds: UInt64(ProcessInfo.processInfo.systemUptime * 1000), flags: flags)
    }

    private func sendBeacon(flags: Beacon.Flags) {
        guard let advertisement, let socket, case .job(let credentials) = audience else { return }
        sequence += 1
        let datagram: [UInt8]
        do {
            datagram = try beacon(advertisement, flags: flags).encode(credentials: credentials)
        } catch {
            counters.sendErrors += 1  // cannot happen: the advertisement was encoded once in init
            return
        }
        for destination in destinations {
            do {
                try socket.send(datagram, to: destination)
                counters.beaconsSent += 1
            } catch {
                counters.sendErrors += 1
                if loggedSendFailures.insert(destination.description).inserted {
                    log?("concord: node \(nodeID.shortDescription): cannot send beacons to \(destination): \(error)")
                }
            }
        }
    }

    private func receive(_ datagram: [UInt8], from source: DatagramAddress) {
        counters.datagramsReceived += 1
        let now = ContinuousClock.now
        switch verify(datagram) {
        case .success(let (job, beacon)):
            var table = tables[job] ?? PeerTable(selfID: nodeID, ttl: ttl)
            if table.observe(beacon, from: source.host, at: now) == .ownBeacon { counters.ownBeaconsHeard += 1 }
            tables[job] = table
        case .failure(let error):
            let reason = DropReason(error)
            counters.dropped[reason, default: 0] += 1
            if case .badMAC(let node) = error, counters.badMACNodes.count < Self.badMACNodeLimit {
                counters.badMACNodes.insert(node)
            }
            if loggedDrops.insert("\(reason.rawValue) \(source.host)").inserted {
                log?(
                    "concord: node \(nodeID.shortDescription): dropped a beacon from \(source.host) (\(reason)): "
                        + "\(error); further ones for this reason from there are only counted")
            }
        }
        publish(now: now)
    }

    /// The job and beacon in `datagram`, checked against the audience's credentials.
    private func verify(_ datagram: [UInt8]) -> Result<(JobID, Beacon), DiscoveryError> {
        let credentials: JobCredentials
        switch audience {
        case .job(let mine):
            credentials = mine
        case .everyJob(let secret):
            credentials = observerCredentials(for: datagram, secret: secret)
        }
        do {
            return .success((credentials.jobID, try Beacon.decode(datagram, credentials: credentials)))
        } catch let error as DiscoveryError {
            return .failure(error)
        } catch {
            return .failure(.malformed(what: "beacon", detail: "\(error)"))
        }
    }

    /// For an observer of every job: credentials for the job the datagram names (bytes 8..<16, little
    /// endian, in beacon format v1), insecure when the datagram is untagged (byte 6 is 0), else with the
    /// observer's secret if it has one. Malformed datagrams get any credentials: decoding refuses them.
    private func observerCredentials(for datagram: [UInt8], secret: JobSecret?) -> JobCredentials {
        var raw: UInt64 = 0
        if datagram.count >= 16 {
            for i in (8..<16).reversed() { raw = raw << 8 | UInt64(datagram[i]) }
        }
        let job = JobID(rawValue: raw)
        let tagged = datagram.count > 6 && datagram[6] != 0
        var entry =
            credentialsByJob[job]
            ?? (JobCredentials(jobID: job, authentication: .insecure), nil)
        if tagged, entry.secure == nil, let secret {
            entry.secure = JobCredentials(jobID: job, authentication: .secret(secret))
        }
        credentialsByJob[job] = entry
        return tagged ? (entry.secure ?? entry.insecure) : entry.insecure
    }

    private func publish(now: ContinuousClock.Instant) {
        var snapshot = counters
        snapshot.peersByJob = tables.mapValues { $0.members(now: now) }
        published.withLock { $0 = snapshot }
    }
}

extension BeaconService {
    /// This machine's capabilities: logical cores and physical memory from ProcessInfo, the operating
    /// system and architecture this build targets, and `label` cut to the 64 bytes a beacon carries.
    ///
    /// - Parameters:
    ///   - label: a short name for tables (default: the host name).
    ///   - reduceGigabytesPerSecond: measured float32 sum-reduce throughput (0: not measured).
    public static func localCapabilities(
        label: String = ProcessInfo.processInfo.hostName, reduceGigabytesPerSecond: Float = 0
    ) -> Beacon.Capabilities {
        var cut = ""
        for character in label {
            if cut.utf8.count + String(character).utf8.count > Beacon.labelLimit { break }
            cut.append(character)
        }
        return Beacon.Capabilities(
            cores: UInt16(clamping: ProcessInfo.processInfo.activeProcessorCount),
            memoryBytes: ProcessInfo.processInfo.physicalMemory, os: operatingSystem, arch: architecture,
            reduceGigabytesPerSecond: reduceGigabytesPerSecond, label: cut)
    }

    /// The operating system this build targets, as beacons name it.
    public static var operatingSystem: String {
        #if os(Linux)
            return "linux"
        #elseif os(macOS)
            return "macos"
        #elseif os(iOS)
            return "ios"
        #elseif os(Android)
            return "android"
        #elseif os(Windows)
            return "windows"
        #else
            return "unknown"
        #endif
    }

    /// The CPU architecture this build targets, as beacons name it.
    public static var architecture: String {
        #if arch(x86_64)
            return "x86_64"
        #elseif arch(arm64)
            return "arm64"
        #elseif arch(arm)
            return "arm"
        #elseif arch(riscv64)
            return "riscv64"
        #else
            return "unknown"
        #endif
    }
}

// One member of a job that finds the others with no addresses given, and agrees with them on who is in.
//
//   beacons (BeaconService, multicast + broadcast) ──▶ the nodes of this job heard, with their host:port
//   every 20 ms: MembershipAgreement.tick(view) ──▶ propose / accept / commit, as sealed unicast datagrams
//   every 200 ms: ping every node heard (12 KiB) ──▶ pong ──▶ round trips (the minimum seen) ──▶ its RTT row
//   commit ──▶ the group: members, and the ring order the coordinator chose from every member's RTT row
//
// With a static list of addresses (`--peers host:port,…` / CONCORD_PEERS) a member takes the first entry it
// can bind on this host as its own and pings the others directly: a node is in view once a sealed datagram
// from it arrived (within the last 3 s), which also tells its node id and address. Beacons still go out.
//
// Everything runs on one event loop driven by the caller. Ranks are positions in the agreed ring (rank 0
// is where the ring starts: the first member of the ring order), so the ring the collectives run on is
// the one the network measurements chose; with no measurements it is node-id order. Each member's UDP
// port doubles as its TCP port for the job: rank 0's store listens on it, so the job needs no other
// address. After the group starts, keep the member open (`close()` later) while the job runs: it answers
// members whose commit was lost, for as long as they retry.
import ConcordCore
import ConcordDiscovery
import ConcordKernels
import ConcordUV
import Foundation

/// What a discovering member needs: the job, its secret, the start condition and the network to use.
public struct DiscoveryOptions: Sendable {
    public var jobName: String
    public var authentication: Authentication
    /// Start once this many members are present.
    public var worldSize: Int?
    /// Or start with at least this many once nobody new appeared for `settleSeconds`.
    public var minSize: Int?
    public var settleSeconds: Double = 2
    /// NCCL-style interface choice (`CONCORD_IFACE`: `eth0`, `^lo,docker`, `=eth1`); nil: the default route's.
    public var interfaces: String?
    public var group = BeaconService.Channel.defaultGroup
    public var port = BeaconService.Channel.defaultPort
    /// Seconds to wait for the group to form.
    public var timeout: Double = 60
    /// A short name shown by `concord peers`.
    public var label = ""
    /// Every member's `host:port`, when the members are listed instead of (or besides) discovered.
    public var staticPeers: [String] = []

    public init(jobName: String, authentication: Authentication, worldSize: Int?, minSize: Int? = nil) {
        self.jobName = jobName
        self.authentication = authentication
        self.worldSize = worldSize
        self.minSize = minSize
    }
}

/// The agreed group, as this member sees it.
public struct DiscoveredGroup: Sendable {
    /// This member's rank: its position in the agreed ring.
    public let rank: Int
    public let worldSize: Int
    /// Every member by rank: node id and the host:port it advertised.
    public let members: [(node: NodeID, host: String, port: Int)]
    /// Human-readable lines: the members, the ring, this member's measured round trips.
    public let summary: [String]
    /// Rank 0's address: where the job's store listens.
    public var master: (host: String, port: Int) { (members[0].host, members[0].port) }
}

/// Discovery and membership agreement for one member (see the file comment).
public final class DiscoveryMember: @unchecked Sendable {
    public let node: NodeID
    public let host: String
    public let port: Int
    private let options: DiscoveryOptions
    private let credentials: JobCredentials
    private let loop: EventLoop
    private let beacons: BeaconService
    private let socket: DatagramSocket
    private var agreement: MembershipAgreement
    private var rtt: [NodeID: Double] = [:]
    private var pending: [UInt64: (node: NodeID, sent: ContinuousClock.Instant)] = [:]
    private var started: MembershipGroup?
    /// Nodes heard directly (sealed datagrams), with their address: the static list's members.
    private var heard: [NodeID: (address: DatagramAddress, host: String, port: Int, last: ContinuousClock.Instant)] =
        [:]
    private let listed: [DatagramAddress]
    private var warnings: [String] = []
    private var closed = false

    /// Chooses the interface, binds this member's port (UDP for the job's messages, and free on TCP for
    /// its store or ring), and starts announcing it.
    public init(options: DiscoveryOptions) throws {
        guard options.worldSize != nil || options.minSize != nil else {
            throw ConcordError.invalidConfiguration(
                "discovery needs a world size (--world-size) or a minimum size (--min-size)")
        }
        if let n = options.worldSize, n < 1 {
            throw ConcordError.invalidConfiguration("--world-size must be at least 1")
        }
        self.options = options
        credentials = JobCredentials(jobName: options.jobName, authentication: options.authentication)
        var host = try Self.advertisedAddress(options.interfaces)
        var own: (host: String, port: Int)?
        var listed: [DatagramAddress] = []
        for entry in options.staticPeers {
            guard let colon = entry.lastIndex(of: ":"), let p = Int(entry[entry.index(after: colon)...]) else {
                throw ConcordError.invalidConfiguration("peer '\(entry)' is not host:port")
            }
            listed.append(try DatagramAddress(host: String(entry[..<colon]), port: p))
        }
        self.listed = listed
        let loop = try EventLoop(
            name: "concord-discovery", tickMilliseconds: BeaconService.beaconIntervalMilliseconds)
        let policy: MembershipPolicy =
            options.worldSize.map { .exactly($0, rttWaitSeconds: 1) }
            ?? .atLeast(options.minSize!, settleSeconds: options.settleSeconds, rttWaitSeconds: 1)
        let node = NodeID.random()
        let socket: DatagramSocket
        let port: Int
        let beacons: BeaconService
        do {
            if listed.isEmpty {
                (socket, port) = try loop.drive { try Self.bindJobPort(loop: loop) }
            } else {
                (socket, own) = try loop.drive { try Self.bindListedPort(loop: loop, listed: listed) }
                (host, port) = (own!.host, own!.port)
            }
            beacons = try BeaconService(
                credentials: credentials, nodeID: node,
                advertisement: .init(
                    host: host, port: UInt16(port),
                    capabilities: BeaconService.localCapabilities(
                        label: options.label, reduceGigabytesPerSecond: Self.measureReduceThroughput())),
                channel: .init(group: options.group, port: options.port, interfaceAddress: host), loop: loop)
        } catch {
            loop.stop()
            throw error
        }
        (self.host, self.loop, self.node, self.socket, self.port, self.beacons) = (
            host, loop, node, socket, port, beacons
        )
        agreement = MembershipAgreement(nodeID: node, policy: policy)
        try loop.drive { try socket.startReceiving { [unowned self] bytes, from in received(bytes, from: from) } }
    }

    /// Runs discovery and the agreement on the calling thread until the group starts.
    /// - Throws: `ConcordError.joinTimeout` naming how many members were heard when the deadline passes.
    public func run() throws -> DiscoveredGroup {
        let deadline = Deadline.after(seconds: options.timeout)
        var nextPing = ContinuousClock.now
        while started == nil {
            if deadline.hasPassed {
                let heard = view().count + 1
                throw ConcordError.invalidConfiguration(
                    "job \(options.jobName): no group formed within \(options.timeout) s; \(heard) member(s) of "
                        + "\(options.worldSize.map(String.init) ?? "at least \(options.minSize!)") present "
                        + "(same --job, secret, multicast group \(options.group):\(options.port)?)")
            }
            loop.drive {
                let now = ContinuousClock.now
                if now >= nextPing {
                    ping()
                    nextPing = now + .milliseconds(200)
                }
                perform(agreement.tick(view: view(), now: now))
                _ = loop.run(until: { self.started != nil }, deadline: .after(seconds: 0.02))
            }
        }
        return try group(started!)
    }

    /// Stops announcing and answering (after the job, or when giving up).
    public func close() {
        guard !closed else { return }
        closed = true
        beacons.close()
        loop.drive { socket.close() }
        loop.stop()
    }

    deinit { close() }

    // MARK: - On the loop

    private func perform(_ outgoing: [MembershipAgreement.Outgoing]) {
        for item in outgoing {
            switch item {
            case .send(let message, let to): send(.membership, message.encode(), to: to)
            case .start(let group): started = started ?? group
            case .warning(let text): warnings.append(text)
            }
        }
    }

    /// The nodes in view: heard in beacons, or directly within the last 3 s.
    private func view() -> [NodeID] {
        let now = ContinuousClock.now
        let direct = heard.filter { now - $0.value.last < .seconds(3) }.map(\.key)
        return Array(Set(beacons.peers.map(\.nodeID) + direct))
    }

    private func address(of node: NodeID) -> DatagramAddress? {
        if let direct = heard[node] { return direct.address }
        guard let peer = beacons.peers.first(where: { $0.nodeID == node }) else { return nil }
        return try? DatagramAddress(host: peer.host, port: Int(peer.port))
    }

    private func send(_ kind: SealedDatagram.Kind, _ body: [UInt8], to node: NodeID) {
        guard let address = address(of: node) else { return }
        send(kind, body, to: address)
    }

    private func send(_ kind: SealedDatagram.Kind, _ body: [UInt8], to address: DatagramAddress) {
        try? socket.send(
            SealedDatagram(kind: kind, sender: node, body: body).seal(credentials: credentials), to: address)
    }

    private func ping() {
        let now = ContinuousClock.now
        pending = pending.filter { now - $0.value.sent < .seconds(2) }
        for peer in view() {
            let nonce = UInt64.random(in: 0...UInt64.max)
            pending[nonce] = (peer, now)
            send(.ping, withUnsafeBytes(of: nonce.littleEndian, Array.init) + Self.probePadding, to: peer)
        }
        // Listed addresses not heard from yet: a ping makes them answer (and so enter the view).
        let known = Set(heard.values.map(\.address))
        for address in listed where address.port != port || address.host != host {
            if !known.contains(address) { send(.ping, [UInt8](repeating: 0, count: 8), to: address) }
        }
        if !rtt.isEmpty { agreement.recordRTT(rtt) }
    }

    private func received(_ bytes: [UInt8], from: DatagramAddress) {
        guard let datagram = try? SealedDatagram.open(bytes, credentials: credentials), datagram.sender != node else {
            return  // another job, another secret, or garbage: the agreement never sees it
        }
        if !listed.isEmpty {
            heard[datagram.sender] = (from, from.host, from.port, .now)
        }
        switch datagram.kind {
        case .membership:
            guard let message = try? MembershipMessage.decode(datagram.body) else { return }
            perform(agreement.handle(message, from: datagram.sender, now: .now))
        case .ping:
            guard datagram.body.count >= 8 else { return }
            send(.pong, Array(datagram.body.prefix(8)), to: datagram.sender)
        case .pong:
            guard datagram.body.count == 8 else { return }
            let nonce = datagram.body.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
            guard let (peer, sent) = pending.removeValue(forKey: nonce), peer == datagram.sender else { return }
            let seconds =
                Double((ContinuousClock.now - sent).components.attoseconds) / 1e18
                + Double((ContinuousClock.now - sent).components.seconds)
            rtt[peer] = min(rtt[peer] ?? .infinity, seconds)
        }
    }

    /// The group with ranks = ring positions, and the lines that describe it.
    private func group(_ group: MembershipGroup) throws -> DiscoveredGroup {
        var peers: [NodeID: (host: String, port: Int)] = [:]
        for peer in beacons.peers { peers[peer.nodeID] = (peer.host, Int(peer.port)) }
        for (id, direct) in heard { peers[id] = (direct.host, direct.port) }
        let byRank = group.ring.ranks.map { group.members[$0] }
        var members: [(node: NodeID, host: String, port: Int)] = []
        for id in byRank {
            if id == node {
                members.append((id, host, port))
            } else if let peer = peers[id] {
                members.append((id, peer.host, peer.port))
            } else {
                throw ConcordError.invalidConfiguration("job \(options.jobName): member \(id) is no longer heard")
            }
        }
        let rank = byRank.firstIndex(of: node)!
        var summary = ["job \(options.jobName): \(members.count) members agreed (\(group.proposalID))"]
        for (r, m) in members.enumerated() {
            let trip = rtt[m.node].map { String(format: ", rtt %.3f ms", $0 * 1e3) } ?? ""
            summary.append(
                "rank \(r) = node \(m.node.shortDescription) at \(m.host):\(m.port)\(r == rank ? " (this one)" : trip)")
        }
        summary.append("ring: " + (0..<members.count).map(String.init).joined(separator: " → ") + " → 0")
        // This member's two ring links, as it measured them (every member prints its own: all links appear).
        let n = members.count
        for (from, to) in n > 1 ? [((rank + n - 1) % n, rank), (rank, (rank + 1) % n)] : [] {
            let other = members[from == rank ? to : from].node
            let figure = rtt[other].map { String(format: "rtt %.3f ms", $0 * 1e3) } ?? "not measured"
            summary.append("link \(from) → \(to): \(figure)")
        }
        summary += warnings
        return DiscoveredGroup(rank: rank, worldSize: members.count, members: members, summary: summary)
    }

    /// A ping carries 12 KiB: its round trip then reflects a link's rate as well as its latency (a ring
    /// moves bulk data, so a slow link must look slow even when idle pings cross it as fast as any other).
    /// 12 KiB take 5 ms at 20 Mbit/s, 1 ms at 100 Mbit/s, 0.1 ms at 1 Gbit/s; the pong is 8 bytes.
    private static let probePadding = [UInt8](repeating: 0, count: 12 << 10)

    /// GB/s of this device's float32 sum kernel on 1 MiB buffers (in cache), the best of a few runs: what
    /// beacons advertise, for sizing work by device speed.
    static func measureReduceThroughput() -> Float {
        let count = 1 << 18
        let a = UnsafeMutableRawPointer.allocate(byteCount: count * 4, alignment: 64)
        let b = UnsafeMutableRawPointer.allocate(byteCount: count * 4, alignment: 64)
        defer {
            a.deallocate()
            b.deallocate()
        }
        a.initializeMemory(as: Float.self, repeating: 1, count: count)
        b.initializeMemory(as: Float.self, repeating: 0.5, count: count)
        let reducer = ReduceKernels.reducer(op: .sum, dataType: .float32)
        var best = Duration.seconds(1)
        for _ in 0..<8 {
            let start = ContinuousClock.now
            reducer.combine(a, b, count)
            best = min(best, ContinuousClock.now - start)
        }
        let seconds = Double(best.components.attoseconds) / 1e18 + Double(best.components.seconds)
        return seconds > 0 ? Float(Double(count * 4) / seconds / 1e9) : 0
    }

    // MARK: - Setup

    /// The address to advertise: the interface chosen by `spec`, else the default route's, else any up
    /// non-loopback one, else loopback.
    static func advertisedAddress(_ spec: String?) throws -> String {
        let interfaces = try NetworkInterface.host().filter { !$0.isIPv6 }
        let route = (try? String(contentsOfFile: "/proc/net/route", encoding: .utf8)).flatMap {
            NetworkInterface.defaultRouteInterface(procNetRoute: $0)
        }
        let filter = spec.map { InterfaceFilter($0) } ?? .any
        guard
            let chosen = chooseAdvertisedAddress(interfaces: interfaces, filter: filter, defaultRouteInterface: route)
        else {
            throw ConcordError.invalidConfiguration(
                "no IPv4 interface matches CONCORD_IFACE=\(spec ?? "") (interfaces: "
                    + interfaces.map { "\($0.name) \($0.address)" }.joined(separator: ", ") + ")")
        }
        return chosen.address
    }

    /// A port free for TCP (the store or ring listener later) and bound for UDP now.
    private static func bindJobPort(loop: EventLoop) throws -> (DatagramSocket, Int) {
        for _ in 0..<20 {
            let candidate = try FreePort.tcp()
            let socket = try DatagramSocket(loop: loop)
            do {
                try socket.bind(host: "0.0.0.0", port: candidate, reuseAddress: false)
                return (socket, candidate)
            } catch {
                socket.close()
            }
        }
        throw ConcordError.invalidConfiguration("could not find a port free for both UDP and TCP")
    }

    /// The first listed address of this host whose port this process can bind (several members may run on
    /// one host, each taking the next free entry).
    private static func bindListedPort(loop: EventLoop, listed: [DatagramAddress]) throws -> (
        DatagramSocket, (host: String, port: Int)
    ) {
        let local = Set(((try? NetworkInterface.host()) ?? []).map(\.address) + ["127.0.0.1", "0.0.0.0"])
        for address in listed where local.contains(address.host) {
            let socket = try DatagramSocket(loop: loop)
            do {
                try socket.bind(host: "0.0.0.0", port: address.port, reuseAddress: false)
                return (socket, (address.host, address.port))
            } catch {
                socket.close()
            }
        }
        throw ConcordError.invalidConfiguration(
            "none of the listed peers (" + listed.map(\.description).joined(separator: ", ")
                + ") is an address of this host with a free port")
    }
}

// The libuv transport: a rank's two ring links and the rendezvous that opens them.
//
// Rendezvous (all on the loop thread, bounded by the join deadline):
//   1. rank 0 starts the store at the master port; every rank listens on a port of its own (0 = any);
//   2. every rank connects to the store, publishes `rank/<r> = host:port` (rank 0 also a random session);
//   3. every rank waits for all addresses (a timeout names the ranks that never joined);
//   4. every rank connects to its right neighbour and says hello (rank, world size, session); it accepts
//      its left neighbour's hello and answers welcome (or refuse, with the reason, to a stranger).
//
//      rank r-1 ──hello──▶ rank r ──hello──▶ rank r+1     (two sockets per rank: receive from the left,
//               ◀─welcome─        ◀─welcome─               send to the right; for n = 2, two between the pair)
//
// Liveness: every 250 ms the loop's tick sends a heartbeat on each link that has written nothing for a
// second, and fails a link that has heard nothing for the peer timeout (unless the link is parked
// because the peer is ahead of us, which proves it alive). A failure records the first error, tells the
// other neighbour with an abort frame (so the whole ring learns the root cause within milliseconds),
// and makes every wait throw it. A peer that said bye is gone cleanly: only a later use of it fails.
internal import CLibUV
import ConcordCore
import Foundation

/// What a rank needs to join: its place in the group and where the master is.
public struct JoinOptions: Sendable {
    public var rank: Int
    public var worldSize: Int
    public var masterHost: String
    public var masterPort: Int
    /// Whether this process serves the store (rank 0 by default).
    public var hostsStore: Bool
    /// Address the ring listener binds ("0.0.0.0": every interface).
    public var listenHost = "0.0.0.0"
    /// Port the ring listener binds (0: any free port).
    public var listenPort = 0
    /// Host published to the other ranks; nil: the local address of the connection to the master.
    public var advertisedHost: String?
    /// Seconds for the whole join.
    public var joinTimeout: Double = 60
    /// Seconds of silence after which a peer is declared lost.
    public var peerTimeout: Double = 10
    /// How ring neighbours on this host are reached.
    public var medium = LinkMedium.auto
    /// Microseconds a wait for a small transfer polls before it sleeps (0: never).
    public var spinMicroseconds = 50
    /// Bytes of every TCP link's receive buffer; 0: the kernel's autotuning (see `defaultReceiveBufferBytes`).
    public var receiveBufferBytes = UVTransport.defaultReceiveBufferBytes
    /// Whether data frames of 1 MiB or more go to TCP sockets without a copy (see PeerLink.swift,
    /// "Zero-copy sends"); false sends every byte the plain way.
    public var zeroCopySends = true
    /// Congestion control of TCP links to ranks on this machine ("": the system's; see LinkTuning.swift).
    public var sameMachineCongestionControl = LinkTuning.defaultSameMachineCongestionControl
    /// This machine's name for the rendezvous: ranks that publish the same one share memory.
    public var node = UVTransport.nodeIdentity
    /// Authenticates every connection (store, ring, partners) before anything else crosses it; nil: none.
    public var authenticator: (any LinkAuthenticator)?

    public init(rank: Int, worldSize: Int, masterHost: String, masterPort: Int, hostsStore: Bool? = nil) {
        self.rank = rank
        self.worldSize = worldSize
        self.masterHost = masterHost
        self.masterPort = masterPort
        self.hostsStore = hostsStore ?? (rank == 0)
    }
}

/// A `Transport` over libuv TCP between ring neighbours. Every call on its loop's thread.
public final class UVTransport: Transport, @unchecked Sendable {
    public let rank: Int
    public let worldSize: Int
    public let loop: EventLoop
    let options: JoinOptions
    // `@exclusivity(unchecked)` on the data-path state: only the thread driving the loop touches it, never in
    // overlapping accesses, and Swift's dynamic exclusivity checks on class properties cost 10-15% of a
    // 4 KiB all-reduce (docs/algorithms.md, "Small messages").
    @exclusivity(unchecked) private var left: PeerLink?
    @exclusivity(unchecked) private var right: PeerLink?
    /// Direct links to the partners of recursive doubling that are not ring neighbours, by rank (one
    /// connection each, used both ways); welcomed ones only once the join is done.
    @exclusivity(unchecked) private var partners: [Int: PeerLink] = [:]
    private var welcomedPartners = Set<Int>()
    /// Every link a collective may use.
    private var links: [PeerLink] { [left, right].compactMap { $0 } + partners.values }
    /// Data to the right neighbour through shared memory (same host), instead of `right`'s socket.
    @exclusivity(unchecked) private var sharedOut: SharedMemoryLink?
    /// Data from the left neighbour through shared memory, instead of `left`'s socket.
    @exclusivity(unchecked) private var sharedIn: SharedMemoryLink?
    /// The channel offered to the right neighbour in our hello, until its welcome says yes or no.
    private var offeredChannel: (name: String, channel: SharedMemoryChannel)?
    /// Why a neighbour on this host is reached over TCP after all (for `CONCORD_TRANSPORT=shm` errors).
    private var sharedMemoryProblems: [String] = []
    private var store: StoreServer?
    private var listener: Listener?
    private var candidates: [ObjectIdentifier: PeerLink] = [:]
    private var session = ""
    private var joinProblem: ConcordError?
    private var welcomed = false
    private var earlyHellos: [(PeerLink, [UInt8])] = []
    private var refusal: String?
    private var tickID: Int?
    @exclusivity(unchecked) private var nextID = 0
    /// Posted transfers not yet waited for, in posting order (so by id): their payload bytes, whether they
    /// go through shared memory or to a peer on this machine, and whether they completed.
    @exclusivity(unchecked) private var outstanding: [(id: Int, bytes: Int, shared: Bool, local: Bool, done: Bool)] = []
    /// Microseconds a wait for a small transfer polls before sleeping (see `EventLoop.run(until:)`);
    /// at least 1000 with yields when ranks outnumber cores on this machine.
    public private(set) var spinMicroseconds = 0
    /// Microseconds a wait for a larger TCP transfer (above `spinLimitBytes`) with a peer on this machine
    /// polls before sleeping: 1000 when every rank on this machine has a core (the peer produces the bytes
    /// at memory speed, and a sleep between two pieces of a large frame costs a wake-up), yielding between
    /// polls so that the rank's own other threads (a training step computing while an async all-reduce
    /// runs) keep the CPU; 0 when ranks outnumber cores (a spinning rank would take the CPU the kernel
    /// needs to copy the bytes for the rank it waits for), 0 with spinning off. Large transfers with a
    /// peer on another machine never spin: there the network paces the bytes, a 1 ms spin after every
    /// piece would never end, and the CPU would burn for the whole transfer.
    public private(set) var largeSpinMicroseconds = 0
    /// TCP transfers of at most this many bytes spin for `spinMicroseconds`, larger ones for
    /// `largeSpinMicroseconds`. Shared-memory transfers always spin for `spinMicroseconds`: there the
    /// ranks themselves move the bytes, and a spinning rank notices its peer's progress without the
    /// wake-up a doorbell costs.
    public var spinLimitBytes = 256 << 10
    /// Whether the ranks on this machine outnumber its cores.
    @exclusivity(unchecked) private var oversubscribed = false
    /// The first failure; once set, every call throws it.
    @exclusivity(unchecked) public private(set) var failure: ConcordError?
    @exclusivity(unchecked) private var isClosed = false

    /// The machine of every rank (`nodeIdentity` as each published it); ranks on one machine share it.
    public private(set) var nodes: [String] = [] {
        didSet {
            sameNode = nodes.indices.contains(rank) ? nodes.map { $0 == nodes[rank] } : []
            ranksShareOneMachine = !nodes.isEmpty && !sameNode.contains(false)
        }
    }
    /// Whether each rank runs on this rank's machine (from `nodes`, so not recomputed per transfer).
    private var sameNode: [Bool] = []

    /// Ranks running on this rank's machine, itself included.
    public var ranksOnThisNode: Int { max(1, sameNode.filter { $0 }.count) }

    /// Identifies this machine: the host name and the kernel's boot id (two containers on one host, which
    /// cannot share memory, have different host names).
    public static let nodeIdentity: String = {
        let boot = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)) ?? ""
        return ProcessInfo.processInfo.hostName + "/" + boot.trimmingCharacters(in: .whitespacesAndNewlines)
    }()

    /// Spinning saves a wake-up per step when every rank has a core; when ranks outnumber cores a spinning
    /// rank takes the core the rank it waits for needs, so it yields between polls (and may spin longer:
    /// a yield costs little when nobody else is runnable).
    private func configureSpinning() {
        oversubscribed = ranksOnThisNode > ProcessInfo.processInfo.activeProcessorCount
        spinMicroseconds = options.spinMicroseconds
        if oversubscribed && spinMicroseconds > 0 { spinMicroseconds = max(spinMicroseconds, 1000) }
        largeSpinMicroseconds = oversubscribed || spinMicroseconds == 0 ? 0 : max(spinMicroseconds, 1000)
    }

    /// The receive buffer links get unless told otherwise: 4 MiB where the system allows a buffer that
    /// large (`net.core.rmem_max`), else 0 (autotuning, since a smaller fixed buffer would cap the window).
    ///
    /// Why fixed: autotuning starts at 128 KiB and grows by what it sees in the first round trips. When a
    /// job's first collectives move 1 MiB frames both ways, it settled on buffers that left the 1 MiB
    /// all-reduce at N = 2 at 540-1800 µs instead of 340-450 µs for the rest of the run (measured over
    /// many runs; 4 MiB from the start removes the slow runs and costs nothing measurable at other sizes).
    public static let defaultReceiveBufferBytes: Int = {
        let wanted = 4 << 20
        guard let text = try? String(contentsOfFile: "/proc/sys/net/core/rmem_max", encoding: .utf8),
            let most = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), most >= wanted
        else { return 0 }
        return wanted
    }()

    /// The port of the store when this rank hosts it.
    public var storePort: Int? { store?.port }

    /// Joins the group: rendezvous through the store, then connects the ring. On the loop thread.
    /// - Throws: `ConcordError` naming this rank: `.addressInUse`, `.masterUnreachable`, `.joinTimeout`
    ///   (listing the ranks that never joined), `.joinRefused`, `.protocolVersion`.
    public init(loop: EventLoop, options: JoinOptions) throws {
        precondition(loop.isLoopThread, "UVTransport must be created on its loop's thread")
        self.loop = loop
        self.options = options
        self.rank = options.rank
        self.worldSize = options.worldSize
        if worldSize == 1 { return }
        do {
            try join()
        } catch {
            tearDown()
            throw error
        }
        tickID = loop.addTick { [unowned self] in tick() }
    }

    private func join() throws {
        let deadline = Deadline.after(seconds: options.joinTimeout)
        if options.hostsStore {
            store = try StoreServer(
                loop: loop, rank: rank, worldSize: worldSize, host: options.listenHost, port: options.masterPort,
                authenticator: options.authenticator)
        }
        let listener = try Listener(
            loop: loop, rank: rank, host: options.listenHost, port: options.listenPort,
            inUseHint: "choose another ring port with CONCORD_PORT, or 0 for any free port",
            sameMachineCongestionControl: options.sameMachineCongestionControl)
        listener.authenticator = options.authenticator
        listener.onAccept = { [unowned self] link in
            candidates[ObjectIdentifier(link)] = link
            link.delegate = self
            link.configure(
                timeout: options.peerTimeout, receiveBuffer: options.receiveBufferBytes, zeroCopy: options.zeroCopySends
            )
            link.startReading()
        }
        self.listener = listener

        let client = try StoreClient(
            loop: loop, rank: rank, worldSize: worldSize, host: options.masterHost, port: options.masterPort,
            deadline: deadline, joinSeconds: options.joinTimeout, authenticator: options.authenticator)
        defer { client.close() }
        client.problem = { [unowned self] in store?.problem ?? joinProblem }
        let host = options.advertisedHost ?? client.link.localAddress?.host ?? "127.0.0.1"
        if rank == 0 {
            session = String(UInt64.random(in: 1...UInt64.max), radix: 16)
            try client.set("session", session, deadline: deadline)
        }
        try client.set("rank/\(rank)", SocketAddress.format(host: host, port: listener.port), deadline: deadline)
        try client.set("node/\(rank)", options.node, deadline: deadline)
        let keys = ["session"] + (0..<worldSize).map { "rank/\($0)" } + (0..<worldSize).map { "node/\($0)" }
        let values = try client.wait(for: keys, deadline: deadline) { [rank, options, deadline] missing in
            let ranks = missing.compactMap { $0.hasPrefix("rank/") ? Int($0.dropFirst(5)) : nil }.sorted()
            // The seconds this rank waited: rank 0 may give up first and answer the others then.
            let waited = ((options.joinTimeout - deadline.remainingSeconds) * 10).rounded() / 10
            return .joinTimeout(rank: rank, missing: ranks.isEmpty ? [0] : ranks, seconds: max(0, waited))
        }
        session = values[0]
        nodes = Array(values[(1 + worldSize)...])
        configureSpinning()
        for (link, payload) in earlyHellos where !link.isClosing {
            self.link(link, received: FrameHeader(kind: .hello, sender: nil), payload: payload)
        }
        earlyHellos.removeAll()

        let rightRank = (rank + 1) % worldSize
        let leftRank = (rank + worldSize - 1) % worldSize
        let rightLink = try connect(to: rightRank, at: values[1 + rightRank], deadline: deadline)
        right = rightLink
        var hello = [("rank", "\(rank)"), ("world", "\(worldSize)"), ("session", session)]
        if options.medium != .tcp && nodes[rightRank] == nodes[rank] {
            let name = "\(session)-r\(rank)"
            do {
                offeredChannel = (name, try SharedMemoryChannel.create(name: name))
                hello.append(("shm", name))
            } catch {
                sharedMemoryProblems.append("cannot create shared memory for rank \(rightRank): \(error)")
            }
        }
        rightLink.write(FrameHeader(kind: .hello, sender: rank), control: ControlText.encode(hello))

        loop.run(
            until: {
                (self.welcomed && self.left != nil) || self.refusal != nil || self.joinProblem != nil
                    || rightLink.failure != nil || self.failure != nil
            },
            deadline: deadline)
        if let problem = joinProblem ?? failure { throw problem }
        if let refusal { throw ConcordError.joinRefused(rank: rank, peer: "rank \(rightRank)", reason: refusal) }
        if let failure = rightLink.failure { throw failure }
        if !welcomed {
            throw ConcordError.joinTimeout(rank: rank, missing: [rightRank], seconds: options.joinTimeout)
        }
        if left == nil {
            throw ConcordError.joinTimeout(rank: rank, missing: [leftRank], seconds: options.joinTimeout)
        }
        try connectPartners(addresses: Array(values[1...worldSize]), deadline: deadline)
        listener.close()
        self.listener = nil
        for link in candidates.values where link !== left { link.close() }
        candidates.removeAll()
        if options.medium == .shm && (sharedIn == nil || sharedOut == nil) {
            let remote = Set([leftRank, rightRank]).filter { nodes[$0] != nodes[rank] }.sorted()
            let why =
                remote.isEmpty
                ? sharedMemoryProblems.joined(separator: "; ")
                : "rank \(remote.map(String.init).joined(separator: " and rank ")) runs on another host"
            throw ConcordError.invalidConfiguration(
                "rank \(rank): CONCORD_TRANSPORT=shm, but \(why.isEmpty ? "a neighbour declined shared memory" : why); "
                    + "use CONCORD_TRANSPORT=auto (shared memory where possible) or tcp")
        }
    }

    /// Shared memory between every pair of ring neighbours (all ranks on one machine, `auto` or `shm`):
    /// ring algorithms then beat the doubling ones, whose partner links are TCP. Every rank computes it
    /// from the same rendezvous facts (if a shared ring fails to open, that link uses TCP, and every rank
    /// still chooses alike).
    public var ringLinksAreFaster: Bool { options.medium != .tcp && ranksShareOneMachine }

    public private(set) var ranksShareOneMachine = false

    /// The partners of recursive doubling (rank XOR 1, 2, 4, …) when the world size is a power of two; the
    /// ring neighbours among them need no link of their own.
    public static func doublingPartners(rank: Int, worldSize n: Int) -> [Int] {
        guard n > 2, n & (n - 1) == 0 else { return [] }
        return sequence(first: 1, next: { $0 * 2 }).prefix { $0 < n }.map { rank ^ $0 }
            .filter { $0 != (rank + 1) % n && $0 != (rank + n - 1) % n }
    }

    /// Connects to rank `peer` at `address` (`host:port` from the store), retrying until `deadline`, and
    /// starts reading (the handshake, when authenticated, is already under way).
    private func connect(to peer: Int, at address: String, deadline: Deadline) throws -> PeerLink {
        guard let (host, port) = SocketAddress.split(address) else {
            throw ConcordError.malformedFrame(
                rank: rank, peer: "the master", detail: "bad address '\(address)' for rank \(peer)")
        }
        let link = try Connector.connect(
            loop: loop, rank: rank, to: SocketAddress(host: host, port: port), deadline: deadline,
            authenticator: options.authenticator, sameMachineCongestionControl: options.sameMachineCongestionControl
        ) { [rank, options] last in
            .peerLost(
                rank: rank, peer: peer,
                reason: "could not connect to it at \(host):\(port) within \(options.joinTimeout) s: \(last)")
        }
        link.peerRank = peer
        link.delegate = self
        link.configure(
            timeout: options.peerTimeout, receiveBuffer: options.receiveBufferBytes, zeroCopy: options.zeroCopySends)
        link.startReading()
        return link
    }

    /// Connects to the higher-ranked doubling partners and waits until the lower-ranked ones connected.
    private func connectPartners(addresses: [String], deadline: Deadline) throws {
        let wanted = ringLinksAreFaster ? [] : Self.doublingPartners(rank: rank, worldSize: worldSize)
        for peer in wanted where peer > rank {
            let link = try connect(to: peer, at: addresses[peer], deadline: deadline)
            partners[peer] = link
            link.write(
                FrameHeader(kind: .hello, sender: rank),
                control: ControlText.encode([
                    ("rank", "\(rank)"), ("world", "\(worldSize)"), ("session", session), ("partner", "1"),
                ]))
        }
        loop.run(
            until: {
                self.welcomedPartners.count == wanted.count || self.refusal != nil || self.joinProblem != nil
                    || self.failure != nil || self.partners.values.contains { $0.failure != nil }
            }, deadline: deadline)
        if let problem = joinProblem ?? failure { throw problem }
        if let refusal { throw ConcordError.joinRefused(rank: rank, peer: "a doubling partner", reason: refusal) }
        if let failed = partners.values.first(where: { $0.failure != nil }) { throw failed.failure! }
        let missing = wanted.filter { !welcomedPartners.contains($0) }
        if !missing.isEmpty {
            throw ConcordError.joinTimeout(rank: rank, missing: missing, seconds: options.joinTimeout)
        }
    }

    /// The congestion control of every TCP link (ring neighbours, then partners by rank), for tests.
    package var linkCongestionControls: [String?] {
        [left, right].compactMap { $0 }.map(\.congestionControl)
            + partners.keys.sorted().map { partners[$0]!.congestionControl }
    }

    /// Payload bytes the TCP links sent without a copy (see PeerLink.swift, "Zero-copy sends").
    package var splicedBytes: Int { links.reduce(0) { $0 + $1.splicedBytes } }

    /// Which medium carries data to the right and from the left neighbour ("shm" or "tcp").
    public var media: (toRight: String, fromLeft: String) {
        (sharedOut == nil ? "tcp" : "shm", sharedIn == nil ? "tcp" : "shm")
    }

    // MARK: - Transport

    // Sends to the right neighbour go on the connection this rank opened to it, receives from the left one
    // on the connection it accepted (for n = 2 these are two connections to the same rank); a neighbour
    // in the other direction, or a doubling partner, shares one connection both ways. Either way both
    // ends pick the same connection for a direction, and frames in it keep their order.

    private func link(sendingTo peer: Int) -> PeerLink {
        if let right, right.peerRank == peer { return right }
        if let left, left.peerRank == peer { return left }
        if let partner = partners[peer] { return partner }
        preconditionFailure("rank \(rank): UVTransport has no link to rank \(peer)")
    }

    private func link(receivingFrom peer: Int) -> PeerLink {
        if let left, left.peerRank == peer { return left }
        if let right, right.peerRank == peer { return right }
        if let partner = partners[peer] { return partner }
        preconditionFailure("rank \(rank): UVTransport has no link from rank \(peer)")
    }

    public func isConnected(to peer: Int) -> Bool {
        left?.peerRank == peer || right?.peerRank == peer || partners[peer] != nil
    }

    /// Whether data to or from `peer` goes through shared memory (only ring neighbours' can).
    private func usesSharedMemory(sendingTo peer: Int) -> Bool { sharedOut != nil && right?.peerRank == peer }
    private func usesSharedMemory(receivingFrom peer: Int) -> Bool { sharedIn != nil && left?.peerRank == peer }

    private func checkUsable() throws {
        if let failure { throw failure }
        if isClosed { throw ConcordError.shutDown(rank: rank) }
    }

    public func send(to peer: Int, tag: SegmentTag, from bytes: UnsafeRawBufferPointer) throws -> TransferID {
        try checkUsable()
        let link = link(sendingTo: peer)
        if let departed = link.failure { fail(departed) }
        let id = newTransfer(bytes: bytes.count, peer: peer, shared: usesSharedMemory(sendingTo: peer))
        if let sharedOut, usesSharedMemory(sendingTo: peer) {
            do {
                try sharedOut.send(FrameHeader(data: tag, sender: rank), payload: bytes, transfer: id)
            } catch {
                fail(error as! ConcordError)
            }
        } else {
            link.write(FrameHeader(data: tag, sender: rank), payload: bytes, transfer: id)
        }
        return TransferID(id)
    }

    public func receive(
        from peer: Int, tag: SegmentTag, into bytes: UnsafeMutableRawBufferPointer, reducer: Reducer?
    ) throws -> TransferID {
        try checkUsable()
        let link = link(receivingFrom: peer)
        // A neighbour that said bye may have left frames in the shared ring: those are still read (and a
        // receive it never sent fails there, naming it).
        if let departed = link.failure, !(link.peerSaidBye && usesSharedMemory(receivingFrom: peer)) {
            fail(departed)
        }
        let id = newTransfer(bytes: bytes.count, peer: peer, shared: usesSharedMemory(receivingFrom: peer))
        let receive = PostedReceive(id: id, tag: tag, destination: bytes.baseAddress, reducer: reducer)
        if let sharedIn, usesSharedMemory(receivingFrom: peer) {
            do { try sharedIn.post(receive) } catch { fail(error as! ConcordError) }
        } else {
            link.post(receive)
        }
        return TransferID(id)
    }

    private func newTransfer(bytes: Int, peer: Int, shared: Bool) -> Int {
        nextID += 1
        let local = sameNode.indices.contains(peer) && sameNode[peer]
        outstanding.append((nextID, bytes, shared, local, false))
        return nextID
    }

    public func wait(_ transfer: TransferID) throws {
        try checkUsable()
        // Not outstanding: waited for already.
        guard let index = outstanding.firstIndex(where: { $0.id == transfer.raw }) else { return }
        let entry = outstanding[index]
        let small = entry.shared || entry.bytes <= spinLimitBytes
        loop.spinMicroseconds = small ? spinMicroseconds : entry.local ? largeSpinMicroseconds : 0
        loop.yieldWhileSpinning = oversubscribed || !small
        // Bounded: the tick fails a silent link after the peer timeout, which ends this wait. Nothing
        // removes entries while the loop runs, so `index` stays valid.
        loop.run(
            until: {
                self.pumpSharedMemory()
                return self.outstanding[index].done || self.failure != nil
            }, deadline: .never,
            prepareToBlock: { (self.sharedOut?.prepareToBlock() ?? true) && (self.sharedIn?.prepareToBlock() ?? true) })
        if let failure {
            quiesce()
            throw failure
        }
        outstanding.remove(at: index)
    }

    /// Moves bytes through the shared-memory links, if any.
    private func pumpSharedMemory() {
        // Checked first: over TCP this runs on every poll, and reading `failure` copies an error.
        guard sharedOut != nil || sharedIn != nil, failure == nil else { return }
        do {
            try sharedOut?.pump()
            try sharedIn?.pump()
        } catch {
            fail(error as! ConcordError)
        }
    }

    public func waitAll() throws {
        while let first = outstanding.first { try wait(TransferID(first.id)) }
    }

    // MARK: - Failure

    /// Fails the transport with `error` (raised by this rank, e.g. a bad argument it alone was given) and
    /// tells both neighbours, so ranks waiting on this one fail too instead of waiting for it.
    public func abort(_ error: ConcordError) {
        fail(error)
        quiesce()
    }

    private func fail(_ error: ConcordError) {
        guard failure == nil else { return }
        failure = error
        let origin: Int
        let reason: String
        if case .aborted(_, let by, let text) = error {
            (origin, reason) = (by, text)
        } else {
            (origin, reason) = (rank, error.description)
        }
        let payload = ControlText.encode([("origin", "\(origin)"), ("reason", reason)])
        // Also on a link that failed on a frame it read (a mismatch, a malformed frame): its peer is alive,
        // and the abort, ahead of the close, tells it why. (On a connection that is gone the write fails; a
        // link still authenticating holds it, or drops it when it failed: its peer would refuse it.)
        for link in links where !link.isClosing {
            link.write(
                FrameHeader(kind: .abort, sender: rank), control: payload,
                force: link.failure != nil && link.isAuthenticated)
        }
    }

    /// After a failure: lets queued frames (the aborts) drain for up to a second, then closes the links,
    /// which cancels every write still pointing into a caller's buffer before the error reaches the caller.
    /// Spliced payloads still unread by their receivers get the same second: the caller may overwrite its
    /// buffer once the error reaches it (see PeerLink.swift, "Zero-copy sends").
    private func quiesce() {
        let links = self.links
        loop.run(
            until: { links.allSatisfy { ($0.pendingWrites == 0 && $0.awaitingConsumption == 0) || $0.failure != nil } },
            deadline: .after(seconds: 1))
        for link in links { link.close() }
        closeSharedMemory()
        loop.run(until: { links.allSatisfy { $0.pendingWrites == 0 } }, deadline: .after(seconds: 1))
        outstanding.removeAll()
    }

    private func tick() {
        let now = EventLoop.coarseNanoseconds()
        let heartbeat = UInt64(min(1, options.peerTimeout / 4) * 1e9)
        let silence = UInt64(min(options.peerTimeout, 1e9) * 1e9)  // at most ~30 years: "never", without a trap
        for link in links where link.failure == nil && !link.isClosing {
            if link.pendingWrites == 0 && now - min(now, link.lastWritten) >= heartbeat {
                link.write(FrameHeader(kind: .heartbeat, sender: rank))
            }
            if !link.isParked && now - min(now, link.lastHeard) > silence {
                link.fail(
                    .peerLost(
                        rank: rank, peer: link.peerRank ?? -1,
                        reason:
                            "nothing heard for \(options.peerTimeout) s: the process hangs or the network is partitioned"
                    ))
            }
        }
    }

    // MARK: - Shutdown

    /// Says bye to both neighbours, lets queued frames drain (at most a second), and closes every handle.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        let links = self.links
        for link in links where link.failure == nil { link.write(FrameHeader(kind: .bye, sender: rank)) }
        loop.run(
            until: { links.allSatisfy { $0.pendingWrites == 0 || $0.failure != nil } }, deadline: .after(seconds: 1))
        tearDown()
    }

    /// Drops the shared-memory links (and every pointer they hold into callers' buffers).
    private func closeSharedMemory() {
        sharedOut?.close()
        sharedIn?.close()
        sharedOut = nil
        sharedIn = nil
        if let (_, channel) = offeredChannel {
            try? channel.unlink()
            channel.close()
            offeredChannel = nil
        }
    }

    private func tearDown() {
        closeSharedMemory()
        if let tickID { loop.removeTick(tickID) }
        tickID = nil
        let links = self.links + Array(candidates.values)
        for link in links { link.close() }
        candidates.removeAll()
        listener?.close()
        listener = nil
        store?.close()
        store = nil
        loop.run(until: { links.allSatisfy { $0.pendingWrites == 0 } }, deadline: .after(seconds: 1))
    }
}

extension UVTransport: PeerLinkDelegate {
    func link(_ link: PeerLink, received header: FrameHeader, payload: [UInt8]) {
        let fields = ControlText.decode(payload)
        switch header.kind {
        case .hello where link.peerRank == nil && session.isEmpty:
            // Our own store reply (with the session) has not arrived yet: answer once it has.
            earlyHellos.append((link, payload))
        case .hello where link.peerRank == nil && fields["partner"] != nil:
            let peer = fields["rank"].flatMap(Int.init) ?? -1
            let reason: String?
            if fields["session"] != session {
                reason = "it belongs to another job (session \(fields["session"] ?? "none"), expected \(session))"
            } else if fields["world"] != "\(worldSize)" {
                reason = "it was started with world size \(fields["world"] ?? "?"), rank \(rank) with \(worldSize)"
            } else if ringLinksAreFaster || !Self.doublingPartners(rank: rank, worldSize: worldSize).contains(peer)
                || peer > rank || partners[peer] != nil
            {
                reason = "rank \(rank) expects no partner connection from rank \(peer)"
            } else {
                reason = nil
            }
            candidates[ObjectIdentifier(link)] = nil
            if let reason {
                link.write(FrameHeader(kind: .refuse, sender: rank), control: Array(reason.utf8))
                link.close()
                return
            }
            link.peerRank = peer
            partners[peer] = link
            welcomedPartners.insert(peer)
            link.write(FrameHeader(kind: .welcome, sender: rank))
        case .welcome where link.peerRank.map { partners[$0] === link } ?? false:
            welcomedPartners.insert(link.peerRank!)
        case .refuse where link.peerRank.map { partners[$0] === link } ?? false:
            refusal = String(decoding: payload, as: UTF8.self)
        case .hello where link.peerRank == nil:
            let leftRank = (rank + worldSize - 1) % worldSize
            let reason: String?
            if fields["session"] != session {
                reason = "it belongs to another job (session \(fields["session"] ?? "none"), expected \(session))"
            } else if fields["world"] != "\(worldSize)" {
                reason = "it was started with world size \(fields["world"] ?? "?"), rank \(rank) with \(worldSize)"
            } else if fields["rank"] != "\(leftRank)" || left != nil {
                reason =
                    "rank \(rank) accepts only rank \(leftRank) as its left neighbour, not rank \(fields["rank"] ?? "?")"
            } else {
                reason = nil
            }
            if let reason {
                link.write(FrameHeader(kind: .refuse, sender: rank), control: Array(reason.utf8))
                candidates[ObjectIdentifier(link)] = nil
                link.close()
                return
            }
            link.peerRank = leftRank
            left = link
            candidates[ObjectIdentifier(link)] = nil
            var welcome: [(String, String)] = []
            if let name = fields["shm"] {
                welcome.append(("shm", acceptSharedMemory(name: name, from: link, peer: leftRank)))
            }
            link.write(FrameHeader(kind: .welcome, sender: rank), control: ControlText.encode(welcome))
        case .welcome where link === right:
            welcomed = true
            if let (name, channel) = offeredChannel {
                offeredChannel = nil
                if fields["shm"] == "ok" {
                    sharedOut = SharedMemoryLink(
                        channel: channel, rank: rank, peer: link.peerRank ?? -1,
                        ringDoorbell: { [unowned link] in link.write(FrameHeader(kind: .doorbell, sender: nil)) },
                        connectionEnded: { [unowned link] in link.failure != nil || link.isClosing },
                        completed: { [unowned self] in transferCompleted($0) })
                } else {
                    sharedMemoryProblems.append(
                        "rank \(link.peerRank ?? -1) could not map /concord-\(name): \(fields["shm"] ?? "it did not answer")"
                    )
                    try? channel.unlink()
                    channel.close()
                }
            }
        case .doorbell:
            break  // waking the loop was the point
        case .refuse where link === right:
            refusal = String(decoding: payload, as: UTF8.self)
        case .abort:
            let origin = fields["origin"].flatMap(Int.init) ?? link.peerRank ?? -1
            fail(.aborted(rank: rank, reportedBy: origin, reason: fields["reason"] ?? "no reason given"))
        case .bye:
            link.peerSaidBye = true
        default:
            link.fail(
                .malformedFrame(
                    rank: rank, peer: link.peerLabel, detail: "unexpected \(header.kind) frame on a ring connection"))
        }
    }

    /// Maps the channel the left neighbour offered; returns the welcome's answer ("ok" or why not).
    private func acceptSharedMemory(name: String, from link: PeerLink, peer: Int) -> String {
        guard options.medium != .tcp else { return "no: CONCORD_TRANSPORT=tcp on rank \(rank)" }
        do {
            let channel = try SharedMemoryChannel.open(name: name)
            sharedIn = SharedMemoryLink(
                channel: channel, rank: rank, peer: peer,
                ringDoorbell: { [unowned link] in link.write(FrameHeader(kind: .doorbell, sender: nil)) },
                connectionEnded: { [unowned link] in link.failure != nil || link.isClosing },
                completed: { [unowned self] in transferCompleted($0) })
            return "ok"
        } catch {
            sharedMemoryProblems.append("cannot map rank \(peer)'s shared memory: \(error)")
            return "no: \(error)"
        }
    }

    func linkFailed(_ link: PeerLink) {
        guard let error = link.failure else { return }
        if link !== left && link !== right && !partners.values.contains(where: { $0 === link }) {
            // A stranger at the listener (another job, another version, a wrong secret): refuse it, say so,
            // and remember a version mismatch (the job cannot form).
            link.logRefusal()
            if case .protocolVersion = error {
                joinProblem = joinProblem ?? error
                link.write(FrameHeader(kind: .refuse, sender: rank), force: true)
            }
            candidates[ObjectIdentifier(link)] = nil
            link.close()
            return
        }
        if link.peerSaidBye && !link.isAwaitingData && link.pendingWrites == 0 { return }
        fail(error)
    }

    func transferCompleted(_ id: Int) {
        // Completions come mostly in posting order, for transfers posted last: search from the end.
        if let index = outstanding.lastIndex(where: { $0.id == id }) { outstanding[index].done = true }
    }
}

extension SocketAddress {
    /// `host:port`, bracketing IPv6 hosts.
    static func format(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

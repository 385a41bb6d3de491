// The rendezvous store: a key/value map served over Concord frames (see docs/wire-format.md).
//
// Rank 0 hosts it at CONCORD_MASTER_ADDR:CONCORD_MASTER_PORT; every rank (rank 0 included, over
// loopback) is a client. A client says hello (its rank and world size), sets keys, and waits for keys;
// a wait is answered when all its keys are set, or with the list of missing keys when its timeout ends,
// so a rank that never joined is named in every other rank's error.
import ConcordCore

/// The server side of the store, on an event loop.
public final class StoreServer {
    let loop: EventLoop
    let rank: Int
    let worldSize: Int
    private var listener: Listener?
    private var clients: [ObjectIdentifier: PeerLink] = [:]
    private var values: [String: String] = [:]
    private var waiters: [(link: PeerLink, keys: [String], deadline: Deadline)] = []
    private var tickID: Int?
    /// A client that spoke another protocol version or world size: the job cannot form.
    private(set) var problem: ConcordError?

    /// Listens on `host:port`. On the loop thread.
    /// - Throws: `ConcordError.addressInUse` when the port is taken.
    init(
        loop: EventLoop, rank: Int, worldSize: Int, host: String, port: Int,
        authenticator: (any LinkAuthenticator)? = nil
    ) throws {
        self.loop = loop
        self.rank = rank
        self.worldSize = worldSize
        let listener = try Listener(
            loop: loop, rank: rank, host: host, port: port,
            inUseHint:
                "another job (or an old rank 0) holds the master port; choose a free one with --master-port or CONCORD_MASTER_PORT"
        )
        listener.authenticator = authenticator
        listener.onAccept = { [unowned self] link in
            link.delegate = self
            clients[ObjectIdentifier(link)] = link
            link.startReading()
        }
        self.listener = listener
        tickID = loop.addTick { [unowned self] in expireWaiters() }
    }

    /// The port it listens on.
    public var port: Int { listener?.port ?? 0 }

    /// Stops serving. Ranks still waiting are answered first with the keys that are missing, so that when
    /// rank 0 gives up on the join before them they still name the ranks that never joined, at once,
    /// instead of a master that went away.
    func close() {
        if let tickID { loop.removeTick(tickID) }
        tickID = nil
        for waiter in waiters { reply(waiter.link, .storeMissing, waiter.keys.filter { values[$0] == nil }) }
        listener?.close()
        listener = nil
        for link in clients.values { link.close() }
        clients.removeAll()
        waiters.removeAll()
    }

    private func reply(_ link: PeerLink, _ kind: FrameKind, _ lines: [String]) {
        let payload = Array(lines.joined(separator: "\n").utf8)
        link.write(FrameHeader(kind: kind, sender: rank, payloadLength: payload.count), control: payload)
    }

    private func answerWaiters() {
        waiters.removeAll { waiter in
            let found = waiter.keys.compactMap { values[$0] }
            guard found.count == waiter.keys.count else { return false }
            reply(waiter.link, .storeValues, found)
            return true
        }
    }

    private func expireWaiters() {
        waiters.removeAll { waiter in
            guard waiter.deadline.hasPassed else { return false }
            reply(waiter.link, .storeMissing, waiter.keys.filter { values[$0] == nil })
            return true
        }
    }

    private func drop(_ link: PeerLink) {
        waiters.removeAll { $0.link === link }
        clients[ObjectIdentifier(link)] = nil
        link.close()
    }
}

extension StoreServer: PeerLinkDelegate {
    func link(_ link: PeerLink, received header: FrameHeader, payload: [UInt8]) {
        let text = String(decoding: payload, as: UTF8.self)
        switch header.kind {
        case .hello:
            let fields = ControlText.decode(payload)
            guard let world = fields["world"].flatMap(Int.init), let peer = fields["rank"].flatMap(Int.init) else {
                reply(link, .refuse, ["hello without rank and world size"])
                drop(link)
                return
            }
            if world != worldSize {
                let reason = "rank \(peer) was started with world size \(world), rank \(rank) with \(worldSize)"
                problem = problem ?? .joinRefused(rank: rank, peer: "rank \(peer)", reason: reason)
                reply(link, .refuse, [reason])
                drop(link)
                return
            }
            link.peerRank = peer
            link.write(FrameHeader(kind: .welcome, sender: rank))
        case .storeSet:
            guard let newline = text.firstIndex(of: "\n") else {
                link.fail(.malformedFrame(rank: rank, peer: link.peerLabel, detail: "store set without a value"))
                return
            }
            values[String(text[..<newline])] = String(text[text.index(after: newline)...])
            link.write(FrameHeader(kind: .storeOK, sender: rank))
            answerWaiters()
        case .storeWait:
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            guard !lines.isEmpty, let ms = Double(lines.removeFirst()) else {
                link.fail(.malformedFrame(rank: rank, peer: link.peerLabel, detail: "store wait without a timeout"))
                return
            }
            waiters.append((link, lines, .after(seconds: ms / 1000)))
            answerWaiters()
        case .bye:
            drop(link)
        default:
            link.fail(
                .malformedFrame(
                    rank: rank, peer: link.peerLabel, detail: "unexpected \(header.kind) frame on a store connection"))
        }
    }

    func linkFailed(_ link: PeerLink) {
        switch link.failure {
        case .joinRefused, .malformedFrame, .protocolVersion: link.logRefusal()
        default: break
        }
        if case .protocolVersion = link.failure {
            // Tell the peer in our own version (its decoder reports the mismatch on its side too).
            problem = problem ?? link.failure
            link.write(FrameHeader(kind: .refuse, sender: rank), control: [], force: true)
        }
        drop(link)
    }

    func transferCompleted(_ id: Int) {}
}

/// The client side of the store, on an event loop. All calls on the loop thread.
final class StoreClient: Store {
    let loop: EventLoop
    let rank: Int
    let masterAddress: String
    let link: PeerLink
    private var replies: [(FrameHeader, [UInt8])] = []
    /// Checked while waiting for a reply: a problem found elsewhere (by the store this rank hosts) ends
    /// the wait at once instead of at the deadline.
    var problem: () -> ConcordError? = { nil }

    /// Connects to the master at `address`, retrying until `deadline`, and says hello.
    /// - Throws: `.masterUnreachable`, `.joinRefused`, `.protocolVersion`.
    init(
        loop: EventLoop, rank: Int, worldSize: Int, host: String, port: Int, deadline: Deadline, joinSeconds: Double,
        authenticator: (any LinkAuthenticator)? = nil
    ) throws {
        self.loop = loop
        self.rank = rank
        let address = try SocketAddress(host: host, port: port)
        masterAddress = "\(host):\(port)"
        let master = masterAddress
        link = try Connector.connect(
            loop: loop, rank: rank, to: address, deadline: deadline, authenticator: authenticator
        ) { last in
            .masterUnreachable(rank: rank, address: master, seconds: joinSeconds, reason: last)
        }
        link.peerRank = nil
        link.delegate = self
        link.startReading()
        link.write(
            FrameHeader(kind: .hello, sender: rank),
            control: ControlText.encode([("rank", "\(rank)"), ("world", "\(worldSize)"), ("role", "store")]))
        let (header, payload) = try awaitReply(deadline: deadline, joinSeconds: joinSeconds)
        if header.kind == .refuse {
            link.close()
            throw ConcordError.joinRefused(
                rank: rank, peer: "the master at \(masterAddress)", reason: String(decoding: payload, as: UTF8.self))
        }
        guard header.kind == .welcome else {
            link.close()
            throw ConcordError.malformedFrame(
                rank: rank, peer: "the master at \(masterAddress)", detail: "\(header.kind) in reply to hello")
        }
    }

    private func awaitReply(deadline: Deadline, joinSeconds: Double) throws -> (FrameHeader, [UInt8]) {
        // The server answers waits itself when they time out; allow it a few seconds more before giving up on it.
        let own = Deadline.after(seconds: deadline.remainingSeconds + 5)
        loop.run(until: { !self.replies.isEmpty || self.link.failure != nil || self.problem() != nil }, deadline: own)
        if let problem = problem() { throw problem }
        if !replies.isEmpty { return replies.removeFirst() }
        if let failure = link.failure {
            if case .protocolVersion = failure { throw failure }
            if case .joinRefused = failure { throw failure }
            var reason = "\(failure)"
            if case .peerLost(_, _, let why) = failure { reason = "lost the connection to it: \(why)" }
            throw ConcordError.masterUnreachable(rank: rank, address: masterAddress, seconds: joinSeconds, reason: reason)
        }
        throw ConcordError.masterUnreachable(
            rank: rank, address: masterAddress, seconds: joinSeconds, reason: "the master stopped answering")
    }

    func set(_ key: String, _ value: String, deadline: Deadline) throws {
        let payload = Array("\(key)\n\(value)".utf8)
        link.write(FrameHeader(kind: .storeSet, sender: rank, payloadLength: payload.count), control: payload)
        let (header, _) = try awaitReply(deadline: deadline, joinSeconds: deadline.remainingSeconds)
        guard header.kind == .storeOK else {
            throw ConcordError.malformedFrame(
                rank: rank, peer: "the master at \(masterAddress)", detail: "\(header.kind) in reply to a set")
        }
    }

    func wait(for keys: [String], deadline: Deadline, onTimeout: ([String]) -> ConcordError) throws -> [String] {
        let ms = Int(deadline.remainingSeconds * 1000)
        let payload = Array((["\(ms)"] + keys).joined(separator: "\n").utf8)
        link.write(FrameHeader(kind: .storeWait, sender: rank, payloadLength: payload.count), control: payload)
        let (header, reply) = try awaitReply(deadline: deadline, joinSeconds: deadline.remainingSeconds)
        let lines = String(decoding: reply, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(
            String.init)
        switch header.kind {
        case .storeValues where lines.count == keys.count: return lines
        case .storeMissing: throw onTimeout(lines.filter { !$0.isEmpty })
        default:
            throw ConcordError.malformedFrame(
                rank: rank, peer: "the master at \(masterAddress)", detail: "\(header.kind) in reply to a wait")
        }
    }

    func close() {
        link.write(FrameHeader(kind: .bye, sender: rank))
        link.close()
    }
}

extension StoreClient: PeerLinkDelegate {
    func link(_ link: PeerLink, received header: FrameHeader, payload: [UInt8]) {
        replies.append((header, payload))
    }
    func linkFailed(_ link: PeerLink) {}
    func transferCompleted(_ id: Int) {}
}

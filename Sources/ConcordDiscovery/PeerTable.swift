// The nodes of this job heard recently, built from decoded beacons.
//
//   beacon (seq 7) from B ─▶ observe ─▶ B joined / refreshed / updated    ─┐
//   beacon (seq 6) from B ─▶ observe ─▶ stale (ignored: not newer)         ├─▶ members(now:) sorted by node id
//   own beacon (multicast loops back) ─▶ ignored                          │   lastChange (for a settle window)
//   no beacon from C for ttl seconds ─▶ expire(now:) removes C           ─┘
//
// A beacon refreshes its sender only when its sequence number is larger than the last one seen, so a
// datagram duplicated by two interfaces, reordered, or replayed from an old capture never keeps a node
// alive. Node ids are drawn anew by every process, so sequence numbers never restart for an id.
// `lastChange` moves when the set of nodes, a node's endpoint or its flags change — not on a mere
// refresh — so "no change for S seconds" means the view is stable. Pure: the caller passes the time.
// Cost: O(1) per beacon, O(n log n) per `members`.

/// The nodes heard recently, keyed by node id, with expiry after a TTL.
public struct PeerTable: Sendable {
    /// One node as last heard.
    public struct Peer: Sendable, Equatable {
        /// The newest beacon from the node.
        public let beacon: Beacon
        /// The address the newest beacon came from (as the socket layer reports it).
        public let sourceAddress: String
        /// When the node was first heard.
        public let firstSeen: ContinuousClock.Instant
        /// When the newest beacon arrived.
        public let lastSeen: ContinuousClock.Instant

        /// The node's id.
        public var nodeID: NodeID { beacon.nodeID }
        /// Where to connect: the host the beacon names, or the datagram's source address when it names none.
        public var host: String { beacon.host.isEmpty ? sourceAddress : beacon.host }
        /// The port of the node's TCP listener.
        public var port: UInt16 { beacon.port }
    }

    /// What one observed beacon did to the table.
    public enum Observation: Sendable, Equatable {
        /// The beacon is this node's own (multicast loops back); ignored.
        case ownBeacon
        /// A node not in the table.
        case joined
        /// A known node, nothing but its liveness changed.
        case refreshed
        /// A known node whose endpoint or flags changed.
        case updated
        /// A sequence number not larger than the last one seen (duplicate, reordered or replayed); ignored.
        case stale
        /// The node announced it is leaving and was removed.
        case left
    }

    /// This node's id; its own beacons are ignored.
    public let selfID: NodeID
    /// Seconds without a newer beacon after which a node is gone.
    public let ttl: Double
    private var peers: [NodeID: Peer] = [:]
    /// When the set of nodes, an endpoint or flags last changed; nil before any change.
    public private(set) var lastChange: ContinuousClock.Instant?

    /// An empty table for node `selfID`, forgetting nodes silent for `ttl` seconds.
    ///
    /// - Precondition: `ttl > 0`.
    public init(selfID: NodeID, ttl: Double) {
        precondition(ttl > 0, "a peer TTL must be positive, got \(ttl)")
        self.selfID = selfID
        self.ttl = ttl
    }

    /// Records `beacon`, received from `address` at `now`.
    @discardableResult
    public mutating func observe(_ beacon: Beacon, from address: String, at now: ContinuousClock.Instant)
        -> Observation
    {
        let id = beacon.nodeID
        if id == selfID { return .ownBeacon }
        let known = peers[id]
        if let known, beacon.sequence <= known.beacon.sequence { return .stale }
        if beacon.flags.contains(.leaving) {
            if known != nil {
                peers[id] = nil
                lastChange = now
            }
            return .left
        }
        let peer = Peer(beacon: beacon, sourceAddress: address, firstSeen: known?.firstSeen ?? now, lastSeen: now)
        peers[id] = peer
        guard let known else {
            lastChange = now
            return .joined
        }
        if known.host != peer.host || known.port != peer.port || known.beacon.flags != beacon.flags {
            lastChange = now
            return .updated
        }
        return .refreshed
    }

    /// Removes the nodes not heard within `ttl` seconds before `now`; returns their ids, sorted.
    @discardableResult
    public mutating func expire(now: ContinuousClock.Instant) -> [NodeID] {
        let gone = peers.values.filter { !isAlive($0, now: now) }.map(\.nodeID).sorted()
        for id in gone { peers[id] = nil }
        if !gone.isEmpty { lastChange = now }
        return gone
    }

    /// The nodes heard within `ttl` seconds before `now`, sorted by node id (this node not included).
    public func members(now: ContinuousClock.Instant) -> [Peer] {
        peers.values.filter { isAlive($0, now: now) }.sorted { $0.nodeID < $1.nodeID }
    }

    /// The ids of `members(now:)`.
    public func nodeIDs(now: ContinuousClock.Instant) -> [NodeID] { members(now: now).map(\.nodeID) }

    /// The node `id` as last heard, alive or not yet expired.
    public subscript(id: NodeID) -> Peer? { peers[id] }

    /// True when nothing changed during the `window` seconds before `now` (and also when nothing ever
    /// changed). Call `expire(now:)` first so that silent nodes count as a change.
    public func isSettled(now: ContinuousClock.Instant, window: Double) -> Bool {
        guard let lastChange else { return true }
        return lastChange.advanced(by: .seconds(window)) <= now
    }

    private func isAlive(_ peer: Peer, now: ContinuousClock.Instant) -> Bool {
        peer.lastSeen.advanced(by: .seconds(ttl)) > now
    }
}

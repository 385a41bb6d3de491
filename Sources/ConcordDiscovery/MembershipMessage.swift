// The messages of the membership agreement, and their binary encoding.
//
// They travel over TCP links that have completed the handshake, so they carry no MAC: the link already
// proved the peer holds the job secret, and the link's node id is the sender. Each message is one frame:
//
//   offset size  field
//        0    4  magic "CCMB"
//        4    2  protocol version (MembershipMessage.protocolVersion)
//        6    1  kind: 1 propose, 2 accept, 3 reject, 4 withdraw, 5 abort, 6 commit, 7 rtt
//        7    .  body, by kind:
//
//   proposal id   coordinator node id (16) | counter (u64)                                          24 bytes
//   proposal      proposal id | world size (u16, 0 = none) | min size (u16, 0 = none)
//                 | member count n (u16) | n node ids, strictly increasing (16 each)
//                 | ring count (u16: 0 = rank order, else n) | ring ranks (u16 each)
//   propose, commit   proposal
//   accept, withdraw, abort   proposal id
//   reject        proposal id | reason (u8)
//   rtt           node id (16) | count m (u16) | m × (peer node id (16) | round trip in µs (u32)),
//                 peers strictly increasing
//
// Little endian; at most `maxMembers` (1024) members or RTT entries, so a frame is at most 18,473 bytes.
// Decoding checks every length and refuses unsorted member lists, rings that are not permutations from
// rank 0, a coordinator that is not the proposal's first member, and unknown kinds or reasons.

/// Identifies one proposal: its coordinator and the coordinator's counter (never reused).
public struct ProposalID: Hashable, Sendable, CustomStringConvertible {
    /// The node that made the proposal (the smallest node id in its member list).
    public let coordinator: NodeID
    /// Increases with every proposal the coordinator makes.
    public let counter: UInt64

    /// A proposal id from its parts.
    public init(coordinator: NodeID, counter: UInt64) {
        self.coordinator = coordinator
        self.counter = counter
    }

    /// "3f9a0c12#4"
    public var description: String { "\(coordinator.shortDescription)#\(counter)" }
}

/// A coordinator's proposed group: the members (sorted, so rank = index) and, optionally, the ring order.
public struct Proposal: Sendable, Equatable, CustomStringConvertible {
    /// Which proposal this is.
    public let id: ProposalID
    /// The members, sorted by node id; `members[0]` is the coordinator.
    public let members: [NodeID]
    /// The coordinator's world size (see `MembershipPolicy`), checked by members against their own.
    public let worldSize: Int?
    /// The coordinator's minimum size, checked by members against their own.
    public let minSize: Int?
    /// The ring order chosen by the coordinator from the members' RTT rows; nil means rank order.
    public let ring: RingOrder?

    /// A proposal from its fields (`structuralProblem` says whether it can be valid).
    public init(id: ProposalID, members: [NodeID], worldSize: Int?, minSize: Int?, ring: RingOrder?) {
        self.id = id
        self.members = members
        self.worldSize = worldSize
        self.minSize = minSize
        self.ring = ring
    }

    /// Why this proposal cannot be valid, or nil when it can.
    public var structuralProblem: String? {
        guard let first = members.first, first == id.coordinator else {
            return "the coordinator \(id.coordinator) is not the first (smallest) member"
        }
        for i in 1..<members.count where !(members[i - 1] < members[i]) {
            return "the member list is not strictly increasing at position \(i)"
        }
        if let ring, ring.count != members.count {
            return "the ring has \(ring.count) ranks for \(members.count) members"
        }
        if members.count > MembershipMessage.maxMembers {
            return "\(members.count) members, more than \(MembershipMessage.maxMembers)"
        }
        return nil
    }

    /// "proposal 3f9a0c12#4 of 3 members [3f9a0c12, 7e00aa01, c0ffee00]"
    public var description: String {
        "proposal \(id) of \(members.count) members [\(members.map(\.shortDescription).joined(separator: ", "))]"
            + (ring.map { ", ring \($0)" } ?? "")
    }
}

/// A committed group, as every member that starts sees it.
public struct MembershipGroup: Sendable, Equatable, CustomStringConvertible {
    /// The proposal that was committed.
    public let proposalID: ProposalID
    /// The members in rank order (sorted by node id).
    public let members: [NodeID]
    /// The ring order (rank order when the proposal carried none).
    public let ring: RingOrder

    /// The group that committing `proposal` forms.
    public init(_ proposal: Proposal) {
        proposalID = proposal.id
        members = proposal.members
        ring = proposal.ring ?? .identity(count: proposal.members.count)
    }

    /// The number of ranks.
    public var worldSize: Int { members.count }

    /// The rank of `node` (its index in `members`), or nil when it is not a member.
    public func rank(of node: NodeID) -> Int? {
        var lo = 0
        var hi = members.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if members[mid] < node { lo = mid + 1 } else { hi = mid }
        }
        return lo < members.count && members[lo] == node ? lo : nil
    }

    public var description: String {
        "group \(proposalID) of \(worldSize): "
            + members.enumerated().map { "rank \($0.offset) = \($0.element.shortDescription)" }.joined(separator: ", ")
            + ", ring \(ring)"
    }
}

/// Why a member refused a proposal.
public enum RejectReason: UInt8, Sendable, CustomStringConvertible {
    /// The member is already in a committed group.
    case alreadyCommitted = 1
    /// The member has accepted a proposal from a smaller coordinator.
    case boundElsewhere = 2
    /// The proposal's world size or minimum size differs from the member's.
    case policyMismatch = 3
    /// The proposal is malformed or does not list the member.
    case invalidProposal = 4

    public var description: String {
        switch self {
        case .alreadyCommitted: return "it is already in a started group"
        case .boundElsewhere: return "it has accepted a proposal from a smaller coordinator"
        case .policyMismatch: return "its world size or minimum size differs"
        case .invalidProposal: return "the proposal is malformed or does not list it"
        }
    }
}

/// One message of the membership agreement (see `MembershipAgreement` for the protocol).
public enum MembershipMessage: Sendable, Equatable, CustomStringConvertible {
    /// Coordinator → members: "start with this group?"
    case propose(Proposal)
    /// Member → coordinator: "yes, and I accept no other proposal until you commit or abort this one."
    case accept(ProposalID)
    /// Member → coordinator: "no", with the reason.
    case reject(ProposalID, RejectReason)
    /// Member → coordinator: "release me: a smaller coordinator proposed." Answered by abort or commit.
    case withdraw(ProposalID)
    /// Coordinator → members: "this proposal is dead; you are free."
    case abort(ProposalID)
    /// Coordinator → members: "everyone accepted: start with this group."
    case commit(Proposal)
    /// Member → coordinator: "my measured round-trip times."
    case rtt(RTTRow)

    /// The version of the membership message format this build speaks.
    public static let protocolVersion: UInt16 = 1
    /// The magic at the start of every membership message.
    public static let magic: [UInt8] = Array("CCMB".utf8)
    /// The most members a proposal, or entries an RTT row, may have.
    public static let maxMembers = 1024
    /// The largest valid encoded message, in bytes.
    public static let maxEncodedSize = 7 + 24 + 6 + maxMembers * NodeID.byteCount + 2 + maxMembers * 2

    // MARK: Encoding

    /// The message as one frame.
    ///
    /// - Precondition: a proposal or RTT row has at most `maxMembers` entries.
    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.append(Self.magic)
        w.append(Self.protocolVersion)
        switch self {
        case .propose(let p):
            w.append(UInt8(1))
            Self.write(p, &w)
        case .accept(let id):
            w.append(UInt8(2))
            Self.write(id, &w)
        case .reject(let id, let reason):
            w.append(UInt8(3))
            Self.write(id, &w)
            w.append(reason.rawValue)
        case .withdraw(let id):
            w.append(UInt8(4))
            Self.write(id, &w)
        case .abort(let id):
            w.append(UInt8(5))
            Self.write(id, &w)
        case .commit(let p):
            w.append(UInt8(6))
            Self.write(p, &w)
        case .rtt(let row):
            precondition(row.seconds.count <= Self.maxMembers, "an RTT row has at most \(Self.maxMembers) entries")
            w.append(UInt8(7))
            w.append(row.node)
            w.append(UInt16(row.seconds.count))
            for peer in row.seconds.keys.sorted() {
                w.append(peer)
                let micros = (row.seconds[peer] ?? 0) * 1e6
                w.append(UInt32(micros.isFinite ? min(max(micros.rounded(), 0), Double(UInt32.max)) : 0))
            }
        }
        return w.bytes
    }

    private static func write(_ id: ProposalID, _ w: inout WireWriter) {
        w.append(id.coordinator)
        w.append(id.counter)
    }

    private static func write(_ p: Proposal, _ w: inout WireWriter) {
        precondition(p.members.count <= maxMembers, "a proposal has at most \(maxMembers) members")
        write(p.id, &w)
        w.append(UInt16(clamping: p.worldSize ?? 0))
        w.append(UInt16(clamping: p.minSize ?? 0))
        w.append(UInt16(p.members.count))
        for m in p.members { w.append(m) }
        if let ring = p.ring {
            w.append(UInt16(ring.count))
            for r in ring.ranks { w.append(UInt16(r)) }
        } else {
            w.append(UInt16(0))
        }
    }

    // MARK: Decoding

    /// The message in `frame`.
    ///
    /// - Throws: `DiscoveryError`: `.truncated`, `.oversized`, `.trailingBytes`, `.badMagic`,
    ///   `.protocolVersion` (both versions), `.fieldTooLong` (too many members), `.malformed` (unknown kind
    ///   or reason, unsorted members, a ring that is not a permutation from rank 0).
    public static func decode(_ frame: [UInt8]) throws -> MembershipMessage {
        let what = "membership message"
        if frame.count > maxEncodedSize {
            throw DiscoveryError.oversized(what: what, size: frame.count, limit: maxEncodedSize)
        }
        var r = WireReader(frame, what: what)
        let magicFound = try r.readBytes(4, "magic")
        guard magicFound == magic else { throw DiscoveryError.badMagic(what: what, expected: magic, found: magicFound) }
        let version = try r.read(UInt16.self, "protocol version")
        guard version == protocolVersion else {
            throw DiscoveryError.protocolVersion(what: what, local: protocolVersion, remote: version)
        }
        let kind = try r.read(UInt8.self, "kind")
        let message: MembershipMessage
        switch kind {
        case 1: message = .propose(try readProposal(&r))
        case 2: message = .accept(try readID(&r))
        case 3:
            let id = try readID(&r)
            let raw = try r.read(UInt8.self, "reason")
            guard let reason = RejectReason(rawValue: raw) else {
                throw DiscoveryError.malformed(what: what, detail: "unknown reject reason \(raw)")
            }
            message = .reject(id, reason)
        case 4: message = .withdraw(try readID(&r))
        case 5: message = .abort(try readID(&r))
        case 6: message = .commit(try readProposal(&r))
        case 7: message = .rtt(try readRow(&r))
        default: throw DiscoveryError.malformed(what: what, detail: "unknown message kind \(kind)")
        }
        try r.expectEnd()
        return message
    }

    private static func readID(_ r: inout WireReader) throws -> ProposalID {
        ProposalID(coordinator: try r.readNodeID("coordinator"), counter: try r.read(UInt64.self, "counter"))
    }

    private static func readCount(_ r: inout WireReader, _ field: String) throws -> Int {
        let n = Int(try r.read(UInt16.self, field))
        guard n <= maxMembers else {
            throw DiscoveryError.fieldTooLong(what: r.what, field: field, length: n, limit: maxMembers)
        }
        return n
    }

    private static func readProposal(_ r: inout WireReader) throws -> Proposal {
        let id = try readID(&r)
        let world = Int(try r.read(UInt16.self, "world size"))
        let min = Int(try r.read(UInt16.self, "min size"))
        let n = try readCount(&r, "member count")
        try r.require(n * NodeID.byteCount, for: "members")
        var members: [NodeID] = []
        members.reserveCapacity(n)
        for _ in 0..<n { members.append(try r.readNodeID("member")) }
        let ringCount = try readCount(&r, "ring count")
        var ring: RingOrder? = nil
        if ringCount > 0 {
            guard ringCount == n else {
                throw DiscoveryError.malformed(what: r.what, detail: "a ring of \(ringCount) ranks for \(n) members")
            }
            try r.require(2 * n, for: "ring")
            var ranks: [Int] = []
            for _ in 0..<n { ranks.append(Int(try r.read(UInt16.self, "ring rank"))) }
            guard let order = RingOrder(ranks: ranks) else {
                throw DiscoveryError.malformed(
                    what: r.what, detail: "the ring \(ranks) is not a permutation from rank 0")
            }
            ring = order
        }
        let proposal = Proposal(
            id: id, members: members, worldSize: world == 0 ? nil : world, minSize: min == 0 ? nil : min, ring: ring)
        if let problem = proposal.structuralProblem { throw DiscoveryError.malformed(what: r.what, detail: problem) }
        return proposal
    }

    private static func readRow(_ r: inout WireReader) throws -> RTTRow {
        let node = try r.readNodeID("node")
        let n = try readCount(&r, "RTT entry count")
        try r.require(n * (NodeID.byteCount + 4), for: "RTT entries")
        var seconds: [NodeID: Double] = [:]
        var previous: NodeID? = nil
        for _ in 0..<n {
            let peer = try r.readNodeID("RTT peer")
            let micros = try r.read(UInt32.self, "RTT")
            if let previous, !(previous < peer) {
                throw DiscoveryError.malformed(what: r.what, detail: "RTT peers are not strictly increasing")
            }
            previous = peer
            seconds[peer] = Double(micros) / 1e6
        }
        return RTTRow(node: node, seconds: seconds)
    }

    public var description: String {
        switch self {
        case .propose(let p): return "propose \(p)"
        case .accept(let id): return "accept \(id)"
        case .reject(let id, let reason): return "reject \(id): \(reason)"
        case .withdraw(let id): return "withdraw from \(id)"
        case .abort(let id): return "abort \(id)"
        case .commit(let p): return "commit \(p)"
        case .rtt(let row): return "rtt row of \(row.node.shortDescription) (\(row.seconds.count) peers)"
        }
    }
}

import Testing

@testable import ConcordDiscovery
import ConcordTestSupport

@Suite("Membership message encoding")
struct MembershipMessageTests {
    static let members = [node(2), node(5), node(9), node(11)]
    static let proposal = Proposal(
        id: ProposalID(coordinator: node(2), counter: 7), members: members, worldSize: 4, minSize: nil,
        ring: RingOrder(ranks: [0, 2, 1, 3]))
    static let id = proposal.id
    static let all: [MembershipMessage] = [
        .propose(proposal),
        .propose(Proposal(id: id, members: [node(2)], worldSize: nil, minSize: 1, ring: nil)),
        .accept(id), .reject(id, .alreadyCommitted), .reject(id, .boundElsewhere), .reject(id, .policyMismatch),
        .reject(id, .invalidProposal), .withdraw(id), .abort(id), .commit(proposal),
        .rtt(RTTRow(node: node(5), seconds: [node(2): 0.000_125, node(9): 0.021, node(11): 1.5])),
        .rtt(RTTRow(node: node(5), seconds: [:])),
    ]

    @Test("every kind round-trips")
    func roundTrip() throws {
        for message in Self.all {
            #expect(try MembershipMessage.decode(message.encode()) == message, "\(message)")
        }
    }

    @Test("truncation at every length and a trailing byte are refused")
    func truncation() throws {
        for message in Self.all {
            let bytes = message.encode()
            for length in 0..<bytes.count {
                #expect(throws: DiscoveryError.self) { try MembershipMessage.decode(Array(bytes.prefix(length))) }
            }
            #expect(
                throws: DiscoveryError.trailingBytes(
                    what: "membership message", expected: bytes.count, actual: bytes.count + 1)
            ) {
                try MembershipMessage.decode(bytes + [0])
            }
        }
    }

    @Test("malformed content is refused with a reason")
    func malformed() throws {
        let what = "membership message"
        var bytes = MembershipMessage.accept(Self.id).encode()
        bytes[6] = 99
        #expect(throws: DiscoveryError.malformed(what: what, detail: "unknown message kind 99")) {
            try MembershipMessage.decode(bytes)
        }
        bytes = MembershipMessage.reject(Self.id, .boundElsewhere).encode()
        bytes[bytes.count - 1] = 42
        #expect(throws: DiscoveryError.malformed(what: what, detail: "unknown reject reason 42")) {
            try MembershipMessage.decode(bytes)
        }
        bytes = MembershipMessage.accept(Self.id).encode()
        bytes[4] = 9
        #expect(throws: DiscoveryError.protocolVersion(what: what, local: 1, remote: 9)) {
            try MembershipMessage.decode(bytes)
        }
        let unsorted = Proposal(
            id: Self.id, members: [node(2), node(9), node(5)], worldSize: 3, minSize: nil, ring: nil)
        #expect(throws: DiscoveryError.self) {
            try MembershipMessage.decode(MembershipMessage.propose(unsorted).encode())
        }
        let notFirst = Proposal(id: Self.id, members: [node(1), node(2)], worldSize: 2, minSize: nil, ring: nil)
        #expect(notFirst.structuralProblem != nil)
        #expect(throws: DiscoveryError.self) {
            try MembershipMessage.decode(MembershipMessage.commit(notFirst).encode())
        }
        // A ring that is not a permutation from rank 0: rewrite the last two ring ranks.
        bytes = MembershipMessage.propose(Self.proposal).encode()
        bytes[bytes.count - 2] = 0
        #expect(throws: DiscoveryError.self) { try MembershipMessage.decode(bytes) }
        // A member count beyond the limit.
        bytes = MembershipMessage.propose(Self.proposal).encode()
        bytes[7 + 24 + 4] = 0xFF
        bytes[7 + 24 + 5] = 0xFF
        #expect(
            throws: DiscoveryError.fieldTooLong(what: what, field: "member count", length: 65_535, limit: 1024)
        ) { try MembershipMessage.decode(bytes) }
        #expect(throws: DiscoveryError.self) {
            try MembershipMessage.decode([UInt8](repeating: 0, count: MembershipMessage.maxEncodedSize + 1))
        }
    }

    @Test("random frames are refused without crashing")
    func fuzz() {
        var g = SplitMix64(seed: 7)
        let valid = Self.all.map { $0.encode() }
        for round in 0..<5000 {
            var bytes = valid[round % valid.count]
            for _ in 0..<(1 + Int(g.next() % 3)) { bytes[Int(g.next() % UInt64(bytes.count))] = UInt8(g.next() & 0xFF) }
            bytes = Array(bytes.prefix(Int(g.next() % UInt64(bytes.count + 8))))
            // Damage can leave a valid message; all that matters is that decoding returns or throws.
            _ = try? MembershipMessage.decode(bytes)
        }
    }

    @Test("a group's ranks are positions in the sorted member list")
    func groupRanks() {
        let group = MembershipGroup(Self.proposal)
        #expect(group.worldSize == 4)
        for (i, m) in Self.members.enumerated() { #expect(group.rank(of: m) == i) }
        #expect(group.rank(of: node(3)) == nil)
        #expect(group.ring.ranks == [0, 2, 1, 3])
        let plain = MembershipGroup(Proposal(id: Self.id, members: Self.members, worldSize: 4, minSize: nil, ring: nil))
        #expect(plain.ring == .identity(count: 4))
    }
}

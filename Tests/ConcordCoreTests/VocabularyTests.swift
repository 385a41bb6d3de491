import ConcordCore
import Testing

@Suite("Core vocabulary")
struct VocabularyTests {
    let tag = SegmentTag(
        collective: .allReduce, sequence: 4, dataType: .float32, op: .sum, count: 100, offset: 25, length: 25)

    @Test("a matching tag passes")
    func matching() throws {
        try tag.check(received: tag, rank: 1, peer: 0)
    }

    @Test("each differing field is reported with both ranks and both values")
    func mismatches() {
        var other = tag
        other.count = 99
        #expect(
            throws: ConcordError.mismatch(
                rank: 1, peer: 0, what: "element count", local: "100 elements", remote: "99 elements")
        ) {
            try tag.check(received: other, rank: 1, peer: 0)
        }
        other = tag
        other.sequence = 5
        #expect(throws: ConcordError.self) { try tag.check(received: other, rank: 1, peer: 0) }
        other = tag
        other.collective = .barrier
        #expect(
            throws: ConcordError.mismatch(rank: 1, peer: 0, what: "collective", local: "allReduce", remote: "barrier")
        ) {
            try tag.check(received: other, rank: 1, peer: 0)
        }
        other = tag
        other.offset = 26
        #expect(throws: ConcordError.self) { try tag.check(received: other, rank: 1, peer: 0) }
    }

    @Test("every error's message names the reporting rank")
    func messagesNameRanks() {
        let errors: [ConcordError] = [
            .peerLost(rank: 2, peer: 1, reason: "end of stream"),
            .aborted(rank: 3, reportedBy: 2, reason: "rank 2: lost rank 1"),
            .mismatch(rank: 1, peer: 0, what: "element count", local: "3 elements", remote: "4 elements"),
            .protocolVersion(rank: 0, peer: "rank 1", local: 1, remote: 2),
            .joinTimeout(rank: 0, missing: [2, 3], seconds: 5),
            .masterUnreachable(rank: 1, address: "10.0.0.1:29500", seconds: 60, reason: "connection refused"),
            .addressInUse(rank: 0, address: "0.0.0.0:29500", hint: "choose another"),
        ]
        for error in errors {
            #expect(error.description.hasPrefix("rank \(error.reportingRank!): "), "\(error)")
            #expect(!error.description.contains("\n"))
        }
        #expect(ConcordError.joinTimeout(rank: 0, missing: [2, 3], seconds: 5).description.contains("[2, 3]"))
        #expect(ConcordError.peerLost(rank: 2, peer: 1, reason: "x").description.contains("rank 1"))
        // A connection that failed before the peer said its rank names no made-up rank.
        let early = ConcordError.peerLost(rank: 2, peer: -1, reason: "x").description
        #expect(!early.contains("-1") && early.contains("had not said its rank"), "\(early)")
    }

    @Test("deadlines order and expire")
    func deadlines() {
        let soon = Deadline.after(seconds: 0)
        let later = Deadline.after(seconds: 100)
        #expect(soon < later && later < .never)
        #expect(soon.hasPassed && !later.hasPassed && !Deadline.never.hasPassed)
        #expect(later.remainingSeconds > 99 && later.remainingSeconds <= 100)
        #expect(Deadline.earliest(later, soon) == soon || Deadline.earliest(later, soon).hasPassed)
    }
}

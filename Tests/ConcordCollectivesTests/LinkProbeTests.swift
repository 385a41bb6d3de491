// The link probe and the agreement on links, on the in-memory transport (every rank a thread): every rank
// ends with the same vector, link k at index k being what rank k+1 measured, with positive finite
// bandwidths; estimates injected per rank give every rank the same vector and the same balanced plan;
// the probe's frames are stamped as docs/wire-format.md says; sizes that differ between ranks fail.
import ConcordCollectives
import ConcordCore
import ConcordTestSupport
import Testing

@Suite("LinkProbe")
struct LinkProbeTests {
    @Test("probe and agree: the same vector on every rank, positive finite bandwidths", arguments: 1...4)
    func probeAndAgree(ranks n: Int) {
        let world = InMemoryWorld(worldSize: n, timeout: 20)
        let results = withRanks(n, seconds: 60) { rank -> (incoming: LinkEstimate, links: [LinkEstimate]) in
            let transport = world.transport(rank: rank)
            let incoming = try RingCollectives.probeLink(sequence: 1, transport: transport)
            return (incoming, try RingCollectives.agreeOnLinks(incoming: incoming, sequence: 2, transport: transport))
        }
        var outcomes = [(incoming: LinkEstimate, links: [LinkEstimate])]()
        for (rank, result) in results.enumerated() {
            switch result {
            case .success(let outcome): outcomes.append(outcome)
            case .failure(let error): Issue.record("rank \(rank) failed: \(error)")
            }
        }
        guard outcomes.count == n else { return }
        let links = outcomes[0].links
        #expect(links.count == n)
        for rank in 0..<n {
            #expect(
                outcomes[rank].links.map(\.bytesPerSecond.bitPattern) == links.map(\.bytesPerSecond.bitPattern)
                    && outcomes[rank].links.map(\.latencySeconds.bitPattern) == links.map(\.latencySeconds.bitPattern),
                "rank \(rank) holds other links")
            #expect(links[(rank + n - 1) % n] == outcomes[rank].incoming, "link into rank \(rank)")
        }
        if n == 1 {
            #expect(links == [.unknown])
        } else {
            for link in links {
                #expect(link.bytesPerSecond > 0 && link.bytesPerSecond.isFinite, "\(link)")
                #expect(link.latencySeconds >= 0 && link.latencySeconds.isFinite, "\(link)")
            }
            _ = CapacityPlan.balanced(links: links)  // a valid input
        }
    }

    @Test("different estimates per rank: every rank gets the same vector and the same plan", arguments: 2...6)
    func agreement(ranks n: Int) {
        let world = InMemoryWorld(worldSize: n, timeout: 20)
        @Sendable func incoming(_ rank: Int) -> LinkEstimate {
            LinkEstimate(
                bytesPerSecond: [2.5e6, 12.5e6, 1e8, 7e6, 3e7, 1e6][rank], latencySeconds: Double(rank) * 1e-3)
        }
        let results = withRanks(n, seconds: 60) { rank -> (links: [LinkEstimate], plan: CapacityPlan) in
            let links = try RingCollectives.agreeOnLinks(
                incoming: incoming(rank), sequence: 5, transport: world.transport(rank: rank))
            return (links, CapacityPlan.balanced(links: links, slowLinkCodec: .int8(blockSize: 64)))
        }
        let expected = (0..<n).map { incoming(($0 + 1) % n) }
        var plans = [CapacityPlan]()
        for (rank, result) in results.enumerated() {
            switch result {
            case .success(let (links, plan)):
                #expect(links == expected, "rank \(rank): \(links)")
                plans.append(plan)
            case .failure(let error):
                Issue.record("rank \(rank) failed: \(error)")
            }
        }
        #expect(plans.count == n)
        for plan in plans {
            #expect(plan == plans[0] && plan.chunkWeights.map(\.bitPattern) == plans[0].chunkWeights.map(\.bitPattern))
        }
    }

    @Test("probe frames: linkProbe, uint8, tiling rounds × sizes, after a barrier each")
    func frames() {
        let n = 3
        let sizes = [1000, 5000]
        let world = InMemoryWorld(worldSize: n, timeout: 20)
        let results = withRanks(n, seconds: 60) { rank -> [RecordingTransport.Frame] in
            let transport = RecordingTransport(world.transport(rank: rank))
            _ = try RingCollectives.probeLink(bytes: sizes, rounds: 2, sequence: 7, transport: transport)
            return transport.sent
        }
        for (rank, result) in results.enumerated() {
            guard case .success(let sent) = result else {
                Issue.record("rank \(rank) failed: \(result)")
                continue
            }
            let probes = sent.filter { $0.tag.collective == .linkProbe }
            let barriers = sent.filter { $0.tag.collective == .barrier }
            #expect(sent.allSatisfy { $0.peer == (rank + 1) % n && $0.tag.sequence == 7 })
            #expect(barriers.count == 4 * (n - 1) && probes.count == 4)
            #expect(probes.map(\.tag.offset) == [0, 1000, 6000, 7000])
            #expect(probes.map(\.tag.length) == [1000, 5000, 1000, 5000])
            #expect(probes.allSatisfy { $0.tag.count == 12000 && $0.tag.dataType == .uint8 })
        }
    }

    @Test("ranks probing other sizes fail instead of hanging; bad arguments fail before any frame")
    func mismatch() {
        let n = 3
        let world = InMemoryWorld(worldSize: n, timeout: 10)
        let results = withRanks(n, seconds: 30) { rank in
            try RingCollectives.probeLink(
                bytes: rank == 1 ? [1000, 9000] : [1000, 8000], sequence: 1, transport: world.transport(rank: rank))
        }
        #expect(results.contains { if case .failure(ConcordError.mismatch) = $0 { true } else { false } })
        #expect(results.allSatisfy { if case .failure = $0 { true } else { false } })

        let empty = InMemoryWorld(worldSize: n, timeout: 10)
        let refused = withRanks(n, seconds: 30) { rank in
            try RingCollectives.probeLink(bytes: [], sequence: 1, transport: empty.transport(rank: rank))
        }
        #expect(refused.allSatisfy { if case .failure(ConcordError.invalidArgument) = $0 { true } else { false } })
    }

    @Test("the fit: bandwidth from the difference, latency from the intercept, guarded")
    func fit() {
        // t = 1 ms + b / 1 MB/s.
        let line = RingCollectives.linkEstimate(sizes: [11_000, 1_000], seconds: [0.012, 0.002])
        #expect(abs(line.bytesPerSecond - 1e6) < 1e-3 && abs(line.latencySeconds - 0.001) < 1e-12, "\(line)")
        // Noise larger than the difference: the larger size alone, no latency.
        let noisy = RingCollectives.linkEstimate(sizes: [1_000, 11_000], seconds: [0.004, 0.004])
        #expect(noisy == LinkEstimate(bytesPerSecond: 11_000 / 0.004, latencySeconds: 0))
        // A fit with a negative intercept clamps the latency at 0.
        let clamped = RingCollectives.linkEstimate(sizes: [1_000, 2_000], seconds: [0.0001, 0.0003])
        #expect(clamped.latencySeconds == 0 && abs(clamped.bytesPerSecond - 5e6) < 1e-3)
        // One size, or a zero time.
        #expect(RingCollectives.linkEstimate(sizes: [4_000], seconds: [0.002]).bytesPerSecond == 2e6)
        #expect(RingCollectives.linkEstimate(sizes: [4_000], seconds: [0]).bytesPerSecond.isFinite)
    }
}

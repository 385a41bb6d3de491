// Link probe: every rank measures the ring link into it, with every link loaded at once, as in a ring
// all-reduce; then the ranks agree on the whole vector (input to `CapacityPlan.balanced`).
//
//        rank0 ──probe──▶ rank1 ──probe──▶ rank2 ──probe──▶ rank3     each rank times what arrives
//          ▲                                                  │        from its left: the estimate of
//          └──────────────────────probe───────────────────────┘        link r−1 → r
//
// For each round and each probe size b: a ring barrier (so every rank starts within about a hop's
// latency of the others), then every rank posts the receive of b bytes from its left and the send of b
// bytes to its right, and times the receive from the moment it was posted (ContinuousClock). The fastest
// of the rounds counts for each size (the slower ones met a scheduler or another flow). With times t_1 <
// t_2 for sizes b_1 < b_2 (the smallest and largest probed), the link is the line t = L + b/B:
//   B = (b_2 − b_1) / (t_2 − t_1),   L = max(0, t_1 − b_1/B).
// The start skew between neighbours adds to both times and so ends up in L, not B. When t_2 ≤ t_1 (noise
// larger than the difference) or there is one size: B = b_2 / t_2 and L = 0, a lower bound on B.
//
// Frames: collective `linkProbe`, dtype uint8, op sum, count = rounds · Σ sizes (the probe's bytes: a rank
// probing other sizes fails with a count mismatch), offset = where this frame starts among them (round ·
// Σ sizes + the sizes before it), length = its size; the barriers are the ring barrier's frames with
// the same sequence number. Frames between two ranks are never reordered, so each frame matches exactly
// one posted receive.
//
// Agreement: `agreeOnLinks` all-gathers every rank's estimate of its incoming link (two float64 per
// rank: bytes per second, latency) and re-indexes them so element k is link k → k+1. Every rank then
// holds the same bits, and `CapacityPlan.balanced` of them is the same plan on every rank: no coordinator.
//
// Cost: rounds × sizes × (a barrier of n−1 empty steps + one transfer per link, all at once): with the
// defaults 3 × (16 KiB + 256 KiB) per link, about 0.35 s on a 20 Mbit/s link, a few ms on a LAN.
import ConcordCore

extension RingCollectives {
    /// Measures the ring link into this rank (from its left), with every link of the ring carrying a
    /// probe at the same time. Every rank calls it with the same arguments.
    ///
    /// - Parameters:
    ///   - bytes: the probe sizes, positive; the latency and bandwidth are fitted to the smallest and the
    ///     largest (one size: bandwidth only). The largest should take much longer than the latency.
    ///   - rounds: probes of each size; the fastest counts.
    ///   - sequence: this collective's number in the communicator's call sequence (same on every rank).
    ///   - transport: this rank's transport.
    /// - Returns: the estimate of link (rank−1) → rank: a positive finite bandwidth and a latency ≥ 0;
    ///   `LinkEstimate.unknown` in a world of one rank.
    /// - Throws: `ConcordError.invalidArgument`, before any frame is sent, for no sizes, a size ≤ 0 or
    ///   rounds < 1; otherwise the transport's `ConcordError` (peer lost, a rank probing other sizes, ...).
    public static func probeLink(
        bytes sizes: [Int] = [16 << 10, 256 << 10], rounds: Int = 3, sequence: UInt64, transport: Transport
    ) throws -> LinkEstimate {
        let n = transport.worldSize
        let rank = transport.rank
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 > 0 }), rounds >= 1 else {
            throw ConcordError.invalidArgument(
                rank: rank, message: "probeLink needs positive sizes and rounds: sizes \(sizes), rounds \(rounds)")
        }
        if n == 1 { return .unknown }
        let (left, right) = ((rank + n - 1) % n, (rank + 1) % n)
        let largest = sizes.max()!
        let total = sizes.reduce(0, +)
        let outgoing = UnsafeMutableRawBufferPointer.allocate(byteCount: largest, alignment: 64)
        let incoming = UnsafeMutableRawBufferPointer.allocate(byteCount: largest, alignment: 64)
        outgoing.initializeMemory(as: UInt8.self, repeating: 0)
        defer {  // the transport holds no reference once a wait returned or threw
            outgoing.deallocate()
            incoming.deallocate()
        }
        let clock = ContinuousClock()
        var fastest = [Double](repeating: .infinity, count: sizes.count)
        for round in 0..<rounds {
            var offset = round * total
            for (i, size) in sizes.enumerated() {
                try barrier(sequence: sequence, transport: transport)
                let tag = SegmentTag(
                    collective: .linkProbe, sequence: sequence, dataType: .uint8, op: .sum, count: rounds * total,
                    offset: offset, length: size)
                let start = clock.now
                let receive = try transport.receive(
                    from: left, tag: tag, into: UnsafeMutableRawBufferPointer(rebasing: incoming[0..<size]),
                    reducer: nil)
                let send = try transport.send(
                    to: right, tag: tag, from: UnsafeRawBufferPointer(rebasing: outgoing[0..<size]))
                try transport.wait(receive)
                let elapsed = start.duration(to: clock.now)
                try transport.wait(send)
                let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
                fastest[i] = min(fastest[i], seconds)
                offset += size
            }
        }
        return linkEstimate(sizes: sizes, seconds: fastest)
    }

    /// The line t = latency + bytes / bandwidth through the fastest times of the smallest and the largest
    /// size (see the file comment); times below a nanosecond count as one.
    package static func linkEstimate(sizes: [Int], seconds: [Double]) -> LinkEstimate {
        precondition(!sizes.isEmpty && sizes.count == seconds.count, "one time per size")
        let small = sizes.indices.min { (sizes[$0], $0) < (sizes[$1], $1) }!
        let large = sizes.indices.max { (sizes[$0], -$0) < (sizes[$1], -$1) }!
        let (b1, b2) = (Double(sizes[small]), Double(sizes[large]))
        let (t1, t2) = (max(seconds[small], 1e-9), max(seconds[large], 1e-9))
        if b2 > b1 && t2 > t1 {
            let bandwidth = (b2 - b1) / (t2 - t1)
            return LinkEstimate(bytesPerSecond: bandwidth, latencySeconds: max(0, t1 - b1 / bandwidth))
        }
        return LinkEstimate(bytesPerSecond: b2 / t2, latencySeconds: 0)
    }

    /// Gathers every rank's estimate of its incoming link, so that every rank holds the same vector, link
    /// k → k+1 at index k (rank k+1's `incoming`). Every rank calls it.
    ///
    /// - Parameters:
    ///   - incoming: this rank's estimate of the link from its left (`probeLink`): bandwidth > 0 (may be
    ///     `.infinity`), latency finite and ≥ 0.
    ///   - sequence: this collective's number in the communicator's call sequence (same on every rank).
    /// - Returns: `worldSize` estimates, the same bits on every rank.
    /// - Throws: the transport's `ConcordError`; `malformedFrame` naming the rank whose estimate is not a
    ///   valid one (which a correct peer never sends).
    public static func agreeOnLinks(incoming: LinkEstimate, sequence: UInt64, transport: Transport) throws
        -> [LinkEstimate]
    {
        let n = transport.worldSize
        let rank = transport.rank
        func isValid(_ b: Double, _ l: Double) -> Bool { b > 0 && l >= 0 && l.isFinite }
        precondition(
            isValid(incoming.bytesPerSecond, incoming.latencySeconds), "rank \(rank): invalid estimate \(incoming)")
        let mine = [incoming.bytesPerSecond, incoming.latencySeconds]
        var all = [Double](repeating: 0, count: 2 * n)
        try mine.withUnsafeBytes { input in
            try all.withUnsafeMutableBytes { output in
                try allGather(
                    input: input, output: output, count: 2, dataType: .float64, sequence: sequence,
                    transport: transport)
            }
        }
        return try (0..<n).map { k in
            let r = (k + 1) % n  // rank k+1 measured link k
            guard isValid(all[2 * r], all[2 * r + 1]) else {
                throw ConcordError.malformedFrame(
                    rank: rank, peer: "rank \(r)",
                    detail:
                        "link estimate \(all[2 * r]) B/s, \(all[2 * r + 1]) s is not a bandwidth > 0 and a latency ≥ 0")
            }
            return LinkEstimate(bytesPerSecond: all[2 * r], latencySeconds: all[2 * r + 1])
        }
    }
}

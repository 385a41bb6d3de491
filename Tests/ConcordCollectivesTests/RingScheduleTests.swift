import ConcordCollectives
import Testing

@Suite("RingSchedule")
struct RingScheduleTests {
    static let counts = [0, 1, 2, 3, 7, 15, 16, 17, 31, 100, 1001]

    @Test("chunks are disjoint, ordered and cover the buffer", arguments: 1...16)
    func chunksCover(worldSize n: Int) {
        for count in Self.counts + [n - 1, n, n + 1] where count >= 0 {
            let plan = RingSchedule(worldSize: n, rank: 0, count: count, segmentElements: 3)
            var next = 0
            for c in 0..<n {
                let chunk = plan.chunk(c)
                #expect(chunk.lowerBound == next, "n=\(n) count=\(count) chunk \(c)")
                #expect(chunk.count >= count / n && chunk.count <= count / n + 1)
                next = chunk.upperBound
            }
            #expect(next == count)
        }
    }

    @Test("segments of every chunk are disjoint and cover it", arguments: 1...16)
    func segmentsCover(worldSize n: Int) {
        for count in Self.counts {
            for segmentElements in [1, 2, 5, 1 << 20] {
                let plan = RingSchedule(worldSize: n, rank: n - 1, count: count, segmentElements: segmentElements)
                for c in 0..<n {
                    var next = plan.chunk(c).lowerBound
                    for j in 0..<plan.segmentsPerChunk {
                        let segment = plan.segment(j, ofChunk: c)
                        #expect(segment.lowerBound == next)
                        #expect(segment.count <= segmentElements)
                        next = segment.upperBound
                    }
                    #expect(next == plan.chunk(c).upperBound)
                }
            }
        }
    }

    /// The plans of the ring collectives: all-reduce, reduce-scatter (and barrier), all-gather.
    static let shapes: [(phases: [RingPhase], rotation: Int)] = [
        (RingPhase.allCases, 0), ([.reduceScatter], -1), ([.allGather], -1), ([.reduceScatter], 0),
    ]

    @Test("each rank sends (n-1) chunks per phase, and what rank r sends rank r+1 receives", arguments: 1...16)
    func sendsMatchReceives(worldSize n: Int) {
        for count in Self.counts {
            for shape in Self.shapes {
                for band in [1, 2, Int.max] {
                    let plans = (0..<n).map {
                        RingSchedule(
                            worldSize: n, rank: $0, count: count, segmentElements: 4, phases: shape.phases,
                            rotation: shape.rotation)
                    }
                    let units = plans[0].unitCount
                    #expect(units == shape.phases.count * (n - 1) * plans[0].segmentsPerChunk)
                    for r in 0..<n {
                        #expect(plans[r].left == (r + n - 1) % n && plans[r].right == (r + 1) % n)
                        var sentChunks = [Int]()
                        let order = plans[r].wireOrder(band: band)
                        #expect(order == plans[(r + 1) % n].wireOrder(band: band))
                        for u in order {
                            let mine = plans[r].unit(u)
                            let theirs = plans[(r + 1) % n].unit(u)
                            #expect(
                                mine.send == theirs.receive,
                                "n=\(n) count=\(count) \(shape) band \(band) rank \(r) unit \(u)")
                            if mine.segment == 0 { sentChunks.append(plans[r].sendChunk(mine.phase, step: mine.step)) }
                        }
                        #expect(sentChunks.count == shape.phases.count * (n - 1))
                    }
                }
            }
        }
    }

    @Test(
        "the wire order is a permutation in which every send's dependency was received one wave earlier",
        arguments: 1...16)
    func wireOrder(worldSize n: Int) {
        for count in Self.counts + [100_000] {
            for phases in [[RingPhase.reduceScatter], RingPhase.allCases] {
                let plan = RingSchedule(
                    worldSize: n, rank: 0, count: count, segmentElements: 7, pipelineElements: 3, phases: phases)
                let k = plan.segmentsPerChunk
                let order = plan.wireOrder()
                #expect(order.sorted() == Array(0..<(phases.count * plan.unitsPerPhase)))
                var position = [Int: Int]()
                for (p, u) in order.enumerated() { position[u] = p }
                for (p, u) in order.enumerated() where u >= k {
                    // unit u is sent after receiving u - k; that receive comes earlier in the same order
                    #expect(position[u - k]! < p, "n=\(n) count=\(count) unit \(u)")
                    let wave = { (v: Int) in v / k + v % k }
                    #expect(wave(u) == wave(u - k) + 1)
                }
            }
        }
    }

    @Test("a banded wire order takes the columns band by band, in waves no wider than the band", arguments: 1...9)
    func bandedWireOrder(worldSize n: Int) {
        for count in [0, 1, 100, 1001, 100_000] {
            for band in [1, 2, 3, 5] {
                let plan = RingSchedule(
                    worldSize: n, rank: 0, count: count, segmentElements: 7, phases: [.reduceScatter], rotation: -1)
                let k = plan.segmentsPerChunk
                let order = plan.wireOrder(band: band)
                #expect(order.sorted() == Array(0..<plan.unitCount))
                var position = [Int: Int]()
                for (p, u) in order.enumerated() { position[u] = p }
                // Every dependency comes earlier; bands follow each other; within a band, waves g + j ascend.
                let bandOf = { (u: Int) in (u % k) / band }
                let waveOf = { (u: Int) in u / k + u % k }
                for (p, u) in order.enumerated() {
                    if u >= k { #expect(position[u - k]! < p, "n=\(n) count=\(count) band \(band) unit \(u)") }
                    if p > 0 {
                        let v = order[p - 1]
                        #expect(bandOf(v) < bandOf(u) || (bandOf(v) == bandOf(u) && waveOf(v) <= waveOf(u)))
                    }
                }
                // A wave holds at most `band` units.
                var width = [Int: Int]()
                for u in order { width[bandOf(u) * 1_000_000 + waveOf(u), default: 0] += 1 }
                #expect(width.values.allSatisfy { $0 <= min(band, max(1, n - 1)) })
                // Without a band the order is the plain anti-diagonal one.
                #expect(plan.wireOrder(band: k) == plan.wireOrder())
            }
        }
    }

    @Test("out-of-place reduce-scatter scratch is band + lag segments, whatever n and the segments per chunk")
    func reduceScatterScratch() {
        let band = RingCollectives.reduceScatterBand
        let lag = RingCollectives.reduceScatterSendLag
        for n in [2, 3, 4, 8, 16, 33] {
            for count in [0, 1, 10, 1000, 100_000] {
                for segmentElements in [1, 7, 1000, 1 << 20] {
                    let plan = RingSchedule(
                        worldSize: n, rank: n / 2, count: n * count, segmentElements: segmentElements,
                        phases: [.reduceScatter], rotation: -1)
                    let forwarded = (n - 2) * plan.segmentsPerChunk  // receives before the last step
                    let slots = RingCollectives.scratchSegments(plan: plan, order: plan.wireOrder(band: band), lag: lag)
                    #expect(
                        slots <= band + lag && slots <= forwarded, "n=\(n) count=\(count) k=\(plan.segmentsPerChunk)")
                    #expect(slots >= min(1, forwarded))
                }
            }
        }
        // The unbanded order would need about one segment per step in flight.
        let wide = RingSchedule(
            worldSize: 33, rank: 0, count: 33 * 100_000, segmentElements: 1000, phases: [.reduceScatter])
        #expect(RingCollectives.scratchSegments(plan: wide, order: wide.wireOrder(), lag: lag) > 30)
    }

    @Test("large chunks are cut into at least pipelineDepth segments, never below the pipeline size")
    func pipelineSegments() {
        let deep = RingSchedule(worldSize: 2, rank: 0, count: 1 << 20, segmentElements: 1 << 30, pipelineElements: 1024)
        #expect(deep.segmentsPerChunk == RingSchedule.pipelineDepth)
        let small = RingSchedule(worldSize: 2, rank: 0, count: 3000, segmentElements: 1 << 30, pipelineElements: 1024)
        #expect(small.segmentsPerChunk == 1)
        let bySize = RingSchedule(worldSize: 2, rank: 0, count: 1 << 20, segmentElements: 1000, pipelineElements: 1024)
        #expect(bySize.segmentsPerChunk == (1 << 19 + 999) / 1000)
    }

    @Test(
        "reduce-scatter leaves chunk r+1 complete on rank r; all-gather delivers every other chunk once",
        arguments: 1...16)
    func phasesDeliverEverything(worldSize n: Int) {
        for r in 0..<n {
            let plan = RingSchedule(worldSize: n, rank: r, count: 1000, segmentElements: 1000)
            // Reduce-scatter: the set of contributions each chunk holds on each rank, followed step by step.
            var holds = (0..<n).map { rank in (0..<n).map { _ in Set([rank]) } }  // holds[rank][chunk]
            for step in 0..<(n - 1) {
                var next = holds
                for rank in 0..<n {
                    let p = RingSchedule(worldSize: n, rank: rank, count: 1000, segmentElements: 1000)
                    let received = p.receiveChunk(.reduceScatter, step: step)
                    let sender = p.left
                    let sent = RingSchedule(worldSize: n, rank: sender, count: 1000, segmentElements: 1000)
                        .sendChunk(.reduceScatter, step: step)
                    #expect(sent == received)
                    next[rank][received].formUnion(holds[sender][received])
                }
                holds = next
            }
            #expect(holds[r][(r + 1) % n] == Set(0..<n), "rank \(r) does not own a complete chunk \((r + 1) % n)")
            #expect(plan.ownedChunk == (r + 1) % n)
            // All-gather: every chunk but the owned one arrives exactly once.
            let received = (0..<(n - 1)).map { plan.receiveChunk(.allGather, step: $0) }
            #expect(Set(received).count == n - 1)
            #expect(!received.contains((r + 1) % n))
            // The chunk sent at unit u+k is the one received at unit u.
            for u in 0..<max(0, 2 * plan.unitsPerPhase - plan.segmentsPerChunk) {
                #expect(plan.unit(u + plan.segmentsPerChunk).send == plan.unit(u).receive)
            }
        }
    }

    @Test("with rotation -1 reduce-scatter leaves chunk r, block r, complete on rank r", arguments: 1...16)
    func rotatedReduceScatter(worldSize n: Int) {
        let count = 5
        let plans = (0..<n).map {
            RingSchedule(
                worldSize: n, rank: $0, count: n * count, segmentElements: 2, phases: [.reduceScatter], rotation: -1)
        }
        var holds = (0..<n).map { rank in (0..<n).map { _ in Set([rank]) } }  // holds[rank][chunk]
        for step in 0..<(n - 1) {
            var next = holds
            for rank in 0..<n {
                let received = plans[rank].receiveChunk(.reduceScatter, step: step)
                let sender = plans[rank].left
                #expect(plans[sender].sendChunk(.reduceScatter, step: step) == received)
                // what a rank sends at step s+1 is what it received at step s
                if step > 0 {
                    #expect(
                        plans[rank].sendChunk(.reduceScatter, step: step)
                            == plans[rank].receiveChunk(.reduceScatter, step: step - 1))
                }
                next[rank][received].formUnion(holds[sender][received])
            }
            holds = next
        }
        for r in 0..<n {
            #expect(plans[r].ownedChunk == r)
            #expect(plans[r].chunk(r) == (r * count)..<((r + 1) * count), "chunks are the blocks")
            #expect(holds[r][r] == Set(0..<n), "rank \(r) does not own a complete block \(r)")
            // the last receive of rank r is its own block, every segment of it
            if n > 1 {
                let k = plans[r].segmentsPerChunk
                let last = (0..<k).map { plans[r].unit(plans[r].unitCount - k + $0).receive }
                #expect(last == (0..<k).map { plans[r].segment($0, ofChunk: r) })
            }
        }
    }

    @Test("all-gather alone with rotation -1 starts from block r and brings every other block once", arguments: 1...16)
    func rotatedAllGather(worldSize n: Int) {
        for r in 0..<n {
            let plan = RingSchedule(
                worldSize: n, rank: r, count: n * 3, segmentElements: 1, phases: [.allGather], rotation: -1)
            #expect(plan.unitCount == (n - 1) * 3)
            if n > 1 {
                #expect(plan.unit(0).phase == .allGather)
                #expect(plan.sendChunk(.allGather, step: 0) == r)
            }
            let received = (0..<(n - 1)).map { plan.receiveChunk(.allGather, step: $0) }
            #expect(Set(received) == Set(0..<n).subtracting([r]))
            for u in 0..<max(0, plan.unitCount - plan.segmentsPerChunk) {
                #expect(plan.unit(u + plan.segmentsPerChunk).send == plan.unit(u).receive)
            }
        }
    }
}

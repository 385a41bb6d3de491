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

    @Test("each rank sends 2(n-1) chunks, and what rank r sends rank r+1 receives", arguments: 1...16)
    func sendsMatchReceives(worldSize n: Int) {
        for count in Self.counts {
            let plans = (0..<n).map { RingSchedule(worldSize: n, rank: $0, count: count, segmentElements: 4) }
            let units = 2 * plans[0].unitsPerPhase
            #expect(units == 2 * (n - 1) * plans[0].segmentsPerChunk)
            for r in 0..<n {
                #expect(plans[r].left == (r + n - 1) % n && plans[r].right == (r + 1) % n)
                var sentChunks = [Int]()
                let order = plans[r].wireOrder(phases: 2)
                #expect(order == plans[(r + 1) % n].wireOrder(phases: 2))
                for u in order {
                    let mine = plans[r].unit(u)
                    let theirs = plans[(r + 1) % n].unit(u)
                    #expect(mine.send == theirs.receive, "n=\(n) count=\(count) rank \(r) unit \(u)")
                    if mine.segment == 0 { sentChunks.append(plans[r].sendChunk(mine.phase, step: mine.step)) }
                }
                #expect(sentChunks.count == 2 * (n - 1))
            }
        }
    }

    @Test(
        "the wire order is a permutation in which every send's dependency was received one wave earlier",
        arguments: 1...16)
    func wireOrder(worldSize n: Int) {
        for count in Self.counts + [100_000] {
            for phases in [1, 2] {
                let plan = RingSchedule(worldSize: n, rank: 0, count: count, segmentElements: 7, pipelineElements: 3)
                let k = plan.segmentsPerChunk
                let order = plan.wireOrder(phases: phases)
                #expect(order.sorted() == Array(0..<(phases * plan.unitsPerPhase)))
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
}

import ConcordCollectives
import Testing

@Suite("ChainSchedule")
struct ChainScheduleTests {
    @Test("segments are disjoint, ordered, cover the buffer and respect the segment size", arguments: 1...9)
    func segmentsCover(worldSize n: Int) {
        for count in [0, 1, 2, 7, 100, 1001, 100_003] {
            for segmentElements in [1, 3, 1000, 1 << 20] {
                let plan = ChainSchedule(
                    worldSize: n, rank: 0, head: 0, count: count, segmentElements: segmentElements,
                    pipelineElements: 16)
                #expect(plan.segments >= 1)
                var next = 0
                for j in 0..<plan.segments {
                    let segment = plan.segment(j)
                    #expect(segment.lowerBound == next)
                    #expect(segment.count <= min(segmentElements, plan.largestSegment))
                    next = segment.upperBound
                }
                #expect(next == count, "n=\(n) count=\(count) segment \(segmentElements)")
            }
        }
    }

    @Test("the chain follows the ring from the head: one rank only sends, one only receives", arguments: 1...9)
    func chainShape(worldSize n: Int) {
        for head in 0..<n {
            let plans = (0..<n).map { ChainSchedule(worldSize: n, rank: $0, head: head, count: 10, segmentElements: 3) }
            #expect(Set(plans.map(\.hop)) == Set(0..<n))
            for plan in plans {
                #expect(plan.tail == (head + n - 1) % n)
                #expect(plan.left == (plan.rank + n - 1) % n && plan.right == (plan.rank + 1) % n)
                #expect(plan.receives == (n > 1 && plan.rank != head))
                #expect(plan.sends == (n > 1 && plan.hop != n - 1))
                // every sender's right neighbour receives, and nobody sends into the head
                if plan.sends { #expect(plans[plan.right].receives) }
                if plan.receives { #expect(plans[plan.left].sends) }
                #expect(plan.segments == plans[0].segments)
            }
            #expect(plans.filter(\.sends).count == n - 1 && plans.filter(\.receives).count == n - 1)
        }
    }

    @Test("large buffers are cut into 4 segments per link, never below the pipeline size")
    func pipelineDepth() {
        #expect(ChainSchedule.pipelineDepth(worldSize: 2) == 4)
        #expect(ChainSchedule.pipelineDepth(worldSize: 8) == 28)
        let deep = ChainSchedule(
            worldSize: 8, rank: 0, head: 0, count: 1 << 20, segmentElements: 1 << 30, pipelineElements: 1024)
        #expect(deep.segments == 28)
        let small = ChainSchedule(
            worldSize: 8, rank: 0, head: 0, count: 3000, segmentElements: 1 << 30, pipelineElements: 1024)
        #expect(small.segments == 2)
        let bySize = ChainSchedule(
            worldSize: 2, rank: 0, head: 0, count: 1 << 20, segmentElements: 1000, pipelineElements: 1024)
        #expect(bySize.segments == ((1 << 20) + 999) / 1000)
    }
}

import ConcordCollectives
import ConcordCore
import ConcordKernels
import ConcordTestSupport
import Testing

@Suite("Ring all-reduce on the in-memory transport")
struct InMemoryAllReduceTests {
    /// Runs an all-reduce of `counts[rank]` elements on every rank; returns each rank's result or error.
    static func allReduce(
        ranks n: Int, counts: [Int], segmentBytes: Int, gatherBytes: Int = 0, halvingBytes: Int = 0,
        fullyConnected: Bool = false, sequence: UInt64 = 1
    ) -> [Result<
        [Float], any Error
    >] {
        let world = InMemoryWorld(worldSize: n, timeout: 20, fullyConnected: fullyConnected)
        return withRanks(n, seconds: 60) { rank in
            var data = (0..<counts[rank]).map { distinctValue(rank: rank, index: $0) }
            try data.withUnsafeMutableBytes { bytes in
                try RingCollectives.allReduce(
                    bytes, count: counts[rank], dataType: .float32, op: .sum, sequence: sequence,
                    transport: world.transport(rank: rank), segmentBytes: segmentBytes, gatherBytes: gatherBytes,
                    halvingBytes: halvingBytes)
            }
            return data
        }
    }

    static func check(_ results: [Result<[Float], any Error>], ranks n: Int, count: Int) {
        for (rank, result) in results.enumerated() {
            switch result {
            case .success(let data):
                #expect(data.count == count)
                let wrong = (0..<count).filter { data[$0] != distinctSum(worldSize: n, index: $0) }
                #expect(
                    wrong.isEmpty,
                    "ranks \(n) count \(count): rank \(rank) has \(wrong.count) wrong values, first at \(wrong.first ?? -1)"
                )
            case .failure(let error):
                Issue.record("ranks \(n) count \(count): rank \(rank) failed: \(error)")
            }
        }
    }

    @Test("every rank gets the exact sum, ring and gathering", arguments: 1...8)
    func exactSums(ranks n: Int) {
        for count in Set([0, 1, max(0, n - 1), n, n + 1, 1_000_003]).sorted() {
            for gather in [0, RingCollectives.defaultGatherBytes] {
                let results = Self.allReduce(
                    ranks: n, counts: Array(repeating: count, count: n), segmentBytes: 1 << 20, gatherBytes: gather)
                Self.check(results, ranks: n, count: count)
            }
        }
    }

    @Test(
        "small buffers by recursive doubling where every partner is reachable (n = 4, 8), else the gathering ring",
        arguments: 1...8)
    func doubling(ranks n: Int) {
        for count in Set([0, 1, max(0, n - 1), n, n + 1, 1000]).sorted() {
            let results = Self.allReduce(
                ranks: n, counts: Array(repeating: count, count: n), segmentBytes: 1 << 20,
                gatherBytes: RingCollectives.defaultGatherBytes, fullyConnected: true)
            Self.check(results, ranks: n, count: count)
        }
        let mismatch = Self.allReduce(
            ranks: n, counts: (0..<n).map { $0 == n - 1 ? 99 : 100 }, segmentBytes: 1 << 20,
            gatherBytes: RingCollectives.defaultGatherBytes, fullyConnected: true)
        if n > 1 {
            let texts = mismatch.map { result -> String in
                if case .failure(let error) = result { return "\(error)" }
                return "no error"
            }
            #expect(texts.allSatisfy { $0 != "no error" }, "\(texts)")
            #expect(texts.contains { $0.contains("100") && $0.contains("99") }, "\(texts)")
        }
    }

    @Test(
        "repeated small all-reduces on ranks that are threads of one process: exact every time (the scratch kept between calls is never shared)",
        arguments: [3, 4])
    func repeatedSmall(ranks n: Int) {
        let world = InMemoryWorld(worldSize: n, timeout: 20, fullyConnected: true)
        let results = withRanks(n, seconds: 60) { rank -> Int in
            var wrongCalls = 0
            for step in 0..<300 {
                // 4 B to 8 KiB: the gathering ring at n = 3, recursive doubling at n = 4.
                let count = 1 + (step * 7) % 2048
                var data = (0..<count).map { Float(1000 * rank + $0 + step) }
                try data.withUnsafeMutableBytes { bytes in
                    try RingCollectives.allReduce(
                        bytes, count: count, dataType: .float32, op: .sum, sequence: UInt64(step + 1),
                        transport: world.transport(rank: rank))
                }
                let base = Float(1000 * n * (n - 1) / 2)
                if (0..<count).contains(where: { data[$0] != Float(n * ($0 + step)) + base }) { wrongCalls += 1 }
            }
            return wrongCalls
        }
        for (rank, result) in results.enumerated() {
            #expect((try? result.get()) == 0, "rank \(rank): \(result)")
        }
    }

    @Test("halving-doubling where every partner is reachable (n = 4, 8), else the ring", arguments: 1...8)
    func halvingDoubling(ranks n: Int) {
        for count in Set([0, 1, max(0, n - 1), n, n + 1, 1000, 100_003]).sorted() {
            let results = Self.allReduce(
                ranks: n, counts: Array(repeating: count, count: n), segmentBytes: 1 << 20, halvingBytes: 1 << 30,
                fullyConnected: true)
            Self.check(results, ranks: n, count: count)
        }
        let mismatch = Self.allReduce(
            ranks: n, counts: (0..<n).map { $0 == 0 ? 99_999 : 100_000 }, segmentBytes: 1 << 20,
            halvingBytes: 1 << 30, fullyConnected: true)
        if n > 1 {
            let texts = mismatch.map { result -> String in
                if case .failure(let error) = result { return "\(error)" }
                return "no error"
            }
            #expect(texts.allSatisfy { $0 != "no error" }, "\(texts)")
            #expect(texts.contains { $0.contains("100000") && $0.contains("99999") }, "\(texts)")
        }
    }

    @Test("above 2 MiB, halving-doubling only when all ranks share one machine (n = 4)", arguments: [false, true])
    func halvingDoublingOnOneMachine(oneMachine: Bool) {
        let n = 4
        let count = (RingCollectives.defaultHalvingBytes / 4) * 3 / 2 + 1
        let world = InMemoryWorld(worldSize: n, timeout: 20, fullyConnected: true, oneMachine: oneMachine)
        let results = withRanks(n, seconds: 60) { rank in
            var data = (0..<count).map { distinctValue(rank: rank, index: $0) }
            try data.withUnsafeMutableBytes { bytes in
                try RingCollectives.allReduce(
                    bytes, count: count, dataType: .float32, op: .sum, sequence: 1, transport: world.transport(rank: rank))
            }
            return data
        }
        Self.check(results, ranks: n, count: count)
        // Halving-doubling's first exchange is with rank XOR 2, which is no ring neighbour at n = 4.
        let acrossRing = (0..<n).map { world.framesSent(from: $0, to: $0 ^ 2) }
        let alongRing = (0..<n).map { world.framesSent(from: $0, to: ($0 + 1) % n) }
        if oneMachine {
            #expect(acrossRing == [2, 2, 2, 2], "\(acrossRing)")
        } else {
            #expect(acrossRing == [0, 0, 0, 0] && alongRing.allSatisfy { $0 >= 6 }, "\(acrossRing) \(alongRing)")
        }
    }

    @Test("at n = 2 a chunk is cut by the segment size only, not for pipelining")
    func noPipelineAtTwo() {
        let count = 1 << 18  // 1 MiB of floats: chunks of 512 KiB, which n = 3 would cut in 4
        let world = InMemoryWorld(worldSize: 2, timeout: 20)
        let results = withRanks(2, seconds: 60) { rank in
            var data = (0..<count).map { distinctValue(rank: rank, index: $0) }
            try data.withUnsafeMutableBytes { bytes in
                try RingCollectives.allReduce(
                    bytes, count: count, dataType: .float32, op: .sum, sequence: 1, transport: world.transport(rank: rank))
            }
            return data
        }
        Self.check(results, ranks: 2, count: count)
        // One reduce-scatter frame and one all-gather frame each way.
        #expect(world.framesSent(from: 0, to: 1) == 2 && world.framesSent(from: 1, to: 0) == 2)
    }

    @Test("many small segments per chunk", arguments: [2, 3, 5])
    func smallSegments(ranks n: Int) {
        for (count, segment) in [(37, 4), (1000, 12), (4099, 64)] {
            let results = Self.allReduce(ranks: n, counts: Array(repeating: count, count: n), segmentBytes: segment)
            Self.check(results, ranks: n, count: count)
        }
    }

    @Test(
        "a rank with another element count fails with both ranks and both counts named (ring, gathering)",
        arguments: [0, RingCollectives.defaultGatherBytes])
    func countMismatch(gatherBytes: Int) {
        let results = Self.allReduce(ranks: 3, counts: [100, 100, 99], segmentBytes: 1 << 20, gatherBytes: gatherBytes)
        let errors = results.compactMap { result -> ConcordError? in
            if case .failure(let error) = result { return error as? ConcordError }
            return nil
        }
        #expect(errors.count == 3, "every rank must fail, got \(results)")
        let mismatches = errors.filter {
            if case .mismatch(_, _, "element count", _, _) = $0 { return true }
            return false
        }
        #expect(!mismatches.isEmpty)
        for error in mismatches {
            let text = error.description
            #expect(text.contains("rank 2") && text.contains("99 elements") && text.contains("100 elements"), "\(text)")
        }
    }

    @Test("barrier completes on every rank", arguments: 1...6)
    func barrier(ranks n: Int) {
        let world = InMemoryWorld(worldSize: n, timeout: 20)
        let results = withRanks(n, seconds: 30) { rank in
            try RingCollectives.barrier(sequence: 7, transport: world.transport(rank: rank))
            return rank
        }
        #expect(results.compactMap { try? $0.get() } == Array(0..<n))
    }
}

import ConcordCollectives
import ConcordCore
import ConcordTestSupport
import Testing

@Suite("Every collective on the in-memory transport")
struct InMemoryCollectiveTests {
    /// A dtype, an op, and whether integer inputs span the whole range (so sums and products wrap).
    struct Sample: Sendable, CustomStringConvertible {
        let dataType: DataType
        let op: ReduceOp
        var wrapping = false
        var description: String { "\(dataType) \(op)\(wrapping ? " (wrapping)" : "")" }
    }

    /// Every dtype and every op, avg on both half types, wrapping integer sums and products.
    static let samples: [Sample] = [
        Sample(dataType: .float32, op: .sum),
        Sample(dataType: .int8, op: .sum, wrapping: true),
        Sample(dataType: .float16, op: .avg),
        Sample(dataType: .float64, op: .prod),
        Sample(dataType: .bfloat16, op: .avg),
        Sample(dataType: .int8, op: .prod, wrapping: true),
        Sample(dataType: .uint8, op: .max),
        Sample(dataType: .int32, op: .min, wrapping: true),
        Sample(dataType: .int64, op: .sum, wrapping: true),
        Sample(dataType: .float32, op: .avg),
        Sample(dataType: .bfloat16, op: .min),
        Sample(dataType: .int32, op: .prod, wrapping: true),
        Sample(dataType: .float64, op: .max),
        Sample(dataType: .uint8, op: .sum, wrapping: true),
        Sample(dataType: .int64, op: .max, wrapping: true),
        Sample(dataType: .float16, op: .sum),
    ]

    /// ≈100_003 elements in all: the count itself for all-reduce, broadcast and reduce, per block for
    /// reduce-scatter and all-gather (whose buffers hold n blocks). Odd.
    static func largeCount(_ collective: Collective, ranks n: Int) -> Int {
        switch collective {
        case .reduceScatter, .allGather: return (100_003 / n) | 1
        case .allReduce, .broadcast, .reduce: return 100_003
        }
    }

    /// Runs `call` with `sample`'s inputs and returns every difference from the expected result.
    static func verify(_ call: Call, ranks n: Int, wrapping: Bool, inPlaceRanks: Set<Int>? = nil) -> [String] {
        let op = call.op
        func fixture<T: TestElement>(_: T.Type) -> (Int, Int) -> T {
            { Fixture.value(T.self, rank: $0, index: $1, op: op) }
        }
        func integers<T: TestElement & FixedWidthInteger>(_: T.Type) -> (Int, Int) -> T {
            if !wrapping { return fixture(T.self) }
            return { WrappingFixture.value(T.self, rank: $0, index: $1, op: op) }
        }
        switch call.dataType {
        case .float32:
            return Harness.verify(Float.self, call, ranks: n, inPlaceRanks: inPlaceRanks, value: fixture(Float.self))
        case .float64:
            return Harness.verify(Double.self, call, ranks: n, inPlaceRanks: inPlaceRanks, value: fixture(Double.self))
        case .float16:
            return Harness.verify(
                Float16.self, call, ranks: n, inPlaceRanks: inPlaceRanks, value: fixture(Float16.self))
        case .bfloat16:
            return Harness.verify(
                BFloat16.self, call, ranks: n, inPlaceRanks: inPlaceRanks, value: fixture(BFloat16.self))
        case .int8:
            return Harness.verify(Int8.self, call, ranks: n, inPlaceRanks: inPlaceRanks, value: integers(Int8.self))
        case .uint8:
            return Harness.verify(UInt8.self, call, ranks: n, inPlaceRanks: inPlaceRanks, value: integers(UInt8.self))
        case .int32:
            return Harness.verify(Int32.self, call, ranks: n, inPlaceRanks: inPlaceRanks, value: integers(Int32.self))
        case .int64:
            return Harness.verify(Int64.self, call, ranks: n, inPlaceRanks: inPlaceRanks, value: integers(Int64.self))
        }
    }

    @Test(
        "every rank gets the exact result: counts 0, 1, n-1, n, n+1, large odd; in place and out of place",
        arguments: Collective.allCases, 1...8)
    func exactResults(_ collective: Collective, ranks n: Int) {
        let counts = Set([0, 1, n - 1, n, n + 1, Self.largeCount(collective, ranks: n)]).sorted()
        // Consecutive runs take consecutive samples, so each collective goes through all of them.
        var next = (n - 1) * 12 + Collective.allCases.firstIndex(of: collective)! * 3
        // All-reduce: both the ring (gather 0) and, for small buffers, the gathering algorithm.
        let gathers = collective == .allReduce ? [0, RingCollectives.defaultGatherBytes] : [0]
        for count in counts {
            for (inPlace, gather) in [false, true].flatMap({ p in gathers.map { (p, $0) } }) {
                let sample = Self.samples[next % Self.samples.count]
                next += 1
                var call = Call(
                    collective: collective, dataType: sample.dataType, op: sample.op, count: count,
                    root: (count + next) % n, inPlace: inPlace)
                call.gatherBytes = gather
                let problems = Self.verify(call, ranks: n, wrapping: sample.wrapping)
                #expect(problems.isEmpty, "\(sample): \(problems.prefix(4).joined(separator: "; "))")
            }
        }
    }

    @Test("many segments per chunk or buffer (tiny segments)", arguments: Collective.allCases, [2, 3, 5])
    func smallSegments(_ collective: Collective, ranks n: Int) {
        let cases: [(count: Int, segmentBytes: Int, sample: Sample)] = [
            (37, 4, Sample(dataType: .float32, op: .sum)),
            (1000, 12, Sample(dataType: .float16, op: .avg)),
            (999, 8, Sample(dataType: .int8, op: .prod, wrapping: true)),
            (4099, 64, Sample(dataType: .int64, op: .sum, wrapping: true)),
        ]
        for (count, segmentBytes, sample) in cases {
            for inPlace in [false, true] {
                var call = Call(
                    collective: collective, dataType: sample.dataType, op: sample.op, count: count, root: count % n,
                    inPlace: inPlace, segmentBytes: segmentBytes)
                call.gatherBytes = 0  // the ring, cut into many segments
                let problems = Self.verify(call, ranks: n, wrapping: sample.wrapping)
                #expect(problems.isEmpty, "\(sample): \(problems.prefix(4).joined(separator: "; "))")
            }
        }
    }

    @Test("ranks may mix in-place and out-of-place calls of the same collective", arguments: Collective.allCases)
    func mixedPlacement(_ collective: Collective) {
        for (n, sample) in [(4, Sample(dataType: .float32, op: .sum)), (5, Sample(dataType: .bfloat16, op: .avg))] {
            let call = Call(
                collective: collective, dataType: sample.dataType, op: sample.op, count: 1001, root: 1,
                segmentBytes: 256)
            let problems = Self.verify(call, ranks: n, wrapping: false, inPlaceRanks: [0, 2])
            #expect(problems.isEmpty, "\(sample): \(problems.prefix(4).joined(separator: "; "))")
        }
    }

    @Test(
        "avg ends bit-identical on every rank of an all-reduce: ring, gathering ring, doubling, halving-doubling",
        arguments: [(0, 3, false), (1 << 20, 3, false), (0, 4, true), (1 << 20, 4, true), (1 << 20, 8, true)])
    func averageIsIdenticalEverywhere(gatherBytes: Int, ranks n: Int, fullyConnected: Bool) {
        // Inputs whose float16 sums round: the owner's scaling, not each rank's, decides the bits.
        let count = 1001
        let world = InMemoryWorld(worldSize: n, timeout: 20, fullyConnected: fullyConnected)
        let results = withRanks(n) { rank -> [Float16] in
            var data = (0..<count).map { Float16(Float(distinctValue(rank: rank, index: $0)) * 1.37) }
            try data.withUnsafeMutableBytes {
                try RingCollectives.allReduce(
                    $0, count: count, dataType: .float16, op: .avg, sequence: 1, transport: world.transport(rank: rank),
                    segmentBytes: 64, gatherBytes: gatherBytes)
            }
            return data
        }
        let outputs = results.compactMap { try? $0.get() }
        #expect(outputs.count == n)
        let bits = outputs.map { $0.map(\.bitPattern) }
        #expect(bits.allSatisfy { $0 == bits[0] })
    }
}

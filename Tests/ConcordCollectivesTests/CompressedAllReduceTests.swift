// The compressed all-reduce on the in-memory transport: every rank a thread, inputs distinct per rank and
// index, over ranks 1…5 × counts {0, 1, 7, 1000, 100003} × codecs (all float32, all float16, all
// bfloat16, all int8, and one lossy link among float32 ones). Checked for every run:
//   (a) every rank ends with the same bits;
//   (b) the error against the exact (float64) sum is within the codec's bound, with Q the number of
//       codec roundings an element goes through — one per lossy link its chunk crosses in the
//       reduce-scatter (at most n−1) plus one for the all-gather — and M_i = Σ_r |x_r[i]|:
//         float16:  Q · (2^-11 · M_i · (1 + Q·2^-11) + 2^-25)   (unit roundoff 2^-11, subnormal spacing 2^-24)
//         bfloat16: Q · 2^-8 · M_i · (1 + Q·2^-8)
//         int8/B:   Q · (W_i · (1 + Q/127) / 127) · (1/2 + 2^-15), W_i = the largest M_j within B−1
//                   elements of i (every block that holds i lies there; partial sums grow by at most
//                   the earlier roundings, hence the factor 1 + Q/127)
//       plus n · 2^-23 · M_i for the float32 additions;
//   (c) with float32 on every link, the exact sum (these inputs sum exactly in float32), and for inputs
//       that do not, the sum in ring order bit for bit.
import ConcordCollectives
import ConcordCore
import ConcordTestSupport
import Testing

/// The codecs of a run.
enum CodecChoice: String, CaseIterable, CustomStringConvertible, Sendable {
    case float32, float16, bfloat16, int8
    /// int8 on the link leaving the last rank, float32 on the others.
    case oneInt8
    /// float16 on the link leaving rank 0, float32 on the others.
    case oneFloat16

    var description: String { rawValue }

    func hopCodecs(ranks n: Int) -> [WireCodec] {
        switch self {
        case .float32: return Array(repeating: .float32, count: n)
        case .float16: return Array(repeating: .float16, count: n)
        case .bfloat16: return Array(repeating: .bfloat16, count: n)
        case .int8: return Array(repeating: .int8(blockSize: 64), count: n)
        case .oneInt8: return (0..<n).map { $0 == n - 1 ? .int8(blockSize: 64) : .float32 }
        case .oneFloat16: return (0..<n).map { $0 == 0 ? .float16 : .float32 }
        }
    }
}

enum Compressed {
    /// Runs a compressed all-reduce of `counts[rank]` elements `value(rank, index)` on every rank of an
    /// n-rank in-memory world; returns each rank's result or error.
    static func run(
        ranks n: Int, counts: [Int], codecs: @escaping @Sendable (Int) -> [WireCodec], chunkCounts: [Int]? = nil,
        segmentBytes: Int = RingCollectives.defaultSegmentBytes,
        value: @escaping @Sendable (Int, Int) -> Float = { distinctValue(rank: $0, index: $1) }
    ) -> [Result<[Float], any Error>] {
        let world = InMemoryWorld(worldSize: n, timeout: 20)
        return withRanks(n, seconds: 120) { rank in
            var data = (0..<counts[rank]).map { value(rank, $0) }
            try data.withUnsafeMutableBufferPointer { buffer in
                try RingCollectives.compressedAllReduce(
                    buffer, hopCodecs: codecs(rank), chunkCounts: chunkCounts, sequence: 3,
                    transport: world.transport(rank: rank), segmentBytes: segmentBytes)
            }
            return data
        }
    }

    /// Codec roundings an element goes through (see the file comment).
    static func roundings(_ codecs: [WireCodec]) -> Int {
        let n = codecs.count
        let lossy = codecs.filter { !$0.isLossless }.count
        return n == 1 || lossy == 0 ? 0 : min(n - 1, lossy) + 1
    }

    /// The error bound of element `i` (see the file comment); `m` holds M_j = Σ_r |x_r[j]|.
    static func bound(_ codecs: [WireCodec], _ m: [Double], groupMax: [Double], _ i: Int) -> Double {
        let n = Double(codecs.count)
        let q = Double(roundings(codecs))
        let additions = n * 0x1p-23 * m[i]
        switch WireCodec.coarsest(codecs) {
        case .float32: return additions
        case .float16: return q * (0x1p-11 * m[i] * (1 + q * 0x1p-11) + 0x1p-25) + additions
        case .bfloat16: return q * 0x1p-8 * m[i] * (1 + q * 0x1p-8) + additions
        case .int8(let b):
            let g = i / b
            let w = groupMax[max(0, g - 1)...min(groupMax.count - 1, g + 1)].max()!
            return q * (w * (1 + q / 127) / 127) * (0.5 + 0x1p-15) + n * 0x1p-23 * w
        }
    }

    /// Checks (a) and (b) of the file comment, and exactness where `exact` says the float32 result must be
    /// the exact sum; returns the problems.
    static func check(
        _ results: [Result<[Float], any Error>], codecs: [WireCodec], count: Int,
        value: (Int, Int) -> Float = { distinctValue(rank: $0, index: $1) }, exact: Bool, label: String
    ) -> [String] {
        let n = codecs.count
        var outputs = [[Float]]()
        for (rank, result) in results.enumerated() {
            switch result {
            case .success(let data) where data.count == count: outputs.append(data)
            case .success(let data): return ["\(label): rank \(rank) has \(data.count) elements, not \(count)"]
            case .failure(let error): return ["\(label): rank \(rank) failed: \(error)"]
            }
        }
        var problems = [String]()
        for rank in 1..<n where outputs[rank].map(\.bitPattern) != outputs[0].map(\.bitPattern) {
            let first = (0..<count).first { outputs[rank][$0].bitPattern != outputs[0][$0].bitPattern }!
            problems.append(
                "\(label): rank \(rank) differs from rank 0, first at \(first): \(outputs[rank][first]) vs \(outputs[0][first])"
            )
        }
        let got = outputs[0]
        if n == 1 {
            if got != (0..<count).map({ value(0, $0) }) { problems.append("\(label): one rank changed its values") }
            return problems
        }
        var sums = [Double](repeating: 0, count: count)
        var magnitudes = [Double](repeating: 0, count: count)
        for r in 0..<n {
            for i in 0..<count {
                let x = Double(value(r, i))
                sums[i] += x
                magnitudes[i] += abs(x)
            }
        }
        var groupMax = [Double]()
        if case .int8(let b) = WireCodec.coarsest(codecs) {
            groupMax = stride(from: 0, to: count, by: b).map { magnitudes[$0..<min(count, $0 + b)].max()! }
        }
        var wrong = 0
        var firstWrong = ""
        for i in 0..<count {
            let error = abs(Double(got[i]) - sums[i])
            let allowed = exact ? 0 : bound(codecs, magnitudes, groupMax: groupMax, i)
            if !(error <= allowed) {
                if wrong == 0 { firstWrong = "at \(i): \(got[i]) instead of \(sums[i]), error \(error) > \(allowed)" }
                wrong += 1
            }
        }
        if wrong > 0 { problems.append("\(label): \(wrong) elements beyond the bound, first \(firstWrong)") }
        if roundings(codecs) > 0 && count >= 1000 && (0..<count).allSatisfy({ Double(got[$0]) == sums[$0] }) {
            problems.append("\(label): every sum is exact: is the codec on the wire?")
        }
        return problems
    }
}

@Suite("Compressed all-reduce on the in-memory transport")
struct CompressedAllReduceTests {
    @Test(
        "every rank the same bits, within the codec's bound of the exact sum (exact with float32)",
        arguments: 1...5)
    func grid(ranks n: Int) {
        for count in [0, 1, 7, 1000, 100_003] {
            for choice in CodecChoice.allCases {
                let codecs = choice.hopCodecs(ranks: n)
                let results = Compressed.run(ranks: n, counts: Array(repeating: count, count: n)) { _ in codecs }
                let problems = Compressed.check(
                    results, codecs: codecs, count: count, exact: choice == .float32,
                    label: "ranks \(n) count \(count) \(choice)")
                #expect(problems.isEmpty, "\(problems)")
            }
        }
    }

    @Test("many segments per chunk, weighted chunks, frames within segmentBytes", arguments: [2, 3, 5])
    func segmentsAndChunks(ranks n: Int) {
        let count = 4099
        var weighted = [Int](repeating: 0, count: n)  // rank 0 most, rank 1 nothing (for n > 2)
        weighted[0] = 3000
        let others = n > 2 ? Array(2..<n) : [1]
        for c in others { weighted[c] = (count - 3000) / others.count }
        weighted[others.last!] += count - weighted.reduce(0, +)
        let chunkings: [[Int]?] = [nil, weighted]
        for chunkCounts in chunkings {
            for choice in CodecChoice.allCases {
                for segmentBytes in [64 * 4, 1000, 4096] {
                    let codecs = choice.hopCodecs(ranks: n)
                    let label =
                        "ranks \(n) \(choice) segment \(segmentBytes) chunks \(chunkCounts.map { "\($0)" } ?? "equal")"
                    let world = InMemoryWorld(worldSize: n, timeout: 20)
                    let results = withRanks(n, seconds: 60) {
                        rank -> (data: [Float], sent: [RecordingTransport.Frame]) in
                        var data = (0..<count).map { distinctValue(rank: rank, index: $0) }
                        let transport = RecordingTransport(world.transport(rank: rank))
                        try data.withUnsafeMutableBufferPointer {
                            try RingCollectives.compressedAllReduce(
                                $0, hopCodecs: codecs, chunkCounts: chunkCounts, sequence: 9, transport: transport,
                                segmentBytes: segmentBytes)
                        }
                        return (data, transport.sent)
                    }
                    let problems = Compressed.check(
                        results.map { $0.map(\.data) }, codecs: codecs, count: count, exact: choice == .float32,
                        label: label)
                    #expect(problems.isEmpty, "\(problems)")
                    for (rank, result) in results.enumerated() {
                        guard case .success(let (_, sent)) = result else { continue }
                        let gather = WireCodec.coarsest(codecs)
                        #expect(sent.count % (2 * (n - 1)) == 0, "\(label): \(sent.count) frames")
                        for frame in sent {
                            #expect(frame.peer == (rank + 1) % n)
                            #expect(frame.tag.collective == .compressedAllReduce && frame.tag.count == count)
                            #expect(frame.tag.byteCount <= segmentBytes, "\(label): \(frame.tag)")
                        }
                        let types = Set(sent.map(\.tag.dataType))
                        let expected: Set = [codecs[rank].wireType, gather.wireType]
                        #expect(types == expected, "\(label): rank \(rank) sends \(types)")
                    }
                }
            }
        }
    }

    @Test("int8 on every link carries about 1.0625/4 of float32's bytes")
    func bytesOnTheWire() {
        let n = 4
        let count = 100_000
        for (codec, perElement) in [(WireCodec.int8(blockSize: 64), 1.0625), (.float16, 2), (.float32, 4)] {
            let world = InMemoryWorld(worldSize: n, timeout: 20)
            let results = withRanks(n, seconds: 60) { rank -> Int in
                var data = (0..<count).map { distinctValue(rank: rank, index: $0) }
                let transport = RecordingTransport(world.transport(rank: rank))
                try data.withUnsafeMutableBufferPointer {
                    try RingCollectives.compressedAllReduce(
                        $0, hopCodecs: Array(repeating: codec, count: n), sequence: 1, transport: transport)
                }
                return transport.sent.map(\.tag.byteCount).reduce(0, +)
            }
            let ideal = 2.0 * Double(n - 1) / Double(n) * Double(count) * perElement
            for result in results {
                let bytes = Double((try? result.get()) ?? -1)
                #expect(bytes >= ideal && bytes <= ideal * 1.01, "\(codec): \(bytes) bytes sent, ideally \(ideal)")
            }
        }
    }

    @Test("with float32 everywhere, the ring-order sum bit for bit, also for inputs that round", arguments: 2...5)
    func ringOrderSum(ranks n: Int) {
        let value: @Sendable (Int, Int) -> Float = { rank, index in
            Float(sign: .plus, exponent: (index + rank) % 9 - 4, significand: 1)
                * (1 + Float((index * 31 + rank * 17) % 1000) / 997)
                * (index % 3 == rank % 3 ? -1 : 1)
        }
        for count in [1, 7, 1000, 100_003] {
            let codecs = [WireCodec](repeating: .float32, count: n)
            let results = Compressed.run(
                ranks: n, counts: Array(repeating: count, count: n), codecs: { _ in codecs }, value: value)
            let problems = Compressed.check(
                results, codecs: codecs, count: count, value: value, exact: false, label: "ranks \(n) count \(count)")
            #expect(problems.isEmpty, "\(problems)")
            // Chunk c (rank c's) is summed from rank c+1 round to rank c.
            let base = count / n
            let extra = count % n
            var expected = [Float](repeating: 0, count: count)
            for c in 0..<n {
                let start = c * base + min(c, extra)
                for i in start..<(start + base + (c < extra ? 1 : 0)) {
                    var sum = value((c + 1) % n, i)
                    for t in 2...n { sum += value((c + t) % n, i) }
                    expected[i] = sum
                }
            }
            let got = (try? results[0].get()) ?? []
            #expect(got.map(\.bitPattern) == expected.map(\.bitPattern), "ranks \(n) count \(count)")
        }
    }

    @Test("one rank: the values stay exact whatever the codec")
    func oneRank() {
        for choice in CodecChoice.allCases {
            let results = Compressed.run(ranks: 1, counts: [1000], codecs: { _ in choice.hopCodecs(ranks: 1) })
            #expect((try? results[0].get()) == (0..<1000).map { distinctValue(rank: 0, index: $0) }, "\(choice)")
        }
    }

    @Test("a rank with another count fails on every rank with a mismatch naming both ranks and counts")
    func countMismatch() {
        for choice in [CodecChoice.int8, .float32, .oneFloat16] {
            let results = Compressed.run(ranks: 3, counts: [100, 100, 99], codecs: { _ in choice.hopCodecs(ranks: 3) })
            let errors = results.compactMap { result -> ConcordError? in
                if case .failure(let error) = result { return error as? ConcordError }
                return nil
            }
            #expect(errors.count == 3, "\(choice): every rank must fail, got \(results)")
            let mismatches = errors.filter {
                if case .mismatch(_, _, "element count", _, _) = $0 { return true }
                return false
            }
            #expect(!mismatches.isEmpty, "\(choice): \(errors)")
            for error in mismatches {
                let text = error.description
                #expect(
                    text.contains("rank 2") && text.contains("99 elements") && text.contains("100 elements"), "\(text)")
            }
        }
    }

    @Test("a rank with another codec on a link fails with a dtype mismatch")
    func codecMismatch() {
        let results = Compressed.run(ranks: 3, counts: [100, 100, 100]) { rank in
            rank == 1 ? [.int8(blockSize: 64), .float16, .float16] : [.float16, .float16, .float16]
        }
        let texts = results.map { result -> String in
            if case .failure(let error) = result { return "\(error)" }
            return "no error"
        }
        #expect(texts.allSatisfy { $0 != "no error" }, "\(texts)")
        #expect(texts.contains { $0.contains("data type") && $0.contains("int8") && $0.contains("half") }, "\(texts)")
    }

    @Test("a rank calling the plain all-reduce meanwhile fails with a collective mismatch")
    func collectiveMismatch() {
        let world = InMemoryWorld(worldSize: 2, timeout: 20)
        let results = withRanks(2, seconds: 60) { rank in
            var data = (0..<1000).map { distinctValue(rank: rank, index: $0) }
            try data.withUnsafeMutableBufferPointer { buffer in
                if rank == 0 {
                    try RingCollectives.allReduce(
                        UnsafeMutableRawBufferPointer(buffer), count: 1000, dataType: .float32, op: .sum, sequence: 3,
                        transport: world.transport(rank: rank))
                } else {
                    try RingCollectives.compressedAllReduce(
                        buffer, hopCodecs: [.float32, .float32], sequence: 3, transport: world.transport(rank: rank))
                }
            }
        }
        let texts = results.map { result -> String in
            if case .failure(let error) = result { return "\(error)" }
            return "no error"
        }
        #expect(texts.allSatisfy { $0.contains("collective") }, "\(texts)")
        #expect(texts.contains { $0.contains("compressedAllReduce") && $0.contains("allReduce") }, "\(texts)")
    }

    @Test("arguments that cannot work throw invalidArgument on every rank before any frame")
    func invalidArguments() {
        let bad: [(codecs: [WireCodec], chunks: [Int]?)] = [
            ([.float32, .float32], nil), ([.float32, .int8(blockSize: 0), .float32], nil),
            ([.float32, .float32, .float32], [10, 10]), ([.float32, .float32, .float32], [50, 60, -10]),
            ([.float32, .float32, .float32], [50, 40, 9]),
        ]
        for (codecs, chunks) in bad {
            let results = Compressed.run(
                ranks: 3, counts: [100, 100, 100], codecs: { _ in codecs }, chunkCounts: chunks)
            for result in results {
                guard case .failure(let error as ConcordError) = result, case .invalidArgument = error else {
                    Issue.record("\(codecs) \(chunks ?? []): \(result)")
                    continue
                }
            }
        }
    }

    @Test("codecs: sizes, the gather codec, round trips, decodeAdd and quantizationError")
    func codecs() {
        #expect(WireCodec.int8(blockSize: 64).encodedByteCount(65) == 65 + 8)
        #expect(WireCodec.float16.encodedByteCount(5) == 10)
        #expect(WireCodec.int8(blockSize: 64).bytesPerElement == 1.0625)
        #expect(WireCodec.coarsest([.float32, .float16, .bfloat16]) == .bfloat16)
        #expect(WireCodec.coarsest([.float16, .float32]) == .float16)
        #expect(
            WireCodec.coarsest([.float32, .int8(blockSize: 64), .int8(blockSize: 128), .bfloat16])
                == .int8(blockSize: 128))
        #expect(WireCodec.coarsest([.float32]) == .float32)
        #expect(WireCodec.int8(blockSize: 64).wireType == .int8 && WireCodec.float32.wireType == .float32)
        let x = (0..<5000).map { Float($0 % 97) * 0.37 - 17 }
        let base = (0..<5000).map { Float($0 % 13) - 6 }
        for codec in [WireCodec.float32, .float16, .bfloat16, .int8(blockSize: 64), .int8(blockSize: 7)] {
            var bytes = [UInt8](repeating: 0, count: codec.encodedByteCount(x.count))
            var y = [Float](repeating: 0, count: x.count)
            var sum = base
            x.withUnsafeBufferPointer { s in bytes.withUnsafeMutableBytes { codec.encode(s, into: $0) } }
            bytes.withUnsafeBytes { e in
                y.withUnsafeMutableBufferPointer { codec.decode(from: e, into: $0) }
                sum.withUnsafeMutableBufferPointer { codec.decodeAdd(from: e, into: $0) }
            }
            #expect(sum.indices.allSatisfy { sum[$0] == base[$0] + y[$0] }, "\(codec)")
            // What encoding drops, into another buffer and in place.
            var error = [Float](repeating: .nan, count: x.count)
            var inPlace = x
            x.withUnsafeBufferPointer { s in
                error.withUnsafeMutableBufferPointer { codec.quantizationError(of: s, into: $0) }
            }
            inPlace.withUnsafeMutableBufferPointer { codec.quantizationError(of: UnsafeBufferPointer($0), into: $0) }
            #expect(error == zip(x, y).map { $0 - $1 } && inPlace == error, "\(codec)")
            switch codec {
            case .float32: #expect(y == x)
            case .float16: #expect(y == x.map { Float(Float16($0)) })
            case .bfloat16: #expect(y == x.map { Float(BFloat16($0)) })
            case .int8: #expect(zip(x, y).allSatisfy { abs($0 - $1) <= 19 / 127 * 0.5001 }, "\(codec)")
            }
        }
    }
}

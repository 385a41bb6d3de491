import ConcordCollectives
import ConcordCore
import ConcordTestSupport

/// The collectives under test.
enum Collective: String, CaseIterable, CustomStringConvertible, Sendable {
    case allReduce, reduceScatter, allGather, broadcast, reduce

    var description: String { rawValue }
    var kind: CollectiveKind {
        switch self {
        case .allReduce: return .allReduce
        case .reduceScatter: return .reduceScatter
        case .allGather: return .allGather
        case .broadcast: return .broadcast
        case .reduce: return .reduce
        }
    }
    /// Elements of one rank's input for a collective of `count` over `n` ranks.
    func inputCount(_ count: Int, ranks n: Int) -> Int { self == .reduceScatter ? n * count : count }
    /// Elements of one rank's output.
    func outputCount(_ count: Int, ranks n: Int) -> Int { self == .allGather ? n * count : count }
}

/// What one rank calls.
struct Call: Sendable, CustomStringConvertible {
    var collective: Collective
    var dataType: DataType
    var op: ReduceOp = .sum
    var count: Int
    var root = 0
    var inPlace = false
    var segmentBytes = RingCollectives.defaultSegmentBytes
    var sequence: UInt64 = 1
    /// All-reduce only: the largest buffer passed whole (0: always the ring).
    var gatherBytes = RingCollectives.defaultGatherBytes

    var description: String {
        let placement = inPlace ? " in place" : ""
        return "\(collective)\(placement) \(dataType) \(op) count \(count) root \(root) segment \(segmentBytes)"
            + (collective == .allReduce ? " gather \(gatherBytes)" : "")
    }

    /// Performs the call. In place, `output` is the one buffer (laid out as the in-place call wants).
    func perform(
        transport: Transport, input: UnsafeMutableRawBufferPointer, output: UnsafeMutableRawBufferPointer
    ) throws {
        let input = UnsafeRawBufferPointer(input)
        let (t, s, q) = (transport, segmentBytes, sequence)
        switch (collective, inPlace) {
        case (.allReduce, true):
            try RingCollectives.allReduce(
                output, count: count, dataType: dataType, op: op, sequence: q, transport: t, segmentBytes: s,
                gatherBytes: gatherBytes)
        case (.allReduce, false):
            try RingCollectives.allReduce(
                input: input, output: output, count: count, dataType: dataType, op: op, sequence: q, transport: t,
                segmentBytes: s, gatherBytes: gatherBytes)
        case (.reduceScatter, true):
            try RingCollectives.reduceScatter(
                output, count: count, dataType: dataType, op: op, sequence: q, transport: t, segmentBytes: s)
        case (.reduceScatter, false):
            try RingCollectives.reduceScatter(
                input: input, output: output, count: count, dataType: dataType, op: op, sequence: q, transport: t,
                segmentBytes: s)
        case (.allGather, true):
            try RingCollectives.allGather(
                output, count: count, dataType: dataType, sequence: q, transport: t, segmentBytes: s)
        case (.allGather, false):
            try RingCollectives.allGather(
                input: input, output: output, count: count, dataType: dataType, sequence: q, transport: t,
                segmentBytes: s)
        case (.broadcast, true):
            try RingCollectives.broadcast(
                output, count: count, dataType: dataType, root: root, sequence: q, transport: t, segmentBytes: s)
        case (.broadcast, false):
            try RingCollectives.broadcast(
                input: input, output: output, count: count, dataType: dataType, root: root, sequence: q,
                transport: t, segmentBytes: s)
        case (.reduce, true):
            try RingCollectives.reduce(
                output, count: count, dataType: dataType, op: op, root: root, sequence: q, transport: t,
                segmentBytes: s)
        case (.reduce, false):
            try RingCollectives.reduce(
                input: input, output: output, count: count, dataType: dataType, op: op, root: root, sequence: q,
                transport: t, segmentBytes: s)
        }
    }
}

/// Memory a test may hand to a rank's thread (each rank touches only its own).
struct RankMemory: @unchecked Sendable {
    let input: UnsafeMutableRawBufferPointer
    let output: UnsafeMutableRawBufferPointer
}

enum Harness {
    /// Elements after every buffer that no collective may touch.
    static let guardElements = 3

    /// Runs `calls[rank]` on every rank of one in-memory world, with zeroed buffers sized for each call;
    /// returns what each rank threw, if anything. For calls meant to fail.
    static func errors(_ calls: [Call]) -> [(any Error)?] {
        let n = calls.count
        let world = InMemoryWorld(worldSize: n, timeout: 10)
        let memory = calls.map { call in
            let size = call.dataType.size
            let input = UnsafeMutableRawBufferPointer.allocate(
                byteCount: max(1, call.collective.inputCount(call.count, ranks: n) * size), alignment: 64)
            let output = UnsafeMutableRawBufferPointer.allocate(
                byteCount: max(1, max(call.collective.outputCount(call.count, ranks: n), input.count / size) * size),
                alignment: 64)
            input.initializeMemory(as: UInt8.self, repeating: 0)
            output.initializeMemory(as: UInt8.self, repeating: 0)
            return RankMemory(input: input, output: output)
        }
        defer {
            for m in memory {
                m.input.deallocate()
                m.output.deallocate()
            }
        }
        let results = withRanks(n, seconds: 30) { rank in
            let m = memory[rank]
            try calls[rank].perform(transport: world.transport(rank: rank), input: m.input, output: m.output)
        }
        return results.map {
            if case .failure(let error) = $0 { return error }
            return nil
        }
    }

    /// Runs `call` on every rank of an n-rank in-memory world with inputs `value(rank, index)` (index is
    /// the element's index in the collective's global numbering: block b of a reduce-scatter input and
    /// of an all-gather output starts at b·count), and returns every difference from the definition of
    /// the collective, including writes past a buffer's end and changes to what must stay unchanged.
    /// With `inPlaceRanks`, those ranks call the in-place variant and the others the out-of-place one.
    static func verify<T: TestElement>(
        _: T.Type, _ call: Call, ranks n: Int, inPlaceRanks: Set<Int>? = nil,
        value: (_ rank: Int, _ index: Int) -> T
    ) -> [String] {
        let calls = (0..<n).map { r in
            var mine = call
            if let inPlaceRanks { mine.inPlace = inPlaceRanks.contains(r) }
            return mine
        }
        let c = call.count
        let collective = call.collective
        let sentinel = T(fixture: 101)
        let guardTail = [T](repeating: sentinel, count: guardElements)
        // What each rank starts with, computed once.
        let inputs: [[T]] = (0..<n).map { r in
            let base = collective == .allGather ? r * c : 0
            return (0..<collective.inputCount(c, ranks: n)).map { value(r, base + $0) }
        }
        let initialOutputs: [[T]] = (0..<n).map { r in
            guard calls[r].inPlace else { return [T](repeating: sentinel, count: collective.outputCount(c, ranks: n)) }
            if collective != .allGather { return inputs[r] }
            var buffer = [T](repeating: sentinel, count: n * c)
            buffer.replaceSubrange((r * c)..<(r * c + c), with: inputs[r])
            return buffer
        }
        let world = InMemoryWorld(worldSize: n, timeout: 20)
        let results = withRanks(n, seconds: 60) { r -> (input: [T], output: [T]) in
            var input = inputs[r] + guardTail
            var output = initialOutputs[r] + guardTail
            try input.withUnsafeMutableBytes { i in
                try output.withUnsafeMutableBytes { o in
                    try calls[r].perform(transport: world.transport(rank: r), input: i, output: o)
                }
            }
            return (input, output)
        }

        // The result every rank must hold (in the global numbering where it is a reduction).
        let reduced: [T]
        switch collective {
        case .allReduce, .reduce, .reduceScatter:
            reduced = (0..<collective.inputCount(c, ranks: n)).map { g in
                reduction(worldSize: n, op: call.op) { inputs[$0][g] }
            }
        case .allGather:
            reduced = inputs.flatMap { $0 }
        case .broadcast:
            reduced = inputs[call.root]
        }

        var problems = [String]()
        func compare(_ rank: Int, _ what: String, _ got: ArraySlice<T>, _ expected: ArraySlice<T>) {
            guard got.count == expected.count else {
                problems.append(
                    "\(calls[rank]) ranks \(n): rank \(rank) \(what): \(got.count) elements, not \(expected.count)")
                return
            }
            if got.elementsEqual(expected) { return }
            let wrong = zip(got, expected).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
            let first = wrong[0]
            problems.append(
                "\(calls[rank]) ranks \(n): rank \(rank) \(what): \(wrong.count) wrong, first at \(first): "
                    + "\(got[got.startIndex + first]) instead of \(expected[expected.startIndex + first])")
        }
        for (r, result) in results.enumerated() {
            let (input, output): ([T], [T])
            switch result {
            case .success(let buffers): (input, output) = buffers
            case .failure(let error):
                problems.append("\(calls[r]) ranks \(n): rank \(r) failed: \(error)")
                continue
            }
            let inputLength = input.count - guardElements
            let outputLength = output.count - guardElements
            compare(r, "guard after the input", input[inputLength...], guardTail[...])
            compare(r, "guard after the output", output[outputLength...], guardTail[...])
            if !calls[r].inPlace { compare(r, "input", input[..<inputLength], inputs[r][...]) }
            let result = output[..<outputLength]
            switch collective {
            case .allReduce, .allGather, .broadcast:
                compare(r, "result", result, reduced[...])
            case .reduceScatter:
                let block = calls[r].inPlace ? result.dropFirst(r * c).prefix(c) : result
                compare(r, "block \(r)", block, reduced[(r * c)..<(r * c + c)])
            case .reduce:
                if r == call.root {
                    compare(r, "result", result, reduced[...])
                } else {  // in place the buffer is the unchanged input; out of place the output is untouched
                    let what = calls[r].inPlace ? "unchanged buffer" : "untouched output"
                    compare(r, what, result, initialOutputs[r][...])
                }
            }
        }
        return problems
    }
}

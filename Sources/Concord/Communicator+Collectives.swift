// The collectives of `Communicator`, for every `ConcordElement` type, in the forms a training loop needs:
// on arrays, on caller-owned memory (in place and out of place), and blocking for callers outside Swift
// concurrency. Semantics are NCCL's (see docs/algorithms.md); every rank must make the same calls with
// the same counts, types, ops and roots, in the same order.
//
// Arrays are moved into a box for the duration of the call (no copy), worked on in place by the loop
// thread, and moved back. Raw buffers must stay valid and untouched until the call returns.
import ConcordCollectives
import ConcordCore
import ConcordKernels
import ConcordUV

extension Communicator {
    // MARK: - allReduce

    /// Reduces `data` element-wise over all ranks, in place; every rank ends with the same result.
    ///
    /// - Parameters:
    ///   - data: the same number of elements on every rank (any count, including 0).
    ///   - op: `.sum`, `.prod`, `.min`, `.max`, or `.avg` (floating-point types only). Integer sums and
    ///     products wrap around.
    /// - Throws: `ConcordError` naming this rank and the peer at fault: `.peerLost`, `.aborted`,
    ///   `.mismatch` (count, dtype, op or call order differ), `.invalidArgument`, `.shutDown`.
    public func allReduce<T: ConcordElement>(_ data: inout [T], op: ReduceOp = .sum) async throws {
        let box = ArrayBox(&data)
        defer { box.restore(into: &data) }
        try await perform(allReduceJob(box, nil, T.dataType, op))
    }

    /// Reduces `buffer` in place over all ranks.
    public func allReduce<T: ConcordElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum)
        async throws
    {
        try await perform(allReduceJob(SendableBytes(buffer), nil, T.dataType, op))
    }

    /// Reduces `input` over all ranks into `output` (same count; `output` may be `input` itself).
    public func allReduce<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum
    ) async throws {
        try await perform(allReduceJob(SendableBytes(input), SendableBytes(output), T.dataType, op))
    }

    /// Blocking `allReduce` on an array.
    public func allReduceBlocking<T: ConcordElement>(_ data: inout [T], op: ReduceOp = .sum) throws {
        try data.withUnsafeMutableBufferPointer { try allReduceBlocking($0, op: op) }
    }

    /// Blocking `allReduce` on caller-owned memory, in place.
    public func allReduceBlocking<T: ConcordElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum)
        throws
    {
        // A closure literal rather than `allReduceJob`: not escaping, its context stays on the stack.
        let (bytes, capacity) = (SendableBytes(buffer), self.capacity)
        try performBlocking { try Self.allReduce(bytes, nil, T.dataType, op, capacity, $0, $1, $2) }
    }

    /// Blocking `allReduce` from `input` into `output`.
    public func allReduceBlocking<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum
    ) throws {
        let (input, output, capacity) = (SendableBytes(input), SendableBytes(output), self.capacity)
        try performBlocking { try Self.allReduce(input, output, T.dataType, op, capacity, $0, $1, $2) }
    }

    func allReduceJob(_ input: any Buffer, _ output: (any Buffer)?, _ dataType: DataType, _ op: ReduceOp) -> Job {
        let capacity = self.capacity
        return { try Self.allReduce(input, output, dataType, op, capacity, $0, $1, $2) }
    }

    private static func allReduce(
        _ input: any Buffer, _ output: (any Buffer)?, _ dataType: DataType, _ op: ReduceOp,
        _ capacity: CapacityState, _ transport: UVTransport, _ sequence: UInt64, _ segment: Int
    ) throws {
        try input.with(output) { input, output in
            try check(
                output.count == input.count, rank: transport.rank,
                "allReduce output holds \(output.count) elements, input \(input.count)")
            if dataType == .float32, op == .sum || op == .avg,
                let plan = capacity.plan(forBytes: input.bytes.count, worldSize: transport.worldSize)
            {
                // The capacity-aware ring (Communicator+Capacity.swift) works in place.
                if input.bytes.baseAddress != output.bytes.baseAddress {
                    output.bytes.copyMemory(from: UnsafeRawBufferPointer(input.bytes))
                }
                let floats = output.bytes.bindMemory(to: Float.self)
                try Self.sum(floats, plan: plan, sequence: sequence, transport: transport, segmentBytes: segment)
                if op == .avg, let base = floats.baseAddress {
                    ReduceKernels.scale(base, count: floats.count, dataType: .float32, by: 1 / Double(transport.worldSize))
                }
                return
            }
            try RingCollectives.allReduce(
                input: UnsafeRawBufferPointer(input.bytes), output: output.bytes, count: input.count,
                dataType: dataType, op: op, sequence: sequence, transport: transport, segmentBytes: segment)
        }
    }

    // MARK: - reduceScatter

    /// Reduces `input` (n blocks of equal size) over all ranks and returns block `rank` of the result.
    /// - Throws: `.invalidArgument` when `input.count` is not a multiple of `worldSize`; as `allReduce`.
    public func reduceScatter<T: ConcordElement>(_ input: [T], op: ReduceOp = .sum) async throws -> [T] {
        var output = input.isEmpty ? [] : [T](repeating: input[0], count: input.count / worldSize)
        let source = ArrayCopy(input)
        let box = ArrayBox(&output)
        try await perform(Self.reduceScatterJob(source, box, T.dataType, op))
        box.restore(into: &output)
        return output
    }

    /// Reduces `input` (n blocks of `output.count` elements) over all ranks into `output`, which receives
    /// block `rank`. In place when `output` is block `rank` of `input`.
    public func reduceScatter<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum
    ) async throws {
        try await perform(Self.reduceScatterJob(SendableBytes(input), SendableBytes(output), T.dataType, op))
    }

    /// Blocking `reduceScatter` on an array.
    public func reduceScatterBlocking<T: ConcordElement>(_ input: [T], op: ReduceOp = .sum) throws -> [T] {
        var output = input.isEmpty ? [] : [T](repeating: input[0], count: input.count / worldSize)
        try input.withUnsafeBufferPointer { input in
            try output.withUnsafeMutableBufferPointer { try reduceScatterBlocking(input, into: $0, op: op) }
        }
        return output
    }

    /// Blocking `reduceScatter` on caller-owned memory.
    public func reduceScatterBlocking<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum
    ) throws {
        try performBlocking(Self.reduceScatterJob(SendableBytes(input), SendableBytes(output), T.dataType, op))
    }

    static func reduceScatterJob(_ input: any Buffer, _ output: (any Buffer)?, _ dataType: DataType, _ op: ReduceOp)
        -> Job
    {
        { transport, sequence, segment in
            try input.with(output) { input, output in
                let n = transport.worldSize
                let count = output.count
                try check(
                    input.count == n * count, rank: transport.rank,
                    "reduceScatter input holds \(input.count) elements, not \(n) blocks of \(count)")
                try RingCollectives.reduceScatter(
                    input: UnsafeRawBufferPointer(input.bytes), output: output.bytes, count: count,
                    dataType: dataType, op: op, sequence: sequence, transport: transport, segmentBytes: segment)
            }
        }
    }

    // MARK: - allGather

    /// Gathers every rank's `input` (the same count on every rank), in rank order, on every rank.
    public func allGather<T: ConcordElement>(_ input: [T]) async throws -> [T] {
        var output = input.isEmpty ? [] : [T](repeating: input[0], count: input.count * worldSize)
        let source = ArrayCopy(input)
        let box = ArrayBox(&output)
        try await perform(Self.allGatherJob(source, box, T.dataType))
        box.restore(into: &output)
        return output
    }

    /// Gathers every rank's `input` into `output` (n blocks of `input.count`), block r from rank r. In
    /// place when `input` is block `rank` of `output`.
    public func allGather<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>
    )
        async throws
    {
        try await perform(Self.allGatherJob(SendableBytes(input), SendableBytes(output), T.dataType))
    }

    /// Blocking `allGather` on an array.
    public func allGatherBlocking<T: ConcordElement>(_ input: [T]) throws -> [T] {
        var output = input.isEmpty ? [] : [T](repeating: input[0], count: input.count * worldSize)
        try input.withUnsafeBufferPointer { input in
            try output.withUnsafeMutableBufferPointer { try allGatherBlocking(input, into: $0) }
        }
        return output
    }

    /// Blocking `allGather` on caller-owned memory.
    public func allGatherBlocking<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>
    ) throws {
        try performBlocking(Self.allGatherJob(SendableBytes(input), SendableBytes(output), T.dataType))
    }

    static func allGatherJob(_ input: any Buffer, _ output: (any Buffer)?, _ dataType: DataType) -> Job {
        { transport, sequence, segment in
            try input.with(output) { input, output in
                let n = transport.worldSize
                let count = input.count
                try check(
                    output.count == n * count, rank: transport.rank,
                    "allGather output holds \(output.count) elements, not \(n) blocks of \(count)")
                try RingCollectives.allGather(
                    input: UnsafeRawBufferPointer(input.bytes), output: output.bytes, count: count,
                    dataType: dataType, sequence: sequence, transport: transport, segmentBytes: segment)
            }
        }
    }

    // MARK: - broadcast

    /// Replaces `data` on every rank with `root`'s `data` (the same count on every rank).
    public func broadcast<T: ConcordElement>(_ data: inout [T], root: Int) async throws {
        let box = ArrayBox(&data)
        defer { box.restore(into: &data) }
        try await perform(Self.broadcastJob(box, nil, T.dataType, root))
    }

    /// Copies `root`'s `buffer` into every rank's `buffer`.
    public func broadcast<T: ConcordElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) async throws {
        try await perform(Self.broadcastJob(SendableBytes(buffer), nil, T.dataType, root))
    }

    /// Copies `root`'s `input` into every rank's `output` (only the root's `input` is read).
    public func broadcast<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, root: Int
    ) async throws {
        try await perform(Self.broadcastJob(SendableBytes(input), SendableBytes(output), T.dataType, root))
    }

    /// Blocking `broadcast` on an array.
    public func broadcastBlocking<T: ConcordElement>(_ data: inout [T], root: Int) throws {
        try data.withUnsafeMutableBufferPointer { try broadcastBlocking($0, root: root) }
    }

    /// Blocking `broadcast` in place.
    public func broadcastBlocking<T: ConcordElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws {
        try performBlocking(Self.broadcastJob(SendableBytes(buffer), nil, T.dataType, root))
    }

    /// Blocking `broadcast` from `input` into `output`.
    public func broadcastBlocking<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, root: Int
    ) throws {
        try performBlocking(Self.broadcastJob(SendableBytes(input), SendableBytes(output), T.dataType, root))
    }

    static func broadcastJob(_ input: any Buffer, _ output: (any Buffer)?, _ dataType: DataType, _ root: Int) -> Job {
        { transport, sequence, segment in
            try input.with(output) { input, output in
                try check(
                    input.count == output.count, rank: transport.rank,
                    "broadcast output holds \(output.count) elements, input \(input.count)")
                try RingCollectives.broadcast(
                    input: UnsafeRawBufferPointer(input.bytes), output: output.bytes, count: output.count,
                    dataType: dataType, root: root, sequence: sequence, transport: transport, segmentBytes: segment)
            }
        }
    }

    // MARK: - reduce

    /// Reduces every rank's `data` into `root`'s `data`; the other ranks' `data` is left as it was.
    public func reduce<T: ConcordElement>(_ data: inout [T], root: Int, op: ReduceOp = .sum) async throws {
        let box = ArrayBox(&data)
        defer { box.restore(into: &data) }
        try await perform(Self.reduceJob(box, nil, T.dataType, op, root))
    }

    /// Reduces every rank's `input` into `root`'s `output` (other ranks' `output` is not written; it may
    /// be `input` itself).
    public func reduce<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, root: Int, op: ReduceOp = .sum
    ) async throws {
        try await perform(Self.reduceJob(SendableBytes(input), SendableBytes(output), T.dataType, op, root))
    }

    /// Blocking `reduce` on an array.
    public func reduceBlocking<T: ConcordElement>(_ data: inout [T], root: Int, op: ReduceOp = .sum) throws {
        try data.withUnsafeMutableBufferPointer {
            try reduceBlocking(UnsafeBufferPointer($0), into: $0, root: root, op: op)
        }
    }

    /// Blocking `reduce` on caller-owned memory.
    public func reduceBlocking<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, root: Int, op: ReduceOp = .sum
    ) throws {
        try performBlocking(Self.reduceJob(SendableBytes(input), SendableBytes(output), T.dataType, op, root))
    }

    static func reduceJob(
        _ input: any Buffer, _ output: (any Buffer)?, _ dataType: DataType, _ op: ReduceOp, _ root: Int
    )
        -> Job
    {
        { transport, sequence, segment in
            try input.with(output) { input, output in
                try check(
                    input.count == output.count, rank: transport.rank,
                    "reduce output holds \(output.count) elements, input \(input.count)")
                try RingCollectives.reduce(
                    input: UnsafeRawBufferPointer(input.bytes), output: output.bytes, count: input.count,
                    dataType: dataType, op: op, root: root, sequence: sequence, transport: transport,
                    segmentBytes: segment)
            }
        }
    }

    // MARK: - barrier

    /// Returns once every rank has called `barrier`.
    public func barrier() async throws {
        try await perform(Self.barrierJob)
    }

    /// Blocking `barrier`.
    public func barrierBlocking() throws {
        try performBlocking(Self.barrierJob)
    }

    static let barrierJob: Job = { transport, sequence, _ in
        try RingCollectives.barrier(sequence: sequence, transport: transport)
    }
}

/// Throws `invalidArgument` unless `condition` holds.
private func check(_ condition: Bool, rank: Int, _ message: @autoclosure () -> String) throws {
    if !condition { throw ConcordError.invalidArgument(rank: rank, message: message()) }
}

/// Memory a job works on: lent to it for the duration of the job on the loop thread.
protocol Buffer: Sendable {
    func withBytes(_ body: (SendableBytes) throws -> Void) throws
}

extension Buffer {
    /// Lends this buffer and `other` together; with no `other`, this one is both (in place).
    func with(_ other: (any Buffer)?, _ body: (SendableBytes, SendableBytes) throws -> Void) throws {
        try withBytes { mine in
            if let other {
                try other.withBytes { theirs in try body(mine, theirs) }
            } else {
                try body(mine, mine)
            }
        }
    }
}

/// Holds an array's storage while a job on the loop thread works on it, so the caller's array is never
/// copied: it is moved in, worked on in place, and moved back.
final class ArrayBox<T>: Buffer, @unchecked Sendable {
    private var array: [T] = []

    init(_ data: inout [T]) { swap(&array, &data) }

    func restore(into data: inout [T]) { swap(&array, &data) }

    /// Hands the array back (for a `Work`'s value).
    func take() -> [T] {
        var data: [T] = []
        swap(&array, &data)
        return data
    }

    func withBytes(_ body: (SendableBytes) throws -> Void) throws {
        try array.withUnsafeMutableBufferPointer { try body(SendableBytes($0)) }
    }
}

/// An array lent read-only to a job (arrays are values: this shares the caller's storage, no copy).
struct ArrayCopy<T>: Buffer, @unchecked Sendable {
    let array: [T]

    init(_ array: [T]) { self.array = array }

    func withBytes(_ body: (SendableBytes) throws -> Void) throws {
        try array.withUnsafeBufferPointer { try body(SendableBytes($0)) }
    }
}

/// Typed memory the caller promised to keep valid for the duration of a call.
struct SendableBytes: Buffer, @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer
    /// Elements.
    let count: Int

    init<T>(_ buffer: UnsafeMutableBufferPointer<T>) {
        bytes = UnsafeMutableRawBufferPointer(buffer)
        count = buffer.count
    }

    init<T>(_ buffer: UnsafeBufferPointer<T>) {
        bytes = UnsafeMutableRawBufferPointer(mutating: UnsafeRawBufferPointer(buffer))
        count = buffer.count
    }

    func withBytes(_ body: (SendableBytes) throws -> Void) throws { try body(self) }
}

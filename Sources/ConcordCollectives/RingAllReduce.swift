// Ring all-reduce over any `Transport` (see RingSchedule.swift for the vocabulary and the diagram).
//
// Pipelining: units travel in the schedule's wire order (waves along the anti-diagonals of step and
// segment); a send is posted as soon as the receive it depends on is complete, and `receiveWindow`
// receives stay posted ahead. Receives of the reduce-scatter phase are combined into the
// caller's buffer by the transport as the bytes arrive (in small pieces that stay in cache), and those
// of the all-gather phase land straight in the caller's buffer; no copy of the tensor is ever made.
// As soon as unit u is received, the send of unit u+k (the same segment one step further) can go,
// while the segment is still in cache, and the reduction of one segment overlaps the transfer of others.
//
// At n = 2 over TCP a chunk is cut only by the segment size, not for pipelining: each rank's sends, receives
// and reduction share its one thread, each link carries the reduce-scatter and then the all-gather, and a
// frame's bytes are combined as they arrive anyway, so more frames only cost more (A/B, N = 2, 9 rounds,
// medians: 256 KiB 87 µs against 109 with 4 segments, 1 MiB 325 against 375, 2 MiB 666 against 727; the
// same time on 2 Gbit/s links in the namespace lab). Over shared memory, where the two ranks copy in and
// out of the channel at once, pipelining pays (1 MiB: 266 µs with 4 segments against 466 with 1).
//
// Cost per rank: 2(n-1) chunk sends and receives = 2·S·(n-1)/n bytes each way, (n-1)·S/n element
// combines, 2(n-1)·k frames; busbw = algbw · 2(n-1)/n. A world of one rank returns at once; a
// zero-element collective still sends one empty frame per step, so ranks that disagree on the count fail
// with a clear error instead of hanging.
//
// avg: the ring combines as a sum; the rank that owns a chunk at the end of reduce-scatter multiplies
// each of its segments by 1/n as soon as it is complete, before the all-gather sends it, so every rank
// ends with the same bits. Out-of-place: the input is copied into the output once, then the output is
// reduced in place (the copy is the one pass over memory that an out-of-place result needs anyway).
import ConcordCore
import ConcordKernels

/// Ring collectives written against `Transport`.
///
/// Every collective sends only to `right = rank+1` and receives only from `left = rank-1` (mod n), stamps
/// each frame with its `CollectiveKind`, `sequence`, dtype, op and `count` (so a rank calling another
/// collective or other arguments is named in a `ConcordError.mismatch`), and waits for every transfer
/// before it returns. Arguments that cannot work on any rank (avg on an integer type, a root out of
/// range) throw `ConcordError.invalidArgument` before any frame is sent, the same on every rank.
public enum RingCollectives {
    /// Default largest segment: 1 MiB, chosen by `concord-bench allreduce --segment` (see docs/algorithms.md).
    public static let defaultSegmentBytes = 1 << 20
    /// Smallest segment worth cutting a chunk into for pipelining (see `RingSchedule.pipelineDepth`).
    package static let pipelineSegmentBytes = 64 << 10
    /// Receives kept posted ahead of the one being waited on.
    package static let receiveWindow = 2

    /// Reduces `count` elements of `buffer` over all ranks of `transport`, in place.
    ///
    /// - Parameters:
    ///   - buffer: at least `count * dataType.size` bytes; the result replaces its first `count` elements.
    ///   - op: any op; `avg` only on floating-point types.
    ///   - sequence: this collective's number in the communicator's call sequence (same on every rank).
    ///   - segmentBytes: the largest payload of one frame.
    ///   - gatherBytes: buffers of at most this many bytes pass whole around the ring instead (fewer steps;
    ///     see RingCollectives+SmallAllReduce.swift); every rank must pass the same value.
    ///   - halvingBytes: larger buffers up to this many bytes, and larger ones too when all ranks share one
    ///     machine, use halving-doubling when the world size is a power of two and the transport reaches
    ///     the partners (RingCollectives+HalvingDoubling.swift); every rank must pass the same value.
    /// - Throws: `ConcordError.invalidArgument` when `op` is not defined on `dataType`; otherwise the
    ///   transport's `ConcordError` (peer lost, mismatch, ...). The buffer's content is then unspecified,
    ///   and the transport holds no reference to it.
    public static func allReduce(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        sequence: UInt64, transport: Transport, segmentBytes: Int = defaultSegmentBytes,
        gatherBytes: Int = defaultGatherBytes, halvingBytes: Int = defaultHalvingBytes
    ) throws {
        precondition(count >= 0 && buffer.count >= count * dataType.size, "buffer holds fewer than \(count) elements")
        try validate(op: op, on: dataType, rank: transport.rank)
        let n = transport.worldSize
        if n == 1 { return }
        let size = dataType.size
        if count * size <= gatherBytes {
            return try smallAllReduce(
                buffer, count: count, dataType: dataType, op: op, sequence: sequence, transport: transport)
        }
        if count * size <= halvingBytes || transport.ranksShareOneMachine, doublingApplies(transport) {
            return try halvingDoublingAllReduce(
                buffer, count: count, dataType: dataType, op: op, sequence: sequence, transport: transport)
        }
        let plan = RingSchedule(
            worldSize: n, rank: transport.rank, count: count, segmentElements: segmentElements(segmentBytes, size),
            pipelineElements: n == 2 && !transport.ringLinksAreFaster ? 0 : pipelineSegmentBytes / size)
        let pipeline = RingPipeline(
            plan: plan, order: plan.wireOrder(), transport: transport, kind: .allReduce, sequence: sequence,
            dataType: dataType, op: op, count: count)
        let reducer = ReduceKernels.reducer(op: op, dataType: dataType)
        let lastReduceStep = plan.stepsPerPhase - 1
        try pipeline.run(
            receive: { u in
                let unit = plan.unit(u)
                return (slice(buffer, unit.receive, size), unit.phase == .reduceScatter ? reducer : nil)
            },
            received: { u in
                let unit = plan.unit(u)
                if op == .avg && unit.phase == .reduceScatter && unit.step == lastReduceStep {
                    scale(slice(buffer, unit.receive, size), count: unit.receive.count, dataType: dataType, n: n)
                }
            },
            send: { u in UnsafeRawBufferPointer(slice(buffer, plan.unit(u).send, size)) })
    }

    /// Reduces `count` elements of `input` over all ranks into `output`; `input` is not modified.
    ///
    /// The input is copied into the output, which is then reduced in place (see `allReduce(_:count:...)`).
    ///
    /// - Parameters:
    ///   - input: at least `count` elements.
    ///   - output: at least `count` elements; may be `input` itself, but must not overlap it otherwise.
    /// - Throws: as `allReduce(_:count:...)`.
    public static func allReduce(
        input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType,
        op: ReduceOp, sequence: UInt64, transport: Transport, segmentBytes: Int = defaultSegmentBytes,
        gatherBytes: Int = defaultGatherBytes, halvingBytes: Int = defaultHalvingBytes
    ) throws {
        precondition(count >= 0 && input.count >= count * dataType.size, "input holds fewer than \(count) elements")
        precondition(output.count >= count * dataType.size, "output holds fewer than \(count) elements")
        try validate(op: op, on: dataType, rank: transport.rank)
        copy(count * dataType.size, from: input, to: output)
        try allReduce(
            output, count: count, dataType: dataType, op: op, sequence: sequence, transport: transport,
            segmentBytes: segmentBytes, gatherBytes: gatherBytes, halvingBytes: halvingBytes)
    }

    /// Returns on every rank only after every rank has called it: one reduce-scatter phase of empty
    /// frames, n-1 steps, after which each rank has heard (through its left) from every other rank.
    public static func barrier(sequence: UInt64, transport: Transport) throws {
        let n = transport.worldSize
        if n == 1 { return }
        let plan = RingSchedule(
            worldSize: n, rank: transport.rank, count: 0, segmentElements: 1, phases: [.reduceScatter])
        let pipeline = RingPipeline(
            plan: plan, order: plan.wireOrder(), transport: transport, kind: .barrier, sequence: sequence,
            dataType: .float32, op: .sum, count: 0)
        let empty = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        try pipeline.run(receive: { _ in (empty, nil) }, send: { _ in UnsafeRawBufferPointer(empty) })
    }

    // MARK: - Shared by the collectives

    /// Throws the same `invalidArgument` on every rank when `op` is not defined on `dataType`.
    static func validate(op: ReduceOp, on dataType: DataType, rank: Int) throws {
        guard op.isSupported(on: dataType) else {
            throw ConcordError.invalidArgument(
                rank: rank, message: "\(op) is not defined on \(dataType); use sum and divide")
        }
    }

    /// Throws the same `invalidArgument` on every rank when `root` is not a rank.
    static func validate(root: Int, transport: Transport) throws {
        guard (0..<transport.worldSize).contains(root) else {
            let n = transport.worldSize
            throw ConcordError.invalidArgument(
                rank: transport.rank, message: "root \(root) is out of range: ranks are 0..<\(n) (\(n) ranks)")
        }
    }

    static func segmentElements(_ segmentBytes: Int, _ size: Int) -> Int { max(1, segmentBytes / size) }

    /// The bytes of `elements` of `buffer`, whose element 0 is at byte 0 (empty ranges may have no address).
    static func slice(_ buffer: UnsafeMutableRawBufferPointer, _ elements: Range<Int>, _ size: Int)
        -> UnsafeMutableRawBufferPointer
    {
        UnsafeMutableRawBufferPointer(
            start: buffer.baseAddress.map { $0 + elements.lowerBound * size }, count: elements.count * size)
    }

    /// Copies the first `byteCount` bytes of `source` to `destination` (which may be the same memory).
    static func copy(
        _ byteCount: Int, from source: UnsafeRawBufferPointer, to destination: UnsafeMutableRawBufferPointer
    ) {
        guard byteCount > 0, source.baseAddress != UnsafeRawPointer(destination.baseAddress) else { return }
        destination.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: byteCount)
    }

    /// Finishes avg on `bytes`: multiplies its `count` elements by 1/n.
    static func scale(_ bytes: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, n: Int) {
        guard count > 0 else { return }
        ReduceKernels.scale(bytes.baseAddress!, count: count, dataType: dataType, by: 1 / Double(n))
    }
}

// Ring all-gather (NCCL's AllGather): rank r contributes `count` elements; every rank ends with all of
// them, rank r's in block r.
//
//   input on rank r:      [ x_r ]                                   (count elements)
//   output on every rank: [ x_0 | x_1 | … | x_n-1 ]                 (n·count elements)
//
// It is the second phase of the ring all-reduce (RingSchedule.swift) on the n·count-element output,
// whose chunks are exactly the blocks, turned by rotation -1 so that rank r starts from block r:
//
//   step s = 0..<n-1: rank r sends block r-s to its right and stores block r-1-s from its left straight
//                     into its output; what it receives at step s it sends on at step s+1.
//
//        rank0 ──▶ rank1 ──▶ rank2 ──▶ rank3        segment j of a block travels one link per step,
//          ▲                              │        forwarded as soon as it has arrived (wave order)
//          └──────────────────────────────┘
//
// In place: `allGather(_:count:...)` takes the output with this rank's input already in block r. Out of
// place: the input is copied into block r of the output once, then the same. Nothing else is copied and no
// scratch is used: every frame is written straight from, and read straight into, the output.
//
// Cost per rank, S = n·count·size bytes (the output): (n-1) blocks sent and received = S·(n-1)/n bytes each
// way, nothing combined; busbw = algbw · (n-1)/n (nccl-tests, S = output size). A zero-element all-gather
// still sends one empty frame per step.
import ConcordCore

extension RingCollectives {
    /// Gathers every rank's block r of `buffer` into block r of `buffer` on every rank (NCCL's in-place
    /// AllGather).
    ///
    /// - Parameters:
    ///   - buffer: `worldSize * count` elements; block `rank` (elements `rank*count ..< (rank+1)*count`)
    ///     holds this rank's contribution, and afterwards every block holds its rank's.
    ///   - count: elements each rank contributes, the same on every rank.
    ///   - sequence: this collective's number in the communicator's call sequence (same on every rank).
    ///   - segmentBytes: the largest payload of one frame.
    /// - Throws: the transport's `ConcordError` (peer lost, mismatch, ...); the blocks of other ranks are then
    ///   unspecified.
    public static func allGather(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, sequence: UInt64,
        transport: Transport, segmentBytes: Int = defaultSegmentBytes
    ) throws {
        let n = transport.worldSize
        precondition(
            count >= 0 && buffer.count >= n * count * dataType.size, "buffer holds fewer than n·count elements")
        if n == 1 { return }
        let size = dataType.size
        let plan = RingSchedule(
            worldSize: n, rank: transport.rank, count: n * count, segmentElements: segmentElements(segmentBytes, size),
            pipelineElements: pipelineSegmentBytes / size, phases: [.allGather], rotation: -1)
        let pipeline = RingPipeline(
            plan: plan, order: plan.wireOrder(), transport: transport, kind: .allGather, sequence: sequence,
            dataType: dataType, op: .sum, count: count)
        try pipeline.run(
            receive: { u in (slice(buffer, plan.unit(u).receive, size), nil) },
            send: { u in UnsafeRawBufferPointer(slice(buffer, plan.unit(u).send, size)) })
    }

    /// Gathers every rank's `input` into block r of `output` on every rank.
    ///
    /// - Parameters:
    ///   - input: `count` elements, this rank's contribution; not modified.
    ///   - output: `worldSize * count` elements; `input` may be block `rank` of it (NCCL's in-place call),
    ///     but must not overlap it otherwise.
    /// - Throws: as `allGather(_:count:...)`.
    public static func allGather(
        input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType,
        sequence: UInt64, transport: Transport, segmentBytes: Int = defaultSegmentBytes
    ) throws {
        let n = transport.worldSize
        let size = dataType.size
        precondition(count >= 0 && input.count >= count * size, "input holds fewer than \(count) elements")
        precondition(output.count >= n * count * size, "output holds fewer than n·count elements")
        let own = transport.rank * count
        copy(count * size, from: input, to: slice(output, own..<(own + count), size))
        try allGather(
            output, count: count, dataType: dataType, sequence: sequence, transport: transport,
            segmentBytes: segmentBytes)
    }
}

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
// Cost per rank: 2(n-1) chunk sends and receives = 2·S·(n-1)/n bytes each way, (n-1)·S/n element
// combines, 2(n-1)·k frames. A world of one rank returns at once; a zero-element collective still sends
// one empty frame per step, so ranks that disagree on the count fail with a clear error instead of hanging.
import ConcordCore
import ConcordKernels

/// Ring collectives written against `Transport`.
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
    ///   - sequence: this collective's number in the communicator's call sequence (same on every rank).
    ///   - segmentBytes: the largest payload of one frame.
    /// - Throws: the transport's `ConcordError` (peer lost, mismatch, ...). The buffer's content is then
    ///   unspecified, and the transport holds no reference to it.
    public static func allReduce(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        sequence: UInt64, transport: Transport, segmentBytes: Int = defaultSegmentBytes
    ) throws {
        precondition(buffer.count >= count * dataType.size, "buffer holds fewer than \(count) elements")
        try ring(
            buffer, count: count, dataType: dataType, op: op, kind: .allReduce, phases: 2,
            sequence: sequence, transport: transport, segmentBytes: segmentBytes)
    }

    /// Returns on every rank only after every rank has called it: one reduce-scatter phase of empty
    /// frames, n-1 steps, after which each rank has heard (through its left) from every other rank.
    public static func barrier(sequence: UInt64, transport: Transport) throws {
        try ring(
            UnsafeMutableRawBufferPointer(start: nil, count: 0), count: 0, dataType: .float32, op: .sum,
            kind: .barrier, phases: 1, sequence: sequence, transport: transport,
            segmentBytes: defaultSegmentBytes)
    }

    static func ring(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        kind: CollectiveKind, phases: Int, sequence: UInt64, transport: Transport, segmentBytes: Int
    ) throws {
        let n = transport.worldSize
        if n == 1 { return }
        let size = dataType.size
        let plan = RingSchedule(
            worldSize: n, rank: transport.rank, count: count, segmentElements: max(1, segmentBytes / size),
            pipelineElements: pipelineSegmentBytes / size)
        let reducer = ReduceKernels.reducer(op: op, dataType: dataType)
        let k = plan.segmentsPerChunk
        let total = phases * plan.unitsPerPhase
        let base = buffer.baseAddress

        func tag(_ range: Range<Int>) -> SegmentTag {
            SegmentTag(
                collective: kind, sequence: sequence, dataType: dataType, op: op, count: count,
                offset: range.lowerBound, length: range.count)
        }
        func bytes(_ range: Range<Int>) -> UnsafeMutableRawBufferPointer {
            UnsafeMutableRawBufferPointer(start: base.map { $0 + range.lowerBound * size }, count: range.count * size)
        }
        func postSend(_ u: Int) throws {
            let range = plan.unit(u).send
            _ = try transport.send(to: plan.right, tag: tag(range), from: UnsafeRawBufferPointer(bytes(range)))
        }

        let order = plan.wireOrder(phases: phases)
        var received = [Bool](repeating: false, count: total)
        var receives = [TransferID]()
        receives.reserveCapacity(total)
        func postReceives(through limit: Int) throws {
            while receives.count < min(limit, total) {
                let unit = plan.unit(order[receives.count])
                receives.append(
                    try transport.receive(
                        from: plan.left, tag: tag(unit.receive), into: bytes(unit.receive),
                        reducer: unit.phase == .reduceScatter ? reducer : nil))
            }
        }
        var sent = 0
        func postReadySends() throws {
            while sent < total {
                let u = order[sent]
                if u >= k && !received[u - k] { return }
                try postSend(u)
                sent += 1
            }
        }

        try postReceives(through: receiveWindow)
        try postReadySends()
        for p in 0..<total {
            try transport.wait(receives[p])
            received[order[p]] = true
            try postReceives(through: p + 1 + receiveWindow)
            try postReadySends()
        }
        try transport.waitAll()
    }
}

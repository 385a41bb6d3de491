// Ring reduce-scatter (NCCL's ReduceScatter): every rank holds n blocks of `count` elements; rank r ends
// with block r reduced over all ranks.
//
//   input on every rank:  [ block 0 | block 1 | … | block n-1 ]      (n·count elements)
//   output on rank r:     [ op over ranks of block r ]             (count elements)
//
// It is the first phase of the ring all-reduce (RingSchedule.swift) on the n·count-element buffer, whose
// chunks are exactly the blocks, turned by rotation -1 so that rank r owns chunk r = block r:
//
//   step s = 0..<n-1: rank r sends block r-1-s to its right and receives block r-2-s from its left,
//                     combined with its own block r-2-s; the last step (s = n-2) brings block r.
//
//        rank0 ──▶ rank1 ──▶ rank2 ──▶ rank3        segment j of a block travels one link per step;
//          ▲                              │        segments go out in waves (bands of 2 columns)
//          └──────────────────────────────┘
//
// In place (`reduceScatter(_:count:...)`): the receives are combined into the caller's buffer as they
// arrive and forwarded from there, like all-reduce: no extra memory; blocks other than r serve as working
// space and hold partial reductions afterwards. Out of place: the input is never written. A received
// partial is combined with this rank's own block in a scratch segment (the own segment is copied there
// first, then the transport combines the payload into it as it arrives) and forwarded from there; the last
// step lands in the output, which starts as a copy of the own block. A scratch segment is reused once
// the send that forwarded it completed; the wire order in bands of `reduceScatterBand` columns keeps at
// most about 2·band segments waiting to be forwarded, and the receive at wire position p waits for this
// rank's send at position p - `reduceScatterSendLag` (deadlock-free, see RingPipeline.swift), so the
// scratch is band + lag = 5 segments (`scratchSegments`; ≤ 5 MiB) whatever n and S. Without bands the
// anti-diagonal waves hold up to n-1 segments each, and the scratch would grow with n.
//
// Cost per rank, S = n·count·size bytes (the input): (n-1) blocks sent and received = S·(n-1)/n bytes
// each way, (n-1)·S/n bytes combined; busbw = algbw · (n-1)/n (nccl-tests, S = input size). avg is a sum
// that the owner scales by 1/n as each of its segments completes. A zero-element reduce-scatter still
// sends one empty frame per step.
import ConcordCore
import ConcordKernels

extension RingCollectives {
    /// Segment columns per band of the reduce-scatter wire order (see `RingSchedule.wireOrder(band:)`).
    package static let reduceScatterBand = 2
    /// How far, in wire positions, the sends of an out-of-place reduce-scatter may run ahead of its
    /// receives before a receive waits for them (at least `receiveWindow`, see RingPipeline.swift).
    package static let reduceScatterSendLag = receiveWindow + 1

    /// Reduces block r of `buffer` over all ranks into block r on rank r (NCCL's in-place ReduceScatter).
    ///
    /// - Parameters:
    ///   - buffer: `worldSize * count` elements, this rank's n blocks. Afterwards block `rank` (elements
    ///     `rank*count ..< (rank+1)*count`) holds the result; the other blocks are used as working space
    ///     and hold partial reductions.
    ///   - count: elements per block (the output size), the same on every rank.
    ///   - op: any op; `avg` only on floating-point types.
    ///   - sequence: this collective's number in the communicator's call sequence (same on every rank).
    ///   - segmentBytes: the largest payload of one frame.
    /// - Throws: `ConcordError.invalidArgument` when `op` is not defined on `dataType`; otherwise the
    ///   transport's `ConcordError`. The buffer's content is then unspecified.
    public static func reduceScatter(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        sequence: UInt64, transport: Transport, segmentBytes: Int = defaultSegmentBytes
    ) throws {
        let n = transport.worldSize
        precondition(
            count >= 0 && buffer.count >= n * count * dataType.size, "buffer holds fewer than n·count elements")
        try validate(op: op, on: dataType, rank: transport.rank)
        if n == 1 { return }
        let size = dataType.size
        let plan = reduceScatterPlan(transport: transport, count: count, dataType: dataType, segmentBytes: segmentBytes)
        let pipeline = RingPipeline(
            plan: plan, order: plan.wireOrder(band: reduceScatterBand), transport: transport, kind: .reduceScatter,
            sequence: sequence, dataType: dataType, op: op, count: count)
        let reducer = ReduceKernels.reducer(op: op, dataType: dataType)
        let lastStep = plan.stepsPerPhase - 1
        try pipeline.run(
            receive: { u in (slice(buffer, plan.unit(u).receive, size), reducer) },
            received: { u in
                let unit = plan.unit(u)
                if op == .avg && unit.step == lastStep {
                    scale(slice(buffer, unit.receive, size), count: unit.receive.count, dataType: dataType, n: n)
                }
            },
            send: { u in UnsafeRawBufferPointer(slice(buffer, plan.unit(u).send, size)) })
    }

    /// Reduces block r of `input` over all ranks into `output` on rank r; `input` is not modified.
    ///
    /// Extra memory: at most 5 segments of at most `segmentBytes` each (none for 1 or 2 ranks).
    ///
    /// - Parameters:
    ///   - input: `worldSize * count` elements, this rank's n blocks.
    ///   - output: `count` elements; may be block `rank` of `input` itself (NCCL's in-place call), but must
    ///     not overlap `input` otherwise.
    /// - Throws: as `reduceScatter(_:count:...)`; `output` is then unspecified.
    public static func reduceScatter(
        input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType,
        op: ReduceOp, sequence: UInt64, transport: Transport, segmentBytes: Int = defaultSegmentBytes
    ) throws {
        let n = transport.worldSize
        let rank = transport.rank
        let size = dataType.size
        precondition(count >= 0 && input.count >= n * count * size, "input holds fewer than n·count elements")
        precondition(output.count >= count * size, "output holds fewer than \(count) elements")
        try validate(op: op, on: dataType, rank: rank)
        let input = UnsafeMutableRawBufferPointer(mutating: input)  // only ever read
        let own = rank * count
        if UnsafeRawPointer(output.baseAddress) == UnsafeRawPointer(input.baseAddress.map { $0 + own * size }) {
            // NCCL's in-place layout: the in-place ring needs no scratch.
            return try reduceScatter(
                input, count: count, dataType: dataType, op: op, sequence: sequence, transport: transport,
                segmentBytes: segmentBytes)
        }
        copy(count * size, from: UnsafeRawBufferPointer(slice(input, own..<(own + count), size)), to: output)
        if n == 1 { return }
        let plan = reduceScatterPlan(transport: transport, count: count, dataType: dataType, segmentBytes: segmentBytes)
        let order = plan.wireOrder(band: reduceScatterBand)
        var pipeline = RingPipeline(
            plan: plan, order: order, transport: transport, kind: .reduceScatter, sequence: sequence,
            dataType: dataType, op: op, count: count)
        pipeline.sendLag = reduceScatterSendLag
        let reducer = ReduceKernels.reducer(op: op, dataType: dataType)
        let k = plan.segmentsPerChunk
        let lastStep = plan.stepsPerPhase - 1

        let slots = scratchSegments(plan: plan, order: order, lag: reduceScatterSendLag)
        let slotBytes = (count + k - 1) / k * size
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, slots * slotBytes), alignment: 64)
        defer { scratch.deallocate() }  // the transport holds no reference once run returns or throws
        var free = Array((0..<slots).reversed())
        var slotOf = [Int](repeating: -1, count: plan.unitCount)
        func slot(_ s: Int, elements: Int) -> UnsafeMutableRawBufferPointer {
            UnsafeMutableRawBufferPointer(rebasing: scratch[(s * slotBytes)..<(s * slotBytes + elements * size)])
        }
        func ownPart(_ range: Range<Int>) -> Range<Int> { (range.lowerBound - own)..<(range.upperBound - own) }

        try pipeline.run(
            receive: { u in
                let unit = plan.unit(u)
                if unit.step == lastStep { return (slice(output, ownPart(unit.receive), size), reducer) }
                let s = free.removeLast()
                slotOf[u] = s
                let target = slot(s, elements: unit.receive.count)
                copy(target.count, from: UnsafeRawBufferPointer(slice(input, unit.receive, size)), to: target)
                return (target, reducer)
            },
            received: { u in
                let unit = plan.unit(u)
                if op == .avg && unit.step == lastStep {
                    let part = ownPart(unit.receive)
                    scale(slice(output, part, size), count: part.count, dataType: dataType, n: n)
                }
            },
            send: { u in
                let unit = plan.unit(u)
                if unit.step == 0 { return UnsafeRawBufferPointer(slice(input, unit.send, size)) }
                return UnsafeRawBufferPointer(slot(slotOf[u - k], elements: unit.send.count))
            },
            sent: { u in if u >= k { free.append(slotOf[u - k]) } })
    }

    /// The plan of a reduce-scatter of `count` elements per block: one phase over n blocks, rank r owning r.
    static func reduceScatterPlan(transport: Transport, count: Int, dataType: DataType, segmentBytes: Int)
        -> RingSchedule
    {
        RingSchedule(
            worldSize: transport.worldSize, rank: transport.rank, count: transport.worldSize * count,
            segmentElements: segmentElements(segmentBytes, dataType.size),
            pipelineElements: pipelineSegmentBytes / dataType.size, phases: [.reduceScatter], rotation: -1)
    }

    /// Scratch segments an out-of-place reduce-scatter needs when it runs `plan` in `order` with `lag`:
    /// the most received segments alive at once. A received segment is alive from the post of its
    /// receive until the send that forwards it (unit u+k) is known complete, which is before the
    /// receive at wire position (that send's position + lag) is posted. Segments of the last step land
    /// in the output.
    package static func scratchSegments(plan: RingSchedule, order: [Int], lag: Int) -> Int {
        let k = plan.segmentsPerChunk
        let total = order.count
        var alive = 0
        var most = 0
        for p in 0..<total {
            if p - lag >= 0 && order[p - lag] >= k { alive -= 1 }
            if order[p] + k < total {
                alive += 1
                most = max(most, alive)
            }
        }
        return most
    }
}

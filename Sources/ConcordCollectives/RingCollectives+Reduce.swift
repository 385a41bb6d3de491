// Pipelined chain reduce (NCCL's Reduce): the reduction of every rank's `count` elements lands on the root.
//
// The data follows the ring towards the root, starting just after it (ChainSchedule.swift):
//
//        root+1 ──▶ root+2 ──▶ … ──▶ root-1 ──▶ root
//
//   The buffer is cut into k segments (at least 4 per link when large enough). root+1 sends its input;
//   every rank after it combines its own segment j into the partial arriving from its left and sends the
//   result on as soon as segment j is complete; the root combines the last partial into its output. All
//   links of the chain carry segments at the same time: (k + n - 2) segment times in all.
//
// No rank's input is modified. A rank in the middle of the chain copies its own segment j into a scratch
// segment, the transport combines the arriving partial into it as the bytes arrive, and the segment is
// sent on from there; `reduceWindow` scratch segments rotate (segment j uses slot j mod window, reused
// once the send of segment j - window completed; the chain has no cycle, so that wait always ends). The
// root reduces straight into its output, which starts as a copy of its input; for avg it then multiplies
// each segment by 1/n as it completes. Non-root outputs are not touched.
//
// Cost per rank: S = count·size bytes received (but root+1) and sent (but the root), S combined;
// busbw = algbw (nccl-tests' factor 1). Extra memory: `reduceWindow` segments on the ranks between
// root+1 and the root. A zero-element reduce still sends one empty frame per link, and the chain is opened
// by one empty frame on every link (`openChain`, see RingCollectives+Broadcast.swift).
import ConcordCore
import ConcordKernels

extension RingCollectives {
    /// Scratch segments a rank in the middle of a reduce chain rotates through: the receives posted
    /// ahead, the segment being forwarded, and one more so a slow right neighbour rarely stalls it.
    package static let reduceWindow = receiveWindow + 2

    /// Reduces `buffer` over all ranks into `buffer` on the root; other ranks' buffers are not modified.
    ///
    /// - Parameters:
    ///   - buffer: `count` elements: this rank's input; on the root, replaced by the result.
    ///   - op: any op; `avg` only on floating-point types.
    ///   - root: the rank that gets the result, in `0..<worldSize`, the same on every rank.
    ///   - sequence: this collective's number in the communicator's call sequence (same on every rank).
    ///   - segmentBytes: the largest payload of one frame.
    /// - Throws: `ConcordError.invalidArgument` when `op` is not defined on `dataType` or `root` is out of
    ///   range; otherwise the transport's `ConcordError`. The root's buffer is then unspecified.
    public static func reduce(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp, root: Int,
        sequence: UInt64, transport: Transport, segmentBytes: Int = defaultSegmentBytes
    ) throws {
        precondition(count >= 0 && buffer.count >= count * dataType.size, "buffer holds fewer than \(count) elements")
        try reduce(
            input: UnsafeRawBufferPointer(buffer), output: buffer, count: count, dataType: dataType, op: op, root: root,
            sequence: sequence, transport: transport, segmentBytes: segmentBytes)
    }

    /// Reduces `input` over all ranks into `output` on the root; no `input` is modified.
    ///
    /// - Parameters:
    ///   - input: `count` elements on every rank.
    ///   - output: `count` elements on the root; may be `input` itself, but must not overlap it otherwise.
    ///     Ignored (may be empty) on other ranks.
    /// - Throws: as `reduce(_:count:...)`.
    public static func reduce(
        input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType,
        op: ReduceOp, root: Int, sequence: UInt64, transport: Transport, segmentBytes: Int = defaultSegmentBytes
    ) throws {
        let size = dataType.size
        let rank = transport.rank
        precondition(count >= 0 && input.count >= count * size, "input holds fewer than \(count) elements")
        precondition(rank != root || output.count >= count * size, "output holds fewer than \(count) elements")
        try validate(op: op, on: dataType, rank: rank)
        try validate(root: root, transport: transport)
        let n = transport.worldSize
        if rank == root { copy(count * size, from: input, to: output) }
        if n == 1 { return }
        let plan = ChainSchedule(
            worldSize: n, rank: rank, head: (root + 1) % n, count: count,
            segmentElements: segmentElements(segmentBytes, size), pipelineElements: pipelineSegmentBytes / size)
        let input = UnsafeMutableRawBufferPointer(mutating: input)  // only ever read
        let reducer = ReduceKernels.reducer(op: op, dataType: dataType)
        func tag(_ j: Int) -> SegmentTag {
            let range = plan.segment(j)
            return SegmentTag(
                collective: .reduce, sequence: sequence, dataType: dataType, op: op, count: count,
                offset: range.lowerBound, length: range.count, root: root)
        }
        try openChain(
            plan,
            tag: SegmentTag(
                collective: .reduce, sequence: sequence, dataType: dataType, op: op, count: count, offset: count,
                length: 0, root: root),
            transport: transport)

        if !plan.receives {  // root+1: its input is the first partial
            for j in 0..<plan.segments {
                _ = try transport.send(
                    to: plan.right, tag: tag(j), from: UnsafeRawBufferPointer(slice(input, plan.segment(j), size)))
            }
            try transport.waitAll()
            return
        }

        // The root combines into its output; the others into rotating scratch segments.
        let window = rank == root ? 0 : min(reduceWindow, plan.segments)
        let slotBytes = plan.largestSegment * size
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, window * slotBytes), alignment: 64)
        defer { scratch.deallocate() }  // the transport holds no reference once this returns or throws
        func target(_ j: Int) -> UnsafeMutableRawBufferPointer {
            if rank == root { return slice(output, plan.segment(j), size) }
            let start = j % window * slotBytes
            return UnsafeMutableRawBufferPointer(rebasing: scratch[start..<(start + plan.segment(j).count * size)])
        }
        var receives = [TransferID]()
        receives.reserveCapacity(plan.segments)
        var sends = [TransferID]()
        sends.reserveCapacity(plan.segments)
        func postReceives(through limit: Int) throws {
            while receives.count < min(limit, plan.segments) {
                let j = receives.count
                let bytes = target(j)
                if rank != root {
                    if j >= window { try transport.wait(sends[j - window]) }  // slot j % window is free again
                    copy(bytes.count, from: UnsafeRawBufferPointer(slice(input, plan.segment(j), size)), to: bytes)
                }
                receives.append(try transport.receive(from: plan.left, tag: tag(j), into: bytes, reducer: reducer))
            }
        }
        try postReceives(through: receiveWindow)
        for j in 0..<plan.segments {
            try transport.wait(receives[j])
            if rank == root {
                if op == .avg { scale(target(j), count: plan.segment(j).count, dataType: dataType, n: n) }
            } else {
                sends.append(try transport.send(to: plan.right, tag: tag(j), from: UnsafeRawBufferPointer(target(j))))
            }
            try postReceives(through: j + 1 + receiveWindow)
        }
        try transport.waitAll()
    }
}

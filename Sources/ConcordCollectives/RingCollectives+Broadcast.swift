// Pipelined chain broadcast (NCCL's Broadcast): the root's `count` elements reach every rank.
//
// The data follows the ring from the root, and the last rank does not forward (ChainSchedule.swift):
//
//        root ──▶ root+1 ──▶ root+2 ──▶ … ──▶ root-1
//
//   The buffer is cut into k segments (at least 4 per link when large enough). The root posts all k sends;
//   every other rank keeps `receiveWindow` receives posted ahead, and sends segment j on to its right as
//   soon as it has arrived (before waiting for segment j+1), so all links of the chain carry segments at
//   the same time and the whole takes (k + n - 2) segment times instead of (n - 1)·k.
//
// Receives land straight in the caller's buffer, sends are written straight from it; no scratch. Out of
// place, the root sends from its input and copies it into its output while the first segments travel.
//
// Cost per rank: S = count·size bytes received (but the root) and sent (but root-1); busbw = algbw
// (nccl-tests' factor 1: each link carries S). A zero-element broadcast still sends one empty frame per
// link. Before any data, every rank sends one empty frame to its right and checks the one from its left
// (`openChain`): ranks that disagree on the root, count, dtype or op all fail at once (frames carry the
// root), where a bare chain would let some finish unaware or wait on each other for ever.
import ConcordCore

extension RingCollectives {
    /// Copies the root's `count` elements of `buffer` into `buffer` on every rank.
    ///
    /// - Parameters:
    ///   - buffer: `count` elements: the data on the root, overwritten with it elsewhere.
    ///   - root: the rank whose data everyone gets, in `0..<worldSize`, the same on every rank.
    ///   - sequence: this collective's number in the communicator's call sequence (same on every rank).
    ///   - segmentBytes: the largest payload of one frame.
    /// - Throws: `ConcordError.invalidArgument` when `root` is out of range; otherwise the transport's
    ///   `ConcordError` (peer lost, mismatch, ...). The buffer's content is then unspecified but on the root.
    public static func broadcast(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, root: Int, sequence: UInt64,
        transport: Transport, segmentBytes: Int = defaultSegmentBytes
    ) throws {
        precondition(count >= 0 && buffer.count >= count * dataType.size, "buffer holds fewer than \(count) elements")
        try broadcast(
            input: UnsafeRawBufferPointer(buffer), output: buffer, count: count, dataType: dataType, root: root,
            sequence: sequence, transport: transport, segmentBytes: segmentBytes)
    }

    /// Copies the root's `input` into `output` on every rank (the root's own output included).
    ///
    /// - Parameters:
    ///   - input: `count` elements on the root, not modified; ignored on other ranks (may be empty).
    ///   - output: `count` elements on every rank; may be `input` itself, but must not overlap it otherwise.
    /// - Throws: as `broadcast(_:count:...)`.
    public static func broadcast(
        input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType,
        root: Int, sequence: UInt64, transport: Transport, segmentBytes: Int = defaultSegmentBytes
    ) throws {
        let size = dataType.size
        let rank = transport.rank
        precondition(count >= 0 && output.count >= count * size, "output holds fewer than \(count) elements")
        precondition(rank != root || input.count >= count * size, "input holds fewer than \(count) elements")
        try validate(root: root, transport: transport)
        let n = transport.worldSize
        if n == 1 {
            copy(count * size, from: input, to: output)
            return
        }
        let plan = ChainSchedule(
            worldSize: n, rank: rank, head: root, count: count, segmentElements: segmentElements(segmentBytes, size),
            pipelineElements: pipelineSegmentBytes / size)
        func tag(_ j: Int) -> SegmentTag {
            let range = plan.segment(j)
            return SegmentTag(
                collective: .broadcast, sequence: sequence, dataType: dataType, op: .sum, count: count,
                offset: range.lowerBound, length: range.count, root: root)
        }
        try openChain(
            plan,
            tag: SegmentTag(
                collective: .broadcast, sequence: sequence, dataType: dataType, op: .sum, count: count, offset: count,
                length: 0, root: root),
            transport: transport)

        if rank == root {
            let source = UnsafeMutableRawBufferPointer(mutating: input)  // only ever read
            for j in 0..<plan.segments {
                let bytes = UnsafeRawBufferPointer(slice(source, plan.segment(j), size))
                _ = try transport.send(to: plan.right, tag: tag(j), from: bytes)
            }
            copy(count * size, from: input, to: output)
        } else {
            var receives = [TransferID]()
            receives.reserveCapacity(plan.segments)
            func postReceives(through limit: Int) throws {
                while receives.count < min(limit, plan.segments) {
                    let j = receives.count
                    receives.append(
                        try transport.receive(
                            from: plan.left, tag: tag(j), into: slice(output, plan.segment(j), size), reducer: nil))
                }
            }
            try postReceives(through: receiveWindow)
            for j in 0..<plan.segments {
                try transport.wait(receives[j])
                if plan.sends {
                    let bytes = UnsafeRawBufferPointer(slice(output, plan.segment(j), size))
                    _ = try transport.send(to: plan.right, tag: tag(j), from: bytes)
                }
                try postReceives(through: j + 1 + receiveWindow)
            }
        }
        try transport.waitAll()
    }
}

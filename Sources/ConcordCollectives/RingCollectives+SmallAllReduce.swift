// All-reduce of small buffers: pass every rank's whole buffer around the ring, then reduce locally.
//
//   step s = 0 … n-2:  rank r sends block (r - s) mod n to r+1 and receives block (r - s - 1) mod n from r-1
//   then every rank:    result = ((b0 ⊕ b1) ⊕ b2) ⊕ … ⊕ b(n-1)        (in rank order, on every rank)
//
// For a small buffer the cost of a ring all-reduce is its 2(n-1) sequential steps, each a wake-up of the
// receiving rank; the bytes hardly matter. Gathering whole buffers needs only n-1 steps (one at n = 2,
// where both ranks simply swap) for (n-1)·S bytes per link instead of 2(n-1)·S/n, and an n·S scratch.
// Every rank combines the same blocks in the same order, so every rank ends with the same bits (avg:
// the sum, then the same scaling). `smallAllReduceBytes` is the crossover measured with `concord-bench
// allreduce` (see docs/algorithms.md); all ranks choose alike because they agree on count and dtype,
// and a rank that does not is caught by the count and dtype stamped on every frame.
import ConcordCore
import ConcordKernels

extension RingCollectives {
    /// Buffers of at most this many bytes are all-reduced by passing whole buffers (see the file comment).
    public static let defaultGatherBytes = 16 << 10

    /// All-reduce by gathering every rank's whole buffer, then reducing in rank order.
    static func gatheringAllReduce(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        sequence: UInt64, transport: Transport
    ) throws {
        let n = transport.worldSize
        let rank = transport.rank
        let bytes = count * dataType.size
        let blocks = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, n * bytes), alignment: 64)
        defer { blocks.deallocate() }
        func block(_ r: Int) -> UnsafeMutableRawBufferPointer {
            UnsafeMutableRawBufferPointer(rebasing: blocks[(r * bytes)..<((r + 1) * bytes)])
        }
        if bytes > 0 { block(rank).copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[0..<bytes])) }
        let tag = SegmentTag(
            collective: .allReduce, sequence: sequence, dataType: dataType, op: op, count: count, offset: 0,
            length: count)
        let left = (rank + n - 1) % n
        let right = (rank + 1) % n
        // Every receive goes into a block of its own, so all of them can be posted at once.
        let receives = try (0..<(n - 1)).map { step in
            try transport.receive(from: left, tag: tag, into: block((rank - step - 1 + n) % n), reducer: nil)
        }
        for step in 0..<(n - 1) {
            _ = try transport.send(to: right, tag: tag, from: UnsafeRawBufferPointer(block((rank - step + n) % n)))
            try transport.wait(receives[step])
        }
        try transport.waitAll()
        guard bytes > 0 else { return }
        buffer.baseAddress!.copyMemory(from: blocks.baseAddress!, byteCount: bytes)
        let reducer = ReduceKernels.reducer(op: op, dataType: dataType)
        for r in 1..<n { reducer.combine(buffer.baseAddress!, block(r).baseAddress!, count) }
        if op == .avg { scale(buffer, count: count, dataType: dataType, n: n) }
    }
}

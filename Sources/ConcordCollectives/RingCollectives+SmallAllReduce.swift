// All-reduce of small buffers, where the cost is the number of sequential steps (each a wake-up of the
// receiving rank, 10-30 us), not the bytes. Two algorithms, both ending with the same bits on every rank:
//
// Recursive doubling, when n is a power of two and the transport reaches the partners (rank XOR 2^k):
//   step k = 0 … log2(n)-1:  swap whole buffers with rank XOR 2^k, then value = lower rank's ⊕ higher's
//   log2(n) steps (n = 4: 2 instead of the ring's 6), log2(n)·S bytes per rank, an S scratch. Both
//   partners combine the same two values in the same order, so after step k every block of 2^(k+1)
//   ranks holds the same bits.
//
// Gathering ring, otherwise: pass every rank's whole buffer around the ring, then reduce locally:
//   step s = 0 … n-2:  rank r sends block (r - s) mod n to r+1 and receives block (r - s - 1) mod n from r-1
//   then every rank:    result = ((b0 ⊕ b1) ⊕ b2) ⊕ … ⊕ b(n-1)        (in rank order, on every rank)
//   n-1 steps (one at n = 2, where both ranks simply swap) for (n-1)·S bytes per link, an n·S scratch.
//
// avg: the sum, then the same scaling everywhere. `defaultGatherBytes` is the crossover measured with
// `concord-bench allreduce` (see docs/algorithms.md); all ranks choose alike because they agree on count
// and dtype, and a rank that does not is caught by the count and dtype stamped on every frame.
import ConcordCore
import ConcordKernels
import Synchronization

/// The address of the scratch buffer small all-reduces share between calls (see `withSmallScratch`) while
/// none uses it, else 0.
private let smallScratchSlot = Atomic<UInt>(0)

extension RingCollectives {
    /// Buffers of at most this many bytes are all-reduced by passing whole buffers (see the file comment).
    public static let defaultGatherBytes = 16 << 10

    /// Bytes of the shared scratch buffer: the gathering ring's n blocks at n = 4 and the default bound.
    static let smallScratchBytes = 64 << 10

    /// Runs `body` with `bytes` of 64-byte aligned scratch. Up to `smallScratchBytes` it is one buffer kept
    /// between calls: a small all-reduce runs every training step, and allocating 4-64 KiB afresh costs a
    /// malloc consolidation each time. Taken and returned by atomic exchange, so communicators on other
    /// threads never share it (one that finds the slot empty allocates its own).
    static func withSmallScratch<R>(
        bytes: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> R
    ) rethrows -> R {
        guard bytes <= smallScratchBytes else {
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, bytes), alignment: 64)
            defer { scratch.deallocate() }
            return try body(scratch)
        }
        let base =
            UnsafeMutableRawPointer(bitPattern: smallScratchSlot.exchange(0, ordering: .acquiring))
            ?? UnsafeMutableRawPointer.allocate(byteCount: smallScratchBytes, alignment: 64)
        defer {
            let spare = smallScratchSlot.exchange(UInt(bitPattern: base), ordering: .releasing)
            UnsafeMutableRawPointer(bitPattern: spare)?.deallocate()
        }
        return try body(UnsafeMutableRawBufferPointer(start: base, count: bytes))
    }

    /// Whether recursive doubling applies: n a power of two above 2, every partner (rank XOR 2^k) reachable,
    /// and ring links no faster than the others. Checked on every call, so it allocates nothing.
    static func doublingApplies(_ transport: Transport) -> Bool {
        let n = transport.worldSize
        guard n > 2, n & (n - 1) == 0, !transport.ringLinksAreFaster else { return false }
        var distance = 1
        while distance < n {
            guard transport.isConnected(to: transport.rank ^ distance) else { return false }
            distance <<= 1
        }
        return true
    }

    /// All-reduce of a small buffer: recursive doubling where it applies, else the gathering ring.
    static func smallAllReduce(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        sequence: UInt64, transport: Transport
    ) throws {
        if doublingApplies(transport) {
            try doublingAllReduce(
                buffer, count: count, dataType: dataType, op: op, sequence: sequence, transport: transport)
        } else {
            try gatheringAllReduce(
                buffer, count: count, dataType: dataType, op: op, sequence: sequence, transport: transport)
        }
    }

    /// Recursive doubling: swap with each partner in turn, combining lower rank's value ⊕ higher's.
    static func doublingAllReduce(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        sequence: UInt64, transport: Transport
    ) throws {
        let bytes = count * dataType.size
        try withSmallScratch(bytes: bytes) { theirs in
            try doublingAllReduce(
                buffer, count: count, dataType: dataType, op: op, sequence: sequence, transport: transport,
                scratch: theirs)
        }
    }

    private static func doublingAllReduce(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        sequence: UInt64, transport: Transport, scratch theirs: UnsafeMutableRawBufferPointer
    ) throws {
        let bytes = count * dataType.size
        let tag = SegmentTag(
            collective: .allReduce, sequence: sequence, dataType: dataType, op: op, count: count, offset: 0,
            length: count)
        let reducer = ReduceKernels.reducer(op: op, dataType: dataType)
        let mine = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes])
        var distance = 1
        while distance < transport.worldSize {
            let partner = transport.rank ^ distance
            distance <<= 1
            let receive = try transport.receive(
                from: partner, tag: tag, into: UnsafeMutableRawBufferPointer(rebasing: theirs[0..<bytes]), reducer: nil)
            let send = try transport.send(to: partner, tag: tag, from: UnsafeRawBufferPointer(mine))
            try transport.wait(receive)
            try transport.wait(send)
            guard bytes > 0 else { continue }
            if transport.rank < partner {
                reducer.combine(mine.baseAddress!, theirs.baseAddress!, count)
            } else {
                reducer.combine(theirs.baseAddress!, mine.baseAddress!, count)
                mine.baseAddress!.copyMemory(from: theirs.baseAddress!, byteCount: bytes)
            }
        }
        if op == .avg { scale(mine, count: count, dataType: dataType, n: transport.worldSize) }
    }

    /// All-reduce by gathering every rank's whole buffer, then reducing in rank order.
    static func gatheringAllReduce(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        sequence: UInt64, transport: Transport
    ) throws {
        let n = transport.worldSize
        let rank = transport.rank
        let bytes = count * dataType.size
        try withSmallScratch(bytes: n * bytes) { blocks in
            try withUnsafeTemporaryAllocation(of: TransferID.self, capacity: n - 1) { receives in
                try gatheringAllReduce(
                    buffer, count: count, dataType: dataType, op: op, sequence: sequence, transport: transport,
                    blocks: blocks, receives: receives)
            }
        }
    }

    private static func gatheringAllReduce(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        sequence: UInt64, transport: Transport, blocks: UnsafeMutableRawBufferPointer,
        receives: UnsafeMutableBufferPointer<TransferID>
    ) throws {
        let n = transport.worldSize
        let rank = transport.rank
        let bytes = count * dataType.size
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
        for step in 0..<(n - 1) {
            receives.initializeElement(
                at: step,
                to: try transport.receive(from: left, tag: tag, into: block((rank - step - 1 + n) % n), reducer: nil))
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

// All-reduce of mid-sized buffers at a power-of-two world size: recursive halving, then recursive doubling
// (Rabenseifner's algorithm), over the direct links to the partners rank XOR 2^k.
//
//   blocks 0 … n-1 (block b: elements [b·count/n, (b+1)·count/n))
//   reduce-scatter, distance d = n/2, n/4, … 1:  keep the half of my block range that holds my block,
//                    send the other half to rank XOR d, and combine what it sends me into my half
//   all-gather,     distance d = 1, 2, … n/2:    swap my range of d blocks with rank XOR d's
//
//   n = 4, rank 1:   [0 1 2 3] ─d=2: keep 0-1, send 2-3 to 3─▶ [0 1] ─d=1: keep 1, send 0 to 0─▶ [1] reduced
//                    then [1] ⇄ 0's [0] (d=1), then [0 1] ⇄ 3's [2 3] (d=2)
//
// Cost per rank: the ring's bytes (2·S·(n-1)/n each way) in 2·log2(n) steps instead of 2(n-1), each one
// frame; with more ranks than cores the ring's long chain of dependent steps waits on wake-ups, and fewer,
// larger steps win (measured in docs/algorithms.md). Each block is reduced once, on its owner, in a fixed
// tree, and only copied afterwards, so every rank ends with the same bits (avg: the owner scales its block
// before the all-gather). Any count works: blocks may be empty, and empty frames still go.
//
// Where it runs (power-of-two n, partner links open, i.e. not when every ring link is shared memory):
//   - up to `defaultHalvingBytes` (2 MiB) always;
//   - at any size when all ranks share one machine. There no link crosses a network, and on 2 cores it
//     beats the pipelined ring or ties with it (A/B over TCP, medians; halving-doubling against the ring:
//     n = 4, 7 rounds: 4 MiB 3.8 ms against 4.3, 16 MiB 16.7 against 17.5, 64 MiB 95 against 100 in one
//     run and 93 against 89 in another; n = 8, 5 rounds: 4 MiB 9.8 ms against 13.0, 16 MiB 59 against
//     56, 64 MiB 231 against 236). Measured the same way before links on one machine used reno (see
//     ConcordUV/LinkTuning.swift), it was ahead too, with 6-13% less CPU above 4 MiB.
//   - Across machines, larger buffers take the ring. On two switches joined by a trunk (ranks 0-1 on
//     one, 2-3 on the other), the exchanges at distance n/2 put 2·S over the trunk each way where the
//     ring puts 1.5·S.
import ConcordCore
import ConcordKernels

extension RingCollectives {
    /// Buffers above `defaultGatherBytes` and up to this many bytes use halving-doubling where it applies
    /// (larger ones too when all ranks share one machine; see the file comment).
    public static let defaultHalvingBytes = 2 << 20

    /// Rabenseifner's all-reduce in place; `partners` are rank XOR 1, 2, 4, … (see the file comment).
    static func halvingDoublingAllReduce(
        _ buffer: UnsafeMutableRawBufferPointer, count: Int, dataType: DataType, op: ReduceOp,
        sequence: UInt64, transport: Transport
    ) throws {
        let n = transport.worldSize
        let rank = transport.rank
        let size = dataType.size
        let reducer = ReduceKernels.reducer(op: op, dataType: dataType)
        func start(_ block: Int) -> Int { block * count / n }
        func elements(_ blocks: Range<Int>) -> Range<Int> { start(blocks.lowerBound)..<start(blocks.upperBound) }
        func tag(_ range: Range<Int>) -> SegmentTag {
            SegmentTag(
                collective: .allReduce, sequence: sequence, dataType: dataType, op: op, count: count,
                offset: range.lowerBound, length: range.count)
        }
        // Sends are waited for only at the end (`waitAll`): no later step writes a block this rank sent
        // before its partner has consumed it. A block sent at distance d in the reduce-scatter is written
        // again only by the all-gather, with the block's final value, which cannot exist before every
        // partial sum of it, this one included, was consumed; and a block the all-gather sends is never
        // written again. A send that completes only once its receiver consumed it (a zero-copy TCP send,
        // ConcordUV/PeerLink.swift) then costs no wait in the middle of the collective.
        func exchange(with partner: Int, send: Range<Int>, receive: Range<Int>, reduce: Bool) throws {
            let incoming = try transport.receive(
                from: partner, tag: tag(receive), into: slice(buffer, receive, size), reducer: reduce ? reducer : nil)
            _ = try transport.send(to: partner, tag: tag(send), from: UnsafeRawBufferPointer(slice(buffer, send, size)))
            try transport.wait(incoming)
        }

        var mine = 0..<n
        var distance = n / 2
        while distance >= 1 {
            let partner = rank ^ distance
            let middle = (mine.lowerBound + mine.upperBound) / 2
            let (keep, give) =
                rank & distance == 0
                ? (mine.lowerBound..<middle, middle..<mine.upperBound)
                : (middle..<mine.upperBound, mine.lowerBound..<middle)
            try exchange(with: partner, send: elements(give), receive: elements(keep), reduce: true)
            mine = keep
            distance /= 2
        }
        if op == .avg {
            let own = elements(rank..<(rank + 1))
            scale(slice(buffer, own, size), count: own.count, dataType: dataType, n: n)
        }
        distance = 1
        while distance < n {
            let partner = rank ^ distance
            let group = (rank / distance) * distance
            let theirs = (partner / distance) * distance
            try exchange(
                with: partner, send: elements(group..<(group + distance)),
                receive: elements(theirs..<(theirs + distance)), reduce: false)
            distance *= 2
        }
        try transport.waitAll()
    }
}

// The chain schedule: how a rooted collective (broadcast, reduce) streams a buffer along the ring.
//
// Vocabulary (as in RingSchedule.swift): data flows left -> right only, so a rooted collective is a
// chain that follows the ring from its *head* to its *tail* and leaves out the one link tail -> head.
//
//   broadcast(root):  head = root,    tail = root-1     root ──▶ root+1 ──▶ … ──▶ root-1
//   reduce(root):     head = root+1,  tail = root       root+1 ──▶ … ──▶ root-1 ──▶ root
//
//   hop      a rank's distance from the head along the chain (0 for the head, n-1 for the tail).
//   segment  the buffer of `count` elements is cut into k contiguous segments, the unit of a frame; every
//            rank receives segment j from its left (unless it is the head) and then sends it on to its right
//            (unless it is the tail), so segment j+1 travels the first links while j travels later ones.
//
// Cost: every link of the chain carries the whole buffer once, S bytes; the last segment arrives after
// (k + n - 2) segment times, so the chain is cut into at least `pipelineDepth(worldSize:)` = 4(n-1)
// segments when they stay above the pipeline segment size: the fill of the pipe then costs at most
// (n-2)/(k+n-2) < 20% of the time.
import ConcordCore

/// A pure plan of a chain collective for one rank: its neighbours, its place in the chain, the segments.
public struct ChainSchedule: Sendable, Equatable {
    public let worldSize: Int
    public let rank: Int
    /// The first rank of the chain: it only sends.
    public let head: Int
    /// Elements in the buffer.
    public let count: Int
    /// Segments the buffer is cut into (at least 1, so a zero-element collective still sends one frame
    /// per link and a rank that disagrees is caught).
    public let segments: Int

    /// - Parameters:
    ///   - head: the rank the chain starts from (the root of a broadcast; root+1 for a reduce).
    ///   - segmentElements: the largest number of elements one segment may carry (at least 1).
    ///   - pipelineElements: buffers of at least `pipelineDepth(worldSize:)` times this many elements are
    ///     cut into at least that many segments (0: only `segmentElements` decides).
    public init(
        worldSize: Int, rank: Int, head: Int, count: Int, segmentElements: Int, pipelineElements: Int = 0
    ) {
        precondition(worldSize >= 1 && (0..<worldSize).contains(rank), "rank \(rank) out of 0..<\(worldSize)")
        precondition((0..<worldSize).contains(head), "head \(head) out of 0..<\(worldSize)")
        precondition(count >= 0 && segmentElements >= 1 && pipelineElements >= 0)
        self.worldSize = worldSize
        self.rank = rank
        self.head = head
        self.count = count
        let bySize = (count + segmentElements - 1) / segmentElements
        let depth = Self.pipelineDepth(worldSize: worldSize)
        let forPipeline = pipelineElements > 0 ? min(depth, count / pipelineElements) : 0
        self.segments = max(1, bySize, forPipeline)
    }

    /// Segments a large enough buffer is cut into at least: 4 per link of the chain.
    public static func pipelineDepth(worldSize: Int) -> Int { 4 * max(1, worldSize - 1) }

    public var left: Int { (rank + worldSize - 1) % worldSize }
    public var right: Int { (rank + 1) % worldSize }
    /// The last rank of the chain: it only receives.
    public var tail: Int { (head + worldSize - 1) % worldSize }
    /// This rank's distance from the head, 0..<n.
    public var hop: Int { (rank - head + worldSize) % worldSize }
    /// Whether this rank receives every segment from its left (every rank but the head).
    public var receives: Bool { worldSize > 1 && rank != head }
    /// Whether this rank sends every segment to its right (every rank but the tail).
    public var sends: Bool { worldSize > 1 && rank != tail }

    /// The elements of segment `j`.
    public func segment(_ j: Int) -> Range<Int> {
        precondition((0..<segments).contains(j))
        return (count * j / segments)..<(count * (j + 1) / segments)
    }

    /// The largest number of elements in one segment.
    public var largestSegment: Int { (count + segments - 1) / segments }
}

extension RingCollectives {
    /// Opens a chain collective with one empty frame on every link of the ring (offset `count`, length 0),
    /// each rank sending before it receives. A chain gives some ranks nothing to receive (the head) and
    /// others nothing to send (the tail); this first exchange makes every rank check one frame of its left
    /// before any data moves, so ranks that disagree on the root, count, dtype or op all fail at once
    /// instead of finishing unaware or waiting on each other for ever. Cost: one hop of latency.
    static func openChain(_ plan: ChainSchedule, tag: SegmentTag, transport: Transport) throws {
        guard plan.worldSize > 1 else { return }
        _ = try transport.send(to: plan.right, tag: tag, from: UnsafeRawBufferPointer(start: nil, count: 0))
        let opening = try transport.receive(
            from: plan.left, tag: tag, into: UnsafeMutableRawBufferPointer(start: nil, count: 0), reducer: nil)
        try transport.wait(opening)
    }
}

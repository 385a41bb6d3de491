// The ring schedule: which elements every rank sends and receives at every step of a ring collective.
//
// Vocabulary
//   rank     one member of the group, 0..<n; its *right* is rank+1 and its *left* rank-1 (mod n).
//            Data flows left -> right only.
//   chunk    the buffer of `count` elements is cut into n contiguous chunks, as equal as possible
//            (the first count % n chunks get one element more). Chunk c ends up reduced on rank
//            c-1-rotation (see *rotation*).
//   segment  each chunk is cut again into k segments, the unit of a frame on the wire: enough that none
//            exceeds the segment size, and at least `pipelineDepth` when the chunk is large enough;
//            every chunk has the same k, so all ranks agree on the frame sequence.
//   step     one round of the ring: every rank sends one chunk to its right and receives one from its left.
//   unit     (phase, step, segment): the i-th frame a rank sends and the i-th frame it receives.
//   rotation a turn of the chunk numbering. With rotation 0 (all-reduce) rank r owns chunk r+1 after
//            reduce-scatter; reduce-scatter and all-gather use -1, so that rank r owns chunk r, which is
//            block r of their n·count-element buffers (NCCL's layout).
//   band     the wire order may take the segments in bands of w columns (see `wireOrder(band:)`), which
//            bounds how many received segments wait to be forwarded: out-of-place reduce-scatter keeps
//            them in scratch, so its scratch is a few segments whatever n and the buffer size.
//
//        rank0 ──▶ rank1 ──▶ rank2 ──▶ rank3
//          ▲                              │
//          └──────────────────────────────┘
//
// Reduce-scatter, steps s = 0..<n-1: rank r sends chunk r-s and receives chunk r-s-1, which it combines
// into its own copy. After the phase rank r holds chunk r+1 reduced over all ranks.
// All-gather, steps s = 0..<n-1: rank r sends chunk r+1-s and receives chunk r-s, which it stores.
// (Chunk numbers as for rotation 0; a rotation ρ adds ρ to every one of them.)
// A collective runs both phases (all-reduce), or only the first (reduce-scatter, barrier) or the second
// (all-gather); units are numbered through the phases it runs.
//
// The chunk a rank sends at unit u+k is the one it received at unit u (in both phases and across the
// boundary between them): a send waits only for one receive. Units go on the wire in waves along the
// anti-diagonals of (step, segment) (`wireOrder`), so a segment is forwarded right after it arrives.
//
// Cost: each rank sends 2(n-1) chunks, i.e. 2·S·(n-1)/n bytes for a buffer of S bytes, which is optimal
// for a ring; busbw = algbw · 2(n-1)/n measures exactly that per link.

/// One of the two phases of a ring all-reduce.
public enum RingPhase: Int, Sendable, CaseIterable {
    case reduceScatter = 0
    case allGather = 1
}

/// A pure plan of a ring collective for one rank: chunk and segment ranges and the send/receive order.
public struct RingSchedule: Sendable, Equatable {
    public let worldSize: Int
    public let rank: Int
    /// Elements in the whole buffer.
    public let count: Int
    /// Segments in every chunk (at least 1, even for empty chunks, so a zero-element collective still
    /// exchanges one frame per step and a rank that disagrees on the count is caught).
    public let segmentsPerChunk: Int
    /// The phases the collective runs, in order (both for all-reduce).
    public let phases: [RingPhase]
    /// The turn of the chunk numbering: after reduce-scatter rank r owns chunk r+1+rotation, and
    /// all-gather spreads each rank's owned chunk.
    public let rotation: Int

    /// - Parameters:
    ///   - segmentElements: the largest number of elements one segment may carry (at least 1).
    ///   - pipelineElements: chunks of at least `pipelineDepth` times this many elements are cut into at
    ///     least `pipelineDepth` segments, so mid-sized buffers pipeline too (0: only `segmentElements`
    ///     decides).
    ///   - phases: the phases to run, a non-empty ordered subset of `RingPhase.allCases`.
    ///   - rotation: see `rotation`; -1 makes rank r own chunk r.
    public init(
        worldSize: Int, rank: Int, count: Int, segmentElements: Int, pipelineElements: Int = 0,
        phases: [RingPhase] = RingPhase.allCases, rotation: Int = 0
    ) {
        precondition(worldSize >= 1 && (0..<worldSize).contains(rank), "rank \(rank) out of 0..<\(worldSize)")
        precondition(count >= 0 && segmentElements >= 1 && pipelineElements >= 0)
        precondition(
            !phases.isEmpty && zip(phases, phases.dropFirst()).allSatisfy { $0.rawValue < $1.rawValue },
            "phases must be an ordered subset of RingPhase.allCases")
        self.worldSize = worldSize
        self.rank = rank
        self.count = count
        self.phases = phases
        self.rotation = rotation
        let largestChunk = (count + worldSize - 1) / worldSize
        let bySize = (largestChunk + segmentElements - 1) / segmentElements
        let forPipeline = pipelineElements > 0 ? min(Self.pipelineDepth, largestChunk / pipelineElements) : 0
        self.segmentsPerChunk = max(1, bySize, forPipeline)
    }

    /// Segments per chunk that a large enough chunk is cut into at least.
    public static let pipelineDepth = 4

    public var left: Int { (rank + worldSize - 1) % worldSize }
    public var right: Int { (rank + 1) % worldSize }
    /// Steps in one phase.
    public var stepsPerPhase: Int { worldSize - 1 }
    /// The chunk this rank holds fully reduced after reduce-scatter, and spreads in all-gather.
    public var ownedChunk: Int { Self.mod(rank + 1 + rotation, worldSize) }

    /// The elements of chunk `c` (any integer; taken mod n).
    public func chunk(_ c: Int) -> Range<Int> {
        let c = Self.mod(c, worldSize)
        let base = count / worldSize
        let extra = count % worldSize
        let start = c * base + min(c, extra)
        return start..<(start + base + (c < extra ? 1 : 0))
    }

    /// The elements of segment `j` of chunk `c`.
    public func segment(_ j: Int, ofChunk c: Int) -> Range<Int> {
        let whole = chunk(c)
        let k = segmentsPerChunk
        return (whole.lowerBound + whole.count * j / k)..<(whole.lowerBound + whole.count * (j + 1) / k)
    }

    /// The chunk this rank sends at `step` of `phase`.
    public func sendChunk(_ phase: RingPhase, step: Int) -> Int {
        switch phase {
        case .reduceScatter: return Self.mod(rank - step + rotation, worldSize)
        case .allGather: return Self.mod(rank + 1 - step + rotation, worldSize)
        }
    }

    /// The chunk this rank receives at `step` of `phase`.
    public func receiveChunk(_ phase: RingPhase, step: Int) -> Int {
        switch phase {
        case .reduceScatter: return Self.mod(rank - step - 1 + rotation, worldSize)
        case .allGather: return Self.mod(rank - step + rotation, worldSize)
        }
    }

    /// One frame's worth of work: what is sent and what is received at unit `index`.
    public struct Unit: Sendable, Equatable {
        public let phase: RingPhase
        public let step: Int
        public let segment: Int
        public let send: Range<Int>
        public let receive: Range<Int>
    }

    /// Units in one phase.
    public var unitsPerPhase: Int { stepsPerPhase * segmentsPerChunk }
    /// Units in all the phases the collective runs.
    public var unitCount: Int { phases.count * unitsPerPhase }

    /// Unit `index`, counting from the first unit of the first phase through the end of the last.
    public func unit(_ index: Int) -> Unit {
        let perPhase = unitsPerPhase
        precondition(index >= 0 && index < unitCount)
        let phase = phases[index / perPhase]
        let within = index % perPhase
        let step = within / segmentsPerChunk
        let j = within % segmentsPerChunk
        return Unit(
            phase: phase, step: step, segment: j,
            send: segment(j, ofChunk: sendChunk(phase, step: step)),
            receive: segment(j, ofChunk: receiveChunk(phase, step: step)))
    }

    /// The order in which units travel on the wire: by anti-diagonals of (step, segment), i.e. unit
    /// (g, j) goes out in wave t = g + j, lower steps first within a wave (steps count through all phases).
    ///
    /// A unit of step g depends only on the unit (g-1, j) received from the left, which the left sent one
    /// wave earlier, so the ring advances wave by wave; and a segment is sent on right after it was
    /// received and combined, while it is still in cache (in step order it would wait behind all k
    /// segments of the step). Sender and receiver compute the same order, so the i-th frame a rank
    /// sends is the i-th its right neighbour receives.
    ///
    /// - Parameter band: with `band` w < k, the segment columns are taken w at a time: all waves of
    ///   columns 0..<w, then of w..<2w, and so on. A wave then holds at most w units, so at most about
    ///   2w received segments wait to be forwarded at any time (instead of up to n-1): what bounds the
    ///   scratch of out-of-place reduce-scatter. Dependencies stay within a column, hence within a band.
    public func wireOrder(band: Int = .max) -> [Int] {
        precondition(band >= 1)
        let k = segmentsPerChunk
        let steps = phases.count * stepsPerPhase
        var order = [Int]()
        order.reserveCapacity(steps * k)
        guard steps > 0 else { return order }
        var first = 0
        while first < k {
            let width = min(band, k - first)
            for wave in 0..<(width + steps - 1) {
                for step in max(0, wave - width + 1)...min(wave, steps - 1) {
                    order.append(step * k + first + wave - step)
                }
            }
            first += width
        }
        return order
    }

    @inlinable
    static func mod(_ a: Int, _ n: Int) -> Int { ((a % n) + n) % n }
}

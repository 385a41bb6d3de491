// Compressed ring all-reduce (sum of float32 buffers, compressed on the wire): gradient compression.
//
// Vocabulary as in RingSchedule.swift (rank, left/right, chunk, segment, step, unit), plus:
//   codec        how float32 values travel on one link (`WireCodec`): float32 (exact), float16, bfloat16
//                (rounded to nearest even) or blockwise int8 (QuantizeKernels.swift: a float32 scale and
//                B int8 values per block of B elements).
//   hop codec    `hopCodecs[k]` is the codec of the link leaving rank k (k → k+1); links may differ, e.g.
//                int8 on the one slow link of a ring and float32 elsewhere.
//   gather codec the coarsest of the hop codecs (fewest bytes per element; see `WireCodec.coarsest`),
//                used by every link in the all-gather.
//   chunk c      is owned by rank c: elements chunkStarts[c] ..< chunkStarts[c+1], `chunkCounts[c]` of
//                them (equal split as in the ring by default; weighted chunks give a fast rank more).
//   grain        segments start at multiples of the int8 block sizes from their chunk's start, so every
//                segment but a chunk's last is whole blocks.
//
//        rank0 ──c0──▶ rank1 ──c1──▶ rank2 ──c2──▶ rank3        ck = hopCodecs[k]
//          ▲                                          │
//          └─────────────────────c3───────────────────┘
//
// Reduce-scatter, steps s = 0..<n-1: rank r encodes its partial sum of chunk r-1-s with c_r and sends it
// right; it receives chunk r-2-s encoded with c_(r-1) from its left, decodes it and adds it into its own
// float32 values (decodeAdd), which it re-encodes to forward at the next step. Every partial sum is kept
// in float32 and only its passage over a link is compressed, so each hop adds one codec rounding of the
// partial sum (int8: at most s/2 per element, s = the block's |max| / 127) and no error compounds beyond
// the sum of those. After the last step rank r holds chunk r summed over all ranks, in float32.
// All-gather, steps s = 0..<n-1: the owner encodes its chunk ONCE with the gather codec and replaces its
// own values by the decoding of those bytes; the bytes then travel around the ring unchanged (each rank
// decodes them and forwards the received bytes verbatim). So every rank ends with bit-identical buffers
// whatever the codecs, and the all-gather adds one codec rounding. With float32 on every link both
// phases are exactly the ring's: sums combined by the transport as bytes arrive (ring order, chunk c
// summed from rank c+1 round to rank c), sent straight from the buffer.
//
// Error feedback (an optional `residual`, as many floats as the buffer): each rounding this rank makes —
// a hop's encoding of a partial sum, the owner's encoding for the all-gather — adds what it dropped to
// residual[those elements]. Summed over the ranks, the residuals are the result's whole error (up to
// float32 additions); a caller that adds its residual to its next contribution (EF-SGD) re-sends every
// error once, so rounding does not accumulate over steps. The residual is only added to, never cleared.
//
// Pipelining as in RingPipeline.swift: units in the wire order of a `RingSchedule` with k segments per
// chunk (bands of 2 columns), a send posted as soon as the receive it depends on is complete and
// decoded, `receiveWindow` receives posted ahead of the one being decoded (so the decoding of a segment
// overlaps the transfer of the next), and a receive at wire position p posted only once this rank's sends
// at positions <= p - `reduceScatterSendLag` are complete (deadlock-free, see RingPipeline.swift). Encoded
// segments live in scratch slots of one segment each, reused once decoded or sent: about
// 2·band + lag + window of them whatever n and S.
//
// Frames: collective `compressedAllReduce`, dtype = the codec's wire type (float32, float16, bfloat16, or
// int8 for the bytes of the int8 format), count = float32 elements of the buffer, offset = the segment's
// first element in the buffer, length = its encoded size in wire elements. A rank that passed another
// count fails with a count mismatch; another codec on a link, with a dtype mismatch; another block size
// or chunking, with a malformed-frame error naming the segment. A frame holds at most `segmentBytes` of
// payload (unless one grain alone is larger).
//
// Error: an element of chunk c goes through one codec rounding per lossy link it crosses in the
// reduce-scatter (at most n-1) and one in the all-gather, each of the partial sum at that point, plus the
// float32 additions; CompressedAllReduceTests states and asserts the resulting bound per codec.
//
// Cost per rank, equal chunks of m = count/n elements: 2(n-1) chunks sent and received; on a link with
// codec c a chunk is c.encodedByteCount(m) bytes (int8/64: 1.0625·m, a 3.76th of float32's 4·m; halves:
// 2·m); (n-1)·m floats decoded and added and as many encoded in the reduce-scatter, then one encode of
// the own chunk and (n-1)·m floats decoded in the all-gather. busbw in float32 bytes = algbw · 2(n-1)/n
// as for the ring; the bytes on a link shrink by the codec's ratio.
//
// Edge cases: a world of one rank returns at once with the values exact (nothing travels, nothing is
// rounded); counts below n give empty chunks; a zero-element collective still sends one empty frame per
// step, so a rank that disagrees on the count fails instead of hanging.
import ConcordCore
import ConcordKernels

/// How float32 values travel on one link of a compressed collective.
///
/// Every codec turns `count` floats into `encodedByteCount(_:)` bytes and back, deterministically:
/// the same floats give the same bytes on every machine. float16 and bfloat16 round to nearest even
/// (float16 overflows to ±infinity beyond 65504; bfloat16 keeps float32's range); int8 is the blockwise
/// format of `QuantizeKernels` (error at most about half a block's |max|/127 per element).
public enum WireCodec: Sendable, Hashable, CustomStringConvertible {
    /// Exact: the float32 bytes themselves.
    case float32
    /// IEEE binary16, 2 bytes per element.
    case float16
    /// The top half of a float32, 2 bytes per element.
    case bfloat16
    /// Blockwise int8 (`QuantizeKernels`): a float32 scale per block of `blockSize` elements, then one
    /// byte per element; `defaultInt8BlockSize` (64) unless there is a reason.
    case int8(blockSize: Int)

    /// The block size of `int8` unless there is a reason to choose another: `QuantizeKernels.defaultBlockSize`
    /// (64; see QuantizeKernels.swift for why).
    public static let defaultInt8BlockSize = QuantizeKernels.defaultBlockSize

    /// The dtype stamped on this codec's frames (int8: the bytes of the int8 format).
    public var wireType: DataType {
        switch self {
        case .float32: return .float32
        case .float16: return .float16
        case .bfloat16: return .bfloat16
        case .int8: return .int8
        }
    }

    /// Whether decoding gives back exactly what was encoded (float32 only).
    public var isLossless: Bool { self == .float32 }

    /// Bytes per element on the wire, for long runs: 4, 2, 2, or 1 + 4/blockSize for int8.
    public var bytesPerElement: Double {
        switch self {
        case .float32: return 4
        case .float16, .bfloat16: return 2
        case .int8(let b): return 1 + Double(QuantizeKernels.scaleBytes) / Double(b)
        }
    }

    /// Bytes of the encoding of `count` floats.
    public func encodedByteCount(_ count: Int) -> Int {
        switch self {
        case .float32: return 4 * count
        case .float16, .bfloat16: return 2 * count
        case .int8(let b): return QuantizeKernels.encodedByteCount(count: count, blockSize: b)
        }
    }

    /// Whether the codec can be used: int8 blocks of 1 ... 65536 elements.
    public var isValid: Bool {
        if case .int8(let b) = self { return (1...(1 << 16)).contains(b) }
        return true
    }

    /// Encodes `source` into the first `encodedByteCount(source.count)` bytes of `destination`.
    /// - Parameters:
    ///   - source: the floats.
    ///   - destination: room for the encoding, not overlapping `source`.
    public func encode(_ source: UnsafeBufferPointer<Float>, into destination: UnsafeMutableRawBufferPointer) {
        let count = source.count
        precondition(destination.count >= encodedByteCount(count), "no room for \(count) elements as \(self)")
        guard count > 0 else { return }
        let (s, d) = (UnsafeRawPointer(source.baseAddress!), destination.baseAddress!)
        switch self {
        case .float32: d.copyMemory(from: s, byteCount: 4 * count)
        case .float16: ConvertKernels.float32ToFloat16(s, d, count: count)
        case .bfloat16: ConvertKernels.float32ToBFloat16(s, d, count: count)
        case .int8(let b): QuantizeKernels.encode(source, into: destination, blockSize: b)
        }
    }

    /// Decodes `destination.count` floats from `source` into `destination`.
    /// - Parameters:
    ///   - source: at least `encodedByteCount(destination.count)` bytes.
    ///   - destination: the floats, not overlapping `source`.
    public func decode(from source: UnsafeRawBufferPointer, into destination: UnsafeMutableBufferPointer<Float>) {
        let count = destination.count
        precondition(source.count >= encodedByteCount(count), "too few bytes for \(count) elements as \(self)")
        guard count > 0 else { return }
        let (s, d) = (source.baseAddress!, UnsafeMutableRawPointer(destination.baseAddress!))
        switch self {
        case .float32: d.copyMemory(from: s, byteCount: 4 * count)
        case .float16: ConvertKernels.float16ToFloat32(s, d, count: count)
        case .bfloat16: ConvertKernels.bfloat16ToFloat32(s, d, count: count)
        case .int8(let b): QuantizeKernels.decode(from: source, into: destination, blockSize: b)
        }
    }

    /// Decodes `destination.count` floats from `source` and adds them to `destination`
    /// (`destination[i] += decoded[i]`, one float32 rounding per element).
    /// - Parameters:
    ///   - source: at least `encodedByteCount(destination.count)` bytes.
    ///   - destination: the floats to add to, not overlapping `source`.
    public func decodeAdd(from source: UnsafeRawBufferPointer, into destination: UnsafeMutableBufferPointer<Float>) {
        let count = destination.count
        precondition(source.count >= encodedByteCount(count), "too few bytes for \(count) elements as \(self)")
        guard count > 0 else { return }
        let d = destination.baseAddress!
        switch self {
        case .float32:
            ReduceKernels.sum(into: d, from: source.baseAddress!.assumingMemoryBound(to: Float.self), count: count)
        case .float16, .bfloat16:
            // Widen a piece at a time into a buffer that stays in L1, then add.
            let piece = 2048
            withUnsafeTemporaryAllocation(of: Float.self, capacity: piece) { widened in
                var start = 0
                while start < count {
                    let m = min(piece, count - start)
                    let part = UnsafeRawBufferPointer(rebasing: source[(2 * start)..<(2 * (start + m))])
                    decode(from: part, into: UnsafeMutableBufferPointer(rebasing: widened[0..<m]))
                    ReduceKernels.sum(into: d + start, from: widened.baseAddress!, count: m)
                    start += m
                }
            }
        case .int8(let b): QuantizeKernels.decodeAdd(from: source, into: destination, blockSize: b)
        }
    }

    /// Writes what encoding drops, `x − decode(encode(x))`, for every element of `source` into `error`:
    /// the residual of error feedback (add it to the next step's values before they are encoded).
    ///
    /// int8 blocks count from `source`'s first element, as when `source` is encoded whole (the ring cuts
    /// blocks from each segment's start instead, and quantizes partial sums: there the residual is an
    /// estimate of the local part of the error). float32 drops nothing: zeros.
    /// - Parameters:
    ///   - source: the floats.
    ///   - error: `source.count` floats; may be `source` itself, but must not partly overlap it.
    public func quantizationError(of source: UnsafeBufferPointer<Float>, into error: UnsafeMutableBufferPointer<Float>)
    {
        let count = source.count
        precondition(error.count == count, "error holds \(error.count) floats, not \(count)")
        guard count > 0 else { return }
        switch self {
        case .float32:
            error.update(repeating: 0)
        case .float16, .bfloat16:
            let piece = 2048
            withUnsafeTemporaryAllocation(of: Float.self, capacity: piece) { decoded in
                withUnsafeTemporaryAllocation(byteCount: 2 * piece, alignment: 64) { encoded in
                    var start = 0
                    while start < count {
                        let m = min(piece, count - start)
                        let part = UnsafeBufferPointer(rebasing: source[start..<(start + m)])
                        let values = UnsafeMutableBufferPointer(rebasing: decoded[0..<m])
                        encode(part, into: encoded)
                        decode(from: UnsafeRawBufferPointer(encoded), into: values)
                        for i in 0..<m { error[start + i] = part[i] - values[i] }
                        start += m
                    }
                }
            }
        case .int8(let b):
            let piece = max(1, 4096 / b) * b
            withUnsafeTemporaryAllocation(
                byteCount: QuantizeKernels.encodedByteCount(count: piece, blockSize: b), alignment: 64
            ) { encoded in
                var start = 0
                while start < count {
                    let m = min(piece, count - start)
                    QuantizeKernels.encode(
                        UnsafeBufferPointer(rebasing: source[start..<(start + m)]), into: encoded,
                        residual: UnsafeMutableBufferPointer(rebasing: error[start..<(start + m)]), blockSize: b)
                    start += m
                }
            }
        }
    }

    /// The codec of the all-gather of links using `codecs`: the one with the fewest bytes per element, ties
    /// going to the less precise (int8, then bfloat16 — float32's range, where float16 would overflow —
    /// then float16). The all-gather's bytes cross every link unchanged, so the slowest link, which the
    /// coarsest codec was chosen for, sets its pace.
    /// - Precondition: `codecs` is not empty.
    public static func coarsest(_ codecs: [WireCodec]) -> WireCodec {
        precondition(!codecs.isEmpty, "no codecs")
        func precision(_ c: WireCodec) -> Int {
            switch c {
            case .int8: return 0
            case .bfloat16: return 1
            case .float16: return 2
            case .float32: return 3
            }
        }
        return codecs.min { ($0.bytesPerElement, precision($0)) < ($1.bytesPerElement, precision($1)) }!
    }

    /// `float32`, `float16`, `bfloat16` or `int8/<block size>`.
    public var description: String {
        switch self {
        case .float32: return "float32"
        case .float16: return "float16"
        case .bfloat16: return "bfloat16"
        case .int8(let b): return "int8/\(b)"
        }
    }
}

extension RingCollectives {
    /// Sums `buffer` over all ranks of `transport`, in place, compressing what each link carries with
    /// that link's codec (see the file comment for the algorithm and its error).
    ///
    /// Every rank ends with bit-identical values whatever the codecs. With `float32` on every link the
    /// result is the ring's float32 sum (chunk c summed in ring order from rank c+1 round to rank c).
    /// A world of one rank returns at once, its values exact.
    ///
    /// - Parameters:
    ///   - buffer: the floats to sum; the result replaces them. Its count must be the same on every rank.
    ///   - hopCodecs: `worldSize` codecs, the codec of the link leaving rank k at index k; the same array
    ///     on every rank.
    ///   - chunkCounts: elements of the chunk owned by each rank (rank r's chunk starts after those of ranks
    ///     0..<r), summing to `buffer.count`; the same on every rank. nil: the ring's equal split (the first
    ///     `count % n` chunks one element longer).
    ///   - sequence: this collective's number in the communicator's call sequence (same on every rank).
    ///   - transport: this rank's transport.
    ///   - segmentBytes: the largest payload of one frame (at least one grain: an int8 block, or one element).
    /// - Throws: `ConcordError.invalidArgument`, before any frame is sent, when `hopCodecs` does not hold
    ///   `worldSize` valid codecs or `chunkCounts` is not `worldSize` non-negative counts summing to
    ///   `buffer.count`; otherwise the transport's `ConcordError` (peer lost, a rank with another count or
    ///   codec, ...). The buffer's content is then unspecified, and the transport holds no reference to it.
    public static func compressedAllReduce(
        _ buffer: UnsafeMutableBufferPointer<Float>, hopCodecs: [WireCodec], chunkCounts: [Int]? = nil,
        residual: UnsafeMutableBufferPointer<Float>? = nil,
        sequence: UInt64, transport: Transport, segmentBytes: Int = defaultSegmentBytes
    ) throws {
        precondition(residual == nil || residual!.count == buffer.count, "the residual holds as many floats as the buffer")
        let n = transport.worldSize
        let rank = transport.rank
        precondition(segmentBytes >= 1, "segmentBytes must be positive")
        try validateCompressed(
            hopCodecs: hopCodecs, chunkCounts: chunkCounts, count: buffer.count, transport: transport)
        if n == 1 { return }
        let plan = CompressedRingPlan(
            worldSize: n, rank: rank, hopCodecs: hopCodecs, chunkCounts: chunkCounts, count: buffer.count,
            segmentBytes: segmentBytes)
        let schedule = plan.schedule
        // Weighted chunks: whole anti-diagonal waves, so that one chunk's all-gather overlaps its own
        // reduce-scatter on later segments (bands would serialize them through the ranks' send order).
        let order = schedule.wireOrder(band: chunkCounts == nil ? reduceScatterBand : .max)
        let total = order.count
        let k = plan.segmentsPerChunk
        let lastReduceStep = n - 2
        let gather = plan.gatherCodec
        let floatSum = ReduceKernels.reducer(op: .sum, dataType: .float32)

        var slots = SegmentSlots(bytes: plan.slotBytes)
        defer { slots.deallocate() }  // the transport holds no reference once the loop returns or throws
        var receiveSlot = [Int](repeating: -1, count: total)
        var sendSlot = [Int](repeating: -1, count: total)

        func floats(_ range: Range<Int>) -> UnsafeMutableBufferPointer<Float> {
            UnsafeMutableBufferPointer(rebasing: buffer[range])
        }
        func tag(_ part: CompressedRingPlan.Part) -> SegmentTag {
            SegmentTag(
                collective: .compressedAllReduce, sequence: sequence, dataType: part.codec.wireType, op: .sum,
                count: buffer.count, offset: part.elements.lowerBound,
                length: part.codec.encodedByteCount(part.elements.count) / part.codec.wireType.size)
        }
        /// The bytes of segment slot `s` that hold `part` encoded.
        func encoded(_ s: Int, _ part: CompressedRingPlan.Part) -> UnsafeMutableRawBufferPointer {
            slots.bytes(s, count: part.codec.encodedByteCount(part.elements.count))
        }

        func send(_ u: Int) -> (tag: SegmentTag, bytes: UnsafeRawBufferPointer) {
            let part = plan.send(u)
            if part.codec.isLossless { return (tag(part), UnsafeRawBufferPointer(floats(part.elements))) }
            if schedule.unit(u).phase == .allGather {
                assert(sendSlot[u] >= 0, "all-gather unit \(u) has no bytes to forward")
                return (tag(part), UnsafeRawBufferPointer(encoded(sendSlot[u], part)))  // the owner's or the left's
            }
            let s = slots.take()
            sendSlot[u] = s
            let values = floats(part.elements)
            part.codec.encode(UnsafeBufferPointer(values), into: encoded(s, part))
            if let residual {
                // This partial sum is not read again before the all-gather overwrites it: decode the bytes
                // into it to learn what the hop dropped.
                keepError(residual, part.elements, values) {
                    part.codec.decode(from: UnsafeRawBufferPointer(encoded(s, part)), into: values)
                }
            }
            return (tag(part), UnsafeRawBufferPointer(encoded(s, part)))
        }
        func sent(_ u: Int) {
            if sendSlot[u] >= 0 { slots.release(sendSlot[u]) }
            sendSlot[u] = -1
        }
        func receive(_ u: Int) -> (tag: SegmentTag, bytes: UnsafeMutableRawBufferPointer, reducer: Reducer?) {
            let part = plan.receive(u)
            if part.codec.isLossless {
                let reducer = schedule.unit(u).phase == .reduceScatter ? floatSum : nil
                return (tag(part), UnsafeMutableRawBufferPointer(floats(part.elements)), reducer)
            }
            let s = slots.take()
            receiveSlot[u] = s
            return (tag(part), encoded(s, part), nil)
        }
        func received(_ u: Int) {
            let unit = schedule.unit(u)
            let part = plan.receive(u)
            let values = floats(part.elements)
            let s = receiveSlot[u]
            switch unit.phase {
            case .reduceScatter:
                if s >= 0 {
                    part.codec.decodeAdd(from: UnsafeRawBufferPointer(encoded(s, part)), into: values)
                    slots.release(s)
                }
                if unit.step == lastReduceStep && !gather.isLossless {
                    // This rank's chunk is complete: encode it once for the all-gather, and keep what the
                    // others will decode.
                    let g = slots.take()
                    let gathered = CompressedRingPlan.Part(codec: gather, elements: part.elements)
                    gather.encode(UnsafeBufferPointer(values), into: encoded(g, gathered))
                    keepError(residual, part.elements, values) {
                        gather.decode(from: UnsafeRawBufferPointer(encoded(g, gathered)), into: values)
                    }
                    sendSlot[u + k] = g
                }
            case .allGather:
                if s >= 0 {
                    part.codec.decode(from: UnsafeRawBufferPointer(encoded(s, part)), into: values)
                    if u + k < total { sendSlot[u + k] = s } else { slots.release(s) }  // forwarded verbatim
                }
            }
            receiveSlot[u] = -1
        }

        // RingPipeline's loop, with encoded segments in slots; the send lag bounds how many wait.
        var pipeline = RingPipeline(
            plan: schedule, order: order, transport: transport, kind: .compressedAllReduce, sequence: sequence,
            dataType: .float32, op: .sum, count: buffer.count)
        pipeline.sendLag = reduceScatterSendLag
        try pipeline.run(taggedReceive: receive, received: received, taggedSend: send, sent: sent)
    }

    /// Throws the same `invalidArgument` on every rank for arguments that cannot work.
    static func validateCompressed(hopCodecs: [WireCodec], chunkCounts: [Int]?, count: Int, transport: Transport)
        throws
    {
        let n = transport.worldSize
        func fail(_ message: String) -> ConcordError { .invalidArgument(rank: transport.rank, message: message) }
        guard hopCodecs.count == n else {
            throw fail("compressedAllReduce needs one codec per link: \(hopCodecs.count) for \(n) ranks")
        }
        if let bad = hopCodecs.first(where: { !$0.isValid }) {
            throw fail("codec \(bad) is not valid: int8 blocks hold 1...65536 elements")
        }
        if let chunkCounts {
            guard chunkCounts.count == n, chunkCounts.allSatisfy({ $0 >= 0 }), chunkCounts.reduce(0, +) == count
            else {
                throw fail(
                    "chunk counts \(chunkCounts) must be \(n) non-negative counts summing to the buffer's \(count)")
            }
        }
    }

    /// Runs `replace`, which overwrites `values` with their codec rounding, and adds what it changed
    /// (old − new) to `residual[elements]` (error feedback), if there is a residual.
    private static func keepError(
        _ residual: UnsafeMutableBufferPointer<Float>?, _ elements: Range<Int>, _ values: UnsafeMutableBufferPointer<Float>,
        replace: () -> Void
    ) {
        guard let residual, let base = residual.baseAddress, let v = values.baseAddress else { return replace() }
        let count = elements.count
        ReduceKernels.sum(into: base + elements.lowerBound, from: v, count: count)
        replace()
        ReduceKernels.subtract(from: base + elements.lowerBound, v, count: count)
    }

    /// Scratch for encoded segments: slots of one segment each, allocated as needed and reused.
    struct SegmentSlots {
        let slotBytes: Int
        private var buffers = [UnsafeMutableRawBufferPointer]()
        private var free = [Int]()

        init(bytes: Int) { slotBytes = max(1, bytes) }

        /// A free slot.
        mutating func take() -> Int {
            if let s = free.popLast() { return s }
            buffers.append(.allocate(byteCount: slotBytes, alignment: 64))
            return buffers.count - 1
        }

        mutating func release(_ s: Int) { free.append(s) }

        /// The first `count` bytes of slot `s`.
        func bytes(_ s: Int, count: Int) -> UnsafeMutableRawBufferPointer {
            UnsafeMutableRawBufferPointer(rebasing: buffers[s][0..<count])
        }

        func deallocate() { for b in buffers { b.deallocate() } }
    }
}

/// The pure plan of a compressed all-reduce for one rank: chunks, segments, codecs and the unit order.
///
/// The order of units and the chunk each carries are those of a `RingSchedule` with both phases, rotation
/// -1 (rank r owns chunk r) and k segments per chunk, built over n·k one-element segments; only the
/// element ranges differ (this plan's chunks may be weighted, and its segments are cut in grains).
package struct CompressedRingPlan: Sendable, Equatable {
    /// What one send or receive carries: the elements of a segment, encoded with `codec`.
    package struct Part: Sendable, Equatable {
        package let codec: WireCodec
        package let elements: Range<Int>
    }

    package let worldSize: Int
    package let rank: Int
    package let hopCodecs: [WireCodec]
    /// The codec of every link in the all-gather.
    package let gatherCodec: WireCodec
    /// n+1 offsets: chunk c is `chunkStarts[c] ..< chunkStarts[c+1]`.
    package let chunkStarts: [Int]
    /// Segments start at multiples of this many elements from their chunk's start: the least common
    /// multiple of the int8 block sizes (or the largest of them, when that multiple exceeds 65536), else 1.
    package let grain: Int
    /// Segments per chunk, the same for every chunk (at least 1).
    package let segmentsPerChunk: Int
    /// The order and chunk numbers of the units (see the type's comment).
    package let schedule: RingSchedule

    /// - Parameters:
    ///   - chunkCounts: elements per chunk (see `compressedAllReduce`), nil for the equal split.
    ///   - segmentBytes: the largest encoded segment on any link (unless one grain is larger).
    package init(
        worldSize n: Int, rank: Int, hopCodecs: [WireCodec], chunkCounts: [Int]?, count: Int, segmentBytes: Int
    ) {
        precondition(hopCodecs.count == n && (chunkCounts.map { $0.reduce(0, +) } ?? count) == count)
        self.worldSize = n
        self.rank = rank
        self.hopCodecs = hopCodecs
        self.gatherCodec = WireCodec.coarsest(hopCodecs)
        let counts = chunkCounts ?? (0..<n).map { count / n + ($0 < count % n ? 1 : 0) }
        var starts = [0]
        for c in counts { starts.append(starts.last! + c) }
        self.chunkStarts = starts

        func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
        var multiple = 1
        var largestBlock = 1
        for case .int8(let b) in hopCodecs {
            largestBlock = max(largestBlock, b)
            if multiple <= 1 << 16 { multiple = multiple / gcd(multiple, b) * b }  // no overflow: both <= 2^16
        }
        let grain = multiple <= 1 << 16 ? multiple : largestBlock
        self.grain = grain
        let bytesPerGrain = hopCodecs.map { $0.encodedByteCount(grain) }.max()!
        let grainsPerSegment = max(1, segmentBytes / bytesPerGrain)
        let largestChunk = counts.max() ?? 0
        let largestGrains = (largestChunk + grain - 1) / grain
        let bySize = (largestGrains + grainsPerSegment - 1) / grainsPerSegment
        let forPipeline = min(
            RingSchedule.pipelineDepth, largestChunk * 4 / RingCollectives.pipelineSegmentBytes, largestGrains)
        let k = max(1, bySize, forPipeline)
        self.segmentsPerChunk = k
        self.schedule = RingSchedule(
            worldSize: n, rank: rank, count: n * k, segmentElements: 1, phases: RingPhase.allCases, rotation: -1)
        assert(schedule.segmentsPerChunk == k)
    }

    package var left: Int { schedule.left }
    package var right: Int { schedule.right }

    /// The elements of chunk `c` (any integer; taken mod n).
    package func chunk(_ c: Int) -> Range<Int> {
        let c = RingSchedule.mod(c, worldSize)
        return chunkStarts[c]..<chunkStarts[c + 1]
    }

    /// The elements of segment `j` of chunk `c`: grains `g·j/k ..< g·(j+1)/k` of the chunk's g grains.
    package func segment(_ j: Int, ofChunk c: Int) -> Range<Int> {
        let whole = chunk(c)
        let grains = (whole.count + grain - 1) / grain
        let k = segmentsPerChunk
        let lower = min(whole.count, grains * j / k * grain)
        let upper = min(whole.count, grains * (j + 1) / k * grain)
        return (whole.lowerBound + lower)..<(whole.lowerBound + upper)
    }

    /// What this rank sends at unit `u`: the codec of its own link in reduce-scatter, the gather codec after.
    package func send(_ u: Int) -> Part {
        let unit = schedule.unit(u)
        let codec = unit.phase == .reduceScatter ? hopCodecs[rank] : gatherCodec
        return Part(
            codec: codec, elements: segment(unit.segment, ofChunk: schedule.sendChunk(unit.phase, step: unit.step)))
    }

    /// What this rank receives at unit `u`: the codec of its left's link in reduce-scatter, the gather
    /// codec after.
    package func receive(_ u: Int) -> Part {
        let unit = schedule.unit(u)
        let codec = unit.phase == .reduceScatter ? hopCodecs[left] : gatherCodec
        return Part(
            codec: codec, elements: segment(unit.segment, ofChunk: schedule.receiveChunk(unit.phase, step: unit.step)))
    }

    /// Bytes of a scratch slot: the largest segment encoded with any lossy codec this rank uses.
    package var slotBytes: Int {
        let largestChunk = (0..<worldSize).map { chunkStarts[$0 + 1] - chunkStarts[$0] }.max() ?? 0
        let largestGrains = (largestChunk + grain - 1) / grain
        let largestSegment = (largestGrains + segmentsPerChunk - 1) / segmentsPerChunk * grain
        let lossy = [hopCodecs[rank], hopCodecs[left], gatherCodec].filter { !$0.isLossless }
        return lossy.map { $0.encodedByteCount(largestSegment) }.max() ?? 0
    }
}

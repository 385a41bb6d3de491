// Blockwise int8 quantization of float32 buffers, for compressed wire formats (gradient compression).
//
// Format. A run of `count` floats is cut into blocks of B elements from its start (the last block holds
// the remaining count % B when that is not 0). Each block is encoded as its scale followed by its values:
//
//   [ s_0 | q_0,0 … q_0,B-1 ][ s_1 | q_1,0 … ] … [ s_last | q_last,0 … q_last,m-1 ]
//     4 B   B bytes            4 B                   4 B      m bytes (m = count − B·(blocks − 1))
//
//   s  float32, little-endian: absmax / 127, absmax = the block's largest |x| (one ulp less when 127·s
//      would overflow, which only happens within an ulp or so of Float.greatestFiniteMagnitude)
//   q  int8: round(x · (127 / absmax)) to nearest, ties to even: within ±127 (−128 never occurs)
//
// so `encodedByteCount = count + 4·⌈count / B⌉`, and a decoded element is `Float(q) * s`. Interleaving
// (rather than all scales first) keeps a block's scale next to its values: one pass of both encoder and
// decoder reads every byte once in order, and a run cut at block boundaries is the concatenation of
// its parts' encodings (the ring compresses segment by segment).
//
// Special blocks. A block whose absmax is below `smallestScaledMagnitude` (2^-119, which keeps the scale
// normal and 127/absmax finite) encodes as a zero block: scale 0, every q 0, decoding to +0. A block
// holding an infinity or a NaN encodes with a NaN scale and every q 0: it decodes to NaN throughout, so
// a diverging gradient stays visible instead of becoming plausible numbers.
//
// Error bound. For an ordinary block, |x − decode(encode(x))| ≤ s·(1/2 + 2^-15) for every element: the
// rounding to an integer contributes s/2, and the float32 roundings of the scale, its reciprocal, the
// product x·(127/absmax) and of the decoding product q·s together less than 4·127·2^-24·s < 2^-15·s
// (s·(1/2 + 2^-14) for a scale lowered by an ulp near overflow).
// In a zero block the error is below 2^-119. Re-encoding a decoded block gives the same q (the scale may
// move by one ulp), so a second round trip adds no error beyond that ulp.
//
// Determinism. Every machine produces the same bytes for the same input: the absmax is an integer max
// over the magnitude bits (no NaN-dependent float max), the scale and the reciprocal are single correctly
// rounded divisions (`absmax / 127`, `127 / absmax`), each q comes from one correctly rounded product
// `x * (127/absmax)` rounded to nearest even by adding 1.5·2^23 (exact IEEE semantics; no rounding
// instruction, which baseline x86-64 lacks, and no library call), and decoding is one product `q * s`
// followed, in `decodeAdd`, by one sum — two roundings; Swift does not contract them into an FMA (no
// vfmadd in an x86-64-v3 build of this file, checked with objdump). The
// vector width does not matter: every element sees the same operations in either form.
//
// Block size: 64 by default. The scale costs 4/B bytes per element: 6.25% at 64 (1.0625 bytes per
// element, 3.76× smaller than float32), 3.1% at 128; but the error of every element of a block is set
// by the block's largest value, and gradients have outliers: a block of 64 confines an outlier's damage
// to half as many neighbours for 3% more bytes. 64 floats are also exactly 4 vectors of 16 lanes (one
// AVX-512 register or two AVX2 ones each, as in SIMDLoops.swift): no partial vector inside a block. Any
// block size ≥ 1 works (a scalar tail handles the rest).
//
// Residuals for error feedback. `encode(_:into:residual:blockSize:)` also writes `x − decode(encode(x))`,
// computed with the very operations of `decode`, so `decode + residual` gives back x up to one rounding of
// the sum. Error feedback adds the residual of one step to the gradient of the next before encoding.

/// Blockwise int8 quantization: one float32 scale and B int8 values per block of B floats.
public enum QuantizeKernels {
    /// The default number of elements per block: see the file comment.
    public static let defaultBlockSize = 64

    /// Blocks whose largest magnitude is below this encode as zero blocks (2^-119: the scale
    /// absmax/127 stays normal and the reciprocal 127/absmax finite).
    public static let smallestScaledMagnitude = Float(sign: .plus, exponent: -119, significand: 1)

    /// Bytes of the scale that starts each block.
    public static let scaleBytes = 4

    /// The number of blocks of `count` elements: ⌈count / blockSize⌉.
    /// - Parameters:
    ///   - count: elements, at least 0.
    ///   - blockSize: elements per block, at least 1.
    @inlinable
    public static func blockCount(count: Int, blockSize: Int = defaultBlockSize) -> Int {
        precondition(count >= 0 && blockSize >= 1, "count \(count) and block size \(blockSize) must be >= 0 and >= 1")
        return (count + blockSize - 1) / blockSize
    }

    /// Bytes of the encoding of `count` elements: `count + 4 · blockCount(count:blockSize:)`.
    /// - Parameters:
    ///   - count: elements, at least 0.
    ///   - blockSize: elements per block, at least 1.
    @inlinable
    public static func encodedByteCount(count: Int, blockSize: Int = defaultBlockSize) -> Int {
        count + scaleBytes * blockCount(count: count, blockSize: blockSize)
    }

    /// Encodes `source` into `destination` (see the file comment for the format).
    /// - Parameters:
    ///   - source: the floats.
    ///   - destination: at least `encodedByteCount(count: source.count, blockSize:)` bytes, not
    ///     overlapping `source`; only that many are written.
    ///   - blockSize: elements per block, at least 1.
    public static func encode(
        _ source: UnsafeBufferPointer<Float>, into destination: UnsafeMutableRawBufferPointer,
        blockSize: Int = defaultBlockSize
    ) {
        encode(source, destination, residual: nil, blockSize: blockSize)
    }

    /// Encodes `source` into `destination` and writes `x − decode(encode(x))` into `residual`, for error
    /// feedback.
    ///
    /// The residual is computed with the operations of `decode` (`x − Float(q) * s`), so it is exactly
    /// what decoding loses, up to the rounding of that difference. Zero blocks leave x as the residual;
    /// blocks with an infinity or NaN give NaN.
    /// - Parameters:
    ///   - source: the floats.
    ///   - destination: at least `encodedByteCount(count: source.count, blockSize:)` bytes, not
    ///     overlapping `source` or `residual`.
    ///   - residual: `source.count` floats; may be `source` itself (the residual then replaces the input,
    ///     which is read before it is written), but must not partly overlap it.
    ///   - blockSize: elements per block, at least 1.
    public static func encode(
        _ source: UnsafeBufferPointer<Float>, into destination: UnsafeMutableRawBufferPointer,
        residual: UnsafeMutableBufferPointer<Float>, blockSize: Int = defaultBlockSize
    ) {
        precondition(residual.count == source.count, "residual holds \(residual.count) floats, not \(source.count)")
        encode(source, destination, residual: residual.baseAddress, blockSize: blockSize)
    }

    /// Decodes `destination.count` floats from `source`: `destination[i] = Float(q) * s`.
    ///
    /// Any bytes decode to some floats (a corrupt scale gives corrupt values, never a trap).
    /// - Parameters:
    ///   - source: at least `encodedByteCount(count: destination.count, blockSize:)` bytes.
    ///   - destination: the floats to write, not overlapping `source`.
    ///   - blockSize: elements per block, the one the bytes were encoded with.
    public static func decode(
        from source: UnsafeRawBufferPointer, into destination: UnsafeMutableBufferPointer<Float>,
        blockSize: Int = defaultBlockSize
    ) {
        decode(source, destination, add: false, blockSize: blockSize)
    }

    /// Decodes `destination.count` floats from `source` and adds them: `destination[i] += Float(q) * s`
    /// (the product rounded, then the sum: no FMA).
    /// - Parameters:
    ///   - source: at least `encodedByteCount(count: destination.count, blockSize:)` bytes.
    ///   - destination: the floats to add to, not overlapping `source`.
    ///   - blockSize: elements per block, the one the bytes were encoded with.
    public static func decodeAdd(
        from source: UnsafeRawBufferPointer, into destination: UnsafeMutableBufferPointer<Float>,
        blockSize: Int = defaultBlockSize
    ) {
        decode(source, destination, add: true, blockSize: blockSize)
    }

    /// The scale of block `block` of an encoding (what bounds its elements' error, see the file comment).
    /// - Parameters:
    ///   - block: the block's index, in `0..<blockCount(count:blockSize:)`.
    ///   - encoded: the encoding.
    ///   - blockSize: elements per block, the one the bytes were encoded with.
    public static func scale(ofBlock block: Int, in encoded: UnsafeRawBufferPointer, blockSize: Int = defaultBlockSize)
        -> Float
    {
        let offset = block * (blockSize + scaleBytes)
        precondition(block >= 0 && offset + scaleBytes <= encoded.count, "block \(block) is not in the encoding")
        return Float(bitPattern: UInt32(littleEndian: encoded.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
    }

    // MARK: - The loops

    private static func encode(
        _ source: UnsafeBufferPointer<Float>, _ destination: UnsafeMutableRawBufferPointer,
        residual: UnsafeMutablePointer<Float>?, blockSize: Int
    ) {
        let count = source.count
        let bytes = encodedByteCount(count: count, blockSize: blockSize)
        precondition(destination.count >= bytes, "destination holds \(destination.count) bytes, not \(bytes)")
        guard count > 0 else { return }
        let x = UnsafeRawPointer(source.baseAddress!)
        let out = destination.baseAddress!
        var start = 0
        var offset = 0
        while start < count {
            let m = min(blockSize, count &- start)
            let block = x + start &* 4
            let absmaxBits = largestMagnitude(block, m)
            let absmax = Float(bitPattern: UInt32(absmaxBits))
            var scale = absmax / 127
            if !(scale * 127).isFinite { scale = scale.nextDown }  // absmax near Float.greatestFiniteMagnitude
            quantizeBlock(
                block, m, out + offset, residual.map { UnsafeMutableRawPointer($0 + start) }, absmaxBits: absmaxBits,
                scale: scale, inverse: 127 / absmax)
            start &+= m
            offset &+= m &+ scaleBytes
        }
    }

    private static func decode(
        _ source: UnsafeRawBufferPointer, _ destination: UnsafeMutableBufferPointer<Float>, add: Bool, blockSize: Int
    ) {
        let count = destination.count
        let bytes = encodedByteCount(count: count, blockSize: blockSize)
        precondition(source.count >= bytes, "source holds \(source.count) bytes, not the \(bytes) of \(count) floats")
        guard count > 0 else { return }
        let input = source.baseAddress!
        let y = UnsafeMutableRawPointer(destination.baseAddress!)
        var start = 0
        var offset = 0
        while start < count {
            let m = min(blockSize, count &- start)
            if add {
                decodeBlock(input + offset, m, y + start &* 4, adding: true)
            } else {
                decodeBlock(input + offset, m, y + start &* 4, adding: false)
            }
            start &+= m
            offset &+= m &+ scaleBytes
        }
    }

    /// Round to nearest, ties to even, of |t| < 2^22: adding 1.5·2^23 leaves a sum whose ulp is 1, so the
    /// addition itself rounds; the integer is then the low bits of the sum's pattern.
    private static let roundingBias: Float = 12_582_912  // 1.5 · 2^23
    private static let roundingBiasBits: Int32 = 0x4B40_0000

    /// The largest magnitude of the `m` floats at `x`, as bits: for non-negative floats the patterns order
    /// like the values, with infinity above every finite value and NaNs above infinity.
    @inline(__always)
    private static func largestMagnitude(_ x: UnsafeRawPointer, _ m: Int) -> Int32 {
        typealias I = SIMD16<Int32>
        let magnitude = I(repeating: 0x7FFF_FFFF)
        var top = I(repeating: 0)
        var i = 0
        while i &+ 16 <= m {
            let v = x.loadUnaligned(fromByteOffset: i &* 4, as: I.self) & magnitude
            top = top.replacing(with: v, where: v .> top)
            i &+= 16
        }
        var absmaxBits = largestLane(top)
        while i < m {
            absmaxBits = max(absmaxBits, x.loadUnaligned(fromByteOffset: i &* 4, as: Int32.self) & 0x7FFF_FFFF)
            i &+= 1
        }
        return absmaxBits
    }

    /// Encodes one block of `m` floats at `x` to `out` (scale, then m bytes), given its largest magnitude
    /// and `absmax / 127`, `127 / absmax` (infinite or NaN for the special blocks, which do not use them);
    /// writes the residual when asked.
    @inline(__always)
    private static func quantizeBlock(
        _ x: UnsafeRawPointer, _ m: Int, _ out: UnsafeMutableRawPointer, _ residual: UnsafeMutableRawPointer?,
        absmaxBits: Int32, scale s: Float, inverse: Float
    ) {
        typealias I = SIMD16<Int32>
        typealias F = SIMD16<Float>
        let q = out + scaleBytes
        let absmax = Float(bitPattern: UInt32(absmaxBits))
        guard absmaxBits < 0x7F80_0000 && absmax >= smallestScaledMagnitude else {
            // A zero block (scale 0) or a non-finite one (scale NaN); every q is 0.
            let zero: Float = absmaxBits >= 0x7F80_0000 ? .nan : 0
            out.storeBytes(of: zero.bitPattern.littleEndian, as: UInt32.self)
            q.initializeMemory(as: UInt8.self, repeating: 0, count: m)
            if let residual {
                for j in 0..<m {
                    let xj = x.loadUnaligned(fromByteOffset: j &* 4, as: Float.self)
                    residual.storeBytes(of: xj - 0 * zero, toByteOffset: j &* 4, as: Float.self)
                }
            }
            return
        }
        out.storeBytes(of: s.bitPattern.littleEndian, as: UInt32.self)

        // No clamp is needed: |x| <= absmax, so |x * inverse| <= 127·(1 + 2^-24)^2 < 127.5 rounds to 127 at
        // most (the scalar reference of the tests clamps, and agrees).
        let inverses = F(repeating: inverse)
        let scales = F(repeating: s)
        let bias = F(repeating: roundingBias)
        let biasBits = I(repeating: roundingBiasBits)
        var i = 0
        while i &+ 16 <= m {
            let v = x.loadUnaligned(fromByteOffset: i &* 4, as: F.self)
            let integers = unsafeBitCast(v * inverses + bias, to: I.self) &- biasBits
            var bytes = SIMD16<Int8>()
            for l in 0..<16 { bytes[l] = Int8(truncatingIfNeeded: integers[l]) }
            q.storeBytes(of: bytes, toByteOffset: i, as: SIMD16<Int8>.self)
            if let residual {
                var decoded = F()
                for l in 0..<16 { decoded[l] = Float(integers[l]) }
                residual.storeBytes(of: v - decoded * scales, toByteOffset: i &* 4, as: F.self)
            }
            i &+= 16
        }
        while i < m {
            let v = x.loadUnaligned(fromByteOffset: i &* 4, as: Float.self)
            let integer = Int32(bitPattern: (v * inverse + roundingBias).bitPattern) &- roundingBiasBits
            q.storeBytes(of: Int8(truncatingIfNeeded: integer), toByteOffset: i, as: Int8.self)
            if let residual {
                residual.storeBytes(of: v - Float(integer) * s, toByteOffset: i &* 4, as: Float.self)
            }
            i &+= 1
        }
    }

    /// The largest lane, by halving the vector (`SIMD.max()` compiles to a chain of 16 extracts and
    /// compares).
    @inline(__always)
    private static func largestLane(_ v: SIMD16<Int32>) -> Int32 {
        let a = v.lowHalf.replacing(with: v.highHalf, where: v.highHalf .> v.lowHalf)
        let b = a.lowHalf.replacing(with: a.highHalf, where: a.highHalf .> a.lowHalf)
        let c = b.lowHalf.replacing(with: b.highHalf, where: b.highHalf .> b.lowHalf)
        return max(c[0], c[1])
    }

    /// Decodes one block of `m` floats from `input` into `y`, storing or adding.
    @inline(__always)
    private static func decodeBlock(_ input: UnsafeRawPointer, _ m: Int, _ y: UnsafeMutableRawPointer, adding: Bool) {
        typealias F = SIMD16<Float>
        let s = Float(bitPattern: UInt32(littleEndian: input.loadUnaligned(as: UInt32.self)))
        let q = input + scaleBytes
        let scales = F(repeating: s)
        var i = 0
        while i &+ 16 <= m {
            let bytes = q.loadUnaligned(fromByteOffset: i, as: SIMD16<Int8>.self)
            var values = F()
            for l in 0..<16 { values[l] = Float(bytes[l]) }
            values = values * scales
            if adding { values = y.loadUnaligned(fromByteOffset: i &* 4, as: F.self) + values }
            y.storeBytes(of: values, toByteOffset: i &* 4, as: F.self)
            i &+= 16
        }
        while i < m {
            var value = Float(q.load(fromByteOffset: i, as: Int8.self)) * s
            if adding { value = y.loadUnaligned(fromByteOffset: i &* 4, as: Float.self) + value }
            y.storeBytes(of: value, toByteOffset: i &* 4, as: Float.self)
            i &+= 1
        }
    }
}

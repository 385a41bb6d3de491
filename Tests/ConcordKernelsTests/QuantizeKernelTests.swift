// Blockwise int8 quantization: the bytes against a scalar reference written from the format's definition
// (every count around the block and vector boundaries, several block sizes, unaligned buffers), the error
// bound, zero / non-finite / all-equal / negative blocks, residuals, decodeAdd, and re-encoding.
//
// The bound asserted, per element of an ordinary block with scale s = absmax/127:
//     |x − decode(encode(x))| ≤ s · (1/2 + 2^-15)
// (s/2 from rounding to an integer, the rest from the float32 roundings of the scale arithmetic; see
// QuantizeKernels.swift; s·(1/2 + 2^-14) where the scale was lowered by an ulp to keep 127·s finite, within
// an ulp or so of Float.greatestFiniteMagnitude). Zero blocks (absmax < 2^-119) decode to +0.
import ConcordKernels
import ConcordTestSupport
import Testing

/// The encoding of `x` written out element by element from the format's definition (QuantizeKernels.swift):
/// an independent reference for the vector loops.
func referenceEncoding(_ x: [Float], blockSize b: Int) -> [UInt8] {
    var out = [UInt8]()
    var start = 0
    while start < x.count {
        let block = x[start..<min(start + b, x.count)]
        let absmaxBits = block.map { $0.bitPattern & 0x7FFF_FFFF }.max()!
        let absmax = Float(bitPattern: absmaxBits)
        let s: Float
        var q = [Int8](repeating: 0, count: block.count)
        if absmaxBits >= 0x7F80_0000 {
            s = .nan
        } else if absmax < QuantizeKernels.smallestScaledMagnitude {
            s = 0
        } else {
            s = (absmax / 127 * 127).isFinite ? absmax / 127 : (absmax / 127).nextDown
            let inverse = 127 / absmax
            q = block.map { Int8(min(max($0 * inverse, -127), 127).rounded(.toNearestOrEven)) }
        }
        withUnsafeBytes(of: s.bitPattern.littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: q.map { UInt8(bitPattern: $0) })
        start += b
    }
    return out
}

/// Encodes `x`, starting the floats `floatOffset` elements and the bytes `byteOffset` bytes into their
/// buffers (to test any alignment); returns the bytes.
func encoded(_ x: [Float], blockSize b: Int, floatOffset: Int = 0, byteOffset: Int = 0) -> [UInt8] {
    let source = [Float](repeating: 7, count: floatOffset) + x
    var bytes = [UInt8](
        repeating: 0xEE, count: byteOffset + QuantizeKernels.encodedByteCount(count: x.count, blockSize: b) + 8)
    source.withUnsafeBufferPointer { s in
        bytes.withUnsafeMutableBytes { d in
            QuantizeKernels.encode(
                UnsafeBufferPointer(rebasing: s[floatOffset...]),
                into: UnsafeMutableRawBufferPointer(rebasing: d[byteOffset...]),
                blockSize: b)
        }
    }
    #expect(bytes.suffix(8).allSatisfy { $0 == 0xEE }, "encode wrote past its \(x.count) elements")
    return Array(bytes[byteOffset..<(bytes.count - 8)])
}

func decoded(_ bytes: [UInt8], count: Int, blockSize b: Int, adding base: [Float]? = nil) -> [Float] {
    var y = (base ?? [Float](repeating: .nan, count: count)) + [Float](repeating: 3, count: 4)
    bytes.withUnsafeBytes { e in
        y.withUnsafeMutableBufferPointer { d in
            let out = UnsafeMutableBufferPointer(rebasing: d[0..<count])
            if base == nil {
                QuantizeKernels.decode(from: e, into: out, blockSize: b)
            } else {
                QuantizeKernels.decodeAdd(from: e, into: out, blockSize: b)
            }
        }
    }
    #expect(y.suffix(4) == [3, 3, 3, 3], "decode wrote past its \(count) elements")
    return Array(y.prefix(count))
}

/// Finite values of both signs whose magnitudes vary by block (2^-30 … 2^30), so scales differ widely.
func quantizeSample(_ count: Int, seed: UInt64, blockSize b: Int) -> [Float] {
    var random = SplitMix64(seed: seed)
    var exponent = 0
    return (0..<count).map { i in
        if i % b == 0 { exponent = random.below(61) - 30 }
        let magnitude =
            Float(random.below(1 << 24)) / Float(1 << 24) * Float(sign: .plus, exponent: exponent, significand: 1)
        return random.below(2) == 0 ? magnitude : -magnitude
    }
}

@Suite("Quantize kernels (blockwise int8)")
struct QuantizeKernelTests {
    static let blockSizes = [64, 128, 16, 7, 1]

    static func counts(_ b: Int) -> [Int] { Array(Set([0, 1, 15, 16, 17, b - 1, b, b + 1, 2 * b + 3, 1000])).sorted() }

    @Test("sizes: count + 4 per started block")
    func sizes() {
        #expect(QuantizeKernels.defaultBlockSize == 64)
        #expect(QuantizeKernels.encodedByteCount(count: 0) == 0)
        #expect(QuantizeKernels.encodedByteCount(count: 1) == 5)
        #expect(QuantizeKernels.encodedByteCount(count: 64) == 68)
        #expect(QuantizeKernels.encodedByteCount(count: 65) == 73)
        #expect(QuantizeKernels.encodedByteCount(count: 1000, blockSize: 128) == 1000 + 4 * 8)
        #expect(QuantizeKernels.encodedByteCount(count: 10, blockSize: 1) == 50)
    }

    @Test("the bytes are the scalar reference's, at every count and alignment", arguments: blockSizes)
    func matchesReference(blockSize b: Int) {
        for count in Self.counts(b) {
            let x = quantizeSample(count, seed: UInt64(count * 131 + b), blockSize: b)
            let expected = referenceEncoding(x, blockSize: b)
            for (floatOffset, byteOffset) in [(0, 0), (1, 3), (3, 1)] {
                let got = encoded(x, blockSize: b, floatOffset: floatOffset, byteOffset: byteOffset)
                #expect(got == expected, "block \(b) count \(count) offsets \(floatOffset), \(byteOffset)")
            }
        }
    }

    @Test("error ≤ s·(1/2 + 2^-15) per element, s = the block's absmax/127", arguments: blockSizes)
    func errorBound(blockSize b: Int) {
        for count in Self.counts(b) {
            let x = quantizeSample(count, seed: UInt64(count + 7 * b), blockSize: b)
            let bytes = encoded(x, blockSize: b)
            #expect(bytes.count == QuantizeKernels.encodedByteCount(count: count, blockSize: b))
            let y = decoded(bytes, count: count, blockSize: b)
            var worst = 0.0
            for i in 0..<count {
                let block = i / b
                let s = bytes.withUnsafeBytes { QuantizeKernels.scale(ofBlock: block, in: $0, blockSize: b) }
                let absmax = x[(block * b)..<min(count, block * b + b)].map(\.magnitude).max()!
                #expect(s == absmax / 127)
                let error = abs(Double(x[i]) - Double(y[i]))
                worst = max(worst, error / Double(s))
                if error > Double(s) * (0.5 + 0x1p-15) {
                    Issue.record("block \(b) count \(count) element \(i): \(x[i]) → \(y[i]), scale \(s)")
                    return
                }
            }
            #expect(worst <= 0.5 + 0x1p-15)
        }
    }

    @Test("zero blocks: all zeros, negative zeros, or |x| below 2^-119 encode as scale 0 and decode to +0")
    func zeroBlocks() {
        let tiny = QuantizeKernels.smallestScaledMagnitude
        for x in [
            [Float](repeating: 0, count: 64), [Float](repeating: -0.0, count: 70),
            [tiny.nextDown, -tiny.nextDown, 0, 1e-40],
            [Float.leastNonzeroMagnitude],
        ] {
            let bytes = encoded(x, blockSize: 64)
            for block in 0..<QuantizeKernels.blockCount(count: x.count) {
                #expect(bytes.withUnsafeBytes { QuantizeKernels.scale(ofBlock: block, in: $0) }.bitPattern == 0)
            }
            #expect(bytes.allSatisfy { $0 == 0 })
            #expect(decoded(bytes, count: x.count, blockSize: 64).allSatisfy { $0.bitPattern == 0 })
        }
        // A zero block next to ordinary ones does not disturb them.
        let mixed = [Float](repeating: 0, count: 64) + (1...64).map { Float($0) }
        let y = decoded(encoded(mixed, blockSize: 64), count: 128, blockSize: 64)
        #expect(y.prefix(64).allSatisfy { $0 == 0 })
        #expect(zip(y.suffix(64), mixed.suffix(64)).allSatisfy { abs($0 - $1) <= 64 / 127 * 0.5001 })
        // The smallest magnitude that gets a scale does.
        let bytes = encoded([tiny, -tiny / 2], blockSize: 64)
        #expect(bytes.withUnsafeBytes { QuantizeKernels.scale(ofBlock: 0, in: $0) } == tiny / 127)
        #expect(decoded(bytes, count: 2, blockSize: 64) == [127 * (tiny / 127), -64 * (tiny / 127)])
    }

    @Test("a block with an infinity or NaN decodes to NaN throughout; the other blocks are unaffected")
    func nonFinite() {
        for special in [Float.infinity, -.infinity, .nan, -.nan] {
            var x = (0..<130).map { Float($0) - 60 }
            x[70] = special
            let bytes = encoded(x, blockSize: 64)
            #expect(bytes == referenceEncoding(x, blockSize: 64))
            #expect(bytes.withUnsafeBytes { QuantizeKernels.scale(ofBlock: 1, in: $0) }.isNaN)
            let y = decoded(bytes, count: x.count, blockSize: 64)
            #expect(y[64..<128].allSatisfy { $0.isNaN })
            #expect(y[0..<64].allSatisfy(\.isFinite) && y[128...].allSatisfy(\.isFinite))
        }
    }

    @Test("all-equal blocks encode as ±127 and decode within the bound")
    func allEqual() {
        for c: Float in [
            1, -1, 0.1, -3.7e-20, 6.5e30, Float.greatestFiniteMagnitude, -Float.leastNormalMagnitude * 1e10,
        ] {
            for count in [1, 63, 64, 65, 200] {
                let x = [Float](repeating: c, count: count)
                let bytes = encoded(x, blockSize: 64)
                let s = bytes.withUnsafeBytes { QuantizeKernels.scale(ofBlock: 0, in: $0) }
                #expect(
                    s == c.magnitude / 127 || (s == (c.magnitude / 127).nextDown && !(c.magnitude / 127 * 127).isFinite)
                )
                let q = bytes.enumerated().filter { $0.offset % 68 >= 4 }.map { Int8(bitPattern: $0.element) }
                #expect(q.allSatisfy { $0 == (c > 0 ? 127 : -127) }, "\(c)")
                let y = decoded(bytes, count: count, blockSize: 64)
                #expect(y.allSatisfy { abs(Double($0) - Double(c)) <= Double(s) * (0.5 + 0x1p-14) }, "\(c): \(y[0])")
                #expect(y.allSatisfy { $0.isFinite }, "\(c) overflowed: \(y[0])")
                #expect(Set(y.map(\.bitPattern)).count == 1)
            }
        }
    }

    @Test("negating the input negates every q and keeps the scales")
    func negativeValues() {
        let x = quantizeSample(1000, seed: 99, blockSize: 64).map(\.magnitude)
        let positive = encoded(x, blockSize: 64)
        let negative = encoded(x.map { -$0 }, blockSize: 64)
        for (i, (p, n)) in zip(positive, negative).enumerated() {
            if i % 68 < 4 {
                #expect(p == n)  // the scale's bytes
            } else {
                #expect(Int8(bitPattern: n) == -Int8(bitPattern: p))
                #expect(Int8(bitPattern: p) >= 0)
            }
        }
        #expect(
            zip(decoded(positive, count: 1000, blockSize: 64), decoded(negative, count: 1000, blockSize: 64))
                .allSatisfy { $0 == -$1 })
    }

    @Test("decodeAdd adds exactly what decode produces (product, then sum)", arguments: blockSizes)
    func decodeAdd(blockSize b: Int) {
        for count in Self.counts(b) {
            let x = quantizeSample(count, seed: UInt64(count + 3), blockSize: b)
            let base = quantizeSample(count, seed: UInt64(count + 4), blockSize: b)
            let bytes = encoded(x, blockSize: b)
            let y = decoded(bytes, count: count, blockSize: b)
            let sum = decoded(bytes, count: count, blockSize: b, adding: base)
            #expect(sum.indices.allSatisfy { sum[$0].bitPattern == (base[$0] + y[$0]).bitPattern })
        }
    }

    @Test("the residual is x − decode(encode(x)), also written over the input", arguments: blockSizes)
    func residual(blockSize b: Int) {
        for count in Self.counts(b) {
            var x = quantizeSample(count, seed: UInt64(count + 11), blockSize: b)
            if count > 5 {
                x[count / 2] = .infinity  // a NaN block
                for i in 0..<min(b, count / 3) { x[i] = 1e-38 }  // a zero block (when b ≤ count/3)
            }
            let bytes = encoded(x, blockSize: b)
            let y = decoded(bytes, count: count, blockSize: b)
            let expected = zip(x, y).map { $0 - $1 }
            var bytes2 = [UInt8](repeating: 0, count: bytes.count)
            var residual = [Float](repeating: 0, count: count)
            var inPlace = x
            x.withUnsafeBufferPointer { s in
                bytes2.withUnsafeMutableBytes { d in
                    residual.withUnsafeMutableBufferPointer {
                        QuantizeKernels.encode(s, into: d, residual: $0, blockSize: b)
                    }
                }
            }
            #expect(bytes2 == bytes)
            bytes2 = [UInt8](repeating: 0, count: bytes.count)
            inPlace.withUnsafeMutableBufferPointer { r in
                bytes2.withUnsafeMutableBytes { d in
                    QuantizeKernels.encode(UnsafeBufferPointer(r), into: d, residual: r, blockSize: b)
                }
            }
            #expect(bytes2 == bytes)
            for got in [residual, inPlace] {
                let wrong = got.indices.filter {
                    !(got[$0].bitPattern == expected[$0].bitPattern || (got[$0].isNaN && expected[$0].isNaN))
                }
                #expect(wrong.isEmpty, "block \(b) count \(count): first wrong residual at \(wrong.first ?? -1)")
            }
        }
    }

    @Test("re-encoding a decoded buffer gives the same int8 values; scales move by at most one ulp")
    func reencode() {
        for b in Self.blockSizes {
            let x = quantizeSample(1000, seed: 5, blockSize: b)
            let first = encoded(x, blockSize: b)
            let second = encoded(decoded(first, count: 1000, blockSize: b), blockSize: b)
            for block in 0..<QuantizeKernels.blockCount(count: 1000, blockSize: b) {
                let base = block * (b + 4)
                let end = min(first.count, base + 4 + b)
                #expect(first[(base + 4)..<end] == second[(base + 4)..<end], "block size \(b), block \(block)")
                let s1 = first.withUnsafeBytes { QuantizeKernels.scale(ofBlock: block, in: $0, blockSize: b) }
                let s2 = second.withUnsafeBytes { QuantizeKernels.scale(ofBlock: block, in: $0, blockSize: b) }
                #expect(abs(s1 - s2) <= s1.ulp, "block size \(b), block \(block): \(s1) then \(s2)")
            }
        }
    }

    @Test("the same input gives the same bytes everywhere: a pinned checksum")
    func pinnedBytes() {
        let x = quantizeSample(4099, seed: 2024, blockSize: 64)
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a
        for byte in encoded(x, blockSize: 64) { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
        #expect(hash == Self.pinnedHash, "got \(String(hash, radix: 16))")
    }

    static let pinnedHash: UInt64 = 0xD62A_9C1B_5314_ED1E
}

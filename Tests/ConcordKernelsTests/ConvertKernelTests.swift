// The bulk conversions float32 ⇄ float16 and float32 ⇄ bfloat16: exhaustive over all 65536 half patterns
// where that is possible, rounding (ties to even, overflow, subnormals, NaN) against scalar references,
// unaligned buffers, every loop boundary, and narrowing in place.
import ConcordCore
import ConcordKernels
import ConcordTestSupport
import Testing

/// The nearest value with `bits` significant bits and exponents down to `minExponent` (subnormals below),
/// ties to even: an independent reference for rounding float32 to float16 (11, −14) and bfloat16 (8, −126).
/// Overflow is left to the caller; NaN is not handled.
func roundToPrecision(_ x: Float, bits: Int, minExponent: Int) -> Double {
    let value = Double(x)
    if value == 0 || !value.isFinite { return value }
    let exponent = max(Int(value.exponent), minExponent)
    let quantum = Double(sign: .plus, exponent: exponent - (bits - 1), significand: 1)
    return (value / quantum).rounded(.toNearestOrEven) * quantum
}

@Suite("Convert kernels")
struct ConvertKernelTests {
    @Test("float16 → float32 is exact for all 65536 patterns")
    func widenFloat16Exhaustive() {
        let halves = (0...UInt16.max).map { Float16(bitPattern: $0) }
        var floats = [Float](repeating: 0, count: halves.count)
        halves.withUnsafeBufferPointer { h in
            floats.withUnsafeMutableBufferPointer { f in
                ConvertKernels.convert(h.baseAddress!, to: f.baseAddress!, count: h.count)
            }
        }
        let wrong = halves.indices.filter { !floats[$0].matches(Float(halves[$0])) }
        #expect(wrong.isEmpty, "first wrong pattern: \(wrong.first.map { String($0, radix: 16) } ?? "-")")
    }

    @Test("bfloat16 → float32 is exact for all 65536 patterns")
    func widenBFloat16Exhaustive() {
        let values = (0...UInt16.max).map { BFloat16(bitPattern: $0) }
        var floats = [Float](repeating: 0, count: values.count)
        values.withUnsafeBufferPointer { h in
            floats.withUnsafeMutableBufferPointer { f in
                ConvertKernels.convert(h.baseAddress!, to: f.baseAddress!, count: h.count)
            }
        }
        #expect(values.indices.allSatisfy { floats[$0].bitPattern == UInt32($0) << 16 })
    }

    @Test("every float16 survives float16 → float32 → float16 (NaN stays NaN)")
    func roundTripFloat16() {
        let halves = (0...UInt16.max).map { Float16(bitPattern: $0) }
        var floats = [Float](repeating: 0, count: halves.count)
        var back = [Float16](repeating: 0, count: halves.count)
        halves.withUnsafeBufferPointer { h in
            floats.withUnsafeMutableBufferPointer { f in
                ConvertKernels.convert(h.baseAddress!, to: f.baseAddress!, count: h.count)
                back.withUnsafeMutableBufferPointer { b in
                    ConvertKernels.convert(UnsafePointer(f.baseAddress!), to: b.baseAddress!, count: h.count)
                }
            }
        }
        #expect(halves.indices.allSatisfy { back[$0].matches(halves[$0]) })
    }

    @Test("every bfloat16 survives bfloat16 → float32 → bfloat16 on every path (a NaN comes back quiet)")
    func roundTripBFloat16() {
        for path in availablePaths {
            let values = (0...UInt16.max).map { BFloat16(bitPattern: $0) }
            var floats = [Float](repeating: 0, count: values.count)
            var back = [UInt16](repeating: 0, count: values.count)
            values.withUnsafeBufferPointer { v in
                floats.withUnsafeMutableBufferPointer { f in
                    ConvertKernels.convert(v.baseAddress!, to: f.baseAddress!, count: v.count)
                    back.withUnsafeMutableBytes { b in
                        ConvertKernels.float32ToBFloat16(f.baseAddress!, b.baseAddress!, count: v.count, path: path)
                    }
                }
            }
            let wrong = values.indices.filter { i in
                let bits = UInt16(i)
                let isNaN = bits & 0x7F80 == 0x7F80 && bits & 0x7F != 0
                return back[i] != (isNaN ? bits | 0x40 : bits)
            }
            #expect(wrong.isEmpty, "[\(path)] first wrong pattern: \(wrong.first.map { String($0, radix: 16) } ?? "-")")
        }
    }

    @Test("float32 → float16 rounds to nearest even: ties, overflow, subnormals, NaN")
    func narrowFloat16Rounding() {
        let ulp1: Float = 0x1p-10  // spacing of float16 at 1
        let edge: [Float] = [
            1 + ulp1 / 2,  // tie: to even, 1
            1 + 3 * ulp1 / 2,  // tie: to even, 1 + 2 ulp
            1 + ulp1 / 2 + 0x1p-20,  // just above a tie: up
            65504, 65519.99, 65520, 1e6, -1e6,  // largest finite, last rounding down, first to infinity
            0x1p-24, 0x1p-25, 0x1.8p-25, 0x1p-26, 0x1.8p-24, 0x1.4p-24,  // subnormal results, ties to even
            0x1p-14, 0x1.ffcp-15, 0x1.ffep-15,  // around the smallest normal
            .infinity, -.infinity, .nan, -.nan, Float(bitPattern: 0x7F80_0001), 0, -0.0, .leastNonzeroMagnitude,
        ]
        var random = SplitMix64(seed: 42)
        let values = edge + (0..<100_000).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: random.next())) }
        let got = narrow(values, to: Float16.self) { ConvertKernels.float32ToFloat16($0, $1, count: $2) }
        for (x, h) in zip(values, got) {
            let swift = Float16(x)
            #expect(h.matches(swift), "\(x) → \(h), Float16(_:) gives \(swift)")
            if !x.isNaN && abs(x) < 65520 {
                #expect(Double(h) == roundToPrecision(x, bits: 11, minExponent: -14), "\(x) → \(h)")
            } else if !x.isNaN {
                #expect(h.isInfinite && (h < 0) == (x < 0), "\(x) → \(h)")
            }
        }
        #expect(got[0] == 1 && got[1] == 1 + 2 * Float16(ulp1) && got[2] == 1 + Float16(ulp1))
    }

    @Test("float32 → bfloat16 rounds to nearest even and keeps NaN a NaN, on every path")
    func narrowBFloat16Rounding() {
        let edge: [Float] = [
            Float(bitPattern: 0x3F80_8000),  // tie: to even, 0x3F80
            Float(bitPattern: 0x3F81_8000),  // tie: to even, 0x3F82
            Float(bitPattern: 0x3F80_8001),  // just above: up
            Float(bitPattern: 0x7F7F_FFFF),  // rounds to infinity
            Float(bitPattern: 0x7F7F_7FFF),  // stays the largest finite
            Float(bitPattern: 0x0000_8000),  // subnormal, tie: to even, 0
            Float(bitPattern: 0x0001_8000),  // subnormal, tie: to even, 0x0002
            Float(bitPattern: 0x807F_FFFF),  // subnormal rounding up to minus the smallest normal
            Float(bitPattern: 0x007F_8000),  // subnormal rounding up to the smallest normal
            Float(bitPattern: 0x7FFF_FFFF),  // NaN whose rounding would carry into the sign
            Float(bitPattern: 0x7F80_0001),  // signalling NaN, payload only in the low half
            .infinity, -.infinity, 0, -0.0, .leastNonzeroMagnitude, -.leastNormalMagnitude,
        ]
        var random = SplitMix64(seed: 43)
        let values = edge + (0..<100_000).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: random.next())) }
        for path in availablePaths {
            let got = narrow(values, to: UInt16.self) {
                ConvertKernels.float32ToBFloat16($0, $1, count: $2, path: path)
            }
            for (x, b) in zip(values, got) {
                #expect(
                    b == BFloat16(x).bitPattern,
                    "[\(path)] \(x) (\(String(x.bitPattern, radix: 16))) → \(String(b, radix: 16))")
                let value = BFloat16(bitPattern: b).floatValue
                if x.isNaN {
                    #expect(
                        value.isNaN && b & 0x40 != 0,
                        "[\(path)] NaN \(String(x.bitPattern, radix: 16)) → \(String(b, radix: 16))")
                } else if abs(Double(x)) < Double(Float(bitPattern: 0x7F7F_8000)) {
                    #expect(Double(value) == roundToPrecision(x, bits: 8, minExponent: -126), "[\(path)] \(x)")
                } else {
                    #expect(value.isInfinite && (value < 0) == (x < 0), "[\(path)] \(x) → \(value)")
                }
            }
            #expect(got[0] == 0x3F80 && got[1] == 0x3F82 && got[2] == 0x3F81 && got[3] == 0x7F80 && got[4] == 0x7F7F)
            #expect(got[5] == 0 && got[6] == 0x0002 && got[7] == 0x8080 && got[8] == 0x0080 && got[9] == 0x7FFF)
        }
    }

    @Test("conversions at unaligned offsets and every loop boundary write exactly their output")
    func lengthsAndOffsets() {
        for length in kernelLengths {
            let values = samples(Float.self, count: length, seed: UInt64(length))
            for offset in kernelOffsets {
                let source = OffsetBuffer(bytes: length * 4, offset: offset)
                let half = OffsetBuffer(bytes: length * 2, offset: (offset + 1) % 4)
                let wide = OffsetBuffer(bytes: length * 4, offset: (offset + 2) % 4)
                defer {
                    source.deallocate()
                    half.deallocate()
                    wide.deallocate()
                }
                source.write(values)
                ConvertKernels.convert(source.start, from: .float32, to: half.start, as: .float16, count: length)
                #expect(
                    half.read(Float16.self, count: length).elementsEqual(values.map { Float16($0) }) { $0.matches($1) })
                #expect(half.guardsIntact(length: length * 2))
                ConvertKernels.convert(half.start, from: .float16, to: wide.start, as: .float32, count: length)
                #expect(
                    wide.read(Float.self, count: length).elementsEqual(values.map { Float(Float16($0)) }) {
                        $0.matches($1)
                    })
                #expect(wide.guardsIntact(length: length * 4))
                for path in availablePaths {
                    ConvertKernels.float32ToBFloat16(source.start, half.start, count: length, path: path)
                    #expect(
                        half.read(UInt16.self, count: length) == values.map { BFloat16($0).bitPattern },
                        "[\(path)] \(length)")
                    #expect(half.guardsIntact(length: length * 2))
                }
                ConvertKernels.convert(half.start, from: .bfloat16, to: wide.start, as: .float32, count: length)
                #expect(
                    wide.read(Float.self, count: length).elementsEqual(values.map { BFloat16($0).floatValue }) {
                        $0.matches($1)
                    })
                #expect(wide.guardsIntact(length: length * 4))
            }
        }
    }

    @Test("narrowing may run in place (destination == source)")
    func narrowInPlace() {
        for length in [1, 16, 17, 100, 4099] {
            let values = samples(Float.self, count: length, seed: 9)
            for target in [DataType.float16, .bfloat16] {
                for path in target == .bfloat16 ? availablePaths : [.portable] {
                    let buffer = OffsetBuffer(bytes: length * 4, offset: 2)
                    defer { buffer.deallocate() }
                    buffer.write(values)
                    if target == .float16 {
                        ConvertKernels.float32ToFloat16(buffer.start, buffer.start, count: length)
                        #expect(
                            buffer.read(Float16.self, count: length).elementsEqual(values.map { Float16($0) }) {
                                $0.matches($1)
                            })
                    } else {
                        ConvertKernels.float32ToBFloat16(buffer.start, buffer.start, count: length, path: path)
                        #expect(
                            buffer.read(UInt16.self, count: length) == values.map { BFloat16($0).bitPattern },
                            "[\(path)]")
                    }
                }
            }
        }
    }

    @Test("convert between equal types copies; the typed forms match the raw ones")
    func copyAndTyped() {
        let values: [Float] = [1.5, -2.25, .pi]
        var out = [Float](repeating: 0, count: 3)
        values.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { d in
                ConvertKernels.convert(s.baseAddress!, from: .float32, to: d.baseAddress!, as: .float32, count: 3)
            }
        }
        #expect(out == values)
        var bf = [BFloat16](repeating: BFloat16(bitPattern: 0), count: 3)
        values.withUnsafeBufferPointer { s in
            bf.withUnsafeMutableBufferPointer { d in
                ConvertKernels.convert(s.baseAddress!, to: d.baseAddress!, count: 3)
            }
        }
        #expect(bf == values.map { BFloat16($0) })
    }

    /// Narrows `values` with `body(source, destination, count)` into an array of `T`.
    func narrow<T>(_ values: [Float], to _: T.Type, _ body: (UnsafeRawPointer, UnsafeMutableRawPointer, Int) -> Void)
        -> [T]
    {
        let out = UnsafeMutableRawPointer.allocate(byteCount: values.count * MemoryLayout<T>.stride, alignment: 64)
        defer { out.deallocate() }
        values.withUnsafeBytes { body($0.baseAddress!, out, values.count) }
        return (0..<values.count).map { out.load(fromByteOffset: $0 * MemoryLayout<T>.stride, as: T.self) }
    }
}

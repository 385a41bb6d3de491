// The loops every kernel is made of: whole SIMD vectors first, then a scalar tail.
//
// All of them work on raw memory at any byte alignment (`loadUnaligned` / `storeBytes`, for vectors and
// for the tail alike), never allocate, and read each vector of the inputs before they write the same
// vector of the output, so an output may be the very same memory as an input (`destination == source`).
// Partly overlapping buffers are not supported.
//
// They are generic and `@inlinable`; each kernel instantiates them with a concrete vector type and
// closures, and the optimizer turns each instance into a straight vector loop (check the disassembly for
// `vaddps`, `vcvtph2ps`, … when changing them). Vectors hold 64 bytes where the operation allows
// (SIMD16<Float>, SIMD8<Double>, SIMD64<Int8> for sums): one AVX-512 register or two AVX2 ones. Half
// types load 16 lanes (32 bytes) and compute on SIMD16<Float>; int8/uint8 min and max use 16 lanes.
import ConcordCore

/// The vector and scalar forms of a half-precision storage format (float16, bfloat16): widening to
/// float32 is exact; narrowing rounds to nearest, ties to even, and keeps NaN a NaN.
@usableFromInline
protocol HalfFormat {
    /// The storage scalar: `Float16`, or `UInt16` holding bfloat16 bits.
    associatedtype Bits: SIMDScalar
    static func widen(_ v: SIMD16<Bits>) -> SIMD16<Float>
    static func narrow(_ v: SIMD16<Float>) -> SIMD16<Bits>
    static func widen(_ x: Bits) -> Float
    static func narrow(_ x: Float) -> Bits
}

/// IEEE binary16 through Swift's `Float16` (F16C's `vcvtph2ps` / `vcvtps2ph` when the build targets it).
@usableFromInline
enum Float16Format: HalfFormat {
    @inlinable @inline(__always)
    static func widen(_ v: SIMD16<Float16>) -> SIMD16<Float> {
        var r = SIMD16<Float>()
        for i in 0..<16 { r[i] = Float(v[i]) }
        return r
    }

    @inlinable @inline(__always)
    static func narrow(_ v: SIMD16<Float>) -> SIMD16<Float16> {
        var r = SIMD16<Float16>()
        for i in 0..<16 { r[i] = Float16(v[i]) }
        return r
    }

    @inlinable @inline(__always)
    static func widen(_ x: Float16) -> Float { Float(x) }

    @inlinable @inline(__always)
    static func narrow(_ x: Float) -> Float16 { Float16(x) }
}

/// bfloat16 as the upper 16 bits of a float32, by integer arithmetic on the bits (exactly what
/// `BFloat16.init(_: Float)` does, one lane at a time). Constants are whole vectors, and lane-width
/// changes are explicit lane loops: the vector-scalar operators and `init(truncatingIfNeeded:)` are
/// generic functions that the optimizer may leave as calls.
@usableFromInline
enum BFloat16Format: HalfFormat {
    @usableFromInline typealias Lanes = SIMD16<UInt32>

    @inlinable @inline(__always)
    static func widen(_ v: SIMD16<UInt16>) -> SIMD16<Float> {
        var bits = Lanes()
        for i in 0..<16 { bits[i] = UInt32(v[i]) &<< 16 }
        return unsafeBitCast(bits, to: SIMD16<Float>.self)
    }

    /// Round to nearest even: add 0x7FFF plus the lowest kept bit, keep the top half. A NaN keeps its
    /// top half with the quiet bit set (rounding could carry a NaN's payload into infinity).
    @inlinable @inline(__always)
    static func narrow(_ v: SIMD16<Float>) -> SIMD16<UInt16> {
        let bits = unsafeBitCast(v, to: Lanes.self)
        let top = bits &>> Lanes(repeating: 16)
        let rounded = (bits &+ Lanes(repeating: 0x7FFF) &+ (top & Lanes(repeating: 1))) &>> Lanes(repeating: 16)
        let isNaN = v .!= v  // one unordered compare (an unsigned integer compare takes two on AVX2)
        let result = rounded.replacing(with: top | Lanes(repeating: 0x40), where: isNaN)
        var r = SIMD16<UInt16>()
        for i in 0..<16 { r[i] = UInt16(truncatingIfNeeded: result[i]) }
        return r
    }

    @inlinable @inline(__always)
    static func widen(_ x: UInt16) -> Float { Float(bitPattern: UInt32(x) &<< 16) }

    @inlinable @inline(__always)
    static func narrow(_ x: Float) -> UInt16 { BFloat16(x).bitPattern }
}

/// The loops. Counts are in elements; pointers may have any alignment.
///
/// Each is written out: whole vectors, then single elements. (Factoring the iteration into a helper
/// that takes per-vector closures kept the optimizer from inlining the operation into the loop: a call
/// per vector. Check `objdump -d` of ReduceKernels.swift.o for `call` after changing these.) Callers pass
/// closures written for a concrete vector type: the standard library has concrete, vectorizing forms of
/// `&+`, `&*` and the comparisons only for concrete types; the generic forms are lane loops that wide
/// vectors (SIMD64<Int8>) leave scalar.
@usableFromInline
enum SIMDLoops {
    /// `destination[i] = op(destination[i], source[i])` for `count` elements of `V.Scalar`.
    @inlinable @inline(__always)
    static func combine<V: SIMD>(
        _ destination: UnsafeMutableRawPointer, _ source: UnsafeRawPointer, _ count: Int, _: V.Type,
        _ vectorOp: (V, V) -> V, _ scalarOp: (V.Scalar, V.Scalar) -> V.Scalar
    ) {
        let lanes = V.scalarCount
        let stride = MemoryLayout<V.Scalar>.stride
        var i = 0
        while i &+ lanes <= count {
            let offset = i &* stride
            let a = destination.loadUnaligned(fromByteOffset: offset, as: V.self)
            let b = source.loadUnaligned(fromByteOffset: offset, as: V.self)
            destination.storeBytes(of: vectorOp(a, b), toByteOffset: offset, as: V.self)
            i &+= lanes
        }
        while i < count {
            let offset = i &* stride
            let a = destination.loadUnaligned(fromByteOffset: offset, as: V.Scalar.self)
            let b = source.loadUnaligned(fromByteOffset: offset, as: V.Scalar.self)
            destination.storeBytes(of: scalarOp(a, b), toByteOffset: offset, as: V.Scalar.self)
            i &+= 1
        }
    }

    /// `destination[i] = narrow(op(widen(destination[i]), widen(source[i])))`: a half-precision combine
    /// computed in float32 and rounded once. `op` is a constant at every call site (the switch folds away
    /// once this is inlined); a closure here stayed a call per vector.
    @inlinable @inline(__always)
    static func combineWidened<F: HalfFormat>(
        _ destination: UnsafeMutableRawPointer, _ source: UnsafeRawPointer, _ count: Int, _: F.Type,
        _ op: ReduceOp
    ) {
        var i = 0
        while i &+ 16 <= count {
            let offset = i &* 2
            let a = F.widen(destination.loadUnaligned(fromByteOffset: offset, as: SIMD16<F.Bits>.self))
            let b = F.widen(source.loadUnaligned(fromByteOffset: offset, as: SIMD16<F.Bits>.self))
            destination.storeBytes(of: F.narrow(apply(op, a, b)), toByteOffset: offset, as: SIMD16<F.Bits>.self)
            i &+= 16
        }
        while i < count {
            let offset = i &* 2
            let a = F.widen(destination.loadUnaligned(fromByteOffset: offset, as: F.Bits.self))
            let b = F.widen(source.loadUnaligned(fromByteOffset: offset, as: F.Bits.self))
            destination.storeBytes(of: F.narrow(apply(op, a, b)), toByteOffset: offset, as: F.Bits.self)
            i &+= 1
        }
    }

    /// The bfloat16 combine without lane shuffles: 64 bytes are read as 16 UInt32 lanes, each holding an
    /// even element (low half) and an odd one (high half). `x << 16` is the even element as a float32,
    /// `x & 0xFFFF0000` the odd one; each is combined in float32, rounded in place (the result in the
    /// high half), and the halves are put back with one shift, one mask and one or. Half the
    /// instructions of widening with `vpmovzxwd` and narrowing with `vpackusdw` + `vpermq` on AVX2.
    @inlinable @inline(__always)
    static func combineBFloat16(
        _ destination: UnsafeMutableRawPointer, _ source: UnsafeRawPointer, _ count: Int, _ op: ReduceOp
    ) {
        typealias U = SIMD16<UInt32>
        let high = U(repeating: 0xFFFF_0000)
        var i = 0
        while i &+ 32 <= count {
            let offset = i &* 2
            let d = destination.loadUnaligned(fromByteOffset: offset, as: U.self)
            let s = source.loadUnaligned(fromByteOffset: offset, as: U.self)
            let even = apply(op, asFloat(d &<< U(repeating: 16)), asFloat(s &<< U(repeating: 16)))
            let odd = apply(op, asFloat(d & high), asFloat(s & high))
            let result = (roundedHigh(even) &>> U(repeating: 16)) | (roundedHigh(odd) & high)
            destination.storeBytes(of: result, toByteOffset: offset, as: U.self)
            i &+= 32
        }
        while i < count {
            let offset = i &* 2
            let a = BFloat16Format.widen(destination.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            let b = BFloat16Format.widen(source.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            destination.storeBytes(of: BFloat16Format.narrow(apply(op, a, b)), toByteOffset: offset, as: UInt16.self)
            i &+= 1
        }
    }

    /// `buffer[i] = bf16(float(buffer[i]) * factor)` with the even/odd lanes of `combineBFloat16`.
    @inlinable @inline(__always)
    static func scaleBFloat16(_ buffer: UnsafeMutableRawPointer, _ count: Int, by factor: Float) {
        typealias U = SIMD16<UInt32>
        let high = U(repeating: 0xFFFF_0000)
        let factors = SIMD16<Float>(repeating: factor)
        var i = 0
        while i &+ 32 <= count {
            let offset = i &* 2
            let x = buffer.loadUnaligned(fromByteOffset: offset, as: U.self)
            let even = asFloat(x &<< U(repeating: 16)) * factors
            let odd = asFloat(x & high) * factors
            let result = (roundedHigh(even) &>> U(repeating: 16)) | (roundedHigh(odd) & high)
            buffer.storeBytes(of: result, toByteOffset: offset, as: U.self)
            i &+= 32
        }
        while i < count {
            let offset = i &* 2
            let a = BFloat16Format.widen(buffer.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            buffer.storeBytes(of: BFloat16Format.narrow(a * factor), toByteOffset: offset, as: UInt16.self)
            i &+= 1
        }
    }

    @inlinable @inline(__always)
    static func asFloat(_ bits: SIMD16<UInt32>) -> SIMD16<Float> { unsafeBitCast(bits, to: SIMD16<Float>.self) }

    /// The bits of `v` whose high half is `v` rounded to bfloat16 (nearest even; a NaN gets the quiet bit);
    /// the low half is left over.
    @inlinable @inline(__always)
    static func roundedHigh(_ v: SIMD16<Float>) -> SIMD16<UInt32> {
        typealias U = SIMD16<UInt32>
        let bits = unsafeBitCast(v, to: U.self)
        let rounded = bits &+ U(repeating: 0x7FFF) &+ ((bits &>> U(repeating: 16)) & U(repeating: 1))
        return rounded.replacing(with: bits | U(repeating: 0x0040_0000), where: v .!= v)
    }

    /// `op` on float32 vectors: min is Swift.min lane by lane (`b < a ? b : a`), max is Swift.max
    /// (`b >= a ? b : a`); `avg` adds.
    @inlinable @inline(__always)
    static func apply(_ op: ReduceOp, _ a: SIMD16<Float>, _ b: SIMD16<Float>) -> SIMD16<Float> {
        switch op {
        case .sum, .avg: return a + b
        case .prod: return a * b
        case .min: return a.replacing(with: b, where: b .< a)
        case .max: return a.replacing(with: b, where: b .>= a)
        }
    }

    /// `op` on two floats, as `apply(_:_:_:)` does on each lane.
    @inlinable @inline(__always)
    static func apply(_ op: ReduceOp, _ a: Float, _ b: Float) -> Float {
        switch op {
        case .sum, .avg: return a + b
        case .prod: return a * b
        case .min: return Swift.min(a, b)
        case .max: return Swift.max(a, b)
        }
    }

    /// `buffer[i] = op(buffer[i])` for `count` elements of `V.Scalar`.
    @inlinable @inline(__always)
    static func map<V: SIMD>(
        _ buffer: UnsafeMutableRawPointer, _ count: Int, _: V.Type, _ vectorOp: (V) -> V,
        _ scalarOp: (V.Scalar) -> V.Scalar
    ) {
        let lanes = V.scalarCount
        let stride = MemoryLayout<V.Scalar>.stride
        var i = 0
        while i &+ lanes <= count {
            let offset = i &* stride
            let a = buffer.loadUnaligned(fromByteOffset: offset, as: V.self)
            buffer.storeBytes(of: vectorOp(a), toByteOffset: offset, as: V.self)
            i &+= lanes
        }
        while i < count {
            let offset = i &* stride
            let a = buffer.loadUnaligned(fromByteOffset: offset, as: V.Scalar.self)
            buffer.storeBytes(of: scalarOp(a), toByteOffset: offset, as: V.Scalar.self)
            i &+= 1
        }
    }

    /// `buffer[i] = narrow(widen(buffer[i]) * factor)` for `count` half-precision elements.
    @inlinable @inline(__always)
    static func scaleWidened<F: HalfFormat>(
        _ buffer: UnsafeMutableRawPointer, _ count: Int, _: F.Type, by factor: Float
    ) {
        let factors = SIMD16<Float>(repeating: factor)
        var i = 0
        while i &+ 16 <= count {
            let offset = i &* 2
            let a = F.widen(buffer.loadUnaligned(fromByteOffset: offset, as: SIMD16<F.Bits>.self))
            buffer.storeBytes(of: F.narrow(a * factors), toByteOffset: offset, as: SIMD16<F.Bits>.self)
            i &+= 16
        }
        while i < count {
            let offset = i &* 2
            let a = F.widen(buffer.loadUnaligned(fromByteOffset: offset, as: F.Bits.self))
            buffer.storeBytes(of: F.narrow(a * factor), toByteOffset: offset, as: F.Bits.self)
            i &+= 1
        }
    }

    /// float32 → half: `destination[i] = narrow(source[i])`. The destination may start at the source
    /// (narrowing in place writes only bytes already read).
    @inlinable @inline(__always)
    static func narrow<F: HalfFormat>(
        _ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, _ count: Int, _: F.Type
    ) {
        var i = 0
        while i &+ 16 <= count {
            let v = source.loadUnaligned(fromByteOffset: i &* 4, as: SIMD16<Float>.self)
            destination.storeBytes(of: F.narrow(v), toByteOffset: i &* 2, as: SIMD16<F.Bits>.self)
            i &+= 16
        }
        while i < count {
            let x = source.loadUnaligned(fromByteOffset: i &* 4, as: Float.self)
            destination.storeBytes(of: F.narrow(x), toByteOffset: i &* 2, as: F.Bits.self)
            i &+= 1
        }
    }

    /// half → float32: `destination[i] = widen(source[i])`. The buffers must not overlap.
    @inlinable @inline(__always)
    static func widen<F: HalfFormat>(
        _ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, _ count: Int, _: F.Type
    ) {
        var i = 0
        while i &+ 16 <= count {
            let v = source.loadUnaligned(fromByteOffset: i &* 2, as: SIMD16<F.Bits>.self)
            destination.storeBytes(of: F.widen(v), toByteOffset: i &* 4, as: SIMD16<Float>.self)
            i &+= 16
        }
        while i < count {
            let x = source.loadUnaligned(fromByteOffset: i &* 2, as: F.Bits.self)
            destination.storeBytes(of: F.widen(x), toByteOffset: i &* 4, as: Float.self)
            i &+= 1
        }
    }
}

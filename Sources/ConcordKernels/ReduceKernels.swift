// Reduce kernels: `destination[i] = op(destination[i], source[i])` over raw memory.
//
// One dispatch on (op, dtype) picks a kernel; each kernel is a generic loop over `SIMD` vectors
// (unaligned loads and stores, so any byte offset works) with a scalar tail. They allocate nothing and
// are memory-bound above L1: a combine touches 3 bytes of traffic per byte of buffer.
//
// Integer sum and prod wrap (&+, &*), which also lets them vectorize. Half-precision types (float16,
// bfloat16) widen to float32, combine, and round once. min and max use `replacing(with:where:)`, which
// vectorizes (SIMD.pointwiseMin does not).
import ConcordCore

/// The kernels that combine buffers element by element.
public enum ReduceKernels {
    /// The reducer for `op` on `dataType`, as transports call it while bytes arrive. `avg` combines as a
    /// sum (`scale` finishes it).
    public static func reducer(op: ReduceOp, dataType: DataType) -> Reducer {
        let op = op.combining
        switch dataType {
        case .float32: return floating(Float.self, SIMD16<Float>.self, op)
        case .float64: return floating(Double.self, SIMD8<Double>.self, op)
        case .int8: return integer(Int8.self, SIMD64<Int8>.self, op)
        case .uint8: return integer(UInt8.self, SIMD64<UInt8>.self, op)
        case .int32: return integer(Int32.self, SIMD16<Int32>.self, op)
        case .int64: return integer(Int64.self, SIMD8<Int64>.self, op)
        case .float16: return half(op)
        case .bfloat16: return bfloat(op)
        }
    }

    /// Multiplies `count` elements by `factor` in place (the last step of `avg`); floating types only.
    public static func scale(_ buffer: UnsafeMutableRawPointer, count: Int, dataType: DataType, by factor: Double) {
        switch dataType {
        case .float32:
            let f = Float(factor)
            map(buffer.assumingMemoryBound(to: Float.self), count: count, SIMD16<Float>.self, { $0 * f }, { $0 * f })
        case .float64:
            map(buffer.assumingMemoryBound(to: Double.self), count: count, SIMD8<Double>.self, { $0 * factor }, { $0 * factor })
        case .float16:
            let p = buffer.assumingMemoryBound(to: Float16.self), f = Float(factor)
            for i in 0..<count { p[i] = Float16(Float(p[i]) * f) }
        case .bfloat16:
            let p = buffer.assumingMemoryBound(to: BFloat16.self), f = Float(factor)
            for i in 0..<count { p[i] = BFloat16(p[i].floatValue * f) }
        case .int8, .uint8, .int32, .int64:
            preconditionFailure("avg is not defined on \(dataType)")
        }
    }

    /// `destination[i] += source[i]` for `count` floats; the two may be equal but must not partly overlap.
    @inlinable
    public static func sum(into destination: UnsafeMutablePointer<Float>, from source: UnsafePointer<Float>, count: Int) {
        combine(into: destination, from: source, count: count, vector: SIMD16<Float>.self, { $0 + $1 }, { $0 + $1 })
    }

    // MARK: - Families

    static func floating<T: BinaryFloatingPoint & SIMDScalar, V: SIMD>(_: T.Type, _: V.Type, _ op: ReduceOp) -> Reducer
    where V.Scalar == T, V: SIMD, T.SIMDMaskScalar: FixedWidthInteger {
        let size = MemoryLayout<T>.stride
        switch op {
        case .sum, .avg:
            return Reducer(elementSize: size) { d, s, n in typed(d, s, n, V.self, { $0 + $1 }, { $0 + $1 }) }
        case .prod:
            return Reducer(elementSize: size) { d, s, n in typed(d, s, n, V.self, { $0 * $1 }, { $0 * $1 }) }
        case .min:
            return Reducer(elementSize: size) { d, s, n in
                typed(d, s, n, V.self, { $0.replacing(with: $1, where: $1 .< $0) }, { Swift.min($0, $1) })
            }
        case .max:
            return Reducer(elementSize: size) { d, s, n in
                typed(d, s, n, V.self, { $0.replacing(with: $1, where: $1 .> $0) }, { Swift.max($0, $1) })
            }
        }
    }

    static func integer<T: FixedWidthInteger & SIMDScalar, V: SIMD>(_: T.Type, _: V.Type, _ op: ReduceOp) -> Reducer
    where V.Scalar == T, V: SIMD {
        let size = MemoryLayout<T>.stride
        switch op {
        case .sum, .avg:
            return Reducer(elementSize: size) { d, s, n in typed(d, s, n, V.self, { $0 &+ $1 }, { $0 &+ $1 }) }
        case .prod:
            return Reducer(elementSize: size) { d, s, n in typed(d, s, n, V.self, { $0 &* $1 }, { $0 &* $1 }) }
        case .min:
            return Reducer(elementSize: size) { d, s, n in
                typed(d, s, n, V.self, { $0.replacing(with: $1, where: $1 .< $0) }, { Swift.min($0, $1) })
            }
        case .max:
            return Reducer(elementSize: size) { d, s, n in
                typed(d, s, n, V.self, { $0.replacing(with: $1, where: $1 .> $0) }, { Swift.max($0, $1) })
            }
        }
    }

    static func half(_ op: ReduceOp) -> Reducer {
        let f = floatOp(op)
        return Reducer(elementSize: 2) { d, s, n in
            let dst = d.assumingMemoryBound(to: Float16.self), src = s.assumingMemoryBound(to: Float16.self)
            for i in 0..<n { dst[i] = Float16(f(Float(dst[i]), Float(src[i]))) }
        }
    }

    static func bfloat(_ op: ReduceOp) -> Reducer {
        let f = floatOp(op)
        return Reducer(elementSize: 2) { d, s, n in
            let dst = d.assumingMemoryBound(to: BFloat16.self), src = s.assumingMemoryBound(to: BFloat16.self)
            for i in 0..<n { dst[i] = BFloat16(f(dst[i].floatValue, src[i].floatValue)) }
        }
    }

    static func floatOp(_ op: ReduceOp) -> @Sendable (Float, Float) -> Float {
        switch op {
        case .sum, .avg: return { $0 + $1 }
        case .prod: return { $0 * $1 }
        case .min: return { Swift.min($0, $1) }
        case .max: return { Swift.max($0, $1) }
        }
    }

    // MARK: - Loops

    @inline(__always)
    static func typed<V: SIMD>(
        _ d: UnsafeMutableRawPointer, _ s: UnsafeRawPointer, _ n: Int, _: V.Type,
        _ vectorOp: (V, V) -> V, _ scalarOp: (V.Scalar, V.Scalar) -> V.Scalar
    ) {
        combine(
            into: d.assumingMemoryBound(to: V.Scalar.self), from: s.assumingMemoryBound(to: V.Scalar.self), count: n,
            vector: V.self, vectorOp, scalarOp)
    }

    /// The shared loop: whole vectors first, then a scalar tail.
    @inlinable
    static func combine<V: SIMD>(
        into destination: UnsafeMutablePointer<V.Scalar>, from source: UnsafePointer<V.Scalar>, count: Int,
        vector: V.Type, _ vectorOp: (V, V) -> V, _ scalarOp: (V.Scalar, V.Scalar) -> V.Scalar
    ) {
        let lanes = V.scalarCount
        let stride = MemoryLayout<V.Scalar>.stride
        let d = UnsafeMutableRawPointer(destination)
        let s = UnsafeRawPointer(source)
        var i = 0
        while i + lanes <= count {
            let a = d.loadUnaligned(fromByteOffset: i * stride, as: V.self)
            let b = s.loadUnaligned(fromByteOffset: i * stride, as: V.self)
            d.storeBytes(of: vectorOp(a, b), toByteOffset: i * stride, as: V.self)
            i += lanes
        }
        while i < count {
            destination[i] = scalarOp(destination[i], source[i])
            i += 1
        }
    }

    /// `buffer[i] = f(buffer[i])`, vectors then a scalar tail.
    @inline(__always)
    static func map<V: SIMD>(
        _ buffer: UnsafeMutablePointer<V.Scalar>, count: Int, _: V.Type, _ vectorOp: (V) -> V,
        _ scalarOp: (V.Scalar) -> V.Scalar
    ) {
        let lanes = V.scalarCount
        let stride = MemoryLayout<V.Scalar>.stride
        let p = UnsafeMutableRawPointer(buffer)
        var i = 0
        while i + lanes <= count {
            p.storeBytes(of: vectorOp(p.loadUnaligned(fromByteOffset: i * stride, as: V.self)), toByteOffset: i * stride, as: V.self)
            i += lanes
        }
        while i < count {
            buffer[i] = scalarOp(buffer[i])
            i += 1
        }
    }
}

// Reduce kernels: `destination[i] = op(destination[i], source[i])` over raw memory, for every ReduceOp ×
// DataType, as transports call them on each piece of received data (any whole number of elements, any
// byte alignment).
//
// Design. `reducer(op:dataType:)` is the one dispatch on (op, dtype); it returns a closure that runs one
// loop of SIMDLoops.swift, instantiated for a concrete vector type and a pair of operations (vector and
// scalar). Nothing is allocated per call and nothing is decided per element. Above L1 the kernels are
// memory-bound: a combine moves 3 bytes per byte of buffer (reads destination and source, writes
// destination), against 2 for memcpy; `concord-bench kernels` measures both in one run.
//
//   dtype       sum, avg         prod         min, max                 vector (storage → compute)
//   float32     +                *            Swift.min, Swift.max     SIMD16<Float>
//   float64     +                *            Swift.min, Swift.max     SIMD8<Double>
//   float16     widen to float32, op, round once to nearest even       SIMD16<Float16> → SIMD16<Float>
//   bfloat16    the same, rounding by integer arithmetic on             SIMD16<UInt32> (32 elements) →
//               even and odd lanes, or by vcvtneps2bf16 where AVX-512   2 × SIMD16<Float>
//               BF16 exists (KernelPath)
//   int8, uint8 &+ (wraps)       &* (wraps)   Swift.min, Swift.max     SIMD64 (min, max: SIMD16)
//   int32       &+ (wraps)       &* (wraps)   Swift.min, Swift.max     SIMD16<Int32>
//   int64       &+ (wraps)       &* (wraps)   Swift.min, Swift.max     SIMD8<Int64>
//
// Semantics, which the scalar reference in ConcordTestSupport/Fixtures.swift states element by element:
// - Integer sum and prod wrap around in two's complement (`&+`, `&*`): no trap, no saturation. (`&+` is
//   also what lets them vectorize: Swift's checked `+` does not.)
// - float16 and bfloat16 widen to float32 (exactly), combine, and round to the nearest value, ties to even
//   — once per combine, i.e. once per ring hop. float32 has at least 2p+2 bits for both (p = 11 and 8), so
//   that double rounding is harmless: each hop is correctly rounded. Error bounds: docs/algorithms.md.
// - min and max are `Swift.min(d, s)` and `Swift.max(d, s)` lane by lane: `s < d ? s : d` and
//   `s >= d ? s : d`. So a NaN already in the destination stays and one arriving from the source is
//   dropped, and max(+0, −0) = −0 while max(−0, +0) = +0. (Vectorized with `replacing(with:where:)`:
//   SIMD.pointwiseMin is scalarized and an order of magnitude slower.)
// - `avg` combines as `sum`; `scale(_:count:dataType:by:)` then multiplies by 1/worldSize once.

internal import CConcordCPU
import ConcordCore

/// The kernels that combine buffers element by element.
public enum ReduceKernels {
    /// The reducer for `op` on `dataType`, as transports call it while bytes arrive.
    ///
    /// `avg` combines as a sum (`scale` finishes it). The returned closure computes
    /// `destination[i] = op(destination[i], source[i])` for `elements` elements at any byte alignment; the
    /// destination may be the source itself but must not partly overlap it. It allocates nothing.
    /// - Parameters:
    ///   - op: the reduction (`avg` is defined on floating-point types only; callers check
    ///     `ReduceOp.isSupported(on:)`; here it simply sums).
    ///   - dataType: the element type.
    public static func reducer(op: ReduceOp, dataType: DataType) -> Reducer {
        reducer(op: op, dataType: dataType, path: .best)
    }

    /// The reducer for `op` on `dataType` on a given implementation path (tests and benchmarks compare
    /// them; `reducer(op:dataType:)` takes the best this machine has).
    /// - Precondition: `path.isAvailable`.
    package static func reducer(op: ReduceOp, dataType: DataType, path: KernelPath) -> Reducer {
        precondition(path.isAvailable, "kernel path \(path) is not available on this CPU")
        if dataType == .bfloat16 && path == .avx512BF16 {
            let code = Int32(op.combining.rawValue)
            return Reducer(elementSize: 2) { concord_bf16_combine_avx512($0, $1, $2, code) }
        }
        // Every closure is written for a concrete vector type, so that the concrete (vectorizing) forms of
        // `&+`, `&*` and the comparisons are chosen. min is `replacing(with: s, where: s .< d)`, i.e.
        // Swift.min lane by lane; max uses `.>=`, i.e. Swift.max. int8/uint8 min and max use 16-lane
        // vectors: `replacing(with:where:)` is a lane loop that stays scalar on 64 lanes.
        let size = dataType.size
        let kernel: @Sendable (UnsafeMutableRawPointer, UnsafeRawPointer, Int) -> Void
        switch (dataType, op.combining) {
        case (.float32, .sum), (.float32, .avg):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD16<Float>.self, { $0 + $1 }, { $0 + $1 }) }
        case (.float32, .prod):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD16<Float>.self, { $0 * $1 }, { $0 * $1 }) }
        case (.float32, .min):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD16<Float>.self, { $0.replacing(with: $1, where: $1 .< $0) }, { Swift.min($0, $1) })
            }
        case (.float32, .max):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD16<Float>.self, { $0.replacing(with: $1, where: $1 .>= $0) }, { Swift.max($0, $1) })
            }

        case (.float64, .sum), (.float64, .avg):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD8<Double>.self, { $0 + $1 }, { $0 + $1 }) }
        case (.float64, .prod):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD8<Double>.self, { $0 * $1 }, { $0 * $1 }) }
        case (.float64, .min):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD8<Double>.self, { $0.replacing(with: $1, where: $1 .< $0) }, { Swift.min($0, $1) })
            }
        case (.float64, .max):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD8<Double>.self, { $0.replacing(with: $1, where: $1 .>= $0) }, { Swift.max($0, $1) })
            }

        case (.float16, .sum), (.float16, .avg):
            kernel = { SIMDLoops.combineWidened($0, $1, $2, Float16Format.self, .sum) }
        case (.float16, .prod):
            kernel = { SIMDLoops.combineWidened($0, $1, $2, Float16Format.self, .prod) }
        case (.float16, .min):
            kernel = { SIMDLoops.combineWidened($0, $1, $2, Float16Format.self, .min) }
        case (.float16, .max):
            kernel = { SIMDLoops.combineWidened($0, $1, $2, Float16Format.self, .max) }

        case (.bfloat16, .sum), (.bfloat16, .avg):
            kernel = { SIMDLoops.combineBFloat16($0, $1, $2, .sum) }
        case (.bfloat16, .prod):
            kernel = { SIMDLoops.combineBFloat16($0, $1, $2, .prod) }
        case (.bfloat16, .min):
            kernel = { SIMDLoops.combineBFloat16($0, $1, $2, .min) }
        case (.bfloat16, .max):
            kernel = { SIMDLoops.combineBFloat16($0, $1, $2, .max) }

        case (.int8, .sum), (.int8, .avg):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD64<Int8>.self, { $0 &+ $1 }, { $0 &+ $1 }) }
        case (.int8, .prod):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD64<Int8>.self, { $0 &* $1 }, { $0 &* $1 }) }
        case (.int8, .min):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD16<Int8>.self, { $0.replacing(with: $1, where: $1 .< $0) }, { Swift.min($0, $1) })
            }
        case (.int8, .max):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD16<Int8>.self, { $0.replacing(with: $1, where: $1 .>= $0) }, { Swift.max($0, $1) })
            }

        case (.uint8, .sum), (.uint8, .avg):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD64<UInt8>.self, { $0 &+ $1 }, { $0 &+ $1 }) }
        case (.uint8, .prod):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD64<UInt8>.self, { $0 &* $1 }, { $0 &* $1 }) }
        case (.uint8, .min):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD16<UInt8>.self, { $0.replacing(with: $1, where: $1 .< $0) }, { Swift.min($0, $1) })
            }
        case (.uint8, .max):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD16<UInt8>.self, { $0.replacing(with: $1, where: $1 .>= $0) }, { Swift.max($0, $1) })
            }

        case (.int32, .sum), (.int32, .avg):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD16<Int32>.self, { $0 &+ $1 }, { $0 &+ $1 }) }
        case (.int32, .prod):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD16<Int32>.self, { $0 &* $1 }, { $0 &* $1 }) }
        case (.int32, .min):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD16<Int32>.self, { $0.replacing(with: $1, where: $1 .< $0) }, { Swift.min($0, $1) })
            }
        case (.int32, .max):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD16<Int32>.self, { $0.replacing(with: $1, where: $1 .>= $0) }, { Swift.max($0, $1) })
            }

        case (.int64, .sum), (.int64, .avg):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD8<Int64>.self, { $0 &+ $1 }, { $0 &+ $1 }) }
        case (.int64, .prod):
            kernel = { SIMDLoops.combine($0, $1, $2, SIMD8<Int64>.self, { $0 &* $1 }, { $0 &* $1 }) }
        case (.int64, .min):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD8<Int64>.self, { $0.replacing(with: $1, where: $1 .< $0) }, { Swift.min($0, $1) })
            }
        case (.int64, .max):
            kernel = {
                SIMDLoops.combine(
                    $0, $1, $2, SIMD8<Int64>.self, { $0.replacing(with: $1, where: $1 .>= $0) }, { Swift.max($0, $1) })
            }
        }
        return Reducer(elementSize: size, combine: kernel)
    }

    /// Multiplies `count` elements by `factor` in place: the last step of `avg`.
    ///
    /// float32 and the half types multiply by `Float(factor)` (halves in float32, rounded once); float64 by
    /// `factor`. Any byte alignment.
    /// - Parameters:
    ///   - buffer: the elements.
    ///   - count: how many.
    ///   - dataType: a floating-point type (a precondition).
    ///   - factor: the multiplier, usually 1/worldSize.
    public static func scale(_ buffer: UnsafeMutableRawPointer, count: Int, dataType: DataType, by factor: Double) {
        scale(buffer, count: count, dataType: dataType, by: factor, path: .best)
    }

    /// `scale(_:count:dataType:by:)` on a given implementation path.
    /// - Precondition: `path.isAvailable`.
    package static func scale(
        _ buffer: UnsafeMutableRawPointer, count: Int, dataType: DataType, by factor: Double, path: KernelPath
    ) {
        precondition(path.isAvailable, "kernel path \(path) is not available on this CPU")
        let f = Float(factor)
        switch dataType {
        case .float32:
            let f16 = SIMD16<Float>(repeating: f)
            SIMDLoops.map(buffer, count, SIMD16<Float>.self, { $0 * f16 }, { $0 * f })
        case .float64:
            let f8 = SIMD8<Double>(repeating: factor)
            SIMDLoops.map(buffer, count, SIMD8<Double>.self, { $0 * f8 }, { $0 * factor })
        case .float16:
            SIMDLoops.scaleWidened(buffer, count, Float16Format.self, by: f)
        case .bfloat16 where path == .avx512BF16:
            concord_bf16_scale_avx512(buffer, count, f)
        case .bfloat16:
            SIMDLoops.scaleBFloat16(buffer, count, by: f)
        case .int8, .uint8, .int32, .int64:
            preconditionFailure("avg is not defined on \(dataType)")
        }
    }

    /// `destination[i] -= source[i]` for `count` floats; the two must not partly overlap.
    @inlinable
    public static func subtract(
        from destination: UnsafeMutablePointer<Float>, _ source: UnsafePointer<Float>, count: Int
    ) {
        SIMDLoops.combine(
            UnsafeMutableRawPointer(destination), UnsafeRawPointer(source), count, SIMD16<Float>.self,
            { $0 - $1 }, { $0 - $1 })
    }

    /// `destination[i] += source[i]` for `count` floats; the two may be equal but must not partly overlap.
    @inlinable
    public static func sum(into destination: UnsafeMutablePointer<Float>, from source: UnsafePointer<Float>, count: Int)
    {
        SIMDLoops.combine(
            UnsafeMutableRawPointer(destination), UnsafeRawPointer(source), count, SIMD16<Float>.self,
            { $0 + $1 }, { $0 + $1 })
    }
}

// Bulk conversions between float32 and the half-precision types, for compressed wire formats: a float32
// tensor travels as float16 or bfloat16 and is widened back on arrival.
//
// The same loops as the reduce kernels (SIMDLoops.swift): vectors of 16 elements, then a scalar tail; raw
// memory at any byte alignment; no allocation. Narrowing rounds to nearest, ties to even, exactly like
// `Float16(_: Float)` and `BFloat16(_: Float)` element by element: overflow gives ±infinity, float16
// subnormals are produced (not flushed), NaN stays NaN (bfloat16 keeps the top of the payload and sets the
// quiet bit). Widening is exact. Narrowing may run in place (destination == source: it writes only bytes
// it has read); otherwise the buffers must not overlap.

internal import CConcordCPU
import ConcordCore

/// Converts buffers between float32 and float16 / bfloat16.
public enum ConvertKernels {
    /// float32 → float16, rounding to nearest even.
    /// - Parameters:
    ///   - source: `count` floats.
    ///   - destination: room for `count` float16 values; may equal `source` (in place), else disjoint.
    ///   - count: elements.
    public static func float32ToFloat16(
        _ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, count: Int
    ) {
        SIMDLoops.narrow(source, destination, count, Float16Format.self)
    }

    /// float16 → float32 (exact).
    /// - Parameters:
    ///   - source: `count` float16 values.
    ///   - destination: room for `count` floats, not overlapping `source`.
    ///   - count: elements.
    public static func float16ToFloat32(
        _ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, count: Int
    ) {
        SIMDLoops.widen(source, destination, count, Float16Format.self)
    }

    /// float32 → bfloat16, rounding to nearest even; NaN stays a (quiet) NaN.
    /// - Parameters:
    ///   - source: `count` floats.
    ///   - destination: room for `count` bfloat16 values; may equal `source` (in place), else disjoint.
    ///   - count: elements.
    public static func float32ToBFloat16(
        _ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, count: Int
    ) {
        float32ToBFloat16(source, destination, count: count, path: .best)
    }

    /// float32 → bfloat16 on a given implementation path (the results are the same bits).
    /// - Precondition: `path.isAvailable`.
    package static func float32ToBFloat16(
        _ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, count: Int, path: KernelPath
    ) {
        precondition(path.isAvailable, "kernel path \(path) is not available on this CPU")
        if path == .avx512BF16 {
            concord_bf16_from_float32_avx512(source, destination, count)
        } else {
            SIMDLoops.narrow(source, destination, count, BFloat16Format.self)
        }
    }

    /// bfloat16 → float32 (exact).
    /// - Parameters:
    ///   - source: `count` bfloat16 values.
    ///   - destination: room for `count` floats, not overlapping `source`.
    ///   - count: elements.
    public static func bfloat16ToFloat32(
        _ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, count: Int
    ) {
        SIMDLoops.widen(source, destination, count, BFloat16Format.self)
    }

    /// Converts `count` elements of `sourceType` into `destinationType`: one of the four conversions
    /// above, or a copy when the types are equal.
    /// - Parameters:
    ///   - source: `count` elements of `sourceType`.
    ///   - sourceType: the element type of `source`.
    ///   - destination: room for `count` elements of `destinationType` (see the single conversions for
    ///     which may run in place).
    ///   - destinationType: the element type to produce.
    ///   - count: elements.
    public static func convert(
        _ source: UnsafeRawPointer, from sourceType: DataType, to destination: UnsafeMutableRawPointer,
        as destinationType: DataType, count: Int
    ) {
        switch (sourceType, destinationType) {
        case (.float32, .float16): float32ToFloat16(source, destination, count: count)
        case (.float16, .float32): float16ToFloat32(source, destination, count: count)
        case (.float32, .bfloat16): float32ToBFloat16(source, destination, count: count)
        case (.bfloat16, .float32): bfloat16ToFloat32(source, destination, count: count)
        case _ where sourceType == destinationType:
            if count > 0 && source != UnsafeRawPointer(destination) {
                destination.copyMemory(from: source, byteCount: count * sourceType.size)
            }
        default:
            preconditionFailure("no conversion from \(sourceType) to \(destinationType)")
        }
    }

    // MARK: - Typed forms

    /// float32 → float16, rounding to nearest even (see `float32ToFloat16(_:_:count:)`).
    @inlinable
    public static func convert(
        _ source: UnsafePointer<Float>, to destination: UnsafeMutablePointer<Float16>, count: Int
    ) {
        float32ToFloat16(source, destination, count: count)
    }

    /// float16 → float32, exact (see `float16ToFloat32(_:_:count:)`).
    @inlinable
    public static func convert(
        _ source: UnsafePointer<Float16>, to destination: UnsafeMutablePointer<Float>, count: Int
    ) {
        float16ToFloat32(source, destination, count: count)
    }

    /// float32 → bfloat16, rounding to nearest even (see `float32ToBFloat16(_:_:count:)`).
    @inlinable
    public static func convert(
        _ source: UnsafePointer<Float>, to destination: UnsafeMutablePointer<BFloat16>, count: Int
    ) {
        float32ToBFloat16(source, destination, count: count)
    }

    /// bfloat16 → float32, exact (see `bfloat16ToFloat32(_:_:count:)`).
    @inlinable
    public static func convert(
        _ source: UnsafePointer<BFloat16>, to destination: UnsafeMutablePointer<Float>, count: Int
    ) {
        bfloat16ToFloat32(source, destination, count: count)
    }
}

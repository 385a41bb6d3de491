// Reduce kernels: `destination[i] = op(destination[i], source[i])` over raw memory.
//
// One dispatch on (op, dtype) picks a kernel; each kernel is a generic loop over `SIMD` vectors
// (unaligned loads and stores, so any byte offset works) with a scalar tail. They allocate nothing and
// are memory-bound above L1: a sum touches 3 bytes of traffic per byte of buffer.
import ConcordCore

/// The kernels that combine buffers element by element.
public enum ReduceKernels {
    /// The reducer for `op` on `dataType`, as transports call it while bytes arrive.
    public static func reducer(op: ReduceOp, dataType: DataType) -> Reducer {
        switch (op, dataType) {
        case (.sum, .float32):
            return Reducer(elementSize: 4) { dst, src, n in
                sum(
                    into: dst.assumingMemoryBound(to: Float.self), from: src.assumingMemoryBound(to: Float.self),
                    count: n)
            }
        }
    }

    /// `destination[i] += source[i]` for `count` floats; the two may be equal but must not partly overlap.
    @inlinable
    public static func sum(into destination: UnsafeMutablePointer<Float>, from source: UnsafePointer<Float>, count: Int)
    {
        combine(into: destination, from: source, count: count, vector: SIMD16<Float>.self, { $0 + $1 }, { $0 + $1 })
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
}

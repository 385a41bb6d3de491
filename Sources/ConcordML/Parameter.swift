// A trainable tensor and its gradient, in memory that never moves: the communication layer registers
// `values.baseAddress` and `gradient.baseAddress` once (e.g. to all-reduce gradients in place while the
// backward pass goes on) and may use them for as long as the Parameter lives.

/// One trainable tensor of a model (a weight matrix or a bias vector) with its gradient.
///
/// Both buffers are allocated once, zero-filled and 64-byte aligned (one cache line, one AVX-512 vector)
/// in `init`, keep their addresses for the life of the object and are freed in `deinit`. The class does
/// no locking: who writes the buffers when is the training loop's protocol (see
/// `MLP.forwardBackward(images:labels:count:gradientReady:)`), hence `@unchecked Sendable`.
public final class Parameter: @unchecked Sendable {
    /// A name for logs and checks: "W1", "b1", "W2", …
    public let name: String
    /// The shape: `[rows, columns]` for a weight matrix (row-major), `[count]` for a bias.
    public let shape: [Int]
    /// The values, `count` floats.
    public let values: UnsafeMutableBufferPointer<Float>
    /// The gradient of the loss with respect to `values`, `count` floats (written by the backward pass).
    public let gradient: UnsafeMutableBufferPointer<Float>
    /// Whether weight decay applies (weights yes, biases no).
    public let decays: Bool

    /// The number of floats in `values` (and in `gradient`).
    public var count: Int { values.count }

    /// A parameter of the given shape with zero values and gradient.
    /// - Parameters:
    ///   - name: a name for logs.
    ///   - shape: dimensions, each ≥ 0.
    ///   - decays: whether `MLP.apply` applies weight decay to it.
    public init(name: String, shape: [Int], decays: Bool) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Parameter \(name): negative dimension in \(shape)")
        self.name = name
        self.shape = shape
        self.decays = decays
        let count = shape.reduce(1, *)
        values = Parameter.allocateZeroed(count)
        gradient = Parameter.allocateZeroed(count)
    }

    deinit {
        UnsafeMutableRawPointer(values.baseAddress!).deallocate()
        UnsafeMutableRawPointer(gradient.baseAddress!).deallocate()
    }

    /// `count` zero floats, 64-byte aligned (at least one byte is allocated, so the base is never nil).
    static func allocateZeroed(_ count: Int) -> UnsafeMutableBufferPointer<Float> {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(1, count) * 4, alignment: 64)
        let floats = raw.bindMemory(to: Float.self, capacity: max(1, count))
        floats.initialize(repeating: 0, count: max(1, count))
        return UnsafeMutableBufferPointer(start: floats, count: count)
    }
}

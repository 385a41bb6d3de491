// A multilayer perceptron for the demo trainer: fully connected layers, ReLU between them, softmax
// cross-entropy on the last.
//
// Layer l (1…L) maps a batch X (batch × nₗ₋₁, row-major) to Z = X·Wₗ + bₗ with Wₗ stored nₗ₋₁ × nₗ; hidden
// layers keep A = ReLU(Z), the last keeps the logits. The backward pass, last layer first:
//
//     dZ_L = (softmax(Z_L) − onehot(y)) / batch          (gradient of the mean loss)
//     dbₗ  = column sums of dZₗ                          → gradientReady(index of bₗ)
//     dWₗ  = Aₗ₋₁ᵀ · dZₗ        (GEMM.aTransposedTimesB) → gradientReady(index of Wₗ)
//     dZₗ₋₁ = (dZₗ · Wₗᵀ) ⊙ [Aₗ₋₁ > 0]  (GEMM.aTimesBTransposed, then the ReLU mask; not for l = 1)
//
// so the gradients become final in exactly the reverse order of `parameters` (bL, WL, …, b1, W1), and the
// caller can start reducing the last layer's while the earlier layers are still being differentiated.
//
// Memory: per layer one activation buffer (batch × nₗ) that holds Aₗ in the forward pass and becomes dZₗ
// in the backward pass (Aₗ > 0 ⇔ Zₗ > 0, so the mask needs no copy of Z), plus one buffer for dZ·Wᵀ.
// They are sized for the largest batch seen so far and reused: no allocation in a step of a known size.
#if canImport(Glibc)
    internal import Glibc
#elseif canImport(Musl)
    internal import Musl
#elseif canImport(Darwin)
    internal import Darwin
#endif

/// A multilayer perceptron: fully connected layers with ReLU, softmax cross-entropy loss, SGD with
/// momentum.
///
/// Initialization is a pure function of `layerSizes` and `seed` (He-uniform weights, zero biases, drawn
/// with `SplitMix64` and IEEE arithmetic only), so every process of a data-parallel job builds the same
/// replica; `checksum()` compares replicas bit for bit. Not thread-safe: one thread drives a model.
public final class MLP {
    /// Neurons per layer, input first: e.g. `[784, 256, 128, 10]`.
    public let layerSizes: [Int]
    /// Trainable tensors in forward order: W1, b1, W2, b2, …; Wₗ is `layerSizes[l-1]` × `layerSizes[l]`.
    public let parameters: [Parameter]
    /// Momentum buffers, one per parameter, allocated with them.
    private let velocities: [UnsafeMutableBufferPointer<Float>]
    /// The batch size the scratch buffers hold.
    public private(set) var batchCapacity = 0
    /// Per layer l = 1…L at index l − 1: Aₗ (logits for the last), then dZₗ; `batchCapacity` × nₗ.
    private var activations: [UnsafeMutableBufferPointer<Float>] = []
    /// dZₗ · Wₗᵀ: `batchCapacity` × the widest hidden layer.
    private var upstream = UnsafeMutableBufferPointer<Float>(start: nil, count: 0)

    /// The number of layers with weights (L).
    public var layerCount: Int { layerSizes.count - 1 }
    /// Floats per input: `layerSizes[0]`.
    public var inputSize: Int { layerSizes[0] }
    /// Output classes: the last layer size.
    public var classCount: Int { layerSizes[layerSizes.count - 1] }
    /// Floats over all parameters.
    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }

    /// A model with He-uniform weights (U(−√(6/fan-in), √(6/fan-in))) and zero biases.
    /// - Parameters:
    ///   - layerSizes: neurons per layer, input first, output (classes) last; at least two, all > 0, at
    ///     most 256 classes (labels are bytes).
    ///   - seed: the initialization seed: the same seed gives the same bits everywhere.
    public init(layerSizes: [Int], seed: UInt64) {
        precondition(layerSizes.count >= 2, "MLP needs an input and an output size, got \(layerSizes)")
        precondition(layerSizes.allSatisfy { $0 > 0 }, "MLP layer sizes must be positive, got \(layerSizes)")
        precondition(layerSizes.last! <= 256, "MLP: at most 256 classes (labels are UInt8)")
        self.layerSizes = layerSizes
        var random = SplitMix64(seed: seed)
        var parameters: [Parameter] = []
        for l in 1..<layerSizes.count {
            let fanIn = layerSizes[l - 1]
            let weights = Parameter(name: "W\(l)", shape: [fanIn, layerSizes[l]], decays: true)
            let bound = (6 / Float(fanIn)).squareRoot()
            for i in weights.values.indices {
                weights.values[i] = (2 * random.nextFloat() - 1) * bound
            }
            parameters.append(weights)
            parameters.append(Parameter(name: "b\(l)", shape: [layerSizes[l]], decays: false))
        }
        self.parameters = parameters
        velocities = parameters.map { Parameter.allocateZeroed($0.count) }
    }

    deinit {
        for velocity in velocities { UnsafeMutableRawPointer(velocity.baseAddress!).deallocate() }
        releaseScratch()
    }

    // MARK: - Training

    /// One forward and backward pass over a batch: returns the mean cross-entropy loss and the number of
    /// correct predictions, and overwrites every parameter's `gradient` with the gradient of the mean loss.
    ///
    /// `gradientReady(i)` is called once per parameter, for i = `parameters.count − 1` down to 0, as soon
    /// as `parameters[i].gradient` is final; from then on the pass neither reads nor writes that gradient
    /// (it still reads `values`), so the callee may start reducing it in place on another thread. The
    /// values must not change before the call returns.
    /// - Parameters:
    ///   - images: `count` inputs of `inputSize` floats each, row after row.
    ///   - labels: `count` class indices, each below `classCount`.
    ///   - count: the batch size, > 0.
    ///   - gradientReady: called with a parameter index when its gradient is final.
    /// - Returns: the mean loss over the batch and how many argmax predictions equal the label.
    @discardableResult
    public func forwardBackward(
        images: UnsafeBufferPointer<Float>, labels: UnsafeBufferPointer<UInt8>, count: Int,
        gradientReady: (Int) -> Void = { _ in }
    ) -> (loss: Float, correct: Int) {
        precondition(count > 0, "forwardBackward: empty batch")
        precondition(
            images.count >= count * inputSize,
            "forwardBackward: \(images.count) floats for \(count) images of \(inputSize)")
        precondition(labels.count >= count, "forwardBackward: \(labels.count) labels for \(count) images")
        let input = images.baseAddress!
        forward(input, count: count)
        let result = softmaxCrossEntropy(labels: labels, count: count, writeGradient: true)
        let last = layerCount
        for l in stride(from: last, through: 1, by: -1) {
            let fanIn = layerSizes[l - 1]
            let fanOut = layerSizes[l]
            let weights = parameters[2 * (l - 1)]
            let bias = parameters[2 * (l - 1) + 1]
            let dZ = UnsafePointer(activations[l - 1].baseAddress!)
            let layerInput = l == 1 ? input : UnsafePointer(activations[l - 2].baseAddress!)
            Elementwise.columnSums(dZ, rows: count, cols: fanOut, into: bias.gradient.baseAddress!)
            gradientReady(2 * (l - 1) + 1)
            GEMM.aTransposedTimesB(
                m: fanIn, n: fanOut, k: count, a: layerInput, b: dZ, c: weights.gradient.baseAddress!)
            gradientReady(2 * (l - 1))
            if l > 1 {
                GEMM.aTimesBTransposed(
                    m: count, n: fanIn, k: fanOut, a: dZ, b: weights.values.baseAddress!,
                    c: upstream.baseAddress!)
                Elementwise.reluBackward(
                    activation: activations[l - 2].baseAddress!, upstream: upstream.baseAddress!,
                    count: count * fanIn)
            }
        }
        return result
    }

    /// `forwardBackward(images:labels:count:gradientReady:)` on arrays (a convenience for tests and small
    /// tools).
    /// - Parameters:
    ///   - images: `count × inputSize` floats.
    ///   - labels: `count` class indices.
    ///   - count: the batch size; defaults to `labels.count`.
    ///   - gradientReady: called with a parameter index when its gradient is final.
    /// - Returns: the mean loss and the number of correct predictions.
    @discardableResult
    public func forwardBackward(
        images: [Float], labels: [UInt8], count: Int? = nil, gradientReady: (Int) -> Void = { _ in }
    ) -> (loss: Float, correct: Int) {
        images.withUnsafeBufferPointer { imageBuffer in
            labels.withUnsafeBufferPointer { labelBuffer in
                forwardBackward(
                    images: imageBuffer, labels: labelBuffer, count: count ?? labels.count,
                    gradientReady: gradientReady)
            }
        }
    }

    /// One step of SGD with momentum on every parameter, from its current `gradient`:
    /// `g = gradient + weightDecay·w` (weights only, not biases); `v = momentum·v + g`; `w −= learningRate·v`.
    /// The same inputs give the same bits on every process (IEEE single precision, fixed order).
    /// - Parameters:
    ///   - learningRate: the step size.
    ///   - momentum: the velocity decay, e.g. 0.9 (0 for plain SGD).
    ///   - weightDecay: the L2 coefficient, e.g. 5e-4 (0 for none).
    public func apply(learningRate: Float, momentum: Float, weightDecay: Float) {
        for (parameter, velocity) in zip(parameters, velocities) {
            Elementwise.momentumStep(
                values: parameter.values.baseAddress!, gradient: parameter.gradient.baseAddress!,
                velocity: velocity.baseAddress!, count: parameter.count, rate: learningRate, momentum: momentum,
                decay: parameter.decays ? weightDecay : 0)
        }
    }

    // MARK: - Inference

    /// The most likely class of each input (the first maximum of the logits).
    /// - Parameters:
    ///   - images: `count` inputs of `inputSize` floats each.
    ///   - count: how many inputs; any number ≥ 0 (large counts run in batches of at most 1024).
    /// - Returns: `count` class indices.
    public func predict(images: UnsafeBufferPointer<Float>, count: Int) -> [UInt8] {
        precondition(images.count >= count * inputSize, "predict: \(images.count) floats for \(count) images")
        var result: [UInt8] = []
        result.reserveCapacity(count)
        var start = 0
        while start < count {
            let n = min(count - start, max(batchCapacity, 1024))
            forward(images.baseAddress! + start * inputSize, count: n)
            let logits = activations[layerCount - 1].baseAddress!
            for i in 0..<n { result.append(UInt8(argmax(logits + i * classCount))) }
            start += n
        }
        return result
    }

    /// `predict(images:count:)` on an array of `count × inputSize` floats.
    /// - Parameter images: whole inputs, row after row.
    /// - Returns: one class index per input.
    public func predict(images: [Float]) -> [UInt8] {
        images.withUnsafeBufferPointer { predict(images: $0, count: $0.count / inputSize) }
    }

    /// The mean loss and the number of correct predictions over a whole data set (forward only; the
    /// gradients are left alone).
    /// - Parameters:
    ///   - dataset: images of `inputSize` pixels, labels below `classCount`.
    ///   - batchSize: inputs per forward pass.
    /// - Returns: the mean loss and the count of correct predictions (0 and 0 for an empty set).
    public func evaluate(_ dataset: Dataset, batchSize: Int = 1024) -> (loss: Float, correct: Int) {
        precondition(dataset.pixelsPerImage == inputSize, "evaluate: images of \(dataset.pixelsPerImage) pixels")
        precondition(batchSize > 0, "evaluate: batch size \(batchSize)")
        var lossSum = 0.0
        var correct = 0
        dataset.images.withUnsafeBufferPointer { images in
            dataset.labels.withUnsafeBufferPointer { labels in
                var start = 0
                while start < dataset.count {
                    let n = min(batchSize, dataset.count - start)
                    forward(images.baseAddress! + start * inputSize, count: n)
                    let batchLabels = UnsafeBufferPointer(rebasing: labels[start..<start + n])
                    let result = softmaxCrossEntropy(labels: batchLabels, count: n, writeGradient: false)
                    lossSum += Double(result.loss) * Double(n)
                    correct += result.correct
                    start += n
                }
            }
        }
        return (dataset.count == 0 ? 0 : Float(lossSum / Double(dataset.count)), correct)
    }

    // MARK: - Replicas

    /// FNV-1a (64-bit) over the bit patterns of all parameter values, in `parameters` order, each float
    /// as its four little-endian bytes: equal checksums mean (with overwhelming likelihood) bit-identical
    /// replicas.
    public func checksum() -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for parameter in parameters {
            for value in parameter.values {
                var bits = value.bitPattern
                for _ in 0..<4 {
                    hash = (hash ^ UInt64(bits & 0xFF)) &* 0x0000_0100_0000_01B3
                    bits >>= 8
                }
            }
        }
        return hash
    }

    /// Sizes the scratch buffers for batches of up to `batchSize` inputs now, so that no later step of
    /// that size allocates. `forwardBackward` and `predict` call it as needed.
    /// - Parameter batchSize: the largest batch to come.
    public func reserve(batchSize: Int) {
        guard batchSize > batchCapacity else { return }
        releaseScratch()
        activations = layerSizes.dropFirst().map { Parameter.allocateZeroed(batchSize * $0) }
        let widestHidden = layerSizes.dropFirst().dropLast().max() ?? 0
        upstream = Parameter.allocateZeroed(batchSize * widestHidden)
        batchCapacity = batchSize
    }

    // MARK: - Passes

    /// Aₗ for every layer (logits last) into `activations`.
    private func forward(_ input: UnsafePointer<Float>, count: Int) {
        reserve(batchSize: count)
        var x = input
        for l in 1...layerCount {
            let output = activations[l - 1].baseAddress!
            GEMM.aTimesB(
                m: count, n: layerSizes[l], k: layerSizes[l - 1], a: x, b: parameters[2 * (l - 1)].values.baseAddress!,
                c: output)
            Elementwise.addBias(
                output, rows: count, cols: layerSizes[l], bias: parameters[2 * (l - 1) + 1].values.baseAddress!,
                relu: l < layerCount)
            x = UnsafePointer(output)
        }
    }

    /// Loss and accuracy from the logits; with `writeGradient`, replaces the logits by dZ_L =
    /// (softmax − onehot) / count.
    private func softmaxCrossEntropy(
        labels: UnsafeBufferPointer<UInt8>, count: Int, writeGradient: Bool
    ) -> (loss: Float, correct: Int) {
        let classes = classCount
        let logits = activations[layerCount - 1].baseAddress!
        let scale = 1 / Float(count)
        var lossSum = 0.0
        var correct = 0
        for i in 0..<count {
            let row = logits + i * classes
            let label = Int(labels[i])
            precondition(label < classes, "label \(label) at batch index \(i) is not below \(classes) classes")
            let best = argmax(row)
            if best == label { correct += 1 }
            let top = row[best]
            var sum: Float = 0
            for j in 0..<classes { sum += expf(row[j] - top) }
            lossSum += Double(logf(sum) - (row[label] - top))
            if writeGradient {
                let factor = scale / sum
                for j in 0..<classes { row[j] = expf(row[j] - top) * factor }
                row[label] -= scale
            }
        }
        return (Float(lossSum / Double(count)), correct)
    }

    /// The index of the first maximum of a row of logits.
    private func argmax(_ row: UnsafePointer<Float>) -> Int {
        var best = 0
        for j in 1..<classCount where row[j] > row[best] { best = j }
        return best
    }

    private func releaseScratch() {
        for buffer in activations { UnsafeMutableRawPointer(buffer.baseAddress!).deallocate() }
        activations = []
        if let base = upstream.baseAddress { UnsafeMutableRawPointer(base).deallocate() }
        upstream = UnsafeMutableBufferPointer(start: nil, count: 0)
        batchCapacity = 0
    }
}

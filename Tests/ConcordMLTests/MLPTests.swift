// The MLP against a double-precision reference (loss and finite-difference gradients), the order and
// finality of `gradientReady`, overwrite-not-accumulate, the mean over the batch (what data-parallel
// averaging relies on), the SGD update, determinism of initialization and checksum, and that training on
// synthetic digits lowers the loss.
import ConcordML
import Foundation
import XCTest

final class MLPTests: XCTestCase {
    /// A small batch of distinct inputs in 0…1 and labels covering the classes.
    func batch(count: Int, inputs: Int, classes: Int, seed: UInt64) -> (images: [Float], labels: [UInt8]) {
        var random = SplitMix64(seed: seed)
        let images = (0..<count * inputs).map { _ in random.nextFloat() }
        let labels = (0..<count).map { UInt8(($0 * 7 + 3) % classes) }
        return (images, labels)
    }

    // MARK: - Gradients

    /// Analytical gradients against central differences of a float64 re-implementation of the loss.
    /// Tolerance: |analytic − numeric| ≤ 2e-5 + 1e-3 · |numeric| (the analytic side is float32; the numeric
    /// side, with h = 1e-6 in float64, is accurate to ~1e-9).
    func testGradientsMatchFiniteDifferencesInDouble() {
        for sizes in [[5, 7, 4, 3], [6, 3], [4, 9, 2]] {
            let model = MLP(layerSizes: sizes, seed: 11)
            // Non-zero biases so that their gradients flow through the check too.
            for parameter in model.parameters where !parameter.decays {
                for i in parameter.values.indices { parameter.values[i] = 0.05 * Float(i % 3) - 0.04 }
            }
            let (images, labels) = batch(count: 4, inputs: sizes[0], classes: sizes.last!, seed: 3)
            let result = model.forwardBackward(images: images, labels: labels)
            var reference = ReferenceMLP(model)
            let referenceLoss = reference.loss(images, labels)
            XCTAssertEqual(Double(result.loss), referenceLoss, accuracy: 1e-5 * max(1, referenceLoss), "loss \(sizes)")

            var checked = 0
            for (p, parameter) in model.parameters.enumerated() {
                for i in 0..<parameter.count {
                    let h = 1e-6
                    let saved = reference.parameters[p][i]
                    reference.parameters[p][i] = saved + h
                    let up = reference.loss(images, labels)
                    reference.parameters[p][i] = saved - h
                    let down = reference.loss(images, labels)
                    reference.parameters[p][i] = saved
                    let numeric = (up - down) / (2 * h)
                    let analytic = Double(parameter.gradient[i])
                    XCTAssertEqual(
                        analytic, numeric, accuracy: 2e-5 + 1e-3 * abs(numeric),
                        "\(sizes) \(parameter.name)[\(i)]")
                    checked += 1
                }
            }
            XCTAssertEqual(checked, model.parameterCount)
            XCTAssertTrue(
                model.parameters.contains { $0.gradient.contains { abs($0) > 1e-3 } }, "gradients are not all ~0")
        }
    }

    func testGradientReadyCalledOnceEachInReverseOrderWithFinalGradients() {
        let model = MLP(layerSizes: [10, 8, 6, 4], seed: 5)
        let (images, labels) = batch(count: 5, inputs: 10, classes: 4, seed: 9)
        var order: [Int] = []
        var snapshots: [Int: [Float]] = [:]
        model.forwardBackward(images: images, labels: labels) { index in
            order.append(index)
            snapshots[index] = Array(model.parameters[index].gradient)
        }
        XCTAssertEqual(order, [5, 4, 3, 2, 1, 0], "b3, W3, b2, W2, b1, W1")
        for (index, parameter) in model.parameters.enumerated() {
            XCTAssertEqual(snapshots[index], Array(parameter.gradient), "\(parameter.name) changed after gradientReady")
        }
    }

    func testGradientIsOverwrittenNotAccumulated() {
        let model = MLP(layerSizes: [6, 5, 3], seed: 2)
        let (images, labels) = batch(count: 3, inputs: 6, classes: 3, seed: 4)
        model.forwardBackward(images: images, labels: labels)
        let first = model.parameters.map { Array($0.gradient) }
        model.forwardBackward(images: images, labels: labels)
        XCTAssertEqual(model.parameters.map { Array($0.gradient) }, first)
        XCTAssertTrue(first.joined().contains { $0 != 0 })
    }

    /// The gradient of the mean loss over a batch equals the average of the gradients over its halves: the
    /// premise of data-parallel averaging. Also: a batch of two copies of an image gives that image's loss.
    func testBatchMeanMatchesAverageOfHalves() {
        let model = MLP(layerSizes: [8, 6, 4], seed: 21)
        let (images, labels) = batch(count: 6, inputs: 8, classes: 4, seed: 8)
        let whole = model.forwardBackward(images: images, labels: labels)
        let wholeGradients = model.parameters.map { Array($0.gradient) }
        let left = model.forwardBackward(images: Array(images[0..<24]), labels: Array(labels[0..<3]))
        let leftGradients = model.parameters.map { Array($0.gradient) }
        let right = model.forwardBackward(images: Array(images[24...]), labels: Array(labels[3...]))
        XCTAssertEqual(whole.loss, (left.loss + right.loss) / 2, accuracy: 1e-6)
        XCTAssertEqual(whole.correct, left.correct + right.correct)
        for (p, parameter) in model.parameters.enumerated() {
            for i in 0..<parameter.count {
                XCTAssertEqual(
                    wholeGradients[p][i], (leftGradients[p][i] + parameter.gradient[i]) / 2, accuracy: 1e-6,
                    "\(parameter.name)[\(i)]")
            }
        }

        let single = model.forwardBackward(images: Array(images[0..<8]), labels: [labels[0]])
        let singleGradients = model.parameters.map { Array($0.gradient) }
        let doubled = model.forwardBackward(
            images: Array(images[0..<8]) + Array(images[0..<8]), labels: [labels[0], labels[0]])
        XCTAssertEqual(single.loss, doubled.loss, accuracy: 1e-6)
        for (p, parameter) in model.parameters.enumerated() {
            for i in 0..<parameter.count {
                XCTAssertEqual(singleGradients[p][i], parameter.gradient[i], accuracy: 1e-6)
            }
        }
    }

    func testScratchGrowthGivesSameResultsAsFreshModel() {
        let grown = MLP(layerSizes: [7, 5, 3], seed: 1)
        let (small, smallLabels) = batch(count: 2, inputs: 7, classes: 3, seed: 1)
        let (large, largeLabels) = batch(count: 9, inputs: 7, classes: 3, seed: 2)
        grown.forwardBackward(images: small, labels: smallLabels)
        let grownLarge = grown.forwardBackward(images: large, labels: largeLabels)
        XCTAssertGreaterThanOrEqual(grown.batchCapacity, 9)
        let fresh = MLP(layerSizes: [7, 5, 3], seed: 1)
        let freshLarge = fresh.forwardBackward(images: large, labels: largeLabels)
        XCTAssertEqual(grownLarge.loss, freshLarge.loss)
        XCTAssertEqual(grown.parameters.map { Array($0.gradient) }, fresh.parameters.map { Array($0.gradient) })
        // And back to a smaller batch in the larger buffers.
        let again = grown.forwardBackward(images: small, labels: smallLabels)
        let freshSmall = MLP(layerSizes: [7, 5, 3], seed: 1).forwardBackward(images: small, labels: smallLabels)
        XCTAssertEqual(again.loss, freshSmall.loss)
    }

    // MARK: - Initialization, update, checksum

    func testHeUniformInitializationIsDeterministicAndBounded() {
        let a = MLP(layerSizes: [784, 64, 10], seed: 42)
        let b = MLP(layerSizes: [784, 64, 10], seed: 42)
        let c = MLP(layerSizes: [784, 64, 10], seed: 43)
        XCTAssertEqual(a.checksum(), b.checksum())
        XCTAssertNotEqual(a.checksum(), c.checksum())
        XCTAssertEqual(a.parameters.map(\.name), ["W1", "b1", "W2", "b2"])
        XCTAssertEqual(a.parameters.map(\.count), [784 * 64, 64, 64 * 10, 10])
        XCTAssertEqual(a.parameterCount, 784 * 64 + 64 + 640 + 10)
        let w1 = Array(a.parameters[0].values)
        let bound = (6.0 / 784).squareRoot()
        XCTAssertLessThanOrEqual(w1.map { abs(Double($0)) }.max()!, bound)
        let variance = w1.map { Double($0) * Double($0) }.reduce(0, +) / Double(w1.count)
        XCTAssertEqual(variance, 2.0 / 784, accuracy: 0.05 * 2.0 / 784, "He variance 2 / fan-in")
        XCTAssertTrue(a.parameters[1].values.allSatisfy { $0 == 0 }, "biases start at zero")
        for parameter in a.parameters {
            XCTAssertEqual(Int(bitPattern: parameter.values.baseAddress!) % 64, 0, "\(parameter.name) 64-byte aligned")
        }
    }

    func testChecksumSeesOneBit() {
        let model = MLP(layerSizes: [4, 3, 2], seed: 7)
        let before = model.checksum()
        model.parameters[3].values[1] = model.parameters[3].values[1].nextUp
        XCTAssertNotEqual(model.checksum(), before)
        model.parameters[3].values[1] = model.parameters[3].values[1].nextDown
        XCTAssertEqual(model.checksum(), before)
    }

    func testMomentumUpdateAndWeightDecayOnWeightsOnly() {
        // 17 weights: one whole SIMD16 vector and a scalar tail.
        let model = MLP(layerSizes: [17, 1, 1], seed: 3)
        let w = model.parameters[0]
        let b = model.parameters[1]
        b.values[0] = 0.5
        let w0 = Array(w.values)
        for i in 0..<w.count { w.gradient[i] = Float(i) * 0.01 - 0.05 }
        b.gradient[0] = 0.2
        let (rate, momentum, decay): (Float, Float, Float) = (0.1, 0.9, 0.01)
        model.apply(learningRate: rate, momentum: momentum, weightDecay: decay)
        model.apply(learningRate: rate, momentum: momentum, weightDecay: decay)
        for i in 0..<w.count {
            let g0 = w.gradient[i]
            let v1 = g0 + decay * w0[i]
            let w1 = w0[i] - rate * v1
            let v2 = momentum * v1 + (g0 + decay * w1)
            XCTAssertEqual(w.values[i], w1 - rate * v2, "W1[\(i)]")
        }
        // Bias: no decay. v1 = 0.2, b1 = 0.48, v2 = 0.9·0.2 + 0.2 = 0.38, b2 = 0.48 − 0.038.
        let b1: Float = 0.5 - rate * 0.2
        XCTAssertEqual(b.values[0], b1 - rate * (momentum * 0.2 + 0.2))
    }

    // MARK: - Prediction and training

    func testPredictAgreesWithCorrectCountAndEvaluate() {
        let model = MLP(layerSizes: [784, 16, 10], seed: 9)
        let data = SyntheticDigits.make(count: 60, seed: 4)
        for _ in 0..<5 {
            model.forwardBackward(images: data.images, labels: data.labels)
            model.apply(learningRate: 0.1, momentum: 0.9, weightDecay: 0)
        }
        let result = model.forwardBackward(images: data.images, labels: data.labels)
        let predictions = model.predict(images: data.images)
        XCTAssertEqual(predictions.count, 60)
        XCTAssertEqual(zip(predictions, data.labels).filter { $0 == $1 }.count, result.correct)
        let evaluation = model.evaluate(data, batchSize: 7)
        XCTAssertEqual(evaluation.correct, result.correct)
        XCTAssertEqual(evaluation.loss, result.loss, accuracy: 1e-5)
    }

    func testTrainingOnSyntheticDigitsLowersTheLoss() {
        let data = SyntheticDigits.make(count: 400, seed: 12)
        let model = MLP(layerSizes: [784, 32, 10], seed: 1)
        let buffer = BatchBuffer(capacity: 40, pixelsPerImage: 784)
        var losses: [Float] = []
        for step in 0..<40 {
            let order = data.epochOrder(seed: 3, epoch: step / 10)
            buffer.fill(from: data, indices: order[(step % 10) * 40..<(step % 10 + 1) * 40])
            losses.append(model.forwardBackward(images: buffer.batchImages, labels: buffer.batchLabels, count: 40).loss)
            model.apply(learningRate: 0.05, momentum: 0.9, weightDecay: 1e-4)
        }
        let first = losses.prefix(4).reduce(0, +) / 4
        let last = losses.suffix(4).reduce(0, +) / 4
        XCTAssertGreaterThan(first, 1.8, "starts near ln 10 ≈ 2.3")
        XCTAssertLessThan(last, 0.6 * first, "losses: \(losses)")
        XCTAssertTrue(losses.allSatisfy(\.isFinite))
    }
}

/// The same network in float64, written the obvious way: the reference for the loss and gradients.
struct ReferenceMLP {
    var sizes: [Int]
    var parameters: [[Double]]

    init(_ model: MLP) {
        sizes = model.layerSizes
        parameters = model.parameters.map { $0.values.map(Double.init) }
    }

    /// The mean softmax cross-entropy over the batch.
    func loss(_ images: [Float], _ labels: [UInt8]) -> Double {
        let count = labels.count
        var x = images.map(Double.init)
        for l in 1..<sizes.count {
            let (fanIn, fanOut) = (sizes[l - 1], sizes[l])
            let w = parameters[2 * (l - 1)]
            let b = parameters[2 * (l - 1) + 1]
            var y = [Double](repeating: 0, count: count * fanOut)
            for i in 0..<count {
                for j in 0..<fanOut {
                    var z = b[j]
                    for p in 0..<fanIn { z += x[i * fanIn + p] * w[p * fanOut + j] }
                    y[i * fanOut + j] = l < sizes.count - 1 ? max(0, z) : z
                }
            }
            x = y
        }
        let classes = sizes.last!
        var total = 0.0
        for i in 0..<count {
            let row = x[i * classes..<(i + 1) * classes]
            let top = row.max()!
            let logSum = row.map { exp($0 - top) }.reduce(0, +)
            total += log(logSum) + top - row[i * classes + Int(labels[i])]
        }
        return total / Double(count)
    }
}

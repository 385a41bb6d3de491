// The demo's hyperparameters in one value, and the data-parallel protocol that goes with them.
//
// Data-parallel training with n ranks, every rank running the same loop:
//
//   shard      rank r holds shard r of n of the training set (`Dataset.shardRange`; synthetic digits can be
//              drawn for that range only: `SyntheticDigits.make(range:seed:)`);
//   epoch e    order = Dataset.permutation(count: shard.count, seed: shuffleSeed, epoch: e), over the shard;
//   step s     the rank's batch is order[s·b ..< (s+1)·b] with b = globalBatch / n (`localBatch(ranks:)`);
//              forwardBackward gives the gradient of the rank's mean loss; the gradients are averaged over
//              the ranks (sum, then divide by n), which is the gradient of the mean loss over the global
//              batch; every rank applies the same averaged gradient with `learningRate(step:)`, so the
//              replicas stay bit-identical (`MLP.checksum()`).
//
// The number of steps per epoch comes from the global counts (`stepsPerEpoch` = ⌊trainCount / globalBatch⌋)
// so that all ranks agree on it; every shard holds at least that many local batches, since shard sizes are
// ⌊trainCount / n⌋ or one more.
//
// `trainInOneProcess(ranks:report:)` runs exactly this loop with the n ranks simulated one after another
// in one process (the gradients averaged in rank order): the reference the distributed demo can be
// compared with, and how the defaults below were measured.

/// Hyperparameters and data for the demo trainer (`concord-train`), with their recommended values in
/// `demo`.
public struct TrainingRecipe: Sendable, Equatable {
    /// MLP layer sizes, input first.
    public var layerSizes: [Int]
    /// Synthetic training images.
    public var trainCount: Int
    /// Synthetic test images.
    public var testCount: Int
    /// Images per step over all ranks; divisible by the number of ranks.
    public var globalBatch: Int
    /// The peak learning rate, reached after the warm-up.
    public var learningRate: Float
    /// Steps of linear warm-up from `learningRate / warmupSteps` to `learningRate`.
    public var warmupSteps: Int
    /// The learning rate at the last step, as a fraction of the peak (cosine decay after the warm-up).
    public var finalLearningRateFraction: Float
    /// SGD momentum.
    public var momentum: Float
    /// L2 weight decay on weights (not biases).
    public var weightDecay: Float
    /// Passes over the training set.
    public var epochs: Int
    /// Seed of the synthetic training set.
    public var trainSeed: UInt64
    /// Seed of the synthetic test set (different from `trainSeed`: unseen images).
    public var testSeed: UInt64
    /// Seed of the model initialization (`MLP(layerSizes:seed:)`).
    public var modelSeed: UInt64
    /// Seed of the epoch orders (`Dataset.permutation`).
    public var shuffleSeed: UInt64

    /// The defaults for the demo: see `demo`.
    public init(
        layerSizes: [Int] = [784, 256, 128, 10], trainCount: Int = 100_000, testCount: Int = 10_000,
        globalBatch: Int = 256, learningRate: Float = 0.1, warmupSteps: Int = 50,
        finalLearningRateFraction: Float = 0.02, momentum: Float = 0.9, weightDecay: Float = 5e-4, epochs: Int = 8,
        trainSeed: UInt64 = 1, testSeed: UInt64 = 2, modelSeed: UInt64 = 42, shuffleSeed: UInt64 = 7
    ) {
        self.layerSizes = layerSizes
        self.trainCount = trainCount
        self.testCount = testCount
        self.globalBatch = globalBatch
        self.learningRate = learningRate
        self.warmupSteps = warmupSteps
        self.finalLearningRateFraction = finalLearningRateFraction
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.epochs = epochs
        self.trainSeed = trainSeed
        self.testSeed = testSeed
        self.modelSeed = modelSeed
        self.shuffleSeed = shuffleSeed
    }

    /// The recommended demo: MLP 784-256-128-10 on 100 000 synthetic digits (10 000 for testing), 8 epochs
    /// of 390 steps with a global batch of 256 (64 per rank with 4 ranks), learning rate 0.1 after a 50-step
    /// warm-up, cosine decay to 0.002, momentum 0.9, weight decay 5e-4.
    ///
    /// Measured with `trainInOneProcess(ranks: 4)` in a release build with `-Xcc -march=x86-64-v3` on one
    /// core of this project's 2-core Xeon (`TrainingRecipeTests.testMeasureDemoRecipe`): 2.4–3.4 s per epoch
    /// (20–25 s for the 8 epochs, depending on the load from other processes), plus 2.3 s to draw the
    /// data; test accuracy per epoch 94.1, 95.7, 96.0, 96.5, 96.9, 97.1, 97.3, 97.3 %. A plain x86-64
    /// (SSE2) build takes about 7 s per epoch.
    public static let demo = TrainingRecipe()

    /// Steps per epoch: ⌊trainCount / globalBatch⌋, the same on every rank.
    public var stepsPerEpoch: Int { trainCount / globalBatch }

    /// Steps over all epochs.
    public var totalSteps: Int { stepsPerEpoch * epochs }

    /// Images per rank per step.
    /// - Parameter ranks: the number of ranks; must divide `globalBatch`.
    public func localBatch(ranks: Int) -> Int {
        precondition(
            ranks > 0 && globalBatch % ranks == 0, "global batch \(globalBatch) is not divisible by \(ranks) ranks")
        return globalBatch / ranks
    }

    /// The learning rate of step `step` (counted from 0 over all epochs): linear warm-up over
    /// `warmupSteps`, then cosine decay from `learningRate` to `learningRate · finalLearningRateFraction`
    /// at the last step. Plain float arithmetic with a polynomial cosine: the same bits on every rank.
    /// - Parameter step: the global step number.
    public func learningRate(step: Int) -> Float {
        if step < warmupSteps { return learningRate * Float(step + 1) / Float(warmupSteps) }
        let decaySteps = max(1, totalSteps - warmupSteps - 1)
        let progress = min(1, Double(step - warmupSteps) / Double(decaySteps))
        let cosine = sinCos(degrees: 180 * progress).cos
        let floor = Double(finalLearningRateFraction)
        return learningRate * Float(floor + (1 - floor) * 0.5 * (1 + cosine))
    }

    /// The synthetic training set, or shard `rank` of `ranks` of it (drawn for that range only).
    /// - Parameters:
    ///   - rank: the shard, in 0..<ranks.
    ///   - ranks: the number of shards.
    public func trainingShard(_ rank: Int = 0, of ranks: Int = 1) -> Dataset {
        SyntheticDigits.make(range: Dataset.shardRange(rank, of: ranks, count: trainCount), seed: trainSeed)
    }

    /// The synthetic test set.
    public func testSet() -> Dataset { SyntheticDigits.make(count: testCount, seed: testSeed) }

    /// What `trainInOneProcess` reports after each epoch.
    public struct EpochReport: Sendable {
        /// The epoch, from 1.
        public var epoch: Int
        /// The mean training loss over the epoch's steps.
        public var trainLoss: Float
        /// Training accuracy over the epoch's batches (as seen during training).
        public var trainAccuracy: Double
        /// Accuracy on the test set after the epoch.
        public var testAccuracy: Double
        /// Wall-clock seconds of the epoch's training steps (without the test evaluation).
        public var seconds: Double
        /// `MLP.checksum()` after the epoch.
        public var checksum: UInt64
    }

    /// Runs the data-parallel protocol with `ranks` simulated ranks in one process, one after another
    /// (each rank's gradient is computed on its own shard and batch; the gradients are averaged in rank
    /// order and applied once), and evaluates on the test set after every epoch.
    /// - Parameters:
    ///   - ranks: simulated ranks; must divide `globalBatch`.
    ///   - train: the training set (`trainingShard()` by default, i.e. all of it).
    ///   - test: the test set (`testSet()` by default).
    ///   - report: called after each epoch.
    /// - Returns: the trained model.
    @discardableResult
    public func trainInOneProcess(
        ranks: Int = 4, train: Dataset? = nil, test: Dataset? = nil, report: (EpochReport) -> Void = { _ in }
    ) -> MLP {
        let local = localBatch(ranks: ranks)
        let train = train ?? trainingShard()
        let test = test ?? testSet()
        let shards = (0..<ranks).map { train.shard($0, of: ranks) }
        let model = MLP(layerSizes: layerSizes, seed: modelSeed)
        model.reserve(batchSize: local)
        let batch = BatchBuffer(capacity: local, pixelsPerImage: train.pixelsPerImage)
        var gradientSums = model.parameters.map { [Float](repeating: 0, count: $0.count) }
        let steps = train.count / globalBatch
        let clock = ContinuousClock()
        var step = 0
        for epoch in 0..<epochs {
            let orders = shards.map { $0.epochOrder(seed: shuffleSeed, epoch: epoch) }
            var lossSum = 0.0
            var correct = 0
            let start = clock.now
            for s in 0..<steps {
                for rank in 0..<ranks {
                    batch.fill(from: shards[rank], indices: orders[rank][s * local..<(s + 1) * local])
                    let result = model.forwardBackward(
                        images: batch.batchImages, labels: batch.batchLabels, count: local)
                    lossSum += Double(result.loss)
                    correct += result.correct
                    for (p, parameter) in model.parameters.enumerated() {
                        gradientSums[p].withUnsafeMutableBufferPointer { sum in
                            for i in 0..<sum.count {
                                sum[i] = rank == 0 ? parameter.gradient[i] : sum[i] + parameter.gradient[i]
                            }
                        }
                    }
                }
                let scale = 1 / Float(ranks)
                for (p, parameter) in model.parameters.enumerated() {
                    for i in 0..<parameter.count { parameter.gradient[i] = gradientSums[p][i] * scale }
                }
                model.apply(learningRate: learningRate(step: step), momentum: momentum, weightDecay: weightDecay)
                step += 1
            }
            let elapsed = (clock.now - start).components
            let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) * 1e-18
            let evaluation = model.evaluate(test)
            report(
                EpochReport(
                    epoch: epoch + 1, trainLoss: Float(lossSum / Double(max(1, steps * ranks))),
                    trainAccuracy: Double(correct) / Double(max(1, steps * globalBatch)),
                    testAccuracy: Double(evaluation.correct) / Double(max(1, test.count)), seconds: seconds,
                    checksum: model.checksum()))
        }
        return model
    }
}

// The training loop of concord-train, one rank's view.
//
//   global batch B = Σ_r b_r           b_r: rank r's local batch (equal shares, --batch-shares, or --balance)
//   steps per epoch = ⌊train / B⌋      the same on every rank
//   shard of rank r = b_r · steps consecutive images, after the shards of ranks < r
//
//   one step:  beginStep(weight: b_r) → forward, backward (each gradient marked ready as backward makes it;
//              buckets go on the wire at once) → finish() (the gradient of the mean loss over all B
//              images) → SGD with momentum, identical on every rank
//
// Time of a step splits into compute (forward, backward, update, on this thread) and exposed communication
// (the time `finish` waited); the synchronizer also reports how much of the communication ran hidden
// behind backward.
import Concord
import ConcordML
import Foundation

struct Trainer {
    let options: TrainCommand
    let comm: Communicator
    let recipe: TrainingRecipe
    let train: Dataset
    let test: Dataset
    let dataName: String
    let model: MLP
    let sync: GradientSynchronizer
    var rank: Int { comm.rank }
    var n: Int { comm.worldSize }

    init(options: TrainCommand, communicator: Communicator) throws {
        self.options = options
        self.comm = communicator
        var recipe = TrainingRecipe()
        if let epochs = options.epochs { recipe.epochs = epochs }
        if let batch = options.globalBatch { recipe.globalBatch = batch }
        if let lr = options.lr { recipe.learningRate = lr }
        if let size = options.trainSize { recipe.trainCount = size }
        if let size = options.testSize { recipe.testCount = size }
        if let seed = options.seed {
            (recipe.trainSeed, recipe.testSeed, recipe.modelSeed, recipe.shuffleSeed) = (seed, seed &+ 1, seed &+ 2, seed &+ 3)
        }
        guard recipe.globalBatch >= communicator.worldSize else {
            throw TrainerError("the global batch (\(recipe.globalBatch)) must hold at least one image per rank (\(communicator.worldSize))")
        }
        self.recipe = recipe
        if let directory = options.data {
            do {
                (train, test) = try IDX.load(directory: directory)
            } catch {
                throw TrainerError("\(error)")
            }
            dataName = "IDX files in \(directory)"
        } else {
            // Every rank draws only its own shard (`Shards`), and the whole test set.
            train = Dataset(images: [], labels: [], rows: SyntheticDigits.rows, cols: SyntheticDigits.cols)
            test = recipe.testSet()
            dataName = "synthetic digits"
        }
        var layers = recipe.layerSizes
        if let hidden = options.hidden.flatMap(TrainCommand.parseHidden) {
            layers = [layers[0]] + hidden + [layers.last!]
        }
        layers[0] = train.rows * train.cols
        var saved: [[Float]]?
        if let path = options.load {
            let file = try Checkpoint.read(path)
            layers = file.layerSizes
            saved = file.values
        }
        guard layers.first == train.rows * train.cols, layers.last! >= train.classes else {
            throw TrainerError(
                "the model's layers \(layers.map(String.init).joined(separator: "-")) do not fit \(train.rows)x\(train.cols) images of \(train.classes) classes")
        }
        model = MLP(layerSizes: layers, seed: recipe.modelSeed)
        if let saved {
            for (parameter, values) in zip(model.parameters, saved) {
                _ = parameter.values.update(fromContentsOf: values)
            }
        }
        // Every replica starts from rank 0's parameters (identical by seed already; this also carries a
        // checkpoint that only rank 0 could read).
        for parameter in model.parameters {
            try communicator.broadcastBlocking(parameter.values, root: 0)
        }
        if let policy = options.capacity.flatMap(CapacityPolicy.init) { communicator.capacityPolicy = policy }
        sync = GradientSynchronizer(
            communicator: communicator,
            options: .init(
                firstBucketBytes: options.firstBucketKib << 10, bucketBytes: options.bucketKib << 10,
                compression: options.compression))
        for parameter in model.parameters {
            sync.register(parameter.gradient, name: parameter.name)
        }
    }

    mutating func run() throws {
        let shares = try batchShares()
        let local = Self.split(recipe.globalBatch, by: shares)
        let trainCount = options.data == nil ? recipe.trainCount : train.count
        let fullSteps = trainCount / recipe.globalBatch
        guard fullSteps >= 1 else {
            throw TrainerError("the training set (\(trainCount) images) is smaller than one global batch (\(recipe.globalBatch))")
        }
        let steps = min(fullSteps, options.steps ?? fullSteps)
        let start = local[..<rank].reduce(0, +) * fullSteps
        let range = start..<(start + local[rank] * fullSteps)
        let shard = options.data == nil ? SyntheticDigits.make(range: range, seed: recipe.trainSeed) : train.subset(range)
        let testShard = test.shard(rank, of: n)
        let parameterCount = model.parameters.reduce(0) { $0 + $1.count }
        say(
            "concord-train: \(n) rank\(n == 1 ? "" : "s"), \(dataName): \(trainCount) train / \(test.count) test images, model \(model.layerSizes.map(String.init).joined(separator: "-")) (\(parameterCount) parameters)"
        )
        if comm.capacityPolicy != .off {
            let links = try comm.measureLinksBlocking()
            say("  capacity policy \(comm.capacityPolicy); links (MB/s): " + links.map { String(format: "%.1f", $0.bytesPerSecond / 1e6) }.joined(separator: ", "))
            if let plan = comm.capacityPlan?.plan {
                for line in plan.description.split(separator: "\n") { say("    \(line)") }
            }
        }
        say(
            "  global batch \(recipe.globalBatch) = \(local.map(String.init).joined(separator: "+")) per rank, \(steps) steps per epoch, compression \(options.compression), \(sync.bucketLayout.count) bucket\(sync.bucketLayout.count == 1 ? "" : "s") per step"
        )

        var summary = Summary(
            ranks: n, compression: options.compression.rawValue, globalBatch: recipe.globalBatch, localBatches: local)
        let batchImages = UnsafeMutableBufferPointer<Float>.allocate(capacity: local[rank] * shard.rows * shard.cols)
        defer { batchImages.deallocate() }
        var batchLabels = [UInt8](repeating: 0, count: local[rank])
        let clock = ContinuousClock()
        let trainingStart = clock.now

        for epoch in 0..<recipe.epochs {
            let order = Dataset.permutation(count: shard.count, seed: recipe.shuffleSeed &+ UInt64(rank), epoch: epoch)
            var totals = EpochTotals()
            let epochStart = clock.now
            var nextProgress = 1
            for step in 0..<steps {
                // The batch: local[rank] images of this rank's shard, in this epoch's order.
                batchLabels.withUnsafeMutableBufferPointer { labels in
                    shard.gather(order[(step * local[rank])..<((step + 1) * local[rank])], images: batchImages, labels: labels)
                }
                let t0 = clock.now
                sync.beginStep(weight: Double(local[rank]))
                var markError: (any Error)?
                let result = batchLabels.withUnsafeBufferPointer { labels in
                    model.forwardBackward(
                        images: UnsafeBufferPointer(batchImages), labels: labels, count: local[rank]
                    ) { index in
                        if markError == nil {
                            do { try sync.markReady(index) } catch { markError = error }
                        }
                    }
                }
                if let markError { throw markError }
                let t1 = clock.now
                let report = try sync.finish()
                summary.gradientBytes = report.gradientBytes
                summary.wireBytes = report.wireBytes
                let t2 = clock.now
                model.apply(
                    learningRate: recipe.learningRate(step: epoch * fullSteps + step),
                    momentum: recipe.momentum, weightDecay: recipe.weightDecay)
                let t3 = clock.now
                totals.add(
                    loss: Double(result.loss) * Double(local[rank]), correct: result.correct, images: local[rank],
                    compute: (t1 - t0).seconds + (t3 - t2).seconds, exposed: (t2 - t1).seconds, report: report)
                if !options.quiet && rank == 0 && (step + 1) * 4 >= nextProgress * steps && step + 1 < steps {
                    let elapsed = (clock.now - epochStart).seconds
                    say(
                        String(
                            format: "  epoch %d  %3d%%  step %d/%d  loss %.4f  %.0f images/s", epoch + 1,
                            (step + 1) * 100 / steps, step + 1, steps, totals.loss / Double(max(totals.images, 1)),
                            Double((step + 1) * recipe.globalBatch) / max(elapsed, 1e-9)))
                    nextProgress += 1
                }
            }
            let epochSeconds = (clock.now - epochStart).seconds
            // Loss and accuracy over all ranks' images; the time split averaged over the ranks; the epoch's
            // time is the slowest rank's.
            var sums = [totals.loss, Double(totals.correct), Double(totals.images)]
            try comm.allReduceBlocking(&sums, op: .sum)
            var times = [totals.compute, totals.exposed, totals.communication]
            try comm.allReduceBlocking(&times, op: .avg)
            var slowest = [epochSeconds]
            try comm.allReduceBlocking(&slowest, op: .max)
            times.append(slowest[0])
            let accuracy = try evaluate(testShard).accuracy
            let images = Double(steps * recipe.globalBatch)
            let line = EpochLine(
                epoch: epoch + 1, loss: sums[0] / sums[2], trainAccuracy: sums[1] / sums[2], testAccuracy: accuracy,
                imagesPerSecond: images / times[3], computeSeconds: times[0], exposedSeconds: times[1],
                communicationSeconds: times[2], seconds: times[3])
            summary.epochs.append(line)
            say(line.text(of: recipe.epochs))
        }
        summary.trainingSeconds = (clock.now - trainingStart).seconds

        // Every replica must hold the same bits: compare checksums of the parameters.
        let checksum = Int64(bitPattern: model.checksum())
        let all = try comm.allGatherBlocking([checksum])
        summary.replicasIdentical = all.allSatisfy { $0 == checksum }
        if summary.replicasIdentical {
            say(String(format: "replicas identical: yes, all %d ranks hold parameters with checksum %016llx", n, UInt64(bitPattern: checksum)))
        } else {
            say("replicas identical: NO, checksums " + all.map { String(format: "%016llx", UInt64(bitPattern: $0)) }.joined(separator: " "))
        }

        if options.evaluate {
            let result = try evaluate(test.shard(rank, of: n))
            summary.evaluation = result.accuracy
            say(result.report(classes: test.classes, ranks: n))
        }
        if let last = summary.epochs.last {
            let epochs = summary.epochs.count
            say(
                "summary: \(n) rank\(n == 1 ? "" : "s") trained \(epochs) epoch\(epochs == 1 ? "" : "s") in "
                    + String(format: "%.1f s to %.2f%% test accuracy (%.0f images/s in the last epoch)", summary.trainingSeconds, last.testAccuracy * 100, last.imagesPerSecond)
                    + ", compression \(options.compression), replicas \(summary.replicasIdentical ? "identical" : "DIVERGED")")
        }
        if let path = options.save, rank == 0 {
            try Checkpoint.write(model, to: path)
            say("parameters written to \(path)")
        }
        if let path = options.json, rank == 0 {
            try summary.write(to: path)
        }
        if !summary.replicasIdentical { throw TrainerError("replicas diverged: their parameters differ") }
    }

    /// Each rank's share of the global batch, the same list on every rank.
    private func batchShares() throws -> [Double] {
        if let text = options.batchShares {
            let shares = TrainCommand.parseShares(text)!
            guard shares.count == n else {
                throw TrainerError("--batch-shares lists \(shares.count) shares for \(n) ranks")
            }
            return shares
        }
        guard options.balance else { return Array(repeating: 1, count: n) }
        // Images per second of forward + backward on this rank, alone (no communication), then everyone's.
        let probe = min(32, test.count)
        let images = test.subset(0..<probe)
        let clock = ContinuousClock()
        var best = Double.infinity
        for _ in 0..<6 {
            let start = clock.now
            images.images.withUnsafeBufferPointer { pixels in
                images.labels.withUnsafeBufferPointer { labels in
                    _ = model.forwardBackward(images: pixels, labels: labels, count: probe) { _ in }
                }
            }
            best = min(best, (clock.now - start).seconds)
        }
        let rates = try comm.allGatherBlocking([Double(probe) / best])
        say("  measured images/s per rank: " + rates.map { String(format: "%.0f", $0) }.joined(separator: ", "))
        return rates
    }

    /// Splits `total` into integers proportional to `shares` (largest remainders), each at least 1.
    static func split(_ total: Int, by shares: [Double]) -> [Int] {
        let sum = shares.reduce(0, +)
        let exact = shares.map { Double(total) * $0 / sum }
        var parts = exact.map { Int($0.rounded(.down)) }
        let order = exact.indices.sorted { (exact[$0] - Double(parts[$0]), $1) > (exact[$1] - Double(parts[$1]), $0) }
        for i in order.prefix(total - parts.reduce(0, +)) { parts[i] += 1 }
        // Every rank takes part in every step: lend a zero share one image from the largest.
        for i in parts.indices where parts[i] == 0 {
            parts[parts.indices.max { parts[$0] < parts[$1] }!] -= 1
            parts[i] = 1
        }
        return parts
    }

    /// Classifies `shard` and fuses every rank's counts into one confusion matrix.
    func evaluate(_ shard: Dataset) throws -> Evaluation {
        let classes = shard.classes
        var confusion = [Int64](repeating: 0, count: classes * classes)
        let predictions = shard.images.withUnsafeBufferPointer { model.predict(images: $0, count: shard.count) }
        for (label, predicted) in zip(shard.labels, predictions) {
            confusion[Int(label) * classes + Int(min(predicted, UInt8(classes - 1)))] += 1
        }
        try comm.allReduceBlocking(&confusion, op: .sum)
        return Evaluation(classes: classes, confusion: confusion)
    }

    func say(_ line: String) {
        guard rank == 0 else { return }
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}

/// Per-epoch sums on one rank.
struct EpochTotals {
    var loss = 0.0
    var correct = 0
    var images = 0
    var compute = 0.0
    var exposed = 0.0
    var communication = 0.0

    mutating func add(
        loss: Double, correct: Int, images: Int, compute: Double, exposed: Double,
        report: GradientSynchronizer.StepReport
    ) {
        self.loss += loss
        self.correct += correct
        self.images += images
        self.compute += compute
        self.exposed += exposed
        communication += report.communicationSeconds
    }
}

// The demo recipe: consistent for 4 ranks, its learning-rate schedule, a tiny run of the data-parallel
// protocol in one process, and (CONCORD_ML_MEASURE=1, release build) the full demo measured.
import ConcordML
import XCTest

final class TrainingRecipeTests: XCTestCase {
    func testDemoRecipeFitsFourRanks() {
        let recipe = TrainingRecipe.demo
        XCTAssertEqual(recipe.localBatch(ranks: 4) * 4, recipe.globalBatch)
        XCTAssertEqual(recipe.stepsPerEpoch, recipe.trainCount / recipe.globalBatch)
        XCTAssertGreaterThan(recipe.stepsPerEpoch, recipe.warmupSteps)
        // Every shard has enough images for every step of an epoch.
        for rank in 0..<4 {
            XCTAssertGreaterThanOrEqual(
                Dataset.shardRange(rank, of: 4, count: recipe.trainCount).count,
                recipe.stepsPerEpoch * recipe.localBatch(ranks: 4))
        }
        XCTAssertEqual(recipe.layerSizes.first, 784)
        XCTAssertEqual(recipe.layerSizes.last, 10)
        XCTAssertNotEqual(recipe.trainSeed, recipe.testSeed)
    }

    func testLearningRateWarmsUpThenDecaysByCosine() {
        let recipe = TrainingRecipe(
            trainCount: 1000, globalBatch: 10, learningRate: 0.2, warmupSteps: 10, finalLearningRateFraction: 0.1,
            epochs: 2)
        XCTAssertEqual(recipe.totalSteps, 200)
        XCTAssertEqual(recipe.learningRate(step: 0), 0.02, accuracy: 1e-7)
        XCTAssertEqual(recipe.learningRate(step: 4), 0.1, accuracy: 1e-7)
        XCTAssertEqual(recipe.learningRate(step: 9), 0.2, accuracy: 1e-7)
        XCTAssertEqual(recipe.learningRate(step: 10), 0.2, accuracy: 1e-7, "peak right after the warm-up")
        XCTAssertEqual(recipe.learningRate(step: 199), 0.02, accuracy: 1e-7, "final fraction at the last step")
        // Half-way through the decay (cos 90° = 0): the mean of peak and floor.
        let middle = 10 + (199 - 10) / 2
        XCTAssertEqual(recipe.learningRate(step: middle), 0.11, accuracy: 0.002)
        let decay = (10...199).map { recipe.learningRate(step: $0) }
        XCTAssertTrue(zip(decay, decay.dropFirst()).allSatisfy { $0 >= $1 }, "non-increasing after the warm-up")
    }

    func testTinyDataParallelRunLearnsAndIsReproducible() {
        let recipe = TrainingRecipe(
            layerSizes: [784, 32, 10], trainCount: 400, testCount: 200, globalBatch: 40, learningRate: 0.2,
            warmupSteps: 3, epochs: 3)
        var reports: [TrainingRecipe.EpochReport] = []
        let train = recipe.trainingShard()
        let test = recipe.testSet()
        let model = recipe.trainInOneProcess(ranks: 4, train: train, test: test) { reports.append($0) }
        XCTAssertEqual(reports.map(\.epoch), [1, 2, 3])
        XCTAssertLessThan(reports[2].trainLoss, 0.8 * reports[0].trainLoss, "\(reports.map(\.trainLoss))")
        XCTAssertGreaterThan(reports[2].testAccuracy, 0.25, "well above chance (0.1): \(reports.map(\.testAccuracy))")
        XCTAssertEqual(reports[2].checksum, model.checksum())
        // The same recipe gives the same bits.
        let again = recipe.trainInOneProcess(ranks: 4, train: train, test: test)
        XCTAssertEqual(again.checksum(), model.checksum())
        // Shards drawn per rank are the slices of the whole set.
        XCTAssertTrue(recipe.trainingShard(1, of: 4) == train.shard(1, of: 4))
    }

    /// The demo as the 4-rank job runs it, in one process. Skipped unless CONCORD_ML_MEASURE=1; meant for a
    /// release build (`-c release -Xcc -march=x86-64-v3`), where it takes about 25 s.
    func testMeasureDemoRecipe() throws {
        try XCTSkipUnless(measuring, "set CONCORD_ML_MEASURE=1 (and build in release) to measure")
        let recipe = TrainingRecipe.demo
        let clock = ContinuousClock()
        let start = clock.now
        let train = recipe.trainingShard()
        let test = recipe.testSet()
        print("data: \(seconds(clock.now - start)) s for \(train.count) + \(test.count) images")
        var total = 0.0
        var last = 0.0
        recipe.trainInOneProcess(ranks: 4, train: train, test: test) { report in
            total += report.seconds
            last = report.testAccuracy
            print(
                "epoch \(report.epoch): \(report.seconds) s, loss \(report.trainLoss), test accuracy \(report.testAccuracy)"
            )
        }
        print("training: \(total) s")
        XCTAssertGreaterThanOrEqual(last, 0.95)
    }
}

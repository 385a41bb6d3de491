// concord-train: data-parallel training of an image classifier, one process per rank.
//
//   concord run -n 4 --discover -- concord-train              # 4 local ranks, built-in synthetic digits
//   concord run -n 2 -- concord-train --data ~/mnist          # MNIST-format IDX files, each rank its shard
//   concord run -n 4 -- concord-train --compression int8 --balance
//   concord run -n 4 -- concord-train --load model.bin --epochs 0 --evaluate
//
// Every rank builds the same model from the same seed (and takes rank 0's parameters by broadcast), reads
// its own shard of the training set, and averages gradients with a GradientSynchronizer after every
// step: buckets all-reduced during backward, compressed on the wire if asked, weighted by each rank's
// local batch. Rank 0 prints one line per epoch (loss, test accuracy, images/s, compute versus
// communication) and, at the end, whether every replica holds bit-identical parameters.
import ArgumentParser
import Concord
import ConcordML
import Foundation

@main
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "concord-train",
        abstract: "Trains an image classifier data-parallel over the ranks of a Concord job.",
        discussion: """
            Start one process per rank with a launcher, e.g.
              concord run -n 4 --discover -- concord-train
            Without --data it trains on built-in synthetic digits (28x28, drawn from a fixed seed); with
            --data DIR on MNIST-format IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
            t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte). Rank 0 prints the report.
            """)

    @Option(help: ArgumentHelp("A directory of MNIST-format IDX files (default: built-in synthetic digits).", valueName: "dir"))
    var data: String?

    @Option(help: "Passes over the training set.")
    var epochs: Int?

    @Option(help: "Images per step over all ranks.")
    var globalBatch: Int?

    @Option(help: "Learning rate at the global batch size.")
    var lr: Float?

    @Option(help: "Gradients on the wire: none, fp16, bf16 or int8 (error feedback).")
    var compression: GradientSynchronizer.Compression = .none

    @Option(
        help: ArgumentHelp(
            "Ring chunks by measured link capacity: off, weighted, or fp16/bf16/int8 (weighted, and that compression on slow links only). Default: CONCORD_CAPACITY or off.",
            valueName: "policy"))
    var capacity: String?

    @Option(help: "Capacity of the first gradient bucket in KiB (the gradients backward makes first).")
    var firstBucketKib = 1024

    @Option(help: "Capacity of every later gradient bucket in KiB.")
    var bucketKib = 25 * 1024

    @Flag(help: "Size each rank's local batch by its measured step throughput, so all ranks finish a step together.")
    var balance = false

    @Option(
        help: ArgumentHelp(
            "Each rank's share of the global batch, comma-separated (e.g. 1,1,1,3); the default is equal shares.",
            valueName: "shares"))
    var batchShares: String?

    @Option(help: ArgumentHelp("Hidden layer sizes, comma-separated (default from the recipe).", valueName: "sizes"))
    var hidden: String?

    @Option(help: "Synthetic training images (default from the recipe).")
    var trainSize: Int?

    @Option(help: "Synthetic test images (default from the recipe).")
    var testSize: Int?

    @Option(help: "Seed of the synthetic data, the model's initialization and the shuffles (default: the recipe's).")
    var seed: UInt64?

    @Option(help: "Stop each epoch after this many steps (for benchmarks).")
    var steps: Int?

    @Flag(help: "After training, classify the test set distributed over the ranks and print the confusion matrix.")
    var evaluate = false

    @Option(help: ArgumentHelp("Write the trained parameters to this file (rank 0).", valueName: "path"))
    var save: String?

    @Option(help: ArgumentHelp("Start from parameters saved with --save.", valueName: "path"))
    var load: String?

    @Option(help: ArgumentHelp("Write the run's summary as JSON to this file (rank 0).", valueName: "path"))
    var json: String?

    @Flag(help: "No progress line during epochs.")
    var quiet = false

    func validate() throws {
        if let epochs, epochs < 0 { throw ValidationError("--epochs must be at least 0") }
        if let globalBatch, globalBatch < 1 { throw ValidationError("--global-batch must be at least 1") }
        if let steps, steps < 1 { throw ValidationError("--steps must be at least 1") }
        if balance && batchShares != nil { throw ValidationError("--balance and --batch-shares exclude each other") }
        if firstBucketKib < 1 || bucketKib < 1 { throw ValidationError("bucket capacities must be at least 1 KiB") }
        if let capacity, CapacityPolicy(capacity) == nil {
            throw ValidationError("--capacity takes off, weighted, fp16, bf16 or int8")
        }
        if let hidden, Self.parseHidden(hidden) == nil {
            throw ValidationError("--hidden takes positive layer sizes separated by commas, e.g. 256,128")
        }
        if let batchShares, Self.parseShares(batchShares) == nil {
            throw ValidationError("--batch-shares takes positive numbers separated by commas, e.g. 1,1,2")
        }
    }

    static func parseHidden(_ text: String) -> [Int]? { positiveList(text, Int.init) }

    static func parseShares(_ text: String) -> [Double]? { positiveList(text, Double.init) }

    /// Comma-separated positive numbers, or nil.
    private static func positiveList<T: Comparable & Numeric>(_ text: String, _ parse: (String) -> T?) -> [T]? {
        let values = text.split(separator: ",").map { parse($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ $0 != nil && $0! > 0 }) else { return nil }
        return values.map { $0! }
    }

    func run() throws {
        var environment = ProcessInfo.processInfo.environment
        // Alone (no launcher), a world of one rank needs no secret: nobody else can join it.
        if environment["CONCORD_RANK"] == nil && environment["RANK"] == nil && environment["CONCORD_SECRET"] == nil
            && environment["CONCORD_SECRET_FILE"] == nil
        {
            environment["CONCORD_INSECURE"] = "1"
        }
        let communicator: Communicator
        do {
            communicator = try Communicator(blockingEnvironment: environment)
        } catch {
            FileHandle.standardError.write(Data("concord-train: \(error)\n".utf8))
            throw ExitCode(1)
        }
        defer { communicator.shutdownBlocking() }
        do {
            var trainer = try Trainer(options: self, communicator: communicator)
            try trainer.run()
        } catch {
            FileHandle.standardError.write(Data("concord-train rank \(communicator.rank): \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

extension GradientSynchronizer.Compression: ExpressibleByArgument {}

/// A failure of the trainer's own (a data file, a plan), as one line.
struct TrainerError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

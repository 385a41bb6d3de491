import ConcordTestSupport
import Foundation
import Testing

/// concord-train under the launcher: small models and data so a debug build finishes in seconds.
@Suite("concord-train", .serialized, .timeLimit(.minutes(10)))
struct TrainTests {
    /// A small run's arguments: 1,200 synthetic images, one hidden layer of 32.
    static let small = ["--train-size", "1200", "--test-size", "400", "--hidden", "32", "--global-batch", "32", "--quiet"]

    struct Summary: Decodable {
        struct Epoch: Decodable {
            var loss: Double
            var testAccuracy: Double
        }
        var epochs: [Epoch]
        var localBatches: [Int]
        var replicasIdentical: Bool
        var evaluation: Double?
        var wireBytes: Int
        var gradientBytes: Int
    }

    /// Runs `concord run -n <ranks> -- concord-train <arguments> --json F`; returns the summary and stdout.
    static func train(ranks: Int, _ arguments: [String]) throws -> (Summary, String) {
        let json = FileManager.default.temporaryDirectory.appendingPathComponent("concord-train-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: json) }
        let child = try ChildProcess(
            try ProcessTests.executable("concord"),
            ["run", "-n", "\(ranks)", "--", try ProcessTests.executable("concord-train")] + arguments
                + ["--json", json.path])
        defer { child.kill() }
        #expect(child.wait(seconds: 300), "the run did not finish in 300 s")
        try #require(child.exitStatus == 0, "stderr: \(child.stderr)\nstdout: \(child.stdout)")
        let data = try #require(FileManager.default.contents(atPath: json.path))
        return (try JSONDecoder().decode(Summary.self, from: data), child.stdout)
    }

    @Test("2 ranks: the loss decreases and the replicas end bit-identical")
    func twoRanks() throws {
        let (summary, out) = try Self.train(ranks: 2, Self.small + ["--epochs", "3"])
        #expect(summary.epochs.count == 3)
        #expect(summary.epochs[2].loss < summary.epochs[0].loss, "losses \(summary.epochs.map(\.loss))")
        #expect(summary.epochs[2].testAccuracy > 0.5, "test accuracy \(summary.epochs[2].testAccuracy)")
        #expect(summary.replicasIdentical)
        #expect(summary.localBatches == [16, 16])
        #expect(out.contains("replicas identical: yes"), "\(out)")
    }

    @Test("uneven batches (1:3) with int8 gradients: the loss decreases, replicas identical, a quarter of the bytes")
    func unevenInt8() throws {
        let (summary, _) = try Self.train(
            ranks: 2, Self.small + ["--epochs", "2", "--compression", "int8", "--batch-shares", "1,3"])
        #expect(summary.localBatches == [8, 24])
        #expect(summary.epochs[1].loss < summary.epochs[0].loss, "losses \(summary.epochs.map(\.loss))")
        #expect(summary.replicasIdentical)
        #expect(summary.wireBytes * 3 < summary.gradientBytes, "\(summary.wireBytes) of \(summary.gradientBytes)")
    }

    @Test("--balance sizes the local batches from measured speed: they cover the global batch, replicas identical")
    func balance() throws {
        let (summary, out) = try Self.train(ranks: 2, Self.small + ["--epochs", "1", "--balance"])
        #expect(summary.localBatches.reduce(0, +) == 32 && summary.localBatches.allSatisfy { $0 >= 1 })
        #expect(summary.replicasIdentical)
        #expect(out.contains("measured images/s per rank"), "\(out)")
    }

    @Test("--save, then --load --epochs 0 --evaluate reproduces the test accuracy with a confusion matrix")
    func saveAndEvaluate() throws {
        let model = FileManager.default.temporaryDirectory.appendingPathComponent("concord-train-\(UUID().uuidString).bin")
        defer { try? FileManager.default.removeItem(at: model) }
        let (trained, _) = try Self.train(ranks: 2, Self.small + ["--epochs", "1", "--save", model.path])
        let (evaluated, out) = try Self.train(
            ranks: 2, Self.small + ["--epochs", "0", "--load", model.path, "--evaluate"])
        #expect(evaluated.evaluation == trained.epochs[0].testAccuracy)
        #expect(out.contains("confusion matrix"), "\(out)")
        #expect(evaluated.replicasIdentical)
    }

    @Test("a truncated IDX file fails every rank with a message naming the file")
    func corruptIDX() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("concord-idx-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        // A header announcing 100 images of 28x28 followed by only 10 bytes of pixels.
        var header: [UInt8] = [0, 0, 8, 3, 0, 0, 0, 100, 0, 0, 0, 28, 0, 0, 0, 28]
        header += [UInt8](repeating: 7, count: 10)
        for name in ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"] {
            FileManager.default.createFile(atPath: directory.appendingPathComponent(name).path, contents: Data(header))
        }
        for name in ["train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"] {
            FileManager.default.createFile(
                atPath: directory.appendingPathComponent(name).path,
                contents: Data([0, 0, 8, 1, 0, 0, 0, 100] + [UInt8](repeating: 1, count: 100)))
        }
        let child = try ChildProcess(
            try ProcessTests.executable("concord"),
            ["run", "-n", "2", "--", try ProcessTests.executable("concord-train"), "--data", directory.path])
        defer { child.kill() }
        #expect(child.wait(seconds: 120), "the run did not finish in 120 s")
        #expect(child.exitStatus != 0)
        #expect(child.stderr.contains("images-idx3-ubyte"), "\(child.stderr)")
        #expect(child.stderr.lowercased().contains("truncated"), "\(child.stderr)")
    }
}

// What concord-train prints and writes: the epoch lines, the evaluation's confusion matrix, the JSON
// summary (read by `concord-bench train`), and the checkpoint file of --save and --load.
import ConcordML
import Foundation

/// One epoch as rank 0 reports it (times: the slowest rank's).
struct EpochLine: Codable {
    var epoch: Int
    var loss: Double
    var trainAccuracy: Double
    var testAccuracy: Double
    var imagesPerSecond: Double
    var computeSeconds: Double
    var exposedSeconds: Double
    var communicationSeconds: Double
    var seconds: Double

    func text(of epochs: Int) -> String {
        let stepTime = max(computeSeconds + exposedSeconds, 1e-9)
        let hidden = communicationSeconds > 0 ? max(0, 1 - exposedSeconds / communicationSeconds) : 1
        return String(
            format:
                "epoch %d/%d  loss %.4f  train %.2f%%  test %.2f%%  %.0f images/s  %.1f s  step time: compute %.0f%%, communication %.0f%% (%.0f%% of it hidden behind backward)",
            epoch, epochs, loss, trainAccuracy * 100, testAccuracy * 100, imagesPerSecond, seconds,
            computeSeconds / stepTime * 100, exposedSeconds / stepTime * 100, hidden * 100)
    }
}

/// The run, for --json.
struct Summary: Codable {
    var ranks: Int
    var compression: String
    var globalBatch: Int
    var localBatches: [Int]
    /// float32 gradient bytes per step, and what this rank's buckets weighed on the wire.
    var gradientBytes = 0
    var wireBytes = 0
    var epochs: [EpochLine] = []
    var trainingSeconds = 0.0
    var replicasIdentical = false
    var evaluation: Double?

    func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path))
    }
}

/// The fused result of distributed inference.
struct Evaluation {
    var classes: Int
    /// Row: true class, column: predicted class; summed over ranks.
    var confusion: [Int64]

    var total: Int64 { confusion.reduce(0, +) }
    var correct: Int64 { (0..<classes).reduce(0) { $0 + confusion[$1 * classes + $1] } }
    var accuracy: Double { total > 0 ? Double(correct) / Double(total) : 0 }

    func report(classes: Int, ranks: Int) -> String {
        var lines = [
            "evaluation: \(correct) of \(total) test images right ("
                + String(format: "%.2f%%", accuracy * 100) + "), classified by \(ranks) rank\(ranks == 1 ? "" : "s") in parallel",
            "confusion matrix (row: true digit, column: predicted):",
            "      " + (0..<classes).map { String(format: "%6d", $0) }.joined(),
        ]
        for row in 0..<classes {
            lines.append(
                String(format: "  %2d  ", row)
                    + (0..<classes).map { String(format: "%6lld", confusion[row * classes + $0]) }.joined())
        }
        return lines.joined(separator: "\n")
    }
}

/// Parameters on disk: "CONCORD-MLP1", the layer count and sizes (UInt32 little-endian), then every
/// parameter's float32 values (little-endian), in the model's order.
enum Checkpoint {
    static let magic = Array("CONCORD-MLP1".utf8)

    static func write(_ model: MLP, to path: String) throws {
        var bytes = magic
        func append(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        append(UInt32(model.layerSizes.count))
        for size in model.layerSizes { append(UInt32(size)) }
        for parameter in model.parameters {
            for value in parameter.values { append(value.bitPattern) }
        }
        guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
            throw TrainerError("cannot write \(path)")
        }
    }

    static func read(_ path: String) throws -> (layerSizes: [Int], values: [[Float]]) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TrainerError("cannot read \(path): no such file or not readable")
        }
        let bytes = [UInt8](data)
        var at = 0
        func word() throws -> UInt32 {
            guard at + 4 <= bytes.count else { throw TrainerError("\(path) is truncated at byte \(at)") }
            defer { at += 4 }
            return UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }
        guard bytes.starts(with: magic) else { throw TrainerError("\(path) is not a concord-train checkpoint") }
        at = magic.count
        let layers = try word()
        guard (2...64).contains(layers) else { throw TrainerError("\(path): \(layers) layers is not a model") }
        var sizes: [Int] = []
        for _ in 0..<layers { sizes.append(Int(try word())) }
        guard sizes.allSatisfy({ (1...1 << 20).contains($0) }) else {
            throw TrainerError("\(path): layer sizes \(sizes) are not a model")
        }
        var values: [[Float]] = []
        for (inputs, outputs) in zip(sizes, sizes.dropFirst()) {
            for count in [inputs * outputs, outputs] {
                guard at + 4 * count <= bytes.count else {
                    throw TrainerError("\(path) is truncated: expected \(at + 4 * count) bytes, found \(bytes.count)")
                }
                var parameter: [Float] = []
                parameter.reserveCapacity(count)
                for _ in 0..<count { parameter.append(Float(bitPattern: try word())) }
                values.append(parameter)
            }
        }
        guard at == bytes.count else { throw TrainerError("\(path) has \(bytes.count - at) bytes after the parameters") }
        return (sizes, values)
    }
}

// concord-bench train: data-parallel scaling of concord-train, in one run.
//
// Runs alone (it starts the jobs itself): for each N in --ranks and each compression in --compressions,
// `concord run -n N -- concord-train --epochs E --steps S --json ...`, every job under a deadline. Then one
// table: images/s, speedup over the first row's N (normally 1 rank), scaling efficiency (speedup / N), the
// step's split into compute and exposed communication, how much communication backward hid, the bytes a
// rank puts on the wire per step, and the test accuracy reached. The runs go round-robin over configurations
// (A B C A B C ...) and each row is the median of --rounds, so drift on a shared machine hits all rows.
//
// On one host every rank shares the same cores: N ranks on C < N cores cannot run faster than C ranks, so
// efficiency there measures the overhead of the runtime, not the speed-up a cluster of N devices gets.
import ArgumentParser
import ConcordTestSupport
import Foundation

struct TrainBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Images/s of concord-train for several rank counts and compressions, in one run (starts the jobs itself).")

    @Option(help: "Rank counts, comma-separated.")
    var ranks = "1,2,4"

    @Option(help: "Compressions, comma-separated (none, fp16, bf16, int8); N = 1 runs only the first.")
    var compressions = "none,fp16,bf16,int8"

    @Option(help: "Epochs per run.")
    var epochs = 1

    @Option(help: "Steps per epoch (default: the whole training set).")
    var steps: Int?

    @Option(help: "Runs of every configuration; the row is their median.")
    var rounds = 1

    @Option(help: "Seconds a run may take before it is killed.")
    var timeout: Double = 600

    @Option(help: "Write the rows as JSON to this file.")
    var json: String?

    @Argument(parsing: .postTerminator, help: "Further concord-train arguments, after --.")
    var trainArguments: [String] = []

    struct Row: Codable {
        var ranks: Int
        var compression: String
        var imagesPerSecond: Double
        var computeSeconds: Double
        var exposedSeconds: Double
        var communicationSeconds: Double
        var wireBytes: Int
        var gradientBytes: Int
        var testAccuracy: Double
        var replicasIdentical: Bool
    }

    func run() throws {
        guard let launcher = builtExecutable("concord"), let trainer = builtExecutable("concord-train") else {
            fail("train: concord and concord-train must be built beside concord-bench (swift build -c release)")
        }
        let rankCounts = ranks.split(separator: ",").compactMap { Int($0) }
        let codecs = compressions.split(separator: ",").map(String.init)
        guard !rankCounts.isEmpty, rankCounts.allSatisfy({ $0 >= 1 }), !codecs.isEmpty else {
            throw ValidationError("--ranks takes positive integers and --compressions names, comma-separated")
        }
        var configurations: [(Int, String)] = []
        for n in rankCounts {
            for codec in (n == 1 ? [codecs[0]] : codecs) { configurations.append((n, codec)) }
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("concord-bench-train-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        emit("# concord-bench train: concord-train over \(rankCounts.map(String.init).joined(separator: ", ")) ranks on this host (\(ProcessInfo.processInfo.activeProcessorCount) cores), \(epochs) epoch\(epochs == 1 ? "" : "s")\(steps.map { " of \($0) steps" } ?? ""), median of \(rounds)")
        var samples: [[Row]] = Array(repeating: [], count: configurations.count)
        for round in 0..<rounds {
            for (index, (n, codec)) in configurations.enumerated() {
                let output = directory.appendingPathComponent("run-\(round)-\(index).json").path
                var arguments = ["run", "-n", "\(n)", "--", trainer, "--epochs", "\(epochs)", "--compression", codec,
                                 "--json", output, "--quiet"]
                if let steps { arguments += ["--steps", "\(steps)"] }
                arguments += trainArguments
                let child = try ChildProcess(launcher, arguments)
                guard child.wait(seconds: timeout) else {
                    child.kill()
                    fail("train: \(n) ranks with \(codec) did not finish within \(Int(timeout)) s")
                }
                guard child.exitStatus == 0, let data = FileManager.default.contents(atPath: output) else {
                    fail("train: \(n) ranks with \(codec) failed:\n\(child.stderr)\(child.stdout)")
                }
                let summary = try JSONDecoder().decode(RunSummary.self, from: data)
                guard let last = summary.epochs.last else { fail("train: the run reported no epoch") }
                let seconds = summary.epochs.reduce(0) { $0 + $1.seconds }
                let images = summary.epochs.reduce(0) { $0 + $1.imagesPerSecond * $1.seconds }
                samples[index].append(
                    Row(
                        ranks: n, compression: codec, imagesPerSecond: images / seconds,
                        computeSeconds: summary.epochs.reduce(0) { $0 + $1.computeSeconds },
                        exposedSeconds: summary.epochs.reduce(0) { $0 + $1.exposedSeconds },
                        communicationSeconds: summary.epochs.reduce(0) { $0 + $1.communicationSeconds },
                        wireBytes: summary.wireBytes, gradientBytes: summary.gradientBytes,
                        testAccuracy: last.testAccuracy, replicasIdentical: summary.replicasIdentical))
            }
        }
        let rows = samples.map { runs in runs.sorted { $0.imagesPerSecond < $1.imagesPerSecond }[runs.count / 2] }
        let base = rows[0]
        emit("#")
        emit("#  ranks  compression   images/s  speedup  efficiency   compute  comm exposed  comm hidden  wire/step  test acc  identical")
        for row in rows {
            let speedup = row.imagesPerSecond / base.imagesPerSecond
            let step = max(row.computeSeconds + row.exposedSeconds, 1e-9)
            let hidden = row.communicationSeconds > 0 ? max(0, 1 - row.exposedSeconds / row.communicationSeconds) : 1
            let wire = row.ranks == 1 ? "-" : String(format: "%.0f KiB", Double(row.wireBytes) / 1024)
            emit(
                String(format: "%8d  ", row.ranks) + pad(row.compression, 11)
                    + String(
                        format: "  %9.0f  %6.2fx  %9.0f%%  %7.0f%%  %11.0f%%  %10.0f%%  ", row.imagesPerSecond, speedup,
                        speedup / Double(row.ranks) * Double(base.ranks) * 100, row.computeSeconds / step * 100,
                        row.exposedSeconds / step * 100, hidden * 100)
                    + pad(wire, 9) + String(format: "  %7.2f%%  ", row.testAccuracy * 100)
                    + pad(row.replicasIdentical ? "yes" : "NO", 9))
        }
        emit("# speedup: images/s over the first row's; efficiency: speedup per rank added (speedup x first row's ranks / ranks)")
        emit("# wire/step: bytes of gradient buckets one rank reduces per step, as encoded (float32: \(String(format: "%.0f KiB", Double(base.gradientBytes) / 1024)))")
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(rows).write(to: URL(fileURLWithPath: json))
        }
        if rows.contains(where: { !$0.replicasIdentical }) { fail("train: replicas diverged in some run") }
    }
}

/// `text` right-aligned in `width` columns.
private func pad(_ text: String, _ width: Int) -> String {
    String(repeating: " ", count: max(0, width - text.count)) + text
}

/// The part of concord-train's --json summary the table needs.
private struct RunSummary: Decodable {
    struct Epoch: Decodable {
        var testAccuracy: Double
        var imagesPerSecond: Double
        var computeSeconds: Double
        var exposedSeconds: Double
        var communicationSeconds: Double
        var seconds: Double
    }
    var epochs: [Epoch]
    var gradientBytes: Int
    var wireBytes: Int
    var replicasIdentical: Bool
}

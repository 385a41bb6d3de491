// concord-bench hetero: the ring on uneven links, equal chunks against capacity-aware plans, in one run.
//
// Started alone (no rank variables), it builds the namespace lab (Tests/lab/hetero-lab.sh, root): one
// host's link shaped to --slow-mbit, the others to --fast-mbit, both directions, and runs itself there as
// every rank. As a rank: measure every link (the probe of Communicator+Capacity), derive the plans, then
// for each size time, interleaved, the same float32 sum with
//   equal      the ring's equal chunks, float32 on every link
//   weighted   chunks sized so every link finishes at once (CapacityPlan.balanced)
//   +<codec>   weighted, and --codec on the links much slower than the median
// next to `ideal`: the best time any weighted float32 plan can reach on the measured links (the LP's
// optimum), and `equal*`: what equal chunks should take on them. Rank 0 prints the plan and the table.
import ArgumentParser
import Concord
import ConcordTestSupport
import Foundation

struct HeteroBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hetero",
        abstract: "Equal versus capacity-weighted ring chunks (and compression on slow links) on uneven links.",
        discussion: """
            Alone (as root) it builds a lab of network namespaces with one slow link and runs itself as every
            rank there (Tests/lab/hetero-lab.sh); under a launcher it runs as a rank on the links it has.
            """)

    @Option(name: .customShort("b"), help: "Smallest size in bytes.", transform: ByteSize.parse)
    var minBytes: Int = 1 << 20

    @Option(name: .customShort("e"), help: "Largest size in bytes.", transform: ByteSize.parse)
    var maxBytes: Int = 16 << 20

    @Option(name: .customShort("f"), help: "Multiplication factor between sizes.")
    var factor: Int = 4

    @Option(name: .customShort("n"), help: "Timed iterations per size and plan.")
    var iterations: Int = 3

    @Option(help: "Largest frame payload in bytes (K, M suffixes).", transform: ByteSize.parse)
    var segment: Int?

    @Option(help: "Compression on slow links for the third plan: fp16, bf16 or int8.")
    var codec: String = "int8"

    @Option(help: "Alone: the slow host's link rate, Mbit/s.")
    var slowMbit: Int = 20

    @Option(help: "Alone: the other hosts' link rate, Mbit/s.")
    var fastMbit: Int = 100

    @Option(help: "Alone: ranks (hosts) in the lab.")
    var ranks: Int = 4

    @Option(help: "Write the rows as JSON to this file (rank 0).")
    var json: String?

    func validate() throws {
        guard minBytes >= 4, maxBytes >= minBytes, factor >= 2, iterations >= 1 else {
            throw ValidationError("need 4 <= -b <= -e, -f >= 2, -n >= 1")
        }
        guard let policy = CapacityPolicy(codec), policy != .off, policy != .weighted else {
            throw ValidationError("--codec takes fp16, bf16 or int8")
        }
    }

    func run() throws {
        let environment = ProcessInfo.processInfo.environment
        if environment["CONCORD_RANK"] == nil { return try runLab() }
        let comm = joinOrExit()
        defer { comm.shutdownBlocking() }
        do { try runRank(comm) } catch { fail(error) }
    }

    /// Builds the lab and runs this binary as every rank in it.
    private func runLab() throws {
        guard let script = Self.labScript() else { fail("hetero: Tests/lab/hetero-lab.sh not found above \(CommandLine.arguments[0])") }
        var arguments = [script, "--slow-mbit", "\(slowMbit)", "--fast-mbit", "\(fastMbit)", "--ranks", "\(ranks)", "--"]
        arguments += [URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path, "hetero"]
        if let segment { arguments += ["--segment", "\(segment)"] }
        arguments += ["-b", "\(minBytes)", "-e", "\(maxBytes)", "-f", "\(factor)", "-n", "\(iterations)", "--codec", codec]
        if let json { arguments += ["--json", URL(fileURLWithPath: json).path] }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        if process.terminationStatus != 0 { throw ExitCode(process.terminationStatus) }
    }

    static func labScript() -> String? {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        while directory.path != "/" {
            let candidate = directory.appendingPathComponent("Tests/lab/hetero-lab.sh").path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
            directory.deleteLastPathComponent()
        }
        return nil
    }

    struct Row: Codable {
        var bytes: Int
        var equalSeconds: Double
        var weightedSeconds: Double
        var compressedSeconds: Double
        var idealSeconds: Double
        var equalPredictedSeconds: Double
        var wrong: Int
    }

    private func runRank(_ comm: Communicator) throws {
        let n = comm.worldSize
        if let segment { comm.segmentBytes = segment }
        comm.capacityPolicy = .weighted
        let links = try comm.measureLinksBlocking()
        let weighted = CapacityPolicy.weighted.plan(for: links)!
        let compressed = CapacityPolicy(codec)!.plan(for: links)!
        let equal = CapacityPlan.equal(worldSize: n).withLinks(links)  // the same frame size rule as the others
        comm.capacityPolicy = .off
        func say(_ line: String) { if comm.rank == 0 { emit(line) } }
        say("# concord-bench hetero: \(n) ranks, float32 sum, \(iterations) iterations per size and plan, interleaved")
        say("# measured links (rank k -> k+1):")
        for (k, link) in links.enumerated() {
            say(
                String(
                    format: "#   link %d -> %d: %8.2f MB/s (%6.1f Mbit/s), latency %.2f ms", k, (k + 1) % n,
                    link.bytesPerSecond / 1e6, link.bytesPerSecond * 8 / 1e6, link.latencySeconds * 1e3))
        }
        say("# weighted plan:")
        for line in weighted.description.split(separator: "\n") { say("#   \(line)") }
        say("# weighted + \(codec) on slow links:")
        for line in compressed.description.split(separator: "\n") { say("#   \(line)") }
        say("#")
        say("#        size   equal (s)  busbw     weighted (s)  busbw  x equal   +\(codec) (s)  busbw  x equal   ideal (s)  weighted/ideal  equal* (s)  #wrong")
        var rows: [Row] = []
        var size = minBytes
        while size <= maxBytes {
            let count = size / 4
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            defer { buffer.deallocate() }
            var times = [[Double]](repeating: [], count: 3)
            var wrong = 0
            for iteration in 0..<(iterations + 1) {
                for (p, plan) in [equal, weighted, compressed].enumerated() {
                    for i in 0..<count { buffer[i] = distinctValue(rank: comm.rank, index: i) }
                    try comm.barrierBlocking()
                    let start = now()
                    try comm.sumBlocking(buffer, plan: plan)
                    let elapsed = try comm.maxOverRanks(now() - start)
                    if iteration > 0 { times[p].append(elapsed) }  // the first round warms up
                    if p < 2 {
                        wrong += (0..<count).filter { buffer[$0] != distinctSum(worldSize: n, index: $0) }.count
                    } else {
                        // Compressed: not exact, but the same bits on every rank.
                        var checksum = [buffer.reduce(Int64(0)) { $0 &+ Int64($1.bitPattern) }]
                        var low = checksum
                        try comm.allReduceBlocking(&checksum, op: .max)
                        try comm.allReduceBlocking(&low, op: .min)
                        if checksum != low { wrong += 1 }
                    }
                }
            }
            let median = times.map { $0.sorted()[$0.count / 2] }
            let row = Row(
                bytes: size, equalSeconds: median[0], weightedSeconds: median[1], compressedSeconds: median[2],
                idealSeconds: CapacityPlan.lowerBoundSeconds(links: links, bytes: size),
                equalPredictedSeconds: equal.predictedSeconds(bytes: size), wrong: try Int(comm.sumOverRanks(Double(wrong))))
            rows.append(row)
            let bus = { (seconds: Double) in Double(size) / seconds * 2 * Double(n - 1) / Double(n) / 1e9 }
            say(
                String(
                    format: "%13d  %10.4f  %6.4f  %12.4f  %6.4f  %6.2fx  %11.4f  %6.4f  %6.2fx  %10.4f  %14.2f  %10.4f  %6d", size,
                    row.equalSeconds, bus(row.equalSeconds), row.weightedSeconds, bus(row.weightedSeconds),
                    row.equalSeconds / row.weightedSeconds, row.compressedSeconds, bus(row.compressedSeconds),
                    row.equalSeconds / row.compressedSeconds, row.idealSeconds, row.weightedSeconds / row.idealSeconds,
                    row.equalPredictedSeconds, row.wrong))
            size *= factor
        }
        say("# busbw in GB/s of float32 (2(n-1)/n x size / time); x equal: equal's time / this plan's; ideal: the best")
        say("# weighted float32 plan on the measured links (LP optimum); equal*: equal chunks predicted on them")
        if let json, comm.rank == 0 {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(rows).write(to: URL(fileURLWithPath: json))
        }
        if rows.contains(where: { $0.wrong > 0 }) { fail("hetero: wrong values") }
    }
}

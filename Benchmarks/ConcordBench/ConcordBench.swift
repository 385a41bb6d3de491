// concord-bench: nccl-tests-style benchmarks of Concord's collectives.
//
// One driver, one file per benchmark. Run every rank under a launcher:
//   concord run -n 4 -- concord-bench allreduce -b 8 -e 64M -f 2 -n 20 -w 5 -c 1
// Rank 0 prints the table; every rank exits non-zero when any value is wrong.
import ArgumentParser
import Concord
import Foundation

@main
struct ConcordBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "concord-bench",
        abstract: "Benchmarks Concord's collectives in the style of nccl-tests.",
        discussion: """
            Start one process per rank with a launcher, e.g.
              concord run -n 4 -- concord-bench allreduce -b 8 -e 64M -f 2 -d float -o sum
            Rank 0 prints a table: size, count, type, redop, root, time (us), algbw and busbw (GB/s), #wrong.
            busbw = algbw x the bus factor: 2(n-1)/n for allreduce, (n-1)/n for reducescatter and allgather,
            1 for broadcast and reduce: the bytes each ring link carries per second. `kernels` runs alone.
            """,
        subcommands: [
            AllReduceBench.self, ReduceScatterBench.self, AllGatherBench.self, BroadcastBench.self, ReduceBench.self,
            RawRingBench.self, KernelsBench.self, TrainBench.self, HeteroBench.self,
        ])
}

/// The sweep and check flags every benchmark shares (nccl-tests' names).
struct SweepOptions: ParsableArguments {
    @Option(
        name: .customShort("b"), help: "Smallest size in bytes (K, M, G suffixes: powers of 1024).",
        transform: ByteSize.parse)
    var minBytes: Int = 8

    @Option(name: .customShort("e"), help: "Largest size in bytes.", transform: ByteSize.parse)
    var maxBytes: Int = 64 << 20

    @Option(name: .customShort("f"), help: "Multiplication factor between sizes.")
    var factor: Int = 2

    @Option(name: .customShort("n"), help: "Timed iterations per size.")
    var iterations: Int = 20

    @Option(name: .customShort("w"), help: "Warm-up iterations per size (not timed).")
    var warmup: Int = 5

    @Option(name: .customShort("c"), help: "Check results: 1 checks every size with distinct inputs, 0 skips.")
    var check: Int = 1

    @Option(name: .long, help: "Write the rows as JSON to this file (rank 0).")
    var json: String?

    func validate() throws {
        guard minBytes >= 0, maxBytes >= minBytes else { throw ValidationError("-b must be at most -e") }
        guard factor >= 2 else { throw ValidationError("-f must be at least 2") }
        guard iterations >= 1, warmup >= 0 else { throw ValidationError("-n must be at least 1 and -w at least 0") }
        guard check == 0 || check == 1 else { throw ValidationError("-c takes 0 or 1") }
    }

    /// The sizes of the sweep: min, min·f, min·f², … up to max.
    var sizes: [Int] {
        var sizes = [Int]()
        var size = minBytes
        while size <= maxBytes {
            sizes.append(size)
            if size == 0 { size = 1 } else { size *= factor }
        }
        return sizes
    }
}

/// Byte sizes with K/M/G suffixes.
enum ByteSize {
    static func parse(_ text: String) throws -> Int {
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        var digits = text.uppercased()
        var scale = 1
        if digits.hasSuffix("B") { digits.removeLast() }
        if let last = digits.last, let unit = units[last] {
            scale = unit
            digits.removeLast()
        }
        guard let value = Int(digits), value >= 0 else {
            throw ValidationError("'\(text)' is not a size (examples: 8, 64K, 16M, 1G)")
        }
        return value * scale
    }

    /// A short human form for table comments.
    static func format(_ bytes: Int) -> String {
        if bytes >= 1 << 30 && bytes % (1 << 30) == 0 { return "\(bytes >> 30) GiB" }
        if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
        if bytes >= 1 << 10 && bytes % (1 << 10) == 0 { return "\(bytes >> 10) KiB" }
        return "\(bytes) B"
    }
}

/// Joins the group from the environment, printing a one-line error and exiting non-zero on failure.
func joinOrExit() -> Communicator {
    do {
        return try Communicator(blockingEnvironment: ProcessInfo.processInfo.environment)
    } catch {
        FileHandle.standardError.write(Data("concord-bench: \(error)\n".utf8))
        Foundation.exit(1)
    }
}

/// Prints a failure and exits non-zero.
func fail(_ error: Any) -> Never {
    FileHandle.standardError.write(Data("concord-bench: \(error)\n".utf8))
    Foundation.exit(1)
}

/// Prints a line and flushes it at once (a table row should appear as soon as it is measured).
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// Seconds on the monotonic clock.
/// CPU seconds (user + system, every thread) this process has used.
func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6
}

/// The largest resident set this process has had, in bytes.
func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss * 1024
}

func mebibytes(_ bytes: Double) -> String { String(format: "%.1f MiB", bytes / 1_048_576) }

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

extension Communicator {
    /// The largest of every rank's `value` (a collective: every rank must call it).
    func maxOverRanks(_ value: Double) throws -> Double {
        var slots = [Float](repeating: 0, count: worldSize)
        slots[rank] = Float(value)
        try allReduceBlocking(&slots)
        return Double(slots.max() ?? 0)
    }

    /// The sum of every rank's `value` (exact for integers below 2^24).
    func sumOverRanks(_ value: Double) throws -> Double {
        var slot = [Float(value)]
        try allReduceBlocking(&slot)
        return Double(slot[0])
    }
}

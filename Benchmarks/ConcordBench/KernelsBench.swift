// concord-bench kernels: the reduce and convert kernels on one thread, in GB/s of memory traffic, next to
// memcpy of the same buffer size measured in the same run.
//
// Every row is a kernel on buffers of `size` bytes: a combine (`destination op= source`, each op × dtype),
// the scaling that finishes `avg`, a conversion (the float32 side is `size` bytes), or, with int8, the
// blockwise int8 quantization of compressed all-reduce (QuantizeKernels: encode, decode, decodeAdd; the
// float32 side is `size` bytes, the encoded side 1.0625/4 of it). Each measurement is
// the best of several runs, a run repeating the call until it has lasted a minimum time. Every row has its
// own yardstick: memcpy of `size` bytes between the same two buffers, its runs alternating with the
// kernel's, so that a change in the machine's load (this VM is shared) moves both. Single process: no
// launcher, no Communicator.
import ArgumentParser
import ConcordCore
import ConcordKernels
import Foundation

struct KernelsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "Reduce and convert kernels on one thread: GB/s of memory traffic, as a fraction of memcpy's.")

    @Option(
        name: .long, help: "Buffer sizes in bytes, comma-separated (K, M, G suffixes; default 64K,64M).",
        transform: { text in try text.split(separator: ",").map { try ByteSize.parse(String($0)) } })
    var sizes: [Int] = [64 << 10, 64 << 20]

    @Option(name: .customShort("n"), help: "Timed runs per row (and as many memcpy runs); the fastest is reported.")
    var runs: Int = 7

    @Option(name: .long, help: "Minimum duration of one run in milliseconds (a run repeats the kernel).")
    var minRunMs: Double = 4

    @Option(
        name: .customShort("d"),
        help: "Data type: float, double, half, bfloat16, int8, uint8, int32, int64, or all; a comma-separated list.")
    var dataType: String = "all"

    func validate() throws {
        guard runs >= 1 else { throw ValidationError("-n must be at least 1") }
        guard minRunMs > 0 else { throw ValidationError("--min-run-ms must be positive") }
        guard sizes.allSatisfy({ $0 >= 64 }) else { throw ValidationError("sizes must be at least 64 bytes") }
        guard selectedTypes != nil else { throw ValidationError("unknown data type in '\(dataType)'") }
    }

    /// The types of `-d`, or nil when a name is unknown.
    var selectedTypes: [DataType]? {
        if dataType == "all" { return DataType.allCases }
        let types = dataType.split(separator: ",").map { DataType(name: String($0)) }
        return types.contains(nil) ? nil : types.compactMap { $0 }
    }

    func run() throws {
        let selected = selectedTypes ?? DataType.allCases
        let features = CPUFeatures.required
        emit("# concord-bench kernels: one thread, best of \(runs) runs of at least \(minRunMs) ms each")
        emit("# build targets: " + (features.isEmpty ? "baseline (no -march flags)" : features.joined(separator: " ")))
        if KernelPath.best != .portable {
            emit("# bfloat16 path: \(KernelPath.best); rows 'bf16-sw' run the portable Swift path for comparison")
        }
        emit("# traffic = bytes read + written per call / time. Per byte of buffer: combine 3 (reads destination")
        emit("#   and source, writes destination), scale 2, memcpy 2; conversions 1.5 (size = the float32 side);")
        emit("#   int8/64 encode and decode 1.27, decodeAdd 2.27 (size = the float32 side; GB/s of floats = 4 × rate).")
        emit("# ratio = the kernel's traffic GB/s / memcpy's traffic GB/s, memcpy of the same size measured in runs")
        emit("#   alternating with the kernel's (its own column); GB = 1e9 bytes")
        emit("#")
        emit(
            "#" + pad("size", 10) + pad("type", 14) + pad("op", 8) + pad("time", 11) + pad("rate", 10)
                + pad("traffic", 10) + pad("memcpy", 10) + pad("ratio", 8))
        emit(
            "#" + pad("(B)", 10) + pad("", 14) + pad("", 8) + pad("(us)", 11) + pad("(Gelem/s)", 10)
                + pad("(GB/s)", 10) + pad("(GB/s)", 10) + pad("", 8))
        for size in sizes {
            let block = Block(size: size, runs: runs, minRun: minRunMs * 1e-3)
            defer { block.deallocate() }
            var rows: [(type: String, op: String, elements: Int, traffic: Double, timing: Timing)] = []
            for dataType in selected {
                let count = size / dataType.size
                for (label, path) in paths(dataType) {
                    for op in [ReduceOp.sum, .prod, .min, .max] {
                        block.fill(dataType, op: op)
                        let reducer = ReduceKernels.reducer(op: op, dataType: dataType, path: path)
                        let (d, s) = (block.destination, UnsafeRawPointer(block.source))
                        let t = block.measure { reducer.combine(d, s, count) }
                        rows.append((label, op.description, count, 3, t))
                    }
                    if dataType.isFloatingPoint {
                        block.fill(dataType, op: .prod)
                        let d = block.destination
                        let t = block.measure {
                            ReduceKernels.scale(d, count: count, dataType: dataType, by: 1, path: path)
                        }
                        rows.append((label, "scale", count, 2, t))
                    }
                }
            }
            let floats = size / 4
            let conversions: [(String, DataType, DataType, KernelPath)] =
                [
                    ("float>half", .float32, .float16, .portable), ("half>float", .float16, .float32, .portable),
                    ("float>bf16", .float32, .bfloat16, KernelPath.best),
                ] + (KernelPath.best == .portable ? [] : [("float>bf16-sw", .float32, .bfloat16, .portable)])
                + [("bf16>float", .bfloat16, .float32, .portable)]
            for (name, from, to, path) in conversions where selected.contains(from == .float32 ? to : from) {
                block.fill(.float32, op: .sum)
                ConvertKernels.convert(block.source, from: .float32, to: block.destination, as: from, count: floats)
                // The `from` values are in destination now: convert them into source.
                let (d, s) = (block.source, UnsafeRawPointer(block.destination))
                let t: Timing
                if to == .bfloat16 {
                    t = block.measure { ConvertKernels.float32ToBFloat16(s, d, count: floats, path: path) }
                } else {
                    t = block.measure { ConvertKernels.convert(s, from: from, to: d, as: to, count: floats) }
                }
                rows.append((name, "convert", floats, 1.5, t))
            }
            if selected.contains(.int8) {
                // Encode source → destination, then decode (or decode and add) destination → source.
                let b = QuantizeKernels.defaultBlockSize
                let encodedBytes = QuantizeKernels.encodedByteCount(count: floats, blockSize: b)
                let ratio = Double(encodedBytes) / Double(size)
                block.fill(.float32, op: .sum)
                let values = UnsafeMutableBufferPointer(
                    start: block.source.assumingMemoryBound(to: Float.self), count: floats)
                let encoded = UnsafeMutableRawBufferPointer(start: block.destination, count: encodedBytes)
                let tEncode = block.measure {
                    QuantizeKernels.encode(UnsafeBufferPointer(values), into: encoded, blockSize: b)
                }
                rows.append(("float>int8/\(b)", "encode", floats, 1 + ratio, tEncode))
                let tDecode = block.measure {
                    QuantizeKernels.decode(from: UnsafeRawBufferPointer(encoded), into: values, blockSize: b)
                }
                rows.append(("int8/\(b)>float", "decode", floats, 1 + ratio, tDecode))
                let tAdd = block.measure {
                    QuantizeKernels.decodeAdd(from: UnsafeRawBufferPointer(encoded), into: values, blockSize: b)
                }
                rows.append(("int8/\(b)>float", "decAdd", floats, 2 + ratio, tAdd))
            }
            let best = rows.map(\.timing.memcpy).min() ?? .infinity
            emit(line(size, "-", "memcpy", size, best, 2 * Double(size) / best, 2 * Double(size) / best, 1))
            for row in rows {
                let rate = row.traffic * Double(size) / row.timing.kernel
                let memcpyRate = 2 * Double(size) / row.timing.memcpy
                emit(line(size, row.type, row.op, row.elements, row.timing.kernel, rate, memcpyRate, rate / memcpyRate))
            }
        }
    }

    /// The rows of a type: its best path, and for bfloat16 also the portable one when they differ.
    private func paths(_ dataType: DataType) -> [(String, KernelPath)] {
        let best = (dataType.description, KernelPath.best)
        guard dataType == .bfloat16, KernelPath.best != .portable else { return [best] }
        return [best, ("bf16-sw", .portable)]
    }

    private func line(
        _ size: Int, _ type: String, _ op: String, _ elements: Int, _ seconds: Double, _ traffic: Double,
        _ memcpy: Double, _ ratio: Double
    ) -> String {
        " " + pad("\(size)", 10) + pad(type, 14) + pad(op, 8) + pad(String(format: "%.1f", seconds * 1e6), 11)
            + pad(String(format: "%.2f", Double(elements) / seconds / 1e9), 10)
            + pad(String(format: "%.2f", traffic / 1e9), 10) + pad(String(format: "%.2f", memcpy / 1e9), 10)
            + pad(String(format: "%.2f", ratio), 8)
    }

    private func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? " " + s : String(repeating: " ", count: width - s.count) + s
    }
}

/// Seconds per call of a kernel and of its memcpy yardstick.
struct Timing {
    var kernel: Double
    var memcpy: Double
}

/// The buffers of one size, and the timing loop shared by its rows.
private final class Block {
    let size: Int
    let runs: Int
    let minRun: Double
    /// 64-byte aligned, `size` bytes each, distinct allocations (no aliasing between rows' operands).
    let destination: UnsafeMutableRawPointer
    let source: UnsafeMutableRawPointer
    init(size: Int, runs: Int, minRun: Double) {
        self.size = size
        self.runs = runs
        self.minRun = minRun
        destination = .allocate(byteCount: size, alignment: 64)
        source = .allocate(byteCount: size, alignment: 64)
        destination.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        source.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    }

    func deallocate() {
        destination.deallocate()
        source.deallocate()
    }

    /// Fills both buffers with values that stay in range however often the kernel runs: small distinct
    /// values (products multiply by one, so they neither overflow nor reach subnormals).
    func fill(_ dataType: DataType, op: ReduceOp) {
        let count = size / dataType.size
        func fill<T>(_: T.Type, _ make: (Int) -> T) {
            let d = destination.assumingMemoryBound(to: T.self)
            let s = source.assumingMemoryBound(to: T.self)
            for i in 0..<count {
                d[i] = make(i % 29 - 14)
                s[i] = make(op == .prod ? 1 : (i * 7) % 31 - 15)
            }
        }
        switch dataType {
        case .float32: fill(Float.self) { Float($0) }
        case .float64: fill(Double.self) { Double($0) }
        case .float16: fill(Float16.self) { Float16(Float($0)) }
        case .bfloat16: fill(BFloat16.self) { BFloat16(Float($0)) }
        case .int8: fill(Int8.self) { Int8($0) }
        case .uint8: fill(UInt8.self) { UInt8(truncatingIfNeeded: $0) }
        case .int32: fill(Int32.self) { Int32($0) }
        case .int64: fill(Int64.self) { Int64($0) }
        }
    }

    /// The best seconds per call of `body` over `runs` runs, and of memcpy of `size` bytes between the
    /// same buffers over as many runs, alternating with them.
    func measure(_ body: () -> Void) -> Timing {
        body()  // warm-up: caches, page tables
        let (d, s, size) = (destination, UnsafeRawPointer(source), size)
        let copy = { _ = memcpy(d, s, size) }
        let repetitions = calibrate(body)
        let copyRepetitions = calibrate(copy)
        var timing = Timing(kernel: .infinity, memcpy: .infinity)
        for _ in 0..<runs {
            timing.memcpy = min(timing.memcpy, time(copy, copyRepetitions))
            timing.kernel = min(timing.kernel, time(body, repetitions))
        }
        return timing
    }

    /// How many calls make a run of at least `minRun` seconds.
    private func calibrate(_ body: () -> Void) -> Int {
        let once = time(body, 1)
        return max(1, Int((minRun / max(once, 1e-9)).rounded(.up)))
    }

    private func time(_ body: () -> Void, _ repetitions: Int) -> Double {
        let start = now()
        for _ in 0..<repetitions { body() }
        return (now() - start) / Double(repetitions)
    }
}

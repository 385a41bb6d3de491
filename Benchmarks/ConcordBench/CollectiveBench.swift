// The driver every collective benchmark shares: sweep sizes, dtypes and ops; time each collective;
// check it with distinct inputs; print the nccl-tests table.
//
// Per (dtype, op, size): -w warm-up calls, then -n timed calls after a barrier; the time of a row is the
// slowest rank's average (a collective is done when every rank is done). With -c 1 the inputs are then
// filled with values distinct per rank and index (`Fixture`), the collective runs once more, and every
// element of the result is compared exactly with the closed form; #wrong counts the misses over all ranks.
//
// Sizes are nccl-tests': `size` is the larger of the input and output buffers (the gathered or scattered
// total for allgather/reducescatter), `count` its elements; busbw = algbw × the collective's bus factor.
import ArgumentParser
import Concord
import ConcordTestSupport
import Foundation

/// What one collective benchmark defines; `CollectiveDriver` does the rest.
protocol BenchedCollective {
    /// The subcommand's and the JSON rows' name (`allreduce`).
    static var name: String { get }
    /// Whether the collective takes a reduce op (and `-o` applies).
    static var reduces: Bool { get }
    /// Whether the collective has a root (and `-r` applies).
    static var rooted: Bool { get }
    /// nccl-tests' factor from algbw to busbw.
    static func busFactor(ranks n: Int) -> Double
    /// Elements of each rank's input and output for a row of `count` elements (the larger buffer).
    static func shape(count: Int, ranks n: Int) -> (input: Int, output: Int)
    /// Where input and output start in one shared buffer when the collective runs in place.
    static func inPlaceOffsets(shape: (input: Int, output: Int), rank: Int) -> (input: Int, output: Int)
    /// Runs the collective once.
    static func run<T: TestElement>(
        _ comm: Communicator, input: UnsafeBufferPointer<T>, output: UnsafeMutableBufferPointer<T>, op: ReduceOp,
        root: Int) throws
    /// The input element `index` of `rank` for a check.
    static func input<T: TestElement>(_: T.Type, rank: Int, index: Int, shape: (input: Int, output: Int), op: ReduceOp)
        -> T
    /// The output element `index` that `rank` must hold after the check run, or nil when it is unspecified.
    static func expected<T: TestElement>(
        _: T.Type, rank: Int, ranks n: Int, index: Int, shape: (input: Int, output: Int), op: ReduceOp, root: Int
    ) -> T?
}

extension BenchedCollective {
    static var reduces: Bool { true }
    static var rooted: Bool { false }
    static func inPlaceOffsets(shape: (input: Int, output: Int), rank: Int) -> (input: Int, output: Int) { (0, 0) }
    static func input<T: TestElement>(_: T.Type, rank: Int, index: Int, shape: (input: Int, output: Int), op: ReduceOp)
        -> T
    {
        Fixture.value(T.self, rank: rank, index: index, op: op)
    }
}

/// The flags that choose what a collective benchmark sweeps (nccl-tests' names).
struct CollectiveOptions: ParsableArguments {
    @Option(
        name: .customShort("d"),
        help: "Data type: float, double, half, bfloat16, int8, uint8, int32, int64, or all.")
    var dataType: String = "float"

    @Option(name: .customShort("o"), help: "Reduce op: sum, prod, min, max, avg, or all (avg only on floating types).")
    var op: String = "sum"

    @Option(name: .customShort("r"), help: "Root rank of broadcast and reduce.")
    var root: Int = 0

    @Flag(name: .long, help: "Run out of place (separate input and output buffers) instead of in place.")
    var outOfPlace = false

    @Option(name: .long, help: "Largest frame payload in bytes (a tuning knob; default 1M).", transform: ByteSize.parse)
    var segment: Int?

    func validate() throws {
        guard dataType == "all" || DataType(name: dataType) != nil else {
            throw ValidationError(
                "-d \(dataType): not one of float, double, half, bfloat16, int8, uint8, int32, int64, all")
        }
        guard op == "all" || ReduceOp(name: op) != nil else {
            throw ValidationError("-o \(op): not one of sum, prod, min, max, avg, all")
        }
    }

    var dataTypes: [DataType] { dataType == "all" ? DataType.allCases : [DataType(name: dataType)!] }

    /// The ops to sweep for `dataType`: `all` leaves avg out of integer types.
    func ops(for dataType: DataType) -> [ReduceOp] {
        op == "all" ? ReduceOp.allCases.filter { $0.isSupported(on: dataType) } : [ReduceOp(name: op)!]
    }
}

/// Runs the sweep of `C` and prints the table; shared by every collective subcommand.
struct CollectiveDriver<C: BenchedCollective> {
    let comm: Communicator
    let sweep: SweepOptions
    let options: CollectiveOptions
    /// Extra baselines measured per row (the raw TCP rings of the all-reduce benchmark).
    var baselines: [(Baseline, RawRing)] = []

    /// Runs everything; returns the number of wrong values over all rows and ranks.
    func run() throws -> Int {
        let n = comm.worldSize
        guard !C.rooted || (0..<n).contains(options.root) else {
            throw ValidationError("-r \(options.root): the root must be a rank in 0..<\(n)")
        }
        if let segment = options.segment { comm.segmentBytes = segment }
        let table = Table(baselines: baselines.map(\.0))
        if comm.rank == 0 {
            emit(
                "# concord-bench \(C.name): \(n) ranks, \(options.outOfPlace ? "out of place" : "in place"), "
                    + "\(sweep.iterations) iterations after \(sweep.warmup) warm-up, segment \(ByteSize.format(comm.segmentBytes))"
                    + (C.rooted ? ", root \(options.root)" : ""))
            emit("#")
            emit(table.header)
        }
        let startResident = try comm.maxOverRanks(Double(peakResidentBytes()))
        var rows = [BenchRow]()
        var wrong = 0
        for dataType in options.dataTypes {
            let ops = C.reduces ? options.ops(for: dataType) : [.sum]
            for op in ops {
                wrong += try sweepSizes(dataType: dataType, op: op, table: table, rows: &rows)
            }
        }
        let peak = try comm.maxOverRanks(Double(peakResidentBytes()))
        let largestBuffers = Double(rows.map(\.bytes).max() ?? 0) * (options.outOfPlace ? 2 : 1)
        if comm.rank == 0 {
            let average = rows.isEmpty ? 0 : rows.map(\.busbw).reduce(0, +) / Double(rows.count)
            emit("# Out of bounds values : \(wrong) \(wrong == 0 ? "OK" : "FAILED")")
            emit("# Avg bus bandwidth    : \(String(format: "%.4g", average))")
            emit(
                "# Max RSS              : \(mebibytes(peak)) (largest rank; \(mebibytes(startResident)) before the sweep, "
                    + "largest row's buffers \(mebibytes(largestBuffers)))")
            emit(
                "# Sent zero-copy       : \(mebibytes(Double(comm.splicedBytes))) (rank 0's TCP payload spliced, "
                    + "not copied; CONCORD_ZEROCOPY)")
            emit("#")
            if let path = sweep.json {
                do { try writeJSON(rows, to: path) } catch { fail("cannot write \(path): \(error)") }
            }
        }
        return wrong
    }

    private func sweepSizes(dataType: DataType, op: ReduceOp, table: Table, rows: inout [BenchRow]) throws -> Int {
        switch dataType {
        case .float32: return try sweepSizes(Float.self, op: op, table: table, rows: &rows)
        case .float64: return try sweepSizes(Double.self, op: op, table: table, rows: &rows)
        case .float16: return try sweepSizes(Float16.self, op: op, table: table, rows: &rows)
        case .bfloat16: return try sweepSizes(BFloat16.self, op: op, table: table, rows: &rows)
        case .int8: return try sweepSizes(Int8.self, op: op, table: table, rows: &rows)
        case .uint8: return try sweepSizes(UInt8.self, op: op, table: table, rows: &rows)
        case .int32: return try sweepSizes(Int32.self, op: op, table: table, rows: &rows)
        case .int64: return try sweepSizes(Int64.self, op: op, table: table, rows: &rows)
        }
    }

    private func sweepSizes<T: TestElement>(_: T.Type, op: ReduceOp, table: Table, rows: inout [BenchRow]) throws -> Int
    {
        let n = comm.worldSize
        let size = MemoryLayout<T>.stride
        var wrongTotal = 0
        for bytes in sweep.sizes {
            // nccl-tests rounds counts down to what divides evenly among the ranks for the gathering collectives.
            let shape = C.shape(count: bytes / size, ranks: n)
            let count = max(shape.input, shape.output)
            let offsets = options.outOfPlace ? (input: 0, output: 0) : C.inPlaceOffsets(shape: shape, rank: comm.rank)
            let inputStorage = UnsafeMutableBufferPointer<T>.allocate(
                capacity: max(1, options.outOfPlace ? shape.input : count))
            let outputStorage =
                options.outOfPlace
                ? UnsafeMutableBufferPointer<T>.allocate(capacity: max(1, shape.output)) : inputStorage
            defer {
                inputStorage.deallocate()
                if options.outOfPlace { outputStorage.deallocate() }
            }
            inputStorage.initialize(repeating: T(fixture: 1))
            if options.outOfPlace { outputStorage.initialize(repeating: T(fixture: 0)) }
            let input = UnsafeBufferPointer(
                rebasing: UnsafeBufferPointer(inputStorage)[offsets.input..<(offsets.input + shape.input)])
            let output = UnsafeMutableBufferPointer(
                rebasing: outputStorage[offsets.output..<(offsets.output + shape.output)])
            let call = { try C.run(comm, input: input, output: output, op: op, root: options.root) }

            for _ in 0..<sweep.warmup { try call() }
            try comm.barrierBlocking()
            let start = now()
            let cpuStart = cpuSeconds()
            for _ in 0..<sweep.iterations { try call() }
            let cpu = (cpuSeconds() - cpuStart) / Double(sweep.iterations)
            let seconds = try comm.maxOverRanks((now() - start) / Double(sweep.iterations))
            let cpuAverage = try comm.sumOverRanks(cpu) / Double(n)
            let peak = Int(try comm.maxOverRanks(Double(peakResidentBytes())))

            var wrong: Int?
            if sweep.check == 1 {
                let writable = UnsafeMutableBufferPointer(mutating: input)
                for i in 0..<shape.input {
                    writable[i] = C.input(T.self, rank: comm.rank, index: i, shape: shape, op: op)
                }
                try call()
                var local = 0
                for i in 0..<shape.output {
                    if let want = C.expected(
                        T.self, rank: comm.rank, ranks: n, index: i, shape: shape, op: op, root: options.root),
                        output[i] != want
                    {
                        local += 1
                    }
                }
                wrong = Int(try comm.sumOverRanks(Double(local)))
                wrongTotal += wrong!
            }
            let algbw = seconds > 0 ? Double(count * size) / seconds / 1e9 : 0
            var row = BenchRow(
                collective: C.name, ranks: n, bytes: count * size, count: count, type: T.dataType.description,
                redop: C.reduces ? op.description : "none", root: C.rooted ? options.root : -1,
                timeMicroseconds: seconds * 1e6, cpuMicroseconds: cpuAverage * 1e6, peakResidentBytes: peak,
                algbw: algbw, busbw: algbw * C.busFactor(ranks: n), wrong: wrong)
            let linkBytes = max(1, Int(Double(count * size) * C.busFactor(ranks: n)))
            for (baseline, ring) in baselines {
                let rate = try ring.measure(
                    linkBytes: linkBytes, iterations: sweep.iterations, warmup: min(sweep.warmup, 2))
                if baseline == .raw { row.rawBusbw = rate } else { row.rawColdBusbw = rate }
            }
            rows.append(row)
            if comm.rank == 0 { emit(table.line(row)) }
        }
        return wrongTotal
    }
}

/// Parses nothing itself: the shared body of every collective subcommand.
func runCollective<C: BenchedCollective>(
    _: C.Type, sweep: SweepOptions, options: CollectiveOptions, rawRing: Bool = false, rawRingCold: Bool = false
) throws {
    let comm = joinOrExit()
    var driver = CollectiveDriver<C>(comm: comm, sweep: sweep, options: options)
    if comm.worldSize > 1 {
        do {
            if rawRing { driver.baselines.append((.raw, try RawRing(comm: comm))) }
            if rawRingCold { driver.baselines.append((.rawCold, try RawRing(comm: comm, span: sweep.maxBytes))) }
        } catch {
            fail("could not set up the raw TCP ring: \(error)")
        }
    }
    let wrong: Int
    do { wrong = try driver.run() } catch let error as ValidationError { fail(error.message) } catch { fail(error) }
    for (_, ring) in driver.baselines { ring.close() }
    comm.shutdownBlocking()
    if wrong != 0 { throw ExitCode(2) }
}

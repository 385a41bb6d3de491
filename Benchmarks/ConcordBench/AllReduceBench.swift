// concord-bench allreduce: float32 sum all-reduce, in place, over a sweep of sizes.
//
// Per size: -w warm-up calls, then -n timed calls between two barriers-by-collective; the time of a
// size is the slowest rank's average (a collective is done when every rank is done). With -c 1 the
// buffer is then filled with values distinct per rank and index, reduced once more and compared exactly
// with the closed-form sum, so a chunk reduced or stored in the wrong place is counted in #wrong.
import ArgumentParser
import Concord
import ConcordTestSupport
import Foundation

struct AllReduceBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "allreduce",
        abstract: "Ring all-reduce (float32 sum, in place) over a sweep of sizes.")

    @OptionGroup var sweep: SweepOptions

    @Option(name: .long, help: "Largest frame payload in bytes (a tuning knob; default 1M).", transform: ByteSize.parse)
    var segment: Int?

    @Option(
        name: .long, help: "Bytes a reducing receive reads before combining (a tuning knob; default 64K).",
        transform: ByteSize.parse)
    var readChunk: Int?

    @Flag(name: .long, help: "Also measure the raw TCP ring (the physical limit) for each size, interleaved.")
    var rawRing = false

    @Flag(name: .long, help: "Also measure a raw TCP ring whose buffers are as large as the tensor (not in cache).")
    var rawRingCold = false

    func run() throws {
        let comm = joinOrExit()
        if let segment { comm.segmentBytes = segment }
        if let readChunk { comm.reduceChunkBytes = readChunk }
        let n = comm.worldSize
        var rings: [(Baseline, RawRing)] = []
        do {
            if rawRing && n > 1 { rings.append((.raw, try RawRing(comm: comm))) }
            if rawRingCold && n > 1 { rings.append((.rawCold, try RawRing(comm: comm, span: sweep.maxBytes))) }
        } catch {
            fail("could not set up the raw TCP ring: \(error)")
        }
        let table = Table(baselines: rings.map(\.0))
        if comm.rank == 0 {
            emit(
                "# concord-bench allreduce: \(n) ranks, float32 sum, in place, \(sweep.iterations) iterations after \(sweep.warmup) warm-up, segment \(ByteSize.format(comm.segmentBytes)), read chunk \(ByteSize.format(comm.reduceChunkBytes))"
            )
            emit("#")
            emit(table.header)
        }
        var rows = [BenchRow]()
        var totalWrong = 0
        for bytes in sweep.sizes {
            let count = bytes / 4
            var data = [Float](repeating: 1, count: count)
            do {
                for _ in 0..<sweep.warmup { try comm.allReduceBlocking(&data) }
                try comm.barrierBlocking()
                let start = now()
                for _ in 0..<sweep.iterations { try comm.allReduceBlocking(&data) }
                let mine = (now() - start) / Double(sweep.iterations)
                let seconds = try comm.maxOverRanks(mine)
                var wrong: Int?
                if sweep.check == 1 {
                    for i in 0..<count { data[i] = distinctValue(rank: comm.rank, index: i) }
                    try comm.allReduceBlocking(&data)
                    var local = 0
                    for i in 0..<count where data[i] != distinctSum(worldSize: n, index: i) { local += 1 }
                    wrong = Int(try comm.sumOverRanks(Double(local)))
                    totalWrong += wrong!
                }
                let algbw = seconds > 0 ? Double(bytes) / seconds / 1e9 : 0
                var row = BenchRow(
                    collective: "allreduce", ranks: n, bytes: bytes, count: count, type: "float", redop: "sum",
                    timeMicroseconds: seconds * 1e6, algbw: algbw, busbw: algbw * 2 * Double(n - 1) / Double(n),
                    wrong: wrong)
                let linkBytes = max(1, bytes * 2 * (n - 1) / n)
                for (baseline, ring) in rings {
                    let rate = try ring.measure(linkBytes: linkBytes, iterations: sweep.iterations, warmup: min(sweep.warmup, 2))
                    if baseline == .raw { row.rawBusbw = rate } else { row.rawColdBusbw = rate }
                }
                rows.append(row)
                if comm.rank == 0 {
                    emit(table.line(row))
                }
            } catch {
                fail(error)
            }
        }
        if comm.rank == 0 {
            let average = rows.isEmpty ? 0 : rows.map(\.busbw).reduce(0, +) / Double(rows.count)
            emit("# Out of bounds values : \(totalWrong) \(totalWrong == 0 ? "OK" : "FAILED")")
            emit("# Avg bus bandwidth    : \(String(format: "%.4g", average))")
            emit("#")
            if let path = sweep.json {
                do { try writeJSON(rows, to: path) } catch { fail("cannot write \(path): \(error)") }
            }
        }
        for (_, ring) in rings { ring.close() }
        comm.shutdownBlocking()
        if totalWrong != 0 { throw ExitCode(2) }
    }
}

import Concord
import ConcordTestSupport
import Foundation
import Testing

/// Every collective of the public API, over loopback TCP, ranks as threads of this process.
@Suite("Collectives over libuv TCP", .serialized, .timeLimit(.minutes(3)))
struct CollectivesOverTCPTests {
    /// Joins `n` ranks and runs `body` on each; returns each rank's result.
    static func ranks<R: Sendable>(_ n: Int, _ body: @escaping @Sendable (Communicator) async throws -> R) async
        -> [Result<R, any Error>]
    {
        let port = freeTCPPort()
        return await withTaskGroup(of: (Int, Result<R, any Error>).self) { group in
            for rank in 0..<n {
                group.addTask {
                    do {
                        var configuration = Configuration(
                            rank: rank, worldSize: n, masterPort: port, joinTimeout: 20, peerTimeout: 5)
                        configuration.authentication = .insecure
                        let comm = try await Communicator(configuration: configuration)
                        comm.segmentBytes = 1024
                        defer { comm.shutdownBlocking() }
                        return (rank, .success(try await body(comm)))
                    } catch {
                        return (rank, .failure(error))
                    }
                }
            }
            var results = [Result<R, any Error>](repeating: .failure(RankTimedOut(rank: -1, seconds: 0)), count: n)
            for await (rank, result) in group { results[rank] = result }
            return results
        }
    }

    @Test("the array forms of every collective give NCCL's results", arguments: [1, 3])
    func arrays(n: Int) async {
        let count = 1001
        let results = await Self.ranks(n) { comm -> Bool in
            let r = comm.rank
            var ok = true
            // allReduce, avg on half precision
            var halves = (0..<count).map { Fixture.value(Float16.self, rank: r, index: $0, op: .avg) }
            try await comm.allReduce(&halves, op: .avg)
            ok = ok && halves == (0..<count).map { Fixture.expected(Float16.self, worldSize: n, index: $0, op: .avg) }
            // reduceScatter, wrapping int8 products
            let blocks = (0..<(n * count)).map { Fixture.value(Int8.self, rank: r, index: $0, op: .prod) }
            let mine = try await comm.reduceScatter(blocks, op: .prod)
            ok =
                ok
                && mine
                    == (0..<count).map { Fixture.expected(Int8.self, worldSize: n, index: r * count + $0, op: .prod) }
            // allGather of bfloat16
            let part = (0..<count).map { Fixture.value(BFloat16.self, rank: r, index: r * count + $0, op: .sum) }
            let all = try await comm.allGather(part)
            ok =
                ok
                && all == (0..<(n * count)).map { Fixture.value(BFloat16.self, rank: $0 / count, index: $0, op: .sum) }
            // broadcast of int64 from the last rank
            var longs = (0..<count).map { Int64(r * 1_000_000 + $0) }
            try await comm.broadcast(&longs, root: n - 1)
            ok = ok && longs == (0..<count).map { Int64((n - 1) * 1_000_000 + $0) }
            // reduce of doubles (max) to rank 0; the others keep their input
            var doubles = (0..<count).map { Fixture.value(Double.self, rank: r, index: $0, op: .max) }
            let before = doubles
            try await comm.reduce(&doubles, root: 0, op: .max)
            let want =
                r == 0 ? (0..<count).map { Fixture.expected(Double.self, worldSize: n, index: $0, op: .max) } : before
            ok = ok && doubles == want
            return ok
        }
        for (rank, result) in results.enumerated() {
            #expect((try? result.get()) == true, "rank \(rank): \(result)")
        }
    }

    @Test("ranks that reduce different dtypes fail naming both ranks and both dtypes")
    func dtypeMismatch() async {
        let results = await Self.ranks(2) { comm -> String in
            do {
                if comm.rank == 0 {
                    var data = [Float](repeating: 1, count: 64)
                    try await comm.allReduce(&data)
                } else {
                    var data = [Int32](repeating: 1, count: 64)
                    try await comm.allReduce(&data)
                }
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        for (rank, result) in results.enumerated() {
            let text = (try? result.get()) ?? "\(result)"
            #expect(text.contains("rank \(rank)") && text.contains("rank \(1 - rank)"), "\(text)")
            #expect(text.contains("float") && text.contains("int32"), "\(text)")
        }
    }

    @Test("a bad argument on one rank fails every rank by its next call instead of leaving them waiting")
    func badArgumentOnOneRank() async {
        let start = Date()
        let results = await Self.ranks(3) { comm -> String in
            var data = [Float](repeating: 1, count: 64)
            do {
                // Rank 1 is upstream of rank 2 in the chain and may finish its part before rank 2's abort
                // arrives; then its next call fails.
                try await comm.broadcast(&data, root: comm.rank == 2 ? 7 : 0)
                try await comm.barrier()
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        let texts = results.map { (try? $0.get()) ?? "\($0)" }
        #expect(texts[2].contains("rank 2") && texts[2].contains("7"), "\(texts[2])")
        for rank in 0..<2 {
            #expect(texts[rank].contains("rank \(rank)") && texts[rank].contains("rank 2"), "\(texts[rank])")
        }
        #expect(Date().timeIntervalSince(start) < 15)
    }
}

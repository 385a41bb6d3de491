import Concord
import ConcordTestSupport
import Foundation
import Testing

/// Async collectives and gradient buckets, ranks as threads over loopback TCP.
@Suite("Async collectives and GradientSynchronizer", .serialized, .timeLimit(.minutes(5)))
struct GradientSynchronizerTests {
    static func join(_ rank: Int, _ n: Int, _ port: Int) throws -> Communicator {
        try Communicator(blockingConfiguration: CommunicatorTests.configuration(rank: rank, worldSize: n, port: port))
    }

    @Test("async collectives run in issue order, overlap the caller, and a blocking call waits for them")
    func asyncOrder() throws {
        let n = 3
        let port = freeTCPPort()
        let results = withRanks(n, seconds: 60) { rank -> Int in
            let comm = try Self.join(rank, n, port)
            defer { comm.shutdownBlocking() }
            var wrong = 0
            // Different counts in a row: run out of order on any rank, they fail with a mismatch.
            let a = comm.allReduceAsync((0..<1000).map { distinctValue(rank: rank, index: $0) })
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: 100_003)
            defer { buffer.deallocate() }
            for i in buffer.indices { buffer[i] = distinctValue(rank: rank, index: i) }
            let b = comm.allReduceAsync(buffer)
            let c = comm.allGatherAsync([Int32(rank), Int32(rank * 10)])
            let d = comm.broadcastAsync([Double(rank), 7], root: 2)
            var blocking = [Int64](repeating: Int64(rank), count: 5)
            try comm.allReduceBlocking(&blocking)  // issued last: must run last
            #expect(a.isCompleted && b.isCompleted && c.isCompleted && d.isCompleted)
            let summed = try a.wait()
            wrong += (0..<1000).filter { summed[$0] != distinctSum(worldSize: n, index: $0) }.count
            try b.wait()
            wrong += buffer.indices.filter { buffer[$0] != distinctSum(worldSize: n, index: $0) }.count
            if try c.wait() != [0, 0, 1, 10, 2, 20] { wrong += 1 }
            if try d.wait() != [2, 7] { wrong += 1 }
            if blocking != [Int64](repeating: 3, count: 5) { wrong += 1 }
            return wrong
        }
        for (rank, result) in results.enumerated() { #expect((try? result.get()) == 0, "rank \(rank): \(result)") }
    }

    @Test("a Work issued after shutdown has failed with shutDown")
    func workAfterShutdown() throws {
        let port = freeTCPPort()
        let comm = try Self.join(0, 1, port)
        comm.shutdownBlocking()
        let work = comm.barrierAsync()
        #expect(work.isCompleted)
        #expect(throws: ConcordError.self) { try work.wait() }
    }

    @Test("a Work in flight when its peer leaves and the communicator shuts down ends with an error, never hangs")
    func workAcrossShutdown() throws {
        let port = freeTCPPort()
        let results = withRanks(2, seconds: 60) { rank -> String in
            let comm = try Self.join(rank, 2, port)
            if rank == 1 {
                comm.shutdownBlocking()  // never joins rank 0's collective
                return "left"
            }
            let work = comm.allReduceAsync([Float](repeating: 1, count: 1 << 20))
            comm.shutdownBlocking()
            do {
                _ = try work.wait()
                return "completed"
            } catch {
                return "\(error)"
            }
        }
        let outcome = try results[0].get()
        #expect(outcome != "completed", "the all-reduce cannot complete without rank 1")
        #expect(outcome.contains("rank 1") || outcome.contains("shut"), "\(outcome)")
        #expect((try? results[1].get()) == "left")
    }

    /// Parameter sizes that make odd buckets: empty, one element, sizes not a multiple of anything.
    static let sizes = [7, 1, 30_001, 0, 5, 1_003, 13]

    /// Rank r's gradient of parameter p: a distinct value per rank, parameter and index.
    static func gradient(rank: Int, parameter: Int, index: Int) -> Float {
        distinctValue(rank: rank, index: index &+ parameter &* 100_000) / 64
    }

    /// Runs `steps` synchronizer steps on n ranks with weights `weights`; returns every rank's gradients after
    /// the last step, and the reports.
    static func synchronize(
        ranks n: Int, weights: [Double], options: GradientSynchronizer.Options, steps: Int = 1,
        scrambleMarks: Bool = true
    ) -> [Result<([[Float]], [[Float]], [[Int]]), any Error>] {
        let port = freeTCPPort()
        return withRanks(n, seconds: 90) { rank -> ([[Float]], [[Float]], [[Int]]) in
            let comm = try Self.join(rank, n, port)
            defer { comm.shutdownBlocking() }
            let buffers = sizes.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0) }
            defer { for b in buffers { b.deallocate() } }
            let sync = GradientSynchronizer(communicator: comm, options: options)
            for (p, buffer) in buffers.enumerated() { sync.register(buffer, name: "p\(p)") }
            var perStep: [[Float]] = []
            for _ in 0..<steps {
                sync.beginStep(weight: weights[rank])
                // Backward order, except that rank 1 marks inside buckets out of order.
                var order = Array(sizes.indices.reversed())
                if scrambleMarks && rank == 1 { order.swapAt(0, 1); order.swapAt(3, 5) }
                for p in order {
                    for i in buffers[p].indices { buffers[p][i] = gradient(rank: rank, parameter: p, index: i) }
                    try sync.markReady(p)
                }
                let report = try sync.finish()
                #expect(report.buckets == sync.bucketLayout.count)
                #expect(abs(report.totalWeight - weights.reduce(0, +)) < 1e-9)
                perStep.append(buffers.flatMap { Array($0) })
            }
            return (buffers.map { Array($0) }, perStep, sync.bucketLayout)
        }
    }

    /// Σ_r w_r·g_r / Σ_r w_r in double precision.
    static func weightedAverage(weights: [Double], parameter p: Int, index i: Int) -> Double {
        let total = weights.reduce(0, +)
        return weights.indices.reduce(0.0) { $0 + weights[$1] * Double(gradient(rank: $1, parameter: p, index: i)) }
            / total
    }

    @Test("weighted average over buckets equals the average over the union of batches; replicas identical")
    func weightedAverage() throws {
        let weights: [Double] = [8, 24, 3]  // local batch sizes
        let options = GradientSynchronizer.Options(firstBucketBytes: 64, bucketBytes: 4096)
        let results = Self.synchronize(ranks: 3, weights: weights, options: options)
        let outputs = try results.map { try $0.get() }
        // Buckets: reverse registration order, every parameter in exactly one, capacities respected.
        let layout = outputs[0].2
        #expect(layout.flatMap { $0 } == Array(Self.sizes.indices.reversed()))
        #expect(layout.count > 3)
        for (b, bucket) in layout.enumerated() where bucket.count > 1 {
            let bytes = bucket.reduce(0) { $0 + Self.sizes[$1] * 4 }
            #expect(bytes <= (b == 0 ? 64 : 4096))
        }
        for output in outputs.dropFirst() { #expect(output.0 == outputs[0].0, "replicas differ") }
        // Float rounding: each g·(w_r/W) is rounded once and the sum of 3 terms twice, so the error is a few
        // units in the last place of the largest term: 1e-6 relative to max |g| (≤ 8) is ample.
        var worst = 0.0
        for (p, values) in outputs[0].0.enumerated() {
            for (i, value) in values.enumerated() {
                worst = max(worst, abs(Double(value) - Self.weightedAverage(weights: weights, parameter: p, index: i)))
            }
        }
        #expect(worst <= 8e-6, "largest error \(worst)")
    }

    @Test(
        "compressed gradients stay within their error bound and replicas stay identical",
        arguments: [GradientSynchronizer.Compression.fp16, .bf16, .int8])
    func compressionBounds(compression: GradientSynchronizer.Compression) throws {
        // |g| ≤ 8. fp16 keeps 11 significant bits: a relative error ≤ 2^-11 per rounding, a few roundings
        // (pack, hops, gather) stay below 8·2^-10. bf16 keeps 8 bits: below 8·2^-6. int8 rounds to a step of
        // blockmax/127 at most once per hop plus once when gathered: (hops + 1)·step/2 ≤ 2·8/127 for 2 ranks.
        let bound: Double
        switch compression {
        case .fp16: bound = 8.0 / 1024
        case .bf16: bound = 8.0 / 64
        default: bound = 2 * 8.0 / 127
        }
        let weights: [Double] = [1, 3]
        let options = GradientSynchronizer.Options(firstBucketBytes: 4096, bucketBytes: 65536, compression: compression)
        let outputs = try Self.synchronize(ranks: 2, weights: weights, options: options).map { try $0.get() }
        #expect(outputs[1].0 == outputs[0].0, "replicas differ")
        var worst = 0.0
        for (p, values) in outputs[0].0.enumerated() {
            for (i, value) in values.enumerated() {
                worst = max(worst, abs(Double(value) - Self.weightedAverage(weights: weights, parameter: p, index: i)))
            }
        }
        #expect(worst <= bound, "\(compression): largest error \(worst) exceeds \(bound)")
        #expect(worst > 0, "\(compression) changed nothing: is it on the wire?")
    }

    @Test("async finish: ranks as tasks, the weighted average on every rank, no thread of the pool blocked")
    func asyncFinish() async throws {
        let port = freeTCPPort()
        let weights: [Double] = [2, 6]
        let sums = try await withThrowingTaskGroup(of: (Int, [Float]).self) { group in
            for rank in 0..<2 {
                group.addTask {
                    let comm = try await Communicator(
                        configuration: CommunicatorTests.configuration(rank: rank, worldSize: 2, port: port))
                    let gradient = UnsafeMutableBufferPointer<Float>.allocate(capacity: 1000)
                    defer { gradient.deallocate() }
                    let sync = GradientSynchronizer(communicator: comm)
                    sync.register(gradient)
                    sync.beginStep(weight: weights[rank])
                    for i in gradient.indices { gradient[i] = Self.gradient(rank: rank, parameter: 0, index: i) }
                    try sync.markReady(0)
                    try await sync.finish()
                    await comm.shutdown()
                    return (rank, Array(gradient))
                }
            }
            var sums = [[Float]](repeating: [], count: 2)
            for try await (rank, values) in group { sums[rank] = values }
            return sums
        }
        #expect(sums[0] == sums[1], "replicas differ")
        let worst = (0..<1000).map {
            abs(Double(sums[0][$0]) - Self.weightedAverage(weights: weights, parameter: 0, index: $0))
        }.max()!
        #expect(worst <= 8e-6, "largest error \(worst)")
    }

    @Test("int8 error feedback: the mean of many steps converges to the exact average")
    func errorFeedback() throws {
        let weights: [Double] = [1, 1]
        let steps = 16
        let options = GradientSynchronizer.Options(compression: .int8)
        let outputs = try Self.synchronize(ranks: 2, weights: weights, options: options, steps: steps).map { try $0.get() }
        let perStep = outputs[0].1
        var worstSingle = 0.0
        var worstMean = 0.0
        var flat = 0
        for p in Self.sizes.indices {
            for i in 0..<Self.sizes[p] {
                let exact = Self.weightedAverage(weights: weights, parameter: p, index: i)
                let mean = perStep.reduce(0.0) { $0 + Double($1[flat]) } / Double(steps)
                worstSingle = max(worstSingle, abs(Double(perStep[0][flat]) - exact))
                worstMean = max(worstMean, abs(mean - exact))
                flat += 1
            }
        }
        // Without feedback every step repeats the same rounding and the mean keeps the single-step error.
        // With it, the residual is re-sent: the mean's error shrinks roughly as 1/steps.
        #expect(worstMean < worstSingle / 4, "mean error \(worstMean), single-step error \(worstSingle)")
    }
}

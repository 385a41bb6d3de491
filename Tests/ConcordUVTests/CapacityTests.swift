import Concord
import ConcordTestSupport
import Foundation
import Testing

/// Capacity-aware all-reduce over loopback TCP: the plan is re-made every few collectives, at the same
/// sequence number on every rank, and results stay exact (float32) or identical (compressed slow links).
@Suite("Capacity-aware rings over TCP", .serialized, .timeLimit(.minutes(5)))
struct CapacityTests {
    @Test("ranks re-plan together every few collectives and still sum exactly", arguments: [2, 3])
    func replanTogether(ranks n: Int) throws {
        let port = freeTCPPort()
        let count = 100_003  // 400 KB: above the 64 KiB the plan applies from
        let results = withRanks(n, seconds: 90) { rank -> (wrong: Int, plans: [String]) in
            var configuration = CommunicatorTests.configuration(rank: rank, worldSize: n, port: port)
            configuration.capacityPolicy = .weighted
            configuration.replanEvery = 3
            let comm = try Communicator(blockingConfiguration: configuration)
            defer { comm.shutdownBlocking() }
            var wrong = 0
            var plans: [String] = []
            for round in 0..<8 {
                var data = (0..<count).map { distinctValue(rank: rank, index: $0 &+ round) }
                if round % 2 == 0 {
                    try comm.allReduceBlocking(&data)
                } else {
                    data = try comm.allReduceAsync(data).wait()
                }
                wrong += (0..<count).filter { data[$0] != distinctSum(worldSize: n, index: $0 &+ round) }.count
                let plan = try #require(comm.capacityPlan, "rank \(rank): no plan under the weighted policy")
                plans.append("\(plan.since): \(plan.plan.chunkWeights)")
            }
            #expect(comm.links.count == n && comm.links.allSatisfy { $0.bytesPerSecond > 0 })
            return (wrong, plans)
        }
        let outputs = try results.map { try $0.get() }
        for (rank, output) in outputs.enumerated() {
            #expect(output.wrong == 0, "rank \(rank) got \(output.wrong) wrong values")
            // The same plan, taking effect at the same sequence number, after every collective.
            #expect(output.plans == outputs[0].plans, "rank \(rank) planned differently")
        }
    }

    @Test("a ring with one slow link compresses only that link, and every rank ends with the same bits")
    func slowLinkCompressed() throws {
        // Links as a probe would report them: link 1 → 2 ten times slower than the others.
        let links = [100e6, 10e6, 100e6].map { LinkEstimate(bytesPerSecond: $0, latencySeconds: 1e-4) }
        let plan = try #require(CapacityPolicy.weightedCompressed(.int8).plan(for: links))
        #expect(plan.hopCodecs == [.float32, .int8(blockSize: WireCodec.defaultInt8BlockSize), .float32])
        let weighted = try #require(CapacityPolicy.weighted.plan(for: links))
        #expect(weighted.hopCodecs.allSatisfy { $0 == .float32 })
        let port = freeTCPPort()
        let count = 50_000
        let results = withRanks(3, seconds: 60) { rank -> [Float] in
            let comm = try Communicator(
                blockingConfiguration: CommunicatorTests.configuration(rank: rank, worldSize: 3, port: port))
            defer { comm.shutdownBlocking() }
            var data = (0..<count).map { distinctValue(rank: rank, index: $0) }
            try data.withUnsafeMutableBufferPointer { try comm.sumBlocking($0, plan: plan) }
            return data
        }
        let outputs = try results.map { try $0.get() }
        #expect(outputs[1] == outputs[0] && outputs[2] == outputs[0], "ranks differ")
        // int8 on one hop (plus the gather): a few steps of |max|/127 at most; the values are below 1536.
        let worst = (0..<count).map { abs(Double(outputs[0][$0]) - Double(distinctSum(worldSize: 3, index: $0))) }.max()!
        #expect(worst > 0 && worst < 3 * 1536 / 127, "largest error \(worst)")
    }
}

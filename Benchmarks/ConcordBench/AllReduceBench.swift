// concord-bench allreduce: every rank ends with the reduction of all ranks' buffers.
// Bus factor 2(n-1)/n: each ring link carries 2·S·(n-1)/n bytes.
import ArgumentParser
import Concord
import ConcordTestSupport

struct AllReduceBench: ParsableCommand, BenchedCollective {
    static let configuration = CommandConfiguration(
        commandName: "allreduce", abstract: "Ring all-reduce over a sweep of sizes, dtypes and ops.")

    @OptionGroup var sweep: SweepOptions
    @OptionGroup var options: CollectiveOptions

    @Flag(name: .long, help: "Also measure the raw TCP ring (the physical limit) for each size, interleaved.")
    var rawRing = false

    @Flag(name: .long, help: "Also measure a raw TCP ring whose buffers are as large as the tensor (not in cache).")
    var rawRingCold = false

    func run() throws {
        try runCollective(Self.self, sweep: sweep, options: options, rawRing: rawRing, rawRingCold: rawRingCold)
    }

    static let name = "allreduce"
    static func busFactor(ranks n: Int) -> Double { 2 * Double(n - 1) / Double(n) }
    static func shape(count: Int, ranks n: Int) -> (input: Int, output: Int) { (count, count) }

    static func run<T: TestElement>(
        _ comm: Communicator, input: UnsafeBufferPointer<T>, output: UnsafeMutableBufferPointer<T>, op: ReduceOp,
        root: Int
    ) throws {
        try comm.allReduceBlocking(input, into: output, op: op)  // in place when they are the same memory
    }

    static func expected<T: TestElement>(
        _: T.Type, rank: Int, ranks n: Int, index: Int, shape: (input: Int, output: Int), op: ReduceOp, root: Int
    ) -> T? {
        Fixture.expected(T.self, worldSize: n, index: index, op: op)
    }
}

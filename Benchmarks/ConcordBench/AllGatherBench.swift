// concord-bench allgather: every rank ends with every rank's block; size = the gathered output.
// Bus factor (n-1)/n: each ring link carries S·(n-1)/n bytes.
import ArgumentParser
import Concord
import ConcordTestSupport

struct AllGatherBench: ParsableCommand, BenchedCollective {
    static let configuration = CommandConfiguration(
        commandName: "allgather", abstract: "Ring all-gather over a sweep of sizes and dtypes.")

    @OptionGroup var sweep: SweepOptions
    @OptionGroup var options: CollectiveOptions

    func run() throws { try runCollective(Self.self, sweep: sweep, options: options) }

    static let name = "allgather"
    static let reduces = false
    static func busFactor(ranks n: Int) -> Double { Double(n - 1) / Double(n) }
    static func shape(count: Int, ranks n: Int) -> (input: Int, output: Int) { (count / n, count / n * n) }
    static func inPlaceOffsets(shape: (input: Int, output: Int), rank: Int) -> (input: Int, output: Int) {
        (rank * shape.input, 0)
    }

    static func run<T: TestElement>(
        _ comm: Communicator, input: UnsafeBufferPointer<T>, output: UnsafeMutableBufferPointer<T>, op: ReduceOp,
        root: Int
    ) throws {
        try comm.allGatherBlocking(input, into: output)
    }

    /// Rank r's block holds the values rank r has at the block's global indices.
    static func input<T: TestElement>(_: T.Type, rank: Int, index: Int, shape: (input: Int, output: Int), op: ReduceOp)
        -> T
    {
        Fixture.value(T.self, rank: rank, index: rank * shape.input + index, op: .sum)
    }

    static func expected<T: TestElement>(
        _: T.Type, rank: Int, ranks n: Int, index: Int, shape: (input: Int, output: Int), op: ReduceOp, root: Int
    ) -> T? {
        Fixture.value(T.self, rank: index / max(1, shape.input), index: index, op: .sum)
    }
}

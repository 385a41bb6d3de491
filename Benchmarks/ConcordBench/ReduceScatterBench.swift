// concord-bench reducescatter: rank r ends with block r of the reduction; size = the whole input.
// Bus factor (n-1)/n: each ring link carries S·(n-1)/n bytes.
import ArgumentParser
import Concord
import ConcordTestSupport

struct ReduceScatterBench: ParsableCommand, BenchedCollective {
    static let configuration = CommandConfiguration(
        commandName: "reducescatter", abstract: "Ring reduce-scatter over a sweep of sizes, dtypes and ops.")

    @OptionGroup var sweep: SweepOptions
    @OptionGroup var options: CollectiveOptions

    func run() throws { try runCollective(Self.self, sweep: sweep, options: options) }

    static let name = "reducescatter"
    static func busFactor(ranks n: Int) -> Double { Double(n - 1) / Double(n) }
    static func shape(count: Int, ranks n: Int) -> (input: Int, output: Int) { (count / n * n, count / n) }
    static func inPlaceOffsets(shape: (input: Int, output: Int), rank: Int) -> (input: Int, output: Int) {
        (0, rank * shape.output)
    }

    static func run<T: TestElement>(
        _ comm: Communicator, input: UnsafeBufferPointer<T>, output: UnsafeMutableBufferPointer<T>, op: ReduceOp,
        root: Int
    ) throws {
        try comm.reduceScatterBlocking(input, into: output, op: op)
    }

    static func expected<T: TestElement>(
        _: T.Type, rank: Int, ranks n: Int, index: Int, shape: (input: Int, output: Int), op: ReduceOp, root: Int
    ) -> T? {
        Fixture.expected(T.self, worldSize: n, index: rank * shape.output + index, op: op)
    }
}

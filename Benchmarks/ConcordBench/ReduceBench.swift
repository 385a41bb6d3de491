// concord-bench reduce: the reduction of every rank's buffer lands on the root, along a pipelined chain.
// Bus factor 1: each link on the chain carries S bytes.
import ArgumentParser
import Concord
import ConcordTestSupport

struct ReduceBench: ParsableCommand, BenchedCollective {
    static let configuration = CommandConfiguration(
        commandName: "reduce", abstract: "Pipelined reduce to -r root over a sweep of sizes, dtypes and ops.")

    @OptionGroup var sweep: SweepOptions
    @OptionGroup var options: CollectiveOptions

    func run() throws { try runCollective(Self.self, sweep: sweep, options: options) }

    static let name = "reduce"
    static let rooted = true
    static func busFactor(ranks n: Int) -> Double { 1 }
    static func shape(count: Int, ranks n: Int) -> (input: Int, output: Int) { (count, count) }

    static func run<T: TestElement>(
        _ comm: Communicator, input: UnsafeBufferPointer<T>, output: UnsafeMutableBufferPointer<T>, op: ReduceOp,
        root: Int
    ) throws {
        try comm.reduceBlocking(input, into: output, root: root, op: op)
    }

    /// Only the root's output is specified.
    static func expected<T: TestElement>(
        _: T.Type, rank: Int, ranks n: Int, index: Int, shape: (input: Int, output: Int), op: ReduceOp, root: Int
    ) -> T? {
        rank == root ? Fixture.expected(T.self, worldSize: n, index: index, op: op) : nil
    }
}

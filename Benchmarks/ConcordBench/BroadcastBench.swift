// concord-bench broadcast: the root's buffer reaches every rank, along a pipelined chain.
// Bus factor 1: each link on the chain carries S bytes.
import ArgumentParser
import Concord
import ConcordTestSupport

struct BroadcastBench: ParsableCommand, BenchedCollective {
    static let configuration = CommandConfiguration(
        commandName: "broadcast", abstract: "Pipelined broadcast from -r root over a sweep of sizes and dtypes.")

    @OptionGroup var sweep: SweepOptions
    @OptionGroup var options: CollectiveOptions

    func run() throws { try runCollective(Self.self, sweep: sweep, options: options) }

    static let name = "broadcast"
    static let reduces = false
    static let rooted = true
    static func busFactor(ranks n: Int) -> Double { 1 }
    static func shape(count: Int, ranks n: Int) -> (input: Int, output: Int) { (count, count) }

    static func run<T: TestElement>(
        _ comm: Communicator, input: UnsafeBufferPointer<T>, output: UnsafeMutableBufferPointer<T>, op: ReduceOp,
        root: Int
    ) throws {
        try comm.broadcastBlocking(input, into: output, root: root)  // in place when they are the same memory
    }

    static func expected<T: TestElement>(
        _: T.Type, rank: Int, ranks n: Int, index: Int, shape: (input: Int, output: Int), op: ReduceOp, root: Int
    ) -> T? {
        Fixture.value(T.self, rank: root, index: index, op: .sum)
    }

    static func input<T: TestElement>(_: T.Type, rank: Int, index: Int, shape: (input: Int, output: Int), op: ReduceOp)
        -> T
    {
        Fixture.value(T.self, rank: rank, index: index, op: .sum)
    }
}

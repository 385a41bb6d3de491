import ConcordCollectives
import ConcordCore
import ConcordTestSupport
import Testing

@Suite("Collectives whose ranks disagree, or whose arguments cannot work")
struct CollectiveErrorTests {
    /// Runs `calls` (one per rank) and expects every rank to fail quickly with a `ConcordError` whose
    /// text contains every string of `words` and at least one string of each group in `anyOf`; the ranks
    /// in `mayFinish` may instead return normally (see `upstream`).
    static func expectEveryRankFails(
        _ calls: [Call], mentioning words: [String], anyOf groups: [[String]] = [], mayFinish: Set<Int> = [],
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> [ConcordError] {
        let clock = ContinuousClock()
        let start = clock.now
        let errors = Harness.errors(calls)
        #expect(clock.now - start < .seconds(5), "ranks waited instead of failing", sourceLocation: sourceLocation)
        var found = [ConcordError]()
        for (rank, error) in errors.enumerated() {
            if error == nil && mayFinish.contains(rank) { continue }
            guard let error = error as? ConcordError else {
                Issue.record(
                    "rank \(rank) of \(calls[rank]): \(errors[rank].map { "\($0)" } ?? "no error")",
                    sourceLocation: sourceLocation)
                continue
            }
            found.append(error)
            let text = error.description
            for word in words {
                #expect(text.contains(word), "rank \(rank): \(text) lacks \(word)", sourceLocation: sourceLocation)
            }
            for group in groups {
                #expect(
                    group.contains(where: text.contains), "rank \(rank): \(text) lacks one of \(group)",
                    sourceLocation: sourceLocation)
            }
        }
        return found
    }

    /// The ranks of a chain collective that may finish before a disagreement of rank `odd` is seen:
    /// those whose frames all go to ranks before `odd` (a chain has no way back to tell them; the
    /// transport fails their next call). Ring collectives have none: every rank waits on every other.
    static func upstream(of odd: Int, _ call: Call, ranks n: Int) -> Set<Int> {
        let head: Int
        switch call.collective {
        case .allReduce, .reduceScatter, .allGather: return []
        case .broadcast: head = call.root
        case .reduce: head = (call.root + 1) % n
        }
        let hop = { (rank: Int) in (rank - head + n) % n }
        return Set((0..<n).filter { hop($0) < hop(odd) - 1 })
    }

    static func mismatches(_ errors: [ConcordError], what: String) -> Int {
        errors.filter {
            if case .mismatch(_, _, what, _, _) = $0 { return true }
            return false
        }.count
    }

    @Test(
        "a rank with another dtype: every rank fails, naming both ranks and both dtypes", arguments: Collective.allCases
    )
    func dataTypeMismatch(_ collective: Collective) {
        for (n, odd) in [(3, 1), (4, 3)] {
            let calls = (0..<n).map { rank in
                Call(collective: collective, dataType: rank == odd ? .float64 : .float32, op: .sum, count: 10, root: 0)
            }
            // The odd rank meets its left or its right first, whichever link pairs first.
            let errors = Self.expectEveryRankFails(
                calls, mentioning: ["rank \(odd)", "float", "double"],
                anyOf: [["rank \((odd + n - 1) % n)", "rank \((odd + 1) % n)"]],
                mayFinish: Self.upstream(of: odd, calls[0], ranks: n))
            #expect(Self.mismatches(errors, what: "data type") >= 1)
        }
    }

    @Test(
        "a rank with another op: every rank fails, naming both ranks and both ops",
        arguments: [Collective.allReduce, .reduceScatter, .reduce])
    func opMismatch(_ collective: Collective) {
        for (n, odd, root) in [(3, 2, 1), (5, 1, 3)] {
            let calls = (0..<n).map { rank in
                Call(collective: collective, dataType: .int32, op: rank == odd ? .max : .sum, count: 10, root: root)
            }
            let errors = Self.expectEveryRankFails(
                calls, mentioning: ["rank \(odd)", "max", "sum"],
                anyOf: [["rank \((odd + n - 1) % n)", "rank \((odd + 1) % n)"]],
                mayFinish: Self.upstream(of: odd, calls[0], ranks: n))
            #expect(Self.mismatches(errors, what: "reduce op") >= 1)
        }
    }

    @Test("a rank calling broadcast while the others call allGather: every rank fails, naming both collectives")
    func collectiveMismatch() {
        for n in [2, 3, 4] {
            let calls = (0..<n).map { rank in
                Call(collective: rank == 1 ? .broadcast : .allGather, dataType: .float32, count: 8, root: 0)
            }
            let errors = Self.expectEveryRankFails(calls, mentioning: ["rank 1", "broadcast", "allGather"])
            #expect(Self.mismatches(errors, what: "collective") >= 1)
        }
    }

    @Test("a rank with another count: every rank fails, naming both counts", arguments: Collective.allCases)
    func countMismatch(_ collective: Collective) {
        for (counts, odd) in [([10, 10, 11], 2), ([0, 1, 0], 1)] {
            let calls = counts.map { Call(collective: collective, dataType: .float32, count: $0, root: 2) }
            let errors = Self.expectEveryRankFails(
                calls, mentioning: ["rank \(odd)", "\(counts[0]) elements", "\(counts[odd]) elements"],
                mayFinish: Self.upstream(of: odd, calls[0], ranks: 3))
            #expect(Self.mismatches(errors, what: "element count") >= 1)
        }
    }

    @Test("ranks that name different roots fail, naming both roots", arguments: [Collective.broadcast, .reduce])
    func rootMismatch(_ collective: Collective) {
        for (n, odd) in [(2, 1), (3, 2), (4, 1)] {
            let calls = (0..<n).map { rank in
                Call(collective: collective, dataType: .float32, count: 10, root: rank == odd ? n - 1 : 0)
            }
            let errors = Self.expectEveryRankFails(
                calls, mentioning: ["root 0", "root \(n - 1)"], mayFinish: Self.upstream(of: odd, calls[0], ranks: n))
            #expect(Self.mismatches(errors, what: "root") >= 1, "\(collective) n=\(n): \(errors)")
        }
    }

    @Test(
        "avg on an integer type: invalidArgument on every rank, at once",
        arguments: [Collective.allReduce, .reduceScatter, .reduce])
    func averageOfIntegers(_ collective: Collective) {
        for n in [1, 3] {
            for inPlace in [false, true] {
                let calls = (0..<n).map { _ in
                    Call(collective: collective, dataType: .int32, op: .avg, count: 5, inPlace: inPlace)
                }
                let errors = Self.expectEveryRankFails(
                    calls, mentioning: ["avg is not defined on int32; use sum and divide"])
                #expect(errors.count == n)
                for error in errors {
                    if case .invalidArgument = error {} else { Issue.record("\(error) is not invalidArgument") }
                }
            }
        }
    }

    @Test("a root out of range: invalidArgument on every rank, at once", arguments: [Collective.broadcast, .reduce])
    func rootOutOfRange(_ collective: Collective) {
        for (n, root) in [(1, 1), (3, 3), (3, -1), (4, 100)] {
            for inPlace in [false, true] {
                let calls = (0..<n).map { _ in
                    Call(collective: collective, dataType: .float32, count: 5, root: root, inPlace: inPlace)
                }
                let errors = Self.expectEveryRankFails(calls, mentioning: ["root \(root)", "0..<\(n)"])
                #expect(errors.count == n)
                for error in errors {
                    if case .invalidArgument = error {} else { Issue.record("\(error) is not invalidArgument") }
                }
            }
        }
    }
}

// The order of ranks around the ring, chosen to minimize the total round-trip time of its links.
//
//   two access points, rank order:  0 ─▶ 1 ─▶ 2 ─▶ 3 ─▶ 0      crosses the slow link 4 times
//        AP-A: 0, 2    AP-B: 1, 3
//   chosen order:                   0 ─▶ 2 ─▶ 1 ─▶ 3 ─▶ 0      crosses it twice (the least any ring can)
//
// A ring all-reduce moves the same bytes over every link, so its time is set by the links it uses; the
// total RTT of the ring is the objective (a travelling-salesman tour over the members, starting at rank 0).
//
// - n ≤ `exactLimit` (10): exact, Held–Karp dynamic programming over subsets, O(2^n · n^2) steps
//   (10 ranks: about 10^5, well under a millisecond).
// - n > `exactLimit`: nearest neighbour from rank 0, then 2-opt (reverse a stretch when that shortens the
//   ring) until no reversal helps: O(n^2) per pass, capped at 100·n improvements.
//
// Determinism: every member must compute the same order from the same matrix. Costs are rounded to whole
// nanoseconds, so sums are exact integers and ties are real ties; the exact search returns the
// lexicographically smallest optimal order (which also fixes the direction: second rank < last rank), and
// the heuristic scans in rank order and orients its result the same way. Unmeasured links cost twice the
// slowest measured one (they are avoided when measured ones can do); with no measurement at all the order
// is rank order. In practice the coordinator computes the order once and carries it in its proposal, so
// members need not even compute it.

/// A ring: the ranks in the order bytes flow, starting at rank 0.
public struct RingOrder: Sendable, Equatable, CustomStringConvertible {
    /// The ranks in ring order; `ranks[0] == 0` and every rank in `0..<count` appears once.
    public let ranks: [Int]

    /// Rings up to this many ranks are searched exactly; larger ones heuristically.
    package static let exactLimit = 10

    /// A ring from its ranks; nil unless `ranks` is a permutation of `0..<ranks.count` starting at 0.
    public init?(ranks: [Int]) {
        guard ranks.isEmpty || ranks[0] == 0 else { return nil }
        var seen = [Bool](repeating: false, count: ranks.count)
        for r in ranks {
            guard r >= 0 && r < ranks.count && !seen[r] else { return nil }
            seen[r] = true
        }
        self.ranks = ranks
    }

    private init(unchecked ranks: [Int]) { self.ranks = ranks }

    /// Rank order: 0 → 1 → … → count-1 → 0.
    public static func identity(count: Int) -> RingOrder { RingOrder(unchecked: Array(0..<count)) }

    /// The number of ranks.
    public var count: Int { ranks.count }

    /// The rank that `rank` sends to.
    public func successor(of rank: Int) -> Int { ranks[(position(of: rank) + 1) % count] }

    /// The rank that `rank` receives from.
    public func predecessor(of rank: Int) -> Int { ranks[(position(of: rank) + count - 1) % count] }

    /// Where `rank` sits in the ring (0 for rank 0).
    public func position(of rank: Int) -> Int {
        guard let p = ranks.firstIndex(of: rank) else { preconditionFailure("rank \(rank) is not in \(self)") }
        return p
    }

    /// The ring's links in order, as (from, to) rank pairs; none for a ring of one.
    public var links: [(from: Int, to: Int)] {
        count < 2 ? [] : (0..<count).map { (ranks[$0], ranks[($0 + 1) % count]) }
    }

    /// The sum of the links' round-trip times in seconds; nil when a link is unmeasured.
    public func totalSeconds(rtt: RTTMatrix) -> Double? {
        var total = 0.0
        for link in links {
            guard let s = rtt[link.from, link.to] else { return nil }
            total += s
        }
        return total
    }

    /// "0 → 2 → 1 → 3 → 0"
    public var description: String {
        ranks.isEmpty ? "(empty ring)" : (ranks + [0]).map(String.init).joined(separator: " → ")
    }

    // MARK: Choosing the order

    /// The order with the smallest total round-trip time for `rtt` (see the file comment); rank order when
    /// nothing is measured.
    public static func choose(rtt: RTTMatrix) -> RingOrder {
        let n = rtt.count
        guard n > 3, rtt.hasMeasurements else { return identity(count: n) }  // 3 ranks: every ring is the same
        let w = costs(rtt)
        return RingOrder(unchecked: n <= exactLimit ? heldKarp(w, n) : twoOpt(w, n, start: nearestNeighbour(w, n)))
    }

    /// Integer nanosecond costs, row-major; unmeasured links cost twice the slowest measured one.
    package static func costs(_ rtt: RTTMatrix) -> [Int64] {
        let n = rtt.count
        var slowest: Int64 = 1
        for a in 0..<n { for b in 0..<n { if let s = rtt[a, b] { slowest = max(slowest, nanoseconds(s)) } } }
        var w = [Int64](repeating: 0, count: n * n)
        for a in 0..<n {
            for b in 0..<n where a != b { w[a * n + b] = rtt[a, b].map(nanoseconds) ?? 2 * slowest }
        }
        return w
    }

    private static func nanoseconds(_ seconds: Double) -> Int64 { Int64(min(seconds, 1e6) * 1e9) }

    /// The total cost of a tour under integer costs `w`.
    package static func cost(_ tour: [Int], _ w: [Int64]) -> Int64 {
        let n = tour.count
        guard n > 1 else { return 0 }
        return (0..<n).reduce(Int64(0)) { $0 + w[tour[$1] * n + tour[($1 + 1) % n]] }
    }

    /// Exact: `rest[S][j]` = the cheapest way, standing at j having visited the set S (which holds 0 and j),
    /// to visit the others and return to 0. Walking forward from ({0}, 0), always taking the smallest next
    /// rank that stays optimal, yields the lexicographically smallest optimal tour.
    private static func heldKarp(_ w: [Int64], _ n: Int) -> [Int] {
        let full = (1 << n) - 1
        let unreachable = Int64.max / 4
        var rest = [Int64](repeating: unreachable, count: (full + 1) * n)
        for j in 0..<n { rest[full * n + j] = w[j * n] }
        var set = full - 1
        while set > 0 {
            if set & 1 != 0 {
                for j in 0..<n where set & (1 << j) != 0 {
                    var best = unreachable
                    for k in 0..<n where set & (1 << k) == 0 {
                        best = min(best, w[j * n + k] + rest[(set | 1 << k) * n + k])
                    }
                    rest[set * n + j] = best
                }
            }
            set -= 1
        }
        var tour = [0]
        var visited = 1
        var here = 0
        while visited != full {
            let target = rest[visited * n + here]
            guard
                let next = (0..<n).first(where: {
                    visited & (1 << $0) == 0 && w[here * n + $0] + rest[(visited | 1 << $0) * n + $0] == target
                })
            else { preconditionFailure("Held-Karp table inconsistent") }
            tour.append(next)
            visited |= 1 << next
            here = next
        }
        return tour
    }

    /// From rank 0, always go to the nearest unvisited rank (the smaller rank on a tie).
    private static func nearestNeighbour(_ w: [Int64], _ n: Int) -> [Int] {
        var tour = [0]
        var unvisited = Set(1..<n)
        var here = 0
        while !unvisited.isEmpty {
            let next = unvisited.min { (w[here * n + $0], $0) < (w[here * n + $1], $1) }!
            tour.append(next)
            unvisited.remove(next)
            here = next
        }
        return tour
    }

    /// Reverses stretches `tour[i...k]` (first improvement, scanning i then k upwards) until none helps,
    /// then orients the ring so that its second rank is smaller than its last.
    private static func twoOpt(_ w: [Int64], _ n: Int, start: [Int]) -> [Int] {
        var tour = start
        var improvements = 0
        var improved = true
        while improved && improvements < 100 * n {
            improved = false
            scan: for i in 1..<(n - 1) {
                for k in (i + 1)..<n {
                    let a = tour[i - 1]
                    let b = tour[i]
                    let c = tour[k]
                    let d = tour[(k + 1) % n]
                    let delta = w[a * n + c] + w[b * n + d] - w[a * n + b] - w[c * n + d]
                    if delta < 0 {
                        tour[i...k].reverse()
                        improvements += 1
                        improved = true
                        break scan
                    }
                }
            }
        }
        if tour[1] > tour[n - 1] { tour[1...].reverse() }
        return tour
    }

    // MARK: The table

    /// A table of the ring for people: one line per link with its round-trip time (µs below a millisecond,
    /// else ms), then the total.
    ///
    ///     ring 0 → 2 → 1 → 3 → 0, total 42.24 ms
    ///       link      rtt
    ///       0 → 2   120 µs   kitchen → ipad
    ///       ...
    ///
    /// - Parameters:
    ///   - rtt: the measured figures, by rank.
    ///   - labels: a name per rank (a host, a label, a short node id), shown beside each link when given.
    public func table(rtt: RTTMatrix, labels: [String]? = nil) -> String {
        precondition(rtt.count == count, "the matrix has \(rtt.count) ranks, the ring \(count)")
        let total = totalSeconds(rtt: rtt)
        var lines = ["ring \(self), total \(total.map(Self.format) ?? "unknown (unmeasured links)")"]
        let width = String(max(count - 1, 0)).count
        func pad(_ s: String, _ n: Int) -> String { String(repeating: " ", count: max(0, n - s.count)) + s }
        lines.append("  " + pad("link", 2 * width + 3) + "  " + pad("rtt", 10))
        for link in links {
            var line = "  " + pad("\(pad(String(link.from), width)) → \(pad(String(link.to), width))", 2 * width + 3)
            line += "  " + pad(rtt[link.from, link.to].map(Self.format) ?? "unmeasured", 10)
            if let labels, labels.count == count { line += "   \(labels[link.from]) → \(labels[link.to])" }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }

    /// "850 µs", "12.30 ms", "1.50 s".
    package static func format(_ seconds: Double) -> String {
        func twoDecimals(_ x: Double) -> String {
            let hundredths = Int((x * 100).rounded())
            let fraction = hundredths % 100
            return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
        }
        if seconds < 1e-3 { return "\(Int((seconds * 1e6).rounded())) µs" }
        if seconds < 1 { return twoDecimals(seconds * 1e3) + " ms" }
        return twoDecimals(seconds) + " s"
    }
}

import Testing

@testable import ConcordDiscovery
import ConcordTestSupport

@Suite("Ring order")
struct RingOrderTests {
    /// Ranks with even parity behind one access point, odd behind the other.
    static func twoAccessPoints(_ n: Int, fast: Double = 0.000_8, slow: Double = 0.025) -> RTTMatrix {
        var m = RTTMatrix(count: n)
        for a in 0..<n { for b in 0..<a { m[a, b] = a % 2 == b % 2 ? fast + 0.000_01 * Double(a + b) : slow } }
        return m
    }

    static func crossings(_ ring: RingOrder) -> Int { ring.links.filter { $0.from % 2 != $0.to % 2 }.count }

    /// The lexicographically smallest optimal tour, by trying every permutation that starts at rank 0.
    static func bruteForce(_ rtt: RTTMatrix) -> [Int] {
        let n = rtt.count
        let w = RingOrder.costs(rtt)
        var best: (cost: Int64, tour: [Int])? = nil
        var rest = Array(1..<n)
        func permute(_ k: Int) {
            if k == rest.count {
                let tour = [0] + rest
                let c = RingOrder.cost(tour, w)
                if best == nil || c < best!.cost || (c == best!.cost && tour.lexicographicallyPrecedes(best!.tour)) {
                    best = (c, tour)
                }
                return
            }
            for i in k..<rest.count {
                rest.swapAt(k, i)
                permute(k + 1)
                rest.swapAt(k, i)
            }
        }
        permute(0)
        return best?.tour ?? [0]
    }

    @Test("two access points: the ring crosses the slow link twice, rank order four times")
    func twoAPs() throws {
        let rtt = Self.twoAccessPoints(4)
        let ring = RingOrder.choose(rtt: rtt)
        #expect(Self.crossings(ring) == 2)
        #expect(Self.crossings(.identity(count: 4)) == 4)
        #expect(ring.ranks[0] == 0)
        let total = try #require(ring.totalSeconds(rtt: rtt))
        let naive = try #require(RingOrder.identity(count: 4).totalSeconds(rtt: rtt))
        #expect(total < naive / 1.8)
    }

    @Test(
        "two access points beyond the exact limit: the heuristic still crosses twice", arguments: [11, 12, 16, 24, 40])
    func twoAPsHeuristic(n: Int) {
        let ring = RingOrder.choose(rtt: Self.twoAccessPoints(n))
        #expect(Self.crossings(ring) == 2, "\(ring)")
        #expect(Set(ring.ranks) == Set(0..<n) && ring.ranks[0] == 0)
    }

    @Test("random matrices up to 8 ranks: the exact search matches brute force, order included")
    func againstBruteForce() {
        var g = SplitMix64(seed: 99)
        for n in 1...8 {
            for round in 0..<25 {
                var m = RTTMatrix(count: n)
                for a in 0..<n {
                    for b in 0..<a {
                        // Coarse values so that ties happen and tie-breaking is exercised; some links unmeasured.
                        let r = g.next() % 10
                        m[a, b] = round % 3 == 0 && r == 0 ? nil : Double(1 + g.next() % 5) * 0.001
                    }
                }
                let ring = RingOrder.choose(rtt: m)
                let w = RingOrder.costs(m)
                let expected = n > 3 ? Self.bruteForce(m) : Array(0..<n)
                #expect(RingOrder.cost(ring.ranks, w) == RingOrder.cost(expected, w), "n=\(n) round \(round)")
                #expect(ring.ranks == expected, "n=\(n) round \(round): lexicographically smallest optimum")
            }
        }
    }

    @Test("the same matrix always gives the same ring; a matrix built from rows in any order too")
    func determinism() {
        var g = SplitMix64(seed: 5)
        for n in [5, 9, 10, 13, 20] {
            var m = RTTMatrix(count: n)
            for a in 0..<n { for b in 0..<a { m[a, b] = Double(g.next() % 40) * 0.000_5 } }
            let first = RingOrder.choose(rtt: m)
            for _ in 0..<3 { #expect(RingOrder.choose(rtt: m) == first) }
        }
        let ids = (1...5).map { node(UInt64($0)) }
        let rows = ids.map { me in
            RTTRow(
                node: me,
                seconds: Dictionary(
                    uniqueKeysWithValues: ids.filter { $0 != me }.map { ($0, 0.001 * Double($0.high + me.high)) }))
        }
        #expect(RTTMatrix(members: ids, rows: rows) == RTTMatrix(members: ids, rows: rows.reversed()))
    }

    @Test("no measurements: rank order; unmeasured links are avoided when measured ones can do")
    func fallback() {
        for n in 0...12 { #expect(RingOrder.choose(rtt: RTTMatrix(count: n)) == .identity(count: n)) }
        // Only the links of the ring 0 → 2 → 1 → 3 → 0 are measured.
        var m = RTTMatrix(count: 4)
        m[0, 2] = 0.01
        m[2, 1] = 0.01
        m[1, 3] = 0.01
        m[3, 0] = 0.01
        #expect(RingOrder.choose(rtt: m).ranks == [0, 2, 1, 3])
    }

    @Test("matrices from rows: both directions averaged, one direction kept, bad figures dropped")
    func matrixFromRows() {
        let ids = [node(1), node(2), node(3)]
        let m = RTTMatrix(
            members: ids,
            rows: [
                RTTRow(node: ids[0], seconds: [ids[1]: 0.002, ids[2]: -1, node(99): 5]),
                RTTRow(node: ids[1], seconds: [ids[0]: 0.004]),
                RTTRow(node: node(42), seconds: [ids[0]: 1]),
            ])
        #expect(m[0, 1] == 0.003 && m[1, 0] == 0.003)
        #expect(m[0, 2] == nil && m[1, 2] == nil && m[2, 2] == 0)
        var n = RTTMatrix(count: 2)
        n[0, 1] = .nan
        #expect(n[0, 1] == nil)
    }

    @Test("ring navigation and validation")
    func navigation() {
        let ring = RingOrder(ranks: [0, 2, 1, 3])!
        #expect(ring.successor(of: 0) == 2 && ring.successor(of: 3) == 0)
        #expect(ring.predecessor(of: 0) == 3 && ring.predecessor(of: 1) == 2)
        #expect(ring.description == "0 → 2 → 1 → 3 → 0")
        #expect(
            RingOrder(ranks: [1, 0]) == nil && RingOrder(ranks: [0, 0]) == nil && RingOrder(ranks: [0, 5]) == nil)
        #expect(RingOrder(ranks: [0]) != nil && RingOrder.identity(count: 1).links.isEmpty)
    }

    @Test("the table shows each link with its round-trip time in µs or ms, and the total")
    func table() {
        var m = RTTMatrix(count: 4)
        m[0, 2] = 0.000_120
        m[2, 1] = 0.020_5
        m[1, 3] = 0.000_95
        m[3, 0] = 1.5
        let text = RingOrder(ranks: [0, 2, 1, 3])!.table(rtt: m, labels: ["mac", "ipad", "pi", "phone"])
        let expected = """
            ring 0 → 2 → 1 → 3 → 0, total 1.52 s
               link         rtt
              0 → 2      120 µs   mac → pi
              2 → 1    20.50 ms   pi → ipad
              1 → 3      950 µs   ipad → phone
              3 → 0      1.50 s   phone → mac
            """
        #expect(text == expected, "\n\(text)")
        #expect(RingOrder.identity(count: 2).table(rtt: RTTMatrix(count: 2)).contains("unmeasured"))
        #expect(RingOrder.format(0.000_049_6) == "50 µs" && RingOrder.format(0.012_345) == "12.35 ms")
    }

    @Test("quantized round trips: a LAN's noise keeps node-id order, a slow link still reorders the ring")
    func quantizedNoise() {
        // Four nodes on one LAN, round trips 0.25-0.45 ms in a pattern that would pick another ring exactly.
        let lan = RTTMatrix(rows: [
            [nil, 0.00045, 0.00025, 0.00044],
            [0.00045, nil, 0.00043, 0.00025],
            [0.00025, 0.00043, nil, 0.00046],
            [0.00044, 0.00025, 0.00046, nil],
        ])
        #expect(RingOrder.choose(rtt: lan) != RingOrder.identity(count: 4))
        #expect(RingOrder.choose(rtt: lan.quantized()) == RingOrder.identity(count: 4))
        // Two access points {0, 2} and {1, 3} joined by a link 30x slower: the ring crosses it twice.
        let fast = 0.0003
        let slow = 0.009
        let split = RTTMatrix(rows: [
            [nil, slow, fast, slow], [slow, nil, slow, fast], [fast, slow, nil, slow], [slow, fast, slow, nil],
        ])
        let ring = RingOrder.choose(rtt: split.quantized())
        let crossings = ring.links.filter { ($0.from % 2) != ($0.to % 2) }.count
        #expect(crossings == 2, "\(ring)")
    }
}

// Round-trip times between the members of a group, as measured by the members themselves.
//
//   member A measures A→B, A→C ...   ─┐  RTTRow(node: A, seconds: [B: 0.0012, C: 0.021])
//   member B measures B→A, B→C ...   ─┼─▶ sent to the coordinator ─▶ RTTMatrix(members:rows:) ─▶ RingOrder
//   ...                               ─┘
//
// The matrix is indexed by rank (position in the sorted member list) and kept symmetric: a link measured
// from both ends holds the mean of the two figures, a link measured from one end holds that figure, and a
// link measured from neither is nil. Negative, infinite and NaN figures are dropped as unmeasured.

/// One member's measured round-trip times to the others, in seconds.
public struct RTTRow: Sendable, Equatable {
    /// The member that measured.
    public var node: NodeID
    /// Round-trip time to each peer it measured, in seconds.
    public var seconds: [NodeID: Double]

    /// A row from its fields.
    public init(node: NodeID, seconds: [NodeID: Double]) {
        self.node = node
        self.seconds = seconds
    }
}

/// A symmetric matrix of round-trip times in seconds between ranks `0..<count`; nil where unmeasured.
public struct RTTMatrix: Sendable, Equatable {
    /// The number of ranks.
    public let count: Int
    private var storage: [Double?]

    /// A matrix with no measurements.
    public init(count: Int) {
        precondition(count >= 0, "a matrix needs a non-negative size, got \(count)")
        self.count = count
        storage = Array(repeating: nil, count: count * count)
    }

    /// A matrix from rows indexed by rank (`rows[a][b]` measured by `a`), made symmetric as described above.
    ///
    /// - Precondition: `rows` is square.
    public init(rows: [[Double?]]) {
        self.init(count: rows.count)
        for row in rows { precondition(row.count == count, "RTT rows must be square: \(row.count) != \(count)") }
        for a in 0..<count {
            for b in 0..<count where a != b {
                self[a, b] = Self.combine(rows[a][b], rows[b][a])
            }
        }
    }

    /// The matrix of `members` (rank = index in `members`) from the rows they sent; rows of other nodes and
    /// entries for other nodes are ignored.
    public init(members: [NodeID], rows: [RTTRow]) {
        var index: [NodeID: Int] = [:]
        for (rank, id) in members.enumerated() { index[id] = rank }
        var grid = Array(repeating: [Double?](repeating: nil, count: members.count), count: members.count)
        for row in rows {
            guard let a = index[row.node] else { continue }
            for (peer, seconds) in row.seconds {
                guard let b = index[peer], b != a else { continue }
                grid[a][b] = seconds
            }
        }
        self.init(rows: grid)
    }

    /// The round-trip time between ranks `a` and `b` in seconds (nil when unmeasured; 0 when `a == b`).
    /// Setting it sets both directions; an invalid figure (negative, infinite, NaN) is stored as nil.
    public subscript(a: Int, b: Int) -> Double? {
        get {
            precondition(a >= 0 && a < count && b >= 0 && b < count, "rank out of range 0..<\(count): \(a), \(b)")
            return a == b ? 0 : storage[a * count + b]
        }
        set {
            precondition(a >= 0 && a < count && b >= 0 && b < count, "rank out of range 0..<\(count): \(a), \(b)")
            guard a != b else { return }
            let value = newValue.flatMap { $0.isFinite && $0 >= 0 ? $0 : nil }
            storage[a * count + b] = value
            storage[b * count + a] = value
        }
    }

    /// The matrix with every figure rounded down to a power of `factor` times the smallest one: links
    /// within a factor of each other cost the same. Measurement noise (a LAN's round trips vary by 2×)
    /// then cannot reorder the ring — equal costs keep node-id order, so ranks stay the same for the same
    /// nodes on the same network — while a link that is really slower (behind another access point)
    /// still stands out.
    public func quantized(factor: Double = 4) -> RTTMatrix {
        let measured = storage.compactMap { $0 }.filter { $0 > 0 }
        guard let smallest = measured.min(), factor > 1 else { return self }
        var result = self
        for a in 0..<count {
            for b in 0..<count where b > a {
                guard let value = self[a, b] else { continue }
                var rounded = smallest
                while rounded * factor <= value { rounded *= factor }
                result[a, b] = rounded
            }
        }
        return result
    }

    /// True when at least one link is measured.
    public var hasMeasurements: Bool { storage.contains { $0 != nil } }

    private static func combine(_ x: Double?, _ y: Double?) -> Double? {
        let valid = [x, y].compactMap { $0 }.filter { $0.isFinite && $0 >= 0 }
        return valid.isEmpty ? nil : valid.reduce(0, +) / Double(valid.count)
    }
}

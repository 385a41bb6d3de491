// A node's identity on the network: 128 random bits, drawn once per process.
//
//   bytes:  [b0 b1 ... b15]          (big endian: b0 is the most significant byte)
//   text:   32 lowercase hex digits  "3f9a0c...e1"
//   order:  numeric = lexicographic on bytes = lexicographic on the hex text
//
// Node ids order everything in discovery: the coordinator is the smallest id in view, and ranks are
// positions in the sorted member list. Drawing them at random (not from addresses or host names) keeps
// two processes on one host distinct and makes the order independent of who started first. With 128 bits
// the chance that two of a thousand nodes collide is below 10^-32.

/// A node's 128-bit random identity, printable as 32 hex digits; ordered numerically.
public struct NodeID: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The most significant 64 bits.
    public let high: UInt64
    /// The least significant 64 bits.
    public let low: UInt64

    /// The number of bytes in an encoded node id.
    public static let byteCount = 16

    /// A node id from its two halves.
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// A node id from 16 big-endian bytes.
    ///
    /// - Precondition: `bytes.count == 16`.
    public init(bytes: [UInt8]) {
        precondition(bytes.count == Self.byteCount, "a node id is 16 bytes, got \(bytes.count)")
        var h: UInt64 = 0
        var l: UInt64 = 0
        for i in 0..<8 {
            h = h << 8 | UInt64(bytes[i])
            l = l << 8 | UInt64(bytes[8 + i])
        }
        self.init(high: h, low: l)
    }

    /// A node id from 32 hex digits (either case); nil for anything else.
    public init?(hex: String) {
        guard hex.utf8.count == 2 * Self.byteCount, let raw = ConcordDiscovery.bytes(fromHex: hex) else { return nil }
        self.init(bytes: raw)
    }

    /// A fresh random node id drawn from `generator`.
    public static func random(using generator: inout some RandomNumberGenerator) -> NodeID {
        NodeID(high: generator.next(), low: generator.next())
    }

    /// A fresh random node id from the system's secure generator.
    public static func random() -> NodeID {
        var g = SystemRandomNumberGenerator()
        return random(using: &g)
    }

    /// The 16 big-endian bytes.
    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * $0)) }
            + (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * $0)) }
    }

    /// 32 lowercase hex digits.
    public var description: String { hexString(bytes) }

    /// The first 8 hex digits, for log lines and tables where the whole id is too wide.
    public var shortDescription: String { String(description.prefix(8)) }

    public static func < (a: NodeID, b: NodeID) -> Bool { (a.high, a.low) < (b.high, b.low) }
}

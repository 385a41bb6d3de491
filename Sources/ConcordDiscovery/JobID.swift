// A job's public name tag: the first 8 bytes of SHA-256("concord-job-id" 0x00 name), as a 64-bit number.
//
// Every beacon and handshake carries it, so nodes of other jobs on the same network are told apart before
// any secret is tried, and a node can say "that beacon is from job 5b1e..., this node runs job 09c4...".
// It is not secret and proves nothing (anyone can compute it from the name); the job secret does that.
// 64 bits make an accidental collision between two jobs on one network negligible (about n^2 / 2^65).

import Crypto

/// A stable 64-bit identifier of a job, derived from the job's name; printed as 16 hex digits.
public struct JobID: Hashable, Sendable, CustomStringConvertible {
    /// The identifier as a number (its wire form, little endian).
    public let rawValue: UInt64

    /// A job id from its numeric value.
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The job id of the job called `name`: SHA-256 of a domain label and the name's UTF-8, truncated to
    /// its first 8 bytes (read big endian, so the hex text is a prefix of the digest's hex).
    public init(jobName name: String) {
        var hasher = SHA256()
        hasher.update(data: Array("concord-job-id".utf8) + [0])
        hasher.update(data: Array(name.utf8))
        let digest = Array(hasher.finalize())
        var value: UInt64 = 0
        for b in digest.prefix(8) { value = value << 8 | UInt64(b) }
        self.init(rawValue: value)
    }

    /// A job id from 16 hex digits; nil for anything else.
    public init?(hex: String) {
        guard hex.utf8.count == 16, let raw = ConcordDiscovery.bytes(fromHex: hex) else { return nil }
        self.init(rawValue: raw.reduce(0) { $0 << 8 | UInt64($1) })
    }

    /// 16 lowercase hex digits.
    public var description: String {
        hexString((0..<8).map { UInt8(truncatingIfNeeded: rawValue >> (56 - 8 * $0)) })
    }

    /// The 8 bytes, big endian (as hashed into keys and transcripts).
    var bigEndianBytes: [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: rawValue >> (56 - 8 * $0)) } }
}

// Membership messages and RTT probes between two nodes travel as unicast UDP datagrams, sealed:
//
//   "CCUD" | version u16 | kind u8 (1 membership, 2 ping, 3 pong) | job id (8) | sender node id (16)
//   | body | tag: HMAC-SHA256(unicast key, every byte before it), first 16 bytes   [secure jobs only]
//
// The job id and sender come first so a receiver can drop another job's datagram without work; the tag
// (key derived from the job secret for this purpose only) proves the sender holds the secret, so nothing
// unauthenticated reaches the membership agreement. Replays are harmless there: the agreement tolerates
// duplicated and reordered messages by design. A ping carries a nonce and the sender's clock; the pong
// echoes both, so the pinger measures the round trip on its own clock.

import Crypto

/// A datagram between two nodes of a job.
public struct SealedDatagram: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        case membership = 1
        case ping = 2
        case pong = 3
    }

    public let kind: Kind
    public let sender: NodeID
    public let body: [UInt8]

    public static let magic: [UInt8] = Array("CCUD".utf8)
    public static let version: UInt16 = 1
    static let headerSize = 4 + 2 + 1 + 8 + 16
    static let tagSize = 16
    /// Larger datagrams are refused unread.
    public static let maxSize = 16 * 1024

    public init(kind: Kind, sender: NodeID, body: [UInt8]) {
        self.kind = kind
        self.sender = sender
        self.body = body
    }

    /// The datagram's bytes, tagged when the job is secure.
    public func seal(credentials: JobCredentials) -> [UInt8] {
        var w = WireWriter(capacity: Self.headerSize + body.count + Self.tagSize)
        w.append(Self.magic)
        w.append(Self.version)
        w.append(kind.rawValue)
        w.append(credentials.jobID)
        w.append(sender)
        w.append(body)
        var bytes = w.bytes
        if let key = credentials.unicastKey { bytes += Self.tag(bytes, key: key) }
        return bytes
    }

    /// Checks and decodes a datagram.
    /// - Throws: `DiscoveryError`: `.oversized`, `.truncated`, `.badMagic`, `.protocolVersion`, `.otherJob`,
    ///   `.malformed` (unknown kind), `.badMAC` (another secret, or altered).
    public static func open(_ bytes: [UInt8], credentials: JobCredentials) throws -> SealedDatagram {
        let what = "unicast datagram"
        guard bytes.count <= maxSize else {
            throw DiscoveryError.oversized(what: what, size: bytes.count, limit: maxSize)
        }
        let tagSize = credentials.unicastKey == nil ? 0 : Self.tagSize
        guard bytes.count >= headerSize + tagSize else {
            throw DiscoveryError.truncated(
                what: what, field: "header", needed: headerSize + tagSize, available: bytes.count)
        }
        var r = WireReader(bytes, what: what)
        let found = try r.readBytes(4, "magic")
        guard found == magic else { throw DiscoveryError.badMagic(what: what, expected: magic, found: found) }
        let version = try r.read(UInt16.self, "version")
        guard version == Self.version else {
            throw DiscoveryError.protocolVersion(what: what, local: Self.version, remote: version)
        }
        let rawKind = try r.read(UInt8.self, "kind")
        let job = try r.readJobID("job id")
        guard job == credentials.jobID else {
            throw DiscoveryError.otherJob(what: what, local: credentials.jobID, remote: job)
        }
        let sender = try r.readNodeID("sender")
        guard let kind = Kind(rawValue: rawKind) else {
            throw DiscoveryError.malformed(what: what, detail: "unknown kind \(rawKind)")
        }
        if let key = credentials.unicastKey {
            let body = Array(bytes[..<(bytes.count - tagSize)])
            guard constantTimeEqual(tag(body, key: key), Array(bytes[(bytes.count - tagSize)...])) else {
                throw DiscoveryError.badMAC(node: sender)
            }
        }
        return SealedDatagram(kind: kind, sender: sender, body: Array(bytes[headerSize..<(bytes.count - tagSize)]))
    }

    private static func tag(_ body: [UInt8], key: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: key)).prefix(tagSize))
    }

    private static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

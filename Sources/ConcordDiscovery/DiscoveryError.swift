// Why a discovery message was refused or a discovery step failed.
//
// One closed set for the three wire formats (beacons, handshake messages, membership messages): each case
// names the message (`what`), what was expected and what was seen, so the log line of a dropped beacon or
// a refused link tells the user what to fix. No case ever carries a secret or a key; node and job ids are
// public. Beacons are dropped silently by the caller for the cheap cases (another job) and logged, rate
// limited, for the others; a handshake error ends the link.

/// A discovery message that cannot be accepted, or a handshake that failed.
public enum DiscoveryError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The message ended before `field`: `needed` bytes were required, only `available` arrived.
    case truncated(what: String, field: String, needed: Int, available: Int)
    /// The message is larger than any valid one (`limit` bytes).
    case oversized(what: String, size: Int, limit: Int)
    /// Bytes follow the last field: the lengths inside the message say `expected`, `actual` arrived.
    case trailingBytes(what: String, expected: Int, actual: Int)
    /// The message does not start with its magic: not a Concord message, or another Concord message type.
    case badMagic(what: String, expected: [UInt8], found: [UInt8])
    /// The sender speaks another version of this protocol.
    case protocolVersion(what: String, local: UInt16, remote: UInt16)
    /// The sender belongs to another job.
    case otherJob(what: String, local: JobID, remote: JobID)
    /// One side has a job secret and the other has none; `localSecure` says which side this node is.
    case authenticationMismatch(what: String, localSecure: Bool)
    /// A beacon's tag does not verify: the sender (claiming to be `node`) holds another secret, or the
    /// datagram was altered on the way.
    case badMAC(node: NodeID)
    /// A length field exceeds the field's limit.
    case fieldTooLong(what: String, field: String, length: Int, limit: Int)
    /// A field holds a value that no correct sender produces.
    case malformed(what: String, detail: String)
    /// The handshake peer's proof does not verify for this session.
    case wrongSecret(peer: NodeID)
    /// The handshake peer echoed this node's own hello or proof (a reflection, or a connection to itself).
    case reflected(detail: String)
    /// The handshake peer is another node than the one this node meant to reach (its beacon was stale, or
    /// another node now listens at that address).
    case unexpectedPeer(expected: NodeID, actual: NodeID)
    /// An operating-system call failed (`code` is errno).
    case system(call: String, code: Int32, message: String)

    public var description: String {
        switch self {
        case .truncated(let what, let field, let needed, let available):
            return "\(what) truncated at \(field): needs at least \(needed) bytes, got \(available)"
        case .oversized(let what, let size, let limit):
            return "\(what) of \(size) bytes is larger than the \(limit) bytes any valid one has"
        case .trailingBytes(let what, let expected, let actual):
            return "\(what) has \(actual - expected) unexpected trailing bytes (\(actual) bytes, its fields "
                + "account for \(expected))"
        case .badMagic(let what, let expected, let found):
            return "not a Concord \(what): starts with \(Self.show(found)) instead of \(Self.show(expected))"
        case .protocolVersion(let what, let local, let remote):
            return "\(what) speaks Concord discovery protocol v\(remote), this node speaks v\(local); "
                + "run the same Concord version on every device"
        case .otherJob(let what, let local, let remote):
            return "\(what) belongs to job \(remote), this node runs job \(local); "
                + "check that every node was given the same job name"
        case .authenticationMismatch(let what, let localSecure):
            return localSecure
                ? "\(what) comes from a node without a job secret (insecure), but this node requires one; "
                    + "give every node the same secret"
                : "\(what) comes from a node that uses a job secret, but this node runs insecure (no secret); "
                    + "give every node the same secret, or none"
        case .badMAC(let node):
            return "beacon claiming node \(node) failed authentication: the sender does not hold this job's "
                + "secret, or the datagram was altered on the way"
        case .fieldTooLong(let what, let field, let length, let limit):
            return "\(what) field \(field) is \(length) bytes, more than its limit of \(limit)"
        case .malformed(let what, let detail):
            return "malformed \(what): \(detail)"
        case .wrongSecret(let peer):
            return "the peer (node \(peer)) does not hold this job's secret: its proof does not match this "
                + "session (a different secret, or a replayed or altered handshake)"
        case .reflected(let detail):
            return "handshake refused: \(detail); the connection loops back to this node or someone reflects "
                + "its messages"
        case .unexpectedPeer(let expected, let actual):
            return "connected to node \(actual) where node \(expected) was expected; the address now belongs to "
                + "another node (a stale beacon, or a restarted process)"
        case .system(let call, let code, let message):
            return "\(call) failed: \(message) (errno \(code))"
        }
    }

    /// Magic bytes as text when printable, else hex.
    private static func show(_ bytes: [UInt8]) -> String {
        if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
            return "\"" + String(decoding: bytes, as: UTF8.self) + "\""
        }
        return "0x" + hexString(bytes)
    }
}

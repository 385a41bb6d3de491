/// Everything that can go wrong in Concord outside the caller's own programming errors (those trap).
///
/// Every case names the rank that reports it and, where there is one, the peer involved, and its
/// `description` is a single line that says what was expected, what was seen, and what to do.
public enum ConcordError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The connection to `peer` ended or failed while this rank needed it (end of stream, reset, or
    /// silence beyond the peer timeout).
    case peerLost(rank: Int, peer: Int, reason: String)
    /// Another rank failed and told this one; `origin` is the rank whose failure started it.
    case aborted(rank: Int, reportedBy: Int, reason: String)
    /// This rank and `peer` called the same collective with different arguments (`what` is "element
    /// count", "data type", "reduce op", "collective" or "sequence number").
    case mismatch(rank: Int, peer: Int, what: String, local: String, remote: String)
    /// A peer speaks another protocol version.
    case protocolVersion(rank: Int, peer: String, local: Int, remote: Int)
    /// A peer sent bytes that are not a Concord frame, or a frame that makes no sense here.
    case malformedFrame(rank: Int, peer: String, detail: String)
    /// The join deadline passed before every rank had joined.
    case joinTimeout(rank: Int, missing: [Int], seconds: Double)
    /// The master (rank 0's store) could not be reached before the join deadline.
    case masterUnreachable(rank: Int, address: String, seconds: Double, reason: String)
    /// A port this rank must listen on is taken.
    case addressInUse(rank: Int, address: String, hint: String)
    /// A peer refused this rank's join (wrong job, wrong world size, duplicate rank, ...).
    case joinRefused(rank: Int, peer: String, reason: String)
    /// The environment or configuration is incomplete or contradictory.
    case invalidConfiguration(String)
    /// An operating-system or libuv call failed.
    case system(rank: Int, call: String, code: Int32, message: String)
    /// The communicator was shut down, or failed earlier and can no longer be used.
    case shutDown(rank: Int)
    /// A call's arguments cannot work (an op undefined on a dtype, a root out of range, a buffer too small).
    case invalidArgument(rank: Int, message: String)

    public var description: String {
        switch self {
        case .peerLost(let rank, let peer, let reason):
            return "rank \(rank): lost \(peer >= 0 ? "rank \(peer)" : "a peer that had not said its rank yet") (\(reason))"
        case .aborted(let rank, let by, let reason):
            return "rank \(rank): collective aborted by rank \(by): \(reason)"
        case .mismatch(let rank, let peer, let what, let local, let remote):
            return "rank \(rank): \(what) differs from rank \(peer): rank \(rank) has \(local), "
                + "rank \(peer) has \(remote); every rank must call the same collective with the same arguments"
        case .protocolVersion(let rank, let peer, let local, let remote):
            return "rank \(rank): \(peer) speaks Concord protocol v\(remote), this build speaks v\(local); "
                + "run the same Concord version on every device"
        case .malformedFrame(let rank, let peer, let detail):
            return "rank \(rank): malformed frame from \(peer): \(detail)"
        case .joinTimeout(let rank, let missing, let seconds):
            let list = missing.map(String.init).joined(separator: ", ")
            return "rank \(rank): join timed out after \(Self.format(seconds)) s; ranks that never joined: [\(list)] "
                + "(start them, or raise CONCORD_TIMEOUT)"
        case .masterUnreachable(let rank, let address, let seconds, let reason):
            return "rank \(rank): cannot reach the master at \(address) within \(Self.format(seconds)) s (\(reason)); "
                + "is rank 0 running, and are CONCORD_MASTER_ADDR/CONCORD_MASTER_PORT right?"
        case .addressInUse(let rank, let address, let hint):
            return "rank \(rank): address \(address) is already in use; \(hint)"
        case .joinRefused(let rank, let peer, let reason):
            return "rank \(rank): \(peer) refused the join: \(reason)"
        case .invalidConfiguration(let message):
            return "concord: \(message)"
        case .system(let rank, let call, let code, let message):
            return "rank \(rank): \(call) failed: \(message) (\(code))"
        case .shutDown(let rank):
            return "rank \(rank): the communicator is shut down"
        case .invalidArgument(let rank, let message):
            return "rank \(rank): \(message)"
        }
    }

    /// The rank that reported this error, when the error has one.
    public var reportingRank: Int? {
        switch self {
        case .peerLost(let rank, _, _), .aborted(let rank, _, _), .mismatch(let rank, _, _, _, _),
            .protocolVersion(let rank, _, _, _), .malformedFrame(let rank, _, _), .joinTimeout(let rank, _, _),
            .masterUnreachable(let rank, _, _, _), .addressInUse(let rank, _, _), .joinRefused(let rank, _, _),
            .system(let rank, _, _, _), .shutDown(let rank), .invalidArgument(let rank, _):
            return rank
        case .invalidConfiguration:
            return nil
        }
    }

    private static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
    }
}

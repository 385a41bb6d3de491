/// What a data frame says about the collective it belongs to.
///
/// A sender stamps every segment with its own view of the collective; the receiver compares it with its
/// own view before touching a byte, so ranks that called different collectives, or the same one with
/// different arguments, fail with a `ConcordError.mismatch` naming both ranks instead of corrupting data.
public struct SegmentTag: Sendable, Equatable, CustomStringConvertible {
    public var collective: CollectiveKind
    /// The collective's position in the communicator's call sequence (0, 1, 2, ...).
    public var sequence: UInt64
    public var dataType: DataType
    public var op: ReduceOp
    /// The collective's total element count on the sender.
    public var count: Int
    /// Offset of this segment in the buffer, in elements.
    public var offset: Int
    /// Elements in this segment.
    public var length: Int
    /// The root rank of a rooted collective (broadcast, reduce); nil for the others.
    public var root: Int?

    public init(
        collective: CollectiveKind, sequence: UInt64, dataType: DataType, op: ReduceOp,
        count: Int, offset: Int, length: Int, root: Int? = nil
    ) {
        self.collective = collective
        self.sequence = sequence
        self.dataType = dataType
        self.op = op
        self.count = count
        self.offset = offset
        self.length = length
        self.root = root
    }

    /// Bytes of payload this segment carries.
    @inlinable
    public var byteCount: Int { length * dataType.size }

    /// Checks a received tag against the one this rank expects, most telling difference first.
    ///
    /// - Throws: `ConcordError.mismatch` naming `rank` and `peer`, or `.malformedFrame` when only the
    ///   segment placement differs (which a correct peer never sends).
    public func check(received: SegmentTag, rank: Int, peer: Int) throws {
        func fail(_ what: String, _ local: String, _ remote: String) -> ConcordError {
            .mismatch(rank: rank, peer: peer, what: what, local: local, remote: remote)
        }
        if received.sequence != sequence {
            throw fail(
                "collective sequence number", "#\(sequence) (\(collective))",
                "#\(received.sequence) (\(received.collective))")
        }
        if received.collective != collective {
            throw fail("collective", "\(collective)", "\(received.collective)")
        }
        if received.root != root {
            throw fail("root", root.map { "root \($0)" } ?? "no root", received.root.map { "root \($0)" } ?? "no root")
        }
        if received.count != count {
            throw fail("element count", "\(count) elements", "\(received.count) elements")
        }
        if received.dataType != dataType {
            throw fail("data type", "\(dataType)", "\(received.dataType)")
        }
        if received.op != op {
            throw fail("reduce op", "\(op)", "\(received.op)")
        }
        if received.offset != offset || received.length != length {
            throw ConcordError.malformedFrame(
                rank: rank, peer: "rank \(peer)",
                detail: "segment [\(received.offset), +\(received.length)) where [\(offset), +\(length)) was expected")
        }
    }

    public var description: String {
        "\(collective) #\(sequence) \(dataType) \(op) count \(count) segment [\(offset), +\(length))"
            + (root.map { " root \($0)" } ?? "")
    }
}

/// Combines received elements into a destination: `destination[i] = op(destination[i], source[i])`.
///
/// Transports call it as bytes arrive (in pieces of whole elements), so a reduction overlaps the transfer
/// of what follows. `destination` and `source` never overlap.
public struct Reducer: Sendable {
    public let elementSize: Int
    public let combine:
        @Sendable (_ destination: UnsafeMutableRawPointer, _ source: UnsafeRawPointer, _ elements: Int) -> Void

    public init(
        elementSize: Int,
        combine:
            @escaping @Sendable (_ destination: UnsafeMutableRawPointer, _ source: UnsafeRawPointer, _ elements: Int) ->
            Void
    ) {
        self.elementSize = elementSize
        self.combine = combine
    }
}

/// A posted send or receive, to wait on.
public struct TransferID: Hashable, Sendable {
    public let raw: Int
    public init(_ raw: Int) { self.raw = raw }
}

/// The point-to-point layer that collectives are written against.
///
/// One rank's view of a group of `worldSize` ranks, with links to at least its ring neighbours
/// (`isConnected(to:)`). Sends and receives are posted without blocking and
/// complete in the order they were posted per peer; frames between two ranks are never reordered.
/// A transport is driven by one thread at a time (the thread running the collective).
///
/// Buffers handed to `send` and `receive` must stay valid until the transfer completes, or until a wait
/// throws: after a throw the transport has failed and holds no reference to any caller buffer.
public protocol Transport: AnyObject {
    /// This rank, in `0..<worldSize`.
    var rank: Int { get }
    var worldSize: Int { get }

    /// Posts a segment to `peer`: `tag` describes it, `bytes` is its payload (`tag.byteCount` bytes).
    func send(to peer: Int, tag: SegmentTag, from bytes: UnsafeRawBufferPointer) throws -> TransferID

    /// Posts the receipt of the next segment from `peer`, which must match `tag`. With a `reducer` the
    /// payload is combined into `bytes`; without, it is stored there.
    func receive(
        from peer: Int, tag: SegmentTag, into bytes: UnsafeMutableRawBufferPointer, reducer: Reducer?
    ) throws -> TransferID

    /// Returns when the transfer is complete.
    /// - Throws: a `ConcordError` naming this rank and the peer at fault, when a peer is lost, silent
    ///   beyond the transport's timeout, or sends a mismatched or malformed frame. The transport then stays
    ///   failed: every later call throws the same error.
    func wait(_ transfer: TransferID) throws

    /// Waits for every transfer posted so far.
    func waitAll() throws

    /// Whether this rank can send to and receive from `peer` directly. Every transport reaches its ring
    /// neighbours; some reach more (the partners of recursive doubling, or everyone).
    func isConnected(to peer: Int) -> Bool

    /// Whether the ring links are much faster than direct links to other ranks (shared memory between
    /// ring neighbours, TCP elsewhere), so collectives should keep to the ring. The same on every rank.
    var ringLinksAreFaster: Bool { get }

    /// Whether every rank runs on this machine, so that no link crosses a network. The same on every rank.
    var ranksShareOneMachine: Bool { get }
}

extension Transport {
    public var ringLinksAreFaster: Bool { false }
    public var ranksShareOneMachine: Bool { false }

    public func isConnected(to peer: Int) -> Bool {
        peer == (rank + 1) % worldSize || peer == (rank + worldSize - 1) % worldSize
    }
}

/// How two ranks exchange bytes.
public enum LinkMedium: String, Sendable, CaseIterable {
    /// TCP sockets, also between ranks on one host.
    case tcp
    /// Shared memory between ranks on one host; refusing to start when a ring neighbour is elsewhere.
    case shm
    /// Shared memory with ring neighbours on the same host, TCP with the others.
    case auto
}

/// Proves to the other end of a new connection that this process belongs to the job, and checks the same
/// of it, before anything else crosses the connection (an HMAC challenge-response with the job's secret;
/// see ConcordDiscovery's `Handshake`). Transports run one session per connection.
public protocol LinkAuthenticator: Sendable {
    /// A fresh session for one connection: `client` is the side that connected.
    func session(client: Bool) -> any LinkAuthenticationSession
}

/// One connection's handshake: messages to send, messages received, until complete or failed.
public protocol LinkAuthenticationSession {
    /// The first message to send.
    mutating func start() -> [UInt8]
    /// Handles a message from the peer; returns the next one to send, if any.
    /// - Throws: an error whose description says why the peer is refused (never containing the secret).
    mutating func next(received: [UInt8]) throws -> [UInt8]?
    /// Whether the peer has proven itself (and this side has sent everything the peer needs).
    var isComplete: Bool { get }
}

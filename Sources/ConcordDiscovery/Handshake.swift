// The challenge–response that opens every TCP link between two nodes of a job.
//
//   client (connected)                                   server (accepted)
//   start()            ── hello{v, job, role, id, Nc} ─▶
//                      ◀─ hello{v, job, role, id, Ns} ──  start()      (both sent at once, unprompted)
//   next(server hello) ── proof Pc ───────────────────▶
//                      ◀─────────────────── proof Ps ──  next(client hello)
//   next(Ps): verify, done                               next(Pc): verify, done
//
//   P(role) = HMAC-SHA256(handshake key, "concord-handshake" | role | version | job id
//                         | client node id | server node id | client nonce | server nonce)
//
// Each side sends its hello, then its proof, before it has verified anything of the peer's, so every
// failure that depends on both sides — another version, another job, secure against insecure, a
// different secret — is seen by both sides, each with its own clear error; nobody is left with a bare
// end of stream. The proof binds the whole transcript: both fresh 16-byte nonces (so a proof recorded from
// an earlier session does not verify: replay fails), both node ids and the job, and the prover's role (so
// the server's proof sent back to it as the client's does not verify: reflection fails; a hello or proof
// echoed verbatim is named as a reflection). The key is derived from the job secret for this purpose only
// (see JobSecret), and comparisons are constant-time. An insecure job exchanges hellos only; a secure side
// refuses an insecure peer and the reverse. What it does not do: encrypt or authenticate the bytes that
// follow on the link (an attacker able to rewrite TCP traffic can still take over an established link).
//
// Messages (little endian; bytes 0..<6 keep this layout in every version):
//
//   hello  "CCHS" | version u16 | type 1 | role u8 (1 client, 2 server) | mode u8 (0 insecure, 1 secret)
//          | job id (8) | node id (16) | nonce (16)                                                 49 bytes
//   proof  "CCHS" | version u16 | type 2 | HMAC-SHA256 (32)                                          39 bytes
//
// Cost: two HMAC-SHA256 per side, two messages each way.

import Crypto

/// One side of the handshake of a TCP link: a pure state machine over the bytes of its messages.
///
///     var handshake = Handshake(role: .client, nodeID: me, credentials: credentials, expectedPeer: beacon.nodeID)
///     send(handshake.start())
///     while !handshake.isComplete {
///         if let reply = try handshake.next(received: receiveFrame()) { send(reply) }
///     }
///     let peer = handshake.peerNodeID!   // authenticated
///
/// Printing or dumping it shows the roles, node ids and progress, never keys, nonces or proofs.
public struct Handshake: Sendable, CustomStringConvertible, CustomReflectable {
    /// Which end of the connection this side is.
    public enum Role: UInt8, Sendable, CustomStringConvertible {
        /// The side that connected.
        case client = 1
        /// The side that accepted.
        case server = 2

        public var description: String { self == .client ? "client" : "server" }
    }

    /// The version of the handshake this build speaks.
    public static let protocolVersion: UInt16 = 1
    /// The magic at the start of every handshake message.
    public static let magic: [UInt8] = Array("CCHS".utf8)
    /// No valid handshake message is larger; a framing layer can refuse larger frames unread.
    public static let maxMessageSize = 64
    static let helloSize = 49
    static let proofSize = 39
    static let nonceSize = 16

    private enum State: Sendable {
        case initial
        case awaitingHello
        case awaitingProof(expected: [UInt8], own: [UInt8])
        case complete
        case failed
    }

    /// This side's end of the connection.
    public let role: Role
    /// This node.
    public let nodeID: NodeID
    /// The job and its keys.
    public let credentials: JobCredentials
    /// When set, a peer with another node id is refused.
    public let expectedPeer: NodeID?
    private let nonce: [UInt8]
    private var state: State = .initial
    private var ownHello: [UInt8] = []
    /// The peer's node id, known after its hello; authenticated once `isComplete` (in a secure job).
    public private(set) var peerNodeID: NodeID?

    /// A handshake for one new link.
    ///
    /// - Parameters:
    ///   - role: `.client` on the side that connected, `.server` on the side that accepted.
    ///   - nodeID: this node.
    ///   - credentials: the job and its keys.
    ///   - expectedPeer: the node this side meant to reach (the client knows it from the beacon), or nil.
    ///   - nonce: 16 bytes, for tests; nil draws them from the system's secure generator.
    public init(
        role: Role, nodeID: NodeID, credentials: JobCredentials, expectedPeer: NodeID? = nil, nonce: [UInt8]? = nil
    ) {
        self.role = role
        self.nodeID = nodeID
        self.credentials = credentials
        self.expectedPeer = expectedPeer
        if let nonce {
            precondition(nonce.count == Self.nonceSize, "a handshake nonce is 16 bytes, got \(nonce.count)")
            self.nonce = nonce
        } else {
            var g = SystemRandomNumberGenerator()
            self.nonce = (0..<Self.nonceSize).map { _ in UInt8.random(in: 0...255, using: &g) }
        }
    }

    /// True once the peer is verified (or, in an insecure job, once the hellos matched).
    public var isComplete: Bool {
        if case .complete = state { return true }
        return false
    }

    /// "client handshake of node 0000000a with node 00000014: awaiting proof"
    public var description: String {
        let progress: String
        switch state {
        case .initial: progress = "not started"
        case .awaitingHello: progress = "awaiting hello"
        case .awaitingProof: progress = "awaiting proof"
        case .complete: progress = "complete"
        case .failed: progress = "failed"
        }
        return "\(role) handshake of node \(nodeID.shortDescription) with "
            + (peerNodeID.map { "node \($0.shortDescription)" } ?? "an unknown peer") + ": \(progress)"
    }

    /// A mirror without keys, nonces or proofs.
    public var customMirror: Mirror {
        Mirror(
            self, children: ["role": role, "nodeID": nodeID, "peerNodeID": peerNodeID as Any, "state": description],
            displayStyle: .struct)
    }

    /// This side's hello: send it at once, before reading anything. Call once, first.
    public mutating func start() -> [UInt8] {
        guard case .initial = state else { preconditionFailure("Handshake.start() called twice") }
        var w = WireWriter(capacity: Self.helloSize)
        w.append(Self.magic)
        w.append(Self.protocolVersion)
        w.append(UInt8(1))
        w.append(role.rawValue)
        w.append(UInt8(credentials.isSecure ? 1 : 0))
        w.append(credentials.jobID)
        w.append(nodeID)
        w.append(nonce)
        ownHello = w.bytes
        state = .awaitingHello
        return ownHello
    }

    /// Consumes the peer's next message and returns the reply to send, if any.
    ///
    /// After the peer's hello it returns this side's proof (nil in an insecure job, which is then
    /// complete); after the peer's proof it returns nil and the handshake is complete.
    ///
    /// - Throws: `DiscoveryError` naming the cause, after which the handshake is over and the link must be
    ///   closed: `.protocolVersion` (both versions), `.otherJob` (both job ids), `.authenticationMismatch`
    ///   (secure against insecure), `.wrongSecret` ("the peer does not hold this job's secret", also for a
    ///   replayed or altered proof), `.reflected`, `.unexpectedPeer`, `.truncated`, `.oversized`,
    ///   `.trailingBytes`, `.badMagic`, `.malformed` (a message out of turn).
    public mutating func next(received message: [UInt8]) throws -> [UInt8]? {
        do {
            switch state {
            case .initial, .complete, .failed:
                preconditionFailure("Handshake.next(received:) called before start(), after completion or failure")
            case .awaitingHello:
                return try receiveHello(message)
            case .awaitingProof(let expected, let own):
                try receiveProof(message, expected: expected, own: own)
                state = .complete
                return nil
            }
        } catch {
            state = .failed
            throw error
        }
    }

    private mutating func receiveHello(_ message: [UInt8]) throws -> [UInt8]? {
        var r = try reader(message, type: 1, name: "hello", size: Self.helloSize)
        let peerRole = try r.read(UInt8.self, "role")
        let mode = try r.read(UInt8.self, "mode")
        let job = try r.readJobID("job id")
        let peer = try r.readNodeID("node id")
        let peerNonce = try r.readBytes(Self.nonceSize, "nonce")
        let what = "handshake from node \(peer)"
        guard mode <= 1 else { throw DiscoveryError.malformed(what: what, detail: "unknown mode \(mode)") }
        guard job == credentials.jobID else {
            throw DiscoveryError.otherJob(what: what, local: credentials.jobID, remote: job)
        }
        guard (mode == 1) == credentials.isSecure else {
            throw DiscoveryError.authenticationMismatch(what: what, localSecure: credentials.isSecure)
        }
        if message == ownHello || peerNonce == nonce {
            throw DiscoveryError.reflected(detail: "the peer's hello carries this node's own nonce")
        }
        if peer == nodeID { throw DiscoveryError.reflected(detail: "the peer claims this node's own id \(peer)") }
        guard let peerRoleValue = Role(rawValue: peerRole), peerRoleValue != role else {
            throw DiscoveryError.malformed(
                what: what,
                detail: "the peer's role is \(Role(rawValue: peerRole).map { "\($0)" } ?? "\(peerRole)"), "
                    + "this side is the \(role); exactly one side of a link connects")
        }
        if let expectedPeer, expectedPeer != peer {
            throw DiscoveryError.unexpectedPeer(expected: expectedPeer, actual: peer)
        }
        peerNodeID = peer
        guard let key = credentials.handshakeKey else {
            state = .complete
            return nil
        }
        let (client, server) = role == .client ? (nodeID, peer) : (peer, nodeID)
        let (clientNonce, serverNonce) = role == .client ? (nonce, peerNonce) : (peerNonce, nonce)
        func proof(by prover: Role) -> [UInt8] {
            var t = WireWriter(capacity: 128)
            t.append(Array("concord-handshake".utf8))
            t.append(prover.rawValue)
            t.append(Self.protocolVersion)
            t.append(credentials.jobID)
            t.append(client)
            t.append(server)
            t.append(clientNonce)
            t.append(serverNonce)
            return Array(HMAC<SHA256>.authenticationCode(for: t.bytes, using: SymmetricKey(data: key)))
        }
        let own = proof(by: role)
        state = .awaitingProof(expected: proof(by: peerRoleValue), own: own)
        var w = WireWriter(capacity: Self.proofSize)
        w.append(Self.magic)
        w.append(Self.protocolVersion)
        w.append(UInt8(2))
        w.append(own)
        return w.bytes
    }

    private func receiveProof(_ message: [UInt8], expected: [UInt8], own: [UInt8]) throws {
        var r = try reader(message, type: 2, name: "proof", size: Self.proofSize)
        let proof = try r.readBytes(32, "proof")
        let peer = peerNodeID ?? NodeID(high: 0, low: 0)
        if constantTimeEqual(proof, own) {
            throw DiscoveryError.reflected(detail: "the peer's proof is this node's own")
        }
        guard constantTimeEqual(proof, expected) else { throw DiscoveryError.wrongSecret(peer: peer) }
    }

    /// A reader positioned after the common header, once the header, type and exact size are checked.
    private func reader(_ message: [UInt8], type: UInt8, name: String, size: Int) throws -> WireReader {
        let what = "handshake \(name)"
        if message.count > Self.maxMessageSize {
            throw DiscoveryError.oversized(what: what, size: message.count, limit: Self.maxMessageSize)
        }
        var r = WireReader(message, what: what)
        let magicFound = try r.readBytes(4, "magic")
        guard magicFound == Self.magic else {
            throw DiscoveryError.badMagic(what: what, expected: Self.magic, found: magicFound)
        }
        let version = try r.read(UInt16.self, "protocol version")
        guard version == Self.protocolVersion else {
            throw DiscoveryError.protocolVersion(what: what, local: Self.protocolVersion, remote: version)
        }
        let found = try r.read(UInt8.self, "type")
        guard found == type else {
            let names: [UInt8: String] = [1: "hello", 2: "proof"]
            throw DiscoveryError.malformed(
                what: what,
                detail: "expected the peer's \(name), got \(names[found].map { "its \($0)" } ?? "type \(found)")")
        }
        if message.count < size {
            throw DiscoveryError.truncated(what: what, field: name, needed: size, available: message.count)
        }
        if message.count > size {
            throw DiscoveryError.trailingBytes(what: what, expected: size, actual: message.count)
        }
        return r
    }
}

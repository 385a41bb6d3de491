import Testing

@testable import ConcordDiscovery

@Suite("Handshake")
struct HandshakeTests {
    static let secretText = "SECRET-handshake-phrase-7731"
    let client = node(10)
    let server = node(20)

    /// Runs both sides to the end; returns each side's error, if any.
    static func run(
        _ c: inout Handshake, _ s: inout Handshake
    ) -> (client: DiscoveryError?, server: DiscoveryError?) {
        let helloC = c.start()
        let helloS = s.start()
        var errors: (client: DiscoveryError?, server: DiscoveryError?) = (nil, nil)
        var proofC: [UInt8]? = nil
        var proofS: [UInt8]? = nil
        do { proofC = try c.next(received: helloS) } catch { errors.client = error as? DiscoveryError }
        do { proofS = try s.next(received: helloC) } catch { errors.server = error as? DiscoveryError }
        if errors.client == nil, let proofS {
            do { _ = try c.next(received: proofS) } catch { errors.client = error as? DiscoveryError }
        }
        if errors.server == nil, let proofC {
            do { _ = try s.next(received: proofC) } catch { errors.server = error as? DiscoveryError }
        }
        return errors
    }

    func pair(
        _ cc: JobCredentials, _ sc: JobCredentials, clientID: NodeID? = nil, serverID: NodeID? = nil
    ) -> (Handshake, Handshake) {
        (
            Handshake(role: .client, nodeID: clientID ?? client, credentials: cc, expectedPeer: serverID ?? server),
            Handshake(role: .server, nodeID: serverID ?? server, credentials: sc)
        )
    }

    @Test("both sides complete with the same secret, and learn each other's node id")
    func success() {
        let credentials = secureCredentials(Self.secretText)
        var (c, s) = pair(credentials, credentials)
        let errors = Self.run(&c, &s)
        #expect(errors.client == nil && errors.server == nil)
        #expect(c.isComplete && s.isComplete)
        #expect(c.peerNodeID == server && s.peerNodeID == client)
    }

    @Test("insecure on both sides: hellos only")
    func insecure() throws {
        var (c, s) = pair(insecureCredentials, insecureCredentials)
        let hc = c.start()
        let hs = s.start()
        #expect(try c.next(received: hs) == nil)
        #expect(try s.next(received: hc) == nil)
        #expect(c.isComplete && s.isComplete && s.peerNodeID == client)
    }

    @Test("a different secret: both sides say the peer does not hold this job's secret")
    func wrongSecret() {
        var (c, s) = pair(secureCredentials(Self.secretText), secureCredentials("another secret"))
        let errors = Self.run(&c, &s)
        #expect(errors.client == .wrongSecret(peer: server))
        #expect(errors.server == .wrongSecret(peer: client))
        #expect(errors.client?.description.contains("does not hold this job's secret") == true)
        #expect(!c.isComplete && !s.isComplete)
    }

    @Test("secure against insecure: each side says which one lacks the secret")
    func mixedModes() {
        var (c, s) = pair(secureCredentials(Self.secretText), insecureCredentials)
        let errors = Self.run(&c, &s)
        #expect(errors.client == .authenticationMismatch(what: "handshake from node \(server)", localSecure: true))
        #expect(errors.server == .authenticationMismatch(what: "handshake from node \(client)", localSecure: false))
        #expect(errors.client?.description.contains("requires one") == true)
        #expect(errors.server?.description.contains("runs insecure") == true)
    }

    @Test("another job: both sides name both job ids")
    func otherJob() {
        let other = secureCredentials(Self.secretText, job: "other")
        var (c, s) = pair(secureCredentials(Self.secretText), other)
        let errors = Self.run(&c, &s)
        #expect(errors.client == .otherJob(what: "handshake from node \(server)", local: demoJob, remote: other.jobID))
        #expect(errors.server == .otherJob(what: "handshake from node \(client)", local: other.jobID, remote: demoJob))
    }

    @Test("another protocol version: both versions are reported")
    func version() throws {
        let credentials = secureCredentials(Self.secretText)
        var (c, s) = pair(credentials, credentials)
        var hello = s.start()
        _ = c.start()
        hello[4] = 2
        let expected = DiscoveryError.protocolVersion(what: "handshake hello", local: 1, remote: 2)
        #expect(throws: expected) { try c.next(received: hello) }
        #expect(expected.description.contains("v2") && expected.description.contains("v1"))
    }

    @Test("a recorded transcript replayed against a new session fails")
    func replay() throws {
        let credentials = secureCredentials(Self.secretText)
        var (c, s) = pair(credentials, credentials)
        let helloC = c.start()
        let helloS = s.start()
        let proofC = try #require(try c.next(received: helloS))
        let proofS = try #require(try s.next(received: helloC))
        _ = try c.next(received: proofS)
        _ = try s.next(received: proofC)

        // An attacker replays the client's side to a fresh server (new nonce)...
        var server2 = Handshake(role: .server, nodeID: server, credentials: credentials)
        _ = server2.start()
        _ = try server2.next(received: helloC)
        #expect(throws: DiscoveryError.wrongSecret(peer: client)) { try server2.next(received: proofC) }
        // ... or the server's side to a fresh client.
        var client2 = Handshake(role: .client, nodeID: client, credentials: credentials)
        _ = client2.start()
        _ = try client2.next(received: helloS)
        #expect(throws: DiscoveryError.wrongSecret(peer: server)) { try client2.next(received: proofS) }
    }

    @Test("reflected hellos and proofs, and a node talking to itself, are named as reflections")
    func reflection() throws {
        let credentials = secureCredentials(Self.secretText)
        var c = Handshake(role: .client, nodeID: client, credentials: credentials)
        let hello = c.start()
        #expect(throws: DiscoveryError.reflected(detail: "the peer's hello carries this node's own nonce")) {
            try c.next(received: hello)
        }
        // The server's own proof sent back to it as the client's.
        var s = Handshake(role: .server, nodeID: server, credentials: credentials)
        var c2 = Handshake(role: .client, nodeID: client, credentials: credentials)
        let hs = s.start()
        let hc = c2.start()
        let proofS = try #require(try s.next(received: hc))
        _ = try c2.next(received: hs)
        #expect(throws: DiscoveryError.reflected(detail: "the peer's proof is this node's own")) {
            try s.next(received: proofS)
        }
        // A node connected to itself (same id, different nonce).
        var a = Handshake(role: .client, nodeID: client, credentials: credentials)
        var b = Handshake(role: .server, nodeID: client, credentials: credentials)
        _ = a.start()
        #expect(throws: DiscoveryError.reflected(detail: "the peer claims this node's own id \(client)")) {
            try a.next(received: b.start())
        }
    }

    @Test("a peer other than the expected node, or in the same role, is refused")
    func wrongPeer() {
        let credentials = secureCredentials(Self.secretText)
        var c = Handshake(role: .client, nodeID: client, credentials: credentials, expectedPeer: node(99))
        var s = Handshake(role: .server, nodeID: server, credentials: credentials)
        _ = c.start()
        #expect(throws: DiscoveryError.unexpectedPeer(expected: node(99), actual: server)) {
            try c.next(received: s.start())
        }
        var c1 = Handshake(role: .client, nodeID: client, credentials: credentials)
        var c2 = Handshake(role: .client, nodeID: server, credentials: credentials)
        _ = c1.start()
        #expect(throws: DiscoveryError.self) { try c1.next(received: c2.start()) }
    }

    @Test("truncated, oversized, out-of-turn and foreign messages are refused at every length")
    func malformed() throws {
        let credentials = secureCredentials(Self.secretText)
        var s = Handshake(role: .server, nodeID: server, credentials: credentials)
        let hello = s.start()
        for length in 0..<hello.count {
            var c = Handshake(role: .client, nodeID: client, credentials: credentials)
            _ = c.start()
            #expect(throws: DiscoveryError.self, "length \(length)") {
                try c.next(received: Array(hello.prefix(length)))
            }
        }
        var c = Handshake(role: .client, nodeID: client, credentials: credentials)
        _ = c.start()
        #expect(throws: DiscoveryError.oversized(what: "handshake hello", size: 65, limit: 64)) {
            try c.next(received: hello + [UInt8](repeating: 0, count: 16))
        }
        c = Handshake(role: .client, nodeID: client, credentials: credentials)
        _ = c.start()
        #expect(throws: DiscoveryError.trailingBytes(what: "handshake hello", expected: 49, actual: 50)) {
            try c.next(received: hello + [0])
        }
        c = Handshake(role: .client, nodeID: client, credentials: credentials)
        _ = c.start()
        #expect(
            throws: DiscoveryError.badMagic(
                what: "handshake hello", expected: Array("CCHS".utf8), found: Array("GET ".utf8))
        ) {
            try c.next(received: Array("GET / HTTP/1.1\r\n".utf8))
        }
        // A proof where the hello was expected.
        var c3 = Handshake(role: .client, nodeID: client, credentials: credentials)
        var s3 = Handshake(role: .server, nodeID: server, credentials: credentials)
        let hc = c3.start()
        _ = s3.start()
        let proof = try #require(try s3.next(received: hc))
        #expect(
            throws: DiscoveryError.malformed(
                what: "handshake hello", detail: "expected the peer's hello, got its proof")
        ) {
            try c3.next(received: proof)
        }
        // A truncated proof.
        var c4 = Handshake(role: .client, nodeID: client, credentials: credentials)
        var s4 = Handshake(role: .server, nodeID: server, credentials: credentials)
        let hc4 = c4.start()
        _ = try c4.next(received: s4.start())
        let proof4 = try #require(try s4.next(received: hc4))
        #expect(throws: DiscoveryError.truncated(what: "handshake proof", field: "proof", needed: 39, available: 38)) {
            try c4.next(received: Array(proof4.dropLast()))
        }
    }

    @Test("every single-bit flip of the peer's messages fails the handshake")
    func bitFlips() throws {
        let credentials = secureCredentials(Self.secretText)
        var c0 = Handshake(
            role: .client, nodeID: client, credentials: credentials, nonce: Array(repeating: 1, count: 16))
        var s0 = Handshake(
            role: .server, nodeID: server, credentials: credentials, nonce: Array(repeating: 2, count: 16))
        let hc = c0.start()
        let hs = s0.start()
        let proofS = try #require(try s0.next(received: hc))
        for (index, message) in [hs, proofS].enumerated() {
            for i in 0..<message.count {
                for bit in 0..<8 {
                    var c = Handshake(
                        role: .client, nodeID: client, credentials: credentials, nonce: Array(repeating: 1, count: 16))
                    _ = c.start()
                    var flipped = message
                    flipped[i] ^= 1 << bit
                    #expect(throws: DiscoveryError.self, "message \(index) byte \(i) bit \(bit)") {
                        if index == 0 {
                            _ = try c.next(received: flipped)
                            _ = try c.next(received: proofS)
                        } else {
                            _ = try c.next(received: hs)
                            _ = try c.next(received: flipped)
                        }
                    }
                }
            }
        }
    }

    @Test("no error message or description ever contains the secret")
    func noSecretInMessages() {
        let credentials = secureCredentials(Self.secretText)
        var texts: [String] = []
        for other in [secureCredentials("x"), insecureCredentials, secureCredentials(Self.secretText, job: "other")] {
            var (c, s) = pair(credentials, other)
            let errors = Self.run(&c, &s)
            texts += [errors.client, errors.server].compactMap { $0?.description }
            texts.append(String(describing: c))
            texts.append(String(reflecting: s))
        }
        var dumped = ""
        var (midway, other) = pair(credentials, credentials)
        _ = midway.start()
        _ = try? midway.next(received: other.start())
        dump(midway, to: &dumped)
        dump(credentials, to: &dumped)
        texts.append(String(reflecting: midway))
        texts.append(dumped)
        #expect(texts.count > 6)
        let key = hexString(credentials.handshakeKey ?? [])
        for t in texts {
            #expect(!t.contains(Self.secretText) && !t.contains("SECRET-handshake"), "\(t)")
            #expect(!t.contains(key) && !t.contains("\(credentials.handshakeKey ?? [])"), "\(t)")
        }
        #expect(
            String(describing: pair(credentials, credentials).0)
                == "client handshake of node 0000000a with an unknown peer: not started")
    }
}

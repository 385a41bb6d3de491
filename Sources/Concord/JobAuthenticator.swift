// Every connection of a job proves it holds the job's secret (ConcordDiscovery's Handshake: an
// HMAC-SHA256 challenge-response bound to both nonces, both node ids and the job) before any other byte
// crosses it. Without a secret a job must say so (CONCORD_INSECURE=1), and each process then warns once.
import ConcordCore
import ConcordDiscovery
import Foundation
import Synchronization

/// The transport's authenticator for one process of a job.
struct JobAuthenticator: LinkAuthenticator {
    let credentials: JobCredentials

    /// - Throws: `invalidConfiguration` when the configuration has neither a secret nor an explicit
    ///   insecure choice.
    init(_ configuration: Configuration) throws {
        guard let authentication = configuration.authentication else {
            throw ConcordError.invalidConfiguration(
                "rank \(configuration.rank): no job secret. Set CONCORD_SECRET (or CONCORD_SECRET_FILE) to the same "
                    + "secret on every rank (`concord run` makes one for the ranks it starts), or CONCORD_INSECURE=1 "
                    + "to let any process that reaches this job's ports join it")
        }
        if case .insecure = authentication { Self.warnInsecure(rank: configuration.rank) }
        credentials = JobCredentials(jobName: configuration.jobName, authentication: authentication)
    }

    func session(client: Bool) -> any LinkAuthenticationSession {
        // A fresh id per connection: ranks are named by the rendezvous, and rank 0 also connects to its own
        // store, which the handshake would otherwise take for a reflection.
        HandshakeSession(
            handshake: Handshake(role: client ? .client : .server, nodeID: .random(), credentials: credentials))
    }

    private static let warned = Mutex(false)

    private static func warnInsecure(rank: Int) {
        let first = warned.withLock { warned in
            defer { warned = true }
            return !warned
        }
        guard first else { return }
        FileHandle.standardError.write(
            Data(
                "concord: warning: rank \(rank) runs without a job secret (CONCORD_INSECURE=1): any process that reaches its ports can join the job\n"
                    .utf8))
    }
}

/// `Handshake` as the transport's session type.
struct HandshakeSession: LinkAuthenticationSession {
    var handshake: Handshake
    mutating func start() -> [UInt8] { handshake.start() }
    mutating func next(received: [UInt8]) throws -> [UInt8]? { try handshake.next(received: received) }
    var isComplete: Bool { handshake.isComplete }
}

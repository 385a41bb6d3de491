// The public face of Concord: a group of ranks that run collectives together.
//
// A Communicator owns one libuv event loop (see EventLoop). A blocking collective runs on the caller's
// own thread, which drives the loop for its duration: the ring algorithm is plain sequential code and
// each of its waits turns the loop, so neither the collective nor any ring step crosses threads. The
// async API queues the collective as a job for the loop's service thread and suspends the caller with a
// continuation that the service thread resumes (no thread of Swift's cooperative pool ever blocks on the
// network); `...Async` calls queue the same way and return a `Work` at once (Work.swift). Collectives run
// in the order they are issued, and each takes the next sequence number when it runs.
import ConcordCollectives
@_exported import ConcordCore
import ConcordUV
import Foundation

/// A group of processes (ranks) that reduce buffers together over a TCP ring.
///
/// ```swift
/// let comm = try await Communicator(environment: ProcessInfo.processInfo.environment)
/// try await comm.allReduce(&gradients, op: .sum)
/// await comm.shutdown()
/// ```
///
/// Every rank must call the same collectives in the same order with the same element count, data type
/// and op; a rank that does not gets a `ConcordError.mismatch` naming both ranks (never a hang). After any
/// collective throws, the communicator is unusable and every later call throws the same error.
public final class Communicator: @unchecked Sendable {
    /// This process's rank, in `0..<worldSize`.
    public let rank: Int
    /// The number of ranks in the group.
    public let worldSize: Int
    /// The rank among the processes of this machine.
    public let localRank: Int
    /// The configuration the communicator joined with.
    public let configuration: Configuration

    let loop: EventLoop
    let transport: UVTransport
    /// Collective sequence number; only touched on the loop thread.
    var sequence: UInt64 = 0
    private let stateLock = NSLock()
    private var isShutDown = false
    /// Link estimates and the capacity-aware plan (Communicator+Capacity.swift); loop thread only.
    let capacity = CapacityState()
    /// Orders collectives: async ones queue under it, blocking ones wait under it for `inFlight` to drain.
    private let order = NSCondition()
    /// Collectives issued asynchronously and not yet ended.
    private var inFlight = 0

    /// Largest payload of one frame, in bytes (a tuning knob; see docs/algorithms.md).
    package var segmentBytes: Int {
        get { stateLock.withLock { _segmentBytes } }
        set { stateLock.withLock { _segmentBytes = max(64, newValue) } }
    }
    private var _segmentBytes = RingCollectives.defaultSegmentBytes

    /// Joins the group described by the environment (see `Configuration(environment:)`).
    /// - Throws: `ConcordError` when the environment is malformed or the join fails (the message names
    ///   this rank and what to do).
    public convenience init(environment: [String: String]) async throws {
        try await self.init(configuration: Configuration(environment: environment))
    }

    /// Joins the group described by `configuration`, waiting at most `configuration.joinTimeout` seconds.
    public convenience init(configuration: Configuration) async throws {
        let loop = try EventLoop(name: "concord-\(configuration.rank)")
        let transport: UVTransport = try await withCheckedThrowingContinuation { continuation in
            loop.submit {
                continuation.resume(with: Result { try Self.join(loop: loop, configuration) })
            }
        }
        self.init(loop: loop, transport: transport, configuration: configuration)
    }

    /// Joins without Swift concurrency, blocking the calling thread (at most the join timeout).
    public convenience init(blockingConfiguration configuration: Configuration) throws {
        let loop = try EventLoop(name: "concord-\(configuration.rank)")
        let transport: UVTransport
        do {
            transport = try loop.drive { try Self.join(loop: loop, configuration) }
        } catch {
            loop.stop()
            throw error
        }
        self.init(loop: loop, transport: transport, configuration: configuration)
    }

    /// Joins the group described by the environment, blocking the calling thread.
    public convenience init(blockingEnvironment environment: [String: String]) throws {
        try self.init(blockingConfiguration: Configuration(environment: environment))
    }

    private init(loop: EventLoop, transport: UVTransport, configuration: Configuration) {
        self.loop = loop
        self.transport = transport
        self.configuration = configuration
        self.rank = configuration.rank
        self.worldSize = configuration.worldSize
        self.localRank = configuration.localRank
        capacity.policy = configuration.capacityPolicy
        capacity.replanEvery = configuration.replanEvery
    }

    private static func join(loop: EventLoop, _ configuration: Configuration) throws -> UVTransport {
        var options = JoinOptions(
            rank: configuration.rank, worldSize: configuration.worldSize,
            masterHost: configuration.masterAddress, masterPort: configuration.masterPort)
        options.joinTimeout = configuration.joinTimeout
        options.peerTimeout = configuration.peerTimeout
        options.advertisedHost = configuration.advertisedHost
        options.listenPort = configuration.listenPort
        options.medium = configuration.linkMedium
        options.spinMicroseconds = configuration.spinMicroseconds
        options.zeroCopySends = configuration.zeroCopySends
        if let bytes = configuration.receiveBufferBytes { options.receiveBufferBytes = bytes }
        if let name = configuration.sameMachineCongestionControl { options.sameMachineCongestionControl = name }
        options.authenticator = try JobAuthenticator(configuration)
        if let node = configuration.node { options.node = node }
        let transport = try UVTransport(loop: loop, options: options)
        // A first barrier proves the whole ring carries frames before the caller gets the communicator.
        do {
            try RingCollectives.barrier(sequence: 0, transport: transport)
        } catch {
            transport.close()
            throw error
        }
        return transport
    }

    deinit {
        if !isShutDown {
            loop.submit { [transport] in transport.close() }
            loop.stop()
        }
    }

    // MARK: - Running work on the loop thread

    /// One collective call as the loop thread runs it, given the transport, the call's sequence number and
    /// the segment size.
    typealias Job = @Sendable (_ transport: UVTransport, _ sequence: UInt64, _ segmentBytes: Int) throws -> Void

    /// Runs `job` with the next sequence number on the loop thread; resumes the caller when it ends.
    func perform(_ job: @escaping Job) async throws {
        try await issue(job, result: {}).value
    }

    /// Queues `job` for the service thread behind every collective issued before it and returns at once;
    /// `result` makes the Work's value once the job has run.
    func issue<Value: Sendable>(_ job: @escaping Job, result: @escaping @Sendable () -> Value) -> Work<Value> {
        let segment = segmentBytes
        order.lock()
        defer { order.unlock() }
        if stateLock.withLock({ isShutDown }) { return Work(failed: ConcordError.shutDown(rank: rank)) }
        let work = Work<Value>()
        inFlight += 1
        // Submitted under `order`: two threads issuing at once still queue in the order they took the lock.
        loop.submit { [self] in
            let outcome = Result { () throws -> Value in
                try step(job, segment)
                return result()
            }
            order.withLock {
                inFlight -= 1
                order.broadcast()
            }
            work.complete(outcome)
        }
        return work
    }

    /// Runs `job` on the calling thread, which drives the loop while it runs: no thread hand-off. Waits
    /// first for the collectives issued asynchronously before it (they end within the peer timeout).
    func performBlocking(_ job: Job) throws {
        let segment = segmentBytes
        try exclusively { try step(job, segment) }
    }

    /// Runs `body` as the loop's driver on the calling thread, after the collectives issued before it.
    func exclusively<T>(_ body: () throws -> T) throws -> T {
        try checkOpen()
        order.withLock {
            while inFlight > 0 { order.wait() }
        }
        return try loop.drive(body)
    }

    /// On the loop thread. A bad argument fails the communicator on every rank: the other ranks may
    /// already be waiting for this one's frames.
    private func step(_ job: Job, _ segment: Int) throws {
        do {
            if capacity.startCollective() { try replan() }
            sequence += 1
            try job(transport, sequence, segment)
        } catch let error as ConcordError {
            if case .invalidArgument = error, transport.failure == nil { transport.abort(error) }
            throw error
        }
    }

    private func checkOpen() throws {
        if stateLock.withLock({ isShutDown }) { throw ConcordError.shutDown(rank: rank) }
    }

    /// Says goodbye to the neighbours, closes every socket and stops the loop thread. Idempotent; later
    /// collectives throw `ConcordError.shutDown`.
    public func shutdown() async {
        shutdownBlocking()
    }

    /// Blocking `shutdown`.
    public func shutdownBlocking() {
        // Under `order`, so no Work can be queued after the close (it would never run): a collective
        // issued before ends first (or fails within the peer timeout), one issued after fails at once.
        let first = order.withLock {
            stateLock.withLock { () -> Bool in
                defer { isShutDown = true }
                return !isShutDown
            }
        }
        guard first else { return }
        loop.submit { [transport] in transport.close() }
        loop.stop()
    }

    /// What carries data to the right neighbour and from the left one: "shm" or "tcp" each.
    public var linkMedia: (toRight: String, fromLeft: String) { loop.drive { transport.media } }

    /// The congestion control of every TCP link of this rank (ring neighbours, then doubling partners).
    package var linkCongestionControls: [String?] { loop.drive { transport.linkCongestionControls } }

    /// Payload bytes this rank's TCP links sent without a copy (see ConcordUV/PeerLink.swift).
    package var splicedBytes: Int { loop.drive { transport.splicedBytes } }

    /// Whether the loop closed with no libuv handle left open (checked by tests after `shutdown`).
    package var closedCleanly: Bool { loop.closedCleanly }
    package var leakedHandles: [String] { loop.leakedHandles }
}

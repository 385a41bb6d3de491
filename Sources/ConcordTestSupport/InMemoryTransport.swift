// An in-memory `Transport` for tests: every rank is a thread of one process.
//
// Each ordered pair of ranks (sender, receiver) has a FIFO of posted sends and a FIFO of posted
// receives; whichever side posts second pairs the two heads, checks the receiver's expected tag against
// the sender's, and moves the payload straight from the sender's buffer into the receiver's (combining it
// with the reducer when there is one). A send therefore completes only once its bytes were consumed,
// like a rendezvous protocol, and no buffer is ever copied in between.
import ConcordCore
import Foundation

/// A group of in-memory ranks sharing one lock.
public final class InMemoryWorld: @unchecked Sendable {
    public let worldSize: Int
    /// How long a wait may see no completion before it fails (tests must never hang).
    public let timeout: Double
    /// Whether every rank reaches every other (else only its ring neighbours, like the TCP transport
    /// without doubling partners).
    public let fullyConnected: Bool
    /// What every rank's transport says of `ranksShareOneMachine`.
    public let oneMachine: Bool
    fileprivate let condition = NSCondition()
    /// Frames sent so far from rank s to rank d: `frames[s][d]`.
    fileprivate var frames: [[Int]]
    fileprivate var sends: [[[Pending]]]
    fileprivate var receives: [[[Pending]]]
    fileprivate var done = Set<Int>()
    fileprivate var nextID = 0
    fileprivate var failures: [Int: ConcordError] = [:]
    fileprivate var firstFailure: (rank: Int, error: ConcordError)?

    public init(worldSize: Int, timeout: Double = 30, fullyConnected: Bool = false, oneMachine: Bool = false) {
        self.worldSize = worldSize
        self.timeout = timeout
        self.fullyConnected = fullyConnected
        self.oneMachine = oneMachine
        frames = Array(repeating: Array(repeating: 0, count: worldSize), count: worldSize)
        let empty = [[Pending]](repeating: [], count: worldSize)
        sends = Array(repeating: empty, count: worldSize)
        receives = Array(repeating: empty, count: worldSize)
    }

    /// Frames sent so far from rank `source` to rank `destination`.
    public func framesSent(from source: Int, to destination: Int) -> Int {
        condition.lock()
        defer { condition.unlock() }
        return frames[source][destination]
    }

    /// Rank `rank`'s view of the world.
    public func transport(rank: Int) -> InMemoryTransport { InMemoryTransport(world: self, rank: rank) }

    fileprivate struct Pending {
        let id: Int
        let owner: Int
        let tag: SegmentTag
        let bytes: UnsafeMutableRawBufferPointer
        let reducer: Reducer?
    }

    /// Called with the lock held: fails the whole world, `rank` and `peer` with their own errors.
    fileprivate func fail(_ error: ConcordError, rank: Int, peerError: (Int, ConcordError)?) {
        guard firstFailure == nil else { return }
        firstFailure = (rank, error)
        failures[rank] = error
        if let (peer, e) = peerError { failures[peer] = e }
        for s in 0..<worldSize {
            for d in 0..<worldSize {
                sends[s][d].removeAll()
                receives[s][d].removeAll()
            }
        }
        condition.broadcast()
    }

    fileprivate func error(for rank: Int) -> ConcordError? {
        guard let first = firstFailure else { return nil }
        return failures[rank] ?? .aborted(rank: rank, reportedBy: first.rank, reason: first.error.description)
    }

    /// Called with the lock held: pairs posted sends and receives from `source` to `destination`.
    fileprivate func match(source: Int, destination: Int) {
        while let send = sends[source][destination].first, let receive = receives[source][destination].first {
            sends[source][destination].removeFirst()
            receives[source][destination].removeFirst()
            do {
                try receive.tag.check(received: send.tag, rank: destination, peer: source)
            } catch let error as ConcordError {
                var mirrored: (Int, ConcordError)? = nil
                if case .mismatch(_, _, let what, let local, let remote) = error {
                    mirrored = (
                        source, .mismatch(rank: source, peer: destination, what: what, local: remote, remote: local)
                    )
                }
                fail(error, rank: destination, peerError: mirrored)
                return
            } catch { fatalError("unexpected \(error)") }
            let n = send.tag.byteCount
            if n > 0 {
                if let reducer = receive.reducer {
                    reducer.combine(
                        receive.bytes.baseAddress!, UnsafeRawPointer(send.bytes.baseAddress!), send.tag.length)
                } else {
                    receive.bytes.baseAddress!.copyMemory(from: send.bytes.baseAddress!, byteCount: n)
                }
            }
            done.insert(send.id)
            done.insert(receive.id)
            condition.broadcast()
        }
    }
}

/// One rank of an `InMemoryWorld`.
public final class InMemoryTransport: Transport, @unchecked Sendable {
    public let rank: Int
    public var worldSize: Int { world.worldSize }
    private let world: InMemoryWorld
    private var outstanding: [Int: Int] = [:]  // transfer id -> peer, for this rank only

    init(world: InMemoryWorld, rank: Int) {
        self.world = world
        self.rank = rank
    }

    public var ranksShareOneMachine: Bool { world.oneMachine }

    public func isConnected(to peer: Int) -> Bool {
        peer != rank
            && (world.fullyConnected || peer == (rank + 1) % worldSize || peer == (rank + worldSize - 1) % worldSize)
    }

    public func send(to peer: Int, tag: SegmentTag, from bytes: UnsafeRawBufferPointer) throws -> TransferID {
        try post(peer: peer, source: rank, destination: peer) { id in
            world.frames[rank][peer] += 1
            world.sends[rank][peer].append(
                .init(
                    id: id, owner: rank, tag: tag, bytes: UnsafeMutableRawBufferPointer(mutating: bytes), reducer: nil))
        }
    }

    public func receive(
        from peer: Int, tag: SegmentTag, into bytes: UnsafeMutableRawBufferPointer, reducer: Reducer?
    ) throws -> TransferID {
        try post(peer: peer, source: peer, destination: rank) { id in
            world.receives[peer][rank].append(.init(id: id, owner: rank, tag: tag, bytes: bytes, reducer: reducer))
        }
    }

    private func post(peer: Int, source: Int, destination: Int, _ enqueue: (Int) -> Void) throws -> TransferID {
        precondition(peer != rank && (0..<worldSize).contains(peer), "rank \(rank) cannot talk to rank \(peer)")
        world.condition.lock()
        defer { world.condition.unlock() }
        if let error = world.error(for: rank) { throw error }
        let id = world.nextID
        world.nextID += 1
        outstanding[id] = peer
        enqueue(id)
        world.match(source: source, destination: destination)
        return TransferID(id)
    }

    public func wait(_ transfer: TransferID) throws {
        world.condition.lock()
        defer { world.condition.unlock() }
        try waitLocked(transfer.raw)
    }

    public func waitAll() throws {
        world.condition.lock()
        defer { world.condition.unlock() }
        for id in outstanding.keys.sorted() { try waitLocked(id) }
    }

    private func waitLocked(_ id: Int) throws {
        var deadline = Date(timeIntervalSinceNow: world.timeout)
        while !world.done.contains(id) {
            if let error = world.error(for: rank) { throw error }
            if !world.condition.wait(until: deadline) {
                if world.done.contains(id) { break }
                let error = ConcordError.peerLost(
                    rank: rank, peer: outstanding[id] ?? -1,
                    reason: "in-memory transfer did not complete within \(world.timeout) s")
                world.fail(error, rank: rank, peerError: nil)
                throw error
            }
            deadline = Date(timeIntervalSinceNow: world.timeout)
        }
        world.done.remove(id)
        outstanding[id] = nil
    }
}

// Collectives in flight: `Communicator.allReduceAsync(...)` and its siblings return a `Work` at once; the
// collective runs on the communicator's service thread while the caller computes.
//
//   caller ── allReduceAsync(b1) ─▶ Work₁ ─┐      issue order = run order = sequence numbers:
//          ── allReduceAsync(b2) ─▶ Work₂ ─┤      the service thread takes jobs first in, first out,
//          ── compute …                    │      and a blocking collective first waits for every
//          ── Work₁.wait(), Work₂.wait() ◀─┘      Work issued before it.
//
// Every rank must issue the same collectives in the same order (from one thread, or ordered by the
// caller); their sequence numbers then agree and the frames' tags match. A Work never blocks forever: the
// collective under it fails within the transport's peer timeout when a peer is lost or silent.
import Foundation

/// A collective issued asynchronously, to wait on (blocking or with `await`) or poll.
///
/// Memory lent to the collective (a raw buffer) must stay valid and untouched until `isCompleted`;
/// an array passed in is moved into the Work and handed back by `value`/`wait()`.
public final class Work<Value: Sendable>: @unchecked Sendable {
    private let condition = NSCondition()
    private var result: Result<Value, any Error>?
    private var continuations: [CheckedContinuation<Value, any Error>] = []
    private var ended: ContinuousClock.Instant?

    init() {}

    /// A Work that has already failed (the communicator was shut down before the call).
    init(failed error: any Error) { result = .failure(error) }

    /// Whether the collective has ended, successfully or not.
    public var isCompleted: Bool {
        condition.lock()
        defer { condition.unlock() }
        return result != nil
    }

    /// When the collective ended (nil while it runs).
    public var endedAt: ContinuousClock.Instant? {
        condition.lock()
        defer { condition.unlock() }
        return ended
    }

    /// Blocks until the collective ends; returns its result.
    /// - Throws: the collective's `ConcordError`.
    @discardableResult
    public func wait() throws -> Value {
        condition.lock()
        while result == nil { condition.wait() }
        let result = self.result!
        condition.unlock()
        return try result.get()
    }

    /// The collective's result, once it has ended.
    public var value: Value {
        get async throws {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Value, any Error>) in
                condition.lock()
                if let result {
                    condition.unlock()
                    continuation.resume(with: result)
                } else {
                    continuations.append(continuation)
                    condition.unlock()
                }
            }
        }
    }

    /// Ends the Work (once): wakes blocking waiters and resumes awaiting ones.
    func complete(_ outcome: Result<Value, any Error>) {
        condition.lock()
        precondition(result == nil, "a Work completes once")
        result = outcome
        ended = ContinuousClock.now
        let waiting = continuations
        continuations.removeAll()
        condition.broadcast()
        condition.unlock()
        for continuation in waiting { continuation.resume(with: outcome) }
    }
}

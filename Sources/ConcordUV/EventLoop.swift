// One libuv loop, one thread, one way in.
//
//   other threads ──submit(job)──▶ [locked queue] ──uv_async_send──▶ loop thread
//                                                                     ├─ uv_run(ONCE)
//                                                                     └─ run queued jobs in order
//
// A job runs on the loop thread *between* turns of uv_run, so it may itself drive the loop with
// `run(until:deadline:)` (which calls uv_run(ONCE) until its condition holds). This is how a collective
// runs: its algorithm is ordinary sequential code on the loop thread, and every wait turns the loop, so a
// ring step costs no thread hand-off at all; only the submission and the completion of a whole collective
// cross threads. Callbacks never block; they record and return.
internal import CLibUV
import ConcordCore
import Foundation

/// A libuv loop running on a thread of its own.
public final class EventLoop: @unchecked Sendable {
    let loop: UnsafeMutablePointer<uv_loop_t>
    private let async: UnsafeMutablePointer<uv_async_t>
    private let wakeTimer: UnsafeMutablePointer<uv_timer_t>
    private let tickTimer: UnsafeMutablePointer<uv_timer_t>
    private let lock = NSLock()
    private var jobs: [() -> Void] = []
    private var stopRequested = false
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    private var tickHandlers: [(id: Int, body: () -> Void)] = []
    private var nextTickID = 0
    /// Whether `uv_loop_close` succeeded at the end, i.e. no handle leaked.
    public private(set) var closedCleanly = false
    /// The handle types still open when the loop stopped (empty when it closed cleanly).
    public private(set) var leakedHandles: [String] = []
    private var threadID: pthread_t?

    /// Creates the loop and starts its thread.
    /// - Parameters:
    ///   - name: the thread's name (shows in `top -H` and debuggers).
    ///   - tickMilliseconds: period of the housekeeping tick (heartbeats, liveness checks).
    public init(name: String, tickMilliseconds: UInt64 = 250) throws {
        // A write to a peer that died must fail with EPIPE (reported as a lost rank), not kill the process.
        signal(SIGPIPE, SIG_IGN)
        loop = .allocate(capacity: 1)
        async = .allocate(capacity: 1)
        wakeTimer = .allocate(capacity: 1)
        tickTimer = .allocate(capacity: 1)
        try uvCheck(uv_loop_init(loop), "uv_loop_init", rank: -1)
        try uvCheck(uv_async_init(loop, async, { _ in }), "uv_async_init", rank: -1)
        try uvCheck(uv_timer_init(loop, wakeTimer), "uv_timer_init", rank: -1)
        try uvCheck(uv_timer_init(loop, tickTimer), "uv_timer_init", rank: -1)
        uv_unref(wakeTimer.asHandle)
        loop.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        tickTimer.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        try uvCheck(
            uv_timer_start(
                tickTimer,
                { timer in
                    Unmanaged<EventLoop>.fromOpaque(timer!.pointee.data).takeUnretainedValue().tick()
                }, tickMilliseconds, tickMilliseconds), "uv_timer_start", rank: -1)
        // The thread keeps the loop alive until it ends; `main` then drops the loop's reference to it.
        let thread = Thread { self.main() }
        thread.name = name
        thread.stackSize = 4 << 20
        self.thread = thread
        thread.start()
    }

    deinit {
        loop.deallocate()
        async.deallocate()
        wakeTimer.deallocate()
        tickTimer.deallocate()
    }

    // MARK: - Entering the loop from other threads

    /// Queues `job` to run on the loop thread after the jobs queued before it.
    public func submit(_ job: @escaping @Sendable () -> Void) {
        lock.lock()
        jobs.append(job)
        lock.unlock()
        uv_async_send(async)
    }

    /// Runs `job` on the loop thread and returns its result to the calling (non-loop) thread.
    public func call<T>(_ job: @escaping () throws -> T) throws -> T {
        precondition(!isLoopThread, "EventLoop.call from the loop thread would deadlock")
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: Result<T, any Error>?
        nonisolated(unsafe) let job = job
        submit {
            result = Result { try job() }
            done.signal()
        }
        done.wait()
        return try result!.get()
    }

    /// Whether the caller runs on this loop's thread.
    public var isLoopThread: Bool {
        guard let id = threadID else { return false }
        return pthread_equal(id, pthread_self()) != 0
    }

    /// Asks the thread to close every handle and stop after the jobs already queued; returns once it has
    /// (or at once when called on the loop thread itself, which cannot wait for its own end).
    public func stop() {
        lock.lock()
        stopRequested = true
        lock.unlock()
        uv_async_send(async)
        if !isLoopThread { finished.wait() }
    }

    // MARK: - On the loop thread

    private func main() {
        threadID = pthread_self()
        while true {
            lock.lock()
            let batch = jobs
            jobs.removeAll()
            let stopping = stopRequested
            lock.unlock()
            if batch.isEmpty {
                if stopping { break }
                uv_run(loop, UV_RUN_ONCE)
            } else {
                for job in batch { job() }
            }
        }
        closeEverything()
        thread = nil
        finished.signal()
    }

    /// Turns the loop until `condition()` holds or `deadline` passes; returns whether the condition held.
    /// Only on the loop thread, from a job (never from a callback).
    @discardableResult
    func run(until condition: () -> Bool, deadline: Deadline) -> Bool {
        var armed = false
        defer { if armed { uv_timer_stop(wakeTimer) } }
        while !condition() {
            if deadline.hasPassed { return false }
            if let ms = deadline.remainingMilliseconds {
                uv_timer_start(wakeTimer, { _ in }, max(1, ms), 0)
                armed = true
            }
            uv_run(loop, UV_RUN_ONCE)
        }
        return true
    }

    /// Registers `body` to run on every housekeeping tick; returns a token for `removeTick`.
    func addTick(_ body: @escaping () -> Void) -> Int {
        nextTickID += 1
        tickHandlers.append((nextTickID, body))
        return nextTickID
    }

    func removeTick(_ id: Int) {
        tickHandlers.removeAll { $0.id == id }
    }

    private func tick() {
        for handler in tickHandlers { handler.body() }
    }

    /// Closes every handle still open (owners close theirs first; any other one is a leak, recorded in
    /// `leakedHandles`), turns the loop until their close callbacks ran, and closes it.
    private func closeEverything() {
        uv_walk(
            loop,
            { handle, _ in
                guard let handle, uv_is_closing(handle) == 0 else { return }
                let owner = Unmanaged<EventLoop>.fromOpaque(handle.pointee.loop.pointee.data).takeUnretainedValue()
                owner.noteOpenHandle(handle)
                uv_close(handle, nil)
            }, nil)
        while uv_run(loop, UV_RUN_NOWAIT) != 0 {}
        closedCleanly = uv_loop_close(loop) == 0
    }

    private func isOwnHandle(_ handle: UnsafeMutablePointer<uv_handle_t>) -> Bool {
        handle == async.asHandle || handle == wakeTimer.asHandle || handle == tickTimer.asHandle
    }

    private func noteOpenHandle(_ handle: UnsafeMutablePointer<uv_handle_t>) {
        if !isOwnHandle(handle) { leakedHandles.append(uvHandleTypeName(handle)) }
    }
}

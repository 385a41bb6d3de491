// One libuv loop, driven by whichever thread needs it; a service thread keeps it turning in between.
//
//   caller thread ── drive { collective } ──▶ owns the loop: runs the ring algorithm and every uv_run itself
//   service thread ─ between drives ───────▶ owns the loop only while something is ready:
//                     poll(epoll fd, wake fd) without the loop ─▶ uv_run(NOWAIT) with it ─▶ poll again
//   async callers ── submit(job) ─▶ [locked queue] ─▶ wake fd ─▶ the service thread runs the job
//
// Ownership is a lock: whoever holds it may call libuv on the loop, and nobody else. A blocking
// collective takes it on the caller's own thread, so a small collective costs no thread hand-off at all
// (a wake-up costs 25-30 us on a small VM, more than a 4 KiB ring step). The service thread never sleeps
// inside libuv: it waits on the loop's epoll descriptor (`uv_backend_fd`) with the lock released, which
// libuv supports for exactly this split, so a caller can take the loop at any moment without waking
// anyone. While a caller drives, and for 20 ms after, the service thread sleeps on its job pipe only: a
// caller that drives again soon finds every frame itself, and no event wakes a second thread for nothing.
// Heartbeats, liveness checks and control frames keep flowing whoever drives.
//
// While its condition does not hold, `run(until:deadline:)` first polls the loop without blocking for
// `spinMicroseconds` (a short busy-poll, as MPI libraries do), then blocks in epoll: a reply that comes
// within the spin is seen without a wake-up.
internal import CLibUV
import ConcordCore
import Foundation
import Synchronization

/// A libuv loop that a calling thread can drive directly, and a service thread turns otherwise.
public final class EventLoop: @unchecked Sendable {
    let loop: UnsafeMutablePointer<uv_loop_t>
    private let wakeTimer: UnsafeMutablePointer<uv_timer_t>
    private let tickTimer: UnsafeMutablePointer<uv_timer_t>
    /// Held by the thread that drives the loop.
    private let ownership = NSLock()
    /// `pthread_self()` of the driving thread, 0 when nobody drives.
    private let driver = Atomic<UInt>(0)
    /// When a caller last stopped driving (nanoseconds of the monotonic clock); see `main`.
    private let lastDriven = Atomic<UInt64>(0)
    /// After a caller drove the loop, the service thread leaves the network alone this long: a caller
    /// that drives again soon (a training loop) finds every frame itself, and the service thread wakes
    /// for nothing instead of contending with it for a core. Heartbeats tolerate far longer gaps.
    private static let callerGraceNanoseconds: UInt64 = 20_000_000
    /// A pipe the service thread polls besides the loop (read end) for new jobs and stop requests.
    private let wakeFDs: (read: Int32, write: Int32)
    private let lock = NSLock()
    private var jobs: [() -> Void] = []
    private var stopRequested = false
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    private var tickHandlers: [(id: Int, body: () -> Void)] = []
    private var nextTickID = 0
    // `@exclusivity(unchecked)`: data-path state of the loop's driver (see UVTransport's `left`).
    /// Microseconds `run(until:)` polls without blocking before it sleeps in epoll (only its driver sets it).
    @exclusivity(unchecked) var spinMicroseconds = 0
    /// Whether a spinning driver yields the CPU between polls (when ranks outnumber cores).
    @exclusivity(unchecked) var yieldWhileSpinning = false
    /// Whether `uv_loop_close` succeeded at the end, i.e. no handle leaked.
    public private(set) var closedCleanly = false
    /// The handle types still open when the loop stopped (empty when it closed cleanly).
    public private(set) var leakedHandles: [String] = []

    /// Creates the loop and starts its service thread.
    /// - Parameters:
    ///   - name: the service thread's name (shows in `top -H` and debuggers).
    ///   - tickMilliseconds: period of the housekeeping tick (heartbeats, liveness checks).
    public init(name: String, tickMilliseconds: UInt64 = 250) throws {
        // A write to a peer that died must fail with EPIPE (reported as a lost rank), not kill the process.
        signal(SIGPIPE, SIG_IGN)
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) != 0 {
            throw ConcordError.system(rank: -1, call: "pipe", code: errno, message: String(cString: strerror(errno)))
        }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeFDs = (fds[0], fds[1])
        loop = .allocate(capacity: 1)
        wakeTimer = .allocate(capacity: 1)
        tickTimer = .allocate(capacity: 1)
        try uvCheck(uv_loop_init(loop), "uv_loop_init", rank: -1)
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
        close(wakeFDs.read)
        close(wakeFDs.write)
        loop.deallocate()
        wakeTimer.deallocate()
        tickTimer.deallocate()
    }

    // MARK: - Driving the loop

    /// Whether the calling thread drives the loop now (inside `drive`, or a job of the service thread).
    public var isLoopThread: Bool {
        driver.load(ordering: .relaxed) == UInt(pthread_self())
    }

    /// Runs `body` on the calling thread as the loop's driver: it may call libuv and turn the loop. Waits
    /// while another thread drives (a job of the service thread, a collective of another caller thread).
    public func drive<T>(_ body: () throws -> T) rethrows -> T {
        if isLoopThread { return try body() }
        acquire()
        defer {
            release()
            lastDriven.store(Self.coarseNanoseconds(), ordering: .relaxed)
        }
        return try body()
    }

    /// The monotonic clock at its last tick (1-4 ms resolution): a load from the vDSO page, without the
    /// TSC read and scaling of a precise clock. For timestamps taken on every frame or call, compared
    /// against grace periods and timeouts of milliseconds to seconds.
    package static func coarseNanoseconds() -> UInt64 {
        var ts = timespec()
        #if os(Linux)
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        #else
        clock_gettime(CLOCK_MONOTONIC_RAW_APPROX, &ts)
        #endif
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    private func acquire() {
        // The service thread holds the loop for microseconds at a time: spin briefly before sleeping on it.
        var tries = 0
        while !ownership.try() {
            tries += 1
            if tries > 200 {
                ownership.lock()
                break
            }
            sched_yield()
        }
        driver.store(UInt(pthread_self()), ordering: .relaxed)
    }

    private func release() {
        driver.store(0, ordering: .relaxed)
        ownership.unlock()
    }

    // MARK: - Jobs for the service thread

    /// Queues `job` to run on the service thread, as the loop's driver, after the jobs queued before it.
    public func submit(_ job: @escaping @Sendable () -> Void) {
        lock.lock()
        jobs.append(job)
        lock.unlock()
        wake()
    }

    /// Asks the service thread to close every handle and stop after the jobs already queued; returns once
    /// it has (or at once when called by the loop's driver, which cannot wait for the end of its own drive).
    public func stop() {
        lock.lock()
        stopRequested = true
        lock.unlock()
        wake()
        if !isLoopThread { finished.wait() }
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeFDs.write, &byte, 1)  // a full pipe already wakes the thread
    }

    // MARK: - The service thread

    private func main() {
        while true {
            lock.lock()
            let pending = !jobs.isEmpty || stopRequested
            lock.unlock()
            let sinceDriven = Self.coarseNanoseconds() &- lastDriven.load(ordering: .relaxed)
            if pending {
                acquire()
            } else if driver.load(ordering: .relaxed) != 0 || sinceDriven < Self.callerGraceNanoseconds {
                // A caller drives the loop, or did a moment ago: it handles whatever is ready. Sleep
                // through its grace period, waking only for jobs or stop.
                let left = Self.callerGraceNanoseconds - min(sinceDriven, Self.callerGraceNanoseconds)
                waitForJobs(milliseconds: Int32(max(1, left / 1_000_000)))
                continue
            } else if ownership.try() {
                driver.store(UInt(pthread_self()), ordering: .relaxed)
            } else {
                continue  // a caller just took the loop
            }
            lock.lock()
            let batch = jobs
            jobs.removeAll()
            let stopping = stopRequested && batch.isEmpty
            lock.unlock()
            if stopping {
                closeEverything()
                release()
                break
            }
            for job in batch { job() }
            uv_run(loop, UV_RUN_NOWAIT)
            let timeout = uv_backend_timeout(loop)
            release()
            if batch.isEmpty { waitForEvents(milliseconds: timeout) }
        }
        thread = nil
        finished.signal()
    }

    /// Sleeps until the loop has something ready, a job or stop arrives, or `milliseconds` pass (-1: no limit).
    private func waitForEvents(milliseconds: Int32) {
        wait(on: [uv_backend_fd(loop), wakeFDs.read], milliseconds: milliseconds)
    }

    /// Sleeps until a job or stop arrives, or `milliseconds` pass.
    private func waitForJobs(milliseconds: Int32) {
        wait(on: [wakeFDs.read], milliseconds: milliseconds)
    }

    private func wait(on descriptors: [Int32], milliseconds: Int32) {
        var fds = descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        _ = poll(&fds, nfds_t(fds.count), milliseconds)
        if fds.last!.revents != 0 {
            var drain = [UInt8](repeating: 0, count: 64)
            while read(wakeFDs.read, &drain, drain.count) > 0 {}
        }
    }

    // MARK: - For the driver

    /// Turns the loop until `condition()` holds or `deadline` passes; returns whether the condition held.
    /// Only by the loop's driver, never from a libuv callback. Polls without blocking for
    /// `spinMicroseconds` before each sleep in epoll, and calls `prepareToBlock` right before it: when
    /// that returns false (something that epoll cannot see made progress), it checks again instead.
    @discardableResult
    package func run(until condition: () -> Bool, deadline: Deadline, prepareToBlock: () -> Bool = { true }) -> Bool {
        var armed = false
        defer { if armed { uv_timer_stop(wakeTimer) } }
        while !condition() {
            if deadline.hasPassed { return false }
            if spinMicroseconds > 0 && spin(until: condition) { return true }
            if let ms = deadline.remainingMilliseconds {
                uv_timer_start(wakeTimer, { _ in }, max(1, ms), 0)
                armed = true
            }
            if !prepareToBlock() {
                uv_run(loop, UV_RUN_NOWAIT)  // something moved outside libuv; keep its sockets served too
                continue
            }
            uv_run(loop, UV_RUN_ONCE)
        }
        return true
    }

    /// Polls the loop without blocking until `condition()` holds (true) or the spin budget is spent (false).
    private func spin(until condition: () -> Bool) -> Bool {
        let end = ContinuousClock.now + .microseconds(spinMicroseconds)
        repeat {
            uv_run(loop, UV_RUN_NOWAIT)
            if condition() { return true }
            if yieldWhileSpinning { sched_yield() }
        } while ContinuousClock.now < end
        return false
    }

    /// Registers `body` to run on every housekeeping tick; returns a token for `removeTick`.
    package func addTick(_ body: @escaping () -> Void) -> Int {
        nextTickID += 1
        tickHandlers.append((nextTickID, body))
        return nextTickID
    }

    package func removeTick(_ id: Int) {
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
        handle == wakeTimer.asHandle || handle == tickTimer.asHandle
    }

    private func noteOpenHandle(_ handle: UnsafeMutablePointer<uv_handle_t>) {
        if !isOwnHandle(handle) { leakedHandles.append(uvHandleTypeName(handle)) }
    }
}

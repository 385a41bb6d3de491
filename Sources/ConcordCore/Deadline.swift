/// A point on the monotonic clock after which a wait gives up.
///
/// Every wait in Concord takes one; `Deadline.never` exists for the few loops that are bounded by something
/// else (a peer's liveness timeout) and must say so at the call site.
public struct Deadline: Sendable, Comparable, CustomStringConvertible {
    public let instant: ContinuousClock.Instant?

    private init(instant: ContinuousClock.Instant?) { self.instant = instant }

    /// A deadline `seconds` from now.
    public static func after(seconds: Double) -> Deadline {
        Deadline(instant: ContinuousClock.now.advanced(by: .nanoseconds(Int64(max(0, seconds) * 1e9))))
    }

    /// No deadline: the caller bounds the wait some other way.
    public static let never = Deadline(instant: nil)

    /// Seconds left, never negative; `Double.infinity` for `.never`.
    public var remainingSeconds: Double {
        guard let instant else { return .infinity }
        let d = ContinuousClock.now.duration(to: instant)
        let s = Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
        return max(0, s)
    }

    /// Milliseconds left, rounded up and clamped for timers; `nil` for `.never`.
    public var remainingMilliseconds: UInt64? {
        guard instant != nil else { return nil }
        let s = remainingSeconds
        return UInt64(min(s * 1000, 1e12).rounded(.up))
    }

    public var hasPassed: Bool {
        guard let instant else { return false }
        return ContinuousClock.now >= instant
    }

    public static func < (a: Deadline, b: Deadline) -> Bool {
        switch (a.instant, b.instant) {
        case (let x?, let y?): return x < y
        case (_?, nil): return true
        default: return false
        }
    }

    /// The earlier of two deadlines.
    public static func earliest(_ a: Deadline, _ b: Deadline) -> Deadline { a < b ? a : b }

    public var description: String {
        instant == nil ? "never" : "in \(remainingSeconds) s"
    }
}

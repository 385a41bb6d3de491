import Foundation

/// Runs `body(rank)` for ranks 0..<n, each on its own thread, and returns their results in rank order.
///
/// Waits at most `seconds`; a rank still running then is reported as a failure (its thread is left
/// behind, which only happens when a test is already failing).
public func withRanks<T: Sendable>(
    _ n: Int, seconds: Double = 60, _ body: @escaping @Sendable (Int) throws -> T
) -> [Result<T, any Error>] {
    let box = ResultBox<T>(n)
    let group = DispatchGroup()
    for rank in 0..<n {
        group.enter()
        let thread = Thread {
            let result = Result { try body(rank) }
            box.set(rank, result)
            group.leave()
        }
        thread.stackSize = 8 << 20
        thread.start()
    }
    _ = group.wait(timeout: .now() + seconds)
    return box.results(timeoutSeconds: seconds)
}

/// A test failure for a rank that did not finish in time.
public struct RankTimedOut: Error, CustomStringConvertible {
    public let rank: Int
    public let seconds: Double
    public init(rank: Int, seconds: Double) {
        self.rank = rank
        self.seconds = seconds
    }
    public var description: String { "rank \(rank) did not finish within \(seconds) s" }
}

private final class ResultBox<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Result<T, any Error>?]
    init(_ n: Int) { values = Array(repeating: nil, count: n) }
    func set(_ i: Int, _ r: Result<T, any Error>) {
        lock.lock()
        values[i] = r
        lock.unlock()
    }
    func results(timeoutSeconds: Double) -> [Result<T, any Error>] {
        lock.lock()
        defer { lock.unlock() }
        return values.enumerated().map {
            $0.element ?? .failure(RankTimedOut(rank: $0.offset, seconds: timeoutSeconds))
        }
    }
}

/// A value distinct per rank and index whose sums over up to 64 ranks are exact in `Float`:
/// a multiple of 1/4 in [-512, 512). A chunk reduced or stored in the wrong place changes the result.
@inlinable
public func distinctValue(rank: Int, index: Int) -> Float {
    let mixed: Int = index &* 7 &+ rank &* 13 &+ (index >> 10) &* 3
    let centered: Int = mixed % 4093 - 2046
    return Float(centered) * 0.25
}

/// The exact all-reduce sum of `distinctValue` over `worldSize` ranks at `index`.
@inlinable
public func distinctSum(worldSize: Int, index: Int) -> Float {
    var s: Float = 0
    for r in 0..<worldSize { s += distinctValue(rank: r, index: index) }
    return s
}

import ConcordCore

/// Integer inputs spread over the whole range of every width, distinct per rank and index, so that
/// integer sums and products wrap around (which `Fixture`'s small values never do) and min/max see both
/// signs; the exact result of any reduction is `reduction(worldSize:index:op:value:)` of them.
public enum WrappingFixture {
    /// A 64-bit mix of `rank` and `index` (splitmix64); odd for `prod`, so products do not collapse to 0.
    public static func bits(rank: Int, index: Int, op: ReduceOp) -> UInt64 {
        var z = UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(truncatingIfNeeded: rank) &+ 1
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return op == .prod ? z | 1 : z
    }

    /// The input of `rank` at `index`: `bits` truncated to `T`.
    public static func value<T: TestElement & FixedWidthInteger>(_: T.Type, rank: Int, index: Int, op: ReduceOp) -> T {
        T(truncatingIfNeeded: bits(rank: rank, index: index, op: op))
    }
}

/// The reduction of `value(rank)` over ranks `0..<worldSize` as the collectives define it: combined in
/// rank order (wrapping for integers, exact for `Fixture` inputs in every order), then scaled by
/// 1/worldSize for avg.
public func reduction<T: TestElement>(worldSize: Int, op: ReduceOp, value: (_ rank: Int) -> T) -> T {
    var result = value(0)
    for rank in 1..<max(1, worldSize) { result = T.combine(result, value(rank), op.combining) }
    return op == .avg ? result.scaled(by: 1 / Double(worldSize)) : result
}

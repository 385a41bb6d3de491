// The one source of randomness in ConcordML: SplitMix64 (Steele, Lea and Flood, "Fast splittable
// pseudorandom number generators", OOPSLA 2014), the generator Java's SplittableRandom uses and the usual
// seeder of the xoshiro family. Everything random here (weights, digits, epoch orders) is a pure function
// of a seed, computed with integer arithmetic and IEEE operations only (no libm, no system entropy), so
// every process on every machine draws the same values.

/// A deterministic 64-bit generator: SplitMix64. Same seed, same sequence, on every platform.
///
/// The helpers (`nextFloat`, `nextBelow`, …) are defined here rather than taken from the standard library
/// (`Float.random(in:using:)`), whose algorithms are not promised to stay the same between Swift releases.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    /// The state: advanced by the golden-ratio increment at every draw.
    public var state: UInt64

    /// A generator starting from `seed`.
    /// - Parameter seed: any value; 0 is fine.
    @inlinable
    public init(seed: UInt64) { state = seed }

    /// A generator for one item of a family, e.g. image `index` of a data set drawn with `seed`: the
    /// streams of different `(seed, index)` pairs are unrelated, and each can be made without the others.
    /// - Parameters:
    ///   - seed: the family's seed.
    ///   - index: the item.
    @inlinable
    public init(seed: UInt64, index: UInt64) {
        state = SplitMix64.mix(seed ^ SplitMix64.mix(index &+ 0x632B_E59B_D9B4_E019))
    }

    /// The SplitMix64 finalizer (a bijection on 64 bits with good avalanche).
    /// - Parameter z: the value to mix.
    @inlinable
    public static func mix(_ z: UInt64) -> UInt64 {
        var z = z
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The next 64 random bits.
    @inlinable
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SplitMix64.mix(state)
    }

    /// A uniform value in [0, 1) with 24 random bits.
    @inlinable
    public mutating func nextFloat() -> Float { Float(next() >> 40) * 0x1p-24 }

    /// A uniform value in [`low`, `high`).
    /// - Parameters:
    ///   - low: the lower bound.
    ///   - high: the upper bound.
    @inlinable
    public mutating func nextFloat(_ low: Float, _ high: Float) -> Float { low + (high - low) * nextFloat() }

    /// A uniform value in [0, 1) with 53 random bits.
    @inlinable
    public mutating func nextDouble() -> Double { Double(next() >> 11) * 0x1p-53 }

    /// A value in 0..<`bound` (Lemire's multiply-shift: the high half of a 64 × 64-bit product; the bias is
    /// below 2⁻³² for the bounds used here).
    /// - Parameter bound: the exclusive upper bound, > 0.
    @inlinable
    public mutating func nextBelow(_ bound: Int) -> Int {
        precondition(bound > 0, "nextBelow: bound \(bound) must be positive")
        return Int(truncatingIfNeeded: next().multipliedFullWidth(by: UInt64(bound)).high)
    }

    /// True with probability `p`.
    /// - Parameter p: the probability, in 0...1.
    @inlinable
    public mutating func chance(_ p: Float) -> Bool { nextFloat() < p }
}

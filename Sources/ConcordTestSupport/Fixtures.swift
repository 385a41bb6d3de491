import ConcordCore

/// An element type the test fixtures can build from small integers and combine exactly as a collective
/// does (wrapping for integers, in float32 and rounded once for half types).
public protocol TestElement: ConcordElement, Equatable {
    /// The element for a small integer (truncating for narrow integer types).
    init(fixture value: Int)
    /// `op` applied to two elements, as the kernels compute it.
    static func combine(_ a: Self, _ b: Self, _ op: ReduceOp) -> Self
    /// `self * factor`, as `avg`'s final scaling computes it.
    func scaled(by factor: Double) -> Self
}

/// Inputs distinct per rank and index, chosen so every collective's result is exact in every dtype
/// (sums of up to 16 ranks stay within ±240, products are powers of two up to 2^6), and the exact
/// result each rank must hold. A chunk combined or stored in the wrong place changes the result.
public enum Fixture {
    /// The input of `rank` at `index` for a collective with `op`.
    public static func integer(rank: Int, index: Int, op: ReduceOp) -> Int {
        switch op {
        case .prod:
            if (index + rank) % 3 == 0 { return 2 }
            return (index &* 5 &+ rank) % 2 == 0 ? 1 : -1
        case .sum, .avg, .min, .max:
            let mixed: Int = index &* 7 &+ rank &* 13 &+ (index >> 10) &* 3
            return mixed % 31 - 15
        }
    }

    public static func value<T: TestElement>(_: T.Type, rank: Int, index: Int, op: ReduceOp) -> T {
        T(fixture: integer(rank: rank, index: index, op: op))
    }

    /// The reduction over ranks `0..<worldSize` at `index`.
    public static func expected<T: TestElement>(_: T.Type, worldSize: Int, index: Int, op: ReduceOp) -> T {
        var result = value(T.self, rank: 0, index: index, op: op)
        for rank in 1..<max(1, worldSize) {
            result = T.combine(result, value(T.self, rank: rank, index: index, op: op), op.combining)
        }
        return op == .avg ? result.scaled(by: 1 / Double(worldSize)) : result
    }
}

extension Float: TestElement {
    public init(fixture value: Int) { self = Float(value) }
    public static func combine(_ a: Float, _ b: Float, _ op: ReduceOp) -> Float { floatCombine(a, b, op) }
    public func scaled(by factor: Double) -> Float { self * Float(factor) }
}

extension Double: TestElement {
    public init(fixture value: Int) { self = Double(value) }
    public static func combine(_ a: Double, _ b: Double, _ op: ReduceOp) -> Double {
        switch op {
        case .sum, .avg: return a + b
        case .prod: return a * b
        case .min: return Swift.min(a, b)
        case .max: return Swift.max(a, b)
        }
    }
    public func scaled(by factor: Double) -> Double { self * factor }
}

extension Float16: TestElement {
    public init(fixture value: Int) { self = Float16(Float(value)) }
    public static func combine(_ a: Float16, _ b: Float16, _ op: ReduceOp) -> Float16 {
        Float16(floatCombine(Float(a), Float(b), op))
    }
    public func scaled(by factor: Double) -> Float16 { Float16(Float(self) * Float(factor)) }
}

extension BFloat16: TestElement {
    public init(fixture value: Int) { self = BFloat16(Float(value)) }
    public static func combine(_ a: BFloat16, _ b: BFloat16, _ op: ReduceOp) -> BFloat16 {
        BFloat16(floatCombine(a.floatValue, b.floatValue, op))
    }
    public func scaled(by factor: Double) -> BFloat16 { BFloat16(floatValue * Float(factor)) }
}

extension Int8: TestElement {}
extension UInt8: TestElement {}
extension Int32: TestElement {}
extension Int64: TestElement {}

extension TestElement where Self: FixedWidthInteger {
    public init(fixture value: Int) { self = Self(truncatingIfNeeded: value) }
    public static func combine(_ a: Self, _ b: Self, _ op: ReduceOp) -> Self {
        switch op {
        case .sum, .avg: return a &+ b
        case .prod: return a &* b
        case .min: return Swift.min(a, b)
        case .max: return Swift.max(a, b)
        }
    }
    public func scaled(by factor: Double) -> Self { preconditionFailure("avg is not defined on integers") }
}

private func floatCombine(_ a: Float, _ b: Float, _ op: ReduceOp) -> Float {
    switch op {
    case .sum, .avg: return a + b
    case .prod: return a * b
    case .min: return Swift.min(a, b)
    case .max: return Swift.max(a, b)
    }
}

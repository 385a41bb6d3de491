// Inputs for the kernel tests: deterministic pseudo-random values per type, mixed with the values where
// kernels go wrong (NaN, infinities, signed zeros, subnormals, overflow, rounding ties), and a comparison
// that is exact to the bit (except that any NaN matches any NaN).
import ConcordCore
import ConcordTestSupport

/// An element type under test: how to draw samples, and exact comparison.
protocol KernelTestElement: TestElement {
    /// A sample: one in eight is a special value, the others ordinary values of both signs.
    static func sample(_ random: inout SplitMix64) -> Self
    /// Equal bit patterns, or both NaN.
    func matches(_ other: Self) -> Bool
}

extension KernelTestElement where Self: FixedWidthInteger {
    static func sample(_ random: inout SplitMix64) -> Self {
        switch random.below(8) {
        case 0: return [Self.min, Self.max, 0, 1, Self.max &- 1, Self.min &+ 1][random.below(6)]
        default: return Self(truncatingIfNeeded: random.next())
        }
    }

    func matches(_ other: Self) -> Bool { self == other }
}

extension Int8: KernelTestElement {}
extension UInt8: KernelTestElement {}
extension Int32: KernelTestElement {}
extension Int64: KernelTestElement {}

/// A float32 sample: ordinary values with fractions over a range that makes sums round in every format,
/// or a special value.
func floatSample(_ random: inout SplitMix64, specials: [Float]) -> Float {
    if random.below(8) == 0 { return specials[random.below(specials.count)] }
    let mantissa = Float(random.below(1 << 20)) / Float(1 << 12)  // 0 ..< 256, 12 fraction bits
    return random.below(2) == 0 ? mantissa : -mantissa
}

extension Float: KernelTestElement {
    static let kernelTestSpecials: [Float] = [
        .nan, -.nan, .infinity, -.infinity, 0, -0.0, .leastNonzeroMagnitude, -.leastNormalMagnitude,
        .greatestFiniteMagnitude, 1e-40, 3.0e38,
    ]

    static func sample(_ random: inout SplitMix64) -> Float { floatSample(&random, specials: kernelTestSpecials) }

    func matches(_ other: Float) -> Bool { isNaN ? other.isNaN : bitPattern == other.bitPattern }
}

extension Double: KernelTestElement {
    static func sample(_ random: inout SplitMix64) -> Double {
        if random.below(8) == 0 {
            let specials: [Double] = [
                .nan, .infinity, -.infinity, 0, -0.0, .leastNonzeroMagnitude, .greatestFiniteMagnitude, 1e-310,
            ]
            return specials[random.below(specials.count)]
        }
        return Double(floatSample(&random, specials: [0])) + Double(random.below(1000)) * 1e-9
    }

    func matches(_ other: Double) -> Bool { isNaN ? other.isNaN : bitPattern == other.bitPattern }
}

extension Float16: KernelTestElement {
    static func sample(_ random: inout SplitMix64) -> Float16 {
        if random.below(8) == 0 {
            let specials: [Float16] = [
                .nan, .infinity, -.infinity, 0, -0.0, .leastNonzeroMagnitude, -.leastNormalMagnitude,
                .greatestFiniteMagnitude, 60000, -60000, Float16(bitPattern: 0x0155),
            ]
            return specials[random.below(specials.count)]
        }
        return Float16(floatSample(&random, specials: [0]))
    }

    func matches(_ other: Float16) -> Bool { isNaN ? other.isNaN : bitPattern == other.bitPattern }
}

extension BFloat16: KernelTestElement {
    static func sample(_ random: inout SplitMix64) -> BFloat16 {
        if random.below(8) == 0 {
            let specials: [UInt16] = [
                0x7FC0, 0xFFC1, 0x7F80, 0xFF80, 0, 0x8000, 0x0001, 0x8080, 0x7F7F, 0x0040, 0x807F,
            ]
            return BFloat16(bitPattern: specials[random.below(specials.count)])
        }
        return BFloat16(floatSample(&random, specials: [0]))
    }

    func matches(_ other: BFloat16) -> Bool {
        floatValue.isNaN ? other.floatValue.isNaN : bitPattern == other.bitPattern
    }
}

/// Lengths that meet every loop boundary of every vector width (8, 16, 32, 64 lanes): 0, 1, lanes − 1,
/// lanes, lanes + 1, a few vectors plus a tail, and a large odd count.
let kernelLengths = [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 200, 4099]

/// Byte offsets of the buffers from a 64-byte boundary: aligned, odd, and not a multiple of any element.
let kernelOffsets = [0, 1, 3, 6]

/// `count` samples of `T` starting at `seed`.
func samples<T: KernelTestElement>(_: T.Type, count: Int, seed: UInt64) -> [T] {
    var random = SplitMix64(seed: seed)
    return (0..<count).map { _ in T.sample(&random) }
}

/// A raw buffer of `bytes` bytes whose start is `offset` bytes past a 64-byte boundary, zero-filled; freed
/// by the caller's `defer`.
struct OffsetBuffer {
    let base: UnsafeMutableRawPointer
    let start: UnsafeMutableRawPointer

    init(bytes: Int, offset: Int) {
        base = .allocate(byteCount: bytes + offset + 64, alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0xA5, count: bytes + offset + 64)
        start = base + offset
    }

    /// Copies `values` in at `start` (unaligned stores).
    func write<T>(_ values: [T]) {
        for (i, v) in values.enumerated() {
            start.storeBytes(of: v, toByteOffset: i * MemoryLayout<T>.stride, as: T.self)
        }
    }

    /// `count` values read from `start` (unaligned loads).
    func read<T>(_: T.Type, count: Int) -> [T] {
        (0..<count).map { start.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.stride, as: T.self) }
    }

    /// The bytes before `start` and the 64 after `length` bytes from `start` are untouched.
    func guardsIntact(length: Int) -> Bool {
        (0..<(start - base)).allSatisfy { base.load(fromByteOffset: $0, as: UInt8.self) == 0xA5 }
            && (0..<64).allSatisfy { start.load(fromByteOffset: length + $0, as: UInt8.self) == 0xA5 }
    }

    func deallocate() { base.deallocate() }
}

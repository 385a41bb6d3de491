// Which implementation a kernel runs: the portable Swift SIMD loops, or hand-written AVX-512 BF16 code
// for bfloat16 when the CPU has it (chosen at run time, whatever the build's -march).
internal import CConcordCPU

/// The implementations the kernels choose between when a reducer or conversion is set up.
///
/// Both compute the same bits (the tests compare them on every op and on rounding edge cases); they
/// differ only in speed. Only bfloat16 has a second path: F16C already converts float16 in one
/// instruction, while AVX2 has none for bfloat16 and rounding by integer arithmetic costs ~10 instructions
/// per 8 lanes.
package enum KernelPath: Sendable, CaseIterable, CustomStringConvertible {
    /// Swift SIMD loops (SIMDLoops.swift), compiled for the build's target CPU.
    case portable
    /// bfloat16 through `vcvtneps2bf16` (CConcordCPU/BFloat16AVX512.c); other types as `portable`.
    case avx512BF16

    /// The fastest path this machine can run, decided once.
    package static let best: KernelPath = avx512BF16.isAvailable ? .avx512BF16 : .portable

    /// Whether this CPU (and OS) can run the path.
    package var isAvailable: Bool {
        switch self {
        case .portable: return true
        case .avx512BF16: return Self.avx512BF16Usable
        }
    }

    private static let avx512BF16Usable = concord_bf16_avx512_usable() != 0

    package var description: String {
        switch self {
        case .portable: return "portable"
        case .avx512BF16: return "avx512bf16"
        }
    }
}

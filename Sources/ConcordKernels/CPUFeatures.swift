// The Swift face of the CPU guard in CConcordCPU: which features this build assumes.
//
// The guard itself is a C constructor that runs before `main` (see Sources/CConcordCPU): a binary built
// with `make build ARCH=x86-64-v3` on a CPU without AVX2 prints one line naming the missing features and
// exits with status 1 instead of dying of SIGILL. This file only reports.
internal import CConcordCPU

/// The CPU features this build of Concord was compiled to use, and whether this CPU has them.
public enum CPUFeatures {
    /// The names of the features the compiler was allowed to use (`-Xcc -march=…`), e.g. `["sse3", …,
    /// "avx2", "fma", "f16c"]`; empty for a baseline x86-64 build or on other architectures. Calls
    /// `concord_cpu_required`.
    public static var required: [String] { names(concord_cpu_required()) }

    /// The required features this CPU (and OS) does not provide, counting those named in `CONCORD_CPU_HIDE`
    /// as absent. Empty in a running binary: the guard exits before `main` otherwise. Calls
    /// `concord_cpu_missing_now`.
    public static var missing: [String] { names(concord_cpu_missing_now()) }

    /// Feature names for the bits of a mask, in the guard's order.
    package static func names(_ mask: UInt64) -> [String] {
        (0..<UInt32(CONCORD_CPU_FEATURE_COUNT.rawValue)).compactMap { bit in
            guard mask & (1 << UInt64(bit)) != 0, let name = concord_cpu_feature_name(bit) else { return nil }
            return String(cString: name)
        }
    }
}

// CPUBinding.swift — giving each local rank its own CPUs, as mpirun does (`--bind`).
//
// Why: when two ranks of a job share a machine that has a CPU for each, the scheduler sometimes keeps
// both on one CPU: a rank that wakes its peer pulls it onto its own CPU (wake-affine placement), and the
// pair then takes turns on one core while the other idles. Measured with `concord-bench allreduce` at
// N = 2 over TCP: unbound, about one run in three had rows at 50–80 µs where 11–15 µs is normal (CPU
// time per call half the wall time: the two ranks sharing a core); bound, 6 runs of 6 were clean.
// Open MPI binds its ranks to cores by default for the same reason.
//
// The rule (`--bind auto`, the default): when this launcher starts K ≥ 2 processes and may run on at
// least K CPUs, process i gets the i-th of K equal, contiguous slices of those CPUs (2 ranks on 4 CPUs:
// {0,1} and {2,3}), so threads a rank starts itself stay on its slice. One process is never bound (it
// keeps the machine), and neither are more processes than CPUs (binding would only stack them).
// `--bind none` leaves placement to the scheduler. The mask is set on the spawning thread around
// posix_spawn, which the child inherits; the launcher's own mask is restored right after.

import ArgumentParser
import CConcordCPU

enum CPUBinding: String, CaseIterable {
    case auto
    case none

    /// The CPUs of each of `processes` processes, or nil when they should not be bound (see above).
    static func slices(processes: Int, cpus: [Int]) -> [[Int]]? {
        guard processes >= 2, processes <= cpus.count else { return nil }
        return (0..<processes).map { i in
            Array(cpus[(i * cpus.count / processes)..<((i + 1) * cpus.count / processes)])
        }
    }

    /// Bytes of a CPU mask: 1024 CPUs, glibc's `cpu_set_t`.
    private static let maskBytes = 128

    /// The CPUs the calling thread may run on, ascending.
    static func allowedCPUs() -> [Int] {
        var mask = [UInt8](repeating: 0, count: maskBytes)
        guard concord_thread_affinity_get(&mask, UInt(maskBytes)) == 0 else { return [] }
        return (0..<(maskBytes * 8)).filter { mask[$0 / 8] & (1 << ($0 % 8)) != 0 }
    }

    /// Runs `body` with the calling thread bound to `cpus` (nil or empty: unchanged), then restores its mask.
    static func withCPUs<T, E: Error>(_ cpus: [Int]?, _ body: () throws(E) -> T) throws(E) -> T {
        var saved = [UInt8](repeating: 0, count: maskBytes)
        guard let cpus, !cpus.isEmpty, concord_thread_affinity_get(&saved, UInt(maskBytes)) == 0 else {
            return try body()
        }
        var wanted = [UInt8](repeating: 0, count: maskBytes)
        for cpu in cpus where cpu < maskBytes * 8 { wanted[cpu / 8] |= UInt8(1 << (cpu % 8)) }
        let bound = concord_thread_affinity_set(wanted, UInt(maskBytes)) == 0
        defer { if bound { _ = concord_thread_affinity_set(saved, UInt(maskBytes)) } }
        return try body()
    }
}

extension CPUBinding: ExpressibleByArgument {}

// Shared fixtures: instants relative to one base, sample beacons and credentials (the seeded generator,
// SplitMix64, comes from ConcordTestSupport).

@testable import ConcordDiscovery

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// One base instant for all tests; times are given as seconds after it.
let baseInstant = ContinuousClock.now
func at(_ seconds: Double) -> ContinuousClock.Instant { baseInstant.advanced(by: .seconds(seconds)) }

let demoJob = JobID(jobName: "demo")
func secureCredentials(_ secret: String = "correct horse", job: String = "demo") -> JobCredentials {
    JobCredentials(jobName: job, authentication: .secret(try! JobSecret(string: secret)))
}
let insecureCredentials = JobCredentials(jobName: "demo", authentication: .insecure)

func node(_ n: UInt64) -> NodeID { NodeID(high: n << 32 | 0xC0FFEE, low: n &* 0x1000_0000_0001) }

func sampleBeacon(
    id: NodeID = node(7), sequence: UInt64 = 1, host: String = "192.168.1.20", label: String = "kitchen-ipad",
    flags: Beacon.Flags = []
) -> Beacon {
    Beacon(
        nodeID: id, host: host, port: 29_500,
        capabilities: .init(
            cores: 8, memoryBytes: 16 << 30, os: "linux", arch: "x86_64", reduceGigabytesPerSecond: 12.5, label: label),
        sequence: sequence, sentAtMilliseconds: 1_700_000_000_123, flags: flags)
}

/// A private temporary directory, removed by `cleanup()`.
struct TemporaryDirectory {
    let path: String
    init() {
        var g = SystemRandomNumberGenerator()
        path = "/tmp/concord-discovery-tests-\(getpid())-\(g.next() % 1_000_000)"
        mkdir(path, 0o700)
    }
    /// Writes `bytes` to `name` with permission bits `mode`; returns the path.
    func write(_ name: String, _ bytes: [UInt8], mode: mode_t = 0o600) -> String {
        let file = "\(path)/\(name)"
        let fd = open(file, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        precondition(fd >= 0, "cannot create \(file)")
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
        chmod(file, mode)
        return file
    }
    func cleanup() {
        if let dir = opendir(path) {
            while let entry = readdir(dir) {
                let name = withUnsafePointer(to: entry.pointee.d_name) {
                    $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
                }
                if name != "." && name != ".." { unlink("\(path)/\(name)") }
            }
            closedir(dir)
        }
        rmdir(path)
    }
}

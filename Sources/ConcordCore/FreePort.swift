// Free TCP ports for listeners whose number other processes learn before the listener exists: the
// rendezvous store of a `concord run` job, a discovery job's port, the masters of tests.
//
// Binding port 0 and closing the socket returns a port from the kernel's ephemeral range
// (`net.ipv4.ip_local_port_range`, 32768-60999 by default), the range the kernel also draws the local port
// of every outgoing connection from; one of those can take the port before its listener binds it. `make
// compare`, which starts hundreds of jobs back to back, lost a run that way ("address 0.0.0.0:47437 is
// already in use"). Below the range only an explicit bind can race, so ports come from there:
//
//   10000 ─────────── walk: random start, +1 per call, wrapping ─────────── low │ ephemeral range … high
//
// One process walks the range from a random start, one port further per call, so its concurrent callers
// (tests running in parallel) never get the same port, and two processes rarely walk in step. Each port is
// checked by binding it on every IPv4 address (a port free there is free on 127.0.0.1 too). When fewer than
// 1000 ports lie below the range, or 64 in a row are taken, the kernel chooses one as before.
import Glibc
import Synchronization

/// Free TCP ports chosen below the kernel's ephemeral range (see the file comment).
package enum FreePort {
    /// The lowest port handed out.
    package static let lowest = 10_000
    /// The next port this process tries (nil before the first call).
    private static let cursor = Mutex<Int?>(nil)

    /// A TCP port that is free on every IPv4 address right now, below the ephemeral range when there is room.
    ///
    /// - Parameter ephemeral: the kernel's ephemeral range (a parameter for tests).
    /// - Returns: a port in 1...65535.
    /// - Throws: `ConcordError.system` if socket(2) fails, or when nothing below the range is free and the
    ///   kernel cannot give a port either.
    package static func tcp(ephemeral: ClosedRange<Int>? = ephemeralRange()) throws(ConcordError) -> Int {
        let below = lowest..<(ephemeral?.lowerBound ?? 32_768)
        if below.count >= 1_000 {
            for _ in 0..<64 {
                let port = cursor.withLock { next in
                    var port = next ?? Int.random(in: below)
                    if !below.contains(port) { port = below.lowerBound }
                    next = port + 1
                    return port
                }
                if (try? bindAnyAddress(port: port)) != nil { return port }
            }
        }
        return try bindAnyAddress(port: 0)
    }

    /// The kernel's ephemeral port range, or nil where it cannot be read.
    package static func ephemeralRange() -> ClosedRange<Int>? {
        let fd = open("/proc/sys/net/ipv4/ip_local_port_range", O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 64)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        let bounds = bytes[..<n].split(whereSeparator: { $0 == 9 || $0 == 10 || $0 == 32 })
            .compactMap { Int(String(decoding: $0, as: UTF8.self)) }
        guard bounds.count == 2, bounds[0] <= bounds[1] else { return nil }
        return bounds[0]...bounds[1]
    }

    /// Binds a TCP socket to `port` (0: the kernel chooses) on every IPv4 address and closes it.
    /// - Returns: the port bound.
    private static func bindAnyAddress(port: Int) throws(ConcordError) -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw failure("socket") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = INADDR_ANY
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let call = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw -> String? in
                if bind(fd, raw, length) != 0 { return "bind" }
                if getsockname(fd, raw, &length) != 0 { return "getsockname" }
                return nil
            }
        }
        if let call { throw failure(call) }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    private static func failure(_ call: String) -> ConcordError {
        let code = errno
        return .system(rank: -1, call: call, code: code, message: String(cString: strerror(code)))
    }
}

// Congestion control for TCP links whose two ends are on one machine.
//
// Such a link (loopback, or this machine's own address) never loses a packet and has no queue to fill, so
// congestion control has nothing to find out; it can only hold the sender back. BBR, the default on some
// systems (this one among them), does: it paces every socket with a timer and bounds what is in flight by
// a model of a path whose round trip is a few microseconds (cwnd of 15-38 segments here). Much of each
// frame then leaves from pacing timers and from ACK processing on the other CPU instead of from the
// writing call; loopback queues packets on the CPU that sends them, so the two CPUs deliver segments out
// of order, and the receiver's SACKs trigger spurious retransmissions.
//
//   measured, N = 2, 1500 all-reduces of 4 MiB:  BBR: 573 retransmitted segments (443 D-SACKed:
//   spurious), 723 out-of-order queueings; reno: 4 and 0. Local timer interrupts at N = 4, 16 MiB: about
//   9000 per CPU and second with BBR (35000 pacing timers a second: each is a VM exit here), 370 with reno.
//   time per call, TCP, 2 cores (A/B of CONCORD_LOCAL_CONGESTION=system against the default, 5 rounds,
//   medians; `concord run -n N -- concord-bench allreduce`):
//                    N = 2: 1 MiB   4 MiB   16 MiB   64 MiB     N = 4: 1 MiB   4 MiB   16 MiB   64 MiB
//     BBR (system)        408 µs   1925     9191     38.5 ms           1537 µs  8090    31.6 ms  158 ms
//     reno                371      1469     5917     29.9              1082     3790    16.7      90
//   4 to 256 KiB: the same within the noise (9 rounds at 64 and 256 KiB, N = 2).
//
// So links to ranks on this machine use reno, whose window grows until the receive buffer bounds it (cubic was
// worse than BBR: its delay-based slow-start exit leaves the window small on microsecond round trips; N = 4, 1 MiB:
// 2.2 ms against 1.5). With cubic as the system's default, reno gains little (N = 4, 4 MiB: 4.6 -> 4.0 ms; the rest
// within the noise). The choice is made before the socket connects or listens (accepted sockets inherit the
// listener's): switched on an established connection, a socket that ran BBR keeps pacing (about 2800 pacing timers
// a second remained; 64 MiB at N = 4 was 15% slower). Links to other machines keep the system's choice (an accepted
// one is switched back to it): there congestion is real, and BBR may be what the network needs. "This machine" is
// decided by address: loopback, or an address of one of its interfaces (the namespaces of the lab are separate
// machines). Every user may set reno (Linux always allows it); a name the system refuses leaves the socket as it
// was. `CONCORD_LOCAL_CONGESTION` chooses another one, or `system`.
import Foundation

package enum LinkTuning {
    /// The congestion control of TCP links between two ranks on this machine, unless configured otherwise.
    package static let defaultSameMachineCongestionControl = "reno"

    /// The congestion controls this kernel offers (`net.ipv4.tcp_available_congestion_control`); empty
    /// when it cannot be read.
    package static var availableCongestionControls: [String] { words(in: "tcp_available_congestion_control") }

    /// The system's default congestion control (`net.ipv4.tcp_congestion_control`), if it can be read.
    package static var systemCongestionControl: String? { words(in: "tcp_congestion_control").first }

    private static func words(in setting: String) -> [String] {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/" + setting, encoding: .utf8)) ?? ""
        return text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).map(String.init)
    }

    /// Whether `host` (a numeric address) belongs to this machine: a loopback address or the address of
    /// one of its interfaces (as this network namespace sees them: the namespaces of the lab are machines).
    package static func isThisMachine(_ host: String) -> Bool {
        let lowered = host.lowercased()
        if lowered.hasPrefix("127.") || lowered == "::1" || lowered.hasPrefix("::ffff:127.") { return true }
        return interfaceAddresses().contains(lowered)
    }

    /// The numeric addresses of this machine's interfaces.
    private static func interfaceAddresses() -> Set<String> {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var result = Set<String>()
        var cursor = list
        while let entry = cursor {
            if let address = entry.pointee.ifa_addr {
                let family = Int32(address.pointee.sa_family)
                let length = family == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
                if family == AF_INET || family == AF_INET6 {
                    result.insert(SocketAddress(copying: address, length: length).host.lowercased())
                }
            }
            cursor = entry.pointee.ifa_next
        }
        return result
    }

    /// Sets the congestion control of TCP socket `fd` (set before it connects or listens, it also keeps
    /// the socket from ever running the system's default). Returns false for an empty name or one the
    /// system refuses; the socket then keeps what it had.
    @discardableResult
    package static func setCongestionControl(_ name: String, on fd: Int32) -> Bool {
        guard !name.isEmpty else { return false }
        return name.withCString { setsockopt(fd, Int32(IPPROTO_TCP), TCP_CONGESTION, $0, socklen_t(strlen($0))) } == 0
    }

    /// The congestion control socket `fd` uses, or nil when it cannot be read.
    package static func congestionControl(of fd: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: 32)
        var length = socklen_t(buffer.count)
        guard getsockopt(fd, Int32(IPPROTO_TCP), TCP_CONGESTION, &buffer, &length) == 0 else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

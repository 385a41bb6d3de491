// Which network interface a node advertises in its beacons, chosen the way NCCL users already expect.
//
// Filter syntax (NCCL_SOCKET_IFNAME; `CONCORD_SOCKET_IFNAME` in Concord):
//
//   "eth0"          interfaces whose name starts with eth0 (eth0, eth0.5, eth01)
//   "=eth0"         exactly eth0
//   "^lo,docker"    every interface except those starting with lo or docker
//   "^=lo"          every interface except exactly lo
//   "eth,wlan"      comma lists: any prefix matches; spaces around items and empty items are ignored
//   ""              every interface
//
// The "^" and "=" marks apply to the whole list and come in that order, as in NCCL.
//
// Choice of the advertised address among the interfaces that pass the filter and are up:
//   1. the interface of the default route (the one that reaches the rest of the network), unless loopback;
//   2. any other non-loopback interface;
//   3. loopback, when that is all there is (a single machine: everything still works locally).
// Within a tier: IPv4 before IPv6, global before link-local (fe80::/10, 169.254/16), then input order.
// `NetworkInterface.host()` lists this host's interfaces with getifaddrs(3); everything else is pure.

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// One address of one network interface.
public struct NetworkInterface: Sendable, Equatable, CustomStringConvertible {
    /// The interface name, e.g. "eth0", "wlan0", "lo".
    public var name: String
    /// The numeric address, e.g. "192.168.1.20" or "fe80::1%eth0".
    public var address: String
    /// True for the loopback interface (IFF_LOOPBACK).
    public var isLoopback: Bool
    /// True when the interface is administratively up (IFF_UP).
    public var isUp: Bool

    /// An interface address from its fields.
    public init(name: String, address: String, isLoopback: Bool, isUp: Bool) {
        self.name = name
        self.address = address
        self.isLoopback = isLoopback
        self.isUp = isUp
    }

    /// True for an IPv6 address.
    public var isIPv6: Bool { address.contains(":") }

    /// True for an IPv6 link-local (fe80::/10) or IPv4 link-local (169.254.0.0/16) address, which other
    /// hosts can reach only with a zone or on one link.
    public var isLinkLocal: Bool {
        let a = address.lowercased()
        return a.hasPrefix("fe8") || a.hasPrefix("fe9") || a.hasPrefix("fea") || a.hasPrefix("feb")
            || a.hasPrefix("169.254.")
    }

    /// "eth0 192.168.1.20 (up)"
    public var description: String {
        "\(name) \(address) (\(isUp ? "up" : "down")\(isLoopback ? ", loopback" : ""))"
    }

    /// This host's interface addresses (IPv4 and IPv6), in the order getifaddrs(3) reports them.
    ///
    /// - Throws: `DiscoveryError.system` when getifaddrs fails.
    public static func host() throws -> [NetworkInterface] {
        var list: UnsafeMutablePointer<ifaddrs>? = nil
        guard getifaddrs(&list) == 0 else {
            let code = errno
            throw DiscoveryError.system(call: "getifaddrs", code: code, message: String(cString: strerror(code)))
        }
        defer { freeifaddrs(list) }
        var result: [NetworkInterface] = []
        var cursor = list
        while let entry = cursor?.pointee {
            cursor = entry.ifa_next
            guard let sa = entry.ifa_addr else { continue }
            let family = Int32(sa.pointee.sa_family)
            guard family == AF_INET || family == AF_INET6 else { continue }
            let length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
            var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            guard getnameinfo(sa, length, &text, socklen_t(text.count), nil, 0, NI_NUMERICHOST) == 0 else { continue }
            let flags = Int32(bitPattern: entry.ifa_flags)
            result.append(
                NetworkInterface(
                    name: String(cString: entry.ifa_name),
                    address: String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
                    isLoopback: flags & Int32(IFF_LOOPBACK) != 0, isUp: flags & Int32(IFF_UP) != 0))
        }
        return result
    }

    /// The interface of the IPv4 default route with the lowest metric, from the text of /proc/net/route;
    /// nil when there is none.
    public static func defaultRouteInterface(procNetRoute text: String) -> String? {
        var best: (name: String, metric: Int)? = nil
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count >= 8, f[1] == "00000000", f[7] == "00000000", let flags = Int(f[3], radix: 16),
                flags & 1 != 0, let metric = Int(f[6])
            else { continue }
            if let b = best, b.metric <= metric { continue }
            best = (String(f[0]), metric)
        }
        return best?.name
    }
}

/// A list of interface names to use or to avoid, in NCCL_SOCKET_IFNAME syntax (see the file comment).
public struct InterfaceFilter: Sendable, Equatable, CustomStringConvertible {
    /// True for "^...": the listed names are excluded instead of selected.
    public let excludes: Bool
    /// True for "=..." : names match exactly instead of by prefix.
    public let exact: Bool
    /// The names or prefixes listed.
    public let names: [String]
    private let spec: String

    /// Every interface.
    public static let any = InterfaceFilter("")

    /// A filter from its text; "" (or only spaces) selects every interface.
    public init(_ spec: String) {
        self.spec = spec
        var rest = Substring(spec.trimmingSpaces())
        excludes = rest.first == "^"
        if excludes { rest = rest.dropFirst() }
        exact = rest.first == "="
        if exact { rest = rest.dropFirst() }
        names = rest.split(separator: ",").map { String($0).trimmingSpaces() }.filter { !$0.isEmpty }
    }

    /// True when the interface called `name` passes the filter.
    public func matches(_ name: String) -> Bool {
        if spec.trimmingSpaces().isEmpty { return true }
        let listed = names.contains { exact ? name == $0 : name.hasPrefix($0) }
        return listed != excludes
    }

    /// The interfaces whose names pass the filter, in their order.
    public func apply(_ interfaces: [NetworkInterface]) -> [NetworkInterface] {
        interfaces.filter { matches($0.name) }
    }

    /// The filter as written.
    public var description: String { spec.isEmpty ? "(any interface)" : spec }
}

/// The interface address a node should advertise: among `interfaces` that pass `filter` and are up, the
/// default-route interface, else another non-loopback one, else loopback (see the file comment for the
/// order within each tier). Nil when no interface passes.
public func chooseAdvertisedAddress(
    interfaces: [NetworkInterface], filter: InterfaceFilter = .any, defaultRouteInterface: String?
) -> NetworkInterface? {
    let candidates = filter.apply(interfaces).enumerated().filter { $0.element.isUp }
    func tier(_ i: NetworkInterface) -> Int {
        if i.isLoopback { return 2 }
        return i.name == defaultRouteInterface ? 0 : 1
    }
    func family(_ i: NetworkInterface) -> Int { (i.isIPv6 ? 1 : 0) + (i.isLinkLocal ? 2 : 0) }
    return candidates.min {
        (tier($0.element), family($0.element), $0.offset) < (tier($1.element), family($1.element), $1.offset)
    }?.element
}

extension String {
    fileprivate func trimmingSpaces() -> String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" { s = s.dropLast() }
        return String(s)
    }
}

import Testing

@testable import ConcordDiscovery

@Suite("Interface filter and advertised address")
struct InterfaceFilterTests {
    let names = ["eth0", "eth0.5", "eth1", "wlan0", "lo", "docker0", "dockerbr", "enp3s0"]

    func selected(_ spec: String) -> [String] { names.filter(InterfaceFilter(spec).matches) }

    @Test("NCCL_SOCKET_IFNAME syntax: prefixes, exact names, exclusions, lists")
    func syntax() {
        #expect(selected("") == names)
        #expect(selected("  ") == names)
        #expect(selected("eth") == ["eth0", "eth0.5", "eth1"])
        #expect(selected("eth0") == ["eth0", "eth0.5"])
        #expect(selected("=eth0") == ["eth0"])
        #expect(selected("eth0,wlan") == ["eth0", "eth0.5", "wlan0"])
        #expect(selected(" eth1 , , wlan0 ") == ["eth1", "wlan0"])
        #expect(selected("^lo,docker") == ["eth0", "eth0.5", "eth1", "wlan0", "enp3s0"])
        #expect(selected("^=docker0") == ["eth0", "eth0.5", "eth1", "wlan0", "lo", "dockerbr", "enp3s0"])
        #expect(selected("^=lo") == names.filter { $0 != "lo" })
        #expect(selected("^") == names)
        #expect(selected("=") == [])
        #expect(selected("nothing") == [])
        let f = InterfaceFilter("^=lo,docker0")
        #expect(f.excludes && f.exact && f.names == ["lo", "docker0"] && f.description == "^=lo,docker0")
    }

    static let lo = NetworkInterface(name: "lo", address: "127.0.0.1", isLoopback: true, isUp: true)
    static let lo6 = NetworkInterface(name: "lo", address: "::1", isLoopback: true, isUp: true)
    static let eth0 = NetworkInterface(name: "eth0", address: "192.168.1.20", isLoopback: false, isUp: true)
    static let eth0v6 = NetworkInterface(name: "eth0", address: "fe80::1%eth0", isLoopback: false, isUp: true)
    static let wlan0 = NetworkInterface(name: "wlan0", address: "10.0.0.7", isLoopback: false, isUp: true)
    static let wlan0v6 = NetworkInterface(name: "wlan0", address: "2001:db8::7", isLoopback: false, isUp: true)
    static let docker = NetworkInterface(name: "docker0", address: "172.17.0.1", isLoopback: false, isUp: true)
    static let down = NetworkInterface(name: "eth1", address: "192.168.2.2", isLoopback: false, isUp: false)

    @Test("the default-route interface wins, then other non-loopback ones, then loopback")
    func choice() {
        let all = [Self.lo, Self.lo6, Self.eth0v6, Self.down, Self.docker, Self.eth0, Self.wlan0v6, Self.wlan0]
        #expect(chooseAdvertisedAddress(interfaces: all, defaultRouteInterface: "wlan0") == Self.wlan0)
        #expect(chooseAdvertisedAddress(interfaces: all, defaultRouteInterface: "eth0") == Self.eth0, "IPv4 first")
        #expect(chooseAdvertisedAddress(interfaces: all, defaultRouteInterface: nil) == Self.docker, "input order")
        #expect(
            chooseAdvertisedAddress(interfaces: all, filter: InterfaceFilter("^docker"), defaultRouteInterface: nil)
                == Self.eth0)
        #expect(
            chooseAdvertisedAddress(interfaces: all, filter: InterfaceFilter("=eth1"), defaultRouteInterface: nil)
                == nil, "a down interface is never advertised")
        #expect(
            chooseAdvertisedAddress(interfaces: all, filter: InterfaceFilter("lo"), defaultRouteInterface: "eth0")
                == Self.lo, "the filter can ask for loopback")
        #expect(
            chooseAdvertisedAddress(interfaces: [Self.lo6, Self.lo, Self.down], defaultRouteInterface: nil) == Self.lo,
            "only loopback left: use it, IPv4 first")
        #expect(
            chooseAdvertisedAddress(interfaces: [Self.eth0v6, Self.wlan0v6], defaultRouteInterface: nil)
                == Self.wlan0v6,
            "global IPv6 before link-local")
        #expect(chooseAdvertisedAddress(interfaces: [], defaultRouteInterface: "eth0") == nil)
    }

    @Test("the default route is read from /proc/net/route text, lowest metric first")
    func defaultRoute() {
        let text = """
            Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
            eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
            eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
            """
        #expect(NetworkInterface.defaultRouteInterface(procNetRoute: text) == "eth0")
        #expect(NetworkInterface.defaultRouteInterface(procNetRoute: "Iface\tDestination\n") == nil)
        #expect(NetworkInterface.defaultRouteInterface(procNetRoute: "") == nil)
    }

    @Test("this host's interfaces include an up loopback address")
    func host() throws {
        let interfaces = try NetworkInterface.host()
        #expect(interfaces.contains { $0.isLoopback && $0.isUp && $0.address == "127.0.0.1" })
        #expect(chooseAdvertisedAddress(interfaces: interfaces, defaultRouteInterface: nil) != nil)
    }
}

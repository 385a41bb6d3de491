import ConcordCore
import Glibc
import Testing

@Suite("Free ports")
struct FreePortTests {
    /// Whether `port` can be bound on every IPv4 address now.
    func bindable(_ port: Int) -> Bool {
        guard let socket = listen(port) else { return false }
        close(socket.fd)
        return true
    }

    @Test("ports come from below the ephemeral range, free, and never twice in a row within a process")
    func belowTheRange() throws {
        let ephemeral = 40_000...60_999
        let ports = try (0..<200).map { _ in try FreePort.tcp(ephemeral: ephemeral) }
        #expect(ports.allSatisfy { (FreePort.lowest..<ephemeral.lowerBound).contains($0) }, "\(ports)")
        #expect(Set(ports).count == ports.count, "a port was handed out twice: \(ports)")
        #expect(ports.allSatisfy(bindable))
    }

    @Test("concurrent callers get different ports")
    func concurrent() async throws {
        let ports = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<32 { group.addTask { try FreePort.tcp() } }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(Set(ports).count == 32, "\(ports.sorted())")
    }

    @Test("ports taken by listeners are skipped")
    func skipsTaken() throws {
        let ephemeral = 40_000...60_999
        let first = try FreePort.tcp(ephemeral: ephemeral)
        // Hold the ports the walk reaches next (other tests may walk it too), then ask again.
        let listeners = (1...16).map { first + $0 }.filter { $0 < ephemeral.lowerBound }.compactMap(listen)
        defer { listeners.forEach { close($0.fd) } }
        try #require(!listeners.isEmpty, "every port after \(first) is in use by another process")
        let next = try FreePort.tcp(ephemeral: ephemeral)
        #expect(!listeners.map(\.port).contains(next), "\(next) is held by this test")
        #expect(bindable(next))
    }

    /// A listening socket on `port` of every IPv4 address, or nil when the port is taken.
    func listen(_ port: Int) -> (fd: Int32, port: Int)? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = INADDR_ANY
        let ok = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 && Glibc.listen(fd, 1) == 0
            }
        }
        if ok { return (fd, port) }
        close(fd)
        return nil
    }

    @Test("with too little room below the range the kernel chooses, from its range")
    func noRoom() throws {
        let port = try FreePort.tcp(ephemeral: 10_500...60_999)
        let kernels = try #require(FreePort.ephemeralRange())
        #expect(kernels.contains(port), "\(port) outside \(kernels)")
    }

    @Test("the ephemeral range is read from the kernel")
    func ephemeralRange() throws {
        let range = try #require(FreePort.ephemeralRange())
        #expect(range.lowerBound >= 1 && range.upperBound <= 65_535)
    }
}

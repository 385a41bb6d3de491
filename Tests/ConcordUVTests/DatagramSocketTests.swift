// DatagramSocket on loopback: multicast between sockets sharing a port, broadcast with and without
// SO_BROADCAST, a datagram to a closed port, and the errors a user sees for a port held without sharing
// or a group joined on a wrong interface.
//
// Every test runs on an event loop of its own, on the test's thread (`loop.drive`), gives each wait a
// deadline in seconds, closes its sockets and checks that the loop closed with no handle left open. Beacon
// ports are random (`freeUDPPort`), so these tests never hear the beacons of tests running beside them.

import ConcordCore
import ConcordTestSupport
import Foundation
import Testing

@testable import ConcordUV

/// A UDP port on 0.0.0.0 that was free a moment ago (bound to port 0, then closed).
func freeUDPPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    precondition(fd >= 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = INADDR_ANY
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    precondition(ok, "cannot bind a UDP port: \(String(cString: strerror(errno)))")
    return Int(UInt16(bigEndian: address.sin_port))
}

@Suite("DatagramSocket on loopback", .timeLimit(.minutes(1)))
struct DatagramSocketTests {
    static let group = "239.255.77.77"

    /// Runs `body` as the driver of a fresh loop, then stops the loop and checks that no handle leaked.
    func withLoop(_ body: (EventLoop) throws -> Void) throws {
        let loop = try EventLoop(name: "datagram-test")
        defer {
            loop.stop()
            #expect(loop.closedCleanly, "handles left open: \(loop.leakedHandles)")
        }
        try loop.drive { try body(loop) }
    }

    /// A socket bound to 0.0.0.0:`port` (shared), joined to the group on loopback, sending through loopback.
    func member(_ loop: EventLoop, port: Int) throws -> DatagramSocket {
        let socket = try DatagramSocket(loop: loop)
        try socket.bind(host: "0.0.0.0", port: port, reuseAddress: true)
        try socket.joinMulticast(group: Self.group, interfaceAddress: "127.0.0.1")
        try socket.setMulticastInterface("127.0.0.1")
        try socket.setMulticastTTL(1)
        try socket.setMulticastLoop(true)
        return socket
    }

    @Test("two sockets sharing a port hear each other's multicast datagrams")
    func multicastOnLoopback() throws {
        try withLoop { loop in
            let port = freeUDPPort()
            let a = try member(loop, port: port)
            let b = try member(loop, port: port)
            defer {
                a.close()
                b.close()
            }
            #expect(a.localPort == port && b.localPort == port)
            var heardByA: [(String, DatagramAddress)] = []
            var heardByB: [(String, DatagramAddress)] = []
            try a.startReceiving { bytes, from in heardByA.append((String(decoding: bytes, as: UTF8.self), from)) }
            try b.startReceiving { bytes, from in heardByB.append((String(decoding: bytes, as: UTF8.self), from)) }
            let destination = try DatagramAddress(host: Self.group, port: port)
            try a.send(Array("from a".utf8), to: destination)
            try b.send(Array("from b".utf8), to: destination)
            let heard = loop.run(
                until: { heardByA.contains { $0.0 == "from b" } && heardByB.contains { $0.0 == "from a" } },
                deadline: .after(seconds: 3))
            #expect(heard, "a heard \(heardByA.map(\.0)), b heard \(heardByB.map(\.0))")
            let source = heardByB.first { $0.0 == "from a" }?.1
            #expect(source?.host == "127.0.0.1" && source?.port == port)
        }
    }

    @Test("a datagram to a closed port neither throws nor stops the socket from working")
    func closedPort() throws {
        try withLoop { loop in
            let sender = try DatagramSocket(loop: loop)
            let receiver = try DatagramSocket(loop: loop)
            defer {
                sender.close()
                receiver.close()
            }
            try sender.bind(host: "127.0.0.1", port: 0, reuseAddress: false)
            try receiver.bind(host: "127.0.0.1", port: 0, reuseAddress: false)
            var received: [[UInt8]] = []
            var failures: [ConcordError] = []
            sender.onSendError = { failures.append($0) }
            try receiver.startReceiving { bytes, _ in received.append(bytes) }
            let nobody = try DatagramAddress(host: "127.0.0.1", port: freeUDPPort())
            for _ in 0..<3 { try sender.send([1, 2, 3], to: nobody) }
            _ = loop.run(until: { false }, deadline: .after(seconds: 0.1))  // let any ICMP error come back
            try sender.send([4, 5], to: DatagramAddress(host: "127.0.0.1", port: receiver.localPort))
            #expect(loop.run(until: { received == [[4, 5]] }, deadline: .after(seconds: 3)), "got \(received)")
            #expect(failures.isEmpty, "\(failures)")
        }
    }

    @Test("broadcast to 127.255.255.255 fails with advice until SO_BROADCAST is set, then arrives")
    func broadcast() throws {
        try withLoop { loop in
            let port = freeUDPPort()
            let a = try member(loop, port: port)
            let b = try member(loop, port: port)
            defer {
                a.close()
                b.close()
            }
            var heard: [[UInt8]] = []
            try b.startReceiving { bytes, _ in heard.append(bytes) }
            let broadcast = try DatagramAddress(host: "127.255.255.255", port: port)
            do {
                try a.send([7], to: broadcast)
                Issue.record("a broadcast without SO_BROADCAST was accepted")
            } catch let error as ConcordError {
                #expect(error.description.contains("SO_BROADCAST"), "\(error)")
                #expect(error.description.contains("127.255.255.255:\(port)"), "\(error)")
            }
            try a.setBroadcast(true)
            try a.send([8], to: broadcast)
            #expect(loop.run(until: { heard.contains([8]) }, deadline: .after(seconds: 3)), "got \(heard)")
        }
    }

    @Test("a port held without sharing gives addressInUse naming the port; shared binds succeed")
    func bindConflict() throws {
        try withLoop { loop in
            let port = freeUDPPort()
            let holder = try DatagramSocket(loop: loop)
            let second = try DatagramSocket(loop: loop)
            defer {
                holder.close()
                second.close()
            }
            try holder.bind(host: "127.0.0.1", port: port, reuseAddress: false)
            do {
                try second.bind(host: "127.0.0.1", port: port, reuseAddress: false)
                Issue.record("a second bind of UDP port \(port) without reuse succeeded")
            } catch let error as ConcordError {
                guard case .addressInUse(_, let address, let hint) = error else {
                    Issue.record("expected addressInUse, got \(error)")
                    return
                }
                #expect(address == "UDP 127.0.0.1:\(port)")
                #expect(hint.contains("reuseAddress"), "\(hint)")
            }

            let sharedPort = freeUDPPort()
            let first = try DatagramSocket(loop: loop)
            let other = try DatagramSocket(loop: loop)
            defer {
                first.close()
                other.close()
            }
            try first.bind(host: "0.0.0.0", port: sharedPort, reuseAddress: true)
            try other.bind(host: "0.0.0.0", port: sharedPort, reuseAddress: true)
            #expect(first.localPort == sharedPort && other.localPort == sharedPort)
        }
    }

    @Test("joining on an address this host lacks, or a group that is not multicast, says so")
    func joinErrors() throws {
        try withLoop { loop in
            let socket = try DatagramSocket(loop: loop)
            defer { socket.close() }
            try socket.bind(host: "0.0.0.0", port: 0, reuseAddress: true)
            do {
                try socket.joinMulticast(group: Self.group, interfaceAddress: "198.51.100.7")
                Issue.record("joining on 198.51.100.7 succeeded")
            } catch let error as ConcordError {
                #expect(error.description.contains("198.51.100.7"), "\(error)")
                #expect(error.description.contains(Self.group), "\(error)")
            }
            do {
                try socket.joinMulticast(group: "10.1.2.3", interfaceAddress: "127.0.0.1")
                Issue.record("joining the unicast address 10.1.2.3 as a group succeeded")
            } catch let error as ConcordError {
                #expect(error.description.contains("not a multicast group address"), "\(error)")
            }
        }
    }
}

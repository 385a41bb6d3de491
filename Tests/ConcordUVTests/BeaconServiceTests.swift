// BeaconService on loopback: several services in this process, each with its own event loop, share one
// random beacon port (SO_REUSEADDR) and advertise distinct TCP ports. They must see each other and not
// themselves; a service with another secret must stay invisible and be counted as bad MAC; another job's
// beacons must be ignored; a stopped node must disappear after the TTL (or at once when it says it is
// leaving). The last test runs the built `concord peers` against two live services and checks its table.
//
// Every wait has a deadline in seconds; every service is closed and its loop checked for leaked handles.

import Concord
import ConcordTestSupport
import Foundation
import Synchronization
import Testing

/// Collects the log lines of one service.
final class LogLines: Sendable {
    private let lines = Mutex<[String]>([])
    var all: [String] { lines.withLock { $0 } }
    var sink: @Sendable (String) -> Void { { line in self.lines.withLock { $0.append(line) } } }
}

@Suite("BeaconService on loopback", .timeLimit(.minutes(1)))
struct BeaconServiceTests {
    /// A service of job `job` on `port`, advertising 127.0.0.1:`tcpPort`, sending through loopback.
    static func service(
        job: String = "beacon-test", secret: String?, port: Int, tcpPort: Int = freeTCPPort(), label: String,
        ttl: Double = 3, log: LogLines = LogLines()
    ) throws -> BeaconService {
        let authentication: Authentication = try secret.map { .secret(try JobSecret(string: $0)) } ?? .insecure
        return try BeaconService(
            credentials: JobCredentials(jobName: job, authentication: authentication), nodeID: .random(),
            advertisement: .init(
                host: "127.0.0.1", port: UInt16(tcpPort),
                capabilities: BeaconService.localCapabilities(label: label, reduceGigabytesPerSecond: 12.5)),
            channel: .init(port: port, interfaceAddress: "127.0.0.1"), ttl: ttl, log: log.sink)
    }

    /// Closes every service (announcing departure) and checks that each loop closed with no handle left.
    static func closeAll(_ services: [BeaconService]) {
        for service in services {
            service.close()
            #expect(service.loopClosedCleanly == true, "the loop of node \(service.nodeID) leaked a handle")
        }
    }

    @Test("three services sharing a beacon port see the other two and not themselves within 3 s")
    func threeSeeEachOther() async throws {
        let port = freeUDPPort()
        let tcpPorts = [freeTCPPort(), freeTCPPort(), freeTCPPort()]
        let services = try (0..<3).map {
            try Self.service(secret: "s1", port: port, tcpPort: tcpPorts[$0], label: "node-\($0)")
        }
        defer { Self.closeAll(services) }
        #expect(services[0].channel.broadcastAddress == "127.255.255.255")
        let deadline = Deadline.after(seconds: 3)
        for service in services {
            let seen = await service.waitForPeers(count: 2, deadline: deadline)
            #expect(seen, "node \(service.nodeID.shortDescription) saw \(service.peers.map(\.nodeID.shortDescription))")
        }
        for (i, service) in services.enumerated() {
            let snapshot = service.snapshot
            let expected = Set(services.indices.filter { $0 != i }.map { services[$0].nodeID })
            #expect(Set(snapshot.peers.map(\.nodeID)) == expected)
            #expect(snapshot.ownBeaconsHeard > 0, "own beacons should come back and be ignored")
            #expect(snapshot.dropped.isEmpty, "\(snapshot.dropped)")
            for peer in snapshot.peers {
                let j = services.firstIndex { $0.nodeID == peer.nodeID }!
                #expect(peer.host == "127.0.0.1" && Int(peer.port) == tcpPorts[j])
                #expect(peer.beacon.capabilities.label == "node-\(j)")
                #expect(peer.beacon.capabilities.reduceGigabytesPerSecond == 12.5)
            }
        }
    }

    @Test("another secret is invisible and counted as bad MAC; another job and no secret are dropped")
    func strangersAreDropped() async throws {
        let port = freeUDPPort()
        let logA = LogLines()
        let a = try Self.service(secret: "right secret", port: port, label: "a", log: logA)
        let b = try Self.service(secret: "right secret", port: port, label: "b")
        let logC = LogLines()
        let c = try Self.service(secret: "wrong secret", port: port, label: "c", log: logC)
        let d = try Self.service(job: "another-job", secret: "right secret", port: port, label: "d")
        let e = try Self.service(secret: nil, port: port, label: "e")
        let services = [a, b, c, d, e]
        defer { Self.closeAll(services) }

        let settled = await a.waitUntil(deadline: .after(seconds: 3)) {
            $0.peers.count == 1 && $0.badMACNodes.contains(c.nodeID) && $0.dropped(.otherJob) > 0
                && $0.dropped(.authenticationMismatch) > 0
        }
        #expect(settled, "a: peers \(a.peers.map(\.nodeID.shortDescription)), dropped \(a.snapshot.dropped)")
        try await Task.sleep(for: .milliseconds(600))  // a few more rounds: nobody sneaks in later
        let snapshot = a.snapshot
        #expect(snapshot.peers.map(\.nodeID) == [b.nodeID])
        #expect(snapshot.badMACNodes == [c.nodeID])
        #expect(snapshot.dropped(.badMAC) >= 4, "\(snapshot.dropped)")
        #expect(c.peers.isEmpty && c.snapshot.badMACNodes == [a.nodeID, b.nodeID])
        #expect(d.peers.isEmpty && d.snapshot.dropped(.otherJob) > 0)
        #expect(e.peers.isEmpty && e.snapshot.dropped(.authenticationMismatch) > 0)
        // One line per reason and source (every source here is 127.0.0.1), and never a secret.
        let lines = logA.all
        #expect(lines.filter { $0.contains("(bad MAC)") }.count == 1, "\(lines)")
        #expect(lines.filter { $0.contains("(other job)") }.count == 1, "\(lines)")
        #expect(lines.filter { $0.contains("(secret vs no secret)") }.count == 1, "\(lines)")
        for line in lines + logC.all {
            #expect(!line.contains("right secret") && !line.contains("wrong secret"))
        }
    }

    @Test("a node that stops without a word disappears after the TTL, not before")
    func expiry() async throws {
        let port = freeUDPPort()
        let a = try Self.service(secret: "s", port: port, label: "a", ttl: 1)
        let b = try Self.service(secret: "s", port: port, label: "b", ttl: 1)
        defer { Self.closeAll([a, b]) }
        #expect(await a.waitForPeers(count: 1, deadline: .after(seconds: 3)))
        b.close(announcingDeparture: false)
        let stopped = ContinuousClock.now
        #expect(a.peers.map(\.nodeID) == [b.nodeID], "b must stay until its TTL runs out")
        let gone = await a.waitUntil(deadline: .after(seconds: 3)) { $0.peers.isEmpty }
        let elapsed = ContinuousClock.now - stopped
        #expect(gone, "b still listed \(elapsed) after it stopped")
        #expect(elapsed >= .milliseconds(600), "b vanished after \(elapsed), before its 1 s TTL could run out")
    }

    @Test("a node that announces its departure disappears at once")
    func departure() async throws {
        let port = freeUDPPort()
        let a = try Self.service(secret: "s", port: port, label: "a", ttl: 10)
        let b = try Self.service(secret: "s", port: port, label: "b", ttl: 10)
        defer { Self.closeAll([a, b]) }
        #expect(a.waitForPeersBlocking(count: 1, deadline: .after(seconds: 3)))
        b.close()
        #expect(a.waitUntilBlocking(deadline: .after(seconds: 2)) { $0.peers.isEmpty }, "b still listed")
    }

    @Test("concord peers lists two live services with their RTT, and counts a third one's bad MAC")
    func peersCommandTable() async throws {
        let concord = try #require(builtExecutable("concord"), "build the concord executable first")
        let port = freeUDPPort()
        let (listenerA, tcpA) = RawSocket.listen()
        let (listenerB, tcpB) = RawSocket.listen()
        defer {
            listenerA.close()
            listenerB.close()
        }
        let job = "peers-table-test"
        let a = try Self.service(job: job, secret: "table secret", port: port, tcpPort: tcpA, label: "alpha")
        let b = try Self.service(job: job, secret: "table secret", port: port, tcpPort: tcpB, label: "beta")
        let c = try Self.service(job: job, secret: "other secret", port: port, label: "gamma")
        defer { Self.closeAll([a, b, c]) }
        #expect(await a.waitForPeers(count: 1, deadline: .after(seconds: 3)))

        let run = try ChildProcess(
            concord, ["peers", "--job", job, "--seconds", "1", "--port", String(port)],
            environment: ["CONCORD_SECRET": "table secret"])
        #expect(await run.exited(within: 10), "concord peers did not exit")
        print(run.stdout)
        #expect(run.exitStatus == 0, "stderr: \(run.stderr)")
        let lines = run.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("# concord peers: listened 1 s on 239.255.77.77:\(port)") == true)
        #expect(lines.contains { $0.hasPrefix("job ") && $0.contains("rtt ms") })
        for (service, tcp, label) in [(a, tcpA, "alpha"), (b, tcpB, "beta")] {
            let row = lines.first { $0.contains(service.nodeID.shortDescription) }
            #expect(row?.contains("127.0.0.1:\(tcp)") == true, "\(lines)")
            #expect(row?.contains(label) == true && row?.contains("linux/") == true && row?.contains("12.5") == true)
            let rtt = row?.split(separator: " ").last.flatMap { Double($0) }
            #expect(rtt != nil && rtt! < 1000, "no RTT in \(row ?? "nil")")
        }
        #expect(!lines.contains { $0.contains(c.nodeID.shortDescription) })
        #expect(lines.contains { $0.hasPrefix("# dropped for a bad MAC: ") && $0.contains("from 1 node") }, "\(lines)")
        #expect(!run.stdout.contains("table secret") && !run.stderr.contains("table secret"))
    }

    @Test("concord peers without --job lists insecure jobs, and tagged ones only with their secret")
    func peersCommandEveryJob() async throws {
        let concord = try #require(builtExecutable("concord"), "build the concord executable first")
        let port = freeUDPPort()
        let open = try Self.service(job: "open-job", secret: nil, port: port, label: "open")
        let closed = try Self.service(job: "closed-job", secret: "closed secret", port: port, label: "closed")
        defer { Self.closeAll([open, closed]) }
        #expect(await open.waitUntil(deadline: .after(seconds: 3)) { $0.dropped(.otherJob) > 0 })

        let insecure = try ChildProcess(concord, ["peers", "--seconds", "1", "--port", String(port), "--insecure"])
        #expect(await insecure.exited(within: 10), "concord peers did not exit")
        #expect(insecure.exitStatus == 0, "stderr: \(insecure.stderr)")
        #expect(insecure.stdout.contains("every job, insecure beacons only"), "\(insecure.stdout)")
        #expect(insecure.stdout.contains(open.nodeID.shortDescription), "\(insecure.stdout)")
        #expect(insecure.stdout.contains(JobID(jobName: "open-job").description))
        #expect(!insecure.stdout.contains(closed.nodeID.shortDescription), "\(insecure.stdout)")
        #expect(insecure.stdout.contains("tagged with a job secret: give it with --secret-file"), "\(insecure.stdout)")

        let withSecret = try ChildProcess(
            concord, ["peers", "--seconds", "1", "--port", String(port)],
            environment: ["CONCORD_SECRET": "closed secret"])
        #expect(await withSecret.exited(within: 10), "concord peers did not exit")
        print(withSecret.stdout)
        #expect(withSecret.exitStatus == 0, "stderr: \(withSecret.stderr)")
        #expect(withSecret.stdout.contains("verified with the job secret from CONCORD_SECRET"))
        #expect(withSecret.stdout.contains("# 2 nodes in 2 jobs"), "\(withSecret.stdout)")
        for service in [open, closed] {
            #expect(withSecret.stdout.contains(service.nodeID.shortDescription), "\(withSecret.stdout)")
        }
        #expect(!withSecret.stdout.contains("closed secret"))
    }
}

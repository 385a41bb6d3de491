import ConcordTestSupport
import Foundation
import Testing

/// `concord run --discover` on loopback: members with no addresses find each other, agree, and run.
@Suite("Discovery on loopback", .serialized, .timeLimit(.minutes(5)))
struct DiscoveryTests {
    static func executable(_ name: String) throws -> String {
        try #require(builtExecutable(name), "\(name) is not built (run swift build first)")
    }

    /// One `concord run --discover` member running a small checked all-reduce.
    static func member(
        job: String, port: Int, secret: String, size: [String] = ["--world-size", "3"], extra: [String] = []
    ) throws -> ChildProcess {
        try ChildProcess(
            try executable("concord"),
            ["run", "--discover", "--job", job, "--discovery-timeout", "30"] + size + extra + [
                "--", try executable("concord-bench"), "allreduce", "-b", "4K", "-e", "1M", "-f", "16", "-n", "2",
                "-w", "1", "-c", "1",
            ], environment: ["CONCORD_SECRET": secret, "CONCORD_DISCOVERY_PORT": "\(port)"])
    }

    @Test(
        "three members with no addresses form one ring, agree on it, and all-reduce correctly; a fourth with another secret is kept out"
    )
    func threeMembers() throws {
        let port = freeTCPPort()
        let job = "discovery-test-\(port)"
        let stranger = try Self.member(job: job, port: port, secret: "not the secret")
        defer { stranger.kill() }
        let members = try (0..<3).map { _ in try Self.member(job: job, port: port, secret: "the secret") }
        defer { members.forEach { $0.kill() } }
        for (i, member) in members.enumerated() {
            #expect(member.wait(seconds: 90), "member \(i) did not finish")
            #expect(member.exitStatus == 0, "member \(i): \(member.stderr)")
        }
        let outputs = members.map(\.stdout)
        let rings = outputs.map { $0.split(separator: "\n").first { $0.hasPrefix("concord: ring:") } }
        #expect(rings.allSatisfy { $0 != nil && $0 == rings[0] }, "\(rings)")
        let agreed = outputs.map { $0.split(separator: "\n").first { $0.contains("members agreed") } }
        #expect(agreed.allSatisfy { $0 != nil && $0 == agreed[0] && $0!.contains("3 members") }, "\(agreed)")
        #expect(outputs.filter { $0.contains("# Out of bounds values : 0 OK") }.count == 1, "rank 0 checks")
        // The stranger never joined; its beacons were refused for their MAC.
        #expect(
            members.contains { $0.stderr.contains("bad MAC") || $0.stderr.contains("bad mac") },
            "\(members.map(\.stderr))")
        stranger.kill()
        #expect(!stranger.stdout.contains("members agreed"), "\(stranger.stdout)")
    }

    @Test("with --peers (and beacons that cannot meet: one beacon port each) the listed members still agree and run")
    func staticPeers() throws {
        let ports = (0..<3).map { _ in freeTCPPort() }
        let list = ports.map { "127.0.0.1:\($0)" }.joined(separator: ",")
        let members = try (0..<3).map { i in
            try Self.member(job: "static-\(ports[0])", port: freeTCPPort(), secret: "s", extra: ["--peers", list])
        }
        defer { members.forEach { $0.kill() } }
        for (i, member) in members.enumerated() {
            #expect(member.wait(seconds: 90), "member \(i) did not finish")
            #expect(member.exitStatus == 0, "member \(i): \(member.stderr)")
        }
        let outputs = members.map(\.stdout)
        #expect(outputs.allSatisfy { $0.contains("3 members agreed") }, "\(outputs)")
        #expect(outputs.filter { $0.contains("# Out of bounds values : 0 OK") }.count == 1)
        // Each member took one listed address as its own.
        for port in ports { #expect(outputs.filter { $0.contains("127.0.0.1:\(port) (this one)") }.count == 1) }
    }

    @Test("--min-size 2 with no world size: two members start once the view has settled")
    func minimumSize() throws {
        let port = freeTCPPort()
        let members = try (0..<2).map { _ in
            try Self.member(
                job: "min-size-\(port)", port: port, secret: "s", size: ["--min-size", "2", "--settle", "1"])
        }
        defer { members.forEach { $0.kill() } }
        for (i, member) in members.enumerated() {
            #expect(member.wait(seconds: 90), "member \(i) did not finish")
            #expect(
                member.exitStatus == 0 && member.stdout.contains("2 members agreed"), "member \(i): \(member.stderr)")
        }
    }

    @Test("concord run -n 3 --discover runs three local members that discover each other")
    func localMembers() throws {
        let port = freeTCPPort()
        let child = try Self.member(job: "discovery-local-\(port)", port: port, secret: "s", extra: ["-n", "3"])
        defer { child.kill() }
        #expect(child.wait(seconds: 90), "the job did not finish")
        #expect(child.exitStatus == 0, "\(child.stderr)")
        #expect(child.stdout.contains("3 members agreed") && child.stdout.contains("# Out of bounds values : 0 OK"))
    }

    @Test("--discover without a secret or --insecure is refused with advice")
    func needsSecret() throws {
        let child = try ChildProcess(
            try Self.executable("concord"), ["run", "--discover", "--world-size", "2", "--", "true"],
            environment: ["CONCORD_SECRET": ""])
        defer { child.kill() }
        #expect(child.wait(seconds: 30))
        #expect(child.exitStatus == 64 && child.stderr.contains("--secret-file"), "\(child.stderr)")
    }
}

// PeersCommandTests.swift — `concord peers` as a user runs it, with nobody announcing on its port: it
// must listen for the time asked, say that nobody was heard, and exit 0; bad flags exit 64 with a
// message; the help names the flags and the environment. (The table with live nodes is checked in
// Tests/ConcordUVTests/BeaconServiceTests.swift, which can start beacon services in-process.)
//
// The beacon port is a random free port, so beacons of tests running beside this one are never heard.

import ConcordTestSupport
import Foundation
import Testing

@Suite("concord peers", .timeLimit(.minutes(1)))
struct PeersCommandTests {
    @Test("with nobody on the network it says so after --seconds and exits 0")
    func nobodyHeard() async throws {
        let port = freeTCPPort()  // as a UDP port number: random, and not the port of any beacon test
        let result = try await LaunchedConcord(["peers", "--seconds", "1", "--port", String(port)]).wait(
            timeout: .seconds(15))
        #expect(result.exitStatus == 0, "stderr: \(result.stderr)")
        #expect(result.elapsed >= .milliseconds(900), "returned after \(result.elapsed), before listening 1 s")
        #expect(result.stdoutLines.first?.hasPrefix("# concord peers: listened 1 s on 239.255.77.77:\(port)") == true)
        #expect(
            result.stdoutLines.contains { $0.hasPrefix("# nobody heard: no beacon arrived within 1 s") },
            "\(result.stdout)")
        #expect(!result.stdout.contains("rtt ms"))
    }

    @Test("contradicting or malformed flags exit 64 and say what is wrong")
    func badFlags() async throws {
        let cases: [([String], String)] = [
            (["peers", "--insecure", "--secret-file", "/nonexistent"], "--secret-file and --insecure"),
            (["peers", "--group", "10.1.2.3"], "multicast"),
            (["peers", "--port", "0"], "--port"),
            (["peers", "--seconds", "0"], "--seconds"),
        ]
        for (arguments, phrase) in cases {
            let result = try await LaunchedConcord(arguments).wait(timeout: .seconds(15))
            #expect(result.exitStatus == 64, "\(arguments): \(result.stderr)")
            #expect(result.stderr.contains(phrase), "\(arguments): \(result.stderr)")
        }
    }

    @Test("concord peers --help names the flags, the secret's sources and the defaults")
    func help() async throws {
        let result = try await runConcord(["peers", "--help"])
        #expect(result.exitStatus == 0)
        for phrase in [
            "--job", "--seconds", "--secret-file", "--insecure", "--group", "--port", "CONCORD_SECRET",
            "CONCORD_DISCOVERY_GROUP", "CONCORD_DISCOVERY_PORT", "239.255.77.77", "29577", "bad MAC",
        ] {
            #expect(result.stdout.contains(phrase), "concord peers --help lacks \"\(phrase)\"")
        }
    }
}

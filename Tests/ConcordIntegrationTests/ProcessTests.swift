import ConcordTestSupport
import Foundation
import Testing

/// Real processes: the built `concord` launcher and `concord-bench`.
@Suite("Multi-process runs", .serialized, .timeLimit(.minutes(10)))
struct ProcessTests {
    static func executable(_ name: String) throws -> String {
        try #require(builtExecutable(name), "\(name) is not built (run swift build first)")
    }

    @Test("concord run -n 4 -- concord-bench allreduce -b 4 -e 4M -f 4 -c 1 finds no wrong value")
    func benchUnderLauncher() throws {
        let child = try ChildProcess(
            try Self.executable("concord"),
            [
                "run", "-n", "4", "--", try Self.executable("concord-bench"), "allreduce", "-b", "4", "-e", "4M", "-f",
                "4", "-n", "2", "-w", "1", "-c", "1",
            ])
        defer { child.kill() }
        #expect(child.wait(seconds: 240), "the run did not finish in 240 s")
        let out = child.stdout
        #expect(child.exitStatus == 0, "stderr: \(child.stderr)")
        #expect(out.contains("# Out of bounds values : 0 OK"), "\(out)")
        #expect(out.contains("# Avg bus bandwidth"))
        let rows = out.split(separator: "\n").filter { $0.hasPrefix("[rank 0]") && !$0.contains("#") }
        #expect(rows.count == 11, "sizes 4 B ... 4 MiB by 4: \(rows)")
        for row in rows {
            let columns = row.split(separator: " ")
            #expect(columns.last == "0", "a row with wrong values: \(row)")
        }
    }

    @Test(
        "a 64 MiB all-reduce grows a rank by its buffer and a bounded constant, over TCP and shared memory",
        arguments: ["tcp", "shm"])
    func peakMemory(_ medium: String) throws {
        let child = try ChildProcess(
            try Self.executable("concord"),
            [
                "run", "-n", "2", "--", try Self.executable("concord-bench"), "allreduce", "-b", "64M", "-e", "64M",
                "-n", "2", "-w", "1", "-c", "0",
            ], environment: ["CONCORD_TRANSPORT": medium])
        defer { child.kill() }
        #expect(child.wait(seconds: 240), "the run did not finish in 240 s")
        #expect(child.exitStatus == 0, "stderr: \(child.stderr)")
        // "# Max RSS : 86.4 MiB (largest rank; 22.0 MiB before the sweep, largest row's buffers 64.0 MiB)"
        let line = try #require(child.stdout.split(separator: "\n").first { $0.contains("# Max RSS") })
        let figures = line.split(whereSeparator: { " (;,".contains($0) }).compactMap { Double($0) }
        try #require(figures.count == 3, "\(line)")
        let (peak, before, buffers) = (figures[0], figures[1], figures[2])
        #expect(buffers == 64, "\(line)")
        // Segments in flight, the 64 KiB reduce scratch, two 4 MiB shared rings (shm), the runtime's pools:
        // 24 MiB is far below the 64 MiB a second copy of the buffer would add.
        #expect(peak - before - buffers < 24, "\(line)")
    }

    @Test(
        "every concord-bench collective, every dtype and op, in and out of place, finds no wrong value",
        arguments: ["allreduce", "reducescatter", "allgather", "broadcast", "reduce"])
    func everyCollective(_ collective: String) throws {
        for placement in [[], ["--out-of-place", "-r", "2"]] {
            let child = try ChildProcess(
                try Self.executable("concord"),
                [
                    "run", "-n", "3", "--", try Self.executable("concord-bench"), collective, "-b", "6", "-e", "24K",
                    "-f", "64", "-n", "1", "-w", "0", "-c", "1", "-d", "all", "-o", "all", "--segment", "4K",
                ] + placement)
            defer { child.kill() }
            #expect(child.wait(seconds: 240), "\(collective) did not finish in 240 s")
            #expect(child.exitStatus == 0, "\(collective) \(placement): \(child.stderr)")
            let out = child.stdout
            #expect(out.contains("# Out of bounds values : 0 OK"), "\(out)")
            let rows = out.split(separator: "\n").filter { $0.hasPrefix("[rank 0]") && !$0.contains("#") }
            // 8 dtypes; reducing collectives sweep 5 ops on floating types and 4 on integers; 3 sizes each.
            let reducing = collective != "allgather" && collective != "broadcast"
            #expect(rows.count == (reducing ? 4 * 5 + 4 * 4 : 8) * 3, "\(rows.count) rows: \(out)")
        }
    }

    @Test("concord-bench's help names every subcommand and the nccl-tests flags")
    func benchHelp() throws {
        let bench = try Self.executable("concord-bench")
        let root = try ChildProcess(bench, ["--help"])
        #expect(root.wait(seconds: 30))
        for name in ["allreduce", "reducescatter", "allgather", "broadcast", "reduce", "rawring", "kernels", "busbw"] {
            #expect(root.stdout.contains(name), "\(name) missing from: \(root.stdout)")
        }
        let sub = try ChildProcess(bench, ["allreduce", "--help"])
        #expect(sub.wait(seconds: 30))
        for flag in [
            "-b <", "-e <", "-f <", "-n <", "-w <", "-c <", "-d <", "-o <", "--json", "--raw-ring", "--out-of-place",
        ] {
            #expect(sub.stdout.contains(flag), "\(flag) missing from: \(sub.stdout)")
        }
    }

    @Test("--json writes one row per size with the table's fields, the raw rings' rates included")
    func jsonRows() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(
            "concord-rows-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: path) }
        let child = try ChildProcess(
            try Self.executable("concord"),
            [
                "run", "-n", "2", "--", try Self.executable("concord-bench"), "allreduce", "-b", "1K", "-e", "64K",
                "-f", "8",
                "-n", "1", "-w", "0", "-d", "int32", "-o", "max", "--json", path.path, "--raw-ring", "--raw-ring-cold",
            ])
        defer { child.kill() }
        #expect(child.wait(seconds: 120))
        #expect(child.exitStatus == 0, "\(child.stderr)")
        let rows = try #require(JSONSerialization.jsonObject(with: Data(contentsOf: path)) as? [[String: Any]])
        #expect(rows.count == 3)
        #expect(rows.map { $0["bytes"] as? Int } == [1024, 8192, 65536])
        for row in rows {
            #expect(row["type"] as? String == "int32" && row["redop"] as? String == "max" && row["ranks"] as? Int == 2)
            #expect(row["wrong"] as? Int == 0 && (row["busbw"] as? Double ?? -1) >= 0)
            #expect((row["rawBusbw"] as? Double ?? 0) > 0 && (row["rawColdBusbw"] as? Double ?? 0) > 0, "\(row)")
        }
    }

    /// Starts 3 bench ranks in a long all-reduce loop, lets the ring run, does `harm` to rank 1, and
    /// checks that ranks 0 and 2 exit non-zero within `seconds`, naming themselves and rank 1.
    func survivorsName(_ harm: (ChildProcess) -> Void, within seconds: Double, peerTimeout: Int) throws {
        let bench = try Self.executable("concord-bench")
        let port = freeTCPPort()
        let ranks = try (0..<3).map { rank in
            try ChildProcess(
                bench, ["allreduce", "-b", "1M", "-e", "1M", "-n", "100000", "-w", "0", "-c", "0"],
                environment: [
                    "CONCORD_RANK": "\(rank)", "CONCORD_WORLD_SIZE": "3", "CONCORD_MASTER_PORT": "\(port)",
                    "CONCORD_PEER_TIMEOUT": "\(peerTimeout)", "CONCORD_SECRET": "survivors-\(port)",
                ])
        }
        defer { ranks.forEach { $0.kill() } }
        Thread.sleep(forTimeInterval: 3)
        #expect(ranks.allSatisfy { $0.process.isRunning }, "a rank ended early: \(ranks.map(\.stderr))")
        harm(ranks[1])
        let start = Date()
        for rank in [0, 2] {
            #expect(
                ranks[rank].wait(seconds: seconds + 5),
                "rank \(rank) still runs \(seconds + 5) s after rank 1 was harmed")
        }
        #expect(Date().timeIntervalSince(start) < seconds)
        for rank in [0, 2] {
            let status = ranks[rank].exitStatus
            #expect(
                status != nil && status != 0,
                "rank \(rank) status \(String(describing: status)), signal \(String(describing: ranks[rank].terminatingSignal))"
            )
            let err = ranks[rank].stderr
            #expect(err.contains("rank \(rank)") && err.contains("rank 1"), "rank \(rank) said: \(err)")
        }
    }

    @Test("when one of 3 ranks is killed mid-run, the others exit non-zero naming it, within seconds")
    func killedRank() throws {
        try survivorsName({ $0.kill() }, within: 5, peerTimeout: 10)
    }

    @Test("when one of 3 ranks hangs (SIGSTOP), the others fail after the peer timeout naming it")
    func hungRank() throws {
        try survivorsName({ $0.signal(SIGSTOP) }, within: 2 + 6, peerTimeout: 2)
    }
}

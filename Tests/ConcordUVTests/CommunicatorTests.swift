import Concord
import ConcordTestSupport
import ConcordUV
import Foundation
import Testing

/// Ranks as threads of this process, each with its own Communicator over loopback TCP.
@Suite("Communicator over libuv TCP", .serialized, .timeLimit(.minutes(5)))
struct CommunicatorTests {
    static func configuration(
        rank: Int, worldSize: Int, port: Int, joinTimeout: Double = 20, medium: LinkMedium = .auto
    ) -> Configuration {
        var configuration = Configuration(
            rank: rank, worldSize: worldSize, masterPort: port, joinTimeout: joinTimeout, peerTimeout: 5)
        configuration.linkMedium = medium
        configuration.authentication = .secret(try! JobSecret(string: "communicator-tests"))
        return configuration
    }

    /// Tries to join; returns the error's text, or "joined" (after shutting the communicator down).
    static func joinOutcome(
        rank: Int, worldSize: Int, port: Int, joinTimeout: Double = 20,
        authentication: Authentication? = .secret(try! JobSecret(string: "communicator-tests"))
    ) -> String {
        do {
            var configuration = configuration(rank: rank, worldSize: worldSize, port: port, joinTimeout: joinTimeout)
            configuration.authentication = authentication
            let comm = try Communicator(blockingConfiguration: configuration)
            comm.shutdownBlocking()
            return "joined"
        } catch {
            return "\(error)"
        }
    }

    @Test(
        "all-reduce gives every rank the exact sum and closes without leaking a handle, over TCP and shared memory",
        arguments: [LinkMedium.tcp, .shm], [2, 3, 4])
    func allReduce(medium: LinkMedium, ranks n: Int) throws {
        let port = freeTCPPort()
        let results = withRanks(n, seconds: 60) { rank -> Int in
            let comm = try Communicator(
                blockingConfiguration: Self.configuration(rank: rank, worldSize: n, port: port, medium: medium))
            #expect(comm.rank == rank && comm.worldSize == n)
            #expect(comm.linkMedia == (medium.rawValue, medium.rawValue))
            comm.segmentBytes = 4096
            var wrong = 0
            for count in [0, 1, n - 1, n + 1, 100_003] {
                var data = (0..<count).map { distinctValue(rank: rank, index: $0) }
                try comm.allReduceBlocking(&data)
                wrong += (0..<count).filter { data[$0] != distinctSum(worldSize: n, index: $0) }.count
            }
            try comm.barrierBlocking()
            comm.shutdownBlocking()
            #expect(comm.closedCleanly, "rank \(rank) leaked \(comm.leakedHandles)")
            return wrong
        }
        for (rank, result) in results.enumerated() {
            #expect((try? result.get()) == 0, "rank \(rank): \(result)")
        }
    }

    @Test(
        "a rank that is late to a collective does not make its peer's data pile up in memory",
        arguments: [LinkMedium.tcp, .shm])
    func boundedMemory(medium: LinkMedium) {
        let port = freeTCPPort()
        let count = 64 << 20  // 256 MiB of floats per rank: rank 0 sends 128 MiB before rank 1 asks for any
        let resident = ResidentMemory()
        let results = withRanks(2, seconds: 60) { rank -> Int in
            let comm = try Communicator(
                blockingConfiguration: Self.configuration(rank: rank, worldSize: 2, port: port, medium: medium))
            defer { comm.shutdownBlocking() }
            var data = [Float](repeating: Float(rank + 1), count: count)
            try comm.barrierBlocking()
            if rank == 1 {
                resident.takeBaseline()
                Thread.sleep(forTimeInterval: 1.5)  // rank 0 is already streaming its chunk to us
                resident.sampleGrowth()
            }
            try comm.allReduceBlocking(&data)
            return data.allSatisfy { $0 == 3 } ? 0 : 1
        }
        #expect(results.compactMap { try? $0.get() } == [0, 0], "\(results)")
        // Both buffers were allocated and touched before the barrier; the frames waiting for rank 1 stay
        // in the kernel's socket buffers (TCP flow control) or fill the 4 MiB shared ring and stall rank 0,
        // so this process barely grows meanwhile.
        // The bound leaves room for test suites that run in parallel in this process; piling up would
        // add the whole 128 MiB chunk.
        #expect(resident.growth < 48 << 20, "grew by \(resident.growth >> 20) MiB while rank 1 was late")
    }

    @Test("the async API reduces arrays and raw buffers")
    func asyncAPI() async throws {
        let port = freeTCPPort()
        try await withThrowingTaskGroup(of: [Float].self) { group in
            for rank in 0..<2 {
                group.addTask {
                    let comm = try await Communicator(
                        configuration: Self.configuration(rank: rank, worldSize: 2, port: port))
                    var data = (0..<1001).map { distinctValue(rank: rank, index: $0) }
                    try await comm.allReduce(&data, op: .sum)
                    nonisolated(unsafe) let raw = UnsafeMutableBufferPointer<Float>.allocate(capacity: 17)
                    defer { raw.deallocate() }
                    raw.initialize(repeating: Float(rank + 1))
                    try await comm.allReduce(raw)
                    #expect(Array(raw) == [Float](repeating: 3, count: 17))
                    try await comm.barrier()
                    await comm.shutdown()
                    return data
                }
            }
            for try await data in group {
                #expect(data == (0..<1001).map { distinctSum(worldSize: 2, index: $0) })
            }
        }
    }

    @Test(
        "ranks with different element counts both fail naming both ranks and counts; the error sticks",
        arguments: [LinkMedium.tcp, .shm])
    func countMismatch(medium: LinkMedium) {
        let port = freeTCPPort()
        let results = withRanks(2, seconds: 60) { rank -> String in
            let comm = try Communicator(
                blockingConfiguration: Self.configuration(rank: rank, worldSize: 2, port: port, medium: medium))
            defer { comm.shutdownBlocking() }
            var data = [Float](repeating: 1, count: rank == 0 ? 1000 : 999)
            do {
                try comm.allReduceBlocking(&data)
                return "no error"
            } catch {
                var again = [Float](repeating: 1, count: 4)
                #expect(throws: ConcordError.self) { try comm.allReduceBlocking(&again) }
                return "\(error)"
            }
        }
        for (rank, result) in results.enumerated() {
            let text = (try? result.get()) ?? "\(result)"
            #expect(text.contains("rank \(rank)"), "\(text)")
            #expect(text.contains("rank \(1 - rank)"), "\(text)")
            #expect(text.contains("1000") && text.contains("999"), "\(text)")
        }
    }

    @Test(
        "frames that come before their receives are kept (64 KiB at most, then the reader parks) and delivered in order"
    )
    func earlyFrames() {
        let port = freeTCPPort()
        let results = withRanks(2, seconds: 60) { rank -> [Float] in
            let comm = try Communicator(
                blockingConfiguration: Self.configuration(rank: rank, worldSize: 2, port: port, medium: .tcp))
            defer { comm.shutdownBlocking() }
            comm.segmentBytes = 1024
            // Rank 0 sends its first-step frames of 1 KiB while rank 1 is still asleep: the first 64 KiB
            // wait as early frames, then rank 1's reader parks; then small all-reduces whose frames also
            // arrive before rank 1 posts their receives.
            var data = (0..<65_536).map { distinctValue(rank: rank, index: $0) }
            if rank == 1 { Thread.sleep(forTimeInterval: 0.3) }
            try comm.allReduceBlocking(&data)
            var sums: [Float] = []
            for step in 0..<20 {
                if rank == 1 && step % 5 == 0 { Thread.sleep(forTimeInterval: 0.02) }
                var small = [Float](repeating: Float(rank + step), count: 3 + step)
                try comm.allReduceBlocking(&small)
                #expect(small == [Float](repeating: Float(1 + 2 * step), count: 3 + step))
                sums.append(small[0])
            }
            return data + sums
        }
        let expected = (0..<65_536).map { distinctSum(worldSize: 2, index: $0) } + (0..<20).map { Float(1 + 2 * $0) }
        for result in results {
            #expect((try? result.get()) == expected, "\(result)")
        }
    }

    @Test("large TCP payloads go without a copy (spliced) or the plain way (CONCORD_ZEROCOPY=0), exactly alike")
    func zeroCopySends() {
        for zeroCopy in [true, false] {
            let port = freeTCPPort()
            let results = withRanks(3, seconds: 60) { rank -> (sums: [Float], spliced: Int) in
                var configuration = Self.configuration(rank: rank, worldSize: 3, port: port, medium: .tcp)
                configuration.zeroCopySends = zeroCopy
                let comm = try Communicator(blockingConfiguration: configuration)
                defer { comm.shutdownBlocking() }
                var sums: [Float] = []
                // 12 MiB: 4 MiB chunks at n = 3, cut into 1 MiB frames (acknowledged, spliced); a small call
                // between two of them.
                for count in [3 << 20, 1000, 3 << 20] {
                    var data = (0..<count).map { distinctValue(rank: rank, index: $0) }
                    try comm.allReduceBlocking(&data)
                    sums += data
                }
                return (sums, comm.splicedBytes)
            }
            let expected = [3 << 20, 1000, 3 << 20].flatMap { count in
                (0..<count).map { distinctSum(worldSize: 3, index: $0) }
            }
            for (rank, result) in results.enumerated() {
                guard case .success(let outcome) = result else {
                    Issue.record("rank \(rank): \(result)")
                    continue
                }
                #expect(outcome.sums == expected, "rank \(rank), zero copy \(zeroCopy)")
                // Each rank sends 2·(2/3) of each large buffer, 32 MiB over the two calls, spliced unless the
                // socket was full at some moment (then the rest of that frame is copied).
                if zeroCopy {
                    #expect(outcome.spliced > 0, "rank \(rank) spliced nothing")
                } else {
                    #expect(
                        outcome.spliced == 0, "rank \(rank) spliced \(outcome.spliced) bytes with CONCORD_ZEROCOPY=0")
                }
            }
        }
    }

    @Test("a root that overwrites its buffer as soon as a broadcast returns leaves a late peer's copy intact")
    func zeroCopySendsWaitForTheReceiver() {
        let port = freeTCPPort()
        let count = 1 << 20  // 4 MiB: 1 MiB frames, spliced
        let results = withRanks(2, seconds: 60) { rank -> Int in
            let comm = try Communicator(
                blockingConfiguration: Self.configuration(rank: rank, worldSize: 2, port: port, medium: .tcp))
            defer { comm.shutdownBlocking() }
            var wrong = 0
            var data = [Float](repeating: 0, count: count)
            for round in 0..<3 {
                // The root's broadcast has nothing to wait for but its sends. Rank 1 calls late, so the
                // frames wait in its socket; the root overwrites its buffer as soon as its call returns.
                // Were a spliced send complete when the socket took it, rank 1 could read overwritten bytes
                // (not always: a receive queue over its buffer is compacted, which copies). PeerLinkTests
                // checks the completion itself, deterministically.
                for i in 0..<count { data[i] = rank == 0 ? distinctValue(rank: round, index: i) : -1 }
                if rank == 1 { Thread.sleep(forTimeInterval: 0.1) }
                try data.withUnsafeMutableBufferPointer { buffer in
                    try comm.broadcastBlocking(buffer, root: 0)
                    if rank == 0 { buffer.update(repeating: .nan) }
                }
                if rank == 1 {
                    for i in 0..<count where data[i] != distinctValue(rank: round, index: i) { wrong += 1 }
                }
            }
            return wrong
        }
        for (rank, result) in results.enumerated() {
            #expect((try? result.get()) == 0, "rank \(rank): \(result)")
        }
    }

    @Test("a count mismatch found in a frame that came before its receive fails both ranks, naming both")
    func earlyFrameMismatch() {
        let port = freeTCPPort()
        let results = withRanks(2, seconds: 60) { rank -> String in
            let comm = try Communicator(
                blockingConfiguration: Self.configuration(rank: rank, worldSize: 2, port: port, medium: .tcp))
            defer { comm.shutdownBlocking() }
            var data = [Float](repeating: 1, count: rank == 0 ? 10 : 11)
            if rank == 1 { Thread.sleep(forTimeInterval: 0.2) }
            do {
                try comm.allReduceBlocking(&data)
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        for (rank, result) in results.enumerated() {
            let text = (try? result.get()) ?? "\(result)"
            #expect(text.contains("rank \(rank)") && text.contains("rank \(1 - rank)"), "\(text)")
            #expect(text.contains("10") && text.contains("11"), "\(text)")
        }
    }

    @Test("CONCORD_TRANSPORT=shm with a neighbour on another machine is refused with advice; auto falls back to TCP")
    func sharedMemoryAcrossMachines() {
        for medium in [LinkMedium.shm, .auto] {
            let port = freeTCPPort()
            let results = withRanks(3, seconds: 60) { rank -> String in
                var configuration = Self.configuration(rank: rank, worldSize: 3, port: port, medium: medium)
                configuration.node = rank == 2 ? "another-machine" : "this-machine"
                let comm = try Communicator(blockingConfiguration: configuration)
                defer { comm.shutdownBlocking() }
                var data = [Float](repeating: Float(rank), count: 100_000)
                try comm.allReduceBlocking(&data)
                #expect(data.allSatisfy { $0 == 3 })
                return "\(comm.linkMedia.toRight)/\(comm.linkMedia.fromLeft)"
            }
            let outcomes = results.map { (try? $0.get()) ?? "\($0)" }
            if medium == .auto {
                // 0 → 1 share a machine; 1 → 2 and 2 → 0 cross machines.
                #expect(outcomes == ["shm/tcp", "tcp/shm", "tcp/tcp"], "\(outcomes)")
            } else {
                #expect(outcomes.allSatisfy { !$0.hasPrefix("shm") && !$0.hasPrefix("tcp") }, "\(outcomes)")
                #expect(
                    outcomes.contains { $0.contains("CONCORD_TRANSPORT=shm") && $0.contains("another host") },
                    "\(outcomes)")
            }
        }
    }

    @Test("a rank with another secret is refused by its neighbours and the store, and every rank says why")
    func wrongSecret() {
        let port = freeTCPPort()
        let results = withRanks(3, seconds: 60) { rank -> String in
            var configuration = Self.configuration(rank: rank, worldSize: 3, port: port, joinTimeout: 4)
            if rank == 2 { configuration.authentication = .secret(try JobSecret(string: "not the job's secret")) }
            do {
                let comm = try Communicator(blockingConfiguration: configuration)
                comm.shutdownBlocking()
                return "joined"
            } catch {
                return "\(error)"
            }
        }
        let texts = results.map { (try? $0.get()) ?? "\($0)" }
        #expect(!texts.contains("joined"), "\(texts)")
        // Rank 2 is refused by the store at rank 0: it learns it holds another secret.
        #expect(texts[2].contains("does not hold this job's secret"), "\(texts[2])")
        // The others never hear from rank 2, and say so when the join times out.
        for rank in 0..<2 { #expect(texts[rank].contains("never joined: [2]"), "\(texts[rank])") }
        for text in texts {
            #expect(!text.contains("communicator-tests") && !text.contains("not the job's secret"), "\(text)")
        }
    }

    @Test("secure and insecure ranks refuse each other, both saying why; no secret and no choice is refused")
    func insecureAgainstSecure() {
        let port = freeTCPPort()
        let results = withRanks(2, seconds: 60) { rank -> String in
            var configuration = Self.configuration(rank: rank, worldSize: 2, port: port, joinTimeout: 4)
            if rank == 1 { configuration.authentication = .insecure }
            do {
                let comm = try Communicator(blockingConfiguration: configuration)
                comm.shutdownBlocking()
                return "joined"
            } catch {
                return "\(error)"
            }
        }
        let texts = results.map { (try? $0.get()) ?? "\($0)" }
        #expect(texts[1].contains("refused") && texts[1].contains("secret"), "\(texts[1])")
        #expect(texts[0].contains("rank 0") && texts[0] != "joined", "\(texts[0])")
        var none = Self.configuration(rank: 0, worldSize: 1, port: freeTCPPort())
        none.authentication = nil
        #expect(throws: ConcordError.self) { _ = try Communicator(blockingConfiguration: none) }
        let text = Self.joinOutcome(rank: 0, worldSize: 2, port: freeTCPPort(), joinTimeout: 1, authentication: nil)
        #expect(text.contains("no job secret") && text.contains("CONCORD_INSECURE=1"), "\(text)")
    }

    @Test(
        "strangers at the master port of a running job (garbage, an oversized frame, a forged handshake) are dropped, each with a log line, and the job runs on"
    )
    func strangersDuringTheJob() {
        let port = freeTCPPort()
        let joined = DispatchSemaphore(value: 0)
        let strangersDone = DispatchSemaphore(value: 0)
        let results = withRanks(3, seconds: 60) { rank -> Bool in
            if rank == 2 {
                // Waits until ranks 0 and 1 formed their job, then pesters rank 0's store.
                _ = joined.wait(timeout: .now() + 20)
                defer { strangersDone.signal() }
                var hungUp = 0
                var header = [UInt8](repeating: 0, count: 48)
                header.replaceSubrange(0..<4, with: Array("CNCD".utf8))
                header[4] = 2
                header[6] = 14  // auth
                header.replaceSubrange(40..<48, with: [0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0])  // 16 MiB control frame
                let replayedHello = Array("CCHS".utf8) + [1, 0, 1, 1, 1] + [UInt8](repeating: 7, count: 40)
                var authFrame = [UInt8](repeating: 0, count: 48)
                authFrame.replaceSubrange(0..<4, with: Array("CNCD".utf8))
                authFrame[4] = 2
                authFrame[6] = 14
                authFrame[40] = UInt8(replayedHello.count)
                for bytes in [
                    Array("GET / HTTP/1.1\r\n\r\n".utf8) + [UInt8](repeating: 0, count: 64), header,
                    authFrame + replayedHello,
                ] {
                    guard let socket = RawSocket.connect(port: port) else { return false }
                    socket.write(bytes)
                    if socket.read(4096).count < 4096 { hungUp += 1 }
                    socket.close()
                }
                return hungUp == 3
            }
            let comm = try Communicator(blockingConfiguration: Self.configuration(rank: rank, worldSize: 2, port: port))
            defer { comm.shutdownBlocking() }
            try comm.barrierBlocking()
            if rank == 0 { joined.signal() }
            if rank == 0 { _ = strangersDone.wait(timeout: .now() + 20) }
            var data: [Float] = [Float(rank), 1]
            try comm.allReduceBlocking(&data)
            return data == [1, 2]
        }
        for (rank, result) in results.enumerated() {
            #expect((try? result.get()) == true, "rank \(rank): \(result)")
        }
    }

    @Test("a collective after shutdown throws shutDown")
    func afterShutdown() throws {
        let port = freeTCPPort()
        let comm = try Communicator(blockingConfiguration: Self.configuration(rank: 0, worldSize: 1, port: port))
        var data: [Float] = [1, 2]
        try comm.allReduceBlocking(&data)
        #expect(data == [1, 2])
        comm.shutdownBlocking()
        #expect(throws: ConcordError.shutDown(rank: 0)) { try comm.allReduceBlocking(&data) }
    }

    @Test(
        "links between ranks on one machine use reno, or the system's choice when told",
        arguments: ["", "system"])
    func sameMachineCongestionControl(setting: String) throws {
        let system = try #require(LinkTuning.systemCongestionControl)
        let port = freeTCPPort()
        let results = withRanks(4, seconds: 60) { rank -> [String?] in
            var configuration = Self.configuration(rank: rank, worldSize: 4, port: port, medium: .tcp)
            if !setting.isEmpty {
                configuration.sameMachineCongestionControl = try Configuration(
                    environment: ["CONCORD_LOCAL_CONGESTION": setting]
                ).sameMachineCongestionControl
            }
            let comm = try Communicator(blockingConfiguration: configuration)
            var data: [Float] = [1, 2, 3]
            try comm.allReduceBlocking(&data)
            let names = comm.linkCongestionControls
            comm.shutdownBlocking()
            return names
        }
        let expected = setting.isEmpty ? "reno" : system
        for (rank, result) in results.enumerated() {
            let names = (try? result.get()) ?? []
            // Two ring links and, at n = 4, the doubling partner rank XOR 2.
            #expect(names.count == 3 && names.allSatisfy { $0 == expected }, "rank \(rank): \(result)")
        }
    }

    @Test("a master port in use is a one-line error that says what to do")
    func portInUse() {
        let (holder, port) = RawSocket.listen()
        defer { holder.close() }
        let text = Self.joinOutcome(rank: 0, worldSize: 2, port: port, joinTimeout: 5)
        #expect(text.contains("rank 0") && text.contains("in use") && text.contains("CONCORD_MASTER_PORT"), "\(text)")
        #expect(!text.contains("\n"))
    }

    @Test("an unreachable master fails at the join deadline with advice")
    func unreachableMaster() {
        let port = freeTCPPort()
        let start = Date()
        let text = Self.joinOutcome(rank: 1, worldSize: 2, port: port, joinTimeout: 1)
        #expect(
            text.contains("rank 1") && text.contains("cannot reach the master") && text.contains("127.0.0.1:\(port)"),
            "\(text)")
        #expect(Date().timeIntervalSince(start) < 10)
    }

    /// Rank 0 waits longer (both ranks time out on their own) or much shorter than rank 1 (it gives up
    /// first and closes the store, which answers rank 1 then, not at rank 1's own deadline).
    @Test(
        "a rank that never joins is named by every rank that waited for it, also when rank 0 gives up first",
        arguments: [(3.0, 2.0), (1.0, 20.0)])
    func joinTimeout(rankZeroSeconds: Double, rankOneSeconds: Double) {
        let port = freeTCPPort()
        let start = Date()
        let results = withRanks(2, seconds: 40) { rank in
            Self.joinOutcome(
                rank: rank, worldSize: 3, port: port, joinTimeout: rank == 0 ? rankZeroSeconds : rankOneSeconds)
        }
        for (rank, result) in results.enumerated() {
            let text = (try? result.get()) ?? ""
            #expect(text.contains("rank \(rank): join timed out") && text.contains("[2]"), "\(text)")
            #expect(!text.contains("after 20 s"), "\(text)")
        }
        // Both learn it soon after the first deadline: rank 1 from the store, not at its own.
        #expect(Date().timeIntervalSince(start) < min(rankZeroSeconds, rankOneSeconds) + 10)
    }

    @Test("ranks started with different world sizes are refused at once, naming both sizes")
    func worldSizeMismatch() {
        let port = freeTCPPort()
        let start = Date()
        let results = withRanks(2, seconds: 30) { rank in
            Self.joinOutcome(rank: rank, worldSize: rank == 0 ? 2 : 3, port: port)
        }
        for (rank, result) in results.enumerated() {
            let text = (try? result.get()) ?? ""
            #expect(
                text.contains("rank \(rank)") && text.contains("world size 3") && text.contains("with 2"), "\(text)")
        }
        #expect(Date().timeIntervalSince(start) < 10)
    }

    @Test("a master that speaks another protocol version is named as such")
    func masterWithAnotherVersion() throws {
        let (server, port) = RawSocket.listen()
        defer { server.close() }
        let fake = Thread {
            guard let peer = server.accept() else { return }
            _ = peer.read(48)
            var reply = [UInt8](repeating: 0, count: 48)
            reply.replaceSubrange(0..<4, with: Array("CNCD".utf8))
            reply[4] = 99
            reply[6] = 2
            peer.write(reply)
            Thread.sleep(forTimeInterval: 1)
            peer.close()
        }
        fake.start()
        let text = Self.joinOutcome(rank: 1, worldSize: 2, port: port, joinTimeout: 5)
        #expect(text.contains("protocol v99") && text.contains("v3"), "\(text)")
    }

    @Test("rank 0 refuses a client of another version at once and says so; both sides learn it")
    func clientWithAnotherVersion() {
        let port = freeTCPPort()
        let results = withRanks(2, seconds: 30) { rank -> String in
            if rank == 0 { return Self.joinOutcome(rank: 0, worldSize: 2, port: port) }
            guard let socket = RawSocket.connect(port: port) else { return "no connection" }
            defer { socket.close() }
            var hello = [UInt8](repeating: 0, count: 48)
            hello.replaceSubrange(0..<4, with: Array("CNCD".utf8))
            hello[4] = 7
            hello[6] = 1
            socket.write(hello)
            let reply = socket.read(48)
            return reply.count == 48 && reply[4] == 3 ? "refused in v3" : "reply \(reply)"
        }
        let start = Date()
        #expect((try? results[1].get()) == "refused in v3")
        let text = (try? results[0].get()) ?? ""
        #expect(text.contains("rank 0") && text.contains("protocol v7"), "\(text)")
        #expect(Date().timeIntervalSince(start) < 15)
    }

    @Test("garbage sent to the master is dropped and the job still forms")
    func garbageAtTheMaster() {
        let port = freeTCPPort()
        let garbageSent = DispatchSemaphore(value: 0)
        let results = withRanks(3, seconds: 60) { rank -> Bool in
            if rank == 2 {
                // Rank 0's store is up and waiting for rank 1, which joins only after this.
                defer { garbageSent.signal() }
                guard let socket = RawSocket.connect(port: port) else { return false }
                socket.write(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8) + [UInt8](repeating: 0, count: 64))
                // The master opens with its authentication hello, then hangs up on the garbage.
                let reply = socket.read(4096)
                socket.close()
                return reply.count < 4096
            }
            if rank == 1 { _ = garbageSent.wait(timeout: .now() + 15) }
            let comm = try Communicator(blockingConfiguration: Self.configuration(rank: rank, worldSize: 2, port: port))
            var data: [Float] = [Float(rank), 1]
            try comm.allReduceBlocking(&data)
            comm.shutdownBlocking()
            return data == [1, 2]
        }
        for (rank, result) in results.enumerated() {
            #expect((try? result.get()) == true, "rank \(rank): \(result)")
        }
    }
}

/// Resident memory of this process, from /proc/self/statm: a baseline, and the growth seen at one moment.
final class ResidentMemory: @unchecked Sendable {
    private var baseline = 0
    private(set) var growth = 0

    func takeBaseline() { baseline = Self.current() }

    static func current() -> Int {
        let fields = ((try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? "").split(separator: " ")
        return (fields.count > 1 ? Int(fields[1]) ?? 0 : 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    func sampleGrowth() { growth = max(0, Self.current() - baseline) }
}

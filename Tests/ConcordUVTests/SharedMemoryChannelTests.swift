import ConcordTestSupport
import Foundation
import Synchronization
import Testing

@testable import ConcordUV

/// The shared-memory channel: region validation, wrap-around, the sleep protocol, unlinking, throughput.
///
/// Every test names its regions with a prefix of its own and checks at its end that /dev/shm holds none of
/// them (removing any it finds, so one failure does not leak into later runs). Every wait has a deadline.
@Suite("Shared-memory channel", .serialized, .timeLimit(.minutes(2)))
struct SharedMemoryChannelTests {
    typealias Channel = SharedMemoryChannel

    // MARK: - Creating and opening

    @Test("a region created by the producer opens, validated, as the consumer, who unlinks its name")
    func roundTrip() throws {
        try withRegionNames { prefix in
            let producer = try Channel.create(name: prefix + "rt", capacity: 8192)
            #expect(producer.name == "/concord-\(prefix)rt")
            #expect(producer.role == .producer && producer.capacity == 8192)
            // The header as another process sees it: magic first, version 1, then the page of data.
            let file = "/dev/shm/concord-\(prefix)rt"
            let header = try #require(FileManager.default.contents(atPath: file))
            #expect(header.count == 4096 + 8192)
            #expect(Array(header[0..<8]) == Array("CNCDRING".utf8))
            #expect(header[8] == 1 && header[9] == 0 && header[10] == 0 && header[11] == 0)

            let consumer = try Channel.open(name: prefix + "rt")
            #expect(consumer.role == .consumer && consumer.capacity == 8192 && consumer.name == producer.name)
            #expect(!FileManager.default.fileExists(atPath: file), "open(name:) unlinks the name once mapped")
            let free = producer.writableSpans()
            #expect(free.0.count == 8192 && free.1.count == 0)
            let readable = consumer.readableSpans()
            #expect(readable.0.count == 0 && readable.1.count == 0)

            let hello = Array("hello, ring".utf8)
            let written = hello.withUnsafeBytes { producer.write($0) }
            #expect(written.count == hello.count && !written.wakeConsumer)
            var out = [UInt8](repeating: 0, count: 64)
            let read = out.withUnsafeMutableBytes { consumer.read(into: $0) }
            #expect(read.count == hello.count && !read.wakeProducer)
            #expect(Array(out[0..<read.count]) == hello)
            #expect(!consumer.isAtEnd && !consumer.peerClosed && !producer.peerClosed)
            producer.close()
            producer.close()  // idempotent
            #expect(producer.isClosed && consumer.peerClosed && consumer.isAtEnd)
            consumer.close()
        }
    }

    @Test("a region that is not a channel is refused: bad magic")
    func badMagic() throws {
        try withRegionNames { prefix in
            let name = prefix + "magic"
            try makeRawRegion("/concord-" + name, size: 4096 + 4096, header: Array("NOTCNCD!".utf8))
            defer { shm_unlink("/concord-" + name) }
            let error = try #require(throws: SharedMemoryError.self) { try Channel.open(name: name) }
            #expect(error == .badMagic(name: "/concord-" + name, found: 0x2144_434E_4354_4F4E))
            #expect(
                error.description
                    == "shared memory /concord-\(name): not a Concord channel (bad magic 0x2144434e43544f4e)")

            // All zeros: a region opened before its creator wrote the header.
            try makeRawRegion("/concord-" + name + "0", size: 8192, header: [])
            defer { shm_unlink("/concord-" + name + "0") }
            let zero = try #require(throws: SharedMemoryError.self) { try Channel.open(name: name + "0") }
            #expect(zero == .badMagic(name: "/concord-" + name + "0", found: 0))
            #expect(zero.description.hasSuffix("(bad magic 0x0; opened before its creator finished?)"))
        }
    }

    @Test("a truncated region is refused with its size and the size its header implies")
    func truncated() throws {
        try withRegionNames { prefix in
            let name = prefix + "short"
            let path = "/concord-" + name
            let producer = try Channel.create(name: name)
            try resize(path, to: 4096)
            let error = try #require(throws: SharedMemoryError.self) { try Channel.open(name: name) }
            #expect(error == .wrongSize(name: path, size: 4096, expected: 4_198_400))
            #expect(error.description == "shared memory \(path): truncated: 4096 bytes, expected 4198400")

            try resize(path, to: 100)
            let tiny = try #require(throws: SharedMemoryError.self) { try Channel.open(name: name) }
            #expect(
                tiny.description == "shared memory \(path): truncated: 100 bytes, shorter than the 4096-byte header")

            try resize(path, to: 4_198_400 + 4096)
            let long = try #require(throws: SharedMemoryError.self) { try Channel.open(name: name) }
            #expect(long.description == "shared memory \(path): too large: 4202496 bytes, expected 4198400")
            producer.close()  // no consumer claimed it: the producer removes the name
        }
    }

    @Test("a header of another version or with a bad capacity is refused")
    func foreignHeader() throws {
        try withRegionNames { prefix in
            let name = prefix + "hdr"
            let path = "/concord-" + name
            let producer = try Channel.create(name: name, capacity: 4096)
            try poke(UInt32(2), at: Channel.Layout.versionOffset, in: path)
            let version = try #require(throws: SharedMemoryError.self) { try Channel.open(name: name) }
            #expect(version == .unsupportedVersion(name: path, found: 2, headerBytes: 4096, expected: 1))

            try poke(UInt32(1), at: Channel.Layout.versionOffset, in: path)
            try poke(UInt64(1000), at: Channel.Layout.capacityOffset, in: path)
            let capacity = try #require(throws: SharedMemoryError.self) { try Channel.open(name: name) }
            #expect(capacity == .invalidCapacity(name: path, capacity: 1000))
            #expect(capacity.description.hasSuffix("capacity 1000 is not a power of two between 4096 and 1073741824"))

            // A header claiming more than the region holds must be refused before anything beyond it is read.
            try poke(UInt64(1 << 20), at: Channel.Layout.capacityOffset, in: path)
            let size = try #require(throws: SharedMemoryError.self) { try Channel.open(name: name) }
            #expect(size == .wrongSize(name: path, size: 8192, expected: 4096 + (1 << 20)))

            // Restored, the same region opens.
            try poke(UInt64(4096), at: Channel.Layout.capacityOffset, in: path)
            let consumer = try Channel.open(name: name)
            #expect(consumer.capacity == 4096)
            consumer.close()
            producer.close()
        }
    }

    @Test("a missing name, an existing name, a bad capacity and a bad name give clear errors")
    func namesAndCapacities() throws {
        try withRegionNames { prefix in
            let missing = try #require(throws: SharedMemoryError.self) { try Channel.open(name: prefix + "none") }
            #expect(missing == .notFound(name: "/concord-\(prefix)none"))
            #expect(
                missing.description
                    == "shared memory /concord-\(prefix)none: does not exist (not created yet, or already unlinked)")

            let first = try Channel.create(name: prefix + "twice", capacity: 4096)
            let again = try #require(throws: SharedMemoryError.self) {
                try Channel.create(name: prefix + "twice", capacity: 4096)
            }
            #expect(again == .exists(name: "/concord-\(prefix)twice"))
            #expect(again.description.hasPrefix("shared memory /concord-\(prefix)twice: exists already"))
            first.close()

            for capacity in [0, 1000, 2048, 3 << 20, 1 << 31] {
                #expect(throws: SharedMemoryError.invalidCapacity(name: "/concord-\(prefix)cap", capacity: capacity)) {
                    try Channel.create(name: prefix + "cap", capacity: capacity)
                }
            }

            let slash = try #require(throws: SharedMemoryError.self) { try Channel.create(name: prefix + "a/b") }
            #expect(slash == .system(name: "/concord-\(prefix)a/b", call: "shm_open", errno: EINVAL))
            #expect(slash.description.hasSuffix(": shm_open failed: EINVAL (Invalid argument)"))
        }
    }

    @Test("a region has one consumer: a second open is refused")
    func oneConsumer() throws {
        try withRegionNames { prefix in
            let producer = try Channel.create(name: prefix + "one", capacity: 4096)
            let consumer = try Channel.open(name: prefix + "one", unlinksName: false)
            #expect(throws: SharedMemoryError.hasConsumer(name: "/concord-\(prefix)one")) {
                try Channel.open(name: prefix + "one", unlinksName: false)
            }
            try consumer.unlink()
            consumer.close()
            producer.close()
        }
    }

    // MARK: - Moving bytes

    @Test("odd-sized writes and reads wrap around a 4 KiB ring intact, one thread interleaving both sides")
    func wrapAroundInterleaved() throws {
        try withRegionNames { prefix in
            let capacity = 4096
            let producer = try Channel.create(name: prefix + "wrap", capacity: capacity)
            let consumer = try Channel.open(name: prefix + "wrap")
            let pattern = StreamPattern(seed: 1)
            let writeSizes = [1, 7, 4093, 500, 3, 1021, 4096, 2, 999, 17, 2048, 4095, 64, 1]
            let readSizes = [3, 4096, 1, 777, 13, 2047, 5, 4000, 31, 1023, 11]
            let total = 3 << 20
            var written = 0
            var read = 0
            var step = 0
            var wrappedSpans = 0
            var scratch = [UInt8](repeating: 0, count: capacity)
            while read < total {
                // Write up to the next size, through the spans on even steps and write() on odd ones.
                let want = min(writeSizes[step % writeSizes.count], total - written)
                let (first, second) = producer.writableSpans()
                let free = capacity - (written - read)
                #expect(first.count + second.count == free)
                #expect(first.count == min(free, capacity - written % capacity))
                if !second.isEmpty { wrappedSpans += 1 }
                if step % 2 == 0 {
                    let a = min(want, first.count)
                    let b = min(want - a, second.count)
                    pattern.fill(UnsafeMutableRawBufferPointer(rebasing: first[0..<a]), from: written)
                    pattern.fill(UnsafeMutableRawBufferPointer(rebasing: second[0..<b]), from: written + a)
                    #expect(!producer.commitWrite(a + b))
                    written += a + b
                } else {
                    scratch.withUnsafeMutableBytes {
                        pattern.fill(UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]), from: written)
                    }
                    let result = scratch.withUnsafeBytes {
                        producer.write(UnsafeRawBufferPointer(rebasing: $0[0..<want]))
                    }
                    #expect(result.count == min(want, free) && !result.wakeConsumer)
                    written += result.count
                }
                // Read up to the next size, alternating the same way; check every byte.
                let wantRead = readSizes[step % readSizes.count]
                let (r1, r2) = consumer.readableSpans()
                #expect(r1.count + r2.count == written - read)
                #expect(r2.isEmpty || r1.count == capacity - read % capacity)
                if step % 3 == 0 {
                    let a = min(wantRead, r1.count)
                    let b = min(wantRead - a, r2.count)
                    try expectPattern(pattern, UnsafeRawBufferPointer(rebasing: r1[0..<a]), at: read)
                    try expectPattern(pattern, UnsafeRawBufferPointer(rebasing: r2[0..<b]), at: read + a)
                    #expect(!consumer.commitRead(a + b))
                    read += a + b
                } else {
                    let got = scratch.withUnsafeMutableBytes {
                        consumer.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<min(wantRead, capacity)]))
                    }
                    try scratch.withUnsafeBytes {
                        try expectPattern(pattern, UnsafeRawBufferPointer(rebasing: $0[0..<got.count]), at: read)
                    }
                    #expect(!got.wakeProducer)
                    read += got.count
                }
                step += 1
            }
            #expect(written == total && read == total)
            #expect(wrappedSpans > 100, "the free space wrapped \(wrappedSpans) times")
            consumer.close()
            producer.close()
        }
    }

    @Test("a producer thread and a consumer thread, each with its own mapping, move 64 MiB through 64 KiB")
    func concurrentThreads() throws {
        try withRegionNames { prefix in
            let name = prefix + "threads"
            let producer = try Channel.create(name: name, capacity: 64 << 10)
            let dataBell = try Channel.PipeDoorbell(name: producer.name)
            let spaceBell = try Channel.PipeDoorbell(name: producer.name)
            let pattern = StreamPattern(seed: 2)
            let total = 64 << 20
            let deadline = ContinuousClock.now + .seconds(60)
            let results = withRanks(2, seconds: 90) { rank -> Int in
                if rank == 0 {
                    // Producer: odd sizes, written straight into the spans.
                    let sizes = [1, 4093, 65_537, 61, 8191, 3, 30_011, 777, 16_381, 99_991, 12_289]
                    var sent = 0
                    var sleeps = 0
                    var step = 0
                    defer { if producer.markClosed() { dataBell.ring() } }
                    while sent < total {
                        let want = min(sizes[step % sizes.count], total - sent)
                        step += 1
                        var done = 0
                        while done < want {
                            let (first, second) = producer.writableSpans()
                            if first.isEmpty {
                                if producer.peerClosed { throw ChannelTestFailure("consumer closed at \(sent + done)") }
                                if try waitForPeer(
                                    bell: spaceBell, until: deadline, what: "space",
                                    { !producer.writableSpans().0.isEmpty },
                                    prepare: { producer.producerPrepareToSleep() })
                                {
                                    sleeps += 1
                                }
                                continue
                            }
                            let a = min(first.count, want - done)
                            let b = min(second.count, want - done - a)
                            pattern.fill(UnsafeMutableRawBufferPointer(rebasing: first[0..<a]), from: sent + done)
                            pattern.fill(UnsafeMutableRawBufferPointer(rebasing: second[0..<b]), from: sent + done + a)
                            if producer.commitWrite(a + b) { dataBell.ring() }
                            done += a + b
                        }
                        sent += want
                    }
                    return sleeps
                } else {
                    // Consumer: its own mapping, other odd sizes, through read(into:); every byte checked.
                    let consumer = try Channel.open(name: name)
                    defer {
                        if consumer.markClosed() { spaceBell.ring() }
                        consumer.close()
                    }
                    let sizes = [70_001, 1, 4099, 17, 65_536, 509, 33_331, 2, 20_011]
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 70_001, alignment: 16)
                    defer { buffer.deallocate() }
                    var received = 0
                    var sleeps = 0
                    var step = 0
                    while received < total {
                        let want = min(sizes[step % sizes.count], total - received)
                        let got = consumer.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
                        if got.count == 0 {
                            if consumer.isAtEnd { throw ChannelTestFailure("the stream ended at \(received)") }
                            if try waitForPeer(
                                bell: dataBell, until: deadline, what: "bytes", { !consumer.readableSpans().0.isEmpty },
                                prepare: { consumer.consumerPrepareToSleep() })
                            {
                                sleeps += 1
                            }
                            continue
                        }
                        try expectPattern(
                            pattern, UnsafeRawBufferPointer(rebasing: buffer[0..<got.count]), at: received)
                        if got.wakeProducer { spaceBell.ring() }
                        received += got.count
                        step += 1
                    }
                    // The producer closes after its last byte: the consumer sees the end, and nothing more.
                    while !consumer.isAtEnd {
                        if try waitForPeer(
                            bell: dataBell, until: deadline, what: "the end", { consumer.isAtEnd },
                            prepare: { consumer.consumerPrepareToSleep() })
                        {
                            sleeps += 1
                        }
                    }
                    if !consumer.readableSpans().0.isEmpty { throw ChannelTestFailure("bytes after the end") }
                    return sleeps
                }
            }
            let sleeps = try results.map { try $0.get() }
            print("64 MiB through 64 KiB: the producer slept \(sleeps[0]) times, the consumer \(sleeps[1]) times")
            producer.close()
        }
    }

    // MARK: - Sleeping

    @Test("20000 one-byte round trips, sleeping whenever the ring stays empty, lose no wake-up")
    func pingPong() throws {
        try withRegionNames { prefix in
            // Each side commits and at once prepares to sleep on the other channel: the race the eventcount
            // must win, 40000 times. A lost wake-up leaves both asleep until the deadline.
            let there = try Channel.create(name: prefix + "ping", capacity: 4096)
            let back = try Channel.create(name: prefix + "pong", capacity: 4096)
            let thereBell = try Channel.PipeDoorbell(name: there.name)
            let backBell = try Channel.PipeDoorbell(name: back.name)
            let rounds = 20_000
            let deadline = ContinuousClock.now + .seconds(30)
            let results = withRanks(2, seconds: 60) { rank -> Int in
                let (output, outputBell, inputName, inputBell) =
                    rank == 0 ? (there, thereBell, "pong", backBell) : (back, backBell, "ping", thereBell)
                let input = try Channel.open(name: prefix + inputName)
                defer { input.close() }
                var sleeps = 0
                for i in 0..<rounds {
                    if rank == 0 {
                        let byte = UInt8(truncatingIfNeeded: i)
                        if withUnsafeBytes(of: byte, { output.write($0) }).wakeConsumer { outputBell.ring() }
                    }
                    // Spin a varying while first, so the peer's commit often lands inside this side's
                    // announce-fence-look sequence rather than long before or after it.
                    var got: UInt8 = 0
                    var spins = 0
                    while withUnsafeMutableBytes(of: &got, { input.read(into: $0) }).count == 0 {
                        spins += 1
                        if spins < (i * 7 + rank) % 97 { continue }
                        if input.consumerPrepareToSleep() {
                            guard inputBell.wait(until: deadline) else {
                                throw ChannelTestFailure("rank \(rank) round \(i): no wake-up before the deadline")
                            }
                            sleeps += 1
                        }
                    }
                    guard got == UInt8(truncatingIfNeeded: i) else {
                        throw ChannelTestFailure("rank \(rank) round \(i): got \(got)")
                    }
                    if rank == 1, withUnsafeBytes(of: got, { output.write($0) }).wakeConsumer { outputBell.ring() }
                }
                return sleeps
            }
            let sleeps = try results.map { try $0.get() }
            print("\(rounds) round trips: rank 0 slept \(sleeps[0]) times, rank 1 \(sleeps[1]) times")
            there.close()
            back.close()
        }
    }

    @Test(
        "a commit racing a prepare-to-sleep, released together 100000 times, never leaves the sleeper unwoken",
        arguments: [SharedMemoryChannel.Role.consumer, .producer])
    func sleepRace(sleeper: SharedMemoryChannel.Role) throws {
        // The store-buffering litmus test of the eventcount. Each round, both threads leave a spin barrier
        // together; one commits, the other prepares to sleep. The sleeper may end up asleep (prepare true)
        // only if the committer saw it and was told to wake it (commit true). Without the two fences, both
        // could read the other's word before their own store is visible: a lost wake-up.
        try withRegionNames { prefix in
            let producer = try Channel.create(name: prefix + "race", capacity: 4096)
            let consumer = try Channel.open(name: prefix + "race")
            let barrier = SpinBarrier()
            let rounds = 100_000
            let deadline = ContinuousClock.now + .seconds(60)
            var block = [UInt8](repeating: 1, count: 4096)
            if sleeper == .producer {  // the producer sleeps on a full ring
                #expect(block.withUnsafeBytes { producer.write($0) }.count == 4096)
            }
            let results = withRanks(2, seconds: 90) { rank -> [Bool] in
                var outcomes = [Bool](repeating: false, count: rounds)
                var byte: UInt8 = 0
                for round in 0..<rounds {
                    try barrier.arrive(deadline: deadline)
                    switch (rank, sleeper) {
                    case (0, .consumer): outcomes[round] = consumer.consumerPrepareToSleep()
                    case (1, .consumer): outcomes[round] = producer.commitWrite(1)
                    case (0, .producer): outcomes[round] = producer.producerPrepareToSleep()
                    case (1, .producer): outcomes[round] = consumer.commitRead(1)
                    default: break
                    }
                    try barrier.arrive(deadline: deadline)
                    // Reset for the next round, one side only (the barrier orders it before the next race):
                    // withdraw a left-over announcement (a prepare that finds the ring unblocked clears the flag),
                    // then make the ring empty (full) again.
                    if rank == 0, sleeper == .consumer {
                        _ = consumer.consumerPrepareToSleep()
                        _ = withUnsafeMutableBytes(of: &byte) { consumer.read(into: $0) }
                    } else if rank == 0 {
                        _ = producer.producerPrepareToSleep()
                        _ = withUnsafeBytes(of: byte) { producer.write($0) }
                    }
                    try barrier.arrive(deadline: deadline)
                }
                return outcomes
            }
            let outcomes = try results.map { try $0.get() }
            var counts = [String: Int]()
            for round in 0..<rounds {
                let key = "\(outcomes[0][round] ? "slept" : "stayed awake")/\(outcomes[1][round] ? "woken" : "no wake")"
                counts[key, default: 0] += 1
            }
            print("\(sleeper) sleeps, \(rounds) races: \(counts.sorted { $0.key < $1.key })")
            #expect(counts["slept/no wake", default: 0] == 0, "lost wake-ups")
            block.removeAll()
            consumer.close()
            producer.close()
        }
    }

    @Test("the consumer may sleep only on an empty ring, and the next commit wakes it exactly once")
    func consumerSleep() throws {
        try withRegionNames { prefix in
            let producer = try Channel.create(name: prefix + "csleep", capacity: 4096)
            let consumer = try Channel.open(name: prefix + "csleep")
            let bytes: [UInt8] = [1, 2, 3]

            #expect(consumer.consumerPrepareToSleep(), "empty: it may sleep")
            #expect(bytes.withUnsafeBytes { producer.write($0) } == (3, true), "the first commit wakes it")
            #expect(bytes.withUnsafeBytes { producer.write($0) } == (3, false), "only once")
            #expect(!consumer.consumerPrepareToSleep(), "bytes are there: it must not sleep")
            #expect(bytes.withUnsafeBytes { producer.write($0) } == (3, false), "and the withdrawn flag stays clear")
            #expect(!producer.commitWrite(0), "an empty commit wakes nobody")

            var sink = [UInt8](repeating: 0, count: 16)
            #expect(sink.withUnsafeMutableBytes { consumer.read(into: $0) }.count == 9)
            #expect(consumer.consumerPrepareToSleep())
            #expect(consumer.consumerPrepareToSleep(), "announcing twice is harmless")
            let (first, _) = producer.writableSpans()
            first[0] = 42
            #expect(producer.commitWrite(1), "a commit through the spans wakes it too")
            #expect(!producer.commitWrite(0))

            // Closing wakes a sleeping consumer, which then finds the rest and the end.
            #expect(sink.withUnsafeMutableBytes { consumer.read(into: $0) }.count == 1 && sink[0] == 42)
            #expect(consumer.consumerPrepareToSleep())
            #expect(producer.markClosed(), "closing wakes the sleeper")
            #expect(consumer.isAtEnd && consumer.peerClosed)
            #expect(!consumer.consumerPrepareToSleep(), "nothing will come: it must not sleep")
            consumer.close()
            producer.close()
        }
    }

    @Test("the producer may sleep only on a full ring, and the next read wakes it exactly once")
    func producerSleep() throws {
        try withRegionNames { prefix in
            let producer = try Channel.create(name: prefix + "psleep", capacity: 4096)
            let consumer = try Channel.open(name: prefix + "psleep")
            let block = [UInt8](repeating: 7, count: 4096)
            var sink = [UInt8](repeating: 0, count: 4096)
            func read(_ n: Int) -> (count: Int, wakeProducer: Bool) {
                sink.withUnsafeMutableBytes { consumer.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<n])) }
            }

            #expect(!producer.producerPrepareToSleep(), "there is space: it must not sleep")
            #expect(read(1) == (0, false))
            #expect(block.withUnsafeBytes { producer.write($0) }.count == 4096)
            #expect(producer.writableSpans().0.isEmpty)
            #expect(producer.producerPrepareToSleep(), "full: it may sleep")
            #expect(read(1) == (1, true), "the first read wakes it")
            #expect(read(1) == (1, false), "only once")
            #expect(!producer.producerPrepareToSleep(), "2 bytes free: it must not sleep")
            #expect(read(1) == (1, false), "and the withdrawn flag stays clear")

            #expect(block.withUnsafeBytes { producer.write($0) }.count == 3)
            #expect(producer.producerPrepareToSleep())
            let (first, second) = consumer.readableSpans()
            #expect(first.count + second.count == 4096)
            #expect(consumer.commitRead(4096), "a commit through the spans wakes it too")
            #expect(!consumer.commitRead(0))

            #expect(block.withUnsafeBytes { producer.write($0) }.count == 4096)
            #expect(producer.producerPrepareToSleep())
            #expect(consumer.markClosed(), "closing wakes the sleeper")
            #expect(producer.peerClosed)
            #expect(!producer.producerPrepareToSleep(), "nobody will read: it must not sleep")
            consumer.close()
            producer.close()
        }
    }

    // MARK: - Names and leaks

    @Test("unlink removes the name: opening again fails, and both mappings keep working")
    func unlinkKeepsMappings() throws {
        try withRegionNames { prefix in
            let name = prefix + "unlink"
            let file = "/dev/shm/concord-" + name
            let producer = try Channel.create(name: name, capacity: 4096)
            let consumer = try Channel.open(name: name, unlinksName: false)
            #expect(FileManager.default.fileExists(atPath: file))
            try consumer.unlink()
            try consumer.unlink()  // a second call does nothing
            #expect(!FileManager.default.fileExists(atPath: file))
            #expect(throws: SharedMemoryError.notFound(name: "/concord-" + name)) { try Channel.open(name: name) }
            try producer.unlink()  // gone already: not an error

            // The name is free for a new region; the old pair still talks.
            let other = try Channel.create(name: name, capacity: 4096)
            other.close()
            let pattern = StreamPattern(seed: 3)
            var chunk = [UInt8](repeating: 0, count: 3001)
            var offset = 0
            for _ in 0..<10 {
                chunk.withUnsafeMutableBytes { pattern.fill($0, from: offset) }
                #expect(chunk.withUnsafeBytes { producer.write($0) }.count == 3001)
                chunk = [UInt8](repeating: 0, count: 3001)
                #expect(chunk.withUnsafeMutableBytes { consumer.read(into: $0) }.count == 3001)
                try chunk.withUnsafeBytes { try expectPattern(pattern, $0, at: offset) }
                offset += 3001
            }
            consumer.close()
            producer.close()
        }
    }

    @Test("a producer closed or dropped before any consumer came removes its region")
    func unclaimedRegionRemoved() throws {
        try withRegionNames { prefix in
            let closed = try Channel.create(name: prefix + "closed", capacity: 4096)
            #expect(FileManager.default.fileExists(atPath: "/dev/shm/concord-\(prefix)closed"))
            closed.close()
            #expect(!FileManager.default.fileExists(atPath: "/dev/shm/concord-\(prefix)closed"))
            func dropped() throws { _ = try Channel.create(name: prefix + "dropped", capacity: 4096) }
            try dropped()
            #expect(!FileManager.default.fileExists(atPath: "/dev/shm/concord-\(prefix)dropped"))
        }
    }

    // MARK: - Throughput

    @Test("the throughput measurement moves its bytes intact")
    func throughput() throws {
        let big = try Channel.measureThroughput(bytes: 32 << 20, chunk: 65_537, capacity: 1 << 20)
        print(String(format: "shared-memory channel: 32 MiB through 1 MiB, 64 KiB+1 chunks: %.2f GB/s", big))
        // A ring smaller than a chunk: every commit fills or drains it, so both sides sleep often.
        let small = try Channel.measureThroughput(bytes: 3_000_017, chunk: 5000, capacity: 4096)
        print(String(format: "shared-memory channel: 3 MB through 4 KiB, 5000-byte chunks: %.2f GB/s", small))
        #expect(big > 0 && small > 0)
        #expect(leftoverRegions(prefix: "throughput-\(getpid())-").isEmpty)
    }
}

// MARK: - Helpers

/// A pseudo-random byte stream: byte i is `table[i mod 65521]`. The period is prime, so it shares no
/// factor with a power-of-two capacity: a byte read from the wrong lap or the wrong place shows.
struct StreamPattern: Sendable {
    static let period = 65_521
    /// Two periods, so that any `period` bytes starting anywhere in the first are contiguous.
    private let table: [UInt8]

    init(seed: UInt64) {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var bytes = [UInt8](repeating: 0, count: Self.period)
        for i in bytes.indices {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            bytes[i] = UInt8(truncatingIfNeeded: state >> 24)
        }
        table = bytes + bytes
    }

    /// Writes stream bytes `offset ..< offset + buffer.count` into `buffer`.
    func fill(_ buffer: UnsafeMutableRawBufferPointer, from offset: Int) {
        var done = 0
        table.withUnsafeBytes { table in
            while done < buffer.count {
                let n = min(buffer.count - done, Self.period)
                (buffer.baseAddress! + done).copyMemory(
                    from: table.baseAddress! + (offset + done) % Self.period, byteCount: n)
                done += n
            }
        }
    }

    /// The stream offset of the first byte of `buffer` (stream bytes from `offset`) that is wrong.
    func firstMismatch(_ buffer: UnsafeRawBufferPointer, from offset: Int) -> Int? {
        table.withUnsafeBytes { table in
            var done = 0
            while done < buffer.count {
                let n = min(buffer.count - done, Self.period)
                let expected = table.baseAddress! + (offset + done) % Self.period
                if memcmp(buffer.baseAddress! + done, expected, n) != 0 {
                    let bad = (0..<n).first { buffer[done + $0] != expected.load(fromByteOffset: $0, as: UInt8.self) }!
                    return offset + done + bad
                }
                done += n
            }
            return nil
        }
    }
}

/// Two threads meet here: each `arrive` returns once both have arrived as often.
final class SpinBarrier: Sendable {
    private let arrivals = Atomic<Int>(0)

    /// Arrives and spins until the other thread has arrived as often.
    /// - Throws: when `deadline` passes first.
    func arrive(deadline: ContinuousClock.Instant) throws {
        let mine = arrivals.add(1, ordering: .sequentiallyConsistent).newValue
        let target = (mine + 1) / 2 * 2
        var spins = 0
        while arrivals.load(ordering: .acquiring) < target {
            spins += 1
            if spins & 0x3FF == 0 {
                // The other thread may have lost its core (two cores, other tests running): give it back.
                sched_yield()
                if ContinuousClock.now > deadline {
                    throw ChannelTestFailure("the other thread never reached the barrier")
                }
            }
        }
    }
}

struct ChannelTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Throws when `buffer` is not stream bytes `offset ..< offset + buffer.count` of `pattern`.
func expectPattern(_ pattern: StreamPattern, _ buffer: UnsafeRawBufferPointer, at offset: Int) throws {
    if let bad = pattern.firstMismatch(buffer, from: offset) {
        throw ChannelTestFailure("stream byte \(bad) is wrong (checking \(buffer.count) bytes from \(offset))")
    }
}

/// Spins briefly for `ready`, then announces sleep and waits for `bell` until `deadline`.
/// - Returns: whether it slept. - Throws: when the deadline passed (a lost wake-up).
func waitForPeer(
    bell: SharedMemoryChannel.PipeDoorbell, until deadline: ContinuousClock.Instant, what: String,
    _ ready: () -> Bool, prepare: () -> Bool
) throws -> Bool {
    for _ in 0..<50 {
        if ready() { return false }
    }
    guard prepare() else { return false }
    if !bell.wait(until: deadline) { throw ChannelTestFailure("no doorbell for \(what) before the deadline") }
    return true
}

/// Regions in /dev/shm whose channel name starts with `prefix`.
func leftoverRegions(prefix: String) -> [String] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []
    return entries.filter { $0.hasPrefix("concord-" + prefix) }
}

/// Runs `body` with a channel-name prefix unique to this call, then checks that no region with that prefix
/// is left in /dev/shm (and removes any, so a failing test leaks nothing into later runs).
func withRegionNames(_ body: (String) throws -> Void) throws {
    let prefix = "test-\(getpid())-\(UInt32.random(in: .min ... .max))-"
    defer {
        let left = leftoverRegions(prefix: prefix)
        #expect(left.isEmpty, "left in /dev/shm: \(left)")
        for entry in left { shm_unlink("/" + entry) }
    }
    try body(prefix)
}

/// Creates a region that is not a channel: `size` bytes beginning with `header`.
func makeRawRegion(_ path: String, size: Int, header: [UInt8]) throws {
    let fd = shm_open(path, O_CREAT | O_EXCL | O_RDWR, 0o600)
    guard fd >= 0 else { throw ChannelTestFailure("shm_open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    guard ftruncate(fd, off_t(size)) == 0 else { throw ChannelTestFailure("ftruncate \(path)") }
    guard header.withUnsafeBytes({ pwrite(fd, $0.baseAddress, $0.count, 0) }) == header.count else {
        throw ChannelTestFailure("pwrite \(path)")
    }
}

/// Changes the size of an existing region (the producer keeps its mapping; nobody touches the lost part).
func resize(_ path: String, to size: Int) throws {
    let fd = shm_open(path, O_RDWR, 0)
    guard fd >= 0 else { throw ChannelTestFailure("shm_open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    guard ftruncate(fd, off_t(size)) == 0 else { throw ChannelTestFailure("ftruncate \(path)") }
}

/// Overwrites the bytes of `value` at `offset` in an existing region.
func poke<T>(_ value: T, at offset: Int, in path: String) throws {
    let fd = shm_open(path, O_RDWR, 0)
    guard fd >= 0 else { throw ChannelTestFailure("shm_open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let written = withUnsafeBytes(of: value) { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
    guard written == MemoryLayout<T>.size else { throw ChannelTestFailure("pwrite \(path)") }
}

import ConcordCore
import Foundation
import Testing

@testable import ConcordUV

/// Two links over loopback on one loop, driven by the test's thread: what zero-copy sends promise.
@Suite("PeerLink zero-copy sends", .serialized, .timeLimit(.minutes(1)))
struct PeerLinkTests {
    /// Records what the links tell their owner.
    final class Owner: PeerLinkDelegate {
        var completed: [Int] = []
        var failed: [ConcordError] = []
        func link(_ link: PeerLink, received header: FrameHeader, payload: [UInt8]) {}
        func linkFailed(_ link: PeerLink) { failed.append(link.failure!) }
        func transferCompleted(_ id: Int) { completed.append(id) }
    }

    /// Connects rank 0 (`sender`) to rank 1 (`receiver`) on a fresh loop and runs `body` as the driver.
    /// `receiveBuffer`: the links' socket receive buffer (small ones fill with little memory: these tests
    /// run beside others that measure the process's resident memory).
    func withPair(
        receiveBuffer: Int = 4 << 20,
        _ body: (EventLoop, _ sender: PeerLink, _ receiver: PeerLink, Owner) throws -> Void
    ) throws {
        let loop = try EventLoop(name: "peer-link-test")
        defer {
            loop.stop()
            #expect(loop.closedCleanly, "handles left open: \(loop.leakedHandles)")
        }
        try loop.drive {
            let owner = Owner()
            let listener = try Listener(loop: loop, rank: 1, host: "127.0.0.1", port: 0, inUseHint: "")
            var accepted: PeerLink?
            listener.onAccept = { accepted = $0 }
            let sender = try Connector.connect(
                loop: loop, rank: 0, to: SocketAddress(host: "127.0.0.1", port: listener.port),
                deadline: .after(seconds: 10), authenticator: nil
            ) { .peerLost(rank: 0, peer: 1, reason: $0) }
            loop.run(until: { accepted != nil }, deadline: .after(seconds: 10))
            let receiver = try #require(accepted)
            listener.close()
            for (link, peer) in [(sender, 1), (receiver, 0)] {
                link.peerRank = peer
                link.delegate = owner
                link.configure(timeout: 10, receiveBuffer: receiveBuffer)
                link.startReading()
            }
            defer {
                sender.close()
                receiver.close()
                loop.run(until: { false }, deadline: .after(seconds: 0.05))
            }
            try body(loop, sender, receiver, owner)
        }
    }

    func tag(_ count: Int) -> SegmentTag {
        SegmentTag(
            collective: .broadcast, sequence: 1, dataType: .float32, op: .sum, count: count, offset: 0, length: count,
            root: 0)
    }

    @Test("a spliced send completes when the receiver has read the frame, not when the socket took it")
    func sendCompletesOnConsumption() throws {
        try withPair { loop, sender, receiver, owner in
            let count = 1 << 18  // 1 MiB
            let source = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            let destination = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            defer {
                source.deallocate()
                destination.deallocate()
            }
            for i in 0..<count { source[i] = Float(i % 1000) }
            destination.update(repeating: -1)
            sender.write(FrameHeader(data: tag(count), sender: 0), payload: UnsafeRawBufferPointer(source), transfer: 7)
            // Nobody reads yet: the frame waits in the receiver's socket (its reader parks), the send stays open.
            loop.run(until: { false }, deadline: .after(seconds: 0.1))
            #expect(sender.splicedBytes > 0, "nothing was spliced")
            #expect(sender.awaitingConsumption == 1)
            #expect(!owner.completed.contains(7), "the send completed before the receiver read it")
            receiver.post(
                PostedReceive(
                    id: 8, tag: tag(count), destination: UnsafeMutableRawPointer(destination.baseAddress!), reducer: nil
                ))
            loop.run(
                until: { owner.completed.contains(7) && owner.completed.contains(8) }, deadline: .after(seconds: 10))
            #expect(owner.completed.firstIndex(of: 8)! < owner.completed.firstIndex(of: 7)!)
            #expect(sender.awaitingConsumption == 0 && owner.failed.isEmpty, "\(owner.failed)")
            #expect(Array(destination) == Array(source))
        }
    }

    @Test("a frame larger than the socket takes is spliced on as it drains, with the next frame waiting behind it")
    func spliceContinuesAsTheSocketDrains() throws {
        try withPair(receiveBuffer: 128 << 10) { loop, sender, receiver, owner in
            let counts = [1 << 20, 1 << 18]  // 4 MiB (more than the socket takes), then 1 MiB
            let sources = counts.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0) }
            let destinations = counts.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0) }
            defer { (sources + destinations).forEach { $0.deallocate() } }
            for (k, source) in sources.enumerated() {
                for i in 0..<source.count { source[i] = Float((i + k) % 977) }
                destinations[k].update(repeating: -1)
            }
            for (k, source) in sources.enumerated() {
                var tag = tag(counts[k])
                tag.sequence = UInt64(k + 1)
                sender.write(
                    FrameHeader(data: tag, sender: 0), payload: UnsafeRawBufferPointer(source), transfer: 1 + k)
            }
            loop.run(until: { false }, deadline: .after(seconds: 0.1))
            // The receiver reads nothing yet: the socket is full in the middle of the first frame.
            #expect(sender.splicedBytes < counts[0] * 4, "the whole first frame fit: nothing to test")
            #expect(sender.pendingWrites == 2, "the first frame in flight and the second behind it")
            for (k, destination) in destinations.enumerated() {
                var tag = tag(counts[k])
                tag.sequence = UInt64(k + 1)
                receiver.post(
                    PostedReceive(
                        id: 3 + k, tag: tag, destination: UnsafeMutableRawPointer(destination.baseAddress!),
                        reducer: nil))
            }
            loop.run(until: { Set(owner.completed).isSuperset(of: [1, 2, 3, 4]) }, deadline: .after(seconds: 10))
            #expect(Set(owner.completed) == [1, 2, 3, 4] && owner.failed.isEmpty, "\(owner.completed) \(owner.failed)")
            for k in counts.indices { #expect(Array(destinations[k]) == Array(sources[k]), "frame \(k + 1)") }
            // Nothing was copied: both payloads went to the socket as references.
            #expect(sender.splicedBytes == counts.reduce(0, +) * 4)
            #expect(sender.pendingWrites == 0 && sender.awaitingConsumption == 0)
        }
    }

    @Test(
        "a receiver that goes away in the middle of a spliced frame fails the sender's link, naming it; nothing hangs")
    func receiverGoneMidSplice() throws {
        try withPair(receiveBuffer: 128 << 10) { loop, sender, receiver, owner in
            let count = 1 << 20  // 4 MiB: more than the socket takes while nobody reads
            let source = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            defer { source.deallocate() }
            source.update(repeating: 1)
            sender.write(FrameHeader(data: tag(count), sender: 0), payload: UnsafeRawBufferPointer(source), transfer: 1)
            loop.run(until: { false }, deadline: .after(seconds: 0.05))
            #expect(sender.pendingWrites == 1, "the frame is still being spliced")
            receiver.close()
            loop.run(until: { sender.failure != nil }, deadline: .after(seconds: 10))
            let text = "\(sender.failure.map { "\($0)" } ?? "no failure")"
            #expect(text.contains("rank 1") && text.contains("rank 0"), "\(text)")
            #expect(!owner.completed.contains(1), "a send the receiver never read completed")
            sender.close()
            #expect(sender.pendingWrites == 0)
        }
    }

    @Test("a consumed frame with no acknowledged frame outstanding fails the link, naming the peer")
    func strayConsumedFrame() throws {
        try withPair { loop, sender, receiver, owner in
            receiver.write(FrameHeader(kind: .consumed, sender: 1))
            loop.run(until: { !owner.failed.isEmpty }, deadline: .after(seconds: 10))
            let text = "\(owner.failed)"
            #expect(text.contains("consumed frame") && text.contains("rank 1"), "\(text)")
        }
    }
}

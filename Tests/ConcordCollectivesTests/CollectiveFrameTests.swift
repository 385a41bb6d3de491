import ConcordCollectives
import ConcordCore
import ConcordTestSupport
import Testing

/// A transport that records every frame a rank posts, then passes it on.
final class RecordingTransport: Transport {
    struct Frame: Sendable {
        let peer: Int
        let tag: SegmentTag
    }
    let inner: Transport
    private(set) var sent = [Frame]()
    private(set) var received = [Frame]()

    init(_ inner: Transport) { self.inner = inner }

    var rank: Int { inner.rank }
    var worldSize: Int { inner.worldSize }

    func send(to peer: Int, tag: SegmentTag, from bytes: UnsafeRawBufferPointer) throws -> TransferID {
        #expect(bytes.count == tag.byteCount, "rank \(rank) sends \(bytes.count) bytes for \(tag)")
        sent.append(Frame(peer: peer, tag: tag))
        return try inner.send(to: peer, tag: tag, from: bytes)
    }

    func receive(
        from peer: Int, tag: SegmentTag, into bytes: UnsafeMutableRawBufferPointer, reducer: Reducer?
    ) throws -> TransferID {
        #expect(bytes.count == tag.byteCount, "rank \(rank) receives into \(bytes.count) bytes for \(tag)")
        received.append(Frame(peer: peer, tag: tag))
        return try inner.receive(from: peer, tag: tag, into: bytes, reducer: reducer)
    }

    func wait(_ transfer: TransferID) throws { try inner.wait(transfer) }
    func waitAll() throws { try inner.waitAll() }
}

@Suite("What collectives put on the wire")
struct CollectiveFrameTests {
    @Test(
        "frames go right, come from the left, carry the collective and count, fill every hop; bytes match the cost",
        arguments: Collective.allCases, 1...5)
    func frames(_ collective: Collective, ranks n: Int) {
        for count in [0, 5, 1000] {
            let root = count % n
            let call = Call(
                collective: collective, dataType: .float16, op: .max, count: count, root: root, segmentBytes: 64,
                sequence: 42)
            let world = InMemoryWorld(worldSize: n, timeout: 20)
            let results = withRanks(n) {
                rank -> (sent: [RecordingTransport.Frame], received: [RecordingTransport.Frame]) in
                let size = call.dataType.size
                var input = [UInt8](repeating: 0, count: collective.inputCount(count, ranks: n) * size)
                var output = [UInt8](repeating: 0, count: collective.outputCount(count, ranks: n) * size)
                let transport = RecordingTransport(world.transport(rank: rank))
                try input.withUnsafeMutableBytes { i in
                    try output.withUnsafeMutableBytes { o in try call.perform(transport: transport, input: i, output: o)
                    }
                }
                return (transport.sent, transport.received)
            }
            var sentElements = 0
            for (rank, result) in results.enumerated() {
                guard case .success(let (sent, received)) = result else {
                    Issue.record("\(call) ranks \(n): rank \(rank) failed: \(result)")
                    continue
                }
                let right = (rank + 1) % n
                let left = (rank + n - 1) % n
                #expect(sent.allSatisfy { $0.peer == right } && received.allSatisfy { $0.peer == left })
                let reduces = collective == .allReduce || collective == .reduceScatter || collective == .reduce
                for frame in sent + received {
                    #expect(frame.tag.collective == collective.kind && frame.tag.count == count)
                    #expect(frame.tag.sequence == 42 && frame.tag.dataType == .float16)
                    if reduces { #expect(frame.tag.op == .max) }
                }
                // Every collective uses every hop: a chain is closed by one empty frame from its tail to its head.
                let sends = n > 1
                let receives = n > 1
                let isTail: Bool
                switch collective {
                case .broadcast: isTail = right == root
                case .reduce: isTail = rank == root
                default: isTail = false
                }
                #expect(sends ? !sent.isEmpty : sent.isEmpty, "\(call) ranks \(n): rank \(rank) sent \(sent.count)")
                #expect(
                    receives ? !received.isEmpty : received.isEmpty,
                    "\(call) ranks \(n): rank \(rank) received \(received.count)")
                let elements = sent.reduce(0) { $0 + $1.tag.length }
                sentElements += elements
                switch collective {
                case .reduceScatter, .allGather:
                    #expect(elements == (n - 1) * count, "each rank sends n-1 blocks")
                case .broadcast, .reduce:
                    #expect(
                        elements == (isTail || n == 1 ? 0 : count), "each link of the chain carries the buffer once")
                case .allReduce:
                    break
                }
            }
            if collective == .allReduce {
                if count * call.dataType.size <= call.gatherBytes {
                    #expect(
                        sentElements == n * (n - 1) * count, "small buffers: every rank passes on n-1 whole buffers")
                } else {
                    #expect(sentElements == 2 * (n - 1) * count, "2(n-1)/n of the buffer per rank")
                }
            }
        }
    }
}

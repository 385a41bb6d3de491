// A ring link through shared memory, for ring neighbours on one host (the ring itself: SharedMemoryChannel).
//
//   rank r (sending end)                                          rank r+1 (receiving end)
//   send(tag, bytes) ─▶ [pending sends] ─pump─▶ ║ header|payload|pad … ║ ─pump─▶ [posted receives]
//                                                                               stored, or combined
//   TCP r ─────────── hello, heartbeats, abort, bye, and doorbells ──────────▶ TCP r+1
//
// The frames in the ring are the TCP frames (48-byte header, payload), each padded to a multiple of 8
// bytes: every payload then starts 8-aligned in a ring whose size is a power of two, so no element ever
// straddles its end and a reduction reads the ring in place, without a copy. A data frame is checked
// against the posted receive before any payload byte is touched, exactly as on TCP, and a frame that
// arrives before its receive is posted stays in the ring (the producer stalls when it is full: bounded
// memory, as TCP flow control gives).
//
// Nobody runs a thread for the link: bytes move whenever the driving thread waits (`pump`). A side about
// to sleep in epoll announces it in the shared header (`prepareToBlock`); the other side, after giving it
// data or room, sends a one-frame doorbell on the TCP connection between them, which wakes the sleeper's
// loop. The link's liveness stays with TCP: a peer that dies closes its socket, one that hangs stops its
// heartbeats. A send is complete once its bytes are in the ring; a receive once they are in the caller's
// buffer.
import ConcordCore

/// One direction of a ring link through shared memory: the sending end or the receiving end.
final class SharedMemoryLink {
    /// Largest piece a receive combines or copies before it frees the ring space behind it.
    static let pieceBytes = 256 << 10
    /// Frames are padded to this many bytes in the ring.
    static let alignment = 8

    let channel: SharedMemoryChannel
    let rank: Int
    let peer: Int
    /// Sends the doorbell frame to the peer (over TCP).
    private let ringDoorbell: () -> Void
    /// Whether the TCP connection to the peer has ended. A peer that fails or shuts down closes its end of
    /// the ring only after its abort or bye went out on TCP: a closed ring is reported as an error only
    /// once TCP has delivered that, so the error names the root cause, not this link.
    private let connectionEnded: () -> Bool
    /// Reports a finished send or receive.
    private let completed: (Int) -> Void

    // The sending end.
    private struct PendingSend {
        let id: Int
        let header: FrameHeader
        let payload: UnsafeRawBufferPointer
        /// Bytes of header + payload + padding already in the ring.
        var done = 0
        var total: Int { SharedMemoryLink.padded(FrameHeader.size + payload.count) }
    }
    // `@exclusivity(unchecked)`: data-path state of the loop's driver (see UVTransport's `left`).
    @exclusivity(unchecked) private var sends: [PendingSend] = []
    @exclusivity(unchecked) private var sendHead = 0
    /// A frame header being written or read, followed by `alignment` zero bytes (the padding's source).
    private let headerBytes = UnsafeMutableRawPointer.allocate(
        byteCount: FrameHeader.size + SharedMemoryLink.alignment, alignment: 8)

    // The receiving end.
    private enum ReadState {
        case header(got: Int)
        /// A header arrived before its receive was posted.
        case waitingForReceive(FrameHeader)
        case payload(FrameHeader, got: Int)
        case padding(left: Int)
    }
    @exclusivity(unchecked) private var state = ReadState.header(got: 0)
    @exclusivity(unchecked) private var receives: [PostedReceive] = []
    @exclusivity(unchecked) private var receiveHead = 0

    init(
        channel: SharedMemoryChannel, rank: Int, peer: Int, ringDoorbell: @escaping () -> Void,
        connectionEnded: @escaping () -> Bool, completed: @escaping (Int) -> Void
    ) {
        self.channel = channel
        self.rank = rank
        self.peer = peer
        self.ringDoorbell = ringDoorbell
        self.connectionEnded = connectionEnded
        self.completed = completed
        headerBytes.initializeMemory(as: UInt8.self, repeating: 0, count: FrameHeader.size + Self.alignment)
    }

    deinit {
        headerBytes.deallocate()
        channel.close()
    }

    static func padded(_ bytes: Int) -> Int { (bytes + alignment - 1) / alignment * alignment }

    // MARK: - Sending end

    /// Queues a data frame; its bytes go into the ring at the next `pump` (and at once when they fit).
    func send(_ header: FrameHeader, payload: UnsafeRawBufferPointer, transfer: Int) throws {
        sends.append(PendingSend(id: transfer, header: header, payload: payload))
        try pump()
    }

    /// Copies pending frames into the ring while it has room; returns whether any byte moved.
    /// - Throws: `peerLost` when frames are pending and the receiving end has closed the ring.
    private func pumpSends() throws -> Bool {
        if sendHead < sends.count && channel.peerClosed && connectionEnded() {
            throw ConcordError.peerLost(
                rank: rank, peer: peer, reason: "it closed its end of the shared memory with frames still to come")
        }
        var moved = false
        var wake = false
        while sendHead < sends.count {
            var send = sends[sendHead]
            if send.done == 0 { send.header.encode(into: headerBytes) }
            while send.done < send.total {
                let (source, count) = piece(of: send)
                // Publish whole 8-byte units (the last piece of a payload may end sooner): an element is
                // never visible in part, so the receiver can always combine everything it sees.
                let (first, second) = channel.writableSpans()
                let room = (first.count + second.count) & ~(Self.alignment - 1)
                if room == 0 { break }
                let written = channel.write(UnsafeRawBufferPointer(start: source, count: min(count, room)))
                wake = wake || written.wakeConsumer
                if written.count == 0 { break }
                send.done += written.count
                moved = true
            }
            sends[sendHead] = send
            guard send.done == send.total else { break }
            sendHead += 1
            completed(send.id)
        }
        if sendHead == sends.count {
            sends.removeAll(keepingCapacity: true)
            sendHead = 0
        }
        if wake { ringDoorbell() }
        return moved
    }

    /// The contiguous bytes of `send`'s frame that follow its first `done` bytes.
    private func piece(of send: PendingSend) -> (UnsafeRawPointer, Int) {
        let header = FrameHeader.size
        let payload = send.payload.count
        if send.done < header { return (UnsafeRawPointer(headerBytes + send.done), header - send.done) }
        if send.done < header + payload {
            return (send.payload.baseAddress! + (send.done - header), header + payload - send.done)
        }
        return (UnsafeRawPointer(headerBytes + header), send.total - send.done)
    }

    // MARK: - Receiving end

    /// Queues a receive; the next data frame in the ring must match `receive.tag`.
    func post(_ receive: PostedReceive) throws {
        receives.append(receive)
        try pump()
    }

    /// Moves bytes out of the ring into posted receives; returns whether any byte moved.
    private func pumpReceives() throws -> Bool {
        var moved = false
        var wake = false
        defer { if wake { ringDoorbell() } }
        while true {
            switch state {
            case .header(let got):
                let (first, second) = channel.readableSpans()
                let available = first.count + second.count
                if available == 0 {
                    if receiveHead < receives.count && channel.isAtEnd && connectionEnded() { throw departed() }
                    return moved
                }
                let n = min(FrameHeader.size - got, available)
                let read = channel.read(into: UnsafeMutableRawBufferPointer(start: headerBytes + got, count: n))
                wake = wake || read.wakeProducer
                moved = true
                if got + n < FrameHeader.size {
                    state = .header(got: got + n)
                    return moved
                }
                let header: FrameHeader
                do {
                    header = try FrameHeader.decode(headerBytes)
                } catch {
                    throw malformed("undecodable frame header in shared memory (\(error))")
                }
                guard header.kind == .data, header.tag != nil, header.sender == UInt32(peer) else {
                    throw malformed(
                        "a \(header.kind) frame from sender \(header.sender) where data frames from rank \(peer) belong"
                    )
                }
                state = .waitingForReceive(header)
            case .waitingForReceive(let header):
                guard receiveHead < receives.count else { return moved }
                try receives[receiveHead].tag.check(received: header.tag!, rank: rank, peer: peer)
                if header.payloadLength == 0 {
                    finishReceive(header)
                } else {
                    state = .payload(header, got: 0)
                }
            case .payload(let header, let got):
                let (first, _) = channel.readableSpans()
                let left = Int(header.payloadLength) - got
                var n = min(first.count, left, Self.pieceBytes)
                let receive = receives[receiveHead]
                if let reducer = receive.reducer {
                    // Whole elements only: the producer may have published part of one (the rest follows in
                    // place: an element never straddles the ring's end, as payloads start 8-aligned).
                    n -= n % reducer.elementSize
                    if n == 0 {
                        if channel.isAtEnd && connectionEnded() { throw departed() }
                        return moved
                    }
                    reducer.combine(receive.destination! + got, first.baseAddress!, n / reducer.elementSize)
                } else {
                    if n == 0 {
                        if channel.isAtEnd && connectionEnded() { throw departed() }
                        return moved
                    }
                    (receive.destination! + got).copyMemory(from: first.baseAddress!, byteCount: n)
                }
                wake = channel.commitRead(n) || wake
                moved = true
                if n == left {
                    finishReceive(header)
                } else {
                    state = .payload(header, got: got + n)
                }
            case .padding(let left):
                let (first, second) = channel.readableSpans()
                let n = min(left, first.count + second.count)
                if n == 0 { return moved }
                wake = channel.commitRead(n) || wake
                state = n == left ? .header(got: 0) : .padding(left: left - n)
            }
        }
    }

    private func finishReceive(_ header: FrameHeader) {
        let pad =
            Self.padded(FrameHeader.size + Int(header.payloadLength)) - FrameHeader.size
            - Int(header.payloadLength)
        state = pad > 0 ? .padding(left: pad) : .header(got: 0)
        let id = receives[receiveHead].id
        receiveHead += 1
        if receiveHead == receives.count {
            receives.removeAll(keepingCapacity: true)
            receiveHead = 0
        }
        completed(id)
    }

    /// The sending end closed the ring (it shut down or failed) before the frame a receive waits for.
    private func departed() -> ConcordError {
        .peerLost(
            rank: rank, peer: peer,
            reason: "it closed its end of the shared memory before sending what rank \(rank) expects")
    }

    private func malformed(_ detail: String) -> ConcordError {
        .malformedFrame(rank: rank, peer: "rank \(peer) (shared memory)", detail: detail)
    }

    // MARK: - Both ends

    /// Moves whatever can move now; returns whether anything did.
    /// - Throws: `ConcordError` for a frame that does not match its receive (or is not a data frame).
    @discardableResult
    func pump() throws -> Bool {
        switch channel.role {
        case .producer: return try pumpSends()
        case .consumer: return try pumpReceives()
        }
    }

    /// Before the driving thread sleeps: announces the sleep where this end waits for its peer. Returns
    /// false when it must not sleep (the peer made progress meanwhile: pump again).
    func prepareToBlock() -> Bool {
        if channel.peerClosed { return true }  // its TCP connection's end (or abort) will wake us
        switch channel.role {
        case .producer: return sendHead == sends.count || channel.producerPrepareToSleep()
        case .consumer: return receiveHead == receives.count || channel.consumerPrepareToSleep()
        }
    }

    /// Tells the peer this end is gone (it may be asleep waiting for us) and unmaps the ring.
    func close() {
        if channel.markClosed() { ringDoorbell() }
        channel.close()
    }
}

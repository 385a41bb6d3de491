// A framed TCP connection between two Concord processes.
//
// Reading is a small state machine driven by libuv's alloc/read callbacks:
//
//   header ──48 bytes──▶ data frame? ──receive posted──▶ data(got) ──payload done──▶ header
//     │                     ├─no receive, small─▶ early(got) ──payload done──▶ queued; header
//     │                     └─no receive, large─▶ parked (reading stopped)
//     └──────────────────▶ control frame ──▶ control(got) ──▶ delegate ──▶ header
//
// Reads go into a 64 KiB inbox that stays in L2, as much as the socket holds, and the bytes are parsed
// from there: one read() usually brings a header and its payload, or several small frames, instead of
// one read for each header, each payload and a last one that finds the socket empty (measured: 5.4
// reads per 4 KiB all-reduce at N = 4 before). Reducing receives combine straight out of the inbox into
// the caller's buffer. A plain receive with at least 16 KiB still to come and nothing buffered is read
// straight into the caller's buffer instead (no copy); while such a receive of at least 64 KiB is the next
// one, a read stops at the end of the next header, so that its payload does not pass through the inbox
// (one more read per frame instead of a copy of up to 64 KiB; A/B at N = 2, 7 rounds: 1 MiB 328 µs against
// 354; 16 KiB frames were slower with it, 16.9 against 14.2 µs).
// A small data frame that arrives before its receive is posted (the peer is already in its next step) is
// kept, up to `earlyFrameBytes` per link (in the link's arena, or a heap buffer of its own when the arena
// is full behind frames still held), and handed over when the receive is posted: the reader keeps going,
// which saves the epoll_ctl pair and the extra wake-up of stopping and restarting it (measured: 1.4 stops
// per 4 KiB all-reduce at N = 4). Any other early frame parks the reader: TCP flow control then holds the
// sender back, so memory stays bounded however fast the peer is.
//
// Writes hand the kernel the 48-byte header and the caller's payload as two buffers of one writev, at once
// when nothing is queued (`uv_try_write`), else as a queued uv_write of what remains; no copy.
//
// Zero-copy sends. A data frame of at least `FrameHeader.acknowledgedPayloadBytes` (1 MiB) is sent without
// the kernel's copy into socket buffers, when nothing is queued: its payload pages are vmspliced into a pipe
// and spliced from there into the socket (CConcordSplice), so the socket holds references to the caller's
// memory. What the socket does not take at once is spliced as it drains (a poll handle on a duplicate of its
// descriptor says when), and frames written meanwhile wait behind it, in order. The
// sending side's copy was a quarter of the CPU of a large TCP all-reduce on one machine; without it, 4-64 MiB
// all-reduces take up to 19% less time and CPU at N = 2 and 4 (docs/algorithms.md, "Zero-copy sends over TCP").
// The price: the bytes are read from the caller's memory when the receiver reads them, not when the
// sender wrote them, so the caller must not touch the buffer until then. Hence the receiver acknowledges
// every data frame of that size once its whole payload is out of its socket (a `consumed` frame, in
// order), and the send completes only then, whether it was spliced or not (both ends agree on which frames
// are acknowledged by their size alone; protocol version 3). After the acknowledgement the kernel may
// still hold the pages (a retransmission): only bytes the receiver already has would be sent again, and
// TCP drops them there. A failing rank gives receivers up to a second to consume what it spliced
// (UVTransport.quiesce) before its error reaches the caller.
//
// Authentication: with an authenticator, a link opens with the handshake (`auth` frames, both ways at
// once) and nothing else: control frames the owner writes meanwhile wait in a queue, and any other frame
// from the peer before it has proven itself fails the link. A failed handshake fails the link with the
// reason, on both sides (each side sends its proof before it checks the other's).
// A link keeps itself alive (a retained reference in `handle.data`) until its close callback runs.
internal import CConcordSplice
internal import CLibUV
import ConcordCore
import Foundation

/// What a link tells its owner.
protocol PeerLinkDelegate: AnyObject {
    /// A control frame (anything but data and heartbeat) arrived.
    func link(_ link: PeerLink, received header: FrameHeader, payload: [UInt8])
    /// The link failed; `link.failure` holds why. Called once.
    func linkFailed(_ link: PeerLink)
    /// A posted send or receive finished.
    func transferCompleted(_ id: Int)
}

/// A receive waiting for its frame.
struct PostedReceive {
    let id: Int
    let tag: SegmentTag
    let destination: UnsafeMutableRawPointer?
    let reducer: Reducer?
    /// Payload bytes already stored or combined into `destination`.
    var done = 0
}

final class PeerLink {
    /// Bytes of the inbox: small enough to stay in L2 between the kernel's copy and the combine (see
    /// docs/algorithms.md for the measurement).
    static let inboxBytes = 64 * 1024
    /// A plain receive reads straight into the caller's memory when this many payload bytes are still to
    /// come and the inbox is empty.
    static let directReadBytes = 16 * 1024
    /// Payload bytes of frames that came before their receives that a link holds at most (see the file
    /// comment); a frame that does not fit parks the reader instead.
    static let earlyFrameBytes = 64 * 1024
    /// Capacity asked for the pipe of zero-copy sends (the system's pipe-max-size is usually 1 MiB).
    static let splicePipeBytes = 1 << 20
    let loop: EventLoop
    let tcp: UnsafeMutablePointer<uv_tcp_t>
    /// This process's rank, for error messages (-1 before it has one).
    let rank: Int
    /// The rank at the other end, once the handshake told us.
    var peerRank: Int?
    weak var delegate: PeerLinkDelegate?
    // `@exclusivity(unchecked)`: data-path state of the loop's driver (see UVTransport's `left`).
    @exclusivity(unchecked) private(set) var failure: ConcordError?
    @exclusivity(unchecked) private(set) var isClosing = false
    /// Set by the owner when an end of stream is expected (the peer said bye).
    var peerSaidBye = false
    /// When a byte last came in and a frame last went out (`EventLoop.coarseNanoseconds`), for liveness.
    @exclusivity(unchecked) private(set) var lastHeard = EventLoop.coarseNanoseconds()
    @exclusivity(unchecked) private(set) var lastWritten = EventLoop.coarseNanoseconds()
    @exclusivity(unchecked) private(set) var pendingWrites = 0

    private enum ReadState {
        case header
        case control(FrameHeader, got: Int)
        case data(FrameHeader, got: Int)
        case early(FrameHeader, got: Int)
        case parked(FrameHeader)
        case stopped
    }
    @exclusivity(unchecked) private var state = ReadState.header
    @exclusivity(unchecked) private var reading = false
    private var controlBytes: UnsafeMutableRawPointer?
    /// The header of a frame written at once (`uv_try_write`) or being spliced; a queued write keeps its own copy.
    private let headerScratch = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
    /// The two buffers (header, payload) of a frame written at once: no array is built per frame.
    private let tryBuffers = UnsafeMutablePointer<uv_buf_t>.allocate(capacity: 2)
    /// Bytes read and not yet parsed are `inbox[inboxStart..<inboxEnd]` (allocated at the first read).
    private var inbox: UnsafeMutableRawPointer?
    @exclusivity(unchecked) private var inboxStart = 0
    @exclusivity(unchecked) private var inboxEnd = 0
    /// Whether the read in progress goes straight into the current receive's memory.
    @exclusivity(unchecked) private var readingDirect = false
    @exclusivity(unchecked) private var receives: [PostedReceive] = []
    @exclusivity(unchecked) private var receiveHead = 0
    /// Complete frames that came before their receives, oldest first, and the payload bytes they hold
    /// (`earlyBytes` also counts the frame being read in the `early` state).
    @exclusivity(unchecked) private var earlyFrames = [(header: FrameHeader, payload: UnsafeMutableRawBufferPointer)]()
    @exclusivity(unchecked) private var earlyHead = 0
    @exclusivity(unchecked) private var earlyBytes = 0
    /// The payload of the frame being read in the `early` state.
    @exclusivity(unchecked) private var earlyPayload = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    /// Where early payloads go (`earlyFrameBytes`, allocated at the first): one after the other from
    /// `arenaUsed`, back to the start once none is held (`arenaHeld`). A small collective's frames often
    /// come before their receives, and a malloc per frame showed in profiles. A payload that does not fit
    /// behind the ones held is allocated on its own.
    @exclusivity(unchecked) private var arena: UnsafeMutableRawPointer?
    @exclusivity(unchecked) private var arenaUsed = 0
    @exclusivity(unchecked) private var arenaHeld = 0
    /// The authentication in progress; nil once complete (or when there is none).
    private var authentication: (any LinkAuthenticationSession)?
    /// Control frames written before the handshake completed, sent as soon as it does.
    private var heldWrites: [(FrameHeader, [UInt8])] = []
    /// Whether the peer has proven itself (true when no authenticator is configured).
    @exclusivity(unchecked) private(set) var isAuthenticated = true
    /// Whether large payloads are spliced (see "Zero-copy sends"); off after the system refused once.
    @exclusivity(unchecked) private var splicing = false
    /// The pipe of zero-copy sends (read end, write end) and /dev/null, opened at the first.
    private var splicePipe: [Int32] = []
    /// Payload bytes handed to the socket without a copy, for tests and diagnostics.
    @exclusivity(unchecked) private(set) var splicedBytes = 0
    /// The sends of acknowledged frames written and not yet acknowledged, oldest first (nil: no transfer).
    @exclusivity(unchecked) private var unconsumed: [Int?] = []
    @exclusivity(unchecked) private var unconsumedHead = 0
    /// Acknowledged frames sent whose `consumed` frame has not come yet.
    var awaitingConsumption: Int { unconsumed.count - unconsumedHead }
    /// The frame being spliced: its header (encoded in `headerScratch`, which no other write touches
    /// meanwhile), its payload, and the bytes of both handed so far. What the socket does not take at once
    /// is spliced as it drains (`spliceMore`), and frames written meanwhile wait behind it in
    /// `behindSplice`, in order (they count in `pendingWrites`).
    private struct SpliceInFlight {
        let header: FrameHeader
        let payload: UnsafeRawBufferPointer
        var done = 0
        var total: Int { FrameHeader.size + payload.count }
    }
    @exclusivity(unchecked) private var spliceInFlight: SpliceInFlight?
    @exclusivity(unchecked) private var behindSplice:
        [(header: FrameHeader, control: [UInt8], payload: UnsafeRawBufferPointer?, transfer: Int?)] = []
    /// Tells when the socket drains while a frame is being spliced: a poll handle on a duplicate of the
    /// socket's descriptor (libuv lets no second watcher on the descriptor itself), made at the first need.
    private var writablePoll: UnsafeMutablePointer<uv_poll_t>?

    /// A link not yet connected; with a `family` (AF_INET, AF_INET6) its socket exists at once, so options
    /// can be set before it connects.
    init(loop: EventLoop, rank: Int, family: Int32 = AF_UNSPEC) throws {
        self.loop = loop
        self.rank = rank
        tcp = .allocate(capacity: 1)
        let rc = uv_tcp_init_ex(loop.loop, tcp, UInt32(family))
        if rc < 0 {
            tcp.deallocate()  // the rest is freed by deinit, which runs when a fully initialized init throws
            try uvCheck(rc, "uv_tcp_init", rank: rank)
        }
        tcp.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    deinit {
        controlBytes?.deallocate()
        headerScratch.deallocate()
        tryBuffers.deallocate()
        inbox?.deallocate()
        for fd in splicePipe where fd >= 0 { Glibc.close(fd) }
        dropEarlyFrames()
        arena?.deallocate()
    }

    private func dropEarlyFrames() {
        for frame in earlyFrames[earlyHead...] { releaseEarly(frame.payload) }
        earlyFrames.removeAll()
        earlyHead = 0
        releaseEarly(earlyPayload)
        earlyPayload = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        earlyBytes = 0
    }

    /// Memory for an early payload of `count` bytes (see `arena`).
    private func allocateEarly(_ count: Int) -> UnsafeMutableRawBufferPointer {
        let start = (arenaUsed + 63) & ~63
        guard count > 0, start + count <= Self.earlyFrameBytes else {
            return .allocate(byteCount: count, alignment: 64)
        }
        if arena == nil { arena = .allocate(byteCount: Self.earlyFrameBytes, alignment: 64) }
        arenaUsed = start + count
        arenaHeld += 1
        return UnsafeMutableRawBufferPointer(start: arena! + start, count: count)
    }

    private func releaseEarly(_ payload: UnsafeMutableRawBufferPointer) {
        guard let base = payload.baseAddress else { return }
        if let arena, base >= arena, base < arena + Self.earlyFrameBytes {
            arenaHeld -= 1
            if arenaHeld == 0 { arenaUsed = 0 }
        } else {
            payload.deallocate()
        }
    }

    /// Who is at the other end, for messages: "rank 3", or the address before the handshake.
    var peerLabel: String { peerRank.map { "rank \($0)" } ?? (remoteAddress?.description ?? "an unknown peer") }

    var remoteAddress: SocketAddress? { address(uv_tcp_getpeername) }
    var localAddress: SocketAddress? { address(uv_tcp_getsockname) }

    /// The socket's file descriptor (nil before it has one).
    var fileDescriptor: Int32? {
        var fd: uv_os_fd_t = -1
        return uv_fileno(tcp.asHandle, &fd) == 0 ? fd : nil
    }

    /// The congestion control of the socket (nil before it has one).
    var congestionControl: String? { fileDescriptor.flatMap(LinkTuning.congestionControl(of:)) }

    private func address(
        _ get: (UnsafePointer<uv_tcp_t>?, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<Int32>?) -> Int32
    ) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutableBytes(of: &storage) {
            get(tcp, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
        }
        guard rc == 0 else { return nil }
        return withUnsafeBytes(of: storage) { SocketAddress(copying: $0.baseAddress!, length: Int(length)) }
    }

    /// TCP_NODELAY, keepalive probes every second, TCP_USER_TIMEOUT so a silent partition surfaces as an
    /// error in `timeout` seconds even while data is unacknowledged, and a fixed receive buffer of
    /// `receiveBuffer` bytes (0: the kernel's autotuning; see `UVTransport.defaultReceiveBufferBytes`),
    /// and whether large payloads are spliced (`zeroCopy`; see "Zero-copy sends").
    /// (The congestion control is chosen where the socket is made: Connector, Listener.)
    func configure(timeout: Double, receiveBuffer: Int, zeroCopy: Bool = true) {
        splicing = zeroCopy
        uv_tcp_nodelay(tcp, 1)
        uv_tcp_keepalive(tcp, 1, 1)
        var fd: uv_os_fd_t = -1
        if uv_fileno(tcp.asHandle, &fd) == 0 {
            var ms = UInt32(max(1000, timeout * 1000))
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, &ms, socklen_t(MemoryLayout<UInt32>.size))
            if receiveBuffer > 0 {
                var bytes = Int32(clamping: receiveBuffer)
                _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, socklen_t(MemoryLayout<Int32>.size))
            }
        }
    }

    // MARK: - Reading

    func startReading() {
        guard !reading, !isClosing, failure == nil else { return }
        if case .parked = state { return }
        if case .stopped = state { return }
        let rc = uv_read_start(tcp.asStream, linkAllocate, linkRead)
        if rc < 0 {
            fail(.peerLost(rank: rank, peer: peerRank ?? -1, reason: "cannot read: \(uvErrorText(rc).message)"))
        } else {
            reading = true
        }
    }

    private func stopReading() {
        if reading { uv_read_stop(tcp.asStream) }
        reading = false
    }

    /// Starts the handshake (before any other write); the peer's frames are refused until it completes.
    func authenticate(with authenticator: (any LinkAuthenticator)?, client: Bool) {
        guard let authenticator else { return }
        var session = authenticator.session(client: client)
        isAuthenticated = false
        write(FrameHeader(kind: .auth, sender: nil), control: session.start(), bypassingAuthentication: true)
        authentication = session
    }

    private func handleAuthentication(_ header: FrameHeader, payload: [UInt8]) {
        guard var session = authentication else {
            fail(.malformedFrame(rank: rank, peer: peerLabel, detail: "an authentication message after the handshake"))
            return
        }
        do {
            if let reply = try session.next(received: payload) {
                write(FrameHeader(kind: .auth, sender: nil), control: reply, bypassingAuthentication: true)
            }
        } catch {
            authentication = nil
            fail(.joinRefused(rank: rank, peer: peerLabel, reason: "authentication failed: \(error)"))
            return
        }
        authentication = session
        if session.isComplete {
            authentication = nil
            isAuthenticated = true
            let held = heldWrites
            heldWrites.removeAll()
            for (header, control) in held { write(header, control: control) }
        }
    }

    /// Queues a receive; the next data frame from the peer must match `receive.tag`.
    func post(_ receive: PostedReceive) {
        if earlyHead < earlyFrames.count {
            let (header, payload) = earlyFrames[earlyHead]
            earlyHead += 1
            if earlyHead == earlyFrames.count {
                earlyFrames.removeAll(keepingCapacity: true)
                earlyHead = 0
            }
            earlyBytes -= payload.count
            deliver(early: header, payload: payload, to: receive)
            return
        }
        receives.append(receive)
        if case .parked(let header) = state {
            state = .header
            lastHeard = EventLoop.coarseNanoseconds()
            begin(data: header)
            parseInbox()
            startReading()
        }
    }

    /// Whether the reader waits for a receive to be posted (the peer is ahead of us; not a silence).
    var isParked: Bool {
        if case .parked = state { return true }
        return false
    }

    /// Whether the peer owes us bytes: a receive is posted and not complete.
    var isAwaitingData: Bool { receiveHead < receives.count }

    fileprivate func allocate(_ buf: UnsafeMutablePointer<uv_buf_t>) {
        switch state {
        case .parked, .stopped:
            buf.pointee = uv_buf_init(nil, 0)
            return
        case .data(let header, let got) where inboxStart == inboxEnd:
            // A large plain payload with nothing buffered goes straight into the caller's memory.
            let receive = receives[receiveHead]
            let remaining = Int(header.payloadLength) - got
            if receive.reducer == nil && remaining >= Self.directReadBytes {
                readingDirect = true
                buf.pointee = uv_buf_init(
                    (receive.destination! + receive.done).assumingMemoryBound(to: CChar.self),
                    UInt32(min(remaining, 1 << 30)))
                return
            }
        default:
            break
        }
        readingDirect = false
        if inbox == nil { inbox = .allocate(byteCount: Self.inboxBytes, alignment: 64) }
        if inboxStart > 0 {
            // Keep the unparsed bytes (a partial header or element) at the front: the inbox then always
            // has room, and a combine reads from an aligned start.
            let pending = inboxEnd - inboxStart
            if pending > 0 { inbox!.copyMemory(from: inbox! + inboxStart, byteCount: pending) }
            inboxStart = 0
            inboxEnd = pending
        }
        var room = Self.inboxBytes - inboxEnd
        if case .header = state, receiveHead < receives.count, receives[receiveHead].reducer == nil,
            receives[receiveHead].tag.byteCount >= Self.inboxBytes
        {
            // The next frame is most likely this large plain receive's: read no more than its header, so
            // that its payload goes straight to the caller's memory instead of through the inbox. (Below
            // the inbox's size the extra read costs more than the copy it saves.)
            room = min(room, max(1, FrameHeader.size - inboxEnd))
        }
        buf.pointee = uv_buf_init((inbox! + inboxEnd).assumingMemoryBound(to: CChar.self), UInt32(room))
    }

    fileprivate func didRead(_ n: Int) {
        if n < 0 {
            let code = Int32(n)
            if code == UV_ENOBUFS.rawValue { return }
            let reason: String
            if code == UV_EOF.rawValue {
                if peerSaidBye {
                    reason = "it shut down its communicator"
                } else if case .header = state, inboxStart == inboxEnd {
                    reason = "connection closed: the process ended or closed its socket"
                } else {
                    reason = "connection closed in the middle of a frame: the process ended"
                }
            } else {
                reason = "connection failed: \(uvErrorText(code).message)"
            }
            fail(.peerLost(rank: rank, peer: peerRank ?? -1, reason: reason))
            return
        }
        if n == 0 { return }
        lastHeard = EventLoop.coarseNanoseconds()
        if readingDirect {
            guard case .data(let header, let got) = state else { return }
            receives[receiveHead].done += n
            advance(header, got: got + n)
        } else {
            inboxEnd += n
            parseInbox()
        }
    }

    /// Moves the inbox's bytes into frames: headers, control payloads, early frames and data (stored or
    /// combined into the caller's memory), until it is empty or the next step needs more bytes.
    private func parseInbox() {
        while inboxStart < inboxEnd {
            let available = inboxEnd - inboxStart
            let bytes = inbox! + inboxStart
            switch state {
            case .header:
                guard available >= FrameHeader.size else { return }
                inboxStart += FrameHeader.size
                let header: FrameHeader
                do {
                    header = try FrameHeader.decode(bytes)
                } catch {
                    fail(decodeFailure(error))
                    return
                }
                handle(header)
            case .control(let header, let got):
                let take = min(available, Int(header.payloadLength) - got)
                (controlBytes! + got).copyMemory(from: bytes, byteCount: take)
                inboxStart += take
                if got + take < Int(header.payloadLength) {
                    state = .control(header, got: got + take)
                } else {
                    state = .header
                    let payload = [UInt8](UnsafeRawBufferPointer(start: controlBytes, count: Int(header.payloadLength)))
                    controlBytes?.deallocate()
                    controlBytes = nil
                    deliver(header, payload: payload)
                }
            case .early(let header, let got):
                let take = min(available, earlyPayload.count - got)
                (earlyPayload.baseAddress! + got).copyMemory(from: bytes, byteCount: take)
                inboxStart += take
                if got + take < earlyPayload.count {
                    state = .early(header, got: got + take)
                } else {
                    state = .header
                    acknowledge(header)
                    finishEarly(header)
                }
            case .data(let header, let got):
                let receive = receives[receiveHead]
                var take = min(available, Int(header.payloadLength) - got)
                if let reducer = receive.reducer {
                    take -= take % reducer.elementSize
                    guard take > 0 else { return }  // a partial element: wait for the rest
                    reducer.combine(receive.destination! + receive.done, bytes, take / reducer.elementSize)
                } else {
                    (receive.destination! + receive.done).copyMemory(from: bytes, byteCount: take)
                }
                inboxStart += take
                receives[receiveHead].done += take
                advance(header, got: got + take)
            case .parked, .stopped:
                return
            }
        }
    }

    /// `got` payload bytes of the current data frame are in place: completes its receive when whole.
    private func advance(_ header: FrameHeader, got: Int) {
        if got == Int(header.payloadLength) {
            state = .header
            acknowledge(header)
            completeReceive()
        } else {
            state = .data(header, got: got)
        }
    }

    private func decodeFailure(_ error: FrameHeader.DecodeError) -> ConcordError {
        switch error {
        case .version(let v):
            return .protocolVersion(
                rank: rank, peer: peerLabel, local: Int(FrameHeader.protocolVersion), remote: Int(v))
        case .badMagic(let m):
            return .malformedFrame(
                rank: rank, peer: peerLabel,
                detail:
                    "not a Concord frame (magic 0x\(String(m, radix: 16)), expected 0x\(String(FrameHeader.magic, radix: 16)))"
            )
        case .unknownKind(let k):
            return .malformedFrame(rank: rank, peer: peerLabel, detail: "unknown frame kind \(k)")
        case .oversizedControl(let length):
            return .malformedFrame(
                rank: rank, peer: peerLabel,
                detail: "control frame of \(length) bytes (at most \(FrameHeader.maxControlPayload))")
        }
    }

    private func handle(_ header: FrameHeader) {
        if !isAuthenticated && header.kind != .auth {
            fail(
                .joinRefused(
                    rank: rank, peer: peerLabel,
                    reason: "it sent a \(header.kind) frame before authenticating (no job secret, or another program)"))
            return
        }
        switch header.kind {
        case .data:
            guard let peer = peerRank, header.sender == UInt32(peer) else {
                fail(
                    .malformedFrame(
                        rank: rank, peer: peerLabel,
                        detail:
                            "data frame from sender \(header.sender) on a connection that has not completed its handshake as that rank"
                    ))
                return
            }
            guard header.tag != nil else {
                fail(
                    .malformedFrame(
                        rank: rank, peer: peerLabel,
                        detail:
                            "data frame with unknown codes (collective \(header.collective), dtype \(header.dataType), op \(header.op)) or a length of \(header.payloadLength) bytes that is not whole elements"
                    ))
                return
            }
            if receiveHead < receives.count {
                begin(data: header)
            } else if Int(header.payloadLength) <= Self.earlyFrameBytes - earlyBytes {
                earlyBytes += Int(header.payloadLength)
                earlyPayload = allocateEarly(Int(header.payloadLength))
                if header.payloadLength == 0 {
                    finishEarly(header)
                } else {
                    state = .early(header, got: 0)
                }
            } else {
                state = .parked(header)
                stopReading()
            }
        case .heartbeat:
            break
        case .consumed:
            guard unconsumedHead < unconsumed.count, header.payloadLength == 0 else {
                fail(
                    .malformedFrame(
                        rank: rank, peer: peerLabel,
                        detail: header.payloadLength == 0
                            ? "a consumed frame, but no frame of \(FrameHeader.acknowledgedPayloadBytes) bytes or more awaits one"
                            : "a consumed frame with a payload of \(header.payloadLength) bytes"))
                return
            }
            let transfer = unconsumed[unconsumedHead]
            unconsumedHead += 1
            if unconsumedHead == unconsumed.count {
                unconsumed.removeAll(keepingCapacity: true)
                unconsumedHead = 0
            }
            if let transfer { delegate?.transferCompleted(transfer) }
        default:
            if header.payloadLength == 0 {
                deliver(header, payload: [])
            } else {
                controlBytes = .allocate(byteCount: Int(header.payloadLength), alignment: 8)
                state = .control(header, got: 0)
            }
        }
    }

    private func deliver(_ header: FrameHeader, payload: [UInt8]) {
        if header.kind == .auth {
            handleAuthentication(header, payload: payload)
        } else {
            delegate?.link(self, received: header, payload: payload)
        }
    }

    /// A frame read in the `early` state is complete: its receive takes it if it was posted meanwhile,
    /// otherwise it waits in `earlyFrames`.
    private func finishEarly(_ header: FrameHeader) {
        let payload = earlyPayload
        earlyPayload = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        if receiveHead < receives.count {
            earlyBytes -= payload.count
            deliver(early: header, payload: payload, to: takeReceive())
        } else {
            earlyFrames.append((header, payload))
        }
    }

    /// Checks an early frame against its receive, stores or combines its payload, and completes it.
    private func deliver(early header: FrameHeader, payload: UnsafeMutableRawBufferPointer, to receive: PostedReceive) {
        defer { releaseEarly(payload) }
        do {
            try receive.tag.check(received: header.tag!, rank: rank, peer: peerRank ?? -1)
        } catch {
            fail(error as! ConcordError)
            return
        }
        if let base = payload.baseAddress, payload.count > 0 {
            if let reducer = receive.reducer {
                reducer.combine(receive.destination!, base, payload.count / reducer.elementSize)
            } else {
                receive.destination!.copyMemory(from: base, byteCount: payload.count)
            }
        }
        delegate?.transferCompleted(receive.id)
    }

    private func begin(data header: FrameHeader) {
        let receive = receives[receiveHead]
        do {
            try receive.tag.check(received: header.tag!, rank: rank, peer: peerRank ?? -1)
        } catch {
            fail(error as! ConcordError)
            return
        }
        if header.payloadLength == 0 {
            completeReceive()
        } else {
            state = .data(header, got: 0)
        }
    }

    private func completeReceive() {
        delegate?.transferCompleted(takeReceive().id)
    }

    /// The whole payload of a data frame is out of the socket: acknowledges it when its size says so.
    private func acknowledge(_ header: FrameHeader) {
        if header.payloadLength >= UInt64(FrameHeader.acknowledgedPayloadBytes) {
            write(FrameHeader(kind: .consumed, sender: rank >= 0 ? rank : nil))
        }
    }

    /// Takes the oldest posted receive off the queue.
    private func takeReceive() -> PostedReceive {
        let receive = receives[receiveHead]
        receiveHead += 1
        if receiveHead == receives.count {
            receives.removeAll(keepingCapacity: true)
            receiveHead = 0
        }
        return receive
    }

    // MARK: - Writing

    /// Queues a frame: `header`, then `control` bytes (copied) or `payload` (not copied: it must stay
    /// valid until the write completes). Returns false when the link can no longer write.
    @discardableResult
    /// `force` writes even after a failure (a last refuse or abort on a link that is about to close).
    func write(
        _ header: FrameHeader, control: [UInt8] = [], payload: UnsafeRawBufferPointer? = nil, transfer: Int? = nil,
        force: Bool = false, bypassingAuthentication: Bool = false
    ) -> Bool {
        guard force || failure == nil, !isClosing else { return false }
        if !isAuthenticated && !bypassingAuthentication && !force {
            precondition(payload == nil, "a data frame before the link is authenticated")
            heldWrites.append((header, control))
            return true
        }
        if spliceInFlight != nil {
            behindSplice.append((header, control, payload, transfer))
            pendingWrites += 1
            return true
        }
        var header = header
        header.payloadLength = UInt64(payload?.count ?? control.count)
        let headerCount = FrameHeader.size + control.count
        let payloadCount = payload?.count ?? 0
        // An acknowledged frame's send completes when its `consumed` frame comes, not when it is written.
        let acknowledged = header.kind == .data && payloadCount >= FrameHeader.acknowledgedPayloadBytes
        if acknowledged { unconsumed.append(transfer) }
        let transfer = acknowledged ? nil : transfer
        // With nothing queued, write at once (`uv_try_write`): a frame the socket takes whole completes
        // here, without a request, a callback on the next loop turn, and the epoll_ctl libuv makes after
        // every queued write completes (measured: one per frame). What the socket does not take is queued.
        if pendingWrites == 0 && acknowledged && splicing, let payload, fileDescriptor != nil, openSplicePipe() {
            header.encode(into: headerScratch)
            spliceInFlight = SpliceInFlight(header: header, payload: payload)
            pendingWrites += 1
            return spliceMore()
        }
        var written = 0
        if pendingWrites == 0 && control.isEmpty {
            header.encode(into: headerScratch)
            tryBuffers[0] = uv_buf_t(base: headerScratch.assumingMemoryBound(to: CChar.self), len: FrameHeader.size)
            var count: UInt32 = 1
            if let payload, payloadCount > 0 {
                tryBuffers[1] = uv_buf_t(
                    base: UnsafeMutableRawPointer(mutating: payload.baseAddress!).assumingMemoryBound(to: CChar.self),
                    len: payloadCount)
                count = 2
            }
            let rc = uv_try_write(tcp.asStream, tryBuffers, count)
            if rc == Int32(headerCount + payloadCount) {
                lastWritten = EventLoop.coarseNanoseconds()
                if let transfer { delegate?.transferCompleted(transfer) }
                return true
            }
            if rc < 0 && rc != UV_EAGAIN.rawValue {
                failWriting(uvErrorText(rc).message)
                return false
            }
            written = max(0, Int(rc))
        }
        return queue(header, control: control, payload: payload, after: written, transfer: transfer)
    }

    /// Queues what the socket did not take of a frame, its first `written` bytes, as a uv_write.
    private func queue(
        _ header: FrameHeader, control: [UInt8], payload: UnsafeRawBufferPointer?, after written: Int, transfer: Int?
    ) -> Bool {
        let headerCount = FrameHeader.size + control.count
        let payloadCount = payload?.count ?? 0
        let request = WriteRequest(link: self, transfer: transfer, headerBytes: headerCount)
        header.encode(into: request.bytes)
        if !control.isEmpty {
            control.withUnsafeBytes {
                (request.bytes + FrameHeader.size).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
            }
        }
        // The rest of the frame after the `written` bytes the socket already took.
        var buffers: [uv_buf_t] = []
        if written < headerCount {
            buffers.append(
                uv_buf_t(
                    base: (request.bytes + written).assumingMemoryBound(to: CChar.self), len: headerCount - written))
        }
        if let payload, payloadCount > 0 {
            let skip = max(0, written - headerCount)
            buffers.append(
                uv_buf_t(
                    base: (UnsafeMutableRawPointer(mutating: payload.baseAddress!) + skip).assumingMemoryBound(
                        to: CChar.self),
                    len: payloadCount - skip))
        }
        request.request.pointee.data = Unmanaged.passRetained(request).toOpaque()
        pendingWrites += 1
        let rc = uv_write(request.request, tcp.asStream, &buffers, UInt32(buffers.count), linkWritten)
        if rc < 0 {
            Unmanaged<WriteRequest>.fromOpaque(request.request.pointee.data).release()
            pendingWrites -= 1
            if failure == nil {
                fail(.peerLost(rank: rank, peer: peerRank ?? -1, reason: "cannot write: \(uvErrorText(rc).message)"))
            }
            return false
        }
        lastWritten = EventLoop.coarseNanoseconds()
        return true
    }

    /// Starts watching for the socket to drain (making the poll handle at the first need); false when the
    /// system will not (then the rest of the frame is copied).
    private func waitForWritable() -> Bool {
        if writablePoll == nil {
            guard let fd = fileDescriptor else { return false }
            let duplicate = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            guard duplicate >= 0 else { return false }
            let poll = UnsafeMutablePointer<uv_poll_t>.allocate(capacity: 1)
            guard uv_poll_init(loop.loop, poll, duplicate) == 0 else {
                Glibc.close(duplicate)
                poll.deallocate()
                return false
            }
            poll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
            writablePoll = poll
        }
        return uv_is_active(writablePoll!.asHandle) != 0
            || uv_poll_start(writablePoll, Int32(UV_WRITABLE.rawValue), linkWritable) == 0
    }

    /// Splices what the socket takes now of the frame in flight (at its write, and whenever the socket has
    /// drained since). Once the frame is whole, writes the frames that waited behind it. When the system will
    /// not splice or not watch the socket, the rest of the frame is copied (a uv_write) instead. Returns
    /// false when the socket failed.
    @discardableResult
    fileprivate func spliceMore() -> Bool {
        guard var frame = spliceInFlight, !isClosing, let fd = fileDescriptor else { return false }
        let headerDone = min(frame.done, FrameHeader.size)
        let payloadDone = frame.done - headerDone
        var unsupported: Int32 = 0
        let rc = splicePipe.withUnsafeBufferPointer {
            concord_splice_send(
                fd, $0.baseAddress, headerScratch + headerDone, FrameHeader.size - headerDone,
                frame.payload.baseAddress! + payloadDone, frame.payload.count - payloadDone, &unsupported)
        }
        if rc < 0 {
            endSplice()
            failWriting(String(cString: strerror(Int32(-rc))))
            return false
        }
        splicedBytes += max(0, frame.done + rc - FrameHeader.size) - payloadDone
        frame.done += rc
        if rc > 0 { lastWritten = EventLoop.coarseNanoseconds() }
        if unsupported != 0 { splicing = false }
        // The socket is full: splice the rest as it drains (copying it would cost what splicing saves).
        if frame.done < frame.total && splicing && waitForWritable() {
            spliceInFlight = frame
            return true
        }
        endSplice()
        if frame.done < frame.total {
            _ = queue(frame.header, control: [], payload: frame.payload, after: frame.done, transfer: nil)
        }
        let waiting = behindSplice
        behindSplice.removeAll()
        pendingWrites -= waiting.count
        for frame in waiting {
            write(frame.header, control: frame.control, payload: frame.payload, transfer: frame.transfer, force: true)
        }
        return true
    }

    /// Forgets the frame in flight (its bytes handed, or the link failing) and stops watching the socket.
    private func endSplice() {
        guard spliceInFlight != nil else { return }
        spliceInFlight = nil
        pendingWrites -= 1
        if let writablePoll { uv_poll_stop(writablePoll) }
    }

    /// Opens the pipe of zero-copy sends if it is not open; false (and no more splicing) when it cannot be.
    private func openSplicePipe() -> Bool {
        if !splicePipe.isEmpty { return true }
        var fds: [Int32] = [-1, -1, -1]
        guard concord_splice_open(&fds, Int32(Self.splicePipeBytes)) == 0 else {
            splicing = false
            return false
        }
        splicePipe = fds
        return true
    }

    fileprivate func written(_ request: WriteRequest, status: Int32) {
        pendingWrites -= 1
        if status == 0 {
            if let id = request.transfer { delegate?.transferCompleted(id) }
        } else if status != UV_ECANCELED.rawValue {
            failWriting(uvErrorText(status).message)
        }
    }

    /// A write to the socket failed with `message`: the peer is lost (or, after its bye, gone as it said).
    private func failWriting(_ message: String) {
        guard failure == nil else { return }
        let reason = peerSaidBye ? "it shut down its communicator" : "write failed: \(message)"
        fail(.peerLost(rank: rank, peer: peerRank ?? -1, reason: reason))
    }

    // MARK: - Failing and closing

    /// Records the first failure, stops reading, and tells the delegate. Later failures are ignored.
    func fail(_ error: ConcordError) {
        guard failure == nil, !isClosing else { return }
        failure = error
        stopReading()
        state = .stopped
        dropEarlyFrames()
        delegate?.linkFailed(self)
    }

    /// One line on stderr about a connection refused before it joined anything (a stranger, another job,
    /// a wrong secret); the running job is not affected.
    func logRefusal() {
        guard let failure else { return }
        let origin = remoteAddress?.description ?? "an unknown address"
        FileHandle.standardError.write(
            Data("concord: rank \(rank): refused a connection from \(origin): \(failure)\n".utf8))
    }

    /// Closes the socket; pending writes complete with ECANCELED first. Idempotent.
    func close() {
        guard !isClosing else { return }
        isClosing = true
        stopReading()
        state = .stopped
        dropEarlyFrames()
        endSplice()
        pendingWrites -= behindSplice.count
        behindSplice.removeAll()
        if let writablePoll {
            // Its close callback closes the duplicate descriptor (carried in `data`: libuv no longer tells
            // a closing handle's) and frees the handle; it never touches the link, which may be gone by then.
            var fd: uv_os_fd_t = -1
            _ = uv_fileno(writablePoll.asHandle, &fd)
            writablePoll.pointee.data = UnsafeMutableRawPointer(bitPattern: Int(fd) + 1)
            uv_close(writablePoll.asHandle) { handle in
                let fd = Int32(Int(bitPattern: handle!.pointee.data) - 1)
                if fd >= 0 { Glibc.close(fd) }
                UnsafeMutableRawPointer(handle!).assumingMemoryBound(to: uv_poll_t.self).deallocate()
            }
            self.writablePoll = nil
        }
        uv_close(tcp.asHandle, linkClosed)
    }

    fileprivate func closed() {
        tcp.deallocate()
    }
}

/// One uv_write in flight: the request and the header (plus control payload) bytes it points at.
final class WriteRequest {
    unowned let link: PeerLink
    let transfer: Int?
    let request = UnsafeMutablePointer<uv_write_t>.allocate(capacity: 1)
    let bytes: UnsafeMutableRawPointer

    init(link: PeerLink, transfer: Int?, headerBytes: Int) {
        self.link = link
        self.transfer = transfer
        bytes = .allocate(byteCount: headerBytes, alignment: 8)
    }

    deinit {
        request.deallocate()
        bytes.deallocate()
    }
}

private func linkOf(_ handle: UnsafeMutablePointer<uv_handle_t>?) -> PeerLink {
    Unmanaged<PeerLink>.fromOpaque(handle!.pointee.data).takeUnretainedValue()
}

private func linkAllocate(
    _ handle: UnsafeMutablePointer<uv_handle_t>?, _ suggested: Int, _ buf: UnsafeMutablePointer<uv_buf_t>?
) {
    linkOf(handle).allocate(buf!)
}

private func linkRead(_ stream: UnsafeMutablePointer<uv_stream_t>?, _ n: Int, _ buf: UnsafePointer<uv_buf_t>?) {
    linkOf(stream?.asHandle).didRead(n)
}

private func linkWritten(_ request: UnsafeMutablePointer<uv_write_t>?, _ status: Int32) {
    let write = Unmanaged<WriteRequest>.fromOpaque(request!.pointee.data).takeRetainedValue()
    write.link.written(write, status: status)
}

private func linkWritable(_ poll: UnsafeMutablePointer<uv_poll_t>?, _ status: Int32, _ events: Int32) {
    Unmanaged<PeerLink>.fromOpaque(poll!.pointee.data).takeUnretainedValue().spliceMore()
}

private func linkClosed(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    let link = Unmanaged<PeerLink>.fromOpaque(handle!.pointee.data).takeRetainedValue()
    link.closed()
}

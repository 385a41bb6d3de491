// Opening links: a listener that accepts, and a connector that retries until a deadline.
internal import CLibUV
import ConcordCore

/// A listening TCP socket; every accepted connection becomes a `PeerLink` handed to `onAccept`.
final class Listener {
    let loop: EventLoop
    let rank: Int
    let tcp: UnsafeMutablePointer<uv_tcp_t>
    var onAccept: ((PeerLink) -> Void)?
    /// Authenticates every accepted connection before its owner hears a frame from it (nil: none).
    var authenticator: (any LinkAuthenticator)?
    private var isClosing = false

    /// The congestion control of accepted connections from this machine ("": the system's).
    private let sameMachineCongestionControl: String

    /// Binds `host:port` (port 0 picks a free one) and listens. Accepted connections from this machine use
    /// `sameMachineCongestionControl` from their first packet (set on the listener, which they inherit it
    /// from); those from elsewhere are switched back to the system's default (LinkTuning.swift).
    /// - Throws: `ConcordError.addressInUse` with `inUseHint` when the port is taken, `.system` otherwise.
    init(
        loop: EventLoop, rank: Int, host: String, port: Int, inUseHint: String, sameMachineCongestionControl: String = ""
    ) throws {
        self.loop = loop
        self.rank = rank
        self.sameMachineCongestionControl = sameMachineCongestionControl
        let address = try SocketAddress(host: host, port: port)
        tcp = .allocate(capacity: 1)
        try uvCheck(uv_tcp_init_ex(loop.loop, tcp, UInt32(address.family)), "uv_tcp_init", rank: rank)
        tcp.pointee.data = Unmanaged.passRetained(self).toOpaque()
        var fd: uv_os_fd_t = -1
        if !sameMachineCongestionControl.isEmpty, uv_fileno(tcp.asHandle, &fd) == 0 {
            LinkTuning.setCongestionControl(sameMachineCongestionControl, on: fd)
        }
        var rc = address.withSockaddr { uv_tcp_bind(tcp, $0, 0) }
        if rc == 0 {
            rc = uv_listen(
                tcp.asStream, 128,
                { server, status in
                    let listener = Unmanaged<Listener>.fromOpaque(server!.pointee.data).takeUnretainedValue()
                    listener.accept(status: status)
                })
        }
        if rc < 0 {
            close()
            if rc == UV_EADDRINUSE.rawValue {
                throw ConcordError.addressInUse(rank: rank, address: address.description, hint: inUseHint)
            }
            try uvCheck(rc, "listen on \(address)", rank: rank)
        }
    }

    /// The bound port (the chosen one when asked for port 0).
    var port: Int {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutableBytes(of: &storage) {
            uv_tcp_getsockname(tcp, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
        }
        return withUnsafeBytes(of: storage) { SocketAddress(copying: $0.baseAddress!, length: Int(length)).port }
    }

    private func accept(status: Int32) {
        guard status == 0, !isClosing, let link = try? PeerLink(loop: loop, rank: rank) else { return }
        if uv_accept(tcp.asStream, link.tcp.asStream) != 0 {
            link.close()
            return
        }
        guard let onAccept else {
            link.close()
            return
        }
        if !sameMachineCongestionControl.isEmpty, let remote = link.remoteAddress, !LinkTuning.isThisMachine(remote.host),
            let system = LinkTuning.systemCongestionControl, let fd = link.fileDescriptor
        {
            LinkTuning.setCongestionControl(system, on: fd)
        }
        link.authenticate(with: authenticator, client: false)
        onAccept(link)
    }

    func close() {
        guard !isClosing else { return }
        isClosing = true
        onAccept = nil
        uv_close(tcp.asHandle) { handle in
            let listener = Unmanaged<Listener>.fromOpaque(handle!.pointee.data).takeRetainedValue()
            listener.tcp.deallocate()
        }
    }
}

/// One uv_connect in flight.
private final class ConnectRequest {
    let request = UnsafeMutablePointer<uv_connect_t>.allocate(capacity: 1)
    var status: Int32?
    deinit { request.deallocate() }
}

enum Connector {
    /// Connects to `address`, retrying refused or failed attempts every `retrySeconds` until `deadline`.
    /// A socket to an address of this machine uses `sameMachineCongestionControl` ("": the system's) from
    /// its first packet (LinkTuning.swift). On the loop thread.
    /// - Returns: the connected link (not yet reading; its handshake started when there is an
    ///   `authenticator`), or throws the last failure's description wrapped by `onTimeout`.
    static func connect(
        loop: EventLoop, rank: Int, to address: SocketAddress, deadline: Deadline, retrySeconds: Double = 0.05,
        authenticator: (any LinkAuthenticator)?, sameMachineCongestionControl: String = "",
        onTimeout: (_ lastFailure: String) -> ConcordError
    ) throws -> PeerLink {
        var lastFailure = "no attempt finished"
        let congestion = !sameMachineCongestionControl.isEmpty && LinkTuning.isThisMachine(address.host)
        while true {
            let link = try PeerLink(loop: loop, rank: rank, family: address.family)
            if congestion, let fd = link.fileDescriptor {
                LinkTuning.setCongestionControl(sameMachineCongestionControl, on: fd)
            }
            let connect = ConnectRequest()
            connect.request.pointee.data = Unmanaged.passRetained(connect).toOpaque()
            let rc = address.withSockaddr {
                uv_tcp_connect(connect.request, link.tcp, $0) { request, status in
                    let connect = Unmanaged<ConnectRequest>.fromOpaque(request!.pointee.data).takeRetainedValue()
                    connect.status = status
                }
            }
            if rc < 0 {
                Unmanaged<ConnectRequest>.fromOpaque(connect.request.pointee.data).release()
                link.close()
                throw onTimeout(uvErrorText(rc).message)
            }
            loop.run(until: { connect.status != nil }, deadline: deadline)
            if connect.status == 0 {
                link.authenticate(with: authenticator, client: true)
                return link
            }
            if let status = connect.status {
                lastFailure = uvErrorText(status).message
            } else {
                lastFailure = "connection attempt timed out"
            }
            link.close()  // cancels a pending attempt; its callback still runs and frees the request
            loop.run(until: { connect.status != nil }, deadline: .after(seconds: 1))
            if deadline.hasPassed { throw onTimeout(lastFailure) }
            loop.run(until: { false }, deadline: .earliest(deadline, .after(seconds: retrySeconds)))
        }
    }
}

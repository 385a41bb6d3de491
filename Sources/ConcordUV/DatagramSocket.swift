// A UDP socket on the event loop, for discovery beacons: small datagrams to a multicast group (and a
// broadcast address as a fallback), heard by every process that joined the group on the same port.
//
//   bind(0.0.0.0, P, reuseAddress: true)        every process on a host binds the same beacon port
//   joinMulticast(group: G, interfaceAddress: I) the kernel delivers G:P datagrams arriving on I
//   setMulticastInterface(I)                     what this socket sends to G leaves through I
//   setBroadcast(true)                           allows sends to a broadcast address (SO_BROADCAST)
//   send(bytes, to: G:P) ─▶ every socket bound to P and joined on I, this one included
//   startReceiving { bytes, from in … }         one call per datagram, on the loop thread
//   close()                                      uv_close; the handle is freed in its close callback
//
// Threading: every method runs on the loop's driver (inside `EventLoop.drive`, a job of the service
// thread, or a libuv callback); calling one elsewhere is a programmer error and traps. The C callbacks
// capture nothing: they find the socket through `handle.data`, which holds a retained reference from
// `init` until the close callback, so a socket outlives its owner until it is closed.
//
// Sending: `uv_udp_try_send` puts a beacon on the wire at once, or fails at once with an error the caller
// sees as a thrown `ConcordError` whose text says what to do (no multicast route, broadcast not enabled).
// Only when the socket's buffer is full (EAGAIN) is the datagram copied into a `uv_udp_send` request;
// a failure reported later goes to `onSendError`. Nothing on these paths traps on an environmental error.
//
// Receiving: one 64 KiB buffer, the largest UDP payload, reused for every datagram; a datagram that
// does not fit (never, for beacons) is counted in `truncatedDatagrams` and dropped.
//
// Facts measured on Linux loopback (see /work/shared/NOTES.md): multicast on 127.0.0.1 works when the
// sender sets IP_MULTICAST_IF=127.0.0.1 and receivers bind 0.0.0.0 and join on 127.0.0.1; a socket hears
// its own datagrams even with IP_MULTICAST_LOOP off; 127.255.255.255 needs SO_BROADCAST. With
// UV_UDP_REUSEADDR (SO_REUSEADDR on Linux) every socket sharing the port gets each multicast and
// broadcast datagram; a unicast datagram reaches only one of them.
internal import CLibUV
import ConcordCore

/// A UDP destination or source, resolved once: an IPv4 or IPv6 address and a port.
public struct DatagramAddress: Sendable, Hashable, CustomStringConvertible {
    let socketAddress: SocketAddress

    /// Resolves `host` (numeric, or a name: getaddrinfo, IPv4 preferred) and `port`.
    ///
    /// - Throws: `ConcordError.invalidConfiguration` when the host does not resolve or the port is out of
    ///   range.
    public init(host: String, port: Int) throws {
        socketAddress = try SocketAddress(host: host, port: port)
    }

    init(_ socketAddress: SocketAddress) { self.socketAddress = socketAddress }

    /// The numeric host, e.g. "239.255.77.77".
    public var host: String { socketAddress.host }
    /// The port.
    public var port: Int { socketAddress.port }
    /// `host:port`, with brackets around an IPv6 host.
    public var description: String { socketAddress.description }

    public static func == (a: DatagramAddress, b: DatagramAddress) -> Bool {
        a.host == b.host && a.port == b.port
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(host)
        hasher.combine(port)
    }
}

/// A libuv UDP socket (`uv_udp_t`) driven by an `EventLoop`: bind, multicast membership and options,
/// datagram send and receive.
///
/// Create it and call every method on the loop's driver; `close()` it when done (the loop reports an
/// unclosed socket as a leaked handle).
public final class DatagramSocket {
    /// The loop whose driver uses this socket.
    public let loop: EventLoop
    let udp: UnsafeMutablePointer<uv_udp_t>
    /// Where every datagram is read; sized for the largest UDP payload.
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private var receiveHandler: (([UInt8], DatagramAddress) -> Void)?
    /// Called, on the loop thread, when a datagram queued because the socket buffer was full fails later.
    public var onSendError: ((ConcordError) -> Void)?
    /// Called, on the loop thread, when reading fails (the socket keeps receiving).
    public var onReceiveError: ((ConcordError) -> Void)?
    /// The address the socket is bound to, once `bind` succeeded.
    public private(set) var boundAddress: DatagramAddress?
    /// Whether `close()` was called.
    public private(set) var isClosed = false
    /// Datagrams larger than the receive buffer, dropped.
    public private(set) var truncatedDatagrams = 0
    /// Datagrams queued because the socket buffer was full (EAGAIN on the immediate send).
    public private(set) var queuedSends = 0

    /// The largest datagram received whole (the largest UDP payload over IPv4).
    public static let receiveBufferSize = 65536

    /// A UDP handle on `loop`, not yet bound. Calls `uv_udp_init`.
    ///
    /// - Throws: `ConcordError.system` when libuv cannot create the handle.
    public init(loop: EventLoop) throws {
        precondition(loop.isLoopThread, "DatagramSocket.init must run on the loop's driver (inside loop.drive)")
        self.loop = loop
        udp = .allocate(capacity: 1)
        receiveBuffer = .allocate(byteCount: Self.receiveBufferSize, alignment: 16)
        do {
            try uvCheck(uv_udp_init(loop.loop, udp), "uv_udp_init", rank: -1)
        } catch {
            udp.deallocate()
            receiveBuffer.deallocate()
            throw error
        }
        udp.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    deinit {
        receiveBuffer.deallocate()
    }

    // MARK: - Binding and options

    /// Binds the socket to `host:port` (port 0: a free port). Calls `uv_udp_bind`.
    ///
    /// - Parameters:
    ///   - host: the local address, "0.0.0.0" to receive multicast and broadcast on every interface.
    ///   - port: the UDP port.
    ///   - reuseAddress: share the port with other sockets that also ask for it (UV_UDP_REUSEADDR), as
    ///     every process on a host does for the beacon port.
    /// - Throws: `ConcordError.addressInUse` when another socket holds the port without sharing it,
    ///   `.invalidConfiguration` when the host does not resolve, `.system` otherwise.
    public func bind(host: String, port: Int, reuseAddress: Bool) throws {
        checkUsable("bind")
        precondition(boundAddress == nil, "DatagramSocket.bind called twice")
        let address = try SocketAddress(host: host, port: port)
        let flags: UInt32 = reuseAddress ? UInt32(UV_UDP_REUSEADDR.rawValue) : 0
        let rc = address.withSockaddr { uv_udp_bind(udp, $0, flags) }
        if rc == UV_EADDRINUSE.rawValue {
            throw ConcordError.addressInUse(
                rank: -1, address: "UDP \(address)",
                hint: reuseAddress
                    ? "another socket holds this UDP port without sharing it (SO_REUSEADDR); stop it or choose another port"
                    : "bind with reuseAddress: true in every process that shares this port, or choose another port")
        }
        if rc == UV_EADDRNOTAVAIL.rawValue {
            throw ConcordError.system(
                rank: -1, call: "uv_udp_bind to UDP \(address)", code: rc,
                message:
                    "\(uvErrorText(rc).name): \(host) is not an address of this host; bind 0.0.0.0 or a local address")
        }
        try uvCheck(rc, "uv_udp_bind to UDP \(address)", rank: -1)
        boundAddress = DatagramAddress(address)
    }

    /// The bound port (the chosen one when bound to port 0); 0 before `bind`. Calls `uv_udp_getsockname`.
    public var localPort: Int {
        guard boundAddress != nil, !isClosed else { return 0 }
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutableBytes(of: &storage) {
            uv_udp_getsockname(udp, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
        }
        guard rc == 0 else { return 0 }
        return withUnsafeBytes(of: storage) { SocketAddress(copying: $0.baseAddress!, length: Int(length)).port }
    }

    /// Joins multicast `group` on the interface with address `interfaceAddress` (nil: the kernel picks
    /// one by routing `group`). Calls `uv_udp_set_membership`.
    ///
    /// - Throws: `ConcordError.system` saying whether the group is not a multicast address, the interface
    ///   address is not this host's, or no interface can carry the group (no multicast route).
    public func joinMulticast(group: String, interfaceAddress: String?) throws {
        checkBound("joinMulticast")
        let rc = uv_udp_set_membership(udp, group, interfaceAddress, UV_JOIN_GROUP)
        guard rc < 0 else { return }
        let on = interfaceAddress.map { "on interface \($0)" } ?? "on the default interface"
        let advice: String
        switch rc {
        case UV_EINVAL.rawValue:
            advice = "\(group) is not a multicast group address (224.0.0.0/4, or ff00::/8 for IPv6)"
        case UV_EADDRNOTAVAIL.rawValue:
            advice = "\(interfaceAddress ?? "the chosen interface") is not an address of this host that can join groups"
        case UV_ENODEV.rawValue:
            advice =
                "no multicast route: no interface "
                + (interfaceAddress.map { "with address \($0)" } ?? "routes 224.0.0.0/4")
                + "; pass the address of an interface that is up"
        default:
            advice = "cannot join the group"
        }
        throw ConcordError.system(
            rank: -1, call: "joining multicast group \(group) \(on)", code: rc,
            message: "\(uvErrorText(rc).name): \(advice)")
    }

    /// Leaves multicast `group` on the interface with address `interfaceAddress`. Calls
    /// `uv_udp_set_membership`.
    ///
    /// - Throws: `ConcordError.system` when the socket had not joined the group there.
    public func leaveMulticast(group: String, interfaceAddress: String?) throws {
        checkBound("leaveMulticast")
        try uvCheck(
            uv_udp_set_membership(udp, group, interfaceAddress, UV_LEAVE_GROUP),
            "leaving multicast group \(group)", rank: -1)
    }

    /// Sends this socket's multicast datagrams through the interface with address `address`
    /// (IP_MULTICAST_IF). Calls `uv_udp_set_multicast_interface`.
    ///
    /// - Throws: `ConcordError.system` when `address` is not an address of this host.
    public func setMulticastInterface(_ address: String) throws {
        checkBound("setMulticastInterface")
        let rc = uv_udp_set_multicast_interface(udp, address)
        if rc < 0 {
            throw ConcordError.system(
                rank: -1, call: "setting the multicast interface to \(address)", code: rc,
                message: "\(uvErrorText(rc).name): \(uvErrorText(rc).message); pass the address of a local interface")
        }
    }

    /// Whether this host's own sockets also get this socket's multicast datagrams (IP_MULTICAST_LOOP; on
    /// by default). Linux delivers them on loopback regardless. Calls `uv_udp_set_multicast_loop`.
    ///
    /// - Throws: `ConcordError.system` when the option cannot be set.
    public func setMulticastLoop(_ on: Bool) throws {
        checkBound("setMulticastLoop")
        try uvCheck(uv_udp_set_multicast_loop(udp, on ? 1 : 0), "uv_udp_set_multicast_loop", rank: -1)
    }

    /// How many routers a multicast datagram may cross (IP_MULTICAST_TTL; 1, the default, keeps it on the
    /// local network). Calls `uv_udp_set_multicast_ttl`.
    ///
    /// - Precondition: `ttl` is in 0...255.
    /// - Throws: `ConcordError.system` when the option cannot be set.
    public func setMulticastTTL(_ ttl: Int) throws {
        precondition((0...255).contains(ttl), "a multicast TTL is 0...255, got \(ttl)")
        checkBound("setMulticastTTL")
        try uvCheck(uv_udp_set_multicast_ttl(udp, Int32(ttl)), "uv_udp_set_multicast_ttl", rank: -1)
    }

    /// Allows sending to broadcast addresses (SO_BROADCAST). Calls `uv_udp_set_broadcast`.
    ///
    /// - Throws: `ConcordError.system` when the option cannot be set.
    public func setBroadcast(_ on: Bool) throws {
        checkBound("setBroadcast")
        try uvCheck(uv_udp_set_broadcast(udp, on ? 1 : 0), "uv_udp_set_broadcast", rank: -1)
    }

    // MARK: - Sending

    /// Sends `bytes` as one datagram to `destination`. The bytes are copied (or already on the wire) when
    /// this returns. Calls `uv_udp_try_send`, or `uv_udp_send` when the socket buffer is full.
    ///
    /// - Throws: `ConcordError.system` for a failure known at once; its message says what to do for the
    ///   usual ones: no route (no multicast route), broadcast not enabled, datagram too large. A queued
    ///   datagram that fails later is reported to `onSendError` instead.
    public func send(_ bytes: [UInt8], to destination: DatagramAddress) throws {
        checkBound("send")
        let rc = bytes.withUnsafeBytes { raw in
            var buffer = uv_buf_init(
                UnsafeMutablePointer(mutating: raw.baseAddress?.assumingMemoryBound(to: CChar.self)),
                UInt32(raw.count))
            return destination.socketAddress.withSockaddr { uv_udp_try_send(udp, &buffer, 1, $0) }
        }
        if rc >= 0 { return }
        if rc == UV_EAGAIN.rawValue {
            try queue(bytes, to: destination)
            return
        }
        throw Self.sendError(rc, to: destination)
    }

    /// Copies `bytes` into a `uv_udp_send` request that owns them until its callback runs.
    private func queue(_ bytes: [UInt8], to destination: DatagramAddress) throws {
        let request = SendRequest(bytes, destination: destination)
        request.request.pointee.data = Unmanaged.passRetained(request).toOpaque()
        var buffer = uv_buf_init(request.bytes.baseAddress?.assumingMemoryBound(to: CChar.self), UInt32(bytes.count))
        let rc = destination.socketAddress.withSockaddr {
            uv_udp_send(request.request, udp, &buffer, 1, $0) { request, status in
                let pending = Unmanaged<SendRequest>.fromOpaque(request!.pointee.data).takeRetainedValue()
                guard status < 0, status != UV_ECANCELED.rawValue else { return }
                let socket = Unmanaged<DatagramSocket>.fromOpaque(request!.pointee.handle.pointee.data)
                    .takeUnretainedValue()
                socket.onSendError?(DatagramSocket.sendError(status, to: pending.destination))
            }
        }
        if rc < 0 {
            Unmanaged<SendRequest>.fromOpaque(request.request.pointee.data).release()
            throw Self.sendError(rc, to: destination)
        }
        queuedSends += 1
    }

    /// A send failure with advice for the common causes.
    static func sendError(_ code: Int32, to destination: DatagramAddress) -> ConcordError {
        let (name, text) = uvErrorText(code)
        let advice: String
        switch code {
        case UV_ENETUNREACH.rawValue, UV_EHOSTUNREACH.rawValue:
            advice =
                "no route to \(destination.host) (for a multicast group: no multicast route; set the multicast "
                + "interface to a local address, or add a route for 224.0.0.0/4)"
        case UV_EACCES.rawValue:
            advice = "sending to a broadcast address needs SO_BROADCAST (setBroadcast(true))"
        case UV_EMSGSIZE.rawValue:
            advice = "the datagram is larger than the network carries"
        case UV_EADDRNOTAVAIL.rawValue:
            advice = "the destination cannot be reached from the bound address"
        default:
            advice = text
        }
        return ConcordError.system(
            rank: -1, call: "sending a datagram to \(destination)", code: code, message: "\(name): \(advice)")
    }

    // MARK: - Receiving

    /// Calls `handler(bytes, source)` on the loop thread for every datagram from now on. Calls
    /// `uv_udp_recv_start`.
    ///
    /// - Throws: `ConcordError.system` when libuv cannot start reading.
    public func startReceiving(_ handler: @escaping ([UInt8], DatagramAddress) -> Void) throws {
        checkBound("startReceiving")
        receiveHandler = handler
        try uvCheck(
            uv_udp_recv_start(
                udp,
                { handle, _, buffer in
                    let socket = Unmanaged<DatagramSocket>.fromOpaque(handle!.pointee.data).takeUnretainedValue()
                    buffer!.pointee = uv_buf_init(
                        socket.receiveBuffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                        UInt32(socket.receiveBuffer.count))
                },
                { handle, count, _, address, flags in
                    let socket = Unmanaged<DatagramSocket>.fromOpaque(handle!.pointee.data).takeUnretainedValue()
                    socket.received(count: count, from: address, flags: flags)
                }), "uv_udp_recv_start", rank: -1)
    }

    /// Stops calling the handler. Calls `uv_udp_recv_stop`.
    public func stopReceiving() {
        checkUsable("stopReceiving")
        receiveHandler = nil
        uv_udp_recv_stop(udp)  // cannot fail on an open handle
    }

    private func received(count: Int, from address: UnsafePointer<sockaddr>?, flags: UInt32) {
        if count < 0 {
            onReceiveError?(
                ConcordError.system(
                    rank: -1, call: "receiving a datagram", code: Int32(count),
                    message: "\(uvErrorText(Int32(count)).name): \(uvErrorText(Int32(count)).message)"))
            return
        }
        guard let address else { return }  // nothing more to read now
        if flags & UInt32(UV_UDP_PARTIAL.rawValue) != 0 {
            truncatedDatagrams += 1
            return
        }
        let length =
            Int32(address.pointee.sa_family) == AF_INET6
            ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
        let source = DatagramAddress(SocketAddress(copying: address, length: length))
        let bytes = [UInt8](UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<count]))
        receiveHandler?(bytes, source)
    }

    // MARK: - Closing

    /// Stops receiving and closes the socket; queued sends are cancelled. The handle is freed in the
    /// close callback. Idempotent. Calls `uv_close`.
    public func close() {
        precondition(loop.isLoopThread, "DatagramSocket.close must run on the loop's driver")
        guard !isClosed else { return }
        isClosed = true
        receiveHandler = nil
        onSendError = nil
        onReceiveError = nil
        uv_close(udp.asHandle) { handle in
            let socket = Unmanaged<DatagramSocket>.fromOpaque(handle!.pointee.data).takeRetainedValue()
            socket.udp.deallocate()
        }
    }

    private func checkUsable(_ call: String) {
        precondition(loop.isLoopThread, "DatagramSocket.\(call) must run on the loop's driver (inside loop.drive)")
        precondition(!isClosed, "DatagramSocket.\(call) called after close()")
    }

    private func checkBound(_ call: String) {
        checkUsable(call)
        precondition(boundAddress != nil, "DatagramSocket.\(call) needs a bound socket: call bind(host:port:) first")
    }
}

/// One queued `uv_udp_send`: the request and its own copy of the datagram, alive until the callback.
private final class SendRequest {
    let request = UnsafeMutablePointer<uv_udp_send_t>.allocate(capacity: 1)
    let bytes: UnsafeMutableRawBufferPointer
    let destination: DatagramAddress

    init(_ datagram: [UInt8], destination: DatagramAddress) {
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, datagram.count), alignment: 1)
        datagram.withUnsafeBytes { copy.copyMemory(from: $0) }
        bytes = copy
        self.destination = destination
    }

    deinit {
        request.deallocate()
        bytes.deallocate()
    }
}

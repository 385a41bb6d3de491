import ConcordCore
import Foundation

/// A TCP port free on 127.0.0.1 a moment ago, below the ephemeral range and never the same twice in a row
/// within this process, so tests running in parallel do not race for it (see ConcordCore/FreePort.swift).
public func freeTCPPort() -> Int {
    do {
        return try FreePort.tcp()
    } catch {
        preconditionFailure("cannot bind a port: \(error)")
    }
}

/// A plain blocking TCP socket for tests that play a misbehaving peer.
public final class RawSocket: @unchecked Sendable {
    public let fd: Int32

    init(fd: Int32, timeoutSeconds: Int) {
        self.fd = fd
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Connects to 127.0.0.1:`port`, retrying for up to `seconds`.
    public static func connect(port: Int, seconds: Double = 10) -> RawSocket? {
        let deadline = Date(timeIntervalSinceNow: seconds)
        while Date() < deadline {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = UInt16(port).bigEndian
            let ok = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
            if ok { return RawSocket(fd: fd, timeoutSeconds: 10) }
            Glibc.close(fd)
            usleep(20_000)
        }
        return nil
    }

    /// A listening socket on 127.0.0.1 (port 0: any); returns it and its port.
    public static func listen(port: Int = 0) -> (RawSocket, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && Glibc.listen(fd, 8) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        precondition(ok, "cannot listen: \(String(cString: strerror(errno)))")
        return (RawSocket(fd: fd, timeoutSeconds: 10), Int(UInt16(bigEndian: address.sin_port)))
    }

    /// Accepts one connection (waiting at most the socket's timeout).
    public func accept() -> RawSocket? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 10_000) == 1 else { return nil }
        let client = Glibc.accept(fd, nil, nil)
        return client >= 0 ? RawSocket(fd: client, timeoutSeconds: 10) : nil
    }

    /// Writes all of `bytes`; returns whether it could.
    @discardableResult
    public func write(_ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n <= 0 { return false }
            done += n
        }
        return true
    }

    /// Reads exactly `count` bytes, or fewer when the peer closes or the timeout passes.
    public func read(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, count - done) }
            if n <= 0 { break }
            done += n
        }
        return Array(bytes[..<done])
    }

    public func close() { Glibc.close(fd) }
}

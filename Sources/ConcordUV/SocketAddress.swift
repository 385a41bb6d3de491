// Socket addresses: resolving `host` + `port` and printing them back.
internal import CLibUV
import ConcordCore
import Foundation

/// An IPv4 or IPv6 socket address.
struct SocketAddress: CustomStringConvertible {
    var storage = sockaddr_storage()

    /// Resolves `host` (a numeric address or a name) with getaddrinfo, preferring IPv4.
    /// - Throws: `ConcordError.invalidConfiguration` naming the host when it does not resolve.
    init(host: String, port: Int) throws {
        guard (0...65535).contains(port) else {
            throw ConcordError.invalidConfiguration("port \(port) is out of range 0...65535")
        }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw ConcordError.invalidConfiguration(
                "cannot resolve host '\(host)': \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        var chosen = first
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let c = cursor {
            if c.pointee.ai_family == AF_INET {
                chosen = c
                break
            }
            cursor = c.pointee.ai_next
        }
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(
                from: UnsafeRawBufferPointer(start: chosen.pointee.ai_addr, count: Int(chosen.pointee.ai_addrlen)))
        }
    }

    /// Copies the address libuv reports for a socket.
    init(copying pointer: UnsafeRawPointer, length: Int) {
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: min(length, dst.count)))
        }
    }

    var family: Int32 { Int32(storage.ss_family) }

    var port: Int {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET6 {
                return Int(
                    UInt16(
                        bigEndian: raw.load(
                            fromByteOffset: MemoryLayout<sockaddr_in6>.offset(of: \.sin6_port)!, as: UInt16.self)))
            }
            return Int(
                UInt16(
                    bigEndian: raw.load(
                        fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_port)!, as: UInt16.self)))
        }
    }

    /// The numeric host part ("127.0.0.1", "fe80::1").
    var host: String {
        var buffer = [CChar](repeating: 0, count: 64)
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET6 {
                _ = uv_ip6_name(raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self), &buffer, buffer.count)
            } else {
                _ = uv_ip4_name(raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self), &buffer, buffer.count)
            }
        }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `host:port`, with brackets around IPv6 hosts.
    var description: String { family == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>) -> T) -> T {
        withUnsafeBytes(of: storage) { body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self)) }
    }

    /// Splits `host:port` or `[v6]:port`.
    static func split(_ text: String) -> (host: String, port: Int)? {
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            let host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":"), let port = Int(rest.dropFirst()) else { return nil }
            return (host, port)
        }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else { return nil }
        return (String(text[..<colon]), port)
    }
}

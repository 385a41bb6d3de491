// Little-endian byte writing and bounds-checked reading for the discovery wire formats.
//
// Every discovery message (beacon, handshake, membership) is built with `WireWriter` and parsed with
// `WireReader`. The reader never traps on untrusted input: every read checks the bytes left and throws
// `DiscoveryError.truncated` naming the message and the field, so a short datagram is one clear error.
// Integers are little endian; strings are UTF-8 with an explicit length in front.

/// Appends fixed-width little-endian integers and raw bytes to a byte array.
struct WireWriter {
    private(set) var bytes: [UInt8] = []

    init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    mutating func append<T: FixedWidthInteger>(_ value: T) {
        var v = value.littleEndian
        withUnsafeBytes(of: &v) { bytes.append(contentsOf: $0) }
    }

    mutating func append(_ raw: some Sequence<UInt8>) { bytes.append(contentsOf: raw) }

    mutating func append(_ id: NodeID) { append(id.bytes) }

    mutating func append(_ id: JobID) { append(id.rawValue) }
}

/// Reads fixed-width little-endian integers and byte runs from untrusted bytes, checking every length.
struct WireReader {
    let bytes: [UInt8]
    /// What is being parsed ("beacon", "handshake hello", ...), for error messages.
    let what: String
    private(set) var offset: Int

    init(_ bytes: [UInt8], what: String, offset: Int = 0) {
        self.bytes = bytes
        self.what = what
        self.offset = offset
    }

    var remaining: Int { bytes.count - offset }

    /// Throws `DiscoveryError.truncated` unless `count` more bytes are there.
    func require(_ count: Int, for field: String) throws {
        if count > remaining {
            throw DiscoveryError.truncated(what: what, field: field, needed: offset + count, available: bytes.count)
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ field: String) throws -> T {
        let size = MemoryLayout<T>.size
        try require(size, for: field)
        var value: T = 0
        for i in 0..<size { value |= T(truncatingIfNeeded: bytes[offset + i]) << (8 * i) }
        offset += size
        return value
    }

    mutating func readBytes(_ count: Int, _ field: String) throws -> [UInt8] {
        try require(count, for: field)
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    mutating func readNodeID(_ field: String) throws -> NodeID {
        NodeID(bytes: try readBytes(NodeID.byteCount, field))
    }

    mutating func readJobID(_ field: String) throws -> JobID {
        JobID(rawValue: try read(UInt64.self, field))
    }

    /// Reads `count` bytes of UTF-8; invalid UTF-8 throws `DiscoveryError.malformed`.
    mutating func readString(_ count: Int, _ field: String) throws -> String {
        let raw = try readBytes(count, field)
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw DiscoveryError.malformed(what: what, detail: "\(field) is not valid UTF-8")
        }
        return s
    }

    /// Throws `DiscoveryError.trailingBytes` when bytes are left after the last field.
    func expectEnd() throws {
        if remaining != 0 {
            throw DiscoveryError.trailingBytes(what: what, expected: offset, actual: bytes.count)
        }
    }
}

/// Compares two byte runs in time that depends only on their lengths (for MACs and proofs).
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for i in 0..<a.count { difference |= a[i] ^ b[i] }
    return difference == 0
}

/// Lowercase hex of bytes.
func hexString(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// Bytes of an even-length hex string (either case); nil for anything else.
func bytes(fromHex hex: String) -> [UInt8]? {
    let utf8 = Array(hex.utf8)
    guard utf8.count % 2 == 0 else { return nil }
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
    var out: [UInt8] = []
    out.reserveCapacity(utf8.count / 2)
    var i = 0
    while i < utf8.count {
        guard let hi = nibble(utf8[i]), let lo = nibble(utf8[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
        i += 2
    }
    return out
}

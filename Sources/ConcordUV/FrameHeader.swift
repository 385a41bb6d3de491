// The frame header: 48 bytes, little-endian, in front of every message on every Concord TCP connection.
// docs/wire-format.md is the reference; keep the two in step.
//
//   0  u32 magic 0x44434E43 ("CNCD" on the wire)   24 u64 count (elements in the whole collective)
//   4  u16 protocol version                       32 u64 offset (elements, of this segment)
//   6  u8  kind                                   40 u64 payload length (bytes)
//   7  u8  collective
//   8  u8  dtype      9 u8 op     10 u16 root (0xFFFF: none)
//  12  u32 sender rank (0xFFFFFFFF before it has one)
//  16  u64 collective sequence number
import ConcordCore

/// What a frame is for.
/// In messages a kind reads as its case name (`"\(kind)"`: "abort").
enum FrameKind: UInt8 {
    /// Ring or store handshake, connector → acceptor: `rank=…\nworld=…\nsession=…`.
    case hello = 1
    /// Handshake accepted, acceptor → connector.
    case welcome = 2
    /// Handshake refused; the payload says why (the connection closes after it).
    case refuse = 3
    /// One segment of a collective: the header describes it, the payload is its elements.
    case data = 4
    /// Liveness, sent on idle connections; no payload.
    case heartbeat = 5
    /// The sender's collective failed; the payload is `origin=<rank>\n<reason>`.
    case abort = 6
    /// The sender shuts down cleanly; no payload.
    case bye = 7
    /// Store: set `key\nvalue`.
    case storeSet = 8
    /// Store: wait for keys, `timeoutMilliseconds\nkey1\nkey2…`.
    case storeWait = 9
    /// Store reply: the values of the waited keys, one per line, in order.
    case storeValues = 10
    /// Store reply: the wait timed out; the payload lists the keys still missing, one per line.
    case storeMissing = 11
    /// Store reply: a set was stored.
    case storeOK = 12
    /// Shared-memory link: the peer gave this side data or room while it slept; no payload.
    case doorbell = 13
    /// A message of the authentication handshake that opens every connection of a job with a secret.
    case auth = 14
    /// The receiver has read the whole payload of the oldest data frame of at least
    /// `FrameHeader.acknowledgedPayloadBytes` that it had not acknowledged yet; no payload. The sender
    /// completes that frame's send only now (it may have handed the kernel references to the caller's
    /// pages instead of copies: see PeerLink.swift, "Zero-copy sends").
    case consumed = 15
}

/// A decoded frame header.
struct FrameHeader: Equatable {
    static let size = 48
    static let magic: UInt32 = 0x4443_4E43
    /// The protocol version this build speaks. Bump it whenever a frame's meaning changes.
    static let protocolVersion: UInt16 = 3
    /// Data frames with at least this many payload bytes are acknowledged with a `consumed` frame (and
    /// may be sent zero-copy). Below it, splicing cost more than the copy it saves: frames of 128 KiB took
    /// 20% longer spliced, 512 KiB ones were level, 1 MiB ones 19% faster (docs/algorithms.md).
    static let acknowledgedPayloadBytes = 1 << 20
    /// Control payloads (everything but data) are small; a larger length is malformed.
    static let maxControlPayload = 64 * 1024
    static let noRank: UInt32 = .max
    static let noRoot: UInt16 = .max

    var version: UInt16 = FrameHeader.protocolVersion
    var kind: FrameKind
    var collective: UInt8 = 0
    var dataType: UInt8 = 0
    var op: UInt8 = 0
    /// The root of a rooted collective; `noRoot` for the others.
    var root: UInt16 = FrameHeader.noRoot
    var sender: UInt32 = FrameHeader.noRank
    var sequence: UInt64 = 0
    var count: UInt64 = 0
    var offset: UInt64 = 0
    var payloadLength: UInt64 = 0

    init(kind: FrameKind, sender: Int?, payloadLength: Int = 0) {
        self.kind = kind
        self.sender = sender.map { UInt32($0) } ?? FrameHeader.noRank
        self.payloadLength = UInt64(payloadLength)
    }

    /// The header of a data frame carrying `tag`.
    init(data tag: SegmentTag, sender: Int) {
        self.init(kind: .data, sender: sender, payloadLength: tag.byteCount)
        collective = tag.collective.rawValue
        dataType = tag.dataType.rawValue
        op = tag.op.rawValue
        root = tag.root.map { UInt16(clamping: $0) } ?? Self.noRoot
        sequence = tag.sequence
        count = UInt64(tag.count)
        offset = UInt64(tag.offset)
    }

    /// The tag a data frame carries, or nil when its codes are unknown to this build.
    var tag: SegmentTag? {
        guard let c = CollectiveKind(rawValue: collective), let d = DataType(rawValue: dataType),
            let o = ReduceOp(rawValue: op), payloadLength % UInt64(d.size) == 0,
            count <= UInt64(Int.max), offset <= UInt64(Int.max), payloadLength <= UInt64(Int.max)
        else { return nil }
        return SegmentTag(
            collective: c, sequence: sequence, dataType: d, op: o, count: Int(count), offset: Int(offset),
            length: Int(payloadLength / UInt64(d.size)), root: root == Self.noRoot ? nil : Int(root))
    }

    /// Writes the 48 header bytes at `p`.
    func encode(into p: UnsafeMutableRawPointer) {
        p.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: version.littleEndian, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: kind.rawValue, toByteOffset: 6, as: UInt8.self)
        p.storeBytes(of: collective, toByteOffset: 7, as: UInt8.self)
        p.storeBytes(of: dataType, toByteOffset: 8, as: UInt8.self)
        p.storeBytes(of: op, toByteOffset: 9, as: UInt8.self)
        p.storeBytes(of: root.littleEndian, toByteOffset: 10, as: UInt16.self)
        p.storeBytes(of: sender.littleEndian, toByteOffset: 12, as: UInt32.self)
        p.storeBytes(of: sequence.littleEndian, toByteOffset: 16, as: UInt64.self)
        p.storeBytes(of: count.littleEndian, toByteOffset: 24, as: UInt64.self)
        p.storeBytes(of: offset.littleEndian, toByteOffset: 32, as: UInt64.self)
        p.storeBytes(of: payloadLength.littleEndian, toByteOffset: 40, as: UInt64.self)
    }

    /// Why 48 bytes are not a frame header this build can use.
    enum DecodeError: Error, Equatable {
        case badMagic(UInt32)
        case version(UInt16)
        case unknownKind(UInt8)
        case oversizedControl(UInt64)
    }

    /// Decodes 48 bytes at `p`, checking magic, version, kind, and the size of control payloads.
    static func decode(_ p: UnsafeRawPointer) throws(DecodeError) -> FrameHeader {
        let magic = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        guard magic == Self.magic else { throw .badMagic(magic) }
        let version = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        guard version == Self.protocolVersion else { throw .version(version) }
        let rawKind = p.load(fromByteOffset: 6, as: UInt8.self)
        guard let kind = FrameKind(rawValue: rawKind) else { throw .unknownKind(rawKind) }
        var h = FrameHeader(kind: kind, sender: nil)
        h.version = version
        h.collective = p.load(fromByteOffset: 7, as: UInt8.self)
        h.dataType = p.load(fromByteOffset: 8, as: UInt8.self)
        h.op = p.load(fromByteOffset: 9, as: UInt8.self)
        h.root = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 10, as: UInt16.self))
        h.sender = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
        h.sequence = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        h.count = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
        h.offset = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt64.self))
        h.payloadLength = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 40, as: UInt64.self))
        if kind != .data && h.payloadLength > UInt64(Self.maxControlPayload) {
            throw .oversizedControl(h.payloadLength)
        }
        return h
    }
}

/// Small text payloads of control frames: `key=value` lines.
enum ControlText {
    static func encode(_ fields: [(String, String)]) -> [UInt8] {
        Array(fields.map { "\($0.0)=\($0.1)" }.joined(separator: "\n").utf8)
    }

    static func decode(_ bytes: [UInt8]) -> [String: String] {
        var fields: [String: String] = [:]
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            if let eq = line.firstIndex(of: "=") {
                fields[String(line[..<eq])] = String(line[line.index(after: eq)...])
            }
        }
        return fields
    }
}

import ConcordCore
import Testing

@testable import ConcordUV

@Suite("Frame header")
struct FrameHeaderTests {
    func bytes(_ header: FrameHeader) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: FrameHeader.size)
        out.withUnsafeMutableBytes { header.encode(into: $0.baseAddress!) }
        return out
    }

    func decode(_ bytes: [UInt8]) throws(FrameHeader.DecodeError) -> FrameHeader {
        var copy = bytes
        let pointer = copy.withUnsafeMutableBytes { UnsafeRawPointer($0.baseAddress!) }
        return try FrameHeader.decode(pointer)
    }

    @Test("a kind reads as its case name in messages")
    func kindNames() {
        // `description` once interpolated `self`, which recursed until the stack overflowed: a frame that
        // came before authentication crashed the rank that was to name it.
        #expect("\(FrameKind.abort)" == "abort" && "\(FrameKind.consumed)" == "consumed")
    }

    @Test("a data header round-trips every field and its tag")
    func roundTrip() throws {
        let tag = SegmentTag(
            collective: .allReduce, sequence: 1 << 40, dataType: .float32, op: .sum, count: 1_000_003, offset: 500_000,
            length: 12345)
        let header = FrameHeader(data: tag, sender: 3)
        let decoded = try decode(bytes(header))
        #expect(decoded == header)
        #expect(decoded.tag == tag)
        #expect(decoded.payloadLength == 12345 * 4)
        #expect(decoded.sender == 3)
    }

    @Test("the wire layout is little-endian with the documented offsets")
    func layout() {
        var header = FrameHeader(kind: .heartbeat, sender: 2)
        header.sequence = 0x0102
        let raw = bytes(header)
        #expect(Array(raw[0..<4]) == Array("CNCD".utf8))
        #expect(raw[4] == UInt8(FrameHeader.protocolVersion) && raw[5] == 0)
        #expect(raw[6] == FrameKind.heartbeat.rawValue)
        #expect(raw[12] == 2 && raw[16] == 0x02 && raw[17] == 0x01)
    }

    @Test("bad magic, another version, unknown kinds and oversized control frames are rejected")
    func rejects() {
        var raw = bytes(FrameHeader(kind: .hello, sender: 0))
        raw[0] = UInt8(ascii: "G")
        #expect(throws: FrameHeader.DecodeError.self) { try decode(raw) }
        raw = bytes(FrameHeader(kind: .hello, sender: 0))
        raw[4] = 99
        #expect(throws: FrameHeader.DecodeError.version(99)) { try decode(raw) }
        raw = bytes(FrameHeader(kind: .hello, sender: 0))
        raw[6] = 200
        #expect(throws: FrameHeader.DecodeError.unknownKind(200)) { try decode(raw) }
        raw = bytes(FrameHeader(kind: .abort, sender: 0, payloadLength: FrameHeader.maxControlPayload + 1))
        #expect(throws: FrameHeader.DecodeError.oversizedControl(UInt64(FrameHeader.maxControlPayload + 1))) {
            try decode(raw)
        }
    }

    @Test("a data header whose codes this build does not know, or whose length is absurd, has no tag")
    func unknownCodes() throws {
        var header = FrameHeader(
            data: SegmentTag(
                collective: .allReduce, sequence: 0, dataType: .float32, op: .sum, count: 4, offset: 0, length: 4),
            sender: 0)
        header.dataType = 77
        #expect(header.tag == nil)
        header.dataType = DataType.float32.rawValue
        header.payloadLength = 6
        #expect(header.tag == nil, "a length that is not whole elements")
        header.dataType = DataType.int8.rawValue
        header.payloadLength = UInt64.max - 7
        #expect(header.tag == nil, "a length beyond Int.max bytes (no trap)")
        header.payloadLength = 16
        #expect(header.tag?.length == 16)
    }
}

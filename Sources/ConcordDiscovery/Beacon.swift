// A beacon: the UDP multicast datagram a node sends every second or so to say "I am here, for this job,
// and you can reach me at host:port".
//
// Wire format (version 1), little endian; bytes 0..<6 keep this layout in every version, so a node can
// always tell "other version" from "garbage":
//
//   offset size  field
//        0    4  magic "CCBN"
//        4    2  protocol version                         (Beacon.protocolVersion)
//        6    1  authentication: 0 none, 1 HMAC-SHA256 tag (16 bytes) at the end
//        7    1  flags: bit 0 committed to a group, bit 1 leaving
//        8    8  job id
//       16   16  node id
//       32    8  sequence number (per sender, increasing)
//       40    8  sent at: the sender's clock in milliseconds (echoed by RTT replies, never compared)
//       48    2  TCP port of the node's listener
//       50    2  cores
//       52    8  memory in bytes
//       60    4  measured reduce throughput, GB/s (IEEE 754 binary32)
//       64    4  lengths of host, os, arch, label (one byte each; limits 255, 32, 32, 64)
//       68    .  host, os, arch, label (UTF-8, in that order)
//        .   16  tag = HMAC-SHA256(beacon key, every byte before it), first 16 bytes   [authenticated only]
//
// The largest beacon is 68 + 383 + 16 = 467 bytes, under `maxDatagramSize` (512), so a beacon never
// fragments on any network (IPv4 guarantees 576-byte datagrams). The tag is truncated to 128 bits: a
// forger must guess it, with probability 2^-128 per datagram, and RFC 2104 allows truncation to half the
// hash; the 16 bytes saved keep the datagram small. The tag proves the sender holds the job secret, not
// that the beacon is fresh: a replayed beacon can at worst make a node try a TCP connection, whose
// challenge-response handshake then fails (see Handshake).
//
// Decoding checks, in order: length (6..512), magic, version, fixed header, job id, authentication mode,
// field limits, exact length, tag, UTF-8. Each failure is a distinct `DiscoveryError`, and every read is
// bounds-checked, so any datagram of any length is refused cleanly. Cost: one HMAC-SHA256 over < 512 bytes.

import Crypto

/// What a node announces on the network: who it is, which job it is in, where to reach it, what it can do.
public struct Beacon: Sendable, Equatable, CustomStringConvertible {
    /// The version of the beacon format this build speaks.
    public static let protocolVersion: UInt16 = 1
    /// No valid beacon is larger than this; receivers read datagrams into a buffer of this size.
    public static let maxDatagramSize = 512
    /// The magic at the start of every beacon.
    public static let magic: [UInt8] = Array("CCBN".utf8)
    /// Bytes of the truncated HMAC-SHA256 tag.
    public static let tagSize = 16
    /// Size of the fixed part, before the strings.
    static let headerSize = 68
    /// The longest host, in UTF-8 bytes (a DNS name has at most 253).
    public static let hostLimit = 255
    /// The longest operating-system name, in UTF-8 bytes.
    public static let osLimit = 32
    /// The longest architecture name, in UTF-8 bytes.
    public static let archLimit = 32
    /// The longest label, in UTF-8 bytes.
    public static let labelLimit = 64

    /// Flags a node sets in its beacon.
    public struct Flags: OptionSet, Sendable, Hashable {
        /// The flag byte; unknown bits are kept as they are.
        public let rawValue: UInt8
        /// Flags from their byte.
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The node has committed to a group and no longer accepts proposals.
        public static let committed = Flags(rawValue: 1 << 0)
        /// The node is shutting down: forget it now rather than after the TTL.
        public static let leaving = Flags(rawValue: 1 << 1)
    }

    /// What the node can do, for the user's table and for weighing work; not used for membership.
    public struct Capabilities: Sendable, Equatable {
        /// Logical CPU cores.
        public var cores: UInt16
        /// Physical memory in bytes.
        public var memoryBytes: UInt64
        /// Operating system, e.g. "linux", "macos", "ios" (at most 32 bytes).
        public var os: String
        /// CPU architecture, e.g. "x86_64", "arm64" (at most 32 bytes).
        public var arch: String
        /// Measured float32 sum-reduce throughput in GB/s (0 when not measured).
        public var reduceGigabytesPerSecond: Float
        /// A free-form short label chosen by the user, e.g. "kitchen-ipad" (at most 64 bytes).
        public var label: String

        /// Capabilities from their fields.
        public init(
            cores: UInt16, memoryBytes: UInt64, os: String, arch: String, reduceGigabytesPerSecond: Float,
            label: String
        ) {
            self.cores = cores
            self.memoryBytes = memoryBytes
            self.os = os
            self.arch = arch
            self.reduceGigabytesPerSecond = reduceGigabytesPerSecond
            self.label = label
        }
    }

    /// The sender's random identity.
    public var nodeID: NodeID
    /// Host or address of the sender's TCP listener; empty means "the address this datagram came from".
    public var host: String
    /// Port of the sender's TCP listener.
    public var port: UInt16
    /// What the node can do.
    public var capabilities: Capabilities
    /// Increases with every beacon the sender sends; receivers ignore beacons that do not increase it.
    public var sequence: UInt64
    /// The sender's clock when it sent the beacon, in milliseconds; only ever echoed back to the sender.
    public var sentAtMilliseconds: UInt64
    /// Whether the node is committed to a group, or leaving.
    public var flags: Flags

    /// A beacon from its fields.
    public init(
        nodeID: NodeID, host: String, port: UInt16, capabilities: Capabilities, sequence: UInt64,
        sentAtMilliseconds: UInt64, flags: Flags = []
    ) {
        self.nodeID = nodeID
        self.host = host
        self.port = port
        self.capabilities = capabilities
        self.sequence = sequence
        self.sentAtMilliseconds = sentAtMilliseconds
        self.flags = flags
    }

    /// The datagram announcing this beacon for `credentials`' job, tagged when the job has a secret.
    ///
    /// - Throws: `DiscoveryError.fieldTooLong` when the host, os, arch or label exceeds its limit.
    public func encode(credentials: JobCredentials) throws -> [UInt8] {
        let strings = [
            ("host", Array(host.utf8), Self.hostLimit), ("os", Array(capabilities.os.utf8), Self.osLimit),
            ("arch", Array(capabilities.arch.utf8), Self.archLimit),
            ("label", Array(capabilities.label.utf8), Self.labelLimit),
        ]
        for (field, raw, limit) in strings where raw.count > limit {
            throw DiscoveryError.fieldTooLong(what: "beacon", field: field, length: raw.count, limit: limit)
        }
        var w = WireWriter(capacity: Self.maxDatagramSize)
        w.append(Self.magic)
        w.append(Self.protocolVersion)
        w.append(UInt8(credentials.isSecure ? 1 : 0))
        w.append(flags.rawValue)
        w.append(credentials.jobID)
        w.append(nodeID)
        w.append(sequence)
        w.append(sentAtMilliseconds)
        w.append(port)
        w.append(capabilities.cores)
        w.append(capabilities.memoryBytes)
        w.append(capabilities.reduceGigabytesPerSecond.bitPattern)
        for (_, raw, _) in strings { w.append(UInt8(raw.count)) }
        for (_, raw, _) in strings { w.append(raw) }
        var datagram = w.bytes
        if let key = credentials.beaconKey { datagram += Self.tag(datagram, key: key) }
        return datagram
    }

    /// The beacon in `datagram`, checked against `credentials`' job, version and secret.
    ///
    /// - Throws: `DiscoveryError`: `.truncated`, `.oversized`, `.badMagic`, `.protocolVersion` (both
    ///   versions), `.otherJob` (both job ids), `.authenticationMismatch`, `.fieldTooLong`,
    ///   `.trailingBytes`, `.badMAC` (wrong secret or altered datagram), `.malformed` (invalid UTF-8).
    public static func decode(_ datagram: [UInt8], credentials: JobCredentials) throws -> Beacon {
        let what = "beacon"
        if datagram.count > maxDatagramSize {
            throw DiscoveryError.oversized(what: what, size: datagram.count, limit: maxDatagramSize)
        }
        var r = WireReader(datagram, what: what)
        let magicFound = try r.readBytes(4, "magic")
        guard magicFound == magic else { throw DiscoveryError.badMagic(what: what, expected: magic, found: magicFound) }
        let version = try r.read(UInt16.self, "protocol version")
        guard version == protocolVersion else {
            throw DiscoveryError.protocolVersion(what: what, local: protocolVersion, remote: version)
        }
        try r.require(headerSize - r.offset, for: "fixed header")
        let authentication = try r.read(UInt8.self, "authentication")
        let flags = Flags(rawValue: try r.read(UInt8.self, "flags"))
        let job = try r.readJobID("job id")
        guard job == credentials.jobID else {
            throw DiscoveryError.otherJob(what: what, local: credentials.jobID, remote: job)
        }
        guard authentication <= 1 else {
            throw DiscoveryError.malformed(what: what, detail: "unknown authentication mode \(authentication)")
        }
        guard (authentication == 1) == credentials.isSecure else {
            throw DiscoveryError.authenticationMismatch(what: what, localSecure: credentials.isSecure)
        }
        let nodeID = try r.readNodeID("node id")
        let sequence = try r.read(UInt64.self, "sequence")
        let sentAt = try r.read(UInt64.self, "sent at")
        let port = try r.read(UInt16.self, "port")
        let cores = try r.read(UInt16.self, "cores")
        let memory = try r.read(UInt64.self, "memory")
        let gbps = Float(bitPattern: try r.read(UInt32.self, "reduce throughput"))
        var lengths: [Int] = []
        for (field, limit) in [("host", hostLimit), ("os", osLimit), ("arch", archLimit), ("label", labelLimit)] {
            let length = Int(try r.read(UInt8.self, "\(field) length"))
            guard length <= limit else {
                throw DiscoveryError.fieldTooLong(what: what, field: field, length: length, limit: limit)
            }
            lengths.append(length)
        }
        let tagSize = authentication == 1 ? Self.tagSize : 0
        let expected = headerSize + lengths.reduce(0, +) + tagSize
        if datagram.count < expected {
            throw DiscoveryError.truncated(
                what: what, field: tagSize > 0 ? "strings and tag" : "strings", needed: expected,
                available: datagram.count)
        }
        if datagram.count > expected {
            throw DiscoveryError.trailingBytes(what: what, expected: expected, actual: datagram.count)
        }
        if let key = credentials.beaconKey {
            let body = Array(datagram[0..<expected - tagSize])
            let tagFound = Array(datagram[(expected - tagSize)...])
            guard constantTimeEqual(tag(body, key: key), tagFound) else { throw DiscoveryError.badMAC(node: nodeID) }
        }
        let host = try r.readString(lengths[0], "host")
        let os = try r.readString(lengths[1], "os")
        let arch = try r.readString(lengths[2], "arch")
        let label = try r.readString(lengths[3], "label")
        return Beacon(
            nodeID: nodeID, host: host, port: port,
            capabilities: Capabilities(
                cores: cores, memoryBytes: memory, os: os, arch: arch, reduceGigabytesPerSecond: gbps, label: label),
            sequence: sequence, sentAtMilliseconds: sentAt, flags: flags)
    }

    /// The truncated HMAC-SHA256 of `body` under `key`.
    private static func tag(_ body: [UInt8], key: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: key)).prefix(tagSize))
    }

    /// One line for logs: node, endpoint, sequence, capabilities and flags.
    public var description: String {
        var flagText: [String] = []
        if flags.contains(.committed) { flagText.append("committed") }
        if flags.contains(.leaving) { flagText.append("leaving") }
        let c = capabilities
        return "beacon #\(sequence) from node \(nodeID.shortDescription) at \(host.isEmpty ? "?" : host):\(port) "
            + "[\(c.cores) cores, \(c.memoryBytes >> 20) MiB, \(c.os)/\(c.arch), \(c.reduceGigabytesPerSecond) GB/s"
            + (c.label.isEmpty ? "" : ", \"\(c.label)\"") + "]"
            + (flagText.isEmpty ? "" : " " + flagText.joined(separator: ","))
    }
}

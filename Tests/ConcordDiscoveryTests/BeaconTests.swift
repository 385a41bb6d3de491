import Testing

@testable import ConcordDiscovery
import ConcordTestSupport

@Suite("Beacon encoding")
struct BeaconTests {
    let secure = secureCredentials()

    @Test("encode then decode gives the same beacon, secure and insecure")
    func roundTrip() throws {
        for credentials in [secure, insecureCredentials] {
            for beacon in [
                sampleBeacon(), sampleBeacon(host: "", label: "", flags: [.committed]),
                sampleBeacon(id: NodeID(high: .max, low: .max), sequence: .max, host: "fe80::1%wlan0", label: "café ☕︎"),
            ] {
                let bytes = try beacon.encode(credentials: credentials)
                #expect(try Beacon.decode(bytes, credentials: credentials) == beacon)
                #expect(Array(bytes.prefix(4)) == Array("CCBN".utf8))
            }
        }
    }

    @Test("the largest beacon fits the datagram limit; longer fields are refused on both ends")
    func sizes() throws {
        var beacon = sampleBeacon(host: String(repeating: "h", count: 255), label: String(repeating: "l", count: 64))
        beacon.capabilities.os = String(repeating: "o", count: 32)
        beacon.capabilities.arch = String(repeating: "a", count: 32)
        let bytes = try beacon.encode(credentials: secure)
        #expect(bytes.count == 467 && bytes.count <= Beacon.maxDatagramSize)
        #expect(try Beacon.decode(bytes, credentials: secure) == beacon)
        beacon.capabilities.label += "x"
        #expect(throws: DiscoveryError.fieldTooLong(what: "beacon", field: "label", length: 65, limit: 64)) {
            try beacon.encode(credentials: secure)
        }
        // A length byte over its limit is refused before anything else is read.
        var raw = try sampleBeacon().encode(credentials: insecureCredentials)
        raw[65] = 33  // os length
        #expect(throws: DiscoveryError.fieldTooLong(what: "beacon", field: "os", length: 33, limit: 32)) {
            try Beacon.decode(raw, credentials: insecureCredentials)
        }
        #expect(throws: DiscoveryError.oversized(what: "beacon", size: 513, limit: 512)) {
            try Beacon.decode([UInt8](repeating: 0, count: 513), credentials: secure)
        }
    }

    @Test("every single-bit flip of an authenticated beacon is refused")
    func bitFlips() throws {
        let bytes = try sampleBeacon().encode(credentials: secure)
        var refused = 0
        for i in 0..<bytes.count {
            for bit in 0..<8 {
                var flipped = bytes
                flipped[i] ^= 1 << bit
                #expect(throws: DiscoveryError.self, "flip of bit \(bit) in byte \(i)") {
                    try Beacon.decode(flipped, credentials: secure)
                }
                refused += 1
            }
        }
        #expect(refused == bytes.count * 8)
    }

    @Test("truncation at every length, and an extra byte, are refused without crashing")
    func truncation() throws {
        for credentials in [secure, insecureCredentials] {
            let bytes = try sampleBeacon().encode(credentials: credentials)
            for length in 0..<bytes.count {
                #expect(throws: DiscoveryError.self, "length \(length)") {
                    try Beacon.decode(Array(bytes.prefix(length)), credentials: credentials)
                }
            }
            #expect(
                throws: DiscoveryError.trailingBytes(what: "beacon", expected: bytes.count, actual: bytes.count + 1)
            ) {
                try Beacon.decode(bytes + [0], credentials: credentials)
            }
        }
        #expect(throws: DiscoveryError.truncated(what: "beacon", field: "magic", needed: 4, available: 2)) {
            try Beacon.decode([0x43, 0x43], credentials: secure)
        }
    }

    @Test("each kind of wrong beacon gets its own error, naming both sides' values")
    func distinctErrors() throws {
        let bytes = try sampleBeacon().encode(credentials: secure)

        var magic = bytes
        magic[0] = UInt8(ascii: "X")
        #expect(
            throws: DiscoveryError.badMagic(what: "beacon", expected: Array("CCBN".utf8), found: Array("XCBN".utf8))
        ) { try Beacon.decode(magic, credentials: secure) }

        var version = bytes
        version[4] = 2
        let versionError = DiscoveryError.protocolVersion(what: "beacon", local: 1, remote: 2)
        #expect(throws: versionError) { try Beacon.decode(version, credentials: secure) }
        #expect(versionError.description.contains("v2") && versionError.description.contains("v1"))

        let otherJob = secureCredentials(job: "other")
        let jobError = DiscoveryError.otherJob(what: "beacon", local: otherJob.jobID, remote: demoJob)
        #expect(throws: jobError) { try Beacon.decode(bytes, credentials: otherJob) }
        #expect(jobError.description.contains(demoJob.description))
        #expect(jobError.description.contains(otherJob.jobID.description))

        #expect(throws: DiscoveryError.badMAC(node: node(7))) {
            try Beacon.decode(bytes, credentials: secureCredentials("another secret"))
        }
        var tampered = bytes
        tampered[48] ^= 1  // the port
        #expect(throws: DiscoveryError.badMAC(node: node(7))) { try Beacon.decode(tampered, credentials: secure) }

        let plain = try sampleBeacon().encode(credentials: insecureCredentials)
        #expect(throws: DiscoveryError.authenticationMismatch(what: "beacon", localSecure: true)) {
            try Beacon.decode(plain, credentials: secure)
        }
        #expect(throws: DiscoveryError.authenticationMismatch(what: "beacon", localSecure: false)) {
            try Beacon.decode(bytes, credentials: insecureCredentials)
        }

        var badUTF8 = plain
        badUTF8[68] = 0xFF  // first byte of the host
        #expect(throws: DiscoveryError.malformed(what: "beacon", detail: "host is not valid UTF-8")) {
            try Beacon.decode(badUTF8, credentials: insecureCredentials)
        }
    }

    @Test("random datagrams are refused without crashing")
    func fuzz() throws {
        var g = SplitMix64(seed: 42)
        let valid = try sampleBeacon().encode(credentials: secure)
        for round in 0..<5000 {
            var bytes: [UInt8]
            if round % 2 == 0 {
                bytes = (0..<Int(g.next() % 600)).map { _ in UInt8.random(in: 0...255, using: &g) }
            } else {  // a valid header with random damage, to get past the early checks
                bytes = valid
                for _ in 0..<(1 + Int(g.next() % 4)) {
                    bytes[Int(g.next() % UInt64(bytes.count))] = UInt8(g.next() & 0xFF)
                }
                bytes = Array(bytes.prefix(Int(g.next() % UInt64(bytes.count + 20))))
            }
            if bytes == valid { continue }
            #expect(throws: DiscoveryError.self) { try Beacon.decode(bytes, credentials: secure) }
        }
    }

    @Test("a beacon prints as one line without secrets")
    func description() {
        let line = sampleBeacon(flags: [.committed]).description
        #expect(line.contains("192.168.1.20:29500") && line.contains("committed") && line.contains("kitchen-ipad"))
    }
}

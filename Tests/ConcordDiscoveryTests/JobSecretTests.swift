import Testing

@testable import ConcordDiscovery
import ConcordTestSupport

@Suite("Job secret, job id, node id")
struct JobSecretTests {
    @Test("secrets from bytes and strings; an empty one is refused")
    func basics() throws {
        #expect(try JobSecret(bytes: [1, 2, 3]).byteCount == 3)
        #expect(try JobSecret(string: "héllo").byteCount == 6)
        #expect(throws: JobSecretError.empty(source: "a string")) { try JobSecret(string: "") }
        #expect(throws: JobSecretError.empty(source: "bytes")) { try JobSecret(bytes: []) }
    }

    @Test("a secret file loses exactly one trailing line ending")
    func fileTrimming() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let cases: [(String, String)] = [
            ("abc", "abc"), ("abc\n", "abc"), ("abc\r\n", "abc"), ("abc\n\n", "abc\n"), (" abc \n", " abc "),
        ]
        for (i, (content, expected)) in cases.enumerated() {
            let path = dir.write("s\(i)", Array(content.utf8))
            let fromFile = JobCredentials(jobID: demoJob, authentication: .secret(try JobSecret(contentsOfFile: path)))
            let fromString = JobCredentials(jobID: demoJob, authentication: .secret(try JobSecret(string: expected)))
            #expect(fromFile.beaconKey == fromString.beaconKey, "file \(content.debugDescription)")
        }
    }

    @Test("missing, empty, directory and oversized files fail with messages naming the file")
    func fileErrors() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let missing = dir.path + "/nope"
        #expect(throws: JobSecretError.fileMissing(path: missing)) { try JobSecret(contentsOfFile: missing) }
        let empty = dir.write("empty", [])
        #expect(throws: JobSecretError.empty(source: "file \(empty)")) { try JobSecret(contentsOfFile: empty) }
        let newline = dir.write("newline", [10])
        #expect(throws: JobSecretError.empty(source: "file \(newline)")) { try JobSecret(contentsOfFile: newline) }
        #expect(throws: JobSecretError.notARegularFile(path: dir.path)) { try JobSecret(contentsOfFile: dir.path) }
        let big = dir.write("big", [UInt8](repeating: 65, count: JobSecret.maxFileSize + 1))
        #expect(throws: JobSecretError.fileTooLarge(path: big, size: JobSecret.maxFileSize + 1, limit: 65536)) {
            try JobSecret(contentsOfFile: big)
        }
        for error in [
            JobSecretError.fileMissing(path: missing), .empty(source: "file \(empty)"),
            .notARegularFile(path: dir.path), .fileUnreadable(path: "/x", reason: "Permission denied"),
        ] {
            #expect(
                error.description.contains(missing) || error.description.contains(dir.path)
                    || error.description.contains("/x"))
        }
        #expect(JobSecretError.fileMissing(path: missing).description.contains("chmod 600"))
        let notADirectory = empty + "/x"
        #expect(throws: JobSecretError.fileUnreadable(path: notADirectory, reason: "Not a directory")) {
            try JobSecret(contentsOfFile: notADirectory)
        }
    }

    @Test("a file readable by group or others loads with a warning; mode 600 has none")
    func permissions() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let open = dir.write("open", Array("s3cret".utf8), mode: 0o644)
        let warning = try #require(try JobSecret(contentsOfFile: open).permissionsWarning)
        #expect(warning.contains(open) && warning.contains("0644") && warning.contains("chmod 600"))
        let groupWrite = dir.write("gw", Array("s3cret".utf8), mode: 0o620)
        #expect(try JobSecret(contentsOfFile: groupWrite).permissionsWarning?.contains("0620") == true)
        let closed = dir.write("closed", Array("s3cret".utf8), mode: 0o600)
        #expect(try JobSecret(contentsOfFile: closed).permissionsWarning == nil)
        #expect(try JobSecret(contentsOfFile: closed).source == "file \(closed)")
    }

    @Test("printing a secret, its credentials or its authentication never shows the secret")
    func redaction() throws {
        let text = "TOPSECRET-value-42"
        let secret = try JobSecret(string: text)
        let credentials = JobCredentials(jobID: demoJob, authentication: .secret(secret))
        var dumped = ""
        dump(secret, to: &dumped)
        dump(credentials, to: &dumped)
        let printed = [
            secret.description, secret.debugDescription, String(describing: secret), String(reflecting: secret),
            "\(secret)", credentials.description, String(reflecting: credentials),
            Authentication.secret(secret).description, String(reflecting: Authentication.secret(secret)), dumped,
        ]
        let keys = KeyPurpose.allCases.map { secret.derivedKey(for: $0, job: demoJob) }
        for p in printed {
            #expect(!p.contains(text), "leaked in \(p)")
            #expect(!p.contains("TOPSECRET"), "leaked in \(p)")
            for key in keys {
                #expect(!p.contains(hexString(key)) && !p.contains("\(key)"), "a derived key leaked in \(p)")
                #expect(!p.contains("\(key.prefix(4))".dropLast()), "a derived key leaked in \(p)")
            }
        }
        #expect(secret.description == "job secret from a string (18 bytes)")
    }

    @Test("keys are HKDF-SHA256 per purpose and per job, pinned to a reference computation")
    func keyDerivation() throws {
        let secret = try JobSecret(string: "correct horse")
        #expect(demoJob.description == "a7e7f77fa3c373f3")
        #expect(
            hexString(secret.derivedKey(for: .beacon, job: demoJob))
                == "1849c3d5a5590d93652ca68fe82865f5f06c92c12e96554258d06434c184ec8d")
        #expect(
            hexString(secret.derivedKey(for: .handshake, job: demoJob))
                == "d2af773b51cac1c9efe3e93b02bce690738efb862620af2336bf6cf5f4e615d5")
        let other = JobID(jobName: "other")
        #expect(secret.derivedKey(for: .beacon, job: other) != secret.derivedKey(for: .beacon, job: demoJob))
        let c = JobCredentials(jobID: demoJob, authentication: .secret(secret))
        #expect(c.beaconKey != c.handshakeKey && c.isSecure)
        #expect(!insecureCredentials.isSecure && insecureCredentials.beaconKey == nil)
    }

    @Test("job ids: stable SHA-256 prefix, hex round trip, distinct names differ")
    func jobIDs() {
        #expect(JobID(jobName: "").description == "feae0576232b6462")
        #expect(JobID(jobName: "demo") == JobID(jobName: "demo"))
        #expect(JobID(jobName: "demo") != JobID(jobName: "demo2"))
        #expect(JobID(hex: "a7e7f77fa3c373f3") == demoJob)
        #expect(JobID(hex: "a7e7") == nil && JobID(hex: "zz e7f77fa3c373f3") == nil)
    }

    @Test("node ids: 32 hex digits, round trip, numeric order equals text order")
    func nodeIDs() {
        var g = SplitMix64(seed: 1)
        let ids = (0..<200).map { _ in NodeID.random(using: &g) }
        for id in ids {
            #expect(id.description.count == 32)
            #expect(NodeID(hex: id.description) == id)
            #expect(NodeID(bytes: id.bytes) == id)
        }
        #expect(ids.sorted() == ids.sorted { $0.description < $1.description })
        #expect(NodeID(hex: "00") == nil)
        #expect(NodeID(high: 0, low: 1) < NodeID(high: 1, low: 0))
        #expect(NodeID.random() != NodeID.random())
        #expect(node(1).shortDescription.count == 8)
    }
}

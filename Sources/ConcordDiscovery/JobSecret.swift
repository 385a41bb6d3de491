// The job's shared secret, and the keys derived from it.
//
// Every node of a job holds the same secret (bytes, a string, or a file copied to each device). It is
// never used directly: HKDF-SHA256 (RFC 5869) derives one 32-byte key per purpose,
//
//   key(purpose) = HKDF-SHA256(ikm: secret, salt: "concord-v1" | job id (8 bytes, big endian),
//                              info: purpose label, length: 32)
//
// with the labels "concord beacon mac v1" and "concord handshake proof v1", so a beacon MAC can never be
// replayed as a handshake proof (or the reverse), and the same secret reused for two jobs gives unrelated
// keys. Cost: two HMAC-SHA256 calls per key, done once per `JobCredentials`.
//
// The secret never leaves this type in printable form: `description`, `debugDescription` and the mirror
// (`dump`) say only where it came from and its length.

import Crypto

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// What a derived key is for; each purpose gets its own key.
public enum KeyPurpose: String, Sendable, CaseIterable {
    /// The MAC on every beacon datagram.
    case beacon = "concord beacon mac v1"
    /// The proofs of the TCP handshake.
    case handshake = "concord handshake proof v1"
    /// The MAC on every membership and RTT datagram sent to one node.
    case unicast = "concord unicast mac v1"
}

/// A job's shared secret: only nodes that hold it can announce themselves or complete a handshake.
///
/// Printing it never shows the secret:
///
///     let secret = try JobSecret(contentsOfFile: "/etc/concord/job.secret")
///     if let warning = secret.permissionsWarning { print("warning: \(warning)") }
///     print(secret)   // job secret from file /etc/concord/job.secret (32 bytes)
public struct JobSecret: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The secret itself; never printed.
    private let material: [UInt8]
    /// Where the secret came from, safe to print ("bytes", "a string", "file PATH").
    public let source: String
    /// Set when the secret came from a file that group or others can access: a message naming the file,
    /// its mode and the `chmod` that fixes it. The secret is still loaded; the caller decides whether to
    /// warn or refuse.
    public let permissionsWarning: String?

    /// The largest secret file accepted, in bytes (a larger file is almost certainly the wrong file).
    public static let maxFileSize = 64 * 1024

    /// A secret made of `bytes`.
    ///
    /// - Throws: `JobSecretError.empty` when `bytes` is empty.
    public init(bytes: [UInt8]) throws {
        try self.init(material: bytes, source: "bytes", permissionsWarning: nil)
    }

    /// A secret made of the UTF-8 bytes of `string` (taken as is: no trimming).
    ///
    /// - Throws: `JobSecretError.empty` when `string` is empty.
    public init(string: String) throws {
        try self.init(material: Array(string.utf8), source: "a string", permissionsWarning: nil)
    }

    /// The secret stored in the file at `path`: its bytes, less one trailing line ending ("\n" or "\r\n")
    /// as editors and `echo` leave one.
    ///
    /// - Throws: `JobSecretError` when the file does not exist, cannot be opened or read, is not a regular
    ///   file, is larger than `maxFileSize`, or holds nothing but a line ending.
    public init(contentsOfFile path: String) throws {
        let (raw, mode) = try Self.readFile(path)
        var material = raw
        if material.last == UInt8(ascii: "\n") {
            material.removeLast()
            if material.last == UInt8(ascii: "\r") { material.removeLast() }
        }
        var warning: String? = nil
        if mode & 0o077 != 0 {
            let octal = String(mode & 0o777, radix: 8)
            let who = mode & 0o044 != 0 ? "can be read by group or others" : "is accessible to group or others"
            warning =
                "job secret file \(path) \(who) (mode 0\(octal)); anyone who can read it can join this job: "
                + "run chmod 600 \(path)"
        }
        try self.init(material: material, source: "file \(path)", permissionsWarning: warning)
    }

    private init(material: [UInt8], source: String, permissionsWarning: String?) throws {
        guard !material.isEmpty else { throw JobSecretError.empty(source: source) }
        self.material = material
        self.source = source
        self.permissionsWarning = permissionsWarning
    }

    /// The number of bytes in the secret.
    public var byteCount: Int { material.count }

    /// The 32-byte key for `purpose` in job `job` (see the file comment for the derivation).
    package func derivedKey(for purpose: KeyPurpose, job: JobID) -> [UInt8] {
        let salt = Array("concord-v1".utf8) + job.bigEndianBytes
        let key = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: material), salt: salt, info: Array(purpose.rawValue.utf8),
            outputByteCount: 32)
        return key.withUnsafeBytes { Array($0) }
    }

    /// Says where the secret came from and its length, never its bytes.
    public var description: String { "job secret from \(source) (\(material.count) bytes)" }

    /// The same as `description`: the secret is not shown in debug output either.
    public var debugDescription: String { "JobSecret(\(source), \(material.count) bytes, redacted)" }

    /// A mirror without the secret, so `dump` and debuggers do not show it.
    public var customMirror: Mirror {
        Mirror(self, children: ["source": source, "byteCount": material.count], displayStyle: .struct)
    }

    /// Reads a whole regular file and returns its bytes and permission bits.
    private static func readFile(_ path: String) throws -> (bytes: [UInt8], mode: UInt32) {
        func reason(_ code: Int32) -> String { String(cString: strerror(code)) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            if code == ENOENT { throw JobSecretError.fileMissing(path: path) }
            throw JobSecretError.fileUnreadable(path: path, reason: reason(code))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw JobSecretError.fileUnreadable(path: path, reason: reason(errno))
        }
        let mode = UInt32(info.st_mode)
        guard mode & 0o170000 == 0o100000 else { throw JobSecretError.notARegularFile(path: path) }
        guard info.st_size <= maxFileSize else {
            throw JobSecretError.fileTooLarge(path: path, size: Int(info.st_size), limit: maxFileSize)
        }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw JobSecretError.fileUnreadable(path: path, reason: reason(errno))
            }
            if n == 0 { break }
            result.append(contentsOf: chunk[0..<n])
            if result.count > maxFileSize {
                throw JobSecretError.fileTooLarge(path: path, size: result.count, limit: maxFileSize)
            }
        }
        return (result, mode)
    }
}

/// Why a job secret could not be made or loaded. Messages name the file and what to do; never the secret.
public enum JobSecretError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The secret (or the file, once one line ending is trimmed) has no bytes.
    case empty(source: String)
    /// No file at `path`.
    case fileMissing(path: String)
    /// The file exists but could not be opened or read (`reason` is the system's text, e.g. permission
    /// denied).
    case fileUnreadable(path: String, reason: String)
    /// `path` is a directory, device or other non-regular file.
    case notARegularFile(path: String)
    /// The file is larger than `JobSecret.maxFileSize`.
    case fileTooLarge(path: String, size: Int, limit: Int)

    public var description: String {
        switch self {
        case .empty(let source):
            return "the job secret from \(source) is empty; give every node of the job the same non-empty secret"
        case .fileMissing(let path):
            return "job secret file \(path) does not exist; create it once (for example "
                + "`head -c 32 /dev/urandom | base64 > \(path); chmod 600 \(path)`) and copy it to every node"
        case .fileUnreadable(let path, let reason):
            return "cannot read job secret file \(path): \(reason); check its owner and permissions"
        case .notARegularFile(let path):
            return "job secret file \(path) is not a regular file; point to the file that holds the secret"
        case .fileTooLarge(let path, let size, let limit):
            return "job secret file \(path) is \(size) bytes, more than the \(limit) a secret may have; "
                + "is this the right file?"
        }
    }
}

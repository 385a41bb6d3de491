// LinePrefixer.swift — turns one pipe's byte stream into whole, prefixed lines.
//
// Bytes arrive from a rank in arbitrary pieces (a read may end mid-line, or hold many lines). The
// prefixer keeps the unfinished tail and hands back only complete lines, each with the prefix in
// front, as one buffer; the launcher writes that buffer in one go from its single thread, so lines of
// different ranks can never interleave. `finish()` returns the final partial line — with a newline
// added — when the pipe closes. A line longer than `maximumLineLength` is cut there (and continued on
// the next prefixed line) so one rank that never writes a newline cannot grow memory without bound.
//
// This is a pure value: no I/O, so its behaviour depends only on the bytes given to it.

/// Splits a byte stream into lines and puts a prefix in front of each.
struct LinePrefixer {
    /// Put in front of every line, e.g. `"[rank 3] "`.
    let prefix: [UInt8]
    /// The longest line (without prefix and newline) kept before it is cut.
    let maximumLineLength: Int
    /// The bytes of the unfinished last line.
    private var pending: [UInt8] = []

    private static let newline = UInt8(ascii: "\n")

    /// - Parameters:
    ///   - prefix: Put in front of every line.
    ///   - maximumLineLength: Lines longer than this many bytes are cut; must be at least 1.
    init(prefix: String, maximumLineLength: Int = 64 * 1024) {
        precondition(maximumLineLength >= 1, "maximumLineLength must be at least 1")
        self.prefix = Array(prefix.utf8)
        self.maximumLineLength = maximumLineLength
    }

    /// Whether a partial line is waiting for its newline.
    var hasPendingLine: Bool { !pending.isEmpty }

    /// Adds bytes read from the stream.
    ///
    /// - Returns: Every line completed by `bytes`, each prefixed and newline-terminated; empty if
    ///   `bytes` completed none.
    mutating func append<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> [UInt8] {
        var output: [UInt8] = []
        var rest = bytes[...]
        while let newline = rest.firstIndex(of: Self.newline) {
            emit(pending: rest[..<newline], into: &output)
            rest = rest[rest.index(after: newline)...]
        }
        pending.append(contentsOf: rest)
        while pending.count > maximumLineLength {
            output += prefix
            output += pending[..<maximumLineLength]
            output.append(Self.newline)
            pending.removeFirst(maximumLineLength)
        }
        return output
    }

    /// Ends the stream.
    ///
    /// - Returns: The final partial line, prefixed and with a newline added; empty if the stream
    ///   ended with a newline.
    mutating func finish() -> [UInt8] {
        guard hasPendingLine else { return [] }
        var output: [UInt8] = []
        emit(pending: [], into: &output)
        return output
    }

    /// Appends `prefix + pending + tail + "\n"` to `output` (cutting overlong lines) and clears
    /// `pending`.
    private mutating func emit<Tail: Collection<UInt8>>(
        pending tail: Tail, into output: inout [UInt8]
    ) {
        pending.append(contentsOf: tail)
        var line = pending[...]
        repeat {
            let piece = line.prefix(maximumLineLength)
            output += prefix
            output += piece
            output.append(Self.newline)
            line = line.dropFirst(piece.count)
        } while !line.isEmpty
        pending.removeAll(keepingCapacity: true)
    }
}

// MNIST's file format, IDX (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number — two zero bytes, a
// data-type code (0x08 = unsigned byte) and the number of dimensions — then each dimension as a big-endian
// UInt32, then the data, row-major. Images are 0x00000803 (count × rows × cols bytes), labels 0x00000801
// (count bytes).
//
// Only plain files are read: the files are distributed gzipped, and a file starting with the gzip magic
// (1f 8b) is refused with the command that fixes it. Every failure is an `IDXError` naming the file and
// what was expected versus found. File access goes through POSIX open/read/write (no Foundation).
#if canImport(Glibc)
    internal import Glibc
#elseif canImport(Musl)
    internal import Musl
#elseif canImport(Darwin)
    internal import Darwin
#endif

/// What is wrong with an IDX file (or a pair of them).
public struct IDXError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The failures the reader and writer report.
    public enum Problem: Equatable, Sendable {
        /// The file does not exist.
        case missingFile
        /// None of the accepted names exists in a directory; `compressed` names a `.gz` file found instead.
        case notFoundInDirectory(names: [String], compressed: String?)
        /// The file starts with the gzip magic 1f 8b.
        case compressed
        /// The first two bytes are not zero (`magic` is the first four bytes, big-endian).
        case badMagic(magic: UInt32, expected: UInt32)
        /// The data-type code (third byte) is not 0x08, unsigned byte.
        case wrongDataType(code: UInt8)
        /// The number of dimensions (fourth byte) is not the expected one (3 for images, 1 for labels).
        case wrongDimensionCount(expected: Int, found: Int)
        /// The file is shorter than its header says.
        case truncated(expectedBytes: Int, foundBytes: Int)
        /// The file is longer than its header says.
        case trailingBytes(expectedBytes: Int, foundBytes: Int)
        /// The labels file (this error's path) and the images file disagree on the number of items.
        case countMismatch(labels: Int, images: Int, imagesPath: String)
        /// A label is not below the number of classes.
        case labelOutOfRange(label: UInt8, index: Int, classes: Int)
        /// The system refused to open, read or write the file.
        case system(operation: String, message: String)
    }

    /// The file (or directory) concerned.
    public let path: String
    /// What is wrong.
    public let problem: Problem

    /// An error about `path`.
    /// - Parameters:
    ///   - path: the file or directory.
    ///   - problem: what is wrong.
    public init(path: String, problem: Problem) {
        self.path = path
        self.problem = problem
    }

    /// One line naming the file and what is wrong, expected versus found.
    public var description: String {
        switch problem {
        case .missingFile:
            return "IDX file \(path) does not exist"
        case .notFoundInDirectory(let names, let compressed):
            var text = "no IDX file in \(path): looked for \(names.joined(separator: ", "))"
            if let compressed { text += "; found \(compressed): decompress it first: gunzip \(compressed)" }
            return text
        case .compressed:
            return "IDX file \(path) is gzip-compressed (starts with 1f 8b); decompress it first: gunzip \(path)"
        case .badMagic(let magic, let expected):
            return "IDX file \(path) has bad magic number \(hex(magic)), expected \(hex(expected))"
        case .wrongDataType(let code):
            return
                "IDX file \(path) has data type code 0x\(String(code, radix: 16, uppercase: true)), expected 0x08 (unsigned byte)"
        case .wrongDimensionCount(let expected, let found):
            return "IDX file \(path) has \(found) dimensions, expected \(expected)"
        case .truncated(let expectedBytes, let foundBytes):
            return "IDX file \(path) is truncated: expected \(expectedBytes) bytes, found \(foundBytes)"
        case .trailingBytes(let expectedBytes, let foundBytes):
            return
                "IDX file \(path) has \(foundBytes - expectedBytes) bytes after its data: expected \(expectedBytes) bytes, found \(foundBytes)"
        case .countMismatch(let labels, let images, let imagesPath):
            return "IDX count mismatch: \(path) has \(labels) labels but \(imagesPath) has \(images) images"
        case .labelOutOfRange(let label, let index, let classes):
            return "IDX file \(path) has label \(label) at index \(index), expected a class below \(classes)"
        case .system(let operation, let message):
            return "cannot \(operation) IDX file \(path): \(message)"
        }
    }

    private func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
    }
}

/// Reads and writes MNIST-format IDX files (uncompressed, unsigned-byte data).
public enum IDX {
    /// The magic number of an unsigned-byte image file (3 dimensions).
    public static let imagesMagic: UInt32 = 0x0000_0803
    /// The magic number of an unsigned-byte label file (1 dimension).
    public static let labelsMagic: UInt32 = 0x0000_0801

    /// Accepted file names of each MNIST file, in the order they are tried.
    public static let trainImageNames = ["train-images-idx3-ubyte", "train-images.idx3-ubyte"]
    /// Accepted file names of the training labels.
    public static let trainLabelNames = ["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"]
    /// Accepted file names of the test images.
    public static let testImageNames = ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"]
    /// Accepted file names of the test labels.
    public static let testLabelNames = ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"]

    // MARK: - Reading

    /// Loads MNIST from a directory holding the four standard files (uncompressed; either the
    /// `train-images-idx3-ubyte` or the `train-images.idx3-ubyte` spelling).
    /// - Parameter directory: the directory.
    /// - Returns: the training set and the test set, pixels scaled to 0…1.
    /// - Throws: `IDXError` naming the missing or malformed file.
    public static func load(directory: String) throws -> (train: Dataset, test: Dataset) {
        let train = try load(
            imagesPath: find(trainImageNames, in: directory), labelsPath: find(trainLabelNames, in: directory))
        let test = try load(
            imagesPath: find(testImageNames, in: directory), labelsPath: find(testLabelNames, in: directory))
        return (train, test)
    }

    /// Loads one data set from an images file and a labels file.
    /// - Parameters:
    ///   - imagesPath: an IDX unsigned-byte file with 3 dimensions.
    ///   - labelsPath: an IDX unsigned-byte file with 1 dimension, as many items as images.
    ///   - classes: labels must be below this.
    /// - Returns: the images scaled to 0…1 (`Float(byte) / 255`) with their labels.
    /// - Throws: `IDXError`.
    public static func load(imagesPath: String, labelsPath: String, classes: Int = 10) throws -> Dataset {
        let images = try readImages(path: imagesPath)
        let labels = try readLabels(path: labelsPath)
        guard labels.count == images.count else {
            throw IDXError(
                path: labelsPath,
                problem: .countMismatch(labels: labels.count, images: images.count, imagesPath: imagesPath))
        }
        if let index = labels.firstIndex(where: { Int($0) >= classes }) {
            throw IDXError(
                path: labelsPath, problem: .labelOutOfRange(label: labels[index], index: index, classes: classes))
        }
        let levels = (0...255).map { Float($0) / 255 }  // correctly rounded, unlike a multiplication by 1/255
        return Dataset(
            images: images.pixels.map { levels[Int($0)] }, labels: labels, rows: images.rows, cols: images.cols,
            classes: classes)
    }

    /// Reads an image file: magic 0x00000803, then count, rows, cols.
    /// - Parameter path: the file.
    /// - Returns: the raw bytes (count × rows × cols) and the dimensions.
    /// - Throws: `IDXError`.
    public static func readImages(path: String) throws -> (pixels: [UInt8], count: Int, rows: Int, cols: Int) {
        let (dimensions, data) = try read(path: path, magic: imagesMagic)
        return (data, dimensions[0], dimensions[1], dimensions[2])
    }

    /// Reads a label file: magic 0x00000801, then count.
    /// - Parameter path: the file.
    /// - Returns: the labels.
    /// - Throws: `IDXError`.
    public static func readLabels(path: String) throws -> [UInt8] {
        try read(path: path, magic: labelsMagic).data
    }

    /// Parses a whole file with the given magic number (unsigned bytes, `magic & 0xFF` dimensions).
    static func read(path: String, magic: UInt32) throws -> (dimensions: [Int], data: [UInt8]) {
        let bytes = try readFile(path)
        let rank = Int(magic & 0xFF)
        if bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B {
            throw IDXError(path: path, problem: .compressed)
        }
        guard bytes.count >= 4 else {
            throw IDXError(path: path, problem: .truncated(expectedBytes: 4 + 4 * rank, foundBytes: bytes.count))
        }
        let found = bigEndian(bytes, at: 0)
        guard bytes[0] == 0 && bytes[1] == 0 else {
            throw IDXError(path: path, problem: .badMagic(magic: found, expected: magic))
        }
        guard bytes[2] == 0x08 else { throw IDXError(path: path, problem: .wrongDataType(code: bytes[2])) }
        guard Int(bytes[3]) == rank else {
            throw IDXError(path: path, problem: .wrongDimensionCount(expected: rank, found: Int(bytes[3])))
        }
        let header = 4 + 4 * rank
        guard bytes.count >= header else {
            throw IDXError(path: path, problem: .truncated(expectedBytes: header, foundBytes: bytes.count))
        }
        let dimensions = (0..<rank).map { Int(bigEndian(bytes, at: 4 + 4 * $0)) }
        var dataBytes = 1
        for dimension in dimensions {
            let (product, overflow) = dataBytes.multipliedReportingOverflow(by: dimension)
            dataBytes = overflow ? Int.max - header : product
        }
        let expected = header + min(dataBytes, Int.max - header)
        guard bytes.count >= expected else {
            throw IDXError(path: path, problem: .truncated(expectedBytes: expected, foundBytes: bytes.count))
        }
        guard bytes.count == expected else {
            throw IDXError(path: path, problem: .trailingBytes(expectedBytes: expected, foundBytes: bytes.count))
        }
        return (dimensions, Array(bytes[header...]))
    }

    // MARK: - Writing

    /// Writes an image file (magic 0x00000803).
    /// - Parameters:
    ///   - pixels: `count × rows × cols` bytes.
    ///   - count: images.
    ///   - rows: image height.
    ///   - cols: image width.
    ///   - path: the file to create or replace.
    /// - Throws: `IDXError` (`.system`) if the file cannot be written.
    public static func writeImages(_ pixels: [UInt8], count: Int, rows: Int, cols: Int, to path: String) throws {
        precondition(
            pixels.count == count * rows * cols, "writeImages: \(pixels.count) bytes for \(count)×\(rows)×\(cols)")
        try writeFile(path, header(magic: imagesMagic, dimensions: [count, rows, cols]) + pixels)
    }

    /// Writes a data set's images (magic 0x00000803), each pixel rounded to the nearest of 0…255 after
    /// scaling by 255.
    /// - Parameters:
    ///   - dataset: images with pixels in 0…1.
    ///   - path: the file to create or replace.
    /// - Throws: `IDXError` (`.system`) if the file cannot be written.
    public static func writeImages(of dataset: Dataset, to path: String) throws {
        let bytes = dataset.images.map { UInt8(min(255, max(0, ($0 * 255).rounded()))) }
        try writeImages(bytes, count: dataset.count, rows: dataset.rows, cols: dataset.cols, to: path)
    }

    /// Writes a label file (magic 0x00000801).
    /// - Parameters:
    ///   - labels: one byte per item.
    ///   - path: the file to create or replace.
    /// - Throws: `IDXError` (`.system`) if the file cannot be written.
    public static func writeLabels(_ labels: [UInt8], to path: String) throws {
        try writeFile(path, header(magic: labelsMagic, dimensions: [labels.count]) + labels)
    }

    /// Writes a data set as an images file and a labels file.
    /// - Parameters:
    ///   - dataset: the data set.
    ///   - imagesPath: the images file to create or replace.
    ///   - labelsPath: the labels file to create or replace.
    /// - Throws: `IDXError` (`.system`) if a file cannot be written.
    public static func write(_ dataset: Dataset, imagesPath: String, labelsPath: String) throws {
        try writeImages(of: dataset, to: imagesPath)
        try writeLabels(dataset.labels, to: labelsPath)
    }

    // MARK: - Files

    static func header(magic: UInt32, dimensions: [Int]) -> [UInt8] {
        var bytes: [UInt8] = []
        for value in [magic] + dimensions.map({ UInt32($0) }) {
            bytes += [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
        }
        return bytes
    }

    static func bigEndian(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        UInt32(bytes[offset]) << 24 | UInt32(bytes[offset + 1]) << 16 | UInt32(bytes[offset + 2]) << 8
            | UInt32(bytes[offset + 3])
    }

    /// The first of `names` that exists in `directory`.
    static func find(_ names: [String], in directory: String) throws -> String {
        let base = directory.hasSuffix("/") ? directory : directory + "/"
        for name in names where access(base + name, F_OK) == 0 { return base + name }
        let compressed = names.map { base + $0 + ".gz" }.first { access($0, F_OK) == 0 }
        throw IDXError(path: directory, problem: .notFoundInDirectory(names: names, compressed: compressed))
    }

    /// The whole file (POSIX `open`, `fstat`, `read`).
    static func readFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { throw IDXError(path: path, problem: .missingFile) }
            throw systemError(path, "open", code)
        }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw systemError(path, "stat", errno) }
        var bytes = [UInt8](repeating: 0, count: Int(status.st_size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { posixRead(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw systemError(path, "read", errno) }
            if n == 0 { break }  // shrank while reading: parse what is there
            done += n
        }
        return Array(bytes[0..<done])
    }

    /// Creates or replaces a file with `bytes` (POSIX `open`, `write`).
    static func writeFile(_ path: String, _ bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw systemError(path, "create", errno) }
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { posixWrite(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw systemError(path, "write", errno) }
            done += n
        }
    }

    static func systemError(_ path: String, _ operation: String, _ code: Int32) -> IDXError {
        IDXError(path: path, problem: .system(operation: operation, message: String(cString: strerror(code))))
    }
}

/// `read(2)` (a file-scope name: inside `IDX`, `read` and `write` are its own methods).
private func posixRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int { read(fd, buffer, count) }

/// `write(2)`.
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buffer, count) }

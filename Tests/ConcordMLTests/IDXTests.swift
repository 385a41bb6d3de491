// IDX files written by the test into a temporary directory: a round trip through `load(directory:)` under
// both spellings of the names, and one clear error for each way a file can be wrong (message checked:
// it names the file and what was expected versus found).
import ConcordML
import Foundation
import XCTest

final class IDXTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory =
            FileManager.default.temporaryDirectory.appendingPathComponent("concord-idx-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(atPath: directory)
    }

    func path(_ name: String) -> String { directory + "/" + name }

    /// Synthetic digits quantized to bytes / 255, so that the IDX round trip is exact.
    func quantized(count: Int, seed: UInt64) -> Dataset {
        var data = SyntheticDigits.make(count: count, seed: seed)
        data.images = data.images.map { ($0 * 255).rounded() / 255 }
        return data
    }

    /// Equal data sets, reported briefly (XCTAssertEqual would print every pixel).
    func assertSame(_ a: Dataset, _ b: Dataset, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(
            [a.count, a.rows, a.cols, a.classes], [b.count, b.rows, b.cols, b.classes], file: file, line: line)
        XCTAssertEqual(a.labels, b.labels, file: file, line: line)
        let differing = zip(a.images, b.images).filter { $0 != $1 }.count
        XCTAssertTrue(
            a.images.count == b.images.count && differing == 0, "\(differing) pixels differ", file: file, line: line)
    }

    func writeRaw(_ bytes: [UInt8], _ name: String) {
        XCTAssertTrue(FileManager.default.createFile(atPath: path(name), contents: Data(bytes)))
    }

    /// The error `body` throws, as an IDXError.
    func idxError(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> IDXError? {
        do {
            try body()
            XCTFail("no error thrown", file: file, line: line)
        } catch let error as IDXError {
            return error
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
        return nil
    }

    func testRoundTripThroughStandardNames() throws {
        let train = quantized(count: 30, seed: 1)
        let test = quantized(count: 12, seed: 2)
        try IDX.write(train, imagesPath: path("train-images-idx3-ubyte"), labelsPath: path("train-labels-idx1-ubyte"))
        try IDX.write(test, imagesPath: path("t10k-images-idx3-ubyte"), labelsPath: path("t10k-labels-idx1-ubyte"))
        let loaded = try IDX.load(directory: directory)
        assertSame(loaded.train, train)
        assertSame(loaded.test, test)
        // The header: magic 0x00000803, then 30, 28, 28 big-endian.
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path("train-images-idx3-ubyte"))))
        XCTAssertEqual(Array(bytes[0..<16]), [0, 0, 8, 3, 0, 0, 0, 30, 0, 0, 0, 28, 0, 0, 0, 28])
        XCTAssertEqual(bytes.count, 16 + 30 * 784)
    }

    func testDottedNamesAccepted() throws {
        let data = quantized(count: 5, seed: 3)
        try IDX.write(data, imagesPath: path("train-images.idx3-ubyte"), labelsPath: path("train-labels.idx1-ubyte"))
        try IDX.write(data, imagesPath: path("t10k-images.idx3-ubyte"), labelsPath: path("t10k-labels.idx1-ubyte"))
        let loaded = try IDX.load(directory: directory + "/")
        assertSame(loaded.train, data)
        assertSame(loaded.test, data)
    }

    func testRawImagesAndLabelsRoundTrip() throws {
        let pixels: [UInt8] = (0..<2 * 3 * 4).map { UInt8($0 * 10) }
        try IDX.writeImages(pixels, count: 2, rows: 3, cols: 4, to: path("images"))
        try IDX.writeLabels([4, 9], to: path("labels"))
        let images = try IDX.readImages(path: path("images"))
        XCTAssertEqual(images.pixels, pixels)
        XCTAssertEqual([images.count, images.rows, images.cols], [2, 3, 4])
        XCTAssertEqual(try IDX.readLabels(path: path("labels")), [4, 9])
        let data = try IDX.load(imagesPath: path("images"), labelsPath: path("labels"))
        XCTAssertEqual(data.images[1], 10 / 255, accuracy: 1e-7)
        XCTAssertEqual(data.rows, 3)
    }

    func testTruncatedFile() throws {
        try IDX.writeImages([UInt8](repeating: 7, count: 3 * 4 * 4), count: 3, rows: 4, cols: 4, to: path("images"))
        let full = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path("images"))))
        writeRaw(Array(full.prefix(40)), "short")
        let error = idxError { _ = try IDX.readImages(path: self.path("short")) }
        XCTAssertEqual(error?.problem, .truncated(expectedBytes: 64, foundBytes: 40))
        XCTAssertEqual(error?.description, "IDX file \(path("short")) is truncated: expected 64 bytes, found 40")
        // Cut inside the header.
        writeRaw(Array(full.prefix(9)), "header")
        let headerError = idxError { _ = try IDX.readImages(path: self.path("header")) }
        XCTAssertEqual(headerError?.problem, .truncated(expectedBytes: 16, foundBytes: 9))
        // Longer than the header says.
        writeRaw(full + [1, 2], "long")
        let longError = idxError { _ = try IDX.readImages(path: self.path("long")) }
        XCTAssertEqual(longError?.problem, .trailingBytes(expectedBytes: 64, foundBytes: 66))
        XCTAssertTrue(
            longError?.description.contains("2 bytes after its data") ?? false, "\(String(describing: longError))")
    }

    func testBadMagicWrongTypeAndWrongDimensions() throws {
        writeRaw([0x12, 0x34, 0x08, 0x03, 0, 0, 0, 0], "magic")
        let magic = idxError { _ = try IDX.readImages(path: self.path("magic")) }
        XCTAssertEqual(
            magic?.description, "IDX file \(path("magic")) has bad magic number 0x12340803, expected 0x00000803")

        writeRaw([0, 0, 0x0D, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "float")
        let type = idxError { _ = try IDX.readImages(path: self.path("float")) }
        XCTAssertEqual(type?.problem, .wrongDataType(code: 0x0D))
        XCTAssertTrue(
            type?.description.contains("data type code 0xD, expected 0x08") ?? false, "\(String(describing: type))")

        try IDX.writeLabels([1, 2, 3], to: path("labels"))
        let swapped = idxError { _ = try IDX.readImages(path: self.path("labels")) }
        XCTAssertEqual(swapped?.problem, .wrongDimensionCount(expected: 3, found: 1))
        XCTAssertEqual(swapped?.description, "IDX file \(path("labels")) has 1 dimensions, expected 3")
    }

    func testGzipMagicSaysDecompressFirst() {
        writeRaw([0x1F, 0x8B, 0x08, 0x00, 0, 0, 0, 0, 0, 3], "train-images-idx3-ubyte")
        let error = idxError { _ = try IDX.readImages(path: self.path("train-images-idx3-ubyte")) }
        XCTAssertEqual(error?.problem, .compressed)
        XCTAssertEqual(
            error?.description,
            "IDX file \(path("train-images-idx3-ubyte")) is gzip-compressed (starts with 1f 8b); decompress it first: gunzip \(path("train-images-idx3-ubyte"))"
        )
    }

    func testImageLabelCountMismatch() throws {
        try IDX.writeImages([UInt8](repeating: 0, count: 4 * 2 * 2), count: 4, rows: 2, cols: 2, to: path("images"))
        try IDX.writeLabels([1, 2, 3], to: path("labels"))
        let error = idxError { _ = try IDX.load(imagesPath: self.path("images"), labelsPath: self.path("labels")) }
        XCTAssertEqual(
            error?.description, "IDX count mismatch: \(path("labels")) has 3 labels but \(path("images")) has 4 images")
    }

    func testLabelOutOfRange() throws {
        try IDX.writeImages([UInt8](repeating: 0, count: 2), count: 2, rows: 1, cols: 1, to: path("images"))
        try IDX.writeLabels([3, 12], to: path("labels"))
        let error = idxError { _ = try IDX.load(imagesPath: self.path("images"), labelsPath: self.path("labels")) }
        XCTAssertEqual(error?.problem, .labelOutOfRange(label: 12, index: 1, classes: 10))
        XCTAssertTrue(error?.description.contains(path("labels")) ?? false)
    }

    func testMissingFiles() throws {
        let missing = idxError { _ = try IDX.readLabels(path: self.path("nothing-here")) }
        XCTAssertEqual(missing?.description, "IDX file \(path("nothing-here")) does not exist")

        let empty = idxError { _ = try IDX.load(directory: self.directory) }
        XCTAssertEqual(
            empty?.description,
            "no IDX file in \(directory): looked for train-images-idx3-ubyte, train-images.idx3-ubyte")

        // Only the gzipped download is there: the message says how to fix it.
        writeRaw([0x1F, 0x8B], "train-images-idx3-ubyte.gz")
        let gzipped = idxError { _ = try IDX.load(directory: self.directory) }
        XCTAssertEqual(
            gzipped?.problem,
            .notFoundInDirectory(
                names: IDX.trainImageNames, compressed: path("train-images-idx3-ubyte.gz")))
        XCTAssertTrue(
            gzipped?.description.hasSuffix("decompress it first: gunzip \(path("train-images-idx3-ubyte.gz"))")
                ?? false,
            "\(String(describing: gzipped))")

        // Training files present, test labels missing: the error names what is missing.
        let data = quantized(count: 3, seed: 1)
        try IDX.write(data, imagesPath: path("train-images-idx3-ubyte"), labelsPath: path("train-labels-idx1-ubyte"))
        try IDX.writeImages(of: data, to: path("t10k-images-idx3-ubyte"))
        let noTestLabels = idxError { _ = try IDX.load(directory: self.directory) }
        XCTAssertTrue(
            noTestLabels?.description.contains("t10k-labels-idx1-ubyte") ?? false, "\(String(describing: noTestLabels))"
        )
    }
}

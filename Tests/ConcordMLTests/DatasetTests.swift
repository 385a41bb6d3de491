// Shards (exhaustively: disjoint, covering, sizes within one), subsets, epoch permutations and batch
// gathering.
import ConcordML
import XCTest

final class DatasetTests: XCTestCase {
    /// A data set whose pixels encode their image index, so a misplaced copy shows.
    func indexed(count: Int, rows: Int = 2, cols: Int = 3) -> Dataset {
        let pixels = rows * cols
        let images = (0..<count * pixels).map { Float($0 / pixels) + Float($0 % pixels) / 100 }
        return Dataset(images: images, labels: (0..<count).map { UInt8($0 % 10) }, rows: rows, cols: cols)
    }

    func testShardRangesCoverExactlyWithSizesWithinOne() {
        for count in 0...40 {
            for parts in 1...9 {
                let ranges = (0..<parts).map { Dataset.shardRange($0, of: parts, count: count) }
                XCTAssertEqual(ranges.first!.lowerBound, 0)
                XCTAssertEqual(ranges.last!.upperBound, count)
                for (a, b) in zip(ranges, ranges.dropFirst()) {
                    XCTAssertEqual(a.upperBound, b.lowerBound, "count \(count) parts \(parts): contiguous, in order")
                }
                let sizes = ranges.map(\.count)
                XCTAssertLessThanOrEqual(sizes.max()! - sizes.min()!, 1, "count \(count) parts \(parts): \(sizes)")
                XCTAssertEqual(sizes.reduce(0, +), count)
            }
        }
    }

    func testShardsConcatenateToTheWholeSet() {
        let data = indexed(count: 23)
        let shards = (0..<4).map { data.shard($0, of: 4) }
        XCTAssertEqual(shards.map(\.count), [6, 6, 6, 5])
        XCTAssertEqual(shards.dropFirst().reduce(shards[0]) { $0.appending($1) }, data)
        XCTAssertEqual(shards[2], data.subset(12..<18))
        XCTAssertEqual(shards[2].images.first, 12, "shard 2 starts at image 12")
    }

    func testSubsetByIndicesAndLabelCounts() {
        let data = indexed(count: 12)
        let picked = data.subset(indices: [5, 0, 5])
        XCTAssertEqual(picked.labels, [5, 0, 5])
        XCTAssertEqual(picked.images[0], 5)
        XCTAssertEqual(picked.images[6], 0)
        XCTAssertEqual(picked.images[17], 5.05, accuracy: 1e-6)
        XCTAssertEqual(data.labelCounts(), [2, 2, 1, 1, 1, 1, 1, 1, 1, 1])
    }

    func testPermutationIsDeterministicAndDiffersByEpochAndSeed() {
        let order = Dataset.permutation(count: 1000, seed: 9, epoch: 3)
        XCTAssertEqual(order.sorted(), Array(0..<1000), "a permutation")
        XCTAssertEqual(order, Dataset.permutation(count: 1000, seed: 9, epoch: 3), "same inputs, same order")
        XCTAssertNotEqual(order, Dataset.permutation(count: 1000, seed: 9, epoch: 4))
        XCTAssertNotEqual(order, Dataset.permutation(count: 1000, seed: 10, epoch: 3))
        XCTAssertNotEqual(order, Array(0..<1000))
        XCTAssertEqual(Dataset.permutation(count: 0, seed: 1, epoch: 0), [])
        XCTAssertEqual(Dataset.permutation(count: 1, seed: 1, epoch: 0), [0])
        // Fisher–Yates with a fair draw: position 0 gets every value about equally often.
        var hits = [Int](repeating: 0, count: 4)
        for epoch in 0..<4000 { hits[Dataset.permutation(count: 4, seed: 1, epoch: epoch)[0]] += 1 }
        XCTAssertTrue(hits.allSatisfy { (850...1150).contains($0) }, "\(hits)")
    }

    func testBatchBufferGathersImagesAndLabels() {
        let data = indexed(count: 10)
        let buffer = BatchBuffer(capacity: 4, pixelsPerImage: 6)
        buffer.fill(from: data, indices: [7, 2, 9])
        XCTAssertEqual(buffer.count, 3)
        XCTAssertEqual(Array(buffer.batchLabels), [7, 2, 9])
        XCTAssertEqual(
            Array(buffer.batchImages), Array(data.images[42..<48] + data.images[12..<18] + data.images[54..<60]))
        buffer.fill(from: data, indices: [1])
        XCTAssertEqual(Array(buffer.batchImages), Array(data.images[6..<12]))
        XCTAssertEqual(data.batchesPerEpoch(size: 4), 2)
    }
}

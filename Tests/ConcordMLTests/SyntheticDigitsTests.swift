// Synthetic digits: deterministic per seed, different across seeds, class-balanced, drawn per index (a
// shard equals the same slice of the whole set), in range and visibly inked.
import ConcordML
import XCTest

final class SyntheticDigitsTests: XCTestCase {
    func testDeterministicForASeedAndDifferentAcrossSeeds() {
        let a = SyntheticDigits.make(count: 120, seed: 5)
        let b = SyntheticDigits.make(count: 120, seed: 5)
        let c = SyntheticDigits.make(count: 120, seed: 6)
        XCTAssertTrue(a == b, "same seed, same images and labels")
        XCTAssertTrue(a.images != c.images, "another seed, other images")
        XCTAssertNotEqual(a.labels, c.labels)
        XCTAssertEqual(a.rows, 28)
        XCTAssertEqual(a.cols, 28)
        XCTAssertEqual(a.classes, 10)
        XCTAssertEqual(a.images.count, 120 * 784)
    }

    func testClassBalanced() {
        XCTAssertEqual(SyntheticDigits.make(count: 500, seed: 1).labelCounts(), [Int](repeating: 50, count: 10))
        let uneven = SyntheticDigits.make(count: 203, seed: 2).labelCounts()
        XCTAssertEqual(uneven.reduce(0, +), 203)
        XCTAssertTrue(uneven.allSatisfy { $0 == 20 || $0 == 21 }, "\(uneven)")
        // Each block of ten holds every digit, in an order that varies between blocks.
        let labels = SyntheticDigits.make(count: 40, seed: 3).labels
        XCTAssertEqual(Set(labels[0..<10]).count, 10)
        XCTAssertNotEqual(Array(labels[0..<10]), Array(labels[10..<20]))
        XCTAssertEqual(SyntheticDigits.label(of: 17, seed: 3), labels[17])
    }

    func testRangeEqualsSliceOfWholeSet() {
        let whole = SyntheticDigits.make(count: 91, seed: 8)
        XCTAssertTrue(SyntheticDigits.make(range: 37..<91, seed: 8) == whole.subset(37..<91))
        XCTAssertEqual(SyntheticDigits.make(range: 0..<0, seed: 8).count, 0)
    }

    func testPixelsInRangeAndImagesInkedAndVaried() {
        let data = SyntheticDigits.make(count: 100, seed: 4)
        XCTAssertTrue(data.images.allSatisfy { $0 >= 0 && $0 <= 1 })
        for i in 0..<data.count {
            let image = data.images[i * 784..<(i + 1) * 784]
            let inked = image.filter { $0 > 0.5 }.count
            XCTAssertTrue((12...400).contains(inked), "image \(i) (digit \(data.labels[i])) has \(inked) inked pixels")
        }
        // Two images of the same digit differ (pose, shape and clutter are drawn per image).
        let sevens = (0..<data.count).filter { data.labels[$0] == 7 }
        XCTAssertGreaterThanOrEqual(sevens.count, 2)
        XCTAssertTrue(
            data.images[sevens[0] * 784..<(sevens[0] + 1) * 784] != data.images[sevens[1] * 784..<(sevens[1] + 1) * 784]
        )
        // Digits differ on average: the mean image of 1s has less ink than the mean image of 0s and 8s.
        func meanInk(_ digit: UInt8) -> Float {
            let members = (0..<data.count).filter { data.labels[$0] == digit }
            return members.map { data.images[$0 * 784..<($0 + 1) * 784].reduce(0, +) }.reduce(0, +)
                / Float(members.count)
        }
        XCTAssertLessThan(meanInk(1), meanInk(0))
        XCTAssertLessThan(meanInk(1), meanInk(8))
    }

    /// Images per second. Skipped unless CONCORD_ML_MEASURE=1; meaningful in a release build.
    func testMeasureSpeed() throws {
        try XCTSkipUnless(measuring, "set CONCORD_ML_MEASURE=1 (and build in release) to measure")
        let clock = ContinuousClock()
        let start = clock.now
        let data = SyntheticDigits.make(count: 20_000, seed: 1)
        let rate = Double(data.count) / seconds(clock.now - start)
        print("SyntheticDigits: \(Int(rate)) images/s")
        XCTAssertGreaterThan(rate, 0)
    }
}

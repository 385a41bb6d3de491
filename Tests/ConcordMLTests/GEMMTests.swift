// The three GEMM variants against a naive double-precision reference, on shapes that hit every edge of the
// blocking (rows mod 6, columns mod 16, k across the 256 block), overwriting and accumulating, with guard
// values after C so that a tail store that runs past the matrix is caught.
import ConcordML
import Foundation
import XCTest

final class GEMMTests: XCTestCase {
    /// (m, n, k): tiny, odd, exactly one tile, one more than a tile, and k across the k block.
    static let shapes: [(Int, Int, Int)] = [
        (1, 1, 1), (3, 5, 7), (17, 33, 9), (6, 16, 4), (7, 17, 5), (12, 32, 3), (13, 15, 11), (2, 48, 1),
        (5, 1, 31), (1, 40, 2), (11, 19, 257), (7, 16, 300), (19, 47, 520),
    ]

    enum Variant: CaseIterable { case aTimesB, aTransposedTimesB, aTimesBTransposed }

    func testEveryVariantMatchesReferenceOnOddShapes() {
        for variant in Variant.allCases {
            for (m, n, k) in Self.shapes {
                for accumulate in [false, true] {
                    check(variant, m: m, n: n, k: k, accumulate: accumulate)
                }
            }
        }
    }

    func testEmptyInnerDimensionZeroesOrKeepsC() {
        var c: [Float] = [1, 2, 3, 4, 5, 6]
        let a: [Float] = [9]
        GEMM.aTimesB(m: 2, n: 3, k: 0, a: a, b: a, c: &c, accumulate: true)
        XCTAssertEqual(c, [1, 2, 3, 4, 5, 6], "accumulating an empty product changes nothing")
        GEMM.aTransposedTimesB(m: 2, n: 3, k: 0, a: a, b: a, c: &c)
        XCTAssertEqual(c, [0, 0, 0, 0, 0, 0], "an empty product overwrites C with zeros")
    }

    func testKnownSmallProduct() {
        // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]
        var c = [Float](repeating: 0, count: 4)
        GEMM.aTimesB(m: 2, n: 2, k: 2, a: [1, 2, 3, 4], b: [5, 6, 7, 8], c: &c)
        XCTAssertEqual(c, [19, 22, 43, 50])
        // Aᵀ·B with A = [1 3; 2 4] stored k × m gives the same.
        GEMM.aTransposedTimesB(m: 2, n: 2, k: 2, a: [1, 3, 2, 4], b: [5, 6, 7, 8], c: &c)
        XCTAssertEqual(c, [19, 22, 43, 50])
        // A·Bᵀ with B = [5 7; 6 8] stored n × k gives the same.
        GEMM.aTimesBTransposed(m: 2, n: 2, k: 2, a: [1, 2, 3, 4], b: [5, 7, 6, 8], c: &c)
        XCTAssertEqual(c, [19, 22, 43, 50])
    }

    /// Runs one variant on distinct inputs and compares with the reference; C is followed by guard values.
    func check(
        _ variant: Variant, m: Int, n: Int, k: Int, accumulate: Bool, file: StaticString = #filePath, line: UInt = #line
    ) {
        var random = SplitMix64(seed: UInt64(m * 1_000_000 + n * 1000 + k))
        let a = (0..<m * k).map { _ in random.nextFloat(-1, 1) }
        let b = (0..<k * n).map { _ in random.nextFloat(-1, 1) }
        let initial = (0..<m * n).map { _ in random.nextFloat(-1, 1) }
        let guardValue: Float = 12345.5
        var c = initial + [Float](repeating: guardValue, count: 17)
        // Reference on the logical matrices: A as m × k and B as k × n, whatever their storage.
        func aAt(_ i: Int, _ p: Int) -> Double {
            Double(variant == .aTransposedTimesB ? a[p * m + i] : a[i * k + p])
        }
        func bAt(_ p: Int, _ j: Int) -> Double {
            Double(variant == .aTimesBTransposed ? b[j * k + p] : b[p * n + j])
        }
        switch variant {
        case .aTimesB: GEMM.aTimesB(m: m, n: n, k: k, a: a, b: b, c: &c, accumulate: accumulate)
        case .aTransposedTimesB: GEMM.aTransposedTimesB(m: m, n: n, k: k, a: a, b: b, c: &c, accumulate: accumulate)
        case .aTimesBTransposed: GEMM.aTimesBTransposed(m: m, n: n, k: k, a: a, b: b, c: &c, accumulate: accumulate)
        }
        var worst = 0.0
        for i in 0..<m {
            for j in 0..<n {
                var sum = accumulate ? Double(initial[i * n + j]) : 0
                var magnitude = accumulate ? abs(Double(initial[i * n + j])) : 0
                for p in 0..<k {
                    sum += aAt(i, p) * bAt(p, j)
                    magnitude += abs(aAt(i, p) * bAt(p, j))
                }
                // Float rounding: each of k + 1 additions errs by at most one ulp of the running magnitude.
                let tolerance = Double(k + 2) * Double(Float.ulpOfOne) * magnitude + 1e-30
                let error = abs(Double(c[i * n + j]) - sum)
                worst = max(worst, error / tolerance)
                if error > tolerance {
                    XCTFail(
                        "\(variant) m=\(m) n=\(n) k=\(k) accumulate=\(accumulate): C[\(i)][\(j)] = \(c[i * n + j]), expected \(sum)",
                        file: file, line: line)
                    return
                }
            }
        }
        XCTAssertEqual(
            Array(c[(m * n)...]), [Float](repeating: guardValue, count: 17),
            "\(variant) m=\(m) n=\(n) k=\(k) wrote past the end of C", file: file, line: line)
        XCTAssertLessThanOrEqual(worst, 1, file: file, line: line)
    }

    /// Throughput of the three variants on the demo MLP's shapes. Skipped unless CONCORD_ML_MEASURE=1; meaningful
    /// only in a release build (`swift build -c release -Xcc -march=x86-64-v3`).
    func testMeasureThroughput() throws {
        try XCTSkipUnless(measuring, "set CONCORD_ML_MEASURE=1 (and build in release) to measure")
        let shapes = [(64, 256, 784), (784, 256, 64), (64, 784, 256), (256, 256, 784), (512, 512, 512)]
        for (m, n, k) in shapes {
            let a = [Float](repeating: 0.5, count: max(m, k) * max(k, n))
            let b = [Float](repeating: 0.25, count: max(k, n) * max(m, n))
            var c = [Float](repeating: 0, count: m * n)
            for variant in Variant.allCases {
                let clock = ContinuousClock()
                var repetitions = 0
                let start = clock.now
                while clock.now - start < .milliseconds(300) {
                    switch variant {
                    case .aTimesB: GEMM.aTimesB(m: m, n: n, k: k, a: a, b: b, c: &c)
                    case .aTransposedTimesB:
                        GEMM.aTransposedTimesB(m: m, n: n, k: k, a: a, b: b, c: &c, accumulate: true)
                    case .aTimesBTransposed: GEMM.aTimesBTransposed(m: m, n: n, k: k, a: a, b: b, c: &c)
                    }
                    repetitions += 1
                }
                let seconds = seconds(clock.now - start)
                let gflops = 2 * Double(m * n * k * repetitions) / seconds / 1e9
                print("GEMM \(variant) m=\(m) n=\(n) k=\(k): \((gflops * 10).rounded() / 10) GFLOP/s")
                XCTAssertGreaterThan(gflops, 0)
            }
        }
    }
}

/// Whether the measurement tests run (CONCORD_ML_MEASURE=1).
let measuring = ProcessInfo.processInfo.environment["CONCORD_ML_MEASURE"] == "1"

/// A duration in seconds.
func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
}

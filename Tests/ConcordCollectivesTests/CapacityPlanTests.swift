// CapacityPlan: pure arithmetic, no transport. Checked:
//   chunkCounts   sums exactly to the count, non-negative, whole grains but for one chunk holding the
//                 remainder, nothing for a rank of weight 0, within two grains of the exact share; for
//                 random weights (SplitMix64), counts 0…100_003, 1…8 ranks, grains 1, 7, 64;
//   balance       the plan's max link time equals the exact LP optimum (all vertices enumerated, n = 2…6)
//                 within 1e-6 relative, is never worse than the best of a fine grid over the weights
//                 (n = 3, 4) nor than equal chunks, and never beats the information bound;
//   equal links   exactly 1/n each, counts within one grain;
//   20/100        the hand-derived optimum below, with and without int8 on the slow links;
//   codecs        only links below median / slowFactor are compressed;
//   ties          the lexicographically least link times, then the equal split; rotating the ring rotates
//                 the plan; the same links give the same bits.
//
// The 20 vs 100 Mbit/s ring, derived by hand. Rank 0 sits behind a 20 Mbit/s uplink, so both its links
// are slow: B = [20, 100, 100, 20] Mbit/s = [B_s, 5B_s, 5B_s, B_s] with B_s = 2.5 MB/s; float32 (e = 4),
// S elements, weights w:
//   bytes_0 = 4S(2 − w0 − w1)   bytes_1 = 4S(2 − w1 − w2)   bytes_2 = 4S(2 − w2 − w3)   bytes_3 = 4S(2 − w3 − w0)
// Since w0 + w1 ≤ 1, link 0 carries at least 4S bytes: T ≥ 4S/B_s (the information bound too: rank 1
// must hear 4S bytes about the others' values, through link 0). Reaching it needs w0 + w1 = 1 (link 0)
// and w3 + w0 = 1 (link 3), which with Σw = 1 leaves w = (1, 0, 0, 0): rank 0 owns the whole buffer, the
// ring becomes a pipelined reduce into rank 0 and broadcast from it. Links 1 and 2 then carry 8S bytes at
// 5B_s, 1.6S/B_s < 4S/B_s. So T* = 4S/B_s, while equal chunks load every link with 4S·2·3/4 = 6S bytes:
// T = 6S/B_s, 1.5× slower. For 100 MB (S = 25·10^6): 40 s against 60 s. (Without clamping the closed
// form would promise 20 s: the even links share 4S·3 bytes at 20 + 100 Mbit/s, but link 0 cannot carry
// the 2S bytes that needs.)
// With int8/64 on the two slow links (e = 1.0625 there and in every link's all-gather, 4 on the fast
// links' reduce-scatter): bytes_0 = 1.0625·S(2 − w0 − w1) ≥ 1.0625·S, reached by the same w = (1, 0, 0, 0),
// where links 1 and 2 carry (4 + 1.0625)·S at 5B_s: T* = 1.0625·S/B_s, 10.625 s for 100 MB.
// The default slowFactor 3 compresses nothing here: the median is (20 + 100)/2 = 60, and 20 is not below
// 60/3. slowFactor 2 compresses links 0 and 3.
import ConcordCollectives
import ConcordCore
import ConcordTestSupport
import Testing

private enum Fixture {
    static let mbit = 1e6 / 8

    /// Links of `bandwidths` bytes/s and no latency.
    static func links(_ bandwidths: [Double]) -> [LinkEstimate] {
        bandwidths.map { LinkEstimate(bytesPerSecond: $0, latencySeconds: 0) }
    }

    /// Random bandwidths between 1 and 1000 MB/s, spread over the decades.
    static func randomLinks(_ n: Int, _ random: inout SplitMix64) -> [LinkEstimate] {
        links(
            (0..<n).map { _ in
                let decade = [1e6, 1e7, 1e8][Int.random(in: 0..<3, using: &random)]
                return decade * Double.random(in: 1...10, using: &random)
            })
    }

    /// Seconds per element of the busiest link.
    static func maxTime(_ plan: CapacityPlan) -> Double { plan.linkSeconds(bytes: 4).max()! }

    /// Seconds per element of the busiest link with weights `w` and the codecs of `plan`.
    static func maxTime(_ plan: CapacityPlan, weights w: [Double]) -> Double {
        let n = w.count
        let (e, g) = (plan.hopCodecs.map(\.bytesPerElement), plan.gatherCodec.bytesPerElement)
        var worst = 0.0
        for k in 0..<n {
            worst = max(worst, (e[k] * (1 - w[k]) + g * (1 - w[(k + 1) % n])) / plan.links[k].bytesPerSecond)
        }
        return worst
    }

    /// The exact optimum of the weights LP for `plan`'s links and codecs, seconds per element: every vertex
    /// of {(w, τ): Σw = 1, w ≥ 0, e_k·w_k + e_g·w_{k+1} + B_k·τ ≥ e_k + e_g} solved for and checked.
    static func vertexOptimum(_ plan: CapacityPlan) -> Double {
        let n = plan.worldSize
        let (e, g) = (plan.hopCodecs.map(\.bytesPerElement), plan.gatherCodec.bytesPerElement)
        let b = plan.links.map { $0.bytesPerSecond / 1e6 }  // MB/s: τ in µs per element, better scaled
        // Inequality i < n: link i; inequality n + j: w_j ≥ 0. Unknowns w_0 … w_{n-1}, τ.
        func row(_ i: Int) -> ([Double], Double) {
            var a = [Double](repeating: 0, count: n + 1)
            if i < n {
                a[i] += e[i]
                a[(i + 1) % n] += g
                a[n] = b[i]
                return (a, e[i] + g)
            }
            a[i - n] = 1
            return (a, 0)
        }
        var best = Double.infinity
        for mask in 0..<(1 << (2 * n)) where mask.nonzeroBitCount == n {
            var m = [[Double]]()
            var rhs = [Double]()
            m.append([Double](repeating: 1, count: n) + [0])
            rhs.append(1)
            for i in 0..<(2 * n) where mask & (1 << i) != 0 {
                let (a, r) = row(i)
                m.append(a)
                rhs.append(r)
            }
            guard let x = solve(m, rhs) else { continue }
            let feasible = (0..<(2 * n)).allSatisfy { i in
                let (a, r) = row(i)
                let lhs = zip(a, x).reduce(0) { $0 + $1.0 * $1.1 }
                return lhs >= r - 1e-9 * max(1, r)
            }
            if feasible { best = min(best, x[n]) }
        }
        return best / 1e6
    }

    /// Gaussian elimination with partial pivoting; nil when singular.
    static func solve(_ a: [[Double]], _ b: [Double]) -> [Double]? {
        var m = a
        var r = b
        let size = r.count
        for col in 0..<size {
            let pivot = (col..<size).max { abs(m[$0][col]) < abs(m[$1][col]) }!
            if abs(m[pivot][col]) < 1e-12 { return nil }
            m.swapAt(col, pivot)
            r.swapAt(col, pivot)
            for rowIndex in (col + 1)..<size {
                let f = m[rowIndex][col] / m[col][col]
                if f == 0 { continue }
                for c in col..<size { m[rowIndex][c] -= f * m[col][c] }
                r[rowIndex] -= f * r[col]
            }
        }
        var x = [Double](repeating: 0, count: size)
        for rowIndex in stride(from: size - 1, through: 0, by: -1) {
            var s = r[rowIndex]
            for c in (rowIndex + 1)..<size { s -= m[rowIndex][c] * x[c] }
            x[rowIndex] = s / m[rowIndex][rowIndex]
        }
        return x
    }

    /// The least max time over a grid of weights in steps of 1/steps (n = 3 or 4).
    static func gridOptimum(_ plan: CapacityPlan, steps: Int) -> Double {
        let n = plan.worldSize
        var best = Double.infinity
        let d = Double(steps)
        var w = [Double](repeating: 0, count: n)
        func visit(_ c: Int, _ left: Int) {
            if c == n - 1 {
                w[c] = Double(left) / d
                best = min(best, maxTime(plan, weights: w))
                return
            }
            for i in 0...left {
                w[c] = Double(i) / d
                visit(c + 1, left - i)
            }
        }
        visit(0, steps)
        return best
    }
}

@Suite("CapacityPlan")
struct CapacityPlanTests {
    @Test("chunkCounts: exact total, non-negative, whole grains but one, zero weight gets nothing", arguments: 1...8)
    func chunkCounts(ranks n: Int) {
        var random = SplitMix64(seed: 0xC0FF_EE00 &+ UInt64(n))
        for trial in 0..<150 {
            var raw = (0..<n).map { _ in
                Int.random(in: 0..<4, using: &random) == 0 ? 0 : Double.random(in: 0...1, using: &random)
            }
            if trial % 7 == 0 { raw = (0..<n).map { $0 == n - 1 ? 1 : 0 } }
            if raw.allSatisfy({ $0 == 0 }) { raw[0] = 1 }
            let total = raw.reduce(0, +)
            let weights = raw.map { $0 / total }
            let plan = CapacityPlan(
                links: Array(repeating: .unknown, count: n), chunkWeights: weights,
                hopCodecs: Array(repeating: .float32, count: n))
            for count in [0, 1, 63, 64, 65, 1000, 100_003, Int.random(in: 0...100_003, using: &random)] {
                for grain in [1, 7, 64] {
                    let counts = plan.chunkCounts(count: count, grain: grain)
                    let label = "n \(n) weights \(weights) count \(count) grain \(grain): \(counts)"
                    #expect(counts.count == n, "\(label)")
                    #expect(counts.reduce(0, +) == count, "\(label)")
                    #expect(counts.allSatisfy { $0 >= 0 }, "\(label)")
                    let ragged = counts.filter { $0 % grain != 0 }
                    #expect(ragged.count <= (count % grain == 0 ? 0 : 1), "\(label)")
                    if count % grain != 0 { #expect(counts.contains { $0 % grain == count % grain }, "\(label)") }
                    for c in 0..<n {
                        if weights[c] == 0 { #expect(counts[c] == 0, "\(label): rank \(c) has weight 0") }
                        #expect(abs(Double(counts[c]) - weights[c] * Double(count)) <= Double(2 * grain), "\(label)")
                    }
                    #expect(plan.chunkCounts(count: count, grain: grain) == counts, "\(label): not deterministic")
                }
            }
        }
    }

    @Test("equal links: weights exactly 1/n, counts within one grain, no compression", arguments: 1...8)
    func equalLinks(ranks n: Int) {
        var random = SplitMix64(seed: 77 &+ UInt64(n))
        for _ in 0..<10 {
            let speed = Double.random(in: 1e5...1e9, using: &random)
            let latency = Double.random(in: 0...0.01, using: &random)
            let links = Array(repeating: LinkEstimate(bytesPerSecond: speed, latencySeconds: latency), count: n)
            for codec in [nil, WireCodec.int8(blockSize: 64)] {
                let plan = CapacityPlan.balanced(links: links, slowLinkCodec: codec)
                #expect(plan.chunkWeights == Array(repeating: 1 / Double(n), count: n), "\(plan.chunkWeights)")
                #expect(plan.hopCodecs == Array(repeating: .float32, count: n))
                for count in [0, 5, 64 * n - 1, 100_003, Int.random(in: 0...100_003, using: &random)] {
                    let counts = plan.chunkCounts(count: count)
                    #expect(counts.max()! - counts.min()! <= 64, "count \(count): \(counts)")
                }
                let bytes = 1 << 24
                let expected = Double(bytes) * 2 * Double(n - 1) / Double(n) / speed + Double(2 * (n - 1)) * latency
                #expect(abs(plan.predictedSeconds(bytes: bytes) - expected) <= 1e-12 * expected)
            }
        }
    }

    @Test("the equal plan: 1/n, float32, unknown links, nothing predicted")
    func equalPlan() {
        for n in 1...6 {
            let plan = CapacityPlan.equal(worldSize: n)
            #expect(plan.chunkWeights == Array(repeating: 1 / Double(n), count: n))
            #expect(plan.hopCodecs == Array(repeating: .float32, count: n))
            #expect(plan.links == Array(repeating: .unknown, count: n))
            #expect(plan.predictedSeconds(bytes: 1 << 20) == 0)
        }
    }

    @Test(
        "balance: the LP optimum (vertices), no worse than a fine grid or equal chunks, no better than information",
        arguments: 2...6)
    func balance(ranks n: Int) {
        var random = SplitMix64(seed: 0xBA1A_4CE &+ UInt64(n))
        let trials = n <= 4 ? 12 : 6
        for trial in 0..<trials {
            let links = Fixture.randomLinks(n, &random)
            for codec in [nil, WireCodec.int8(blockSize: 64), .bfloat16] {
                let plan = CapacityPlan.balanced(links: links, slowLinkCodec: codec, slowFactor: 2)
                let label =
                    "trial \(trial) links \(links.map(\.bytesPerSecond)) codec \(codec.map { "\($0)" } ?? "none")"
                let time = Fixture.maxTime(plan)
                let optimum = Fixture.vertexOptimum(plan)
                #expect(abs(time - optimum) <= 1e-6 * optimum, "\(label): plan \(time), LP optimum \(optimum)")
                let equal = Fixture.maxTime(plan, weights: Array(repeating: 1 / Double(n), count: n))
                #expect(time <= equal * (1 + 1e-12), "\(label): plan \(time), equal chunks \(equal)")
                if codec == nil {
                    let bound = CapacityPlan.informationBoundSeconds(links: links, bytes: 4)
                    #expect(time >= bound * (1 - 1e-12), "\(label): plan \(time) beats the information bound \(bound)")
                    #expect(
                        CapacityPlan.lowerBoundSeconds(links: links, bytes: 4) == plan.predictedSeconds(bytes: 4))
                }
                if n == 3 || n == 4, trial < 6 {
                    let grid = Fixture.gridOptimum(plan, steps: n == 3 ? 600 : 120)
                    #expect(time <= grid * (1 + 1e-6), "\(label): plan \(time), grid \(grid)")
                }
                #expect(plan.chunkWeights.allSatisfy { $0 >= 0 } && abs(plan.chunkWeights.reduce(0, +) - 1) < 1e-12)
            }
        }
    }

    @Test("20 vs 100 Mbit/s: rank 0 owns the buffer, 40 s instead of 60 s for 100 MB (see the file comment)")
    func slowMember() {
        let (slow, fast) = (20 * Fixture.mbit, 100 * Fixture.mbit)
        let links = Fixture.links([slow, fast, fast, slow])
        let bytes = 100_000_000
        let plan = CapacityPlan.balanced(links: links)
        #expect(plan.hopCodecs == Array(repeating: .float32, count: 4), "slowFactor 3: 20 is not below 60/3")
        #expect(zip(plan.chunkWeights, [1.0, 0, 0, 0]).allSatisfy { abs($0 - $1) <= 1e-9 }, "\(plan.chunkWeights)")
        let optimum = 4 * Double(bytes / 4) / slow  // 4S / B_s = 40 s
        let equal = 6 * Double(bytes / 4) / slow  // 6S / B_s = 60 s
        #expect(abs(optimum - 40) < 1e-9 && abs(equal - 60) < 1e-9)
        #expect(abs(plan.predictedSeconds(bytes: bytes) - optimum) <= 1e-9 * optimum)
        let equalTime = CapacityPlan.equal(worldSize: 4).withLinks(links).predictedSeconds(bytes: bytes)
        #expect(abs(equalTime - equal) <= 1e-9 * equal)
        #expect(abs(equalTime / plan.predictedSeconds(bytes: bytes) - 1.5) <= 1e-9)
        #expect(abs(CapacityPlan.lowerBoundSeconds(links: links, bytes: bytes) - optimum) <= 1e-9 * optimum)
        #expect(abs(CapacityPlan.informationBoundSeconds(links: links, bytes: bytes) - optimum) <= 1e-9 * optimum)
        #expect(plan.chunkCounts(count: bytes / 4) == [bytes / 4, 0, 0, 0])

        let compressed = CapacityPlan.balanced(links: links, slowLinkCodec: .int8(blockSize: 64), slowFactor: 2)
        #expect(compressed.hopCodecs == [.int8(blockSize: 64), .float32, .float32, .int8(blockSize: 64)])
        #expect(zip(compressed.chunkWeights, [1.0, 0, 0, 0]).allSatisfy { abs($0 - $1) <= 1e-9 })
        let compressedOptimum = 1.0625 * Double(bytes / 4) / slow  // 10.625 s
        #expect(abs(compressed.predictedSeconds(bytes: bytes) - compressedOptimum) <= 1e-9 * compressedOptimum)
        #expect(abs(compressedOptimum - 10.625) < 1e-9)
    }

    @Test("compression only on links below median / slowFactor")
    func compressionOnSlowLinks() {
        let int8 = WireCodec.int8(blockSize: 64)
        let one = CapacityPlan.balanced(
            links: Fixture.links([100, 100, 100, 20].map { $0 * Fixture.mbit }), slowLinkCodec: int8)
        #expect(one.hopCodecs == [.float32, .float32, .float32, int8])
        let none = CapacityPlan.balanced(links: Fixture.links([100, 100, 100, 20].map { $0 * Fixture.mbit }))
        #expect(none.hopCodecs == Array(repeating: .float32, count: 4))
        var random = SplitMix64(seed: 3)
        for n in 1...8 {
            for _ in 0..<20 {
                let links = Fixture.randomLinks(n, &random)
                let factor = Double.random(in: 1...5, using: &random)
                let plan = CapacityPlan.balanced(links: links, slowLinkCodec: .float16, slowFactor: factor)
                let sorted = links.map(\.bytesPerSecond).sorted()
                let median = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2
                for k in 0..<n {
                    let slow = links[k].bytesPerSecond < median / factor
                    #expect(plan.hopCodecs[k] == (slow ? .float16 : .float32), "link \(k) of \(links)")
                }
            }
        }
    }

    @Test("ties: the next slowest links finish as early as they can, then the equal split")
    func ties() {
        // Link 0 is the bottleneck whatever w0 + w1 = 1 splits; links 1 and 2 then want w1 = w0.
        let plan = CapacityPlan.balanced(links: Fixture.links([1e6, 1e9, 1e9]))
        #expect(zip(plan.chunkWeights, [0.5, 0.5, 0]).allSatisfy { abs($0 - $1) <= 1e-9 }, "\(plan.chunkWeights)")
        // Even n, one codec: (+1, −1, +1, −1) changes no link; [1, 2, 1, 2] is optimal at the equal split.
        let even = CapacityPlan.balanced(links: Fixture.links([1e6, 2e6, 1e6, 2e6]))
        #expect(even.chunkWeights == Array(repeating: 0.25, count: 4), "\(even.chunkWeights)")
        // Two ranks, one codec: nothing depends on the weights.
        let two = CapacityPlan.balanced(links: Fixture.links([1e6, 5e7]))
        #expect(two.chunkWeights == [0.5, 0.5])
        // Infinitely fast links constrain nothing.
        let unknown = CapacityPlan.balanced(links: Array(repeating: .unknown, count: 5))
        #expect(unknown.chunkWeights == Array(repeating: 0.2, count: 5))
    }

    @Test("deterministic, and rotating the ring rotates the plan", arguments: 2...8)
    func determinism(ranks n: Int) {
        var random = SplitMix64(seed: 0xD37 &+ UInt64(n))
        for _ in 0..<8 {
            let links = Fixture.randomLinks(n, &random)
            for codec in [nil, WireCodec.int8(blockSize: 64)] {
                let a = CapacityPlan.balanced(links: links, slowLinkCodec: codec, slowFactor: 2)
                let b = CapacityPlan.balanced(links: links, slowLinkCodec: codec, slowFactor: 2)
                #expect(a == b && a.chunkWeights.map(\.bitPattern) == b.chunkWeights.map(\.bitPattern))
                let rotated = CapacityPlan.balanced(
                    links: Array(links[1...] + links[..<1]), slowLinkCodec: codec, slowFactor: 2)
                let back = Array(rotated.chunkWeights[(n - 1)...] + rotated.chunkWeights[..<(n - 1)])
                let time = Fixture.maxTime(a)
                #expect(abs(Fixture.maxTime(rotated) - time) <= 1e-9 * time)
                #expect(
                    zip(a.chunkWeights, back).allSatisfy { abs($0 - $1) <= 1e-6 },
                    "\(links.map(\.bytesPerSecond)): \(a.chunkWeights) vs rotated \(back)")
            }
        }
    }

    @Test("replace only for a gain above 5%, or other codecs")
    func replace() {
        let (slow, fast) = (20 * Fixture.mbit, 100 * Fixture.mbit)
        let links = Fixture.links([slow, fast, fast, slow])
        let bytes = 16 << 20
        let plan = CapacityPlan.balanced(links: links)
        #expect(!plan.shouldReplace(with: plan, bytes: bytes))
        #expect(CapacityPlan.equal(worldSize: 4).shouldReplace(with: plan, bytes: bytes))
        // 2% noise on every link: the plan it gives is not worth switching to.
        let noisy = Fixture.links([slow * 1.02, fast * 0.98, fast * 1.01, slow * 0.99])
        let candidate = CapacityPlan.balanced(links: noisy)
        #expect(!plan.shouldReplace(with: candidate, bytes: bytes))
        #expect(plan.replanned(links: noisy, bytes: bytes) == plan.withLinks(noisy))
        // The slow member got a fast link: switch back towards equal chunks.
        let healed = Fixture.links([fast, fast, fast, fast])
        #expect(plan.shouldReplace(with: CapacityPlan.balanced(links: healed), bytes: bytes))
        #expect(plan.replanned(links: healed, bytes: bytes) == CapacityPlan.balanced(links: healed))
        // Other codecs, other world size: always.
        let compressed = CapacityPlan.balanced(links: links, slowLinkCodec: .int8(blockSize: 64), slowFactor: 2)
        #expect(plan.shouldReplace(with: compressed, bytes: bytes))
        #expect(plan.shouldReplace(with: .equal(worldSize: 3), bytes: bytes))
    }

    @Test("predicted time: busiest link plus 2(n-1) latencies; a line per rank")
    func predictionAndDescription() {
        let links = [
            LinkEstimate(bytesPerSecond: 1e6, latencySeconds: 0.002),
            LinkEstimate(bytesPerSecond: 4e6, latencySeconds: 0.001),
            LinkEstimate(bytesPerSecond: 2e6, latencySeconds: 0),
        ]
        let plan = CapacityPlan(
            links: links, chunkWeights: [0.5, 0.25, 0.25], hopCodecs: [.float32, .float32, .float32])
        // S = 1e6 floats: link 0 carries 4·1e6·(0.5 + 0.75) = 5e6 bytes in 5 s, link 1 4·1e6·(0.75 + 0.75)
        // = 6e6 in 1.5 s, link 2 4·1e6·(0.75 + 0.5) = 5e6 in 2.5 s.
        #expect(plan.linkBytes(bytes: 4_000_000) == [5e6, 6e6, 5e6])
        #expect(plan.linkSeconds(bytes: 4_000_000) == [5, 1.5, 2.5])
        #expect(abs(plan.predictedSeconds(bytes: 4_000_000) - (5 + 4 * 0.002)) < 1e-12)
        let lines = plan.description.split(separator: "\n")
        #expect(lines.count == 3)
        #expect(lines[0] == "rank 0: 50.0% of the buffer, link 0→1 1.00 MB/s, 2.00 ms, float32", "\(lines[0])")
        #expect(CapacityPlan.equal(worldSize: 2).description.contains("unmeasured"))
    }
}

// Capacity-aware rings: chunk sizes, and codecs, chosen from measured link speeds so that the links of a
// weighted ring all-reduce (`RingCollectives.compressedAllReduce` with `chunkCounts`) finish together,
// with compression only on the slow links.
//
// Vocabulary as in RingCollectives+Compressed.swift, plus:
//   link k     the ring link leaving rank k (k → k+1): bandwidth B_k bytes/s, latency L_k s (`LinkEstimate`).
//   weight w_c the share of the buffer in chunk c, owned by rank c: w ≥ 0, Σw = 1. A buffer of S float32
//              elements gives chunk c about w_c·S of them (`chunkCounts`, in whole grains).
//   e_k, e_g   bytes per element on link k in the reduce-scatter (hopCodecs[k]), and of the gather codec
//              (the coarsest of them) on every link in the all-gather; e_g ≤ e_k. float32: 4.
//
//           w_0                 w_1                 w_2                 w_3
//          rank0 ──link 0──▶ rank1 ──link 1──▶ rank2 ──link 2──▶ rank3
//            ▲                                                      │
//            └───────────────────────────link 3─────────────────────┘
//
// What a link carries: in the reduce-scatter chunk c is summed on its way round to rank c, so it crosses
// every link but the one leaving rank c; in the all-gather it leaves rank c and stops at rank c−1, so it
// crosses every link but the one entering rank c. Link k therefore carries every chunk but k (encoded
// with e_k) and then every chunk but k+1 (with e_g):
//
//   bytes_k = S · (e_k·(1 − w_k) + e_g·(1 − w_{k+1})),   time_k = bytes_k / B_k
//   predicted time T(w) = max_k time_k + 2(n−1) · max_k L_k
//
// The latency term is the same for every weighting, so the weights only shape the first. Equal chunks on
// float32 links: bytes_k = 8S(n−1)/n on every link, T = 8S(n−1) / (n·min B) (+ latency): the slowest
// link sets the pace and every other idles part of the time. Giving rank k a larger chunk unloads both
// of its links (its outgoing one in the reduce-scatter, its incoming one in the all-gather) and loads
// every other.
//
// Bounds. Information: rank r's result depends on every element of every other rank, and the ring's only
// way into rank r is link r−1, so at least 4S bytes of exact float32 information must cross it (likewise
// out of rank r through link r): T ≥ 4S / min_k B_k for any exact ring algorithm, however it is chunked
// (`informationBoundSeconds`; compression shrinks the bytes and this bound with them). Weighted chunks: the least
// T over all weights, a small linear program (`lowerBoundSeconds`, the float32 plan of `balanced`).
//
// Closed form, when no weight clamps at 0 (one codec, e, everywhere): every link at the same time τ per
// element gives w_k + w_{k+1} = 2 − τB_k/e for every k; summed over k, τ = 2e(n−1) / Σ_k B_k, so
// T = 2eS(n−1)/ΣB, a gain of mean(B)/min(B) over equal chunks. For odd n the weights follow,
// w_j = ½·Σ_{m<n} (−1)^m·(2 − τB_{j+m}/e), and are the optimum when none is negative. For even n the
// link pairs alternate: Σ_{k even}(w_k + w_{k+1}) = 1, so the even links share e(n−1)·S bytes and so do
// the odd ones, τ = max(e(n−1)/Σ_{k even}B_k, e(n−1)/Σ_{k odd}B_k), and (+1, −1, +1, …) moves weight
// without changing any link's bytes. A weight clamps as soon as a link is much slower than its ring
// neighbours: time_k ≥ S·e_g·(2 − w_k − w_{k+1})/B_k ≥ S·e_g/B_k whatever the weights.
//
// Example, the 20 vs 100 Mbit/s ring (rank 0 on a slow uplink: links [20, 100, 100, 20]): the closed
// form would need link 0 to carry 0.5·4S bytes, below its floor of 4S; the optimum clamps to w = (1, 0,
// 0, 0): rank 0 owns the whole buffer, links 0 and 3 carry 4S bytes (the information bound), links 1
// and 2 carry 8S at five times the speed. T = 4S/B_slow against 6S/B_slow for equal chunks: 1.5× faster.
// (CapacityPlanTests derives it in full.)
//
// Algorithm (`balanced`):
//   1. Codecs: link k gets `slowLinkCodec` when B_k < median(B) / slowFactor, float32 otherwise.
//   2. Least max time, an LP. With a cap τ_k on link k's seconds per element, its constraint reads
//      e_k·w_k + e_g·w_{k+1} ≥ r_k := e_k + e_g − τ_k·B_k; the caps are feasible when the least Σw meeting
//      every constraint is at most 1 (more weight anywhere only shortens links). Fix w_0 = x: the least
//      Σw is one greedy pass backwards round the cycle, w_{n−1} = max(0, (r_{n−1} − e_g·x)/e_{n−1}),
//      w_k = max(0, (r_k − e_g·w_{k+1})/e_k) for k = n−2 … 1, and w_1 ≥ (r_0 − e_0·x)/e_g as well. It is
//      exact: in any solution, lowering a w_k above its bound to the bound and raising w_{k−1} by e_g/e_{k−1}
//      times as much keeps every constraint and costs no more, because e_g ≤ e_{k−1}. The least Σw as a
//      function of x is convex (the value of an LP whose right-hand side is affine in x), so a ternary
//      search over x ∈ [0, 1] finds its minimum, and a bisection over a common cap τ finds the least max.
//   3. Ties. Many weightings can reach that max (the links that are not the bottleneck leave room), so the
//      plan takes the lexicographically least vector of link times (water filling): the links whose cap
//      cannot be lowered alone (lowering it by 1e-8 makes the caps infeasible) keep the bottleneck's time,
//      the others are lowered together by another bisection, and so on until every link is fixed. The link
//      times are then unique, and so are the weights, but for the direction (+1, −1, +1, …) when n is even
//      and every codec has e_g bytes per element; there the plan takes the point nearest the equal split.
//      When the equal split is as fast on every link (within 1e-8), it is returned exactly: 1/n each.
// Cost: at most n rounds of about 50 bisection steps, plus one test per link at the cap; a test is about
// 170 greedy passes of n steps: O(n³) arithmetic in the worst case, once per plan, never on the data path.
// Measured in a debug build: 20 ms for n = 8, 0.3 s for n = 32, 1.5 s for n = 64. Deterministic: only
// +, −, ×, ÷ and comparisons in a fixed order, so the same links give the same bits on every rank (which
// is how the ranks agree on a plan without a coordinator: `agreeOnLinks`).
//
// The model is a throughput model: it assumes the pipeline keeps every link busy (segments, receive
// windows: RingCollectives+Compressed.swift); it ignores the CPU's encode and reduce time.

/// What one measurement says about a link: its sustained bandwidth and its latency.
public struct LinkEstimate: Sendable, Equatable, CustomStringConvertible {
    /// Bytes per second a long transfer reaches; `.infinity` when unknown or unlimited.
    public var bytesPerSecond: Double
    /// Seconds before the first byte of a transfer arrives (the two-size fit's intercept), at least 0.
    public var latencySeconds: Double

    public init(bytesPerSecond: Double, latencySeconds: Double = 0) {
        self.bytesPerSecond = bytesPerSecond
        self.latencySeconds = latencySeconds
    }

    /// A link nothing is known about: infinitely fast, no latency.
    public static let unknown = LinkEstimate(bytesPerSecond: .infinity, latencySeconds: 0)

    /// `2.50 MB/s, 1.20 ms`, or `unmeasured`.
    public var description: String {
        guard bytesPerSecond.isFinite else { return "unmeasured" }
        return "\(CapacityPlan.fixed(bytesPerSecond / 1e6, 2)) MB/s, \(CapacityPlan.fixed(latencySeconds * 1e3, 2)) ms"
    }
}

/// How a weighted ring all-reduce splits its buffer and encodes each link, from the speed of its links.
///
/// Pass `hopCodecs` and `chunkCounts(count:)` to `RingCollectives.compressedAllReduce`. Every rank must
/// use the same plan: build it with `balanced(links:...)` from the vector `RingCollectives.agreeOnLinks`
/// returns (the same bits on every rank, and the computation is deterministic). See the file comment for
/// the arithmetic and the algorithm.
public struct CapacityPlan: Sendable, Equatable, CustomStringConvertible {
    /// Link k is rank k → k+1.
    public var links: [LinkEstimate]
    /// The share of the buffer owned by each rank: non-negative, summing to 1.
    public var chunkWeights: [Double]
    /// The codec of each link in the reduce-scatter; the all-gather uses the coarsest (`gatherCodec`).
    public var hopCodecs: [WireCodec]

    /// A plan whose predicted gain must exceed this share of the current plan's time to replace it.
    public static let replaceGain = 0.05

    /// - Precondition: one link, weight and valid codec per rank (at least one rank); bandwidths > 0
    ///   (`.infinity` allowed), latencies finite and ≥ 0; weights finite, ≥ 0, summing to 1 within 1e-9.
    public init(links: [LinkEstimate], chunkWeights: [Double], hopCodecs: [WireCodec]) {
        let n = links.count
        precondition(
            n >= 1 && chunkWeights.count == n && hopCodecs.count == n,
            "a plan needs one link, weight and codec per rank")
        precondition(
            links.allSatisfy { $0.bytesPerSecond > 0 && $0.latencySeconds >= 0 && $0.latencySeconds.isFinite },
            "link bandwidths must be positive and latencies finite and non-negative: \(links)")
        precondition(hopCodecs.allSatisfy(\.isValid), "invalid codec in \(hopCodecs)")
        precondition(
            chunkWeights.allSatisfy { $0 >= 0 && $0.isFinite } && abs(chunkWeights.reduce(0, +) - 1) <= 1e-9,
            "chunk weights must be non-negative and sum to 1: \(chunkWeights)")
        self.links = links
        self.chunkWeights = chunkWeights
        self.hopCodecs = hopCodecs
    }

    public var worldSize: Int { links.count }

    /// The codec of every link in the all-gather: the coarsest of `hopCodecs`.
    public var gatherCodec: WireCodec { WireCodec.coarsest(hopCodecs) }

    /// The ring's plan: equal chunks, float32 on every link, links unknown (infinitely fast).
    public static func equal(worldSize n: Int) -> CapacityPlan {
        precondition(n >= 1, "a world has at least one rank")
        return CapacityPlan(
            links: Array(repeating: .unknown, count: n), chunkWeights: Array(repeating: 1 / Double(n), count: n),
            hopCodecs: Array(repeating: .float32, count: n))
    }

    /// The plan whose links all finish together, as far as the links allow (see the file comment).
    ///
    /// - Parameters:
    ///   - links: link k = rank k → k+1; the same vector on every rank (`RingCollectives.agreeOnLinks`).
    ///   - slowLinkCodec: the codec of links slower than the median bandwidth by more than `slowFactor`
    ///     (the others stay float32); nil: float32 everywhere.
    ///   - slowFactor: at least 1.
    /// - Returns: weights minimizing the predicted time, ties broken towards the lexicographically least
    ///   link times and then the equal split; exactly 1/n each when the links are equal.
    public static func balanced(links: [LinkEstimate], slowLinkCodec: WireCodec? = nil, slowFactor: Double = 3)
        -> CapacityPlan
    {
        let n = links.count
        precondition(n >= 1, "a world has at least one rank")
        precondition(slowFactor >= 1, "slowFactor must be at least 1, not \(slowFactor)")
        precondition(slowLinkCodec?.isValid ?? true, "invalid codec \(slowLinkCodec!)")
        let bandwidth = links.map(\.bytesPerSecond)
        precondition(bandwidth.allSatisfy { $0 > 0 }, "link bandwidths must be positive: \(links)")
        var codecs = [WireCodec](repeating: .float32, count: n)
        if let slowLinkCodec {
            let sorted = bandwidth.sorted()
            let median = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2
            for k in 0..<n where bandwidth[k] < median / slowFactor { codecs[k] = slowLinkCodec }
        }
        let solver = CapacitySolver(
            bandwidth: bandwidth, hop: codecs.map(\.bytesPerElement),
            gather: WireCodec.coarsest(codecs).bytesPerElement)
        return CapacityPlan(links: links, chunkWeights: solver.weights(), hopCodecs: codecs)
    }

    /// This plan's weights and codecs on other links (to predict how it would fare on them).
    public func withLinks(_ links: [LinkEstimate]) -> CapacityPlan {
        CapacityPlan(links: links, chunkWeights: chunkWeights, hopCodecs: hopCodecs)
    }

    /// Bytes each link carries in an all-reduce of `bytes` bytes of float32 (link k at index k).
    public func linkBytes(bytes: Int) -> [Double] {
        let n = worldSize
        guard n > 1 else { return [0] }
        let s = Double(bytes) / 4
        let g = gatherCodec.bytesPerElement
        return (0..<n).map { k in
            s * (hopCodecs[k].bytesPerElement * (1 - chunkWeights[k]) + g * (1 - chunkWeights[(k + 1) % n]))
        }
    }

    /// Seconds each link spends moving its bytes (`linkBytes`) at its bandwidth, latency aside.
    public func linkSeconds(bytes: Int) -> [Double] {
        zip(linkBytes(bytes: bytes), links).map { $0 == 0 ? 0 : $0 / $1.bytesPerSecond }
    }

    /// The predicted time of an all-reduce of `bytes` bytes of float32 with this plan: the busiest link's
    /// bytes over its bandwidth, plus 2(n−1) steps of the largest latency. 0 for one rank.
    public func predictedSeconds(bytes: Int) -> Double {
        let n = worldSize
        guard n > 1 else { return 0 }
        let latency = links.map(\.latencySeconds).max()!
        return linkSeconds(bytes: bytes).max()! + Double(2 * (n - 1)) * latency
    }

    /// The best predicted time any weighted float32 plan reaches on `links`: the LP optimum (`balanced`
    /// without compression). Compare with `informationBoundSeconds`, which no exact ring algorithm beats.
    public static func lowerBoundSeconds(links: [LinkEstimate], bytes: Int) -> Double {
        balanced(links: links).predictedSeconds(bytes: bytes)
    }

    /// The information bound, transfer time only: every rank must receive `bytes` of exact float32
    /// information through its one incoming ring link (and send as much out), so no exact ring all-reduce
    /// takes less than `bytes` / min_k B_k. 0 for one rank.
    public static func informationBoundSeconds(links: [LinkEstimate], bytes: Int) -> Double {
        guard links.count > 1, bytes > 0 else { return 0 }
        return Double(bytes) / links.map(\.bytesPerSecond).min()!
    }

    /// Elements of each rank's chunk for a buffer of `count` elements: proportional to `chunkWeights`,
    /// summing exactly to `count`, whole multiples of `grain` but for one chunk that takes the remainder
    /// `count % grain` (none when `grain` divides `count`).
    ///
    /// The `count / grain` grains are shared by largest remainder (each rank gets the whole grains of its
    /// quota, then one more goes to each of the largest fractional parts, ties to the lower rank); the
    /// remainder goes to the rank furthest below its exact share (ties to the lower rank). A rank of weight
    /// 0 gets nothing, equal weights give counts within one grain of each other, and every count is
    /// within two grains of its exact share. Deterministic.
    public func chunkCounts(count: Int, grain: Int = 64) -> [Int] {
        precondition(count >= 0 && grain >= 1, "count must be non-negative and grain positive")
        let n = worldSize
        let total = chunkWeights.reduce(0, +)
        let grains = count / grain
        let rest = count - grains * grain
        let quotas = chunkWeights.map { $0 / total * Double(grains) }
        var counts = quotas.map { q in q >= Double(grains) ? grains : Int(q.rounded(.down)) }
        var given = counts.reduce(0, +)
        let order = (0..<n).sorted { a, b in
            let (ra, rb) = (quotas[a] - Double(counts[a]), quotas[b] - Double(counts[b]))
            return ra != rb ? ra > rb : a < b
        }
        var i = 0
        while given < grains {  // fewer than n in exact arithmetic
            counts[order[i % n]] += 1
            given += 1
            i += 1
        }
        i = n - 1
        while given > grains {  // only when rounding made a quota's floor too large
            let c = order[(i % n + n) % n]
            if counts[c] > 0 {
                counts[c] -= 1
                given -= 1
            }
            i -= 1
        }
        counts = counts.map { $0 * grain }
        if rest > 0 {
            var best = 0
            var bestDeficit = -Double.infinity
            for c in 0..<n {
                let deficit = chunkWeights[c] / total * Double(count) - Double(counts[c])
                if deficit > bestDeficit {
                    best = c
                    bestDeficit = deficit
                }
            }
            counts[best] += rest
        }
        return counts
    }

    /// Whether `candidate` should replace this plan: its predicted time for `bytes` beats this plan's, on
    /// the candidate's (newer) links, by more than `replaceGain`, or it has another world size or other
    /// codecs (codecs follow `balanced`'s rule; the threshold keeps the weights from flapping with noise).
    public func shouldReplace(with candidate: CapacityPlan, bytes: Int) -> Bool {
        guard candidate.worldSize == worldSize, candidate.hopCodecs == hopCodecs else { return true }
        let current = withLinks(candidate.links).predictedSeconds(bytes: bytes)
        return candidate.predictedSeconds(bytes: bytes) < current * (1 - Self.replaceGain)
    }

    /// The plan to use on `links` from now on: `balanced(links:...)` if it should replace this one
    /// (`shouldReplace`), else this plan's weights and codecs with the new links.
    public func replanned(
        links: [LinkEstimate], slowLinkCodec: WireCodec? = nil, slowFactor: Double = 3, bytes: Int
    ) -> CapacityPlan {
        let candidate = CapacityPlan.balanced(links: links, slowLinkCodec: slowLinkCodec, slowFactor: slowFactor)
        return shouldReplace(with: candidate, bytes: bytes) ? candidate : withLinks(links)
    }

    /// One line per rank: its share of the buffer, its outgoing link and that link's codec.
    public var description: String {
        let n = worldSize
        return (0..<n).map { k in
            "rank \(k): \(Self.fixed(chunkWeights[k] * 100, 1))% of the buffer, link \(k)→\((k + 1) % n) "
                + "\(links[k]), \(hopCodecs[k])"
        }.joined(separator: "\n")
    }

    /// `x` with `digits` decimals (no Foundation).
    static func fixed(_ x: Double, _ digits: Int) -> String {
        guard x.isFinite else { return x.isNaN ? "nan" : x > 0 ? "∞" : "-∞" }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let r = (abs(x) * scale).rounded()
        guard r < 1e15 else { return "\(x)" }
        let v = Int64(r)
        let whole = v / Int64(scale)
        var fraction = String(v % Int64(scale))
        while fraction.count < digits { fraction = "0" + fraction }
        return (x < 0 && v != 0 ? "-" : "") + String(whole) + (digits > 0 ? "." + fraction : "")
    }
}

/// The weights problem of `CapacityPlan.balanced`, in seconds per element (see the file comment).
struct CapacitySolver {
    let n: Int
    let bandwidth: [Double]
    /// e_k.
    let hop: [Double]
    /// e_g ≤ every e_k.
    let gather: Double

    /// Relative tolerance of a feasibility test's Σw ≤ 1 (rounding in the greedy pass).
    static let sumTolerance = 1e-13
    /// A bottleneck's cap is fixed this share above the least common cap found (≫ sumTolerance, which the
    /// bisection uses up), so that later rounds and the bottleneck tests have room.
    static let fixedSlack = 1e-11
    /// A link is a bottleneck when lowering its cap alone by this share (≫ fixedSlack), the other free
    /// links at the fixed cap, makes the caps infeasible.
    static let bottleneckMargin = 1e-8

    init(bandwidth: [Double], hop: [Double], gather: Double) {
        precondition(hop.allSatisfy { $0 >= gather && gather > 0 }, "the gather codec must be the coarsest")
        self.n = bandwidth.count
        self.bandwidth = bandwidth
        self.hop = hop
        self.gather = gather
    }

    /// Seconds per element of link k with weights w (0 on an infinitely fast link).
    func time(_ k: Int, _ w: [Double]) -> Double {
        guard bandwidth[k].isFinite else { return 0 }
        return (hop[k] * (1 - w[k]) + gather * (1 - w[(k + 1) % n])) / bandwidth[k]
    }

    /// r_k for a cap of `cap` seconds per element on link k; -∞ when link k constrains nothing.
    func requirement(_ k: Int, cap: Double) -> Double {
        guard bandwidth[k].isFinite else { return -.infinity }
        return hop[k] + gather - cap * bandwidth[k]
    }

    /// The greedy pass with w_0 = x: the least weights meeting `r`, in `w`; returns their sum.
    func greedy(_ x: Double, _ r: [Double], _ w: inout [Double]) -> Double {
        w[0] = x
        var sum = x
        var next = x  // w_{k+1}: w_0 for link n-1
        var k = n - 1
        while k >= 1 {
            var v = max(0, (r[k] - gather * next) / hop[k])
            if k == 1 { v = max(v, (r[0] - hop[0] * x) / gather) }
            w[k] = v
            sum += v
            next = v
            k -= 1
        }
        return sum
    }

    /// The least Σw meeting `r` over w_0 ∈ [0, 1] (ternary search of a convex function), its weights in `w`.
    func cheapest(_ r: [Double], _ w: inout [Double]) -> Double {
        var (lo, hi) = (0.0, 1.0)
        var steps = 0
        while hi - lo > 1e-15 && steps < 100 {
            let m1 = lo + (hi - lo) / 3
            let m2 = hi - (hi - lo) / 3
            if greedy(m1, r, &w) <= greedy(m2, r, &w) { hi = m2 } else { lo = m1 }
            steps += 1
        }
        return greedy(lo + (hi - lo) / 2, r, &w)
    }

    /// Whether caps (fixed ones, the others `tau`) are feasible; if so, weights reaching them in `w`.
    func feasible(_ caps: [Double?], tau: Double, _ w: inout [Double]) -> Bool {
        let r = (0..<n).map { requirement($0, cap: caps[$0] ?? tau) }
        let sum = cheapest(r, &w)
        guard sum <= 1 + Self.sumTolerance else { return false }
        for c in 0..<n { w[c] /= sum }  // below 1: more weight only shortens links; zeros stay zero
        return true
    }

    /// The weights of the plan: least max time, ties to the least link times, then to the equal split.
    func weights() -> [Double] {
        let equal = [Double](repeating: 1 / Double(n), count: n)
        guard n > 1 else { return equal }
        var caps = (0..<n).map { bandwidth[$0].isFinite ? nil : Optional(0.0) }
        var best = equal
        var tauHigh = (0..<n).map { time($0, equal) }.max()!  // the equal split reaches it
        var scratch = equal
        while caps.contains(where: { $0 == nil }) {
            // The least common cap of the free links, the fixed ones kept.
            var lo = 0.0
            var hi = tauHigh
            var steps = 0
            while hi - lo > hi * 1e-15 && steps < 200 {
                let mid = lo + (hi - lo) / 2
                if feasible(caps, tau: mid, &scratch) {
                    hi = mid
                    best = scratch
                } else {
                    lo = mid
                }
                steps += 1
            }
            // Fix the free links that cannot go below it alone.
            let fixed = hi * (1 + Self.fixedSlack)
            let candidates = (0..<n).filter { caps[$0] == nil && time($0, best) >= hi * (1 - 1e-6) }
            var bottlenecks = candidates.filter { k in
                var lowered = caps
                lowered[k] = hi * (1 - Self.bottleneckMargin)
                return !feasible(lowered, tau: fixed, &scratch)
            }
            // None stands out (rounding): fix the links at the cap, so that every round fixes one.
            if bottlenecks.isEmpty { bottlenecks = candidates }
            if bottlenecks.isEmpty { bottlenecks = (0..<n).filter { caps[$0] == nil } }
            for k in bottlenecks { caps[k] = fixed }
            tauHigh = hi
        }
        var w = best
        if hop.allSatisfy({ $0 == gather }) && n % 2 == 0 {
            // (+1, −1, …) changes no link's bytes: take the point of that line nearest the equal split.
            var t = 0.0
            for c in 0..<n { t -= c % 2 == 0 ? w[c] : -w[c] }
            t /= Double(n)
            var (low, high) = (-Double.infinity, Double.infinity)
            for c in 0..<n {
                if c % 2 == 0 { low = max(low, -w[c]) } else { high = min(high, w[c]) }
            }
            t = min(max(t, low), high)
            for c in 0..<n { w[c] = max(0, w[c] + (c % 2 == 0 ? t : -t)) }
        }
        if (0..<n).allSatisfy({ time($0, equal) <= time($0, w) * (1 + Self.bottleneckMargin) }) { return equal }
        return w
    }
}

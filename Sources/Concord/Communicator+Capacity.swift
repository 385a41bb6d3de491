// Capacity-aware rings: chunks sized by measured link speed, compression only on slow links, and a plan
// that every rank switches to at the same collective.
//
//   link k = rank k → k+1, estimated by a probe (RingCollectives+LinkProbe.swift): every rank times
//   what its left sends it, then all ranks all-gather the estimates, so each holds the same vector
//
//   every `replanEvery` collectives (CONCORD_REPLAN_EVERY), before the next one, all ranks probe and
//   gather: two collectives with their own sequence numbers, so they happen at the same point of the call
//   sequence on every rank. Each rank then folds the gathered vector into its moving averages and computes
//   the plan from them: a pure function of values every rank holds bit for bit, hence the same plan on
//   every rank, in force from the next sequence number on. No coordinator, no extra agreement round: a
//   rank whose own measurement was odd still plans with the same vector as everyone else.
//
// A plan changes only when it predicts a gain worth having (CapacityPlan.shouldReplace), so noise in
// the measurements does not make the chunks flap. The plan applies to float32 sum/avg all-reduces of at
// least `minimumBytes` (64 KiB; below that latency rules and the tuned ring is used) and to the
// GradientSynchronizer's buckets. See docs/algorithms.md, Capacity-aware rings.
@_exported import struct ConcordCollectives.CapacityPlan
@_exported import struct ConcordCollectives.LinkEstimate
@_exported import enum ConcordCollectives.WireCodec
import ConcordCollectives
import ConcordCore
import Foundation

/// Whether and how the ring adapts to uneven links.
public enum CapacityPolicy: Sendable, Equatable, CustomStringConvertible {
    /// Equal chunks: the ring of the uniform case.
    case off
    /// Chunks sized so every link finishes at once; float32 on every link.
    case weighted
    /// Weighted chunks, and `compression` on links much slower than the median (the others stay exact).
    case weightedCompressed(WireCompression)

    /// off, weighted, or a compression name (fp16, bf16, int8) for weighted + compressed slow links.
    public init?(_ text: String) {
        switch text {
        case "off", "none": self = .off
        case "weighted": self = .weighted
        default:
            guard let compression = WireCompression(rawValue: text), compression != .none else { return nil }
            self = .weightedCompressed(compression)
        }
    }

    /// A link is slow, and compressed under `weightedCompressed`, below the median bandwidth / this.
    public static let slowFactor = 2.0

    /// The plan this policy makes on `links` (link k = rank k → k+1); nil when off.
    public func plan(for links: [LinkEstimate]) -> CapacityPlan? {
        switch self {
        case .off: return nil
        case .weighted: return .balanced(links: links)
        case .weightedCompressed(let compression):
            return .balanced(links: links, slowLinkCodec: compression.codec, slowFactor: Self.slowFactor)
        }
    }

    public var description: String {
        switch self {
        case .off: return "off"
        case .weighted: return "weighted"
        case .weightedCompressed(let compression): return "weighted+\(compression)"
        }
    }
}

/// A communicator's link estimates and plan. Only the loop's driver touches it.
final class CapacityState: @unchecked Sendable {
    var policy = CapacityPolicy.off {
        didSet { if policy != oldValue { collectivesSincePlan = Int.max } }
    }
    var replanEvery = 50
    /// Smallest float32 all-reduce the plan applies to.
    var minimumBytes = 64 << 10
    /// Moving averages of the gathered estimates (link k = rank k → k+1); empty before the first probe.
    private(set) var links: [LinkEstimate] = []
    private(set) var plan: CapacityPlan?
    /// The sequence number from which `plan` is in force.
    private(set) var planSequence: UInt64 = 0
    private var collectivesSincePlan = Int.max
    /// Weight of a new measurement in the moving average.
    static let smoothing = 0.5
    /// The buffer size a plan is judged at when deciding to switch.
    static let judgedBytes = 16 << 20

    /// The frame payload for `plan`: about 10 ms on its slowest link (at least 16 KiB, at most `segment`).
    /// Short frames keep a slow link's pipeline deep: a rank's sends complete, and its next receives are
    /// posted, while the slow link still drains (measured in the namespace lab: at 20 Mbit/s, 32 KiB
    /// frames reach the plan's predicted time, 1 MiB frames stay at equal chunks' time).
    static func segmentBytes(for plan: CapacityPlan, default segment: Int) -> Int {
        let slowest = plan.links.map(\.bytesPerSecond).min() ?? .infinity
        guard slowest.isFinite, slowest > 0 else { return segment }
        return max(16 << 10, min(segment, Int(slowest / 100)))
    }

    /// Counts a collective about to run; returns whether the links must be measured and the plan re-made
    /// before it.
    func startCollective() -> Bool {
        guard policy != .off else { return false }
        if collectivesSincePlan >= replanEvery { return true }
        collectivesSincePlan += 1
        return false
    }

    /// The plan for a float32 all-reduce of `bytes`, nil for the plain ring.
    func plan(forBytes bytes: Int, worldSize: Int) -> CapacityPlan? {
        guard policy != .off, worldSize > 1, bytes >= minimumBytes, let plan else { return nil }
        return plan
    }

    /// Folds freshly gathered estimates into the averages and re-plans; returns whether the plan changed.
    @discardableResult
    func update(gathered: [LinkEstimate], sequence: UInt64) -> Bool {
        collectivesSincePlan = 0
        if links.count != gathered.count {
            links = gathered
        } else {
            let a = Self.smoothing
            links = zip(links, gathered).map { old, new in
                LinkEstimate(
                    bytesPerSecond: old.bytesPerSecond * (1 - a) + new.bytesPerSecond * a,
                    latencySeconds: old.latencySeconds * (1 - a) + new.latencySeconds * a)
            }
        }
        guard let candidate = policy.plan(for: links) else { return false }
        guard plan.map({ $0.shouldReplace(with: candidate, bytes: Self.judgedBytes) }) ?? true else { return false }
        plan = candidate
        planSequence = sequence + 1
        return true
    }
}

extension Communicator {
    /// On the loop thread, at the same point of the call sequence on every rank: probe every link, gather
    /// the estimates, re-plan.
    func replan() throws {
        sequence += 1
        let incoming = try RingCollectives.probeLink(sequence: sequence, transport: transport)
        sequence += 1
        let gathered = try RingCollectives.agreeOnLinks(incoming: incoming, sequence: sequence, transport: transport)
        if capacity.update(gathered: gathered, sequence: sequence), rank == 0, let plan = capacity.plan {
            // One line per new plan, from rank 0 (the launcher shows it with the rank's stderr).
            let links = capacity.links.map { String(format: "%.2f", $0.bytesPerSecond / 1e6) }.joined(separator: " ")
            let shares = plan.chunkWeights.map { String(format: "%.1f%%", $0 * 100) }.joined(separator: " ")
            let codecs = plan.hopCodecs.map(\.description).joined(separator: " ")
            FileHandle.standardError.write(
                Data(
                    "concord: capacity plan from collective #\(capacity.planSequence): links k→k+1 \(links) MB/s; chunks \(shares); codecs \(codecs)\n"
                        .utf8))
        }
    }

    /// How the ring adapts to uneven links; set it to the same value on every rank, between collectives
    /// (starts from `configuration.capacityPolicy`). A new policy measures the links before the next
    /// collective.
    public var capacityPolicy: CapacityPolicy {
        get { loop.drive { capacity.policy } }
        set { loop.drive { capacity.policy = newValue } }
    }

    /// Measures every ring link now (a collective: every rank calls it) and re-plans under the current
    /// policy; returns the links' moving averages, link k = rank k → k+1.
    @discardableResult
    public func measureLinksBlocking() throws -> [LinkEstimate] {
        try exclusively {
            try replan()
            return capacity.links
        }
    }

    /// The links' estimates (moving averages of the probes; empty before the first), link k = rank k → k+1.
    public var links: [LinkEstimate] { loop.drive { capacity.links } }

    /// The plan in force (nil while the policy is off or before the first measurement), and the sequence
    /// number of the first collective it applied to.
    public var capacityPlan: (plan: CapacityPlan, since: UInt64)? {
        loop.drive { capacity.plan.map { ($0, capacity.planSequence) } }
    }
}

extension Communicator {
    /// Sums float32 `buffer` over all ranks with `plan`'s chunks and codecs, whatever the policy (for
    /// benchmarks that compare plans in one run). Every rank passes the same plan.
    package func sumBlocking(_ buffer: UnsafeMutableBufferPointer<Float>, plan: CapacityPlan) throws {
        let memory = SendableBytes(buffer)
        try performBlocking { transport, sequence, segment in
            try Self.sum(
                memory.bytes.bindMemory(to: Float.self), plan: plan, sequence: sequence, transport: transport,
                segmentBytes: segment)
        }
    }

    /// The one way every capacity-aware path sums float32 in place: `plan`'s chunks and frame size (equal
    /// chunks without a plan), and `codec` on every link if given, else the plan's codecs.
    static func sum(
        _ floats: UnsafeMutableBufferPointer<Float>, plan: CapacityPlan?, codec: WireCodec? = nil,
        residual: UnsafeMutableBufferPointer<Float>? = nil, sequence: UInt64, transport: Transport, segmentBytes: Int
    ) throws {
        let n = transport.worldSize
        guard let hopCodecs = codec.map({ Array(repeating: $0, count: n) }) ?? plan?.hopCodecs else {
            preconditionFailure("a sum needs a plan or a codec")
        }
        try RingCollectives.compressedAllReduce(
            floats, hopCodecs: hopCodecs, chunkCounts: plan?.chunkCounts(count: floats.count), residual: residual,
            sequence: sequence, transport: transport,
            segmentBytes: plan.map { CapacityState.segmentBytes(for: $0, default: segmentBytes) } ?? segmentBytes)
    }
}

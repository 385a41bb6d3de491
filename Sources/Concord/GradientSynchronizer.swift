// Gradient buckets overlapped with backward (PyTorch DDP's reducer, Horovod's tensor fusion), with
// compression on the wire and exact weighted averages for ranks with different batch sizes.
//
// Vocabulary. A *parameter* is one registered gradient buffer (float32, caller-owned, stable address).
// A *bucket* is a contiguous float32 staging buffer holding several gradients back to back; it is
// all-reduced as one collective, so many small gradients cost one latency, not many.
//
//   registration order (forward):   p0  p1  p2  p3  p4  p5          backward makes them ready in
//   buckets (reverse order):        [p5 p4]₀  [p3 p2 p1]₁  [p0]₂      reverse: p5 first, p0 last
//   bucket 0 ≤ firstBucketBytes (1 MiB, so communication starts early), later ones ≤ bucketBytes (25 MiB)
//
// One step:
//   beginStep(weight: b_r)   issues allReduce([b_r]) → W = Σ b_r (8 bytes; runs during the forward pass)
//   markReady(p)             when every parameter of the next bucket is ready: pack g·(b_r/W) (+ the
//                            error-feedback residual for int8) into the bucket and issue its all-reduce;
//                            backward continues while it runs on the communicator's service thread
//   finish()                 waits for the buckets in order and copies each result back into the
//                            gradients: every rank then holds Σ_r b_r·g_r / W, the gradient of the mean
//                            loss over the union of all ranks' batches (when g_r is the mean over rank r's)
//
// Buckets are issued strictly in bucket order, whatever order the marks come in, so every rank issues
// the same collectives in the same order (the sequence numbers and tags then match).
//
// Compression (per synchronizer, the same on every rank): `fp16` and `bf16` send half the bytes, `int8`
// (blockwise, one float32 scale per block) about a quarter; see RingCollectives+Compressed.swift. Every
// rank still ends with bit-identical gradients: the all-gather phase carries the same bytes to everyone.
// int8 keeps error feedback: every rounding this rank makes in the collective (its hops' encodings of
// partial sums, its chunk's encoding for the all-gather) is added to a residual that goes out with the
// next step's contribution, so the rounding errors do not accumulate over steps (EF-SGD).
//
// Hidden communication: the service thread is busy with bucket b from max(issue_b, end_{b−1}) to end_b;
// the sum of those intervals is the step's communication time, and the time `finish` waits for the
// network is the part that backward did not hide.
import ConcordCollectives
import ConcordCore
import ConcordKernels
import Foundation

/// Averages gradients over all ranks while backward runs, in buckets, optionally compressed.
///
/// ```swift
/// let sync = GradientSynchronizer(communicator: comm)
/// for p in model.parameters { sync.register(p.gradient, name: p.name) }
/// for batch in data {
///     sync.beginStep(weight: Double(batch.count))
///     model.forwardBackward(batch) { index in try? sync.markReady(index) }
///     let report = try sync.finish()      // gradients now hold the global (weighted) average
///     model.apply(learningRate: lr)
/// }
/// ```
/// One step at a time, from one thread; every rank registers the same parameter sizes in the same order
/// and uses the same options.
public final class GradientSynchronizer: @unchecked Sendable {
    /// How gradients travel (see `WireCompression`).
    public typealias Compression = WireCompression

    public struct Options: Sendable {
        /// The first bucket's capacity (the gradients backward produces first), in bytes of float32.
        public var firstBucketBytes = 1 << 20
        /// The capacity of every later bucket.
        public var bucketBytes = 25 << 20
        public var compression = Compression.none

        public init(firstBucketBytes: Int = 1 << 20, bucketBytes: Int = 25 << 20, compression: Compression = .none) {
            self.firstBucketBytes = firstBucketBytes
            self.bucketBytes = bucketBytes
            self.compression = compression
        }
    }

    /// What one step cost.
    public struct StepReport: Sendable {
        public var buckets: Int
        /// Bytes of gradient this rank contributed (float32), and what its buckets weigh on the wire.
        public var gradientBytes: Int
        public var wireBytes: Int
        /// The sum of all ranks' weights.
        public var totalWeight: Double
        /// Time the communicator spent on this step's collectives (bucket intervals, see the file header).
        public var communicationSeconds: Double
        /// The part of it `finish` waited for: not hidden behind backward.
        public var exposedSeconds: Double
        /// Time spent packing and unpacking buckets on the caller's thread.
        public var copySeconds: Double

        /// The fraction of the communication that overlapped compute (0…1).
        public var hiddenFraction: Double {
            communicationSeconds > 0 ? max(0, min(1, 1 - exposedSeconds / communicationSeconds)) : 1
        }
    }

    private struct Bucket {
        /// Parameter indices, in the order they are packed.
        var members: [Int]
        /// Offset of each member in the staging buffer, in elements.
        var offsets: [Int]
        var count: Int
        var staging: UnsafeMutableBufferPointer<Float>
        /// int8 only: what quantization dropped last step, added to this step's contribution.
        var residual: UnsafeMutableBufferPointer<Float>?
        var work: Work<Void>?
        var issuedAt = ContinuousClock.now
    }

    public let communicator: Communicator
    public let options: Options
    private var gradients: [(buffer: UnsafeMutableBufferPointer<Float>, name: String)] = []
    private var buckets: [Bucket] = []
    private var ready: [Bool] = []
    private var readyCount: [Int] = []
    private var bucketOf: [Int] = []
    /// The next bucket to issue.
    private var nextBucket = 0
    private var stepOpen = false
    private var weightWork: Work<[Double]>?
    private var localWeight = 1.0
    private var scale = 0.0
    private var totalWeight = 0.0
    private var copyTime = Duration.zero

    public init(communicator: Communicator, options: Options = Options()) {
        self.communicator = communicator
        self.options = options
    }

    deinit {
        for bucket in buckets {
            // A step left unfinished (an error): the collectives must end before their memory goes.
            _ = try? bucket.work?.wait()
            bucket.staging.deallocate()
            bucket.residual?.deallocate()
        }
    }

    /// Registers a gradient buffer (in forward order); returns its index for `markReady`. The buffer must
    /// stay valid as long as the synchronizer. All registrations come before the first step.
    @discardableResult
    public func register(_ gradient: UnsafeMutableBufferPointer<Float>, name: String = "") -> Int {
        precondition(buckets.isEmpty, "register every gradient before the first step")
        gradients.append((gradient, name.isEmpty ? "parameter \(gradients.count)" : name))
        return gradients.count - 1
    }

    /// The buckets' parameter indices, in the order they are issued (for tests and reports).
    public var bucketLayout: [[Int]] {
        formBucketsIfNeeded()
        return buckets.map(\.members)
    }

    /// Starts a step. `weight` is this rank's share of the average, normally its local batch size: the
    /// result is Σ weight_r·g_r / Σ weight_r. Issues the (tiny) all-reduce of the weights.
    public func beginStep(weight: Double = 1) {
        precondition(!stepOpen, "finish the previous step before beginning another")
        precondition(weight >= 0 && weight.isFinite, "a weight is a finite number ≥ 0")
        formBucketsIfNeeded()
        stepOpen = true
        localWeight = weight
        nextBucket = 0
        copyTime = .zero
        for i in ready.indices { ready[i] = false }
        for b in readyCount.indices { readyCount[b] = 0 }
        weightWork = communicator.allReduceAsync([weight])
        totalWeight = 0
    }

    /// Marks gradient `index` final for this step: it may be packed and sent as soon as every gradient of
    /// its bucket, and every earlier bucket, is ready. Do not write the gradient again in this step.
    /// - Throws: the error of an earlier collective of this step (the communicator has failed).
    public func markReady(_ index: Int) throws {
        precondition(stepOpen, "beginStep before markReady")
        precondition(gradients.indices.contains(index), "no gradient registered as \(index)")
        precondition(!ready[index], "\(gradients[index].name) marked ready twice in one step")
        ready[index] = true
        readyCount[bucketOf[index]] += 1
        try issueReadyBuckets()
    }

    /// Waits for every bucket and writes the global weighted average into every gradient. Gradients not
    /// marked ready are taken as they are now.
    /// - Throws: the communicator's `ConcordError`; the gradients are then unspecified.
    @discardableResult
    public func finish() throws -> StepReport {
        defer { stepOpen = false }
        var tally = try closeStep()
        for b in buckets.indices {
            let start = ContinuousClock.now
            try buckets[b].work!.wait()
            settle(b, waitedSince: start, &tally)
        }
        return report(tally)
    }

    /// `finish` for async callers: suspends on each bucket's Work (resumed by the communicator's thread;
    /// no thread of the cooperative pool blocks, none is started).
    @discardableResult
    public func finish() async throws -> StepReport {
        defer { stepOpen = false }
        var tally = try closeStep()
        for b in buckets.indices {
            let start = ContinuousClock.now
            try await buckets[b].work!.value
            settle(b, waitedSince: start, &tally)
        }
        return report(tally)
    }

    /// What `finish` adds up while it waits for the buckets in order.
    private struct Tally {
        var waited = Duration.zero
        var busy = Duration.zero
        var previousEnd: ContinuousClock.Instant?
    }

    /// Takes every gradient not marked ready as it is and issues the remaining buckets.
    private func closeStep() throws -> Tally {
        precondition(stepOpen, "beginStep before finish")
        for b in buckets.indices where readyCount[b] < buckets[b].members.count {
            for i in buckets[b].members where !ready[i] { ready[i] = true }
            readyCount[b] = buckets[b].members.count
        }
        try issueReadyBuckets()
        return Tally()
    }

    /// Bucket `b` has ended (waited for since `start`): account for its time and unpack it.
    private func settle(_ b: Int, waitedSince start: ContinuousClock.Instant, _ tally: inout Tally) {
        let end = ContinuousClock.now
        tally.waited += end - start
        // The service thread started this bucket when it was issued or when the previous one ended.
        let began = max(buckets[b].issuedAt, tally.previousEnd ?? buckets[b].issuedAt)
        let ended = max(buckets[b].work!.endedAt ?? end, began)
        tally.busy += ended - began
        tally.previousEnd = ended
        buckets[b].work = nil
        unpack(b)
        copyTime += ContinuousClock.now - end
    }

    private func report(_ tally: Tally) -> StepReport {
        StepReport(
            buckets: buckets.count, gradientBytes: buckets.reduce(0) { $0 + $1.count } * 4,
            wireBytes: buckets.reduce(0) { $0 + options.compression.codec.encodedByteCount($1.count) },
            totalWeight: totalWeight, communicationSeconds: tally.busy.seconds, exposedSeconds: tally.waited.seconds,
            copySeconds: copyTime.seconds)
    }

    // MARK: - Buckets

    private func formBucketsIfNeeded() {
        guard buckets.isEmpty, !gradients.isEmpty else { return }
        bucketOf = Array(repeating: 0, count: gradients.count)
        var members: [Int] = []
        var bytes = 0
        func close() {
            let count = bytes / 4
            let staging = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(count, 1))
            var residual: UnsafeMutableBufferPointer<Float>?
            if case .int8 = options.compression {
                residual = .allocate(capacity: max(count, 1))
                residual!.initialize(repeating: 0)
            }
            var offsets: [Int] = []
            var offset = 0
            for i in members {
                offsets.append(offset)
                offset += gradients[i].buffer.count
                bucketOf[i] = buckets.count
            }
            buckets.append(Bucket(members: members, offsets: offsets, count: count, staging: staging, residual: residual))
            members = []
            bytes = 0
        }
        for i in gradients.indices.reversed() {
            let size = gradients[i].buffer.count * 4
            let capacity = buckets.isEmpty ? options.firstBucketBytes : options.bucketBytes
            if !members.isEmpty && bytes + size > capacity { close() }
            members.append(i)
            bytes += size
        }
        close()
        ready = Array(repeating: false, count: gradients.count)
        readyCount = Array(repeating: 0, count: buckets.count)
    }

    private func issueReadyBuckets() throws {
        while nextBucket < buckets.count && readyCount[nextBucket] == buckets[nextBucket].members.count {
            if totalWeight == 0 {
                // Issued at beginStep; by the end of the first bucket's backward it has long completed.
                totalWeight = try weightWork!.wait()[0]
                weightWork = nil
                guard totalWeight > 0 else {
                    throw ConcordError.invalidArgument(
                        rank: communicator.rank, message: "the ranks' weights sum to \(totalWeight); at least one must be > 0")
                }
                scale = localWeight / totalWeight
            }
            let clock = ContinuousClock()
            let start = clock.now
            pack(nextBucket)
            copyTime += clock.now - start
            buckets[nextBucket].issuedAt = clock.now
            let bucket = buckets[nextBucket]
            buckets[nextBucket].work = communicator.sumAsync(
                UnsafeMutableBufferPointer(rebasing: bucket.staging[..<bucket.count]), codec: options.compression.codec,
                residual: bucket.residual.map { UnsafeMutableBufferPointer(rebasing: $0[..<bucket.count]) })
            nextBucket += 1
        }
    }

    /// staging = scale·g (+ the residual of int8's error feedback).
    private func pack(_ b: Int) {
        let bucket = buckets[b]
        let staging = bucket.staging.baseAddress!
        for (member, offset) in zip(bucket.members, bucket.offsets) {
            let g = gradients[member].buffer
            guard let source = g.baseAddress else { continue }
            (staging + offset).update(from: source, count: g.count)
            ReduceKernels.scale(staging + offset, count: g.count, dataType: .float32, by: scale)
        }
        if let residual = bucket.residual {
            // Last step's rounding goes out with this step; the collective refills the residual.
            ReduceKernels.sum(into: staging, from: residual.baseAddress!, count: bucket.count)
            residual.update(repeating: 0)
        }
    }

    private func unpack(_ b: Int) {
        let bucket = buckets[b]
        let staging = bucket.staging.baseAddress!
        for (member, offset) in zip(bucket.members, bucket.offsets) {
            let g = gradients[member].buffer
            guard let destination = g.baseAddress else { continue }
            destination.update(from: staging + offset, count: g.count)
        }
    }
}

extension Duration {
    package var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) * 1e-18
    }
}

/// How float32 values travel on the wire: exact, or compressed (every rank still ends bit-identical).
public enum WireCompression: String, Sendable, CaseIterable, CustomStringConvertible {
    /// float32, exact sums.
    case none
    /// IEEE half precision: half the bytes; 11 significant bits.
    case fp16
    /// bfloat16: half the bytes; float32's range, 8 significant bits.
    case bf16
    /// int8, blockwise scaled (a float32 scale per 64 values): 3.8x fewer bytes.
    case int8

    public var description: String { rawValue }

    var codec: WireCodec {
        switch self {
        case .none: return .float32
        case .fp16: return .float16
        case .bf16: return .bfloat16
        case .int8: return .int8(blockSize: WireCodec.defaultInt8BlockSize)
        }
    }
}

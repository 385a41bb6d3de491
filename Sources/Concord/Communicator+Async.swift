// The asynchronous collectives: each queues its collective behind those issued before it and returns a
// `Work` at once (see Work.swift). Semantics and errors are those of the awaiting and blocking forms in
// Communicator+Collectives.swift; only the waiting differs.
//
//   let w = comm.allReduceAsync(gradients, op: .avg)   // the collective runs on the service thread
//   compute()                                          // …while this thread computes
//   gradients = try w.wait()                           // or: try await w.value
import ConcordCollectives
import ConcordCore

extension Communicator {
    /// Issues `allReduce` on an array (moved into the Work; `value` hands back the result).
    public func allReduceAsync<T: ConcordElement>(_ data: [T], op: ReduceOp = .sum) -> Work<[T]> {
        var data = data
        let box = ArrayBox(&data)
        return issue(allReduceJob(box, nil, T.dataType, op)) { box.take() }
    }

    /// Issues `allReduce` in place on caller-owned memory, which must stay valid and untouched until the
    /// Work completes.
    public func allReduceAsync<T: ConcordElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum)
        -> Work<Void>
    {
        issue(allReduceJob(SendableBytes(buffer), nil, T.dataType, op)) {}
    }

    /// Issues `allReduce` from `input` into `output` (caller-owned, valid until the Work completes).
    public func allReduceAsync<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum
    ) -> Work<Void> {
        issue(allReduceJob(SendableBytes(input), SendableBytes(output), T.dataType, op)) {}
    }

    /// Issues `reduceScatter` on an array of n blocks; `value` is block `rank` of the reduction.
    public func reduceScatterAsync<T: ConcordElement>(_ input: [T], op: ReduceOp = .sum) -> Work<[T]> {
        var output = input.isEmpty ? [] : [T](repeating: input[0], count: input.count / worldSize)
        let box = ArrayBox(&output)
        return issue(Self.reduceScatterJob(ArrayCopy(input), box, T.dataType, op)) { box.take() }
    }

    /// Issues `reduceScatter` on caller-owned memory.
    public func reduceScatterAsync<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum
    ) -> Work<Void> {
        issue(Self.reduceScatterJob(SendableBytes(input), SendableBytes(output), T.dataType, op)) {}
    }

    /// Issues `allGather` on an array; `value` holds every rank's input in rank order.
    public func allGatherAsync<T: ConcordElement>(_ input: [T]) -> Work<[T]> {
        var output = input.isEmpty ? [] : [T](repeating: input[0], count: input.count * worldSize)
        let box = ArrayBox(&output)
        return issue(Self.allGatherJob(ArrayCopy(input), box, T.dataType)) { box.take() }
    }

    /// Issues `allGather` on caller-owned memory.
    public func allGatherAsync<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>
    ) -> Work<Void> {
        issue(Self.allGatherJob(SendableBytes(input), SendableBytes(output), T.dataType)) {}
    }

    /// Issues `broadcast` of `root`'s array; `value` is the root's data on every rank.
    public func broadcastAsync<T: ConcordElement>(_ data: [T], root: Int) -> Work<[T]> {
        var data = data
        let box = ArrayBox(&data)
        return issue(Self.broadcastJob(box, nil, T.dataType, root)) { box.take() }
    }

    /// Issues `broadcast` in place on caller-owned memory.
    public func broadcastAsync<T: ConcordElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) -> Work<Void> {
        issue(Self.broadcastJob(SendableBytes(buffer), nil, T.dataType, root)) {}
    }

    /// Issues `reduce` to `root`; `value` is the reduction on the root and the unchanged data elsewhere.
    public func reduceAsync<T: ConcordElement>(_ data: [T], root: Int, op: ReduceOp = .sum) -> Work<[T]> {
        var data = data
        let box = ArrayBox(&data)
        return issue(Self.reduceJob(box, nil, T.dataType, op, root)) { box.take() }
    }

    /// Issues `reduce` from `input` into `root`'s `output` on caller-owned memory.
    public func reduceAsync<T: ConcordElement>(
        _ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, root: Int, op: ReduceOp = .sum
    ) -> Work<Void> {
        issue(Self.reduceJob(SendableBytes(input), SendableBytes(output), T.dataType, op, root)) {}
    }

    /// Issues a barrier.
    public func barrierAsync() -> Work<Void> {
        issue(Self.barrierJob) {}
    }

    /// Issues a sum of float32 `buffer` over all ranks with `codec` on every link (float32: the exact
    /// all-reduce); every rank ends with the same bits (RingCollectives+Compressed.swift). With a
    /// `residual`, every rounding this rank makes adds what it dropped there (error feedback).
    package func sumAsync(
        _ buffer: UnsafeMutableBufferPointer<Float>, codec: WireCodec, residual: UnsafeMutableBufferPointer<Float>? = nil
    ) -> Work<Void> {
        if codec == .float32 { return allReduceAsync(buffer, op: .sum) }
        let memory = SendableBytes(buffer)
        let error = residual.map { SendableBytes($0) }
        let capacity = self.capacity
        return issue({ transport, sequence, segment in
            // Chunks sized by link capacity when that is on (the codec stays the caller's on every link).
            try Self.sum(
                memory.bytes.bindMemory(to: Float.self),
                plan: capacity.plan(forBytes: memory.bytes.count, worldSize: transport.worldSize), codec: codec,
                residual: error?.bytes.bindMemory(to: Float.self), sequence: sequence, transport: transport,
                segmentBytes: segment)
        }) {}
    }
}

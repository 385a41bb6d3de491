// The pipelined execution of a `RingSchedule` over a `Transport`, shared by every ring collective.
//
// Units travel in the schedule's wire order. A send is posted as soon as the receive it depends on (the
// same segment one step earlier, unit u-k) is complete, and `RingCollectives.receiveWindow` receives
// stay posted ahead of the one being waited on. Each iteration: wait for the receive at wire position p,
// let the collective finish it (`received`: e.g. scale an owned segment for avg), post every send that
// became ready, then post receives through position p+window.
//
// Where the bytes of a unit come from and go to is the collective's business (closures): the caller's
// buffer for in-place collectives, scratch segments for out-of-place reduce-scatter. Scratch needs a
// bound on how long a received segment waits to be forwarded; `sendLag` gives it: the receive at
// position p is posted only once this rank's sends at positions <= p - sendLag have completed, and
// `sent` hands those back. No deadlock can follow as long as sendLag >= window: the receive at position
// p is posted while handling position i >= p - window, by which time the sends at positions <= i are
// all posted (each depends on a receive at an earlier position), so a rank only ever waits for transfers
// at positions below those it is handling; the lowest transfer not yet complete on any link therefore
// always has both its ends posted, and completes.
import ConcordCore

/// One rank's run of a ring plan; the collective says where each unit's bytes live.
struct RingPipeline {
    let plan: RingSchedule
    let order: [Int]
    let transport: Transport
    let kind: CollectiveKind
    let sequence: UInt64
    let dataType: DataType
    let op: ReduceOp
    /// The collective's element count, stamped on every frame (per rank for reduce-scatter/all-gather).
    let count: Int
    /// See the file comment; nil: sends are only waited for at the end.
    var sendLag: Int? = nil

    func tag(_ range: Range<Int>) -> SegmentTag {
        SegmentTag(
            collective: kind, sequence: sequence, dataType: dataType, op: op, count: count,
            offset: range.lowerBound, length: range.count)
    }

    /// Runs every unit of the plan, then waits for every transfer.
    ///
    /// - Parameters:
    ///   - receive: where the receive of unit u lands, and the reducer that combines it (nil: stored);
    ///     called when the receive is posted.
    ///   - received: called once the receive of unit u is complete, before anything that depends on it.
    ///   - send: the bytes of the send of unit u; called when the send is posted.
    ///   - sent: called when the send of unit u is known complete (only with `sendLag`).
    func run(
        receive: (_ unit: Int) -> (bytes: UnsafeMutableRawBufferPointer, reducer: Reducer?),
        received: (_ unit: Int) -> Void = { _ in },
        send: (_ unit: Int) -> UnsafeRawBufferPointer,
        sent: (_ unit: Int) -> Void = { _ in }
    ) throws {
        try run(
            taggedReceive: { u in
                let target = receive(u)
                return (tag(plan.unit(u).receive), target.bytes, target.reducer)
            },
            received: received, taggedSend: { u in (tag(plan.unit(u).send), send(u)) }, sent: sent)
    }

    /// `run` for collectives whose frames are not described by `tag(_:)` (each unit names its own tag:
    /// the compressed ring, whose units differ in codec and encoded length).
    func run(
        taggedReceive receive: (_ unit: Int) -> (tag: SegmentTag, bytes: UnsafeMutableRawBufferPointer, reducer: Reducer?),
        received: (_ unit: Int) -> Void,
        taggedSend send: (_ unit: Int) -> (tag: SegmentTag, bytes: UnsafeRawBufferPointer),
        sent: (_ unit: Int) -> Void
    ) throws {
        let total = order.count
        let k = plan.segmentsPerChunk
        let window = RingCollectives.receiveWindow
        precondition(sendLag.map { $0 >= window } ?? true, "a send lag below the receive window can deadlock")
        var done = [Bool](repeating: false, count: plan.unitCount)
        var receives = [TransferID]()
        receives.reserveCapacity(total)
        var sends = [TransferID]()
        sends.reserveCapacity(total)
        var sendsCompleted = 0

        func postReadySends() throws {
            while sends.count < total {
                let u = order[sends.count]
                if u >= k && !done[u - k] { return }
                let frame = send(u)
                sends.append(try transport.send(to: plan.right, tag: frame.tag, from: frame.bytes))
            }
        }
        func postReceives(through limit: Int) throws {
            while receives.count < min(limit, total) {
                let p = receives.count
                if let lag = sendLag {
                    while sendsCompleted <= p - lag {
                        assert(sendsCompleted < sends.count, "waiting for a send that was not posted")
                        try transport.wait(sends[sendsCompleted])
                        sent(order[sendsCompleted])
                        sendsCompleted += 1
                    }
                }
                let u = order[p]
                let target = receive(u)
                receives.append(
                    try transport.receive(from: plan.left, tag: target.tag, into: target.bytes, reducer: target.reducer))
            }
        }

        try postReadySends()
        try postReceives(through: window)
        for p in 0..<total {
            try transport.wait(receives[p])
            let u = order[p]
            done[u] = true
            received(u)
            try postReadySends()
            try postReceives(through: p + 1 + window)
        }
        try transport.waitAll()
    }
}

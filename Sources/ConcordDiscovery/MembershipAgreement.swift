// The membership agreement: a pure state machine that turns "the nodes I hear" into one group that every
// member starts with the same member list, the same ranks and the same ring.
//
//   coordinator C (smallest id in its view)           member M
//   ───────────────────────────────────────           ────────
//   start condition holds ── propose(P) ───────────▶  free? bind to P
//                         ◀─────────── accept(P) ──   (or reject(P, reason))
//   all listed members accepted
//                         ── commit(P) ────────────▶  bound to P? start with P
//   start with P
//
// Start condition (at a node that is the smallest id in its own view): `worldSize` N nodes in view, or,
// with a `minSize` M, at least M nodes and no change of the view for the settle window. The proposal lists
// the view's node ids, sorted, cut to the first N; rank = index in that list, so the same set of ids
// gives the same ranks whatever the order in which nodes appeared. The proposal also carries the ring
// order, computed by the coordinator from the RTT rows members sent it (`RingOrder.choose` on the matrix
// quantized to powers of 4, so noise keeps node-id order and only real structure reorders), so members
// never compute it themselves and cannot disagree.
//
// Binding. A member that accepts P is *bound* to P: until C aborts P or commits it, the member accepts no
// other proposal, and C may count its accept at any time. A proposal from a smaller coordinator C' does
// not override the binding: the member parks it, asks C to `withdraw` it, and C answers with `abort`
// (P can no longer complete, so C drops it) or, if C had already committed, with `commit` — and the member
// starts with P. Only after the abort does the member accept P'. A newer proposal from the same C also
// frees the member from C's older one, because a coordinator has at most one live proposal and never
// revives one it dropped. Duplicated, lost and reordered messages are repaired by retries: a bound member
// re-sends its accept every `retryInterval` (C answers commit, nothing, or abort for a proposal it no
// longer holds), a coordinator re-sends its proposal to members that have not accepted, and gives up
// (abort to all) after `proposalTimeout`, a reject, a withdraw, a member leaving its view, or a smaller id
// entering it.
//
// Why every member that starts agrees: a coordinator commits P only when every listed member's accept is
// live, and a member starts only on the commit of the very proposal it is bound to; it was bound to no
// other, so no two members start with different lists, ranks or rings.
// Why two partial groups never both start (worldSize N): a commit needs all N listed members bound to one
// proposal, and a node is bound to at most one live proposal at a time and starts at most once. Two
// groups would need 2N distinct nodes; sides of a partition, each smaller than N, never even propose.
// With only `minSize` M, two sides of a partition that each hold at least M nodes and settle can both
// start: choose M greater than half of the nodes you run (then two disjoint sides cannot both reach M),
// or give a world size.
//
// One exception to binding, for liveness: a member bound to P releases itself when P's coordinator leaves
// its view (it was in view, then no beacon for the peer TTL), or was never in view for twice the proposal
// timeout (a coordinator that died before its beacons arrived). If C had in fact committed, the group of P
// lacks this member and fails at ring setup (the ring connects every listed member and proves itself with
// a barrier), so it never runs partially; keep the TTL well above `retryInterval` so that a merely slow
// coordinator is not dropped: a live coordinator answers the member's repeated accept with the commit.
//
// Nodes beyond the N listed (surplus) and nodes that see a committed coordinator stay idle. Each call is
// O(n log n) in the view; messages per start: 3(N-1) without loss, plus one RTT row per member.

/// When a group may start, and the agreement's timers.
public struct MembershipPolicy: Sendable, Equatable {
    /// Start as soon as this many nodes are in view; proposals list at most this many. Nil: no fixed size.
    public var worldSize: Int?
    /// Start with at least this many nodes once the view has been unchanged for `settleSeconds`. Nil: only
    /// a full `worldSize` starts.
    public var minSize: Int?
    /// Seconds without a change of the view before a `minSize` group may start.
    public var settleSeconds: Double
    /// Seconds between retries of an unanswered proposal, accept or withdraw (and RTT rows).
    public var retryInterval: Double
    /// Seconds after which a coordinator drops a proposal that not every member accepted.
    public var proposalTimeout: Double
    /// Seconds a coordinator may wait, once the start condition holds, for RTT rows covering every pair of
    /// members before it proposes anyway (with unmeasured links, or rank order). 0: do not wait.
    public var rttWaitSeconds: Double

    /// Exactly `worldSize` nodes form the group.
    public static func exactly(
        _ worldSize: Int, retryInterval: Double = 0.5, proposalTimeout: Double = 5, rttWaitSeconds: Double = 0
    ) -> MembershipPolicy {
        MembershipPolicy(
            worldSize: worldSize, minSize: nil, settleSeconds: 0, retryInterval: retryInterval,
            proposalTimeout: proposalTimeout, rttWaitSeconds: rttWaitSeconds)
    }

    /// At least `minSize` nodes (at most `maxSize` when given) form the group once the view settles.
    public static func atLeast(
        _ minSize: Int, atMost maxSize: Int? = nil, settleSeconds: Double, retryInterval: Double = 0.5,
        proposalTimeout: Double = 5, rttWaitSeconds: Double = 0
    ) -> MembershipPolicy {
        MembershipPolicy(
            worldSize: maxSize, minSize: minSize, settleSeconds: settleSeconds, retryInterval: retryInterval,
            proposalTimeout: proposalTimeout, rttWaitSeconds: rttWaitSeconds)
    }

    /// A policy from its fields; prefer `exactly` and `atLeast`.
    ///
    /// - Precondition: at least one size is given, sizes are ≥ 1 and ≤ `MembershipMessage.maxMembers`,
    ///   `minSize <= worldSize`, and the times are positive (settle and RTT wait may be 0).
    public init(
        worldSize: Int?, minSize: Int?, settleSeconds: Double, retryInterval: Double, proposalTimeout: Double,
        rttWaitSeconds: Double
    ) {
        precondition(worldSize != nil || minSize != nil, "a membership policy needs a world size or a minimum size")
        for s in [worldSize, minSize].compactMap({ $0 }) {
            precondition(s >= 1 && s <= MembershipMessage.maxMembers, "group size \(s) out of 1...1024")
        }
        if let worldSize, let minSize {
            precondition(minSize <= worldSize, "minimum size \(minSize) exceeds world size \(worldSize)")
        }
        precondition(retryInterval > 0 && proposalTimeout > 0, "retry interval and proposal timeout must be > 0")
        precondition(settleSeconds >= 0 && rttWaitSeconds >= 0, "settle and RTT wait must be >= 0")
        self.worldSize = worldSize
        self.minSize = minSize
        self.settleSeconds = settleSeconds
        self.retryInterval = retryInterval
        self.proposalTimeout = proposalTimeout
        self.rttWaitSeconds = rttWaitSeconds
    }

    /// True when a group of `size` members satisfies the policy: exactly the world size without a minimum,
    /// else between the minimum and the world size (when there is one).
    func admits(size: Int) -> Bool {
        guard let minSize else { return size == worldSize }
        return size >= minSize && size <= (worldSize ?? Int.max)
    }

    /// "world size 4", "at least 3 nodes" or "3 to 8 nodes".
    var sizeDescription: String { Self.describeSizes(worldSize: worldSize, minSize: minSize) }

    static func describeSizes(worldSize: Int?, minSize: Int?) -> String {
        switch (worldSize, minSize) {
        case (let n?, nil): return "world size \(n)"
        case (nil, let m?): return "at least \(m) nodes"
        case (let n?, let m?): return "\(m) to \(n) nodes"
        default: return "no size"
        }
    }
}

/// One node's side of the membership agreement (see the file comment for the protocol and its argument).
///
/// Feed it the view (`tick`) and the messages from peers (`handle`); perform what it returns: send each
/// message to its node over the authenticated link, start the group on `.start`, log `.warning`s.
///
///     var agreement = MembershipAgreement(nodeID: me, policy: .exactly(4))
///     for action in agreement.tick(view: table.nodeIDs(now: now), now: now) { perform(action) }
///     for action in agreement.handle(message, from: peer, now: now) { perform(action) }
public struct MembershipAgreement: Sendable, CustomStringConvertible {
    /// What the caller must do.
    public enum Outgoing: Sendable, Equatable {
        /// Send `message` to node `to`.
        case send(MembershipMessage, to: NodeID)
        /// The group is agreed: build the ring with it. Returned once.
        case start(MembershipGroup)
        /// Something a user should know (a policy mismatch, a commit this node missed).
        case warning(String)
    }

    private enum Phase: Sendable {
        case idle
        /// This node coordinates `proposal`; `accepted` are the other members that accepted.
        case proposing(
            Proposal, accepted: Set<NodeID>, since: ContinuousClock.Instant, lastSent: ContinuousClock.Instant)
        /// This node accepted `proposal` and is bound to it; `parked` is a smaller coordinator's proposal
        /// waiting for the release; `seen` tells whether the coordinator was in view since then.
        case bound(
            Proposal, since: ContinuousClock.Instant, lastSent: ContinuousClock.Instant, seen: Bool, parked: Proposal?)
        case committed(Proposal)
    }

    /// This node.
    public let nodeID: NodeID
    /// When a group may start, and the timers.
    public let policy: MembershipPolicy
    private var phase: Phase = .idle
    private var counter: UInt64 = 0
    private var view: [NodeID] = []
    private var viewChangedAt: ContinuousClock.Instant?
    private var startableSince: ContinuousClock.Instant?
    private var noProposalBefore: ContinuousClock.Instant?
    private var rows: [NodeID: RTTRow] = [:]
    private var rowSent: (to: NodeID, at: ContinuousClock.Instant)?

    /// A node that has not yet joined a group.
    public init(nodeID: NodeID, policy: MembershipPolicy) {
        self.nodeID = nodeID
        self.policy = policy
    }

    /// The group this node started with, once committed.
    public var group: MembershipGroup? {
        if case .committed(let p) = phase { return MembershipGroup(p) }
        return nil
    }

    /// The coordinator of the last view given to `tick` (the smallest node id in it, this node included).
    public var coordinator: NodeID { view.first ?? nodeID }

    /// One line for logs: what this node is doing.
    public var description: String {
        switch phase {
        case .idle: return "idle, view of \(view.count) (\(policy.sizeDescription))"
        case .proposing(let p, let accepted, _, _):
            return "coordinating \(p.id): \(accepted.count + 1) of \(p.members.count) accepted"
        case .bound(let p, _, _, _, let parked):
            return "accepted \(p.id)" + (parked.map { ", waiting for release to accept \($0.id)" } ?? "")
        case .committed(let p): return "started with \(p.id)"
        }
    }

    /// Records this node's measured round-trip times; they are sent to the coordinator on the next `tick`.
    public mutating func recordRTT(_ seconds: [NodeID: Double]) {
        rows[nodeID] = RTTRow(node: nodeID, seconds: seconds)
        rowSent = nil
    }

    // MARK: Time

    /// Advances timers and acts on the current view.
    ///
    /// - Parameters:
    ///   - view: the nodes of this job heard recently (this node may be included or not).
    ///   - now: the current time; calls must not go back in time.
    public mutating func tick(view newView: [NodeID], now: ContinuousClock.Instant) -> [Outgoing] {
        let sorted = Array(Set(newView + [nodeID])).sorted()
        if sorted != view || viewChangedAt == nil {
            view = sorted
            viewChangedAt = now
        }
        let inView = Set(view)
        var out: [Outgoing] = []
        if case .committed = phase { return out }

        if let row = rows[nodeID], coordinator != nodeID,
            rowSent.map({ $0.to != coordinator || elapsed($0.at, now) >= policy.retryInterval }) ?? true
        {
            out.append(.send(.rtt(row), to: coordinator))
            rowSent = (coordinator, now)
        }

        switch phase {
        case .committed:
            return out
        case .bound(let p, let since, let lastSent, var seen, var parked):
            if let q = parked, !inView.contains(q.id.coordinator) { parked = nil }
            let present = inView.contains(p.id.coordinator)
            seen = seen || present
            if !present && (seen || elapsed(since, now) >= 2 * policy.proposalTimeout) {
                out.append(
                    .warning(
                        "coordinator \(p.id.coordinator.shortDescription) "
                            + (seen ? "left the view" : "never appeared in the view") + "; releasing \(p.id)"))
                out += release(now: now, parked: parked)
            } else if elapsed(lastSent, now) >= policy.retryInterval {
                out.append(.send(.accept(p.id), to: p.id.coordinator))
                if parked != nil { out.append(.send(.withdraw(p.id), to: p.id.coordinator)) }
                phase = .bound(p, since: since, lastSent: now, seen: seen, parked: parked)
            } else {
                phase = .bound(p, since: since, lastSent: lastSent, seen: seen, parked: parked)
            }
        case .proposing(let p, let accepted, let since, let lastSent):
            if coordinator != nodeID || !p.members.allSatisfy(inView.contains)
                || elapsed(since, now) >= policy.proposalTimeout
            {
                out += abandon(p, now: now)
            } else if elapsed(lastSent, now) >= policy.retryInterval {
                for m in p.members.dropFirst() where !accepted.contains(m) { out.append(.send(.propose(p), to: m)) }
                phase = .proposing(p, accepted: accepted, since: since, lastSent: now)
            }
        case .idle:
            out += proposeIfReady(now: now)
        }
        return out
    }

    /// Proposes when this node is the coordinator and the start condition holds.
    private mutating func proposeIfReady(now: ContinuousClock.Instant) -> [Outgoing] {
        guard coordinator == nodeID, startConditionHolds(now: now) else {
            startableSince = nil
            return []
        }
        if startableSince == nil { startableSince = now }
        if let notBefore = noProposalBefore, now < notBefore { return [] }
        let members = Array(view.prefix(policy.worldSize ?? view.count))
        let rtt = RTTMatrix(members: members, rows: members.compactMap { rows[$0] })
        if policy.rttWaitSeconds > 0, !Self.covers(rtt), let since = startableSince,
            elapsed(since, now) < policy.rttWaitSeconds
        {
            return []
        }
        counter += 1
        let proposal = Proposal(
            id: ProposalID(coordinator: nodeID, counter: counter), members: members, worldSize: policy.worldSize,
            minSize: policy.minSize, ring: rtt.hasMeasurements ? RingOrder.choose(rtt: rtt.quantized()) : nil)
        if members.count == 1 {
            phase = .committed(proposal)
            return [.start(MembershipGroup(proposal))]
        }
        phase = .proposing(proposal, accepted: [], since: now, lastSent: now)
        return members.dropFirst().map { .send(.propose(proposal), to: $0) }
    }

    private func startConditionHolds(now: ContinuousClock.Instant) -> Bool {
        if let n = policy.worldSize, view.count >= n { return true }
        guard let m = policy.minSize, view.count >= m, let changed = viewChangedAt else { return false }
        return elapsed(changed, now) >= policy.settleSeconds
    }

    private static func covers(_ rtt: RTTMatrix) -> Bool {
        for a in 0..<rtt.count { for b in 0..<a where rtt[a, b] == nil { return false } }
        return true
    }

    // MARK: Messages

    /// Acts on `message` from node `from` (the authenticated peer of the link it came on).
    public mutating func handle(_ message: MembershipMessage, from: NodeID, now: ContinuousClock.Instant)
        -> [Outgoing]
    {
        guard from != nodeID else { return [] }
        switch message {
        case .propose(let p): return receivePropose(p, from: from, now: now)
        case .accept(let id): return receiveAccept(id, from: from, now: now)
        case .reject(let id, let reason): return receiveReject(id, reason, from: from, now: now)
        case .withdraw(let id): return receiveWithdraw(id, from: from, now: now)
        case .abort(let id): return receiveAbort(id, from: from, now: now)
        case .commit(let p): return receiveCommit(p, from: from)
        case .rtt(let row):
            if row.node == from { rows[from] = row }
            return []
        }
    }

    private mutating func receivePropose(_ p: Proposal, from: NodeID, now: ContinuousClock.Instant) -> [Outgoing] {
        guard p.id.coordinator == from, p.structuralProblem == nil, p.members.contains(nodeID) else {
            return [.send(.reject(p.id, .invalidProposal), to: from)]
        }
        guard p.worldSize == policy.worldSize, p.minSize == policy.minSize else {
            let theirs = MembershipPolicy.describeSizes(worldSize: p.worldSize, minSize: p.minSize)
            return [
                .send(.reject(p.id, .policyMismatch), to: from),
                .warning(
                    "node \(from.shortDescription) proposes a group of \(theirs), this node is set for "
                        + "\(policy.sizeDescription); give every node the same size options"),
            ]
        }
        guard policy.admits(size: p.members.count) else {
            return [
                .send(.reject(p.id, .invalidProposal), to: from),
                .warning(
                    "node \(from.shortDescription) proposes \(p.members.count) members, outside \(policy.sizeDescription)"
                ),
            ]
        }
        switch phase {
        case .committed(let mine):
            return mine.id == p.id ? [] : [.send(.reject(p.id, .alreadyCommitted), to: from)]
        case .idle:
            return bind(p, now: now)
        case .proposing(let own, _, _, _):
            guard p.id.coordinator < nodeID else { return [.send(.reject(p.id, .boundElsewhere), to: from)] }
            return abandon(own, now: now) + bind(p, now: now)
        case .bound(let b, let since, let lastSent, let seen, let parked):
            if p.id == b.id { return [.send(.accept(p.id), to: from)] }
            if p.id.coordinator == b.id.coordinator {
                guard p.id.counter > b.id.counter else { return [] }  // an old proposal, already dropped
                // The coordinator moved on: the binding to its older proposal is void.
                return release(now: now, parked: parked, next: p)
            }
            guard p.id.coordinator < b.id.coordinator else {
                return [.send(.reject(p.id, .boundElsewhere), to: from)]
            }
            var out: [Outgoing] = []
            if let q = parked {
                if q.id == p.id {
                    return [.send(.withdraw(b.id), to: b.id.coordinator)]
                }
                let keepParked =
                    q.id.coordinator < p.id.coordinator
                    || (q.id.coordinator == p.id.coordinator && q.id.counter > p.id.counter)
                if keepParked { return [.send(.reject(p.id, .boundElsewhere), to: from)] }
                if q.id.coordinator != p.id.coordinator {
                    out.append(.send(.reject(q.id, .boundElsewhere), to: q.id.coordinator))
                }
            }
            phase = .bound(b, since: since, lastSent: lastSent, seen: seen, parked: p)
            out.append(.send(.withdraw(b.id), to: b.id.coordinator))
            return out
        }
    }

    private mutating func receiveAccept(_ id: ProposalID, from: NodeID, now: ContinuousClock.Instant) -> [Outgoing] {
        switch phase {
        case .committed(let mine) where mine.id == id:
            return [.send(.commit(mine), to: from)]
        case .proposing(let p, var accepted, let since, let lastSent) where p.id == id:
            guard p.members.contains(from) else { return [] }
            accepted.insert(from)
            guard accepted.count == p.members.count - 1 else {
                phase = .proposing(p, accepted: accepted, since: since, lastSent: lastSent)
                return []
            }
            phase = .committed(p)
            return p.members.dropFirst().map { .send(.commit(p), to: $0) } + [.start(MembershipGroup(p))]
        default:
            // A proposal of ours that is no longer live: free the member.
            return id.coordinator == nodeID ? [.send(.abort(id), to: from)] : []
        }
    }

    private mutating func receiveReject(
        _ id: ProposalID, _ reason: RejectReason, from: NodeID, now: ContinuousClock.Instant
    ) -> [Outgoing] {
        guard case .proposing(let p, _, _, _) = phase, p.id == id, p.members.contains(from) else { return [] }
        var out = abandon(p, now: now)
        if reason == .policyMismatch || reason == .invalidProposal {
            out.append(.warning("node \(from.shortDescription) refused \(id): \(reason)"))
        }
        return out
    }

    private mutating func receiveWithdraw(_ id: ProposalID, from: NodeID, now: ContinuousClock.Instant) -> [Outgoing] {
        switch phase {
        case .committed(let mine) where mine.id == id:
            return [.send(.commit(mine), to: from)]
        case .proposing(let p, _, _, _) where p.id == id:
            return abandon(p, now: now)
        default:
            return id.coordinator == nodeID ? [.send(.abort(id), to: from)] : []
        }
    }

    private mutating func receiveAbort(_ id: ProposalID, from: NodeID, now: ContinuousClock.Instant) -> [Outgoing] {
        guard id.coordinator == from, case .bound(let b, let since, let lastSent, let seen, let parked) = phase
        else { return [] }
        if b.id == id { return release(now: now, parked: parked) }
        if parked?.id == id { phase = .bound(b, since: since, lastSent: lastSent, seen: seen, parked: nil) }
        return []
    }

    private mutating func receiveCommit(_ p: Proposal, from: NodeID) -> [Outgoing] {
        guard p.id.coordinator == from else { return [] }
        switch phase {
        case .bound(let b, _, _, _, let parked) where b == p:
            phase = .committed(p)
            var out: [Outgoing] = []
            if let q = parked { out.append(.send(.reject(q.id, .alreadyCommitted), to: q.id.coordinator)) }
            return out + [.start(MembershipGroup(p))]
        case .committed:
            return []
        default:
            return [
                .warning(
                    "node \(from.shortDescription) committed \(p.id) after this node was released from it; "
                        + "that group will fail to form its ring")
            ]
        }
    }

    // MARK: Transitions

    /// Accepts `p` and binds to it.
    private mutating func bind(_ p: Proposal, now: ContinuousClock.Instant) -> [Outgoing] {
        phase = .bound(p, since: now, lastSent: now, seen: view.contains(p.id.coordinator), parked: nil)
        return [.send(.accept(p.id), to: p.id.coordinator)]
    }

    /// Ends the current binding: binds to `next` or the parked proposal when there is one, else idles.
    private mutating func release(now: ContinuousClock.Instant, parked: Proposal?, next: Proposal? = nil)
        -> [Outgoing]
    {
        var out: [Outgoing] = []
        var candidate = next
        if let q = parked {
            if let n = candidate, n.id.coordinator < q.id.coordinator {
                out.append(.send(.reject(q.id, .boundElsewhere), to: q.id.coordinator))
            } else {
                if let n = candidate { out.append(.send(.reject(n.id, .boundElsewhere), to: n.id.coordinator)) }
                candidate = q
            }
        }
        guard let chosen = candidate else {
            phase = .idle
            return out
        }
        return out + bind(chosen, now: now)
    }

    /// Drops this node's own proposal `p`: tells its members, idles, and waits a retry interval before the
    /// next proposal.
    private mutating func abandon(_ p: Proposal, now: ContinuousClock.Instant) -> [Outgoing] {
        phase = .idle
        noProposalBefore = now.advanced(by: .seconds(policy.retryInterval))
        return p.members.dropFirst().map { .send(.abort(p.id), to: $0) }
    }

    private func elapsed(_ from: ContinuousClock.Instant, _ to: ContinuousClock.Instant) -> Double {
        let d = from.duration(to: to)
        return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
    }
}

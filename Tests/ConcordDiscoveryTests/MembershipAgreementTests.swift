import Testing

@testable import ConcordDiscovery
import ConcordTestSupport

@Suite("Membership agreement")
struct MembershipAgreementTests {
    // MARK: Simulated networks

    /// Checks that hold in every run: nobody starts twice, every node that started is in its group, any two
    /// started groups are disjoint, and (unless `complete` is false) every member of a started group started
    /// with that same group.
    static func checkInvariants(_ sim: MembershipSimulation, complete: Bool = true, _ context: String) {
        for (i, count) in sim.startCount { #expect(count == 1, "node \(i) started \(count) times; \(context)") }
        for (i, group) in sim.started {
            #expect(group.rank(of: sim.ids[i]) != nil, "node \(i) started in a group without it; \(context)")
            #expect(group.members == group.members.sorted(), "\(context)")
            #expect(group.ring.count == group.worldSize, "\(context)")
        }
        let groups = sim.groups
        for a in 0..<groups.count {
            for b in 0..<a {
                #expect(Set(groups[a].members).isDisjoint(with: groups[b].members), "overlapping groups; \(context)")
            }
        }
        if complete {
            for group in groups {
                for member in group.members {
                    let i = sim.ids.firstIndex(of: member)!
                    #expect(sim.started[i] == group, "member \(i) of \(group) did not start with it; \(context)")
                }
            }
        }
    }

    enum Condition: String, CaseIterable {
        case clean, lossAndDuplicates, reordered, lateJoins, slowDiscovery
    }

    static func options(_ condition: Condition, n: Int, seed: UInt64) -> MembershipSimulation.Options {
        var o = MembershipSimulation.Options(policy: .exactly(n), seed: seed)
        switch condition {
        case .clean: break
        case .lossAndDuplicates:
            o.lossRate = 0.15
            o.duplicateRate = 0.15
            o.duration = 60
        case .reordered:
            o.fifo = false
            o.duplicateRate = 0.1
            o.maxDelay = 0.6
        case .lateJoins:
            var g = SplitMix64(seed: seed)
            o.joinTimes = (0..<n).map { _ in Double(g.next() % 100) / 10 }
        case .slowDiscovery:
            o.maxDiscoveryDelay = 3
        }
        return o
    }

    @Test(
        "2 to 8 nodes with world size N: all start and agree on members, ranks and ring",
        arguments: Array(2...8), Condition.allCases)
    func allAgree(n: Int, condition: Condition) {
        for seed in UInt64(1)...4 {
            var sim = MembershipSimulation(
                ids: MembershipSimulation.randomIDs(n, seed: seed * 100 + UInt64(n)),
                options: Self.options(condition, n: n, seed: seed))
            sim.run()
            let context = "n=\(n) \(condition) seed \(seed)"
            Self.checkInvariants(sim, context)
            #expect(sim.started.count == n, "only \(sim.started.count) of \(n) started; \(context)")
            #expect(sim.groups.count == 1, "\(context)")
            if let group = sim.groups.first {
                #expect(group.members == sim.ids.sorted(), "\(context)")
                for (i, id) in sim.ids.enumerated() {
                    #expect(group.rank(of: id) == sim.ids.sorted().firstIndex(of: id)!, "node \(i)")
                }
            }
            #expect(sim.warnings.isEmpty, "\(sim.warnings); \(context)")
        }
    }

    @Test("a world of one starts alone at once")
    func worldOfOne() {
        var a = MembershipAgreement(nodeID: node(1), policy: .exactly(1))
        let out = a.tick(view: [], now: at(0))
        #expect(
            out == [
                .start(
                    MembershipGroup(
                        Proposal(
                            id: ProposalID(coordinator: node(1), counter: 1), members: [node(1)], worldSize: 1,
                            minSize: nil,
                            ring: nil)))
            ])
        #expect(a.group?.worldSize == 1)
    }

    @Test("with world size N and N-1 nodes present nobody starts", arguments: Array(2...8))
    func missingNode(n: Int) {
        for seed in UInt64(1)...3 {
            var o = Self.options(.lossAndDuplicates, n: n, seed: seed)
            o.policy = .exactly(n)
            o.duration = 40
            var sim = MembershipSimulation(ids: MembershipSimulation.randomIDs(n - 1, seed: seed), options: o)
            sim.run()
            #expect(sim.started.isEmpty, "n=\(n) seed \(seed)")
            #expect(sim.messagesSent == 0, "nobody even proposes")
        }
    }

    @Test("a partition never lets two sides start with world size N", arguments: Array(2...6))
    func partitionExact(n: Int) {
        let total = 2 * n - 1
        for cut in 1..<total {
            for seed in UInt64(1)...2 {
                var o = Self.options(.reordered, n: n, seed: seed)
                o.policy = .exactly(n)
                o.partition = (0..<total).map { $0 < cut ? 0 : 1 }
                var sim = MembershipSimulation(
                    ids: MembershipSimulation.randomIDs(total, seed: seed + UInt64(cut) * 31), options: o)
                sim.run()
                let context = "n=\(n) cut \(cut) seed \(seed)"
                Self.checkInvariants(sim, context)
                #expect(sim.groups.count <= 1, "\(context)")
                let bigSide = cut >= n ? 0 : (total - cut >= n ? 1 : nil)
                if let bigSide {
                    #expect(sim.started.count == n, "the side of \(n) or more starts; \(context)")
                    for i in sim.started.keys { #expect(o.partition![i] == bigSide, "\(context)") }
                } else {
                    #expect(sim.started.isEmpty, "\(context)")
                }
            }
        }
        // Two sides of N-1 each: nobody starts.
        var o = Self.options(.clean, n: n, seed: 9)
        o.partition = (0..<(2 * n - 2)).map { $0 % 2 }
        var sim = MembershipSimulation(ids: MembershipSimulation.randomIDs(2 * n - 2, seed: 9), options: o)
        sim.run()
        #expect(sim.started.isEmpty)
    }

    @Test("with only a minimum size, two sides each reaching it both start (the documented caveat)")
    func partitionMinSize() {
        let ids = MembershipSimulation.randomIDs(6, seed: 5)
        var o = MembershipSimulation.Options(policy: .atLeast(3, settleSeconds: 2), seed: 5)
        o.partition = [0, 0, 0, 1, 1, 1]
        var sim = MembershipSimulation(ids: ids, options: o)
        sim.run()
        Self.checkInvariants(sim, "min 3 of 6")
        #expect(sim.groups.count == 2 && sim.started.count == 6)

        o.policy = .atLeast(4, settleSeconds: 2)  // more than half of 6: no side can start
        sim = MembershipSimulation(ids: ids, options: o)
        sim.run()
        #expect(sim.started.isEmpty)

        o.partition = [0, 0, 0, 0, 1, 1]  // the side of 4 starts alone
        sim = MembershipSimulation(ids: ids, options: o)
        sim.run()
        Self.checkInvariants(sim, "min 4 of 6, 4|2")
        #expect(sim.groups.count == 1 && sim.started.count == 4)
    }

    @Test("a minimum-size group waits for the view to settle, then starts with everyone it sees")
    func settle() {
        let ids = MembershipSimulation.randomIDs(5, seed: 77)
        var o = MembershipSimulation.Options(policy: .atLeast(2, settleSeconds: 3), seed: 77)
        o.joinTimes = [0, 0.5, 1, 1.5, 2]
        var sim = MembershipSimulation(ids: ids, options: o)
        sim.run()
        Self.checkInvariants(sim, "settle")
        #expect(sim.groups.count == 1 && sim.started.count == 5, "all five: each join restarted the settle window")
    }

    @Test("the same node ids give the same ranks whatever the order of arrival")
    func orderIndependence() {
        let ids = MembershipSimulation.randomIDs(6, seed: 2024)
        var reference: MembershipGroup? = nil
        for seed in UInt64(1)...12 {
            var o = Self.options(seed % 2 == 0 ? .lateJoins : .slowDiscovery, n: 6, seed: seed)
            o.fifo = seed % 3 != 0
            var sim = MembershipSimulation(ids: ids, options: o)
            sim.run()
            Self.checkInvariants(sim, "seed \(seed)")
            guard let group = sim.groups.first else {
                Issue.record("nobody started with seed \(seed)")
                continue
            }
            if let reference {
                #expect(group.members == reference.members && group.ring == reference.ring, "seed \(seed)")
            }
            reference = group
        }
    }

    @Test("surplus nodes: with N+k present, exactly N start and agree; the rest stay idle", arguments: [2, 3, 4])
    func surplus(n: Int) {
        for k in 1..<n {  // fewer than N extra: no second full group can exist
            for seed in UInt64(1)...3 {
                var o = Self.options(seed == 1 ? .clean : .slowDiscovery, n: n, seed: seed)
                o.policy = .exactly(n)
                if seed == 3 {
                    o.lossRate = 0.1
                    o.duration = 60
                }
                var sim = MembershipSimulation(ids: MembershipSimulation.randomIDs(n + k, seed: seed * 7), options: o)
                sim.run()
                let context = "n=\(n) k=\(k) seed \(seed)"
                Self.checkInvariants(sim, context)
                #expect(sim.groups.count == 1 && sim.started.count == n, "\(context)")
            }
        }
    }

    @Test("competing coordinators with partial views: never two overlapping groups, all members agree")
    func competingCoordinators() {
        for seed in UInt64(1)...20 {
            let count = 5 + Int(seed % 4)  // 5...8 nodes
            var o = MembershipSimulation.Options(policy: .exactly(4), seed: seed)
            o.maxDiscoveryDelay = 4
            o.fifo = seed % 2 == 0
            o.lossRate = seed % 3 == 0 ? 0.1 : 0
            o.duration = 60
            var sim = MembershipSimulation(ids: MembershipSimulation.randomIDs(count, seed: seed), options: o)
            sim.run()
            let context = "\(count) nodes seed \(seed)"
            Self.checkInvariants(sim, context)
            #expect(sim.groups.count >= 1, "\(context)")
            if count < 8 { #expect(sim.groups.count == 1, "\(context)") }
            for g in sim.groups { #expect(g.worldSize == 4, "\(context)") }
        }
    }

    @Test("a coordinator that crashes after proposing is released from, and the others form a group")
    func coordinatorCrash() {
        for seed in UInt64(1)...5 {
            let ids = MembershipSimulation.randomIDs(5, seed: seed)
            let smallest = ids.firstIndex(of: ids.min()!)!
            var o = MembershipSimulation.Options(policy: .exactly(4), seed: seed)
            o.crashAfterFirstTick = [smallest]
            o.ttl = 2
            var sim = MembershipSimulation(ids: ids, options: o)
            sim.run()
            Self.checkInvariants(sim, "seed \(seed)")
            #expect(sim.groups.count == 1 && sim.started.count == 4, "seed \(seed)")
            #expect(sim.groups.first?.rank(of: ids[smallest]) == nil)
        }
    }

    @Test("the proposal carries the ring chosen from the members' RTT rows")
    func ringFromRTT() {
        let ids = MembershipSimulation.randomIDs(4, seed: 11)
        let rankOf = Dictionary(uniqueKeysWithValues: ids.sorted().enumerated().map { ($1, $0) })
        // Ranks 0 and 2 behind one access point, 1 and 3 behind another.
        func rtt(_ i: Int, _ j: Int) -> Double { rankOf[ids[i]]! % 2 == rankOf[ids[j]]! % 2 ? 0.001 : 0.02 }
        for seed in UInt64(1)...4 {
            var o = MembershipSimulation.Options(policy: .exactly(4, rttWaitSeconds: 3), seed: seed)
            o.rtt = rtt
            o.maxDiscoveryDelay = 1
            var sim = MembershipSimulation(ids: ids, options: o)
            sim.run()
            Self.checkInvariants(sim, "seed \(seed)")
            #expect(sim.groups.count == 1 && sim.started.count == 4)
            guard let ring = sim.groups.first?.ring else { continue }
            let crossings = ring.links.filter { $0.from % 2 != $0.to % 2 }.count
            #expect(crossings == 2, "ring \(ring)")
        }
    }

    @Test("a node with another size policy refuses, with a warning naming both; nobody starts")
    func policyMismatch() {
        let ids = [node(1), node(2), node(3)]
        var coordinator = MembershipAgreement(nodeID: ids[0], policy: .exactly(3))
        var member = MembershipAgreement(nodeID: ids[1], policy: .exactly(4))
        let proposals = coordinator.tick(view: ids, now: at(0))
        guard case .send(let propose, let to)? = proposals.first, to == ids[1] else {
            Issue.record("expected a proposal to node 2, got \(proposals)")
            return
        }
        let reply = member.handle(propose, from: ids[0], now: at(0.1))
        #expect(
            reply.contains {
                if case .warning(let w) = $0 { w.contains("world size 3") && w.contains("world size 4") } else { false }
            })
        guard case .send(let reject, _)? = reply.first else { return }
        let after = coordinator.handle(reject, from: ids[1], now: at(0.2))
        #expect(after.contains(.send(.abort(ProposalID(coordinator: ids[0], counter: 1)), to: ids[1])))
        #expect(coordinator.group == nil && member.group == nil)
    }

    @Test("a proposal whose size the policy does not admit is refused")
    func sizeChecked() {
        var member = MembershipAgreement(nodeID: node(4), policy: .exactly(3))
        let short = Proposal(
            id: ProposalID(coordinator: node(1), counter: 1), members: [node(1), node(4)], worldSize: 3, minSize: nil,
            ring: nil)
        let out = member.handle(.propose(short), from: node(1), now: at(0))
        #expect(out.first == .send(.reject(short.id, .invalidProposal), to: node(1)))
        #expect(member.description.hasPrefix("idle"))
        let notListed = Proposal(
            id: ProposalID(coordinator: node(1), counter: 2), members: [node(1), node(2), node(3)], worldSize: 3,
            minSize: nil, ring: nil)
        #expect(
            member.handle(.propose(notListed), from: node(1), now: at(0)) == [
                .send(.reject(notListed.id, .invalidProposal), to: node(1))
            ])
        #expect(
            member.handle(.propose(notListed), from: node(2), now: at(0)) == [
                .send(.reject(notListed.id, .invalidProposal), to: node(2))
            ], "sender is not the coordinator")
    }

    // MARK: The binding rule, step by step

    @Test(
        "a bound member parks a smaller coordinator's proposal and starts with the one it was bound to if that commits")
    func bindingSurvivesSmallerCoordinator() {
        let (a, b, c, m) = (node(1), node(2), node(3), node(4))
        var member = MembershipAgreement(nodeID: m, policy: .exactly(3))
        let pb = Proposal(
            id: ProposalID(coordinator: b, counter: 1), members: [b, c, m], worldSize: 3, minSize: nil, ring: nil)
        let pa = Proposal(
            id: ProposalID(coordinator: a, counter: 1), members: [a, b, m], worldSize: 3, minSize: nil, ring: nil)
        #expect(member.handle(.propose(pb), from: b, now: at(0)) == [.send(.accept(pb.id), to: b)])
        // A smaller coordinator: no accept yet, a withdraw to the one it is bound to.
        #expect(member.handle(.propose(pa), from: a, now: at(0.1)) == [.send(.withdraw(pb.id), to: b)])
        // A larger coordinator than the binding: refused.
        let pc = Proposal(
            id: ProposalID(coordinator: c, counter: 1), members: [c, m], worldSize: 3, minSize: nil, ring: nil)
        #expect(member.handle(.propose(pc), from: c, now: at(0.2)) != [])
        // b had already committed: the member starts with pb and refuses pa.
        let out = member.handle(.commit(pb), from: b, now: at(0.3))
        #expect(out == [.send(.reject(pa.id, .alreadyCommitted), to: a), .start(MembershipGroup(pb))])
        #expect(member.handle(.propose(pa), from: a, now: at(0.4)) == [.send(.reject(pa.id, .alreadyCommitted), to: a)])
    }

    @Test("after the abort of its binding, a member accepts the parked proposal")
    func abortReleases() {
        let (a, b, m) = (node(1), node(2), node(4))
        var member = MembershipAgreement(nodeID: m, policy: .exactly(3))
        let pb = Proposal(
            id: ProposalID(coordinator: b, counter: 1), members: [b, node(3), m], worldSize: 3, minSize: nil, ring: nil)
        let pa = Proposal(
            id: ProposalID(coordinator: a, counter: 1), members: [a, b, m], worldSize: 3, minSize: nil, ring: nil)
        _ = member.handle(.propose(pb), from: b, now: at(0))
        _ = member.handle(.propose(pa), from: a, now: at(0.1))
        #expect(member.handle(.abort(pb.id), from: b, now: at(0.2)) == [.send(.accept(pa.id), to: a)])
        #expect(
            member.handle(.commit(pb), from: b, now: at(0.3)).allSatisfy {
                if case .warning = $0 { true } else { false }
            })
        #expect(member.handle(.commit(pa), from: a, now: at(0.4)) == [.start(MembershipGroup(pa))])
    }

    @Test("a coordinator answers a withdraw with abort before committing, with commit after")
    func coordinatorWithdraw() {
        let (a, b, c) = (node(1), node(2), node(3))
        var coordinator = MembershipAgreement(nodeID: a, policy: .exactly(3))
        let out = coordinator.tick(view: [a, b, c], now: at(0))
        #expect(out.count == 2)
        let id = ProposalID(coordinator: a, counter: 1)
        #expect(coordinator.handle(.accept(id), from: b, now: at(0.1)) == [])
        #expect(
            coordinator.handle(.withdraw(id), from: c, now: at(0.2)) == [
                .send(.abort(id), to: b), .send(.abort(id), to: c),
            ])
        #expect(coordinator.handle(.accept(id), from: c, now: at(0.3)) == [.send(.abort(id), to: c)], "a dead proposal")
        // Retry after the back-off: a new proposal, committed once both accept; a late withdraw gets the commit.
        #expect(coordinator.tick(view: [a, b, c], now: at(0.3)) == [])
        let retry = coordinator.tick(view: [a, b, c], now: at(0.8))
        let id2 = ProposalID(coordinator: a, counter: 2)
        #expect(retry.count == 2)
        _ = coordinator.handle(.accept(id2), from: b, now: at(0.9))
        let commit = coordinator.handle(.accept(id2), from: c, now: at(1.0))
        #expect(commit.count == 3 && coordinator.group?.proposalID == id2)
        guard case .send(.commit(let p), _) = commit[0] else { return }
        #expect(coordinator.handle(.withdraw(id2), from: c, now: at(1.1)) == [.send(.commit(p), to: c)])
        #expect(coordinator.handle(.accept(id2), from: b, now: at(1.2)) == [.send(.commit(p), to: b)])
    }
}

// A deterministic in-test network for MembershipAgreement: nodes tick every 50 ms of simulated time,
// messages cross the wire format (encode → decode) and arrive after a random delay, in random order
// across links (optionally also within a link), and may be lost or duplicated. Views model discovery:
// node i sees node j from j's join time plus a per-pair discovery delay, only within i's partition, and
// for a TTL after j crashes. Everything is drawn from one seeded generator, so a failing run replays.

import ConcordDiscovery
import ConcordTestSupport

struct MembershipSimulation {
    struct Options {
        var policy: MembershipPolicy
        var seed: UInt64 = 1
        var lossRate = 0.0
        var duplicateRate = 0.0
        /// Keep each link's messages in order (TCP); false reorders them too.
        var fifo = true
        /// Largest message delay in seconds.
        var maxDelay = 0.2
        /// Seconds after which each node joins (default: all at 0).
        var joinTimes: [Double]? = nil
        /// Largest per-pair discovery delay in seconds.
        var maxDiscoveryDelay = 0.0
        /// Partition label of each node: nodes see and reach only nodes with the same label.
        var partition: [Int]? = nil
        /// Nodes that crash right after their first tick (they send, then never act again).
        var crashAfterFirstTick: Set<Int> = []
        /// Seconds a crashed node stays in others' views (the peer TTL).
        var ttl = 3.0
        /// Round-trip times recorded by each node before its first tick (by index), if any.
        var rtt: ((Int, Int) -> Double)? = nil
        /// Simulated seconds to run.
        var duration = 30.0
    }

    struct Flight {
        var deliverAt: Double
        var order: UInt64
        var from: Int
        var to: Int
        var bytes: [UInt8]
    }

    let options: Options
    let ids: [NodeID]
    var nodes: [MembershipAgreement]
    var started: [Int: MembershipGroup] = [:]
    var startCount: [Int: Int] = [:]
    var warnings: [String] = []
    var messagesSent = 0
    private var rng: SplitMix64
    private var inFlight: [Flight] = []
    private var lastDelivery: [Int: Double] = [:]
    private var discoveryDelay: [[Double]]
    private var crashedAt: [Int: Double] = [:]
    private var ticked: Set<Int> = []
    private var now = 0.0
    private var order: UInt64 = 0

    init(ids: [NodeID], options: Options) {
        self.ids = ids
        self.options = options
        rng = SplitMix64(seed: options.seed)
        nodes = ids.map { MembershipAgreement(nodeID: $0, policy: options.policy) }
        var g = SplitMix64(seed: options.seed ^ 0xD15C)
        discoveryDelay = ids.map { _ in ids.map { _ in Double(g.next() % 1000) / 1000 * options.maxDiscoveryDelay } }
    }

    /// `count` node ids drawn from `seed`.
    static func randomIDs(_ count: Int, seed: UInt64) -> [NodeID] {
        var g = SplitMix64(seed: seed)
        return (0..<count).map { _ in NodeID.random(using: &g) }
    }

    private func joined(_ i: Int) -> Bool { now >= (options.joinTimes?[i] ?? 0) }
    private func samePartition(_ i: Int, _ j: Int) -> Bool {
        guard let p = options.partition else { return true }
        return p[i] == p[j]
    }
    private func alive(_ i: Int) -> Bool { crashedAt[i] == nil }

    private func view(of i: Int) -> [NodeID] {
        (0..<ids.count).filter { j in
            guard joined(j), samePartition(i, j) else { return false }
            if let crash = crashedAt[j], now >= crash + options.ttl { return false }
            return j == i || now >= (options.joinTimes?[j] ?? 0) + discoveryDelay[i][j]
        }.map { ids[$0] }
    }

    private var random01: Double { mutating get { Double(rng.next() % 1_000_000) / 1_000_000 } }

    private mutating func perform(_ actions: [MembershipAgreement.Outgoing], by i: Int) {
        for action in actions {
            switch action {
            case .start(let group):
                started[i] = group
                startCount[i, default: 0] += 1
            case .warning(let text):
                warnings.append("node \(i): \(text)")
            case .send(let message, let to):
                messagesSent += 1
                guard let j = ids.firstIndex(of: to), samePartition(i, j) else { continue }
                if random01 < options.lossRate { continue }
                let copies = random01 < options.duplicateRate ? 2 : 1
                for _ in 0..<copies {
                    var at = now + random01 * options.maxDelay
                    if options.fifo {
                        let link = i * ids.count + j
                        at = max(at, lastDelivery[link] ?? 0)
                        lastDelivery[link] = at
                    }
                    order += 1
                    inFlight.append(Flight(deliverAt: at, order: order, from: i, to: j, bytes: message.encode()))
                }
            }
        }
    }

    /// Runs for `options.duration` simulated seconds.
    mutating func run() {
        let step = 0.05
        while now <= options.duration {
            // Ticks, in a random order of nodes.
            var tickOrder = Array(0..<ids.count)
            tickOrder.shuffle(using: &rng)
            for i in tickOrder where joined(i) && alive(i) {
                if !ticked.contains(i), let rtt = options.rtt {
                    var row: [NodeID: Double] = [:]
                    for j in 0..<ids.count where j != i { row[ids[j]] = rtt(i, j) }
                    nodes[i].recordRTT(row)
                }
                let actions = nodes[i].tick(view: view(of: i), now: at(now))
                perform(actions, by: i)
                if !ticked.contains(i) && options.crashAfterFirstTick.contains(i) { crashedAt[i] = now }
                ticked.insert(i)
            }
            // Deliveries due by the end of this step, in delivery-time order.
            let due = inFlight.filter { $0.deliverAt <= now + step }.sorted {
                ($0.deliverAt, $0.order) < ($1.deliverAt, $1.order)
            }
            inFlight.removeAll { $0.deliverAt <= now + step }
            for f in due where joined(f.to) && alive(f.to) {
                guard let message = try? MembershipMessage.decode(f.bytes) else {
                    warnings.append("undecodable message")
                    continue
                }
                perform(nodes[f.to].handle(message, from: ids[f.from], now: at(now)), by: f.to)
            }
            now += step
        }
    }

    /// The distinct groups that nodes started with.
    var groups: [MembershipGroup] {
        var seen: [MembershipGroup] = []
        for g in started.values where !seen.contains(g) { seen.append(g) }
        return seen
    }
}

import Testing

@testable import ConcordDiscovery

@Suite("Peer table")
struct PeerTableTests {
    @Test("own beacons are ignored; others join, refresh, update and leave")
    func observations() {
        var table = PeerTable(selfID: node(1), ttl: 3)
        #expect(table.observe(sampleBeacon(id: node(1)), from: "10.0.0.1", at: at(0)) == .ownBeacon)
        #expect(table.members(now: at(0)).isEmpty && table.lastChange == nil)

        #expect(table.observe(sampleBeacon(id: node(5), sequence: 1), from: "10.0.0.5", at: at(1)) == .joined)
        #expect(table.lastChange == at(1))
        #expect(table.observe(sampleBeacon(id: node(5), sequence: 2), from: "10.0.0.5", at: at(2)) == .refreshed)
        #expect(table.lastChange == at(1), "a refresh is not a change")
        #expect(table.observe(sampleBeacon(id: node(5), sequence: 2), from: "10.0.0.5", at: at(2.1)) == .stale)
        #expect(table.observe(sampleBeacon(id: node(5), sequence: 1), from: "10.0.0.5", at: at(2.2)) == .stale)
        #expect(table[node(5)]?.lastSeen == at(2), "stale beacons do not refresh")
        #expect(
            table.observe(sampleBeacon(id: node(5), sequence: 3, host: "10.0.0.55"), from: "10.0.0.5", at: at(2.5))
                == .updated)
        #expect(table.lastChange == at(2.5))
        #expect(
            table.observe(
                sampleBeacon(id: node(5), sequence: 4, host: "10.0.0.55", flags: [.committed]), from: "x",
                at: at(2.6)) == .updated)
        #expect(table[node(5)]?.firstSeen == at(1))
        #expect(
            table.observe(sampleBeacon(id: node(5), sequence: 5, flags: [.leaving]), from: "10.0.0.5", at: at(2.7))
                == .left)
        #expect(table.members(now: at(2.7)).isEmpty && table.lastChange == at(2.7))
    }

    @Test("nodes silent for the TTL expire; members are sorted by node id")
    func expiry() {
        var table = PeerTable(selfID: node(1), ttl: 3)
        for (i, n) in [9, 4, 6].enumerated() {
            table.observe(sampleBeacon(id: node(UInt64(n))), from: "10.0.0.\(n)", at: at(Double(i)))
        }
        #expect(table.nodeIDs(now: at(2)) == [node(4), node(6), node(9)])
        #expect(table.nodeIDs(now: at(3.5)) == [node(4), node(6)], "node 9 heard at 0 is past its TTL at 3.5")
        #expect(table.lastChange == at(2))
        #expect(table.expire(now: at(3.5)) == [node(9)])
        #expect(table.lastChange == at(3.5))
        #expect(table.expire(now: at(3.6)) == [])
        #expect(table.lastChange == at(3.5))
        #expect(table.expire(now: at(10)) == [node(4), node(6)])
        #expect(table.members(now: at(10)).isEmpty)
    }

    @Test("the endpoint is the beacon's host, or the datagram's source when the beacon names none")
    func endpoint() {
        var table = PeerTable(selfID: node(1), ttl: 3)
        table.observe(sampleBeacon(id: node(2), host: ""), from: "192.168.0.7", at: at(0))
        table.observe(sampleBeacon(id: node(3), host: "laptop.local"), from: "192.168.0.8", at: at(0))
        #expect(table[node(2)]?.host == "192.168.0.7" && table[node(2)]?.port == 29_500)
        #expect(table[node(3)]?.host == "laptop.local")
    }

    @Test("settled means no change for the window")
    func settle() {
        var table = PeerTable(selfID: node(1), ttl: 10)
        #expect(table.isSettled(now: at(0), window: 2))
        table.observe(sampleBeacon(id: node(2)), from: "a", at: at(1))
        #expect(!table.isSettled(now: at(2.9), window: 2))
        #expect(table.isSettled(now: at(3), window: 2))
        table.observe(sampleBeacon(id: node(2), sequence: 2), from: "a", at: at(3.5))
        #expect(table.isSettled(now: at(3.5), window: 2), "a refresh does not unsettle")
    }
}

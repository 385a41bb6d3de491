import Concord
import ConcordUV
import Testing

@Suite("Environment contract")
struct ConfigurationTests {
    @Test("CONCORD_* variables come first")
    func concordFirst() throws {
        let c = try Configuration(environment: [
            "CONCORD_RANK": "2", "CONCORD_WORLD_SIZE": "4", "CONCORD_LOCAL_RANK": "0",
            "CONCORD_MASTER_ADDR": "10.1.2.3", "CONCORD_MASTER_PORT": "4000", "RANK": "9", "WORLD_SIZE": "10",
            "CONCORD_TIMEOUT": "5", "CONCORD_PEER_TIMEOUT": "2.5",
        ])
        #expect(c.rank == 2 && c.worldSize == 4 && c.localRank == 0)
        #expect(c.masterAddress == "10.1.2.3" && c.masterPort == 4000)
        #expect(c.joinTimeout == 5 && c.peerTimeout == 2.5)
    }

    @Test("torchrun, SLURM and Open MPI variables are fallbacks, in that order")
    func fallbacks() throws {
        let torch = try Configuration(environment: [
            "RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "123",
            "SLURM_PROCID": "0", "SLURM_NTASKS": "8",
        ])
        #expect(
            torch.rank == 1 && torch.worldSize == 3 && torch.masterAddress == "h" && torch.masterPort == 123
                && torch.source == "torchrun")
        let slurm = try Configuration(environment: [
            "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "OMPI_COMM_WORLD_RANK": "0",
            "OMPI_COMM_WORLD_SIZE": "2",
        ])
        #expect(slurm.rank == 5 && slurm.worldSize == 8 && slurm.localRank == 1 && slurm.source == "SLURM")
        #expect(slurm.masterAddress == "127.0.0.1" && slurm.masterPort == Configuration.defaultMasterPort)
        let mpi = try Configuration(environment: [
            "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        ])
        #expect(mpi.rank == 3 && mpi.worldSize == 4 && mpi.localRank == 1 && mpi.source == "Open MPI")
        let alone = try Configuration(environment: [:])
        #expect(alone.rank == 0 && alone.worldSize == 1)
    }

    @Test("the transport, spin, socket buffer, zero-copy and node knobs: defaults and values")
    func knobs() throws {
        let defaults = try Configuration(environment: [:])
        #expect(defaults.linkMedium == .auto && defaults.spinMicroseconds == 50 && defaults.node == nil)
        #expect(defaults.receiveBufferBytes == nil)
        #expect(defaults.zeroCopySends)
        #expect(try !Configuration(environment: ["CONCORD_ZEROCOPY": "0"]).zeroCopySends)
        let set = try Configuration(environment: [
            "CONCORD_TRANSPORT": "SHM", "CONCORD_SPIN_US": "0", "CONCORD_NODE": "rack1-box3",
            "CONCORD_SOCKET_BUFFER": "0",
        ])
        #expect(set.linkMedium == .shm && set.spinMicroseconds == 0 && set.node == "rack1-box3")
        #expect(set.receiveBufferBytes == 0)
        let fixed = try Configuration(environment: ["CONCORD_SOCKET_BUFFER": "1048576"])
        #expect(fixed.receiveBufferBytes == 1 << 20)
        #expect(defaults.sameMachineCongestionControl == nil)
        #expect(
            try Configuration(environment: ["CONCORD_LOCAL_CONGESTION": "system"]).sameMachineCongestionControl == "")
        #expect(
            try Configuration(environment: ["CONCORD_LOCAL_CONGESTION": "reno"]).sameMachineCongestionControl == "reno")
    }

    @Test("loopback and this machine's interface addresses are this machine; others are not")
    func thisMachine() {
        #expect(LinkTuning.isThisMachine("127.0.0.1") && LinkTuning.isThisMachine("127.3.4.5"))
        #expect(LinkTuning.isThisMachine("::1") && LinkTuning.isThisMachine("::ffff:127.0.0.1"))
        #expect(!LinkTuning.isThisMachine("192.0.2.7"))  // TEST-NET-1: never assigned to a machine
        #expect(!LinkTuning.isThisMachine("2001:db8::7"))  // documentation range
        #expect(LinkTuning.availableCongestionControls.contains("reno"))
    }

    @Test("the default receive buffer is 4 MiB only where net.core.rmem_max allows it")
    func defaultReceiveBuffer() throws {
        let text = try String(contentsOfFile: "/proc/sys/net/core/rmem_max", encoding: .utf8)
        let most = try #require(Int(text.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(UVTransport.defaultReceiveBufferBytes == (most >= 4 << 20 ? 4 << 20 : 0))
    }

    @Test("malformed values are refused with the variable named")
    func malformed() {
        let cases: [([String: String], String)] = [
            (["CONCORD_RANK": "x", "CONCORD_WORLD_SIZE": "2"], "CONCORD_RANK"),
            (["CONCORD_RANK": "2", "CONCORD_WORLD_SIZE": "2"], "outside 0..<2"),
            (["CONCORD_RANK": "0"], "CONCORD_WORLD_SIZE is missing"),
            (["RANK": "0", "WORLD_SIZE": "0"], "at least 1"),
            (["CONCORD_RANK": "0", "CONCORD_WORLD_SIZE": "2", "CONCORD_MASTER_PORT": "70000"], "CONCORD_MASTER_PORT"),
            (["CONCORD_RANK": "0", "CONCORD_WORLD_SIZE": "2", "CONCORD_TIMEOUT": "-1"], "CONCORD_TIMEOUT"),
            (["CONCORD_TRANSPORT": "rdma"], "CONCORD_TRANSPORT=rdma is not one of tcp, shm, auto"),
            (["CONCORD_SPIN_US": "-5"], "CONCORD_SPIN_US"),
            (["CONCORD_SPIN_US": "fast"], "CONCORD_SPIN_US"),
            (["CONCORD_SOCKET_BUFFER": "-1"], "CONCORD_SOCKET_BUFFER"),
            (["CONCORD_ZEROCOPY": "2"], "CONCORD_ZEROCOPY=2 must be 0 or 1"),
            (["CONCORD_SOCKET_BUFFER": "4M"], "CONCORD_SOCKET_BUFFER"),
            (["CONCORD_LOCAL_CONGESTION": "warp"], "CONCORD_LOCAL_CONGESTION=warp is not a congestion control"),
        ]
        for (environment, expected) in cases {
            do {
                _ = try Configuration(environment: environment)
                Issue.record("accepted \(environment)")
            } catch {
                #expect("\(error)".contains(expected), "\(error) should mention \(expected)")
            }
        }
    }
}

// The raw TCP ring: the physical limit of a ring on this machine.
//
// Every rank streams bytes to its right neighbour over a plain blocking TCP socket (1 MiB writes, on a
// thread of its own) while reading from its left one (64 KiB reads, which stay in L2), with no framing,
// no reduction and no event loop. Its per-link rate is directly comparable with all-reduce busbw, which
// counts the same thing: bytes carried by each ring link per second.
//
// `concord-bench rawring` runs it alone; `concord-bench allreduce --raw-ring` interleaves it with
// all-reduce at every size, so both are measured under the same load in one invocation.
import ArgumentParser
import Concord
import Foundation

struct RawRingBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rawring",
        abstract: "Raw TCP ring: each rank streams to its right neighbour (1 MiB writes); GB/s per link.")

    @OptionGroup var sweep: SweepOptions

    func run() throws {
        let comm = joinOrExit()
        guard comm.worldSize > 1 else { fail("the raw ring needs at least 2 ranks") }
        let ring: RawRing
        do { ring = try RawRing(comm: comm) } catch { fail(error) }
        if comm.rank == 0 {
            emit(
                "# concord-bench rawring: \(comm.worldSize) ranks, bytes per link per iteration, \(sweep.iterations) iterations"
            )
            emit("#        bytes      time (us)   link GB/s")
        }
        for bytes in sweep.sizes where bytes > 0 {
            do {
                let rate = try ring.measure(linkBytes: bytes, iterations: sweep.iterations, warmup: sweep.warmup)
                if comm.rank == 0 {
                    emit(String(format: " %12d %14.1f %11.2f", bytes, Double(bytes) / rate / 1e3, rate))
                }
            } catch {
                fail(error)
            }
        }
        ring.close()
        comm.shutdownBlocking()
    }
}

struct RawRingError: Error, CustomStringConvertible {
    let description: String
}

/// Plain sockets to the ring neighbours, set up through the communicator.
final class RawRing: @unchecked Sendable {
    let comm: Communicator
    private var sendFD: Int32 = -1
    private var receiveFD: Int32 = -1
    private let writeChunk = 1 << 20
    private let readChunk = 64 << 10
    private let sendBuffer: UnsafeMutableRawPointer
    private let receiveBuffer: UnsafeMutableRawPointer

    /// Listens on loopback, learns the neighbours' ports with one all-reduce, connects right, accepts left.
    init(comm: Communicator) throws {
        self.comm = comm
        sendBuffer = .allocate(byteCount: writeChunk, alignment: 64)
        sendBuffer.initializeMemory(as: UInt8.self, repeating: 7, count: writeChunk)
        receiveBuffer = .allocate(byteCount: readChunk, alignment: 64)
        let listenFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listenFD >= 0 else { throw RawRingError(description: "socket: \(String(cString: strerror(errno)))") }
        defer { Glibc.close(listenFD) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listenFD, $0, length) == 0 && listen(listenFD, 4) == 0 && getsockname(listenFD, $0, &length) == 0
            }
        }
        guard bound else { throw RawRingError(description: "bind: \(String(cString: strerror(errno)))") }
        var ports = [Float](repeating: 0, count: comm.worldSize)
        ports[comm.rank] = Float(UInt16(bigEndian: address.sin_port))
        try comm.allReduceBlocking(&ports)
        let rightPort = UInt16(ports[(comm.rank + 1) % comm.worldSize])

        sendFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var right = sockaddr_in()
        right.sin_family = sa_family_t(AF_INET)
        right.sin_addr.s_addr = inet_addr("127.0.0.1")
        right.sin_port = rightPort.bigEndian
        let connected = withUnsafePointer(to: &right) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(sendFD, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else { throw RawRingError(description: "connect: \(String(cString: strerror(errno)))") }
        receiveFD = accept(listenFD, nil, nil)
        guard receiveFD >= 0 else { throw RawRingError(description: "accept: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(sendFD, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        try comm.barrierBlocking()
    }

    /// Streams `linkBytes` around the ring `iterations` times; returns the slowest rank's GB/s per link.
    func measure(linkBytes: Int, iterations: Int, warmup: Int) throws -> Double {
        for _ in 0..<warmup { try stream(linkBytes) }
        try comm.barrierBlocking()
        let start = now()
        for _ in 0..<iterations { try stream(linkBytes) }
        let seconds = try comm.maxOverRanks((now() - start) / Double(iterations))
        return Double(linkBytes) / seconds / 1e9
    }

    private func stream(_ bytes: Int) throws {
        let fd = sendFD
        let chunk = writeChunk
        nonisolated(unsafe) let source = UnsafeRawPointer(sendBuffer)
        let done = DispatchSemaphore(value: 0)
        let senderThread = Thread {
            var left = bytes
            while left > 0 {
                let n = Glibc.write(fd, source, min(left, chunk))
                if n <= 0 {
                    if errno == EINTR { continue }
                    break
                }
                left -= n
            }
            done.signal()
        }
        senderThread.start()
        var left = bytes
        while left > 0 {
            let n = Glibc.read(receiveFD, receiveBuffer, min(left, readChunk))
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                done.wait()
                throw RawRingError(
                    description: "raw ring read failed: \(n == 0 ? "end of stream" : String(cString: strerror(errno)))")
            }
            left -= n
        }
        done.wait()
    }

    func close() {
        Glibc.close(sendFD)
        Glibc.close(receiveFD)
    }
}

// The raw TCP ring: the physical limit of a ring on this machine.
//
// Every rank streams bytes to its right neighbour over a plain blocking TCP socket (1 MiB writes, on a
// thread of its own) while reading from its left one (64 KiB reads, which stay in L2), with no framing,
// no reduction and no event loop. Its per-link rate is directly comparable with all-reduce busbw, which
// counts the same thing: bytes carried by each ring link per second.
//
// `concord-bench rawring` runs it alone; `concord-bench allreduce --raw-ring` interleaves it with
// all-reduce at every size, so both are measured under the same load in one invocation.
//
// Its sockets get the congestion control Concord's links get (reno between ranks on one machine, see
// Sources/ConcordUV/LinkTuning.swift), so that the limit is measured under the same rules.
//
// The raw ring's buffers stay in cache, which a real collective's cannot: `--raw-ring-cold` adds a
// second raw ring that writes from and reads into buffers as large as the tensor (1 MiB reads), the
// limit for any transport that has to move the tensor's own bytes.
import ArgumentParser
import Concord
import ConcordUV
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
    private let readChunk: Int
    /// Bytes the buffers span: the write and read positions cycle through them.
    private let span: Int
    private let sendBuffer: UnsafeMutableRawPointer
    private let receiveBuffer: UnsafeMutableRawPointer
    private let sender: RawSender

    /// Listens on every interface, learns the neighbours' addresses and ports with one all-reduce, connects
    /// right, accepts left.
    /// - Parameter span: nil for cache-resident buffers (1 MiB to send from, 64 KiB to read into); else the
    ///   size of both buffers, read 1 MiB at a time.
    init(comm: Communicator, span: Int? = nil) throws {
        self.comm = comm
        self.span = span.map { max($0, 1 << 20) } ?? 1 << 20
        readChunk = span == nil ? 64 << 10 : 1 << 20
        sendBuffer = .allocate(byteCount: self.span, alignment: 64)
        sendBuffer.initializeMemory(as: UInt8.self, repeating: 7, count: self.span)
        let receiveBytes = span == nil ? readChunk : self.span
        receiveBuffer = .allocate(byteCount: receiveBytes, alignment: 64)
        receiveBuffer.initializeMemory(as: UInt8.self, repeating: 0, count: receiveBytes)
        sender = RawSender()
        let listenFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listenFD >= 0 else { throw RawRingError(description: "socket: \(String(cString: strerror(errno)))") }
        defer { Glibc.close(listenFD) }
        // The congestion control Concord's own links get (set before listening and connecting, as there).
        let congestion =
            comm.configuration.sameMachineCongestionControl ?? LinkTuning.defaultSameMachineCongestionControl
        LinkTuning.setCongestionControl(congestion, on: listenFD)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = INADDR_ANY
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listenFD, $0, length) == 0 && listen(listenFD, 4) == 0 && getsockname(listenFD, $0, &length) == 0
            }
        }
        guard bound else { throw RawRingError(description: "bind: \(String(cString: strerror(errno)))") }
        // Every rank's IPv4 address (4 octets) and port, as floats (exact below 2^24), summed over ranks.
        var table = [Float](repeating: 0, count: 5 * comm.worldSize)
        let own = Self.ownAddress(comm.configuration)
        withUnsafeBytes(of: own.s_addr) { octets in
            for i in 0..<4 { table[5 * comm.rank + i] = Float(octets[i]) }
        }
        table[5 * comm.rank + 4] = Float(UInt16(bigEndian: address.sin_port))
        try comm.allReduceBlocking(&table)
        let r = 5 * ((comm.rank + 1) % comm.worldSize)
        let l = 5 * ((comm.rank + comm.worldSize - 1) % comm.worldSize)
        func host(_ at: Int) -> String { (0..<4).map { String(Int(table[at + $0])) }.joined(separator: ".") }

        sendFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if LinkTuning.isThisMachine(host(r)) { LinkTuning.setCongestionControl(congestion, on: sendFD) }
        var right = sockaddr_in()
        right.sin_family = sa_family_t(AF_INET)
        withUnsafeMutableBytes(of: &right.sin_addr.s_addr) { octets in
            for i in 0..<4 { octets[i] = UInt8(table[r + i]) }
        }
        right.sin_port = UInt16(table[r + 4]).bigEndian
        let connected = withUnsafePointer(to: &right) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(sendFD, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else { throw RawRingError(description: "connect: \(String(cString: strerror(errno)))") }
        receiveFD = accept(listenFD, nil, nil)
        guard receiveFD >= 0 else { throw RawRingError(description: "accept: \(String(cString: strerror(errno)))") }
        if !LinkTuning.isThisMachine(host(l)), let system = LinkTuning.systemCongestionControl {
            LinkTuning.setCongestionControl(system, on: receiveFD)
        }
        var one: Int32 = 1
        setsockopt(sendFD, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))

        sender.fd = sendFD
        try comm.barrierBlocking()
    }

    /// The IPv4 address the other ranks reach this one at: the advertised host (`CONCORD_HOST`) when it
    /// is one, else this machine's address on the route to the master, else loopback.
    static func ownAddress(_ configuration: Configuration) -> in_addr {
        var result = in_addr(s_addr: inet_addr("127.0.0.1"))
        if let host = configuration.advertisedHost, inet_pton(AF_INET, host, &result) == 1 { return result }
        var master = in_addr()
        guard inet_pton(AF_INET, configuration.masterAddress, &master) == 1 else { return result }
        let probe = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard probe >= 0 else { return result }
        defer { Glibc.close(probe) }
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_addr = master
        target.sin_port = UInt16(clamping: configuration.masterPort).bigEndian
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let found = withUnsafePointer(to: &target) { to in
            withUnsafeMutablePointer(to: &local) { from in
                to.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, length) == 0 }
                    && from.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(probe, $0, &length) == 0 }
            }
        }
        return found ? local.sin_addr : result
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

    /// Sends `bytes` right while receiving as many from the left. Up to 64 KiB (which fits the socket
    /// buffers) on this thread, write then read; above, the sender thread writes while this one reads.
    private func stream(_ bytes: Int) throws {
        let small = bytes <= 64 << 10
        if small {
            sender.write(UnsafeRawPointer(sendBuffer), bytes: bytes, chunk: writeChunk, span: span)
        } else {
            sender.start(UnsafeRawPointer(sendBuffer), bytes: bytes, chunk: writeChunk, span: span)
        }
        var done = 0
        while done < bytes {
            let at = span == writeChunk ? 0 : done % (span - readChunk + 1)
            let n = Glibc.read(receiveFD, receiveBuffer + at, min(bytes - done, readChunk))
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                if !small { sender.finish() }
                throw RawRingError(
                    description: "raw ring read failed: \(n == 0 ? "end of stream" : String(cString: strerror(errno)))")
            }
            done += n
        }
        if !small { sender.finish() }
    }

    func close() {
        sender.stop()
        Glibc.close(sendFD)
        Glibc.close(receiveFD)
    }
}

/// A thread that writes a requested number of bytes to a socket, so sending and receiving overlap.
final class RawSender: @unchecked Sendable {
    var fd: Int32 = -1
    private let request = DispatchSemaphore(value: 0)
    private let completed = DispatchSemaphore(value: 0)
    private var job: (source: UnsafeRawPointer, bytes: Int, chunk: Int, span: Int)?
    private var thread: Thread?

    /// Writes `bytes` in `chunk`-sized writes from positions cycling through `span` bytes of `source`.
    func write(_ source: UnsafeRawPointer, bytes: Int, chunk: Int, span: Int) {
        var done = 0
        while done < bytes {
            let n = Glibc.write(fd, source + done % span, min(bytes - done, chunk, span - done % span))
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                return
            }
            done += n
        }
    }

    func start(_ source: UnsafeRawPointer, bytes: Int, chunk: Int, span: Int) {
        if thread == nil {
            // The thread keeps the sender alive until `stop` lets it return.
            let thread = Thread {
                while true {
                    self.request.wait()
                    guard let job = self.job else { return }
                    self.write(job.source, bytes: job.bytes, chunk: job.chunk, span: job.span)
                    self.completed.signal()
                }
            }
            thread.start()
            self.thread = thread
        }
        job = (source, bytes, chunk, span)
        request.signal()
    }

    func finish() { completed.wait() }

    func stop() {
        guard thread != nil else { return }
        job = nil
        request.signal()
        thread = nil
    }
}

// PeersCommand.swift — `concord peers`: which Concord nodes announce themselves on this network?
//
//   listen --seconds S ──▶ snapshot of the beacons heard ──▶ TCP connect to every advertised port ──▶ table
//   (BeaconService, observer: sends nothing)                  (all at once, 1 s limit: the RTT column)
//
// The command joins the beacon group on every IPv4 interface that is up, so it hears nodes whichever
// interface they announce from, and sends nothing itself. Without --job it lists every job heard:
// untagged (insecure) beacons verify as such, tagged ones only with the secret given (from --secret-file,
// CONCORD_SECRET or CONCORD_SECRET_FILE), and the others are counted. With --job only that job's nodes are
// listed, under the job's own rule: a secret given means only beacons tagged with it verify; none means
// only insecure ones do. Every dropped kind is counted in a `#` line (bad MAC, secret vs none, other
// job), never silently. The secret itself is never printed, only where it came from.
//
// RTT is the time a TCP connect to the advertised host:port takes (a SYN and its SYN-ACK: one round trip
// plus the accept queue), measured for all nodes in parallel with nonblocking sockets and poll(2); a node
// that does not answer within 1 s shows "-". The exit status is 0 whenever the command could listen,
// including when nobody was heard (a `#` line says so); 64 for a bad command line, 1 when the beacon
// port cannot be bound or the group joined.

import ArgumentParser
import Concord
import ConcordDiscovery
import Glibc

struct PeersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peers",
        abstract: "List the Concord nodes that announce themselves on this network.",
        discussion: """
            Listens for the beacons Concord nodes send to their multicast group (and broadcast address), on \
            every IPv4 interface that is up, for --seconds; then times a TCP connect to each node's \
            advertised port and prints one line per node: job id, node id, address, cores, memory, os/arch, \
            measured reduce throughput, label and round-trip time (ms; "-" when the connect fails within 1 s). \
            Nothing is sent.

            Without --job every job heard is listed: insecure beacons verify as they are, beacons tagged \
            with a job secret only with the secret given. With --job only that job is listed, and its rule \
            applies: with a secret only beacons tagged with it verify; without one only insecure beacons do. \
            Lines starting with # count what was dropped and why (bad MAC: another secret). The secret comes \
            from --secret-file, else CONCORD_SECRET or CONCORD_SECRET_FILE; --insecure uses none. It is \
            never printed.

            The group and port default to CONCORD_DISCOVERY_GROUP and CONCORD_DISCOVERY_PORT, else \
            \(BeaconService.Channel.defaultGroup) and \(BeaconService.Channel.defaultPort).

            EXIT STATUS
              0   listened (also when nobody was heard)
              1   the beacon port or group could not be used
              64  invalid command line
            """)

    @Option(
        help: ArgumentHelp(
            "List only the nodes of the job called NAME, verified with its secret (or insecure).", valueName: "name"))
    var job: String?

    @Option(help: ArgumentHelp("How long to listen for beacons.", valueName: "seconds"))
    var seconds: Double = 2

    @Option(help: ArgumentHelp("The file that holds the job secret.", valueName: "file"))
    var secretFile: String?

    @Flag(help: "Use no job secret, even if CONCORD_SECRET or CONCORD_SECRET_FILE is set.")
    var insecure = false

    @Option(help: ArgumentHelp("The beacons' multicast group.", valueName: "address"))
    var group: String?

    @Option(help: ArgumentHelp("The beacons' UDP port.", valueName: "port"))
    var port: Int?

    /// How long a TCP connect may take before the RTT column says "-".
    static let connectTimeoutSeconds = 1.0

    func validate() throws {
        guard seconds.isFinite, seconds > 0, seconds <= 3600 else {
            throw ValidationError("--seconds must be more than 0 and at most 3600 (got \(seconds))")
        }
        if secretFile != nil && insecure {
            throw ValidationError("--secret-file and --insecure contradict each other; give one")
        }
        if let job, job.isEmpty { throw ValidationError("--job must not be empty") }
        _ = try channelGroup()
        _ = try channelPort()
    }

    func run() throws {
        let given = try jobSecret()
        let secret = given?.secret
        let group = try channelGroup()
        let port = try channelPort()
        let interfaces: [String]
        do {
            interfaces = try BeaconService.Channel.localIPv4Interfaces()
        } catch {
            Self.fail("cannot list the network interfaces: \(error)")
        }
        var channel = BeaconService.Channel(
            group: group, port: port, interfaceAddress: interfaces.first ?? "127.0.0.1")
        channel.listenInterfaces = interfaces.isEmpty ? ["127.0.0.1"] : interfaces
        channel.broadcastAddress = nil  // an observer sends nothing
        let audience: BeaconService.Audience =
            job.map { .job(JobCredentials(jobName: $0, authentication: secret.map { .secret($0) } ?? .insecure)) }
            ?? .everyJob(secret: secret)

        let service: BeaconService
        do {
            service = try BeaconService(observing: audience, channel: channel)
        } catch {
            // Discovery runs before there are ranks: drop ConcordError's "rank -1: " prefix.
            let text = "\(error)"
            Self.fail(
                "cannot listen for beacons on \(group):\(port): \(text.hasPrefix("rank -1: ") ? String(text.dropFirst(9)) : text)"
            )
        }
        _ = service.waitUntilBlocking(deadline: .after(seconds: seconds)) { _ in false }
        let snapshot = service.snapshot
        service.close()

        let rows = snapshot.peersByJob.flatMap { job, peers in peers.map { (job: job, peer: $0) } }
            .sorted { ($0.job.description, $0.peer.nodeID) < ($1.job.description, $1.peer.nodeID) }
        let rtts = Self.connectMilliseconds(
            rows.map { ($0.peer.host, $0.peer.port) }, timeoutSeconds: Self.connectTimeoutSeconds)

        let out = FileSink(fd: STDOUT_FILENO)
        let duration = Self.decimal(seconds, digits: seconds == seconds.rounded() ? 0 : 1) + " s"
        let whose: String
        if let job {
            whose =
                "job \"\(job)\" (\(JobID(jobName: job))), "
                + (given.map { "verified with the job secret from \($0.source)" } ?? "insecure beacons only")
        } else {
            whose =
                "every job, "
                + (given.map { "tagged beacons verified with the job secret from \($0.source)" }
                    ?? "insecure beacons only (no secret)")
        }
        out.writeLine(
            "# concord peers: listened \(duration) on \(group):\(port) (interfaces \(channel.listenInterfaces.joined(separator: ", "))); \(whose)"
        )
        for failure in snapshot.joinFailures { out.writeLine("# could not listen on \(failure)") }
        if rows.isEmpty {
            out.writeLine(
                "# nobody heard: no beacon arrived within \(duration) on \(group):\(port)"
                    + " (are nodes running, with the same group and port?)")
        } else {
            let jobs = Set(rows.map(\.job)).count
            out.writeLine("# \(rows.count) node\(rows.count == 1 ? "" : "s") in \(jobs) job\(jobs == 1 ? "" : "s")")
            let header = ["job", "node", "address", "cores", "memory", "os/arch", "reduce GB/s", "label", "rtt ms"]
            let body = zip(rows, rtts).map { row, rtt in Self.cells(job: row.job, peer: row.peer, rtt: rtt) }
            for line in Self.table(header: header, rows: body, rightAligned: [3, 4, 6, 8]) { out.writeLine(line) }
        }
        for line in Self.dropLines(snapshot, job: job, hasSecret: secret != nil) { out.writeLine(line) }
    }

    // MARK: - Options

    /// The secret from --secret-file, CONCORD_SECRET or CONCORD_SECRET_FILE, and where it came from (for
    /// the header line); nil with --insecure or when none is set.
    private func jobSecret() throws -> (secret: JobSecret, source: String)? {
        if insecure { return nil }
        let text = Self.environmentValue("CONCORD_SECRET")
        let environmentFile = Self.environmentValue("CONCORD_SECRET_FILE")
        if secretFile == nil && text != nil && environmentFile != nil {
            throw ValidationError("set CONCORD_SECRET or CONCORD_SECRET_FILE, not both")
        }
        do {
            if let file = secretFile ?? environmentFile {
                let secret = try JobSecret(contentsOfFile: file)
                if let warning = secret.permissionsWarning {
                    FileSink(fd: STDERR_FILENO).writeLine("concord: warning: \(warning)")
                }
                return (secret, secretFile != nil ? "--secret-file \(file)" : "CONCORD_SECRET_FILE \(file)")
            }
            if let text { return (try JobSecret(string: text), "CONCORD_SECRET") }
        } catch {
            Self.fail("\(error)")
        }
        return nil
    }

    /// --group, else CONCORD_DISCOVERY_GROUP, else the default; an IPv4 multicast address.
    private func channelGroup() throws -> String {
        let (value, source) =
            group.map { ($0, "--group") }
            ?? Self.environmentValue("CONCORD_DISCOVERY_GROUP").map { ($0, "CONCORD_DISCOVERY_GROUP") }
            ?? (BeaconService.Channel.defaultGroup, "the default group")
        var address = in_addr()
        guard inet_pton(AF_INET, value, &address) == 1, (224...239).contains(UInt32(bigEndian: address.s_addr) >> 24)
        else {
            throw ValidationError(
                "\(source) must be an IPv4 multicast address, 224.0.0.0 to 239.255.255.255 (got \(value))")
        }
        return value
    }

    /// --port, else CONCORD_DISCOVERY_PORT, else the default.
    private func channelPort() throws -> Int {
        if let port {
            guard (1...65535).contains(port) else {
                throw ValidationError("--port must be between 1 and 65535 (got \(port))")
            }
            return port
        }
        if let text = Self.environmentValue("CONCORD_DISCOVERY_PORT") {
            guard let value = Int(text), (1...65535).contains(value) else {
                throw ValidationError("CONCORD_DISCOVERY_PORT must be a port between 1 and 65535 (got \(text))")
            }
            return value
        }
        return BeaconService.Channel.defaultPort
    }

    private static func environmentValue(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Prints "concord: error: <message>" on stderr and exits 1.
    private static func fail(_ message: String) -> Never {
        FileSink(fd: STDERR_FILENO).writeLine("concord: error: \(message)")
        Glibc.exit(1)
    }

    // MARK: - The table

    private static func cells(job: JobID, peer: PeerTable.Peer, rtt: Double?) -> [String] {
        let c = peer.beacon.capabilities
        let host = peer.host.contains(":") ? "[\(peer.host)]" : peer.host
        return [
            job.description, peer.nodeID.shortDescription, "\(host):\(peer.port)", String(c.cores),
            memory(c.memoryBytes), "\(c.os)/\(c.arch)",
            c.reduceGigabytesPerSecond > 0 ? decimal(Double(c.reduceGigabytesPerSecond), digits: 1) : "-",
            c.label.isEmpty ? "-" : c.label, rtt.map { decimal($0, digits: 2) } ?? "-",
        ]
    }

    /// Columns padded to their widest cell, two spaces apart; `rightAligned` columns are numbers.
    static func table(header: [String], rows: [[String]], rightAligned: Set<Int>) -> [String] {
        let all = [header] + rows
        let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
        return all.map { cells in
            cells.enumerated().map { column, cell in
                let padding = String(repeating: " ", count: widths[column] - cell.count)
                if rightAligned.contains(column) { return padding + cell }
                return column == cells.count - 1 ? cell : cell + padding
            }.joined(separator: "  ")
        }
    }

    /// `#` lines counting the beacons that were dropped, and why.
    private static func dropLines(_ snapshot: BeaconService.Snapshot, job: String?, hasSecret: Bool) -> [String] {
        var lines: [String] = []
        let badMAC = snapshot.dropped(.badMAC)
        if job != nil || badMAC > 0 {
            let nodes = snapshot.badMACNodes.count
            lines.append(
                "# dropped for a bad MAC: \(badMAC) beacon\(badMAC == 1 ? "" : "s")"
                    + (nodes > 0 ? " from \(nodes) node\(nodes == 1 ? "" : "s")" : "")
                    + (badMAC > 0 ? " (they hold another job secret, or the datagrams were altered)" : ""))
        }
        let mismatch = snapshot.dropped(.authenticationMismatch)
        if mismatch > 0 {
            lines.append(
                hasSecret
                    ? "# dropped \(mismatch) insecure beacon\(mismatch == 1 ? "" : "s") (no job secret) of a job that must use one"
                    : "# dropped \(mismatch) beacon\(mismatch == 1 ? "" : "s") tagged with a job secret: "
                        + "give it with --secret-file or CONCORD_SECRET to verify them")
        }
        let otherJob = snapshot.dropped(.otherJob)
        if otherJob > 0 { lines.append("# ignored \(otherJob) beacon\(otherJob == 1 ? "" : "s") of other jobs") }
        let version = snapshot.dropped(.otherVersion)
        if version > 0 {
            lines.append("# dropped \(version) beacon\(version == 1 ? "" : "s") of another Concord version")
        }
        let malformed = snapshot.dropped(.malformed)
        if malformed > 0 {
            lines.append("# dropped \(malformed) malformed datagram\(malformed == 1 ? "" : "s") on the beacon port")
        }
        return lines
    }

    /// "7.8 GiB", "512 MiB".
    static func memory(_ bytes: UInt64) -> String {
        if bytes >= 1 << 30 { return decimal(Double(bytes) / Double(1 << 30), digits: 1) + " GiB" }
        return "\(bytes >> 20) MiB"
    }

    /// `value` with `digits` decimals, rounded half away from zero (no Foundation formatter).
    static func decimal(_ value: Double, digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = Int64((value * scale).rounded())
        let whole = scaled / Int64(scale)
        guard digits > 0 else { return String(whole) }
        let fraction = String(abs(scaled % Int64(scale)))
        return "\(scaled < 0 && whole == 0 ? "-" : "")\(whole)."
            + String(repeating: "0", count: digits - fraction.count)
            + fraction
    }

    // MARK: - Round-trip times

    /// How long a TCP connect to each endpoint takes, in milliseconds; nil when it fails or does not
    /// finish within `timeoutSeconds`. All connects run at once (nonblocking sockets, one poll(2) loop).
    /// Calls getaddrinfo(3), socket(2), connect(2), poll(2), getsockopt(2) and close(2).
    static func connectMilliseconds(_ endpoints: [(host: String, port: UInt16)], timeoutSeconds: Double) -> [Double?] {
        var results = [Double?](repeating: nil, count: endpoints.count)
        var pending: [(index: Int, fd: Int32, started: Double)] = []
        for (index, endpoint) in endpoints.enumerated() {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var list: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(endpoint.host, String(endpoint.port), &hints, &list) == 0, let address = list else {
                continue
            }
            defer { freeaddrinfo(list) }
            let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            guard let fd = try? systemCall("socket", { socket(address.pointee.ai_family, type, 0) }) else { continue }
            let started = monotonicMilliseconds()
            do throws(SystemError) {
                try systemCall("connect") { connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) }
                results[index] = monotonicMilliseconds() - started
                close(fd)
            } catch  where error.errno == EINPROGRESS {
                pending.append((index, fd, started))
            } catch {
                close(fd)
            }
        }
        let deadline = monotonicMilliseconds() + timeoutSeconds * 1000
        while !pending.isEmpty {
            let left = deadline - monotonicMilliseconds()
            if left <= 0 { break }
            var fds = pending.map { pollfd(fd: $0.fd, events: Int16(POLLOUT), revents: 0) }
            guard (try? systemCall("poll", { poll(&fds, nfds_t(fds.count), Int32(left.rounded(.up))) })) != nil else {
                break
            }
            let now = monotonicMilliseconds()
            for k in fds.indices.reversed() where fds[k].revents != 0 {
                var failure: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                let asked = try? systemCall("getsockopt") {
                    getsockopt(pending[k].fd, SOL_SOCKET, SO_ERROR, &failure, &length)
                }
                if asked != nil && failure == 0 { results[pending[k].index] = now - pending[k].started }
                close(pending[k].fd)
                pending.remove(at: k)
            }
        }
        for entry in pending { close(entry.fd) }
        return results
    }

    private static func monotonicMilliseconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) * 1000 + Double(now.tv_nsec) / 1_000_000
    }
}

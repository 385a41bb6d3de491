// A single-producer, single-consumer byte channel in shared memory, between two processes on one host.
//
// It carries a stream of bytes (ring all-reduce frames, for co-located ranks) from one producer thread to
// one consumer thread, usually in two processes. The producer creates a named POSIX shared-memory region;
// the consumer opens it by name. No Swift object lives in the region: only integers and bytes.
//
// The region `/dev/shm/concord-<name>` (every word that two sides touch has a 128-byte slot to itself):
//
//   offset  bytes  field              written by
//   ──────  ─────  ─────────────────  ───────────────────────────────────────────────────────────────
//        0      8  magic "CNCDRING"   producer, once, last of the header (release)
//        8      4  version (1)        producer, once
//       12      4  header bytes       producer, once (4096: where the data ring starts)
//       16      8  capacity           producer, once (a power of two, 4 KiB ... 1 GiB)
//      128      8  head               producer: bytes ever written (release store)
//      256      8  tail               consumer: bytes ever read (release store)
//      384      4  consumerWaiting    consumer sets 1 before it sleeps; producer exchanges it to 0
//      512      4  producerWaiting    producer sets 1 before it sleeps; consumer exchanges it to 0
//      640      4  producerClosed     producer: no more bytes will come
//      768      4  consumerClosed     consumer: no more bytes will be read
//      772      4  consumerClaimed    consumer, once (exchange: a second consumer is refused)
//     4096    cap  data ring          stream byte i lives at 4096 + (i mod capacity)
//
//   used = head − tail (0 ... capacity);  free = capacity − used.
//   The producer writes [head, head + free) and the consumer reads [tail, head), each as up to two spans:
//
//     data: |■■■■■■■■■■■■..............■■■■■■■■■|      ■ readable   . free
//            0          ▲ head         ▲ tail     capacity
//                       (mod capacity) (mod capacity)
//
// Why 128-byte slots, not 64: Intel's L2 spatial prefetcher pulls cache lines in aligned pairs, so two
// counters 64 bytes apart still bounce between the cores (folly and crossbeam pad to 128 on x86 for this).
// The data ring starts at 4096 so that it is page-aligned (and could be mapped twice back to back, which
// would make every span contiguous; not done, see the end of this comment).
//
// Ordering. Each counter has one writer, which keeps its own copy and only stores it; the other side loads.
//   Bytes: the producer copies into free bytes, then stores head (release); the consumer loads head
//   (acquire), then reads below it, so it sees the copies. The consumer finishes reading, then stores tail
//   (release); the producer loads tail (acquire) before it reuses those bytes, so it never overwrites an
//   unread byte. Each side checks head − tail ≤ capacity and traps otherwise (a corrupt region).
//   Sleeping (an eventcount, the store-buffering pattern of Dekker's algorithm):
//     consumer:  consumerWaiting = 1;  fence(seq_cst);  h = head;  sleeps only if h == its tail
//     producer:  head = h′ (release);  fence(seq_cst);  w = consumerWaiting;  if w, exchange(…, 0) == 1: wake
//   Sequentially consistent fences are totally ordered. If the consumer's fence comes first, the producer's
//   load after its own fence sees the 1 (C++ [atomics.fences]: a load after the later fence sees the store
//   before the earlier fence, or a later one: the only later stores are the producer's own exchange and the
//   consumer's cancel, which happens only when the consumer does not sleep); so it wakes the consumer. If
//   the producer's fence comes first, the consumer's load sees h′ and it does not sleep. Either way no
//   wake-up is lost. The exchange makes it exactly once: when the consumer finds data after all it cancels
//   with an exchange too, and only one of the two exchanges gets the 1. A cancel that loses leaves one
//   doorbell in flight, a spurious one: a doorbell means "look again", never "there are bytes".
//   The same holds with the roles swapped (producerWaiting, tail, "no space"), and for the closed flags,
//   which each side re-checks after its fence like the counter.
//   Across processes these are the same atomics as between threads: 4- and 8-byte atomics are lock-free,
//   hence address-free (CConcordShm.c checks it at compile time). Every access to a shared word goes through
//   CConcordShm; the data bytes themselves are plain memory, ordered by the counters.
//
// Waking. The channel only says when a wake-up is due (commitWrite, commitRead and markClosed return true);
// the doorbell itself (a byte on a socket or pipe the sleeper polls) is the caller's, e.g.
//
//   consumer:  loop { read what readableSpans() shows; commitRead(n) → ring the producer if true
//                     when empty: if isAtEnd → done; if consumerPrepareToSleep() → wait for the doorbell }
//
// Lifetime. The producer creates the region with O_EXCL (it never adopts a stale one) and reserves its
// pages with posix_fallocate, so a full /dev/shm fails now with ENOSPC instead of a SIGBUS at the first
// touch. The consumer opens it, validates it, claims it and unlinks the name: from then on nothing is left
// in /dev/shm whichever side dies. If no consumer ever claimed it, the producer's close() unlinks it. Only
// a producer that dies before any consumer opened the region leaves an entry (a memfd passed over a Unix
// socket with SCM_RIGHTS would avoid even that, at the cost of a Unix socket between the ranks).
//
// Not done: mapping the data ring twice back to back (a "magic ring buffer") would give one contiguous span
// always, so a frame header or an element never straddles the end; it costs a second mmap at a fixed
// address and page-sized capacities. Two spans keep the mapping plain; a caller that needs contiguity can
// copy the few straddling bytes.
internal import CConcordShm
import Foundation

/// Why a shared-memory channel could not be created, opened or unlinked.
///
/// `name` is the region's full name, e.g. `/concord-job7-r3-r4` (so it names the ranks when the caller
/// puts them in the channel name).
package enum SharedMemoryError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `create` found a region of that name already (a stale one of an earlier run, or a name reused).
    case exists(name: String)
    /// `open` found no region of that name (not created yet, or already unlinked).
    case notFound(name: String)
    /// The region does not begin with the channel's magic number.
    case badMagic(name: String, found: UInt64)
    /// The region was made by another version of the channel.
    case unsupportedVersion(name: String, found: UInt32, headerBytes: UInt32, expected: UInt32)
    /// A capacity that is not a power of two between `SharedMemoryChannel.minimumCapacity` and
    /// `maximumCapacity` (asked for at `create`, or found in the header at `open`).
    case invalidCapacity(name: String, capacity: Int)
    /// The region's size does not match its header: it was truncated or tampered with.
    case wrongSize(name: String, size: Int, expected: Int)
    /// Another consumer opened this region already (the channel has exactly one consumer).
    case hasConsumer(name: String)
    /// A system call failed.
    case system(name: String, call: String, errno: Int32)

    package var description: String {
        switch self {
        case .exists(let name):
            return "shared memory \(name): exists already (a stale region of an earlier run? remove /dev/shm\(name))"
        case .notFound(let name):
            return "shared memory \(name): does not exist (not created yet, or already unlinked)"
        case .badMagic(let name, let found):
            let hint = found == 0 ? "; opened before its creator finished?" : ""
            return "shared memory \(name): not a Concord channel (bad magic 0x\(String(found, radix: 16))\(hint))"
        case .unsupportedVersion(let name, let found, let headerBytes, let expected):
            return "shared memory \(name): channel version \(found) with a \(headerBytes)-byte header, this build "
                + "speaks version \(expected); run the same Concord build on both sides"
        case .invalidCapacity(let name, let capacity):
            return "shared memory \(name): capacity \(capacity) is not a power of two between "
                + "\(SharedMemoryChannel.minimumCapacity) and \(SharedMemoryChannel.maximumCapacity)"
        case .wrongSize(let name, let size, let expected):
            if size < SharedMemoryChannel.Layout.headerBytes {
                return "shared memory \(name): truncated: \(size) bytes, "
                    + "shorter than the \(SharedMemoryChannel.Layout.headerBytes)-byte header"
            }
            let what = size < expected ? "truncated" : "too large"
            return "shared memory \(name): \(what): \(size) bytes, expected \(expected)"
        case .hasConsumer(let name):
            return "shared memory \(name): already has a consumer"
        case .system(let name, let call, let code):
            let symbol = concord_shm_errno_name(code).map { String(cString: $0) } ?? "errno \(code)"
            return "shared memory \(name): \(call) failed: \(symbol) (\(String(cString: strerror(code))))"
        }
    }
}

/// A single-producer, single-consumer byte ring in POSIX shared memory; see the top of this file for the
/// layout and the memory-ordering argument.
///
/// One object is one side: `create` makes the producer, `open` the consumer (usually in another process).
/// Calling the other side's methods is a programmer error and traps.
///
/// `@unchecked Sendable`: an object may be handed to the thread that uses it, but its methods are not
/// thread-safe and must be called from one thread at a time (one producer thread, one consumer thread, each
/// with its own object). Its mutable state (its own counter, the last counter it saw of the peer's, the
/// mapping) is touched only by that thread; what it shares with the peer goes through the atomics.
package final class SharedMemoryChannel: @unchecked Sendable {
    /// Which end of the channel an object is.
    package enum Role: Sendable {
        /// Writes bytes; created the region.
        case producer
        /// Reads bytes; opened the region.
        case consumer
    }

    /// Capacity of `create` when none is given: 4 MiB, room for four 1 MiB segments.
    package static let defaultCapacity = 4 << 20
    /// The smallest capacity: one page.
    package static let minimumCapacity = 4096
    /// The largest capacity: 1 GiB.
    package static let maximumCapacity = 1 << 30

    /// Offsets of the header fields (bytes from the start of the region), as drawn at the top of this file.
    package enum Layout {
        /// "CNCDRING" read as a little-endian integer.
        static let magic: UInt64 = 0x474E_4952_4443_4E43
        static let version: UInt32 = 1
        /// Bytes before the data ring: one page.
        static let headerBytes = 4096
        static let magicOffset = 0
        static let versionOffset = 8
        static let headerBytesOffset = 12
        static let capacityOffset = 16
        static let headOffset = 128
        static let tailOffset = 256
        static let consumerWaitingOffset = 384
        static let producerWaitingOffset = 512
        static let producerClosedOffset = 640
        static let consumerClosedOffset = 768
        static let consumerClaimedOffset = 772

        /// Bytes of a region with `capacity` bytes of data.
        static func regionBytes(capacity: Int) -> Int { headerBytes + capacity }
    }

    /// The region's name as shm_open(3) sees it: `/concord-<name>`.
    package let name: String
    /// Which end this object is.
    package let role: Role
    /// Bytes of the data ring.
    package let capacity: Int

    // `@exclusivity(unchecked)`: data-path state of the loop's driver (see UVTransport's `left`).
    @exclusivity(unchecked) private var region: UnsafeMutableRawPointer?
    private let regionBytes: Int
    private let data: UnsafeMutableRawPointer
    private let mask: UInt64
    private let head: UnsafeMutablePointer<UInt64>
    private let tail: UnsafeMutablePointer<UInt64>
    private let consumerWaiting: UnsafeMutablePointer<UInt32>
    private let producerWaiting: UnsafeMutablePointer<UInt32>
    private let producerClosed: UnsafeMutablePointer<UInt32>
    private let consumerClosed: UnsafeMutablePointer<UInt32>
    private let consumerClaimed: UnsafeMutablePointer<UInt32>
    /// This side's counter (head for the producer, tail for the consumer); only this object stores it.
    @exclusivity(unchecked) private var position: UInt64
    /// The peer's counter as last loaded.
    @exclusivity(unchecked) private var peerPosition: UInt64
    private var markedClosed = false
    private var unlinked = false

    private init(name: String, role: Role, region: UnsafeMutableRawPointer, capacity: Int) {
        self.name = name
        self.role = role
        self.capacity = capacity
        self.region = region
        regionBytes = Layout.regionBytes(capacity: capacity)
        data = region + Layout.headerBytes
        mask = UInt64(capacity - 1)
        func word<T>(_ offset: Int, _ type: T.Type) -> UnsafeMutablePointer<T> {
            (region + offset).assumingMemoryBound(to: T.self)
        }
        head = word(Layout.headOffset, UInt64.self)
        tail = word(Layout.tailOffset, UInt64.self)
        consumerWaiting = word(Layout.consumerWaitingOffset, UInt32.self)
        producerWaiting = word(Layout.producerWaitingOffset, UInt32.self)
        producerClosed = word(Layout.producerClosedOffset, UInt32.self)
        consumerClosed = word(Layout.consumerClosedOffset, UInt32.self)
        consumerClaimed = word(Layout.consumerClaimedOffset, UInt32.self)
        let h = concord_shm_load_acquire_64(head)
        let t = concord_shm_load_acquire_64(tail)
        position = role == .producer ? h : t
        peerPosition = role == .producer ? t : h
    }

    deinit { close() }

    // MARK: - Creating, opening, closing

    /// Creates the region `/concord-<name>` and returns its producer.
    ///
    /// The region is new (`O_CREAT | O_EXCL`, mode 0600), sized and its pages reserved (ftruncate(2),
    /// posix_fallocate(3)), mapped shared (mmap(2)), and its header written, magic last.
    /// - Parameters:
    ///   - name: the region's name without the `/concord-` prefix; make it unique per job and pair of
    ///     ranks (e.g. `"<job>-r3-r4"`), as it appears in every error message.
    ///   - capacity: bytes of the data ring, a power of two between `minimumCapacity` and `maximumCapacity`.
    /// - Throws: `SharedMemoryError.invalidCapacity`, `.exists`, or `.system` (shm_open, ftruncate,
    ///   posix_fallocate, mmap); nothing is left in /dev/shm then.
    package static func create(name: String, capacity: Int = defaultCapacity) throws(SharedMemoryError)
        -> SharedMemoryChannel
    {
        let path = "/concord-" + name
        guard isValidCapacity(capacity) else { throw .invalidCapacity(name: path, capacity: capacity) }
        let fd = shm_open(path, O_CREAT | O_EXCL | O_RDWR, 0o600)
        if fd < 0 {
            let code = errno
            throw code == EEXIST ? .exists(name: path) : .system(name: path, call: "shm_open", errno: code)
        }
        defer { _ = Glibc.close(fd) }
        let size = Layout.regionBytes(capacity: capacity)
        let base: UnsafeMutableRawPointer
        do throws(SharedMemoryError) {
            try check(retryingEINTR { ftruncate(fd, off_t(size)) }, path, "ftruncate")
            var code: Int32
            repeat { code = posix_fallocate(fd, 0, off_t(size)) } while code == EINTR
            if code != 0 { throw .system(name: path, call: "posix_fallocate", errno: code) }
            base = try map(fd, size, path, populate: true)
        } catch {
            _ = shm_unlink(path)
            throw error
        }
        // A fresh region reads as zeros: counters, flags and claims start at 0.
        base.storeBytes(of: Layout.version, toByteOffset: Layout.versionOffset, as: UInt32.self)
        base.storeBytes(of: UInt32(Layout.headerBytes), toByteOffset: Layout.headerBytesOffset, as: UInt32.self)
        base.storeBytes(of: UInt64(capacity), toByteOffset: Layout.capacityOffset, as: UInt64.self)
        concord_shm_store_release_64(
            (base + Layout.magicOffset).assumingMemoryBound(to: UInt64.self), Layout.magic)
        return SharedMemoryChannel(name: path, role: .producer, region: base, capacity: capacity)
    }

    /// Opens the region `/concord-<name>` that a producer created, and returns its consumer.
    ///
    /// Validates size, magic, version and capacity before it trusts anything in the region, claims it
    /// (a region has one consumer), and by default unlinks the name: both sides have it mapped then, so
    /// nothing is left in /dev/shm whoever exits or crashes. Calls shm_open(3), fstat(2), mmap(2) and
    /// shm_unlink(3).
    /// - Parameters:
    ///   - name: the name given to `create`, without the `/concord-` prefix.
    ///   - unlinksName: whether to unlink the name once mapped (call `unlink()` later when false).
    /// - Throws: `SharedMemoryError.notFound`, `.wrongSize`, `.badMagic`, `.unsupportedVersion`,
    ///   `.invalidCapacity`, `.hasConsumer`, or `.system`.
    package static func open(name: String, unlinksName: Bool = true) throws(SharedMemoryError)
        -> SharedMemoryChannel
    {
        let path = "/concord-" + name
        let fd = shm_open(path, O_RDWR, 0)
        if fd < 0 {
            let code = errno
            throw code == ENOENT ? .notFound(name: path) : .system(name: path, call: "shm_open", errno: code)
        }
        defer { _ = Glibc.close(fd) }
        var status = stat()
        try check(fstat(fd, &status), path, "fstat")
        let size = Int(status.st_size)
        guard size >= Layout.headerBytes else { throw .wrongSize(name: path, size: size, expected: Layout.headerBytes) }
        // The header alone first: nothing else is mapped (let alone populated) before it is known good.
        let header = try map(fd, Layout.headerBytes, path, populate: false)
        let capacity: Int
        do throws(SharedMemoryError) {
            capacity = try validate(header: header, path: path)
        } catch {
            munmap(header, Layout.headerBytes)
            throw error
        }
        munmap(header, Layout.headerBytes)
        guard size == Layout.regionBytes(capacity: capacity) else {
            throw .wrongSize(name: path, size: size, expected: Layout.regionBytes(capacity: capacity))
        }
        let base = try map(fd, size, path, populate: true)
        // Checked once more through the mapping that stays, in case the region changed between the two.
        do throws(SharedMemoryError) {
            guard try validate(header: base, path: path) == capacity else {
                throw .wrongSize(name: path, size: size, expected: Layout.regionBytes(capacity: capacity))
            }
            let claimed = (base + Layout.consumerClaimedOffset).assumingMemoryBound(to: UInt32.self)
            guard concord_shm_exchange_32(claimed, 1) == 0 else { throw .hasConsumer(name: path) }
        } catch {
            munmap(base, size)
            throw error
        }
        let channel = SharedMemoryChannel(name: path, role: .consumer, region: base, capacity: capacity)
        if unlinksName { try channel.unlink() }
        return channel
    }

    /// Removes the region's name (shm_unlink(3)); both mappings keep working, and the memory is freed
    /// when the last one goes. Does nothing when this object unlinked it before, or it is gone already.
    /// - Throws: `SharedMemoryError.system` when shm_unlink fails otherwise.
    package func unlink() throws(SharedMemoryError) {
        guard !unlinked else { return }
        if shm_unlink(name) != 0, errno != ENOENT {
            throw .system(name: name, call: "shm_unlink", errno: errno)
        }
        unlinked = true
    }

    /// Whether `close()` was called.
    package var isClosed: Bool { region == nil }

    /// Marks this side closed (see `markClosed()`) and unmaps the region (munmap(2)); a producer whose
    /// region no consumer claimed also unlinks its name. Idempotent; `deinit` calls it.
    ///
    /// The peer may be asleep: call `markClosed()` first and ring its doorbell when it says so.
    package func close() {
        guard let region else { return }
        if !markedClosed { _ = markClosed() }
        if role == .producer, !unlinked, concord_shm_load_acquire_32(consumerClaimed) == 0 {
            // Best effort: close cannot throw; ENOENT means a consumer unlinked it meanwhile.
            _ = shm_unlink(name)
            unlinked = true
        }
        munmap(region, regionBytes)
        self.region = nil
    }

    // MARK: - Producer

    /// The free bytes of the ring, where the producer may write: the first span starts at the write
    /// position; the second, at the start of the ring, is non-empty only when the free space wraps.
    ///
    /// Loads the consumer's tail (acquire), so the bytes it shows have been read.
    package func writableSpans() -> (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) {
        precondition(role == .producer, "\(name): writableSpans() on the consumer")
        precondition(region != nil, "\(name): used after close()")
        peerPosition = concord_shm_load_acquire_64(tail)
        let free = capacity - used(head: position, tail: peerPosition)
        let start = Int(position & mask)
        let first = min(free, capacity - start)
        return (
            UnsafeMutableRawBufferPointer(start: data + start, count: first),
            UnsafeMutableRawBufferPointer(start: data, count: free - first)
        )
    }

    /// Publishes the next `n` bytes written into `writableSpans()` (release), and says whether the
    /// consumer announced it sleeps and must be woken now (the announcement is consumed: true once per
    /// `consumerPrepareToSleep`).
    /// - Parameter n: bytes to publish, 0 ... the free space last shown.
    /// - Returns: true when the caller must ring the consumer's doorbell.
    package func commitWrite(_ n: Int) -> Bool {
        precondition(role == .producer, "\(name): commitWrite on the consumer")
        precondition(region != nil, "\(name): used after close()")
        if n <= 0 {
            precondition(n == 0, "\(name): commitWrite(\(n))")
            return false
        }
        var free = capacity - used(head: position, tail: peerPosition)
        if n > free {
            peerPosition = concord_shm_load_acquire_64(tail)
            free = capacity - used(head: position, tail: peerPosition)
        }
        precondition(n <= free, "\(name): commitWrite(\(n)) with only \(free) bytes free")
        position &+= UInt64(n)
        concord_shm_store_release_64(head, position)
        concord_shm_fence_seq_cst()
        return claimWakeUp(consumerWaiting)
    }

    /// Copies as much of `bytes` as fits and publishes it.
    /// - Returns: the bytes copied (0 when the ring is full), and whether the consumer must be woken.
    package func write(_ bytes: UnsafeRawBufferPointer) -> (count: Int, wakeConsumer: Bool) {
        let (first, second) = writableSpans()
        let a = min(bytes.count, first.count)
        let b = min(bytes.count - a, second.count)
        if a > 0 { first.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: a) }
        if b > 0 { second.baseAddress!.copyMemory(from: bytes.baseAddress! + a, byteCount: b) }
        return (a + b, commitWrite(a + b))
    }

    /// Announces that the producer is about to sleep until there is free space, unless there is some
    /// already or the consumer closed.
    ///
    /// Sets producerWaiting, fences (seq_cst), and looks at tail and consumerClosed again.
    /// - Returns: true when the producer may sleep: the consumer's next `commitRead` (or `markClosed`)
    ///   returns true and rings it. False when it must not sleep (the announcement is withdrawn; a
    ///   spurious doorbell may still come).
    package func producerPrepareToSleep() -> Bool {
        precondition(role == .producer, "\(name): producerPrepareToSleep() on the consumer")
        precondition(region != nil, "\(name): used after close()")
        return prepareToSleep(flag: producerWaiting, peerClosed: consumerClosed) {
            peerPosition = concord_shm_load_acquire_64(tail)
            return used(head: position, tail: peerPosition) == capacity
        }
    }

    // MARK: - Consumer

    /// The bytes published and not yet read: the first span starts at the read position; the second, at
    /// the start of the ring, is non-empty only when they wrap.
    ///
    /// Loads the producer's head (acquire), so the bytes it shows are complete.
    package func readableSpans() -> (UnsafeRawBufferPointer, UnsafeRawBufferPointer) {
        precondition(role == .consumer, "\(name): readableSpans() on the producer")
        precondition(region != nil, "\(name): used after close()")
        peerPosition = concord_shm_load_acquire_64(head)
        let used = used(head: peerPosition, tail: position)
        let start = Int(position & mask)
        let first = min(used, capacity - start)
        return (
            UnsafeRawBufferPointer(start: data + start, count: first),
            UnsafeRawBufferPointer(start: data, count: used - first)
        )
    }

    /// Frees the next `n` bytes shown by `readableSpans()` (release), and says whether the producer
    /// announced it sleeps waiting for space and must be woken now (once per `producerPrepareToSleep`).
    /// - Parameter n: bytes read, 0 ... the readable bytes last shown.
    /// - Returns: true when the caller must ring the producer's doorbell.
    package func commitRead(_ n: Int) -> Bool {
        precondition(role == .consumer, "\(name): commitRead on the producer")
        precondition(region != nil, "\(name): used after close()")
        if n <= 0 {
            precondition(n == 0, "\(name): commitRead(\(n))")
            return false
        }
        var readable = used(head: peerPosition, tail: position)
        if n > readable {
            peerPosition = concord_shm_load_acquire_64(head)
            readable = used(head: peerPosition, tail: position)
        }
        precondition(n <= readable, "\(name): commitRead(\(n)) with only \(readable) bytes readable")
        position &+= UInt64(n)
        concord_shm_store_release_64(tail, position)
        concord_shm_fence_seq_cst()
        return claimWakeUp(producerWaiting)
    }

    /// Copies as many readable bytes as fit into `buffer` and frees them.
    /// - Returns: the bytes copied (0 when the ring is empty), and whether the producer must be woken.
    package func read(into buffer: UnsafeMutableRawBufferPointer) -> (count: Int, wakeProducer: Bool) {
        let (first, second) = readableSpans()
        let a = min(buffer.count, first.count)
        let b = min(buffer.count - a, second.count)
        if a > 0 { buffer.baseAddress!.copyMemory(from: first.baseAddress!, byteCount: a) }
        if b > 0 { (buffer.baseAddress! + a).copyMemory(from: second.baseAddress!, byteCount: b) }
        return (a + b, commitRead(a + b))
    }

    /// Announces that the consumer is about to sleep until bytes arrive, unless some are there already
    /// or the producer closed.
    ///
    /// Sets consumerWaiting, fences (seq_cst), and looks at head and producerClosed again.
    /// - Returns: true when the consumer may sleep: the producer's next `commitWrite` (or `markClosed`)
    ///   returns true and rings it. False when it must not sleep (the announcement is withdrawn; a
    ///   spurious doorbell may still come).
    package func consumerPrepareToSleep() -> Bool {
        precondition(role == .consumer, "\(name): consumerPrepareToSleep() on the producer")
        precondition(region != nil, "\(name): used after close()")
        return prepareToSleep(flag: consumerWaiting, peerClosed: producerClosed) {
            peerPosition = concord_shm_load_acquire_64(head)
            return peerPosition == position
        }
    }

    /// Whether the stream has ended: the producer closed and every byte it wrote has been read.
    package var isAtEnd: Bool {
        precondition(role == .consumer, "\(name): isAtEnd on the producer")
        precondition(region != nil, "\(name): used after close()")
        // Closed first: head was stored before it, so the head loaded after it is final.
        guard concord_shm_load_acquire_32(producerClosed) != 0 else { return false }
        return concord_shm_load_acquire_64(head) == position
    }

    // MARK: - Both sides

    /// Tells the peer that this side is done: the producer writes no more bytes, or the consumer reads no
    /// more. Store (release), fence, then the same check as a commit.
    /// - Returns: true when the peer announced it sleeps and must be woken to notice.
    package func markClosed() -> Bool {
        precondition(region != nil, "\(name): used after close()")
        markedClosed = true
        concord_shm_store_release_32(role == .producer ? producerClosed : consumerClosed, 1)
        concord_shm_fence_seq_cst()
        return claimWakeUp(role == .producer ? consumerWaiting : producerWaiting)
    }

    /// Whether the other side called `markClosed()` (or `close()`).
    package var peerClosed: Bool {
        precondition(region != nil, "\(name): used after close()")
        return concord_shm_load_acquire_32(role == .producer ? consumerClosed : producerClosed) != 0
    }

    // MARK: - Helpers

    private static func isValidCapacity(_ capacity: Int) -> Bool {
        capacity >= minimumCapacity && capacity <= maximumCapacity && capacity & (capacity - 1) == 0
    }

    /// head − tail, trapping when the region says more than `capacity` (a corrupt or foreign writer: reading
    /// or writing on would leave the mapping).
    private func used(head: UInt64, tail: UInt64) -> Int {
        let used = head &- tail
        precondition(used <= UInt64(capacity), "\(name): head \(head) and tail \(tail) are \(used) bytes apart")
        return Int(used)
    }

    /// The peer's half of the eventcount: true when the sleeper's flag was set and this call cleared it.
    private func claimWakeUp(_ flag: UnsafeMutablePointer<UInt32>) -> Bool {
        concord_shm_load_relaxed_32(flag) != 0 && concord_shm_exchange_32(flag, 0) != 0
    }

    /// The sleeper's half of the eventcount; `blocked` loads the peer's counter and says whether this
    /// side still cannot proceed. No look before announcing: the caller has just seen it blocked, and one
    /// path through the code is one path to test.
    private func prepareToSleep(
        flag: UnsafeMutablePointer<UInt32>, peerClosed: UnsafeMutablePointer<UInt32>, blocked: () -> Bool
    ) -> Bool {
        concord_shm_store_relaxed_32(flag, 1)
        concord_shm_fence_seq_cst()
        if !blocked() || concord_shm_load_acquire_32(peerClosed) != 0 {
            _ = concord_shm_exchange_32(flag, 0)
            return false
        }
        return true
    }

    /// Checks the header's magic, version and capacity; returns the capacity.
    private static func validate(header: UnsafeMutableRawPointer, path: String) throws(SharedMemoryError) -> Int {
        let magic = concord_shm_load_acquire_64((header + Layout.magicOffset).assumingMemoryBound(to: UInt64.self))
        guard magic == Layout.magic else { throw .badMagic(name: path, found: magic) }
        let version = header.load(fromByteOffset: Layout.versionOffset, as: UInt32.self)
        let headerBytes = header.load(fromByteOffset: Layout.headerBytesOffset, as: UInt32.self)
        guard version == Layout.version, headerBytes == Layout.headerBytes else {
            throw .unsupportedVersion(name: path, found: version, headerBytes: headerBytes, expected: Layout.version)
        }
        let stored = header.load(fromByteOffset: Layout.capacityOffset, as: UInt64.self)
        guard stored <= UInt64(maximumCapacity), isValidCapacity(Int(stored)) else {
            throw .invalidCapacity(name: path, capacity: Int(truncatingIfNeeded: stored))
        }
        return Int(stored)
    }

    /// Maps `size` bytes of `fd` shared, read-write (mmap(2)); `populate` faults every page in now
    /// (MAP_POPULATE) rather than one by one in the first pass of the ring.
    private static func map(_ fd: Int32, _ size: Int, _ path: String, populate: Bool) throws(SharedMemoryError)
        -> UnsafeMutableRawPointer
    {
        let flags = MAP_SHARED | (populate ? MAP_POPULATE : 0)
        let base = mmap(nil, size, PROT_READ | PROT_WRITE, flags, fd, 0)
        guard let base, base != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw .system(name: path, call: "mmap", errno: errno)
        }
        return base
    }
}

/// Runs `body` again while it fails with EINTR.
private func retryingEINTR(_ body: () -> Int32) -> Int32 {
    while true {
        let rc = body()
        if rc != -1 || errno != EINTR { return rc }
    }
}

/// Throws `SharedMemoryError.system` when a call returned -1.
private func check(_ rc: Int32, _ path: String, _ call: String) throws(SharedMemoryError) {
    if rc == -1 { throw .system(name: path, call: call, errno: errno) }
}

// MARK: - Throughput measurement

extension SharedMemoryChannel {
    /// A doorbell made of a non-blocking pipe, for the throughput measurement and tests (the transport
    /// rings its own, through libuv): `ring()` writes a byte, `wait(until:)` polls for one and drains.
    package final class PipeDoorbell: Sendable {
        private let readFD: Int32
        private let writeFD: Int32

        /// Creates the pipe (pipe(2), fcntl(2) O_NONBLOCK and FD_CLOEXEC).
        /// - Parameter name: the channel's name, for error messages.
        /// - Throws: `SharedMemoryError.system` when pipe fails.
        package init(name: String) throws(SharedMemoryError) {
            var fds: [Int32] = [-1, -1]
            if pipe(&fds) != 0 { throw .system(name: name, call: "pipe", errno: errno) }
            for fd in fds {
                _ = fcntl(fd, F_SETFL, O_NONBLOCK)
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            }
            (readFD, writeFD) = (fds[0], fds[1])
        }

        deinit {
            _ = Glibc.close(readFD)
            _ = Glibc.close(writeFD)
        }

        /// Wakes the waiter. A full pipe (EAGAIN) already holds a wake-up, so it needs none more.
        package func ring() {
            var byte: UInt8 = 1
            let rc = retryingEINTR { Int32(Glibc.write(writeFD, &byte, 1)) }
            precondition(rc == 1 || errno == EAGAIN, "doorbell write: \(String(cString: strerror(errno)))")
        }

        /// Sleeps until the doorbell rings or `deadline` passes (poll(2)), then drains the pipe.
        /// - Returns: false when the deadline passed without a ring.
        package func wait(until deadline: ContinuousClock.Instant) -> Bool {
            while true {
                let left = ContinuousClock.now.duration(to: deadline)
                if left <= .zero { return false }
                let ms = Int32(min(left / .milliseconds(1), 1e9)) + 1
                var descriptor = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
                let rc = poll(&descriptor, 1, ms)
                if rc > 0 { break }
                precondition(rc == 0 || errno == EINTR, "doorbell poll: \(String(cString: strerror(errno)))")
            }
            var sink = [UInt8](repeating: 0, count: 64)
            while sink.withUnsafeMutableBytes({ Glibc.read(readFD, $0.baseAddress, $0.count) }) > 0 {}
            return true
        }
    }

    /// A failure of the throughput measurement: the bytes did not arrive intact, or it stalled.
    private struct MeasurementFailure: Error, CustomStringConvertible {
        let description: String
    }

    /// Moves `bytes` bytes from a producer thread to a consumer thread (each with its own mapping of the
    /// region) through a ring of `capacity` bytes, `chunk` bytes per commit, and returns GB/s (10⁹ bytes
    /// per second) from the first write to the last read.
    ///
    /// What it measures is a transfer between two buffers of `bytes` bytes: the producer copies from a
    /// source into the ring, the consumer from the ring into a destination. Both buffers are filled and
    /// faulted in beforehand; the destination is compared with the source afterwards. Each side spins a
    /// little, then sleeps on a pipe doorbell through the channel's sleep protocol, so a lost wake-up
    /// shows as a stall.
    /// - Throws: `SharedMemoryError` when the region cannot be made; a failure when the destination
    ///   differs from the source or either side waits 10 s without progress.
    package static func measureThroughput(bytes: Int, chunk: Int, capacity: Int = defaultCapacity) throws -> Double {
        precondition(bytes > 0 && chunk > 0, "measureThroughput(bytes: \(bytes), chunk: \(chunk))")
        let name = "throughput-\(getpid())-\(UInt32.random(in: .min ... .max))"
        let producer = try SharedMemoryChannel.create(name: name, capacity: capacity)
        let dataBell = try PipeDoorbell(name: producer.name)
        let spaceBell = try PipeDoorbell(name: producer.name)
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
        let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for offset in stride(from: 0, to: bytes, by: 8) {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            withUnsafeBytes(of: state.littleEndian) { word in
                let n = min(8, bytes - offset)
                (source.baseAddress! + offset).copyMemory(from: word.baseAddress!, byteCount: n)
            }
        }
        destination.initializeMemory(as: UInt8.self, repeating: 0)
        let stall = Duration.seconds(10)
        let consumerSide = ConsumerSide(destination: destination)
        let ready = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            defer { done.signal() }
            do {
                let consumer = try SharedMemoryChannel.open(name: name)
                defer {
                    if consumer.markClosed() { spaceBell.ring() }
                    consumer.close()
                }
                ready.signal()
                var received = 0
                var deadline = ContinuousClock.now + stall
                while received < bytes {
                    let (first, second) = consumer.readableSpans()
                    if first.isEmpty {
                        if consumer.isAtEnd {
                            throw MeasurementFailure(description: "\(name): the producer stopped at byte \(received)")
                        }
                        try waitForPeer(until: deadline, bell: dataBell, name: name, what: "bytes") {
                            !consumer.readableSpans().0.isEmpty
                        } prepare: {
                            consumer.consumerPrepareToSleep()
                        }
                        continue
                    }
                    let a = min(first.count, chunk, bytes - received)
                    let b = min(second.count, chunk - a, bytes - received - a)
                    (consumerSide.destination.baseAddress! + received).copyMemory(
                        from: first.baseAddress!, byteCount: a)
                    if b > 0 {
                        (consumerSide.destination.baseAddress! + received + a).copyMemory(
                            from: second.baseAddress!, byteCount: b)
                    }
                    received += a + b
                    if consumer.commitRead(a + b) { spaceBell.ring() }
                    deadline = ContinuousClock.now + stall
                }
                consumerSide.end = ContinuousClock.now
            } catch {
                consumerSide.failure = error
                ready.signal()
            }
        }
        thread.stackSize = 1 << 20
        thread.start()
        ready.wait()
        let start = ContinuousClock.now
        var producerFailure: (any Error)?
        do {
            var sent = 0
            var deadline = ContinuousClock.now + stall
            while sent < bytes {
                let (first, second) = producer.writableSpans()
                if first.isEmpty {
                    if producer.peerClosed {
                        throw MeasurementFailure(description: "\(name): the consumer stopped at byte \(sent)")
                    }
                    try waitForPeer(until: deadline, bell: spaceBell, name: name, what: "space") {
                        !producer.writableSpans().0.isEmpty
                    } prepare: {
                        producer.producerPrepareToSleep()
                    }
                    continue
                }
                let a = min(first.count, chunk, bytes - sent)
                let b = min(second.count, chunk - a, bytes - sent - a)
                first.baseAddress!.copyMemory(from: source.baseAddress! + sent, byteCount: a)
                if b > 0 { second.baseAddress!.copyMemory(from: source.baseAddress! + sent + a, byteCount: b) }
                sent += a + b
                if producer.commitWrite(a + b) { dataBell.ring() }
                deadline = ContinuousClock.now + stall
            }
        } catch {
            producerFailure = error
        }
        if producer.markClosed() { dataBell.ring() }
        // The consumer gives up after `stall` without progress; should it not, its buffers stay allocated.
        guard done.wait(timeout: .now() + 20) == .success else {
            throw MeasurementFailure(description: "\(name): the consumer thread did not finish")
        }
        producer.close()
        defer {
            source.deallocate()
            destination.deallocate()
        }
        if let producerFailure { throw producerFailure }
        if let failure = consumerSide.failure { throw failure }
        if memcmp(source.baseAddress!, destination.baseAddress!, bytes) != 0 {
            let offset = (0..<bytes).first { source[$0] != destination[$0] }!
            throw MeasurementFailure(
                description: "\(name): byte \(offset) arrived as \(destination[offset]), sent \(source[offset])")
        }
        return Double(bytes) / ((consumerSide.end! - start) / .seconds(1)) / 1e9
    }

    /// What the consumer thread of `measureThroughput` hands back; read only after it signalled `done`.
    private final class ConsumerSide: @unchecked Sendable {
        let destination: UnsafeMutableRawBufferPointer
        var end: ContinuousClock.Instant?
        var failure: (any Error)?
        init(destination: UnsafeMutableRawBufferPointer) { self.destination = destination }
    }

    /// Spins a little for `ready`, then announces sleep and waits for the doorbell; returns when the
    /// caller should look again.
    private static func waitForPeer(
        until deadline: ContinuousClock.Instant, bell: PipeDoorbell, name: String, what: String,
        ready: () -> Bool, prepare: () -> Bool
    ) throws {
        for _ in 0..<200 {
            if ready() { return }
            concord_shm_cpu_relax()
        }
        if prepare(), !bell.wait(until: deadline) {
            throw MeasurementFailure(description: "\(name): waited 10 s for \(what) (a lost wake-up?)")
        }
    }
}

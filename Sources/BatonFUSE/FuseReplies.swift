import CFuse3
import Glibc
import Synchronization

// Replies follow Rust fuser's reply.rs: each request gets one noncopyable reply
// object whose answering methods are `consuming`, so answering twice does not
// compile. A reply dropped unanswered answers EIO from its deinit, so the
// kernel's request never hangs even when an answer path is forgotten.
//
// Replies are Sendable and may answer from any thread, at any later time:
// libfuse's fuse_reply_* functions are thread-safe and a request stays valid
// until it is answered.

/// The request pointer and a +1 reference that keeps the session alive until
/// the request is answered (libfuse frees the session in fuse_session_destroy,
/// and a late network reply must not touch freed memory). Trivially
/// destructible, so that reply types can `discard self`.
struct PendingRequest {
    let request: fuse_req_t
    let session: Unmanaged<SessionCore>
    /// The handler registered for the kernel's interrupt of this request (0: none).
    var interruptID: UInt = 0

    /// Sends the answer with `reply` and lets the session go. The result of
    /// fuse_reply_* is returned to the few callers that care (open, create):
    /// it fails only when the kernel no longer waits (interrupted request,
    /// unmounted file system), and then nobody is left to tell.
    @discardableResult
    func answer(_ reply: (fuse_req_t) -> Int32) -> Int32 {
        defer { session.release() }
        if interruptID != 0 { session.takeUnretainedValue().interrupts.forget(interruptID) }
        return reply(request)
    }

    func error(_ code: Int32) {
        assert(code > 0, "errno must be positive, got \(code)")
        answer { fuse_reply_err($0, code) }
    }

    func bytes(_ data: [UInt8]) {
        answer { request in
            data.withUnsafeBytes { fuse_reply_buf(request, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
        }
    }
}

/// For unlink, rmdir, rename, flush, release, fsync, setxattr and the like.
public struct FuseEmptyReply: ~Copyable, @unchecked Sendable {
    var pending: PendingRequest
    init(_ pending: PendingRequest) { self.pending = pending }

    /// `handler` runs (once, on a libfuse thread) if the kernel interrupts
    /// the request before it is answered: its process took a signal while
    /// waiting. At once if that already happened. Register it once.
    public mutating func onInterrupt(_ handler: @escaping @Sendable () -> Void) {
        precondition(pending.interruptID == 0, "an interrupt handler registered twice")
        pending.interruptID = pending.session.takeUnretainedValue().interrupts.add(handler)
        fuse_req_interrupt_func(pending.request, { request, data in
            guard let request, let core = fuse_req_userdata(request) else { return }
            Unmanaged<SessionCore>.fromOpaque(core).takeUnretainedValue().interrupts.fire(UInt(bitPattern: data))
        }, UnsafeMutableRawPointer(bitPattern: pending.interruptID))
    }

    public consuming func ok() { pending.answer { fuse_reply_err($0, 0) }; discard self }
    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// For lookup, mknod, mkdir, symlink and link.
public struct FuseEntryReply: ~Copyable, @unchecked Sendable {
    let pending: PendingRequest
    init(_ pending: PendingRequest) { self.pending = pending }

    public consuming func entry(_ entry: FuseEntry) {
        var e = entry.parameters
        pending.answer { fuse_reply_entry($0, &e) }
        discard self
    }

    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// For getattr and setattr.
public struct FuseAttributesReply: ~Copyable, @unchecked Sendable {
    let pending: PendingRequest
    init(_ pending: PendingRequest) { self.pending = pending }

    public consuming func attributes(_ attributes: FuseAttributes, timeoutSeconds: Double) {
        var s = attributes.stat
        pending.answer { fuse_reply_attr($0, &s, timeoutSeconds) }
        discard self
    }

    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// For read and readlink: the bytes go to the kernel straight from `data` (fuse_reply_buf).
public struct FuseDataReply: ~Copyable, @unchecked Sendable {
    let pending: PendingRequest
    init(_ pending: PendingRequest) { self.pending = pending }

    public consuming func data(_ data: [UInt8]) { pending.bytes(data); discard self }
    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// For open and opendir.
public struct FuseOpenReply: ~Copyable, @unchecked Sendable {
    let pending: PendingRequest
    init(_ pending: PendingRequest) { self.pending = pending }

    /// Returns false when the kernel no longer waits for this open (it was
    /// interrupted): no release will come for `handle`, so the caller must
    /// release it itself.
    @discardableResult
    public consuming func opened(handle: UInt64, options: FuseOpenOptions = []) -> Bool {
        var fi = options.fileInfo(handle: handle)
        let result = pending.answer { fuse_reply_open($0, &fi) }
        discard self
        return result == 0
    }

    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// For create.
public struct FuseCreateReply: ~Copyable, @unchecked Sendable {
    let pending: PendingRequest
    init(_ pending: PendingRequest) { self.pending = pending }

    /// Returns false when the kernel no longer waits for this create: no
    /// release will come for `handle`, so the caller must release it itself.
    @discardableResult
    public consuming func created(_ entry: FuseEntry, handle: UInt64, options: FuseOpenOptions = []) -> Bool {
        var e = entry.parameters
        var fi = options.fileInfo(handle: handle)
        let result = pending.answer { fuse_reply_create($0, &e, &fi) }
        discard self
        return result == 0
    }

    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// For write.
public struct FuseWriteReply: ~Copyable, @unchecked Sendable {
    let pending: PendingRequest
    init(_ pending: PendingRequest) { self.pending = pending }

    public consuming func written(_ count: UInt32) {
        pending.answer { fuse_reply_write($0, Int(count)) }
        discard self
    }

    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// For statfs.
public struct FuseStatisticsReply: ~Copyable, @unchecked Sendable {
    let pending: PendingRequest
    init(_ pending: PendingRequest) { self.pending = pending }

    public consuming func statistics(_ statistics: FuseStatistics) {
        var s = statistics.statvfs
        pending.answer { fuse_reply_statfs($0, &s) }
        discard self
    }

    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// For getxattr and listxattr: a size query (`size == 0` in the request) is
/// answered with `size`, anything else with `data` or ERANGE.
public struct FuseXattrReply: ~Copyable, @unchecked Sendable {
    let pending: PendingRequest
    init(_ pending: PendingRequest) { self.pending = pending }

    public consuming func size(_ count: UInt32) {
        pending.answer { fuse_reply_xattr($0, Int(count)) }
        discard self
    }

    public consuming func data(_ data: [UInt8]) { pending.bytes(data); discard self }
    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// For getlk: the conflicting lock, or F_UNLCK when there is none.
public struct FuseLockReply: ~Copyable, @unchecked Sendable {
    let pending: PendingRequest
    init(_ pending: PendingRequest) { self.pending = pending }

    public consuming func lock(_ lock: FuseLock) {
        var parameters = lock.parameters
        pending.answer { fuse_reply_lock($0, &parameters) }
        discard self
    }

    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// For readdir.
public struct FuseDirectoryReply: ~Copyable, @unchecked Sendable {
    let pending: PendingRequest
    /// The most bytes of packed entries the kernel accepts.
    public let sizeBytes: Int
    init(_ pending: PendingRequest, sizeBytes: Int) {
        self.pending = pending
        self.sizeBytes = sizeBytes
    }

    /// Packs entries with `fill` into a buffer of the kernel's size and sends
    /// it. An empty buffer tells the kernel the directory has no more entries.
    public consuming func entries(_ fill: (inout FuseDirectoryBuffer) -> Void) {
        pending.answer { request in
            withUnsafeTemporaryAllocation(byteCount: sizeBytes, alignment: 8) { memory in
                var buffer = FuseDirectoryBuffer(request: request, memory: memory)
                fill(&buffer)
                return fuse_reply_buf(request, memory.baseAddress?.assumingMemoryBound(to: CChar.self), buffer.usedBytes)
            }
        }
        discard self
    }

    public consuming func error(_ code: Int32) { pending.error(code); discard self }
    deinit { pending.error(EIO) }
}

/// The buffer a readdir reply is packed into; it exists only inside `FuseDirectoryReply.entries`.
public struct FuseDirectoryBuffer: ~Copyable {
    private let request: fuse_req_t
    private let memory: UnsafeMutableRawBufferPointer
    public private(set) var usedBytes = 0

    init(request: fuse_req_t, memory: UnsafeMutableRawBufferPointer) {
        self.request = request
        self.memory = memory
    }

    /// Adds one entry; `nextOffset` is the offset the kernel passes back to
    /// continue after it (never 0, which means "from the start"). Returns false,
    /// adding nothing, when the entry does not fit: the caller stops there and
    /// the kernel asks again from the last offset it got.
    public mutating func add(name: [UInt8], inode: UInt64, mode: UInt32, nextOffset: UInt64) -> Bool {
        var s = Glibc.stat()
        s.st_ino = ino_t(inode)
        s.st_mode = mode_t(mode)
        let remaining = memory.count - usedBytes
        let needed = withNulTerminated(name) { cName in
            // Only the type bits of st_mode and st_ino are used; the kernel learns the rest by lookup.
            fuse_add_direntry(request, memory.baseAddress!.advanced(by: usedBytes).assumingMemoryBound(to: CChar.self),
                              remaining, cName, &s, off_t(truncatingIfNeeded: nextOffset))
        }
        guard needed <= remaining else { return false }
        usedBytes += needed
        return true
    }
}

/// Calls `body` with `bytes` as a C string, on the stack for names of usual length.
func withNulTerminated<R>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) -> R) -> R {
    withUnsafeTemporaryAllocation(of: CChar.self, capacity: bytes.count + 1) { buffer in
        bytes.withUnsafeBytes { source in
            UnsafeMutableRawBufferPointer(buffer).copyMemory(from: source)
        }
        buffer[bytes.count] = 0
        return body(buffer.baseAddress!)
    }
}

/// Holds a reply until an asynchronous completion takes it. Escaping closures
/// cannot consume a captured noncopyable value, so a completion handler takes
/// the reply out of this box instead; taking it twice is a programmer error
/// and traps. A box dropped with its reply still inside answers EIO (through
/// the reply's deinit).
public final class FuseDeferredReply<Wrapped: ~Copyable & Sendable>: Sendable {
    private let slot: Mutex<Wrapped?>

    public init(_ reply: consuming Wrapped) {
        slot = Mutex(Optional(reply))
    }

    public func take() -> Wrapped {
        guard let reply = slot.withLock({ $0.take() }) else {
            preconditionFailure("a FUSE reply was taken twice: its completion ran more than once")
        }
        return reply
    }
}

/// The interrupt handlers of requests not answered yet, by number: libfuse
/// hands its interrupt callback a number, not an object, so a callback that
/// races with the answer finds nothing rather than freed memory.
final class InterruptHandlers: Sendable {
    private let handlers = Mutex<(next: UInt, byID: [UInt: @Sendable () -> Void])>((1, [:]))

    func add(_ handler: @escaping @Sendable () -> Void) -> UInt {
        handlers.withLock { state in
            let id = state.next
            state.next += 1
            state.byID[id] = handler
            return id
        }
    }

    func fire(_ id: UInt) { handlers.withLock { $0.byID.removeValue(forKey: id) }?() }

    func forget(_ id: UInt) { handlers.withLock { _ = $0.byID.removeValue(forKey: id) } }
}

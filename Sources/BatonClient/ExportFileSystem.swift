import BatonCore
import BatonFUSE
import Dispatch
import Glibc
import Synchronization

/// The client's file system: every FUSE request becomes one `Operation` for
/// the export's active server, and the server's `Reply` becomes the FUSE
/// answer. Requests never wait on libfuse's threads: the reply object goes
/// with the operation and is answered from the transport's completion.
///
/// Inode numbers, generations and directory cookies are the export's own (see
/// DESIGN.md §3), so they pass through unchanged and survive a failover.
public final class ExportFileSystem: FuseOperations {
    private let transport: any OperationTransport
    private let attributeTimeoutSeconds: Double
    private let entryTimeoutSeconds: Double
    private let wantsWritebackCache: Bool
    /// Whether the kernel agreed to writeback caching; set once at INIT, before any request.
    private let writebackCache = Atomic<Bool>(false)
    private let lookupCounts = LookupCounts()
    private let capabilities: CapabilityCache
    private let writesBehind: Mutex<WriteBehind<@Sendable (Int32?) -> Void>>
    /// The files and owners that took a record lock through this mount: only
    /// their closes cost a round trip to release locks (issue 12).
    private let fcntlLockers = Mutex<Set<FileOwner>>([])
    /// Drops the kernel's cache of a file this mount just locked (see `sendLock`), fills it from a prefetched window.
    private let cache: FuseCacheNotifier?
    /// Windows fetched around small reads, stored into the page cache (see `ReadPrefetch`).
    private let prefetch: Mutex<ReadPrefetch<@Sendable () -> Void>>
    /// Stores run here, one at a time, off the network threads: the kernel
    /// may wait for a page that a read answered by those threads unlocks.
    private let storeQueue = DispatchQueue(label: "baton.prefetch-store")
    /// Handles that may write, each a change under way until its release.
    private let changingHandles = Mutex<Set<FileHandle>>([])

    private struct FileHandle: Hashable {
        var inode: UInt64
        var handle: UInt64
    }

    private struct FileOwner: Hashable {
        var inode: UInt64
        var owner: UInt64
    }

    /// The preferred I/O size shown in `st_blksize`.
    static let blockSizeBytes: UInt32 = 4096
    /// The largest write the kernel sends; matches the wire's largest data block.
    static let maxWriteBytes = UInt32(WireLimits.maxDataBytes)

    public init(transport: any OperationTransport, attributeTimeoutSeconds: Double = 1.0,
                entryTimeoutSeconds: Double = 1.0, writebackCache: Bool = false, writeBehindBytes: Int = 0,
                prefetchWindowBytes: Int = 0, cache: FuseCacheNotifier? = nil) {
        self.transport = transport
        self.cache = cache
        // With writeback caching the kernel holds dirty pages the server has
        // not seen: a window stored over them would undo those writes.
        let window = writebackCache || cache == nil ? 0 : UInt64(max(0, prefetchWindowBytes))
        self.prefetch = Mutex(ReadPrefetch(windowBytes: window))
        self.writesBehind = Mutex(WriteBehind(windowBytes: writeBehindBytes))
        self.attributeTimeoutSeconds = attributeTimeoutSeconds
        self.entryTimeoutSeconds = entryTimeoutSeconds
        self.wantsWritebackCache = writebackCache
        self.capabilities = CapabilityCache(validity: .milliseconds(Int64(attributeTimeoutSeconds * 1000)))
    }

    // MARK: - Connection

    public func initialize(_ connection: inout FuseConnection) {
        // libfuse 3 always asks for big writes; max_write is what sets their size.
        connection.maxWriteBytes = Self.maxWriteBytes
        // Locks go to the server, which holds them for every client (issue 12).
        connection.enable([.asyncRead, .atomicOpenTruncate, .exportSupport, .parallelDirectoryOperations, .posixLocks, .flockLocks])
        // The server clears setuid/setgid bits only when asked: leave that to
        // the kernel, which then sends the mode change as a setattr.
        connection.disable(.handleKillPrivileges)
        if wantsWritebackCache {
            connection.enable(.writebackCache)
        } else {
            connection.disable(.writebackCache)
        }
        writebackCache.store(connection.wanted.contains(.writebackCache), ordering: .releasing)
    }

    /// The server keeps no per-client lookup counts, so there is nothing to tell it.
    /// The kernel dropped `lookups` references: at zero, the server may free
    /// the inode if it has no name and no open handle left (an orphan).
    public func forget(_ request: FuseRequest, inode: UInt64, lookups: UInt64) {
        guard lookupCounts.forget(inode, lookups) else { return }
        prefetch.withLock { $0.forget(inode) }
        transport.send(.forget(inode), caller: nil) { _ in }
    }

    // MARK: - Names

    public func lookup(_ request: FuseRequest, parent: UInt64, name: [UInt8], reply: consuming FuseEntryReply) {
        sendEntry(request, .lookup(parent: parent, name: FileName(name)), reply)
    }

    public func mknod(_ request: FuseRequest, parent: UInt64, name: [UInt8], mode: UInt32, rdev: UInt64,
                      reply: consuming FuseEntryReply) {
        sendEntry(request, .mknod(parent: parent, name: FileName(name), mode: mode, rdev: rdev, caller(request)), reply)
    }

    public func mkdir(_ request: FuseRequest, parent: UInt64, name: [UInt8], mode: UInt32,
                      reply: consuming FuseEntryReply) {
        sendEntry(request, .mkdir(parent: parent, name: FileName(name), mode: mode, caller(request)), reply)
    }

    public func symlink(_ request: FuseRequest, parent: UInt64, name: [UInt8], target: [UInt8],
                        reply: consuming FuseEntryReply) {
        sendEntry(request, .symlink(parent: parent, name: FileName(name), target: target, caller(request)), reply)
    }

    public func link(_ request: FuseRequest, inode: UInt64, newParent: UInt64, newName: [UInt8],
                     reply: consuming FuseEntryReply) {
        sendEntry(request, .link(inode, newParent: newParent, newName: FileName(newName)), reply)
    }

    public func unlink(_ request: FuseRequest, parent: UInt64, name: [UInt8], reply: consuming FuseEmptyReply) {
        sendDone(request, .unlink(parent: parent, name: FileName(name)), reply)
    }

    public func rmdir(_ request: FuseRequest, parent: UInt64, name: [UInt8], reply: consuming FuseEmptyReply) {
        sendDone(request, .rmdir(parent: parent, name: FileName(name)), reply)
    }

    public func rename(_ request: FuseRequest, parent: UInt64, name: [UInt8], newParent: UInt64, newName: [UInt8],
                       flags: UInt32, reply: consuming FuseEmptyReply) {
        sendDone(request, .rename(parent: parent, name: FileName(name), newParent: newParent, newName: FileName(newName),
                         flags: flags), reply)
    }

    // MARK: - Attributes

    public func getattr(_ request: FuseRequest, inode: UInt64, reply: consuming FuseAttributesReply) {
        sendAttributes(request, .getattr(inode), reply)
    }

    public func setattr(_ request: FuseRequest, inode: UInt64, changes: FuseAttributeChanges,
                        reply: consuming FuseAttributesReply) {
        let operation = Operation.setattr(inode, AttributeChanges(changes), caller(request))
        guard changes.sizeBytes != nil else { return sendAttributes(request, operation, reply) }
        // A size change: no window may be stored across it (see `ReadPrefetch`).
        let deferred = FuseDeferredReply(reply)
        whenChangeMayBegin(inode) { [self] in
            sendAttributes(request, operation, deferred.take()) { [self] in prefetch.withLock { $0.endChange(inode) } }
        }
    }

    public func readlink(_ request: FuseRequest, inode: UInt64, reply: consuming FuseDataReply) {
        send(request, .readlink(inode), reply) { reply, result in
            switch result {
            case .bytes(let target): reply.data(target)
            default: reply.error(errorCode(result))
            }
        }
    }

    public func statfs(_ request: FuseRequest, inode: UInt64, reply: consuming FuseStatisticsReply) {
        send(request, .statfs, reply) { reply, result in
            switch result {
            case .statfs(let s):
                reply.statistics(FuseStatistics(
                    blockSizeBytes: s.blockSize, fragmentSizeBytes: s.blockSize, blocks: s.totalBlocks,
                    blocksFree: s.freeBlocks, blocksAvailable: s.availableBlocks, files: s.totalInodes,
                    filesFree: s.freeInodes, maxNameLength: s.maxNameLength))
            default: reply.error(errorCode(result))
            }
        }
    }

    // MARK: - Files

    public func open(_ request: FuseRequest, inode: UInt64, flags: Int32, reply: consuming FuseOpenReply) {
        let operation = Operation.open(inode, flags: serverFlags(flags))
        guard flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0 else {
            return send(request, operation, reply) { [transport] reply, result in
                switch result {
                case .opened(let handle):
                    if !reply.opened(handle: handle) { transport.send(.release(inode, handle: handle), caller: nil) { _ in } }
                default: reply.error(errorCode(result))
                }
            }
        }
        // A handle that may write is a change until its release (see `ReadPrefetch`).
        let deferred = FuseDeferredReply(reply)
        whenChangeMayBegin(inode) { [self] in
            send(request, operation, deferred.take()) { [self] reply, result in
                switch result {
                case .opened(let handle):
                    changingHandles.withLock { _ = $0.insert(FileHandle(inode: inode, handle: handle)) }
                    if !reply.opened(handle: handle) { released(inode, handle: handle) }
                default:
                    prefetch.withLock { $0.endChange(inode) }
                    reply.error(errorCode(result))
                }
            }
        }
    }

    /// Runs `change` once no window is being stored into the file's pages.
    private func whenChangeMayBegin(_ inode: UInt64, _ change: @escaping @Sendable () -> Void) {
        if prefetch.withLock({ $0.beginChange(inode, change) }) { change() }
    }

    /// A handle the kernel will not release (its open was interrupted).
    private func released(_ inode: UInt64, handle: UInt64) {
        endChange(of: FileHandle(inode: inode, handle: handle))
        transport.send(.release(inode, handle: handle), caller: nil) { _ in }
    }

    private func endChange(of handle: FileHandle) {
        if changingHandles.withLock({ $0.remove(handle) }) != nil { prefetch.withLock { $0.endChange(handle.inode) } }
    }

    public func create(_ request: FuseRequest, parent: UInt64, name: [UInt8], mode: UInt32, flags: Int32,
                       reply: consuming FuseCreateReply) {
        let operation = Operation.create(parent: parent, name: FileName(name), mode: mode, flags: serverFlags(flags),
                                         caller(request))
        send(request, operation, reply) { [self] reply, result in
            switch result {
            case .created(let attributes, let handle):
                // Counted before the kernel can see it, so its FORGET never finds no count.
                lookupCounts.remember(attributes.inode)
                // A new file: no window of it can be under way, so its change begins at once.
                _ = prefetch.withLock { $0.beginChange(attributes.inode, {}) }
                changingHandles.withLock { _ = $0.insert(FileHandle(inode: attributes.inode, handle: handle)) }
                if !reply.created(entry(attributes), handle: handle) {
                    _ = lookupCounts.forget(attributes.inode, 1)
                    released(attributes.inode, handle: handle)
                }
            default: reply.error(errorCode(result))
            }
        }
    }

    public func read(_ request: FuseRequest, inode: UInt64, handle: UInt64, offset: UInt64, size: UInt32,
                     reply: consuming FuseDataReply) {
        guard let window = prefetch.withLock({ $0.fetch(inode, offset: offset, size: size) }) else {
            return send(request, .read(inode, handle: handle, offset: offset, size: size), reply) { reply, result in
                switch result {
                // More than asked for would make the kernel fail the read anyway.
                case .bytes(let data) where data.count <= Int(size): reply.data(data)
                default: reply.error(errorCode(result))
                }
            }
        }
        send(request, .read(inode, handle: handle, offset: window.start, size: window.length), reply) { [self] reply, result in
            guard case .bytes(let data) = result, data.count <= Int(window.length) else {
                prefetch.withLock { $0.abandon(window) }
                return reply.error(errorCode(result))
            }
            let asked = min(data.count, Int(offset - window.start))..<min(data.count, Int(offset - window.start) + Int(size))
            reply.data(Array(data[asked]))
            store(data, of: window, except: asked)
        }
    }

    /// Puts a fetched window into the kernel's page cache, but for the part
    /// just answered (the kernel fills those pages from the answer).
    private func store(_ data: [UInt8], of window: ReadPrefetch<@Sendable () -> Void>.Fetch, except asked: Range<Int>) {
        guard let cache else { return prefetch.withLock { $0.abandon(window) } }
        storeQueue.async { [self] in
            guard prefetch.withLock({ $0.beginStore(window) }) else { return }
            data.withUnsafeBytes { bytes in
                for part in [0..<asked.lowerBound, asked.upperBound..<bytes.count] where !part.isEmpty {
                    // An error (the kernel dropped the inode, the mount is going) leaves the pages to be read.
                    cache.store(inode: window.inode, offset: window.start + UInt64(part.lowerBound),
                                bytes: UnsafeRawBufferPointer(rebasing: bytes[part]))
                }
            }
            for change in prefetch.withLock({ $0.stored(window.inode) }) { change() }
        }
    }

    /// Answered at once when the write-behind window has room (see
    /// `WriteBehind`), else when the server has the write.
    public func write(_ request: FuseRequest, inode: UInt64, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer,
                      reply: consuming FuseWriteReply) {
        let size = data.count
        let (earlierError, early) = writesBehind.withLock { state -> (Int32?, Bool) in
            if let error = state.takeError(inode) { return (error, false) }
            return (nil, state.admit(inode, bytes: size))
        }
        if let earlierError { return reply.error(earlierError) }
        if early {
            // sendWrite has copied the data when it returns: the reply may go now.
            transport.sendWrite(inode, handle: handle, offset: offset, data: data) { [self] result in
                let failure: Int32? = if case .written(let count) = result, Int(count) == size { nil } else { errorCode(result) }
                let (waiters, error) = writesBehind.withLock { $0.finished(inode, bytes: size, error: failure) }
                for waiter in waiters { waiter(error) }
            }
            return reply.written(UInt32(size))
        }
        let deferred = FuseDeferredReply(reply)
        transport.sendWrite(inode, handle: handle, offset: offset, data: data) { result in
            let reply = deferred.take()
            switch result {
            case .written(let count) where Int(count) <= size: reply.written(count)
            default: reply.error(errorCode(result))
            }
        }
    }

    /// close(2) promises no durability, but it is where the file's writes
    /// answered early reach the server (close-to-open) and where their
    /// errors are reported.
    /// A close also ends the closing process's record locks on the file (POSIX).
    public func flush(_ request: FuseRequest, inode: UInt64, handle: UInt64, lockOwner: UInt64, reply: consuming FuseEmptyReply) {
        if fcntlLockers.withLock({ $0.remove(FileOwner(inode: inode, owner: lockOwner)) }) != nil {
            let owner = LockTable.Owner(session: 0, owner: lockOwner)
            transport.send(.releaseLocks(inode, owner: owner, family: .fcntl), caller: nil) { _ in }
        }
        whenWritesSettled(inode, reply) { reply, error in
            if let error { reply.error(error) } else { reply.ok() }
        }
    }

    /// Blocks until every write answered early has its server reply (each
    /// ends by its reply or the request timeout): run before the connection
    /// closes, so an unmount loses none of them.
    public func waitForWritesBehind() {
        while !writesBehind.withLock({ $0.isSettled }) { usleep(2_000) }
    }

    private func whenWritesSettled(_ inode: UInt64, _ reply: consuming FuseEmptyReply,
                                   _ answer: @escaping @Sendable (consuming FuseEmptyReply, Int32?) -> Void) {
        let deferred = FuseDeferredReply(reply)
        let settlement = writesBehind.withLock { $0.settle(inode) { error in answer(deferred.take(), error) } }
        if case .now(let error) = settlement { answer(deferred.take(), error) }
    }

    public func release(_ request: FuseRequest, inode: UInt64, handle: UInt64, flockOwner: UInt64?, reply: consuming FuseEmptyReply) {
        // Sent before the release on the same connection: the server keeps their order.
        if let flockOwner {
            let owner = LockTable.Owner(session: 0, owner: flockOwner)
            transport.send(.releaseLocks(inode, owner: owner, family: .flock), caller: nil) { _ in }
        }
        endChange(of: FileHandle(inode: inode, handle: handle))
        sendDone(request, .release(inode, handle: handle), reply)
    }

    // MARK: - Locks (issue 12): held by the server for every client of the export

    public func getlk(_ request: FuseRequest, inode: UInt64, lockOwner: UInt64, lock: FuseLock, reply: consuming FuseLockReply) {
        guard let range = lockRange(lock) else { return reply.error(EINVAL) }
        let asked = LockTable.Request(owner: LockTable.Owner(session: 0, owner: lockOwner), family: .fcntl,
                                      kind: lockKind(lock.type), range: range, pid: UInt32(bitPattern: lock.pid))
        send(request, .getLock(inode, asked), reply) { reply, result in
            switch result {
            case .lock(let held?):
                let length = held.range.end == .max ? 0 : held.range.end - held.range.start + 1
                reply.lock(FuseLock(type: held.kind == .exclusive ? Int32(F_WRLCK) : Int32(F_RDLCK), start: held.range.start,
                                    length: length, pid: Int32(bitPattern: held.pid)))
            case .lock(nil):
                reply.lock(FuseLock(type: Int32(F_UNLCK), start: lock.start, length: lock.length, pid: 0))
            default:
                reply.error(errorCode(result))
            }
        }
    }

    public func setlk(_ request: FuseRequest, inode: UInt64, lockOwner: UInt64, lock: FuseLock, sleep: Bool,
                      reply: consuming FuseEmptyReply) {
        guard let range = lockRange(lock) else { return reply.error(EINVAL) }
        let kind = lockKind(lock.type)
        if kind != nil { fcntlLockers.withLock { _ = $0.insert(FileOwner(inode: inode, owner: lockOwner)) } }
        let asked = LockTable.Request(owner: LockTable.Owner(session: 0, owner: lockOwner), family: .fcntl, kind: kind,
                                      range: range, pid: UInt32(bitPattern: lock.pid))
        sendLock(request, .setLock(inode, asked, wait: sleep), reply)
    }

    public func flock(_ request: FuseRequest, inode: UInt64, lockOwner: UInt64, operation: Int32, reply: consuming FuseEmptyReply) {
        let kind: LockTable.Kind?
        switch operation & ~LOCK_NB {
        case LOCK_SH: kind = .shared
        case LOCK_EX: kind = .exclusive
        case LOCK_UN: kind = nil
        default: return reply.error(EINVAL)
        }
        let asked = LockTable.Request(owner: LockTable.Owner(session: 0, owner: lockOwner), family: .flock, kind: kind,
                                      range: .wholeFile, pid: UInt32(bitPattern: request.pid))
        sendLock(request, .setLock(inode, asked, wait: operation & LOCK_NB == 0), reply)
    }

    /// A lock taken is also a promise to see what the last holder wrote: the
    /// kernel's cached pages and attributes of the file may predate another
    /// mount's changes, so they are dropped before the lock is granted (NFS
    /// does the same at a lock). Done off the network thread: the kernel may
    /// wait there for a read of the file whose answer that thread brings.
    /// A wait its process gives up (a signal: the kernel interrupts the
    /// request) is taken back at the server, which answers it EINTR.
    private func sendLock(_ request: FuseRequest, _ operation: Operation, _ reply: consuming FuseEmptyReply) {
        guard case .setLock(let inode, let asked, let wait) = operation, asked.kind != nil else {
            return sendDone(request, operation, reply)
        }
        let cancel = wait ? WaitCancel(transport, .cancelLockWait(inode, owner: asked.owner, family: asked.family)) : nil
        if let cancel { reply.onInterrupt { cancel.interrupted() } }
        send(request, operation, reply) { [self] reply, result in
            guard case .done = result else { return reply.error(errorCode(result)) }
            guard let cache else { return reply.ok() }
            let deferred = FuseDeferredReply(reply)
            DispatchQueue.global().async { [self] in
                // A change: a window fetched before the lock is not stored after the drop.
                whenChangeMayBegin(inode) { [self] in
                    cache.invalidate(inode: inode)
                    prefetch.withLock { $0.endChange(inode) }
                    deferred.take().ok()
                }
            }
        }
        cancel?.sent()
    }

    /// Sends a wait's cancel once the kernel interrupts it, never before the
    /// wait itself has gone (the server would find nothing to cancel).
    private final class WaitCancel: Sendable {
        private enum State { case sending, interruptedWhileSending, sent }
        private let state = Mutex(State.sending)
        private let transport: any OperationTransport
        private let cancel: Operation

        init(_ transport: any OperationTransport, _ cancel: Operation) {
            self.transport = transport
            self.cancel = cancel
        }

        func interrupted() {
            let now = state.withLock { state -> Bool in
                if state == .sent { return true }
                state = .interruptedWhileSending
                return false
            }
            if now { transport.send(cancel, caller: nil) { _ in } }
        }

        func sent() {
            let interrupted = state.withLock { state -> Bool in
                defer { state = .sent }
                return state == .interruptedWhileSending
            }
            if interrupted { transport.send(cancel, caller: nil) { _ in } }
        }
    }

    private func lockKind(_ type: Int32) -> LockTable.Kind? {
        switch type {
        case Int32(F_RDLCK): .shared
        case Int32(F_WRLCK): .exclusive
        default: nil
        }
    }

    /// The kernel gives absolute starts; a length of 0 runs to the end of the file.
    private func lockRange(_ lock: FuseLock) -> LockTable.Range? {
        guard lock.length > 0 else { return LockTable.Range(start: lock.start, end: .max) }
        let (end, overflow) = lock.start.addingReportingOverflow(lock.length)
        guard !overflow else { return nil }
        return LockTable.Range(start: lock.start, end: end - 1)
    }

    /// The server syncs after every write sent before; the file's writes
    /// answered early report their errors here too.
    public func fsync(_ request: FuseRequest, inode: UInt64, handle: UInt64, dataOnly: Bool,
                      reply: consuming FuseEmptyReply) {
        send(request, .fsync(inode), reply) { [self] reply, result in
            whenWritesSettled(inode, reply) { reply, error in
                if let error { return reply.error(error) }
                switch result {
                case .done: reply.ok()
                default: reply.error(errorCode(result))
                }
            }
        }
    }

    // MARK: - Directories

    /// Directory handles carry no server state: readdir continues from cookies.
    public func opendir(_ request: FuseRequest, inode: UInt64, flags: Int32, reply: consuming FuseOpenReply) {
        reply.opened(handle: 0)
    }

    public func readdir(_ request: FuseRequest, inode: UInt64, handle: UInt64, offset: UInt64,
                        reply: consuming FuseDirectoryReply) {
        let operation = Operation.readdir(inode, cookie: offset, maxBytes: UInt32(clamping: reply.sizeBytes))
        send(request, operation, reply) { reply, result in
            switch result {
            case .directory(let entries):
                reply.entries { buffer in
                    // Entries that do not fit are asked for again from the last cookie sent.
                    for entry in entries {
                        guard buffer.add(name: entry.name.bytes, inode: entry.inode, mode: entry.mode,
                                         nextOffset: entry.cookie) else { break }
                    }
                }
            default: reply.error(errorCode(result))
            }
        }
    }

    public func releasedir(_ request: FuseRequest, inode: UInt64, handle: UInt64, reply: consuming FuseEmptyReply) {
        reply.ok()
    }

    public func fsyncdir(_ request: FuseRequest, inode: UInt64, handle: UInt64, dataOnly: Bool,
                         reply: consuming FuseEmptyReply) {
        sendDone(request, .fsync(inode), reply)
    }

    // MARK: - Extended attributes

    public func setxattr(_ request: FuseRequest, inode: UInt64, name: [UInt8], value: [UInt8], flags: Int32,
                         reply: consuming FuseEmptyReply) {
        if name == CapabilityCache.name { capabilities.forget(inode) }
        sendDone(request, .setxattr(inode, name: FileName(name), value: value, flags: UInt32(bitPattern: flags)), reply)
    }

    public func getxattr(_ request: FuseRequest, inode: UInt64, name: [UInt8], size: UInt32,
                         reply: consuming FuseXattrReply) {
        let isCapability = name == CapabilityCache.name
        if isCapability && capabilities.knownAbsent(inode) { return reply.error(ENODATA) }
        send(request, .getxattr(inode, name: FileName(name), size: size), reply) { [capabilities] reply, result in
            if isCapability, result == .error(.ENODATA) { capabilities.rememberAbsent(inode) }
            answerXattr(reply, result, size: size)
        }
    }

    public func listxattr(_ request: FuseRequest, inode: UInt64, size: UInt32, reply: consuming FuseXattrReply) {
        send(request, .listxattr(inode, size: size), reply) { reply, result in
            answerXattr(reply, result, size: size)
        }
    }

    public func removexattr(_ request: FuseRequest, inode: UInt64, name: [UInt8], reply: consuming FuseEmptyReply) {
        if name == CapabilityCache.name { capabilities.forget(inode) }
        sendDone(request, .removexattr(inode, name: FileName(name)), reply)
    }

    // MARK: - Sending

    /// Sends `operation` and answers `reply` from the completion. The reply
    /// waits in a box because an escaping closure cannot consume it directly.
    private func send<R: ~Copyable & Sendable>(_ request: FuseRequest, _ operation: Operation, _ reply: consuming R,
                                               _ answer: @escaping @Sendable (consuming R, Reply) -> Void) {
        let deferred = FuseDeferredReply(reply)
        transport.send(operation, caller: Credentials(uid: request.uid, gid: request.gid)) { result in answer(deferred.take(), result) }
    }

    private func sendEntry(_ request: FuseRequest, _ operation: Operation, _ reply: consuming FuseEntryReply) {
        send(request, operation, reply) { [self] reply, result in
            switch result {
            case .entry(let attributes):
                lookupCounts.remember(attributes.inode)
                reply.entry(entry(attributes))
            default: reply.error(errorCode(result))
            }
        }
    }

    private func sendAttributes(_ request: FuseRequest, _ operation: Operation, _ reply: consuming FuseAttributesReply,
                                then answered: @escaping @Sendable () -> Void = {}) {
        send(request, operation, reply) { [attributeTimeoutSeconds] reply, result in
            switch result {
            case .attributes(let attributes):
                reply.attributes(FuseAttributes(attributes), timeoutSeconds: attributeTimeoutSeconds)
            default: reply.error(errorCode(result))
            }
            answered()
        }
    }

    private func sendDone(_ request: FuseRequest, _ operation: Operation, _ reply: consuming FuseEmptyReply) {
        send(request, operation, reply) { reply, result in
            switch result {
            case .done: reply.ok()
            default: reply.error(errorCode(result))
            }
        }
    }

    // MARK: - Conversions

    private func entry(_ attributes: FileAttributes) -> FuseEntry {
        FuseEntry(attributes: FuseAttributes(attributes), generation: attributes.generation,
                  attributeTimeoutSeconds: attributeTimeoutSeconds, entryTimeoutSeconds: entryTimeoutSeconds)
    }

    /// The open flags the server acts on. With writeback caching the kernel
    /// appends and reads back pages itself (as libfuse's passthrough_ll notes):
    /// O_APPEND must not reach the server, and a write-only open must also
    /// allow the kernel's reads of partial pages.
    private func serverFlags(_ flags: Int32) -> UInt32 {
        var serverFlags = UInt32(bitPattern: flags)
        if writebackCache.load(ordering: .acquiring) {
            serverFlags &= ~OpenFlags.append
            if serverFlags & OpenFlags.accessMask == OpenFlags.writeOnly {
                serverFlags = serverFlags & ~OpenFlags.accessMask | OpenFlags.readWrite
            }
        }
        return serverFlags
    }
}

private func caller(_ request: FuseRequest) -> Caller {
    Caller(uid: request.uid, gid: request.gid, umask: request.umask)
}

/// The errno for a reply that is not the expected success: the server's own
/// errno, or EIO for a reply of the wrong kind (a server bug must not crash
/// the mount).
private func errorCode(_ reply: Reply) -> Int32 {
    if case .error(let errno) = reply, errno.code > 0 { return errno.code }
    return EIO
}

/// getxattr and listxattr: a size query gets the size, whether the server
/// answered with the size or the whole value; a value larger than the
/// caller's buffer is ERANGE.
private func answerXattr(_ reply: consuming FuseXattrReply, _ result: Reply, size: UInt32) {
    switch result {
    case .size(let needed) where size == 0: reply.size(needed)
    case .bytes(let value) where size == 0: reply.size(UInt32(clamping: value.count))
    case .bytes(let value) where value.count > Int(size): reply.error(ERANGE)
    case .bytes(let value): reply.data(value)
    default: reply.error(errorCode(result))
    }
}

extension FuseAttributes {
    init(_ a: FileAttributes) {
        self.init(inode: a.inode, mode: a.mode, linkCount: a.linkCount, uid: a.uid, gid: a.gid, rdev: a.rdev,
                  sizeBytes: a.size, blocks: a.blocks, blockSizeBytes: ExportFileSystem.blockSizeBytes,
                  atime: FuseTime(a.atime), mtime: FuseTime(a.mtime), ctime: FuseTime(a.ctime))
    }
}

extension FuseTime {
    init(_ t: Timestamp) { self.init(seconds: t.seconds, nanoseconds: t.nanoseconds) }
}

extension Timestamp {
    init(_ t: FuseTime) { self.init(seconds: t.seconds, nanoseconds: t.nanoseconds) }
}

extension TimeChange {
    init(_ change: FuseTimeChange) {
        switch change {
        case .now: self = .now
        case .set(let t): self = .set(Timestamp(t))
        }
    }
}

extension AttributeChanges {
    init(_ c: FuseAttributeChanges) {
        self.init(mode: c.mode, uid: c.uid, gid: c.gid, size: c.sizeBytes, atime: c.atime.map(TimeChange.init),
                  mtime: c.mtime.map(TimeChange.init), ctime: c.ctime.map(Timestamp.init))
    }
}

/// How many references the kernel holds on each inode (FUSE's lookup count):
/// one per entry reply, minus what FORGET returns.
final class LookupCounts: Sendable {
    private let counts = Mutex<[UInt64: UInt64]>([:])

    func remember(_ inode: UInt64) {
        counts.withLock { $0[inode, default: 0] += 1 }
    }

    /// True when the count reaches zero.
    func forget(_ inode: UInt64, _ lookups: UInt64) -> Bool {
        counts.withLock { counts in
            let left = (counts[inode] ?? 0) - min(counts[inode] ?? 0, lookups)
            counts[inode] = left == 0 ? nil : left
            return left == 0
        }
    }
}

/// The kernel asks for `security.capability` before every write (to drop
/// file capabilities on write), which would double the round trips of small
/// writes. Its absence is remembered for as long as attributes are cached;
/// changes through this client forget it at once.
final class CapabilityCache: Sendable {
    static let name = Array("security.capability".utf8)
    private let validity: Duration
    private let absentSince = Mutex<[UInt64: ContinuousClock.Instant]>([:])
    /// Bounds the memory: past it, everything is forgotten.
    private static let maxEntries = 65536

    init(validity: Duration) { self.validity = validity }

    func knownAbsent(_ inode: UInt64) -> Bool {
        absentSince.withLock { entries in
            guard let since = entries[inode] else { return false }
            return ContinuousClock.now - since < validity
        }
    }

    func rememberAbsent(_ inode: UInt64) {
        absentSince.withLock { entries in
            if entries.count >= Self.maxEntries { entries.removeAll() }
            entries[inode] = .now
        }
    }

    func forget(_ inode: UInt64) {
        absentSince.withLock { _ = $0.removeValue(forKey: inode) }
    }
}

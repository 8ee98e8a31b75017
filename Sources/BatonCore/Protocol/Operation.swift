/// A file system operation as a client asks for it. Mutations are journaled
/// exactly as they arrive (the record is the operation plus the server's
/// stamp), so replaying them on any node gives the same namespace.
public enum Operation: Hashable, Sendable {
    // Queries: answered from the namespace, never journaled.
    case lookup(parent: InodeNumber, name: FileName)
    case getattr(InodeNumber)
    case readlink(InodeNumber)
    case read(InodeNumber, handle: UInt64, offset: UInt64, size: UInt32)
    case readdir(InodeNumber, cookie: UInt64, maxBytes: UInt32)
    case statfs
    case getxattr(InodeNumber, name: FileName, size: UInt32)
    case listxattr(InodeNumber, size: UInt32)
    /// Makes every acknowledged mutation durable on disk (fsync, fdatasync, syncfs).
    case fsync(InodeNumber)
    /// `F_GETLK`: the lock that keeps `request` from being granted (issue 12).
    case getLock(InodeNumber, LockTable.Request)

    // Mutations: journaled before they are acknowledged.
    case setattr(InodeNumber, AttributeChanges, Caller)
    case mknod(parent: InodeNumber, name: FileName, mode: UInt32, rdev: UInt64, Caller)
    case mkdir(parent: InodeNumber, name: FileName, mode: UInt32, Caller)
    case symlink(parent: InodeNumber, name: FileName, target: [UInt8], Caller)
    case link(InodeNumber, newParent: InodeNumber, newName: FileName)
    case unlink(parent: InodeNumber, name: FileName)
    case rmdir(parent: InodeNumber, name: FileName)
    case rename(parent: InodeNumber, name: FileName, newParent: InodeNumber, newName: FileName, flags: UInt32)
    case create(parent: InodeNumber, name: FileName, mode: UInt32, flags: UInt32, Caller)
    case open(InodeNumber, flags: UInt32)
    case release(InodeNumber, handle: UInt64)
    case write(InodeNumber, handle: UInt64, offset: UInt64, data: [UInt8])
    case setxattr(InodeNumber, name: FileName, value: [UInt8], flags: UInt32)
    case removexattr(InodeNumber, name: FileName)
    /// The client's kernel holds the inode no longer: an inode with no link
    /// and no open handle may now be freed (FUSE's FORGET, lookup count 0).
    case forget(InodeNumber)
    /// `F_SETLK`, `F_SETLKW`, `flock`: takes or releases a lock (issue 12).
    /// Journaled, so a lock held before a failover is held after it. With
    /// `wait`, a request that conflicts waits at the server and is journaled
    /// when it is granted; without, it is answered EAGAIN. A request's owner
    /// is in its session: the server sets the session, whatever the client says.
    case setLock(InodeNumber, LockTable.Request, wait: Bool)
    /// Every lock of one owner on the file: a close of it (FUSE's flush, for
    /// fcntl locks) or the last close of an open file description (release, for flock).
    case releaseLocks(InodeNumber, owner: LockTable.Owner, family: LockTable.Family)
    /// Every lock of a client session that stayed away for the lock lease
    /// (its mount ended without closing, its machine went). The server asks
    /// it of itself; a client's request of it is refused.
    case expireSessionLocks(session: UInt64)
    /// A waiting `setLock` whose process gave up (a signal: FUSE's interrupt):
    /// the wait is answered EINTR if it still waits. Waits live in the
    /// server's memory, so this is not journaled.
    case cancelLockWait(InodeNumber, owner: LockTable.Owner, family: LockTable.Family)

    /// Whether the operation needs new space on the node's disk: names and
    /// data. On a full disk these are refused first, so that the space kept
    /// aside serves those that free space or take none (unlink, rmdir,
    /// rename, open, release, a truncate): a full export can be cleaned up.
    public var takesSpace: Bool {
        switch self {
        case .mknod, .mkdir, .symlink, .link, .create, .write, .setxattr: true
        default: false
        }
    }

    /// Whether the operation changes the export's files, names or
    /// attributes: what a read-only client may not ask. Opening for reading,
    /// closing, forgetting and locking are journaled mutations, but change
    /// nothing a reader could see.
    public var modifiesExport: Bool {
        switch self {
        case .open(_, let flags): flags & OpenFlags.accessMask != 0 || flags & OpenFlags.truncate != 0
        case .release, .forget, .setLock, .releaseLocks, .expireSessionLocks: false
        default: isMutation
        }
    }

    /// Whether the operation changes the namespace and so goes into the journal.
    public var isMutation: Bool {
        switch self {
        case .lookup, .getattr, .readlink, .read, .readdir, .statfs, .getxattr, .listxattr, .fsync, .getLock, .cancelLockWait: false
        default: true
        }
    }
}

/// The server's answer to one operation.
public enum Reply: Hashable, Sendable {
    case error(Errno)
    case done
    case entry(FileAttributes)
    case attributes(FileAttributes)
    case created(FileAttributes, handle: UInt64)
    case opened(handle: UInt64)
    case written(count: UInt32)
    /// File data, link targets and extended attribute values.
    case bytes([UInt8])
    /// What `getLock` found: the conflicting lock, or nil (`F_UNLCK`).
    case lock(LockTable.Lock?)
    /// The size an extended attribute value or list would need (a `size: 0` query).
    case size(UInt32)
    case directory([DirectoryEntry])
    case statfs(FileSystemStatistics)
}

/// Limits on what a peer may send; a message beyond them is refused, not trusted.
public enum WireLimits {
    /// The largest frame: a 1 MiB write plus headers, with room to spare.
    public static let maxFrameBytes = 1 << 20 + 64 * 1024
    public static let maxDataBytes = 1 << 20
    public static let maxXattrValueBytes = 64 * 1024
    public static let maxSymlinkBytes = 4096
    public static let maxDirectoryEntries = 4096
}

extension Operation {
    /// The wire tag of `.write`, for a server that decodes write data in place.
    public static let writeTag = Tag.write.rawValue

    enum Tag: UInt8, CaseIterable {
        case lookup = 1, getattr, readlink, read, readdir, statfs, getxattr, listxattr, fsync, getLock, cancelLockWait
        case setattr = 20, mknod, mkdir, symlink, link, unlink, rmdir, rename, create, open, release, write, setxattr, removexattr
        case forget, setLock, releaseLocks, expireSessionLocks
    }

    /// Every operation's name (the FUSE operation's), for metrics by operation.
    public static let names: [String] = Tag.allCases.map { "\($0)" }

    /// This operation's name, one of `names` (a table: it is asked once per request).
    public var name: String { Self.namesByTag[Int(tag.rawValue)] }

    private static let namesByTag: [String] = {
        var names = [String](repeating: "unknown", count: 256)
        for tag in Tag.allCases { names[Int(tag.rawValue)] = "\(tag)" }
        return names
    }()

    var tag: Tag {
        switch self {
        case .lookup: .lookup
        case .getattr: .getattr
        case .readlink: .readlink
        case .read: .read
        case .readdir: .readdir
        case .statfs: .statfs
        case .getxattr: .getxattr
        case .listxattr: .listxattr
        case .fsync: .fsync
        case .setattr: .setattr
        case .mknod: .mknod
        case .mkdir: .mkdir
        case .symlink: .symlink
        case .link: .link
        case .unlink: .unlink
        case .rmdir: .rmdir
        case .rename: .rename
        case .create: .create
        case .open: .open
        case .release: .release
        case .write: .write
        case .setxattr: .setxattr
        case .removexattr: .removexattr
        case .forget: .forget
        case .getLock: .getLock
        case .cancelLockWait: .cancelLockWait
        case .setLock: .setLock
        case .releaseLocks: .releaseLocks
        case .expireSessionLocks: .expireSessionLocks
        }
    }

    public func encode(to w: inout ByteWriter) {
        switch self {
        case .lookup(let parent, let name): w.write(Tag.lookup.rawValue); w.write(parent); w.write(name)
        case .getattr(let ino): w.write(Tag.getattr.rawValue); w.write(ino)
        case .readlink(let ino): w.write(Tag.readlink.rawValue); w.write(ino)
        case .read(let ino, let handle, let offset, let size):
            w.write(Tag.read.rawValue); w.write(ino); w.write(handle); w.write(offset); w.write(size)
        case .readdir(let ino, let cookie, let maxBytes):
            w.write(Tag.readdir.rawValue); w.write(ino); w.write(cookie); w.write(maxBytes)
        case .statfs: w.write(Tag.statfs.rawValue)
        case .getxattr(let ino, let name, let size): w.write(Tag.getxattr.rawValue); w.write(ino); w.write(name); w.write(size)
        case .listxattr(let ino, let size): w.write(Tag.listxattr.rawValue); w.write(ino); w.write(size)
        case .fsync(let ino): w.write(Tag.fsync.rawValue); w.write(ino)
        case .setattr(let ino, let changes, let caller):
            w.write(Tag.setattr.rawValue); w.write(ino); w.write(changes); w.write(caller)
        case .mknod(let parent, let name, let mode, let rdev, let caller):
            w.write(Tag.mknod.rawValue); w.write(parent); w.write(name); w.write(mode); w.write(rdev); w.write(caller)
        case .mkdir(let parent, let name, let mode, let caller):
            w.write(Tag.mkdir.rawValue); w.write(parent); w.write(name); w.write(mode); w.write(caller)
        case .symlink(let parent, let name, let target, let caller):
            w.write(Tag.symlink.rawValue); w.write(parent); w.write(name); w.write(bytes: target); w.write(caller)
        case .link(let ino, let newParent, let newName):
            w.write(Tag.link.rawValue); w.write(ino); w.write(newParent); w.write(newName)
        case .unlink(let parent, let name): w.write(Tag.unlink.rawValue); w.write(parent); w.write(name)
        case .rmdir(let parent, let name): w.write(Tag.rmdir.rawValue); w.write(parent); w.write(name)
        case .rename(let parent, let name, let newParent, let newName, let flags):
            w.write(Tag.rename.rawValue); w.write(parent); w.write(name); w.write(newParent); w.write(newName); w.write(flags)
        case .create(let parent, let name, let mode, let flags, let caller):
            w.write(Tag.create.rawValue); w.write(parent); w.write(name); w.write(mode); w.write(flags); w.write(caller)
        case .open(let ino, let flags): w.write(Tag.open.rawValue); w.write(ino); w.write(flags)
        case .release(let ino, let handle): w.write(Tag.release.rawValue); w.write(ino); w.write(handle)
        case .write(let ino, let handle, let offset, let data):
            w.write(Tag.write.rawValue); w.write(ino); w.write(handle); w.write(offset); w.write(bytes: data)
        case .setxattr(let ino, let name, let value, let flags):
            w.write(Tag.setxattr.rawValue); w.write(ino); w.write(name); w.write(bytes: value); w.write(flags)
        case .removexattr(let ino, let name): w.write(Tag.removexattr.rawValue); w.write(ino); w.write(name)
        case .forget(let ino): w.write(Tag.forget.rawValue); w.write(ino)
        case .getLock(let ino, let request): w.write(Tag.getLock.rawValue); w.write(ino); w.write(request)
        case .setLock(let ino, let request, let wait): w.write(Tag.setLock.rawValue); w.write(ino); w.write(request); w.write(wait)
        case .releaseLocks(let ino, let owner, let family):
            w.write(Tag.releaseLocks.rawValue); w.write(ino); w.write(owner.session); w.write(owner.owner); w.write(family.rawValue)
        case .expireSessionLocks(let session): w.write(Tag.expireSessionLocks.rawValue); w.write(session)
        case .cancelLockWait(let ino, let owner, let family):
            w.write(Tag.cancelLockWait.rawValue); w.write(ino); w.write(owner.session); w.write(owner.owner); w.write(family.rawValue)
        }
    }

    public static func decode(from r: inout ByteReader) throws(DecodeError) -> Operation {
        let tag = try r.readTag(Tag.self, kind: "operation")
        switch tag {
        case .lookup: return .lookup(parent: try r.readUInt64(), name: try r.readName())
        case .getattr: return .getattr(try r.readUInt64())
        case .readlink: return .readlink(try r.readUInt64())
        case .read:
            return .read(try r.readUInt64(), handle: try r.readUInt64(), offset: try r.readUInt64(), size: try r.readUInt32())
        case .readdir: return .readdir(try r.readUInt64(), cookie: try r.readUInt64(), maxBytes: try r.readUInt32())
        case .statfs: return .statfs
        case .getxattr: return .getxattr(try r.readUInt64(), name: try r.readName(), size: try r.readUInt32())
        case .listxattr: return .listxattr(try r.readUInt64(), size: try r.readUInt32())
        case .fsync: return .fsync(try r.readUInt64())
        case .setattr: return .setattr(try r.readUInt64(), try r.readChanges(), try r.readCaller())
        case .mknod:
            return .mknod(parent: try r.readUInt64(), name: try r.readName(), mode: try r.readUInt32(),
                          rdev: try r.readUInt64(), try r.readCaller())
        case .mkdir: return .mkdir(parent: try r.readUInt64(), name: try r.readName(), mode: try r.readUInt32(), try r.readCaller())
        case .symlink:
            return .symlink(parent: try r.readUInt64(), name: try r.readName(),
                            target: try r.readBytes(limit: WireLimits.maxSymlinkBytes, kind: "symlink target"), try r.readCaller())
        case .link: return .link(try r.readUInt64(), newParent: try r.readUInt64(), newName: try r.readName())
        case .unlink: return .unlink(parent: try r.readUInt64(), name: try r.readName())
        case .rmdir: return .rmdir(parent: try r.readUInt64(), name: try r.readName())
        case .rename:
            return .rename(parent: try r.readUInt64(), name: try r.readName(), newParent: try r.readUInt64(),
                           newName: try r.readName(), flags: try r.readUInt32())
        case .create:
            return .create(parent: try r.readUInt64(), name: try r.readName(), mode: try r.readUInt32(),
                           flags: try r.readUInt32(), try r.readCaller())
        case .open: return .open(try r.readUInt64(), flags: try r.readUInt32())
        case .release: return .release(try r.readUInt64(), handle: try r.readUInt64())
        case .write:
            return .write(try r.readUInt64(), handle: try r.readUInt64(), offset: try r.readUInt64(),
                          data: try r.readBytes(limit: WireLimits.maxDataBytes, kind: "write data"))
        case .setxattr:
            return .setxattr(try r.readUInt64(), name: try r.readName(),
                             value: try r.readBytes(limit: WireLimits.maxXattrValueBytes, kind: "xattr value"), flags: try r.readUInt32())
        case .removexattr: return .removexattr(try r.readUInt64(), name: try r.readName())
        case .forget: return .forget(try r.readUInt64())
        case .getLock: return .getLock(try r.readUInt64(), try r.readLockRequest())
        case .setLock: return .setLock(try r.readUInt64(), try r.readLockRequest(), wait: try r.readBool())
        case .releaseLocks:
            return .releaseLocks(try r.readUInt64(), owner: LockTable.Owner(session: try r.readUInt64(), owner: try r.readUInt64()),
                                 family: try r.readLockFamily())
        case .expireSessionLocks: return .expireSessionLocks(session: try r.readUInt64())
        case .cancelLockWait:
            return .cancelLockWait(try r.readUInt64(), owner: LockTable.Owner(session: try r.readUInt64(), owner: try r.readUInt64()),
                                   family: try r.readLockFamily())
        }
    }
}

extension Reply {
    /// Wire tags; public so a server can frame read data in place.
    public enum Tag: UInt8 {
        case error = 1, done, entry, attributes, created, opened, written, bytes, size, directory, statfs, lock
    }

    public func encode(to w: inout ByteWriter) {
        switch self {
        case .error(let errno): w.write(Tag.error.rawValue); w.write(errno.code)
        case .done: w.write(Tag.done.rawValue)
        case .entry(let attributes): w.write(Tag.entry.rawValue); w.write(attributes)
        case .attributes(let attributes): w.write(Tag.attributes.rawValue); w.write(attributes)
        case .created(let attributes, let handle): w.write(Tag.created.rawValue); w.write(attributes); w.write(handle)
        case .opened(let handle): w.write(Tag.opened.rawValue); w.write(handle)
        case .written(let count): w.write(Tag.written.rawValue); w.write(count)
        case .bytes(let bytes): w.write(Tag.bytes.rawValue); w.write(bytes: bytes)
        case .size(let size): w.write(Tag.size.rawValue); w.write(size)
        case .directory(let entries):
            w.write(Tag.directory.rawValue)
            w.write(UInt32(entries.count))
            for entry in entries {
                w.write(entry.name); w.write(entry.inode); w.write(entry.mode); w.write(entry.cookie)
            }
        case .lock(let held):
            w.write(Tag.lock.rawValue)
            w.write(held != nil)
            if let held {
                w.write(held.owner.session); w.write(held.owner.owner); w.write(held.family.rawValue); w.write(held.kind.rawValue)
                w.write(held.range.start); w.write(held.range.end); w.write(held.pid)
            }
        case .statfs(let s):
            w.write(Tag.statfs.rawValue)
            w.write(s.blockSize); w.write(s.totalBlocks); w.write(s.freeBlocks); w.write(s.availableBlocks)
            w.write(s.totalInodes); w.write(s.freeInodes); w.write(s.maxNameLength)
        }
    }

    public static func decode(from r: inout ByteReader) throws(DecodeError) -> Reply {
        let tag = try r.readTag(Tag.self, kind: "reply")
        switch tag {
        case .error: return .error(Errno(try r.readInt32()))
        case .done: return .done
        case .entry: return .entry(try r.readAttributes())
        case .attributes: return .attributes(try r.readAttributes())
        case .created: return .created(try r.readAttributes(), handle: try r.readUInt64())
        case .opened: return .opened(handle: try r.readUInt64())
        case .written: return .written(count: try r.readUInt32())
        case .bytes: return .bytes(try r.readBytes(limit: WireLimits.maxDataBytes, kind: "reply data"))
        case .size: return .size(try r.readUInt32())
        case .directory:
            let count = Int(try r.readUInt32())
            guard count <= WireLimits.maxDirectoryEntries else {
                throw .tooLarge(kind: "directory listing", size: count, limit: WireLimits.maxDirectoryEntries)
            }
            var entries: [DirectoryEntry] = []
            entries.reserveCapacity(count)
            for _ in 0..<count {
                entries.append(DirectoryEntry(name: try r.readName(), inode: try r.readUInt64(), mode: try r.readUInt32(),
                                              cookie: try r.readUInt64()))
            }
            return .directory(entries)
        case .lock:
            guard try r.readBool() else { return .lock(nil) }
            let owner = LockTable.Owner(session: try r.readUInt64(), owner: try r.readUInt64())
            let family = try r.readLockFamily(), kind = try r.readLockKind()
            return .lock(LockTable.Lock(owner: owner, family: family, kind: kind, range: try r.readLockRange(), pid: try r.readUInt32()))
        case .statfs:
            return .statfs(FileSystemStatistics(
                blockSize: try r.readUInt32(), totalBlocks: try r.readUInt64(), freeBlocks: try r.readUInt64(),
                availableBlocks: try r.readUInt64(), totalInodes: try r.readUInt64(), freeInodes: try r.readUInt64(),
                maxNameLength: try r.readUInt32()))
        }
    }
}

// MARK: - Field codecs shared by operations, replies, records and checkpoints

extension ByteWriter {
    public mutating func write(_ name: FileName) { write(bytes: name.bytes) }

    public mutating func write(_ t: Timestamp) { write(t.seconds); write(t.nanoseconds) }

    public mutating func write(_ c: Caller) { write(c.uid); write(c.gid); write(c.umask) }

    public mutating func write(_ a: FileAttributes) {
        write(a.inode); write(a.generation); write(a.mode); write(a.linkCount); write(a.uid); write(a.gid)
        write(a.rdev); write(a.size); write(a.atime); write(a.mtime); write(a.ctime); write(a.blocks)
    }

    mutating func write(_ change: TimeChange?) {
        switch change {
        case nil: write(UInt8(0))
        case .now: write(UInt8(1))
        case .set(let t): write(UInt8(2)); write(t)
        }
    }

    mutating func write(_ c: AttributeChanges) {
        var present: UInt8 = 0
        if c.mode != nil { present |= 1 }
        if c.uid != nil { present |= 2 }
        if c.gid != nil { present |= 4 }
        if c.size != nil { present |= 8 }
        if c.ctime != nil { present |= 16 }
        write(present)
        if let mode = c.mode { write(mode) }
        if let uid = c.uid { write(uid) }
        if let gid = c.gid { write(gid) }
        if let size = c.size { write(size) }
        if let ctime = c.ctime { write(ctime) }
        write(c.atime)
        write(c.mtime)
    }
}

extension ByteWriter {
    mutating func write(_ request: LockTable.Request) {
        write(request.owner.session); write(request.owner.owner); write(request.family.rawValue)
        write(request.kind?.rawValue ?? 0); write(request.range.start); write(request.range.end); write(request.pid)
    }
}

extension ByteReader {
    mutating func readLockFamily() throws(DecodeError) -> LockTable.Family {
        let raw = try readUInt8()
        guard let family = LockTable.Family(rawValue: raw) else { throw .unknownTag(kind: "lock family", tag: UInt32(raw)) }
        return family
    }

    mutating func readLockKind() throws(DecodeError) -> LockTable.Kind {
        let raw = try readUInt8()
        guard let kind = LockTable.Kind(rawValue: raw) else { throw .unknownTag(kind: "lock kind", tag: UInt32(raw)) }
        return kind
    }

    mutating func readLockRange() throws(DecodeError) -> LockTable.Range {
        let start = try readUInt64(), end = try readUInt64()
        guard start <= end else { throw .invalid("lock range \(start)-\(end) ends before it starts") }
        return LockTable.Range(start: start, end: end)
    }

    mutating func readLockRequest() throws(DecodeError) -> LockTable.Request {
        let owner = LockTable.Owner(session: try readUInt64(), owner: try readUInt64())
        let family = try readLockFamily()
        let rawKind = try readUInt8()
        var kind: LockTable.Kind?
        if rawKind != 0 {
            guard let taken = LockTable.Kind(rawValue: rawKind) else { throw .unknownTag(kind: "lock kind", tag: UInt32(rawKind)) }
            kind = taken
        }
        return LockTable.Request(owner: owner, family: family, kind: kind, range: try readLockRange(), pid: try readUInt32())
    }
}

extension ByteReader {
    public mutating func readName() throws(DecodeError) -> FileName {
        // One byte over NAME_MAX is let through so the namespace can answer ENAMETOOLONG.
        let bytes = try readBytes(limit: FileName.maxLength + 1, kind: "file name")
        return FileName(bytes)
    }

    public mutating func readTimestamp() throws(DecodeError) -> Timestamp {
        Timestamp(seconds: try readInt64(), nanoseconds: try readUInt32())
    }

    public mutating func readCaller() throws(DecodeError) -> Caller {
        Caller(uid: try readUInt32(), gid: try readUInt32(), umask: try readUInt32())
    }

    public mutating func readAttributes() throws(DecodeError) -> FileAttributes {
        var attributes = FileAttributes(
            inode: try readUInt64(), generation: try readUInt64(), mode: try readUInt32(), linkCount: try readUInt32(),
            uid: try readUInt32(), gid: try readUInt32(), rdev: try readUInt64(), size: try readUInt64(),
            atime: try readTimestamp(), mtime: try readTimestamp(), ctime: try readTimestamp())
        attributes.blocks = try readUInt64()
        return attributes
    }

    mutating func readTimeChange() throws(DecodeError) -> TimeChange? {
        switch try readUInt8() {
        case 0: return nil
        case 1: return .now
        case 2: return .set(try readTimestamp())
        case let other: throw .unknownTag(kind: "time change", tag: UInt32(other))
        }
    }

    mutating func readChanges() throws(DecodeError) -> AttributeChanges {
        let present = try readUInt8()
        var c = AttributeChanges()
        if present & 1 != 0 { c.mode = try readUInt32() }
        if present & 2 != 0 { c.uid = try readUInt32() }
        if present & 4 != 0 { c.gid = try readUInt32() }
        if present & 8 != 0 { c.size = try readUInt64() }
        if present & 16 != 0 { c.ctime = try readTimestamp() }
        c.atime = try readTimeChange()
        c.mtime = try readTimeChange()
        return c
    }
}

extension Operation {
    /// The lock operation with its owner in `session`, the one it came on: a
    /// client names only its own owners (the others' are not its to release).
    public func inSession(_ session: UInt64) -> Operation {
        switch self {
        case .getLock(let ino, var request):
            request.owner.session = session
            return .getLock(ino, request)
        case .setLock(let ino, var request, let wait):
            request.owner.session = session
            return .setLock(ino, request, wait: wait)
        case .releaseLocks(let ino, var owner, let family):
            owner.session = session
            return .releaseLocks(ino, owner: owner, family: family)
        case .cancelLockWait(let ino, var owner, let family):
            owner.session = session
            return .cancelLockWait(ino, owner: owner, family: family)
        default:
            return self
        }
    }

    /// A lock request answered when another owner lets go, however long
    /// that takes: no request timeout applies to it.
    public var waitsForOtherOwners: Bool {
        if case .setLock(_, let request, wait: true) = self { request.kind != nil } else { false }
    }
}

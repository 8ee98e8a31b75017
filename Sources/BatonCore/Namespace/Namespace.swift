/// The export's namespace: every inode, directory entry, attribute, extended
/// attribute, open handle and cached reply. A pure, deterministic state
/// machine: applying the same journal records in the same order gives the same
/// state on any node. File contents are not held here: the IO shell writes
/// file data itself (at the offset `writeOffset` names) and carries out the
/// `DataEffect`s (truncations, removals) that applying a record yields.
public struct Namespace: Sendable {
    struct Inode: Hashable, Sendable {
        var attributes: FileAttributes
        /// The directory holding a directory (for ".." and the rename loop check).
        var parent: InodeNumber
        var directory: Directory?
        var symlinkTarget: [UInt8]?
        var xattrs: [FileName: [UInt8]] = [:]
        var openHandles = 0
    }

    struct Handle: Hashable, Sendable {
        var inode: InodeNumber
        var flags: UInt32
    }

    var inodes: [InodeNumber: Inode] = [:]
    var handles: [UInt64: Handle] = [:]
    var nextInode: InodeNumber = rootInode + 1
    var nextHandle: UInt64 = 1
    var replyCache = ReplyCache()
    /// Every client's locks (issue 12): journaled state, like the files.
    public internal(set) var locks = LockTable()
    /// The sequence of the last journal record applied.
    public internal(set) var appliedSequence: UInt64 = 0
    /// The epoch of the last journal record applied.
    public internal(set) var appliedEpoch: UInt64 = 0

    /// Limits that make bad input an error instead of unbounded growth.
    public static let maxLinkCount: UInt32 = 65000
    public static let maxFileSizeBytes: UInt64 = 1 << 62
    public static let maxXattrsPerInode = 1024
    /// Locks of every client together: a client that takes ever more cannot exhaust the server's memory.
    public static let maxLocks = 1 << 20

    /// A new export: an empty root directory owned by root, mode 0755.
    public init(createdAt time: Timestamp = .zero) {
        var root = Inode(
            attributes: FileAttributes(inode: rootInode, generation: 1, mode: Mode.directory | 0o755, linkCount: 2,
                                       uid: 0, gid: 0, rdev: 0, size: 0, atime: time, mtime: time, ctime: time),
            parent: rootInode)
        root.directory = Directory()
        inodes[rootInode] = root
    }

    /// What applying a mutation did: the reply for the client and the changes to file data.
    public struct Outcome: Hashable, Sendable {
        public var reply: Reply
        public var effects: [DataEffect]
    }

    public var inodeCount: Int { inodes.count }
    public var cachedReplyCount: Int { replyCache.count }

    // MARK: - Queries

    /// The first reply to a request that was applied already, if it is still cached.
    public func cachedReply(session: UInt64, request: UInt64) -> Reply? {
        replyCache.reply(session: session, request: request)
    }

    /// The client confirmed every reply below `request`; they need no caching.
    public mutating func forgetReplies(session: UInt64, below request: UInt64) {
        replyCache.forget(session: session, below: request)
    }

    public func attributes(of inode: InodeNumber) -> FileAttributes? { inodes[inode]?.attributes }

    /// Every regular file and its size, for a full copy to a standby.
    public var regularFiles: [(InodeNumber, UInt64)] {
        inodes.filter { Mode.isRegular($0.value.attributes.mode) }.map { ($0.key, $0.value.attributes.size) }.sorted { $0.0 < $1.0 }
    }

    /// Answers a query (an operation that is not a mutation). `.read`, `.fsync`
    /// and `.statfs` need the node's disk: the core only checks them and the IO
    /// shell answers.
    public func query(_ operation: Operation) -> Reply {
        switch operation {
        case .lookup(let parent, let name):
            return result { try .entry(attributes(of: lookup(parent, name))) }
        case .getattr(let ino):
            return result { try .attributes(existing(ino).attributes) }
        case .readlink(let ino):
            return result {
                guard let target = try existing(ino).symlinkTarget else { throw Errno.EINVAL }
                return .bytes(target)
            }
        case .read(let ino, _, _, _):
            return result { _ = try readableSize(ino); return .done }
        case .readdir(let ino, let cookie, let maxBytes):
            return result { try .directory(readdir(ino, after: cookie, maxBytes: maxBytes)) }
        case .statfs, .fsync:
            return .done
        case .cancelLockWait:
            // Waits are the server's, in memory: nothing of the namespace changes.
            return .done
        case .getLock(let ino, let request):
            return result {
                _ = try existing(ino)
                guard !locks.hasLost(request.owner.session, ino) else { throw Errno.EIO }
                return .lock(locks.conflict(ino, with: request))
            }
        case .getxattr(let ino, let name, let size):
            return result {
                guard let value = try existing(ino).xattrs[name] else { throw Errno.ENODATA }
                return try sized(value, limit: size)
            }
        case .listxattr(let ino, let size):
            return result {
                var list: [UInt8] = []
                for name in try existing(ino).xattrs.keys.sorted(by: { $0.bytes.lexicographicallyPrecedes($1.bytes) }) {
                    list += name.bytes + [0]
                }
                return try sized(list, limit: size)
            }
        default:
            preconditionFailure("query called with mutation \(operation)")
        }
    }

    /// The size of a regular file that may be read.
    public func readableSize(_ ino: InodeNumber) throws(Errno) -> UInt64 {
        let inode = try existing(ino)
        if Mode.isDirectory(inode.attributes.mode) { throw .EISDIR }
        guard Mode.isRegular(inode.attributes.mode) else { throw .EINVAL }
        return inode.attributes.size
    }

    // MARK: - Mutations

    /// Applies one journal record. Records must come in sequence order.
    public mutating func apply(_ record: JournalRecord) -> Outcome {
        precondition(record.sequence == appliedSequence + 1,
                     "journal record \(record.sequence) applied after \(appliedSequence)")
        appliedSequence = record.sequence
        appliedEpoch = max(appliedEpoch, record.epoch)
        var effects: [DataEffect] = []
        let reply: Reply
        do {
            reply = try mutate(record.operation, writeCount: record.writeCount, at: record.time, effects: &effects)
        } catch {
            reply = .error(error)
            effects = []
        }
        replyCache.remember(reply, session: record.session, request: record.requestSequence, at: record.sequence)
        return Outcome(reply: reply, effects: effects)
    }

    private mutating func mutate(_ operation: Operation, writeCount: UInt32, at now: Timestamp,
                                 effects: inout [DataEffect]) throws(Errno) -> Reply {
        switch operation {
        case .setattr(let ino, let changes, let caller):
            return .attributes(try setattr(ino, changes, caller, now, &effects))
        case .mknod(let parent, let name, let mode, let rdev, let caller):
            let type = Mode.type(mode)
            guard [Mode.regular, Mode.fifo, Mode.characterDevice, Mode.blockDevice, Mode.socket].contains(type) else {
                throw .EINVAL
            }
            return .entry(try makeInode(in: parent, name, mode: mode, rdev: rdev, caller, now))
        case .mkdir(let parent, let name, let mode, let caller):
            return .entry(try makeInode(in: parent, name, mode: Mode.directory | (mode & Mode.permissionMask), caller, now))
        case .symlink(let parent, let name, let target, let caller):
            guard !target.isEmpty else { throw .ENOENT }
            let ino = try makeInode(in: parent, name, mode: Mode.symlink | 0o777, caller, now).inode
            inodes[ino]!.symlinkTarget = target
            inodes[ino]!.attributes.size = UInt64(target.count)
            return .entry(inodes[ino]!.attributes)
        case .link(let ino, let newParent, let newName):
            return .entry(try link(ino, newParent, newName, now))
        case .unlink(let parent, let name):
            try unlink(parent, name, now)
            return .done
        case .rmdir(let parent, let name):
            try rmdir(parent, name, now)
            return .done
        case .rename(let parent, let name, let newParent, let newName, let flags):
            try rename(parent, name, newParent, newName, flags, now)
            return .done
        case .create(let parent, let name, let mode, let flags, let caller):
            return try create(parent, name, mode: mode, flags: flags, caller, now, &effects)
        case .open(let ino, let flags):
            return .opened(handle: try open(ino, flags: flags, now, &effects))
        case .release(let ino, let handle):
            try release(ino, handle: handle)
            return .done
        case .write(let ino, let handle, let offset, _):
            return .written(count: try write(ino, handle: handle, offset: offset, count: writeCount, now))
        case .setxattr(let ino, let name, let value, let flags):
            try setxattr(ino, name, value, flags: flags, now)
            return .done
        case .setLock(let ino, let request, _):
            _ = try existing(ino)
            // A lock may split one in two: past the limit, only releases and whole-range changes go.
            if request.kind != nil, locks.count >= Self.maxLocks { throw .ENOLCK }
            // Its lease ran out: the client learns it lost the file's locks (`LockTable.lost`).
            if locks.hasLost(request.owner.session, ino) { throw .EIO }
            // The server journals only what it can grant; a conflict here replays as it was answered.
            guard case .granted = locks.apply(ino, request, at: now) else { throw .EAGAIN }
            return .done
        case .releaseLocks(let ino, let owner, let family):
            _ = try existing(ino)
            locks.release(ino, owner: owner, family: family)
            return .done
        case .expireSessionLocks(let session):
            locks.expireSession(session)
            return .done
        case .forget(let ino):
            if isOrphan(ino) {
                locks.forget(ino)
                let inode = inodes.removeValue(forKey: ino)!
                if Mode.isRegular(inode.attributes.mode) { effects.append(.remove(ino)) }
            }
            return .done
        case .removexattr(let ino, let name):
            try checkXattrName(name)
            guard inodes[ino] != nil else { throw .ESTALE }
            guard inodes[ino]!.xattrs.removeValue(forKey: name) != nil else { throw .ENODATA }
            inodes[ino]!.attributes.ctime = now
            return .done
        default:
            preconditionFailure("apply called with query \(operation)")
        }
    }

    // MARK: - Lookup helpers

    /// ESTALE for an inode number the export no longer has: another client
    /// removed the file this client's kernel still has a name cached for.
    /// The kernel then looks the name up again and retries (as over NFS);
    /// ENOENT would fail an open of a file that exists under that name now.
    private func existing(_ ino: InodeNumber) throws(Errno) -> Inode {
        guard let inode = inodes[ino] else { throw .ESTALE }
        return inode
    }

    private func directory(_ ino: InodeNumber) throws(Errno) -> Directory {
        guard let directory = try existing(ino).directory else { throw .ENOTDIR }
        return directory
    }

    private func checkName(_ name: FileName) throws(Errno) {
        guard name.bytes.count <= FileName.maxLength else { throw .ENAMETOOLONG }
        guard !name.bytes.isEmpty, !name.bytes.contains(UInt8(ascii: "/")), !name.bytes.contains(0) else { throw .EINVAL }
    }

    private static let dot = FileName(".")
    private static let dotDot = FileName("..")

    private func lookup(_ parent: InodeNumber, _ name: FileName) throws(Errno) -> InodeNumber {
        let directory = try directory(parent)
        try checkName(name)
        if name == Self.dot { return parent }
        if name == Self.dotDot { return inodes[parent]!.parent }
        guard let ino = directory[name] else { throw .ENOENT }
        return ino
    }

    private func attributes(of ino: InodeNumber) -> FileAttributes { inodes[ino]!.attributes }

    /// A new entry's name must be valid, not "." or "..", and free.
    private func checkNewEntry(_ parent: InodeNumber, _ name: FileName) throws(Errno) {
        let directory = try directory(parent)
        // A removed directory (still someone's working directory) takes no new entries.
        guard inodes[parent]!.attributes.linkCount > 0 else { throw .ENOENT }
        try checkName(name)
        if name == Self.dot || name == Self.dotDot || directory[name] != nil { throw .EEXIST }
    }

    private func sized(_ value: [UInt8], limit: UInt32) throws(Errno) -> Reply {
        if limit == 0 { return .size(UInt32(value.count)) }
        guard value.count <= Int(limit) else { throw .ERANGE }
        return .bytes(value)
    }

    private func result(_ body: () throws -> Reply) -> Reply {
        do { return try body() } catch let error as Errno { return .error(error) } catch {
            preconditionFailure("namespace query threw \(error)")
        }
    }

    private func readdir(_ ino: InodeNumber, after cookie: UInt64, maxBytes: UInt32) throws(Errno) -> [DirectoryEntry] {
        let directory = try directory(ino)
        var listing: [DirectoryEntry] = []
        var bytes = 0
        func add(_ entry: DirectoryEntry) -> Bool {
            // The size of a FUSE dirent, so the listing fits the kernel's buffer.
            let size = (24 + entry.name.bytes.count + 7) & ~7
            guard bytes + size <= Int(maxBytes), listing.count < WireLimits.maxDirectoryEntries else { return false }
            bytes += size
            listing.append(entry)
            return true
        }
        if cookie < 1, !add(DirectoryEntry(name: Self.dot, inode: ino, mode: Mode.directory, cookie: 1)) { return listing }
        if cookie < 2, !add(DirectoryEntry(name: Self.dotDot, inode: inodes[ino]!.parent, mode: Mode.directory, cookie: 2)) {
            return listing
        }
        for (name, entry) in directory.entries(after: cookie) {
            let mode = Mode.type(inodes[entry.inode]!.attributes.mode)
            if !add(DirectoryEntry(name: name, inode: entry.inode, mode: mode, cookie: entry.cookie)) { break }
        }
        return listing
    }

    // MARK: - Creating and removing

    private mutating func makeInode(in parent: InodeNumber, _ name: FileName, mode: UInt32, rdev: UInt64 = 0,
                                    _ caller: Caller, _ now: Timestamp) throws(Errno) -> FileAttributes {
        try checkNewEntry(parent, name)
        let parentAttributes = inodes[parent]!.attributes
        let isDirectory = Mode.isDirectory(mode)
        var mode = mode
        var gid = caller.gid
        // BSD group semantics in a set-group-ID directory: new entries take its
        // group, and new directories keep the bit.
        if parentAttributes.mode & Mode.setGID != 0 {
            gid = parentAttributes.gid
            if isDirectory { mode |= Mode.setGID }
        }
        if !isDirectory, mode & Mode.setGID != 0, mode & Mode.groupExecute != 0, caller.uid != 0, caller.gid != gid {
            mode &= ~Mode.setGID
        }
        let ino = nextInode
        nextInode += 1
        var inode = Inode(
            attributes: FileAttributes(inode: ino, generation: 1, mode: mode, linkCount: isDirectory ? 2 : 1,
                                       uid: caller.uid, gid: gid, rdev: rdev, size: 0, atime: now, mtime: now, ctime: now),
            parent: parent)
        if isDirectory {
            inode.directory = Directory()
            inodes[parent]!.attributes.linkCount += 1
        }
        inodes[ino] = inode
        inodes[parent]!.directory!.insert(name, inode: ino)
        touchDirectory(parent, now)
        return inode.attributes
    }

    private mutating func touchDirectory(_ ino: InodeNumber, _ now: Timestamp) {
        inodes[ino]!.attributes.mtime = now
        inodes[ino]!.attributes.ctime = now
    }

    /// Drops one link. An inode left with no link stays (an orphan) while it
    /// is open or a client's kernel still holds it (an O_PATH descriptor, a
    /// working directory): it is freed by the `forget` that says nothing does.
    private mutating func dropLink(_ ino: InodeNumber, _ now: Timestamp) {
        if Mode.isDirectory(inodes[ino]!.attributes.mode) {
            inodes[ino]!.attributes.linkCount = 0
        } else {
            inodes[ino]!.attributes.linkCount -= 1
        }
        inodes[ino]!.attributes.ctime = now
    }

    /// No name, no open handle: only a client's kernel may still refer to it.
    public func isOrphan(_ ino: InodeNumber) -> Bool {
        guard let inode = inodes[ino] else { return false }
        return inode.attributes.linkCount == 0 && inode.openHandles == 0
    }

    private mutating func link(_ ino: InodeNumber, _ newParent: InodeNumber, _ newName: FileName,
                               _ now: Timestamp) throws(Errno) -> FileAttributes {
        let inode = try existing(ino)
        guard !Mode.isDirectory(inode.attributes.mode) else { throw .EPERM }
        try checkNewEntry(newParent, newName)
        guard inode.attributes.linkCount < Self.maxLinkCount else { throw .EMLINK }
        guard inode.attributes.linkCount > 0 else { throw .ENOENT }
        inodes[newParent]!.directory!.insert(newName, inode: ino)
        inodes[ino]!.attributes.linkCount += 1
        inodes[ino]!.attributes.ctime = now
        touchDirectory(newParent, now)
        return inodes[ino]!.attributes
    }

    private mutating func unlink(_ parent: InodeNumber, _ name: FileName, _ now: Timestamp) throws(Errno) {
        let ino = try lookup(parent, name)
        if name == Self.dot || name == Self.dotDot || Mode.isDirectory(inodes[ino]!.attributes.mode) { throw .EISDIR }
        inodes[parent]!.directory!.remove(name)
        touchDirectory(parent, now)
        dropLink(ino, now)
    }

    private mutating func rmdir(_ parent: InodeNumber, _ name: FileName, _ now: Timestamp) throws(Errno) {
        if name == Self.dot { throw .EINVAL }
        if name == Self.dotDot { throw .ENOTEMPTY }
        let ino = try lookup(parent, name)
        guard let directory = inodes[ino]!.directory else { throw .ENOTDIR }
        guard directory.isEmpty else { throw .ENOTEMPTY }
        inodes[parent]!.directory!.remove(name)
        inodes[parent]!.attributes.linkCount -= 1
        touchDirectory(parent, now)
        dropLink(ino, now)
    }

    /// Whether `ino` is `ancestor` or lies below it.
    private func isWithin(_ ino: InodeNumber, _ ancestor: InodeNumber) -> Bool {
        var current = ino
        while true {
            if current == ancestor { return true }
            if current == rootInode { return false }
            current = inodes[current]!.parent
        }
    }

    private mutating func rename(_ parent: InodeNumber, _ name: FileName, _ newParent: InodeNumber, _ newName: FileName,
                                 _ flags: UInt32, _ now: Timestamp) throws(Errno) {
        let known = RenameFlags.noReplace | RenameFlags.exchange
        guard flags & ~known == 0, flags != known else { throw .EINVAL }
        for special in [Self.dot, Self.dotDot] where name == special || newName == special { throw .EINVAL }
        let source = try lookup(parent, name)
        _ = try directory(newParent)
        try checkName(newName)
        let target = inodes[newParent]!.directory![newName]
        let sourceIsDirectory = Mode.isDirectory(inodes[source]!.attributes.mode)

        if flags & RenameFlags.exchange != 0 {
            guard let target else { throw .ENOENT }
            let targetIsDirectory = Mode.isDirectory(inodes[target]!.attributes.mode)
            if sourceIsDirectory && isWithin(newParent, source) { throw .EINVAL }
            if targetIsDirectory && isWithin(parent, target) { throw .EINVAL }
            if source == target { return }
            inodes[parent]!.directory!.replace(name, inode: target)
            inodes[newParent]!.directory!.replace(newName, inode: source)
            if parent != newParent {
                if sourceIsDirectory { moveDirectory(source, from: parent, to: newParent) }
                if targetIsDirectory { moveDirectory(target, from: newParent, to: parent) }
            }
            inodes[source]!.attributes.ctime = now
            inodes[target]!.attributes.ctime = now
            touchDirectory(parent, now)
            touchDirectory(newParent, now)
            return
        }

        if sourceIsDirectory && isWithin(newParent, source) { throw .EINVAL }
        if let target {
            if flags & RenameFlags.noReplace != 0 { throw .EEXIST }
            // Two names of one inode: POSIX says rename does nothing.
            if target == source { return }
            let targetIsDirectory = Mode.isDirectory(inodes[target]!.attributes.mode)
            if sourceIsDirectory && !targetIsDirectory { throw .ENOTDIR }
            if !sourceIsDirectory && targetIsDirectory { throw .EISDIR }
            if targetIsDirectory {
                guard inodes[target]!.directory!.isEmpty else { throw .ENOTEMPTY }
                inodes[newParent]!.attributes.linkCount -= 1
            }
            inodes[newParent]!.directory!.remove(newName)
            dropLink(target, now)
        }
        inodes[parent]!.directory!.remove(name)
        inodes[newParent]!.directory!.insert(newName, inode: source)
        if sourceIsDirectory && parent != newParent { moveDirectory(source, from: parent, to: newParent) }
        inodes[source]!.attributes.ctime = now
        touchDirectory(parent, now)
        touchDirectory(newParent, now)
    }

    private mutating func moveDirectory(_ ino: InodeNumber, from oldParent: InodeNumber, to newParent: InodeNumber) {
        inodes[ino]!.parent = newParent
        inodes[oldParent]!.attributes.linkCount -= 1
        inodes[newParent]!.attributes.linkCount += 1
    }

    // MARK: - Files

    private mutating func create(_ parent: InodeNumber, _ name: FileName, mode: UInt32, flags: UInt32, _ caller: Caller,
                                 _ now: Timestamp, _ effects: inout [DataEffect]) throws(Errno) -> Reply {
        _ = try directory(parent)
        try checkName(name)
        if let existing = inodes[parent]!.directory![name] {
            // Another client created it between the kernel's lookup and this create.
            if flags & OpenFlags.exclusive != 0 { throw .EEXIST }
            let handle = try open(existing, flags: flags, now, &effects)
            return .created(inodes[existing]!.attributes, handle: handle)
        }
        let attributes = try makeInode(in: parent, name, mode: Mode.regular | (mode & Mode.permissionMask), caller, now)
        let handle = try open(attributes.inode, flags: flags & ~OpenFlags.truncate, now, &effects)
        return .created(inodes[attributes.inode]!.attributes, handle: handle)
    }

    private mutating func open(_ ino: InodeNumber, flags: UInt32, _ now: Timestamp,
                               _ effects: inout [DataEffect]) throws(Errno) -> UInt64 {
        let inode = try existing(ino)
        if Mode.isDirectory(inode.attributes.mode), flags & OpenFlags.accessMask != 0 { throw .EISDIR }
        if flags & OpenFlags.truncate != 0, flags & OpenFlags.accessMask != 0, Mode.isRegular(inode.attributes.mode) {
            setSize(ino, 0, now, &effects)
        }
        let handle = nextHandle
        nextHandle += 1
        handles[handle] = Handle(inode: ino, flags: flags)
        inodes[ino]!.openHandles += 1
        return handle
    }

    private mutating func release(_ ino: InodeNumber, handle: UInt64) throws(Errno) {
        guard let open = handles[handle], open.inode == ino else { throw .EBADF }
        handles.removeValue(forKey: handle)
        inodes[ino]!.openHandles -= 1
    }

    /// Where a write lands, or why it may not happen. The IO shell asks this
    /// before it writes the data, so that a refused or failed write changes
    /// nothing; applying the record then gives the same answer.
    public func writeOffset(_ ino: InodeNumber, handle: UInt64, offset: UInt64, count: UInt32) throws(Errno) -> UInt64 {
        guard let open = handles[handle], open.inode == ino else { throw .EBADF }
        guard open.flags & OpenFlags.accessMask != 0 else { throw .EBADF }
        guard Mode.isRegular(inodes[ino]!.attributes.mode) else { throw .EINVAL }
        // O_APPEND is decided here, against the export's size, not the client's cached one.
        let offset = open.flags & OpenFlags.append != 0 ? inodes[ino]!.attributes.size : offset
        let (end, overflow) = offset.addingReportingOverflow(UInt64(count))
        guard !overflow, end <= Self.maxFileSizeBytes else { throw .EFBIG }
        return offset
    }

    private mutating func write(_ ino: InodeNumber, handle: UInt64, offset: UInt64, count: UInt32,
                                _ now: Timestamp) throws(Errno) -> UInt32 {
        let offset = try writeOffset(ino, handle: handle, offset: offset, count: count)
        inodes[ino]!.attributes.size = max(inodes[ino]!.attributes.size, offset + UInt64(count))
        inodes[ino]!.attributes.mtime = now
        inodes[ino]!.attributes.ctime = now
        return count
    }

    private mutating func setSize(_ ino: InodeNumber, _ size: UInt64, _ now: Timestamp, _ effects: inout [DataEffect]) {
        inodes[ino]!.attributes.size = size
        inodes[ino]!.attributes.mtime = now
        inodes[ino]!.attributes.ctime = now
        effects.append(.truncate(ino, size: size))
    }

    private mutating func setattr(_ ino: InodeNumber, _ changes: AttributeChanges, _ caller: Caller, _ now: Timestamp,
                                  _ effects: inout [DataEffect]) throws(Errno) -> FileAttributes {
        let inode = try existing(ino)
        var attributes = inode.attributes
        if let size = changes.size {
            if Mode.isDirectory(attributes.mode) { throw .EISDIR }
            guard Mode.isRegular(attributes.mode) else { throw .EINVAL }
            guard size <= Self.maxFileSizeBytes else { throw .EFBIG }
        }
        if let mode = changes.mode {
            var newMode = Mode.type(attributes.mode) | (mode & Mode.permissionMask)
            // Only a member of the file's group may keep set-group-ID (the kernel
            // does not pass supplementary groups, so the primary group decides).
            if caller.uid != 0, caller.gid != (changes.gid ?? attributes.gid), !Mode.isDirectory(attributes.mode) {
                newMode &= ~Mode.setGID
            }
            attributes.mode = newMode
        }
        let ownerChanges = (changes.uid.map { $0 != attributes.uid } ?? false) || (changes.gid.map { $0 != attributes.gid } ?? false)
        if let uid = changes.uid { attributes.uid = uid }
        if let gid = changes.gid { attributes.gid = gid }
        if (changes.uid != nil || changes.gid != nil), changes.mode == nil, !Mode.isDirectory(attributes.mode),
           ownerChanges || caller.uid != 0 {
            // chown clears set-user-ID, and set-group-ID when it means "group executable".
            attributes.mode &= ~Mode.setUID
            if attributes.mode & Mode.groupExecute != 0 { attributes.mode &= ~Mode.setGID }
        }
        switch changes.atime {
        case .now: attributes.atime = now
        case .set(let t): attributes.atime = t
        case nil: break
        }
        switch changes.mtime {
        case .now: attributes.mtime = now
        case .set(let t): attributes.mtime = t
        case nil: break
        }
        attributes.ctime = now
        inodes[ino]!.attributes = attributes
        if let size = changes.size {
            let mtime = inodes[ino]!.attributes.mtime
            setSize(ino, size, now, &effects)
            // An explicit mtime in the same request wins over the truncate's.
            if changes.mtime != nil { inodes[ino]!.attributes.mtime = mtime }
        }
        return inodes[ino]!.attributes
    }

    // MARK: - Extended attributes

    private static let xattrNamespaces = ["user.", "trusted.", "security.", "system."].map { Array($0.utf8) }

    private func checkXattrName(_ name: FileName) throws(Errno) {
        guard !name.bytes.isEmpty, name.bytes.count <= FileName.maxLength else { throw .ERANGE }
        guard Self.xattrNamespaces.contains(where: { name.bytes.starts(with: $0) }) else { throw .EOPNOTSUPP }
    }

    private mutating func setxattr(_ ino: InodeNumber, _ name: FileName, _ value: [UInt8], flags: UInt32,
                                   _ now: Timestamp) throws(Errno) {
        try checkXattrName(name)
        let inode = try existing(ino)
        guard value.count <= WireLimits.maxXattrValueBytes else { throw .E2BIG }
        let exists = inode.xattrs[name] != nil
        if flags & XattrFlags.create != 0, exists { throw .EEXIST }
        if flags & XattrFlags.replace != 0, !exists { throw .ENODATA }
        if !exists, inode.xattrs.count >= Self.maxXattrsPerInode { throw .ENOSPC }
        inodes[ino]!.xattrs[name] = value
        inodes[ino]!.attributes.ctime = now
    }
}

/// A change to file contents that the IO shell makes on the node's data files
/// after the record is in the journal.
public enum DataEffect: Hashable, Sendable {
    case truncate(InodeNumber, size: UInt64)
    /// The inode is gone: its data can be deleted.
    case remove(InodeNumber)
}

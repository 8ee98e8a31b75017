/// What `baton locks` shows of one lock: the file by its path, the range,
/// kind and family, and who holds it since when. Built by the server from
/// its lock table and its sessions' leases.
public struct LockListing: Codable, Hashable, Sendable {
    public struct Entry: Codable, Hashable, Sendable {
        /// The file's path in the export, or "inode N" when no name leads to it (unlinked, still open).
        public var file: String
        public var inode: UInt64
        public var start: UInt64
        /// Nil: to the end of the file.
        public var end: UInt64?
        public var kind: String
        public var family: String
        public var session: UInt64
        public var pid: UInt32
        /// Who the client is (certificate name and address, or address), as its session connected.
        public var client: String
        /// Seconds since 1970 when the lock was taken.
        public var since: Double

        public init(file: String, inode: UInt64, lock: LockTable.Lock, client: String) {
            self.file = file
            self.inode = inode
            start = lock.range.start
            end = lock.range.end == .max ? nil : lock.range.end
            kind = "\(lock.kind)"
            family = "\(lock.family)"
            session = lock.owner.session
            pid = lock.pid
            self.client = client
            since = Double(lock.since.seconds) + Double(lock.since.nanoseconds) / 1e9
        }
    }

    public var export: String
    public var epoch: UInt64
    /// The lease a client must renew its locks within (ms).
    public var leaseMs: Int
    public var locks: [Entry]
    /// Locks not listed (past `maxEntries`).
    public var more: Int

    /// At most this many entries in one answer (an admin's view, not a dump of a million locks).
    public static let maxEntries = 1000

    public init(export: String, epoch: UInt64, leaseMs: Int, locks: [Entry], more: Int) {
        self.export = export
        self.epoch = epoch
        self.leaseMs = leaseMs
        self.locks = locks
        self.more = more
    }
}

extension Namespace {
    /// Every lock, file by file in inode order, at most `LockListing.maxEntries`,
    /// each with its file's path; `client` names a session's client.
    public func lockListing(export: String, epoch: UInt64, leaseMs: Int, client: (UInt64) -> String) -> LockListing {
        let held = locks.locks.sorted { $0.key < $1.key }.flatMap { inode, held in held.map { (inode, $0) } }
        let listed = held.prefix(LockListing.maxEntries)
        let names = paths(of: Set(listed.map(\.0)))
        return LockListing(export: export, epoch: epoch, leaseMs: leaseMs, locks: listed.map { inode, lock in
            LockListing.Entry(file: names[inode] ?? "inode \(inode)", inode: inode, lock: lock, client: client(lock.owner.session))
        }, more: held.count - listed.count)
    }

    /// A path to each of `wanted` (the first name found, for a file with
    /// several links). One pass over every directory: for an admin's
    /// listing, not for a request path.
    public func paths(of wanted: Set<InodeNumber>) -> [InodeNumber: String] {
        guard !wanted.isEmpty else { return [:] }
        var named: [InodeNumber: (parent: InodeNumber, name: FileName)] = [:]
        for (directory, inode) in inodes {
            for (name, entry) in inode.directory?.entries ?? [:] where named[entry.inode] == nil {
                // Directories are wanted too: they lead to the files.
                if wanted.contains(entry.inode) || inodes[entry.inode]?.directory != nil { named[entry.inode] = (directory, name) }
            }
        }
        var paths: [InodeNumber: String] = [:]
        for file in wanted {
            var parts: [String] = []
            var at = file
            while at != rootInode, let step = named[at], parts.count < 4096 {
                parts.append(step.name.description)
                at = step.parent
            }
            if at == rootInode, !parts.isEmpty { paths[file] = "/" + parts.reversed().joined(separator: "/") }
        }
        return paths
    }
}

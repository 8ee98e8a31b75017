/// The byte-range and whole-file locks of one export, held by its server for
/// every client (issue 12): POSIX record locks and OFD locks (`fcntl`), and
/// `flock` locks, with the rules of a local Linux file system. A client's
/// kernel alone cannot make two machines' locks exclude each other.
///
/// Pure state, changed by the server's lock requests in journal order, so
/// that the standby holds the same table and a lock held before a failover
/// is held after it (no grace period, no reclaim). Waiting requests are kept
/// apart (`LockWaiters`): they are requests in flight, which the clients send
/// again to the new server, not state.
public struct LockTable: Hashable, Sendable {
    public enum Kind: UInt8, Hashable, Sendable {
        /// `F_RDLCK`, `LOCK_SH`: excludes exclusive locks of other owners.
        case shared = 1
        /// `F_WRLCK`, `LOCK_EX`: excludes every lock of other owners.
        case exclusive = 2

        func conflicts(with other: Kind) -> Bool { self == .exclusive || other == .exclusive }
    }

    /// fcntl locks (POSIX and OFD: they exclude each other) and flock locks
    /// are separate on Linux: a lock of one family never conflicts with one of the other.
    public enum Family: UInt8, Hashable, Sendable {
        case fcntl = 1
        case flock = 2
    }

    /// Who holds a lock: the client session and the owner its kernel names
    /// (a process for POSIX locks, an open file description for OFD and
    /// flock locks). Owner numbers are the client's own: the session tells
    /// two clients' apart.
    public struct Owner: Hashable, Sendable, Comparable, CustomStringConvertible {
        public var session: UInt64
        public var owner: UInt64

        public init(session: UInt64, owner: UInt64) {
            self.session = session
            self.owner = owner
        }

        public static func < (a: Owner, b: Owner) -> Bool { (a.session, a.owner) < (b.session, b.owner) }

        public var description: String { "session \(session) owner \(owner)" }
    }

    /// Bytes `start` through `end`, both included; `end == .max` runs to the
    /// end of the file whatever its size (a length of 0 in `fcntl`).
    public struct Range: Hashable, Sendable, CustomStringConvertible {
        public var start: UInt64
        public var end: UInt64

        public init(start: UInt64, end: UInt64) {
            precondition(start <= end, "an empty lock range")
            self.start = start
            self.end = end
        }

        public static let wholeFile = Range(start: 0, end: .max)

        func overlaps(_ other: Range) -> Bool { start <= other.end && other.start <= end }

        /// Touching or overlapping: two such ranges of one owner and kind are one lock.
        func adjoins(_ other: Range) -> Bool {
            overlaps(other) || (end != .max && end + 1 == other.start) || (other.end != .max && other.end + 1 == start)
        }

        public var description: String { end == .max ? "\(start)-EOF" : "\(start)-\(end)" }
    }

    public struct Lock: Hashable, Sendable, CustomStringConvertible {
        public var owner: Owner
        public var family: Family
        public var kind: Kind
        public var range: Range
        /// The holder's process as its client saw it, for `F_GETLK`.
        public var pid: UInt32
        /// When it was taken (the journal record's time), for `baton locks`;
        /// zero in an `F_GETLK` answer, which does not carry it.
        public var since: Timestamp

        public init(owner: Owner, family: Family, kind: Kind, range: Range, pid: UInt32, since: Timestamp = .zero) {
            self.owner = owner
            self.family = family
            self.kind = kind
            self.range = range
            self.pid = pid
            self.since = since
        }

        public var description: String { "\(kind) \(family) lock \(range) of \(owner) (pid \(pid))" }
    }

    /// A lock request: to take `kind` over `range`, or with `kind == nil` to release it.
    public struct Request: Hashable, Sendable {
        public var owner: Owner
        public var family: Family
        public var kind: Kind?
        public var range: Range
        public var pid: UInt32

        public init(owner: Owner, family: Family, kind: Kind?, range: Range, pid: UInt32) {
            self.owner = owner
            self.family = family
            self.kind = kind
            self.range = range
            self.pid = pid
        }
    }

    /// Each file's locks, each owner's in order of start and never adjoining
    /// one of the same owner, family and kind (they merge, as Linux's do).
    public private(set) var locks: [InodeNumber: [Lock]] = [:]
    /// How many locks `locks` holds, all files together.
    public private(set) var count = 0
    /// The files on which each client session lost locks to its lease: that
    /// client is told (EIO on its next lock request or write there) until
    /// its lock owners let go of the file (a release, as at a close), so an
    /// application never goes on as if it still held a lock it lost.
    public private(set) var lost: [UInt64: Set<InodeNumber>] = [:]
    /// At most this many lost marks in all: past it the earlier ones are
    /// forgotten (clients that never came back), so the table stays bounded.
    static let maxLostMarks = 1 << 16

    public init() {}

    public var isEmpty: Bool { locks.isEmpty }

    /// The lock that keeps `request` from being granted now, if any: what
    /// `F_GETLK` reports (nil: `F_UNLCK`). An owner never conflicts with itself.
    public func conflict(_ inode: InodeNumber, with request: Request) -> Lock? {
        guard let kind = request.kind else { return nil }
        return locks[inode]?.first { held in
            held.owner != request.owner && held.family == request.family && held.range.overlaps(request.range)
                && held.kind.conflicts(with: kind)
        }
    }

    public enum Outcome: Hashable, Sendable {
        case granted
        /// Held by another owner: `F_SETLK` answers EAGAIN, `F_SETLKW` waits.
        case conflicts(Lock)
    }

    /// Takes or releases `request`'s range for its owner. A lock replaces the
    /// owner's own locks of that family in the range (an upgrade or a
    /// downgrade, atomically), splitting those that stick out; a release
    /// splits them the same way. Nothing changes on a conflict.
    public mutating func apply(_ inode: InodeNumber, _ request: Request, at time: Timestamp) -> Outcome {
        if let blocking = conflict(inode, with: request) { return .conflicts(blocking) }
        var kept: [Lock] = []
        for held in locks[inode] ?? [] {
            guard held.owner == request.owner, held.family == request.family, held.range.overlaps(request.range) else {
                kept.append(held)
                continue
            }
            // The parts of the owner's lock outside the request stay as they were.
            if held.range.start < request.range.start {
                kept.append(held.with(Range(start: held.range.start, end: request.range.start - 1)))
            }
            if held.range.end > request.range.end {
                kept.append(held.with(Range(start: request.range.end + 1, end: held.range.end)))
            }
        }
        if let kind = request.kind {
            var taken = Lock(owner: request.owner, family: request.family, kind: kind, range: request.range, pid: request.pid, since: time)
            // Merge with the owner's adjoining locks of the same kind.
            kept.removeAll { held in
                guard held.owner == taken.owner, held.family == taken.family, held.kind == taken.kind,
                      held.range.adjoins(taken.range) else { return false }
                taken.range = Range(start: min(held.range.start, taken.range.start), end: max(held.range.end, taken.range.end))
                taken.since = min(taken.since, held.since)
                return true
            }
            kept.append(taken)
        }
        kept.sort { ($0.range.start, $0.owner, $0.family.rawValue) < ($1.range.start, $1.owner, $1.family.rawValue) }
        count += kept.count - (locks[inode]?.count ?? 0)
        locks[inode] = kept.isEmpty ? nil : kept
        return .granted
    }

    /// POSIX: a process's record locks on a file go with any close of it
    /// (FUSE's flush names the owner). flock locks go with the last close of
    /// their open file description (FUSE's release with `flock_release`).
    /// Letting go also ends the session's lost mark on the file: the
    /// application has closed what it had locked, and may lock it anew.
    public mutating func release(_ inode: InodeNumber, owner: Owner, family: Family) {
        _ = apply(inode, Request(owner: owner, family: family, kind: nil, range: .wholeFile, pid: 0), at: .zero)
        if lost[owner.session]?.remove(inode) != nil, lost[owner.session]!.isEmpty { lost[owner.session] = nil }
    }

    /// Every lock of a client session whose lease ran out; the files that had
    /// some are marked lost for it. Returns those files.
    @discardableResult
    public mutating func expireSession(_ session: UInt64) -> [InodeNumber] {
        var touched: [InodeNumber] = []
        for (inode, held) in locks {
            let kept = held.filter { $0.owner.session != session }
            guard kept.count != held.count else { continue }
            touched.append(inode)
            count -= held.count - kept.count
            locks[inode] = kept.isEmpty ? nil : kept
        }
        if lost.values.reduce(touched.count, { $0 + $1.count }) > Self.maxLostMarks { lost.removeAll() }
        if !touched.isEmpty { lost[session, default: []].formUnion(touched) }
        return touched.sorted()
    }

    /// Whether `session` lost its locks on `inode` to its lease and has not let go of the file since.
    public func hasLost(_ session: UInt64, _ inode: InodeNumber) -> Bool {
        !lost.isEmpty && lost[session]?.contains(inode) == true
    }

    /// A file's locks go with the file (its last link removed and closed).
    public mutating func forget(_ inode: InodeNumber) {
        count -= locks[inode]?.count ?? 0
        locks[inode] = nil
        for session in lost.keys where lost[session]!.remove(inode) != nil && lost[session]!.isEmpty { lost[session] = nil }
    }
}

extension LockTable {
    /// At most this many locks in a checkpoint: more is a damaged file, not a table.
    static let maxCheckpointLocks = 1 << 24

    func encode(to w: inout ByteWriter) {
        let all = locks.sorted { $0.key < $1.key }.flatMap { inode, held in held.map { (inode, $0) } }
        w.write(UInt64(all.count))
        for (inode, lock) in all {
            w.write(inode); w.write(lock.owner.session); w.write(lock.owner.owner); w.write(lock.family.rawValue)
            w.write(lock.kind.rawValue); w.write(lock.range.start); w.write(lock.range.end); w.write(lock.pid); w.write(lock.since)
        }
        let marks = lost.sorted { $0.key < $1.key }.flatMap { session, inodes in inodes.sorted().map { (session, $0) } }
        w.write(UInt64(marks.count))
        for (session, inode) in marks { w.write(session); w.write(inode) }
    }

    static func decode(from r: inout ByteReader) throws(DecodeError) -> LockTable {
        let count = try r.readUInt64()
        guard count <= maxCheckpointLocks else { throw .tooLarge(kind: "lock table", size: Int(clamping: count), limit: maxCheckpointLocks) }
        var table = LockTable()
        for _ in 0..<count {
            let inode = try r.readUInt64()
            let owner = Owner(session: try r.readUInt64(), owner: try r.readUInt64())
            let family = try r.readLockFamily(), kind = try r.readLockKind()
            let lock = Lock(owner: owner, family: family, kind: kind, range: try r.readLockRange(), pid: try r.readUInt32(),
                            since: try r.readTimestamp())
            // Written in the table's own order: kept as it was, not re-merged.
            table.locks[inode, default: []].append(lock)
            table.count += 1
        }
        let marks = try r.readUInt64()
        guard marks <= maxLostMarks else { throw .tooLarge(kind: "lost lock marks", size: Int(clamping: marks), limit: maxLostMarks) }
        for _ in 0..<marks {
            let session = try r.readUInt64()
            table.lost[session, default: []].insert(try r.readUInt64())
        }
        return table
    }
}

extension LockTable.Lock {
    fileprivate func with(_ range: LockTable.Range) -> LockTable.Lock {
        var copy = self
        copy.range = range
        return copy
    }
}

/// Lock requests that wait (`F_SETLKW`, blocking `flock`), in the order they
/// came, per file. In memory only: after a failover the clients send them
/// again, and they queue anew behind the locks the journal kept. It decides
/// on the server's copy of the table (times do not matter there: the
/// journaled request that follows a grant stamps the lock's time).
public struct LockWaiters: Sendable {
    public struct Waiter: Hashable, Sendable {
        /// Tells the server which request to answer once granted.
        public var id: UInt64
        public var inode: InodeNumber
        public var request: LockTable.Request

        public init(id: UInt64, inode: InodeNumber, request: LockTable.Request) {
            self.id = id
            self.inode = inode
            self.request = request
        }
    }

    public private(set) var waiting: [Waiter] = []

    public init() {}

    public enum Admission: Hashable, Sendable {
        case granted
        case waits
        /// Waiting would close a cycle of owners waiting for each other: `EDEADLK`.
        case deadlock
    }

    /// Takes `waiter`'s lock at once if it is free, else queues it, unless
    /// its owner would then wait, through other waiters, for itself.
    public mutating func request(_ waiter: Waiter, in table: inout LockTable) -> Admission {
        if !overtakes(waiter, waiting[...]), case .granted = table.apply(waiter.inode, waiter.request, at: .zero) { return .granted }
        if waitsForItself(waiter, table) { return .deadlock }
        waiting.append(waiter)
        return .waits
    }

    /// Grants, in arrival order, every waiter whose lock has become free
    /// (after a release, an unlock or a downgrade); returns those granted.
    public mutating func grantFree(in table: inout LockTable) -> [Waiter] {
        var granted: [Waiter] = []
        var index = 0
        while index < waiting.count {
            let waiter = waiting[index]
            if !overtakes(waiter, waiting[..<index]), case .granted = table.apply(waiter.inode, waiter.request, at: .zero) {
                granted.append(waiter)
                waiting.remove(at: index)
                continue
            }
            index += 1
        }
        return granted
    }

    /// The client gave up (an interrupted `F_SETLKW`), or its session ended.
    public mutating func cancel(id: UInt64) -> Waiter? {
        guard let index = waiting.firstIndex(where: { $0.id == id }) else { return nil }
        return waiting.remove(at: index)
    }

    public mutating func cancelSession(_ session: UInt64) -> [Waiter] {
        let gone = waiting.filter { $0.request.owner.session == session }
        waiting.removeAll { $0.request.owner.session == session }
        return gone
    }

    /// An earlier waiter that `waiter` would exclude keeps its turn: readers
    /// arriving one after another do not starve a writer.
    private func overtakes(_ waiter: Waiter, _ earlier: ArraySlice<Waiter>) -> Bool {
        earlier.contains { other in
            other.inode == waiter.inode && other.request.family == waiter.request.family
                && other.request.owner != waiter.request.owner && other.request.range.overlaps(waiter.request.range)
                && (other.request.kind.map { waiter.request.kind?.conflicts(with: $0) ?? false } ?? false)
        }
    }

    /// Whether `waiter`'s owner, once queued, would wait for a lock of an
    /// owner that waits (directly or through others) for a lock of its own.
    private func waitsForItself(_ waiter: Waiter, _ table: LockTable) -> Bool {
        let me = waiter.request.owner
        var seen: Set<LockTable.Owner> = []
        var frontier = blockers(of: waiter, table)
        while let owner = frontier.popLast() {
            if owner == me { return true }
            guard seen.insert(owner).inserted else { continue }
            for other in waiting where other.request.owner == owner { frontier += blockers(of: other, table) }
        }
        return false
    }

    private func blockers(of waiter: Waiter, _ table: LockTable) -> [LockTable.Owner] {
        guard let kind = waiter.request.kind else { return [] }
        return (table.locks[waiter.inode] ?? []).filter {
            $0.owner != waiter.request.owner && $0.family == waiter.request.family
                && $0.range.overlaps(waiter.request.range) && $0.kind.conflicts(with: kind)
        }.map(\.owner)
    }
}

/// Each client session's lease on its locks. A client that renews
/// (protocol 3: `Message.leaseRenewal`, sent every third of the lease) keeps
/// its locks only while it is heard from, so a stopped or cut-off client
/// loses them even while its TCP connection lingers; an older client keeps
/// them while it has a connection open. Either way a session with neither
/// for the lease loses its locks. In memory: a new server gives every
/// session a whole lease from when it first looks (`expired(holders:at:)`).
public struct LockLeases: Sendable {
    public let lease: TimeSpan
    private var sessions: [UInt64: Session] = [:]
    /// When the server last looked (`expired`): a look far later than the
    /// one before means the server itself did not run meanwhile.
    private var lastLook: Instant?

    private struct Session: Hashable, Sendable {
        var connections = 0
        var renews = false
        var heard: Instant
        /// Who the client was, for the log line that releases its locks.
        var client: String
    }

    public init(lease: TimeSpan) { self.lease = lease }

    public mutating func connected(_ session: UInt64, client: String, renews: Bool, at now: Instant) {
        var known = sessions[session] ?? Session(heard: now, client: client)
        known.connections += 1
        known.renews = known.renews || renews
        known.heard = max(known.heard, now)
        known.client = client
        sessions[session] = known
    }

    /// A renewal, heard on one of the session's connections.
    public mutating func renewed(_ session: UInt64, at now: Instant) {
        guard sessions[session] != nil else { return }
        sessions[session]!.heard = max(sessions[session]!.heard, now)
    }

    public mutating func disconnected(_ session: UInt64, at now: Instant) {
        guard var known = sessions[session] else { return }
        precondition(known.connections > 0, "session \(session) disconnected more often than it connected")
        known.connections -= 1
        known.heard = max(known.heard, now)
        if known.connections == 0 { known.renews = false }
        sessions[session] = known
    }

    /// Of the sessions holding locks (`holders`), those whose lease ran out by
    /// `now`, oldest first, with who they were. Each starts a new lease (its
    /// release is under way); sessions with no locks and no connection are forgotten.
    /// A look more than half a lease after the last one gives every session
    /// a new lease: the server did not run in between (stopped, its machine
    /// paused), so no renewal could be heard, and its clients are not to blame.
    public mutating func expired(holders: Set<UInt64>, at now: Instant) -> [(session: UInt64, client: String)] {
        if let lastLook, now - min(now, lastLook) > TimeSpan(nanoseconds: lease.nanoseconds / 2) {
            for session in sessions.keys { sessions[session]!.heard = max(sessions[session]!.heard, now) }
        }
        lastLook = now
        var gone: [(heard: Instant, session: UInt64, client: String)] = []
        for (session, known) in sessions {
            guard holders.contains(session) else {
                if known.connections == 0 { sessions[session] = nil }
                continue
            }
            let held = known.connections > 0 && !known.renews
            guard !held, now - min(now, known.heard) >= lease else { continue }
            gone.append((known.heard, session, known.client))
            sessions[session]!.heard = now
        }
        for session in holders where sessions[session] == nil {
            sessions[session] = Session(heard: now, client: "a client of the server before")
        }
        return gone.sorted { ($0.heard, $0.session) < ($1.heard, $1.session) }.map { ($0.session, $0.client) }
    }

    /// Who a session's client is, as it connected (nil: not known here).
    public func client(of session: UInt64) -> String? { sessions[session]?.client }
}

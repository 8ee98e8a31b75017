/// The entries of one directory, with readdir cookies that stay valid while
/// entries come and go: each entry gets the next cookie when it is added and
/// keeps it, so a listing that continues after cookie c sees every entry that
/// was there throughout exactly once. Cookies are export state (journaled
/// through the operations that create them), not node state.
struct Directory: Hashable, Sendable {
    /// Cookies 1 and 2 are "." and "..".
    static let firstEntryCookie: UInt64 = 3

    private(set) var entries: [FileName: Entry] = [:]
    /// Entries in cookie order; removed ones stay as holes until compaction.
    private var order: [Slot] = []
    private var holes = 0
    private(set) var nextCookie: UInt64 = firstEntryCookie

    struct Entry: Hashable, Sendable {
        var inode: InodeNumber
        var cookie: UInt64
    }

    private struct Slot: Hashable, Sendable {
        var cookie: UInt64
        var name: FileName?
    }

    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }

    subscript(name: FileName) -> InodeNumber? { entries[name]?.inode }

    mutating func insert(_ name: FileName, inode: InodeNumber) {
        precondition(entries[name] == nil, "insert over an existing entry")
        entries[name] = Entry(inode: inode, cookie: nextCookie)
        order.append(Slot(cookie: nextCookie, name: name))
        nextCookie += 1
    }

    /// Points an existing name at another inode, keeping its cookie (rename over, exchange).
    mutating func replace(_ name: FileName, inode: InodeNumber) {
        precondition(entries[name] != nil, "replace of a missing entry")
        entries[name]!.inode = inode
    }

    @discardableResult
    mutating func remove(_ name: FileName) -> InodeNumber? {
        guard let entry = entries.removeValue(forKey: name) else { return nil }
        let index = firstIndex(after: entry.cookie - 1)
        precondition(index < order.count && order[index].cookie == entry.cookie, "directory order lost an entry")
        order[index].name = nil
        holes += 1
        if holes > 64 && holes * 2 > order.count {
            order.removeAll { $0.name == nil }
            holes = 0
        }
        return entry.inode
    }

    /// Entries with a cookie greater than `cookie`, in cookie order.
    func entries(after cookie: UInt64) -> some Sequence<(name: FileName, entry: Entry)> {
        order[firstIndex(after: cookie)...].lazy.compactMap { slot in
            slot.name.map { ($0, entries[$0]!) }
        }
    }

    /// The first slot whose cookie is greater than `cookie`.
    private func firstIndex(after cookie: UInt64) -> Int {
        order.partitioningIndex { $0.cookie > cookie }
    }

    /// Equal when a client could not tell them apart: same names, inodes and cookies
    /// (holes left by removals do not count).
    static func == (a: Directory, b: Directory) -> Bool {
        a.entries == b.entries && a.nextCookie == b.nextCookie
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(entries)
        hasher.combine(nextCookie)
    }

    // MARK: checkpoint form

    func encode(to w: inout ByteWriter) {
        w.write(nextCookie)
        w.write(UInt32(entries.count))
        for (name, entry) in entries(after: 0) {
            w.write(name)
            w.write(entry.inode)
            w.write(entry.cookie)
        }
    }

    static func decode(from r: inout ByteReader) throws(DecodeError) -> Directory {
        var directory = Directory()
        directory.nextCookie = try r.readUInt64()
        let count = try r.readUInt32()
        for _ in 0..<count {
            let name = try r.readName()
            let entry = Entry(inode: try r.readUInt64(), cookie: try r.readUInt64())
            guard entry.cookie < directory.nextCookie, directory.order.last.map({ $0.cookie < entry.cookie }) ?? true else {
                throw .invalid("directory cookies out of order")
            }
            directory.entries[name] = entry
            directory.order.append(Slot(cookie: entry.cookie, name: name))
        }
        return directory
    }
}

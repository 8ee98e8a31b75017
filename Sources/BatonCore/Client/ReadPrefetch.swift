/// A small read of a file (4 KiB at random, as a database or an index does)
/// costs a round trip to the server each time: the kernel reads ahead only
/// for sequential reads. So when a window of the file is read a second time
/// (a second page missed in it: the reads come back to this part of the
/// file), the mount fetches the whole window, answers the read from it and
/// hands the rest to the kernel's page cache (FUSE's store notification): the
/// next small reads in that window are answered by the kernel without asking
/// the mount at all. Reads scattered over a file far larger than the cache
/// rarely miss twice in one window, so they fetch no more than they read.
///
/// The page cache must never get bytes older than what it holds or than what
/// this mount wrote meanwhile. So a window is stored only when nothing may
/// change the file through this mount (no handle that may write it, no size
/// change or lock under way: a *change*) and nothing did since the window
/// was fetched. A change that begins while a store is under way waits for it:
/// the kernel keeps a page of a write locked until the write is answered, so
/// a store must not straddle a write. Other mounts' changes are seen as
/// before, at the next open or lock (close-to-open, as NFS): a store only
/// fills pages the kernel drops at the file's next open.
///
/// Pure state; the mount drives it (see `ExportFileSystem`), one mutex around it.
public struct ReadPrefetch<Waiter> {
    /// Bytes fetched around a small read; 0 turns prefetching off.
    public let windowBytes: UInt64
    /// Reads of at most this many bytes are small: larger ones come from the
    /// kernel's own readahead of sequential reads, which needs no help.
    public static var smallReadBytes: UInt32 { 16 << 10 }

    /// A window asked of the server.
    public struct Fetch: Equatable, Sendable {
        public var inode: UInt64
        public var start: UInt64
        public var length: UInt32
        /// The file's count of changes when the fetch went out.
        fileprivate var changes: UInt64
    }

    private struct File {
        /// Changes under way: handles that may write, size changes, locks.
        var changes = 0
        /// Changes begun so far; a fetch from before one of them is stale.
        var changesBegun: UInt64 = 0
        var fetching: Set<UInt64> = []
        /// Windows with one page missed so far (at most `windowsRemembered`).
        var missedOnce: Set<UInt64> = []
        var storing = false
        /// Changes held back until the store under way ends.
        var waiting: [Waiter] = []

        var isIdle: Bool { changes == 0 && fetching.isEmpty && !storing && waiting.isEmpty && missedOnce.isEmpty }
    }

    private var files: [UInt64: File] = [:]

    public init(windowBytes: UInt64) {
        self.windowBytes = windowBytes
    }

    /// Windows per file whose first miss is remembered; past it they are forgotten, all at once.
    public static var windowsRemembered: Int { 256 }

    /// The window to fetch for a read of `size` bytes at `offset`, or nil to
    /// read just those bytes (the window's first miss, a large read, one that
    /// crosses a window, a file that may change through this mount, or a
    /// window already on its way).
    public mutating func fetch(_ inode: UInt64, offset: UInt64, size: UInt32) -> Fetch? {
        guard windowBytes > 0, size > 0, size <= Self.smallReadBytes else { return nil }
        let start = offset - offset % windowBytes
        guard offset + UInt64(size) <= start + windowBytes else { return nil }
        var file = files[inode] ?? File()
        guard file.changes == 0, !file.storing, !file.fetching.contains(start) else { return nil }
        defer { files[inode] = file }
        guard file.missedOnce.remove(start) != nil else {
            if file.missedOnce.count >= Self.windowsRemembered { file.missedOnce.removeAll() }
            file.missedOnce.insert(start)
            return nil
        }
        file.fetching.insert(start)
        return Fetch(inode: inode, start: start, length: UInt32(windowBytes), changes: file.changesBegun)
    }

    /// The kernel forgot the file: no read or change of it can be under way.
    public mutating func forget(_ inode: UInt64) {
        files[inode] = nil
    }

    /// The fetch failed: nothing to store.
    public mutating func abandon(_ fetch: Fetch) {
        update(fetch.inode) { $0.fetching.remove(fetch.start) }
    }

    /// Whether to store the fetched window now. After true, the caller
    /// stores it and then calls `stored`, and runs the waiters it returns.
    public mutating func beginStore(_ fetch: Fetch) -> Bool {
        var begins = false
        update(fetch.inode) { file in
            file.fetching.remove(fetch.start)
            begins = file.changes == 0 && file.changesBegun == fetch.changes && !file.storing
            if begins { file.storing = true }
        }
        return begins
    }

    /// The store ended: the changes that waited for it may go on.
    public mutating func stored(_ inode: UInt64) -> [Waiter] {
        var waiting: [Waiter] = []
        update(inode) { file in
            file.storing = false
            swap(&waiting, &file.waiting)
        }
        return waiting
    }

    /// A change of the file through this mount begins. True: it goes on now;
    /// false: `waiter` goes on once the store under way ends (see `stored`).
    public mutating func beginChange(_ inode: UInt64, _ waiter: Waiter) -> Bool {
        var now = true
        update(inode) { file in
            file.changes += 1
            file.changesBegun &+= 1
            if file.storing {
                file.waiting.append(waiter)
                now = false
            }
        }
        return now
    }

    /// A change ended (its handle closed, its answer came).
    public mutating func endChange(_ inode: UInt64) {
        update(inode) { $0.changes = max(0, $0.changes - 1) }
    }

    /// Files with state kept (for tests: an idle file keeps none).
    public var filesTracked: Int { files.count }

    private mutating func update(_ inode: UInt64, _ body: (inout File) -> Void) {
        var file = files[inode] ?? File()
        body(&file)
        files[inode] = file.isIdle ? nil : file
    }
}

/// A mount's writes in flight behind the application (the model of NFS's
/// unstable writes and of the kernel's own writeback cache).
///
/// A write is answered to the application once the mount holds its data for
/// re-sending, up to `windowBytes` in flight; the server's reply comes later.
/// Nothing acknowledged by the server is at stake: the mount re-sends every
/// unanswered write to whichever server is active (DESIGN.md §4.1, §4.3). What
/// changes is where a failed write's error shows: it is kept for the file and
/// returned by the file's next write, `fsync` or `close`, which also wait for
/// the file's writes in flight. A closed file is on the server (close-to-open
/// consistency for other clients); an fsync'd file is durable as before.
///
/// Pure state; the mount keeps it under a lock. `Waiter` is what runs once a
/// file has no write in flight (the mount's deferred close or fsync reply).
public struct WriteBehind<Waiter> {
    /// At most this many bytes are answered early and not yet acknowledged.
    public let windowBytes: Int
    public private(set) var bytesInFlight = 0
    private var files: [UInt64: File] = [:]

    private struct File {
        var writesInFlight = 0
        /// The first error of a write answered early, not yet reported.
        var error: Int32?
        var waiters: [Waiter] = []
    }

    public init(windowBytes: Int) {
        self.windowBytes = max(0, windowBytes)
    }

    /// Whether nothing is in flight (the mount may close its connection).
    public var isSettled: Bool { files.values.allSatisfy { $0.writesInFlight == 0 } }

    /// Whether a write of `bytes` to `inode` may be answered now; if so, it
    /// counts as in flight until `finished`. Otherwise the write waits for
    /// its own reply, as without write-behind.
    public mutating func admit(_ inode: UInt64, bytes: Int) -> Bool {
        guard bytesInFlight + bytes <= windowBytes else { return false }
        bytesInFlight += bytes
        files[inode, default: File()].writesInFlight += 1
        return true
    }

    /// The server answered a write that was answered early: `error` if it
    /// failed. Returns what waited for the file to settle, and the error they
    /// report (the file's first error, reported once).
    public mutating func finished(_ inode: UInt64, bytes: Int, error: Int32?) -> (waiters: [Waiter], error: Int32?) {
        bytesInFlight -= bytes
        guard var file = files[inode] else { return ([], nil) }
        file.writesInFlight -= 1
        if file.error == nil { file.error = error }
        if file.writesInFlight > 0 {
            files[inode] = file
            return ([], nil)
        }
        if file.waiters.isEmpty {
            // Settled: only an unreported error keeps the entry.
            files[inode] = file.error == nil ? nil : file
            return ([], nil)
        }
        files[inode] = nil
        return (file.waiters, file.error)
    }

    /// The error a failed earlier write left for the file, reported once
    /// (by its next write).
    public mutating func takeError(_ inode: UInt64) -> Int32? {
        guard let error = files[inode]?.error else { return nil }
        files[inode]!.error = nil
        if files[inode]!.writesInFlight == 0 { files[inode] = nil }
        return error
    }

    /// A close or fsync of `inode`: `.now(error)` when no write of the file
    /// is in flight, otherwise `waiter` is kept until `finished` returns it.
    public mutating func settle(_ inode: UInt64, _ waiter: Waiter) -> Settlement {
        guard var file = files[inode], file.writesInFlight > 0 else { return .now(takeError(inode)) }
        file.waiters.append(waiter)
        files[inode] = file
        return .later
    }

    public enum Settlement: Equatable {
        /// Settled already; the error to report, if any.
        case now(Int32?)
        /// The waiter runs when the file's writes in flight are answered.
        case later
    }
}

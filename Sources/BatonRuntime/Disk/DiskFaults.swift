#if canImport(Glibc)
import Glibc
#endif

/// A slow or failing disk at the syscall seam, for the tests of what a
/// server and a standby do then (FoundationDB's fault points, switched on
/// by hand): `baton serve` and `baton agent` read them from the environment
/// variable BATON_DISK_FAULTS at start, and log a warning when it is set.
/// Nothing else sets them; with the variable unset, each sync pays one
/// comparison.
///
///     sync-delay-ms=2000        every fsync/fdatasync takes 2 s more
///     sync-delay-path=/journal/ ... of the paths containing this only (default: all)
///     sync-eio=/journal/        fsync/fdatasync of paths containing it fail with EIO
///     sync-hold=/tmp/hang       ... of the sync-delay-path paths wait while this file exists
///                               (a disk that hangs, then recovers, on cue)
///     read-hold=/tmp/hang       every pread waits while this file exists (a network
///                               thread that reads file data for a client, wedged)
///
/// e.g. BATON_DISK_FAULTS="sync-delay-ms=2000,sync-delay-path=/journal/".
public enum DiskFaults {
    nonisolated(unsafe) public private(set) static var syncDelayMilliseconds = 0
    nonisolated(unsafe) public private(set) static var syncDelayPathPart: String?
    nonisolated(unsafe) public private(set) static var syncErrorPathPart: String?
    nonisolated(unsafe) public private(set) static var syncHoldFile: String?
    nonisolated(unsafe) public private(set) static var readHoldFile: String?

    public static let environmentVariable = "BATON_DISK_FAULTS"

    /// Sets the faults from `text` (comma-separated `key=value`); once, at
    /// start, before any thread touches the disk. Returns what it set.
    public static func configure(_ text: String) throws -> String {
        for item in text.split(separator: ",") {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw SystemCallError("\(environmentVariable): '\(item)' is not key=value", path: text, errno: EINVAL) }
            switch parts[0] {
            case "sync-delay-ms":
                guard let value = Int(parts[1]), value >= 0 else {
                    throw SystemCallError("\(environmentVariable): sync-delay-ms needs a number", path: text, errno: EINVAL)
                }
                syncDelayMilliseconds = value
            case "sync-delay-path":
                syncDelayPathPart = parts[1]
            case "sync-eio":
                syncErrorPathPart = parts[1]
            case "sync-hold":
                syncHoldFile = parts[1]
            case "read-hold":
                readHoldFile = parts[1]
            default:
                throw SystemCallError("\(environmentVariable): unknown fault '\(parts[0])' (sync-delay-ms, sync-delay-path, sync-eio, sync-hold, read-hold)", path: text, errno: EINVAL)
            }
        }
        return "sync-delay-ms=\(syncDelayMilliseconds) sync-delay-path=\(syncDelayPathPart ?? "all")"
            + " sync-eio=\(syncErrorPathPart ?? "none") sync-hold=\(syncHoldFile ?? "none") read-hold=\(readHoldFile ?? "none")"
    }

    /// Before a read: waits while the read-hold file exists.
    static func beforeRead() {
        guard let hold = readHoldFile else { return }
        while access(hold, F_OK) == 0 { usleep(10_000) }
    }

    /// Before a sync of `path`: waits, or fails, as configured.
    static func beforeSync(_ path: String) -> Int32? {
        let delayed = syncDelayPathPart.map { path.contains($0) } ?? true
        if syncDelayMilliseconds > 0, delayed {
            usleep(UInt32(syncDelayMilliseconds) * 1000)
        }
        if let hold = syncHoldFile, delayed {
            while access(hold, F_OK) == 0 { usleep(10_000) }
        }
        if let part = syncErrorPathPart, path.contains(part) { return EIO }
        return nil
    }
}

#if canImport(Glibc)
import Glibc
#endif
import BatonCore
import CLinuxExtras

/// A failed system call, with what it was doing and on which path, so an
/// admin can act on the message.
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let path: String
    public let errno: Int32

    public init(_ operation: String, path: String, errno: Int32 = Glibc.errno) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    public var description: String { "\(operation) \(path): \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// A change to the data directory as it passes the system call seam, for a
/// crash-consistency test that rebuilds the states a power cut could leave
/// (the test kit in Tests/BatonIntegrationTests/CrashKit.swift). Paths are
/// as the store names them; an operation on an open file names the path it
/// was opened at.
public enum DiskOperation: Sendable {
    /// An open that may create the file (O_CREAT), and whether it truncated it (O_TRUNC).
    case open(path: String, created: Bool, truncated: Bool)
    case write(path: String, offset: UInt64, bytes: [UInt8])
    case truncate(path: String, size: UInt64)
    /// posix_fallocate from 0: the file is at least this long.
    case preallocate(path: String, bytes: UInt64)
    /// fdatasync or fsync of a file, or fsync of a directory (its entries).
    case sync(path: String)
    case rename(from: String, to: String)
    case remove(path: String)
    case makeDirectory(path: String)
    case removeDirectory(path: String)
}

/// Sees every change to the data directory, in order, after it succeeded.
/// Set only by tests (`Disk.recorder`); production never sets it, and each
/// call then costs one load of a nil reference.
public protocol DiskRecorder: AnyObject, Sendable {
    func record(_ operation: DiskOperation)
}

/// An open file descriptor that closes itself when the last user lets go of
/// it, so a read running on another thread never finds its descriptor closed
/// or reused under it.
public final class OpenFile: @unchecked Sendable {
    public let descriptor: Int32
    public let path: String

    public init(path: String, flags: Int32, mode: mode_t = 0o600) throws {
        let recorder = Disk.recorder
        let existed = recorder != nil && Disk.exists(path)
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SystemCallError("open", path: path) }
        self.descriptor = fd
        self.path = path
        let created = flags & O_CREAT != 0 && !existed
        if let recorder, created || flags & O_TRUNC != 0 {
            recorder.record(.open(path: path, created: created, truncated: flags & O_TRUNC != 0))
        }
    }

    deinit { Glibc.close(descriptor) }

    /// Writes all of `bytes` at `offset` (pwrite) or at the end (write) when offset is nil.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64? = nil) throws {
        // The recorder needs where an append lands.
        let recorder = Disk.recorder
        let start = recorder == nil ? 0 : offset ?? UInt64(max(0, lseek(descriptor, 0, SEEK_CUR)))
        var done = 0
        while done < bytes.count {
            let base = bytes.baseAddress! + done
            let result = offset.map { Glibc.pwrite(descriptor, base, bytes.count - done, off_t($0) + off_t(done)) }
                ?? Glibc.write(descriptor, base, bytes.count - done)
            if result < 0 {
                if errno == EINTR { continue }
                throw SystemCallError(offset == nil ? "write" : "pwrite", path: path)
            }
            done += result
        }
        recorder?.record(.write(path: path, offset: start, bytes: Array(bytes)))
    }

    public func write(_ bytes: [UInt8], at offset: UInt64? = nil) throws {
        try bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in try write(raw, at: offset) }
    }

    /// Reads up to `buffer.count` bytes at `offset`; fewer only at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        DiskFaults.beforeRead()
        var done = 0
        while done < buffer.count {
            let result = Glibc.pread(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if result < 0 {
                if errno == EINTR { continue }
                throw SystemCallError("pread", path: path)
            }
            if result == 0 { break }
            done += result
        }
        return done
    }

    public func truncate(to size: UInt64) throws {
        guard ftruncate(descriptor, off_t(size)) == 0 else { throw SystemCallError("ftruncate", path: path) }
        Disk.recorder?.record(.truncate(path: path, size: size))
    }

    /// Makes `range` read as zeros: a hole where the file system can punch
    /// one, zeros written where it cannot.
    public func zero(_ range: Range<UInt64>) throws {
        guard !range.isEmpty else { return }
        if fallocate(descriptor, BATON_FALLOC_FL_KEEP_SIZE | BATON_FALLOC_FL_PUNCH_HOLE,
                     Int(range.lowerBound), Int(range.count)) == 0 {
            // For the crash-state check, a hole reads as zeros written there.
            Disk.recorder?.record(.write(path: path, offset: range.lowerBound, bytes: [UInt8](repeating: 0, count: range.count)))
            return
        }
        guard errno == EOPNOTSUPP else { throw SystemCallError("fallocate (punch hole)", path: path) }
        let chunk = [UInt8](repeating: 0, count: 1 << 20)
        var offset = range.lowerBound
        while offset < range.upperBound {
            let count = Int(min(UInt64(chunk.count), range.upperBound - offset))
            try chunk.withUnsafeBytes { try write(UnsafeRawBufferPointer(rebasing: $0[0..<count]), at: offset) }
            offset += UInt64(count)
        }
    }

    /// Reserves disk space so that later writes inside it cannot fail for lack of space.
    public func preallocate(bytes: Int) throws {
        let result = posix_fallocate(descriptor, 0, off_t(bytes))
        guard result == 0 else { throw SystemCallError("fallocate", path: path, errno: result) }
        Disk.recorder?.record(.preallocate(path: path, bytes: UInt64(bytes)))
    }

    public func sync(dataOnly: Bool = true) throws {
        if let injected = DiskFaults.beforeSync(path) {
            throw SystemCallError(dataOnly ? "fdatasync" : "fsync", path: path, errno: injected)
        }
        let result = dataOnly ? fdatasync(descriptor) : fsync(descriptor)
        guard result == 0 else { throw SystemCallError(dataOnly ? "fdatasync" : "fsync", path: path) }
        Disk.recorder?.record(.sync(path: path))
    }

    public func size() throws -> UInt64 {
        var st = stat()
        guard fstat(descriptor, &st) == 0 else { throw SystemCallError("fstat", path: path) }
        return UInt64(st.st_size)
    }

    /// The whole file, for journal segments and checkpoints. Reads to the end
    /// whatever the size says (files under /proc say 0).
    public func readAll() throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: max(Int(try size()), 4096))
        var count = 0
        while true {
            if count == bytes.count { bytes += [UInt8](repeating: 0, count: bytes.count) }
            let got = try bytes.withUnsafeMutableBytes { raw in
                try read(into: UnsafeMutableRawBufferPointer(rebasing: raw[count...]), at: UInt64(count))
            }
            count += got
            if got == 0 || count < bytes.count { break }
        }
        bytes.removeLast(bytes.count - count)
        return bytes
    }
}

/// Directory helpers for the data directory.
public enum Disk {
    /// Tests only (see `DiskRecorder`). Set before the store under test
    /// opens and cleared after, while no other store in the process runs.
    nonisolated(unsafe) public static var recorder: (any DiskRecorder)?

    /// Creates a directory unless it exists; true when it created it.
    @discardableResult
    public static func makeDirectory(_ path: String) throws -> Bool {
        if mkdir(path, 0o700) == 0 {
            recorder?.record(.makeDirectory(path: path))
            return true
        } else if errno != EEXIST {
            throw SystemCallError("mkdir", path: path)
        }
        return false
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public static func remove(_ path: String) throws {
        if unlink(path) == 0 {
            recorder?.record(.remove(path: path))
        } else if errno != ENOENT {
            throw SystemCallError("unlink", path: path)
        }
    }

    /// Removes a directory and everything in it (nothing is left open in it).
    public static func removeTree(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            throw SystemCallError("lstat", path: path)
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { return try remove(path) }
        for name in try list(path) { try removeTree(path + "/" + name) }
        guard rmdir(path) == 0 else { throw SystemCallError("rmdir", path: path) }
        recorder?.record(.removeDirectory(path: path))
    }

    public static func rename(_ from: String, to: String) throws {
        guard Glibc.rename(from, to) == 0 else { throw SystemCallError("rename to \(to)", path: from) }
        recorder?.record(.rename(from: from, to: to))
    }

    /// Makes a directory's entries (creations, renames) durable.
    public static func syncDirectory(_ path: String) throws {
        try OpenFile(path: path, flags: O_RDONLY | O_DIRECTORY).sync(dataOnly: false)
    }

    /// Makes every file of the file system that holds `directory` durable
    /// (syncfs: one call, and the disk's cache flush once, where an fsync per
    /// file costs a journal commit each). `paths` are the files the caller
    /// needs durable: faults are injected and changes recorded for them.
    public static func syncFileSystem(containing directory: String, paths: [String]) throws {
        for path in paths {
            if let injected = DiskFaults.beforeSync(path) { throw SystemCallError("syncfs", path: path, errno: injected) }
        }
        let handle = try OpenFile(path: directory, flags: O_RDONLY | O_DIRECTORY)
        guard syncfs(handle.descriptor) == 0 else { throw SystemCallError("syncfs", path: directory) }
        if let recorder {
            for path in paths { recorder.record(.sync(path: path)) }
        }
    }

    public static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw SystemCallError("opendir", path: path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Writes a small file atomically and durably: temp file, fsync, rename, fsync of the directory.
    public static func writeAtomically(_ bytes: [UInt8], to path: String, directory: String) throws {
        let temporary = path + ".tmp"
        let file = try OpenFile(path: temporary, flags: O_WRONLY | O_CREAT | O_TRUNC)
        try file.write(bytes)
        try file.sync(dataOnly: false)
        try rename(temporary, to: path)
        try syncDirectory(directory)
    }

    /// When the file's data last changed, in nanoseconds since 1970.
    public static func modificationTime(_ path: String) throws -> Int64 {
        var st = stat()
        guard lstat(path, &st) == 0 else { throw SystemCallError("lstat", path: path) }
        return Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
    }

    public static func statfs(_ path: String) throws -> statvfs {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { throw SystemCallError("statvfs", path: path) }
        return st
    }
}

extension Timestamp {
    /// The wall clock, for stamping journal records. The only clock read of the data path.
    public static func now() -> Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timestamp(seconds: Int64(ts.tv_sec), nanoseconds: UInt32(ts.tv_nsec))
    }
}

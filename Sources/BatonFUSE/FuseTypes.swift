import CFuse3
import Glibc

/// A point in time as `struct stat` carries it.
public struct FuseTime: Hashable, Sendable {
    public var seconds: Int64
    public var nanoseconds: UInt32

    public init(seconds: Int64, nanoseconds: UInt32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    init(_ t: timespec) {
        self.init(seconds: Int64(t.tv_sec), nanoseconds: UInt32(truncatingIfNeeded: t.tv_nsec))
    }

    var timespec: Glibc.timespec { Glibc.timespec(tv_sec: Int(truncatingIfNeeded: seconds), tv_nsec: Int(nanoseconds)) }
}

/// What the kernel caches of an inode (`struct stat`).
public struct FuseAttributes: Hashable, Sendable {
    public var inode: UInt64
    public var mode: UInt32
    public var linkCount: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var sizeBytes: UInt64
    /// 512-byte blocks, as `st_blocks` counts them.
    public var blocks: UInt64
    /// The preferred I/O size (`st_blksize`).
    public var blockSizeBytes: UInt32
    public var atime: FuseTime
    public var mtime: FuseTime
    public var ctime: FuseTime

    public init(inode: UInt64, mode: UInt32, linkCount: UInt32, uid: UInt32, gid: UInt32, rdev: UInt64,
                sizeBytes: UInt64, blocks: UInt64, blockSizeBytes: UInt32,
                atime: FuseTime, mtime: FuseTime, ctime: FuseTime) {
        self.inode = inode
        self.mode = mode
        self.linkCount = linkCount
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.sizeBytes = sizeBytes
        self.blocks = blocks
        self.blockSizeBytes = blockSizeBytes
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
    }

    var stat: Glibc.stat {
        var s = Glibc.stat()
        s.st_ino = ino_t(inode)
        s.st_mode = mode_t(mode)
        s.st_nlink = nlink_t(linkCount)
        s.st_uid = uid_t(uid)
        s.st_gid = gid_t(gid)
        s.st_rdev = dev_t(rdev)
        // Sizes beyond Int64.max cannot be represented in off_t; clamping keeps a bad value visible, not fatal.
        s.st_size = off_t(clamping: sizeBytes)
        s.st_blocks = blkcnt_t(clamping: blocks)
        s.st_blksize = blksize_t(blockSizeBytes)
        s.st_atim = atime.timespec
        s.st_mtim = mtime.timespec
        s.st_ctim = ctime.timespec
        return s
    }
}

/// A name with its inode, as `fuse_reply_entry` and `fuse_reply_create` send it.
public struct FuseEntry: Hashable, Sendable {
    public var attributes: FuseAttributes
    /// Must change when an inode number is reused (NFS export, `FUSE_CAP_EXPORT_SUPPORT`).
    public var generation: UInt64
    /// How long the kernel may trust `attributes`.
    public var attributeTimeoutSeconds: Double
    /// How long the kernel may trust the name → inode mapping.
    public var entryTimeoutSeconds: Double

    public init(attributes: FuseAttributes, generation: UInt64, attributeTimeoutSeconds: Double,
                entryTimeoutSeconds: Double) {
        self.attributes = attributes
        self.generation = generation
        self.attributeTimeoutSeconds = attributeTimeoutSeconds
        self.entryTimeoutSeconds = entryTimeoutSeconds
    }

    var parameters: fuse_entry_param {
        var e = fuse_entry_param()
        e.ino = attributes.inode
        e.generation = generation
        e.attr = attributes.stat
        e.attr_timeout = attributeTimeoutSeconds
        e.entry_timeout = entryTimeoutSeconds
        return e
    }
}

/// A time to set in `setattr`: the file system's current time, or a given one.
/// A POSIX record lock as `struct flock` has it: `type` is F_RDLCK,
/// F_WRLCK or F_UNLCK; `length` 0 runs to the end of the file.
public struct FuseLock: Hashable, Sendable {
    public var type: Int32
    public var start: UInt64
    public var length: UInt64
    public var pid: Int32

    public init(type: Int32, start: UInt64, length: UInt64, pid: Int32) {
        self.type = type
        self.start = start
        self.length = length
        self.pid = pid
    }

    init(_ lock: flock) {
        self.init(type: Int32(lock.l_type), start: UInt64(clamping: lock.l_start), length: UInt64(clamping: lock.l_len),
                  pid: lock.l_pid)
    }

    var parameters: flock {
        var lock = flock()
        lock.l_type = Int16(type)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = off_t(clamping: start)
        lock.l_len = off_t(clamping: length)
        lock.l_pid = pid
        return lock
    }
}

public enum FuseTimeChange: Hashable, Sendable {
    case now
    case set(FuseTime)
}

/// The fields a `setattr` asks to change; nil leaves a field as it is.
public struct FuseAttributeChanges: Hashable, Sendable {
    /// The whole `st_mode` the kernel sends, file type bits included.
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var sizeBytes: UInt64?
    public var atime: FuseTimeChange?
    public var mtime: FuseTimeChange?
    public var ctime: FuseTime?

    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, sizeBytes: UInt64? = nil,
                atime: FuseTimeChange? = nil, mtime: FuseTimeChange? = nil, ctime: FuseTime? = nil) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.sizeBytes = sizeBytes
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
    }

    init(_ s: Glibc.stat, toSet: Int32) {
        self.init()
        if toSet & FUSE_SET_ATTR_MODE != 0 { mode = UInt32(s.st_mode) }
        if toSet & FUSE_SET_ATTR_UID != 0 { uid = UInt32(s.st_uid) }
        if toSet & FUSE_SET_ATTR_GID != 0 { gid = UInt32(s.st_gid) }
        // A negative size cannot come from the kernel (it checks truncate's argument); clamp rather than trap.
        if toSet & FUSE_SET_ATTR_SIZE != 0 { sizeBytes = UInt64(clamping: s.st_size) }
        // The kernel sets ATIME together with ATIME_NOW; NOW wins, as for utimensat(UTIME_NOW).
        if toSet & FUSE_SET_ATTR_ATIME_NOW != 0 {
            atime = .now
        } else if toSet & FUSE_SET_ATTR_ATIME != 0 {
            atime = .set(FuseTime(s.st_atim))
        }
        if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 {
            mtime = .now
        } else if toSet & FUSE_SET_ATTR_MTIME != 0 {
            mtime = .set(FuseTime(s.st_mtim))
        }
        if toSet & FUSE_SET_ATTR_CTIME != 0 { ctime = FuseTime(s.st_ctim) }
    }
}

/// What `statfs` answers (`struct statvfs`).
public struct FuseStatistics: Hashable, Sendable {
    public var blockSizeBytes: UInt32
    public var fragmentSizeBytes: UInt32
    /// In units of `fragmentSizeBytes`, as statvfs(3) counts them.
    public var blocks: UInt64
    public var blocksFree: UInt64
    public var blocksAvailable: UInt64
    public var files: UInt64
    public var filesFree: UInt64
    public var maxNameLength: UInt32

    public init(blockSizeBytes: UInt32, fragmentSizeBytes: UInt32, blocks: UInt64, blocksFree: UInt64,
                blocksAvailable: UInt64, files: UInt64, filesFree: UInt64, maxNameLength: UInt32) {
        self.blockSizeBytes = blockSizeBytes
        self.fragmentSizeBytes = fragmentSizeBytes
        self.blocks = blocks
        self.blocksFree = blocksFree
        self.blocksAvailable = blocksAvailable
        self.files = files
        self.filesFree = filesFree
        self.maxNameLength = maxNameLength
    }

    var statvfs: Glibc.statvfs {
        var s = Glibc.statvfs()
        s.f_bsize = UInt(blockSizeBytes)
        s.f_frsize = UInt(fragmentSizeBytes)
        s.f_blocks = fsblkcnt_t(blocks)
        s.f_bfree = fsblkcnt_t(blocksFree)
        s.f_bavail = fsblkcnt_t(blocksAvailable)
        s.f_files = fsfilcnt_t(files)
        s.f_ffree = fsfilcnt_t(filesFree)
        s.f_favail = fsfilcnt_t(filesFree)
        s.f_namemax = UInt(maxNameLength)
        return s
    }
}

/// How the kernel may treat an opened file (the flag bits of `fuse_file_info` that open and create set).
public struct FuseOpenOptions: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Bypass the page cache for this handle.
    public static let directIO = FuseOpenOptions(rawValue: 1 << 0)
    /// Keep cached data from earlier opens of the file.
    public static let keepCache = FuseOpenOptions(rawValue: 1 << 1)
    public static let nonSeekable = FuseOpenOptions(rawValue: 1 << 2)
    /// Let the kernel cache readdir results (opendir only).
    public static let cacheDirectory = FuseOpenOptions(rawValue: 1 << 3)
    /// The handle needs no flush on close.
    public static let noFlush = FuseOpenOptions(rawValue: 1 << 4)

    func fileInfo(handle: UInt64) -> fuse_file_info {
        var fi = fuse_file_info()
        fi.fh = handle
        fi.direct_io = contains(.directIO) ? 1 : 0
        fi.keep_cache = contains(.keepCache) ? 1 : 0
        fi.nonseekable = contains(.nonSeekable) ? 1 : 0
        fi.cache_readdir = contains(.cacheDirectory) ? 1 : 0
        fi.noflush = contains(.noFlush) ? 1 : 0
        return fi
    }
}

/// Capability flags negotiated at INIT (`FUSE_CAP_*`).
public struct FuseCapabilities: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    private init(_ flag: Int32) { self.rawValue = UInt32(bitPattern: flag) }

    public static let asyncRead = FuseCapabilities(FUSE_CAP_ASYNC_READ)
    public static let posixLocks = FuseCapabilities(FUSE_CAP_POSIX_LOCKS)
    public static let atomicOpenTruncate = FuseCapabilities(FUSE_CAP_ATOMIC_O_TRUNC)
    public static let exportSupport = FuseCapabilities(FUSE_CAP_EXPORT_SUPPORT)
    public static let dontMask = FuseCapabilities(FUSE_CAP_DONT_MASK)
    public static let flockLocks = FuseCapabilities(FUSE_CAP_FLOCK_LOCKS)
    public static let autoInvalidateData = FuseCapabilities(FUSE_CAP_AUTO_INVAL_DATA)
    public static let readdirPlus = FuseCapabilities(FUSE_CAP_READDIRPLUS)
    public static let asyncDirectIO = FuseCapabilities(FUSE_CAP_ASYNC_DIO)
    public static let writebackCache = FuseCapabilities(FUSE_CAP_WRITEBACK_CACHE)
    public static let parallelDirectoryOperations = FuseCapabilities(FUSE_CAP_PARALLEL_DIROPS)
    public static let posixACL = FuseCapabilities(FUSE_CAP_POSIX_ACL)
    public static let handleKillPrivileges = FuseCapabilities(FUSE_CAP_HANDLE_KILLPRIV)
    public static let cacheSymlinks = FuseCapabilities(FUSE_CAP_CACHE_SYMLINKS)
}

/// The connection parameters of INIT. libfuse fills `wanted` with its defaults before `initialize` runs;
/// what `initialize` leaves here is sent to the kernel.
public struct FuseConnection: Sendable {
    public let protocolMajor: UInt32
    public let protocolMinor: UInt32
    /// What the kernel offers.
    public let capable: FuseCapabilities
    /// What the file system asks for; libfuse aborts the mount if this holds anything not `capable`.
    public private(set) var wanted: FuseCapabilities
    public var maxWriteBytes: UInt32
    public var maxReadBytes: UInt32
    public var maxReadaheadBytes: UInt32
    public var maxBackground: UInt32
    public var congestionThreshold: UInt32
    public var timeGranularityNanoseconds: UInt32

    init(_ c: fuse_conn_info) {
        protocolMajor = c.proto_major
        protocolMinor = c.proto_minor
        capable = FuseCapabilities(rawValue: c.capable)
        wanted = FuseCapabilities(rawValue: c.want)
        maxWriteBytes = c.max_write
        maxReadBytes = c.max_read
        maxReadaheadBytes = c.max_readahead
        maxBackground = c.max_background
        congestionThreshold = c.congestion_threshold
        timeGranularityNanoseconds = c.time_gran
    }

    func apply(to c: inout fuse_conn_info) {
        c.want = wanted.rawValue
        c.max_write = maxWriteBytes
        c.max_read = maxReadBytes
        c.max_readahead = maxReadaheadBytes
        c.max_background = maxBackground
        c.congestion_threshold = congestionThreshold
        c.time_gran = timeGranularityNanoseconds
    }

    /// Asks for those of `capabilities` the kernel offers; returns the ones it does not.
    @discardableResult
    public mutating func enable(_ capabilities: FuseCapabilities) -> FuseCapabilities {
        wanted.formUnion(capabilities.intersection(capable))
        return capabilities.subtracting(capable)
    }

    public mutating func disable(_ capabilities: FuseCapabilities) {
        wanted.subtract(capabilities)
    }
}

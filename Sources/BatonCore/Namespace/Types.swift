/// The export's own inode number: allocated by the namespace, carried by the
/// journal, identical on every node. Never taken from a node's local disk.
public typealias InodeNumber = UInt64

/// The root directory of every export (FUSE_ROOT_ID).
public let rootInode: InodeNumber = 1

/// A POSIX error number, with Linux's values. The core has no libc, so it
/// names the numbers it uses here.
public struct Errno: Error, Hashable, Sendable, CustomStringConvertible {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }

    public static let EPERM = Errno(1)
    public static let ENOENT = Errno(2)
    public static let EINTR = Errno(4)
    public static let EIO = Errno(5)
    public static let E2BIG = Errno(7)
    public static let EBADF = Errno(9)
    public static let EAGAIN = Errno(11)
    public static let EACCES = Errno(13)
    public static let EEXIST = Errno(17)
    public static let EXDEV = Errno(18)
    public static let ENOTDIR = Errno(20)
    public static let EISDIR = Errno(21)
    public static let EINVAL = Errno(22)
    public static let EFBIG = Errno(27)
    public static let ENOSPC = Errno(28)
    public static let EROFS = Errno(30)
    public static let EMLINK = Errno(31)
    public static let ERANGE = Errno(34)
    public static let EDEADLK = Errno(35)
    public static let ENOLCK = Errno(37)
    public static let ENAMETOOLONG = Errno(36)
    public static let ENOSYS = Errno(38)
    public static let ENOTEMPTY = Errno(39)
    public static let ELOOP = Errno(40)
    public static let ENODATA = Errno(61)
    public static let EOPNOTSUPP = Errno(95)
    public static let ENOTCONN = Errno(107)
    public static let ETIMEDOUT = Errno(110)
    public static let ESTALE = Errno(116)

    public var description: String { "errno \(code)" }
}

/// A point in time as the journal records it (CLOCK_REALTIME of the server
/// that applied the mutation, so replay on any node gives the same times).
public struct Timestamp: Hashable, Comparable, Sendable {
    public var seconds: Int64
    public var nanoseconds: UInt32

    public init(seconds: Int64, nanoseconds: UInt32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    public static let zero = Timestamp(seconds: 0, nanoseconds: 0)

    public static func < (a: Timestamp, b: Timestamp) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }
}

/// File type and permission bits, as in `st_mode`.
public enum Mode {
    public static let typeMask: UInt32 = 0o170000
    public static let regular: UInt32 = 0o100000
    public static let directory: UInt32 = 0o040000
    public static let symlink: UInt32 = 0o120000
    public static let fifo: UInt32 = 0o010000
    public static let characterDevice: UInt32 = 0o020000
    public static let blockDevice: UInt32 = 0o060000
    public static let socket: UInt32 = 0o140000
    public static let setUID: UInt32 = 0o4000
    public static let setGID: UInt32 = 0o2000
    public static let sticky: UInt32 = 0o1000
    public static let permissionMask: UInt32 = 0o7777
    public static let groupExecute: UInt32 = 0o010

    public static func type(_ mode: UInt32) -> UInt32 { mode & typeMask }
    public static func isDirectory(_ mode: UInt32) -> Bool { type(mode) == directory }
    public static func isRegular(_ mode: UInt32) -> Bool { type(mode) == regular }
}

/// What `stat` shows of an inode.
public struct FileAttributes: Hashable, Sendable {
    public var inode: InodeNumber
    public var generation: UInt64
    public var mode: UInt32
    public var linkCount: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var size: UInt64
    public var atime: Timestamp
    public var mtime: Timestamp
    public var ctime: Timestamp
    /// 512-byte blocks the data takes on the serving node's disk (`st_blocks`).
    /// Node state, not export state: the namespace keeps 0 and the server
    /// fills it in from the data file when it answers.
    public var blocks: UInt64 = 0

    public init(inode: InodeNumber, generation: UInt64, mode: UInt32, linkCount: UInt32, uid: UInt32, gid: UInt32,
                rdev: UInt64, size: UInt64, atime: Timestamp, mtime: Timestamp, ctime: Timestamp) {
        self.inode = inode
        self.generation = generation
        self.mode = mode
        self.linkCount = linkCount
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.size = size
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
    }
}

/// A directory entry name: bytes, as POSIX has them (not necessarily UTF-8).
public struct FileName: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public init(_ string: String) { self.bytes = Array(string.utf8) }

    /// NAME_MAX.
    public static let maxLength = 255

    public var description: String { String(decoding: bytes, as: UTF8.self) }
}

/// Who asks for a creation or an attribute change (from the FUSE request context).
public struct Caller: Hashable, Sendable {
    public var uid: UInt32
    public var gid: UInt32
    public var umask: UInt32
    public init(uid: UInt32, gid: UInt32, umask: UInt32 = 0) {
        self.uid = uid
        self.gid = gid
        self.umask = umask
    }
    public static let root = Caller(uid: 0, gid: 0)
}

/// Who sends a request: the uid and primary gid of the process on the client
/// (from the FUSE request context). A server that squashes (`Squash`) checks
/// permissions for the identity these map to; one that does not leaves the
/// checks to the client's kernel (`default_permissions`), which also knows
/// the caller's supplementary groups.
public struct Credentials: Hashable, Sendable, CustomStringConvertible {
    public var uid: UInt32
    public var gid: UInt32
    public init(uid: UInt32, gid: UInt32) {
        self.uid = uid
        self.gid = gid
    }
    public static let root = Credentials(uid: 0, gid: 0)
    /// NFS's default `anonuid`/`anongid`: the user "nobody".
    public static let nobody = Credentials(uid: 65534, gid: 65534)

    public var description: String { "uid \(uid) gid \(gid)" }
}

/// A time to set with `utimensat`: a given value, or the server's time of the change.
public enum TimeChange: Hashable, Sendable {
    case now
    case set(Timestamp)
}

/// The fields of a `setattr`; nil leaves the field as it is.
public struct AttributeChanges: Hashable, Sendable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var atime: TimeChange?
    public var mtime: TimeChange?
    public var ctime: Timestamp?

    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: UInt64? = nil,
                atime: TimeChange? = nil, mtime: TimeChange? = nil, ctime: Timestamp? = nil) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
    }
}

/// One entry as readdir returns it. `cookie` is the offset to continue after it.
public struct DirectoryEntry: Hashable, Sendable {
    public var name: FileName
    public var inode: InodeNumber
    public var mode: UInt32
    public var cookie: UInt64
    public init(name: FileName, inode: InodeNumber, mode: UInt32, cookie: UInt64) {
        self.name = name
        self.inode = inode
        self.mode = mode
        self.cookie = cookie
    }
}

/// What `statfs` answers.
public struct FileSystemStatistics: Hashable, Sendable {
    public var blockSize: UInt32
    public var totalBlocks: UInt64
    public var freeBlocks: UInt64
    public var availableBlocks: UInt64
    public var totalInodes: UInt64
    public var freeInodes: UInt64
    public var maxNameLength: UInt32
    public init(blockSize: UInt32, totalBlocks: UInt64, freeBlocks: UInt64, availableBlocks: UInt64,
                totalInodes: UInt64, freeInodes: UInt64, maxNameLength: UInt32) {
        self.blockSize = blockSize
        self.totalBlocks = totalBlocks
        self.freeBlocks = freeBlocks
        self.availableBlocks = availableBlocks
        self.totalInodes = totalInodes
        self.freeInodes = freeInodes
        self.maxNameLength = maxNameLength
    }
}

/// Open flags that matter to the server (Linux values).
public enum OpenFlags {
    public static let accessMask: UInt32 = 0o3
    public static let writeOnly: UInt32 = 0o1
    public static let readWrite: UInt32 = 0o2
    public static let create: UInt32 = 0o100
    public static let exclusive: UInt32 = 0o200
    public static let truncate: UInt32 = 0o1000
    public static let append: UInt32 = 0o2000
}

/// rename(2) flags.
public enum RenameFlags {
    public static let noReplace: UInt32 = 1
    public static let exchange: UInt32 = 2
}

/// setxattr(2) flags.
public enum XattrFlags {
    public static let create: UInt32 = 1
    public static let replace: UInt32 = 2
}

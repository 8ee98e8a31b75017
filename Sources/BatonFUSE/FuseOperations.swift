import CFuse3

/// Who sent a request (`fuse_req_ctx`), copied out because libfuse's context
/// lives only as long as the request.
public struct FuseRequest: Hashable, Sendable {
    public var uid: UInt32
    public var gid: UInt32
    public var pid: Int32
    public var umask: UInt32

    public init(uid: UInt32, gid: UInt32, pid: Int32, umask: UInt32) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.umask = umask
    }

    init(_ request: fuse_req_t) {
        let context = fuse_req_ctx(request)!.pointee
        self.init(uid: context.uid, gid: context.gid, pid: context.pid, umask: context.umask)
    }
}

/// A file system served through libfuse's low-level API. Methods run on
/// libfuse's worker threads and must return without waiting on anything slow
/// (network, disk): hand the reply to whoever answers later; it may be
/// answered from any thread. Names and data are copies the implementation owns.
///
/// Inode numbers are the kernel's node ids: 1 is the root (FUSE_ROOT_ID).
public protocol FuseOperations: AnyObject, Sendable {
    /// Negotiates the connection before any request (INIT); no reply.
    func initialize(_ connection: inout FuseConnection)

    /// Also called once per entry of a FORGET_MULTI batch; no reply.
    func forget(_ request: FuseRequest, inode: UInt64, lookups: UInt64)

    func lookup(_ request: FuseRequest, parent: UInt64, name: [UInt8], reply: consuming FuseEntryReply)
    func getattr(_ request: FuseRequest, inode: UInt64, reply: consuming FuseAttributesReply)
    func setattr(_ request: FuseRequest, inode: UInt64, changes: FuseAttributeChanges,
                 reply: consuming FuseAttributesReply)
    func readlink(_ request: FuseRequest, inode: UInt64, reply: consuming FuseDataReply)
    func mknod(_ request: FuseRequest, parent: UInt64, name: [UInt8], mode: UInt32, rdev: UInt64,
               reply: consuming FuseEntryReply)
    func mkdir(_ request: FuseRequest, parent: UInt64, name: [UInt8], mode: UInt32, reply: consuming FuseEntryReply)
    func unlink(_ request: FuseRequest, parent: UInt64, name: [UInt8], reply: consuming FuseEmptyReply)
    func rmdir(_ request: FuseRequest, parent: UInt64, name: [UInt8], reply: consuming FuseEmptyReply)
    func symlink(_ request: FuseRequest, parent: UInt64, name: [UInt8], target: [UInt8],
                 reply: consuming FuseEntryReply)
    /// `flags` are renameat2's: RENAME_NOREPLACE, RENAME_EXCHANGE.
    func rename(_ request: FuseRequest, parent: UInt64, name: [UInt8], newParent: UInt64, newName: [UInt8],
                flags: UInt32, reply: consuming FuseEmptyReply)
    func link(_ request: FuseRequest, inode: UInt64, newParent: UInt64, newName: [UInt8],
              reply: consuming FuseEntryReply)
    /// `flags` are open(2)'s, without O_CREAT, O_EXCL and O_NOCTTY (the kernel handles those).
    func open(_ request: FuseRequest, inode: UInt64, flags: Int32, reply: consuming FuseOpenReply)
    func read(_ request: FuseRequest, inode: UInt64, handle: UInt64, offset: UInt64, size: UInt32,
              reply: consuming FuseDataReply)
    /// `data` points into libfuse's receive buffer, which libfuse reuses for
    /// the next request: copy what is needed before returning.
    func write(_ request: FuseRequest, inode: UInt64, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer,
               reply: consuming FuseWriteReply)
    /// Called on every close(2) of a descriptor, so possibly several times
    /// per open. `lockOwner`: the closing process's POSIX locks on the file go.
    func flush(_ request: FuseRequest, inode: UInt64, handle: UInt64, lockOwner: UInt64, reply: consuming FuseEmptyReply)
    /// The last close of an open file; the kernel ignores the error if any.
    /// `flockOwner`: set when the open file description held flock locks, which go with it.
    func release(_ request: FuseRequest, inode: UInt64, handle: UInt64, flockOwner: UInt64?, reply: consuming FuseEmptyReply)
    /// F_GETLK: the lock that would keep `lock` from being taken, or none.
    func getlk(_ request: FuseRequest, inode: UInt64, lockOwner: UInt64, lock: FuseLock, reply: consuming FuseLockReply)
    /// F_SETLK, or F_SETLKW with `sleep`: answered once the lock is taken.
    func setlk(_ request: FuseRequest, inode: UInt64, lockOwner: UInt64, lock: FuseLock, sleep: Bool,
               reply: consuming FuseEmptyReply)
    /// flock(2): `operation` is LOCK_SH, LOCK_EX or LOCK_UN, with LOCK_NB.
    func flock(_ request: FuseRequest, inode: UInt64, lockOwner: UInt64, operation: Int32, reply: consuming FuseEmptyReply)
    func fsync(_ request: FuseRequest, inode: UInt64, handle: UInt64, dataOnly: Bool, reply: consuming FuseEmptyReply)
    func opendir(_ request: FuseRequest, inode: UInt64, flags: Int32, reply: consuming FuseOpenReply)
    /// `offset` is 0 or the `nextOffset` of an entry sent earlier.
    func readdir(_ request: FuseRequest, inode: UInt64, handle: UInt64, offset: UInt64,
                 reply: consuming FuseDirectoryReply)
    func releasedir(_ request: FuseRequest, inode: UInt64, handle: UInt64, reply: consuming FuseEmptyReply)
    func fsyncdir(_ request: FuseRequest, inode: UInt64, handle: UInt64, dataOnly: Bool,
                  reply: consuming FuseEmptyReply)
    func statfs(_ request: FuseRequest, inode: UInt64, reply: consuming FuseStatisticsReply)
    /// `flags` are setxattr(2)'s: XATTR_CREATE, XATTR_REPLACE.
    func setxattr(_ request: FuseRequest, inode: UInt64, name: [UInt8], value: [UInt8], flags: Int32,
                  reply: consuming FuseEmptyReply)
    /// `size` 0 asks for the value's size only.
    func getxattr(_ request: FuseRequest, inode: UInt64, name: [UInt8], size: UInt32, reply: consuming FuseXattrReply)
    /// `size` 0 asks for the list's size only.
    func listxattr(_ request: FuseRequest, inode: UInt64, size: UInt32, reply: consuming FuseXattrReply)
    func removexattr(_ request: FuseRequest, inode: UInt64, name: [UInt8], reply: consuming FuseEmptyReply)
    /// Creates and opens a regular file; `flags` are open(2)'s.
    func create(_ request: FuseRequest, parent: UInt64, name: [UInt8], mode: UInt32, flags: Int32,
                reply: consuming FuseCreateReply)
}

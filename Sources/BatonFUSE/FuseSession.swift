import CFuse3
import Glibc

/// Why a session could not be set up or run, in words an admin can act on.
public enum FuseError: Error, Hashable, Sendable, CustomStringConvertible {
    case mountpointMissing(String)
    case mountpointNotDirectory(String)
    /// stat(2) of the mountpoint failed otherwise, e.g. ENOTCONN for a stale FUSE mount.
    case mountpointUnusable(String, errno: Int32)
    case optionsRejected([String])
    case mountFailed(String)
    case signalHandlersFailed
    case loopFailed(errno: Int32)

    public var description: String {
        switch self {
        case .mountpointMissing(let path): "mountpoint \(path) does not exist"
        case .mountpointNotDirectory(let path): "mountpoint \(path) is not a directory"
        case .mountpointUnusable(let path, let code) where code == ENOTCONN:
            "mountpoint \(path) is a stale FUSE mount (\(errorText(code))); run `fusermount3 -u \(path)` first"
        case .mountpointUnusable(let path, let code): "mountpoint \(path) is unusable: \(errorText(code))"
        case .optionsRejected(let options):
            "libfuse rejected the mount options \(options.joined(separator: ",")) (its message is on stderr)"
        case .mountFailed(let path): "mounting on \(path) failed (libfuse's message is on stderr)"
        case .signalHandlersFailed: "could not install the SIGTERM/SIGINT/SIGHUP handlers"
        case .loopFailed(let code): "the FUSE request loop failed: \(errorText(code))"
        }
    }
}

private func errorText(_ code: Int32) -> String {
    String(cString: strerror(code))
}

/// How the request loop ended.
public enum FuseLoopExit: Hashable, Sendable {
    /// The file system was unmounted from outside (`fusermount3 -u`, `umount`).
    case unmounted
    /// SIGTERM, SIGINT or SIGHUP arrived.
    case signal(Int32)
}

/// What the C side reaches through `fuse_req_userdata`: the session pointer
/// and the operations. Every pending request holds a reference, so the libfuse
/// session is destroyed only after the last late reply has been sent.
///
/// Unchecked Sendable: both fields are set once on the setting-up thread before
/// the loop creates any worker thread (thread creation orders the writes before
/// every read) and only read afterwards.
final class SessionCore: @unchecked Sendable {
    var session: OpaquePointer?
    var operations: (any FuseOperations)?
    let interrupts = InterruptHandlers()

    deinit {
        if let session { fuse_session_destroy(session) }
    }
}

/// One FUSE mount through libfuse's low-level API, used in this order:
/// `init` (parse options), `mount`, `run`, `unmount`. Going to the background
/// is the caller's business (fork and Swift's runtimes do not mix).
/// Not thread-safe: drive it from one thread.
public final class FuseSession {
    public let mountpoint: String
    private let core: SessionCore
    private var mounted = false
    private var ran = false

    /// Creates the session. `options` are libfuse `-o` options, each passed as
    /// its own `-o` (e.g. "allow_other", "default_permissions", "fsname=x",
    /// "subtype=y", "max_read=131072"); libfuse and the kernel interpret them.
    public init(mountpoint: String, options: [String]) throws(FuseError) {
        self.mountpoint = mountpoint
        core = SessionCore()
        // argv[0] must be present: libfuse's option parser skips it.
        let arguments = ["baton"] + options.flatMap { ["-o", $0] }
        let cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        defer { cArguments.forEach { free($0) } }
        var table = makeOperationTable()
        let session = cArguments.withUnsafeBufferPointer { argv -> OpaquePointer? in
            var args = fuse_args(argc: Int32(argv.count), argv: UnsafeMutablePointer(mutating: argv.baseAddress),
                                 allocated: 0)
            // Parsing may replace args with a copy libfuse allocated; free that, never ours.
            defer { fuse_opt_free_args(&args) }
            return fuse_session_new(&args, &table, MemoryLayout<fuse_lowlevel_ops>.size,
                                    Unmanaged.passUnretained(core).toOpaque())
        }
        guard let session else { throw .optionsRejected(options) }
        core.session = session
    }

    deinit {
        unmount()
    }

    /// Tells the kernel to drop what it caches of a file (for the operations' use).
    public var cacheNotifier: FuseCacheNotifier { FuseCacheNotifier(core) }

    /// Mounts the file system. Requests queue in the kernel until `run`.
    ///
    /// Also blocks SIGTERM, SIGINT and SIGHUP in the calling thread, so that
    /// every thread started from it afterwards (network threads) inherits the
    /// block and `run`'s thread is the only one they can reach: libfuse's loop
    /// notices its exit flag only when the signal interrupts that thread.
    public func mount() throws(FuseError) {
        precondition(!mounted, "mount called twice")
        var info = Glibc.stat()
        guard stat(mountpoint, &info) == 0 else {
            let code = errno
            throw code == ENOENT ? .mountpointMissing(mountpoint) : .mountpointUnusable(mountpoint, errno: code)
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw .mountpointNotDirectory(mountpoint) }
        guard fuse_session_mount(core.session, mountpoint) == 0 else { throw .mountFailed(mountpoint) }
        mounted = true
        setTerminationSignals(blocked: true)
    }

    /// Serves requests with `operations` on up to `maxThreads` worker threads,
    /// each with its own /dev/fuse descriptor (clone_fd), until the file
    /// system is unmounted or SIGTERM, SIGINT or SIGHUP arrives. Blocks the
    /// calling thread. Call `unmount` afterwards.
    @discardableResult
    public func run(_ operations: any FuseOperations, maxThreads: Int) throws(FuseError) -> FuseLoopExit {
        precondition(mounted && !ran, "run needs a mounted session and runs once")
        precondition(maxThreads > 0, "maxThreads must be positive")
        ran = true
        core.operations = operations
        guard fuse_set_signal_handlers(core.session) == 0 else { throw .signalHandlersFailed }
        let config = fuse_loop_cfg_create()
        defer { fuse_loop_cfg_destroy(config) }
        fuse_loop_cfg_set_clone_fd(config, 1)
        fuse_loop_cfg_set_max_threads(config, UInt32(clamping: maxThreads))
        setTerminationSignals(blocked: false)
        let result = fuse_session_loop_mt(core.session, config)
        // Blocked again before the handlers go, so a second signal cannot kill
        // the process with its default action before `unmount` has run.
        setTerminationSignals(blocked: true)
        fuse_remove_signal_handlers(core.session)
        switch result {
        case 0: return .unmounted
        case let signal where signal > 0: return .signal(signal)
        default: throw .loopFailed(errno: -result)
        }
    }

    /// Unmounts if mounted. Replies still pending go nowhere but stay safe:
    /// the libfuse session lives until the last of them is answered.
    public func unmount() {
        guard mounted else { return }
        mounted = false
        fuse_session_unmount(core.session)
    }
}

private func setTerminationSignals(blocked: Bool) {
    var set = sigset_t()
    sigemptyset(&set)
    for signal in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, signal) }
    pthread_sigmask(blocked ? SIG_BLOCK : SIG_UNBLOCK, &set, nil)
}

/// Drops the kernel's cached pages and attributes of a file, so that its
/// next read and stat ask the file system: for changes the kernel cannot
/// see, made through another mount; or fills its cached pages. Never call it on a thread that answers
/// requests the kernel may be waiting on for that file (a read holding a
/// page lock): the kernel waits for those pages.
public struct FuseCacheNotifier: Sendable {
    private let core: SessionCore

    fileprivate init(_ core: SessionCore) { self.core = core }

    /// 0, or a negative errno (-ENOENT: the kernel holds nothing of the inode).
    @discardableResult
    public func invalidate(inode: UInt64) -> Int32 {
        guard let session = core.session else { return -ENOTCONN }
        return fuse_lowlevel_notify_inval_inode(session, fuse_ino_t(inode), 0, 0)
    }

    /// Puts `bytes` into the kernel's page cache of a file at `offset` (the
    /// kernel grows its idea of the file's size to cover them). The same
    /// caution as for `invalidate`: the kernel locks each page first.
    /// 0, or a negative errno.
    @discardableResult
    public func store(inode: UInt64, offset: UInt64, bytes: UnsafeRawBufferPointer) -> Int32 {
        guard let session = core.session else { return -ENOTCONN }
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return 0 }
        var vector = fuse_bufvec()
        vector.count = 1
        vector.buf.size = bytes.count
        vector.buf.mem = UnsafeMutableRawPointer(mutating: base)
        vector.buf.fd = -1
        return fuse_lowlevel_notify_store(session, fuse_ino_t(inode), off_t(offset), &vector, fuse_buf_copy_flags(0))
    }
}

import BatonFUSE

/// How `baton mount` mounts an export.
public struct FuseMountOptions: Hashable, Sendable {
    public var mountpoint: String
    /// libfuse `-o` options, e.g. "allow_other", "fsname=EXPORT@NODE_A,NODE_B", "subtype=baton".
    public var options: [String]
    public var attributeTimeoutSeconds: Double
    public var entryTimeoutSeconds: Double
    /// Let the kernel cache writes (faster sequential writes; the kernel then owns size and mtime while dirty).
    public var writebackCache: Bool
    public var maxThreads: Int
    /// Bytes of writes answered before the server has them (0: none); see `WriteBehind`.
    public var writeBehindBytes: Int
    /// Bytes fetched around a small read into the page cache (0: none); see `ReadPrefetch`.
    public var prefetchWindowBytes: Int

    public init(mountpoint: String, options: [String] = [],
                attributeTimeoutSeconds: Double = 1.0, entryTimeoutSeconds: Double = 1.0,
                writebackCache: Bool = false, maxThreads: Int = 10, writeBehindBytes: Int = 0,
                prefetchWindowBytes: Int = 0) {
        self.mountpoint = mountpoint
        self.options = options
        self.attributeTimeoutSeconds = attributeTimeoutSeconds
        self.entryTimeoutSeconds = entryTimeoutSeconds
        self.writebackCache = writebackCache
        self.maxThreads = maxThreads
        self.writeBehindBytes = writeBehindBytes
        self.prefetchWindowBytes = prefetchWindowBytes
    }
}

/// A mounted export, driven from one thread in this order:
///
///     let mount = try FuseMount(options)   // mounts; blocks SIGTERM/SIGINT/SIGHUP in this thread
///     // start the network threads and the transport
///     try mount.run(transport: transport)   // until unmounted or signalled
///     mount.unmount()
///
/// Errors are `FuseError`s whose descriptions tell an admin what to fix.
public final class FuseMount {
    public let options: FuseMountOptions
    private let session: FuseSession

    /// Mounts the export's file system on `options.mountpoint`.
    public init(_ options: FuseMountOptions) throws(FuseError) {
        precondition(options.maxThreads > 0, "maxThreads must be positive")
        self.options = options
        // The server checks no permissions on open, read or write (operations
        // carry no caller), so the kernel must check them against the attributes.
        let fuseOptions = options.options.contains("default_permissions")
            ? options.options : ["default_permissions"] + options.options
        session = try FuseSession(mountpoint: options.mountpoint, options: fuseOptions)
        try session.mount()
    }

    /// Serves kernel requests through `transport` until the file system is
    /// unmounted or SIGTERM, SIGINT or SIGHUP arrives, then waits for the
    /// writes answered early to reach the server.
    @discardableResult
    public func run(transport: any OperationTransport) throws(FuseError) -> FuseLoopExit {
        let fileSystem = ExportFileSystem(
            transport: transport, attributeTimeoutSeconds: options.attributeTimeoutSeconds,
            entryTimeoutSeconds: options.entryTimeoutSeconds, writebackCache: options.writebackCache,
            writeBehindBytes: options.writeBehindBytes, prefetchWindowBytes: options.prefetchWindowBytes,
            cache: session.cacheNotifier)
        defer { fileSystem.waitForWritesBehind() }
        return try session.run(fileSystem, maxThreads: options.maxThreads)
    }

    /// Unmounts; safe to call more than once, and done on deinit too.
    public func unmount() {
        session.unmount()
    }
}

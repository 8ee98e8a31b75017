import ArgumentParser
import BatonClient
import BatonCore
import BatonRuntime
import Foundation
import Logging
import NIOCore

struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mount an export with FUSE.",
        discussion: """
            SOURCE is EXPORT@HOST:PORT[,HOST:PORT...]: every node that may serve the export.
            Baton options in -o: timeout=SECONDS (how long a request may wait across a failover or
            restart before it fails with EIO; default 60), attr_timeout=SECONDS, entry_timeout=SECONDS
            (kernel caching; default 1), write_behind=SIZE (writes answered before the server has them,
            errors reported by the file's next write, fsync or close; default 8M, 0 turns it off),
            prefetch=SIZE (a small read fetches the SIZE-aligned window around it into the page cache,
            while no handle of this mount may write the file; default 256K, 0 turns it off; off with
            writeback_cache), writeback_cache, max_threads=N, log_file=PATH|syslog (where a mount in the background
            logs; default: the system log when /dev/log exists, else /var/log/baton/mount-EXPORT.log),
            log_level=LEVEL, cert=PATH,key=PATH,ca=PATH (TLS: a client certificate from `baton cert issue
            --role client`, its key, and the cluster's CA; without them the mount speaks plain TCP, which a
            TLS cluster refuses). Other options go to FUSE (allow_other,
            default_permissions, ro, ...); allow_other and default_permissions are on by default.
            """)

    @Argument(help: "EXPORT@HOST:PORT[,HOST:PORT...]")
    var source: String

    @Argument(help: "The directory to mount on.")
    var mountpoint: String

    @Option(name: .short, help: "Comma-separated mount options.")
    var options: [String] = []

    @Flag(name: .short, help: "Stay in the foreground.")
    var foreground = false

    /// Set on the background copy that `baton mount` starts of itself.
    @Flag(help: .hidden)
    var backgroundChild = false

    @OptionGroup var logging: LoggingOptions

    struct Settings {
        var exportName: String
        var addresses: [NodeAddress]
        var requestTimeoutSeconds = 60.0
        var attributeTimeoutSeconds = 1.0
        var entryTimeoutSeconds = 1.0
        var writebackCache = false
        var writeBehindBytes = 8 << 20
        var prefetchWindowBytes = 256 << 10
        var maxThreads = 10
        var logFile: String?
        var logLevel: Logger.Level?
        var certificate: String?
        var key: String?
        var authority: String?
        var fuseOptions: [String] = []

        /// The TLS files when all three are given; nil for plain TCP.
        var tls: TLSFiles? {
            guard let certificate, let key, let authority else { return nil }
            return TLSFiles(certificate: certificate, key: key, authority: authority)
        }
    }

    /// Splits SOURCE and the -o list into Baton's settings and libfuse's options.
    static func parse(source: String, options: [String]) throws -> Settings {
        let parts = source.split(separator: "@", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty else {
            throw ValidationError("source must be EXPORT@HOST:PORT[,HOST:PORT...], not '\(source)'")
        }
        if let problem = ClusterConfiguration.exportNameProblem(parts[0]) {
            throw ValidationError("export name '\(parts[0])' in '\(source)' \(problem)")
        }
        var addresses: [NodeAddress] = []
        for text in parts[1].split(separator: ",") {
            guard let address = NodeAddress(String(text)), address.port != 0 else {
                throw ValidationError("'\(text)' in '\(source)' is not HOST:PORT")
            }
            addresses.append(address)
        }
        guard !addresses.isEmpty else { throw ValidationError("source '\(source)' names no HOST:PORT") }
        var settings = Settings(exportName: parts[0], addresses: addresses)
        // libfuse splits options at commas: the source's own commas are escaped.
        let fsname = source.replacingOccurrences(of: ",", with: "\\,")
        var fuse = ["allow_other", "default_permissions", "fsname=\(fsname)", "subtype=baton"]
        for option in options.flatMap({ $0.split(separator: ",").map(String.init) }) where !option.isEmpty {
            let (key, value) = option.split(separator: "=", maxSplits: 1).map(String.init).pair
            func seconds() throws -> Double {
                guard let value, let number = Double(value), number >= 0 else {
                    throw ValidationError("mount option \(key) needs a number of seconds: '\(option)'")
                }
                return number
            }
            switch key {
            case "timeout": settings.requestTimeoutSeconds = try seconds()
            case "attr_timeout": settings.attributeTimeoutSeconds = try seconds()
            case "entry_timeout": settings.entryTimeoutSeconds = try seconds()
            case "writeback_cache": settings.writebackCache = true
            case "write_behind":
                guard let value, let bytes = byteCount(value), bytes <= 1 << 30 else {
                    throw ValidationError("write_behind needs a size up to 1G, such as 8M or 0: '\(option)'")
                }
                settings.writeBehindBytes = bytes
            case "prefetch":
                guard let value, let bytes = byteCount(value), bytes <= WireLimits.maxDataBytes,
                      bytes == 0 || (bytes >= 16 << 10 && bytes.nonzeroBitCount == 1) else {
                    throw ValidationError("prefetch needs a power of two from 16K to 1M, or 0 for none, such as 256K: '\(option)'")
                }
                settings.prefetchWindowBytes = bytes
            case "max_threads":
                guard let value, let threads = Int(value), (1...256).contains(threads) else {
                    throw ValidationError("max_threads must be 1-256: '\(option)'")
                }
                settings.maxThreads = threads
            case "log_file": settings.logFile = value
            case "cert": settings.certificate = value
            case "key": settings.key = value
            case "ca": settings.authority = value
            case "log_level":
                guard let value, let level = Logger.Level(rawValue: value) else {
                    throw ValidationError("log_level must be one of \(Logger.Level.allCases.map(\.rawValue)): '\(option)'")
                }
                settings.logLevel = level
            // mount(8) and fstab words that mean nothing to FUSE.
            case "defaults", "_netdev", "auto", "noauto", "user", "users", "nofail", "nouser": break
            default: if !fuse.contains(option) { fuse.append(option) }
            }
        }
        let tlsOptions = [settings.certificate, settings.key, settings.authority]
        guard tlsOptions.allSatisfy({ $0 == nil }) || tlsOptions.allSatisfy({ $0?.isEmpty == false }) else {
            throw ValidationError("TLS needs all three mount options cert=PATH,key=PATH,ca=PATH (or none of them for plain TCP)")
        }
        settings.fuseOptions = fuse
        return settings
    }

    /// "8M", "512K", "1G" or a plain number of bytes.
    private static func byteCount(_ text: String) -> Int? {
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        guard let last = text.uppercased().last else { return nil }
        let (digits, unit) = units[last].map { (text.dropLast(), $0) } ?? (Substring(text), 1)
        guard let number = Int(digits), number >= 0 else { return nil }
        return number.multipliedReportingOverflow(by: unit).overflow ? nil : number * unit
    }

    func validate() throws {
        _ = try Self.parse(source: source, options: options)
    }

    func run() throws {
        let settings = try Self.parse(source: source, options: options)
        if !foreground && !backgroundChild {
            // fork() and Swift's runtimes (Dispatch, NIO threads) do not mix:
            // the background mount is a fresh copy of this program instead.
            throw ExitCode(try BackgroundMount.start(arguments: CommandLine.arguments))
        }
        var logging = self.logging
        if let level = settings.logLevel { logging.logLevel = level }
        let log = backgroundChild ? BackgroundMount.log(settings.logFile, exportName: settings.exportName) : nil
        let logger = logging.bootstrap(label: "baton.mount", to: log == .systemLog ? .systemLog(identifier: "baton-mount") : .standardError)
        let tls: TLSIdentity?
        do {
            tls = try settings.tls.map { try TLSIdentity($0, roles: [.client]) }
        } catch {
            logger.critical("cannot mount", metadata: ["mountpoint": "\(mountpoint)", "error": "\(error)"])
            throw ExitCode(1)
        }
        let told = try checkServers(settings, tls: tls, logger: logger)
        // A connection gains its subflow on the other path only if this side
        // accepts the server's announcement of it (issue 9).
        if told.multipath, getuid() == 0 { MultipathEndpoints(logger: logger)?.raiseLimits() }

        let mount: FuseMount
        do {
            mount = try FuseMount(FuseMountOptions(
                mountpoint: mountpoint, options: settings.fuseOptions,
                attributeTimeoutSeconds: settings.attributeTimeoutSeconds, entryTimeoutSeconds: settings.entryTimeoutSeconds,
                writebackCache: settings.writebackCache, maxThreads: settings.maxThreads,
                writeBehindBytes: settings.writeBehindBytes, prefetchWindowBytes: settings.prefetchWindowBytes))
        } catch {
            logger.critical("cannot mount", metadata: ["mountpoint": "\(mountpoint)", "error": "\(error)"])
            throw ExitCode(1)
        }
        // The mount's addresses first, then those the server told that it did not name.
        var configuration = ServerConnection.Configuration(
            exportName: settings.exportName, addresses: settings.addresses + told.addresses.filter { !settings.addresses.contains($0) },
            requestTimeout: .nanoseconds(Int64(settings.requestTimeoutSeconds * 1e9)))
        configuration.multipath = told.multipath
        configuration.tls = tls
        let connection = ServerConnection(configuration: configuration, logger: logger)
        if let log { BackgroundMount.detach(log: log, logger: logger) }
        logger.info("mounted", metadata: [
            "export": "\(settings.exportName)", "mountpoint": "\(mountpoint)",
            "servers": "\(settings.addresses.map(\.description).joined(separator: ","))", "session": "\(connection.session)",
        ])
        defer {
            connection.close()
            mount.unmount()
            logger.info("unmounted", metadata: ["export": "\(settings.exportName)", "mountpoint": "\(mountpoint)"])
        }
        try mount.run(transport: connection)
    }

    /// Fails in the foreground, with the servers' own words, when no server
    /// serves the export: a mount that hangs in the background helps nobody.
    /// Returns what the active server told: every address of the export, and whether to use MPTCP.
    private func checkServers(_ settings: Settings, tls: TLSIdentity?, logger: Logger) throws -> (addresses: [NodeAddress], multipath: Bool) {
        var findings: [String] = []
        for address in settings.addresses {
            do {
                switch try ServerProbe.hello(address, export: settings.exportName, tls: tls) {
                case .active(_, let addresses, let multipath): return (addresses, multipath)
                case .refused(let refusal, let detail): findings.append("\(address): \(refusal): \(detail)")
                }
            } catch {
                findings.append("\(error)")
            }
        }
        logger.critical("cannot mount: no active server for the export", metadata: [
            "export": "\(settings.exportName)", "findings": "\(findings.joined(separator: "; "))",
        ])
        throw ExitCode(1)
    }
}

/// A mount in the background: `baton mount` starts a copy of itself in a new
/// session and returns once that copy has mounted (exit 0) or failed (its exit
/// status), with the copy's errors on the caller's terminal.
enum BackgroundMount {
    static let readyLine = "baton-mount-ready"

    static func start(arguments: [String]) throws -> Int32 {
        // The background copy must hold none of the caller's descriptors: a
        // caller reading our output to its end (a script, mount(8)'s caller)
        // would wait for as long as the mount lives.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            if let fd = Int32(name), fd > 2 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        }
        var pipeEnds: [Int32] = [0, 0]
        guard pipe(&pipeEnds) == 0 else { throw ValidationError("pipe failed: errno \(errno)") }
        for fd in pipeEnds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? arguments[0]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 1)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // A session of its own: the terminal's hangup and Ctrl-C do not reach the mount.
        let setSessionFlag: Int16 = 0x80 // POSIX_SPAWN_SETSID, hidden behind _GNU_SOURCE in glibc's header
        posix_spawnattr_setflags(&attributes, setSessionFlag)
        let argv = ([executable] + arguments.dropFirst() + ["--background-child"]).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        close(pipeEnds[1])
        guard spawned == 0 else { throw ValidationError("cannot start \(executable): \(String(cString: strerror(spawned)))") }
        let ready = FileHandle(fileDescriptor: pipeEnds[0], closeOnDealloc: true)
        if ready.readLine() == readyLine { return 0 }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let exitCode = (status >> 8) & 0xFF
        return exitCode == 0 ? 1 : exitCode
    }

    enum Log: Equatable { case systemLog, file(String) }

    static let defaultLogDirectory = "/var/log/baton"

    /// Where a mount in the background logs: `log_file=syslog` or a path if
    /// given; else the system log where one listens, else a file of its own.
    static func log(_ logFile: String?, exportName: String,
                    systemLogListens: Bool = access(SyslogLogHandler.socketPath, W_OK) == 0) -> Log {
        switch logFile {
        case "syslog"?: return .systemLog
        case let path?: return .file(path)
        case nil: return systemLogListens ? .systemLog : .file("\(defaultLogDirectory)/mount-\(exportName).log")
        }
    }

    /// In the copy, once mounted: leave the caller's session and terminal,
    /// send stderr to the log file, and tell the caller all is well. A log
    /// file that cannot be opened is said on the caller's terminal first.
    static func detach(log: Log, logger: Logger) {
        var fd: Int32 = -1
        if case .file(let path) = log {
            if path.hasPrefix(defaultLogDirectory + "/") { mkdir(defaultLogDirectory, 0o755) }
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            if fd < 0 {
                logger.warning("the mount cannot open its log file: it logs nowhere", metadata: [
                    "log_file": "\(path)", "error": "\(String(cString: strerror(errno)))",
                    "action": "give -o log_file=PATH (a file this user may write) or log_file=syslog",
                ])
            }
        }
        FileHandle.standardOutput.write(Data((readyLine + "\n").utf8))
        let null = open("/dev/null", O_RDWR)
        dup2(null, 0)
        dup2(null, 1)
        dup2(fd >= 0 ? fd : null, 2)
        if fd >= 0 { close(fd) }
        close(null)
        _ = chdir("/")
    }
}


extension Array where Element == String {
    fileprivate var pair: (String, String?) { (self[0], count > 1 ? self[1] : nil) }
}

import ArgumentParser
import BatonClient
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
            (kernel caching; default 1), writeback_cache, max_threads=N, log_file=PATH (where a
            backgrounded mount logs), log_level=LEVEL. Other options go to FUSE (allow_other,
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

    @OptionGroup var logging: LoggingOptions

    struct Settings {
        var exportName: String
        var addresses: [NodeAddress]
        var requestTimeoutSeconds = 60.0
        var attributeTimeoutSeconds = 1.0
        var entryTimeoutSeconds = 1.0
        var writebackCache = false
        var maxThreads = 10
        var logFile: String?
        var logLevel: Logger.Level?
        var fuseOptions: [String] = []
    }

    /// Splits SOURCE and the -o list into Baton's settings and libfuse's options.
    static func parse(source: String, options: [String]) throws -> Settings {
        let parts = source.split(separator: "@", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty else {
            throw ValidationError("source must be EXPORT@HOST:PORT[,HOST:PORT...], not '\(source)'")
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
        var fuse = ["allow_other", "default_permissions", "fsname=\(source)", "subtype=baton"]
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
            case "max_threads":
                guard let value, let threads = Int(value), (1...256).contains(threads) else {
                    throw ValidationError("max_threads must be 1-256: '\(option)'")
                }
                settings.maxThreads = threads
            case "log_file": settings.logFile = value
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
        settings.fuseOptions = fuse
        return settings
    }

    func validate() throws {
        _ = try Self.parse(source: source, options: options)
    }

    func run() throws {
        let settings = try Self.parse(source: source, options: options)
        var logging = self.logging
        if let level = settings.logLevel { logging.logLevel = level }
        let logger = logging.bootstrap(label: "baton.mount")
        let configuration = ServerConnection.Configuration(
            exportName: settings.exportName, addresses: settings.addresses,
            requestTimeout: .nanoseconds(Int64(settings.requestTimeoutSeconds * 1e9)))

        // Fail here, in the foreground, when no server serves the export:
        // a mount that hangs in the background helps nobody.
        let probe = ServerConnection(configuration: configuration, logger: logger)
        defer { probe.close() }
        do {
            try probe.waitUntilConnected(timeout: .seconds(10))
        } catch {
            logger.critical("cannot mount", metadata: ["export": "\(settings.exportName)", "error": "\(error)"])
            throw ExitCode(1)
        }
        probe.close()

        let mount: FuseMount
        do {
            mount = try FuseMount(FuseMountOptions(
                mountpoint: mountpoint, options: settings.fuseOptions, foreground: foreground,
                attributeTimeoutSeconds: settings.attributeTimeoutSeconds, entryTimeoutSeconds: settings.entryTimeoutSeconds,
                writebackCache: settings.writebackCache, maxThreads: settings.maxThreads))
        } catch {
            logger.critical("cannot mount", metadata: ["mountpoint": "\(mountpoint)", "error": "\(error)"])
            throw ExitCode(1)
        }
        // No thread may exist across the fork: the network starts after it.
        try mount.daemonize()
        if !foreground, let logFile = settings.logFile {
            let fd = open(logFile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            if fd >= 0 {
                dup2(fd, 2)
                close(fd)
            }
        }
        let connection = ServerConnection(configuration: configuration, logger: logger)
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
}

extension Array where Element == String {
    fileprivate var pair: (String, String?) { (self[0], count > 1 ? self[1] : nil) }
}

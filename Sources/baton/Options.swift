import ArgumentParser
import BatonRuntime
import Dispatch
import Foundation
import Logging

/// Options every long-running subcommand shares.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func bootstrap(label: String) -> Logger {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

extension NodeAddress: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

/// For a process that writes a data directory (a server, an agent with
/// standby replicas).
func prepareDiskOwner(logger: Logger) throws {
    // A file size limit (ulimit -f) must refuse a client's write or truncate
    // with EFBIG, not kill the process that owns the journal.
    signal(SIGXFSZ, SIG_IGN)
    if let faults = ProcessInfo.processInfo.environment[DiskFaults.environmentVariable], !faults.isEmpty {
        let set = try DiskFaults.configure(faults)
        logger.warning("disk faults injected: for tests only, never in production", metadata: [
            "faults": "\(set)", "action": "unset \(DiskFaults.environmentVariable) and restart",
        ])
    }
}

/// Runs `handler` on SIGTERM or SIGINT (instead of dying), for a clean stop.
/// Keep the returned sources alive while the process runs.
func onTerminationSignals(_ handler: @escaping @Sendable (Int32) -> Void) -> [any DispatchSourceSignal] {
    [SIGTERM, SIGINT].map { signalNumber in
        signal(signalNumber, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
        source.setEventHandler { handler(signalNumber) }
        source.resume()
        return source
    }
}

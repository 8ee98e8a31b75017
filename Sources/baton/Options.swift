import ArgumentParser
import BatonRuntime
import Dispatch
import Foundation
import Logging

/// Options every long-running subcommand shares.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Option(help: ArgumentHelp(
        "Log format: text (for people) or json (one object per line, for collectors).",
        discussion: "The servers an agent starts log in the same format (\(LogFormat.environmentVariable) carries it)."))
    var logFormat: LogFormat = LogFormat.inherited

    enum Destination { case standardError, systemLog(identifier: String) }

    func bootstrap(label: String, to destination: Destination = .standardError) -> Logger {
        let level = logLevel
        let format = logFormat
        // Children (the servers an agent starts) inherit the environment.
        setenv(LogFormat.environmentVariable, format.rawValue, 1)
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler = switch (destination, format) {
            case (.systemLog(let identifier), _): SyslogLogHandler(label: label, identifier: identifier)
            case (.standardError, .json): JSONLogHandler(label: label)
            case (.standardError, .text): StreamLogHandler.standardError(label: label)
            }
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }
}

enum LogFormat: String, CaseIterable, ExpressibleByArgument {
    case text, json

    static let environmentVariable = "BATON_LOG_FORMAT"

    /// The format of the agent that started this process, else text.
    static var inherited: LogFormat {
        ProcessInfo.processInfo.environment[environmentVariable].flatMap(LogFormat.init(rawValue:)) ?? .text
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
    raiseOpenFileLimit(logger: logger)
    if let faults = ProcessInfo.processInfo.environment[DiskFaults.environmentVariable], !faults.isEmpty {
        let set = try DiskFaults.configure(faults)
        logger.warning("disk faults injected: for tests only, never in production", metadata: [
            "faults": "\(set)", "action": "unset \(DiskFaults.environmentVariable) and restart",
        ])
    }
}

/// Descriptors a server or an agent may need: its clients and sessions
/// (`ConnectionAdmission`), the data files it keeps open, its journal. The
/// soft limit most services start with (1024) is below that: a flood of
/// connections then made fsyncs fail with EMFILE and the server stop (found
/// by mountscripts/netfuzz). So the soft limit goes up to the hard one.
let wantedOpenFiles: rlim_t = 8192

func raiseOpenFileLimit(logger: Logger) {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    let before = limit.rlim_cur
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) != 0 { limit.rlim_cur = before }
    }
    if limit.rlim_cur < wantedOpenFiles {
        logger.warning("the open file limit is low for a server or an agent", metadata: [
            "soft": "\(before) -> \(limit.rlim_cur)", "hard": "\(limit.rlim_max)", "wanted": "\(wantedOpenFiles)",
            "action": "raise the hard limit (LimitNOFILE= in the systemd unit, or ulimit -Hn) to at least \(wantedOpenFiles)",
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

import BatonCore
import BatonRuntime
import Foundation
import Logging

/// One export server process (`baton serve`) started by this node's agent:
/// a process of its own per export, so one export can be fenced without
/// touching the others (DESIGN.md §4.5).
final class ExportProcess: @unchecked Sendable {
    let exportName: String
    let process = Process()
    private let logger: Logger

    /// Starts the server and waits until it listens (or fails to).
    init(executable: String, exportName: String, dataDirectory: String, listen: NodeAddress, secretFile: String,
         standby: NodeAddress, node: String, replication: ReplicationMode, logger: Logger,
         onExit: @escaping @Sendable (Int32) -> Void) throws {
        self.exportName = exportName
        self.logger = logger
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = [
            "serve", "--export", exportName, "--data", dataDirectory, "--listen", listen.description,
            "--secret-file", secretFile, "--standby", standby.description, "--node", node,
            "--replication", replication.rawValue,
        ]
        let ready = Pipe()
        process.standardOutput = ready
        process.terminationHandler = { onExit($0.terminationStatus) }
        try process.run()
        guard let line = ready.fileHandleForReading.readLine(), line.hasPrefix("listening ") else {
            process.waitUntilExit()
            throw ProbeError("export server for '\(exportName)' did not start (exit \(process.terminationStatus)); see the agent's log")
        }
        logger.info("export server started", metadata: [
            "export": "\(exportName)", "pid": "\(process.processIdentifier)", "address": "\(listen)",
        ])
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// Fencing: SIGKILL, then wait until the process is gone. A stopped
    /// (SIGSTOP) process dies from SIGKILL too.
    func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// A clean stop: SIGTERM (the server syncs its journal), SIGCONT in case
    /// it was stopped, and SIGKILL if it has not exited after `grace`.
    func terminate(grace: TimeInterval = 5) {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGTERM)
        Glibc.kill(process.processIdentifier, SIGCONT)
        let deadline = Date().addingTimeInterval(grace)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        kill()
    }

    /// Tells the server the peer is gone: go on without a standby.
    func continueWithoutStandby() {
        if process.isRunning { Glibc.kill(process.processIdentifier, SIGUSR1) }
    }
}


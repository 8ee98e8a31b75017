import BatonCore
import BatonRuntime
import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers

/// One export server process (`baton serve`) started by this node's agent:
/// a process of its own per export, so one export can be fenced without
/// touching the others (DESIGN.md §4.5).
final class ExportProcess: @unchecked Sendable {
    let exportName: String
    let process = Process()
    private let logger: Logger

    private let listen: NodeAddress
    private let output = Pipe()
    /// The server's stdin. Never closed while the server is to run: when
    /// this agent ends, however it ends, the kernel closes it and the server
    /// exits (DESIGN.md §4.7: a server does not outlive its agent). A server
    /// started ahead of a swap also reads its go-ahead from it.
    private let agentPipe = Pipe()
    private let awaitsPromotion: Bool
    /// Signalled once the process has exited (fencing waits on it).
    private let exited = DispatchSemaphore(value: 0)
    /// Commands from several threads (a swap's, the peer watch's) go one whole frame at a time.
    private let commandLock = NIOLock()

    /// Starts the server. Without `awaitPromotion` it waits until the server
    /// listens (or fails to). With it, until the server has bound its socket
    /// and waits for `promote` (ahead of a swap: the process start is then
    /// out of the pause).
    init(executable: String, exportName: String, dataDirectory: String, listen: NodeAddress, monitorListen: NodeAddress,
         pathAddresses: [String], exportAddresses: [NodeAddress], multipath: Bool, secretFile: String, tls: TLSFiles?,
         access: ClientAccess, squash: Squash, lockLeaseMilliseconds: Int,
         standby: NodeAddress, node: String, replication: ReplicationMode, standbyWaitLimitMilliseconds: Int,
         metrics: Bool = false, awaitPromotion: Bool = false, logger: Logger,
         onExit: @escaping @Sendable (Int32) -> Void) throws {
        self.exportName = exportName
        self.logger = logger
        self.listen = listen
        process.executableURL = URL(fileURLWithPath: executable)
        var arguments: [String] = [
            "serve", "--export", exportName, "--data", dataDirectory, "--listen", listen.description,
            "--monitor-listen", monitorListen.description,
        ]
        for host in pathAddresses { arguments += ["--path-address", host] }
        for address in exportAddresses { arguments += ["--export-address", address.description] }
        arguments += [
            "--secret-file", secretFile, "--standby", standby.description, "--node", node,
            "--replication", replication.rawValue, "--standby-wait-limit-ms", String(standbyWaitLimitMilliseconds),
        ]
        if let tls { arguments += ["--tls-cert", tls.certificate, "--tls-key", tls.key, "--tls-ca", tls.authority] }
        if access != .everyone {
            for pattern in access.readWrite { arguments += ["--client", pattern] }
            for pattern in access.readOnly { arguments += ["--read-only-client", pattern] }
        }
        arguments += ["--squash", squash.scope.rawValue, "--anonuid", String(squash.anonymous.uid),
                      "--anongid", String(squash.anonymous.gid)]
        for pattern in squash.rootClients { arguments += ["--root-client", pattern] }
        arguments += ["--lock-lease-ms", String(lockLeaseMilliseconds)]
        if multipath { arguments.append("--multipath") }
        // On loopback, for the agent's page only (the agent serves the node's metrics).
        if metrics { arguments += ["--metrics-listen", "127.0.0.1:0"] }
        arguments.append(awaitPromotion ? "--await-promotion" : "--until-stdin-ends")
        process.arguments = arguments
        awaitsPromotion = awaitPromotion
        process.standardInput = agentPipe
        process.standardOutput = output
        process.terminationHandler = { [exited] in
            exited.signal()
            onExit($0.terminationStatus)
        }
        // (Process closes the child's ends of both pipes in this process.)
        try process.run()
        let expected = awaitPromotion ? "waiting " : "listening "
        guard let line = output.fileHandleForReading.readLine(), line.hasPrefix(expected) else {
            process.waitUntilExit()
            throw ProbeError("export server for '\(exportName)' did not start (exit \(process.terminationStatus)); see the agent's log")
        }
        if !awaitPromotion {
            noteMetricsAddress(line)
            logStarted()
        }
    }

    private let metricsAddressBox = NIOLockedValueBox<NodeAddress?>(nil)
    /// Where the server serves its metrics (from its "listening ... metrics HOST:PORT" line).
    var metricsAddress: NodeAddress? { metricsAddressBox.withLockedValue { $0 } }

    private func noteMetricsAddress(_ listeningLine: String) {
        let words = listeningLine.split(separator: " ")
        guard let index = words.firstIndex(of: "metrics"), index + 1 < words.count else { return }
        let address = NodeAddress(String(words[index + 1]))
        metricsAddressBox.withLockedValue { $0 = address }
    }

    private func logStarted() {
        logger.info("export server started", metadata: [
            "export": "\(exportName)", "pid": "\(process.processIdentifier)", "address": "\(listen)",
        ])
    }

    /// A server started with `awaitPromotion`: it opens the export and
    /// answers the clients queued on its socket; returns once it serves.
    /// `alone`: without waiting for the standby (the old server is fenced).
    func promote(alone: Bool) throws {
        guard awaitsPromotion else { return }
        guard tell(.promote(alone: alone)) else {
            throw ProbeError("export server for '\(exportName)' exited before its promotion; see the agent's log")
        }
        // Clients queued on the socket may be welcomed before the server says it listens.
        var line = output.fileHandleForReading.readLine()
        while line == "welcomed" {
            welcomedEarly = true
            line = output.fileHandleForReading.readLine()
        }
        guard let line, line.hasPrefix("listening ") else {
            kill()
            throw ProbeError("export server for '\(exportName)' did not open the export (exit \(process.terminationStatus)); see the agent's log")
        }
        noteMetricsAddress(line)
        logStarted()
    }

    private var welcomedEarly = false

    /// Calls `action` when the promoted server has welcomed its first
    /// connection (it says so on its output), on a thread of its own.
    func whenFirstWelcome(_ action: @escaping @Sendable () -> Void) {
        if welcomedEarly { return action() }
        let handle = output.fileHandleForReading
        Thread.detachNewThread {
            while let line = handle.readLine() {
                if line == "welcomed" { return action() }
            }
        }
    }

    /// A server started ahead of a swap that does not happen: it exits
    /// without opening the export (the end of its input says so).
    func abandon() {
        try? agentPipe.fileHandleForWriting.close()
        if exited.wait(timeout: .now() + 2) == .timedOut { return kill() }
        exited.signal()
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// Fencing: SIGKILL, then wait until the process is gone. A stopped
    /// (SIGSTOP) process dies from SIGKILL too.
    func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        // Woken by the exit itself (waitUntilExit polls its run loop every 50 ms).
        exited.wait()
        exited.signal()
    }

    /// A planned swap: the server is asked to take no more mutations,
    /// wait until its standby has every record and exit; SIGKILL after `grace`.
    func handOver(grace: TimeInterval = 3) {
        guard process.isRunning else { return }
        tell(.handOver)
        if exited.wait(timeout: .now() + grace) == .timedOut { return kill() }
        exited.signal()
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
        if process.isRunning { tell(.continueWithoutStandby) }
    }

    /// One command on the server's stdin (`ServerControl`); false when the server is gone.
    @discardableResult
    private func tell(_ command: ServerControl) -> Bool {
        commandLock.withLock {
            (try? agentPipe.fileHandleForWriting.write(contentsOf: Data(command.frame()))) != nil
        }
    }
}

import BatonCore
import BatonRuntime
import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// One export server process (`baton serve`) started by this node's agent:
/// a process of its own per export, so one export can be fenced without
/// touching the others (DESIGN.md §4.5).
final class ExportProcess: @unchecked Sendable {
    let exportName: String
    let process = Process()
    private let logger: Logger

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

    /// Starts the server (not on an event loop: it waits for the server's
    /// first report, read on `group`). Without `awaitPromotion` it waits until the server
    /// listens (or fails to). With it, until the server has bound its socket
    /// and waits for `promote` (ahead of a swap: the process start is then
    /// out of the pause).
    init(executable: String, exportName: String, dataDirectory: String, listen: NodeAddress, monitorListen: NodeAddress,
         pathAddresses: [String], exportAddresses: [NodeAddress], multipath: Bool, secretFile: String, tls: TLSFiles?,
         access: ClientAccess, squash: Squash, lockLeaseMilliseconds: Int,
         standby: NodeAddress, standbyPathAddresses: [NodeAddress], node: String, replication: ReplicationMode, standbyWaitLimitMilliseconds: Int,
         metrics: Bool = false, awaitPromotion: Bool = false, group: EventLoopGroup, logger: Logger,
         onAskToAnswerAlone: @escaping @Sendable (_ waitedMilliseconds: UInt64, _ oldestWaiting: UInt64) -> Void,
         onExit: @escaping @Sendable (Int32) -> Void) throws {
        self.exportName = exportName
        self.logger = logger
        process.executableURL = URL(fileURLWithPath: executable)
        var arguments: [String] = [
            "serve", "--export", exportName, "--data", dataDirectory, "--listen", listen.description,
            "--monitor-listen", monitorListen.description,
        ]
        for host in pathAddresses { arguments += ["--path-address", host] }
        for address in exportAddresses { arguments += ["--export-address", address.description] }
        arguments += ["--secret-file", secretFile, "--standby", standby.description]
        for address in standbyPathAddresses { arguments += ["--standby-path-address", address.description] }
        arguments += [
            "--node", node,
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
        reports = ServerReports(exportName: exportName, logger: logger, onAskToAnswerAlone: onAskToAnswerAlone)
        try reports.read(output, on: group)
        guard let first = reports.wait(until: { awaitPromotion ? $0.waiting : $0.listening != nil }) else {
            process.waitUntilExit()
            throw ProbeError("export server for '\(exportName)' did not start (exit \(process.terminationStatus)); see the agent's log")
        }
        if !awaitPromotion { logStarted(first.listening!.clients) }
    }

    /// The server's reports (`ServerReport`), read on the agent's event loops.
    private let reports: ServerReports

    /// Where the server serves its metrics (from its `listening` report).
    var metricsAddress: NodeAddress? { reports.current.listening?.metrics }

    private func logStarted(_ clients: NodeAddress) {
        logger.info("export server started", metadata: [
            "export": "\(exportName)", "pid": "\(process.processIdentifier)", "address": "\(clients)",
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
        guard let serving = reports.wait(until: { $0.listening != nil })?.listening else {
            kill()
            throw ProbeError("export server for '\(exportName)' did not open the export (exit \(process.terminationStatus)); see the agent's log")
        }
        logStarted(serving.clients)
    }

    /// Calls `action` when the promoted server has welcomed its first
    /// connection (it reports it), on an event loop of the agent's.
    func whenFirstWelcome(_ action: @escaping @Sendable () -> Void) {
        reports.whenFirstWelcome(action)
    }

    /// A server started ahead of a swap that does not happen: it exits
    /// without opening the export (the end of its input says so).
    func abandon() {
        try? agentPipe.fileHandleForWriting.close()
        waitForExit(orKillAfter: 2)
    }

    /// Waits until the process has exited, woken by the exit itself; SIGKILL after `grace`.
    private func waitForExit(orKillAfter grace: TimeInterval) {
        if exited.wait(timeout: .now() + grace) == .timedOut { return kill() }
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
        waitForExit(orKillAfter: grace)
    }

    /// A clean stop: SIGTERM (the server syncs its journal), SIGCONT in case
    /// it was stopped, and SIGKILL if it has not exited after `grace`.
    func terminate(grace: TimeInterval = 5) {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGTERM)
        Glibc.kill(process.processIdentifier, SIGCONT)
        waitForExit(orKillAfter: grace)
    }

    /// Tells the server a NIC of this node has its link again.
    func pathRestored() {
        if process.isRunning { tell(.pathRestored) }
    }

    /// Tells the server the peer is gone: go on without a standby.
    func continueWithoutStandby() {
        if process.isRunning { tell(.continueWithoutStandby) }
    }

    /// The agent's consent at the wait limit: replies stop waiting if the
    /// oldest still waits for `oldestWaiting` (not once the standby caught up since).
    func answerAlone(oldestWaiting: UInt64) {
        if process.isRunning { tell(.answerAlone(oldestWaiting: oldestWaiting)) }
    }

    /// One command on the server's stdin (`ServerControl`); false when the server is gone.
    @discardableResult
    private func tell(_ command: ServerControl) -> Bool {
        commandLock.withLock {
            (try? agentPipe.fileHandleForWriting.write(contentsOf: Data(command.frame()))) != nil
        }
    }
}

/// What the server reported so far, on its stdout (`ServerReport`), and
/// waits for what it is to report. The pipe is read on the agent's event
/// loops: no thread of its own per server.
private final class ServerReports: @unchecked Sendable {
    struct Seen {
        var waiting = false
        var listening: (clients: NodeAddress, monitor: NodeAddress?, metrics: NodeAddress?)?
        var welcomed = false
        /// The pipe ended (the server exited) or carried what is not a report.
        var ended = false
    }

    private let exportName: String
    private let logger: Logger
    private let condition = NSCondition()
    private var seen = Seen()
    private var onWelcome: [@Sendable () -> Void] = []
    private let onAskToAnswerAlone: @Sendable (UInt64, UInt64) -> Void

    init(exportName: String, logger: Logger, onAskToAnswerAlone: @escaping @Sendable (UInt64, UInt64) -> Void) {
        self.exportName = exportName
        self.logger = logger
        self.onAskToAnswerAlone = onAskToAnswerAlone
    }

    var current: Seen { condition.withLock { seen } }

    /// Reads `pipe` (the server's stdout) on `group` until it ends.
    func read(_ pipe: Pipe, on group: EventLoopGroup) throws {
        // NIO owns (and closes) its own copy of the descriptor.
        let descriptor = dup(pipe.fileHandleForReading.fileDescriptor)
        try pipe.fileHandleForReading.close()
        guard descriptor >= 0 else { throw ProbeError("cannot read the export server's reports: \(String(cString: strerror(errno)))") }
        _ = try NIOPipeBootstrap(group: group)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        ByteToMessageHandler(ServerReportDecoder()), ServerReportHandler(reports: self))
                }
            }
            .takingOwnershipOfDescriptor(input: descriptor)
            .wait()
    }

    /// Blocks until `reached` holds, or the reports ended first (nil).
    func wait(until reached: (Seen) -> Bool) -> Seen? {
        precondition(MultiThreadedEventLoopGroup.currentEventLoop == nil, "waiting for a server's report on an event loop that reads it")
        return condition.withLock {
            while !reached(seen), !seen.ended { condition.wait() }
            return reached(seen) ? seen : nil
        }
    }

    func whenFirstWelcome(_ action: @escaping @Sendable () -> Void) {
        let now = condition.withLock { () -> Bool in
            if seen.welcomed { return true }
            onWelcome.append(action)
            return false
        }
        if now { action() }
    }

    fileprivate func received(_ report: ServerReport) {
        switch report {
        case .standbyWaitLimitReached(let waited, let oldest):
            onAskToAnswerAlone(waited, oldest)
        case .firstClientWelcomed:
            let waiting = condition.withLock { () -> [@Sendable () -> Void] in
                seen.welcomed = true
                defer { onWelcome = [] }
                return onWelcome
            }
            for action in waiting { action() }
        case .waitingForPromotion, .listening:
            condition.withLock {
                if case .listening(let clients, let monitor, let metrics) = report {
                    seen.listening = (clients, monitor, metrics)
                } else {
                    seen.waiting = true
                }
                condition.broadcast()
            }
        }
    }

    fileprivate func ended(_ error: Error?) {
        if let error {
            logger.error("the export server's output is not its reports: no longer read", metadata: [
                "export": "\(exportName)", "error": "\(error)",
                "action": "none if it was stopping; otherwise its exit is handled as a crash",
            ])
        }
        condition.withLock {
            seen.ended = true
            condition.broadcast()
        }
    }
}

/// Splits the server's stdout into `ServerReport`s.
private struct ServerReportDecoder: ByteToMessageDecoder {
    typealias InboundOut = ServerReport

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self) else { return .needMoreData }
        guard (1...ServerReport.maxFrameBytes).contains(Int(length)) else {
            throw DecodeError.invalid("a report of \(length) bytes (at most \(ServerReport.maxFrameBytes))")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let report = try buffer.readWithUnsafeReadableBytes { raw -> (Int, ServerReport) in
            (Int(length), try ServerReport.decode(UnsafeRawBufferPointer(rebasing: raw[0..<Int(length)])))
        }
        context.fireChannelRead(wrapInboundOut(report))
        return .continue
    }
}

private final class ServerReportHandler: ChannelInboundHandler {
    typealias InboundIn = ServerReport
    private let reports: ServerReports
    private var failed = false

    init(reports: ServerReports) { self.reports = reports }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        reports.received(unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failed = true
        reports.ended(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !failed { reports.ended(nil) }
    }
}

import BatonCore
import BatonRuntime
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Runs the pure `Monitor` against a real export server: a connection to the
/// server's monitor port on each network path, carrying challenges and
/// heartbeats, and a tick every few milliseconds. Each probe goes out on
/// every path and the first right answer counts, and a heartbeat on any path
/// counts, so a probe is missed only when no path reaches the server (issue
/// 9: a cut NIC or switch is not a failed server). The connections are plain
/// TCP, one per path, so that each stays on its own. Reports a failure once;
/// the agent then runs the swap.
final class MonitorRunner: @unchecked Sendable {
    private let exportName: String
    /// The server's monitor address on each path (one where the paths are one).
    private let server: [NodeAddress]
    private let group: EventLoopGroup
    /// The node's certificate: the server's monitor port takes node certificates only.
    private let tls: TLSIdentity?
    private let logger: Logger
    private let onFailure: @Sendable (Monitor.FailureReason) -> Void
    private let onStandDown: @Sendable (UInt64) -> Void
    private let onServerAnswersAlone: @Sendable () -> Void
    private let state: NIOLockedValueBox<State>
    private var ticker: RepeatedTask?
    /// A path's connection silent this long (no answer, no heartbeat) is
    /// made again. One that went dead during an outage of its path would
    /// otherwise wait out TCP's retransmission backoff (up to minutes) after
    /// the path is back, and a fault of the other path meanwhile would look
    /// like a failed server.
    private let pathSilenceLimit: TimeAmount
    static let tickInterval = TimeAmount.milliseconds(10)

    private struct State {
        var monitor: Monitor
        /// By index in `server`.
        var channels: [Int: Channel] = [:]
        var connecting: Set<Int> = []
        /// When each path's connection was made or last brought a message.
        var heardAt: [Int: NIODeadline] = [:]
        var stopped = false
        var lastRoundTrip: TimeSpan?
        /// The server's journal position, as its last heartbeat said.
        var serverSequence: UInt64?
    }

    init(exportName: String, server: [NodeAddress], epoch: UInt64, authenticator: MessageAuthenticator, timings: MonitorTimings,
         group: EventLoopGroup, tls: TLSIdentity?, logger: Logger,
         onFailure: @escaping @Sendable (Monitor.FailureReason) -> Void,
         onStandDown: @escaping @Sendable (UInt64) -> Void,
         onServerAnswersAlone: @escaping @Sendable () -> Void) {
        self.exportName = exportName
        self.server = server
        self.group = group
        self.tls = tls
        self.logger = logger
        self.onFailure = onFailure
        self.onStandDown = onStandDown
        self.onServerAnswersAlone = onServerAnswersAlone
        pathSilenceLimit = .nanoseconds(Int64(timings.heartbeatGrace.nanoseconds))
        var monitor = Monitor(authenticator: authenticator, timings: timings)
        _ = monitor.handle(.started(epoch: epoch), at: Self.now())
        state = NIOLockedValueBox(State(monitor: monitor))
        connectMissingPaths()
        ticker = group.next().scheduleRepeatedTask(initialDelay: Self.tickInterval, delay: Self.tickInterval) { [self] _ in
            let key = (0..<ChallengeMAC.keyBytes).map { _ in UInt8.random(in: 0...255) }
            handle(.tick(freshKey: key))
        }
        logger.info("monitor started", metadata: ["export": "\(exportName)", "server": "\(serverText)", "epoch": "\(epoch)"])
    }

    private var serverText: String { server.map(\.description).joined(separator: ", ") }

    var lastRoundTrip: TimeSpan? { state.withLockedValue { $0.lastRoundTrip } }
    var isStopped: Bool { state.withLockedValue(\.stopped) }
    var serverSequence: UInt64? { state.withLockedValue { $0.serverSequence } }

    func stop() {
        ticker?.cancel()
        let channels = state.withLockedValue { state -> [Channel] in
            state.stopped = true
            _ = state.monitor.handle(.stopped, at: Self.now())
            return Array(state.channels.values)
        }
        for channel in channels { channel.close(promise: nil) }
    }

    static func now() -> Instant { Instant(nanoseconds: UInt64(NIODeadline.now().uptimeNanoseconds)) }

    fileprivate func handle(_ event: Monitor.Event) {
        let (actions, channels) = state.withLockedValue { state -> ([Monitor.Action], [Channel]) in
            guard !state.stopped else { return ([], []) }
            if case .heartbeatReceived(_, let sequence) = event { state.serverSequence = sequence }
            return (state.monitor.handle(event, at: Self.now()), Array(state.channels.values))
        }
        for action in actions {
            switch action {
            case .sendProbe(let key):
                remakeSilentPaths()
                for channel in channels {
                    channel.writeAndFlush(Message.probe(key: key).frame(allocator: channel.allocator), promise: nil)
                }
                if channels.count < server.count { connectMissingPaths() }
            case .reportRoundTrip(let span):
                state.withLockedValue { $0.lastRoundTrip = span }
                AgentMetrics.probeAnswered(export: exportName, roundTrip: span)
            case .declareFailed(let reason):
                logger.error("export server failed", metadata: [
                    "export": "\(exportName)", "server": "\(serverText)", "reason": "\(reason)",
                ])
                stop()
                onFailure(reason)
            case .standDown(let newer):
                logger.notice("monitor stands down: a newer epoch serves the export", metadata: [
                    "export": "\(exportName)", "epoch": "\(newer)",
                ])
                stop()
                onStandDown(newer)
            }
        }
    }

    private func connectMissingPaths() {
        let paths = state.withLockedValue { state -> [Int] in
            guard !state.stopped else { return [] }
            let missing = server.indices.filter { state.channels[$0] == nil && !state.connecting.contains($0) }
            state.connecting.formUnion(missing)
            return missing
        }
        for path in paths { connect(path) }
    }

    private func connect(_ path: Int) {
        ClientBootstrap(group: group)
            .connectTimeout(.milliseconds(200))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try tls.addClientHandlers(to: channel.pipeline.syncOperations)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(MessageDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MonitorHandler(runner: self))
                }
            }
            .connect(resolving: server[path], on: group.next())
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    channel.writeAndFlush(Message.hello(export: exportName, session: 0, version: Message.protocolVersion)
                        .frame(allocator: channel.allocator), promise: nil)
                    let stopped = state.withLockedValue { state -> Bool in
                        state.connecting.remove(path)
                        if !state.stopped {
                            state.channels[path] = channel
                            state.heardAt[path] = .now()
                        }
                        return state.stopped
                    }
                    if stopped { channel.close(promise: nil) }
                case .failure:
                    state.withLockedValue { _ = $0.connecting.remove(path) }
                }
            }
    }

    /// The server answers without waiting for this replica: a failover now
    /// could lose what it answered. Stand down; the standby watches again
    /// once the server says its replies wait for it (`repliesWait`).
    fileprivate func serverAnswersAlone() {
        guard !isStopped else { return }
        logger.warning("monitor stands down: the server answers without waiting for this standby", metadata: [
            "export": "\(exportName)", "server": "\(serverText)",
            "action": "none: it watches again once the standby is in step",
        ])
        stop()
        onServerAnswersAlone()
    }

    /// Closes the connections of paths silent past `pathSilenceLimit` (see
    /// there); the next probe makes them again. While the server is silent on
    /// every path this changes nothing the `Monitor` decides.
    private func remakeSilentPaths() {
        let now = NIODeadline.now()
        let silent = state.withLockedValue { state -> [(Int, Channel)] in
            let silent = state.channels.filter { now - (state.heardAt[$0.key] ?? now) > pathSilenceLimit }
            for path in silent.keys { state.channels[path] = nil }
            return silent.map { ($0.key, $0.value) }
        }
        for (path, channel) in silent {
            logger.debug("monitor connection silent: making it again", metadata: ["export": "\(exportName)", "server": "\(server[path])"])
            channel.close(promise: nil)
        }
    }

    fileprivate func heard(_ channel: Channel) {
        state.withLockedValue { state in
            if let path = state.channels.first(where: { $0.value === channel })?.key { state.heardAt[path] = .now() }
        }
    }

    fileprivate func lost(_ channel: Channel) {
        state.withLockedValue { state in
            if let path = state.channels.first(where: { $0.value === channel })?.key { state.channels[path] = nil }
        }
    }
}

private final class MonitorHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Message
    private let runner: MonitorRunner

    init(runner: MonitorRunner) { self.runner = runner }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        runner.heard(context.channel)
        switch unwrapInboundIn(data) {
        case .probeAnswer(let key, let epoch, let sequence, let response):
            runner.handle(.probeAnswered(key: key, epoch: epoch, journalSequence: sequence, response: response))
        case .heartbeat(let epoch, let sequence, let alone):
            if alone { return runner.serverAnswersAlone() }
            runner.handle(.heartbeatReceived(epoch: epoch, journalSequence: sequence))
        case .welcome:
            break
        default:
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) { runner.lost(context.channel) }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

import BatonCore
import BatonRuntime
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The agents' heartbeats over every network path and the diagnostic ladder
/// (DESIGN.md §6), on the real network: UDP heartbeats on the agent's port
/// at each path's address, the pure `PeerLiveness` and `Diagnosis` deciding,
/// and this class probing and carrying out the verdicts through the agent.
final class PeerWatch: @unchecked Sendable {
    struct Actions {
        /// The peer is gone (dead, isolated, or its agent down): servers here stop waiting for their standby.
        var peerGone: @Sendable (DiagnosisVerdict) -> Void
        /// This node is isolated: stop every export server here.
        var selfFence: @Sendable () -> Void
        /// The peer is heard again after it was gone or this node fenced itself.
        var peerBack: @Sendable () -> Void
        /// This agent did not run for the given time (stopped, frozen, starved).
        var resumed: @Sendable (TimeSpan) -> Void
    }

    private let me: NodeConfiguration
    private let peer: NodeConfiguration
    private let authenticator: MessageAuthenticator
    private let timings: DiagnosisTimings
    private let logger: Logger
    private let actions: Actions
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let myPaths: PerPath<String>
    private let peerPaths: PerPath<String>
    private let switches: PerPath<String?>
    /// This run's, above every earlier run's on this node (see `AgentIncarnation`).
    private let incarnation: UInt64

    // Confined to the event loop.
    private var loop: EventLoop { group.next() }
    private var channels: [(address: String, channel: Channel)] = []
    private var peerSockets: PerPath<SocketAddress?> = PerPath(nil, nil)
    private var liveness: PeerLiveness
    private var diagnosis: Diagnosis
    private var heartbeatSequence: UInt64 = 0
    private var lastHeartbeatSent = Instant.zero
    private var lastTick = Instant.zero
    private var agentProbes: [UInt64: NetworkPath] = [:]
    private var ticker: RepeatedTask?
    private var stopping = false
    /// Refused datagrams not yet logged: one line per 10 s says how many,
    /// so that a flood of garbage does not become a flood of log.
    private var refusedSinceLogged = 0
    private var refusalLoggedAt: Instant?
    static let refusalLogInterval = TimeSpan.milliseconds(10_000)

    /// What other threads read: swaps and `baton status`.
    private struct Shared {
        var lastHeard: PerPath<Instant>
        var silentPaths: [NetworkPath] = []
        /// When each path last went silent or was heard again (for `baton status`).
        var pathChangedAt: PerPath<Instant>
        /// When the ladder last found the peer gone; nil once it is heard again.
        var peerFoundGoneAt: Instant?
        var peerGone: Bool { peerFoundGoneAt != nil }
        var selfFenced = false
        var lastVerdict: (verdict: DiagnosisVerdict, at: Instant, findings: DiagnosisFindings)?
        /// This agent's own runs (its ticks), for `ExportRole.answerAlone`.
        var runs = ExportRole.AgentRuns(lastRan: .zero, resumedAt: nil)
    }
    private let shared: NIOLockedValueBox<Shared>

    static let tickInterval = TimeAmount.milliseconds(20)

    /// A node's two paths: its `paths` (one listed serves both), or its agent's host.
    static func paths(of node: NodeConfiguration) -> PerPath<String> {
        PerPath(node.paths.first ?? node.agent.host, node.paths.dropFirst().first ?? node.paths.first ?? node.agent.host)
    }

    init(me: NodeConfiguration, peer: NodeConfiguration, switches: [String], authenticator: MessageAuthenticator, timings: DiagnosisTimings,
         logger: Logger, actions: Actions) {
        self.me = me
        self.peer = peer
        self.authenticator = authenticator
        self.timings = timings
        self.logger = logger
        self.actions = actions
        incarnation = Self.takeIncarnation(directory: me.dataDirectory, logger: logger)
        myPaths = Self.paths(of: me)
        peerPaths = Self.paths(of: peer)
        self.switches = PerPath(switches.first, switches.dropFirst().first)
        let now = MonitorRunner.now()
        liveness = PeerLiveness(grace: timings.agentHeartbeatGrace, startedAt: now)
        diagnosis = Diagnosis(timings: timings)
        shared = NIOLockedValueBox(Shared(lastHeard: PerPath(now, now), pathChangedAt: PerPath(now, now)))
    }

    /// The next incarnation, kept in the node's data directory for the next run.
    private static func takeIncarnation(directory: String, logger: Logger) -> UInt64 {
        let path = directory + "/agent-incarnation"
        let last = (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let next = AgentIncarnation.next(after: last, clockNanoseconds: UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec))
        do {
            _ = try Disk.makeDirectory(directory)
            try Disk.writeAtomically(Array("\(next)\n".utf8), to: path, directory: directory)
        } catch {
            logger.warning("cannot keep the agent's incarnation: a clock set back before the next start would make the peer ignore it", metadata: [
                "file": "\(path)", "error": "\(error)", "action": "make the node's data_dir writable by the agent",
            ])
        }
        return next
    }

    /// Binds a UDP socket at each of this node's path addresses (the agent's port) and starts the heartbeats.
    func start() throws {
        for address in Set([myPaths.first, myPaths.second]).sorted() {
            let channel = try bind(address).wait()
            try loop.submit { self.channels.append((address, channel)) }.wait()
        }
        for path in NetworkPath.allCases {
            // Resolved once (a name would block the loop at each heartbeat).
            peerSockets[path] = try SocketAddress.makeAddressResolvingHost(peerPaths[path], port: peer.agent.port)
        }
        logger.info("agent heartbeats started", metadata: [
            "node": "\(me.name)", "peer": "\(peer.name)", "paths": "\(myPaths.first) → \(peerPaths.first), \(myPaths.second) → \(peerPaths.second)",
            "switches": "\(switches.first ?? "none"), \(switches.second ?? "none")",
            "interval": "\(timings.agentHeartbeatInterval)", "grace": "\(timings.agentHeartbeatGrace)",
        ])
        ticker = loop.scheduleRepeatedTask(initialDelay: .zero, delay: Self.tickInterval) { [self] _ in tick() }
    }

    /// NIO closes a datagram socket on a "network unreachable" or "host
    /// unreachable" error (a send on a path that is down): it is bound
    /// again, so that the path is heard once it is back.
    private func bind(_ address: String) -> EventLoopFuture<Channel> {
        DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(DatagramHandler(watch: self, localAddress: address))
                }
            }
            .bind(host: address, port: me.agent.port)
            .map { [self] channel in
                channel.closeFuture.whenComplete { [self] _ in rebind(address) }
                return channel
            }
    }

    private func rebind(_ address: String) {
        guard !stopping else { return }
        loop.scheduleTask(in: .milliseconds(100)) { [self] in
            guard !stopping else { return }
            bind(address).whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    channels.removeAll { $0.address == address }
                    channels.append((address, channel))
                    // At each heartbeat while the path is down: not worth more than a debug line.
                    logger.debug("heartbeat socket bound again", metadata: ["address": "\(address)"])
                case .failure(let error):
                    logger.warning("heartbeat socket cannot be bound again; retrying", metadata: [
                        "address": "\(address)", "error": "\(error)",
                    ])
                    rebind(address)
                }
            }
        }
    }

    func stop() {
        try? loop.submit { self.stopping = true }.wait()
        ticker?.cancel()
        for (_, channel) in (try? loop.submit { self.channels }.wait()) ?? [] { try? channel.close().wait() }
        try? group.syncShutdownGracefully()
    }

    // MARK: Read by other threads

    /// What a swap whose fence got no answer decides on (`Swap.PeerReach`).
    var reach: Swap.PeerReach {
        shared.withLockedValue { state in
            Swap.PeerReach(selfIsolated: state.selfFenced, foundGoneAt: state.peerFoundGoneAt,
                           heardOnSomePath: state.silentPaths.count < NetworkPath.allCases.count,
                           lastHeard: max(state.lastHeard.first, state.lastHeard.second))
        }
    }

    /// A swap's fence went unanswered: climb the ladder again now, so that
    /// its verdict says what holds now (this node may have been cut off
    /// since an older verdict). A ladder already climbing goes on.
    func rediagnose() {
        loop.execute { [self] in
            let now = MonitorRunner.now()
            // Heard on every path: the swap asks again; there is nothing to diagnose.
            guard !stopping, !liveness.silentPaths(at: now).isEmpty else { return }
            perform(diagnosis.handle(.heartbeatsLost(lastHeard: min(now, liveness.lastHeardOnAnyPath)), at: now))
        }
    }

    /// How this agent has run lately.
    var agentRuns: ExportRole.AgentRuns { shared.withLockedValue(\.runs) }

    /// The peer is gone long enough for its exports to be taken over.
    var peerGoneForTakeover: Bool {
        reach.isGoneForTakeover(at: MonitorRunner.now(), takeoverDelay: timings.takeoverDelay)
    }

    /// For `baton status` and `baton diagnose`; `connections`: the TCP
    /// connections (MPTCP subflows among them) at each local address, by what they carry.
    func status(connections: [String: [String: Int]] = [:]) -> PeerStatus {
        let now = MonitorRunner.now()
        return shared.withLockedValue { state in
            var status = PeerStatus(
                name: peer.name,
                paths: NetworkPath.allCases.map { path in
                    let silent = state.silentPaths.contains(path)
                    let counts = connections[myPaths[path]] ?? [:]
                    return PeerStatus.Path(
                        path: path.rawValue, local: myPaths[path], peer: peerPaths[path], switch: switches[path] ?? "",
                        lastHeardMsAgo: Int((now - min(now, state.lastHeard[path])).nanoseconds / 1_000_000), silent: silent,
                        sinceMsAgo: Int((now - min(now, state.pathChangedAt[path])).nanoseconds / 1_000_000), connections: counts,
                        // A cut path's subflows stay established until they time out: they carry nothing.
                        carries: silent ? [] : ["heartbeats"] + counts.filter { $0.value > 0 }.keys.sorted())
                },
                peerGone: state.peerGone, selfFenced: state.selfFenced)
            if let last = state.lastVerdict {
                status.diagnosis = .init(verdict: Self.describe(last.verdict), msAgo: Int((now - min(now, last.at)).nanoseconds / 1_000_000),
                                         findings: Self.describe(last.findings))
            }
            return status
        }
    }

    // MARK: On the event loop

    private func tick() {
        let now = MonitorRunner.now()
        defer { lastTick = now }
        let resumed = liveness.ran(at: now, lastRan: lastTick) && lastTick != .zero
        shared.withLockedValue { state in
            state.runs.lastRan = now
            if resumed { state.runs.resumedAt = now }
        }
        if resumed {
            logger.warning("this agent did not run for a while: its peer's silence counts from now", metadata: [
                "peer": "\(peer.name)", "gap": "\(now - lastTick)",
            ])
            actions.resumed(now - lastTick)
        }
        if now - min(now, lastHeartbeatSent) >= timings.agentHeartbeatInterval {
            lastHeartbeatSent = now
            heartbeatSequence += 1
            // Paths with the same addresses (one NIC, loopback) are one path on the wire.
            let distinct = myPaths.first != myPaths.second || peerPaths.first != peerPaths.second
            for path in distinct ? NetworkPath.allCases : [.first] {
                send(.heartbeat(node: me.name, incarnation: incarnation, sequence: heartbeatSequence), on: path)
            }
            // (one datagram serves both paths when they share addresses: the peer hears it on both)
            for path in NetworkPath.allCases { AgentMetrics.heartbeatSent(peer: peer.name, path: path) }
        }
        if let lastHeard = liveness.silenceToDiagnose(at: now) {
            logger.warning("peer heartbeats missing: diagnosing", metadata: [
                "peer": "\(peer.name)", "silentPaths": "\(liveness.silentPaths(at: now).map(\.rawValue))",
            ])
            perform(diagnosis.handle(.heartbeatsLost(lastHeard: lastHeard), at: now))
        }
        perform(diagnosis.handle(.tick, at: now))
        let silent = liveness.silentPaths(at: now)
        let lastHeard = liveness.lastHeard
        let newlySilent = shared.withLockedValue { state -> [NetworkPath] in
            let newly = silent.filter { !state.silentPaths.contains($0) }
            for path in newly { state.pathChangedAt[path] = now }
            state.silentPaths = silent
            state.lastHeard = lastHeard
            return newly
        }
        for path in newlySilent where silent.count < NetworkPath.allCases.count {
            logger.warning("network path down: the other path carries the traffic", metadata: [
                "node": "\(me.name)", "peer": "\(peer.name)", "path": "\(path.rawValue)",
                "addresses": "\(myPaths[path]) → \(peerPaths[path])",
                "cause": "no heartbeat for \(timings.agentHeartbeatGrace); the diagnosis names the part",
            ])
        }
    }

    private func send(_ datagram: AgentDatagram, on path: NetworkPath, to address: SocketAddress? = nil) {
        guard let target = address ?? peerSockets[path],
              let channel = channels.first(where: { $0.address == myPaths[path] })?.channel else { return }
        let bytes = datagram.encode(authenticator)
        let envelope = AddressedEnvelope(remoteAddress: target, data: channel.allocator.buffer(bytes: bytes))
        // A path that is down fails the send: its silence is what the ladder looks at.
        channel.writeAndFlush(envelope, promise: nil)
    }

    /// The first refusal is logged at once, later ones at most once per
    /// `refusalLogInterval`, with the number refused since the last line.
    private func logRefusal(_ message: Logger.Message, _ metadata: Logger.Metadata) {
        refusedSinceLogged += 1
        let now = MonitorRunner.now()
        if let last = refusalLoggedAt, now - last < Self.refusalLogInterval { return }
        var metadata = metadata
        metadata["refusedSinceLastLine"] = "\(refusedSinceLogged)"
        logger.warning(message, metadata: metadata)
        refusalLoggedAt = now
        refusedSinceLogged = 0
    }

    fileprivate func received(_ bytes: [UInt8], from sender: SocketAddress, localAddress: String) {
        let datagram: AgentDatagram
        do {
            datagram = try AgentDatagram.decode(bytes, authenticator)
        } catch {
            logRefusal("agent datagram refused", [
                "from": "\(sender)", "error": "\(error)", "action": "check that every node has the same secret_file",
            ])
            return
        }
        guard datagram.node == peer.name else {
            logRefusal("agent datagram from a node that is not the peer", ["from": "\(sender)", "node": "\(datagram.node)"])
            return
        }
        let paths = NetworkPath.allCases.filter { myPaths[$0] == localAddress }
        let now = MonitorRunner.now()
        switch datagram {
        case .heartbeat(_, let incarnation, let sequence):
            let wasSilent = liveness.silentPaths(at: now)
            let heardBefore = liveness.lastHeard
            var back = false
            for path in paths where liveness.heard(path, incarnation: incarnation, sequence: sequence, at: now) {
                AgentMetrics.heartbeatHeard(peer: peer.name, path: path)
                guard wasSilent.contains(path) else { continue }
                back = true
                pathHeardAgain(path, silence: now - min(now, heardBefore[path]), at: now)
            }
            if back { peerHeardAgain(at: now) }
        case .probe(_, let nonce):
            for path in paths.prefix(1) { send(.probeAnswer(node: me.name, nonce: nonce), on: path, to: sender) }
        case .probeAnswer(_, let nonce):
            guard let path = agentProbes.removeValue(forKey: nonce) else { return }
            perform(diagnosis.handle(.probeAnswered(.peerAgent(path)), at: now))
        }
    }

    private func pathHeardAgain(_ path: NetworkPath, silence: TimeSpan, at now: Instant) {
        shared.withLockedValue { state in
            state.pathChangedAt[path] = now
            state.silentPaths.removeAll { $0 == path }
        }
        logger.notice("network path up: it may carry traffic again", metadata: [
            "node": "\(me.name)", "peer": "\(peer.name)", "path": "\(path.rawValue)",
            "addresses": "\(myPaths[path]) → \(peerPaths[path])", "downFor": "\(silence)",
        ])
    }

    private func peerHeardAgain(at now: Instant) {
        perform(diagnosis.handle(.peerHeard, at: now))
        let (wasGone, wasFenced) = shared.withLockedValue { state -> (Bool, Bool) in
            defer { state.peerFoundGoneAt = nil; state.selfFenced = false }
            return (state.peerGone, state.selfFenced)
        }
        guard wasGone || wasFenced else { return }
        logger.warning("peer heard again", metadata: ["peer": "\(peer.name)", "wasGone": "\(wasGone)", "selfFenced": "\(wasFenced)"])
        actions.peerBack()
    }

    private func perform(_ actions: [Diagnosis.Action]) {
        for action in actions {
            switch action {
            case .probe(let target): probe(target)
            case .awaitingTakeover(let at):
                let inMilliseconds = (at - min(at, MonitorRunner.now())).nanoseconds / 1_000_000
                logger.error("peer unreachable on every path: taking its exports over unless it is heard first", metadata: [
                    "peer": "\(peer.name)", "takeoverInMs": "\(inMilliseconds)", "findings": "\(Self.summary(diagnosis.findings))",
                ])
            case .decided(let verdict): decided(verdict)
            case .selfFence:
                shared.withLockedValue { $0.selfFenced = true }
                logger.critical("this node reaches no switch: it is the isolated one and stops its export servers", metadata: [
                    "node": "\(me.name)", "findings": "\(Self.summary(diagnosis.findings))",
                    "action": "check this node's NICs and cables; the servers start again once the peer is heard",
                ])
                self.actions.selfFence()
            }
        }
    }

    private func decided(_ verdict: DiagnosisVerdict) {
        let now = MonitorRunner.now()
        shared.withLockedValue { $0.lastVerdict = (verdict, now, diagnosis.findings) }
        let metadata: Logger.Metadata = ["peer": "\(peer.name)", "verdict": "\(Self.describe(verdict))",
                                         "findings": "\(Self.summary(diagnosis.findings))"]
        switch verdict {
        case .peerDeadOrIsolated, .peerAgentDown:
            shared.withLockedValue { $0.peerFoundGoneAt = now }
            logger.error("peer gone: exports served here go on without their standby; those it served are taken over",
                         metadata: metadata.merging(["action": "bring \(peer.name) back; it rejoins as standby"]) { $1 })
            actions.peerGone(verdict)
        case .selfIsolated:
            break  // `.selfFence` comes with it and says it all.
        case .allHealthy:
            logger.info("peer reachable again", metadata: metadata)
        case .peerNICDown, .switchDown, .pathDown:
            logger.warning("a network path is down; no failover", metadata: metadata.merging(
                ["action": "repair it: heartbeats use the other path meanwhile"]) { $1 })
        }
    }

    private func probe(_ target: DiagnosisTarget) {
        let host: String
        switch target {
        case .peerAgent(let path):
            let nonce = UInt64.random(in: 0...UInt64.max)
            agentProbes[nonce] = path
            send(.probe(node: me.name, nonce: nonce), on: path)
            return
        case .peerOperatingSystem: host = peer.agent.host
        case .peerNIC(let path): host = peerPaths[path]
        case .networkSwitch(let path):
            guard let address = switches[path] else {
                // No switch listed (one machine, loopback): nothing to be cut off from.
                perform(diagnosis.handle(.probeAnswered(target), at: MonitorRunner.now()))
                return
            }
            host = address
        }
        let deadline = Int32(timings.roundDeadline.nanoseconds / 1_000_000)
        let loop = self.loop
        Thread.detachNewThread { [self] in
            let reached = KernelProbe.reaches(host, deadlineMilliseconds: deadline)
            loop.execute { [self] in
                perform(diagnosis.handle(reached ? .probeAnswered(target) : .probeFailed(target), at: MonitorRunner.now()))
            }
        }
    }

    // MARK: Words for logs and status

    static func describe(_ verdict: DiagnosisVerdict) -> String {
        switch verdict {
        case .allHealthy: "peer reachable"
        case .peerNICDown(let path): "peer NIC on path \(path.rawValue) down"
        case .switchDown(let path): "switch \(path.rawValue) down (or this node's NIC on it)"
        case .pathDown(let path): "path \(path.rawValue) down (switch and peer NIC answer, its agent not)"
        case .peerAgentDown: "peer agent down, peer OS up"
        case .peerDeadOrIsolated: "peer dead or isolated"
        case .selfIsolated: "this node isolated"
        }
    }

    /// The probed rungs, for a log line: "peer_agent_1=unreached, peer_os=reached".
    static func summary(_ findings: DiagnosisFindings) -> String {
        describe(findings).filter { $0.value != "not probed" }.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            .joined(separator: ", ")
    }

    static func describe(_ findings: DiagnosisFindings) -> [String: String] {
        func word(_ reach: Reach) -> String {
            switch reach {
            case .unknown: "not probed"
            case .reached: "reached"
            case .unreached: "unreached"
            }
        }
        var words: [String: String] = ["peer_os": word(findings.peerOperatingSystem)]
        for path in NetworkPath.allCases {
            words["peer_agent_\(path.rawValue)"] = word(findings.peerAgent[path])
            words["peer_nic_\(path.rawValue)"] = word(findings.peerNIC[path])
            words["switch_\(path.rawValue)"] = word(findings.networkSwitch[path])
        }
        return words
    }
}

/// Hands each datagram to the watch, with the address it arrived at (its path).
private final class DatagramHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    private let watch: PeerWatch
    private let localAddress: String

    init(watch: PeerWatch, localAddress: String) {
        self.watch = watch
        self.localAddress = localAddress
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard envelope.data.readableBytes <= AgentDatagram.maxBytes else { return }
        watch.received(Array(envelope.data.readableBytesView), from: envelope.remoteAddress, localAddress: localAddress)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A send to an unreachable path reports here (ICMP errors); its silence is what counts.
    }
}

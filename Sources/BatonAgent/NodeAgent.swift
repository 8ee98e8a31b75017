import BatonCore
import BatonRuntime
import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The node's manager (`baton agent`): starts the export servers of its
/// node, keeps the standby replicas and monitors of the exports its peer
/// serves, runs the swap, and answers the admin CLI and the peer's agent.
public final class NodeAgent: @unchecked Sendable {
    let configuration: ClusterConfiguration
    let me: NodeConfiguration
    let peer: NodeConfiguration
    let secret: [UInt8]
    /// The secret as an authenticator (heartbeats, challenges, session proofs).
    let authenticator: MessageAuthenticator
    /// This node's certificate on a TLS cluster (`[tls]`); nil with `plaintext = true`.
    let tls: TLSIdentity?
    let executable: String
    let logger: Logger
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    /// Monitors read the server's heartbeats and answers on a thread of
    /// their own: a replica's disk writes and fsyncs (on `group`) can take
    /// hundreds of milliseconds under load, and must not look like a silent
    /// server (a benchmark run failed a healthy server over while the
    /// standby replica checkpointed).
    /// Their tick runs on the same thread, so their own stalls are seen as such.
    let monitorGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let monitorTimings: MonitorTimings
    private var controllers: [String: ExportController] = [:]
    private var listeners: [Channel] = []
    /// Sessions: the peer's replication links (one per export), its control
    /// requests and admin commands; unauthenticated ones at most
    /// `maxHalfOpen` and `helloTimeout` long, so a flood cannot use up the
    /// descriptors the agent needs for its own servers and peer.
    lazy var admission = ConnectionAdmission(limits: Self.connectionLimits, subject: ["node": "\(me.name)"], logger: logger)
    static var connectionLimits: ConnectionAdmission.Limits {
        var limits = ConnectionAdmission.Limits()
        limits.maxClients = 256
        return limits
    }
    /// Heartbeats with the peer's agent and the diagnostic ladder (DESIGN.md §6).
    private(set) var peerWatch: PeerWatch!
    private var metricsEndpoint: MetricsEndpoint?

    public init(configuration: ClusterConfiguration, node: String, secret: [UInt8], executable: String, logger: Logger) throws {
        guard let me = configuration.node(named: node) else {
            throw ProbeError("node '\(node)' is not in the cluster file (nodes: \(configuration.nodes.map(\.name).joined(separator: ", ")))")
        }
        guard let peer = configuration.peer(of: node) else { throw ProbeError("node '\(node)' has no peer in the cluster file") }
        switch configuration.transport {
        case .tls(let files):
            let (certificate, key) = files.nodeFiles(node)
            tls = try TLSIdentity(TLSFiles(certificate: certificate, key: key, authority: files.ca), roles: [.node])
        case .plaintext:
            tls = nil
        }
        self.configuration = configuration
        self.me = me
        self.peer = peer
        self.secret = secret
        self.authenticator = .hmacSHA256(secret: secret)
        self.executable = executable
        // Every line names the node: logs of two nodes are read side by side.
        var logger = logger
        logger[metadataKey: "node"] = "\(me.name)"
        self.logger = logger
        let t = configuration.timings
        monitorTimings = try MonitorTimings(
            probeInterval: .milliseconds(UInt64(t.probeIntervalMilliseconds)),
            probeDeadline: .milliseconds(UInt64(t.probeDeadlineMilliseconds)), probeMisses: t.probeMisses,
            heartbeatGrace: .milliseconds(UInt64(t.heartbeatGraceMilliseconds)),
            tickGapLimit: .milliseconds(UInt64(max(250, 2 * t.probeIntervalMilliseconds + 1))))
        peerWatch = PeerWatch(
            me: me, peer: peer, switches: configuration.switches, authenticator: authenticator, timings: t.diagnosisTimings, logger: logger,
            actions: PeerWatch.Actions(
                peerGone: { [unowned self] _ in for controller in controllers.values { controller.peerGone() } },
                selfFence: { [unowned self] in for controller in controllers.values { controller.selfFence() } },
                peerBack: { [unowned self] in
                    // Off the watch's event loop: this asks the peer and starts processes.
                    Thread.detachNewThread { [self] in
                        let peerExports = peerServedExports()
                        for controller in controllers.values { controller.peerBack(peerServes: peerExports?.contains(controller.export.name)) }
                    }
                },
                resumed: { [unowned self] gap in for controller in controllers.values { controller.agentResumed(after: gap) } }))
    }

    /// Withdraws and announces again the MPTCP endpoint of a path whose NIC loses and regains its link.
    private var localLinks: LocalLinkWatch?

    /// This node's distinct path addresses when it has more than one: the
    /// kernel's MPTCP announces them (`MultipathEndpoints`). Nil for a node
    /// on one address (loopback, one NIC): nothing to announce.
    private var multipathAddresses: [String]? {
        let hosts = me.agentAddresses.map(\.host)
        return hosts.count > 1 ? hosts : nil
    }

    /// This node has two path addresses: its long-lived connections are MPTCP (see `Multipath`).
    var isMultipath: Bool { multipathAddresses != nil }

    var peerAgentAddress: NodeAddress { NodeAddress(host: peer.agent.host, port: peer.agent.port) }

    func clientAddress(_ export: ExportConfiguration, on node: NodeConfiguration) -> NodeAddress {
        let address = configuration.clientAddress(of: export, on: node)
        return NodeAddress(host: address.host, port: address.port)
    }

    func monitorAddress(_ export: ExportConfiguration, on node: NodeConfiguration) -> NodeAddress {
        let address = configuration.monitorAddress(of: export, on: node)
        return NodeAddress(host: address.host, port: address.port)
    }

    /// Listens, starts every export in its role, and blocks until stopped.
    public func run() throws {
        // A server that exits before its go-ahead is written must not take the agent with it.
        signal(SIGPIPE, SIG_IGN)
        // Before any series is made: those made earlier would count nowhere.
        if me.metrics != nil { ProcessMetrics.bootstrap() }
        if let addresses = multipathAddresses {
            if let endpoints = MultipathEndpoints(logger: logger) {
                endpoints.announce(addresses)
                localLinks = LocalLinkWatch(addresses: addresses, endpoints: endpoints, logger: logger) { [unowned self] in
                    for controller in controllers.values { controller.localPathRestored() }
                }
                localLinks?.start(on: group.next())
            } else {
                logger.warning("no MPTCP here: a connection stays on the path it was made on", metadata: [
                    "node": "\(me.name)", "paths": "\(addresses.joined(separator: ", "))",
                    "action": "enable it (sysctl net.mptcp.enabled=1, iproute2 installed) so that a NIC or switch fault is a pause",
                ])
            }
        }
        let bootstrap = ServerBootstrap(group: group)
            .multipath(isMultipath)
            // Out of descriptors (EMFILE), accept would fail at once, again and
            // again: a core spun and nothing was accepted. Back off instead.
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler()) }
            }
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try tls.addServerHandlers(to: channel.pipeline.syncOperations, accepting: agentRoles)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(MessageDecoder()))
                    try channel.pipeline.syncOperations.addHandler(AgentSessionHandler(agent: self))
                }
            }
        if tls == nil {
            logger.warning("plain TCP: the cluster file says plaintext = true, so clients, replication and admin commands travel unencrypted and unauthenticated by certificate", metadata: [
                "node": "\(me.name)", "action": "make certificates with `baton cert` and replace plaintext = true with a [tls] table",
            ])
        }
        for address in me.agentAddresses {
            listeners.append(try bootstrap.bind(host: address.host, port: address.port).wait())
        }
        logger.info("agent listening", metadata: [
            "node": "\(me.name)", "addresses": "\(me.agentAddresses.map(\.description).joined(separator: ", "))",
            "peer": "\(peer.name)",
        ])
        let peerExports = peerServedExports()
        for export in configuration.exports {
            controllers[export.name] = ExportController(export: export, agent: self, logger: logger)
        }
        // One owner (DESIGN.md §4.7): no server of this node's exports runs unknown to this agent.
        for controller in controllers.values {
            LeftoverServer.fence(export: controller.export.name, directory: controller.directory, node: me.name, logger: logger)
        }
        for controller in controllers.values {
            controller.start(peerServes: peerExports.map { $0.contains(controller.export.name) })
        }
        try peerWatch.start()
        if let address = me.metrics { try serveMetrics(on: NodeAddress(host: address.host, port: address.port)) }
        for listener in listeners { try listener.closeFuture.wait() }
    }

    /// The node's page: the agent's series, then those of each server it
    /// runs (asked on loopback), as one page. A server that does not answer
    /// in time is left out, and says so in `baton_metrics_scrape_failed`.
    private func serveMetrics(on address: NodeAddress) throws {
        metricsEndpoint = try MetricsEndpoint(listen: address, logger: logger) { [self] in
            AgentMetrics.refresh(status())
            var pages: [String] = []
            var failed: [String] = []
            for controller in controllers.values {
                guard let server = controller.serverMetricsAddress else { continue }
                switch MetricsEndpoint.scrape(server, timeoutMilliseconds: 500) {
                case .success(let page): pages.append(page)
                case .failure: failed.append(controller.export.name)
                }
            }
            for export in configuration.exports {
                Gauge(label: "baton_metrics_scrape_failed", dimensions: [("export", export.name)])
                    .record(failed.contains(export.name) ? 1 : 0)
            }
            return MetricsExposition.merge([ProcessMetrics.page()] + pages)
        }
    }

    /// Stops the agent and the export servers it started (their clients
    /// wait for them, up to their mount's timeout, or follow a failover).
    public func stop() {
        metricsEndpoint?.stop()
        localLinks?.stop()
        peerWatch.stop()
        for controller in controllers.values { controller.stopServer() }
        for listener in listeners { try? listener.close().wait() }
    }

    /// This agent's answer to `status`.
    func status(connections: [String: [String: Int]] = [:]) -> AgentStatus {
        AgentStatus(node: me.name, exports: configuration.exports.compactMap { controllers[$0.name]?.status() },
                    peer: peerWatch.status(connections: connections))
    }

    /// The exports the peer serves, or nil when its agent does not answer.
    /// A peer in the middle of a swap (or a planned migration) serves the
    /// export in a moment, at a newer epoch: an agent that starts then and
    /// served the export last must not serve it too (a soak saw two servers
    /// for an instant after an agent was killed and started again).
    func peerServedExports() -> Set<String>? {
        guard let (ok, text) = try? askPeer(.status), ok, let answer = try? StatusJSON.decode(AgentStatus.self, from: text) else {
            return nil
        }
        return Set(answer.exports.filter(\.role.serves).map(\.name))
    }

    /// Asks the peer's agent at each of its addresses in turn (a path may be
    /// down). Fencing waits for a process to exit, so its answer may take
    /// longer than a status; a stalled agent, whose kernel accepts the
    /// connection, is then left to the diagnostic ladder.
    func askPeer(_ request: AgentRequest) throws -> (ok: Bool, text: String) {
        let timeout: Int32 = switch request {
        case .fence: 2000
        case .handOver: 5000  // the server's drain (2 s at most), then the fence
        default: 1000
        }
        var failures: [String] = []
        for address in peer.agentAddresses {
            do {
                return try PeerClient.request(request, to: address, node: me.name, secret: secret, tls: tls, timeoutMilliseconds: timeout)
            } catch {
                failures.append("\(error)")
            }
        }
        throw ProbeError("the agent of \(peer.name) does not answer: \(failures.joined(separator: "; "))")
    }

    func controller(_ export: String) -> ExportController? { controllers[export] }

    /// The agent's port takes nodes (its peer: replication, fences, hand-overs)
    /// and admins (the admin commands); never clients.
    var agentRoles: RolePolicy {
        RolePolicy(accepting: [.node, .admin], place: "the agent's port", log: { [admission] kind, detail, peer in
            admission.logHit(kind, "agent connection refused", ["peer": "\(peer)", "detail": "\(detail)"])
        })
    }

    /// The roles that may ask `request`: an admin reads status and moves
    /// exports; only a node fences or hands over (it is the peer in a swap).
    static func roles(for request: AgentRequest) -> Set<PeerRole> {
        switch request {
        case .status, .migrate, .forceServe: [.node, .admin]
        case .fence, .handOver, .outdate: [.node]
        }
    }

    /// For refusals: "a fence takes node certificates only".
    static func describe(_ request: AgentRequest) -> String {
        switch request {
        case .status: "a status request"
        case .migrate: "a migration"
        case .forceServe: "a force-serve"
        case .fence: "a fence"
        case .handOver: "a hand-over"
        case .outdate: "a request to answer without the replica"
        }
    }

    /// This node's TCP connections at each local address, by what they carry:
    /// clients and probes served here, probes of the peer's servers,
    /// replication and agent requests either way.
    private func connectionsByAddress() -> [String: [String: Int]] {
        let clientPorts = Set(configuration.exports.map(\.port)), monitorPorts = Set(configuration.exports.map(\.monitorPort))
        var counts: [String: [String: Int]] = [:]
        for connection in TCPCensus.established() {
            let kind: String
            if clientPorts.contains(connection.localPort) {
                kind = "clients"
            } else if monitorPorts.contains(connection.localPort) || monitorPorts.contains(connection.remotePort) {
                kind = "probes"
            } else if connection.localPort == me.agent.port || connection.remotePort == peer.agent.port {
                kind = "replication"
            } else {
                continue
            }
            counts[connection.localHost, default: [:]][kind, default: 0] += 1
        }
        return counts
    }

    func answer(_ request: AgentRequest) -> (Bool, String) {
        switch request {
        case .status:
            return (true, StatusJSON.encode(status(connections: connectionsByAddress())))
        case .fence(let export, let epoch):
            guard let controller = controllers[export] else { return (false, "unknown export '\(export)'") }
            return controller.fence(epoch: epoch)
        case .handOver(let export, let epoch):
            guard let controller = controllers[export] else { return (false, "unknown export '\(export)'") }
            return controller.fence(epoch: epoch, handOver: true)
        case .migrate(let export):
            guard let controller = controllers[export] else { return (false, "unknown export '\(export)'") }
            return controller.migrate()
        case .forceServe(let export):
            guard let controller = controllers[export] else { return (false, "unknown export '\(export)'") }
            return controller.forceServe()
        case .outdate(let export, let epoch):
            guard let controller = controllers[export] else { return (false, "unknown export '\(export)'") }
            return controller.outdate(epoch: epoch)
        }
    }
}

/// One connection to the agent: authentication first, then either agent
/// requests or a replication stream from the peer's export server.
private final class AgentSessionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Message

    private let agent: NodeAgent
    private var nonce: [UInt8] = []
    private var peerNode: String?
    /// Who the peer's certificate names (TLS); nil on plain TCP.
    private var certified: PeerIdentity?
    private var export: ExportController?
    private var incoming: String?
    /// The epoch the server announced in its hello: a copy is installed at it.
    private var helloEpoch: UInt64 = 0
    /// A copy under way: whether it is partial.
    private var copyIsPartial: Bool?

    private var authenticationDeadline: Scheduled<Void>?
    /// A replica session's work, in order (`replicate(_:on:)`); the state above it is used there only.
    private let replicaWork = DispatchQueue(label: "baton.agent.replica-session")
    /// Messages handed to `replicaWork` and not yet done (on the event loop):
    /// past the limit the connection is not read until a quarter of them are.
    private var pendingReplicaWork = 0
    private static let maxPendingReplicaWork = 1024

    init(agent: NodeAgent) { self.agent = agent }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        let admission = agent.admission
        admission.accepted(channel)
        authenticationDeadline = context.eventLoop.scheduleTask(in: admission.limits.helloTimeout) {
            admission.logHit("authentication", "an agent connection did not authenticate in time: closing it", [
                "timeout": "\(admission.limits.helloTimeout)", "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "?")",
            ])
            channel.close(promise: nil)
        }
        nonce = (0..<32).map { _ in UInt8.random(in: 0...255) }
        send(context, .challenge(nonce: nonce))
    }

    func channelInactive(context: ChannelHandlerContext) {
        authenticationDeadline?.cancel()
        agent.admission.closed(context.channel, welcomed: peerNode != nil)
        context.fireChannelInactive()
    }

    private func send(_ context: ChannelHandlerContext, _ message: Message) { send(context.channel, message) }

    private func send(_ channel: Channel, _ message: Message) {
        channel.writeAndFlush(message.frame(allocator: channel.allocator), promise: nil)
    }

    private func refuse(_ context: ChannelHandlerContext, _ refusal: Refusal, _ detail: String) { refuse(context.channel, refusal, detail) }

    private func refuse(_ channel: Channel, _ refusal: Refusal, _ detail: String) {
        // At most one line per 10 s: a flood of bad connections must not flood the log.
        agent.admission.logHit("refused", "agent connection refused", [
            "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "?")", "detail": "\(detail)",
            "action": "check the peer's shared secret and version if this is a node of the cluster",
        ])
        channel.writeAndFlush(Message.refused(refusal, detail: detail).frame(allocator: channel.allocator)).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let verified = event as? PeerVerified { certified = verified.identity }
        context.fireUserInboundEventTriggered(event)
    }

    /// On TLS, whether the peer's certificate may do `what`; refuses it otherwise.
    private func allowed(_ context: ChannelHandlerContext, _ roles: Set<PeerRole>, _ what: String) -> Bool {
        guard let certified, !roles.contains(certified.role) else { return true }
        let needed = roles.map(\.rawValue).sorted().joined(separator: " or ")
        refuse(context, .unauthenticated, "\(certified.role) certificate '\(certified.name)' presented; \(what) takes \(needed) certificates only")
        return false
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        if case .authenticate(let node, let proof) = message {
            guard peerNode == nil, MessageAuthenticator.matches(proof, AgentAuthentication.proof(agent.authenticator, nonce: nonce, node: node)) else {
                return refuse(context, .unauthenticated, "authentication failed for '\(node)': wrong shared secret")
            }
            authenticationDeadline?.cancel()
            guard agent.admission.welcome(context.channel) else {
                return refuse(context, .notActive, "too many sessions with \(agent.me.name)'s agent; try again")
            }
            peerNode = node
            return
        }
        guard peerNode != nil else { return refuse(context, .unauthenticated, "authenticate first") }
        switch message {
        case .agentRequest(let request):
            guard allowed(context, NodeAgent.roles(for: request), NodeAgent.describe(request)) else { return }
            // Fencing waits for a process to exit: not on the event loop.
            let channel = context.channel
            Thread.detachNewThread { [agent] in
                let (ok, text) = agent.answer(request)
                channel.writeAndFlush(Message.agentReply(ok: ok, text: text).frame(allocator: channel.allocator), promise: nil)
            }
        case .replicaHello, .catchUp, .snapshotBegin, .snapshotData, .snapshotEnd, .repliesWait, .replicate, .replicaSync:
            if case .replicaHello = message, !allowed(context, [.node], "a replica session") { return }
            let channel = context.channel
            pendingReplicaWork += 1
            if pendingReplicaWork == Self.maxPendingReplicaWork { _ = channel.setOption(ChannelOptions.autoRead, value: false) }
            replicaWork.async { [self] in
                let answer = replicate(message, on: channel)
                // One hop back to the event loop for the answer and the count: each costs a wake-up.
                channel.eventLoop.execute { [self] in
                    switch answer {
                    case .none: break
                    case .send(let message): send(channel, message)
                    case .sendAndClose(let message):
                        send(channel, message)
                        channel.close(promise: nil)
                    case .refuse(let refusal, let detail): refuse(channel, refusal, detail)
                    }
                    pendingReplicaWork -= 1
                    if pendingReplicaWork == Self.maxPendingReplicaWork / 4 { _ = channel.setOption(ChannelOptions.autoRead, value: true) }
                }
            }
        default:
            refuse(context, .malformed, "unexpected message for an agent")
        }
    }

    /// What a replica session's message is answered with, written on the event loop.
    private enum ReplicaAnswer {
        case none
        case send(Message)
        case sendAndClose(Message)
        case refuse(Refusal, String)
    }

    /// One message of a replica session, on `replicaWork`: in order, and off
    /// the event loop, so that a disk that hangs under the replica stops
    /// none of this agent's other connections (a fence, an `outdate`).
    private func replicate(_ message: Message, on channel: Channel) -> ReplicaAnswer {
        switch message {
        case .replicaHello(let name, let epoch):
            guard let controller = agent.controller(name) else { return .refuse(.unknownExport, "unknown export '\(name)'") }
            export = controller
            let answer = controller.replicaHello(epoch: epoch, channel: channel)
            if case .replicaPosition = answer {
                helloEpoch = epoch
                incoming = controller.directory + ".incoming"
                // Left by a copy that did not finish.
                try? FileManager.default.removeItem(atPath: controller.directory + ".incoming")
            }
            return .send(answer)
        case .catchUp(let sequence):
            guard let export else { return .refuse(.malformed, "catch-up before hello") }
            return .send(export.filesChanged(after: sequence, channel: channel))
        case .snapshotBegin(let partial, let bytes):
            guard let export, let incoming else { return .refuse(.malformed, "snapshot before hello") }
            do {
                try Disk.makeDirectory(incoming)
                try Disk.makeDirectory(incoming + "/files")
                copyIsPartial = partial
                export.copyBegins(partial: partial, expectedBytes: bytes)
                return .none
            } catch {
                return .refuse(.notActive, "cannot store the copy: \(error)")
            }
        case .snapshotData(let inode, let offset, let data):
            guard let incoming, copyIsPartial != nil else { return .refuse(.malformed, "snapshot data before its beginning") }
            do {
                let path = inode == Message.snapshotCheckpointInode ? incoming + "/checkpoint" : incoming + "/files/" + String(inode, radix: 16)
                try OpenFile(path: path, flags: O_WRONLY | O_CREAT).write(data, at: offset)
                export?.copyProgress(data.count)
                return .none
            } catch {
                return .refuse(.notActive, "cannot store the copy: \(error)")
            }
        case .snapshotEnd(let sequence):
            guard let export, let incoming else { return .refuse(.malformed, "snapshot end before hello") }
            // Without a copy first, it says the replica was in step already.
            let answer = copyIsPartial.map {
                export.installSnapshot(from: incoming, partial: $0, sequence: sequence, epoch: helloEpoch, channel: channel)
            } ?? .replicated(sequence: sequence)
            copyIsPartial = nil
            return .send(answer)
        case .repliesWait(let sequence):
            guard let export else { return .refuse(.malformed, "replies-wait before hello") }
            export.repliesWait(through: sequence, channel: channel)
            return .none
        case .replicate(let record):
            guard let export else { return .refuse(.malformed, "record before hello") }
            let answer = export.replicate(record, channel: channel)
            if case .refused = answer { return .sendAndClose(answer) }
            return .send(answer)
        case .replicaSync(let sequence):
            guard let export else { return .refuse(.malformed, "sync before hello") }
            return .send(export.replicaSync(sequence, channel: channel))
        default:
            preconditionFailure("not a replica session's message: \(message)")
        }
    }


    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        refuse(context, .malformed, "\(error)")
    }
}

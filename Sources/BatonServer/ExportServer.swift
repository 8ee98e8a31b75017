import BatonCore
import BatonRuntime
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The export server (`baton serve`): owns one export's namespace while
/// active. Requests are answered on the network thread that read them:
/// queries and reads under the namespace's read lock, mutations one at a time
/// under the mutation lock (its order is the journal's order), each journaled
/// before it is answered. Answering in place saves two thread hops per
/// mutation, which on a small machine cost more than the disk writes; but a
/// network thread never waits for the lock (see `MutationPath`).
///
/// The monitor's challenges and heartbeats have a listener and a thread of
/// their own: on the clients' threads, a few clients pipelining requests
/// delayed them by seconds and failed a healthy server over. The challenge
/// still proves that the clients' threads serve requests: each stamps the
/// time of its last turn, and a thread that has not had one for the stall
/// limit counts as wedged, as a stuck mutation path does.
public final class ExportServer: @unchecked Sendable {
    public let exportName: String
    private let store: ExportStore
    private let logger: Logger
    private let network: MultiThreadedEventLoopGroup
    /// One thread for the monitor's connections (started with a monitor listener).
    private let monitorThread = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private var listener: Channel?
    private var monitorListener: Channel?
    /// The listeners on the node's other network paths (see `start`).
    private var otherPathListeners: [Channel] = []
    /// When each of `network`'s threads last had a turn (uptime nanoseconds).
    private let networkTurns: [NIOLockedValueBox<UInt64>]
    /// Held while a mutation, a sync or a checkpoint's cut runs (the
    /// checkpoint is written without it); guards `failed` too.
    private let mutations: MutationPath
    private var failed = false
    /// How long the mutation lock may be held by one mutation, sync or
    /// checkpoint cut while the challenge is still answered: the server is
    /// making progress, only its disk is slow. Past it the server counts as
    /// wedged and the challenge goes unanswered (DESIGN.md §2 "Monitor").
    private let stallLimit: TimeAmount
    /// The monitor's challenges are answered with this secret (nil: no monitor).
    /// The cluster's shared secret as an authenticator: answers the monitor's challenges.
    private let authenticator: MessageAuthenticator?
    private let replication: ReplicationLink?
    let admission: ConnectionAdmission
    /// The monitor port's own limits: a flood of clients does not keep the monitor out.
    let monitorAdmission: ConnectionAdmission
    private let metrics: ServerMetrics
    /// The node's certificate on a TLS cluster; nil on plain TCP.
    private let tls: TLSIdentity?
    static let heartbeatInterval = TimeAmount.milliseconds(100)

    public static let defaultStallLimit = TimeAmount.seconds(10)

    public init(exportName: String, store: ExportStore, secret: [UInt8]? = nil, standby: StandbyConfiguration? = nil,
                stallLimit: TimeAmount = defaultStallLimit, connectionLimits: ConnectionAdmission.Limits = .init(),
                tls: TLSIdentity?, logger: Logger) {
        self.exportName = exportName
        self.tls = tls
        self.store = store
        self.logger = logger
        self.authenticator = secret.map { MessageAuthenticator.hmacSHA256(secret: $0) }
        self.stallLimit = stallLimit
        self.admission = ConnectionAdmission(limits: connectionLimits, subject: ["export": "\(exportName)"], logger: logger)
        self.monitorAdmission = ConnectionAdmission(limits: .monitor, subject: ["export": "\(exportName)", "listener": "monitor"],
                                                    logger: logger)
        self.metrics = ServerMetrics(export: exportName)
        self.network = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        self.networkTurns = network.makeIterator().map { _ in NIOLockedValueBox(NIODeadline.now().uptimeNanoseconds) }
        let mutations = MutationPath()
        self.mutations = mutations
        self.replication = standby.map { ReplicationLink(configuration: $0, store: store, mutationLock: mutations, tls: tls, logger: logger) }
        store.writesCheckpointsInBackground()
    }

    /// Runs once, when the first connection is welcomed (after a swap: the
    /// first client back; the agent logs it).
    public var onFirstWelcome: (@Sendable () -> Void)?
    /// Where clients may find the export (every node, every path), told to
    /// each client after its welcome; set before `start`.
    public var exportAddresses: [NodeAddress] = []
    /// This node has two network paths: listeners bound here are MPTCP, and
    /// clients are told to connect with MPTCP (see `Multipath`).
    public var multipath = false
    /// Which clients may mount, by their certificate's name (TLS only); set before `start`.
    public var access = ClientAccess.everyone
    /// Whose identity the server maps to the anonymous user (and then checks
    /// permissions for); set before `start`.
    public var squash = Squash.rootToNobody
    private let welcomedOnce = NIOLockedValueBox(false)
    /// Lock requests that wait for another owner's lock (issue 12), and where
    /// to answer each once it is granted. Touched on the mutation path only.
    private var lockWaiters = LockWaiters()
    private var waitingLocks: [UInt64: WaitingLock] = [:]
    private var nextWaiterID: UInt64 = 1

    /// How long a client session with locks may go unheard (no renewal, or
    /// for an older client no connection) before its locks are released (its
    /// mount or machine is gone, stopped or cut off); set before `start`.
    public var lockLease = TimeAmount.seconds(30)
    private let leases = NIOLockedValueBox(LockLeases(lease: .zero))

    private struct WaitingLock: Sendable {
        var session: UInt64
        var sequence: UInt64
        var channel: Channel
        var meter: RequestMeter
    }

    /// What a lock request leads to: its own answer (nil while it waits) and
    /// the answers of the waiters its change let in.
    private struct LockAnswers: Sendable {
        var own: (reply: Reply, position: UInt64)?
        var woken: [(channel: Channel, sequence: UInt64, reply: Reply, position: UInt64, meter: RequestMeter)] = []
    }

    func welcomed() {
        let first = welcomedOnce.withLockedValue { seen in
            defer { seen = true }
            return !seen
        }
        if first { onFirstWelcome?() }
    }

    /// Sets the gauges of this server's metrics (before a page is emitted).
    public func refreshMetrics() {
        let status = replication?.status
        metrics.refresh(store: store, clients: admission.clientCount, replication: status.map { ($0.acknowledged, $0.alone) })
    }

    /// The agent declared the peer node gone: stop waiting for the standby.
    public func continueWithoutStandby() { replication?.goAlone() }

    /// The agent consents to answering alone at the wait limit (`ServerControl.answerAlone`).
    public func answerAlone(oldestWaiting: UInt64) { replication?.goAlone(ifOldestWaiting: oldestWaiting) }

    /// The agent says a NIC of this node has its link again (`ServerControl.pathRestored`).
    public func pathRestored() { replication?.pathRestored() }

    /// A planned swap (DESIGN.md §5): take no more mutations, and return
    /// once the standby has acknowledged every record, or after `timeout`
    /// (false). The mutation lock stays held: the agent ends the process next.
    public func drainForHandOver(timeout: Duration) -> Bool {
        mutations.lock()
        guard let replication else { return true }
        return replication.waitUntilAcknowledged(replication.lastSent, timeout: timeout)
    }

    /// Where a listener listens: an address to bind, or a socket bound (and
    /// listening) already. A server started ahead of a swap binds before it is
    /// promoted, so that connections wait in the kernel's queue and are
    /// answered the moment it is.
    public enum Listener {
        case address(NodeAddress)
        case bound(CInt, NodeAddress)

        var address: NodeAddress {
            switch self {
            case .address(let address), .bound(_, let address): address
            }
        }
    }

    /// Starts serving clients on `clients` and the monitor on `monitor`;
    /// returns the bound addresses (useful with port 0). `otherPaths`: the
    /// same two listeners at the node's address on each other network path,
    /// where clients connect when the first path is down and where the
    /// second subflow of an MPTCP connection joins (issue 9).
    public func start(clients: Listener, monitor: Listener?,
                      otherPaths: [(clients: Listener, monitor: Listener?)] = []) throws -> (clients: NodeAddress, monitor: NodeAddress?) {
        try stampNewExportRoot()
        if let monitor {
            guard authenticator != nil else { throw ProbeError("a monitor listener needs the cluster's secret (--secret-file)") }
            let channel = try bind(monitor, bootstrap(group: monitorThread, for: .monitor))
            monitorListener = channel
            for (loop, turn) in zip(network.makeIterator(), networkTurns) {
                loop.scheduleRepeatedTask(initialDelay: .zero, delay: Self.turnStampInterval) { _ in
                    turn.withLockedValue { $0 = NIODeadline.now().uptimeNanoseconds }
                }
            }
        }
        for path in otherPaths {
            if let monitor = path.monitor, monitorListener != nil {
                otherPathListeners.append(try bind(monitor, bootstrap(group: monitorThread, for: .monitor)))
            }
            otherPathListeners.append(try bind(path.clients, bootstrap(group: network, for: .clients)))
        }
        listener = try bind(clients, bootstrap(group: network, for: .clients))
        replication?.start()
        leases.withLockedValue { $0 = LockLeases(lease: TimeSpan(nanoseconds: UInt64(lockLease.nanoseconds))) }
        // A sweep every tenth of the lease (at least every second): a lease runs out at most that late.
        let sweep = TimeAmount.nanoseconds(min(lockLease.nanoseconds / 10, TimeAmount.seconds(1).nanoseconds))
        network.next().scheduleRepeatedTask(initialDelay: sweep, delay: sweep) { [weak self] _ in self?.expireLockLeases() }
        let bound = (clients: boundAddress(listener!, clients.address), monitor: monitorListener.map { boundAddress($0, monitor!.address) })
        logger.info("export server listening", metadata: [
            "export": "\(exportName)", "address": "\(bound.clients)", "monitorAddress": "\(bound.monitor.map { "\($0)" } ?? "none")",
            "otherPaths": "\(otherPaths.map(\.clients.address.host).joined(separator: ", "))", "epoch": "\(store.epoch)",
        ])
        return bound
    }

    /// How often each client thread stamps its turn.
    static let turnStampInterval = TimeAmount.milliseconds(100)

    private func bind(_ listener: Listener, _ bootstrap: ServerBootstrap) throws -> Channel {
        switch listener {
        // A bound socket is MPTCP already where it can be (`ListeningSocket`); NIO refuses to be asked again.
        case .address(let address): try bootstrap.multipath(multipath).bind(host: address.host, port: address.port).wait()
        case .bound(let socket, _): try bootstrap.withBoundSocket(socket).wait()
        }
    }

    private func boundAddress(_ channel: Channel, _ requested: NodeAddress) -> NodeAddress {
        NodeAddress(host: requested.host, port: channel.localAddress?.port ?? requested.port)
    }

    /// Each node creates a new export's root with its own clock; a first
    /// record sets the root's times, so every replica agrees on them.
    private func stampNewExportRoot() throws {
        guard store.appliedSequence == 0 else { return }
        _ = try store.apply(.setattr(rootInode, AttributeChanges(atime: .now, mtime: .now), .root), session: 0, requestSequence: 0)
    }

    /// What a listener serves: clients' requests, or the monitor's challenges.
    enum Purpose { case clients, monitor }

    private func bootstrap(group: MultiThreadedEventLoopGroup, for purpose: Purpose) -> ServerBootstrap {
        let admission = purpose == .clients ? admission : monitorAdmission
        // Clients mount; only the peer node's monitor may probe.
        let roles = RolePolicy(
            // An admin may ask a server which locks are held (`baton locks`), not mount.
            accepting: purpose == .clients ? [.client, .admin] : [.node],
            place: purpose == .clients ? "the export's client port" : "the export's monitor port",
            log: { kind, detail, peer in admission.logHit(kind, "connection refused", ["peer": "\(peer)", "detail": "\(detail)"]) })
        return ServerBootstrap(group: group)
            // Out of descriptors (EMFILE), accept would fail at once, again and
            // again: a core spun and nothing was accepted. Back off instead.
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler()) }
            }
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // One turn of a thread reads at most 64 KiB from each connection:
            // a pipelining client cannot make the others wait for thousands
            // of its requests (1 MiB reads, 4 a turn, let 8 such clients
            // delay every other connection by seconds).
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 16384, maximum: 65536))
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: admission.limits.resumeBelowBytes,
                                                                     high: admission.limits.maxUnsentBytes))
            // A client machine that vanished is found within about two minutes.
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: .init(rawValue: TCP_KEEPIDLE)), value: 60)
            .childChannelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: .init(rawValue: TCP_KEEPINTVL)), value: 10)
            .childChannelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: .init(rawValue: TCP_KEEPCNT)), value: 6)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try tls.addServerHandlers(to: channel.pipeline.syncOperations, accepting: roles)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RequestDecoder()))
                    try channel.pipeline.syncOperations.addHandler(ClientConnectionHandler(server: self, purpose: purpose))
                }
            }
    }

    /// Blocks until `stop` is called.
    public func wait() throws {
        try listener?.closeFuture.wait()
    }

    public func stop() {
        replication?.stop()
        try? monitorListener?.close().wait()
        for channel in otherPathListeners { try? channel.close().wait() }
        try? listener?.close().wait()
        try? monitorThread.syncShutdownGracefully()
        try? network.syncShutdownGracefully()
        mutations.withLock {
            do {
                try store.sync()
            } catch {
                logger.error("final journal sync failed", metadata: ["export": "\(exportName)", "error": "\(error)"])
            }
        }
        logger.info("export server stopped", metadata: ["export": "\(exportName)"])
    }

    var epoch: UInt64 { store.epoch }

    /// Answers one request, on the calling network thread. `squashedTo`:
    /// the identity a squashed caller acts as, whose permissions the server
    /// checks; nil when the client's kernel has checked them.
    func handle(_ operation: Operation, session: UInt64, sequence: UInt64, oldestUnanswered: UInt64,
                squashedTo identity: Credentials?, channel: Channel, order: MutationPath.Order) {
        let meter = metrics.started(operation.name)
        if let identity, !operation.isMutation, let problem = store.withNamespace({ $0.permissionProblem(operation, by: identity) }) {
            return respond(channel, sequence, .error(problem), meter)
        }
        switch operation {
        case .read(let ino, _, let offset, let size):
            let answer = read(ino, offset: offset, size: size, sequence: sequence, allocator: channel.allocator)
            if metrics.enabled { metrics.bytesRead.increment(by: max(0, answer.readableBytes - Self.readReplyHeaderBytes)) }
            channel.writeAndFlush(answer, promise: nil)
            meter.answered()
        case .statfs:
            let reply: Reply
            do {
                reply = .statfs(try store.statistics())
            } catch {
                logger.warning("statfs failed", metadata: ["export": "\(exportName)", "error": "\(error)"])
                reply = .error(.EIO)
            }
            respond(channel, sequence, reply, meter)
        case .fsync:
            mutations.run(order, waitsForDisk: true, { [self] () -> (Reply, UInt64) in
                do {
                    try store.sync()
                    return (.done, store.appliedSequence)
                } catch {
                    // After a failed fsync the kernel may have dropped the
                    // pages it could not write: a later fsync could pass
                    // without them. Stop; the standby has every record.
                    fail(error)
                    return (.error(.EIO), 0)
                }
            }, then: { [self] reply, position in
                // Durable on both disks before the answer (DESIGN.md §4.1).
                if let replication, reply == .done {
                    replication.whenDurable(position) { self.respond(channel, sequence, reply, meter) }
                } else {
                    respond(channel, sequence, reply, meter)
                }
            })
        case .cancelLockWait(let ino, let owner, let family):
            mutations.run(order, { [self] in cancelWaits(ino, owner: owner, family: family) }, then: { [self] cancelled in
                for waiting in cancelled { respond(waiting.channel, waiting.sequence, .error(.EINTR), waiting.meter) }
                respond(channel, sequence, .done, meter)
            })
        case _ where !operation.isMutation:
            respond(channel, sequence, store.withAllocatedBlocks(store.withNamespace { $0.query(operation) }), meter)
        case .setLock, .releaseLocks:
            handleLock(operation, session: session, sequence: sequence, oldestUnanswered: oldestUnanswered, channel: channel,
                       order: order, meter: meter)
        default:
            mutations.run(order, { [self] () -> (Reply, UInt64) in
                if failed { return (.error(.EIO), 0) }
                store.forgetReplies(session: session, below: oldestUnanswered)
                // A re-sent request: its first reply, once the standby has everything so far.
                if let cached = store.cachedReply(session: session, request: sequence) { return (cached, store.appliedSequence) }
                var operation = operation
                if let identity {
                    // Checked here, on the mutation thread, against the namespace the mutation would change.
                    if let problem = store.withNamespace({ $0.permissionProblem(operation, by: identity) }) { return (.error(problem), 0) }
                    operation = operation.acting(as: identity)
                }
                do {
                    let applied = try store.apply(operation, session: session, requestSequence: sequence)
                    if let record = applied.record, let replication {
                        if case .write(_, _, _, let data) = operation {
                            data.withUnsafeBytes { replication.send(record.withWriteData($0)) }
                        } else {
                            replication.send(record)
                        }
                    }
                    return (applied.reply, applied.record?.sequence ?? 0)
                } catch {
                    fail(error)
                    return (.error(.EIO), 0)
                }
            }, then: { [self] reply, position in
                answerAfterReplication(channel, sequence, store.withAllocatedBlocks(reply), position: position, meter)
            })
        }
    }

    /// A lock taken or released. A request that conflicts is answered EAGAIN,
    /// or with `wait` queued in memory (`LockWaiters`) and journaled when a
    /// release lets it in: the journal holds only granted locks, so the
    /// standby's table is the server's, and a client whose waiting request
    /// outlives this server sends it again to the next one.
    private func handleLock(_ operation: Operation, session: UInt64, sequence: UInt64, oldestUnanswered: UInt64,
                            channel: Channel, order: MutationPath.Order, meter: RequestMeter) {
        mutations.run(order, { [self] () -> LockAnswers in
            if failed { return LockAnswers(own: (.error(.EIO), 0)) }
            store.forgetReplies(session: session, below: oldestUnanswered)
            if let cached = store.cachedReply(session: session, request: sequence) { return LockAnswers(own: (cached, store.appliedSequence)) }
            if case .setLock(let ino, let request, let wait) = operation, store.withNamespace({ $0.attributes(of: ino) }) != nil {
                var table = store.withNamespace { $0.locks }
                if table.hasLost(session, ino) { return LockAnswers(own: (.error(.EIO), 0)) }
                if !wait {
                    if table.conflict(ino, with: request) != nil { return LockAnswers(own: (.error(.EAGAIN), 0)) }
                } else if let id = waitingLocks.first(where: { $0.value.session == session && $0.value.sequence == sequence })?.key {
                    // Sent again on a new connection to this server: answer it there.
                    waitingLocks[id]?.channel = channel
                    return LockAnswers(own: nil)
                } else {
                    let id = nextWaiterID
                    nextWaiterID += 1
                    switch lockWaiters.request(LockWaiters.Waiter(id: id, inode: ino, request: request), in: &table) {
                    case .granted: break
                    case .deadlock: return LockAnswers(own: (.error(.EDEADLK), 0))
                    case .waits:
                        waitingLocks[id] = WaitingLock(session: session, sequence: sequence, channel: channel, meter: meter)
                        return LockAnswers(own: nil)
                    }
                }
            }
            var cancelled: [(channel: Channel, sequence: UInt64, reply: Reply, position: UInt64, meter: RequestMeter)] = []
            if case .releaseLocks(let ino, let owner, let family) = operation {
                // The owner closed the file: a wait of its own still queued (an F_SETLKW its
                // process was killed in) must not be granted later to nobody.
                cancelled = cancelWaits(ino, owner: owner, family: family).map { ($0.channel, $0.sequence, .error(.EINTR), 0, $0.meter) }
            }
            do {
                var answers = LockAnswers(own: try journal(operation, session: session, sequence: sequence), woken: cancelled)
                answers.woken += try grantWaitingLocks()
                return answers
            } catch {
                fail(error)
                return LockAnswers(own: (.error(.EIO), 0))
            }
        }, then: { [self] answers in
            if let own = answers.own { answerAfterReplication(channel, sequence, own.reply, position: own.position, meter) }
            for woken in answers.woken {
                answerAfterReplication(woken.channel, woken.sequence, woken.reply, position: woken.position, woken.meter)
            }
        })
    }

    /// Takes the waits of `owner` on the file out of the queue (its process
    /// gave up or closed the file); their requests are to be answered EINTR. On the mutation path.
    private func cancelWaits(_ ino: InodeNumber, owner: LockTable.Owner, family: LockTable.Family) -> [WaitingLock] {
        var cancelled: [WaitingLock] = []
        for waiter in lockWaiters.waiting where waiter.inode == ino && waiter.request.owner == owner && waiter.request.family == family {
            _ = lockWaiters.cancel(id: waiter.id)
            if let waiting = waitingLocks.removeValue(forKey: waiter.id) { cancelled.append(waiting) }
        }
        return cancelled
    }

    /// Journals the waiting requests that a release or a downgrade let in, in
    /// the order they came, each as its own client's request.
    private func grantWaitingLocks() throws -> [(channel: Channel, sequence: UInt64, reply: Reply, position: UInt64, meter: RequestMeter)] {
        guard !lockWaiters.waiting.isEmpty else { return [] }
        var table = store.withNamespace { $0.locks }
        var woken: [(channel: Channel, sequence: UInt64, reply: Reply, position: UInt64, meter: RequestMeter)] = []
        for waiter in lockWaiters.grantFree(in: &table) {
            guard let waiting = waitingLocks.removeValue(forKey: waiter.id) else { continue }
            let (reply, position) = try journal(.setLock(waiter.inode, waiter.request, wait: true), session: waiting.session,
                                                sequence: waiting.sequence)
            woken.append((waiting.channel, waiting.sequence, reply, position, waiting.meter))
        }
        return woken
    }

    func sessionConnected(_ session: UInt64, client: String, renews: Bool) {
        leases.withLockedValue { $0.connected(session, client: client, renews: renews, at: Self.now()) }
    }

    func sessionRenewed(_ session: UInt64) {
        leases.withLockedValue { $0.renewed(session, at: Self.now()) }
    }

    func sessionDisconnected(_ session: UInt64) {
        leases.withLockedValue { $0.disconnected(session, at: Self.now()) }
    }

    /// What `baton locks` shows: every lock with its file, client and time.
    /// A listing walks every directory under the namespace's read lock: one
    /// made less than a second ago is answered again, so that a flood of asks
    /// cannot keep mutations waiting.
    func lockListingJSON() -> String {
        lastLockListing.withLockedValue { last in
            if let made = last, NIODeadline.now() - made.at < .seconds(1) { return made.json }
            let leases = leases.withLockedValue { $0 }
            let listing = store.withNamespace { namespace in
                namespace.lockListing(export: exportName, epoch: epoch, leaseMs: Int(lockLease.nanoseconds / 1_000_000)) { session in
                    leases.client(of: session) ?? "session \(session), not connected to this server yet"
                }
            }
            let json = StatusJSON.encode(listing, pretty: false)
            last = (NIODeadline.now(), json)
            return json
        }
    }
    private let lastLockListing = NIOLockedValueBox<(at: NIODeadline, json: String)?>(nil)

    private static func now() -> Instant { Instant(nanoseconds: NIODeadline.now().uptimeNanoseconds) }

    /// Releases the locks of every session unheard for the lease
    /// (`LockLeases`): a client that comes back in time (after a failover, a
    /// network blip) keeps them; a dead, stopped or cut-off one does not keep
    /// others waiting forever, and is told when it comes back (`LockTable.lost`).
    private func expireLockLeases() {
        let holders = store.withNamespace { namespace in Set(namespace.locks.locks.values.joined().map(\.owner.session)) }
        let expired = leases.withLockedValue { $0.expired(holders: holders, at: Self.now()) }
        for (session, client) in expired {
            mutations.runOnMutationThread { [self] in
                guard !failed else { return }
                let released = store.withNamespace { namespace in
                    let held = namespace.locks.locks.mapValues { $0.filter { $0.owner.session == session } }.filter { !$0.value.isEmpty }
                    let names = namespace.paths(of: Set(held.keys))
                    return held.sorted { $0.key < $1.key }.flatMap { inode, locks in
                        locks.map { "\(names[inode] ?? "inode \(inode)"): \($0.kind) \($0.family) \($0.range) pid \($0.pid)" }
                    }
                }
                for waiter in lockWaiters.cancelSession(session) { waitingLocks[waiter.id] = nil }
                let woken: [(channel: Channel, sequence: UInt64, reply: Reply, position: UInt64, meter: RequestMeter)]
                do {
                    _ = try journal(.expireSessionLocks(session: session), session: 0, sequence: 0)
                    woken = try grantWaitingLocks()
                } catch {
                    return fail(error)
                }
                logger.warning("a client's locks released: its session was not heard from for the lock lease", metadata: [
                    "export": "\(exportName)", "session": "\(session)", "client": "\(client)", "lease": "\(lockLease)",
                    "locks": "\(released.prefix(10).joined(separator: "; "))\(released.count > 10 ? "; and \(released.count - 10) more" : "")",
                    "action": "none if the client is gone; if it comes back, its next lock request or write on those files answers EIO until it closes them",
                ])
                for answer in woken { answerAfterReplication(answer.channel, answer.sequence, answer.reply, position: answer.position, answer.meter) }
            }
        }
    }

    /// Applies and replicates one mutation (not a write), on the mutation path.
    private func journal(_ operation: Operation, session: UInt64, sequence: UInt64) throws -> (reply: Reply, position: UInt64) {
        let applied = try store.apply(operation, session: session, requestSequence: sequence)
        if let record = applied.record, let replication { replication.send(record) }
        return (applied.reply, applied.record?.sequence ?? 0)
    }

    /// A write whose data is still in the receive buffer.
    func handleWrite(_ ino: InodeNumber, handle: UInt64, offset: UInt64, data: ByteBuffer, session: UInt64, sequence: UInt64,
                     oldestUnanswered: UInt64, channel: Channel, order: MutationPath.Order) {
        let meter = metrics.started("write")
        if metrics.enabled { metrics.bytesWritten.increment(by: data.readableBytes) }
        mutations.run(order, { [self] () -> (Reply, UInt64) in
            if failed { return (.error(.EIO), 0) }
            store.forgetReplies(session: session, below: oldestUnanswered)
            if let cached = store.cachedReply(session: session, request: sequence) { return (cached, store.appliedSequence) }
            // A client that lost its locks on the file to its lease is told, not let write as if it held them.
            if store.withNamespace({ $0.locks.hasLost(session, ino) }) { return (.error(.EIO), 0) }
            do {
                let applied = try data.withUnsafeReadableBytes { bytes in
                    let applied = try store.applyWrite(ino, handle: handle, offset: offset, data: bytes, session: session,
                                                       requestSequence: sequence)
                    if let record = applied.record, let replication { replication.send(record.withWriteData(bytes)) }
                    return applied
                }
                return (applied.reply, applied.record?.sequence ?? 0)
            } catch {
                fail(error)
                return (.error(.EIO), 0)
            }
        }, then: { [self] reply, position in
            answerAfterReplication(channel, sequence, reply, position: position, meter)
        })
    }

    /// Answers a mutation once the standby has it (sync mode), at once otherwise.
    private func answerAfterReplication(_ channel: Channel, _ sequence: UInt64, _ reply: Reply, position: UInt64,
                                        _ meter: RequestMeter) {
        if let replication, position > 0 {
            replication.whenReplicated(position) { self.respond(channel, sequence, reply, meter) }
        } else {
            respond(channel, sequence, reply, meter)
        }
    }

    private func respond(_ channel: Channel, _ sequence: UInt64, _ reply: Reply, _ meter: RequestMeter) {
        channel.writeAndFlush(frame(sequence: sequence, reply, allocator: channel.allocator), promise: nil)
        meter.answered()
    }

    /// A monitor's challenge, answered on the monitor's thread, then
    /// heartbeats on that connection at a fixed rate. The answer proves that
    /// the process runs, that it holds the secret and the epoch, and that it
    /// makes progress: every client thread had a turn, and the mutation lock
    /// is free or its holder has held it, within `stallLimit` (a slow disk or
    /// a busy thread is not a failure). A server wedged longer than that
    /// answers when it comes free, too late for the monitor's deadline.
    func probe(key: [UInt8], channel: Channel, startHeartbeats: Bool) {
        guard let authenticator else {
            channel.close(promise: nil)
            return
        }
        answerChallenge(key: key, authenticator: authenticator, channel: channel, checksLeft: Self.maxChallengeChecks)
        guard startHeartbeats else { return }
        let task = channel.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: Self.heartbeatInterval) { [store, replication] _ in
            let alone = replication?.status.alone ?? false
            channel.writeAndFlush(Message.heartbeat(epoch: store.epoch, sequence: store.appliedSequence, alone: alone)
                .frame(allocator: channel.allocator), promise: nil)
        }
        channel.closeFuture.whenComplete { _ in task.cancel() }
    }

    /// How often a challenge that found the mutation path wedged looks again
    /// (every 10 ms, for up to 2 s; the monitor has given up on it by then).
    static let challengeCheckInterval = TimeAmount.milliseconds(10)
    static let maxChallengeChecks = 200

    private func answerChallenge(key: [UInt8], authenticator: MessageAuthenticator, channel: Channel, checksLeft: Int) {
        let mutationsProgress: Bool
        if mutations.tryLock() {
            mutations.unlock()
            mutationsProgress = true
        } else {
            mutationsProgress = (mutations.heldFor ?? .zero) < stallLimit
        }
        let now = NIODeadline.now().uptimeNanoseconds
        let clientThreadsProgress = networkTurns.allSatisfy { turn in
            now &- turn.withLockedValue { $0 } < UInt64(stallLimit.nanoseconds)
        }
        guard mutationsProgress && clientThreadsProgress else {
            guard checksLeft > 0 else { return }
            channel.eventLoop.scheduleTask(in: Self.challengeCheckInterval) { [self] in
                answerChallenge(key: key, authenticator: authenticator, channel: channel, checksLeft: checksLeft - 1)
            }
            return
        }
        // The journal position as of the last committed record: a mutation
        // in flight changes it under the namespace's lock, never half-way.
        let (epoch, position) = (store.epoch, store.appliedSequence)
        let response = ChallengeMAC.response(authenticator, key: key, epoch: epoch, journalSequence: position)
        channel.writeAndFlush(Message.probeAnswer(key: key, epoch: epoch, sequence: position, response: response)
            .frame(allocator: channel.allocator), promise: nil)
    }

    /// A read reply framed with the data read straight into the frame.
    /// A read's answer before its data: length, message tag, sequence, epoch, reply tag, data length.
    static let readReplyHeaderBytes = 4 + 1 + 8 + 8 + 1 + 4

    private func read(_ ino: InodeNumber, offset: UInt64, size: UInt32, sequence: UInt64, allocator: ByteBufferAllocator) -> ByteBuffer {
        let count = Int(min(size, UInt32(WireLimits.maxDataBytes)))
        var buffer = allocator.buffer(capacity: 64 + count)
        buffer.writeInteger(UInt32(0), endianness: .little)
        buffer.writeInteger(Message.Tag.reply.rawValue, endianness: .little)
        buffer.writeInteger(sequence, endianness: .little)
        buffer.writeInteger(store.epoch, endianness: .little)
        buffer.writeInteger(Reply.Tag.bytes.rawValue, endianness: .little)
        let lengthIndex = buffer.writerIndex
        buffer.writeInteger(UInt32(0), endianness: .little)
        do {
            var result: Result<Int, Errno> = .success(0)
            try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
                result = try store.read(ino, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]))
                return (try? result.get()) ?? 0
            }
            switch result {
            case .success(let got):
                buffer.setInteger(UInt32(got), at: lengthIndex, endianness: .little)
                buffer.setInteger(UInt32(buffer.readableBytes - 4), at: 0, endianness: .little)
                return buffer
            case .failure(let errno):
                return frame(sequence: sequence, .error(errno), allocator: allocator)
            }
        } catch {
            logger.error("read of file data failed", metadata: ["export": "\(exportName)", "inode": "\(ino)", "error": "\(error)"])
            return frame(sequence: sequence, .error(.EIO), allocator: allocator)
        }
    }

    private func frame(sequence: UInt64, _ reply: Reply, allocator: ByteBufferAllocator) -> ByteBuffer {
        Message.reply(sequence: sequence, epoch: store.epoch, reply).frame(allocator: allocator)
    }

    /// The journal can no longer be written: answer nothing more, stop, and
    /// let a restart replay what the disk holds.
    private func fail(_ error: any Error) {
        failed = true
        logger.critical("export server stops: the journal cannot be written", metadata: [
            "export": "\(exportName)", "directory": "\(store.directory)", "error": "\(error)",
            "action": "free space or fix the disk under the data directory, then restart the server",
        ])
        for channel in otherPathListeners { _ = channel.close() }
        _ = listener?.close()
    }

    func refuseLog(_ message: String, peer: String, detail: String) {
        logger.warning("\(message)", metadata: ["export": "\(exportName)", "peer": "\(peer)", "detail": "\(detail)"])
    }
}

/// One client connection: the hello handshake, then requests. Anything
/// malformed ends this connection, never the server.
final class ClientConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = InboundRequest
    typealias OutboundOut = ByteBuffer

    private let server: ExportServer
    private var session: UInt64?
    private var welcomed = false
    private var heartbeating = false
    /// This connection's mutations keep their order (see `MutationPath`).
    private let order = MutationPath.Order()
    /// Requests read while the client did not read its answers: handled once
    /// it does. Reading stops meanwhile, so these are at most one read's worth.
    private var held: [InboundRequest] = []
    private var helloDeadline: Scheduled<Void>?
    /// A client listener's connection takes requests; a monitor listener's, probes.
    private let purpose: ExportServer.Purpose
    /// The client's certificate, once TLS has checked it (nil on plain TCP).
    private var peer: PeerIdentity?
    /// Its certificate is on the export's read-only list: changes are answered EROFS.
    private var readOnly = false
    /// Which of its callers the server squashes (decided at hello, from its certificate's name).
    private var squashScope = Squash.Scope.none
    /// An admin's certificate: it may ask (`locksAsked`), not change or read files.
    private var asksOnly: Bool { peer?.role == .admin }
    private var admission: ConnectionAdmission { purpose == .clients ? server.admission : server.monitorAdmission }

    init(server: ExportServer, purpose: ExportServer.Purpose) {
        self.server = server
        self.purpose = purpose
    }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        let admission = admission
        admission.accepted(channel)
        helloDeadline = context.eventLoop.scheduleTask(in: admission.limits.helloTimeout) {
            admission.logHit("hello", "a connection said no hello in time: closing it", [
                "timeout": "\(admission.limits.helloTimeout)", "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "?")",
            ])
            channel.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        helloDeadline?.cancel()
        if welcomed, purpose == .clients, let session { server.sessionDisconnected(session) }
        admission.closed(context.channel, welcomed: welcomed)
        context.fireChannelInactive()
    }

    /// Backpressure: a client that does not read its answers is not read
    /// from until they drain, so its unanswered bytes stay bounded.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        context.channel.setOption(.autoRead, value: writable).whenComplete { _ in }
        if !writable {
            server.admission.logHit("unread", "a client does not read its answers: not reading its requests until it does", [
                "peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")", "queuedBytesLimit": "\(server.admission.limits.maxUnsentBytes)",
            ])
        }
        while context.channel.isWritable, !held.isEmpty { handle(context, held.removeFirst()) }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let request = unwrapInboundIn(data)
        guard context.channel.isWritable, held.isEmpty else { return held.append(request) }
        handle(context, request)
    }

    private func handle(_ context: ChannelHandlerContext, _ request: InboundRequest) {
        let message: Message
        switch request {
        case .message(let decoded):
            message = decoded
        case .write(let sequence, let oldest, let ino, let handle, let offset, let bytes):
            guard purpose == .clients else { return refuse(context, .malformed, "a request on the monitor port; clients connect to the export's port") }
            guard let session else { return refuse(context, .malformed, "request before hello") }
            if asksOnly { return refuseAdminRequest(context) }
            if readOnly { return answerReadOnly(context, sequence) }
            server.handleWrite(ino, handle: handle, offset: offset, data: bytes, session: session, sequence: sequence,
                               oldestUnanswered: oldest, channel: context.channel, order: order)
            return
        }
        switch message {
        case .hello(let export, let session, let version):
            guard Message.supportedVersions.contains(version) else {
                refuse(context, .badVersion, "protocol version \(version) is not supported (this server speaks \(Message.protocolVersion))")
                return
            }
            guard export == server.exportName else {
                refuse(context, .unknownExport, "this server serves export '\(server.exportName)', not '\(export)'")
                return
            }
            if purpose == .clients, let peer, peer.role != .admin {
                switch server.access.grant(peer.name) {
                case .readWrite: readOnly = false
                case .readOnly: readOnly = true
                case .refused(let why):
                    return refuse(context, .notAllowed, "export '\(server.exportName)' does not let this client mount: \(why)")
                }
            }
            if purpose == .clients {
                squashScope = server.squash.scope(forClient: peer?.name)
                if squashScope != .none, version < Message.callerVersion {
                    return refuse(context, .badVersion, "export '\(server.exportName)' squashes \(squashScope == .all ? "every caller" : "root") "
                        + "and needs clients that name their caller (protocol \(Message.callerVersion), baton 0.22 or later); "
                        + "this client speaks protocol \(version): upgrade it")
                }
            }
            helloDeadline?.cancel()
            guard welcomed || admission.welcome(context.channel) else {
                context.close(promise: nil)
                return
            }
            welcomed = true
            if purpose == .clients, !asksOnly, self.session != session {
                // A second hello on the connection may name another session: the first one's connection ends here.
                if let earlier = self.session { server.sessionDisconnected(earlier) }
                server.sessionConnected(session, client: peer.map { "\($0.name) at \(context.remoteAddress.map { "\($0)" } ?? "?")" }
                                        ?? context.remoteAddress.map { "\($0)" } ?? "?", renews: version >= Message.leaseVersion)
            }
            self.session = session
            context.write(wrapOutboundOut(Message.welcome(epoch: server.epoch).frame(allocator: context.channel.allocator)), promise: nil)
            if version >= 2, purpose == .clients, !server.exportAddresses.isEmpty {
                let addresses = Message.exportAddresses(server.exportAddresses, multipath: server.multipath)
                context.write(wrapOutboundOut(addresses.frame(allocator: context.channel.allocator)), promise: nil)
            }
            if version >= Message.leaseVersion, purpose == .clients {
                let lease = Message.lockLease(milliseconds: UInt32(clamping: server.lockLease.nanoseconds / 1_000_000))
                context.write(wrapOutboundOut(lease.frame(allocator: context.channel.allocator)), promise: nil)
            }
            context.flush()
            if purpose == .clients { server.welcomed() }
        case .request(let sequence, let oldest, let operation, let caller):
            guard purpose == .clients else { return refuse(context, .malformed, "a request on the monitor port; clients connect to the export's port") }
            guard let session else {
                refuse(context, .malformed, "request before hello")
                return
            }
            if asksOnly { return refuseAdminRequest(context) }
            if readOnly, operation.modifiesExport { return answerReadOnly(context, sequence) }
            if case .expireSessionLocks = operation { return answer(context, sequence, .EPERM) }
            server.handle(operation.inSession(session), session: session, sequence: sequence, oldestUnanswered: oldest,
                          squashedTo: server.squash.squashed(caller, scope: squashScope), channel: context.channel, order: order)
        case .locksAsked:
            guard purpose == .clients, welcomed else { return refuse(context, .malformed, "a lock listing asked before hello") }
            // On plain TCP anyone who can mount may list (as anyone may read); with TLS, admins only.
            guard peer == nil || asksOnly else {
                return refuse(context, .notAllowed, "only an admin certificate may list the locks of export '\(server.exportName)'")
            }
            let answer = Message.locksAnswer(json: server.lockListingJSON())
            context.writeAndFlush(wrapOutboundOut(answer.frame(allocator: context.channel.allocator)), promise: nil)
        case .leaseRenewal:
            guard purpose == .clients, welcomed, let session else { return refuse(context, .malformed, "a lease renewal before hello") }
            server.sessionRenewed(session)
        case .probe(let key):
            guard purpose == .monitor else { return refuse(context, .malformed, "a probe on the clients' port; monitors connect to the monitor port") }
            guard session != nil else { return refuse(context, .malformed, "probe before hello") }
            server.probe(key: key, channel: context.channel, startHeartbeats: !heartbeating)
            heartbeating = true
        default:
            refuse(context, .malformed, "unexpected message from a client")
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let verified = event as? PeerVerified { peer = verified.identity }
        context.fireUserInboundEventTriggered(event)
    }

    private func refuseAdminRequest(_ context: ChannelHandlerContext) {
        refuse(context, .notAllowed, "an admin certificate may list locks on export '\(server.exportName)', not use its files; mount with a client certificate")
    }

    /// A change asked by a client of the export's read-only list: refused before it reaches the journal.
    private func answerReadOnly(_ context: ChannelHandlerContext, _ sequence: UInt64) { answer(context, sequence, .EROFS) }

    /// Refused before it reaches the journal.
    private func answer(_ context: ChannelHandlerContext, _ sequence: UInt64, _ errno: Errno) {
        let reply = Message.reply(sequence: sequence, epoch: server.epoch, .error(errno))
        context.writeAndFlush(wrapOutboundOut(reply.frame(allocator: context.channel.allocator)), promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard TLSFailure.isTLS(error) else { return refuse(context, .malformed, "\(error)") }
        // Nothing can be said over a session that failed; one line per 10 s, since anyone can start handshakes.
        admission.logHit("tls", "TLS session failed: closing it", [
            "peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")", "detail": "\(TLSFailure.describe(error))",
        ])
        context.close(promise: nil)
    }

    private func refuse(_ context: ChannelHandlerContext, _ refusal: Refusal, _ detail: String) {
        server.refuseLog("client refused", peer: "\(context.remoteAddress.map { "\($0)" } ?? "?")", detail: detail)
        let channel = context.channel
        channel.writeAndFlush(Message.refused(refusal, detail: detail).frame(allocator: channel.allocator)).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

import BatonCore
import BatonRuntime
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Where an export server sends its journal: the standby replica in the peer
/// node's agent (DESIGN.md §2 "Standby replica").
public struct StandbyConfiguration: Sendable {
    public var agent: NodeAddress
    /// This node's name, to authenticate with.
    public var node: String
    public var secret: [UInt8]
    /// sync: a mutation is answered only after the standby has it (DESIGN.md §4.1).
    public var synchronous: Bool
    /// A reply waits this long for the standby at most; then the server
    /// answers without it (a standby whose disk or agent hangs, yet whose
    /// node still answers heartbeats, so that no diagnosis calls it gone).
    public var waitLimit: TimeAmount
    /// An MPTCP connection (the nodes have two network paths, see `Multipath`).
    public var multipath = false
    /// The standby's agent on its other paths: a connection that cannot be
    /// made to `agent` (its path down) is tried there next.
    public var otherAddresses: [NodeAddress] = []
    /// Set for a server that its node's agent started: at the wait limit the
    /// server asks it (`waited`, the oldest waiting record) instead of
    /// answering alone at once, and answers alone only on its consent
    /// (`ExportServer.continueWithoutStandby`). Asked again at every wait
    /// check until then. An agent that does not run (stopped, hung) cannot
    /// consent: its peer may have taken the export over without fencing
    /// this server, and what it answered alone would be lost.
    public var askAgentToAnswerAlone: (@Sendable (_ waited: Duration, _ sequence: UInt64) -> Void)?

    public static let defaultWaitLimit: TimeAmount = .milliseconds(Int64(ClusterTimings.defaults.standbyWaitLimitMilliseconds))

    public init(agent: NodeAddress, node: String, secret: [UInt8], synchronous: Bool, waitLimit: TimeAmount = Self.defaultWaitLimit) {
        self.agent = agent
        self.node = node
        self.secret = secret
        self.synchronous = synchronous
        self.waitLimit = waitLimit
    }
}

/// The export server's side of replication. Connects to the standby,
/// authenticates, learns its position, sends a copy (partial or full) when it
/// is not exactly in step, then streams every record. In sync mode, replies wait for
/// the standby's acknowledgement; with no standby they wait (a fenced or cut
/// off server acknowledges nothing) until the agent says the peer is gone and
/// the server may go on alone.
final class ReplicationLink: @unchecked Sendable {
    private let configuration: StandbyConfiguration
    private let store: ExportStore
    private let mutationLock: MutationPath
    /// The node's certificate: the standby's agent takes node certificates only.
    private let tls: TLSIdentity?
    private let logger: Logger
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    private struct State {
        /// The one connection to the standby, from connect until it closes:
        /// never two at a time, so no two copies race.
        var channel: Channel?
        /// The standby has every record up to `acknowledged` and receives the stream.
        var inStep = false
        /// Records that arrive while a copy is sent, to send right after it.
        var queued: [JournalRecord]?
        var queuedBytes = 0
        var acknowledged: UInt64 = 0
        var synced: UInt64 = 0
        /// Replies waiting for the standby, oldest first.
        var waiters: [(sequence: UInt64, durable: Bool, since: NIODeadline, run: @Sendable () -> Void)] = []
        /// The standby said it runs a swap against this server (`Refusal.swapUnderWay`), since then.
        var swapUnderWaySince: NIODeadline?
        /// The agent was asked whether replies may stop waiting (`askAgentToAnswerAlone`) and has not answered.
        var agentAsked = false
        var alone = false
        /// Alone, with a standby in step again: alone until it has
        /// acknowledged this record (see `finish`).
        var aloneUntil: UInt64?
        var drainRounds = 0
        /// The last record given to `send`.
        var lastSent: UInt64 = 0
        var stopped = false
        var connecting = false
        /// Which of the standby's addresses the next connection goes to: the
        /// first, or after a failed attempt the next one.
        var addressIndex = 0
        /// Refusals by the standby since it last acknowledged a record, and
        /// no new session before `nextAttempt`: a standby that cannot store
        /// a copy (a full disk) is not sent one again and again at once.
        var refusals = 0
        var nextAttempt = NIODeadline.uptimeNanoseconds(0)
        /// Went alone because the standby did not sync in time, or could not
        /// keep records: replies wait for it again only once it has synced
        /// what it was sent (a hung disk still acknowledges what it applies
        /// in memory), asked once per round (`syncProofAsked`).
        var syncProofNeeded = false
        var syncProofAsked: UInt64?
        /// Waits for the standby to say which of its files changed.
        var filesQuery: EventLoopPromise<[InodeNumber]?>?
        /// Stopped answering alone: once the standby acknowledges this
        /// record, it is no longer outdated and is told `repliesWait`.
        var caughtUp: (sequence: UInt64, channel: Channel)?

        /// Replies wait for the standby from now on; returns the last record
        /// that may have been answered without it.
        mutating func stopAnsweringAlone() -> UInt64 {
            alone = false
            aloneUntil = nil
            return lastSent
        }
    }

    private let state = NIOLockedValueBox(State())

    init(configuration: StandbyConfiguration, store: ExportStore, mutationLock: MutationPath, tls: TLSIdentity?, logger: Logger) {
        self.configuration = configuration
        self.store = store
        self.mutationLock = mutationLock
        self.tls = tls
        self.logger = logger
    }

    func start() {
        connect()
        watchdog = group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in connect() }
        if configuration.multipath {
            subflowCheck = group.next().scheduleRepeatedTask(initialDelay: Multipath.subflowCheckInterval,
                                                             delay: Multipath.subflowCheckInterval) { [self] _ in healSubflows() }
        }
        let limit = configuration.waitLimit
        let every = TimeAmount.nanoseconds(min(limit.nanoseconds / 5, TimeAmount.milliseconds(250).nanoseconds))
        lastWaitCheck.withLockedValue { $0 = .now() }
        waitCheck = group.next().scheduleRepeatedTask(initialDelay: every, delay: every) { [self] _ in
            restartWaitsAfterAGap(checkInterval: every)
            goAloneIfWaitedLongerThan(limit)
        }
    }

    private var subflowCheck: RepeatedTask?
    private let lastSubflowReconnect = NIOLockedValueBox<NIODeadline?>(nil)

    /// A replication connection made while the standby's other path was
    /// down lacks its subflow there (`Multipath.lacksAnnouncedSubflow`): it is
    /// made again, at most every `Multipath.subflowReconnectInterval`, so
    /// that a later fault of its one path does not hold sync replies. The
    /// new session finds the standby in step; replies wait for it meanwhile.
    private func healSubflows() {
        guard let channel = state.withLockedValue({ $0.inStep ? $0.channel : nil }),
              lastSubflowReconnect.withLockedValue({ $0.map { NIODeadline.now() - $0 >= Multipath.subflowReconnectInterval } ?? true })
        else { return }
        Multipath.lacksAnnouncedSubflow(channel).whenSuccess { [self] lacks in
            guard lacks else { return }
            lastSubflowReconnect.withLockedValue { $0 = .now() }
            logger.notice("standby connection has no subflow on the standby's other path: connecting again to gain it", metadata: [
                "export": "\(store.exportName)", "standby": "\(configuration.agent)",
            ])
            channel.close(promise: nil)
        }
    }

    /// A NIC of this node has its link again: a connection that lost its
    /// subflow there (closed with the endpoint its agent withdrew; the
    /// kernel does not make it again) is made again now, over both paths,
    /// rather than at the next subflow check. The new session finds the standby in step.
    func pathRestored() {
        guard let channel = state.withLockedValue({ $0.inStep ? $0.channel : nil }) else { return }
        Multipath.isDownToOneSubflow(channel).whenSuccess { [self] down in
            guard down else { return }
            logger.notice("standby connection is down to one subflow with this node's path back: connecting again to use both", metadata: [
                "export": "\(store.exportName)", "standby": "\(configuration.agent)",
            ])
            channel.close(promise: nil)
        }
    }

    /// A gap between two wait checks longer than this means the process did not run.
    static func runGapLimit(checkInterval: TimeAmount) -> TimeAmount {
        .nanoseconds(max(TimeAmount.seconds(1).nanoseconds, 4 * checkInterval.nanoseconds))
    }

    private let lastWaitCheck = NIOLockedValueBox(NIODeadline.uptimeNanoseconds(0))

    /// A server that did not run for a while (stopped, its node frozen or
    /// starved) must not count that time as waiting for its standby: its
    /// replies would stop waiting the moment it runs again, while the peer
    /// may have taken the export over meanwhile (the seeded simulation found
    /// this, `FailoverWorld` "frozen"). Its waits start again, and its agent
    /// has the full limit to learn of a newer server and fence it.
    private func restartWaitsAfterAGap(checkInterval: TimeAmount) {
        let now = NIODeadline.now()
        let gap = lastWaitCheck.withLockedValue { last -> TimeAmount in
            defer { last = now }
            return now - last
        }
        guard gap > Self.runGapLimit(checkInterval: checkInterval) else { return }
        let waiting = holdWaiters(from: now)
        guard waiting > 0 else { return }
        logger.warning("this server did not run for a while: its replies wait the full limit for the standby again", metadata: [
            "export": "\(store.exportName)", "gap": "\(Duration.nanoseconds(gap.nanoseconds))", "waitingReplies": "\(waiting)",
        ])
    }

    /// Replies waiting for the standby wait from `now` on; returns how many wait.
    @discardableResult
    private func holdWaiters(from now: NIODeadline) -> Int {
        state.withLockedValue { state in
            for index in state.waiters.indices { state.waiters[index].since = now }
            return state.waiters.count
        }
    }

    /// The standby runs a swap against this server: replies must not stop
    /// waiting for it now, or the swap's takeover would lose what they
    /// answered. They wait until the swap ends: the standby takes records
    /// again, or this server is fenced. Asked again within a second.
    fileprivate func swapUnderWay(_ channel: Channel, detail: String) {
        let waiting = holdWaiters(from: .now())
        let first = state.withLockedValue { state -> Bool in
            defer { state.swapUnderWaySince = state.swapUnderWaySince ?? .now() }
            return state.swapUnderWaySince == nil
        }
        if first {
            logger.warning("the standby runs a swap: replies wait for its outcome", metadata: [
                "export": "\(store.exportName)", "standby": "\(configuration.agent)", "waitingReplies": "\(waiting)",
                "detail": "\(detail)",
            ])
        }
        lost(channel, reason: "the standby runs a swap: \(detail)", retryWithin: Self.swapUnderWayRetry)
    }

    /// How soon a session is tried again while the standby runs a swap: well within the wait limit.
    static let swapUnderWayRetry = TimeAmount.milliseconds(500)

    private var watchdog: RepeatedTask?
    private var waitCheck: RepeatedTask?

    /// DESIGN.md §4.1's bound on a standby that stops acknowledging while
    /// its node is heard (a hung disk, a stopped replica): past the limit,
    /// replies stop waiting for it, as when its node is gone.
    private func goAloneIfWaitedLongerThan(_ limit: TimeAmount) {
        let now = NIODeadline.now()
        let oldest = state.withLockedValue { state -> (sequence: UInt64, since: NIODeadline, acknowledged: UInt64, synced: UInt64, firstAsk: Bool)? in
            guard !state.alone, let first = state.waiters.first, now - first.since > limit else {
                state.agentAsked = false
                return nil
            }
            defer { state.agentAsked = true }
            return (first.sequence, first.since, state.acknowledged, state.synced, !state.agentAsked)
        }
        guard let oldest else { return }
        let waited = Duration.nanoseconds((now - oldest.since).nanoseconds)
        let ask = configuration.askAgentToAnswerAlone
        if ask == nil || oldest.firstAsk {
            let limitText = Duration.nanoseconds(configuration.waitLimit.nanoseconds)
            logger.critical(ask == nil ? "the standby has not acknowledged a record for longer than its limit: answering without it"
                                       : "the standby has not acknowledged a record for longer than its limit: asking this node's agent to answer without it",
                            metadata: [
                "export": "\(store.exportName)", "standby": "\(configuration.agent)", "waited": "\(waited)",
                "limit": "\(limitText)", "sequence": "\(oldest.sequence)",
                "standbyHas": "\(oldest.acknowledged)", "standbySynced": "\(oldest.synced)",
                "action": .string("check the standby node's disk and agent ('baton status', its log); it catches up by itself "
                    + "once it syncs again; until then acknowledged writes are on this node only"),
            ])
        }
        state.withLockedValue { $0.syncProofNeeded = true }
        guard let ask else { return goAlone() }
        ask(waited, oldest.sequence)
    }

    func stop() {
        let channel = state.withLockedValue { state -> Channel? in
            state.stopped = true
            return state.channel
        }
        watchdog?.cancel()
        waitCheck?.cancel()
        subflowCheck?.cancel()
        try? channel?.close().wait()
        try? group.syncShutdownGracefully()
    }

    /// Answer without the standby until one is in step again: the agent says
    /// so when the peer is gone, and right after a swap (the old server is
    /// fenced; the old node's replica may take a copy, and clients
    /// should not wait for it). Until then acknowledged writes are on this
    /// node only.
    /// The agent's consent at the wait limit: alone only if the reply to
    /// record `oldestWaiting` still waits (a consent that comes after the
    /// standby caught up again is stale: its replica may watch this server).
    func goAlone(ifOldestWaiting oldestWaiting: UInt64) {
        let waits = state.withLockedValue { !$0.alone && $0.waiters.first?.sequence == oldestWaiting }
        guard waits else {
            return logger.info("the agent's consent to answer alone came after the standby caught up: ignored", metadata: [
                "export": "\(store.exportName)", "standby": "\(configuration.agent)", "sequence": "\(oldestWaiting)",
            ])
        }
        goAlone()
    }

    func goAlone() {
        // Before the first reply answered alone: a restart of this node
        // while its peer is down must know that its copy is the newest.
        store.markStandbyOutdated(true)
        let (waiters, channel) = state.withLockedValue { state -> ([@Sendable () -> Void], Channel?) in
            state.alone = true
            state.agentAsked = false
            state.aloneUntil = nil
            state.caughtUp = nil
            defer { state.waiters = [] }
            return (state.waiters.map(\.run), state.channel)
        }
        logger.warning("answering without a standby until one is in step", metadata: [
            "export": "\(store.exportName)", "standby": "\(configuration.agent)",
        ])
        // A standby connected now may watch this server: it must not, while
        // replies do not wait for it. Its next session ends in `repliesWait`.
        channel?.close(promise: nil)
        for run in waiters { run() }
    }

    /// The last record given to `send`.
    var lastSent: UInt64 { state.withLockedValue(\.lastSent) }

    /// Waits until the standby has `sequence` (in either mode; its
    /// acknowledgements come in async mode too), polling: a hand-over waits once.
    func waitUntilAcknowledged(_ sequence: UInt64, timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while state.withLockedValue({ $0.acknowledged < sequence }) {
            guard ContinuousClock.now < deadline else { return false }
            Thread.sleep(forTimeInterval: 0.001)
        }
        return true
    }

    var status: (inStep: Bool, acknowledged: UInt64, alone: Bool) {
        state.withLockedValue { ($0.inStep, $0.acknowledged, $0.alone) }
    }

    /// Sends a record; called under the mutation lock, so records go in order.
    func send(_ record: JournalRecord) {
        let (channel, overflow) = state.withLockedValue { state -> (Channel?, Channel?) in
            state.lastSent = record.sequence
            if state.queued != nil {
                state.queued!.append(record)
                state.queuedBytes += record.operation.dataCount + 64
                // Bounded: past it the copy starts over, from a later position.
                return (nil, state.queuedBytes > Self.maxQueuedBytes ? state.channel : nil)
            }
            return (state.inStep ? state.channel : nil, nil)
        }
        channel?.writeAndFlush(Message.replicate(record).frame(allocator: channel!.allocator), promise: nil)
        overflow?.close(promise: nil)
    }

    /// Records kept during a copy, at most.
    static let maxQueuedBytes = 256 << 20

    /// Runs `reply` once the standby has every record up to `sequence`
    /// (sync mode); at once in async mode or alone.
    func whenReplicated(_ sequence: UInt64, _ reply: @escaping @Sendable () -> Void) {
        wait(for: sequence, durable: false, reply)
    }

    /// Runs `reply` once the standby has made everything up to `sequence` durable.
    func whenDurable(_ sequence: UInt64, _ reply: @escaping @Sendable () -> Void) {
        let channel = state.withLockedValue { $0.inStep ? $0.channel : nil }
        channel?.writeAndFlush(Message.replicaSync(sequence: sequence).frame(allocator: channel!.allocator), promise: nil)
        wait(for: sequence, durable: true, reply)
    }

    private func wait(for sequence: UInt64, durable: Bool, _ reply: @escaping @Sendable () -> Void) {
        let now = state.withLockedValue { state -> Bool in
            if state.alone || (!durable && !configuration.synchronous) { return true }
            if (durable ? state.synced : state.acknowledged) >= sequence { return true }
            state.waiters.append((sequence, durable, .now(), reply))
            return false
        }
        if now { reply() }
    }

    /// Records the standby may lag behind when a server that answered alone
    /// starts waiting for it again; and how many times it waits for a
    /// smaller lag before it does so anyway.
    static let drainedLag: UInt64 = 32
    static let maxDrainRounds = 8
    static let maxDrainTime = TimeAmount.seconds(2)
    /// Queued records sent under the mutation lock at the end of a copy, at most (see `finish`).
    static let lastQueueBatch = 64
    static let maxQueueBatches = 16

    fileprivate func acknowledged(_ sequence: UInt64, durable: Bool) {
        let (ready, drained, channel, askSync) = state.withLockedValue {
            state -> ([@Sendable () -> Void], UInt64?, Channel?, UInt64?) in
            state.refusals = 0
            state.swapUnderWaySince = nil
            if durable { state.synced = max(state.synced, sequence) } else { state.acknowledged = max(state.acknowledged, sequence) }
            var drained: UInt64?
            var askSync: UInt64?
            if let until = state.aloneUntil, state.inStep, state.acknowledged >= until, state.syncProofNeeded, state.synced < until {
                if state.syncProofAsked != until {
                    state.syncProofAsked = until
                    askSync = until
                }
            } else if let until = state.aloneUntil, state.inStep, state.acknowledged >= until {
                state.syncProofNeeded = false
                // The standby has what was written while it caught up; what
                // was written meanwhile is the next round, unless it is short.
                // (A standby in step without a copy acknowledges records sent by the server before this one.)
                let lag = state.lastSent > state.acknowledged ? state.lastSent - state.acknowledged : 0
                if lag <= Self.drainedLag || state.drainRounds >= Self.maxDrainRounds {
                    drained = state.stopAnsweringAlone()
                } else {
                    state.aloneUntil = state.lastSent
                    state.drainRounds += 1
                }
            }
            if let drained, let channel = state.channel { state.caughtUp = (drained, channel) }
            let (acked, synced) = (state.acknowledged, state.synced)
            let ready = state.waiters.filter { $0.sequence <= ($0.durable ? synced : acked) }
            state.waiters.removeAll { $0.sequence <= ($0.durable ? synced : acked) }
            return (ready.map(\.run), drained, state.channel, askSync)
        }
        for run in ready { run() }
        if let askSync, let channel {
            channel.writeAndFlush(Message.replicaSync(sequence: askSync).frame(allocator: channel.allocator), promise: nil)
        }
        if let drained {
            logger.info("standby has every record again: replies wait for it", metadata: [
                "export": "\(store.exportName)", "standby": "\(configuration.agent)", "sequence": "\(drained)",
            ])
        }
        tellIfCaughtUp()
    }

    /// Once the standby has acknowledged every record answered alone: the
    /// data directory stops calling it outdated, and only then is it told
    /// `repliesWait`, after which its monitor may watch (and take over) this
    /// server. In the other order, a crash in between could leave both
    /// nodes' directories claiming the newest copy.
    private func tellIfCaughtUp() {
        let due = state.withLockedValue { state -> (sequence: UInt64, channel: Channel)? in
            guard let caughtUp = state.caughtUp, !state.alone, state.acknowledged >= caughtUp.sequence,
                  state.channel === caughtUp.channel else { return nil }
            state.caughtUp = nil
            return caughtUp
        }
        guard let due else { return }
        store.markStandbyOutdated(false)
        tell(due.channel, repliesWaitThrough: due.sequence)
    }

    /// Tells the standby on `channel` (the session that stopped answering
    /// alone, not a later one) that replies wait for it from now on: it may
    /// watch this server once it has applied `sequence`.
    private func tell(_ channel: Channel, repliesWaitThrough sequence: UInt64) {
        channel.writeAndFlush(Message.repliesWait(through: sequence).frame(allocator: channel.allocator), promise: nil)
    }

    // MARK: Connecting

    /// Connects unless a connection exists or is being made. A repeated
    /// check calls it too, so no lost event can leave the link for good.
    private func connect() {
        let addresses = [configuration.agent] + configuration.otherAddresses
        let address = state.withLockedValue { state -> NodeAddress? in
            guard !state.stopped, !state.connecting, state.channel == nil, NIODeadline.now() >= state.nextAttempt else { return nil }
            state.connecting = true
            return addresses[state.addressIndex % addresses.count]
        }
        guard let address else { return }
        ClientBootstrap(group: group)
            .multipath(configuration.multipath)
            .connectTimeout(.seconds(1))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                // The channel is known before any of its events can arrive.
                state.withLockedValue {
                    $0.channel = channel
                    $0.connecting = false
                }
                return channel.eventLoop.makeCompletedFuture {
                    try tls.addClientHandlers(to: channel.pipeline.syncOperations)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(MessageDecoder()))
                    try channel.pipeline.syncOperations.addHandler(StandbyHandler(link: self))
                }
            }
            .connect(resolving: address, on: group.next())
            .whenComplete { [self] result in
                guard case .failure(let error) = result else {
                    // The first address again next time: it is the path the cluster prefers.
                    state.withLockedValue { $0.addressIndex = 0 }
                    return
                }
                logger.debug("standby not reachable", metadata: ["export": "\(store.exportName)", "address": "\(address)", "error": "\(error)"])
                state.withLockedValue { state in
                    state.connecting = false
                    state.addressIndex += 1
                    if state.channel?.isActive == false { state.channel = nil }
                }
                retry()
            }
    }

    private func retry(after delay: TimeAmount = .milliseconds(200)) {
        group.next().scheduleTask(in: delay) { self.connect() }
    }

    fileprivate func challenged(_ channel: Channel, nonce: [UInt8]) {
        let proof = AgentAuthentication.proof(.hmacSHA256(secret: configuration.secret), nonce: nonce, node: configuration.node)
        channel.write(Message.authenticate(node: configuration.node, proof: proof).frame(allocator: channel.allocator), promise: nil)
        channel.writeAndFlush(Message.replicaHello(export: store.exportName, epoch: store.epoch).frame(allocator: channel.allocator),
                              promise: nil)
    }

    /// The standby said where it is: bring it in step, on a thread of its
    /// own because a copy waits on the network. Both journals' epochs give
    /// the last record D they share (log matching). The standby exactly at
    /// this server's position needs nothing. Otherwise it gets a fuzzy copy:
    /// the namespace at position N (taken under the mutation lock, briefly),
    /// then data files as they are while mutations go on, then every record
    /// after N, with its data. Replaying those over the copied files
    /// converges on the server's state, as a redo log over a fuzzy backup
    /// does; clients are not held up while the files are copied, nor the
    /// monitor's challenges. The copy is partial when both sides can tell
    /// which files their records after D changed: the standby keeps every
    /// other file (it is the same on both nodes) and drops its records after
    /// D (a fenced server's, never acknowledged). Otherwise it is full.
    fileprivate func positioned(_ channel: Channel, standby: JournalHistory) {
        Thread.detachNewThread { [self] in
            do {
                let (inStep, divergence) = mutationLock.withLock { () -> (Bool, UInt64?) in
                    let divergence = store.journalHistory.divergencePoint(with: standby)
                    guard divergence == standby.last, divergence == store.appliedSequence else { return (false, divergence) }
                    startQueueing()
                    return (true, divergence)
                }
                if inStep { return finish(channel, position: standby.last, copy: nil) }
                let standbyFiles = try divergence.flatMap { try askFilesChanged(channel, after: $0) }
                let copy = mutationLock.withLock { () -> Copy in
                    startQueueing()
                    var copy = Copy(position: store.appliedSequence, checkpoint: store.withNamespace { $0.checkpoint() },
                                    files: store.withNamespace { $0.regularFiles }, partial: nil,
                                    why: "the journals share no record")
                    guard let divergence else { return copy }
                    guard let standbyFiles else {
                        copy.why = "the standby cannot tell which of its files changed after record \(divergence)"
                        return copy
                    }
                    guard let touched = store.filesTouched(after: divergence) else {
                        copy.why = "this journal no longer reaches back to record \(divergence + 1)"
                        return copy
                    }
                    let changed = touched.union(standbyFiles)
                    copy.files = copy.files.filter { changed.contains($0.0) }
                    copy.partial = divergence
                    copy.why = "both journals reach back to record \(divergence), the last they share"
                    return copy
                }
                logger.info("standby catching up: \(copy.kind) copy", metadata: [
                    "export": "\(store.exportName)", "standby": "\(configuration.agent)", "files": "\(copy.files.count)",
                    "standbySequence": "\(standby.last)", "serverSequence": "\(copy.position)",
                    "sharedUpTo": "\(divergence.map(String.init) ?? "none")",
                    "droppedRecords": "\(divergence.map { String(standby.last - min(standby.last, $0)) } ?? "all")", "why": "\(copy.why)",
                ])
                try send(copy, to: channel)
                finish(channel, position: copy.position, copy: copy)
            } catch {
                state.withLockedValue { $0.queued = nil }
                logger.warning("copy to the standby failed; retrying", metadata: [
                    "export": "\(store.exportName)", "error": "\(error)",
                ])
                channel.close(promise: nil)
            }
        }
    }

    /// What a catch-up sends: the namespace at `position` and these files;
    /// `partial` is the last record both journals share, nil for a full copy.
    private struct Copy {
        var position: UInt64
        var checkpoint: [UInt8]
        var files: [(InodeNumber, UInt64)]
        var partial: UInt64?
        /// Why this kind, for the log.
        var why: String

        var kind: String { partial == nil ? "full" : "partial" }
    }

    /// Records from here on go to the queue, to follow the copy. Called under the mutation lock.
    private func startQueueing() {
        state.withLockedValue { state in
            state.queued = []
            state.queuedBytes = 0
        }
    }

    /// Asks the standby which of its files its records after `sequence` changed.
    private func askFilesChanged(_ channel: Channel, after sequence: UInt64) throws -> Set<InodeNumber>? {
        let promise = channel.eventLoop.makePromise(of: [InodeNumber]?.self)
        state.withLockedValue { $0.filesQuery = promise }
        let timeout = channel.eventLoop.scheduleTask(in: .seconds(30)) { [self] in
            takeFilesQuery()?.fail(ReplicationError.refused("the standby did not say which files changed"))
        }
        defer { timeout.cancel() }
        channel.writeAndFlush(Message.catchUp(from: sequence).frame(allocator: channel.allocator), promise: nil)
        return try promise.futureResult.wait().map(Set.init)
    }

    /// The pending question, taken so that it is answered once.
    private func takeFilesQuery() -> EventLoopPromise<[InodeNumber]?>? {
        state.withLockedValue { state in
            defer { state.filesQuery = nil }
            return state.filesQuery
        }
    }

    fileprivate func filesChanged(_ inodes: [InodeNumber]?) {
        takeFilesQuery()?.succeed(inodes)
    }

    /// The copy is sent (or none was needed): the end of it, then the records queued meanwhile, then the stream.
    private func finish(_ channel: Channel, position: UInt64, copy: Copy?) {
        // The records queued during the copy go out while mutations go on
        // (framing tens of MiB under the mutation lock held every client up);
        // the last few go under the lock, with the switch to the stream.
        var endSent = false
        for _ in 0..<Self.maxQueueBatches {
            let batch = state.withLockedValue { state -> [JournalRecord]? in
                guard state.channel === channel, let queued = state.queued, queued.count > Self.lastQueueBatch else { return nil }
                state.queued = []
                state.queuedBytes = 0
                return queued
            }
            guard let batch else { break }
            if !endSent { channel.write(Message.snapshotEnd(sequence: position).frame(allocator: channel.allocator), promise: nil) }
            endSent = true
            for record in batch { channel.write(Message.replicate(record).frame(allocator: channel.allocator), promise: nil) }
            channel.flush()
        }
        let stillCurrent = mutationLock.withLock { () -> Bool in
            let (queued, repliesWait, durableWait) = state.withLockedValue { state -> ([JournalRecord]?, UInt64?, UInt64?) in
                defer { state.queued = nil }
                guard state.channel === channel else { return (nil, nil, nil) }
                state.inStep = true
                // An fsync answered while the standby caught up asked it for nothing
                // (`whenDurable` asks a standby in step only): ask now, or it waits
                // for the next fsync of any client, which may never come.
                let durableWait = state.waiters.filter(\.durable).map(\.sequence).max()
                if state.alone {
                    // Answering alone (after a swap, or with the peer gone):
                    // go on until the standby has applied the records queued
                    // during the copy too, so that clients do not wait for it
                    // (a write answered next would wait for all of them).
                    state.aloneUntil = max(position, state.lastSent)
                    state.drainRounds = 0
                    state.syncProofAsked = nil  // a new session is asked again
                }
                // Not alone: every record is sent by now, and the next ones wait for the standby.
                return (state.queued, state.alone ? nil : max(position, state.lastSent), durableWait)
            }
            guard let queued else { return false }
            if !endSent { channel.write(Message.snapshotEnd(sequence: position).frame(allocator: channel.allocator), promise: nil) }
            for record in queued { channel.write(Message.replicate(record).frame(allocator: channel.allocator), promise: nil) }
            // After the records it covers, on the same stream.
            if let durableWait { channel.write(Message.replicaSync(sequence: durableWait).frame(allocator: channel.allocator), promise: nil) }
            if let repliesWait {
                // Its monitor may watch once it has applied `repliesWait`: a
                // marker left from answering alone before must go first.
                store.markStandbyOutdated(false)
                channel.write(Message.repliesWait(through: repliesWait).frame(allocator: channel.allocator), promise: nil)
            }
            channel.flush()
            return true
        }
        guard stillCurrent else { return }
        // A standby that applies records slower than they come: wait for it anyway after a while.
        group.next().scheduleTask(in: Self.maxDrainTime) { [self] in
            let late = state.withLockedValue { state -> UInt64? in
                guard state.channel === channel, state.aloneUntil != nil, !state.syncProofNeeded else { return nil }
                let late = state.stopAnsweringAlone()
                state.caughtUp = (late, channel)
                return late
            }
            if late != nil {
                tellIfCaughtUp()
                logger.warning("standby still behind after the catch-up: replies wait for it from now on", metadata: [
                    "export": "\(store.exportName)", "standby": "\(configuration.agent)",
                ])
            }
        }
        logger.info("standby in step", metadata: [
            "export": "\(store.exportName)", "standby": "\(configuration.agent)", "sequence": "\(position)",
            "copy": "\(copy?.kind ?? "none")",
        ])
    }

    private func send(_ copy: Copy, to channel: Channel) throws {
        let started = ContinuousClock.now
        var sent = 0
        func send(_ message: Message) throws {
            // Waiting on each piece bounds the memory a large copy takes.
            try channel.writeAndFlush(message.frame(allocator: channel.allocator)).wait()
        }
        let expected = copy.files.reduce(UInt64(copy.checkpoint.count)) { $0 + $1.1 }
        try send(.snapshotBegin(partial: copy.partial != nil, bytes: expected))
        for start in stride(from: 0, to: copy.checkpoint.count, by: WireLimits.maxDataBytes) {
            let piece = Array(copy.checkpoint[start..<min(start + WireLimits.maxDataBytes, copy.checkpoint.count)])
            try send(.snapshotData(inode: Message.snapshotCheckpointInode, offset: UInt64(start), data: piece))
        }
        var buffer = [UInt8](repeating: 0, count: WireLimits.maxDataBytes)
        for (ino, size) in copy.files {
            // Even when empty: a partial copy replaces exactly the files it holds.
            try send(.snapshotData(inode: ino, offset: 0, data: []))
            var offset: UInt64 = 0
            while offset < size {
                let count = Int(min(UInt64(buffer.count), size - offset))
                // A file removed since the namespace was taken reads as gone: its removal is among the records that follow.
                guard case .success(let got)? = try? buffer.withUnsafeMutableBytes({
                    try store.read(ino, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<count]))
                }), got > 0 else { break }
                try send(.snapshotData(inode: ino, offset: offset, data: Array(buffer[0..<got])))
                offset += UInt64(got)
                sent += got
            }
        }
        logger.info("copy sent to the standby", metadata: [
            "export": "\(store.exportName)", "kind": "\(copy.kind)",
            "files": "\(copy.files.count)", "bytes": "\(sent)", "duration": "\(ContinuousClock.now - started)",
        ])
    }

    /// The standby says it cannot keep records (its disk failed): replies do
    /// not wait for it any more, so a failed standby costs writes one round
    /// trip, not a freeze. It is reachable and knows it is behind: it cannot
    /// take over meanwhile (the session ends, and it watches again only after
    /// `repliesWait`). Its next session catches it up.
    fileprivate func standbyFailed(_ channel: Channel, detail: String) {
        lost(channel, reason: "the standby cannot keep records: \(detail)", refused: true)
        guard !state.withLockedValue(\.alone) else { return }
        logger.critical("the standby failed: answering without it", metadata: [
            "export": "\(store.exportName)", "standby": "\(configuration.agent)", "detail": "\(detail)",
            "action": "fix the standby's disk; until it catches up, acknowledged writes are on this node only",
        ])
        state.withLockedValue { $0.syncProofNeeded = true }
        goAlone()
    }

    /// Longest wait before a new session after refusals.
    static let maxRetryDelay = TimeAmount.seconds(10)

    fileprivate func lost(_ channel: Channel, reason: String, refused: Bool = false, retryWithin: TimeAmount? = nil) {
        // Called for a refusal and again when the channel closes: retry once.
        let (wasCurrent, delay) = state.withLockedValue { state -> (Bool, TimeAmount) in
            var delay = max(.milliseconds(200), state.nextAttempt - .now())
            if let retryWithin {
                delay = retryWithin
                state.nextAttempt = .now() + delay
            } else if refused {
                // 200 ms, 400 ms, … up to 10 s, until the standby acknowledges a record again.
                state.refusals += 1
                delay = .nanoseconds(min(Self.maxRetryDelay.nanoseconds,
                                         TimeAmount.milliseconds(200).nanoseconds << min(state.refusals - 1, 16)))
                state.nextAttempt = .now() + delay
            }
            guard state.channel === channel else { return (false, delay) }
            state.channel = nil
            state.inStep = false
            return (true, delay)
        }
        if wasCurrent {
            takeFilesQuery()?.fail(ReplicationError.refused("standby connection lost: \(reason)"))
            logger.warning("standby connection lost", metadata: [
                "export": "\(store.exportName)", "reason": "\(reason)", "nextAttempt": "\(Duration.nanoseconds(delay.nanoseconds))",
            ])
            retry(after: delay)
        }
    }
}

/// The standby connection's inbound side.
private final class StandbyHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Message
    private let link: ReplicationLink

    init(link: ReplicationLink) { self.link = link }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .challenge(let nonce): link.challenged(context.channel, nonce: nonce)
        case .replicaPosition(let history): link.positioned(context.channel, standby: history)
        case .filesChanged(let inodes): link.filesChanged(inodes)
        case .replicated(let sequence): link.acknowledged(sequence, durable: false)
        case .replicaSynced(let sequence): link.acknowledged(sequence, durable: true)
        case .refused(.replicaFailed, let detail):
            link.standbyFailed(context.channel, detail: detail)
            context.close(promise: nil)
        case .refused(.swapUnderWay, let detail):
            link.swapUnderWay(context.channel, detail: detail)
            context.close(promise: nil)
        case .refused(let refusal, let detail):
            link.lost(context.channel, reason: "refused (\(refusal)): \(detail)", refused: true)
            context.close(promise: nil)
        default:
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        link.lost(context.channel, reason: "connection closed")
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

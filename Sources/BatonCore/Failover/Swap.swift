/// Limits on the steps of a swap that wait on others. Local steps (the warm
/// checkpoint, persisting the epoch, starting a process) report their own
/// failures; the fence needs bounds, because the peer may be gone or hung.
public struct SwapTimings: Hashable, Sendable {
    /// A fence the peer's agent did not answer, while the peer is heard, is asked again after this.
    public var fenceRetryInterval: TimeSpan
    /// Fences asked of a peer that is heard but whose agent does not answer,
    /// before the swap gives up and the monitor watches again. Never a
    /// takeover: the old server may be alive, and it answers without its
    /// standby after `standby_wait_limit_ms`, so taking over beside it would
    /// make two servers acknowledge.
    public var maxFenceAttempts: Int
    /// The peer found gone (dead, isolated, its agent down) is taken over
    /// only this long after it was last heard: by then an isolated peer has
    /// stopped its servers (`selffence_delay_ms` is shorter, see `DiagnosisTimings`).
    public var takeoverDelay: TimeSpan
    /// Starts of the next server (the first and the restarts) before giving up.
    public var maxServerStarts: Int
    /// `standby_wait_limit_ms`: a server whose standby gave no sign for this
    /// long answers alone. A swap whose agent did not run for this long, less
    /// a second for the acknowledgements in flight, may not take over.
    public var standbyWaitLimit: TimeSpan

    /// The gap in this agent's runs past which the swap may not take over (see `standbyWaitLimit`).
    public var outdatingGap: TimeSpan {
        let limit = standbyWaitLimit.nanoseconds
        return TimeSpan(nanoseconds: limit > 2_000_000_000 ? limit - 1_000_000_000 : limit / 2)
    }

    public static let defaults = SwapTimings(
        fenceRetryInterval: .milliseconds(200), maxFenceAttempts: 10,
        takeoverDelay: DiagnosisTimings.defaults.takeoverDelay, maxServerStarts: 3,
        standbyWaitLimit: .milliseconds(UInt64(ClusterTimings.defaults.standbyWaitLimitMilliseconds)))

    public init(fenceRetryInterval: TimeSpan, maxFenceAttempts: Int, takeoverDelay: TimeSpan, maxServerStarts: Int,
                standbyWaitLimit: TimeSpan) {
        precondition(maxFenceAttempts >= 1 && maxServerStarts >= 1)
        self.standbyWaitLimit = standbyWaitLimit
        self.fenceRetryInterval = fenceRetryInterval
        self.maxFenceAttempts = maxFenceAttempts
        self.takeoverDelay = takeoverDelay
        self.maxServerStarts = maxServerStarts
    }
}

/// The role swap of one export, run by the agent of the standby node
/// (DESIGN.md §5): the unplanned failover after the monitor declared the
/// server failed, and the planned migration (`baton migrate`). This is the
/// protocol the agent runs (`ExportController` carries out the actions) and
/// the one the seeded simulation proves.
///
/// 1. The monitor stops and the next server starts, bound to its address
///    and waiting for its promotion (a migration waits for it before the
///    fence, so that the process start is out of the pause; a failover
///    overlaps it with the fence). A failover refuses the old server's
///    records at once; a migration takes them while the old server hands over.
/// 2. The fence, through the peer's agent. Unanswered, the peer's reach
///    decides: gone for the takeover delay, take over; this node isolated,
///    no swap; heard, ask again, a bounded number of times.
/// 3. The warm checkpoint, then the new epoch persisted before anything of
///    it is announced; then the promotion. The new server answers alone;
///    the fenced node becomes the standby, catches up through the new
///    server's replication session, and its monitor starts on the
///    session's `repliesWait`, not on a word from this swap.
///
/// The one ordering that safety rests on: the new epoch is durable before
/// the promotion, and from the fence on the standby refuses records of the
/// old epoch. So a fenced server that wakes up can get nothing acknowledged
/// (DESIGN.md §4.2), and a node that crashes mid-swap comes back knowing the
/// epoch it may have announced.
public struct Swap: Sendable {
    public enum Kind: Hashable, Sendable {
        /// The monitor declared the server failed.
        case failover(Monitor.FailureReason)
        /// An admin asked to move the export; the server is healthy.
        case migration
    }

    /// What the agent knows of its peer when a fence went unanswered (from
    /// the heartbeats and the diagnostic ladder, DESIGN.md §6).
    public struct PeerReach: Hashable, Sendable {
        /// This node found itself isolated and fenced its own servers.
        public var selfIsolated: Bool
        /// When the ladder last found the peer gone (dead, isolated, or its
        /// agent down); nil once it is heard again.
        public var foundGoneAt: Instant?
        /// The peer's heartbeats arrive on at least one path.
        public var heardOnSomePath: Bool
        /// When the peer was last heard on any path.
        public var lastHeard: Instant

        public init(selfIsolated: Bool, foundGoneAt: Instant?, heardOnSomePath: Bool, lastHeard: Instant) {
            self.selfIsolated = selfIsolated
            self.foundGoneAt = foundGoneAt
            self.heardOnSomePath = heardOnSomePath
            self.lastHeard = lastHeard
        }

        /// Gone long enough to take its exports over: an isolated peer has stopped its servers by then.
        public func isGoneForTakeover(at now: Instant, takeoverDelay: TimeSpan) -> Bool {
            foundGoneAt != nil && now >= lastHeard + takeoverDelay
        }
    }

    public enum Event: Hashable, Sendable {
        /// Start the swap; answers with its first actions.
        case begin
        /// Time passes; `peer` is the agent's view of its peer now.
        case tick(peer: PeerReach)
        /// The next server has bound its address and waits for its promotion.
        case nextServerReady
        case nextServerFailed
        /// The peer's agent answered the fence: the old server has exited (or
        /// did not run), or it refused (it serves a newer epoch, or answered
        /// writes its standby lacks and serves again).
        case fenceAnswered(fenced: Bool)
        /// The peer's agent did not answer the fence on any path.
        case fenceUnanswered
        case checkpointWritten
        /// The warm checkpoint failed: the new server replays the journal instead.
        case checkpointFailed
        case epochPersisted
        case epochPersistFailed
        /// The next server took the go-ahead: it serves the new epoch.
        case promoted
        /// The next server exited, or did not take the go-ahead.
        case promotionFailed
        /// This node's agent did not run for `gap` (stopped, frozen, starved):
        /// it refused nothing meanwhile, and the old server may have answered
        /// alone at its standby wait limit.
        case agentResumed(gap: TimeSpan)
    }

    public enum Action: Hashable, Sendable {
        /// This node's monitor of the old server stops (a failover's has stopped already).
        case stopMonitor
        /// Start a next server: bound to its address, answering nobody until `promote`.
        case startNextServer
        /// From now on, this node's replica takes no record of the old server.
        case refuseOldRecords
        /// Run the diagnostic ladder now: a verdict from before the fence went
        /// unanswered says nothing of this node's own network since.
        case diagnosePeer
        /// Ask the peer's agent to fence the old server of `epoch`; a
        /// migration's `handOver` drains it first (every record on the standby).
        case fence(epoch: UInt64, handOver: Bool)
        /// The next server will not be promoted: end it (once it is ready, if it is starting).
        case abandonNextServer
        /// Write the namespace as a checkpoint, so the new server starts without replaying.
        case writeWarmCheckpoint
        /// Make the new epoch (and this node's `serving` marker) durable.
        case persistEpoch(UInt64)
        /// The replica gives the directory up and the next server serves
        /// `epoch`, answering alone until the fenced node's replica is in step.
        case promote(epoch: UInt64)
        /// No swap: this node keeps the standby replica; with `watch`, its
        /// monitor watches the old server again (otherwise it waits for the
        /// server's next replication session, `repliesWait`).
        case returnToStandby(watch: Bool)
        case raiseAlarm(Alarm)
        /// The export is served on this node at `epoch`.
        case completed(epoch: UInt64)
        case failed(Failure)
    }

    /// Conditions an admin must hear about; the swap goes on.
    public enum Alarm: Hashable, Sendable {
        /// Taking over a peer found gone, without word that the old server exited.
        case fenceUnconfirmed
        /// The warm checkpoint failed: the new server replays, and the pause is longer.
        case checkpointNotWritten
        /// The next server failed to start or to take the go-ahead; it is started again.
        case nextServerRestarted
    }

    /// Why a swap stopped short. Before the fence the old server is still
    /// the server; after it, the export is unserved until a monitor declares
    /// the failure again (a new swap) or an admin acts.
    public enum Failure: Hashable, Sendable {
        /// This node is the isolated one: it must not promote.
        case selfIsolated
        /// The peer's agent refused the fence.
        case fenceRefused
        /// The peer is heard, yet its agent answered none of the fences.
        case fenceUnanswered
        /// This node did not run for long enough that the old server may have
        /// answered writes alone: its replica may lack them, so it must not
        /// take over; its monitor watches again after the server's next
        /// session (`repliesWait`).
        case replicaMayBeOutdated
        case epochNotPersisted
        case serverWouldNotStart
    }

    enum State: Hashable, Sendable {
        case initial
        /// Migration: waiting for the next server before the fence.
        case preparing
        /// A fence is asked; `attempt` counts from 1.
        case fencing(attempt: Int)
        /// The last fence went unanswered at `since`: waiting for the peer's
        /// reach to decide, or for the time to ask again.
        case awaitingVerdict(attempt: Int, since: Instant, askAgainAt: Instant)
        case writingCheckpoint
        /// From here on the swap cannot go back: the old server is fenced or gone.
        case persistingEpoch
        /// Waiting for the next server to be ready, then for its promotion.
        case promoting(asked: Bool)
        case completed
        case failed(Failure)
    }

    enum NextServer: Hashable, Sendable { case starting, ready, failed }

    public let kind: Kind
    /// The epoch of the server being replaced.
    public let oldEpoch: UInt64
    public let timings: SwapTimings
    private(set) var state: State = .initial
    private var nextServer = NextServer.starting
    private var serverStarts = 0

    public init(kind: Kind, oldEpoch: UInt64, timings: SwapTimings = .defaults) {
        precondition(oldEpoch < UInt64.max, "epochs exhausted")
        self.kind = kind
        self.oldEpoch = oldEpoch
        self.timings = timings
    }

    public var newEpoch: UInt64 { oldEpoch + 1 }

    private var isMigration: Bool { if case .migration = kind { true } else { false } }

    public var isFinished: Bool {
        switch state {
        case .completed, .failed: true
        default: false
        }
    }

    /// Whether this node's replica still takes the old server's records: a
    /// migration's, until the old server has handed over.
    public var takesOldRecords: Bool {
        switch state {
        case .initial, .preparing, .fencing, .awaitingVerdict: isMigration
        case .failed: true
        case .writingCheckpoint, .persistingEpoch, .promoting, .completed: false
        }
    }

    public mutating func handle(_ event: Event, at now: Instant) -> [Action] {
        switch (state, event) {
        case (.initial, .begin):
            serverStarts = 1
            if isMigration {
                state = .preparing
                return [.stopMonitor, .startNextServer]
            }
            state = .fencing(attempt: 1)
            return [.stopMonitor, .refuseOldRecords, .startNextServer, fence()]
        case (_, .begin):
            preconditionFailure("swap begun twice (state \(state))")

        // The next server, which any state before the promotion may hear of.
        case (.preparing, .nextServerReady):
            nextServer = .ready
            state = .fencing(attempt: 1)
            return [fence()]
        case (.preparing, .nextServerFailed):
            nextServer = .failed
            return giveUp(.serverWouldNotStart, watch: true)
        case (.fencing, .nextServerReady), (.awaitingVerdict, .nextServerReady),
             (.writingCheckpoint, .nextServerReady), (.persistingEpoch, .nextServerReady):
            precondition(nextServer == .starting, "next server ready twice")
            nextServer = .ready
            return []
        case (.promoting(asked: false), .nextServerReady):
            nextServer = .ready
            return promote()
        case (.fencing, .nextServerFailed), (.awaitingVerdict, .nextServerFailed),
             (.writingCheckpoint, .nextServerFailed), (.persistingEpoch, .nextServerFailed),
             (.promoting(asked: false), .nextServerFailed):
            nextServer = .failed
            return restartNextServer()

        // The fence.
        case (.fencing, .fenceAnswered(let fenced)), (.awaitingVerdict, .fenceAnswered(let fenced)):
            // A late answer to an earlier attempt counts as much as the last one's.
            guard fenced else { return giveUp(.fenceRefused, watch: true) }
            return oldServerFenced()
        case (.fencing(let attempt), .fenceUnanswered):
            state = .awaitingVerdict(attempt: attempt, since: now, askAgainAt: now + timings.fenceRetryInterval)
            return [.diagnosePeer]
        case (.awaitingVerdict(let attempt, let since, let askAgainAt), .tick(let peer)):
            if peer.selfIsolated { return giveUp(.selfIsolated, watch: false) }
            if let foundGoneAt = peer.foundGoneAt {
                // Only a verdict reached since the fence went unanswered: an older one may
                // predate this node's own isolation, which the ladder would find now.
                guard foundGoneAt >= since, peer.isGoneForTakeover(at: now, takeoverDelay: timings.takeoverDelay) else { return [] }
                return [.raiseAlarm(.fenceUnconfirmed)] + oldServerFenced()
            }
            // Silent on every path but not yet diagnosed: the ladder decides soon.
            guard peer.heardOnSomePath, now >= askAgainAt else { return [] }
            guard attempt < timings.maxFenceAttempts else { return giveUp(.fenceUnanswered, watch: true) }
            state = .fencing(attempt: attempt + 1)
            return [fence()]

        // Promotion: checkpoint, epoch, go-ahead, in this order.
        case (.writingCheckpoint, .checkpointWritten):
            state = .persistingEpoch
            return [.persistEpoch(newEpoch)]
        case (.writingCheckpoint, .checkpointFailed):
            state = .persistingEpoch
            return [.raiseAlarm(.checkpointNotWritten), .persistEpoch(newEpoch)]
        case (.persistingEpoch, .epochPersisted):
            state = .promoting(asked: false)
            switch nextServer {
            case .ready: return promote()
            case .starting: return []
            case .failed: return restartNextServer()
            }
        case (.persistingEpoch, .epochPersistFailed):
            return giveUp(.epochNotPersisted, watch: true)
        case (.promoting(asked: true), .promoted):
            state = .completed
            return [.completed(epoch: newEpoch)]
        case (.promoting(asked: true), .promotionFailed):
            state = .promoting(asked: false)
            nextServer = .failed
            return restartNextServer()

        // A gap in this agent's own runs, before the point of no return.
        case (.initial, .agentResumed), (.preparing, .agentResumed), (.fencing, .agentResumed), (.awaitingVerdict, .agentResumed):
            guard case .agentResumed(let gap) = event, gap >= timings.outdatingGap else { return [] }
            return giveUp(.replicaMayBeOutdated, watch: false)

        // Time passing where nothing is timed; answers that come too late to matter.
        case (_, .tick), (.failed, .fenceAnswered), (.failed, .fenceUnanswered),
             (.completed, .fenceAnswered), (.writingCheckpoint, .fenceAnswered), (.persistingEpoch, .fenceAnswered),
             (.promoting, .fenceAnswered), (.failed, .nextServerReady), (.failed, .nextServerFailed), (_, .agentResumed):
            return []
        default:
            preconditionFailure("swap got \(event) in state \(state)")
        }
    }

    private func fence() -> Action { .fence(epoch: oldEpoch, handOver: isMigration) }

    /// The old server has exited, or its node is gone: the point of no return.
    private mutating func oldServerFenced() -> [Action] {
        state = .writingCheckpoint
        // A migration took the old server's last records while it handed over.
        let refuse: [Action] = isMigration ? [.refuseOldRecords] : []
        return refuse + [.writeWarmCheckpoint]
    }

    private mutating func promote() -> [Action] {
        precondition(nextServer == .ready)
        state = .promoting(asked: true)
        return [.promote(epoch: newEpoch)]
    }

    private mutating func restartNextServer() -> [Action] {
        guard serverStarts < timings.maxServerStarts else { return giveUp(.serverWouldNotStart, watch: true) }
        serverStarts += 1
        nextServer = .starting
        return [.raiseAlarm(.nextServerRestarted), .startNextServer]
    }

    private mutating func giveUp(_ failure: Failure, watch: Bool) -> [Action] {
        state = .failed(failure)
        let abandon: [Action] = nextServer == .failed ? [] : [.abandonNextServer]
        return abandon + [.returnToStandby(watch: watch), .failed(failure)]
    }
}

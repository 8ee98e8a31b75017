/// Limits on the remote steps of a swap. Local steps (persisting the epoch,
/// replaying, starting a process) report their own failures; steps that wait
/// on the peer need a deadline, because the peer may be gone.
public struct SwapTimings: Hashable, Sendable {
    /// The peer agent must confirm the old server's exit within this.
    public var fenceDeadline: TimeSpan
    /// Migration: the server must confirm it stopped taking requests within this.
    public var quiesceDeadline: TimeSpan
    /// Migration: the last records must reach the standby within this.
    public var drainDeadline: TimeSpan
    /// The peer agent must confirm its replica caught up, and then the new monitor, each within this.
    public var monitorRequestDeadline: TimeSpan
    /// Fence requests through a reachable peer agent before taking over without its word.
    public var maxFenceAttempts: Int
    /// Starts of the new server (first start and restarts) before giving up.
    public var maxServerStarts: Int

    public static let defaults = SwapTimings(
        fenceDeadline: .milliseconds(250), quiesceDeadline: .milliseconds(100), drainDeadline: .milliseconds(200),
        monitorRequestDeadline: .milliseconds(1000), maxFenceAttempts: 3, maxServerStarts: 3)

    public init(fenceDeadline: TimeSpan, quiesceDeadline: TimeSpan, drainDeadline: TimeSpan,
                monitorRequestDeadline: TimeSpan, maxFenceAttempts: Int, maxServerStarts: Int) {
        precondition(maxFenceAttempts >= 1 && maxServerStarts >= 1)
        self.fenceDeadline = fenceDeadline
        self.quiesceDeadline = quiesceDeadline
        self.drainDeadline = drainDeadline
        self.monitorRequestDeadline = monitorRequestDeadline
        self.maxFenceAttempts = maxFenceAttempts
        self.maxServerStarts = maxServerStarts
    }
}

/// The role swap of one export, run by the agent of the standby node
/// (DESIGN.md §5): the unplanned failover after the monitor declared the
/// server failed, and the planned migration (`baton migrate`).
///
/// The one ordering that safety rests on: the new epoch is persisted before
/// anything of it is announced, and from the moment it is decided the
/// standby refuses records of the old epoch. So a fenced server that wakes
/// up can get nothing acknowledged (DESIGN.md §4.2), and a node that crashes
/// mid-swap comes back knowing the epoch it may have announced.
public struct Swap: Sendable {
    public enum Kind: Hashable, Sendable {
        /// The monitor declared the server failed.
        case failover(Monitor.FailureReason)
        /// An admin asked to move the export; the server is healthy.
        case migration
    }

    public enum Event: Hashable, Sendable {
        /// Start the swap; answers with its first actions.
        case begin
        case tick
        /// The peer agent says the old server has exited (or was not running).
        case fenceConfirmed
        /// The diagnosis ladder's verdict on the peer (`peerDeadOrIsolated` only once the takeover delay passed).
        case diagnosed(DiagnosisVerdict)
        /// Migration: the old server takes no new requests; its journal ends at `lastSequence`.
        case serverQuiesced(lastSequence: UInt64)
        /// The standby replica holds every record up to `upTo`.
        case replicaReceived(upTo: UInt64)
        case epochPersisted(UInt64)
        case epochPersistFailed
        case tailReplayed
        /// The journal tail cannot be read back (a checksum failed): promoting would lose or invent data.
        case tailUnreadable
        case serverStarted
        case serverStartFailed
        /// The new server exited after it had started: a second failure during the swap.
        case serverExited
        /// The peer agent confirms the new monitor runs.
        case monitorStarted
        /// The peer agent cannot be reached (connection refused, no route).
        case peerUnreachable
        /// The peer agent is back after being unreachable.
        case peerReturned
        /// The peer's replica discarded records this node never received and caught up.
        case peerCaughtUp
        /// The monitor declared the server failed again: the same failure, or a migration gone wrong.
        case failureDeclared(Monitor.FailureReason)
        /// A journal record from a server of `epoch` reached this node's replica.
        case recordArrived(epoch: UInt64)
        /// This node's old monitor has terminated.
        case retired
    }

    public enum Action: Hashable, Sendable {
        /// Ask the peer agent to terminate the server of `epoch` and wait for its exit.
        case fence(epoch: UInt64)
        /// The peer agent did not answer: run the diagnosis ladder (DESIGN.md §6).
        case runDiagnosis
        /// The peer's kernel answers but its agent does not: terminate the old server by the OS-level path, if there is one.
        case fenceThroughOperatingSystem(epoch: UInt64)
        /// Migration: tell the server to stop taking new requests.
        case quiesceServer(epoch: UInt64)
        /// Migration abandoned before anything changed: the server takes requests again.
        case resumeServer(epoch: UInt64)
        /// Make the new epoch durable. Nothing of the new epoch goes out before `epochPersisted`.
        case persistEpoch(UInt64)
        /// Apply the journal records the replica has not applied yet.
        case replayTail
        /// Start the export server of `epoch` on this node: the announcement of the new epoch.
        case startServer(epoch: UInt64)
        /// Migration: the quiesced old server exits; its clients move to the new one.
        case stopOldServer(epoch: UInt64)
        /// Ask the peer agent to start the monitor of the new server.
        case requestMonitor(epoch: UInt64)
        /// The peer's replica discards records of older epochs this node never received, then copies the journal.
        /// Its agent first terminates any server of an older epoch there, which writes to that journal.
        case catchUpPeer(epoch: UInt64)
        /// This node's monitor of the old server terminates.
        case retireMonitor
        case acceptRecord
        case refuseRecord(epoch: UInt64)
        /// A server of an older epoch is alive and talking: fence it now.
        case fenceStaleServer(epoch: UInt64)
        case raiseAlarm(Alarm)
        /// The export runs on this node at `epoch`, monitored from the peer.
        case completed(epoch: UInt64)
        case failed(Failure)
    }

    /// Conditions an admin must hear about; the swap goes on.
    public enum Alarm: Hashable, Sendable {
        /// Taking over without word that the old server exited; the epoch keeps it from acknowledging anything.
        case fenceUnconfirmed
        /// The peer's agent is down while its kernel runs.
        case peerAgentDown
        /// The export runs without a monitor until the peer returns.
        case unmonitored
    }

    /// Why a swap stopped short. Before the epoch was decided the old server
    /// is still the server; after, the export is down until an admin acts.
    public enum Failure: Hashable, Sendable {
        /// This node is the isolated one: it must not promote.
        case selfIsolated
        case epochNotPersisted
        case tailUnreadable
        case serverWouldNotStart
        /// Migration: the server did not quiesce or the records did not drain in time; nothing changed.
        case migrationTimedOut
        /// A server of an epoch newer than this swap's exists: another node promoted.
        case newerEpochSeen(UInt64)
    }

    enum State: Hashable, Sendable {
        /// Not begun.
        case initial
        /// Waiting for the peer agent to confirm the old server's exit.
        case fencing(attempt: Int, deadline: Instant)
        /// The peer agent did not answer; waiting for the ladder's verdict.
        case diagnosing(attempt: Int)
        /// The peer's agent is down; waiting for the OS-level fence, or its deadline.
        case fencingThroughOperatingSystem(deadline: Instant)
        /// Migration: waiting for the server to stop taking requests.
        case quiescing(deadline: Instant)
        /// Migration: waiting for the standby to receive the journal up to the server's last record.
        case draining(lastSequence: UInt64, deadline: Instant)
        /// Waiting for the new epoch to be durable; old-epoch records are refused from here on.
        case persistingEpoch
        /// Replaying the journal tail the replica has not applied.
        case replayingTail
        /// Waiting for the new server to start.
        case startingServer
        /// Waiting for the peer agent to start the new monitor.
        case requestingMonitor(deadline: Instant)
        /// The peer is unreachable: the export runs unmonitored until the peer returns.
        case awaitingPeer
        /// The peer's replica is catching up before it monitors.
        case catchingUpPeer(deadline: Instant)
        /// Waiting for this node's old monitor to terminate.
        case retiring
        /// Done: the export runs here at the new epoch.
        case completed
        /// Stopped short; see the failure.
        case failed(Failure)
    }

    public private(set) var kind: Kind
    /// The epoch of the server being replaced.
    public let oldEpoch: UInt64
    public let timings: SwapTimings
    private(set) var state: State = .initial
    /// Whether the new epoch has been decided: from then on, old-epoch records are refused.
    public private(set) var epochDecided = false
    private var serverStarts = 0
    private var serverRunning = false
    private var receivedSequence: UInt64 = 0
    private var staleServerFenced = false

    public init(kind: Kind, oldEpoch: UInt64, timings: SwapTimings = .defaults) {
        precondition(oldEpoch < UInt64.max, "epochs exhausted")
        self.kind = kind
        self.oldEpoch = oldEpoch
        self.timings = timings
    }

    public var newEpoch: UInt64 { oldEpoch + 1 }

    /// The epoch whose records this node's replica accepts.
    public var acceptedEpoch: UInt64 { epochDecided ? newEpoch : oldEpoch }

    public var isFinished: Bool {
        switch state {
        case .completed, .failed: true
        default: false
        }
    }

    public mutating func handle(_ event: Event, at now: Instant) -> [Action] {
        switch event {
        case .recordArrived(let epoch): return recordArrived(epoch: epoch)
        case .replicaReceived(let upTo):
            receivedSequence = max(receivedSequence, upTo)
            guard case .draining(let last, _) = state, receivedSequence >= last else { return [] }
            return decideEpoch()
        case .failureDeclared(let reason):
            // A migration whose server stopped answering becomes a failover
            // while nothing has changed yet; any other swap is already acting on it.
            switch state {
            case .quiescing, .draining:
                kind = .failover(reason)
                return startFencing(attempt: 1, at: now)
            default: return []
            }
        default: break
        }

        switch (state, event) {
        case (.initial, .begin):
            switch kind {
            case .failover: return startFencing(attempt: 1, at: now)
            case .migration:
                state = .quiescing(deadline: now + timings.quiesceDeadline)
                return [.quiesceServer(epoch: oldEpoch)]
            }
        case (_, .begin):
            preconditionFailure("swap begun twice (state \(state))")

        // Fencing.
        case (.fencing, .fenceConfirmed), (.diagnosing, .fenceConfirmed), (.fencingThroughOperatingSystem, .fenceConfirmed):
            return decideEpoch()
        case (.fencing(let attempt, let deadline), .tick):
            guard now >= deadline else { return [] }
            state = .diagnosing(attempt: attempt)
            return [.runDiagnosis]
        case (.fencing(let attempt, _), .peerUnreachable):
            state = .diagnosing(attempt: attempt)
            return [.runDiagnosis]
        case (.diagnosing(let attempt), .diagnosed(let verdict)):
            return diagnosed(verdict, attempt: attempt, at: now)
        case (.fencingThroughOperatingSystem(let deadline), .tick):
            guard now >= deadline else { return [] }
            return [.raiseAlarm(.fenceUnconfirmed)] + decideEpoch()

        // Migration.
        case (.quiescing, .serverQuiesced(let lastSequence)):
            if receivedSequence >= lastSequence { return decideEpoch() }
            state = .draining(lastSequence: lastSequence, deadline: now + timings.drainDeadline)
            return []
        case (.quiescing(let deadline), .tick), (.draining(_, let deadline), .tick):
            guard now >= deadline else { return [] }
            state = .failed(.migrationTimedOut)
            return [.resumeServer(epoch: oldEpoch), .failed(.migrationTimedOut)]

        // Promotion: persist, replay, start, in this order.
        case (.persistingEpoch, .epochPersisted(let epoch)):
            precondition(epoch == newEpoch, "persisted epoch \(epoch), this swap decided \(newEpoch)")
            state = .replayingTail
            return [.replayTail]
        case (.persistingEpoch, .epochPersistFailed):
            return fail(.epochNotPersisted)
        case (.replayingTail, .tailReplayed):
            state = .startingServer
            return startServer()
        case (.replayingTail, .tailUnreadable):
            return fail(.tailUnreadable)
        case (.startingServer, .serverStarted):
            serverRunning = true
            var actions: [Action] = []
            if case .migration = kind { actions.append(.stopOldServer(epoch: oldEpoch)) }
            return actions + catchUpPeer(at: now)
        case (.startingServer, .serverStartFailed):
            return startServer()

        // The new server runs; the peer is to monitor it.
        case (.requestingMonitor, .monitorStarted), (.awaitingPeer, .monitorStarted):
            state = .retiring
            return [.retireMonitor]
        case (.requestingMonitor(let deadline), .tick), (.catchingUpPeer(let deadline), .tick):
            guard now >= deadline else { return [] }
            state = .awaitingPeer
            return [.raiseAlarm(.unmonitored)]
        case (.requestingMonitor, .peerUnreachable), (.catchingUpPeer, .peerUnreachable):
            state = .awaitingPeer
            return [.raiseAlarm(.unmonitored)]
        case (.awaitingPeer, .peerReturned):
            return catchUpPeer(at: now)
        case (.catchingUpPeer, .peerCaughtUp):
            return requestMonitor(at: now)
        case (.retiring, .retired):
            state = .completed
            return [.completed(epoch: newEpoch)]

        // A second failure: the new server dies after it started.
        case (.requestingMonitor, .serverExited), (.awaitingPeer, .serverExited), (.catchingUpPeer, .serverExited),
             (.retiring, .serverExited):
            precondition(serverRunning, "new server exited before it started")
            serverRunning = false
            // Local and confirmed: restart at the same epoch, no new promotion needed.
            return startServer()
        case (.requestingMonitor, .serverStarted), (.awaitingPeer, .serverStarted), (.catchingUpPeer, .serverStarted),
             (.retiring, .serverStarted):
            precondition(!serverRunning, "new server started twice")
            serverRunning = true
            return []
        case (.requestingMonitor, .serverStartFailed), (.awaitingPeer, .serverStartFailed),
             (.catchingUpPeer, .serverStartFailed), (.retiring, .serverStartFailed):
            return startServer()

        // Late or repeated answers from remote parties, and time passing where nothing is timed.
        case (_, .tick), (_, .fenceConfirmed), (_, .diagnosed), (_, .serverQuiesced), (_, .monitorStarted),
             (_, .peerUnreachable), (_, .peerReturned):
            return []
        case (.failed, _):
            return []
        default:
            preconditionFailure("swap got \(event) in state \(state)")
        }
    }

    private mutating func startFencing(attempt: Int, at now: Instant) -> [Action] {
        state = .fencing(attempt: attempt, deadline: now + timings.fenceDeadline)
        return [.fence(epoch: oldEpoch)]
    }

    private mutating func diagnosed(_ verdict: DiagnosisVerdict, attempt: Int, at now: Instant) -> [Action] {
        switch verdict {
        case .peerDeadOrIsolated:
            // The peer self-fenced by now if it is the isolated one; the epoch covers the rest.
            return [.raiseAlarm(.fenceUnconfirmed)] + decideEpoch()
        case .peerAgentDown:
            state = .fencingThroughOperatingSystem(deadline: now + timings.fenceDeadline)
            return [.raiseAlarm(.peerAgentDown), .fenceThroughOperatingSystem(epoch: oldEpoch)]
        case .selfIsolated:
            return fail(.selfIsolated)
        case .allHealthy, .peerNICDown, .switchDown, .pathDown:
            // The peer agent is reachable on some path: ask it again there.
            guard attempt < timings.maxFenceAttempts else { return [.raiseAlarm(.fenceUnconfirmed)] + decideEpoch() }
            return startFencing(attempt: attempt + 1, at: now)
        }
    }

    /// The point of no return: the replica stops accepting the old epoch, and the new one is made durable.
    private mutating func decideEpoch() -> [Action] {
        precondition(!epochDecided)
        epochDecided = true
        state = .persistingEpoch
        return [.persistEpoch(newEpoch)]
    }

    private mutating func startServer() -> [Action] {
        guard serverStarts < timings.maxServerStarts else { return fail(.serverWouldNotStart) }
        serverStarts += 1
        return [.startServer(epoch: newEpoch)]
    }

    /// Whether the old server's node is alive or returns later, its replica may
    /// hold records of the old epoch this node never received (never
    /// acknowledged, DESIGN.md §5.4): it catches up before it monitors, always.
    private mutating func catchUpPeer(at now: Instant) -> [Action] {
        state = .catchingUpPeer(deadline: now + timings.monitorRequestDeadline)
        return [.catchUpPeer(epoch: newEpoch)]
    }

    private mutating func requestMonitor(at now: Instant) -> [Action] {
        state = .requestingMonitor(deadline: now + timings.monitorRequestDeadline)
        return [.requestMonitor(epoch: newEpoch)]
    }

    private mutating func fail(_ failure: Failure) -> [Action] {
        state = .failed(failure)
        return [.failed(failure)]
    }

    private mutating func recordArrived(epoch: UInt64) -> [Action] {
        if epoch > newEpoch || (epoch == newEpoch && !epochDecided) {
            // Another node promoted past this swap: it must not go on.
            if isFinished { return [.refuseRecord(epoch: epoch)] }
            state = .failed(.newerEpochSeen(epoch))
            return [.refuseRecord(epoch: epoch), .failed(.newerEpochSeen(epoch))]
        }
        precondition(epoch < newEpoch, "a record of this swap's own epoch \(epoch) from elsewhere")
        if epoch == oldEpoch, !epochDecided { return [.acceptRecord] }
        // An older server is alive and talking; after the decision that includes the replaced one.
        if staleServerFenced { return [.refuseRecord(epoch: epoch)] }
        staleServerFenced = true
        return [.refuseRecord(epoch: epoch), .fenceStaleServer(epoch: epoch)]
    }
}

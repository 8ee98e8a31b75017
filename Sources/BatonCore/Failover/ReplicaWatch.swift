/// Whether the standby's monitor watches the peer's server of one export
/// (DESIGN.md §4.1). A monitor that declares the server failed starts a
/// swap that takes the export over with this replica, so it watches only
/// while the server's replies wait for the replica (the server said
/// `repliesWait` in the current replication session) and the replica holds
/// every record the server may have answered without it. Everything that
/// may have let the server answer alone since ends the watch until the
/// server's next session says so again. Pure: `ExportController` feeds it
/// what the replica session, the monitor and the agent's own runs report,
/// and carries out its actions.
public struct ReplicaWatch: Hashable, Sendable {
    public enum Event: Hashable, Sendable {
        /// A replication session with the server began (its hello): until
        /// it says `repliesWait`, the server may answer without this replica.
        case sessionBegan
        /// The server's replies wait for this replica, and it answered
        /// nothing past `through` without it; the replica has applied `applied`.
        case repliesWait(through: UInt64, applied: UInt64)
        /// The replica has applied every record through this one.
        case applied(UInt64)
        /// A copy replaces the replica's namespace: what the monitor knew of it is stale.
        case copyInstalling
        /// The server says it answers without its standby (a probe answer, a heartbeat).
        case serverAnswersAlone
        /// The peer's server asked to answer without this replica, and it
        /// stood down (`ExportRole.outdate`): its session ends.
        case stoodDown
        /// This agent did not run for `gap`; the swap's outdating gap is `limit`.
        case agentResumed(gap: TimeSpan, limit: TimeSpan)
        /// A swap began (the monitor declared the server failed, or an admin migrates).
        case swapBegan
        /// The swap ended: with a takeover (this node serves), or without one;
        /// `watch`: the monitor watches the old server again.
        case swapEnded(watch: Bool)
    }

    public enum Action: Hashable, Sendable {
        case startMonitor
        case stopMonitor
        /// Close the replica's session, so that the server's next one ends in `repliesWait`.
        case endSession
    }

    enum State: Hashable, Sendable {
        /// No `repliesWait` in the current session (or no session).
        case awaitingRepliesWait
        /// The server said `repliesWait(through:)`; the replica has not applied that far yet.
        case awaitingRecords(through: UInt64)
        case watching
        /// A swap runs: it decides whether the monitor watches again.
        case swapping
    }

    private(set) var state = State.awaitingRepliesWait

    public init() {}

    public var isWatching: Bool { state == .watching }

    public mutating func handle(_ event: Event) -> [Action] {
        switch (state, event) {
        case (.swapping, .swapEnded(let watch)):
            state = watch ? .watching : .awaitingRepliesWait
            return watch ? [.startMonitor] : []
        case (.swapping, _):
            // The swap owns the replica (it refuses the old server's records); nothing else may start a monitor.
            return []
        case (_, .swapBegan):
            let wasWatching = state == .watching
            state = .swapping
            return wasWatching ? [.stopMonitor] : []
        case (_, .swapEnded):
            preconditionFailure("a swap ended that did not begin (state \(state))")

        case (_, .sessionBegan), (_, .copyInstalling), (_, .serverAnswersAlone):
            return stopWatching(endingSession: false)
        case (_, .stoodDown):
            return stopWatching(endingSession: true)
        case (.watching, .agentResumed(let gap, let limit)), (.awaitingRecords, .agentResumed(let gap, let limit)):
            // It refused nothing while it did not run: the server may have answered alone meanwhile.
            return gap >= limit ? stopWatching(endingSession: true) : []
        case (.awaitingRepliesWait, .agentResumed):
            return []

        case (.awaitingRepliesWait, .repliesWait(let through, let applied)),
             (.awaitingRecords, .repliesWait(let through, let applied)):
            return watchOnce(applied: applied, through: through)
        case (.awaitingRecords(let through), .applied(let applied)):
            return watchOnce(applied: applied, through: through)
        case (.watching, .repliesWait), (.watching, .applied), (.awaitingRepliesWait, .applied):
            return []
        }
    }

    private mutating func watchOnce(applied: UInt64, through: UInt64) -> [Action] {
        guard applied >= through else {
            state = .awaitingRecords(through: through)
            return []
        }
        state = .watching
        return [.startMonitor]
    }

    private mutating func stopWatching(endingSession: Bool) -> [Action] {
        let wasWatching = state == .watching
        state = .awaitingRepliesWait
        return (wasWatching ? [.stopMonitor] : []) + (endingSession ? [.endSession] : [])
    }
}

/// The decisions an agent makes about one export on its node outside the
/// swap (`Swap`): where it is served at start-up, whether a server that
/// exited is started again, what a fence asked by the peer leads to,
/// where it is served after this node fenced itself, and whether its server
/// may answer without its standby at the wait limit. Pure: what the node's
/// disk says comes in as facts, time as `Instant`s; `ExportController`
/// carries the answers out.
public enum ExportRole {
    /// What the node's data directory says of the export.
    public struct LocalCopy: Hashable, Sendable {
        /// No copy of the export here yet.
        public var isNew: Bool
        /// This node served the export last (`DIR/serving`).
        public var servedHere: Bool
        /// Its server answered writes without the standby since
        /// (`DIR/standby-outdated`): the peer cannot hold a newer copy.
        public var answeredAlone: Bool
        /// The cluster file names this node the export's preferred one.
        public var preferredHere: Bool

        public init(isNew: Bool, servedHere: Bool, answeredAlone: Bool, preferredHere: Bool) {
            self.isNew = isNew
            self.servedHere = servedHere
            self.answeredAlone = answeredAlone
            self.preferredHere = preferredHere
        }
    }

    public enum Start: Hashable, Sendable {
        /// Serve here. `alone`: the peer did not answer (no standby to wait for yet).
        case serve(alone: Bool)
        /// Keep the standby replica and watch the peer's server.
        case standby
        /// Neither: this node cannot show that its copy is the newest; wait
        /// for the peer's agent (or an admin's `baton force-serve`).
        case waitForPeer(why: String)
    }

    /// At agent start: serve if this node served last (or is the preferred
    /// node of a new export) and the peer does not serve it. `peerServes`
    /// nil: the peer's agent did not answer. Then this node serves only when
    /// it can show that it holds the newest copy (DESIGN.md §4.7, as
    /// corosync's wait_for_all and DRBD's Outdated state): it served last,
    /// and its server answered without the standby since, so the peer cannot
    /// have taken over. Otherwise it waits: a node isolated and then rebooted
    /// while its peer was down, or with a new, empty disk, would serve an old
    /// or an empty copy.
    public static func start(_ copy: LocalCopy, peerServes: Bool?) -> Start {
        let serve = peerServes != true && (copy.servedHere || (copy.isNew && copy.preferredHere))
        guard serve else { return .standby }
        guard peerServes == nil else { return .serve(alone: false) }
        if copy.servedHere && copy.answeredAlone { return .serve(alone: true) }
        return .waitForPeer(why: copy.isNew
            ? "this node has no copy of the export yet, and the peer may hold one"
            : "the peer may have served the export since this node last did (this node was not serving without it when it stopped)")
    }

    /// After this node fenced itself (it was isolated) and hears its peer
    /// again: the peer took the export over, so this node keeps the standby,
    /// unless the peer says it does not serve it.
    public static func rejoin(peerServes: Bool?) -> Start {
        peerServes == false ? .serve(alone: false) : .standby
    }

    public enum Fence: Hashable, Sendable {
        /// This node serves a newer epoch than the one the peer would end.
        case refuseNewer(ownEpoch: UInt64)
        /// No server of the export runs here: nothing to end.
        case nothingRuns
        /// End the server: kill it, or with `handOver` let it drain first
        /// (no more mutations, the standby acknowledges every record).
        case end(handOver: Bool)
    }

    /// The peer's agent asks this node to end its server of `epoch` or older
    /// (a node whose epoch is newer refuses, serving or not: the peer's swap is stale).
    public static func fence(serving: Bool, ownEpoch: UInt64, asked epoch: UInt64, handOver: Bool) -> Fence {
        if ownEpoch > epoch { return .refuseNewer(ownEpoch: ownEpoch) }
        return serving ? .end(handOver: handOver) : .nothingRuns
    }

    /// Once the fenced server has ended (asked only then: until it ends it
    /// may still begin to answer alone): this node keeps the standby, unless
    /// the server answered writes without its standby, which lacks them
    /// (the marker stands until the standby has every such write). Then the
    /// peer must not take over: the export is served here again. A hand-over
    /// drained to the standby first, so it never leaves such writes.
    public static func afterFence(handOver: Bool, answeredAlone: Bool) -> Start {
        !handOver && answeredAlone ? .serve(alone: true) : .standby
    }

    /// How this node's agent has run lately (`PeerWatch` ticks every 20 ms).
    public struct AgentRuns: Hashable, Sendable {
        /// The agent's last tick.
        public var lastRan: Instant
        /// When it last ran again after not running for `PeerLiveness.runGapLimit` or more.
        public var resumedAt: Instant?

        public init(lastRan: Instant, resumedAt: Instant?) {
            self.lastRan = lastRan
            self.resumedAt = resumedAt
        }
    }

    public enum AnswerAlone: Hashable, Sendable {
        /// Replies may stop waiting for the standby (`ServerControl.answerAlone`): the peer is found gone.
        case consent
        /// Consent once the peer's agent has stood its replica down
        /// (`AgentRequest.outdate`, answered by `outdate(swapUnderWay:ownEpoch:asked:)`).
        case askPeer
        /// Not now: the server keeps waiting and asks again.
        case withhold(why: String)
    }

    /// This node's server has waited for its standby past the wait limit and
    /// asks whether to answer without it (DESIGN.md §4.1's bound on a
    /// standby that stops acknowledging while its node is heard). Answers
    /// alone lose nothing only while no other node may take the export over
    /// without them. The peer takes over through a fence that this agent
    /// answers (and refuses, once its server answered alone), or, without
    /// one, only once it found this node gone. So the agent consents only
    /// while it runs and hears its peer, and then only once the peer's agent
    /// has stood its replica down: no swap is under way there, and none
    /// begins until the server's next replication session has caught it up
    /// (a monitor that declared the server failed while the server was
    /// stalled, before the server heard `swapUnderWay`, would otherwise take
    /// over without a fence once this agent fell silent, without the writes
    /// answered alone: the simulation's seed 1658). It consents at once when
    /// the peer is found gone (there is no standby to wait for).
    /// `serving`: the node's role is to serve the export (not a swap, a fence or a self-fence under way).
    public static func answerAlone(serving: Bool, peer: Swap.PeerReach, agent: AgentRuns,
                                   now: Instant, waitLimit: TimeSpan) -> AnswerAlone {
        guard serving else { return .withhold(why: "this node's server is being replaced or fenced") }
        guard !peer.selfIsolated else { return .withhold(why: "this node is isolated: it fences its own servers") }
        if now - min(now, agent.lastRan) > PeerLiveness.runGapLimit {
            return .withhold(why: "this agent has just run again after not running: the peer may have taken the export over meanwhile")
        }
        if let resumed = agent.resumedAt, now - min(now, resumed) < waitLimit {
            return .withhold(why: "this agent did not run for a while: the peer may have taken the export over meanwhile; "
                + "a newer server or a fence reaches this node within the wait limit if it did")
        }
        if peer.foundGoneAt != nil { return .consent }
        guard peer.heardOnSomePath else {
            return .withhold(why: "the peer is not heard: its diagnosis decides (the peer gone: no standby to wait for; this node isolated: it fences itself)")
        }
        return .askPeer
    }

    public enum Outdate: Hashable, Sendable {
        /// Stop watching the server, end the replica's session with it, and
        /// begin no swap until its next session has caught the replica up.
        case standDown
        case refuse(why: String)
    }

    /// The peer's agent asks this node to let its server of `epoch` answer
    /// without this node's replica (DRBD's outdate-peer). Refused while a
    /// swap of the export runs here (it may take the export over without the
    /// fence being answered), or when this node knows a newer epoch.
    public static func outdate(swapUnderWay: Bool, ownEpoch: UInt64, asked epoch: UInt64) -> Outdate {
        if swapUnderWay { return .refuse(why: "a swap of the export is under way on this node: it may take the export over") }
        if ownEpoch > epoch { return .refuse(why: "this node knows epoch \(ownEpoch), newer than the asking server's \(epoch)") }
        return .standDown
    }

    /// How often a server that exits on its own is started again here: after
    /// `delay`, at most `maxRestarts` times within `window` (a crash loop
    /// stops). Without restarts, a server that crashes while no monitor
    /// watches it (the peer gone, or catching up after a swap) would leave
    /// the export unserved.
    public struct Restarts: Hashable, Sendable {
        public static let delay = TimeSpan.milliseconds(1000)
        public static let maxRestarts = 3
        public static let window = TimeSpan.milliseconds(60_000)

        private var recent: [Instant] = []

        public init() {}

        /// The server exited at `now`: whether to start it again (after `delay`).
        public mutating func exited(at now: Instant) -> Bool {
            recent.removeAll { now - min(now, $0) >= Self.window }
            guard recent.count < Self.maxRestarts else { return false }
            recent.append(now)
            return true
        }
    }
}

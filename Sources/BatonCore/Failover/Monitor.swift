/// The timings of one monitor (DESIGN.md §8). Read from configuration, so a
/// bad combination is an operating error with a message, not a crash.
public struct MonitorTimings: Hashable, Sendable {
    /// A challenge goes out this often.
    public var probeInterval: TimeSpan
    /// A challenge answered later than this after it was sent is a miss.
    public var probeDeadline: TimeSpan
    /// This many misses in a row declare the server failed.
    public var probeMisses: Int
    /// No heartbeat for longer than this declares the server failed.
    public var heartbeatGrace: TimeSpan
    /// Ticks further apart than this mean the *monitor* was not running
    /// (stalled, or its node starved): what it missed meanwhile is not held
    /// against the server.
    public var tickGapLimit: TimeSpan

    public static let defaults = try! MonitorTimings(
        probeInterval: .milliseconds(100), probeDeadline: .milliseconds(200), probeMisses: 3,
        heartbeatGrace: .milliseconds(500), tickGapLimit: .milliseconds(250))

    /// Probes outstanding at once are bounded by the deadline over the interval; this caps that ratio.
    public static let maxOutstandingProbes = 16
    public static let maxProbeMisses = 100

    public enum Invalid: Error, Hashable, Sendable {
        case zeroInterval
        case probeMissesOutOfRange(Int)
        /// More probes than `maxOutstandingProbes` would be in flight at once.
        case deadlineTooLongForInterval
        /// The monitor would call its own gaps the server's: a tick gap must exceed the probe interval.
        case tickGapLimitNotAboveInterval
    }

    public init(probeInterval: TimeSpan, probeDeadline: TimeSpan, probeMisses: Int, heartbeatGrace: TimeSpan,
                tickGapLimit: TimeSpan) throws(Invalid) {
        guard probeInterval > .zero, probeDeadline > .zero, heartbeatGrace > .zero else { throw .zeroInterval }
        guard (1...Self.maxProbeMisses).contains(probeMisses) else { throw .probeMissesOutOfRange(probeMisses) }
        guard probeDeadline.nanoseconds / probeInterval.nanoseconds < UInt64(Self.maxOutstandingProbes) else {
            throw .deadlineTooLongForInterval
        }
        guard tickGapLimit > probeInterval else { throw .tickGapLimitNotAboveInterval }
        self.probeInterval = probeInterval
        self.probeDeadline = probeDeadline
        self.probeMisses = probeMisses
        self.heartbeatGrace = heartbeatGrace
        self.tickGapLimit = tickGapLimit
    }
}

/// Watches one export server from the standby node (DESIGN.md §2 "Monitor",
/// §5 step 1) in two ways: challenges answered through the server's request
/// path, and the server's heartbeats. It decides, it does not act: declaring
/// the server failed is the start of a `Swap`, run by the caller.
public struct Monitor: Sendable {
    public enum Event: Hashable, Sendable {
        /// Start watching the server of `epoch` (the monitor is placed, or the export started).
        case started(epoch: UInt64)
        /// Stop watching: the export moved, or the swap took over.
        case stopped
        /// Time passed. `freshKey` is the key for a probe if one is due: the
        /// caller draws it from its random source, so tests stay deterministic.
        case tick(freshKey: [UInt8])
        /// The server answered a challenge, claiming `epoch` and `journalSequence`.
        case probeAnswered(key: [UInt8], epoch: UInt64, journalSequence: UInt64, response: [UInt8])
        /// A server heartbeat arrived. Only its epoch is judged; the position is the wire's, for the runtime's metrics.
        case heartbeatReceived(epoch: UInt64, journalSequence: UInt64)
    }

    public enum Action: Hashable, Sendable {
        /// Send this challenge to the server, through its request path.
        case sendProbe(key: [UInt8])
        /// A challenge came back in time and right: its round trip, for metrics.
        case reportRoundTrip(TimeSpan)
        /// The server is failed: start the swap (DESIGN.md §5 step 2).
        case declareFailed(FailureReason)
        /// A correctly keyed answer claimed a newer epoch: another promotion
        /// happened without this monitor, which is stale and must fence no one.
        case standDown(newerEpoch: UInt64)
    }

    public enum FailureReason: Hashable, Sendable {
        /// `count` challenges in a row went unanswered within the deadline.
        case probesMissed(count: Int)
        /// A run of misses in which at least `wrong` answers came back with a
        /// bad MAC: the process answers but is not the server of this export
        /// and epoch (wrong secret, wrong export, corrupted state).
        case wrongResponses(count: Int, wrong: Int)
        /// No heartbeat for `silence`, over the grace.
        case heartbeatGap(silence: TimeSpan)
        /// A correctly keyed answer claimed an epoch older than the watched one:
        /// a fenced server is answering in the place of the current one.
        case olderEpochSeen(UInt64)
    }

    /// A challenge in flight.
    struct Probe: Hashable, Sendable {
        var number: UInt64
        var key: [UInt8]
        var sentAt: Instant
    }

    /// What the monitor keeps while it watches a server.
    struct Watch: Hashable, Sendable {
        var epoch: UInt64
        var outstanding: [Probe] = []
        var nextProbeNumber: UInt64 = 0
        var nextProbeAt: Instant
        /// The highest probe number answered right; a miss of an older probe says nothing new.
        var lastAnsweredNumber: UInt64?
        var consecutiveMisses = 0
        var wrongInRun = 0
        var lastHeartbeatAt: Instant
        var lastTickAt: Instant
    }

    enum State: Hashable, Sendable {
        /// Not watching any server.
        case idle
        /// Probing the server of an epoch and listening for its heartbeats.
        case watching(Watch)
        /// Declared the server failed; quiet until stopped, because the swap owns the export now.
        case declared(FailureReason)
        /// Saw a newer epoch; quiet until stopped, because another node promoted.
        case stoodDown(newerEpoch: UInt64)
    }

    public let timings: MonitorTimings
    private let authenticator: MessageAuthenticator
    private(set) var state: State = .idle

    public init(authenticator: MessageAuthenticator, timings: MonitorTimings = .defaults) {
        self.authenticator = authenticator
        self.timings = timings
    }

    public var isWatching: Bool {
        if case .watching = state { return true }
        return false
    }

    public mutating func handle(_ event: Event, at now: Instant) -> [Action] {
        switch (state, event) {
        case (.idle, .started(let epoch)):
            // The server gets a full grace from the start: it may still be replaying.
            state = .watching(Watch(epoch: epoch, nextProbeAt: now, lastHeartbeatAt: now, lastTickAt: now))
            return []
        case (.watching, .started), (.declared, .started), (.stoodDown, .started):
            preconditionFailure("monitor started twice without a stop (state \(state))")
        case (_, .stopped):
            state = .idle
            return []
        case (.idle, _), (.declared, _), (.stoodDown, _):
            // Answers and heartbeats in flight when the monitor stopped or declared.
            return []
        case (.watching(var watch), .tick(let freshKey)):
            let actions = tick(&watch, freshKey: freshKey, at: now)
            if case .watching = state { state = .watching(watch) }
            return actions
        case (.watching(var watch), .probeAnswered(let key, let epoch, let sequence, let response)):
            let actions = answer(&watch, key: key, epoch: epoch, journalSequence: sequence, response: response, at: now)
            if case .watching = state { state = .watching(watch) }
            return actions
        case (.watching(var watch), .heartbeatReceived(let epoch, _)):
            // Heartbeats carry no MAC: one of another epoch is not life, but
            // neither is it proof enough to fence or stand down. The
            // authenticated challenge decides that.
            guard epoch == watch.epoch else { return [] }
            watch.lastHeartbeatAt = max(watch.lastHeartbeatAt, now)
            state = .watching(watch)
            return []
        }
    }

    private mutating func tick(_ watch: inout Watch, freshKey: [UInt8], at now: Instant) -> [Action] {
        if now - watch.lastTickAt > timings.tickGapLimit {
            // The monitor itself did not run: its probes' answers may sit unread
            // in a socket buffer and heartbeats with them. Start the watch over
            // rather than fence a server for the monitor's own stall.
            watch.outstanding.removeAll()
            watch.consecutiveMisses = 0
            watch.wrongInRun = 0
            watch.lastHeartbeatAt = now
            watch.nextProbeAt = now
        }
        watch.lastTickAt = now
        while let oldest = watch.outstanding.first, now - oldest.sentAt > timings.probeDeadline {
            watch.outstanding.removeFirst()
            if let reason = miss(&watch, number: oldest.number, wrong: false) { return declare(reason) }
        }
        let silence = now - watch.lastHeartbeatAt
        if silence > timings.heartbeatGrace { return declare(.heartbeatGap(silence: silence)) }
        guard now >= watch.nextProbeAt else { return [] }
        precondition(freshKey.count == ChallengeMAC.keyBytes, "probe key of \(freshKey.count) bytes")
        precondition(!watch.outstanding.contains { $0.key == freshKey }, "probe key reused: the key source is not random")
        precondition(watch.outstanding.count < MonitorTimings.maxOutstandingProbes)
        watch.outstanding.append(Probe(number: watch.nextProbeNumber, key: freshKey, sentAt: now))
        watch.nextProbeNumber += 1
        // From now, not from the missed slot: a late tick sends one probe, not a burst.
        watch.nextProbeAt = now + timings.probeInterval
        return [.sendProbe(key: freshKey)]
    }

    private mutating func answer(_ watch: inout Watch, key: [UInt8], epoch: UInt64, journalSequence: UInt64,
                                 response: [UInt8], at now: Instant) -> [Action] {
        // Unknown keys are answers to probes already counted as missed (late) or already answered (duplicates).
        guard let index = watch.outstanding.firstIndex(where: { $0.key == key }) else { return [] }
        let probe = watch.outstanding.remove(at: index)
        let expected = ChallengeMAC.response(authenticator, key: key, epoch: epoch, journalSequence: journalSequence)
        guard MessageAuthenticator.matches(expected, response) else {
            if let reason = miss(&watch, number: probe.number, wrong: true) { return declare(reason) }
            return []
        }
        // The MAC is right, so the epoch is what the server really holds.
        if let verdict = judge(epoch: epoch, of: watch) { return verdict }
        watch.lastAnsweredNumber = max(watch.lastAnsweredNumber ?? 0, probe.number)
        watch.consecutiveMisses = 0
        watch.wrongInRun = 0
        return [.reportRoundTrip(now - probe.sentAt)]
    }

    /// Counts a miss; the failure reason when the run is long enough.
    private func miss(_ watch: inout Watch, number: UInt64, wrong: Bool) -> FailureReason? {
        // A later probe was answered: the server showed life after this one was sent.
        if let answered = watch.lastAnsweredNumber, number < answered { return nil }
        watch.consecutiveMisses += 1
        if wrong { watch.wrongInRun += 1 }
        guard watch.consecutiveMisses >= timings.probeMisses else { return nil }
        return watch.wrongInRun > 0
            ? .wrongResponses(count: watch.consecutiveMisses, wrong: watch.wrongInRun)
            : .probesMissed(count: watch.consecutiveMisses)
    }

    /// The verdict on a claimed epoch, or nil when it is the watched one.
    private mutating func judge(epoch: UInt64, of watch: Watch) -> [Action]? {
        if epoch < watch.epoch { return declare(.olderEpochSeen(epoch)) }
        if epoch > watch.epoch {
            state = .stoodDown(newerEpoch: epoch)
            return [.standDown(newerEpoch: epoch)]
        }
        return nil
    }

    private mutating func declare(_ reason: FailureReason) -> [Action] {
        state = .declared(reason)
        return [.declareFailed(reason)]
    }
}

extension Monitor.FailureReason: CustomStringConvertible {
    /// For logs and `baton status`: what the monitor saw, in words.
    public var description: String {
        switch self {
        case .probesMissed(let count): "\(count) challenges in a row unanswered"
        case .wrongResponses(let count, let wrong): "\(count) challenges in a row unanswered, \(wrong) with a wrong response"
        case .heartbeatGap(let silence): "no heartbeat for \(silence.nanoseconds / 1_000_000) ms"
        case .olderEpochSeen(let epoch): "a server of the older epoch \(epoch) answered"
        }
    }
}

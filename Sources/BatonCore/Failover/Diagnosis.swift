/// One of a node's two network paths: NIC n on switch n (DESIGN.md §6, §9).
public enum NetworkPath: Int, CaseIterable, Hashable, Sendable {
    case first = 1
    case second = 2

    /// The other of the two paths.
    public var other: NetworkPath { self == .first ? .second : .first }
}

/// What one probe of the ladder found.
public enum Reach: Hashable, Sendable {
    /// Not probed (yet).
    case unknown
    case reached
    /// No answer within the stage deadline, or a definite failure (host unreachable).
    case unreached
}

/// One value per network path.
public struct PerPath<Value: Hashable & Sendable>: Hashable, Sendable {
    public var first: Value
    public var second: Value

    public init(_ first: Value, _ second: Value) {
        self.first = first
        self.second = second
    }

    public subscript(path: NetworkPath) -> Value {
        get { path == .first ? first : second }
        set { if path == .first { first = newValue } else { second = newValue } }
    }
}

/// Something the ladder probes.
public enum DiagnosisTarget: Hashable, Sendable {
    /// Rung 1: the peer agent's heartbeat/admin port, over one path.
    case peerAgent(NetworkPath)
    /// Rung 2: the peer's kernel (ICMP echo, or a TCP connect to a port with
    /// no listener, which the kernel resets even when every process is stalled).
    case peerOperatingSystem
    /// Rung 3: the peer's NIC address on one path.
    case peerNIC(NetworkPath)
    /// Rung 4: a switch's management address, reached from this node.
    case networkSwitch(NetworkPath)
}

/// Everything the ladder found so far.
public struct DiagnosisFindings: Hashable, Sendable {
    public var peerAgent = PerPath(Reach.unknown, .unknown)
    public var peerOperatingSystem = Reach.unknown
    public var peerNIC = PerPath(Reach.unknown, .unknown)
    public var networkSwitch = PerPath(Reach.unknown, .unknown)

    public init() {}

    public subscript(target: DiagnosisTarget) -> Reach {
        get {
            switch target {
            case .peerAgent(let path): peerAgent[path]
            case .peerOperatingSystem: peerOperatingSystem
            case .peerNIC(let path): peerNIC[path]
            case .networkSwitch(let path): networkSwitch[path]
            }
        }
        set {
            switch target {
            case .peerAgent(let path): peerAgent[path] = newValue
            case .peerOperatingSystem: peerOperatingSystem = newValue
            case .peerNIC(let path): peerNIC[path] = newValue
            case .networkSwitch(let path): networkSwitch[path] = newValue
            }
        }
    }
}

/// The outcome of the ladder: the rows of the table in DESIGN.md §6.
public enum DiagnosisVerdict: Hashable, Sendable {
    /// The peer agent answers on every path: nothing is wrong with the peer node.
    case allHealthy
    /// The peer's NIC on this path is down (the switch answers): use the other path; no failover.
    case peerNICDown(NetworkPath)
    /// The switch of this path (or this node's own NIC on it) is down: use the other path; no failover.
    case switchDown(NetworkPath)
    /// Switch and peer NIC of this path answer, the agent does not on it (a
    /// firewall, or the agent's listener on that address): use the other path; no failover.
    case pathDown(NetworkPath)
    /// The peer's kernel answers, its agent on no path: take over its exports
    /// after fencing them through the OS-level path if possible; raise an alarm.
    case peerAgentDown
    /// Nothing of the peer answers, a switch does: the peer is dead or isolated; take over after `takeoverDelay`.
    case peerDeadOrIsolated
    /// This node reaches no switch: it is the isolated one and self-fences within `selffenceDelay`.
    case selfIsolated
}

/// The ladder of DESIGN.md §6 as a pure function: from the findings so far,
/// either the next probes or the verdict. Rungs are climbed only as far as
/// the answer needs: when the agent answers on one path, only that path's
/// NIC and switch are probed; when it answers on none, the peer's kernel,
/// then its NICs one by one, then the switches one by one.
public enum DiagnosisLadder {
    public enum Step: Hashable, Sendable {
        case probe([DiagnosisTarget])
        case verdict(DiagnosisVerdict)
    }

    /// The most probe rounds the ladder can take: both agent paths at once,
    /// the kernel, NIC 1, NIC 2, switch 1, switch 2. Bounds its duration.
    public static let maxRounds = 6

    public static func step(_ findings: DiagnosisFindings) -> Step {
        let unprobedAgentPaths = NetworkPath.allCases.filter { findings.peerAgent[$0] == .unknown }
        if !unprobedAgentPaths.isEmpty { return .probe(unprobedAgentPaths.map { .peerAgent($0) }) }
        let failedPaths = NetworkPath.allCases.filter { findings.peerAgent[$0] == .unreached }
        guard let failed = failedPaths.first else { return .verdict(.allHealthy) }
        if failedPaths.count < NetworkPath.allCases.count {
            // The peer is alive and reachable: find out what broke on the failed path.
            switch findings.peerNIC[failed] {
            case .unknown: return .probe([.peerNIC(failed)])
            case .reached: return .verdict(.pathDown(failed))
            case .unreached:
                switch findings.networkSwitch[failed] {
                case .unknown: return .probe([.networkSwitch(failed)])
                case .reached: return .verdict(.peerNICDown(failed))
                case .unreached: return .verdict(.switchDown(failed))
                }
            }
        }
        switch findings.peerOperatingSystem {
        case .unknown: return .probe([.peerOperatingSystem])
        case .reached: return .verdict(.peerAgentDown)
        case .unreached: break
        }
        for path in NetworkPath.allCases {
            switch findings.peerNIC[path] {
            case .unknown: return .probe([.peerNIC(path)])
            // A NIC address answering is the peer's kernel answering.
            case .reached: return .verdict(.peerAgentDown)
            case .unreached: continue
            }
        }
        for path in NetworkPath.allCases {
            switch findings.networkSwitch[path] {
            case .unknown: return .probe([.networkSwitch(path)])
            case .reached: return .verdict(.peerDeadOrIsolated)
            case .unreached: continue
            }
        }
        return .verdict(.selfIsolated)
    }
}

/// The timings of the ladder and its delays. The two delays are counted from
/// the moment the peer was *last heard*, not from the verdict: the isolated
/// node climbs one rung more than its peer, and both nodes last heard each
/// other within one heartbeat interval, so measuring from there is what lets
/// the isolated node be fenced before its peer takes over (DESIGN.md §6: "The
/// last two rows together keep a two-node cluster from split brain without a
/// third machine").
public struct DiagnosisTimings: Hashable, Sendable {
    /// One round of probes waits this long for answers; silence counts as unreached.
    public var roundDeadline: TimeSpan
    /// Agents send heartbeats this often on each path (DESIGN.md §8: 200 ms).
    public var agentHeartbeatInterval: TimeSpan
    /// Heartbeats missing this long start the ladder (DESIGN.md §8: 1 s).
    public var agentHeartbeatGrace: TimeSpan
    /// An isolated node has stopped its servers by last-heard + this.
    public var selffenceDelay: TimeSpan
    /// A node takes over a dead or isolated peer's exports at last-heard + this.
    public var takeoverDelay: TimeSpan

    public static let defaults = try! DiagnosisTimings(
        roundDeadline: .milliseconds(100), agentHeartbeatInterval: .milliseconds(200),
        agentHeartbeatGrace: .milliseconds(1000), selffenceDelay: .milliseconds(1800),
        takeoverDelay: .milliseconds(2500))

    public enum Invalid: Error, Hashable, Sendable {
        case zeroDeadline
        /// DESIGN.md §6: `selffence_delay` < `takeover_delay`, or both nodes may serve.
        case selffenceNotBeforeTakeover
        /// The grace plus the longest ladder must fit in `selffenceDelay`, or the verdict comes too late.
        case ladderLongerThanSelffenceDelay
        /// The nodes last heard each other up to one heartbeat interval apart:
        /// the delays must differ by more than that.
        case delaysCloserThanHeartbeatInterval
    }

    public init(roundDeadline: TimeSpan, agentHeartbeatInterval: TimeSpan, agentHeartbeatGrace: TimeSpan,
                selffenceDelay: TimeSpan, takeoverDelay: TimeSpan) throws(Invalid) {
        guard roundDeadline > .zero, agentHeartbeatInterval > .zero else { throw .zeroDeadline }
        guard selffenceDelay < takeoverDelay else { throw .selffenceNotBeforeTakeover }
        guard agentHeartbeatGrace + roundDeadline * DiagnosisLadder.maxRounds <= selffenceDelay else {
            throw .ladderLongerThanSelffenceDelay
        }
        guard selffenceDelay + agentHeartbeatInterval < takeoverDelay else { throw .delaysCloserThanHeartbeatInterval }
        self.roundDeadline = roundDeadline
        self.agentHeartbeatInterval = agentHeartbeatInterval
        self.agentHeartbeatGrace = agentHeartbeatGrace
        self.selffenceDelay = selffenceDelay
        self.takeoverDelay = takeoverDelay
    }
}

/// Runs the ladder for one peer: sends each round of probes, times them out,
/// and applies the delays of the verdict. The node agent starts it when the
/// peer's heartbeats stop, and a swap starts it when the peer agent does not
/// answer a fence request.
public struct Diagnosis: Sendable {
    public enum Event: Hashable, Sendable {
        /// The peer went silent; `lastHeard` is when it was last heard on any path.
        case heartbeatsLost(lastHeard: Instant)
        case probeAnswered(DiagnosisTarget)
        /// A definite failure before the deadline (host unreachable, no route).
        case probeFailed(DiagnosisTarget)
        case tick
        /// The peer's heartbeats are back.
        case peerHeard
    }

    public enum Action: Hashable, Sendable {
        case probe(DiagnosisTarget)
        /// The verdict, when it is to be acted on (for `peerDeadOrIsolated`, once the takeover delay passed).
        case decided(DiagnosisVerdict)
        /// The peer is dead or isolated; this node takes over at this instant unless the peer is heard first.
        case awaitingTakeover(at: Instant)
        /// Stop every export server of this node now.
        case selfFence
    }

    struct Probing: Hashable, Sendable {
        var findings = DiagnosisFindings()
        var outstanding: Set<DiagnosisTarget> = []
        var roundDeadlineAt: Instant
        var rounds = 0
        var lastHeard: Instant
    }

    enum State: Hashable, Sendable {
        /// The peer is heard, or the last verdict needed no waiting.
        case idle
        /// Climbing the ladder: one round of probes outstanding.
        case probing(Probing)
        /// The peer is dead or isolated: waiting for the takeover instant, unless it is heard first.
        case awaitingTakeover(at: Instant)
        /// This node was isolated and stopped its servers; waits to hear the peer again.
        case selfFenced
    }

    public let timings: DiagnosisTimings
    private(set) var state: State = .idle
    /// The last findings, for `baton diagnose`.
    public private(set) var findings = DiagnosisFindings()

    public init(timings: DiagnosisTimings = .defaults) { self.timings = timings }

    public mutating func handle(_ event: Event, at now: Instant) -> [Action] {
        switch (state, event) {
        case (.idle, .heartbeatsLost(let lastHeard)):
            precondition(lastHeard <= now, "peer last heard in the future")
            return climb(Probing(roundDeadlineAt: now, lastHeard: lastHeard), at: now)
        case (_, .heartbeatsLost):
            // Already climbing, waiting or fenced: the first loss started it.
            return []
        case (.probing(var probing), .probeAnswered(let target)), (.probing(var probing), .probeFailed(let target)):
            // Answers to a round already timed out are late: the finding stands.
            guard probing.outstanding.remove(target) != nil else { return [] }
            if case .probeAnswered = event { probing.findings[target] = .reached } else { probing.findings[target] = .unreached }
            if !probing.outstanding.isEmpty {
                state = .probing(probing)
                return []
            }
            return climb(probing, at: now)
        case (.probing(var probing), .tick):
            guard now >= probing.roundDeadlineAt else { return [] }
            for target in probing.outstanding { probing.findings[target] = .unreached }
            probing.outstanding.removeAll()
            return climb(probing, at: now)
        case (.awaitingTakeover(let takeoverAt), .tick):
            guard now >= takeoverAt else { return [] }
            state = .idle
            return [.decided(.peerDeadOrIsolated)]
        case (.probing, .peerHeard), (.awaitingTakeover, .peerHeard):
            // Heard again before acting: whoever waits on the verdict retries the ordinary way.
            state = .idle
            return [.decided(.allHealthy)]
        case (.selfFenced, .peerHeard):
            state = .idle
            return []
        case (.idle, _), (.awaitingTakeover, _), (.selfFenced, _):
            // Late probe answers, ticks with nothing to time, heartbeats of a peer never lost.
            return []
        }
    }

    private mutating func climb(_ probing: Probing, at now: Instant) -> [Action] {
        var probing = probing
        switch DiagnosisLadder.step(probing.findings) {
        case .probe(let targets):
            precondition(probing.rounds < DiagnosisLadder.maxRounds, "the ladder climbed past its last rung")
            probing.rounds += 1
            probing.outstanding = Set(targets)
            probing.roundDeadlineAt = now + timings.roundDeadline
            state = .probing(probing)
            return targets.map { .probe($0) }
        case .verdict(let verdict):
            findings = probing.findings
            switch verdict {
            case .peerDeadOrIsolated:
                let takeoverAt = max(now, probing.lastHeard + timings.takeoverDelay)
                state = .awaitingTakeover(at: takeoverAt)
                return [.awaitingTakeover(at: takeoverAt)]
            case .selfIsolated:
                state = .selfFenced
                return [.selfFence, .decided(.selfIsolated)]
            case .allHealthy, .peerNICDown, .switchDown, .pathDown, .peerAgentDown:
                state = .idle
                return [.decided(verdict)]
            }
        }
    }
}

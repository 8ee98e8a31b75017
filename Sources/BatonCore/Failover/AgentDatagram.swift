/// What agents send each other over every network path (DESIGN.md §6): UDP
/// datagrams, each carrying an HMAC under the cluster's shared secret so that
/// nothing but a peer holding it can make a node believe its peer is alive.
public enum AgentDatagram: Hashable, Sendable {
    /// "I am alive", sent every `agent_heartbeat_interval_ms` on each path.
    /// `incarnation` is new at each agent start; `sequence` grows within one.
    case heartbeat(node: String, incarnation: UInt64, sequence: UInt64)
    /// Rung 1 of the ladder: does the peer's agent answer on this path? An
    /// answer needs the agent to run: a stalled agent's kernel does not echo it.
    case probe(node: String, nonce: UInt64)
    case probeAnswer(node: String, nonce: UInt64)

    private enum Tag: UInt8 { case heartbeat = 1, probe, probeAnswer }

    /// The sender's node name.
    public var node: String {
        switch self {
        case .heartbeat(let node, _, _), .probe(let node, _), .probeAnswer(let node, _): node
        }
    }

    /// Far below any path MTU: one datagram, never fragmented.
    public static let maxBytes = 512

    public func encode(_ authenticator: MessageAuthenticator) -> [UInt8] {
        var w = ByteWriter(capacity: 96)
        switch self {
        case .heartbeat(let node, let incarnation, let sequence):
            w.write(Tag.heartbeat.rawValue); w.write(node); w.write(incarnation); w.write(sequence)
        case .probe(let node, let nonce): w.write(Tag.probe.rawValue); w.write(node); w.write(nonce)
        case .probeAnswer(let node, let nonce): w.write(Tag.probeAnswer.rawValue); w.write(node); w.write(nonce)
        }
        return w.bytes + authenticator.code(w.bytes)
    }

    public enum Refusal: Error, Hashable, Sendable {
        /// Too short, too long, or not a datagram of this version.
        case malformed(String)
        /// The code does not match: not sent by a holder of the shared secret, or altered.
        case unauthenticated
    }

    public static func decode(_ bytes: [UInt8], _ authenticator: MessageAuthenticator) throws(Refusal) -> AgentDatagram {
        let codeBytes = MessageAuthenticator.codeBytes
        guard bytes.count > codeBytes, bytes.count <= maxBytes else {
            throw .malformed("\(bytes.count) bytes, expected \(codeBytes + 1) to \(maxBytes)")
        }
        let body = Array(bytes.dropLast(codeBytes))
        // Compared in full whatever differs first: the time says nothing of the code.
        guard MessageAuthenticator.matches(authenticator.code(body), bytes.suffix(codeBytes)) else { throw .unauthenticated }
        do {
            return try ByteReader.decode(body) { r throws(DecodeError) -> AgentDatagram in
                let raw = try r.readUInt8()
                let node = try r.readString(limit: 255, kind: "node name")
                let datagram: AgentDatagram
                switch Tag(rawValue: raw) {
                case .heartbeat: datagram = .heartbeat(node: node, incarnation: try r.readUInt64(), sequence: try r.readUInt64())
                case .probe: datagram = .probe(node: node, nonce: try r.readUInt64())
                case .probeAnswer: datagram = .probeAnswer(node: node, nonce: try r.readUInt64())
                case nil: throw .unknownTag(kind: "agent datagram", tag: UInt32(raw))
                }
                try r.expectEnd()
                return datagram
            }
        } catch {
            throw .malformed("\(error)")
        }
    }
}

/// When the peer was last heard on each network path, and so when the
/// diagnostic ladder must start (DESIGN.md §6: "When heartbeats from a peer
/// stop on a path, the agent finds out why before it acts").
public struct PeerLiveness: Sendable {
    public let grace: TimeSpan
    /// Per path; the agent's start counts as heard, so that a peer that never
    /// answers is diagnosed after one grace too.
    public private(set) var lastHeard: PerPath<Instant>
    private var incarnation: UInt64?
    /// Per path: a heartbeat goes out on every path with one sequence.
    private var lastSequence = PerPath<UInt64>(0, 0)
    /// The silent paths when the ladder last started: the same silence is diagnosed once.
    private var diagnosedSilence: [NetworkPath] = []

    public init(grace: TimeSpan, startedAt: Instant) {
        self.grace = grace
        lastHeard = PerPath(startedAt, startedAt)
    }

    /// When the peer was last heard on any path.
    public var lastHeardOnAnyPath: Instant { max(lastHeard.first, lastHeard.second) }

    /// A heartbeat arrived on `path`. Returns false for a replayed or
    /// reordered one: not newer than the last on that path from the same
    /// agent run, or from an earlier run. Incarnations only grow (an agent
    /// takes one above its last, `AgentIncarnation`): a recording of an
    /// earlier run, replayed once the peer is dead, would otherwise keep it
    /// alive here for as long as the recording lasts.
    public mutating func heard(_ path: NetworkPath, incarnation: UInt64, sequence: UInt64, at now: Instant) -> Bool {
        if let current = self.incarnation, incarnation < current { return false }
        if incarnation != self.incarnation {
            self.incarnation = incarnation
            lastSequence = PerPath(0, 0)
        }
        guard sequence > lastSequence[path] else { return false }
        lastSequence[path] = sequence
        lastHeard[path] = max(lastHeard[path], now)
        return true
    }

    /// A gap this long between two runs of the agent (stopped, its node
    /// frozen or starved) is the agent's own silence, not the peer's.
    public static let runGapLimit = TimeSpan.milliseconds(500)

    /// The agent runs again after not running since `lastRan`: what it did
    /// not hear meanwhile says nothing of the peer, so every path counts as
    /// heard now and the delays (self-fence, takeover) count from here. The
    /// seeded simulation's seed 1780: an agent frozen for 6 s woke up and
    /// took over at once a peer that had been cut off for only 0.7 s, which
    /// had not stopped its server yet. Returns whether there was a gap.
    @discardableResult
    public mutating func ran(at now: Instant, lastRan: Instant) -> Bool {
        guard now - min(now, lastRan) > Self.runGapLimit else { return false }
        lastHeard = PerPath(max(lastHeard.first, now), max(lastHeard.second, now))
        return true
    }

    /// The paths silent for longer than the grace.
    public func silentPaths(at now: Instant) -> [NetworkPath] {
        NetworkPath.allCases.filter { now - min(now, lastHeard[$0]) > grace }
    }

    /// Whether the ladder should start now: some path has been silent for
    /// the grace, and the silence changed since the ladder last ran. Returns
    /// when the peer was last heard on any path (the delays count from there).
    public mutating func silenceToDiagnose(at now: Instant) -> Instant? {
        let silent = silentPaths(at: now)
        defer { diagnosedSilence = silent }
        guard !silent.isEmpty, silent != diagnosedSilence else { return nil }
        return lastHeardOnAnyPath
    }
}

/// Each run of an agent has an incarnation above its last run's, so that a
/// peer can refuse heartbeats recorded from an earlier run (`PeerLiveness`).
public enum AgentIncarnation {
    /// The clock's nanoseconds, or one above `last` when the clock is behind it
    /// (set back between two runs). `last` is what the previous run kept on disk.
    public static func next(after last: UInt64?, clockNanoseconds: UInt64) -> UInt64 {
        guard let last else { return clockNanoseconds }
        return max(clockNanoseconds, last == .max ? .max : last + 1)
    }
}

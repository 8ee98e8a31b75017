/// What `baton status` and `baton diagnose` show, as types: an agent's
/// answer to the `status` request (`AgentStatus`), and the cluster's view an
/// admin command joins from every agent's (`ClusterStatus`). The JSON keys
/// are the snake_case of the property names, written out (scripts and tests
/// read them; a key strategy would also rename dictionary keys such as the
/// ladder's `peer_agent_1`).
public struct AgentStatus: Codable, Hashable, Sendable {
    public var node: String
    public var exports: [ExportStatus]
    public var peer: PeerStatus

    public init(node: String, exports: [ExportStatus], peer: PeerStatus) {
        self.node = node
        self.exports = exports
        self.peer = peer
    }
}

/// One export as one node sees it.
public struct ExportStatus: Codable, Hashable, Sendable {
    public enum Role: String, Codable, Hashable, Sendable, CaseIterable {
        case starting
        case selfFenced = "self-fenced"
        case waitingForPeer = "waiting for the peer"
        case swapping
        case takingOver = "taking over"
        case server
        case standby

        /// A node in these roles serves the export now or in a moment (a
        /// swap under way): a node that starts then must not serve it too.
        public var serves: Bool { [.server, .swapping, .takingOver].contains(self) }
    }

    public struct Server: Codable, Hashable, Sendable {
        public var node: String
        public var address: String
        public var pid: Int

        public init(node: String, address: String, pid: Int) {
            self.node = node
            self.address = address
            self.pid = pid
        }
    }

    public struct Monitor: Codable, Hashable, Sendable {
        public var node: String
        /// Known on the standby's node only: its monitor probes the server.
        public var watching: Bool?

        public init(node: String, watching: Bool? = nil) {
            self.node = node
            self.watching = watching
        }
    }

    /// A node that waits for its peer before it serves, why, and the command that serves without it.
    public struct Waiting: Codable, Hashable, Sendable {
        public var node: String
        public var why: String
        public var force: String

        public init(node: String, why: String, force: String) {
            self.node = node
            self.why = why
            self.force = force
        }
    }

    /// A copy of the server's data to a standby that came back, under way.
    public struct CatchUp: Codable, Hashable, Sendable {
        public var kind: String
        public var receivedBytes: Int
        public var expectedBytes: Int

        enum CodingKeys: String, CodingKey {
            case kind, receivedBytes = "received_bytes", expectedBytes = "expected_bytes"
        }

        public init(kind: String, receivedBytes: Int, expectedBytes: Int) {
            self.kind = kind
            self.receivedBytes = receivedBytes
            self.expectedBytes = expectedBytes
        }
    }

    /// The last such copy, installed.
    public struct CatchUpDone: Codable, Hashable, Sendable {
        public var kind: String
        public var sequence: Int
        public var receivedBytes: Int
        /// Records the standby had that the server never acknowledged (a partial copy).
        public var droppedRecords: Int?

        enum CodingKeys: String, CodingKey {
            case kind, sequence, receivedBytes = "received_bytes", droppedRecords = "dropped_records"
        }

        public init(kind: String, sequence: Int, receivedBytes: Int, droppedRecords: Int?) {
            self.kind = kind
            self.sequence = sequence
            self.receivedBytes = receivedBytes
            self.droppedRecords = droppedRecords
        }
    }

    public struct Failover: Codable, Hashable, Sendable {
        /// ISO 8601, UTC: two nodes' times sort as text.
        public var at: String
        public var reason: String

        public init(at: String, reason: String) {
            self.at = at
            self.reason = reason
        }
    }

    public var name: String
    public var node: String
    public var role: Role
    public var epoch: Int
    public var server: Server?
    public var monitor: Monitor?
    /// The server answers without its standby (the peer gone, its disk failed, just after a swap).
    public var answeringAlone: Bool?
    public var waiting: Waiting?
    /// The standby's journal position, and the server's as its heartbeats tell it.
    public var sequence: Int?
    public var serverSequence: Int?
    public var lag: Int?
    public var probeRttMs: Double?
    public var catchingUp: CatchUp?
    public var lastCatchUp: CatchUpDone?
    public var lastFailover: Failover?

    enum CodingKeys: String, CodingKey {
        case name, node, role, epoch, server, monitor, answeringAlone = "answering_alone", waiting, sequence
        case serverSequence = "server_sequence", lag, probeRttMs = "probe_rtt_ms", catchingUp = "catching_up"
        case lastCatchUp = "last_catch_up", lastFailover = "last_failover"
    }

    public init(name: String, node: String, role: Role, epoch: Int) {
        self.name = name
        self.node = node
        self.role = role
        self.epoch = epoch
    }
}

/// An agent's view of its peer: each network path and the diagnostic ladder.
public struct PeerStatus: Codable, Hashable, Sendable {
    public struct Path: Codable, Hashable, Sendable {
        public var path: Int
        public var local: String
        public var peer: String
        public var `switch`: String
        public var lastHeardMsAgo: Int
        public var silent: Bool
        /// "up" or "down".
        public var state: String
        public var sinceMsAgo: Int
        /// This node's TCP connections at its address on the path, by what they carry.
        public var connections: [String: Int]
        /// What the path carries now: nothing while it is down (its subflows stay established until they time out).
        public var carries: [String]

        enum CodingKeys: String, CodingKey {
            case path, local, peer, `switch`, lastHeardMsAgo = "last_heard_ms_ago", silent, state
            case sinceMsAgo = "since_ms_ago", connections, carries
        }

        public init(path: Int, local: String, peer: String, switch: String, lastHeardMsAgo: Int, silent: Bool,
                    sinceMsAgo: Int, connections: [String: Int], carries: [String]) {
            self.path = path
            self.local = local
            self.peer = peer
            self.switch = `switch`
            self.lastHeardMsAgo = lastHeardMsAgo
            self.silent = silent
            self.state = silent ? "down" : "up"
            self.sinceMsAgo = sinceMsAgo
            self.connections = connections
            self.carries = carries
        }

        public var isDown: Bool { state == "down" }
    }

    public struct Diagnosis: Codable, Hashable, Sendable {
        public var verdict: String
        public var msAgo: Int
        /// What each rung found, by rung (`peer_agent_1`, `peer_os`, `switch_2`, ...).
        public var findings: [String: String]

        enum CodingKeys: String, CodingKey { case verdict, msAgo = "ms_ago", findings }

        public init(verdict: String, msAgo: Int, findings: [String: String]) {
            self.verdict = verdict
            self.msAgo = msAgo
            self.findings = findings
        }
    }

    public var name: String
    public var paths: [Path]
    public var peerGone: Bool
    public var selfFenced: Bool
    public var diagnosis: Diagnosis?

    enum CodingKeys: String, CodingKey { case name, paths, peerGone = "peer_gone", selfFenced = "self_fenced", diagnosis }

    public init(name: String, paths: [Path], peerGone: Bool, selfFenced: Bool, diagnosis: Diagnosis? = nil) {
        self.name = name
        self.paths = paths
        self.peerGone = peerGone
        self.selfFenced = selfFenced
        self.diagnosis = diagnosis
    }
}

/// The cluster as an admin command sees it: every agent's answer joined.
public struct ClusterStatus: Codable, Hashable, Sendable {
    /// One export: where it is served and monitored, with the facts only one node knows.
    public struct Export: Codable, Hashable, Sendable {
        public struct Journal: Codable, Hashable, Sendable {
            public var server: Int?
            public var standby: Int?
            public var lag: Int?
        }

        public var name: String
        public var epoch: Int = 0
        public var server: ExportStatus.Server?
        public var serverEpoch: Int?
        public var answeringAlone: Bool?
        public var monitor: ExportStatus.Monitor?
        public var journal: Journal?
        public var probeRttMs: Double?
        public var catchingUp: ExportStatus.CatchUp?
        public var lastCatchUp: ExportStatus.CatchUpDone?
        public var lastFailover: ExportStatus.Failover?
        public var waiting: ExportStatus.Waiting?

        enum CodingKeys: String, CodingKey {
            case name, epoch, server, serverEpoch = "server_epoch", answeringAlone = "answering_alone", monitor, journal
            case probeRttMs = "probe_rtt_ms", catchingUp = "catching_up", lastCatchUp = "last_catch_up"
            case lastFailover = "last_failover", waiting
        }

        public init(name: String) { self.name = name }

        /// Joins one node's view into this one.
        public mutating func merge(_ entry: ExportStatus) {
            // During a swap both nodes may claim the server: the newer epoch wins.
            if let server = entry.server, entry.epoch >= serverEpoch ?? 0 {
                self.server = server
                serverEpoch = entry.epoch
                answeringAlone = entry.answeringAlone
            }
            // Each node knows the swaps it ran: the later one.
            if let failover = entry.lastFailover, failover.at >= lastFailover?.at ?? "" { lastFailover = failover }
            epoch = max(epoch, entry.epoch)
            if entry.role == .standby {
                monitor = entry.monitor
                journal = Journal(server: entry.serverSequence, standby: entry.sequence, lag: entry.lag)
                if let rtt = entry.probeRttMs { probeRttMs = rtt }
                if let copy = entry.catchingUp { catchingUp = copy }
                if let last = entry.lastCatchUp { lastCatchUp = last }
            }
            if let waiting = entry.waiting { self.waiting = waiting }
        }
    }

    /// One agent's paths to its peer.
    public struct Paths: Codable, Hashable, Sendable {
        public var node: String
        public var peer: String
        public var paths: [PeerStatus.Path]
    }

    public var exports: [Export]
    public var unreachableAgents: [String]
    public var paths: [Paths]
    public var health: String
    public var findings: [String]

    /// Joins the agents' answers; `unreachable` names the agents that gave none.
    public init(answers: [AgentStatus], unreachable: [String]) {
        var byName: [String: Export] = [:]
        for answer in answers {
            for entry in answer.exports { byName[entry.name, default: Export(name: entry.name)].merge(entry) }
        }
        exports = byName.keys.sorted().map { byName[$0]! }
        unreachableAgents = unreachable
        paths = answers.map { Paths(node: $0.node, peer: $0.peer.name, paths: $0.peer.paths) }
        let assessed = ClusterHealth.assess(
            exports: exports.map {
                ClusterHealth.Export(name: $0.name, served: $0.server != nil, monitored: $0.monitor?.watching == true,
                                     answeringAlone: $0.answeringAlone == true, waitingForPeer: $0.waiting != nil)
            },
            agentsAsked: answers.count + unreachable.count, agentsUnreachable: unreachable,
            pathsDown: paths.flatMap { view in view.paths.filter(\.isDown).map { "node \(view.node) to \(view.peer), path \($0.path)" } })
        health = assessed.health.description
        findings = assessed.findings
        healthLevel = assessed.health
    }

    /// The worst finding, for the exit code.
    public private(set) var healthLevel: ClusterHealth = .ok

    private enum CodingKeys: String, CodingKey {
        case exports, unreachableAgents = "unreachable_agents", paths, health, findings
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        exports = try container.decode([Export].self, forKey: .exports)
        unreachableAgents = try container.decode([String].self, forKey: .unreachableAgents)
        paths = try container.decode([Paths].self, forKey: .paths)
        health = try container.decode(String.self, forKey: .health)
        findings = try container.decode([String].self, forKey: .findings)
        healthLevel = ClusterHealth.allCases.first { $0.description == health } ?? .unknown
    }
}

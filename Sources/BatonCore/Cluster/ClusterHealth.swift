/// What `baton status` tells a script or a monitoring system by its exit
/// code. The values are the plugin convention Nagios, Icinga and their kin
/// read: 0 ok, 1 warning, 2 critical, 3 unknown.
public enum ClusterHealth: Int32, Comparable, Sendable, CaseIterable, CustomStringConvertible {
    /// Every export is served and monitored, every agent answered, every path is up.
    case ok = 0
    /// Everything is served, but a guarantee is thinner than it should be:
    /// an export without a monitor, a server answering without its standby,
    /// an agent that did not answer, a network path down.
    case degraded = 1
    /// An export is not served: its clients wait.
    case unserved = 2
    /// No agent answered: nothing is known.
    case unknown = 3

    public static func < (lhs: ClusterHealth, rhs: ClusterHealth) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String {
        switch self {
        case .ok: "ok"
        case .degraded: "degraded"
        case .unserved: "unserved"
        case .unknown: "unknown"
        }
    }

    /// One export as the agents' merged status shows it.
    public struct Export: Sendable {
        public var name: String
        public var served: Bool
        public var monitored: Bool
        public var answeringAlone: Bool
        /// A node holds the export back until its peer answers.
        public var waitingForPeer: Bool

        public init(name: String, served: Bool, monitored: Bool, answeringAlone: Bool = false, waitingForPeer: Bool = false) {
            self.name = name
            self.served = served
            self.monitored = monitored
            self.answeringAlone = answeringAlone
            self.waitingForPeer = waitingForPeer
        }
    }

    /// The worst finding, and every finding in words an admin can act on.
    public static func assess(exports: [Export], agentsAsked: Int, agentsUnreachable: [String],
                              pathsDown: [String]) -> (health: ClusterHealth, findings: [String]) {
        if agentsAsked > 0, agentsUnreachable.count == agentsAsked {
            return (.unknown, agentsUnreachable.map { "agent unreachable: \($0)" })
        }
        var health = ClusterHealth.ok
        var findings: [String] = []
        func note(_ level: ClusterHealth, _ finding: String) {
            health = max(health, level)
            findings.append(finding)
        }
        for export in exports {
            if !export.served {
                note(.unserved, export.waitingForPeer
                    ? "\(export.name) is not served: a node waits for its peer (baton status says how to serve without it)"
                    : "\(export.name) is not served")
                continue
            }
            if !export.monitored { note(.degraded, "\(export.name) is not monitored: a stall of its server would not be taken over") }
            if export.answeringAlone { note(.degraded, "\(export.name) answers without its standby: acknowledged writes are on one node") }
        }
        for agent in agentsUnreachable { note(.degraded, "agent unreachable: \(agent)") }
        for path in pathsDown { note(.degraded, "network path down: \(path)") }
        return (health, findings)
    }
}

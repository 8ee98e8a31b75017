/// A storage node as placement sees it.
public struct PlacementNode: Hashable, Sendable {
    public var name: String
    /// A LAN; sites are joined by a WAN (DESIGN.md §7).
    public var site: String
    /// The node's agent is heard.
    public var alive: Bool

    public init(name: String, site: String, alive: Bool = true) {
        self.name = name
        self.site = site
        self.alive = alive
    }
}

/// Where one export's server and monitor run. The monitor's node also holds the standby replica.
public struct ExportPlacement: Hashable, Sendable {
    public var server: String
    /// Nil when the export runs unmonitored (no other node alive).
    public var monitor: String?

    public init(server: String, monitor: String?) {
        self.server = server
        self.monitor = monitor
    }
}

/// What placement knows of one export.
public struct PlacementRequest: Hashable, Sendable {
    /// Nil for an export not placed yet.
    public var current: ExportPlacement?
    /// The monitor declared the server failed (its node may be alive).
    public var serverFailed: Bool

    public init(current: ExportPlacement?, serverFailed: Bool = false) {
        self.current = current
        self.serverFailed = serverFailed
    }
}

public struct PlacementDecision: Hashable, Sendable {
    public enum Change: Hashable, Sendable {
        case unchanged
        /// A new export.
        case created
        /// The server stays; the monitor goes to a new node (the old one died, or a node on another site is back).
        case monitorPlaced
        /// The server failed with no live monitor, but its own node is alive and holds the journal: start it again there.
        case serverRestartedInPlace
        /// The server moves to the monitor's node (the swap of DESIGN.md §5).
        case failover
        /// No live node holds the export's journal: it cannot run until one returns.
        case stranded
    }

    /// Nil when stranded.
    public var placement: ExportPlacement?
    public var change: Change
    /// The monitor's node holds no copy of the journal and receives a full one
    /// (DESIGN.md §7); otherwise it catches up from what it has.
    public var monitorNeedsFullCopy: Bool
}

/// The placement policy of DESIGN.md §7, a pure function of the nodes (with
/// sites and health) and the current placement. Deterministic: ties go to the
/// least loaded node, then to the first name, so every agent that computes
/// it from the same inputs gets the same answer.
public enum Placement {
    /// Exports placed by one call; a limit so a runaway configuration is caught, not looped over.
    public static let maxExports = 100_000

    public static func plan(nodes: [PlacementNode], exports: [String: PlacementRequest]) -> [String: PlacementDecision] {
        precondition(exports.count <= maxExports, "\(exports.count) exports, over the limit of \(maxExports)")
        precondition(Set(nodes.map(\.name)).count == nodes.count, "node names must be unique")
        let byName = Dictionary(uniqueKeysWithValues: nodes.map { ($0.name, $0) })
        func isAlive(_ name: String?) -> Bool { name.flatMap { byName[$0]?.alive } ?? false }

        // Roles per node, so new exports and new monitors spread out.
        var load = Load()
        for request in exports.values { load.add(request.current) }

        var decisions: [String: PlacementDecision] = [:]
        for (export, request) in exports.sorted(by: { $0.key < $1.key }) {
            let decision = decide(request, nodes: nodes, byName: byName, isAlive: isAlive, load: load)
            load.remove(request.current)
            load.add(decision.placement)
            decisions[export] = decision
        }
        return decisions
    }

    private static func decide(_ request: PlacementRequest, nodes: [PlacementNode], byName: [String: PlacementNode],
                               isAlive: (String?) -> Bool, load: Load) -> PlacementDecision {
        guard let current = request.current else {
            let alive = nodes.filter(\.alive)
            // Servers spread first: they carry the clients; monitors and replicas are lighter.
            guard let server = alive.min(by: { load.serverOrder($0.name) < load.serverOrder($1.name) }) else {
                return PlacementDecision(placement: nil, change: .stranded, monitorNeedsFullCopy: false)
            }
            let monitor = monitorNode(for: server, nodes: nodes, preferring: nil, load: load)
            // A new export's journal is empty: its replica starts with it.
            return PlacementDecision(placement: ExportPlacement(server: server.name, monitor: monitor),
                                     change: .created, monitorNeedsFullCopy: false)
        }
        let holders = Set([current.server] + (current.monitor.map { [$0] } ?? []))
        func placed(server: String, preferring: String?, change: PlacementDecision.Change) -> PlacementDecision {
            let monitor = monitorNode(for: byName[server]!, nodes: nodes, preferring: preferring, load: load)
            let change = change == .unchanged && monitor != current.monitor ? .monitorPlaced : change
            return PlacementDecision(placement: ExportPlacement(server: server, monitor: monitor), change: change,
                                     monitorNeedsFullCopy: monitor.map { !holders.contains($0) } ?? false)
        }

        let serverUp = isAlive(current.server) && !request.serverFailed
        if serverUp {
            return placed(server: current.server, preferring: isAlive(current.monitor) ? current.monitor : nil,
                          change: .unchanged)
        }
        if let monitor = current.monitor, isAlive(monitor) {
            // The old server's node, when alive, holds the journal up to the failure and only catches up.
            return placed(server: monitor, preferring: isAlive(current.server) ? current.server : nil, change: .failover)
        }
        if isAlive(current.server) {
            return placed(server: current.server, preferring: nil, change: .serverRestartedInPlace)
        }
        return PlacementDecision(placement: nil, change: .stranded, monitorNeedsFullCopy: false)
    }

    /// A live node other than the server's, on another site when one is alive;
    /// `preferring` wins when it qualifies, else the least loaded.
    static func monitorNode(for server: PlacementNode, nodes: [PlacementNode], preferring: String?,
                            load: Load) -> String? {
        let others = nodes.filter { $0.alive && $0.name != server.name }
        let remote = others.filter { $0.site != server.site }
        let pool = remote.isEmpty ? others : remote
        if let preferring, pool.contains(where: { $0.name == preferring }) { return preferring }
        return pool.min { load.monitorOrder($0.name) < load.monitorOrder($1.name) }?.name
    }

    /// Servers and all roles per node.
    struct Load {
        private var servers: [String: Int] = [:]
        private var roles: [String: Int] = [:]

        mutating func add(_ placement: ExportPlacement?) { change(placement, by: 1) }
        mutating func remove(_ placement: ExportPlacement?) { change(placement, by: -1) }

        private mutating func change(_ placement: ExportPlacement?, by delta: Int) {
            guard let placement else { return }
            servers[placement.server, default: 0] += delta
            roles[placement.server, default: 0] += delta
            if let monitor = placement.monitor { roles[monitor, default: 0] += delta }
        }

        /// Fewest servers, then fewest roles, then the first name.
        func serverOrder(_ node: String) -> (Int, Int, String) { (servers[node] ?? 0, roles[node] ?? 0, node) }
        /// Fewest roles, then the first name.
        func monitorOrder(_ node: String) -> (Int, String) { (roles[node] ?? 0, node) }
    }
}

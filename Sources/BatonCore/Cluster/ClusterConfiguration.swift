/// A host and a TCP port. The host is a name or an address as written in the
/// cluster file, never resolved here: the core does no IO, and two spellings of
/// one machine ("localhost", "127.0.0.1") are the admin's to keep consistent.
/// A struct rather than a `(host:, port:)` tuple so that the configuration
/// types can be `Hashable`.
public struct HostAndPort: Hashable, Sendable, CustomStringConvertible {
    /// An IPv6 address is kept without brackets.
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `HOST:PORT`, with an IPv6 host in brackets (`[::1]:7100`), as the cluster file writes it.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses `HOST:PORT` (IPv6 as `[::1]:PORT`; port 0 asks the kernel for a free one when listening).
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.init(host: host, port: port)
    }
}

/// How the export server waits for its standby (DESIGN.md §4, guarantee 1).
public enum ReplicationMode: String, Hashable, Sendable, CaseIterable {
    /// A mutation is acknowledged only once the standby received it: a failover
    /// loses no acknowledged mutation. The default.
    case sync
    /// A mutation is acknowledged once it is in the active node's journal: a
    /// failover loses what the standby had not received yet.
    case async
}

/// The failure detection timings of DESIGN.md §8 and the delays of the
/// diagnostic ladder (§6), in whole milliseconds as the cluster file writes them.
public struct ClusterTimings: Hashable, Sendable {
    /// A monitor sends a challenge to its server this often.
    public var probeIntervalMilliseconds: Int
    /// A challenge answered later than this is a miss.
    public var probeDeadlineMilliseconds: Int
    /// This many misses in a row declare the server failed.
    public var probeMisses: Int
    /// An export server sends a heartbeat to its monitor this often.
    public var heartbeatIntervalMilliseconds: Int
    /// No server heartbeat for longer than this declares the server failed.
    public var heartbeatGraceMilliseconds: Int
    /// Agents send each other heartbeats this often, on every path.
    public var agentHeartbeatIntervalMilliseconds: Int
    /// No heartbeat from a peer agent for longer than this starts the diagnostic ladder (DESIGN.md §6).
    public var agentHeartbeatGraceMilliseconds: Int
    /// A node that finds itself isolated (it reaches no switch) has stopped its
    /// servers this long after it last heard its peer.
    public var selffenceDelayMilliseconds: Int
    /// A node takes over the exports of a dead or isolated peer this long after
    /// it last heard it; longer than the self-fence delay, so that an isolated
    /// node has stopped serving first.
    public var takeoverDelayMilliseconds: Int
    /// A reply of a server in sync mode waits this long for its standby at
    /// most, then the server answers alone (a standby that hangs while its
    /// node is heard; a node that is gone is found by the ladder first).
    public var standbyWaitLimitMilliseconds: Int

    /// DESIGN.md §8.
    public static let defaults = ClusterTimings()

    /// Ten minutes: no failure detector waits longer, and the bound keeps
    /// conversions to nanoseconds far from overflow.
    public static let maxMilliseconds = 600_000

    public init(probeIntervalMilliseconds: Int = 100, probeDeadlineMilliseconds: Int = 200, probeMisses: Int = 3,
                heartbeatIntervalMilliseconds: Int = 100, heartbeatGraceMilliseconds: Int = 500,
                agentHeartbeatIntervalMilliseconds: Int = 200, agentHeartbeatGraceMilliseconds: Int = 1000,
                selffenceDelayMilliseconds: Int = 1800, takeoverDelayMilliseconds: Int = 2500,
                standbyWaitLimitMilliseconds: Int = 5000) {
        self.probeIntervalMilliseconds = probeIntervalMilliseconds
        self.probeDeadlineMilliseconds = probeDeadlineMilliseconds
        self.probeMisses = probeMisses
        self.heartbeatIntervalMilliseconds = heartbeatIntervalMilliseconds
        self.heartbeatGraceMilliseconds = heartbeatGraceMilliseconds
        self.agentHeartbeatIntervalMilliseconds = agentHeartbeatIntervalMilliseconds
        self.agentHeartbeatGraceMilliseconds = agentHeartbeatGraceMilliseconds
        self.selffenceDelayMilliseconds = selffenceDelayMilliseconds
        self.takeoverDelayMilliseconds = takeoverDelayMilliseconds
        self.standbyWaitLimitMilliseconds = standbyWaitLimitMilliseconds
    }

    /// How long one round of the ladder's probes waits for answers; not in the
    /// file, since the ladder's rounds are what the delays must leave room for.
    static let diagnosisRoundDeadline = TimeSpan.milliseconds(100)

    /// The ladder's timings. The validator of `ClusterConfiguration` checks
    /// the same rules as `DiagnosisTimings.init` (it calls it), so for the
    /// timings of any `ClusterConfiguration`, parsed or built in code, this
    /// cannot fail and the `try!` never traps. On a `ClusterTimings` that no
    /// configuration checked, a broken rule (or a negative value) traps.
    public var diagnosisTimings: DiagnosisTimings {
        try! checkedDiagnosisTimings()
    }

    /// `DiagnosisTimings` from these values; every value must be at least 0.
    func checkedDiagnosisTimings() throws(DiagnosisTimings.Invalid) -> DiagnosisTimings {
        try DiagnosisTimings(
            roundDeadline: Self.diagnosisRoundDeadline,
            agentHeartbeatInterval: .milliseconds(UInt64(agentHeartbeatIntervalMilliseconds)),
            agentHeartbeatGrace: .milliseconds(UInt64(agentHeartbeatGraceMilliseconds)),
            selffenceDelay: .milliseconds(UInt64(selffenceDelayMilliseconds)),
            takeoverDelay: .milliseconds(UInt64(takeoverDelayMilliseconds)))
    }
}

/// One storage node: a `[[nodes]]` table.
public struct NodeConfiguration: Hashable, Sendable {
    /// Unique in the cluster; used in logs, placement and `baton` commands.
    public var name: String
    /// A LAN (DESIGN.md §7); monitors go to another site than their server when one exists.
    public var site: String
    /// The node's agent: control, replication and heartbeats. Its host is also
    /// where the node's export servers listen, each on its export's port.
    public var agent: HostAndPort
    /// Extra addresses of the node (one per NIC) over which agents exchange
    /// heartbeats, on the agent's port (DESIGN.md §6).
    public var paths: [String]
    /// Where the node keeps the data directories of its exports; an absolute path.
    public var dataDirectory: String
    /// Where the node's agent serves Prometheus metrics (HTTP `/metrics`), if anywhere.
    public var metrics: HostAndPort?

    public static let defaultSite = "default"

    public init(name: String, site: String = NodeConfiguration.defaultSite, agent: HostAndPort, paths: [String] = [],
                dataDirectory: String, metrics: HostAndPort? = nil) {
        self.name = name
        self.site = site
        self.agent = agent
        self.paths = paths
        self.dataDirectory = dataDirectory
        self.metrics = metrics
    }

    /// Where the node's agent answers: its agent address, then each of its
    /// other path addresses (same port). Export servers listen at these
    /// hosts too, on their own ports.
    public var agentAddresses: [HostAndPort] {
        var hosts = [agent.host]
        for path in paths where !hosts.contains(path) { hosts.append(path) }
        return hosts.map { HostAndPort(host: $0, port: agent.port) }
    }
}

/// One export: an `[[exports]]` table.
public struct ExportConfiguration: Hashable, Sendable {
    /// Unique in the cluster; what clients mount (`EXPORT@NODE_A,NODE_B`).
    public var name: String
    /// The node that serves the export when the cluster starts.
    public var preferredNode: String
    /// Clients connect to this port on the host of the node that serves the export.
    public var port: Int
    /// The export's monitor connects to this port of the serving node's host:
    /// the server answers its challenges and sends its heartbeats on a
    /// thread of their own, which no client's requests can hold up.
    public var monitorPort: Int
    public var replication: ReplicationMode
    /// Which clients (by their certificate's name) may mount it, and which only read.
    public var access: ClientAccess
    /// Which callers act as the anonymous user (NFS's root_squash by default).
    public var squash: Squash
    /// How long a client session holding locks may have no connection to the
    /// server before its locks are released (its mount or machine is gone).
    public var lockLeaseMilliseconds: Int
    public static let defaultLockLeaseMilliseconds = 30_000
    public static let lockLeaseRange = 1_000...3_600_000

    /// `monitorPort` defaults to the port after `port`.
    public init(name: String, preferredNode: String, port: Int, monitorPort: Int? = nil, replication: ReplicationMode = .sync,
                access: ClientAccess = .everyone, squash: Squash = .rootToNobody,
                lockLeaseMilliseconds: Int = defaultLockLeaseMilliseconds) {
        self.name = name
        self.preferredNode = preferredNode
        self.port = port
        self.monitorPort = monitorPort ?? port + 1
        self.replication = replication
        self.access = access
        self.squash = squash
        self.lockLeaseMilliseconds = lockLeaseMilliseconds
    }
}

/// How the cluster's TCP connections are carried: TLS 1.3 with the
/// certificates of `[tls]`, or plain TCP, which a file must ask for
/// (`plaintext = true`) so that no cluster runs unencrypted by omission.
public enum TransportSecurity: Hashable, Sendable {
    case tls(ClusterTLS)
    case plaintext
}

/// The `[tls]` table: paths of PEM files. One cluster file serves every
/// node, so `{node}` in `cert` and `key` stands for the node's name.
public struct ClusterTLS: Hashable, Sendable {
    /// The cluster's certificate authority: peers' certificates must be signed by it.
    public var ca: String
    public var cert: String
    public var key: String
    /// What the admin commands (`baton status`, `migrate`, ...) present; nil: they cannot be run with this file.
    public var adminCert: String?
    public var adminKey: String?

    public static let nodePlaceholder = "{node}"

    public init(ca: String, cert: String, key: String, adminCert: String? = nil, adminKey: String? = nil) {
        self.ca = ca
        self.cert = cert
        self.key = key
        self.adminCert = adminCert
        self.adminKey = adminKey
    }

    /// The certificate and key paths of `node`.
    public func nodeFiles(_ node: String) -> (cert: String, key: String) {
        (cert.replacing(Self.nodePlaceholder, with: node), key.replacing(Self.nodePlaceholder, with: node))
    }
}

/// The cluster file, checked: every rule below holds for any value of this
/// type, whether parsed from text or built in code.
///
/// - at least two nodes (a monitor runs on another node than its server), at most `maxNodes`;
/// - node and export names are 1 to 255 bytes without '@', '/', ',', white space or
///   control characters, and are not "." or "..", because they appear in mount
///   specifications (`EXPORT@NODE_A,NODE_B`), fstab lines and directory names;
/// - node names, agent addresses and exports' names, ports and monitor ports are
///   unique (no export's port is another's monitor port); two nodes on one agent
///   host do not share a data directory;
/// - an export's preferred node is one of the nodes;
/// - an export's port and monitor port are no agent's port: an export may come to be served on any node;
/// - ports are 1 to 65535; paths are absolute; timings are positive, bounded, and a
///   grace is longer than its heartbeat interval;
/// - the self-fence and takeover delays follow the rules of `DiagnosisTimings`, so
///   `timings.diagnosisTimings` is valid;
/// - at most `maxSwitches` switches, like a node's paths: hosts without a port, each listed once;
/// - the paths of `[tls]` are absolute; `admin_cert` and `admin_key` come together.
///
/// The secret file's contents (at least `minSecretBytes`) are checked by the
/// caller that reads it: the core does no IO.
public struct ClusterConfiguration: Hashable, Sendable {
    /// The path of the shared secret that keys challenges and agent messages; the same file on every node.
    public private(set) var secretFile: String
    /// The management addresses of the switches, one per network path in path
    /// order (path 1's switch first), which the diagnostic ladder probes last
    /// (DESIGN.md §6); a node that reaches none of them is the isolated one.
    /// Empty when not given (loopback clusters): then a node cannot tell that
    /// it is isolated.
    public private(set) var switches: [String]
    public private(set) var timings: ClusterTimings
    public private(set) var transport: TransportSecurity
    /// In file order.
    public private(set) var nodes: [NodeConfiguration]
    /// In file order.
    public private(set) var exports: [ExportConfiguration]

    public static let minSecretBytes = 32
    public static let maxNodes = 256
    public static let maxPathsPerNode = 8
    /// One switch per network path; the ladder knows two paths.
    public static let maxSwitches = NetworkPath.allCases.count
    public static let maxExports = 10_000
    /// A limit on names, sites and hosts, as for a file name.
    public static let maxNameBytes = 255

    /// Checks the rules listed on the type; errors carry no line.
    public init(secretFile: String, switches: [String] = [], timings: ClusterTimings = .defaults, transport: TransportSecurity,
                nodes: [NodeConfiguration], exports: [ExportConfiguration]) throws(ClusterConfigurationError) {
        try self.init(secretFile: secretFile, switches: switches, timings: timings, transport: transport, nodes: nodes,
                      exports: exports, positions: ClusterSourcePositions())
    }

    init(secretFile: String, switches: [String], timings: ClusterTimings, transport: TransportSecurity, nodes: [NodeConfiguration],
         exports: [ExportConfiguration], positions: ClusterSourcePositions) throws(ClusterConfigurationError) {
        try ClusterValidator(positions: positions).check(secretFile: secretFile, switches: switches, timings: timings,
                                                         transport: transport, nodes: nodes, exports: exports)
        self.secretFile = secretFile
        self.switches = switches
        self.timings = timings
        self.transport = transport
        self.nodes = nodes
        self.exports = exports
    }

    /// Parses and checks the text of a cluster file, which the caller has read.
    /// Errors name the line and column and say what was expected; see
    /// `ClusterConfigurationError` for the wording.
    public static func parse(_ text: String) throws(ClusterConfigurationError) -> ClusterConfiguration {
        try ClusterFileReader.read(ClusterTOML.parse(text))
    }

    public func node(named name: String) -> NodeConfiguration? {
        nodes.first { $0.name == name }
    }

    /// The other node of a two-node cluster, which holds the standby and the
    /// monitor of every export that `name` serves. Nil when the cluster has
    /// more than two nodes, since there the peer differs per export and is
    /// decided by `Placement.plan`, not by the file; nil too when `name` is not a node.
    public func peer(of name: String) -> NodeConfiguration? {
        guard nodes.count == 2, let index = nodes.firstIndex(where: { $0.name == name }) else { return nil }
        return nodes[1 - index]
    }

    public func export(named name: String) -> ExportConfiguration? {
        exports.first { $0.name == name }
    }

    /// Where clients reach `export` while `node` serves it: the node's agent host and the export's port.
    public func clientAddress(of export: ExportConfiguration, on node: NodeConfiguration) -> HostAndPort {
        HostAndPort(host: node.agent.host, port: export.port)
    }

    /// Every address the export may be served at, its preferred node's first, so
    /// that a client tries the likely server before the others.
    /// Where the monitor reaches `export`'s server while `node` serves it.
    public func monitorAddress(of export: ExportConfiguration, on node: NodeConfiguration) -> HostAndPort {
        HostAndPort(host: node.agent.host, port: export.monitorPort)
    }

    public func clientAddresses(of export: ExportConfiguration) -> [HostAndPort] {
        let ordered = nodes.filter { $0.name == export.preferredNode } + nodes.filter { $0.name != export.preferredNode }
        return ordered.map { clientAddress(of: export, on: $0) }
    }
}

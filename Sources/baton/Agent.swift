import ArgumentParser
import BatonAgent
import BatonCore
import BatonRuntime
import Dispatch
import Foundation

struct Agent: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a node's agent: its export servers, the standby replicas and monitors of its peer's exports.")

    @Option(help: "The cluster file (see mountscripts/cluster.example.toml).")
    var config = DefaultClusterFile.path

    @Option(help: "This node's name in the cluster file (default: this machine's short host name).")
    var node: String?

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        let logger = logging.bootstrap(label: "baton.agent")
        try prepareDiskOwner(logger: logger)
        let cluster = try DefaultClusterFile.load(config)
        let node = try node ?? Self.hostNode(in: cluster, config: config)
        let secret = try SecretFile.read(cluster.secretFile)
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let agent = try NodeAgent(configuration: cluster, node: node, secret: secret, executable: executable, logger: logger)
        let signals = onTerminationSignals { _ in
            logger.info("signal received, stopping the agent", metadata: ["node": "\(node)"])
            agent.stop()
        }
        try agent.run()
        withExtendedLifetime(signals) {}
    }

    /// The node named as this machine, or an error that says how to name it.
    static func hostNode(in cluster: ClusterConfiguration, config: String) throws -> String {
        // gethostname, not ProcessInfo.hostName: that one may resolve the name
        // through DNS into another one, and this must be what uname -n says.
        var buffer = [CChar](repeating: 0, count: 256)
        let hostname = gethostname(&buffer, buffer.count - 1) == 0 ? buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } : ""
        if let node = cluster.node(forHostname: hostname) { return node.name }
        throw ValidationError("this machine's host name '\(hostname)' is not a node in \(config) "
            + "(nodes: \(cluster.nodes.map(\.name).joined(separator: ", "))): give --node NAME "
            + "(with systemd: BATON_AGENT_ARGS=\"--node NAME\" in /etc/default/baton)")
    }
}

/// Where the agent and the admin commands find the cluster file without
/// --config, as other storage daemons keep theirs in /etc.
enum DefaultClusterFile {
    static let path = "/etc/baton/cluster.toml"

    /// `ClusterFile.load`, saying what to do when the default file is missing.
    static func load(_ config: String) throws -> ClusterConfiguration {
        if config == path, !FileManager.default.fileExists(atPath: path) {
            throw ValidationError("no cluster file at \(path) (the default): give --config FILE, or write one there "
                + "(mountscripts/install puts an example at \(path).example)")
        }
        return try ClusterFile.load(config)
    }
}

/// Where admin commands find agents and the secret.
struct AgentOptions: ParsableArguments {
    @Option(help: "The cluster file: every node's agent is asked (default: \(DefaultClusterFile.path)).")
    var config: String?

    @Option(help: "Ask this agent only (HOST:PORT); needs --secret-file.")
    var agent: NodeAddress?

    @Option(help: "The shared secret file (default: the cluster file's secret_file).")
    var secretFile: String?

    @Option(help: "The certificate to present (default: the cluster file's [tls] admin_cert); an admin's or a node's.")
    var tlsCert: String?

    @Option(help: "Its private key (default: the cluster file's [tls] admin_key).")
    var tlsKey: String?

    @Option(help: "The cluster's CA certificate (default: the cluster file's [tls] ca).")
    var tlsCa: String?

    func validate() throws {
        if agent != nil, config == nil, secretFile == nil {
            throw ValidationError("--agent HOST:PORT needs --secret-file FILE")
        }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        if agent != nil, config == nil, tlsCert != nil, tlsCa == nil { throw ValidationError("--agent with --tls-cert needs --tls-ca") }
    }

    /// The cluster file: --config, else the default.
    var clusterFile: String { config ?? DefaultClusterFile.path }

    /// Each agent's addresses: its agent address, then its other paths' (a request goes over the first that connects).
    /// With the identity to present on a TLS cluster.
    func targets() throws -> (agents: [[NodeAddress]], secret: [UInt8], tls: TLSIdentity?) {
        if let agent, let secretFile, config == nil {
            let tls = try tlsCert.map { try AdminIdentity.load(TLSFiles(certificate: $0, key: tlsKey!, authority: tlsCa!)) }
            return ([[agent]], try SecretFile.read(secretFile), tls)
        }
        let cluster = try DefaultClusterFile.load(clusterFile)
        let agents = agent.map { [[$0]] } ?? cluster.nodes.map(\.agentAddresses)
        return (agents, try SecretFile.read(secretFile ?? cluster.secretFile),
                try AdminIdentity.of(cluster, config: clusterFile, certificate: tlsCert, key: tlsKey, authority: tlsCa))
    }
}

/// What the admin commands present on a TLS cluster.
enum AdminIdentity {
    /// An admin's certificate, or a node's (an admin at a node's console).
    static func load(_ files: TLSFiles) throws -> TLSIdentity {
        try TLSIdentity(files, roles: [.admin, .node])
    }

    /// The options' files, else the cluster file's admin_cert and admin_key; nil on a plain-TCP cluster.
    static func of(_ cluster: ClusterConfiguration, config: String, certificate: String?, key: String?,
                   authority: String?) throws -> TLSIdentity? {
        guard case .tls(let tls) = cluster.transport else { return nil }
        guard let certificate = certificate ?? tls.adminCert, let key = key ?? tls.adminKey else {
            throw ValidationError("\(config) runs TLS and its [tls] table has no admin_cert and admin_key: add them "
                + "(make the certificate with `baton cert issue --role admin`), or give --tls-cert and --tls-key")
        }
        return try load(TLSFiles(certificate: certificate, key: key, authority: authority ?? tls.ca))
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show where each export is served and monitored.",
        discussion: "Exits 0 when every export is served and monitored, every agent answered and every path is up; "
            + "1 (degraded) when an export is unmonitored or answers without its standby, an agent did not answer "
            + "or a path is down; 2 when an export is not served; 3 when no agent answered.")

    @OptionGroup var agents: AgentOptions

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let (addresses, secret, tls) = try agents.targets()
        var answers: [AgentStatus] = []
        var unreachable: [String] = []
        for agent in addresses {
            do {
                let (_, text) = try PeerClient.request(.status, toAnyOf: agent, node: "admin", secret: secret, tls: tls)
                answers.append(try StatusJSON.decode(AgentStatus.self, from: text))
            } catch {
                unreachable.append("\(agent[0]): \(error)")
            }
        }
        let cluster = ClusterStatus(answers: answers, unreachable: unreachable)
        if json {
            print(StatusJSON.encode(cluster, pretty: true))
        } else {
            printTable(cluster)
            print("health: \(cluster.health)" + (cluster.findings.isEmpty ? "" : ": " + cluster.findings.joined(separator: "; ")))
        }
        if cluster.healthLevel != .ok { throw ExitCode(cluster.healthLevel.rawValue) }
    }

    private func printTable(_ cluster: ClusterStatus) {
        print("EXPORT".padding(16) + "EPOCH".padding(7) + "SERVER".padding(28) + "MONITOR".padding(10)
              + "JOURNAL SERVER/STANDBY".padding(24) + "PROBE RTT".padding(11) + "LAST FAILOVER")
        for entry in cluster.exports {
            let serverText = entry.server.map { "\($0.node) \($0.address) pid \($0.pid)" } ?? "none"
            let failover = entry.lastFailover.map { "\($0.at) \($0.reason)" } ?? "-"
            let copying = entry.catchingUp.map { "\($0.kind) copy \($0.receivedBytes >> 20)/\($0.expectedBytes >> 20) MiB" }
            let positions = copying ?? "\(entry.journal?.server.map(String.init) ?? "-")/\(entry.journal?.standby.map(String.init) ?? "-")"
            let rtt = entry.probeRttMs.map { String(format: "%.2f ms", $0) } ?? "-"
            print(entry.name.padding(16) + "\(entry.epoch)".padding(7) + serverText.padding(28)
                  + (entry.monitor?.node ?? "none").padding(10) + positions.padding(24) + rtt.padding(11) + failover)
        }
        for entry in cluster.exports where entry.answeringAlone == true {
            print("\(entry.name): the server answers without its standby: acknowledged writes are on one node until it is in step")
        }
        for entry in cluster.exports {
            guard let waiting = entry.waiting else { continue }
            print("\(entry.name): \(waiting.node) waits for its peer before serving: \(waiting.why) (to serve without it: \(waiting.force))")
        }
        for view in cluster.paths {
            let each = view.paths.map { path in
                "path \(path.path) \(path.isDown ? "DOWN" : path.state) for \(String(format: "%.1f s", Double(path.sinceMsAgo) / 1000))"
                    + " (carries \(Diagnose.carried(path)))"
            }
            print("node \(view.node) to \(view.peer): \(each.joined(separator: "; "))")
        }
        for problem in cluster.unreachableAgents { print("agent unreachable: \(problem)") }
    }
}

struct ForceServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve an export on a node that waits for its peer, without the peer.",
        discussion: "A node that starts without hearing its peer serves an export only when it can show that its copy is the "
            + "newest; otherwise it waits (baton status says why). Use this only when the peer is lost for good: "
            + "writes acknowledged by the peer after this node last served the export are lost.")

    @Argument(help: "The export to serve.")
    var export: String

    @Option(help: "The node that waits for its peer.")
    var node: String

    @Option(help: "The cluster file.")
    var config = DefaultClusterFile.path

    @Option(help: "The shared secret file (default: the cluster file's secret_file).")
    var secretFile: String?

    func run() throws {
        let cluster = try DefaultClusterFile.load(config)
        guard let target = cluster.node(named: node) else {
            throw ValidationError("no node '\(node)' in \(config) (nodes: \(cluster.nodes.map(\.name).joined(separator: ", ")))")
        }
        let secret = try SecretFile.read(secretFile ?? cluster.secretFile)
        let tls = try AdminIdentity.of(cluster, config: config, certificate: nil, key: nil, authority: nil)
        let (ok, text) = try PeerClient.request(.forceServe(export: export), toAnyOf: target.agentAddresses,
                                                node: "admin", secret: secret, tls: tls, timeoutMilliseconds: 10_000)
        guard ok else { throw ValidationError(text) }
        print("warning: \(text)")
    }
}

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Move an export to the other node on purpose (a planned swap).")

    @Argument(help: "The export to move.")
    var export: String

    @Option(help: "The node to move it to (default: the other node).")
    var to: String?

    @OptionGroup var agents: AgentOptions

    func run() throws {
        let (addresses, secret, tls) = try agents.targets()
        var targets = addresses
        if let to {
            let config = agents.clusterFile
            let cluster = try DefaultClusterFile.load(config)
            guard let node = cluster.node(named: to) else {
                throw ValidationError("no node '\(to)' in \(config) (nodes: \(cluster.nodes.map(\.name).joined(separator: ", ")))")
            }
            let (_, text) = try PeerClient.request(.status, toAnyOf: node.agentAddresses, node: "admin", secret: secret, tls: tls)
            let answer = try StatusJSON.decode(AgentStatus.self, from: text)
            if answer.exports.first(where: { $0.name == export })?.role == .server {
                print("\(export) is served on \(to) already")
                return
            }
            // The standby there runs the swap itself.
            targets = [node.agentAddresses]
        }
        var answers: [String] = []
        for agent in targets {
            let (ok, text) = try PeerClient.request(.migrate(export: export), toAnyOf: agent, node: "admin", secret: secret,
                                                    tls: tls, timeoutMilliseconds: 10_000)
            if ok {
                print(text)
                return
            }
            answers.append("\(agent[0]): \(text)")
        }
        throw ValidationError("no agent could migrate '\(export)': \(answers.joined(separator: "; "))")
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}

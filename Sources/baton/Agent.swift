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
        var exports: [String: [String: Any]] = [:]
        var unreachable: [String] = []
        var paths: [[String: Any]] = []
        for agent in addresses {
            do {
                let (_, text) = try PeerClient.request(.status, toAnyOf: agent, node: "admin", secret: secret, tls: tls)
                let view = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
                if let peer = view["peer"] as? [String: Any] {
                    paths.append(["node": view["node"] ?? "?", "peer": peer["name"] ?? "?", "paths": peer["paths"] ?? []])
                }
                for entry in view["exports"] as? [[String: Any]] ?? [] {
                    guard let name = entry["name"] as? String else { continue }
                    exports[name] = StatusMerge.merge(exports[name] ?? ["name": name], entry)
                }
            } catch {
                unreachable.append("\(agent[0]): \(error)")
            }
        }
        let ordered = exports.keys.sorted().map { exports[$0]! }
        let (health, findings) = Self.assess(ordered, agentsAsked: addresses.count, unreachable: unreachable, paths: paths)
        if json {
            let object: [String: Any] = ["exports": ordered, "unreachable_agents": unreachable, "paths": paths,
                                         "health": health.description, "findings": findings]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
            print(String(decoding: data, as: UTF8.self))
        } else {
            printTable(ordered, paths: paths, unreachable: unreachable)
            print("health: \(health)" + (findings.isEmpty ? "" : ": " + findings.joined(separator: "; ")))
        }
        if health != .ok { throw ExitCode(health.rawValue) }
    }

    static func assess(_ exports: [[String: Any]], agentsAsked: Int, unreachable: [String],
                       paths: [[String: Any]]) -> (ClusterHealth, [String]) {
        let conditions = exports.map { entry in
            ClusterHealth.Export(
                name: entry["name"] as? String ?? "?", served: entry["server"] != nil,
                monitored: (entry["monitor"] as? [String: Any])?["watching"] as? Bool == true,
                answeringAlone: entry["answering_alone"] as? Bool == true, waitingForPeer: entry["waiting"] != nil)
        }
        let pathsDown = paths.flatMap { view in
            (view["paths"] as? [[String: Any]] ?? []).filter { $0["state"] as? String == "down" }.map {
                "node \(view["node"] ?? "?") to \(view["peer"] ?? "?"), path \($0["path"] ?? "?")"
            }
        }
        return ClusterHealth.assess(exports: conditions, agentsAsked: agentsAsked, agentsUnreachable: unreachable,
                                    pathsDown: pathsDown)
    }

    private func printTable(_ ordered: [[String: Any]], paths: [[String: Any]], unreachable: [String]) {
        print("EXPORT".padding(16) + "EPOCH".padding(7) + "SERVER".padding(28) + "MONITOR".padding(10)
              + "JOURNAL SERVER/STANDBY".padding(24) + "PROBE RTT".padding(11) + "LAST FAILOVER")
        for entry in ordered {
            let server = entry["server"] as? [String: Any]
            let serverText = server.map { "\($0["node"] ?? "?") \($0["address"] ?? "") pid \($0["pid"] ?? "?")" } ?? "none"
            let monitor = (entry["monitor"] as? [String: Any])?["node"] as? String ?? "none"
            let failover = (entry["last_failover"] as? [String: Any]).map { "\($0["at"] ?? "") \($0["reason"] ?? "")" } ?? "-"
            let journal = entry["journal"] as? [String: Any] ?? [:]
            let copying = (entry["catching_up"] as? [String: Any]).map {
                "\($0["kind"] ?? "") copy \(($0["received_bytes"] as? Int ?? 0) >> 20)/\(($0["expected_bytes"] as? Int ?? 0) >> 20) MiB"
            }
            let positions = copying ?? "\(journal["server"] ?? "-")/\(journal["standby"] ?? "-")"
            let rtt = (entry["probe_rtt_ms"] as? Double).map { String(format: "%.2f ms", $0) } ?? "-"
            print("\(entry["name"]!)".padding(16) + "\(entry["epoch"] ?? "?")".padding(7) + serverText.padding(28)
                  + monitor.padding(10) + positions.padding(24) + rtt.padding(11) + failover)
        }
        for entry in ordered where entry["answering_alone"] as? Bool == true {
            print("\(entry["name"]!): the server answers without its standby: acknowledged writes are on one node until it is in step")
        }
        for entry in ordered {
            guard let waiting = entry["waiting"] as? [String: Any] else { continue }
            print("\(entry["name"]!): \(waiting["node"] ?? "?") waits for its peer before serving: \(waiting["why"] ?? "")"
                  + " (to serve without it: \(waiting["force"] ?? ""))")
        }
        for view in paths {
            let each = (view["paths"] as? [[String: Any]] ?? []).map { path -> String in
                let state = path["state"] as? String ?? "?"
                let since = (path["since_ms_ago"] as? Int).map { String(format: "%.1f s", Double($0) / 1000) } ?? "?"
                return "path \(path["path"] ?? "?") \(state == "down" ? "DOWN" : state) for \(since) (carries \(Diagnose.carried(path)))"
            }
            print("node \(view["node"]!) to \(view["peer"]!): \(each.joined(separator: "; "))")
        }
        for problem in unreachable { print("agent unreachable: \(problem)") }
    }
}

/// Each agent knows its own side of an export; `status` joins the two.
enum StatusMerge {
    static func merge(_ into: [String: Any], _ entry: [String: Any]) -> [String: Any] {
        var merged = into
        // During a swap both nodes may claim the server: the newer epoch wins.
        let entryEpoch = entry["epoch"] as? Int ?? 0
        if entry["server"] != nil, entryEpoch >= merged["server_epoch"] as? Int ?? 0 {
            merged["server"] = entry["server"]
            merged["server_epoch"] = entryEpoch
            merged["answering_alone"] = entry["answering_alone"]
        }
        // Each node knows the swaps it ran: the later one (ISO 8601 times sort as text).
        if let failover = entry["last_failover"] as? [String: Any],
           failover["at"] as? String ?? "" >= (merged["last_failover"] as? [String: Any])?["at"] as? String ?? "" {
            merged["last_failover"] = failover
        }
        merged["epoch"] = max(entryEpoch, merged["epoch"] as? Int ?? 0)
        if entry["role"] as? String == "standby" {
            merged["monitor"] = entry["monitor"]
            var journal = merged["journal"] as? [String: Any] ?? [:]
            journal["standby"] = entry["sequence"]
            journal["server"] = entry["server_sequence"]
            journal["lag"] = entry["lag"]
            merged["journal"] = journal
            if let rtt = entry["probe_rtt_ms"] { merged["probe_rtt_ms"] = rtt }
            if let copy = entry["catching_up"] { merged["catching_up"] = copy }
            if let last = entry["last_catch_up"] { merged["last_catch_up"] = last }
        }
        if let waiting = entry["waiting"] { merged["waiting"] = waiting }
        return merged
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
            let view = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
            let entry = (view["exports"] as? [[String: Any]])?.first { $0["name"] as? String == export }
            if entry?["role"] as? String == "server" {
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

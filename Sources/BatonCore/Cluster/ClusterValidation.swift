/// Where each checked value was written, so that the rules (which run on the
/// typed configuration, parsed or built in code) can point at the line.
/// Empty for a configuration built in code.
struct ClusterSourcePositions: Hashable, Sendable {
    enum Field: Hashable, Sendable {
        case secretFile
        /// The `switches` list.
        case switches
        /// A switch by index.
        case networkSwitch(Int)
        /// By TOML key, e.g. "probe_interval_ms".
        case timing(String)
        /// By TOML key, e.g. "ca"; "" for the `[tls]` header.
        case tls(String)
        /// Node by index, TOML key.
        case node(Int, String)
        /// Node by index, path by index.
        case nodePath(Int, Int)
        case export(Int, String)
    }

    private var places: [Field: TOMLPosition] = [:]

    subscript(field: Field) -> TOMLPosition? {
        get { places[field] }
        set { places[field] = newValue }
    }
}

/// The rules listed on `ClusterConfiguration`, checked in the order the example
/// file is written, each node and export whole before the next, so that the
/// problem reported is the first one an admin meets reading the file.
struct ClusterValidator {
    let positions: ClusterSourcePositions

    init(positions: ClusterSourcePositions) { self.positions = positions }

    func check(secretFile: String, switches: [String], timings: ClusterTimings, transport: TransportSecurity,
               nodes: [NodeConfiguration], exports: [ExportConfiguration]) throws(ClusterConfigurationError) {
        if let problem = Self.pathProblem(secretFile) {
            throw fail("secret_file \(problem); give the full path, from '/', of a file of at least \(ClusterConfiguration.minSecretBytes) random bytes, the same on every node",
                       at: .secretFile)
        }
        try check(switches: switches)
        try check(timings)
        if case .tls(let tls) = transport { try check(tls) }
        try check(nodes)
        try check(exports, nodes: nodes)
        for (index, export) in exports.enumerated() {
            try check(export.access, of: export, at: index, transport: transport)
            try check(export.squash, of: export, at: index, transport: transport)
        }
    }

    private func check(_ squash: Squash, of export: ExportConfiguration, at index: Int,
                       transport: TransportSecurity) throws(ClusterConfigurationError) {
        guard !squash.rootClients.isEmpty else { return }
        let subject = "export \(Self.quoted(export.name))"
        if squash.scope != .root {
            throw fail("\(subject): root_clients keep their root only under squash = \"root\", but squash is \(Self.quoted(squash.scope.rawValue)); remove root_clients or the squash line",
                       at: .export(index, "root_clients"))
        }
        if case .plaintext = transport {
            throw fail("\(subject): root_clients needs [tls]: over plain TCP a client has no certificate, so no name to check; add a [tls] table or remove the list",
                       at: .export(index, "root_clients"))
        }
        for pattern in squash.rootClients {
            if let problem = Self.labelProblem(pattern) {
                throw fail("\(subject): root_clients entry \(Self.quoted(pattern)) \(problem); list client certificate names or patterns with * and ?",
                           at: .export(index, "root_clients"))
            }
        }
    }

    private func check(_ access: ClientAccess, of export: ExportConfiguration, at index: Int,
                       transport: TransportSecurity) throws(ClusterConfigurationError) {
        let subject = "export \(Self.quoted(export.name))"
        guard access != .everyone else { return }
        let key = access.readWrite.isEmpty ? "read_only_clients" : "clients"
        guard !(access.readWrite.isEmpty && access.readOnly.isEmpty) else {
            throw fail("\(subject): clients lists no client, so no one could mount it; list client certificate names or patterns, like [\"laptop-*\"]",
                       at: .export(index, "clients"))
        }
        if case .plaintext = transport {
            throw fail("\(subject): \(key) needs [tls]: over plain TCP a client has no certificate, so no name to check; add a [tls] table or remove the list",
                       at: .export(index, key))
        }
        for (list, patterns) in [("clients", access.readWrite), ("read_only_clients", access.readOnly)] {
            for pattern in patterns {
                if let problem = Self.labelProblem(pattern) {
                    throw fail("\(subject): \(list) entry \(Self.quoted(pattern)) \(problem); list client certificate names or patterns with * and ?",
                               at: .export(index, list))
                }
            }
        }
    }

    // MARK: Switches

    private func check(switches: [String]) throws(ClusterConfigurationError) {
        let example = "like [\"198.18.1.254\", \"198.18.2.254\"]"
        guard switches.count <= ClusterConfiguration.maxSwitches else {
            throw fail("switches lists \(switches.count) addresses, over the limit of \(ClusterConfiguration.maxSwitches); the diagnostic ladder knows two network paths, so list the management address of each path's switch, path 1's first, \(example)",
                       at: .switches)
        }
        guard let (index, problem) = Self.firstAddressProblem(in: switches) else { return }
        let written = Self.quoted(switches[index])
        switch problem {
        case .host(let problem):
            throw fail("switch \(written) \(problem); list the management address of each network path's switch, path 1's first, \(example)",
                       at: .networkSwitch(index))
        case .hasPort:
            throw fail("switch \(written) has a port; write the switch's management address alone, like \"198.18.1.254\"",
                       at: .networkSwitch(index))
        case .listedTwice:
            throw fail("switch \(written) is listed twice; each network path has its own switch, so list each once, path 1's first",
                       at: .networkSwitch(index))
        }
    }

    // MARK: TLS

    private func check(_ tls: ClusterTLS) throws(ClusterConfigurationError) {
        let files: [(key: String, path: String?, what: String)] = [
            ("ca", tls.ca, "the cluster's CA certificate, like \"/etc/baton/tls/ca.pem\""),
            ("cert", tls.cert, "each node's certificate, like \"/etc/baton/tls/{node}.pem\" ({node} stands for the node's name)"),
            ("key", tls.key, "each node's private key, like \"/etc/baton/tls/{node}.key\""),
            ("admin_cert", tls.adminCert, "the admin certificate, like \"/etc/baton/tls/admin.pem\""),
            ("admin_key", tls.adminKey, "the admin private key, like \"/etc/baton/tls/admin.key\""),
        ]
        for file in files {
            guard let path = file.path, let problem = Self.pathProblem(path) else { continue }
            throw fail("[tls]: \(file.key) \(problem); give the full path, from '/', of \(file.what)", at: .tls(file.key))
        }
        guard (tls.adminCert == nil) == (tls.adminKey == nil) else {
            let (given, missing) = tls.adminCert == nil ? ("admin_key", "admin_cert") : ("admin_cert", "admin_key")
            throw fail("[tls]: \(given) is given without \(missing); give both (the admin commands present them) or neither",
                       at: .tls(given))
        }
    }

    // MARK: Timings

    private func check(_ timings: ClusterTimings) throws(ClusterConfigurationError) {
        for field in ClusterTimings.fields {
            let value = timings[keyPath: field.path]
            let limit = field.key == "probe_misses" ? MonitorTimings.maxProbeMisses : ClusterTimings.maxMilliseconds
            let unit = field.key == "probe_misses" ? "a count" : "a whole number of milliseconds"
            guard (1...limit).contains(value) else {
                throw fail("[timings]: \(field.key) is \(value); use \(unit) from 1 to \(limit)",
                           at: .timing(field.key))
            }
        }
        // The monitor keeps one probe per interval outstanding until its deadline; MonitorTimings bounds how many.
        let maxOutstanding = MonitorTimings.maxOutstandingProbes
        guard timings.probeDeadlineMilliseconds / timings.probeIntervalMilliseconds < maxOutstanding else {
            throw fail("[timings]: probe_deadline_ms (\(timings.probeDeadlineMilliseconds)) must be less than \(maxOutstanding) times probe_interval_ms (\(timings.probeIntervalMilliseconds)), the most probes a monitor keeps outstanding; shorten the deadline or lengthen the interval",
                       at: .timing("probe_deadline_ms"), .timing("probe_interval_ms"))
        }
        guard timings.heartbeatGraceMilliseconds > timings.heartbeatIntervalMilliseconds else {
            throw fail("[timings]: heartbeat_grace_ms (\(timings.heartbeatGraceMilliseconds)) must be longer than heartbeat_interval_ms (\(timings.heartbeatIntervalMilliseconds)), or one late heartbeat declares the server failed; the defaults are 500 and 100",
                       at: .timing("heartbeat_grace_ms"), .timing("heartbeat_interval_ms"))
        }
        guard timings.agentHeartbeatGraceMilliseconds > timings.agentHeartbeatIntervalMilliseconds else {
            throw fail("[timings]: agent_heartbeat_grace_ms (\(timings.agentHeartbeatGraceMilliseconds)) must be longer than agent_heartbeat_interval_ms (\(timings.agentHeartbeatIntervalMilliseconds)), or one late heartbeat starts the diagnostic ladder; the defaults are 1000 and 200",
                       at: .timing("agent_heartbeat_grace_ms"), .timing("agent_heartbeat_interval_ms"))
        }
        try checkDelays(timings)
    }

    /// The rules of `DiagnosisTimings.init`, by calling it, so that they cannot
    /// drift apart and `ClusterTimings.diagnosisTimings` never fails for a checked configuration.
    private func checkDelays(_ timings: ClusterTimings) throws(ClusterConfigurationError) {
        let selffence = timings.selffenceDelayMilliseconds
        let takeover = timings.takeoverDelayMilliseconds
        let grace = timings.agentHeartbeatGraceMilliseconds
        let interval = timings.agentHeartbeatIntervalMilliseconds
        let defaults = ClusterTimings.defaults
        do throws(DiagnosisTimings.Invalid) {
            _ = try timings.checkedDiagnosisTimings()
        } catch {
            switch error {
            case .selffenceNotBeforeTakeover:
                throw fail("[timings]: selffence_delay_ms (\(selffence)) must be shorter than takeover_delay_ms (\(takeover)), so that an isolated node has stopped its servers before its peer takes over, or both nodes may serve an export at once; shorten selffence_delay_ms or lengthen takeover_delay_ms; the defaults are \(defaults.selffenceDelayMilliseconds) and \(defaults.takeoverDelayMilliseconds)",
                           at: .timing("selffence_delay_ms"), .timing("takeover_delay_ms"))
            case .ladderLongerThanSelffenceDelay:
                let rounds = DiagnosisLadder.maxRounds
                let round = ClusterTimings.diagnosisRoundDeadline.nanoseconds / 1_000_000
                throw fail("[timings]: selffence_delay_ms (\(selffence)) must be at least agent_heartbeat_grace_ms (\(grace)) plus \(round * UInt64(rounds)), the longest diagnostic ladder (\(rounds) rounds of \(round) ms), or an isolated node finds out too late to stop its servers in time; lengthen selffence_delay_ms (and takeover_delay_ms with it) or shorten agent_heartbeat_grace_ms; the defaults are \(defaults.selffenceDelayMilliseconds) and \(defaults.agentHeartbeatGraceMilliseconds)",
                           at: .timing("selffence_delay_ms"), .timing("agent_heartbeat_grace_ms"))
            case .delaysCloserThanHeartbeatInterval:
                throw fail("[timings]: takeover_delay_ms (\(takeover)) must be longer than selffence_delay_ms (\(selffence)) plus agent_heartbeat_interval_ms (\(interval)), since the two nodes last heard each other up to one heartbeat interval apart, or both nodes may serve an export at once; lengthen takeover_delay_ms or shorten the other two; the defaults are \(defaults.takeoverDelayMilliseconds), \(defaults.selffenceDelayMilliseconds) and \(defaults.agentHeartbeatIntervalMilliseconds)",
                           at: .timing("takeover_delay_ms"), .timing("selffence_delay_ms"), .timing("agent_heartbeat_interval_ms"))
            case .zeroDeadline:
                // The round deadline is a positive constant and the range check above makes the interval at least 1 ms.
                preconditionFailure("the diagnosis timings have a zero deadline after the range check")
            }
        }
        // A server whose standby runs a swap against it holds its replies; cut off from that standby, it answers
        // alone only after the wait limit, which must come after the peer's takeover (DESIGN.md §4.2).
        let waitLimit = timings.standbyWaitLimitMilliseconds
        guard takeover < waitLimit else {
            throw fail("[timings]: takeover_delay_ms (\(takeover)) must be shorter than standby_wait_limit_ms (\(waitLimit)), so that a server cut off from a standby that is taking the export over has not begun to answer without it by the time the takeover comes, or acknowledged writes may be lost; lengthen standby_wait_limit_ms or shorten takeover_delay_ms; the defaults are \(defaults.takeoverDelayMilliseconds) and \(defaults.standbyWaitLimitMilliseconds)",
                       at: .timing("takeover_delay_ms"), .timing("standby_wait_limit_ms"))
        }
    }

    // MARK: Nodes

    private func check(_ nodes: [NodeConfiguration]) throws(ClusterConfigurationError) {
        guard nodes.count >= 2 else {
            throw fail("the cluster has \(nodes.count) node\(nodes.count == 1 ? "" : "s"); add [[nodes]] tables for at least two, so that each export's monitor runs on another node than its server")
        }
        guard nodes.count <= ClusterConfiguration.maxNodes else {
            throw fail("the cluster has \(nodes.count) nodes, over the limit of \(ClusterConfiguration.maxNodes)")
        }
        var nameIndex: [String: Int] = [:]
        var agentIndex: [HostAndPort: Int] = [:]
        var dataDirectoryIndex: [HostDirectory: Int] = [:]
        for (index, node) in nodes.enumerated() {
            if let problem = Self.nameProblem(node.name) {
                throw fail("node name \(Self.quoted(node.name)) \(problem); \(Self.nameRule)", at: .node(index, "name"))
            }
            let subject = "node \(Self.quoted(node.name))"
            if let first = nameIndex[node.name] {
                throw fail("\(subject) is defined twice\(firstOnLine(.node(first, "name"))); give each node its own name",
                           at: .node(index, "name"))
            }
            nameIndex[node.name] = index

            if let problem = Self.labelProblem(node.site) {
                throw fail("\(subject): site \(Self.quoted(node.site)) \(problem); name the LAN the node is on, or leave site out for \"\(NodeConfiguration.defaultSite)\"",
                           at: .node(index, "site"))
            }

            if let problem = Self.hostProblem(node.agent.host) {
                throw fail("\(subject): agent host \(Self.quoted(node.agent.host)) \(problem); write agent = \"HOST:PORT\", like \"127.0.0.1:7100\"",
                           at: .node(index, "agent"))
            }
            guard Self.portRange.contains(node.agent.port) else {
                throw fail("\(subject): agent port \(node.agent.port) is out of range; use a port from 1 to 65535",
                           at: .node(index, "agent"))
            }
            if let first = agentIndex[node.agent] {
                throw fail("\(subject): agent \(node.agent) is also node \(Self.quoted(nodes[first].name))'s\(onLine(.node(first, "agent"))); give each node its own agent HOST:PORT",
                           at: .node(index, "agent"))
            }
            agentIndex[node.agent] = index
            if let metrics = node.metrics {
                if let problem = Self.hostProblem(metrics.host) {
                    throw fail("\(subject): metrics host \(Self.quoted(metrics.host)) \(problem); write metrics = \"HOST:PORT\", like \"0.0.0.0:9464\"",
                               at: .node(index, "metrics"))
                }
                guard Self.portRange.contains(metrics.port), metrics.port != node.agent.port else {
                    throw fail("\(subject): metrics port \(metrics.port) is \(metrics.port == node.agent.port ? "the agent's port" : "out of range"); use a port of its own from 1 to 65535, like 9464",
                               at: .node(index, "metrics"))
                }
            }

            try check(paths: node.paths, of: index, subject: subject)

            if let problem = Self.pathProblem(node.dataDirectory) {
                throw fail("\(subject): data_dir \(problem); give the full path, from '/', of the directory where the node keeps export data, like \"/var/lib/baton/\(node.name)\"",
                           at: .node(index, "data_dir"))
            }
            // Nodes on different hosts may well share a path; two on one host (a test cluster) would overwrite each other.
            var directory = Substring(node.dataDirectory)
            while directory.count > 1, directory.last == "/" { directory.removeLast() }
            let key = HostDirectory(host: node.agent.host, directory: String(directory))
            if let first = dataDirectoryIndex[key] {
                throw fail("\(subject): data_dir \(Self.quoted(node.dataDirectory)) is also node \(Self.quoted(nodes[first].name))'s\(onLine(.node(first, "data_dir"))), on the same host \(node.agent.host); give each node on one host its own data_dir",
                           at: .node(index, "data_dir"))
            }
            dataDirectoryIndex[key] = index
        }
    }

    private func check(paths: [String], of node: Int, subject: String) throws(ClusterConfigurationError) {
        guard paths.count <= ClusterConfiguration.maxPathsPerNode else {
            throw fail("\(subject): \(paths.count) paths, over the limit of \(ClusterConfiguration.maxPathsPerNode); list one address per NIC",
                       at: .node(node, "paths"))
        }
        guard let (index, problem) = Self.firstAddressProblem(in: paths) else { return }
        let written = Self.quoted(paths[index])
        switch problem {
        case .host(let problem):
            throw fail("\(subject): path \(written) \(problem); list the node's extra addresses, one per NIC",
                       at: .nodePath(node, index))
        case .hasPort:
            throw fail("\(subject): path \(written) has a port; write the address alone, heartbeats go to the agent's port",
                       at: .nodePath(node, index))
        case .listedTwice:
            throw fail("\(subject): path \(written) is listed twice; list each address once",
                       at: .nodePath(node, index))
        }
    }

    /// What can be wrong with one entry of a list of addresses written without a port (a node's paths, the switches).
    enum AddressProblem: Hashable {
        /// `hostProblem`'s answer.
        case host(String)
        case hasPort
        /// An earlier entry is the same.
        case listedTwice
    }

    /// The first entry of `addresses` that is not a host or address, has a port, or repeats an earlier one.
    static func firstAddressProblem(in addresses: [String]) -> (index: Int, problem: AddressProblem)? {
        var seen: Set<String> = []
        for (index, address) in addresses.enumerated() {
            if let problem = hostProblem(address) { return (index, .host(problem)) }
            // One colon is HOST:PORT; an IPv6 address has at least two.
            if address.utf8.count(where: { $0 == UInt8(ascii: ":") }) == 1 { return (index, .hasPort) }
            if !seen.insert(address).inserted { return (index, .listedTwice) }
        }
        return nil
    }

    // MARK: Exports

    private func check(_ exports: [ExportConfiguration], nodes: [NodeConfiguration]) throws(ClusterConfigurationError) {
        guard exports.count <= ClusterConfiguration.maxExports else {
            throw fail("the cluster has \(exports.count) exports, over the limit of \(ClusterConfiguration.maxExports)")
        }
        var nameIndex: [String: Int] = [:]
        /// Each export's port and monitor port: the export's index and the key.
        var portIndex: [Int: (Int, String)] = [:]
        var agentPorts: [Int: Int] = [:]
        for (index, node) in nodes.enumerated() where agentPorts[node.agent.port] == nil {
            agentPorts[node.agent.port] = index
        }
        for (index, export) in exports.enumerated() {
            if let problem = Self.nameProblem(export.name) {
                throw fail("export name \(Self.quoted(export.name)) \(problem); \(Self.nameRule)", at: .export(index, "name"))
            }
            let subject = "export \(Self.quoted(export.name))"
            if let first = nameIndex[export.name] {
                throw fail("\(subject) is defined twice\(firstOnLine(.export(first, "name"))); give each export its own name",
                           at: .export(index, "name"))
            }
            nameIndex[export.name] = index

            guard nodes.contains(where: { $0.name == export.preferredNode }) else {
                let names = nodes.map { Self.quoted($0.name) }.joined(separator: ", ")
                throw fail("\(subject): preferred node \(Self.quoted(export.preferredNode)) is not one of the nodes (\(names)); name the node that serves the export when the cluster starts",
                           at: .export(index, "preferred"))
            }

            for (key, port) in [("port", export.port), ("monitor_port", export.monitorPort)] {
                let what = key == "port" ? "port" : "monitor port"
                let field = portField(index, key)
                let advice = key == "port" ? "" : " (it is the port after port unless monitor_port is set)"
                guard Self.portRange.contains(port) else {
                    throw fail("\(subject): \(what) \(port) is out of range\(advice); use a port from 1 to 65535", at: field)
                }
                if let (first, firstKey) = portIndex[port] {
                    let firstWhat = firstKey == "port" ? "port" : "monitor port"
                    let owner = first == index ? "its own \(firstWhat)" : "export \(Self.quoted(exports[first].name))'s"
                        + (firstKey == key ? "" : " \(firstWhat)")
                    let remedy = firstKey == key ? "give each export its own \(what)" : "give each export its own port and monitor port"
                    throw fail("\(subject): \(what) \(port) is also \(owner)\(onLine(portField(first, firstKey)))\(advice); \(remedy)",
                               at: field)
                }
                // Any node may come to serve any export, on that node's agent host: a port one agent uses is taken on some host.
                if let node = agentPorts[port] {
                    throw fail("\(subject): \(what) \(port) is node \(Self.quoted(nodes[node].name))'s agent port\(onLine(.node(node, "agent")))\(advice); an export may be served on any node, so give it a \(what) no agent uses",
                               at: field)
                }
                portIndex[port] = (index, key)
            }
        }
    }

    /// Where an export's port or monitor port was written; a monitor port left
    /// out is the port after `port`, so a rule about it points at `port`.
    private func portField(_ index: Int, _ key: String) -> ClusterSourcePositions.Field {
        positions[.export(index, key)] == nil ? .export(index, "port") : .export(index, key)
    }

    private struct HostDirectory: Hashable {
        var host: String
        var directory: String
    }

    // MARK: Messages

    /// At the first of `fields` written in the file: a rule between two values
    /// points at the second when the first was left at its default.
    private func fail(_ message: String, at fields: ClusterSourcePositions.Field...) -> ClusterConfigurationError {
        for field in fields {
            if let place = positions[field] { return ClusterConfigurationError(message, line: place.line, column: place.column) }
        }
        return ClusterConfigurationError(message)
    }

    /// " on line 9" when the field came from the file; nothing for a configuration built in code.
    private func onLine(_ field: ClusterSourcePositions.Field) -> String {
        positions[field].map { " on line \($0.line)" } ?? ""
    }

    private func firstOnLine(_ field: ClusterSourcePositions.Field) -> String {
        positions[field].map { " (first on line \($0.line))" } ?? ""
    }

    // MARK: Rules on single values

    static let portRange = 1...65535

    static let nameRule = "names are 1 to \(ClusterConfiguration.maxNameBytes) bytes without '@', '/', ',', white space or control characters, since they appear in mount specifications (EXPORT@NODE_A,NODE_B), fstab lines and directory names"

    /// Nil when `name` may name a node or an export.
    static func nameProblem(_ name: String) -> String? {
        if let problem = labelProblem(name) { return problem }
        if name == "." || name == ".." { return "is not allowed, since it names a directory" }
        for scalar in name.unicodeScalars {
            switch scalar {
            case "@", "/", ",": return "contains '\(scalar)'"
            case _ where scalar.properties.isWhitespace: return "contains white space"
            default: continue
            }
        }
        return nil
    }

    /// Nil when `label` is non-empty, bounded and printable: the rule for sites, and the base of the name rule.
    static func labelProblem(_ label: String) -> String? {
        if label.isEmpty { return "is empty" }
        let size = label.utf8.count
        if size > ClusterConfiguration.maxNameBytes { return "is \(size) bytes long, over the limit of \(ClusterConfiguration.maxNameBytes)" }
        if let control = label.unicodeScalars.first(where: ClusterTOML.isControl) { return "contains the control character \(ClusterTOML.codePoint(control))" }
        return nil
    }

    /// Nil when `host` can be a host name or an address (not resolved: the core does no IO).
    static func hostProblem(_ host: String) -> String? {
        if let problem = labelProblem(host) { return problem }
        for scalar in host.unicodeScalars {
            switch scalar {
            case "@", "/", ",", "[", "]": return "contains '\(scalar)'"
            case _ where scalar.properties.isWhitespace: return "contains white space"
            default: continue
            }
        }
        return nil
    }

    /// Nil when `path` is absolute: agents do not run from a fixed directory, so a relative path would move with them.
    static func pathProblem(_ path: String) -> String? {
        if path.isEmpty { return "is empty" }
        if let control = path.unicodeScalars.first(where: ClusterTOML.isControl) {
            return "\(quoted(path)) contains the control character \(ClusterTOML.codePoint(control))"
        }
        if !path.hasPrefix("/") { return "\(quoted(path)) is not an absolute path" }
        return nil
    }

    /// As the cluster file would write it, so a message shows exactly what was read.
    static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": result += "\\\\"
            case "\"": result += "\\\""
            case "\n": result += "\\n"
            case "\t": result += "\\t"
            case _ where ClusterTOML.isControl(scalar): result += ClusterTOML.codePoint(scalar)
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}

extension ClusterTimings {
    /// The `[timings]` keys in file order, with the fields they set.
    static var fields: [(key: String, path: WritableKeyPath<ClusterTimings, Int>)] {
        [("probe_interval_ms", \.probeIntervalMilliseconds),
         ("probe_deadline_ms", \.probeDeadlineMilliseconds),
         ("probe_misses", \.probeMisses),
         ("heartbeat_interval_ms", \.heartbeatIntervalMilliseconds),
         ("heartbeat_grace_ms", \.heartbeatGraceMilliseconds),
         ("agent_heartbeat_interval_ms", \.agentHeartbeatIntervalMilliseconds),
         ("agent_heartbeat_grace_ms", \.agentHeartbeatGraceMilliseconds),
         ("selffence_delay_ms", \.selffenceDelayMilliseconds),
         ("takeover_delay_ms", \.takeoverDelayMilliseconds),
         ("standby_wait_limit_ms", \.standbyWaitLimitMilliseconds)]
    }
}

extension ClusterConfiguration {
    /// Nil when `name` may name an export; else what is wrong and the rule
    /// (for names that come from elsewhere than a cluster file: a mount's source).
    public static func exportNameProblem(_ name: String) -> String? {
        ClusterValidator.nameProblem(name).map { "\($0); \(ClusterValidator.nameRule)" }
    }
}

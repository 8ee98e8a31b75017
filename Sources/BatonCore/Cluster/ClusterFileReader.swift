/// Turns the parsed cluster file into a `ClusterConfiguration`: the keys each
/// table takes, their types, the defaults of optional keys, and where each
/// value was written. The rules on the values themselves are
/// `ClusterValidator`'s, shared with configurations built in code.
enum ClusterFileReader {
    static func read(_ root: TOMLTable) throws(ClusterConfigurationError) -> ClusterConfiguration {
        var positions = ClusterSourcePositions()
        let top = TableReader(table: root, subject: "", headerLine: nil, name: "the top level")
        try top.checkKeys(["secret_file", "switches", "plaintext", "tls", "timings", "nodes", "exports"],
                          described: "secret_file, switches, plaintext, [tls], [timings], [[nodes]] and [[exports]]")

        let secretFile = try top.string(
            "secret_file", required: "secret_file = \"/etc/baton/secret\", the path of a file of at least \(ClusterConfiguration.minSecretBytes) random bytes, the same on every node")
        positions[.secretFile] = root["secret_file"]?.value.position

        let switches = try top.strings("switches", like: "[\"198.18.1.254\", \"198.18.2.254\"]") ?? []
        positions[.switches] = root["switches"]?.value.position
        for (index, place) in elementPositions(root, "switches").enumerated() { positions[.networkSwitch(index)] = place }

        var timings = ClusterTimings.defaults
        if let entry = root["timings"] {
            guard case .table(let table) = entry.value.kind else {
                throw ClusterConfigurationError(
                    "timings must be one [timings] header with its keys on the lines below; found \(entry.value.kindName)",
                    line: entry.keyPosition.line, column: entry.keyPosition.column)
            }
            let reader = TableReader(table: table, subject: "[timings]", headerLine: table.position.line, name: "[timings]")
            try reader.checkKeys(ClusterTimings.fields.map(\.key))
            for field in ClusterTimings.fields {
                guard let value = try reader.integer(field.key) else { continue }
                timings[keyPath: field.path] = value
                positions[.timing(field.key)] = table[field.key]?.value.position
            }
        }

        let transport = try readTransport(root, top: top, positions: &positions)

        let nodeTables = try tables(of: root, key: "nodes")
        var nodes: [NodeConfiguration] = []
        for (index, table) in nodeTables.enumerated() {
            nodes.append(try readNode(table, index: index, positions: &positions))
        }
        let exportTables = try tables(of: root, key: "exports")
        var exports: [ExportConfiguration] = []
        for (index, table) in exportTables.enumerated() {
            exports.append(try readExport(table, index: index, positions: &positions))
        }
        return try ClusterConfiguration(secretFile: secretFile, switches: switches, timings: timings, transport: transport,
                                        nodes: nodes, exports: exports, positions: positions)
    }

    /// `[tls]`, or `plaintext = true`; exactly one of them.
    private static func readTransport(_ root: TOMLTable, top: TableReader,
                                      positions: inout ClusterSourcePositions) throws(ClusterConfigurationError) -> TransportSecurity {
        let plaintext = try top.boolean("plaintext") ?? false
        guard let entry = root["tls"] else {
            if plaintext { return .plaintext }
            if let place = root["plaintext"]?.value.position {
                throw ClusterConfigurationError(
                    "plaintext = false needs a [tls] table; add [tls] with ca, cert and key (make them with `baton cert`), or write plaintext = true to run without encryption",
                    line: place.line, column: place.column)
            }
            throw ClusterConfigurationError(
                "the file says neither [tls] nor plaintext; add a [tls] table with ca = \"/etc/baton/tls/ca.pem\", cert = \"/etc/baton/tls/{node}.pem\" and key = \"/etc/baton/tls/{node}.key\" (make them with `baton cert`), or plaintext = true to run without encryption")
        }
        guard case .table(let table) = entry.value.kind else {
            throw ClusterConfigurationError(
                "tls must be one [tls] header with its keys on the lines below; found \(entry.value.kindName)",
                line: entry.keyPosition.line, column: entry.keyPosition.column)
        }
        if plaintext, let place = root["plaintext"]?.value.position {
            throw ClusterConfigurationError(
                "plaintext = true and a [tls] table contradict each other; remove plaintext to use TLS, or [tls] to run without encryption",
                line: place.line, column: place.column)
        }
        let reader = TableReader(table: table, subject: "[tls]", headerLine: table.position.line, name: "[tls]")
        let keys = ["ca", "cert", "key", "admin_cert", "admin_key"]
        try reader.checkKeys(keys)
        for key in keys { positions[.tls(key)] = table[key]?.value.position }
        return .tls(ClusterTLS(
            ca: try reader.string("ca", required: "ca = \"/etc/baton/tls/ca.pem\", the path of the cluster's CA certificate"),
            cert: try reader.string("cert", required: "cert = \"/etc/baton/tls/{node}.pem\", the path of each node's certificate ({node} stands for its name)"),
            key: try reader.string("key", required: "key = \"/etc/baton/tls/{node}.key\", the path of each node's private key"),
            adminCert: try reader.string("admin_cert"), adminKey: try reader.string("admin_key")))
    }

    /// The tables of `[[key]]` headers; none when the key is absent (the validator counts them).
    private static func tables(of root: TOMLTable, key: String) throws(ClusterConfigurationError) -> [TOMLTable] {
        guard let entry = root[key] else { return [] }
        guard case .arrayOfTables(let tables) = entry.value.kind else {
            throw ClusterConfigurationError(
                "\(key) must be a [[\(key)]] header (two pairs of brackets) before each entry; found \(entry.value.kindName)",
                line: entry.keyPosition.line, column: entry.keyPosition.column)
        }
        return tables
    }

    private static func readNode(_ table: TOMLTable, index: Int,
                                 positions: inout ClusterSourcePositions) throws(ClusterConfigurationError) -> NodeConfiguration {
        let reader = TableReader(table: table, kind: "nodes")
        try reader.checkKeys(["name", "site", "agent", "paths", "data_dir", "metrics"])
        let name = try reader.string("name", required: "name = \"...\" with a name unique among the nodes")
        let site = try reader.string("site") ?? NodeConfiguration.defaultSite
        let agentText = try reader.string("agent", required: "agent = \"HOST:PORT\" with the address of the node's agent, like \"127.0.0.1:7100\"")
        let paths = try reader.strings("paths", like: "[\"198.18.1.1\", \"198.18.2.1\"]") ?? []
        let dataDirectory = try reader.string(
            "data_dir", required: "data_dir = \"...\" with the directory where the node keeps export data, like \"/var/lib/baton/\(name)\"")
        let metricsText = try reader.string("metrics")
        for key in ["name", "site", "agent", "paths", "data_dir", "metrics"] {
            positions[.node(index, key)] = table[key]?.value.position
        }
        for (pathIndex, place) in elementPositions(table, "paths").enumerated() { positions[.nodePath(index, pathIndex)] = place }
        let agent = try hostAndPort(agentText, key: "agent", subject: reader.subject, at: table["agent"]!.value.position)
        var metrics: HostAndPort?
        if let metricsText {
            metrics = try hostAndPort(metricsText, key: "metrics", subject: reader.subject, at: table["metrics"]!.value.position)
        }
        return NodeConfiguration(name: name, site: site, agent: agent, paths: paths, dataDirectory: dataDirectory, metrics: metrics)
    }

    private static func readExport(_ table: TOMLTable, index: Int,
                                   positions: inout ClusterSourcePositions) throws(ClusterConfigurationError) -> ExportConfiguration {
        let reader = TableReader(table: table, kind: "exports")
        try reader.checkKeys(Self.exportKeys)
        let name = try reader.string("name", required: "name = \"...\" with a name unique among the exports")
        let preferred = try reader.string(
            "preferred", required: "preferred = \"...\" with the name of the node that serves the export when the cluster starts")
        let port = try reader.integer("port", required: "port = ... with the port clients connect to, like 7000")
        let monitorPort = try reader.integer("monitor_port")
        var replication = ReplicationMode.sync
        if let text = try reader.string("replication") {
            guard let mode = ReplicationMode(rawValue: text) else {
                let place = table["replication"]!.value.position
                throw ClusterConfigurationError(
                    "\(reader.subject): replication must be \"sync\" or \"async\"; found \(ClusterValidator.quoted(text))",
                    line: place.line, column: place.column)
            }
            replication = mode
        }
        let clients = try reader.strings("clients", like: "[\"laptop-*\", \"build\"]")
        let readOnlyClients = try reader.strings("read_only_clients", like: "[\"backup\"]")
        for key in Self.exportKeys {
            positions[.export(index, key)] = table[key]?.value.position
        }
        var squash = Squash.rootToNobody
        if let text = try reader.string("squash") {
            guard let scope = Squash.Scope(rawValue: text) else {
                let place = table["squash"]!.value.position
                throw ClusterConfigurationError(
                    "\(reader.subject): squash must be \"root\" (root acts as anonuid, the default), \"all\" (every caller does) "
                        + "or \"none\" (callers keep their uid); found \(ClusterValidator.quoted(text))",
                    line: place.line, column: place.column)
            }
            squash.scope = scope
        }
        if let uid = try reader.integer("anonuid") { squash.anonymous.uid = try identity(uid, "anonuid", reader, table) }
        if let gid = try reader.integer("anongid") { squash.anonymous.gid = try identity(gid, "anongid", reader, table) }
        squash.rootClients = try reader.strings("root_clients", like: "[\"admin-host\"]") ?? []
        let lockLease = try reader.integer("lock_lease_ms") ?? ExportConfiguration.defaultLockLeaseMilliseconds
        guard ExportConfiguration.lockLeaseRange.contains(lockLease) else {
            let place = table["lock_lease_ms"]!.value.position
            throw ClusterConfigurationError(
                "\(reader.subject): lock_lease_ms must be from \(ExportConfiguration.lockLeaseRange.lowerBound) to "
                    + "\(ExportConfiguration.lockLeaseRange.upperBound) (how long a client with locks may be away before they are released); found \(lockLease)",
                line: place.line, column: place.column)
        }
        // Without lists every client of the CA may write; with read-only clients only, only they may mount.
        let access = clients == nil && readOnlyClients == nil
            ? ClientAccess.everyone : ClientAccess(readWrite: clients ?? [], readOnly: readOnlyClients ?? [])
        return ExportConfiguration(name: name, preferredNode: preferred, port: port, monitorPort: monitorPort,
                                   replication: replication, access: access, squash: squash, lockLeaseMilliseconds: lockLease)
    }

    private static let exportKeys = ["name", "preferred", "port", "monitor_port", "replication", "clients", "read_only_clients",
                                     "squash", "anonuid", "anongid", "root_clients", "lock_lease_ms"]

    /// A uid or gid: 0 to 2^32 - 2 (2^32 - 1 is chown's "leave it").
    private static func identity(_ number: Int, _ key: String, _ reader: TableReader,
                                 _ table: TOMLTable) throws(ClusterConfigurationError) -> UInt32 {
        guard number >= 0, number < Int(UInt32.max) else {
            let place = table[key]!.value.position
            throw ClusterConfigurationError("\(reader.subject): \(key) must be a uid or gid from 0 to \(UInt32.max - 1); found \(number)",
                                            line: place.line, column: place.column)
        }
        return UInt32(number)
    }

    /// Where each element of the list at `key` was written; none when the key is absent or not a list.
    private static func elementPositions(_ table: TOMLTable, _ key: String) -> [TOMLPosition] {
        guard case .array(let elements)? = table[key]?.value.kind else { return [] }
        return elements.map(\.position)
    }

    /// `HOST:PORT`, or `[IPV6]:PORT`. The host's and port's ranges are the validator's.
    private static func hostAndPort(_ text: String, key: String, subject: String,
                                    at place: TOMLPosition) throws(ClusterConfigurationError) -> HostAndPort {
        func fail(_ problem: String) -> ClusterConfigurationError {
            ClusterConfigurationError(
                "\(subject): \(key) \(ClusterValidator.quoted(text)) \(problem)", line: place.line, column: place.column)
        }
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[close...].hasPrefix("]:") else {
                throw fail("is not [IPV6]:PORT; write it like \"[::1]:7100\"")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw fail("has no port; write \(key) = \"HOST:PORT\", like \"127.0.0.1:7100\"")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            guard !host.contains(":") else {
                throw fail("is ambiguous; write an IPv6 address in brackets, like \"[::1]:7100\"")
            }
        }
        // Five digits at most: anything longer is out of range anyway, and cannot overflow here.
        guard (1...5).contains(portText.count), portText.allSatisfy({ ("0"..."9").contains($0) }), let port = Int(portText) else {
            throw fail("does not end in a port number; write \(key) = \"HOST:PORT\" with a port from 1 to 65535")
        }
        return HostAndPort(host: String(host), port: port)
    }
}

/// Reads the keys of one table, with errors that name the table and say what to write.
private struct TableReader {
    let table: TOMLTable
    /// How messages name what the table describes: `node "a"`, `[timings]`; empty at the top level.
    let subject: String
    /// Where a missing key is reported; nil at the top level, which has no header.
    let headerLine: Int?
    /// How the unknown-key message names the table: "a [[nodes]] table", "[timings]".
    let name: String

    init(table: TOMLTable, subject: String, headerLine: Int?, name: String) {
        self.table = table
        self.subject = subject
        self.headerLine = headerLine
        self.name = name
    }

    /// A `[[kind]]` table, named by its name key once that is a string, so that
    /// every later message about it says which node or export it is.
    init(table: TOMLTable, kind: String) {
        let noun = kind == "nodes" ? "node" : "export"
        let subject: String
        if case .string(let name)? = table["name"]?.value.kind {
            subject = "\(noun) \(ClusterValidator.quoted(name))"
        } else {
            subject = "the [[\(kind)]] table on line \(table.position.line)"
        }
        self.init(table: table, subject: subject, headerLine: table.position.line, name: "a [[\(kind)]] table")
    }

    private var prefix: String { subject.isEmpty ? "" : "\(subject): " }

    /// A typo must not be silently ignored: an unknown key is an error that names the known ones.
    func checkKeys(_ known: [String], described: String? = nil) throws(ClusterConfigurationError) {
        for entry in table.entries where !known.contains(entry.key) {
            var message = "\(prefix)unknown key '\(entry.key)'"
            if let suggestion = Self.closest(to: entry.key, among: known) { message += " (did you mean '\(suggestion)'?)" }
            message += "; \(name) takes \(described ?? Self.list(known))"
            throw ClusterConfigurationError(message, line: entry.keyPosition.line, column: entry.keyPosition.column)
        }
    }

    func string(_ key: String) throws(ClusterConfigurationError) -> String? {
        guard let value = table[key]?.value else { return nil }
        guard case .string(let text) = value.kind else {
            throw wrongType(key, value, expected: "a \"string\"", hint: "; write it in double quotes")
        }
        return text
    }

    func string(_ key: String, required hint: String) throws(ClusterConfigurationError) -> String {
        guard let text = try string(key) else { throw missing(key, hint: hint) }
        return text
    }

    func boolean(_ key: String) throws(ClusterConfigurationError) -> Bool? {
        guard let value = table[key]?.value else { return nil }
        guard case .boolean(let flag) = value.kind else {
            throw wrongType(key, value, expected: "true or false", hint: Self.isString(value) ? "; write it without quotes" : "")
        }
        return flag
    }

    func integer(_ key: String) throws(ClusterConfigurationError) -> Int? {
        guard let value = table[key]?.value else { return nil }
        guard case .integer(let number) = value.kind else {
            throw wrongType(key, value, expected: "a number", hint: Self.isString(value) ? "; write the number without quotes" : "")
        }
        return number
    }

    func integer(_ key: String, required hint: String) throws(ClusterConfigurationError) -> Int {
        guard let number = try integer(key) else { throw missing(key, hint: hint) }
        return number
    }

    /// `example` is a list as the key would write it, for the message when the value is not a list.
    func strings(_ key: String, like example: String) throws(ClusterConfigurationError) -> [String]? {
        guard let value = table[key]?.value else { return nil }
        guard case .array(let elements) = value.kind else {
            throw wrongType(key, value, expected: "a list of \"strings\"", hint: "; write it in brackets, like \(example)")
        }
        var texts: [String] = []
        for element in elements {
            guard case .string(let text) = element.kind else {
                throw wrongType(key, element, expected: "a list of \"strings\"", hint: "; write each element in double quotes")
            }
            texts.append(text)
        }
        return texts
    }

    private func missing(_ key: String, hint: String) -> ClusterConfigurationError {
        ClusterConfigurationError("\(prefix)missing \(key); add \(hint)", line: headerLine)
    }

    private func wrongType(_ key: String, _ value: TOMLValue, expected: String, hint: String) -> ClusterConfigurationError {
        ClusterConfigurationError("\(prefix)\(key) must be \(expected); found \(value.kindName)\(hint)",
                                  line: value.position.line, column: value.position.column)
    }

    private static func isString(_ value: TOMLValue) -> Bool {
        if case .string = value.kind { return true }
        return false
    }

    /// "a, b and c".
    private static func list(_ words: [String]) -> String {
        words.count < 2 ? words.joined() : words.dropLast().joined(separator: ", ") + " and " + words.last!
    }

    /// The known key within a few edits of `key`, for the typos a hand makes (swapped or dropped letters).
    private static func closest(to key: String, among known: [String]) -> String? {
        let allowed = max(1, min(3, key.count / 2))
        let scored = known.map { (key: $0, distance: editDistance(Array(key.utf8), Array($0.utf8))) }
        guard let best = scored.min(by: { $0.distance < $1.distance }), best.distance <= allowed else { return nil }
        return best.key
    }

    /// Levenshtein distance; keys are short, so the quadratic table is nothing.
    private static func editDistance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        var previous = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var row = [i + 1]
            for (j, y) in b.enumerated() {
                row.append(min(previous[j + 1] + 1, row[j] + 1, previous[j] + (x == y ? 0 : 1)))
            }
            previous = row
        }
        return previous[b.count]
    }
}

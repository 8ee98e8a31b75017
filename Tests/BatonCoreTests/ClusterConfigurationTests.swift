// Goal: a cluster file becomes a ClusterConfiguration only when every rule
// holds, optional keys take their documented defaults, and each broken rule
// is reported with its place, the node or export concerned and what to do;
// the same rules hold for a configuration built in code; the helpers answer
// the questions agents, servers and clients ask of it.
// Method: a valid two-node file, changed one line at a time (so each test
// shows the mistake it makes), compared by the error's full description;
// parsed configurations compared whole.
@testable import BatonCore
import XCTest

/// Lines: 1 secret_file, 2 plaintext, 3 [[nodes]] a (4 name, 5 agent, 6 data_dir),
/// 8 [[nodes]] b (9 name, 10 agent, 11 data_dir), 13 [[exports]] (14 name, 15 preferred, 16 port).
private let base = """
    secret_file = "/etc/baton/secret"
    plaintext = true
    [[nodes]]
    name = "a"
    agent = "127.0.0.1:7100"
    data_dir = "/var/lib/baton/a"

    [[nodes]]
    name = "b"
    agent = "127.0.0.1:7200"
    data_dir = "/var/lib/baton/b"

    [[exports]]
    name = "demo"
    preferred = "a"
    port = 7000

    """

private let nodeA = NodeConfiguration(name: "a", agent: HostAndPort(host: "127.0.0.1", port: 7100), dataDirectory: "/var/lib/baton/a")
private let nodeB = NodeConfiguration(name: "b", agent: HostAndPort(host: "127.0.0.1", port: 7200), dataDirectory: "/var/lib/baton/b")
private let demo = ExportConfiguration(name: "demo", preferredNode: "a", port: 7000)

/// `base` with one exact piece of text replaced; the piece must be there, so a test cannot silently stop testing.
private func edited(_ old: String, _ new: String, in text: String = base) -> String {
    precondition(text.contains(old), "the base file has no \(old)")
    return text.replacing(old, with: new, maxReplacements: 1)
}

private func failure(_ text: String) -> String {
    do {
        let configuration = try ClusterConfiguration.parse(text)
        return "no error: \(configuration)"
    } catch {
        return error.description
    }
}

/// `base` with a switches line after secret_file: line 2, its list at column 12, the first element at column 13.
private func withSwitches(_ list: String) -> String {
    edited("secret_file = \"/etc/baton/secret\"\n", "secret_file = \"/etc/baton/secret\"\nswitches = \(list)\n")
}

private func failure(building nodes: [NodeConfiguration], _ exports: [ExportConfiguration] = [demo], switches: [String] = [],
                     timings: ClusterTimings = .defaults, secretFile: String = "/etc/baton/secret") -> String {
    do {
        _ = try ClusterConfiguration(secretFile: secretFile, switches: switches, timings: timings, transport: .plaintext, nodes: nodes,
                                     exports: exports)
        return "no error"
    } catch {
        return error.description
    }
}

final class ClusterConfigurationTests: XCTestCase {
    // MARK: Reading

    func testMinimalFileTakesTheDefaults() throws {
        let configuration = try ClusterConfiguration.parse(base)
        XCTAssertEqual(configuration, try ClusterConfiguration(secretFile: "/etc/baton/secret", transport: .plaintext, nodes: [nodeA, nodeB], exports: [demo]))
        XCTAssertEqual(configuration.timings, ClusterTimings(
            probeIntervalMilliseconds: 100, probeDeadlineMilliseconds: 200, probeMisses: 3,
            heartbeatIntervalMilliseconds: 100, heartbeatGraceMilliseconds: 500,
            agentHeartbeatIntervalMilliseconds: 200, agentHeartbeatGraceMilliseconds: 1000,
            selffenceDelayMilliseconds: 1800, takeoverDelayMilliseconds: 2500))
        XCTAssertEqual(configuration.switches, [])
        XCTAssertEqual(configuration.nodes.map(\.site), ["default", "default"])
        XCTAssertEqual(configuration.nodes.map(\.paths), [[], []])
        XCTAssertEqual(configuration.exports.map(\.replication), [.sync])
    }

    func testEveryKeyIsRead() throws {
        let text = """
            secret_file = "/etc/baton/secret"
            switches = ["198.18.1.254", "fd00::fe"]
            [tls]
            ca = "/etc/baton/tls/ca.pem"
            cert = "/etc/baton/tls/{node}.pem"
            key = "/etc/baton/tls/{node}.key"
            admin_cert = "/etc/baton/tls/admin.pem"
            admin_key = "/etc/baton/tls/admin.key"
            [timings]
            probe_interval_ms = 50
            probe_deadline_ms = 150
            probe_misses = 4
            heartbeat_interval_ms = 60
            heartbeat_grace_ms = 300
            agent_heartbeat_interval_ms = 250
            agent_heartbeat_grace_ms = 1_500
            selffence_delay_ms = 2_200
            takeover_delay_ms = 3_000
            [[nodes]]
            name = "a"
            site = "lan1"
            agent = "198.18.1.1:7100"
            paths = ["198.18.2.1", "fd00::1"]
            data_dir = "/var/lib/baton"
            metrics = "0.0.0.0:9464"
            [[nodes]]
            name = "b"
            site = "lan2"
            agent = "[fd00::2]:7100"
            data_dir = "/var/lib/baton"
            [[exports]]
            name = "projects"
            preferred = "b"
            port = 7000
            monitor_port = 7500
            replication = "async"
            [[exports]]
            name = "home"
            preferred = "a"
            port = 7001
            monitor_port = 7501
            replication = "sync"
            squash = "root"
            anonuid = 500
            anongid = 600
            root_clients = ["admin-*"]
            lock_lease_ms = 5_000
            """
        let configuration = try ClusterConfiguration.parse(text)
        XCTAssertEqual(configuration.secretFile, "/etc/baton/secret")
        XCTAssertEqual(configuration.switches, ["198.18.1.254", "fd00::fe"])
        let tls = ClusterTLS(ca: "/etc/baton/tls/ca.pem", cert: "/etc/baton/tls/{node}.pem", key: "/etc/baton/tls/{node}.key",
                             adminCert: "/etc/baton/tls/admin.pem", adminKey: "/etc/baton/tls/admin.key")
        XCTAssertEqual(configuration.transport, .tls(tls))
        XCTAssertEqual(tls.nodeFiles("a").cert, "/etc/baton/tls/a.pem")
        XCTAssertEqual(tls.nodeFiles("a").key, "/etc/baton/tls/a.key")
        XCTAssertEqual(configuration.timings, ClusterTimings(
            probeIntervalMilliseconds: 50, probeDeadlineMilliseconds: 150, probeMisses: 4,
            heartbeatIntervalMilliseconds: 60, heartbeatGraceMilliseconds: 300,
            agentHeartbeatIntervalMilliseconds: 250, agentHeartbeatGraceMilliseconds: 1500,
            selffenceDelayMilliseconds: 2200, takeoverDelayMilliseconds: 3000))
        XCTAssertEqual(configuration.nodes, [
            NodeConfiguration(name: "a", site: "lan1", agent: HostAndPort(host: "198.18.1.1", port: 7100),
                              paths: ["198.18.2.1", "fd00::1"], dataDirectory: "/var/lib/baton",
                              metrics: HostAndPort(host: "0.0.0.0", port: 9464)),
            NodeConfiguration(name: "b", site: "lan2", agent: HostAndPort(host: "fd00::2", port: 7100),
                              dataDirectory: "/var/lib/baton"),
        ])
        XCTAssertEqual(configuration.exports, [
            ExportConfiguration(name: "projects", preferredNode: "b", port: 7000, monitorPort: 7500, replication: .async),
            ExportConfiguration(name: "home", preferredNode: "a", port: 7001, monitorPort: 7501, replication: .sync,
                                squash: Squash(scope: .root, anonymous: Credentials(uid: 500, gid: 600), rootClients: ["admin-*"]),
                                lockLeaseMilliseconds: 5000),
        ])
    }

    func testSquashIsRootByDefaultAndItsKeysAreChecked() throws {
        XCTAssertEqual(try ClusterConfiguration.parse(base).exports[0].squash, .rootToNobody)
        XCTAssertEqual(try ClusterConfiguration.parse(edited("port = 7000", "port = 7000\nsquash = \"all\"")).exports[0].squash,
                       Squash(scope: .all))
        XCTAssertEqual(failure(edited("port = 7000", "port = 7000\nsquash = \"root_squash\"")),
                       "cluster file line 17, column 10: export \"demo\": squash must be \"root\" (root acts as anonuid, the default), \"all\" (every caller does) or \"none\" (callers keep their uid); found \"root_squash\"")
        XCTAssertEqual(failure(edited("port = 7000", "port = 7000\nanonuid = -2")),
                       "cluster file line 17, column 11: export \"demo\": anonuid must be a uid or gid from 0 to 4294967294; found -2")
        XCTAssertEqual(failure(edited("port = 7000", "port = 7000\nroot_clients = [\"admin\"]")),
                       "cluster file line 17, column 16: export \"demo\": root_clients needs [tls]: over plain TCP a client has no certificate, so no name to check; add a [tls] table or remove the list")
        XCTAssertEqual(failure(edited("port = 7000", "port = 7000\nsquash = \"all\"\nroot_clients = [\"admin\"]", in: withTLS())).hasSuffix(
            "export \"demo\": root_clients keep their root only under squash = \"root\", but squash is \"all\"; remove root_clients or the squash line"), true)
    }

    // MARK: Transport security

    private static let tlsTable = """
        [tls]
        ca = "/etc/baton/tls/ca.pem"
        cert = "/etc/baton/tls/{node}.pem"
        key = "/etc/baton/tls/{node}.key"

        """

    /// `base` without plaintext, with `table` where it was (from line 2 on).
    private func withTLS(_ table: String = tlsTable) -> String { edited("plaintext = true\n", table) }

    func testClientListsNeedTLSAndNameSomeone() throws {
        let lists = "port = 7000\nclients = [\"laptop-*\", \"build\"]\nread_only_clients = [\"backup\"]"
        let parsed = try ClusterConfiguration.parse(edited("port = 7000", lists, in: withTLS()))
        XCTAssertEqual(parsed.exports[0].access, ClientAccess(readWrite: ["laptop-*", "build"], readOnly: ["backup"]))
        XCTAssertEqual(try ClusterConfiguration.parse(withTLS()).exports[0].access, .everyone)
        let readOnlyOnly = try ClusterConfiguration.parse(edited("port = 7000", "port = 7000\nread_only_clients = [\"backup\"]", in: withTLS()))
        XCTAssertEqual(readOnlyOnly.exports[0].access, ClientAccess(readWrite: [], readOnly: ["backup"]), "only the read-only clients may mount")
        XCTAssertEqual(failure(edited("port = 7000", lists)),
                       "cluster file line 17, column 11: export \"demo\": clients needs [tls]: over plain TCP a client has no certificate, so no name to check; add a [tls] table or remove the list")
        XCTAssertEqual(failure(edited("port = 7000", "port = 7000\nclients = []", in: withTLS())).hasSuffix(
            "export \"demo\": clients lists no client, so no one could mount it; list client certificate names or patterns, like [\"laptop-*\"]"), true)
        XCTAssertEqual(failure(edited("port = 7000", "port = 7000\nclients = [\"\"]", in: withTLS())).contains(
            "export \"demo\": clients entry \"\" is empty"), true)
    }

    func testTransportIsTLSOrExplicitlyPlaintext() throws {
        XCTAssertEqual(try ClusterConfiguration.parse(base).transport, .plaintext)
        XCTAssertEqual(try ClusterConfiguration.parse(withTLS()).transport,
                       .tls(ClusterTLS(ca: "/etc/baton/tls/ca.pem", cert: "/etc/baton/tls/{node}.pem", key: "/etc/baton/tls/{node}.key")))
        XCTAssertEqual(failure(edited("plaintext = true\n", "\n")),
                       "cluster configuration: the file says neither [tls] nor plaintext; add a [tls] table with ca = \"/etc/baton/tls/ca.pem\", cert = \"/etc/baton/tls/{node}.pem\" and key = \"/etc/baton/tls/{node}.key\" (make them with `baton cert`), or plaintext = true to run without encryption")
        XCTAssertEqual(failure(edited("plaintext = true", "plaintext = false")),
                       "cluster file line 2, column 13: plaintext = false needs a [tls] table; add [tls] with ca, cert and key (make them with `baton cert`), or write plaintext = true to run without encryption")
        XCTAssertEqual(failure(edited("plaintext = true", "plaintext = \"yes\"")),
                       "cluster file line 2, column 13: plaintext must be true or false; found a string; write it without quotes")
        XCTAssertEqual(failure(edited("plaintext = true\n", "plaintext = true\n" + Self.tlsTable)),
                       "cluster file line 2, column 13: plaintext = true and a [tls] table contradict each other; remove plaintext to use TLS, or [tls] to run without encryption")
    }

    func testTLSTableNamesWhatIsMissingOrWrong() {
        XCTAssertEqual(failure(withTLS(Self.tlsTable.replacing("ca = \"/etc/baton/tls/ca.pem\"\n", with: ""))),
                       "cluster file line 2: [tls]: missing ca; add ca = \"/etc/baton/tls/ca.pem\", the path of the cluster's CA certificate")
        XCTAssertEqual(failure(withTLS(Self.tlsTable.replacing("key = ", with: "keys = "))),
                       "cluster file line 5, column 1: [tls]: unknown key 'keys' (did you mean 'key'?); [tls] takes ca, cert, key, admin_cert and admin_key")
        XCTAssertEqual(failure(withTLS(Self.tlsTable.replacing("\"/etc/baton/tls/ca.pem\"", with: "\"ca.pem\""))),
                       "cluster file line 3, column 6: [tls]: ca \"ca.pem\" is not an absolute path; give the full path, from '/', of the cluster's CA certificate, like \"/etc/baton/tls/ca.pem\"")
        XCTAssertEqual(failure(withTLS(Self.tlsTable + "admin_cert = \"/etc/baton/tls/admin.pem\"\n")),
                       "cluster file line 6, column 14: [tls]: admin_cert is given without admin_key; give both (the admin commands present them) or neither")
        XCTAssertEqual(failure("tls = \"/etc/baton/tls\"\n" + base),
                       "cluster file line 1, column 1: tls must be one [tls] header with its keys on the lines below; found a string")
    }

    func testTimingsTableMayGiveSomeKeys() throws {
        let configuration = try ClusterConfiguration.parse(base + "[timings]\nprobe_misses = 5\n")
        XCTAssertEqual(configuration.timings, ClusterTimings(probeMisses: 5))
    }

    func testAFileWithoutExportsIsAClusterWaitingForThem() throws {
        let text = edited("[[exports]]\nname = \"demo\"\npreferred = \"a\"\nport = 7000\n", "")
        XCTAssertEqual(try ClusterConfiguration.parse(text).exports, [])
    }

    // MARK: Keys: unknown, missing, of the wrong kind

    func testUnknownKeysAreNamedWithTheKnownOnes() {
        XCTAssertEqual(failure(edited("name = \"a\"", "name = \"a\"\nnmae = \"x\"")),
                       "cluster file line 5, column 1: node \"a\": unknown key 'nmae' (did you mean 'name'?); a [[nodes]] table takes name, site, agent, paths, data_dir and metrics")
        XCTAssertEqual(failure(edited("port = 7000", "port = 7000\nmode = \"sync\"")),
                       "cluster file line 17, column 1: export \"demo\": unknown key 'mode'; a [[exports]] table takes name, preferred, port, monitor_port, replication, clients, read_only_clients, squash, anonuid, anongid, root_clients and lock_lease_ms")
        XCTAssertEqual(failure(edited("port = 7000", "port = 7000\nreplicaton = \"sync\"")),
                       "cluster file line 17, column 1: export \"demo\": unknown key 'replicaton' (did you mean 'replication'?); a [[exports]] table takes name, preferred, port, monitor_port, replication, clients, read_only_clients, squash, anonuid, anongid, root_clients and lock_lease_ms")
        XCTAssertEqual(failure(base + "[timings]\nprobe_interval = 100\n"),
                       "cluster file line 18, column 1: [timings]: unknown key 'probe_interval' (did you mean 'probe_interval_ms'?); [timings] takes probe_interval_ms, probe_deadline_ms, probe_misses, heartbeat_interval_ms, heartbeat_grace_ms, agent_heartbeat_interval_ms, agent_heartbeat_grace_ms, selffence_delay_ms, takeover_delay_ms and standby_wait_limit_ms")
        XCTAssertEqual(failure("debug = true\n" + base),
                       "cluster file line 1, column 1: unknown key 'debug'; the top level takes secret_file, switches, plaintext, [tls], [timings], [[nodes]] and [[exports]]")
        XCTAssertEqual(failure(base + "[export]\n"),
                       "cluster file line 17, column 1: unknown key 'export' (did you mean 'exports'?); the top level takes secret_file, switches, plaintext, [tls], [timings], [[nodes]] and [[exports]]")
    }

    func testAnUnknownKeyIsReportedBeforeTheKeyItMisspells() {
        XCTAssertEqual(failure(edited("secret_file", "secret_flie")),
                       "cluster file line 1, column 1: unknown key 'secret_flie' (did you mean 'secret_file'?); the top level takes secret_file, switches, plaintext, [tls], [timings], [[nodes]] and [[exports]]")
        XCTAssertEqual(failure(edited("name = \"b\"", "nane = \"b\"")),
                       "cluster file line 9, column 1: the [[nodes]] table on line 8: unknown key 'nane' (did you mean 'name'?); a [[nodes]] table takes name, site, agent, paths, data_dir and metrics")
    }

    func testMissingKeys() {
        XCTAssertEqual(failure(edited("secret_file = \"/etc/baton/secret\"\n", "")),
                       "cluster configuration: missing secret_file; add secret_file = \"/etc/baton/secret\", the path of a file of at least 32 random bytes, the same on every node")
        XCTAssertEqual(failure(edited("name = \"b\"\n", "")),
                       "cluster file line 8: the [[nodes]] table on line 8: missing name; add name = \"...\" with a name unique among the nodes")
        XCTAssertEqual(failure(edited("agent = \"127.0.0.1:7200\"\n", "")),
                       "cluster file line 8: node \"b\": missing agent; add agent = \"HOST:PORT\" with the address of the node's agent, like \"127.0.0.1:7100\"")
        XCTAssertEqual(failure(edited("data_dir = \"/var/lib/baton/b\"\n", "")),
                       "cluster file line 8: node \"b\": missing data_dir; add data_dir = \"...\" with the directory where the node keeps export data, like \"/var/lib/baton/b\"")
        XCTAssertEqual(failure(edited("name = \"demo\"\n", "")),
                       "cluster file line 13: the [[exports]] table on line 13: missing name; add name = \"...\" with a name unique among the exports")
        XCTAssertEqual(failure(edited("preferred = \"a\"\n", "")),
                       "cluster file line 13: export \"demo\": missing preferred; add preferred = \"...\" with the name of the node that serves the export when the cluster starts")
        XCTAssertEqual(failure(edited("port = 7000\n", "")),
                       "cluster file line 13: export \"demo\": missing port; add port = ... with the port clients connect to, like 7000")
    }

    func testValuesOfTheWrongKind() {
        XCTAssertEqual(failure(edited("secret_file = \"/etc/baton/secret\"", "secret_file = 32")),
                       "cluster file line 1, column 15: secret_file must be a \"string\"; found a number; write it in double quotes")
        XCTAssertEqual(failure(edited("port = 7000", "port = \"7000\"")),
                       "cluster file line 16, column 8: export \"demo\": port must be a number; found a string; write the number without quotes")
        XCTAssertEqual(failure(edited("port = 7000", "port = true")),
                       "cluster file line 16, column 8: export \"demo\": port must be a number; found a boolean")
        XCTAssertEqual(failure(edited("name = \"a\"", "name = [\"a\"]")),
                       "cluster file line 4, column 8: the [[nodes]] table on line 3: name must be a \"string\"; found a list; write it in double quotes")
        XCTAssertEqual(failure(edited("name = \"a\"", "name = \"a\"\npaths = \"198.18.2.1\"")),
                       "cluster file line 5, column 9: node \"a\": paths must be a list of \"strings\"; found a string; write it in brackets, like [\"198.18.1.1\", \"198.18.2.1\"]")
        XCTAssertEqual(failure(edited("name = \"a\"", "name = \"a\"\npaths = [1, 2]")),
                       "cluster file line 5, column 10: node \"a\": paths must be a list of \"strings\"; found a number; write each element in double quotes")
        XCTAssertEqual(failure(base + "[timings]\nprobe_misses = \"3\"\n"),
                       "cluster file line 18, column 16: [timings]: probe_misses must be a number; found a string; write the number without quotes")
    }

    func testTablesWrittenAsTheWrongKind() {
        XCTAssertEqual(failure(base + "[[timings]]\n"),
                       "cluster file line 17, column 1: timings must be one [timings] header with its keys on the lines below; found an [[array of tables]]")
        XCTAssertEqual(failure("timings = 100\n" + base),
                       "cluster file line 1, column 1: timings must be one [timings] header with its keys on the lines below; found a number")
        XCTAssertEqual(failure(edited("[[exports]]", "[exports]")),
                       "cluster file line 13, column 1: exports must be a [[exports]] header (two pairs of brackets) before each entry; found a [table]")
        XCTAssertEqual(failure(edited("[[nodes]]", "[[nodez]]")),
                       "cluster file line 3, column 1: unknown key 'nodez' (did you mean 'nodes'?); the top level takes secret_file, switches, plaintext, [tls], [timings], [[nodes]] and [[exports]]")
        XCTAssertEqual(failure("secret_file = \"/s\"\nplaintext = true\n" + #"nodes = ["a", "b"]"# + "\n"),
                       "cluster file line 3, column 1: nodes must be a [[nodes]] header (two pairs of brackets) before each entry; found a list")
    }

    func testReplicationIsSyncOrAsync() {
        XCTAssertEqual(failure(edited("port = 7000", "port = 7000\nreplication = \"semi-sync\"")),
                       "cluster file line 17, column 15: export \"demo\": replication must be \"sync\" or \"async\"; found \"semi-sync\"")
    }

    // MARK: Agent addresses

    func testAgentAddressSyntax() {
        XCTAssertEqual(failure(edited("127.0.0.1:7200", "127.0.0.1")),
                       "cluster file line 10, column 9: node \"b\": agent \"127.0.0.1\" has no port; write agent = \"HOST:PORT\", like \"127.0.0.1:7100\"")
        XCTAssertEqual(failure(edited("127.0.0.1:7200", "::1:7200")),
                       "cluster file line 10, column 9: node \"b\": agent \"::1:7200\" is ambiguous; write an IPv6 address in brackets, like \"[::1]:7100\"")
        XCTAssertEqual(failure(edited("127.0.0.1:7200", "[::1]7200")),
                       "cluster file line 10, column 9: node \"b\": agent \"[::1]7200\" is not [IPV6]:PORT; write it like \"[::1]:7100\"")
        for port in ["", "http", "-1", "123456", "+80"] {
            XCTAssertEqual(failure(edited("127.0.0.1:7200", "127.0.0.1:\(port)")),
                           "cluster file line 10, column 9: node \"b\": agent \"127.0.0.1:\(port)\" does not end in a port number; write agent = \"HOST:PORT\" with a port from 1 to 65535",
                           port)
        }
    }

    func testAgentHostAndPortRanges() {
        XCTAssertEqual(failure(edited("127.0.0.1:7200", ":7200")),
                       "cluster file line 10, column 9: node \"b\": agent host \"\" is empty; write agent = \"HOST:PORT\", like \"127.0.0.1:7100\"")
        XCTAssertEqual(failure(edited("127.0.0.1:7200", "my host:7200")),
                       "cluster file line 10, column 9: node \"b\": agent host \"my host\" contains white space; write agent = \"HOST:PORT\", like \"127.0.0.1:7100\"")
        XCTAssertEqual(failure(edited("127.0.0.1:7200", "127.0.0.1:0")),
                       "cluster file line 10, column 9: node \"b\": agent port 0 is out of range; use a port from 1 to 65535")
        XCTAssertEqual(failure(edited("127.0.0.1:7200", "127.0.0.1:65536")),
                       "cluster file line 10, column 9: node \"b\": agent port 65536 is out of range; use a port from 1 to 65535")
        XCTAssertEqual(try ClusterConfiguration.parse(edited("127.0.0.1:7200", "127.0.0.1:65535")).nodes[1].agent.port, 65535)
    }

    func testMetricsAddress() {
        let withMetrics = { (value: String) in edited("agent = \"127.0.0.1:7200\"", "agent = \"127.0.0.1:7200\"\nmetrics = \"\(value)\"") }
        XCTAssertEqual(try ClusterConfiguration.parse(withMetrics("127.0.0.2:9464")).nodes[1].metrics, HostAndPort(host: "127.0.0.2", port: 9464))
        XCTAssertNil(try ClusterConfiguration.parse(base).nodes[1].metrics)
        XCTAssertEqual(failure(withMetrics("9464")),
                       "cluster file line 11, column 11: node \"b\": metrics \"9464\" has no port; write metrics = \"HOST:PORT\", like \"127.0.0.1:7100\"")
        XCTAssertEqual(failure(withMetrics("127.0.0.1:7200")),
                       "cluster file line 11, column 11: node \"b\": metrics port 7200 is the agent's port; use a port of its own from 1 to 65535, like 9464")
        XCTAssertEqual(failure(withMetrics("my host:9464")),
                       "cluster file line 11, column 11: node \"b\": metrics host \"my host\" contains white space; write metrics = \"HOST:PORT\", like \"0.0.0.0:9464\"")
    }

    // MARK: Rules on nodes

    func testAClusterHasAtLeastTwoNodes() {
        let oneNode = edited("[[nodes]]\nname = \"b\"\nagent = \"127.0.0.1:7200\"\ndata_dir = \"/var/lib/baton/b\"\n", "")
        XCTAssertEqual(failure(oneNode),
                       "cluster configuration: the cluster has 1 node; add [[nodes]] tables for at least two, so that each export's monitor runs on another node than its server")
        XCTAssertEqual(failure("secret_file = \"/s\"\nplaintext = true\n"),
                       "cluster configuration: the cluster has 0 nodes; add [[nodes]] tables for at least two, so that each export's monitor runs on another node than its server")
    }

    func testNodeCountIsBounded() {
        let nodes = (0...ClusterConfiguration.maxNodes).map {
            NodeConfiguration(name: "n\($0)", agent: HostAndPort(host: "127.0.0.1", port: 10_000 + $0), dataDirectory: "/d/\($0)")
        }
        XCTAssertEqual(failure(building: nodes, []), "cluster configuration: the cluster has 257 nodes, over the limit of 256")
        XCTAssertEqual(failure(building: Array(nodes.dropLast()), []), "no error")
    }

    func testNodeNamesAreUnique() {
        XCTAssertEqual(failure(edited("name = \"b\"", "name = \"a\"")),
                       "cluster file line 9, column 8: node \"a\" is defined twice (first on line 4); give each node its own name")
    }

    func testNodeNamesFollowTheNameRule() {
        let rule = "names are 1 to 255 bytes without '@', '/', ',', white space or control characters, since they appear in mount specifications (EXPORT@NODE_A,NODE_B), fstab lines and directory names"
        let cases: [(String, String)] = [
            (#""""#, #"node name "" is empty"#),
            (#""a@b""#, #"node name "a@b" contains '@'"#),
            (#""a/b""#, #"node name "a/b" contains '/'"#),
            (#""a,b""#, #"node name "a,b" contains ','"#),
            (#""a b""#, #"node name "a b" contains white space"#),
            (#""a\tb""#, #"node name "a\tb" contains the control character U+0009"#),
            (#"".""#, #"node name "." is not allowed, since it names a directory"#),
            (#""..""#, #"node name ".." is not allowed, since it names a directory"#),
            ("\"\(String(repeating: "x", count: 256))\"", "node name \"\(String(repeating: "x", count: 256))\" is 256 bytes long, over the limit of 255"),
        ]
        for (written, problem) in cases {
            XCTAssertEqual(failure(edited("name = \"b\"", "name = \(written)")), "cluster file line 9, column 8: \(problem); \(rule)", written)
        }
        XCTAssertNoThrow(try ClusterConfiguration.parse(edited("name = \"b\"", "name = \"\(String(repeating: "é", count: 127))\"")))
    }

    func testSites() {
        XCTAssertEqual(failure(edited("name = \"b\"", "name = \"b\"\nsite = \"\"")),
                       "cluster file line 10, column 8: node \"b\": site \"\" is empty; name the LAN the node is on, or leave site out for \"default\"")
        XCTAssertEqual(try ClusterConfiguration.parse(edited("name = \"b\"", "name = \"b\"\nsite = \"lan 2\"")).nodes[1].site, "lan 2")
    }

    func testAgentAddressesAreUnique() {
        XCTAssertEqual(failure(edited("127.0.0.1:7200", "127.0.0.1:7100")),
                       "cluster file line 10, column 9: node \"b\": agent 127.0.0.1:7100 is also node \"a\"'s on line 5; give each node its own agent HOST:PORT")
        XCTAssertEqual(try ClusterConfiguration.parse(edited("127.0.0.1:7200", "127.0.0.2:7100")).nodes[1].agent,
                       HostAndPort(host: "127.0.0.2", port: 7100))
    }

    func testPaths() {
        func withPaths(_ list: String) -> String { edited("name = \"b\"", "name = \"b\"\npaths = \(list)") }
        XCTAssertEqual(failure(withPaths(#"["198.18.1.2", "198.18.1.2"]"#)),
                       "cluster file line 10, column 24: node \"b\": path \"198.18.1.2\" is listed twice; list each address once")
        XCTAssertEqual(failure(withPaths(#"["198.18.1.2:7200"]"#)),
                       "cluster file line 10, column 10: node \"b\": path \"198.18.1.2:7200\" has a port; write the address alone, heartbeats go to the agent's port")
        XCTAssertEqual(failure(withPaths(#"["ok", ""]"#)),
                       "cluster file line 10, column 16: node \"b\": path \"\" is empty; list the node's extra addresses, one per NIC")
        XCTAssertEqual(failure(withPaths(#"["[fd00::1]"]"#)),
                       "cluster file line 10, column 10: node \"b\": path \"[fd00::1]\" contains '['; list the node's extra addresses, one per NIC")
        let nine = "[" + (1...9).map { "\"198.18.1.\($0)\"" }.joined(separator: ", ") + "]"
        XCTAssertEqual(failure(withPaths(nine)),
                       "cluster file line 10, column 9: node \"b\": 9 paths, over the limit of 8; list one address per NIC")
        XCTAssertEqual(try ClusterConfiguration.parse(withPaths(#"["fd00::2", "node-b.example"]"#)).nodes[1].paths, ["fd00::2", "node-b.example"])
    }

    func testDataDirectoriesAreAbsolute() {
        XCTAssertEqual(failure(edited("\"/var/lib/baton/b\"", "\"baton/b\"")),
                       "cluster file line 11, column 12: node \"b\": data_dir \"baton/b\" is not an absolute path; give the full path, from '/', of the directory where the node keeps export data, like \"/var/lib/baton/b\"")
        XCTAssertEqual(failure(edited("\"/var/lib/baton/b\"", "\"\"")),
                       "cluster file line 11, column 12: node \"b\": data_dir is empty; give the full path, from '/', of the directory where the node keeps export data, like \"/var/lib/baton/b\"")
    }

    func testNodesOnOneHostDoNotShareADataDirectory() {
        XCTAssertEqual(failure(edited("\"/var/lib/baton/b\"", "\"/var/lib/baton/a/\"")),
                       "cluster file line 11, column 12: node \"b\": data_dir \"/var/lib/baton/a/\" is also node \"a\"'s on line 6, on the same host 127.0.0.1; give each node on one host its own data_dir")
        // On different hosts the same path is the usual setup.
        let apart = edited("\"/var/lib/baton/b\"", "\"/var/lib/baton/a\"", in: edited("127.0.0.1:7200", "127.0.0.2:7200"))
        XCTAssertNoThrow(try ClusterConfiguration.parse(apart))
    }

    func testSecretFileIsAnAbsolutePath() {
        XCTAssertEqual(failure(edited("\"/etc/baton/secret\"", "\"secret\"")),
                       "cluster file line 1, column 15: secret_file \"secret\" is not an absolute path; give the full path, from '/', of a file of at least 32 random bytes, the same on every node")
        XCTAssertEqual(failure(edited("\"/etc/baton/secret\"", "\"/etc/\\n\"")),
                       "cluster file line 1, column 15: secret_file \"/etc/\\n\" contains the control character U+000A; give the full path, from '/', of a file of at least 32 random bytes, the same on every node")
    }

    // MARK: Switches

    func testSwitchesAreOptionalAndKeptInPathOrder() throws {
        XCTAssertEqual(try ClusterConfiguration.parse(base).switches, [])
        XCTAssertEqual(try ClusterConfiguration.parse(withSwitches("[]")).switches, [])
        XCTAssertEqual(try ClusterConfiguration.parse(withSwitches(#"["198.18.1.254"]"#)).switches, ["198.18.1.254"])
        XCTAssertEqual(try ClusterConfiguration.parse(withSwitches(#"["198.18.2.254", "198.18.1.254"]"#)).switches,
                       ["198.18.2.254", "198.18.1.254"])
        XCTAssertEqual(try ClusterConfiguration.parse(withSwitches(#"["fd00::fe", "switch-2.example"]"#)).switches,
                       ["fd00::fe", "switch-2.example"])
    }

    func testAtMostTwoSwitches() {
        XCTAssertEqual(failure(withSwitches(#"["198.18.1.254", "198.18.2.254", "198.18.3.254"]"#)),
                       "cluster file line 2, column 12: switches lists 3 addresses, over the limit of 2; the diagnostic ladder knows two network paths, so list the management address of each path's switch, path 1's first, like [\"198.18.1.254\", \"198.18.2.254\"]")
    }

    func testSwitchesAreAddressesWithoutPortsListedOnce() {
        XCTAssertEqual(failure(withSwitches(#"["198.18.1.254:22"]"#)),
                       "cluster file line 2, column 13: switch \"198.18.1.254:22\" has a port; write the switch's management address alone, like \"198.18.1.254\"")
        XCTAssertEqual(failure(withSwitches(#"["198.18.1.254", "198.18.1.254"]"#)),
                       "cluster file line 2, column 29: switch \"198.18.1.254\" is listed twice; each network path has its own switch, so list each once, path 1's first")
        XCTAssertEqual(failure(withSwitches(#"["198.18.1.254", ""]"#)),
                       "cluster file line 2, column 29: switch \"\" is empty; list the management address of each network path's switch, path 1's first, like [\"198.18.1.254\", \"198.18.2.254\"]")
        XCTAssertEqual(failure(withSwitches(#"["switch 1"]"#)),
                       "cluster file line 2, column 13: switch \"switch 1\" contains white space; list the management address of each network path's switch, path 1's first, like [\"198.18.1.254\", \"198.18.2.254\"]")
        XCTAssertEqual(failure(withSwitches(#"["[fd00::fe]"]"#)),
                       "cluster file line 2, column 13: switch \"[fd00::fe]\" contains '['; list the management address of each network path's switch, path 1's first, like [\"198.18.1.254\", \"198.18.2.254\"]")
    }

    func testSwitchesAreAListOfStrings() {
        XCTAssertEqual(failure(withSwitches(#""198.18.1.254""#)),
                       "cluster file line 2, column 12: switches must be a list of \"strings\"; found a string; write it in brackets, like [\"198.18.1.254\", \"198.18.2.254\"]")
        XCTAssertEqual(failure(withSwitches("[1]")),
                       "cluster file line 2, column 13: switches must be a list of \"strings\"; found a number; write each element in double quotes")
        XCTAssertEqual(failure(edited("secret_file = \"/etc/baton/secret\"\n", "secret_file = \"/etc/baton/secret\"\nswitch = [\"198.18.1.254\"]\n")),
                       "cluster file line 2, column 1: unknown key 'switch' (did you mean 'switches'?); the top level takes secret_file, switches, plaintext, [tls], [timings], [[nodes]] and [[exports]]")
    }

    func testSwitchesBuiltInCodeFollowTheSameRules() throws {
        XCTAssertEqual(failure(building: [nodeA, nodeB], switches: ["198.18.1.254", "198.18.2.254", "198.18.3.254"]),
                       "cluster configuration: switches lists 3 addresses, over the limit of 2; the diagnostic ladder knows two network paths, so list the management address of each path's switch, path 1's first, like [\"198.18.1.254\", \"198.18.2.254\"]")
        XCTAssertEqual(failure(building: [nodeA, nodeB], switches: ["198.18.1.254", "198.18.1.254:22"]),
                       "cluster configuration: switch \"198.18.1.254:22\" has a port; write the switch's management address alone, like \"198.18.1.254\"")
        let built = try ClusterConfiguration(secretFile: "/etc/baton/secret", switches: ["198.18.1.254", "198.18.2.254"],
                                             transport: .plaintext, nodes: [nodeA, nodeB], exports: [demo])
        XCTAssertEqual(built.switches, ["198.18.1.254", "198.18.2.254"])
        XCTAssertEqual(built, try ClusterConfiguration.parse(withSwitches(#"["198.18.1.254", "198.18.2.254"]"#)))
    }

    // MARK: Rules on exports

    func testExportNamesFollowTheNameRule() {
        XCTAssertEqual(failure(edited("name = \"demo\"", "name = \"demo@a\"")),
                       "cluster file line 14, column 8: export name \"demo@a\" contains '@'; names are 1 to 255 bytes without '@', '/', ',', white space or control characters, since they appear in mount specifications (EXPORT@NODE_A,NODE_B), fstab lines and directory names")
        XCTAssertEqual(failure(edited("name = \"demo\"", "name = \"\"")),
                       "cluster file line 14, column 8: export name \"\" is empty; names are 1 to 255 bytes without '@', '/', ',', white space or control characters, since they appear in mount specifications (EXPORT@NODE_A,NODE_B), fstab lines and directory names")
        let longest = String(repeating: "e", count: 255)
        XCTAssertEqual(try ClusterConfiguration.parse(edited("name = \"demo\"", "name = \"\(longest)\"")).exports[0].name, longest)
    }

    func testExportNamesAreUnique() {
        XCTAssertEqual(failure(base + "[[exports]]\nname = \"demo\"\npreferred = \"b\"\nport = 7001\n"),
                       "cluster file line 18, column 8: export \"demo\" is defined twice (first on line 14); give each export its own name")
    }

    func testPreferredNodeExists() {
        XCTAssertEqual(failure(edited("preferred = \"a\"", "preferred = \"c\"")),
                       "cluster file line 15, column 13: export \"demo\": preferred node \"c\" is not one of the nodes (\"a\", \"b\"); name the node that serves the export when the cluster starts")
    }

    func testExportPortRange() {
        XCTAssertEqual(failure(edited("port = 7000", "port = 0")),
                       "cluster file line 16, column 8: export \"demo\": port 0 is out of range; use a port from 1 to 65535")
        XCTAssertEqual(failure(edited("port = 7000", "port = -7000")),
                       "cluster file line 16, column 8: export \"demo\": port -7000 is out of range; use a port from 1 to 65535")
        XCTAssertEqual(failure(edited("port = 7000", "port = 65_536")),
                       "cluster file line 16, column 8: export \"demo\": port 65536 is out of range; use a port from 1 to 65535")
    }

    func testExportPortsAreUnique() {
        XCTAssertEqual(failure(base + "[[exports]]\nname = \"home\"\npreferred = \"b\"\nport = 7000\n"),
                       "cluster file line 20, column 8: export \"home\": port 7000 is also export \"demo\"'s on line 16; give each export its own port")
    }

    /// The monitor's port is the port after the export's unless set, and
    /// it is no other export's port or monitor port, nor an agent's.
    func testMonitorPortsAreUniqueToo() throws {
        XCTAssertEqual(try ClusterConfiguration.parse(base).exports[0].monitorPort, 7001)
        XCTAssertEqual(try ClusterConfiguration.parse(edited("port = 7000", "port = 7000\nmonitor_port = 9000")).exports[0].monitorPort, 9000)
        XCTAssertEqual(failure(base + "[[exports]]\nname = \"home\"\npreferred = \"b\"\nport = 7001\n"),
                       "cluster file line 20, column 8: export \"home\": port 7001 is also export \"demo\"'s monitor port on line 16; give each export its own port and monitor port")
        XCTAssertEqual(failure(base + "[[exports]]\nname = \"home\"\npreferred = \"b\"\nport = 6999\n"),
                       "cluster file line 20, column 8: export \"home\": monitor port 7000 is also export \"demo\"'s port on line 16 (it is the port after port unless monitor_port is set); give each export its own port and monitor port")
        XCTAssertEqual(failure(base + "[[exports]]\nname = \"home\"\npreferred = \"b\"\nport = 8000\nmonitor_port = 7001\n"),
                       "cluster file line 21, column 16: export \"home\": monitor port 7001 is also export \"demo\"'s on line 16 (it is the port after port unless monitor_port is set); give each export its own monitor port")
        XCTAssertEqual(failure(edited("port = 7000", "port = 7000\nmonitor_port = 7000")),
                       "cluster file line 17, column 16: export \"demo\": monitor port 7000 is also its own port on line 16 (it is the port after port unless monitor_port is set); give each export its own port and monitor port")
        XCTAssertEqual(failure(edited("port = 7000", "port = 7199")),
                       "cluster file line 16, column 8: export \"demo\": monitor port 7200 is node \"b\"'s agent port on line 10 (it is the port after port unless monitor_port is set); an export may be served on any node, so give it a monitor port no agent uses")
        XCTAssertEqual(failure(edited("port = 7000", "port = 65535")),
                       "cluster file line 16, column 8: export \"demo\": monitor port 65536 is out of range (it is the port after port unless monitor_port is set); use a port from 1 to 65535")
    }

    func testExportPortIsNoAgentsPort() {
        XCTAssertEqual(failure(edited("port = 7000", "port = 7200")),
                       "cluster file line 16, column 8: export \"demo\": port 7200 is node \"b\"'s agent port on line 10; an export may be served on any node, so give it a port no agent uses")
        // Even when that agent is on another host: the export may move to that node.
        let apart = edited("port = 7000", "port = 7200", in: edited("127.0.0.1:7200", "127.0.0.2:7200"))
        XCTAssertEqual(failure(apart),
                       "cluster file line 16, column 8: export \"demo\": port 7200 is node \"b\"'s agent port on line 10; an export may be served on any node, so give it a port no agent uses")
    }

    func testExportCountIsBounded() {
        let exports = (0...ClusterConfiguration.maxExports).map { ExportConfiguration(name: "e\($0)", preferredNode: "a", port: 20_000 + 2 * $0) }
        XCTAssertEqual(failure(building: [nodeA, nodeB], exports), "cluster configuration: the cluster has 10001 exports, over the limit of 10000")
    }

    // MARK: Rules on timings

    func testTimingsArePositiveAndBounded() {
        for field in ClusterTimings.fields {
            let isCount = field.key == "probe_misses"
            let limit = isCount ? 100 : 600_000
            let unit = isCount ? "a count" : "a whole number of milliseconds"
            for wrong in [0, -1, limit + 1] {
                XCTAssertEqual(failure(base + "[timings]\n\(field.key) = \(wrong)\n"),
                               "cluster file line 18, column \(field.key.count + 4): [timings]: \(field.key) is \(wrong); use \(unit) from 1 to \(limit)",
                               "\(field.key) = \(wrong)")
            }
        }
    }

    func testProbeDeadlineMayExceedTheIntervalUpToTheOutstandingLimit() throws {
        let fifteen = base + "[timings]\nprobe_interval_ms = 100\nprobe_deadline_ms = 1599\n"
        XCTAssertEqual(try ClusterConfiguration.parse(fifteen).timings.probeDeadlineMilliseconds, 1599)
        XCTAssertEqual(failure(base + "[timings]\nprobe_interval_ms = 100\nprobe_deadline_ms = 1600\n"),
                       "cluster file line 19, column 21: [timings]: probe_deadline_ms (1600) must be less than 16 times probe_interval_ms (100), the most probes a monitor keeps outstanding; shorten the deadline or lengthen the interval")
        XCTAssertEqual(failure(base + "[timings]\nprobe_interval_ms = 10\n"),
                       "cluster file line 18, column 21: [timings]: probe_deadline_ms (200) must be less than 16 times probe_interval_ms (10), the most probes a monitor keeps outstanding; shorten the deadline or lengthen the interval")
        XCTAssertEqual(try ClusterConfiguration.parse(base + "[timings]\nprobe_deadline_ms = 50\n").timings.probeDeadlineMilliseconds, 50)
    }

    func testGraceIsLongerThanItsHeartbeatInterval() {
        XCTAssertEqual(failure(base + "[timings]\nheartbeat_grace_ms = 100\n"),
                       "cluster file line 18, column 22: [timings]: heartbeat_grace_ms (100) must be longer than heartbeat_interval_ms (100), or one late heartbeat declares the server failed; the defaults are 500 and 100")
        XCTAssertEqual(failure(base + "[timings]\nagent_heartbeat_interval_ms = 1000\n"),
                       "cluster file line 18, column 31: [timings]: agent_heartbeat_grace_ms (1000) must be longer than agent_heartbeat_interval_ms (1000), or one late heartbeat starts the diagnostic ladder; the defaults are 1000 and 200")
        XCTAssertEqual(try ClusterConfiguration.parse(base + "[timings]\nheartbeat_grace_ms = 101\n").timings.heartbeatGraceMilliseconds, 101)
    }

    func testARuleBrokenAgainstADefaultPointsAtTheKeyGiven() {
        // The grace is left at its default 500 and the interval raised past it: the interval is the line to change.
        XCTAssertEqual(failure(base + "[timings]\nheartbeat_interval_ms = 600\n"),
                       "cluster file line 18, column 25: [timings]: heartbeat_grace_ms (500) must be longer than heartbeat_interval_ms (600), or one late heartbeat declares the server failed; the defaults are 500 and 100")
    }

    // MARK: Rules on the diagnosis delays

    func testDefaultTimingsAreTheDiagnosisDefaults() throws {
        XCTAssertEqual(ClusterTimings.defaults.diagnosisTimings, DiagnosisTimings.defaults)
        XCTAssertEqual(try ClusterConfiguration.parse(base).timings.diagnosisTimings, DiagnosisTimings.defaults)
    }

    func testDiagnosisTimingsTakeTheFilesValuesUpToEachRulesLimit() throws {
        // 1400 + 600 (the longest ladder) = 2000 = selffence; 2000 + 300 (one heartbeat interval) < 2301 = takeover.
        let text = base + "[timings]\nagent_heartbeat_interval_ms = 300\nagent_heartbeat_grace_ms = 1400\nselffence_delay_ms = 2000\ntakeover_delay_ms = 2301\n"
        XCTAssertEqual(try ClusterConfiguration.parse(text).timings.diagnosisTimings, try DiagnosisTimings(
            roundDeadline: .milliseconds(100), agentHeartbeatInterval: .milliseconds(300), agentHeartbeatGrace: .milliseconds(1400),
            selffenceDelay: .milliseconds(2000), takeoverDelay: .milliseconds(2301)))
    }

    func testSelffenceDelayIsShorterThanTakeoverDelay() {
        XCTAssertEqual(failure(base + "[timings]\nselffence_delay_ms = 3000\n"),
                       "cluster file line 18, column 22: [timings]: selffence_delay_ms (3000) must be shorter than takeover_delay_ms (2500), so that an isolated node has stopped its servers before its peer takes over, or both nodes may serve an export at once; shorten selffence_delay_ms or lengthen takeover_delay_ms; the defaults are 1800 and 2500")
        // Equal is not shorter; the takeover delay, written alone, is the line pointed at.
        XCTAssertEqual(failure(base + "[timings]\ntakeover_delay_ms = 1800\n"),
                       "cluster file line 18, column 21: [timings]: selffence_delay_ms (1800) must be shorter than takeover_delay_ms (1800), so that an isolated node has stopped its servers before its peer takes over, or both nodes may serve an export at once; shorten selffence_delay_ms or lengthen takeover_delay_ms; the defaults are 1800 and 2500")
    }

    func testSelffenceDelayLeavesRoomForTheLongestLadder() throws {
        XCTAssertEqual(failure(base + "[timings]\nselffence_delay_ms = 1599\n"),
                       "cluster file line 18, column 22: [timings]: selffence_delay_ms (1599) must be at least agent_heartbeat_grace_ms (1000) plus 600, the longest diagnostic ladder (6 rounds of 100 ms), or an isolated node finds out too late to stop its servers in time; lengthen selffence_delay_ms (and takeover_delay_ms with it) or shorten agent_heartbeat_grace_ms; the defaults are 1800 and 1000")
        XCTAssertEqual(failure(base + "[timings]\nagent_heartbeat_grace_ms = 1201\n"),
                       "cluster file line 18, column 28: [timings]: selffence_delay_ms (1800) must be at least agent_heartbeat_grace_ms (1201) plus 600, the longest diagnostic ladder (6 rounds of 100 ms), or an isolated node finds out too late to stop its servers in time; lengthen selffence_delay_ms (and takeover_delay_ms with it) or shorten agent_heartbeat_grace_ms; the defaults are 1800 and 1000")
        XCTAssertEqual(try ClusterConfiguration.parse(base + "[timings]\nagent_heartbeat_grace_ms = 1200\n").timings.agentHeartbeatGraceMilliseconds, 1200)
    }

    func testTakeoverDelayExceedsSelffenceDelayByMoreThanAHeartbeatInterval() throws {
        XCTAssertEqual(failure(base + "[timings]\ntakeover_delay_ms = 2000\n"),
                       "cluster file line 18, column 21: [timings]: takeover_delay_ms (2000) must be longer than selffence_delay_ms (1800) plus agent_heartbeat_interval_ms (200), since the two nodes last heard each other up to one heartbeat interval apart, or both nodes may serve an export at once; lengthen takeover_delay_ms or shorten the other two; the defaults are 2500, 1800 and 200")
        XCTAssertEqual(failure(base + "[timings]\nagent_heartbeat_interval_ms = 700\n"),
                       "cluster file line 18, column 31: [timings]: takeover_delay_ms (2500) must be longer than selffence_delay_ms (1800) plus agent_heartbeat_interval_ms (700), since the two nodes last heard each other up to one heartbeat interval apart, or both nodes may serve an export at once; lengthen takeover_delay_ms or shorten the other two; the defaults are 2500, 1800 and 200")
        XCTAssertEqual(try ClusterConfiguration.parse(base + "[timings]\ntakeover_delay_ms = 2001\n").timings.takeoverDelayMilliseconds, 2001)
    }

    // The seeded simulation's lost writes: a server held by a swap under way answers alone after the wait limit.
    func testTakeoverDelayIsShorterThanTheStandbyWaitLimit() throws {
        XCTAssertEqual(failure(base + "[timings]\nstandby_wait_limit_ms = 2500\n"),
                       "cluster file line 18, column 25: [timings]: takeover_delay_ms (2500) must be shorter than standby_wait_limit_ms (2500), so that a server cut off from a standby that is taking the export over has not begun to answer without it by the time the takeover comes, or acknowledged writes may be lost; lengthen standby_wait_limit_ms or shorten takeover_delay_ms; the defaults are 2500 and 5000")
        XCTAssertEqual(try ClusterConfiguration.parse(base + "[timings]\nstandby_wait_limit_ms = 2501\n").timings.standbyWaitLimitMilliseconds, 2501)
    }

    func testBuiltConfigurationsWithBrokenDelaysAreRefused() {
        XCTAssertEqual(failure(building: [nodeA, nodeB], timings: ClusterTimings(selffenceDelayMilliseconds: 3000)),
                       "cluster configuration: [timings]: selffence_delay_ms (3000) must be shorter than takeover_delay_ms (2500), so that an isolated node has stopped its servers before its peer takes over, or both nodes may serve an export at once; shorten selffence_delay_ms or lengthen takeover_delay_ms; the defaults are 1800 and 2500")
        XCTAssertEqual(failure(building: [nodeA, nodeB], timings: ClusterTimings(agentHeartbeatGraceMilliseconds: 1300)),
                       "cluster configuration: [timings]: selffence_delay_ms (1800) must be at least agent_heartbeat_grace_ms (1300) plus 600, the longest diagnostic ladder (6 rounds of 100 ms), or an isolated node finds out too late to stop its servers in time; lengthen selffence_delay_ms (and takeover_delay_ms with it) or shorten agent_heartbeat_grace_ms; the defaults are 1800 and 1000")
        XCTAssertEqual(failure(building: [nodeA, nodeB], timings: ClusterTimings(takeoverDelayMilliseconds: 1900)),
                       "cluster configuration: [timings]: takeover_delay_ms (1900) must be longer than selffence_delay_ms (1800) plus agent_heartbeat_interval_ms (200), since the two nodes last heard each other up to one heartbeat interval apart, or both nodes may serve an export at once; lengthen takeover_delay_ms or shorten the other two; the defaults are 2500, 1800 and 200")
    }

    func testDelayRulesAreExactlyThoseOfDiagnosisTimings() {
        // Around each rule's limit: a configuration is accepted exactly when DiagnosisTimings accepts its values, and then gives them.
        var accepted = 0
        var refused = 0
        for interval in [200, 700] {
            for grace in [800, 1000, 1200, 1201] {
                for selffence in [1500, 1800, 1801, 2300, 2500] {
                    for takeover in [1800, 2000, 2001, 2500, 3000] {
                        let timings = ClusterTimings(agentHeartbeatIntervalMilliseconds: interval, agentHeartbeatGraceMilliseconds: grace,
                                                     selffenceDelayMilliseconds: selffence, takeoverDelayMilliseconds: takeover)
                        let expected = try? DiagnosisTimings(
                            roundDeadline: .milliseconds(100), agentHeartbeatInterval: .milliseconds(UInt64(interval)),
                            agentHeartbeatGrace: .milliseconds(UInt64(grace)), selffenceDelay: .milliseconds(UInt64(selffence)),
                            takeoverDelay: .milliseconds(UInt64(takeover)))
                        let built = try? ClusterConfiguration(secretFile: "/s", timings: timings, transport: .plaintext, nodes: [nodeA, nodeB], exports: [demo])
                        XCTAssertEqual(built?.timings.diagnosisTimings, expected, "\(timings)")
                        if built == nil { refused += 1 } else { accepted += 1 }
                    }
                }
            }
        }
        XCTAssertGreaterThan(accepted, 10)
        XCTAssertGreaterThan(refused, 10)
    }

    // MARK: Configurations built in code

    func testBuiltConfigurationsFollowTheSameRulesWithoutPlaces() {
        XCTAssertEqual(failure(building: [nodeA, nodeB]), "no error")
        XCTAssertEqual(failure(building: [nodeA, nodeA]),
                       "cluster configuration: node \"a\" is defined twice; give each node its own name")
        XCTAssertEqual(failure(building: [nodeA, nodeB], [ExportConfiguration(name: "x", preferredNode: "a", port: 7100)]),
                       "cluster configuration: export \"x\": port 7100 is node \"a\"'s agent port; an export may be served on any node, so give it a port no agent uses")
        XCTAssertEqual(failure(building: [nodeA, nodeB], timings: ClusterTimings(heartbeatIntervalMilliseconds: 600)),
                       "cluster configuration: [timings]: heartbeat_grace_ms (500) must be longer than heartbeat_interval_ms (600), or one late heartbeat declares the server failed; the defaults are 500 and 100")
        XCTAssertEqual(failure(building: [nodeA, nodeB], secretFile: ""),
                       "cluster configuration: secret_file is empty; give the full path, from '/', of a file of at least 32 random bytes, the same on every node")
    }

    // MARK: Helpers

    func testNodeAndExportByName() throws {
        let configuration = try ClusterConfiguration.parse(base)
        XCTAssertEqual(configuration.node(named: "b"), nodeB)
        XCTAssertNil(configuration.node(named: "c"))
        XCTAssertEqual(configuration.export(named: "demo"), demo)
        XCTAssertNil(configuration.export(named: "other"))
    }

    func testPeerInATwoNodeCluster() throws {
        let configuration = try ClusterConfiguration.parse(base)
        XCTAssertEqual(configuration.peer(of: "a"), nodeB)
        XCTAssertEqual(configuration.peer(of: "b"), nodeA)
        XCTAssertNil(configuration.peer(of: "c"))
    }

    func testNoSinglePeerInALargerCluster() throws {
        let nodeC = NodeConfiguration(name: "c", agent: HostAndPort(host: "127.0.0.1", port: 7300), dataDirectory: "/var/lib/baton/c")
        let configuration = try ClusterConfiguration(secretFile: "/s", transport: .plaintext, nodes: [nodeA, nodeB, nodeC], exports: [demo])
        XCTAssertNil(configuration.peer(of: "a"))
    }

    func testClientAddressIsTheNodesAgentHostWithTheExportsPort() throws {
        let text = edited("127.0.0.1:7200", "[fd00::2]:7200")
        let configuration = try ClusterConfiguration.parse(text)
        let b = try XCTUnwrap(configuration.node(named: "b"))
        XCTAssertEqual(configuration.clientAddress(of: demo, on: b), HostAndPort(host: "fd00::2", port: 7000))
        XCTAssertEqual(configuration.clientAddress(of: demo, on: b).description, "[fd00::2]:7000")
        XCTAssertEqual(configuration.clientAddress(of: demo, on: nodeA).description, "127.0.0.1:7000")
    }

    func testClientAddressesPutThePreferredNodeFirst() throws {
        let configuration = try ClusterConfiguration.parse(edited("preferred = \"a\"", "preferred = \"b\"", in: edited("127.0.0.1:7200", "127.0.0.2:7200")))
        let export = try XCTUnwrap(configuration.export(named: "demo"))
        XCTAssertEqual(configuration.clientAddresses(of: export), [HostAndPort(host: "127.0.0.2", port: 7000), HostAndPort(host: "127.0.0.1", port: 7000)])
    }
}

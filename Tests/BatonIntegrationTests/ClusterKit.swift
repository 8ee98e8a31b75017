import BatonCore
import BatonRuntime
import Foundation
import Logging
import XCTest

/// Two node agents on this machine (127.0.0.1 and 127.0.0.2, both
/// loopback), their export servers, and a mount of their exports. Every
/// process is ended by PID at teardown, the agents' servers included.
/// On a network test bed (DESIGN.md §9) the agents run in the nodes'
/// namespaces with both NICs as paths and the switches listed, and mounts
/// and admin commands run in the client's.
final class TwoNodeCluster {
    let directory: String
    let configPath: String
    let exports: [(name: String, port: Int, monitorPort: Int)]
    private(set) var agents: [String: Process] = [:]
    let agentAddresses: [String: NodeAddress]
    let bed: TestBed?

    /// Extra environment of each node's agent (and so of its servers), e.g. disk faults.
    var agentEnvironment: [String: [String: String]]
    /// Extra arguments of each node's `baton agent`.
    let agentArguments: [String: [String]]
    /// Where each node's agent serves metrics (`metrics: true`).
    private(set) var metricsAddresses: [String: NodeAddress] = [:]
    /// With `tls: true`: the CA and certificates `baton cert` made (ca.pem;
    /// a.pem, b.pem for the nodes; admin.pem; client.pem and one per `clientNames` for mounts), each with its .key.
    /// `exportLines` go into every [[exports]] table (client lists, say);
    /// `squash` is each export's (tests write as root, so none by default).
    var tlsDirectory: String { directory + "/tls" }

    init(_ test: XCTestCase, exports names: [String] = ["demo"], replication: String = "sync", bed: TestBed? = nil,
         agentEnvironment: [String: [String: String]] = [:], agentArguments: [String: [String]] = [:], timings: [String: Int] = [:], metrics: Bool = false,
         tls: Bool = false, clientNames: [String] = [], exportLines: String = "", squash: String = "none",
         name: String = #function) throws {
        directory = try temporaryDirectory(test, name)
        self.agentEnvironment = agentEnvironment
        self.agentArguments = agentArguments
        self.bed = bed
        let ports = try freePorts(2 + 2 * names.count + 2)
        exports = names.enumerated().map { ($0.element, ports[2 + 2 * $0.offset], ports[3 + 2 * $0.offset]) }
        let hosts = bed == nil ? ["a": "127.0.0.1", "b": "127.0.0.2"]
            : ["a": TestBed.Node.a.address(nic: 1), "b": TestBed.Node.b.address(nic: 1)]
        agentAddresses = ["a": NodeAddress(host: hosts["a"]!, port: ports[0]), "b": NodeAddress(host: hosts["b"]!, port: ports[1])]
        _ = FileManager.default.createFile(atPath: directory + "/secret", contents: Data((0..<64).map { _ in UInt8.random(in: 0...255) }))
        var text = "secret_file = \"\(directory)/secret\"\n"
        // Top-level keys before the first table header.
        if bed != nil { text += "switches = [\"\(TestBed.switchAddress(1))\", \"\(TestBed.switchAddress(2))\"]\n" }
        if tls {
            let certificates = directory + "/tls"
            try makeCertificates(in: certificates, [("node", "a"), ("node", "b"), ("admin", "admin")]
                                 + (["client"] + clientNames).map { ("client", $0) })
            text += "[tls]\nca = \"\(certificates)/ca.pem\"\ncert = \"\(certificates)/{node}.pem\"\nkey = \"\(certificates)/{node}.key\"\n"
                + "admin_cert = \"\(certificates)/admin.pem\"\nadmin_key = \"\(certificates)/admin.key\"\n"
        } else {
            text = "plaintext = true\n" + text
        }
        if !timings.isEmpty { text += "[timings]\n" + timings.sorted { $0.key < $1.key }.map { "\($0.key) = \($0.value)\n" }.joined() }
        for node in ["a", "b"] {
            text += "[[nodes]]\nname = \"\(node)\"\nagent = \"\(agentAddresses[node]!)\"\ndata_dir = \"\(directory)/\(node)\"\n"
            if metrics {
                metricsAddresses[node] = NodeAddress(host: hosts[node]!, port: ports[ports.count - (node == "a" ? 2 : 1)])
                text += "metrics = \"\(metricsAddresses[node]!)\"\n"
            }
            if bed != nil, let machine = TestBed.Node(rawValue: node) {
                text += "paths = [\"\(machine.address(nic: 1))\", \"\(machine.address(nic: 2))\"]\n"
            }
        }
        for export in exports {
            text += "[[exports]]\nname = \"\(export.name)\"\npreferred = \"a\"\nport = \(export.port)\nmonitor_port = \(export.monitorPort)\nreplication = \"\(replication)\"\n"
                + "squash = \"\(squash)\"\n" + exportLines
        }
        configPath = directory + "/cluster.toml"
        try text.write(toFile: configPath, atomically: true, encoding: .utf8)
        test.addTeardownBlock { [self] in stopAll() }
        try startAgent("a")
        try startAgent("b")
        for export in exports { try waitUntilReplicated(export.name) }
    }

    /// The mount options that present `name`'s certificate (client.pem: the cluster's client).
    func tlsMountOptions(_ name: String = "client", ca: String? = nil) -> String {
        "cert=\(tlsDirectory)/\(name).pem,key=\(tlsDirectory)/\(name).key,ca=\(ca ?? tlsDirectory + "/ca.pem")"
    }

    /// `baton ARGUMENTS` as run on `node` (loopback: here; test bed: in its namespace).
    private func batonCommand(on namespace: TestBed.Namespace, _ arguments: [String]) -> (String, [String]) {
        guard let bed, let ip = TestBed.ip else { return (BatonBinary.path, arguments) }
        return (ip, ["netns", "exec", bed.name(namespace), BatonBinary.path] + arguments)
    }

    /// Runs an admin command (`status`, `migrate`, ...) where it reaches both nodes.
    func admin(_ arguments: [String]) throws -> CommandResult {
        let (executable, arguments) = batonCommand(on: .client, arguments + ["--config", configPath])
        return try runCommand(executable, arguments)
    }

    func startAgent(_ node: String) throws {
        let process = Process()
        let (executable, arguments) = batonCommand(on: TestBed.Node(rawValue: node)!.namespace,
                                                   ["agent", "--config", configPath, "--node", node] + (agentArguments[node] ?? []))
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let extra = agentEnvironment[node] {
            process.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
        }
        let log = directory + "/\(node).log"
        if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        handle.seekToEndOfFile()
        process.standardError = handle
        process.standardOutput = handle
        try process.run()
        agents[node] = process
    }

    /// Ends a node's agent with SIGKILL, as a crash would (the servers it
    /// started exit at the end of their stdin).
    func killAgent(_ node: String) {
        guard let process = agents[node] else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// An export server of this cluster that may outlive its agent (no
    /// longer its child, so `stopAll` does not find it): ended at teardown
    /// if that PID is still a `baton serve` of this cluster's directories.
    func endServerAtTeardown(_ test: XCTestCase, pid: Int32) {
        test.addTeardownBlock { [directory] in
            let command = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
            if command.contains("serve"), command.contains(directory) { kill(pid, SIGKILL) }
        }
    }

    /// The agents' status, merged, as `baton status --json` prints it.
    func status() throws -> [String: [String: Any]] {
        let result = try admin(["status", "--json"])
        // It exits 1 or 2 while an export is unmonitored or unserved (a test waits through such moments).
        guard (0...2).contains(result.status), let json = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any] else {
            throw TestError("baton status failed: \(result.output)")
        }
        var byName: [String: [String: Any]] = [:]
        for entry in json["exports"] as? [[String: Any]] ?? [] { byName[entry["name"] as! String] = entry }
        return byName
    }

    func server(_ export: String) throws -> (node: String, pid: Int32, epoch: Int)? {
        guard let entry = try status()[export], let server = entry["server"] as? [String: Any],
              let node = server["node"] as? String, let pid = server["pid"] as? Int else { return nil }
        return (node, Int32(pid), entry["epoch"] as? Int ?? 0)
    }

    /// Waits until the export is served and its standby watches it; returns the server.
    @discardableResult
    func waitUntilReplicated(_ export: String, epoch: Int? = nil, timeout: TimeInterval = 30,
                             poll: TimeInterval = 0.1) throws -> (node: String, pid: Int32, epoch: Int) {
        try waitUntilServed(export, epoch: epoch, watched: true, timeout: timeout, poll: poll)
    }

    /// Waits until the export is served (on `node`, at `epoch`, watched by a monitor, when given).
    @discardableResult
    func waitUntilServed(_ export: String, on node: String? = nil, epoch: Int? = nil, watched: Bool = false,
                         timeout: TimeInterval = 30, poll: TimeInterval = 0.1) throws -> (node: String, pid: Int32, epoch: Int) {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let entry = try? status()[export], let server = entry["server"] as? [String: Any],
               let serving = server["node"] as? String, let pid = server["pid"] as? Int, let current = entry["epoch"] as? Int,
               !watched || (entry["monitor"] as? [String: Any])?["watching"] as? Bool == true,
               node.map({ $0 == serving }) ?? true, epoch.map({ $0 == current }) ?? true {
                return (serving, Int32(pid), current)
            }
            usleep(useconds_t(poll * 1e6))
        }
        throw TestError("export \(export) not served\(node.map { " on \($0)" } ?? "")\(epoch.map { " at epoch \($0)" } ?? "")"
                        + "\(watched ? " and watched" : "") within \(timeout) s; logs: \(logs)")
    }

    var logs: String {
        ["a", "b"].map { "--- \($0):\n" + ((try? String(contentsOfFile: directory + "/\($0).log", encoding: .utf8)) ?? "") }
            .joined(separator: "\n")
    }

    /// `onlyNodeA`: the source names node a's first address alone; the mount learns the rest from the server.
    /// `mountpoint`: a name of its own under the cluster's directory (two mounts of one export).
    func mount(_ test: XCTestCase, _ export: String, options: [String] = [], onlyNodeA: Bool = false,
               mountpoint: String? = nil) throws -> MountProcess {
        let port = exports.first { $0.name == export }!.port
        let hosts = (onlyNodeA ? ["a"] : ["a", "b"]).map { agentAddresses[$0]!.host }
        return try MountProcess(test, source: "\(export)@" + hosts.map { "\($0):\(port)" }.joined(separator: ","),
                                mountpoint: directory + "/mnt-\(mountpoint ?? export)", options: options,
                                networkNamespace: bed?.name(.client))
    }

    /// Stops the agents cleanly (they stop their servers), then ends
    /// anything left by PID: the agents and every process they started.
    func stopAll() {
        for process in agents.values where process.isRunning {
            kill(process.processIdentifier, SIGTERM)
        }
        let deadline = Date().addingTimeInterval(10)
        while agents.values.contains(where: \.isRunning), Date() < deadline { usleep(50_000) }
        for process in agents.values {
            for child in childProcesses(of: process.processIdentifier) {
                kill(child, SIGCONT)
                kill(child, SIGKILL)
            }
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
    }

    /// Stops the cluster so that both nodes' copies can be compared: the
    /// mount first (so that no request, such as the kernel's release after a
    /// close, is still on its way), then once the standby has every record.
    func stopAllInStep(_ export: String, unmounting mount: MountProcess) throws {
        XCTAssertEqual(mount.terminate(), 0, mount.log)
        try waitUntilStandbyHasEverything(export)
        stopAll()
    }

    /// Opens each node's copy of the export, as a restart would, to compare them.
    func stores(_ export: String) throws -> [ExportStore] {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try ["a", "b"].map { node in
            try ExportStore(directory: directory + "/\(node)/\(export)", exportName: export, logger: logger)
        }
    }

    func namespaces(_ export: String) throws -> [Namespace] {
        try stores(export).map { $0.withNamespace { $0 } }
    }

    /// With the agents stopped: both nodes hold the same namespace, and the
    /// same data in every regular file.
    func assertSameFiles(_ export: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let stores = try stores(export)
        let copies = stores.map { $0.withNamespace { $0 } }
        XCTAssertEqual(copies[0].appliedSequence, copies[1].appliedSequence, file: file, line: line)
        XCTAssertNil(copies[0].firstDifference(from: copies[1]), "the nodes' namespaces disagree", file: file, line: line)
        var differing: [InodeNumber] = []
        var buffers = [[UInt8](repeating: 0, count: 1 << 20), [UInt8](repeating: 0, count: 1 << 20)]
        for (ino, size) in copies[0].regularFiles {
            var offset: UInt64 = 0
            while offset < size {
                let counts = try (0..<2).map { index in
                    try buffers[index].withUnsafeMutableBytes { try stores[index].read(ino, offset: offset, into: $0) }
                }
                guard case .success(let count) = counts[0], counts[0] == counts[1], count > 0,
                      buffers[0][0..<count] == buffers[1][0..<count] else {
                    differing.append(ino)
                    break
                }
                offset += UInt64(count)
            }
        }
        XCTAssertEqual(differing, [], "files whose data differs between the nodes", file: file, line: line)
    }

    /// Waits until the standby has every record the server has (its monitor's view).
    func waitUntilStandbyHasEverything(_ export: String, timeout: TimeInterval = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let journal = try? status()[export]?["journal"] as? [String: Any], journal["lag"] as? Int == 0 { return }
            usleep(100_000)
        }
        throw TestError("the standby of \(export) did not catch up within \(timeout) s; logs: \(logs)")
    }
}

/// Processes whose parent is `pid` (from /proc), to end an agent's servers by PID.
func childProcesses(of pid: Int32) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { candidate in
        guard let stat = try? String(contentsOfFile: "/proc/\(candidate)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 2 && Int32(fields[1]) == pid
    }
}

/// Ports free a moment ago (the kernel picks them).
func freePorts(_ count: Int) throws -> [Int] {
    var sockets: [Int32] = []
    defer { sockets.forEach { close($0) } }
    return try (0..<count).map { _ in
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        sockets.append(fd)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw TestError("no free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// Waits until process `pid` has ended (gone, or a zombie nobody reaped yet).
func waitUntilEnded(_ pid: Int32, timeout: TimeInterval, _ what: @autoclosure () -> String) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return }
        if stat[stat.index(after: close)...].split(separator: " ").first == "Z" { return }
        usleep(10_000)
    }
    throw TestError("process \(pid) still runs after \(timeout) s: \(what())")
}

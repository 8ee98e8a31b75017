import BatonCore
import BatonRuntime
import Dispatch
import Foundation
import XCTest

/// Goal: what `mountscripts/install` puts in place works as an admin uses
/// it, on a machine without the checkout: the files land under DESTDIR and
/// go again with --uninstall, the systemd unit passes `systemd-analyze
/// verify`, an fstab line with `_netdev` mounts a running cluster's export
/// through the installed helper (`mount -a -T FILE`), and agents and admin
/// commands find /etc/baton/cluster.toml and their node by themselves.
///
/// Method: install into a temporary DESTDIR. To run what was installed as
/// if installed for real without touching the machine, commands run in a
/// private mount namespace (`unshare --mount`) where DESTDIR/usr/local is
/// bound over /usr/local, DESTDIR/sbin is overlaid on /sbin (where mount(8)
/// looks for helpers), a tmpfs hides the checkout, and /etc is an overlay
/// whose changes stay in the test's directory; the host name is set in a UTS
/// namespace. Such mounts vanish with the namespace's last process, and the
/// test ends every process in it by PID, also when it fails.
final class PackagingTests: XCTestCase {
    // MARK: the default node (pure)

    func testTheDefaultNodeIsTheShortHostName() throws {
        let cluster = try ClusterConfiguration.parse("""
            secret_file = "/etc/baton/secret"
            plaintext = true
            [[nodes]]
            name = "a"
            agent = "127.0.0.1:7100"
            data_dir = "/srv/a"
            [[nodes]]
            name = "b"
            agent = "127.0.0.2:7100"
            data_dir = "/srv/b"
            """)
        XCTAssertEqual(cluster.node(forHostname: "a")?.name, "a")
        XCTAssertEqual(cluster.node(forHostname: "b.storage.example.com")?.name, "b")
        XCTAssertNil(cluster.node(forHostname: "c"))
        XCTAssertNil(cluster.node(forHostname: "c.a"), "only the short name counts")
        XCTAssertNil(cluster.node(forHostname: ""))
        XCTAssertNil(cluster.node(forHostname: ".a"))
    }

    // MARK: install and uninstall

    func testInstallIntoADestdirTwiceThenUninstall() throws {
        let destdir = try temporaryDirectory(self) + "/root"
        try install(into: destdir)
        for (path, mode) in Self.installed {
            let attributes = try FileManager.default.attributesOfItem(atPath: destdir + path)
            XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, mode, path)
        }
        let helper = try String(contentsOfFile: destdir + "/sbin/mount.fuse.baton", encoding: .utf8)
        XCTAssertTrue(helper.contains("\nBATON_INSTALLED_BIN=\"/usr/local/bin/baton\"\n"), "the helper names the installed binary")
        let unit = try String(contentsOfFile: destdir + "/usr/local/lib/systemd/system/baton-agent.service", encoding: .utf8)
        XCTAssertTrue(unit.contains("\nExecStart=/usr/local/bin/baton agent $BATON_AGENT_ARGS\n"), unit)
        XCTAssertTrue(FileManager.default.contentsEqual(atPath: destdir + "/usr/local/bin/baton", andPath: BatonBinary.path))

        // A second run replaces each file; an example the admin edited is kept.
        try "# edited\n".write(toFile: destdir + "/etc/baton/cluster.toml.example", atomically: true, encoding: .utf8)
        try install(into: destdir)
        XCTAssertEqual(try String(contentsOfFile: destdir + "/etc/baton/cluster.toml.example", encoding: .utf8), "# edited\n")

        let removed = try runCommand("/bin/bash", [repositoryRoot + "/mountscripts/install", "--uninstall"], environment: ["DESTDIR": destdir])
        XCTAssertEqual(removed.status, 0, removed.output)
        for (path, _) in Self.installed where path != "/etc/baton/cluster.toml.example" {
            XCTAssertFalse(FileManager.default.fileExists(atPath: destdir + path), "\(path) is still there after --uninstall")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: destdir + "/etc/baton/cluster.toml.example"), "the edited example is kept")
        XCTAssertFalse(FileManager.default.fileExists(atPath: destdir + "/usr/local/lib/baton/installed"))
        let again = try runCommand("/bin/bash", [repositoryRoot + "/mountscripts/install", "--uninstall"], environment: ["DESTDIR": destdir])
        XCTAssertNotEqual(again.status, 0, "a second --uninstall has nothing to remove and says so")
        XCTAssertTrue(again.output.contains("nothing to uninstall"), again.output)
    }

    // MARK: the systemd unit

    func testTheInstalledUnitVerifiesAndABrokenOneDoesNot() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else {
            throw XCTSkip("needs systemd-analyze (Debian: apt-get install systemd)")
        }
        let destdir = try temporaryDirectory(self) + "/root"
        try install(into: destdir)
        let unitDirectory = destdir + "/usr/local/lib/systemd/system"
        let unit = try String(contentsOfFile: unitDirectory + "/baton-agent.service", encoding: .utf8)
        let verified = try verify(unitDirectory + "/baton-agent.service", installed: destdir)
        XCTAssertEqual(verified.status, 0, verified.output)
        XCTAssertEqual(verified.output, "", "systemd-analyze verify has something to say about the unit")

        // The check can fail: a value systemd ignores (it says so, exits 0), a binary that is not there (exit 1).
        let broken = [
            "badrestart": unit.replacingOccurrences(of: "Restart=on-failure", with: "Restart=sometimes"),
            "nobinary": unit.replacingOccurrences(of: "/usr/local/bin/baton ", with: "/usr/local/bin/baton-missing "),
        ]
        for (name, text) in broken {
            XCTAssertNotEqual(text, unit, "\(name): the unit no longer has what this test breaks")
            try text.write(toFile: unitDirectory + "/baton-\(name).service", atomically: true, encoding: .utf8)
            let result = try verify(unitDirectory + "/baton-\(name).service", installed: destdir)
            XCTAssertTrue(result.status != 0 || !result.output.isEmpty, "\(name): verify found nothing wrong")
        }
    }

    // MARK: fstab through the installed helper

    func testAnFstabLineMountsAClusterThroughTheInstalledHelperWithoutTheCheckout() throws {
        try requireFUSE()
        let cluster = try TwoNodeCluster(self)
        let destdir = cluster.directory + "/root"
        // A PREFIX off PATH (still below /usr/local, which the namespace takes
        // from DESTDIR): the helper must find the binary where install put it.
        try install(into: destdir, prefix: "/usr/local/baton")
        let mountpoint = cluster.directory + "/mnt-fstab"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let export = cluster.exports[0]
        let fstab = cluster.directory + "/fstab"
        // As an admin writes it: _netdev orders it after the network at boot.
        try "\(export.name)@127.0.0.1:\(export.port),127.0.0.2:\(export.port)  \(mountpoint)  fuse.baton  defaults,_netdev,timeout=30  0 0\n"
            .write(toFile: fstab, atomically: true, encoding: .utf8)

        // A minimal environment, as at boot: no BATON_BIN, no checkout on PATH.
        // The background mount gets stderr only: the script's stdout must end with the script.
        let holder = try NamespaceProcess(self, installed: destdir, """
            trap 'umount \(quoted(mountpoint)) 2>/dev/null || umount -l \(quoted(mountpoint)) 2>/dev/null || true' EXIT
            env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin mount -a -T \(quoted(fstab)) </dev/null >&2
            echo mounted
            read -r _ || true
            """)
        guard holder.nextLine() == "mounted" else { return XCTFail("mount -a did not mount: \(holder.output)") }
        let mounts = try String(contentsOfFile: "/proc/\(holder.pid)/mounts", encoding: .utf8)
        XCTAssertTrue(mounts.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first.map(String.init) == mountpoint
                && $0.split(separator: " ").dropFirst(2).first?.hasPrefix("fuse") == true }, mounts)

        // Written through the fstab mount, read through another mount of the cluster: it is on the servers.
        let seen = "/proc/\(holder.pid)/root" + mountpoint
        try "through fstab\n".write(toFile: seen + "/hello", atomically: false, encoding: .utf8)
        let other = try cluster.mount(self, export.name)
        XCTAssertEqual(try String(contentsOfFile: other.mountpoint + "/hello", encoding: .utf8), "through fstab\n")

        // umount ends the background mount: nothing is left in the namespace.
        try holder.finish()
        try holder.waitUntilEmpty(timeout: 15)
    }

    // MARK: the default cluster file and node

    func testAgentsAndAdminCommandsUseTheDefaultFileAndTheHostName() throws {
        let directory = try temporaryDirectory(self)
        let ports = try freePorts(4)
        try writeDefaultClusterFile(directory, ports: ports)
        var agents: [NamespaceProcess] = []
        // Host names as admins give them: the node is the short name.
        for host in ["a.storage.example", "b"] {
            agents.append(try NamespaceProcess(self, hostname: host, etc: directory, log: directory + "/agent-\(host).log",
                                               "exec \(quoted(BatonBinary.path)) agent"))
        }
        let deadline = Date().addingTimeInterval(30)
        var last = ""
        while true {
            let status = try inNamespace(etc: directory, "exec \(quoted(BatonBinary.path)) status --json")
            last = status.output
            if status.status == 0, let json = try? JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any],
               let entry = (json["exports"] as? [[String: Any]])?.first(where: { $0["name"] as? String == "demo" }),
               (entry["server"] as? [String: Any])?["node"] as? String == "a",
               (entry["monitor"] as? [String: Any])?["watching"] as? Bool == true {
                break
            }
            for agent in agents where !agent.isRunning { XCTFail("agent exited: \(agent.output)"); return }
            guard Date() < deadline else {
                XCTFail("demo not served on a and watched by b within 30 s: \(last)\n\(agents.map(\.output).joined(separator: "\n"))")
                return
            }
            usleep(100_000)
        }
        let diagnose = try inNamespace(etc: directory, "exec \(quoted(BatonBinary.path)) diagnose")
        XCTAssertEqual(diagnose.status, 0, diagnose.output)
        XCTAssertTrue(diagnose.output.contains("node a (agent 127.0.0.1:\(ports[0])), peer b"), diagnose.output)
        // --config still wins over the default.
        let explicit = try runCommand(BatonBinary.path, ["status", "--config", directory + "/nothing.toml"])
        XCTAssertNotEqual(explicit.status, 0)
        XCTAssertTrue(explicit.output.contains("cannot read the cluster file \(directory)/nothing.toml"), explicit.output)
    }

    func testWithoutTheDefaultFileOrAMatchingHostNameTheErrorSaysWhatToDo() throws {
        let directory = try temporaryDirectory(self)
        try writeDefaultClusterFile(directory, ports: try freePorts(4))
        let stranger = try inNamespace(hostname: "c.storage.example", etc: directory, "exec \(quoted(BatonBinary.path)) agent")
        XCTAssertNotEqual(stranger.status, 0)
        XCTAssertTrue(stranger.output.contains("host name 'c.storage.example' is not a node in /etc/baton/cluster.toml (nodes: a, b)"),
                      stranger.output)
        XCTAssertTrue(stranger.output.contains("--node NAME"), stranger.output)

        for command in ["agent --node a", "status", "diagnose", "migrate demo", "force-serve demo --node a"] {
            let missing = try inNamespace(etc: directory, "rm -f /etc/baton/cluster.toml; exec \(quoted(BatonBinary.path)) \(command)")
            XCTAssertNotEqual(missing.status, 0, command)
            XCTAssertTrue(missing.output.contains("no cluster file at /etc/baton/cluster.toml (the default): give --config FILE"),
                          "\(command): \(missing.output)")
        }
    }

    // MARK: helpers

    /// What install puts under DESTDIR (default PREFIX), with its mode.
    private static let installed: [(String, Int)] = [
        ("/usr/local/bin/baton", 0o755), ("/sbin/mount.fuse.baton", 0o755),
        ("/usr/local/lib/systemd/system/baton-agent.service", 0o644), ("/etc/baton/cluster.toml.example", 0o644),
        ("/usr/local/lib/baton/installed", 0o644),
    ]

    private func install(into destdir: String, prefix: String = "/usr/local") throws {
        let result = try runCommand("/bin/bash", [repositoryRoot + "/mountscripts/install", "--binary", BatonBinary.path],
                                    environment: ["DESTDIR": destdir, "PREFIX": prefix])
        guard result.status == 0 else { throw TestError("mountscripts/install failed: \(result.output)") }
    }

    /// `systemd-analyze verify` as on a machine where the install is real
    /// (it checks that ExecStart's binary exists).
    private func verify(_ unit: String, installed destdir: String) throws -> ScriptResult {
        try inNamespace(installed: destdir, "exec /usr/bin/systemd-analyze verify \(quoted(unit))")
    }

    private func requireFUSE() throws {
        guard FileManager.default.isReadableFile(atPath: "/dev/fuse"), getuid() == 0 else { throw XCTSkip("needs root and /dev/fuse") }
    }

    /// `DIRECTORY/etc/baton/cluster.toml`, which becomes /etc/baton/cluster.toml in
    /// the namespaces: nodes a (127.0.0.1) and b (127.0.0.2), export demo on a.
    private func writeDefaultClusterFile(_ directory: String, ports: [Int]) throws {
        try FileManager.default.createDirectory(atPath: directory + "/etc/baton", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: directory + "/secret", contents: Data((0..<64).map { _ in UInt8.random(in: 0...255) }))
        try """
            secret_file = "\(directory)/secret"
            plaintext = true
            [[nodes]]
            name = "a"
            agent = "127.0.0.1:\(ports[0])"
            data_dir = "\(directory)/a"
            [[nodes]]
            name = "b"
            agent = "127.0.0.2:\(ports[1])"
            data_dir = "\(directory)/b"
            [[exports]]
            name = "demo"
            preferred = "a"
            port = \(ports[2])
            monitor_port = \(ports[3])
            squash = "none"

            """.write(toFile: directory + "/etc/baton/cluster.toml", atomically: true, encoding: .utf8)
    }

    /// Runs `script` to its end in a namespace (see `NamespaceProcess`); every process left in it is ended.
    private func inNamespace(hostname: String? = nil, etc: String? = nil, installed: String? = nil, _ script: String) throws -> ScriptResult {
        let process = try NamespaceProcess(self, hostname: hostname, etc: etc, installed: installed, script)
        return try process.finish()
    }
}

/// A bash script in private mount (and UTS) namespaces, with:
/// `installed`: DESTDIR/usr/local over /usr/local, DESTDIR/sbin overlaid on
/// /sbin, the checkout hidden; `etc`: an overlay on /etc taking
/// ETC/etc's files, changes kept in ETC; `hostname`: the host name there.
/// Its stdin is a pipe that `finish` closes. At teardown every process in
/// its mount namespace is ended by PID.
final class NamespaceProcess {
    private let process = Process()
    private let input = Pipe()
    private let outputPath: String
    private let lines: FileHandle
    private var namespace = ""

    init(_ test: XCTestCase, hostname: String? = nil, etc: String? = nil, installed: String? = nil, log: String? = nil,
         _ script: String) throws {
        var prelude = ["set -euo pipefail"]
        if let hostname { prelude.append("hostname \(quoted(hostname))") }
        if let etc {
            try FileManager.default.createDirectory(atPath: etc + "/etc-work", withIntermediateDirectories: true)
            prelude.append("mount -t overlay overlay -o lowerdir=/etc,upperdir=\(quoted(etc + "/etc")),workdir=\(quoted(etc + "/etc-work")) /etc")
        }
        if let installed {
            prelude.append("mount --bind \(quoted(installed + "/usr/local")) /usr/local")
            prelude.append("mount -t overlay overlay -o lowerdir=\(quoted(installed + "/sbin")):/sbin /sbin")
            prelude.append("mount -t tmpfs -o size=1m tmpfs \(quoted(repositoryRoot))")
        }
        outputPath = log ?? NSTemporaryDirectory() + "baton-namespace-\(UUID().uuidString.prefix(8)).log"
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        if log == nil { test.addTeardownBlock { [outputPath] in try? FileManager.default.removeItem(atPath: outputPath) } }
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        // stdout (a pipe, read line by line) only for scripts that report events; stderr to the log.
        let stdout = Pipe()
        lines = stdout.fileHandleForReading
        process.standardOutput = stdout
        process.standardError = output
        process.standardInput = input
        process.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        // No --fork: unshare becomes bash, so the PID is the script's.
        process.arguments = ["--mount", "--propagation", "private"] + (hostname == nil ? [] : ["--uts"])
            + ["/bin/bash", "-c", (prelude + ["echo ready"]).joined(separator: "\n") + "\n" + script]
        try process.run()
        test.addTeardownBlock { [self] in endAll() }
        guard nextLine() == "ready" else {
            process.waitUntilExit()
            throw TestError("the namespace was not set up: \(self.output)")
        }
        namespace = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(process.processIdentifier)/ns/mnt")) ?? ""
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// The script's next line of stdout; nil at its end.
    func nextLine() -> String? { lines.readLine() }

    /// What the script wrote to stderr (and stdout lines not read yet are not here).
    var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    /// Closes the script's stdin and waits for its end (at most `timeout`);
    /// its status, the stdout lines not read yet and its stderr.
    @discardableResult
    func finish(timeout: TimeInterval = 60) throws -> ScriptResult {
        try? input.fileHandleForWriting.close()
        let rest = DataBox()
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { [lines] in
            rest.data = lines.readDataToEndOfFile()
            done.signal()
        }
        guard done.wait(timeout: .now() + timeout) == .success else {
            endAll()
            throw TestError("the namespace's script did not end within \(timeout) s: \(output)")
        }
        process.waitUntilExit()
        return ScriptResult(status: process.terminationStatus, stdout: String(decoding: rest.data, as: UTF8.self), stderr: output)
    }

    /// Waits until no process is in the namespace any more.
    func waitUntilEmpty(timeout: TimeInterval) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !members().isEmpty {
            guard Date() < deadline else { throw TestError("processes \(members()) still in the namespace after \(timeout) s") }
            usleep(20_000)
        }
    }

    /// The processes in this mount namespace (the script and what it started, such as a background mount).
    private func members() -> [Int32] {
        guard !namespace.isEmpty else { return [] }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\($0)/ns/mnt")) == namespace
        }
    }

    /// SIGTERM to the script and everything in its namespace (an agent stops its servers), then SIGKILL to what is left.
    private func endAll() {
        try? input.fileHandleForWriting.close()
        var targets = members()
        if process.isRunning { targets.append(process.processIdentifier) }
        for pid in Set(targets) { kill(pid, SIGTERM) }
        if (try? waitUntilEmpty(timeout: 15)) == nil {
            for pid in members() {
                kill(pid, SIGCONT)
                kill(pid, SIGKILL)
            }
        }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

struct ScriptResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var output: String { stdout + stderr }
}

final class DataBox: @unchecked Sendable {
    var data = Data()
}

/// `text` as one bash word.
func quoted(_ text: String) -> String { "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'" }

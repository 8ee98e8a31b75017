import Foundation
import XCTest

/// The network test bed of DESIGN.md §9, built by `mountscripts/testbed up`
/// for one test and removed by `down` at teardown, also when the test fails.
/// Processes started with `start` are ended by PID before that.
///
/// Each test process uses its own namespace prefix (`baton-t<pid>-`, or
/// `BATON_TESTBED_PREFIX`), so that test runs sharing the machine never touch
/// each other's bed; a bed left by a test process that no longer runs (one
/// killed before its teardown) is removed by the next one.
final class TestBed {
    enum Namespace: String, CaseIterable {
        case switch1 = "sw1", switch2 = "sw2", nodeA = "node-a", nodeB = "node-b", client
    }

    /// A machine with a NIC on each switch.
    enum Node: String, CaseIterable {
        case a, b, client

        var namespace: Namespace {
            switch self {
            case .a: .nodeA
            case .b: .nodeB
            case .client: .client
            }
        }

        /// Its address on switch `nic` (1 or 2): NIC n is eth(n-1).
        func address(nic: Int) -> String {
            switch self {
            case .a: "198.18.\(nic).1"
            case .b: "198.18.\(nic).2"
            case .client: "198.18.\(nic).10"
            }
        }
    }

    /// The management address of switch `number` (1 or 2).
    static func switchAddress(_ number: Int) -> String { "198.18.\(number).254" }

    static let script = repositoryRoot + "/mountscripts/testbed"
    /// A namespace of a bed named after the test process that made it:
    /// the prefix (group 1) holds the pid (group 2).
    static let ownedNamePattern = "^(baton-t([0-9]+)-(?:[A-Za-z0-9_.]+-)?)(sw1|sw2|node-a|node-b|client)$"

    let prefix: String
    private weak var test: XCTestCase?

    init(_ test: XCTestCase) throws {
        guard getuid() == 0 else { throw XCTSkip("the network test bed needs root") }
        guard let ip = Self.ip, let listed = try? runCommand(ip, ["netns", "list"]), listed.status == 0 else {
            throw XCTSkip("the network test bed needs a working `ip netns` (iproute2)")
        }
        self.test = test
        prefix = ProcessInfo.processInfo.environment["BATON_TESTBED_PREFIX"] ?? "baton-t\(getpid())-"
        try Self.removeStaleBeds(listed.output)
        // Registered before `up`, so that a half-built bed goes too; teardown
        // blocks run last-registered-first, so processes that `start`
        // registers later are ended before the bed is removed.
        test.addTeardownBlock { [prefix] in
            do {
                let result = try Self.run(["down"], prefix: prefix)
                XCTAssertEqual(result.status, 0, "testbed down: \(result.output)")
            } catch {
                XCTFail("testbed down: \(error)")
            }
        }
        try script(["up"])
    }

    /// The full name of a namespace of this bed.
    func name(_ namespace: Namespace) -> String { prefix + namespace.rawValue }

    /// Runs a program inside a namespace of the bed, to completion.
    @discardableResult
    func exec(_ namespace: Namespace, _ arguments: [String]) throws -> CommandResult {
        try runCommand(Self.ip!, ["netns", "exec", name(namespace)] + arguments)
    }

    /// Starts a program inside a namespace of the bed (`ip netns exec`
    /// replaces itself with it, so the Process's PID is the program's),
    /// stdout and stderr to `output`; ended by PID at teardown.
    func start(_ namespace: Namespace, _ executable: String, _ arguments: [String], output: String) throws -> Process {
        guard let test else { throw TestError("the test of this bed has ended") }
        return try BatonIntegrationTests.start(test, Self.ip!, ["netns", "exec", name(namespace), executable] + arguments, output: output)
    }

    func cut(nic: Int, node: Node) throws { try script(["cut", "nic", node.rawValue, String(nic)]) }
    func restore(nic: Int, node: Node) throws { try script(["restore", "nic", node.rawValue, String(nic)]) }
    func cut(switch number: Int) throws { try script(["cut", "switch", String(number)]) }
    func restore(switch number: Int) throws { try script(["restore", "switch", String(number)]) }
    func isolate(_ node: Node) throws { try script(["isolate", node.rawValue]) }
    func rejoin(_ node: Node) throws { try script(["rejoin", node.rawValue]) }

    /// Removes the bed now (teardown does it anyway).
    func down() throws { try script(["down"]) }

    /// The namespaces of this bed that exist (from `ip netns list`).
    func existingNamespaces() throws -> [String] {
        try Self.listedNamespaces().filter { $0.hasPrefix(prefix) }
    }

    // MARK: probes, as the diagnostic ladder of DESIGN.md §6 makes them

    enum Outcome: String {
        /// The TCP handshake completed (a listener's kernel did it; no
        /// application needs to run for that).
        case accepted
        /// A reset: the peer's kernel answered, no listener on that port.
        case refused
        /// Nothing came back within the timeout.
        case timedOut
        /// Refused locally or by an ICMP error: no route (ENETUNREACH),
        /// or the neighbour (ARP) did not answer (EHOSTUNREACH).
        case unreachable
        /// An application wrote an answer (`ask`), or an ICMP echo reply came (`ping`).
        case answered
    }

    struct Probe: CustomStringConvertible {
        var outcome: Outcome
        /// As measured inside the namespace.
        var elapsed: TimeInterval
        /// The errno name, or what went wrong.
        var detail: String
        /// The peer's kernel answered (whether or not anything listened).
        var kernelAnswered: Bool { [.accepted, .refused, .answered].contains(outcome) }
        var description: String { "\(outcome.rawValue) after \(String(format: "%.1f", elapsed * 1000)) ms \(detail)" }
    }

    /// A TCP connect from inside `namespace`: `.refused` on a port without a
    /// listener (the default, the discard port 9) is the kernel-level probe.
    func tcpConnect(from namespace: Namespace, to host: String, port: Int = 9, timeout: TimeInterval = 0.3) throws -> Probe {
        try probe(from: namespace, ["connect", host, String(port), String(timeout)])
    }

    /// Connects, sends a line and waits for any answer within `timeout`:
    /// `.answered` if the application wrote back, `.accepted` if the
    /// handshake completed but no answer came (a stalled process), else as
    /// `tcpConnect`.
    func ask(from namespace: Namespace, to host: String, port: Int, timeout: TimeInterval = 0.3) throws -> Probe {
        try probe(from: namespace, ["ask", host, String(port), String(timeout)])
    }

    /// One ICMP echo (ping): `.answered`, `.timedOut` or `.unreachable`.
    func ping(from namespace: Namespace, to host: String, timeout: TimeInterval = 0.3) throws -> Probe {
        let started = Date()
        let result = try exec(namespace, ["ping", "-n", "-c", "1", "-W", String(timeout), host])
        let elapsed = Date().timeIntervalSince(started)
        if result.status == 0 { return Probe(outcome: .answered, elapsed: elapsed, detail: "") }
        let unreachable = result.output.contains("nreachable")
        return Probe(outcome: unreachable ? .unreachable : .timedOut, elapsed: elapsed,
                     detail: result.output.split(separator: "\n").first { $0.contains("nreachable") }.map(String.init) ?? "")
    }

    /// Repeats `probe` until `accept` holds or `within` has passed; returns
    /// the last result. For waiting out the neighbour (ARP) cache after a
    /// restore: an entry left INCOMPLETE is retried once a second.
    func poll(within: TimeInterval = 3, until accept: (Probe) -> Bool, _ probe: () throws -> Probe) throws -> Probe {
        let deadline = Date().addingTimeInterval(within)
        while true {
            let result = try probe()
            if accept(result) || Date() >= deadline { return result }
            usleep(50_000)
        }
    }

    /// Runs in the namespace: prints "OUTCOME SECONDS DETAIL".
    private static let probeProgram = #"""
    import errno, socket, sys, time
    mode, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket()
    s.settimeout(timeout)
    started = time.monotonic()
    outcome, detail = "accepted", ""
    try:
        s.connect((host, port))
        if mode == "ask":
            s.sendall(b"probe\n")
            s.settimeout(max(0.001, timeout - (time.monotonic() - started)))
            try:
                outcome = "answered" if s.recv(64) else "accepted"
            except socket.timeout:
                detail = "no answer"
    except socket.timeout:
        outcome = "timedOut"
    except OSError as e:
        detail = errno.errorcode.get(e.errno, str(e.errno))
        outcome = {"ECONNREFUSED": "refused", "EHOSTUNREACH": "unreachable", "ENETUNREACH": "unreachable"}.get(detail, "error")
    print(outcome, time.monotonic() - started, detail)
    """#

    private func probe(from namespace: Namespace, _ arguments: [String]) throws -> Probe {
        let result = try exec(namespace, [Self.python, "-c", Self.probeProgram] + arguments)
        let fields = result.output.split(separator: " ", maxSplits: 2).map(String.init)
        guard result.status == 0, fields.count >= 2, let outcome = Outcome(rawValue: fields[0]), let elapsed = TimeInterval(fields[1]) else {
            throw TestError("probe \(arguments) from \(name(namespace)) failed: \(result.output)")
        }
        return Probe(outcome: outcome, elapsed: elapsed,
                     detail: fields.count > 2 ? fields[2].trimmingCharacters(in: .whitespacesAndNewlines) : "")
    }

    // MARK: the script and the tools

    private func script(_ arguments: [String]) throws {
        let result = try Self.run(arguments, prefix: prefix)
        guard result.status == 0 else { throw TestError("testbed \(arguments.joined(separator: " ")) failed: \(result.output)") }
    }

    private static func run(_ arguments: [String], prefix: String) throws -> CommandResult {
        try runCommand(script, arguments, environment: ["BATON_TESTBED_PREFIX": prefix])
    }

    static let ip: String? = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Debian's python3 first: a version manager's shim on PATH can cost
    /// half a second a start, more than a probe's timeout.
    static let python = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : "python3"

    static func listedNamespaces(_ listing: String? = nil) throws -> [String] {
        let output: String
        if let listing {
            output = listing
        } else {
            let result = try runCommand(ip!, ["netns", "list"])
            guard result.status == 0 else { throw TestError("ip netns list: \(result.output)") }
            output = result.output
        }
        // Lines are "NAME" or "NAME (id: N)".
        return output.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
    }

    /// Removes the beds of test processes that no longer run.
    private static func removeStaleBeds(_ listing: String) throws {
        let pattern = try NSRegularExpression(pattern: ownedNamePattern)
        var stale: Set<String> = []
        for name in try listedNamespaces(listing) {
            guard let match = pattern.firstMatch(in: name, range: NSRange(name.startIndex..., in: name)),
                  let prefix = Range(match.range(at: 1), in: name), let pid = Range(match.range(at: 2), in: name).flatMap({ Int32(name[$0]) })
            else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { stale.insert(String(name[prefix])) }
        }
        for prefix in stale {
            let result = try run(["down"], prefix: prefix)
            guard result.status == 0 else { throw TestError("removing the stale bed \(prefix): \(result.output)") }
        }
    }
}

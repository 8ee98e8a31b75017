// Goal: the network test bed of DESIGN.md §9 is what the failover tests will
// rely on: two separate switches, each node on both, every path answering,
// and a cut NIC, a cut switch or an isolated node silencing exactly the paths
// it should; and the probes the diagnostic ladder of §6 will use tell these
// cases apart. A stalled (SIGSTOPped) listener still completes TCP handshakes,
// so only an application answer shows that an agent runs. The bed is gone
// after every test, also after a failing one.
// Method: `mountscripts/testbed` builds the bed; probes run inside its
// namespaces (python3 sockets, ping) with timeouts of at most 300 ms.
import Foundation
import XCTest

final class TestBedTests: XCTestCase {
    private typealias Node = TestBed.Node

    /// No answer at all from the peer's kernel.
    private func assertSilent(_ bed: TestBed, from namespace: TestBed.Namespace, _ host: String, _ what: String,
                              file: StaticString = #filePath, line: UInt = #line) throws {
        let probe = try bed.tcpConnect(from: namespace, to: host)
        XCTAssert([.timedOut, .unreachable].contains(probe.outcome), "\(what): \(host) from \(namespace): \(probe)", file: file, line: line)
        print("probe \(what): \(host) from \(namespace.rawValue): \(probe)")
    }

    /// The peer's kernel answers a connect to a closed port with a reset
    /// (waiting out a neighbour entry left unresolved by a cut, if any).
    private func assertRefused(_ bed: TestBed, from namespace: TestBed.Namespace, _ host: String, _ what: String,
                               file: StaticString = #filePath, line: UInt = #line) throws {
        let started = Date()
        let probe = try bed.poll(until: { $0.outcome == .refused }) { try bed.tcpConnect(from: namespace, to: host) }
        XCTAssertEqual(probe.outcome, .refused, "\(what): \(host) from \(namespace): \(probe)", file: file, line: line)
        let waited = Date().timeIntervalSince(started)
        if waited > 0.2 { print("probe \(what): \(host) from \(namespace.rawValue) answered after \(Int(waited * 1000)) ms") }
    }

    func testEveryPathAnswersOnAWholeBed() throws {
        let bed = try TestBed(self)
        for nic in [1, 2] {
            let peer = Node.b.address(nic: nic)
            try assertRefused(bed, from: .nodeA, peer, "node-b")
            XCTAssertEqual(try bed.ping(from: .nodeA, to: peer).outcome, .answered, "ping \(peer)")
            try assertRefused(bed, from: .nodeA, TestBed.switchAddress(nic), "switch \(nic)")
            try assertRefused(bed, from: .nodeB, Node.a.address(nic: nic), "node-a")
            for node in [Node.a, .b] { try assertRefused(bed, from: .client, node.address(nic: nic), "client to \(node)") }
        }
        // A switch is a namespace of its own, on its own subnet only.
        try assertRefused(bed, from: .switch1, Node.a.address(nic: 1), "switch 1 to node-a")
        let across = try bed.tcpConnect(from: .switch1, to: Node.a.address(nic: 2))
        XCTAssertEqual(across.outcome, .unreachable, "switch 1 has no route to switch 2's subnet: \(across)")
        // Each machine holds exactly its two addresses, eth0 on switch 1.
        let addresses = try bed.exec(.nodeA, ["ip", "-4", "-o", "addr", "show"]).output
        XCTAssert(addresses.contains("eth0    inet 198.18.1.1/24"), addresses)
        XCTAssert(addresses.contains("eth1    inet 198.18.2.1/24"), addresses)
        XCTAssertEqual(addresses.split(separator: "\n").count, 3, "lo, eth0, eth1 only: \(addresses)")
    }

    func testACutNICSilencesOnlyItsPath() throws {
        let bed = try TestBed(self)
        // node-a's first NIC, seen from node-b; then node-b's second, seen from node-a.
        for (node, nic, peer) in [(Node.a, 1, Node.b), (Node.b, 2, Node.a)] {
            let other = 3 - nic
            try assertRefused(bed, from: peer.namespace, node.address(nic: nic), "before the cut")
            try bed.cut(nic: nic, node: node)
            try assertSilent(bed, from: peer.namespace, node.address(nic: nic), "\(node)'s cut NIC")
            XCTAssertEqual(try bed.ping(from: peer.namespace, to: node.address(nic: nic)).outcome, .timedOut)
            try assertRefused(bed, from: peer.namespace, node.address(nic: other), "\(node)'s other NIC")
            // The node itself has no route left on that switch: an immediate error.
            let own = try bed.tcpConnect(from: node.namespace, to: TestBed.switchAddress(nic))
            XCTAssertEqual(own.outcome, .unreachable, "switch \(nic) from \(node) without that NIC: \(own)")
            XCTAssertLessThan(own.elapsed, 0.1, "\(own)")
            try assertRefused(bed, from: node.namespace, TestBed.switchAddress(other), "switch \(other) from \(node)")
            try bed.restore(nic: nic, node: node)
            try assertRefused(bed, from: peer.namespace, node.address(nic: nic), "\(node)'s restored NIC")
        }
    }

    func testACutSwitchSilencesItsSubnetOnly() throws {
        let bed = try TestBed(self)
        try bed.cut(switch: 2)
        try assertSilent(bed, from: .nodeA, TestBed.switchAddress(2), "cut switch 2")
        for node in [Node.b, .client] {
            try assertSilent(bed, from: .nodeA, node.address(nic: 2), "\(node) behind cut switch 2")
            try assertRefused(bed, from: .nodeA, node.address(nic: 1), "\(node) on switch 1")
        }
        try assertRefused(bed, from: .nodeA, TestBed.switchAddress(1), "switch 1")
        try bed.restore(switch: 2)
        try assertRefused(bed, from: .nodeA, TestBed.switchAddress(2), "restored switch 2")
        try assertRefused(bed, from: .nodeA, Node.b.address(nic: 2), "node-b behind restored switch 2")
    }

    func testAnIsolatedNodeReachesNoSwitchAndNoOneReachesIt() throws {
        let bed = try TestBed(self)
        try bed.isolate(.a)
        for nic in [1, 2] {
            // The isolated node's own view: no switch at all (the last row of §6's table).
            try assertSilent(bed, from: .nodeA, TestBed.switchAddress(nic), "switch \(nic) from isolated node-a")
            // Its peer's view: switches fine, node-a on no path.
            try assertRefused(bed, from: .nodeB, TestBed.switchAddress(nic), "switch \(nic) from node-b")
            try assertSilent(bed, from: .nodeB, Node.a.address(nic: nic), "isolated node-a from node-b")
        }
        try bed.rejoin(.a)
        for nic in [1, 2] { try assertRefused(bed, from: .nodeB, Node.a.address(nic: nic), "node-a rejoined") }
    }

    /// Why the ladder's first rung must wait for an application answer: the
    /// kernel completes handshakes for a listener whose process is stopped.
    func testAStoppedListenerStillAcceptsButDoesNotAnswer() throws {
        let bed = try TestBed(self)
        let directory = try temporaryDirectory(self)
        let port = 7000
        let echo = """
        import socket, sys
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(sys.argv[1])))
        s.listen(64)
        while True:
            c, _ = s.accept()
            try:
                c.settimeout(1)
                data = c.recv(64)
                if data:
                    c.sendall(data)
            except OSError:
                pass
            c.close()
        """
        let listener = try bed.start(.nodeB, TestBed.python, ["-c", echo, String(port)], output: directory + "/listener.log")
        let host = Node.b.address(nic: 1)
        let running = try bed.poll(until: { $0.outcome == .answered }) { try bed.ask(from: .nodeA, to: host, port: port) }
        XCTAssertEqual(running.outcome, .answered, "the running listener: \(running)")

        kill(listener.processIdentifier, SIGSTOP)
        let connect = try bed.tcpConnect(from: .nodeA, to: host, port: port)
        XCTAssertEqual(connect.outcome, .accepted, "a stopped listener's kernel still completes the handshake: \(connect)")
        let asked = try bed.ask(from: .nodeA, to: host, port: port)
        XCTAssertEqual(asked.outcome, .accepted, "connected, but no answer from a stopped process: \(asked)")
        XCTAssertGreaterThanOrEqual(asked.elapsed, 0.25, "\(asked)")
        print("probe stopped listener: connect \(connect); ask \(asked)")

        kill(listener.processIdentifier, SIGCONT)
        let resumed = try bed.poll(until: { $0.outcome == .answered }) { try bed.ask(from: .nodeA, to: host, port: port) }
        XCTAssertEqual(resumed.outcome, .answered, "the resumed listener: \(resumed)")
    }

    /// `down` ends what still runs inside (a stopped process too) and leaves
    /// no namespace of the bed.
    func testDownRemovesEverything() throws {
        let bed = try TestBed(self)
        let directory = try temporaryDirectory(self)
        XCTAssertEqual(Set(try bed.existingNamespaces()), Set(TestBed.Namespace.allCases.map(bed.name)))
        let untracked = try startUntracked(bed)
        kill(untracked, SIGSTOP)
        let tracked = try bed.start(.switch2, "/bin/sleep", ["600"], output: directory + "/sleep.log")
        try bed.down()
        XCTAssertEqual(try bed.existingNamespaces(), [], "namespaces left by down")
        XCTAssertFalse(isRunning(untracked), "a process left inside a namespace outlived down")
        tracked.waitUntilExit()
        XCTAssertEqual(tracked.terminationReason, .uncaughtSignal)
    }

    /// A test that fails (in a child test process) leaves no bed behind: its
    /// teardown ran `down` and ended what ran inside.
    func testAFailingTestLeavesNoBed() throws {
        guard getuid() == 0 else { throw XCTSkip("the network test bed needs root") }
        let binary = ProcessInfo.processInfo.arguments[0]
        guard binary.hasSuffix(".xctest") else { throw XCTSkip("not run from an .xctest executable: \(binary)") }
        let prefix = "baton-t\(getpid())-child-"
        let child = try runCommand(binary, ["BatonIntegrationTests.TestBedTests/testFailingOnPurposeInAChild"],
                                   environment: ["BATON_TESTBED_FAIL_ON_PURPOSE": "1", "BATON_TESTBED_PREFIX": prefix])
        XCTAssertNotEqual(child.status, 0, "the child test was meant to fail: \(child.output)")
        XCTAssert(child.output.contains("failing on purpose"), child.output)
        let pid = child.output.split(separator: "\n").first { $0.hasPrefix("untracked pid ") }
            .flatMap { Int32($0.dropFirst("untracked pid ".count)) }
        XCTAssertNotNil(pid, "the child's bed never came up: \(child.output)")
        XCTAssertEqual(try TestBed.listedNamespaces().filter { $0.hasPrefix(prefix) }, [], "namespaces left by the failed test")
        if let pid { XCTAssertFalse(isRunning(pid), "a process left inside the failed test's bed") }
    }

    /// Run only by testAFailingTestLeavesNoBed, in a child process: builds a
    /// bed, leaves a stopped process inside, and fails.
    func testFailingOnPurposeInAChild() throws {
        guard ProcessInfo.processInfo.environment["BATON_TESTBED_FAIL_ON_PURPOSE"] == "1" else {
            throw XCTSkip("runs only as the child of testAFailingTestLeavesNoBed")
        }
        let bed = try TestBed(self)
        let pid = try startUntracked(bed)
        kill(pid, SIGSTOP)
        print("untracked pid \(pid)")
        throw TestError("failing on purpose")
    }

    /// A process inside node-b that the kit does not know of (only `down`'s
    /// pass over `ip netns pids` can end it).
    private func startUntracked(_ bed: TestBed) throws -> Int32 {
        // Through Python, which closes every other descriptor in the child:
        // one inherited from the test (the output pipe of `exec`) would keep
        // `exec` waiting for as long as the sleep runs.
        let spawn = "import subprocess as p; print(p.Popen(['/bin/sleep', '600'], stdin=p.DEVNULL, stdout=p.DEVNULL, "
            + "stderr=p.DEVNULL, start_new_session=True).pid)"
        let result = try bed.exec(.nodeB, [TestBed.python, "-c", spawn])
        guard let pid = Int32(result.output.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw TestError("no sleep started in node-b: \(result.output)")
        }
        return pid
    }

    /// Alive and not a zombie.
    private func isRunning(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(after: close)...].split(separator: " ").first
        return state != "Z" && state != "X"
    }
}

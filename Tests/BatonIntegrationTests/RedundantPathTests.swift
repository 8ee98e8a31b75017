// Goal (issue 9, DESIGN.md §6): a NIC or a switch that fails is a short
// pause, never a failover. Any single NIC of either node or of the client,
// or either switch, fails while fio writes and verifies through a mount that
// named one address: fio sees no error and verifies, the epoch and the
// server do not change, the traffic goes on over the other path, and both
// replicas are equal afterwards. A path that flaps changes nothing either;
// a server that stalls while one path is cut still fails over.
// Method: the network test bed (`mountscripts/testbed`), agents in the
// nodes' namespaces with both NICs as paths, the mount in the client's;
// connections are MPTCP, the agents announce their second address, and
// `ss` in a namespace shows the bytes each path's subflow carried.
import Foundation
import XCTest

final class RedundantPathTests: XCTestCase {
    /// Node b's agent port in the cluster under test (set by `makeCluster`).
    private var agentPortOfB: Int?

    private func makeCluster(_ bed: TestBed) throws -> TwoNodeCluster {
        let cluster = try TwoNodeCluster(self, bed: bed)
        agentPortOfB = cluster.agentAddresses["b"]!.port
        return cluster
    }
    override func setUpWithError() throws {
        guard FileManager.default.isReadableFile(atPath: "/dev/fuse"), getuid() == 0 else {
            throw XCTSkip("needs root and /dev/fuse")
        }
    }

    func testNIC1OfTheServingNode() throws { try assertRidesThrough(cutting: .nic(1, .a)) }
    func testNIC2OfTheServingNode() throws { try assertRidesThrough(cutting: .nic(2, .a)) }
    func testNIC1OfTheStandbyNode() throws { try assertRidesThrough(cutting: .nic(1, .b)) }
    func testNIC2OfTheStandbyNode() throws { try assertRidesThrough(cutting: .nic(2, .b)) }
    func testNIC1OfTheClient() throws { try assertRidesThrough(cutting: .nic(1, .client)) }
    func testNIC2OfTheClient() throws { try assertRidesThrough(cutting: .nic(2, .client)) }
    func testSwitch1() throws { try assertRidesThrough(cutting: .networkSwitch(1)) }
    func testSwitch2() throws { try assertRidesThrough(cutting: .networkSwitch(2)) }

    /// Path 1 of the serving node cut and restored five times in ten seconds.
    func testAFlappingPath() throws {
        try assertRidesThrough(cutting: .nic(1, .a), times: 5)
    }

    /// A stalled server still fails over when one path is already cut: the
    /// monitor misses the probes on the path that is left.
    func testAStalledServerFailsOverWithOnePathCut() throws {
        let bed = try TestBed(self)
        let cluster = try makeCluster(bed)
        let mount = try cluster.mount(self, "demo", onlyNodeA: true)
        let before = try XCTUnwrap(try cluster.server("demo"))
        try bed.cut(switch: 2)
        try waitForLog(cluster, "network path down")
        _ = try fioAcross(cluster, mount: mount) {
            kill(before.pid, SIGSTOP)
            try cluster.waitUntilServed("demo", on: "b", epoch: before.epoch + 1)
        }
        XCTAssertTrue(cluster.logs.contains("export server failed"), cluster.logs)
        try bed.restore(switch: 2)
        try cluster.waitUntilReplicated("demo", epoch: before.epoch + 1)
        try cluster.stopAllInStep("demo", unmounting: mount)
        try cluster.assertSameFiles("demo")
    }

    /// A connection made while path 2 is down cannot add its subflow there:
    /// when the neighbour (ARP) lookup fails the kernel gives the attempt up
    /// after about 3 s and never tries again. Once path 2 is back, the mount
    /// sees the missing subflow, makes its connection again and gains it, and
    /// a cut of path 1 is then a pause too. (With the neighbour known, the
    /// kernel retries the subflow itself, with backoff, for about 2 minutes.)
    func testAConnectionMadeWhileAPathWasDownGainsItsSubflowWhenThePathIsBack() throws {
        let bed = try TestBed(self)
        let cluster = try makeCluster(bed)
        try bed.cut(switch: 2)
        try waitForLog(cluster, "network path down")
        try bed.exec(.client, ["ip", "neigh", "flush", "dev", "eth1"])
        let mount = try cluster.mount(self, "demo", onlyNodeA: true)
        let before = try XCTUnwrap(try cluster.server("demo"))
        try assertHealsThenRidesThroughACutOfSwitch1(bed, cluster, mount: mount, epoch: before.epoch, from: .client, to: .a)
    }

    /// The same for the server's replication connection to its standby:
    /// made again while path 2 is down (the standby's agent restarts), it
    /// lacks the subflow there; once path 2 is back the server makes it
    /// again, and replication rides through a cut of path 1.
    func testAReplicationConnectionMadeWhileAPathWasDownGainsItsSubflowWhenThePathIsBack() throws {
        let bed = try TestBed(self)
        let cluster = try makeCluster(bed)
        let mount = try cluster.mount(self, "demo", onlyNodeA: true)
        let before = try XCTUnwrap(try cluster.server("demo"))
        try bed.cut(switch: 2)
        try waitForLog(cluster, "network path down")
        try bed.exec(.nodeA, ["ip", "neigh", "flush", "dev", "eth1"])
        cluster.killAgent("b")
        try cluster.startAgent("b")
        try cluster.waitUntilReplicated("demo", epoch: before.epoch)
        try assertHealsThenRidesThroughACutOfSwitch1(bed, cluster, mount: mount, epoch: before.epoch, from: .a, to: .b,
                                                     healed: "standby connection has no subflow on the standby's other path")
    }

    /// The monitor's connection on a path that was down for long is made
    /// again: the old one would wait out TCP's retransmission backoff (the
    /// next try some seconds after the path is back), and a cut of the other
    /// path meanwhile would fail the healthy server over. Found by the test
    /// above, which failed once that way.
    func testAMonitorConnectionThatDiedWithItsPathIsMadeAgain() throws {
        let bed = try TestBed(self)
        let cluster = try makeCluster(bed)
        let mount = try cluster.mount(self, "demo", onlyNodeA: true)
        let before = try XCTUnwrap(try cluster.server("demo"))
        let monitorPort = cluster.exports[0].monitorPort
        _ = try fioAcross(cluster, mount: mount) {
            try bed.cut(switch: 2)
            // Long enough for the probes' retransmissions on path 2 to back off to seconds.
            try waitUntil("path 2 down for 8 s", timeout: 30) {
                try pathStatus(cluster).contains { $0.path == 2 && $0.state == "down" && $0.downFor >= 8 }
            }
            try bed.restore(switch: 2)
            try waitUntil("the monitor's connection on path 2") {
                try !bed.exec(.nodeB, ["ss", "-tnH", "state", "established", "dst", "\(TestBed.Node.a.address(nic: 2)):\(monitorPort)"])
                    .output.isEmpty
            }
            let sent = try bytesSent(bed, from: .client, to: .a, paths: [2])
            try bed.cut(switch: 1)
            try waitUntil("1 MiB more from the client on path 2 with switch 1 cut") {
                try bytesSent(bed, from: .client, to: .a, paths: [2]) >= sent + (1 << 20)
            }
            try bed.restore(switch: 1)
        }
        XCTAssertEqual(try cluster.server("demo")?.epoch, before.epoch, cluster.logs)
        XCTAssertFalse(cluster.logs.contains("export server failed"), cluster.logs)
        try cluster.stopAllInStep("demo", unmounting: mount)
        try cluster.assertSameFiles("demo")
    }

    /// Under fio: `from`'s MPTCP connection to `to` lacks its subflow on
    /// path 2 (the kernel gave it up: the address was accepted, yet no
    /// subflow goes there); switch 2 comes back; the connection is made
    /// again and carries traffic on path 2 (`healed` logged by an agent's
    /// server, if given); a cut of switch 1 is then ridden through. The
    /// epoch stays, the replicas agree.
    private func assertHealsThenRidesThroughACutOfSwitch1(_ bed: TestBed, _ cluster: TwoNodeCluster, mount: MountProcess, epoch: Int,
                                                          from: TestBed.Node, to: TestBed.Node, healed: String? = nil) throws {
        _ = try fioAcross(cluster, mount: mount) {
            try waitUntil("\(from)'s connection to \(to) without its subflow on path 2") {
                let info = try bed.exec(from.namespace, ["ss", "-MniH", "dst", to.address(nic: 1)]).output
                return info.contains("add_addr_accepted:") && !info.contains("subflows:")
            }
            try bed.restore(switch: 2)
            try waitUntil("\(from)'s subflow to \(to) on path 2", timeout: 30) { try bytesSent(bed, from: from, to: to, paths: [2]) > 0 }
            if let healed { try waitForLog(cluster, healed) }
            try cluster.waitUntilReplicated("demo", epoch: epoch)
            let sent = try bytesSent(bed, from: from, to: to, paths: [2])
            try bed.cut(switch: 1)
            try waitUntil("1 MiB more from \(from) to \(to) on path 2 with switch 1 cut") {
                try bytesSent(bed, from: from, to: to, paths: [2]) >= sent + (1 << 20)
            }
            try bed.restore(switch: 1)
        }
        XCTAssertEqual(try cluster.server("demo")?.epoch, epoch, cluster.logs)
        try cluster.stopAllInStep("demo", unmounting: mount)
        try cluster.assertSameFiles("demo")
    }

    // MARK: The rows

    enum Fault: CustomStringConvertible {
        case nic(Int, TestBed.Node)
        case networkSwitch(Int)

        var description: String {
            switch self {
            case .nic(let nic, let node): "NIC \(nic) of \(node)"
            case .networkSwitch(let number): "switch \(number)"
            }
        }

        /// The path the fault cuts.
        var path: Int {
            switch self {
            case .nic(let nic, _): nic
            case .networkSwitch(let number): number
            }
        }

        /// Whether the agents hear it (a client's NIC is nothing to them).
        var cutsANodesPath: Bool { !cuts(.client) }

        /// Whether it cuts the path between `one` and `other` (a NIC of either, or the switch).
        func cutsTheRoute(between one: TestBed.Node, and other: TestBed.Node) -> Bool {
            cuts(one) || cuts(other) || { if case .networkSwitch = self { true } else { false } }()
        }

        private func cuts(_ node: TestBed.Node) -> Bool {
            if case .nic(_, let cut) = self { return cut == node }
            return false
        }

        func cut(_ bed: TestBed) throws {
            switch self {
            case .nic(let nic, let node): try bed.cut(nic: nic, node: node)
            case .networkSwitch(let number): try bed.cut(switch: number)
            }
        }

        func restore(_ bed: TestBed) throws {
            switch self {
            case .nic(let nic, let node): try bed.restore(nic: nic, node: node)
            case .networkSwitch(let number): try bed.restore(switch: number)
            }
        }
    }

    /// fio through the mount while `fault` is cut (and restored, `times`
    /// times); asserts that nothing failed over, fio verified, the client's
    /// writes went on over the other path during the cut, and the replicas agree.
    private func assertRidesThrough(cutting fault: Fault, times: Int = 1, file: StaticString = #filePath, line: UInt = #line) throws {
        let bed = try TestBed(self)
        let cluster = try makeCluster(bed)
        let mount = try cluster.mount(self, "demo", onlyNodeA: true)
        let before = try XCTUnwrap(try cluster.server("demo"))
        let otherPath = 3 - fault.path
        _ = try fioAcross(cluster, mount: mount) {
            for round in 1...times {
                // The client's writes to a and a's replication to b go on,
                // over the path that is left where the fault cuts their route.
                let routes = [(TestBed.Node.client, TestBed.Node.a), (.a, .b)].map { from, to in
                    (from, to, fault.cutsTheRoute(between: from, and: to) ? [otherPath] : [1, 2])
                }
                let sent = try routes.map { try bytesSent(bed, from: $0.0, to: $0.1, paths: $0.2) }
                try fault.cut(bed)
                // A node's own NIC of path 2: its agent withdraws the address's MPTCP endpoint at once (`LocalLinkWatch`).
                if case .nic(let nic, let node) = fault, node != .client, nic == 2, times == 1 {
                    try waitUntil("\(node)'s MPTCP endpoint of path \(nic) withdrawn") {
                        try !mptcpEndpoints(bed, node).contains(node.address(nic: nic))
                    }
                }
                for ((from, to, paths), before) in zip(routes, sent) {
                    try waitUntil("1 MiB more sent from \(from) to \(to) on path \(paths) with \(fault) cut (round \(round))") {
                        try bytesSent(bed, from: from, to: to, paths: paths) >= before + (1 << 20)
                    }
                }
                // Long enough for the agents to see it (they wait a heartbeat grace), when it is theirs to see.
                if fault.cutsANodesPath, times == 1 {
                    try waitForLog(cluster, "network path down")
                    let states = try pathStates(cluster)
                    XCTAssertTrue(states.contains("\(fault.path) down"), "\(fault): \(states)", file: file, line: line)
                }
                let onRestoredPath = try routes.map { try bytesSent(bed, from: $0.0, to: $0.1, paths: [fault.path]) }
                try fault.restore(bed)
                if case .nic(let nic, let node) = fault, node != .client, nic == 2, times == 1 {
                    try waitUntil("\(node)'s MPTCP endpoint of path \(nic) announced again") {
                        try mptcpEndpoints(bed, node).contains(node.address(nic: nic))
                    }
                }
                // Traffic may use the path again (MPTCP spreads a busy connection over both).
                for ((from, to, _), before) in zip(routes, onRestoredPath) where times == 1 {
                    try waitUntil("traffic from \(from) to \(to) on path \(fault.path) again after \(fault) came back", timeout: 30) {
                        try bytesSent(bed, from: from, to: to, paths: [fault.path]) >= before + (64 << 10)
                    }
                }
                if times > 1 { try waitUntil("path \(fault.path) carries traffic again") { try bed.ping(from: .client, to: TestBed.Node.a.address(nic: fault.path)).outcome == .answered } }
            }
        }
        let after = try XCTUnwrap(try cluster.server("demo"))
        XCTAssertEqual(after.epoch, before.epoch, "\(fault): the export failed over; \(cluster.logs)", file: file, line: line)
        XCTAssertEqual(after.pid, before.pid, "\(fault): the server changed", file: file, line: line)
        XCTAssertFalse(cluster.logs.contains("swap begins"), "\(fault): \(cluster.logs)", file: file, line: line)
        if fault.cutsANodesPath, times == 1 {
            try waitForLog(cluster, "network path up")
            // The alarm clears: every agent sees every path up, and path 1 carries replication and probes again.
            try waitUntil("every path up again: \((try? pathStates(cluster)) ?? [])") { try pathStates(cluster).allSatisfy { $0.hasSuffix(" up") } }
        }
        try cluster.stopAllInStep("demo", unmounting: mount)
        try cluster.assertSameFiles("demo")
    }

    /// fio rounds (each writes 32 MiB at random and verifies it) until `inject` has returned.
    private func fioAcross(_ cluster: TwoNodeCluster, mount: MountProcess, _ inject: () throws -> Void) throws -> String {
        let output = cluster.directory + "/fio-\(UUID().uuidString.prefix(6)).out"
        let stop = cluster.directory + "/fio-stop"
        let round = "/usr/bin/fio --name=paths --directory=\(mount.mountpoint) --rw=randwrite --bsrange=4k-256k --size=32m "
            + "--ioengine=psync --verify=crc32c --do_verify=1 --verify_fatal=1 --aux-path=\(cluster.directory)"
        let job = try start(self, "/bin/bash", ["-c", "rm -f \(stop); rounds=0; "
            + "until [ -e \(stop) ] && [ $rounds -gt 0 ]; do \(round) || exit 1; rounds=$((rounds + 1)); done; echo rounds=$rounds"],
            output: output)
        try waitUntil("fio writing") { try bytesSent(cluster.bed!, from: .client, to: .a, paths: [1, 2]) > 4 << 20 }
        try inject()
        _ = FileManager.default.createFile(atPath: stop, contents: nil)
        job.waitUntilExit()
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        XCTAssertEqual(job.terminationStatus, 0, text)
        let summaries = text.split(separator: "\n").filter { $0.contains("err=") }
        XCTAssertFalse(summaries.isEmpty, "no fio round ended: \(text)")
        XCTAssertTrue(summaries.allSatisfy { $0.contains("err= 0") }, text)
        XCTAssertFalse(text.contains("verify:"), "fio found bad data: \(text)")
        return text
    }

    /// "PATH STATE" of each path as each agent sees it (`baton status --json`).
    private func pathStates(_ cluster: TwoNodeCluster) throws -> [String] {
        try pathStatus(cluster).map { "\($0.path) \($0.state)" }
    }

    /// Each path as each agent sees it: its number, state, and how long (s) in that state.
    private func pathStatus(_ cluster: TwoNodeCluster) throws -> [(path: Int, state: String, downFor: Double)] {
        let result = try cluster.admin(["status", "--json"])
        let json = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any] ?? [:]
        return (json["paths"] as? [[String: Any]] ?? []).flatMap { view in
            (view["paths"] as? [[String: Any]] ?? []).map {
                ($0["path"] as? Int ?? 0, $0["state"] as? String ?? "?", Double($0["since_ms_ago"] as? Int ?? 0) / 1000)
            }
        }
    }

    /// Bytes `from`'s sockets sent to `to` on `paths` (`ss`'s bytes_sent of
    /// each TCP socket, MPTCP subflows among them); from a to b, those to b's
    /// agent port only: the replication (not the monitor's heartbeats).
    private func bytesSent(_ bed: TestBed, from: TestBed.Node, to: TestBed.Node, paths: [Int]) throws -> Int {
        let port = to == .b ? agentPortOfB.map(String.init) ?? "" : ""
        let ends = paths.map { (local: from.address(nic: $0) + ":", peer: to.address(nic: $0) + ":" + port) }
        let result = try bed.exec(from.namespace, ["ss", "-tinH", "state", "established"])
        var total = 0
        var counting = false
        for line in result.output.split(separator: "\n") {
            if !line.hasPrefix(" ") && !line.hasPrefix("\t") {
                // "RECV-Q SEND-Q LOCAL:PORT PEER:PORT"
                let words = line.split(whereSeparator: \.isWhitespace).map(String.init)
                // A peer end "HOST:" matches any port, "HOST:PORT" that port.
                counting = words.count >= 4 && ends.contains { end in
                    words[2].hasPrefix(end.local) && (end.peer.hasSuffix(":") ? words[3].hasPrefix(end.peer) : words[3] == end.peer)
                }
            } else if counting, let field = line.split(whereSeparator: \.isWhitespace).first(where: { $0.hasPrefix("bytes_sent:") }) {
                total += Int(field.dropFirst("bytes_sent:".count)) ?? 0
            }
        }
        return total
    }

    /// The addresses of `node`'s MPTCP endpoints (`ip mptcp endpoint show` in its namespace).
    private func mptcpEndpoints(_ bed: TestBed, _ node: TestBed.Node) throws -> Set<String> {
        let shown = try bed.exec(node.namespace, ["ip", "mptcp", "endpoint", "show"]).output
        return Set(shown.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) })
    }

    private func waitForLog(_ cluster: TwoNodeCluster, _ text: String, timeout: TimeInterval = 20) throws {
        try waitUntil("'\(text)' in the agents' logs; \(cluster.logs)", timeout: timeout) { cluster.logs.contains(text) }
    }
}

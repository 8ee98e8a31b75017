// Goal: `baton status` joins the agents' views of an export as DESIGN.md §4
// needs it read: the newer epoch's server during a swap, the standby's
// monitor and journal position, the later failover, and a health that
// follows (ClusterHealthTests has the rules).
// Method: agent answers written out, joined with ClusterStatus.
import BatonCore
import XCTest

final class StatusReportTests: XCTestCase {
    private func path(_ number: Int, down: Bool = false) -> PeerStatus.Path {
        PeerStatus.Path(path: number, local: "10.0.\(number).1", peer: "10.0.\(number).2", switch: "", lastHeardMsAgo: 120,
                        silent: down, sinceMsAgo: 5000, connections: ["clients": 1], carries: down ? [] : ["heartbeats"])
    }

    private func server(_ node: String, epoch: Int, pid: Int) -> ExportStatus {
        var entry = ExportStatus(name: "demo", node: node, role: .server, epoch: epoch)
        entry.server = .init(node: node, address: "\(node):7000", pid: pid)
        entry.monitor = .init(node: node == "a" ? "b" : "a")
        return entry
    }

    private func standby(_ node: String, epoch: Int, watching: Bool = true) -> ExportStatus {
        var entry = ExportStatus(name: "demo", node: node, role: .standby, epoch: epoch)
        entry.monitor = .init(node: node, watching: watching)
        entry.sequence = 40
        entry.serverSequence = 42
        entry.lag = 2
        entry.probeRttMs = 0.25
        return entry
    }

    private func agent(_ node: String, _ exports: [ExportStatus], pathDown: Bool = false) -> AgentStatus {
        AgentStatus(node: node, exports: exports,
                    peer: PeerStatus(name: node == "a" ? "b" : "a", paths: [path(1), path(2, down: pathDown)], peerGone: false,
                                     selfFenced: false))
    }

    func testTheServerAndTheStandbysFactsAreJoined() {
        let cluster = ClusterStatus(answers: [agent("a", [server("a", epoch: 3, pid: 11)]), agent("b", [standby("b", epoch: 3)])],
                                    unreachable: [])
        XCTAssertEqual(cluster.exports.count, 1)
        let demo = cluster.exports[0]
        XCTAssertEqual(demo.server?.node, "a")
        XCTAssertEqual(demo.server?.pid, 11)
        XCTAssertEqual(demo.epoch, 3)
        XCTAssertEqual(demo.monitor, .init(node: "b", watching: true), "the standby's node knows whether its monitor watches")
        XCTAssertEqual(demo.journal?.server, 42)
        XCTAssertEqual(demo.journal?.standby, 40)
        XCTAssertEqual(demo.probeRttMs, 0.25)
        XCTAssertEqual(cluster.healthLevel, .ok)
        XCTAssertEqual(cluster.paths.map(\.node), ["a", "b"])
        // The order of the answers does not matter.
        let reversed = ClusterStatus(answers: [agent("b", [standby("b", epoch: 3)]), agent("a", [server("a", epoch: 3, pid: 11)])],
                                     unreachable: [])
        XCTAssertEqual(reversed.exports, cluster.exports)
    }

    func testDuringASwapTheNewerEpochsServerIsShown() {
        let old = server("a", epoch: 3, pid: 11), new = server("b", epoch: 4, pid: 22)
        for answers in [[agent("a", [old]), agent("b", [new])], [agent("b", [new]), agent("a", [old])]] {
            let demo = ClusterStatus(answers: answers, unreachable: []).exports[0]
            XCTAssertEqual(demo.server?.node, "b")
            XCTAssertEqual(demo.epoch, 4)
        }
    }

    func testTheLaterFailoverOfTheTwoNodesIsShown() {
        var a = server("a", epoch: 5, pid: 11), b = standby("b", epoch: 5)
        a.lastFailover = .init(at: "2026-12-04T10:00:00Z", reason: "planned migration")
        b.lastFailover = .init(at: "2026-12-04T09:00:00Z", reason: "probesMissed(count: 3)")
        let demo = ClusterStatus(answers: [agent("b", [b]), agent("a", [a])], unreachable: []).exports[0]
        XCTAssertEqual(demo.lastFailover?.reason, "planned migration")
    }

    func testFindingsFollowFromTheJoinedView() {
        let unwatched = ClusterStatus(answers: [agent("a", [server("a", epoch: 3, pid: 11)]), agent("b", [standby("b", epoch: 3, watching: false)])],
                                      unreachable: [])
        XCTAssertEqual(unwatched.healthLevel, .degraded)
        XCTAssertEqual(unwatched.findings.first?.hasPrefix("demo is not monitored"), true, "\(unwatched.findings)")
        let pathDown = ClusterStatus(answers: [agent("a", [server("a", epoch: 3, pid: 11)], pathDown: true), agent("b", [standby("b", epoch: 3)])],
                                     unreachable: [])
        XCTAssertEqual(pathDown.findings, ["network path down: node a to b, path 2"])
        let alone = ClusterStatus(answers: [agent("b", [standby("b", epoch: 3)])], unreachable: ["127.0.0.1:7100: refused"])
        XCTAssertEqual(alone.healthLevel, .unserved, "\(alone.findings)")
        XCTAssertEqual(ClusterStatus(answers: [], unreachable: ["a", "b"]).healthLevel, .unknown)
    }

    func testEveryRoleSaysWhetherItServes() {
        XCTAssertEqual(ExportStatus.Role.allCases.filter(\.serves), [.swapping, .takingOver, .server])
    }
}

// Goal: placement follows DESIGN.md §7: monitors on another site than their
// server when one is alive; on failover the server moves to the monitor's
// node and the new monitor goes to the other site, the old server's node
// when it is alive; the answer depends only on the inputs.
// Method: the pure function on small clusters of two sites, one sentence of
// §7 per test, comparing whole decisions.
@testable import BatonCore
import XCTest

private func node(_ name: String, alive: Bool = true) -> PlacementNode {
    // Site from the first letter: a1, a2 on site "a"; b1, b2 on site "b".
    PlacementNode(name: name, site: String(name.prefix(1)), alive: alive)
}

private func decision(_ server: String, _ monitor: String?, _ change: PlacementDecision.Change,
                      fullCopy: Bool = false) -> PlacementDecision {
    PlacementDecision(placement: ExportPlacement(server: server, monitor: monitor), change: change, monitorNeedsFullCopy: fullCopy)
}

final class FailoverPlacementTests: XCTestCase {
    // "The placement policy puts an export's monitor (and so its standby replica) on another site than its server when one exists"
    func testNewExportGetsItsMonitorOnAnotherSite() {
        let plan = Placement.plan(nodes: [node("a1"), node("a2"), node("b1")], exports: ["home": PlacementRequest(current: nil)])
        XCTAssertEqual(plan["home"], decision("a1", "b1", .created))
    }

    func testOneSiteOnlyPutsTheMonitorOnAnotherNodeOfIt() {
        let plan = Placement.plan(nodes: [node("a1"), node("a2"), node("b1", alive: false)],
                                  exports: ["home": PlacementRequest(current: nil)])
        XCTAssertEqual(plan["home"], decision("a1", "a2", .created))
    }

    func testSingleLiveNodeRunsTheExportUnmonitored() {
        let plan = Placement.plan(nodes: [node("a1"), node("b1", alive: false)], exports: ["home": PlacementRequest(current: nil)])
        XCTAssertEqual(plan["home"], decision("a1", nil, .created))
    }

    func testHealthyPlacementIsKept() {
        let current = ExportPlacement(server: "a1", monitor: "b1")
        let plan = Placement.plan(nodes: [node("a1"), node("a2"), node("b1"), node("b2")],
                                  exports: ["home": PlacementRequest(current: current)])
        XCTAssertEqual(plan["home"], decision("a1", "b1", .unchanged))
    }

    // "on failover the server moves to the monitor's node, and the new monitor goes to a node on the other site —
    // the old server's node when it is alive"
    func testFailoverMovesTheServerToTheMonitorAndTheMonitorToTheOldServersNode() {
        let current = ExportPlacement(server: "a1", monitor: "b1")
        let plan = Placement.plan(nodes: [node("a1"), node("a2"), node("b1"), node("b2")],
                                  exports: ["home": PlacementRequest(current: current, serverFailed: true)])
        XCTAssertEqual(plan["home"], decision("b1", "a1", .failover, fullCopy: false))
    }

    // "otherwise another node there, which then receives a full copy"
    func testFailoverWithTheOldServersNodeDeadPicksAnotherNodeThereWithAFullCopy() {
        let current = ExportPlacement(server: "a1", monitor: "b1")
        let plan = Placement.plan(nodes: [node("a1", alive: false), node("a2"), node("b1"), node("b2")],
                                  exports: ["home": PlacementRequest(current: current)])
        XCTAssertEqual(plan["home"], decision("b1", "a2", .failover, fullCopy: true))
    }

    func testFailoverWithTheOtherSiteDownMonitorsFromTheSameSite() {
        let current = ExportPlacement(server: "a1", monitor: "b1")
        let plan = Placement.plan(nodes: [node("a1", alive: false), node("a2", alive: false), node("b1"), node("b2")],
                                  exports: ["home": PlacementRequest(current: current)])
        XCTAssertEqual(plan["home"], decision("b1", "b2", .failover, fullCopy: true))
    }

    // §5, two nodes: "The export now runs on B, monitored from A."
    func testTwoNodesSwapRolesBackAndForth() {
        let nodes = [node("a1"), node("b1")]
        let first = Placement.plan(nodes: nodes, exports: ["x": PlacementRequest(current: ExportPlacement(server: "a1", monitor: "b1"),
                                                                                  serverFailed: true)])
        XCTAssertEqual(first["x"], decision("b1", "a1", .failover))
        let second = Placement.plan(nodes: nodes, exports: ["x": PlacementRequest(current: first["x"]!.placement, serverFailed: true)])
        XCTAssertEqual(second["x"], decision("a1", "b1", .failover))
    }

    func testDeadMonitorIsReplacedOnTheOtherSiteWithAFullCopy() {
        let current = ExportPlacement(server: "a1", monitor: "b1")
        let plan = Placement.plan(nodes: [node("a1"), node("a2"), node("b1", alive: false), node("b2")],
                                  exports: ["home": PlacementRequest(current: current)])
        XCTAssertEqual(plan["home"], decision("a1", "b2", .monitorPlaced, fullCopy: true))
    }

    func testMonitorOnTheServersSiteMovesWhenAnotherSiteIsBack() {
        let current = ExportPlacement(server: "a1", monitor: "a2")
        let plan = Placement.plan(nodes: [node("a1"), node("a2"), node("b1")], exports: ["home": PlacementRequest(current: current)])
        XCTAssertEqual(plan["home"], decision("a1", "b1", .monitorPlaced, fullCopy: true))
    }

    func testFailedServerWithoutALiveMonitorRestartsOnItsOwnNode() {
        let current = ExportPlacement(server: "a1", monitor: "b1")
        let plan = Placement.plan(nodes: [node("a1"), node("a2"), node("b1", alive: false)],
                                  exports: ["home": PlacementRequest(current: current, serverFailed: true)])
        XCTAssertEqual(plan["home"], decision("a1", "a2", .serverRestartedInPlace, fullCopy: true))
    }

    func testExportWithoutALiveCopyIsStranded() {
        let current = ExportPlacement(server: "a1", monitor: "b1")
        let plan = Placement.plan(nodes: [node("a1", alive: false), node("a2"), node("b1", alive: false)],
                                  exports: ["home": PlacementRequest(current: current)])
        XCTAssertEqual(plan["home"], PlacementDecision(placement: nil, change: .stranded, monitorNeedsFullCopy: false))
    }

    func testNewExportsSpreadOverNodesAndSites() {
        let nodes = [node("a1"), node("a2"), node("b1"), node("b2")]
        let exports = Dictionary(uniqueKeysWithValues: (1...4).map { ("e\($0)", PlacementRequest(current: nil)) })
        let plan = Placement.plan(nodes: nodes, exports: exports)
        XCTAssertEqual(Set(plan.values.map { $0.placement!.server }).count, 4, "one server per node: \(plan)")
        for decision in plan.values {
            let placement = decision.placement!
            XCTAssertNotEqual(placement.server.prefix(1), placement.monitor!.prefix(1), "\(placement)")
        }
    }

    // "The policy is a pure function of (nodes, health, sites, current placement)"
    func testSameInputsGiveTheSameAnswerWhateverTheNodeOrder() {
        let nodes = [node("a1"), node("a2"), node("b1"), node("b2", alive: false)]
        let exports: [String: PlacementRequest] = [
            "e1": PlacementRequest(current: nil),
            "e2": PlacementRequest(current: ExportPlacement(server: "a2", monitor: "b2")),
            "e3": PlacementRequest(current: ExportPlacement(server: "b1", monitor: "a1"), serverFailed: true),
        ]
        let plan = Placement.plan(nodes: nodes, exports: exports)
        XCTAssertEqual(Placement.plan(nodes: nodes.reversed(), exports: exports), plan)
        XCTAssertEqual(plan["e3"], decision("a1", "b1", .failover))
    }
}

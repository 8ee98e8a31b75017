// Goal: `baton status` exits with the worst finding (0 ok, 1 degraded,
// 2 unserved, 3 unknown) and names each finding.
// Method: merged status made by hand, one finding at a time.
import BatonCore
import XCTest

final class ClusterHealthTests: XCTestCase {
    private let healthy = ClusterHealth.Export(name: "demo", served: true, monitored: true)

    func testEverythingServedMonitoredAndReachableIsOK() {
        let (health, findings) = ClusterHealth.assess(exports: [healthy], agentsAsked: 2, agentsUnreachable: [], pathsDown: [])
        XCTAssertEqual(health, .ok)
        XCTAssertEqual(findings, [])
    }

    func testEachThinnedGuaranteeIsDegraded() {
        var unmonitored = healthy
        unmonitored.monitored = false
        var alone = healthy
        alone.answeringAlone = true
        let cases: [(ClusterHealth.Export, [String], [String], String)] = [
            (unmonitored, [], [], "demo is not monitored"),
            (alone, [], [], "demo answers without its standby"),
            (healthy, ["127.0.0.2:7200: refused"], [], "agent unreachable: 127.0.0.2:7200"),
            (healthy, [], ["node a to b, path 2"], "network path down: node a to b, path 2"),
        ]
        for (export, unreachable, paths, expected) in cases {
            let (health, findings) = ClusterHealth.assess(exports: [export], agentsAsked: 2, agentsUnreachable: unreachable,
                                                          pathsDown: paths)
            XCTAssertEqual(health, .degraded, expected)
            XCTAssertEqual(findings.count, 1)
            XCTAssertTrue(findings[0].hasPrefix(expected), findings[0])
        }
    }

    func testAnUnservedExportOutranksDegradedOnes() {
        var unmonitored = healthy
        unmonitored.monitored = false
        let waiting = ClusterHealth.Export(name: "home", served: false, monitored: false, waitingForPeer: true)
        let (health, findings) = ClusterHealth.assess(exports: [unmonitored, waiting], agentsAsked: 2,
                                                      agentsUnreachable: ["b"], pathsDown: [])
        XCTAssertEqual(health, .unserved)
        XCTAssertEqual(findings.count, 3)
        XCTAssertTrue(findings.contains { $0.hasPrefix("home is not served: a node waits for its peer") }, "\(findings)")
        // An unserved export is not also called unmonitored.
        XCTAssertFalse(findings.contains { $0.hasPrefix("home is not monitored") }, "\(findings)")
    }

    func testNoAgentAnsweringIsUnknown() {
        let (health, findings) = ClusterHealth.assess(exports: [], agentsAsked: 2, agentsUnreachable: ["a", "b"], pathsDown: [])
        XCTAssertEqual(health, .unknown)
        XCTAssertEqual(findings, ["agent unreachable: a", "agent unreachable: b"])
        XCTAssertEqual(ClusterHealth.unknown.rawValue, 3)
        XCTAssertEqual([ClusterHealth.ok, .degraded, .unserved].map(\.rawValue), [0, 1, 2])
    }
}

// Goal: the status JSON keeps the keys scripts read (snake_case, the
// ladder's rung names untouched) and reads back what it wrote.
// Method: encode the status types, look for the keys, decode and compare.
import BatonCore
import BatonRuntime
import XCTest

final class StatusJSONTests: XCTestCase {
    func testAgentStatusRoundTripsWithTheKeysScriptsRead() throws {
        var standby = ExportStatus(name: "demo", node: "b", role: .standby, epoch: 2)
        standby.probeRttMs = 0.5
        standby.lastCatchUp = .init(kind: "partial", sequence: 9, receivedBytes: 100, droppedRecords: 1)
        let peer = PeerStatus(
            name: "a",
            paths: [PeerStatus.Path(path: 1, local: "x", peer: "y", switch: "s", lastHeardMsAgo: 1, silent: false, sinceMsAgo: 2,
                                    connections: ["replication": 1], carries: ["heartbeats"])],
            peerGone: false, selfFenced: false,
            diagnosis: .init(verdict: "peer reachable", msAgo: 3, findings: ["peer_agent_1": "reached"]))
        let status = AgentStatus(node: "b", exports: [standby], peer: peer)
        let text = StatusJSON.encode(status)
        for key in ["\"probe_rtt_ms\"", "\"last_catch_up\"", "\"dropped_records\"", "\"last_heard_ms_ago\"", "\"since_ms_ago\"",
                    "\"peer_agent_1\"", "\"ms_ago\"", "\"role\":\"standby\"", "\"state\":\"up\""] {
            XCTAssertTrue(text.contains(key), "no \(key) in \(text)")
        }
        XCTAssertEqual(try StatusJSON.decode(AgentStatus.self, from: text), status)
        let cluster = ClusterStatus(answers: [status], unreachable: ["127.0.0.1:7100: refused"])
        let printed = StatusJSON.encode(cluster, pretty: true)
        XCTAssertTrue(printed.contains("\"unreachable_agents\""), printed)
        XCTAssertEqual(try StatusJSON.decode(ClusterStatus.self, from: printed), cluster)
    }
}

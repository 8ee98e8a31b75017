// Goal: the example cluster file shipped in mountscripts/ stays valid and says
// what it claims: two nodes on loopback without switches, TLS with per-node
// certificates, the DESIGN.md §8
// timings and the diagnosis defaults, one export "demo" on port 7000
// preferred on "a"; and its commented settings (switches, the ladder's delays,
// paths, a second export) are valid and say the same when an admin
// uncomments them.
// Method: read the file from the repository (found from this test's #filePath;
// Foundation is fine in a test, the core itself does no IO), parse it, and
// compare the whole configuration.
@testable import BatonCore
import Foundation
import XCTest

final class ClusterExampleFileTests: XCTestCase {
    private func exampleText() throws -> String {
        let repository = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try String(contentsOf: repository.appendingPathComponent("mountscripts/cluster.example.toml"), encoding: .utf8)
    }

    func testExampleFileParsesToTheDocumentedCluster() throws {
        let configuration = try ClusterConfiguration.parse(try exampleText())
        let expected = try ClusterConfiguration(
            secretFile: "/etc/baton/secret",
            timings: .defaults,
            transport: .tls(ClusterTLS(ca: "/etc/baton/tls/ca.pem", cert: "/etc/baton/tls/{node}.pem", key: "/etc/baton/tls/{node}.key",
                                       adminCert: "/etc/baton/tls/admin.pem", adminKey: "/etc/baton/tls/admin.key")),
            nodes: [
                NodeConfiguration(name: "a", site: "lan1", agent: HostAndPort(host: "127.0.0.1", port: 7100), dataDirectory: "/var/lib/baton/a"),
                NodeConfiguration(name: "b", site: "lan1", agent: HostAndPort(host: "127.0.0.2", port: 7200), dataDirectory: "/var/lib/baton/b"),
            ],
            exports: [ExportConfiguration(name: "demo", preferredNode: "a", port: 7000, replication: .sync)])
        XCTAssertEqual(configuration, expected)
        XCTAssertEqual(configuration.timings, ClusterTimings.defaults)
        XCTAssertEqual(configuration.timings.diagnosisTimings, DiagnosisTimings.defaults)
        XCTAssertEqual(configuration.switches, [])
        XCTAssertEqual(configuration.peer(of: "a")?.name, "b")
        let demo = try XCTUnwrap(configuration.export(named: "demo"))
        XCTAssertEqual(configuration.clientAddresses(of: demo).map(\.description), ["127.0.0.1:7000", "127.0.0.2:7000"])
        XCTAssertEqual(configuration.monitorAddress(of: demo, on: configuration.nodes[1]).description, "127.0.0.2:7001")
    }

    func testCommentedSettingsAreValidWhenUncommented() throws {
        // Uncomment every line that is a commented key or header ("# key = ..." or "# [[...]]"), as an admin would.
        let lines = try exampleText().split(separator: "\n", omittingEmptySubsequences: false).map { line -> Substring in
            guard line.hasPrefix("# ") else { return line }
            let rest = line.dropFirst(2)
            let isHeader = rest.hasPrefix("[[")
            let isKey = rest.prefix { $0.isLowercase || $0 == "_" }.count > 0 && rest.drop { $0.isLowercase || $0 == "_" }.hasPrefix(" = ")
            return isHeader || isKey ? rest : line
        }
        let configuration = try ClusterConfiguration.parse(lines.joined(separator: "\n"))
        XCTAssertEqual(configuration.exports.map(\.name), ["demo", "projects"])
        XCTAssertEqual(configuration.export(named: "projects"),
                       ExportConfiguration(name: "projects", preferredNode: "b", port: 7002, replication: .async))
        XCTAssertEqual(configuration.export(named: "demo")?.monitorPort, 7001)
        XCTAssertEqual(configuration.node(named: "a")?.paths, ["198.18.1.1", "198.18.2.1"])
        // The test bed's switches (DESIGN.md §9), and the delays' defaults as the comments say.
        XCTAssertEqual(configuration.switches, ["198.18.1.254", "198.18.2.254"])
        XCTAssertEqual(configuration.timings, ClusterTimings.defaults)
        XCTAssertTrue(lines.contains { $0.hasPrefix("selffence_delay_ms = 1800 ") })
        XCTAssertTrue(lines.contains { $0.hasPrefix("takeover_delay_ms = 2500 ") })
    }
}

// Goal (issue 10): an export server counts requests, bytes and latency by
// operation and shows its journal, checkpoint, clients and standby; an agent
// serves its own series and its servers' as one page; a real Prometheus
// scrapes both agents, and the series move during IO and a failover. Bad
// HTTP on a metrics port stops nothing.
// Method: `baton serve --metrics-listen`, a FUSE mount and dd; a two-node
// cluster with `metrics` addresses and Debian's prometheus scraping it,
// asked through its HTTP API; the text format merged by hand.
import BatonCore
import BatonRuntime
import Foundation
import XCTest

/// A blocking HTTP/1.0 GET (the server closes after its answer): status line and body.
func httpGet(_ address: NodeAddress, _ target: String) throws -> (status: String, body: String) {
    let connection = try BlockingConnection(address, timeoutMilliseconds: 5000)
    try connection.send(bytes: Array("GET \(target) HTTP/1.0\r\nHost: \(address)\r\n\r\n".utf8))
    let text = String(decoding: try connection.receiveToEnd(limitBytes: 64 << 20), as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { throw TestError("no HTTP answer from \(address): \(text.prefix(200))") }
    let head = text[..<split.lowerBound]
    return (String(head[..<(head.range(of: "\r\n")?.lowerBound ?? head.endIndex)]), String(text[split.upperBound...]))
}

/// The value of one sample line of a page (`name{labels} value`), summed over lines that contain every part.
func sampleSum(_ page: String, _ name: String, _ parts: [String] = []) -> Double? {
    let lines = page.split(separator: "\n").filter { line in
        (line.hasPrefix(name + "{") || line.hasPrefix(name + " ")) && parts.allSatisfy { line.contains($0) }
    }
    guard !lines.isEmpty else { return nil }
    return lines.compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0, +)
}

final class MetricsExpositionTests: XCTestCase {
    func testPagesMergeIntoOneFamilyEach() {
        let server1 = """
            # TYPE baton_requests_total counter
            baton_requests_total{export="a",operation="read"} 3
            # TYPE baton_request_duration_seconds histogram
            baton_request_duration_seconds_bucket{export="a",le="0.001"} 1
            baton_request_duration_seconds_sum{export="a"} 0.002
            baton_request_duration_seconds_count{export="a"} 1
            """
        let server2 = """
            # TYPE baton_requests_total counter
            baton_requests_total{export="b",operation="read"} 5
            # TYPE baton_request_duration_seconds histogram
            baton_request_duration_seconds_count{export="b"} 2
            """
        let agent = "# TYPE baton_failovers_total counter\nbaton_failovers_total{export=\"a\",cause=\"planned\"} 1\n"
        let merged = MetricsExposition.merge([agent, server1, server2])
        XCTAssertEqual(merged, """
            # TYPE baton_failovers_total counter
            baton_failovers_total{export="a",cause="planned"} 1
            # TYPE baton_requests_total counter
            baton_requests_total{export="a",operation="read"} 3
            baton_requests_total{export="b",operation="read"} 5
            # TYPE baton_request_duration_seconds histogram
            baton_request_duration_seconds_bucket{export="a",le="0.001"} 1
            baton_request_duration_seconds_sum{export="a"} 0.002
            baton_request_duration_seconds_count{export="a"} 1
            baton_request_duration_seconds_count{export="b"} 2

            """)
    }
}

final class ServerMetricsTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isReadableFile(atPath: "/dev/fuse"), getuid() == 0 else {
            throw XCTSkip("needs root and /dev/fuse")
        }
    }

    func testAServerCountsRequestsBytesAndLatencyByOperation() throws {
        let directory = try temporaryDirectory(self)
        let server = try ServerProcess(self, export: "data", data: directory + "/data",
                                       extraArguments: ["--metrics-listen", "127.0.0.1:0"])
        let metrics = try XCTUnwrap(server.metricsAddress, "no metrics address on the server's listening line")
        let mount = try MountProcess(self, source: "data@\(server.address)", mountpoint: directory + "/mnt")
        let dd = try runCommand("/bin/dd", ["if=/dev/urandom", "of=\(mount.mountpoint)/f", "bs=64k", "count=16", "conv=fsync"])
        XCTAssertEqual(dd.status, 0, dd.output)
        let back = try runCommand("/bin/dd", ["if=\(mount.mountpoint)/f", "of=/dev/null", "bs=64k", "iflag=direct"])
        XCTAssertEqual(back.status, 0, back.output)

        let (status, page) = try httpGet(metrics, "/metrics")
        XCTAssertEqual(status, "HTTP/1.0 200 OK", page)
        XCTAssertGreaterThan(sampleSum(page, "baton_requests_total", ["operation=\"write\""]) ?? 0, 0, page)
        XCTAssertGreaterThan(sampleSum(page, "baton_requests_total", ["operation=\"create\""]) ?? 0, 0, page)
        XCTAssertGreaterThanOrEqual(sampleSum(page, "baton_written_bytes_total") ?? 0, Double(1 << 20), page)
        XCTAssertGreaterThanOrEqual(sampleSum(page, "baton_read_bytes_total") ?? 0, Double(1 << 20), page)
        XCTAssertEqual(sampleSum(page, "baton_request_duration_seconds_count", ["operation=\"fsync\""]),
                       sampleSum(page, "baton_requests_total", ["operation=\"fsync\""]), "each fsync answered is timed")
        XCTAssertGreaterThan(sampleSum(page, "baton_journal_bytes") ?? 0, 0, page)
        XCTAssertGreaterThan(sampleSum(page, "baton_journal_sequence") ?? 0, 0, page)
        XCTAssertEqual(sampleSum(page, "baton_clients"), 1, page)
        XCTAssertTrue(page.contains("baton_checkpoint_age_seconds{export=\"data\"}"), page)

        XCTAssertEqual(try httpGet(metrics, "/").status, "HTTP/1.0 404 Not Found")
        // Bad HTTP, a half request and a flood of idle connections stop nothing.
        for garbage in ["\u{0}\u{1}\u{2} not http\r\n\r\n", "GET /metrics HTTP/1.1\r\nHost: x", String(repeating: "A", count: 100_000)] {
            if let connection = try? BlockingConnection(metrics, timeoutMilliseconds: 1000) {
                try? connection.send(bytes: Array(garbage.utf8))
            }
        }
        let idle = (0..<(MetricsEndpoint.maxConnections + 8)).compactMap { _ in try? BlockingConnection(metrics, timeoutMilliseconds: 1000) }
        XCTAssertGreaterThan(idle.count, MetricsEndpoint.maxConnections)
        // Idle connections do not lock a scraper out: the oldest make room.
        XCTAssertEqual(try httpGet(metrics, "/metrics").status, "HTTP/1.0 200 OK")
        withExtendedLifetime(idle) {}
        XCTAssertTrue(server.process.isRunning, "bad HTTP stopped the server")
        XCTAssertTrue(FileManager.default.createFile(atPath: mount.mountpoint + "/g", contents: Data("after".utf8)))
    }
}

/// Debian's Prometheus, scraping the given targets every 250 ms, in a directory of its own; ended by PID.
private final class PrometheusServer {
    let address: NodeAddress

    init(_ test: XCTestCase, targets: [NodeAddress], directory: String) throws {
        let binary = "/usr/bin/prometheus"
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw TestError("no \(binary): run mountscripts/install-deps (it installs Debian's prometheus)")
        }
        let port = try freePorts(1)[0]
        address = NodeAddress(host: "127.0.0.1", port: port)
        let config = directory + "/prometheus.yml"
        try """
            global:
              scrape_interval: 250ms
              scrape_timeout: 200ms
            scrape_configs:
              - job_name: baton
                static_configs:
                  - targets: [\(targets.map { "'\($0)'" }.joined(separator: ", "))]
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let process = try start(test, binary, [
            "--config.file=\(config)", "--storage.tsdb.path=\(directory)/prometheus-data",
            "--web.listen-address=\(address)", "--log.level=warn",
        ], output: directory + "/prometheus.log")
        let deadline = Date().addingTimeInterval(30)
        while (try? httpGet(address, "/-/ready"))?.status.contains("200") != true {
            guard process.isRunning, Date() < deadline else {
                let log = (try? String(contentsOfFile: directory + "/prometheus.log", encoding: .utf8)) ?? ""
                throw TestError("prometheus did not become ready: \(log.suffix(2000))")
            }
            usleep(100_000)
        }
    }

    /// The instant vector of `query`: each series's labels and value.
    func query(_ query: String) throws -> [(labels: [String: String], value: Double)] {
        let encoded = query.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let (status, body) = try httpGet(address, "/api/v1/query?query=\(encoded)")
        guard status.contains("200"), let json = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
              let data = json["data"] as? [String: Any], let result = data["result"] as? [[String: Any]] else {
            throw TestError("prometheus query \(query) failed: \(status) \(body.prefix(500))")
        }
        return result.map { series in
            let value = (series["value"] as? [Any])?.last as? String
            return (series["metric"] as? [String: String] ?? [:], value.flatMap(Double.init) ?? .nan)
        }
    }

    /// Waits until `query` answers a vector that `condition` accepts; fails with the last answer.
    @discardableResult
    func waitUntil(_ query: String, timeout: TimeInterval = 30,
                   _ condition: ([(labels: [String: String], value: Double)]) -> Bool) throws -> [(labels: [String: String], value: Double)] {
        let deadline = Date().addingTimeInterval(timeout)
        var last: [(labels: [String: String], value: Double)] = []
        while Date() < deadline {
            last = try self.query(query)
            if condition(last) { return last }
            usleep(100_000)
        }
        throw TestError("prometheus: \(query) never held; last answer \(last)")
    }
}

final class PrometheusScrapeTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isReadableFile(atPath: "/dev/fuse"), getuid() == 0 else {
            throw XCTSkip("needs root and /dev/fuse")
        }
    }

    func testPrometheusScrapesBothAgentsThroughIOAndAFailover() throws {
        let cluster = try TwoNodeCluster(self, metrics: true)
        let a = try XCTUnwrap(cluster.metricsAddresses["a"]), b = try XCTUnwrap(cluster.metricsAddresses["b"])
        let prometheus = try PrometheusServer(self, targets: [a, b], directory: cluster.directory)
        try prometheus.waitUntil("up{job=\"baton\"} == 1") { $0.count == 2 }
        let mount = try cluster.mount(self, "demo")
        let before = try XCTUnwrap(try cluster.server("demo"))
        XCTAssertEqual(before.node, "a")

        func write(_ name: String) throws {
            let dd = try runCommand("/bin/dd", ["if=/dev/urandom", "of=\(mount.mountpoint)/\(name)", "bs=64k", "count=32", "conv=fsync"])
            XCTAssertEqual(dd.status, 0, dd.output)
        }
        try write("before")
        // Served on a: its page carries the server's series, labelled with the export.
        try prometheus.waitUntil("baton_written_bytes_total{export=\"demo\",instance=\"\(a)\"}") { $0.first?.value ?? 0 >= Double(2 << 20) }
        try prometheus.waitUntil("baton_requests_total{export=\"demo\",operation=\"fsync\",instance=\"\(a)\"}") { $0.first?.value ?? 0 > 0 }
        try prometheus.waitUntil("baton_request_duration_seconds_count{export=\"demo\",operation=\"write\"}") { $0.first?.value ?? 0 > 0 }
        try prometheus.waitUntil("baton_export_role{export=\"demo\",role=\"server\",instance=\"\(a)\"}") { $0.first?.value == 1 }
        try prometheus.waitUntil("baton_export_role{export=\"demo\",role=\"standby\",instance=\"\(b)\"}") { $0.first?.value == 1 }
        try prometheus.waitUntil("baton_probe_round_trip_seconds_count{export=\"demo\",instance=\"\(b)\"}") { $0.first?.value ?? 0 > 0 }
        try prometheus.waitUntil("baton_path_up == 1") { $0.count == 4 }
        try prometheus.waitUntil("baton_heartbeats_received_total") { $0.count == 4 && $0.allSatisfy { $0.value > 0 } }
        for series in ["baton_journal_bytes", "baton_checkpoint_age_seconds", "baton_standby_lag_records", "baton_clients",
                       "baton_replica_lag_records", "baton_export_epoch", "baton_metrics_scrape_failed"] {
            try prometheus.waitUntil(series) { !$0.isEmpty }
        }
        XCTAssertEqual(try prometheus.query("baton_failovers_total").count, 0, "a failover counted before any")

        kill(before.pid, SIGSTOP)
        try cluster.waitUntilReplicated("demo", epoch: before.epoch + 1)
        XCTAssertEqual(try cluster.server("demo")?.node, "b")
        try write("after")
        let failovers = try prometheus.waitUntil("baton_failovers_total{export=\"demo\",instance=\"\(b)\"}") { $0.first?.value == 1 }
        XCTAssertTrue(["probes_missed", "heartbeat_gap"].contains(failovers.first?.labels["cause"] ?? ""), "\(failovers)")
        try prometheus.waitUntil("baton_written_bytes_total{export=\"demo\",instance=\"\(b)\"}") { $0.first?.value ?? 0 >= Double(2 << 20) }
        try prometheus.waitUntil("baton_export_role{export=\"demo\",role=\"server\",instance=\"\(b)\"}") { $0.first?.value == 1 }
        try prometheus.waitUntil("baton_export_epoch{export=\"demo\",instance=\"\(b)\"}") { $0.first?.value == Double(before.epoch + 1) }

        // The dashboard in the repository: each query is valid PromQL, and each series it reads exists.
        let dashboard = try String(contentsOfFile: repositoryRoot + "/mountscripts/grafana/baton-dashboard.json", encoding: .utf8)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(dashboard.utf8)) as? [String: Any])
        let queries = (json["panels"] as? [[String: Any]] ?? []).flatMap { ($0["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String } }
        XCTAssertGreaterThan(queries.count, 10)
        var names = Set<String>()
        for query in queries {
            _ = try prometheus.query(query.replacingOccurrences(of: "$export", with: ".*"))
            let regex = try NSRegularExpression(pattern: "baton_[a-z_]+")
            for match in regex.matches(in: query, range: NSRange(query.startIndex..., in: query)) {
                names.insert(String(query[Range(match.range, in: query)!]))
            }
        }
        for name in names.sorted() { XCTAssertFalse(try prometheus.query(name).isEmpty, "the dashboard reads \(name), which no agent serves") }
    }
}

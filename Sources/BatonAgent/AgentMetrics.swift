import BatonCore
import BatonRuntime
import Metrics

/// The agent's series (swift-metrics), served with its servers' on the
/// node's `metrics` address. Events count as they happen; the gauges are
/// set from the agent's status when a page is asked for.
enum AgentMetrics {
    /// Swaps that ended with the export served here, by why they ran
    /// (`planned` for a migration).
    static func swapDone(export: String, cause: String) {
        Counter(label: "baton_failovers_total", dimensions: [("export", export), ("cause", cause)]).increment()
    }

    /// A monitor's challenge answered, from the standby node.
    static func probeAnswered(export: String, roundTrip: TimeSpan) {
        Metrics.Timer(label: "baton_probe_round_trip_seconds", dimensions: [("export", export)])
            .recordNanoseconds(Int64(clamping: roundTrip.nanoseconds))
    }

    static func heartbeatHeard(peer: String, path: NetworkPath) {
        Counter(label: "baton_heartbeats_received_total", dimensions: [("peer", peer), ("path", "\(path.rawValue)")]).increment()
    }

    static func heartbeatSent(peer: String, path: NetworkPath) {
        Counter(label: "baton_heartbeats_sent_total", dimensions: [("peer", peer), ("path", "\(path.rawValue)")]).increment()
    }

    /// The roles an export takes on a node, each a series of its own (1 for the role it has).
    static let roles = ["server", "standby", "swapping", "taking over", "starting", "waiting for the peer", "self-fenced"]

    /// Sets the gauges from the agent's status: its exports' and its peer's entries.
    static func refresh(exports: [[String: Any]], peer: [String: Any]) {
        for entry in exports {
            guard let name = entry["name"] as? String else { continue }
            let role = entry["role"] as? String ?? ""
            for candidate in roles {
                Gauge(label: "baton_export_role", dimensions: [("export", name), ("role", candidate)]).record(candidate == role ? 1 : 0)
            }
            Gauge(label: "baton_export_epoch", dimensions: [("export", name)]).record(entry["epoch"] as? Int ?? 0)
            if role == "standby" {
                Gauge(label: "baton_replica_lag_records", dimensions: [("export", name)]).record(entry["lag"] as? Int ?? 0)
            }
        }
        let peerName = peer["name"] as? String ?? "?"
        for path in peer["paths"] as? [[String: Any]] ?? [] {
            let labels = [("peer", peerName), ("path", "\(path["path"] ?? "?")")]
            Gauge(label: "baton_path_up", dimensions: labels).record(path["state"] as? String == "up" ? 1 : 0)
            Gauge(label: "baton_path_last_heard_seconds", dimensions: labels).record(Double(path["last_heard_ms_ago"] as? Int ?? 0) / 1000)
        }
    }
}

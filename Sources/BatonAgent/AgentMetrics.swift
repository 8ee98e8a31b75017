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

    /// Sets the gauges from the agent's status: its exports' and its peer's entries.
    static func refresh(_ status: AgentStatus) {
        for entry in status.exports {
            // One series per role (1 for the role the export has here), so a role change shows as one going to 0.
            for role in ExportStatus.Role.allCases {
                Gauge(label: "baton_export_role", dimensions: [("export", entry.name), ("role", role.rawValue)])
                    .record(role == entry.role ? 1 : 0)
            }
            Gauge(label: "baton_export_epoch", dimensions: [("export", entry.name)]).record(entry.epoch)
            if entry.role == .standby {
                Gauge(label: "baton_replica_lag_records", dimensions: [("export", entry.name)]).record(entry.lag ?? 0)
            }
        }
        for path in status.peer.paths {
            let labels = [("peer", status.peer.name), ("path", "\(path.path)")]
            Gauge(label: "baton_path_up", dimensions: labels).record(path.isDown ? 0 : 1)
            Gauge(label: "baton_path_last_heard_seconds", dimensions: labels).record(Double(path.lastHeardMsAgo) / 1000)
        }
    }
}
